//! Encoding of journal records and padding markers in the ring.
//!
//! It owns the 56-byte record header and the checksum; it must not decide
//! where records go or whether they chain (that is `journal.rs`).
//!
//! Record header (little-endian), followed by the payload, the whole
//! padded with zeros to a multiple of 8 bytes:
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TREC` |
//! | 4 | 2 | kind: 1 record, 2 padding (skip to the ring's start) |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 8 | epoch |
//! | 16 | 8 | seq |
//! | 24 | 8 | prev epoch |
//! | 32 | 8 | prev seq |
//! | 40 | 8 | volume byte offset |
//! | 48 | 4 | payload length |
//! | 52 | 4 | CRC-32C of bytes 0..52 then the payload |

use bytes::Bytes;

use crate::codec::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::Position;

pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"TREC");
/// Bytes of record header before the payload.
pub const RECORD_HEADER_LEN: usize = 56;
pub(crate) const KIND_RECORD: u16 = 1;
pub(crate) const KIND_PAD: u16 = 2;
/// Records start at multiples of this, so headers never straddle oddly.
pub(crate) const ALIGN: u64 = 8;

/// One write in the journal: Raft's log entry. An empty payload is a no-op
/// record (rule 8's empty record of a new leader). Serializable because the
/// replication layer ships records to peers as they are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Epoch of the leader that created it.
    pub epoch: u64,
    /// Sequence number; continues across epochs.
    pub seq: u64,
    /// The record before it; a record is valid only if this matches.
    pub prev: Position,
    /// Byte offset in the volume the payload is written to.
    pub offset: u64,
    /// The data (empty for a no-op record). Reference-counted: the leader
    /// journals, remembers and sends one buffer per write without copying
    /// it (issue 9).
    #[serde(with = "crate::serde_bytes")]
    pub payload: Bytes,
}

impl Record {
    /// This record's (epoch, seq).
    pub fn position(&self) -> Position {
        Position::new(self.epoch, self.seq)
    }

    /// The CRC-32C stored with the record (covers header fields and
    /// payload). Two records with the same position and different
    /// checksums are divergent histories (rule 14).
    pub fn checksum(&self) -> u32 {
        let header =
            encode_header(KIND_RECORD, self.epoch, self.seq, self.prev, self.offset, self.payload.len() as u32);
        crc32c::crc32c_append(crc32c::crc32c(&header[..52]), &self.payload)
    }

    /// Bytes the record takes in the ring, padding included.
    pub fn ring_len(&self) -> u64 {
        ring_len_for(self.payload.len() as u64)
    }

    /// The header (checksum included) and the number of zero bytes of
    /// alignment padding after the payload: written as parts, so the
    /// payload is never copied (`Disk::write_parts_at`).
    pub(crate) fn encode_header(&self) -> ([u8; RECORD_HEADER_LEN], usize) {
        let mut header =
            encode_header(KIND_RECORD, self.epoch, self.seq, self.prev, self.offset, self.payload.len() as u32);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..52]), &self.payload);
        put_u32(&mut header, 52, crc);
        let pad = self.ring_len() as usize - RECORD_HEADER_LEN - self.payload.len();
        (header, pad)
    }

    /// Header, payload and alignment padding, ready to write.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (header, pad) = self.encode_header();
        let mut buf = Vec::with_capacity(self.ring_len() as usize);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&self.payload);
        buf.resize(buf.len() + pad, 0);
        assert_eq!(get_u32(&buf, 52), self.checksum());
        buf
    }
}

/// Bytes a record with `payload_len` bytes takes in the ring.
pub(crate) fn ring_len_for(payload_len: u64) -> u64 {
    (RECORD_HEADER_LEN as u64 + payload_len).div_ceil(ALIGN) * ALIGN
}

/// A padding marker: "the rest of the ring is unused, the record after
/// `prev` starts at the ring's beginning". It chains like a record, so a
/// stale marker from an earlier lap is not followed.
pub(crate) fn encode_pad(prev: Position) -> [u8; RECORD_HEADER_LEN] {
    encode_header(KIND_PAD, 0, prev.seq.wrapping_add(1), prev, 0, 0)
}

fn encode_header(kind: u16, epoch: u64, seq: u64, prev: Position, offset: u64, len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    put_u32(&mut h, 0, MAGIC);
    put_u16(&mut h, 4, kind);
    put_u64(&mut h, 8, epoch);
    put_u64(&mut h, 16, seq);
    put_u64(&mut h, 24, prev.epoch);
    put_u64(&mut h, 32, prev.seq);
    put_u64(&mut h, 40, offset);
    put_u32(&mut h, 48, len);
    // Without a payload the checksum is complete here; `encode` recomputes
    // it over the payload for records.
    let crc = crc32c::crc32c(&h[..52]);
    put_u32(&mut h, 52, crc);
    h
}

/// A decoded header whose magic and kind are plausible. Nothing else is
/// trusted until the checksum over header and payload matches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub kind: u16,
    pub epoch: u64,
    pub seq: u64,
    pub prev: Position,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl Header {
    /// Parse without trusting: `None` for anything that is not a header.
    pub(crate) fn parse(h: &[u8; RECORD_HEADER_LEN]) -> Option<Header> {
        let kind = get_u16(h, 4);
        if get_u32(h, 0) != MAGIC || (kind != KIND_RECORD && kind != KIND_PAD) || get_u16(h, 6) != 0 {
            return None;
        }
        Some(Header {
            kind,
            epoch: get_u64(h, 8),
            seq: get_u64(h, 16),
            prev: Position::new(get_u64(h, 24), get_u64(h, 32)),
            offset: get_u64(h, 40),
            len: get_u32(h, 48),
            crc: get_u32(h, 52),
        })
    }

    /// Whether the stored checksum matches the header bytes and payload.
    pub(crate) fn checksum_ok(&self, raw: &[u8; RECORD_HEADER_LEN], payload: &[u8]) -> bool {
        crc32c::crc32c_append(crc32c::crc32c(&raw[..52]), payload) == self.crc
    }

    pub(crate) fn into_record(self, payload: Vec<u8>) -> Record {
        Record { epoch: self.epoch, seq: self.seq, prev: self.prev, offset: self.offset, payload: payload.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let r = Record { epoch: 3, seq: 9, prev: Position::new(2, 8), offset: 4096, payload: vec![5; 13].into() };
        let buf = r.encode();
        assert_eq!(buf.len() as u64, r.ring_len());
        assert_eq!(buf.len() % 8, 0);
        let mut raw = [0u8; RECORD_HEADER_LEN];
        raw.copy_from_slice(&buf[..RECORD_HEADER_LEN]);
        let h = Header::parse(&raw).unwrap();
        let payload = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 13];
        assert!(h.checksum_ok(&raw, payload));
        assert_eq!(h.crc, r.checksum());
        assert_eq!(h.into_record(payload.to_vec()), r);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let r = Record { epoch: 1, seq: 1, prev: Position::ZERO, offset: 0, payload: vec![1; 100].into() };
        let mut buf = r.encode();
        buf[70] ^= 1;
        let mut raw = [0u8; RECORD_HEADER_LEN];
        raw.copy_from_slice(&buf[..RECORD_HEADER_LEN]);
        let h = Header::parse(&raw).unwrap();
        assert!(!h.checksum_ok(&raw, &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 100]));
    }

    #[test]
    fn pad_checksum_covers_its_header() {
        let raw = encode_pad(Position::new(4, 7));
        let h = Header::parse(&raw).unwrap();
        assert_eq!(h.kind, KIND_PAD);
        assert_eq!(h.seq, 8);
        assert!(h.checksum_ok(&raw, &[]));
    }
}

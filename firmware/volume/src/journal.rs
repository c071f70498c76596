//! The journal: Raft's log as a ring of checksummed, chained records on a
//! disk region of its own.
//!
//! It owns the ring's layout, the header (two copies through
//! [`SlotPair`]), appending, group-commit syncs, truncating a conflicting
//! tail, discarding a compacted head, and recovery. It must not decide what
//! is committed, when to compact or whom to trust: the replication layer
//! calls it. Layout and rules: `docs/journal.md`.
//!
//! Positions in the ring are *virtual* byte counts that only grow; the
//! physical offset is `ring_offset + pos % ring_len`. Retained records are
//! `[start_pos, tail)`; `start_pos` and the last discarded (epoch, seq)
//! live in the header, the tail is found by scanning.
//!
//! ```text
//! states of the tail (in RAM)        durable position (what may be reported)
//!   append ──▶ last() advances          sync() ──▶ durable() = last()
//!   truncate_after(s) ──▶ last() = s    (the truncation itself is durable
//!                                        after the next sync)
//! ```
//!
//! Recovery rule (rule 1): the position after any restart is the last
//! record, scanning from the header's start, whose checksum is valid and
//! which chains to its predecessor (seq = prev seq + 1, prev = the
//! predecessor's (epoch, seq)). The scan stops at the first record that is
//! missing, torn, stale (from an earlier lap) or foreign, and never trusts
//! a length before checking it against the ring.

mod record;

pub use record::{Record, RECORD_HEADER_LEN};

use crate::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::disk::{Disk, SyncCut, SyncJob};
use crate::slots::{SlotError, SlotPair, KIND_JOURNAL};
use crate::Position;
use bytes::Bytes;
use record::{encode_pad, ring_len_for, Header, ALIGN, KIND_PAD, KIND_RECORD};
use std::collections::VecDeque;
use std::io;

/// Size of each header copy; the ring starts after both.
pub const HEADER_SLOT_LEN: u64 = 4096;
/// On-disk format version in the journal header.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest ring accepted.
pub const MIN_RING_LEN: u64 = 4096;
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"TJNL");
const HEADER_PAYLOAD_LEN: usize = 48;

/// What can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A read, write or sync of the ring failed.
    #[error("journal {op} at byte {offset} failed")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the header copies failed.
    #[error("journal header")]
    Header(#[source] SlotError),
    /// Neither header copy is valid: not a journal (or never formatted).
    #[error("no valid journal header in either copy")]
    NoHeader,
    /// A valid header with values this code cannot use.
    #[error("journal header unusable: {reason}")]
    BadHeader { reason: &'static str },
    /// The disk is too small for the header copies and a ring.
    #[error("a {disk_len}-byte disk is too small for a journal")]
    TooSmall { disk_len: u64 },
    /// A sync or write failed earlier; the journal refuses everything
    /// until the node is resynced (rule 9: never retry fsync).
    #[error("journal failed earlier and is read-only until resync")]
    Failed,
    /// The record does not continue the journal.
    #[error("record {got:?} with prev {got_prev:?} does not chain to the last record {last:?}")]
    NotChained { last: Position, got: Position, got_prev: Position },
    /// The payload is larger than a record may be in this ring.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: u64 },
    /// No room: the caller must checkpoint and discard (compact) first.
    #[error("journal full: {needed} bytes needed, {free} free; checkpoint and discard first")]
    Full { needed: u64, free: u64 },
    /// The seq is not among the retained records.
    #[error("seq {seq} is not retained (retained: after {discarded} through {last})")]
    NotRetained { seq: u64, discarded: u64, last: u64 },
    /// Discarding a record that is not yet durable.
    #[error("cannot discard through seq {seq}: durable only through {durable}")]
    NotDurable { seq: u64, durable: u64 },
    /// A retained record no longer reads back valid (media corruption).
    #[error("record seq {seq} reads back corrupt")]
    Corrupt { seq: u64 },
}

/// Where a retained record lies; its seq is implied by its index.
#[derive(Clone, Copy, Debug)]
struct Entry {
    epoch: u64,
    pos: u64,
    len: u64,
}

/// The journal ring over a disk region.
#[derive(Debug)]
pub struct Journal<D: Disk> {
    disk: D,
    header: SlotPair,
    generation: u64,
    ring_offset: u64,
    ring_len: u64,
    /// Virtual position of the first retained record.
    start_pos: u64,
    /// The last discarded record (rule 10): the position of an empty journal.
    discarded: Position,
    /// Virtual position after the last record.
    tail: u64,
    /// Retained records, `index[i]` has seq `discarded.seq + 1 + i`.
    index: VecDeque<Entry>,
    /// Everything up to here was synced.
    durable: Position,
    failed: bool,
    /// Bumped whenever records may be replaced (a truncation, a reset): a
    /// sync started before cannot vouch for what is there now.
    rewrites: u64,
}

/// A journal sync started with [`Journal::start_sync`]: what it covers.
#[derive(Debug)]
pub struct JournalSync {
    upto: Position,
    rewrites: u64,
    cut: SyncCut,
}

impl JournalSync {
    /// The last record the sync covers.
    pub fn upto(&self) -> Position {
        self.upto
    }
}

impl<D: Disk> Journal<D> {
    /// Format `disk` as an empty journal whose position is `(0, 0)`.
    /// Destroys any previous content.
    pub fn format(disk: D) -> Result<Self, JournalError> {
        Self::format_at(disk, Position::ZERO)
    }

    /// Format an empty journal whose position is `base` (a node that was
    /// resynced to `base` starts its journal there).
    pub fn format_at(mut disk: D, base: Position) -> Result<Self, JournalError> {
        let ring_offset = 2 * HEADER_SLOT_LEN;
        let disk_len = disk.len();
        // Whole sectors, so the ring's end is not a partial sector.
        let ring_len = disk_len.saturating_sub(ring_offset) / 512 * 512;
        if ring_len < MIN_RING_LEN {
            return Err(JournalError::TooSmall { disk_len });
        }
        let header = SlotPair::new(0, HEADER_SLOT_LEN, KIND_JOURNAL);
        header.wipe(&mut disk).map_err(JournalError::Header)?;
        // A record of an earlier format at the ring's start could chain to
        // `base`; make sure it cannot.
        disk.write_at(ring_offset, &[0u8; RECORD_HEADER_LEN]).map_err(|source| JournalError::Io {
            op: "write",
            offset: ring_offset,
            source,
        })?;
        let mut j = Journal {
            disk,
            header,
            generation: 0,
            ring_offset,
            ring_len,
            start_pos: 0,
            discarded: base,
            tail: 0,
            index: VecDeque::new(),
            durable: base,
            failed: false,
            rewrites: 0,
        };
        j.store_header(0, base)?;
        Ok(j)
    }

    /// Open a journal and recover its position (see the module comment).
    /// Never panics on garbage: a disk without a valid header is
    /// [`JournalError::NoHeader`]; garbage in the ring ends the scan.
    pub fn open(disk: D) -> Result<Self, JournalError> {
        let mut j = Self::load(disk)?;
        // `load` synced before it scanned (`Disk::drop_cache`), and scanned
        // the medium: every record it found is durable and may be reported
        // (and voted with) as such. No second sync.
        j.durable = j.last();
        Ok(j)
    }

    /// Open the journal of a node whose storage failed (rule 9), vouching
    /// only for the records through `vouched`, the position it had synced
    /// before the failure. After a failed fsync the page cache may hold
    /// records (and a header) no medium does, marked clean, which a sync
    /// would not write; so the scan's word is not taken past `vouched`:
    /// later records are cut, the slot after the tail is zeroed and the
    /// header written anew, and only then is the disk synced. The writes
    /// are new dirty data, so that sync puts them on the medium (or
    /// fails). Records through `vouched` were synced before the failure.
    pub fn open_vouched(disk: D, vouched: Position) -> Result<Self, JournalError> {
        let mut j = Self::load(disk)?;
        // `vouched` is at least what the header discarded (discards need
        // durability) unless a reset to a resync's end point failed: then
        // the reset's base stands, which the leader had committed.
        let keep = vouched.seq.clamp(j.discarded.seq, j.last().seq);
        j.truncate_after(keep)?;
        j.fence_tail()?;
        j.store_header(j.start_pos, j.discarded)?;
        j.durable = j.last();
        Ok(j)
    }

    /// Read the header and scan the ring: the recovery rule, no sync.
    fn load(mut disk: D) -> Result<Self, JournalError> {
        // Scan what the medium holds, not what the cache shows: after a
        // failed writeback (of a process that died before it could mark
        // itself failed) the cache keeps pages no medium has, and this
        // process is told of no error (review of 342adc4).
        if let Err(source) = disk.drop_cache() {
            return Err(JournalError::Io { op: "sync", offset: 0, source });
        }
        let header = SlotPair::new(0, HEADER_SLOT_LEN, KIND_JOURNAL);
        let (generation, payload) = header.load(&disk).map_err(JournalError::Header)?.ok_or(JournalError::NoHeader)?;
        if payload.len() != HEADER_PAYLOAD_LEN || get_u32(&payload, 0) != HEADER_MAGIC {
            return Err(JournalError::BadHeader { reason: "not a journal header" });
        }
        if get_u32(&payload, 4) != FORMAT_VERSION {
            return Err(JournalError::BadHeader { reason: "unknown format version" });
        }
        let ring_offset = get_u64(&payload, 8);
        let ring_len = get_u64(&payload, 16);
        let start_pos = get_u64(&payload, 24);
        let discarded = Position::new(get_u64(&payload, 32), get_u64(&payload, 40));
        let fits = ring_offset.checked_add(ring_len).is_some_and(|end| end <= disk.len());
        if ring_offset < 2 * HEADER_SLOT_LEN || !fits || ring_len < MIN_RING_LEN || !ring_len.is_multiple_of(512) {
            return Err(JournalError::BadHeader { reason: "ring geometry outside the disk" });
        }
        if !start_pos.is_multiple_of(record::ALIGN) || start_pos > u64::MAX / 2 {
            return Err(JournalError::BadHeader { reason: "start position" });
        }
        let mut j = Journal {
            disk,
            header,
            generation,
            ring_offset,
            ring_len,
            start_pos,
            discarded,
            tail: start_pos,
            index: VecDeque::new(),
            durable: discarded,
            failed: false,
            rewrites: 0,
        };
        j.scan()?;
        Ok(j)
    }

    /// Rebuild the index from `start_pos`: the recovery rule.
    fn scan(&mut self) -> Result<(), JournalError> {
        let mut pos = self.start_pos;
        let mut last = self.discarded;
        loop {
            if pos - self.start_pos >= self.ring_len {
                break;
            }
            let phys = pos % self.ring_len;
            let room = self.ring_len - phys;
            if room < RECORD_HEADER_LEN as u64 {
                // Too little room for a header: the writer wrapped without
                // a marker.
                pos += room;
                continue;
            }
            let mut raw = [0u8; RECORD_HEADER_LEN];
            self.read_ring(phys, &mut raw)?;
            let Some(h) = Header::parse(&raw) else { break };
            if h.prev != last || Some(h.seq) != last.seq.checked_add(1) {
                break;
            }
            if h.kind == KIND_PAD {
                if phys == 0 || h.len != 0 || !h.checksum_ok(&raw, &[]) {
                    break;
                }
                pos += room;
                continue;
            }
            debug_assert_eq!(h.kind, KIND_RECORD);
            let len = ring_len_for(u64::from(h.len));
            if h.epoch < last.epoch || len > room || pos + len - self.start_pos > self.ring_len {
                break;
            }
            let mut payload = vec![0u8; h.len as usize];
            self.read_ring(phys + RECORD_HEADER_LEN as u64, &mut payload)?;
            if !h.checksum_ok(&raw, &payload) {
                break;
            }
            self.index.push_back(Entry { epoch: h.epoch, pos, len });
            last = Position::new(h.epoch, h.seq);
            pos += len;
            self.tail = pos;
        }
        Ok(())
    }

    /// The last record's position (synced or not); the last discarded
    /// position when no record is retained.
    pub fn last(&self) -> Position {
        match self.index.back() {
            Some(e) => Position::new(e.epoch, self.discarded.seq + self.index.len() as u64),
            None => self.discarded,
        }
    }

    /// Position through which every record is durable: what a node may
    /// report to its leader.
    pub fn durable(&self) -> Position {
        self.durable
    }

    /// The last discarded record's position (rule 10).
    pub fn discarded(&self) -> Position {
        self.discarded
    }

    /// The (epoch, seq) of retained record `seq`, if retained.
    pub fn position_of(&self, seq: u64) -> Option<Position> {
        if seq == self.discarded.seq {
            return Some(self.discarded);
        }
        let i = seq.checked_sub(self.discarded.seq + 1)?;
        self.index.get(usize::try_from(i).ok()?).map(|e| Position::new(e.epoch, seq))
    }

    /// Bytes of ring not holding retained records.
    pub fn free_bytes(&self) -> u64 {
        self.ring_len - (self.tail - self.start_pos)
    }

    /// Ring size in bytes.
    pub fn ring_len(&self) -> u64 {
        self.ring_len
    }

    /// Largest payload one record may carry: a quarter of the ring, so a
    /// compacted ring always has room for the next record.
    pub fn max_payload(&self) -> u64 {
        (self.ring_len / 4 - RECORD_HEADER_LEN as u64).min(u64::from(u32::MAX))
    }

    /// Whether the journal refuses work after a failed write or sync.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Give the disk back (tests: crash and reopen).
    pub fn into_disk(self) -> D {
        self.disk
    }

    /// The disk (tests and the simulator inject faults through it).
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    fn check_ok(&self) -> Result<(), JournalError> {
        if self.failed {
            Err(JournalError::Failed)
        } else {
            Ok(())
        }
    }

    /// Append the next record: written to the disk (the page cache), not
    /// durable until [`Journal::sync`]. It must chain to [`Journal::last`].
    pub fn append(&mut self, rec: &Record) -> Result<(), JournalError> {
        self.append_reserving(rec, 0)
    }

    /// Like [`Journal::append`], but fails with `Full` unless `reserve`
    /// bytes stay free afterwards: the replication layer keeps room for a
    /// new leader's empty record, which must fit even in a ring full of
    /// uncommitted records (only it can get them committed).
    pub fn append_reserving(&mut self, rec: &Record, reserve: u64) -> Result<(), JournalError> {
        self.check_ok()?;
        let last = self.last();
        if rec.prev != last || Some(rec.seq) != last.seq.checked_add(1) || rec.epoch < last.epoch {
            return Err(JournalError::NotChained { last, got: rec.position(), got_prev: rec.prev });
        }
        if rec.payload.len() as u64 > self.max_payload() {
            return Err(JournalError::TooLarge { len: rec.payload.len(), max: self.max_payload() });
        }
        let len = rec.ring_len();
        let phys = self.tail % self.ring_len;
        let room = self.ring_len - phys;
        // Records never straddle the ring's end: skip the rest of it.
        let skip = if len > room { room } else { 0 };
        let free = self.free_bytes();
        if skip + len + reserve > free {
            return Err(JournalError::Full { needed: skip + len + reserve, free });
        }
        if skip >= RECORD_HEADER_LEN as u64 {
            self.write_ring(phys, &encode_pad(last))?;
        }
        let pos = self.tail + skip;
        let (header, pad) = rec.encode_header();
        let zeroes = [0u8; ALIGN as usize];
        self.write_ring_parts(pos % self.ring_len, &[&header, &rec.payload, &zeroes[..pad]])?;
        self.index.push_back(Entry { epoch: rec.epoch, pos, len });
        self.tail = pos + len;
        Ok(())
    }

    /// Convenience for the leader: append `payload` at `offset` as the
    /// next record in `epoch`; returns its position.
    pub fn append_next(&mut self, epoch: u64, offset: u64, payload: &[u8]) -> Result<Position, JournalError> {
        let last = self.last();
        let rec = Record { epoch, seq: last.seq + 1, prev: last, offset, payload: Bytes::copy_from_slice(payload) };
        self.append(&rec)?;
        Ok(rec.position())
    }

    /// Group commit: one fdatasync makes every record appended so far
    /// durable. Returns the durable position. A failure marks the journal
    /// failed for good (rule 9).
    pub fn sync(&mut self) -> Result<Position, JournalError> {
        self.check_ok()?;
        let offset = self.ring_offset;
        if let Err(source) = self.disk.sync() {
            self.failed = true;
            return Err(JournalError::Io { op: "sync", offset, source });
        }
        self.durable = self.last();
        Ok(self.durable)
    }

    /// First half of a group commit that lets appends go on: covers every
    /// record appended so far. Run the job (on any thread), then hand its
    /// result to [`Journal::finish_sync`].
    pub fn start_sync(&mut self) -> Result<(JournalSync, SyncJob), JournalError> {
        self.check_ok()?;
        let (cut, job) = self.disk.start_sync();
        Ok((JournalSync { upto: self.last(), rewrites: self.rewrites, cut }, job))
    }

    /// Second half: the records the sync covers are durable, unless a
    /// truncation or reset since its start may have replaced them (then
    /// it vouches for nothing; the next sync will). Returns the durable
    /// position. A failure marks the journal failed for good (rule 9).
    pub fn finish_sync(&mut self, sync: JournalSync, result: std::io::Result<()>) -> Result<Position, JournalError> {
        self.check_ok()?;
        if let Err(source) = self.disk.finish_sync(sync.cut, result) {
            self.failed = true;
            return Err(JournalError::Io { op: "sync", offset: self.ring_offset, source });
        }
        if sync.rewrites == self.rewrites && sync.upto.seq > self.durable.seq {
            self.durable = sync.upto;
        }
        Ok(self.durable)
    }

    /// Discard every record after `seq` (rule 5: a conflicting tail). The
    /// header slot the scan would read next is zeroed, so the cut records
    /// cannot chain back in after a restart; like appends, the truncation
    /// is durable after the next [`Journal::sync`].
    pub fn truncate_after(&mut self, seq: u64) -> Result<(), JournalError> {
        self.check_ok()?;
        let last = self.last();
        if seq < self.discarded.seq || seq > last.seq {
            return Err(JournalError::NotRetained { seq, discarded: self.discarded.seq, last: last.seq });
        }
        if seq == last.seq {
            return Ok(());
        }
        self.index.truncate((seq - self.discarded.seq) as usize);
        self.tail = self.index.back().map_or(self.start_pos, |e| e.pos + e.len);
        self.rewrites += 1;
        self.fence_tail()?;
        self.durable = self.durable.min(self.last());
        Ok(())
    }

    /// Zero the record header the scan would read after the tail, so no
    /// record written there earlier can chain back in after a restart.
    fn fence_tail(&mut self) -> Result<(), JournalError> {
        let room = self.ring_len - self.tail % self.ring_len;
        let next = if room < RECORD_HEADER_LEN as u64 { self.tail + room } else { self.tail };
        // Only if those bytes are free: otherwise the scan meets the bound
        // or the first retained record, which cannot chain here.
        if next + RECORD_HEADER_LEN as u64 <= self.start_pos + self.ring_len {
            self.write_ring(next % self.ring_len, &[0u8; RECORD_HEADER_LEN])?;
        }
        Ok(())
    }

    /// Compaction: drop records through `seq` and persist the new start and
    /// the last discarded position (rule 10), syncing before the space can
    /// be reused. The caller must have made sure every node's K covers
    /// them or their blocks are in the peers' bitmaps.
    pub fn discard_through(&mut self, seq: u64) -> Result<(), JournalError> {
        self.check_ok()?;
        if seq <= self.discarded.seq {
            return Ok(());
        }
        if seq > self.durable.seq {
            return Err(JournalError::NotDurable { seq, durable: self.durable.seq });
        }
        let n = (seq - self.discarded.seq) as usize;
        let Some(e) = self.index.get(n - 1).copied() else {
            let last = self.last().seq;
            return Err(JournalError::NotRetained { seq, discarded: self.discarded.seq, last });
        };
        let discarded = Position::new(e.epoch, seq);
        // Durable header first; only then may appends overwrite the space.
        self.store_header(e.pos + e.len, discarded)?;
        self.start_pos = e.pos + e.len;
        self.discarded = discarded;
        self.index.drain(..n);
        // The header's sync covered every record written before it.
        self.durable = self.last();
        Ok(())
    }

    /// Empty the journal in place and give it position `base` (a node
    /// that finished a block resync to `base`, rule 12). The slot where the
    /// scan will look first is zeroed and synced *before* the new header is
    /// written, so no old record can chain to `base` after a power cut; the
    /// header copies make the switch atomic.
    pub fn reset_at(&mut self, base: Position) -> Result<(), JournalError> {
        self.check_ok()?;
        self.rewrites += 1;
        let room = self.ring_len - self.tail % self.ring_len;
        let start = if room < RECORD_HEADER_LEN as u64 { self.tail + room } else { self.tail };
        self.write_ring(start % self.ring_len, &[0u8; RECORD_HEADER_LEN])?;
        self.sync()?;
        self.store_header(start, base)?;
        self.start_pos = start;
        self.tail = start;
        self.discarded = base;
        self.index.clear();
        self.durable = base;
        Ok(())
    }

    /// Read retained record `seq` back from the disk, checksum verified.
    pub fn read(&self, seq: u64) -> Result<Record, JournalError> {
        let last = self.last().seq;
        let not_retained = JournalError::NotRetained { seq, discarded: self.discarded.seq, last };
        let Some(i) = seq.checked_sub(self.discarded.seq + 1) else { return Err(not_retained) };
        let Some(e) = self.index.get(i as usize).copied() else { return Err(not_retained) };
        let phys = e.pos % self.ring_len;
        let mut raw = [0u8; RECORD_HEADER_LEN];
        self.read_ring(phys, &mut raw)?;
        let h = Header::parse(&raw).ok_or(JournalError::Corrupt { seq })?;
        if h.kind != KIND_RECORD || h.seq != seq || ring_len_for(u64::from(h.len)) != e.len {
            return Err(JournalError::Corrupt { seq });
        }
        let mut payload = vec![0u8; h.len as usize];
        self.read_ring(phys + RECORD_HEADER_LEN as u64, &mut payload)?;
        if !h.checksum_ok(&raw, &payload) {
            return Err(JournalError::Corrupt { seq });
        }
        Ok(h.into_record(payload))
    }

    /// Retained records from `seq` on, in order (for applying to the store
    /// and, later, streaming to peers).
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = Result<Record, JournalError>> + '_ {
        let first = seq.max(self.discarded.seq + 1);
        (first..=self.last().seq).map(move |s| self.read(s))
    }

    fn store_header(&mut self, start_pos: u64, discarded: Position) -> Result<(), JournalError> {
        let mut p = [0u8; HEADER_PAYLOAD_LEN];
        put_u32(&mut p, 0, HEADER_MAGIC);
        put_u32(&mut p, 4, FORMAT_VERSION);
        put_u64(&mut p, 8, self.ring_offset);
        put_u64(&mut p, 16, self.ring_len);
        put_u64(&mut p, 24, start_pos);
        put_u64(&mut p, 32, discarded.epoch);
        put_u64(&mut p, 40, discarded.seq);
        let generation = self.generation + 1;
        if let Err(e) = self.header.store(&mut self.disk, generation, &p) {
            self.failed = true;
            return Err(JournalError::Header(e));
        }
        self.generation = generation;
        Ok(())
    }

    fn read_ring(&self, phys: u64, buf: &mut [u8]) -> Result<(), JournalError> {
        let offset = self.ring_offset + phys;
        self.disk.read_at(offset, buf).map_err(|source| JournalError::Io { op: "read", offset, source })
    }

    fn write_ring_parts(&mut self, phys: u64, parts: &[&[u8]]) -> Result<(), JournalError> {
        let offset = self.ring_offset + phys;
        self.disk.write_parts_at(offset, parts).map_err(|source| {
            self.failed = true;
            JournalError::Io { op: "write", offset, source }
        })
    }

    fn write_ring(&mut self, phys: u64, data: &[u8]) -> Result<(), JournalError> {
        let offset = self.ring_offset + phys;
        // A failed write leaves the page cache in an unknown state: stop.
        self.disk.write_at(offset, data).map_err(|source| {
            self.failed = true;
            JournalError::Io { op: "write", offset, source }
        })
    }
}

#[cfg(test)]
mod tests;

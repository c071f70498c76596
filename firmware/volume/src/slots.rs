//! Two-copy metadata slots: small records that must survive a torn write.
//!
//! A [`SlotPair`] is two fixed-size slots side by side. Each write goes to
//! the slot the previous newest copy is *not* in (slot = generation mod 2)
//! and is synced before it returns, so at any instant at least one slot
//! holds a complete, checksummed copy: a power cut in the middle of a
//! write tears only the slot being written, and recovery takes the valid
//! copy with the highest generation. The journal header, the store's
//! checkpoint and the dirty bitmaps all persist through this.
//!
//! It must not interpret payloads; a `kind` tag keeps one user's slots
//! from being read as another's.
//!
//! Slot layout (little-endian):
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TSLT` |
//! | 4 | 4 | kind (1 journal header, 2 checkpoint, 3 bitmap) |
//! | 8 | 8 | generation (≥ 1; parity = slot index) |
//! | 16 | 4 | payload length |
//! | 20 | 4 | CRC-32C of bytes 0..20 then the payload |
//! | 24 | n | payload |

use crate::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::disk::Disk;
use std::io;

const MAGIC: u32 = u32::from_le_bytes(*b"TSLT");
/// Bytes of slot header before the payload.
pub const SLOT_HEADER_LEN: usize = 24;

/// Slot kind of the journal header.
pub const KIND_JOURNAL: u32 = 1;
/// Slot kind of the block store's checkpoint.
pub const KIND_CHECKPOINT: u32 = 2;
/// Slot kind of a per-peer dirty bitmap.
pub const KIND_BITMAP: u32 = 3;

/// What can go wrong reading or writing a slot pair.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The disk failed a read, write or sync.
    #[error("{op} of metadata slot at byte {offset} failed")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The payload is larger than a slot can hold.
    #[error("payload of {len} bytes does not fit a slot holding {capacity}")]
    TooLarge { len: usize, capacity: usize },
    /// The pair does not lie inside the disk.
    #[error("slot pair at byte {base} ({slot_len}-byte slots) extends beyond the {disk_len}-byte disk")]
    OutOfRange { base: u64, slot_len: u64, disk_len: u64 },
}

/// Two slots of `slot_len` bytes at `base`, holding payloads of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPair {
    base: u64,
    slot_len: u64,
    kind: u32,
}

impl SlotPair {
    /// Two slots of `slot_len` bytes starting at byte `base`.
    pub fn new(base: u64, slot_len: u64, kind: u32) -> Self {
        SlotPair { base, slot_len, kind }
    }

    /// Largest payload a slot holds.
    pub fn capacity(&self) -> usize {
        (self.slot_len as usize).saturating_sub(SLOT_HEADER_LEN)
    }

    /// First byte after the pair.
    pub fn end(&self) -> u64 {
        self.base + 2 * self.slot_len
    }

    fn check_range(&self, disk_len: u64) -> Result<(), SlotError> {
        let fits =
            self.slot_len.checked_mul(2).and_then(|l| l.checked_add(self.base)).is_some_and(|end| end <= disk_len);
        if fits && self.slot_len as usize > SLOT_HEADER_LEN {
            Ok(())
        } else {
            Err(SlotError::OutOfRange { base: self.base, slot_len: self.slot_len, disk_len })
        }
    }

    /// The newest valid copy: `(generation, payload)`, or `None` when
    /// neither slot holds one (never written, or both torn/garbage).
    pub fn load<D: Disk>(&self, disk: &D) -> Result<Option<(u64, Vec<u8>)>, SlotError> {
        self.check_range(disk.len())?;
        let mut best: Option<(u64, Vec<u8>)> = None;
        for index in 0..2u64 {
            let offset = self.base + index * self.slot_len;
            let mut header = [0u8; SLOT_HEADER_LEN];
            disk.read_at(offset, &mut header).map_err(|source| SlotError::Io { op: "read", offset, source })?;
            let generation = get_u64(&header, 8);
            let len = get_u32(&header, 16) as usize;
            if get_u32(&header, 0) != MAGIC
                || get_u32(&header, 4) != self.kind
                || generation == 0
                || generation % 2 != index
                || len > self.capacity()
            {
                continue;
            }
            let mut payload = vec![0u8; len];
            disk.read_at(offset + SLOT_HEADER_LEN as u64, &mut payload).map_err(|source| SlotError::Io {
                op: "read",
                offset,
                source,
            })?;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..20]), &payload);
            if crc != get_u32(&header, 20) {
                continue;
            }
            if best.as_ref().is_none_or(|(g, _)| generation > *g) {
                best = Some((generation, payload));
            }
        }
        Ok(best)
    }

    /// Write `payload` as `generation` (which must exceed the newest copy's,
    /// or equal it in [`SlotPair::settle`]) into slot `generation % 2`,
    /// then sync. The sync is part of the write: the next write overwrites
    /// the other slot, and that is safe only once this copy is durable.
    pub fn store<D: Disk>(&self, disk: &mut D, generation: u64, payload: &[u8]) -> Result<(), SlotError> {
        self.check_range(disk.len())?;
        if payload.len() > self.capacity() {
            return Err(SlotError::TooLarge { len: payload.len(), capacity: self.capacity() });
        }
        let mut buf = vec![0u8; SLOT_HEADER_LEN + payload.len()];
        put_u32(&mut buf, 0, MAGIC);
        put_u32(&mut buf, 4, self.kind);
        put_u64(&mut buf, 8, generation);
        put_u32(&mut buf, 16, payload.len() as u32);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..20]), payload);
        put_u32(&mut buf, 20, crc);
        buf[SLOT_HEADER_LEN..].copy_from_slice(payload);
        let offset = self.base + (generation % 2) * self.slot_len;
        disk.write_at(offset, &buf).map_err(|source| SlotError::Io { op: "write", offset, source })?;
        disk.sync().map_err(|source| SlotError::Io { op: "sync", offset, source })
    }

    /// Make the newest copy durable in its own slot: rewrite it there, byte
    /// for byte, and sync. Returns its generation (`None`: no valid copy,
    /// nothing written).
    ///
    /// `store` assumes the newest copy `load` finds is on the medium, since
    /// the next generation overwrites the other slot. After a failed fsync
    /// whose pages Linux kept in the cache marked clean, the copy read back
    /// may be in the cache only (the medium holds an older or torn one in
    /// that slot) and the other slot the only durable copy; a reopen over
    /// the same page cache must settle the pair before writing anew (rule 9).
    /// The rewrite dirties the pages, so the sync really writes them.
    /// It is safe whatever the medium holds: if the copy is durable, every
    /// sector is rewritten with the bytes it already holds, so a power cut
    /// cannot tear it; if not, the other slot is untouched.
    pub fn settle<D: Disk>(&self, disk: &mut D) -> Result<Option<u64>, SlotError> {
        let Some((generation, payload)) = self.load(disk)? else { return Ok(None) };
        self.store(disk, generation, &payload)?;
        Ok(Some(generation))
    }

    /// Zero both slots (used when formatting, so an older format's copies
    /// cannot outrank the new one). Not synced: the following `store` syncs.
    pub fn wipe<D: Disk>(&self, disk: &mut D) -> Result<(), SlotError> {
        self.check_range(disk.len())?;
        let zeros = vec![0u8; SLOT_HEADER_LEN];
        for index in 0..2u64 {
            let offset = self.base + index * self.slot_len;
            disk.write_at(offset, &zeros).map_err(|source| SlotError::Io { op: "write", offset, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;

    #[test]
    fn newest_valid_copy_wins() {
        let mut d = MemDisk::new(8192);
        let s = SlotPair::new(0, 4096, KIND_JOURNAL);
        assert_eq!(s.load(&d).unwrap(), None);
        s.store(&mut d, 1, b"one").unwrap();
        s.store(&mut d, 2, b"two").unwrap();
        assert_eq!(s.load(&d).unwrap(), Some((2, b"two".to_vec())));
        // Tear the newest copy: the older one is still there.
        d.write_at(20, b"garbage").unwrap();
        assert_eq!(s.load(&d).unwrap(), Some((1, b"one".to_vec())));
    }

    #[test]
    fn torn_write_never_loses_the_previous_copy() {
        for seed in 0..200u64 {
            let mut d = MemDisk::new(8192);
            let s = SlotPair::new(0, 4096, KIND_CHECKPOINT);
            s.store(&mut d, 1, &[1u8; 1500]).unwrap();
            // Write generation 2 without its sync, then cut power.
            let mut buf = vec![0u8; SLOT_HEADER_LEN + 1500];
            put_u32(&mut buf, 0, MAGIC);
            d.write_at(0, &buf).unwrap();
            let mut x = seed;
            d.power_cut(&mut || {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                x >> 33
            });
            assert_eq!(s.load(&d).unwrap(), Some((1, vec![1u8; 1500])));
        }
    }

    #[test]
    fn settling_a_copy_only_the_cache_holds_keeps_the_durable_one_through_a_torn_write() {
        use crate::disk::SyncFault;
        let mut d = MemDisk::new(16384);
        let s = SlotPair::new(0, 8192, KIND_BITMAP);
        s.store(&mut d, 1, &[1u8; 2000]).unwrap();
        s.store(&mut d, 2, &[2u8; 2000]).unwrap();
        // Generation 3 fails its sync and stays in the cache only.
        d.fail_next_sync(SyncFault::KeepClean);
        assert!(s.store(&mut d, 3, &[3u8; 2000]).is_err());
        assert_eq!(s.settle(&mut d).unwrap(), Some(3));
        assert_eq!(&d.durable_bytes()[8192 + SLOT_HEADER_LEN..][..4], &[3u8; 4], "generation 3 reached the medium");
        // Generation 4 overwrites 2, torn by a power cut: 3 is still there.
        d.fail_next_sync(SyncFault::Sticky);
        assert!(s.store(&mut d, 4, &[4u8; 2000]).is_err());
        let mut picks = [1u64, 0].into_iter().cycle();
        d.power_cut(&mut || picks.next().unwrap());
        assert_eq!(s.load(&d).unwrap(), Some((3, vec![3u8; 2000])));
        // Settling a durable copy, torn by a power cut, loses nothing.
        let mut picks = [1u64, 0].into_iter().cycle();
        let mut e = d.clone();
        e.fail_next_sync(SyncFault::Sticky);
        assert!(s.settle(&mut e).is_err());
        e.power_cut(&mut || picks.next().unwrap());
        assert_eq!(s.load(&e).unwrap(), Some((3, vec![3u8; 2000])));
        assert_eq!(s.settle(&mut MemDisk::new(16384)).unwrap(), None);
    }

    #[test]
    fn other_kinds_are_ignored() {
        let mut d = MemDisk::new(8192);
        SlotPair::new(0, 4096, KIND_BITMAP).store(&mut d, 1, b"x").unwrap();
        assert_eq!(SlotPair::new(0, 4096, KIND_JOURNAL).load(&d).unwrap(), None);
        assert!(SlotPair::new(4096, 4096, KIND_JOURNAL).load(&d).is_err());
    }
}

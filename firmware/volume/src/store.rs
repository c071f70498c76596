//! The block store: Raft's state machine. It holds the volume's data in
//! 4 KiB blocks on its own disk, and its checkpoint K and the per-peer
//! bitmaps on a small metadata disk.
//!
//! Only committed records reach it, in seq order (rules 6, 7); it never
//! rolls anything back. It must not decide what is committed: the caller
//! applies what the leader reports committed. Writes are buffered (page
//! cache) and made durable only by [`Store::checkpoint`], which follows
//! rule 9: take K, fsync the store, then persist K. A failed sync is never
//! retried: the store refuses everything until the node is resynced.
//!
//! Metadata disk layout:
//! | bytes | what |
//! |---|---|
//! | 0..8192 | checkpoint, two 4 KiB slots (kind 2) |
//! | 8192.. | bitmap pair for peer slot 0, then 1, ... each two slots of [`bitmap_slot_len`] bytes (kind 3) |
//!
//! Checkpoint payload (little-endian): version u32, flags u32 (bit 0:
//! consistent, bit 1: learner), K epoch u64, K seq u64, volume length u64,
//! bitmap granularity u64, then (version 2) the id of the last block
//! resync this store began u64, the box incarnation u64 (random, chosen at
//! format: tells a replaced box from the one it replaced) and the lowest
//! epoch this box may vote in u64 (rule 18). Version 1 checkpoints open
//! with those three 0 and as a voter. Version 3 is version 2 with flag
//! bit 2 (a storage failure marked the store, rule 9) and the journal
//! position the node still vouches for, epoch u64 and seq u64; it is
//! written only while that mark is set, so a firmware that reads only
//! version 2 opens every store that has not failed.

use crate::bitmap::{BitmapError, DirtyBitmap};
use crate::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::disk::Disk;
use crate::journal::Record;
use crate::slots::{SlotError, SlotPair, KIND_BITMAP, KIND_CHECKPOINT, SLOT_HEADER_LEN};
use crate::Position;
use serde::{Deserialize, Serialize};
use std::io;

/// The volume's block size.
pub const BLOCK_SIZE: u64 = 4096;
const CHECKPOINT_SLOT_LEN: u64 = 4096;
const BITMAP_BASE: u64 = 2 * CHECKPOINT_SLOT_LEN;
const VERSION: u32 = 2;
const PAYLOAD_LEN: usize = 64;
const VERSION_FAILED: u32 = 3;
const PAYLOAD_LEN_FAILED: usize = 80;
const PAYLOAD_LEN_V1: usize = 40;
const FLAG_CONSISTENT: u32 = 1;
const FLAG_LEARNER: u32 = 2;
const FLAG_FAILED: u32 = 4;

/// What can go wrong in the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A read, write or sync of the data disk failed.
    #[error("block store {op} at byte {offset} failed")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the metadata slots failed.
    #[error("block store metadata")]
    Meta(#[source] SlotError),
    /// A sync or write failed earlier (rule 9): resync the node.
    #[error("block store failed earlier and is unusable until resync")]
    Failed,
    /// No valid checkpoint in either copy.
    #[error("no valid checkpoint: metadata not formatted")]
    NoCheckpoint,
    /// The checkpoint does not match this data disk or this code.
    #[error("checkpoint unusable: {reason}")]
    BadCheckpoint { reason: &'static str },
    /// The data disk is smaller than one block.
    #[error("a {len}-byte data disk holds no whole block")]
    TooSmall { len: u64 },
    /// The metadata disk cannot hold the checkpoint and bitmaps.
    #[error("metadata disk of {len} bytes too small: {needed} needed")]
    MetaTooSmall { len: u64, needed: u64 },
    /// Records must be applied in seq order, each after its predecessor.
    #[error("record {got:?} (prev {prev:?}) does not follow the applied position {applied:?}")]
    OutOfOrder { applied: Position, got: Position, prev: Position },
    /// A range outside the volume.
    #[error("range of {len} bytes at {offset} is outside the {volume_len}-byte volume")]
    OutOfRange { offset: u64, len: u64, volume_len: u64 },
    /// Resync data for a store that is not marked inconsistent.
    #[error("resync write refused: the store is not marked inconsistent")]
    NotResyncing,
    /// A bitmap that cannot be built or decoded.
    #[error("dirty bitmap")]
    Bitmap(#[source] BitmapError),
}

/// The persisted checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// K: every record through here is durable in the store.
    pub applied: Position,
    /// False while a block resync is in progress (rule 12).
    pub consistent: bool,
    /// The last block resync this store began (0: none). A restarted
    /// peer knows from it that a late `ResyncBegin` is for a resync it
    /// already lost, not a new one.
    pub resync_id: u64,
    /// This box's incarnation, fixed at format (rule 18).
    pub incarnation: u64,
    /// Rule 18: set at format on a replacement box, cleared once it has
    /// caught up; a learner does not vote (`triad_core::Membership`).
    pub learner: bool,
    /// Rule 18: the lowest epoch this box may vote in (once not a learner).
    pub votes_from: u64,
    /// Rule 9: a write or sync of the journal, the store or the metadata
    /// failed. The journal is vouched for only through this position
    /// (what had been synced before), and the disks' page cache may still
    /// show bytes no medium holds (Linux keeps unwritten pages after a
    /// failed fsync, marked clean): the next block resync copies every
    /// region rather than trusting hashes of that cache. Set with
    /// `consistent: false`; cleared when that resync ends.
    pub failed: Option<Position>,
}

/// What a new store is: the rest is zeroes and K = (0, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Bytes per dirty-bitmap bit.
    pub granularity: u64,
    /// This box's incarnation (a random number the caller draws, rule 18).
    pub incarnation: u64,
    /// A replacement box (rule 18's learner) rather than a member of a new cluster.
    pub learner: bool,
}

/// Bytes of one bitmap slot for this geometry (two per peer).
pub fn bitmap_slot_len(volume_len: u64, granularity: u64) -> u64 {
    let raw = (SLOT_HEADER_LEN + DirtyBitmap::encoded_len(volume_len, granularity)) as u64;
    raw.div_ceil(4096) * 4096
}

/// Metadata disk size needed for `peers` bitmaps.
pub fn meta_len_needed(volume_len: u64, granularity: u64, peers: u32) -> u64 {
    BITMAP_BASE + 2 * u64::from(peers) * bitmap_slot_len(volume_len, granularity)
}

/// The block store over a data disk and a metadata disk.
#[derive(Debug)]
pub struct Store<D: Disk, M: Disk> {
    data: D,
    meta: M,
    volume_len: u64,
    granularity: u64,
    applied: Position,
    checkpoint: Checkpoint,
    generation: u64,
    failed: bool,
    /// Bytes applied since writeback of the data disk was last started.
    unhinted: u64,
}

/// Applied bytes after which the store starts the data disk's writeback
/// (`Disk::start_writeback`): often enough that a checkpoint's fsync does
/// not find tens of MiB dirty, rarely enough that small writes do not pay
/// a syscall and a competing write-out each.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl<D: Disk, M: Disk> Store<D, M> {
    /// Format: the volume is the data disk rounded down to whole blocks;
    /// K = (0, 0), consistent, as `format` says. Data content is left as it is.
    pub fn format(data: D, mut meta: M, format: Format) -> Result<Self, StoreError> {
        let Format { granularity, incarnation, learner } = format;
        let volume_len = data.len() / BLOCK_SIZE * BLOCK_SIZE;
        if volume_len == 0 {
            return Err(StoreError::TooSmall { len: data.len() });
        }
        DirtyBitmap::new(volume_len, granularity, Position::ZERO).map_err(StoreError::Bitmap)?;
        if meta.len() < BITMAP_BASE {
            return Err(StoreError::MetaTooSmall { len: meta.len(), needed: BITMAP_BASE });
        }
        let slots = SlotPair::new(0, CHECKPOINT_SLOT_LEN, KIND_CHECKPOINT);
        slots.wipe(&mut meta).map_err(StoreError::Meta)?;
        let checkpoint = Checkpoint {
            applied: Position::ZERO,
            consistent: true,
            resync_id: 0,
            incarnation,
            learner,
            votes_from: 0,
            failed: None,
        };
        let mut s = Store {
            data,
            meta,
            volume_len,
            granularity,
            applied: Position::ZERO,
            checkpoint,
            generation: 0,
            failed: false,
            unhinted: 0,
        };
        s.persist(checkpoint)?;
        Ok(s)
    }

    /// Open: the applied position starts at the persisted K. The caller
    /// re-applies, past K, only records the leader reports committed.
    ///
    /// A store marked failed (rule 9) is being reopened, perhaps over the
    /// page cache that lied: every bitmap pair is settled first
    /// ([`SlotPair::settle`]), so that its next generation never overwrites
    /// the only copy on the medium. The checkpoint pair needs no settling:
    /// its newest copy is the failure mark, or a later one, each synced;
    /// a failed checkpoint write is followed by the mark in the same slot
    /// (the generation advances only on success).
    pub fn open(data: D, mut meta: M) -> Result<Self, StoreError> {
        let slots = SlotPair::new(0, CHECKPOINT_SLOT_LEN, KIND_CHECKPOINT);
        let (generation, p) = slots.load(&meta).map_err(StoreError::Meta)?.ok_or(StoreError::NoCheckpoint)?;
        let v1 = p.len() == PAYLOAD_LEN_V1 && get_u32(&p, 0) == 1;
        let v3 = p.len() == PAYLOAD_LEN_FAILED && get_u32(&p, 0) == VERSION_FAILED;
        if !v1 && !v3 && (p.len() != PAYLOAD_LEN || get_u32(&p, 0) != VERSION) {
            return Err(StoreError::BadCheckpoint { reason: "unknown version" });
        }
        let failed = v3 && get_u32(&p, 4) & FLAG_FAILED != 0;
        let volume_len = get_u64(&p, 24);
        let granularity = get_u64(&p, 32);
        if volume_len == 0 || volume_len > data.len() || !volume_len.is_multiple_of(BLOCK_SIZE) {
            return Err(StoreError::BadCheckpoint { reason: "volume length does not fit the data disk" });
        }
        DirtyBitmap::new(volume_len, granularity, Position::ZERO).map_err(StoreError::Bitmap)?;
        let checkpoint = Checkpoint {
            applied: Position::new(get_u64(&p, 8), get_u64(&p, 16)),
            consistent: get_u32(&p, 4) & FLAG_CONSISTENT != 0,
            resync_id: if v1 { 0 } else { get_u64(&p, 40) },
            incarnation: if v1 { 0 } else { get_u64(&p, 48) },
            learner: get_u32(&p, 4) & FLAG_LEARNER != 0,
            votes_from: if v1 { 0 } else { get_u64(&p, 56) },
            failed: failed.then(|| Position::new(get_u64(&p, 64), get_u64(&p, 72))),
        };
        if checkpoint.failed.is_some() {
            let mut peer_slot = 0;
            while meta_len_needed(volume_len, granularity, peer_slot + 1) <= meta.len() {
                let pair = Self::bitmap_pair_in(volume_len, granularity, peer_slot);
                pair.settle(&mut meta).map_err(StoreError::Meta)?;
                peer_slot += 1;
            }
        }
        Ok(Store {
            data,
            meta,
            volume_len,
            granularity,
            applied: checkpoint.applied,
            checkpoint,
            generation,
            failed: false,
            unhinted: 0,
        })
    }

    /// The volume's size in bytes.
    pub fn volume_len(&self) -> u64 {
        self.volume_len
    }

    /// Bytes per bit of the dirty bitmaps.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// The last applied record (durable or not).
    pub fn applied(&self) -> Position {
        self.applied
    }

    /// The last persisted checkpoint.
    pub fn checkpointed(&self) -> Checkpoint {
        self.checkpoint
    }

    fn check_ok(&self) -> Result<(), StoreError> {
        if self.failed {
            Err(StoreError::Failed)
        } else {
            Ok(())
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.volume_len => Ok(()),
            _ => Err(StoreError::OutOfRange { offset, len, volume_len: self.volume_len }),
        }
    }

    /// Apply a committed record: write its payload at its offset
    /// (buffered). Records must come in order; an empty record only
    /// advances the applied position.
    pub fn apply(&mut self, rec: &Record) -> Result<(), StoreError> {
        self.check_ok()?;
        if rec.prev != self.applied || Some(rec.seq) != self.applied.seq.checked_add(1) {
            return Err(StoreError::OutOfOrder { applied: self.applied, got: rec.position(), prev: rec.prev });
        }
        self.check_range(rec.offset, rec.payload.len() as u64)?;
        if !rec.payload.is_empty() {
            let offset = rec.offset;
            if let Err(source) = self.data.write_at(offset, &rec.payload) {
                self.failed = true;
                return Err(StoreError::Io { op: "write", offset, source });
            }
            // The checkpoint's fsync (every half ring) would otherwise find
            // tens of MiB dirty and stall the volume thread while it writes
            // them: start their writeback along the way (measured: 1 MiB
            // sequential writes 188 -> 244 MB/s median in the lab).
            self.unhinted += rec.payload.len() as u64;
            if self.unhinted >= WRITEBACK_EVERY {
                self.unhinted = 0;
                self.data.start_writeback(0, self.volume_len);
            }
        }
        self.applied = rec.position();
        Ok(())
    }

    /// Read `buf.len()` bytes of the volume at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check_ok()?;
        self.check_range(offset, buf.len() as u64)?;
        self.data.read_at(offset, buf).map_err(|source| StoreError::Io { op: "read", offset, source })
    }

    /// Rule 9: take K (the applied position now), fsync the store, then
    /// persist K. Returns K. On a failed fsync the store is failed for good.
    /// Nothing applied since the last checkpoint: nothing to do (no fsync).
    pub fn checkpoint(&mut self) -> Result<Position, StoreError> {
        self.check_ok()?;
        let k = self.applied;
        if k == self.checkpoint.applied && self.checkpoint.consistent {
            return Ok(k);
        }
        if let Err(source) = self.data.sync() {
            self.failed = true;
            return Err(StoreError::Io { op: "sync", offset: 0, source });
        }
        self.persist(Checkpoint { applied: k, ..self.checkpoint })?;
        Ok(k)
    }

    /// Durably mark the store inconsistent before block resync
    /// `resync_id` starts (rule 12); a restart then knows the store is not
    /// to be trusted, and which resync it had begun.
    pub fn mark_inconsistent(&mut self, resync_id: u64) -> Result<(), StoreError> {
        self.check_ok()?;
        self.persist(Checkpoint { consistent: false, resync_id, ..self.checkpoint })
    }

    /// Rule 9: a write or sync of any of this node's disks failed. Durably
    /// mark the store inconsistent and failed, vouching for the journal
    /// only through `vouched` (its durable position before the failure),
    /// before anything else happens. Tried even when this store is the
    /// one that failed: the mark is new data on the metadata disk, whose
    /// sync succeeds only if the mark reached the medium. K is the last
    /// persisted one (a failed checkpoint never persisted its K).
    pub fn mark_failed(&mut self, vouched: Position) -> Result<(), StoreError> {
        self.persist(Checkpoint { consistent: false, failed: Some(vouched), ..self.checkpoint })
    }

    /// Rule 18: the learner has caught up; the box becomes a voter from
    /// epoch `votes_from` on (durably, before the core is told).
    pub fn end_learner(&mut self, votes_from: u64) -> Result<(), StoreError> {
        self.check_ok()?;
        self.persist(Checkpoint { learner: false, votes_from, ..self.checkpoint })
    }

    /// Write resync data straight into the volume (rule 12): allowed only
    /// while the store is durably marked inconsistent, so a crash in the
    /// middle leaves a store that is known not to be trusted.
    pub fn write_resync(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check_ok()?;
        if self.checkpoint.consistent {
            return Err(StoreError::NotResyncing);
        }
        self.check_range(offset, data.len() as u64)?;
        if let Err(source) = self.data.write_at(offset, data) {
            self.failed = true;
            return Err(StoreError::Io { op: "write", offset, source });
        }
        Ok(())
    }

    /// End of a block resync at `point` (rule 12): fsync the store, then
    /// atomically persist "consistent, K = point".
    pub fn finish_resync(&mut self, point: Position) -> Result<(), StoreError> {
        self.check_ok()?;
        if let Err(source) = self.data.sync() {
            self.failed = true;
            return Err(StoreError::Io { op: "sync", offset: 0, source });
        }
        self.persist(Checkpoint { applied: point, consistent: true, failed: None, ..self.checkpoint })?;
        self.applied = point;
        Ok(())
    }

    /// Persist a peer's dirty bitmap into slot pair `peer_slot` (rule 10:
    /// before the journal discards what it covers).
    pub fn persist_bitmap(&mut self, peer_slot: u32, bitmap: &DirtyBitmap) -> Result<(), StoreError> {
        self.check_ok()?;
        let pair = self.bitmap_pair(peer_slot)?;
        let generation = match pair.load(&self.meta).map_err(StoreError::Meta)? {
            Some((g, _)) => g + 1,
            None => 1,
        };
        pair.store(&mut self.meta, generation, &bitmap.encode()).map_err(|e| {
            self.failed = true;
            StoreError::Meta(e)
        })
    }

    /// Load a peer's persisted bitmap, if one was stored.
    pub fn load_bitmap(&self, peer_slot: u32) -> Result<Option<DirtyBitmap>, StoreError> {
        let pair = self.bitmap_pair(peer_slot)?;
        match pair.load(&self.meta).map_err(StoreError::Meta)? {
            Some((_, p)) => {
                DirtyBitmap::decode(&p, self.volume_len, self.granularity).map(Some).map_err(StoreError::Bitmap)
            }
            None => Ok(None),
        }
    }

    fn bitmap_pair(&self, peer_slot: u32) -> Result<SlotPair, StoreError> {
        let needed = meta_len_needed(self.volume_len, self.granularity, peer_slot + 1);
        if needed > self.meta.len() {
            return Err(StoreError::MetaTooSmall { len: self.meta.len(), needed });
        }
        Ok(Self::bitmap_pair_in(self.volume_len, self.granularity, peer_slot))
    }

    fn bitmap_pair_in(volume_len: u64, granularity: u64, peer_slot: u32) -> SlotPair {
        let slot_len = bitmap_slot_len(volume_len, granularity);
        SlotPair::new(BITMAP_BASE + 2 * u64::from(peer_slot) * slot_len, slot_len, KIND_BITMAP)
    }

    fn persist(&mut self, c: Checkpoint) -> Result<(), StoreError> {
        let mut p = [0u8; PAYLOAD_LEN_FAILED];
        let len = match c.failed {
            Some(v) => {
                put_u32(&mut p, 0, VERSION_FAILED);
                put_u64(&mut p, 64, v.epoch);
                put_u64(&mut p, 72, v.seq);
                PAYLOAD_LEN_FAILED
            }
            None => {
                put_u32(&mut p, 0, VERSION);
                PAYLOAD_LEN
            }
        };
        let flags = if c.consistent { FLAG_CONSISTENT } else { 0 }
            | if c.learner { FLAG_LEARNER } else { 0 }
            | if c.failed.is_some() { FLAG_FAILED } else { 0 };
        put_u32(&mut p, 4, flags);
        put_u64(&mut p, 8, c.applied.epoch);
        put_u64(&mut p, 16, c.applied.seq);
        put_u64(&mut p, 24, self.volume_len);
        put_u64(&mut p, 32, self.granularity);
        put_u64(&mut p, 40, c.resync_id);
        put_u64(&mut p, 48, c.incarnation);
        put_u64(&mut p, 56, c.votes_from);
        let generation = self.generation + 1;
        let slots = SlotPair::new(0, CHECKPOINT_SLOT_LEN, KIND_CHECKPOINT);
        if let Err(e) = slots.store(&mut self.meta, generation, &p[..len]) {
            self.failed = true;
            return Err(StoreError::Meta(e));
        }
        self.generation = generation;
        self.checkpoint = c;
        Ok(())
    }

    /// Give the disks back (tests: crash and reopen).
    pub fn into_disks(self) -> (D, M) {
        (self.data, self.meta)
    }

    /// The data disk (fault injection in tests and the simulator).
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.data
    }

    /// The data and metadata disks (fault injection in tests and the simulator).
    pub fn disks_mut(&mut self) -> (&mut D, &mut M) {
        (&mut self.data, &mut self.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::DEFAULT_GRANULARITY;
    use crate::disk::MemDisk;

    const VOL: usize = 1 << 20;

    fn store() -> Store<MemDisk, MemDisk> {
        let meta = MemDisk::new(meta_len_needed(VOL as u64, DEFAULT_GRANULARITY, 2) as usize);
        let format = Format { granularity: DEFAULT_GRANULARITY, incarnation: 42, learner: true };
        Store::format(MemDisk::new(VOL), meta, format).unwrap()
    }

    fn rec(seq: u64, offset: u64, payload: &[u8]) -> Record {
        Record {
            epoch: 1,
            seq,
            prev: Position::new(if seq > 1 { 1 } else { 0 }, seq - 1),
            offset,
            payload: payload.to_vec().into(),
        }
    }

    /// A MemDisk that counts writeback hints.
    struct Hinted(MemDisk, std::rc::Rc<std::cell::Cell<u32>>);

    impl Disk for Hinted {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.read_at(off, buf)
        }
        fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.write_at(off, data)
        }
        fn start_writeback(&mut self, _off: u64, _len: u64) {
            self.1.set(self.1.get() + 1);
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.0.sync()
        }
    }

    #[test]
    fn writeback_is_started_once_per_eight_mib_applied_not_per_write() {
        let hints = std::rc::Rc::new(std::cell::Cell::new(0));
        let vol = 16 << 20;
        let meta = MemDisk::new(meta_len_needed(vol, DEFAULT_GRANULARITY, 2) as usize);
        let format = Format { granularity: DEFAULT_GRANULARITY, incarnation: 1, learner: false };
        let mut s = Store::format(Hinted(MemDisk::new(vol as usize), hints.clone()), meta, format).unwrap();
        let block = vec![3u8; 4096];
        for seq in 1..=2047u64 {
            s.apply(&rec(seq, (seq % 4096) * 4096, &block)).unwrap();
        }
        assert_eq!(hints.get(), 0, "a hint before 8 MiB were applied");
        s.apply(&rec(2048, 0, &block)).unwrap();
        assert_eq!(hints.get(), 1, "no hint after 8 MiB");
        let big = vec![5u8; 1 << 20];
        for i in 0..8u64 {
            s.apply(&rec(2049 + i, i << 20, &big)).unwrap();
        }
        assert_eq!(hints.get(), 2);
    }

    #[test]
    fn apply_read_checkpoint_power_cut() {
        let mut s = store();
        s.apply(&rec(1, 4096, b"one")).unwrap();
        s.apply(&rec(2, 0, b"")).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Position::new(1, 2));
        s.apply(&rec(3, 4096, b"two")).unwrap();
        let mut buf = [0u8; 3];
        s.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"two");
        let (mut d, mut m) = s.into_disks();
        d.power_cut(&mut || 0);
        m.power_cut(&mut || 0);
        let s = Store::open(d, m).unwrap();
        // K survives; record 3 must be re-applied from the journal.
        assert_eq!(s.applied(), Position::new(1, 2));
        s.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"one");
    }

    #[test]
    fn refuses_out_of_order_and_out_of_range() {
        let mut s = store();
        assert!(matches!(s.apply(&rec(2, 0, b"x")), Err(StoreError::OutOfOrder { .. })));
        assert!(matches!(s.apply(&rec(1, VOL as u64 - 1, b"xy")), Err(StoreError::OutOfRange { .. })));
        assert!(s.read(u64::MAX, &mut [0u8; 2]).is_err());
    }

    #[test]
    fn failed_fsync_is_never_retried() {
        let mut s = store();
        s.apply(&rec(1, 0, b"x")).unwrap();
        s.data_mut().fail_next_sync(crate::disk::SyncFault::DropPages);
        assert!(s.checkpoint().is_err());
        assert!(matches!(s.checkpoint(), Err(StoreError::Failed)));
        // K was not persisted.
        let (_, m) = s.into_disks();
        let s = Store::open(MemDisk::new(VOL), m).unwrap();
        assert_eq!(s.checkpointed().applied, Position::ZERO);
    }

    #[test]
    fn a_new_store_is_a_learner_until_told_and_that_persists() {
        let mut s = store();
        assert!(s.checkpointed().learner);
        assert_eq!(s.checkpointed().incarnation, 42);
        s.end_learner(8).unwrap();
        let (d, m) = s.into_disks();
        let s = Store::open(d, m).unwrap();
        assert!(!s.checkpointed().learner);
        assert_eq!(s.checkpointed().votes_from, 8);
        assert_eq!(s.checkpointed().incarnation, 42);
    }

    #[test]
    fn inconsistent_mark_and_bitmaps_persist() {
        let mut s = store();
        s.mark_inconsistent(7).unwrap();
        let mut bm = DirtyBitmap::new(VOL as u64, DEFAULT_GRANULARITY, Position::new(1, 7)).unwrap();
        bm.set_range(70000, 10).unwrap();
        s.persist_bitmap(1, &bm).unwrap();
        bm.set_range(0, 1).unwrap();
        s.persist_bitmap(1, &bm).unwrap();
        assert!(s.persist_bitmap(2, &bm).is_err());
        let (d, m) = s.into_disks();
        let s = Store::open(d, m).unwrap();
        assert!(!s.checkpointed().consistent);
        assert_eq!(s.checkpointed().resync_id, 7);
        assert_eq!(s.load_bitmap(1).unwrap(), Some(bm));
        assert_eq!(s.load_bitmap(0).unwrap(), None);
    }

    #[test]
    fn a_version_1_checkpoint_opens_with_no_resync_id() {
        let (d, mut m) = store().into_disks();
        let mut p = [0u8; PAYLOAD_LEN_V1];
        put_u32(&mut p, 0, 1);
        put_u32(&mut p, 4, FLAG_CONSISTENT);
        put_u64(&mut p, 8, 3);
        put_u64(&mut p, 16, 9);
        put_u64(&mut p, 24, VOL as u64);
        put_u64(&mut p, 32, DEFAULT_GRANULARITY);
        SlotPair::new(0, CHECKPOINT_SLOT_LEN, KIND_CHECKPOINT).store(&mut m, 5, &p).unwrap();
        let s = Store::open(d, m).unwrap();
        let want = Checkpoint {
            applied: Position::new(3, 9),
            consistent: true,
            resync_id: 0,
            incarnation: 0,
            learner: false,
            votes_from: 0,
            failed: None,
        };
        assert_eq!(s.checkpointed(), want);
    }

    #[test]
    fn a_failed_checkpoint_write_is_followed_by_the_mark_in_its_own_slot() {
        // Rule 9 with the pages of a failed checkpoint write kept clean:
        // the mark reuses that generation, so it overwrites the copy only
        // the cache holds, never the one on the medium; and it fits one
        // sector, so a power cut leaves it whole or not at all.
        let mut s = store();
        s.apply(&rec(1, 0, b"x")).unwrap();
        assert_eq!(s.checkpoint().unwrap(), Position::new(1, 1));
        s.disks_mut().1.fail_next_sync(crate::disk::SyncFault::KeepClean);
        assert!(s.mark_inconsistent(5).is_err());
        s.mark_failed(Position::new(1, 1)).unwrap();
        const { assert!(SLOT_HEADER_LEN + PAYLOAD_LEN_FAILED <= crate::disk::SECTOR as usize) };
        for pick in 0..2 {
            let (mut d, mut m) = s.into_disks();
            m.power_cut(&mut || pick);
            d.power_cut(&mut || pick);
            s = Store::open(d, m).unwrap();
            let c = s.checkpointed();
            assert_eq!((c.applied, c.consistent, c.failed), (Position::new(1, 1), false, Some(Position::new(1, 1))));
        }
    }

    #[test]
    fn the_failure_mark_persists_even_after_the_data_disk_failed_and_a_resync_clears_it() {
        let mut s = store();
        s.apply(&rec(1, 0, b"x")).unwrap();
        s.data_mut().fail_next_sync(crate::disk::SyncFault::KeepClean);
        assert!(s.checkpoint().is_err());
        s.mark_failed(Position::new(1, 1)).unwrap();
        let (d, m) = s.into_disks();
        let mut s = Store::open(d, m).unwrap();
        let c = s.checkpointed();
        assert!(!c.consistent);
        assert_eq!(c.failed, Some(Position::new(1, 1)));
        assert_eq!(c.applied, Position::ZERO, "the failed checkpoint's K was never persisted");
        assert_eq!(c.incarnation, 42);
        s.mark_inconsistent(9).unwrap();
        assert_eq!(s.checkpointed().failed, Some(Position::new(1, 1)), "a resync begins: still failed");
        s.finish_resync(Position::new(1, 1)).unwrap();
        let (d, m) = s.into_disks();
        let s = Store::open(d, m).unwrap();
        assert!(s.checkpointed().consistent);
        assert_eq!(s.checkpointed().failed, None);
    }
}

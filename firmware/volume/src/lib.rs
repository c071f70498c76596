//! triad-volume: the per-node storage engine of the replicated volume.
//!
//! It owns the on-disk formats and their crash safety: the journal ring
//! (Raft's log, [`journal`]), the block store with its checkpoint K
//! ([`store`]), the per-peer dirty bitmaps ([`bitmap`]) and the two-copy
//! metadata slots they all persist through ([`slots`]).
//!
//! It must not decide anything about replication (who is leader, what is
//! committed, when to compact) and must not touch the clock, threads or
//! the OS except through the narrow [`disk::Disk`] trait, so the
//! deterministic simulator can run it over [`disk::MemDisk`] with power
//! cuts. The on-disk layout is documented in `docs/journal.md`.

pub mod bitmap;
mod codec;
pub mod disk;
pub mod journal;
pub mod serde_bytes;
pub mod slots;
pub mod store;

pub use bitmap::{BitmapError, DirtyBitmap};
pub use disk::{Disk, FileDisk, MemDisk, SyncCut, SyncFault, SyncJob};
pub use journal::{Journal, JournalError, JournalSync, Record};
pub use store::{Checkpoint, Store, StoreError};

use serde::{Deserialize, Serialize};

/// Where a journal stands: the (epoch, seq) of a record. Ordered
/// lexicographically, epoch first, as Raft compares log positions. The
/// position (0, 0) is "before the first record". Same shape as
/// `triad_core::Position`; this crate does not depend on the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Epoch (Raft term) of the record.
    pub epoch: u64,
    /// Sequence number (Raft index) of the record; continues across epochs.
    pub seq: u64,
}

impl Position {
    /// The position before any record.
    pub const ZERO: Position = Position { epoch: 0, seq: 0 };

    /// A position from its parts.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Position { epoch, seq }
    }
}

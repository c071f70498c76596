//! What failed in this node's own storage. Every such failure is rule 9's:
//! never retried, the node marks itself failed and is resynced
//! (`Replica::fail`). Messages say what failed; the sources say why; the
//! whole chain is rendered once, where it is reported (the
//! `StorageFailed` notice, `Health::Failed`, a client's error).

use triad_volume::{BitmapError, JournalError, StoreError};

/// A failure of this node's journal, block store or bitmaps.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The journal could not be read, written, synced or compacted.
    #[error("journal")]
    Journal(#[from] JournalError),
    /// The block store or its metadata could not be read, written or synced.
    #[error("block store")]
    Store(#[from] StoreError),
    /// A dirty bitmap refused a range (its geometry does not fit the volume).
    #[error("dirty bitmap")]
    Bitmap(#[from] BitmapError),
    /// The journal lacks a record its own bookkeeping says it holds.
    #[error("record {seq} to discard is not in the journal")]
    MissingRecord {
        /// The record's sequence number.
        seq: u64,
    },
}

impl StorageError {
    /// The error and its sources, on one line.
    pub fn chain(&self) -> String {
        crate::replica::chain(self)
    }
}

//! Replicas over in-memory disks, for the tests of this crate and of the
//! crates above it (the host's volume driver). The supervisor never uses
//! it; the simulator builds its own (its disks record their syncs).

use triad_core::NodeId;
use triad_volume::store::{meta_len_needed, Format};
use triad_volume::MemDisk;

use crate::{ReplConfig, Replica, ReplicaError};

/// A replica of node `id` (1, 2 or 3; its peers are the other two) over
/// fresh in-memory disks: a journal of `journal_len` bytes, a volume of
/// `volume_len`, 4 KiB bitmap granularity, regions and resync chunks;
/// `learner`: formatted as a replacement box (rule 18).
pub fn mem_replica(
    id: NodeId,
    journal_len: usize,
    volume_len: usize,
    learner: bool,
) -> Result<Replica<MemDisk, MemDisk, MemDisk>, ReplicaError> {
    let peers = match id {
        1 => [2, 3],
        2 => [1, 3],
        _ => [1, 2],
    };
    let meta = meta_len_needed(volume_len as u64, 4096, 2) as usize;
    let cfg = ReplConfig { region: 4096, resync_chunk: 4096, ..ReplConfig::default() };
    let format = Format { granularity: 4096, incarnation: u64::from(id), learner };
    Replica::format(id, peers, cfg, MemDisk::new(journal_len), MemDisk::new(volume_len), MemDisk::new(meta), format)
}

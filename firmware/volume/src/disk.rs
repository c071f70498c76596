//! The narrow disk trait every byte of persistent state goes through.
//!
//! The storage engine does I/O only through [`Disk`], so the same code runs
//! on a real file or block device ([`FileDisk`]) and, in tests and the
//! simulator, on an in-memory disk that loses unsynced writes at a power
//! cut ([`MemDisk`]). A `Disk` is a fixed-size array of bytes; writes are
//! durable only after [`Disk::sync`] returns `Ok`.
//!
//! Contract (rule 9 of the protocol sketch): a failed `sync` is never
//! retried. [`FileDisk`] refuses every later call on its descriptor; the
//! kernel underneath does not: after a writeback error a later fsync
//! succeeds, whether the pages it could not write were dropped from the
//! page cache or kept there marked clean (reads then see bytes no medium
//! holds, until a reboot). [`MemDisk`] models both. The caller reacts by
//! marking the node inconsistent and resyncing it, never by trusting what
//! the cache shows (`docs/replication.md`, rule 9).

mod file;
mod mem;

pub use file::FileDisk;
pub use mem::{MemDisk, SyncFault, SECTOR};

use std::io;

/// A fixed-size disk region addressed by byte offset.
pub trait Disk {
    /// Size in bytes; never changes.
    fn len(&self) -> u64;

    /// True when the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `off`. Reads see every earlier write, synced or not.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Write `data` at `off`. Not durable until a successful `sync`.
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;

    /// Write `parts` one after the other from `off`, as one write of
    /// their concatenation: a journal record (header, payload, padding)
    /// goes to the disk without first being copied into one buffer.
    fn write_parts_at(&mut self, off: u64, parts: &[&[u8]]) -> io::Result<()> {
        let mut at = off;
        for part in parts {
            self.write_at(at, part)?;
            at += part.len() as u64;
        }
        Ok(())
    }

    /// A hint: start writing `len` bytes at `off` back to the medium now,
    /// without waiting, so that a later [`Disk::sync`] has less left to
    /// do. Durability is unchanged (only `sync` promises anything); the
    /// default does nothing.
    fn start_writeback(&mut self, _off: u64, _len: u64) {}

    /// Make every earlier write durable (fdatasync). After a failure the
    /// data written before it is not to be trusted, whatever later calls
    /// report: never retry.
    fn sync(&mut self) -> io::Result<()>;

    /// Make reads come from the medium: write back what is dirty (a sync),
    /// then drop the cached pages. Called when a journal is opened: after
    /// a failed writeback the kernel keeps the failed pages in the cache,
    /// clean, and a process that opens the file later is told of no error,
    /// so a journal scanned through the cache would vouch for records no
    /// medium holds. The default only syncs (a disk without a cache).
    fn drop_cache(&mut self) -> io::Result<()> {
        self.sync()
    }

    /// First half of a sync that lets the disk take more writes while it
    /// runs: it covers every write made before this call and promises
    /// nothing about later ones. Run the returned job (on any thread),
    /// then hand its result to [`Disk::finish_sync`] with the cut. The
    /// default syncs here and now, which covers at least as much.
    fn start_sync(&mut self) -> (SyncCut, SyncJob) {
        let result = self.sync();
        (SyncCut(0), SyncJob::done(result))
    }

    /// Second half of [`Disk::start_sync`]: the job's result. An error is
    /// a failed sync (rule 9: never retried).
    fn finish_sync(&mut self, _cut: SyncCut, result: io::Result<()>) -> io::Result<()> {
        result
    }
}

/// Which writes a sync started by [`Disk::start_sync`] covers (what the
/// disk needs at [`Disk::finish_sync`]; opaque to everyone else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncCut(pub(crate) u64);

/// The blocking half of a sync started by [`Disk::start_sync`]: an
/// fdatasync on a descriptor of its own, or nothing (a disk that synced
/// at the start, or an in-memory one).
pub struct SyncJob(SyncWork);

enum SyncWork {
    Done(io::Result<()>),
    Blocking(Box<dyn FnOnce() -> io::Result<()> + Send>),
}

impl SyncJob {
    /// A job whose result is already known.
    pub fn done(result: io::Result<()>) -> Self {
        SyncJob(SyncWork::Done(result))
    }

    /// A job that runs `work` (which may block for long).
    pub fn blocking(work: impl FnOnce() -> io::Result<()> + Send + 'static) -> Self {
        SyncJob(SyncWork::Blocking(Box::new(work)))
    }

    /// Runs it; the result goes to [`Disk::finish_sync`].
    pub fn run(self) -> io::Result<()> {
        match self.0 {
            SyncWork::Done(result) => result,
            SyncWork::Blocking(work) => work(),
        }
    }
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            SyncWork::Done(r) => write!(f, "SyncJob::Done({r:?})"),
            SyncWork::Blocking(_) => f.write_str("SyncJob::Blocking"),
        }
    }
}

/// The error for an access outside the disk.
pub(crate) fn out_of_range(off: u64, len: usize, disk_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("access of {len} bytes at {off} beyond the end of a {disk_len}-byte disk"),
    )
}

/// The error returned by a disk that failed a sync earlier.
pub(crate) fn failed_disk() -> io::Error {
    io::Error::other("disk failed an earlier sync; it is never retried (rule 9)")
}

/// Whether `[off, off + len)` lies inside a disk of `disk_len` bytes.
pub(crate) fn in_range(off: u64, len: usize, disk_len: u64) -> bool {
    off.checked_add(len as u64).is_some_and(|end| end <= disk_len)
}

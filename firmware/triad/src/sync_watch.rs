//! Rule 16's watchdog on the volume's disks: a leader renews its lease
//! only while its syncs complete.
//!
//! The volume thread calls the blocking `fdatasync`s (the journal's at
//! every group commit; the block store's and the metadata's at every
//! checkpoint, compaction and bitmap persist); if a disk hangs, the thread
//! hangs with it and can report nothing. So every disk the replica owns is
//! a [`Watched`] disk, which marks each sync's start and end in one
//! [`SyncWatch`] shared with the runtime loop; the loop checks the mark on
//! every turn (and on a short timer): a sync outstanding for longer than
//! the limit makes the node unfit to lead (`Input::Electable(false)`), and
//! the core steps down at once, dropping the VIP, instead of holding a
//! lease for a cluster that cannot commit. When the sync returns, the node
//! is fit again (if the replica says so): `triad_repl::Fitness` combines
//! the two. Marking at the disk, not around chosen calls, is what makes
//! "every sync" hold as the replica changes: a sync added anywhere in
//! `triad-repl` or `triad-volume` is watched without anyone remembering to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When the syncs in progress started (none: idle): one made inline by
/// the volume thread, and one running on its sync thread (the journal's
/// group commit, `Disk::start_sync`), which may overlap.
#[derive(Debug)]
pub struct SyncWatch {
    origin: Instant,
    /// Microseconds since `origin` + 1 at the start of the inline sync in
    /// progress; 0 while none runs.
    started: AtomicU64,
    /// The same for the sync running on the sync thread.
    background: AtomicU64,
}

impl Default for SyncWatch {
    fn default() -> Self {
        SyncWatch { origin: Instant::now(), started: AtomicU64::new(0), background: AtomicU64::new(0) }
    }
}

impl SyncWatch {
    /// The volume thread is about to sync.
    pub fn begin(&self) {
        self.begin_at(Instant::now());
    }

    /// The sync returned (successfully or not).
    pub fn end(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// A sync for the sync thread was started.
    pub fn begin_background(&self) {
        self.background.store(self.mark(Instant::now()), Ordering::Release);
    }

    /// That sync's result was taken (successfully or not).
    pub fn end_background(&self) {
        self.background.store(0, Ordering::Release);
    }

    /// Whether a sync has been outstanding for longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> bool {
        self.stalled_at(Instant::now(), limit)
    }

    fn mark(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    fn begin_at(&self, now: Instant) {
        self.started.store(self.mark(now), Ordering::Release);
    }

    fn stalled_at(&self, now: Instant, limit: Duration) -> bool {
        [&self.started, &self.background].into_iter().any(|slot| {
            let started = slot.load(Ordering::Acquire);
            started != 0 && now.saturating_duration_since(self.origin + Duration::from_micros(started - 1)) > limit
        })
    }
}

/// A disk whose every sync is marked in a [`SyncWatch`].
#[derive(Debug)]
pub struct Watched<D> {
    disk: D,
    watch: Arc<SyncWatch>,
    /// A sync job was started and its result not taken.
    background: bool,
}

impl<D> Watched<D> {
    /// `disk`, its syncs marked in `watch`.
    pub fn new(disk: D, watch: Arc<SyncWatch>) -> Self {
        Watched { disk, watch, background: false }
    }
}

/// A disk dropped with its sync job's result never taken (the replica was
/// reopened after a storage failure): the job is no longer this replica's
/// business, and the shared watch must not go on timing it (the reopened
/// replica would look stalled until its own next sync).
impl<D> Drop for Watched<D> {
    fn drop(&mut self) {
        if self.background {
            self.watch.end_background();
        }
    }
}

impl<D: triad_volume::Disk> triad_volume::Disk for Watched<D> {
    fn len(&self) -> u64 {
        self.disk.len()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.disk.read_at(off, buf)
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.write_at(off, data)
    }

    fn write_parts_at(&mut self, off: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.disk.write_parts_at(off, parts)
    }

    fn start_writeback(&mut self, off: u64, len: u64) {
        self.disk.start_writeback(off, len);
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.watch.begin();
        let result = self.disk.sync();
        self.watch.end();
        result
    }

    fn drop_cache(&mut self) -> std::io::Result<()> {
        self.watch.begin();
        let result = self.disk.drop_cache();
        self.watch.end();
        result
    }

    fn start_sync(&mut self) -> (triad_volume::SyncCut, triad_volume::SyncJob) {
        self.watch.begin_background();
        self.background = true;
        self.disk.start_sync()
    }

    fn finish_sync(&mut self, cut: triad_volume::SyncCut, result: std::io::Result<()>) -> std::io::Result<()> {
        let result = self.disk.finish_sync(cut, result);
        self.background = false;
        self.watch.end_background();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_is_stalled_only_while_outstanding_past_the_limit() {
        let w = SyncWatch::default();
        let t0 = w.origin + Duration::from_secs(5);
        let limit = Duration::from_secs(2);
        assert!(!w.stalled_at(t0, limit), "idle");
        w.begin_at(t0);
        assert!(!w.stalled_at(t0 + Duration::from_millis(1999), limit));
        assert!(w.stalled_at(t0 + Duration::from_millis(2001), limit));
        w.end();
        assert!(!w.stalled_at(t0 + Duration::from_secs(60), limit), "the sync returned");
        // A sync that starts at the origin itself is still a sync.
        w.begin_at(w.origin);
        assert!(w.stalled_at(w.origin + Duration::from_secs(3), limit));
        w.end();
    }

    /// A disk dropped while its job's result was never taken (a reopen
    /// after a storage failure) stops the watch timing that job.
    #[test]
    fn a_dropped_disk_ends_its_background_sync_in_the_watch() {
        use triad_volume::Disk;
        let watch = Arc::new(SyncWatch::default());
        let mut disk = Watched::new(triad_volume::MemDisk::new(4096), watch.clone());
        let (_cut, _job) = disk.start_sync();
        let later = Instant::now() + Duration::from_secs(10);
        assert!(watch.stalled_at(later, Duration::from_secs(2)));
        drop(disk);
        assert!(!watch.stalled_at(later, Duration::from_secs(2)), "a reopened replica would look stalled");
    }

    /// The sync thread's sync is watched on its own: an inline sync that
    /// starts and ends meanwhile does not hide it.
    #[test]
    fn a_background_sync_is_watched_through_inline_ones() {
        let w = SyncWatch::default();
        let limit = Duration::from_secs(2);
        w.begin_background();
        let t0 = Instant::now();
        w.begin();
        w.end();
        assert!(!w.stalled_at(t0, limit));
        assert!(w.stalled_at(t0 + Duration::from_secs(3), limit), "the background sync is still out");
        w.end_background();
        assert!(!w.stalled_at(t0 + Duration::from_secs(3), limit));
    }
}

//! [`MemDisk`]: an in-memory [`Disk`] with the failure semantics of a real
//! one, for tests and the simulator.
//!
//! Reads see every write (the page cache). Writes since the last `sync`
//! are pending. [`MemDisk::power_cut`] models losing power: for every
//! 512-byte sector touched since the last sync, the medium ends up with
//! its last synced content or with the content after any one of the
//! pending writes to it, chosen at random and independently per sector.
//! That covers dropped writes, writes torn at sector boundaries, writes
//! applied out of order, and writeback that had sent an older version of
//! a page. Sectors themselves are atomic (what drives promise).
//! [`MemDisk::crash`] models a process kill: the page cache survives, so
//! nothing is lost and pending writes stay pending.
//!
//! A failed fdatasync ([`MemDisk::fail_next_sync`]) behaves as Linux does
//! after a writeback error: the failing sync returns the error once, and
//! the pages it could not write are either dropped from the cache (reads
//! see the medium's old content again) or kept in the cache but marked
//! clean (reads still see the new bytes, which are on no medium and which
//! no later sync will write). Either way the next sync succeeds: the trap
//! rule 9 exists for. [`SyncFault::Sticky`] is the older test mode (the
//! disk refuses everything until a power cut), which is what [`FileDisk`]
//! does on its own descriptor.
//!
//! [`FileDisk`]: super::FileDisk
//!
//! It must not draw randomness itself: the caller hands in the generator,
//! so a simulator seed replays the same cut.

use super::{failed_disk, in_range, out_of_range, Disk, SyncCut, SyncJob};
use std::collections::BTreeMap;
use std::io;

/// The unit a power cut keeps or drops: a 512-byte sector.
pub const SECTOR: u64 = 512;

/// How an injected fdatasync failure leaves the disk (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncFault {
    /// Linux: the unwritten pages are dropped from the cache; reads see
    /// the medium's content again. Later syncs succeed.
    DropPages,
    /// Linux: the unwritten pages stay in the cache, marked clean; reads
    /// see bytes no medium holds, a later sync succeeds without writing
    /// them and a power cut loses them.
    KeepClean,
    /// Test mode: every later call fails until a power cut (the cache is
    /// left as it was). What `FileDisk` does to its own descriptor.
    Sticky,
}

impl SyncFault {
    /// One of the two Linux behaviours, chosen by the caller's random bit
    /// (a simulator passes its seeded generator's; `MemDisk` draws nothing).
    pub fn linux(drop_pages: bool) -> SyncFault {
        if drop_pages {
            SyncFault::DropPages
        } else {
            SyncFault::KeepClean
        }
    }
}

/// An in-memory disk that can lose unsynced writes.
#[derive(Clone, Debug)]
pub struct MemDisk {
    /// What the medium holds: survives a power cut.
    durable: Vec<u8>,
    /// What reads see: `durable` plus every pending write.
    cache: Vec<u8>,
    /// Writes since the last sync, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
    /// Writes ever made: the last pending write is number `written - 1`
    /// (a sync started at `written = n` covers the writes before n).
    written: u64,
    /// Fault injection: the next sync fails, leaving the disk so.
    fail_next_sync: Option<SyncFault>,
    /// A sticky sync failure: the disk refuses everything until a power cut.
    failed: bool,
    /// Sync failures injected so far (the simulator tells an expected
    /// storage failure from a bug by it).
    faults: u64,
    /// Number of successful syncs, for tests that count fdatasyncs.
    syncs: u64,
    /// A sync job's writeback failed (decided when it started: the fault
    /// fires while it runs); its finish reports it.
    job_failed: bool,
    /// That failure is still unreported to the disk's own `sync`: the job
    /// and the disk are two open file descriptions, and Linux reports a
    /// writeback error once to each (`FileDisk`).
    error_unseen: bool,
}

impl MemDisk {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> Self {
        MemDisk {
            durable: vec![0; len],
            cache: vec![0; len],
            pending: Vec::new(),
            written: 0,
            fail_next_sync: None,
            failed: false,
            faults: 0,
            syncs: 0,
            job_failed: false,
            error_unseen: false,
        }
    }

    /// A disk whose durable content is `bytes` (e.g. garbage for tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let mut d = MemDisk::new(0);
        d.cache = bytes.clone();
        d.durable = bytes;
        d
    }

    /// Process kill: the kernel's page cache survives, so every write is
    /// kept (still pending: a later power cut can lose what was unsynced).
    /// Its open file descriptions are gone: a writeback error not yet
    /// reported to them is not reported to the next process's (Linux
    /// samples the error state at open).
    pub fn crash(&mut self) {
        self.job_failed = false;
        self.error_unseen = false;
    }

    /// Power cut: each sector written since the last sync keeps its synced
    /// content or takes the content after one of its pending writes, at
    /// random. `rng` supplies 64 random bits per call.
    pub fn power_cut(&mut self, rng: &mut impl FnMut() -> u64) {
        let len = self.durable.len() as u64;
        // The content of each touched sector after each pending write, in
        // write order: the versions the medium may end up holding.
        let mut scratch: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut versions: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (off, data) in &self.pending {
            let end = off + data.len() as u64;
            let mut sector = off / SECTOR;
            while sector * SECTOR < end {
                let s_start = sector * SECTOR;
                let s_end = (s_start + SECTOR).min(len);
                let cur =
                    scratch.entry(sector).or_insert_with(|| self.durable[s_start as usize..s_end as usize].to_vec());
                let from = (*off).max(s_start);
                let to = end.min(s_end);
                cur[(from - s_start) as usize..(to - s_start) as usize]
                    .copy_from_slice(&data[(from - off) as usize..(to - off) as usize]);
                versions.entry(sector).or_default().push(cur.clone());
                sector += 1;
            }
        }
        for (sector, vs) in versions {
            let pick = (rng() % (vs.len() as u64 + 1)) as usize;
            if pick > 0 {
                let s_start = (sector * SECTOR) as usize;
                let v = &vs[pick - 1];
                self.durable[s_start..s_start + v.len()].copy_from_slice(v);
            }
        }
        self.pending.clear();
        self.cache.clone_from(&self.durable);
        // Power comes back: a new boot, a working disk.
        self.failed = false;
        self.fail_next_sync = None;
        self.job_failed = false;
        self.error_unseen = false;
    }

    /// Fault injection: make the next `sync` fail and leave the disk as
    /// `fault` says.
    pub fn fail_next_sync(&mut self, fault: SyncFault) {
        self.fail_next_sync = Some(fault);
    }

    /// Whether a sync failure is armed and has not happened yet.
    pub fn sync_fault_armed(&self) -> bool {
        self.fail_next_sync.is_some()
    }

    /// How many injected sync failures have happened.
    pub fn faults(&self) -> u64 {
        self.faults
    }

    /// The failing sync: nothing pending reaches the medium, and the cache
    /// ends up as `fault` says.
    fn fail_sync(&mut self, fault: SyncFault) -> io::Error {
        self.faults += 1;
        match fault {
            SyncFault::DropPages => {
                for (off, data) in self.pending.drain(..) {
                    let o = off as usize;
                    self.cache[o..o + data.len()].copy_from_slice(&self.durable[o..o + data.len()]);
                }
            }
            SyncFault::KeepClean => self.pending.clear(),
            SyncFault::Sticky => self.failed = true,
        }
        io::Error::other("injected fdatasync failure")
    }

    /// How many syncs succeeded so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// Number of writes not yet synced.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// The bytes the medium holds (what a power cut now would leave, at
    /// best).
    pub fn durable_bytes(&self) -> &[u8] {
        &self.durable
    }
}

impl Disk for MemDisk {
    fn len(&self) -> u64 {
        self.cache.len() as u64
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        if !in_range(off, buf.len(), self.len()) {
            return Err(out_of_range(off, buf.len(), self.len()));
        }
        let off = off as usize;
        buf.copy_from_slice(&self.cache[off..off + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        if !in_range(off, data.len(), self.len()) {
            return Err(out_of_range(off, data.len(), self.len()));
        }
        let o = off as usize;
        self.cache[o..o + data.len()].copy_from_slice(data);
        self.pending.push((off, data.to_vec()));
        self.written += 1;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        if std::mem::take(&mut self.error_unseen) {
            // A job's writeback failed since this description last synced.
            self.faults += 1;
            return Err(io::Error::other("injected fdatasync failure (seen by a later sync)"));
        }
        if let Some(fault) = self.fail_next_sync.take() {
            return Err(self.fail_sync(fault));
        }
        self.make_durable(self.pending.len());
        Ok(())
    }

    /// A sync, then what reads see is what the medium holds (pages the
    /// cache kept after a failed writeback, `SyncFault::KeepClean`, are
    /// gone).
    fn drop_cache(&mut self) -> io::Result<()> {
        self.sync()?;
        self.cache.clone_from(&self.durable);
        Ok(())
    }

    /// Covers the writes made so far (their count is the cut); the work
    /// happens at [`Disk::finish_sync`], which is when the simulator's
    /// sync completes. Writes made in between stay pending: a power cut
    /// before the finish may lose any of them, and after it those made
    /// after the start still may. An armed fault fires here, as the
    /// job's writeback fails while it runs: the pending writes go as the
    /// fault says, the finish reports it, and so does the next `sync`
    /// (a second description).
    fn start_sync(&mut self) -> (SyncCut, SyncJob) {
        if let Some(fault) = self.fail_next_sync.take() {
            let _ = self.fail_sync(fault);
            self.job_failed = true;
            self.error_unseen = !self.failed;
        }
        (SyncCut(self.written), SyncJob::done(Ok(())))
    }

    fn finish_sync(&mut self, cut: SyncCut, result: io::Result<()>) -> io::Result<()> {
        result?;
        if std::mem::take(&mut self.job_failed) {
            return Err(io::Error::other("injected fdatasync failure (the sync job)"));
        }
        if self.failed {
            return Err(failed_disk());
        }
        // Pending writes are the last `pending.len()` ever made; those
        // numbered below the cut were made before the start.
        let first_pending = self.written - self.pending.len() as u64;
        self.make_durable(cut.0.saturating_sub(first_pending) as usize);
        Ok(())
    }
}

impl MemDisk {
    /// The oldest `n` pending writes reach the medium; a successful sync.
    fn make_durable(&mut self, n: usize) {
        for (off, data) in self.pending.drain(..n.min(self.pending.len())) {
            let o = off as usize;
            self.durable[o..o + data.len()].copy_from_slice(&data);
        }
        self.syncs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(seq: Vec<u64>) -> impl FnMut() -> u64 {
        let mut i = 0;
        move || {
            let v = seq[i % seq.len()];
            i += 1;
            v
        }
    }

    #[test]
    fn synced_data_survives_power_cut() {
        let mut d = MemDisk::new(4096);
        d.write_at(10, b"abc").unwrap();
        d.sync().unwrap();
        d.write_at(10, b"xyz").unwrap();
        d.power_cut(&mut counter(vec![0]));
        let mut b = [0u8; 3];
        d.read_at(10, &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn crash_keeps_everything() {
        let mut d = MemDisk::new(4096);
        d.write_at(0, b"abc").unwrap();
        d.crash();
        let mut b = [0u8; 3];
        d.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(d.pending_writes(), 1);
    }

    #[test]
    fn power_cut_tears_at_sector_granularity() {
        let mut d = MemDisk::new(4096);
        // One write spanning two sectors: keep the first, drop the second.
        d.write_at(500, &[7u8; 24]).unwrap();
        d.power_cut(&mut counter(vec![1, 0]));
        let mut b = [0u8; 24];
        d.read_at(500, &mut b).unwrap();
        assert_eq!(&b[..12], &[7u8; 12]);
        assert_eq!(&b[12..], &[0u8; 12]);
    }

    #[test]
    fn power_cut_may_keep_an_older_pending_version() {
        let mut d = MemDisk::new(1024);
        d.write_at(0, &[1u8; 4]).unwrap();
        d.write_at(2, &[2u8; 4]).unwrap();
        // Pick version 1 of sector 0: the first write only.
        d.power_cut(&mut counter(vec![1]));
        let mut b = [0u8; 6];
        d.read_at(0, &mut b).unwrap();
        assert_eq!(b, [1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn a_sticky_failed_sync_refuses_everything_until_power_comes_back() {
        let mut d = MemDisk::new(1024);
        d.fail_next_sync(SyncFault::Sticky);
        assert!(d.sync().is_err());
        assert!(d.sync().is_err());
        assert!(d.write_at(0, b"a").is_err());
        d.power_cut(&mut counter(vec![0]));
        d.write_at(0, b"a").unwrap();
        d.sync().unwrap();
    }

    fn read3(d: &MemDisk, off: u64) -> [u8; 3] {
        let mut b = [0u8; 3];
        d.read_at(off, &mut b).unwrap();
        b
    }

    #[test]
    fn after_a_failed_sync_with_dropped_pages_reads_see_the_medium_and_the_next_sync_succeeds() {
        let mut d = MemDisk::new(4096);
        d.write_at(10, b"abc").unwrap();
        d.sync().unwrap();
        d.write_at(10, b"xyz").unwrap();
        d.write_at(600, b"new").unwrap();
        d.fail_next_sync(SyncFault::DropPages);
        assert!(d.sync().is_err());
        assert_eq!(d.faults(), 1);
        assert_eq!(d.pending_writes(), 0);
        assert_eq!(&read3(&d, 10), b"abc");
        assert_eq!(read3(&d, 600), [0; 3]);
        // The trap: the next sync reports success, and the disk works.
        d.sync().unwrap();
        d.write_at(20, b"ok!").unwrap();
        d.sync().unwrap();
        assert_eq!(&d.durable_bytes()[20..23], b"ok!");
    }

    #[test]
    fn after_a_failed_sync_with_clean_pages_reads_see_data_no_medium_holds() {
        let mut d = MemDisk::new(4096);
        d.write_at(10, b"abc").unwrap();
        d.sync().unwrap();
        d.write_at(10, b"xyz").unwrap();
        d.fail_next_sync(SyncFault::KeepClean);
        assert!(d.sync().is_err());
        assert_eq!(d.pending_writes(), 0);
        assert_eq!(&read3(&d, 10), b"xyz");
        // The next sync succeeds without writing them ...
        d.sync().unwrap();
        assert_eq!(&d.durable_bytes()[10..13], b"abc");
        // ... a process kill keeps the cache ...
        d.crash();
        assert_eq!(&read3(&d, 10), b"xyz");
        // ... and a power cut shows what the medium holds.
        d.power_cut(&mut counter(vec![1]));
        assert_eq!(&read3(&d, 10), b"abc");
    }
}

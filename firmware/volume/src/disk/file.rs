//! [`FileDisk`]: a [`Disk`] over a regular file or a block device.
//!
//! Positional I/O only (pread/pwrite through `FileExt`), so no shared
//! cursor; `sync` is `fdatasync`. It must not grow the file: the size is
//! fixed when it is opened.

use super::{failed_disk, in_range, out_of_range, Disk, SyncCut, SyncJob};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A fixed-size disk backed by a file or block device.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    /// A second open of the same file for the sync jobs
    /// ([`Disk::start_sync`]), which fdatasync it on another thread while
    /// writes go on through `file`. Its own open file description, not a
    /// `dup`: Linux reports a writeback error once to each description
    /// (errseq), so a job's failed fdatasync cannot swallow the error the
    /// next inline `sync` must see, nor the other way round (with one
    /// description, an inline header sync after a failed job returned Ok
    /// and the journal vouched for pages the kernel had dropped: review of
    /// 342adc4).
    sync_file: Arc<File>,
    len: u64,
    /// Set when a sync failed; the disk refuses everything after that.
    failed: bool,
}

impl FileDisk {
    /// Open an existing file or block device read-write; its current size
    /// is the disk's size. (Seeking to the end works for block devices,
    /// whose metadata length is 0.)
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        let sync_file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
        Ok(FileDisk { file, sync_file, len, failed: false })
    }

    /// Create (or truncate) a regular file of `len` bytes, zero-filled.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(len)?;
        // The new size must survive a power cut before anything is
        // written inside it: sync the metadata once, here.
        file.sync_all()?;
        let sync_file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
        Ok(FileDisk { file, sync_file, len, failed: false })
    }

    /// Whether a sync has failed (the disk is then unusable for good).
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

impl Disk for FileDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        if !in_range(off, buf.len(), self.len) {
            return Err(out_of_range(off, buf.len(), self.len));
        }
        self.file.read_exact_at(buf, off)
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        if !in_range(off, data.len(), self.len) {
            return Err(out_of_range(off, data.len(), self.len));
        }
        self.file.write_all_at(data, off)
    }

    fn write_parts_at(&mut self, off: u64, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.failed {
            return Err(failed_disk());
        }
        if !in_range(off, total, self.len) {
            return Err(out_of_range(off, total, self.len));
        }
        // pwritev takes at most MAX_PARTS parts per call, and a call
        // with nothing to write returns 0 (it would look like a failed
        // write): empty parts are dropped, the rest go in groups.
        let parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
        let mut at = off;
        for group in parts.chunks(MAX_PARTS) {
            pwritev_all(&self.file, at, group)?;
            at += group.iter().map(|p| p.len() as u64).sum::<u64>();
        }
        Ok(())
    }

    fn start_writeback(&mut self, off: u64, len: u64) {
        if self.failed || !in_range(off, len as usize, self.len) {
            return;
        }
        let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len)) else { return };
        // SAFETY: a plain syscall on an open descriptor, no memory passed.
        // Only a hint: an error (a filesystem without it) changes nothing.
        let _ = unsafe { libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        // Rule 9: a failed fdatasync may have dropped dirty pages; a retry
        // could then "succeed" without them. Remember the failure forever.
        self.file.sync_data().inspect_err(|_| self.failed = true)
    }

    /// fdatasync, then `POSIX_FADV_DONTNEED` over the whole file: the
    /// clean pages go, so the next reads fetch what the medium holds.
    fn drop_cache(&mut self) -> io::Result<()> {
        self.sync()?;
        // SAFETY: a plain syscall on an open descriptor, no memory passed.
        let rc = unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// An fdatasync of the same file through its second description, on
    /// the job's thread: it covers every write that returned before it
    /// began (which includes all made before this call), and writes may go
    /// on here meanwhile. A writeback error is reported to it and, once,
    /// to the next inline `sync` as well (one error cursor each).
    fn start_sync(&mut self) -> (SyncCut, SyncJob) {
        if self.failed {
            return (SyncCut(0), SyncJob::done(Err(failed_disk())));
        }
        let file = Arc::clone(&self.sync_file);
        (SyncCut(0), SyncJob::blocking(move || file.sync_data()))
    }

    fn finish_sync(&mut self, _cut: SyncCut, result: io::Result<()>) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        // Rule 9 as in `sync`.
        result.inspect_err(|_| self.failed = true)
    }
}

/// Parts per pwritev(2) call.
const MAX_PARTS: usize = 16;

/// One pwritev(2) for all of `parts` (at most [`MAX_PARTS`] of them, none
/// empty), repeated for whatever a short write left over.
fn pwritev_all(file: &File, mut off: u64, parts: &[&[u8]]) -> io::Result<()> {
    if parts.len() > MAX_PARTS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} parts, at most {MAX_PARTS}", parts.len())));
    }
    let mut first = 0; // the first part with bytes left
    let mut skip = 0; // bytes of it already written
    while first < parts.len() {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_PARTS];
        let mut n = 0;
        for (i, part) in parts[first..].iter().enumerate() {
            let rest = if i == 0 { &part[skip..] } else { part };
            iov[n] = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
            n += 1;
        }
        let at = libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `iov[..n]` points into `parts`, which outlive the call and
        // are only read by the kernel; `n` ≤ MAX_PARTS fits a c_int.
        let written = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), n as libc::c_int, at) };
        if written < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let mut left = written as usize;
        off += left as u64;
        while first < parts.len() && left > 0 {
            let rest = parts[first].len() - skip;
            if left >= rest {
                left -= rest;
                first += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
        // Parts that were empty to begin with.
        while first < parts.len() && parts[first].len() == skip {
            first += 1;
            skip = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sync jobs' file is a second open, not a `dup`: a dup shares the
    /// file offset (and the writeback-error cursor) with the original, a
    /// second open has its own. (A future `try_clone` here would undo the
    /// fix for a job's error being swallowed by the next inline sync.)
    #[test]
    fn sync_jobs_use_their_own_open_file_description() {
        use std::io::Seek;
        let path = std::env::temp_dir().join(format!("triad-filedisk-desc-{}", std::process::id()));
        let mut d = FileDisk::create(&path, 8192).unwrap();
        (&d.file).seek(SeekFrom::Start(100)).unwrap();
        assert_eq!((&*d.sync_file).stream_position().unwrap(), 0, "the two share an offset: one description");
        let _ = d.write_at(0, b"x");
        std::fs::remove_file(&path).unwrap();
    }

    /// The job runs on another thread while writes go on here; a failure
    /// it reports fails the disk for good (rule 9), whatever comes later.
    #[test]
    fn a_sync_job_runs_on_another_thread_and_its_failure_sticks() {
        let path = std::env::temp_dir().join(format!("triad-filedisk-job-{}", std::process::id()));
        let mut d = FileDisk::create(&path, 8192).unwrap();
        d.write_at(0, b"before").unwrap();
        let (cut, job) = d.start_sync();
        let worker = std::thread::spawn(move || job.run());
        d.write_at(4096, b"during").unwrap();
        let result = worker.join().unwrap();
        d.finish_sync(cut, result).unwrap();
        let mut b = [0u8; 6];
        d.read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"during");
        let (cut, _job) = d.start_sync();
        assert!(d.finish_sync(cut, Err(io::Error::other("EIO"))).is_err());
        assert!(d.is_failed());
        assert!(d.write_at(0, b"x").is_err());
        let (cut, job) = d.start_sync();
        assert!(d.finish_sync(cut, job.run()).is_err(), "never retried");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn round_trip_and_bounds() {
        let dir = std::env::temp_dir().join(format!("triad-filedisk-{}", std::process::id()));
        let mut d = FileDisk::create(&dir, 8192).unwrap();
        assert_eq!(d.len(), 8192);
        d.write_at(4000, b"hello").unwrap();
        d.sync().unwrap();
        let d2 = FileDisk::open(&dir).unwrap();
        let mut buf = [0u8; 5];
        d2.read_at(4000, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(d.write_at(8190, b"xyz").is_err());
        assert!(d2.read_at(u64::MAX, &mut buf).is_err());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn parts_land_back_to_back_and_out_of_range_writes_nothing() {
        let path = std::env::temp_dir().join(format!("triad-filedisk-parts-{}", std::process::id()));
        let mut d = FileDisk::create(&path, 8192).unwrap();
        let big = vec![7u8; 5000];
        d.write_parts_at(100, &[b"head", b"", &big, b"tail"]).unwrap();
        let mut buf = vec![0u8; 5012];
        d.read_at(100, &mut buf).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert!(buf[4..5004].iter().all(|&b| b == 7));
        assert_eq!(&buf[5004..5008], b"tail");
        assert_eq!(&buf[5008..], &[0, 0, 0, 0]);
        let err = d.write_parts_at(8000, &[b"x", &big]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let mut tail = [9u8; 192];
        d.read_at(8000, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0), "a refused write changed the disk");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn only_empty_parts_is_a_no_op_like_the_default() {
        let path = std::env::temp_dir().join(format!("triad-review-parts-{}", std::process::id()));
        let mut d = FileDisk::create(&path, 8192).unwrap();
        let r = d.write_parts_at(100, &[b"", b""]);
        let many: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i % 3) * 7]).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        let r2 = d.write_parts_at(200, &refs);
        let mut back = vec![0u8; refs.iter().map(|p| p.len()).sum()];
        d.read_at(200, &mut back).unwrap();
        std::fs::remove_file(&path).unwrap();
        r.unwrap();
        r2.unwrap();
        assert_eq!(back, refs.concat(), "40 parts, some empty, land back to back");
    }
}

//! [`FileDisk`]: a [`Disk`] over a regular file or a block device.
//!
//! Positional I/O only (pread/pwrite through `FileExt`), so no shared
//! cursor; `sync` is `fdatasync`. It must not grow the file: the size is
//! fixed when it is opened.

use super::{failed_disk, in_range, out_of_range, Disk};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A fixed-size disk backed by a file or block device.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
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
        Ok(FileDisk { file, len, failed: false })
    }

    /// Create (or truncate) a regular file of `len` bytes, zero-filled.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len(len)?;
        // The new size must survive a power cut before anything is
        // written inside it: sync the metadata once, here.
        file.sync_all()?;
        Ok(FileDisk { file, len, failed: false })
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

    fn sync(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(failed_disk());
        }
        // Rule 9: a failed fdatasync may have dropped dirty pages; a retry
        // could then "succeed" without them. Remember the failure forever.
        self.file.sync_data().inspect_err(|_| self.failed = true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! The block device behind an NBD export: the seam where the replicated
//! journal plugs in later.
//!
//! [`BlockDevice`] is deliberately narrow: byte ranges the NBD layer has
//! already checked (inside the device, aligned to [`BLOCK_SIZE`], at most
//! `MAX_PAYLOAD` for reads and writes), owned buffers, and durability
//! expressed only as `fua` and `flush`. Its methods are async because the
//! journal will complete a write only once a peer has it; an
//! implementation must not block the runtime thread.
//!
//! Durability contract (what the server relies on to keep the spec's
//! promises for FLUSH and FUA):
//! - `write_at(.., fua = true)` returns only once that data is durable;
//! - `flush()` returns only once every write that *returned* before
//!   `flush()` was called is durable.
//!
//! Two implementations, chosen by the caller:
//! - [`FileDevice`]: a fixed-size file or block device. FLUSH is
//!   `fdatasync`; FUA is `pwrite` then `fdatasync` (what nbdkit's file
//!   plugin and qemu-nbd do). TRIM punches a hole with `fallocate`; where
//!   the file system cannot, it succeeds without doing anything, since
//!   TRIM is only a hint. WRITE_ZEROES punches a hole, or with `NO_HOLE`
//!   uses `FALLOC_FL_ZERO_RANGE`, and falls back to writing zeroes.
//! - [`MemDevice`]: in memory, for tests of the layers above.
//!
//! Must not: check NBD rules (that is `request::check`), or reorder a
//! caller's `flush` before writes that returned earlier.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{fallocate, FallocateFlags};

use super::pool::IoBuf;
use super::proto::Errno;
pub use super::proto::BLOCK_SIZE;
use super::reply_line::DirectReply;

/// What failed in a block device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The backing file could not be opened or sized.
    #[error("cannot open block device {path}")]
    Open {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Size zero, not a multiple of the block size, or beyond `i64::MAX`.
    #[error("block device {path} has size {size}, not a positive multiple of {BLOCK_SIZE}")]
    Size {
        /// Path given.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A read, write, sync or fallocate failed.
    #[error("{op} at {offset}+{len} failed")]
    Io {
        /// Operation.
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The blocking worker running the operation went away (runtime
    /// shutting down, or the worker panicked).
    #[error("{op} worker did not complete")]
    Worker {
        /// Operation.
        op: &'static str,
    },
    /// A range outside the device reached the device (a bug above).
    #[error("{op} at {offset}+{len} is outside the device")]
    Range {
        /// Operation.
        op: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl DeviceError {
    /// NBD error value for this failure (spec: map EDQUOT and EFBIG to
    /// ENOSPC; everything else the client can only treat as EIO).
    pub fn errno(&self) -> Errno {
        match self {
            Self::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) =>
            {
                Errno::NoSpc
            }
            Self::Range { .. } => Errno::Inval,
            _ => Errno::Io,
        }
    }
}

/// Result of a device operation.
pub type DevResult<T> = Result<T, DeviceError>;

/// A fixed-size block device (see the module doc for the durability contract).
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes; fixed for the device's lifetime.
    fn size(&self) -> u64;
    /// Fills `buf` (the server's preallocated buffer, `buf.len()` bytes)
    /// from `offset` and hands it back.
    fn read_at(&self, offset: u64, buf: IoBuf) -> impl Future<Output = DevResult<IoBuf>> + Send;
    /// Writes `data` at `offset`; durable before returning if `fua`. The
    /// buffer goes back to the server's pool when dropped.
    fn write_at(&self, offset: u64, data: IoBuf, fua: bool) -> impl Future<Output = DevResult<()>> + Send;
    /// As [`write_at`](Self::write_at), and the device may send the
    /// success reply itself through `reply` once the write has returned in
    /// the sense above (from any thread, without waiting for this future to
    /// be polled). `Ok(true)`: it did, the server sends nothing more.
    /// Devices that finish writes on the caller's task keep this default.
    fn write_at_replying(
        &self,
        offset: u64,
        data: IoBuf,
        fua: bool,
        reply: DirectReply,
    ) -> impl Future<Output = DevResult<bool>> + Send {
        drop(reply);
        async move { self.write_at(offset, data, fua).await.map(|()| false) }
    }
    /// Makes every write that returned before this call durable.
    fn flush(&self) -> impl Future<Output = DevResult<()>> + Send;
    /// Hint that a range is unused; contents afterwards are unspecified.
    fn trim(&self, offset: u64, len: u32, fua: bool) -> impl Future<Output = DevResult<()>> + Send;
    /// Makes a range read as zeroes; `no_hole`: keep it allocated.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> impl Future<Output = DevResult<()>> + Send;
}

/// A fixed-size regular file or block device, with blocking syscalls run
/// on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct FileDevice {
    file: Arc<File>,
    size: u64,
}

fn check_size(path: &Path, size: u64) -> DevResult<()> {
    if size == 0 || !size.is_multiple_of(u64::from(BLOCK_SIZE)) || i64::try_from(size).is_err() {
        return Err(DeviceError::Size { path: path.to_owned(), size });
    }
    Ok(())
}

impl FileDevice {
    /// Opens an existing file or block device read-write; its current size
    /// is the export size.
    pub fn open(path: &Path) -> DevResult<Self> {
        let open_err = |source| DeviceError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        // Seek to the end rather than metadata().len(): a block device's
        // metadata length is 0.
        let size = io::Seek::seek(&mut &file, io::SeekFrom::End(0)).map_err(open_err)?;
        check_size(path, size)?;
        Ok(Self { file: Arc::new(file), size })
    }

    /// Creates (or truncates) a sparse file of `size` bytes and opens it.
    pub fn create(path: &Path, size: u64) -> DevResult<Self> {
        check_size(path, size)?;
        let open_err = |source| DeviceError::Open { path: path.to_owned(), source };
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).map_err(open_err)?;
        file.set_len(size).map_err(open_err)?;
        Ok(Self { file: Arc::new(file), size })
    }

    fn range(&self, op: &'static str, offset: u64, len: u64) -> DevResult<(i64, i64)> {
        let bad = || DeviceError::Range { op, offset, len };
        let end = offset.checked_add(len).ok_or_else(bad)?;
        if end > self.size {
            return Err(bad());
        }
        // size <= i64::MAX (checked at open), so both fit.
        Ok((i64::try_from(offset).map_err(|_| bad())?, i64::try_from(len).map_err(|_| bad())?))
    }

    /// Runs `f` on the blocking pool with the file.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&File) -> DevResult<T> + Send + 'static,
    ) -> DevResult<T> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || f(&file)).await.map_err(|_| DeviceError::Worker { op })?
    }
}

fn io_err(op: &'static str, offset: u64, len: u64) -> impl FnOnce(io::Error) -> DeviceError {
    move |source| DeviceError::Io { op, offset, len, source }
}

fn sync(file: &File, fua: bool, offset: u64, len: u64) -> DevResult<()> {
    if fua {
        file.sync_data().map_err(io_err("fdatasync", offset, len))?;
    }
    Ok(())
}

/// `fallocate`, reporting "not supported here" as `Ok(false)`.
fn try_fallocate(file: &File, flags: FallocateFlags, off: i64, len: i64) -> io::Result<bool> {
    match fallocate(file.as_raw_fd(), flags, off, len) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Writes zeroes over a range, 1 MiB at a time.
fn write_zero_bytes(file: &File, offset: u64, len: u64) -> DevResult<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(chunk.len() as u64);
        // n <= chunk.len(), so the slice is in bounds.
        let buf = chunk.get(..n as usize).unwrap_or_default();
        file.write_all_at(buf, offset + at).map_err(io_err("write zeroes", offset, len))?;
        at += n;
    }
    Ok(())
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, mut buf: IoBuf) -> DevResult<IoBuf> {
        let len = buf.len() as u64;
        self.range("read", offset, len)?;
        self.blocking("read", move |f| {
            let mut at = offset;
            for c in buf.chunks_mut() {
                f.read_exact_at(c, at).map_err(io_err("read", offset, len))?;
                at += c.len() as u64;
            }
            Ok(buf)
        })
        .await
    }

    async fn write_at(&self, offset: u64, data: IoBuf, fua: bool) -> DevResult<()> {
        let len = data.len() as u64;
        self.range("write", offset, len)?;
        self.blocking("write", move |f| {
            let mut at = offset;
            for c in data.chunks() {
                f.write_all_at(c, at).map_err(io_err("write", offset, len))?;
                at += c.len() as u64;
            }
            sync(f, fua, offset, len)
        })
        .await
    }

    async fn flush(&self) -> DevResult<()> {
        self.blocking("flush", |f| sync(f, true, 0, 0)).await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> DevResult<()> {
        let (off, n) = self.range("trim", offset, u64::from(len))?;
        self.blocking("trim", move |f| {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            // Not supported: TRIM is a hint, succeed without discarding.
            try_fallocate(f, flags, off, n).map_err(io_err("trim", offset, u64::from(len)))?;
            sync(f, fua, offset, u64::from(len))
        })
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool, no_hole: bool) -> DevResult<()> {
        let (off, n) = self.range("write zeroes", offset, u64::from(len))?;
        self.blocking("write zeroes", move |f| {
            let flags = if no_hole {
                FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
            } else {
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
            };
            let done = try_fallocate(f, flags, off, n).map_err(io_err("write zeroes", offset, u64::from(len)))?;
            if !done {
                write_zero_bytes(f, offset, u64::from(len))?;
            }
            sync(f, fua, offset, u64::from(len))
        })
        .await
    }
}

/// An in-memory device: volatile, so `fua` and `flush` have nothing to do.
#[derive(Debug, Clone)]
pub struct MemDevice {
    data: Arc<Mutex<Vec<u8>>>,
}

impl MemDevice {
    /// A zeroed device of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self { data: Arc::new(Mutex::new(vec![0; size])) }
    }

    fn with<T>(&self, op: &'static str, offset: u64, len: u64, f: impl FnOnce(&mut [u8]) -> T) -> DevResult<T> {
        let bad = || DeviceError::Range { op, offset, len };
        let mut data = self.data.lock().map_err(|_| DeviceError::Worker { op })?;
        let start = usize::try_from(offset).map_err(|_| bad())?;
        let end = start.checked_add(usize::try_from(len).map_err(|_| bad())?).ok_or_else(bad)?;
        data.get_mut(start..end).map(f).ok_or_else(bad)
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.lock().map(|d| d.len() as u64).unwrap_or(0)
    }

    async fn read_at(&self, offset: u64, mut buf: IoBuf) -> DevResult<IoBuf> {
        self.with("read", offset, buf.len() as u64, |r| buf.copy_from(r))?;
        Ok(buf)
    }

    async fn write_at(&self, offset: u64, data: IoBuf, _fua: bool) -> DevResult<()> {
        self.with("write", offset, data.len() as u64, |r| {
            let mut at = 0;
            for c in data.chunks() {
                r[at..at + c.len()].copy_from_slice(c);
                at += c.len();
            }
        })
    }

    async fn flush(&self) -> DevResult<()> {
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> DevResult<()> {
        self.with("trim", offset, u64::from(len), |_| ())
    }

    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, _no_hole: bool) -> DevResult<()> {
        self.with("write zeroes", offset, u64::from(len), |r| r.fill(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("triad-nbd-dev-{tag}-{}", std::process::id()))
    }

    use super::super::pool::{BufPool, PoolSize};

    /// A small pool: 8 KiB buffers, and 4 KiB large ones so a request of
    /// more than 8 KiB is a chain (the chunking is exercised).
    fn pool() -> std::sync::Arc<BufPool> {
        BufPool::new(PoolSize { small: (8192, 4), large: (4096, 8) })
    }

    async fn buf(len: usize, fill: u8) -> IoBuf {
        let mut b = pool().acquire(len).await.expect("buffers");
        b.copy_from(&vec![fill; len]);
        b
    }

    async fn read(d: &impl BlockDevice, offset: u64, len: usize) -> DevResult<Vec<u8>> {
        d.read_at(offset, buf(len, 0xee).await).await.map(|b| b.to_vec())
    }

    #[tokio::test]
    async fn file_device_round_trip_zero_trim() -> Result<(), DeviceError> {
        let path = temp("rt");
        let d = FileDevice::create(&path, 1 << 20)?;
        assert_eq!(d.size(), 1 << 20);
        d.write_at(4096, buf(8192, 0xab).await, true).await?;
        assert_eq!(read(&d, 4096, 8192).await?, vec![0xab; 8192]);
        d.write_at(65536, buf(20480, 0xcd).await, false).await?;
        assert_eq!(read(&d, 65536, 20480).await?, vec![0xcd; 20480]);
        d.write_zeroes(4096, 4096, false, false).await?;
        d.write_zeroes(8192, 4096, false, true).await?;
        assert_eq!(read(&d, 4096, 8192).await?, vec![0; 8192]);
        d.write_at(0, buf(4096, 1).await, false).await?;
        d.trim(0, 4096, true).await?;
        d.flush().await?;
        assert!(matches!(read(&d, (1 << 20) - 4096, 8192).await, Err(DeviceError::Range { .. })));
        let reopened = FileDevice::open(&path)?;
        assert_eq!(reopened.size(), 1 << 20);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn sizes_are_checked() {
        let path = temp("size");
        assert!(matches!(FileDevice::create(&path, 4095), Err(DeviceError::Size { size: 4095, .. })));
        assert!(matches!(FileDevice::create(&path, 0), Err(DeviceError::Size { .. })));
        assert!(matches!(FileDevice::open(&temp("missing")), Err(DeviceError::Open { .. })));
    }

    #[test]
    fn errno_mapping() {
        let io = |code| DeviceError::Io { op: "write", offset: 0, len: 0, source: io::Error::from_raw_os_error(code) };
        assert_eq!(io(libc::ENOSPC).errno(), Errno::NoSpc);
        assert_eq!(io(libc::EDQUOT).errno(), Errno::NoSpc);
        assert_eq!(io(libc::EFBIG).errno(), Errno::NoSpc);
        assert_eq!(io(libc::EIO).errno(), Errno::Io);
        assert_eq!(DeviceError::Worker { op: "x" }.errno(), Errno::Io);
    }

    #[tokio::test]
    async fn mem_device() -> Result<(), DeviceError> {
        let d = MemDevice::new(32768);
        d.write_at(0, buf(4096, 7).await, false).await?;
        assert_eq!(read(&d, 0, 4096).await?, vec![7; 4096]);
        d.write_at(8192, buf(12288, 9).await, false).await?;
        assert_eq!(read(&d, 8192, 12288).await?, vec![9; 12288]);
        d.write_zeroes(0, 4096, false, false).await?;
        assert_eq!(read(&d, 0, 4096).await?, vec![0; 4096]);
        assert!(read(&d, 28672, 8192).await.is_err());
        Ok(())
    }
}

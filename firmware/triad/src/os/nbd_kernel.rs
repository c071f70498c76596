//! The kernel's nbd driver on the supervisor's own export (the appliance
//! path of docs/nbd.md): opens `/dev/nbdN`, gives the driver one end of a
//! unix socketpair, and hands the other end back to the caller, who serves
//! it with [`NbdServer::serve_transmission`](crate::nbd::NbdServer::serve_transmission).
//! There is no handshake on this path: the driver learns the size, block
//! size and transmission flags by ioctl and starts with requests.
//!
//! ```text
//! attach:  validate (KernelExport::new, before any ioctl)
//!          open /dev/nbdN, socketpair ──┬─ server end ──▶ returned: serve_transmission
//!                                       └─ kernel end
//!          NBD_SET_BLKSIZE → NBD_SET_SIZE_BLOCKS → NBD_SET_FLAGS
//!            → [NBD_SET_TIMEOUT] → NBD_SET_SOCK(kernel end)
//!          thread triad-nbd-do-it: NBD_DO_IT (blocks while the device is up)
//!          an ioctl fails after the first succeeded: NBD_CLEAR_SOCK, close,
//!          error naming the ioctl and the device
//! detach:  NBD_DISCONNECT → NBD_CLEAR_SOCK (even if DISCONNECT failed)
//!            → wait for NBD_DO_IT to return, up to a deadline → close
//! ```
//!
//! The ioctls sit behind [`NbdDevice`], implemented by the real device
//! ([`DevNbd`]) and by an in-memory one ([`FakeNbd`]) that records every
//! call, chosen by the caller; the order above is tested against the fake.
//! Every call here blocks (an ioctl, a thread join): call it from a
//! blocking context, not from the async runtime's threads.
//!
//! Linux (as read in a recent mainline drivers/block/nbd.c, not yet seen
//! running on the appliance's 6.1): the settings live in
//! a per-device config that is freed only when the last opener closes the
//! device, and `NBD_DO_IT` refuses with EBUSY while a previous run's config
//! remains. So every attach opens the device afresh and detach closes it,
//! and the filesystem on it must be unmounted before detaching (a mount is
//! an opener). `NBD_CLEAR_QUE` is not used: the driver keeps it as a
//! no-op for compatibility (DO_IT and CLEAR_SOCK clear the queue
//! themselves).
//!
//! Must not: decide when to attach or detach (the supervisor's loop does),
//! serve the blocks (the [`NbdServer`](crate::nbd::NbdServer) does), or
//! send an ioctl to anything but an nbd block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::ioctl::ioctl_num_type;

/// `NBD_MAJOR` (include/uapi/linux/major.h).
const NBD_MAJOR: u64 = 43;
/// The ioctl type byte of linux/nbd.h: every request is `_IO(0xab, n)`.
const NBD_IOCTL_TYPE: u8 = 0xab;
/// Block sizes the driver accepts (`blk_validate_block_size`: a power of
/// two from 512 to the page size, 4 KiB on the appliance).
const BLOCK_SIZES: std::ops::RangeInclusive<u32> = 512..=4096;
/// The DO_IT thread only sits in one ioctl; under `mlockall(MCL_FUTURE)`
/// every page of a thread's stack is locked, so it gets a small one.
const DO_IT_STACK: usize = 128 * 1024;

/// The ioctls of linux/nbd.h this adapter uses (and `NBD_CLEAR_QUE`,
/// kept for the number check only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctl {
    /// `NBD_SET_SOCK`: the socket the driver talks on.
    SetSock,
    /// `NBD_SET_BLKSIZE`: logical block size in bytes.
    SetBlksize,
    /// `NBD_DO_IT`: runs the device; returns when it stops.
    DoIt,
    /// `NBD_CLEAR_SOCK`: shuts the socket down and fails queued requests.
    ClearSock,
    /// `NBD_CLEAR_QUE`: a no-op in current kernels; not sent.
    ClearQue,
    /// `NBD_SET_SIZE_BLOCKS`: size in blocks of the block size set before.
    SetSizeBlocks,
    /// `NBD_DISCONNECT`: sends the server `NBD_CMD_DISC`.
    Disconnect,
    /// `NBD_SET_TIMEOUT`: per-request timeout in seconds.
    SetTimeout,
    /// `NBD_SET_FLAGS`: the transmission flags.
    SetFlags,
}

impl Ioctl {
    /// `n` of `_IO(0xab, n)` in linux/nbd.h.
    const fn nr(self) -> u8 {
        match self {
            Ioctl::SetSock => 0,
            Ioctl::SetBlksize => 1,
            Ioctl::DoIt => 3,
            Ioctl::ClearSock => 4,
            Ioctl::ClearQue => 5,
            Ioctl::SetSizeBlocks => 7,
            Ioctl::Disconnect => 8,
            Ioctl::SetTimeout => 9,
            Ioctl::SetFlags => 10,
        }
    }

    /// The request number passed to `ioctl(2)`.
    pub fn request(self) -> ioctl_num_type {
        nix::request_code_none!(NBD_IOCTL_TYPE, self.nr())
    }

    /// The name linux/nbd.h gives it.
    pub fn name(self) -> &'static str {
        match self {
            Ioctl::SetSock => "NBD_SET_SOCK",
            Ioctl::SetBlksize => "NBD_SET_BLKSIZE",
            Ioctl::DoIt => "NBD_DO_IT",
            Ioctl::ClearSock => "NBD_CLEAR_SOCK",
            Ioctl::ClearQue => "NBD_CLEAR_QUE",
            Ioctl::SetSizeBlocks => "NBD_SET_SIZE_BLOCKS",
            Ioctl::Disconnect => "NBD_DISCONNECT",
            Ioctl::SetTimeout => "NBD_SET_TIMEOUT",
            Ioctl::SetFlags => "NBD_SET_FLAGS",
        }
    }
}

impl std::fmt::Display for Ioctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Attaching failed; whatever had been set up was undone first.
#[derive(Debug, thiserror::Error)]
pub enum NbdKernelError {
    /// The block size is not one the driver accepts.
    #[error("nbd block size {block_size} is not a power of two in 512..=4096")]
    BlockSize {
        /// What was asked.
        block_size: u32,
    },
    /// The size cannot be given to the driver.
    #[error("nbd size {size} {rule} (block size {block_size})")]
    Size {
        /// What was asked, in bytes.
        size: u64,
        /// The block size it was checked against.
        block_size: u32,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The device could not be opened or examined.
    #[error("cannot open the nbd device {path}")]
    Open {
        /// The device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The path is not an nbd block device: refused before any ioctl,
    /// whose numbers mean other things to other drivers.
    #[error("{path} is not an nbd block device (block major 43)")]
    NotNbd {
        /// The path.
        path: PathBuf,
    },
    /// `socketpair(AF_UNIX, SOCK_STREAM)` failed.
    #[error("cannot create the socketpair for the nbd device")]
    Socketpair(#[source] io::Error),
    /// An ioctl failed.
    #[error("nbd device {path}: {ioctl} failed{}", undo_note(.undo))]
    Ioctl {
        /// The device.
        path: PathBuf,
        /// The ioctl that failed.
        ioctl: Ioctl,
        /// Cause.
        #[source]
        source: io::Error,
        /// `NBD_CLEAR_SOCK`'s failure, if undoing failed too.
        undo: Option<io::Error>,
    },
    /// The thread for `NBD_DO_IT` could not be started.
    #[error("nbd device {path}: cannot start the NBD_DO_IT thread{}", undo_note(.undo))]
    Spawn {
        /// The device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
        /// `NBD_CLEAR_SOCK`'s failure, if undoing failed too.
        undo: Option<io::Error>,
    },
}

fn undo_note(undo: &Option<io::Error>) -> String {
    match undo {
        // Not the source (that is the first failure), so its text goes here.
        Some(e) => format!(" (and undoing it with NBD_CLEAR_SOCK failed: {e})"),
        None => String::new(),
    }
}

/// Detaching did not complete cleanly. Every step was still tried; more
/// than one can fail, so the failures are fields and the message lists
/// them all (there is no single source to chain).
#[derive(Debug)]
pub struct DetachError {
    /// The device.
    pub path: PathBuf,
    /// `NBD_DISCONNECT` failed.
    pub disconnect: Option<io::Error>,
    /// `NBD_CLEAR_SOCK` failed: the driver may still hold the socket.
    pub clear_sock: Option<io::Error>,
    /// `NBD_DO_IT` had not returned when the deadline passed: its thread
    /// is left running, and keeps the device open until it returns.
    pub still_running_after: Option<Duration>,
}

impl std::fmt::Display for DetachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "detaching nbd device {}:", self.path.display())?;
        let mut sep = " ";
        if let Some(e) = &self.disconnect {
            write!(f, "{sep}NBD_DISCONNECT failed ({e})")?;
            sep = "; ";
        }
        if let Some(e) = &self.clear_sock {
            write!(f, "{sep}NBD_CLEAR_SOCK failed ({e})")?;
            sep = "; ";
        }
        if let Some(d) = self.still_running_after {
            write!(f, "{sep}NBD_DO_IT still running after {d:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DetachError {}

/// What the driver is told: checked when built, so attach refuses nothing
/// about it after the first ioctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelExport {
    block_size: u32,
    blocks: u64,
    flags: u16,
    timeout_s: Option<u32>,
}

impl KernelExport {
    /// `size` bytes in blocks of `block_size`, with the transmission flags
    /// `flags` (the `TFLAG_*` of [`crate::nbd::proto`], e.g.
    /// `TRANSMISSION_FLAGS`). `block_size` must be a power of two in
    /// 512..=4096 and `size` a nonzero multiple of it. The NBD server
    /// refuses requests not aligned to its own block (4 KiB), so the
    /// caller passes at least that.
    pub fn new(size: u64, block_size: u32, flags: u16) -> Result<Self, NbdKernelError> {
        if !block_size.is_power_of_two() || !BLOCK_SIZES.contains(&block_size) {
            return Err(NbdKernelError::BlockSize { block_size });
        }
        let refuse = |rule| Err(NbdKernelError::Size { size, block_size, rule });
        if size == 0 {
            return refuse("is zero");
        }
        if !size.is_multiple_of(u64::from(block_size)) {
            return refuse("is not a multiple of the block size");
        }
        // The driver keeps the size as a signed 64-bit byte count.
        if i64::try_from(size).is_err() {
            return refuse("is beyond the kernel's 63-bit sizes");
        }
        let blocks = size / u64::from(block_size);
        // NBD_SET_SIZE_BLOCKS carries an unsigned long (32 bits on a 32-bit
        // kernel).
        if u32::try_from(blocks).is_err() && std::mem::size_of::<libc::c_ulong>() < 8 {
            return refuse("has more blocks than NBD_SET_SIZE_BLOCKS carries on this machine");
        }
        Ok(KernelExport { block_size, blocks, flags, timeout_s: None })
    }

    /// The same with a per-request timeout (`NBD_SET_TIMEOUT`; 0 is the
    /// driver's default: no timeout, a warning every 30 s). Without one,
    /// the ioctl is not sent at all.
    pub fn with_timeout(self, secs: u32) -> Self {
        KernelExport { timeout_s: Some(secs), ..self }
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Size in blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }

    /// Transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Per-request timeout in seconds, if one is set.
    pub fn timeout_s(&self) -> Option<u32> {
        self.timeout_s
    }
}

/// The ioctls of one nbd device, each doing exactly what it names.
/// Shared between the caller and the DO_IT thread, hence `&self` and
/// `Sync`: the driver takes `NBD_DISCONNECT` and `NBD_CLEAR_SOCK` while
/// `NBD_DO_IT` is blocked on the same descriptor.
pub trait NbdDevice: Send + Sync + std::fmt::Debug + 'static {
    /// `NBD_SET_BLKSIZE`.
    fn set_blksize(&self, bytes: u32) -> io::Result<()>;
    /// `NBD_SET_SIZE_BLOCKS` (after the block size: the driver multiplies).
    fn set_size_blocks(&self, blocks: u64) -> io::Result<()>;
    /// `NBD_SET_FLAGS`.
    fn set_flags(&self, flags: u16) -> io::Result<()>;
    /// `NBD_SET_TIMEOUT`.
    fn set_timeout(&self, secs: u32) -> io::Result<()>;
    /// `NBD_SET_SOCK`: the driver takes its own reference to `sock`.
    fn set_sock(&self, sock: BorrowedFd<'_>) -> io::Result<()>;
    /// `NBD_DO_IT`: blocks until the device stops.
    fn do_it(&self) -> io::Result<()>;
    /// `NBD_DISCONNECT`.
    fn disconnect(&self) -> io::Result<()>;
    /// `NBD_CLEAR_SOCK`.
    fn clear_sock(&self) -> io::Result<()>;
}

/// An open `/dev/nbdN`.
#[derive(Debug)]
pub struct DevNbd {
    file: File,
}

nix::ioctl_none!(nbd_do_it, NBD_IOCTL_TYPE, 3);
nix::ioctl_none!(nbd_disconnect, NBD_IOCTL_TYPE, 8);
nix::ioctl_none!(nbd_clear_sock, NBD_IOCTL_TYPE, 4);

impl DevNbd {
    /// Opens `path`, refusing (before and after opening) anything that is
    /// not an nbd block device.
    pub fn open(path: &Path) -> Result<DevNbd, NbdKernelError> {
        let open_err = |source| NbdKernelError::Open { path: path.to_owned(), source };
        // Checked before opening too: opening some character devices (a
        // tty) has effects of its own.
        if !is_nbd(&std::fs::metadata(path).map_err(open_err)?) {
            return Err(NbdKernelError::NotNbd { path: path.to_owned() });
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        // Again on what was opened, in case the path changed meanwhile.
        if !is_nbd(&file.metadata().map_err(open_err)?) {
            return Err(NbdKernelError::NotNbd { path: path.to_owned() });
        }
        Ok(DevNbd { file })
    }

    /// The NBD ioctls that carry a value take it as an `unsigned long` by
    /// value. nix's `ioctl_write_int_bad!` passes a C `int`, which would
    /// leave the upper half of the register undefined for the kernel to
    /// read, so these go through `libc::ioctl` with the right type.
    fn ioctl_value(&self, op: Ioctl, arg: libc::c_ulong) -> io::Result<()> {
        // SAFETY: an `_IO` request on a descriptor this value owns; the
        // argument is a number, not a pointer, so the kernel touches no
        // memory of ours.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), op.request(), arg) };
        nix::errno::Errno::result(r).map(drop).map_err(io::Error::from)
    }
}

fn is_nbd(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_block_device() && nix::sys::stat::major(meta.rdev()) == NBD_MAJOR
}

impl NbdDevice for DevNbd {
    fn set_blksize(&self, bytes: u32) -> io::Result<()> {
        self.ioctl_value(Ioctl::SetBlksize, libc::c_ulong::from(bytes))
    }

    fn set_size_blocks(&self, blocks: u64) -> io::Result<()> {
        // An unsigned long is 32 bits on a 32-bit target: KernelExport::new
        // checked that the count fits; this guards other callers.
        let arg = libc::c_ulong::try_from(blocks).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.ioctl_value(Ioctl::SetSizeBlocks, arg)
    }

    fn set_flags(&self, flags: u16) -> io::Result<()> {
        self.ioctl_value(Ioctl::SetFlags, libc::c_ulong::from(flags))
    }

    fn set_timeout(&self, secs: u32) -> io::Result<()> {
        self.ioctl_value(Ioctl::SetTimeout, libc::c_ulong::from(secs))
    }

    fn set_sock(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        let fd = libc::c_ulong::try_from(sock.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.ioctl_value(Ioctl::SetSock, fd)
    }

    fn do_it(&self) -> io::Result<()> {
        // SAFETY: NBD_DO_IT on a descriptor this value owns; no argument.
        unsafe { nbd_do_it(self.file.as_raw_fd()) }.map(drop).map_err(io::Error::from)
    }

    fn disconnect(&self) -> io::Result<()> {
        // SAFETY: NBD_DISCONNECT on a descriptor this value owns; no argument.
        unsafe { nbd_disconnect(self.file.as_raw_fd()) }.map(drop).map_err(io::Error::from)
    }

    fn clear_sock(&self) -> io::Result<()> {
        // SAFETY: NBD_CLEAR_SOCK on a descriptor this value owns; no argument.
        unsafe { nbd_clear_sock(self.file.as_raw_fd()) }.map(drop).map_err(io::Error::from)
    }
}

/// A device the driver is running: `NBD_DO_IT` blocked on its own thread.
/// Dropping it without [`detach`](Self::detach) leaves the device up
/// until the server end closes (then `NBD_DO_IT` returns and the thread
/// closes the device).
#[must_use = "an attachment not detached stays up until its server end closes"]
#[derive(Debug)]
pub struct Attachment<D: NbdDevice> {
    path: PathBuf,
    device: Arc<D>,
    do_it: JoinHandle<()>,
    ended: mpsc::Receiver<io::Result<()>>,
}

/// How a detach ended when every step worked.
#[derive(Debug)]
pub struct Detached {
    /// What `NBD_DO_IT` returned if it was an error: ETIMEDOUT after a
    /// request timed out, or a refusal to start (EBUSY, EINVAL). A
    /// disconnect the supervisor asked for returns success.
    pub do_it_error: Option<io::Error>,
}

/// Opens `path` and attaches it: see [`attach_with`].
pub fn attach(path: &Path, export: &KernelExport) -> Result<(Attachment<DevNbd>, UnixStream), NbdKernelError> {
    attach_with(path, DevNbd::open(path)?, export)
}

/// Attaches `device` (named `path` in errors) with `export`'s geometry and
/// flags, and returns the attachment with the server end of the socket.
///
/// The server end is a blocking `std` stream: for tokio, call
/// `set_nonblocking(true)` and `tokio::net::UnixStream::from_std`, then
/// `NbdServer::serve_transmission` (or `serve_transmission_with` and a
/// `ReplyLine` on it). The driver may send requests (a partition scan) as
/// soon as this returns; they wait in the socket until served.
///
/// `NBD_DO_IT` failing to start (EBUSY: the device is in use) is seen on
/// its thread, after this returns: [`Attachment::is_running`] turns false
/// and [`Attachment::detach`] reports it.
pub fn attach_with<D: NbdDevice>(
    path: &Path,
    device: D,
    export: &KernelExport,
) -> Result<(Attachment<D>, UnixStream), NbdKernelError> {
    // std's pair is socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): neither
    // end leaks into the PBX.
    let (server_end, kernel_end) = UnixStream::pair().map_err(NbdKernelError::Socketpair)?;
    let device = Arc::new(device);
    if let Err((ioctl, source)) = configure(&*device, export, kernel_end.as_fd()) {
        // The settings die with the config when the device closes (below,
        // when `device` drops); CLEAR_SOCK drops a socket the driver may
        // hold and the claim NBD_SET_SOCK put on the device for this
        // thread. Nothing to undo if the very first ioctl failed.
        let undo = if ioctl == Ioctl::SetBlksize { None } else { device.clear_sock().err() };
        return Err(NbdKernelError::Ioctl { path: path.to_owned(), ioctl, source, undo });
    }
    // The driver holds its own reference from NBD_SET_SOCK on; ours would
    // only keep a descriptor open.
    drop(kernel_end);
    let (tx, ended) = mpsc::sync_channel(1);
    let dev = Arc::clone(&device);
    let spawned = std::thread::Builder::new().name("triad-nbd-do-it".into()).stack_size(DO_IT_STACK).spawn(move || {
        block_signals();
        // The receiver is gone only if the attachment was dropped: then
        // nobody is asking.
        let _ = tx.send(dev.do_it());
    });
    match spawned {
        Ok(do_it) => Ok((Attachment { path: path.to_owned(), device, do_it, ended }, server_end)),
        Err(source) => {
            let undo = device.clear_sock().err();
            Err(NbdKernelError::Spawn { path: path.to_owned(), source, undo })
        }
    }
}

/// The attach ioctls in the driver's order: the block size first, since
/// NBD_SET_SIZE_BLOCKS is counted in it; the socket last, once the device
/// is described. The error names the ioctl that failed.
fn configure<D: NbdDevice>(dev: &D, export: &KernelExport, sock: BorrowedFd<'_>) -> Result<(), (Ioctl, io::Error)> {
    let at = |ioctl: Ioctl| move |e: io::Error| (ioctl, e);
    dev.set_blksize(export.block_size).map_err(at(Ioctl::SetBlksize))?;
    dev.set_size_blocks(export.blocks).map_err(at(Ioctl::SetSizeBlocks))?;
    dev.set_flags(export.flags).map_err(at(Ioctl::SetFlags))?;
    if let Some(secs) = export.timeout_s {
        dev.set_timeout(secs).map_err(at(Ioctl::SetTimeout))?;
    }
    dev.set_sock(sock).map_err(at(Ioctl::SetSock))?;
    Ok(())
}

/// The driver waits in NBD_DO_IT interruptibly, and a signal caught there
/// (SIGTERM has a tokio handler) makes it shut the socket and fail every
/// queued request: the filesystem would see I/O errors before the orderly
/// shutdown unmounted it. So this thread takes no signals; the process's
/// other threads do.
fn block_signals() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None) {
        tracing::warn!(error = %e, "nbd: cannot block signals on the NBD_DO_IT thread");
    }
}

impl<D: NbdDevice> Attachment<D> {
    /// The device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `NBD_DO_IT` is still blocked (false once the device stopped:
    /// the server end closed, a detach, or a refusal to start).
    pub fn is_running(&self) -> bool {
        !self.do_it.is_finished()
    }

    /// Stops the device: `NBD_DISCONNECT` (the server gets `NBD_CMD_DISC`),
    /// then `NBD_CLEAR_SOCK` whatever DISCONNECT did (it shuts the socket
    /// down in the driver, so `NBD_DO_IT` returns even if the server never
    /// answers), then waits up to `deadline` for `NBD_DO_IT` to return, and
    /// closes the device. Unmount the filesystem first: the driver fails
    /// whatever I/O is still queued.
    pub fn detach(self, deadline: Duration) -> Result<Detached, DetachError> {
        let disconnect = self.device.disconnect().err();
        let clear_sock = self.device.clear_sock().err();
        let (do_it_error, still_running_after) = match self.ended.recv_timeout(deadline) {
            Ok(result) => {
                // It has sent its result: it is ending, the join is short.
                let _ = self.do_it.join();
                (result.err(), None)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.do_it.join();
                (Some(io::Error::other("the NBD_DO_IT thread ended without a result")), None)
            }
            // Left running: it owns a reference to the device, which closes
            // when NBD_DO_IT finally returns.
            Err(mpsc::RecvTimeoutError::Timeout) => (None, Some(deadline)),
        };
        if disconnect.is_none() && clear_sock.is_none() && still_running_after.is_none() {
            Ok(Detached { do_it_error })
        } else {
            Err(DetachError { path: self.path, disconnect, clear_sock, still_running_after })
        }
    }
}

/// One ioctl as [`FakeNbd`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `NBD_SET_BLKSIZE` with its block size.
    SetBlksize(u32),
    /// `NBD_SET_SIZE_BLOCKS` with its block count.
    SetSizeBlocks(u64),
    /// `NBD_SET_FLAGS` with its flags.
    SetFlags(u16),
    /// `NBD_SET_TIMEOUT` with its seconds.
    SetTimeout(u32),
    /// `NBD_SET_SOCK` (the socket is kept: [`FakeNbd::kernel_socket`]).
    SetSock,
    /// `NBD_DO_IT`.
    DoIt,
    /// `NBD_DISCONNECT`.
    Disconnect,
    /// `NBD_CLEAR_SOCK`.
    ClearSock,
}

impl Call {
    /// The ioctl it is.
    pub fn ioctl(self) -> Ioctl {
        match self {
            Call::SetBlksize(_) => Ioctl::SetBlksize,
            Call::SetSizeBlocks(_) => Ioctl::SetSizeBlocks,
            Call::SetFlags(_) => Ioctl::SetFlags,
            Call::SetTimeout(_) => Ioctl::SetTimeout,
            Call::SetSock => Ioctl::SetSock,
            Call::DoIt => Ioctl::DoIt,
            Call::Disconnect => Ioctl::Disconnect,
            Call::ClearSock => Ioctl::ClearSock,
        }
    }
}

/// An nbd device in memory: records every call in order, fails the ones
/// it is told to, and runs `NBD_DO_IT` as the driver does, blocked until
/// `NBD_CLEAR_SOCK` succeeds (or, if told to hang, until
/// [`release`](Self::release)). Clones share their state, so a test keeps
/// one and attaches another.
#[derive(Clone, Debug, Default)]
pub struct FakeNbd {
    shared: Arc<FakeShared>,
}

#[derive(Debug, Default)]
struct FakeShared {
    state: Mutex<FakeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<Call>,
    failing: Vec<(Ioctl, nix::errno::Errno)>,
    hang: bool,
    released: bool,
    socket_cleared: bool,
    socket: Option<OwnedFd>,
    do_it_blocked_sigterm: Option<bool>,
}

impl FakeNbd {
    /// A device on which every ioctl works.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every later `ioctl` fail with `errno` (still recorded).
    pub fn fail(&self, ioctl: Ioctl, errno: nix::errno::Errno) {
        self.state().failing.push((ioctl, errno));
    }

    /// Makes `NBD_DO_IT` ignore `NBD_CLEAR_SOCK`: a driver that never
    /// returns, until [`release`](Self::release).
    pub fn hang_do_it(&self) {
        self.state().hang = true;
    }

    /// Ends `NBD_DO_IT`, hung or not.
    pub fn release(&self) {
        self.state().released = true;
        self.shared.changed.notify_all();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Waits up to `timeout` for `call` to have been made.
    pub fn wait_for(&self, call: Call, timeout: Duration) -> bool {
        let guard = self.state();
        let (guard, _) = self
            .shared
            .changed
            .wait_timeout_while(guard, timeout, |s| !s.calls.contains(&call))
            .unwrap_or_else(PoisonError::into_inner);
        guard.calls.contains(&call)
    }

    /// A duplicate of the socket `NBD_SET_SOCK` was given, if it was.
    pub fn kernel_socket(&self) -> Option<OwnedFd> {
        self.state().socket.as_ref().and_then(|s| s.try_clone().ok())
    }

    /// Whether `NBD_DO_IT` ran with SIGTERM blocked on its thread (none:
    /// it has not run).
    pub fn do_it_blocked_sigterm(&self) -> Option<bool> {
        self.state().do_it_blocked_sigterm
    }

    /// Records `call`, and fails it if it was told to.
    fn record(&self, call: Call) -> (MutexGuard<'_, FakeState>, io::Result<()>) {
        let mut s = self.state();
        s.calls.push(call);
        self.shared.changed.notify_all();
        let failure = s.failing.iter().find(|(i, _)| *i == call.ioctl()).map(|&(_, errno)| errno);
        (s, failure.map_or(Ok(()), |errno| Err(io::Error::from(errno))))
    }
}

impl NbdDevice for FakeNbd {
    fn set_blksize(&self, bytes: u32) -> io::Result<()> {
        self.record(Call::SetBlksize(bytes)).1
    }

    fn set_size_blocks(&self, blocks: u64) -> io::Result<()> {
        self.record(Call::SetSizeBlocks(blocks)).1
    }

    fn set_flags(&self, flags: u16) -> io::Result<()> {
        self.record(Call::SetFlags(flags)).1
    }

    fn set_timeout(&self, secs: u32) -> io::Result<()> {
        self.record(Call::SetTimeout(secs)).1
    }

    fn set_sock(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        let (mut s, result) = self.record(Call::SetSock);
        if result.is_ok() {
            s.socket = Some(sock.try_clone_to_owned()?);
        }
        result
    }

    fn do_it(&self) -> io::Result<()> {
        let blocked = nix::sys::signal::SigSet::thread_get_mask()
            .map(|m| m.contains(nix::sys::signal::Signal::SIGTERM))
            .unwrap_or(false);
        let (mut s, result) = self.record(Call::DoIt);
        s.do_it_blocked_sigterm = Some(blocked);
        result?;
        let _s = self
            .shared
            .changed
            .wait_while(s, |s| !s.released && (s.hang || !s.socket_cleared))
            .unwrap_or_else(PoisonError::into_inner);
        Ok(())
    }

    fn disconnect(&self) -> io::Result<()> {
        self.record(Call::Disconnect).1
    }

    fn clear_sock(&self) -> io::Result<()> {
        let (mut s, result) = self.record(Call::ClearSock);
        if result.is_ok() {
            s.socket_cleared = true;
            s.socket = None;
            self.shared.changed.notify_all();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use nix::errno::Errno;

    use super::*;
    use crate::nbd::proto::{BLOCK_SIZE, TRANSMISSION_FLAGS};

    const WAIT: Duration = Duration::from_secs(10);
    const MIB: u64 = 1024 * 1024;

    fn export() -> KernelExport {
        KernelExport::new(64 * MIB, BLOCK_SIZE, TRANSMISSION_FLAGS).unwrap()
    }

    fn dev() -> &'static Path {
        Path::new("/dev/nbd3")
    }

    /// What a successful attach sends, in order.
    fn attach_calls() -> Vec<Call> {
        vec![Call::SetBlksize(4096), Call::SetSizeBlocks(16384), Call::SetFlags(TRANSMISSION_FLAGS), Call::SetSock]
    }

    #[test]
    fn the_request_numbers_are_those_of_linux_nbd_h() {
        let expected = [
            (Ioctl::SetSock, 0xab00),
            (Ioctl::SetBlksize, 0xab01),
            (Ioctl::DoIt, 0xab03),
            (Ioctl::ClearSock, 0xab04),
            (Ioctl::ClearQue, 0xab05),
            (Ioctl::SetSizeBlocks, 0xab07),
            (Ioctl::Disconnect, 0xab08),
            (Ioctl::SetTimeout, 0xab09),
            (Ioctl::SetFlags, 0xab0a),
        ];
        for (ioctl, number) in expected {
            assert_eq!(ioctl.request(), number, "{ioctl}");
        }
        // The ones nix's ioctl_none! declares use the same numbers.
        assert_eq!(nix::request_code_none!(NBD_IOCTL_TYPE, 3), Ioctl::DoIt.request());
        assert_eq!(nix::request_code_none!(NBD_IOCTL_TYPE, 8), Ioctl::Disconnect.request());
        assert_eq!(nix::request_code_none!(NBD_IOCTL_TYPE, 4), Ioctl::ClearSock.request());
    }

    #[test]
    fn attach_describes_the_device_then_gives_it_the_peer_of_the_server_end_and_runs_it() {
        let fake = FakeNbd::new();
        let (att, mut server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let mut calls = attach_calls();
        calls.push(Call::DoIt);
        assert_eq!(fake.calls(), calls);
        assert_eq!(fake.do_it_blocked_sigterm(), Some(true), "DO_IT's thread must not take signals");
        assert!(att.is_running());

        // What the server writes, the driver's socket reads, and back.
        let mut kernel = UnixStream::from(fake.kernel_socket().unwrap());
        server.write_all(b"reply").unwrap();
        let mut buf = [0u8; 5];
        kernel.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"reply");
        kernel.write_all(b"req").unwrap();
        let mut buf = [0u8; 3];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"req");

        drop(kernel);
        let detached = att.detach(WAIT).unwrap();
        assert!(detached.do_it_error.is_none());
    }

    #[test]
    fn a_timeout_is_set_before_the_socket_and_only_when_asked() {
        let fake = FakeNbd::new();
        let (att, _server) = attach_with(dev(), fake.clone(), &export().with_timeout(30)).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let mut calls = attach_calls();
        calls.insert(3, Call::SetTimeout(30));
        calls.push(Call::DoIt);
        assert_eq!(fake.calls(), calls);
        att.detach(WAIT).unwrap();
    }

    #[test]
    fn an_ioctl_failing_mid_attach_is_undone_and_named_with_the_device() {
        let with_timeout = export().with_timeout(5);
        let sequence = [
            Call::SetBlksize(4096),
            Call::SetSizeBlocks(16384),
            Call::SetFlags(TRANSMISSION_FLAGS),
            Call::SetTimeout(5),
            Call::SetSock,
        ];
        for (i, failing) in sequence.iter().enumerate() {
            let fake = FakeNbd::new();
            fake.fail(failing.ioctl(), Errno::EINVAL);
            let err = attach_with(dev(), fake.clone(), &with_timeout).unwrap_err();
            let mut expected = sequence[..=i].to_vec();
            // Nothing was done before the first ioctl, so nothing to undo.
            if i > 0 {
                expected.push(Call::ClearSock);
            }
            assert_eq!(fake.calls(), expected, "failing {failing:?}");
            assert!(
                matches!(err, NbdKernelError::Ioctl { ioctl, undo: None, .. } if ioctl == failing.ioctl()),
                "{err:?}"
            );
            let msg = crate::errors::chain(&err);
            assert!(msg.contains("/dev/nbd3") && msg.contains(failing.ioctl().name()), "{msg}");
            assert!(fake.kernel_socket().is_none());
        }
    }

    #[test]
    fn a_failed_undo_is_reported_with_the_failure_it_undid() {
        let fake = FakeNbd::new();
        fake.fail(Ioctl::SetSock, Errno::EBUSY);
        fake.fail(Ioctl::ClearSock, Errno::EIO);
        let err = attach_with(dev(), fake.clone(), &export()).unwrap_err();
        let mut expected = attach_calls();
        expected.push(Call::ClearSock);
        assert_eq!(fake.calls(), expected);
        assert!(matches!(&err, NbdKernelError::Ioctl { ioctl: Ioctl::SetSock, undo: Some(_), .. }), "{err:?}");
        let msg = crate::errors::chain(&err);
        assert!(msg.contains("NBD_SET_SOCK failed") && msg.contains("NBD_CLEAR_SOCK failed"), "{msg}");
    }

    #[test]
    fn detach_disconnects_then_clears_the_socket_and_joins_do_it() {
        let fake = FakeNbd::new();
        let (att, _server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let detached = att.detach(WAIT).unwrap();
        assert!(detached.do_it_error.is_none());
        let mut calls = attach_calls();
        calls.extend([Call::DoIt, Call::Disconnect, Call::ClearSock]);
        assert_eq!(fake.calls(), calls);
    }

    #[test]
    fn detach_still_clears_the_socket_when_disconnect_fails() {
        let fake = FakeNbd::new();
        fake.fail(Ioctl::Disconnect, Errno::EIO);
        let (att, _server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let err = att.detach(WAIT).unwrap_err();
        assert_eq!(fake.calls()[5..], [Call::Disconnect, Call::ClearSock]);
        assert!(err.disconnect.is_some() && err.clear_sock.is_none() && err.still_running_after.is_none(), "{err}");
        assert!(err.to_string().contains("/dev/nbd3") && err.to_string().contains("NBD_DISCONNECT failed"), "{err}");
    }

    #[test]
    fn a_do_it_that_does_not_return_is_reported_after_the_deadline() {
        let fake = FakeNbd::new();
        fake.hang_do_it();
        let (att, _server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let err = att.detach(Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.still_running_after, Some(Duration::from_millis(50)));
        assert!(err.disconnect.is_none() && err.clear_sock.is_none());
        assert!(err.to_string().contains("NBD_DO_IT still running"), "{err}");
        fake.release();
    }

    #[test]
    fn a_clear_sock_that_fails_leaves_do_it_running_and_both_are_reported() {
        let fake = FakeNbd::new();
        fake.fail(Ioctl::ClearSock, Errno::EPERM);
        let (att, _server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let err = att.detach(Duration::from_millis(50)).unwrap_err();
        assert!(err.clear_sock.is_some() && err.still_running_after.is_some(), "{err}");
        fake.release();
    }

    #[test]
    fn a_do_it_that_refuses_to_start_is_seen_and_reported_by_detach() {
        let fake = FakeNbd::new();
        fake.fail(Ioctl::DoIt, Errno::EBUSY);
        let (att, _server) = attach_with(dev(), fake.clone(), &export()).unwrap();
        assert!(fake.wait_for(Call::DoIt, WAIT));
        let detached = att.detach(WAIT).unwrap();
        assert_eq!(detached.do_it_error.map(|e| e.raw_os_error()), Some(Some(libc::EBUSY)));
    }

    #[test]
    fn a_bad_geometry_is_refused_before_any_ioctl() {
        for bs in [0, 256, 1000, 3072, 8192, u32::MAX] {
            let err = KernelExport::new(64 * MIB, bs, TRANSMISSION_FLAGS).unwrap_err();
            assert!(matches!(err, NbdKernelError::BlockSize { block_size } if block_size == bs), "{err}");
            assert!(err.to_string().contains("power of two in 512..=4096"), "{err}");
        }
        for (size, rule) in [(0, "is zero"), (64 * MIB + 512, "not a multiple"), (1 << 63, "63-bit")] {
            let err = KernelExport::new(size, 4096, TRANSMISSION_FLAGS).unwrap_err();
            assert!(err.to_string().contains(rule), "{err}");
        }
        for bs in [512, 1024, 2048, 4096] {
            let e = KernelExport::new(64 * MIB, bs, 0).unwrap();
            assert_eq!((e.size(), e.blocks() * u64::from(bs)), (64 * MIB, 64 * MIB));
        }
    }

    #[test]
    fn only_an_nbd_block_device_is_opened() {
        let err = attach(Path::new("/nonexistent/nbd0"), &export()).unwrap_err();
        assert!(matches!(err, NbdKernelError::Open { .. }) && err.to_string().contains("/nonexistent/nbd0"), "{err}");
        // A character device, and a regular file: refused before any ioctl.
        let file = std::env::temp_dir().join(format!("triad-not-nbd-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        for path in [Path::new("/dev/null"), file.as_path()] {
            let err = DevNbd::open(path).unwrap_err();
            assert!(matches!(err, NbdKernelError::NotNbd { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        }
        std::fs::remove_file(&file).unwrap();
    }
}

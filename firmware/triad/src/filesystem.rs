//! The filesystem's executor: carries out `triad_host::filesystem`'s steps
//! (attach, check, mount, unmount, detach, format) on the node's own NBD
//! export, and reports each as an `FsEvent` on a channel the runtime loop
//! reads. The host decides; this only acts.
//!
//! Every step runs on a blocking thread of its own: an e2fsck or an
//! unmount flushing through the NBD server of this very process must
//! never stall the loop that serves it (or the heartbeats). The host
//! issues one step at a time, so the attached device is never shared.
//!
//! Attach, by config:
//! - `nbdfuse` (the lab, CI: no nbd module): `nbdfuse DIR/volume --unix
//!   SOCKET` shows the export as a file, a loop device (autoclear) makes it
//!   a block device. Detach: release the loop device, unmount the FUSE
//!   directory (nbdfuse then exits), kill it if it does not.
//! - `kernel` (the appliance): the kernel nbd driver on a socketpair
//!   (`os::nbd_kernel`): the driver gets one end, the other is served on
//!   the node's own export by the runtime ([`ServeKernel`]), with no
//!   handshake (the driver learns size and flags by ioctl). Detach:
//!   NBD_DISCONNECT, NBD_CLEAR_SOCK, wait for NBD_DO_IT to return.
//!
//! Check: a volume whose first MiB is all zeros has no filesystem (only
//! that may ever be formatted, and only on an operator's request); one
//! with an ext2/3/4 superblock gets `e2fsck -p`; anything else is an
//! unknown filesystem that an operator must look at. A read error is a
//! failed check, never "no filesystem".
//!
//! Must not: decide when to mount or format, or block the runtime loop.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Uid};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};
use triad_host::filesystem::{CheckVerdict, FsNotice, StepOutcome};
use triad_host::{FsCommand, FsEvent, FsStep};

use crate::config::{Attach, FilesystemConfig};
use crate::errors::chain;
use crate::os::loopdev::LoopDevice;
use crate::os::nbd_kernel;
use crate::os::reaper::Reaper;

/// How long nbdfuse gets to show the export as a file.
const NBDFUSE_READY: Duration = Duration::from_secs(10);
/// How long nbdfuse gets to exit after its directory is unmounted.
const NBDFUSE_EXIT: Duration = Duration::from_secs(2);
/// The file nbdfuse shows the export as.
const FUSE_FILE: &str = "volume";
/// The block device's logical block size: the NBD export's minimum (the
/// volume's 4 KiB granularity), so no request is smaller or unaligned.
const BLOCK_SIZE: u32 = 4096;
/// The part of the volume read to tell "never written" from "unknown".
const PROBE_LEN: usize = 1 << 20;

/// Where the filesystem lives and who owns a new one.
/// Serves one connection of the kernel nbd driver, already in the
/// transmission phase, on the node's own export (made by the runtime,
/// which owns the NBD server; called from a blocking thread).
pub type ServeKernel = Arc<dyn Fn(std::os::unix::net::UnixStream) -> std::io::Result<()> + Send + Sync>;

/// How long the kernel driver gets to show the volume's size.
const KERNEL_READY: Duration = Duration::from_secs(10);
/// How long the kernel driver gets to let go of the device at detach.
const KERNEL_DETACH: Duration = Duration::from_secs(10);

/// Where the node's volume is and who serves it.
#[derive(Clone)]
pub struct FsPlace {
    /// The node's NBD socket.
    pub nbd_socket: PathBuf,
    /// Serves the kernel driver's connection (`attach = "kernel"`).
    pub serve_kernel: Option<ServeKernel>,
    /// The export's size in bytes.
    pub size: u64,
    /// The mount point (`pbx.mount_point`).
    pub mount_point: PathBuf,
    /// The PBX's user and group: a new filesystem's root and seed files
    /// belong to them (Kamailio refuses files it does not own).
    pub owner: (Uid, Gid),
}

impl std::fmt::Debug for FsPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsPlace")
            .field("nbd_socket", &self.nbd_socket)
            .field("serve_kernel", &self.serve_kernel.is_some())
            .field("size", &self.size)
            .field("mount_point", &self.mount_point)
            .field("owner", &self.owner)
            .finish()
    }
}

/// The attached device and what keeps it attached.
#[derive(Debug, Default)]
struct Attached {
    /// nbdfuse's pid and its exit, reported by the reaper.
    nbdfuse: Option<(u32, mpsc::Receiver<WaitStatus>)>,
    device: Option<LoopDevice>,
    /// The kernel driver's attachment (`attach = "kernel"`).
    kernel: Option<nbd_kernel::Attachment<nbd_kernel::DevNbd>>,
}

/// Carries out the filesystem steps of one node.
#[derive(Debug)]
pub struct FsExecutor {
    cfg: FilesystemConfig,
    place: FsPlace,
    events: UnboundedSender<FsEvent>,
    reaper: Reaper,
    attached: Arc<Mutex<Attached>>,
}

impl FsExecutor {
    /// An executor for `cfg`; its reports go to `events`.
    pub fn new(cfg: FilesystemConfig, place: FsPlace, events: UnboundedSender<FsEvent>, reaper: Reaper) -> Self {
        FsExecutor { cfg, place, events, reaper, attached: Arc::default() }
    }

    /// Starts `cmd`; its report comes on the channel.
    pub fn carry(&mut self, cmd: FsCommand) {
        let step = match cmd {
            FsCommand::Run(step) => step,
            FsCommand::Notice(n) => return log_notice(n),
        };
        let job = self.job();
        let events = self.events.clone();
        info!(step = step.name(), "filesystem step");
        tokio::task::spawn_blocking(move || {
            let outcome = match job.run(step) {
                Ok(outcome) => outcome,
                Err(e) => {
                    error!(step = step.name(), error = %e, "filesystem step failed");
                    StepOutcome::Failed
                }
            };
            let _ = events.send(FsEvent { step, outcome });
        });
    }

    /// At shutdown: unmount and detach now, whatever the host's state (the
    /// PBX was stopped first), on a blocking thread (the unmount flushes
    /// through this process's own NBD server).
    pub async fn tear_down(&self) {
        let job = self.job();
        let _ = tokio::task::spawn_blocking(move || {
            for step in [FsStep::Unmount, FsStep::Detach] {
                if let Err(e) = job.run(step) {
                    warn!(step = step.name(), error = %e, "at shutdown");
                }
            }
        })
        .await;
    }
}

impl FsExecutor {
    fn job(&self) -> Job {
        Job {
            cfg: self.cfg.clone(),
            place: self.place.clone(),
            reaper: self.reaper.clone(),
            attached: self.attached.clone(),
        }
    }
}

/// One step's context, moved to its thread.
struct Job {
    cfg: FilesystemConfig,
    place: FsPlace,
    reaper: Reaper,
    attached: Arc<Mutex<Attached>>,
}

impl Job {
    fn run(&self, step: FsStep) -> Result<StepOutcome, String> {
        let mut attached = match self.attached.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match step {
            FsStep::Attach => self.attach(&mut attached).map(|()| StepOutcome::Done),
            FsStep::Check => self.check(device(&attached)?).map(StepOutcome::Checked),
            FsStep::Mount => self.mount(device(&attached)?).map(|()| StepOutcome::Done),
            FsStep::Unmount => unmount(&self.place.mount_point).map(|()| StepOutcome::Done),
            FsStep::Detach => self.detach(&mut attached).map(|()| StepOutcome::Done),
            FsStep::Format => self.format(device(&attached)?).map(|()| StepOutcome::Done),
        }
    }

    fn attach(&self, attached: &mut Attached) -> Result<(), String> {
        let dir = match &self.cfg.attach {
            Attach::Nbdfuse { dir } => dir,
            Attach::Kernel { device } => return self.attach_kernel(device, attached),
        };
        if attached.device.is_some() {
            return Ok(());
        }
        if attached.nbdfuse.is_none() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            // A FUSE mount left by an earlier run of this supervisor.
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            let file = dir.join(FUSE_FILE);
            let child = Command::new("nbdfuse")
                .arg(&file)
                .arg("--unix")
                .arg(&self.place.nbd_socket)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start nbdfuse: {e}"))?;
            let pid = child.id();
            // The reaper waits for it, never std's `wait`.
            drop(child);
            let (tx, rx) = mpsc::channel();
            self.reaper.register(
                pid,
                Box::new(move |status| {
                    let _ = tx.send(status);
                }),
            );
            attached.nbdfuse = Some((pid, rx));
            wait_for_fuse_file(&file, attached)?;
        }
        let file = dir.join(FUSE_FILE);
        let device = LoopDevice::attach(&file, BLOCK_SIZE).map_err(|e| chain(&e).to_string())?;
        info!(device = %device.path().display(), "volume attached");
        attached.device = Some(device);
        Ok(())
    }

    fn attach_kernel(&self, device: &Path, attached: &mut Attached) -> Result<(), String> {
        if let Some(a) = &attached.kernel {
            if a.is_running() {
                return Ok(());
            }
            // NBD_DO_IT ended on its own (the connection died): start over.
            if let Some(old) = attached.kernel.take() {
                if let Err(e) = old.detach(KERNEL_DETACH) {
                    warn!(error = %e, "releasing an nbd device whose connection ended");
                }
            }
        }
        let serve =
            self.place.serve_kernel.as_ref().ok_or("attach = \"kernel\" needs the replicated volume running")?;
        let export = nbd_kernel::KernelExport::new(self.place.size, BLOCK_SIZE, crate::nbd::proto::TRANSMISSION_FLAGS)
            .map_err(|e| chain(&e).to_string())?;
        let (attachment, server_end) = nbd_kernel::attach(device, &export).map_err(|e| chain(&e).to_string())?;
        if let Err(e) = serve(server_end) {
            // The driver's requests would wait forever: take it down now.
            let undone = release_after_failure(attachment);
            return Err(format!("cannot serve the kernel's connection to {}: {e}{undone}", device.display()));
        }
        // The driver sets the capacity once NBD_DO_IT runs, on its own
        // thread: until then the device reads as empty.
        let wanted = self.place.size;
        let start = Instant::now();
        loop {
            match block_device_size(device) {
                Ok(size) if size == wanted => break,
                _ if !attachment.is_running() || start.elapsed() > KERNEL_READY => {
                    let seen = block_device_size(device).map_or_else(|e| e, |s| format!("{s} bytes"));
                    let undone = release_after_failure(attachment);
                    return Err(format!(
                        "{} did not show the volume's {wanted} bytes within {KERNEL_READY:?} (it shows {seen}){undone}",
                        device.display()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        info!(device = %device.display(), size = wanted, "volume attached (kernel nbd)");
        attached.kernel = Some(attachment);
        Ok(())
    }

    fn check(&self, device: &Path) -> Result<CheckVerdict, String> {
        let head = read_head(device)?;
        match on_volume(&head) {
            OnVolume::Nothing => return Ok(CheckVerdict::NoFilesystem),
            OnVolume::Unknown => {
                error!(device = %device.display(), "the volume holds something that is not an ext2/3/4 filesystem");
                return Ok(CheckVerdict::NeedsRepair);
            }
            OnVolume::Ext => {}
        }
        let status = run(&self.reaper, Command::new("e2fsck").arg("-p").arg(device))?;
        let code = match status {
            WaitStatus::Exited(_, code) => code,
            other => return Err(format!("e2fsck ended by {other:?}")),
        };
        info!(code, "e2fsck -p");
        e2fsck_verdict(code).ok_or_else(|| format!("e2fsck -p could not check the volume (exit {code})"))
    }

    fn mount(&self, device: &Path) -> Result<(), String> {
        let mp = &self.place.mount_point;
        std::fs::create_dir_all(mp).map_err(|e| format!("cannot create {}: {e}", mp.display()))?;
        mount(
            Some(device),
            mp,
            Some("ext4"),
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some("errors=remount-ro"),
        )
        .map_err(|e| format!("cannot mount {} on {}: {e}", device.display(), mp.display()))
    }

    fn detach(&self, attached: &mut Attached) -> Result<(), String> {
        if let Some(kernel) = attached.kernel.take() {
            let path = kernel.path().to_owned();
            let done = kernel.detach(KERNEL_DETACH).map_err(|e| format!("cannot release {}: {e}", path.display()))?;
            if let Some(e) = done.do_it_error {
                warn!(device = %path.display(), error = %e, "the kernel's nbd connection had failed before the detach");
            }
            info!(device = %path.display(), "volume detached (kernel nbd)");
        }
        if let Some(device) = attached.device.take() {
            let path = device.path().to_owned();
            device.detach().map_err(|e| format!("cannot release {}: {e}", path.display()))?;
        }
        if let (Some((pid, exited)), Attach::Nbdfuse { dir }) = (attached.nbdfuse.take(), &self.cfg.attach) {
            // Unmounting the FUSE directory makes nbdfuse exit cleanly.
            if let Err(e) = umount2(dir.as_path(), MntFlags::empty()) {
                warn!(error = %e, dir = %dir.display(), "cannot unmount nbdfuse's directory; killing it");
            }
            if exited.recv_timeout(NBDFUSE_EXIT).is_err() {
                warn!(pid, "nbdfuse did not exit; killing it");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                let _ = umount2(dir.as_path(), MntFlags::MNT_DETACH);
            }
        }
        Ok(())
    }

    fn format(&self, device: &Path) -> Result<(), String> {
        // The check found the first MiB all zeros; look again right before
        // writing (nothing else writes the volume, but a format is forever).
        if self.check(device)? != CheckVerdict::NoFilesystem {
            return Err("the volume is no longer empty; not formatting".into());
        }
        let (uid, gid) = self.place.owner;
        let owner = format!("root_owner={}:{}", uid.as_raw(), gid.as_raw());
        let status =
            run(&self.reaper, Command::new("mkfs.ext4").args(["-q", "-L", "triad", "-E", &owner]).arg(device))?;
        if !matches!(status, WaitStatus::Exited(_, 0)) {
            return Err(format!("mkfs.ext4 failed: {status:?}"));
        }
        info!(device = %device.display(), "filesystem created");
        if let Some(seed) = &self.cfg.seed {
            self.mount(device)?;
            let copied = copy_tree(seed, &self.place.mount_point, self.place.owner);
            let unmounted = unmount(&self.place.mount_point);
            copied.map_err(|e| format!("cannot copy the seed {}: {e}", seed.display()))?;
            unmounted?;
            info!(seed = %seed.display(), "seed files copied");
        }
        Ok(())
    }
}

/// Detaches a kernel attachment whose attach failed half-way; what went
/// wrong doing so, as a suffix for the attach's own error.
fn release_after_failure(attachment: nbd_kernel::Attachment<nbd_kernel::DevNbd>) -> String {
    attachment.detach(KERNEL_DETACH).err().map(|d| format!("; releasing it: {d}")).unwrap_or_default()
}

/// A block device's size in bytes, from `/sys/class/block/NAME/size`
/// (512-byte sectors whatever the block size).
fn block_device_size(device: &Path) -> Result<u64, String> {
    let name = device.file_name().ok_or_else(|| format!("{} names no device", device.display()))?;
    let sys = Path::new("/sys/class/block").join(name).join("size");
    let text = std::fs::read_to_string(&sys).map_err(|e| format!("cannot read {}: {e}", sys.display()))?;
    text.trim().parse::<u64>().map(|sectors| sectors * 512).map_err(|e| format!("{}: {e}", sys.display()))
}

fn device(attached: &Attached) -> Result<&Path, String> {
    if let Some(k) = &attached.kernel {
        return Ok(k.path());
    }
    attached.device.as_ref().map(LoopDevice::path).ok_or_else(|| "no device attached".to_string())
}

fn unmount(mp: &Path) -> Result<(), String> {
    match umount2(mp, MntFlags::empty()) {
        // Not mounted (any more): the wanted state.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(format!("cannot unmount {}: {e}", mp.display())),
    }
}

/// Waits until nbdfuse shows the export (a regular file of non-zero size)
/// or exits.
fn wait_for_fuse_file(file: &Path, attached: &Attached) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(m) = std::fs::metadata(file) {
            if m.is_file() && m.len() > 0 {
                return Ok(());
            }
        }
        if let Some((_, exited)) = &attached.nbdfuse {
            if let Ok(status) = exited.try_recv() {
                return Err(format!("nbdfuse exited before showing the volume: {status:?}"));
            }
        }
        if start.elapsed() > NBDFUSE_READY {
            return Err(format!("nbdfuse did not show {} within {NBDFUSE_READY:?}", file.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` to its end (waited for through the reaper).
fn run(reaper: &Reaper, cmd: &mut Command) -> Result<WaitStatus, String> {
    let what = format!("{:?}", cmd.get_program());
    let child = cmd.stdin(Stdio::null()).spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    reaper.register(
        child.id(),
        Box::new(move |status| {
            let _ = tx.send(status);
        }),
    );
    drop(child);
    rx.recv().map_err(|_| format!("{what}: the reaper is gone"))
}

/// What the head of a volume shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnVolume {
    /// All zeros: never written.
    Nothing,
    /// An ext2/3/4 superblock (magic 0xEF53 at byte 1080).
    Ext,
    /// Something else.
    Unknown,
}

/// The first [`PROBE_LEN`] bytes of `device`; a shorter read is an error,
/// never a short head: a device whose size is not known yet (the kernel
/// nbd driver before NBD_DO_IT runs) reads as empty.
fn read_head(device: &Path) -> Result<Vec<u8>, String> {
    let mut head = vec![0u8; PROBE_LEN];
    let mut f = File::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => {
                return Err(format!(
                    "read only {got} of the first {PROBE_LEN} bytes of {}: not judging a volume from part of it",
                    device.display()
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read {}: {e}", device.display())),
        }
    }
    Ok(head)
}

/// What the volume's first [`PROBE_LEN`] bytes hold. Anything shorter is
/// [`OnVolume::Unknown`]: only a whole head of zeros is an empty volume.
fn on_volume(head: &[u8]) -> OnVolume {
    if head.len() < PROBE_LEN {
        OnVolume::Unknown
    } else if head.get(1080..1082) == Some(&[0x53, 0xEF]) {
        OnVolume::Ext
    } else if head.iter().all(|&b| b == 0) {
        OnVolume::Nothing
    } else {
        OnVolume::Unknown
    }
}

/// e2fsck's exit code (fsck(8)): 0 clean, 1 errors corrected, 2 corrected
/// and a reboot advised (for a root filesystem; ours is not), 4 errors
/// left. Anything else (8 operational error, 16, 32, 128) is no verdict.
fn e2fsck_verdict(code: i32) -> Option<CheckVerdict> {
    match code {
        0 => Some(CheckVerdict::Clean),
        1..=3 => Some(CheckVerdict::Repaired),
        4..=7 => Some(CheckVerdict::NeedsRepair),
        _ => None,
    }
}

/// Copies the directory `from` into `to`, every entry owned by `owner`.
fn copy_tree(from: &Path, to: &Path, owner: (Uid, Gid)) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target, owner)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            File::open(&target)?.sync_all()?;
        } else {
            continue;
        }
        nix::unistd::chown(&target, Some(owner.0), Some(owner.1))?;
    }
    Ok(())
}

fn log_notice(n: FsNotice) {
    match n {
        FsNotice::StepDone { step, took } => info!(step = step.name(), ?took, "filesystem step done"),
        FsNotice::StepFailed { step, took } => warn!(step = step.name(), ?took, "filesystem step failed; retrying"),
        FsNotice::Up { took } => info!(?took, "filesystem mounted (attach, check, mount)"),
        FsNotice::Down { took } => info!(?took, "filesystem unmounted and detached"),
        FsNotice::Blocked(b) => error!(
            blocker = ?b,
            "the volume's filesystem will not be mounted until an operator acts (NoFilesystem: `triad format-volume` on a new cluster; NeedsRepair: e2fsck by hand)"
        ),
        FsNotice::DownHung => error!("the filesystem did not go down in time: self-fencing (watchdog pets stop)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_all_zero_head_is_an_empty_volume() {
        let mut head = vec![0u8; PROBE_LEN];
        assert_eq!(on_volume(&head), OnVolume::Nothing);
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(on_volume(&head), OnVolume::Ext);
        head[1081] = 0;
        assert_eq!(on_volume(&head), OnVolume::Unknown, "one stray byte is not an empty volume");
    }

    /// Seen on the appliance: the check ran while the kernel nbd device
    /// still had capacity 0 (NBD_DO_IT not started yet), read nothing, and
    /// called the replicated volume, which held the cluster's filesystem,
    /// empty. Less than the whole probe is never an empty volume.
    #[test]
    fn a_short_read_is_never_an_empty_volume() {
        assert_eq!(on_volume(&[]), OnVolume::Unknown, "nothing read");
        assert_eq!(on_volume(&[0u8; 4096]), OnVolume::Unknown, "4 KiB of zeros read of the first MiB");
        let dir = std::env::temp_dir().join(format!("triad-fs-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, vec![0u8; 4096]).unwrap();
        let e = read_head(&short).unwrap_err();
        assert!(e.contains("4096 of"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_head(&empty).is_err());
        let full = dir.join("full");
        std::fs::write(&full, vec![0u8; PROBE_LEN + 5]).unwrap();
        assert_eq!(on_volume(&read_head(&full).unwrap()), OnVolume::Nothing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn e2fsck_exit_codes_map_to_verdicts() {
        assert_eq!(e2fsck_verdict(0), Some(CheckVerdict::Clean));
        assert_eq!(e2fsck_verdict(1), Some(CheckVerdict::Repaired));
        assert_eq!(e2fsck_verdict(2), Some(CheckVerdict::Repaired));
        assert_eq!(e2fsck_verdict(4), Some(CheckVerdict::NeedsRepair));
        assert_eq!(e2fsck_verdict(8), None, "operational error: no verdict");
        assert_eq!(e2fsck_verdict(12), None);
        assert_eq!(e2fsck_verdict(128), None);
    }
}

//! The appliance's first boot stage (issue 12, items 2 and 3): the kernel
//! started `triad` as the initramfs's `/init` (or `/sbin/init`) with no
//! subcommand, so there is no `--config` yet. This stage makes the config
//! readable, then hands over to the ordinary init path (`main.rs`
//! `run_as_init`, `os/init.rs`).
//!
//! ```text
//!  early mounts (proc, sys, dev, run, tmp, cgroup2) ─▶ kernel command line (triad.*)
//!   ─▶ [triad.root= and / is the initramfs: switch to that root and exec its init (os/switch_root.rs)]
//!   ─▶ the root mount logged ─▶ kernel modules (os/modules.rs)
//!   ─▶ find the state partition (a device path, or LABEL=) ─▶ e2fsck -p ─▶ mount it on /var/lib/triad
//!   ─▶ the data partition (LABEL=triad-data), if any: e2fsck -p, mount on /var/lib/triad-data
//!   ─▶ read triad.toml ─▶ modules the config needs?
//!   ─▶ lo up ─▶ run_as_init (hostname, sysctls, the supervisor: it sets node.address itself)
//! ```
//!
//! Kernel command-line settings (read from `/proc/cmdline`: the kernel
//! keeps dotted words for modules and never passes them to init):
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `triad.state=` | `LABEL=triad-state` | the state partition: `/dev/...` or `LABEL=` of an ext4 |
//! | `triad.config=` | `/var/lib/triad/triad.toml` | the config file (absolute path) |
//! | `triad.root=` | none: `/` stays the initramfs | the read-only root: `/dev/...` or `PARTLABEL=` |
//!
//! Owns: deciding that this process is the kernel's init
//! ([`started_by_kernel`]), the command line ([`parse_cmdline`]), finding
//! the state partition by its ext4 label ([`ext4_label`]), and what happens
//! when any of it fails ([`hold`]).
//!
//! Must not: brick the box or raise the VIP on bad input. An unknown or
//! malformed `triad.*` setting is reported and its default used; a missing
//! state partition, an unreadable or invalid config, or a missing module
//! the config needs is reported on the console and the box stays up
//! without the service ([`hold`]), retrying the config so a fixed state
//! partition is picked up. It never runs when the supervisor was started
//! as `triad run` (the lab's init mode shares the machine's kernel).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::Config;
use crate::errors::chain;
use crate::os::modules;
use crate::os::switch_root::{self, RootDevice};

/// The search path the kernel's init runs with (the kernel sets none).
pub const INIT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the state partition is mounted.
pub const STATE_MOUNT: &str = "/var/lib/triad";
/// The config file when the command line names none.
pub const DEFAULT_CONFIG: &str = "/var/lib/triad/triad.toml";
/// The state partition's ext4 label when the command line names none.
pub const DEFAULT_STATE_LABEL: &str = "triad-state";
/// Where the data partition is mounted: the replicated volume's backing
/// files (`[volume]`'s directory) live there.
pub const DATA_MOUNT: &str = "/var/lib/triad-data";
/// The data partition's ext4 label.
pub const DATA_LABEL: &str = "triad-data";
/// How long devices get to appear after their drivers loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(15);
/// How often a box holding on bad input tries its config again.
const RETRY: Duration = Duration::from_secs(30);

/// The kernel's init is this binary as PID 1, not asked to `run`, under
/// an init's name (`/init` in the initramfs, `/sbin/init` on a root
/// filesystem). Anything else (`triad run` as PID 1 of a lab namespace,
/// a tool run by hand) goes through the ordinary command line.
pub fn started_by_kernel(pid: u32, args: &[String]) -> bool {
    let named_init = args.first().is_some_and(|a0| Path::new(a0).file_name().is_some_and(|n| n == "init"));
    // The kernel passes undotted command-line words it does not know as
    // arguments, so they are no command line: only `run` (an init that
    // names its config) diverts. Any other subcommand would run a tool
    // and exit, and PID 1 exiting panics the kernel.
    let run = args.get(1).is_some_and(|a| a == "run");
    pid == 1 && named_init && !run
}

/// Where the state partition is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateDevice {
    /// A device node.
    Path(PathBuf),
    /// The ext4 filesystem with this label.
    Label(String),
}

/// The `triad.*` settings of the kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootArgs {
    /// `triad.state=`.
    pub state: StateDevice,
    /// `triad.config=`.
    pub config: PathBuf,
    /// `triad.root=`: switch to this read-only root first.
    pub root: Option<RootDevice>,
}

impl Default for BootArgs {
    fn default() -> Self {
        BootArgs {
            state: StateDevice::Label(DEFAULT_STATE_LABEL.into()),
            config: PathBuf::from(DEFAULT_CONFIG),
            root: None,
        }
    }
}

/// Parses `/proc/cmdline`. Returns the settings and one complaint per
/// `triad.*` word that was unknown or malformed (its default kept).
/// Words without the `triad.` prefix belong to the kernel or to modules.
pub fn parse_cmdline(text: &str) -> (BootArgs, Vec<String>) {
    let mut args = BootArgs::default();
    let mut complaints = Vec::new();
    for word in text.split_ascii_whitespace() {
        let Some(setting) = word.strip_prefix("triad.") else { continue };
        let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
        match key {
            "state" => match value {
                v if v.starts_with("/dev/") && v.len() > 5 => args.state = StateDevice::Path(v.into()),
                v if v.strip_prefix("LABEL=").is_some_and(|l| !l.is_empty() && l.len() <= 16) => {
                    args.state = StateDevice::Label(v["LABEL=".len()..].into())
                }
                v => complaints.push(format!(
                    "triad.state: expected /dev/NAME or LABEL=NAME (at most 16 bytes), found {v:?}; using the default"
                )),
            },
            "config" => {
                if value.starts_with('/') && !value.contains("/../") {
                    args.config = value.into();
                } else {
                    complaints
                        .push(format!("triad.config: expected an absolute path, found {value:?}; using the default"));
                }
            }
            "root" => match RootDevice::parse(value) {
                Ok(r) => args.root = Some(r),
                Err(e) => complaints.push(format!("triad.root: {e}; staying on the initramfs")),
            },
            other => complaints.push(format!("triad.{other}: unknown setting, ignored")),
        }
    }
    (args, complaints)
}

/// The label of the ext2/3/4 filesystem whose first 2048 bytes are
/// `head`, if it is one and has a label.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    // The superblock starts at 1024; its magic 0xEF53 at offset 0x38, the
    // 16-byte volume name at 0x78.
    let sb = head.get(1024..1024 + 0x88)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let name = &sb[0x78..0x88];
    let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let label = std::str::from_utf8(&name[..len]).ok()?;
    (!label.is_empty()).then(|| label.to_string())
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No device matched `triad.state` in time.
    #[error("state partition {wanted:?} not found after {waited:?}")]
    NoState {
        /// What was looked for.
        wanted: StateDevice,
        /// How long.
        waited: Duration,
    },
    /// The state partition would not mount.
    #[error("cannot mount the state partition {device} on {STATE_MOUNT}")]
    Mount {
        /// The device.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The config was refused.
    #[error("config")]
    Config(#[from] crate::config::ConfigError),
    /// A module the config needs is not in the kernel.
    #[error("kernel modules this config needs are missing: {0:?}")]
    Modules(Vec<&'static str>),
}

/// The first stage: returns the config to run and the mounts made here
/// (for the shutdown to undo, last first). Never returns on bad input:
/// holds the box up without the service and retries ([`hold`]).
pub fn boot() -> (Config, Vec<PathBuf>) {
    let started = Instant::now();
    let mut mounted = crate::os::init::mount_early(&[]);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (args, complaints) = parse_cmdline(&cmdline);
    for c in &complaints {
        warn!("kernel command line: {c}");
    }
    info!(state = ?args.state, config = %args.config.display(), root = ?args.root, "boot settings");
    if let Some(root) = args.root.as_ref().filter(|r| switch_root::wanted(Some(r), switch_root::root_is_initramfs())) {
        switch_to(root);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match switch_root::root_mount(&mountinfo) {
        Some(r) => info!(fstype = %r.fstype, source = %r.source, read_only = r.read_only, "root filesystem"),
        None => warn!("cannot read the root mount from /proc/self/mountinfo"),
    }
    let report = match modules::release_dir() {
        Ok(dir) => modules::load_all(&dir),
        Err(e) => {
            error!(error = %e, "cannot read the kernel release: no modules loaded");
            Vec::new()
        }
    };
    let mut state_mounted = false;
    loop {
        match stage(&args, &report, &mut state_mounted) {
            Ok(cfg) => {
                if state_mounted {
                    mounted.push(PathBuf::from(STATE_MOUNT));
                }
                if mount_data() {
                    mounted.push(PathBuf::from(DATA_MOUNT));
                }
                if !cfg.node.init {
                    warn!("node.init = false in the config, but the kernel started triad as init: acting as init");
                }
                loopback_up();
                info!(ms = started.elapsed().as_millis() as u64, "first boot stage done");
                return (cfg, mounted);
            }
            Err(e) => hold(&e),
        }
    }
}

/// The switch to the read-only root (`os/switch_root.rs`): loads the
/// modules that reach it, then tries until it works; on success the exec
/// never returns. A failure is reported on the console and retried every
/// 30 s: the box stays up (PID 1 never exits), without the service.
fn switch_to(root: &RootDevice) -> ! {
    match modules::release_dir() {
        Ok(dir) => drop(modules::load_root(&dir)),
        Err(e) => error!(error = %e, "cannot read the kernel release: no modules loaded"),
    }
    loop {
        let e = switch_root::attempt(root);
        error!(error = %chain(&e), retry_s = RETRY.as_secs(), "cannot switch to the read-only root; the box stays up without the service");
        reap_for(RETRY);
        if matches!(e, switch_root::SwitchError::Exec(_)) {
            // Past chroot: the new root is `/` now, only the exec is left.
            use switch_root::Ops;
            loop {
                let e = switch_root::SwitchError::Exec(switch_root::Kernel.exec_init());
                error!(error = %chain(&e), retry_s = RETRY.as_secs(), "cannot start the root's init; the box stays up without the service");
                reap_for(RETRY);
            }
        }
    }
}

/// The data partition (LABEL=triad-data), checked and mounted on
/// [`DATA_MOUNT`] when there is one; true when mounted. Its absence is not
/// an error (the direct kernel + initramfs boot of the smoke test has
/// none); a volume configured there then fails to open and says so.
/// Looked for once, without waiting: by now the state partition was
/// found, and the data partition is on the same disk.
fn mount_data() -> bool {
    let Some(device) = by_label(DATA_LABEL) else {
        info!(label = DATA_LABEL, "no data partition: nothing mounted on {DATA_MOUNT}");
        return false;
    };
    fsck(&device, "data");
    let _ = std::fs::create_dir_all(DATA_MOUNT);
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match nix::mount::mount(Some(&device), DATA_MOUNT, Some("ext4"), flags, None::<&str>) {
        Ok(()) => {
            info!(device = %device.display(), target = DATA_MOUNT, "data partition mounted");
            true
        }
        Err(e) => {
            error!(device = %device.display(), target = DATA_MOUNT, error = %e, "cannot mount the data partition");
            false
        }
    }
}

/// One attempt: the state partition mounted (once), the config read and
/// checked against the modules that loaded.
fn stage(
    args: &BootArgs,
    report: &[(&'static modules::Module, modules::Outcome)],
    state_mounted: &mut bool,
) -> Result<Config, BootError> {
    if !*state_mounted {
        let device = find_state(&args.state)?;
        fsck(&device, "state");
        let _ = std::fs::create_dir_all(STATE_MOUNT);
        use nix::mount::MsFlags;
        // Nothing on the state partition is run or is a device.
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some(&device), STATE_MOUNT, Some("ext4"), flags, None::<&str>)
            .map_err(|source| BootError::Mount { device: device.clone(), source })?;
        info!(device = %device.display(), target = STATE_MOUNT, "state partition mounted");
        *state_mounted = true;
    }
    let cfg = Config::load(&args.config)?;
    let missing = modules::missing_required(report, modules::Uses::of(&cfg));
    if !missing.is_empty() {
        return Err(BootError::Modules(missing));
    }
    Ok(cfg)
}

/// Reports why the service is not starting, then waits before the next
/// attempt. The VIP is never raised from here: the supervisor has not
/// started.
fn hold(e: &BootError) {
    error!(error = %chain(e), retry_s = RETRY.as_secs(), "cannot start the supervisor; the box stays up without the service");
    reap_for(RETRY);
}

/// Waits `d`, reaping any orphan meanwhile (the reaper thread of the
/// supervisor is not running yet).
fn reap_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        use nix::sys::wait::{waitpid, WaitPidFlag};
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls for the state device: its driver probes asynchronously, and the
/// node appears in devtmpfs a little later.
fn find_state(wanted: &StateDevice) -> Result<PathBuf, BootError> {
    let start = Instant::now();
    loop {
        let found = match wanted {
            StateDevice::Path(p) => p.exists().then(|| p.clone()),
            StateDevice::Label(label) => by_label(label),
        };
        if let Some(p) = found {
            return Ok(p);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(BootError::NoState { wanted: wanted.clone(), waited: DEVICE_WAIT });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The block device (whole disk or partition) carrying an ext4 with this
/// label.
fn by_label(label: &str) -> Option<PathBuf> {
    use std::io::Read;
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    // Empty devices (an unconnected nbd, an unused loop or ram disk) are
    // skipped unread: reading them only fills the kernel log with errors.
    let sectors = |n: &str| {
        std::fs::read_to_string(Path::new("/sys/class/block").join(n).join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    names.retain(|n| sectors(n) >= 4);
    names.into_iter().map(|n| Path::new("/dev").join(n)).find(|dev| {
        let mut head = [0u8; 2048];
        std::fs::File::open(dev).and_then(|mut f| f.read_exact(&mut head)).is_ok()
            && ext4_label(&head).as_deref() == Some(label)
    })
}

/// `e2fsck -p` before the mount: a power cut may have left the journal to
/// replay, and a damaged state partition is better repaired than mounted.
/// Its verdict is logged; the mount decides.
fn fsck(device: &Path, what: &str) {
    let e2fsck = Path::new("/sbin/e2fsck");
    if !e2fsck.exists() {
        warn!("no /sbin/e2fsck in the image: {what} partition not checked");
        return;
    }
    match std::process::Command::new(e2fsck).arg("-p").arg(device).status() {
        // 0: clean, 1: errors corrected, 2: corrected, reboot advised
        // (not for an unmounted filesystem), 4 and up: left uncorrected.
        Ok(s) if s.code().is_some_and(|c| c < 4) => {
            info!(device = %device.display(), status = s.code(), "{what} partition checked")
        }
        Ok(s) => warn!(device = %device.display(), status = ?s, "e2fsck left errors on the {what} partition"),
        Err(e) => warn!(error = %e, "cannot run e2fsck"),
    }
}

/// `lo` up: the kernel leaves it down, and a PBX probing 127.0.0.1 needs it.
fn loopback_up() {
    let up = async {
        let nl = crate::os::netlink::Netlink::new().map_err(|e| chain(&e))?;
        let index = nl.wait_for_link("lo", Duration::from_secs(1)).await.map_err(|e| chain(&e))?;
        nl.set_link_up(index).await.map_err(|e| chain(&e))
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(up));
    match result {
        Ok(()) => info!("loopback up"),
        Err(e) => warn!(error = %e, "cannot bring the loopback interface up"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_pid_1_under_an_init_name_without_subcommand_is_the_kernel_s_init() {
        assert!(started_by_kernel(1, &args(&["/init"])));
        assert!(started_by_kernel(1, &args(&["/sbin/init", "quiet_word"])));
        // Words on the kernel command line that happen to be subcommands
        // must not turn init into a tool that exits.
        assert!(started_by_kernel(1, &args(&["/init", "status"])));
        assert!(started_by_kernel(1, &args(&["/init", "--help"])));
        assert!(!started_by_kernel(1, &args(&["/usr/bin/triad", "run", "--config", "x"])));
        assert!(!started_by_kernel(1, &args(&["/init", "run", "--config", "x"])));
        assert!(!started_by_kernel(7, &args(&["/init"])));
        assert!(!started_by_kernel(1, &args(&["/sbin/triad"])));
        assert!(!started_by_kernel(1, &[]));
    }

    #[test]
    fn defaults_without_triad_settings() {
        let (a, c) = parse_cmdline("console=ttyS0 panic=5 quiet\n");
        assert_eq!(a, BootArgs::default());
        assert!(c.is_empty());
        assert_eq!(a.state, StateDevice::Label("triad-state".into()));
        assert_eq!(a.config, PathBuf::from("/var/lib/triad/triad.toml"));
    }

    #[test]
    fn settings_are_read() {
        let (a, c) = parse_cmdline("console=ttyS0 triad.state=/dev/vdb triad.config=/var/lib/triad/n1.toml");
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(a.state, StateDevice::Path("/dev/vdb".into()));
        assert_eq!(a.config, PathBuf::from("/var/lib/triad/n1.toml"));
        let (a, _) = parse_cmdline("triad.state=LABEL=box-state");
        assert_eq!(a.state, StateDevice::Label("box-state".into()));
        assert_eq!(a.root, None);
        let (a, c) = parse_cmdline("console=ttyS0 triad.root=PARTLABEL=root-a");
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(a.root, Some(RootDevice::PartLabel("root-a".into())));
    }

    #[test]
    fn bad_settings_are_named_and_defaults_kept() {
        let (a, c) = parse_cmdline(
            "triad.state=vdb triad.config=relative.toml triad.bogus=1 triad.state=LABEL= triad.config triad.state=LABEL=seventeen-bytes-x",
        );
        assert_eq!(a, BootArgs::default());
        assert_eq!(c.len(), 6, "{c:?}");
        assert!(c[0].starts_with("triad.state:"), "{c:?}");
        assert!(c[1].starts_with("triad.config:"), "{c:?}");
        assert_eq!(c[2], "triad.bogus: unknown setting, ignored");
        let (_, c) = parse_cmdline("triad.config=/a/../etc/shadow");
        assert_eq!(c.len(), 1);
        let (a, c) = parse_cmdline("triad.root=root-a");
        assert_eq!(a.root, None, "a malformed root keeps the initramfs as the root");
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("triad.root: expected /dev/NAME or PARTLABEL=NAME"), "{c:?}");
    }

    fn superblock(label: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; 2048];
        head[1024 + 0x38] = 0x53;
        head[1024 + 0x39] = 0xEF;
        head[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label);
        head
    }

    #[test]
    fn ext4_labels() {
        assert_eq!(ext4_label(&superblock(b"triad-state")), Some("triad-state".into()));
        assert_eq!(ext4_label(&superblock(b"sixteen-bytes-xx")), Some("sixteen-bytes-xx".into()));
        assert_eq!(ext4_label(&superblock(b"")), None);
        assert_eq!(ext4_label(&superblock(&[0xff, 0xfe])), None, "not UTF-8");
        let mut not_ext = superblock(b"triad-state");
        not_ext[1024 + 0x38] = 0;
        assert_eq!(ext4_label(&not_ext), None);
        assert_eq!(ext4_label(&[0u8; 100]), None, "too short");
    }
}

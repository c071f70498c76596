//! The machine's init, with `node.init = true` (issue 11, item 6;
//! docs/pid1.md): the early filesystems, the hostname and the hardening
//! sysctls at boot, and the end of an orderly or fatal shutdown (sync,
//! then reboot(2)).
//!
//! Owns: the early mount table ([`EARLY_MOUNTS`]) and the sysctl table
//! ([`SYSCTLS`]) as data, the pure decisions around them ([`plan_mount`],
//! [`shutdown_plan`], [`refuse_unless_pid1`]) with exact-output tests, and
//! the few syscalls that carry them out. Reaping is not here: the one
//! reaper (`os/reaper.rs`) runs whether or not this node is init.
//!
//! ```text
//!  boot:      refuse unless PID 1 ─▶ mounts (table order) ─▶ hostname ─▶ sysctls ─▶ runtime::run
//!  shutdown:  runtime::run returns (service down, role handed over, VIP off)
//!             ─▶ SIGTERM to every other process ─▶ grace ─▶ SIGKILL ─▶ unmount what boot mounted
//!             ─▶ sync ─▶ reboot(2)            (a fatal error: the same, always RB_AUTOBOOT)
//! ```
//!
//! Must not: act unless this process is PID 1 of its PID namespace. In the
//! initial PID namespace reboot(2) restarts the machine; in a child PID
//! namespace it only ends that namespace's init (POWER_OFF → SIGINT,
//! RESTART → SIGHUP, see reboot(2)), which is how the lab tests it without
//! touching the machine running the tests. A process that is not PID 1
//! refuses before it has changed anything. Nor may it mount over a file
//! the config names (the lab keeps its nodes' state under `/run`), or
//! replace a mount of another type someone else made.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::{Config, ShutdownMode, SysctlScope};

/// The mount options that matter for hardening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hardening {
    /// No set-user-ID or file capabilities.
    pub nosuid: bool,
    /// No device nodes.
    pub nodev: bool,
    /// No executables.
    pub noexec: bool,
}

const NSD: Hardening = Hardening { nosuid: true, nodev: true, noexec: true };
const NS_D: Hardening = Hardening { nosuid: true, nodev: true, noexec: false };

/// One early filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyMount {
    /// What mount(2) gets as source (a name only, for these).
    pub source: &'static str,
    /// Where.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// nosuid, nodev, noexec.
    pub flags: Hardening,
    /// Filesystem-specific options.
    pub data: &'static str,
}

/// The early filesystems, mounted in this order (each one's target lies
/// in a filesystem mounted before it, or in the root).
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount { source: "proc", target: "/proc", fstype: "proc", flags: NSD, data: "" },
    EarlyMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NSD, data: "" },
    // Device nodes live here: nodev would defeat it. noexec: nothing runs
    // from /dev.
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: Hardening { nosuid: true, nodev: false, noexec: true },
        data: "mode=0755",
    },
    // Ptys are device nodes too; a private instance, ptmx usable by all.
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: Hardening { nosuid: true, nodev: false, noexec: true },
        data: "mode=0620,ptmxmode=0666",
    },
    // /run holds sockets and pid files; nothing runs from it.
    EarlyMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NSD, data: "mode=0755" },
    // The PBX or its tools may unpack and run helpers in /tmp: exec stays.
    EarlyMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NS_D, data: "mode=1777" },
    EarlyMount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NSD, data: "" },
];

impl EarlyMount {
    fn ms_flags(&self) -> MsFlags {
        let mut f = MsFlags::empty();
        f.set(MsFlags::MS_NOSUID, self.flags.nosuid);
        f.set(MsFlags::MS_NODEV, self.flags.nodev);
        f.set(MsFlags::MS_NOEXEC, self.flags.noexec);
        f
    }
}

/// One mount as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
}

/// The mounts in `/proc/self/mountinfo` text, in its order (a later
/// entry on the same point is mounted over an earlier one). Lines that do
/// not parse are skipped: the kernel writes this file.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(MountEntry { target: PathBuf::from(unescape(target)), fstype: fstype.to_string() })
        })
        .collect()
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What boot does about one early mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountAction {
    /// Mount it.
    Mount,
    /// It is there already (the kernel or an earlier run mounted it).
    Present,
    /// Another filesystem type is mounted there: left alone.
    Other(String),
    /// Mounting would hide this file the config names: skipped.
    WouldHide(PathBuf),
}

/// Decides one early mount from the current mounts, whether the `/proc`
/// mounted now shows this process's PID namespace (`proc_ours`), and the
/// config's files that exist now (`keep`).
///
/// A proc of another PID namespace (inherited with the mount namespace)
/// counts as absent: `/proc` must list this namespace's processes.
pub fn plan_mount(m: &EarlyMount, mounted: &[MountEntry], proc_ours: bool, keep: &[PathBuf]) -> MountAction {
    let target = Path::new(m.target);
    if let Some(top) = mounted.iter().rev().find(|e| e.target == target) {
        if top.fstype != m.fstype {
            return MountAction::Other(top.fstype.clone());
        }
        if m.fstype != "proc" || proc_ours {
            return MountAction::Present;
        }
    }
    match keep.iter().find(|k| k.starts_with(target)) {
        Some(k) => MountAction::WouldHide(k.clone()),
        None => MountAction::Mount,
    }
}

/// One hardening sysctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted key, as sysctl(8) names it.
    pub key: &'static str,
    /// Value written.
    pub value: &'static str,
    /// The kernel keeps it per network namespace: writing it in a node's
    /// own namespace changes nothing outside.
    pub per_netns: bool,
}

const fn sysctl(key: &'static str, value: &'static str, per_netns: bool) -> Sysctl {
    Sysctl { key, value, per_netns }
}

/// The hardening sysctls (docs/pid1.md says why each).
pub const SYSCTLS: &[Sysctl] = &[
    // Kernel pointers and the kernel log stay with root.
    sysctl("kernel.kptr_restrict", "2", false),
    sysctl("kernel.dmesg_restrict", "1", false),
    sysctl("kernel.unprivileged_bpf_disabled", "1", false),
    sysctl("kernel.perf_event_paranoid", "3", false),
    // The PBX runs unprivileged: it may not trace other processes.
    sysctl("kernel.yama.ptrace_scope", "2", false),
    sysctl("kernel.sysrq", "0", false),
    // An oops leaves the box in an unknown state: panic, and come back
    // 10 s later to rejoin the cluster as a healthy node.
    sysctl("kernel.panic_on_oops", "1", false),
    sysctl("kernel.panic", "10", false),
    sysctl("fs.protected_symlinks", "1", false),
    sysctl("fs.protected_hardlinks", "1", false),
    sysctl("fs.protected_fifos", "2", false),
    sysctl("fs.protected_regular", "2", false),
    sysctl("fs.suid_dumpable", "0", false),
    // The appliance is no router, and nobody on the LAN redirects it.
    sysctl("net.ipv4.ip_forward", "0", true),
    sysctl("net.ipv4.conf.all.accept_redirects", "0", true),
    sysctl("net.ipv4.conf.default.accept_redirects", "0", true),
    sysctl("net.ipv4.conf.all.send_redirects", "0", true),
    sysctl("net.ipv4.conf.default.send_redirects", "0", true),
    sysctl("net.ipv4.conf.all.accept_source_route", "0", true),
    sysctl("net.ipv6.conf.all.accept_redirects", "0", true),
    sysctl("net.ipv6.conf.default.accept_redirects", "0", true),
    sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "1", true),
    sysctl("net.ipv4.tcp_syncookies", "1", true),
];

/// The table entries `scope` writes.
pub fn sysctls_for(scope: SysctlScope) -> Vec<&'static Sysctl> {
    SYSCTLS
        .iter()
        .filter(|s| match scope {
            SysctlScope::All => true,
            SysctlScope::Namespaced => s.per_netns,
            SysctlScope::None => false,
        })
        .collect()
}

/// `/proc/sys/...` of a dotted key.
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Why init refuses to act.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    /// Init duties (mounts, hostname, sysctls, reboot(2)) need PID 1.
    #[error(
        "node.init = true but this process is pid {pid}, not PID 1 of its PID namespace: refusing to act as \
         the machine's init (mounts, hostname, sysctls, reboot(2)); run it as PID 1 (the kernel's init, or \
         `unshare --pid --fork --mount --uts --net`) or set node.init = false"
    )]
    NotPid1 {
        /// This process's pid.
        pid: u32,
    },
}

/// The guard before any init duty, and again before reboot(2).
pub fn refuse_unless_pid1(pid: u32) -> Result<(), InitError> {
    if pid == 1 {
        Ok(())
    } else {
        Err(InitError::NotPid1 { pid })
    }
}

/// How the supervisor's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// SIGTERM, SIGINT or SIGPWR: the service is down here, the role
    /// handed over.
    Stopped,
    /// A fatal error or a panic.
    Fatal,
}

/// The command reboot(2) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootCmd {
    /// `RB_AUTOBOOT` (in a child PID namespace: its init ends by SIGHUP).
    Restart,
    /// `RB_POWER_OFF` (in a child PID namespace: its init ends by SIGINT).
    PowerOff,
}

/// One step of the end of a shutdown, after `runtime::run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// SIGTERM to every other process (the PBX's leftovers, helpers).
    Terminate,
    /// After a grace period, SIGKILL to whatever is left.
    Kill,
    /// The early filesystems boot mounted, in reverse order.
    Unmount,
    /// sync(2): everything written reaches the disks.
    Sync,
    /// reboot(2).
    Reboot(RebootCmd),
}

/// The steps after the run, in order. The service itself (PBX stopped,
/// volume unmounted and detached, VIP removed, role handed over) went down
/// inside the run; processes go before the unmount (they hold files
/// open), the unmount before the sync, the sync before reboot(2).
/// A fatal error always restarts: a box that failed should come back and
/// rejoin, whatever `node.shutdown` says about a planned stop.
pub fn shutdown_plan(cause: Cause, mode: ShutdownMode) -> [Step; 5] {
    let cmd = match (cause, mode) {
        (Cause::Stopped, ShutdownMode::PowerOff) => RebootCmd::PowerOff,
        (Cause::Stopped, ShutdownMode::Reboot) | (Cause::Fatal, _) => RebootCmd::Restart,
    };
    [Step::Terminate, Step::Kill, Step::Unmount, Step::Sync, Step::Reboot(cmd)]
}

/// The config's files that an early mount must not hide: those that
/// exist now (a state directory under `/run` on a development machine;
/// on the appliance none of them is under an empty mount point).
fn config_paths(cfg: &Config) -> Vec<PathBuf> {
    let mut paths = vec![cfg.node.state_dir.clone(), cfg.tls.ca.clone(), cfg.tls.cert.clone(), cfg.tls.key.clone()];
    if let Some(parent) = cfg.node.control_socket.parent() {
        paths.push(parent.to_path_buf());
    }
    if let Some(v) = &cfg.volume {
        paths.extend([v.data.clone(), v.journal.clone(), v.meta.clone()]);
    }
    if let Some(p) = &cfg.pbx {
        paths.extend([p.command.clone(), p.mount_point.clone()]);
    }
    paths.retain(|p| p.exists());
    paths
}

/// What boot did, for the shutdown.
#[derive(Debug, Default)]
pub struct Booted {
    /// Targets boot mounted, in mount order.
    pub mounted: Vec<PathBuf>,
}

/// The boot duties: early mounts, hostname, sysctls. Nothing here is
/// fatal: a box whose sysctl or mount failed can still serve (each
/// failure is logged), where a reboot loop serves nobody.
pub fn boot(cfg: &Config) -> Booted {
    let booted = Booted { mounted: mount_early(&config_paths(cfg)) };
    match nix::unistd::sethostname(&cfg.node.hostname) {
        Ok(()) => info!(hostname = %cfg.node.hostname, "hostname set"),
        Err(e) => error!(hostname = %cfg.node.hostname, error = %e, "cannot set the hostname"),
    }
    let chosen = sysctls_for(cfg.node.init_sysctls);
    let left: Vec<&str> = SYSCTLS.iter().filter(|s| !chosen.contains(s)).map(|s| s.key).collect();
    if !left.is_empty() {
        info!(scope = ?cfg.node.init_sysctls, keys = ?left, "sysctls left alone (node.init_sysctls)");
    }
    for s in chosen {
        match std::fs::write(sysctl_path(s.key), s.value) {
            Ok(()) => info!(key = s.key, value = s.value, per_netns = s.per_netns, "sysctl set"),
            // A kernel built without the feature (yama, IPv6) has no key.
            Err(e) => warn!(key = s.key, value = s.value, error = %e, "sysctl not set"),
        }
    }
    booted
}

/// The early mounts of [`EARLY_MOUNTS`] (not over the files in `keep`),
/// then the console descriptors; returns the targets it mounted. Called
/// again by [`boot`] after the appliance's first stage (`appliance.rs`)
/// mounted them before its config was readable: they are then present.
pub fn mount_early(keep: &[PathBuf]) -> Vec<PathBuf> {
    let mut mounted_now = Vec::new();
    for m in EARLY_MOUNTS {
        // Read again for each entry: /proc itself is the first one.
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default();
        let proc_ours =
            std::fs::read_link("/proc/self").is_ok_and(|p| p.as_os_str() == std::process::id().to_string().as_str());
        match plan_mount(m, &mounted, proc_ours, keep) {
            MountAction::Present => info!(target = m.target, fstype = m.fstype, "early mount already there"),
            MountAction::Other(other) => {
                warn!(target = m.target, fstype = m.fstype, found = %other, "another filesystem is mounted there; left as it is")
            }
            MountAction::WouldHide(path) => warn!(target = m.target, fstype = m.fstype, hides = %path.display(),
                "not mounted: it would hide a file the config names"),
            MountAction::Mount => {
                // The target may be missing (/dev/pts in a fresh devtmpfs);
                // if it cannot be made, mount(2) says so below.
                let _ = std::fs::create_dir_all(m.target);
                let data = (!m.data.is_empty()).then_some(m.data);
                match mount(Some(m.source), m.target, Some(m.fstype), m.ms_flags(), data) {
                    Ok(()) => {
                        info!(target = m.target, fstype = m.fstype, "mounted");
                        mounted_now.push(PathBuf::from(m.target));
                    }
                    Err(nix::Error::EBUSY) => {
                        info!(target = m.target, fstype = m.fstype, "early mount busy: already there")
                    }
                    Err(e) => error!(target = m.target, fstype = m.fstype, error = %e, "early mount failed"),
                }
            }
        }
    }
    console_fds();
    mounted_now
}

/// Gives PID 1 a console: a kernel that found no `/dev/console` in the
/// root filesystem starts init without stdin, stdout and stderr, and the
/// logs would go nowhere. Now that devtmpfs is mounted, the missing ones
/// are opened on `/dev/console`.
fn console_fds() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::fs::OpenOptionsExt;
    let missing: Vec<i32> =
        (0..3).filter(|fd| nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::Error::EBADF)).collect();
    if missing.is_empty() {
        return;
    }
    // O_NOCTTY: a console that became PID 1's controlling terminal would
    // turn a Ctrl-C typed on it into a shutdown.
    let console =
        match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/console") {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "no console: cannot open /dev/console");
                return;
            }
        };
    for fd in &missing {
        // SAFETY: dup2 onto a descriptor number that is not open; nothing
        // in this process holds it.
        if unsafe { libc::dup2(console.as_raw_fd(), *fd) } < 0 {
            error!(fd, error = %std::io::Error::last_os_error(), "cannot open the console");
        }
    }
    // The file's own descriptor may itself be 0, 1 or 2: then it stays.
    let own = console.into_raw_fd();
    if !missing.contains(&own) {
        // SAFETY: `own` came from into_raw_fd above and is closed once.
        unsafe { libc::close(own) };
    }
    info!(fds = ?missing, "standard descriptors opened on /dev/console");
}

/// How long the other processes get between SIGTERM and SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

/// Carries out [`shutdown_plan`] and never returns. Refuses reboot(2)
/// unless this process is PID 1 (it then exits with status 1 instead).
pub fn shutdown(cause: Cause, mode: ShutdownMode, booted: &Booted) -> ! {
    for step in shutdown_plan(cause, mode) {
        match step {
            Step::Terminate => {
                info!("shutdown: SIGTERM to every remaining process");
                signal_all(Signal::SIGTERM);
            }
            Step::Kill => {
                let deadline = Instant::now() + TERMINATE_GRACE;
                while others_alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if others_alive() {
                    warn!("shutdown: SIGKILL to the processes that did not exit");
                    signal_all(Signal::SIGKILL);
                }
            }
            Step::Unmount => {
                info!("shutdown: unmounting the early filesystems");
                for target in booted.mounted.iter().rev() {
                    // Detached: a file still open somewhere must not keep
                    // the box from rebooting.
                    if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                        warn!(target = %target.display(), error = %e, "cannot unmount");
                    }
                }
            }
            Step::Sync => {
                info!("shutdown: sync");
                nix::unistd::sync();
            }
            Step::Reboot(cmd) => final_reboot(cmd),
        }
    }
    // The plan ends in reboot(2), which does not return.
    halt()
}

/// reboot(2), behind the PID 1 guard; never returns.
fn final_reboot(cmd: RebootCmd) -> ! {
    reboot_via(cmd, |line| info!("{line}"))
}

/// reboot(2) behind the PID 1 guard, saying what it does through `say`
/// (tracing, or plain stderr on the panic path). Never returns: a process
/// that is not PID 1 exits 1; a failed reboot(2) halts.
fn reboot_via(cmd: RebootCmd, say: impl Fn(&str)) -> ! {
    if let Err(e) = refuse_unless_pid1(std::process::id()) {
        say(&format!("shutdown: not calling reboot(2): {e}; exiting instead"));
        std::process::exit(1);
    }
    let mode = match cmd {
        RebootCmd::Restart => RebootMode::RB_AUTOBOOT,
        RebootCmd::PowerOff => RebootMode::RB_POWER_OFF,
    };
    say(&format!("shutdown: reboot(2) mode={mode:?}"));
    // reboot(2) returns only on failure (no CAP_SYS_BOOT, say).
    let Err(e) = reboot(mode);
    say(&format!("reboot(2) {mode:?} failed: {e}; halting here"));
    halt()
}

/// What PID 1 does when even reboot(2) failed: it may not exit (the
/// kernel would panic), so it keeps reaping and waits.
fn halt() -> ! {
    loop {
        if nix::sys::wait::waitpid(Pid::from_raw(-1), None).is_err() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The panic path: say it on the console, sync, restart at once. It does
/// not go through `tracing` (the panic may have happened inside it, with
/// its locks held) and does not wait for anything: nothing in the process
/// can be trusted any more. Never returns.
pub fn fatal(what: &str) -> ! {
    let say = |line: &str| eprintln!("triad: {line}");
    say(&format!("fatal error: {what}; syncing and rebooting"));
    nix::unistd::sync();
    reboot_via(RebootCmd::Restart, say)
}

fn signal_all(sig: Signal) {
    // kill(-1): every process this one may signal except itself and PID 1
    // (itself, here): in a child PID namespace, only that namespace's.
    match kill(Pid::from_raw(-1), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => warn!(%sig, error = %e, "cannot signal the remaining processes"),
    }
}

/// Whether a process other than this one still runs (zombies and kernel
/// threads do not count: both have an empty command line).
fn others_alive() -> bool {
    let me = std::process::id().to_string();
    // Without /proc nobody can tell: wait the whole grace, then SIGKILL.
    let Ok(dir) = std::fs::read_dir("/proc") else { return true };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(name) = name.to_str() else { return false };
        name != me
            && name.bytes().all(|b| b.is_ascii_digit())
            && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_table_is_the_documented_one() {
        let rows: Vec<String> = EARLY_MOUNTS
            .iter()
            .map(|m| {
                let f = m.flags;
                let opts: Vec<&str> = [(f.nosuid, "nosuid"), (f.nodev, "nodev"), (f.noexec, "noexec")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .chain((!m.data.is_empty()).then_some(m.data))
                    .collect();
                format!("{} {} {}", m.fstype, m.target, opts.join(","))
            })
            .collect();
        assert_eq!(
            rows,
            [
                "proc /proc nosuid,nodev,noexec",
                "sysfs /sys nosuid,nodev,noexec",
                "devtmpfs /dev nosuid,noexec,mode=0755",
                "devpts /dev/pts nosuid,noexec,mode=0620,ptmxmode=0666",
                "tmpfs /run nosuid,nodev,noexec,mode=0755",
                "tmpfs /tmp nosuid,nodev,mode=1777",
                "cgroup2 /sys/fs/cgroup nosuid,nodev,noexec",
            ]
        );
        // Each target lies in the root or in a filesystem mounted before it.
        for (i, m) in EARLY_MOUNTS.iter().enumerate() {
            let parent = Path::new(m.target).parent().expect("absolute");
            let under_earlier = EARLY_MOUNTS[..i].iter().any(|e| parent.starts_with(e.target));
            assert!(parent == Path::new("/") || under_earlier, "{} mounted before its parent", m.target);
        }
        assert_eq!(EARLY_MOUNTS[3].ms_flags(), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
    }

    fn entry(target: &str, fstype: &str) -> MountEntry {
        MountEntry { target: target.into(), fstype: fstype.into() }
    }

    #[test]
    fn mountinfo_lines_give_target_and_type() {
        let text = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                    30 22 0:40 / /my\\040dir rw - tmpfs tmpfs rw\n\
                    garbage\n\
                    31 30 0:41 / /a\\134b rw master:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![entry("/proc", "proc"), entry("/my dir", "tmpfs"), entry("/a\\b", "cgroup2")]
        );
        assert_eq!(unescape("x\\04"), "x\\04", "a short escape is kept as it is");
    }

    #[test]
    fn mount_decisions() {
        let proc = &EARLY_MOUNTS[0];
        let run = &EARLY_MOUNTS[4];
        let cgroup = &EARLY_MOUNTS[6];
        // A fresh box: nothing mounted.
        assert_eq!(plan_mount(proc, &[], false, &[]), MountAction::Mount);
        // The kernel mounted devtmpfs; an earlier run mounted /run.
        assert_eq!(plan_mount(&EARLY_MOUNTS[2], &[entry("/dev", "devtmpfs")], true, &[]), MountAction::Present);
        assert_eq!(plan_mount(run, &[entry("/run", "tmpfs")], true, &[]), MountAction::Present);
        // A proc of the parent's PID namespace is not ours: mounted over.
        assert_eq!(plan_mount(proc, &[entry("/proc", "proc")], false, &[]), MountAction::Mount);
        assert_eq!(plan_mount(proc, &[entry("/proc", "proc")], true, &[]), MountAction::Present);
        // The topmost mount decides.
        let stacked = [entry("/sys/fs/cgroup", "cgroup2"), entry("/sys/fs/cgroup", "tmpfs")];
        assert_eq!(plan_mount(cgroup, &stacked, true, &[]), MountAction::Other("tmpfs".into()));
        assert_eq!(plan_mount(cgroup, &stacked[..1], true, &[]), MountAction::Present);
        // A mount elsewhere does not count; a file the config names does.
        let keep = [PathBuf::from("/var/lib/triad"), PathBuf::from("/run/triad-lab/n1/state")];
        assert_eq!(plan_mount(run, &[entry("/", "ext4")], true, &keep[..1]), MountAction::Mount);
        assert_eq!(plan_mount(run, &[], true, &keep), MountAction::WouldHide("/run/triad-lab/n1/state".into()));
        assert_eq!(
            plan_mount(&EARLY_MOUNTS[5], &[], true, &[PathBuf::from("/tmpfoo")]),
            MountAction::Mount,
            "a path prefix is not a directory prefix"
        );
    }

    #[test]
    fn sysctl_scopes_and_paths() {
        let keys = |s| sysctls_for(s).iter().map(|s| s.key).collect::<Vec<_>>();
        assert_eq!(keys(SysctlScope::All).len(), SYSCTLS.len());
        assert_eq!(keys(SysctlScope::None), Vec::<&str>::new());
        let namespaced = keys(SysctlScope::Namespaced);
        assert_eq!(namespaced.len(), 10);
        assert!(namespaced.iter().all(|k| k.starts_with("net.ipv4.") || k.starts_with("net.ipv6.")), "{namespaced:?}");
        // Only net.ipv4/ipv6 keys are per network namespace; net.core's
        // are global, so none may be marked so.
        assert!(SYSCTLS
            .iter()
            .all(|s| s.per_netns == (s.key.starts_with("net.ipv4.") || s.key.starts_with("net.ipv6."))));
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.accept_redirects"),
            Path::new("/proc/sys/net/ipv4/conf/all/accept_redirects")
        );
    }

    #[test]
    fn shutdown_order() {
        use RebootCmd::*;
        let tail = [Step::Terminate, Step::Kill, Step::Unmount, Step::Sync];
        let plan = |c, m| shutdown_plan(c, m);
        assert_eq!(plan(Cause::Stopped, ShutdownMode::PowerOff)[..4], tail);
        assert_eq!(plan(Cause::Stopped, ShutdownMode::PowerOff)[4], Step::Reboot(PowerOff));
        assert_eq!(plan(Cause::Stopped, ShutdownMode::Reboot)[4], Step::Reboot(Restart));
        assert_eq!(
            plan(Cause::Fatal, ShutdownMode::PowerOff),
            [tail[0], tail[1], tail[2], tail[3], Step::Reboot(Restart)]
        );
        assert_eq!(plan(Cause::Fatal, ShutdownMode::Reboot)[4], Step::Reboot(Restart));
    }

    #[test]
    fn only_pid_1_acts_as_init() {
        assert_eq!(refuse_unless_pid1(1), Ok(()));
        let e = refuse_unless_pid1(4242).unwrap_err();
        assert_eq!(e, InitError::NotPid1 { pid: 4242 });
        assert!(e.to_string().starts_with("node.init = true but this process is pid 4242, not PID 1"), "{e}");
        // The test process itself is never PID 1: the guard holds here.
        assert!(refuse_unless_pid1(std::process::id()).is_err());
    }
}

//! Starting and stopping the PBX process (issue 11, item 1): the OS side of
//! `triad_host::pbx`, which decides when.
//!
//! The child runs unprivileged (the configured uid and gid, supplementary
//! groups dropped), with `no_new_privs` (no setuid binary can give it root
//! back), every signal at its default disposition and none blocked (the
//! supervisor's own mask and ignored signals must not leak into it: a PBX
//! that ignores SIGTERM because its parent did would never stop), in its own
//! process group (so a stop reaches its workers: killing Kamailio's main
//! PID alone leaves them answering), and in its own cgroup v2 group with
//! the configured limits when the kernel offers cgroup v2 at
//! `/sys/fs/cgroup`.
//!
//! Must not: decide anything, or wait for the child (the supervisor's
//! reaper does, and reports the exit to the host).

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::config::PbxConfig;

/// Where cgroup v2 is mounted on the appliance and on Debian.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why the PBX could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum PbxProcessError {
    /// The process could not be spawned (exec failed, no such file, ...).
    #[error("cannot start the PBX {command}")]
    Spawn {
        /// The command.
        command: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup could not be prepared.
    #[error("cannot prepare the PBX's cgroup {path}")]
    Cgroup {
        /// The file written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A signal to its process group failed (other than "no such group",
    /// which means it is gone already).
    #[error("cannot send {signal} to the PBX's process group {pgid}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The group.
        pgid: i32,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

/// What the PBX is told about its place in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbxEnv {
    /// The VIP (address only).
    pub vip: String,
}

/// The running PBX: its process, whose id is also its process group's.
#[derive(Debug)]
pub struct PbxProcess {
    pid: u32,
    /// Until a waiter takes it.
    child: Option<Child>,
    cgroup: Option<PathBuf>,
}

impl PbxProcess {
    /// Starts the PBX as `cfg` says. `cgroup_root` is where its cgroup is
    /// made (`None`: not in a cgroup of its own, e.g. no cgroup v2).
    pub fn spawn(cfg: &PbxConfig, env: &PbxEnv, cgroup_root: Option<&Path>) -> Result<PbxProcess, PbxProcessError> {
        let cgroup = match cgroup_root {
            Some(root) => Some(prepare_cgroup(root, cfg)?),
            None => None,
        };
        // Opened before the fork: the child only writes to it (async-signal-safe).
        let procs = match &cgroup {
            Some(dir) => {
                let path = dir.join("cgroup.procs");
                Some(
                    File::options()
                        .write(true)
                        .open(&path)
                        .map_err(|source| PbxProcessError::Cgroup { path, source })?,
                )
            }
            None => None,
        };
        let mut cmd = as_the_pbx(cfg, env, &cfg.command, &cfg.args);
        cmd.current_dir(&cfg.working_dir);
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (write, sigaction,
        // sigprocmask, prctl); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || child_setup(procs_fd));
        }
        let child = cmd.spawn().map_err(|source| PbxProcessError::Spawn { command: cfg.command.clone(), source })?;
        drop(procs);
        Ok(PbxProcess { pid: child.id(), child: Some(child), cgroup })
    }

    /// Its pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its cgroup directory, if it has one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Sends `signal` to its whole process group. A group that is gone is
    /// not an error.
    pub fn signal_group(&self, signal: Signal) -> Result<(), PbxProcessError> {
        let pgid = self.pid as i32;
        match killpg(Pid::from_raw(pgid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(PbxProcessError::Signal { signal, pgid, source }),
        }
    }

    /// The child's handle, for the one thread that waits for its exit
    /// (`None` once taken). Signals still go by pid.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

/// In the child, before exec: into the cgroup, every signal default and
/// unblocked, no new privileges.
fn child_setup(procs_fd: Option<i32>) -> std::io::Result<()> {
    if let Some(fd) = procs_fd {
        // "0" moves the writing process (this child) into the group.
        // SAFETY: write(2) on an fd opened by the parent, from a static buffer.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // Every signal, 1..=64, to SIG_DFL through the raw system call: libc's
    // sigaction refuses the two it reserves for threads (32, 33), whose
    // "ignored" would otherwise leak from whoever started the supervisor.
    let default = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct of the kernel's layout
        // and its 8-byte mask size; no old action requested.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, &default as *const KernelSigaction, std::ptr::null::<u8>(), 8)
        };
    }
    // SAFETY: an empty set, then unblocking it all.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `struct sigaction` as the kernel takes it (x86_64, and the same field
/// order on aarch64): not libc's, whose mask is 128 bytes.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Makes `root/triad-pbx` with the configured limits, if cgroup v2 is
/// there, and returns it.
fn prepare_cgroup(root: &Path, cfg: &PbxConfig) -> Result<PathBuf, PbxProcessError> {
    let dir = root.join("triad-pbx");
    let err = |path: PathBuf| move |source| PbxProcessError::Cgroup { path, source };
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(dir.clone())(e)),
    }
    let write = |name: &str, value: String| -> Result<(), PbxProcessError> {
        let path = dir.join(name);
        let mut f = File::options().write(true).open(&path).map_err(err(path.clone()))?;
        f.write_all(value.as_bytes()).map_err(err(path))
    };
    // Only limits that are configured: their files exist only where the
    // controller is enabled, and a group without limits still keeps the
    // PBX's processes together and countable.
    if let Some(m) = cfg.memory_max {
        write("memory.max", m.to_string())?;
    }
    if let Some(p) = cfg.cpu_max_percent {
        // cpu.max: quota and period in µs; a percentage of one CPU.
        let period = 100_000u64;
        write("cpu.max", format!("{} {period}", u64::from(p) * period / 100))?;
    }
    Ok(dir)
}

/// `program args` as the PBX runs: its user and group, its environment
/// (cleared, then the config's and the supervisor's `TRIAD_*`), stdin
/// closed, in a process group of its own. Used for the PBX and for its
/// config check (the readiness check), so both see the same world.
pub fn as_the_pbx(cfg: &PbxConfig, env: &PbxEnv, program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(&cfg.env)
        .env("TRIAD_VIP", &env.vip)
        .env("TRIAD_MOUNT_POINT", &cfg.mount_point)
        .stdin(Stdio::null())
        .uid(cfg.uid.as_raw())
        .gid(cfg.gid.as_raw())
        .process_group(0);
    if let Some(public) = &cfg.public_address {
        cmd.env("TRIAD_PUBLIC_ADDRESS", public);
    }
    cmd
}

/// Whether a cgroup v2 hierarchy is mounted at `root` (its root has
/// `cgroup.subtree_control`; a v1 or tmpfs mount has not).
pub fn cgroup_v2_at(root: &Path) -> bool {
    root.join("cgroup.subtree_control").exists() && root.join("cgroup.procs").exists()
}

/// For the log: the command line as one string.
pub fn describe(cfg: &PbxConfig) -> String {
    let mut parts: Vec<OsString> = vec![cfg.command.clone().into_os_string()];
    parts.extend(cfg.args.iter().map(OsString::from));
    parts.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Lets the PBX bind the VIP before this node holds it (its config lists
/// the VIP; it may be restarted while the VIP is being moved): the
/// `ip_nonlocal_bind` sysctls of this network namespace (the node's own on
/// the appliance and in the lab).
pub fn allow_nonlocal_bind() -> std::io::Result<()> {
    for path in ["/proc/sys/net/ipv4/ip_nonlocal_bind", "/proc/sys/net/ipv6/ip_nonlocal_bind"] {
        std::fs::write(path, "1").map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    }
    Ok(())
}

//! The one reaper of the supervisor's children and orphans (issue 11, item
//! 6). When the supervisor is PID 1 of its PID namespace (the lab's nodes,
//! the appliance), every orphan in it becomes its child; otherwise it asks
//! to be a child subreaper, so orphans of the PBX's workers come to it
//! rather than to the machine's init. Either way nothing lingers as a
//! zombie, and "the process group is gone" can become true.
//!
//! A single thread waits for any child (`waitpid(-1)`); the exit of a
//! child someone registered (the PBX's main process) is routed to its
//! owner, every other one is just reaped. An exit reaped before its owner
//! registered (the child died at once) is kept briefly and handed over at
//! registration.
//!
//! Must not: be combined with any other `wait` on the supervisor's
//! children (std's `Child::wait` would get ECHILD): every child the
//! supervisor spawns is registered here instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

/// How a registered child ended (pid and status), for its owner.
pub type Reaped = Box<dyn FnOnce(WaitStatus) + Send>;

/// How long an exit nobody had registered for is kept.
const UNCLAIMED_FOR: Duration = Duration::from_secs(10);
/// The wait between looks when there are no children at all.
const IDLE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Registry {
    owners: HashMap<i32, Reaped>,
    unclaimed: HashMap<i32, (WaitStatus, Instant)>,
}

/// Handle to the reaper thread.
#[derive(Clone)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

impl Reaper {
    /// Makes this process the reaper of its orphans (PID 1 of its
    /// namespace already is; otherwise `PR_SET_CHILD_SUBREAPER`) and starts
    /// the reaping thread.
    pub fn start() -> std::io::Result<Reaper> {
        if std::process::id() != 1 {
            // SAFETY: a plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                warn!(error = %e, "PR_SET_CHILD_SUBREAPER failed: orphans go to the machine's init");
            }
        }
        let registry = Arc::new(Mutex::new(Registry::default()));
        let r = registry.clone();
        std::thread::Builder::new().name("triad-reaper".into()).spawn(move || reap_forever(&r))?;
        Ok(Reaper { registry })
    }

    /// Routes the exit of child `pid` to `owner` (at once if it was
    /// already reaped).
    pub fn register(&self, pid: u32, owner: Reaped) {
        let pid = pid as i32;
        let mut reg = lock(&self.registry);
        if let Some((status, _)) = reg.unclaimed.remove(&pid) {
            drop(reg);
            owner(status);
            return;
        }
        reg.owners.insert(pid, owner);
    }
}

fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn reap_forever(registry: &Mutex<Registry>) {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                let pid = pid.as_raw();
                let owner = {
                    let mut reg = lock(registry);
                    let owner = reg.owners.remove(&pid);
                    if owner.is_none() {
                        let now = Instant::now();
                        reg.unclaimed.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_FOR);
                        reg.unclaimed.insert(pid, (status, now));
                    }
                    owner
                };
                match owner {
                    Some(owner) => owner(status),
                    None => debug!(pid, status = %describe(status), "reaped a child or orphan"),
                }
            }
            Err(nix::Error::ECHILD) => std::thread::sleep(IDLE),
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                info!(error = %e, "waitpid failed; retrying");
                std::thread::sleep(IDLE);
            }
        }
    }
}

/// How a wait status reads in a log line: `exited with status 3`,
/// `killed by SIGKILL (core dumped)`.
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!("killed by {}{}", sig.as_str(), if core { " (core dumped)" } else { "" })
        }
        WaitStatus::Stopped(_, sig) => format!("stopped by {}", sig.as_str()),
        WaitStatus::Continued(_) => "continued".into(),
        WaitStatus::StillAlive => "still running".into(),
        WaitStatus::PtraceEvent(_, sig, event) => format!("ptrace event {event} ({})", sig.as_str()),
        WaitStatus::PtraceSyscall(_) => "ptrace syscall stop".into(),
    }
}

/// The shell's number for how a process ended: its exit status, or 128
/// plus the signal that killed it; `None` while it has not ended.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn wait_statuses_read_as_exits() {
        let p = Pid::from_raw(7);
        let cases = [
            (WaitStatus::Exited(p, 0), "exited with status 0", Some(0)),
            (WaitStatus::Exited(p, 3), "exited with status 3", Some(3)),
            (WaitStatus::Signaled(p, Signal::SIGKILL, false), "killed by SIGKILL", Some(137)),
            (WaitStatus::Signaled(p, Signal::SIGSEGV, true), "killed by SIGSEGV (core dumped)", Some(139)),
            (WaitStatus::Stopped(p, Signal::SIGSTOP), "stopped by SIGSTOP", None),
            (WaitStatus::Continued(p), "continued", None),
            (WaitStatus::StillAlive, "still running", None),
            (WaitStatus::PtraceEvent(p, Signal::SIGTRAP, 3), "ptrace event 3 (SIGTRAP)", None),
            (WaitStatus::PtraceSyscall(p), "ptrace syscall stop", None),
        ];
        for (status, text, code) in cases {
            assert_eq!((describe(status).as_str(), exit_code(status)), (text, code), "{status:?}");
        }
    }
}

//! The failover readiness check's executor (issue 11, item 7): could this
//! node run the service if it took the active role now? Run periodically
//! and on demand on every node with a PBX, so that a broken standby is
//! found before it is needed, not at 3 a.m. when the active box dies.
//!
//! What is checked here, each found problem one line for status:
//! - the PBX's program is still an executable file;
//! - the PBX's own config check (`pbx.check`, e.g. `kamailio -c -f cfg`)
//!   passes, run as the PBX's user with its environment, within
//!   [`CHECK_TIMEOUT`];
//! - the hardware watchdog's last pet went through (when one is configured).
//!
//! The host adds what it knows itself (the replica current and fit, no
//! refusal after repeated PBX failures) and tells the peers the verdict;
//! see `triad_host::Host::readiness`.
//!
//! Must not: block the runtime loop (the check runs on a blocking thread),
//! or wait for a child other than through the reaper.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::config::PbxConfig;
use crate::control::Response;
use crate::os::pbx_process::{as_the_pbx, PbxEnv};
use crate::os::reaper::Reaper;

/// A finished check, for the runtime loop (which hands it to the host and
/// answers the operator who asked for it, if one did).
#[derive(Debug)]
pub struct Checked {
    /// The problems found.
    pub problems: Vec<String>,
    /// An operator's `check-readiness`, answered once the host has it.
    pub reply: Option<oneshot::Sender<Response>>,
}

/// Starts checks on blocking threads; results go to the loop's channel.
#[derive(Debug)]
pub struct ReadinessRunner {
    cfg: PbxConfig,
    env: PbxEnv,
    reaper: Reaper,
    results: UnboundedSender<Checked>,
    /// A periodic check is under way: the next tick does not start another.
    in_flight: Arc<AtomicBool>,
    /// The last watchdog pet went through (or there is no watchdog).
    watchdog_ok: Arc<AtomicBool>,
}

impl ReadinessRunner {
    /// A runner for the PBX of `cfg`; results go to `results`.
    pub fn new(cfg: PbxConfig, env: PbxEnv, reaper: Reaper, results: UnboundedSender<Checked>) -> Self {
        ReadinessRunner {
            cfg,
            env,
            reaper,
            results,
            in_flight: Arc::default(),
            watchdog_ok: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether the watchdog's last pet went through.
    pub fn watchdog_petted(&self, ok: bool) {
        self.watchdog_ok.store(ok, Ordering::Relaxed);
    }

    /// Starts a check; `reply` is an operator waiting for it. A periodic
    /// check (no reply) is skipped while another is under way.
    pub fn start(&self, reply: Option<oneshot::Sender<Response>>) {
        if reply.is_none() && self.in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let periodic = reply.is_none();
        let (cfg, env, reaper) = (self.cfg.clone(), self.env.clone(), self.reaper.clone());
        let (results, in_flight, dog) = (self.results.clone(), self.in_flight.clone(), self.watchdog_ok.clone());
        tokio::task::spawn_blocking(move || {
            let problems = check(&cfg, &env, &reaper, dog.load(Ordering::Relaxed));
            if periodic {
                in_flight.store(false, Ordering::Release);
            }
            let _ = results.send(Checked { problems, reply });
        });
    }
}

/// How long the PBX's config check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The last lines of the config check's output quoted in a problem.
const QUOTED_LINES: usize = 3;

/// Runs the checks; returns the problems found (none: ready as far as
/// this node's software goes). Blocking: call on a blocking thread.
pub fn check(cfg: &PbxConfig, env: &PbxEnv, reaper: &Reaper, watchdog_ok: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(p) = executable(&cfg.command) {
        problems.push(format!("the PBX program {p}"));
    }
    if let Some(argv) = &cfg.check {
        if let Err(p) = config_check(cfg, env, reaper, argv) {
            problems.push(p);
        }
    }
    if !watchdog_ok {
        problems.push("the hardware watchdog's last pet failed".to_string());
    }
    problems
}

fn executable(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    Ok(())
}

/// Runs the PBX's config check as the PBX would run; an error says how it
/// failed and quotes the end of its output.
fn config_check(cfg: &PbxConfig, env: &PbxEnv, reaper: &Reaper, argv: &[String]) -> Result<(), String> {
    let shown = argv.join(" ");
    let (program, args) = argv.split_first().ok_or("the PBX's config check names no program")?;
    let mut cmd = as_the_pbx(cfg, env, program, args);
    // Not the working directory: on a standby the volume is not mounted.
    cmd.current_dir("/").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("the PBX's config check `{shown}` cannot start: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    reaper.register(
        pid,
        Box::new(move |status| {
            let _ = tx.send(status);
        }),
    );
    // Read its output on the side: a full pipe would stall the check.
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr {
            let _ = e.take(64 * 1024).read_to_string(&mut text);
        }
        text
    });
    drop(child);
    let status = match rx.recv_timeout(CHECK_TIMEOUT) {
        Ok(status) => Some(status),
        Err(_) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            None
        }
    };
    let output = reader.join().unwrap_or_default();
    match status {
        Some(WaitStatus::Exited(_, 0)) => Ok(()),
        Some(other) => Err(format!(
            "the PBX's config check `{shown}` failed ({}){}",
            crate::os::reaper::describe(other),
            quote_tail(&output)
        )),
        None => Err(format!("the PBX's config check `{shown}` did not finish within {CHECK_TIMEOUT:?}")),
    }
}

/// `: line; line; line` from the last non-empty lines of `output`.
fn quote_tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(QUOTED_LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_quoted_tail_is_the_last_non_empty_lines() {
        assert_eq!(quote_tail(""), "");
        assert_eq!(quote_tail("a\n\n b \nc\nd\n\n"), ": b; c; d");
        assert_eq!(quote_tail("only\n"), ": only");
    }

    #[test]
    fn a_program_that_is_not_executable_is_named() {
        assert!(executable(std::path::Path::new("/bin/sh")).is_ok());
        let plain = std::env::temp_dir().join(format!("triad-readiness-plain-{}", std::process::id()));
        std::fs::write(&plain, b"not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(executable(&plain), Err(format!("{} is not an executable file", plain.display())));
        std::fs::remove_file(&plain).unwrap();
        assert!(executable(std::path::Path::new("/nonexistent/x")).unwrap_err().starts_with("/nonexistent/x: "));
    }
}

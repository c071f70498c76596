//! Launching a process as PID 1 of a fresh PID and network namespace, and
//! the process-level faults the tests inject (kill -9, SIGSTOP/SIGCONT).
//!
//! `unshare --net --pid --fork --kill-child` creates both namespaces and
//! forks the payload as PID 1 inside them. Nothing else holds the network
//! namespace (no bind mount), so when the payload dies the kernel destroys
//! the namespace and every interface in it: a node's veth vanishes exactly
//! as its link would at a power cut. `--kill-child` makes the reverse hold
//! too: if the launcher dies, the payload is killed rather than orphaned.
//! `--uts` gives the payload its own hostname: a supervisor acting as init
//! (`node.init`) names its machine, and the machine running the lab must
//! keep its own name.
//!
//! unshare ends the way its payload did (it re-raises the signal that
//! killed it), so the launcher's exit status, kept by [`launcher_exit`],
//! tells how PID 1 of the namespace ended: by a signal of reboot(2) in a
//! child PID namespace (SIGINT for power off, SIGHUP for restart) or by
//! returning.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait;

/// Launching or signalling a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("could not open log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start unshare for {what}")]
    Start {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: launcher {launcher} forked no child within 5 s (see {log})")]
    NoChild { what: String, launcher: i32, log: PathBuf },
    #[error("could not send {signal} to pid {pid}")]
    Signal {
        pid: i32,
        signal: Signal,
        #[source]
        source: nix::Error,
    },
}

/// A payload started as PID 1 of its own namespaces.
#[derive(Debug, Clone, Copy)]
pub struct Launched {
    /// The `unshare` process (in the host PID namespace, parent of `pid`).
    pub launcher: i32,
    /// The payload, as the host sees its pid. This is the pid to kill, to
    /// freeze, and to give to `nsenter -t` and `ip link set ... netns`.
    pub pid: i32,
}

/// Exit statuses of the launchers that ended, by launcher pid.
static EXITS: Mutex<Option<HashMap<i32, ExitStatus>>> = Mutex::new(None);

/// How launcher `launcher` ended, once it has.
pub fn launcher_exit(launcher: i32) -> Option<ExitStatus> {
    EXITS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()?.get(&launcher).copied()
}

/// Starts `program args` as PID 1 of a new PID + network namespace, its
/// stdout and stderr appended to `log`.
pub fn launch(program: &Path, args: &[String], log: &Path) -> Result<Launched, SpawnError> {
    launch_env(program, args, log, &[])
}

/// As [`launch`], with extra environment variables.
pub fn launch_env(program: &Path, args: &[String], log: &Path, env: &[(&str, String)]) -> Result<Launched, SpawnError> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| SpawnError::Log { path: log.to_path_buf(), source })
    };
    let what = program.display().to_string();
    let mut child = Command::new("unshare")
        // Its own mount namespace too: a killed node's mounts (the
        // volume's filesystem, nbdfuse's directory) vanish with it, as on
        // a box that loses power.
        .args(["--net", "--pid", "--mount", "--uts", "--propagation", "private", "--fork", "--kill-child", "--"])
        .arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        // Its own process group: a Ctrl-C meant for triad-lab must not
        // take the cluster down with it.
        .process_group(0)
        .spawn()
        .map_err(|source| SpawnError::Start { what: what.clone(), source })?;
    let launcher = child.id() as i32;
    // Reap the launcher whenever it exits, so a dead node never lingers as
    // a zombie that `kill(pid, 0)` would still call alive. When this
    // process exits first, init adopts and reaps it instead.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            EXITS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert_with(HashMap::new)
                .insert(launcher, status);
        }
    });
    let pid = wait::until(Duration::from_secs(5), Duration::from_millis(5), || child_of(launcher))
        .ok_or_else(|| SpawnError::NoChild { what, launcher, log: log.to_path_buf() })?;
    Ok(Launched { launcher, pid })
}

/// (ppid, state) of a process from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the
    // last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The first child process of `parent`, if any.
pub fn child_of(parent: i32) -> Option<i32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if stat(pid).map(|(pp, _)| pp) == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((_, st)) if st != 'Z' && st != 'X')
}

/// Whether `pid` is stopped (SIGSTOP).
pub fn stopped(pid: i32) -> bool {
    matches!(stat(pid), Some((_, 'T')))
}

/// The process's command line, NUL separators turned into spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(" "))
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, signal: Signal) -> Result<(), SpawnError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(SpawnError::Signal { pid, signal, source }),
    }
}

/// Every live pid, from /proc.
pub fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// Pids whose command line contains `needle` (never our own).
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids().filter(|&pid| pid != me && cmdline(pid).is_some_and(|c| c.contains(needle))).collect()
}

/// Reads (utime + stime in clock ticks, VmRSS in KiB) for CPU and memory
/// accounting of a supervisor.
pub fn cpu_and_rss(pid: i32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    // utime is field 14 and stime field 15 in proc(5) numbering.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    Some((ticks, rss))
}

/// The scheduling class of `pid`'s main thread as `chrt` would name it
/// ("SCHED_FIFO 50", "SCHED_OTHER nice 0"), from /proc/PID/stat.
pub fn sched_policy(pid: i32) -> Option<String> {
    let f = stat_fields(pid)?;
    // nice is field 19, rt_priority 40 and policy 41 in proc(5) numbering.
    let nice = f.get(16)?;
    let rt = f.get(37)?;
    Some(match f.get(38)?.parse::<i32>().ok()? {
        libc::SCHED_FIFO => format!("SCHED_FIFO {rt}"),
        libc::SCHED_RR => format!("SCHED_RR {rt}"),
        libc::SCHED_OTHER => format!("SCHED_OTHER nice {nice}"),
        p => format!("policy {p}"),
    })
}

/// The fields of /proc/PID/stat after the command name: index 0 is the
/// state (field 3 in proc(5) numbering).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    Some(rest.split(' ').map(str::to_string).collect())
}

//! `triad-lab bench-pbx`: how long from a PBX crash to the PBX answering
//! again under triad's supervision, beside how long Kamailio alone takes
//! from its start to its first answer (issue 11's figure: under 0.5 s plus
//! the PBX's own start). A command that prints a table, not a test.
//!
//! Kamailio alone: started on a loopback port of this machine with the
//! reference payload (its database's WAL checkpointed first, untimed, as
//! `pbx.prepare` does under triad), probed with the supervisor's own SIP OPTIONS
//! probe every few milliseconds until it answers. Under triad: a fresh lab
//! per run (so every crash is the first in its failure window and gets the
//! first backoff), kill -9 of the active node's Kamailio main process at a
//! random instant, then `triad status` polled until the supervision reports
//! a new process that answered its probe.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, Payload};
use crate::layout::NODE_IDS;
use crate::{netns, spawn, triad, wait};

/// A step of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum PbxBenchError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{0}")]
    Step(String),
}

/// Median and p99 (nearest rank) of `v`, in ms.
fn median_p99(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort_unstable();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2 };
    let p99 = v[((0.99 * n as f64).ceil() as usize).clamp(1, n) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(median), ms(p99), ms(v[n - 1]))
}

/// Kamailio alone, `runs` times: from its spawn to the first answer.
fn kamailio_alone(runs: usize) -> Result<Vec<Duration>, PbxBenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PbxBenchError::Step(format!("runtime: {e}")))?;
    let dir = std::env::temp_dir().join(format!("triad-bench-pbx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| PbxBenchError::Step(format!("mkdir {}: {e}", dir.display())))?;
    // The payload the lab runs (SQLite location table and all), on a
    // loopback "VIP" of its own; port 5060 as in the payload's config.
    let db = Command::new("sh")
        .arg(triad::payload_dir().join("make-db.sh"))
        .arg(&dir)
        .arg("kamailio")
        .output()
        .map_err(|e| PbxBenchError::Step(format!("make-db.sh: {e}")))?;
    if !db.status.success() {
        return Err(PbxBenchError::Step(format!("make-db.sh: {}", String::from_utf8_lossy(&db.stderr))));
    }
    let cfg = triad::payload_dir().join("kamailio.cfg");
    let mut out = Vec::new();
    for run in 1..=runs {
        let addr: SocketAddr = ([127, 0, 0, 1], 5060).into();
        // What `pbx.prepare` does under triad, untimed here: the previous
        // run was killed (-9) and may have left its WAL to recover, which
        // Kamailio's processes racing to open the database do not survive.
        let db = dir.join("kamailio.db").display().to_string();
        let prepared = Command::new("setpriv")
            .args(["--reuid", "kamailio", "--regid", "kamailio", "--clear-groups", "sqlite3", &db])
            .arg("PRAGMA wal_checkpoint(TRUNCATE);")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| PbxBenchError::Step(format!("sqlite3: {e}")))?;
        if !prepared.success() {
            return Err(PbxBenchError::Step(format!("run {run}: sqlite3 checkpoint failed: {prepared}")));
        }
        let start = Instant::now();
        let child = Command::new("/usr/sbin/kamailio")
            .args(["-f", &cfg.display().to_string(), "-DD", "-E", "-Y", &dir.display().to_string()])
            .args(["-u", "kamailio", "-g", "kamailio"])
            .env("TRIAD_VIP", "127.0.0.2")
            .env("TRIAD_MOUNT_POINT", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| PbxBenchError::Step(format!("start kamailio: {e}")))?;
        let answered = loop {
            if rt.block_on(::triad::sip_probe::probe_udp(addr, Duration::from_millis(5))).is_ok() {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(5) {
                break None;
            }
        };
        let pgid = child.id() as i32;
        // SAFETY: signalling the group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let mut child = child;
        let _ = child.wait();
        let t = answered.ok_or_else(|| PbxBenchError::Step(format!("run {run}: Kamailio never answered in 5 s")))?;
        eprintln!("kamailio alone, run {run}/{runs}: first answer after {:.1} ms", t.as_secs_f64() * 1000.0);
        out.push(t);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// The main process (its own process group's leader) of the Kamailio on
/// node `id`.
fn kamailio_main(lab: &Lab, id: u8) -> Option<i32> {
    let ino = netns::net_ns_of(lab.node(id).ok()?.supervisor_pid).ok()?;
    netns::pids_in(ino).into_iter().find(|p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return false };
        let pgrp = rest.split(' ').nth(2).and_then(|v| v.parse::<i32>().ok());
        spawn::cmdline(*p).is_some_and(|c| c.contains("kamailio")) && pgrp == Some(*p) && !rest.starts_with('Z')
    })
}

/// Under triad, `runs` fresh labs: kill -9 of the active node's Kamailio
/// to the supervision's report of a new one answering.
fn under_triad(bin: &Path, runs: usize) -> Result<Vec<Duration>, PbxBenchError> {
    let mut out = Vec::new();
    for run in 1..=runs {
        let opts = triad::NodeOptions { pbx: true, ..triad::NodeOptions::default() };
        let payload = Payload::Triad {
            bin: bin.to_path_buf(),
            profile: crate::lab::Profile::Default,
            journal_mib: crate::layout::JOURNAL_MIB,
            opts,
        };
        let lab = Lab::up(payload)?;
        let leader = lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
        let state = |lab: &Lab| lab.status(leader).ok().and_then(|s| s.pbx).map(|p| p.state).unwrap_or_default();
        wait::until(Duration::from_secs(10), Duration::from_millis(10), || {
            let s = state(&lab);
            (s.starts_with("Running") && s.contains("run: 1")).then_some(())
        })
        .ok_or_else(|| PbxBenchError::Step(format!("run {run}: the PBX never ran: {}", state(&lab))))?;
        std::thread::sleep(Duration::from_millis(200 + (u64::from(std::process::id()) * 7919 * run as u64) % 800));
        let main = kamailio_main(&lab, leader)
            .ok_or_else(|| PbxBenchError::Step(format!("run {run}: no Kamailio main process on n{leader}")))?;
        let killed = Instant::now();
        spawn::signal(main, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| PbxBenchError::Step(format!("run {run}: kill: {e}")))?;
        let back = wait::until(Duration::from_secs(10), Duration::from_millis(2), || {
            let s = state(&lab);
            (s.starts_with("Running") && s.contains("run: 2")).then(|| killed.elapsed())
        })
        .ok_or_else(|| PbxBenchError::Step(format!("run {run}: the PBX did not answer again: {}", state(&lab))))?;
        eprintln!("under triad, run {run}/{runs}: answering again {:.1} ms after kill -9", back.as_secs_f64() * 1000.0);
        out.push(back);
        drop(lab);
        Lab::down()?;
    }
    Ok(out)
}

/// Runs both series and prints the table.
pub fn run(bin: &Path, runs: usize) -> Result<(), PbxBenchError> {
    let alone = kamailio_alone(runs)?;
    let supervised = under_triad(bin, runs)?;
    println!("{:<44} {:>5} {:>10} {:>10} {:>10}", "series", "runs", "median_ms", "p99_ms", "max_ms");
    for (name, v) in
        [("kamailio alone: start to first answer", alone), ("triad: kill -9 to answering again", supervised)]
    {
        let n = v.len();
        let (m, p, x) = median_p99(v);
        println!("{name:<44} {n:>5} {m:>10.1} {p:>10.1} {x:>10.1}");
    }
    println!("(under triad: the lab's [pbx] timings: first backoff 100 ms, probes every 200 ms while running)");
    Ok(())
}

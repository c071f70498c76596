//! The PBX's process as `os::pbx_process` starts it, checked from outside
//! through /proc: unprivileged, no new privileges, nothing blocked or
//! ignored that the supervisor blocked or ignored, its own process group
//! (a stop reaches its workers), its own cgroup v2 group. Needs root (to
//! change user); fails loudly without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};
use triad::config::PbxConfig;
use triad::os::pbx_process::{cgroup_v2_at, PbxEnv, PbxProcess};
use triad_host::pbx::PbxTiming;

fn require_root() {
    assert!(
        Uid::effective().is_root(),
        "tests/pbx_process.rs needs root (it starts the PBX as another user); run it as root, as CI does"
    );
}

/// A world-writable scratch dir the child (as nobody) reports into.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-pbx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn config(dir: &Path, script: &str) -> PbxConfig {
    PbxConfig {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        user: "nobody".into(),
        uid: Uid::from_raw(65534),
        gid: Gid::from_raw(65534),
        env: BTreeMap::from([("OUT".to_string(), dir.display().to_string())]),
        working_dir: dir.to_path_buf(),
        mount_point: dir.to_path_buf(),
        public_address: None,
        stop_signal: Signal::SIGTERM,
        sip_port: 5060,
        memory_max: None,
        cpu_max_percent: None,
        timing: PbxTiming::default(),
        check: None,
        readiness_interval: Duration::from_secs(30),
        probe_tcp: false,
    }
}

fn wait_for(path: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() && s.ends_with('\n') {
                return s;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
}

#[test]
fn the_pbx_runs_unprivileged_in_its_own_group_and_a_stop_reaches_its_workers() {
    require_root();
    let dir = scratch("spawn");
    // The supervisor blocks and ignores signals of its own; none of that
    // may reach the PBX.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGUSR2);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).unwrap();
    // SAFETY: ignoring a signal in this test process.
    unsafe { nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn) }.unwrap();

    let script = "cat /proc/self/status > \"$OUT/status.tmp\"; mv \"$OUT/status.tmp\" \"$OUT/status\"; \
                  echo \"$TRIAD_VIP $TRIAD_MOUNT_POINT $(pwd)\" > \"$OUT/env\"; \
                  sleep 100 & echo $! > \"$OUT/worker\"; wait";
    let cfg = config(&dir, script);
    let mut pbx = PbxProcess::spawn(&cfg, &PbxEnv { vip: "10.77.0.100".into() }, None).unwrap();
    let status = wait_for(&dir.join("status"));
    assert_eq!(status_field(&status, "Uid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
    assert_eq!(status_field(&status, "Gid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
    assert_eq!(status_field(&status, "Groups"), "", "supplementary groups dropped");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "SigBlk"), "0000000000000000", "a blocked signal leaked");
    assert_eq!(status_field(&status, "SigIgn"), "0000000000000000", "an ignored signal leaked");
    let env = wait_for(&dir.join("env"));
    assert_eq!(env.trim(), format!("10.77.0.100 {d} {d}", d = dir.display()));
    let worker: i32 = wait_for(&dir.join("worker")).trim().parse().unwrap();
    let pid = pbx.pid() as i32;
    let pgid_of = |p: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(2).unwrap().parse::<i32>().unwrap()
    };
    assert_eq!(pgid_of(pid), pid, "the PBX leads its own process group");
    assert_eq!(pgid_of(worker), pid, "its worker is in that group");
    assert_ne!(pgid_of(pid), nix::unistd::getpgrp().as_raw(), "not the supervisor's group");

    pbx.signal_group(cfg.stop_signal).unwrap();
    let exit = pbx.take_child().unwrap().wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&exit), Some(libc::SIGTERM), "{exit:?}");
    let start = Instant::now();
    while Path::new(&format!("/proc/{worker}")).exists()
        && !std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(start.elapsed() < Duration::from_secs(5), "the worker {worker} outlived the stop of its group");
        std::thread::sleep(Duration::from_millis(10));
    }
    pbx.signal_group(Signal::SIGKILL).expect("a group that is gone is not an error");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_pbx_gets_a_cgroup_v2_group_of_its_own() {
    require_root();
    // This machine mounts cgroup v2 at /sys/fs/cgroup (the appliance) or,
    // in a hybrid layout, at /sys/fs/cgroup/unified (without controllers:
    // limits cannot be set there, membership can).
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|r| cgroup_v2_at(r))
        .expect("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    let dir = scratch("cgroup");
    let cfg = config(&dir, "cat /proc/self/cgroup > \"$OUT/cg.tmp\"; mv \"$OUT/cg.tmp\" \"$OUT/cg\"; sleep 100");
    let mut pbx = PbxProcess::spawn(&cfg, &PbxEnv { vip: "10.77.0.100".into() }, Some(root)).unwrap();
    let cg = wait_for(&dir.join("cg"));
    assert!(cg.lines().any(|l| l == "0::/triad-pbx"), "not in the group:\n{cg}");
    let procs = std::fs::read_to_string(root.join("triad-pbx/cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pbx.pid().to_string()), "{procs}");
    pbx.signal_group(Signal::SIGKILL).unwrap();
    pbx.take_child().unwrap().wait().unwrap();
    // Once its last process is gone the group can go (the supervisor
    // keeps it between runs; the test leaves nothing behind).
    let start = Instant::now();
    while std::fs::remove_dir(root.join("triad-pbx")).is_err() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_command_that_cannot_run_is_an_error_not_a_panic() {
    require_root();
    let dir = scratch("missing");
    let mut cfg = config(&dir, "");
    cfg.command = dir.join("no-such-pbx");
    let err = PbxProcess::spawn(&cfg, &PbxEnv { vip: "10.77.0.100".into() }, None).unwrap_err();
    assert!(err.to_string().contains("no-such-pbx"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

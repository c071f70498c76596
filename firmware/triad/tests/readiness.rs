//! The failover readiness check's executor against real processes (issue
//! 11, item 7). Root: the config check runs as the PBX's user. In its own
//! test binary: it starts the process-wide reaper, which would reap other
//! tests' children before they wait for them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use triad::config::PbxConfig;
use triad::os::pbx_process::PbxEnv;
use triad_host::pbx::PbxTiming;

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs the config check as user nobody: run it as root");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-readiness-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> PbxConfig {
    PbxConfig {
        command: "/bin/sh".into(),
        args: vec![],
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

/// The failover readiness check runs the PBX's config check as the PBX
/// would run (its user, its environment), and a failing one is reported
/// with its exit status and the end of its output.
#[test]
fn the_readiness_check_runs_the_config_check_as_the_pbx_and_quotes_a_failure() {
    require_root();
    let dir = scratch("readiness");
    let reaper = triad::os::reaper::Reaper::start().unwrap();
    let env = PbxEnv { vip: "10.77.0.100".into() };
    let mut cfg = config(&dir);
    let as_pbx =
        format!("test \"$(id -u)\" = 65534 && test \"$TRIAD_VIP\" = 10.77.0.100 && test \"$OUT\" = {}", dir.display());
    cfg.check = Some(vec!["/bin/sh".into(), "-c".into(), as_pbx]);
    assert_eq!(triad::readiness::check(&cfg, &env, &reaper, true), Vec::<String>::new());
    cfg.check =
        Some(vec!["/bin/sh".into(), "-c".into(), "echo line one >&2; echo parse error at 3 >&2; exit 3".into()]);
    let problems = triad::readiness::check(&cfg, &env, &reaper, false);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("failed (exited with status 3): line one; parse error at 3"), "{problems:?}");
    assert_eq!(problems[1], "the hardware watchdog's last pet failed");
    cfg.command = "/nonexistent/pbx".into();
    cfg.check = None;
    let problems = triad::readiness::check(&cfg, &env, &reaper, true);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("the PBX program /nonexistent/pbx: "), "{problems:?}");
}

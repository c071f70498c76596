//! The failover readiness check's executor against real processes (issue
//! 11, item 7). Root: the config check runs as the PBX's user. In its own
//! test binary: it starts the process-wide reaper, which would reap other
//! tests' children before they wait for them.
#![allow(clippy::unwrap_used)]

use triad::os::pbx_process::PbxEnv;

mod common;
use common::{require_root, scratch};

fn config(dir: &std::path::Path) -> triad::config::PbxConfig {
    common::config(dir, "true")
}

/// The failover readiness check runs the PBX's config check as the PBX
/// would run (its user, its environment), and a failing one is reported
/// with its exit status and the end of its output.
#[test]
fn the_readiness_check_runs_the_config_check_as_the_pbx_and_quotes_a_failure() {
    require_root("tests/readiness.rs");
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

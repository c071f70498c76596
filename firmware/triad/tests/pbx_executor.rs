//! The PBX's executor against real processes (root: the PBX runs as user
//! nobody): `pbx.prepare` runs before every start and a failing one is a
//! failed start; a kill that comes while the start is still under way is
//! carried out as soon as the process exists, and its exit is reported
//! after its start. In its own test binary: it starts the process-wide
//! reaper.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use triad::config::PbxConfig;
use triad::os::pbx_process::PbxEnv;
use triad::pbx::PbxExecutor;
use triad_host::pbx::{PbxCommand, PbxEvent};

mod common;
use common::require_root;

/// A PBX that logs its start and sleeps, prepared by `prepare`.
fn config(dir: &std::path::Path, prepare: &str) -> PbxConfig {
    PbxConfig {
        prepare: Some(vec!["/bin/sh".into(), "-c".into(), prepare.into()]),
        ..common::config(dir, "echo started >> \"$OUT/log\"; exec sleep 30")
    }
}

async fn next(rx: &mut UnboundedReceiver<PbxEvent>) -> PbxEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn prepare_runs_before_every_start_and_a_kill_during_the_start_is_carried_out() {
    require_root("tests/pbx_executor.rs");
    let dir = common::scratch("executor");
    let reaper = triad::os::reaper::Reaper::start().unwrap();
    let env = PbxEnv { vip: "10.77.0.100".into() };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let prepare = "echo prepared >> \"$OUT/log\"";
    let mut pbx = PbxExecutor::new(config(&dir, prepare), env.clone(), tx.clone(), reaper.clone());
    pbx.carry(PbxCommand::Spawn { run: 1 });
    assert_eq!(next(&mut rx).await, PbxEvent::Spawned { run: 1 });
    let log = || std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    for _ in 0..500 {
        if log().contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log(), "prepared\nstarted\n", "prepared, then started");
    pbx.carry(PbxCommand::Kill { run: 1 });
    assert_eq!(next(&mut rx).await, PbxEvent::Exited { run: 1 });
    // Killed while its start (here a slow prepare) is still under way.
    let mut slow = PbxExecutor::new(
        config(&dir, "sleep 0.3; echo prepared >> \"$OUT/log\""),
        env.clone(),
        tx.clone(),
        reaper.clone(),
    );
    slow.carry(PbxCommand::Spawn { run: 2 });
    slow.carry(PbxCommand::Kill { run: 2 });
    assert_eq!(next(&mut rx).await, PbxEvent::Spawned { run: 2 });
    assert_eq!(next(&mut rx).await, PbxEvent::Exited { run: 2 }, "the kill waited for the process and reached it");
    let after_two = log();
    assert!(after_two.starts_with("prepared\nstarted\nprepared\n"), "prepare before every start: {after_two}");
    // A failing prepare is a failed start: nothing runs.
    let mut failing = PbxExecutor::new(config(&dir, "exit 3"), env, tx, reaper);
    failing.carry(PbxCommand::Spawn { run: 3 });
    assert_eq!(next(&mut rx).await, PbxEvent::SpawnFailed { run: 3 });
    assert_eq!(log(), after_two, "nothing started after the failed prepare");
    std::fs::remove_dir_all(&dir).unwrap();
}

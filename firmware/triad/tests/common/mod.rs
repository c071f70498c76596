//! Helpers shared by the tests that run a PBX-like process as user nobody
//! (`pbx_process.rs`, `pbx_executor.rs`, `readiness.rs`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use triad::config::PbxConfig;
use triad_host::pbx::PbxTiming;

/// Fails loudly without root: these tests start processes as another user.
pub fn require_root(what: &str) {
    assert!(
        Uid::effective().is_root(),
        "{what} needs root (it starts processes as user nobody); run it as root, as CI does"
    );
}

/// A fresh world-writable scratch dir the child (as nobody) reports into.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-pbx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// A PBX that is `sh -c script` as nobody, `OUT` naming `dir`, its mount
/// point and working directory `dir`, nothing optional set.
pub fn config(dir: &Path, script: &str) -> PbxConfig {
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
        probe_vip: false,
        prepare: None,
        probe_user: None,
    }
}

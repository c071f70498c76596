//! Hardware tests (issue 12, item 3; docs/image.md): three appliances
//! booted from the built kernel and initramfs in QEMU under software
//! emulation (`-accel tcg`), each with its own state disk, an emulated
//! i6300esb watchdog set to reset, and its serial console captured to a
//! file, on one L2 segment with a client side.
//!
//! ```text
//!   netns triad-hw:  br0 (10.79.0.200/24: the client) ── tap1 ── VM 1 (eth0 10.79.0.11)
//!                                                     ├── tap2 ── VM 2 (eth0 10.79.0.12)
//!                                                     └── tap3 ── VM 3 (eth0 10.79.0.13)
//!                    VIP 10.79.0.100, held by the active VM
//! ```
//!
//! Owns: the image (built if missing: [`image`]), QEMU and OVMF (private
//! unpacked copies: [`qemu`]), the segment ([`net`]), each VM's state disk
//! ([`state`]) or its copy of the appliance disk ([`disk`]), disks whose
//! power can be cut (host-side nbdkit with a write cache: [`powercut`]), the VMs
//! themselves ([`vm`]) and what the cluster tests share ([`cluster`]). The
//! tests in `tests/` drive them.
//!
//! Must not: touch the machine's own network (everything lives in the
//! `triad-hw` namespace), or leave VMs behind (each [`vm::Vm`] kills its
//! QEMU on drop). Needs root: the tests check and fail loudly.

pub mod agent;
pub mod cluster;
pub mod disk;
pub mod image;
pub mod net;
pub mod powercut;
pub mod qemu;
pub mod sip;
pub mod state;
pub mod vm;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What went wrong in the hardware-test harness.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// A command could not start or failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its status and output, or the OS error.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something the harness needs is missing.
    #[error("{0}")]
    Missing(String),
}

/// Runs a program to completion; its stdout, or an error with its stderr.
pub fn run<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Result<String, HwError> {
    let mut c = Command::new(program.as_ref());
    c.args(args);
    output(&mut c)
}

/// Runs a prepared command to completion; its stdout, or an error.
pub fn output(c: &mut Command) -> Result<String, HwError> {
    let shown = format!("{c:?}");
    let out = c.output().map_err(|e| HwError::Command { command: shown.clone(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HwError::Command {
            command: shown,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Polls with a deadline: the lab's one helper.
pub use triad_lab::wait::until as wait_until;

/// The timing profile for emulated hardware (docs/image.md): three VMs
/// under TCG on two shared cores see their timers fire hundreds of
/// milliseconds late, so the defaults (heartbeat 50 ms, election 400 to
/// 700 ms) would flap. Everything is about five times slower; the rules
/// of `Timing::check` hold (lease 3000 − 2 % − 300 = 2640 ms, at least two
/// heartbeats; the VIP renewed at most every half lifetime).
pub const EMULATED_TIMING: &str = "\
[timing]
heartbeat_interval_ms = 250
peer_timeout_ms = 1500
election_timeout_min_ms = 3000
election_timeout_max_ms = 4500
lease_guard_ms = 300
vip_lifetime_s = 3
vip_renew_interval_ms = 1000
garp_burst_interval_ms = 200
";

/// Fails loudly when not root: a hardware test that silently skips is one
/// that never runs in CI.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the hardware tests need root (a network namespace with taps for the VMs): run \
         `cargo test -p triad-hwtests` as root"
    );
}

/// Where the tests build the image's supervisor (relative to the
/// workspace root; `image.rs` says why not the shared target directory).
pub const IMAGE_TARGET_DIR: &str = "target/image";

/// Where the debug image's supervisor is built: with the `test-agent`
/// feature, which must never reach [`IMAGE_TARGET_DIR`]'s production build.
pub const DEBUG_IMAGE_TARGET_DIR: &str = "target/image-debug";

/// The supervisor binary the image carries (and the tests use for
/// `triad certs` and `triad check-config`): `TRIAD_IMAGE_TRIAD`, or the
/// release build in [`IMAGE_TARGET_DIR`].
pub fn supervisor_binary() -> PathBuf {
    std::env::var_os("TRIAD_IMAGE_TRIAD").map_or_else(
        || repo_root().join(IMAGE_TARGET_DIR).join("x86_64-unknown-linux-gnu/release/triad"),
        PathBuf::from,
    )
}

/// The debug image's supervisor: the release build with the test agent
/// in [`DEBUG_IMAGE_TARGET_DIR`].
pub fn debug_supervisor_binary() -> PathBuf {
    repo_root().join(DEBUG_IMAGE_TARGET_DIR).join("x86_64-unknown-linux-gnu/release/triad")
}

/// A fresh directory for one test's files (disks, serial logs, sockets,
/// QEMU pid files), under `/var/tmp/triad-hwtests/`. QEMUs and nbdkits
/// (`powercut`) a killed earlier run left behind (their pid files still
/// there, in the directory or one below it, their command line still
/// theirs) are ended first: they would keep burning the CPU the new VMs
/// need, or hold the disk images.
pub fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new("/var/tmp/triad-hwtests").join(test);
    let mut pid_files = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            pid_files.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        } else {
            pid_files.push(path);
        }
    }
    let ours = dir.display().to_string();
    for path in pid_files.iter().filter(|p| p.extension().is_some_and(|e| e == "pid")) {
        if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let qemu = cmdline.contains("qemu-system") && cmdline.contains("triad-hw-");
            let nbdkit = cmdline.contains("nbdkit") && cmdline.contains(&ours);
            if qemu || nbdkit {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An nbdkit a killed run left one directory down (as `powercut` puts
    /// the second boot's disks) is ended by the next run's `work_dir`.
    #[test]
    fn work_dir_ends_a_left_over_nbdkit() {
        let test = format!("work-dir-self-test-{}", std::process::id());
        let dir = work_dir(&test);
        let below = dir.join("boot2");
        std::fs::create_dir_all(&below).expect("mkdir");
        let image = below.join("x.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(1 << 20)).expect("image");
        let pid_file = below.join("x.nbdkit.pid");
        // Without -f: nbdkit forks away from us, as an orphan would be.
        let started = Command::new("nbdkit")
            .arg("-U")
            .arg(below.join("x.sock"))
            .arg("-P")
            .arg(&pid_file)
            .arg("file")
            .arg(format!("file={}", image.display()))
            .status()
            .expect("nbdkit");
        assert!(started.success(), "nbdkit did not start");
        let pid: i32 = std::fs::read_to_string(&pid_file).expect("pid file").trim().parse().expect("pid");
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        assert!(alive(), "nbdkit {pid} not running");
        let dir = work_dir(&test);
        let gone = wait_until(std::time::Duration::from_secs(5), std::time::Duration::from_millis(20), || {
            (!alive()).then_some(())
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(gone.is_some(), "work_dir left nbdkit {pid} running");
    }
}

//! Bad input must not brick the box (issue 12): an appliance whose state
//! partition carries a config the supervisor refuses reports the problem
//! on its console, stays up (PID 1 never exits, so the kernel does not
//! panic), never raises the VIP, and tries again.
//!
//! Needs root and QEMU like the smoke test (`tests/smoke.rs`); one VM.
//!
//! ```text
//! cargo test -p triad-hwtests --test bad_config -- --nocapture
//! ```

use std::time::{Duration, Instant};

use triad_hwtests::cluster::strip_ansi;
use triad_hwtests::net::{node_ip, Segment, VIP};
use triad_hwtests::qemu::Qemu;
use triad_hwtests::vm::Vm;
use triad_hwtests::{image, state, wait_until};

const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// The first stage retries every 30 s.
const RETRY_DEADLINE: Duration = Duration::from_secs(60);
const REFUSAL: &str = "cannot start the supervisor";

/// Prints the serial console (this file) when the test fails.
struct Printed(std::path::PathBuf);

impl Drop for Printed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read(&self.0).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            eprintln!("===== serial console ({}) =====\n{text}", self.0.display());
        }
    }
}

#[test]
fn a_refused_config_is_reported_and_the_box_stays_up_without_the_vip() {
    triad_hwtests::require_root();
    let qemu = Qemu::locate().unwrap_or_else(|e| panic!("{e}"));
    let img = image::ensure("prod").unwrap_or_else(|e| panic!("image: {e}"));
    let dir = triad_hwtests::work_dir("bad_config");
    let ids = [1, 2, 3];
    // A watchdog timeout below the schema's 2..=3600: refused by
    // validation, naming the field.
    let bad = state::config_text(1, &ids).replace("timeout_s = 30", "timeout_s = 1");
    assert_ne!(bad, state::config_text(1, &ids), "the config text changed");
    let disk = state::make_disk_with(&triad_hwtests::supervisor_binary(), &dir, 1, &bad, false)
        .unwrap_or_else(|e| panic!("state disk: {e}"));
    let seg = Segment::up(&[1]).unwrap_or_else(|e| panic!("segment: {e}"));
    let mut vm = Vm::start(&qemu, &img, &dir, 1, &disk).unwrap_or_else(|e| panic!("VM: {e}"));
    let _printed = Printed(vm.serial.clone());
    let t0 = Instant::now();

    let refusals = |vm: &Vm| strip_ansi(&vm.serial_text()).matches(REFUSAL).count();
    wait_until(BOOT_DEADLINE, Duration::from_millis(200), || (refusals(&vm) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("no {REFUSAL:?} on the console within {BOOT_DEADLINE:?}"));
    let text = strip_ansi(&vm.serial_text());
    let line = text.lines().find(|l| l.contains(REFUSAL)).unwrap_or_default();
    assert!(line.contains("watchdog.timeout_s"), "the report names the field: {line}");
    eprintln!("bad_config: refused {:.1} s after QEMU start: {line}", t0.elapsed().as_secs_f64());

    // Nothing answers for the VIP or for the node's own address: the
    // supervisor never started, so it configured nothing.
    for _ in 0..3 {
        assert!(seg.arp_answerers(VIP).is_empty(), "the VIP answers ARP with a refused config");
        assert!(seg.arp_answerers(&node_ip(1)).is_empty(), "the node's address is up with a refused config");
    }
    // Still up, and trying again.
    let again = wait_until(RETRY_DEADLINE, Duration::from_millis(500), || (refusals(&vm) >= 2).then_some(()));
    assert!(again.is_some(), "no second attempt within {RETRY_DEADLINE:?}");
    assert!(vm.running(), "QEMU exited");
    let text = strip_ansi(&vm.serial_text());
    assert!(!text.contains("Kernel panic"), "the kernel panicked");
    assert!(!text.contains("supervisor running"), "the supervisor started with a refused config");
    assert!(seg.arp_answerers(VIP).is_empty(), "the VIP answers ARP with a refused config");
    eprintln!("bad_config: retried and still up {:.1} s after QEMU start", t0.elapsed().as_secs_f64());
}

//! The hung supervisor (issue 12, item 3): one VM booted from the debug
//! image arms its emulated i6300esb (`-action watchdog=reset`); the test
//! agent's `hang` blocks the supervisor's event loop for good, so nothing
//! pets the watchdog; the VM must be reset by it, boot again by itself,
//! and its supervisor must report that the last reboot was the
//! watchdog's (`watchdog.last_reboot_was_watchdog` in its status, read
//! from the driver's boot status), with the hung boot's last log lines
//! kept on the state partition (`previous.log`, `firmware/triad/src/logkeep.rs`).
//!
//! One VM is enough: the watchdog is armed at the supervisor's start,
//! whether or not its peers answer. Root required; run it alone:
//!
//! ```text
//! cargo test -p triad-hwtests --test watchdog -- --nocapture
//! ```

use std::time::{Duration, Instant};

use triad_hwtests::agent::{ask, status as status_of};
use triad_hwtests::cluster::{Cluster, IDS};
use triad_hwtests::net::Segment;
use triad_hwtests::qemu::Qemu;
use triad_hwtests::vm::Vm;
use triad_hwtests::{image, state, wait_until};

const ID: u8 = 1;
/// QEMU start to the agent answering.
const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// The hang to the second boot's agent answering: the watchdog's 30 s
/// (the i6300esb's two stages may take twice that), then a boot.
const RESET_DEADLINE: Duration = Duration::from_secs(240);
/// What the kernel prints once per boot.
const BOOT_LINE: &str = "Run /init as init process";

#[test]
fn a_hung_supervisor_is_reset_by_the_watchdog_and_reports_it_after_booting_again() {
    triad_hwtests::require_root();
    let qemu = Qemu::locate().unwrap_or_else(|e| panic!("{e}"));
    let img = image::ensure("debug").unwrap_or_else(|e| panic!("image: {e}"));
    let dir = triad_hwtests::work_dir("watchdog");
    let triad = triad_hwtests::debug_supervisor_binary();
    let disk = state::make_disk(&triad, &dir, ID, &IDS).unwrap_or_else(|e| panic!("state disk: {e}"));
    let _seg = Segment::up(&[ID]).unwrap_or_else(|e| panic!("segment: {e}"));
    let vm = Vm::start(&qemu, &img, &dir, ID, &disk).unwrap_or_else(|e| panic!("VM: {e}"));
    // Prints the serial console if the test fails.
    let mut cluster = Cluster { vms: vec![vm] };
    let status = || status_of(ID);

    let first = wait_until(BOOT_DEADLINE, Duration::from_secs(1), status)
        .unwrap_or_else(|| panic!("the VM's agent did not answer within {BOOT_DEADLINE:?}"));
    assert_eq!(first["watchdog"]["timeout_s"], 30, "watchdog not armed as configured: {first}");
    assert_eq!(first["watchdog"]["last_reboot_was_watchdog"], false, "a cold boot reported as the watchdog's: {first}");

    // The agent's connection never gets an answer (the loop is blocked):
    // its read times out after 10 s, so the clock starts before it.
    let hung = Instant::now();
    let _ = ask(ID, "hang");
    eprintln!("watchdog: supervisor hung");
    let boots = |vm: &Vm| vm.serial_text().matches(BOOT_LINE).count();
    let again =
        wait_until(RESET_DEADLINE, Duration::from_secs(1), || (boots(&cluster.vms[0]) >= 2).then(|| hung.elapsed()))
            .unwrap_or_else(|| panic!("the VM did not boot again within {RESET_DEADLINE:?} of the hang"));
    eprintln!("watchdog: the VM booted again {:.1} s after the hang", again.as_secs_f64());
    let second = wait_until(RESET_DEADLINE.saturating_sub(hung.elapsed()), Duration::from_secs(1), status)
        .unwrap_or_else(|| panic!("the VM's agent did not answer after the reset"));
    assert_eq!(
        second["watchdog"]["last_reboot_was_watchdog"], true,
        "after the watchdog's reset the supervisor does not report it: {second}"
    );
    eprintln!("watchdog: the supervisor reports last_reboot_was_watchdog = true");
    // The hung boot's last lines, kept on the state partition.
    let previous = ask(ID, "read /var/lib/triad/log/previous.log").unwrap_or_else(|e| panic!("{e}"));
    let last = previous.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(
        previous.contains("hanging the event loop"),
        "the hung boot's log on the state partition does not say why it stopped; its last line: {last}"
    );
    eprintln!("watchdog: the hung boot's kept log ends: {last}");
    assert!(cluster.vms[0].running(), "QEMU exited instead of resetting the VM");
}

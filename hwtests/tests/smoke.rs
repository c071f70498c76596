//! The hardware smoke test (issue 12, CI): boot three appliances from the
//! prod image under QEMU's software emulation, see the cluster form (one
//! VM answers ARP and ping for the VIP), cut the power of that VM (the
//! monitor's `quit`), and see another VM answer for the VIP within a
//! deadline.
//!
//! Needs root (a network namespace with taps) and QEMU unpacked by
//! `hwtests/setup-qemu.sh`; builds the image if missing
//! (`image/build.sh`, docs/image.md). Run it alone:
//!
//! ```text
//! cargo test -p triad-hwtests --test smoke -- --nocapture
//! ```
//!
//! Every wait is a poll with a deadline; a failure prints every VM's
//! serial console.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use triad_hwtests::cluster::{sole_answerer, Cluster, IDS};
use triad_hwtests::image;
use triad_hwtests::net::{Segment, VIP};
use triad_hwtests::qemu::Qemu;
use triad_hwtests::state;
use triad_hwtests::vm::Vm;
use triad_hwtests::wait_until;

/// QEMU start to the VIP answering: three TCG guests booting at once on
/// two shared cores, then an election with the emulated profile.
const FORM_DEADLINE: Duration = Duration::from_secs(180);
/// Power cut of the active VM to the VIP answering from another: the
/// peers notice after peer_timeout (1.5 s) and elect within 3 to 4.5 s.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn three_appliances_elect_and_fail_over_after_a_power_cut() {
    triad_hwtests::require_root();
    let qemu = Qemu::locate().unwrap_or_else(|e| panic!("{e}"));
    let img = image::ensure("prod").unwrap_or_else(|e| panic!("image: {e}"));
    let dir = triad_hwtests::work_dir("smoke");
    let triad = triad_hwtests::supervisor_binary();
    let disks: Vec<PathBuf> = IDS
        .iter()
        .map(|id| state::make_disk(&triad, &dir, *id, &IDS).unwrap_or_else(|e| panic!("state disk {id}: {e}")))
        .collect();
    let seg = Segment::up(&IDS).unwrap_or_else(|e| panic!("segment: {e}"));

    let t0 = Instant::now();
    let mut cluster = Cluster { vms: Vec::new() };
    for (id, disk) in IDS.iter().zip(&disks) {
        cluster.vms.push(Vm::start(&qemu, &img, &dir, *id, disk).unwrap_or_else(|e| panic!("VM {id}: {e}")));
    }

    // Each supervisor reaches its loop (the first boot stage found the
    // state partition and the config).
    let booted = wait_until(FORM_DEADLINE, Duration::from_millis(200), || {
        cluster.vms.iter().all(|vm| vm.serial_text().contains("first boot stage done")).then(|| t0.elapsed())
    });
    let booted =
        booted.unwrap_or_else(|| panic!("not every VM finished its first boot stage within {FORM_DEADLINE:?}"));
    eprintln!("smoke: all three first boot stages done {:.1} s after QEMU start", secs(booted));

    let leader = wait_until(FORM_DEADLINE.saturating_sub(t0.elapsed()), Duration::from_millis(100), || {
        sole_answerer(&seg, None)
    })
    .unwrap_or_else(|| panic!("no single VM answered ARP for the VIP within {FORM_DEADLINE:?} of QEMU start"));
    let formed = t0.elapsed();
    eprintln!("smoke: VM {leader} answers ARP for the VIP {:.1} s after QEMU start", secs(formed));
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || seg.pings(VIP).then_some(())).is_some(),
        "the VIP answers ARP but not ping"
    );
    for vm in cluster.vms.iter_mut() {
        assert!(vm.running(), "VM {} stopped", vm.id);
    }

    // The power cut.
    let cut = Instant::now();
    let active = cluster.vms.iter_mut().find(|vm| vm.id == leader).expect("the leader is one of the VMs");
    active.power_off().unwrap_or_else(|e| panic!("power off: {e}"));
    eprintln!("smoke: VM {leader} powered off (monitor quit)");
    let next = wait_until(FAILOVER_DEADLINE, Duration::from_millis(100), || sole_answerer(&seg, Some(leader)))
        .unwrap_or_else(|| {
            panic!("no other VM answered ARP for the VIP within {FAILOVER_DEADLINE:?} of the power cut")
        });
    let took = cut.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || seg.pings(VIP).then_some(())).is_some(),
        "the VIP answers ARP from VM {next} but not ping"
    );
    eprintln!(
        "smoke: VM {next} answers for the VIP {:.1} s after the power cut of VM {leader} \
         (boot stages {:.1} s, VIP {:.1} s after QEMU start)",
        secs(took),
        secs(booted),
        secs(formed)
    );
    for vm in cluster.vms.iter_mut().filter(|vm| vm.id != leader) {
        assert!(vm.running(), "VM {} stopped", vm.id);
    }
}

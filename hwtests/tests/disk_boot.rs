//! The appliance disk booted for real (issue 12, items 1 and 3): three VMs
//! each boot their own copy of `image/out/prod/disk.img` through UEFI
//! firmware (OVMF: the ESP's unified kernel image, whose small initramfs
//! mounts root A read-only and switches to it), find their state
//! partition (written per node by `triad_hwtests::disk`) and their data
//! partition, form the cluster, and survive a power cut of the active VM.
//!
//! Needs root (a network namespace with taps), QEMU and OVMF unpacked by
//! `hwtests/setup-qemu.sh`; builds the image if missing. Run it alone:
//!
//! ```text
//! cargo test -p triad-hwtests --test disk_boot -- --nocapture
//! ```
//!
//! What it checks from the host side: the consoles say the running root is
//! erofs mounted read-only (the supervisor reads its root mount back from
//! /proc/self/mountinfo after the switch) and that the data partition is
//! mounted; exactly one VM answers ARP for the VIP; after `quit` on the
//! active VM's monitor another one does. Every wait is a poll with a
//! deadline; a failure prints every VM's serial console.

use std::time::{Duration, Instant};

use triad_hwtests::cluster::{sole_answerer, strip_ansi, Cluster, IDS};
use triad_hwtests::net::{Segment, VIP};
use triad_hwtests::qemu::{Ovmf, Qemu};
use triad_hwtests::vm::Vm;
use triad_hwtests::{disk, image, state, wait_until};

/// QEMU start to every first stage done: OVMF under TCG adds its own
/// start (tens of seconds with three VMs on two cores) to the smoke's.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// First stages done to the VIP answering.
const FORM_DEADLINE: Duration = Duration::from_secs(120);
/// As the smoke's.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);

/// The line of `text` holding every one of `words`, if any.
fn line_with<'a>(text: &'a str, words: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| words.iter().all(|w| l.contains(w)))
}

#[test]
fn three_appliances_boot_their_disks_through_uefi_and_fail_over() {
    triad_hwtests::require_root();
    let qemu = Qemu::locate().unwrap_or_else(|e| panic!("{e}"));
    let ovmf = Ovmf::locate().unwrap_or_else(|e| panic!("{e}"));
    let img = image::ensure("prod").unwrap_or_else(|e| panic!("image: {e}"));
    let dir = triad_hwtests::work_dir("disk_boot");
    let triad = triad_hwtests::supervisor_binary();
    let disks = disk::make_node_disks(&triad, &img.disk, &dir, &IDS, |id| state::config_text(id, &IDS), true)
        .unwrap_or_else(|e| panic!("the VMs' disks: {e}"));
    let seg = Segment::up(&IDS).unwrap_or_else(|e| panic!("segment: {e}"));

    let t0 = Instant::now();
    let mut cluster = Cluster::default();
    for (id, disk) in IDS.iter().zip(&disks) {
        cluster.vms.push(Vm::start_uefi(&qemu, &ovmf, &dir, *id, disk).unwrap_or_else(|e| panic!("VM {id}: {e}")));
    }

    let booted = wait_until(BOOT_DEADLINE, Duration::from_millis(500), || {
        cluster.vms.iter().all(|vm| vm.serial_text().contains("first boot stage done")).then(|| t0.elapsed())
    })
    .unwrap_or_else(|| panic!("not every VM finished its first boot stage within {BOOT_DEADLINE:?}"));
    eprintln!("disk_boot: all three first boot stages done {:.1} s after QEMU start", booted.as_secs_f64());

    for vm in &cluster.vms {
        let text = strip_ansi(&vm.serial_text());
        let switched = line_with(&text, &["root mounted read-only", "fstype=erofs"])
            .unwrap_or_else(|| panic!("VM {}: the initramfs never mounted root A as erofs", vm.id));
        let root = line_with(&text, &["root filesystem", "fstype=erofs", "read_only=true"])
            .unwrap_or_else(|| panic!("VM {}: the running root is not reported as erofs, read-only", vm.id));
        let data = line_with(&text, &["data partition mounted", "/var/lib/triad-data"])
            .unwrap_or_else(|| panic!("VM {}: the data partition is not reported mounted", vm.id));
        let state = line_with(&text, &["state partition mounted"])
            .unwrap_or_else(|| panic!("VM {}: the state partition is not reported mounted", vm.id));
        eprintln!(
            "disk_boot: VM {}:\n  {}\n  {}\n  {}\n  {}",
            vm.id,
            switched.trim(),
            root.trim(),
            state.trim(),
            data.trim()
        );
    }

    let leader = wait_until(FORM_DEADLINE, Duration::from_millis(100), || sole_answerer(&seg, None))
        .unwrap_or_else(|| panic!("no single VM answered ARP for the VIP within {FORM_DEADLINE:?} of the boot stages"));
    let formed = t0.elapsed();
    eprintln!("disk_boot: VM {leader} answers ARP for the VIP {:.1} s after QEMU start", formed.as_secs_f64());
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || seg.pings(VIP).then_some(())).is_some(),
        "the VIP answers ARP but not ping"
    );

    let cut = Instant::now();
    let active = cluster.vms.iter_mut().find(|vm| vm.id == leader).expect("the leader is one of the VMs");
    active.power_off().unwrap_or_else(|e| panic!("power off: {e}"));
    let next = wait_until(FAILOVER_DEADLINE, Duration::from_millis(100), || sole_answerer(&seg, Some(leader)))
        .unwrap_or_else(|| {
            panic!("no other VM answered ARP for the VIP within {FAILOVER_DEADLINE:?} of the power cut")
        });
    eprintln!(
        "disk_boot: VM {next} answers for the VIP {:.1} s after the power cut of VM {leader} \
         (boot stages {:.1} s, VIP {:.1} s after QEMU start)",
        cut.elapsed().as_secs_f64(),
        booted.as_secs_f64(),
        formed.as_secs_f64()
    );
    for vm in cluster.vms.iter_mut().filter(|vm| vm.id != leader) {
        assert!(vm.running(), "VM {} stopped", vm.id);
    }
}

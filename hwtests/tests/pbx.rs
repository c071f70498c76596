//! The PBX on the appliance (issue 12, item 2 and the first SIP test of
//! item 3): three VMs booted from the debug image's disk through UEFI
//! (read-only erofs root), each with the replicated volume on its data
//! partition, the kernel nbd driver attached to its own export
//! (`attach = "kernel"`), ext4 on /dev/nbd0 on the active VM only, and
//! the reference Kamailio payload on it. A phone's REGISTER through the
//! VIP (sipsak from the client side) is still there after the active VM's
//! power is cut: the VM that takes the VIP mounts the replicated volume,
//! starts its own Kamailio and routes an OPTIONS for the user to the
//! registered contact; a file written and fsynced through the mounted
//! filesystem before the cut reads back on the new active VM; SIPp calls
//! up through the VIP at the cut end with a 200 to their BYE; the client
//! side never sees two VMs answer for the VIP.
//!
//! The debug image's test agent (`firmware/triad/src/test_agent.rs`)
//! carries the operator's one request, `format-volume` (a new cluster's
//! volume is empty and is formatted only when asked), and the status
//! reads. Root required; run it alone:
//!
//! ```text
//! cargo test -p triad-hwtests --test pbx -- --nocapture
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use triad_hwtests::agent::{ask as agent, leader as agent_leader, pbx_running, status};
use triad_hwtests::cluster::{sole_answerer, Cluster, IDS};
use triad_hwtests::net::{node_mac, observer_site};
use triad_hwtests::net::{Segment, CLIENT_IP, NS, VIP};
use triad_hwtests::qemu::{Ovmf, Qemu};
use triad_hwtests::sip::{phone, sipsak};
use triad_hwtests::vm::Vm;
use triad_hwtests::{disk, image, state, wait_until};
use triad_lab::observer::{self, Observer};
use triad_lab::sip::{self, Side};

/// VM `id`'s MAC as the observer records it.
fn mac_of(id: u8) -> triad_lab::layout::Mac {
    triad_lab::layout::Mac::try_from(node_mac(id)).unwrap_or_else(|e| panic!("{e}"))
}

fn ip(text: &str) -> std::net::Ipv4Addr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A SIPp process group, killed when the test ends however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// QEMU start to a leader: OVMF under TCG, then the first stages and an
/// election (as `disk_boot.rs`).
const FORM_DEADLINE: Duration = Duration::from_secs(300);
/// The format request to Kamailio answering on the VIP: mkfs, seed,
/// e2fsck, mount and Kamailio's start under TCG.
const SERVICE_DEADLINE: Duration = Duration::from_secs(120);
/// Power cut to the new active VM's Kamailio routing the user.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(120);
/// A file written through the mounted filesystem before the power cut.
const DATA_FILE: &str = "/run/pbx/acknowledged.txt";
const DATA_TEXT: &str = "written-and-fsynced-before-the-power-cut";
/// The SIPp calls: held long enough to outlast the failover (about 5 s
/// here) and send their BYE to the new active VM.
const CALLS: sip::Calls = sip::Calls { count: 12, rate: 1, hold_ms: 15_000 };
/// Calls established before the power is cut.
const CALLS_UP_AT_CUT: usize = 4;
/// Where the phone's contact answers on the client side.
const PHONE_PORT: u16 = 5070;

/// Node `id`'s config: the volume's files on the data partition.
fn config(id: u8) -> String {
    state::pbx_config_text(id, &IDS, state::VOLUME_ON_DATA)
}

#[test]
fn a_registration_through_the_vip_survives_a_power_cut_of_the_active_appliance() {
    triad_hwtests::require_root();
    let qemu = Qemu::locate().unwrap_or_else(|e| panic!("{e}"));
    let ovmf = Ovmf::locate().unwrap_or_else(|e| panic!("{e}"));
    let img = image::ensure("debug").unwrap_or_else(|e| panic!("image: {e}"));
    let dir = triad_hwtests::work_dir("pbx");
    let triad = triad_hwtests::debug_supervisor_binary();
    // Each VM's own copy of the debug image's disk, its state partition
    // written with its config (not checked here: the config names files
    // of the image, such as the payload's seed, absent on this machine).
    let disks = disk::make_node_disks(&triad, &img.disk, &dir, &IDS, config, false)
        .unwrap_or_else(|e| panic!("the VMs' disks: {e}"));
    let seg = Segment::up(&IDS).unwrap_or_else(|e| panic!("segment: {e}"));
    let t0 = Instant::now();
    let mut cluster = Cluster::default();
    for (id, disk) in IDS.iter().zip(&disks) {
        cluster.vms.push(Vm::start_uefi(&qemu, &ovmf, &dir, *id, disk).unwrap_or_else(|e| panic!("VM {id}: {e}")));
    }

    // The VIP waits for the volume's filesystem, which a new cluster does
    // not have yet: the leader is found by its status.
    let leader = wait_until(FORM_DEADLINE, Duration::from_secs(1), || agent_leader(&IDS))
        .unwrap_or_else(|| panic!("no VM reported itself leader within {FORM_DEADLINE:?}"));
    eprintln!("pbx: VM {leader} leads {:.1} s after QEMU start", t0.elapsed().as_secs_f64());
    assert!(seg.arp_answerers(VIP).is_empty(), "the VIP answers before the volume has a filesystem");

    // The operator's request on a new cluster: make the filesystem.
    let formatted = wait_until(Duration::from_secs(60), Duration::from_secs(1), || {
        agent(leader, r#"{"cmd":"format-volume"}"#).ok().filter(|a| a.contains("\"ok\":true"))
    })
    .unwrap_or_else(|| {
        panic!("VM {leader} did not accept format-volume: {:?}", agent(leader, r#"{"cmd":"format-volume"}"#))
    });
    eprintln!("pbx: format-volume answered {}", formatted.trim());
    let t_fmt = Instant::now();
    wait_until(SERVICE_DEADLINE, Duration::from_secs(1), || pbx_running(leader).then_some(()))
        .unwrap_or_else(|| panic!("VM {leader}'s PBX never ran; status: {:?}", status(leader)));
    let holder = wait_until(Duration::from_secs(30), Duration::from_millis(200), || sole_answerer(&seg, None));
    assert_eq!(holder, Some(leader), "the VIP is not answered by the leader VM {leader} alone");
    eprintln!("pbx: Kamailio runs on VM {leader} {:.1} s after the format request", t_fmt.elapsed().as_secs_f64());
    for f in IDS.iter().filter(|i| **i != leader) {
        let mounted = status(*f).and_then(|s| s.pointer("/filesystem/mounted").and_then(|m| m.as_bool()));
        assert_eq!(mounted, Some(false), "follower VM {f} reports its filesystem mounted: {:?}", status(*f));
    }

    let seen = phone(PHONE_PORT);
    let contact = format!("sip:alice@{CLIENT_IP}:{PHONE_PORT}");
    let user = format!("sip:alice@{VIP}");
    let (ok, out) = sipsak(&["-U", "-C", &contact, "-s", &user, "-i"]);
    assert!(ok, "REGISTER through the VIP failed:\n{out}");
    let (ok, out) = sipsak(&["-s", &user, "-i"]);
    assert!(ok && seen.load(Ordering::SeqCst) >= 1, "OPTIONS to alice not routed to her contact:\n{out}");
    let before = seen.load(Ordering::SeqCst);
    // A file written and fsynced through the mounted filesystem (the
    // agent answers once both the file and its directory are synced).
    let answer = agent(leader, &format!("write {DATA_FILE} {DATA_TEXT}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.trim(), "ok", "write through the filesystem on VM {leader}");

    // Calls through the VIP (the payload's SIPp UAC and UAS on the client
    // side), some up when the power goes.
    let side = Side { ns: NS, client_ip: ip(CLIENT_IP), vip: ip(VIP) };
    let sipp_dir = dir.join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", sipp_dir.display()));
    let uas = sip::uas_in(&side, &sipp_dir).unwrap_or_else(|e| panic!("sipp: {e}"));
    let _uas = Killed(uas);
    let (ok, out) = sip::register_uas_in(&side).unwrap_or_else(|e| panic!("sipsak: {e}"));
    assert!(ok, "REGISTER of the UAS failed:\n{out}");
    let log = sipp_dir.join("uac.log");
    let uac = sip::uac_in(&side, &sipp_dir, "uac", CALLS, &log).unwrap_or_else(|e| panic!("sipp: {e}"));
    let mut uac = Killed(uac);
    let read_log = || sip::CallLog::parse(&std::fs::read_to_string(&log).unwrap_or_default());
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        (read_log().established.len() >= CALLS_UP_AT_CUT).then_some(())
    })
    .unwrap_or_else(|| panic!("fewer than {CALLS_UP_AT_CUT} calls established through the VIP in 60 s"));

    // The client's view of the VIP from here on: echoes every 10 ms, ARP
    // sweeps every 10 ms, every answer recorded with its MAC.
    let obs = Observer::start_at(NS, observer_site()).unwrap_or_else(|e| panic!("observer: {e}"));
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (!observer::vip_arp_macs(&obs.events(), Duration::ZERO).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("the observer saw no answer for the VIP"));
    let cut = Instant::now();
    let cut_at = obs.now();
    let cut_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let active = cluster.vms.iter_mut().find(|vm| vm.id == leader).expect("the leader is one of the VMs");
    active.power_off().unwrap_or_else(|e| panic!("power off: {e}"));
    eprintln!("pbx: VM {leader} powered off (monitor quit)");
    let next = wait_until(FAILOVER_DEADLINE, Duration::from_millis(200), || sole_answerer(&seg, Some(leader)))
        .unwrap_or_else(|| panic!("no other VM took the VIP within {FAILOVER_DEADLINE:?} of the power cut"));
    eprintln!("pbx: VM {next} holds the VIP {:.1} s after the power cut", cut.elapsed().as_secs_f64());
    let routed = wait_until(FAILOVER_DEADLINE.saturating_sub(cut.elapsed()), Duration::from_secs(1), || {
        let (ok, _) = sipsak(&["-s", &user, "-i"]);
        (ok && seen.load(Ordering::SeqCst) > before).then(|| cut.elapsed())
    })
    .unwrap_or_else(|| {
        let (_, out) = sipsak(&["-s", &user, "-i"]);
        panic!("after the power cut, OPTIONS to alice was not routed to her contact (registration lost?):\n{out}")
    });
    eprintln!("pbx: VM {next}'s Kamailio routes alice {:.1} s after the power cut", routed.as_secs_f64());
    let events = obs.events();
    let (old_mac, new_mac) = (mac_of(leader), mac_of(next));
    observer::check_one_answerer_from(&events, Duration::ZERO, old_mac, new_mac)
        .unwrap_or_else(|e| panic!("the client saw two VMs answer for the VIP: {e}"));
    let gap = observer::failover_gap(&events, old_mac, cut_at).map(|g| g.length());
    eprintln!(
        "pbx: the observer saw only VM {leader}, then only VM {next}, answer for the VIP ({} answers; echo gap {gap:?})",
        events.len()
    );
    let answer = agent(next, &format!("read {DATA_FILE}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.trim(), format!("ok {DATA_TEXT}"), "the file written before the power cut, read on VM {next}");
    let ended = wait_until(Duration::from_secs(120), Duration::from_millis(500), || uac.0.try_wait().ok().flatten());
    let calls = read_log();
    let (up, bye_ok) = calls.up_at(cut_epoch);
    eprintln!(
        "pbx: {up} calls up at the power cut, {bye_ok} of them ended with a 200 to their BYE; {} of {} calls \
         established in all (SIPp exit {ended:?})",
        calls.established.len(),
        CALLS.count
    );
    assert!(up >= CALLS_UP_AT_CUT, "only {up} calls up at the cut");
    assert_eq!(bye_ok, up, "calls up at the power cut whose BYE got no 200");
    let rest = IDS.iter().copied().find(|i| *i != leader && *i != next).expect("a third VM");
    let mounted = status(rest).and_then(|s| s.pointer("/filesystem/mounted").and_then(|m| m.as_bool()));
    assert_eq!(mounted, Some(false), "VM {rest} (a follower) reports its filesystem mounted");
}

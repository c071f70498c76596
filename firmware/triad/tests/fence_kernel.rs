//! Privileged tests of the nftables lease fence (`triad::os::fence`)
//! against the real kernel: no mocks.
//!
//! Each test makes two named network namespaces (`ip netns add`, names
//! with the pid and a counter), a veth pair between them, the VIP on side
//! A, and probes from side B with `arping` and `ping`. The fence is
//! installed from a thread that entered namespace A (`setns` is per
//! thread); its netlink socket stays in A, so later calls act there from
//! any thread. The test plays the intruder with the `nft` binary; the
//! fence itself never runs it. They need root and say so; they never skip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::CloneFlags;
use nix::unistd::Uid;
use triad::os::fence::{ChainState, Fence, FenceError, Refreshed};

const OWN_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const OWN_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 0x100);
const OWN6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 2);
/// Interval of the background pings (as root, ping allows 2 ms).
const PING_INTERVAL: &str = "0.003";

fn require_root() {
    assert!(
        Uid::effective().is_root(),
        "fence_kernel tests need root (ip netns add, setns, CAP_NET_ADMIN for nf_tables, \
         CAP_NET_RAW for arping/ping); run them as root: `cargo test -p triad --test fence_kernel`"
    );
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(output.status.success(), "{args:?} failed: {output:?}");
    output
}

/// Two namespaces `a` and `b` joined by veth `va` (in a) <-> `vb` (in b);
/// a has OWN_A and the VIPs on va, b has OWN_B. Deleted on drop.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Self {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Self { a: format!("tfa{pid}x{n}"), b: format!("tfb{pid}x{n}") };
        run(&["ip", "netns", "add", &lab.a]);
        run(&["ip", "netns", "add", &lab.b]);
        for ns in [&lab.a, &lab.b] {
            // No DAD: addresses usable at once.
            lab.sh(ns, "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        }
        run(&["ip", "link", "add", "va", "netns", &lab.a, "type", "veth", "peer", "name", "vb", "netns", &lab.b]);
        // Fast neighbour retries: a failed resolution must not delay the
        // next probe by a second.
        for (ns, dev) in [(&lab.a, "va"), (&lab.b, "vb")] {
            lab.sh(
                ns,
                &format!("sysctl -qw net.ipv4.neigh.{dev}.retrans_time_ms=20 net.ipv6.neigh.{dev}.retrans_time_ms=20"),
            );
        }
        lab.sh(&lab.a, &format!("ip link set lo up && ip link set va up && ip addr add {OWN_A}/24 dev va"));
        lab.sh(&lab.a, &format!("ip addr add {VIP4}/24 dev va && ip addr add {VIP6}/64 dev va nodad"));
        lab.sh(&lab.b, &format!("ip link set lo up && ip link set vb up && ip addr add {OWN_B}/24 dev vb"));
        lab.sh(&lab.b, &format!("ip addr add {OWN6_B}/64 dev vb nodad"));
        lab
    }

    fn sh(&self, ns: &str, script: &str) -> Output {
        run(&["ip", "netns", "exec", ns, "sh", "-c", script])
    }

    /// Runs `f` on a thread inside namespace a.
    fn in_a<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.a);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).expect("setns into namespace a");
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn install(&self, vip6: bool) -> Fence {
        let vip6 = vip6.then_some(VIP6);
        self.in_a(move || Fence::install("va", Some(VIP4), vip6)).expect("install the fence")
    }

    /// Whether b gets an ARP reply for the VIP (iputils arping: 2
    /// requests, at most 1 s).
    fn arp_reply(&self) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.b, "arping", "-c", "2", "-w", "1", "-I", "vb", &VIP4.to_string()])
            .output()
            .expect("run arping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("Unicast reply from")
    }

    /// One ping from b to `target`, waiting at most 1 s for the reply.
    fn ping_reply(&self, target: IpAddr) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.b, "ping", "-n", "-c", "1", "-W", "1", &target.to_string()])
            .output()
            .expect("run ping");
        out.status.success()
    }

    /// A ping from b to `target` every 3 ms until [`Pings::replies`].
    fn pings(&self, target: IpAddr) -> Pings {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.b, "ping", "-n", "-D", "-i", PING_INTERVAL, &target.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        Pings { child }
    }

    fn nft(&self, args: &str) -> Output {
        self.sh(&self.a, &format!("nft {args}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A background `ping -D` in namespace b.
struct Pings {
    child: Child,
}

impl Pings {
    /// Stops ping (SIGINT, so it flushes its output) and returns the wall
    /// clock times at which replies arrived.
    fn replies(self) -> Vec<SystemTime> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT ping");
        let out = self.child.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|line| line.contains("bytes from"))
            .filter_map(|line| {
                let stamp = line.strip_prefix('[')?.split(']').next()?;
                let secs: f64 = stamp.parse().ok()?;
                Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
            })
            .collect()
    }
}

/// Milliseconds from `from` to `to` (negative if `to` is earlier).
fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

fn sleep_until(start: Instant, offset: Duration) {
    if let Some(left) = (start + offset).checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

#[test]
fn installed_fence_without_element_silences_the_vip() {
    let lab = Lab::new();
    // Before the fence: the VIP answers (the lab itself works).
    assert!(lab.arp_reply(), "no ARP reply for the VIP before the fence: lab broken");
    assert!(lab.ping_reply(VIP4.into()), "no ping reply before the fence: lab broken");
    assert!(lab.ping_reply(VIP6.into()), "no ping6 reply before the fence: lab broken");
    let fence = lab.install(true);
    // b's neighbour entries from the checks above would let pings through
    // the ARP/NA rules; forget them so that resolution is tested too.
    lab.sh(&lab.b, "ip neigh flush dev vb");
    assert!(!lab.arp_reply(), "ARP reply for the VIP with no lease element");
    assert!(!lab.ping_reply(VIP4.into()), "ping reply from the VIP with no lease element");
    assert!(!lab.ping_reply(VIP6.into()), "ping6 reply from the VIP6 with no lease element");
    // The node's own address is not fenced.
    assert!(lab.ping_reply(OWN_A.into()), "the node's own address must stay reachable");
    let state = fence.check().expect("check");
    assert!(state.intact(), "{state:?}");
    assert_eq!(state.lease4, None);
    assert_eq!(state.lease6, None);
}

#[test]
fn granted_lease_answers_until_expiry_then_silence() {
    let lab = Lab::new();
    let fence = lab.install(true);
    let ttl = Duration::from_millis(300);
    let pings = lab.pings(VIP4.into());
    let pings6 = lab.pings(VIP6.into());
    std::thread::sleep(Duration::from_millis(200));
    let granted_wall = SystemTime::now();
    let granted = Instant::now();
    assert_eq!(fence.grant(ttl).expect("grant"), Refreshed::Held { ttl_ms: 300 });
    let grant_took = granted.elapsed();
    sleep_until(granted, Duration::from_millis(60));
    let arp_live = lab.arp_reply();
    sleep_until(granted, Duration::from_millis(550));
    let arp_after = lab.arp_reply();
    let (replies, replies6) = (pings.replies(), pings6.replies());
    let rel: Vec<f64> = replies.iter().map(|t| ms_between(granted_wall, *t)).collect();
    let rel6: Vec<f64> = replies6.iter().map(|t| ms_between(granted_wall, *t)).collect();
    let summary = |r: &[f64]| {
        format!(
            "{} replies, first at {:.1} ms, last at {:.1} ms after grant",
            r.len(),
            r.first().copied().unwrap_or(f64::NAN),
            r.last().copied().unwrap_or(f64::NAN)
        )
    };
    eprintln!("grant(300ms) took {grant_took:?}; IPv4: {}; IPv6: {}", summary(&rel), summary(&rel6));
    assert!(rel.iter().all(|t| *t > 0.0), "ping reply before the grant: {rel:?}");
    assert!(arp_live, "no ARP reply at +60 ms inside a 300 ms lease");
    assert!(!arp_after, "ARP reply at +550 ms after a 300 ms lease");
    for (family, r) in [("IPv4", &rel), ("IPv6", &rel6)] {
        // Generous for "replies come": some reply in the first 200 ms.
        assert!(r.iter().any(|t| *t < 200.0), "{family}: no reply within 200 ms of the grant: {r:?}");
        // Strict for silence: nothing 50 ms past the expiry.
        let late: Vec<_> = r.iter().filter(|t| **t > 300.0 + 50.0).collect();
        assert!(late.is_empty(), "{family}: replies after expiry + 50 ms: {late:?}");
    }
    assert_eq!(fence.check().expect("check").lease4, None, "element still listed after expiry");
}

#[test]
fn refresh_while_present_extends_the_lease() {
    let lab = Lab::new();
    let fence = lab.install(false);
    let ttl = Duration::from_millis(300);
    let granted = Instant::now();
    fence.grant(ttl).expect("grant");
    sleep_until(granted, Duration::from_millis(200));
    let refreshed = Instant::now();
    assert_eq!(fence.refresh(ttl).expect("refresh while present"), Refreshed::Held { ttl_ms: 300 });
    // Past the first expiry (+300), before the new one (+200+300).
    sleep_until(granted, Duration::from_millis(380));
    let probe_at = granted.elapsed();
    assert!(lab.ping_reply(VIP4.into()), "no reply at {probe_at:?} after a refresh at +200 ms with ttl 300 ms");
    let state = fence.check().expect("check");
    let left = state.lease4.expect("element present after refresh").remaining;
    let expected = ttl.saturating_sub(refreshed.elapsed());
    eprintln!("refresh: reply at {probe_at:?} after grant; remaining {left:?}, expected about {expected:?}");
    sleep_until(refreshed, Duration::from_millis(300 + 60));
    assert!(!lab.ping_reply(VIP4.into()), "reply after the refreshed lease expired");
}

#[test]
fn refresh_after_expiry_fails_and_the_vip_stays_silent() {
    let lab = Lab::new();
    let fence = lab.install(true);
    fence.grant(Duration::from_millis(100)).expect("grant");
    std::thread::sleep(Duration::from_millis(150));
    let pings = lab.pings(VIP4.into());
    let started = SystemTime::now();
    match fence.refresh(Duration::from_millis(1000)) {
        Err(FenceError::NotPresent { .. }) => {}
        other => panic!("refresh after expiry: expected NotPresent, got {other:?}"),
    }
    // A grant of the other family must not have slipped in either: the
    // batch failed as a whole.
    let state = fence.check().expect("check");
    assert_eq!((state.lease4, state.lease6), (None, None), "a failed refresh left an element: {state:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!lab.arp_reply(), "ARP reply after a refused refresh");
    let replies = pings.replies();
    assert!(
        replies.is_empty(),
        "ping replies after a refused refresh, at {:?} ms",
        replies.iter().map(|t| ms_between(started, *t)).collect::<Vec<_>>()
    );
    // Revoke of an absent element is fine; a grant works again.
    fence.revoke().expect("revoke absent");
    assert!(matches!(fence.grant(Duration::ZERO), Ok(Refreshed::Revoked)));
}

#[test]
fn check_reports_remaining_time_and_a_deleted_table() {
    let lab = Lab::new();
    let fence = lab.install(true);
    let granted = Instant::now();
    fence.grant(Duration::from_millis(1000)).expect("grant");
    match fence.grant(Duration::from_millis(1000)) {
        Err(FenceError::AlreadyPresent { .. }) => {}
        other => panic!("second grant: expected AlreadyPresent, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = granted.elapsed();
    let state = fence.check().expect("check");
    let after = granted.elapsed();
    assert!(state.intact(), "{state:?}");
    assert_eq!(state.egress, ChainState::Present { hooked: true, rules: 4, as_installed: true });
    assert_eq!(state.ingress, ChainState::Present { hooked: true, rules: 2, as_installed: true });
    for lease in [state.lease4, state.lease6] {
        let lease = lease.expect("element present");
        // Remaining within [1000 - after - 2 jiffies, 1000 - before + 1
        // jiffy] (the kernel counts in jiffies and converts to ms); a jiffy
        // is at most 10 ms (HZ >= 100).
        let hi = Duration::from_millis(1000 + 10).saturating_sub(before);
        let lo = Duration::from_millis(1000).saturating_sub(after + Duration::from_millis(20));
        eprintln!("check at {before:?}..{after:?}: remaining {:?}, timeout {:?}", lease.remaining, lease.timeout);
        assert!(
            lease.remaining <= hi && lease.remaining >= lo,
            "remaining {:?} not in [{lo:?}, {hi:?}]",
            lease.remaining
        );
        assert_eq!(lease.timeout, Duration::from_millis(1000));
    }
    // The intruder deletes the table.
    lab.nft("delete table netdev triad_fence");
    let state = fence.check().expect("check after delete");
    assert!(!state.table && !state.intact(), "{state:?}");
    assert_eq!(state.egress, ChainState::Missing);
    match fence.refresh(Duration::from_millis(500)) {
        Err(FenceError::FenceMissing { .. }) => {}
        other => panic!("refresh without table: expected FenceMissing, got {other:?}"),
    }
    assert!(matches!(fence.revoke(), Err(FenceError::FenceMissing { .. })));
    // An intruder's change to a rule is noticed too.
    let fence = lab.install(false);
    lab.nft("flush chain netdev triad_fence ingress");
    let state = fence.check().expect("check after flush");
    assert_eq!(state.ingress, ChainState::Present { hooked: true, rules: 0, as_installed: false });
    assert!(!state.intact());
    // A rule swapped for a harmless one, count unchanged, is noticed too.
    lab.nft("add rule netdev triad_fence ingress meta protocol ip ip daddr 10.78.0.99 drop");
    let state = fence.check().expect("check after swap");
    assert_eq!(state.ingress, ChainState::Present { hooked: true, rules: 1, as_installed: false });
    assert_eq!(state.egress, ChainState::Present { hooked: true, rules: 2, as_installed: true });
}

#[test]
fn install_twice_leaves_one_table_and_no_element() {
    let lab = Lab::new();
    let first = lab.install(true);
    first.grant(Duration::from_secs(30)).expect("grant");
    assert!(first.check().expect("check").lease4.is_some());
    // A restart: a new supervisor installs again.
    let second = lab.install(true);
    let tables = String::from_utf8_lossy(&lab.nft("list tables").stdout).into_owned();
    assert_eq!(tables.matches("triad_fence").count(), 1, "tables: {tables}");
    let state = second.check().expect("check");
    assert!(state.intact(), "{state:?}");
    assert_eq!((state.lease4, state.lease6), (None, None), "element survived a reinstall");
    let set = String::from_utf8_lossy(&lab.nft("list set netdev triad_fence lease").stdout).into_owned();
    assert!(!set.contains("elements"), "element listed by nft after reinstall: {set}");
    // The old handle sees the same kernel state; its refresh must fail.
    assert!(matches!(first.refresh(Duration::from_secs(30)), Err(FenceError::NotPresent { .. })));
    assert!(!lab.ping_reply(VIP4.into()), "VIP answers after a reinstall");
}

#[test]
fn install_refuses_bad_input() {
    require_root();
    assert!(matches!(Fence::install("va", None, None), Err(FenceError::NoVip)));
    assert!(matches!(Fence::install("", Some(VIP4), None), Err(FenceError::InterfaceName(_))));
    assert!(matches!(Fence::install("no-such-if0", Some(VIP4), None), Err(FenceError::NoInterface { .. })));
}

//! Privileged tests of the OS adapters against the real kernel: rtnetlink,
//! kernel address lifetimes, AF_PACKET sockets.
//!
//! Every test runs on its own thread inside a fresh network namespace
//! (`unshare(CLONE_NEWNET)` is per thread), with a veth pair `va`/`vb`
//! created there, so the host's interfaces are never touched and tests can
//! run in parallel. Processes spawned from that thread (`ip -j addr`)
//! inherit its namespace. They need root and say so; they never skip.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::unistd::Uid;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr,
    IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};
use socket2::{Domain, Protocol, Socket, Type};
use triad::os::announce::{gratuitous_arp, AnnounceSocket};
use triad::os::arp_watch::ArpWatch;
use triad::os::netlink::{Netlink, NetlinkError};
use triad::os::vip::{KernelVip, VipOps, VipSpec};
use triad_core::VipAction;

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x100);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn require_root() {
    assert!(
        Uid::effective().is_root(),
        "os_netns tests need root (CAP_SYS_ADMIN to unshare a network namespace, \
         CAP_NET_ADMIN, CAP_NET_RAW); run them as root: \
         `cargo test -p triad --test os_netns`"
    );
}

/// Runs `test` on a new thread inside a new, empty network namespace, on a
/// current-thread tokio runtime; re-raises its panic here.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    require_root();
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A veth pair `va` <-> `vb`, both up, in the current namespace.
struct Pair {
    nl: Netlink,
    a: u32,
    b: u32,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
}

async fn create_veth(a: &str, b: &str) {
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
    tokio::spawn(connection);
    handle.link().add().veth(a.into(), b.into()).execute().await.expect("create veth pair");
}

async fn veth_pair() -> Pair {
    create_veth("va", "vb").await;
    let nl = Netlink::new().expect("netlink");
    let a = nl.wait_for_link("va", Duration::from_secs(2)).await.expect("va");
    let b = nl.wait_for_link("vb", Duration::from_secs(2)).await.expect("vb");
    nl.set_link_up(a).await.expect("va up");
    nl.set_link_up(b).await.expect("vb up");
    let mac_a = nl.link_mac(a).await.expect("mac of va");
    let mac_b = nl.link_mac(b).await.expect("mac of vb");
    assert_ne!(mac_a, mac_b);
    Pair { nl, a, b, mac_a, mac_b }
}

/// Polls `cond` every 20 ms until it holds (returns how long that took) or
/// `timeout` passes (returns `None`).
async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `addr_info` entry of `address` on `dev`, as `ip -j addr` shows it.
fn ip_addr_info(dev: &str, address: IpAddr) -> Option<serde_json::Value> {
    let output = Command::new("ip").args(["-j", "addr", "show", "dev", dev]).output().expect("run ip");
    assert!(output.status.success(), "ip -j addr failed: {output:?}");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip json");
    links[0]["addr_info"]
        .as_array()?
        .iter()
        .find(|info| info["local"].as_str() == Some(address.to_string().as_str()))
        .cloned()
}

async fn has(nl: &Netlink, ifindex: u32, address: impl Into<IpAddr>) -> bool {
    nl.has_address(ifindex, address.into()).await.expect("has_address")
}

/// An AF_PACKET socket receiving every frame seen on `ifindex`.
fn capture(ifindex: u32) -> Socket {
    const ETH_P_ALL: u16 = 0x0003;
    let protocol = Protocol::from(i32::from(ETH_P_ALL.to_be()));
    let socket = Socket::new(Domain::PACKET, Type::RAW, Some(protocol)).expect("capture socket");
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_ALL.to_be();
    ll.sll_ifindex = ifindex as i32;
    // SAFETY: `ll` is an initialised sockaddr_ll that outlives the call and
    // the length passed is its size; the fd is the socket's own.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            std::ptr::addr_of!(ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind capture: {}", std::io::Error::last_os_error());
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    socket
}

/// Reads frames from `socket` until one satisfies `pick` or 2 s pass.
fn capture_until<T>(socket: &Socket, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        if let Ok(len) = std::io::Read::read(&mut &*socket, &mut buf) {
            if let Some(found) = pick(&buf[..len]) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn wait_for_link_sees_a_late_interface_and_times_out() {
    in_netns(|| async {
        let nl = Netlink::new().expect("netlink");
        // The veth appears 300 ms after we start waiting, as in the lab.
        let late = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            create_veth("late0", "late1").await;
        });
        let index = nl.wait_for_link("late0", Duration::from_secs(5)).await.expect("late0 appears");
        assert!(index > 0);
        late.await.expect("creator task");
        let missing = nl.wait_for_link("nope0", Duration::from_millis(300)).await;
        assert!(matches!(missing, Err(NetlinkError::LinkTimeout { .. })), "{missing:?}");
    });
}

#[test]
fn link_mac_and_ensure_address() {
    in_netns(|| async {
        let p = veth_pair().await;
        let output = Command::new("ip").args(["-j", "link", "show", "dev", "va"]).output().expect("ip");
        let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        let shown = links[0]["address"].as_str().expect("address").to_owned();
        let ours = p.mac_a.map(|b| format!("{b:02x}")).join(":");
        assert_eq!(shown, ours);

        let own = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));
        p.nl.ensure_address(p.a, own, 24).await.expect("first");
        p.nl.ensure_address(p.a, own, 24).await.expect("second is idempotent");
        let info = ip_addr_info("va", own).expect("own address present");
        // Permanent: no lifetime.
        assert_eq!(info["valid_life_time"], 4294967295u64);
    });
}

#[test]
fn vip_with_lifetime_1_expires_without_renewal() {
    in_netns(|| async {
        let p = veth_pair().await;
        let added = Instant::now();
        p.nl.add_vip(p.a, VIP4.into(), 24, 1).await.expect("add");
        let info = ip_addr_info("va", VIP4.into()).expect("VIP visible");
        let valid = info["valid_life_time"].as_u64().expect("valid_life_time");
        assert!(valid <= 1, "valid_lft {valid}");
        assert!(info["preferred_life_time"].as_u64().expect("preferred") <= 1);

        let gone = wait_until(Duration::from_millis(2500), || async { !has(&p.nl, p.a, VIP4).await }).await;
        assert!(gone.is_some(), "VIP still present 2.5 s after add");
        eprintln!("VIP expired {:?} after add", added.elapsed());
    });
}

#[test]
fn vip_renewed_every_250ms_stays() {
    in_netns(|| async {
        let p = veth_pair().await;
        p.nl.add_vip(p.a, VIP4.into(), 24, 1).await.expect("add");
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.tick().await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            tick.tick().await;
            assert!(has(&p.nl, p.a, VIP4).await, "lost at {:?}", start.elapsed());
            p.nl.renew_vip(p.a, VIP4.into(), 24, 1).await.expect("renew");
        }
        // Adding an existing VIP renews it instead of failing.
        p.nl.add_vip(p.a, VIP4.into(), 24, 1).await.expect("add again = renew");
        let info = ip_addr_info("va", VIP4.into()).expect("still there");
        assert!(info["valid_life_time"].as_u64().expect("valid") <= 1);
        // Stop renewing: the kernel lease runs out.
        let gone = wait_until(Duration::from_millis(2500), || async { !has(&p.nl, p.a, VIP4).await }).await;
        assert!(gone.is_some(), "VIP outlived its lease after renewals stopped");
    });
}

#[test]
fn remove_works_and_twice_is_fine() {
    in_netns(|| async {
        let p = veth_pair().await;
        for (vip, prefix) in [(IpAddr::V4(VIP4), 24), (IpAddr::V6(VIP6), 64)] {
            p.nl.add_vip(p.a, vip, prefix, 30).await.expect("add");
            assert!(has(&p.nl, p.a, vip).await);
            p.nl.remove_vip(p.a, vip, prefix).await.expect("remove");
            assert!(!has(&p.nl, p.a, vip).await, "{vip} still present");
            assert!(ip_addr_info("va", vip).is_none());
            p.nl.remove_vip(p.a, vip, prefix).await.expect("second remove is ok");
        }
    });
}

#[test]
fn ipv6_vip_skips_dad() {
    in_netns(|| async {
        let p = veth_pair().await;
        // Control: an ordinary address on the same (up, carrier) link does
        // go through DAD, so the check below can tell the difference.
        let plain = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1));
        p.nl.ensure_address(p.a, plain, 64).await.expect("plain address");
        p.nl.add_vip(p.a, VIP6.into(), 64, 5).await.expect("add v6 VIP");

        let control = ip_addr_info("va", plain).expect("plain present");
        assert_eq!(control["tentative"], true, "control not tentative: {control}");
        let info = ip_addr_info("va", VIP6.into()).expect("v6 VIP present");
        assert_eq!(info["nodad"], true, "{info}");
        assert!(info.get("tentative").is_none(), "VIP tentative: {info}");
        assert!(info["valid_life_time"].as_u64().expect("valid") <= 5);
    });
}

#[test]
fn announce_is_received_by_the_peer() {
    in_netns(|| async {
        let p = veth_pair().await;
        let on_b = capture(p.b);
        let spec = VipSpec { v4: Some((VIP4, 24)), v6: Some((VIP6, 64)), lifetime_secs: 5 };
        let mut vip = KernelVip::new(p.nl.clone(), p.a, spec).await.expect("KernelVip");
        assert_eq!(vip.mac(), p.mac_a);
        vip.apply(VipAction::Announce).await.expect("announce");

        let mac_a = EthernetAddress(p.mac_a);
        let arp = capture_until(&on_b, |bytes| {
            let frame = EthernetFrame::new_checked(bytes).ok()?;
            if frame.src_addr() != mac_a || frame.ethertype() != EthernetProtocol::Arp {
                return None;
            }
            assert_eq!(frame.dst_addr(), EthernetAddress::BROADCAST);
            ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).ok()?).ok()
        })
        .expect("gratuitous ARP arrived on vb");
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: mac_a,
                source_protocol_addr: VIP4,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: VIP4,
            }
        );

        let ip = capture_until(&on_b, |bytes| {
            let frame = EthernetFrame::new_checked(bytes).ok()?;
            if frame.src_addr() != mac_a || frame.ethertype() != EthernetProtocol::Ipv6 {
                return None;
            }
            let packet = Ipv6Packet::new_checked(frame.payload()).ok()?;
            let ip = Ipv6Repr::parse(&packet).ok()?;
            if ip.src_addr != VIP6 {
                return None; // the kernel's own traffic (MLD, RS) from va
            }
            assert_eq!(frame.dst_addr(), EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
            let icmp = Icmpv6Packet::new_checked(packet.payload()).ok()?;
            let caps = ChecksumCapabilities::default(); // verifies the checksum
            let repr = Icmpv6Repr::parse(&ip.src_addr, &ip.dst_addr, &icmp, &caps)
                .expect("valid ICMPv6 with a correct checksum");
            assert_eq!(
                repr,
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                    flags: NdiscNeighborFlags::OVERRIDE,
                    target_addr: VIP6,
                    lladdr: Some(RawHardwareAddress::from_bytes(&p.mac_a)),
                })
            );
            Some(ip)
        })
        .expect("unsolicited NA arrived on vb");
        assert_eq!(ip.dst_addr, ALL_NODES);
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(ip.next_header, IpProtocol::Icmpv6);
    });
}

#[test]
fn arp_watch_reports_foreign_claims_and_ignores_ours() {
    in_netns(|| async {
        let p = veth_pair().await;
        let mut watch = ArpWatch::new(p.a, VIP4, p.mac_a).expect("ArpWatch");
        let from_a = AnnounceSocket::new(p.a).expect("socket on va");
        let from_b = AnnounceSocket::new(p.b).expect("socket on vb");

        // Our own announcement (seen on va as outgoing) is no conflict.
        from_a.send(&gratuitous_arp(p.mac_a, VIP4)).expect("send own");
        let quiet = tokio::time::timeout(Duration::from_millis(500), watch.next_conflict()).await;
        assert!(quiet.is_err(), "own GARP reported: {quiet:?}");

        // Another host claiming the VIP is.
        from_b.send(&gratuitous_arp(p.mac_b, VIP4)).expect("send foreign");
        let conflict = tokio::time::timeout(Duration::from_secs(2), watch.next_conflict())
            .await
            .expect("conflict reported within 2 s")
            .expect("recv");
        assert_eq!(conflict, p.mac_b);

        // A claim for some other address is not.
        from_b.send(&gratuitous_arp(p.mac_b, Ipv4Addr::new(10, 77, 0, 2))).expect("send other");
        let quiet = tokio::time::timeout(Duration::from_millis(300), watch.next_conflict()).await;
        assert!(quiet.is_err(), "unrelated GARP reported: {quiet:?}");
    });
}

#[test]
fn kernel_vip_add_renew_remove() {
    in_netns(|| async {
        let p = veth_pair().await;
        let spec = VipSpec { v4: Some((VIP4, 24)), v6: Some((VIP6, 64)), lifetime_secs: 2 };
        let mut vip = KernelVip::new(p.nl.clone(), p.a, spec).await.expect("KernelVip");
        vip.apply(VipAction::Add).await.expect("add");
        assert!(has(&p.nl, p.a, VIP4).await && has(&p.nl, p.a, VIP6).await);
        let v6 = ip_addr_info("va", VIP6.into()).expect("v6");
        assert!(v6.get("tentative").is_none(), "{v6}");
        vip.apply(VipAction::Renew).await.expect("renew");
        vip.apply(VipAction::Remove).await.expect("remove");
        assert!(!has(&p.nl, p.a, VIP4).await && !has(&p.nl, p.a, VIP6).await);
        vip.apply(VipAction::Remove).await.expect("remove again");
    });
}

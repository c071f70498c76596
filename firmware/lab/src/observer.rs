//! The client's view of the VIP: a prober and a packet observer running in
//! the client namespace (their sockets are created on a thread that entered
//! it, and stay bound to it).
//!
//! - The prober sends an ICMP echo to the VIP every 10 ms through the
//!   client's kernel, so it uses the client's existing neighbour entry, the
//!   way a real client would. The lab has told that kernel never to
//!   solicit again, so a missing or late gratuitous ARP is an outage here.
//! - Every 50 ms it also sends an ARP request for the VIP from a sender
//!   that is not the client (`SWEEP_IP`/`SWEEP_MAC`): every host still
//!   answering for the VIP replies, and the replies reach the client's port
//!   (the bridge learnt the sweep MAC there) without touching the client's
//!   ARP table (they are not addressed to its MAC). This is how a node that
//!   still answers ARP for the VIP is caught even though the client asks
//!   nothing.
//! - An AF_PACKET socket records, with timestamps: every ARP packet whose
//!   sender IP is the VIP, every ARP request the client itself sends for the
//!   VIP (there should be none), and every echo reply with its source MAC.
//!
//! The analysis functions at the bottom turn a record into the figures the
//! tests and the benchmark use.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::layout::{Mac, CLIENT_MAC, IFACE, SWEEP_IP, SWEEP_MAC, VIP};
use crate::netns::{self, NetnsError};

/// Probe interval of the client.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Interval of the ARP sweeps for the VIP (issue 10: every 10 ms, so an
/// instant with two answering nodes is caught, not sampled past).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// Where the observer runs: the client side's interface, the VIP, the
/// client's MAC, and the sender of the ARP sweeps. [`LAB`] is the lab's;
/// the hardware tests (hwtests/) have their own segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// The client's interface in its namespace.
    pub iface: &'static str,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The client's MAC (its own ARP requests for the VIP are recorded).
    pub client_mac: Mac,
    /// The sweeps' sender address, one nobody uses (replies to it never
    /// touch the client's neighbour table).
    pub sweep_ip: Ipv4Addr,
    /// The sweeps' sender MAC: the replies must reach the capture.
    pub sweep_mac: Mac,
}

/// The lab's client side.
pub const LAB: Site = Site { iface: IFACE, vip: VIP, client_mac: CLIENT_MAC, sweep_ip: SWEEP_IP, sweep_mac: SWEEP_MAC };

/// The observer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} failed")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An ARP packet (request, reply or gratuitous) with the VIP as sender.
    VipArp { sender: Mac, op: u16 },
    /// The client itself asked who has the VIP.
    ClientArpForVip,
    /// An echo reply from the VIP, with the MAC it came from.
    EchoReply { src: Mac, seq: u16 },
}

/// One observation, `at` measured from the observer's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub kind: EventKind,
}

/// A running prober + observer. Stops on drop.
#[derive(Debug)]
pub struct Observer {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Both sockets, created inside the client namespace.
struct Sockets {
    packet: OwnedFd,
    ifindex: i32,
    icmp: Socket,
}

fn os_err(what: &'static str) -> ObserverError {
    ObserverError::Socket { what, source: io::Error::last_os_error() }
}

/// Creates the AF_PACKET and raw ICMP sockets in the current namespace.
fn open_sockets(site: &Site) -> Result<Sockets, ObserverError> {
    let name = std::ffi::CString::new(site.iface)
        .map_err(|e| ObserverError::Socket { what: "interface name", source: io::Error::other(e) })?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(os_err("if_nametoindex(eth0) in the client namespace"));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(os_err("socket(AF_PACKET)"));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let packet = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed matches it.
    let rc = unsafe {
        libc::bind(
            packet.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(os_err("bind(AF_PACKET, eth0)"));
    }
    // A receive timeout lets the capture thread notice `stop`.
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: `tv` is a valid timeval and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            packet.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc < 0 {
        return Err(os_err("setsockopt(SO_RCVTIMEO)"));
    }
    let icmp = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|source| ObserverError::Socket { what: "socket(AF_INET, SOCK_RAW, ICMP)", source })?;
    // Replies are read from the packet socket; this one never reads, so
    // keep its queue tiny.
    let _ = icmp.set_recv_buffer_size(1);
    Ok(Sockets { packet, ifindex, icmp })
}

impl Observer {
    /// Starts probing and observing in the client namespace `ns`.
    pub fn start(ns: &str) -> Result<Observer, ObserverError> {
        Self::start_at(ns, LAB)
    }

    /// Starts probing and observing in namespace `ns` at `site`.
    pub fn start_at(ns: &str, site: Site) -> Result<Observer, ObserverError> {
        let socks = netns::run_in(ns, move || open_sockets(&site))??;
        let start = Instant::now();
        let events = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        let stop = Arc::new(AtomicBool::new(false));
        let packet = Arc::new(socks.packet);
        let mut threads = Vec::new();

        let (ev, st, pk) = (events.clone(), stop.clone(), packet.clone());
        threads.push(
            std::thread::Builder::new()
                .name("tlab-capture".into())
                .spawn(move || capture(&site, &pk, start, &ev, &st))
                .map_err(|source| ObserverError::Socket { what: "spawning the capture thread", source })?,
        );
        let (st, pk, icmp, ifindex) = (stop.clone(), packet, socks.icmp, socks.ifindex);
        threads.push(
            std::thread::Builder::new()
                .name("tlab-probe".into())
                .spawn(move || probe(&site, &icmp, &pk, ifindex, &st))
                .map_err(|source| ObserverError::Socket { what: "spawning the probe thread", source })?,
        );
        Ok(Observer { start, events, stop, threads })
    }

    /// Time since the observer started, on the same clock as events.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// A copy of everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        match self.events.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Forgets everything recorded so far (long benchmarks).
    pub fn clear(&self) {
        match self.events.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The capture loop: classify every frame on the client's interface.
fn capture(site: &Site, fd: &OwnedFd, start: Instant, events: &Mutex<Vec<Event>>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for writes of the lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n <= 0 {
            continue; // timeout (to check `stop`) or EINTR
        }
        let at = start.elapsed();
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if let Some(kind) = classify_at(site, &buf[..n as usize], outgoing) {
            if let Ok(mut g) = events.lock() {
                g.push(Event { at, kind });
            }
        }
    }
}

/// Turns one Ethernet frame into an event, if it is one we record.
pub fn classify(f: &[u8], outgoing: bool) -> Option<EventKind> {
    classify_at(&LAB, f, outgoing)
}

/// [`classify`] at `site`. The client's own request is told from a sweep
/// by its sender address too: a site may sweep from the client's MAC.
pub fn classify_at(site: &Site, f: &[u8], outgoing: bool) -> Option<EventKind> {
    if f.len() < 14 {
        return None;
    }
    let src = Mac(f[6..12].try_into().ok()?);
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let p = &f[14..];
    match ethertype {
        0x0806 if p.len() >= 28 => {
            let op = u16::from_be_bytes([p[6], p[7]]);
            let sha = Mac(p[8..14].try_into().ok()?);
            let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
            let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
            if spa == site.vip {
                Some(EventKind::VipArp { sender: sha, op })
            } else if outgoing && op == 1 && tpa == site.vip && sha == site.client_mac && spa != site.sweep_ip {
                Some(EventKind::ClientArpForVip)
            } else {
                None
            }
        }
        0x0800 if !outgoing && p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let proto = p[9];
            let ip_src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let icmp = p.get(ihl..)?;
            if proto == 1 && ip_src == site.vip && icmp.len() >= 8 && icmp[0] == 0 {
                let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
                Some(EventKind::EchoReply { src, seq })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request.
fn echo_request(id: u16, seq: u16) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"triad-lab probe!");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The ARP sweep frame: who has the VIP, tell the sweep address (not the
/// client's).
fn sweep_frame(site: &Site) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&site.sweep_mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let a = &mut f[14..];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    a[8..14].copy_from_slice(&site.sweep_mac.0);
    a[14..18].copy_from_slice(&site.sweep_ip.octets());
    a[24..28].copy_from_slice(&site.vip.octets());
    f
}

/// The probe loop: an echo every 10 ms, a sweep every 50 ms, on absolute
/// deadlines so scheduling delays do not accumulate.
fn probe(site: &Site, icmp: &Socket, packet: &OwnedFd, ifindex: i32, stop: &AtomicBool) {
    let dst = SockAddr::from(SocketAddrV4::new(site.vip, 0));
    let id = (std::process::id() & 0xffff) as u16;
    let sweep = sweep_frame(site);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut seq: u16 = 0;
    let mut next = Instant::now();
    let per_sweep = (SWEEP_INTERVAL.as_millis() / PROBE_INTERVAL.as_millis()) as u16;
    while !stop.load(Ordering::Relaxed) {
        // Send errors (no route while the link flaps) are outages the
        // capture side sees as missing replies; nothing to do here.
        let _ = icmp.send_to(&echo_request(id, seq), &dst);
        if seq.is_multiple_of(per_sweep) {
            // SAFETY: `sweep` and `sll` are valid for the lengths given.
            unsafe {
                libc::sendto(
                    packet.as_raw_fd(),
                    sweep.as_ptr().cast(),
                    sweep.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
            }
        }
        seq = seq.wrapping_add(1);
        next += PROBE_INTERVAL;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// The client-observed failover gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Last echo reply from the old node's MAC.
    pub last_old: Duration,
    /// First echo reply from another MAC after the fault.
    pub first_new: Duration,
    pub new_mac: Mac,
}

impl Gap {
    /// The outage the client saw.
    pub fn length(&self) -> Duration {
        self.first_new.saturating_sub(self.last_old)
    }
}

/// The gap after a fault at `fault_at` on the node with `old_mac`: last
/// reply from the old MAC to the first reply from a different MAC.
pub fn failover_gap(events: &[Event], old_mac: Mac, fault_at: Duration) -> Option<Gap> {
    let (first_new, new_mac) = events.iter().find_map(|e| match e.kind {
        EventKind::EchoReply { src, .. } if e.at >= fault_at && src != old_mac => Some((e.at, src)),
        _ => None,
    })?;
    let last_old = events
        .iter()
        .filter(|e| e.at < first_new && matches!(e.kind, EventKind::EchoReply { src, .. } if src == old_mac))
        .map(|e| e.at)
        .max()?;
    Some(Gap { last_old, first_new, new_mac })
}

/// MACs that sent ARP with the VIP as sender at or after `since`.
pub fn vip_arp_macs(events: &[Event], since: Duration) -> BTreeSet<Mac> {
    events
        .iter()
        .filter(|e| e.at >= since)
        .filter_map(|e| match e.kind {
            EventKind::VipArp { sender, .. } => Some(sender),
            _ => None,
        })
        .collect()
}

/// Last ARP with the VIP as sender from `mac`.
pub fn last_vip_arp_from(events: &[Event], mac: Mac) -> Option<Duration> {
    events.iter().filter(|e| matches!(e.kind, EventKind::VipArp { sender, .. } if sender == mac)).map(|e| e.at).max()
}

/// Times the client itself asked for the VIP at or after `since`.
pub fn client_arp_requests(events: &[Event], since: Duration) -> usize {
    events.iter().filter(|e| e.at >= since && e.kind == EventKind::ClientArpForVip).count()
}

/// Echo replies seen in `[from, to)`.
pub fn replies_between(events: &[Event], from: Duration, to: Duration) -> Vec<(Duration, Mac)> {
    events
        .iter()
        .filter(|e| e.at >= from && e.at < to)
        .filter_map(|e| match e.kind {
            EventKind::EchoReply { src, .. } => Some((e.at, src)),
            _ => None,
        })
        .collect()
}

/// The dual-answer check every test runs: after `settled_at`, at most one
/// MAC may answer ARP for the VIP, and it must be `expected` if given.
pub fn check_single_answerer(events: &[Event], settled_at: Duration, expected: Option<Mac>) -> Result<(), String> {
    let macs = vip_arp_macs(events, settled_at);
    let foreign: Vec<String> =
        macs.iter().filter(|m| expected.is_some_and(|x| x != **m)).map(|m| m.to_string()).collect();
    if macs.len() > 1 || !foreign.is_empty() {
        return Err(format!(
            "after the takeover settled ({settled_at:?}), ARP for the VIP came from {:?} (expected only {})",
            macs.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            expected.map_or("one MAC".to_string(), |m| m.to_string()),
        ));
    }
    Ok(())
}

/// Invariant 1 as the client sees it, from `from` (the fault) on, with no
/// blind window: every answer for the VIP (an ARP packet with the VIP as
/// sender, an echo reply) comes from `old` until the first answer from
/// `new`, and from `new` only after it. Any instant with two answering
/// nodes shows as an answer from another MAC after the first from `new`.
pub fn check_one_answerer_from(events: &[Event], from: Duration, old: Mac, new: Mac) -> Result<(), String> {
    let answers: Vec<(Duration, Mac)> = events
        .iter()
        .filter(|e| e.at >= from)
        .filter_map(|e| match e.kind {
            EventKind::VipArp { sender, .. } => Some((e.at, sender)),
            EventKind::EchoReply { src, .. } => Some((e.at, src)),
            EventKind::ClientArpForVip => None,
        })
        .collect();
    let first_new = answers.iter().find(|(_, m)| *m == new).map(|(t, _)| *t);
    for (t, m) in &answers {
        let after_new = first_new.is_some_and(|f| *t > f);
        if *m != new && (after_new || *m != old) {
            return Err(format!(
                "{m} answered for the VIP at {t:?}, after the fault at {from:?} (old {old}, new {new} first at {first_new:?}): two answering nodes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn reply(at: u64, mac: u8) -> Event {
        Event { at: ms(at), kind: EventKind::EchoReply { src: Mac([2, 0, 0, 0, 0, mac]), seq: 0 } }
    }

    #[test]
    fn gap_runs_from_last_old_reply_to_first_new_one() {
        let ev = vec![reply(0, 1), reply(10, 1), reply(20, 1), reply(900, 2), reply(910, 2)];
        let g = failover_gap(&ev, Mac([2, 0, 0, 0, 0, 1]), ms(15)).expect("gap");
        assert_eq!(g.last_old, ms(20));
        assert_eq!(g.first_new, ms(900));
        assert_eq!(g.length(), ms(880));
    }

    #[test]
    fn any_answer_from_the_old_node_after_the_new_ones_first_fails() {
        let (old, new) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2]));
        let a = |at, m| Event { at: ms(at), kind: EventKind::VipArp { sender: Mac([2, 0, 0, 0, 0, m]), op: 2 } };
        // Old until 300, new from 800: clean (the gap is not this check's).
        let clean = vec![a(0, 1), reply(300, 1), a(800, 2), reply(810, 2)];
        assert!(check_one_answerer_from(&clean, ms(100), old, new).is_ok());
        // The old node's ARP reply 5 ms after the new node's first answer.
        let double = vec![a(0, 1), a(800, 2), a(805, 1), reply(810, 2)];
        assert!(check_one_answerer_from(&double, ms(100), old, new).is_err());
        // An echo reply counts as an answer too; so does a third MAC.
        assert!(check_one_answerer_from(&[reply(800, 2), reply(900, 1)], ms(0), old, new).is_err());
        assert!(check_one_answerer_from(&[reply(800, 3)], ms(0), old, new).is_err());
    }

    #[test]
    fn two_answerers_after_settle_fail() {
        let a = |at, m| Event { at: ms(at), kind: EventKind::VipArp { sender: Mac([2, 0, 0, 0, 0, m]), op: 2 } };
        let ev = vec![a(0, 1), a(100, 2), a(200, 1)];
        assert!(check_single_answerer(&ev, ms(150), Some(Mac([2, 0, 0, 0, 0, 2]))).is_err());
        assert!(check_single_answerer(&ev, ms(250), None).is_ok());
    }

    #[test]
    fn sweep_frame_is_classified_as_not_from_client() {
        assert_eq!(classify(&sweep_frame(&LAB), true), None);
        // A site sweeping from the client's own MAC (the hardware tests'
        // bridge): still not the client asking, told by the sender address.
        let site = Site { sweep_mac: LAB.client_mac, ..LAB };
        assert_eq!(classify_at(&site, &sweep_frame(&site), true), None);
        let mut own = sweep_frame(&site);
        own[14 + 14..14 + 18].copy_from_slice(&[10, 77, 0, 2]);
        assert_eq!(classify_at(&site, &own, true), Some(EventKind::ClientArpForVip));
    }

    #[test]
    fn echo_checksum_verifies() {
        assert_eq!(checksum(&echo_request(7, 9)), 0);
    }
}

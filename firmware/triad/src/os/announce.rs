//! Announcing the VIP: gratuitous ARP and unsolicited Neighbor
//! Advertisement frames, and the raw socket that sends them.
//!
//! The frame builders are pure (built with `smoltcp::wire`, tested without
//! root). [`AnnounceSocket`] only sends: it is bound with protocol 0, so the
//! kernel never queues received frames on it. Deciding when to announce is
//! the core's job, not this module's.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};
use socket2::{Domain, SockAddr, Socket, Type};

/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet multicast address ff02::1 maps to (RFC 2464 §7).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// RFC 4861 §7.1.2: receivers drop ND messages whose hop limit is not 255,
/// which proves they were not forwarded by a router.
const ND_HOP_LIMIT: u8 = 255;

/// Sending an announcement failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// socket(AF_PACKET, SOCK_RAW) failed (needs CAP_NET_RAW).
    #[error("socket(AF_PACKET, SOCK_RAW) failed")]
    Socket(#[source] io::Error),
    /// bind() to the interface failed.
    #[error("bind(AF_PACKET) to interface {ifindex} failed")]
    Bind {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Making the socket nonblocking failed.
    #[error("fcntl(O_NONBLOCK) on the AF_PACKET socket failed")]
    Nonblocking(#[source] io::Error),
    /// The frame is too short to carry an Ethernet header.
    #[error("frame of {len} bytes has no Ethernet header")]
    ShortFrame {
        /// Its length.
        len: usize,
    },
    /// sendto() failed or sent part of the frame.
    #[error("sendto() on interface {ifindex} failed")]
    Send {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A gratuitous ARP for `vip` from `mac`, in the ARP *request* form that
/// `arping -U` sends: broadcast, sender IP = target IP = VIP, sender MAC =
/// ours.
///
/// Why a request rather than a reply: every host must examine a broadcast
/// request (it might be asking for it), and Linux, BSD and Windows all
/// refresh an existing cache entry for the sender from it; some hosts
/// ignore unsolicited replies. With sender IP = target IP nobody answers,
/// and RFC 5227 §2.3 calls exactly this an ARP Announcement. The target
/// hardware address is ignored by receivers; we leave it zero as RFC 5227
/// asks (arping puts the broadcast address there; both work).
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> Vec<u8> {
    let ether = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: vip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: vip,
    };
    let mut buf = vec![0; ether.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    ether.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// An unsolicited Neighbor Advertisement for `vip` from `mac` (RFC 4861
/// §7.2.6): to all nodes, source address the VIP itself, Override set so
/// that receivers replace the old MAC, Solicited clear because nobody
/// asked, and the target link-layer address option carrying our MAC.
pub fn unsolicited_na(mac: [u8; 6], vip: Ipv6Addr) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::OVERRIDE,
        target_addr: vip,
        lladdr: Some(RawHardwareAddress::from_bytes(&mac)),
    });
    let ip = Ipv6Repr {
        src_addr: vip,
        dst_addr: ALL_NODES,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: ND_HOP_LIMIT,
    };
    let ether = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress(ALL_NODES_MAC),
        ethertype: EthernetProtocol::Ipv6,
    };
    let mut buf = vec![0; ether.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    ether.emit(&mut frame);
    let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet);
    // The default capabilities make emit() compute the ICMPv6 checksum over
    // the pseudo-header; nothing offloads it for a raw socket.
    icmp.emit(
        &vip,
        &ALL_NODES,
        &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// A send-only AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct AnnounceSocket {
    socket: Socket,
    ifindex: u32,
}

impl AnnounceSocket {
    /// Opens the socket on `ifindex` (needs CAP_NET_RAW).
    pub fn new(ifindex: u32) -> Result<Self, AnnounceError> {
        // Protocol 0: the socket receives nothing, so no queue builds up on
        // a socket nobody reads.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(AnnounceError::Socket)?;
        socket.bind(&packet_addr(ifindex, 0)).map_err(|source| AnnounceError::Bind { ifindex, source })?;
        socket.set_nonblocking(true).map_err(AnnounceError::Nonblocking)?;
        Ok(Self { socket, ifindex })
    }

    /// Sends one complete Ethernet frame. Nonblocking: a full device queue
    /// is an error (`WouldBlock`), not a wait; the next announcement comes
    /// soon anyway.
    pub fn send(&self, frame: &[u8]) -> Result<(), AnnounceError> {
        let ifindex = self.ifindex;
        let ethertype = ethertype(frame).ok_or(AnnounceError::ShortFrame { len: frame.len() })?;
        // The protocol in the destination address sets skb->protocol; with
        // the socket bound to protocol 0 it would otherwise be unset.
        let sent = self
            .socket
            .send_to(frame, &packet_addr(ifindex, ethertype))
            .map_err(|source| AnnounceError::Send { ifindex, source })?;
        if sent != frame.len() {
            return Err(AnnounceError::Send {
                ifindex,
                source: io::Error::new(io::ErrorKind::WriteZero, "short send"),
            });
        }
        Ok(())
    }
}

impl AsRawFd for AnnounceSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// The EtherType of an Ethernet II frame, if it is long enough to have one.
fn ethertype(frame: &[u8]) -> Option<u16> {
    EthernetFrame::new_checked(frame).ok().map(|f| u16::from(f.ethertype()))
}

/// A `sockaddr_ll` for interface `ifindex` and EtherType `protocol` (host
/// order; converted here).
pub(crate) fn packet_addr(ifindex: u32, protocol: u16) -> SockAddr {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    {
        // SAFETY: sockaddr_storage is larger than and at least as aligned as
        // sockaddr_ll (both are C structs from libc); the reference does not
        // outlive this block and nothing else aliases `storage` meanwhile.
        let ll = unsafe { &mut *std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
        ll.sll_protocol = protocol.to_be();
        // Interface indexes are positive ints in the kernel; u32 is how
        // netlink reports them.
        ll.sll_ifindex = ifindex as libc::c_int;
    }
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `storage` holds an initialised sockaddr_ll of `len` bytes with
    // sll_family = AF_PACKET.
    unsafe { SockAddr::new(storage, len) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv6Message, NdiscOption, NdiscOptionRepr};

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn gratuitous_arp_fields() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let buf = gratuitous_arp(MAC, vip);
        assert_eq!(buf.len(), 42);
        let frame = EthernetFrame::new_checked(&buf[..]).expect("ethernet");
        assert_eq!(frame.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(frame.src_addr(), EthernetAddress(MAC));
        assert_eq!(frame.ethertype(), EthernetProtocol::Arp);
        let packet = ArpPacket::new_checked(frame.payload()).expect("arp");
        let repr = ArpRepr::parse(&packet).expect("arp repr");
        assert_eq!(
            repr,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(MAC),
                source_protocol_addr: vip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: vip,
            }
        );
    }

    #[test]
    fn unsolicited_na_fields() {
        let vip: Ipv6Addr = "fd00:77::10".parse().expect("address");
        let buf = unsolicited_na(MAC, vip);
        // 14 Ethernet + 40 IPv6 + 24 NA + 8 option.
        assert_eq!(buf.len(), 86);
        let frame = EthernetFrame::new_checked(&buf[..]).expect("ethernet");
        assert_eq!(frame.dst_addr(), EthernetAddress(ALL_NODES_MAC));
        assert_eq!(frame.src_addr(), EthernetAddress(MAC));
        assert_eq!(frame.ethertype(), EthernetProtocol::Ipv6);

        let packet = Ipv6Packet::new_checked(frame.payload()).expect("ipv6");
        let ip = Ipv6Repr::parse(&packet).expect("ipv6 repr");
        assert_eq!(ip.src_addr, vip);
        assert_eq!(ip.dst_addr, ALL_NODES);
        assert_eq!(ip.next_header, IpProtocol::Icmpv6);
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(ip.payload_len, 32);

        let icmp = Icmpv6Packet::new_checked(packet.payload()).expect("icmpv6");
        assert!(icmp.verify_checksum(&vip, &ALL_NODES), "checksum");
        assert_eq!(icmp.msg_type(), Icmpv6Message::NeighborAdvert);
        assert_eq!(icmp.msg_code(), 0);
        let flags = icmp.neighbor_flags();
        assert!(flags.contains(NdiscNeighborFlags::OVERRIDE));
        assert!(!flags.contains(NdiscNeighborFlags::SOLICITED));
        assert!(!flags.contains(NdiscNeighborFlags::ROUTER));
        // Option: type 2 (target link-layer address), length 1 (8 octets).
        let option = NdiscOption::new_checked(icmp.payload()).expect("option");
        assert_eq!(
            NdiscOptionRepr::parse(&option).expect("option repr"),
            NdiscOptionRepr::TargetLinkLayerAddr(RawHardwareAddress::from_bytes(&MAC))
        );
        // And the whole thing through smoltcp's checked parser.
        let repr = Icmpv6Repr::parse(&vip, &ALL_NODES, &icmp, &ChecksumCapabilities::default()).expect("icmpv6 repr");
        assert_eq!(
            repr,
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::OVERRIDE,
                target_addr: vip,
                lladdr: Some(RawHardwareAddress::from_bytes(&MAC)),
            })
        );
    }

    #[test]
    fn corrupted_na_fails_checksum() {
        let vip: Ipv6Addr = "fd00:77::10".parse().expect("address");
        let mut buf = unsolicited_na(MAC, vip);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let frame = EthernetFrame::new_checked(&buf[..]).expect("ethernet");
        let packet = Ipv6Packet::new_checked(frame.payload()).expect("ipv6");
        let icmp = Icmpv6Packet::new_checked(packet.payload()).expect("icmpv6");
        assert!(!icmp.verify_checksum(&vip, &ALL_NODES));
    }

    #[test]
    fn ethertype_of_frames() {
        assert_eq!(ethertype(&gratuitous_arp(MAC, Ipv4Addr::LOCALHOST)), Some(0x0806));
        assert_eq!(ethertype(&unsolicited_na(MAC, Ipv6Addr::LOCALHOST)), Some(0x86dd));
        assert_eq!(ethertype(&[0; 13]), None);
        assert_eq!(ethertype(&[]), None);
    }
}

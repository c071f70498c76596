//! VIP conflict detection: watches ARP on the interface for another host
//! speaking for the VIP.
//!
//! A conflict is any ARP packet (request or reply) whose *sender* IP is the
//! VIP and whose sender MAC is not ours: that host claims the VIP or
//! answers for it. Requests *for* the VIP (target IP = VIP) are normal
//! traffic and not conflicts. This module only reports; what to do (back
//! off, re-announce, alarm) is the core's decision. Frames come from the
//! network, so parsing must never panic: anything malformed is ignored.

use std::io::{self, Read};
use std::net::Ipv4Addr;

use smoltcp::wire::{ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol};
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::announce::packet_addr;

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;
/// Larger than any Ethernet frame on the interface; longer frames are
/// truncated by the kernel, which is fine for ARP.
const FRAME_BUF: usize = 2048;

/// Watching ARP failed.
#[derive(Debug, thiserror::Error)]
pub enum ArpWatchError {
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
    #[error("fcntl(O_NONBLOCK) on the ARP socket failed")]
    Nonblocking(#[source] io::Error),
    /// Registering with the tokio reactor failed (or no runtime).
    #[error("cannot register the ARP socket with the tokio reactor")]
    Register(#[source] io::Error),
    /// recv() failed.
    #[error("recv() on the ARP socket of interface {ifindex} failed")]
    Recv {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Watches one interface for ARP packets that claim the VIP.
#[derive(Debug)]
pub struct ArpWatch {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    vip: Ipv4Addr,
    own_mac: [u8; 6],
    buf: Vec<u8>,
}

impl ArpWatch {
    /// Opens an ARP socket on `ifindex`; must be called inside a tokio
    /// runtime with I/O enabled.
    pub fn new(ifindex: u32, vip: Ipv4Addr, own_mac: [u8; 6]) -> Result<Self, ArpWatchError> {
        // Created with protocol 0 (receives nothing), then bound to ARP on
        // this interface only: created with ETH_P_ARP it would queue ARP
        // from every interface until bind().
        let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(ArpWatchError::Socket)?;
        socket.bind(&packet_addr(ifindex, ETH_P_ARP)).map_err(|source| ArpWatchError::Bind { ifindex, source })?;
        socket.set_nonblocking(true).map_err(ArpWatchError::Nonblocking)?;
        // AsyncFd would panic outside a runtime; say so as an error instead.
        tokio::runtime::Handle::try_current().map_err(|e| ArpWatchError::Register(io::Error::other(e)))?;
        // SAFETY: the Socket owns its descriptor, which stays open and the
        // same until the Socket (moved into the AsyncFd) is dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| ArpWatchError::Register(e.into_parts().1))?;
        Ok(Self { fd, ifindex, vip, own_mac, buf: vec![0; FRAME_BUF] })
    }

    /// Waits for the next ARP packet in which another host speaks for the
    /// VIP and returns that host's MAC. Cancel-safe: dropping the future
    /// loses no conflict that was already read.
    pub async fn next_conflict(&mut self) -> Result<[u8; 6], ArpWatchError> {
        loop {
            let mut guard =
                self.fd.readable().await.map_err(|source| ArpWatchError::Recv { ifindex: self.ifindex, source })?;
            // Drain everything queued before waiting again.
            loop {
                let buf = &mut self.buf;
                match guard.try_io(|socket| Read::read(&mut socket.get_ref(), buf)) {
                    Ok(Ok(len)) => {
                        let frame = self.buf.get(..len).unwrap_or(&[]);
                        if let Some(mac) = conflict_in(frame, self.vip, self.own_mac) {
                            return Ok(mac);
                        }
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(source)) => return Err(ArpWatchError::Recv { ifindex: self.ifindex, source }),
                    // Would block: readiness was cleared; wait again.
                    Err(_would_block) => break,
                }
            }
        }
    }
}

/// The MAC of a host other than us that `frame` shows speaking for `vip`,
/// if it does. Pure, total: garbage yields `None`.
///
/// Only a unicast, non-zero sender MAC counts: a multicast or zero sender
/// is malformed and names no host to act on.
pub fn conflict_in(frame: &[u8], vip: Ipv4Addr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let frame = EthernetFrame::new_checked(frame).ok()?;
    if frame.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(frame.payload()).ok()?;
    let ArpRepr::EthernetIpv4 { source_hardware_addr, source_protocol_addr, .. } = ArpRepr::parse(&packet).ok()? else {
        return None;
    };
    let sender = source_hardware_addr;
    let foreign = sender != EthernetAddress(own_mac);
    let plausible = sender.is_unicast() && sender != EthernetAddress([0; 6]);
    (source_protocol_addr == vip && foreign && plausible).then_some(sender.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::announce::gratuitous_arp;
    use smoltcp::wire::ArpOperation;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const THEIRS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    /// An ARP reply from `mac` saying `sender_ip` is at `mac`.
    fn reply(mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
        let mut buf = gratuitous_arp(mac, sender_ip);
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        let mut arp = ArpPacket::new_unchecked(frame.payload_mut());
        arp.set_operation(ArpOperation::Reply);
        arp.set_target_protocol_addr(&target_ip.octets());
        buf
    }

    #[test]
    fn foreign_gratuitous_arp_is_a_conflict() {
        assert_eq!(conflict_in(&gratuitous_arp(THEIRS, VIP), VIP, OURS), Some(THEIRS));
    }

    #[test]
    fn foreign_reply_for_the_vip_is_a_conflict() {
        let frame = reply(THEIRS, VIP, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(conflict_in(&frame, VIP, OURS), Some(THEIRS));
    }

    #[test]
    fn our_own_announcement_is_not() {
        assert_eq!(conflict_in(&gratuitous_arp(OURS, VIP), VIP, OURS), None);
    }

    #[test]
    fn other_addresses_and_requests_for_the_vip_are_not() {
        let other = Ipv4Addr::new(192, 0, 2, 11);
        assert_eq!(conflict_in(&gratuitous_arp(THEIRS, other), VIP, OURS), None);
        // "Who has VIP? tell .11": target is the VIP, sender is not.
        let mut who_has = gratuitous_arp(THEIRS, other);
        let mut frame = EthernetFrame::new_unchecked(&mut who_has[..]);
        ArpPacket::new_unchecked(frame.payload_mut()).set_target_protocol_addr(&VIP.octets());
        assert_eq!(conflict_in(&who_has, VIP, OURS), None);
    }

    #[test]
    fn implausible_sender_macs_are_ignored() {
        assert_eq!(conflict_in(&gratuitous_arp([0; 6], VIP), VIP, OURS), None);
        assert_eq!(conflict_in(&gratuitous_arp([0xff; 6], VIP), VIP, OURS), None);
        assert_eq!(conflict_in(&gratuitous_arp([0x01, 0, 0x5e, 0, 0, 1], VIP), VIP, OURS), None);
    }

    #[test]
    fn truncated_frames_are_ignored() {
        let full = gratuitous_arp(THEIRS, VIP);
        for len in 0..full.len() {
            assert_eq!(conflict_in(&full[..len], VIP, OURS), None, "length {len}");
        }
    }

    #[test]
    fn garbage_is_ignored() {
        // Not ARP by EtherType.
        let mut ipv4 = gratuitous_arp(THEIRS, VIP);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(conflict_in(&ipv4, VIP, OURS), None);
        // ARP with lengths that are not Ethernet/IPv4, including huge ones
        // that would index past the buffer if unchecked.
        for (hlen, plen) in [(0u8, 0u8), (255, 255), (6, 16), (8, 4)] {
            let mut frame = gratuitous_arp(THEIRS, VIP);
            frame[18] = hlen;
            frame[19] = plen;
            assert_eq!(conflict_in(&frame, VIP, OURS), None, "{hlen}/{plen}");
        }
        // Pseudo-random bytes of every length up to 100.
        let mut seed = 0x2545_f491_u32;
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = conflict_in(&bytes, VIP, OURS);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = conflict_in(&bytes, VIP, OURS);
        }

        #[test]
        fn arp_header_mutations_never_panic(at in 14usize..42, value: u8) {
            let mut frame = gratuitous_arp(THEIRS, VIP);
            frame[at] = value;
            let _ = conflict_in(&frame, VIP, OURS);
        }
    }
}

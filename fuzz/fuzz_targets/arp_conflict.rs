//! Fuzz target: `triad::os::arp_watch::conflict_in`, fed raw Ethernet
//! frames as they arrive from the LAN on the AF_PACKET socket.
//!
//! Input: VIP (4 bytes), our MAC (6 bytes), then the frame, so the fuzzer
//! reaches the "conflict" path as easily as the "ignore" paths; a seed is
//! `vip ++ own_mac ++ frame`.
//!
//! Checked, beyond "never panics": a reported conflict is consistent with
//! the frame's own bytes (ARP EtherType, sender protocol address = VIP,
//! sender hardware address = the MAC returned), and that MAC is unicast,
//! non-zero and not ours.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use triad::os::arp_watch::conflict_in;

/// Ethernet header, then ARP's fixed header: sender MAC at 22..28,
/// sender IPv4 at 28..32 for Ethernet/IPv4 ARP.
const SHA: std::ops::Range<usize> = 22..28;
const SPA: std::ops::Range<usize> = 28..32;

fuzz_target!(|data: &[u8]| {
    let Some((vip, rest)) = data.split_first_chunk::<4>() else { return };
    let Some((own_mac, frame)) = rest.split_first_chunk::<6>() else { return };
    let vip = Ipv4Addr::from(*vip);

    let Some(mac) = conflict_in(frame, vip, *own_mac) else { return };
    assert_eq!(frame.get(12..14), Some(&[0x08, 0x06][..]), "conflict from a non-ARP frame");
    assert_eq!(frame.get(SHA), Some(&mac[..]), "reported MAC is not the sender's");
    assert_eq!(frame.get(SPA), Some(&vip.octets()[..]), "sender IP is not the VIP");
    assert_ne!(mac, *own_mac, "our own MAC reported as a conflict");
    assert_eq!(mac[0] & 1, 0, "multicast sender MAC reported");
    assert_ne!(mac, [0; 6], "zero sender MAC reported");
});

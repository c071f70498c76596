//! SIP on the segment's client side, with the lab's tools
//! (`triad_lab::sip`) pointed at it: sipsak, and a phone that answers
//! what the PBX routes to it.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use triad_lab::sip::Side;

use crate::net::{CLIENT_IP, NS, VIP};

/// The segment's client side for the lab's SIP tools.
pub fn side() -> Side<'static> {
    let ip = |t: &str| t.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    Side { ns: NS, client_ip: ip(CLIENT_IP), vip: ip(VIP) }
}

/// `sipsak ARGS` on the client side: success (a 200) and output.
pub fn sipsak(args: &[&str]) -> (bool, String) {
    triad_lab::sip::sipsak_in(&side(), args).unwrap_or_else(|e| panic!("sipsak: {e}"))
}

/// A phone at `port` on the client side (`triad_lab::sip::phone_in`):
/// how many requests were routed to it.
pub fn phone(port: u16) -> Arc<AtomicUsize> {
    triad_lab::sip::phone_in(&side(), port).unwrap_or_else(|e| panic!("the phone at port {port}: {e}"))
}

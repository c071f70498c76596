//! Fuzz target: `triad::config::Config::parse`, fed config file text.
//!
//! A bad config must be an `Err` naming the field, never a panic; the
//! error chain is also rendered, as the supervisor logs it at startup.
//! An accepted config must hold the rules `Config` promises its users
//! (so no code re-validates): ids in 1..=3 and distinct, peers not at our
//! address or a VIP, absolute paths, timing that passes `Timing::check`.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use triad::config::{Config, NODE_IDS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!triad::errors::chain(&e).is_empty());
            return;
        }
    };
    let [a, b] = c.cluster.peers;
    assert!(NODE_IDS.contains(&c.node.id) && NODE_IDS.contains(&a.id) && NODE_IDS.contains(&b.id));
    assert!(a.id != b.id && a.id != c.node.id && b.id != c.node.id, "ids {} {} {}", c.node.id, a.id, b.id);
    let ours = c.node.address.addr();
    for p in [a, b] {
        assert_ne!(p.address, ours);
        assert_ne!(p.address, IpAddr::V4(c.cluster.vip.addr));
        if let Some(v6) = c.cluster.vip6 {
            assert_ne!(p.address, IpAddr::V6(v6.addr));
        }
    }
    assert!(c.cluster.peer_port != 0);
    assert!(c.realtime.priority >= 1 && c.realtime.priority <= 99);
    for p in [&c.node.control_socket, &c.node.state_dir, &c.tls.ca, &c.tls.cert, &c.tls.key] {
        assert!(p.is_absolute(), "{p:?}");
    }
    let iface = &c.node.interface;
    assert!(!iface.is_empty() && iface.len() <= 15 && !iface.contains(['/', ':', ' ', '\0']), "{iface:?}");
    assert!(c.timing.check().is_ok(), "accepted timing fails its own check: {:?}", c.timing);
});

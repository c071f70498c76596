//! The L2 segment: a network namespace holding a bridge whose own address
//! is the client side, and one tap per VM on it. The client runs its
//! probes (arping, ping, later sipsak) inside the namespace, so the
//! machine's own interfaces never see the test.

use crate::{run, HwError};

/// The namespace.
pub const NS: &str = "triad-hw";
/// The bridge, also the client's interface.
pub const BRIDGE: &str = "br0";
/// The segment's prefix length.
pub const PREFIX: u8 = 24;
/// The client's address.
pub const CLIENT_IP: &str = "10.79.0.200";
/// The VIP.
pub const VIP: &str = "10.79.0.100";

/// The bridge's MAC, set so the observer knows the client's frames.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x79, 0, 0, 0, 0xc8];
/// The address the observer's ARP sweeps come from: on the segment, used
/// by nobody, so the VMs' replies (to the bridge's MAC) never touch the
/// client's neighbour table.
pub const SWEEP_IP: [u8; 4] = [10, 79, 0, 250];

/// The client side as the lab's observer (`triad_lab::observer`) sees it:
/// the bridge is the client's interface, and the sweeps leave from it.
pub fn observer_site() -> triad_lab::observer::Site {
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let mac = triad_lab::layout::Mac(CLIENT_MAC);
    triad_lab::observer::Site { iface: BRIDGE, vip, client_mac: mac, sweep_ip: SWEEP_IP.into(), sweep_mac: mac }
}

/// VM `id`'s own address.
pub fn node_ip(id: u8) -> String {
    format!("10.79.0.{}", 10 + u16::from(id))
}

/// VM `id`'s MAC (locally administered QEMU range).
pub fn node_mac(id: u8) -> String {
    format!("52:54:00:79:00:{id:02x}")
}

/// VM `id`'s tap.
pub fn tap(id: u8) -> String {
    format!("tap{id}")
}

/// Held while a test owns the namespace and the VMs' work directory:
/// hardware tests started at once from two checkouts wait for each other.
pub const LOCK: &str = "/run/triad-hwtests.lock";

/// The segment; deleted on drop.
#[derive(Debug)]
pub struct Segment {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn ip(args: &[&str]) -> Result<String, HwError> {
    run("ip", args)
}

impl Segment {
    /// Creates the namespace, the bridge with the client address and one
    /// tap per id (a leftover namespace from a crashed run is replaced).
    pub fn up(ids: &[u8]) -> Result<Segment, HwError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .map_err(|source| HwError::Io { path: LOCK.into(), source })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| HwError::Io { path: LOCK.into(), source: e.into() })?;
        let _ = ip(&["netns", "del", NS]);
        ip(&["netns", "add", NS])?;
        let seg = Segment { _lock: lock };
        ip(&["-n", NS, "link", "set", "lo", "up"])?;
        ip(&["-n", NS, "link", "add", BRIDGE, "type", "bridge"])?;
        let mac = CLIENT_MAC.map(|b| format!("{b:02x}")).join(":");
        ip(&["-n", NS, "link", "set", BRIDGE, "address", &mac])?;
        // No STP listening delay: the VMs' first frames must pass at once.
        ip(&["-n", NS, "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0"])?;
        ip(&["-n", NS, "addr", "add", &format!("{CLIENT_IP}/{PREFIX}"), "dev", BRIDGE])?;
        ip(&["-n", NS, "link", "set", BRIDGE, "up"])?;
        for id in ids {
            let t = tap(*id);
            ip(&["-n", NS, "tuntap", "add", "dev", &t, "mode", "tap"])?;
            ip(&["-n", NS, "link", "set", &t, "master", BRIDGE, "up"])?;
        }
        Ok(seg)
    }

    /// Runs a program in the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, HwError> {
        let mut all = vec!["netns", "exec", NS, program];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The MACs that answered one ARP request for `addr` within a second
    /// (empty when nobody did).
    pub fn arp_answerers(&self, addr: &str) -> Vec<String> {
        let out = match self.exec("arping", &["-c", "1", "-w", "1", "-I", BRIDGE, addr]) {
            Ok(o) => o,
            // arping exits 1 when nobody answered: that is an answer too.
            Err(HwError::Command { detail, .. }) => detail,
            Err(_) => return Vec::new(),
        };
        parse_arping(&out)
    }

    /// One ping of `addr` answered within a second.
    pub fn pings(&self, addr: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", addr]).is_ok()
    }
}

/// The MACs in arping's (iputils) reply lines, `Unicast reply from
/// 10.79.0.100 [52:54:00:79:00:01]  0.8ms`, lower case, deduplicated in
/// order.
pub fn parse_arping(text: &str) -> Vec<String> {
    let mut macs: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| l.contains("reply from")) {
        let Some(open) = line.find('[') else { continue };
        let Some(len) = line[open..].find(']') else { continue };
        let mac = line[open + 1..open + len].to_ascii_lowercase();
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    macs
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", NS]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arping_replies_are_parsed() {
        let out = "ARPING 10.79.0.100 from 10.79.0.200 br0\n\
                   Unicast reply from 10.79.0.100 [52:54:00:79:00:02]  1.234ms\n\
                   Unicast reply from 10.79.0.100 [52:54:00:79:00:03]  1.5ms\n\
                   Unicast reply from 10.79.0.100 [52:54:00:79:00:02]  1.1ms\n\
                   Sent 1 probes (1 broadcast(s))\nReceived 3 response(s)\n";
        assert_eq!(parse_arping(out), vec![node_mac(2), node_mac(3)]);
        assert!(parse_arping("Sent 1 probes\nReceived 0 response(s)\n").is_empty());
    }

    #[test]
    fn addresses() {
        assert_eq!(node_ip(1), "10.79.0.11");
        assert_eq!(node_mac(3), "52:54:00:79:00:03");
    }
}

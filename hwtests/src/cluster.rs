//! What the VM tests share (`tests/smoke.rs`, `disk_boot.rs`, `pbx.rs`, `watchdog.rs`,
//! `power_cut_all.rs`):
//! the VMs with their serial consoles printed when a test fails, and the
//! client-side view of who holds the VIP.

use crate::net::{node_mac, Segment, VIP};
use crate::vm::Vm;

/// The three node ids.
pub const IDS: [u8; 3] = [1, 2, 3];

/// The VMs; prints every serial console when the test fails.
#[derive(Debug, Default)]
pub struct Cluster {
    /// The running VMs.
    pub vms: Vec<Vm>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for vm in &self.vms {
                eprintln!("===== serial console of VM {} ({}) =====", vm.id, vm.serial.display());
                eprintln!("{}", vm.serial_text());
            }
        }
    }
}

/// The node id owning this MAC.
pub fn id_of(mac: &str) -> Option<u8> {
    IDS.iter().copied().find(|id| node_mac(*id) == mac)
}

/// The one VM answering ARP for the VIP, once exactly one does (three
/// requests in a row agreeing), and it is not `not`.
pub fn sole_answerer(seg: &Segment, not: Option<u8>) -> Option<u8> {
    let mut seen = None;
    for _ in 0..3 {
        let macs = seg.arp_answerers(VIP);
        let [mac] = macs.as_slice() else { return None };
        let id = id_of(mac)?;
        if Some(id) == not || seen.is_some_and(|s| s != id) {
            return None;
        }
        seen = Some(id);
    }
    seen
}

/// The serial console without ANSI colour sequences (the supervisor's
/// log lines carry them), for matching log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m triad: x"), " INFO triad: x");
        assert_eq!(id_of(&node_mac(2)), Some(2));
        assert_eq!(id_of("52:54:00:00:00:09"), None);
    }
}

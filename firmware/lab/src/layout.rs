//! The lab's fixed addressing plan and the layout file (`layout.json`)
//! that tells scripts and tests where everything is.
//!
//! Addresses and MACs are constants so a test can tell nodes apart by the
//! MAC in an ARP or echo reply, and a node keeps its MAC across restarts as
//! a real box does.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the lab keeps configs, certificates, sockets, state and logs.
/// Every lab process has this path on its command line, which is how
/// `down` finds leftovers of a crashed run.
pub const LAB_DIR: &str = "/run/triad-lab";
/// The lab's subnet prefix length.
pub const PREFIX: u8 = 24;
/// The virtual IP the cluster moves.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The client that probes the VIP.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
/// Sender address of the observer's ARP sweeps. Nothing owns it; replies to
/// it reach the client port but not the client's ARP table.
pub const SWEEP_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 51);
/// Peer port of the supervisors.
pub const PEER_PORT: u16 = 7100;
/// Node ids.
pub const NODE_IDS: [u8; 3] = [1, 2, 3];
/// Interface name inside each node and the client.
pub const IFACE: &str = "eth0";
/// The bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("not a MAC address: {s}"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("not a MAC address: {s}"))?;
        }
        Ok(Mac(out))
    }
}

/// MAC of node `id`'s eth0 (locally administered).
pub fn node_mac(id: u8) -> Mac {
    Mac([0x02, 0x77, 0, 0, 0x01, id])
}
/// MAC of the switch-side end of node `id`'s veth.
pub fn switch_port_mac(id: u8) -> Mac {
    Mac([0x02, 0x77, 0, 0, 0x02, id])
}
/// MAC of the client's eth0.
pub const CLIENT_MAC: Mac = Mac([0x02, 0x77, 0, 0, 0, 0x50]);
/// MAC of the switch-side end of the client's veth.
pub const CLIENT_PORT_MAC: Mac = Mac([0x02, 0x77, 0, 0, 0x02, 0x50]);
/// Sender MAC of the observer's ARP sweeps.
pub const SWEEP_MAC: Mac = Mac([0x02, 0x77, 0, 0, 0, 0x51]);

/// Node `id`'s own address.
pub fn node_ip(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + id)
}
/// Name of node `id`'s port on the bridge (in the switch namespace).
pub fn switch_port(id: u8) -> String {
    format!("s{id}")
}
/// Node `id`'s directory under the lab dir.
/// Where a node's replicated volume lives: on a real disk, not the tmpfs
/// of [`LAB_DIR`], so its fdatasyncs cost what they cost.
pub const VOLUME_DIR: &str = "/var/tmp/triad-lab";
/// Size of the lab's replicated volume.
pub const VOLUME_MIB: u64 = 256;
/// Default journal size of a lab node: the supervisor's own default
/// (`journal_mib = 64`). An 8 MiB journal forced a checkpoint (an fsync of
/// the data file) every few MiB of writes and capped the uncommitted span
/// at 4 MiB, which the volume benchmark measured as the lab's doing, not
/// Triad's; tests that need a journal that fills ask for a small one.
pub const JOURNAL_MIB: u64 = 64;

/// Node `id`'s volume files (data, journal, metadata).
pub fn volume_dir(id: u8) -> PathBuf {
    Path::new(VOLUME_DIR).join(format!("n{id}"))
}

/// The unix socket of node `id`'s NBD export (answers only on the active node).
pub fn nbd_socket(id: u8) -> PathBuf {
    node_dir(id).join("nbd.sock")
}

/// An NBD URI for node `id`'s export, for qemu-io, nbdinfo, nbdcopy, fio.
pub fn nbd_uri(id: u8) -> String {
    format!("nbd+unix:///triad?socket={}", nbd_socket(id).display())
}

pub fn node_dir(id: u8) -> PathBuf {
    Path::new(LAB_DIR).join(format!("n{id}"))
}
/// The layout file.
pub fn layout_path() -> PathBuf {
    Path::new(LAB_DIR).join("layout.json")
}

/// The client as recorded in the layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientLayout {
    pub netns: String,
    pub interface: String,
    pub mac: Mac,
    pub address: String,
    pub switch_port: String,
}

/// One node as recorded in the layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLayout {
    pub id: u8,
    pub interface: String,
    pub mac: Mac,
    pub address: String,
    pub switch_port: String,
    pub switch_port_mac: Mac,
    pub control_socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The supervisor (PID 1 of the node's namespaces), as the host sees it;
    /// for keepalived, the namespace holder.
    pub supervisor_pid: i32,
    /// The `unshare` process that launched it.
    pub launcher_pid: i32,
    /// How to run a command inside the node's network namespace.
    pub nsenter: String,
}

/// The whole lab, written to `layout.json` by `up` and kept current by
/// restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    pub schema: u32,
    /// "triad" or "keepalived".
    pub payload: String,
    pub profile: String,
    pub dir: PathBuf,
    pub triad: Option<PathBuf>,
    pub switch_netns: String,
    pub bridge: String,
    pub vip: String,
    pub peer_port: u16,
    pub client: ClientLayout,
    pub nodes: Vec<NodeLayout>,
}

impl Layout {
    /// Node `id`'s entry.
    pub fn node(&self, id: u8) -> Option<&NodeLayout> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node `id`'s entry, mutable.
    pub fn node_mut(&mut self, id: u8) -> Option<&mut NodeLayout> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }

    /// Which node owns `mac`, if any.
    pub fn node_by_mac(&self, mac: Mac) -> Option<u8> {
        self.nodes.iter().find(|n| n.mac == mac).map(|n| n.id)
    }

    /// Writes the layout atomically (temp file then rename), so a script
    /// reading it never sees half a file.
    pub fn save(&self) -> io::Result<PathBuf> {
        let path = layout_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads the layout of the running lab.
    pub fn load() -> io::Result<Layout> {
        let text = std::fs::read_to_string(layout_path())?;
        serde_json::from_str(&text).map_err(io::Error::other)
    }
}

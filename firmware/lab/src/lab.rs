//! Building, driving and tearing down the lab.
//!
//! ```text
//!            tlab-sw (switch netns)
//!   ┌──────────────── br0 ────────────────┐
//!   sc        s1          s2          s3      switch-side veth ends
//!   │         │           │           │
//!  eth0      eth0        eth0        eth0     02:77:00:00:01:0N on nodes
//! client    node 1      node 2      node 3
//! (named    (unnamed netns, held only by its supervisor,
//!  netns)    PID 1 of its own PID namespace)
//! ```
//!
//! A node's namespace lives exactly as long as its supervisor: a kill -9
//! takes the interface away, the switch-side end vanishes with it, and a
//! restart is a new process in a new namespace re-attached to the bridge.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cmd::{self, CmdError};
use crate::keepalived;
use crate::layout::{
    self, node_ip, node_mac, switch_port, switch_port_mac, ClientLayout, Layout, Mac, NodeLayout, BRIDGE, CLIENT_IP,
    CLIENT_MAC, CLIENT_PORT_MAC, IFACE, LAB_DIR, NODE_IDS, PEER_PORT, PREFIX, VIP,
};
use crate::netns::{self, NetnsError, CLIENT_NS, SWITCH_NS};
use crate::spawn::{self, Launched, SpawnError};
use crate::triad::{self, Status, TriadError};
use crate::wait;

/// Timing profile of the triad supervisors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Default,
    Fast,
}

impl Profile {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Fast => "fast",
        }
    }
}

/// What runs on the nodes.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The triad supervisor at `bin` with a timing profile and a journal
    /// of `journal_mib` MiB per node ([`layout::JOURNAL_MIB`] unless a
    /// test needs a small one that fills, e.g. to force compaction);
    /// `opts`: real-time scheduling (off only for the equal-priority
    /// soak) and a Kamailio PBX on the active node.
    Triad { bin: PathBuf, profile: Profile, journal_mib: u64, opts: triad::NodeOptions },
    /// keepalived with `advert` seconds between VRRP adverts ("1", "0.1").
    Keepalived { advert: String },
}

/// The environment variable naming the directory where the supervisor
/// looks for its test-only fault hooks (`triad::runtime`).
pub const FAULT_HOOKS_ENV: &str = "TRIAD_FAULT_HOOKS";
/// Present: the supervisor's next fence call waits right before the kernel.
pub const HOLD_BEFORE_FENCE: &str = "hold-before-fence";
/// Written by the supervisor while it waits there.
pub const HELD_BEFORE_FENCE: &str = "held-before-fence";

/// A lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, veth, raw sockets); run as root")]
    NotRoot,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Triad(#[from] TriadError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no lab is running (could not read {path}); start one with `triad-lab up`")]
    NoLayout {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no node {0} in the lab")]
    NoNode(u8),
    #[error("timed out after {secs} s waiting for {what}; last state: {detail}; logs: {logs}")]
    Timeout { what: String, secs: u64, detail: String, logs: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Fails unless running as root.
pub fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// A running lab: its layout and what runs on its nodes.
#[derive(Debug)]
pub struct Lab {
    pub layout: Layout,
    pub payload: Payload,
}

/// How long a killed node's namespace may take to go.
const KILL_WAIT: Duration = Duration::from_secs(15);

impl Lab {
    /// Builds the lab from scratch (tearing down any previous one first),
    /// starts the three nodes, waits for one leader holding the VIP, and
    /// lets the client learn the VIP's MAC once before it stops resolving.
    pub fn up(payload: Payload) -> Result<Lab, LabError> {
        require_root()?;
        Lab::down()?;
        let dir = Path::new(LAB_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(format!("removing {}", dir.display())))?;
        }
        // A new lab is a new cluster: every node formats a blank volume.
        let vol = Path::new(layout::VOLUME_DIR);
        if vol.exists() {
            std::fs::remove_dir_all(vol).map_err(io_err(format!("removing {}", vol.display())))?;
        }
        for id in NODE_IDS {
            let nd = layout::node_dir(id);
            std::fs::create_dir_all(nd.join("state")).map_err(io_err(format!("creating {}", nd.display())))?;
            let vd = layout::volume_dir(id);
            std::fs::create_dir_all(&vd).map_err(io_err(format!("creating {}", vd.display())))?;
        }
        build_switch_and_client()?;

        let (payload_name, profile, triad_bin) = match &payload {
            Payload::Triad { bin, profile, .. } => {
                let certs = dir.join("certs");
                std::fs::create_dir_all(&certs).map_err(io_err("creating the certs dir"))?;
                triad::make_certs(bin, &certs, &NODE_IDS)?;
                ("triad", profile.as_str().to_string(), Some(bin.clone()))
            }
            Payload::Keepalived { advert } => ("keepalived", format!("advert-{advert}"), None),
        };
        let mut nodes = Vec::new();
        for id in NODE_IDS {
            let nd = layout::node_dir(id);
            let config = match &payload {
                Payload::Triad { bin: _, profile, journal_mib, opts } => {
                    triad::write_config(id, profile.as_str(), *journal_mib, &dir.join("certs"), *opts)?
                }
                Payload::Keepalived { advert } => keepalived::write_config(id, advert)
                    .map_err(io_err(format!("writing keepalived config of node {id}")))?,
            };
            nodes.push(NodeLayout {
                id,
                interface: IFACE.into(),
                mac: node_mac(id),
                address: format!("{}/{PREFIX}", node_ip(id)),
                switch_port: switch_port(id),
                switch_port_mac: switch_port_mac(id),
                control_socket: nd.join("control.sock"),
                config,
                log: nd.join(format!("{payload_name}.log")),
                supervisor_pid: 0,
                launcher_pid: 0,
                nsenter: String::new(),
            });
        }
        let layout = Layout {
            schema: 1,
            payload: payload_name.into(),
            profile,
            dir: dir.to_path_buf(),
            triad: triad_bin,
            switch_netns: SWITCH_NS.into(),
            bridge: BRIDGE.into(),
            vip: format!("{VIP}/{PREFIX}"),
            peer_port: PEER_PORT,
            client: ClientLayout {
                netns: CLIENT_NS.into(),
                interface: IFACE.into(),
                mac: CLIENT_MAC,
                address: format!("{CLIENT_IP}/{PREFIX}"),
                switch_port: "sc".into(),
            },
            nodes,
        };
        let mut lab = Lab { layout, payload };
        for id in NODE_IDS {
            lab.start_node(id)?;
        }
        lab.save()?;
        if let Payload::Triad { bin, opts, .. } = &lab.payload {
            if opts.pbx {
                lab.create_filesystem(bin)?;
            }
        }
        lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
        lab.client_learn_vip()?;
        Ok(lab)
    }

    /// Cluster creation's last step with a PBX: the active node found the
    /// new volume without a filesystem (it never formats on its own), and
    /// the operator (this) asks it to create one.
    fn create_filesystem(&self, bin: &Path) -> Result<(), LabError> {
        let found = wait::until(Duration::from_secs(30), Duration::from_millis(50), || {
            NODE_IDS.into_iter().find(|id| {
                self.status(*id).ok().and_then(|s| s.filesystem).and_then(|f| f.blocked).as_deref()
                    == Some("NoFilesystem")
            })
        });
        let Some(id) = found else {
            return Err(LabError::Timeout {
                what: "an active node to find the new volume without a filesystem".into(),
                secs: 30,
                detail: String::new(),
                logs: LAB_DIR.into(),
            });
        };
        let node = self.node(id)?;
        cmd::run(
            &bin.display().to_string(),
            &["format-volume", "--socket", &node.control_socket.display().to_string()],
        )?;
        Ok(())
    }

    /// The running lab, from its layout file.
    pub fn load() -> Result<Lab, LabError> {
        let layout = Layout::load().map_err(|source| LabError::NoLayout { path: layout::layout_path(), source })?;
        let payload = match (layout.payload.as_str(), &layout.triad) {
            ("triad", Some(bin)) => Payload::Triad {
                bin: bin.clone(),
                profile: if layout.profile == "fast" { Profile::Fast } else { Profile::Default },
                // Only `up` writes configs; a loaded lab keeps its files.
                journal_mib: layout::JOURNAL_MIB,
                opts: triad::NodeOptions::default(),
            },
            _ => Payload::Keepalived { advert: layout.profile.trim_start_matches("advert-").to_string() },
        };
        Ok(Lab { layout, payload })
    }

    /// Writes the layout file and returns its path.
    pub fn save(&self) -> Result<PathBuf, LabError> {
        self.layout.save().map_err(io_err("writing the layout file"))
    }

    /// Tears down every trace of a lab: processes of this or a crashed run
    /// (by layout pids, then by the lab dir on their command line, limited
    /// to processes outside our own network namespace so a `tail -f` of a
    /// log survives), then the switch and client namespaces. Idempotent.
    pub fn down() -> Result<(), LabError> {
        require_root()?;
        let ours = netns::net_ns_of(std::process::id() as i32).ok();
        let mut victims: Vec<i32> = Vec::new();
        if let Ok(l) = Layout::load() {
            for n in &l.nodes {
                for pid in [n.supervisor_pid, n.launcher_pid] {
                    if pid > 0 && spawn::cmdline(pid).is_some_and(|c| c.contains(LAB_DIR)) {
                        if let Ok(ino) = netns::net_ns_of(pid) {
                            if Some(ino) != ours {
                                victims.extend(netns::pids_in(ino));
                            }
                        }
                        victims.push(pid);
                    }
                }
            }
        }
        for pid in spawn::pids_matching(LAB_DIR) {
            if netns::net_ns_of(pid).ok() != ours {
                victims.push(pid);
            }
        }
        victims.sort_unstable();
        victims.dedup();
        for pid in &victims {
            spawn::signal(*pid, Signal::SIGKILL)?;
        }
        let left = wait::until(Duration::from_secs(5), Duration::from_millis(20), || {
            let alive: Vec<i32> = victims.iter().copied().filter(|p| spawn::alive(*p)).collect();
            alive.is_empty().then_some(())
        });
        if left.is_none() {
            return Err(LabError::Timeout {
                what: "lab processes to exit".into(),
                secs: 5,
                detail: format!("{victims:?}"),
                logs: LAB_DIR.into(),
            });
        }
        netns::delete(CLIENT_NS)?;
        netns::delete(SWITCH_NS)?;
        // Logs and configs stay for post-mortems; the layout goes, so
        // `status` does not describe a lab that no longer exists.
        match std::fs::remove_file(layout::layout_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LabError::Io { what: "removing the layout file".into(), source }),
        }
    }

    /// Starts node `id` in fresh namespaces and attaches it to the bridge.
    fn start_node(&mut self, id: u8) -> Result<(), LabError> {
        let node = self.layout.node(id).ok_or(LabError::NoNode(id))?.clone();
        let port = switch_port(id);
        // The previous incarnation's switch port disappears with its
        // namespace; wait for that before creating a new one of that name.
        let gone = wait::until(Duration::from_secs(5), Duration::from_millis(20), || {
            (!link_exists(SWITCH_NS, &port)).then_some(())
        });
        if gone.is_none() {
            return Err(LabError::Timeout {
                what: format!("switch port {port} of the previous node {id} to vanish"),
                secs: 5,
                detail: String::new(),
                logs: node.log.display().to_string(),
            });
        }
        append_marker(&node.log, &format!("triad-lab: starting node {id}"));
        let launched: Launched = match &self.payload {
            Payload::Triad { bin, .. } => {
                // The supervisor's test-only fault hooks look in the node's
                // directory (docs/lab.md, "Fault hooks").
                let hooks = [(FAULT_HOOKS_ENV, layout::node_dir(id).display().to_string())];
                let args = ["run".into(), "--config".into(), node.config.display().to_string()];
                spawn::launch_env(bin, &args, &node.log, &hooks)?
            }
            Payload::Keepalived { .. } => {
                // A shell that never exits holds the namespaces; its
                // command line carries the lab dir so `down` finds it.
                let holder = layout::node_dir(id).join("holder");
                spawn::launch(
                    Path::new("/bin/sh"),
                    &["-c".into(), "while :; do sleep 3600; done".into(), holder.display().to_string()],
                    &node.log,
                )?
            }
        };
        let pid = launched.pid.to_string();
        let sw_mac = switch_port_mac(id).to_string();
        let mac = node_mac(id).to_string();
        cmd::ip(&[
            "-n", SWITCH_NS, "link", "add", &port, "address", &sw_mac, "type", "veth", "peer", "name", IFACE,
            "address", &mac, "netns", &pid,
        ])?;
        cmd::ip(&["-n", SWITCH_NS, "link", "set", &port, "master", BRIDGE, "up"])?;
        cmd::ip_in_pid(launched.pid, &["link", "set", "lo", "up"])?;
        if let Payload::Keepalived { .. } = &self.payload {
            cmd::ip_in_pid(launched.pid, &["link", "set", IFACE, "up"])?;
            cmd::ip_in_pid(launched.pid, &["addr", "add", &node.address, "dev", IFACE])?;
            // Pid files of a killed instance would make the new one exit
            // with "daemon is already running".
            for f in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
                let _ = std::fs::remove_file(layout::node_dir(id).join(f));
            }
            spawn_keepalived(launched.pid, id, &node.config, &node.log)?;
        }
        if let Some(n) = self.layout.node_mut(id) {
            n.supervisor_pid = launched.pid;
            n.launcher_pid = launched.launcher;
            n.nsenter = format!("nsenter -t {} -n", launched.pid);
        }
        Ok(())
    }

    /// Node `id`'s layout entry.
    pub fn node(&self, id: u8) -> Result<&NodeLayout, LabError> {
        self.layout.node(id).ok_or(LabError::NoNode(id))
    }

    /// Whether node `id`'s supervisor (or holder) is alive.
    pub fn node_alive(&self, id: u8) -> bool {
        self.node(id).is_ok_and(|n| spawn::alive(n.supervisor_pid))
    }

    /// kill -9 of everything in node `id`: for triad that is the
    /// supervisor, which as PID 1 takes its whole PID namespace with it.
    /// Returns once the node's switch port has vanished.
    pub fn kill_node(&self, id: u8) -> Result<(), LabError> {
        let n = self.node(id)?;
        if let Ok(ino) = netns::net_ns_of(n.supervisor_pid) {
            if Some(ino) != netns::net_ns_of(std::process::id() as i32).ok() {
                for pid in netns::pids_in(ino) {
                    spawn::signal(pid, Signal::SIGKILL)?;
                }
            }
        }
        spawn::signal(n.supervisor_pid, Signal::SIGKILL)?;
        let port = n.switch_port.clone();
        // Seconds, not milliseconds, under load: the namespace goes only
        // when its last process is gone (seen: more than 5 s after an
        // nbdfuse aborted on an assertion when the isolated node's NBD
        // server closed its connection).
        wait::until(KILL_WAIT, Duration::from_millis(10), || (!link_exists(SWITCH_NS, &port)).then_some(())).ok_or_else(
            || LabError::Timeout {
                what: format!("node {id}'s link to vanish after kill -9"),
                secs: KILL_WAIT.as_secs(),
                detail: String::new(),
                logs: n.log.display().to_string(),
            },
        )
    }

    /// Kills node `id` if it is alive and starts a new one in its place
    /// (same config, same state dir, same MAC: a reboot of the box).
    pub fn restart_node(&mut self, id: u8) -> Result<(), LabError> {
        self.kill_node(id)?;
        self.start_node(id)?;
        self.save()?;
        Ok(())
    }

    /// The crash used by the benchmark: kill -9 for triad; for keepalived,
    /// freeze every process of the node and take its link down (kill -9 of
    /// keepalived is a clean shutdown, not a crash).
    pub fn crash_node(&self, id: u8) -> Result<(), LabError> {
        match self.payload {
            Payload::Triad { .. } => self.kill_node(id),
            Payload::Keepalived { .. } => {
                self.signal_node_processes(id, Signal::SIGSTOP)?;
                self.set_link(id, false)
            }
        }
    }

    /// Sends `sig` to every process in node `id`'s network namespace.
    pub fn signal_node_processes(&self, id: u8, sig: Signal) -> Result<(), LabError> {
        let n = self.node(id)?;
        let ino = netns::net_ns_of(n.supervisor_pid).map_err(io_err(format!("finding node {id}'s namespace")))?;
        for pid in netns::pids_in(ino) {
            spawn::signal(pid, sig)?;
        }
        Ok(())
    }

    /// SIGSTOP (true) or SIGCONT (false) of node `id`'s supervisor only.
    pub fn freeze_supervisor(&self, id: u8, frozen: bool) -> Result<(), LabError> {
        let n = self.node(id)?;
        let sig = if frozen { Signal::SIGSTOP } else { Signal::SIGCONT };
        spawn::signal(n.supervisor_pid, sig)?;
        Ok(())
    }

    /// Arms node `id`'s freeze-before-fence hook: its supervisor's next
    /// fence call (a refresh, or a grant's batch) stops right before the
    /// kernel gets it, with its timeout already computed, and the whole
    /// event loop waits there until [`release_fence_hold`](Self::release_fence_hold).
    pub fn hold_before_fence(&self, id: u8) -> Result<(), LabError> {
        let flag = layout::node_dir(id).join(HOLD_BEFORE_FENCE);
        std::fs::write(&flag, b"").map_err(|e| LabError::Io { what: format!("create {}", flag.display()), source: e })
    }

    /// Whether node `id`'s supervisor is waiting in that hook now.
    pub fn held_before_fence(&self, id: u8) -> bool {
        layout::node_dir(id).join(HELD_BEFORE_FENCE).exists()
    }

    /// Lets node `id`'s held fence call go to the kernel.
    pub fn release_fence_hold(&self, id: u8) -> Result<(), LabError> {
        let flag = layout::node_dir(id).join(HOLD_BEFORE_FENCE);
        match std::fs::remove_file(&flag) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::Io { what: format!("remove {}", flag.display()), source: e }),
        }
    }

    /// The length of node `id`'s log now: a mark for [`log_since`](Self::log_since).
    pub fn log_len(&self, id: u8) -> u64 {
        self.node(id).ok().and_then(|n| std::fs::metadata(&n.log).ok()).map_or(0, |m| m.len())
    }

    /// Node `id`'s log from byte `from` on, without colour codes.
    pub fn log_since(&self, id: u8, from: u64) -> String {
        let all = self.node(id).ok().and_then(|n| std::fs::read(&n.log).ok()).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(all.get(from as usize..).unwrap_or_default()))
    }

    /// Takes node `id`'s switch-side port down or up: what the network sees
    /// when a box loses power or its cable.
    pub fn set_link(&self, id: u8, up: bool) -> Result<(), LabError> {
        let port = switch_port(id);
        cmd::ip(&["-n", SWITCH_NS, "link", "set", &port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Runs `ip args` inside node `id`'s network namespace.
    pub fn ip_in(&self, id: u8, args: &[&str]) -> Result<String, LabError> {
        Ok(cmd::ip_in_pid(self.node(id)?.supervisor_pid, args)?)
    }

    /// Runs `program args` inside node `id`'s network namespace.
    pub fn run_in(&self, id: u8, program: &str, args: &[&str]) -> Result<String, LabError> {
        let pid = self.node(id)?.supervisor_pid.to_string();
        let mut full = vec!["-t", &pid, "-n", program];
        full.extend_from_slice(args);
        Ok(cmd::run("nsenter", &full)?)
    }

    /// Whether the kernel of node `id` has the VIP on its interface.
    pub fn vip_on(&self, id: u8) -> bool {
        if !self.node_alive(id) {
            return false;
        }
        self.ip_in(id, &["-4", "-o", "addr", "show", "dev", IFACE]).is_ok_and(|out| out.contains(&format!(" {VIP}/")))
    }

    /// The triad binary, if the payload is triad.
    pub fn triad_bin(&self) -> Option<&Path> {
        match &self.payload {
            Payload::Triad { bin, .. } => Some(bin),
            Payload::Keepalived { .. } => None,
        }
    }

    /// `triad status --json` of node `id`.
    pub fn status(&self, id: u8) -> Result<Status, LabError> {
        let bin = self.triad_bin().ok_or_else(|| LabError::Io {
            what: "status needs the triad payload".into(),
            source: io::Error::other("keepalived has no status"),
        })?;
        Ok(triad::status(bin, &self.node(id)?.control_socket)?)
    }

    /// One line per node describing what it reports, for error messages.
    pub fn describe(&self, ids: &[u8]) -> String {
        let mut s = Vec::new();
        for id in ids {
            let vip = self.vip_on(*id);
            let line = match self.triad_bin() {
                Some(_) => match self.status(*id) {
                    Ok(st) => format!(
                        "n{id}: role={} epoch={} leader={:?} vip.held={} phase={} kernel_vip={vip}",
                        st.role, st.epoch, st.leader, st.vip.held, st.vip.phase
                    ),
                    Err(e) => format!("n{id}: status failed ({e}) kernel_vip={vip}"),
                },
                None => format!("n{id}: alive={} kernel_vip={vip}", self.node_alive(*id)),
            };
            s.push(line);
        }
        s.join("; ")
    }

    /// The leader if the nodes in `ids` agree on one that holds the VIP,
    /// all of them see each other, and the VIP is on exactly that node's
    /// interface.
    pub fn healthy_leader(&self, ids: &[u8]) -> Option<u8> {
        let holders: Vec<u8> = ids.iter().copied().filter(|id| self.vip_on(*id)).collect();
        let [leader] = holders[..] else {
            return None;
        };
        if self.triad_bin().is_none() {
            return Some(leader);
        }
        for id in ids {
            let st = self.status(*id).ok()?;
            let ok_role = if *id == leader {
                st.role == "leader" && st.vip.held
            } else {
                st.role == "follower" && st.leader == Some(leader) && !st.vip.held
            };
            let peers_ok = st.peers.iter().filter(|p| ids.contains(&p.node_id)).all(|p| p.reachable);
            if !ok_role || !peers_ok {
                return None;
            }
        }
        Some(leader)
    }

    /// Waits until `healthy_leader(ids)` holds; returns the leader.
    pub fn wait_healthy(&self, ids: &[u8], timeout: Duration) -> Result<u8, LabError> {
        wait::until(timeout, Duration::from_millis(100), || self.healthy_leader(ids)).ok_or_else(|| LabError::Timeout {
            what: "one leader holding the VIP, seen by all live nodes".into(),
            secs: timeout.as_secs(),
            detail: self.describe(ids),
            logs: self.log_paths(),
        })
    }

    /// All supervisor log paths, for error messages.
    pub fn log_paths(&self) -> String {
        self.layout.nodes.iter().map(|n| n.log.display().to_string()).collect::<Vec<_>>().join(" ")
    }

    /// The MAC in the client's neighbour entry for the VIP, if it has one.
    pub fn client_neigh(&self) -> Option<Mac> {
        let out = cmd::ip(&["-n", CLIENT_NS, "-j", "neigh", "show", &VIP.to_string(), "dev", IFACE]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let mac = v.get(0)?.get("lladdr")?.as_str()?;
        Mac::try_from(mac.to_string()).ok()
    }

    /// The client resolves the VIP once by ARP; afterwards it may never
    /// solicit again, so only gratuitous ARP can move its entry.
    fn client_learn_vip(&self) -> Result<(), LabError> {
        let vip = VIP.to_string();
        let learnt = wait::until(Duration::from_secs(10), Duration::from_millis(100), || {
            let _ = cmd::run("ip", &["netns", "exec", CLIENT_NS, "ping", "-c", "1", "-W", "1", &vip]);
            self.client_neigh()
        });
        if learnt.is_none() {
            return Err(LabError::Timeout {
                what: "the client to resolve the VIP".into(),
                secs: 10,
                detail: self.describe(&NODE_IDS),
                logs: self.log_paths(),
            });
        }
        // The client may still talk to the nodes' own addresses (tests
        // connect to their peer ports); those entries are static so that
        // turning solicitation off below does not cut them off.
        for id in NODE_IDS {
            cmd::ip(&[
                "-n",
                CLIENT_NS,
                "neigh",
                "replace",
                &node_ip(id).to_string(),
                "lladdr",
                &node_mac(id).to_string(),
                "dev",
                IFACE,
                "nud",
                "permanent",
            ])?;
        }
        let base = format!("net.ipv4.neigh.{IFACE}");
        for key in ["ucast_solicit", "mcast_solicit", "app_solicit", "mcast_resolicit"] {
            netns::sysctl(CLIENT_NS, &format!("{base}.{key}"), "0")?;
        }
        Ok(())
    }
}

/// Creates the switch namespace with its bridge and the client attached.
fn build_switch_and_client() -> Result<(), LabError> {
    netns::add(SWITCH_NS)?;
    netns::add(CLIENT_NS)?;
    cmd::ip(&["-n", SWITCH_NS, "link", "add", BRIDGE, "type", "bridge"])?;
    cmd::ip(&["-n", SWITCH_NS, "link", "set", BRIDGE, "up"])?;
    cmd::ip(&[
        "-n",
        SWITCH_NS,
        "link",
        "add",
        "sc",
        "address",
        &CLIENT_PORT_MAC.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        IFACE,
        "address",
        &CLIENT_MAC.to_string(),
        "netns",
        CLIENT_NS,
    ])?;
    cmd::ip(&["-n", SWITCH_NS, "link", "set", "sc", "master", BRIDGE, "up"])?;
    cmd::ip(&["-n", CLIENT_NS, "link", "set", IFACE, "up"])?;
    cmd::ip(&["-n", CLIENT_NS, "addr", "add", &format!("{CLIENT_IP}/{PREFIX}"), "dev", IFACE])?;
    // Keep the client's entry for the VIP from ageing on its own: it stays
    // usable for an hour and never goes to PROBE, so only a gratuitous ARP
    // (or its absence) decides where the client's packets go.
    let base = format!("net.ipv4.neigh.{IFACE}");
    for (key, value) in
        [("base_reachable_time_ms", "3600000"), ("delay_first_probe_time", "3600"), ("gc_stale_time", "3600")]
    {
        netns::sysctl(CLIENT_NS, &format!("{base}.{key}"), value)?;
    }
    Ok(())
}

/// Whether `link` exists in the named namespace.
fn link_exists(ns: &str, link: &str) -> bool {
    cmd::ip(&["-n", ns, "link", "show", "dev", link]).is_ok()
}

/// Starts keepalived in node `id`'s namespaces (network and PID, so it dies
/// with the holder).
fn spawn_keepalived(holder: i32, id: u8, conf: &Path, log: &Path) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening {}", log.display())))
    };
    let mut child = std::process::Command::new("nsenter")
        .args(["-t", &holder.to_string(), "-n", "-p", "--", "keepalived"])
        .args(keepalived::args(id, conf))
        .stdin(std::process::Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0)
        .spawn()
        .map_err(io_err("starting keepalived (apt-get install keepalived)"))?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Appends a marker line to a node's log so restarts are visible in it.
fn append_marker(log: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "==== {text} ====");
    }
}

/// `s` without ANSI colour sequences (ESC ... m), as the supervisors' logs
/// carry them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

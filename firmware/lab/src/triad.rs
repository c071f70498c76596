//! Driving the `triad` supervisor through its CLI contract only: `certs`,
//! `run --config`, `status --json`. The lab never speaks the control
//! socket's protocol itself, so it keeps working while that evolves.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cmd::{self, CmdError};
use crate::layout::{self, node_ip, NODE_IDS, PEER_PORT, PREFIX, VIP, VOLUME_MIB};

/// Something about the triad binary or its output went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TriadError {
    #[error("triad binary not found at {0} (build it: cargo build -p triad, or pass --triad PATH / TRIAD_BIN)")]
    Missing(PathBuf),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("could not parse `triad status --json` output: {text}")]
    Status {
        text: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The VIP part of `triad status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VipStatus {
    #[serde(default)]
    pub held: bool,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub conflict_mac: Option<String>,
}

/// The `fence` part of `triad status --json` (docs/status-schema.md).
#[derive(Debug, Clone, Deserialize)]
pub struct FenceStatus {
    #[serde(default)]
    pub installed: bool,
    #[serde(default)]
    pub intact: bool,
    #[serde(default)]
    pub element_present: bool,
}

/// One peer in `triad status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerStatus {
    pub node_id: u8,
    #[serde(default)]
    pub reachable: bool,
    /// The peer last said its failover readiness check passes.
    #[serde(default)]
    pub ready: bool,
}

/// `triad status --json` (schema 1); only the fields the lab uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub node_id: u8,
    pub role: String,
    pub epoch: u64,
    pub leader: Option<u8>,
    #[serde(default)]
    pub lease_remaining_ms: u64,
    pub vip: VipStatus,
    #[serde(default)]
    pub standby: bool,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    #[serde(default)]
    pub fence: Option<FenceStatus>,
    #[serde(default)]
    pub pbx: Option<PbxStatus>,
    #[serde(default)]
    pub filesystem: Option<FsStatus>,
    /// On a node with a PBX: could it take the active role now.
    #[serde(default)]
    pub readiness: Option<ReadinessStatus>,
}

/// The `readiness` part of `triad status --json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReadinessStatus {
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub problems: Vec<String>,
}

/// The `filesystem` part of `triad status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct FsStatus {
    /// Mounted and not going down.
    #[serde(default)]
    pub mounted: bool,
    /// Why it waits for an operator (`NoFilesystem`, `NeedsRepair`).
    #[serde(default)]
    pub blocked: Option<String>,
    /// The step in flight.
    #[serde(default)]
    pub step: Option<String>,
    /// The last duration of each step, in ms.
    #[serde(default)]
    pub last_took_ms: std::collections::BTreeMap<String, u64>,
}

/// The `pbx` part of `triad status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct PbxStatus {
    /// The supervision state, e.g. `Running { run: 1, since: .. }`.
    #[serde(default)]
    pub state: String,
    /// Failures within the window.
    #[serde(default)]
    pub failures_in_window: u32,
    /// The node wants to hand the active role over (or refuses it).
    #[serde(default)]
    pub hand_over_wanted: bool,
    /// A hand-over no peer could take: why.
    #[serde(default)]
    pub alert: Option<String>,
}

/// Where to find the triad binary: an explicit path, `TRIAD_BIN`, or the
/// workspace's target dir (release preferred, as the benchmark wants).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, TriadError> {
    if let Some(p) = explicit {
        return if p.exists() { Ok(p.to_path_buf()) } else { Err(TriadError::Missing(p.to_path_buf())) };
    }
    if let Some(p) = std::env::var_os("TRIAD_BIN") {
        let p = PathBuf::from(p);
        return if p.exists() { Ok(p) } else { Err(TriadError::Missing(p)) };
    }
    // Next to our own executable (target/<triple>/<profile>/), then the
    // workspace target dir relative to this crate's sources.
    let mut candidates = Vec::new();
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            candidates.push(dir.join("triad"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("triad"));
            }
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/x86_64-unknown-linux-gnu");
    candidates.push(ws.join("release/triad"));
    candidates.push(ws.join("debug/triad"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| TriadError::Missing(ws.join("{release,debug}/triad")))
}

/// Creates the cluster CA and one certificate per node in `dir`.
pub fn make_certs(bin: &Path, dir: &Path, nodes: &[u8]) -> Result<(), TriadError> {
    let b = bin.to_string_lossy();
    let d = dir.to_string_lossy();
    cmd::run(&b, &["certs", "init", "--dir", &d])?;
    for id in nodes {
        cmd::run(&b, &["certs", "issue", "--dir", &d, "--node", &id.to_string()])?;
    }
    Ok(())
}

/// What a node's config says beyond its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// SCHED_FIFO 50 for the supervisor (the lab's normal setting);
    /// without it the supervisor competes with other processes at their
    /// own priority (the equal-priority soak).
    pub realtime: bool,
    /// A `[pbx]` table running Kamailio (`pbx_text`).
    pub pbx: bool,
    /// `node.init = true`: the supervisor acts as its namespace's init
    /// (`init_text`).
    pub init: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { realtime: true, pbx: false, init: false }
    }
}

/// The hostname a lab node in init mode gives itself.
pub fn init_hostname(id: u8) -> String {
    format!("tlab-n{id}")
}

/// Node `id`'s `[node]` lines beyond `init = false`, in init mode: its
/// own hostname (its UTS namespace), only the sysctls the kernel keeps per
/// network namespace (the machine running the lab keeps its global ones),
/// and power off at the end (in a child PID namespace: the init ends by
/// SIGINT, which the test sees in its launcher's status).
pub fn init_text(id: u8) -> String {
    format!(
        "init = true\nhostname = \"{}\"\ninit_sysctls = \"namespaced\"\nshutdown = \"poweroff\"\n",
        init_hostname(id)
    )
}

/// The TOML config of node `id`. `certs` holds ca.pem and node-ID.{pem,key}.
pub fn config_text(id: u8, profile: &str, journal_mib: u64, certs: &Path, opts: NodeOptions) -> String {
    let dir = layout::node_dir(id);
    let mut peers = String::new();
    for p in NODE_IDS.iter().filter(|p| **p != id) {
        peers.push_str(&format!("[[cluster.peers]]\nid = {p}\naddress = \"{}\"\n", node_ip(*p)));
    }
    format!(
        r#"# Written by triad-lab for node {id}.
[node]
id = {id}
interface = "{iface}"
address = "{ip}/{PREFIX}"
control_socket = "{sock}"
state_dir = "{state}"
{init}
[cluster]
vip = "{VIP}/{PREFIX}"
peer_port = {PEER_PORT}
{peers}
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[timing]
profile = "{profile}"

[realtime]
enabled = {realtime}
priority = 50
lock_memory = true

[volume]
data = "{vol}/data.img"
size_mib = {VOLUME_MIB}
journal = "{vol}/journal.img"
journal_mib = {journal_mib}
meta = "{vol}/meta.img"
granularity_kib = 4
resync_rate_mib = 16
nbd_socket = "{nbd}"
# The lab creates a new cluster: all three volumes are formatted as voters.
new_cluster = true
{pbx}"#,
        realtime = opts.realtime,
        init = if opts.init { init_text(id) } else { "init = false\n".into() },
        pbx = if opts.pbx { pbx_text(id) } else { String::new() },
        vol = layout::volume_dir(id).display(),
        nbd = layout::nbd_socket(id).display(),
        iface = layout::IFACE,
        ip = node_ip(id),
        sock = dir.join("control.sock").display(),
        state = dir.join("state").display(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("node-{id}.pem")).display(),
        key = certs.join(format!("node-{id}.key")).display(),
    )
}

/// Writes node `id`'s config to its node dir and returns the path.
pub fn write_config(
    id: u8,
    profile: &str,
    journal_mib: u64,
    certs: &Path,
    opts: NodeOptions,
) -> Result<PathBuf, TriadError> {
    let path = layout::node_dir(id).join("triad.toml");
    if opts.pbx {
        write_kamailio(id).map_err(|source| TriadError::Write { path: layout::node_dir(id).join("pbx"), source })?;
    }
    std::fs::write(&path, config_text(id, profile, journal_mib, certs, opts))
        .map_err(|source| TriadError::Write { path: path.clone(), source })?;
    Ok(path)
}

/// Asks one supervisor for its status.
pub fn status(bin: &Path, socket: &Path) -> Result<Status, TriadError> {
    // Through timeout(1): a frozen supervisor accepts the connection (the
    // kernel does) but never answers, and a test polling it must not hang.
    let out = cmd::run(
        "timeout",
        &["-k", "1", "2", &bin.to_string_lossy(), "status", "--socket", &socket.to_string_lossy(), "--json"],
    )?;
    serde_json::from_str(out.trim()).map_err(|source| TriadError::Status { text: out, source })
}

/// The reference Kamailio payload in the repository
/// (`firmware/lab/payload/kamailio`: config, SQLite schema, SIPp scenarios).
pub fn payload_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("payload/kamailio")
}

/// Where node `id` mounts the replicated volume's filesystem (inside its
/// own mount namespace).
pub fn mount_point(id: u8) -> PathBuf {
    layout::node_dir(id).join("mnt")
}

/// Node `id`'s `[pbx]` and `[filesystem]` tables: the reference Kamailio
/// payload as user `kamailio`, its SQLite location table on the replicated
/// volume's filesystem (attached with nbdfuse and a loop device: no nbd
/// module on the lab's host), with the lab's short supervision timings.
pub fn pbx_text(id: u8) -> String {
    let dir = layout::node_dir(id);
    format!(
        r#"
[pbx]
command = "/usr/sbin/kamailio"
args = ["-f", "{cfg}", "-DD", "-E", "-Y", "{run}"]
user = "kamailio"
mount_point = "{mnt}"
probe_interval_ms = 200
probe_timeout_ms = 100
probe_tcp = true
probe_vip = true
probe_user = "triad-probe"
probe_user_port = 5099
prepare = ["/usr/bin/sqlite3", "{mnt}/kamailio.db", "PRAGMA wal_checkpoint(TRUNCATE);"]
probe_failures = 3
start_grace_ms = 3000
backoff_first_ms = 100
backoff_max_ms = 2000
stop_timeout_ms = 1000
kill_timeout_ms = 1000
failure_window_s = 60
failures_to_hand_over = 5
check = ["/usr/sbin/kamailio", "-c", "-f", "{cfg}"]
readiness_interval_s = 5

[filesystem]
attach = "nbdfuse"
fuse_dir = "{fuse}"
seed = "{seed}"
down_deadline_ms = 10000
"#,
        cfg = dir.join("pbx/kamailio.cfg").display(),
        run = dir.join("pbx/run").display(),
        mnt = mount_point(id).display(),
        fuse = dir.join("fuse").display(),
        seed = dir.join("seed").display(),
    )
}

/// Writes node `id`'s Kamailio config, its runtime directory and the seed
/// of a new filesystem (the empty location database, made by the payload's
/// `make-db.sh`), owned by the `kamailio` user (Kamailio refuses files it
/// does not own).
fn write_kamailio(id: u8) -> std::io::Result<()> {
    let dir = layout::node_dir(id).join("pbx");
    std::fs::create_dir_all(dir.join("run"))?;
    std::fs::copy(payload_dir().join("kamailio.cfg"), dir.join("kamailio.cfg"))?;
    let seed = layout::node_dir(id).join("seed");
    let make_db = payload_dir().join("make-db.sh");
    for (what, program, args) in [
        ("make-db.sh", "sh", vec![make_db.display().to_string(), seed.display().to_string(), "kamailio".into()]),
        ("chown", "chown", vec!["-R".into(), "kamailio:kamailio".into(), dir.display().to_string()]),
    ] {
        let out = std::process::Command::new(program).args(&args).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{what} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

//! The supervisor's TOML config, parsed into validated types.
//!
//! Owns: the file schema (raw serde structs that reject unknown fields) and
//! the conversion into [`Config`], whose values are already checked — code
//! holding a `Config` never re-validates. Every rejection names the field
//! and the rule it breaks (`cluster.peers: expected exactly 2 peers,
//! found 1`).
//!
//! Must not: touch the network or the machine (it only reads the file),
//! infer anything from the environment (PID 1 mode is `node.init`, never
//! guessed from `getpid()`), or panic on any input.
//!
//! Integers are read as `i64` and range-checked here rather than by serde,
//! so that `id = 300` says "node.id: must be 1..=3, found 300" instead of a
//! generic "expected u8".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use triad_core::{NodeId, Timing};

mod filesystem;
mod pbx;
mod watchdog;
pub use filesystem::{Attach, FilesystemConfig};
pub use pbx::{PbxConfig, DEFAULT_MOUNT_POINT, DEFAULT_SIP_PORT};
pub use watchdog::WatchdogConfig;

/// The node ids a cluster can use.
pub const NODE_IDS: RangeInclusive<NodeId> = 1..=3;

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/triad/control.sock";
/// Default directory of the persisted state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/triad";
/// Default TCP port of the peer links.
pub const DEFAULT_PEER_PORT: u16 = 7100;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is refused.
    #[error("config file {path} is invalid")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ConfigError>,
    },
    /// Not TOML, an unknown field, a missing table or a wrongly typed value.
    /// The source carries the line, column and offending key.
    #[error("config does not match the schema")]
    Syntax {
        /// toml's report, which quotes the offending line.
        #[source]
        source: toml::de::Error,
    },
    /// A value breaks a rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// Dotted path of the field, e.g. `cluster.peers`.
        field: String,
        /// The rule it breaks, with the value found.
        rule: String,
    },
}

fn invalid(field: impl Into<String>, rule: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), rule: rule.into() }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| invalid(field, "is required"))
}

// ---------------------------------------------------------------------------
// Validated types.

/// An address with a prefix length, as `10.77.0.11/24` or `fd77::100/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr<A> {
    /// The address itself (a host address, not the network).
    pub addr: A,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

/// An IPv4 address with prefix.
pub type Ipv4Cidr = Cidr<Ipv4Addr>;
/// An IPv6 address with prefix.
pub type Ipv6Cidr = Cidr<Ipv6Addr>;

impl<A: fmt::Display> fmt::Display for Cidr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A failed CIDR parse, phrased as a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

fn split_cidr(s: &str) -> Result<(&str, u8), CidrError> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| CidrError(format!("expected ADDRESS/PREFIX, found {s:?}")))?;
    let prefix = prefix.parse::<u8>().map_err(|_| CidrError(format!("prefix length {prefix:?} is not a number")))?;
    Ok((addr, prefix))
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = split_cidr(s)?;
        let addr = addr.parse::<Ipv4Addr>().map_err(|_| CidrError(format!("{addr:?} is not an IPv4 address")))?;
        if prefix > 32 {
            return Err(CidrError(format!("IPv4 prefix length must be 0..=32, found {prefix}")));
        }
        Ok(Cidr { addr, prefix_len: prefix })
    }
}

impl FromStr for Ipv6Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = split_cidr(s)?;
        let addr = addr.parse::<Ipv6Addr>().map_err(|_| CidrError(format!("{addr:?} is not an IPv6 address")))?;
        if prefix > 128 {
            return Err(CidrError(format!("IPv6 prefix length must be 0..=128, found {prefix}")));
        }
        Ok(Cidr { addr, prefix_len: prefix })
    }
}

/// The node's own address, either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpCidr {
    /// IPv4.
    V4(Ipv4Cidr),
    /// IPv6.
    V6(Ipv6Cidr),
}

impl IpCidr {
    /// The address without prefix.
    pub fn addr(&self) -> IpAddr {
        match self {
            IpCidr::V4(c) => IpAddr::V4(c.addr),
            IpCidr::V6(c) => IpAddr::V6(c.addr),
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

impl FromStr for IpCidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        // The family is decided by the address part, so the error speaks of
        // the family the user evidently meant.
        if s.contains(':') {
            s.parse().map(IpCidr::V6)
        } else {
            s.parse().map(IpCidr::V4)
        }
    }
}

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// The cluster it belongs to.
    pub cluster: ClusterConfig,
    /// Certificates of the peer links.
    pub tls: TlsConfig,
    /// Timing the core decides with; already passed [`Timing::check`].
    pub timing: Timing,
    /// Real-time scheduling of the supervisor.
    pub realtime: RealtimeConfig,
    /// The replicated volume (`[volume]`); absent: this node runs no volume.
    pub volume: Option<crate::volume::VolumeConfig>,
    /// The PBX the active node runs (`[pbx]`); absent: none (the lab's
    /// VIP-only benchmarks).
    pub pbx: Option<PbxConfig>,
    /// The hardware watchdog (`[watchdog]`); absent: none.
    pub watchdog: Option<WatchdogConfig>,
    /// The volume's filesystem for the PBX (`[filesystem]`); absent:
    /// nothing mounts the volume.
    pub filesystem: Option<FilesystemConfig>,
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// 1..=3.
    pub id: NodeId,
    /// The LAN interface the supervisor owns (a valid Linux interface name).
    pub interface: String,
    /// This node's own address, set by the supervisor.
    pub address: IpCidr,
    /// Absolute path of the control socket.
    pub control_socket: PathBuf,
    /// Absolute directory of the state file.
    pub state_dir: PathBuf,
    /// Act as the machine's init (docs/pid1.md).
    pub init: bool,
    /// The hostname set when acting as init: an RFC 1123 label; default
    /// `triad-<id>`.
    pub hostname: String,
    /// Which hardening sysctls init writes (`node.init_sysctls`).
    pub init_sysctls: SysctlScope,
    /// What an orderly shutdown of init ends in (`node.shutdown`).
    pub shutdown: ShutdownMode,
}

/// `node.init_sysctls`: which entries of the hardening table
/// (`os::init::SYSCTLS`) init writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlScope {
    /// Every entry: the appliance, which owns its kernel.
    All,
    /// Only the entries the kernel keeps per network namespace: a
    /// supervisor in its own network namespace on a shared machine (the
    /// lab) must not change the machine's global settings.
    Namespaced,
    /// None.
    None,
}

/// `node.shutdown`: how an orderly shutdown of init ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// reboot(2) with `RB_AUTOBOOT`: the default, because a box that
    /// comes back rejoins its cluster unattended, where a powered-off box
    /// leaves the other two without a spare until someone presses its
    /// button.
    Reboot,
    /// reboot(2) with `RB_POWER_OFF`.
    PowerOff,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// IPv4 VIP.
    pub vip: Ipv4Cidr,
    /// Optional IPv6 VIP.
    pub vip6: Option<Ipv6Cidr>,
    /// TCP port of the peer links (listen and connect).
    pub peer_port: u16,
    /// The two other members, ids distinct and different from `node.id`.
    pub peers: [PeerConfig; 2],
}

/// One `[[cluster.peers]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's id.
    pub id: NodeId,
    /// The peer's address.
    pub address: IpAddr,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// `[realtime]`; disabled when the table is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealtimeConfig {
    /// Run the supervisor under SCHED_FIFO.
    pub enabled: bool,
    /// SCHED_FIFO priority, 1..=99.
    pub priority: u8,
    /// mlockall the supervisor's memory.
    pub lock_memory: bool,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig { enabled: false, priority: 50, lock_memory: false }
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text).map_err(|e| ConfigError::InFile { path: path.to_owned(), source: Box::new(e) })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Syntax { source })?;
        Config::try_from(raw)
    }

    /// The peers as (id, socket address) for the peer links.
    pub fn peer_addrs(&self) -> [(NodeId, std::net::SocketAddr); 2] {
        self.cluster.peers.map(|p| (p.id, std::net::SocketAddr::new(p.address, self.cluster.peer_port)))
    }

    /// Path of the redb state file inside `node.state_dir`.
    pub fn state_file(&self) -> PathBuf {
        self.node.state_dir.join("state.redb")
    }
}

// ---------------------------------------------------------------------------
// Raw schema: what serde reads. Every table refuses unknown keys so a typo
// is an error, not a silently ignored setting.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pbx: Option<pbx::RawPbx>,
    watchdog: Option<watchdog::RawWatchdog>,
    filesystem: Option<filesystem::RawFilesystem>,
    node: Option<RawNode>,
    cluster: Option<RawCluster>,
    tls: Option<RawTls>,
    timing: Option<RawTiming>,
    realtime: Option<RawRealtime>,
    volume: Option<RawVolume>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    data: Option<PathBuf>,
    size_mib: Option<i64>,
    journal: Option<PathBuf>,
    journal_mib: Option<i64>,
    meta: Option<PathBuf>,
    granularity_kib: Option<i64>,
    nbd_socket: Option<PathBuf>,
    data_port: Option<i64>,
    write_timeout_ms: Option<i64>,
    resync_rate_mib: Option<i64>,
    new_cluster: Option<bool>,
    sync_stall_ms: Option<i64>,
    nbd_buffers_mib: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<i64>,
    interface: Option<String>,
    address: Option<String>,
    control_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    init: Option<bool>,
    hostname: Option<String>,
    init_sysctls: Option<String>,
    shutdown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    vip: Option<String>,
    vip6: Option<String>,
    peer_port: Option<i64>,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Option<i64>,
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Profile {
    Default,
    Fast,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    profile: Option<Profile>,
    heartbeat_interval_ms: Option<i64>,
    peer_timeout_ms: Option<i64>,
    election_timeout_min_ms: Option<i64>,
    election_timeout_max_ms: Option<i64>,
    drift_ppm: Option<i64>,
    lease_guard_ms: Option<i64>,
    vip_lifetime_s: Option<i64>,
    vip_renew_interval_ms: Option<i64>,
    strict_vip_handover: Option<bool>,
    garp_burst_count: Option<i64>,
    garp_burst_interval_ms: Option<i64>,
    garp_refresh_interval_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    enabled: Option<bool>,
    priority: Option<i64>,
    lock_memory: Option<bool>,
}

// ---------------------------------------------------------------------------
// Conversions.

fn int_in<T: TryFrom<i64>>(v: i64, field: &str, range: RangeInclusive<i64>) -> Result<T, ConfigError> {
    if !range.contains(&v) {
        return Err(invalid(field, format!("must be {}..={}, found {v}", range.start(), range.end())));
    }
    T::try_from(v).map_err(|_| invalid(field, format!("value {v} does not fit")))
}

fn node_id(v: i64, field: &str) -> Result<NodeId, ConfigError> {
    int_in(v, field, i64::from(*NODE_IDS.start())..=i64::from(*NODE_IDS.end()))
}

fn absolute(p: PathBuf, field: &str) -> Result<PathBuf, ConfigError> {
    // Relative paths would depend on the working directory, which for PID 1
    // is whatever the kernel left: refuse them.
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(invalid(field, format!("must be an absolute path, found {:?}", p)))
    }
}

/// Linux interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/', no
/// whitespace, not "." or "..".
fn interface_name(s: String, field: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            field,
            format!("must be a Linux interface name (1..=15 chars, no '/', ':' or spaces), found {s:?}"),
        ))
    }
}

/// Refuses addresses that can never be a host on the LAN.
fn usable(ip: IpAddr, field: &str) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(invalid(field, format!("must be a unicast host address, found {ip}")));
    }
    Ok(())
}

fn parse_cidr<T: FromStr<Err = CidrError>>(s: &str, field: &str) -> Result<T, ConfigError> {
    s.parse().map_err(|e: CidrError| invalid(field, e.0))
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let node = NodeConfig::try_from(required(raw.node, "node")?)?;
        let cluster = ClusterConfig::try_from(required(raw.cluster, "cluster")?)?;
        let tls = TlsConfig::try_from(required(raw.tls, "tls")?)?;
        let timing = Timing::try_from(raw.timing.unwrap_or_default())?;
        let realtime = match raw.realtime {
            Some(r) => RealtimeConfig::try_from(r)?,
            None => RealtimeConfig::default(),
        };

        // Cross-table rules.
        for (i, p) in cluster.peers.iter().enumerate() {
            if p.id == node.id {
                return Err(invalid(
                    format!("cluster.peers[{i}].id"),
                    format!("must differ from node.id ({})", node.id),
                ));
            }
            if p.address == node.address.addr() {
                return Err(invalid(
                    format!("cluster.peers[{i}].address"),
                    format!("must differ from node.address ({})", node.address.addr()),
                ));
            }
        }
        if IpAddr::V4(cluster.vip.addr) == node.address.addr() {
            return Err(invalid("cluster.vip", "must differ from node.address"));
        }
        if let Some(v6) = cluster.vip6 {
            if IpAddr::V6(v6.addr) == node.address.addr() {
                return Err(invalid("cluster.vip6", "must differ from node.address"));
            }
        }
        for (i, p) in cluster.peers.iter().enumerate() {
            let vip_clash = p.address == IpAddr::V4(cluster.vip.addr)
                || cluster.vip6.is_some_and(|v| p.address == IpAddr::V6(v.addr));
            if vip_clash {
                return Err(invalid(
                    format!("cluster.peers[{i}].address"),
                    "must not be a VIP (peers are reached at their own addresses)",
                ));
            }
        }

        let volume = match raw.volume {
            Some(v) => Some(volume_config(v, cluster.peer_port)?),
            None => None,
        };
        let pbx = match raw.pbx {
            Some(p) => Some(PbxConfig::try_from(p)?),
            None => None,
        };
        if let (Some(p), Some(v)) = (&pbx, &volume) {
            // A mount there would hide the files the volume is made of.
            if [&v.data, &v.journal, &v.meta].iter().any(|f| f.starts_with(&p.mount_point)) {
                return Err(invalid("pbx.mount_point", "must not contain the volume's own backing files"));
            }
        }
        let watchdog = match raw.watchdog {
            Some(w) => Some(WatchdogConfig::try_from(w)?),
            None => None,
        };
        let filesystem = match raw.filesystem {
            Some(f) => Some(FilesystemConfig::try_from(f)?),
            None => None,
        };
        if filesystem.is_some() && (volume.is_none() || pbx.is_none()) {
            // It is the replicated volume's, mounted at the PBX's mount point.
            return Err(invalid("filesystem", "needs a [volume] to mount and a [pbx] (its mount_point) to serve"));
        }
        Ok(Config { node, cluster, tls, timing, realtime, volume, pbx, watchdog, filesystem })
    }
}

impl TryFrom<RawNode> for NodeConfig {
    type Error = ConfigError;
    fn try_from(r: RawNode) -> Result<Self, ConfigError> {
        let id = node_id(required(r.id, "node.id")?, "node.id")?;
        let interface = interface_name(required(r.interface, "node.interface")?, "node.interface")?;
        let address: IpCidr = parse_cidr(&required(r.address, "node.address")?, "node.address")?;
        usable(address.addr(), "node.address")?;
        let control_socket =
            absolute(r.control_socket.unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()), "node.control_socket")?;
        let state_dir = absolute(r.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()), "node.state_dir")?;
        let hostname = match r.hostname {
            Some(h) => hostname(h, "node.hostname")?,
            None => format!("triad-{id}"),
        };
        let init_sysctls = match r.init_sysctls.as_deref() {
            None | Some("all") => SysctlScope::All,
            Some("namespaced") => SysctlScope::Namespaced,
            Some("none") => SysctlScope::None,
            Some(other) => {
                return Err(invalid(
                    "node.init_sysctls",
                    format!("must be \"all\", \"namespaced\" or \"none\", found {other:?}"),
                ))
            }
        };
        let shutdown = match r.shutdown.as_deref() {
            None | Some("reboot") => ShutdownMode::Reboot,
            Some("poweroff") => ShutdownMode::PowerOff,
            Some(other) => {
                return Err(invalid("node.shutdown", format!("must be \"reboot\" or \"poweroff\", found {other:?}")))
            }
        };
        Ok(NodeConfig {
            id,
            interface,
            address,
            control_socket,
            state_dir,
            init: r.init.unwrap_or(false),
            hostname,
            init_sysctls,
            shutdown,
        })
    }
}

/// An RFC 1123 host label: 1..=63 of `a-z`, `A-Z`, `0-9` and `-`, neither
/// first nor last a `-`. One label, not a dotted name: the appliance's
/// own name, which its LAN's DNS may qualify.
fn hostname(s: String, field: &str) -> Result<String, ConfigError> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            field,
            format!("must be an RFC 1123 label (1..=63 letters, digits or '-', not starting or ending with '-'), found {s:?}"),
        ))
    }
}

impl TryFrom<RawCluster> for ClusterConfig {
    type Error = ConfigError;
    fn try_from(r: RawCluster) -> Result<Self, ConfigError> {
        let vip: Ipv4Cidr = parse_cidr(&required(r.vip, "cluster.vip")?, "cluster.vip")?;
        usable(IpAddr::V4(vip.addr), "cluster.vip")?;
        let vip6 = match r.vip6 {
            Some(s) => {
                let v: Ipv6Cidr = parse_cidr(&s, "cluster.vip6")?;
                usable(IpAddr::V6(v.addr), "cluster.vip6")?;
                Some(v)
            }
            None => None,
        };
        let peer_port = match r.peer_port {
            Some(p) => int_in(p, "cluster.peer_port", 1..=65535)?,
            None => DEFAULT_PEER_PORT,
        };
        let [a, b]: [RawPeer; 2] = r.peers.try_into().map_err(|v: Vec<RawPeer>| {
            invalid("cluster.peers", format!("expected exactly 2 peers, found {}", v.len()))
        })?;
        let a = PeerConfig::parse(a, 0)?;
        let b = PeerConfig::parse(b, 1)?;
        if a.id == b.id {
            return Err(invalid("cluster.peers[1].id", format!("duplicate peer id {} (ids must be distinct)", b.id)));
        }
        if a.address == b.address {
            return Err(invalid("cluster.peers[1].address", format!("duplicate peer address {}", b.address)));
        }
        Ok(ClusterConfig { vip, vip6, peer_port, peers: [a, b] })
    }
}

impl PeerConfig {
    fn parse(r: RawPeer, i: usize) -> Result<Self, ConfigError> {
        let f_id = format!("cluster.peers[{i}].id");
        let f_addr = format!("cluster.peers[{i}].address");
        let id = node_id(required(r.id, &f_id)?, &f_id)?;
        let s = required(r.address, &f_addr)?;
        let address: IpAddr =
            s.parse().map_err(|_| invalid(&f_addr, format!("expected an IP address (no prefix), found {s:?}")))?;
        usable(address, &f_addr)?;
        Ok(PeerConfig { id, address })
    }
}

impl TryFrom<RawTls> for TlsConfig {
    type Error = ConfigError;
    fn try_from(r: RawTls) -> Result<Self, ConfigError> {
        Ok(TlsConfig {
            ca: absolute(required(r.ca, "tls.ca")?, "tls.ca")?,
            cert: absolute(required(r.cert, "tls.cert")?, "tls.cert")?,
            key: absolute(required(r.key, "tls.key")?, "tls.key")?,
        })
    }
}

/// `[volume]`: paths must be absolute and distinct; sizes within what the
/// journal and bitmaps can describe.
fn volume_config(v: RawVolume, peer_port: u16) -> Result<crate::volume::VolumeConfig, ConfigError> {
    let data = absolute(required(v.data, "volume.data")?, "volume.data")?;
    let journal = absolute(required(v.journal, "volume.journal")?, "volume.journal")?;
    let meta = absolute(required(v.meta, "volume.meta")?, "volume.meta")?;
    let nbd_socket = absolute(required(v.nbd_socket, "volume.nbd_socket")?, "volume.nbd_socket")?;
    if data == journal || data == meta || journal == meta {
        return Err(invalid("volume", "data, journal and meta must be three different paths"));
    }
    let size_mib: u64 = int_in(required(v.size_mib, "volume.size_mib")?, "volume.size_mib", 1..=16 * 1024 * 1024)?;
    let journal_mib: u64 = int_in(v.journal_mib.unwrap_or(64), "volume.journal_mib", 1..=64 * 1024)?;
    let granularity_kib: u64 = int_in(v.granularity_kib.unwrap_or(64), "volume.granularity_kib", 4..=1024 * 1024)?;
    if !granularity_kib.is_power_of_two() {
        return Err(invalid("volume.granularity_kib", format!("must be a power of two, found {granularity_kib}")));
    }
    let default_port = i64::from(peer_port) + 1;
    let data_port: u16 = int_in(v.data_port.unwrap_or(default_port), "volume.data_port", 1..=65535)?;
    if data_port == peer_port {
        return Err(invalid("volume.data_port", "must differ from cluster.peer_port"));
    }
    let write_timeout_ms: u64 = int_in(v.write_timeout_ms.unwrap_or(5000), "volume.write_timeout_ms", 100..=600_000)?;
    let resync_rate_mib: u64 = int_in(v.resync_rate_mib.unwrap_or(100), "volume.resync_rate_mib", 0..=100_000)?;
    let repl = triad_repl::ReplConfig {
        write_timeout: Duration::from_millis(write_timeout_ms),
        resync_rate: resync_rate_mib << 20,
        ..triad_repl::ReplConfig::default()
    };
    Ok(crate::volume::VolumeConfig {
        data,
        size: size_mib << 20,
        journal,
        journal_size: (journal_mib << 20) + 8192,
        meta,
        granularity: granularity_kib << 10,
        nbd_socket,
        data_port,
        repl,
        new_cluster: v.new_cluster.unwrap_or(false),
        sync_stall: Duration::from_millis(int_in(
            v.sync_stall_ms.unwrap_or(2000),
            "volume.sync_stall_ms",
            100..=600_000,
        )?),
        nbd_buffers: int_in::<usize>(v.nbd_buffers_mib.unwrap_or(16), "volume.nbd_buffers_mib", 2..=64)? << 20,
    })
}

impl TryFrom<RawRealtime> for RealtimeConfig {
    type Error = ConfigError;
    fn try_from(r: RawRealtime) -> Result<Self, ConfigError> {
        let d = RealtimeConfig::default();
        Ok(RealtimeConfig {
            enabled: r.enabled.unwrap_or(d.enabled),
            priority: match r.priority {
                Some(p) => int_in(p, "realtime.priority", 1..=99)?,
                None => d.priority,
            },
            lock_memory: r.lock_memory.unwrap_or(d.lock_memory),
        })
    }
}

fn millis(v: Option<i64>, field: &str, into: &mut Duration) -> Result<(), ConfigError> {
    if let Some(v) = v {
        *into = Duration::from_millis(int_in(v, field, 0..=i64::from(u32::MAX))?);
    }
    Ok(())
}

fn secs(v: Option<i64>, field: &str, into: &mut Duration) -> Result<(), ConfigError> {
    if let Some(v) = v {
        *into = Duration::from_secs(int_in(v, field, 0..=i64::from(u32::MAX))?);
    }
    Ok(())
}

impl TryFrom<RawTiming> for Timing {
    type Error = ConfigError;
    fn try_from(r: RawTiming) -> Result<Self, ConfigError> {
        let mut t = match r.profile.unwrap_or(Profile::Default) {
            Profile::Default => Timing::default(),
            Profile::Fast => Timing::fast(),
        };
        millis(r.heartbeat_interval_ms, "timing.heartbeat_interval_ms", &mut t.heartbeat_interval)?;
        millis(r.peer_timeout_ms, "timing.peer_timeout_ms", &mut t.peer_timeout)?;
        millis(r.election_timeout_min_ms, "timing.election_timeout_min_ms", &mut t.election_timeout_min)?;
        millis(r.election_timeout_max_ms, "timing.election_timeout_max_ms", &mut t.election_timeout_max)?;
        if let Some(v) = r.drift_ppm {
            t.drift_ppm = int_in(v, "timing.drift_ppm", 0..=1_000_000)?;
        }
        millis(r.lease_guard_ms, "timing.lease_guard_ms", &mut t.lease_guard)?;
        secs(r.vip_lifetime_s, "timing.vip_lifetime_s", &mut t.vip_lifetime)?;
        millis(r.vip_renew_interval_ms, "timing.vip_renew_interval_ms", &mut t.vip_renew_interval)?;
        if let Some(v) = r.strict_vip_handover {
            t.strict_vip_handover = v;
        }
        if let Some(v) = r.garp_burst_count {
            t.garp_burst_count = int_in(v, "timing.garp_burst_count", 1..=1000)?;
        }
        millis(r.garp_burst_interval_ms, "timing.garp_burst_interval_ms", &mut t.garp_burst_interval)?;
        secs(r.garp_refresh_interval_s, "timing.garp_refresh_interval_s", &mut t.garp_refresh_interval)?;
        // The core states its own relations (naming the setting); we add
        // the table so the message points into this file.
        t.check().map_err(|rule| ConfigError::Invalid { field: "timing".into(), rule })?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FULL: &str = r#"
[node]
id = 1
interface = "eth0"
address = "10.77.0.11/24"
control_socket = "/run/triad/control.sock"
state_dir = "/var/lib/triad"
init = false

[cluster]
vip = "10.77.0.100/24"
vip6 = "fd77::100/64"
peer_port = 7100

[[cluster.peers]]
id = 2
address = "10.77.0.12"

[[cluster.peers]]
id = 3
address = "10.77.0.13"

[tls]
ca = "/etc/triad/ca.pem"
cert = "/etc/triad/node-1.pem"
key = "/etc/triad/node-1.key"

[timing]
profile = "fast"
heartbeat_interval_ms = 25
garp_burst_count = 3

[realtime]
enabled = true
priority = 50
lock_memory = true
"#;

    use crate::errors::chain;

    fn err(text: &str) -> String {
        chain(&Config::parse(text).unwrap_err())
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(FULL).unwrap();
        assert_eq!(c.node.id, 1);
        assert_eq!(c.node.interface, "eth0");
        assert_eq!(c.node.address.to_string(), "10.77.0.11/24");
        assert_eq!(c.cluster.vip.to_string(), "10.77.0.100/24");
        assert_eq!(c.cluster.vip6.unwrap().to_string(), "fd77::100/64");
        assert_eq!(c.cluster.peers[1].id, 3);
        assert_eq!(c.timing.heartbeat_interval, Duration::from_millis(25));
        assert_eq!(c.timing.election_timeout_min, Timing::fast().election_timeout_min);
        assert_eq!(c.timing.garp_burst_count, 3);
        assert_eq!(c.realtime.priority, 50);
        assert_eq!(c.peer_addrs()[0].1.to_string(), "10.77.0.12:7100");
        assert_eq!(c.state_file(), PathBuf::from("/var/lib/triad/state.redb"));
    }

    #[test]
    fn optional_tables_default() {
        let text = FULL.split("[timing]").next().unwrap().replace("control_socket = \"/run/triad/control.sock\"\n", "");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.realtime, RealtimeConfig::default());
        assert_eq!(c.node.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }

    #[test]
    fn volume_table_defaults_and_bounds() {
        let volume = "\n[volume]\ndata = \"/v/data\"\njournal = \"/v/journal\"\nmeta = \"/v/meta\"\nsize_mib = 256\nnbd_socket = \"/run/nbd.sock\"\n";
        let text = format!("{FULL}{volume}");
        let v = Config::parse(&text).unwrap().volume.expect("a volume");
        assert_eq!(v.nbd_buffers, 16 << 20, "default NBD buffers");
        assert_eq!(v.sync_stall, Duration::from_millis(2000));
        let v = Config::parse(&format!("{text}nbd_buffers_mib = 32\n")).unwrap().volume.expect("a volume");
        assert_eq!(v.nbd_buffers, 32 << 20);
        let e = err(&format!("{text}nbd_buffers_mib = 1\n"));
        assert_eq!(e, "volume.nbd_buffers_mib: must be 2..=64, found 1");
    }

    #[test]
    fn a_pbx_table_is_read_and_may_not_hide_the_volume() {
        let volume = "\n[volume]\ndata = \"/v/data\"\njournal = \"/v/journal\"\nmeta = \"/v/meta\"\nsize_mib = 256\nnbd_socket = \"/run/nbd.sock\"\n";
        let pbx = "\n[pbx]\ncommand = \"/bin/sh\"\nuser = \"nobody\"\nmount_point = \"/srv/pbx\"\n";
        let c = Config::parse(&format!("{FULL}{volume}{pbx}")).unwrap();
        assert_eq!(c.pbx.map(|p| p.mount_point), Some(PathBuf::from("/srv/pbx")));
        assert!(Config::parse(FULL).unwrap().pbx.is_none(), "no table, no PBX");
        let e = err(&format!("{FULL}{volume}{}", pbx.replace("/srv/pbx", "/v")));
        assert_eq!(e, "pbx.mount_point: must not contain the volume's own backing files");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&FULL.replace("init = false", "init = false\nbogus = 1"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = err(&FULL.replace("profile = \"fast\"", "profile = \"fast\"\nheartbeat_ms = 1"));
        assert!(e.contains("heartbeat_ms"), "{e}");
    }

    #[test]
    fn bad_cidr_is_named() {
        let e = err(&FULL.replace("10.77.0.100/24", "10.77.0.100"));
        assert!(e.starts_with("cluster.vip: expected ADDRESS/PREFIX"), "{e}");
        let e = err(&FULL.replace("10.77.0.11/24", "10.77.0.11/33"));
        assert!(e.starts_with("node.address: IPv4 prefix length"), "{e}");
        let e = err(&FULL.replace("fd77::100/64", "fd77::zz/64"));
        assert!(e.starts_with("cluster.vip6:"), "{e}");
        let e = err(&FULL.replace("\"10.77.0.12\"", "\"10.77.0.12/24\""));
        assert!(e.starts_with("cluster.peers[0].address: expected an IP address"), "{e}");
    }

    #[test]
    fn wrong_peer_count_is_named() {
        let one = FULL.replace("[[cluster.peers]]\nid = 3\naddress = \"10.77.0.13\"\n", "");
        assert_eq!(err(&one), "cluster.peers: expected exactly 2 peers, found 1");
        let three = FULL.replace("[tls]", "[[cluster.peers]]\nid = 3\naddress = \"10.77.0.14\"\n\n[tls]");
        assert_eq!(err(&three), "cluster.peers: expected exactly 2 peers, found 3");
    }

    #[test]
    fn duplicate_and_self_ids_are_named() {
        let e = err(&FULL.replace("id = 3", "id = 2"));
        assert!(e.starts_with("cluster.peers[1].id: duplicate peer id 2"), "{e}");
        let e = err(&FULL.replace("id = 3", "id = 1"));
        assert!(e.starts_with("cluster.peers[1].id: must differ from node.id"), "{e}");
        let e = err(&FULL.replace("\"10.77.0.13\"", "\"10.77.0.12\""));
        assert!(e.starts_with("cluster.peers[1].address: duplicate"), "{e}");
    }

    #[test]
    fn id_out_of_range_is_named() {
        let e = err(&FULL.replace("[node]\nid = 1", "[node]\nid = 4"));
        assert_eq!(e, "node.id: must be 1..=3, found 4");
        let e = err(&FULL.replace("[node]\nid = 1", "[node]\nid = 300"));
        assert_eq!(e, "node.id: must be 1..=3, found 300");
        let e = err(&FULL.replace("id = 2", "id = 0"));
        assert_eq!(e, "cluster.peers[0].id: must be 1..=3, found 0");
        let e = err(&FULL.replace("priority = 50", "priority = 100"));
        assert_eq!(e, "realtime.priority: must be 1..=99, found 100");
    }

    #[test]
    fn bad_timing_relation_is_named() {
        let e = err(&FULL.replace("garp_burst_count = 3", "election_timeout_max_ms = 100"));
        assert!(e.starts_with("timing: election_timeout_max (100 ms)"), "{e}");
        let e = err(&FULL.replace("heartbeat_interval_ms = 25", "heartbeat_interval_ms = -1"));
        assert!(e.starts_with("timing.heartbeat_interval_ms: must be 0..="), "{e}");
        let e = err(&FULL.replace("profile = \"fast\"", "profile = \"turbo\""));
        assert!(e.contains("turbo") && e.contains("profile"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = err(&FULL.replace("interface = \"eth0\"\n", ""));
        assert_eq!(e, "node.interface: is required");
        let e = err(&FULL.replace("interface = \"eth0\"", "interface = \"a/b\""));
        assert!(e.starts_with("node.interface: must be a Linux interface name"), "{e}");
        let e = err(&FULL.replace("\"/var/lib/triad\"", "\"var/lib\""));
        assert!(e.starts_with("node.state_dir: must be an absolute path"), "{e}");
        let e = err(&FULL.replace("init = false", "init = \"no\""));
        assert!(e.contains("init"), "{e}");
        let e = err(&FULL.replace("10.77.0.100/24", "10.77.0.11/24"));
        assert_eq!(e, "cluster.vip: must differ from node.address");
        assert_eq!(err(""), "node: is required");
        assert!(err("[node").contains("schema"));
    }

    #[test]
    fn init_settings_default_and_are_checked() {
        let n = Config::parse(FULL).unwrap().node;
        assert_eq!(
            (n.hostname.as_str(), n.init_sysctls, n.shutdown),
            ("triad-1", SysctlScope::All, ShutdownMode::Reboot)
        );
        let with = |extra: &str| FULL.replace("init = false", &format!("init = true\n{extra}"));
        let n = Config::parse(&with("hostname = \"pbx-a\"\ninit_sysctls = \"namespaced\"\nshutdown = \"poweroff\""))
            .unwrap()
            .node;
        assert_eq!(
            (n.init, n.hostname.as_str(), n.init_sysctls, n.shutdown),
            (true, "pbx-a", SysctlScope::Namespaced, ShutdownMode::PowerOff)
        );
        assert_eq!(Config::parse(&with("init_sysctls = \"none\"")).unwrap().node.init_sysctls, SysctlScope::None);
        assert!(Config::parse(&with(&format!("hostname = \"{}\"", "a".repeat(63)))).is_ok());
        for bad in ["", "-a", "a-", "a.b", "a_b", "é", &"a".repeat(64)] {
            let e = err(&with(&format!("hostname = \"{bad}\"")));
            assert_eq!(
                e,
                format!("node.hostname: must be an RFC 1123 label (1..=63 letters, digits or '-', not starting or ending with '-'), found {bad:?}")
            );
        }
        assert_eq!(
            err(&with("init_sysctls = \"some\"")),
            "node.init_sysctls: must be \"all\", \"namespaced\" or \"none\", found \"some\""
        );
        assert_eq!(
            err(&with("shutdown = \"halt\"")),
            "node.shutdown: must be \"reboot\" or \"poweroff\", found \"halt\""
        );
    }

    #[test]
    fn load_names_the_path() {
        let e = Config::load("/nonexistent/triad.toml").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/triad.toml"));
    }
}

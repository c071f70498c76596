//! Each VM's state disk: an ext4 labelled `triad-state` (what the image's
//! first boot stage looks for, `firmware/triad/src/appliance.rs`) holding
//!
//! ```text
//!   /triad.toml              the node's config, the format `triad run --config` reads
//!   /certs/ca.pem            the cluster CA's certificate (not its key)
//!   /certs/node-N.pem, .key  the node's certificate and key (`triad certs`)
//!   /state/                  the supervisor's persisted state (node.state_dir)
//!   /volume/                 the replicated volume's files, where a test's config puts them there
//! ```
//!
//! made without root tools or loop devices: `mkfs.ext4 -d` copies a
//! directory into the new filesystem.

use std::path::{Path, PathBuf};

use crate::net::{node_ip, PREFIX, VIP};
use crate::{run, HwError, EMULATED_TIMING};

/// The filesystem label the image looks for by default.
pub const LABEL: &str = "triad-state";
/// Size of each state disk.
pub const SIZE_MIB: u32 = 32;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HwError + '_ {
    move |source| HwError::Io { path: path.to_path_buf(), source }
}

/// Node `id`'s config as it lies on its state disk (paths as the
/// appliance sees them, under `/var/lib/triad`).
pub fn config_text(id: u8, ids: &[u8]) -> String {
    let mut peers = String::new();
    for p in ids.iter().filter(|p| **p != id) {
        peers.push_str(&format!("[[cluster.peers]]\nid = {p}\naddress = \"{}\"\n", node_ip(*p)));
    }
    format!(
        r#"# Written by triad-hwtests for VM {id}.
[node]
id = {id}
interface = "eth0"
address = "{ip}/{PREFIX}"
control_socket = "/run/triad/control.sock"
state_dir = "/var/lib/triad/state"
hostname = "triad-hw-{id}"
init = true

[cluster]
vip = "{VIP}/{PREFIX}"
{peers}
[tls]
ca = "/var/lib/triad/certs/ca.pem"
cert = "/var/lib/triad/certs/node-{id}.pem"
key = "/var/lib/triad/certs/node-{id}.key"

{EMULATED_TIMING}
[watchdog]
# The i6300esb QEMU emulates, armed for 30 s: a TCG guest on a loaded
# host can stall for seconds without anything being wrong inside it.
device = "/dev/watchdog"
timeout_s = 30
"#,
        ip = node_ip(id),
    )
}

/// Where a PBX test keeps each node's replicated volume files.
pub const VOLUME_ON_DATA: &str = "/var/lib/triad-data";
/// The same on the state partition (a disk booted without the image's
/// data partition): `make_tree` makes the directory.
pub const VOLUME_ON_STATE: &str = "/var/lib/triad/volume";

/// Node `id`'s config for the PBX tests: [`config_text`]'s, plus the
/// replicated volume (its files in `volume_dir`), the reference Kamailio
/// under `[pbx]` and its filesystem on the kernel nbd driver.
pub fn pbx_config_text(id: u8, ids: &[u8], volume_dir: &str) -> String {
    format!(
        r#"{base}
[volume]
data = "{vol}/data.img"
size_mib = 64
journal = "{vol}/journal.img"
journal_mib = 16
meta = "{vol}/meta.img"
granularity_kib = 4
resync_rate_mib = 16
nbd_socket = "/run/triad/nbd.sock"
nbd_buffers_mib = 4
new_cluster = true

[pbx]
command = "/usr/sbin/kamailio"
# Small shared and private memory: the VM has 512 MiB.
args = ["-f", "/usr/share/triad/kamailio/kamailio.cfg", "-DD", "-E", "-Y", "/tmp", "-m", "32", "-M", "4"]
user = "kamailio"
mount_point = "/run/pbx"
probe_interval_ms = 1000
probe_timeout_ms = 800
probe_tcp = true
probe_vip = true
probe_failures = 5
start_grace_ms = 20000
backoff_first_ms = 500
backoff_max_ms = 5000
stop_timeout_ms = 3000
kill_timeout_ms = 3000
check = ["/usr/sbin/kamailio", "-c", "-f", "/usr/share/triad/kamailio/kamailio.cfg", "-Y", "/tmp"]
readiness_interval_s = 30

[filesystem]
attach = "kernel"
nbd_device = "/dev/nbd0"
seed = "/usr/share/triad/kamailio/seed"
down_deadline_ms = 20000
"#,
        base = config_text(id, ids),
        vol = volume_dir,
    )
}

/// Writes the cluster's certificates (once, into `dir/ca`) and node `id`'s
/// state disk image `dir/state-N.img` with its config, checked with
/// `triad check-config` first; returns the image's path.
pub fn make_disk(triad: &Path, dir: &Path, id: u8, ids: &[u8]) -> Result<PathBuf, HwError> {
    make_disk_with(triad, dir, id, &config_text(id, ids), true)
}

/// As [`make_disk`] with this config text; `check`: refuse a config the
/// supervisor would refuse (false for the tests of bad input).
pub fn make_disk_with(triad: &Path, dir: &Path, id: u8, config: &str, check: bool) -> Result<PathBuf, HwError> {
    make_disk_sized(triad, dir, id, config, check, SIZE_MIB)
}

/// As [`make_disk_with`], `size_mib` large (a node whose replicated volume
/// keeps its files on the state partition needs room for them).
pub fn make_disk_sized(
    triad: &Path,
    dir: &Path,
    id: u8,
    config: &str,
    check: bool,
    size_mib: u32,
) -> Result<PathBuf, HwError> {
    let tree = make_tree(triad, dir, id, config, check)?;
    let img = dir.join(format!("state-{id}.img"));
    let _ = std::fs::remove_file(&img);
    mkfs(&tree, &img, size_mib.into())?;
    Ok(img)
}

/// An ext4 labelled [`LABEL`] of `mib` MiB in the file `img`, holding the
/// files of `tree` (`mkfs.ext4 -d`: no root tools, no loop device).
pub fn mkfs(tree: &Path, img: &Path, mib: u64) -> Result<(), HwError> {
    run(
        "mkfs.ext4",
        &["-q", "-F", "-L", LABEL, "-d", &tree.display().to_string(), &img.display().to_string(), &format!("{mib}M")],
    )
    .map(drop)
}

/// Node `id`'s state partition contents in `dir/state-N/` (the cluster's
/// certificates made once into `dir/ca`); returns the directory.
pub fn make_tree(triad: &Path, dir: &Path, id: u8, config: &str, check: bool) -> Result<PathBuf, HwError> {
    let ca = dir.join("ca");
    if !ca.join("ca.pem").exists() {
        std::fs::create_dir_all(&ca).map_err(io(&ca))?;
        run(triad, &["certs", "init", "--dir", &ca.display().to_string()])?;
    }
    if !ca.join(format!("node-{id}.pem")).exists() {
        run(triad, &["certs", "issue", "--dir", &ca.display().to_string(), "--node", &id.to_string()])?;
    }
    let tree = dir.join(format!("state-{id}"));
    let _ = std::fs::remove_dir_all(&tree);
    let certs = tree.join("certs");
    std::fs::create_dir_all(&certs).map_err(io(&certs))?;
    std::fs::create_dir_all(tree.join("state")).map_err(io(&tree))?;
    // Where a node keeps its replicated volume's files when the config
    // puts them on the state partition (the supervisor does not create
    // the directory).
    std::fs::create_dir_all(tree.join("volume")).map_err(io(&tree))?;
    for f in ["ca.pem".to_string(), format!("node-{id}.pem"), format!("node-{id}.key")] {
        let to = certs.join(&f);
        std::fs::copy(ca.join(&f), &to).map_err(io(&to))?;
    }
    let cfg = tree.join("triad.toml");
    std::fs::write(&cfg, config).map_err(io(&cfg))?;
    if check {
        // The config must be one the supervisor accepts: check it here,
        // where the error is readable, rather than on a serial console.
        let local_copy = dir.join(format!("check-{id}.toml"));
        let local = config.replace("/var/lib/triad/certs", &certs.display().to_string());
        std::fs::write(&local_copy, local).map_err(io(&local_copy))?;
        run(triad, &["check-config", "--config", &local_copy.display().to_string()])?;
    }
    Ok(tree)
}

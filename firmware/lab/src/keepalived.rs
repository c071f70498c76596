//! The keepalived baseline: the same three-node topology with VRRP
//! (keepalived 2.2.7 from Debian) instead of triad.
//!
//! keepalived does not configure the node's own address, so the lab does.
//! Every instance gets its own pid files, or the second one exits saying it
//! is already running. `kill -9` of keepalived is not a crash (its child
//! shuts down cleanly and sends a priority-0 advert), so a crash is
//! simulated by freezing every process of the node and taking its link
//! down; see `Lab::crash_node`.

use std::path::{Path, PathBuf};

use crate::layout::{self, node_ip, NODE_IDS, PREFIX, VIP};

/// The keepalived config of node `id` with `advert` seconds between
/// adverts. VRRPv3, because v2 rounds 0.1 s up to 1 s. All nodes start as
/// BACKUP with `nopreempt`, so a restarted node does not take the VIP back
/// (that would be a second, unmeasured failover).
pub fn config_text(id: u8, advert: &str) -> String {
    let mut peers = String::new();
    // One peer per line: a peer list on one line is silently truncated.
    for p in NODE_IDS.iter().filter(|p| **p != id) {
        peers.push_str(&format!("        {}\n", node_ip(*p)));
    }
    format!(
        r#"# Written by triad-lab for node {id}.
global_defs {{
    router_id tlab-n{id}
    vrrp_version 3
    script_user root
    enable_script_security
    # The scheduling triad runs with ([realtime] priority = 50, memory
    # locked): a fair baseline (issue 10).
    vrrp_rt_priority 50
    vrrp_no_swap
}}

vrrp_instance VI_TLAB {{
    state BACKUP
    nopreempt
    interface {iface}
    virtual_router_id 77
    priority {prio}
    advert_int {advert}
    unicast_src_ip {ip}
    unicast_peer {{
{peers}    }}
    virtual_ipaddress {{
        {VIP}/{PREFIX} dev {iface}
    }}
}}
"#,
        iface = layout::IFACE,
        prio = 100 - u32::from(id),
        ip = node_ip(id),
    )
}

/// Writes node `id`'s keepalived config and returns its path.
pub fn write_config(id: u8, advert: &str) -> std::io::Result<PathBuf> {
    let path = layout::node_dir(id).join("keepalived.conf");
    std::fs::write(&path, config_text(id, advert))?;
    Ok(path)
}

/// The keepalived command line for node `id` (run through nsenter into the
/// node's network namespace). The config path on the command line marks
/// the process as the lab's for `down`.
pub fn args(id: u8, conf: &Path) -> Vec<String> {
    let dir = layout::node_dir(id);
    let p = |n: &str| dir.join(n).display().to_string();
    vec![
        "--dont-fork".into(),
        "--log-console".into(),
        "--log-detail".into(),
        "--vrrp".into(),
        "-f".into(),
        conf.display().to_string(),
        "-p".into(),
        p("keepalived.pid"),
        "-r".into(),
        p("vrrp.pid"),
        "-c".into(),
        p("checkers.pid"),
    ]
}

//! The debug image's test agent, from the client side
//! (`firmware/triad/src/test_agent.rs`): one line to a VM's agent port,
//! its one-line answer. Used by the tests that need more of a VM than its
//! network behaviour: its status, an operator's request, a file written
//! through its filesystem, a hang.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::net::{node_ip, NS};

/// The agent's TCP port (`triad::test_agent::PORT`, which exists only
/// with the `test-agent` feature).
pub const PORT: u16 = 7199;

/// Sends `line` to VM `id`'s agent from the client side's namespace and
/// returns its answer. A `hang` gets none: the read times out after 10 s.
pub fn ask(id: u8, line: &str) -> Result<String, String> {
    let ip = node_ip(id);
    let line = format!("{line}\n");
    triad_lab::netns::run_in(NS, move || -> std::io::Result<String> {
        let addr = format!("{ip}:{PORT}").parse().map_err(std::io::Error::other)?;
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(line.as_bytes())?;
        let mut answer = String::new();
        c.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("agent of VM {id}: {e}"))
}

/// VM `id`'s status report (the `status` of the control socket's answer,
/// docs/status-schema.md), if it answers.
pub fn status(id: u8) -> Option<serde_json::Value> {
    let mut answer: serde_json::Value = serde_json::from_str(&ask(id, r#"{"cmd":"status"}"#).ok()?).ok()?;
    Some(answer.get_mut("status")?.take())
}

/// Whether VM `id` reports its PBX running.
pub fn pbx_running(id: u8) -> bool {
    status(id)
        .and_then(|s| s.pointer("/pbx/state").and_then(|v| v.as_str()).map(|st| st.starts_with("Running")))
        .unwrap_or(false)
}

/// The VM among `ids` reporting itself leader, if one does.
pub fn leader(ids: &[u8]) -> Option<u8> {
    ids.iter().copied().find(|id| status(*id).is_some_and(|s| s["role"] == "leader"))
}

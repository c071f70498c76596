//! SIP tools we did not write, run on the lab's client side: sipsak for
//! registrations and single requests, SIPp for calls (with the payload's
//! `uac.xml`/`uas.xml`), and the reading of SIPp's call log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::netns::CLIENT_NS;

/// Where the SIP tools run: the client side's namespace and address, and
/// the VIP they call through. [`LAB`] is the lab's; the hardware tests
/// (hwtests/) have their own segment.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// The client side's network namespace.
    pub ns: &'a str,
    /// The client's address in it.
    pub client_ip: std::net::Ipv4Addr,
    /// The cluster's VIP.
    pub vip: std::net::Ipv4Addr,
}

/// The lab's client side.
pub const LAB: Side<'static> = Side { ns: CLIENT_NS, client_ip: crate::layout::CLIENT_IP, vip: crate::layout::VIP };

/// `sipsak ARGS` in the client's namespace: success and output.
pub fn sipsak(args: &[&str]) -> std::io::Result<(bool, String)> {
    sipsak_in(&LAB, args)
}

/// `sipsak ARGS` on `side`: success and output.
pub fn sipsak_in(side: &Side<'_>, args: &[&str]) -> std::io::Result<(bool, String)> {
    let out = Command::new("ip").args(["netns", "exec", side.ns, "sipsak"]).args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// SIPp in the client's namespace, in its own process group, run from
/// `dir`, its screen in `dir/NAME.out`.
pub fn sipp(dir: &Path, name: &str, args: &[String]) -> std::io::Result<Child> {
    sipp_in(&LAB, dir, name, args)
}

/// SIPp on `side`, as [`sipp`].
pub fn sipp_in(side: &Side<'_>, dir: &Path, name: &str, args: &[String]) -> std::io::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", side.ns, "sipp"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join(format!("{name}.out")))?)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// A phone on `side` at `port`: answers each request the PBX routes to
/// it with a 200 carrying the supervisor's routed-probe mark
/// (`triad::sip_probe::routed_reply`), and counts them.
pub fn phone_in(side: &Side<'_>, port: u16) -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ip = side.client_ip;
    let sock = crate::netns::run_in(side.ns, move || std::net::UdpSocket::bind((ip, port)))
        .map_err(std::io::Error::other)??;
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(reply) = triad::sip_probe::routed_reply(&text) else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    });
    Ok(seen)
}

/// Where the payload's SIPp UAS listens on the client side, and its user.
pub const UAS_PORT: u16 = 5080;
/// The UAC's port on the client side.
pub const UAC_PORT: u16 = 5090;

/// The payload's SIPp UAS (`uas.xml`) on the client side, user `uas`.
pub fn uas(dir: &Path) -> std::io::Result<Child> {
    uas_in(&LAB, dir)
}

/// The payload's SIPp UAS on `side`, as [`uas`].
pub fn uas_in(side: &Side<'_>, dir: &Path) -> std::io::Result<Child> {
    let xml = crate::triad::payload_dir().join("uas.xml");
    let args = ["-sf".to_string(), xml.display().to_string(), "-i".into(), side.client_ip.to_string()];
    let more = ["-p", &UAS_PORT.to_string(), "-s", "uas", "-nostdin"].map(str::to_string);
    sipp_in(side, dir, "uas", &[&args[..], &more[..]].concat())
}

/// How the payload's SIPp UAC (`uac.xml`) places its calls to `uas`
/// through the VIP.
#[derive(Clone, Copy, Debug)]
pub struct Calls {
    /// Calls in all.
    pub count: u32,
    /// New calls per second.
    pub rate: u32,
    /// How long each call is held.
    pub hold_ms: u32,
}

/// The UAC, its screen in `dir/NAME.out`, its call log (`EST`/`BYEOK`
/// lines, [`CallLog`]) in `log`.
pub fn uac(dir: &Path, name: &str, calls: Calls, log: &Path) -> std::io::Result<Child> {
    uac_in(&LAB, dir, name, calls, log)
}

/// The UAC on `side`, as [`uac`].
pub fn uac_in(side: &Side<'_>, dir: &Path, name: &str, calls: Calls, log: &Path) -> std::io::Result<Child> {
    let xml = crate::triad::payload_dir().join("uac.xml");
    let args = [
        format!("{}:5060", side.vip),
        "-sf".into(),
        xml.display().to_string(),
        "-s".into(),
        "uas".into(),
        "-i".into(),
        side.client_ip.to_string(),
        "-p".into(),
        UAC_PORT.to_string(),
        "-m".into(),
        calls.count.to_string(),
        "-r".into(),
        calls.rate.to_string(),
        "-d".into(),
        calls.hold_ms.to_string(),
        "-nostdin".into(),
        "-timeout".into(),
        "90s".into(),
        "-trace_logs".into(),
        "-log_file".into(),
        log.display().to_string(),
    ];
    sipp_in(side, dir, name, &args)
}

/// Registers the UAS through the VIP with sipsak: success and output.
pub fn register_uas() -> std::io::Result<(bool, String)> {
    register_uas_in(&LAB)
}

/// Registers the UAS on `side` through its VIP, as [`register_uas`].
pub fn register_uas_in(side: &Side<'_>) -> std::io::Result<(bool, String)> {
    let contact = format!("sip:uas@{}:{UAS_PORT}", side.client_ip);
    sipsak_in(side, &["-U", "-C", &contact, "-s", &format!("sip:uas@{}", side.vip), "-i"])
}

/// What the payload's `uac.xml` logged (`-trace_logs`): each call's
/// establishment time (epoch seconds) and the calls whose BYE got a 200.
#[derive(Debug, Default, PartialEq)]
pub struct CallLog {
    /// Call number to the time its INVITE got its 200.
    pub established: BTreeMap<String, f64>,
    /// Calls whose BYE got a 200.
    pub bye_ok: BTreeSet<String>,
}

impl CallLog {
    /// Reads `EST <n> <epoch>` and `BYEOK <n> <epoch>` lines.
    pub fn parse(text: &str) -> CallLog {
        let mut log = CallLog::default();
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["EST", call, t, ..] => {
                    log.established.insert(call.to_string(), t.parse::<f64>().unwrap_or(f64::MAX));
                }
                ["BYEOK", call, ..] => {
                    log.bye_ok.insert(call.to_string());
                }
                _ => {}
            }
        }
        log
    }

    /// Calls established before `t` and how many of them ended with a
    /// 200 to their BYE.
    pub fn up_at(&self, t: f64) -> (usize, usize) {
        let before: Vec<&String> = self.established.iter().filter(|(_, e)| **e < t).map(|(c, _)| c).collect();
        let ok = before.iter().filter(|c| self.bye_ok.contains(**c)).count();
        (before.len(), ok)
    }

    /// The first establishment at or after `t`, if any.
    pub fn first_established_after(&self, t: f64) -> Option<f64> {
        self.established.values().copied().filter(|e| *e >= t).reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_log_counts_calls_up_at_an_instant_and_their_byes() {
        let log = CallLog::parse("EST 1 100\nEST 2 101\nBYEOK 1 104\nnoise\nEST 3 103\nBYEOK 3 107\n");
        assert_eq!(log.up_at(102.0), (2, 1), "calls 1 and 2 up, only 1's BYE answered");
        assert_eq!(log.first_established_after(102.0), Some(103.0));
        assert_eq!(log.first_established_after(200.0), None);
    }
}

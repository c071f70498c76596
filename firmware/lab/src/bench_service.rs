//! `triad-lab bench-service`: the PBX service's failover time (issue 11's
//! figure), from a fault of the active node to the first answer through
//! the VIP that the new active node's Kamailio routed to a registered user,
//! with each phase's share. A command that prints a table, not a test.
//!
//! One lab with the reference payload. A user (`bench`) is registered once
//! through the VIP by sipsak (a tool we did not write), its contact a
//! small SIP responder on the client side that marks its answers. Each
//! run: the cluster healthy, the PBX running and a routed probe answered;
//! 2 s plus a uniformly random instant within the next second; then the
//! fault (kill -9 of the active node's namespace, i.e. the box dies, or
//! its link down); then OPTIONS to `sip:bench@VIP` every 10 ms from the
//! client until a 200 carrying the responder's mark comes back: Kamailio
//! looked the user up in the replicated SQLite table and routed to it.
//!
//! Phases come from the new active node's log (timestamps of one clock on
//! one machine): detection (fault to its campaign), election (to leader),
//! volume ready (to the epoch's first record committed), attach, check,
//! mount, VIP (to the address raised), PBX start (to Kamailio spawned),
//! first routed answer (to the client's answer: Kamailio's own start, its
//! lookup in SQLite, the relay to the contact and back).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bench::next_random;
use crate::lab::{strip_ansi, Lab, LabError, Payload};
use crate::layout::{CLIENT_IP, JOURNAL_MIB, NODE_IDS, VIP};
use crate::netns::CLIENT_NS;
use crate::{triad, wait};

/// The registered user's contact port on the client.
const CONTACT_PORT: u16 = 5090;
/// The prober's port on the client.
const PROBE_PORT: u16 = 5091;
/// The responder's mark in its answers (the supervisor's own test-user
/// responder's: one reply builder for both).
const MARK: &str = ::triad::sip_probe::ROUTED_MARK;

/// A step of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceBenchError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("run {run}: {what}")]
    Run { run: usize, what: String },
    #[error("{0}")]
    Setup(String),
}

/// How the active node fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceFault {
    /// kill -9 of the node's namespace (supervisor, Kamailio, mount,
    /// nbdfuse): the box dies.
    Kill,
    /// Its link goes down; it stays up, isolated.
    LinkDown,
}

/// The phases, in order, as the table prints them.
const PHASES: [&str; 9] =
    ["detection", "election", "volume ready", "attach", "check", "mount", "VIP", "PBX start", "first routed answer"];

/// One run's phase ends, each as time since the fault.
#[derive(Debug, Clone)]
struct Run {
    /// The end of each phase in [`PHASES`], since the fault.
    ends: [Duration; 9],
}

/// Runs the series and prints the table.
pub fn run(bin: &std::path::Path, runs: usize, fault: ServiceFault) -> Result<(), ServiceBenchError> {
    let mut lab = pbx_lab(bin)?;
    let stop = Arc::new(AtomicBool::new(false));
    let responder = responder(stop.clone())?;
    register()?;
    let prober = crate::netns::run_in(CLIENT_NS, || UdpSocket::bind((CLIENT_IP, PROBE_PORT)))
        .map_err(|e| ServiceBenchError::Setup(e.to_string()))?
        .map_err(|e| ServiceBenchError::Setup(format!("bind the prober: {e}")))?;
    prober.set_read_timeout(Some(Duration::from_millis(10))).map_err(|e| ServiceBenchError::Setup(e.to_string()))?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut rng = seed ^ u64::from(std::process::id());
    let mut results = Vec::new();
    let mut seq = 0u64;
    for run in 1..=runs {
        let leader = ready(&lab, &prober, &mut seq, run)?;
        let jitter = Duration::from_micros(next_random(&mut rng) % 1_000_000);
        std::thread::sleep(Duration::from_secs(2) + jitter);
        let marks: Vec<u64> = NODE_IDS.iter().map(|id| lab.log_len(*id)).collect();
        let fault_at = SystemTime::now();
        match fault {
            ServiceFault::Kill => lab.kill_node(leader)?,
            ServiceFault::LinkDown => lab.set_link(leader, false)?,
        }
        let first_seq = seq + 1;
        let answered = probe_until(&prober, &mut seq, first_seq, Duration::from_secs(20))
            .ok_or(ServiceBenchError::Run { run, what: "no routed answer within 20 s".into() })?;
        let new = lab
            .wait_healthy(&others(leader), Duration::from_secs(10))
            .map_err(|e| ServiceBenchError::Run { run, what: format!("no healthy new leader: {e}") })?;
        let log = strip_ansi(&lab.log_since(new, marks[usize::from(new) - 1]));
        let r = phases(&log, fault_at, answered).map_err(|what| ServiceBenchError::Run { run, what })?;
        eprintln!(
            "run {run}/{runs}: n{leader} -> n{new}: first routed answer {:.0} ms (election {:.0}, mount {:.0}, PBX {:.0})",
            ms(r.ends[8]),
            ms(r.ends[1]),
            ms(r.ends[5]),
            ms(r.ends[7])
        );
        results.push(r);
        match fault {
            ServiceFault::Kill => lab.restart_node(leader)?,
            ServiceFault::LinkDown => {
                lab.set_link(leader, true)?;
                lab.restart_node(leader)?;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = responder.join();
    Lab::down()?;
    print_table(&results, runs, fault);
    Ok(())
}

/// A lab running the reference payload.
fn pbx_lab(bin: &std::path::Path) -> Result<Lab, ServiceBenchError> {
    let opts = triad::NodeOptions { pbx: true, ..triad::NodeOptions::default() };
    let payload = Payload::Triad {
        bin: bin.to_path_buf(),
        profile: crate::lab::Profile::Default,
        journal_mib: JOURNAL_MIB,
        opts,
    };
    eprintln!("== bringing up the lab with the PBX");
    Ok(Lab::up(payload)?)
}

/// Waits for a healthy cluster whose leader's PBX runs and routes a probe.
fn ready(lab: &Lab, prober: &UdpSocket, seq: &mut u64, run: usize) -> Result<u8, ServiceBenchError> {
    let leader = lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
    let pbx = |id: u8| lab.status(id).ok().and_then(|s| s.pbx).map(|p| p.state).unwrap_or_default();
    wait::until(Duration::from_secs(15), Duration::from_millis(20), || {
        pbx(leader).starts_with("Running").then_some(())
    })
    .ok_or_else(|| ServiceBenchError::Run { run, what: format!("n{leader}'s PBX never ran: {}", pbx(leader)) })?;
    let first = *seq + 1;
    probe_until(prober, seq, first, Duration::from_secs(5)).ok_or_else(|| ServiceBenchError::Run {
        run,
        what: "before the fault, a probe to the registered user was not routed (registration lost?)".into(),
    })?;
    Ok(leader)
}

fn others(id: u8) -> Vec<u8> {
    NODE_IDS.iter().copied().filter(|i| *i != id).collect()
}

/// Sends OPTIONS to `sip:bench@VIP` every 10 ms until a 200 with the
/// responder's mark answers one sent at or after number `first`; returns
/// when it arrived.
fn probe_until(sock: &UdpSocket, seq: &mut u64, first: u64, limit: Duration) -> Option<SystemTime> {
    let start = std::time::Instant::now();
    let vip = SocketAddr::from((VIP, 5060));
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        *seq += 1;
        let _ = sock.send_to(options(*seq).as_bytes(), vip);
        // Drain answers for 10 ms.
        let until = std::time::Instant::now() + Duration::from_millis(10);
        while std::time::Instant::now() < until {
            let Ok((n, _)) = sock.recv_from(&mut buf) else { break };
            let text = String::from_utf8_lossy(&buf[..n]);
            let numbered = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: triad-bench-"))
                .and_then(|v| v.split('@').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if text.starts_with("SIP/2.0 200") && text.contains(MARK) && numbered.is_some_and(|n| n >= first) {
                return Some(SystemTime::now());
            }
        }
    }
    None
}

/// An OPTIONS for the registered user, numbered `n`.
fn options(n: u64) -> String {
    format!(
        "OPTIONS sip:bench@{VIP} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT_IP}:{PROBE_PORT};branch=z9hG4bK-triad-bench-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:prober@{CLIENT_IP}>;tag=p{n}\r\n\
         To: <sip:bench@{VIP}>\r\n\
         Call-ID: triad-bench-{n}@{CLIENT_IP}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The registered user's phone: answers every request with a marked 200.
fn responder(stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>, ServiceBenchError> {
    let sock = crate::netns::run_in(CLIENT_NS, || UdpSocket::bind((CLIENT_IP, CONTACT_PORT)))
        .map_err(|e| ServiceBenchError::Setup(e.to_string()))?
        .map_err(|e| ServiceBenchError::Setup(format!("bind the responder: {e}")))?;
    sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| ServiceBenchError::Setup(e.to_string()))?;
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(reply) = ::triad::sip_probe::routed_reply(&text) else { continue };
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    }))
}

/// Registers `bench` through the VIP with sipsak, its contact the responder.
fn register() -> Result<(), ServiceBenchError> {
    let contact = format!("sip:bench@{CLIENT_IP}:{CONTACT_PORT}");
    let user = format!("sip:bench@{VIP}");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", CLIENT_NS, "sipsak", "-U", "-C", &contact, "-s", &user, "-i", "-x", "3600"])
        .output()
        .map_err(|e| ServiceBenchError::Setup(format!("sipsak: {e}")))?;
    if !out.status.success() {
        return Err(ServiceBenchError::Setup(format!(
            "REGISTER through the VIP failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The phase ends of one run from the new active node's log.
fn phases(log: &str, fault: SystemTime, answered: SystemTime) -> Result<Run, String> {
    let at = |needle: &str| -> Result<Duration, String> {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .ok_or_else(|| format!("no log line with {needle:?} on the new active node"))?;
        let t = line.split_whitespace().next().and_then(parse_rfc3339).ok_or_else(|| format!("no time in {line:?}"))?;
        Ok(t.duration_since(fault).unwrap_or_default())
    };
    let campaign = at("role=PreCandidate").or_else(|_| at("role=Candidate"))?;
    let ends = [
        campaign,
        at("role=Leader")?,
        at("first record of the epoch committed")?,
        at("step done step=\"attach\"")?,
        at("step done step=\"check\"")?,
        at("step done step=\"mount\"")?,
        at("VIP action=Add result=Done")?,
        at("PBX started")?,
        answered.duration_since(fault).unwrap_or_default(),
    ];
    Ok(Run { ends })
}

/// `2026-12-06T16:38:51.399277Z` as a system time (UTC).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|v| v.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + min * 60 + sec, nanos as u32))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p99 (nearest rank) of `v`.
fn median_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort_unstable();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2 };
    (median, v[((0.99 * n as f64).ceil() as usize).clamp(1, n) - 1])
}

fn print_table(results: &[Run], runs: usize, fault: ServiceFault) {
    println!("service failover, fault {fault:?}, {} of {runs} runs measured", results.len());
    println!("{:<22} {:>11} {:>11} {:>11} {:>7}", "phase", "median_ms", "p99_ms", "ends_p50", "share");
    let total = median_p99(results.iter().map(|r| r.ends[8]).collect()).0;
    for (i, name) in PHASES.iter().enumerate() {
        let lengths: Vec<Duration> = results
            .iter()
            .map(|r| r.ends[i].saturating_sub(if i == 0 { Duration::ZERO } else { r.ends[i - 1] }))
            .collect();
        let (m, p) = median_p99(lengths);
        let (end, _) = median_p99(results.iter().map(|r| r.ends[i]).collect());
        let share = if total.is_zero() { 0.0 } else { 100.0 * m.as_secs_f64() / total.as_secs_f64() };
        println!("{name:<22} {:>11.1} {:>11.1} {:>11.1} {:>6.1}%", ms(m), ms(p), ms(end), share);
    }
    let (m, p) = median_p99(results.iter().map(|r| r.ends[8]).collect());
    let max = results.iter().map(|r| r.ends[8]).max().unwrap_or_default();
    println!("{:<22} {:>11.1} {:>11.1} (max {:.1} ms)", "TOTAL fault->routed", ms(m), ms(p), ms(max));
    println!(
        "(phase lengths are per-run differences of consecutive ends; their medians need not add up to the total's)"
    );
}

/// Calls per run of the calls series, their rate and length: about 12
/// calls up at any instant, the kill landing among them.
const CALLS: u32 = 40;
const CALL_RATE: u32 = 5;
const CALL_MS: u32 = 2500;

/// One run of the calls series.
#[derive(Debug, Clone, Copy)]
struct CallsRun {
    /// Calls established before the kill.
    up: usize,
    /// Of those, ended with a 200 to their BYE.
    up_ok: usize,
    /// Calls that did not end with a 200 to their BYE (of [`CALLS`]).
    failed: usize,
    /// From the kill to the first call established after it.
    new_again: Option<Duration>,
}

/// `triad-lab bench-calls`: SIPp places calls through the VIP to a SIPp
/// UAS registered with sipsak; the active node is killed at a random
/// instant while about a dozen are up. Per run: calls up at the kill and
/// how many ended with a 200 to their BYE after it, calls that failed, and
/// the time from the kill to the first new call established.
pub fn calls(bin: &std::path::Path, runs: usize) -> Result<(), ServiceBenchError> {
    let mut lab = pbx_lab(bin)?;
    let dir = std::path::Path::new(crate::layout::LAB_DIR).join("bench-calls");
    std::fs::create_dir_all(&dir).map_err(|e| ServiceBenchError::Setup(format!("mkdir {}: {e}", dir.display())))?;
    let mut uas = crate::sip::uas(&dir).map_err(|e| ServiceBenchError::Setup(format!("sipp: {e}")))?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut rng = seed ^ u64::from(std::process::id());
    let mut results = Vec::new();
    for run in 1..=runs {
        let leader = lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
        let pbx = |id: u8| lab.status(id).ok().and_then(|s| s.pbx).map(|p| p.state).unwrap_or_default();
        wait::until(Duration::from_secs(15), Duration::from_millis(20), || {
            pbx(leader).starts_with("Running").then_some(())
        })
        .ok_or_else(|| ServiceBenchError::Run { run, what: format!("n{leader}'s PBX never ran") })?;
        let (ok, out) = crate::sip::register_uas().map_err(|e| ServiceBenchError::Setup(format!("sipsak: {e}")))?;
        if !ok {
            return Err(ServiceBenchError::Run { run, what: format!("REGISTER of the UAS failed: {out}") });
        }
        let log = dir.join(format!("uac-{run}.log"));
        let calls = crate::sip::Calls { count: CALLS, rate: CALL_RATE, hold_ms: CALL_MS };
        let mut uac = crate::sip::uac(&dir, &format!("uac-{run}"), calls, &log)
            .map_err(|e| ServiceBenchError::Setup(format!("sipp: {e}")))?;
        // Past the ramp (the first calls are up), then a random instant.
        let jitter = Duration::from_micros(next_random(&mut rng) % 1_000_000);
        std::thread::sleep(Duration::from_millis(3000) + jitter);
        let t_kill = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        lab.kill_node(leader)?;
        let exited =
            wait::until(Duration::from_secs(100), Duration::from_millis(100), || uac.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = crate::spawn::signal(-(uac.id() as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = uac.wait();
        }
        let calls = crate::sip::CallLog::parse(&std::fs::read_to_string(&log).unwrap_or_default());
        let (up, up_ok) = calls.up_at(t_kill);
        let r = CallsRun {
            up,
            up_ok,
            failed: (CALLS as usize).saturating_sub(calls.bye_ok.len()),
            new_again: calls.first_established_after(t_kill).map(|t| Duration::from_secs_f64(t - t_kill)),
        };
        eprintln!(
            "run {run}/{runs}: n{leader} killed with {up} calls up, {up_ok} ended with BYE 200; {} of {CALLS} calls failed; first new call {:?} after the kill",
            r.failed, r.new_again
        );
        results.push(r);
        lab.restart_node(leader)?;
    }
    let _ = crate::spawn::signal(-(uas.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = uas.wait();
    Lab::down()?;
    let up: usize = results.iter().map(|r| r.up).sum();
    let up_ok: usize = results.iter().map(|r| r.up_ok).sum();
    let failed: usize = results.iter().map(|r| r.failed).sum();
    let (m, p) = median_p99(results.iter().filter_map(|r| r.new_again).collect());
    println!(
        "calls across a kill -9 of the active node, {} runs, {CALLS} calls each ({CALL_RATE}/s, {CALL_MS} ms long)",
        results.len()
    );
    println!("{:<48} {:>10}", "calls up at the kill", up);
    println!("{:<48} {:>10}", "  of them ended with 200 to their BYE", up_ok);
    println!("{:<48} {:>9.1}%", "  share", if up == 0 { 0.0 } else { 100.0 * up_ok as f64 / up as f64 });
    println!("{:<48} {:>10}", "calls that did not end with 200 to their BYE", failed);
    println!("{:<48} {:>10.0} {:>8.0}", "kill to first new call established (p50, p99 ms)", ms(m), ms(p));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn log_times_parse_as_utc() {
        let t = parse_rfc3339("2026-12-06T16:38:51.399277Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap();
        // date -u -d 2026-12-06T16:38:51Z +%s
        assert_eq!(secs.as_secs(), 1_796_575_131);
        assert_eq!(secs.subsec_micros(), 399_277);
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z").unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            951_868_800
        );
        assert!(parse_rfc3339("not a time").is_none());
    }

    #[test]
    fn phases_are_read_from_the_new_leaders_log() {
        let fault = parse_rfc3339("2026-12-06T10:00:00.000Z").unwrap();
        let log = "2026-12-06T10:00:00.300Z INFO role changed role=PreCandidate epoch=1\n\
                   2026-12-06T10:00:00.320Z INFO role changed role=Leader epoch=2\n\
                   2026-12-06T10:00:00.400Z INFO volume: first record of the epoch committed; serving\n\
                   2026-12-06T10:00:00.450Z INFO filesystem step done step=\"attach\" took=50ms\n\
                   2026-12-06T10:00:00.470Z INFO filesystem step done step=\"check\" took=20ms\n\
                   2026-12-06T10:00:00.480Z INFO filesystem step done step=\"mount\" took=10ms\n\
                   2026-12-06T10:00:00.490Z INFO VIP action=Add result=Done\n\
                   2026-12-06T10:00:00.520Z INFO PBX started run=1 pid=9\n";
        let r = phases(log, fault, fault + Duration::from_millis(530)).unwrap();
        let got: Vec<u64> = r.ends.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(got, [300, 320, 400, 450, 470, 480, 490, 520, 530]);
        assert_eq!(
            phases("nothing", fault, fault).unwrap_err(),
            "no log line with \"role=Candidate\" on the new active node"
        );
    }
}

//! The failover benchmark (triad against keepalived in the same lab) and
//! the idle soak under CPU load. These are commands that print tables, not
//! timed tests: their numbers go in docs/failover-benchmark.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, Payload};
use crate::layout::{self, node_ip, node_mac, NODE_IDS};
use crate::netns::CLIENT_NS;
use crate::observer::{self, Observer, ObserverError};
use crate::spawn;
use crate::wait;

/// A benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Observer(#[from] ObserverError),
    #[error("run {run}: {what}")]
    Run { run: usize, what: String },
    #[error("could not start the CPU load ({0})")]
    Load(String),
    #[error("fault {fault} needs the triad payload (it is a hook inside the supervisor); use --skip-keepalived")]
    TriadOnly { fault: &'static str },
}

/// Bound after a fault past which a frozen node's kernel must have dropped
/// the VIP: address lifetime 1 s + the kernel's ~0.25 s check granularity,
/// plus one sweep interval of observation slack.
pub const FROZEN_VIP_BOUND: Duration = Duration::from_millis(1300);

/// How the active node fails in a series. The same mechanism is used for
/// triad and keepalived, so the comparison is of the software only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGSTOP of every process of the node, and its switch port down: a
    /// box that hangs and drops off the network (speed comparison).
    StopDown,
    /// kill -9 of every process of the node, and its switch port down: a
    /// box that loses power (speed comparison).
    KillDown,
    /// SIGSTOP of every process of the node, port up: its kernel lives on
    /// (double answers show here).
    Stop,
    /// kill -9 of every process of the node, port up: the namespace lives
    /// until its last process is gone.
    Kill,
    /// Peer traffic dropped both ways in the node's namespace (nftables),
    /// the client still reaches it.
    Partition,
    /// Triad only: the supervisor's event loop held right before its next
    /// fence call (timeout computed, kernel not told), port up, released
    /// 100 ms after the new node's first reply so the late refresh lands
    /// while the old node still has the VIP address (issue 10's
    /// freeze-before-refresh hook).
    HoldFence,
}

/// How long after the new node's first reply a held fence call is let go.
pub const HOLD_FENCE_RELEASE: Duration = Duration::from_millis(100);

impl Fault {
    /// Its name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::StopDown => "stop-down",
            Fault::KillDown => "kill-down",
            Fault::Stop => "stop",
            Fault::Kill => "kill",
            Fault::Partition => "partition",
            Fault::HoldFence => "hold-fence",
        }
    }

    fn inject(self, lab: &Lab, id: u8) -> Result<(), BenchError> {
        match self {
            Fault::StopDown => {
                lab.signal_node_processes(id, nix::sys::signal::Signal::SIGSTOP)?;
                lab.set_link(id, false)?;
            }
            Fault::KillDown => {
                lab.set_link(id, false)?;
                lab.kill_node(id)?;
            }
            Fault::Stop => lab.signal_node_processes(id, nix::sys::signal::Signal::SIGSTOP)?,
            Fault::Kill => lab.kill_node(id)?,
            Fault::Partition => {
                let peers: Vec<String> =
                    NODE_IDS.iter().filter(|p| **p != id).map(|p| node_ip(*p).to_string()).collect();
                let set = peers.join(", ");
                let rules = format!(
                    "table inet tlab {{\n chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n \
                     chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n}}\n"
                );
                let file = layout::node_dir(id).join("partition.nft");
                std::fs::write(&file, rules).map_err(|e| BenchError::Load(format!("write {}: {e}", file.display())))?;
                lab.run_in(id, "nft", &["-f", &file.display().to_string()])?;
            }
            Fault::HoldFence => {
                lab.hold_before_fence(id)?;
                // The leader refreshes about every 110 ms; the fault begins
                // when its loop is held.
                wait::until(Duration::from_secs(5), Duration::from_millis(1), || {
                    lab.held_before_fence(id).then_some(())
                })
                .ok_or_else(|| BenchError::Load(format!("n{id} never reached a fence call in 5 s")))?;
            }
        }
        Ok(())
    }

    /// A hold-fence run counts only if the held call really went out late
    /// and the kernel refused it (its element had expired).
    fn check_log(self, log: &str, run: usize) -> Result<(), BenchError> {
        if self != Fault::HoldFence {
            return Ok(());
        }
        let acted = log.contains("holding right before a fence call");
        let refused = log.contains("had expired before its refresh") || log.contains("fence operation failed");
        if acted && refused {
            return Ok(());
        }
        Err(BenchError::Run {
            run,
            what: format!("the held fence call did not fail late (hook acted: {acted}):\n{log}"),
        })
    }

    /// Acts once the new node answers: lets a held fence call go while the
    /// old node still has the address, so only its fence keeps it silent.
    fn after_takeover(self, lab: &Lab, id: u8, run: usize) -> Result<(), BenchError> {
        if self != Fault::HoldFence {
            return Ok(());
        }
        std::thread::sleep(HOLD_FENCE_RELEASE);
        if !lab.vip_on(id) {
            return Err(BenchError::Run {
                run,
                what: format!("n{id}'s VIP address expired before the release: the run would prove nothing"),
            });
        }
        lab.release_fence_hold(id)?;
        Ok(())
    }

    /// Brings node `id` back as a follower for the next run.
    fn recover(self, lab: &mut Lab, id: u8) -> Result<(), BenchError> {
        match self {
            Fault::Partition => {
                lab.run_in(id, "nft", &["delete", "table", "inet", "tlab"])?;
            }
            // Thawed first: a stopped process in the middle of a disk sync
            // can keep its namespace alive past kill_node's wait. Then a
            // fresh start, so every run begins from three healthy nodes
            // (a thawed keepalived with `nopreempt` may stay master).
            Fault::Stop | Fault::StopDown => {
                lab.signal_node_processes(id, nix::sys::signal::Signal::SIGCONT)?;
                lab.set_link(id, true)?;
                lab.restart_node(id)?;
            }
            Fault::KillDown | Fault::Kill => lab.restart_node(id)?,
            // Released in after_takeover; it steps down on its own. A
            // release here too covers a run that failed before that.
            Fault::HoldFence => lab.release_fence_hold(id)?,
        }
        Ok(())
    }
}

/// A small deterministic generator for the fault instants (splitmix64).
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The results of one payload's series of failovers.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub gaps: Vec<Duration>,
    /// From the fault to the first reply from the new node (issue 10's
    /// failover figure; with the port up the old node may answer on for a
    /// while, so this is longer than the gap).
    pub since_fault: Vec<Duration>,
    /// Runs in which two nodes answered for the VIP (ARP or echo) at some
    /// instant after the fault: an answer from any node but the new one
    /// after the new one's first (no blind window).
    pub dual_answers: usize,
    /// ARP requests the client sent for the VIP (must be 0).
    pub client_arps: usize,
}

impl Series {
    fn sorted(&self) -> Vec<Duration> {
        let mut g = self.gaps.clone();
        g.sort_unstable();
        g
    }
    /// Median and p99 (nearest rank) of the time from fault to first new reply.
    pub fn since_fault_median_p99(&self) -> (Option<Duration>, Option<Duration>) {
        let mut g = self.since_fault.clone();
        g.sort_unstable();
        if g.is_empty() {
            return (None, None);
        }
        let n = g.len();
        let median = if n % 2 == 1 { g[n / 2] } else { (g[n / 2 - 1] + g[n / 2]) / 2 };
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        (Some(median), Some(g[rank - 1]))
    }
    /// The median gap.
    pub fn median(&self) -> Option<Duration> {
        let g = self.sorted();
        if g.is_empty() {
            return None;
        }
        let n = g.len();
        Some(if n % 2 == 1 { g[n / 2] } else { (g[n / 2 - 1] + g[n / 2]) / 2 })
    }
    /// The p-th percentile by nearest rank (p99 of 20 runs is the max).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let g = self.sorted();
        if g.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * g.len() as f64).ceil() as usize;
        Some(g[rank.clamp(1, g.len()) - 1])
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()))
}

/// Prints the table of all series and the ratios of the first series to
/// each keepalived one.
pub fn print_table(series: &[Series]) {
    println!(
        "{:<28} {:>5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>10}",
        "payload", "runs", "median_s", "p99_s", "min_s", "max_s", "fault_med_s", "fault_p99_s", "dual", "client_arp"
    );
    for s in series {
        let g = s.sorted();
        let (fm, fp) = s.since_fault_median_p99();
        println!(
            "{:<28} {:>5} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>10}",
            s.label,
            s.gaps.len(),
            secs(s.median()),
            secs(s.percentile(99.0)),
            secs(g.first().copied()),
            secs(g.last().copied()),
            secs(fm),
            secs(fp),
            s.dual_answers,
            s.client_arps
        );
    }
    let triads: Vec<&Series> = series.iter().filter(|s| s.label.starts_with("triad")).collect();
    let kas: Vec<&Series> = series.iter().filter(|s| s.label.starts_with("keepalived")).collect();
    for t in &triads {
        for k in &kas {
            if let (Some(tm), Some(km)) = (t.median(), k.median()) {
                println!(
                    "ratio {} / {}: median {:.3} (keepalived {:.1}x slower)",
                    t.label,
                    k.label,
                    tm.as_secs_f64() / km.as_secs_f64(),
                    km.as_secs_f64() / tm.as_secs_f64().max(1e-6)
                );
            }
        }
    }
}

/// Fails the active node `runs` times with `fault`, each at a uniformly
/// random instant within a second (so it lands anywhere in keepalived's
/// advert cycle and triad's heartbeat), and measures the client's gap and
/// whether two nodes ever answered for the VIP.
pub fn failover_series(payload: Payload, label: &str, runs: usize, fault: Fault) -> Result<Series, BenchError> {
    if fault == Fault::HoldFence && !matches!(payload, Payload::Triad { .. }) {
        return Err(BenchError::TriadOnly { fault: fault.name() });
    }
    eprintln!("== {label}: bringing up the lab");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut rng = now.as_nanos() as u64 ^ u64::from(std::process::id());
    let mut lab = Lab::up(payload)?;
    let obs = Observer::start(CLIENT_NS)?;
    let mut series =
        Series { label: label.to_string(), gaps: Vec::new(), since_fault: Vec::new(), dual_answers: 0, client_arps: 0 };
    for run in 1..=runs {
        let leader = lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
        let old = node_mac(leader);
        // The client must be talking to the leader before the fault, or the
        // gap would measure something else.
        wait::until(Duration::from_secs(10), Duration::from_millis(50), || {
            let now = obs.now();
            let recent = observer::replies_between(&obs.events(), now.saturating_sub(Duration::from_millis(200)), now);
            (lab.client_neigh() == Some(old) && recent.iter().any(|(_, m)| *m == old)).then_some(())
        })
        .ok_or_else(|| BenchError::Run {
            run,
            what: format!(
                "client is not getting replies from leader n{leader} (neighbour entry {:?})",
                lab.client_neigh().map(|m| m.to_string())
            ),
        })?;
        // Keep memory flat over long runs; replies from the old leader keep
        // arriving during the spacing below, which the gap needs.
        obs.clear();
        // Spacing for the client's neighbour locktime (1 s) with margin,
        // then a uniformly random instant within the next second.
        let jitter = Duration::from_micros(next_random(&mut rng) % 1_000_000);
        std::thread::sleep(Duration::from_secs(2) + jitter);
        let log_mark = lab.log_len(leader);
        let fault_at = obs.now();
        fault.inject(&lab, leader)?;
        let gap = wait::until(Duration::from_secs(20), Duration::from_millis(10), || {
            observer::failover_gap(&obs.events(), old, fault_at)
        })
        .ok_or_else(|| BenchError::Run {
            run,
            what: format!("no reply from a new MAC within 20 s after crashing n{leader}"),
        })?;
        fault.after_takeover(&lab, leader, run)?;
        // Watch past the frozen node's address lifetime: a double answer
        // can come late.
        let until = gap.first_new.max(fault_at + FROZEN_VIP_BOUND) + Duration::from_secs(1);
        while obs.now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ev = obs.events();
        if let Err(e) = observer::check_one_answerer_from(&ev, fault_at, old, gap.new_mac) {
            eprintln!("run {run}: {e}");
            series.dual_answers += 1;
        }
        series.client_arps += observer::client_arp_requests(&ev, fault_at);
        fault.check_log(&lab.log_since(leader, log_mark), run)?;
        let new = lab.layout.node_by_mac(gap.new_mac).map_or("?".into(), |i| format!("n{i}"));
        eprintln!(
            "run {run}/{runs}: n{leader} -> {new}: gap {:.3} s, fault to first new reply {:.3} s",
            gap.length().as_secs_f64(),
            gap.first_new.saturating_sub(fault_at).as_secs_f64()
        );
        series.gaps.push(gap.length());
        series.since_fault.push(gap.first_new.saturating_sub(fault_at));
        fault.recover(&mut lab, leader)?;
    }
    drop(obs);
    Lab::down()?;
    Ok(series)
}

/// Keeps both cores busy: stress-ng if installed, else two shell loops.
fn start_load(seconds: u64) -> Result<Vec<Child>, BenchError> {
    let spawn = |c: &mut Command| c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    if let Ok(c) = spawn(Command::new("stress-ng").args(["--cpu", "2", "--timeout", &format!("{seconds}s")])) {
        return Ok(vec![c]);
    }
    (0..2)
        .map(|_| {
            spawn(Command::new("sh").args(["-c", "while :; do :; done"])).map_err(|e| BenchError::Load(e.to_string()))
        })
        .collect()
}

/// Runs an idle cluster under CPU load for `minutes` and reports leader
/// changes and the supervisors' CPU and memory.
pub fn soak(payload: Payload, minutes: u64) -> Result<(), BenchError> {
    let lab = Lab::up(payload)?;
    let obs = Observer::start(CLIENT_NS)?;
    let first = lab.wait_healthy(&NODE_IDS, Duration::from_secs(30))?;
    let mut leader = (first, lab.status(first).map(|s| s.epoch).unwrap_or(0));
    let total = Duration::from_secs(minutes * 60);
    let mut load = start_load(total.as_secs())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let pids: Vec<(u8, i32)> = lab.layout.nodes.iter().map(|n| (n.id, n.supervisor_pid)).collect();
    let cpu0: Vec<u64> = pids.iter().map(|(_, p)| spawn::cpu_and_rss(*p).map_or(0, |c| c.0)).collect();
    let mut max_rss = vec![0u64; pids.len()];
    let (mut changes, mut status_failures, mut samples) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    eprintln!("soak: leader n{} epoch {}, {} min under load", leader.0, leader.1, minutes);
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        samples += 1;
        for (i, (_, pid)) in pids.iter().enumerate() {
            if let Some((_, rss)) = spawn::cpu_and_rss(*pid) {
                max_rss[i] = max_rss[i].max(rss);
            }
        }
        let now: Vec<(u8, u64)> = NODE_IDS
            .iter()
            .filter_map(|id| lab.status(*id).ok())
            .filter(|s| s.role == "leader")
            .map(|s| (s.node_id, s.epoch))
            .collect();
        match now[..] {
            [l] if l != leader => {
                changes += 1;
                eprintln!("soak: leader change at {:?}: {:?} -> {:?}", start.elapsed(), leader, l);
                leader = l;
            }
            [_] => {}
            _ => status_failures += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ev = obs.events();
    let macs = observer::vip_arp_macs(&ev, Duration::ZERO);
    let policy = |pid: i32| spawn::sched_policy(pid).unwrap_or_else(|| "?".into());
    println!(
        "soak: {minutes} min, load: 2 CPU hogs ({}), supervisors {}, {samples} samples",
        load.first().map_or("?".into(), |c| policy(c.id() as i32)),
        pids.first().map_or("?".into(), |(_, p)| policy(*p))
    );
    for c in &mut load {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("leader changes: {changes} (samples without exactly one leader: {status_failures})");
    println!("MACs sending ARP for the VIP: {:?}", macs.iter().map(|m| m.to_string()).collect::<Vec<_>>());
    println!("client ARP requests for the VIP: {}", observer::client_arp_requests(&ev, Duration::ZERO));
    println!("{:<6} {:>8} {:>10} {:>12}", "node", "pid", "cpu_%", "max_rss_MiB");
    for (i, (id, pid)) in pids.iter().enumerate() {
        let ticks = spawn::cpu_and_rss(*pid).map_or(0, |c| c.0).saturating_sub(cpu0[i]);
        println!(
            "n{:<5} {:>8} {:>10.3} {:>12.1}",
            id,
            pid,
            100.0 * ticks as f64 / hz / elapsed,
            max_rss[i] as f64 / 1024.0
        );
    }
    drop(obs);
    Lab::down()?;
    Ok(())
}

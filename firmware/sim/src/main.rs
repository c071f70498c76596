//! `triad-sim`: run seed ranges and print a summary, or replay one seed.
//!
//! `run --seeds 0..1000 [--scenario NAME] [--mutation M]` runs each seed
//! (the scenario mix round-robin unless one is named) and prints a table
//! per scenario; `replay --seed N [--scenario NAME] [--trace]` reruns one
//! seed, printing every event with `--trace`. Exit code 1 if any seed
//! violated an invariant, 2 on bad arguments.

use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant as WallClock;
use triad_sim::data::{data_replay_command, run_data, DataMutation, DataOutcome, DataScenario};
use triad_sim::{replay_command, run, Check, Mutation, Outcome, Scenario};

#[derive(Parser, Debug)]
#[command(name = "triad-sim", about = "Deterministic simulator of a three-node Triad cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a range of seeds and print a summary table.
    Run {
        /// Seeds as A..B (B excluded).
        #[arg(long, default_value = "0..200")]
        seeds: String,
        /// Run only this scenario (default: the mix, round robin by seed).
        #[arg(long)]
        scenario: Option<String>,
        /// Break a rule on purpose (repeatable; see docs/simulator.md).
        #[arg(long)]
        mutation: Vec<String>,
        /// Make the checks of known core bugs fatal too.
        #[arg(long)]
        no_tolerate: bool,
        /// Record but do not fail on this check (repeatable), e.g. to see
        /// what a mutation leads to beyond the first check it trips.
        #[arg(long)]
        tolerate: Vec<String>,
    },
    /// Replay one seed.
    Replay {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// The scenario (default: the one the mix gives this seed).
        #[arg(long)]
        scenario: Option<String>,
        /// Break a rule on purpose (repeatable).
        #[arg(long)]
        mutation: Vec<String>,
        /// Print every event.
        #[arg(long)]
        trace: bool,
        /// Make the checks of known core bugs fatal too.
        #[arg(long)]
        no_tolerate: bool,
        /// Record but do not fail on this check (repeatable), e.g. to see
        /// what a mutation leads to beyond the first check it trips.
        #[arg(long)]
        tolerate: Vec<String>,
        /// Starve messages while the core's deadline stays in the past, as
        /// the real runtime's biased select does (see finding F1).
        #[arg(long)]
        faithful_spin: bool,
    },
    /// The data world (replicated volume): run a seed range, or replay one seed.
    Data {
        /// Seeds as A..B (B excluded).
        #[arg(long, default_value = "0..200")]
        seeds: String,
        /// Replay this one seed instead (with `--trace`, every event).
        #[arg(long)]
        seed: Option<u64>,
        /// Run only this scenario (default: the mix, round robin by seed).
        #[arg(long)]
        scenario: Option<String>,
        /// A glue bug on purpose (repeatable; see docs/simulator.md).
        #[arg(long)]
        mutation: Vec<String>,
        /// Print every event (replay).
        #[arg(long)]
        trace: bool,
        /// Make violations in runs that set off a known triad-repl bug fatal too.
        #[arg(long)]
        no_tolerate: bool,
    },
}

struct Opts<'a> {
    name: Option<&'a str>,
    mutations: Vec<Mutation>,
    no_tolerate: bool,
    tolerate: Vec<Check>,
}

fn parse_checks(names: &[String]) -> Result<Vec<Check>, String> {
    names.iter().map(|n| Check::parse(n).ok_or_else(|| format!("unknown check {n:?}"))).collect()
}

fn scenario_for(seed: u64, o: &Opts) -> Result<Scenario, String> {
    let (name, no_tolerate) = (o.name, o.no_tolerate);
    let mut sc = match name {
        Some(n) => Scenario::named(n).ok_or_else(|| {
            let names: Vec<_> = Scenario::all().iter().map(|s| s.name).collect();
            format!("unknown scenario {n:?}; known: {}", names.join(", "))
        })?,
        None => Scenario::for_seed(seed),
    };
    sc.mutations = o.mutations.clone();
    let mut sc = if no_tolerate { sc.strict_checks() } else { sc };
    sc.tolerate.extend(o.tolerate.iter().copied());
    Ok(sc)
}

fn parse_mutations(ms: &[String]) -> Result<Vec<Mutation>, String> {
    ms.iter()
        .map(|m| {
            Mutation::parse(m).ok_or_else(|| {
                let names: Vec<_> = Mutation::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mutation {m:?}; known: {}", names.join(", "))
            })
        })
        .collect()
}

fn report_failure(o: &Outcome, sc: &Scenario) {
    if let Some(v) = &o.violation {
        println!("seed {} ({}): {v}", o.seed, o.scenario);
        println!("  replay: {}", replay_command(o.seed, sc));
    }
}

#[derive(Default)]
struct Row {
    seeds: u64,
    events: u64,
    failovers: usize,
    worst_recovery: u64,
    worst_overlap: u64,
    failed: u64,
    tolerated: u64,
    known: BTreeMap<String, u64>,
}

fn run_range(range: &str, opts: &Opts) -> Result<bool, String> {
    let (a, b) = range.split_once("..").ok_or("--seeds must look like A..B")?;
    let a: u64 = a.parse().map_err(|_| "bad start seed")?;
    let b: u64 = b.parse().map_err(|_| "bad end seed")?;
    let started = WallClock::now();
    let mut rows: BTreeMap<&'static str, Row> = BTreeMap::new();
    for seed in a..b {
        let sc = scenario_for(seed, opts)?;
        let o = run(seed, sc.clone(), false);
        let r = rows.entry(o.scenario).or_default();
        r.seeds += 1;
        r.events += o.events;
        r.failovers += o.failovers;
        r.worst_recovery = r.worst_recovery.max(o.recovery.unwrap_or(0));
        r.worst_overlap = r.worst_overlap.max(o.vip_overlap);
        r.tolerated += u64::from(!o.tolerated.is_empty());
        for t in &o.tolerated {
            *r.known.entry(format!("{:?}", t.check)).or_default() += 1;
        }
        if o.violation.is_some() {
            r.failed += 1;
            report_failure(&o, &sc);
        }
    }
    println!(
        "{:<12} {:>6} {:>10} {:>9} {:>13} {:>16} {:>6} {:>9}",
        "scenario", "seeds", "events", "failovers", "worst-recov", "worst-vip-overlap", "failed", "tolerated"
    );
    let mut ok = true;
    for (name, r) in &rows {
        println!(
            "{:<12} {:>6} {:>10} {:>9} {:>10} ms {:>13} ms {:>6} {:>9}",
            name,
            r.seeds,
            r.events,
            r.failovers,
            r.worst_recovery / 1000,
            r.worst_overlap / 1000,
            r.failed,
            r.tolerated
        );
        ok &= r.failed == 0;
    }
    let mut known: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows.values() {
        for (k, n) in &r.known {
            *known.entry(k.as_str()).or_default() += n;
        }
    }
    for (k, n) in known {
        println!("known core bug check {k} tolerated in {n} seeds");
    }
    println!("{} seeds in {:.1} s", b.saturating_sub(a), started.elapsed().as_secs_f64());
    Ok(ok)
}

fn data_scenario(
    seed: u64,
    name: Option<&str>,
    mutations: &[DataMutation],
    strict: bool,
) -> Result<DataScenario, String> {
    let mut sc = match name {
        Some(n) => DataScenario::named(n).ok_or_else(|| {
            let names: Vec<_> = DataScenario::all()
                .iter()
                .chain(&DataScenario::extra())
                .chain(&DataScenario::service())
                .map(|s| s.name)
                .collect();
            format!("unknown data scenario {n:?}; known: {}", names.join(", "))
        })?,
        None => DataScenario::for_seed(seed),
    };
    sc.mutations = mutations.to_vec();
    sc.tolerate_known_bugs = !strict;
    Ok(sc)
}

fn parse_data_mutations(ms: &[String]) -> Result<Vec<DataMutation>, String> {
    ms.iter()
        .map(|m| {
            DataMutation::parse(m).ok_or_else(|| {
                let names: Vec<_> = DataMutation::ALL.iter().map(|m| m.name()).collect();
                format!("unknown data mutation {m:?}; known: {}", names.join(", "))
            })
        })
        .collect()
}

fn data_failure(o: &DataOutcome, sc: &DataScenario) {
    if let Some(v) = &o.violation {
        println!("seed {} ({}): {v}", o.seed, o.scenario);
        println!("  replay: {}", data_replay_command(o.seed, sc));
    }
}

#[derive(Default)]
struct DataRow {
    seeds: u64,
    events: u64,
    writes: u64,
    acked: u64,
    leaderships: u64,
    checks: u64,
    bitmap: u64,
    hash: u64,
    kills: u64,
    cuts: u64,
    full_cuts: u64,
    compacted: u64,
    worst_converge: u64,
    failed: u64,
    tolerated: u64,
    errors: [u64; 4],
    disk_faults: u64,
    recoveries: [u64; 2],
    service_faults: u64,
    watchdog_resets: u64,
    worst_pbx_overlap: u64,
}

fn data_main(
    seeds: &str,
    one: Option<u64>,
    name: Option<&str>,
    mutations: &[String],
    trace: bool,
    strict: bool,
) -> Result<bool, String> {
    let mutations = parse_data_mutations(mutations)?;
    if let Some(seed) = one {
        let sc = data_scenario(seed, name, &mutations, strict)?;
        let o = run_data(seed, sc.clone(), trace);
        if !trace {
            for line in &o.trace_tail {
                println!("{line}");
            }
        }
        println!(
            "seed {} ({}): {} events, {} writes ({} acknowledged, {} failed), {} serving leaderships, {} read checks, resyncs {} bitmap / {} hash ({} finished), converged in {:?} ms, {} messages bent by mutations",
            o.seed,
            o.scenario,
            o.events,
            o.writes,
            o.acked,
            o.failed,
            o.leaderships,
            o.read_checks,
            o.bitmap_resyncs,
            o.hash_resyncs,
            o.resyncs_done,
            o.converge.map(|c| c / 1000),
            o.mutated
        );
        for b in &o.known_bugs {
            println!("known triad-repl bug set off: {b}");
        }
        if let Some((v, bug)) = &o.tolerated {
            println!("tolerated (known bug {}): {v}", &bug[..2]);
        }
        data_failure(&o, &sc);
        return Ok(o.violation.is_none());
    }
    let (a, b) = seeds.split_once("..").ok_or("--seeds must look like A..B")?;
    let a: u64 = a.parse().map_err(|_| "bad start seed")?;
    let b: u64 = b.parse().map_err(|_| "bad end seed")?;
    let started = WallClock::now();
    let mut rows: BTreeMap<&'static str, DataRow> = BTreeMap::new();
    for seed in a..b {
        let sc = data_scenario(seed, name, &mutations, strict)?;
        let o = run_data(seed, sc.clone(), false);
        let r = rows.entry(o.scenario).or_default();
        r.seeds += 1;
        r.events += o.events;
        r.writes += o.writes;
        r.acked += o.acked;
        r.leaderships += o.leaderships;
        r.checks += o.read_checks;
        r.bitmap += o.bitmap_resyncs;
        r.hash += o.hash_resyncs;
        r.kills += o.kills;
        r.cuts += o.power_cuts;
        r.full_cuts += o.full_power_cuts;
        r.compacted += o.compacted_nodes;
        r.worst_converge = r.worst_converge.max(o.converge.unwrap_or(0));
        r.tolerated += u64::from(o.tolerated.is_some());
        if let Some((v, bug)) = &o.tolerated {
            println!("seed {seed} ({}): tolerated, known bug {}: {v}", o.scenario, &bug[..2]);
        }
        for (a, b) in r.errors.iter_mut().zip(o.write_errors) {
            *a += b;
        }
        r.disk_faults += o.disk_faults;
        r.service_faults += o.service_faults;
        r.watchdog_resets += o.watchdog_resets;
        r.worst_pbx_overlap = r.worst_pbx_overlap.max(o.pbx_overlap);
        for (a, b) in r.recoveries.iter_mut().zip(o.recoveries) {
            *a += b;
        }
        if o.violation.is_some() {
            r.failed += 1;
            data_failure(&o, &sc);
        }
    }
    println!(
        "{:<14} {:>5} {:>9} {:>7} {:>7} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>9} {:>9} {:>6} {:>9}",
        "scenario",
        "seeds",
        "events",
        "writes",
        "acked",
        "leads",
        "checks",
        "bitmap",
        "hash",
        "kills",
        "cuts",
        "full",
        "compacted",
        "converge",
        "failed",
        "tolerated"
    );
    let mut ok = true;
    for (name, r) in &rows {
        println!(
            "{:<14} {:>5} {:>9} {:>7} {:>7} {:>6} {:>6} {:>6} {:>5} {:>5} {:>5} {:>5} {:>9} {:>6} ms {:>6} {:>9}",
            name,
            r.seeds,
            r.events,
            r.writes,
            r.acked,
            r.leaderships,
            r.checks,
            r.bitmap,
            r.hash,
            r.kills,
            r.cuts,
            r.full_cuts,
            r.compacted,
            r.worst_converge / 1000,
            r.failed,
            r.tolerated
        );
        ok &= r.failed == 0;
    }
    println!("failed writes (not active/ready, timeout, storage, lost with their node):");
    for (name, r) in &rows {
        println!("  {:<14} {:?}", name, r.errors);
    }
    for (name, r) in rows.iter().filter(|(_, r)| r.disk_faults > 0) {
        let [reopened, rebooted] = r.recoveries;
        println!(
            "  {name:<14} {} failed fdatasyncs; failed nodes reopened {reopened}, rebooted {rebooted}",
            r.disk_faults
        );
    }
    for (name, r) in rows.iter().filter(|(_, r)| r.service_faults > 0 || r.watchdog_resets > 0) {
        println!(
            "  {name:<14} {} service faults injected; {} watchdog resets; two PBXs over mounts (the old one fenced) for at most {} ms",
            r.service_faults,
            r.watchdog_resets,
            r.worst_pbx_overlap / 1000
        );
    }
    println!("{} seeds in {:.1} s", b.saturating_sub(a), started.elapsed().as_secs_f64());
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Data { seeds, seed, scenario, mutation, trace, no_tolerate } => {
            data_main(&seeds, seed, scenario.as_deref(), &mutation, trace, no_tolerate)
        }
        Cmd::Run { seeds, scenario, mutation, no_tolerate, tolerate } => (|| {
            let opts = Opts {
                name: scenario.as_deref(),
                mutations: parse_mutations(&mutation)?,
                no_tolerate,
                tolerate: parse_checks(&tolerate)?,
            };
            run_range(&seeds, &opts)
        })(),
        Cmd::Replay { seed, scenario, mutation, trace, no_tolerate, tolerate, faithful_spin } => (|| {
            let opts = Opts {
                name: scenario.as_deref(),
                mutations: parse_mutations(&mutation)?,
                no_tolerate,
                tolerate: parse_checks(&tolerate)?,
            };
            let mut sc = scenario_for(seed, &opts)?;
            sc.faithful_spin = faithful_spin;
            let o = run(seed, sc.clone(), trace);
            if !trace {
                for line in &o.trace_tail {
                    println!("{line}");
                }
            }
            for t in &o.tolerated {
                println!("tolerated (known bug): {t}");
            }
            println!(
                "seed {} ({}): {} events, {} failovers, recovery {:?} ms, max VIP overlap {} ms",
                o.seed,
                o.scenario,
                o.events,
                o.failovers,
                o.recovery.map(|r| r / 1000),
                o.vip_overlap / 1000
            );
            report_failure(&o, &sc);
            Ok(o.violation.is_none())
        })(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("triad-sim: {e}");
            ExitCode::from(2)
        }
    }
}

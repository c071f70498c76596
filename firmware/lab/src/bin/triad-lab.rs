//! `triad-lab`: start, inspect and tear down the three-node lab, and run
//! the failover benchmark, the soak, the volume benchmark and the
//! write path's stage micro-benchmark. See docs/lab.md and
//! docs/volume-benchmark.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use triad_lab::bench::{self, BenchError};
use triad_lab::bench_stages::{self, StagesError, StagesOpts};
use triad_lab::bench_volume::{self, BenchOpts, VolumeBenchError};
use triad_lab::lab::{Lab, LabError, Payload, Profile};
use triad_lab::layout::{layout_path, NODE_IDS};
use triad_lab::netns::CLIENT_NS;
use triad_lab::triad::{self, TriadError};

#[derive(Debug, Parser)]
#[command(name = "triad-lab", about = "Three Triad supervisors in network namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab and start three nodes (tears down a previous lab first).
    Up {
        #[arg(long, value_enum, default_value = "default")]
        profile: Profile,
        /// The triad binary (default: TRIAD_BIN, then the workspace target dir).
        #[arg(long)]
        triad: Option<PathBuf>,
        /// Run keepalived on the nodes instead of triad.
        #[arg(long)]
        keepalived: bool,
        /// keepalived advert interval in seconds.
        #[arg(long, default_value = "1")]
        keepalived_advert: String,
        /// Journal size per node, MiB (the supervisor's default is 64).
        #[arg(long, default_value_t = triad_lab::layout::JOURNAL_MIB)]
        journal_mib: u64,
        /// Run Kamailio (answering SIP OPTIONS on the node's loopback) on
        /// the active node, supervised by triad.
        #[arg(long)]
        pbx: bool,
        /// Run each supervisor as its namespace's init (`node.init`: early
        /// mounts, hostname, per-namespace sysctls, power off at the end).
        #[arg(long)]
        init: bool,
    },
    /// Tear the lab down (idempotent; also cleans up after a crashed run).
    Down,
    /// Show the nodes, the leader and the client's neighbour entry.
    Status,
    /// Restart one node: new supervisor, new namespace, same MAC and state.
    RestartNode { id: u8 },
    /// Crash the active node N times and compare triad with keepalived.
    BenchFailover {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, value_enum, default_value = "default")]
        profile: Profile,
        /// keepalived advert interval for the baseline: 1 or 0.1.
        #[arg(long, default_value = "1")]
        keepalived_advert: String,
        #[arg(long)]
        triad: Option<PathBuf>,
        #[arg(long)]
        skip_triad: bool,
        #[arg(long)]
        skip_keepalived: bool,
        /// How the active node fails (the same for both payloads).
        #[arg(long, value_enum, default_value = "stop-down")]
        fault: bench::Fault,
    },
    /// The PBX service's failover: a fault of the active node to the first
    /// answer through the VIP routed to a registered user, with each
    /// phase's share (issue 11's figure: median under 1.2 s, p99 under 2 s)
    BenchService {
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, value_enum, default_value = "kill")]
        fault: triad_lab::bench_service::ServiceFault,
        #[arg(long)]
        triad: Option<PathBuf>,
    },
    /// Calls through the VIP across a kill -9 of the active node: how many
    /// calls up at the kill end with a 200 to their BYE, and when new calls
    /// succeed again
    BenchCalls {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long)]
        triad: Option<PathBuf>,
    },
    /// PBX crash to answering again under triad, beside Kamailio's own
    /// start to first answer.
    BenchPbx {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long)]
        triad: Option<PathBuf>,
    },
    /// Idle cluster under CPU load: count leader changes, measure CPU/RSS.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, value_enum, default_value = "default")]
        profile: Profile,
        #[arg(long)]
        triad: Option<PathBuf>,
        /// Run the supervisors without SCHED_FIFO, at the load's own
        /// priority (SCHED_OTHER, nice 0): no scheduling advantage.
        #[arg(long)]
        equal_priority: bool,
    },
    /// 4 KiB write+flush, 4 KiB writes, 1 MiB sequential, 4 KiB reads:
    /// an NBD export against nbdkit's file plugin on the same filesystem.
    BenchVolume {
        /// The subject's NBD URI (nbd+unix:///?socket=PATH or nbd://HOST[:PORT]).
        /// Its first --size bytes are overwritten.
        #[arg(long, required_unless_present = "self_test")]
        subject_uri: Option<String>,
        /// The subject's column header.
        #[arg(long, default_value = "triad")]
        subject_label: String,
        /// No subject: a second nbdkit stands in, labelled as a stand-in (tests the harness only).
        #[arg(long, conflicts_with_all = ["subject_uri", "subject_label"])]
        self_test: bool,
        /// Directory for the baseline's file and socket: on the filesystem of the subject's backing store.
        #[arg(long, default_value = "/var/tmp/triad-bench-volume")]
        dir: PathBuf,
        /// Export size (bytes, or with K, M, G): 1G, or 256M for quick runs.
        #[arg(long, default_value = "1G", value_parser = bench_volume::parse_size)]
        size: u64,
        /// Seconds per run of one pattern on one side.
        #[arg(long, default_value_t = 5.0)]
        runtime: f64,
        /// Runs per pattern per side, alternating nbdkit and subject; the table shows medians.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// The replicated write path's unavoidable stages (TLS both ways,
    /// CRC-32C, page-cache writes, the disk), each measured alone, and the
    /// 1 MiB sequential throughput bound they imply on this machine.
    BenchStages {
        /// Directory for the scratch files: on the filesystem of the lab's volumes (/var/tmp).
        #[arg(long, default_value = bench_stages::DEFAULT_DIR)]
        dir: PathBuf,
        /// MiB per CPU stage measurement.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Seconds of each disk series.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Repetitions; the table shows medians and every repetition's value.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// MiB a journal writes between fdatasyncs (Triad's batches under QD8 load).
        #[arg(long, default_value_t = 8)]
        journal_sync_mib: u64,
        /// MiB a store writes between fdatasyncs (the replica checkpoints when its
        /// 64 MiB ring is half full); 0: only at the end of the series.
        #[arg(long, default_value_t = 32)]
        store_sync_mib: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Triad(#[from] TriadError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Volume(#[from] VolumeBenchError),
    #[error(transparent)]
    Stages(#[from] StagesError),
    #[error(transparent)]
    Pbx(#[from] triad_lab::bench_pbx::PbxBenchError),
    #[error(transparent)]
    Service(#[from] triad_lab::bench_service::ServiceBenchError),
}

fn main() -> ExitCode {
    // SAFETY: called before any thread exists; restores the default SIGPIPE
    // disposition so `triad-lab status | head` ends quietly instead of
    // panicking on a closed stdout.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, once, here at the edge.
            let mut msg = format!("triad-lab: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn triad_payload(triad: Option<PathBuf>, profile: Profile, journal_mib: u64) -> Result<Payload, MainError> {
    Ok(Payload::Triad {
        bin: triad::locate(triad.as_deref())?,
        profile,
        journal_mib,
        opts: triad::NodeOptions::default(),
    })
}

fn run(cli: Cli) -> Result<(), MainError> {
    match cli.cmd {
        Cmd::Up { profile, triad, keepalived, keepalived_advert, journal_mib, pbx, init } => {
            let payload = if keepalived {
                Payload::Keepalived { advert: keepalived_advert }
            } else {
                let mut p = triad_payload(triad, profile, journal_mib)?;
                if let Payload::Triad { opts, .. } = &mut p {
                    opts.pbx = pbx;
                    opts.init = init;
                }
                p
            };
            let lab = Lab::up(payload)?;
            let leader = lab.wait_healthy(&NODE_IDS, std::time::Duration::from_secs(5))?;
            println!("lab up: {} nodes, leader n{leader}, VIP {}", lab.layout.nodes.len(), lab.layout.vip);
            println!("layout: {}", layout_path().display());
            println!("watch:");
            for n in &lab.layout.nodes {
                if let Some(bin) = lab.triad_bin() {
                    println!("  {} status --socket {}", bin.display(), n.control_socket.display());
                }
                println!("  {} ip addr show dev eth0    # node {}; log {}", n.nsenter, n.id, n.log.display());
            }
            println!("  ip netns exec {CLIENT_NS} ip neigh show");
            println!("  ip netns exec {CLIENT_NS} ping 10.77.0.100");
            println!("stop: triad-lab down");
        }
        Cmd::Down => {
            Lab::down()?;
            println!("lab down");
        }
        Cmd::Status => {
            let lab = Lab::load()?;
            println!("payload {} ({}), layout {}", lab.layout.payload, lab.layout.profile, layout_path().display());
            for part in lab.describe(&NODE_IDS).split("; ") {
                println!("  {part}");
            }
            println!(
                "  client neighbour entry for the VIP: {}",
                lab.client_neigh().map_or("none".into(), |m| {
                    let who = lab.layout.node_by_mac(m).map_or(String::new(), |i| format!(" (n{i})"));
                    format!("{m}{who}")
                })
            );
        }
        Cmd::RestartNode { id } => {
            let mut lab = Lab::load()?;
            lab.restart_node(id)?;
            println!("node {id} restarted: pid {}", lab.node(id)?.supervisor_pid);
        }
        Cmd::BenchFailover { runs, profile, keepalived_advert, triad, skip_triad, skip_keepalived, fault } => {
            let mut series = Vec::new();
            if !skip_triad {
                let p = triad_payload(triad, profile, triad_lab::layout::JOURNAL_MIB)?;
                let label = format!("triad {} {}", profile.as_str(), fault.name());
                series.push(bench::failover_series(p, &label, runs, fault)?);
                bench::print_table(&series);
            }
            if !skip_keepalived {
                let label = format!("keepalived {keepalived_advert}s {}", fault.name());
                let p = Payload::Keepalived { advert: keepalived_advert };
                series.push(bench::failover_series(p, &label, runs, fault)?);
            }
            println!();
            bench::print_table(&series);
        }
        Cmd::BenchService { runs, fault, triad } => {
            triad_lab::bench_service::run(&triad::locate(triad.as_deref())?, runs, fault)?;
        }
        Cmd::BenchCalls { runs, triad } => {
            triad_lab::bench_service::calls(&triad::locate(triad.as_deref())?, runs)?;
        }
        Cmd::BenchPbx { runs, triad } => {
            triad_lab::bench_pbx::run(&triad::locate(triad.as_deref())?, runs)?;
        }
        Cmd::Soak { minutes, profile, triad, equal_priority } => {
            let mut payload = triad_payload(triad, profile, triad_lab::layout::JOURNAL_MIB)?;
            if let Payload::Triad { opts, .. } = &mut payload {
                opts.realtime = !equal_priority;
            }
            bench::soak(payload, minutes)?;
        }
        Cmd::BenchVolume { subject_uri, subject_label, self_test, dir, size, runtime, reps } => {
            if !(runtime.is_finite() && runtime > 0.0) {
                return Err(VolumeBenchError::Opts(format!("--runtime {runtime} is not a positive number")).into());
            }
            let opts = BenchOpts {
                runtime: std::time::Duration::from_secs_f64(runtime),
                reps,
                subject_label,
                subject_is_stand_in: false,
            };
            let result = match (subject_uri, self_test) {
                (Some(uri), false) => bench_volume::run(&dir, &uri, size, &opts)?,
                (None, true) => bench_volume::run_self_test(&dir, size, &opts)?,
                _ => return Err(VolumeBenchError::Opts("give --subject-uri or --self-test".into()).into()),
            };
            println!();
            bench_volume::print_table(&result);
        }
        Cmd::BenchStages { dir, mib, seconds, reps, journal_sync_mib, store_sync_mib } => {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(StagesError::Opts(format!("--seconds {seconds} is not a positive number")).into());
            }
            let opts = StagesOpts {
                dir,
                mib,
                seconds: std::time::Duration::from_secs_f64(seconds),
                reps,
                journal_sync_mib,
                store_sync_mib,
            };
            let report = bench_stages::run(&opts)?;
            print!("{}", bench_stages::format_report(&report));
        }
    }
    Ok(())
}

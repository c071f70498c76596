//! `triad-lab`: start, inspect and tear down the three-node lab, and run
//! the failover benchmark and the soak. See docs/lab.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use triad_lab::bench::{self, BenchError};
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
    },
    /// Idle cluster under CPU load: count leader changes, measure CPU/RSS.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, value_enum, default_value = "default")]
        profile: Profile,
        #[arg(long)]
        triad: Option<PathBuf>,
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

fn triad_payload(triad: Option<PathBuf>, profile: Profile) -> Result<Payload, MainError> {
    Ok(Payload::Triad { bin: triad::locate(triad.as_deref())?, profile })
}

fn run(cli: Cli) -> Result<(), MainError> {
    match cli.cmd {
        Cmd::Up { profile, triad, keepalived, keepalived_advert } => {
            let payload = if keepalived {
                Payload::Keepalived { advert: keepalived_advert }
            } else {
                triad_payload(triad, profile)?
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
        Cmd::BenchFailover { runs, profile, keepalived_advert, triad, skip_triad, skip_keepalived } => {
            let mut series = Vec::new();
            if !skip_triad {
                let p = triad_payload(triad, profile)?;
                series.push(bench::failover_series(p, &format!("triad {}", profile.as_str()), runs)?);
                bench::print_table(&series);
            }
            if !skip_keepalived {
                let label = format!("keepalived advert {keepalived_advert}s");
                let p = Payload::Keepalived { advert: keepalived_advert };
                series.push(bench::failover_series(p, &label, runs)?);
            }
            println!();
            bench::print_table(&series);
        }
        Cmd::Soak { minutes, profile, triad } => {
            bench::soak(triad_payload(triad, profile)?, minutes)?;
        }
    }
    Ok(())
}

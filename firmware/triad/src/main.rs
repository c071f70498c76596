//! `triad`: the supervisor binary and its command-line tools.
//!
//! `triad run` is the supervisor; the other subcommands are small clients
//! (status, switchover, standby over the control socket) and setup tools
//! (certificates, config check). `main` maps every error to a documented
//! exit code:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | runtime failure (the supervisor stopped on an error; a request failed) |
//! | 2 | bad input: usage, invalid config, refused request (also `node.init = true` in a process that is not PID 1) |
//!
//! With `node.init = true` `triad run` is the machine's init and never
//! returns: a stop signal or a fatal error ends in sync and reboot(2)
//! (`os::init`, docs/pid1.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use triad::config::Config;
use triad::control::{self, Request, Response};
use triad::errors::chain;

/// Triad: three PBX appliances, one highly available PBX.
#[derive(Debug, Parser)]
#[command(name = "triad", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a config file and print what is wrong with it.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Cluster CA and node certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Show this node's view of the cluster.
    Status {
        /// Control socket of the node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
        /// Print JSON (schema: docs/status-schema.md).
        #[arg(long)]
        json: bool,
    },
    /// Move the active role to another node (run on the active node).
    Switchover {
        /// Control socket of the active node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
        /// Target node id; default: the most up-to-date reachable peer.
        #[arg(long)]
        to: Option<u8>,
    },
    /// Compare the replicated volume across the three nodes (run on the
    /// active node); exit code 1 when any range differs.
    Verify {
        /// Control socket of the active node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
    },
    /// Create the replicated volume's filesystem: once, when the cluster is
    /// created (the active node, whose check found the volume never
    /// written). Refused for a volume holding anything.
    FormatVolume {
        /// Control socket of the active node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
    },
    /// Run this node's failover readiness check now and print its verdict
    /// (could it take the active role: PBX and config, replica, watchdog);
    /// exit code 1 when it is not ready.
    CheckReadiness {
        /// Control socket of the node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
    },
    /// Forget this node's PBX failures: after handing the active role over
    /// because its PBX kept failing, the node refuses the role until they
    /// age out of the window; this lets it take the role again at once.
    ClearPbxFailures {
        /// Control socket of the node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
    },
    /// Print the supervisor's last log lines (its in-memory ring).
    Logs {
        /// Control socket of the node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
        /// Only the last N lines.
        #[arg(long)]
        lines: Option<usize>,
    },
    /// Print the kernel module table in load order, one `NAME PATH DEPS
    /// USE` line each, for the image build (image/build.sh).
    #[command(hide = true)]
    ImageModules {
        /// Only the modules that reach the root filesystem (the UKI's
        /// small initramfs).
        #[arg(long)]
        root: bool,
    },
    /// Put this node in standby (it never becomes active), or release it.
    Standby {
        /// Control socket of the node.
        #[arg(long, default_value = "/run/triad/control.sock")]
        socket: PathBuf,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca.key) in DIR.
    Init {
        /// Directory for the files.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue node-N.pem and node-N.key in DIR, signed by the CA there.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Node id, 1 to 3.
        #[arg(long)]
        node: u8,
    },
}

/// How a command failed, and so which exit code it gets.
enum Failure {
    /// Bad input (exit 2).
    Input(String),
    /// Something failed at run time (exit 1).
    Runtime(String),
}

impl Failure {
    /// The documented exit code: the one place it is chosen.
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Input(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Input(m) | Failure::Runtime(m) => m,
        }
    }
}

fn main() -> ExitCode {
    // The appliance: the kernel started this binary as /init. Its config
    // is on the state partition, which the first stage mounts.
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if triad::appliance::started_by_kernel(std::process::id(), &args) {
        // The kernel gives init no PATH (only HOME and TERM), and without
        // one a program named without a directory is looked for in /bin
        // and /usr/bin only: the filesystem steps' mkfs.ext4 and e2fsck
        // live in /sbin. Set before any thread exists (set_var is not
        // thread-safe); every child inherits it.
        if std::env::var_os("PATH").is_none() {
            std::env::set_var("PATH", triad::appliance::INIT_PATH);
        }
        init_logging();
        std::panic::set_hook(Box::new(|info| triad::os::init::fatal(&format!("panic: {info}"))));
        let (cfg, mounted) = triad::appliance::boot();
        // The state partition is mounted: from here the log survives a
        // reset (the previous boot's is kept as previous.log).
        let log_dir = std::path::Path::new(triad::appliance::STATE_MOUNT).join("log");
        if let Err(e) = triad::logkeep::start(triad::logring::global(), log_dir.clone()) {
            tracing::warn!(dir = %log_dir.display(), error = %e, "the log is not kept on the state partition");
        }
        run_as_init(cfg, mounted);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("triad: {}", f.message());
            ExitCode::from(f.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(&config).map_err(|e| Failure::Input(chain(&e)))?;
            if cfg.node.init {
                // Before anything is changed: only PID 1 may mount, name
                // the machine, write sysctls and call reboot(2).
                triad::os::init::refuse_unless_pid1(std::process::id()).map_err(|e| Failure::Input(e.to_string()))?;
                init_logging();
                run_as_init(cfg, Vec::new());
            }
            init_logging();
            runtime()?.block_on(triad::runtime::run(cfg)).map_err(|e| {
                if e.is_bad_input() {
                    Failure::Input(chain(&e))
                } else {
                    Failure::Runtime(chain(&e))
                }
            })
        }
        Command::ImageModules { root } => {
            use std::io::Write;
            use triad::os::modules::{check_order, subset, MODULES, ROOT};
            check_order(MODULES).map_err(Failure::Runtime)?;
            let table = if root { subset(ROOT) } else { MODULES.iter().collect() };
            let mut out = std::io::stdout().lock();
            for m in table {
                let deps = if m.deps.is_empty() { "-".to_string() } else { m.deps.join(",") };
                // A closed pipe ends the listing, not the process.
                writeln!(out, "{} {} {} {:?}", m.name, m.path, deps, m.usage)
                    .map_err(|e| Failure::Runtime(format!("cannot write the module table: {e}")))?;
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            Config::load(&config).map_err(|e| Failure::Input(chain(&e)))?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Certs { command: CertsCommand::Init { dir } } => {
            let path = triad::certs::create_ca(&dir).map_err(|e| Failure::Input(chain(&e)))?;
            println!("created {}", path.display());
            Ok(())
        }
        Command::Certs { command: CertsCommand::Issue { dir, node } } => {
            let (cert, key) = triad::certs::issue_node(&dir, node).map_err(|e| Failure::Input(chain(&e)))?;
            println!("created {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Status { socket, json } => {
            let response = ask(&socket, &Request::Status)?;
            match response {
                Response::Status(report) if json => {
                    let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.to_string()))?;
                    println!("{text}");
                    Ok(())
                }
                Response::Status(report) => {
                    print!("{}", control::render_status_human(&report));
                    Ok(())
                }
                other => unexpected(other),
            }
        }
        Command::Logs { socket, lines } => match ask(&socket, &Request::Logs)? {
            Response::Report(v) => {
                let snap: triad::logring::Snapshot =
                    serde_json::from_value(v).map_err(|e| Failure::Runtime(format!("malformed log lines: {e}")))?;
                let skip = lines.map_or(0, |n| snap.lines.len().saturating_sub(n));
                for line in &snap.lines[skip..] {
                    println!("{line}");
                }
                if snap.dropped > 0 {
                    eprintln!("({} older lines no longer kept)", snap.dropped);
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Switchover { socket, to } => done(ask(&socket, &Request::Switchover { to })?),
        Command::FormatVolume { socket } => done(ask(&socket, &Request::FormatVolume)?),
        Command::ClearPbxFailures { socket } => done(ask(&socket, &Request::ClearPbxFailures)?),
        Command::CheckReadiness { socket } => match ask(&socket, &Request::CheckReadiness)? {
            Response::Report(v) => {
                let ready = v.get("ready").and_then(serde_json::Value::as_bool).unwrap_or(false);
                let problems: Vec<String> = v
                    .get("problems")
                    .and_then(|p| p.as_array())
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if ready {
                    println!("ready: this node could take the active role now");
                    Ok(())
                } else {
                    println!("not ready:");
                    for p in &problems {
                        println!("  - {p}");
                    }
                    Err(Failure::Runtime(format!("not ready ({} problem(s))", problems.len())))
                }
            }
            other => done(other),
        },
        Command::Standby { socket, state } => done(ask(&socket, &Request::Standby { on: state == "on" })?),
        Command::Verify { socket } => match ask(&socket, &Request::Verify)? {
            Response::Report(v) => {
                let text = serde_json::to_string_pretty(&v).map_err(|e| Failure::Runtime(e.to_string()))?;
                println!("{text}");
                let differing = v.get("differing").and_then(|d| d.as_array()).map_or(0, Vec::len);
                if differing == 0 {
                    Ok(())
                } else {
                    Err(Failure::Runtime(format!("{differing} differing range(s)")))
                }
            }
            other => unexpected(other),
        },
    }
}

/// `triad run` as the machine's init (the caller checked it is PID 1):
/// boot duties, the supervisor, then the end of a shutdown. Never returns.
/// `earlier`: what the appliance's first stage mounted, undone last.
fn run_as_init(cfg: Config, earlier: Vec<PathBuf>) -> ! {
    use triad::os::init::{self, Cause};
    // A panic anywhere leaves state nobody can trust: log, sync, restart.
    // (Returning would end PID 1, and the kernel panics.)
    std::panic::set_hook(Box::new(|info| init::fatal(&format!("panic: {info}"))));
    let mut booted = init::boot(&cfg);
    booted.mounted.splice(0..0, earlier);
    if panic_hook_test() {
        panic!("test fault hook: panic after boot");
    }
    let mode = cfg.node.shutdown;
    // The runtime stays alive until reboot(2): dropping it would wait for
    // its blocking tasks.
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(f) => init::fatal(f.message()),
    };
    match rt.block_on(triad::runtime::run(cfg)) {
        Ok(()) => {
            tracing::info!("supervisor stopped: shutting the machine down");
            init::shutdown(Cause::Stopped, mode, &booted)
        }
        Err(e) => {
            tracing::error!(error = %chain(&e), "supervisor failed: rebooting");
            init::shutdown(Cause::Fatal, mode, &booted)
        }
    }
}

/// The lab's test of the panic path: the supervisor's test-only fault
/// hooks directory (`TRIAD_FAULT_HOOKS`, set by the lab, never on an
/// appliance) holds `panic-after-boot`.
fn panic_hook_test() -> bool {
    std::env::var_os("TRIAD_FAULT_HOOKS")
        .is_some_and(|dir| std::path::Path::new(&dir).join("panic-after-boot").exists())
}

fn ask(socket: &std::path::Path, request: &Request) -> Result<Response, Failure> {
    runtime()?.block_on(control::request(socket, request)).map_err(|e| Failure::Runtime(chain(&e)))
}

fn done(response: Response) -> Result<(), Failure> {
    match response {
        Response::Done => {
            println!("ok");
            Ok(())
        }
        other => unexpected(other),
    }
}

/// A supervisor's answer that is not the one asked for: a refusal is bad
/// input (exit 2), a failure to carry out a valid request is a runtime
/// failure (exit 1).
fn unexpected(response: Response) -> Result<(), Failure> {
    match response {
        Response::Error(reason) => Err(Failure::Input(reason)),
        Response::Failed(reason) => Err(Failure::Runtime(reason)),
        other => Err(Failure::Runtime(format!("unexpected answer from the supervisor: {other:?}"))),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    // One thread: the supervisor is one loop, and its I/O tasks are light.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Logs go to the console (stderr; for init the kernel's console) and to
/// the in-memory ring `triad logs` reads, formatted alike, the ring
/// without colour codes.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ring = triad::logring::RingWriter::new(triad::logring::global());
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(ring))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_2_and_failures_exit_1() {
        let code = |r: Response| unexpected(r).err().map(|f| f.exit_code());
        assert_eq!(code(Response::Error("node 9 is not a peer".into())), Some(2));
        assert_eq!(code(Response::Failed("the volume thread is gone".into())), Some(1));
        assert_eq!(code(Response::Done), Some(1), "an answer of the wrong kind is the supervisor's fault");
        assert_eq!(Failure::Input(String::new()).exit_code(), 2);
        assert_eq!(Failure::Runtime(String::new()).exit_code(), 1);
    }
}

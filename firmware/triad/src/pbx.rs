//! The PBX's executor: carries out `triad_host::pbx`'s commands (spawn,
//! probe, stop, kill) and reports what happened as `PbxEvent`s on a
//! channel the runtime loop reads. The host decides; this only acts.
//!
//! A spawned process is registered with the supervisor's one reaper
//! (`os::reaper`), which reports its exit; a probe runs as a task with its
//! own timeout (the host times it out too, and ignores a late answer).
//!
//! Must not: decide when to start or stop, or block the runtime loop.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};
use triad_host::pbx::{PbxCommand, PbxEvent, PbxNotice};

use crate::config::PbxConfig;
use crate::errors::chain;
use crate::os::pbx_process::{cgroup_v2_at, describe, PbxEnv, PbxProcess, CGROUP_ROOT};
use crate::os::reaper::Reaper;
use crate::sip_probe::{probe_tcp, probe_udp};

/// Carries out the PBX commands of one node.
#[derive(Debug)]
pub struct PbxExecutor {
    cfg: PbxConfig,
    env: PbxEnv,
    cgroup_root: Option<PathBuf>,
    events: UnboundedSender<PbxEvent>,
    reaper: Reaper,
    /// The process of the current run, if one was spawned.
    process: Option<(u64, PbxProcess)>,
}

impl PbxExecutor {
    /// An executor for `cfg`; its reports go to `events`.
    pub fn new(cfg: PbxConfig, env: PbxEnv, events: UnboundedSender<PbxEvent>, reaper: Reaper) -> Self {
        let root = PathBuf::from(CGROUP_ROOT);
        let cgroup_root = cgroup_v2_at(&root).then_some(root);
        if cgroup_root.is_none() {
            warn!("no cgroup v2 hierarchy at {CGROUP_ROOT}: the PBX runs without a cgroup of its own or limits");
        }
        PbxExecutor { cfg, env, cgroup_root, events, reaper, process: None }
    }

    /// Carries out `cmd`; returns the event to feed back at once (a spawn's
    /// outcome), if any. Later events (exits, probe answers) come on the
    /// channel.
    pub fn carry(&mut self, cmd: PbxCommand) -> Option<PbxEvent> {
        match cmd {
            PbxCommand::Spawn { run } => Some(self.spawn(run)),
            PbxCommand::Probe { run: _, probe } => {
                let addr = SocketAddr::from(([127, 0, 0, 1], self.cfg.sip_port));
                let timeout = self.cfg.timing.probe_timeout;
                let tcp = self.cfg.probe_tcp;
                let events = self.events.clone();
                tokio::spawn(async move {
                    // Both transports at once when TCP is probed too: both must answer.
                    let (udp, tcp) = tokio::join!(probe_udp(addr, timeout), async {
                        if tcp {
                            probe_tcp(addr, timeout).await.map(Some)
                        } else {
                            Ok(None)
                        }
                    });
                    if let Err(e) = &tcp {
                        tracing::debug!(error = %e, "TCP probe failed");
                    }
                    let _ = events.send(PbxEvent::ProbeDone { probe, ok: udp.is_ok() && tcp.is_ok() });
                });
                None
            }
            PbxCommand::Stop { run } => {
                self.signal(run, self.cfg.stop_signal);
                None
            }
            PbxCommand::Kill { run } => {
                self.signal(run, nix::sys::signal::Signal::SIGKILL);
                None
            }
            PbxCommand::Notice(n) => {
                log_notice(n);
                None
            }
        }
    }

    fn spawn(&mut self, run: u64) -> PbxEvent {
        match PbxProcess::spawn(&self.cfg, &self.env, self.cgroup_root.as_deref()) {
            Ok(mut process) => {
                info!(run, pid = process.pid(), command = %describe(&self.cfg), "PBX started");
                // The reaper waits for it (never std's `wait`, which would
                // race the reaper); the pid stays here for signals.
                drop(process.take_child());
                let events = self.events.clone();
                self.reaper.register(
                    process.pid(),
                    Box::new(move |status| {
                        info!(run, status = %crate::os::reaper::describe(status), "PBX exited");
                        let _ = events.send(PbxEvent::Exited { run });
                    }),
                );
                self.process = Some((run, process));
                PbxEvent::Spawned { run }
            }
            Err(e) => {
                error!(run, error = %chain(&e), "cannot start the PBX");
                PbxEvent::SpawnFailed { run }
            }
        }
    }

    fn signal(&self, run: u64, signal: nix::sys::signal::Signal) {
        match &self.process {
            Some((r, p)) if *r == run => {
                info!(run, %signal, pgid = p.pid(), "signalling the PBX's process group");
                if let Err(e) = p.signal_group(signal) {
                    warn!(run, error = %chain(&e), "could not signal the PBX");
                }
            }
            _ => warn!(run, "no such PBX process to signal"),
        }
    }

    /// At shutdown: SIGKILL of the current process group (the host's
    /// orderly stop comes first when there is time for it).
    pub fn kill_now(&self) {
        if let Some((run, p)) = &self.process {
            info!(run, "killing the PBX at shutdown");
            let _ = p.signal_group(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn log_notice(n: PbxNotice) {
    match n {
        PbxNotice::Healthy { run } => info!(run, "PBX answers its probe"),
        PbxNotice::Started { run } => info!(run, "PBX spawned; probing"),
        PbxNotice::Stopped { run } => info!(run, "PBX stopped"),
        PbxNotice::Restarting { delay } => info!(?delay, "PBX restarts after a backoff"),
        PbxNotice::ProbeFailed { run, in_a_row } => warn!(run, in_a_row, "PBX probe failed"),
        PbxNotice::Failed { run, why, in_window } => warn!(run, ?why, in_window, "PBX failed"),
        PbxNotice::HandOverWanted { in_window } => {
            error!(in_window, "PBX keeps failing: this node should hand the active role over")
        }
        PbxNotice::StopHung { run } => error!(run, "PBX does not stop even after SIGKILL of its group"),
    }
}

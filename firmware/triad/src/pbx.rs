//! The PBX's executor: carries out `triad_host::pbx`'s commands (spawn,
//! probe, stop, kill) and reports what happened as `PbxEvent`s on a
//! channel the runtime loop reads. The host decides; this only acts.
//!
//! A start runs on a blocking thread: first the payload's `pbx.prepare`
//! (its data's recovery: the previous process, or the previous active
//! node, may have died mid-write), then the spawn; the outcome comes back
//! as `Spawned` or `SpawnFailed`. The process is registered with the
//! supervisor's one reaper (`os::reaper`) after `Spawned` is sent, so its
//! exit is always reported after its start. A stop or kill for a run whose
//! start is still under way is remembered and carried out as soon as the
//! process exists. A probe runs as a task with its own timeout (the host
//! times it out too, and ignores a late answer).
//!
//! Must not: decide when to start or stop, or block the runtime loop.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};
use triad_host::pbx::{PbxCommand, PbxEvent, PbxNotice};

use std::sync::{Arc, Mutex};

use crate::config::{PbxConfig, PREPARE_TIMEOUT};
use crate::errors::chain;
use crate::os::pbx_process::{cgroup_v2_at, describe, PbxEnv, PbxProcess, CGROUP_ROOT};
use crate::os::reaper::Reaper;
use crate::readiness::run_as_the_pbx;
use crate::sip_probe::{probe_routed, probe_tcp, probe_udp, serve_test_user};

/// Carries out the PBX commands of one node.
#[derive(Debug)]
pub struct PbxExecutor {
    cfg: PbxConfig,
    env: PbxEnv,
    cgroup_root: Option<PathBuf>,
    events: UnboundedSender<PbxEvent>,
    reaper: Reaper,
    /// The process of the current run once spawned, shared with the
    /// thread that starts it.
    slot: Arc<Mutex<Slot>>,
}

/// The current process, and a kill asked for before it existed.
#[derive(Debug, Default)]
struct Slot {
    current: Option<(u64, PbxProcess)>,
    /// A stop or kill came for this run while its start was under way.
    kill_on_spawn: Option<u64>,
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PbxExecutor {
    /// An executor for `cfg`; its reports go to `events`.
    pub fn new(cfg: PbxConfig, env: PbxEnv, events: UnboundedSender<PbxEvent>, reaper: Reaper) -> Self {
        let root = PathBuf::from(CGROUP_ROOT);
        let cgroup_root = cgroup_v2_at(&root).then_some(root);
        if cgroup_root.is_none() {
            warn!("no cgroup v2 hierarchy at {CGROUP_ROOT}: the PBX runs without a cgroup of its own or limits");
        }
        if let Some((user, port)) = &cfg.probe_user {
            // The test user's phone: the contact its permanent registration
            // points at, answering what the PBX routes to it.
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            match std::net::UdpSocket::bind(addr).and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            }) {
                Ok(socket) => {
                    tokio::spawn(serve_test_user(socket));
                    info!(%addr, user = %user, "answering for the PBX's test user");
                }
                Err(e) => {
                    error!(%addr, error = %e, "cannot answer for the PBX's test user: its routed probes will fail")
                }
            }
        }
        PbxExecutor { cfg, env, cgroup_root, events, reaper, slot: Arc::default() }
    }

    /// Carries out `cmd`; what happens later (the start's outcome, exits,
    /// probe answers) comes on the channel.
    pub fn carry(&mut self, cmd: PbxCommand) {
        match cmd {
            PbxCommand::Spawn { run } => self.start(run),
            PbxCommand::Probe { run: _, probe } => {
                let targets = self.probe_targets();
                let timeout = self.cfg.timing.probe_timeout;
                let tcp = self.cfg.probe_tcp;
                let user = self.cfg.probe_user.as_ref().map(|(u, _)| u.clone());
                let loopback = SocketAddr::from(([127, 0, 0, 1], self.cfg.sip_port));
                let events = self.events.clone();
                tokio::spawn(async move {
                    // Every target and transport at once; all must answer.
                    let probes = targets.into_iter().map(|addr| async move {
                        let udp = probe_udp(addr, timeout).await;
                        let tcp = if tcp { probe_tcp(addr, timeout).await.map(Some) } else { Ok(None) };
                        for e in [udp.as_ref().err(), tcp.as_ref().err()].into_iter().flatten() {
                            tracing::debug!(%addr, error = %e, "PBX probe failed");
                        }
                        udp.is_ok() && tcp.is_ok()
                    });
                    let answered = futures::future::join_all(probes).await.into_iter().all(|ok| ok);
                    // And, with a test user, routed to it through the PBX's lookup.
                    let routed = match &user {
                        Some(u) => match probe_routed(loopback, u, timeout).await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::debug!(error = %e, "PBX routed probe failed");
                                false
                            }
                        },
                        None => true,
                    };
                    let ok = answered && routed;
                    let _ = events.send(PbxEvent::ProbeDone { probe, ok });
                });
            }
            PbxCommand::Stop { run } => self.signal(run, self.cfg.stop_signal),
            PbxCommand::Kill { run } => self.signal(run, nix::sys::signal::Signal::SIGKILL),
            PbxCommand::Notice(n) => log_notice(n),
        }
    }

    /// Where the probe goes: the PBX's SIP port on loopback, and on the VIP
    /// too with `probe_vip` (the node holds it while its PBX runs).
    fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut targets = vec![SocketAddr::from(([127, 0, 0, 1], self.cfg.sip_port))];
        if self.cfg.probe_vip {
            if let Ok(vip) = self.env.vip.parse::<std::net::IpAddr>() {
                targets.push(SocketAddr::new(vip, self.cfg.sip_port));
            }
        }
        targets
    }

    /// Prepares and spawns run `run` on a blocking thread.
    fn start(&self, run: u64) {
        let (cfg, env, root) = (self.cfg.clone(), self.env.clone(), self.cgroup_root.clone());
        let (events, reaper, slot) = (self.events.clone(), self.reaper.clone(), self.slot.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(argv) = &cfg.prepare {
                let prepared =
                    run_as_the_pbx(&cfg, &env, &reaper, argv, &cfg.mount_point, PREPARE_TIMEOUT, "pbx.prepare");
                if let Err(e) = prepared {
                    error!(run, error = %e, "cannot prepare the PBX's data; not started");
                    let _ = events.send(PbxEvent::SpawnFailed { run });
                    return;
                }
            }
            let mut process = match PbxProcess::spawn(&cfg, &env, root.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    error!(run, error = %chain(&e), "cannot start the PBX");
                    let _ = events.send(PbxEvent::SpawnFailed { run });
                    return;
                }
            };
            info!(run, pid = process.pid(), command = %describe(&cfg), "PBX started");
            // The reaper waits for it (never std's `wait`, which would
            // race the reaper); the pid stays here for signals.
            drop(process.take_child());
            let pid = process.pid();
            {
                let mut s = lock(&slot);
                if s.kill_on_spawn.take() == Some(run) {
                    info!(run, "the PBX was stopped while it started: killing its group");
                    let _ = process.signal_group(nix::sys::signal::Signal::SIGKILL);
                }
                s.current = Some((run, process));
            }
            // Spawned first, then the exit: both on one channel, in order
            // (an exit reaped before this registration is kept for it).
            let _ = events.send(PbxEvent::Spawned { run });
            reaper.register(
                pid,
                Box::new(move |status| {
                    info!(run, status = %crate::os::reaper::describe(status), "PBX exited");
                    let _ = events.send(PbxEvent::Exited { run });
                }),
            );
        });
    }

    fn signal(&self, run: u64, signal: nix::sys::signal::Signal) {
        let mut s = lock(&self.slot);
        match &s.current {
            Some((r, p)) if *r == run => {
                info!(run, %signal, pgid = p.pid(), "signalling the PBX's process group");
                if let Err(e) = p.signal_group(signal) {
                    warn!(run, error = %chain(&e), "could not signal the PBX");
                }
            }
            // Its start is still under way (or failed): killed as soon as
            // it exists.
            _ => {
                info!(run, %signal, "the PBX is not spawned yet: it is killed when it is");
                s.kill_on_spawn = Some(run);
            }
        }
    }

    /// At shutdown: SIGKILL of the current process group (the host's
    /// orderly stop comes first when there is time for it).
    pub fn kill_now(&self) {
        let s = lock(&self.slot);
        if let Some((run, p)) = &s.current {
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

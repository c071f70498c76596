//! The supervisor's one loop, an executor of the host (`triad-host`): it
//! owns the host and every adapter, waits for the next event (a timer, a
//! peer message, a volume report, a control request, an ARP conflict, a
//! signal), hands it to the host, and carries out the host's commands in
//! order before taking the next event. The decisions and their ordering
//! rules (the volume's view, VIP actions only inside the lease, TimeoutNow
//! only after the volume's confirmation, fitness) are the host's; this
//! file only carries them out.
//!
//! One owner, one loop: no state is shared between tasks, so the host's
//! decisions and the world's state cannot drift apart. The tasks around it
//! (peer links, the control socket) only move bytes into channels.
//!
//! What carrying out in order means here:
//! - a `Persist` is durable (redb commit, fsync) before any later command;
//!   if it fails, the remaining commands are dropped and the supervisor
//!   stops, because sending a vote that is not on disk could elect two
//!   leaders after a crash;
//! - a VIP action completes (and is reported back) before later commands,
//!   so "VIP removed, then TimeoutNow sent" holds on the wire; it goes out
//!   only inside its lease (`os/vip.rs` `apply_in_lease`);
//! - a step-down confirmation is awaited before anything else happens;
//! - a fence operation (`os/fence.rs`, decided by `triad_host::fence`) is
//!   carried out inline (a few hundred microseconds of netlink) and its
//!   result, with the clock read after the call, goes back to the host at
//!   once; the fence is installed before the first event, checked every
//!   second, and reinstalled if someone changed it;
//! - every queued volume report reaches the host before a peer message, so
//!   a vote is never judged against a position older than one this node
//!   has already acknowledged to the leader.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};
use triad_core::{AdminRequest, Membership, Notice, Position, Setup, VipAction};
use triad_host::fence::{grant_ttl, ARM_TTL};
use triad_host::{admin_refusal, Command, Event, FenceOp, FenceResult, Host, HostNotice, VipResult, VolumeStart};

use crate::config::Config;
use crate::control::{self, ControlRequest, Request, Response, StatusReport};
use crate::errors::chain;
use crate::os::arp_watch::ArpWatch;
use crate::os::fence::{Fence, FenceError, Refreshed};
use crate::os::netlink::Netlink;
use crate::os::realtime;
use crate::os::vip::{apply_in_lease, KernelVip, Lease, VipError, VipOps, VipSpec};
use crate::peer::tls::{client_config, server_config, Credentials};
use crate::peer::{LinkConfig, PeerLinks};
use crate::readiness::{Checked, ReadinessRunner};
use crate::store::StateStore;
use crate::volume::{VolumeEvent, VolumeHandle};

/// How long the supervisor waits for its interface to appear at start.
const LINK_WAIT: Duration = Duration::from_secs(30);
/// How long a stopping leader lets its links send the TimeoutNow.
const HANDOVER_FLUSH: Duration = Duration::from_millis(100);
/// How long a handing-over leader waits for its volume thread to confirm
/// the step-down before it gives up on sending TimeoutNow.
const VOLUME_STEP_DOWN_WAIT: Duration = Duration::from_secs(2);
/// Pause of the ARP watch after a receive error.
const ARP_WATCH_RETRY: Duration = Duration::from_secs(1);
/// How often the fence is read back (tampering, a missing fence retried).
const FENCE_CHECK: Duration = Duration::from_secs(1);
/// Test-only fault hooks: the directory they are looked for in (the lab
/// sets it; an appliance never does). See `fault_hook`.
const FAULT_HOOKS_ENV: &str = "TRIAD_FAULT_HOOKS";

/// Why the supervisor stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The persisted state could not be opened, read or written.
    #[error("state store")]
    Store(#[from] crate::store::StoreError),
    /// The reaper thread could not be started.
    #[error("cannot start the reaper thread")]
    Reaper(#[source] std::io::Error),
    /// The configured watchdog could not be opened or refused its timeout.
    #[error("watchdog (watchdog.device, watchdog.timeout_s)")]
    Watchdog(#[source] crate::os::watchdog::WatchdogError),
    /// Setting up the interface failed.
    #[error("interface {interface}")]
    Interface {
        /// The configured interface.
        interface: String,
        /// Cause.
        #[source]
        source: crate::os::netlink::NetlinkError,
    },
    /// The VIP adapter could not start.
    #[error("VIP adapter")]
    Vip(#[from] crate::os::vip::VipError),
    /// Conflict detection could not start.
    #[error("ARP watch")]
    ArpWatch(#[from] crate::os::arp_watch::ArpWatchError),
    /// Certificates or keys could not be loaded.
    #[error("TLS credentials")]
    Tls(#[from] crate::peer::tls::TlsError),
    /// The peer links could not start.
    #[error("peer links")]
    Links(#[from] crate::peer::LinkError),
    /// The control socket could not start.
    #[error("control socket")]
    Control(#[from] crate::control::ControlError),
    /// Netlink could not be opened.
    #[error("netlink")]
    Netlink(#[source] crate::os::netlink::NetlinkError),
    /// Signal handlers could not be installed.
    #[error("signal handler")]
    Signal(#[source] std::io::Error),
    /// The replicated volume could not start.
    #[error("replicated volume")]
    Volume(#[from] crate::volume::VolumeError),
    /// The NBD export could not start.
    #[error("NBD export")]
    Nbd(#[from] crate::nbd::NbdError),
}

impl RuntimeError {
    /// The configuration is what is wrong (exit code 2), not the run: a
    /// watchdog timeout the driver will not keep is a config field to fix.
    pub fn is_bad_input(&self) -> bool {
        use crate::os::watchdog::WatchdogError;
        matches!(
            self,
            RuntimeError::Watchdog(WatchdogError::TimeoutRefused { .. } | WatchdogError::TimeoutTooShort { .. })
        )
    }
}

/// Runs the supervisor until SIGTERM/SIGINT or a fatal error.
pub async fn run(cfg: Config) -> Result<(), RuntimeError> {
    apply_realtime(&cfg);
    let store = StateStore::open(cfg.state_file())?;
    let hard = store.load()?;
    info!(node = cfg.node.id, epoch = hard.epoch, standby = hard.standby, "starting");
    let peers = [cfg.cluster.peers[0].id, cfg.cluster.peers[1].id];
    let sync_watch = Arc::new(crate::sync_watch::SyncWatch::default());
    let replica = match &cfg.volume {
        Some(v) => Some(crate::volume::open_replica(cfg.node.id, peers, v, &sync_watch)?),
        None => None,
    };
    let position = replica.as_ref().map_or(Position::default(), |r| triad_repl::core_position(r.position()));
    let electable = replica.as_ref().is_none_or(|r| r.electable());
    let membership = replica.as_ref().map_or(Membership::default(), |r| r.membership());

    let netlink = Netlink::new().map_err(RuntimeError::Netlink)?;
    let interface = cfg.node.interface.clone();
    let if_err = |source| RuntimeError::Interface { interface: interface.clone(), source };
    let ifindex = netlink.wait_for_link(&cfg.node.interface, LINK_WAIT).await.map_err(if_err)?;
    netlink.set_link_up(ifindex).await.map_err(if_err)?;
    let own = cfg.node.address;
    netlink.ensure_address(ifindex, own.addr(), own_prefix(&cfg)).await.map_err(if_err)?;

    let spec = VipSpec {
        v4: Some((cfg.cluster.vip.addr, cfg.cluster.vip.prefix_len)),
        v6: cfg.cluster.vip6.map(|c| (c.addr, c.prefix_len)),
        lifetime_secs: u32::try_from(cfg.timing.vip_lifetime.as_secs()).unwrap_or(u32::MAX),
    };
    let mut vip = KernelVip::new(netlink.clone(), ifindex, spec).await?;
    // A restarted supervisor never inherits a VIP: only a fresh lease may raise it.
    if let Err(e) = vip.apply(VipAction::Remove).await {
        warn!(error = %chain(&e), "could not clear a leftover VIP at start");
    }
    let mut arp_watch = ArpWatch::new(ifindex, cfg.cluster.vip.addr, vip.mac())?;
    // The lease fence before anything could raise the VIP: without it this
    // node is unfit to lead (the host tells the core), so it never holds
    // the VIP unfenced.
    let fence_spec = (ifindex, Some(cfg.cluster.vip.addr), cfg.cluster.vip6.map(|c| c.addr));
    let fence = install_fence(fence_spec);

    let creds = Credentials::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)?;
    let link_cfg =
        LinkConfig::new(cfg.node.id, cfg.peer_addrs().to_vec(), server_config(&creds)?, client_config(&creds)?);
    let listen = SocketAddr::new(own.addr(), cfg.cluster.peer_port);
    let (links, mut inbound) = PeerLinks::start(link_cfg, listen).await?;
    let mut control_rx = control::serve(&cfg.node.control_socket)?;
    #[cfg(feature = "test-agent")]
    crate::test_agent::spawn(cfg.node.address.addr(), cfg.node.control_socket.clone()).await;
    let clock = Clock::start();
    let (vol_tx, mut vol_events) = tokio::sync::mpsc::unbounded_channel();
    let (volume, serve_kernel) = match (replica, &cfg.volume) {
        (Some(replica), Some(vc)) => {
            let (handle, serve) = start_volume(&cfg, vc, &creds, replica, clock, vol_tx.clone(), sync_watch).await?;
            (Some(handle), Some(serve))
        }
        _ => (None, None),
    };

    let mut term = signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?;
    // SIGPWR: the UPS says power is going; an orderly stop, like SIGTERM.
    let mut pwr = signal(SignalKind::from_raw(libc::SIGPWR)).map_err(RuntimeError::Signal)?;

    let setup = Setup {
        id: cfg.node.id,
        peers,
        timing: cfg.timing.clone(),
        hard,
        position,
        now: clock.now(),
        seed: random_u64(),
    };
    // Before the first message: fitness and membership (a learner must
    // not vote even once), and the volume's first view.
    let volume_start = volume.as_ref().map(|_| VolumeStart { position, electable, membership });
    let (mut host, mut start) = Host::new(setup, volume_start);
    // The PBX, on a node configured with one: the host decides when it
    // runs (leader inside its lease), the executor carries it out.
    let (pbx_tx, mut pbx_events) = tokio::sync::mpsc::unbounded_channel();
    // One reaper for every child and orphan (PID 1 of the node's PID
    // namespace, or a subreaper): no zombies, and the PBX's exit reported.
    let reaper = crate::os::reaper::Reaper::start().map_err(RuntimeError::Reaper)?;
    // The watchdog counts from its opening: opened last before the loop,
    // after everything that could fail at start.
    let watchdog = match &cfg.watchdog {
        Some(w) => {
            let (dog, armed) = crate::os::watchdog::HwWatchdog::open(&w.device, w.timeout_s, w.stale_after)
                .map_err(RuntimeError::Watchdog)?;
            info!(device = %w.device.display(), asked_s = w.timeout_s, accepted_s = armed.timeout_s,
                last_reboot_was_watchdog = armed.last_reboot_was_watchdog, "hardware watchdog armed");
            Some((dog, armed))
        }
        None => None,
    };
    let (fs_tx, mut fs_events) = tokio::sync::mpsc::unbounded_channel();
    let fs = match (&cfg.filesystem, &cfg.pbx, &cfg.volume) {
        (Some(fc), Some(pc), Some(vc)) => {
            start.extend(host.enable_filesystem(clock.now(), fc.timing));
            let place = crate::filesystem::FsPlace {
                nbd_socket: vc.nbd_socket.clone(),
                serve_kernel: serve_kernel.clone(),
                size: vc.size,
                mount_point: pc.mount_point.clone(),
                owner: (pc.uid, pc.gid),
            };
            Some(crate::filesystem::FsExecutor::new(fc.clone(), place, fs_tx.clone(), reaper.clone()))
        }
        _ => None,
    };
    let (ready_tx, mut ready_results) = tokio::sync::mpsc::unbounded_channel();
    let mut readiness = None;
    let pbx = cfg.pbx.clone().map(|pc| {
        if let Err(e) = crate::os::pbx_process::allow_nonlocal_bind() {
            warn!(error = %e, "cannot allow binding the VIP before holding it; a PBX listening on the VIP may fail to start");
        }
        host.enable_pbx(pc.timing);
        let env = crate::os::pbx_process::PbxEnv { vip: cfg.cluster.vip.addr.to_string() };
        readiness = Some(ReadinessRunner::new(pc.clone(), env.clone(), reaper.clone(), ready_tx.clone()));
        crate::pbx::PbxExecutor::new(pc, env, pbx_tx.clone(), reaper.clone())
    });
    // Periodic failover readiness checks (the first at once).
    let mut readiness_tick =
        tokio::time::interval(cfg.pbx.as_ref().map_or(Duration::from_secs(3600), |p| p.readiness_interval));
    readiness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sync_stall = cfg.volume.as_ref().map(|v| v.sync_stall);
    let mut stall_check = tokio::time::interval(sync_stall.map_or(Duration::from_secs(3600), |d| d / 4));
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fault_hooks = std::env::var_os(FAULT_HOOKS_ENV).map(std::path::PathBuf::from);
    if let Some(dir) = &fault_hooks {
        warn!(dir = %dir.display(), "test fault hooks enabled ({FAULT_HOOKS_ENV}); never on an appliance");
    }
    let mut shell = Shell {
        host,
        store,
        vip,
        fence,
        fence_spec,
        fence_failing: false,
        fence_recheck: false,
        fault_hooks,
        links,
        clock,
        cfg,
        volume,
        pbx,
        readiness,
        fs,
        watchdog,
        _vol_tx: vol_tx,
        _pbx_tx: pbx_tx,
        _fs_tx: fs_tx,
        _ready_tx: ready_tx,
    };
    if let Some(w) = &shell.cfg.watchdog {
        let timing = triad_host::WatchdogTiming { pet_interval: w.pet_interval, stale_after: w.stale_after };
        let volume = shell.volume.is_some();
        shell.host.enable_watchdog(timing, volume);
    }
    shell.execute(start).await?;
    shell.step(Event::FenceInstalled(shell.fence.is_some())).await?;
    let mut fence_check = tokio::time::interval(FENCE_CHECK);
    fence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled_seen = None;

    info!(listen = %listen, "supervisor running");
    let mut arp_resume: Option<tokio::time::Instant> = None;
    // Set by a stop signal on an active node with a filesystem: the loop
    // goes on until the service is down here and the role handed over.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        if let Some(deadline) = stopping {
            let down = !shell.host.filesystem().is_some_and(triad_host::Filesystem::in_service);
            let busy = shell.host.handing_over() || shell.host.draining();
            if down && !busy || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Rule 16, on every turn: a sync stuck past the limit makes this
        // node unfit to lead (the host tells the core, which steps down).
        if let (Some(v), Some(limit)) = (&shell.volume, sync_stall) {
            let stalled = v.sync_stalled(limit);
            if stalled_seen != Some(stalled) {
                stalled_seen = Some(stalled);
                shell.step(Event::SyncStalled(stalled)).await?;
            }
        }
        let deadline = shell.clock.to_tokio(shell.host.next_deadline());
        let event = tokio::select! {
            // Timers first: a lease end must not wait behind a message burst.
            biased;
            _ = tokio::time::sleep_until(deadline) => Event::Tick,
            Some((_from, msg)) = inbound.recv() => {
                // A vote is judged against this node's position: every
                // position the volume reported before now (so before any
                // AppendReply that acknowledged it left) goes in first.
                for event in volume_events(&mut vol_events) {
                    shell.step(event).await?;
                }
                Event::Peer(msg)
            }
            Some(ev) = vol_events.recv() => volume_event(ev),
            Some(ev) = pbx_events.recv() => Event::Pbx(ev),
            Some(ev) = fs_events.recv() => Event::Fs(ev),
            Some(checked) = ready_results.recv() => {
                shell.readiness_checked(checked).await?;
                continue;
            }
            _ = readiness_tick.tick(), if shell.readiness.is_some() => {
                if let Some(r) = &shell.readiness {
                    r.start(None);
                }
                continue;
            }
            Some(req) = control_rx.recv() => {
                shell.control(req).await?;
                continue;
            }
            conflict = arp_watch.next_conflict(), if arp_resume.is_none() => match conflict {
                Ok(mac) => Event::VipConflict { mac },
                Err(e) => {
                    // Pause rather than spin on a persistent error (a link
                    // that went away) at real-time priority.
                    warn!(error = %chain(&e), "ARP watch failed; retrying in 1 s");
                    arp_resume = Some(tokio::time::Instant::now() + ARP_WATCH_RETRY);
                    continue;
                }
            },
            _ = sleep_until_or_never(arp_resume) => {
                arp_resume = None;
                continue;
            }
            _ = stall_check.tick() => {
                // The volume thread's progress, for the watchdog: a status
                // snapshot younger than half the stall limit.
                let fresh = shell.volume.as_ref().and_then(VolumeHandle::status).is_some_and(|(_, age)| {
                    sync_stall.is_some_and(|limit| age < limit / 2)
                });
                if fresh && shell.cfg.watchdog.is_some() {
                    Event::Progress(triad_host::Critical::VolumeThread)
                } else {
                    continue;
                }
            }
            _ = fence_check.tick() => {
                shell.check_fence().await?;
                continue;
            }
            _ = sleep_until_or_never(stopping) => continue,
            _ = stop_signal(&mut term, &mut int, &mut pwr), if stopping.is_none() => {
                if !shell.begin_stop().await? {
                    break;
                }
                stopping = Some(tokio::time::Instant::now() + STOP_DRAIN);
                continue;
            }
        };
        shell.step(event).await?;
        if std::mem::take(&mut shell.fence_recheck) {
            // Refused: perhaps someone changed the fence. Repaired now
            // rather than at the next periodic check: a missing table
            // filters nothing.
            shell.check_fence().await?;
        }
    }
    shell.hand_over_before_exit().await?;
    // A PBX the orderly stop already ended needs no kill (nor a log line
    // saying so); one still starting, running or stopping does.
    let pbx_left = shell.host.pbx().is_some_and(|p| p.state() != triad_host::PbxState::Stopped);
    if let (Some(p), true) = (&shell.pbx, pbx_left) {
        p.kill_now();
    }
    if let Some(f) = &shell.fs {
        f.tear_down().await;
    }
    if let Some((dog, _)) = shell.watchdog.take() {
        if shell.cfg.watchdog.as_ref().is_some_and(|w| w.magic_close_on_shutdown) {
            match dog.disarm() {
                Ok(()) => info!("watchdog disarmed (clean shutdown)"),
                Err(e) => error!(error = %chain(&e), "could not disarm the watchdog; the box will reset"),
            }
        }
    }
    info!("shutting down: removing the VIP");
    if let Err(e) = shell.vip.apply(VipAction::Remove).await {
        error!(error = %chain(&e), "could not remove the VIP at shutdown; the kernel lifetime will");
    }
    // The rules stay (fail closed); only the element goes.
    if let Some(Err(e)) = shell.fence.as_ref().map(Fence::revoke) {
        error!(error = %chain(&e), "could not revoke the fence element at shutdown; its timeout will");
    }
    Ok(())
}

/// Installs the lease fence, or says why not (the node then never leads).
fn install_fence((ifindex, v4, v6): FenceSpec) -> Option<Fence> {
    match Fence::install_ifindex(ifindex, v4, v6) {
        Ok(f) => {
            info!(interface = f.ifname(), "VIP lease fence installed (nftables table netdev triad_fence)");
            Some(f)
        }
        Err(e) => {
            error!(error = %chain(&e), "cannot install the VIP lease fence; this node will not hold the VIP");
            None
        }
    }
}

/// Interface index and VIPs the fence is installed for.
type FenceSpec = (u32, Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>);

/// The host plus the adapters that carry out its commands.
struct Shell<V: VipOps> {
    host: Host,
    store: StateStore,
    vip: V,
    /// The VIP's kernel lease fence; `None` if it could not be installed.
    fence: Option<Fence>,
    fence_spec: FenceSpec,
    /// The kernel refused the last fence operation: further failures are
    /// not logged at warn level each time.
    fence_failing: bool,
    /// A fence operation was refused: the fence is checked (and
    /// reinstalled if it was changed) right after the event.
    fence_recheck: bool,
    /// Where the test-only fault hooks are looked for, if enabled.
    fault_hooks: Option<std::path::PathBuf>,
    links: PeerLinks,
    clock: Clock,
    cfg: Config,
    /// The replicated volume's thread, if this node has a volume.
    volume: Option<VolumeHandle>,
    /// Keeps the volume event channel open when there is no volume.
    _vol_tx: tokio::sync::mpsc::UnboundedSender<VolumeEvent>,
    /// The PBX's executor, on a node with `[pbx]`.
    pbx: Option<crate::pbx::PbxExecutor>,
    /// The hardware watchdog and what it said at opening, on a node with
    /// `[watchdog]`.
    watchdog: Option<(crate::os::watchdog::HwWatchdog, crate::os::watchdog::Armed)>,
    /// Keeps the PBX event channel open when there is no PBX.
    _pbx_tx: tokio::sync::mpsc::UnboundedSender<triad_host::PbxEvent>,
    /// The filesystem's executor, on a node with `[filesystem]`.
    fs: Option<crate::filesystem::FsExecutor>,
    /// Keeps the filesystem event channel open when there is none.
    _fs_tx: tokio::sync::mpsc::UnboundedSender<triad_host::FsEvent>,
    /// Runs the failover readiness check, on a node with `[pbx]`.
    readiness: Option<ReadinessRunner>,
    /// Keeps the readiness channel open when there is no PBX.
    _ready_tx: tokio::sync::mpsc::UnboundedSender<crate::readiness::Checked>,
}

impl<V: VipOps> Shell<V> {
    /// Feeds one event to the host and carries out its commands.
    async fn step(&mut self, event: Event) -> Result<(), RuntimeError> {
        let commands = self.host.handle(self.clock.now(), event);
        self.execute(commands).await
    }

    /// Carries out commands in order; what a VIP action or a step-down
    /// confirmation reports goes back to the host at once, and what that
    /// produces joins the queue.
    async fn execute(&mut self, commands: Vec<Command>) -> Result<(), RuntimeError> {
        let mut queue: VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            match command {
                Command::Persist(hard) => {
                    if let Err(e) = self.store.save(&hard) {
                        // Nothing after this may happen: it could depend on it.
                        error!(error = %chain(&e), "cannot persist state; stopping");
                        let _ = self.vip.apply(VipAction::Remove).await;
                        return Err(e.into());
                    }
                }
                Command::Send { to, msg } => {
                    if let Err(e) = self.links.send(to, &msg) {
                        debug!(peer = to, error = %e, "message dropped");
                    }
                }
                Command::Vip { action, lease_until } => {
                    let clock = self.clock;
                    let now = move || clock.now();
                    let until = self.host.vip_lease(lease_until, clock.now());
                    let lease = Lease { until, now: &now };
                    let result = match apply_in_lease(&mut self.vip, action, &lease).await {
                        Ok(()) => VipResult::Done,
                        Err(e @ VipError::LeaseEnded { .. }) => {
                            debug!(?action, error = %chain(&e), "VIP action skipped");
                            VipResult::LeaseEnded
                        }
                        Err(e) => {
                            warn!(?action, error = %chain(&e), "VIP action failed");
                            VipResult::Failed
                        }
                    };
                    if matches!(action, VipAction::Add | VipAction::Remove) {
                        info!(?action, ?result, "VIP");
                    }
                    queue.extend(self.host.handle(self.clock.now(), Event::VipDone { action, result }));
                }
                Command::VolumeView(view) => {
                    if let Some(v) = &self.volume {
                        v.set_view(view);
                    }
                }
                Command::ConfirmStepDown(view) => {
                    let confirmed = match &self.volume {
                        Some(v) => v.set_view_confirmed(view, VOLUME_STEP_DOWN_WAIT).await,
                        None => true,
                    };
                    queue.extend(self.host.handle(self.clock.now(), Event::StepDownConfirmed(confirmed)));
                }
                Command::Fence(op) => {
                    let result = self.fence_op(op);
                    match result {
                        FenceResult::Failed => {
                            self.fence_failing = true;
                            self.fence_recheck = true;
                        }
                        FenceResult::Done { .. } if self.fence_failing => {
                            info!(?op, "fence operations succeed again");
                            self.fence_failing = false;
                        }
                        _ => {}
                    }
                    // Read after the call: the element's end is bounded by it.
                    let at = self.clock.now();
                    queue.extend(self.host.handle(at, Event::FenceDone { op, result, at }));
                }
                Command::Pbx(c) => {
                    if let Some(p) = self.pbx.as_mut() {
                        p.carry(c);
                    }
                }
                Command::Fs(c) => {
                    if let Some(f) = self.fs.as_mut() {
                        f.carry(c);
                    }
                }
                Command::PetWatchdog => {
                    let pet = self.watchdog.as_mut().map(|(d, _)| d.pet());
                    if let Some(Err(e)) = &pet {
                        warn!(error = %chain(e), "could not pet the watchdog");
                    }
                    if let Some(r) = &self.readiness {
                        r.watchdog_petted(!matches!(pet, Some(Err(_))));
                    }
                }
                Command::Notice(n) => log_notice(&n),
            }
        }
        Ok(())
    }

    /// Carries out one fence operation (the host decided it and its
    /// timeout; a grant's timeout is the lease left at this instant).
    fn fence_op(&self, op: FenceOp) -> FenceResult {
        let Some(fence) = &self.fence else { return FenceResult::Failed };
        let done = match op {
            // Arm, then read the clock, then the batch (triad_host::fence:
            // a grant frozen before the kernel cannot outlive the lease).
            FenceOp::Grant { deadline } => {
                if grant_ttl(deadline, self.clock.now()).is_none() {
                    return FenceResult::LeaseEnded;
                }
                if let Err(e) = fence.arm(ARM_TTL) {
                    self.log_fence_failure(op, &e);
                    return FenceResult::Failed;
                }
                match grant_ttl(deadline, self.clock.now()) {
                    Some(ttl) => {
                        self.hold_before_fence();
                        fence.grant_armed(ttl).map(|r| (r, ttl))
                    }
                    None => return FenceResult::LeaseEnded,
                }
            }
            FenceOp::Refresh { ttl } => {
                self.hold_before_fence();
                fence.refresh(ttl).map(|r| (r, ttl))
            }
            FenceOp::Revoke => fence.revoke().map(|()| (Refreshed::Revoked, Duration::ZERO)),
        };
        match done {
            Ok((Refreshed::Held { .. }, ttl)) => FenceResult::Done { ttl },
            Ok((Refreshed::Revoked, _)) if op == FenceOp::Revoke => FenceResult::Done { ttl: Duration::ZERO },
            // A ttl under a millisecond was turned into a revoke.
            Ok((Refreshed::Revoked, _)) => FenceResult::LeaseEnded,
            // A grant whose arming expired first changed nothing.
            Err(FenceError::NotPresent { .. }) if matches!(op, FenceOp::Grant { .. }) => FenceResult::LeaseEnded,
            Err(FenceError::NotPresent { .. }) => FenceResult::Expired,
            Err(e) => {
                self.log_fence_failure(op, &e);
                FenceResult::Failed
            }
        }
    }

    /// The first of a run of refused fence operations at warn level, the
    /// rest (retried every `FAILED_RETRY`) at debug: a fence that stays
    /// broken must not flood the log.
    fn log_fence_failure(&self, op: FenceOp, e: &FenceError) {
        if self.fence_failing {
            debug!(?op, error = %chain(e), "fence operation failed again");
        } else {
            warn!(?op, error = %chain(e), "fence operation failed; checking the fence");
        }
    }

    /// Test-only fault hook (the lab's freeze-before-refresh): if the file
    /// `hold-before-fence` is in the hooks directory, the whole event loop
    /// waits here, right before a fence call whose timeout is already
    /// computed, until the file is removed; `held-before-fence` says it
    /// waits. This is the instant issue 10 says a refresh must survive: a
    /// supervisor frozen between its clock and the kernel. (A SIGSTOP can
    /// not be aimed this precisely from outside, and PID 1 of a namespace
    /// cannot stop itself.)
    fn hold_before_fence(&self) {
        let Some(dir) = &self.fault_hooks else { return };
        let (hold, held) = (dir.join("hold-before-fence"), dir.join("held-before-fence"));
        if !hold.exists() {
            return;
        }
        warn!("fault hook: holding right before a fence call");
        let _ = std::fs::write(&held, b"");
        while hold.exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_file(&held);
        warn!("fault hook: released; the fence call goes out now");
    }

    /// Reads the fence back; one that is missing or changed is installed
    /// afresh (element gone: the host grants again if it still leads), and
    /// one that cannot be installed leaves the node unfit to lead.
    async fn check_fence(&mut self) -> Result<(), RuntimeError> {
        match self.fence.as_ref().map(Fence::check) {
            Some(Ok(state)) if state.intact() => return Ok(()),
            Some(Ok(state)) => error!(?state, "the VIP lease fence was changed by someone else; reinstalling it"),
            Some(Err(e)) => error!(error = %chain(&e), "cannot read the VIP lease fence back; reinstalling it"),
            None => {} // never installed: try again (install_fence logs why not)
        }
        let was_installed = self.fence.is_some();
        self.fence = install_fence(self.fence_spec);
        if was_installed || self.fence.is_some() {
            self.step(Event::FenceInstalled(self.fence.is_some())).await?;
        }
        Ok(())
    }

    /// The fence's part of `triad status`: the kernel's view (read now,
    /// a netlink round trip) next to the host's bound on the element's end.
    fn fence_status(&self) -> serde_json::Value {
        let now = self.clock.now();
        let host_end_ms = self.host.fence().end().map(|end| end.since(now).as_millis());
        let Some(fence) = &self.fence else {
            return serde_json::json!({ "installed": false, "host_element_left_ms": host_end_ms });
        };
        match fence.check() {
            Ok(state) => {
                let left = |e: Option<crate::os::fence::ElementState>| e.map(|e| e.remaining.as_millis());
                serde_json::json!({
                    "installed": true,
                    "intact": state.intact(),
                    "element_present": state.lease4.is_some() || state.lease6.is_some(),
                    "element_left_ms": left(state.lease4),
                    "element6_left_ms": left(state.lease6),
                    "host_element_left_ms": host_end_ms,
                })
            }
            Err(e) => {
                serde_json::json!({ "installed": true, "error": chain(&e).to_string(), "host_element_left_ms": host_end_ms })
            }
        }
    }

    /// Answers one control request.
    async fn control(&mut self, req: ControlRequest) -> Result<(), RuntimeError> {
        let response = match req.request {
            Request::Status => {
                let mut report = self.report();
                if let Some(v) = &self.volume {
                    // The volume thread's last snapshot: the thread may be
                    // stuck in a sync (the case rule 16 exists for), and
                    // status never waits for it.
                    report.extra.insert("volume".into(), volume_status(v));
                }
                report.extra.insert("fence".into(), self.fence_status());
                report.extra.insert("log".into(), crate::logring::status_json());
                if let Some((_, armed)) = &self.watchdog {
                    let now = self.clock.now();
                    let w = self.host.watchdog();
                    report.extra.insert(
                        "watchdog".into(),
                        serde_json::json!({
                            "timeout_s": armed.timeout_s,
                            "last_reboot_was_watchdog": armed.last_reboot_was_watchdog,
                            "stale": w.map(|w| w.stale(now).iter().map(|p| format!("{p:?}")).collect::<Vec<_>>()),
                            "self_fenced": w.and_then(|w| w.fenced()).map(|f| format!("{f:?}")),
                        }),
                    );
                }
                if let Some(f) = self.host.filesystem() {
                    let now = self.clock.now();
                    report.extra.insert(
                        "filesystem".into(),
                        serde_json::json!({
                            "mounted": f.mounted(),
                            "step": f.in_flight().map(|(s, since)| format!("{} for {:?}", s.name(), now.since(since))),
                            "blocked": f.blocked().map(|b| format!("{b:?}")),
                            "last_took_ms": f.durations().iter()
                                .map(|(s, d)| (s.name().to_string(), serde_json::json!(d.as_millis() as u64)))
                                .collect::<serde_json::Map<_, _>>(),
                        }),
                    );
                }
                if let Some(p) = self.host.pbx() {
                    let now = self.clock.now();
                    report.extra.insert(
                        "pbx".into(),
                        serde_json::json!({
                            "state": format!("{:?}", p.state()),
                            "failures_in_window": p.failures_in_window(),
                            "last_start_ms": p.last_start().map(|d| d.as_millis() as u64),
                            "hand_over_wanted": p.hand_over_wanted(),
                            "window_ends_in_s": p.window_ends().map(|t| t.since(now).as_secs()),
                            "alert": self.host.pbx_alert(),
                        }),
                    );
                    report.extra.insert("readiness".into(), readiness_json(&self.host.readiness()));
                }
                Response::Status(Box::new(report))
            }
            Request::Switchover { to } => self.admin(AdminRequest::Switchover { to }).await?,
            Request::FormatVolume => match self.host.format_volume(self.clock.now()) {
                Ok(commands) => {
                    info!("operator asked to create the volume's filesystem");
                    self.execute(commands).await?;
                    Response::Done
                }
                Err(e) => Response::Error(e.to_string()),
            },
            Request::Standby { on } => self.admin(AdminRequest::Standby(on)).await?,
            Request::CheckReadiness => {
                let Some(r) = &self.readiness else {
                    let _ = req.reply.send(Response::Error("this node runs no PBX: it is always ready".into()));
                    return Ok(());
                };
                // Answered when the check is done and the host has it.
                r.start(Some(req.reply));
                return Ok(());
            }
            Request::ClearPbxFailures => {
                if self.host.pbx().is_none() {
                    Response::Error("this node runs no PBX".into())
                } else {
                    info!("operator cleared the PBX's failures");
                    let commands = self.host.clear_pbx_failures(self.clock.now());
                    self.execute(commands).await?;
                    Response::Done
                }
            }
            // Answered by the control connection itself; the same answer here.
            Request::Logs => control::logs_response(),
            Request::Verify => {
                let Some(v) = self.volume.clone() else {
                    let _ = req.reply.send(Response::Error("this node has no replicated volume".into()));
                    return Ok(());
                };
                // A verify hashes the whole volume: never on the loop.
                tokio::spawn(async move {
                    let response = match v.verify().await {
                        Ok(report) => match serde_json::to_value(report) {
                            Ok(value) => Response::Report(value),
                            Err(e) => Response::Failed(e.to_string()),
                        },
                        Err(e) => Response::Failed(e),
                    };
                    let _ = req.reply.send(response);
                });
                return Ok(());
            }
        };
        // The client may have gone away; that is its business.
        let _ = req.reply.send(response);
        Ok(())
    }

    /// A readiness check ended: the host hears it, then the operator who
    /// asked (if one did) gets the verdict.
    async fn readiness_checked(&mut self, checked: Checked) -> Result<(), RuntimeError> {
        if !checked.problems.is_empty() {
            warn!(problems = ?checked.problems, "failover readiness check found problems");
        }
        self.step(Event::ReadinessChecked(checked.problems)).await?;
        if let Some(reply) = checked.reply {
            let _ = reply.send(Response::Report(readiness_json(&self.host.readiness())));
        }
        Ok(())
    }

    /// Runs an operator request; a refusal becomes the error response.
    async fn admin(&mut self, request: AdminRequest) -> Result<Response, RuntimeError> {
        info!(?request, "admin request");
        let commands = self.host.handle(self.clock.now(), Event::Admin(request));
        let refusal = admin_refusal(&commands);
        self.execute(commands).await?;
        Ok(match refusal {
            Some(reason) => Response::Error(reason),
            None => Response::Done,
        })
    }

    /// A stop signal on the active node with a filesystem: the service
    /// goes down here first (PBX, unmount, detach, VIP), then the role is
    /// handed over, all by the loop. Returns whether that is under way
    /// (false: stop now).
    async fn begin_stop(&mut self) -> Result<bool, RuntimeError> {
        if !self.host.filesystem().is_some_and(triad_host::Filesystem::in_service)
            || self.host.node().role() != triad_core::Role::Leader
        {
            return Ok(false);
        }
        match self.admin(AdminRequest::Switchover { to: None }).await? {
            Response::Error(reason) => {
                info!(%reason, "stopping without a handover");
                Ok(false)
            }
            _ => {
                info!("stopping: taking the service down, then handing the active role over");
                Ok(true)
            }
        }
    }

    /// A planned stop of the active node hands the role over first (the
    /// VIP goes, then TimeoutNow), so a restart costs a few milliseconds
    /// instead of an election timeout. Without an eligible peer it just stops.
    async fn hand_over_before_exit(&mut self) -> Result<(), RuntimeError> {
        if self.host.node().role() != triad_core::Role::Leader {
            return Ok(());
        }
        match self.admin(AdminRequest::Switchover { to: None }).await? {
            Response::Error(reason) => info!(%reason, "stopping without a handover"),
            _ => {
                info!("handed the active role over before stopping");
                // Let the link tasks put TimeoutNow on the wire.
                tokio::time::sleep(HANDOVER_FLUSH).await;
            }
        }
        Ok(())
    }

    fn report(&self) -> StatusReport {
        let status = self.host.status(self.clock.now());
        let peers = self.cfg.cluster.peers.map(|p| (p.id, p.address.to_string()));
        StatusReport::from_core(&status, self.cfg.cluster.vip.to_string(), &peers)
    }
}

/// The core's clock: microseconds since the supervisor started, on
/// CLOCK_BOOTTIME. Unlike CLOCK_MONOTONIC it keeps counting while the
/// machine (or its VM) is suspended or paused, so after a resume a leader
/// sees its lease as expired instead of renewing a VIP that peers have long
/// given to someone else.
#[derive(Clone, Copy, Debug)]
struct Clock {
    origin: Duration,
}

/// The longest the loop sleeps without looking at the core again.
/// At most this long from a stop signal to the exit while the service
/// goes down and the role is handed over (a hung step: exit anyway).
const STOP_DRAIN: Duration = Duration::from_secs(15);

const MAX_SLEEP: Duration = Duration::from_secs(3600);

impl Clock {
    fn start() -> Clock {
        Clock { origin: boottime() }
    }

    fn now(&self) -> triad_core::Instant {
        let micros = boottime().saturating_sub(self.origin).as_micros();
        triad_core::Instant(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The tokio instant at which the core's `at` comes: computed as a
    /// delay from now, since tokio's timers run on CLOCK_MONOTONIC.
    fn to_tokio(self, at: triad_core::Instant) -> tokio::time::Instant {
        let delay = at.since(self.now()).min(MAX_SLEEP);
        tokio::time::Instant::now() + delay
    }
}

/// CLOCK_BOOTTIME as a duration since boot.
fn boottime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Duration::new(u64::try_from(ts.tv_sec()).unwrap_or(0), u32::try_from(ts.tv_nsec()).unwrap_or(0)),
        // CLOCK_BOOTTIME exists on every kernel Triad supports (>= 2.6.39);
        // fall back to the monotonic clock rather than stop.
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    }
}

/// Starts the volume: its thread, the data links between the replicas
/// (their own port, so bulk data never delays a heartbeat), and the NBD
/// export on a unix socket, answering only while this node serves.
async fn start_volume(
    cfg: &Config,
    vc: &crate::volume::VolumeConfig,
    creds: &Credentials,
    replica: crate::volume::FileReplica,
    clock: Clock,
    events: tokio::sync::mpsc::UnboundedSender<VolumeEvent>,
    sync_watch: Arc<crate::sync_watch::SyncWatch>,
) -> Result<(VolumeHandle, crate::filesystem::ServeKernel), RuntimeError> {
    let data_peers = cfg.cluster.peers.map(|p| (p.id, SocketAddr::new(p.address, vc.data_port))).to_vec();
    let mut link_cfg = LinkConfig::new(cfg.node.id, data_peers, server_config(creds)?, client_config(creds)?);
    // Frames of up to 4 MiB: 256 of them bound what is queued toward a slow
    // peer (the replica's own pipeline window is 16 MiB; the rest is resent).
    link_cfg.queue_len = 256;
    // Two followers never send each other anything on the data links (only
    // the leader talks to followers): an idle timeout closed and reopened
    // those links every 5 s. TCP keepalive finds a dead peer instead.
    link_cfg.timing.idle_timeout = None;
    let listen = SocketAddr::new(cfg.node.address.addr(), vc.data_port);
    // Inbound data-link messages go from the connection's task straight
    // into the volume thread's queue: no forwarding task in between. The
    // handle exists only once the thread runs; anything earlier is dropped
    // (the leader resends).
    let to_volume: Arc<std::sync::OnceLock<VolumeHandle>> = Arc::new(std::sync::OnceLock::new());
    let deliver = {
        let to_volume = to_volume.clone();
        move |from, msg| {
            if let Some(v) = to_volume.get() {
                v.peer_message(from, msg);
            }
            true
        }
    };
    let links = Arc::new(PeerLinks::<triad_repl::Msg>::start_direct(link_cfg, listen, deliver).await?);
    // The volume thread's send closure holds the links: they live as long as it.
    let sender = links.clone();
    let handle = crate::volume::spawn(
        replica,
        &vc.data,
        move || clock.now(),
        move |to, msg| {
            if let Err(e) = sender.send(to, msg) {
                debug!(peer = to, error = %e, "replication message dropped");
            }
        },
        events,
        sync_watch.clone(),
        {
            let (id, peers, vc) = (cfg.node.id, [cfg.cluster.peers[0].id, cfg.cluster.peers[1].id], vc.clone());
            move |failed: crate::volume::FileReplica| {
                // Rule 9: new descriptors (the old ones refuse everything
                // after a failed sync), after the old ones are closed.
                drop(failed);
                crate::volume::open_replica(id, peers, &vc, &sync_watch)
            }
        },
    )?;
    let _ = to_volume.set(handle.clone());
    let listener = crate::nbd::server::bind_unix(&vc.nbd_socket)?;
    let pool = crate::nbd::PoolSize::from_budget(vc.nbd_buffers);
    let server = crate::nbd::NbdServer::with_pool("triad", handle.device(), handle.activity(), pool);
    let serve_kernel = kernel_connection_server(server.clone());
    tokio::spawn(async move {
        if let Err(e) = server.serve_listener(listener).await {
            error!(error = %chain(&e), "NBD export stopped");
        }
    });
    // The NBD connections are served on this thread: it must not recurse
    // into the writeback of the filesystem it serves.
    if let Err(e) = crate::os::realtime::set_io_flusher() {
        warn!(error = %chain(&e), "PR_SET_IO_FLUSHER not set on the runtime thread");
    }
    info!(socket = %vc.nbd_socket.display(), data_port = vc.data_port, "replicated volume running");
    Ok((handle, serve_kernel))
}

/// Serves the kernel nbd driver's connection (the server end of
/// `os::nbd_kernel::attach`, already past any handshake) on this node's
/// export, as a task of this runtime, with direct write replies like the
/// socket's connections. Called from the filesystem executor's blocking
/// thread.
fn kernel_connection_server<D>(server: crate::nbd::NbdServer<D>) -> crate::filesystem::ServeKernel
where
    D: crate::nbd::BlockDevice + Send + Sync + 'static,
{
    let rt = tokio::runtime::Handle::current();
    Arc::new(move |stream: std::os::unix::net::UnixStream| {
        stream.set_nonblocking(true)?;
        let line = match crate::nbd::ReplyLine::new(std::os::fd::AsFd::as_fd(&stream)) {
            Ok(line) => Some(line),
            Err(e) => {
                warn!(error = %e, "nbd: cannot duplicate the kernel connection's socket; replies go through its writer");
                None
            }
        };
        // `from_std` registers with the reactor of the runtime entered.
        let _entered = rt.enter();
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let server = server.clone();
        rt.spawn(async move {
            match server.serve_transmission_with(stream, line).await {
                Ok(()) => info!("kernel nbd connection closed"),
                Err(e) => warn!(error = %chain(&e), "kernel nbd connection ended"),
            }
        });
        Ok(())
    })
}

/// The host event a volume report becomes.
fn volume_event(ev: VolumeEvent) -> Event {
    match ev {
        VolumeEvent::Position(p) => Event::VolumePosition(p),
        VolumeEvent::Electable(e) => Event::VolumeElectable(e),
        VolumeEvent::Membership(m) => Event::VolumeMembership(m),
        VolumeEvent::Serving(s) => Event::VolumeServing(s),
    }
}

/// Every volume report already queued, as host events, in order.
fn volume_events(events: &mut tokio::sync::mpsc::UnboundedReceiver<VolumeEvent>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        out.push(volume_event(ev));
    }
    out
}

/// SIGTERM, SIGINT or SIGPWR: an orderly stop.
async fn stop_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    pwr: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = pwr.recv() => {}
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn own_prefix(cfg: &Config) -> u8 {
    match cfg.node.address {
        crate::config::IpCidr::V4(c) => c.prefix_len,
        crate::config::IpCidr::V6(c) => c.prefix_len,
    }
}

fn apply_realtime(cfg: &Config) {
    let rt = cfg.realtime;
    if !rt.enabled {
        return;
    }
    // Heartbeats must go out on time even when the box is loaded: a late
    // heartbeat is a false failover. Failure is logged, not fatal: running
    // without real-time priority is degraded, not unsafe (the lease still
    // ends on time because the loop checks it on every event).
    if rt.lock_memory {
        if let Err(e) = realtime::lock_memory() {
            warn!(error = %chain(&e), "memory not locked");
        }
    }
    if let Err(e) = realtime::set_realtime(i32::from(rt.priority)) {
        warn!(error = %chain(&e), "not running at real-time priority");
    }
}

fn log_notice(n: &HostNotice) {
    match n {
        HostNotice::Core(n) => log_core_notice(n),
        HostNotice::Fitness { fit: false, sync_stalled: true } => {
            error!("a volume disk sync is stuck; not fit to lead")
        }
        HostNotice::Fitness { fit, sync_stalled } => info!(fit, sync_stalled, "fitness to lead changed"),
        HostNotice::HandoverWithoutTimeoutNow { to } => {
            error!(to, "volume did not confirm the step-down; switchover continues without TimeoutNow")
        }
        HostNotice::Draining => info!("taking the service down here before handing the active role over"),
        HostNotice::FenceExpired => {
            warn!("the VIP's fence element had expired before its refresh; the VIP was silent until the next grant")
        }
        HostNotice::PbxHandingOver => {
            error!("the PBX keeps failing: handing the active role to a ready peer (this node refuses it for the failure window)")
        }
        HostNotice::PbxHandOverRefused { reason } => error!(
            %reason,
            "ALERT: the PBX keeps failing and no peer can take the active role; staying active and restarting it"
        ),
        HostNotice::Readiness { ready: true } => info!("failover readiness: ready"),
        HostNotice::Readiness { ready: false } => warn!("failover readiness: not ready (see `triad status`)"),
    }
}

/// `readiness` in status and the answer to `check-readiness`.
fn readiness_json(r: &triad_host::Readiness) -> serde_json::Value {
    serde_json::json!({ "ready": r.ready, "problems": r.problems })
}

fn log_core_notice(n: &Notice) {
    match n {
        Notice::RoleChanged { role, epoch } => info!(?role, epoch, "role changed"),
        Notice::LeaseLost { epoch } => warn!(epoch, "lease lost: no majority; stepping down"),
        Notice::SteppedDownUnfit { epoch } => {
            error!(epoch, "volume cannot serve (storage failed or journal syncs stalled); stepping down")
        }
        Notice::AdminRefused { reason } => warn!(%reason, "admin request refused"),
        Notice::VipFailed { action } => warn!(?action, "VIP action failed"),
        Notice::HandingOverVipFailures { failures, to } => {
            error!(failures, to, "cannot raise the VIP; handing the active role over")
        }
        Notice::VipConflict { mac } => warn!(mac = %format_mac(mac), "another host answers ARP for the VIP"),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A random number (election-timeout jitter seeds, box incarnations):
/// from the kernel, or from the clock and pid if that fails.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut buf).is_ok() {
            return u64::from_le_bytes(buf);
        }
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// The volume's part of `triad status`: the thread's last snapshot, with
/// its age (`snapshot_age_ms`), and whether a disk sync is stuck; `null`
/// before the thread's first snapshot.
fn volume_status(v: &VolumeHandle) -> serde_json::Value {
    let Some((status, age)) = v.status() else { return serde_json::Value::Null };
    let mut value = serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("snapshot_age_ms".into(), serde_json::Value::from(age.as_millis() as u64));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_volume_reports_become_host_events_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = |seq| Position { epoch: 1, seq };
        for ev in [
            VolumeEvent::Position(p(1)),
            VolumeEvent::Electable(true),
            VolumeEvent::Position(p(2)),
            VolumeEvent::Membership(Membership::Learner),
        ] {
            tx.send(ev).expect("open");
        }
        assert_eq!(
            volume_events(&mut rx),
            [
                Event::VolumePosition(p(1)),
                Event::VolumeElectable(true),
                Event::VolumePosition(p(2)),
                Event::VolumeMembership(Membership::Learner),
            ]
        );
        assert!(volume_events(&mut rx).is_empty(), "drained");
    }
}

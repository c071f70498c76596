//! triad-host: the supervisor's decisions at the boundary between the
//! election core, the replicated volume and the operating system, as a
//! sans-IO state machine (no clock, no I/O: time comes in with every event,
//! decisions go out as [`Command`]s). The supervisor's runtime only carries
//! the commands out and reports what happened; the simulator drives this
//! same code.
//!
//! ```text
//!   executor (runtime.rs, the simulator)                       Host
//!   peer message, timer, operator, ARP watch ──Event──▶  core (Node) ── outputs ──┐
//!   volume: position, electable, membership ──Event──▶  fitness ──▶ core         │
//!   sync watch: a sync stuck past the limit  ──Event──▶  fitness ──▶ core         │
//!   VIP action finished / refused (lease)    ──Event──▶  core                     │
//!   volume confirmed the step-down           ──Event──▶  held TimeoutNow          │
//!   fence installed / operation finished     ──Event──▶  fence.rs, fitness        │
//!                                                                                 ▼
//!   ◀──Command: Persist · Send · Vip{action, lease_until} · Fence(op) · VolumeView · ConfirmStepDown · Notice
//! ```
//!
//! The ordering rules kept here, each with the failure it prevents:
//! - **Persist before send.** Commands are carried out in order and the
//!   core puts a `Persist` before anything that depends on it; an executor
//!   whose persist fails carries out nothing after it (a vote sent but not
//!   on disk could elect two leaders after a crash).
//! - **No VIP action outside the lease.** Every `Vip` command carries the
//!   lease end the core held when it was decided; the executor carries out
//!   Add, Renew and Announce only while [`vip_allowed`] says so for the
//!   lease [`Host::vip_lease`] gives it, checked right before the action
//!   and, for Add and Renew, again after it (a renewal that outlasted the
//!   lease is undone). A refused action is reported as
//!   [`VipResult::LeaseEnded`]: a refused Add counts as failed for the
//!   core, so it cleans up; a refused Renew or Announce gives the core its
//!   timer at once, so it acts on the lease end.
//! - **The volume follows the core.** After every event the volume is
//!   handed the core's view (epoch, leader, lease end) if it changed, so it
//!   acknowledges and serves only inside a lease the core holds.
//! - **TimeoutNow only after the volume stepped down** (sketch rule 17).
//!   TimeoutNow waives the target's lease stickiness; it is held until the
//!   volume confirms it has taken the step-down view. Without the
//!   confirmation (the volume is stuck in a sync and could still
//!   acknowledge when the sync returns) it is dropped: the target is then
//!   elected the ordinary way, after this node's lease. While a handover
//!   waits, every later command and event waits with it (the executor is
//!   blocked in the confirmation, as the runtime is).
//! - **Fitness** (rule 16): the core is told this node may lead only while
//!   the replica says so, no disk sync is stuck and, on a node with a
//!   fence, the fence is installed (`triad_repl::Fitness`).
//! - **The service before the VIP, the VIP after the service** (issue
//!   11): on a node with a filesystem ([`filesystem`]) the core raises the
//!   VIP only once it is mounted (`Input::ServiceReady`), and the PBX runs
//!   only on it. A switchover or standby of the active node first takes
//!   the service down here (PBX, unmount, detach, then the VIP, then the
//!   core's handover), so the next node mounts a cleanly closed
//!   filesystem; a lost lease needs no such order (the VIP and the
//!   volume's view go at once, the PBX and the mount follow).
//! - **The kernel fence never outlives the lease** (issue 10): the VIP's
//!   set element is granted, refreshed and revoked by the rules of
//!   [`fence`], which hold however late the executor carries them out.
//!
//! Must not: do I/O, read a clock, or hold state the core or the replica
//! already own (it asks them).

use std::collections::VecDeque;

use triad_core::{
    AdminRequest, Body, Input, Instant, Membership, Message, Node, NodeId, Notice, Output, Position, Role, Setup,
    Status, VipAction, VipPhase,
};
use triad_repl::{Fitness, View};

pub use fence::{Fence, FenceOp, FenceResult};
pub use filesystem::{Filesystem, FsCommand, FsEvent, FsStep, FsTiming};
pub use pbx::{Pbx, PbxCommand, PbxEvent, PbxState, PbxTiming};
pub use triad_core::HardState;
pub use watchdog::{Critical, SelfFence, Watchdog, WatchdogTiming};

pub mod fence;
pub mod filesystem;
pub mod pbx;
pub mod volume;
pub mod watchdog;

/// What the host is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; due at or after [`Host::next_deadline`].
    Tick,
    /// A message from an authenticated peer's core.
    Peer(Message),
    /// An operator's request.
    Admin(AdminRequest),
    /// Another host answered ARP/NDP for the VIP.
    VipConflict {
        /// Its MAC.
        mac: [u8; 6],
    },
    /// A [`Command::Vip`] was carried out, failed, or refused.
    VipDone {
        /// The action.
        action: VipAction,
        /// How it ended.
        result: VipResult,
    },
    /// The volume's journal position moved (votes weigh it).
    VolumePosition(Position),
    /// Whether the replica may stand for election.
    VolumeElectable(bool),
    /// Rule 18: whether this box may vote, and from which epoch.
    VolumeMembership(Membership),
    /// The sync watch was looked at: whether a disk sync has been stuck
    /// past the limit.
    SyncStalled(bool),
    /// Answer to [`Command::ConfirmStepDown`]: whether the volume took the
    /// step-down view in time.
    StepDownConfirmed(bool),
    /// The VIP's kernel fence was installed (or reinstalled: no element),
    /// or found missing. Sent once at start on a node with a fence, before
    /// any peer message; a node that never sends it has no fence.
    FenceInstalled(bool),
    /// The PBX's executor reports (spawned, exited, a probe answered).
    Pbx(PbxEvent),
    /// The executor's failover readiness check ended (the PBX binary and
    /// its config check out, the watchdog is open): the problems found,
    /// none when it passed. Only on a node that runs a PBX.
    ReadinessChecked(Vec<String>),
    /// The filesystem's executor finished a step.
    Fs(FsEvent),
    /// Whether the volume serves (its first record of this node's epoch
    /// is committed): the filesystem is attached only then.
    VolumeServing(bool),
    /// A part the watchdog requires made progress (the executor reports
    /// the volume thread's fresh status snapshots).
    Progress(Critical),
    /// A [`Command::Fence`] ended; `at` is the clock read after the call.
    FenceDone {
        /// The operation.
        op: FenceOp,
        /// How it ended.
        result: FenceResult,
        /// Read after the call returned.
        at: Instant,
    },
}

/// How a VIP action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipResult {
    /// Carried out.
    Done,
    /// The OS refused it (netlink or socket error).
    Failed,
    /// Not carried out, or undone at once: the lease had ended.
    LeaseEnded,
}

/// What the executor must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Make the core's state durable; on failure, carry out nothing after it.
    Persist(HardState),
    /// Send a message to a peer's core (best effort).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Act on the VIP, only while [`vip_allowed`] (checked right before,
    /// and for Add and Renew again after); report with [`Event::VipDone`].
    Vip {
        /// The action.
        action: VipAction,
        /// The lease end the core held when it decided.
        lease_until: Option<Instant>,
    },
    /// Act on the VIP's kernel fence; report with [`Event::FenceDone`].
    Fence(FenceOp),
    /// Start, probe or stop the PBX ([`pbx`]); report with [`Event::Pbx`].
    Pbx(PbxCommand),
    /// Attach, check, mount, unmount or detach the volume's filesystem
    /// ([`filesystem`]); report with [`Event::Fs`].
    Fs(FsCommand),
    /// Pet the hardware watchdog ([`watchdog`]).
    PetWatchdog,
    /// Hand the volume the core's view.
    VolumeView(View),
    /// Hand the volume this (step-down) view and report, with
    /// [`Event::StepDownConfirmed`], whether it took it in time. Nothing
    /// else happens meanwhile.
    ConfirmStepDown(View),
    /// Worth logging.
    Notice(HostNotice),
}

/// Events for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostNotice {
    /// From the core.
    Core(Notice),
    /// The fitness verdict the core was given changed.
    Fitness {
        /// Fit to lead.
        fit: bool,
        /// Whether a disk sync is stuck.
        sync_stalled: bool,
    },
    /// The volume did not confirm the step-down: the handover goes on
    /// without TimeoutNow.
    HandoverWithoutTimeoutNow {
        /// The intended successor.
        to: NodeId,
    },
    /// An operator's switchover or standby waits for this node to take
    /// its service down (PBX, unmount, detach) first.
    Draining,
    /// A fence refresh found its element expired: the VIP was silent
    /// until the next grant (the refresh came too late; worth a look).
    FenceExpired,
    /// The PBX failed too often: this node hands the active role over.
    PbxHandingOver,
    /// The PBX failed too often but no peer can take the role (the
    /// reason): this node stays active and keeps restarting it. An alert.
    PbxHandOverRefused {
        /// Why, from the core.
        reason: String,
    },
    /// This node's failover readiness changed (for the log; status shows
    /// the problems).
    Readiness {
        /// Could take the active role now.
        ready: bool,
    },
}

/// How often a PBX hand-over no peer could take is tried again.
pub const PBX_HAND_OVER_RETRY: core::time::Duration = core::time::Duration::from_secs(2);

/// This node's failover readiness (issue 11, item 7), for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Could take the active role now.
    pub ready: bool,
    /// What stands in the way, one line each; empty when ready.
    pub problems: Vec<String>,
}

/// How long a drained switchover the core refuses is asked again.
pub const DRAIN_RETRY_FOR: core::time::Duration = core::time::Duration::from_secs(2);

/// Whether a VIP action may go out at `now` under a lease ending at
/// `lease_until` (invariant 1). A Remove always may.
pub fn vip_allowed(action: VipAction, lease_until: Option<Instant>, now: Instant) -> bool {
    action == VipAction::Remove || lease_until.is_some_and(|end| now < end)
}

/// What the volume reported at start (its durable state), if there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeStart {
    /// The journal's position.
    pub position: Position,
    /// Whether the replica may stand for election.
    pub electable: bool,
    /// Rule 18: may this box vote.
    pub membership: Membership,
}

/// The host of one node.
#[derive(Debug)]
pub struct Host {
    node: Node,
    id: NodeId,
    fitness: Fitness,
    /// The node has a replicated volume.
    volume: bool,
    /// The view the volume was last handed.
    view_given: Option<View>,
    /// A handover waiting for the volume's confirmation: the TimeoutNow,
    /// the rest of its batch, and the events that came meanwhile.
    handover: Option<Handover>,
    /// The VIP's kernel fence (disabled until [`Event::FenceInstalled`]).
    fence: Fence,
    /// The PBX's supervision, on a node that runs one.
    pbx: Option<Pbx>,
    /// The volume's filesystem, on a node that mounts it.
    fs: Option<Filesystem>,
    /// The volume serves ([`Event::VolumeServing`]).
    volume_serving: bool,
    /// What the core was last told of the service behind the VIP.
    service_ready: bool,
    /// An operator's switchover or standby waiting for the filesystem to
    /// go down on this node first (PBX stopped, unmounted, detached).
    draining: Option<AdminRequest>,
    /// Until when a drained request the core refuses is asked again (the
    /// service's last writes may leave the peers a heartbeat behind).
    drain_until: Option<Instant>,
    /// When to pet the hardware watchdog, on a node with one.
    watchdog: Option<Watchdog>,
    /// The executor's last readiness check: its problems (`None`: not
    /// checked yet). Only on a node that runs a PBX.
    checked: Option<Vec<String>>,
    /// The readiness the core was last told.
    ready_told: Option<bool>,
    /// The PBX wants a hand-over that no peer can take: the core's reason.
    pbx_alert: Option<String>,
    /// When that hand-over is asked again.
    pbx_hand_over_next: Option<Instant>,
}

#[derive(Debug)]
struct Handover {
    to: NodeId,
    msg: Message,
    rest: VecDeque<Output>,
    events: VecDeque<Event>,
}

impl Host {
    /// A host starting from `setup`, with the volume's durable state if
    /// the node has a volume. Returns the commands of the start (the
    /// volume's first view); fitness and membership reach the core before
    /// any message does, so a learner never votes even once.
    pub fn new(setup: Setup, volume: Option<VolumeStart>) -> (Host, Vec<Command>) {
        let now = setup.now;
        let id = setup.id;
        let position = volume.map_or(setup.position, |v| v.position);
        let node = Node::new(Setup { position, ..setup });
        let mut host = Host {
            node,
            id,
            fitness: Fitness::default(),
            volume: volume.is_some(),
            view_given: None,
            handover: None,
            fence: Fence::default(),
            pbx: None,
            fs: None,
            volume_serving: false,
            service_ready: true,
            draining: None,
            drain_until: None,
            watchdog: None,
            checked: None,
            ready_told: None,
            pbx_alert: None,
            pbx_hand_over_next: None,
        };
        let mut out = Vec::new();
        let mut inputs = VecDeque::new();
        if let Some(fit) = host.fitness.replica(volume.is_none_or(|v| v.electable)) {
            inputs.push_back(Input::Electable(fit));
        }
        if let Some(v) = volume {
            inputs.push_back(Input::Membership(v.membership));
        }
        host.run_core(now, inputs, &mut out);
        host.push_view(now, &mut out);
        (host, out)
    }

    /// Applies one event at `now`; the commands must be carried out in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(h) = self.handover.as_mut() {
            match event {
                Event::StepDownConfirmed(confirmed) => self.end_handover(now, confirmed, &mut out),
                // The executor is blocked in the confirmation: whatever
                // arrives meanwhile waits for it.
                other => h.events.push_back(other),
            }
            return out;
        }
        self.event(now, event, &mut out);
        out
    }

    fn event(&mut self, now: Instant, event: Event, out: &mut Vec<Command>) {
        let input = match event {
            Event::Tick => Some(Input::Tick),
            Event::Peer(msg) => Some(Input::Receive(msg)),
            Event::Admin(req) => self.admin(now, req, out),
            Event::VipConflict { mac } => Some(Input::VipConflict { mac }),
            Event::VipDone { action, result } => match result {
                VipResult::Done => Some(Input::VipDone { action, ok: true }),
                VipResult::Failed => Some(Input::VipDone { action, ok: false }),
                // A refused Add is a failed Add (the core cleans up). A
                // refused Renew or Announce means the lease has ended: the
                // core gets its timer at once, so it acts on the lease end
                // (drops the VIP, steps down) before anything else.
                VipResult::LeaseEnded if action == VipAction::Add => Some(Input::VipDone { action, ok: false }),
                VipResult::LeaseEnded => Some(Input::Tick),
            },
            Event::VolumePosition(p) => Some(Input::PositionChanged(p)),
            Event::VolumeElectable(e) => {
                let changed = self.fitness.replica(e);
                self.fit(changed, out)
            }
            Event::VolumeMembership(m) => Some(Input::Membership(m)),
            Event::SyncStalled(s) => {
                let changed = self.fitness.stall(s);
                self.fit(changed, out)
            }
            // No handover waits (a late or repeated answer).
            Event::StepDownConfirmed(_) => None,
            Event::FenceInstalled(ok) => {
                self.fence.installed(ok);
                let changed = self.fitness.fence(ok);
                self.fit(changed, out)
            }
            Event::Pbx(e) => {
                if let Some(p) = self.pbx.as_mut() {
                    out.extend(p.handle(now, e).into_iter().map(Command::Pbx));
                }
                None
            }
            Event::ReadinessChecked(problems) => {
                self.checked = Some(problems);
                None
            }
            Event::Fs(e) => {
                if let Some(fs) = self.fs.as_mut() {
                    out.extend(fs.done(now, e).into_iter().map(Command::Fs));
                }
                None
            }
            Event::VolumeServing(s) => {
                self.volume_serving = s;
                None
            }
            Event::Progress(part) => {
                if let Some(w) = self.watchdog.as_mut() {
                    w.progressed(part, now);
                }
                None
            }
            Event::FenceDone { op, result, at } => {
                self.fence.done(op, result, at);
                if result == FenceResult::Expired {
                    out.push(Command::Notice(HostNotice::FenceExpired));
                }
                // The executor may come back from a long stall (frozen in
                // the call): the core acts on timers that passed meanwhile
                // (a lease end) before anything else, as after a refused
                // VIP action.
                (now >= self.node.next_deadline()).then_some(Input::Tick)
            }
        };
        self.run_core(now, input.into_iter().collect(), out);
        self.follow_up(now, out);
    }

    /// What follows every event (and the end of a handover): the rest of
    /// the node catches up with the core, in this order.
    fn follow_up(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.push_service_ready(now, out);
        self.push_view(now, out);
        self.push_fence(now, out);
        self.push_pbx(now, out);
        if self.push_pbx_hand_over(now, out) {
            self.push_pbx(now, out);
        }
        self.push_service_fit(now, out);
        self.push_fs(now, out);
        self.push_service_ready(now, out);
        self.push_drained(now, out);
        self.push_readiness(now, out);
        self.push_watchdog(now, out);
    }

    /// After `failures_to_hand_over` PBX failures within the window, the
    /// active node switches over to an up-to-date, ready peer (drained,
    /// like an operator's: no acknowledged write is lost). If no peer can
    /// take it, the node stays active with an alert, supervision goes on
    /// restarting the PBX, and the hand-over is asked again every
    /// [`PBX_HAND_OVER_RETRY`]. Returns whether a hand-over started.
    fn push_pbx_hand_over(&mut self, now: Instant, out: &mut Vec<Command>) -> bool {
        let wanted = self.pbx.as_ref().is_some_and(Pbx::hand_over_wanted);
        if !wanted || self.node.role() != Role::Leader {
            self.pbx_alert = None;
            self.pbx_hand_over_next = None;
            return false;
        }
        if self.handover.is_some() || self.draining.is_some() {
            // Asked again once that ends (the next event); a retry time
            // left in the past would keep `next_deadline` there and spin
            // the runtime's timer-first loop meanwhile.
            if self.pbx_hand_over_next.is_some_and(|t| now >= t) {
                self.pbx_hand_over_next = None;
            }
            return false;
        }
        if self.pbx_hand_over_next.is_some_and(|t| now < t) {
            return false;
        }
        let req = AdminRequest::Switchover { to: None };
        // Ask a copy of the core first: a refusal leaves this node active.
        let trial = self.node.clone().handle(now, Input::Admin(req));
        let refusal = trial.iter().find_map(|o| match o {
            Output::Notice(Notice::AdminRefused { reason }) => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = refusal {
            if self.pbx_alert.as_ref() != Some(&reason) {
                out.push(Command::Notice(HostNotice::PbxHandOverRefused { reason: reason.clone() }));
            }
            self.pbx_alert = Some(reason);
            self.pbx_hand_over_next = Some(now.add(PBX_HAND_OVER_RETRY));
            return false;
        }
        // Asked again later if it does not happen (a drained switchover
        // the core refuses in the end puts the service back up here).
        self.pbx_alert = None;
        self.pbx_hand_over_next = Some(now.add(PBX_HAND_OVER_RETRY));
        out.push(Command::Notice(HostNotice::PbxHandingOver));
        if let Some(input) = self.admin(now, req, out) {
            self.run_core(now, VecDeque::from([input]), out);
            self.push_view(now, out);
        }
        true
    }

    /// A node that handed the role over after repeated PBX failures is
    /// unfit to lead until they age out of the window (or an operator
    /// clears them), as long as a peer could take the role; the active
    /// node itself stays fit meanwhile (it hands over in order rather than
    /// step down abruptly).
    fn push_service_fit(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() {
            return;
        }
        let Some(p) = self.pbx.as_ref() else { return };
        // The refusal ranks this node below a peer that could take the
        // role, never below no active node at all: with no reachable,
        // ready peer out of standby (found by the simulator: the others
        // resyncing or refusing too left the cluster without an active
        // node for the whole window), it may lead again.
        let refusing = p.hand_over_wanted()
            && self.node.role() != Role::Leader
            && self.node.status(now).peers.iter().any(|peer| peer.reachable && peer.ready && !peer.standby);
        let fit = !refusing;
        let changed = self.fitness.service(fit);
        if let Some(input) = self.fit(changed, out) {
            self.run_core(now, VecDeque::from([input]), out);
            self.push_view(now, out);
        }
    }

    /// The core tells its peers whether this node could take over now.
    fn push_readiness(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() || self.pbx.is_none() {
            return;
        }
        // On every event: the verdict alone, without building the problem
        // lines `readiness` gives status.
        let ready = self.checked.as_ref().is_some_and(Vec::is_empty)
            && self.fitness.storage_fit()
            && !self.pbx.as_ref().is_some_and(Pbx::hand_over_wanted);
        if self.ready_told != Some(ready) {
            self.ready_told = Some(ready);
            out.push(Command::Notice(HostNotice::Readiness { ready }));
            self.run_core(now, VecDeque::from([Input::TakeoverReady(ready)]), out);
        }
    }

    /// Whether this node could take the active role now (issue 11, item
    /// 7): its PBX and its config pass the executor's check, the replica is
    /// current and fit, and it does not refuse the role after repeated
    /// PBX failures. A node without a PBX is always ready.
    pub fn readiness(&self) -> Readiness {
        let Some(p) = self.pbx.as_ref() else { return Readiness { ready: true, problems: Vec::new() } };
        let mut problems = match &self.checked {
            None => vec!["not checked yet".to_string()],
            Some(found) => found.clone(),
        };
        if !self.fitness.storage_fit() {
            problems.push(if self.fitness.sync_stalled() {
                "a disk sync is stuck".to_string()
            } else {
                "the replica is not fit to lead (resyncing, failed, or the VIP fence is missing)".to_string()
            });
        }
        if p.hand_over_wanted() {
            problems.push(format!(
                "the PBX failed {} times within the failure window: this node refuses the role until they age out or an operator clears them",
                p.failures_in_window()
            ));
        }
        Readiness { ready: problems.is_empty(), problems }
    }

    /// The PBX wants a hand-over that no peer can take (the reason): an
    /// alert for status.
    pub fn pbx_alert(&self) -> Option<&str> {
        self.pbx_alert.as_deref()
    }

    /// An operator clears the PBX's failures: the node may take the role
    /// again and supervision starts afresh.
    pub fn clear_pbx_failures(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(p) = self.pbx.as_mut() {
            p.clear();
        }
        if self.handover.is_none() {
            self.event(now, Event::Tick, &mut out);
        }
        out
    }

    /// An operator's request. On a node whose filesystem is up, a
    /// switchover or standby that the core would accept first takes the
    /// service down here (PBX, unmount, detach, then the VIP) so the new
    /// active node mounts a filesystem this one closed cleanly; one the
    /// core would refuse is refused at once, with its reason.
    fn admin(&mut self, now: Instant, req: AdminRequest, out: &mut Vec<Command>) -> Option<Input> {
        let hands_over = matches!(req, AdminRequest::Switchover { .. } | AdminRequest::Standby(true));
        let up = self.fs.as_ref().is_some_and(Filesystem::in_service);
        if !hands_over || !up || self.node.role() != Role::Leader || self.draining.is_some() {
            return Some(Input::Admin(req));
        }
        // Ask a copy of the core: the real one hears the request only once
        // the service is down.
        let trial = self.node.clone().handle(now, Input::Admin(req));
        if trial.iter().any(|o| matches!(o, Output::Notice(Notice::AdminRefused { .. }))) {
            return Some(Input::Admin(req));
        }
        out.push(Command::Notice(HostNotice::Draining));
        self.draining = Some(req);
        None
    }

    /// The core hears a drained request once the filesystem is detached
    /// and the VIP, which went after it, is off (the core refuses a
    /// switchover while the VIP is moving).
    fn push_drained(&mut self, now: Instant, out: &mut Vec<Command>) {
        let down = !self.fs.as_ref().is_some_and(Filesystem::in_service);
        if self.handover.is_some() || !down || self.node.vip_phase() != VipPhase::Released {
            return;
        }
        let Some(req) = self.draining else { return };
        // The unmount's last writes may have left the peers' known
        // positions a heartbeat behind ("not up to date"): ask again on
        // every event until DRAIN_RETRY_FOR has passed, then let the core
        // refuse (the service comes back up here).
        let until = *self.drain_until.get_or_insert(now.add(DRAIN_RETRY_FOR));
        let refused = self
            .node
            .clone()
            .handle(now, Input::Admin(req))
            .iter()
            .any(|o| matches!(o, Output::Notice(Notice::AdminRefused { .. })));
        if refused && now < until {
            return;
        }
        self.draining = None;
        self.drain_until = None;
        self.run_core(now, VecDeque::from([Input::Admin(req)]), out);
        self.push_view(now, out);
    }

    /// The core raises the VIP only while the service behind it is ready
    /// (the filesystem mounted, on a node with one), and drops it when the
    /// service has gone down.
    fn push_service_ready(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() {
            return;
        }
        // Mounted, or on the way down of a drained handover (the VIP goes
        // last there): not while a demotion's unmount runs, or a node
        // elected again meanwhile raises the VIP over a vanishing mount.
        let draining = self.draining.is_some();
        let ready = self.fs.as_ref().is_none_or(|f| f.ready() && (f.mounted() || draining));
        if ready != self.service_ready {
            self.service_ready = ready;
            self.run_core(now, VecDeque::from([Input::ServiceReady(ready)]), out);
        }
    }

    /// The filesystem is up while this node leads inside its lease, the
    /// volume serves and no drain is under way; on the way down it waits
    /// for the PBX to be gone.
    fn push_fs(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() {
            return;
        }
        let up = self.leads(now) && self.volume_serving && self.draining.is_none();
        let pbx_stopped =
            self.pbx.as_ref().is_none_or(|p| matches!(p.state(), PbxState::Stopped | PbxState::Backoff { .. }));
        let Some(fs) = self.fs.as_mut() else { return };
        let cmds = fs.want(now, up, pbx_stopped);
        if cmds.contains(&FsCommand::Notice(filesystem::FsNotice::DownHung)) {
            if let Some(w) = self.watchdog.as_mut() {
                w.self_fence(SelfFence::FilesystemWillNotGoDown);
            }
        }
        out.extend(cmds.into_iter().map(Command::Fs));
    }

    /// Leader inside a lease it holds.
    fn leads(&self, now: Instant) -> bool {
        self.node.role() == Role::Leader && self.node.lease_until(now).is_some()
    }

    /// Mount the volume's filesystem on this node while it is active, with
    /// `timing`; the VIP then waits for the mount. Returns the commands of
    /// telling the core (none expected at start).
    pub fn enable_filesystem(&mut self, now: Instant, timing: FsTiming) -> Vec<Command> {
        self.fs = Some(Filesystem::new(timing));
        let mut out = Vec::new();
        self.push_service_ready(now, &mut out);
        out
    }

    /// A switchover or standby waits for the service to go down here (or
    /// for the core to accept it once it is down).
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// The filesystem's state, on a node that mounts it (for status).
    pub fn filesystem(&self) -> Option<&Filesystem> {
        self.fs.as_ref()
    }

    /// An operator asks to create the volume's filesystem (cluster
    /// creation): granted only on the active node whose check found none.
    pub fn format_volume(&mut self, now: Instant) -> Result<Vec<Command>, filesystem::FormatRefused> {
        let fs = self.fs.as_mut().ok_or(filesystem::FormatRefused::NotFoundEmpty)?;
        fs.format()?;
        let mut out = Vec::new();
        self.push_fs(now, &mut out);
        Ok(out)
    }

    /// Every handled event is the loop's progress, and the PBX's
    /// supervision's (it runs in here); a PBX that will not stop is a
    /// self-fence; a pet when due.
    fn push_watchdog(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(w) = self.watchdog.as_mut() else { return };
        w.progressed(Critical::EventLoop, now);
        w.progressed(Critical::PbxSupervision, now);
        let hung = out.iter().any(|c| matches!(c, Command::Pbx(PbxCommand::Notice(pbx::PbxNotice::StopHung { .. }))));
        if hung {
            w.self_fence(SelfFence::PbxWillNotStop);
        }
        if w.pet_due(now) {
            out.push(Command::PetWatchdog);
        }
    }

    /// Decide the watchdog's pets with `timing`, requiring progress of the
    /// volume thread too if `volume_thread` (a node with a volume).
    pub fn enable_watchdog(&mut self, timing: WatchdogTiming, volume_thread: bool) {
        let mut parts = vec![Critical::EventLoop];
        if volume_thread {
            parts.push(Critical::VolumeThread);
        }
        if self.pbx.is_some() {
            parts.push(Critical::PbxSupervision);
        }
        self.watchdog = Some(Watchdog::new(timing, &parts));
    }

    /// The watchdog's decisions, on a node with one (for status).
    pub fn watchdog(&self) -> Option<&Watchdog> {
        self.watchdog.as_ref()
    }

    /// The PBX runs while this node leads inside its lease, and its timers
    /// run. Last in every event's commands: on a lease loss the VIP and the
    /// volume's view go out first, whatever the PBX is doing.
    fn push_pbx(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() {
            return;
        }
        let leads = self.leads(now) && self.draining.is_none() && self.fs.as_ref().is_none_or(Filesystem::mounted);
        let Some(p) = self.pbx.as_mut() else { return };
        out.extend(p.want(now, leads).into_iter().map(Command::Pbx));
        if p.next_deadline().is_some_and(|d| now >= d) {
            out.extend(p.tick(now).into_iter().map(Command::Pbx));
        }
    }

    /// Supervise a PBX with `timing` (already validated) on this node.
    pub fn enable_pbx(&mut self, timing: PbxTiming) {
        self.pbx = Some(Pbx::new(timing));
    }

    /// The PBX's supervision, if this node runs one (for status).
    pub fn pbx(&self) -> Option<&Pbx> {
        self.pbx.as_ref()
    }

    /// The fence operation due now, if any (module `fence`).
    fn push_fence(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.handover.is_some() {
            return;
        }
        let wants = matches!(self.node.vip_phase(), VipPhase::Claiming | VipPhase::Held);
        if let Some(op) = self.fence.next(now, wants, self.node.lease_until(now)) {
            out.push(Command::Fence(op));
        }
    }

    /// A fitness change becomes the core's `Electable` (and a notice).
    fn fit(&mut self, changed: Option<bool>, out: &mut Vec<Command>) -> Option<Input> {
        let fit = changed?;
        out.push(Command::Notice(HostNotice::Fitness { fit, sync_stalled: self.fitness.sync_stalled() }));
        Some(Input::Electable(fit))
    }

    /// Feeds inputs to the core and turns its outputs into commands, until
    /// a handover must wait.
    fn run_core(&mut self, now: Instant, inputs: VecDeque<Input>, out: &mut Vec<Command>) {
        for input in inputs {
            let outputs: VecDeque<Output> = self.node.handle(now, input).into();
            self.outputs(now, outputs, out);
            if self.handover.is_some() {
                return;
            }
        }
    }

    fn outputs(&mut self, now: Instant, mut outputs: VecDeque<Output>, out: &mut Vec<Command>) {
        while let Some(o) = outputs.pop_front() {
            match o {
                Output::Persist(hard) => out.push(Command::Persist(hard)),
                Output::Send { to, msg } if self.volume && matches!(msg.body, Body::TimeoutNow) => {
                    // Rule 17: the volume first, then the message.
                    let view = self.view(now);
                    self.view_given = Some(view);
                    out.push(Command::ConfirmStepDown(view));
                    self.handover = Some(Handover { to, msg, rest: outputs, events: VecDeque::new() });
                    return;
                }
                Output::Send { to, msg } => out.push(Command::Send { to, msg }),
                Output::Vip(action) => out.push(Command::Vip { action, lease_until: self.node.lease_until(now) }),
                Output::Notice(n) => out.push(Command::Notice(HostNotice::Core(n))),
            }
        }
    }

    /// The volume answered: send the TimeoutNow (or drop it), then carry
    /// on with what waited.
    fn end_handover(&mut self, now: Instant, confirmed: bool, out: &mut Vec<Command>) {
        let Some(h) = self.handover.take() else { return };
        if confirmed {
            out.push(Command::Send { to: h.to, msg: h.msg });
        } else {
            out.push(Command::Notice(HostNotice::HandoverWithoutTimeoutNow { to: h.to }));
        }
        self.outputs(now, h.rest, out);
        let mut events = h.events;
        if self.handover.is_none() {
            self.follow_up(now, out);
        }
        while let Some(e) = events.pop_front() {
            if let Some(h) = self.handover.as_mut() {
                h.events.push_back(e);
                continue;
            }
            self.event(now, e, out);
        }
    }

    /// What the volume must know of leadership now.
    fn view(&self, now: Instant) -> View {
        let leader = if self.node.role() == Role::Leader { Some(self.id) } else { self.node.status(now).leader };
        View { epoch: self.node.epoch(), leader, lease_until: self.node.lease_until(now) }
    }

    /// Hands the volume the core's view when it changed.
    fn push_view(&mut self, now: Instant, out: &mut Vec<Command>) {
        if !self.volume || self.handover.is_some() {
            return;
        }
        let view = self.view(now);
        if self.view_given != Some(view) {
            self.view_given = Some(view);
            out.push(Command::VolumeView(view));
        }
    }

    /// The lease a VIP action tagged with `tagged` may use when it is
    /// carried out at `now`: the one it was decided under, and only while
    /// the core still holds a lease (a step-down decided in between, from
    /// a completion fed back, ends it at once).
    pub fn vip_lease(&self, tagged: Option<Instant>, now: Instant) -> Option<Instant> {
        tagged.min(self.node.lease_until(now))
    }

    /// The earliest instant at which [`Event::Tick`] has work.
    pub fn next_deadline(&self) -> Instant {
        let core = self.node.next_deadline();
        let fence = self.fence.next_due(self.lease_end()).map_or(core, |due| core.min(due));
        let pbx = self.pbx.as_ref().and_then(Pbx::next_deadline).map_or(fence, |due| fence.min(due));
        let pbx = self.fs.as_ref().and_then(Filesystem::next_deadline).map_or(pbx, |due| pbx.min(due));
        let pbx = self.drain_until.map_or(pbx, |due| pbx.min(due));
        let pbx = self.pbx_hand_over_next.map_or(pbx, |due| pbx.min(due));
        self.watchdog.as_ref().and_then(Watchdog::next_pet).map_or(pbx, |due| pbx.min(due))
    }

    /// The end of the lease the core holds or held last (the fence's
    /// refresh deadline is computed from it; a lease that ended has no
    /// element left to refresh, so validity does not matter here).
    fn lease_end(&self) -> Option<Instant> {
        self.node.lease_until(Instant::ZERO)
    }

    /// The fence as the host knows it (for status).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// A snapshot for status.
    pub fn status(&self, now: Instant) -> Status {
        self.node.status(now)
    }

    /// The core (read-only: status, role, lease).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A handover waits for the volume's confirmation.
    pub fn handing_over(&self) -> bool {
        self.handover.is_some()
    }
}

/// The admin request was refused: the reason, from the commands.
pub fn admin_refusal(commands: &[Command]) -> Option<String> {
    commands.iter().find_map(|c| match c {
        Command::Notice(HostNotice::Core(Notice::AdminRefused { reason })) => Some(reason.clone()),
        _ => None,
    })
}

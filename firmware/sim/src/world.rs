//! The simulated world: three hosts, a network, a chaos process, and one
//! event queue ordered by (real time, sequence) so every run is a pure
//! function of its seed.
//!
//! Each host runs the supervisor's own host state machine (`triad-host`,
//! the code `firmware/triad/src/runtime.rs` carries out) under a model of
//! the runtime's executor, because the guarantees depend on how commands
//! are carried out:
//! - commands run one at a time, in order; a `Persist` is durable when it
//!   is reached and takes a little fsync time, a VIP action takes netlink
//!   time and its `VipDone` is fed back at once, its commands queued
//!   *behind* the rest of the batch (as `queue.extend` does there); a VIP
//!   action goes out only while `triad_host::vip_allowed` holds for the
//!   lease `Host::vip_lease` gives it, and an Add or Renew that completes
//!   after that lease is undone at once (`os/vip.rs` `apply_in_lease`);
//! - between batches, a due timer wins over queued messages (`biased;`);
//! - a process kill can land anywhere in a batch (and is aimed right after
//!   a `Persist` in crash storms); a restart removes any leftover VIP first;
//! - a frozen (SIGSTOPped) process does nothing, while its host's clock,
//!   its kernel's VIP lifetime and its socket buffers carry on.
//!
//! The VIP on an interface is modelled conservatively: an Add or Renew takes
//! effect at a random point while the netlink call is in flight (a Renew of
//! an expired address re-creates it, as NLM_F_REPLACE does), a Remove at a
//! random point before it completes, and the kernel drops the address
//! `vip_lifetime` (host clock) plus up to `kernel_expiry_slack` after the
//! last Add/Renew took effect.

use crate::clock::{Clock, Rng};
use crate::invariants::{Check, Checker, Violation};
use crate::net::Net;
use crate::scenario::{Mutation, Scenario};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use triad_core::{
    AdminRequest, Body, HardState, Instant, Message, NodeId, Notice, Position, Role, Setup, VipAction, VipPhase,
};
use triad_host::fence::{grant_ttl, ARM_TTL};
use triad_host::{vip_allowed, Command, Event, FenceOp, FenceResult, Host as HostMachine, HostNotice, VipResult};

/// Trace lines kept for a failure report.
const TRACE_TAIL: usize = 80;
/// How long the run continues after recovery, to see that it is stable.
const AFTER_RECOVERY: u64 = 1_000_000;
/// The longest silence of the VIP after recovery that is not an outage, µs.
const SILENCE_GRACE: u64 = 20_000;

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: &'static str,
    /// Events processed.
    pub events: u64,
    /// Leaderships after the first.
    pub failovers: usize,
    /// Time from healing to a leader with lease and VIP, µs.
    pub recovery: Option<u64>,
    /// Longest time two interfaces held the VIP address at once (a frozen
    /// or killed holder keeps it until its kernel lifetime, but its fence
    /// silences it), µs.
    pub vip_overlap: u64,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// Violations of tolerated checks (known bugs), first of each.
    pub tolerated: Vec<Violation>,
    /// The last events before the end (or the violation).
    pub trace_tail: Vec<String>,
}

#[derive(Clone, Debug)]
enum Ev {
    /// Timer: the node's next deadline may have come.
    Wake {
        node: NodeId,
        inc: u64,
    },
    /// A `Persist` finished its fsync.
    Synced {
        node: NodeId,
        inc: u64,
    },
    /// A message arrives.
    Deliver {
        to: NodeId,
        msg: Message,
    },
    /// The kernel applies a VIP change (the process may be gone by now).
    VipEffect {
        node: NodeId,
        inc: u64,
        action: VipAction,
        ok: bool,
        legit: bool,
    },
    /// The netlink call returns to the process.
    VipDone {
        node: NodeId,
        inc: u64,
        action: VipAction,
        ok: bool,
    },
    /// The removal that undid a late Add or Renew returns: the host hears
    /// the action as refused.
    VipUndone {
        node: NodeId,
        inc: u64,
        action: VipAction,
    },
    /// The kernel lifetime of the VIP may have run out.
    Expire {
        node: NodeId,
        gen: u64,
    },
    /// A grant's arming reaches the kernel; the process then reads its
    /// clock and sends the grant batch.
    FenceArm {
        node: NodeId,
        inc: u64,
        deadline: Instant,
    },
    /// A fence operation reaches the kernel and returns to the process.
    Fence {
        node: NodeId,
        inc: u64,
        op: FenceOp,
        /// The element's timeout (Grant: computed before the call).
        ttl: core::time::Duration,
    },
    Chaos,
    Restart {
        node: NodeId,
    },
    Thaw {
        node: NodeId,
    },
    HealLinks,
    /// End of the fault phase.
    Heal,
    /// Liveness deadline or end of the run.
    End,
}

#[derive(Debug)]
struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A running supervisor process.
#[derive(Debug)]
struct Proc {
    host: HostMachine,
    inc: u64,
    /// Commands not yet carried out.
    queue: VecDeque<Command>,
    /// Waiting on an fsync or a netlink call.
    busy: bool,
    /// A netlink call returned; fed to the host when the process runs.
    done: Option<(VipAction, VipResult)>,
    /// A fence call returned; fed to the host when the process runs.
    fence_done: Option<(FenceOp, FenceResult)>,
    /// Events waiting (socket buffers, operator requests).
    inbox: VecDeque<Event>,
    wake_at: u64,
    /// Set while the core's deadline stays in the past after a Tick: the
    /// sim then ticks once a millisecond instead of spinning forever.
    spin: Option<Instant>,
    /// Highest epoch seen in RAM in this incarnation.
    ram_epoch: u64,
    /// The lease the VIP action in flight was carried out under.
    vip_lease: Option<Instant>,
}

#[derive(Debug)]
struct Host {
    id: NodeId,
    clock: Clock,
    disk: HardState,
    proc: Option<Proc>,
    frozen: bool,
    vip_on: bool,
    /// On the interface, but not by the will of a running, unfrozen process.
    vip_orphan: bool,
    vip_gen: u64,
    /// The kernel fence's element: when it expires (real time), if there
    /// is one. The node answers for the VIP only while it has the address
    /// and a live element.
    fence_end: Option<u64>,
    /// The arming element's expiry (real time), if any.
    arm_end: Option<u64>,
}

impl Host {
    /// Answers ARP and IP for the VIP at `now`: the address is on the
    /// interface and the fence lets it through.
    fn answers(&self, now: u64) -> bool {
        self.vip_on && self.fence_end.is_some_and(|end| now < end)
    }
}

/// One simulation run.
pub struct World {
    sc: Scenario,
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Item>,
    hosts: Vec<Host>,
    net: Net,
    checker: Checker,
    next_inc: u64,
    events: u64,
    heal_at: Option<u64>,
    recovered: Option<u64>,
    /// Since when no node has answered for the VIP after recovery.
    down_since: Option<u64>,
    overlap_since: Option<u64>,
    vip_overlap: u64,
    trace: VecDeque<String>,
    print_trace: bool,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("scenario", &self.sc.name)
            .field("now", &self.now)
            .finish()
    }
}

fn peers_of(id: NodeId) -> [NodeId; 2] {
    match id {
        1 => [2, 3],
        2 => [1, 3],
        _ => [1, 2],
    }
}

impl World {
    /// A fresh cluster for `seed` under `sc`; `print_trace` echoes every event.
    pub fn new(seed: u64, sc: Scenario, print_trace: bool) -> World {
        let mut rng = Rng::new(seed);
        let bound = sc.clock_ppm_bound();
        let hosts = (1..=3u8)
            .map(|id| {
                // Half the hosts sit at the drift bound: the lease argument's worst case.
                let ppm = if sc.extreme_drift || rng.chance(0.5) {
                    if rng.chance(0.5) {
                        bound
                    } else {
                        -bound
                    }
                } else {
                    rng.range(0, 2 * bound as u64) as i64 - bound
                };
                let clock = Clock::new(ppm, 0, rng.range(1_000_000, 50_000_000));
                Host {
                    id,
                    clock,
                    disk: HardState::default(),
                    proc: None,
                    frozen: false,
                    vip_on: false,
                    fence_end: None,
                    arm_end: None,
                    vip_orphan: false,
                    vip_gen: 0,
                }
            })
            .collect();
        let net = Net::new(sc.net.clone());
        let checker = Checker::new(sc.tolerate.clone());
        let mut w = World {
            sc,
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            net,
            checker,
            next_inc: 0,
            events: 0,
            heal_at: None,
            recovered: None,
            down_since: None,
            overlap_since: None,
            vip_overlap: 0,
            trace: VecDeque::new(),
            print_trace,
        };
        for id in 1..=3u8 {
            // Staggered boots, as after a power cut of the whole rack.
            let at = w.rng.range(0, 300_000);
            w.push(at, Ev::Restart { node: id });
        }
        w.push(w.sc.chaos_every, Ev::Chaos);
        w.push(w.sc.fault_phase, Ev::Heal);
        w
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item { at, seq: self.seq, ev });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        let s = format!("{:>10.6}s {}", self.now as f64 / 1e6, line());
        if self.print_trace {
            println!("{s}");
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(s);
    }

    /// Runs to the end or the first violation.
    pub fn run(mut self) -> Outcome {
        let violation = loop {
            let Some(item) = self.queue.pop() else { break None };
            self.now = item.at;
            self.events += 1;
            if let Ev::End = item.ev {
                break self.end();
            }
            let r = self.step(item.ev).and_then(|()| self.check_world());
            if let Err(v) = r {
                break Some(v);
            }
        };
        if let Some(v) = &violation {
            let msg = v.to_string();
            self.note(|| format!("VIOLATION {msg}"));
        }
        Outcome {
            seed: self.seed,
            scenario: self.sc.name,
            events: self.events,
            failovers: self.checker.leaderships().saturating_sub(1),
            recovery: self.recovered,
            vip_overlap: self.vip_overlap,
            violation,
            tolerated: std::mem::take(&mut self.checker.tolerated),
            trace_tail: self.trace.into_iter().collect(),
        }
    }

    fn end(&mut self) -> Option<Violation> {
        if self.recovered.is_some() {
            return None;
        }
        let heal = self.heal_at.unwrap_or(0);
        let detail = format!(
            "no leader with lease and VIP {} ms after healing; roles: {}",
            (self.now - heal) / 1000,
            self.describe()
        );
        self.checker.fail(Check::Liveness, self.now, detail).err()
    }

    fn describe(&self) -> String {
        let mut s = Vec::new();
        for h in &self.hosts {
            let local = h.clock.local(self.now);
            s.push(match &h.proc {
                None => format!("{}:down", h.id),
                Some(p) => format!(
                    "{}:{:?}@{} lease={} vip={:?}{}",
                    h.id,
                    p.host.node().role(),
                    p.host.node().epoch(),
                    p.host.node().lease_until(local).is_some(),
                    p.host.node().vip_phase(),
                    if h.frozen { " frozen" } else { "" }
                ),
            });
        }
        s.join(", ")
    }

    fn idx(id: NodeId) -> usize {
        usize::from(id) - 1
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Wake { node, inc } | Ev::Synced { node, inc } => {
                let synced = matches!(ev, Ev::Synced { .. });
                if let Some(p) = self.hosts[Self::idx(node)].proc.as_mut().filter(|p| p.inc == inc) {
                    if synced {
                        p.busy = false;
                    }
                    self.pump(node)?;
                }
            }
            Ev::Deliver { to, msg } => {
                if let Some(p) = self.hosts[Self::idx(to)].proc.as_mut() {
                    p.inbox.push_back(Event::Peer(msg));
                    self.pump(to)?;
                }
            }
            Ev::VipEffect { node, inc, action, ok, legit } => self.vip_effect(node, inc, action, ok, legit),
            Ev::VipDone { node, inc, action, ok } => self.vip_done(node, inc, action, ok)?,
            Ev::VipUndone { node, inc, action } => {
                if let Some(p) = self.hosts[Self::idx(node)].proc.as_mut().filter(|p| p.inc == inc) {
                    p.done = Some((action, VipResult::LeaseEnded));
                    self.pump(node)?;
                }
            }
            Ev::Expire { node, gen } => {
                let h = &mut self.hosts[Self::idx(node)];
                if h.vip_gen == gen && h.vip_on {
                    h.vip_on = false;
                    h.vip_orphan = false;
                    self.note(|| format!("n{node} kernel expired the VIP"));
                }
            }
            Ev::Fence { node, inc, op, ttl } => self.fence_effect(node, inc, op, ttl)?,
            Ev::FenceArm { node, inc, deadline } => self.fence_arm(node, inc, deadline)?,
            Ev::Chaos => self.chaos()?,
            Ev::Restart { node } => self.restart(node)?,
            Ev::Thaw { node } => self.thaw(node)?,
            Ev::HealLinks => {
                self.net.heal();
                self.note(|| "links healed".into());
            }
            Ev::Heal => {
                self.heal_at = Some(self.now);
                self.net.heal();
                self.note(|| "HEAL: links healed, all nodes thawed and up".into());
                for id in 1..=3 {
                    self.thaw(id)?;
                    self.restart(id)?;
                }
                let end = self.now + self.sc.liveness_bound;
                self.push(end, Ev::End);
            }
            Ev::End => {}
        }
        Ok(())
    }

    /// Carries the process of `id` forward as far as it can go now.
    fn pump(&mut self, id: NodeId) -> Result<(), Violation> {
        let i = Self::idx(id);
        loop {
            let now = self.now;
            let h = &mut self.hosts[i];
            if h.frozen {
                return Ok(());
            }
            let local = h.clock.local(now);
            let Some(p) = h.proc.as_mut() else { return Ok(()) };
            if let Some((action, result)) = p.done.take() {
                p.busy = false;
                self.handle(id, local, Event::VipDone { action, result })?;
                continue;
            }
            if let Some((op, result)) = p.fence_done.take() {
                p.busy = false;
                self.handle(id, local, Event::FenceDone { op, result, at: local })?;
                continue;
            }
            if p.busy {
                return Ok(());
            }
            if let Some(o) = p.queue.pop_front() {
                self.carry(id, o)?;
                continue;
            }
            let deadline = p.host.next_deadline();
            let spin_gap = if self.sc.faithful_spin { 10 } else { 1000 };
            let due = match p.spin {
                Some(last) => local.0 >= last.0 + spin_gap,
                None => local >= deadline,
            };
            let starved = self.sc.faithful_spin && p.spin.is_some();
            let input = if due {
                Event::Tick
            } else if let Some(input) = p.inbox.pop_front().filter(|_| !starved) {
                input
            } else {
                let wake_local = p.spin.map_or(deadline, |last| Instant(last.0 + spin_gap));
                let at = h.clock.real_of(wake_local).max(now);
                if p.wake_at != at || at == now {
                    p.wake_at = at;
                    let inc = p.inc;
                    self.push(at, Ev::Wake { node: id, inc });
                }
                return Ok(());
            };
            self.handle(id, local, input)?;
        }
    }

    /// Feeds one event to the host of `id` and checks what follows from it.
    fn handle(&mut self, id: NodeId, local: Instant, input: Event) -> Result<(), Violation> {
        let i = Self::idx(id);
        let now = self.now;
        let is_tick = input == Event::Tick;
        // Mutation: node 1's runtime acks heartbeats behind its core's back.
        let mut extra_ack = None;
        let input = match input {
            Event::Peer(Message { from, epoch, body: Body::Heartbeat { round } })
                if self.sc.has(Mutation::AckWithoutStickiness) && id == 1 =>
            {
                let p = self.hosts[i].proc.as_ref().expect("pumped process exists");
                if epoch >= p.host.node().epoch() {
                    extra_ack = Some(Command::Send {
                        to: from,
                        msg: Message { from: id, epoch, body: Body::HeartbeatAck { round } },
                    });
                }
                Event::Peer(Message {
                    from,
                    epoch,
                    body: Body::Ping { position: Position::default(), standby: false, ready: true },
                })
            }
            other => other,
        };
        if self.print_trace || !matches!(input, Event::Tick) {
            let s = format!("n{id} <- {input:?}");
            self.note(|| s);
        }
        let h = &mut self.hosts[i];
        let p = h.proc.as_mut().expect("pumped process exists");
        let mut outs = p.host.handle(local, input);
        outs.extend(extra_ack);
        if self.sc.has(Mutation::SendBeforePersist) {
            // Stable: persists move to the end of the batch.
            let (persist, rest): (Vec<_>, Vec<_>) = outs.into_iter().partition(|o| matches!(o, Command::Persist(_)));
            outs = rest.into_iter().chain(persist).collect();
        }
        let epoch = p.host.node().epoch();
        let ram_before = p.ram_epoch;
        p.ram_epoch = epoch.max(ram_before);
        let role = p.host.node().role();
        let lease = p.host.node().lease_until(local);
        let phase = p.host.node().vip_phase();
        let deadline = p.host.next_deadline();
        if is_tick {
            p.spin = (deadline <= local).then_some(local);
        }
        let lease_real = lease.map(|u| h.clock.real_of(u));
        p.queue.extend(outs.iter().cloned());
        for o in &outs {
            if let Command::Notice(HostNotice::Core(Notice::RoleChanged { role: Role::Leader, epoch })) = o {
                self.checker.leader(now, id, *epoch)?;
            }
        }
        if epoch < ram_before {
            self.checker.fail(
                Check::EpochMonotonic,
                now,
                format!("node {id} went from epoch {ram_before} to {epoch}"),
            )?;
        }
        // The core decides VIP actions other than Remove only as a leader
        // inside its lease (checked when decided; the runtime re-checks when
        // it carries them out, see `carry`).
        if let Some(action) = outs.iter().find_map(|o| match o {
            Command::Vip { action, .. } if *action != VipAction::Remove => Some(*action),
            _ => None,
        }) {
            if role != Role::Leader || lease.is_none() {
                self.checker.fail(
                    Check::VipActionNeedsLease,
                    now,
                    format!("node {id} decided VIP {action:?} as {role:?} without a valid lease"),
                )?;
            }
        }
        if phase == VipPhase::Held && (role != Role::Leader || lease.is_none()) {
            self.checker.fail(
                Check::HeldNeedsLease,
                now,
                format!("node {id} holds the VIP as {role:?} with lease {lease:?} at local {local:?}"),
            )?;
        }
        if is_tick && deadline <= local {
            self.checker.fail(
                Check::Progress,
                now,
                format!("node {id} ({role:?}, epoch {epoch}): after a Tick at {local:?} next_deadline() is {deadline:?}; the runtime would spin"),
            )?;
        }
        self.checker.lease(now, id, lease_real)?;
        self.check_lease_backed(id, lease_real)
    }

    /// `LeaseBacked`: while `id` holds a lease until `end` (real time), some
    /// other node is down (a restart brings a quiet period longer than any
    /// lease) or refuses votes until at least `end`.
    fn check_lease_backed(&mut self, id: NodeId, end: Option<u64>) -> Result<(), Violation> {
        let Some(end) = end.filter(|e| *e > self.now) else { return Ok(()) };
        let mut why = Vec::new();
        for h in self.hosts.iter().filter(|h| h.id != id) {
            let Some(p) = h.proc.as_ref() else { return Ok(()) };
            let local = h.clock.local(self.now);
            match p.host.node().refuses_votes_until(local) {
                Some(u) if u.0 == u64::MAX || h.clock.real_of(u) >= end => return Ok(()),
                Some(u) => why.push(format!("node {} refuses votes only until t={}µs", h.id, h.clock.real_of(u))),
                None => why.push(format!("node {} would vote now", h.id)),
            }
        }
        self.checker.fail(
            Check::LeaseBacked,
            self.now,
            format!("node {id} holds a lease until t={end}µs, but {}", why.join(" and ")),
        )
    }

    /// Carries out one command the way the runtime does.
    fn carry(&mut self, id: NodeId, o: Command) -> Result<(), Violation> {
        let i = Self::idx(id);
        let now = self.now;
        match o {
            Command::Persist(hard) => {
                // Kills aimed at the persist: half land just before it (the
                // rest of the batch, and this write, lost), half just after.
                let aimed = self.now < self.sc.fault_phase && self.rng.chance(self.sc.crash_at_persist_p);
                if aimed && self.rng.chance(0.5) {
                    self.note(|| format!("n{id} killed right before persisting {hard:?}"));
                    return self.crash(id);
                }
                if !self.sc.has(Mutation::ForgetPersist) {
                    let prev = self.hosts[i].disk.epoch;
                    self.hosts[i].disk = hard;
                    if hard.epoch < prev {
                        self.checker.fail(
                            Check::EpochMonotonic,
                            now,
                            format!("node {id} persisted epoch {} over {prev}", hard.epoch),
                        )?;
                    }
                }
                if aimed {
                    self.note(|| format!("n{id} killed right after persisting {hard:?}"));
                    return self.crash(id);
                }
                let d = self.rng.range(20, 500);
                let p = self.hosts[i].proc.as_mut().expect("carrying process exists");
                p.busy = true;
                let inc = p.inc;
                self.push(now + d, Ev::Synced { node: id, inc });
            }
            Command::Send { to, msg } => {
                let disk = self.hosts[i].disk;
                match msg.body {
                    Body::PreVote { .. } | Body::PreVoteReply { .. } => {}
                    _ => self.checker.wire(now, id, msg.epoch, disk)?,
                }
                if msg.body == Body::TimeoutNow && self.hosts[i].vip_on {
                    self.checker.fail(
                        Check::HandoverOrder,
                        now,
                        format!("node {id} sends TimeoutNow to node {to} while the VIP is still on its interface"),
                    )?;
                }
                if let Body::VoteReply { granted: true } = msg.body {
                    self.checker.vote(now, id, to, msg.epoch, disk)?;
                }
                for d in self.net.plan(&mut self.rng, id, to) {
                    self.push(now + d, Ev::Deliver { to, msg: msg.clone() });
                }
            }
            Command::Vip { action, lease_until } => {
                let h = &self.hosts[i];
                let local = h.clock.local(now);
                let p = h.proc.as_ref().expect("carrying process exists");
                // The executor's check before the action (runtime.rs, os/vip.rs).
                let lease = p.host.vip_lease(lease_until, local);
                let legit = vip_allowed(action, lease, local) && action != VipAction::Remove;
                let inc = p.inc;
                let (role, phase) = (p.host.node().role(), p.host.node().vip_phase());
                self.note(|| format!("n{id} carries out VIP {action:?} (leader with lease: {legit})"));
                if action != VipAction::Remove && !legit {
                    // An action decided earlier in the batch, whose lease
                    // ended since, is refused; the host hears LeaseEnded.
                    self.note(|| format!("n{id} skips VIP {action:?}: lease ended ({role:?}, phase {phase:?})"));
                    self.hosts[i].proc.as_mut().expect("carrying process exists").done =
                        Some((action, VipResult::LeaseEnded));
                    return Ok(());
                }
                self.hosts[i].proc.as_mut().expect("carrying process exists").vip_lease = lease;
                // Netlink usually answers within a few ms; sometimes it is
                // slow, but within the lease guard the timing assumes.
                let d = if self.rng.chance(0.05) { self.rng.range(5_000, 25_000) } else { self.rng.range(200, 5_000) };
                let ok = !self.rng.chance(self.sc.vip_fail_p);
                let skip = action == VipAction::Remove && self.sc.has(Mutation::SkipVipRemove);
                if action != VipAction::Announce && !skip {
                    let at = now + self.rng.range(0, d);
                    self.push(at, Ev::VipEffect { node: id, inc, action, ok, legit });
                }
                self.hosts[i].proc.as_mut().expect("carrying process exists").busy = true;
                self.push(now + d, Ev::VipDone { node: id, inc, action, ok: ok || skip });
            }
            Command::Notice(n) => {
                if !matches!(n, HostNotice::Core(Notice::VipFailed { .. })) {
                    self.note(|| format!("n{id} notice {n:?}"));
                }
            }
            Command::Fence(op) => {
                let local = self.hosts[i].clock.local(now);
                let p = self.hosts[i].proc.as_mut().expect("carrying process exists");
                let inc = p.inc;
                // As runtime.rs: a grant arms first (its timeout is read
                // after the arming); refresh and revoke are one call.
                let ttl = match op {
                    FenceOp::Grant { deadline } if grant_ttl(deadline, local).is_none() => {
                        p.fence_done = Some((op, FenceResult::LeaseEnded));
                        return Ok(());
                    }
                    FenceOp::Grant { deadline } => {
                        p.busy = true;
                        let d = self.fence_call_delay(id);
                        self.note(|| format!("n{id} fence arming for a grant, reaches the kernel in {} ms", d / 1000));
                        self.push(now + d, Ev::FenceArm { node: id, inc, deadline });
                        return Ok(());
                    }
                    FenceOp::Refresh { ttl } => ttl,
                    FenceOp::Revoke => core::time::Duration::ZERO,
                };
                p.busy = true;
                let d = self.fence_call_delay(id);
                self.note(|| format!("n{id} fence {op:?}, reaches the kernel in {} ms", d / 1000));
                self.push(now + d, Ev::Fence { node: id, inc, op, ttl });
            }
            // The control world has no volume.
            Command::VolumeView(_) => {}
            // This world's hosts have no volume, so no filesystem, PBX or
            // watchdog is enabled here: the data world's service scenarios
            // run them (`data/service.rs`), where the volume says when it
            // serves.
            Command::Pbx(_) | Command::Fs(_) | Command::PetWatchdog => {}
            Command::ConfirmStepDown(_) => {
                self.hosts[i]
                    .proc
                    .as_mut()
                    .expect("carrying process exists")
                    .inbox
                    .push_front(Event::StepDownConfirmed(true));
            }
        }
        Ok(())
    }

    /// A netlink call returned. As `apply_in_lease` does: an Add or Renew
    /// that completed after its lease is undone at once (a Remove, taking
    /// netlink time of its own) and only then reported, as `LeaseEnded`.
    fn vip_done(&mut self, node: NodeId, inc: u64, action: VipAction, ok: bool) -> Result<(), Violation> {
        let i = Self::idx(node);
        let local = self.hosts[i].clock.local(self.now);
        let Some(p) = self.hosts[i].proc.as_mut().filter(|p| p.inc == inc) else { return Ok(()) };
        let late = matches!(action, VipAction::Add | VipAction::Renew) && !vip_allowed(action, p.vip_lease, local);
        if late {
            self.note(|| format!("n{node} VIP {action:?} completed after its lease: removed at once"));
            let d = self.rng.range(200, 5_000);
            let at = self.now + self.rng.range(0, d);
            self.push(at, Ev::VipEffect { node, inc, action: VipAction::Remove, ok: true, legit: true });
            self.push(self.now + d, Ev::VipUndone { node, inc, action });
            return Ok(());
        }
        p.done = Some((action, if ok { VipResult::Done } else { VipResult::Failed }));
        self.pump(node)
    }

    fn vip_effect(&mut self, id: NodeId, inc: u64, action: VipAction, ok: bool, legit: bool) {
        let i = Self::idx(id);
        let timing = &self.sc.timing;
        // A failed Add may have half-happened (v4 added, v6 refused).
        let applied = ok || (action == VipAction::Add && self.rng.chance(0.5));
        if !applied {
            // A Remove that failed leaves the VIP out of the process's
            // control until a retry or the kernel lifetime: like a frozen
            // holder, bounded overlap (see docs/simulator.md).
            let h = &mut self.hosts[i];
            if action == VipAction::Remove && h.vip_on {
                h.vip_orphan = true;
            }
            return;
        }
        let h = &mut self.hosts[i];
        match action {
            VipAction::Add | VipAction::Renew => {
                let life = h.clock.real_span(triad_core::time::duration_micros(timing.vip_lifetime));
                let slack = self.rng.range(0, triad_core::time::duration_micros(timing.kernel_expiry_slack));
                let h = &mut self.hosts[i];
                // Only a leader inside its lease, still running and not
                // frozen, makes the VIP its own; an action landing during a
                // freeze or after a kill, or a stale one, leaves it orphaned.
                let owner_runs = !h.frozen && h.proc.as_ref().is_some_and(|p| p.inc == inc);
                h.vip_orphan = if legit && owner_runs { false } else { h.vip_orphan || !h.vip_on };
                h.vip_on = true;
                h.vip_gen += 1;
                let gen = h.vip_gen;
                self.push(self.now + life + slack, Ev::Expire { node: id, gen });
            }
            VipAction::Remove => {
                h.vip_on = false;
                h.vip_orphan = false;
                h.vip_gen += 1;
            }
            VipAction::Announce => {}
        }
    }

    /// The checks over the whole world, after every event.
    fn check_world(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let on: Vec<&Host> = self.hosts.iter().filter(|h| h.vip_on).collect();
        if on.len() >= 2 {
            self.overlap_since.get_or_insert(now);
        } else if let Some(since) = self.overlap_since.take() {
            self.vip_overlap = self.vip_overlap.max(now - since);
        }
        // Invariant 1 as a client sees it: at most one node answers for
        // the VIP, whoever is frozen, killed or orphaned (issue 10: no
        // exemption; the kernel fence silences them).
        let answering: Vec<NodeId> = self.hosts.iter().filter(|h| h.answers(now)).map(|h| h.id).collect();
        if answering.len() >= 2 {
            let ids: Vec<NodeId> = on.iter().map(|h| h.id).collect();
            let detail =
                format!("nodes {answering:?} answer for the VIP at once (address on {ids:?}); {}", self.describe());
            self.checker.fail(Check::OneVip, now, detail)?;
        }
        if let Some(heal) = self.heal_at {
            let up = self.hosts.iter().any(|h| {
                let local = h.clock.local(now);
                h.answers(now)
                    && !h.frozen
                    && h.proc.as_ref().is_some_and(|p| {
                        p.host.node().role() == Role::Leader
                            && p.host.node().lease_until(local).is_some()
                            && p.host.node().vip_phase() == VipPhase::Held
                    })
            });
            match (self.recovered, up) {
                (None, true) => {
                    self.recovered = Some(now - heal);
                    self.push(now + AFTER_RECOVERY, Ev::End);
                }
                // Once recovered in a healed cluster, service must stay up
                // (unless the network itself stays bad after healing: 30%
                // loss, or a fifth of all messages held up for longer than
                // a lease, can legitimately starve a lease now and then).
                (Some(_), true) => self.down_since = None,
                // A silence shorter than SILENCE_GRACE is not an outage: a
                // leader's fence element ends a little before its lease, so
                // a lease renewed at its last instant leaves the VIP silent
                // for the time to grant again (a millisecond or two; SIP
                // retransmits after 500 ms).
                (Some(_), false) if now - *self.down_since.get_or_insert(now) < SILENCE_GRACE => {}
                (Some(r), false) if self.sc.net.drop < 0.1 && self.sc.net.long_p < 0.1 => {
                    let detail = format!(
                        "service recovered {} ms after healing, then went down again {} ms later: {}",
                        r / 1000,
                        (now - heal - r) / 1000,
                        self.describe()
                    );
                    self.checker.fail(Check::Liveness, now, detail)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The leader with the highest epoch among running processes.
    fn leader(&self) -> Option<NodeId> {
        self.hosts
            .iter()
            .filter_map(|h| {
                h.proc.as_ref().filter(|p| p.host.node().role() == Role::Leader).map(|p| (p.host.node().epoch(), h.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// A target for a fault: the leader half the time, else anyone.
    fn target(&mut self) -> NodeId {
        match self.leader() {
            Some(l) if self.rng.chance(0.5) => l,
            _ => self.rng.range(1, 3) as NodeId,
        }
    }

    fn chaos(&mut self) -> Result<(), Violation> {
        if self.now >= self.sc.fault_phase {
            return Ok(());
        }
        let next = self.now + self.sc.chaos_every;
        self.push(next, Ev::Chaos);
        if self.rng.chance(self.sc.crash_p) {
            let n = match self.leader() {
                // The follower that still hears the leader, and so is the
                // one whose stickiness the leader's lease rests on.
                Some(l) if self.sc.restart_race => {
                    let [a, b] = peers_of(l);
                    if self.net.is_cut(l, a) || (!self.net.is_cut(l, b) && self.rng.chance(0.5)) {
                        b
                    } else {
                        a
                    }
                }
                _ => self.target(),
            };
            if self.hosts[Self::idx(n)].proc.is_some() {
                self.note(|| format!("n{n} KILLED"));
                self.crash(n)?;
            }
        }
        if self.rng.chance(self.sc.freeze_p) {
            let n = self.target();
            let h = &mut self.hosts[Self::idx(n)];
            if h.proc.is_some() && !h.frozen {
                h.frozen = true;
                h.vip_orphan |= h.vip_on;
                // Short stalls and ones longer than the VIP's kernel lifetime.
                let d = self.rng.range(50_000, 3_000_000);
                self.note(|| format!("n{n} FROZEN for {} ms", d / 1000));
                self.push(self.now + d, Ev::Thaw { node: n });
            }
        }
        if self.rng.chance(self.sc.partition_p) {
            if self.net.partitioned() {
                // In the restart race the cut lasts until its scheduled heal.
                if !self.sc.restart_race {
                    self.net.heal();
                    self.note(|| "links healed".into());
                }
            } else if let (true, Some(l)) = (self.sc.restart_race, self.leader()) {
                let o = peers_of(l)[self.rng.range(0, 1) as usize];
                self.net.set_cut(l, o, true);
                self.note(|| format!("one-way cut n{l} -> n{o}"));
                let d = self.rng.range(200_000, 3_000_000);
                self.push(self.now + d, Ev::HealLinks);
            } else {
                let n = self.target();
                let o = if n == 3 { 1 } else { n + 1 };
                match self.rng.range(0, 2) {
                    0 => {
                        self.net.isolate(n);
                        self.note(|| format!("n{n} ISOLATED"));
                    }
                    1 => {
                        self.net.set_cut(n, o, true);
                        self.note(|| format!("one-way cut n{n} -> n{o}"));
                    }
                    _ => {
                        self.net.set_cut(o, n, true);
                        self.net.set_cut(n, o, true);
                        self.note(|| format!("link n{n} <-> n{o} cut"));
                    }
                }
                let d = self.rng.range(200_000, 3_000_000);
                self.push(self.now + d, Ev::HealLinks);
            }
        }
        if self.rng.chance(self.sc.switchover_p) {
            if let Some(l) = self.leader() {
                self.note(|| format!("operator asks n{l} to switch over"));
                let p = self.hosts[Self::idx(l)].proc.as_mut().expect("leader runs");
                p.inbox.push_back(Event::Admin(AdminRequest::Switchover { to: None }));
                self.pump(l)?;
            }
        }
        Ok(())
    }

    /// Kills the process of `id`: RAM, queue and inbox are gone; the disk
    /// and the interface stay. Restarts it later.
    fn crash(&mut self, id: NodeId) -> Result<(), Violation> {
        let h = &mut self.hosts[Self::idx(id)];
        h.proc = None;
        h.frozen = false;
        h.vip_orphan |= h.vip_on;
        let d = self.rng.range(self.sc.restart_delay.0, self.sc.restart_delay.1);
        self.push(self.now + d, Ev::Restart { node: id });
        // A dead process acts no more: its lease is moot (its VIP is not).
        self.checker.lease(self.now, id, None)
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let i = Self::idx(id);
        if self.hosts[i].proc.is_some() {
            return Ok(());
        }
        self.next_inc += 1;
        let inc = self.next_inc;
        let origin = self.rng.range(1_000_000, 50_000_000);
        let seed = self.rng.u64();
        let now = self.now;
        // The runtime removes any leftover VIP before it starts the core.
        if self.hosts[i].vip_on && !self.rng.chance(self.sc.vip_fail_p) {
            self.vip_effect(id, 0, VipAction::Remove, true, false);
        }
        let timing = self.sc.timing.clone();
        let quiet = triad_core::time::duration_micros(timing.election_timeout_max);
        let h = &mut self.hosts[i];
        h.clock.reorigin(now, origin);
        let mut start = h.clock.local(now);
        if self.sc.has(Mutation::NoQuietAfterStart) {
            start = Instant(start.0 - quiet);
        }
        let setup =
            Setup { id, peers: peers_of(id), timing, hard: h.disk, position: Position::default(), now: start, seed };
        let (host, start_cmds) = HostMachine::new(setup, None);
        let epoch = host.node().epoch();
        h.proc = Some(Proc {
            host,
            inc,
            queue: start_cmds.into(),
            busy: false,
            done: None,
            fence_done: None,
            inbox: VecDeque::new(),
            wake_at: 0,
            spin: None,
            ram_epoch: epoch,
            vip_lease: None,
        });
        // The runtime installs its fence before anything else: one batch
        // that replaces the table, element included.
        h.fence_end = None;
        h.arm_end = None;
        if let Some(p) = h.proc.as_mut() {
            p.inbox.push_front(Event::FenceInstalled(true));
        }
        let disk = h.disk;
        self.note(|| format!("n{id} STARTED (incarnation {inc}) from {disk:?}"));
        self.pump(id)
    }

    /// How long a fence call of `id` takes to reach the kernel. Netlink
    /// answers in well under a millisecond; now and then (in the fault
    /// phase) the process is frozen between its clock read and the call,
    /// as the lab's freeze-before-refresh hook does, and the call reaches
    /// the kernel when it is thawed.
    fn fence_call_delay(&mut self, id: NodeId) -> u64 {
        let now = self.now;
        // Only while the freeze ends inside the fault phase, a lease
        // before its end: like the chaos faults, it is over and its
        // consequences (a new election) settled when the heal comes.
        let settled_by = self.sc.fault_phase.saturating_sub(self.sc.fence_late_max + 1_000_000);
        if now < settled_by && self.rng.chance(self.sc.fence_late_p) {
            let d = self.rng.range(0, self.sc.fence_late_max);
            let h = &mut self.hosts[Self::idx(id)];
            h.frozen = true;
            h.vip_orphan |= h.vip_on;
            self.note(|| format!("n{id} FROZEN for {} ms right before a fence call", d / 1000));
            self.push(now + d, Ev::Thaw { node: id });
            d
        } else {
            self.rng.range(50, 1_000)
        }
    }

    /// A grant's arming reaches the kernel; the process, running again,
    /// reads its clock and sends the batch (or gives up: too little lease).
    fn fence_arm(&mut self, id: NodeId, inc: u64, deadline: Instant) -> Result<(), Violation> {
        let i = Self::idx(id);
        let now = self.now;
        let h = &mut self.hosts[i];
        if h.proc.as_ref().is_none_or(|p| p.inc != inc) {
            return Ok(());
        }
        h.arm_end = Some(now + h.clock.real_span(triad_core::time::duration_micros(ARM_TTL)));
        let local = h.clock.local(now);
        let op = FenceOp::Grant { deadline };
        match grant_ttl(deadline, local) {
            None => {
                let p = self.hosts[i].proc.as_mut().expect("checked above");
                p.fence_done = Some((op, FenceResult::LeaseEnded));
                p.busy = false;
                self.pump(id)
            }
            Some(ttl) => {
                let d = self.fence_call_delay(id);
                self.note(|| {
                    format!(
                        "n{id} fence {op:?} batch (ttl {} ms), reaches the kernel in {} ms",
                        ttl.as_millis(),
                        d / 1000
                    )
                });
                self.push(now + d, Ev::Fence { node: id, inc, op, ttl });
                Ok(())
            }
        }
    }

    /// A fence operation reaches the kernel: the element as the kernel
    /// keeps it (its clock runs at the node's rate), then the result goes
    /// back to the process if it is still the one that asked.
    fn fence_effect(&mut self, id: NodeId, inc: u64, op: FenceOp, ttl: core::time::Duration) -> Result<(), Violation> {
        let i = Self::idx(id);
        let now = self.now;
        let resurrect = self.sc.has(Mutation::FenceRefreshResurrects);
        let h = &mut self.hosts[i];
        // A process killed before the call never made it; a newer
        // incarnation reinstalled the table anyway.
        if h.proc.as_ref().is_none_or(|p| p.inc != inc) {
            return Ok(());
        }
        let alive = h.fence_end.is_some_and(|end| now < end);
        let armed = h.arm_end.is_some_and(|end| now < end) || self.sc.has(Mutation::FenceGrantUnarmed);
        let end = now + h.clock.real_span(triad_core::time::duration_micros(ttl));
        let result = match op {
            // One batch: delete the arming (absent: ENOENT, nothing done),
            // add the element exclusively.
            FenceOp::Grant { .. } if !armed => FenceResult::LeaseEnded,
            FenceOp::Grant { .. } if alive => FenceResult::Failed,
            FenceOp::Grant { .. } => {
                h.arm_end = None;
                h.fence_end = Some(end);
                FenceResult::Done { ttl }
            }
            // One batch, delete + add: fails as a whole without the element.
            FenceOp::Refresh { .. } if alive || resurrect => {
                h.fence_end = Some(end);
                FenceResult::Done { ttl }
            }
            FenceOp::Refresh { .. } => FenceResult::Expired,
            FenceOp::Revoke => {
                h.fence_end = None;
                FenceResult::Done { ttl }
            }
        };
        let fence_end = h.fence_end;
        self.note(|| format!("n{id} kernel fence {op:?}: {result:?}, element until {fence_end:?}"));
        let p = self.hosts[i].proc.as_mut().expect("checked above");
        p.fence_done = Some((op, result));
        self.pump(id)
    }

    fn thaw(&mut self, id: NodeId) -> Result<(), Violation> {
        let h = &mut self.hosts[Self::idx(id)];
        if !h.frozen {
            return Ok(());
        }
        h.frozen = false;
        self.note(|| format!("n{id} THAWED"));
        self.pump(id)
    }
}

/// Runs `seed` under `sc`.
pub fn run(seed: u64, sc: Scenario, print_trace: bool) -> Outcome {
    World::new(seed, sc, print_trace).run()
}

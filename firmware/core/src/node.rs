//! One Triad node's core: election, lease, liveness and VIP behind one
//! `handle(now, input) -> outputs` call.
//!
//! The node adds what no single state machine owns:
//! - heartbeats: the leader sends a lease round every interval, the others
//!   a ping (liveness and their data position);
//! - CheckQuorum: a leader whose lease ran out (or never came) steps down;
//! - whether the VIP is wanted: leader ∧ lease valid ∧ not handed over ∧
//!   (strict mode) the old leader's kernel lifetime waited out ∧ the
//!   service behind it ready (the filesystem mounted, when there is one);
//! - operator requests: switchover and standby.
//!
//! After every input it re-derives what the VIP should be, so a lease that
//! ends, a lost election and a handover all release the VIP the same way.

use crate::config::Timing;
use crate::election::{Election, Transition};
use crate::io::{AdminRequest, HardState, Input, Notice, Output, PeerStatus, Role, Status, VipAction, VipPhase};
use crate::lease::Lease;
use crate::liveness::Liveness;
use crate::message::{Body, Epoch, Message, NodeId, Position};
use crate::time::Instant;
use crate::vip::Vip;
use core::time::Duration;

/// Adds of the VIP that may fail in a row before the active node, unable
/// to serve, hands its role to a peer that may be able to.
const MAX_VIP_ADD_FAILURES: u32 = 3;

/// How long a VIP conflict stays in status after it was last seen.
const CONFLICT_SHOWN: Duration = Duration::from_secs(60);

/// The core of one node.
#[derive(Clone, Debug)]
pub struct Node {
    id: NodeId,
    peers: [NodeId; 2],
    timing: Timing,
    election: Election,
    liveness: Liveness,
    /// Present while this node leads.
    lease: Option<Lease>,
    elected_at: Option<Instant>,
    next_beat: Instant,
    vip: Vip,
    /// The last foreign MAC seen answering for the VIP, and when.
    vip_conflict: Option<([u8; 6], Instant)>,
    /// A switchover waiting for the VIP to be off this node: TimeoutNow goes
    /// to this node, for this epoch, once the Remove has succeeded.
    handover: Option<(NodeId, Epoch)>,
    /// [`Input::ServiceReady`]: the service behind the VIP is up here.
    service_ready: bool,
    /// This node's failover readiness ([`Input::TakeoverReady`]), told in every Ping.
    ready: bool,
    /// The instant of the last input; deadlines already passed are not
    /// deadlines any more.
    now: Instant,
}

/// Everything one start of a node begins from.
#[derive(Clone, Debug)]
pub struct Setup {
    /// This node.
    pub id: NodeId,
    /// The two other members.
    pub peers: [NodeId; 2],
    /// The intervals it decides with.
    pub timing: Timing,
    /// What it persisted before this start.
    pub hard: HardState,
    /// Its data position.
    pub position: Position,
    /// The instant of the start.
    pub now: Instant,
    /// Spreads its election timeouts; give each node, and each start, its own.
    pub seed: u64,
}

impl Node {
    /// A node starting from `setup`.
    pub fn new(setup: Setup) -> Node {
        let (id, peers, now) = (setup.id, setup.peers, setup.now);
        Node {
            id,
            peers,
            liveness: Liveness::new(peers, setup.timing.peer_timeout),
            timing: setup.timing.clone(),
            election: Election::new(setup),
            lease: None,
            elected_at: None,
            next_beat: now,
            vip: Vip::default(),
            vip_conflict: None,
            handover: None,
            service_ready: true,
            ready: true,
            now,
        }
    }

    /// Applies one input at `now`; the outputs must be carried out in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.now = self.now.max(now);
        match input {
            Input::Tick => {
                let t = self.election.tick(now, &mut out);
                self.on_transition(now, t);
            }
            Input::Receive(msg) => self.receive(now, &msg, &mut out),
            Input::VipDone { action, ok } => self.vip.done(now, action, ok, &self.timing, &mut out),
            // Another host speaking for the VIP matters only while this node
            // holds or claims it; followers hear the legitimate leader's
            // announcements all the time.
            Input::VipConflict { mac } if matches!(self.vip.phase(), VipPhase::Held | VipPhase::Claiming) => {
                self.vip_conflict = Some((mac, now));
                out.push(Output::Notice(Notice::VipConflict { mac }));
                // Pull clients back: a stale announcement from another node
                // may have moved them.
                self.vip.reannounce(now, &self.timing);
            }
            Input::VipConflict { .. } => {}
            Input::PositionChanged(p) => self.election.set_position(p),
            Input::Electable(e) => {
                self.election.set_electable(now, e, &mut out);
                // Rule 16: a leader whose storage cannot serve gives its
                // lease up now rather than hold the VIP for nothing. Its
                // voters' stickiness still covers the lease it announced.
                if !e && self.role() == Role::Leader {
                    out.push(Output::Notice(Notice::SteppedDownUnfit { epoch: self.epoch() }));
                    let t = self.election.step_down(now, &mut out);
                    self.on_transition(now, t);
                }
            }
            Input::Membership(m) => self.election.set_membership(now, m, &mut out),
            Input::ServiceReady(ready) => self.service_ready = ready,
            Input::TakeoverReady(ready) => self.ready = ready,
            Input::Admin(req) => self.admin(now, req, &mut out),
        }
        self.settle(now, &mut out);
        out
    }

    /// The earliest instant at which [`Input::Tick`] has work.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_beat;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                d = d.min(x);
            }
        };
        consider(self.election.deadline());
        consider(self.vip.deadline());
        consider(self.lease_end());
        // The strict-mode wait is a deadline only until it has passed.
        consider(self.vip_allowed_at().filter(|t| *t > self.now));
        d
    }

    /// A snapshot for status reporting.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            node_id: self.id,
            role: self.election.role(),
            epoch: self.election.epoch(),
            leader: self.election.leader(),
            lease_remaining_ms: self.lease.as_ref().map_or(0, |l| l.remaining(now).as_millis() as u64),
            vip_held: self.vip.phase() == VipPhase::Held,
            vip_phase: self.vip.phase(),
            standby: self.election.standby(),
            ready: self.ready,
            position: self.election.position(),
            vip_conflict: self.vip_conflict.filter(|(_, at)| now.since(*at) < CONFLICT_SHOWN).map(|(mac, _)| mac),
            peers: self
                .liveness
                .peers()
                .iter()
                .map(|p| PeerStatus {
                    node_id: p.id,
                    reachable: self.liveness.reachable(p.id, now),
                    last_heard_ms: p.last_heard.map(|t| now.since(t).as_millis() as u64),
                    position: p.position,
                    standby: p.standby,
                    ready: p.ready,
                })
                .collect(),
        }
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.election.role()
    }

    /// Current epoch.
    pub fn epoch(&self) -> Epoch {
        self.election.epoch()
    }

    /// The durable state as this node last decided it.
    pub fn hard_state(&self) -> HardState {
        self.election.hard()
    }

    /// When this node's lease ends, if it holds one (for invariant checks).
    pub fn lease_until(&self, now: Instant) -> Option<Instant> {
        self.lease.as_ref().filter(|l| l.valid(now)).and_then(Lease::until)
    }

    /// Until when this node refuses to vote for any other candidate (for
    /// invariant checks), `None` if it would vote now.
    pub fn refuses_votes_until(&self, now: Instant) -> Option<Instant> {
        self.election.refuses_votes_until(now)
    }

    /// The VIP phase.
    pub fn vip_phase(&self) -> VipPhase {
        self.vip.phase()
    }

    fn receive(&mut self, now: Instant, msg: &Message, out: &mut Vec<Output>) {
        // The last epoch could never be followed by another election: a
        // message claiming it is refused rather than adopted.
        if !self.peers.contains(&msg.from) || msg.epoch == Epoch::MAX {
            return;
        }
        self.liveness.heard(msg.from, now);
        if let Body::Ping { position, standby, ready } = msg.body {
            self.liveness.reported(msg.from, position, standby, ready);
        }
        // While the VIP may still be on our interface, we must not vote.
        self.election.set_fence(self.vip.fence(&self.timing));
        let t = self.election.receive(now, msg, out);
        self.on_transition(now, t);
        if let (Body::HeartbeatAck { round }, Some(lease)) = (&msg.body, self.lease.as_mut()) {
            if msg.epoch == self.election.epoch() && self.election.role() == Role::Leader {
                lease.acked(*round);
            }
        }
    }

    fn on_transition(&mut self, now: Instant, t: Transition) {
        match t {
            Transition::BecameLeader => {
                self.lease = Some(Lease::start(self.timing.lease_duration()));
                self.elected_at = Some(now);
                self.vip.reset_failures();
                // Heartbeat at once: the lease starts with the first acked round.
                self.next_beat = now;
            }
            Transition::LostLeadership => {
                self.lease = None;
                self.elected_at = None;
            }
            Transition::None => {}
        }
    }

    /// Work that follows from the state, whatever the input was.
    fn settle(&mut self, now: Instant, out: &mut Vec<Output>) {
        // CheckQuorum: no lease (any more) past its end means no majority.
        if self.role() == Role::Leader && self.lease_end().is_some_and(|end| now >= end) {
            out.push(Output::Notice(Notice::LeaseLost { epoch: self.epoch() }));
            let t = self.election.step_down(now, out);
            self.on_transition(now, t);
        }
        if now >= self.next_beat {
            self.beat(now, out);
        }
        self.give_up_if_vip_keeps_failing(now, out);
        let want = self.want_vip(now);
        self.vip.step(now, want, &self.timing, out);
        self.finish_handover(out);
    }

    /// A leader that cannot raise the VIP serves nobody: after a few
    /// failed adds in a row it hands over to an eligible peer (if none is,
    /// it keeps retrying).
    fn give_up_if_vip_keeps_failing(&mut self, now: Instant, out: &mut Vec<Output>) {
        let failures = self.vip.add_failures();
        if self.role() != Role::Leader || failures < MAX_VIP_ADD_FAILURES || self.vip.phase() != VipPhase::Released {
            return;
        }
        if let Ok(to) = self.handover_target(now, None) {
            out.push(Output::Notice(Notice::HandingOverVipFailures { failures, to }));
            self.hand_over(now, to, out);
        }
    }

    /// Sends a pending switchover's TimeoutNow once the VIP is off this
    /// node (sketch rule 17): never while a failed Remove may have left it
    /// on the interface. A handover overtaken by a newer epoch is dropped.
    fn finish_handover(&mut self, out: &mut Vec<Output>) {
        let Some((target, epoch)) = self.handover else { return };
        if self.epoch() != epoch || self.role() != Role::Follower {
            self.handover = None;
            return;
        }
        if self.vip.phase() == VipPhase::Released {
            self.handover = None;
            out.push(Output::Send { to: target, msg: Message { from: self.id, epoch, body: Body::TimeoutNow } });
        }
    }

    /// When the current leadership ends unless renewed: the lease's end, or
    /// for a new leader without a lease yet, one lease length after election.
    fn lease_end(&self) -> Option<Instant> {
        let lease = self.lease.as_ref()?;
        match lease.until() {
            Some(until) => Some(until),
            None => self.elected_at.map(|t| t.add(self.timing.lease_duration())),
        }
    }

    /// Strict mode: the earliest a new leader may raise the VIP, after a
    /// frozen predecessor's kernel lifetime has certainly run out. Every
    /// predecessor's lease, and so its last renewal, ended before we were
    /// elected (voters were sticky until then).
    fn vip_allowed_at(&self) -> Option<Instant> {
        if !self.timing.strict_vip_handover {
            return None;
        }
        let elected = self.elected_at?;
        Some(elected.add(self.timing.vip_lifetime).add(self.timing.kernel_expiry_slack))
    }

    fn want_vip(&self, now: Instant) -> bool {
        self.role() == Role::Leader
            && self.lease.as_ref().is_some_and(|l| l.valid(now))
            && self.vip_allowed_at().is_none_or(|t| now >= t)
            && self.service_ready
    }

    fn beat(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.next_beat = now.add(self.timing.heartbeat_interval);
        let epoch = self.epoch();
        let body = match self.lease.as_mut() {
            Some(lease) if self.election.role() == Role::Leader => Body::Heartbeat { round: lease.send_round(now) },
            _ => Body::Ping { position: self.election.position(), standby: self.election.standby(), ready: self.ready },
        };
        for to in self.peers {
            out.push(Output::Send { to, msg: Message { from: self.id, epoch, body: body.clone() } });
        }
    }

    fn admin(&mut self, now: Instant, req: AdminRequest, out: &mut Vec<Output>) {
        let result = match req {
            AdminRequest::Switchover { to } => self.switchover(now, to, out),
            // Two nodes in standby leave one electable node: one more
            // failure and nothing can take over. Refuse.
            AdminRequest::Standby(true) if !self.election.standby() && self.peer_in_standby().is_some() => {
                Err(format!(
                    "node {} is already in standby; at most one node may be in standby",
                    self.peer_in_standby().unwrap_or_default()
                ))
            }
            AdminRequest::Standby(true) => {
                if self.role() == Role::Leader {
                    self.handover_target(now, None).map(|target| {
                        self.election.set_standby(now, true, out);
                        self.hand_over(now, target, out);
                    })
                } else {
                    self.election.set_standby(now, true, out);
                    Ok(())
                }
            }
            AdminRequest::Standby(false) => {
                self.election.set_standby(now, false, out);
                Ok(())
            }
        };
        if let Err(reason) = result {
            out.push(Output::Notice(Notice::AdminRefused { reason }));
        }
    }

    /// A peer that last said it is in standby.
    fn peer_in_standby(&self) -> Option<NodeId> {
        self.liveness.peers().iter().find(|p| p.standby).map(|p| p.id)
    }

    fn switchover(&mut self, now: Instant, to: Option<NodeId>, out: &mut Vec<Output>) -> Result<(), String> {
        let target = self.handover_target(now, to)?;
        self.hand_over(now, target, out);
        Ok(())
    }

    /// Checks a switchover can happen now and picks its target.
    fn handover_target(&self, now: Instant, to: Option<NodeId>) -> Result<NodeId, String> {
        if self.role() != Role::Leader {
            return Err(match self.election.leader() {
                Some(l) => format!("node {} is not the active node; node {l} is", self.id),
                None => format!("node {} is not the active node, and no node is active", self.id),
            });
        }
        if matches!(self.vip.phase(), VipPhase::Claiming | VipPhase::Releasing) {
            return Err("the VIP is being moved; try again in a moment".into());
        }
        let mine = self.election.position();
        let eligible = |id: NodeId| -> Result<NodeId, String> {
            let p = self.liveness.get(id).ok_or_else(|| format!("node {id} is not a peer of node {}", self.id))?;
            if !self.liveness.reachable(id, now) {
                return Err(format!("node {id} is not reachable"));
            }
            if p.standby {
                return Err(format!("node {id} is in standby"));
            }
            if !p.ready {
                return Err(format!("node {id} is not ready to take over (its readiness check fails)"));
            }
            match p.position {
                Some(pos) if pos >= mine => Ok(id),
                _ => Err(format!("node {id} is not known to be up to date")),
            }
        };
        match to {
            Some(id) => eligible(id),
            None => {
                let mut best: Option<(Position, NodeId)> = None;
                for p in self.liveness.peers() {
                    if eligible(p.id).is_ok() {
                        let pos = p.position.unwrap_or_default();
                        if best.is_none_or(|(b, _)| pos > b) {
                            best = Some((pos, p.id));
                        }
                    }
                }
                best.map(|(_, id)| id).ok_or_else(|| "no reachable, up-to-date peer to hand over to".to_string())
            }
        }
    }

    /// Raft's TimeoutNow, after giving the lease up for good (sketch rule
    /// 17): the lease is dropped and the VIP removed now; the TimeoutNow
    /// that lets the target raise the VIP leaves only once the removal has
    /// succeeded ([`Node::finish_handover`]).
    fn hand_over(&mut self, now: Instant, target: NodeId, out: &mut Vec<Output>) {
        if let Some(lease) = self.lease.as_mut() {
            lease.give_up();
        }
        self.handover = Some((target, self.epoch()));
        let t = self.election.step_down(now, out);
        self.on_transition(now, t);
    }
}

/// Convenience for tests and the simulator: is `o` this VIP action?
pub fn is_vip(o: &Output, action: VipAction) -> bool {
    matches!(o, Output::Vip(a) if *a == action)
}

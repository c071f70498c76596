//! Election: epochs, votes, PreVote, lease stickiness and switchover
//! (Raft's rules, PROTOCOL-SKETCH rules 1, 2 and 17).
//!
//! ```text
//!                 timeout, not sticky,            majority of
//!                 not standby                     pre-votes
//!   Follower ───────────────────────▶ PreCandidate ──────────▶ Candidate ──majority of votes──▶ Leader
//!     ▲  ▲ ▲                              │  ▲ timeout             │ ▲ timeout: PreVote again      │
//!     │  │ └──── heartbeat of epoch ≥ mine ┘  └────────┘           │ └──────────────────────────────┤
//!     │  └────── message of a higher epoch ───────────────────────┘                                 │
//!     └───────── higher epoch seen, lease lost (CheckQuorum, by the node), or switchover ───────────┘
//!   TimeoutNow from my leader (switchover): Follower ──▶ Candidate at epoch+1, skipping PreVote.
//! ```
//!
//! Orderings that matter, and why:
//! - A vote, and any epoch change, is pushed as [`Output::Persist`] *before*
//!   the reply that depends on it: after a crash the node must not vote
//!   twice in one epoch or go back to an older epoch.
//! - Stickiness: a node that heard from its leader within
//!   `election_timeout_min`, a leader, and any node within
//!   `election_timeout_max` of starting, ignore vote requests entirely (no
//!   epoch change). This is what lets the leader's lease be valid without
//!   talking to anyone: no majority can form behind its back.
//! - PreVote: a node asks first and raises its epoch only if a majority
//!   would vote, so a node rejoining after a partition does not depose a
//!   healthy leader by raising epochs it cannot win.
//! - Only a candidate whose data position is at least the voter's gets the
//!   vote: this is what carries "no acknowledged write is lost" across
//!   failover once the replicated volume supplies real positions.

use crate::config::Timing;
use crate::io::{HardState, Membership, Notice, Output, Role};
use crate::message::{Body, Epoch, Message, NodeId, Position};
use crate::node::Setup;
use crate::rng::SplitMix64;
use crate::time::Instant;

/// What a step did to this node's leadership, for the node to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// This node just won an election.
    BecameLeader,
    /// This node was the leader and no longer is.
    LostLeadership,
}

/// The election state machine of one node.
#[derive(Clone, Debug)]
pub struct Election {
    id: NodeId,
    peers: [NodeId; 2],
    timing: Timing,
    hard: HardState,
    role: Role,
    leader: Option<NodeId>,
    /// Peers that granted the current PreVote or Vote round.
    grants: Vec<NodeId>,
    /// When a follower or candidate gives up waiting and (pre-)campaigns.
    deadline: Instant,
    /// Until then the node neither votes nor campaigns (memory of a recent
    /// leader was lost with the restart).
    quiet_until: Instant,
    /// Last heartbeat from a leader (any epoch).
    leader_heard_at: Option<Instant>,
    /// Until then the node refuses votes because the VIP may still be on
    /// its interface (a Remove that failed or is in flight).
    fence_until: Option<Instant>,
    position: Position,
    /// False while the data layer forbids standing for election.
    electable: bool,
    /// Rule 18: a learner's votes are limited (see [`Membership`]).
    membership: Membership,
    rng: SplitMix64,
}

impl Election {
    /// A node starting from `setup`.
    pub fn new(setup: Setup) -> Self {
        let Setup { id, peers, timing, hard, position, now, seed } = setup;
        let quiet_until = now.add(timing.election_timeout_max);
        let mut e = Election {
            id,
            peers,
            timing,
            hard,
            role: Role::Follower,
            leader: None,
            grants: Vec::new(),
            deadline: now,
            quiet_until,
            leader_heard_at: None,
            fence_until: None,
            position,
            electable: true,
            membership: Membership::default(),
            rng: SplitMix64::new(seed),
        };
        e.deadline = quiet_until;
        e.reset_deadline(quiet_until);
        e
    }

    /// The durable part.
    pub fn hard(&self) -> HardState {
        self.hard
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current epoch.
    pub fn epoch(&self) -> Epoch {
        self.hard.epoch
    }

    /// The leader this node follows or is.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// This node's data position.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The replication layer moved this node's position.
    pub fn set_position(&mut self, position: Position) {
        self.position = position;
    }

    /// Next instant at which [`Election::tick`] has work (never for a leader:
    /// its end comes from the lease).
    pub fn deadline(&self) -> Option<Instant> {
        (self.role != Role::Leader).then_some(self.deadline)
    }

    /// Sets or clears standby; persisted before anything else happens.
    pub fn set_standby(&mut self, now: Instant, standby: bool, out: &mut Vec<Output>) {
        if self.hard.standby != standby {
            self.hard.standby = standby;
            out.push(Output::Persist(self.hard));
        }
        // A campaign in flight must not make a standby node leader.
        if standby && matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.become_follower(now, None, out);
        }
    }

    /// Whether the data layer allows this node to stand for election; a
    /// campaign in flight is abandoned when it stops being allowed.
    pub fn set_electable(&mut self, now: Instant, electable: bool, out: &mut Vec<Output>) {
        self.electable = electable;
        if !electable && matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.become_follower(now, None, out);
        }
    }

    /// Rule 18: the data layer's word on this box's vote; a learner's
    /// campaign (there should be none) is abandoned.
    pub fn set_membership(&mut self, now: Instant, membership: Membership, out: &mut Vec<Output>) {
        self.membership = membership;
        if membership == Membership::Learner && matches!(self.role, Role::PreCandidate | Role::Candidate) {
            self.become_follower(now, None, out);
        }
    }

    /// The data layer's word on this box's vote.
    pub fn membership(&self) -> Membership {
        self.membership
    }

    /// Whether this node may grant a (pre-)vote in `epoch` (on top of
    /// Raft's rules): a learner never, a voter from its floor on.
    fn may_grant(&self, epoch: Epoch) -> bool {
        match self.membership {
            Membership::Learner => false,
            Membership::Voter { votes_from } => epoch >= votes_from,
        }
    }

    /// A learner never stands for election.
    fn may_campaign(&self) -> bool {
        self.membership != Membership::Learner
    }

    /// While the VIP may still be on this node's interface (until `until`),
    /// the node must not help elect anyone else: set by the node from the
    /// VIP state before every message.
    pub fn set_fence(&mut self, until: Option<Instant>) {
        self.fence_until = until;
    }

    /// Whether this node is in standby.
    pub fn standby(&self) -> bool {
        self.hard.standby
    }

    /// Time passed: campaign if the leader has been silent too long.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Output>) -> Transition {
        if self.role == Role::Leader || now < self.deadline {
            return Transition::None;
        }
        if self.hard.standby || !self.electable || !self.may_campaign() || now < self.quiet_until {
            self.reset_deadline(now);
            return Transition::None;
        }
        self.start_pre_vote(now, out);
        Transition::None
    }

    /// The leader gives up (lease lost, or handing over): back to follower
    /// in the same epoch, free to vote at once since its lease is over.
    pub fn step_down(&mut self, now: Instant, out: &mut Vec<Output>) -> Transition {
        let was_leader = self.role == Role::Leader;
        self.become_follower(now, None, out);
        if was_leader {
            Transition::LostLeadership
        } else {
            Transition::None
        }
    }

    /// A message from a peer. The node has already checked `msg.from` is a
    /// peer; the link has authenticated it.
    pub fn receive(&mut self, now: Instant, msg: &Message, out: &mut Vec<Output>) -> Transition {
        match msg.body {
            // PreVote never changes the receiver's state, whatever its epoch.
            Body::PreVote { position } => {
                let granted = msg.epoch > self.hard.epoch
                    && position >= self.position
                    && !self.sticky(now)
                    && self.may_grant(msg.epoch);
                self.send(msg.from, msg.epoch, Body::PreVoteReply { granted }, out);
                Transition::None
            }
            Body::PreVoteReply { granted } => {
                if self.role == Role::PreCandidate && Some(msg.epoch) == self.hard.epoch.checked_add(1) && granted {
                    self.grant_from(msg.from);
                    if self.has_majority() {
                        self.start_election(now, false, out);
                    }
                }
                Transition::None
            }
            Body::Vote { position, transfer } => self.on_vote(now, msg, position, transfer, out),
            _ => {
                // Everything else follows Raft's rule: a newer epoch wins.
                let mut t = Transition::None;
                if msg.epoch > self.hard.epoch {
                    t = self.adopt_epoch(now, msg.epoch, out);
                }
                match msg.body {
                    Body::Heartbeat { round } => self.on_heartbeat(now, msg, round, out).or(t),
                    Body::VoteReply { granted } => self.on_vote_reply(msg, granted, out).or(t),
                    Body::TimeoutNow => {
                        self.on_timeout_now(now, msg, out);
                        t
                    }
                    _ => t,
                }
            }
        }
    }

    fn on_vote(
        &mut self,
        now: Instant,
        msg: &Message,
        position: Position,
        transfer: bool,
        out: &mut Vec<Output>,
    ) -> Transition {
        // A handed-over election waives stickiness for exactly one epoch:
        // the old leader gave up its lease before sending TimeoutNow.
        let waived = transfer && Some(msg.epoch) == self.hard.epoch.checked_add(1);
        if msg.epoch < self.hard.epoch || (self.sticky(now) && !waived) {
            self.send(msg.from, self.hard.epoch, Body::VoteReply { granted: false }, out);
            return Transition::None;
        }
        let mut t = Transition::None;
        let mut dirty = false;
        if msg.epoch > self.hard.epoch {
            t = self.leave_leadership(now);
            self.hard.epoch = msg.epoch;
            self.hard.voted_for = None;
            self.become_follower(now, None, out);
            dirty = true;
        }
        let granted =
            self.hard.voted_for.is_none_or(|v| v == msg.from) && position >= self.position && self.may_grant(msg.epoch);
        if granted {
            if self.hard.voted_for.is_none() {
                self.hard.voted_for = Some(msg.from);
                dirty = true;
            }
            self.reset_deadline(now);
        }
        if dirty {
            // Persist before the reply leaves: never two votes in one epoch.
            out.push(Output::Persist(self.hard));
        }
        self.send(msg.from, self.hard.epoch, Body::VoteReply { granted }, out);
        t
    }

    fn on_vote_reply(&mut self, msg: &Message, granted: bool, out: &mut Vec<Output>) -> Transition {
        if self.role != Role::Candidate || msg.epoch != self.hard.epoch || !granted {
            return Transition::None;
        }
        self.grant_from(msg.from);
        if !self.has_majority() {
            return Transition::None;
        }
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.leader_heard_at = None;
        out.push(Output::Notice(Notice::RoleChanged { role: Role::Leader, epoch: self.hard.epoch }));
        Transition::BecameLeader
    }

    fn on_heartbeat(&mut self, now: Instant, msg: &Message, round: u64, out: &mut Vec<Output>) -> Transition {
        if msg.epoch < self.hard.epoch {
            // Tell the stale leader about the newer epoch; it steps down.
            // Round 0 is never sent: rounds restart in every leadership, and
            // echoing `round` could renew the lease of the same node's *new*
            // leadership (same epoch as ours) for a round we never saw.
            let _ = round;
            self.send(msg.from, self.hard.epoch, Body::HeartbeatAck { round: 0 }, out);
            return Transition::None;
        }
        if self.role == Role::Leader {
            // Two leaders in one epoch cannot happen (one vote per epoch);
            // never follow the other, never ack it.
            return Transition::None;
        }
        if self.role != Role::Follower || self.leader != Some(msg.from) {
            self.role = Role::Follower;
            self.leader = Some(msg.from);
            self.grants.clear();
            out.push(Output::Notice(Notice::RoleChanged { role: Role::Follower, epoch: self.hard.epoch }));
        }
        self.leader_heard_at = Some(now);
        self.reset_deadline(now);
        self.send(msg.from, self.hard.epoch, Body::HeartbeatAck { round }, out);
        Transition::None
    }

    fn on_timeout_now(&mut self, now: Instant, msg: &Message, out: &mut Vec<Output>) {
        let from_my_leader = msg.epoch == self.hard.epoch && self.leader == Some(msg.from);
        if from_my_leader && self.role == Role::Follower && !self.hard.standby && self.electable && self.may_campaign()
        {
            self.start_election(now, true, out);
        }
    }

    /// A newer epoch was seen: adopt it, forget the vote, follow nobody yet.
    fn adopt_epoch(&mut self, now: Instant, epoch: Epoch, out: &mut Vec<Output>) -> Transition {
        let t = self.leave_leadership(now);
        self.hard.epoch = epoch;
        self.hard.voted_for = None;
        out.push(Output::Persist(self.hard));
        self.become_follower(now, None, out);
        t
    }

    fn leave_leadership(&mut self, now: Instant) -> Transition {
        if self.role == Role::Leader {
            self.role = Role::Follower;
            self.leader = None;
            self.reset_deadline(now);
            Transition::LostLeadership
        } else {
            Transition::None
        }
    }

    fn become_follower(&mut self, now: Instant, leader: Option<NodeId>, out: &mut Vec<Output>) {
        let changed = self.role != Role::Follower;
        self.role = Role::Follower;
        self.leader = leader;
        self.grants.clear();
        // `leader_heard_at` is kept on purpose: stickiness is about time
        // since a leader was last heard, whatever epoch arrives meanwhile.
        // Clearing it on a higher epoch (a failed candidate's ping) let a
        // voter help elect a second leader inside the first one's lease.
        self.reset_deadline(now);
        if changed {
            out.push(Output::Notice(Notice::RoleChanged { role: Role::Follower, epoch: self.hard.epoch }));
        }
    }

    fn start_pre_vote(&mut self, now: Instant, out: &mut Vec<Output>) {
        // The last epoch cannot be followed by another: stay a follower.
        let Some(proposed) = self.hard.epoch.checked_add(1) else {
            self.reset_deadline(now);
            return;
        };
        if self.role != Role::PreCandidate {
            out.push(Output::Notice(Notice::RoleChanged { role: Role::PreCandidate, epoch: self.hard.epoch }));
        }
        self.role = Role::PreCandidate;
        self.leader = None;
        self.grants.clear();
        self.reset_deadline(now);
        for to in self.peers {
            self.send(to, proposed, Body::PreVote { position: self.position }, out);
        }
    }

    fn start_election(&mut self, now: Instant, transfer: bool, out: &mut Vec<Output>) {
        let Some(epoch) = self.hard.epoch.checked_add(1) else { return };
        self.role = Role::Candidate;
        self.leader = None;
        self.leader_heard_at = None;
        self.grants.clear();
        self.hard.epoch = epoch;
        self.hard.voted_for = Some(self.id);
        // Persist the epoch and our own vote before asking anyone.
        out.push(Output::Persist(self.hard));
        out.push(Output::Notice(Notice::RoleChanged { role: Role::Candidate, epoch: self.hard.epoch }));
        self.reset_deadline(now);
        for to in self.peers {
            self.send(to, self.hard.epoch, Body::Vote { position: self.position, transfer }, out);
        }
    }

    /// Until when this node refuses to vote for anyone else (for invariant
    /// checks: a valid lease must be backed by such a refusal on another
    /// node). `None` if it would vote now.
    pub fn refuses_votes_until(&self, now: Instant) -> Option<Instant> {
        if self.role == Role::Leader {
            return Some(Instant(u64::MAX));
        }
        let mut until = self.quiet_until;
        if let Some(heard) = self.leader_heard_at {
            until = until.max(heard.add(self.timing.election_timeout_min));
        }
        if let Some(fence) = self.fence_until {
            until = until.max(fence);
        }
        (until > now).then_some(until)
    }

    /// Whether this node refuses to vote for anyone else right now.
    fn sticky(&self, now: Instant) -> bool {
        self.role == Role::Leader
            || now < self.quiet_until
            || self.fence_until.is_some_and(|t| now < t)
            || self.leader_heard_at.is_some_and(|t| now.since(t) < self.timing.election_timeout_min)
    }

    fn grant_from(&mut self, from: NodeId) {
        if self.peers.contains(&from) && !self.grants.contains(&from) {
            self.grants.push(from);
        }
    }

    /// Self plus one peer is a majority of three.
    fn has_majority(&self) -> bool {
        !self.grants.is_empty()
    }

    fn reset_deadline(&mut self, now: Instant) {
        let min = crate::time::duration_micros(self.timing.election_timeout_min);
        let max = crate::time::duration_micros(self.timing.election_timeout_max);
        self.deadline = Instant(now.0.saturating_add(self.rng.between(min, max)));
    }

    fn send(&self, to: NodeId, epoch: Epoch, body: Body, out: &mut Vec<Output>) {
        out.push(Output::Send { to, msg: Message { from: self.id, epoch, body } });
    }
}

impl Transition {
    /// `self` unless it is `None`, then `other`.
    fn or(self, other: Transition) -> Transition {
        if self == Transition::None {
            other
        } else {
            self
        }
    }
}

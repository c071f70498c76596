//! What goes into the core and what comes out of it.
//!
//! The runtime feeds [`Input`]s to [`crate::Node::handle`] and must carry out
//! the returned [`Output`]s *in order*: a [`Output::Persist`] is durable
//! before any later [`Output::Send`] leaves (a vote is on disk before the
//! reply that depends on it), and VIP actions run before later sends.

use crate::message::{Epoch, Message, NodeId, Position};
use serde::{Deserialize, Serialize};

/// State that must survive a restart, written before anything depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The highest epoch this node has seen.
    pub epoch: Epoch,
    /// Whom this node voted for in `epoch`, if anyone.
    pub voted_for: Option<NodeId>,
    /// Standby (maintenance): the node never stands for election.
    pub standby: bool,
}

/// An event for the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time has passed; call at or after [`crate::Node::next_deadline`].
    Tick,
    /// A message arrived from an authenticated peer.
    Receive(Message),
    /// The runtime finished a [`VipAction`].
    VipDone {
        /// The action that finished.
        action: VipAction,
        /// Whether it succeeded; a failure is reported in status.
        ok: bool,
    },
    /// Another host answered ARP/NDP for the VIP while this node held it or
    /// was about to claim it.
    VipConflict {
        /// The other host's MAC address.
        mac: [u8; 6],
    },
    /// The replication layer's position moved (the journal's last record).
    PositionChanged(Position),
    /// Whether the replication layer lets this node stand for election: a
    /// node whose store is being resynced, failed, or found in split brain
    /// must never lead (DESIGN invariant 4). Not persisted: the replication
    /// layer derives it from its own durable state at every start.
    Electable(bool),
    /// Rule 18, from the replication layer: may this box vote and
    /// campaign. Not persisted by the core either: the replication layer
    /// keeps it with its own durable state and reports it at every start,
    /// before the node takes any message.
    Membership(Membership),
    /// Whether the service the VIP leads clients to is ready on this node
    /// (issue 11: the volume's filesystem mounted). The VIP is raised only
    /// while it is, so clients are moved here only once there is something
    /// to answer them; dropping to false releases a held VIP. A node
    /// without such a service never sends it (ready from the start).
    ServiceReady(bool),
    /// Whether this node's failover readiness check passes (issue 11: it
    /// could run the service now: the PBX and its config check out, the
    /// replica is current). Told to the peers in every Ping: a node that
    /// is not ready is never chosen as a switchover target. It does not
    /// bar an election: when the active node dies, a node that may fail
    /// to run the service is still better than none. Ready until told
    /// otherwise.
    TakeoverReady(bool),
    /// An operator's request.
    Admin(AdminRequest),
}

/// Rule 18: a box's right to vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// A replaced box (blank disks) that has not yet caught up with the
    /// cluster's committed data: it neither votes nor stands for election,
    /// so it can neither help elect a peer missing acknowledged writes (its
    /// own position says nothing of what the box it replaced acknowledged)
    /// nor vote again in an epoch that box voted in. Cost: until it is a
    /// voter, the two others must both be up to elect a leader.
    Learner,
    /// A full member, granting votes only in epochs from `votes_from` on
    /// (a former learner: above the epoch in which it caught up).
    Voter {
        /// The lowest epoch it may vote in.
        votes_from: Epoch,
    },
}

impl Default for Membership {
    fn default() -> Self {
        Membership::Voter { votes_from: 0 }
    }
}

/// Operator requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Move the active role to `to`, or to the best up-to-date peer if `None`.
    /// Only meaningful on the active node.
    Switchover {
        /// The chosen peer.
        to: Option<NodeId>,
    },
    /// Enter (true) or leave (false) standby: a standby node never becomes
    /// active; an active node entering standby first hands over.
    Standby(bool),
}

/// Something the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Make this durable before carrying out anything that follows.
    Persist(HardState),
    /// Send a message to a peer (best effort: links may drop it).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Act on the VIP; report completion with [`Input::VipDone`].
    Vip(VipAction),
    /// Something an operator wants in the log (role changes, refusals).
    Notice(Notice),
}

/// Actions on the virtual IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VipAction {
    /// Add the VIP with the configured kernel lifetime (no DAD).
    Add,
    /// Renew the kernel lifetime of the VIP.
    Renew,
    /// Remove the VIP now.
    Remove,
    /// Send one gratuitous ARP (and unsolicited NA) for the VIP.
    Announce,
}

/// Events worth logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// This node's role changed.
    RoleChanged {
        /// The new role.
        role: Role,
        /// The epoch it applies to.
        epoch: Epoch,
    },
    /// The lease ran out (CheckQuorum): the active node lost its majority.
    LeaseLost {
        /// The epoch whose lease was lost.
        epoch: Epoch,
    },
    /// The replication layer said this node must not lead (its storage
    /// failed, or its journal syncs stopped completing: sketch rule 16): the
    /// active node stepped down rather than keep a lease it cannot use.
    SteppedDownUnfit {
        /// The epoch it gave up.
        epoch: Epoch,
    },
    /// An admin request could not be carried out.
    AdminRefused {
        /// Why.
        reason: String,
    },
    /// A VIP action failed.
    VipFailed {
        /// Which.
        action: VipAction,
    },
    /// The active node cannot raise the VIP and hands the role over.
    HandingOverVipFailures {
        /// Adds that failed in a row.
        failures: u32,
        /// The peer taking over.
        to: NodeId,
    },
    /// Another host answers for the VIP.
    VipConflict {
        /// Its MAC.
        mac: [u8; 6],
    },
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asking whether an election could be won (PreVote), without raising the epoch.
    PreCandidate,
    /// Asking for votes in a new epoch.
    Candidate,
    /// Elected; active while its lease holds.
    Leader,
}

/// Phases of the VIP state machine (see [`crate::vip`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipPhase {
    /// Not on this node.
    Released,
    /// Add issued, not yet confirmed.
    Claiming,
    /// On this node and announced.
    Held,
    /// Remove issued, not yet confirmed.
    Releasing,
}

/// A snapshot for `triad status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current epoch.
    pub epoch: Epoch,
    /// The leader this node follows or is, if known.
    pub leader: Option<NodeId>,
    /// Lease time left in milliseconds (leader only; 0 otherwise).
    pub lease_remaining_ms: u64,
    /// Whether the VIP is on this node (phase Held).
    pub vip_held: bool,
    /// VIP phase.
    pub vip_phase: VipPhase,
    /// Standby (maintenance) mode.
    pub standby: bool,
    /// This node's failover readiness, as last told ([`Input::TakeoverReady`]).
    pub ready: bool,
    /// This node's data position.
    pub position: Position,
    /// A foreign MAC seen answering for the VIP while this node held or
    /// claimed it, within the last minute.
    pub vip_conflict: Option<[u8; 6]>,
    /// One entry per peer.
    pub peers: Vec<PeerStatus>,
}

/// What this node knows of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer.
    pub node_id: NodeId,
    /// Heard from within the peer timeout.
    pub reachable: bool,
    /// Milliseconds since last heard, if ever.
    pub last_heard_ms: Option<u64>,
    /// The peer's last reported position.
    pub position: Option<Position>,
    /// The peer last said it is in standby.
    pub standby: bool,
    /// The peer last said its failover readiness check passes.
    pub ready: bool,
}

//! Peer messages: what one node's core says to another's.
//!
//! Every message carries the sender's epoch, which is how stale leaders and
//! stale votes are fenced (DESIGN invariant 3). The runtime frames these with
//! [`PROTOCOL_VERSION`] and postcard; any change to these types bumps the
//! version, and a peer speaking another version is refused at the link.

use serde::{Deserialize, Serialize};

/// Wire protocol version. Bump on every change to [`Message`] or [`Body`].
pub const PROTOCOL_VERSION: u16 = 2;

/// A cluster member's identity: 1, 2 or 3.
pub type NodeId = u8;

/// A leadership term. Only grows; persisted before anything depends on it.
pub type Epoch = u64;

/// How new a node's replicated data is: the (epoch, sequence) of the last
/// record in its journal. Compared lexicographically. Until the replicated
/// volume exists this is supplied by the runtime as a constant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Epoch of the last journal record.
    pub epoch: Epoch,
    /// Sequence number of the last journal record.
    pub seq: u64,
}

/// One message between cluster members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The sender's epoch; for a PreVote and its reply, the proposed epoch.
    pub epoch: Epoch,
    /// What is being said.
    pub body: Body,
}

/// The message kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Leader to follower, every heartbeat interval: "I lead `epoch`". Acks of
    /// round `round` renew the leader's lease from the time it was sent.
    Heartbeat {
        /// Lease round, increasing within one leadership.
        round: u64,
    },
    /// Follower to leader: the heartbeat of `round` arrived.
    HeartbeatAck {
        /// The round being acknowledged.
        round: u64,
    },
    /// Non-leader to everyone, every heartbeat interval: liveness only.
    Ping {
        /// The sender's data position: switchover targets must be up to date.
        position: Position,
        /// The sender is in standby: never a switchover target.
        standby: bool,
        /// The sender's failover readiness check passes (it could run the
        /// service now): a switchover target must be ready.
        ready: bool,
    },
    /// "Would you vote for me in `epoch`?" Changes no state on the receiver.
    PreVote {
        /// The candidate's data position.
        position: Position,
    },
    /// Answer to a [`Body::PreVote`], echoing the proposed epoch.
    PreVoteReply {
        /// Whether the receiver would vote.
        granted: bool,
    },
    /// Request for a vote in `epoch`.
    Vote {
        /// The candidate's data position.
        position: Position,
        /// Set when the leader of `epoch - 1` handed over with TimeoutNow;
        /// voters then waive lease stickiness for this one election.
        transfer: bool,
    },
    /// Answer to a [`Body::Vote`].
    VoteReply {
        /// Whether the vote was given.
        granted: bool,
    },
    /// Planned switchover: the leader of `epoch`, having given up its lease,
    /// tells the receiver to start an election at `epoch + 1` now.
    TimeoutNow,
}

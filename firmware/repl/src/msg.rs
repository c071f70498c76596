//! Replication messages between the three nodes' [`crate::Replica`]s.
//!
//! They travel on their own mutual-TLS link (the data link), separate from
//! the core's heartbeats, so bulk data never delays a lease renewal. Every
//! message carries the sender's epoch; a receiver acts only on messages of
//! its current epoch from the leader it knows (or to the leader it is),
//! which fences old leaders (DESIGN invariant 3, sketch rule 5).
//!
//! Bump [`REPL_PROTOCOL_VERSION`] on any change to these types.

use serde::{Deserialize, Serialize};
use triad_core::NodeId;
use triad_volume::{Position, Record};

/// Wire version of [`Msg`].
pub const REPL_PROTOCOL_VERSION: u16 = 3;

/// A 128-bit region hash (XXH3-128 of the region's bytes).
pub type RegionHash = [u8; 16];

/// What one replica tells another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Leader → follower (Raft's AppendEntries): `records` follow `prev`.
    /// Empty `records` is a probe that carries the commit point.
    Append {
        /// The leader's epoch.
        epoch: u64,
        /// The record before the first of `records` (rule 5's prev check).
        prev: Position,
        /// Consecutive records, each chained to the one before.
        records: Vec<Record>,
        /// The leader's commit point (seq): followers apply up to it.
        commit: u64,
        /// Every node's checkpoint K as the leader knows it (rule 10:
        /// followers keep bitmaps too and must know whom a discard leaves behind).
        ks: Vec<(NodeId, Position)>,
        /// The recipient box's incarnation as the leader last heard it (0:
        /// not yet). Rule 18: a learner that sees its own knows that
        /// `commit` no longer counts the replies of the box it replaced.
        peer_inc: u64,
        /// The leader's stream for this peer: the id of the last block
        /// resync it began for it (0: none). Echoed in the AppendReply;
        /// replies of an older stream describe the peer from before that
        /// resync (a K it may no longer have) and are ignored.
        stream: u64,
    },
    /// Follower → leader, after its journal sync: where it stands.
    AppendReply {
        /// The follower's epoch.
        epoch: u64,
        /// The follower box's incarnation (rule 18: late replies of a
        /// replaced box are told from its replacement's).
        inc: u64,
        /// Whether the last Append's prev matched.
        ok: bool,
        /// Highest seq durable in the follower's journal *and* known to
        /// match the leader's journal: what counts toward a commit.
        matched: u64,
        /// The follower's last journal record (durable or not).
        last: Position,
        /// The follower's last applied record (committed, so it matches).
        applied: Position,
        /// The follower's checkpoint K.
        k: Position,
        /// False while the follower's store is marked inconsistent.
        consistent: bool,
        /// Rule 18: a replaced box not yet caught up; it counts toward no commit.
        learner: bool,
        /// The `stream` of the Append this answers.
        stream: u64,
    },
    /// Leader → follower: a block resync begins (rule 11). The follower
    /// durably marks its store inconsistent, then acknowledges with
    /// `ResyncAck { n: 0 }`; with `hash`, the leader then asks for region
    /// hashes with `VerifyRequest`s carrying the resync's id.
    ResyncBegin {
        /// The leader's epoch.
        epoch: u64,
        /// Identifies this resync.
        id: u64,
        /// Region-by-region hash comparison (no bitmap reaches back).
        hash: bool,
    },
    /// Leader → follower: volume bytes to write as they are (resync).
    ResyncData {
        /// The leader's epoch.
        epoch: u64,
        /// The resync.
        id: u64,
        /// Position in this resync's stream, from 1; applied strictly in order.
        n: u64,
        /// Volume byte offset.
        offset: u64,
        /// The bytes (one byte string on the wire: see `triad_volume::serde_bytes`).
        #[serde(with = "triad_volume::serde_bytes")]
        data: Vec<u8>,
    },
    /// Leader → follower: all data up to `n` describes the leader's store
    /// at `point`; finish (fsync, persist "consistent, K = point").
    ResyncEnd {
        /// The leader's epoch.
        epoch: u64,
        /// The resync.
        id: u64,
        /// The last data message of the stream.
        n: u64,
        /// The leader's applied position the copy corresponds to.
        point: Position,
    },
    /// Follower → leader: where the follower is in resync `id`.
    ResyncAck {
        /// The follower's epoch.
        epoch: u64,
        /// The follower box's incarnation (as in `AppendReply`).
        inc: u64,
        /// The resync.
        id: u64,
        /// Last data message written in order (0 with [`ResyncState::Unknown`]).
        n: u64,
        /// Whether the follower has this resync, and whether it ended.
        state: ResyncState,
    },
    /// Leader → follower: hash `count` regions from `offset` (online verify,
    /// and the comparison phase of a hash resync; `id` tells which).
    VerifyRequest {
        /// The leader's epoch.
        epoch: u64,
        /// The verify run.
        id: u64,
        /// First region's offset.
        offset: u64,
        /// Regions wanted.
        count: u32,
    },
    /// Follower → leader: the hashes, and the applied position they were
    /// taken at (comparable only at equal positions).
    VerifyReply {
        /// The follower's epoch.
        epoch: u64,
        /// The follower box's incarnation (as in `AppendReply`).
        inc: u64,
        /// The verify run.
        id: u64,
        /// First region's offset.
        offset: u64,
        /// The follower's applied position at hashing time.
        applied: Position,
        /// One hash per region.
        hashes: Vec<RegionHash>,
    },
}

/// A follower's answer about a resync it is asked about.
///
/// `Unknown` is distinct from "receiving, nothing in order yet" so that a
/// reordered data message (n > 1 before n = 1) is not mistaken for a
/// follower that restarted and lost the resync (which makes the leader
/// start over).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResyncState {
    /// No such resync here: never begun, or lost in a restart.
    Unknown,
    /// Begun; data taken in order through `n`.
    Receiving,
    /// Ended durably: the store holds the leader's at the end point.
    Finished,
}

impl Msg {
    /// The sender's epoch.
    pub fn epoch(&self) -> u64 {
        match self {
            Msg::Append { epoch, .. }
            | Msg::AppendReply { epoch, .. }
            | Msg::ResyncBegin { epoch, .. }
            | Msg::ResyncData { epoch, .. }
            | Msg::ResyncEnd { epoch, .. }
            | Msg::ResyncAck { epoch, .. }
            | Msg::VerifyRequest { epoch, .. }
            | Msg::VerifyReply { epoch, .. } => *epoch,
        }
    }

    /// The sending box's incarnation, on replies (follower → leader).
    pub fn incarnation(&self) -> Option<u64> {
        match self {
            Msg::AppendReply { inc, .. } | Msg::ResyncAck { inc, .. } | Msg::VerifyReply { inc, .. } => Some(*inc),
            _ => None,
        }
    }

    /// Whether the leader sends it (followers act on these only from their leader).
    pub fn from_leader(&self) -> bool {
        matches!(
            self,
            Msg::Append { .. }
                | Msg::ResyncBegin { .. }
                | Msg::ResyncData { .. }
                | Msg::ResyncEnd { .. }
                | Msg::VerifyRequest { .. }
        )
    }
}

//! triad-repl: the replicated volume's replication layer (DESIGN part 3,
//! PROTOCOL-SKETCH rules 5-16).
//!
//! One [`Replica`] per node owns that node's journal and block store
//! (`triad-volume`) and decides what to append, what is committed, what to
//! apply, what to send and when to resync. It is sans network and clock:
//! messages and time come in as arguments and everything it wants done
//! comes out as [`Out`]s. It does disk I/O, but only through the
//! `triad_volume::Disk` trait, so the simulator runs it over `MemDisk` with
//! power cuts and the supervisor over real files on its own thread.
//!
//! ```text
//!   core (election, lease) ──View{epoch, leader, lease_until}──▶ Replica
//!   NBD client ──write/read──▶ Replica (leader, ready, inside the lease)
//!   peers ◀──Msg (Append, AppendReply, Resync*, Verify*)──▶ Replica
//!   Replica ──Out::Position / Out::Electable──▶ core (votes weigh data freshness)
//! ```
//!
//! The driver's contract: after handing over a batch of inputs, call
//! [`Replica::sync`] once (group commit: one journal fdatasync for all of
//! them) and carry out the outputs; call [`Replica::tick`] at or after
//! [`Replica::next_deadline`].
//!
//! Modules: [`msg`] (wire types), [`replica`] (state, follower side,
//! compaction), `leader` (write path, commit rule, catch-up), `resync`
//! (block resync, both sides), `verify` (online verify), `hash`.

mod error;
mod fitness;
mod hash;
mod leader;
pub mod msg;
pub mod replica;
mod resync;
pub mod testing;
mod verify;

pub use bytes::Bytes;
pub use error::StorageError;
pub use fitness::Fitness;
pub use msg::{Msg, RegionHash, ResyncState, REPL_PROTOCOL_VERSION};
pub use replica::{Recovery, Replica, ReplicaError};

use core::time::Duration;
use serde::{Deserialize, Serialize};
use triad_core::{Instant, NodeId};
use triad_volume::Position;

/// An NBD request's handle, echoed in [`Out::WriteDone`].
pub type WriteId = u64;

/// Tunables of the replication layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplConfig {
    /// A write not committed within this time fails (the client sees EIO);
    /// a leader that lost both peers stops acknowledging at once and steps
    /// down with its lease.
    pub write_timeout: Duration,
    /// Unacknowledged data is sent again after this long.
    pub retransmit: Duration,
    /// Bytes of records per Append message.
    pub max_batch_bytes: u64,
    /// Bytes sent to a peer beyond what it acknowledged (the pipeline).
    pub max_inflight_bytes: u64,
    /// Largest payload of one record; larger writes become several records.
    pub max_record: u64,
    /// Block resync rate in bytes per second (0: unlimited). Lifted while
    /// the resyncing peer is the only possible commit partner (rule 13).
    pub resync_rate: u64,
    /// Bytes per resync data message.
    pub resync_chunk: u64,
    /// Bytes per hashed region (hash resync and verify).
    pub region: u64,
    /// A peer not heard from within this is not counted as reachable.
    pub peer_timeout: Duration,
    /// Checkpoint and compact when less than this fraction (percent) of
    /// the ring is free.
    pub compact_below_free_pct: u64,
    /// Rules switched off on purpose, for the simulator to show each one
    /// matters. Never set outside tests.
    #[doc(hidden)]
    pub mutations: Mutations,
}

/// Safety rules the simulator can switch off (each must then let it find
/// a violation). All false in production.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Rule 8: a new leader serves without committing its no-op first.
    pub skip_noop: bool,
    /// Rule 5: followers append without checking `prev`.
    pub skip_prev_check: bool,
    /// Raft's Figure 8: commit records of older epochs by counting replicas.
    pub commit_old_epochs: bool,
    /// Rule 12: a resyncing (inconsistent) peer counts toward commits.
    pub count_resyncing_peer: bool,
    /// Rule 6: acknowledge once durable on the leader alone.
    pub ack_without_peer: bool,
    /// Rule 11's frozen base: a peer found mid-resync (its store marked
    /// inconsistent, no resync of this leader running) is caught up by
    /// records from its K instead of getting a fresh block resync; the
    /// peer declares its half-copied store consistent at its old K.
    pub resume_resync_by_records: bool,
    /// Rule 10: the last discarded (epoch, seq) is not persisted: after a
    /// restart an emptied journal has lost its position ((0, 0)).
    pub forget_discarded: bool,
    /// Issue 8's review: a leader takes K and `matched` from replies of
    /// any stream, including ones sent before the peer's last resync.
    pub ignore_stream: bool,
}

impl Default for ReplConfig {
    fn default() -> Self {
        ReplConfig {
            write_timeout: Duration::from_secs(5),
            retransmit: Duration::from_millis(200),
            max_batch_bytes: 1 << 20,
            max_inflight_bytes: 16 << 20,
            max_record: 1 << 20,
            resync_rate: 100 << 20,
            resync_chunk: 256 << 10,
            region: 64 << 10,
            peer_timeout: Duration::from_secs(1),
            compact_below_free_pct: 50,
            mutations: Mutations::default(),
        }
    }
}

/// What the core says about leadership, handed in after every core step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// The core's current (persisted) epoch.
    pub epoch: u64,
    /// The leader of `epoch`, if known; this node's own id when it leads.
    pub leader: Option<NodeId>,
    /// While this node leads: the end of its lease (acknowledgements and
    /// reads only before it).
    pub lease_until: Option<Instant>,
}

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClientError {
    /// This node is not the active node (or lost the role meanwhile).
    #[error("this node is not the active node")]
    NotActive,
    /// The new active node has not committed its first record yet.
    #[error("the active node is not ready yet (promotion in progress)")]
    NotReady,
    /// Not committed within the write timeout (peers unreachable).
    #[error("write not committed within {0} ms: no peer acknowledged it")]
    Timeout(u64),
    /// The range is outside the volume.
    #[error("range of {len} bytes at {offset} is outside the {volume_len}-byte volume")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Volume size.
        volume_len: u64,
    },
    /// The node's journal or store failed; it serves nothing until resynced.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Send on the data link (best effort; lost messages are resent).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Msg,
    },
    /// A client write finished: committed on a majority and applied, or failed.
    WriteDone {
        /// The write's id.
        id: WriteId,
        /// The outcome.
        result: Result<(), ClientError>,
    },
    /// The journal's last position moved: tell the core (its votes compare it).
    Position(triad_core::Position),
    /// Whether the node may stand for election (false while resyncing,
    /// failed, or after split brain was detected).
    Electable(bool),
    /// Rule 18: whether this box is a learner, and from which epoch it
    /// may vote (feed to the core as `Input::Membership`).
    Membership(triad_core::Membership),
    /// An online verify finished.
    VerifyDone(VerifyReport),
    /// Worth logging.
    Notice(ReplNotice),
}

/// Events for the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplNotice {
    /// Leader: the first record of the epoch is committed; serving now.
    Ready {
        /// The epoch.
        epoch: u64,
        /// Its first record.
        seq: u64,
    },
    /// Leader: a block resync of a peer began.
    ResyncStarted {
        /// The peer.
        peer: NodeId,
        /// Hash comparison (true) or bitmap (false).
        hash: bool,
        /// Bytes known to copy at the start.
        bytes: u64,
    },
    /// A block resync finished.
    ResyncFinished {
        /// The resynced node.
        peer: NodeId,
        /// Its new checkpoint.
        point: Position,
        /// Bytes copied.
        bytes: u64,
    },
    /// Divergent committed histories: refused, never merged (rule 14).
    SplitBrain {
        /// The other node.
        peer: NodeId,
        /// What differs.
        detail: String,
    },
    /// The journal or store failed; the node stops serving (rule 9).
    StorageFailed {
        /// What failed.
        detail: String,
    },
    /// A peer box answers with a new incarnation: it was replaced (blank
    /// disks). What was known of the old box is forgotten (rule 18).
    PeerReplaced {
        /// The peer.
        peer: NodeId,
        /// The incarnation heard before.
        old: u64,
        /// The incarnation heard now.
        new: u64,
    },
    /// Leader: neither peer answered on the data links for the write
    /// timeout; this node cannot commit, reports itself unfit (the core
    /// steps down) and stands again at `until`.
    DataLinksSilent {
        /// The epoch it led.
        epoch: u64,
        /// When it may stand for election again (if no peer is heard first).
        until: Instant,
    },
    /// A peer's reply was out of epoch or otherwise refused.
    Refused {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
}

/// Result of an online verify.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The run's id.
    pub id: u64,
    /// Bytes compared.
    pub bytes: u64,
    /// Regions compared on every peer.
    pub regions: u64,
    /// `(peer, offset, length)` of differing ranges (merged).
    pub differing: Vec<(NodeId, u64, u64)>,
    /// Regions that could not be compared at equal positions (writes kept
    /// moving the volume) or whose peer did not answer.
    pub not_compared: u64,
}

/// Health of this node's replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Serving or following normally.
    Consistent,
    /// Receiving a block resync: not electable, counts toward no commit.
    Resyncing,
    /// Divergent committed history found: refuses to join.
    SplitBrain(String),
    /// The journal or store failed (rule 9): needs a resync.
    Failed(String),
}

/// Resync progress, as `triad status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncProgress {
    /// Hash comparison or bitmap.
    pub hash: bool,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// Bytes known to copy (grows while writes continue).
    pub bytes_total: u64,
    /// Bytes per second since the start.
    pub rate: u64,
    /// Seconds left at that rate, if known.
    pub eta_secs: Option<u64>,
    /// Regions hashed by the peer (hash mode).
    pub hashed_bytes: u64,
}

/// One peer as this node's replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRepl {
    /// The peer.
    pub node_id: NodeId,
    /// Highest seq durable on the peer and matching (leader only).
    pub matched: u64,
    /// The peer's checkpoint K as last known.
    pub k: Position,
    /// Its store is consistent (as last reported).
    pub consistent: bool,
    /// Dirty bytes recorded for it (bitmap of discarded records).
    pub bitmap_dirty_bytes: u64,
    /// A block resync to it in progress (leader only).
    pub resync: Option<ResyncProgress>,
}

/// A snapshot for `triad status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplStatus {
    /// Health.
    pub health: Health,
    /// Leader and first record committed.
    pub serving: bool,
    /// Last journal record.
    pub last: Position,
    /// Durable through.
    pub durable: Position,
    /// Commit point known to this node.
    pub commit: u64,
    /// Applied to the block store.
    pub applied: Position,
    /// Checkpoint K.
    pub k: Position,
    /// Last discarded record.
    pub discarded: Position,
    /// Volume size.
    pub volume_len: u64,
    /// Journal ring bytes free.
    pub journal_free: u64,
    /// Client writes waiting for commit.
    pub pending_writes: usize,
    /// Rule 18: a replaced box that has not caught up yet.
    pub learner: bool,
    /// Per peer.
    pub peers: Vec<PeerRepl>,
}

/// Converts the volume's position into the core's (same shape).
pub fn core_position(p: Position) -> triad_core::Position {
    triad_core::Position { epoch: p.epoch, seq: p.seq }
}

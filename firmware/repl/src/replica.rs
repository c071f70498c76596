//! One node's replica: its journal and store, the view the core gives it,
//! and the follower side of replication (rule 5), applying committed
//! records (rules 6, 7), checkpoints and compaction with bitmaps (rules 9,
//! 10). The leader side lives in `leader.rs`, block resync in `resync.rs`.
//!
//! ```text
//!   Follower:  Append(prev, records, commit) ──prev matches?──▶ append (truncate a
//!              conflicting uncommitted tail) ──sync()──▶ AppendReply(matched, K) ──▶ apply ≤ commit
//!   Leader:    (leader.rs) no-op record first; writes → records → peers; commit = durable on
//!              the leader and one consistent peer, in the leader's epoch; apply; acknowledge
//!   Any node:  journal short of room ──▶ checkpoint K (fsync store) ──▶ bitmaps for peers
//!              whose K is behind ──▶ discard through K
//! ```
//!
//! Invariants kept here: only committed records reach the store, in seq
//! order; a record is applied only once it is durable in this node's own
//! journal too (so K never runs ahead of the journal); a committed record is
//! never truncated: a conflict at or below the commit point is split brain.

use core::time::Duration;
use std::collections::VecDeque;

use triad_core::{Instant, NodeId};
use triad_volume::{
    DirtyBitmap, Disk, Journal, JournalError, JournalSync, Position, Record, Store, StoreError, SyncJob,
};

use crate::leader::LeaderState;
use crate::msg::Msg;
use crate::resync::FollowerResync;
use crate::{
    core_position, ClientError, Health, Out, PeerRepl, ReplConfig, ReplNotice, ReplStatus, StorageError, View,
};

/// Why a replica could not be opened or formatted.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The journal could not be opened or formatted.
    #[error("journal")]
    Journal(#[from] JournalError),
    /// The store could not be opened or formatted.
    #[error("block store")]
    Store(#[from] StoreError),
    /// The bitmap geometry in the metadata is unusable.
    #[error("dirty bitmap")]
    Bitmap(#[from] triad_volume::BitmapError),
    /// The peers are not two distinct other nodes.
    #[error("peers {0:?} are not two nodes other than this one")]
    Peers([NodeId; 2]),
}

/// What the driver does with a replica whose storage failed (rule 9,
/// `docs/replication.md`). Either way the failed replica itself refuses
/// everything: a disk that failed an fsync is never trusted again in the
/// same open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The "inconsistent, failed" mark reached the metadata disk: drop
    /// this replica and [`Replica::open`] the disks again (new file
    /// descriptors; a process restart will do). It comes back inconsistent,
    /// its journal cut to what it had synced, and is block-resynced with
    /// every region copied.
    Reopen,
    /// The mark could not be written: nothing on disk says the page cache
    /// lies, so a reopen over the same cache could report records and
    /// blocks no medium holds. Reboot the box: without the page cache the
    /// disks read back only what reached the medium, all of it honest.
    Reboot,
}

/// A follower's AppendReply that waits for a sync.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReplyDue {
    pub(crate) to: NodeId,
    pub(crate) ok: bool,
    pub(crate) stream: u64,
    /// Sent once the journal is durable through this seq.
    pub(crate) upto: u64,
}

/// One node's replica of the volume.
#[derive(Debug)]
pub struct Replica<J: Disk, D: Disk, M: Disk> {
    pub(crate) id: NodeId,
    pub(crate) peers: [NodeId; 2],
    pub(crate) cfg: ReplConfig,
    pub(crate) journal: Journal<J>,
    pub(crate) store: Store<D, M>,
    /// `(offset, len)` of each retained record, index i ↔ seq discarded+1+i
    /// (what a discard must put in the bitmaps, without re-reading data).
    pub(crate) extents: VecDeque<(u64, u64)>,
    pub(crate) view: View,
    pub(crate) now: Instant,
    /// Highest seq known committed.
    pub(crate) commit: u64,
    pub(crate) health: Health,
    /// Rule 9: set when storage failed, saying how to come back.
    recovery: Option<Recovery>,
    /// Present while this node leads (and its store is consistent).
    pub(crate) leader: Option<LeaderState>,
    /// Follower: highest seq known to match the current leader's journal.
    pub(crate) matched_in_epoch: u64,
    /// Follower: an AppendReply to send once the journal is durable
    /// through what the Append added: to whom, `ok`, the stream of the
    /// Append it answers, and the last seq the journal had then.
    pub(crate) reply_due: Option<ReplyDue>,
    /// Follower: the durable seq the last AppendReply reported.
    replied_durable: u64,
    /// Follower side of a block resync.
    pub(crate) resync_in: Option<FollowerResync>,
    /// One bitmap per peer (index as in `peers`), rule 10.
    pub(crate) bitmaps: [DirtyBitmap; 2],
    /// Last known checkpoint K of each peer.
    pub(crate) peer_k: [Position; 2],
    /// Each peer box's incarnation as last heard, and the ones it
    /// replaced (whose late replies are ignored), newest last.
    peer_inc: [Option<u64>; 2],
    retired_inc: [Vec<u64>; 2],
    /// Rule 18, a learner: the (epoch, commit) of the first Append that
    /// echoed this box's incarnation; applied through it, it is a voter.
    learner_target: Option<(u64, u64)>,
    /// Outputs already reported, to emit changes only.
    reported_position: Option<Position>,
    reported_electable: Option<bool>,
    reported_membership: Option<triad_core::Membership>,
    /// The journal has appends no sync (finished or running) covers.
    pub(crate) needs_sync: bool,
    /// A journal sync was started and has not finished.
    sync_running: bool,
    /// Follower: records taken from the leader and not yet applied, kept in
    /// RAM (bounded) so applying them does not re-read the journal.
    received: VecDeque<Record>,
    received_bytes: u64,
    last_checkpoint: Instant,
    /// Set when, as leader, this node heard neither peer on the data links
    /// for the write timeout: unfit to lead until then (`leader.rs`
    /// `check_data_links`), or until a peer is heard after stepping down.
    pub(crate) data_links_silent_until: Option<Instant>,
}

/// Ring bytes every data record leaves free: room for a future leader's
/// empty record (56 bytes) even where it must skip to the ring's start.
pub(crate) const NOOP_RESERVE: u64 = 2 * triad_volume::journal::RECORD_HEADER_LEN as u64;

/// Retired incarnations remembered per peer (boxes replaced in a row).
const MAX_RETIRED: usize = 4;

/// Shortest time between two ticks the replica asks for.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Bytes of received records a follower keeps in RAM until applied.
const RECEIVED_BYTES: u64 = 32 << 20;

/// Longest time between checkpoints while records are being applied.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

impl<J: Disk, D: Disk, M: Disk> Replica<J, D, M> {
    /// Formats a blank node: empty journal at (0, 0), store K = (0, 0).
    /// Every node of a new cluster starts from the same (zeroed) data.
    pub fn format(
        id: NodeId,
        peers: [NodeId; 2],
        cfg: ReplConfig,
        journal: J,
        data: D,
        meta: M,
        format: triad_volume::store::Format,
    ) -> Result<Self, ReplicaError> {
        let journal = Journal::format(journal)?;
        let store = Store::format(data, meta, format)?;
        Self::assemble(id, peers, cfg, journal, store)
    }

    /// Opens a node after any restart: the journal's position is its last
    /// valid chained record (rule 1), the store's applied position is K
    /// (rule 9), and records past K are applied only once a leader reports
    /// them committed.
    pub fn open(
        id: NodeId,
        peers: [NodeId; 2],
        cfg: ReplConfig,
        journal: J,
        data: D,
        meta: M,
    ) -> Result<Self, ReplicaError> {
        let store = Store::open(data, meta)?;
        // Rule 9: after a storage failure the journal is trusted only as
        // far as it had been synced (the page cache may show more).
        let mut journal = match store.checkpointed().failed {
            Some(vouched) => Journal::open_vouched(journal, vouched)?,
            None => Journal::open(journal)?,
        };
        let k = store.checkpointed().applied;
        // The journal must contain K (or have discarded past it). It does
        // not only after a crash between "journal reset" and "consistent,
        // K" at the end of a resync; then the store is still inconsistent
        // and the journal restarts at K.
        let covered = k.seq <= journal.discarded().seq || journal.position_of(k.seq) == Some(k);
        if !covered {
            journal.reset_at(k)?;
        }
        if cfg.mutations.forget_discarded && journal.last() == journal.discarded() {
            journal.reset_at(Position::ZERO)?;
        }
        Self::assemble(id, peers, cfg, journal, store)
    }

    fn assemble(
        id: NodeId,
        peers: [NodeId; 2],
        cfg: ReplConfig,
        journal: Journal<J>,
        store: Store<D, M>,
    ) -> Result<Self, ReplicaError> {
        if peers[0] == peers[1] || peers.contains(&id) {
            return Err(ReplicaError::Peers(peers));
        }
        let mut extents = VecDeque::new();
        for r in journal.iter_from(0) {
            let r = r?;
            extents.push_back((r.offset, r.payload.len() as u64));
        }
        let (len, gran) = (store.volume_len(), store.granularity());
        let mut bitmaps = [DirtyBitmap::new(len, gran, Position::ZERO)?, DirtyBitmap::new(len, gran, Position::ZERO)?];
        for (slot, bm) in bitmaps.iter_mut().enumerate() {
            if let Some(b) = store.load_bitmap(slot as u32)? {
                *bm = b;
            }
        }
        let health = if store.checkpointed().consistent { Health::Consistent } else { Health::Resyncing };
        let commit = store.applied().seq;
        Ok(Replica {
            id,
            peers,
            cfg,
            journal,
            store,
            extents,
            view: View::default(),
            now: Instant::ZERO,
            commit,
            health,
            recovery: None,
            leader: None,
            matched_in_epoch: 0,
            reply_due: None,
            replied_durable: 0,
            resync_in: None,
            bitmaps,
            peer_k: [Position::ZERO; 2],
            peer_inc: [None; 2],
            retired_inc: [Vec::new(), Vec::new()],
            learner_target: None,
            reported_position: None,
            reported_electable: None,
            reported_membership: None,
            needs_sync: false,
            sync_running: false,
            received: VecDeque::new(),
            received_bytes: 0,
            last_checkpoint: Instant::ZERO,
            data_links_silent_until: None,
        })
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This box's incarnation (drawn at format).
    pub fn incarnation(&self) -> u64 {
        self.store.checkpointed().incarnation
    }

    /// The journal's last position (what votes compare).
    pub fn position(&self) -> Position {
        self.journal.last()
    }

    /// Rule 9: after a storage failure, what the driver must do to bring
    /// this node back; `None` while its storage works.
    pub fn recovery(&self) -> Option<Recovery> {
        self.recovery
    }

    /// Whether the node may stand for election: consistent, and not a
    /// leader that just found its data links silent (`check_data_links`).
    pub fn electable(&self) -> bool {
        self.health == Health::Consistent && self.data_links_silent_until.is_none()
    }

    /// Leader whose first record is applied, inside its lease: may serve.
    pub fn serving(&self, now: Instant) -> bool {
        self.leader.as_ref().is_some_and(|l| l.ready) && self.in_lease(now)
    }

    /// Leader whose first record is applied (lease not considered): may
    /// take writes, which are acknowledged only inside the lease.
    pub fn leading_and_ready(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.ready) && self.health == Health::Consistent
    }

    /// The volume's size in bytes.
    pub fn volume_len(&self) -> u64 {
        self.store.volume_len()
    }

    /// The block store's applied position.
    pub fn applied(&self) -> Position {
        self.store.applied()
    }

    /// The store (the simulator compares replicas through it).
    pub fn store(&self) -> &Store<D, M> {
        &self.store
    }

    /// The journal (tests and the simulator).
    pub fn journal(&self) -> &Journal<J> {
        &self.journal
    }

    /// The journal, data and metadata disks, in place: fault injection
    /// in tests and the simulator (a `MemDisk`'s next sync fails).
    pub fn disks_mut(&mut self) -> (&mut J, &mut D, &mut M) {
        let (d, m) = self.store.disks_mut();
        (self.journal.disk_mut(), d, m)
    }

    /// Gives the disks back (the simulator crashes and reopens nodes).
    pub fn into_disks(self) -> (J, D, M) {
        let (d, m) = self.store.into_disks();
        (self.journal.into_disk(), d, m)
    }

    pub(crate) fn in_lease(&self, now: Instant) -> bool {
        self.view.lease_until.is_some_and(|t| now < t)
    }

    pub(crate) fn slot(&self, peer: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| *p == peer)
    }

    /// The core's view after its latest step. A new epoch or leadership
    /// ends whatever the old one had in flight; becoming leader appends the
    /// epoch's no-op record (rule 8).
    pub fn set_view(&mut self, now: Instant, view: View, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        let changed = view.epoch != self.view.epoch || view.leader != self.view.leader;
        self.view = view;
        if changed {
            self.matched_in_epoch = 0;
            self.reply_due = None;
            self.replied_durable = 0;
            if let Some(l) = self.leader.take() {
                l.fail_all(ClientError::NotActive, out);
            }
            self.resync_in_abandon_if_other_leader();
            if view.leader == Some(self.id) {
                self.become_leader(now, out);
            }
        }
        self.report(out);
    }

    /// Read `buf.len()` bytes at `offset`: only on a serving leader (rule 15).
    pub fn read(&self, now: Instant, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check_serving(now)?;
        self.check_range(offset, buf.len() as u64)?;
        self.store.read(offset, buf).map_err(|e| ClientError::Storage(crate::replica::chain(&e)))
    }

    /// Writes need leadership, not the lease: a write taken while the lease
    /// is momentarily unconfirmed is journaled and acknowledged only once
    /// a lease holds again (or fails at its timeout).
    pub(crate) fn check_leading(&self) -> Result<(), ClientError> {
        if let Health::Failed(why) = &self.health {
            return Err(ClientError::Storage(why.clone()));
        }
        match &self.leader {
            None => Err(ClientError::NotActive),
            Some(l) if !l.ready => Err(ClientError::NotReady),
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn check_serving(&self, now: Instant) -> Result<(), ClientError> {
        if let Health::Failed(why) = &self.health {
            return Err(ClientError::Storage(why.clone()));
        }
        match &self.leader {
            None => Err(ClientError::NotActive),
            Some(_) if !self.in_lease(now) => Err(ClientError::NotActive),
            Some(l) if !l.ready => Err(ClientError::NotReady),
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let volume_len = self.store.volume_len();
        match offset.checked_add(len) {
            Some(end) if end <= volume_len => Ok(()),
            _ => Err(ClientError::OutOfRange { offset, len, volume_len }),
        }
    }

    /// A message from a peer's replica.
    pub fn receive(&mut self, now: Instant, from: NodeId, msg: Msg, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        if self.slot(from).is_none() || matches!(self.health, Health::Failed(_) | Health::SplitBrain(_)) {
            return;
        }
        // Fencing: act only on the current epoch, and only on the leader's
        // word (or, as leader, on replies). A newer epoch is adopted through
        // the core first, which persists it; until then it is ignored.
        if msg.epoch() != self.view.epoch {
            return;
        }
        let from_my_leader = self.view.leader == Some(from) && self.view.leader != Some(self.id);
        if msg.from_leader() != from_my_leader {
            return;
        }
        if let Some(inc) = msg.incarnation() {
            if !self.admit_incarnation(now, from, inc, out) {
                return;
            }
        }
        if self.leader.is_none() {
            // A peer is heard on the data links again: stand again.
            self.data_links_silent_until = None;
        }
        match msg {
            Msg::Append { prev, records, commit, ks, peer_inc, stream, .. } => {
                // The first such Append fixes the target: later commits
                // cannot have counted the replaced box.
                let echoed = peer_inc == self.incarnation() && self.learner_target.is_none();
                if echoed && self.store.checkpointed().learner {
                    self.learner_target = Some((self.view.epoch, commit));
                }
                self.on_append(from, prev, records, commit, &ks, stream, out)
            }
            Msg::ResyncBegin { id, hash, .. } => self.on_resync_begin(from, id, hash, out),
            Msg::ResyncData { id, n, offset, data, .. } => self.on_resync_data(from, id, n, offset, &data, out),
            Msg::ResyncEnd { id, n, point, .. } => self.on_resync_end(from, id, n, point, out),
            Msg::VerifyRequest { id, offset, count, .. } => self.on_verify_request(from, id, offset, count, out),
            Msg::AppendReply { ok, matched, last, applied, k, consistent, learner, stream, .. } => {
                let reply = crate::leader::Reply { ok, matched, last, applied, k, consistent, learner, stream };
                self.on_append_reply(now, from, reply, out)
            }
            Msg::ResyncAck { id, n, state, .. } => self.on_resync_ack(now, from, id, n, state, out),
            Msg::VerifyReply { id, offset, applied, hashes, .. } => {
                self.on_verify_reply(from, id, offset, applied, &hashes, out)
            }
        }
        self.report(out);
    }

    /// Rule 18: a reply from a peer box carries its incarnation. The
    /// first one heard is adopted; a different one means the box was
    /// replaced: everything known of the old box (its matched position,
    /// its K, a resync in progress) is forgotten and the old incarnation is
    /// retired, so its late replies cannot speak for the new box. Returns
    /// whether to act on the message.
    fn admit_incarnation(&mut self, now: Instant, from: NodeId, inc: u64, out: &mut Vec<Out>) -> bool {
        let Some(slot) = self.slot(from) else { return false };
        let old = match self.peer_inc[slot] {
            None => {
                self.peer_inc[slot] = Some(inc);
                return true;
            }
            Some(known) if known == inc => return true,
            Some(_) if self.retired_inc[slot].contains(&inc) => return false,
            Some(old) => old,
        };
        let retired = &mut self.retired_inc[slot];
        if retired.len() == MAX_RETIRED {
            retired.remove(0);
        }
        retired.push(old);
        self.peer_inc[slot] = Some(inc);
        self.peer_k[slot] = Position::ZERO;
        let next = self.journal.last().seq + 1;
        if let Some(l) = self.leader.as_mut() {
            l.peers[slot] = crate::leader::Progress::new(next, now);
        }
        out.push(Out::Notice(ReplNotice::PeerReplaced { peer: from, old, new: inc }));
        true
    }

    /// Rule 5 on a follower: accept records only if `prev` matches; a
    /// conflicting uncommitted tail is truncated; a conflict at a committed
    /// seq is split brain (rule 14) and nothing is changed.
    #[allow(clippy::too_many_arguments, reason = "the Append's fields, unpacked once in `receive`")]
    fn on_append(
        &mut self,
        from: NodeId,
        prev: Position,
        records: Vec<Record>,
        commit: u64,
        ks: &[(NodeId, Position)],
        stream: u64,
        out: &mut Vec<Out>,
    ) {
        // The leader's word on every K replaces what was known: a K can go
        // down (issue 8). A stale value from a reordered Append is harmless:
        // discards never trust a bitmap below the K they skipped.
        for (node, k) in ks {
            if let Some(s) = self.slot(*node) {
                self.peer_k[s] = *k;
            }
        }
        // (Mutation: a resync of an earlier epoch is given up and the store
        // declared consistent at its old K. Resync ids carry their epoch.)
        let earlier = self.resync_in.as_ref().is_none_or(|r| r.id >> 32 < self.view.epoch);
        if self.cfg.mutations.resume_resync_by_records && earlier && self.health == Health::Resyncing {
            if let Err(e) = self.store.finish_resync(self.store.applied()) {
                return self.fail(&e.into(), out);
            }
            self.resync_in = None;
            self.health = Health::Consistent;
        }
        if self.health != Health::Consistent {
            // Rule 12: a resyncing node journals nothing; its reply says so.
            self.reply_due = Some(ReplyDue { to: from, ok: false, stream, upto: 0 });
            return;
        }
        if !self.cfg.mutations.skip_prev_check && !self.prev_matches(prev) {
            self.reply_due = Some(ReplyDue { to: from, ok: false, stream, upto: 0 });
            return;
        }
        // The prefix through `prev` matches: the commit point may already
        // count up to it, so a full ring can be compacted below.
        self.commit = self.commit.max(commit.min(self.matched_in_epoch.max(prev.seq)));
        let mut upto = prev.seq;
        let mut refused = false;
        for rec in records {
            if Some(rec.seq) != upto.checked_add(1) {
                break; // not consecutive: malformed; keep what matched so far
            }
            match self.accept_record(from, rec, out) {
                Ok(true) => upto += 1,
                Ok(false) => {
                    refused = true;
                    break;
                }
                Err(e) => return self.fail(&e, out),
            }
        }
        if self.health != Health::Consistent {
            return; // split brain: refuse to join, say nothing more
        }
        // The prefix that was taken still matches, and the commit point it
        // carries still counts: a follower whose ring is full learns from it
        // what it may apply and compact, and then has room for the rest.
        self.matched_in_epoch = self.matched_in_epoch.max(upto);
        self.commit = self.commit.max(commit.min(self.matched_in_epoch));
        let upto = self.journal.last().seq;
        self.reply_due = Some(ReplyDue { to: from, ok: !refused, stream, upto });
        self.needs_sync = true;
    }

    /// Whether our journal holds `prev` (or a committed prefix reaching it).
    fn prev_matches(&self, prev: Position) -> bool {
        let d = self.journal.discarded();
        if prev.seq < d.seq {
            return true; // discarded records were committed: the prefix matches
        }
        self.journal.position_of(prev.seq) == Some(prev)
    }

    /// Takes one record from the leader. `Ok(false)`: refused (malformed,
    /// or split brain); `Err`: this node's storage failed.
    fn accept_record(&mut self, from: NodeId, rec: Record, out: &mut Vec<Out>) -> Result<bool, StorageError> {
        if rec.seq <= self.journal.discarded().seq {
            return Ok(true);
        }
        // Bad input changes nothing: a record that could never be applied
        // is refused before it touches the journal.
        let len = rec.payload.len() as u64;
        if self.check_range(rec.offset, len).is_err() || len > self.journal.max_payload() {
            let reason = format!("record {} of {len} bytes at {} does not fit the volume", rec.seq, rec.offset);
            out.push(Out::Notice(ReplNotice::Refused { peer: from, reason }));
            return Ok(false);
        }
        match self.journal.position_of(rec.seq) {
            Some(p) if p.epoch == rec.epoch => return Ok(true),
            Some(p) => {
                let committed = self.commit.max(self.store.applied().seq);
                if rec.seq <= committed {
                    let detail = format!(
                        "record {} is committed here with epoch {} but node {from} sends epoch {}",
                        rec.seq, p.epoch, rec.epoch
                    );
                    self.split_brain(from, detail, out);
                    return Ok(false);
                }
                self.journal.truncate_after(rec.seq - 1)?;
                let keep = (rec.seq - 1 - self.journal.discarded().seq) as usize;
                self.extents.truncate(keep);
            }
            None => {}
        }
        match self.journal.append_reserving(&rec, NOOP_RESERVE) {
            Ok(()) => {}
            Err(JournalError::Full { .. }) => {
                self.compact()?;
                if let Err(e) = self.journal.append_reserving(&rec, NOOP_RESERVE) {
                    return self.refuse_or_fail(from, e, out);
                }
            }
            Err(e) => return self.refuse_or_fail(from, e, out),
        }
        self.extents.push_back((rec.offset, rec.payload.len() as u64));
        self.remember_received(rec);
        Ok(true)
    }

    /// Keeps a record taken from the leader for applying (bounded; a
    /// truncation or a gap just means the journal is read instead).
    fn remember_received(&mut self, rec: Record) {
        if self.received.back().is_some_and(|b| Some(b.seq) != rec.seq.checked_sub(1)) {
            self.received.clear();
            self.received_bytes = 0;
        }
        self.received_bytes += rec.payload.len() as u64;
        self.received.push_back(rec);
        while self.received_bytes > RECEIVED_BYTES {
            match self.received.pop_front() {
                Some(r) => self.received_bytes -= r.payload.len() as u64,
                None => break,
            }
        }
    }

    /// Forgets received records (the journal was reset by a resync).
    pub(crate) fn clear_received(&mut self) {
        self.received.clear();
        self.received_bytes = 0;
    }

    /// A received record by seq, if still in RAM; older ones are dropped.
    fn received(&mut self, seq: u64) -> Option<Record> {
        while self.received.front().is_some_and(|r| r.seq < seq) {
            if let Some(r) = self.received.pop_front() {
                self.received_bytes -= r.payload.len() as u64;
            }
        }
        self.received.front().filter(|r| r.seq == seq).cloned()
    }

    /// A journal refusal caused by the message (not chained, too large,
    /// full) is the sender's problem; anything else is a storage failure.
    fn refuse_or_fail(&mut self, from: NodeId, e: JournalError, out: &mut Vec<Out>) -> Result<bool, StorageError> {
        match e {
            JournalError::NotChained { .. } | JournalError::TooLarge { .. } | JournalError::Full { .. } => {
                out.push(Out::Notice(ReplNotice::Refused { peer: from, reason: chain(&e) }));
                Ok(false)
            }
            e => Err(e.into()),
        }
    }

    pub(crate) fn split_brain(&mut self, peer: NodeId, detail: String, out: &mut Vec<Out>) {
        out.push(Out::Notice(ReplNotice::SplitBrain { peer, detail: detail.clone() }));
        self.health = Health::SplitBrain(format!("node {peer}: {detail}"));
        if let Some(l) = self.leader.take() {
            l.fail_all(ClientError::NotActive, out);
        }
    }

    /// Storage failed: rule 9, never retried; the node serves nothing. The
    /// "inconsistent, failed" mark goes to the metadata disk before
    /// anything else, vouching for the journal only as far as it was
    /// synced (no later record was ever reported durable: replies follow
    /// syncs). See [`Recovery`].
    pub(crate) fn fail(&mut self, e: &StorageError, out: &mut Vec<Out>) {
        if matches!(self.health, Health::Failed(_)) {
            return;
        }
        let detail = e.chain();
        let recovery = match self.store.mark_failed(self.journal.durable()) {
            Ok(()) => Recovery::Reopen,
            Err(e) => {
                out.push(Out::Notice(ReplNotice::StorageFailed { detail: format!("failure mark: {}", chain(&e)) }));
                Recovery::Reboot
            }
        };
        self.recovery = Some(recovery);
        out.push(Out::Notice(ReplNotice::StorageFailed { detail: detail.clone() }));
        if let Some(l) = self.leader.take() {
            l.fail_all(ClientError::Storage(detail.clone()), out);
        }
        self.health = Health::Failed(detail);
        self.report(out);
    }

    /// Group commit in one call, for drivers whose clock cannot move
    /// during the sync (tests, the simulator's instantaneous disks):
    /// [`Replica::sync_journal`], [`Replica::after_sync`] and [`Replica::acknowledge`] at `now`.
    pub fn sync(&mut self, now: Instant, out: &mut Vec<Out>) {
        self.sync_journal(out);
        self.after_sync(now, out);
        self.acknowledge(now, out);
    }

    /// Group commit, first half, blocking: one journal fdatasync for
    /// everything appended so far ([`Replica::start_sync`], the job run
    /// here, [`Replica::finish_sync`]). It may block for long; the driver
    /// reads its clock (and hands over the core's latest view) only after
    /// it returns, then calls [`Replica::after_sync`]: a lease judged with
    /// a time read before a slow sync would acknowledge writes after the
    /// lease has ended, when another node may already serve.
    pub fn sync_journal(&mut self, out: &mut Vec<Out>) {
        if let Some((sync, job)) = self.start_sync(out) {
            self.finish_sync(sync, job.run(), out);
        }
    }

    /// Group commit that lets the driver go on appending while the
    /// fdatasync runs: starts a journal sync covering every record
    /// appended so far, if there are any no sync covers and none is
    /// running. The driver runs the job (on any thread), then calls
    /// [`Replica::finish_sync`] and [`Replica::after_sync`], in that
    /// order, with the clock read after the job returned.
    pub fn start_sync(&mut self, out: &mut Vec<Out>) -> Option<(JournalSync, SyncJob)> {
        if matches!(self.health, Health::Failed(_)) || !self.needs_sync || self.sync_running {
            return None;
        }
        match self.journal.start_sync() {
            Ok(started) => {
                self.needs_sync = false;
                self.sync_running = true;
                Some(started)
            }
            Err(e) => {
                self.fail(&e.into(), out);
                None
            }
        }
    }

    /// The started sync's job returned `result`: what it covers is
    /// durable, or the replica has failed (rule 9).
    pub fn finish_sync(&mut self, sync: JournalSync, result: std::io::Result<()>, out: &mut Vec<Out>) {
        self.sync_running = false;
        if matches!(self.health, Health::Failed(_)) {
            return;
        }
        if let Err(e) = self.journal.finish_sync(sync, result) {
            self.fail(&e.into(), out);
        }
    }

    /// Whether a started sync has not finished.
    pub fn sync_running(&self) -> bool {
        self.sync_running
    }

    /// Group commit, second half, with `now` read after the sync: what
    /// depends on durability: replies (follower), commits (leader),
    /// applying, compaction. The leader's acknowledgements come from
    /// [`Replica::acknowledge`], with a time read after this.
    pub fn after_sync(&mut self, now: Instant, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        // Everything below goes by the journal's durable position, so it is
        // right even if records were appended since the sync (a view taken
        // in between made this node leader and appended its no-op).
        if matches!(self.health, Health::Failed(_)) {
            return;
        }
        if self.leader.is_some() {
            self.leader_after_sync(now, out);
            self.maybe_compact(out);
        } else {
            self.apply_committed(out);
            // Compact before answering: a refusal for a full ring is
            // answered with the room already made, so the resend fits.
            self.maybe_compact(out);
            self.send_reply_due(out);
        }
        self.report(out);
    }

    /// The due AppendReply, once the journal is durable through what its
    /// Append added (a sync started before the Append arrived does not
    /// cover it; a truncation since may have left less to wait for).
    /// Before that, a reply that reports progress: a sync that covered an
    /// earlier Append's records lets the leader count them now, not at
    /// the next sync.
    fn send_reply_due(&mut self, out: &mut Vec<Out>) {
        let Some(due) = self.reply_due else { return };
        let durable = self.journal.durable().seq;
        let covered = durable >= due.upto.min(self.journal.last().seq);
        if covered {
            self.reply_due = None;
        }
        if covered || (due.ok && durable > self.replied_durable) {
            self.replied_durable = durable;
            let msg = self.append_reply(due.ok, due.stream);
            out.push(Out::Send { to: due.to, msg });
        }
    }

    pub(crate) fn append_reply(&self, ok: bool, stream: u64) -> Msg {
        Msg::AppendReply {
            epoch: self.view.epoch,
            inc: self.incarnation(),
            ok,
            matched: self.matched_in_epoch.min(self.journal.durable().seq),
            last: self.journal.last(),
            applied: self.store.applied(),
            k: self.store.checkpointed().applied,
            consistent: self.health == Health::Consistent,
            learner: self.store.checkpointed().learner,
            stream,
        }
    }

    /// Applies committed records that are durable here, in order (rules 6, 7).
    pub(crate) fn apply_committed(&mut self, out: &mut Vec<Out>) {
        if self.health != Health::Consistent {
            return;
        }
        let upto = self.commit.min(self.journal.durable().seq);
        while self.store.applied().seq < upto {
            let seq = self.store.applied().seq + 1;
            // Recently appended records are still in RAM: no re-read of the journal.
            let cached = self.leader.as_ref().and_then(|l| l.recent_record(seq)).or_else(|| self.received(seq));
            let rec = match cached {
                Some(r) => r,
                None => match self.journal.read(seq) {
                    Ok(r) => r,
                    Err(e) => return self.fail(&e.into(), out),
                },
            };
            if let Err(e) = self.store.apply(&rec) {
                return self.fail(&e.into(), out);
            }
            if let Some(l) = self.leader.as_mut() {
                l.on_applied(&rec);
            }
        }
        self.maybe_end_learner(out);
    }

    /// Rule 18: a learner becomes a voter once it has applied the commit
    /// point of an Append of epoch E sent after the leader heard this box
    /// (its incarnation echoed): commits up to there may have counted the
    /// replaced box's replies, later ones cannot. It votes from E + 1 on
    /// (the box it replaced may have voted in E).
    pub(crate) fn maybe_end_learner(&mut self, out: &mut Vec<Out>) {
        let Some((epoch, commit)) = self.learner_target else { return };
        if self.store.checkpointed().learner && self.store.applied().seq >= commit {
            self.learner_target = None;
            if let Err(e) = self.store.end_learner(epoch + 1) {
                self.fail(&e.into(), out);
            }
        }
    }

    /// The incarnation last heard from the peer in `slot` (0: none yet).
    pub(crate) fn peer_incarnation(&self, slot: usize) -> u64 {
        self.peer_inc[slot].unwrap_or(0)
    }

    /// Rule 18: what the core may do with this box's vote.
    pub fn membership(&self) -> triad_core::Membership {
        let c = self.store.checkpointed();
        if c.learner {
            triad_core::Membership::Learner
        } else {
            triad_core::Membership::Voter { votes_from: c.votes_from }
        }
    }

    /// Rules 9 and 10: when the ring runs short, checkpoint the store
    /// (K = applied, fsynced), record in each lagging peer's bitmap what
    /// the discard drops, persist those bitmaps, then discard through K.
    pub(crate) fn maybe_compact(&mut self, out: &mut Vec<Out>) {
        if self.journal_free_pct() >= self.cfg.compact_below_free_pct || self.health != Health::Consistent {
            return;
        }
        // Nothing to gain (no K can move past the discarded point) unless
        // the ring is short enough for `compact` to discard through this
        // node's own K: then skip, or every sync in this band would fsync
        // the store for nothing.
        let discarded = self.journal.discarded().seq;
        let everyone =
            self.store.applied().seq.min(self.journal.durable().seq).min(self.peer_k[0].seq).min(self.peer_k[1].seq);
        if everyone <= discarded && !self.journal_short() {
            return;
        }
        if let Err(e) = self.compact() {
            self.fail(&e, out);
        }
    }

    /// Checkpoint, then discard: first only what every node's K covers
    /// (nothing to record); if the ring is still short, everything through
    /// this node's K, with the lagging peers' bitmaps persisted first.
    pub fn compact(&mut self) -> Result<(), StorageError> {
        let k = self.store.checkpoint()?;
        self.last_checkpoint = self.now;
        let own = k.seq.min(self.journal.durable().seq);
        let everyone = own.min(self.peer_k[0].seq).min(self.peer_k[1].seq);
        self.discard_through(everyone)?;
        if self.journal_short() {
            self.discard_through(own)?;
        }
        Ok(())
    }

    /// The ring is short enough to discard past lagging peers (recording
    /// what they miss in their bitmaps).
    fn journal_short(&self) -> bool {
        self.journal_free_pct() < self.cfg.compact_below_free_pct / 2
            || self.journal.free_bytes() < self.journal.max_payload() * 2
    }

    fn journal_free_pct(&self) -> u64 {
        self.journal.free_bytes() * 100 / self.journal.ring_len().max(1)
    }

    /// Rule 10: discard through `through`, after recording in the bitmap of
    /// each peer whose K does not cover them the blocks of the discarded records.
    fn discard_through(&mut self, through: u64) -> Result<(), StorageError> {
        let discarded = self.journal.discarded().seq;
        if through <= discarded {
            return Ok(());
        }
        for slot in 0..2 {
            let peer_k = self.peer_k[slot];
            // Records the peer's K covers get no bits. A K can go down (a
            // resync ending below it, a replaced box), so the bitmap then
            // vouches only for what is discarded after them: its base
            // rises to the last record skipped, and a peer whose K is
            // below that gets a hash resync (issue 8). Bits below the new
            // base are dropped: a peer at or past the base does not need them.
            let from = if peer_k.seq >= through {
                let at = self.journal.position_of(through);
                at.ok_or(StorageError::MissingRecord { seq: through })?
            } else if peer_k.seq > discarded {
                peer_k
            } else {
                // A clean bitmap starts over from where its bits will
                // start: it can vouch for nothing this journal discarded
                // before (a resync may have reset the journal, and peer_k
                // may be a new leader's ZERO), so its base never goes
                // below `discarded`.
                self.journal.discarded()
            };
            if from.seq > discarded || self.bitmaps[slot].is_clean() {
                self.bitmaps[slot].reset(from);
            }
            let from = from.seq;
            for seq in from + 1..=through {
                let i = (seq - discarded - 1) as usize;
                if let Some(&(off, len)) = self.extents.get(i) {
                    if len > 0 {
                        self.bitmaps[slot].set_range(off, len)?;
                    }
                }
            }
            self.store.persist_bitmap(slot as u32, &self.bitmaps[slot])?;
        }
        self.journal.discard_through(through)?;
        self.extents.drain(..(through - discarded) as usize);
        Ok(())
    }

    /// A checkpoint now and then even without compaction, so K (which
    /// peers' bitmaps start from) stays close to what was applied.
    fn maybe_checkpoint(&mut self, now: Instant, out: &mut Vec<Out>) {
        let due = now.since(self.last_checkpoint) >= CHECKPOINT_EVERY;
        if due && self.health == Health::Consistent && self.store.applied() != self.store.checkpointed().applied {
            self.last_checkpoint = now;
            if let Err(e) = self.store.checkpoint() {
                self.fail(&e.into(), out);
            }
        }
    }

    /// A peer reported its K (a consistent AppendReply of this leader's
    /// epoch): a bitmap whose every bit is for records at or below that K
    /// is no longer needed. Within one stream (this leader's epoch, and
    /// since the peer's last resync began) a consistent peer's K only
    /// grows, so the highest one heard is its latest even when replies
    /// come reordered. It goes down across epochs (a new leader starts
    /// from ZERO, `become_leader`) and at a resync's end, which may be
    /// below what the peer had (the leader's applied point lags a
    /// follower's while its no-op is uncommitted): the end sets it
    /// outright, and replies of older streams are ignored
    /// (`on_append_reply`).
    pub(crate) fn peer_k_advanced(&mut self, slot: usize, k: Position) {
        self.peer_k[slot] = self.peer_k[slot].max(k);
        if !self.bitmaps[slot].is_clean() && self.peer_k[slot].seq >= self.journal.discarded().seq {
            // In RAM only: a restart reloads the persisted superset, which is safe.
            self.bitmaps[slot].reset(self.peer_k[slot]);
        }
    }

    /// Time passed: retransmissions, resync pacing, write timeouts.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        if self.leader.is_some() {
            self.leader_tick(now, out);
        }
        self.follower_resync_tick(out);
        self.maybe_checkpoint(now, out);
        if self.leader.is_none() && self.data_links_silent_until.is_some_and(|t| now >= t) {
            self.data_links_silent_until = None;
        }
        self.report(out);
    }

    /// The earliest instant [`Replica::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                d = Some(d.map_or(x, |d| d.min(x)));
            }
        };
        if let Some(l) = &self.leader {
            consider(Some(l.next_deadline(&self.cfg, self.now)));
        }
        if self.health == Health::Consistent && self.store.applied() != self.store.checkpointed().applied {
            consider(Some(self.last_checkpoint.add(CHECKPOINT_EVERY)));
        }
        if self.leader.is_none() {
            consider(self.data_links_silent_until);
        }
        // Never a deadline in the past: a timer that cannot be served (a
        // peer nothing can be sent to, say) must not spin the driver; the
        // replica is ticked at most once a millisecond.
        d.map(|d| d.max(self.now.add(MIN_TICK)))
    }

    fn report(&mut self, out: &mut Vec<Out>) {
        let p = self.journal.last();
        if self.reported_position != Some(p) {
            self.reported_position = Some(p);
            out.push(Out::Position(core_position(p)));
        }
        let e = self.electable();
        if self.reported_electable != Some(e) {
            self.reported_electable = Some(e);
            out.push(Out::Electable(e));
        }
        let m = self.membership();
        if self.reported_membership != Some(m) {
            self.reported_membership = Some(m);
            out.push(Out::Membership(m));
        }
    }

    /// A snapshot for status.
    pub fn status(&self, now: Instant) -> ReplStatus {
        ReplStatus {
            health: self.health.clone(),
            serving: self.serving(now),
            last: self.journal.last(),
            durable: self.journal.durable(),
            commit: self.commit,
            applied: self.store.applied(),
            k: self.store.checkpointed().applied,
            discarded: self.journal.discarded(),
            volume_len: self.store.volume_len(),
            journal_free: self.journal.free_bytes(),
            pending_writes: self.leader.as_ref().map_or(0, |l| l.pending_writes()),
            learner: self.store.checkpointed().learner,
            peers: (0..2)
                .map(|slot| {
                    let lp = self.leader.as_ref().map(|l| &l.peers[slot]);
                    PeerRepl {
                        node_id: self.peers[slot],
                        matched: lp.map_or(0, |p| p.matched),
                        k: self.peer_k[slot],
                        consistent: lp.is_none_or(|p| p.consistent),
                        bitmap_dirty_bytes: self.bitmaps[slot].dirty_bytes(),
                        resync: lp.and_then(|p| p.resync.as_ref()).map(|r| r.progress(now)),
                    }
                })
                .collect(),
        }
    }
}

/// An error and its sources, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Microseconds of a duration, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

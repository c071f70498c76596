//! The leader's side of replication: the no-op record of a new epoch
//! (rule 8), client writes as journal records streamed to both peers in a
//! pipeline (rule 6), the commit rule (durable on the leader and on one
//! consistent peer, in the leader's own epoch: Raft's rule with Figure 8),
//! applying and acknowledging inside the lease, and catching a peer up
//! from the journal or handing it to block resync (rule 11).
//!
//! ```text
//!  write ─▶ append (page cache) ─▶ Append to both peers ─┐
//!                   sync() ─▶ leader durable ───────────┤─▶ commit = min(own durable,
//!  AppendReply(matched) from a consistent peer ─────────┘           best peer matched)
//!        commit ≥ no-op ─▶ apply in seq order ─▶ acknowledge (only inside the lease)
//! ```

use std::collections::VecDeque;

use bytes::Bytes;

use triad_core::{Instant, NodeId};
use triad_volume::{Disk, Position, Record};

use crate::msg::Msg;
use crate::replica::{micros, Replica};
use crate::resync::LeaderResync;
use crate::verify::Verify;
use crate::{ClientError, Out, ReplConfig, ReplNotice, StorageError, WriteId};

/// Least time between two commit-only probes to a peer, µs.
const COMMIT_PROBE_US: u64 = 5_000;
/// Records kept in RAM after appending, so streaming them does not re-read the journal.
const RECENT_BYTES: u64 = 32 << 20;

/// A client write waiting for its last record to be applied.
#[derive(Debug)]
struct Pending {
    id: WriteId,
    last_seq: u64,
    deadline: Instant,
}

/// A client write not yet fully in the journal: the ring had no room
/// (uncommitted records cannot be discarded). It waits for commits to free
/// space, in arrival order, until its deadline.
#[derive(Debug)]
struct Blocked {
    id: WriteId,
    offset: u64,
    /// Records are slices of it, sharing the buffer (no copy per record).
    data: Bytes,
    /// Bytes already appended as records.
    done: usize,
    last_seq: u64,
    deadline: Instant,
}

/// What the leader knows of one peer.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Highest seq durable on the peer and matching this journal.
    pub matched: u64,
    /// Next seq to send.
    pub next: u64,
    /// Where to restart sending when nothing was heard (the last agreed point + 1).
    pub probe_from: u64,
    pub last_heard: Option<Instant>,
    last_sent: Option<Instant>,
    pub last_progress: Instant,
    sent_commit: u64,
    /// The peer's store is consistent (as it last said).
    pub consistent: bool,
    /// The peer is a learner (rule 18, as it last said).
    pub learner: bool,
    /// The peer's journal disagrees with a committed record here.
    pub split: bool,
    pub resync: Option<LeaderResync>,
    /// The stream Appends to this peer carry: the id of the last resync
    /// begun for it (0: none yet). Replies echo it; an older one is a
    /// reply to an Append sent before that resync began.
    pub stream: u64,
}

impl Progress {
    /// A peer nothing is known of yet: probe from `next`.
    pub(crate) fn new(next: u64, now: Instant) -> Progress {
        Progress {
            matched: 0,
            next,
            probe_from: next,
            last_heard: None,
            last_sent: None,
            last_progress: now,
            sent_commit: 0,
            consistent: true,
            learner: false,
            split: false,
            resync: None,
            stream: 0,
        }
    }
}

/// State that exists only while this node leads.
#[derive(Debug)]
pub(crate) struct LeaderState {
    pub epoch: u64,
    pub noop_seq: u64,
    pub ready: bool,
    pub peers: [Progress; 2],
    writes: VecDeque<Pending>,
    blocked: VecDeque<Blocked>,
    recent: VecDeque<Record>,
    recent_bytes: u64,
    pub verify: Option<Verify>,
    pub resync_counter: u64,
    /// Ring bytes of records after the commit point (see `max_uncommitted`).
    uncommitted: u64,
    /// When this node became leader (the data links' silence counts from
    /// here until a peer is first heard).
    since: Instant,
}

/// Ring bytes a record of `len` payload bytes takes (header, payload, alignment).
fn ring_bytes(len: u64) -> u64 {
    (triad_volume::journal::RECORD_HEADER_LEN as u64 + len).div_ceil(8) * 8
}

/// An AppendReply's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub ok: bool,
    pub matched: u64,
    pub last: Position,
    pub applied: Position,
    pub k: Position,
    pub consistent: bool,
    pub learner: bool,
    pub stream: u64,
}

impl LeaderState {
    /// Fails every waiting write (leadership ended or storage failed).
    pub fn fail_all(self, err: ClientError, out: &mut Vec<Out>) {
        for w in self.writes {
            out.push(Out::WriteDone { id: w.id, result: Err(err.clone()) });
        }
        for b in self.blocked {
            out.push(Out::WriteDone { id: b.id, result: Err(err.clone()) });
        }
    }

    /// Writes waiting for commit or for journal space.
    pub fn pending_writes(&self) -> usize {
        self.writes.len() + self.blocked.len()
    }

    /// A record reached the store: resyncs in their copy phase must copy
    /// its blocks (again), so no copy lands older than the end point.
    pub fn on_applied(&mut self, rec: &Record) {
        for p in &mut self.peers {
            if let Some(r) = p.resync.as_mut() {
                r.on_applied(rec.offset, rec.payload.len() as u64);
            }
        }
    }

    pub fn next_deadline(&self, cfg: &ReplConfig, now: Instant) -> Instant {
        let mut d = Instant(u64::MAX);
        if let Some(w) = self.writes.front() {
            d = d.min(w.deadline);
        }
        if let Some(b) = self.blocked.front() {
            d = d.min(b.deadline);
        }
        d = d.min(self.last_data_contact().add(cfg.write_timeout));
        for p in &self.peers {
            let base = p.last_sent.unwrap_or(now);
            d = d.min(base.add(cfg.retransmit));
            if p.sent_commit < self.noop_seq.max(1) || p.resync.is_some() {
                d = d.min(base.add(core::time::Duration::from_micros(COMMIT_PROBE_US)));
            }
        }
        if let Some(v) = &self.verify {
            d = d.min(v.deadline());
        }
        d
    }

    /// The last time either peer was heard on the data links (or when
    /// leadership began, if neither has been yet).
    pub fn last_data_contact(&self) -> Instant {
        self.peers.iter().filter_map(|p| p.last_heard).fold(self.since, Instant::max)
    }

    fn remember(&mut self, rec: &Record) {
        self.recent_bytes += rec.payload.len() as u64;
        self.recent.push_back(rec.clone());
        while self.recent_bytes > RECENT_BYTES {
            match self.recent.pop_front() {
                Some(r) => self.recent_bytes -= r.payload.len() as u64,
                None => break,
            }
        }
    }

    /// A recently appended record, cloned (for applying).
    pub fn recent_record(&self, seq: u64) -> Option<Record> {
        self.recent(seq).cloned()
    }

    fn recent(&self, seq: u64) -> Option<&Record> {
        let first = self.recent.front()?.seq;
        self.recent.get(usize::try_from(seq.checked_sub(first)?).ok()?)
    }
}

impl<J: Disk, D: Disk, M: Disk> Replica<J, D, M> {
    /// Rule 8: a new leader's first record is an empty one in its epoch; it
    /// serves nothing until that record is committed and applied.
    pub(crate) fn become_leader(&mut self, now: Instant, out: &mut Vec<Out>) {
        if !self.electable() {
            return;
        }
        let epoch = self.view.epoch;
        let last = self.journal.last();
        let rec = Record { epoch, seq: last.seq + 1, prev: last, offset: 0, payload: Bytes::new() };
        if let Err(e) = self.append_own(&rec) {
            return self.fail(&e, out);
        }
        let progress = || Progress::new(rec.seq, now);
        let skip_noop = self.cfg.mutations.skip_noop;
        let mut l = LeaderState {
            epoch,
            noop_seq: rec.seq,
            ready: skip_noop,
            peers: [progress(), progress()],
            writes: VecDeque::new(),
            blocked: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            verify: None,
            resync_counter: 0,
            uncommitted: 0,
            since: now,
        };
        l.remember(&rec);
        // Everything after the commit point, the inherited tail included.
        let base = self.journal.discarded().seq + 1;
        l.uncommitted = self
            .extents
            .iter()
            .enumerate()
            .filter(|(i, _)| base + *i as u64 > self.commit)
            .map(|(_, e)| ring_bytes(e.1))
            .sum();
        self.leader = Some(l);
        // K's heard before this epoch (relayed by another leader, or from
        // an earlier term) may be above what a peer holds now: a resync
        // may have ended below them, or the box was replaced (issue 8).
        // Only the peers' own replies in this epoch count.
        self.peer_k = [Position::ZERO; 2];
        for slot in 0..2 {
            self.send_records(slot, now, true, out);
        }
    }

    /// Appends one of this leader's records; on a full ring, compacts once first.
    fn append_own(&mut self, rec: &Record) -> Result<(), StorageError> {
        // (The no-op of a new epoch; client writes go through `drain_blocked`.)
        match self.journal.append(rec) {
            Err(triad_volume::JournalError::Full { .. }) => {
                self.compact()?;
                self.journal.append(rec)?;
            }
            r => r?,
        }
        self.extents.push_back((rec.offset, rec.payload.len() as u64));
        self.needs_sync = true;
        Ok(())
    }

    /// A client write: refused unless this node serves; otherwise journaled
    /// as records of at most `max_record` bytes, streamed to both peers, and
    /// finished by [`Out::WriteDone`] once committed and applied. When the
    /// ring is full of uncommitted records the write waits for room. The
    /// records, the leader's memory of them and the messages to the peers
    /// share `data`'s buffer.
    pub fn write(&mut self, now: Instant, id: WriteId, offset: u64, data: Bytes, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        let refuse = self.check_leading().and_then(|()| self.check_range(offset, data.len() as u64));
        if let Err(e) = refuse {
            out.push(Out::WriteDone { id, result: Err(e) });
            return;
        }
        if data.is_empty() {
            out.push(Out::WriteDone { id, result: Ok(()) });
            return;
        }
        let deadline = now.add(self.cfg.write_timeout);
        if let Some(l) = self.leader.as_mut() {
            l.blocked.push_back(Blocked { id, offset, data, done: 0, last_seq: 0, deadline });
        }
        self.drain_blocked(now, out);
    }

    /// Invariant 1: answers the client writes whose records are all
    /// applied, if `now` is inside the lease; outside it they wait (and
    /// time out) rather than promise anything. `now` must be read after
    /// the I/O of the step that applied them (the store's pwrite may block
    /// on writeback for longer than the lease has left): the driver calls
    /// this last in every step, with its clock read again.
    pub fn acknowledge(&mut self, now: Instant, out: &mut Vec<Out>) {
        self.now = self.now.max(now);
        if !self.in_lease(now) {
            return;
        }
        let applied = self.store.applied().seq;
        let Some(l) = self.leader.as_mut() else { return };
        while l.writes.front().is_some_and(|w| w.last_seq <= applied) {
            if let Some(w) = l.writes.pop_front() {
                out.push(Out::WriteDone { id: w.id, result: Ok(()) });
            }
        }
    }

    /// Appends waiting writes, in order, while the ring has room.
    fn drain_blocked(&mut self, now: Instant, out: &mut Vec<Out>) {
        let step = self.cfg.max_record.min(self.journal.max_payload()).max(4096) as usize;
        let mut appended = false;
        loop {
            let Some(l) = self.leader.as_mut() else { return };
            let Some(b) = l.blocked.front_mut() else { break };
            let end = (b.done + step).min(b.data.len());
            let prev = self.journal.last();
            let rec = Record {
                epoch: self.view.epoch,
                seq: prev.seq + 1,
                prev,
                offset: b.offset + b.done as u64,
                payload: b.data.slice(b.done..end),
            };
            let len = rec.ring_len();
            // Bound the uncommitted span to half the ring: a follower (whose
            // ring is laid out differently) can then always hold a leader's
            // whole uncommitted tail, and a later leader's no-op after it.
            if l_uncommitted(&self.leader) + len > self.journal.ring_len() / 2 {
                break;
            }
            if len + crate::replica::NOOP_RESERVE > self.journal.free_bytes()
                && self.store.applied().seq > self.journal.discarded().seq
            {
                if let Err(e) = self.compact() {
                    return self.fail(&e, out);
                }
            }
            match self.journal.append_reserving(&rec, crate::replica::NOOP_RESERVE) {
                Ok(()) => {}
                Err(triad_volume::JournalError::Full { .. }) => break, // wait for commits
                Err(e) => return self.fail(&e.into(), out),
            }
            self.extents.push_back((rec.offset, rec.payload.len() as u64));
            self.needs_sync = true;
            appended = true;
            let Some(l) = self.leader.as_mut() else { return };
            l.remember(&rec);
            l.uncommitted += len;
            let Some(b) = l.blocked.front_mut() else { break };
            b.done = end;
            b.last_seq = rec.seq;
            if b.done == b.data.len() {
                if let Some(b) = l.blocked.pop_front() {
                    l.writes.push_back(Pending { id: b.id, last_seq: b.last_seq, deadline: b.deadline });
                }
            }
        }
        if appended {
            for slot in 0..2 {
                self.send_records(slot, now, false, out);
            }
        }
    }

    /// Sends a peer the records it lacks, within the pipeline's window;
    /// with `probe`, an Append even if there is nothing new (it carries
    /// the commit point and asks for the peer's position).
    pub(crate) fn send_records(&mut self, slot: usize, now: Instant, probe: bool, out: &mut Vec<Out>) {
        let Some(l) = self.leader.as_ref() else { return };
        let p = &l.peers[slot];
        if p.resync.is_some() || p.split || !p.consistent {
            return;
        }
        let last = self.journal.last().seq;
        let mut next = p.next.min(last + 1);
        let Some(prev) = self.journal.position_of(next - 1) else {
            // The peer needs records this journal no longer holds.
            let hash = self.bitmaps[slot].base().seq > self.peer_k[slot].seq;
            return self.start_resync(slot, now, hash, out);
        };
        let mut inflight: u64 = self.extents_bytes(p.matched + 1, next);
        let mut batch_bytes = 0;
        let mut records = Vec::new();
        while next <= last && inflight < self.cfg.max_inflight_bytes && batch_bytes < self.cfg.max_batch_bytes {
            let rec = match l.recent(next) {
                Some(r) => r.clone(),
                None => match self.journal.read(next) {
                    Ok(r) => r,
                    Err(e) => return self.fail(&e.into(), out),
                },
            };
            let len = rec.payload.len() as u64 + 64;
            inflight += len;
            batch_bytes += len;
            records.push(rec);
            next += 1;
        }
        if records.is_empty() && !probe {
            return;
        }
        let commit = self.commit;
        let ks = vec![
            (self.id, self.store.checkpointed().applied),
            (self.peers[0], self.peer_k[0]),
            (self.peers[1], self.peer_k[1]),
        ];
        let peer_inc = self.peer_incarnation(slot);
        let stream = p.stream;
        let msg = Msg::Append { epoch: self.view.epoch, prev, records, commit, ks, peer_inc, stream };
        let to = self.peers[slot];
        if let Some(l) = self.leader.as_mut() {
            let p = &mut l.peers[slot];
            p.next = next;
            p.last_sent = Some(now);
            p.sent_commit = commit;
        }
        out.push(Out::Send { to, msg });
    }

    /// Bytes of retained records with seqs in `[from, to)` (the pipeline's fill).
    fn extents_bytes(&self, from: u64, to: u64) -> u64 {
        let base = self.journal.discarded().seq + 1;
        let from = from.max(base);
        (from..to).filter_map(|s| self.extents.get((s - base) as usize)).map(|e| e.1 + 64).sum()
    }

    /// A follower's AppendReply (same epoch, checked by the caller).
    pub(crate) fn on_append_reply(&mut self, now: Instant, from: NodeId, r: Reply, out: &mut Vec<Out>) {
        let Some(slot) = self.slot(from) else { return };
        let Some(l) = self.leader.as_ref() else { return };
        // A reply to an Append sent before the peer's last resync began
        // (late or duplicated) speaks for the peer as it was then: its K
        // and matched may be above what the resync left it with, which
        // would skip its bits at a discard (rule 10) or count it toward a
        // commit. Nothing in it is taken (review of issue 8).
        if r.stream != l.peers[slot].stream && !self.cfg.mutations.ignore_stream {
            return;
        }
        // Rule 14: the peer's applied record is committed; ours at that
        // seq must be the same record (a leader holds every committed one).
        let last = self.journal.last();
        let diverged = r.applied.seq > last.seq
            || (r.applied.seq >= self.journal.discarded().seq
                && self.journal.position_of(r.applied.seq).is_some_and(|p| p != r.applied));
        if diverged {
            let detail = format!("its committed record {:?} is not in this journal (last {:?})", r.applied, last);
            let was_split = self.leader.as_ref().is_some_and(|l| l.peers[slot].split);
            if let Some(l) = self.leader.as_mut() {
                l.peers[slot].split = true;
            }
            if !was_split {
                out.push(Out::Notice(ReplNotice::SplitBrain { peer: from, detail }));
            }
            return;
        }
        let Some(l) = self.leader.as_mut() else { return };
        let p = &mut l.peers[slot];
        p.last_heard = Some(now);
        if p.resync.is_some() {
            // No Append of this stream is sent during a resync: a reply
            // to one sent before it began (the stream starts with it).
            return;
        }
        p.consistent = r.consistent;
        p.learner = r.learner;
        if r.consistent {
            // An inconsistent store's K says nothing: it is being overwritten.
            self.peer_k_advanced(slot, r.k);
        }
        let discarded = self.journal.discarded();
        let bitmap_covers = self.bitmaps[slot].base().seq <= r.k.seq;
        let Some(l) = self.leader.as_mut() else { return };
        let p = &mut l.peers[slot];
        if !r.consistent {
            if !self.cfg.mutations.resume_resync_by_records {
                return self.start_resync(slot, now, true, out);
            }
            p.consistent = true;
        }
        // `matched` is a prefix the follower verified against this leader's
        // journal and made durable: it counts even when the rest of the
        // message was refused (a follower with a full ring must still let
        // the commit point move, or neither side could ever free space).
        if r.matched > p.matched && r.matched <= last.seq {
            p.matched = r.matched;
            p.last_progress = now;
        }
        if r.ok {
            let upto = r.matched.min(self.journal.last().seq);
            p.next = p.next.max(upto + 1);
            p.probe_from = p.probe_from.max(upto + 1);
        } else {
            // Find a point both journals share: the peer's last record if
            // we hold the same one, else its applied (committed) record.
            let agreed = if r.last.seq <= last.seq && self.journal.position_of(r.last.seq) == Some(r.last) {
                r.last.seq
            } else {
                r.applied.seq.min(last.seq)
            };
            if agreed < discarded.seq {
                return self.start_resync(slot, now, !bitmap_covers, out);
            }
            p.next = agreed + 1;
            p.probe_from = agreed + 1;
            p.last_progress = now;
        }
        self.leader_after_sync(now, out);
        self.send_records(slot, now, false, out);
    }

    /// After the leader's own sync or a peer's progress: commit, apply,
    /// and keep the pipeline full. Acknowledging is [`Replica::acknowledge`],
    /// with a time read after this step's I/O.
    pub(crate) fn leader_after_sync(&mut self, now: Instant, out: &mut Vec<Out>) {
        let before = self.commit;
        self.advance_commit();
        if self.commit > before {
            // The timeout is for a cluster that stopped committing (both
            // peers gone), not for a queue that is moving: every waiting
            // write gets the full timeout again from this progress.
            let deadline = now.add(self.cfg.write_timeout);
            if let Some(l) = self.leader.as_mut() {
                l.writes.iter_mut().for_each(|w| w.deadline = w.deadline.max(deadline));
                l.blocked.iter_mut().for_each(|w| w.deadline = w.deadline.max(deadline));
            }
        }
        self.apply_committed(out);
        let applied = self.store.applied().seq;
        let Some(l) = self.leader.as_mut() else { return };
        if !l.ready && applied >= l.noop_seq {
            l.ready = true;
            out.push(Out::Notice(ReplNotice::Ready { epoch: l.epoch, seq: l.noop_seq }));
        }
        if self.leader.as_ref().is_some_and(|l| !l.blocked.is_empty()) {
            self.drain_blocked(now, out);
        }
        for slot in 0..2 {
            self.send_records(slot, now, false, out);
        }
    }

    /// Commit = the highest seq durable here and matched by a consistent,
    /// non-resyncing peer, if it is of this epoch (at or after the no-op).
    fn advance_commit(&mut self) {
        let Some(l) = self.leader.as_ref() else { return };
        let m = self.cfg.mutations;
        let best = l
            .peers
            .iter()
            .filter(|p| m.count_resyncing_peer || (p.consistent && p.resync.is_none() && !p.split && !p.learner))
            .map(|p| p.matched)
            .max()
            .unwrap_or(0);
        let durable = self.journal.durable().seq;
        let c = if m.ack_without_peer { durable } else { best.min(durable) };
        if (c >= l.noop_seq || m.commit_old_epochs) && c > self.commit {
            let base = self.journal.discarded().seq + 1;
            let freed: u64 = (self.commit.max(base - 1) + 1..=c)
                .filter_map(|seq| self.extents.get((seq - base) as usize))
                .map(|e| ring_bytes(e.1))
                .sum();
            self.commit = c;
            if let Some(l) = self.leader.as_mut() {
                l.uncommitted = l.uncommitted.saturating_sub(freed);
            }
        }
    }

    /// Timers of a leader: write timeouts, retransmission, commit probes,
    /// resync pacing, verify.
    pub(crate) fn leader_tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        let timeout_ms = u64::try_from(self.cfg.write_timeout.as_millis()).unwrap_or(u64::MAX);
        if let Some(l) = self.leader.as_mut() {
            while l.writes.front().is_some_and(|w| w.deadline <= now) {
                if let Some(w) = l.writes.pop_front() {
                    out.push(Out::WriteDone { id: w.id, result: Err(ClientError::Timeout(timeout_ms)) });
                }
            }
            while l.blocked.front().is_some_and(|w| w.deadline <= now) {
                if let Some(w) = l.blocked.pop_front() {
                    out.push(Out::WriteDone { id: w.id, result: Err(ClientError::Timeout(timeout_ms)) });
                }
            }
        }
        // Acks that waited for the lease (or a commit) go out now if they can.
        self.leader_after_sync(now, out);
        self.check_data_links(now, out);
        let last = self.journal.last().seq;
        let retransmit = micros(self.cfg.retransmit);
        for slot in 0..2 {
            let Some(l) = self.leader.as_mut() else { return };
            let commit = self.commit;
            let p = &mut l.peers[slot];
            if p.resync.is_some() {
                self.resync_tick(slot, now, out);
                continue;
            }
            let since_sent = p.last_sent.map_or(u64::MAX, |t| now.since(t).as_micros() as u64);
            let stalled = p.matched < last && now.since(p.last_progress).as_micros() as u64 >= retransmit;
            if since_sent >= retransmit && (stalled || p.last_heard.is_none()) {
                // Go back to the last point agreed and send again.
                p.next = if p.matched > 0 { p.matched + 1 } else { p.probe_from };
                p.last_progress = now;
                self.send_records(slot, now, true, out);
            } else if since_sent >= retransmit || (p.sent_commit < commit && since_sent >= COMMIT_PROBE_US) {
                self.send_records(slot, now, true, out);
            }
        }
        self.verify_tick(now, out);
    }

    /// `write_timeout`'s promise: a leader that has heard neither peer on
    /// the data links for that long cannot commit anything, whatever the
    /// core's heartbeats say (CheckQuorum counts those only). It reports
    /// itself unfit, so the core steps down and drops the VIP, rather than
    /// hold a lease with every write timing out; and it stays unfit for
    /// another write timeout (or until a peer is heard), so the two peers,
    /// which may still reach each other, elect one of themselves first
    /// instead of this node winning again on its longer journal. Peers that
    /// answer but are resyncing keep it leading: only a leader can finish
    /// their resync (rule 13), and stepping down would leave no one electable.
    fn check_data_links(&mut self, now: Instant, out: &mut Vec<Out>) {
        let Some(l) = self.leader.as_ref() else { return };
        if self.data_links_silent_until.is_some() || now.since(l.last_data_contact()) < self.cfg.write_timeout {
            return;
        }
        let until = now.add(self.cfg.write_timeout);
        self.data_links_silent_until = Some(until);
        out.push(Out::Notice(ReplNotice::DataLinksSilent { epoch: l.epoch, until }));
    }

    /// The peer is reachable and can count toward a commit.
    pub(crate) fn commit_partner(&self, slot: usize, now: Instant) -> bool {
        let Some(l) = self.leader.as_ref() else { return false };
        let p = &l.peers[slot];
        p.consistent
            && p.resync.is_none()
            && !p.split
            && !p.learner
            && p.last_heard.is_some_and(|t| now.since(t) < self.cfg.peer_timeout)
    }
}

/// The leader's uncommitted ring bytes (0 when not leading).
fn l_uncommitted(l: &Option<LeaderState>) -> u64 {
    l.as_ref().map_or(0, |l| l.uncommitted)
}

//! Block resync (rules 11-13), both sides.
//!
//! A peer whose journal and K are no longer covered by the leader's
//! journal gets the changed blocks instead of records:
//!
//! ```text
//!  leader                                         peer
//!  ResyncBegin{id, hash} ──────────────────────▶ mark store inconsistent (durable),
//!                                                 journal nothing, count toward no commit
//!      ◀──────────────────────────────────────── ResyncAck{n: 0, Receiving}
//!  hash mode: VerifyRequest{id} per batch ─────▶ hashes of its regions (store is frozen)
//!      ◀──────────────────────────────────────── VerifyReply → differing regions join the work set
//!  work set = bitmap ∪ retained applied records (bitmap mode) or differing regions (hash mode),
//!            ∪ every record applied while the copy runs (same thread as applies: rule 12's lock)
//!  ResyncData{n, offset, bytes} in order, rate-limited ──▶ written as they are (only in order)
//!      ◀──────────────────────────────────────── ResyncAck{n, Receiving} (go-back-N on silence)
//!  work set empty, all acked: ResyncEnd{n, point = applied} ──▶ fsync store; journal kept if
//!                                                 it holds `point`, else reset at `point`
//!                                                 (bitmaps rebased to `point` first);
//!      ◀──────────────────────────────────────── persist "consistent, K = point"; ResyncAck{Finished}
//!  then ordinary catch-up by records from point + 1
//! ```
//!
//! A resync interrupted by a crash or a new leader is not resumed: the
//! peer's store stays marked inconsistent, and the next leader restarts a
//! hash resync from scratch (rule 11: never "catch up by records"). A peer
//! asked about a resync it does not have answers `ResyncAck{Unknown}`,
//! which is how the leader learns that it lost one.

use std::collections::VecDeque;

use triad_core::{Instant, NodeId};
use triad_volume::{DirtyBitmap, Disk, Position};

use crate::hash::region_hashes;
use crate::msg::{Msg, ResyncState};
use crate::replica::Replica;
use crate::{Health, Out, ReplNotice, ResyncProgress};

/// Data messages in flight during a resync.
const WINDOW: usize = 8;
/// Regions per hash request.
const HASH_BATCH: u32 = 64;
/// Hash requests in flight.
const HASH_WINDOW: usize = 4;

/// The leader's side of one resync.
#[derive(Debug)]
pub(crate) struct LeaderResync {
    pub id: u64,
    pub hash: bool,
    work: DirtyBitmap,
    begun: bool,
    /// Hash mode: next region offset to ask for, and requests in flight.
    hash_next: u64,
    hash_outstanding: VecDeque<(u64, u32)>,
    hashed_bytes: u64,
    next_n: u64,
    unacked: VecDeque<(u64, u64, u64)>,
    end: Option<(u64, Position)>,
    bytes_done: u64,
    bytes_total: u64,
    started: Instant,
    last_ack: Instant,
    last_send: Instant,
    tokens: u64,
    tokens_at: Instant,
}

impl LeaderResync {
    /// A record was applied: copy its blocks (again) unless the end point is fixed.
    pub fn on_applied(&mut self, offset: u64, len: u64) {
        if self.end.is_none() && len > 0 && self.work.set_range(offset, len).is_ok() {
            self.bytes_total += len;
        }
    }

    fn hashing(&self) -> bool {
        self.hash && (self.hash_next < self.work_volume_len() || !self.hash_outstanding.is_empty())
    }

    fn work_volume_len(&self) -> u64 {
        self.work.volume_len()
    }

    /// Progress for status.
    pub fn progress(&self, now: Instant) -> ResyncProgress {
        let secs = now.since(self.started).as_secs_f64().max(1e-3);
        let rate = (self.bytes_done as f64 / secs) as u64;
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        ResyncProgress {
            hash: self.hash,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total.max(self.bytes_done),
            rate,
            eta_secs: (rate > 0).then(|| left / rate),
            hashed_bytes: self.hashed_bytes,
        }
    }
}

/// The peer's side of one resync.
#[derive(Debug)]
pub(crate) struct FollowerResync {
    pub(crate) id: u64,
    leader: NodeId,
    expected: u64,
    finished: bool,
}

impl FollowerResync {
    fn state(&self) -> ResyncState {
        if self.finished {
            ResyncState::Finished
        } else {
            ResyncState::Receiving
        }
    }
}

impl<J: Disk, D: Disk, M: Disk> Replica<J, D, M> {
    /// Starts a block resync of peer `slot`: from the bitmap when its base
    /// is at or below the peer's K, otherwise by hash comparison.
    pub(crate) fn start_resync(&mut self, slot: usize, now: Instant, hash: bool, out: &mut Vec<Out>) {
        let len = self.store.volume_len();
        let Ok(mut work) = DirtyBitmap::new(len, self.store.granularity(), Position::ZERO) else { return };
        let mut bytes = 0;
        if !hash {
            for (off, l) in self.bitmaps[slot].ranges() {
                let _ = work.set_range(off, l);
            }
            // Records still retained but applied: the bitmap covers only discarded ones.
            let base = self.journal.discarded().seq + 1;
            let applied = self.store.applied().seq;
            for (i, &(off, l)) in self.extents.iter().enumerate() {
                if base + i as u64 > applied {
                    break;
                }
                if l > 0 {
                    let _ = work.set_range(off, l);
                }
            }
            bytes = work.dirty_bytes();
        }
        let Some(l) = self.leader.as_mut() else { return };
        l.resync_counter += 1;
        let id = (l.epoch << 32) | (l.resync_counter & 0xFFFF_FFFF);
        let r = LeaderResync {
            id,
            hash,
            work,
            begun: false,
            hash_next: 0,
            hash_outstanding: VecDeque::new(),
            hashed_bytes: 0,
            next_n: 1,
            unacked: VecDeque::new(),
            end: None,
            bytes_done: 0,
            bytes_total: bytes,
            started: now,
            last_ack: now,
            last_send: now,
            tokens: 0,
            tokens_at: now,
        };
        l.peers[slot].resync = Some(r);
        l.peers[slot].consistent = false;
        // A new stream: replies to earlier Appends are ignored from now on.
        l.peers[slot].stream = id;
        let peer = self.peers[slot];
        out.push(Out::Notice(ReplNotice::ResyncStarted { peer, hash, bytes }));
        out.push(Out::Send { to: peer, msg: Msg::ResyncBegin { epoch: self.view.epoch, id, hash } });
    }

    /// Pacing and retransmission of a resync (called from the leader's tick).
    pub(crate) fn resync_tick(&mut self, slot: usize, now: Instant, out: &mut Vec<Out>) {
        let retransmit = self.cfg.retransmit;
        let epoch = self.view.epoch;
        let to = self.peers[slot];
        let Some(r) = self.leader.as_mut().and_then(|l| l.peers[slot].resync.as_mut()) else { return };
        if now.since(r.last_ack) >= retransmit && now.since(r.last_send) >= retransmit {
            r.last_send = now;
            if !r.begun {
                out.push(Out::Send { to, msg: Msg::ResyncBegin { epoch, id: r.id, hash: r.hash } });
                return;
            }
            // Go back: everything not acknowledged is sent again, in order.
            let again: Vec<(u64, u64, u64)> = r.unacked.iter().copied().collect();
            let hashes: Vec<(u64, u32)> = r.hash_outstanding.iter().copied().collect();
            let end = r.end;
            let id = r.id;
            for (offset, count) in hashes {
                out.push(Out::Send { to, msg: Msg::VerifyRequest { epoch, id, offset, count } });
            }
            return self.send_resync_stream(to, id, &again, end, out);
        }
        self.resync_pump(slot, now, out);
    }

    /// Sends what the window and the rate allow.
    fn resync_pump(&mut self, slot: usize, now: Instant, out: &mut Vec<Out>) {
        let other_is_partner = self.commit_partner(1 - slot, now);
        let (rate, chunk, region) = (self.cfg.resync_rate, self.cfg.resync_chunk, self.cfg.region);
        let granularity = self.store.granularity();
        let volume_len = self.store.volume_len();
        let applied = self.store.applied();
        let epoch = self.view.epoch;
        let to = self.peers[slot];
        let Some(r) = self.leader.as_mut().and_then(|l| l.peers[slot].resync.as_mut()) else { return };
        if !r.begun {
            return;
        }
        if r.hash {
            while r.hash_outstanding.len() < HASH_WINDOW && r.hash_next < volume_len {
                let count = HASH_BATCH.min(volume_len.div_ceil(region).saturating_sub(r.hash_next / region) as u32);
                let offset = r.hash_next;
                r.hash_outstanding.push_back((offset, count));
                r.hash_next += u64::from(count) * region;
                r.last_send = now;
                out.push(Out::Send { to, msg: Msg::VerifyRequest { epoch, id: r.id, offset, count } });
            }
            if r.hashing() {
                return; // copy only what differs, once all is compared
            }
        }
        // Rule 13: when the resyncing peer is the only possible commit
        // partner, writes wait on it: no rate limit.
        let limited = rate > 0 && other_is_partner;
        if limited {
            let dt = now.since(r.tokens_at).as_secs_f64();
            let cap = (rate / 10).max(chunk.max(granularity) * 2);
            r.tokens = (r.tokens + (rate as f64 * dt) as u64).min(cap);
            r.tokens_at = now;
        }
        let step = chunk.max(granularity) / granularity * granularity;
        let mut sends = Vec::new();
        while r.unacked.len() < WINDOW && r.end.is_none() {
            let Some((off, len)) = r.work.ranges().next() else { break };
            let len = len.min(step);
            if limited && r.tokens < len {
                break;
            }
            let _ = r.work.clear_range(off, len);
            if limited {
                r.tokens -= len;
            }
            let n = r.next_n;
            r.next_n += 1;
            r.unacked.push_back((n, off, len));
            r.bytes_done += len;
            r.last_send = now;
            sends.push((n, off, len));
        }
        let id = r.id;
        let mut end = None;
        if r.work.is_clean() && r.unacked.is_empty() && r.end.is_none() && sends.is_empty() {
            r.end = Some((r.next_n - 1, applied));
            r.last_send = now;
            end = r.end;
        }
        self.send_resync_stream(to, id, &sends, end, out);
    }

    /// Sends data messages `(n, offset, len)`, read from the store now, and
    /// the end message if there is one.
    fn send_resync_stream(
        &mut self,
        to: NodeId,
        id: u64,
        data: &[(u64, u64, u64)],
        end: Option<(u64, Position)>,
        out: &mut Vec<Out>,
    ) {
        let epoch = self.view.epoch;
        for &(n, offset, len) in data {
            let mut bytes = vec![0u8; len as usize];
            if let Err(e) = self.store.read(offset, &mut bytes) {
                return self.fail(&e.into(), out);
            }
            out.push(Out::Send { to, msg: Msg::ResyncData { epoch, id, n, offset, data: bytes } });
        }
        if let Some((n, point)) = end {
            out.push(Out::Send { to, msg: Msg::ResyncEnd { epoch, id, n, point } });
        }
    }

    /// Leader: the peer acknowledged resync data through `n`.
    pub(crate) fn on_resync_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        id: u64,
        n: u64,
        state: ResyncState,
        out: &mut Vec<Out>,
    ) {
        let Some(slot) = self.slot(from) else { return };
        let Some(l) = self.leader.as_mut() else { return };
        let p = &mut l.peers[slot];
        p.last_heard = Some(now);
        let Some(r) = p.resync.as_mut() else { return };
        if r.id != id {
            return;
        }
        if state == ResyncState::Unknown {
            // The peer lost this resync (it restarted, or dropped it at a
            // view change): start over.
            p.resync = None;
            return self.start_resync(slot, now, true, out);
        }
        r.begun = true;
        r.last_ack = now;
        while r.unacked.front().is_some_and(|u| u.0 <= n) {
            r.unacked.pop_front();
        }
        if state == ResyncState::Finished {
            if let Some((_, point)) = r.end {
                let bytes = r.bytes_done;
                p.resync = None;
                p.consistent = true;
                p.matched = 0;
                p.next = point.seq + 1;
                p.probe_from = point.seq + 1;
                p.last_progress = now;
                // Not reset here: records discarded after the end point was
                // fixed have bits in this bitmap and the peer still needs
                // them. `peer_k_advanced` clears the bitmap once the peer's
                // K covers everything discarded.
                // Its K is now `point`, even if below what it was (issue 8).
                self.peer_k[slot] = point;
                self.peer_k_advanced(slot, point);
                out.push(Out::Notice(ReplNotice::ResyncFinished { peer: from, point, bytes }));
                return self.send_records(slot, now, true, out);
            }
        }
        self.resync_pump(slot, now, out);
    }

    /// Leader, hash mode: the peer's region hashes; differing regions join
    /// the work set (compared against this store now, after which applies
    /// keep marking what changes).
    pub(crate) fn on_resync_hashes(
        &mut self,
        now: Instant,
        slot: usize,
        offset: u64,
        theirs: &[crate::RegionHash],
        out: &mut Vec<Out>,
    ) {
        let region = self.cfg.region;
        let count = theirs.len() as u32;
        let ours = match region_hashes(&self.store, offset, count, region) {
            Ok(h) => h,
            Err(e) => return self.fail(&e, out),
        };
        let volume_len = self.store.volume_len();
        let Some(r) = self.leader.as_mut().and_then(|l| l.peers[slot].resync.as_mut()) else { return };
        let Some(i) = r.hash_outstanding.iter().position(|(o, c)| *o == offset && *c == count) else { return };
        r.hash_outstanding.remove(i);
        r.last_ack = now;
        for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let off = offset + k as u64 * region;
            let len = region.min(volume_len - off);
            r.hashed_bytes += len;
            if a != b && r.work.set_range(off, len).is_ok() {
                r.bytes_total += len;
            }
        }
        self.resync_pump(slot, now, out);
    }

    /// Peer: a resync begins; durably mark the store inconsistent first.
    pub(crate) fn on_resync_begin(&mut self, from: NodeId, id: u64, _hash: bool, out: &mut Vec<Out>) {
        if let Some(r) = self.resync_in.as_ref().filter(|r| r.id == id) {
            let (n, state) = (r.expected - 1, r.state());
            return self.send_resync_ack(from, id, n, state, out);
        }
        // Ids grow (epoch in the high bits): one at or below the last this
        // store began is a late copy of a Begin for a resync already lost.
        if id <= self.store.checkpointed().resync_id {
            return self.send_resync_ack(from, id, 0, ResyncState::Unknown, out);
        }
        if let Err(e) = self.store.mark_inconsistent(id) {
            return self.fail(&e.into(), out);
        }
        self.health = Health::Resyncing;
        self.resync_in = Some(FollowerResync { id, leader: from, expected: 1, finished: false });
        self.send_resync_ack(from, id, 0, ResyncState::Receiving, out);
    }

    /// Peer: resync data, taken strictly in order.
    pub(crate) fn on_resync_data(
        &mut self,
        from: NodeId,
        id: u64,
        n: u64,
        offset: u64,
        data: &[u8],
        out: &mut Vec<Out>,
    ) {
        let Some(r) = self.resync_in.as_mut().filter(|r| r.id == id) else {
            return self.send_resync_ack(from, id, 0, ResyncState::Unknown, out);
        };
        if r.finished {
            let n = r.expected - 1;
            return self.send_resync_ack(from, id, n, ResyncState::Finished, out);
        }
        let fits = offset.checked_add(data.len() as u64).is_some_and(|end| end <= self.store.volume_len());
        if n == r.expected && !fits {
            let reason = format!("resync data of {} bytes at {offset} is outside the volume", data.len());
            out.push(Out::Notice(ReplNotice::Refused { peer: from, reason }));
        } else if n == r.expected {
            if let Err(e) = self.store.write_resync(offset, data) {
                return self.fail(&e.into(), out);
            }
            r.expected += 1;
        }
        let done = r.expected - 1;
        self.send_resync_ack(from, id, done, ResyncState::Receiving, out);
    }

    /// Peer: the end of the stream; finish durably (rule 12's point p).
    pub(crate) fn on_resync_end(&mut self, from: NodeId, id: u64, n: u64, point: Position, out: &mut Vec<Out>) {
        let Some(r) = self.resync_in.as_ref().filter(|r| r.id == id) else {
            return self.send_resync_ack(from, id, 0, ResyncState::Unknown, out);
        };
        if r.finished {
            return self.send_resync_ack(from, id, n, ResyncState::Finished, out);
        }
        if n != r.expected - 1 {
            let done = r.expected - 1;
            return self.send_resync_ack(from, id, done, ResyncState::Receiving, out);
        }
        // Keep the journal only if it holds the leader's record at `point`
        // (the records after it may be a committed suffix, Raft's
        // InstallSnapshot rule); otherwise restart it at `point`. Journal
        // first, then "consistent, K = point": a crash between the two
        // leaves an inconsistent store, resynced again.
        if self.journal.position_of(point.seq) != Some(point) {
            // This node will no longer know which blocks the records
            // through `point` touched: its bitmaps can only start there (a
            // peer with a lower K gets a hash resync from it, not a short
            // one). Bitmaps first: a crash before the journal reset leaves
            // a base above what the journal discarded, which is harmless.
            for slot in 0..2 {
                self.bitmaps[slot].reset(point);
                if let Err(e) = self.store.persist_bitmap(slot as u32, &self.bitmaps[slot]) {
                    return self.fail(&e.into(), out);
                }
            }
            if let Err(e) = self.journal.reset_at(point) {
                return self.fail(&e.into(), out);
            }
            self.extents.clear();
        }
        self.clear_received();
        if let Err(e) = self.store.finish_resync(point) {
            return self.fail(&e.into(), out);
        }
        self.health = Health::Consistent;
        self.commit = self.commit.max(point.seq);
        self.matched_in_epoch = point.seq;
        if let Some(r) = self.resync_in.as_mut() {
            r.finished = true;
        }
        self.send_resync_ack(from, id, n, ResyncState::Finished, out);
    }

    fn send_resync_ack(&self, to: NodeId, id: u64, n: u64, state: ResyncState, out: &mut Vec<Out>) {
        out.push(Out::Send {
            to,
            msg: Msg::ResyncAck { epoch: self.view.epoch, inc: self.incarnation(), id, n, state },
        });
    }

    /// A resync from a leader that is no longer the leader is abandoned
    /// (the store stays inconsistent; the next leader starts over).
    pub(crate) fn resync_in_abandon_if_other_leader(&mut self) {
        if self.resync_in.as_ref().is_some_and(|r| Some(r.leader) != self.view.leader || r.finished) {
            self.resync_in = None;
        }
    }

    /// Peer-side timers of a resync (none: the leader drives it).
    pub(crate) fn follower_resync_tick(&mut self, _out: &mut [Out]) {}
}

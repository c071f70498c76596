//! Online verify: the leader compares region hashes of its store with both
//! peers' and reports the ranges that differ.
//!
//! Stores change while writes go on, and followers apply a little after
//! the leader, so two hashes are compared only when both were taken at the
//! same applied position; a batch whose positions differ is asked again
//! (a few times, then counted as not compared). One batch is in flight at
//! a time: verify is a background check, not a hot path.

use core::time::Duration;

use triad_core::{Instant, NodeId};
use triad_volume::{Disk, Position};

use crate::hash::{region_hashes, MAX_REGIONS};
use crate::msg::Msg;
use crate::replica::Replica;
use crate::{ClientError, Out, RegionHash, VerifyReport};

/// Regions per verify request.
const BATCH: u32 = 64;
/// Tries per batch before its regions count as not compared.
const ATTEMPTS: u32 = 20;
/// Wait before asking a batch again.
const RETRY: Duration = Duration::from_millis(50);

/// A verify run on the leader.
#[derive(Debug)]
pub(crate) struct Verify {
    report: VerifyReport,
    offset: u64,
    count: u32,
    attempts: u32,
    /// Per peer: answered for the current batch at equal positions.
    done: [bool; 2],
    sent_at: Instant,
}

impl Verify {
    pub fn deadline(&self) -> Instant {
        self.sent_at.add(RETRY)
    }
}

impl<J: Disk, D: Disk, M: Disk> Replica<J, D, M> {
    /// The id of the online verify running, if one is (a step-down or a
    /// newer verify ends it without a [`Out::VerifyDone`]).
    pub fn verifying(&self) -> Option<u64> {
        self.leader.as_ref()?.verify.as_ref().map(|v| v.report.id)
    }

    /// Starts an online verify (leader only); the result comes as [`Out::VerifyDone`].
    pub fn verify(&mut self, now: Instant, id: u64, out: &mut Vec<Out>) -> Result<(), ClientError> {
        self.check_serving(now)?;
        let Some(l) = self.leader.as_mut() else { return Err(ClientError::NotActive) };
        l.verify = Some(Verify {
            report: VerifyReport { id, ..VerifyReport::default() },
            offset: 0,
            count: 0,
            attempts: 0,
            done: [false; 2],
            sent_at: now,
        });
        self.verify_next_batch(now, out);
        Ok(())
    }

    fn verify_next_batch(&mut self, now: Instant, out: &mut Vec<Out>) {
        let region = self.cfg.region;
        let volume_len = self.store.volume_len();
        let epoch = self.view.epoch;
        let peers = self.peers;
        let Some(l) = self.leader.as_mut() else { return };
        let Some(v) = l.verify.as_mut() else { return };
        v.offset += u64::from(v.count) * region;
        if v.offset >= volume_len {
            if let Some(v) = l.verify.take() {
                out.push(Out::VerifyDone(v.report));
            }
            return;
        }
        v.count = BATCH.min(volume_len.div_ceil(region).saturating_sub(v.offset / region) as u32);
        v.attempts = 0;
        v.done = [false; 2];
        v.sent_at = now;
        let (id, offset, count) = (v.report.id, v.offset, v.count);
        for to in peers {
            out.push(Out::Send { to, msg: Msg::VerifyRequest { epoch, id, offset, count } });
        }
    }

    /// Retries of the current batch (called from the leader's tick).
    pub(crate) fn verify_tick(&mut self, now: Instant, out: &mut Vec<Out>) {
        let epoch = self.view.epoch;
        let peers = self.peers;
        let region = self.cfg.region;
        let volume_len = self.store.volume_len();
        let Some(v) = self.leader.as_mut().and_then(|l| l.verify.as_mut()) else { return };
        if now < v.deadline() {
            return;
        }
        v.attempts += 1;
        v.sent_at = now;
        if v.attempts >= ATTEMPTS {
            let bytes = (u64::from(v.count) * region).min(volume_len - v.offset);
            for slot in 0..2 {
                if !v.done[slot] {
                    v.report.not_compared += u64::from(v.count);
                }
            }
            let _ = bytes;
            v.done = [true; 2];
            return self.verify_next_batch(now, out);
        }
        let (id, offset, count) = (v.report.id, v.offset, v.count);
        for (slot, to) in peers.into_iter().enumerate() {
            if !v.done[slot] {
                out.push(Out::Send { to, msg: Msg::VerifyRequest { epoch, id, offset, count } });
            }
        }
    }

    /// Any node: hash regions of this store for the leader (verify, or the
    /// comparison phase of a hash resync while this node is resyncing).
    pub(crate) fn on_verify_request(&mut self, from: NodeId, id: u64, offset: u64, count: u32, out: &mut Vec<Out>) {
        let count = count.min(MAX_REGIONS);
        match region_hashes(&self.store, offset, count, self.cfg.region) {
            Ok(mut hashes) => {
                // Rule 9: after a storage failure this page cache may show
                // bytes no medium holds, so its hashes could match the
                // leader's over blocks that are not on disk. Hashes that
                // match nothing make the leader copy every region; each is
                // then written anew and synced at the resync's end.
                if self.store.checkpointed().failed.is_some() {
                    for h in &mut hashes {
                        h.iter_mut().for_each(|b| *b = !*b);
                    }
                }
                let (applied, inc) = (self.store.applied(), self.incarnation());
                out.push(Out::Send {
                    to: from,
                    msg: Msg::VerifyReply { epoch: self.view.epoch, inc, id, offset, applied, hashes },
                });
            }
            Err(e) => self.fail(&e, out),
        }
    }

    /// Leader: hashes from a peer, for a resync or for the verify run.
    pub(crate) fn on_verify_reply(
        &mut self,
        from: NodeId,
        id: u64,
        offset: u64,
        applied: Position,
        theirs: &[RegionHash],
        out: &mut Vec<Out>,
    ) {
        let Some(slot) = self.slot(from) else { return };
        let now = self.now;
        let Some(l) = self.leader.as_ref() else { return };
        if l.peers[slot].resync.as_ref().is_some_and(|r| r.id == id && r.hash) {
            return self.on_resync_hashes(now, slot, offset, theirs, out);
        }
        let Some(v) = l.verify.as_ref() else { return };
        if v.report.id != id || v.offset != offset || v.done[slot] || theirs.len() != v.count as usize {
            return;
        }
        // Comparable only at the same applied position.
        if applied != self.store.applied() {
            return;
        }
        let region = self.cfg.region;
        let volume_len = self.store.volume_len();
        let ours = match region_hashes(&self.store, offset, v.count, region) {
            Ok(h) => h,
            Err(e) => return self.fail(&e, out),
        };
        let Some(v) = self.leader.as_mut().and_then(|l| l.verify.as_mut()) else { return };
        v.done[slot] = true;
        for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let off = offset + k as u64 * region;
            let len = region.min(volume_len - off);
            if slot == 0 {
                v.report.regions += 1;
                v.report.bytes += len;
            }
            if a != b {
                match v.report.differing.last_mut() {
                    Some(d) if d.0 == from && d.1 + d.2 == off => d.2 += len,
                    _ => v.report.differing.push((from, off, len)),
                }
            }
        }
        if v.done == [true, true] {
            self.verify_next_batch(now, out);
        }
    }
}

//! The properties checked after every simulator event, and the history they
//! need (which node voted for whom in which epoch, lease ends in real time).
//!
//! The checker sees only what the outside world could observe: outputs as
//! the runtime carries them out, the persisted state, each node's reported
//! lease end converted to real time, and whether the VIP is on an
//! interface. It never peeks at the core's private fields.

use std::collections::HashMap;
use std::fmt;
use triad_core::{Epoch, HardState, NodeId};

/// One checked property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    /// At most one node holds a valid lease at any real instant.
    OneLease,
    /// At most one node has the VIP on its interface (see docs for frozen nodes).
    OneVip,
    /// Epochs never decrease on a node, across restarts too.
    EpochMonotonic,
    /// A node never grants two different candidates a vote in one epoch.
    OneVote,
    /// A vote or epoch is on disk before a message that depends on it leaves.
    PersistBeforeSend,
    /// At most one node becomes leader in an epoch.
    OneLeaderPerEpoch,
    /// VIP phase Held only while leader with a valid lease.
    HeldNeedsLease,
    /// Rule 17: TimeoutNow leaves only once the VIP is off the interface.
    HandoverOrder,
    /// VIP Add, Renew and gratuitous ARP are carried out only while the
    /// node is leader with a valid lease (a stale one re-creates the VIP or
    /// pulls clients to a node that is not active).
    VipActionNeedsLease,
    /// A valid lease is backed by a majority: another node (down, or alive
    /// and refusing votes for anyone else) until the lease ends. Checked
    /// directly, so a lease renewed by a non-sticky ack is caught even when
    /// no second leader happens to appear.
    LeaseBacked,
    /// After a Tick, the next deadline lies in the future (else the
    /// runtime's timer-first loop spins and starves message handling).
    Progress,
    /// After faults heal, a leader with lease and VIP appears within the
    /// bound and stays (one second is watched).
    Liveness,
}

impl Check {
    /// Every check.
    pub const ALL: [Check; 12] = [
        Check::LeaseBacked,
        Check::OneLease,
        Check::OneVip,
        Check::EpochMonotonic,
        Check::OneVote,
        Check::PersistBeforeSend,
        Check::OneLeaderPerEpoch,
        Check::HeldNeedsLease,
        Check::HandoverOrder,
        Check::VipActionNeedsLease,
        Check::Progress,
        Check::Liveness,
    ];

    /// Parses a check by its name as printed (`OneVote`).
    pub fn parse(s: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| format!("{c:?}").eq_ignore_ascii_case(s))
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which property.
    pub check: Check,
    /// Real time, µs.
    pub at: u64,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} violated at t={:.6}s: {}", self.check, self.at as f64 / 1e6, self.detail)
    }
}

/// History the checks need, across restarts.
#[derive(Debug, Default)]
pub struct Checker {
    /// Real time at which each node's lease (as last reported) ends; 0 = none.
    lease_end: [u64; 4],
    /// Highest epoch each node was ever seen in (RAM or disk).
    epoch_seen: [Epoch; 4],
    /// Highest epoch each node ever put on the wire (PreVote excluded).
    wire_epoch: [Epoch; 4],
    /// (voter, epoch) → candidate, for every granted vote that left a node.
    votes: HashMap<(NodeId, Epoch), NodeId>,
    /// epoch → leader.
    leaders: HashMap<Epoch, NodeId>,
    /// Checks not enforced in this run.
    tolerate: Vec<Check>,
    /// Tolerated violations seen (check, first occurrence).
    pub tolerated: Vec<Violation>,
}

impl Checker {
    /// A checker that ignores (but records) violations of `tolerate`.
    pub fn new(tolerate: Vec<Check>) -> Checker {
        Checker { tolerate, ..Checker::default() }
    }

    /// Turns a failed property into an error, unless tolerated.
    pub fn fail(&mut self, check: Check, at: u64, detail: String) -> Result<(), Violation> {
        let v = Violation { check, at, detail };
        if self.tolerate.contains(&check) {
            if !self.tolerated.iter().any(|t| t.check == check) {
                self.tolerated.push(v);
            }
            return Ok(());
        }
        Err(v)
    }

    /// Node `n`'s lease now ends at real `end` (None: it holds none now).
    /// Fails if another node's lease reaches past `now` while `n` holds one.
    pub fn lease(&mut self, now: u64, n: NodeId, end: Option<u64>) -> Result<(), Violation> {
        let i = usize::from(n);
        match end {
            Some(end) => {
                self.lease_end[i] = end;
                for o in 1..=3u8 {
                    let oe = self.lease_end[usize::from(o)];
                    if o != n && oe > now {
                        return self.fail(
                            Check::OneLease,
                            now,
                            format!(
                                "node {n} holds a lease until t={end}µs while node {o}'s lease runs until t={oe}µs"
                            ),
                        );
                    }
                }
            }
            // A lease given up or lost ends now at the latest.
            None => self.lease_end[i] = self.lease_end[i].min(now),
        }
        Ok(())
    }

    /// Node `n` is (in RAM) or was persisted at `epoch`.
    pub fn epoch(&mut self, now: u64, n: NodeId, epoch: Epoch, what: &str) -> Result<(), Violation> {
        let seen = &mut self.epoch_seen[usize::from(n)];
        if epoch < *seen {
            let prev = *seen;
            return self.fail(Check::EpochMonotonic, now, format!("node {n} {what} epoch {epoch} after {prev}"));
        }
        *seen = epoch;
        Ok(())
    }

    /// A message leaves node `from` carrying `epoch` (its own epoch, not a
    /// proposal); `disk` is what is persisted at that moment.
    pub fn wire(&mut self, now: u64, from: NodeId, epoch: Epoch, disk: HardState) -> Result<(), Violation> {
        if epoch > disk.epoch {
            self.fail(
                Check::PersistBeforeSend,
                now,
                format!("node {from} sends epoch {epoch} while its disk holds epoch {}", disk.epoch),
            )?;
        }
        let w = &mut self.wire_epoch[usize::from(from)];
        if epoch < *w {
            let prev = *w;
            return self.fail(
                Check::EpochMonotonic,
                now,
                format!("node {from} sends epoch {epoch} after sending {prev}"),
            );
        }
        *w = epoch;
        Ok(())
    }

    /// A granted vote leaves `voter` for `candidate` in `epoch`.
    pub fn vote(
        &mut self,
        now: u64,
        voter: NodeId,
        candidate: NodeId,
        epoch: Epoch,
        disk: HardState,
    ) -> Result<(), Violation> {
        if disk.epoch != epoch || disk.voted_for != Some(candidate) {
            self.fail(
                Check::PersistBeforeSend,
                now,
                format!("node {voter} grants node {candidate} its vote in epoch {epoch}, disk holds {disk:?}"),
            )?;
        }
        match self.votes.insert((voter, epoch), candidate) {
            Some(prev) if prev != candidate => self.fail(
                Check::OneVote,
                now,
                format!("node {voter} voted for node {prev} and then node {candidate} in epoch {epoch}"),
            ),
            _ => Ok(()),
        }
    }

    /// Node `n` became leader of `epoch`.
    pub fn leader(&mut self, now: u64, n: NodeId, epoch: Epoch) -> Result<(), Violation> {
        match self.leaders.insert(epoch, n) {
            Some(prev) if prev != n => {
                self.fail(Check::OneLeaderPerEpoch, now, format!("nodes {prev} and {n} both led epoch {epoch}"))
            }
            _ => Ok(()),
        }
    }

    /// How many leaderships were seen.
    pub fn leaderships(&self) -> usize {
        self.leaders.len()
    }
}

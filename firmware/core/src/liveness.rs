//! Peer liveness: when each peer was last heard from, and what it said of
//! its data position.
//!
//! ```text
//!   unknown ──heard──▶ reachable ──no word for peer_timeout──▶ unreachable
//!                          ▲                                        │
//!                          └───────────────heard────────────────────┘
//! ```
//!
//! Liveness feeds status and switchover target choice only. It never
//! decides leadership: that is the election's and the lease's job, which use
//! their own, stricter evidence (votes, acknowledged heartbeat rounds).

use crate::message::{NodeId, Position};
use crate::time::Instant;
use core::time::Duration;

/// What is known of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLiveness {
    /// The peer.
    pub id: NodeId,
    /// Last time any message arrived from it.
    pub last_heard: Option<Instant>,
    /// The last data position it reported.
    pub position: Option<Position>,
    /// Whether it last said it is in standby.
    pub standby: bool,
    /// Whether it last said its failover readiness check passes.
    pub ready: bool,
}

/// Liveness of the two peers.
#[derive(Clone, Debug)]
pub struct Liveness {
    peers: [PeerLiveness; 2],
    timeout: Duration,
}

impl Liveness {
    /// Nothing heard yet from `peers`; a peer silent for `timeout` is unreachable.
    pub fn new(peers: [NodeId; 2], timeout: Duration) -> Self {
        let blank = |id| PeerLiveness { id, last_heard: None, position: None, standby: false, ready: false };
        Liveness { peers: [blank(peers[0]), blank(peers[1])], timeout }
    }

    /// A message from `from` arrived at `now`. Unknown senders are ignored.
    pub fn heard(&mut self, from: NodeId, now: Instant) {
        if let Some(p) = self.get_mut(from) {
            p.last_heard = Some(now);
        }
    }

    /// `from` reported its data position, standby state and readiness.
    pub fn reported(&mut self, from: NodeId, position: Position, standby: bool, ready: bool) {
        if let Some(p) = self.get_mut(from) {
            p.position = Some(position);
            p.standby = standby;
            p.ready = ready;
        }
    }

    /// Whether `id` was heard from within the timeout.
    pub fn reachable(&self, id: NodeId, now: Instant) -> bool {
        self.get(id).and_then(|p| p.last_heard).is_some_and(|t| now.since(t) <= self.timeout)
    }

    /// Both peers, in configuration order.
    pub fn peers(&self) -> &[PeerLiveness; 2] {
        &self.peers
    }

    /// One peer's record.
    pub fn get(&self, id: NodeId) -> Option<&PeerLiveness> {
        self.peers.iter().find(|p| p.id == id)
    }

    fn get_mut(&mut self, id: NodeId) -> Option<&mut PeerLiveness> {
        self.peers.iter_mut().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_until_timeout_then_not() {
        let mut l = Liveness::new([2, 3], Duration::from_millis(200));
        assert!(!l.reachable(2, Instant(0)));
        l.heard(2, Instant(1_000_000));
        assert!(l.reachable(2, Instant(1_200_000)));
        assert!(!l.reachable(2, Instant(1_200_001)));
        assert!(!l.reachable(3, Instant(1_000_000)));
    }

    #[test]
    fn strangers_are_ignored() {
        let mut l = Liveness::new([2, 3], Duration::from_millis(200));
        l.heard(9, Instant(5));
        l.reported(9, Position { epoch: 1, seq: 1 }, true, true);
        assert!(l.peers().iter().all(|p| p.last_heard.is_none() && p.position.is_none()));
    }
}

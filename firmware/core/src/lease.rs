//! The active node's lease: the window in which it may hold the VIP, run the
//! PBX and acknowledge writes.
//!
//! ```text
//!            start()                 ack of round r (majority = me + 1 peer)
//!   none ────────────▶ pending ─────────────────────────────────────▶ valid
//!                         ▲                                            │ │
//!                         │       renewed by later acked rounds ◀──────┘ │
//!                         │                                              │
//!                         └──── time passes lease end (CheckQuorum) ◀────┘
//!   give_up(): valid/pending ──▶ retired (never renewed again in this epoch)
//! ```
//!
//! A lease runs from the *send* time of a heartbeat round that a majority
//! acknowledged, for [`crate::Timing::lease_duration`]: the voters' lease
//! stickiness window shrunk by the drift bound and a guard. Counting from the
//! send time (not the ack's arrival) is what makes it safe: every voter that
//! acknowledged received the heartbeat after it was sent, and refuses to vote
//! for anyone else for the full stickiness window after that.

use crate::time::Instant;
use core::time::Duration;
use std::collections::VecDeque;

/// How many unacknowledged rounds are remembered; older acks are useless anyway.
const ROUNDS_KEPT: usize = 64;

/// Lease bookkeeping for one leadership (one epoch).
#[derive(Clone, Debug, Default)]
pub struct Lease {
    duration: Duration,
    next_round: u64,
    sent: VecDeque<(u64, Instant)>,
    until: Option<Instant>,
    retired: bool,
}

impl Lease {
    /// A fresh leadership: no lease until the first acked round.
    pub fn start(duration: Duration) -> Self {
        Lease { duration, next_round: 1, sent: VecDeque::new(), until: None, retired: false }
    }

    /// Records that round `r` is being sent now; returns `r`.
    pub fn send_round(&mut self, now: Instant) -> u64 {
        let round = self.next_round;
        self.next_round += 1;
        if self.sent.len() == ROUNDS_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back((round, now));
        round
    }

    /// A peer acknowledged `round`. With this node itself, one peer is a
    /// majority of three, so one ack renews the lease. Returns whether the
    /// lease grew.
    pub fn acked(&mut self, round: u64) -> bool {
        if self.retired {
            return false;
        }
        let Some(&(_, sent_at)) = self.sent.iter().find(|(r, _)| *r == round) else {
            return false;
        };
        let until = sent_at.add(self.duration);
        if self.until.is_some_and(|u| u >= until) {
            return false;
        }
        self.until = Some(until);
        // Rounds up to this one can no longer extend the lease.
        self.sent.retain(|(r, _)| *r > round);
        true
    }

    /// Whether the lease holds at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        !self.retired && self.until.is_some_and(|u| now < u)
    }

    /// When the lease ends (or ended), if it was ever granted.
    pub fn until(&self) -> Option<Instant> {
        if self.retired {
            None
        } else {
            self.until
        }
    }

    /// Time left at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        match self.until() {
            Some(u) => u.since(now),
            None => Duration::ZERO,
        }
    }

    /// Gives the lease up for good (planned switchover): never valid again.
    pub fn give_up(&mut self) {
        self.retired = true;
        self.until = None;
    }

    /// Whether [`Lease::give_up`] was called.
    pub fn retired(&self) -> bool {
        self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    #[test]
    fn lease_runs_from_send_time_of_acked_round() {
        let mut l = Lease::start(Duration::from_millis(300));
        let r1 = l.send_round(Instant(0));
        let r2 = l.send_round(Instant(50 * MS));
        assert!(!l.valid(Instant(60 * MS)), "no lease before any ack");
        assert!(l.acked(r2));
        assert_eq!(l.until(), Some(Instant(350 * MS)));
        // A late ack of an older round cannot shorten or extend it.
        assert!(!l.acked(r1));
        assert_eq!(l.until(), Some(Instant(350 * MS)));
        assert!(l.valid(Instant(349 * MS)));
        assert!(!l.valid(Instant(350 * MS)));
    }

    #[test]
    fn unknown_rounds_and_duplicates_do_nothing() {
        let mut l = Lease::start(Duration::from_millis(300));
        let r = l.send_round(Instant(0));
        assert!(!l.acked(r + 7));
        assert!(l.acked(r));
        assert!(!l.acked(r), "a duplicate ack is ignored");
    }

    #[test]
    fn given_up_lease_never_comes_back() {
        let mut l = Lease::start(Duration::from_millis(300));
        let r = l.send_round(Instant(0));
        l.acked(r);
        l.give_up();
        assert!(!l.valid(Instant(1)));
        let r = l.send_round(Instant(2));
        assert!(!l.acked(r));
        assert!(!l.valid(Instant(3)));
    }
}

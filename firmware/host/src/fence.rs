//! The VIP's kernel lease fence, as the host decides it (issue 10).
//!
//! On the node, packet-filter rules drop everything that would make the
//! node answer for the VIP unless the VIP is an element of a set, and the
//! element carries a timeout kept by the kernel's clock. A frozen, killed
//! or wedged supervisor therefore goes silent on the VIP when the element
//! expires, whatever happens to the address. This module decides when the
//! element is granted, refreshed and revoked, so that it never outlives the
//! lease the core holds, even when an operation is carried out late.
//!
//! The rules and why they hold (the clocks are in docs/failover-bounds.md):
//! - **Grant** (the element is absent) in two kernel calls, because a
//!   plain add with a timeout computed before the call would end late by
//!   however long the process was frozen before the kernel got it (the
//!   simulator found exactly that). First the executor *arms* the fence:
//!   it adds a key no packet carries with a timeout of [`ARM_TTL`]. Then
//!   it reads its clock (`t1`) and sends one batch that deletes the arming
//!   key and adds the VIP, exclusively, with a timeout of `lease_end - t1 -
//!   ARM_TTL` ([`grant_ttl`]). The batch fails as a whole once the arming
//!   has expired, so it lands at `t_b < a + ARM_TTL`, `a` (the arming's
//!   application) being before `t1`; the element ends at `t_b + lease_end
//!   - t1 - ARM_TTL < lease_end`. A freeze before the arming only delays
//!   `t1`, which the timeout already counts.
//! - **Refresh** (the element is present): one kernel batch deletes and
//!   re-adds it, and fails as a whole once the element has expired, so a
//!   refresh applied at `t1` found the old element alive: `t1 < E` where
//!   `E` is the old element's end. Its timeout is `lease_end - E⁺`, `E⁺`
//!   being an upper bound of `E` (the time read after the call that set it
//!   plus its timeout). The new element then ends at `t1 + lease_end - E⁺
//!   < lease_end`, however late the refresh ran: a freeze between the
//!   decision and the kernel cannot stretch it past the lease.
//! - A refresh is due once the element's remaining life is at most half
//!   of what the refresh would give it (`E⁺ - now ≤ (lease_end - E⁺) / 2`):
//!   the element's end never moves backwards, and with the lease kept
//!   `D` ahead by heartbeats the element is refreshed every `D/3` and
//!   always has at least `D/3` left. (At "at most what it would give", the
//!   gain per refresh tends to zero and the kernel is asked at every tick:
//!   the simulator showed it.)
//! - **Revoke**: once the core no longer wants the VIP or holds no lease.
//! - One operation in flight at a time; a missing fence makes the node
//!   unfit to lead (see `triad_repl::Fitness`), and a reinstalled fence
//!   starts without an element.
//!
//! Must not: read a clock or touch the kernel (the executor does, with the
//! operations this module returns).

use core::time::Duration;

use triad_core::Instant;

/// The shortest element worth installing: the kernel counts in jiffies
/// (1-10 ms), and a timeout of zero would mean "no timeout" to some kernels.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// How long an arming lasts: the grant batch must reach the kernel within
/// it (normally microseconds after the arming returns). Two jiffies at
/// HZ=250; the kernel rounds it down, which only shortens it.
pub const ARM_TTL: Duration = Duration::from_millis(8);

/// The pause after an operation the kernel refused before the next is
/// handed out: a broken fence is repaired by a reinstall (which ends the
/// pause), and a refusal that persists must not be asked again at every
/// event. Shorter than a refresh's margin (a third of the lease), so one
/// refused refresh does not cost the element.
pub const FAILED_RETRY: Duration = Duration::from_millis(50);

/// What the executor must do to the fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceOp {
    /// Arm, read the clock, then delete the arming and add the element
    /// (exclusively) in one batch, with the timeout [`grant_ttl`] gives for
    /// `deadline` at that clock reading.
    Grant {
        /// The lease end.
        deadline: Instant,
    },
    /// Replace the present element by one lasting `ttl`, in one batch that
    /// fails as a whole if the element has expired.
    Refresh {
        /// The new element's timeout.
        ttl: Duration,
    },
    /// Delete the element (absent is fine).
    Revoke,
}

/// How a [`FenceOp`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceResult {
    /// Carried out; for Grant and Refresh, with this timeout.
    Done {
        /// The element's timeout (zero for Revoke).
        ttl: Duration,
    },
    /// A Refresh found no element (it had expired): nothing changed.
    Expired,
    /// Not carried out: a Grant found less than [`MIN_TTL`] of lease left.
    LeaseEnded,
    /// The kernel refused it; nothing changed.
    Failed,
}

/// The timeout a Grant for `deadline` gets with its clock read at `now`
/// (after the arming returned), if it is worth installing: the lease left,
/// less the arming's life (the longest the batch can still land after).
pub fn grant_ttl(deadline: Instant, now: Instant) -> Option<Duration> {
    let ttl = deadline.since(now).saturating_sub(ARM_TTL);
    (ttl >= MIN_TTL).then_some(ttl)
}

/// The host's knowledge of the fence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// The rules are installed (reported by the executor); until the first
    /// report the node has no fence and nothing here runs.
    installed: Option<bool>,
    /// An upper bound of the element's end, if there may be one.
    end: Option<Instant>,
    /// An operation was handed out and has not been reported.
    in_flight: bool,
    /// The kernel refused the last operation: none before this instant.
    retry_at: Option<Instant>,
}

impl Fence {
    /// The executor (re)installed the rules, or found them missing.
    /// Either way there is no element now (an install starts empty).
    pub fn installed(&mut self, ok: bool) {
        self.installed = Some(ok);
        self.end = None;
        self.retry_at = None;
    }

    /// Whether this node has a fence at all.
    pub fn enabled(&self) -> bool {
        self.installed.is_some()
    }

    /// The upper bound of the element's end.
    pub fn end(&self) -> Option<Instant> {
        self.end
    }

    /// An operation ended; `at` is the time read after the call.
    pub fn done(&mut self, op: FenceOp, result: FenceResult, at: Instant) {
        self.in_flight = false;
        match (op, result) {
            (FenceOp::Grant { .. } | FenceOp::Refresh { .. }, FenceResult::Done { ttl }) => {
                self.end = Some(at.add(ttl))
            }
            (FenceOp::Revoke, FenceResult::Done { .. }) | (FenceOp::Refresh { .. }, FenceResult::Expired) => {
                self.end = None;
            }
            // A failed operation changed nothing in the kernel; pause.
            (_, FenceResult::Failed) => self.retry_at = Some(at.add(FAILED_RETRY)),
            // A refused one changed nothing either.
            _ => {}
        }
    }

    /// The operation due at `now`, if any, when the core wants the VIP
    /// (`wants`) under a lease ending at `lease_end`. Marks it in flight.
    pub fn next(&mut self, now: Instant, wants: bool, lease_end: Option<Instant>) -> Option<FenceOp> {
        if self.installed != Some(true) || self.in_flight {
            return None;
        }
        match self.retry_at {
            Some(t) if now < t => return None,
            _ => self.retry_at = None,
        }
        // A grant only with a worthwhile lease left now (the executor
        // applies the same rule at its own, later, instant).
        let grant = |lease| grant_ttl(lease, now).map(|_| FenceOp::Grant { deadline: lease });
        let op = match (wants, lease_end, self.end) {
            (true, Some(lease), None) => grant(lease),
            // Expired as far as the host knows (the kernel rounds down,
            // never up): grant afresh.
            (true, Some(lease), Some(end)) if end <= now => {
                self.end = None;
                grant(lease)
            }
            (true, Some(lease), Some(end)) => {
                let ttl = lease.since(end);
                (end.since(now) <= ttl / 2 && ttl >= MIN_TTL).then_some(FenceOp::Refresh { ttl })
            }
            (_, _, Some(_)) => Some(FenceOp::Revoke),
            (_, _, None) => None,
        };
        self.in_flight = op.is_some();
        op
    }

    /// When [`next`](Self::next) may have an operation to hand out, for
    /// the host's deadline: the end of a pause after a failure, or the
    /// instant the element's remaining life falls to what a refresh would
    /// give it.
    pub fn next_due(&self, lease_end: Option<Instant>) -> Option<Instant> {
        if self.in_flight || self.installed != Some(true) {
            return None;
        }
        if self.retry_at.is_some() {
            return self.retry_at;
        }
        let (end, lease) = (self.end?, lease_end?);
        // No refresh worth having (the lease is running out): none is due.
        if lease.since(end) < MIN_TTL {
            return None;
        }
        // end - now <= (lease - end) / 2  <=>  now >= (3 end - lease) / 2,
        // rounded up: at the instant returned, `next` must have the refresh
        // (rounded down, it had none and the executor ticked in a loop).
        Some(Instant(end.0.saturating_mul(3).saturating_sub(lease.0).div_ceil(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;
    fn at(ms: u64) -> Instant {
        Instant(ms * MS)
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn installed() -> Fence {
        let mut f = Fence::default();
        f.installed(true);
        f
    }

    #[test]
    fn nothing_happens_without_an_installed_fence() {
        let mut f = Fence::default();
        assert!(!f.enabled());
        assert_eq!(f.next(at(0), true, Some(at(200))), None, "no fence reported: disabled");
        f.installed(false);
        assert!(f.enabled());
        assert_eq!(f.next(at(0), true, Some(at(200))), None, "missing: nothing to grant into");
    }

    #[test]
    fn grant_then_one_operation_at_a_time() {
        let mut f = installed();
        assert_eq!(f.next(at(0), false, None), None, "no VIP wanted, no element: nothing");
        let grant = f.next(at(10), true, Some(at(250)));
        assert_eq!(grant, Some(FenceOp::Grant { deadline: at(250) }));
        assert_eq!(f.next(at(11), true, Some(at(260))), None, "the grant is in flight");
        // Clock read at 12 ms after arming: the lease left less the
        // arming's life; reported at 13.
        let ttl = grant_ttl(at(250), at(12)).expect("worth it");
        assert_eq!(ttl, ms(238) - ARM_TTL);
        f.done(FenceOp::Grant { deadline: at(250) }, FenceResult::Done { ttl }, at(13));
        assert_eq!(f.end(), Some(at(243)), "upper bound: read after the call plus the timeout");
    }

    /// The refresh's timeout is the lease end minus the old element's end
    /// (upper bound), so a refresh applied at any instant the old element
    /// was still alive ends inside the lease.
    #[test]
    fn a_refresh_gives_lease_end_minus_the_old_end_and_only_once_it_extends() {
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Done { ttl: ms(240) }, at(0));
        // 50 ms on, the lease moved to 290: a refresh would give 50 ms,
        // not twice the 190 ms the element has left: not yet.
        assert_eq!(f.next(at(50), true, Some(at(290))), None);
        assert_eq!(f.next_due(Some(at(290))), Some(at(215)), "(3 x 240 - 290) / 2");
        // At 130 the lease ends at 370: 130 ms of refresh against 110 left.
        assert_eq!(f.next(at(130), true, Some(at(370))), None, "110 > 130 / 2");
        // The due instant rounds up: with an odd 3E - L, one microsecond
        // earlier has no refresh, the instant itself has one.
        let mut g = f;
        let lease = Instant(at(410).0 + 1);
        let due = g.next_due(Some(lease)).expect("due");
        assert_eq!(g.next(Instant(due.0 - 1), true, Some(lease)), None);
        assert!(g.next(due, true, Some(lease)).is_some(), "due at {due:?} but nothing to do: a busy loop");
        // A lease running out (no acknowledged heartbeat): once a refresh
        // would give under a millisecond, none is due at all.
        let mut g = f;
        assert_eq!(g.end(), Some(at(240)));
        assert_eq!(g.next_due(Some(Instant(at(240).0 + 999))), None);
        assert_eq!(g.next(at(239), true, Some(Instant(at(240).0 + 999))), None);
        // At 170 the lease ends at 410: 170 ms against 70 left.
        assert_eq!(f.next(at(170), true, Some(at(410))), Some(FenceOp::Refresh { ttl: ms(170) }));
        // However late it lands (at most at 240, while the old element
        // lives), it ends by 240 + 170 = 410: the lease end.
        f.done(FenceOp::Refresh { ttl: ms(170) }, FenceResult::Done { ttl: ms(170) }, at(171));
        assert_eq!(f.end(), Some(at(341)));
        assert!(f.end() <= Some(at(410)));
    }

    #[test]
    fn an_expired_element_is_granted_afresh_and_a_refresh_that_found_none_forgets_it() {
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Done { ttl: ms(240) }, at(1));
        f.next(at(200), true, Some(at(400)));
        f.done(FenceOp::Refresh { ttl: ms(159) }, FenceResult::Expired, at(202));
        assert_eq!(f.end(), None);
        assert_eq!(f.next(at(203), true, Some(at(400))), Some(FenceOp::Grant { deadline: at(400) }));
        // Past its upper bound the element is surely gone: grant, not refresh.
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Done { ttl: ms(240) }, at(1));
        assert_eq!(f.next(at(241), true, Some(at(600))), Some(FenceOp::Grant { deadline: at(600) }));
    }

    #[test]
    fn revoke_when_the_vip_is_not_wanted_or_the_lease_is_gone_and_failures_change_nothing() {
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Done { ttl: ms(240) }, at(1));
        assert_eq!(f.next(at(10), true, None), Some(FenceOp::Revoke), "lease gone");
        f.done(FenceOp::Revoke, FenceResult::Failed, at(11));
        assert_eq!(f.end(), Some(at(241)), "a failed revoke leaves the element");
        assert_eq!(f.next(at(61), false, Some(at(240))), Some(FenceOp::Revoke), "retried; VIP not wanted");
        f.done(FenceOp::Revoke, FenceResult::Done { ttl: Duration::ZERO }, at(62));
        assert_eq!(f.end(), None);
        assert_eq!(f.next(at(63), false, None), None);
        // A reinstall (tampering detected) starts without an element.
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Done { ttl: ms(240) }, at(1));
        f.installed(true);
        assert_eq!(f.end(), None);
    }

    /// A grant the executor refused (under a millisecond left when it got
    /// to it) is not handed out again at once for the same lease: no busy
    /// loop of refusals (the simulator found one).
    #[test]
    fn no_grant_with_less_than_a_millisecond_of_lease() {
        let mut f = installed();
        assert_eq!(f.next(Instant(0), true, Some(Instant(at(9).0 - 1))), None);
        assert_eq!(f.next(Instant(0), true, Some(at(9))), Some(FenceOp::Grant { deadline: at(9) }));
        f.done(FenceOp::Grant { deadline: at(9) }, FenceResult::LeaseEnded, Instant(1));
        assert_eq!(f.next(Instant(1), true, Some(at(9))), None);
    }

    /// A refused operation is not asked again at every event (the lab
    /// logged 125 failed armings a second after its table was deleted):
    /// the next comes [`FAILED_RETRY`] later, the host's deadline wakes it
    /// then, and a reinstall (a fresh table) lets it go at once.
    #[test]
    fn a_failed_operation_is_retried_after_a_pause_or_at_once_after_a_reinstall() {
        let grant = Some(FenceOp::Grant { deadline: at(240) });
        let mut f = installed();
        assert_eq!(f.next(at(0), true, Some(at(240))), grant);
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Failed, at(1));
        assert_eq!(f.next(at(2), true, Some(at(240))), None, "retried at once");
        let retry = at(1).add(FAILED_RETRY);
        assert_eq!(f.next_due(Some(at(240))), Some(retry), "nothing wakes the host for the retry");
        assert_eq!(f.next(Instant(retry.0 - 1), true, Some(at(240))), None);
        assert_eq!(f.next(retry, true, Some(at(240))), grant);
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Failed, at(60));
        assert_eq!(f.next_due(Some(at(240))), Some(at(60).add(FAILED_RETRY)));
        f.installed(true);
        assert_eq!(f.next(at(61), true, Some(at(240))), grant, "a fresh table waits for nothing");
        // A retry instant that finds nothing to do is forgotten: no wake-up
        // in the past, which would spin the executor.
        let mut f = installed();
        f.next(at(0), true, Some(at(240)));
        f.done(FenceOp::Grant { deadline: at(240) }, FenceResult::Failed, at(1));
        assert_eq!(f.next(at(100), false, None), None);
        assert_eq!(f.next_due(None), None);
    }

    #[test]
    fn grants_below_a_millisecond_past_the_arming_are_refused() {
        assert_eq!(grant_ttl(at(100), at(100)), None);
        assert_eq!(grant_ttl(at(100), Instant(at(91).0 + 1)), None, "8 ms of arming leave under 1 ms");
        assert_eq!(grant_ttl(at(100), at(91)), Some(ms(1)));
        assert_eq!(grant_ttl(at(100), at(90)), Some(ms(2)));
        assert_eq!(grant_ttl(at(100), at(101)), None, "past the deadline");
    }

    /// The grant's bound: however late the batch lands while the arming
    /// lives, the element ends before the lease does.
    #[test]
    fn a_grant_landing_at_the_last_instant_of_its_arming_ends_inside_the_lease() {
        let deadline = at(300);
        let armed_at = at(40); // the arming reached the kernel
        let t1 = at(41); // clock read after the arming returned
        let ttl = grant_ttl(deadline, t1).expect("worth it");
        let latest_batch = armed_at.add(ARM_TTL); // exclusive: the arming is gone then
        assert!(latest_batch.add(ttl) <= deadline, "{:?} + {ttl:?} > {deadline:?}", latest_batch);
    }
}

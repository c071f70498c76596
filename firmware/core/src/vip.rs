//! The VIP state machine: whether the virtual IP is on this node, and the
//! gratuitous ARP announcements that move clients to it.
//!
//! ```text
//!              want ∧ add issued                 Add done ok
//!  Released ─────────────────────▶ Claiming ──────────────────────▶ Held
//!     ▲                               │ Add failed (retry later)     │ │
//!     │◀──────────────────────────────┘                              │ │ announce: burst of N,
//!     │                                                              │ │ then every refresh;
//!     │  Remove done ok              ¬want ∧ remove issued           │ │ renew the kernel
//!     └──────────────── Releasing ◀──────────────────────────────────┘ │ lifetime periodically
//!                        │  ▲ Remove failed: retry at once-ish         ◀─┘
//!                        └──┘
//! ```
//!
//! `want` is decided by the node (leader with a valid lease, and any
//! strict-mode wait done). The machine only sequences the actions: one
//! action in flight at a time, and a `want` that flips while an action is
//! in flight is acted on when it completes. Releasing always wins over
//! claiming: a Remove is never skipped because a new Add is wanted.

use crate::config::Timing;
use crate::io::{Notice, Output, VipAction, VipPhase};
use crate::time::Instant;
use core::time::Duration;

/// Retry spacing after a failed netlink action.
const RETRY: Duration = Duration::from_millis(100);

/// The VIP state machine.
#[derive(Clone, Debug)]
pub struct Vip {
    phase: VipPhase,
    burst_left: u32,
    next_announce: Option<Instant>,
    next_renew: Option<Instant>,
    retry_at: Option<Instant>,
    remove_failed: bool,
    /// Adds that failed in a row (reset by one that succeeds).
    add_failures: u32,
    /// When an Add or Renew was last issued: the kernel lifetime runs from
    /// about then.
    last_refresh: Option<Instant>,
}

impl Default for Vip {
    fn default() -> Self {
        Vip {
            phase: VipPhase::Released,
            burst_left: 0,
            next_announce: None,
            next_renew: None,
            retry_at: None,
            remove_failed: false,
            add_failures: 0,
            last_refresh: None,
        }
    }
}

impl Vip {
    /// The current phase.
    pub fn phase(&self) -> VipPhase {
        self.phase
    }

    /// Moves toward `want` and runs due announcements and renewals.
    pub fn step(&mut self, now: Instant, want: bool, t: &Timing, out: &mut Vec<Output>) {
        if self.retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.retry_at = None;
        match (self.phase, want) {
            (VipPhase::Released, true) => {
                self.phase = VipPhase::Claiming;
                self.last_refresh = Some(now);
                out.push(Output::Vip(VipAction::Add));
            }
            (VipPhase::Held, false) => self.release(out),
            (VipPhase::Held, true) => {
                if self.next_renew.is_some_and(|r| now >= r) {
                    self.next_renew = Some(now.add(t.vip_renew_interval));
                    self.last_refresh = Some(now);
                    out.push(Output::Vip(VipAction::Renew));
                }
                if self.next_announce.is_some_and(|a| now >= a) {
                    out.push(Output::Vip(VipAction::Announce));
                    self.schedule_next_announce(now, t);
                }
            }
            // A failed Remove is retried once its retry time has come.
            (VipPhase::Releasing, _) if self.remove_failed => {
                self.remove_failed = false;
                out.push(Output::Vip(VipAction::Remove));
            }
            // Otherwise Claiming and Releasing wait for their action to finish.
            _ => {}
        }
    }

    /// An action finished. `want` is re-evaluated by the next [`Vip::step`].
    pub fn done(&mut self, now: Instant, action: VipAction, ok: bool, t: &Timing, out: &mut Vec<Output>) {
        if !ok {
            out.push(Output::Notice(Notice::VipFailed { action }));
        }
        match (self.phase, action) {
            (VipPhase::Claiming, VipAction::Add) if ok => {
                self.phase = VipPhase::Held;
                self.add_failures = 0;
                self.burst_left = t.garp_burst_count;
                self.next_renew = Some(now.add(t.vip_renew_interval));
                // The first announcement is due at once, but goes out from
                // `step`, which knows whether the VIP is still wanted: a
                // lease that ended while the add was in flight must not pull
                // clients to this node.
                self.next_announce = Some(now);
            }
            (VipPhase::Claiming, VipAction::Add) => {
                // The add may have half-happened (v4 added, v6 refused):
                // remove whatever is there before trying again, and not
                // before RETRY: the runtime feeds completions back at once,
                // so an immediate retry of a persistent failure would spin.
                self.phase = VipPhase::Releasing;
                self.add_failures = self.add_failures.saturating_add(1);
                self.retry_at = Some(now.add(RETRY));
                out.push(Output::Vip(VipAction::Remove));
            }
            (VipPhase::Releasing, VipAction::Remove) if ok => {
                self.phase = VipPhase::Released;
                self.clear_timers();
            }
            (VipPhase::Releasing, VipAction::Remove) => {
                // Still possibly on the interface: try again shortly. The
                // kernel lifetime removes it anyway, as renewals have stopped.
                self.retry_at = Some(now.add(RETRY));
                self.remove_failed = true;
            }
            // Renew and Announce failures are reported; the next one retries.
            _ => {}
        }
    }

    /// Until when the VIP may still be on the interface although this node
    /// no longer wants it: `None` once a Remove succeeded; otherwise the
    /// kernel lifetime after the last Add or Renew (a Remove that keeps
    /// failing is outlived by the lifetime, since renewals have stopped).
    pub fn fence(&self, t: &Timing) -> Option<Instant> {
        if self.phase == VipPhase::Released {
            return None;
        }
        self.last_refresh.map(|r| r.add(t.vip_lifetime).add(t.kernel_expiry_slack))
    }

    /// Adds that failed in a row.
    pub fn add_failures(&self) -> u32 {
        self.add_failures
    }

    /// A new leadership starts with a clean record.
    pub fn reset_failures(&mut self) {
        self.add_failures = 0;
    }

    /// Starts a fresh announcement burst (another host was seen answering
    /// for the VIP while we hold it).
    pub fn reannounce(&mut self, now: Instant, t: &Timing) {
        if self.phase == VipPhase::Held {
            self.burst_left = t.garp_burst_count;
            self.next_announce = Some(now);
        }
    }

    /// The next instant at which [`Vip::step`] has work.
    pub fn deadline(&self) -> Option<Instant> {
        if self.retry_at.is_some() {
            return self.retry_at;
        }
        match self.phase {
            VipPhase::Held => match (self.next_announce, self.next_renew) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            },
            _ => None,
        }
    }

    fn release(&mut self, out: &mut Vec<Output>) {
        self.phase = VipPhase::Releasing;
        self.clear_timers();
        out.push(Output::Vip(VipAction::Remove));
    }

    fn clear_timers(&mut self) {
        self.burst_left = 0;
        self.next_announce = None;
        self.next_renew = None;
    }

    fn schedule_next_announce(&mut self, now: Instant, t: &Timing) {
        self.burst_left = self.burst_left.saturating_sub(1);
        let gap = if self.burst_left > 0 { t.garp_burst_interval } else { t.garp_refresh_interval };
        self.next_announce = Some(now.add(gap));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant(n * 1000)
    }

    fn vips(out: &[Output]) -> Vec<VipAction> {
        out.iter()
            .filter_map(|o| match o {
                Output::Vip(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn claim_announces_a_burst_then_refreshes() {
        let t = Timing::default();
        let mut v = Vip::default();
        let mut out = vec![];
        v.step(ms(0), true, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Add]);
        assert_eq!(v.phase(), VipPhase::Claiming);
        out.clear();
        v.step(ms(10), true, &t, &mut out);
        assert!(out.is_empty(), "nothing while the add is in flight");
        v.done(ms(10), VipAction::Add, true, &t, &mut out);
        assert!(vips(&out).is_empty(), "announcing is step's decision");
        assert_eq!(v.phase(), VipPhase::Held);
        v.step(ms(10), true, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Announce]);
        // The rest of the burst: 4 more at 100 ms spacing.
        let mut announces = 1;
        let mut now = 10;
        while now < 1000 {
            now += 10;
            out.clear();
            v.step(ms(now), true, &t, &mut out);
            announces += vips(&out).iter().filter(|a| **a == VipAction::Announce).count();
        }
        assert_eq!(announces, 5);
        // Next announce is a refresh, 60 s after the last burst frame.
        assert_eq!(v.deadline().map(|d| d >= ms(410)), Some(true));
    }

    #[test]
    fn an_add_that_completes_after_the_lease_ended_is_never_announced() {
        let t = Timing::default();
        let mut v = Vip::default();
        let mut out = vec![];
        v.step(ms(0), true, &t, &mut out);
        out.clear();
        v.done(ms(5), VipAction::Add, true, &t, &mut out);
        v.step(ms(5), false, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Remove]);
    }

    #[test]
    fn renews_the_kernel_lifetime_while_held() {
        let t = Timing::default();
        let mut v = Vip::default();
        let mut out = vec![];
        v.step(ms(0), true, &t, &mut out);
        v.done(ms(0), VipAction::Add, true, &t, &mut out);
        out.clear();
        v.step(ms(249), true, &t, &mut out);
        assert!(!vips(&out).contains(&VipAction::Renew));
        v.step(ms(250), true, &t, &mut out);
        assert!(vips(&out).contains(&VipAction::Renew));
    }

    #[test]
    fn unwanted_while_claiming_is_removed_after_the_add() {
        let t = Timing::default();
        let mut v = Vip::default();
        let mut out = vec![];
        v.step(ms(0), true, &t, &mut out);
        out.clear();
        v.step(ms(1), false, &t, &mut out);
        assert!(out.is_empty());
        v.done(ms(2), VipAction::Add, true, &t, &mut out);
        out.clear();
        v.step(ms(2), false, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Remove]);
        v.done(ms(3), VipAction::Remove, true, &t, &mut out);
        assert_eq!(v.phase(), VipPhase::Released);
        assert_eq!(v.deadline(), None);
    }

    #[test]
    fn failed_remove_is_retried_and_failed_add_cleans_up() {
        let t = Timing::default();
        let mut v = Vip::default();
        let mut out = vec![];
        v.step(ms(0), true, &t, &mut out);
        out.clear();
        v.done(ms(1), VipAction::Add, false, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Remove]);
        assert_eq!(v.phase(), VipPhase::Releasing);
        out.clear();
        v.done(ms(2), VipAction::Remove, false, &t, &mut out);
        assert!(vips(&out).is_empty(), "no hot retry loop");
        assert_eq!(v.deadline(), Some(ms(102)));
        v.step(ms(50), true, &t, &mut out);
        assert!(vips(&out).is_empty());
        v.step(ms(102), true, &t, &mut out);
        assert_eq!(vips(&out), [VipAction::Remove], "retried when due; release wins over want");
        v.done(ms(103), VipAction::Remove, true, &t, &mut out);
        assert_eq!(v.phase(), VipPhase::Released);
    }
}

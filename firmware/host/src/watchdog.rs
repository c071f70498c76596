//! When to pet the hardware watchdog, as the host decides it (issue 11,
//! item 5).
//!
//! The box resets itself when the supervisor can no longer keep its
//! promises: the watchdog is petted only while every critical part made
//! progress recently (the event loop, the volume thread, the PBX's
//! supervision), and never again once the host has decided to self-fence
//! (a node that must give up the active role and cannot: a PBX that will
//! not die, a VIP removal that keeps failing). A frozen or wedged
//! supervisor pets nothing at all, which is the point.
//!
//! ```text
//!   progress(part, at) for each part ──▶ all fresh (≤ stale_after)? ──▶ Pet, at most every pet_interval
//!   self_fence(why)                   ──▶ never pet again (the box resets within the device's timeout)
//! ```
//!
//! Must not: touch the device (the executor opens it, sets its timeout,
//! pets it and, only on a clean configured shutdown, disarms it), or read
//! a clock.

use core::time::Duration;

use triad_core::Instant;

/// A part of the supervisor whose progress the watchdog requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Critical {
    /// The host's event loop (every event it handles).
    EventLoop,
    /// The volume thread (its status snapshot is recent).
    VolumeThread,
    /// The PBX's supervision (its timers run).
    PbxSupervision,
}

/// Why the host stopped petting for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfFence {
    /// The PBX did not stop even after SIGKILL of its process group.
    PbxWillNotStop,
    /// The volume's filesystem was not unmounted and detached within its
    /// deadline on the way down.
    FilesystemWillNotGoDown,
}

/// Petting rules, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchdogTiming {
    /// At most one pet per this long.
    pub pet_interval: Duration,
    /// A part whose last progress is older than this blocks petting.
    pub stale_after: Duration,
}

/// The host's decisions about the watchdog.
#[derive(Clone, Debug)]
pub struct Watchdog {
    timing: WatchdogTiming,
    required: Vec<Critical>,
    progress: Vec<(Critical, Instant)>,
    last_pet: Option<Instant>,
    fenced: Option<SelfFence>,
    /// A pet was refused because a part is stale: no pet deadline until a
    /// part progresses (an event does that), or the runtime's timer-first
    /// loop would tick at a past deadline forever and starve the very
    /// events (the volume thread's progress) that would end the wait.
    waiting: bool,
}

impl Watchdog {
    /// Requires progress of each of `required` before any pet.
    pub fn new(timing: WatchdogTiming, required: &[Critical]) -> Self {
        Watchdog {
            timing,
            required: required.to_vec(),
            progress: Vec::new(),
            last_pet: None,
            fenced: None,
            waiting: false,
        }
    }

    /// `part` made progress at `at`.
    pub fn progressed(&mut self, part: Critical, at: Instant) {
        self.waiting = false;
        match self.progress.iter_mut().find(|(p, _)| *p == part) {
            Some((_, t)) => *t = (*t).max(at),
            None => self.progress.push((part, at)),
        }
    }

    /// Stop petting for good: the box resets when the device's timeout
    /// runs out. Returns whether this was news.
    pub fn self_fence(&mut self, why: SelfFence) -> bool {
        let news = self.fenced.is_none();
        self.fenced.get_or_insert(why);
        news
    }

    /// Why petting stopped for good, if it did.
    pub fn fenced(&self) -> Option<SelfFence> {
        self.fenced
    }

    /// The parts that block petting at `now` (none made progress within
    /// `stale_after`), for status and the log.
    pub fn stale(&self, now: Instant) -> Vec<Critical> {
        self.required
            .iter()
            .copied()
            .filter(|part| {
                let last = self.progress.iter().find(|(p, _)| p == part).map(|(_, t)| *t);
                last.is_none_or(|t| now.since(t) > self.timing.stale_after)
            })
            .collect()
    }

    /// Whether to pet now; marks the pet.
    pub fn pet_due(&mut self, now: Instant) -> bool {
        let due = self.last_pet.is_none_or(|t| now.since(t) >= self.timing.pet_interval);
        if !due || self.fenced.is_some() {
            return false;
        }
        if !self.stale(now).is_empty() {
            self.waiting = true;
            return false;
        }
        self.last_pet = Some(now);
        true
    }

    /// When [`pet_due`](Self::pet_due) may next say yes (for the host's
    /// deadline), if ever; none while a refused pet waits for progress.
    pub fn next_pet(&self) -> Option<Instant> {
        if self.fenced.is_some() || self.waiting {
            return None;
        }
        Some(self.last_pet.map_or(Instant::ZERO, |t| t.add(self.timing.pet_interval)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1000)
    }

    fn dog() -> Watchdog {
        let timing =
            WatchdogTiming { pet_interval: Duration::from_millis(1000), stale_after: Duration::from_millis(3000) };
        Watchdog::new(timing, &[Critical::EventLoop, Critical::VolumeThread])
    }

    #[test]
    fn petted_only_once_every_part_made_progress_and_at_most_every_interval() {
        let mut d = dog();
        assert!(!d.pet_due(at(0)), "no progress yet");
        assert_eq!(d.stale(at(0)), vec![Critical::EventLoop, Critical::VolumeThread]);
        d.progressed(Critical::EventLoop, at(0));
        assert!(!d.pet_due(at(0)), "the volume thread has not shown progress");
        d.progressed(Critical::VolumeThread, at(0));
        assert!(d.pet_due(at(0)));
        assert!(!d.pet_due(at(999)), "one pet per interval");
        assert_eq!(d.next_pet(), Some(at(1000)));
        assert!(d.pet_due(at(1000)));
    }

    #[test]
    fn a_part_without_progress_for_too_long_stops_the_pets() {
        let mut d = dog();
        d.progressed(Critical::EventLoop, at(0));
        d.progressed(Critical::VolumeThread, at(0));
        assert!(d.pet_due(at(0)));
        // The volume thread is stuck (a sync that never returns); the loop
        // goes on.
        for t in [1000, 2000, 3000] {
            d.progressed(Critical::EventLoop, at(t));
            assert!(d.pet_due(at(t)), "still within stale_after at {t} ms");
        }
        d.progressed(Critical::EventLoop, at(4000));
        assert!(!d.pet_due(at(4000)));
        assert_eq!(d.stale(at(4000)), vec![Critical::VolumeThread]);
        // It comes back: pets resume.
        d.progressed(Critical::VolumeThread, at(4500));
        assert!(d.pet_due(at(4500)));
        // Progress reported out of order never moves a part back.
        d.progressed(Critical::VolumeThread, at(100));
        assert!(d.stale(at(7001)).contains(&Critical::EventLoop), "3 s and 1 ms since the loop's last");
        assert!(!d.stale(at(7001)).contains(&Critical::VolumeThread), "not moved back to 100 ms");
    }

    #[test]
    fn a_pet_refused_for_a_stale_part_leaves_no_deadline_until_progress() {
        let mut d = dog();
        // At start nothing progressed: due at once, refused.
        assert_eq!(d.next_pet(), Some(Instant::ZERO));
        d.progressed(Critical::EventLoop, at(0));
        assert!(!d.pet_due(at(0)));
        assert_eq!(d.next_pet(), None, "a deadline in the past would spin the runtime's loop");
        d.progressed(Critical::VolumeThread, at(10));
        assert_eq!(d.next_pet(), Some(Instant::ZERO));
        assert!(d.pet_due(at(10)));
        assert_eq!(d.next_pet(), Some(at(1010)));
    }

    #[test]
    fn after_a_self_fence_nothing_is_ever_petted_again() {
        let mut d = dog();
        d.progressed(Critical::EventLoop, at(0));
        d.progressed(Critical::VolumeThread, at(0));
        assert!(d.self_fence(SelfFence::PbxWillNotStop));
        assert!(!d.self_fence(SelfFence::PbxWillNotStop), "said once");
        for t in [0, 1000, 10_000] {
            d.progressed(Critical::EventLoop, at(t));
            d.progressed(Critical::VolumeThread, at(t));
            assert!(!d.pet_due(at(t)));
        }
        assert_eq!(d.next_pet(), None);
        assert_eq!(d.fenced(), Some(SelfFence::PbxWillNotStop));
    }
}

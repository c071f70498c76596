//! The PBX's supervision, as the host decides it (issue 11, item 1-2).
//!
//! Only the active node runs the PBX. The host says whether it should run
//! ([`Pbx::want`]); this module starts it, proves it alive with a SIP probe,
//! restarts it with exponential backoff when it dies or stops answering,
//! stops it (the configured signal, then SIGKILL of its process group) when
//! it must not run, and says when failures pile up so that the node should
//! hand the active role to a healthy peer.
//!
//! ```text
//!            want ──▶ Spawn            Spawned          first probe answered (probed
//!                                                    every START_PROBE_INTERVAL until then)
//!  Stopped ─────────────────▶ Starting ────────▶ (probing) ──────────────▶ Running
//!     ▲                          │ start_grace without an answer, or died      │ `probe_failures` probes
//!     │                          ▼                                             │ unanswered in a row, or died
//!     │       backoff ends    Backoff ◀──────────── (a failure) ◀──────────────┘
//!     │        (wanted) ─▶ Spawn │
//!     │                          │ not wanted
//!     └───── exited ── Stopping ◀┘ (stop signal; SIGKILL of the group after stop_timeout;
//!                                    `StopHung` after kill_timeout more: the host self-fences)
//! ```
//!
//! Rules, each with what it prevents:
//! - **One PBX at a time.** A new process is spawned only from `Stopped` or
//!   at the end of a backoff, i.e. only after the previous one was seen to
//!   exit, and a process that died on its own has its whole process group
//!   killed first (its workers would otherwise hold the port and the
//!   files): two PBXs never write the volume at once.
//! - **Stale reports change nothing.** Spawn, probe and exit reports carry
//!   the number of the process (or probe) they are about; a late answer for
//!   an earlier one is ignored (a probe answered after its timeout, the exit
//!   of a process already replaced).
//! - **A probe that times out is a failed probe**, decided here at the
//!   deadline, whatever the adapter does later.
//! - **Backoff grows with the failures in the window**: `backoff_first`
//!   doubled per earlier failure still inside `failure_window`, capped at
//!   `backoff_max`; a PBX that ran healthy for a whole window starts again
//!   from `backoff_first`.
//! - **Hand over after `failures_to_hand_over` failures within the
//!   window** ([`Pbx::hand_over_wanted`]): the host then switches over to an
//!   up-to-date, ready peer and refuses the role until the window has
//!   passed or an operator clears it. If no peer can take it, supervision
//!   goes on restarting with backoff: a failure that follows the data must
//!   not leave the cluster without an active node.
//! - **A PBX that cannot be started at all** (the adapter could not spawn
//!   it) makes the node [`unfit`](Pbx::fit) until a spawn succeeds, so it
//!   never takes the role from a healthy node.
//!
//! Must not: read a clock, spawn or signal anything (the executor does,
//! with the commands returned), or decide who leads (the core does; this
//! module only says what the host should ask for).

use core::time::Duration;
use std::collections::VecDeque;

use triad_core::Instant;

/// Between probes of a PBX that has not answered yet: it is usually up in
/// milliseconds (Kamailio: 3-15 ms), so waiting a whole `probe_interval`
/// after the first, too early probe would add that interval to every
/// restart (measured: 310 ms in the lab, 200 of them this wait).
pub const START_PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Supervision timing, from config (`[pbx]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PbxTiming {
    /// Between two probes of a running PBX.
    pub probe_interval: Duration,
    /// A probe not answered within this has failed.
    pub probe_timeout: Duration,
    /// Failed probes in a row that count as a dead PBX.
    pub probe_failures: u32,
    /// From the spawn to the first answered probe at most (a PBX loads its
    /// registrations before it routes).
    pub start_grace: Duration,
    /// The first restart's delay.
    pub backoff_first: Duration,
    /// The longest restart delay.
    pub backoff_max: Duration,
    /// From the stop signal to SIGKILL of the process group.
    pub stop_timeout: Duration,
    /// From SIGKILL to giving up on the stop ([`PbxNotice::StopHung`]).
    pub kill_timeout: Duration,
    /// Failures are counted over this long.
    pub failure_window: Duration,
    /// Failures within the window after which the node should hand over.
    pub failures_to_hand_over: u32,
}

impl Default for PbxTiming {
    fn default() -> Self {
        PbxTiming {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            probe_failures: 3,
            start_grace: Duration::from_secs(10),
            backoff_first: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            kill_timeout: Duration::from_secs(5),
            failure_window: Duration::from_secs(300),
            failures_to_hand_over: 3,
        }
    }
}

/// Why a [`PbxTiming`] cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PbxTimingError {
    /// A duration that must be positive is zero.
    #[error("pbx.{field} must be more than zero")]
    Zero {
        /// The config field.
        field: &'static str,
    },
    /// A probe would still be waiting for its answer when the next is due.
    #[error("pbx.probe_timeout ({timeout:?}) must be shorter than pbx.probe_interval ({interval:?})")]
    ProbeTimeoutTooLong {
        /// `probe_timeout`.
        timeout: Duration,
        /// `probe_interval`.
        interval: Duration,
    },
    /// The backoff could never grow to its cap or starts above it.
    #[error("pbx.backoff_first ({first:?}) must not exceed pbx.backoff_max ({max:?})")]
    BackoffInverted {
        /// `backoff_first`.
        first: Duration,
        /// `backoff_max`.
        max: Duration,
    },
    /// The start grace leaves no time for one probe.
    #[error("pbx.start_grace ({grace:?}) must be longer than pbx.probe_timeout ({timeout:?})")]
    GraceTooShort {
        /// `start_grace`.
        grace: Duration,
        /// `probe_timeout`.
        timeout: Duration,
    },
}

impl PbxTiming {
    /// Checks that the settings can work together; the error names the
    /// field that is wrong.
    pub fn validate(&self) -> Result<(), PbxTimingError> {
        let positive = [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("start_grace", self.start_grace),
            ("backoff_first", self.backoff_first),
            ("stop_timeout", self.stop_timeout),
            ("kill_timeout", self.kill_timeout),
            ("failure_window", self.failure_window),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(PbxTimingError::Zero { field });
        }
        if self.probe_failures == 0 {
            return Err(PbxTimingError::Zero { field: "probe_failures" });
        }
        if self.failures_to_hand_over == 0 {
            return Err(PbxTimingError::Zero { field: "failures_to_hand_over" });
        }
        if self.probe_timeout >= self.probe_interval {
            return Err(PbxTimingError::ProbeTimeoutTooLong {
                timeout: self.probe_timeout,
                interval: self.probe_interval,
            });
        }
        if self.backoff_first > self.backoff_max {
            return Err(PbxTimingError::BackoffInverted { first: self.backoff_first, max: self.backoff_max });
        }
        if self.start_grace <= self.probe_timeout {
            return Err(PbxTimingError::GraceTooShort { grace: self.start_grace, timeout: self.probe_timeout });
        }
        Ok(())
    }
}

/// What the executor must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbxCommand {
    /// Start the PBX as configured; report [`PbxEvent::Spawned`] or
    /// [`PbxEvent::SpawnFailed`] with this number, and later its exit.
    Spawn {
        /// The process's number in this supervision.
        run: u64,
    },
    /// Send one health probe (SIP OPTIONS) to process `run`; report
    /// [`PbxEvent::ProbeDone`] with `probe` (late answers are ignored).
    Probe {
        /// The process probed.
        run: u64,
        /// The probe's number.
        probe: u64,
    },
    /// Send the configured stop signal to process `run`'s process group.
    Stop {
        /// The process.
        run: u64,
    },
    /// SIGKILL process `run`'s process group.
    Kill {
        /// The process.
        run: u64,
    },
    /// For the log and `triad status`.
    Notice(PbxNotice),
}

/// What happened, for the log, `triad status` and the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbxNotice {
    /// Process `run` was spawned.
    Started {
        /// The process.
        run: u64,
    },
    /// Its first probe was answered: it serves.
    Healthy {
        /// The process.
        run: u64,
    },
    /// A probe failed (timed out or was answered with an error).
    ProbeFailed {
        /// The process.
        run: u64,
        /// Failed probes in a row.
        in_a_row: u32,
    },
    /// Process `run` failed: it died, stopped answering, or never
    /// answered within the start grace.
    Failed {
        /// The process.
        run: u64,
        /// What happened.
        why: PbxFailure,
        /// Failures within the window, this one included.
        in_window: u32,
    },
    /// The next start in `delay`.
    Restarting {
        /// The delay.
        delay: Duration,
    },
    /// Failures within the window reached the limit: hand the role over.
    HandOverWanted {
        /// Failures within the window.
        in_window: u32,
    },
    /// A stop did not finish: SIGKILL of the group did not end it within
    /// `kill_timeout`. The host must give up the role by resetting the box.
    StopHung {
        /// The process.
        run: u64,
    },
    /// Process `run` is gone after a stop.
    Stopped {
        /// The process.
        run: u64,
    },
}

/// Why a process counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbxFailure {
    /// It exited (or was killed) without being asked to.
    Died,
    /// `probe_failures` probes in a row were not answered.
    NotAnswering,
    /// No probe was answered within `start_grace` of the spawn.
    NeverAnswered,
    /// It could not be spawned.
    CannotStart,
}

/// What the executor reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbxEvent {
    /// [`PbxCommand::Spawn`] `run` started a process.
    Spawned {
        /// The process.
        run: u64,
    },
    /// [`PbxCommand::Spawn`] `run` could not start one (no such binary or
    /// user, exec failed).
    SpawnFailed {
        /// The process that was not.
        run: u64,
    },
    /// Process `run`'s group leader exited (whatever the cause).
    Exited {
        /// The process.
        run: u64,
    },
    /// Probe `probe` was answered (`ok`: any SIP response) or failed.
    ProbeDone {
        /// The probe.
        probe: u64,
        /// Answered.
        ok: bool,
    },
}

/// Where supervision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbxState {
    /// No process, none wanted (or waiting for nothing).
    Stopped,
    /// Spawned (or being spawned) and not yet answering.
    Starting {
        /// The process.
        run: u64,
        /// When it was spawned.
        since: Instant,
        /// The adapter confirmed the spawn.
        spawned: bool,
    },
    /// Answering its probes.
    Running {
        /// The process.
        run: u64,
        /// When its first probe was answered.
        since: Instant,
    },
    /// Waiting to start again after a failure.
    Backoff {
        /// The next start.
        until: Instant,
    },
    /// Asked to stop; waiting for its exit.
    Stopping {
        /// The process.
        run: u64,
        /// When the stop signal went out.
        since: Instant,
        /// SIGKILL went out too.
        killed: bool,
        /// `StopHung` was reported.
        hung: bool,
        /// After the exit: back off and start again (a failed process
        /// being replaced), rather than stay stopped.
        restart: bool,
    },
}

/// The probe in flight, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probing {
    probe: u64,
    deadline: Instant,
}

/// The PBX's supervisor.
#[derive(Clone, Debug)]
pub struct Pbx {
    timing: PbxTiming,
    state: PbxState,
    wanted: bool,
    next_run: u64,
    next_probe: u64,
    probing: Option<Probing>,
    /// When the next probe of a running (or starting) process goes out.
    probe_at: Option<Instant>,
    misses: u32,
    /// Failures within the window, oldest first.
    failures: VecDeque<Instant>,
    hand_over: bool,
    cannot_start: bool,
    /// The last start's length: from the spawn command to the first
    /// answered probe (for status).
    last_start: Option<Duration>,
}

impl Pbx {
    /// A supervisor with nothing running. `timing` must have passed
    /// [`PbxTiming::validate`].
    pub fn new(timing: PbxTiming) -> Self {
        Pbx {
            timing,
            state: PbxState::Stopped,
            wanted: false,
            next_run: 1,
            next_probe: 1,
            probing: None,
            probe_at: None,
            misses: 0,
            failures: VecDeque::new(),
            hand_over: false,
            cannot_start: false,
            last_start: None,
        }
    }

    /// How long the last start took, from the spawn command to the first
    /// answered probe.
    pub fn last_start(&self) -> Option<Duration> {
        self.last_start
    }

    /// Where supervision stands.
    pub fn state(&self) -> PbxState {
        self.state
    }

    /// Failures within the window reached the limit: the host should hand
    /// the role over and refuse it until [`clear`](Self::clear) or the
    /// window passes.
    pub fn hand_over_wanted(&self) -> bool {
        self.hand_over
    }

    /// Whether this node's PBX could serve if it took the role: not when
    /// its last spawn failed, nor while a hand-over is wanted.
    pub fn fit(&self) -> bool {
        !self.cannot_start && !self.hand_over
    }

    /// The PBX should run (`true`: this node is active and its volume
    /// mounted) or not.
    pub fn want(&mut self, now: Instant, run: bool) -> Vec<PbxCommand> {
        let mut out = Vec::new();
        if run == self.wanted {
            return out;
        }
        self.wanted = run;
        match (run, self.state) {
            (true, PbxState::Stopped) => self.spawn(now, &mut out),
            (false, PbxState::Starting { run, .. } | PbxState::Running { run, .. }) => {
                self.stop(now, run, false, &mut out)
            }
            (false, PbxState::Backoff { .. }) => self.state = PbxState::Stopped,
            (false, PbxState::Stopping { run, since, killed, hung, .. }) => {
                self.state = PbxState::Stopping { run, since, killed, hung, restart: false }
            }
            // Wanted again while stopping or backing off: that ends first.
            _ => {}
        }
        out
    }

    /// An operator cleared the failures: the node may take the role again.
    pub fn clear(&mut self) {
        self.failures.clear();
        self.hand_over = false;
        self.cannot_start = false;
    }

    /// Failures within the window now (for status).
    pub fn failures_in_window(&self) -> u32 {
        self.failures.len() as u32
    }

    /// When the oldest failure in the window ages out, if any.
    pub fn window_ends(&self) -> Option<Instant> {
        self.failures.front().map(|f| f.add(self.timing.failure_window))
    }

    /// The executor reports.
    pub fn handle(&mut self, now: Instant, event: PbxEvent) -> Vec<PbxCommand> {
        let mut out = Vec::new();
        match (event, self.state) {
            (PbxEvent::Spawned { run }, PbxState::Starting { run: r, since, .. }) if run == r => {
                self.cannot_start = false;
                self.state = PbxState::Starting { run, since, spawned: true };
                out.push(PbxCommand::Notice(PbxNotice::Started { run }));
                self.probe_at = Some(now);
                self.tick_into(now, &mut out);
            }
            (PbxEvent::SpawnFailed { run }, PbxState::Starting { run: r, .. }) if run == r => {
                self.cannot_start = true;
                self.fail(now, run, PbxFailure::CannotStart, &mut out);
                self.back_off(now, &mut out);
            }
            (PbxEvent::Exited { run }, PbxState::Starting { run: r, .. } | PbxState::Running { run: r, .. })
                if run == r =>
            {
                self.fail(now, run, PbxFailure::Died, &mut out);
                // Its workers may live on in its process group, holding
                // the SIP port (Kamailio's do): the group goes too, before
                // anything is started again.
                out.push(PbxCommand::Kill { run });
                self.back_off(now, &mut out);
            }
            (PbxEvent::Exited { run }, PbxState::Stopping { run: r, restart, .. }) if run == r => {
                out.push(PbxCommand::Notice(PbxNotice::Stopped { run }));
                self.state = PbxState::Stopped;
                if restart && self.wanted {
                    self.back_off(now, &mut out);
                } else if self.wanted {
                    self.spawn(now, &mut out);
                }
            }
            (PbxEvent::ProbeDone { probe, ok }, _) if self.probing.is_some_and(|p| p.probe == probe) => {
                self.probing = None;
                self.probe_answered(now, ok, &mut out);
            }
            // Late or stale: about a process or probe already replaced.
            _ => {}
        }
        out
    }

    /// Time passed (due at or after [`next_deadline`](Self::next_deadline)).
    pub fn tick(&mut self, now: Instant) -> Vec<PbxCommand> {
        let mut out = Vec::new();
        self.tick_into(now, &mut out);
        out
    }

    /// When [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let state = match self.state {
            PbxState::Stopped => None,
            PbxState::Starting { since, .. } => Some(since.add(self.timing.start_grace)),
            PbxState::Running { .. } => None,
            PbxState::Backoff { until } => Some(until),
            PbxState::Stopping { since, killed: false, .. } => Some(since.add(self.timing.stop_timeout)),
            PbxState::Stopping { since, hung: false, .. } => {
                Some(since.add(self.timing.stop_timeout).add(self.timing.kill_timeout))
            }
            PbxState::Stopping { .. } => None,
        };
        let probe = match self.probing {
            Some(p) => Some(p.deadline),
            None => self.probe_at,
        };
        let window = self.failures.front().map(|f| f.add(self.timing.failure_window));
        [state, probe, window].into_iter().flatten().min()
    }

    fn tick_into(&mut self, now: Instant, out: &mut Vec<PbxCommand>) {
        // Failures age out of the window; the hand-over want ends with them.
        while self.failures.front().is_some_and(|f| now >= f.add(self.timing.failure_window)) {
            self.failures.pop_front();
        }
        if self.hand_over && (self.failures.len() as u32) < self.timing.failures_to_hand_over {
            self.hand_over = false;
        }
        if self.probing.is_some_and(|p| now >= p.deadline) {
            self.probing = None;
            self.probe_answered(now, false, out);
        }
        match self.state {
            PbxState::Starting { run, since, .. } if now >= since.add(self.timing.start_grace) => {
                self.fail(now, run, PbxFailure::NeverAnswered, out);
                self.stop(now, run, true, out);
            }
            PbxState::Backoff { until } if now >= until => {
                self.state = PbxState::Stopped;
                if self.wanted {
                    self.spawn(now, out);
                }
            }
            PbxState::Stopping { run, since, killed: false, hung, restart }
                if now >= since.add(self.timing.stop_timeout) =>
            {
                out.push(PbxCommand::Kill { run });
                self.state = PbxState::Stopping { run, since, killed: true, hung, restart };
            }
            PbxState::Stopping { run, since, killed: true, hung: false, restart }
                if now >= since.add(self.timing.stop_timeout).add(self.timing.kill_timeout) =>
            {
                out.push(PbxCommand::Notice(PbxNotice::StopHung { run }));
                self.state = PbxState::Stopping { run, since, killed: true, hung: true, restart };
            }
            _ => {}
        }
        let probe_due = self.probing.is_none() && self.probe_at.is_some_and(|t| now >= t);
        let run = match self.state {
            PbxState::Starting { run, spawned: true, .. } | PbxState::Running { run, .. } => Some(run),
            _ => None,
        };
        if let (true, Some(run)) = (probe_due, run) {
            let probe = self.next_probe;
            self.next_probe += 1;
            self.probing = Some(Probing { probe, deadline: now.add(self.timing.probe_timeout) });
            self.probe_at = None;
            out.push(PbxCommand::Probe { run, probe });
        }
    }

    fn probe_answered(&mut self, now: Instant, ok: bool, out: &mut Vec<PbxCommand>) {
        let next = Some(now.add(self.timing.probe_interval));
        match self.state {
            PbxState::Starting { run, since, spawned: true } if ok => {
                self.misses = 0;
                self.last_start = Some(now.since(since));
                self.state = PbxState::Running { run, since: now };
                self.probe_at = next;
                out.push(PbxCommand::Notice(PbxNotice::Healthy { run }));
            }
            // Not answering yet: try again soon, until the grace ends.
            PbxState::Starting { spawned: true, .. } => {
                self.probe_at = Some(now.add(START_PROBE_INTERVAL.min(self.timing.probe_interval)))
            }
            PbxState::Running { .. } if ok => {
                self.misses = 0;
                self.probe_at = next;
            }
            PbxState::Running { run, .. } => {
                self.misses += 1;
                out.push(PbxCommand::Notice(PbxNotice::ProbeFailed { run, in_a_row: self.misses }));
                if self.misses >= self.timing.probe_failures {
                    self.fail(now, run, PbxFailure::NotAnswering, out);
                    self.stop(now, run, true, out);
                } else {
                    self.probe_at = next;
                }
            }
            _ => {}
        }
    }

    fn spawn(&mut self, now: Instant, out: &mut Vec<PbxCommand>) {
        let run = self.next_run;
        self.next_run += 1;
        self.misses = 0;
        self.probing = None;
        self.probe_at = None;
        self.state = PbxState::Starting { run, since: now, spawned: false };
        out.push(PbxCommand::Spawn { run });
    }

    fn stop(&mut self, now: Instant, run: u64, restart: bool, out: &mut Vec<PbxCommand>) {
        self.probing = None;
        self.probe_at = None;
        self.state = PbxState::Stopping { run, since: now, killed: false, hung: false, restart };
        out.push(PbxCommand::Stop { run });
    }

    /// Counts a failure and reports it (and the hand-over, once).
    fn fail(&mut self, now: Instant, run: u64, why: PbxFailure, out: &mut Vec<PbxCommand>) {
        self.failures.push_back(now);
        let in_window = self.failures.len() as u32;
        out.push(PbxCommand::Notice(PbxNotice::Failed { run, why, in_window }));
        if !self.hand_over && in_window >= self.timing.failures_to_hand_over {
            self.hand_over = true;
            out.push(PbxCommand::Notice(PbxNotice::HandOverWanted { in_window }));
        }
    }

    /// After a failure: wait, doubling per earlier failure in the window.
    fn back_off(&mut self, now: Instant, out: &mut Vec<PbxCommand>) {
        self.probing = None;
        self.probe_at = None;
        if !self.wanted {
            self.state = PbxState::Stopped;
            return;
        }
        let earlier = (self.failures.len() as u32).saturating_sub(1).min(31);
        let delay = self.timing.backoff_first.saturating_mul(1 << earlier).min(self.timing.backoff_max);
        self.state = PbxState::Backoff { until: now.add(delay) };
        out.push(PbxCommand::Notice(PbxNotice::Restarting { delay }));
    }
}

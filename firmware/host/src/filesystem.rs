//! The replicated volume's filesystem on the active node, as the host
//! decides it (issue 11, items 3-4): attach the node's own NBD export as a
//! block device, check the filesystem, mount it; and on the way down
//! unmount and detach. The executor carries out one [`FsStep`] at a time
//! and reports how it ended; this module only sequences them.
//!
//! ```text
//!  up:    Attach ──▶ Check ──(clean, repaired)──▶ Mount ──▶ mounted
//!                      │ no filesystem, needs repair
//!                      ▼
//!                   blocked (reported; an operator repairs, or formats
//!                   a volume that has no filesystem at all) ──Format──▶ Check
//!  down:  (PBX stopped) Unmount ──▶ Detach ──▶ detached
//! ```
//!
//! Rules, each with what it prevents:
//! - **One step at a time, in order.** A step is issued only after the one
//!   before it was reported; a want that flips meanwhile is acted on when
//!   it ends. The PBX is only wanted while [`Filesystem::mounted`], and the
//!   unmount waits for the PBX to be stopped (a PBX writing to a volume
//!   being unmounted would lose what it thinks it wrote, or hold the mount
//!   busy).
//! - **Never format on our own initiative.** A volume without a filesystem,
//!   or one whose check (`e2fsck -p`) leaves errors, is blocked and
//!   reported; [`Filesystem::format`] (an operator creating the cluster's
//!   filesystem) is accepted only for a volume found with no filesystem at
//!   all, never for one that needs repair or for a failed read.
//! - **A demotion finishes or the box resets.** From the moment the
//!   filesystem must go down, it has `down_deadline` to be unmounted and
//!   detached; past it [`FsNotice::DownHung`] tells the host to stop
//!   petting the watchdog (self-fence): a mount that will not go away
//!   could still be writing when a peer mounts the volume.
//! - **Failed up-steps are retried calmly** (`retry` apart), failed
//!   down-steps at once-ish (`DOWN_RETRY`): going down is the urgent way.
//!
//! Must not: read a clock, touch a device, or decide who is active (the
//! host says [`Filesystem::want`]).

use core::time::Duration;

use triad_core::Instant;

/// Between two attempts of a failed unmount or detach.
pub const DOWN_RETRY: Duration = Duration::from_millis(100);

/// Timing, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsTiming {
    /// Between two attempts of a failed attach, check or mount.
    pub retry: Duration,
    /// From the moment it must go down to unmounted and detached, at most.
    pub down_deadline: Duration,
}

impl Default for FsTiming {
    fn default() -> Self {
        FsTiming { retry: Duration::from_secs(1), down_deadline: Duration::from_secs(10) }
    }
}

/// One thing the executor does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FsStep {
    /// Make the node's NBD export a block device.
    Attach,
    /// Check the filesystem on it (`e2fsck -p`; never `-f` or `-y`).
    Check,
    /// Mount it on the mount point.
    Mount,
    /// Unmount it.
    Unmount,
    /// Release the block device.
    Detach,
    /// Create the filesystem (an operator's request, on a volume found
    /// with none).
    Format,
}

impl FsStep {
    /// Every step, in the order of a promotion then a demotion.
    pub const ALL: [FsStep; 6] =
        [FsStep::Attach, FsStep::Check, FsStep::Mount, FsStep::Unmount, FsStep::Detach, FsStep::Format];

    /// Its name in logs and status.
    pub fn name(self) -> &'static str {
        match self {
            FsStep::Attach => "attach",
            FsStep::Check => "check",
            FsStep::Mount => "mount",
            FsStep::Unmount => "unmount",
            FsStep::Detach => "detach",
            FsStep::Format => "format",
        }
    }
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckVerdict {
    /// Clean.
    Clean,
    /// The safe automatic repairs of `-p` fixed it (exit 1 or 2).
    Repaired,
    /// No filesystem at all on the volume (no known superblock).
    NoFilesystem,
    /// Errors `-p` would not fix: an operator's repair is needed.
    NeedsRepair,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done (for [`FsStep::Check`]: see [`StepOutcome::Checked`]).
    Done,
    /// The check ran to its verdict.
    Checked(CheckVerdict),
    /// It failed (the executor logged why).
    Failed,
}

/// What the host is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsEvent {
    /// The step.
    pub step: FsStep,
    /// How it ended.
    pub outcome: StepOutcome,
}

/// Why the filesystem will not be mounted until an operator acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The volume has no filesystem: format it (cluster creation).
    NoFilesystem,
    /// The check found errors it would not fix: repair by hand.
    NeedsRepair,
}

/// What the executor must do, or log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsCommand {
    /// Carry out the step; report with [`FsEvent`].
    Run(FsStep),
    /// Worth logging.
    Notice(FsNotice),
}

/// Events for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsNotice {
    /// A step ended well, after this long.
    StepDone {
        /// The step.
        step: FsStep,
        /// Issued to reported.
        took: Duration,
    },
    /// A step failed after this long; it is tried again.
    StepFailed {
        /// The step.
        step: FsStep,
        /// Issued to reported.
        took: Duration,
    },
    /// Mounted, this long after it was first wanted.
    Up {
        /// Wanted to mounted.
        took: Duration,
    },
    /// Unmounted and detached, this long after it had to go down.
    Down {
        /// Unwanted to detached.
        took: Duration,
    },
    /// Blocked until an operator acts.
    Blocked(Blocker),
    /// The demotion missed its deadline: self-fence.
    DownHung,
}

/// Where the filesystem stands.
#[derive(Clone, Debug)]
pub struct Filesystem {
    timing: FsTiming,
    /// The block device exists (attached, or attach in flight).
    attached: bool,
    /// Checked since the attach.
    checked: bool,
    mounted: bool,
    /// From a mount done to a detach done: the service behind the VIP is
    /// here (the VIP goes last on the way down).
    ready: bool,
    in_flight: Option<(FsStep, Instant)>,
    blocked: Option<Blocker>,
    /// An operator asked to format (granted only while blocked by
    /// [`Blocker::NoFilesystem`]).
    format_asked: bool,
    retry_at: Option<Instant>,
    /// Since when it has been wanted up (until mounted).
    up_since: Option<Instant>,
    /// Since when it has had to go down (until detached).
    down_since: Option<Instant>,
    hung: bool,
    /// The last duration of each step, for status.
    took: Vec<(FsStep, Duration)>,
}

impl Filesystem {
    /// Detached, nothing wanted.
    pub fn new(timing: FsTiming) -> Self {
        Filesystem {
            timing,
            attached: false,
            checked: false,
            mounted: false,
            ready: false,
            in_flight: None,
            blocked: None,
            format_asked: false,
            retry_at: None,
            up_since: None,
            down_since: None,
            hung: false,
            took: Vec::new(),
        }
    }

    /// Mounted and not going down: the PBX may run on it, the VIP may lead
    /// clients here.
    pub fn mounted(&self) -> bool {
        self.mounted && self.in_flight.is_none()
    }

    /// From a mount done to a detach done: the VIP may lead clients here
    /// (raised after the mount; dropped only after the detach).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Attached, or still leading clients here: a handover must take it
    /// down first.
    pub fn in_service(&self) -> bool {
        !self.detached() || self.ready
    }

    /// Nothing attached and nothing in flight: a peer may mount the volume
    /// as far as this node is concerned.
    pub fn detached(&self) -> bool {
        !self.attached && self.in_flight.is_none()
    }

    /// Why it is blocked, if it is.
    pub fn blocked(&self) -> Option<Blocker> {
        self.blocked
    }

    /// The step in flight and since when.
    pub fn in_flight(&self) -> Option<(FsStep, Instant)> {
        self.in_flight
    }

    /// The last duration of each step that has run.
    pub fn durations(&self) -> &[(FsStep, Duration)] {
        &self.took
    }

    /// When [`Filesystem::want`] has work without an event: a retry, or
    /// the demotion's deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let down = self.down_since.filter(|_| !self.hung).map(|t| t.add(self.timing.down_deadline));
        match (self.retry_at, down) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An operator asks to create the filesystem. Accepted only while the
    /// volume is attached and was found with no filesystem at all.
    pub fn format(&mut self) -> Result<(), FormatRefused> {
        match self.blocked {
            Some(Blocker::NoFilesystem) if self.attached => {
                self.format_asked = true;
                Ok(())
            }
            Some(Blocker::NeedsRepair) => Err(FormatRefused::NeedsRepair),
            _ if self.mounted => Err(FormatRefused::Mounted),
            _ => Err(FormatRefused::NotFoundEmpty),
        }
    }

    /// Moves toward `up` (this node should serve from the filesystem).
    /// `pbx_stopped`: no PBX process is left (the unmount waits for it).
    pub fn want(&mut self, now: Instant, up: bool, pbx_stopped: bool) -> Vec<FsCommand> {
        let mut out = Vec::new();
        // A down step still in flight (an unmount hung in the kernel) keeps
        // the demotion's deadline even if the node is wanted up again:
        // nothing else will ever end it, and the node could lead forever
        // with its service stuck behind it.
        let going_down = matches!(self.in_flight, Some((FsStep::Unmount | FsStep::Detach, _)));
        if up {
            if !going_down {
                self.down_since = None;
                self.hung = false;
            }
            if !self.mounted && self.up_since.is_none() {
                self.up_since = Some(now);
            }
        } else {
            self.up_since = None;
            self.format_asked = false;
            if self.attached && self.down_since.is_none() {
                self.down_since = Some(now);
            }
        }
        if let Some(since) = self.down_since {
            if !self.hung && now >= since.add(self.timing.down_deadline) {
                self.hung = true;
                out.push(FsCommand::Notice(FsNotice::DownHung));
            }
        }
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| now < t) {
            return out;
        }
        self.retry_at = None;
        let step = if up { self.next_up_step() } else { self.next_down_step(pbx_stopped) };
        if let Some(step) = step {
            self.in_flight = Some((step, now));
            out.push(FsCommand::Run(step));
        }
        out
    }

    fn next_up_step(&mut self) -> Option<FsStep> {
        if self.mounted {
            return None;
        }
        if !self.attached {
            self.attached = true;
            return Some(FsStep::Attach);
        }
        match self.blocked {
            Some(Blocker::NoFilesystem) if self.format_asked => Some(FsStep::Format),
            Some(_) => None,
            None if !self.checked => Some(FsStep::Check),
            None => Some(FsStep::Mount),
        }
    }

    fn next_down_step(&mut self, pbx_stopped: bool) -> Option<FsStep> {
        // A new promotion checks again: the blocker belongs to this attach.
        self.blocked = None;
        if self.mounted {
            return pbx_stopped.then_some(FsStep::Unmount);
        }
        self.attached.then_some(FsStep::Detach)
    }

    /// A step was reported.
    pub fn done(&mut self, now: Instant, event: FsEvent) -> Vec<FsCommand> {
        let mut out = Vec::new();
        let Some((step, since)) = self.in_flight else { return out };
        if step != event.step {
            return out;
        }
        self.in_flight = None;
        let took = now.since(since);
        let failed = event.outcome == StepOutcome::Failed;
        out.push(FsCommand::Notice(if failed {
            FsNotice::StepFailed { step, took }
        } else {
            FsNotice::StepDone { step, took }
        }));
        if !failed {
            match self.took.iter_mut().find(|(s, _)| *s == step) {
                Some((_, t)) => *t = took,
                None => {
                    self.took.push((step, took));
                    self.took.sort();
                }
            }
        }
        match (step, event.outcome) {
            (_, StepOutcome::Failed) => {
                // An attach that failed left nothing to detach; every other
                // failed step is tried again.
                if step == FsStep::Attach {
                    self.attached = false;
                }
                // A failed format may have left anything: check again
                // (a partial filesystem then blocks as needing repair);
                // another format needs another request.
                if step == FsStep::Format {
                    self.format_asked = false;
                    self.blocked = None;
                    self.checked = false;
                }
                let pause =
                    if matches!(step, FsStep::Unmount | FsStep::Detach) { DOWN_RETRY } else { self.timing.retry };
                self.retry_at = Some(now.add(pause));
            }
            (FsStep::Attach, _) => {}
            (FsStep::Check, StepOutcome::Checked(CheckVerdict::Clean | CheckVerdict::Repaired)) => self.checked = true,
            (FsStep::Check, StepOutcome::Checked(v)) => {
                let b = if v == CheckVerdict::NoFilesystem { Blocker::NoFilesystem } else { Blocker::NeedsRepair };
                self.blocked = Some(b);
                out.push(FsCommand::Notice(FsNotice::Blocked(b)));
            }
            // A check that reports no verdict is no check.
            (FsStep::Check, StepOutcome::Done) => self.retry_at = Some(now.add(self.timing.retry)),
            (FsStep::Mount, _) => {
                self.mounted = true;
                self.ready = true;
                if let Some(t) = self.up_since.take() {
                    out.push(FsCommand::Notice(FsNotice::Up { took: now.since(t) }));
                }
            }
            (FsStep::Unmount, _) => {
                self.mounted = false;
                self.checked = false;
            }
            (FsStep::Detach, _) => {
                self.attached = false;
                self.ready = false;
                self.checked = false;
                if let Some(t) = self.down_since.take() {
                    out.push(FsCommand::Notice(FsNotice::Down { took: now.since(t) }));
                }
                self.hung = false;
            }
            (FsStep::Format, _) => {
                self.blocked = None;
                self.format_asked = false;
                self.checked = false;
            }
        }
        out
    }
}

/// Why a format request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatRefused {
    /// The check found a filesystem with errors: formatting would destroy
    /// the data a repair could save.
    #[error("the volume has a filesystem that needs repair: repair it (e2fsck) instead of formatting")]
    NeedsRepair,
    /// It is mounted.
    #[error("the volume's filesystem is mounted")]
    Mounted,
    /// Nothing says the volume is empty: not attached on the active node,
    /// or not checked yet.
    #[error("the volume was not found without a filesystem on this node (only the active node, after its check found none, may format)")]
    NotFoundEmpty,
}

//! Time as the core sees it: a monotonic instant handed in by the caller.
//!
//! The core never reads a clock. The runtime converts its monotonic clock
//! (CLOCK_MONOTONIC / `tokio::time::Instant`) into [`Instant`] microseconds
//! since an arbitrary origin; the simulator hands in virtual time, with
//! per-node drift. All arithmetic saturates, so no input can overflow.

use core::time::Duration;
use serde::{Deserialize, Serialize};

/// A point on one node's monotonic clock, in microseconds since an arbitrary
/// per-process origin. Instants from different nodes are not comparable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant(0);

    /// Microseconds since the origin.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of time. (Not `ops::Add`: that
    /// trait suggests overflow panics; time here saturates.)
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating at the origin.
    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(duration_micros(d)))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// A duration in whole microseconds, saturating.
pub fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

//! Timing and VIP announcement settings the core decides with.
//!
//! These are validated values: the supervisor's config parser builds them
//! and rejects what would break the safety argument (see [`Timing::check`]).

use core::time::Duration;

/// All the intervals the core runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often a node sends a heartbeat (leader) or ping (others).
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is reported unreachable.
    pub peer_timeout: Duration,
    /// Lower bound of the randomized election timeout. Also the lease
    /// stickiness window: a node that heard from a leader this recently
    /// refuses to vote for anyone else.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout. After any start a
    /// node refuses votes and candidacy for this long.
    pub election_timeout_max: Duration,
    /// Clock drift bound ρ in parts per million; the lease is
    /// `election_timeout_min * (1 - 2ρ)` minus [`Timing::lease_guard`].
    pub drift_ppm: u32,
    /// Extra time subtracted from the lease so the VIP is gone before any
    /// peer could vote: covers the leader's own scheduling delay and the
    /// netlink round trip of the removal.
    pub lease_guard: Duration,
    /// Kernel valid lifetime of the VIP address (whole seconds, >= 1). A
    /// killed or frozen supervisor loses the VIP this long after its last
    /// renewal, plus the kernel's check granularity.
    pub vip_lifetime: Duration,
    /// How often the lifetime is renewed while the lease holds.
    pub vip_renew_interval: Duration,
    /// Strict mode: a new leader also waits out [`Timing::vip_lifetime`]
    /// plus [`Timing::kernel_expiry_slack`] from the last time it heard the
    /// old leader, so even a frozen old leader's VIP is gone before the new
    /// one raises it.
    pub strict_vip_handover: bool,
    /// How late the kernel may drop an expired address (measured 0.2 s).
    pub kernel_expiry_slack: Duration,
    /// Gratuitous ARP frames sent when the VIP is raised.
    pub garp_burst_count: u32,
    /// Spacing of the frames in a burst.
    pub garp_burst_interval: Duration,
    /// Re-announcement period while the VIP is held (switches age entries).
    pub garp_refresh_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval: Duration::from_millis(50),
            peer_timeout: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(700),
            drift_ppm: 10_000,
            lease_guard: Duration::from_millis(50),
            vip_lifetime: Duration::from_secs(1),
            vip_renew_interval: Duration::from_millis(250),
            strict_vip_handover: false,
            kernel_expiry_slack: Duration::from_millis(250),
            garp_burst_count: 5,
            garp_burst_interval: Duration::from_millis(100),
            garp_refresh_interval: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The fast profile: about three times quicker failover, same rules.
    pub fn fast() -> Self {
        Timing {
            heartbeat_interval: Duration::from_millis(20),
            peer_timeout: Duration::from_millis(80),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(250),
            lease_guard: Duration::from_millis(30),
            garp_burst_interval: Duration::from_millis(50),
            ..Timing::default()
        }
    }

    /// How long a lease runs from the send time of a heartbeat a majority
    /// acknowledged: the stickiness window shrunk by twice the drift bound,
    /// minus the guard.
    pub fn lease_duration(&self) -> Duration {
        let min = self.election_timeout_min;
        let drift = min.mul_f64(2.0 * f64::from(self.drift_ppm) / 1_000_000.0);
        min.saturating_sub(drift).saturating_sub(self.lease_guard)
    }

    /// Checks the relations the safety argument relies on; the message names
    /// the setting and the rule it breaks.
    pub fn check(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be above zero".into());
        }
        if self.election_timeout_min < self.heartbeat_interval * 3 {
            return Err(format!(
                "election_timeout_min ({} ms) must be at least 3 heartbeat intervals ({} ms)",
                ms(self.election_timeout_min),
                ms(self.heartbeat_interval * 3)
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(format!(
                "election_timeout_max ({} ms) must be above election_timeout_min ({} ms)",
                ms(self.election_timeout_max),
                ms(self.election_timeout_min)
            ));
        }
        if self.drift_ppm > 100_000 {
            return Err(format!("drift_ppm ({}) must be at most 100000 (10%)", self.drift_ppm));
        }
        if self.lease_duration() < self.heartbeat_interval * 2 {
            return Err(format!(
                "lease ({} ms, from election_timeout_min less drift and lease_guard) must cover at least 2 heartbeat intervals ({} ms)",
                ms(self.lease_duration()),
                ms(self.heartbeat_interval * 2)
            ));
        }
        if self.vip_lifetime < Duration::from_secs(1) || self.vip_lifetime.subsec_nanos() != 0 {
            return Err("vip_lifetime must be a whole number of seconds, at least 1".into());
        }
        if self.vip_renew_interval.is_zero() || self.vip_renew_interval * 2 > self.vip_lifetime {
            return Err(format!(
                "vip_renew_interval ({} ms) must be above zero and at most half of vip_lifetime ({} ms)",
                ms(self.vip_renew_interval),
                ms(self.vip_lifetime)
            ));
        }
        if self.peer_timeout < self.heartbeat_interval {
            return Err("peer_timeout must be at least one heartbeat_interval".into());
        }
        if self.garp_burst_count == 0 {
            return Err("garp_burst_count must be at least 1".into());
        }
        if self.garp_refresh_interval.is_zero() || self.garp_burst_interval.is_zero() {
            return Err("garp intervals must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fast_profile_are_valid() {
        assert_eq!(Timing::default().check(), Ok(()));
        assert_eq!(Timing::fast().check(), Ok(()));
    }

    #[test]
    fn lease_is_shorter_than_stickiness_by_drift_and_guard() {
        let t = Timing::default();
        // 400 ms - 2% (8 ms) - 50 ms guard.
        assert_eq!(t.lease_duration(), Duration::from_millis(342));
    }

    #[test]
    fn bad_relations_name_the_setting() {
        let t = Timing { election_timeout_max: Duration::from_millis(400), ..Timing::default() };
        assert!(t.check().unwrap_err().contains("election_timeout_max"));
        let t = Timing { vip_lifetime: Duration::from_millis(1500), ..Timing::default() };
        assert!(t.check().unwrap_err().contains("vip_lifetime"));
    }
}

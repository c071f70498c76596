//! `[watchdog]`: the hardware watchdog (issue 11, item 5), validated.
//! Absent: no watchdog (the lab, a development machine).
//!
//! Must not: open the device (the runtime does, and refuses to start if
//! the driver refuses the timeout).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{absolute, int_in, invalid, ConfigError};

/// Default device.
pub const DEFAULT_DEVICE: &str = "/dev/watchdog";

/// `[watchdog]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// The device.
    pub device: PathBuf,
    /// The timeout asked of the driver.
    pub timeout_s: u32,
    /// At most one pet per this long.
    pub pet_interval: Duration,
    /// A critical part silent for this long stops the pets.
    pub stale_after: Duration,
    /// Disarm (magic close) on a clean shutdown; otherwise the box resets
    /// after a stopped supervisor unless it is restarted in time.
    pub magic_close_on_shutdown: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatchdog {
    device: Option<PathBuf>,
    timeout_s: Option<i64>,
    pet_interval_ms: Option<i64>,
    stale_after_ms: Option<i64>,
    magic_close_on_shutdown: Option<bool>,
}

impl TryFrom<RawWatchdog> for WatchdogConfig {
    type Error = ConfigError;

    fn try_from(r: RawWatchdog) -> Result<Self, ConfigError> {
        let device = absolute(r.device.unwrap_or_else(|| DEFAULT_DEVICE.into()), "watchdog.device")?;
        let timeout_s: u32 = int_in(r.timeout_s.unwrap_or(10), "watchdog.timeout_s", 2..=3600)?;
        let timeout = Duration::from_secs(u64::from(timeout_s));
        let ms = |v: Option<i64>, default: Duration, field: &str| -> Result<Duration, ConfigError> {
            match v {
                Some(v) => Ok(Duration::from_millis(int_in(v, field, 1..=3_600_000)?)),
                None => Ok(default),
            }
        };
        let pet_interval = ms(r.pet_interval_ms, timeout / 10, "watchdog.pet_interval_ms")?;
        let stale_after = ms(r.stale_after_ms, timeout / 2, "watchdog.stale_after_ms")?;
        if pet_interval >= stale_after {
            return Err(invalid(
                "watchdog.pet_interval_ms",
                format!("must be shorter than watchdog.stale_after_ms ({stale_after:?}), found {pet_interval:?}"),
            ));
        }
        if stale_after >= timeout {
            return Err(invalid(
                "watchdog.stale_after_ms",
                format!("must be shorter than watchdog.timeout_s ({timeout:?}), found {stale_after:?}"),
            ));
        }
        Ok(WatchdogConfig {
            device,
            timeout_s,
            pet_interval,
            stale_after,
            magic_close_on_shutdown: r.magic_close_on_shutdown.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<WatchdogConfig, ConfigError> {
        let raw: RawWatchdog = toml::from_str(text).map_err(|source| ConfigError::Syntax { source })?;
        WatchdogConfig::try_from(raw)
    }

    #[test]
    fn defaults_follow_the_timeout() {
        let c = parse("").unwrap();
        assert_eq!(c.device, PathBuf::from(DEFAULT_DEVICE));
        assert_eq!((c.timeout_s, c.pet_interval, c.stale_after), (10, Duration::from_secs(1), Duration::from_secs(5)));
        assert!(!c.magic_close_on_shutdown);
        let c = parse("timeout_s = 30").unwrap();
        assert_eq!((c.pet_interval, c.stale_after), (Duration::from_secs(3), Duration::from_secs(15)));
    }

    #[test]
    fn contradictions_are_refused_naming_the_field() {
        let e = |t: &str| match parse(t) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(e("timeout_s = 1"), "watchdog.timeout_s");
        assert_eq!(e("device = \"watchdog\""), "watchdog.device");
        assert_eq!(e("pet_interval_ms = 6000"), "watchdog.pet_interval_ms");
        assert_eq!(e("stale_after_ms = 10000"), "watchdog.stale_after_ms");
        assert!(matches!(parse("timeout = 5"), Err(ConfigError::Syntax { .. })));
    }
}

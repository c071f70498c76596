//! The log ring kept on the state partition (the appliance, issue 12):
//! so that after a reset nobody saw coming (the watchdog's, a power cut)
//! the last lines the supervisor logged before it can be read on the next
//! boot, next to the reboot cause the watchdog driver reports.
//!
//! At start, the previous boot's `current.log` becomes `previous.log`.
//! Then a thread of its own writes the ring's lines to `current.log`
//! (a new file, fsynced, renamed over the old one, the directory
//! fsynced): within a second of a warning or an error, and otherwise at
//! most every [`PERIOD`] while lines come. Its own thread because the
//! lines that matter most are those of an event loop that has stopped.
//!
//! Must not: write the flash without need (nothing new, nothing written),
//! or block the logging thread (it copies the ring under its short lock).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logring::LogRing;

/// The file the running supervisor keeps.
pub const CURRENT: &str = "current.log";
/// The previous boot's.
pub const PREVIOUS: &str = "previous.log";
/// Longest a line may wait on disk when no warning hurries it.
pub const PERIOD: Duration = Duration::from_secs(10);
/// How often the thread looks at the ring.
const LOOK: Duration = Duration::from_secs(1);

/// Whether to write now: something new came since the last write, and
/// either a warning or error among it, or [`PERIOD`] has passed.
pub fn should_write(last: (u64, u64), now: (u64, u64), since_write: Duration) -> bool {
    now.0 != last.0 && (now.1 != last.1 || since_write >= PERIOD)
}

/// Moves the previous boot's log aside and starts keeping the ring in
/// `dir` (created if missing).
pub fn start(ring: Arc<LogRing>, dir: PathBuf) -> std::io::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let current = dir.join(CURRENT);
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS))?;
        sync_dir(&dir)?;
    }
    std::thread::Builder::new().name("triad-logkeep".into()).spawn(move || {
        // File writes to the state partition: not at the event loop's
        // real-time priority.
        let _ = crate::os::realtime::set_normal();
        let mut last = (0, 0);
        let mut written = Instant::now();
        loop {
            std::thread::sleep(LOOK);
            let now = ring.marks();
            if !should_write(last, now, written.elapsed()) {
                continue;
            }
            let lines = ring.snapshot().lines;
            match write(&dir, &lines) {
                Ok(()) => {
                    last = now;
                    written = Instant::now();
                }
                // Logged once per failure; the next look tries again.
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the log on the state partition")
                }
            }
        }
    })?;
    Ok(())
}

/// `lines` as `dir/current.log`, replacing it whole or not at all.
fn write(dir: &Path, lines: &[String]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{CURRENT}.new"));
    let mut f = std::fs::File::create(&tmp)?;
    for l in lines {
        f.write_all(l.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(CURRENT))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn written_when_something_new_and_urgent_or_the_period_passed() {
        let s = Duration::from_secs;
        assert!(!should_write((5, 1), (5, 1), s(60)), "nothing new: never");
        assert!(should_write((5, 1), (6, 2), s(0)), "a new warning: at once");
        assert!(!should_write((5, 1), (9, 1), s(3)), "new info lines: wait for the period");
        assert!(should_write((5, 1), (9, 1), PERIOD), "new info lines: at the period");
    }

    #[test]
    fn the_previous_boots_log_is_kept_and_a_warning_reaches_the_file() {
        let dir = std::env::temp_dir().join(format!("triad-logkeep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CURRENT), "the last boot's last line\n").unwrap();
        let ring = Arc::new(LogRing::new(100, 10_000));
        ring.push("2026-12-06T00:00:00Z  INFO triad: started");
        start(ring.clone(), dir.clone()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(PREVIOUS)).unwrap(), "the last boot's last line\n");
        ring.push("2026-12-06T00:00:01Z  WARN triad: hanging");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(dir.join(CURRENT)).unwrap_or_default();
            if text.contains("WARN triad: hanging") {
                assert!(text.starts_with("2026-12-06T00:00:00Z  INFO triad: started\n"), "{text}");
                break;
            }
            assert!(Instant::now() < deadline, "the warning did not reach {CURRENT} within 5 s: {text:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

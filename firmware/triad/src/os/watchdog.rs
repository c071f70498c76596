//! The hardware watchdog device (issue 11, item 5): open it, set its
//! timeout (and read back what the driver accepted), read whether the last
//! reboot was its doing, pet it, and disarm it with the magic close only
//! on a clean, configured shutdown, or when the supervisor refuses to start
//! because the driver will not take the configured timeout. When to pet is
//! decided by `triad_host::watchdog`.
//!
//! The Linux watchdog API (Documentation/watchdog/watchdog-api.rst): the
//! device starts counting when opened; `WDIOC_KEEPALIVE` restarts the count;
//! closing it without first writing 'V' leaves it running (with
//! `nowayout`, even 'V' does not stop it), so a supervisor that dies
//! without a clean shutdown gets the box reset.
//!
//! The device is behind [`WatchdogDevice`]: the real one ([`DevWatchdog`],
//! ioctls on the character device) and a fake for unit tests
//! ([`FakeWatchdog`]), so the opening rules are tested with exact calls.
//!
//! Must not: decide when to pet, or close the device with 'V' anywhere but
//! [`HwWatchdog::disarm`] and a refused opening.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `WDIOF_CARDRESET`: the card reset the machine last time.
const WDIOF_CARDRESET: libc::c_int = 0x0020;

nix::ioctl_read!(wdioc_getbootstatus, b'W', 2, libc::c_int);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// A watchdog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device could not be opened.
    #[error("cannot open the watchdog {path}")]
    Open {
        /// The device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The driver refused the configured timeout (the device was disarmed
    /// again, so the refusal does not reset the box).
    #[error("watchdog.timeout_s = {asked}: the driver of {path} refused it")]
    TimeoutRefused {
        /// The device.
        path: PathBuf,
        /// What was asked.
        asked: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The driver took a timeout that leaves no room for noticing a stall
    /// before the reset (disarmed again, as above).
    #[error(
        "watchdog.timeout_s = {asked}: the driver of {path} set {accepted} s, not longer than \
         watchdog.stale_after_ms ({stale_after:?}); choose a timeout the driver keeps"
    )]
    TimeoutTooShort {
        /// The device.
        path: PathBuf,
        /// What was asked.
        asked: u32,
        /// What the driver set.
        accepted: u32,
        /// The stall limit it must exceed.
        stale_after: Duration,
    },
    /// An ioctl or write failed.
    #[error("watchdog {path}: {op} failed")]
    Op {
        /// The device.
        path: PathBuf,
        /// What was asked.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the device said when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed {
    /// The timeout the driver accepted (it may round what was asked).
    pub timeout_s: u32,
    /// The last reboot was this watchdog's reset.
    pub last_reboot_was_watchdog: bool,
}

/// The operations of an open watchdog device.
pub trait WatchdogDevice: Send + std::fmt::Debug {
    /// `WDIOC_SETTIMEOUT`: asks for `secs`; returns what the driver set.
    fn set_timeout(&mut self, secs: u32) -> std::io::Result<u32>;
    /// `WDIOC_GETTIMEOUT`.
    fn timeout(&mut self) -> std::io::Result<u32>;
    /// `WDIOC_GETBOOTSTATUS`.
    fn boot_status(&mut self) -> std::io::Result<i32>;
    /// `WDIOC_KEEPALIVE`.
    fn keepalive(&mut self) -> std::io::Result<()>;
    /// Writes 'V' and closes: the watchdog stops (unless `nowayout`).
    fn magic_close(&mut self) -> std::io::Result<()>;
}

/// The character device (`/dev/watchdog`).
#[derive(Debug)]
pub struct DevWatchdog {
    file: Option<File>,
}

impl DevWatchdog {
    /// Opens `path`: the count starts now.
    pub fn open(path: &Path) -> std::io::Result<DevWatchdog> {
        Ok(DevWatchdog { file: Some(OpenOptions::new().write(true).open(path)?) })
    }

    fn fd(&self) -> i32 {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl WatchdogDevice for DevWatchdog {
    fn set_timeout(&mut self, secs: u32) -> std::io::Result<u32> {
        let mut t = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT on an open descriptor with a live c_int.
        unsafe { wdioc_settimeout(self.fd(), &mut t) }?;
        Ok(u32::try_from(t).unwrap_or(0))
    }

    fn timeout(&mut self) -> std::io::Result<u32> {
        let mut t: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_gettimeout(self.fd(), &mut t) }?;
        Ok(u32::try_from(t).unwrap_or(0))
    }

    fn boot_status(&mut self) -> std::io::Result<i32> {
        let mut status: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_getbootstatus(self.fd(), &mut status) }?;
        Ok(status)
    }

    fn keepalive(&mut self) -> std::io::Result<()> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_keepalive(self.fd(), &mut dummy) }.map(|_| ()).map_err(std::io::Error::from)
    }

    fn magic_close(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(mut f) => f.write_all(b"V"),
            None => Ok(()),
        }
    }
}

/// The open watchdog.
#[derive(Debug)]
pub struct HwWatchdog {
    path: PathBuf,
    device: Box<dyn WatchdogDevice>,
}

impl HwWatchdog {
    /// Opens the device at `path` (which starts the count) and arms it as
    /// [`HwWatchdog::arm`] says.
    pub fn open(path: &Path, timeout_s: u32, stale_after: Duration) -> Result<(HwWatchdog, Armed), WatchdogError> {
        let device = DevWatchdog::open(path).map_err(|source| WatchdogError::Open { path: path.to_owned(), source })?;
        HwWatchdog::arm(path, Box::new(device), timeout_s, stale_after)
    }

    /// Asks `device` for `timeout_s`, reads back what it set and the boot
    /// status. A timeout the driver refuses, or one it sets no longer than
    /// `stale_after` (the box would reset before the supervisor notices a
    /// stalled part and stops petting), is refused naming the field, and
    /// the device is disarmed first: a supervisor that will not start must
    /// not leave a running count behind it (a reset loop).
    pub fn arm(
        path: &Path,
        mut device: Box<dyn WatchdogDevice>,
        timeout_s: u32,
        stale_after: Duration,
    ) -> Result<(HwWatchdog, Armed), WatchdogError> {
        let path = path.to_owned();
        let accepted = match device.set_timeout(timeout_s).and_then(|_| device.timeout()) {
            Ok(t) => t,
            Err(source) => {
                let _ = device.magic_close();
                return Err(WatchdogError::TimeoutRefused { path, asked: timeout_s, source });
            }
        };
        if Duration::from_secs(u64::from(accepted)) <= stale_after {
            let _ = device.magic_close();
            return Err(WatchdogError::TimeoutTooShort { path, asked: timeout_s, accepted, stale_after });
        }
        let status = match device.boot_status() {
            Ok(s) => s,
            Err(e) => {
                let _ = device.magic_close();
                return Err(WatchdogError::Op { path, op: "WDIOC_GETBOOTSTATUS", source: e });
            }
        };
        let armed = Armed { timeout_s: accepted, last_reboot_was_watchdog: status & WDIOF_CARDRESET != 0 };
        Ok((HwWatchdog { path, device }, armed))
    }

    /// Restarts the count.
    pub fn pet(&mut self) -> Result<(), WatchdogError> {
        let path = self.path.clone();
        self.device.keepalive().map_err(|source| WatchdogError::Op { path, op: "WDIOC_KEEPALIVE", source })
    }

    /// The magic close: 'V', then close; the watchdog stops (unless the
    /// driver was loaded with `nowayout`). Only on a clean, configured
    /// shutdown.
    pub fn disarm(mut self) -> Result<(), WatchdogError> {
        let path = self.path.clone();
        self.device.magic_close().map_err(|source| WatchdogError::Op { path, op: "magic close", source })
    }
}

/// A watchdog for unit tests: records every call; can refuse or round the
/// timeout and report a watchdog reset.
#[derive(Debug, Default)]
pub struct FakeWatchdog {
    /// The calls, in order (`set_timeout(10)`, `keepalive`, ...).
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Refuse any timeout (EINVAL).
    pub refuse_timeout: bool,
    /// Set this instead of what is asked (a driver that rounds).
    pub sets: Option<u32>,
    /// The boot status to report.
    pub boot_status: i32,
    set: u32,
}

impl FakeWatchdog {
    fn note(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

impl WatchdogDevice for FakeWatchdog {
    fn set_timeout(&mut self, secs: u32) -> std::io::Result<u32> {
        self.note(format!("set_timeout({secs})"));
        if self.refuse_timeout {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.set = self.sets.unwrap_or(secs);
        Ok(self.set)
    }

    fn timeout(&mut self) -> std::io::Result<u32> {
        self.note("timeout".into());
        Ok(self.set)
    }

    fn boot_status(&mut self) -> std::io::Result<i32> {
        self.note("boot_status".into());
        Ok(self.boot_status)
    }

    fn keepalive(&mut self) -> std::io::Result<()> {
        self.note("keepalive".into());
        Ok(())
    }

    fn magic_close(&mut self) -> std::io::Result<()> {
        self.note("magic_close".into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STALE: Duration = Duration::from_secs(5);

    fn fake(f: FakeWatchdog) -> (Box<dyn WatchdogDevice>, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let calls = f.calls.clone();
        (Box::new(f), calls)
    }

    fn calls(c: &std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> Vec<String> {
        c.lock().unwrap().clone()
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let err = HwWatchdog::open(Path::new("/nonexistent/watchdog"), 10, STALE).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/watchdog"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_is_refused_at_its_first_ioctl_naming_the_field() {
        let path = std::env::temp_dir().join(format!("triad-not-a-watchdog-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let err = HwWatchdog::open(&path, 10, STALE).unwrap_err();
        assert!(err.to_string().starts_with("watchdog.timeout_s = 10: the driver of "), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn armed_it_reports_what_the_driver_set_and_a_watchdog_reset() {
        let (dev, c) = fake(FakeWatchdog { sets: Some(12), boot_status: WDIOF_CARDRESET, ..FakeWatchdog::default() });
        let (mut dog, armed) = HwWatchdog::arm(Path::new("/dev/fake"), dev, 10, STALE).unwrap();
        assert_eq!(armed, Armed { timeout_s: 12, last_reboot_was_watchdog: true });
        dog.pet().unwrap();
        dog.disarm().unwrap();
        assert_eq!(calls(&c), ["set_timeout(10)", "timeout", "boot_status", "keepalive", "magic_close"]);
    }

    #[test]
    fn a_refused_timeout_disarms_the_device_and_names_the_field() {
        let (dev, c) = fake(FakeWatchdog { refuse_timeout: true, ..FakeWatchdog::default() });
        let err = HwWatchdog::arm(Path::new("/dev/fake"), dev, 700, STALE).unwrap_err();
        assert_eq!(err.to_string(), "watchdog.timeout_s = 700: the driver of /dev/fake refused it");
        assert_eq!(calls(&c), ["set_timeout(700)", "magic_close"], "no count left running");
    }

    #[test]
    fn a_timeout_the_driver_cuts_below_the_stall_limit_is_refused_and_disarmed() {
        let (dev, c) = fake(FakeWatchdog { sets: Some(5), ..FakeWatchdog::default() });
        let err = HwWatchdog::arm(Path::new("/dev/fake"), dev, 30, STALE).unwrap_err();
        assert!(
            err.to_string().starts_with("watchdog.timeout_s = 30: the driver of /dev/fake set 5 s, not longer than"),
            "{err}"
        );
        assert_eq!(calls(&c), ["set_timeout(30)", "timeout", "magic_close"]);
    }
}

//! The hardware watchdog device (issue 11, item 5): open it, set its
//! timeout (and read back what the driver accepted), read whether the last
//! reboot was its doing, pet it, and disarm it with the magic close only
//! on a clean, configured shutdown. When to pet is decided by
//! `triad_host::watchdog`.
//!
//! The Linux watchdog API (Documentation/watchdog/watchdog-api.rst): the
//! device starts counting when opened; `WDIOC_KEEPALIVE` restarts the count;
//! closing it without first writing 'V' leaves it running (with
//! `nowayout`, even 'V' does not stop it), so a supervisor that dies
//! without a clean shutdown gets the box reset.
//!
//! Must not: decide when to pet, or close the device with 'V' anywhere but
//! [`HwWatchdog::disarm`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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

/// The open watchdog device.
#[derive(Debug)]
pub struct HwWatchdog {
    path: PathBuf,
    file: Option<File>,
}

impl HwWatchdog {
    /// Opens `path` (which starts the count), asks for `timeout_s`, and
    /// reads back the timeout and the boot status.
    pub fn open(path: &Path, timeout_s: u32) -> Result<(HwWatchdog, Armed), WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| WatchdogError::Open { path: path.to_owned(), source })?;
        let dog = HwWatchdog { path: path.to_owned(), file: Some(file) };
        let fd = dog.fd();
        let mut t = libc::c_int::try_from(timeout_s).unwrap_or(libc::c_int::MAX);
        // SAFETY: the ioctls of the watchdog API on an open descriptor,
        // each with a pointer to a live c_int.
        unsafe { wdioc_settimeout(fd, &mut t) }.map_err(|e| dog.op("WDIOC_SETTIMEOUT", e))?;
        let mut accepted: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_gettimeout(fd, &mut accepted) }.map_err(|e| dog.op("WDIOC_GETTIMEOUT", e))?;
        let mut status: libc::c_int = 0;
        // SAFETY: as above.
        unsafe { wdioc_getbootstatus(fd, &mut status) }.map_err(|e| dog.op("WDIOC_GETBOOTSTATUS", e))?;
        let armed = Armed {
            timeout_s: u32::try_from(accepted).unwrap_or(0),
            last_reboot_was_watchdog: status & WDIOF_CARDRESET != 0,
        };
        Ok((dog, armed))
    }

    fn fd(&self) -> i32 {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn op(&self, op: &'static str, e: nix::Error) -> WatchdogError {
        WatchdogError::Op { path: self.path.clone(), op, source: std::io::Error::from(e) }
    }

    /// Restarts the count.
    pub fn pet(&self) -> Result<(), WatchdogError> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE on an open descriptor with a live c_int.
        unsafe { wdioc_keepalive(self.fd(), &mut dummy) }.map(|_| ()).map_err(|e| self.op("WDIOC_KEEPALIVE", e))
    }

    /// The magic close: 'V', then close; the watchdog stops (unless the
    /// driver was loaded with `nowayout`). Only on a clean, configured
    /// shutdown.
    pub fn disarm(mut self) -> Result<(), WatchdogError> {
        let path = self.path.clone();
        if let Some(mut f) = self.file.take() {
            f.write_all(b"V").map_err(|source| WatchdogError::Op { path, op: "magic close", source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let err = HwWatchdog::open(Path::new("/nonexistent/watchdog"), 10).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/watchdog"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_watchdog_is_refused_at_its_first_ioctl() {
        let path = std::env::temp_dir().join(format!("triad-not-a-watchdog-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap_or_else(|e| panic!("{e}"));
        let err = HwWatchdog::open(&path, 10).unwrap_err();
        assert!(err.to_string().contains("WDIOC_SETTIMEOUT"), "{err}");
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

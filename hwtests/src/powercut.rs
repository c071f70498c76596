//! A disk whose power can be cut: a VM's disk image served by a host-side
//! `nbdkit` (file plugin) under its cache filter in writeback mode, on a
//! unix socket, as QEMU's `-drive file=nbd+unix:///?socket=...`.
//!
//! The cache filter keeps every write in its own temporary file (already
//! unlinked, in `TMPDIR`) and writes it to the image only when the client
//! sends FLUSH (or FUA): it is a disk's volatile write cache. Killing
//! nbdkit with SIGKILL therefore loses exactly what the guest wrote and
//! never flushed, as a power cut does; what was flushed is in the image
//! file (the file plugin turns FLUSH into fdatasync). `tests/powercut_disk.rs`
//! checks that it really behaves so with a real NBD client.
//!
//! QEMU's side: `cache=writeback`. The guest then sees a volatile write
//! cache (so its kernel sends flushes), QEMU's NBD driver keeps no data of
//! its own (each guest write is sent as an NBD WRITE at once, without FUA,
//! and each guest flush as an NBD FLUSH). `writethrough`/`directsync`
//! would add FUA to every write (nothing would ever be lost) and `unsafe`
//! drops the guest's flushes (everything could be); `none` only adds
//! O_DIRECT, which concerns host files, not a socket.
//!
//! A power cut of a VM is [`crate::vm::Vm::freeze`] (nothing more leaves
//! it), [`PowerCutDisk::cut`] (the cache is lost), then killing QEMU.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{wait_until, HwError};

/// The cache's block size: a disk cache loses whole sectors, not 64 KiB
/// (the filter's default) around a write.
pub const CACHE_BLOCK: &str = "4096";

/// An nbdkit serving one image with a write cache that a kill loses.
#[derive(Debug)]
pub struct PowerCutDisk {
    /// The image file (what survives a cut).
    pub image: PathBuf,
    /// The unix socket nbdkit listens on.
    pub socket: PathBuf,
    child: Option<Child>,
}

impl PowerCutDisk {
    /// Starts nbdkit on `image` with its socket `dir/NAME.sock` (its log in
    /// `dir/NAME.nbdkit.log`, its cache file in `dir`), and returns once the
    /// socket accepts connections (within 10 s).
    pub fn start(image: &Path, dir: &Path, name: &str) -> Result<PowerCutDisk, HwError> {
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let log_path = dir.join(format!("{name}.nbdkit.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| HwError::Io { path: log_path.clone(), source })?;
        let mut c = Command::new("nbdkit");
        // -f: stays our child, so the cut kills exactly this process.
        c.arg("-f")
            .arg("-U")
            .arg(&socket)
            // For `work_dir`, which ends the nbdkits of a killed run.
            .arg("-P")
            .arg(dir.join(format!("{name}.nbdkit.pid")))
            .args(["--filter=cache", "file"])
            .arg(format!("file={}", image.display()))
            .args(["cache=writeback", &format!("cache-min-block-size={CACHE_BLOCK}")])
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = c.spawn().map_err(|e| HwError::Command { command: format!("{c:?}"), detail: e.to_string() })?;
        let mut disk = PowerCutDisk { image: image.to_path_buf(), socket, child: Some(child) };
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            UnixStream::connect(&disk.socket).ok().map(drop)
        });
        if up.is_none() {
            let exited = disk.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(HwError::Command {
                command: format!("{c:?}"),
                detail: format!("socket not accepting within 10 s (exit {exited:?}): {}", log.trim()),
            });
        }
        Ok(disk)
    }

    /// The NBD URI of the export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// QEMU's `-drive` value for this disk as the VM's virtio disk (the
    /// module's comment says why `cache=writeback`).
    pub fn qemu_drive(&self) -> String {
        format!("file={},format=raw,if=virtio,cache=writeback", self.uri())
    }

    /// The cut: SIGKILL to nbdkit, and its exit awaited. Whatever the
    /// client wrote since its last FLUSH is gone with the process.
    pub fn cut(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PowerCutDisk {
    fn drop(&mut self) {
        self.cut();
        let _ = std::fs::remove_file(&self.socket);
    }
}

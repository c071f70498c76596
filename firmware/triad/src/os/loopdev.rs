//! Loop devices: a file (nbdfuse's view of the node's own NBD export) made
//! a block device that ext4 can mount, for hosts without the nbd module
//! (the lab, CI). The appliance uses the kernel nbd driver instead.
//!
//! The device is configured with `LO_FLAGS_AUTOCLEAR` in one
//! `LOOP_CONFIGURE` call: when the last user closes it (our handle, then
//! the mount), the kernel detaches it on its own, so a node killed with
//! its mount namespace leaves no loop device behind. Two nodes may race
//! for the same free device; the loser gets EBUSY and asks again.
//!
//! Must not: keep a device attached without holding it open (autoclear
//! would detach it under a mount about to happen).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Free devices asked for before giving up on races.
const ATTEMPTS: usize = 8;

nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Why a loop device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The backing file.
    #[error("cannot open {path} to back a loop device")]
    Backing {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// /dev/loop-control or the device.
    #[error("cannot get a free loop device from {path}")]
    Control {
        /// The control file or device.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `LOOP_CONFIGURE` kept failing.
    #[error("cannot configure a loop device on {backing} (last tried {device})")]
    Configure {
        /// The backing file.
        backing: PathBuf,
        /// The device tried last.
        device: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
}

/// An attached loop device, held open (its autoclear waits for this
/// handle and any mount of it to close).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device, read-write, autoclear,
    /// with `block_size`-byte logical blocks (the NBD export's minimum
    /// block size: libnbd refuses smaller or unaligned requests, and the
    /// loop device's default 512 would send them).
    pub fn attach(backing: &Path, block_size: u32) -> Result<LoopDevice, LoopError> {
        let back = OpenOptions::new()
            .read(true)
            .write(true)
            .open(backing)
            .map_err(|source| LoopError::Backing { path: backing.into(), source })?;
        let control_path = PathBuf::from("/dev/loop-control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&control_path)
            .map_err(|source| LoopError::Control { path: control_path.clone(), source })?;
        let mut last = (PathBuf::new(), Errno::EBUSY);
        for _ in 0..ATTEMPTS {
            // SAFETY: an ioctl without argument on a file we hold open.
            let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
                .map_err(|e| LoopError::Control { path: control_path.clone(), source: e.into() })?;
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| LoopError::Control { path: path.clone(), source })?;
            let config = LoopConfig {
                fd: u32::try_from(back.as_raw_fd()).unwrap_or(u32::MAX),
                block_size,
                info: LoopInfo64 {
                    device: 0,
                    inode: 0,
                    rdevice: 0,
                    offset: 0,
                    sizelimit: 0,
                    number: 0,
                    encrypt_type: 0,
                    encrypt_key_size: 0,
                    flags: LO_FLAGS_AUTOCLEAR,
                    file_name: [0; 64],
                    crypt_name: [0; 64],
                    encrypt_key: [0; 32],
                    init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: `config` is a valid loop_config that outlives the
            // call; the kernel takes its own reference to the backing file.
            match unsafe { loop_configure(file.as_raw_fd(), &config) } {
                Ok(_) => return Ok(LoopDevice { path, file }),
                // Another attacher took it between GET_FREE and CONFIGURE.
                Err(Errno::EBUSY) => last = (path, Errno::EBUSY),
                Err(e) => return Err(LoopError::Configure { backing: backing.into(), device: path, source: e }),
            }
        }
        Err(LoopError::Configure { backing: backing.into(), device: last.0, source: last.1 })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches it now (after the unmount). ENXIO: autoclear already did.
    pub fn detach(self) -> Result<(), Errno> {
        // SAFETY: an ioctl without argument on a file we hold open.
        match unsafe { loop_clr_fd(self.file.as_raw_fd()) } {
            Ok(_) | Err(Errno::ENXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_kernel_layout() {
        // linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}

//! Finding QEMU. Debian 12 has qemu-system-x86 only as 7.2, and installing
//! it removes the qemu-utils 10.x backport the NBD client tests use
//! (docs/image.md, LAB-NOTES). So `hwtests/setup-qemu.sh` unpacks the
//! emulator with `dpkg -x` into `/var/cache/triad-image/qemu` (its
//! libraries installed normally), and this module points QEMU at its
//! firmware and module directories there. `TRIAD_QEMU` names another
//! `qemu-system-x86_64` (an installed one needs no extra directories).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HwError;

/// Where `hwtests/setup-qemu.sh` unpacks QEMU.
pub const UNPACKED: &str = "/var/cache/triad-image/qemu";

/// A runnable `qemu-system-x86_64`.
#[derive(Clone, Debug)]
pub struct Qemu {
    /// The binary.
    pub binary: PathBuf,
    /// `-L` directories (firmware: SeaBIOS, option ROMs, PVH loader).
    pub data_dirs: Vec<PathBuf>,
    /// `QEMU_MODULE_DIR` (TCG itself is a module in Debian's build).
    pub module_dir: Option<PathBuf>,
}

impl Qemu {
    /// The unpacked copy, or `TRIAD_QEMU`.
    pub fn locate() -> Result<Qemu, HwError> {
        if let Some(p) = std::env::var_os("TRIAD_QEMU") {
            return Ok(Qemu { binary: p.into(), data_dirs: Vec::new(), module_dir: None });
        }
        let base = Path::new(UNPACKED);
        let binary = base.join("usr/bin/qemu-system-x86_64");
        if !binary.exists() {
            return Err(HwError::Missing(format!(
                "no {}: run `bash hwtests/setup-qemu.sh` (as root) first",
                binary.display()
            )));
        }
        Ok(Qemu {
            binary,
            data_dirs: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
                .iter()
                .map(|d| base.join(d))
                .collect(),
            module_dir: Some(base.join("usr/lib/x86_64-linux-gnu/qemu")),
        })
    }

    /// A command running QEMU with its directories set.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        for d in &self.data_dirs {
            c.arg("-L").arg(d);
        }
        if let Some(m) = &self.module_dir {
            c.env("QEMU_MODULE_DIR", m);
        }
        c
    }
}

/// Where `hwtests/setup-qemu.sh` unpacks OVMF (Debian's `ovmf` package).
pub const OVMF_UNPACKED: &str = "/var/cache/triad-image/ovmf";

/// UEFI firmware for QEMU: the code (read-only pflash) and the template
/// of its variable store (each VM writes its own copy).
#[derive(Clone, Debug)]
pub struct Ovmf {
    /// `OVMF_CODE_4M.fd`: no Secure Boot, no SMM needed (`-M pc` works).
    pub code: PathBuf,
    /// `OVMF_VARS_4M.fd`: the empty variable store.
    pub vars: PathBuf,
}

impl Ovmf {
    /// The unpacked copy, or the directory `TRIAD_OVMF_DIR` names (holding
    /// the two files).
    pub fn locate() -> Result<Ovmf, HwError> {
        let dir = std::env::var_os("TRIAD_OVMF_DIR")
            .map_or_else(|| Path::new(OVMF_UNPACKED).join("usr/share/OVMF"), PathBuf::from);
        let ovmf = Ovmf { code: dir.join("OVMF_CODE_4M.fd"), vars: dir.join("OVMF_VARS_4M.fd") };
        for f in [&ovmf.code, &ovmf.vars] {
            if !f.exists() {
                return Err(HwError::Missing(format!(
                    "no {}: run `bash hwtests/setup-qemu.sh` (as root) first",
                    f.display()
                )));
            }
        }
        Ok(ovmf)
    }
}

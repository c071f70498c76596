//! `[filesystem]`: the replicated volume's filesystem, mounted on the
//! active node for the PBX (issue 11, item 3), validated. Absent: the
//! volume is only exported over NBD, nothing mounts it.
//!
//! Must not: touch a device or create a directory (the executor does, on
//! promotion).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use triad_host::FsTiming;

use super::{absolute, int_in, invalid, ConfigError};

/// Default kernel nbd device.
pub const DEFAULT_NBD_DEVICE: &str = "/dev/nbd0";
/// Default directory of nbdfuse's mount (the volume as a file).
pub const DEFAULT_FUSE_DIR: &str = "/run/triad/volume";

/// How the node's own NBD export becomes a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attach {
    /// The kernel nbd driver on one end of a socketpair (the appliance).
    Kernel {
        /// The device, e.g. `/dev/nbd0`.
        device: PathBuf,
    },
    /// nbdfuse exposes the export as a file in `dir`, a loop device makes
    /// it a block device (hosts without the nbd module: the lab, CI).
    Nbdfuse {
        /// Where nbdfuse mounts.
        dir: PathBuf,
    },
}

/// `[filesystem]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesystemConfig {
    /// How the volume is attached.
    pub attach: Attach,
    /// Files copied onto a newly created filesystem, owned by the PBX's
    /// user (the PBX's initial database), if any.
    pub seed: Option<PathBuf>,
    /// Retry and demotion timing.
    pub timing: FsTiming,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilesystem {
    attach: Option<String>,
    nbd_device: Option<PathBuf>,
    fuse_dir: Option<PathBuf>,
    seed: Option<PathBuf>,
    retry_ms: Option<i64>,
    down_deadline_ms: Option<i64>,
}

impl TryFrom<RawFilesystem> for FilesystemConfig {
    type Error = ConfigError;

    fn try_from(r: RawFilesystem) -> Result<Self, ConfigError> {
        let attach = match r.attach.as_deref().unwrap_or("kernel") {
            "kernel" => {
                if r.fuse_dir.is_some() {
                    return Err(invalid("filesystem.fuse_dir", "only applies with attach = \"nbdfuse\""));
                }
                Attach::Kernel {
                    device: absolute(
                        r.nbd_device.unwrap_or_else(|| DEFAULT_NBD_DEVICE.into()),
                        "filesystem.nbd_device",
                    )?,
                }
            }
            "nbdfuse" => {
                if r.nbd_device.is_some() {
                    return Err(invalid("filesystem.nbd_device", "only applies with attach = \"kernel\""));
                }
                Attach::Nbdfuse {
                    dir: absolute(r.fuse_dir.unwrap_or_else(|| DEFAULT_FUSE_DIR.into()), "filesystem.fuse_dir")?,
                }
            }
            other => {
                return Err(invalid("filesystem.attach", format!("must be \"kernel\" or \"nbdfuse\", found {other:?}")))
            }
        };
        let seed = match r.seed {
            Some(s) => {
                let s = absolute(s, "filesystem.seed")?;
                if !s.is_dir() {
                    return Err(invalid("filesystem.seed", format!("{} is not a directory", s.display())));
                }
                Some(s)
            }
            None => None,
        };
        let defaults = FsTiming::default();
        let ms = |v: Option<i64>, default: Duration, field: &str| -> Result<Duration, ConfigError> {
            match v {
                Some(v) => Ok(Duration::from_millis(int_in(v, field, 10..=600_000)?)),
                None => Ok(default),
            }
        };
        let timing = FsTiming {
            retry: ms(r.retry_ms, defaults.retry, "filesystem.retry_ms")?,
            down_deadline: ms(r.down_deadline_ms, defaults.down_deadline, "filesystem.down_deadline_ms")?,
        };
        Ok(FilesystemConfig { attach, seed, timing })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<FilesystemConfig, ConfigError> {
        let raw: RawFilesystem = toml::from_str(text).map_err(|source| ConfigError::Syntax { source })?;
        FilesystemConfig::try_from(raw)
    }

    #[test]
    fn defaults_are_the_kernel_driver_and_calm_timing() {
        let c = parse("").unwrap();
        assert_eq!(c.attach, Attach::Kernel { device: DEFAULT_NBD_DEVICE.into() });
        assert_eq!(c.timing, FsTiming::default());
        assert_eq!(c.seed, None);
        let c = parse("attach = \"nbdfuse\"\nfuse_dir = \"/run/x\"\ndown_deadline_ms = 3000").unwrap();
        assert_eq!(c.attach, Attach::Nbdfuse { dir: "/run/x".into() });
        assert_eq!(c.timing.down_deadline, Duration::from_secs(3));
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let e = |t: &str| match parse(t) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(e("attach = \"iscsi\""), "filesystem.attach");
        assert_eq!(e("nbd_device = \"nbd0\""), "filesystem.nbd_device");
        assert_eq!(e("attach = \"nbdfuse\"\nnbd_device = \"/dev/nbd0\""), "filesystem.nbd_device");
        assert_eq!(e("fuse_dir = \"/x\""), "filesystem.fuse_dir");
        assert_eq!(e("seed = \"/nonexistent/seed\""), "filesystem.seed");
        assert_eq!(e("retry_ms = 0"), "filesystem.retry_ms");
        assert!(matches!(parse("mount = 1"), Err(ConfigError::Syntax { .. })));
    }
}

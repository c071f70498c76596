//! Checks of the Buildroot BR2_EXTERNAL tree (`buildroot/`) that can run
//! where Buildroot itself cannot be fetched (buildroot/README.md, "What is
//! checked here"). Each check returns every problem it finds, as a line
//! naming the file and the thing that is wrong; `tests/tree.rs` runs them
//! on the tree and on broken copies.
//!
//! - [`kernel`]: the kernel fragment against the supervisor's module table
//!   and image/build.sh's built-in requirements.
//! - [`layout`]: genimage.cfg against image/layout.conf.
//! - Kconfig (kconfig_check.py, kconfiglib) and the shell scripts (bash -n,
//!   shellcheck) are run by the tests as programs.

pub mod genimage;
pub mod kernel;
pub mod layout;

use std::path::PathBuf;

/// The repository's root (this crate is `buildroot/check`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Reads a file, naming it in the error.
pub fn read(path: &std::path::Path) -> Result<String, Vec<String>> {
    std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])
}

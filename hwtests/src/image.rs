//! The image under test: `image/out/<variant>/{vmlinux,initramfs.cpio}`
//! for the direct boot and `disk.img` for the boot through UEFI, built by
//! `image/build.sh` when missing or older than the supervisor binary it
//! would carry, the build script or the partition layout.
//!
//! The supervisor binary is a release build in its own target directory,
//! `target/image` (`cargo build --release -p triad --bin triad`, run here
//! first: a no-op when it is fresh), or the one `TRIAD_IMAGE_TRIAD` names.
//! Its own directory because the lab tests prefer `target/.../release/triad`
//! over the debug build when it exists: building it in the shared target
//! directory would change what the lab tests run after these.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{output, repo_root, HwError};

/// A built kernel and initramfs.
#[derive(Clone, Debug)]
pub struct Image {
    /// The uncompressed kernel (PVH entry).
    pub vmlinux: PathBuf,
    /// The root filesystem.
    pub initramfs: PathBuf,
    /// The kernel command line the build wrote.
    pub cmdline: String,
    /// The appliance disk (GPT, ESP with the unified kernel image, erofs
    /// root; image/layout.conf).
    pub disk: PathBuf,
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (m(a), m(b)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// The image of `variant`, built if needed.
pub fn ensure(variant: &str) -> Result<Image, HwError> {
    let root = repo_root();
    let debug = variant == "debug";
    let triad = match std::env::var_os("TRIAD_IMAGE_TRIAD") {
        Some(p) if !debug => PathBuf::from(p),
        _ => {
            // Always asked for: a no-op when it is fresh, and a stale
            // binary would test old code.
            eprintln!("hwtests: cargo build --release -p triad --bin triad (the {variant} image's supervisor)");
            build_supervisor(&root, debug)?;
            if debug {
                crate::debug_supervisor_binary()
            } else {
                crate::supervisor_binary()
            }
        }
    };
    let out = root.join("image/out").join(variant);
    let image = Image {
        vmlinux: out.join("vmlinux"),
        initramfs: out.join("initramfs.cpio"),
        cmdline: String::new(),
        disk: out.join("disk.img"),
    };
    let script = root.join("image/build.sh");
    let layout = root.join("image/layout.conf");
    // The disk is written last: its presence means a whole build.
    if !image.disk.exists() || newer(&triad, &image.disk) || newer(&script, &image.disk) || newer(&layout, &image.disk)
    {
        eprintln!("hwtests: building the {variant} image (image/build.sh)");
        let started = std::time::Instant::now();
        output(
            Command::new("bash")
                .arg(&script)
                .args(["--variant", variant, "--out"])
                .arg(&out)
                .arg("--triad")
                .arg(&triad),
        )?;
        eprintln!("hwtests: image built in {:.1} s", started.elapsed().as_secs_f64());
    }
    let cmdline_path = out.join("cmdline");
    let cmdline = std::fs::read_to_string(&cmdline_path)
        .map_err(|source| HwError::Io { path: cmdline_path, source })?
        .trim()
        .to_string();
    Ok(Image { cmdline, ..image })
}

/// `cargo build --release -p triad --bin triad` into
/// [`crate::IMAGE_TARGET_DIR`], as a developer would type it in the
/// repository: `cargo` from PATH (rustup's proxy: `rust-toolchain.toml`
/// picks the toolchain), in this process's environment less what cargo
/// set for the test itself (CARGO, CARGO_PKG_*, CARGO_MANIFEST_*, ...,
/// LD_LIBRARY_PATH), which made the build start over on every switch
/// between `cargo test` and the test binary run directly.
///
/// Not `env!("CARGO")`: it named the machine's default toolchain's cargo
/// here, not the pinned one. Not a cleared environment either: that lost
/// the machine's rustup settings (RUSTUP_AUTO_INSTALL=0), and rustup
/// reinstalled toolchains under the feet of other builds.
///
/// `debug`: with the `test-agent` feature, in
/// [`crate::DEBUG_IMAGE_TARGET_DIR`] (never the production build's).
fn build_supervisor(root: &Path, debug: bool) -> Result<String, HwError> {
    let mut cargo = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let set_by_cargo_for_tests = k == "CARGO"
            || k == "LD_LIBRARY_PATH"
            || (k.starts_with("CARGO_") && k != "CARGO_HOME" && !k.starts_with("CARGO_REGISTRIES"));
        if set_by_cargo_for_tests {
            cargo.env_remove(&key);
        }
    }
    let dir = if debug { crate::DEBUG_IMAGE_TARGET_DIR } else { crate::IMAGE_TARGET_DIR };
    cargo.current_dir(root).env("CARGO_TARGET_DIR", dir).args(["build", "--release", "-p", "triad", "--bin", "triad"]);
    if debug {
        cargo.args(["--features", "test-agent"]);
    }
    output(&mut cargo)
}

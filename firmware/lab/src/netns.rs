//! Network namespaces: the two named ones the lab keeps (switch, client),
//! and the unnamed node namespaces that exist only as long as their
//! supervisor lives.
//!
//! Node namespaces are deliberately never bind-mounted under /run/netns: a
//! bind mount would keep a node's interface alive after its supervisor was
//! killed, which is exactly what a power cut does not do.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};

use crate::cmd::{self, CmdError};

/// The namespace that holds the bridge: the lab's "switch".
pub const SWITCH_NS: &str = "tlab-sw";
/// The namespace of the client that probes the VIP.
pub const CLIENT_NS: &str = "tlab-client";

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("could not open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setns into {path} failed")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("thread running in namespace {0} panicked")]
    Thread(String),
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// Path of a named namespace as `ip netns` creates it.
pub fn named_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Whether `ip netns add NAME` was done and not undone.
pub fn exists(name: &str) -> bool {
    named_path(name).exists()
}

/// Creates a named namespace with its loopback up.
pub fn add(name: &str) -> Result<(), NetnsError> {
    cmd::ip(&["netns", "add", name])?;
    cmd::ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named namespace if it exists (idempotent, for `down`).
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if exists(name) {
        cmd::ip(&["netns", "delete", name])?;
    }
    Ok(())
}

/// Moves the *calling thread* into the named network namespace. Only call
/// this on a thread dedicated to that namespace: the rest of the process
/// stays where it was.
pub fn enter_named(name: &str) -> Result<(), NetnsError> {
    let path = named_path(name);
    let f = File::open(&path).map_err(|source| NetnsError::Open { path: path.clone(), source })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns { path, source })
}

/// Runs `f` on a fresh thread inside the named namespace and returns its
/// result. Sockets created there stay bound to that namespace wherever
/// they are used afterwards, which is how the observer gets its sockets.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    let owned = name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T, NetnsError> {
            enter_named(&owned)?;
            Ok(f())
        })
        .map_err(|e| NetnsError::Open { path: named_path(name), source: e })?;
    handle.join().map_err(|_| NetnsError::Thread(name.to_string()))?
}

/// Writes a sysctl under /proc/sys/net as seen from inside `name`.
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<(), NetnsError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    let p = path.clone();
    run_in(name, move || std::fs::write(&p, value))?.map_err(|source| NetnsError::Open { path, source })
}

/// Inode of a process's network namespace (identifies the namespace).
pub fn net_ns_of(pid: i32) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// All live processes whose network namespace is `inode`.
pub fn pids_in(inode: u64) -> Vec<i32> {
    crate::spawn::all_pids().filter(|&pid| net_ns_of(pid).ok() == Some(inode)).collect()
}

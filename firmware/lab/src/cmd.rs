//! Running the external tools the lab drives (`ip`, `nsenter`, `nft`,
//! `triad`, `keepalived`) with errors that say which command failed and
//! what it printed, so a failing lab step is diagnosable from one line.

use std::ffi::OsStr;
use std::io;
use std::process::{Command, Stdio};

/// An external command could not be started or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, status: String, stderr: String },
}

/// The command line as one string, for error messages.
fn describe<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs `program args`, waits, and returns its stdout; a non-zero exit is
/// an error carrying stderr.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, CmdError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn { cmd: describe(program, args), source })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd: describe(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args` (the caller puts `-n NS` or wraps in nsenter).
pub fn ip(args: &[&str]) -> Result<String, CmdError> {
    run("ip", args)
}

/// Runs `ip args` inside the network namespace of `pid`.
pub fn ip_in_pid(pid: i32, args: &[&str]) -> Result<String, CmdError> {
    let pid = pid.to_string();
    let mut full: Vec<&str> = vec!["-t", &pid, "-n", "ip"];
    full.extend_from_slice(args);
    run("nsenter", &full)
}

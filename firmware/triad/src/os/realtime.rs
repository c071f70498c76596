//! Real-time setup for the supervisor: memory locking and SCHED_FIFO.
//!
//! The supervisor renews the VIP's kernel lease and pets the watchdog; a
//! page fault on swapped or evicted memory, or a CPU hog at normal priority,
//! could delay those past their deadlines. This module makes the two
//! syscalls and nothing more: it must not choose the priority (config does)
//! or touch other processes.

use std::io;

/// A real-time setup syscall failed.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// prctl(PR_SET_IO_FLUSHER) failed (needs CAP_SYS_RESOURCE; kernel >= 5.6).
    #[error("prctl(PR_SET_IO_FLUSHER) failed")]
    IoFlusher(#[source] io::Error),
    /// mlockall() failed (needs CAP_IPC_LOCK or a large RLIMIT_MEMLOCK).
    #[error("mlockall(MCL_CURRENT | MCL_FUTURE) failed")]
    Mlockall(#[source] nix::Error),
    /// The priority is outside what SCHED_FIFO accepts.
    #[error("SCHED_FIFO priority {priority} is outside {min}..={max}")]
    PriorityRange {
        /// Requested.
        priority: i32,
        /// Smallest allowed.
        min: i32,
        /// Largest allowed.
        max: i32,
    },
    /// sched_get_priority_min/max() failed.
    #[error("sched_get_priority_min/max(SCHED_FIFO) failed")]
    PriorityLimits(#[source] io::Error),
    /// sched_setscheduler() failed (needs CAP_SYS_NICE and RT budget in
    /// the cgroup).
    #[error("sched_setscheduler(0, SCHED_FIFO, {priority}) failed")]
    SchedSetscheduler {
        /// Requested priority.
        priority: i32,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Marks the calling thread as an I/O flusher (prctl PR_SET_IO_FLUSHER):
/// the kernel then allocates memory for it without recursing into
/// filesystem writeback and does not throttle its writes. A thread serving
/// the block device under a filesystem the kernel is flushing needs this,
/// or reclaim can wait on writeback that waits on this thread (deadlock).
/// Needs CAP_SYS_RESOURCE.
pub fn set_io_flusher() -> Result<(), RealtimeError> {
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: prctl with integer arguments only; no pointers are passed.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r == 0 {
        Ok(())
    } else {
        Err(RealtimeError::IoFlusher(io::Error::last_os_error()))
    }
}

/// Whether the calling thread is marked as an I/O flusher.
pub fn is_io_flusher() -> Result<bool, RealtimeError> {
    const PR_GET_IO_FLUSHER: libc::c_int = 58;
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(PR_GET_IO_FLUSHER, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        Err(RealtimeError::IoFlusher(io::Error::last_os_error()))
    } else {
        Ok(r == 1)
    }
}

/// Locks all current and future pages of the process in RAM, so that no
/// deadline-bound path ever waits for a page-in.
pub fn lock_memory() -> Result<(), RealtimeError> {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(RealtimeError::Mlockall)
}

/// Puts the *calling thread* under SCHED_FIFO at `priority`.
///
/// On Linux the policy is per thread (`sched_setscheduler(0, ..)` means the
/// caller, not the process). Threads created afterwards by this thread,
/// tokio's workers and blocking pool included, inherit it, so call this on
/// the main thread before building the runtime. Processes forked from such
/// a thread inherit it too: whoever spawns the PBX must reset its policy to
/// SCHED_OTHER before exec.
pub fn set_realtime(priority: i32) -> Result<(), RealtimeError> {
    check_priority(priority)?;
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the
    // call; pid 0 names the calling thread; the call has no other memory
    // effects.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(RealtimeError::SchedSetscheduler { priority, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// Rejects priorities SCHED_FIFO would refuse, with a clearer message than
/// EINVAL.
fn check_priority(priority: i32) -> Result<(), RealtimeError> {
    // SAFETY: takes and returns plain integers; no memory is touched.
    let min = unsafe { libc::sched_get_priority_min(libc::SCHED_FIFO) };
    // SAFETY: as above.
    let max = unsafe { libc::sched_get_priority_max(libc::SCHED_FIFO) };
    if min < 0 || max < 0 {
        return Err(RealtimeError::PriorityLimits(io::Error::last_os_error()));
    }
    if !(min..=max).contains(&priority) {
        return Err(RealtimeError::PriorityRange { priority, min, max });
    }
    Ok(())
}

#[cfg(test)]
mod io_flusher_tests {
    use super::*;

    /// CAP_SYS_RESOURCE in this process's effective set.
    fn has_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line").trim();
        u64::from_str_radix(hex, 16).expect("CapEff hex") >> 24 & 1 == 1
    }

    #[test]
    fn io_flusher_is_set_when_permitted_and_refused_clearly_otherwise() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (it checks PR_SET_IO_FLUSHER)");
        let permitted = has_sys_resource();
        std::thread::spawn(move || match set_io_flusher() {
            Ok(()) => {
                assert!(permitted, "PR_SET_IO_FLUSHER succeeded without CAP_SYS_RESOURCE");
                assert!(is_io_flusher().expect("PR_GET_IO_FLUSHER"));
            }
            Err(RealtimeError::IoFlusher(e)) => {
                // Sandboxes (this CI machine among them) drop CAP_SYS_RESOURCE
                // even for root: then the refusal must be EPERM, reported as such.
                assert!(!permitted, "PR_SET_IO_FLUSHER failed with CAP_SYS_RESOURCE: {e}");
                assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            }
            Err(other) => panic!("unexpected error {other}"),
        })
        .join()
        .expect("thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_priorities_are_refused_before_the_syscall() {
        for priority in [0, -1, 100, i32::MAX] {
            assert!(matches!(set_realtime(priority), Err(RealtimeError::PriorityRange { .. })), "priority {priority}");
        }
    }
}

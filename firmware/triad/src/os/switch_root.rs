//! From the unified kernel image's small initramfs to the read-only root
//! (issue 12, items 1 and 3; docs/image.md "Boot"). The disk image's UKI
//! carries an initramfs holding only the supervisor and the modules that
//! reach the root (disk controllers, erofs: [`crate::os::modules::ROOT`]);
//! its command line says `triad.root=PARTLABEL=root-a`. PID 1 then:
//!
//! ```text
//!  early mounts ─▶ root modules ─▶ find the root (PARTLABEL= or /dev/NAME; polled)
//!   ─▶ mount it read-only on /sysroot (erofs, else squashfs) ─▶ /sysroot/sbin/init there?
//!   ─▶ mount --move /dev /proc /sys /run /tmp into it ─▶ mount --move /sysroot / ─▶ chroot
//!   ─▶ exec /sbin/init (the same supervisor, from the root: the first stage as before)
//! ```
//!
//! Owns: whether to switch at all ([`wanted`]: `triad.root=` given and `/`
//! still the initramfs, so the exec'd init on the erofs root does not try
//! again), finding a partition by its GPT name ([`partname`]), the order of
//! the steps and their undoing ([`switch`], against the [`Ops`] trait so a
//! fake checks the order without root), and reading the root mount back
//! from `/proc/self/mountinfo` ([`root_mount`]) so the running system can
//! say on its console what its root is.
//!
//! Must not: brick the box. A root that is not found, will not mount or
//! has no init is reported on the console, whatever was done is undone,
//! and the whole step is retried every 30 s; PID 1 never exits. Once
//! chroot has happened there is no way back: a failing exec is reported
//! and retried. The initramfs's files are not deleted after the switch
//! (its about 12 MB stay in RAM; docs/image.md "Not done yet").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, info};

/// Where the new root is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/sysroot";
/// The init the new root must carry (the supervisor itself).
pub const INIT: &str = "/sbin/init";
/// The early mounts carried into the new root, in this order (their
/// submounts, /dev/pts and /sys/fs/cgroup, move with them).
pub const MOVED: &[&str] = &["/dev", "/proc", "/sys", "/run", "/tmp"];
/// Filesystem types tried for the root, in order.
pub const ROOT_FSTYPES: &[&str] = &["erofs", "squashfs"];
/// How long the root device gets to appear after its driver loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(15);

/// The root filesystem named by `triad.root=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootDevice {
    /// A device node.
    Path(PathBuf),
    /// The GPT partition with this name (`PARTLABEL=`).
    PartLabel(String),
}

impl RootDevice {
    /// Parses the value of `triad.root=`: `/dev/NAME` or `PARTLABEL=NAME`
    /// (a GPT name: at most 36 characters).
    pub fn parse(value: &str) -> Result<RootDevice, String> {
        if let Some(name) = value.strip_prefix("PARTLABEL=") {
            if !name.is_empty() && name.chars().count() <= 36 {
                return Ok(RootDevice::PartLabel(name.to_string()));
            }
        } else if value.starts_with("/dev/") && value.len() > 5 && !value.contains("/../") {
            return Ok(RootDevice::Path(value.into()));
        }
        Err(format!("expected /dev/NAME or PARTLABEL=NAME (at most 36 characters), found {value:?}"))
    }
}

/// Whether this init should switch to another root: a root is named and
/// `/` is still the initramfs (ramfs or tmpfs). On the new root (erofs)
/// the same command line is seen again, and nothing happens.
pub fn wanted(root: Option<&RootDevice>, root_is_initramfs: bool) -> bool {
    root.is_some() && root_is_initramfs
}

/// The GPT partition name in a `/sys/class/block/NAME/uevent` text.
pub fn partname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|l| l.strip_prefix("PARTNAME=")).filter(|n| !n.is_empty())
}

/// The root mount as `/proc/self/mountinfo` shows it: the last entry on
/// `/` (a later mount hides an earlier one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootMount {
    /// Its filesystem type.
    pub fstype: String,
    /// Its source (the device).
    pub source: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Reads the root mount out of mountinfo text (fields: id, parent,
/// major:minor, root, mount point, options, optional fields, `-`, type,
/// source, super options).
pub fn root_mount(mountinfo: &str) -> Option<RootMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            if fields.get(4) != Some(&"/") {
                return None;
            }
            let read_only = fields.get(5)?.split(',').any(|o| o == "ro");
            let mut r = right.split(' ');
            Some(RootMount { fstype: r.next()?.to_string(), source: r.next()?.to_string(), read_only })
        })
        .next_back()
}

/// Which of [`MOVED`] are mount points now (in [`MOVED`]'s order), from
/// mountinfo text: only those can be moved.
pub fn to_move(mountinfo: &str) -> Vec<&'static str> {
    let targets: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split_once(" - ").and_then(|(left, _)| left.split(' ').nth(4))).collect();
    MOVED.iter().copied().filter(|m| targets.contains(m)).collect()
}

/// Why the switch did not happen (or, for [`SwitchError::Exec`], did not
/// finish).
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No device matched `triad.root=` in time.
    #[error("root {wanted:?} not found after {waited:?}")]
    NotFound {
        /// What was looked for.
        wanted: RootDevice,
        /// How long.
        waited: Duration,
    },
    /// No filesystem type mounted it.
    #[error("cannot mount {device} read-only on {NEW_ROOT} (tried {ROOT_FSTYPES:?})")]
    Mount {
        /// The device.
        device: PathBuf,
        /// The last type's error.
        #[source]
        source: nix::Error,
    },
    /// The root has no `/sbin/init`.
    #[error("{device} has no {INIT}: not a Triad root")]
    NoInit {
        /// The device.
        device: PathBuf,
    },
    /// A mount could not be moved into the new root.
    #[error("cannot move {what} into {NEW_ROOT}")]
    Move {
        /// The mount point.
        what: String,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The new root could not become `/`.
    #[error("cannot make {NEW_ROOT} the root")]
    Enter(#[source] nix::Error),
    /// exec of the new init failed (after chroot: no way back).
    #[error("cannot exec {INIT} on the new root")]
    Exec(#[source] nix::Error),
}

/// The system calls of the switch: the kernel's in [`Kernel`], a recording
/// fake in the tests.
pub trait Ops {
    /// Mounts `device` read-only on [`NEW_ROOT`] as `fstype`.
    fn mount_ro(&mut self, device: &Path, fstype: &str) -> Result<(), nix::Error>;
    /// Whether [`NEW_ROOT`] carries an executable [`INIT`].
    fn has_init(&mut self) -> bool;
    /// `mount --move from to`.
    fn move_mount(&mut self, from: &Path, to: &Path) -> Result<(), nix::Error>;
    /// Unmounts [`NEW_ROOT`].
    fn unmount_new_root(&mut self);
    /// chdir [`NEW_ROOT`], `mount --move . /`, chroot `.`, chdir `/`.
    fn enter(&mut self) -> Result<(), nix::Error>;
    /// exec [`INIT`]: returns only on failure.
    fn exec_init(&mut self) -> nix::Error;
}

/// Mounts `device` and makes it the root, moving `mounts` (from
/// [`to_move`]) into it, then execs its init. Returns only on failure,
/// with everything done before the failure undone (except after chroot).
pub fn switch(ops: &mut impl Ops, device: &Path, mounts: &[&str]) -> SwitchError {
    let mut last = nix::Error::EINVAL;
    let mut fstype = None;
    for t in ROOT_FSTYPES {
        match ops.mount_ro(device, t) {
            Ok(()) => {
                fstype = Some(*t);
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some(fstype) = fstype else {
        return SwitchError::Mount { device: device.to_path_buf(), source: last };
    };
    info!(device = %device.display(), fstype = %fstype, target = NEW_ROOT, "root mounted read-only");
    if !ops.has_init() {
        ops.unmount_new_root();
        return SwitchError::NoInit { device: device.to_path_buf() };
    }
    let mut moved: Vec<&str> = Vec::new();
    for m in mounts {
        let to = Path::new(NEW_ROOT).join(&m[1..]);
        if let Err(source) = ops.move_mount(Path::new(m), &to) {
            put_back(ops, &moved);
            return SwitchError::Move { what: m.to_string(), source };
        }
        moved.push(m);
    }
    if let Err(e) = ops.enter() {
        put_back(ops, &moved);
        return SwitchError::Enter(e);
    }
    info!(init = INIT, "switching root");
    SwitchError::Exec(ops.exec_init())
}

/// Undoes the moves, last first, and unmounts the new root: the
/// initramfs is as it was before the attempt, ready for the next one.
fn put_back(ops: &mut impl Ops, moved: &[&str]) {
    for m in moved.iter().rev() {
        if let Err(e) = ops.move_mount(&Path::new(NEW_ROOT).join(&m[1..]), Path::new(m)) {
            error!(error = %e, mount = m, "cannot move a mount back from the new root");
        }
    }
    ops.unmount_new_root();
}

/// The real system calls.
#[derive(Debug)]
pub struct Kernel;

impl Ops for Kernel {
    fn mount_ro(&mut self, device: &Path, fstype: &str) -> Result<(), nix::Error> {
        use nix::mount::MsFlags;
        let _ = std::fs::create_dir_all(NEW_ROOT);
        nix::mount::mount(Some(device), NEW_ROOT, Some(fstype), MsFlags::MS_RDONLY, None::<&str>)
    }

    fn has_init(&mut self) -> bool {
        nix::unistd::access(&Path::new(NEW_ROOT).join(&INIT[1..]), nix::unistd::AccessFlags::X_OK).is_ok()
    }

    fn move_mount(&mut self, from: &Path, to: &Path) -> Result<(), nix::Error> {
        nix::mount::mount(Some(from), to, None::<&str>, nix::mount::MsFlags::MS_MOVE, None::<&str>)
    }

    fn unmount_new_root(&mut self) {
        if let Err(e) = nix::mount::umount2(NEW_ROOT, nix::mount::MntFlags::MNT_DETACH) {
            error!(error = %e, target = NEW_ROOT, "cannot unmount the new root");
        }
    }

    fn enter(&mut self) -> Result<(), nix::Error> {
        nix::unistd::chdir(NEW_ROOT)?;
        nix::mount::mount(Some("."), "/", None::<&str>, nix::mount::MsFlags::MS_MOVE, None::<&str>)?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")
    }

    fn exec_init(&mut self) -> nix::Error {
        // argv[0] "/sbin/init": appliance::started_by_kernel knows it.
        let init = c"/sbin/init";
        match nix::unistd::execv(init, &[init]) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }
}

/// Whether `/` is the initramfs (ramfs, or tmpfs for a kernel that unpacks
/// it there).
pub fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // linux/magic.h; neither libc nor nix names it.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs("/").is_ok_and(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC)
}

/// Polls for the root device: its driver probes asynchronously.
pub fn find(wanted: &RootDevice) -> Result<PathBuf, SwitchError> {
    let start = Instant::now();
    loop {
        let found = match wanted {
            RootDevice::Path(p) => p.exists().then(|| p.clone()),
            RootDevice::PartLabel(name) => by_partlabel(name),
        };
        if let Some(p) = found {
            return Ok(p);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(SwitchError::NotFound { wanted: wanted.clone(), waited: DEVICE_WAIT });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The partition whose GPT name is `name` (the kernel's uevent says it).
fn by_partlabel(name: &str) -> Option<PathBuf> {
    let mut entries: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    entries.sort();
    entries.into_iter().find_map(|dev| {
        let uevent = std::fs::read_to_string(Path::new("/sys/class/block").join(&dev).join("uevent")).ok()?;
        (partname(&uevent) == Some(name)).then(|| Path::new("/dev").join(&dev))
    })
}

/// One attempt with the kernel: find the root, switch, exec. Returns only
/// on failure.
pub fn attempt(root: &RootDevice) -> SwitchError {
    let device = match find(root) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    switch(&mut Kernel, &device, &to_move(&mountinfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_settings_parse_or_are_named() {
        assert_eq!(RootDevice::parse("PARTLABEL=root-a"), Ok(RootDevice::PartLabel("root-a".into())));
        assert_eq!(RootDevice::parse("/dev/vda2"), Ok(RootDevice::Path("/dev/vda2".into())));
        for bad in
            ["", "root-a", "PARTLABEL=", "/dev/", "/dev/../etc", "LABEL=x", &format!("PARTLABEL={}", "x".repeat(37))]
        {
            let e = RootDevice::parse(bad).unwrap_err();
            assert!(e.contains("PARTLABEL=NAME") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn switch_only_from_the_initramfs_and_only_when_asked() {
        let root = RootDevice::PartLabel("root-a".into());
        assert!(wanted(Some(&root), true));
        assert!(!wanted(Some(&root), false), "already on the new root: the exec'd init must not switch again");
        assert!(!wanted(None, true), "the direct kernel + whole-tree initramfs path");
        assert!(!wanted(None, false));
    }

    #[test]
    fn partition_names_from_uevent() {
        let ev = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=2\nPARTNAME=root-a\n";
        assert_eq!(partname(ev), Some("root-a"));
        assert_eq!(partname("MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"), None);
        assert_eq!(partname("PARTNAME=\n"), None);
    }

    const MOUNTINFO: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw\n\
20 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
21 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw\n\
22 1 0:5 / /dev rw,nosuid,noexec,relatime - devtmpfs devtmpfs rw,mode=755\n\
23 22 0:22 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw\n\
24 1 0:23 / /run rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw\n\
26 21 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";

    #[test]
    fn only_mounted_top_level_early_mounts_move() {
        assert_eq!(to_move(MOUNTINFO), vec!["/dev", "/proc", "/sys", "/run"]);
        assert_eq!(to_move(""), Vec::<&str>::new());
    }

    #[test]
    fn the_root_mount_is_read_back() {
        assert_eq!(
            root_mount(MOUNTINFO),
            Some(RootMount { fstype: "rootfs".into(), source: "rootfs".into(), read_only: false })
        );
        let switched =
            "30 1 254:2 / / ro,relatime - erofs /dev/vda2 ro,user_xattr\n20 30 0:20 / /proc rw - proc proc rw\n";
        assert_eq!(
            root_mount(switched),
            Some(RootMount { fstype: "erofs".into(), source: "/dev/vda2".into(), read_only: true })
        );
        assert_eq!(root_mount("garbage\n"), None);
    }

    /// Records every call; fails the ones named.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        refuse: Vec<String>,
        no_init: bool,
    }

    impl Fake {
        fn step(&mut self, call: String) -> Result<(), nix::Error> {
            let refused = self.refuse.iter().any(|r| call.starts_with(r.as_str()));
            self.calls.push(call);
            if refused {
                Err(nix::Error::EINVAL)
            } else {
                Ok(())
            }
        }
    }

    impl Ops for Fake {
        fn mount_ro(&mut self, device: &Path, fstype: &str) -> Result<(), nix::Error> {
            self.step(format!("mount_ro {} {fstype}", device.display()))
        }
        fn has_init(&mut self) -> bool {
            self.calls.push("has_init".into());
            !self.no_init
        }
        fn move_mount(&mut self, from: &Path, to: &Path) -> Result<(), nix::Error> {
            self.step(format!("move {} {}", from.display(), to.display()))
        }
        fn unmount_new_root(&mut self) {
            self.calls.push("unmount".into());
        }
        fn enter(&mut self) -> Result<(), nix::Error> {
            self.step("enter".into())
        }
        fn exec_init(&mut self) -> nix::Error {
            self.calls.push("exec".into());
            nix::Error::ENOEXEC
        }
    }

    const MOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/run"];

    #[test]
    fn the_steps_run_in_order() {
        let mut f = Fake::default();
        let e = switch(&mut f, Path::new("/dev/vda2"), MOUNTS);
        assert!(matches!(e, SwitchError::Exec(nix::Error::ENOEXEC)), "{e:?}");
        assert_eq!(
            f.calls,
            [
                "mount_ro /dev/vda2 erofs",
                "has_init",
                "move /dev /sysroot/dev",
                "move /proc /sysroot/proc",
                "move /sys /sysroot/sys",
                "move /run /sysroot/run",
                "enter",
                "exec"
            ]
        );
    }

    #[test]
    fn squashfs_is_tried_when_erofs_refuses_and_both_refusing_is_named() {
        let mut f = Fake { refuse: vec!["mount_ro /dev/vda2 erofs".into()], ..Fake::default() };
        switch(&mut f, Path::new("/dev/vda2"), &[]);
        assert_eq!(f.calls[..3], ["mount_ro /dev/vda2 erofs", "mount_ro /dev/vda2 squashfs", "has_init"]);
        let mut f = Fake { refuse: vec!["mount_ro".into()], ..Fake::default() };
        let e = switch(&mut f, Path::new("/dev/vda2"), MOUNTS);
        assert!(matches!(e, SwitchError::Mount { .. }), "{e:?}");
        assert_eq!(f.calls.len(), 2, "nothing after a failed mount: {:?}", f.calls);
    }

    #[test]
    fn a_root_without_init_is_unmounted_and_nothing_moves() {
        let mut f = Fake { no_init: true, ..Fake::default() };
        let e = switch(&mut f, Path::new("/dev/vda2"), MOUNTS);
        assert!(matches!(e, SwitchError::NoInit { .. }), "{e:?}");
        assert!(e.to_string().contains("/dev/vda2 has no /sbin/init"), "{e}");
        assert_eq!(f.calls, ["mount_ro /dev/vda2 erofs", "has_init", "unmount"]);
    }

    #[test]
    fn a_failed_move_puts_back_what_moved_and_unmounts() {
        let mut f = Fake { refuse: vec!["move /sys ".into()], ..Fake::default() };
        let e = switch(&mut f, Path::new("/dev/vda2"), MOUNTS);
        assert!(matches!(&e, SwitchError::Move { what, .. } if what == "/sys"), "{e:?}");
        assert_eq!(
            f.calls[2..],
            [
                "move /dev /sysroot/dev",
                "move /proc /sysroot/proc",
                "move /sys /sysroot/sys",
                "move /sysroot/proc /proc",
                "move /sysroot/dev /dev",
                "unmount"
            ]
        );
    }

    #[test]
    fn a_failed_enter_puts_everything_back() {
        let mut f = Fake { refuse: vec!["enter".into()], ..Fake::default() };
        let e = switch(&mut f, Path::new("/dev/vda2"), &["/dev", "/proc"]);
        assert!(matches!(e, SwitchError::Enter(_)), "{e:?}");
        assert_eq!(f.calls[4..], ["enter", "move /sysroot/proc /proc", "move /sysroot/dev /dev", "unmount"]);
    }
}

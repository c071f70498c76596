//! One virtual appliance: a QEMU process under software emulation booting
//! either the image's kernel and initramfs directly with a state disk
//! ([`Vm::start`]), or its own copy of the appliance disk through UEFI
//! firmware ([`Vm::start_uefi`]: OVMF, the ESP's unified kernel image, the
//! read-only root); a virtio NIC on its tap, an i6300esb watchdog that
//! resets the VM, its serial console in a file and a monitor socket
//! through which the test powers it off.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::Image;
use crate::net::{node_mac, tap, NS};
use crate::qemu::{Ovmf, Qemu};
use crate::{wait_until, HwError};

/// Guest memory: the initramfs (about 30 MB) lives in it, unpacked.
pub const MEMORY_MIB: u32 = 512;

/// A running VM; its QEMU is killed on drop.
#[derive(Debug)]
pub struct Vm {
    /// Node id.
    pub id: u8,
    /// The serial console's file.
    pub serial: PathBuf,
    monitor: PathBuf,
    child: Child,
    /// When QEMU was started.
    pub started: Instant,
}

impl Vm {
    /// Starts VM `id` in the segment's namespace, its files under `dir`:
    /// the kernel and initramfs loaded by QEMU, the state disk as virtio.
    pub fn start(qemu: &Qemu, image: &Image, dir: &Path, id: u8, state_disk: &Path) -> Result<Vm, HwError> {
        Self::start_with_drive(qemu, image, dir, id, &format!("file={},format=raw,if=virtio", state_disk.display()))
    }

    /// As [`Vm::start`], the state disk given as QEMU's `-drive` value
    /// (a [`crate::powercut::PowerCutDisk`]'s, served over NBD).
    pub fn start_with_drive(qemu: &Qemu, image: &Image, dir: &Path, id: u8, drive: &str) -> Result<Vm, HwError> {
        let boot: Vec<std::ffi::OsString> = vec![
            "-kernel".into(),
            image.vmlinux.clone().into(),
            "-initrd".into(),
            image.initramfs.clone().into(),
            "-append".into(),
            image.cmdline.clone().into(),
            "-drive".into(),
            drive.into(),
        ];
        Self::spawn(qemu, dir, id, &boot)
    }

    /// Starts VM `id` booting `disk` (its own copy of the appliance disk)
    /// through OVMF: the firmware code read-only, a copy of the variable
    /// store per VM, the disk as virtio-blk and the first boot device
    /// (OVMF then runs the ESP's `EFI/BOOT/BOOTX64.EFI`).
    pub fn start_uefi(qemu: &Qemu, ovmf: &Ovmf, dir: &Path, id: u8, disk: &Path) -> Result<Vm, HwError> {
        let vars = dir.join(format!("ovmf-vars-{id}.fd"));
        std::fs::copy(&ovmf.vars, &vars).map_err(|source| HwError::Io { path: vars.clone(), source })?;
        let boot: Vec<std::ffi::OsString> = vec![
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={}", ovmf.code.display()).into(),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()).into(),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=disk0", disk.display()).into(),
            "-device".into(),
            "virtio-blk-pci,drive=disk0,bootindex=0".into(),
        ];
        Self::spawn(qemu, dir, id, &boot)
    }

    /// QEMU with what every VM has, plus `boot` (how it boots, its disks).
    fn spawn(qemu: &Qemu, dir: &Path, id: u8, boot: &[std::ffi::OsString]) -> Result<Vm, HwError> {
        let serial = dir.join(format!("serial-{id}.log"));
        let monitor = dir.join(format!("monitor-{id}.sock"));
        let _ = std::fs::remove_file(&monitor);
        let q = qemu.command();
        // QEMU opens its tap by name: it must run inside the namespace.
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NS]).arg(q.get_program()).args(q.get_args());
        for (k, v) in q.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.args(["-name", &format!("triad-hw-{id}"), "-accel", "tcg", "-M", "pc", "-m", &MEMORY_MIB.to_string()])
            .args(["-smp", "1", "-nodefaults", "-no-user-config", "-display", "none"])
            .args(boot)
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-pidfile")
            .arg(dir.join(format!("qemu-{id}.pid")))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(["-netdev", &format!("tap,id=n0,ifname={},script=no,downscript=no", tap(id))])
            // No option ROM: nothing boots from the network (OVMF's own
            // virtio-net driver still sees the NIC; bootindex puts the
            // disk first).
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={},romfile=", node_mac(id))])
            .args(["-device", "i6300esb", "-action", "watchdog=reset"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("qemu-{id}.log")))
                    .map_err(|source| HwError::Io { path: dir.join(format!("qemu-{id}.log")), source })?,
            ));
        let child = c.spawn().map_err(|e| HwError::Command { command: format!("{c:?}"), detail: e.to_string() })?;
        Ok(Vm { id, serial, monitor, child, started: Instant::now() })
    }

    /// The serial console so far.
    pub fn serial_text(&self) -> String {
        std::fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Freezes QEMU (SIGSTOP): the guest runs no more and sends nothing
    /// more to its disks or its network. The first step of a power cut
    /// of several VMs at once: none of them sees another one die.
    pub fn freeze(&mut self) -> Result<(), HwError> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
            .map_err(|e| HwError::Missing(format!("VM {}: SIGSTOP to QEMU: {e}", self.id)))
    }

    /// Kills QEMU (SIGKILL) and waits for it: no flush of its disks, no
    /// shutdown inside the guest.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Powers the VM off as a power cut does: the monitor's `quit` ends
    /// QEMU at once, with no shutdown inside the guest. Returns once QEMU
    /// has exited (killed if it has not within 10 s: then an error).
    pub fn power_off(&mut self) -> Result<(), HwError> {
        let quit = self.monitor_quit();
        let exited = wait_until(Duration::from_secs(10), Duration::from_millis(10), || (!self.running()).then_some(()));
        if exited.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        match (quit, exited) {
            (Ok(()), Some(())) => Ok(()),
            (Err(e), _) => Err(HwError::Missing(format!("VM {}: monitor {}: {e}", self.id, self.monitor.display()))),
            (Ok(()), None) => Err(HwError::Missing(format!("VM {}: QEMU ignored `quit` for 10 s: killed", self.id))),
        }
    }

    /// Sends `quit` on the human monitor once it has greeted (a command
    /// sent before the greeting, on a connection closed at once, can be
    /// lost), then reads until QEMU closes the connection as it exits.
    fn monitor_quit(&self) -> std::io::Result<()> {
        use std::io::Read;
        let mut s = UnixStream::connect(&self.monitor)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains("(qemu)") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "monitor closed before its prompt"));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"quit\n")?;
        // EOF (or a reset) when QEMU is gone; a timeout is judged by the
        // caller, who watches the process.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Kernel modules the appliance loads at boot (issue 12, item 2): there is
//! no modprobe, no depmod output and no shell on the image, so PID 1 loads
//! them itself with finit_module(2) from a table, in the table's order.
//!
//! Owns: the table ([`MODULES`]: name, path under `/lib/modules/<release>`,
//! the modules each one needs, what the supervisor uses it for), the pure
//! decisions around it (what a finit_module result means: [`outcome`];
//! which missing modules make the config unusable: [`missing_required`]),
//! and the one syscall that carries it out ([`load_all`]).
//!
//! Order is the whole point of the table: the kernel resolves a module's
//! symbols at load time, so every module in `deps` comes earlier (a unit
//! test holds the table to that, and `image/build.sh` checks `deps` against
//! each file's `.modinfo`, hard and `softdep=pre:` alike). Two orderings are
//! not symbol dependencies and would be easy to lose: `crc32c_generic`
//! before `libcrc32c` (libcrc32c asks the crypto API for "crc32c" in its
//! init and fails with ENOENT when no provider is loaded), and the watchdog
//! core before any watchdog driver.
//!
//! Must not: run outside the appliance (the lab's init mode shares the
//! machine's kernel, so only the kernel-started init calls [`load_all`]),
//! or stop the boot for a module that is missing or refused: a box without
//! its e1000e driver may still have its virtio one. Whether the config can
//! run without one is [`missing_required`]'s business, after the config is
//! read.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// What the supervisor uses a module for, which decides whether its
/// absence is fatal for a config ([`missing_required`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A library other modules need (checksums, buses).
    Library,
    /// A driver for hardware this box may or may not have (disk
    /// controllers, NICs, watchdog chips): never required by name.
    Hardware,
    /// The state partition's and the volume's filesystem.
    Filesystem,
    /// The kernel's nbd client (`[filesystem] attach = "kernel"`).
    Nbd,
    /// nftables, for the lease fence: every config uses it.
    Fence,
    /// The watchdog core (`[watchdog]`).
    Watchdog,
}

/// One module of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// The module's name as the kernel knows it (`/sys/module/<name>`,
    /// with `-` as `_`).
    pub name: &'static str,
    /// The file, relative to `/lib/modules/<release>/` (Debian's tree).
    pub path: &'static str,
    /// Modules that must be loaded before it: its `depends=` and its
    /// `softdep=pre:` providers.
    pub deps: &'static [&'static str],
    /// What it is for.
    pub usage: Use,
}

const fn m(name: &'static str, path: &'static str, deps: &'static [&'static str], usage: Use) -> Module {
    Module { name, path, deps, usage }
}

use Use::{Fence, Filesystem, Hardware, Library, Nbd, Watchdog};

/// The modules, in load order. Debian 12's `linux-image-amd64` (6.1) builds
/// everything else the supervisor needs into the kernel (AF_PACKET, IPv6,
/// the nftables netdev and arp families, cgroup v2, devtmpfs).
pub const MODULES: &[Module] = &[
    // Checksums first: ext4, jbd2, erofs and nf_tables need them. The
    // crc32c provider before libcrc32c (see the module doc).
    m("crc32c_generic", "kernel/crypto/crc32c_generic.ko", &[], Library),
    m("libcrc32c", "kernel/lib/libcrc32c.ko", &["crc32c_generic"], Library),
    m("crc16", "kernel/lib/crc16.ko", &[], Library),
    m("crct10dif_common", "kernel/crypto/crct10dif_common.ko", &[], Library),
    m("crct10dif_generic", "kernel/crypto/crct10dif_generic.ko", &["crct10dif_common"], Library),
    m("crc_t10dif", "kernel/lib/crc-t10dif.ko", &["crct10dif_common", "crct10dif_generic"], Library),
    m("crc64", "kernel/lib/crc64.ko", &[], Library),
    m("crc64_rocksoft", "kernel/lib/crc64-rocksoft.ko", &["crc64"], Library),
    m("t10_pi", "kernel/block/t10-pi.ko", &["crc_t10dif", "crc64_rocksoft"], Library),
    // Virtio: QEMU's disks and NIC.
    m("virtio_ring", "kernel/drivers/virtio/virtio_ring.ko", &[], Library),
    m("virtio", "kernel/drivers/virtio/virtio.ko", &["virtio_ring"], Library),
    m("virtio_pci_modern_dev", "kernel/drivers/virtio/virtio_pci_modern_dev.ko", &[], Library),
    m("virtio_pci_legacy_dev", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko", &[], Library),
    m(
        "virtio_pci",
        "kernel/drivers/virtio/virtio_pci.ko",
        &["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
        Hardware,
    ),
    m("virtio_blk", "kernel/drivers/block/virtio_blk.ko", &["virtio", "virtio_ring"], Hardware),
    m("failover", "kernel/net/core/failover.ko", &[], Library),
    m("net_failover", "kernel/drivers/net/net_failover.ko", &["failover"], Library),
    m("virtio_net", "kernel/drivers/net/virtio_net.ko", &["virtio_ring", "virtio", "net_failover"], Hardware),
    // Disk controllers of common appliance boards.
    m("scsi_common", "kernel/drivers/scsi/scsi_common.ko", &[], Library),
    m("scsi_mod", "kernel/drivers/scsi/scsi_mod.ko", &["scsi_common"], Library),
    m("sd_mod", "kernel/drivers/scsi/sd_mod.ko", &["scsi_mod", "t10_pi"], Hardware),
    m("libata", "kernel/drivers/ata/libata.ko", &["scsi_mod", "scsi_common"], Library),
    m("libahci", "kernel/drivers/ata/libahci.ko", &["libata"], Library),
    m("ahci", "kernel/drivers/ata/ahci.ko", &["libahci", "libata"], Hardware),
    m("nvme_core", "kernel/drivers/nvme/host/nvme-core.ko", &["t10_pi"], Library),
    m("nvme", "kernel/drivers/nvme/host/nvme.ko", &["nvme_core"], Hardware),
    // NICs of common appliance boards.
    m("e1000", "kernel/drivers/net/ethernet/intel/e1000/e1000.ko", &[], Hardware),
    m("e1000e", "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko", &[], Hardware),
    m("dca", "kernel/drivers/dca/dca.ko", &[], Library),
    m("i2c_algo_bit", "kernel/drivers/i2c/algos/i2c-algo-bit.ko", &[], Library),
    m("igb", "kernel/drivers/net/ethernet/intel/igb/igb.ko", &["dca", "i2c_algo_bit"], Hardware),
    m("libphy", "kernel/drivers/net/phy/libphy.ko", &[], Library),
    m("mdio_devres", "kernel/drivers/net/phy/mdio_devres.ko", &["libphy"], Library),
    m("realtek", "kernel/drivers/net/phy/realtek.ko", &["libphy"], Hardware),
    m("r8169", "kernel/drivers/net/ethernet/realtek/r8169.ko", &["libphy", "mdio_devres", "realtek"], Hardware),
    // Filesystems: ext4 for the state partition and the volume; erofs and
    // squashfs for a read-only root.
    m("mbcache", "kernel/fs/mbcache.ko", &[], Library),
    m("jbd2", "kernel/fs/jbd2/jbd2.ko", &["crc32c_generic"], Library),
    m("ext4", "kernel/fs/ext4/ext4.ko", &["jbd2", "mbcache", "crc16", "crc32c_generic"], Filesystem),
    m("erofs", "kernel/fs/erofs/erofs.ko", &["libcrc32c"], Filesystem),
    m("squashfs", "kernel/fs/squashfs/squashfs.ko", &[], Filesystem),
    // The volume's kernel attach.
    m("nbd", "kernel/drivers/block/nbd.ko", &[], Nbd),
    // The lease fence.
    m("nfnetlink", "kernel/net/netfilter/nfnetlink.ko", &[], Fence),
    m("nf_tables", "kernel/net/netfilter/nf_tables.ko", &["nfnetlink", "libcrc32c"], Fence),
    // The watchdog core before any watchdog driver. No intel_pmc_bxt, so
    // iTCO_wdt is left out: Debian builds it with that dependency, and
    // the chipsets that need it are not appliance boards we know of.
    m("watchdog", "kernel/drivers/watchdog/watchdog.ko", &[], Watchdog),
    m("i6300esb", "kernel/drivers/watchdog/i6300esb.ko", &["watchdog"], Hardware),
    m("sp5100_tco", "kernel/drivers/watchdog/sp5100_tco.ko", &["watchdog"], Hardware),
];

/// The modules that reach the root filesystem, in [`MODULES`]'s order:
/// what the unified kernel image's small initramfs carries and loads
/// before it switches to the read-only root (`os/switch_root.rs`). Disk
/// controllers with their libraries, and erofs/squashfs. A unit test holds
/// it closed under `deps`; the root's init loads the whole table again
/// (EEXIST counts as loaded).
pub const ROOT: &[&str] = &[
    "crc32c_generic",
    "libcrc32c",
    "crct10dif_common",
    "crct10dif_generic",
    "crc_t10dif",
    "crc64",
    "crc64_rocksoft",
    "t10_pi",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "scsi_common",
    "scsi_mod",
    "sd_mod",
    "libata",
    "libahci",
    "ahci",
    "nvme_core",
    "nvme",
    "erofs",
    "squashfs",
];

/// The modules of [`MODULES`] named in `names`, in the table's order.
pub fn subset(names: &[&str]) -> Vec<&'static Module> {
    MODULES.iter().filter(|m| names.contains(&m.name)).collect()
}

/// What loading one module came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded now.
    Loaded,
    /// Already loaded (EEXIST): a second boot stage or a retry.
    AlreadyLoaded,
    /// No such file in the image.
    Missing,
    /// The kernel refused it (its errno's name and text).
    Refused(String),
}

impl Outcome {
    /// The module is in the kernel now.
    pub fn present(&self) -> bool {
        matches!(self, Outcome::Loaded | Outcome::AlreadyLoaded)
    }
}

/// What a finit_module(2) result means. ENODEV and ENXIO are not errors
/// for a hardware driver whose init looks for its device (a watchdog chip
/// that is not there): they are reported as refusals, which is not fatal.
pub fn outcome(result: Result<(), nix::Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Loaded,
        Err(nix::Error::EEXIST) => Outcome::AlreadyLoaded,
        Err(nix::Error::ENOENT) => Outcome::Missing,
        Err(e) => Outcome::Refused(format!("{e:?}: {}", e.desc())),
    }
}

/// What the config uses, as far as modules are concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uses {
    /// `[watchdog]` is configured.
    pub watchdog: bool,
    /// `[filesystem]` is configured (the volume carries ext4).
    pub filesystem: bool,
    /// `[filesystem] attach = "kernel"`.
    pub kernel_nbd: bool,
}

impl Uses {
    /// From a validated config.
    pub fn of(cfg: &crate::config::Config) -> Uses {
        let fs = cfg.filesystem.as_ref();
        Uses {
            watchdog: cfg.watchdog.is_some(),
            filesystem: fs.is_some(),
            kernel_nbd: fs.is_some_and(|f| matches!(f.attach, crate::config::Attach::Kernel { .. })),
        }
    }

    fn needs(&self, usage: Use) -> bool {
        match usage {
            Use::Fence => true,
            Use::Watchdog => self.watchdog,
            Use::Filesystem => self.filesystem,
            Use::Nbd => self.kernel_nbd,
            Use::Library | Use::Hardware => false,
        }
    }
}

/// The modules the config cannot run without that are not in the kernel,
/// in table order. Only ext4 counts for `Filesystem` (erofs and squashfs
/// are for a read-only root the kernel mounts itself); a library counts
/// through the modules that need it, which then fail to load themselves.
pub fn missing_required(report: &[(&'static Module, Outcome)], uses: Uses) -> Vec<&'static str> {
    report
        .iter()
        .filter(|(m, o)| uses.needs(m.usage) && !o.present())
        .filter(|(m, _)| m.usage != Use::Filesystem || m.name == "ext4")
        .map(|(m, _)| m.name)
        .collect()
}

/// The table's rule: names unique, every dependency earlier. Used by the
/// unit test and by `triad image-modules` (the image build refuses a table
/// that breaks it).
pub fn check_order(table: &[Module]) -> Result<(), String> {
    for (i, module) in table.iter().enumerate() {
        if table[..i].iter().any(|e| e.name == module.name) {
            return Err(format!("{} is listed twice", module.name));
        }
        for dep in module.deps {
            if !table[..i].iter().any(|e| e.name == *dep) {
                return Err(format!("{} needs {dep}, which is not listed before it", module.name));
            }
        }
    }
    Ok(())
}

/// `/lib/modules/<release>` of the running kernel.
pub fn release_dir() -> std::io::Result<PathBuf> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    Ok(Path::new("/lib/modules").join(release.trim()))
}

/// Loads every module of the table from `dir`, in order, and logs each
/// outcome. Never stops early: a module the kernel refuses is logged and
/// the next one is tried.
pub fn load_all(dir: &Path) -> Vec<(&'static Module, Outcome)> {
    load(dir, MODULES.iter())
}

/// As [`load_all`], for the modules of [`ROOT`] only (the small
/// initramfs carries no others).
pub fn load_root(dir: &Path) -> Vec<(&'static Module, Outcome)> {
    load(dir, subset(ROOT).into_iter())
}

fn load(dir: &Path, table: impl Iterator<Item = &'static Module>) -> Vec<(&'static Module, Outcome)> {
    let start = std::time::Instant::now();
    let report: Vec<_> = table.map(|m| (m, outcome(load_one(&dir.join(m.path))))).collect();
    for (m, o) in &report {
        match o {
            Outcome::Loaded | Outcome::AlreadyLoaded => {}
            Outcome::Missing => warn!(module = m.name, path = m.path, "kernel module not in the image"),
            Outcome::Refused(why) => warn!(module = m.name, error = %why, "kernel module refused"),
        }
    }
    let loaded = report.iter().filter(|(_, o)| o.present()).count();
    info!(loaded, of = report.len(), ms = start.elapsed().as_millis() as u64, dir = %dir.display(), "kernel modules loaded");
    report
}

fn load_one(path: &Path) -> Result<(), nix::Error> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let params = c"";
    // SAFETY: finit_module(2) with an open descriptor this function owns
    // for the call, a NUL-terminated empty parameter string and no flags;
    // the kernel reads the file and copies the string, keeping neither.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_loads_every_dependency_first() {
        assert_eq!(check_order(MODULES), Ok(()));
    }

    #[test]
    fn the_root_modules_are_in_the_table_and_bring_their_dependencies() {
        let root = subset(ROOT);
        assert_eq!(root.len(), ROOT.len(), "every name of ROOT is in the table");
        let owned: Vec<Module> = root.iter().map(|m| **m).collect();
        assert_eq!(check_order(&owned), Ok(()));
        for name in ["virtio_blk", "ahci", "nvme", "sd_mod", "erofs"] {
            assert!(ROOT.contains(&name), "{name}");
        }
        assert!(!ROOT.contains(&"nbd") && !ROOT.contains(&"virtio_net"), "only what reaches the root");
    }

    #[test]
    fn the_orderings_that_are_not_symbol_dependencies_hold() {
        let at = |name: &str| MODULES.iter().position(|m| m.name == name).expect(name);
        assert!(at("crc32c_generic") < at("libcrc32c"));
        assert!(at("watchdog") < at("i6300esb"));
        assert!(at("watchdog") < at("sp5100_tco"));
    }

    #[test]
    fn the_issue_s_modules_are_listed() {
        for name in ["virtio_pci", "virtio_blk", "virtio_net", "e1000", "nbd", "i6300esb", "ext4", "erofs", "squashfs"]
        {
            assert!(MODULES.iter().any(|m| m.name == name), "{name}");
        }
        for name in ["nf_tables", "ahci", "nvme", "e1000e", "igb", "r8169", "sp5100_tco"] {
            assert!(MODULES.iter().any(|m| m.name == name), "{name}");
        }
    }

    #[test]
    fn paths_are_relative_ko_files() {
        for m in MODULES {
            assert!(m.path.starts_with("kernel/") && m.path.ends_with(".ko"), "{}", m.path);
        }
    }

    #[test]
    fn a_broken_order_is_named() {
        let table = [m("b", "kernel/b.ko", &["a"], Library), m("a", "kernel/a.ko", &[], Library)];
        assert_eq!(check_order(&table), Err("b needs a, which is not listed before it".to_string()));
        let table = [m("a", "kernel/a.ko", &[], Library), m("a", "kernel/a.ko", &[], Library)];
        assert_eq!(check_order(&table), Err("a is listed twice".to_string()));
    }

    #[test]
    fn finit_module_results() {
        assert_eq!(outcome(Ok(())), Outcome::Loaded);
        assert_eq!(outcome(Err(nix::Error::EEXIST)), Outcome::AlreadyLoaded);
        assert_eq!(outcome(Err(nix::Error::ENOENT)), Outcome::Missing);
        assert!(matches!(outcome(Err(nix::Error::ENODEV)), Outcome::Refused(s) if s.starts_with("ENODEV")));
        assert!(Outcome::AlreadyLoaded.present() && !Outcome::Missing.present());
    }

    fn report(except: &[(&str, Outcome)]) -> Vec<(&'static Module, Outcome)> {
        MODULES
            .iter()
            .map(|m| {
                let o = except.iter().find(|(n, _)| *n == m.name).map_or(Outcome::Loaded, |(_, o)| o.clone());
                (m, o)
            })
            .collect()
    }

    #[test]
    fn a_missing_driver_is_never_required_by_name() {
        let r = report(&[("e1000e", Outcome::Missing), ("i6300esb", Outcome::Refused("ENODEV".into()))]);
        let all = Uses { watchdog: true, filesystem: true, kernel_nbd: true };
        assert_eq!(missing_required(&r, all), Vec::<&str>::new());
    }

    #[test]
    fn what_the_config_uses_decides_what_is_required() {
        let r = report(&[
            ("nf_tables", Outcome::Missing),
            ("watchdog", Outcome::Missing),
            ("ext4", Outcome::Refused("EINVAL".into())),
            ("erofs", Outcome::Missing),
            ("nbd", Outcome::Missing),
        ]);
        assert_eq!(missing_required(&r, Uses::default()), vec!["nf_tables"]);
        let fs_nbdfuse = Uses { watchdog: false, filesystem: true, kernel_nbd: false };
        assert_eq!(missing_required(&r, fs_nbdfuse), vec!["ext4", "nf_tables"]);
        let all = Uses { watchdog: true, filesystem: true, kernel_nbd: true };
        assert_eq!(missing_required(&r, all), vec!["ext4", "nbd", "nf_tables", "watchdog"]);
    }

    #[test]
    fn a_missing_file_is_missing_not_refused() {
        assert_eq!(outcome(load_one(Path::new("/nonexistent/triad-test.ko"))), Outcome::Missing);
    }
}

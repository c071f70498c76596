//! The kernel fragment (board/triad/x86_64/linux.fragment) against what
//! the appliance needs: every module of the supervisor's table
//! (`triad::os::modules::MODULES`) built, the ones it requires by name
//! built as modules, image/build.sh's built-in requirements built in, and
//! the fence's and the hardening options set.
//!
//! The fragment is read as written; what Kconfig makes of it on top of
//! x86_64_defconfig (a `select` forcing a module to `y`) is checked by
//! kernel_merge.py against a kernel source tree (buildroot/README.md).

use std::collections::BTreeMap;

use triad::os::modules::{missing_required, Outcome, Uses, MODULES};

/// How a module of the table is built by this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// By this Kconfig symbol (`CONFIG_` left out): the one whose `obj-$()`
    /// line in Linux 6.1's Makefiles names the module's object.
    Symbol(&'static str),
    /// Deliberately not built, and why (the table's load then logs the
    /// module as not in the image, which is not fatal for a library).
    NotBuilt(&'static str),
}

/// Module name → how it is built. Written by hand against Linux 6.1; a
/// module added to the supervisor's table fails the check until it has a
/// line here.
pub const MODULE_BUILD: &[(&str, Build)] = &[
    ("crc32c_generic", Build::Symbol("CRYPTO_CRC32C")),
    ("libcrc32c", Build::Symbol("LIBCRC32C")),
    ("crc16", Build::Symbol("CRC16")),
    ("crct10dif_common", Build::Symbol("CRYPTO_CRCT10DIF")),
    ("crct10dif_generic", Build::Symbol("CRYPTO_CRCT10DIF")),
    ("crc_t10dif", Build::Symbol("CRC_T10DIF")),
    ("crc64", Build::Symbol("CRC64")),
    ("crc64_rocksoft", Build::Symbol("CRC64_ROCKSOFT")),
    ("t10_pi", Build::Symbol("BLK_DEV_INTEGRITY_T10")),
    ("virtio_ring", Build::Symbol("VIRTIO")),
    ("virtio", Build::Symbol("VIRTIO")),
    ("virtio_pci_modern_dev", Build::Symbol("VIRTIO_PCI_LIB")),
    ("virtio_pci_legacy_dev", Build::Symbol("VIRTIO_PCI_LIB_LEGACY")),
    ("virtio_pci", Build::Symbol("VIRTIO_PCI")),
    ("virtio_blk", Build::Symbol("VIRTIO_BLK")),
    ("failover", Build::Symbol("FAILOVER")),
    ("net_failover", Build::Symbol("NET_FAILOVER")),
    ("virtio_net", Build::Symbol("VIRTIO_NET")),
    ("scsi_common", Build::Symbol("SCSI_COMMON")),
    ("scsi_mod", Build::Symbol("SCSI")),
    ("sd_mod", Build::Symbol("BLK_DEV_SD")),
    ("libata", Build::Symbol("ATA")),
    ("libahci", Build::Symbol("SATA_AHCI")),
    ("ahci", Build::Symbol("SATA_AHCI")),
    ("nvme_core", Build::Symbol("NVME_CORE")),
    ("nvme", Build::Symbol("BLK_DEV_NVME")),
    ("e1000", Build::Symbol("E1000")),
    ("e1000e", Build::Symbol("E1000E")),
    ("dca", Build::NotBuilt("igb uses it only with the I/OAT DMA engine (IGB_DCA), which this kernel does not build")),
    ("i2c_algo_bit", Build::Symbol("I2C_ALGOBIT")),
    ("igb", Build::Symbol("IGB")),
    ("libphy", Build::Symbol("PHYLIB")),
    ("mdio_devres", Build::Symbol("MDIO_DEVRES")),
    ("realtek", Build::Symbol("REALTEK_PHY")),
    ("r8169", Build::Symbol("R8169")),
    ("mbcache", Build::Symbol("FS_MBCACHE")),
    ("jbd2", Build::Symbol("JBD2")),
    ("ext4", Build::Symbol("EXT4_FS")),
    ("erofs", Build::Symbol("EROFS_FS")),
    ("squashfs", Build::Symbol("SQUASHFS")),
    ("nbd", Build::Symbol("BLK_DEV_NBD")),
    ("nfnetlink", Build::Symbol("NETFILTER_NETLINK")),
    ("nf_tables", Build::Symbol("NF_TABLES")),
    ("watchdog", Build::Symbol("WATCHDOG_CORE")),
    ("i6300esb", Build::Symbol("I6300ESB_WDT")),
    ("sp5100_tco", Build::Symbol("SP5100_TCO")),
];

/// Options the fragment must set, beyond the table, with the value and why.
pub const REQUIRED: &[(&str, &str, &str)] = &[
    ("ITCO_WDT", "m", "iTCO_wdt: Intel PCH watchdogs (issue 12)"),
    ("NF_TABLES_NETDEV", "y", "the lease fence's netdev table (os/fence.rs)"),
    ("NETFILTER_INGRESS", "y", "the fence's ingress chain"),
    ("NETFILTER_EGRESS", "y", "the fence's egress chain"),
    ("PACKET", "y", "AF_PACKET: gratuitous ARP, ARP watch"),
    ("IPV6", "y", "an IPv6 VIP"),
    ("EFI_STUB", "y", "UEFI boots the kernel from the ESP"),
    ("EFI_PARTITION", "y", "GPT: the root is found by PARTLABEL"),
    ("CGROUPS", "y", "cgroup2, mounted by the supervisor"),
    ("DEVTMPFS", "y", "/dev"),
    ("STRICT_KERNEL_RWX", "y", "hardening"),
    ("STRICT_MODULE_RWX", "y", "hardening"),
    ("RANDOMIZE_BASE", "y", "hardening"),
    ("STACKPROTECTOR_STRONG", "y", "hardening"),
    ("HARDENED_USERCOPY", "y", "hardening"),
    ("FORTIFY_SOURCE", "y", "hardening"),
    ("SECURITY_LOCKDOWN_LSM", "y", "hardening"),
    ("INIT_ON_ALLOC_DEFAULT_ON", "y", "hardening"),
    ("MODULE_SIG_FORCE", "y", "hardening: modules are used, only signed ones load"),
    ("DEVMEM", "n", "hardening: no /dev/mem"),
    ("PROC_KCORE", "n", "hardening: no /proc/kcore"),
    ("WATCHDOG_NOWAYOUT", "n", "the supervisor disarms the watchdog when it refuses to start (os/watchdog.rs)"),
];

/// The fragment's settings: symbol (without `CONFIG_`) → `y`, `m`, `n`
/// (`# CONFIG_X is not set`) or the value as written.
pub fn parse_fragment(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                out.insert(sym.to_string(), "n".to_string());
            }
        } else if let Some((sym, value)) = line.strip_prefix("CONFIG_").and_then(|l| l.split_once('=')) {
            out.insert(sym.to_string(), value.to_string());
        }
    }
    out
}

/// Every `CONFIG_X` that image/build.sh greps its kernel's config for.
pub fn build_sh_requirements(build_sh: &str) -> Vec<String> {
    let mut syms = Vec::new();
    for (i, _) in build_sh.match_indices("CONFIG_") {
        let sym: String = build_sh[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !sym.is_empty() && !syms.contains(&sym) {
            syms.push(sym);
        }
    }
    syms
}

/// The modules the supervisor refuses to run a config without, asked of
/// its own rule (`missing_required` with every module missing and a
/// config using everything): these must be files it can load.
pub fn required_by_name() -> Vec<&'static str> {
    let all_missing: Vec<_> = MODULES.iter().map(|m| (m, Outcome::Missing)).collect();
    missing_required(&all_missing, Uses { watchdog: true, filesystem: true, kernel_nbd: true })
}

/// Checks the fragment against the table, build.sh and [`REQUIRED`].
pub fn check(fragment: &str, build_sh: &str) -> Result<(), Vec<String>> {
    let frag = parse_fragment(fragment);
    let mut errs = Vec::new();
    let value = |sym: &str| frag.get(sym).map(String::as_str).unwrap_or("(not set)");
    let required = required_by_name();
    for module in MODULES {
        let Some((_, build)) = MODULE_BUILD.iter().find(|(name, _)| *name == module.name) else {
            errs.push(format!(
                "module {} of the supervisor's table has no CONFIG_ symbol in buildroot/check/src/kernel.rs MODULE_BUILD",
                module.name
            ));
            continue;
        };
        let Build::Symbol(sym) = build else { continue };
        let v = value(sym);
        if required.contains(&module.name) {
            if v != "m" {
                errs.push(format!(
                    "linux.fragment: CONFIG_{sym}={v}: module {} is required by name by the supervisor, which loads its file; it must be =m",
                    module.name
                ));
            }
        } else if v != "y" && v != "m" {
            errs.push(format!(
                "linux.fragment: CONFIG_{sym}={v}: module {} of the supervisor's table is not built",
                module.name
            ));
        }
    }
    for (module, _) in MODULE_BUILD {
        if !MODULES.iter().any(|m| m.name == *module) {
            errs.push(format!("MODULE_BUILD maps {module}, which the supervisor's table does not load: remove it"));
        }
    }
    for sym in build_sh_requirements(build_sh) {
        if value(&sym) != "y" {
            errs.push(format!("linux.fragment: CONFIG_{sym}={}: image/build.sh requires it built in", value(&sym)));
        }
    }
    for (sym, want, why) in REQUIRED {
        if value(sym) != *want {
            errs.push(format!("linux.fragment: CONFIG_{sym}={}, must be {want}: {why}", value(sym)));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_lines() {
        let f = parse_fragment("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\n");
        assert_eq!(f.get("A").map(String::as_str), Some("y"));
        assert_eq!(f.get("B").map(String::as_str), Some("n"));
        assert_eq!(f.get("C").map(String::as_str), Some("\"x y\""));
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn build_sh_symbols() {
        let s = "grep -q '^CONFIG_PVH=y' x\nfor opt in CONFIG_DEVTMPFS CONFIG_PACKET; do\n";
        assert_eq!(build_sh_requirements(s), vec!["PVH", "DEVTMPFS", "PACKET"]);
    }

    #[test]
    fn the_supervisor_requires_the_fence_watchdog_ext4_and_nbd() {
        let mut r = required_by_name();
        r.sort_unstable();
        assert_eq!(r, vec!["ext4", "nbd", "nf_tables", "nfnetlink", "watchdog"]);
    }
}

//! Each VM's copy of the appliance disk (`image/out/<variant>/disk.img`,
//! laid out as `image/layout.conf` says) with that node's state partition
//! written in: the same config and certificates [`crate::state`] puts on
//! the direct boot's state disk.
//!
//! Without root or loop devices: the copy is sparse, the state partition's
//! ext4 is made as its own file (`mkfs.ext4 -d`) at the partition's size
//! and written at the partition's offset, both read from the copy's GPT
//! (`sfdisk -d`), never assumed.

use std::path::{Path, PathBuf};

use crate::{output, run, state, HwError};

/// The state partition's GPT name (image/layout.conf).
pub const STATE_PARTITION: &str = "state";

/// One partition of a `sfdisk -d` dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its GPT name.
    pub name: String,
    /// First sector (512 bytes).
    pub start: u64,
    /// Sectors.
    pub size: u64,
}

/// The partitions of `sfdisk -d` output: lines such as
/// `disk.img4 : start=  671744, size=  131072, type=0FC6..., uuid=..., name="state"`.
/// A partition line without start, size or name is an error naming it.
pub fn parse_sfdisk_dump(text: &str) -> Result<Vec<Partition>, String> {
    let mut parts = Vec::new();
    for line in text.lines() {
        let Some((_, fields)) = line.split_once(" : ") else { continue };
        let mut start = None;
        let mut size = None;
        let mut name = None;
        for field in fields.split(',') {
            let Some((k, v)) = field.split_once('=') else { continue };
            let v = v.trim();
            match k.trim() {
                "start" => start = v.parse::<u64>().ok(),
                "size" => size = v.parse::<u64>().ok(),
                "name" => name = Some(v.trim_matches('"').to_string()),
                _ => {}
            }
        }
        match (start, size, name) {
            (Some(start), Some(size), Some(name)) => parts.push(Partition { name, start, size }),
            _ => return Err(format!("partition line without start, size and name: {line:?}")),
        }
    }
    Ok(parts)
}

/// Every node's own disk ([`make_node_disk`]) in `dir`, its state
/// partition holding `config(id)` and the cluster's certificates
/// (`crate::state::make_tree`; `check`: the config checked by `triad`
/// first).
pub fn make_node_disks(
    triad: &Path,
    image: &Path,
    dir: &Path,
    ids: &[u8],
    config: impl Fn(u8) -> String,
    check: bool,
) -> Result<Vec<PathBuf>, HwError> {
    ids.iter()
        .map(|&id| {
            let tree = crate::state::make_tree(triad, dir, id, &config(id), check)?;
            make_node_disk(image, dir, id, &tree)
        })
        .collect()
}

/// Copies `image` to `dir/disk-N.img` and writes node `id`'s state
/// partition (`tree`: from [`state::make_tree`]) into it; returns the copy.
pub fn make_node_disk(image: &Path, dir: &Path, id: u8, tree: &Path) -> Result<PathBuf, HwError> {
    let copy = dir.join(format!("disk-{id}.img"));
    let _ = std::fs::remove_file(&copy);
    run("cp", &[std::ffi::OsStr::new("--sparse=always"), image.as_os_str(), copy.as_os_str()])?;
    let dump = run("sfdisk", &[std::ffi::OsStr::new("-d"), copy.as_os_str()])?;
    let parts = parse_sfdisk_dump(&dump).map_err(|e| HwError::Missing(format!("{}: {e}", copy.display())))?;
    let part = parts.iter().find(|p| p.name == STATE_PARTITION).ok_or_else(|| {
        HwError::Missing(format!("{}: no partition named {STATE_PARTITION:?} in {parts:?}", copy.display()))
    })?;
    // Whole MiB (the layout's unit): the filesystem then fills it exactly.
    if part.start % 2048 != 0 || part.size % 2048 != 0 {
        return Err(HwError::Missing(format!("{}: partition {part:?} is not MiB-aligned", copy.display())));
    }
    let fs = dir.join(format!("state-{id}.ext4"));
    let _ = std::fs::remove_file(&fs);
    state::mkfs(tree, &fs, part.size / 2048)?;
    output(std::process::Command::new("dd").args([
        format!("if={}", fs.display()),
        format!("of={}", copy.display()),
        "bs=1M".into(),
        format!("seek={}", part.start / 2048),
        "conv=notrunc,sparse".into(),
        "status=none".into(),
    ]))?;
    let _ = std::fs::remove_file(&fs);
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfdisk_dumps_are_parsed() {
        let dump = "label: gpt\n\
                    label-id: 2F6B8C3E-1D2A-4B7C-8E9F-0A1B2C3D4E5F\n\
                    device: disk.img\n\
                    unit: sectors\n\
                    first-lba: 2048\n\
                    \n\
                    disk.img1 : start=        2048, size=      131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=A, name=\"esp\"\n\
                    disk.img4 : start=     1181696, size=      131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=B, name=\"state\"\n";
        assert_eq!(
            parse_sfdisk_dump(dump),
            Ok(vec![
                Partition { name: "esp".into(), start: 2048, size: 131072 },
                Partition { name: "state".into(), start: 1181696, size: 131072 },
            ])
        );
    }

    #[test]
    fn a_partition_line_without_its_name_is_named() {
        let e = parse_sfdisk_dump("disk.img1 : start=2048, size=8, type=X\n").unwrap_err();
        assert!(e.contains("disk.img1"), "{e}");
        assert_eq!(parse_sfdisk_dump("label: gpt\n"), Ok(vec![]));
    }
}

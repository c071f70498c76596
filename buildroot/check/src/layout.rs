//! image/layout.conf (the appliance disk's partitions, the one source for
//! image/ and buildroot/) and the checks that hold genimage.cfg, and the
//! disk genimage makes from it, to that file.

use crate::genimage::Section;

/// A partition's size in layout.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// MiB.
    Mib(u64),
    /// What is left of the disk (the last partition only).
    Rest,
}

/// One line of layout.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// PARTLABEL.
    pub label: String,
    /// `esp`, `root` or `linux`.
    pub kind: String,
    /// MiB or the rest.
    pub size: Size,
    /// `uki`, `erofs`, `empty`, `ext4:LABEL`.
    pub content: String,
}

/// The GPT partition type GUID of a layout.conf TYPE (lower case).
pub fn type_guid(kind: &str) -> Option<&'static str> {
    match kind {
        "esp" => Some("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        // Linux root (x86-64), Discoverable Partitions Specification.
        "root" => Some("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        "linux" => Some("0fc63daf-8483-4772-8e79-3d69d8477de4"),
        _ => None,
    }
}

/// Parses layout.conf: `PARTLABEL TYPE SIZE CONTENT` per line, `#` comments.
pub fn parse_layout(text: &str) -> Result<Vec<Part>, Vec<String>> {
    let mut parts = Vec::new();
    let mut errs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            errs.push(format!("layout.conf line {}: expected 4 columns, found {}", n + 1, f.len()));
            continue;
        }
        let size = match f[2] {
            "rest" => Size::Rest,
            s => match s.parse() {
                Ok(m) => Size::Mib(m),
                Err(_) => {
                    errs.push(format!("layout.conf line {}: size {s} is neither MiB nor rest", n + 1));
                    continue;
                }
            },
        };
        parts.push(Part { label: f[0].into(), kind: f[1].into(), size, content: f[3].into() });
    }
    if errs.is_empty() {
        Ok(parts)
    } else {
        Err(errs)
    }
}

/// A genimage size (`64M`, `1G`, `1048576`) in MiB, if it is whole MiB.
pub fn mib(size: &str) -> Option<u64> {
    let (num, mult) = match size.chars().last()? {
        'k' | 'K' => (&size[..size.len() - 1], 1024u64),
        'M' => (&size[..size.len() - 1], 1024 * 1024),
        'G' => (&size[..size.len() - 1], 1024 * 1024 * 1024),
        _ => (size, 1),
    };
    let bytes = num.parse::<u64>().ok()? * mult;
    (bytes % (1024 * 1024) == 0).then_some(bytes / (1024 * 1024))
}

/// Holds genimage.cfg's `image disk.img` to layout.conf: one partition per
/// line, same order, name = PARTLABEL, type GUID, size (the `rest` one
/// last, without a size, with `autoresize`), and content.
pub fn check_genimage(layout: &[Part], images: &[Section]) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let Some(disk) = images.iter().find(|s| s.kind == "image" && s.title.as_deref() == Some("disk.img")) else {
        return Err(vec!["genimage.cfg: no `image disk.img` section".into()]);
    };
    match disk.all("hdimage").next() {
        Some(h) if h.get("partition-table-type") == Some("gpt") => {}
        _ => errs.push("genimage.cfg: disk.img is not an hdimage with partition-table-type = \"gpt\"".into()),
    }
    let parts: Vec<&Section> = disk.all("partition").collect();
    for (i, want) in layout.iter().enumerate() {
        let Some(got) = parts.get(i) else {
            errs.push(format!("genimage.cfg: partition {} ({}) of layout.conf is missing", i + 1, want.label));
            continue;
        };
        let name = got.title.as_deref().unwrap_or("");
        let at = format!("genimage.cfg: partition {} ({name})", i + 1);
        if name != want.label {
            errs.push(format!("{at}: named {name}, layout.conf has {} there", want.label));
        }
        let guid = got.get("partition-type-uuid").map(str::to_ascii_lowercase);
        match type_guid(&want.kind) {
            None => errs.push(format!("layout.conf: {}: unknown type {}", want.label, want.kind)),
            Some(g) if guid.as_deref() != Some(g) => errs.push(format!(
                "{at}: partition-type-uuid {}, layout.conf's type {} is {g}",
                guid.as_deref().unwrap_or("(none)"),
                want.kind
            )),
            Some(_) => {}
        }
        match want.size {
            Size::Mib(m) => match got.get("size").map(|s| (s, mib(s))) {
                Some((_, Some(g))) if g == m => {}
                Some((s, _)) => errs.push(format!("{at}: size {s}, layout.conf has {m} MiB")),
                None => errs.push(format!("{at}: no size, layout.conf has {m} MiB")),
            },
            Size::Rest => {
                if i + 1 != layout.len() {
                    errs.push(format!("layout.conf: {} takes the rest but is not the last partition", want.label));
                }
                if got.get("size").is_some() || got.get("autoresize") != Some("true") {
                    errs.push(format!("{at}: layout.conf gives it the rest of the disk: no size, autoresize = true"));
                }
            }
        }
        check_content(&at, want, got, images, &mut errs);
    }
    for extra in parts.iter().skip(layout.len()) {
        errs.push(format!("genimage.cfg: partition {} is not in layout.conf", extra.title.as_deref().unwrap_or("")));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn check_content(at: &str, want: &Part, got: &Section, images: &[Section], errs: &mut Vec<String>) {
    let image = got.get("image");
    let source = image.and_then(|i| images.iter().find(|s| s.kind == "image" && s.title.as_deref() == Some(i)));
    match (want.content.as_str(), want.content.strip_prefix("ext4:")) {
        ("uki", _) => {
            let boots = source
                .and_then(|s| s.all("vfat").next())
                .is_some_and(|v| v.all("file").any(|f| f.title.as_deref() == Some("EFI/BOOT/BOOTX64.EFI")));
            if !boots {
                errs.push(format!("{at}: layout.conf wants a FAT image holding EFI/BOOT/BOOTX64.EFI"));
            }
        }
        ("erofs", _) if image != Some("rootfs.erofs") => {
            errs.push(format!("{at}: layout.conf wants the erofs root (rootfs.erofs), found {image:?}"))
        }
        ("empty", _) if image.is_some() => errs.push(format!("{at}: layout.conf wants it empty, found {image:?}")),
        (_, Some(label)) => {
            let got_label = source.and_then(|s| s.all("ext4").next()).and_then(|e| e.get("label"));
            if got_label != Some(label) {
                errs.push(format!("{at}: layout.conf wants an ext4 labelled {label}, found {got_label:?}"));
            }
        }
        ("erofs" | "empty", _) => {}
        (other, _) => errs.push(format!("layout.conf: {}: unknown content {other}", want.label)),
    }
}

/// One partition of `sfdisk --json` output on the image genimage made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPart {
    /// PARTLABEL.
    pub name: String,
    /// Type GUID, lower case.
    pub guid: String,
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
}

/// Holds the disk genimage made to layout.conf: same partitions in order,
/// labels, types, sizes; the `rest` partition ends within the last MiB
/// before the backup GPT (`last_lba`, 512-byte sectors).
pub fn check_disk(layout: &[Part], disk: &[DiskPart], last_lba: u64) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    if disk.len() != layout.len() {
        errs.push(format!("disk.img has {} partitions, layout.conf {}", disk.len(), layout.len()));
    }
    for (i, (want, got)) in layout.iter().zip(disk).enumerate() {
        let at = format!("disk.img partition {} ({})", i + 1, got.name);
        if got.name != want.label {
            errs.push(format!("{at}: layout.conf has {} there", want.label));
        }
        if Some(got.guid.as_str()) != type_guid(&want.kind) {
            errs.push(format!("{at}: type {}, layout.conf has {}", got.guid, want.kind));
        }
        if got.start % 2048 != 0 {
            errs.push(format!("{at}: starts at sector {}, not 1 MiB aligned", got.start));
        }
        match want.size {
            Size::Mib(m) if got.sectors != m * 2048 => {
                errs.push(format!("{at}: {} sectors, layout.conf has {m} MiB ({} sectors)", got.sectors, m * 2048))
            }
            Size::Rest if last_lba + 1 - (got.start + got.sectors) >= 2048 => errs.push(format!(
                "{at}: ends at sector {}, not at the end of the disk ({last_lba})",
                got.start + got.sectors
            )),
            _ => {}
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

//! The checks of buildroot/ (buildroot/README.md, "What is checked here"),
//! each run on the tree as it is, which must pass, and on a copy broken on
//! purpose, which must fail naming what is wrong: a check that cannot fail
//! proves nothing. Needs python3 with kconfiglib, genimage, mtools,
//! dosfstools, e2fsprogs, fdisk (sfdisk) and shellcheck: `.ci/setup`
//! installs them, and a missing one fails the test, saying which.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use triad_buildroot_check::{genimage, kernel, layout, read, repo_root};

fn tree() -> PathBuf {
    repo_root().join("buildroot")
}

fn text(rel: &str) -> String {
    read(&repo_root().join(rel)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-br-check-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e} (bash .ci/setup installs it)"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    let o = run(Command::new("cp").arg("-r").arg(from).arg(to));
    assert!(o.status.success(), "cp: {}", stderr(&o));
}

fn edit(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).expect("read");
    assert!(s.contains(from), "{} has no `{from}` to break", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).expect("write");
}

// --- a. Kconfig: kconfiglib against the stub of Buildroot's symbols ---

fn kconfig_check(tree: &Path) -> Output {
    run(Command::new("python3").arg(repo_root().join("buildroot/check/kconfig_check.py")).arg(tree))
}

#[test]
fn kconfig_files_and_defconfig_pass_kconfiglib() {
    let o = kconfig_check(&tree());
    assert!(o.status.success(), "kconfig_check.py failed:\n{}", stderr(&o));
}

#[test]
fn kconfig_check_names_a_misspelled_symbol() {
    let dir = scratch("kconfig-typo");
    copy_tree(&tree(), &dir.join("t"));
    edit(
        &dir.join("t/package/triad/Config.in"),
        "depends on BR2_TOOLCHAIN_USES_GLIBC\n",
        "depends on BR2_TOOLCHAIN_USES_GLIBCC\n",
    );
    let o = kconfig_check(&dir.join("t"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("undefined symbol BR2_TOOLCHAIN_USES_GLIBCC"), "{}", stderr(&o));
}

#[test]
fn kconfig_check_names_an_option_dropped_by_an_unmet_dependency() {
    let dir = scratch("kconfig-dropped");
    copy_tree(&tree(), &dir.join("t"));
    edit(&dir.join("t/configs/triad_x86_64_defconfig"), "BR2_INIT_NONE=y\n", "");
    let o = kconfig_check(&dir.join("t"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("BR2_PACKAGE_TRIAD=y is not kept"), "{}", stderr(&o));
}

#[test]
fn kconfig_check_names_a_syntax_error() {
    let dir = scratch("kconfig-syntax");
    copy_tree(&tree(), &dir.join("t"));
    edit(&dir.join("t/package/kamailio/Config.in"), "\tbool \"kamailio\"", "\tbool \"kamailio");
    let o = kconfig_check(&dir.join("t"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("package/kamailio/Config.in:5"), "{}", stderr(&o));
}

// --- b. The kernel fragment: the module table, build.sh, the rest ---

const FRAGMENT: &str = "buildroot/board/triad/x86_64/linux.fragment";

#[test]
fn the_kernel_fragment_builds_what_the_supervisor_and_build_sh_need() {
    if let Err(errs) = kernel::check(&text(FRAGMENT), &text("image/build.sh")) {
        panic!("{}", errs.join("\n"));
    }
}

#[test]
fn a_required_module_built_in_is_refused_by_name() {
    let frag = text(FRAGMENT).replace("CONFIG_NF_TABLES=m", "CONFIG_NF_TABLES=y");
    let errs = kernel::check(&frag, &text("image/build.sh")).expect_err("nf_tables=y must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("CONFIG_NF_TABLES=y: module nf_tables is required by name"), "{errs:?}");
}

#[test]
fn a_table_module_left_out_of_the_fragment_is_named() {
    let frag = text(FRAGMENT).replace("CONFIG_I6300ESB_WDT=m\n", "");
    let errs = kernel::check(&frag, &text("image/build.sh")).expect_err("no i6300esb must fail");
    assert!(errs.iter().any(|e| e.contains("CONFIG_I6300ESB_WDT=(not set): module i6300esb")), "{errs:?}");
}

#[test]
fn a_build_sh_requirement_not_built_in_is_named() {
    let build_sh = format!("{}\ngrep -q '^CONFIG_TRIAD_TEST_ONLY=y' config\n", text("image/build.sh"));
    let errs = kernel::check(&text(FRAGMENT), &build_sh).expect_err("an unmet build.sh requirement must fail");
    assert_eq!(errs, vec!["linux.fragment: CONFIG_TRIAD_TEST_ONLY=(not set): image/build.sh requires it built in"]);
    let frag = text(FRAGMENT).replace("CONFIG_PVH=y", "CONFIG_PVH=m");
    let errs = kernel::check(&frag, &text("image/build.sh")).expect_err("PVH=m must fail");
    assert!(errs.iter().any(|e| e.contains("CONFIG_PVH=m: image/build.sh requires it built in")), "{errs:?}");
}

#[test]
fn a_hardening_option_removed_is_named() {
    let frag = text(FRAGMENT).replace("# CONFIG_DEVMEM is not set\n", "CONFIG_DEVMEM=y\n");
    let errs = kernel::check(&frag, &text("image/build.sh")).expect_err("DEVMEM=y must fail");
    assert!(errs.iter().any(|e| e.contains("CONFIG_DEVMEM=y, must be n")), "{errs:?}");
}

#[test]
fn every_module_of_the_table_has_a_mapping_and_no_mapping_is_stale() {
    // The check itself names an unmapped module; here the mapping is held
    // to the table in both directions, so a module added to modules.rs
    // fails this test until kernel.rs (and the fragment) know it.
    for m in triad::os::modules::MODULES {
        assert!(kernel::MODULE_BUILD.iter().any(|(n, _)| *n == m.name), "{} has no mapping", m.name);
    }
    assert_eq!(kernel::MODULE_BUILD.len(), triad::os::modules::MODULES.len());
}

// --- c. The partition layout: genimage.cfg and the disk it makes ---

const GENIMAGE: &str = "buildroot/board/triad/x86_64/genimage.cfg";

fn layout_conf() -> Vec<layout::Part> {
    layout::parse_layout(&text("image/layout.conf")).unwrap_or_else(|e| panic!("{e:?}"))
}

fn check_cfg(cfg: &str) -> Result<(), Vec<String>> {
    let images = genimage::parse(cfg).unwrap_or_else(|e| panic!("genimage.cfg: {e}"));
    layout::check_genimage(&layout_conf(), &images)
}

#[test]
fn genimage_cfg_matches_layout_conf() {
    if let Err(errs) = check_cfg(&text(GENIMAGE)) {
        panic!("{}", errs.join("\n"));
    }
}

#[test]
fn genimage_cfg_with_a_wrong_size_type_label_or_order_is_named() {
    let cfg = text(GENIMAGE);
    let root_a = "partition root-a {";
    let err = |cfg: String| check_cfg(&cfg).expect_err("must fail").join("\n");
    let e = err(cfg.replacen("size = 256M", "size = 255M", 1));
    assert!(e.contains("partition 2 (root-a): size 255M, layout.conf has 256 MiB"), "{e}");
    let e = err(cfg.replacen("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "0fc63daf-8483-4772-8e79-3d69d8477de4", 1));
    assert!(e.contains("partition 2 (root-a): partition-type-uuid 0fc63daf"), "{e}");
    let e = err(cfg.replacen(root_a, "partition rootA {", 1));
    assert!(e.contains("named rootA, layout.conf has root-a there"), "{e}");
    let e = err(cfg.replacen("autoresize = true", "size = 64M", 1));
    assert!(e.contains("partition 5 (data): layout.conf gives it the rest of the disk"), "{e}");
    let e = err(cfg.replacen("label = \"triad-state\"", "label = \"state\"", 1));
    assert!(e.contains("wants an ext4 labelled triad-state"), "{e}");
    // root-a and root-b swapped: same sizes and types, root-b now carries
    // the erofs image and root-a none.
    let swapped = cfg.replacen(root_a, "partition TMP {", 1).replacen("partition root-b {", root_a, 1).replacen(
        "partition TMP {",
        "partition root-b {",
        1,
    );
    let e = err(swapped);
    assert!(e.contains("partition 2 (root-b): named root-b, layout.conf has root-a there"), "{e}");
}

/// `sfdisk --json` of a disk image: its partitions and last usable LBA.
fn sfdisk(img: &Path) -> (Vec<layout::DiskPart>, u64) {
    let o = run(Command::new("sfdisk").arg("--json").arg(img));
    assert!(o.status.success(), "sfdisk: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("sfdisk json");
    let t = &v["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["sectorsize"], 512);
    let parts = t["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| layout::DiskPart {
            name: p["name"].as_str().unwrap_or("").into(),
            guid: p["type"].as_str().unwrap_or("").to_ascii_lowercase(),
            start: p["start"].as_u64().unwrap_or(0),
            sectors: p["size"].as_u64().unwrap_or(0),
        })
        .collect();
    (parts, t["lastlba"].as_u64().expect("lastlba"))
}

#[test]
fn genimage_makes_a_disk_with_layout_conf_s_partitions() {
    let dir = scratch("genimage");
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("root")).expect("mkdir");
    // Stand-ins for Buildroot's kernel and root filesystem images.
    std::fs::write(input.join("bzImage"), vec![0x4d; 100_000]).expect("bzImage");
    std::fs::write(input.join("rootfs.erofs"), vec![0xe2; 1_000_000]).expect("rootfs.erofs");
    let o = run(Command::new("genimage")
        .arg("--config")
        .arg(repo_root().join(GENIMAGE))
        .arg("--rootpath")
        .arg(input.join("root"))
        .arg("--tmppath")
        .arg(dir.join("tmp"))
        .arg("--inputpath")
        .arg(&input)
        .arg("--outputpath")
        .arg(&input));
    assert!(o.status.success(), "genimage failed:\n{}", stderr(&o));
    let (parts, last_lba) = sfdisk(&input.join("disk.img"));
    if let Err(errs) = layout::check_disk(&layout_conf(), &parts, last_lba) {
        panic!("{}", errs.join("\n"));
    }
    // The same disk against a layout.conf that differs must fail.
    let other = text("image/layout.conf").replace("state    linux  64", "state    linux  32");
    let other = layout::parse_layout(&other).expect("layout");
    let errs = layout::check_disk(&other, &parts, last_lba).expect_err("must fail");
    assert_eq!(errs, vec!["disk.img partition 4 (state): 131072 sectors, layout.conf has 32 MiB (65536 sectors)"]);
    let _ = std::fs::remove_dir_all(&dir);
}

// --- d. Shell scripts: bash -n and shellcheck ---

fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            shell_scripts(&p, out);
        } else if p.extension().is_some_and(|e| e == "sh") {
            out.push(p);
        }
    }
}

fn script_problems(script: &Path) -> Vec<String> {
    let mut errs = Vec::new();
    let o = run(Command::new("bash").arg("-n").arg(script));
    if !o.status.success() {
        errs.push(format!("bash -n {}: {}", script.display(), stderr(&o)));
    }
    let o = run(Command::new("shellcheck").arg("--shell=bash").arg(script));
    if !o.status.success() {
        errs.push(format!("shellcheck {}:\n{}", script.display(), String::from_utf8_lossy(&o.stdout)));
    }
    errs
}

#[test]
fn board_scripts_pass_bash_n_and_shellcheck() {
    let mut scripts = Vec::new();
    shell_scripts(&tree(), &mut scripts);
    assert!(scripts.len() >= 2, "no post-build.sh/post-image.sh found: {scripts:?}");
    let errs: Vec<String> = scripts.iter().flat_map(|s| script_problems(s)).collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn a_broken_script_fails_bash_n_and_shellcheck() {
    let dir = scratch("scripts");
    let syntax = dir.join("syntax.sh");
    std::fs::write(&syntax, "#!/usr/bin/env bash\nif true; then\n").expect("write");
    let errs = script_problems(&syntax);
    assert!(errs.iter().any(|e| e.starts_with("bash -n")), "{errs:?}");
    let unquoted = dir.join("unquoted.sh");
    std::fs::write(&unquoted, "#!/usr/bin/env bash\nrm -rf $1/out\n").expect("write");
    let errs = script_problems(&unquoted);
    assert!(errs.len() == 1 && errs[0].contains("SC2086"), "{errs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! The power-cuttable disk (`src/powercut.rs`) loses what was not flushed
//! and keeps what was: a real NBD client (the lab's, over the socket)
//! writes A and flushes it, writes B and C without a flush (B over a
//! block A's flush made durable, C elsewhere), and nbdkit is killed with
//! SIGKILL while the client is still connected (a client that closes
//! first could flush on its way out, as `qemu-io` does at exit). A new
//! nbdkit over the same image serves A, and neither B nor C; the image
//! file itself says the same.
//!
//! No VM and no root needed:
//!
//! ```text
//! cargo test -p triad-hwtests --test powercut_disk -- --nocapture
//! ```

use std::os::unix::fs::FileExt;
use std::path::Path;

use triad_hwtests::powercut::PowerCutDisk;
use triad_lab::bench_volume::NbdClient;

const SIZE: u64 = 16 << 20;
const BLOCK: usize = 4096;

fn block(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK]
}

fn in_file(image: &Path, offset: u64) -> Vec<u8> {
    let f = std::fs::File::open(image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let mut b = vec![0u8; BLOCK];
    f.read_exact_at(&mut b, offset).unwrap_or_else(|e| panic!("read the image: {e}"));
    b
}

#[test]
fn a_cut_loses_the_unflushed_writes_and_keeps_the_flushed_ones() {
    let dir = std::env::temp_dir().join(format!("triad-powercut-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let image = dir.join("disk.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(SIZE)).unwrap_or_else(|e| panic!("image: {e}"));
    let (a_at, c_at) = (0u64, 1u64 << 20);

    let mut disk = PowerCutDisk::start(&image, &dir, "disk").unwrap_or_else(|e| panic!("{e}"));
    let mut c = NbdClient::connect(&disk.uri()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.size(), SIZE);
    c.write(a_at, &block(0xaa)).unwrap_or_else(|e| panic!("{e}"));
    c.flush().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(in_file(&image, a_at), block(0xaa), "a flushed write is not in the image file");
    c.write(a_at, &block(0xbb)).unwrap_or_else(|e| panic!("{e}"));
    c.write(c_at, &block(0xcc)).unwrap_or_else(|e| panic!("{e}"));
    // The server has them: it serves them back before the cut.
    assert_eq!(c.read(a_at, BLOCK as u32).unwrap_or_else(|e| panic!("{e}")), block(0xbb));
    assert_eq!(c.read(c_at, BLOCK as u32).unwrap_or_else(|e| panic!("{e}")), block(0xcc));
    // ...but only in its cache, not in the image.
    assert_eq!(in_file(&image, a_at), block(0xaa), "an unflushed write reached the image before any cut");
    assert_eq!(in_file(&image, c_at), block(0), "an unflushed write reached the image before any cut");

    disk.cut();
    drop(c);

    let disk = PowerCutDisk::start(&image, &dir, "disk").unwrap_or_else(|e| panic!("{e}"));
    let mut c = NbdClient::connect(&disk.uri()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.read(a_at, BLOCK as u32).unwrap_or_else(|e| panic!("{e}")), block(0xaa), "flushed A lost in the cut");
    assert_eq!(c.read(c_at, BLOCK as u32).unwrap_or_else(|e| panic!("{e}")), block(0), "unflushed C survived the cut");
    assert_eq!(in_file(&image, a_at), block(0xaa));
    assert_eq!(in_file(&image, c_at), block(0));
    c.disconnect();
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}

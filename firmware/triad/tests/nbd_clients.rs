//! The NBD server against clients we did not write: nbdinfo and nbdcopy
//! (libnbd-bin), qemu-io (qemu-utils), fio's nbd engine (fio), plus raw
//! hostile clients. Each test runs a server in-process (own thread, own
//! current-thread runtime) on a temporary unix socket with a FileDevice.
//!
//! Nothing is skipped: a missing client binary fails the test with the
//! Debian package to install (`.ci/setup` installs them all).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use triad::nbd::proto::{InfoRequest, OptionHeader, CMD_FLAG_FUA, OPT_GO, REP_ACK, SIMPLE_REPLY_MAGIC};
use triad::nbd::request::{Cmd, RequestHeader};
use triad::nbd::{Activity, FileDevice, NbdServer};

const MIB: u64 = 1 << 20;

/// Fails (never skips) when a client is missing, naming its package.
fn need(bin: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false);
    assert!(found, "`{bin}` not found: install the Debian package `{package}` (.ci/setup does)");
}

struct Server {
    dir: PathBuf,
    sock: PathBuf,
    file: PathBuf,
    activity: Activity,
}

impl Server {
    fn start(tag: &str, size: u64, active: bool) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("triad-nbd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("nbd.sock");
        let file = dir.join("volume.img");
        let device = FileDevice::create(&file, size).expect("backing file");
        let activity = Activity::new(active);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, a) = (sock.clone(), activity.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = triad::nbd::server::bind_unix(&s).expect("bind");
                let _ = ready_tx.send(());
                let server = NbdServer::new("volume", device, a);
                if let Err(e) = server.serve_listener(listener).await {
                    eprintln!("nbd server stopped: {e}");
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("server ready");
        Self { dir, sock, file, activity }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}", text(o));
}

fn file_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open backing file");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read backing file");
    buf
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- a raw client for hostile and pipelining tests -------------------

fn read_n(s: &mut UnixStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Connects and negotiates with NBD_OPT_GO; returns the transmission socket.
fn connect_go(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let g = read_n(&mut s, 18).expect("greeting");
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).expect("client flags");
    let data = InfoRequest { name: String::new(), infos: vec![] }.encode();
    s.write_all(&OptionHeader { option: OPT_GO, len: data.len() as u32 }.encode()).expect("opt");
    s.write_all(&data).expect("opt data");
    loop {
        let h = read_n(&mut s, 20).expect("option reply");
        let (ty, len) = (be32(&h, 12), be32(&h, 16) as usize);
        read_n(&mut s, len).expect("option reply data");
        if ty == REP_ACK {
            return s;
        }
        assert!(ty < 1 << 31, "GO refused with {ty:#x}");
    }
}

fn send(s: &mut UnixStream, cmd: Cmd, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
    s.write_all(&RequestHeader { flags, kind: cmd.to_wire(), cookie, offset, len }.encode()).expect("request");
    s.write_all(payload).expect("payload");
}

/// Reads one simple reply: (error, cookie). Data of reads is read by the caller.
fn reply(s: &mut UnixStream) -> std::io::Result<(u32, u64)> {
    let h = read_n(s, 16)?;
    assert_eq!(be32(&h, 0), SIMPLE_REPLY_MAGIC);
    Ok((be32(&h, 4), u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"))))
}

/// True once the server has closed the connection.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// A good client working in a loop: write a block, read it back.
fn good_client_round(s: &mut UnixStream, i: u64) {
    let data = random_bytes(4096, i + 1);
    let off = (i % 64) * 4096;
    send(s, Cmd::Write, 0, i * 2, off, 4096, &data);
    assert_eq!(reply(s).expect("write reply"), (0, i * 2));
    send(s, Cmd::Read, 0, i * 2 + 1, off, 4096, &[]);
    assert_eq!(reply(s).expect("read reply"), (0, i * 2 + 1));
    assert_eq!(read_n(s, 4096).expect("read data"), data);
}

// ---- tests ------------------------------------------------------------

#[test]
fn nbdinfo_shows_size_flags_and_block_sizes() {
    need("nbdinfo", "libnbd-bin");
    let srv = Server::start("info", 64 * MIB, true);
    let o = run(Command::new("nbdinfo").args(["--json", "--no-content", &srv.uri()]));
    assert_ok(&o, "nbdinfo");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("nbdinfo json");
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 64 * MIB, "{v}");
    for (k, want) in
        [("can_flush", true), ("can_fua", true), ("can_trim", true), ("can_zero", true), ("is_read_only", false)]
    {
        assert_eq!(e[k], want, "{k} in {v}");
    }
    assert_eq!(e["block_size_minimum"], 4096, "{v}");
    assert_eq!(e["block_size_preferred"], 4096, "{v}");
    assert_eq!(e["block_size_maximum"], 32 * MIB, "{v}");
    // NBD_OPT_LIST.
    let o = run(Command::new("nbdinfo").args(["--list", "--json", &srv.uri()]));
    assert_ok(&o, "nbdinfo --list");
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"volume\""), "{}", text(&o));
}

#[test]
fn qemu_io_write_fua_flush_discard_zero_verify() {
    need("qemu-io", "qemu-utils");
    let srv = Server::start("qemu", 64 * MIB, true);
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-t",
        "none",
        &srv.uri(),
        "-c",
        "write -P 0x5a 0 1M",
        "-c",
        "write -f -P 0x66 1M 64k",
        "-c",
        "flush",
        "-c",
        "read -P 0x5a 0 1M",
        "-c",
        "read -P 0x66 1M 64k",
        "-c",
        "write -P 0x77 2M 1M",
        "-c",
        "discard 2M 1M",
        "-c",
        "write -P 0x11 3M 1M",
        "-c",
        "write -z 3M 512k",
        "-c",
        "read -P 0 3M 512k",
        "-c",
        "read -P 0x11 3584k 512k",
        "-c",
        // Unaligned for our 4 KiB minimum block: qemu must read-modify-write.
        "write -P 0x33 4097 100",
        "-c",
        "read -P 0x33 4097 100",
    ]));
    assert_ok(&o, "qemu-io");
    let out = text(&o);
    assert!(!out.contains("failed") && !out.contains("error"), "qemu-io reported a failure: {out}");
    // Default cache mode (writethrough) sends FUA on every write.
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &srv.uri(),
        "-c",
        "write -P 0x44 8M 256k",
        "-c",
        "read -P 0x44 8M 256k",
    ]));
    assert_ok(&o, "qemu-io writethrough");
    // The data is really in the backing file.
    assert_eq!(file_range(&srv.file, 0, 4096), vec![0x5a; 4096]);
    assert_eq!(file_range(&srv.file, MIB, 4096), vec![0x66; 4096]);
    assert_eq!(file_range(&srv.file, 3 * MIB, 4096), vec![0; 4096]);
    assert_eq!(file_range(&srv.file, 8 * MIB, 4096), vec![0x44; 4096]);
    let around = file_range(&srv.file, 4096, 4096);
    assert_eq!(&around[1..101], &[0x33; 100][..]);
    assert_eq!(around[0], 0x5a);
}

#[test]
fn nbdcopy_in_and_out() {
    need("nbdcopy", "libnbd-bin");
    let srv = Server::start("copy", 16 * MIB, true);
    let src = srv.dir.join("src.img");
    let dst = srv.dir.join("dst.img");
    let data = random_bytes(16 * MIB as usize, 42);
    std::fs::write(&src, &data).expect("source file");
    let o = run(Command::new("nbdcopy").args(["-S", "0", "--no-extents", "--flush"]).arg(&src).arg(srv.uri()));
    assert_ok(&o, "nbdcopy in");
    let o = run(Command::new("nbdcopy").arg(srv.uri()).arg(&dst));
    assert_ok(&o, "nbdcopy out");
    let back = std::fs::read(&dst).expect("copied file");
    assert!(back == data, "data copied out differs from data copied in");
    assert!(std::fs::read(&srv.file).expect("backing") == data, "backing file differs");
}

#[test]
fn fio_randwrite_verify_qd16() {
    need("fio", "fio");
    let srv = Server::start("fio", 64 * MIB, true);
    // fio writes a verify-state file into its working directory: keep it
    // in the server's temporary directory.
    let o = run(Command::new("fio").current_dir(&srv.dir).args([
        "--name=randwrite-verify",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
        "--fsync=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--output-format=json",
    ]));
    assert_ok(&o, "fio");
    // fio may print notes before its JSON.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let json = stdout.find('{').map_or("", |i| &stdout[i..]);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("fio json: {e}: {}", text(&o)));
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{}", text(&o));
    assert_eq!(job["write"]["io_bytes"], 16 * MIB, "{}", text(&o));
    assert_eq!(job["read"]["io_bytes"], 16 * MIB, "verify read back everything: {}", text(&o));
}

#[test]
fn pipelined_requests_all_answered() {
    let srv = Server::start("pipe", 16 * MIB, true);
    let mut s = connect_go(&srv.sock);
    let blocks = 128u64;
    // Send everything before reading any reply.
    let mut writer = s.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        for i in 0..blocks {
            let flags = if i % 7 == 0 { CMD_FLAG_FUA } else { 0 };
            send(&mut writer, Cmd::Write, flags, i, i * 4096, 4096, &random_bytes(4096, i + 100));
        }
        send(&mut writer, Cmd::Flush, 0, 1000, 0, 0, &[]);
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..=blocks {
        let (err, cookie) = reply(&mut s).expect("reply");
        assert_eq!(err, 0, "cookie {cookie}");
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
    }
    sender.join().expect("sender");
    assert_eq!(seen.len() as u64, blocks + 1);
    for i in 0..blocks {
        send(&mut s, Cmd::Read, 0, 5000 + i, i * 4096, 4096, &[]);
    }
    for _ in 0..blocks {
        let (err, cookie) = reply(&mut s).expect("read reply");
        assert_eq!(err, 0);
        let i = cookie - 5000;
        assert_eq!(read_n(&mut s, 4096).expect("data"), random_bytes(4096, i + 100), "block {i}");
    }
    send(&mut s, Cmd::Disc, 0, 9, 0, 0, &[]);
    assert!(closed(&mut s), "DISC closes the connection");
}

#[test]
fn hostile_clients_get_errors_or_closed_while_good_client_works() {
    let srv = Server::start("hostile", 16 * MIB, true);
    let size = 16 * MIB;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sock, stop2) = (srv.sock.clone(), stop.clone());
    let good = std::thread::spawn(move || {
        let mut s = connect_go(&sock);
        let mut i = 0;
        while !stop2.load(Ordering::SeqCst) || i < 20 {
            good_client_round(&mut s, i);
            i += 1;
        }
        i
    });

    // Well-framed bad requests: error replies, connection stays usable.
    let mut s = connect_go(&srv.sock);
    let einval = 22;
    send(&mut s, Cmd::Read, 0, 1, size, 4096, &[]);
    assert_eq!(reply(&mut s).expect("beyond end"), (einval, 1));
    send(&mut s, Cmd::Write, 0, 2, size - 4096, 8192, &[0u8; 8192]);
    assert_eq!(reply(&mut s).expect("write beyond end"), (28, 2));
    send(&mut s, Cmd::Read, 0, 3, 512, 4096, &[]);
    assert_eq!(reply(&mut s).expect("misaligned"), (einval, 3));
    send(&mut s, Cmd::Write, 0, 4, 0, 100, &[7u8; 100]);
    assert_eq!(reply(&mut s).expect("misaligned write"), (einval, 4));
    s.write_all(&RequestHeader { flags: 0, kind: 77, cookie: 5, offset: 0, len: 0 }.encode()).expect("unknown");
    assert_eq!(reply(&mut s).expect("unknown command"), (einval, 5));
    send(&mut s, Cmd::Read, 0x8000, 6, 0, 4096, &[]);
    assert_eq!(reply(&mut s).expect("unknown flag"), (einval, 6));
    send(&mut s, Cmd::Read, 0, 7, 0, 64 * MIB as u32, &[]);
    assert_eq!(reply(&mut s).expect("oversized read"), (einval, 7));
    send(&mut s, Cmd::Read, 0, 8, u64::MAX - 4095, 8192, &[]);
    assert_eq!(reply(&mut s).expect("overflowing range"), (einval, 8));
    good_client_round(&mut s, 999);

    // Stream-breaking garbage: the server closes.
    let mut s = connect_go(&srv.sock);
    s.write_all(b"GARBAGE GARBAGE GARBAGE GARBAGE!").expect("garbage");
    assert!(closed(&mut s), "bad magic closes");
    let mut s = connect_go(&srv.sock);
    send(&mut s, Cmd::Write, 0, 1, 0, 64 * MIB as u32, &[]);
    assert!(closed(&mut s), "oversized write payload closes");
    let mut s = connect_go(&srv.sock);
    s.write_all(&RequestHeader { flags: 0, kind: 0, cookie: 1, offset: 0, len: 4096 }.encode()[..13]).expect("half");
    drop(s); // truncated request, then gone
    let mut s = UnixStream::connect(&srv.sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    read_n(&mut s, 18).expect("greeting");
    s.write_all(&0xffff_ffffu32.to_be_bytes()).expect("bad client flags");
    assert!(closed(&mut s), "unknown client flags close");
    let mut s = UnixStream::connect(&srv.sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    read_n(&mut s, 18).expect("greeting");
    s.write_all(&[0, 0, 0, 3]).expect("flags");
    s.write_all(&random_bytes(64, 7)).expect("option garbage");
    assert!(closed(&mut s), "option garbage closes");
    // A client that floods requests and never reads replies only stalls
    // itself (its budget runs out); it must not hurt the others.
    let mut flood = connect_go(&srv.sock);
    flood.set_write_timeout(Some(Duration::from_secs(2))).expect("timeout");
    for i in 0..2000 {
        let hdr = RequestHeader { flags: 0, kind: 0, cookie: i, offset: 0, len: MIB as u32 }.encode();
        if flood.write_all(&hdr).is_err() {
            break;
        }
    }

    stop.store(true, Ordering::SeqCst);
    let rounds = good.join().expect("good client");
    assert!(rounds >= 20, "good client did {rounds} rounds");
    // And a fresh client is still served.
    let mut s = connect_go(&srv.sock);
    good_client_round(&mut s, 5);
    drop(flood);
}

#[test]
fn not_active_node_refuses_with_message_then_serves_when_active() {
    need("nbdinfo", "libnbd-bin");
    need("qemu-io", "qemu-utils");
    let srv = Server::start("standby", 16 * MIB, false);
    // libnbd 1.14 prints the server's error string only in its debug
    // output; qemu prints it always.
    let o = run(Command::new("nbdinfo").env("LIBNBD_DEBUG", "1").args(["--no-content", &srv.uri()]));
    assert!(!o.status.success(), "nbdinfo connected to a standby: {}", text(&o));
    assert!(text(&o).contains("this node is not active; connect to the VIP"), "{}", text(&o));
    let o = run(Command::new("qemu-io").args(["-f", "raw", &srv.uri(), "-c", "read 0 4k"]));
    assert!(!o.status.success(), "qemu-io connected to a standby: {}", text(&o));
    assert!(text(&o).contains("this node is not active; connect to the VIP"), "{}", text(&o));

    srv.activity.set_active(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(Command::new("nbdinfo").args(["--size", &srv.uri()]));
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), (16 * MIB).to_string());
            break;
        }
        assert!(Instant::now() < deadline, "never served after activation: {}", text(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stepping down mid-connection closes the connection: the client
    // learns at once to reconnect (to the new active node), instead of
    // getting errors on a socket that will never serve again.
    let mut s = connect_go(&srv.sock);
    send(&mut s, Cmd::Read, 0, 1, 0, 4096, &[]);
    assert_eq!(reply(&mut s).expect("read while active"), (0, 1));
    let mut data = [0u8; 4096];
    s.read_exact(&mut data).expect("read data");
    srv.activity.set_active(false);
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0)), "the server must close the connection at a step-down");
}

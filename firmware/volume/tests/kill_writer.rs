//! A real `FileDisk` journal survives SIGKILL of its writer at random
//! moments.
//!
//! The test binary re-runs itself as the writer (env `TRIAD_VOLUME_WRITER`
//! = journal path): it opens the journal, appends records in a new epoch
//! with payloads derived from (epoch, seq), syncs every few records and
//! prints each durable seq on stdout. The parent reads a random number of
//! those lines, SIGKILLs the child mid-stream, reads what else was
//! reported, reopens the journal and checks that every reported record is
//! there (or compacted away) and every recovered record is intact.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use triad_volume::journal::HEADER_SLOT_LEN;
use triad_volume::{FileDisk, Journal, JournalError};

const ENV: &str = "TRIAD_VOLUME_WRITER";

fn payload(epoch: u64, seq: u64) -> Vec<u8> {
    let len = ((seq * 131 + epoch * 17) % 1500) as usize;
    (0..len).map(|i| (seq ^ epoch.rotate_left(8) ^ i as u64) as u8).collect()
}

/// The writer side; runs forever until killed.
fn writer(path: &Path) {
    let disk = FileDisk::open(path).expect("open journal file");
    let mut j = Journal::open(disk).expect("open journal");
    let epoch = j.last().epoch + 1;
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    loop {
        let seq = j.last().seq + 1;
        match j.append_next(epoch, seq * 4096, &payload(epoch, seq)) {
            Ok(_) => {}
            Err(JournalError::Full { .. }) => {
                // Compact: keep a few synced records, drop the rest.
                let d = j.sync().expect("sync");
                j.discard_through(d.seq.saturating_sub(3)).expect("discard");
                continue;
            }
            Err(e) => panic!("append: {e}"),
        }
        n += 1;
        if n.is_multiple_of(4) {
            let d = j.sync().expect("sync");
            writeln!(out, "{}", d.seq).expect("report");
            out.flush().expect("flush");
        }
    }
}

#[test]
fn writer_child() {
    // Only does something when spawned by `killed_writer_never_loses_synced_records`.
    if let Some(path) = std::env::var_os(ENV) {
        writer(Path::new(&path));
    }
}

#[test]
fn killed_writer_never_loses_synced_records() {
    let path: PathBuf = std::env::temp_dir().join(format!("triad-volume-kill-{}.journal", std::process::id()));
    let ring = 256 * 1024;
    let disk = FileDisk::create(&path, 2 * HEADER_SLOT_LEN + ring).unwrap();
    drop(Journal::format(disk).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rounds = 25;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut reported = 0u64;
        let wait_for = 1 + next() % 60;
        // The libtest harness prints its own lines first: skip non-numbers.
        let mut seen = 0;
        while seen < wait_for {
            let Some(Ok(line)) = lines.next() else { break };
            if let Ok(seq) = line.trim().parse::<u64>() {
                reported = reported.max(seq);
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL, at whatever the writer was doing
                               // Lines already in the pipe were synced before the kill: count them.
        for line in lines.map_while(Result::ok) {
            if let Ok(seq) = line.trim().parse::<u64>() {
                reported = reported.max(seq);
            }
        }
        child.wait().unwrap();
        assert!(reported > 0, "round {round}: the writer reported nothing");

        let j = Journal::open(FileDisk::open(&path).unwrap()).unwrap();
        assert!(j.last().seq >= reported, "round {round}: last {:?} < reported {reported}", j.last());
        let mut prev = j.discarded();
        for r in j.iter_from(0) {
            let r = r.unwrap();
            assert_eq!(r.prev, prev, "round {round}: chain");
            assert_eq!(r.payload, payload(r.epoch, r.seq), "round {round}: torn record {}", r.seq);
            prev = r.position();
        }
    }
    let j = Journal::open(FileDisk::open(&path).unwrap()).unwrap();
    // Several laps of the ring: compaction and wrap-around were exercised.
    assert!(j.discarded().seq > 0 && j.last().epoch >= rounds, "{:?}", j.last());
    eprintln!("after {rounds} kills: last {:?}, discarded {:?}", j.last(), j.discarded());
    std::fs::remove_file(&path).unwrap();
}

//! Fuzz target: the replication messages a peer's data link delivers.
//!
//! Input: a byte stream as it arrives on the data link (frames of
//! `len | version | postcard(triad_repl::Msg)`). Every frame that decodes is
//! handed, in order, to a follower replica of node 1's epoch-1 leadership
//! and to that leader itself, over in-memory disks, with a journal sync and
//! a tick after each, as the supervisor's volume thread does.
//!
//! Checked, beyond "never panics": no message makes a replica fail its own
//! storage (bad input changes nothing, DESIGN invariant 5), and the
//! leader's acknowledged write is still readable afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use triad::peer::frame::{Decoded, Decoder};
use triad_core::Instant;
use triad_repl::{Health, Msg, ReplConfig, Replica, View};
use triad_volume::MemDisk;

const VOL: usize = 64 * 1024;

fn replica(id: u8, peers: [u8; 2]) -> Replica<MemDisk, MemDisk, MemDisk> {
    let meta = triad_volume::store::meta_len_needed(VOL as u64, 4096, 2) as usize;
    let cfg = ReplConfig { region: 4096, resync_chunk: 4096, ..ReplConfig::default() };
    let format = triad_volume::store::Format { granularity: 4096, incarnation: u64::from(id), learner: false };
    match Replica::format(id, peers, cfg, MemDisk::new(8192 + 16384), MemDisk::new(VOL), MemDisk::new(meta), format) {
        Ok(r) => r,
        Err(e) => panic!("format: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut leader = replica(1, [2, 3]);
    let mut follower = replica(2, [1, 3]);
    let mut out = Vec::new();
    let now = Instant(1_000_000);
    leader.set_view(now, View { epoch: 1, leader: Some(1), lease_until: Some(Instant(u64::MAX / 2)) }, &mut out);
    follower.set_view(now, View { epoch: 1, leader: Some(1), lease_until: None }, &mut out);
    leader.sync(now, &mut out);
    let mut dec = Decoder::<Msg>::new();
    dec.extend(data);
    let mut t = now;
    loop {
        let m = match dec.next_frame() {
            Decoded::Frame(m) => m,
            Decoded::NeedMore => break,
            Decoded::Bad(e) if e.is_fatal() => break,
            Decoded::Bad(_) => continue,
        };
        t = t.add(core::time::Duration::from_millis(1));
        follower.receive(t, 1, m.clone(), &mut out);
        follower.sync(t, &mut out);
        follower.tick(t, &mut out);
        leader.receive(t, 2, m, &mut out);
        leader.sync(t, &mut out);
        leader.tick(t, &mut out);
        out.clear();
        for r in [&leader.status(t), &follower.status(t)] {
            assert!(!matches!(r.health, Health::Failed(_)), "peer input failed storage: {r:?}");
        }
    }
    let mut buf = [0u8; 4096];
    assert!(leader.store().read(0, &mut buf).is_ok());
});

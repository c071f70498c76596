//! Journal recovery under simulated power cuts and garbage.
//!
//! Random appends (payloads derived from (epoch, seq) so any tear shows),
//! random syncs, truncations, compactions and power cuts on a `MemDisk`
//! with a small ring, so it wraps many times. After every cut: every
//! record synced before it is present (or was discarded), the recovered
//! log is a chain, and every recovered record is one that was appended,
//! byte for byte.

use proptest::prelude::*;
use std::collections::HashMap;
use triad_volume::journal::HEADER_SLOT_LEN;
use triad_volume::{Journal, JournalError, MemDisk, Position};

fn payload(epoch: u64, seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (epoch.wrapping_mul(31) ^ seq.wrapping_mul(7) ^ i as u64) as u8).collect()
}

#[derive(Clone, Debug)]
enum Op {
    Append(usize),
    Sync,
    Truncate(u8),
    Discard(u8),
    PowerCut(u64),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..900).prop_map(Op::Append),
        3 => Just(Op::Sync),
        1 => any::<u8>().prop_map(Op::Truncate),
        2 => any::<u8>().prop_map(Op::Discard),
        1 => any::<u64>().prop_map(Op::PowerCut),
        1 => Just(Op::Crash),
    ]
}

fn check(j: &Journal<MemDisk>, durable: Position, appended: &HashMap<(u64, u64), (u64, Vec<u8>)>) {
    // Every synced record survives (or was compacted away).
    assert!(j.last() >= durable, "lost synced records: last {:?} < durable {:?}", j.last(), durable);
    let mut prev = j.discarded();
    for r in j.iter_from(0) {
        let r = r.expect("recovered record reads back");
        assert_eq!(r.prev, prev, "chain broken at {}", r.seq);
        assert_eq!(r.seq, prev.seq + 1);
        let (offset, data) = appended.get(&(r.epoch, r.seq)).expect("record was appended");
        assert_eq!(&r.payload, data, "torn record {:?}", r.position());
        assert_eq!(r.offset, *offset);
        prev = r.position();
    }
    assert_eq!(prev, j.last());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn recovery_after_power_cuts(ops in proptest::collection::vec(op(), 1..250)) {
        let mut j = Journal::format(MemDisk::new(2 * HEADER_SLOT_LEN as usize + 8192)).unwrap();
        let mut epoch = 1;
        let mut appended = HashMap::new();
        for op in ops {
            match op {
                Op::Append(len) => {
                    let seq = j.last().seq + 1;
                    let data = payload(epoch, seq, len);
                    let offset = seq * 4096;
                    match j.append_next(epoch, offset, &data) {
                        Ok(_) => { appended.insert((epoch, seq), (offset, data)); }
                        Err(JournalError::Full { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                Op::Sync => { j.sync().unwrap(); }
                Op::Truncate(k) => {
                    let (lo, hi) = (j.discarded().seq, j.last().seq);
                    j.truncate_after(lo + u64::from(k) % (hi - lo + 1)).unwrap();
                    // A conflicting tail is replaced by a newer leader's records.
                    epoch += 1;
                }
                Op::Discard(k) => {
                    let (lo, hi) = (j.discarded().seq, j.durable().seq);
                    if hi > lo {
                        j.discard_through(lo + 1 + u64::from(k) % (hi - lo)).unwrap();
                    }
                }
                Op::PowerCut(seed) => {
                    let durable = j.durable();
                    let mut d = j.into_disk();
                    let mut x = seed;
                    d.power_cut(&mut || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); x >> 29 });
                    j = Journal::open(d).unwrap();
                    check(&j, durable, &appended);
                    // A restarted node never resumes an old epoch.
                    epoch = epoch.max(j.last().epoch) + 1;
                }
                Op::Crash => {
                    let last = j.last();
                    let mut d = j.into_disk();
                    d.crash();
                    j = Journal::open(d).unwrap();
                    // The page cache survived: nothing is lost.
                    prop_assert_eq!(j.last(), last);
                    check(&j, last, &appended);
                    epoch += 1;
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20000)) {
        let _ = Journal::open(MemDisk::from_bytes(bytes));
    }

    #[test]
    fn valid_header_garbage_ring(ring in proptest::collection::vec(any::<u8>(), 4096..12000), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..20)) {
        // A real journal with records, then random bytes over parts of it.
        let mut j = Journal::format(MemDisk::new(2 * HEADER_SLOT_LEN as usize + 12288)).unwrap();
        for i in 0..40u64 {
            let _ = j.append_next(1, i, &payload(1, i + 1, (i as usize * 37) % 300));
        }
        j.sync().unwrap();
        let mut bytes = j.into_disk().durable_bytes().to_vec();
        let at = 2 * HEADER_SLOT_LEN as usize + (ring.len() % 4096);
        let end = (at + ring.len() / 4).min(bytes.len());
        bytes[at..end].copy_from_slice(&ring[..end - at]);
        for (pos, v) in flips {
            let n = bytes.len();
            bytes[pos % n] ^= v;
        }
        if let Ok(j) = Journal::open(MemDisk::from_bytes(bytes)) {
            let mut prev = j.discarded();
            for r in j.iter_from(0) {
                let r = r.unwrap();
                prop_assert_eq!(r.prev, prev);
                prop_assert_eq!(&r.payload, &payload(1, r.seq, ((r.seq - 1) as usize * 37) % 300));
                prev = r.position();
            }
        }
    }
}

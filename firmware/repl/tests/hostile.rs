//! Invariant 5 for the replication layer: whatever an (authenticated but
//! buggy or hostile) peer sends, a replica never panics, never fails its
//! own storage because of it, and a leader's committed data is untouched.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use triad_core::Instant;
use triad_repl::Bytes;
use triad_repl::{Health, Msg, Out, Replica, ResyncState, View};
use triad_volume::{MemDisk, Position, Record};

const VOL: usize = 64 * 1024;

fn replica(id: u8) -> Replica<MemDisk, MemDisk, MemDisk> {
    triad_repl::testing::mem_replica(id, 8192 + 16384, VOL, id == 2).unwrap()
}

fn pos() -> impl Strategy<Value = Position> {
    (prop_oneof![0..4u64, Just(u64::MAX)], prop_oneof![0..8u64, Just(u64::MAX)]).prop_map(|(e, s)| Position::new(e, s))
}

fn record() -> impl Strategy<Value = Record> {
    (0..4u64, 0..10u64, pos(), prop_oneof![0..VOL as u64, Just(u64::MAX - 10)], 0..9000usize).prop_map(
        |(epoch, seq, prev, offset, len)| Record { epoch, seq, prev, offset, payload: vec![0xA5; len].into() },
    )
}

/// An Append that chains onto an empty journal (so it gets past the prev
/// check), with offsets and lengths that may not fit the volume.
fn chained_append() -> impl Strategy<Value = Msg> {
    (
        prop::collection::vec(
            (prop_oneof![0..VOL as u64, Just(u64::MAX - 10), Just(VOL as u64 - 100)], 0..9000usize),
            1..4,
        ),
        any::<u64>(),
    )
        .prop_map(|(recs, commit)| {
            let mut prev = Position::ZERO;
            let records = recs
                .into_iter()
                .map(|(offset, len)| {
                    let r = Record { epoch: 1, seq: prev.seq + 1, prev, offset, payload: vec![0x5A; len].into() };
                    prev = r.position();
                    r
                })
                .collect();
            Msg::Append {
                epoch: 1,
                prev: Position::ZERO,
                records,
                commit: commit % 8,
                ks: vec![],
                peer_inc: commit % 3,
                stream: commit % 2,
            }
        })
}

fn msg() -> impl Strategy<Value = Msg> {
    let epoch = prop_oneof![Just(1u64), 0..4u64, Just(u64::MAX)];
    prop_oneof![
        chained_append(),
        chained_append(),
        (epoch.clone(), pos(), prop::collection::vec(record(), 0..4), any::<u64>()).prop_map(
            |(epoch, prev, records, commit)| {
                Msg::Append {
                    epoch,
                    prev,
                    records,
                    commit,
                    ks: vec![(2, Position::new(1, 1)), (9, Position::new(5, 5))],
                    peer_inc: commit % 3,
                    stream: commit % 2,
                }
            }
        ),
        (epoch.clone(), any::<bool>(), any::<u64>(), pos(), pos(), pos(), any::<bool>(), 0..3u64, any::<bool>())
            .prop_map(|(epoch, ok, matched, last, applied, k, consistent, inc, learner)| Msg::AppendReply {
                epoch,
                inc,
                ok,
                matched,
                last,
                applied,
                k,
                consistent,
                learner,
                stream: matched % 2,
            }),
        (epoch.clone(), any::<u64>(), any::<bool>()).prop_map(|(epoch, id, hash)| Msg::ResyncBegin { epoch, id, hash }),
        (epoch.clone(), 0..3u64, 0..4u64, any::<u64>(), 0..9000usize).prop_map(|(epoch, id, n, offset, len)| {
            Msg::ResyncData { epoch, id, n, offset: offset % (2 * VOL as u64), data: vec![7; len] }
        }),
        (epoch.clone(), 0..3u64, 0..4u64, pos()).prop_map(|(epoch, id, n, point)| Msg::ResyncEnd {
            epoch,
            id,
            n,
            point
        }),
        (epoch.clone(), any::<u64>(), any::<u64>(), 0..3u8, 0..3u64).prop_map(|(epoch, id, n, s, inc)| {
            Msg::ResyncAck {
                epoch,
                inc,
                id,
                n,
                state: [ResyncState::Unknown, ResyncState::Receiving, ResyncState::Finished][usize::from(s)],
            }
        }),
        (epoch.clone(), any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(epoch, id, offset, count)| Msg::VerifyRequest { epoch, id, offset, count }),
        (epoch, any::<u64>(), any::<u64>(), pos(), prop::collection::vec(any::<[u8; 16]>(), 0..20)).prop_map(
            |(epoch, id, offset, applied, hashes)| Msg::VerifyReply { epoch, inc: 1, id, offset, applied, hashes }
        ),
    ]
}

/// A leader's committed state: its store's bytes, its applied position,
/// its commit point and the committed records its journal holds.
#[derive(Debug, PartialEq, Eq)]
struct Committed {
    store: Vec<u8>,
    applied: Position,
    commit: u64,
    records: Vec<Record>,
}

fn committed(r: &Replica<MemDisk, MemDisk, MemDisk>, now: Instant) -> Committed {
    let mut store = vec![0u8; VOL];
    r.store().read(0, &mut store).unwrap();
    let commit = r.status(now).commit;
    let first = r.journal().discarded().seq + 1;
    let records = (first..=commit).map(|seq| r.journal().read(seq).unwrap()).collect();
    Committed { store, applied: r.applied(), commit, records }
}

fn run(me: u8, leader: u8, msgs: Vec<(u8, Msg)>) {
    let mut r = replica(me);
    let mut out: Vec<Out> = Vec::new();
    let mut now = Instant(1_000_000);
    let lease = (me == leader).then_some(Instant(u64::MAX / 2));
    r.set_view(now, View { epoch: 1, leader: Some(leader), lease_until: lease }, &mut out);
    r.sync(now, &mut out);
    let mut before = None;
    if me == leader {
        // The no-op, then a write, each committed by node 3's honest reply
        // and applied: the committed state the hostile messages must leave
        // untouched.
        let honest = |last: Position| Msg::AppendReply {
            epoch: 1,
            inc: 3,
            ok: true,
            matched: last.seq,
            last,
            applied: Position::ZERO,
            k: Position::ZERO,
            consistent: true,
            learner: false,
            stream: 0,
        };
        r.receive(now, 3, honest(r.journal().last()), &mut out);
        r.sync(now, &mut out);
        // (2 KiB: this ring's records hold at most 4040 bytes, and a
        // larger write is cut into 4 KiB records, which fails the leader.)
        r.write(now, 1, 4096, Bytes::copy_from_slice(&[1u8; 2048]), &mut out);
        r.sync(now, &mut out);
        let last = r.journal().last();
        r.receive(now, 3, honest(last), &mut out);
        r.sync(now, &mut out);
        let c = committed(&r, now);
        assert_eq!((c.applied, c.commit, c.records.len()), (last, last.seq, 2), "no-op and write committed, applied");
        assert_eq!(&c.store[4096..6144], &[1u8; 2048][..]);
        assert!(!matches!(r.status(now).health, Health::Failed(_)));
        before = Some(c);
    }
    for (from, m) in msgs {
        now = now.add(core::time::Duration::from_millis(3));
        r.receive(now, from, m, &mut out);
        r.sync(now, &mut out);
        r.tick(now, &mut out);
        assert!(
            !matches!(r.status(now).health, Health::Failed(_)),
            "peer input failed the storage: {:?}",
            r.status(now)
        );
    }
    let mut buf = vec![0u8; VOL];
    r.store().read(0, &mut buf).unwrap();
    assert!(r.applied().seq <= r.journal().last().seq.max(r.store().checkpointed().applied.seq));
    if let Some(before) = before {
        // No client writes came in: nothing may have changed what was
        // committed (its store, its applied position, its records), nor
        // moved the commit point past them.
        let after = committed(&r, now);
        assert_eq!(after.commit, before.commit, "the commit point moved");
        assert_eq!(after.applied, before.applied, "the applied position moved");
        assert!(after.records == before.records, "committed records changed: {:?}", r.status(now));
        assert!(after.store == before.store, "the store changed: {:?}", r.status(now));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_follower_survives_any_messages(msgs in prop::collection::vec((1..=3u8, msg()), 0..30)) {
        run(2, 1, msgs);
    }

    #[test]
    fn a_leader_survives_any_messages(msgs in prop::collection::vec((1..=3u8, msg()), 0..30)) {
        run(1, 1, msgs);
    }
}

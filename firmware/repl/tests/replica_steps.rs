//! Exact outputs for inputs: one replica's commands, step by step, in the
//! style of `core/tests/node_steps.rs` (the cluster tests check outcomes;
//! these pin what goes out, in which order).
#![allow(clippy::unwrap_used)]

use triad_core::{Instant, Membership, NodeId};
use triad_repl::Bytes;
use triad_repl::{ClientError, Msg, Out, ReplNotice, Replica, View};
use triad_volume::{MemDisk, Position, Record};

const VOL: usize = 64 * 1024;

type R = Replica<MemDisk, MemDisk, MemDisk>;

fn replica(id: NodeId) -> R {
    triad_repl::testing::mem_replica(id, 256 * 1024, VOL, false).unwrap()
}

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn noop(epoch: u64, seq: u64, prev: Position) -> Record {
    Record { epoch, seq, prev, offset: 0, payload: triad_repl::Bytes::new() }
}

fn pos(epoch: u64, seq: u64) -> Position {
    Position::new(epoch, seq)
}

/// Leader 1's first Append of `epoch` to node 2: its no-op at seq 1.
fn first_append(epoch: u64) -> Msg {
    let records = vec![noop(epoch, 1, Position::ZERO)];
    Msg::Append { epoch, prev: Position::ZERO, records, commit: 0, ks: Vec::new(), peer_inc: 2, stream: 0 }
}

/// Node 2's reply in epoch 1: the no-op (1, 1) durable, nothing applied.
fn reply_from_2_holding_the_noop() -> Msg {
    Msg::AppendReply {
        epoch: 1,
        inc: 2,
        ok: true,
        matched: 1,
        last: pos(1, 1),
        applied: Position::ZERO,
        k: Position::ZERO,
        consistent: true,
        learner: false,
        stream: 0,
    }
}

#[test]
fn a_new_leader_appends_its_noop_and_sends_it_to_both_peers_before_anything_is_durable() {
    let mut r = replica(1);
    let mut out = Vec::new();
    r.set_view(at(0), View { epoch: 1, leader: Some(1), lease_until: Some(at(1000)) }, &mut out);
    let append = |to: NodeId| Out::Send {
        to,
        msg: Msg::Append {
            epoch: 1,
            prev: Position::ZERO,
            records: vec![noop(1, 1, Position::ZERO)],
            commit: 0,
            ks: vec![(1, Position::ZERO), (2, Position::ZERO), (3, Position::ZERO)],
            peer_inc: 0,
            stream: 0,
        },
    };
    assert_eq!(
        out,
        vec![
            append(2),
            append(3),
            Out::Position(triad_core::Position { epoch: 1, seq: 1 }),
            Out::Electable(true),
            Out::Membership(Membership::Voter { votes_from: 0 }),
        ]
    );
    // Its own sync makes the no-op durable here, but one node is no majority.
    out.clear();
    r.sync(at(1), &mut out);
    assert_eq!(out, vec![]);
    assert!(!r.serving(at(1)));
}

#[test]
fn the_noop_commits_on_the_first_durable_reply_and_the_leader_serves() {
    let mut r = replica(1);
    let mut out = Vec::new();
    r.set_view(at(0), View { epoch: 1, leader: Some(1), lease_until: Some(at(1000)) }, &mut out);
    r.sync(at(1), &mut out);
    out.clear();
    let reply = reply_from_2_holding_the_noop();
    r.receive(at(2), 2, reply, &mut out);
    // Committed and applied: the epoch's first record, then serving.
    assert_eq!(out.first(), Some(&Out::Notice(ReplNotice::Ready { epoch: 1, seq: 1 })), "{out:?}");
    assert!(r.serving(at(2)));
    assert!(!r.serving(at(1000)), "only inside the lease");
}

/// Node 2 as a follower of leader 1 in epoch 1, its outputs so far cleared.
fn follower_of_1() -> (R, Vec<Out>) {
    let mut r = replica(2);
    let mut out = Vec::new();
    r.set_view(at(0), View { epoch: 1, leader: Some(1), lease_until: None }, &mut out);
    out.clear();
    (r, out)
}

#[test]
fn a_follower_answers_an_append_only_after_its_journal_sync() {
    let (mut r, mut out) = follower_of_1();
    let append = first_append(1);
    r.receive(at(1), 1, append, &mut out);
    // Appended (the core hears the new position at once), not yet answered.
    assert_eq!(out, vec![Out::Position(triad_core::Position { epoch: 1, seq: 1 })]);
    out.clear();
    r.sync_journal(&mut out);
    assert_eq!(out, vec![], "the sync itself says nothing");
    r.after_sync(at(2), &mut out);
    assert_eq!(out, vec![Out::Send { to: 1, msg: reply_from_2_holding_the_noop() }]);
}

/// The overlapped group commit: an Append that arrives while a sync runs
/// is not covered by it. That sync's finish reports only what it covers
/// (seq 1, so the leader can count it now), the next sync starts only
/// once the first finished, and its finish answers the second Append.
#[test]
fn a_follower_answers_an_append_taken_during_a_sync_only_after_the_sync_that_covers_it() {
    let (mut r, mut out) = follower_of_1();
    r.receive(at(1), 1, first_append(1), &mut out);
    out.clear();
    let (first, job) = r.start_sync(&mut out).expect("records to sync");
    assert!(r.start_sync(&mut out).is_none(), "nothing new to sync");
    // Seq 2 arrives while the sync of seq 1 runs.
    let records = vec![noop(1, 2, pos(1, 1))];
    let append = Msg::Append { epoch: 1, prev: pos(1, 1), records, commit: 0, ks: Vec::new(), peer_inc: 2, stream: 0 };
    r.receive(at(2), 1, append, &mut out);
    assert_eq!(out, vec![Out::Position(triad_core::Position { epoch: 1, seq: 2 })]);
    out.clear();
    assert!(r.start_sync(&mut out).is_none(), "one sync at a time");
    r.finish_sync(first, job.run(), &mut out);
    r.after_sync(at(3), &mut out);
    let reply = |matched| Msg::AppendReply {
        epoch: 1,
        inc: 2,
        ok: true,
        matched,
        last: pos(1, 2),
        applied: Position::ZERO,
        k: Position::ZERO,
        consistent: true,
        learner: false,
        stream: 0,
    };
    assert_eq!(out, vec![Out::Send { to: 1, msg: reply(1) }], "seq 2 is not durable: no reply may claim it");
    out.clear();
    r.after_sync(at(3), &mut out);
    assert_eq!(out, vec![], "no progress, no second reply");
    let (second, job) = r.start_sync(&mut out).expect("seq 2 to sync");
    r.finish_sync(second, job.run(), &mut out);
    r.after_sync(at(4), &mut out);
    assert_eq!(out, vec![Out::Send { to: 1, msg: reply(2) }]);
    out.clear();
    r.after_sync(at(5), &mut out);
    assert_eq!(out, vec![], "answered once");
}

/// A failed fdatasync reported at the finish is rule 9's failure.
#[test]
fn a_started_sync_that_fails_fails_the_replica() {
    let (mut r, mut out) = follower_of_1();
    r.receive(at(1), 1, first_append(1), &mut out);
    out.clear();
    let (sync, _job) = r.start_sync(&mut out).expect("records to sync");
    r.finish_sync(sync, Err(std::io::Error::other("EIO")), &mut out);
    assert!(r.recovery().is_some(), "failed storage must say how to come back");
    r.after_sync(at(2), &mut out);
    assert!(!out.iter().any(|o| matches!(o, Out::Send { msg: Msg::AppendReply { ok: true, .. }, .. })), "{out:?}");
}

#[test]
fn writes_on_a_follower_and_messages_of_another_epoch_change_nothing() {
    let (mut r, mut out) = follower_of_1();
    r.write(at(1), 7, 0, Bytes::copy_from_slice(&[1u8; 4096]), &mut out);
    assert_eq!(out, vec![Out::WriteDone { id: 7, result: Err(ClientError::NotActive) }]);
    out.clear();
    // An Append of epoch 2 before the core adopted epoch 2: ignored.
    let append = first_append(2);
    r.receive(at(2), 1, append, &mut out);
    r.sync(at(3), &mut out);
    assert_eq!(out, vec![]);
    assert_eq!(r.position(), Position::ZERO);
}

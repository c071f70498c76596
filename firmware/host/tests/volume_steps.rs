//! Exact outputs of the volume thread's driver (`triad_host::volume`),
//! step by step: the view taken before each step, a client write answered
//! once for all its pieces, the lease judged with the time after the
//! sync, waiting writes failed when the replica is taken out.
#![allow(clippy::unwrap_used)]

use triad_core::{Instant, NodeId};
use triad_host::volume::{VolumeDriver, VolumeIn, VolumeOut};
use triad_repl::{Bytes, ClientError, Msg, Replica, View};
use triad_volume::{MemDisk, Position};

const VOL: usize = 64 * 1024;

type Driver = VolumeDriver<MemDisk, MemDisk, MemDisk>;

fn replica(id: NodeId) -> Replica<MemDisk, MemDisk, MemDisk> {
    triad_repl::testing::mem_replica(id, 256 * 1024, VOL, false).unwrap()
}

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn leading(epoch: u64, lease_ms: u64) -> View {
    View { epoch, leader: Some(1), lease_until: Some(at(lease_ms)) }
}

/// Node 2's reply in epoch 1: everything through `seq` durable.
fn reply_from_2(seq: u64) -> Msg {
    Msg::AppendReply {
        epoch: 1,
        inc: 2,
        ok: true,
        matched: seq,
        last: Position::new(1, seq),
        applied: Position::ZERO,
        k: Position::ZERO,
        consistent: true,
        learner: false,
        stream: 0,
    }
}

/// Node 1 as the leader of epoch 1 (lease to 1 s), its no-op committed by
/// node 2's reply: serving. Returns the driver and what it said last.
fn ready_leader() -> (Driver, Vec<VolumeOut>) {
    let mut outs = Vec::new();
    let mut d = Driver::new(replica(1), at(0), &mut outs);
    d.take_view(at(0), Some(leading(1, 1000)), &mut outs);
    d.before_sync(&|| at(0), None, &mut outs);
    d.sync(&mut outs);
    d.after_sync(&|| at(1), None, &mut outs);
    outs.clear();
    d.command(&|| at(2), None, VolumeIn::Peer(2, reply_from_2(1)), &mut outs);
    (d, outs)
}

fn write(client: u64, offset: u64, pieces: &[&[u8]]) -> VolumeIn {
    VolumeIn::Write { client, offset, pieces: pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect() }
}

fn sends(outs: &[VolumeOut]) -> Vec<NodeId> {
    outs.iter().filter_map(|o| if let VolumeOut::Send { to, .. } = o { Some(*to) } else { None }).collect()
}

/// The outputs without payloads, for failure messages.
fn brief(outs: &[VolumeOut]) -> Vec<String> {
    outs.iter()
        .map(|o| match o {
            VolumeOut::Send { to, msg } => format!("Send to {to}: {}", msg_kind(msg)),
            o => format!("{o:?}"),
        })
        .collect()
}

fn msg_kind(m: &Msg) -> String {
    match m {
        Msg::Append { records, commit, .. } => {
            format!("Append {:?} commit {commit}", records.iter().map(|r| r.seq).collect::<Vec<_>>())
        }
        _ => "other".into(),
    }
}

fn answers(outs: &[VolumeOut]) -> Vec<&VolumeOut> {
    outs.iter().filter(|o| matches!(o, VolumeOut::WriteDone { .. })).collect()
}

#[test]
fn a_new_driver_starts_under_an_empty_view_and_serves_nothing() {
    let mut outs = Vec::new();
    let d = Driver::new(replica(1), at(0), &mut outs);
    assert_eq!(outs.last(), Some(&VolumeOut::Serving(None)), "{:?}", brief(&outs));
    assert_eq!(d.view(), View::default());
    assert!(!outs.iter().any(|o| matches!(o, VolumeOut::Send { .. })), "{:?}", brief(&outs));
}

#[test]
fn the_leader_is_published_as_serving_once_its_noop_is_committed() {
    let (_, outs) = ready_leader();
    assert!(outs.contains(&VolumeOut::Serving(Some(1))), "{:?}", brief(&outs));
    // Published once: a later step that changes nothing says nothing.
    let (mut d, _) = ready_leader();
    let mut again = Vec::new();
    d.before_sync(&|| at(3), None, &mut again);
    assert!(!again.iter().any(|o| matches!(o, VolumeOut::Serving(_))), "{again:?}");
}

#[test]
fn a_view_handed_with_a_command_is_taken_before_it() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    let step_down = View { epoch: 2, leader: Some(2), lease_until: None };
    d.command(&|| at(3), Some(step_down), write(7, 0, &[&[1u8; 4096]]), &mut outs);
    assert_eq!(outs.first(), Some(&VolumeOut::ViewTaken(step_down)), "{:?}", brief(&outs));
    assert_eq!(answers(&outs), vec![&VolumeOut::WriteDone { client: 7, result: Err(ClientError::NotActive) }]);
    assert!(outs.contains(&VolumeOut::Serving(None)), "{:?}", brief(&outs));
    assert!(sends(&outs).is_empty(), "a refused write is not replicated: {:?}", brief(&outs));
}

#[test]
fn a_write_of_several_pieces_is_answered_once_when_all_are_committed() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    d.command(&|| at(3), None, write(9, 8192, &[&[1u8; 4096], &[2u8; 4096]]), &mut outs);
    // Each piece goes to both peers as it is journaled; nothing is answered yet.
    assert_eq!(sends(&outs), vec![2, 3, 2, 3], "{:?}", brief(&outs));
    assert!(answers(&outs).is_empty(), "{:?}", brief(&outs));
    outs.clear();
    d.before_sync(&|| at(3), None, &mut outs);
    d.sync(&mut outs);
    d.after_sync(&|| at(4), None, &mut outs);
    assert!(answers(&outs).is_empty(), "durable here only, no majority yet: {:?}", brief(&outs));
    outs.clear();
    d.command(&|| at(5), None, VolumeIn::Peer(2, reply_from_2(3)), &mut outs);
    assert_eq!(answers(&outs), vec![&VolumeOut::WriteDone { client: 9, result: Ok(()) }]);
}

#[test]
fn an_acknowledgement_due_after_the_sync_waits_for_the_time_read_after_it() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    d.command(&|| at(3), None, write(5, 0, &[&[3u8; 4096]]), &mut outs);
    // Node 2 has it durable before this node's own sync finishes.
    d.command(&|| at(4), None, VolumeIn::Peer(2, reply_from_2(2)), &mut outs);
    d.before_sync(&|| at(4), None, &mut outs);
    assert!(answers(&outs).is_empty(), "not durable here yet: {:?}", brief(&outs));
    outs.clear();
    d.sync(&mut outs);
    // The sync took until past the lease end (1 s): no acknowledgement.
    d.after_sync(&|| at(1000), None, &mut outs);
    assert!(
        !outs.contains(&VolumeOut::WriteDone { client: 5, result: Ok(()) }),
        "acknowledged after the lease ended: {:?}",
        brief(&outs)
    );
}

#[test]
fn taking_the_replica_out_fails_the_waiting_writes_and_stops_serving() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    d.command(&|| at(3), None, write(4, 0, &[&[1u8; 4096], &[1u8; 4096]]), &mut outs);
    outs.clear();
    let _replica = d.into_replica(&mut outs);
    assert_eq!(
        outs,
        vec![
            VolumeOut::WriteDone { client: 4, result: Err(ClientError::Storage("the volume's storage failed".into())) },
            VolumeOut::Serving(None),
        ]
    );
}

#[test]
fn acknowledgements_are_judged_with_the_clock_read_after_the_steps_io() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    d.command(&|| at(3), None, write(6, 0, &[&[4u8; 4096]]), &mut outs);
    d.before_sync(&|| at(3), None, &mut outs);
    d.sync(&mut outs);
    d.after_sync(&|| at(4), None, &mut outs);
    assert!(answers(&outs).is_empty(), "durable here only: {:?}", brief(&outs));
    outs.clear();
    // Node 2's reply commits the write; applying it to the store takes
    // until past the lease end (1 s): the second reading of the clock.
    let readings = std::cell::Cell::new(0);
    let clock = || {
        readings.set(readings.get() + 1);
        if readings.get() == 1 {
            at(5)
        } else {
            at(1000)
        }
    };
    d.command(&clock, None, VolumeIn::Peer(2, reply_from_2(2)), &mut outs);
    assert!(readings.get() >= 2, "the clock was not read again after the step");
    assert!(answers(&outs).is_empty(), "acknowledged after the lease ended: {:?}", brief(&outs));
}

#[test]
fn a_verify_abandoned_by_a_step_down_is_answered() {
    let (mut d, _) = ready_leader();
    let mut outs = Vec::new();
    d.command(&|| at(3), None, VolumeIn::Verify { client: 8 }, &mut outs);
    assert!(!outs.iter().any(|o| matches!(o, VolumeOut::VerifyDone { .. })), "{:?}", brief(&outs));
    outs.clear();
    d.take_view(at(4), Some(View { epoch: 2, leader: Some(2), lease_until: None }), &mut outs);
    assert!(
        outs.contains(&VolumeOut::VerifyDone { client: 8, result: Err(ClientError::NotActive) }),
        "the verify's client would wait forever: {:?}",
        brief(&outs)
    );
}

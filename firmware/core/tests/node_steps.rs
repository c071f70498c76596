//! Exact outputs for inputs: the core's behaviour step by step.
//!
//! Each test drives one or more `Node`s by hand with chosen times and
//! messages and asserts the precise commands that come out, including their
//! order where it matters (persist before send, VIP removal before the
//! message that lets another node raise it).

use std::time::Duration;
use triad_core::{
    AdminRequest, Body, HardState, Input, Instant, Membership, Message, Node, Notice, Output, Position, Role, Setup,
    Timing, VipAction,
};

const MS: u64 = 1000;

fn at(ms: u64) -> Instant {
    Instant(ms * MS)
}

fn node(id: u8, hard: HardState) -> Node {
    let peers = match id {
        1 => [2, 3],
        2 => [1, 3],
        _ => [1, 2],
    };
    setup(id, peers, Timing::default(), hard, Position::default())
}

/// A node starting at time 0, seeded by its id.
fn setup(id: u8, peers: [u8; 2], timing: Timing, hard: HardState, position: Position) -> Node {
    Node::new(Setup { id, peers, timing, hard, position, now: at(0), seed: u64::from(id) })
}

fn msg(from: u8, epoch: u64, body: Body) -> Input {
    Input::Receive(Message { from, epoch, body })
}

/// The messages sent, without the periodic liveness pings.
fn sends(out: &[Output]) -> Vec<(u8, Message)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { msg, .. } if matches!(msg.body, Body::Ping { .. }) => None,
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn persists(out: &[Output]) -> Vec<HardState> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(h) => Some(*h),
            _ => None,
        })
        .collect()
}

fn position_of(out: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    out.iter().position(pred).expect("expected output missing")
}

/// Ticks `n` until it has sent PreVotes; returns that instant and the outputs.
fn tick_until_prevote(n: &mut Node) -> (Instant, Vec<Output>) {
    let mut now = at(0);
    for _ in 0..1000 {
        now = n.next_deadline().max(now);
        let out = n.handle(now, Input::Tick);
        if sends(&out).iter().any(|(_, m)| matches!(m.body, Body::PreVote { .. })) {
            return (now, out);
        }
    }
    panic!("no prevote");
}

/// Ticks `n` through 50 deadlines from `from`: no PreVote or Vote goes out.
fn never_campaigns(n: &mut Node, from: Instant) {
    let mut now = from;
    for _ in 0..50 {
        now = n.next_deadline().max(now);
        let out = n.handle(now, Input::Tick);
        let campaigned = sends(&out).iter().any(|(_, m)| matches!(m.body, Body::PreVote { .. } | Body::Vote { .. }));
        assert!(!campaigned, "campaigned at {now:?}");
    }
}

/// Drives node 1 to leadership with node 2's help; returns the time.
fn elect_node1(n1: &mut Node) -> Instant {
    let (now, _) = tick_until_prevote(n1);
    let out = n1.handle(now, msg(2, 1, Body::PreVoteReply { granted: true }));
    assert_eq!(n1.role(), Role::Candidate);
    assert!(sends(&out).iter().any(|(_, m)| matches!(m.body, Body::Vote { .. })));
    let out = n1.handle(now, msg(2, 1, Body::VoteReply { granted: true }));
    assert_eq!(n1.role(), Role::Leader);
    // A new leader heartbeats at once; its VIP waits for the lease.
    let hb = sends(&out);
    assert_eq!(hb.len(), 2);
    assert!(hb.iter().all(|(_, m)| m.body == Body::Heartbeat { round: 1 } && m.epoch == 1));
    assert!(!out.iter().any(|o| matches!(o, Output::Vip(_))));
    now
}

#[test]
fn a_started_node_neither_campaigns_nor_votes_within_the_max_timeout() {
    let mut n = node(1, HardState::default());
    let out = n.handle(at(10), msg(2, 1, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out), vec![(2, Message { from: 1, epoch: 0, body: Body::VoteReply { granted: false } })]);
    assert!(persists(&out).is_empty(), "a refused vote changes nothing");
    let out = n.handle(at(10), msg(2, 1, Body::PreVote { position: Position::default() }));
    assert_eq!(sends(&out)[0].1.body, Body::PreVoteReply { granted: false });
    let (when, _) = tick_until_prevote(&mut n);
    assert!(when >= at(700), "campaigned at {when:?}, before the quiet period ended");
}

#[test]
fn prevote_raises_no_epoch_and_a_vote_is_persisted_before_its_reply() {
    let mut n1 = node(1, HardState::default());
    let (now, out) = tick_until_prevote(&mut n1);
    assert_eq!(n1.epoch(), 0, "PreVote must not raise the epoch");
    assert!(persists(&out).is_empty());
    let pv = sends(&out);
    assert_eq!(pv.len(), 2);
    assert!(pv.iter().all(|(_, m)| m.epoch == 1));

    // Voter 2, quiet period over, grants the prevote without changing state.
    let mut n2 = node(2, HardState::default());
    let out = n2.handle(at(800), msg(1, 1, Body::PreVote { position: Position::default() }));
    assert_eq!(sends(&out)[0].1, Message { from: 2, epoch: 1, body: Body::PreVoteReply { granted: true } });
    assert_eq!(n2.epoch(), 0);

    // The candidate persists epoch 1 and its own vote before asking.
    let out = n1.handle(now, msg(2, 1, Body::PreVoteReply { granted: true }));
    let p = position_of(&out, |o| matches!(o, Output::Persist(_)));
    let s = position_of(&out, |o| matches!(o, Output::Send { .. }));
    assert!(p < s);
    assert_eq!(persists(&out), vec![HardState { epoch: 1, voted_for: Some(1), standby: false }]);

    // The voter persists its vote before replying.
    let out = n2.handle(at(800), msg(1, 1, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(persists(&out), vec![HardState { epoch: 1, voted_for: Some(1), standby: false }]);
    let p = position_of(&out, |o| matches!(o, Output::Persist(_)));
    let s =
        position_of(&out, |o| matches!(o, Output::Send { msg, .. } if msg.body == Body::VoteReply { granted: true }));
    assert!(p < s, "vote persisted before the reply: {out:?}");
}

#[test]
fn one_vote_per_epoch_even_after_restart() {
    let mut n2 = node(2, HardState::default());
    n2.handle(at(800), msg(1, 1, Body::Vote { position: Position::default(), transfer: false }));
    let out = n2.handle(at(801), msg(3, 1, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
    // Restart from the persisted state: still no second vote in epoch 1.
    let hard = n2.hard_state();
    let mut n2 = node(2, hard);
    let out = n2.handle(at(900), msg(3, 1, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
}

#[test]
fn a_voter_refuses_a_candidate_with_older_data() {
    let mut n2 = setup(2, [1, 3], Timing::default(), HardState::default(), Position { epoch: 3, seq: 10 });
    let out = n2.handle(at(800), msg(1, 4, Body::Vote { position: Position { epoch: 3, seq: 9 }, transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
    let out = n2.handle(at(800), msg(1, 5, Body::PreVote { position: Position { epoch: 2, seq: 99 } }));
    assert_eq!(sends(&out)[0].1.body, Body::PreVoteReply { granted: false });
    let out = n2.handle(at(801), msg(3, 4, Body::Vote { position: Position { epoch: 3, seq: 10 }, transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: true });
}

#[test]
fn a_learner_neither_votes_nor_campaigns_and_a_former_learner_votes_only_from_its_floor() {
    let data = Position { epoch: 3, seq: 10 };
    // A replaced box: blank disks, blank core state.
    let mut n2 = node(2, HardState::default());
    n2.handle(at(0), Input::Membership(Membership::Learner));
    let out = n2.handle(at(800), msg(1, 4, Body::PreVote { position: data }));
    assert_eq!(sends(&out)[0].1.body, Body::PreVoteReply { granted: false });
    let out = n2.handle(at(800), msg(1, 4, Body::Vote { position: data, transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
    never_campaigns(&mut n2, at(0));

    // Caught up in epoch 6: a voter, but not in epoch 6 (the box it
    // replaced may have voted there).
    let mut n2 = node(2, HardState { epoch: 6, voted_for: None, standby: false });
    n2.handle(at(0), Input::Membership(Membership::Voter { votes_from: 7 }));
    n2.handle(at(0), Input::PositionChanged(Position { epoch: 6, seq: 1 }));
    let p = Position { epoch: 6, seq: 5 };
    let out = n2.handle(at(800), msg(1, 6, Body::Vote { position: p, transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
    let out = n2.handle(at(801), msg(1, 7, Body::Vote { position: p, transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: true });
}

#[test]
fn leader_raises_the_vip_only_after_a_majority_acked_a_heartbeat() {
    let mut n1 = node(1, HardState::default());
    let now = elect_node1(&mut n1);
    let out = n1.handle(now.add(Duration::from_millis(2)), msg(2, 1, Body::HeartbeatAck { round: 1 }));
    assert_eq!(out.iter().filter(|o| matches!(o, Output::Vip(VipAction::Add))).count(), 1);
    let out = n1.handle(now.add(Duration::from_millis(3)), Input::VipDone { action: VipAction::Add, ok: true });
    assert_eq!(out, vec![Output::Vip(VipAction::Announce)], "first gratuitous ARP at once");
    assert!(n1.status(now).vip_held);
    assert_eq!(n1.lease_until(now), Some(now.add(Timing::default().lease_duration())));
}

#[test]
fn a_leader_whose_volume_cannot_serve_steps_down_and_drops_the_vip_at_once() {
    // Rule 16: storage failed or journal syncs stalled (the supervisor
    // reports both as "not electable").
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    assert!(n1.lease_until(t0).is_some());
    let out = n1.handle(t0.add(Duration::from_millis(5)), Input::Electable(false));
    assert!(out.contains(&Output::Notice(Notice::SteppedDownUnfit { epoch: 1 })), "{out:?}");
    assert!(out.contains(&Output::Vip(VipAction::Remove)), "{out:?}");
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.lease_until(t0), None);
    // And it does not campaign while unfit.
    never_campaigns(&mut n1, t0);
}

#[test]
fn leader_drops_the_vip_when_its_lease_runs_out_and_steps_down() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    let end = n1.lease_until(t0).expect("lease");
    // No more acks: tick to the lease end, sending (unanswered) heartbeats.
    let mut now = t0;
    let mut last = vec![];
    while now < end {
        now = n1.next_deadline();
        last = n1.handle(now, Input::Tick);
        if n1.role() != Role::Leader {
            break;
        }
    }
    assert_eq!(now, end, "must act exactly at the lease end");
    assert!(last.contains(&Output::Notice(Notice::LeaseLost { epoch: 1 })));
    assert!(last.contains(&Output::Vip(VipAction::Remove)));
    assert_eq!(n1.role(), Role::Follower);
}

#[test]
fn a_follower_that_hears_its_leader_refuses_other_candidates_without_changing_epoch() {
    let mut n2 = node(2, HardState { epoch: 1, voted_for: Some(1), standby: false });
    n2.handle(at(1000), msg(1, 1, Body::Heartbeat { round: 5 }));
    let out = n2.handle(at(1399), msg(3, 2, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1, Message { from: 2, epoch: 1, body: Body::VoteReply { granted: false } });
    assert!(persists(&out).is_empty());
    assert_eq!(n2.epoch(), 1);
    // Once the stickiness window (election_timeout_min) has passed, it votes.
    let out = n2.handle(at(1400), msg(3, 2, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: true });
}

#[test]
fn heartbeat_is_acked_and_a_stale_leader_learns_the_newer_epoch() {
    let mut n2 = node(2, HardState { epoch: 3, voted_for: None, standby: false });
    let out = n2.handle(at(900), msg(1, 3, Body::Heartbeat { round: 7 }));
    assert_eq!(sends(&out), vec![(1, Message { from: 2, epoch: 3, body: Body::HeartbeatAck { round: 7 } })]);
    assert_eq!(n2.status(at(900)).leader, Some(1));
    // The stale leader hears of epoch 3, with round 0 (never a real round):
    // if it has meanwhile been elected in epoch 3, this ack must not renew
    // a round of that new leadership.
    let out = n2.handle(at(901), msg(3, 2, Body::Heartbeat { round: 1 }));
    assert_eq!(sends(&out), vec![(3, Message { from: 2, epoch: 3, body: Body::HeartbeatAck { round: 0 } })]);
    assert_eq!(n2.status(at(901)).leader, Some(1), "a stale leader is not followed");
}

#[test]
fn leader_steps_down_and_drops_the_vip_on_a_newer_epoch() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    let out = n1.handle(t0, msg(3, 2, Body::HeartbeatAck { round: 1 }));
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.epoch(), 2);
    assert_eq!(persists(&out), vec![HardState { epoch: 2, voted_for: None, standby: false }]);
    assert!(out.contains(&Output::Vip(VipAction::Remove)));
}

#[test]
fn switchover_removes_the_vip_before_sending_timeout_now() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    n1.handle(t0, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    let out = n1.handle(t0, Input::Admin(AdminRequest::Switchover { to: Some(2) }));
    assert!(out.contains(&Output::Vip(VipAction::Remove)));
    let is_timeout_now = |o: &Output| matches!(o, Output::Send { to: 2, msg } if msg.body == Body::TimeoutNow);
    assert!(!out.iter().any(is_timeout_now), "not before the VIP is off: {out:?}");
    assert_eq!(n1.role(), Role::Follower);
    assert_eq!(n1.lease_until(t0), None, "the lease is given up for good");
    // A failed removal holds the handover back; the retried one releases it.
    let out = n1.handle(t0, Input::VipDone { action: VipAction::Remove, ok: false });
    assert!(!out.iter().any(is_timeout_now));
    let retry = loop {
        let retry = n1.next_deadline();
        let out = n1.handle(retry, Input::Tick);
        assert!(!out.iter().any(is_timeout_now));
        if out.contains(&Output::Vip(VipAction::Remove)) {
            break retry;
        }
        assert!(retry < t0.add(Duration::from_millis(150)), "removal not retried");
    };
    let out = n1.handle(retry, Input::VipDone { action: VipAction::Remove, ok: true });
    assert_eq!(out.iter().filter(|o| is_timeout_now(o)).count(), 1, "{out:?}");

    // The target campaigns at once at epoch 2 with the transfer flag, and a
    // voter that still hears the old leader waives stickiness for it.
    let mut n2 = node(2, HardState { epoch: 1, voted_for: Some(1), standby: false });
    n2.handle(at(1000), msg(1, 1, Body::Heartbeat { round: 9 }));
    let out = n2.handle(at(1001), msg(1, 1, Body::TimeoutNow));
    assert_eq!(n2.role(), Role::Candidate);
    assert!(sends(&out)
        .iter()
        .all(|(_, m)| m.epoch == 2 && m.body == Body::Vote { position: Position::default(), transfer: true }));
    let mut n3 = node(3, HardState { epoch: 1, voted_for: Some(1), standby: false });
    n3.handle(at(1000), msg(1, 1, Body::Heartbeat { round: 9 }));
    let out = n3.handle(at(1002), msg(2, 2, Body::Vote { position: Position::default(), transfer: true }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: true });
    // ...but not for a jump of two epochs.
    let mut n3 = node(3, HardState { epoch: 1, voted_for: Some(1), standby: false });
    n3.handle(at(1000), msg(1, 1, Body::Heartbeat { round: 9 }));
    let out = n3.handle(at(1002), msg(2, 3, Body::Vote { position: Position::default(), transfer: true }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
}

#[test]
fn switchover_is_refused_with_a_reason_when_it_cannot_happen() {
    let mut n2 = node(2, HardState::default());
    let out = n2.handle(at(5), Input::Admin(AdminRequest::Switchover { to: Some(3) }));
    assert!(
        matches!(&out[..], [Output::Notice(Notice::AdminRefused { reason }), ..] if reason.contains("not the active node"))
    );
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    let out = n1.handle(t0, Input::Admin(AdminRequest::Switchover { to: Some(3) }));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Notice(Notice::AdminRefused { reason }) if reason.contains("not reachable"))));
    assert_eq!(n1.role(), Role::Leader);
}

#[test]
fn a_standby_node_never_campaigns_and_ignores_timeout_now() {
    let mut n = node(3, HardState::default());
    let out = n.handle(at(1), Input::Admin(AdminRequest::Standby(true)));
    assert_eq!(persists(&out), vec![HardState { epoch: 0, voted_for: None, standby: true }]);
    never_campaigns(&mut n, at(1));
    n.handle(at(5000), msg(1, 0, Body::Heartbeat { round: 1 }));
    n.handle(at(5001), msg(1, 0, Body::TimeoutNow));
    assert_eq!(n.role(), Role::Follower);
    // Released, it campaigns again.
    n.handle(at(5002), Input::Admin(AdminRequest::Standby(false)));
    let (_, out) = tick_until_prevote(&mut n);
    assert!(!out.is_empty());
}

#[test]
fn strict_mode_waits_out_the_kernel_lifetime_before_raising_the_vip() {
    let timing = Timing { strict_vip_handover: true, ..Timing::default() };
    let mut n1 = setup(1, [2, 3], timing.clone(), HardState::default(), Position::default());
    let t0 = elect_node1(&mut n1);
    // Keep the lease alive with acks; the VIP comes only after 1 s + 250 ms.
    let wait_end = t0.add(timing.vip_lifetime).add(timing.kernel_expiry_slack);
    let mut now = t0;
    let mut added_at = None;
    while added_at.is_none() && now < t0.add(Duration::from_secs(3)) {
        now = n1.next_deadline();
        let out = n1.handle(now, Input::Tick);
        for (_, m) in sends(&out) {
            if let Body::Heartbeat { round } = m.body {
                let o = n1.handle(now, msg(2, 1, Body::HeartbeatAck { round }));
                if o.contains(&Output::Vip(VipAction::Add)) {
                    added_at = Some(now);
                }
            }
        }
        if out.contains(&Output::Vip(VipAction::Add)) {
            added_at = Some(now);
        }
    }
    assert_eq!(added_at, Some(wait_end));
}

#[test]
fn messages_from_strangers_change_nothing() {
    let mut n = node(1, HardState::default());
    let before = n.status(at(800));
    let out = n.handle(at(800), msg(9, 50, Body::Heartbeat { round: 1 }));
    assert!(sends(&out).is_empty(), "no reply to a stranger: {out:?}");
    assert_eq!(n.epoch(), 0);
    assert_eq!(n.status(at(800)).leader, before.leader);
}

#[test]
fn a_vip_conflict_counts_only_while_holding_and_fades() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    let out = n1.handle(t0, Input::VipConflict { mac: [2, 0, 0, 0, 0, 9] });
    assert!(out.iter().all(|o| !matches!(o, Output::Notice(Notice::VipConflict { .. }))), "not held yet");
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    let out = n1.handle(t0, Input::VipConflict { mac: [2, 0, 0, 0, 0, 9] });
    assert!(out.contains(&Output::Notice(Notice::VipConflict { mac: [2, 0, 0, 0, 0, 9] })));
    assert_eq!(n1.status(t0).vip_conflict, Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(n1.status(t0.add(Duration::from_secs(61))).vip_conflict, None);
}

#[test]
fn switchover_refuses_a_standby_target_and_keeps_the_lease() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    n1.handle(t0, msg(2, 1, Body::Ping { position: Position::default(), standby: true, ready: true }));
    let out = n1.handle(t0, Input::Admin(AdminRequest::Switchover { to: Some(2) }));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Notice(Notice::AdminRefused { reason }) if reason.contains("standby"))));
    assert!(!out.iter().any(|o| matches!(o, Output::Vip(VipAction::Remove))));
    assert_eq!(n1.role(), Role::Leader);
    assert!(n1.lease_until(t0).is_some());
}

#[test]
fn a_peer_that_is_not_ready_is_never_a_switchover_target() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    let ahead = Position { epoch: 1, seq: 9 };
    n1.handle(t0, msg(2, 1, Body::Ping { position: ahead, standby: false, ready: false }));
    n1.handle(t0, msg(3, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    // Named: refused with the reason, the lease kept.
    let out = n1.handle(t0, Input::Admin(AdminRequest::Switchover { to: Some(2) }));
    assert_eq!(
        out,
        vec![Output::Notice(Notice::AdminRefused {
            reason: "node 2 is not ready to take over (its readiness check fails)".into()
        })]
    );
    assert_eq!(n1.role(), Role::Leader);
    // Unnamed: the ready peer, though the other is further ahead.
    let out = n1.handle(t0, Input::Admin(AdminRequest::Switchover { to: None }));
    assert!(out.contains(&Output::Vip(VipAction::Remove)), "{out:?}");
    let out = n1.handle(t0, Input::VipDone { action: VipAction::Remove, ok: true });
    assert_eq!(sends(&out), vec![(3, Message { from: 1, epoch: 1, body: Body::TimeoutNow })]);
}

#[test]
fn the_readiness_told_to_the_core_goes_out_in_every_ping() {
    let mut n2 = node(2, HardState::default());
    let t = at(50);
    n2.handle(t, Input::TakeoverReady(false));
    assert!(!n2.status(t).ready);
    let pings = |out: &[Output]| -> Vec<bool> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { msg: Message { body: Body::Ping { ready, .. }, .. }, .. } => Some(*ready),
                _ => None,
            })
            .collect()
    };
    assert_eq!(pings(&n2.handle(at(10_000), Input::Tick)), vec![false, false]);
    n2.handle(at(10_000), Input::TakeoverReady(true));
    assert_eq!(pings(&n2.handle(at(20_000), Input::Tick)), vec![true, true]);
}

#[test]
fn after_any_tick_the_next_deadline_is_in_the_future() {
    // Strict mode once had a deadline that stayed in the past after the
    // wait ended, and a timer-first loop then never read messages.
    let timing = Timing { strict_vip_handover: true, ..Timing::default() };
    let mut n1 = setup(1, [2, 3], timing, HardState::default(), Position::default());
    let t0 = elect_node1(&mut n1);
    let mut now = t0;
    for _ in 0..500 {
        let out = n1.handle(now, Input::Tick);
        for (_, m) in sends(&out) {
            if let Body::Heartbeat { round } = m.body {
                n1.handle(now, msg(2, 1, Body::HeartbeatAck { round }));
            }
        }
        if out.contains(&Output::Vip(VipAction::Add)) {
            n1.handle(now, Input::VipDone { action: VipAction::Add, ok: true });
        }
        let next = n1.next_deadline();
        assert!(next > now, "deadline {next:?} not after {now:?}");
        now = next;
    }
    assert!(n1.status(now).vip_held);
}

#[test]
fn a_higher_epoch_does_not_end_stickiness() {
    // Review finding: a failed candidate's ping at a higher epoch used to
    // clear the follower's memory of its leader, letting it vote inside
    // the leader's lease.
    let mut n2 = node(2, HardState { epoch: 1, voted_for: Some(1), standby: false });
    n2.handle(at(1000), msg(1, 1, Body::Heartbeat { round: 3 }));
    n2.handle(at(1010), msg(3, 2, Body::Ping { position: Position::default(), standby: false, ready: true }));
    assert_eq!(n2.epoch(), 2, "the higher epoch is adopted");
    let out = n2.handle(at(1020), msg(3, 3, Body::PreVote { position: Position::default() }));
    assert_eq!(sends(&out)[0].1.body, Body::PreVoteReply { granted: false });
    let out = n2.handle(at(1030), msg(3, 3, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: false });
    assert_eq!(n2.epoch(), 2);
    let out = n2.handle(at(1400), msg(3, 3, Body::Vote { position: Position::default(), transfer: false }));
    assert_eq!(sends(&out)[0].1.body, Body::VoteReply { granted: true }, "after the window it votes");
}

#[test]
fn an_ack_of_round_zero_renews_nothing() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    let out = n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 0 }));
    assert!(!out.contains(&Output::Vip(VipAction::Add)));
    assert_eq!(n1.lease_until(t0), None);
}

#[test]
fn the_last_epoch_is_refused_and_never_overflows() {
    let mut n2 = node(2, HardState { epoch: u64::MAX - 1, voted_for: None, standby: false });
    n2.handle(at(800), msg(1, u64::MAX, Body::Ping { position: Position::default(), standby: false, ready: true }));
    assert_eq!(n2.epoch(), u64::MAX - 1, "a message at the last epoch is refused");
    // Replies at the last epoch are refused too, so no election reaches it.
    let (now, _) = tick_until_prevote(&mut n2);
    n2.handle(now, msg(1, u64::MAX, Body::PreVoteReply { granted: true }));
    assert_eq!(n2.epoch(), u64::MAX - 1);
    // A node whose persisted epoch is the last one never campaigns, and
    // nothing overflows.
    let mut n3 = node(3, HardState { epoch: u64::MAX, voted_for: None, standby: false });
    for _ in 0..100 {
        let now = n3.next_deadline();
        let out = n3.handle(now, Input::Tick);
        assert!(!sends(&out).iter().any(|(_, m)| matches!(m.body, Body::PreVote { .. } | Body::Vote { .. })));
    }
    assert_eq!(n3.epoch(), u64::MAX);
}

#[test]
fn a_node_whose_vip_removal_failed_does_not_vote() {
    // Review finding: after losing its lease with a failed Remove, a live
    // node could vote a new leader in while the VIP was still on its
    // interface. It refuses until the removal succeeds or the kernel
    // lifetime has run out.
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    n1.handle(t0, Input::VipDone { action: VipAction::Add, ok: true });
    let out = n1.handle(t0, msg(3, 2, Body::HeartbeatAck { round: 0 }));
    assert!(out.contains(&Output::Vip(VipAction::Remove)));
    n1.handle(t0, Input::VipDone { action: VipAction::Remove, ok: false });
    let vote = |n: &mut Node, t: Instant| {
        let out = n.handle(t, msg(3, 2, Body::Vote { position: Position::default(), transfer: false }));
        sends(&out).iter().find(|(_, m)| matches!(m.body, Body::VoteReply { .. })).map(|(_, m)| m.body.clone())
    };
    assert_eq!(vote(&mut n1, t0.add(Duration::from_millis(10))), Some(Body::VoteReply { granted: false }));
    // The kernel lifetime (1 s) plus slack after the Add: the VIP is gone.
    let after = t0.add(Duration::from_millis(1251));
    assert_eq!(vote(&mut n1, after), Some(Body::VoteReply { granted: true }));
}

#[test]
fn standby_stops_a_campaign_and_two_standby_nodes_are_refused() {
    let mut n1 = node(1, HardState::default());
    let (now, _) = tick_until_prevote(&mut n1);
    n1.handle(now, Input::Admin(AdminRequest::Standby(true)));
    assert_eq!(n1.role(), Role::Follower);
    let out = n1.handle(now, msg(2, 1, Body::PreVoteReply { granted: true }));
    assert!(!sends(&out).iter().any(|(_, m)| matches!(m.body, Body::Vote { .. })));

    let mut n3 = node(3, HardState::default());
    n3.handle(at(10), msg(1, 0, Body::Ping { position: Position::default(), standby: true, ready: true }));
    let out = n3.handle(at(11), Input::Admin(AdminRequest::Standby(true)));
    assert!(out.iter().any(|o| matches!(o, Output::Notice(Notice::AdminRefused { reason }) if reason.contains("node 1 is already in standby"))));
    assert!(!n3.status(at(11)).standby);
}

#[test]
fn a_leader_that_cannot_raise_the_vip_retries_calmly_then_hands_over() {
    let mut n1 = node(1, HardState::default());
    let t0 = elect_node1(&mut n1);
    n1.handle(t0, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    let mut now = t0;
    let mut adds = Vec::new();
    let mut handed_over = false;
    // Keep the lease alive, fail every Add, and see what the node does.
    for _ in 0..200 {
        let mut out = n1.handle(now, Input::Tick);
        let mut i = 0;
        while i < out.len() {
            let more = match &out[i] {
                Output::Send { to: 2, msg: m } if matches!(m.body, Body::Heartbeat { .. }) => {
                    let Body::Heartbeat { round } = m.body else { unreachable!() };
                    n1.handle(now, msg(2, 1, Body::HeartbeatAck { round }))
                }
                Output::Send { to: 2, msg: m } if m.body == Body::TimeoutNow => {
                    handed_over = true;
                    vec![]
                }
                Output::Vip(VipAction::Add) => {
                    adds.push(now);
                    n1.handle(now, Input::VipDone { action: VipAction::Add, ok: false })
                }
                Output::Vip(a) => n1.handle(now, Input::VipDone { action: *a, ok: true }),
                _ => vec![],
            };
            out.extend(more);
            i += 1;
        }
        if handed_over {
            break;
        }
        n1.handle(now, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
        now = n1.next_deadline();
    }
    assert!(handed_over, "no handover after {} failed adds", adds.len());
    assert_eq!(adds.len(), 3);
    assert!(adds.windows(2).all(|w| w[1].since(w[0]) >= Duration::from_millis(100)), "adds retried too fast: {adds:?}");
    assert_eq!(n1.role(), Role::Follower);
}

#[test]
fn the_vip_waits_for_the_service_and_goes_when_the_service_does() {
    // Issue 11: attach, check, mount, then raise the VIP.
    let mut n1 = node(1, HardState::default());
    n1.handle(at(0), Input::ServiceReady(false));
    let now = elect_node1(&mut n1);
    let out = n1.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    assert!(!out.iter().any(|o| matches!(o, Output::Vip(_))), "no VIP before the service: {out:?}");
    assert!(n1.lease_until(now).is_some(), "the lease runs meanwhile");
    let later = now.add(Duration::from_millis(300));
    let out = n1.handle(later, Input::ServiceReady(true));
    assert_eq!(
        out.iter().filter(|o| matches!(o, Output::Vip(_))).cloned().collect::<Vec<_>>(),
        vec![Output::Vip(VipAction::Add)]
    );
    n1.handle(later, Input::VipDone { action: VipAction::Add, ok: true });
    assert!(n1.status(later).vip_held);
    // The service going away releases the VIP; the node keeps leading.
    let out = n1.handle(later, Input::ServiceReady(false));
    assert_eq!(
        out.iter().filter(|o| matches!(o, Output::Vip(_))).cloned().collect::<Vec<_>>(),
        vec![Output::Vip(VipAction::Remove)]
    );
    assert_eq!(n1.role(), Role::Leader);
}

//! Exact commands for events: the host's ordering rules, step by step.
//!
//! Each test drives one host by hand (peers played by the test) and asserts
//! the precise commands that come out, in order: the volume's view after
//! every core step, VIP actions tagged with the lease they were decided
//! under, TimeoutNow held until the volume confirms its step-down (and
//! dropped without it), fitness from the replica and the sync watch.

use triad_core::{
    AdminRequest, Body, HardState, Instant, Membership, Message, Notice, Position, Role, Setup, Timing, VipAction,
};
use triad_host::{
    admin_refusal, vip_allowed, Command, Event, FenceOp, FenceResult, Host, HostNotice, VipResult, VolumeStart,
};
use triad_repl::View;

const MS: u64 = 1000;

fn at(ms: u64) -> Instant {
    Instant(ms * MS)
}

fn msg(from: u8, epoch: u64, body: Body) -> Event {
    Event::Peer(Message { from, epoch, body })
}

fn setup(hard: HardState) -> Setup {
    Setup { id: 1, peers: [2, 3], timing: Timing::default(), hard, position: Position::default(), now: at(0), seed: 1 }
}

fn volume() -> Option<VolumeStart> {
    Some(VolumeStart { position: Position::default(), electable: true, membership: Membership::default() })
}

/// Commands without the periodic liveness pings.
fn no_pings(cmds: Vec<Command>) -> Vec<Command> {
    cmds.into_iter()
        .filter(|c| !matches!(c, Command::Send { msg, .. } if matches!(msg.body, Body::Ping { .. })))
        .collect()
}

/// Ticks until node 1 has sent PreVotes; returns that instant.
fn tick_until_prevote(h: &mut Host) -> Instant {
    let mut now = at(0);
    for _ in 0..1000 {
        now = h.next_deadline().max(now);
        let out = h.handle(now, Event::Tick);
        if out.iter().any(|c| matches!(c, Command::Send { msg, .. } if matches!(msg.body, Body::PreVote { .. }))) {
            return now;
        }
    }
    panic!("no prevote");
}

/// Node 1 wins epoch 1 (node 2 grants its PreVote and vote); returns the
/// time and the commands of the winning vote (leader, no lease yet).
fn elect(h: &mut Host) -> (Instant, Vec<Command>) {
    let now = tick_until_prevote(h);
    h.handle(now, msg(2, 1, Body::PreVoteReply { granted: true }));
    let out = h.handle(now, msg(2, 1, Body::VoteReply { granted: true }));
    assert_eq!(h.node().role(), Role::Leader);
    (now, out)
}

/// Drives node 1 to leadership (node 2 votes) and through its first
/// acknowledged heartbeat (the lease) and VIP Add; returns the time and
/// the lease end.
fn lead(h: &mut Host) -> (Instant, Instant) {
    let (now, _) = elect(h);
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    let lease = h.node().lease_until(now).expect("a lease");
    assert!(out.contains(&Command::Vip { action: VipAction::Add, lease_until: Some(lease) }), "{out:?}");
    h.handle(now, Event::VipDone { action: VipAction::Add, result: VipResult::Done });
    (now, lease)
}

#[test]
fn at_start_the_volume_gets_the_empty_view_and_a_learner_never_votes() {
    let start = VolumeStart { membership: Membership::Learner, ..volume().unwrap() };
    let (mut h, out) = Host::new(setup(HardState::default()), Some(start));
    assert_eq!(no_pings(out), vec![Command::VolumeView(View { epoch: 0, leader: None, lease_until: None })]);
    // Past the quiet period after start, a voter would grant this vote.
    let out = h.handle(at(5_000), msg(2, 1, Body::Vote { position: Position::default(), transfer: false }));
    let granted =
        out.iter().any(|c| matches!(c, Command::Send { msg, .. } if msg.body == Body::VoteReply { granted: true }));
    assert!(!granted, "a learner voted: {out:?}");
    // Without a volume there is no view to hand over.
    let (_, out) = Host::new(setup(HardState::default()), None);
    assert_eq!(no_pings(out), vec![]);
}

#[test]
fn every_core_step_that_changes_leadership_hands_the_volume_its_view_after_the_persist() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let now = tick_until_prevote(&mut h);
    let out = no_pings(h.handle(now, msg(2, 1, Body::PreVoteReply { granted: true })));
    // Candidate: epoch 1 persisted, votes asked, then the view of epoch 1
    // (no leader known) for the volume.
    assert_eq!(out[0], Command::Persist(HardState { epoch: 1, voted_for: Some(1), standby: false }));
    let vote = out.iter().position(|c| matches!(c, Command::Send { msg, .. } if matches!(msg.body, Body::Vote { .. })));
    assert!(vote.is_some_and(|v| v > 0), "votes asked after the persist: {out:?}");
    assert_eq!(out.last(), Some(&Command::VolumeView(View { epoch: 1, leader: None, lease_until: None })));
    // Leader, no lease yet: the volume knows it leads but may not acknowledge.
    let out = h.handle(now, msg(2, 1, Body::VoteReply { granted: true }));
    assert_eq!(out.last(), Some(&Command::VolumeView(View { epoch: 1, leader: Some(1), lease_until: None })));
    // The first acknowledged heartbeat: a lease, the VIP under it, and the
    // lease end in the view.
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    let lease = h.node().lease_until(now).expect("lease");
    assert_eq!(
        out,
        vec![
            Command::Vip { action: VipAction::Add, lease_until: Some(lease) },
            Command::VolumeView(View { epoch: 1, leader: Some(1), lease_until: Some(lease) }),
        ]
    );
    // An unchanged view is not handed over again.
    let out = h.handle(now, Event::VolumePosition(Position { epoch: 1, seq: 1 }));
    assert_eq!(out, vec![]);
}

#[test]
fn vip_actions_carry_their_lease_and_a_refused_add_counts_as_failed() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, _) = elect(&mut h);
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    let lease = h.node().lease_until(now).expect("lease");
    assert!(out.contains(&Command::Vip { action: VipAction::Add, lease_until: Some(lease) }));
    // The executor found the lease over when it got to the Add: the core
    // hears a failed Add (and retries or cleans up on its own clock).
    let out = h.handle(lease, Event::VipDone { action: VipAction::Add, result: VipResult::LeaseEnded });
    assert!(
        !out.iter().any(|c| matches!(c, Command::Vip { action: VipAction::Add | VipAction::Renew, .. })),
        "{out:?}"
    );
    assert!(out.contains(&Command::Notice(HostNotice::Core(Notice::VipFailed { action: VipAction::Add }))), "{out:?}");
    // A Renew decided under the lease may not be used once the core gave
    // the lease up (here: stepped down for a stuck sync).
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, lease) = lead(&mut h);
    assert_eq!(h.vip_lease(Some(lease), now), Some(lease));
    h.handle(now, Event::SyncStalled(true));
    assert_eq!(h.vip_lease(Some(lease), now), None);
    // The executor's rule, in one place for the runtime and the simulator.
    assert!(vip_allowed(VipAction::Renew, Some(lease), Instant(lease.0 - 1)));
    assert!(!vip_allowed(VipAction::Renew, Some(lease), lease), "the lease end is exclusive");
    assert!(!vip_allowed(VipAction::Announce, None, at(0)));
    assert!(!vip_allowed(VipAction::Add, None, at(0)));
    assert!(vip_allowed(VipAction::Remove, None, at(0)));
}

#[test]
fn timeout_now_waits_for_the_volumes_confirmation_and_everything_else_waits_with_it() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, _) = lead(&mut h);
    h.handle(now, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    let out = h.handle(now, Event::Admin(AdminRequest::Switchover { to: Some(2) }));
    assert_eq!(admin_refusal(&out), None);
    assert!(out.contains(&Command::Vip { action: VipAction::Remove, lease_until: None }), "{out:?}");
    let out = no_pings(h.handle(now, Event::VipDone { action: VipAction::Remove, result: VipResult::Done }));
    // The volume first: the step-down view (no lease), to be confirmed.
    assert_eq!(out, vec![Command::ConfirmStepDown(View { epoch: 1, leader: None, lease_until: None })]);
    assert!(h.handing_over());
    // Events meanwhile wait (the runtime is blocked in the confirmation).
    assert_eq!(
        h.handle(now, msg(3, 1, Body::Ping { position: Position::default(), standby: false, ready: true })),
        vec![]
    );
    assert_eq!(h.handle(now, Event::SyncStalled(false)), vec![]);
    // Confirmed: the TimeoutNow goes, then what waited.
    let out = h.handle(now, Event::StepDownConfirmed(true));
    assert_eq!(out[0], Command::Send { to: 2, msg: Message { from: 1, epoch: 1, body: Body::TimeoutNow } });
    assert!(!h.handing_over());
}

#[test]
fn without_the_volumes_confirmation_no_timeout_now_is_sent() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, _) = lead(&mut h);
    h.handle(now, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    h.handle(now, Event::Admin(AdminRequest::Switchover { to: Some(2) }));
    let out = h.handle(now, Event::VipDone { action: VipAction::Remove, result: VipResult::Done });
    assert!(out.iter().any(|c| matches!(c, Command::ConfirmStepDown(_))), "{out:?}");
    let out = h.handle(now, Event::StepDownConfirmed(false));
    assert!(!out.iter().any(|c| matches!(c, Command::Send { msg, .. } if msg.body == Body::TimeoutNow)), "{out:?}");
    assert_eq!(out[0], Command::Notice(HostNotice::HandoverWithoutTimeoutNow { to: 2 }));
    assert!(!h.handing_over());
    assert_eq!(h.node().lease_until(now), None, "the lease stays given up");
    // A late confirmation changes nothing.
    assert!(!h.handle(now, Event::StepDownConfirmed(true)).iter().any(|c| matches!(c, Command::Send { .. })));
}

#[test]
fn without_a_volume_timeout_now_goes_at_once() {
    let (mut h, _) = Host::new(setup(HardState::default()), None);
    let (now, _) = lead(&mut h);
    h.handle(now, msg(2, 1, Body::Ping { position: Position::default(), standby: false, ready: true }));
    h.handle(now, Event::Admin(AdminRequest::Switchover { to: Some(2) }));
    let out = h.handle(now, Event::VipDone { action: VipAction::Remove, result: VipResult::Done });
    assert!(
        out.contains(&Command::Send { to: 2, msg: Message { from: 1, epoch: 1, body: Body::TimeoutNow } }),
        "{out:?}"
    );
}

#[test]
fn a_stuck_sync_makes_the_leader_step_down_and_a_returned_one_makes_it_fit_again() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, _) = lead(&mut h);
    let out = h.handle(now, Event::SyncStalled(true));
    assert_eq!(out[0], Command::Notice(HostNotice::Fitness { fit: false, sync_stalled: true }));
    assert!(out.contains(&Command::Notice(HostNotice::Core(Notice::SteppedDownUnfit { epoch: 1 }))), "{out:?}");
    assert!(out.contains(&Command::Vip { action: VipAction::Remove, lease_until: None }), "{out:?}");
    assert_eq!(out.last(), Some(&Command::VolumeView(View { epoch: 1, leader: None, lease_until: None })));
    assert_eq!(h.node().role(), Role::Follower);
    // Looked at again, still stuck: nothing new.
    assert_eq!(h.handle(now, Event::SyncStalled(true)), vec![]);
    // The replica's own verdict does not override the stuck sync...
    assert_eq!(h.handle(now, Event::VolumeElectable(true)), vec![]);
    // ...and the sync's return does, once.
    assert_eq!(
        h.handle(now, Event::SyncStalled(false)),
        vec![Command::Notice(HostNotice::Fitness { fit: true, sync_stalled: false })]
    );
    let out = h.handle(now, Event::VolumeElectable(false));
    assert_eq!(out, vec![Command::Notice(HostNotice::Fitness { fit: false, sync_stalled: false })]);
}

/// Issue 10: on a node with a fence, the VIP's element is granted right
/// after the Add (so the gratuitous ARP that follows the Add's completion
/// is not dropped), with the lease as its deadline; and it is revoked
/// after the Remove when the node steps down.
#[test]
fn the_fence_is_granted_after_the_add_under_the_lease_and_revoked_after_the_remove() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    assert_eq!(h.handle(at(0), Event::FenceInstalled(true)), vec![], "fit already: no change for the core");
    let (now, _) = elect(&mut h);
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    let lease = h.node().lease_until(now).expect("lease");
    assert_eq!(
        out,
        vec![
            Command::Vip { action: VipAction::Add, lease_until: Some(lease) },
            Command::VolumeView(View { epoch: 1, leader: Some(1), lease_until: Some(lease) }),
            Command::Fence(FenceOp::Grant { deadline: lease }),
        ]
    );
    let ttl = lease.since(now);
    let out = h.handle(
        now,
        Event::FenceDone { op: FenceOp::Grant { deadline: lease }, result: FenceResult::Done { ttl }, at: now },
    );
    assert_eq!(out, vec![]);
    assert_eq!(h.fence().end(), Some(lease));
    // The deadline includes the refresh: when the element's life left is
    // down to what a refresh would give it.
    assert!(h.next_deadline() <= lease);
    // A stuck sync: the leader steps down; the VIP goes, then the element.
    h.handle(now, Event::VipDone { action: VipAction::Add, result: VipResult::Done });
    let out = h.handle(now, Event::SyncStalled(true));
    let remove = out.iter().position(|c| *c == Command::Vip { action: VipAction::Remove, lease_until: None });
    let revoke = out.iter().position(|c| *c == Command::Fence(FenceOp::Revoke));
    assert!(remove.is_some() && revoke.is_some() && remove < revoke, "{out:?}");
}

/// Fail closed: a node whose fence could not be installed is unfit to
/// lead, so it never holds the VIP; a fence installed later makes it fit.
#[test]
fn a_node_without_its_fence_does_not_stand_for_election() {
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let out = h.handle(at(0), Event::FenceInstalled(false));
    assert_eq!(out, vec![Command::Notice(HostNotice::Fitness { fit: false, sync_stalled: false })]);
    let mut now = at(0);
    for _ in 0..200 {
        now = h.next_deadline().max(now);
        let out = h.handle(now, Event::Tick);
        assert!(
            !out.iter().any(|c| matches!(c, Command::Send { msg, .. } if matches!(msg.body, Body::PreVote { .. } | Body::Vote { .. }))),
            "an unfenced node campaigned: {out:?}"
        );
    }
    let out = h.handle(now, Event::FenceInstalled(true));
    assert_eq!(out, vec![Command::Notice(HostNotice::Fitness { fit: true, sync_stalled: false })]);
}

/// Issue 11: the PBX starts when the node leads inside its lease, after
/// the VIP and the volume's view; on a step-down it is stopped after the
/// VIP's removal and the step-down view (the VIP and acknowledgements go
/// first, whatever the PBX is doing); a node without `[pbx]` runs none.
#[test]
fn the_pbx_runs_only_while_the_node_leads_and_is_stopped_after_the_vip_goes() {
    use triad_host::{PbxCommand, PbxEvent, PbxTiming};
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    h.enable_pbx(PbxTiming::default());
    let (now, out) = elect(&mut h);
    assert!(!out.iter().any(|c| matches!(c, Command::Pbx(_))), "a leader without a lease runs no PBX: {out:?}");
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    let lease = h.node().lease_until(now).expect("lease");
    assert_eq!(
        out,
        vec![
            Command::Vip { action: VipAction::Add, lease_until: Some(lease) },
            Command::VolumeView(View { epoch: 1, leader: Some(1), lease_until: Some(lease) }),
            Command::Pbx(PbxCommand::Spawn { run: 1 }),
        ]
    );
    let out = h.handle(now, Event::Pbx(PbxEvent::Spawned { run: 1 }));
    assert_eq!(
        out,
        vec![
            Command::Pbx(PbxCommand::Notice(triad_host::pbx::PbxNotice::Started { run: 1 })),
            Command::Pbx(PbxCommand::Probe { run: 1, probe: 1 }),
        ]
    );
    // The probe's timeout is one of the host's deadlines.
    assert!(h.next_deadline() <= now.add(PbxTiming::default().probe_timeout));
    h.handle(now, Event::VipDone { action: VipAction::Add, result: VipResult::Done });
    let out = h.handle(now, Event::SyncStalled(true));
    let remove = out.iter().position(|c| *c == Command::Vip { action: VipAction::Remove, lease_until: None });
    let view = out.iter().position(|c| *c == Command::VolumeView(View { epoch: 1, leader: None, lease_until: None }));
    let stop = out.iter().position(|c| *c == Command::Pbx(PbxCommand::Stop { run: 1 }));
    assert!(remove.is_some() && view.is_some() && stop.is_some(), "{out:?}");
    assert!(remove < stop && view < stop, "the PBX stops after the VIP and the view: {out:?}");
    // Without [pbx], no PBX commands at all.
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    let (now, _) = lead(&mut h);
    assert!(h.pbx().is_none());
    assert!(!h.handle(now, Event::Tick).iter().any(|c| matches!(c, Command::Pbx(_))));
}

/// Issue 11, item 5: the host pets the watchdog while its loop runs and
/// the volume thread reports progress, at most once per interval; without
/// the volume thread's progress it stops; a PBX that will not stop even
/// after SIGKILL of its group makes it stop for good.
#[test]
fn the_watchdog_is_petted_only_while_every_part_progresses_and_never_after_a_pbx_will_not_stop() {
    use core::time::Duration;
    use triad_host::{Critical, PbxCommand, PbxEvent, PbxTiming, WatchdogTiming};
    let timing = WatchdogTiming { pet_interval: Duration::from_millis(1000), stale_after: Duration::from_millis(3000) };
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    h.enable_pbx(PbxTiming::default());
    h.enable_watchdog(timing, true);
    let pets = |out: &[Command]| out.iter().filter(|c| **c == Command::PetWatchdog).count();
    assert_eq!(pets(&h.handle(at(0), Event::Tick)), 0, "the volume thread has not shown progress");
    assert_eq!(h.handle(at(0), Event::Progress(Critical::VolumeThread)), vec![Command::PetWatchdog]);
    assert_eq!(pets(&h.handle(at(500), Event::Progress(Critical::VolumeThread))), 0, "once per interval");
    assert!(h.next_deadline() <= at(1000), "the next pet is one of the host's deadlines");
    assert_eq!(pets(&h.handle(at(1000), Event::Tick)), 1);
    // The volume thread goes quiet: 3 s after its last progress, no pets.
    assert_eq!(pets(&h.handle(at(3500), Event::Tick)), 1);
    assert_eq!(pets(&h.handle(at(4501), Event::Tick)), 0);
    assert_eq!(h.watchdog().map(|w| w.stale(at(4501))), Some(vec![Critical::VolumeThread]));
    assert_eq!(pets(&h.handle(at(4600), Event::Progress(Critical::VolumeThread))), 1);
    // Lead, start the PBX, lose the role, and the PBX will not die.
    let (mut h, _) = Host::new(setup(HardState::default()), volume());
    h.enable_pbx(PbxTiming::default());
    h.enable_watchdog(timing, false);
    let (now, _) = lead(&mut h);
    h.handle(now, Event::Pbx(PbxEvent::Spawned { run: 1 }));
    let out = h.handle(now, Event::SyncStalled(true));
    assert!(out.contains(&Command::Pbx(PbxCommand::Stop { run: 1 })), "{out:?}");
    let stop = PbxTiming::default().stop_timeout + PbxTiming::default().kill_timeout;
    let mut t = now;
    let mut hung = false;
    while t <= now.add(stop).add(Duration::from_secs(1)) {
        t = t.add(Duration::from_millis(250));
        let out = h.handle(t, Event::Tick);
        hung |= out
            .iter()
            .any(|c| matches!(c, Command::Pbx(PbxCommand::Notice(triad_host::pbx::PbxNotice::StopHung { .. }))));
        if hung {
            assert_eq!(pets(&out), 0, "petted in the step that decided to self-fence");
        }
    }
    assert!(hung, "the PBX's stop never gave up");
    assert_eq!(h.watchdog().and_then(|w| w.fenced()), Some(triad_host::SelfFence::PbxWillNotStop));
    assert_eq!(pets(&h.handle(t.add(Duration::from_secs(5)), Event::Tick)), 0, "never again");
}

//! Exact outputs of the host's PBX hand-over and failover readiness (issue
//! 11, items 2 and 7): a PBX that keeps failing on the active node makes
//! it hand the role, drained, to an up-to-date peer whose readiness check
//! passes, and refuse the role until its failures age out or an operator
//! clears them; with no such peer it stays active with an alert.
#![allow(clippy::unwrap_used)]

use triad_core::Role;
use triad_core::{Body, Instant, Message, Position, VipAction};
use triad_host::pbx::{PbxFailure, PbxNotice};
use triad_host::{
    Command, Event, FsCommand::Run, FsStep, Host, HostNotice, PbxCommand, PbxEvent, PbxTiming, Readiness, VipResult,
    PBX_HAND_OVER_RETRY,
};
use PbxCommand::Notice;

mod common;
use common::*;

/// Lets time pass to `until` as a healthy cluster would: node 2 acks
/// every heartbeat, VIP announcements and renewals succeed, a spawned PBX
/// starts and answers its probes. Returns the other commands.
fn advance(h: &mut Host, mut now: Instant, until: Instant) -> Vec<Command> {
    let mut seen = Vec::new();
    let mut pending: Vec<Event> = Vec::new();
    loop {
        let out = match pending.pop() {
            Some(e) => h.handle(now, e),
            None => {
                let next = h.next_deadline();
                if next > until {
                    return seen;
                }
                now = next.max(now);
                h.handle(now, Event::Tick)
            }
        };
        for c in out {
            match c {
                Command::Send { msg: Message { body: Body::Heartbeat { round }, .. }, to: 2 } => {
                    pending.push(msg(2, 1, Body::HeartbeatAck { round }))
                }
                Command::Send { msg: Message { body: Body::Heartbeat { .. }, .. }, .. } => {}
                Command::Vip { action: a @ (VipAction::Announce | VipAction::Renew), .. } => {
                    pending.push(Event::VipDone { action: a, result: VipResult::Done })
                }
                Command::Pbx(PbxCommand::Spawn { run }) => {
                    pending.push(Event::Pbx(PbxEvent::Spawned { run }));
                    seen.push(c);
                }
                Command::Pbx(PbxCommand::Probe { probe, .. }) => {
                    pending.push(Event::Pbx(PbxEvent::ProbeDone { probe, ok: true }))
                }
                Command::PetWatchdog => {}
                Command::VolumeView(_) => {}
                other => seen.push(other),
            }
        }
    }
}

fn ping(from: u8, ready: bool) -> Event {
    msg(from, 1, Body::Ping { position: Position::default(), standby: false, ready })
}

/// Serving, with the PBX's first two runs dead and restarted: the next
/// death is the third in the window. Returns the instant after.
fn failed_twice(h: &mut Host) -> Instant {
    let mut now = serving(h);
    for run in 1..=2 {
        h.handle(now, Event::Pbx(PbxEvent::Exited { run }));
        let later = now.add(ms(1000));
        let out = advance(h, now, later);
        assert!(out.contains(&Command::Pbx(PbxCommand::Spawn { run: run + 1 })), "{out:?}");
        now = later;
    }
    now
}

/// The third death hands the role to node 2 (ready), all steps done;
/// returns the instant.
fn handed_over(h: &mut Host) -> Instant {
    let now = failed_twice(h);
    h.handle(now, ping(2, true));
    h.handle(now, Event::Pbx(PbxEvent::Exited { run: 3 }));
    for e in [Event::Fs(ok(FsStep::Unmount)), Event::Fs(ok(FsStep::Detach))] {
        h.handle(now, e);
    }
    h.handle(now, Event::VipDone { action: VipAction::Remove, result: VipResult::Done });
    h.handle(now, Event::StepDownConfirmed(true));
    assert_eq!(h.node().role(), Role::Follower);
    now
}

fn notices(out: &[Command]) -> Vec<HostNotice> {
    out.iter()
        .filter_map(|c| match c {
            Command::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pbx_that_keeps_dying_hands_the_role_drained_to_a_ready_peer_and_the_node_refuses_it_after() {
    let mut h = host();
    let now = failed_twice(&mut h);
    h.handle(now, ping(2, true));
    let out = h.handle(now, Event::Pbx(PbxEvent::Exited { run: 3 }));
    assert_eq!(
        out,
        vec![
            Command::Pbx(Notice(PbxNotice::Failed { run: 3, why: PbxFailure::Died, in_window: 3 })),
            Command::Pbx(Notice(PbxNotice::HandOverWanted { in_window: 3 })),
            Command::Pbx(PbxCommand::Kill { run: 3 }),
            Command::Pbx(Notice(PbxNotice::Restarting { delay: ms(800) })),
            Command::Notice(HostNotice::PbxHandingOver),
            Command::Notice(HostNotice::Draining),
            Command::Fs(Run(FsStep::Unmount)),
        ],
        "no restart: the service goes down here, the VIP stays until it is"
    );
    assert_eq!(h.node().role(), Role::Leader);
    let out = h.handle(now, Event::Fs(ok(FsStep::Unmount)));
    assert_eq!(fs_runs(&out), vec![FsStep::Detach]);
    let out = h.handle(now, Event::Fs(ok(FsStep::Detach)));
    assert_eq!(vips(&out), vec![VipAction::Remove], "{out:?}");
    let out = h.handle(now, Event::VipDone { action: VipAction::Remove, result: VipResult::Done });
    assert!(matches!(out.last(), Some(Command::ConfirmStepDown(_))), "{out:?}");
    let out = h.handle(now, Event::StepDownConfirmed(true));
    assert_eq!(out[0], Command::Send { to: 2, msg: Message { from: 1, epoch: 1, body: Body::TimeoutNow } });
    assert_eq!(
        notices(&out),
        vec![HostNotice::Fitness { fit: false, sync_stalled: false }],
        "a follower now, it refuses the role: {out:?}"
    );
    assert_eq!(h.node().role(), Role::Follower);
    assert!(!h.readiness().ready);
    assert!(h.readiness().problems.iter().any(|p| p.contains("failed 3 times")), "{:?}", h.readiness());
    assert!(!out.iter().any(|c| matches!(c, Command::Pbx(PbxCommand::Spawn { .. }))), "{out:?}");
}

#[test]
fn a_node_that_handed_over_takes_the_role_again_once_its_failures_age_out() {
    let mut h = host();
    let now = handed_over(&mut h);
    // The first failure happened when `serving` returned: 2 s before.
    let ages_out = now.add(PbxTiming::default().failure_window).0 - 2_000_000;
    // Node 2 is still there and ready (a refusal needs a peer that could lead).
    h.handle(Instant(ages_out - 1), ping(2, true));
    let out = h.handle(Instant(ages_out - 1), Event::Tick);
    assert!(notices(&out).is_empty(), "{out:?}");
    let out = h.handle(Instant(ages_out), Event::Tick);
    assert_eq!(notices(&out), vec![HostNotice::Fitness { fit: true, sync_stalled: false }], "{out:?}");
}

#[test]
fn a_node_refusing_the_role_may_lead_again_when_no_peer_could() {
    let mut h = host();
    let now = handed_over(&mut h);
    assert!(!h.readiness().ready);
    // Node 2, the ready peer, says it is not ready any more (resyncing,
    // say); node 3 was never heard: nobody else could lead.
    let out = h.handle(now, ping(2, false));
    assert_eq!(notices(&out), vec![HostNotice::Fitness { fit: true, sync_stalled: false }], "{out:?}");
    // Ready again: this node steps back.
    let out = h.handle(now, ping(2, true));
    assert_eq!(notices(&out), vec![HostNotice::Fitness { fit: false, sync_stalled: false }], "{out:?}");
}

#[test]
fn an_operator_clears_the_failures_and_the_node_may_lead_again() {
    let mut h = host();
    let now = handed_over(&mut h);
    let out = h.clear_pbx_failures(now);
    assert_eq!(notices(&out), vec![HostNotice::Fitness { fit: true, sync_stalled: false }], "{out:?}");
    assert!(!h.readiness().problems.iter().any(|p| p.contains("failed")), "{:?}", h.readiness());
}

#[test]
fn with_no_ready_peer_the_node_stays_active_with_an_alert_and_hands_over_once_a_peer_is_ready() {
    let mut h = host();
    let now = failed_twice(&mut h);
    h.handle(now, ping(2, false));
    let out = h.handle(now, Event::Pbx(PbxEvent::Exited { run: 3 }));
    let reason = "no reachable, up-to-date peer to hand over to".to_string();
    assert_eq!(
        out,
        vec![
            Command::Pbx(Notice(PbxNotice::Failed { run: 3, why: PbxFailure::Died, in_window: 3 })),
            Command::Pbx(Notice(PbxNotice::HandOverWanted { in_window: 3 })),
            Command::Pbx(PbxCommand::Kill { run: 3 }),
            Command::Pbx(Notice(PbxNotice::Restarting { delay: ms(800) })),
            Command::Notice(HostNotice::PbxHandOverRefused { reason: reason.clone() }),
        ]
    );
    assert_eq!(h.pbx_alert(), Some(reason.as_str()));
    // Supervision goes on: restarted after the backoff, the alert said once.
    let later = now.add(ms(1000));
    let out = advance(&mut h, now, later);
    assert!(out.contains(&Command::Pbx(PbxCommand::Spawn { run: 4 })), "{out:?}");
    assert!(notices(&out).is_empty(), "{out:?}");
    assert_eq!(h.node().role(), Role::Leader);
    // A peer becomes ready: the hand-over is asked again within the retry.
    h.handle(later, ping(2, true));
    let out = advance(&mut h, later, now.add(PBX_HAND_OVER_RETRY));
    assert_eq!(notices(&out), vec![HostNotice::PbxHandingOver, HostNotice::Draining], "{out:?}");
    assert!(out.contains(&Command::Pbx(PbxCommand::Stop { run: 4 })), "{out:?}");
    assert_eq!(h.pbx_alert(), None);
}

#[test]
fn readiness_waits_for_the_first_check_goes_out_in_pings_and_names_its_problems() {
    let mut h = host();
    let out = h.handle(at(1), Event::Tick);
    assert_eq!(notices(&out), vec![HostNotice::Readiness { ready: false }]);
    assert_eq!(h.readiness().problems, vec!["not checked yet".to_string()]);
    let out = h.handle(at(2), Event::ReadinessChecked(vec![]));
    assert_eq!(notices(&out), vec![HostNotice::Readiness { ready: true }]);
    let pings = |out: &[Command]| -> Vec<bool> {
        out.iter()
            .filter_map(|c| match c {
                Command::Send { msg: Message { body: Body::Ping { ready, .. }, .. }, .. } => Some(*ready),
                _ => None,
            })
            .collect()
    };
    let beat = h.next_deadline();
    assert_eq!(pings(&h.handle(beat, Event::Tick)), vec![true, true]);
    let problem = "the PBX's config check failed: exit status 255".to_string();
    let out = h.handle(beat, Event::ReadinessChecked(vec![problem.clone()]));
    assert_eq!(notices(&out), vec![HostNotice::Readiness { ready: false }]);
    assert_eq!(h.readiness().problems, vec![problem.clone()]);
    let out = h.handle(beat, Event::SyncStalled(true));
    assert_eq!(notices(&out), vec![HostNotice::Fitness { fit: false, sync_stalled: true }]);
    assert_eq!(h.readiness().problems, vec![problem, "a disk sync is stuck".to_string()]);
    let next = h.next_deadline();
    assert_eq!(pings(&h.handle(next, Event::Tick)), vec![false, false]);
}

#[test]
fn a_node_without_a_pbx_is_always_ready_and_never_says_otherwise() {
    let setup = triad_core::Setup {
        id: 1,
        peers: [2, 3],
        timing: triad_core::Timing::default(),
        hard: triad_core::HardState::default(),
        position: Position::default(),
        now: at(0),
        seed: 1,
    };
    let (mut h, _) = Host::new(setup, None);
    let out = h.handle(at(1), Event::Tick);
    assert_eq!(notices(&out), vec![]);
    assert_eq!(h.readiness(), Readiness { ready: true, problems: vec![] });
}

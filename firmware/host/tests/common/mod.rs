//! Helpers shared by the host's exact-output tests: a node 1 with a
//! volume, a PBX and a filesystem, brought to leading and serving.
#![allow(dead_code, clippy::unwrap_used)]

use core::time::Duration;

use triad_core::{Body, HardState, Instant, Membership, Message, Position, Role, Setup, Timing, VipAction};
use triad_host::filesystem::{CheckVerdict, StepOutcome};
use triad_host::{
    Command, Event, FsCommand, FsEvent, FsStep, FsTiming, Host, PbxCommand, PbxEvent, PbxTiming, VipResult, VolumeStart,
};

use FsCommand::Run;

pub fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn fs_timing() -> FsTiming {
    FsTiming { retry: ms(1000), down_deadline: ms(5000) }
}

pub fn ok(step: FsStep) -> FsEvent {
    FsEvent { step, outcome: StepOutcome::Done }
}

pub fn checked(v: CheckVerdict) -> FsEvent {
    FsEvent { step: FsStep::Check, outcome: StepOutcome::Checked(v) }
}

pub fn msg(from: u8, epoch: u64, body: Body) -> Event {
    Event::Peer(Message { from, epoch, body })
}

/// Node 1 with a volume, a PBX and a filesystem, at 0.
pub fn host() -> Host {
    let setup = Setup {
        id: 1,
        peers: [2, 3],
        timing: Timing::default(),
        hard: HardState::default(),
        position: Position::default(),
        now: at(0),
        seed: 1,
    };
    let volume = VolumeStart { position: Position::default(), electable: true, membership: Membership::default() };
    let (mut h, _) = Host::new(setup, Some(volume));
    h.enable_pbx(PbxTiming::default());
    assert_eq!(h.enable_filesystem(at(0), fs_timing()), vec![]);
    h
}

/// Elected (node 2 votes), the lease from node 2's ack, the volume serving.
pub fn lead(h: &mut Host) -> Instant {
    let mut now = at(0);
    loop {
        now = h.next_deadline().max(now);
        let out = h.handle(now, Event::Tick);
        if out.iter().any(|c| matches!(c, Command::Send { msg, .. } if matches!(msg.body, Body::PreVote { .. }))) {
            break;
        }
    }
    h.handle(now, msg(2, 1, Body::PreVoteReply { granted: true }));
    h.handle(now, msg(2, 1, Body::VoteReply { granted: true }));
    assert_eq!(h.node().role(), Role::Leader);
    now
}

pub fn fs_runs(out: &[Command]) -> Vec<FsStep> {
    out.iter()
        .filter_map(|c| match c {
            Command::Fs(Run(s)) => Some(*s),
            _ => None,
        })
        .collect()
}

pub fn vips(out: &[Command]) -> Vec<VipAction> {
    out.iter()
        .filter_map(|c| match c {
            Command::Vip { action, .. } => Some(*action),
            _ => None,
        })
        .collect()
}

/// Leads with the filesystem mounted, the VIP held and the PBX running.
pub fn serving(h: &mut Host) -> Instant {
    let now = lead(h);
    let out = h.handle(now, msg(2, 1, Body::HeartbeatAck { round: 1 }));
    assert_eq!(vips(&out), vec![], "no VIP before the mount: {out:?}");
    assert_eq!(fs_runs(&out), vec![], "no attach before the volume serves: {out:?}");
    assert!(!out.iter().any(|c| matches!(c, Command::Pbx(_))), "{out:?}");
    let out = h.handle(now, Event::VolumeServing(true));
    assert_eq!(fs_runs(&out), vec![FsStep::Attach]);
    let out = h.handle(now, Event::Fs(ok(FsStep::Attach)));
    assert_eq!(fs_runs(&out), vec![FsStep::Check]);
    let out = h.handle(now, Event::Fs(checked(CheckVerdict::Clean)));
    assert_eq!(fs_runs(&out), vec![FsStep::Mount]);
    let out = h.handle(now, Event::Fs(ok(FsStep::Mount)));
    // Mount, then the VIP, then the PBX.
    let add = out.iter().position(|c| matches!(c, Command::Vip { action: VipAction::Add, .. }));
    let spawn = out.iter().position(|c| *c == Command::Pbx(PbxCommand::Spawn { run: 1 }));
    assert!(add.is_some() && spawn.is_some() && add < spawn, "{out:?}");
    h.handle(now, Event::VipDone { action: VipAction::Add, result: VipResult::Done });
    h.handle(now, Event::Pbx(PbxEvent::Spawned { run: 1 }));
    h.handle(now, Event::Pbx(PbxEvent::ProbeDone { probe: 1, ok: true }));
    now
}

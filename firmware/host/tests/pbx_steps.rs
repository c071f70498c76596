//! Exact outputs of the PBX's supervision (`triad_host::pbx`), step by
//! step, in the style of `core/tests/node_steps.rs`: every transition of
//! the state machine, with the commands it gives, in order.
#![allow(clippy::unwrap_used)]

use core::time::Duration;

use triad_core::Instant;
use triad_host::pbx::{Pbx, PbxCommand, PbxEvent, PbxFailure, PbxNotice, PbxState, PbxTiming, PbxTimingError};

use PbxCommand::{Kill, Notice, Probe, Spawn, Stop};

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Short, round numbers so every deadline is easy to read.
fn timing() -> PbxTiming {
    PbxTiming {
        probe_interval: ms(1000),
        probe_timeout: ms(500),
        probe_failures: 3,
        start_grace: ms(5000),
        backoff_first: ms(200),
        backoff_max: ms(1000),
        stop_timeout: ms(2000),
        kill_timeout: ms(1000),
        failure_window: ms(60_000),
        failures_to_hand_over: 3,
    }
}

/// Wanted at 0, spawned and answering its first probe at 10 ms: run 1,
/// probe 1 done, the next probe due at 1010.
fn running() -> Pbx {
    let mut p = Pbx::new(timing());
    p.want(at(0), true);
    p.handle(at(10), PbxEvent::Spawned { run: 1 });
    p.handle(at(10), PbxEvent::ProbeDone { probe: 1, ok: true });
    assert_eq!(p.state(), PbxState::Running { run: 1, since: at(10) });
    p
}

#[test]
fn wanted_it_is_spawned_probed_at_once_and_healthy_on_the_first_answer() {
    let mut p = Pbx::new(timing());
    assert_eq!(p.next_deadline(), None, "nothing runs, nothing is due");
    assert_eq!(p.want(at(0), true), vec![Spawn { run: 1 }]);
    assert_eq!(p.state(), PbxState::Starting { run: 1, since: at(0), spawned: false });
    assert_eq!(p.want(at(1), true), vec![], "wanted twice: one process");
    assert_eq!(
        p.handle(at(10), PbxEvent::Spawned { run: 1 }),
        vec![Notice(PbxNotice::Started { run: 1 }), Probe { run: 1, probe: 1 }]
    );
    assert_eq!(p.next_deadline(), Some(at(510)), "the probe's timeout");
    assert_eq!(
        p.handle(at(12), PbxEvent::ProbeDone { probe: 1, ok: true }),
        vec![Notice(PbxNotice::Healthy { run: 1 })]
    );
    assert_eq!(p.next_deadline(), Some(at(1012)), "the next probe, an interval after the answer");
    assert_eq!(p.tick(at(1012)), vec![Probe { run: 1, probe: 2 }]);
    assert!(p.fit());
    assert_eq!(p.last_start(), Some(ms(12)), "from the spawn command to the first answer");
}

/// A PBX that is not up yet (its port closed: the probe fails at once) is
/// probed again after `START_PROBE_INTERVAL`, not a whole interval later:
/// it is usually up in milliseconds.
#[test]
fn a_starting_pbx_is_probed_again_soon_until_it_answers() {
    use triad_host::pbx::START_PROBE_INTERVAL;
    let mut p = Pbx::new(timing());
    p.want(at(0), true);
    p.handle(at(0), PbxEvent::Spawned { run: 1 });
    // Not answering yet: no failure while starting.
    assert_eq!(p.handle(at(1), PbxEvent::ProbeDone { probe: 1, ok: false }), vec![]);
    let again = at(1).add(START_PROBE_INTERVAL);
    assert_eq!(p.next_deadline(), Some(again));
    assert_eq!(p.tick(Instant(again.0 - 1)), vec![], "not due yet");
    assert_eq!(p.tick(again), vec![Probe { run: 1, probe: 2 }]);
    assert_eq!(
        p.handle(again, PbxEvent::ProbeDone { probe: 2, ok: true }),
        vec![Notice(PbxNotice::Healthy { run: 1 })]
    );
}

#[test]
fn one_that_never_answers_within_the_grace_is_stopped_and_started_again_after_a_backoff() {
    let mut p = Pbx::new(timing());
    p.want(at(0), true);
    p.handle(at(0), PbxEvent::Spawned { run: 1 });
    // Probes at 0, 520 (timed out at 500, the next 20 ms later), 1040, ...
    assert_eq!(p.tick(at(500)), vec![]);
    assert_eq!(p.tick(at(520)), vec![Probe { run: 1, probe: 2 }]);
    assert_eq!(p.tick(at(1020)), vec![]);
    assert_eq!(p.tick(at(1040)), vec![Probe { run: 1, probe: 3 }]);
    assert_eq!(
        p.tick(at(5000)),
        vec![Notice(PbxNotice::Failed { run: 1, why: PbxFailure::NeverAnswered, in_window: 1 }), Stop { run: 1 },]
    );
    assert_eq!(
        p.handle(at(5100), PbxEvent::Exited { run: 1 }),
        vec![Notice(PbxNotice::Stopped { run: 1 }), Notice(PbxNotice::Restarting { delay: ms(200) })]
    );
    assert_eq!(p.next_deadline(), Some(at(5300)));
    assert_eq!(p.tick(at(5300)), vec![Spawn { run: 2 }]);
}

#[test]
fn a_running_pbx_that_misses_its_probes_in_a_row_is_restarted() {
    let mut p = running();
    assert_eq!(p.tick(at(1010)), vec![Probe { run: 1, probe: 2 }]);
    assert_eq!(
        p.handle(at(1020), PbxEvent::ProbeDone { probe: 2, ok: false }),
        vec![Notice(PbxNotice::ProbeFailed { run: 1, in_a_row: 1 })]
    );
    assert_eq!(p.tick(at(2020)), vec![Probe { run: 1, probe: 3 }]);
    // A timeout is a failed probe, decided at the deadline.
    assert_eq!(p.tick(at(2520)), vec![Notice(PbxNotice::ProbeFailed { run: 1, in_a_row: 2 })]);
    // Its late answer changes nothing.
    assert_eq!(p.handle(at(2600), PbxEvent::ProbeDone { probe: 3, ok: true }), vec![]);
    assert_eq!(p.tick(at(3520)), vec![Probe { run: 1, probe: 4 }]);
    assert_eq!(
        p.handle(at(3530), PbxEvent::ProbeDone { probe: 4, ok: false }),
        vec![
            Notice(PbxNotice::ProbeFailed { run: 1, in_a_row: 3 }),
            Notice(PbxNotice::Failed { run: 1, why: PbxFailure::NotAnswering, in_window: 1 }),
            Stop { run: 1 },
        ]
    );
}

#[test]
fn an_answer_resets_the_misses() {
    let mut p = running();
    p.tick(at(1010));
    p.handle(at(1010), PbxEvent::ProbeDone { probe: 2, ok: false });
    p.tick(at(2010));
    p.handle(at(2010), PbxEvent::ProbeDone { probe: 3, ok: false });
    p.tick(at(3010));
    assert_eq!(p.handle(at(3010), PbxEvent::ProbeDone { probe: 4, ok: true }), vec![]);
    p.tick(at(4010));
    assert_eq!(
        p.handle(at(4010), PbxEvent::ProbeDone { probe: 5, ok: false }),
        vec![Notice(PbxNotice::ProbeFailed { run: 1, in_a_row: 1 })]
    );
}

#[test]
fn a_death_backs_off_doubling_per_failure_in_the_window_up_to_the_cap() {
    let mut p = running();
    let died = |p: &mut Pbx, t: u64, run: u64| p.handle(at(t), PbxEvent::Exited { run });
    assert_eq!(
        died(&mut p, 100, 1),
        vec![
            Notice(PbxNotice::Failed { run: 1, why: PbxFailure::Died, in_window: 1 }),
            Kill { run: 1 },
            Notice(PbxNotice::Restarting { delay: ms(200) }),
        ]
    );
    assert_eq!(p.tick(at(300)), vec![Spawn { run: 2 }]);
    p.handle(at(300), PbxEvent::Spawned { run: 2 });
    let out = died(&mut p, 400, 2);
    assert_eq!(out[0], Notice(PbxNotice::Failed { run: 2, why: PbxFailure::Died, in_window: 2 }));
    assert_eq!(out.last(), Some(&Notice(PbxNotice::Restarting { delay: ms(400) })));
    assert_eq!(p.tick(at(800)), vec![Spawn { run: 3 }]);
    p.handle(at(800), PbxEvent::Spawned { run: 3 });
    // The third failure in the window: hand over, and back off on anyway.
    assert_eq!(
        died(&mut p, 900, 3),
        vec![
            Notice(PbxNotice::Failed { run: 3, why: PbxFailure::Died, in_window: 3 }),
            Notice(PbxNotice::HandOverWanted { in_window: 3 }),
            Kill { run: 3 },
            Notice(PbxNotice::Restarting { delay: ms(800) }),
        ]
    );
    assert!(p.hand_over_wanted() && !p.fit());
    assert_eq!(p.tick(at(1700)), vec![Spawn { run: 4 }], "no peer took over: it keeps restarting");
    p.handle(at(1700), PbxEvent::Spawned { run: 4 });
    let out = died(&mut p, 1800, 4);
    assert_eq!(out.last(), Some(&Notice(PbxNotice::Restarting { delay: ms(1000) })), "capped");
}

#[test]
fn the_hand_over_want_ends_when_its_failures_leave_the_window_or_an_operator_clears_it() {
    let mut p = Pbx::new(PbxTiming { failures_to_hand_over: 1, ..timing() });
    p.want(at(0), true);
    p.handle(at(0), PbxEvent::Spawned { run: 1 });
    p.handle(at(100), PbxEvent::Exited { run: 1 });
    assert!(p.hand_over_wanted());
    assert_eq!(p.next_deadline(), Some(at(300)), "the backoff first");
    p.tick(at(300));
    p.handle(at(300), PbxEvent::Spawned { run: 2 });
    // Probe 1 went to run 1, which died; run 2's first probe is number 2.
    p.handle(at(300), PbxEvent::ProbeDone { probe: 2, ok: true });
    assert_eq!(p.next_deadline(), Some(at(1300)), "the next probe before the window's end");
    p.tick(at(60_099));
    assert!(p.hand_over_wanted(), "still inside the window");
    p.tick(at(60_100));
    assert!(!p.hand_over_wanted() && p.fit(), "the failure left the window");
    // Cleared by an operator.
    p.handle(at(60_200), PbxEvent::Exited { run: 2 });
    assert!(p.hand_over_wanted());
    p.clear();
    assert!(!p.hand_over_wanted() && p.fit());
}

#[test]
fn not_wanted_it_is_stopped_killed_after_the_timeout_and_reported_hung_after_the_kill_timeout() {
    let mut p = running();
    assert_eq!(p.want(at(100), false), vec![Stop { run: 1 }]);
    assert_eq!(p.tick(at(1010)), vec![], "no probes of a stopping PBX");
    assert_eq!(p.next_deadline(), Some(at(2100)));
    assert_eq!(p.tick(at(2100)), vec![Kill { run: 1 }]);
    assert_eq!(p.next_deadline(), Some(at(3100)));
    assert_eq!(p.tick(at(3100)), vec![Notice(PbxNotice::StopHung { run: 1 })]);
    assert_eq!(p.tick(at(9000)), vec![], "said once");
    assert_eq!(p.next_deadline(), None);
    assert_eq!(p.handle(at(9500), PbxEvent::Exited { run: 1 }), vec![Notice(PbxNotice::Stopped { run: 1 })]);
    assert_eq!(p.state(), PbxState::Stopped);
}

#[test]
fn a_stopped_pbx_is_not_counted_as_failed_and_one_wanted_again_starts_after_the_exit() {
    let mut p = running();
    p.want(at(100), false);
    assert_eq!(p.want(at(200), true), vec![], "the old one must exit first");
    assert_eq!(
        p.handle(at(300), PbxEvent::Exited { run: 1 }),
        vec![Notice(PbxNotice::Stopped { run: 1 }), Spawn { run: 2 }]
    );
    assert!(p.fit());
}

#[test]
fn not_wanted_during_a_backoff_nothing_starts() {
    let mut p = running();
    p.handle(at(100), PbxEvent::Exited { run: 1 });
    assert_eq!(p.want(at(150), false), vec![]);
    assert_eq!(p.state(), PbxState::Stopped);
    assert_eq!(p.tick(at(300)), vec![]);
    // A replacement being stopped after a failure, then not wanted: it
    // stays stopped when it exits.
    let mut p = running();
    p.tick(at(1010));
    for probe in 2..=4 {
        p.handle(at(1010), PbxEvent::ProbeDone { probe, ok: false });
        p.tick(at(1010 + 1000 * (probe - 1)));
    }
    assert!(matches!(p.state(), PbxState::Stopping { restart: true, .. }), "{:?}", p.state());
    p.want(at(4000), false);
    assert_eq!(p.handle(at(4100), PbxEvent::Exited { run: 1 }), vec![Notice(PbxNotice::Stopped { run: 1 })]);
    assert_eq!(p.state(), PbxState::Stopped);
}

#[test]
fn a_pbx_that_cannot_be_spawned_makes_the_node_unfit_until_a_spawn_succeeds() {
    let mut p = Pbx::new(timing());
    p.want(at(0), true);
    assert_eq!(
        p.handle(at(1), PbxEvent::SpawnFailed { run: 1 }),
        vec![
            Notice(PbxNotice::Failed { run: 1, why: PbxFailure::CannotStart, in_window: 1 }),
            Notice(PbxNotice::Restarting { delay: ms(200) }),
        ]
    );
    assert!(!p.fit());
    assert_eq!(p.tick(at(201)), vec![Spawn { run: 2 }]);
    p.handle(at(202), PbxEvent::Spawned { run: 2 });
    assert!(p.fit());
}

#[test]
fn reports_about_replaced_processes_and_probes_change_nothing() {
    let mut p = running();
    p.handle(at(100), PbxEvent::Exited { run: 1 });
    p.tick(at(300));
    assert_eq!(p.handle(at(301), PbxEvent::Exited { run: 1 }), vec![], "run 1 is long gone");
    assert_eq!(p.handle(at(301), PbxEvent::Spawned { run: 1 }), vec![]);
    assert_eq!(p.handle(at(301), PbxEvent::ProbeDone { probe: 1, ok: false }), vec![]);
    assert_eq!(p.state(), PbxState::Starting { run: 2, since: at(300), spawned: false });
}

#[test]
fn timing_that_cannot_work_is_refused_naming_the_field() {
    assert_eq!(timing().validate(), Ok(()));
    assert_eq!(PbxTiming::default().validate(), Ok(()));
    assert_eq!(
        PbxTiming { probe_interval: Duration::ZERO, ..timing() }.validate(),
        Err(PbxTimingError::Zero { field: "probe_interval" })
    );
    assert_eq!(
        PbxTiming { probe_failures: 0, ..timing() }.validate(),
        Err(PbxTimingError::Zero { field: "probe_failures" })
    );
    assert_eq!(
        PbxTiming { probe_timeout: ms(1000), ..timing() }.validate(),
        Err(PbxTimingError::ProbeTimeoutTooLong { timeout: ms(1000), interval: ms(1000) })
    );
    assert_eq!(
        PbxTiming { backoff_first: ms(2000), ..timing() }.validate(),
        Err(PbxTimingError::BackoffInverted { first: ms(2000), max: ms(1000) })
    );
    assert_eq!(
        PbxTiming { start_grace: ms(500), ..timing() }.validate(),
        Err(PbxTimingError::GraceTooShort { grace: ms(500), timeout: ms(500) })
    );
    let msg = PbxTiming { probe_timeout: ms(1000), ..timing() }.validate().unwrap_err().to_string();
    assert!(msg.contains("pbx.probe_timeout") && msg.contains("pbx.probe_interval"), "{msg}");
}

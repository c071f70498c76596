//! The data world: the replicated volume (`triad-repl` over in-memory
//! disks with power cuts) under the simulator's faults, with the real core
//! electing. Over a thousand seeds of the scenario mix; proof that the
//! checks bite (glue mutations); the triad-repl bugs the simulator found,
//! as regression tests, and replaced boxes (rule 18's incarnation).
//!
//! `TRIAD_SIM_DATA_SEEDS=20000 cargo test -p triad-sim --test data` runs more.
//!
//! Not found (so not tested here; docs/simulator.md): the triad-repl knob
//! `count_resyncing_peer` (a resyncing peer's `matched` is frozen at what
//! it held before the resync, so counting it adds nothing).

use std::time::Instant as WallClock;
use triad_sim::data::{data_replay_command, run_data, DataCheck, DataMutation, DataScenario};

/// Seeds of the mix by default, split over two tests so both cores work.
const DEFAULT_SEEDS: u64 = 2000;

fn seed_count() -> u64 {
    std::env::var("TRIAD_SIM_DATA_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS)
}

fn failure(seed: u64, sc: &DataScenario, o: &triad_sim::data::DataOutcome) -> Option<String> {
    let v = o.violation.as_ref()?;
    Some(format!(
        "seed {seed} ({}): {v}\n  replay: {}\n  last events:\n    {}",
        o.scenario,
        data_replay_command(seed, sc),
        o.trace_tail[o.trace_tail.len().saturating_sub(30)..].join("\n    ")
    ))
}

fn mix(seeds: std::ops::Range<u64>) {
    let n = seeds.end - seeds.start;
    let started = WallClock::now();
    let mut failures = Vec::new();
    let (mut events, mut acked, mut checks, mut resyncs, mut full_cuts) = (0, 0, 0, 0, 0);
    let mut tolerated = Vec::new();
    for seed in seeds {
        let sc = DataScenario::for_seed(seed);
        let o = run_data(seed, sc.clone(), false);
        events += o.events;
        acked += o.acked;
        checks += o.read_checks;
        resyncs += o.bitmap_resyncs + o.hash_resyncs;
        full_cuts += o.full_power_cuts;
        failures.extend(failure(seed, &sc, &o));
        if let Some((v, bug)) = &o.tolerated {
            tolerated.push(format!("seed {seed} ({}), known bug {}: {v}", o.scenario, &bug[..2]));
        }
    }
    println!(
        "{n} seeds, {events} events, {acked} acknowledged writes, {checks} read checks, {resyncs} block resyncs, {full_cuts} full power cuts, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for t in &tolerated {
        println!("tolerated: {t}");
    }
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn data_mix_keeps_every_invariant_first_half() {
    let n = seed_count();
    mix(0..n / 2);
}

#[test]
fn data_mix_keeps_every_invariant_second_half() {
    let n = seed_count();
    mix(n / 2..n);
}

/// Runs `scenario` with `mutations` from seed 0 until a violation of one of
/// `expect` turns up; fails if none does within `max_seeds`.
fn finds(scenario: &str, mutations: &[DataMutation], expect: &[DataCheck], max_seeds: u64) {
    let mut sc = DataScenario::named(scenario).expect("scenario exists");
    sc.mutations = mutations.to_vec();
    let mut other = Vec::new();
    for seed in 0..max_seeds {
        let o = run_data(seed, sc.clone(), false);
        if let Some(v) = o.violation {
            if expect.contains(&v.check) {
                println!("found after {} seeds: {v}\n  replay: {}", seed + 1, data_replay_command(seed, &sc));
                return;
            }
            other.push(format!("seed {seed}: {v}"));
        }
    }
    panic!("{mutations:?} under {scenario}: no {expect:?} in {max_seeds} seeds; other violations: {other:?}");
}

const LOST_DATA: [DataCheck; 4] =
    [DataCheck::AckedReadable, DataCheck::AckedAfterPowerCut, DataCheck::Diverged, DataCheck::SplitBrain];

#[test]
fn acknowledging_on_submit_loses_writes() {
    finds("steady", &[DataMutation::AckOnSubmit], &[DataCheck::AckedReadable], 5);
}

#[test]
fn a_journal_fsync_that_does_nothing_loses_writes_at_power_cuts() {
    // Read back from the medium after every sync (DurableOnDisk), the
    // skipped fdatasync is found before any write is lost.
    let expect = [LOST_DATA.as_slice(), &[DataCheck::DurableOnDisk]].concat();
    finds("power", &[DataMutation::JournalSyncSkipped], &expect, 300);
}

#[test]
fn a_store_fsync_that_does_nothing_loses_writes_at_power_cuts() {
    finds("power", &[DataMutation::StoreSyncSkipped], &LOST_DATA, 100);
}

#[test]
fn votes_without_the_data_position_elect_a_stale_leader() {
    finds("power", &[DataMutation::NoPositionToCore], &LOST_DATA, 400);
}

#[test]
fn without_the_epoch_fence_stale_appends_reach_committed_records() {
    // Rule 14's split-brain check is the net that catches it.
    finds("leader-kill", &[DataMutation::NoEpochFence], &LOST_DATA, 400);
}

#[test]
fn a_leader_serving_before_its_no_op_commits_loses_writes() {
    // triad-repl knob `Mutations::skip_noop` (rule 8).
    finds("partition", &[DataMutation::ReplSkipNoop], &LOST_DATA, 200);
}

#[test]
fn acknowledging_without_a_peer_loses_writes() {
    // triad-repl knob `Mutations::ack_without_peer` (rule 6).
    finds("power", &[DataMutation::ReplAckWithoutPeer], &LOST_DATA, 100);
}

#[test]
fn appending_without_the_prev_check_splits_the_histories() {
    // triad-repl knob `Mutations::skip_prev_check` (rule 5); rule 14's check catches it.
    finds("leader-kill", &[DataMutation::ReplSkipPrevCheck], &LOST_DATA, 400);
}

#[test]
fn serving_past_the_cores_lease_is_caught() {
    finds("partition", &[DataMutation::LeaseOverrun], &[DataCheck::ServingInLease, DataCheck::OneServing], 100);
}

#[test]
fn a_resyncing_node_that_may_stand_for_election_stalls_the_cluster() {
    finds("leader-kill", &[DataMutation::IgnoreElectable], &[DataCheck::Converged], 100);
}

#[test]
fn a_replica_never_told_of_a_new_leader_stalls_the_cluster() {
    finds("steady", &[DataMutation::NoViewOnLeaderChange], &[DataCheck::Converged], 5);
}

#[test]
fn switchovers_keep_one_serving_node() {
    clean("switchover", 40);
}

// ---- triad-repl bugs found by the simulator (docs/simulator.md, data world) ----

/// Seeds `0..seeds` of scenario `name` hold every invariant.
fn clean(name: &str, seeds: u64) {
    let sc = DataScenario::named(name).expect("scenario exists");
    let mut failures = Vec::new();
    for seed in 0..seeds {
        let o = run_data(seed, sc.clone(), false);
        failures.extend(failure(seed, &sc, &o));
    }
    assert!(failures.is_empty(), "{} seeds of {name} failed:\n{}", failures.len(), failures.join("\n"));
}

fn passes(cases: &[(u64, &str)]) {
    let mut failures = Vec::new();
    for &(seed, name) in cases {
        let mut sc = DataScenario::named(name).expect("scenario exists");
        sc.tolerate_known_bugs = false;
        let o = run_data(seed, sc.clone(), false);
        failures.extend(failure(seed, &sc, &o));
    }
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_node_that_was_itself_block_resynced_resyncs_others_by_hash_below_its_reset_point() {
    // Bug D1 (fixed): such a node rebased a clean bitmap down to a lagging
    // peer's K and bitmap-resynced it without the blocks of (K, point].
    passes(&[(4804, "resync-crash"), (7441, "compaction"), (3455, "chaos"), (9746, "power"), (7500, "resync-crash")]);
}

#[test]
fn a_reordered_resync_message_does_not_restart_the_resync() {
    // Bug D2 (fixed): ResyncAck{n: 0} meant both "nothing in order yet" and
    // "I lost the resync"; ResyncState::Unknown now says the latter.
    clean("resync-restart", 40);
}

#[test]
fn a_replaced_box_is_told_from_the_old_one_by_its_incarnation() {
    // Rule 18's incarnation: before it, the leader took the old box's late
    // replies (a finished resync, its matched and K) for the new box's and
    // bitmap-resynced the blank box from the old box's position.
    passes(&[(78, "blank-disk"), (361, "blank-disk"), (78, "blank-disk-unmarked"), (361, "blank-disk-unmarked")]);
    clean("blank-disk", 40);
    clean("blank-disk-unmarked", 40);
}

#[test]
fn a_replaced_box_cannot_elect_a_peer_missing_acknowledged_writes() {
    // Rule 18's learner: a follower lags, writes commit on the leader and
    // the other follower, that one is replaced by a blank box, the leader
    // dies. The blank box must not vote the lagging node in.
    clean("replace-failover", 30);
}

#[test]
fn a_replaced_box_voting_at_once_loses_acknowledged_writes() {
    finds("replace-failover", &[DataMutation::IgnoreMembership], &LOST_DATA, 5);
}

#[test]
fn figure_8_leaves_the_stores_identical() {
    clean("figure8", 40);
}

#[test]
fn committing_old_epochs_records_loses_them_in_figure_8() {
    // triad-repl knob `Mutations::commit_old_epochs` (rule 6, Figure 8),
    // under the aimed crash sequence of data/figure8.rs.
    finds("figure8", &[DataMutation::ReplCommitOldEpochs], &LOST_DATA, 150);
}

#[test]
fn a_leader_with_a_stuck_journal_disk_steps_down() {
    // Rule 16 through the glue's sync watch (sync_watch.rs).
    clean("disk-stall", 40);
}

#[test]
fn without_the_sync_watch_a_stuck_leader_keeps_leading() {
    finds("disk-stall", &[DataMutation::NoSyncWatch], &[DataCheck::StalledLeader], 20);
}

/// Issue 8: the watch must cover every sync, not only the journal's group
/// commit: a checkpoint or compaction stuck on the store or metadata disk
/// hangs the volume thread just the same.
#[test]
fn a_sync_watch_on_the_journal_only_misses_stuck_store_and_metadata_syncs() {
    finds("disk-stall", &[DataMutation::SyncWatchJournalOnly], &[DataCheck::StalledLeader], 40);
}

#[test]
fn a_replaced_box_with_old_data_is_block_resynced() {
    // Rule 11: a peer found mid-resync (here a replaced box over a disk of
    // old data, marked inconsistent) gets a block resync, even when the
    // leader's journal could replay every record from its K.
    clean("blank-old-data", 40);
}

#[test]
fn catching_up_a_peer_found_mid_resync_by_records_diverges() {
    // triad-repl knob `Mutations::resume_resync_by_records` (rule 11's
    // frozen base); the mix never finds it (docs/simulator.md).
    finds("blank-old-data", &[DataMutation::ReplResumeResyncByRecords], &LOST_DATA, 60);
}

#[test]
fn emptied_journals_keep_their_position_across_restarts() {
    // Rule 10's persisted last-discarded position.
    clean("idle-restart", 60);
}

#[test]
fn an_emptied_journal_that_forgets_its_position_splits_the_histories() {
    // triad-repl knob `Mutations::forget_discarded` (rule 10): a node
    // restarted with an emptied journal at (0, 0) is elected and reuses
    // committed seqs (split brain), or is never caught up (Converged).
    finds("idle-restart", &[DataMutation::ReplForgetDiscarded], &LOST_DATA, 60);
}

#[test]
fn a_calm_cluster_needs_no_block_resync() {
    // In-order links, no faults, a ring 16 times the largest write: every
    // follower keeps up from the journal.
    clean("calm", 40);
}

#[test]
fn a_node_whose_fsync_failed_is_marked_reopened_and_resynced() {
    // Rule 9 with MemDisk failing fdatasyncs as Linux does (the unwritten
    // pages dropped, or kept clean and never written): no acknowledged
    // write lost, the failed node back and identical at the end.
    clean("disk-faults", 400);
}

// ---- the service on the active node (issue 11: PBX, filesystem, watchdog) ----

/// Seeds of each service scenario in `cargo test` (`TRIAD_SIM_SERVICE_SEEDS`
/// runs more).
fn service_seeds() -> u64 {
    std::env::var("TRIAD_SIM_SERVICE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

fn service_clean(names: &[&str]) {
    let started = WallClock::now();
    let seeds = service_seeds();
    let mut failures = Vec::new();
    let (mut faults, mut resets, mut overlap) = (0, 0, 0);
    for name in names {
        let mut sc = DataScenario::named(name).expect("service scenario exists");
        sc.tolerate_known_bugs = false;
        for seed in 0..seeds {
            let o = run_data(seed, sc.clone(), false);
            faults += o.service_faults;
            resets += o.watchdog_resets;
            overlap = overlap.max(o.pbx_overlap);
            failures.extend(failure(seed, &sc, &o));
        }
    }
    println!(
        "{names:?}: {seeds} seeds each, {faults} service faults, {resets} watchdog resets, two PBXs over mounts for at most {} ms (the old one unable to acknowledge, being fenced), in {:.1} s",
        overlap / 1000,
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn pbx_crash_loops_silent_pbxs_and_failing_mounts_keep_one_writer_and_come_back() {
    service_clean(&["pbx-crash-loop", "pbx-silent", "failing-mount", "service-disk-stall"]);
}

#[test]
fn hung_demotions_self_fence_within_the_bound_and_the_service_comes_back() {
    // Unkillable PBXs (D state) and hung unmounts: the box must reset
    // itself (`DemotionBound`), only then (`NeedlessSelfFence`), and two
    // PBXs over the volume only while the old one cannot acknowledge.
    service_clean(&["hung-demotion", "service", "first-format"]);
}

#[test]
fn a_node_refusing_the_role_after_pbx_failures_leaves_some_node_active() {
    clean("pbx-refusal", 300);
}

#[test]
fn host_bugs_found_by_the_service_scenarios_stay_fixed() {
    // Watchdog::next_pet stayed in the past while a pet waited for the
    // volume thread's progress: every service seed spun at start (HostSpin).
    // A node re-elected while its unmount hung led for good with no service
    // and no self-fence (ServiceLive): hung-demotion seed 4, service seed 27.
    // A node elected again while its demotion's unmount ran raised the VIP
    // over the vanishing mount (VipWithoutMount): service seed 299.
    // A PBX hand-over blocked by a drain kept its retry time in the past
    // (HostSpin): pbx-crash-loop seeds 461 and 1289.
    passes(&[
        (0, "pbx-silent"),
        (4, "hung-demotion"),
        (27, "service"),
        (299, "service"),
        (461, "pbx-crash-loop"),
        (1289, "pbx-crash-loop"),
    ]);
}

#[test]
fn a_runtime_that_pets_on_its_own_timer_never_resets_a_hung_demotion() {
    // Mutation `pet-on-timer`: the device is petted whatever the host
    // decided, so a self-fence resets nothing.
    finds("hung-demotion", &[DataMutation::PetOnTimer], &[DataCheck::DemotionBound, DataCheck::ServiceLive], 60);
}

#[test]
fn a_pbx_exit_the_reaper_never_reports_ends_in_a_needless_self_fence() {
    // Mutation `pbx-exit-not-reported`: the host waits for the exit of a
    // stopped PBX that is long gone, declares it hung and self-fences.
    finds("pbx-crash-loop", &[DataMutation::PbxExitNotReported], &[DataCheck::NeedlessSelfFence], 20);
}

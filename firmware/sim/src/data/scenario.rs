//! Scenarios of the data world: geometry, replication tunables, client
//! load and fault rates; plus the glue *mutations* (a supervisor bug
//! emulated around the unmodified core and replica) that show the checks
//! bite.

use super::service::{ServiceFaults, ServiceSpec};
use crate::net::NetConfig;
use core::time::Duration;
use triad_core::Timing;
use triad_repl::ReplConfig;

/// A supervisor (glue) bug, emulated by the data world's driver around the
/// unmodified `triad-core` and `triad-repl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMutation {
    /// The replication epoch fence removed in the driver: an Append from
    /// an older epoch is relabelled with the receiver's epoch and leader,
    /// an AppendReply of an older epoch with the (leading) receiver's
    /// epoch, before they reach the replica.
    NoEpochFence,
    /// The driver tells the client its write is done as soon as the
    /// replica has taken it, without waiting for `Out::WriteDone` (a
    /// write-back cache in front of the replication).
    AckOnSubmit,
    /// The journal disk's fdatasync does nothing: replies and
    /// acknowledgements go out after a `sync` that made nothing durable.
    JournalSyncSkipped,
    /// The data disk's fdatasync does nothing: checkpoints persist K over
    /// block-store data still in the page cache.
    StoreSyncSkipped,
    /// `Out::Position` is never fed to the core: votes compare the
    /// position the node started with.
    NoPositionToCore,
    /// `Out::Electable` is never fed to the core: a node whose store is
    /// being resynced may stand for election.
    IgnoreElectable,
    /// Views that change the epoch or the leader are never handed to the
    /// replica (only lease renewals get through).
    NoViewOnLeaderChange,
    /// The view's lease end is pushed 1 s beyond the core's, and the view
    /// that demotes the node (leader no longer itself, same epoch) is not
    /// delivered: the replica serves past the core's lease.
    LeaseOverrun,
    /// Rule removed inside `triad-repl` (`Mutations::skip_noop`): a new
    /// leader serves before committing its epoch's empty record.
    ReplSkipNoop,
    /// `Mutations::commit_old_epochs`: commit by counting replicas of older
    /// epochs' records (Raft's Figure 8).
    ReplCommitOldEpochs,
    /// `Mutations::count_resyncing_peer`: an inconsistent peer counts
    /// toward commits.
    ReplCountResyncingPeer,
    /// `Mutations::ack_without_peer`: acknowledge once durable on the leader.
    ReplAckWithoutPeer,
    /// `Mutations::skip_prev_check`: followers append without checking `prev` (rule 5).
    ReplSkipPrevCheck,
    /// `Mutations::resume_resync_by_records`: a peer found mid-resync is
    /// caught up by records from its K, not resynced afresh (rule 11's
    /// frozen base).
    ReplResumeResyncByRecords,
    /// `Mutations::forget_discarded`: the last discarded position is not
    /// persisted; an emptied journal restarts at (0, 0) (rule 10).
    ReplForgetDiscarded,
    /// `Mutations::ignore_stream`: replies from before a peer's resync
    /// count after it (issue 8's review).
    ReplIgnoreStream,
    /// `Out::Membership` is never fed to the core (rule 18 removed): a
    /// replaced box votes as a full member from its first message.
    IgnoreMembership,
    /// The glue never looks at its sync watch (rule 16 removed): a leader
    /// with a stuck journal disk keeps its lease.
    NoSyncWatch,
    /// The sync watch as it was before issue 8: around the journal's group
    /// commit only, so a hung store or metadata sync (a checkpoint,
    /// compaction) leaves a stuck leader fit.
    SyncWatchJournalOnly,
    /// Service scenarios: the runtime pets the watchdog on a timer of its
    /// own (every quarter of the stall limit), whatever the host decided:
    /// a self-fence no longer resets the box.
    PetOnTimer,
    /// Service scenarios: the reaper never routes the PBX's exit to its
    /// executor: the host waits for an exit that never comes.
    PbxExitNotReported,
}

impl DataMutation {
    /// Every mutation.
    pub const ALL: [DataMutation; 21] = [
        DataMutation::NoEpochFence,
        DataMutation::AckOnSubmit,
        DataMutation::JournalSyncSkipped,
        DataMutation::StoreSyncSkipped,
        DataMutation::NoPositionToCore,
        DataMutation::IgnoreElectable,
        DataMutation::NoViewOnLeaderChange,
        DataMutation::LeaseOverrun,
        DataMutation::ReplSkipNoop,
        DataMutation::ReplCommitOldEpochs,
        DataMutation::ReplCountResyncingPeer,
        DataMutation::ReplAckWithoutPeer,
        DataMutation::ReplSkipPrevCheck,
        DataMutation::ReplResumeResyncByRecords,
        DataMutation::ReplForgetDiscarded,
        DataMutation::ReplIgnoreStream,
        DataMutation::IgnoreMembership,
        DataMutation::NoSyncWatch,
        DataMutation::SyncWatchJournalOnly,
        DataMutation::PetOnTimer,
        DataMutation::PbxExitNotReported,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DataMutation::NoEpochFence => "no-epoch-fence",
            DataMutation::AckOnSubmit => "ack-on-submit",
            DataMutation::JournalSyncSkipped => "journal-sync-skipped",
            DataMutation::StoreSyncSkipped => "store-sync-skipped",
            DataMutation::NoPositionToCore => "no-position-to-core",
            DataMutation::IgnoreElectable => "ignore-electable",
            DataMutation::NoViewOnLeaderChange => "no-view-on-leader-change",
            DataMutation::LeaseOverrun => "lease-overrun",
            DataMutation::ReplSkipNoop => "repl-skip-noop",
            DataMutation::ReplCommitOldEpochs => "repl-commit-old-epochs",
            DataMutation::ReplCountResyncingPeer => "repl-count-resyncing-peer",
            DataMutation::ReplAckWithoutPeer => "repl-ack-without-peer",
            DataMutation::ReplSkipPrevCheck => "repl-skip-prev-check",
            DataMutation::ReplResumeResyncByRecords => "repl-resume-resync-by-records",
            DataMutation::ReplForgetDiscarded => "repl-forget-discarded",
            DataMutation::ReplIgnoreStream => "repl-ignore-stream",
            DataMutation::IgnoreMembership => "ignore-membership",
            DataMutation::NoSyncWatch => "no-sync-watch",
            DataMutation::SyncWatchJournalOnly => "sync-watch-journal-only",
            DataMutation::PetOnTimer => "pet-on-timer",
            DataMutation::PbxExitNotReported => "pbx-exit-not-reported",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<DataMutation> {
        DataMutation::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Everything that defines one data-world run besides its seed.
#[derive(Clone, Debug)]
pub struct DataScenario {
    /// Name used by `--scenario`.
    pub name: &'static str,
    /// Core timing.
    pub timing: Timing,
    /// Network quality (partitions come from the chaos process).
    pub net: NetConfig,
    /// Replication tunables.
    pub repl: ReplConfig,
    /// Volume size in bytes (a multiple of 4096).
    pub volume: u64,
    /// Journal ring bytes (the journal disk is this plus its two 4 KiB headers).
    pub ring: u64,
    /// Dirty-bitmap granularity.
    pub granularity: u64,
    /// Length of the fault phase, µs.
    pub fault_phase: u64,
    /// Chaos process period, µs.
    pub chaos_every: u64,
    /// Per chaos tick: kill a process (page cache kept).
    pub kill_p: f64,
    /// Probability that a kill (or a power cut) is aimed at the serving leader.
    pub leader_bias: f64,
    /// Per chaos tick: power cut of one node (unsynced writes lost, torn, reordered).
    pub power_cut_p: f64,
    /// Per chaos tick: power cut of all three nodes at once.
    pub full_power_cut_p: f64,
    /// How long a killed or cut node stays down, µs.
    pub restart_delay: (u64, u64),
    /// Per chaos tick: a partition change (isolate a node, cut a link, one-way cut).
    pub partition_p: f64,
    /// How long a partition lasts, µs.
    pub partition_len: (u64, u64),
    /// Per chaos tick: a follower goes away (killed or isolated) long
    /// enough for the leader to compact its range away.
    pub long_outage_p: f64,
    /// Length of such an outage, µs.
    pub long_outage: (u64, u64),
    /// When a block resync starts: probability of killing (or cutting the
    /// power of) the resyncing peer or the leader shortly afterwards.
    pub crash_in_resync_p: f64,
    /// Per volume step: a kill right after the journal sync, before any of
    /// its replies or acknowledgements go out (or, half the time, a power
    /// cut right before it).
    pub crash_at_sync_p: f64,
    /// Probability that a journal sync job whose fdatasync failed has its
    /// process killed before the thread takes the result (so before the
    /// node can mark itself failed): the next process must not trust the
    /// page cache.
    pub kill_in_failed_sync_p: f64,
    /// Per chaos tick: an operator switchover.
    pub switchover_p: f64,
    /// Per chaos tick: a node's next journal sync hangs (a stuck disk).
    pub disk_stall_p: f64,
    /// How long such a sync hangs, µs.
    pub disk_stall: (u64, u64),
    /// Per chaos tick: the next fdatasync of one disk (journal, data or
    /// metadata) of a running node fails as on Linux (error once; the
    /// unwritten pages dropped or kept clean, at random). Rule 9: the node
    /// marks itself and is reopened (or rebooted) and fully resynced.
    pub disk_fault_p: f64,
    /// Of those faults, the share that also arms the metadata disk's next
    /// sync, so the failure mark itself may fail (the node reboots).
    pub disk_fault_meta_too: f64,
    /// sync_watch.rs: a sync outstanding longer than this makes the node
    /// unfit to lead, µs.
    pub sync_stall_limit: u64,
    /// After the first convergence, replace one node's three disks by
    /// blank formatted ones (a replaced box that kept its core state) and
    /// converge again.
    pub blank_disk: Option<Blank>,
    /// After the first convergence: isolate a follower, let writes commit
    /// on the other two, replace the other follower by a blank box (disks
    /// and core state) and kill the leader for 2.5 s (rule 18's hazard).
    pub replace_then_failover: bool,
    /// After the first convergence: Raft's Figure 8 as an aimed crash
    /// sequence (`data/figure8.rs`).
    pub figure8: bool,
    /// Links deliver in order, as one TCP connection does (no
    /// reordering; loss and duplication still as `net` says).
    pub fifo_links: bool,
    /// Fail on any block resync: for runs without faults, where every
    /// follower can be caught up from the journal.
    pub no_resync_expected: bool,
    /// Fail when a block resync of a peer is restarted although neither
    /// the peer's process nor its view changed.
    pub strict_resync: bool,
    /// Gap between client write attempts, µs.
    pub write_gap: (u64, u64),
    /// Client writes in flight at most.
    pub max_inflight: usize,
    /// Largest write, in 4 KiB blocks.
    pub max_write_blocks: u64,
    /// After healing, the client keeps writing this long, µs.
    pub write_after_heal: u64,
    /// After the writes stop, all three stores must be identical within this, µs.
    pub converge_bound: u64,
    /// The service on the active node (issue 11): PBX, filesystem and
    /// watchdog enabled in every host, with these timings and faults.
    pub service: Option<ServiceSpec>,
    /// The glue bugs applied.
    pub mutations: Vec<DataMutation>,
    /// Record, but do not fail on, violations in runs where a known
    /// triad-repl bug was set off ([`KNOWN_REPL_BUGS`]).
    pub tolerate_known_bugs: bool,
}

/// triad-repl bugs the data world found and still tolerates (see
/// docs/simulator.md, data world): a run in which the world saw one set
/// off reports its violation as tolerated, so the mix keeps checking
/// everything else while a fix is made. Empty: D1 and D2 are fixed.
pub const KNOWN_REPL_BUGS: [&str; 0] = [];

/// How a replaced box's blank disks are presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blank {
    /// `Replica::format`, then the store marked inconsistent: the node
    /// must be resynced before it counts (the simulator's stand-in for rule
    /// 18, which triad-repl does not implement yet).
    Marked,
    /// `Replica::format` only: K = (0, 0), consistent, as at cluster creation.
    Unmarked,
    /// As `Marked`, over a data disk full of old data: only a block resync
    /// (by hash) makes it the volume; records from K = (0, 0) do not.
    MarkedOldData,
}

/// Replication tunables for a small volume: resync chunks and hash
/// regions of 16 KiB, records of at most 8 KiB (a multiple of the block
/// size, so a record boundary never splits a 4 KiB block), a pipeline
/// shorter than half the ring.
pub fn small_repl(ring: u64) -> ReplConfig {
    let max_record = ((ring / 4 - 64) / 4096 * 4096).clamp(4096, 8192);
    ReplConfig {
        write_timeout: Duration::from_millis(1500),
        retransmit: Duration::from_millis(60),
        max_batch_bytes: 16 << 10,
        max_inflight_bytes: ring / 2,
        max_record,
        resync_rate: 2 << 20,
        resync_chunk: 16 << 10,
        region: 16 << 10,
        peer_timeout: Duration::from_millis(500),
        compact_below_free_pct: 50,
        mutations: Default::default(),
    }
}

impl DataScenario {
    fn base(name: &'static str) -> DataScenario {
        let ring = 64 << 10;
        DataScenario {
            name,
            timing: Timing::default(),
            net: NetConfig::default(),
            repl: small_repl(ring),
            volume: 512 << 10,
            ring,
            granularity: 4096,
            fault_phase: 5_000_000,
            chaos_every: 200_000,
            kill_p: 0.03,
            leader_bias: 0.5,
            power_cut_p: 0.0,
            full_power_cut_p: 0.0,
            restart_delay: (100_000, 1_500_000),
            partition_p: 0.03,
            partition_len: (200_000, 2_000_000),
            long_outage_p: 0.0,
            long_outage: (1_500_000, 3_500_000),
            crash_in_resync_p: 0.0,
            crash_at_sync_p: 0.0,
            kill_in_failed_sync_p: 0.0,
            switchover_p: 0.0,
            disk_stall_p: 0.0,
            disk_stall: (1_500_000, 4_000_000),
            disk_fault_p: 0.0,
            disk_fault_meta_too: 0.0,
            sync_stall_limit: 1_000_000,
            blank_disk: None,
            replace_then_failover: false,
            figure8: false,
            no_resync_expected: false,
            fifo_links: false,
            strict_resync: false,
            write_gap: (500, 6_000),
            max_inflight: 4,
            max_write_blocks: 16,
            write_after_heal: 500_000,
            converge_bound: 8_000_000,
            service: None,
            mutations: Vec::new(),
            tolerate_known_bugs: true,
        }
    }

    /// The scenario mix the seed test cycles through.
    pub fn all() -> Vec<DataScenario> {
        let small_ring = 32 << 10;
        vec![
            DataScenario::base("steady"),
            DataScenario {
                // A follower away long enough that the leader's journal
                // discards its range: bitmap resync on its return.
                long_outage_p: 0.15,
                kill_p: 0.01,
                partition_p: 0.01,
                ring: small_ring,
                repl: small_repl(small_ring),
                write_gap: (300, 3_000),
                ..DataScenario::base("compaction")
            },
            DataScenario {
                power_cut_p: 0.05,
                full_power_cut_p: 0.02,
                kill_p: 0.03,
                crash_at_sync_p: 0.002,
                ..DataScenario::base("power")
            },
            DataScenario {
                // Kills aimed at the leader while writes stream, quick restarts.
                kill_p: 0.12,
                leader_bias: 0.9,
                restart_delay: (20_000, 600_000),
                crash_at_sync_p: 0.003,
                partition_p: 0.0,
                write_gap: (200, 2_000),
                max_inflight: 8,
                ..DataScenario::base("leader-kill")
            },
            DataScenario {
                // Long outages force block resyncs; slow resync; crashes
                // and power cuts aimed into them.
                long_outage_p: 0.12,
                crash_in_resync_p: 0.6,
                power_cut_p: 0.02,
                kill_p: 0.02,
                ring: small_ring,
                repl: ReplConfig { resync_rate: 256 << 10, ..small_repl(small_ring) },
                ..DataScenario::base("resync-crash")
            },
            DataScenario {
                net: NetConfig { drop: 0.15, dup: 0.1, long_p: 0.05, ..NetConfig::default() },
                partition_p: 0.08,
                kill_p: 0.02,
                ..DataScenario::base("lossy")
            },
            DataScenario {
                timing: Timing::fast(),
                partition_p: 0.2,
                partition_len: (100_000, 1_000_000),
                kill_p: 0.02,
                ..DataScenario::base("partition")
            },
            DataScenario {
                kill_p: 0.05,
                power_cut_p: 0.03,
                full_power_cut_p: 0.01,
                partition_p: 0.05,
                long_outage_p: 0.05,
                crash_in_resync_p: 0.3,
                crash_at_sync_p: 0.002,
                net: NetConfig { drop: 0.03, dup: 0.03, long_p: 0.02, ..NetConfig::default() },
                volume: 256 << 10,
                ring: small_ring,
                repl: small_repl(small_ring),
                ..DataScenario::base("chaos")
            },
        ]
    }

    /// Scenarios not in the mix (see docs/simulator.md, data world).
    pub fn extra() -> Vec<DataScenario> {
        vec![
            DataScenario {
                // No faults at all, links in order (TCP), a ring of 1 MiB
                // (16 times the largest write): every follower can be
                // caught up from the journal, so no block resync is needed.
                fifo_links: true,
                ring: 1 << 20,
                repl: small_repl(1 << 20),
                kill_p: 0.0,
                partition_p: 0.0,
                net: NetConfig { drop: 0.0, dup: 0.0, long_p: 0.0, ..NetConfig::default() },
                no_resync_expected: true,
                ..DataScenario::base("calm")
            },
            DataScenario {
                // Stuck disks (rule 16): a journal, store or metadata sync
                // hangs, mostly on the leader. A node that hung for seconds
                // may need a block resync on a reordering network
                // afterwards: a longer bound to converge.
                disk_stall_p: 0.05,
                leader_bias: 0.8,
                kill_p: 0.005,
                converge_bound: 12_000_000,
                ..DataScenario::base("disk-stall")
            },
            DataScenario {
                // Rule 9: failed fdatasyncs of any disk, mostly the
                // leader's, amid kills and power cuts. A failed node is
                // reopened or rebooted and copied in full by a resync.
                disk_fault_p: 0.1,
                disk_fault_meta_too: 0.2,
                power_cut_p: 0.02,
                kill_p: 0.02,
                kill_in_failed_sync_p: 0.3,
                converge_bound: 12_000_000,
                ..DataScenario::base("disk-faults")
            },
            DataScenario {
                // Operator switchovers (TimeoutNow) while writes stream.
                switchover_p: 0.1,
                kill_p: 0.01,
                partition_p: 0.01,
                net: NetConfig { latency: (100, 2_000), ..NetConfig::default() },
                ..DataScenario::base("switchover")
            },
            DataScenario {
                // A replaced box (blank disks, marked inconsistent) after
                // the first convergence: a hash resync from nothing.
                blank_disk: Some(Blank::Marked),
                kill_p: 0.02,
                ring: 32 << 10,
                repl: small_repl(32 << 10),
                ..DataScenario::base("blank-disk")
            },
            DataScenario {
                // Small records in small batches, so a new leader's first
                // batches hold old-epoch records without its no-op.
                figure8: true,
                kill_p: 0.0,
                partition_p: 0.0,
                net: NetConfig { drop: 0.0, dup: 0.0, long_p: 0.0, ..NetConfig::default() },
                max_write_blocks: 1,
                repl: ReplConfig { max_batch_bytes: 8 << 10, ..small_repl(256 << 10) },
                ring: 256 << 10,
                ..DataScenario::base("figure8")
            },
            DataScenario {
                replace_then_failover: true,
                kill_p: 0.0,
                partition_p: 0.0,
                ring: 32 << 10,
                repl: small_repl(32 << 10),
                ..DataScenario::base("replace-failover")
            },
            DataScenario {
                blank_disk: Some(Blank::Unmarked),
                kill_p: 0.02,
                ring: 32 << 10,
                repl: small_repl(32 << 10),
                ..DataScenario::base("blank-disk-unmarked")
            },
            DataScenario {
                // Rule 11's frozen base: a replaced box with old data on its
                // disk, marked inconsistent, beside journals long enough (8
                // MiB) to still hold every record from (0, 0). Leaders
                // (killed now and then) must block-resync it, never catch it
                // up by records from its K.
                blank_disk: Some(Blank::MarkedOldData),
                kill_p: 0.02,
                fault_phase: 2_000_000,
                max_write_blocks: 4,
                ring: 8 << 20,
                repl: small_repl(8 << 20),
                ..DataScenario::base("blank-old-data")
            },
            DataScenario {
                // Rule 10's persisted last-discarded position: compaction
                // whenever anything is in the ring and pauses in the writes
                // longer than the 2 s checkpoint period, so journals are
                // emptied; nodes are killed and restarted with nothing in
                // them but that position.
                write_gap: (500_000, 2_500_000),
                max_inflight: 1,
                max_write_blocks: 8,
                kill_p: 0.1,
                restart_delay: (20_000, 300_000),
                partition_p: 0.0,
                fault_phase: 8_000_000,
                ring: 32 << 10,
                repl: ReplConfig { compact_below_free_pct: 100, ..small_repl(32 << 10) },
                ..DataScenario::base("idle-restart")
            },
            DataScenario {
                // Block resyncs are frequent (small ring, long outages) and
                // must not restart unless the peer restarted or its view changed.
                strict_resync: true,
                long_outage_p: 0.1,
                kill_p: 0.0,
                partition_p: 0.0,
                ring: 32 << 10,
                repl: small_repl(32 << 10),
                ..DataScenario::base("resync-restart")
            },
            DataScenario {
                // The pipeline longer than the followers' rings.
                repl: ReplConfig { max_inflight_bytes: 1 << 20, max_batch_bytes: 256 << 10, ..small_repl(32 << 10) },
                ring: 32 << 10,
                kill_p: 0.02,
                long_outage_p: 0.05,
                write_gap: (200, 1_000),
                max_inflight: 8,
                ..DataScenario::base("wide-pipeline")
            },
        ]
    }

    /// The service scenarios (issue 11): the PBX, the filesystem and the
    /// watchdog of every node simulated, with faults aimed at them. Each
    /// has partitions and switchovers, so demotions happen while faults
    /// are active.
    pub fn service() -> Vec<DataScenario> {
        let base = |name, faults: ServiceFaults| DataScenario {
            service: Some(ServiceSpec::new(faults)),
            fault_phase: 8_000_000,
            partition_p: 0.04,
            switchover_p: 0.03,
            kill_p: 0.01,
            leader_bias: 0.8,
            volume: 256 << 10,
            write_gap: (1_000, 10_000),
            converge_bound: 12_000_000,
            ..DataScenario::base(name)
        };
        vec![
            // Every PBX start dies soon after, and running PBXs crash.
            base("pbx-crash-loop", ServiceFaults { crash_loop_p: 0.04, crash_p: 0.05, ..Default::default() }),
            // The PBX runs and holds its port but never answers; now and
            // then it cannot be spawned at all.
            base("pbx-silent", ServiceFaults { silent_p: 0.05, spawn_fail_p: 0.01, ..Default::default() }),
            // Demotions that hang: a PBX that ignores SIGTERM (killable),
            // or SIGKILL too (D state), an unmount that never returns. The
            // box must reset itself (the self-fence) within the bound.
            DataScenario {
                partition_p: 0.08,
                switchover_p: 0.06,
                ..base(
                    "hung-demotion",
                    ServiceFaults {
                        unkillable_p: 0.03,
                        ignores_stop_p: 0.03,
                        unmount_hang_p: 0.03,
                        ..Default::default()
                    },
                )
            },
            // Mounts and checks that fail (retried) on the boxes.
            base("failing-mount", ServiceFaults { mount_fail_p: 0.05, check_fail_p: 0.04, ..Default::default() }),
            // Cluster creation: the volume has no filesystem until the
            // operator formats it on the first node whose check finds none.
            DataScenario {
                service: Some(ServiceSpec {
                    first_format: true,
                    ..ServiceSpec::new(ServiceFaults { crash_p: 0.02, mount_fail_p: 0.01, ..Default::default() })
                }),
                ..base("first-format", ServiceFaults::default())
            },
            // Stuck disks under the service (rule 16 and the watchdog): a
            // volume thread hung in a store or metadata sync shows no
            // progress, so the box stops petting and resets if the hang
            // outlasts the part's staleness plus the device's timeout.
            DataScenario {
                disk_stall_p: 0.04,
                ..base("service-disk-stall", ServiceFaults { crash_p: 0.02, ..Default::default() })
            },
            // Open finding (docs/simulator.md): crash loops with a 20 s
            // failure window. A node that wanted a hand-over refuses the
            // role for the window once it is not the leader; if the other
            // two cannot lead (resyncing, or refusing too), the cluster has
            // no active node until the window passes. Not in `cargo test`.
            DataScenario {
                service: Some(ServiceSpec {
                    pbx: triad_host::PbxTiming {
                        failure_window: core::time::Duration::from_secs(20),
                        ..ServiceSpec::new(ServiceFaults::default()).pbx
                    },
                    ..ServiceSpec::new(ServiceFaults { crash_loop_p: 0.04, crash_p: 0.05, ..Default::default() })
                }),
                ..base("pbx-refusal", ServiceFaults::default())
            },
            // A bit of everything.
            base(
                "service",
                ServiceFaults {
                    crash_loop_p: 0.01,
                    crash_p: 0.02,
                    silent_p: 0.01,
                    unkillable_p: 0.01,
                    ignores_stop_p: 0.01,
                    spawn_fail_p: 0.005,
                    mount_fail_p: 0.01,
                    check_fail_p: 0.01,
                    unmount_hang_p: 0.01,
                },
            ),
        ]
    }

    /// The scenario called `name` (mix or extra).
    pub fn named(name: &str) -> Option<DataScenario> {
        DataScenario::all()
            .into_iter()
            .chain(DataScenario::extra())
            .chain(DataScenario::service())
            .find(|s| s.name == name)
    }

    /// The scenario a seed runs when none is named: the mix, round robin.
    pub fn for_seed(seed: u64) -> DataScenario {
        let all = DataScenario::all();
        all[(seed % all.len() as u64) as usize].clone()
    }

    /// The replication config with this scenario's rule removals applied.
    pub fn repl_config(&self) -> ReplConfig {
        let mut cfg = self.repl.clone();
        cfg.mutations.skip_noop = self.has(DataMutation::ReplSkipNoop);
        cfg.mutations.commit_old_epochs = self.has(DataMutation::ReplCommitOldEpochs);
        cfg.mutations.count_resyncing_peer = self.has(DataMutation::ReplCountResyncingPeer);
        cfg.mutations.ack_without_peer = self.has(DataMutation::ReplAckWithoutPeer);
        cfg.mutations.skip_prev_check = self.has(DataMutation::ReplSkipPrevCheck);
        cfg.mutations.resume_resync_by_records = self.has(DataMutation::ReplResumeResyncByRecords);
        cfg.mutations.forget_discarded = self.has(DataMutation::ReplForgetDiscarded);
        cfg.mutations.ignore_stream = self.has(DataMutation::ReplIgnoreStream);
        cfg
    }

    /// Whether `m` is applied.
    pub fn has(&self, m: DataMutation) -> bool {
        self.mutations.contains(&m)
    }
}

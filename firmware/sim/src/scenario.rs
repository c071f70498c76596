//! Named scenarios: timing profile, network quality and fault rates, plus
//! the optional *mutation* (a broken rule, emulated around the unmodified
//! core) used to show that the invariants catch what they claim to.
//!
//! Faults are drawn by a chaos process every [`Scenario::chaos_every`] µs
//! during the fault phase; then everything heals and liveness is measured.

use crate::invariants::Check;
use crate::net::NetConfig;
use core::time::Duration;
use triad_core::Timing;

/// Core bugs this simulator found (docs/simulator.md, "Findings"). Their
/// checks are tolerated by default, recorded but not fatal, so every other
/// check keeps running over the whole mix; `--no-tolerate` (or
/// [`Scenario::strict_checks`]) makes them fatal, and the `known_bug_*`
/// tests fail once the core is fixed, as a reminder to empty this list.
pub const KNOWN_CORE_BUGS: [Check; 0] = [];

/// A rule removed (or assumption broken) on purpose, to prove a check works.
/// Each is implemented by the world as a wrapper around the real core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The runtime drops every `Persist`: votes and epochs live in RAM only.
    ForgetPersist,
    /// The runtime carries out `Send`s before the `Persist` of the same batch.
    SendBeforePersist,
    /// Node 1's runtime acknowledges heartbeats itself and hands its core a
    /// ping instead: its acks no longer imply stickiness (rule 2 removed).
    AckWithoutStickiness,
    /// A restarted core is started with its clock origin one maximum
    /// election timeout in the past: no quiet period after start (rule 2).
    NoQuietAfterStart,
    /// The runtime reports `Remove` done without removing the VIP.
    SkipVipRemove,
    /// The fence's refresh is a plain add with the refresh's timeout: it
    /// succeeds even after the element expired (no delete+add batch), so a
    /// refresh applied late resurrects the element (issue 10, item 2).
    FenceRefreshResurrects,
    /// The fence's grant is a plain add with a timeout read before the
    /// call (no arming): a grant frozen before the kernel lands late and
    /// lives past the lease.
    FenceGrantUnarmed,
    /// Clocks drift at 40 times the configured bound (rule 3's margin and
    /// the lease guard both exceeded).
    DriftBeyondBound,
}

impl Mutation {
    /// Parses a mutation name as used on the command line.
    pub fn parse(s: &str) -> Option<Mutation> {
        Some(match s {
            "forget-persist" => Mutation::ForgetPersist,
            "send-before-persist" => Mutation::SendBeforePersist,
            "ack-without-stickiness" => Mutation::AckWithoutStickiness,
            "no-quiet-after-start" => Mutation::NoQuietAfterStart,
            "skip-vip-remove" => Mutation::SkipVipRemove,
            "fence-refresh-resurrects" => Mutation::FenceRefreshResurrects,
            "fence-grant-unarmed" => Mutation::FenceGrantUnarmed,
            "drift-beyond-bound" => Mutation::DriftBeyondBound,
            _ => return None,
        })
    }

    /// All mutations.
    pub const ALL: [Mutation; 8] = [
        Mutation::ForgetPersist,
        Mutation::SendBeforePersist,
        Mutation::AckWithoutStickiness,
        Mutation::NoQuietAfterStart,
        Mutation::SkipVipRemove,
        Mutation::FenceRefreshResurrects,
        Mutation::FenceGrantUnarmed,
        Mutation::DriftBeyondBound,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::ForgetPersist => "forget-persist",
            Mutation::SendBeforePersist => "send-before-persist",
            Mutation::AckWithoutStickiness => "ack-without-stickiness",
            Mutation::NoQuietAfterStart => "no-quiet-after-start",
            Mutation::SkipVipRemove => "skip-vip-remove",
            Mutation::FenceRefreshResurrects => "fence-refresh-resurrects",
            Mutation::FenceGrantUnarmed => "fence-grant-unarmed",
            Mutation::DriftBeyondBound => "drift-beyond-bound",
        }
    }
}

/// Everything that defines one simulated run besides its seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used by `--scenario`.
    pub name: &'static str,
    /// Core timing.
    pub timing: Timing,
    /// Network quality (partitions come from the chaos process).
    pub net: NetConfig,
    /// Length of the fault phase, µs.
    pub fault_phase: u64,
    /// After healing, a leader with lease and VIP must exist within this, µs.
    pub liveness_bound: u64,
    /// Chaos process period, µs.
    pub chaos_every: u64,
    /// Per chaos tick: probability of killing a process.
    pub crash_p: f64,
    /// How long a killed process stays down, µs.
    pub restart_delay: (u64, u64),
    /// Aim faults at the restart race the quiet period exists for: kill
    /// followers (quick restarts), cut the leader's link to the other one.
    pub restart_race: bool,
    /// Per chaos tick: probability of freezing (SIGSTOP) a process.
    pub freeze_p: f64,
    /// Per chaos tick: probability of a partition change.
    pub partition_p: f64,
    /// Per chaos tick: probability of an operator switchover.
    pub switchover_p: f64,
    /// Probability that a process is killed at a `Persist`, just before or
    /// just after it, losing the rest of its batch (the "between a vote and
    /// its reply" crash).
    pub crash_at_persist_p: f64,
    /// Probability that a VIP netlink action fails.
    pub vip_fail_p: f64,
    /// Probability that a fence operation reaches the kernel late: the
    /// process stalls (is frozen, or descheduled) between reading its clock
    /// and the call, for up to [`Scenario::fence_late_max`].
    pub fence_late_p: f64,
    /// The longest such stall, µs.
    pub fence_late_max: u64,
    /// Pin every clock to ±drift bound (the lease argument's worst case)
    /// instead of drawing rates within it.
    pub extreme_drift: bool,
    /// The broken rules, if any.
    pub mutations: Vec<Mutation>,
    /// Model the runtime's `biased` select faithfully when the core's
    /// deadline stays in the past: ticks every 10 µs and inbound messages
    /// starve (default: tick once a millisecond and keep serving messages,
    /// so other checks still run). Shows F1's consequence.
    pub faithful_spin: bool,
    /// Checks not applied in this scenario (known core bugs being worked
    /// around so other checks still run; see docs/simulator.md).
    pub tolerate: Vec<Check>,
}

impl Scenario {
    fn base(name: &'static str, timing: Timing) -> Scenario {
        Scenario {
            name,
            timing,
            net: NetConfig::default(),
            fault_phase: 12_000_000,
            liveness_bound: 5_000_000,
            chaos_every: 200_000,
            crash_p: 0.02,
            restart_delay: (100_000, 3_000_000),
            restart_race: false,
            freeze_p: 0.02,
            partition_p: 0.03,
            switchover_p: 0.01,
            crash_at_persist_p: 0.0,
            vip_fail_p: 0.02,
            fence_late_p: 0.01,
            fence_late_max: 1_500_000,
            extreme_drift: false,
            mutations: Vec::new(),
            faithful_spin: false,
            tolerate: KNOWN_CORE_BUGS.to_vec(),
        }
    }

    /// The same scenario with every check fatal, known bugs included.
    pub fn strict_checks(mut self) -> Scenario {
        self.tolerate.clear();
        self
    }

    /// The scenario mix the seed test cycles through.
    pub fn all() -> Vec<Scenario> {
        let strict = Timing { strict_vip_handover: true, ..Timing::default() };
        let ms = |n: u64| Duration::from_millis(n);
        vec![
            Scenario::base("default", Timing::default()),
            Scenario { extreme_drift: true, ..Scenario::base("fast", Timing::fast()) },
            Scenario { freeze_p: 0.05, liveness_bound: 6_000_000, ..Scenario::base("strict", strict) },
            Scenario {
                net: NetConfig { drop: 0.3, dup: 0.1, long_p: 0.03, ..NetConfig::default() },
                partition_p: 0.01,
                ..Scenario::base("lossy", Timing::default())
            },
            Scenario {
                crash_p: 0.15,
                crash_at_persist_p: 0.05,
                freeze_p: 0.0,
                partition_p: 0.0,
                ..Scenario::base("crash-storm", Timing::default())
            },
            Scenario {
                // Kills with restarts inside one lease, while links flap:
                // what the quiet period after start is for (rule 2).
                crash_p: 0.2,
                crash_at_persist_p: 0.05,
                restart_delay: (5_000, 300_000),
                partition_p: 0.25,
                freeze_p: 0.0,
                ..Scenario::base("quick-restart", Timing::default())
            },
            Scenario {
                crash_p: 0.25,
                restart_delay: (2_000, 150_000),
                restart_race: true,
                partition_p: 0.3,
                freeze_p: 0.0,
                switchover_p: 0.0,
                ..Scenario::base("restart-race", Timing::default())
            },
            Scenario { freeze_p: 0.12, crash_p: 0.0, partition_p: 0.0, ..Scenario::base("freeze", Timing::default()) },
            Scenario { partition_p: 0.2, crash_p: 0.0, freeze_p: 0.0, ..Scenario::base("partition", Timing::fast()) },
            Scenario {
                // Many messages held up for a large part of an election
                // timeout while links are cut and healed: votes and
                // heartbeats of older epochs arrive late, after their
                // senders were deposed or re-elected (the interleavings a
                // code review found, R1 and R2 in docs/simulator.md).
                net: NetConfig { drop: 0.05, long_p: 0.2, long: (100_000, 500_000), ..NetConfig::default() },
                partition_p: 0.35,
                crash_p: 0.05,
                freeze_p: 0.0,
                ..Scenario::base("slow-links", Timing::default())
            },
            Scenario {
                switchover_p: 0.15,
                vip_fail_p: 0.05,
                net: NetConfig { latency: (100, 3_000), ..NetConfig::default() },
                ..Scenario::base("switchover", Timing { vip_renew_interval: ms(100), ..Timing::default() })
            },
        ]
    }

    /// The scenario called `name`.
    pub fn named(name: &str) -> Option<Scenario> {
        Scenario::all().into_iter().find(|s| s.name == name)
    }

    /// The scenario a seed runs when none is named: the mix, round robin.
    pub fn for_seed(seed: u64) -> Scenario {
        let all = Scenario::all();
        let i = (seed % all.len() as u64) as usize;
        all[i].clone()
    }

    /// Whether `m` is applied.
    pub fn has(&self, m: Mutation) -> bool {
        self.mutations.contains(&m)
    }

    /// Drift bound in ppm actually applied to clocks.
    pub fn clock_ppm_bound(&self) -> i64 {
        let b = i64::from(self.timing.drift_ppm);
        if self.has(Mutation::DriftBeyondBound) {
            b * 40
        } else {
            b
        }
    }
}

//! triad-sim: a deterministic simulator of a three-node Triad cluster.
//!
//! Three unmodified `triad-core` nodes run against a virtual clock with
//! per-node drift, a lossy partitionable network, process kills, freezes
//! and a kernel VIP model; invariants are checked after every event. A run
//! is a pure function of (seed, scenario): no real time, no OS randomness,
//! no threads, so every failure replays exactly.
//!
//! - [`clock`]: per-host clocks with drift, and the seeded RNG;
//! - [`net`]: drop, delay, duplicate, reorder, partition;
//! - [`scenario`]: named fault mixes and the mutations;
//! - [`world`]: the event loop and the runtime model around each core;
//! - [`invariants`]: the properties and the history they need;
//! - [`data`]: the data world: the replicated volume (`triad-repl` over
//!   in-memory disks with power cuts) under the same network and faults,
//!   and in its service scenarios the PBX, the filesystem and the
//!   watchdog of each node (issue 11).

pub mod clock;
pub mod data;
pub mod invariants;
pub mod net;
pub mod scenario;
pub mod world;

pub use invariants::{Check, Violation};
pub use scenario::{Mutation, Scenario};
pub use world::{run, Outcome};

/// The command that replays `seed` under `sc` (its mutations and any
/// checks tolerated beyond the known core bugs included).
pub fn replay_command(seed: u64, sc: &Scenario) -> String {
    let mut extra = String::new();
    for m in &sc.mutations {
        extra.push_str(&format!(" --mutation {}", m.name()));
    }
    // The default tolerates every known core bug; say so when this run did not.
    let default_tolerance = scenario::KNOWN_CORE_BUGS.iter().all(|c| sc.tolerate.contains(c));
    if !default_tolerance {
        extra.push_str(" --no-tolerate");
    }
    for c in sc.tolerate.iter().filter(|c| !default_tolerance || !scenario::KNOWN_CORE_BUGS.contains(c)) {
        extra.push_str(&format!(" --tolerate {c:?}"));
    }
    format!("cargo run -p triad-sim -- replay --seed {seed} --scenario {}{extra} --trace", sc.name)
}

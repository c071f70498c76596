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
//! - [`invariants`]: the properties and the history they need.

pub mod clock;
pub mod invariants;
pub mod net;
pub mod scenario;
pub mod world;

pub use invariants::{Check, Violation};
pub use scenario::{Mutation, Scenario};
pub use world::{run, Outcome};

/// The command that replays `seed` under the scenario called `scenario`.
pub fn replay_command(seed: u64, scenario: &str, mutation: Option<Mutation>) -> String {
    let m = mutation.map(|m| format!(" --mutation {}", m.name())).unwrap_or_default();
    format!("cargo run -p triad-sim -- replay --seed {seed} --scenario {scenario}{m} --trace")
}

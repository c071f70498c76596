//! triad-core: the decisions of a Triad node, with no I/O.
//!
//! Events go in ([`Input`]), commands come out ([`Output`]); time is an
//! argument ([`Instant`]) and randomness a seed. Nothing here touches a
//! clock, a socket, a file or a thread, so the same code runs in the
//! supervisor and, deterministically, in the simulator.
//!
//! Modules, each one state machine:
//! - [`liveness`]: which peers were heard from recently.
//! - [`election`]: epochs, votes, PreVote, stickiness, switchover.
//! - [`lease`]: the active node's majority-renewed lease.
//! - [`vip`]: released → claiming → held → releasing, with announcements.
//! - [`node`]: wires them together behind [`Node::handle`].

pub mod config;
pub mod election;
pub mod io;
pub mod lease;
pub mod liveness;
pub mod message;
pub mod node;
pub mod rng;
pub mod time;
pub mod vip;

pub use config::Timing;
pub use io::{
    AdminRequest, HardState, Input, Membership, Notice, Output, PeerStatus, Role, Status, VipAction, VipPhase,
};
pub use message::{Body, Epoch, Message, NodeId, Position, PROTOCOL_VERSION};
pub use node::{Node, Setup};
pub use time::Instant;

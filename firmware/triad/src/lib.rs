//! The Triad supervisor: the I/O shell around `triad-core`.
//!
//! `triad-core` decides; this crate carries out its decisions against the
//! real world and feeds the world's events back in:
//! - [`appliance`]: the appliance's first boot stage (modules, state
//!   partition, config) when the kernel starts `triad` as init.
//! - [`config`]: the TOML config, parsed into validated types.
//! - [`certs`]: the cluster CA and per-node certificates.
//! - [`store`]: crash-safe persisted state (redb).
//! - [`peer`]: mutual-TLS peer links carrying framed, versioned messages.
//! - [`os`]: netlink, raw-socket ARP/NDP, real-time scheduling.
//! - [`control`]: the local control socket behind `triad status`.
//! - [`errors`]: one error chain per log line, at the edge.
//! - [`logring`]: the last log lines in memory, for `triad logs`.
//! - [`nbd`]: the NBD export of the replicated volume (unix socket, kernel nbd).
//! - [`volume`]: the replicated volume's thread and the NBD device over it.
//! - [`sync_watch`]: rule 16, a stuck journal sync makes the node unfit to lead.
//! - [`pbx`]: carries out the PBX's supervision commands.
//! - [`sip_probe`]: the PBX's health probe, one SIP OPTIONS over UDP.
//! - [`runtime`]: the one loop that owns the core and applies each event.

pub mod appliance;
pub mod certs;
pub mod config;
pub mod control;
pub mod errors;
pub mod filesystem;
pub mod logkeep;
pub mod logring;
pub mod nbd;
pub mod os;
pub mod pbx;
pub mod peer;
pub mod readiness;
pub mod runtime;
pub mod sip_probe;
pub mod store;
pub mod sync_watch;
#[cfg(feature = "test-agent")]
pub mod test_agent;
pub mod volume;

//! Mutual-TLS links between cluster members.
//!
//! Owns: the wire framing ([`frame`]), the TLS configurations that make
//! cluster membership a matter of holding a CA-signed certificate ([`tls`]),
//! and the connection tasks that carry messages ([`link`]), each instance
//! for one message type ([`WireMessage`]) on its own port.
//!
//! Must not: interpret messages (the core does), block the runtime loop
//! (sending is a non-blocking enqueue), or let one peer's bad input affect
//! another peer's link.

pub mod frame;
pub mod link;
pub mod tls;

pub use frame::WireMessage;
pub use link::{Inbound, LinkConfig, LinkError, LinkTiming, PeerLinks, SendError};

//! The NBD export of the replicated volume (issue 3, item 2).
//!
//! - [`proto`]: the wire format, sans-IO; parsers never panic.
//! - [`request`]: transmission requests and the checks that turn one into
//!   a command or an NBD errno.
//! - [`handshake`]: option haggling as a pure function of one option.
//! - [`device`]: the [`BlockDevice`] seam, a file-backed device and an
//!   in-memory fake.
//! - [`pool`]: the I/O buffers, preallocated per server.
//! - [`reply_line`]: lets the thread that commits a write send its reply
//!   on the socket itself.
//! - [`server`]: the tokio server: unix-socket accept loop, handshake,
//!   pipelined transmission, and a transmission-only entry point for the
//!   kernel nbd driver.
//!
//! The node serves the volume only while its [`Activity`] says so.
//! Protocol choices and the error mapping: docs/nbd.md.
//!
//! Must not: decide whether this node is active (the supervisor's loop
//! does, through [`Activity`]), or know how blocks are replicated (behind
//! [`BlockDevice`]).

pub mod device;
pub mod handshake;
pub mod pool;
pub mod proto;
pub mod reply_line;
pub mod request;
pub mod server;

pub use device::{BlockDevice, DeviceError, FileDevice, MemDevice};
pub use pool::{BufPool, IoBuf, PoolSize};
pub use reply_line::{DirectReply, ReplyLine};
pub use server::{Activity, NbdError, NbdServer};

//! The Triad network-namespace lab: three supervisors on one machine.
//!
//! This crate owns everything that happens *around* the supervisors when
//! they are tested on one host: the namespaces and veth wiring (`netns`,
//! `lab`), launching each supervisor as PID 1 of its own PID and network
//! namespace so that killing it is a power cut (`spawn`), the client-side
//! prober and packet observer (`observer`), the keepalived baseline
//! (`keepalived`), the failover benchmark and soak (`bench`), and the
//! replicated-volume benchmark against nbdkit (`bench_volume`), and the
//! micro-benchmark of the write path's unavoidable stages and the
//! throughput bound they imply (`bench_stages`).
//!
//! It must never touch the host's root network namespace: every link it
//! creates lives in a namespace it created, and every command that changes
//! links names that namespace explicitly (`ip -n`, `nsenter -t PID -n`).

pub mod bench;
pub mod bench_pbx;
pub mod bench_service;
pub mod bench_stages;
pub mod bench_volume;
pub mod cmd;
pub mod keepalived;
pub mod lab;
pub mod layout;
pub mod netns;
pub mod observer;
pub mod sip;
pub mod spawn;
pub mod triad;
pub mod wait;

pub use lab::{Lab, LabError, Payload, Profile};
pub use layout::Layout;

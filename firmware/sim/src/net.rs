//! The simulated network between the three nodes.
//!
//! Worse than the real links (TLS over TCP never duplicates or reorders), on
//! purpose: the core must not depend on the transport for safety. Each
//! message independently may be dropped, duplicated, delayed by a random
//! latency (occasionally a very long one, which also reorders), or cut by a
//! partition. A cut is directional, so one-way partitions are expressible;
//! it applies at send time (a message already in flight still arrives, like
//! a packet already past the failed switch port).

use crate::clock::Rng;
use triad_core::NodeId;

/// How bad the network is.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub dup: f64,
    /// Usual one-way latency range, µs.
    pub latency: (u64, u64),
    /// Probability of a long delay instead.
    pub long_p: f64,
    /// Long delay range, µs.
    pub long: (u64, u64),
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { drop: 0.01, dup: 0.01, latency: (100, 20_000), long_p: 0.005, long: (50_000, 600_000) }
    }
}

/// Link state: which directed links are cut.
#[derive(Clone, Debug)]
pub struct Net {
    /// Current quality settings.
    pub cfg: NetConfig,
    /// `cut[from][to]`, indexed by node id (1..=3).
    cut: [[bool; 4]; 4],
}

impl Net {
    /// A fully connected network.
    pub fn new(cfg: NetConfig) -> Net {
        Net { cfg, cut: [[false; 4]; 4] }
    }

    /// Cuts (or restores) the link `from → to`.
    pub fn set_cut(&mut self, from: NodeId, to: NodeId, cut: bool) {
        self.cut[usize::from(from)][usize::from(to)] = cut;
    }

    /// Whether `from → to` is cut.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut[usize::from(from)][usize::from(to)]
    }

    /// Cuts `n` off from everyone, both ways.
    pub fn isolate(&mut self, n: NodeId) {
        for o in 1..=3 {
            if o != n {
                self.set_cut(n, o, true);
                self.set_cut(o, n, true);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut = [[false; 4]; 4];
    }

    /// Whether any link is cut.
    pub fn partitioned(&self) -> bool {
        self.cut.iter().flatten().any(|c| *c)
    }

    /// The delivery delays (µs) of one message: empty if lost, two if duplicated.
    pub fn plan(&self, rng: &mut Rng, from: NodeId, to: NodeId) -> Vec<u64> {
        if self.cut[usize::from(from)][usize::from(to)] || rng.chance(self.cfg.drop) {
            return Vec::new();
        }
        let copies = if rng.chance(self.cfg.dup) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                if rng.chance(self.cfg.long_p) {
                    rng.range(self.cfg.long.0, self.cfg.long.1)
                } else {
                    rng.range(self.cfg.latency.0, self.cfg.latency.1)
                }
            })
            .collect()
    }
}

//! Per-node clocks and the simulator's random source.
//!
//! Real (virtual) time is one `u64` of microseconds shared by the whole
//! world. Each host has its own crystal: `local = offset + real × (1 + ppm/10⁶)`,
//! with `|ppm|` up to the drift bound the scenario allows. The lease argument
//! (sketch rule 3) is about exactly this difference in rates, so the
//! conversion is exact integer arithmetic and rounds the safe way: a local
//! deadline maps to the *first* real microsecond at which it has passed.
//!
//! A restart keeps the host's rate (same crystal) but gives the process a new
//! origin: the core's `Instant` is "since an arbitrary per-process origin".

use triad_core::rng::SplitMix64;
use triad_core::Instant;

/// One host's clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Local micros at real 0 (may be negative after a re-origin).
    offset: i128,
    /// Rate error in parts per million (positive: runs fast).
    ppm: i64,
}

impl Clock {
    /// A clock with rate error `ppm` that reads `local_at_start` at real `now`.
    pub fn new(ppm: i64, now: u64, local_at_start: u64) -> Clock {
        let mut c = Clock { offset: 0, ppm };
        c.reorigin(now, local_at_start);
        c
    }

    /// A new process on the same host: same rate, new origin.
    pub fn reorigin(&mut self, now: u64, local_at_start: u64) {
        self.offset = i128::from(local_at_start) - self.scaled(now);
    }

    /// The rate error.
    pub fn ppm(&self) -> i64 {
        self.ppm
    }

    fn scaled(&self, real: u64) -> i128 {
        i128::from(real) * (1_000_000 + i128::from(self.ppm)) / 1_000_000
    }

    /// What this clock reads at real time `real`.
    pub fn local(&self, real: u64) -> Instant {
        Instant(u64::try_from((self.offset + self.scaled(real)).max(0)).unwrap_or(u64::MAX))
    }

    /// The first real microsecond at which this clock reads at least `local`.
    pub fn real_of(&self, local: Instant) -> u64 {
        let want = i128::from(local.0) - self.offset;
        if want <= 0 {
            return 0;
        }
        let rate = 1_000_000 + i128::from(self.ppm);
        let mut r = u64::try_from(want * 1_000_000 / rate).unwrap_or(u64::MAX / 2);
        // Integer division may be off by one either way; settle exactly.
        while self.local(r) < local {
            r += 1;
        }
        while r > 0 && self.local(r - 1) >= local {
            r -= 1;
        }
        r
    }

    /// Real duration of a local duration of `micros` (rounded up).
    pub fn real_span(&self, micros: u64) -> u64 {
        let rate = 1_000_000 + i128::from(self.ppm);
        u64::try_from((i128::from(micros) * 1_000_000 + rate - 1) / rate).unwrap_or(u64::MAX)
    }
}

/// The simulator's only source of randomness, derived from the run seed.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed ^ 0x5EED_7A1D_0000_0001))
    }

    /// 64 random bits.
    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.between(lo, hi)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let x = (self.u64() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && x < p
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_of_inverts_local_for_fast_and_slow_clocks() {
        for ppm in [-10_000, 0, 7, 10_000] {
            let c = Clock::new(ppm, 5_000_000, 123);
            for l in [124u64, 1_000_000, 9_999_999] {
                let r = c.real_of(Instant(l));
                assert!(c.local(r) >= Instant(l));
                assert!(c.local(r - 1) < Instant(l));
            }
        }
    }
}

//! The simulated NBD client and what it may expect to read back.
//!
//! Every write gets an id in issue order (1, 2, ...; 0 stands for the
//! zeroes of a new volume) and fills each of its 4 KiB blocks with a
//! pattern naming (id, block), so a block read back tells which write it
//! came from, and a torn or foreign block is recognisable.
//!
//! What a block may hold: the content of `A`, the latest-issued
//! acknowledged write covering it, or of any write issued after `A` that
//! covers it and is not acknowledged (in flight, failed, or lost with its
//! node): such a write may or may not have been committed. Writes issued
//! before `A` are not acceptable: a committed record is ordered by seq, and
//! the client issues to one serving node at a time, so issue order is seq
//! order among everything that can still commit.

use triad_core::NodeId;

/// Bytes per block.
pub const BLOCK: u64 = 4096;

/// The state of one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Handed to a node, no answer yet.
    Pending,
    /// Acknowledged (committed).
    Acked,
    /// Failed, or lost with the node it was sent to.
    Failed,
}

/// One client write.
#[derive(Clone, Debug)]
pub struct Write {
    /// The node it went to.
    pub node: NodeId,
    /// That node's process incarnation.
    pub inc: u64,
    /// First block.
    pub block: u64,
    /// Blocks.
    pub blocks: u64,
    /// What became of it.
    pub state: WriteState,
    /// Real time it was issued, µs.
    pub issued_at: u64,
}

/// The client's history and the expected content per block.
#[derive(Debug)]
pub struct Client {
    /// Index = write id; index 0 is the initial zeroes.
    pub writes: Vec<Write>,
    /// Per block: the latest-issued acknowledged write covering it.
    last_acked: Vec<u64>,
    /// Per block: writes covering it issued after `last_acked` (ascending).
    later: Vec<Vec<u64>>,
    /// Writes pending.
    pub inflight: usize,
    /// Counters.
    pub acked: u64,
    /// Writes that failed (errors, timeouts, lost with their node).
    pub failed: u64,
    /// Flush markers issued (each completes at once: every acknowledged
    /// write is committed already).
    pub flushes: u64,
}

/// The content write `id` puts into block `block` (id 0: zeroes).
pub fn pattern(id: u64, block: u64, buf: &mut [u8]) {
    if id == 0 {
        buf.fill(0);
        return;
    }
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    for (i, w) in buf.as_chunks_mut::<8>().0.iter_mut().enumerate() {
        let v = match i {
            0 => id,
            1 => block,
            _ => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            }
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

impl Client {
    /// A client of a `volume`-byte volume.
    pub fn new(volume: u64) -> Client {
        let n = (volume / BLOCK) as usize;
        let zero = Write { node: 0, inc: 0, block: 0, blocks: 0, state: WriteState::Acked, issued_at: 0 };
        Client {
            writes: vec![zero],
            last_acked: vec![0; n],
            later: vec![Vec::new(); n],
            inflight: 0,
            acked: 0,
            failed: 0,
            flushes: 0,
        }
    }

    /// Registers a new write; returns its id and its data.
    pub fn issue(&mut self, node: NodeId, inc: u64, block: u64, blocks: u64, now: u64) -> (u64, Vec<u8>) {
        let id = self.writes.len() as u64;
        self.writes.push(Write { node, inc, block, blocks, state: WriteState::Pending, issued_at: now });
        self.inflight += 1;
        let mut data = vec![0u8; (blocks * BLOCK) as usize];
        for (i, chunk) in data.as_chunks_mut::<{ BLOCK as usize }>().0.iter_mut().enumerate() {
            pattern(id, block + i as u64, chunk);
            self.later[(block + i as u64) as usize].push(id);
        }
        (id, data)
    }

    /// The answer to write `id`. Returns false if it was already answered.
    pub fn done(&mut self, id: u64, ok: bool) -> bool {
        let Some(w) = self.writes.get_mut(id as usize) else { return false };
        if w.state != WriteState::Pending {
            return false;
        }
        w.state = if ok { WriteState::Acked } else { WriteState::Failed };
        self.inflight -= 1;
        if !ok {
            self.failed += 1;
            return true;
        }
        self.acked += 1;
        let (b0, n) = (w.block, w.blocks);
        for b in b0..b0 + n {
            let b = b as usize;
            if self.last_acked[b] < id {
                self.last_acked[b] = id;
                self.later[b].retain(|w| *w > id);
            }
        }
        true
    }

    /// Every pending write sent to `node` in incarnation `inc` is lost
    /// (the process died; its NBD connection with it).
    pub fn lost(&mut self, node: NodeId, inc: u64) -> usize {
        let ids: Vec<u64> = (1..self.writes.len() as u64)
            .filter(|&i| {
                let w = &self.writes[i as usize];
                w.state == WriteState::Pending && w.node == node && w.inc == inc
            })
            .collect();
        for &i in &ids {
            self.done(i, false);
        }
        ids.len()
    }

    /// The acceptable writes for block `b`: the last acknowledged one first.
    pub fn acceptable(&self, b: u64) -> (u64, &[u64]) {
        (self.last_acked[b as usize], &self.later[b as usize])
    }

    /// Checks a whole-volume image; the first bad block, described.
    pub fn check(&self, image: &[u8]) -> Option<String> {
        let mut want = vec![0u8; BLOCK as usize];
        for (b, got) in image.as_chunks::<{ BLOCK as usize }>().0.iter().enumerate() {
            let b = b as u64;
            let id = u64::from_le_bytes(got[..8].try_into().unwrap_or([0; 8]));
            let (acked, later) = self.acceptable(b);
            let ok_id = id == acked || later.contains(&id);
            let intact = id < self.writes.len() as u64 && {
                pattern(id, b, &mut want);
                want == got
            };
            if ok_id && intact {
                continue;
            }
            let what = if !intact {
                format!("garbage or a torn block (first word {id})")
            } else if id == 0 {
                "zeroes".to_string()
            } else {
                let w = &self.writes[id as usize];
                format!("write {id} ({:?}, issued at {:.6}s to node {})", w.state, w.issued_at as f64 / 1e6, w.node)
            };
            let a = &self.writes[acked as usize];
            return Some(format!(
                "block {b} (offset {}) holds {what}; expected write {acked} (acknowledged, issued at {:.6}s to node {}) or a later unacknowledged one of {later:?}",
                b * BLOCK,
                a.issued_at as f64 / 1e6,
                a.node
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(c: &Client, ids: &[u64]) -> Vec<u8> {
        let mut v = vec![0u8; c.last_acked.len() * BLOCK as usize];
        for (b, chunk) in v.as_chunks_mut::<{ BLOCK as usize }>().0.iter_mut().enumerate() {
            pattern(ids[b], b as u64, chunk);
        }
        v
    }

    #[test]
    fn overlapping_writes_in_flight_allow_either_content() {
        let mut c = Client::new(4 * BLOCK);
        let (a, _) = c.issue(1, 1, 0, 2, 0); // blocks 0, 1
        let (b, _) = c.issue(1, 1, 1, 2, 0); // blocks 1, 2
        assert!(c.check(&image(&c, &[0, 0, 0, 0])).is_none(), "nothing acknowledged yet");
        assert!(c.check(&image(&c, &[a, b, b, 0])).is_none());
        c.done(a, true);
        assert!(c.check(&image(&c, &[0, a, 0, 0])).is_some(), "block 0 lost an acknowledged write");
        assert!(c.check(&image(&c, &[a, b, 0, 0])).is_none(), "b may have committed");
        c.done(b, false);
        assert!(c.check(&image(&c, &[a, a, 0, 0])).is_none(), "a failed write may be absent");
        assert!(c.check(&image(&c, &[a, b, b, 0])).is_none(), "or present");
        let (d, _) = c.issue(2, 2, 1, 1, 0);
        c.done(d, true);
        assert!(c.check(&image(&c, &[a, b, 0, 0])).is_some(), "b was issued before d, which is acknowledged");
        assert!(c.check(&image(&c, &[a, d, b, 0])).is_none());
    }

    #[test]
    fn torn_blocks_are_caught() {
        let mut c = Client::new(2 * BLOCK);
        let (a, _) = c.issue(1, 1, 0, 1, 0);
        let mut img = image(&c, &[a, 0]);
        img[100] ^= 1;
        assert!(c.check(&img).is_some());
    }
}

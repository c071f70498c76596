//! An aimed crash sequence: Raft's Figure 8 on three nodes, for the
//! `figure8` scenario (PROTOCOL-SKETCH rule 6's "commit only at or after
//! the epoch's no-op").
//!
//! ```text
//!  after the first convergence, leader A at commit n0:
//!  1. A is isolated; the client's writes reach A's journal only (epoch e).
//!  2. B or C (W) is elected in e+1 with the other's (O's) vote; W → O is
//!     cut the moment W's core wins, so W's no-op stays on W alone. W dies.
//!  3. The links heal; A (fresher than O) is elected in e+2. Its first
//!     batches to O carry only epoch-e records (small batches). The moment
//!     O acknowledges some of them, but not A's no-op, A → O is cut, and
//!     A dies 20 ms later.
//!  4. W restarts and wins e+3 with O's vote (W's last record is of e+1,
//!     O's of e): W's journal overwrites O's epoch-e tail. A comes back.
//! ```
//!
//! A leader that counts replicas of old-epoch records toward commits
//! (`repl-commit-old-epochs`) committed and applied them in step 3; step 4
//! drops them: the stores diverge or a split brain is reported. The real
//! code commits nothing in step 3, and the cluster converges.

use super::{DataWorld, Ev, Res};
use triad_core::NodeId;
use triad_repl::Msg;

/// Where the script is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Figure8 {
    /// Step 1: A isolated; waiting for another node to win.
    Isolated { a: NodeId, n0: u64 },
    /// Step 2: W won with W → O cut; W dies soon.
    Orphan { a: NodeId, w: NodeId, o: NodeId, n0: u64 },
    /// Step 3: A leads again; waiting for O's first acknowledgement of
    /// epoch-e records short of A's no-op.
    Replaying { a: NodeId, w: NodeId, o: NodeId, n0: u64 },
    /// Step 4: A dies now, W comes back.
    Failing { a: NodeId, w: NodeId },
    /// The script ended.
    Done,
}

/// The script's timed steps.
#[derive(Clone, Copy, Debug)]
pub(super) enum Figure8Step {
    KillW,
    KillA,
}

impl DataWorld {
    /// Step 1, at the first convergence.
    pub(super) fn figure8_start(&mut self, leader: NodeId) {
        let n0 = self.hosts[super::idx(leader)].proc.as_ref().map_or(0, |p| p.vol.r.replica().journal().last().seq);
        self.net.isolate(leader);
        self.net_gen += 1;
        self.figure8 = Some(Figure8::Isolated { a: leader, n0 });
        self.note(|| format!("FIGURE 8: n{leader} (last seq {n0}) ISOLATED; its writes stay in its journal"));
    }

    /// Step 2's trigger: the core of `id` just became leader.
    pub(super) fn figure8_on_leader(&mut self, id: NodeId) {
        let Some(Figure8::Isolated { a, n0 }) = self.figure8 else { return };
        if id == a {
            return;
        }
        let (w, o) = (id, 6 - a - id);
        self.net.set_cut(w, o, true);
        self.figure8 = Some(Figure8::Orphan { a, w, o, n0 });
        self.note(|| format!("FIGURE 8: n{w} won; n{w} -> n{o} cut so its no-op stays on n{w}"));
        self.push(self.now + 30_000, Ev::Figure8(Figure8Step::KillW));
    }

    /// Step 3's trigger: a replica message is about to be delivered.
    pub(super) fn figure8_on_deliver(&mut self, to: NodeId, from: NodeId, msg: &Msg) {
        let Some(Figure8::Replaying { a, w, o, n0 }) = self.figure8 else { return };
        let Msg::AppendReply { matched, .. } = msg else { return };
        if to != a || from != o {
            return;
        }
        let Some(p) = self.hosts[super::idx(a)].proc.as_ref() else { return };
        // A leads in a new epoch: its last record is that epoch's no-op.
        let last = p.vol.r.replica().journal().last();
        let leading = p.vol.view.leader == Some(a) && last.epoch == p.vol.view.epoch;
        if leading && *matched > n0 && *matched < last.seq {
            // From now on nothing of A's reaches O (its no-op least of
            // all); A lives on for 20 ms, long enough to apply whatever it
            // took for committed.
            self.net.set_cut(a, o, true);
            self.figure8 = Some(Figure8::Failing { a, w });
            let m = *matched;
            self.note(|| {
                format!("FIGURE 8: n{o} holds n{a}'s old records through {m}, not its no-op {last:?}: n{a} -> n{o} cut, n{a} dies in 20 ms")
            });
            self.push(self.now + 20_000, Ev::Figure8(Figure8Step::KillA));
        }
    }

    /// The timed steps.
    pub(super) fn figure8_step(&mut self, step: Figure8Step) -> Res {
        match (step, self.figure8) {
            (Figure8Step::KillW, Some(Figure8::Orphan { a, w, o, n0 })) => {
                self.note(|| format!("FIGURE 8: n{w} dies; links heal (n{a} and n{o} elect)"));
                self.take_down(w, false);
                self.net.heal();
                self.figure8 = Some(Figure8::Replaying { a, w, o, n0 });
            }
            (Figure8Step::KillA, Some(Figure8::Failing { a, w })) => {
                self.note(|| format!("FIGURE 8: n{a} dies; n{w} restarts, n{a} later"));
                self.take_down(a, false);
                self.net.heal();
                self.figure8 = Some(Figure8::Done);
                self.push(self.now + 50_000, Ev::Restart { node: w });
                self.push(self.now + 1_500_000, Ev::Restart { node: a });
            }
            _ => {}
        }
        Ok(())
    }
}

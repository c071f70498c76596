//! Rule 16's verdict for the core: is this node fit to lead?
//!
//! Three sources: the replica's own `Out::Electable` (resyncing, failed,
//! split brain), the glue's watch on journal syncs (a sync stuck past
//! a limit: the disk hangs, and the volume thread with it, so only the
//! glue can tell), and, where the node has one, its VIP lease fence (a
//! node whose kernel fence is missing must not hold the VIP: fail
//! closed), and, on a node that runs a PBX, whether it refuses the role
//! after repeated PBX failures (issue 11). The core gets `Input::Electable(fit)` on changes only.

/// What the core is told: fit to lead only while the replica says so and
/// no journal sync is stuck. Feeds `Input::Electable` on changes only.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fitness {
    replica: Option<bool>,
    stalled: bool,
    /// `None`: the node has no fence (the simulator's control world).
    fenced: Option<bool>,
    /// `None`: the node runs no service of its own (no PBX).
    service: Option<bool>,
    told: Option<bool>,
}

impl Fitness {
    /// The replica reported electable (or not).
    pub fn replica(&mut self, electable: bool) -> Option<bool> {
        self.replica = Some(electable);
        self.change()
    }

    /// The watch was looked at.
    pub fn stall(&mut self, stalled: bool) -> Option<bool> {
        self.stalled = stalled;
        self.change()
    }

    /// The VIP's lease fence is installed (or not).
    pub fn fence(&mut self, installed: bool) -> Option<bool> {
        self.fenced = Some(installed);
        self.change()
    }

    /// Whether the service (the PBX) may run here if this node leads: not
    /// while it refuses the role after repeated failures.
    pub fn service(&mut self, fit: bool) -> Option<bool> {
        self.service = Some(fit);
        self.change()
    }

    /// Fit as far as storage and the fence go (the service aside): the
    /// replica current, no sync stuck, the fence installed.
    pub fn storage_fit(&self) -> bool {
        self.replica.unwrap_or(true) && !self.stalled && self.fenced.unwrap_or(true)
    }

    /// Whether the watch last saw a stuck sync.
    pub fn sync_stalled(&self) -> bool {
        self.stalled
    }

    /// The value to feed the core, if it changed.
    fn change(&mut self) -> Option<bool> {
        let fit = self.storage_fit() && self.service.unwrap_or(true);
        (self.told != Some(fit)).then(|| {
            self.told = Some(fit);
            fit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_is_told_fit_only_when_both_agree_and_only_on_changes() {
        let mut f = Fitness::default();
        assert_eq!(f.stall(false), Some(true));
        assert_eq!(f.replica(true), None);
        assert_eq!(f.stall(true), Some(false), "a stuck sync makes the node unfit");
        assert_eq!(f.replica(true), None, "still stuck");
        assert_eq!(f.stall(false), Some(true));
        assert_eq!(f.replica(false), Some(false));
        assert_eq!(f.stall(false), None);
    }

    #[test]
    fn a_missing_fence_makes_the_node_unfit_and_no_fence_at_all_does_not() {
        let mut f = Fitness::default();
        assert_eq!(f.replica(true), Some(true), "no fence reported: fit");
        assert_eq!(f.fence(false), Some(false), "fail closed");
        assert_eq!(f.stall(false), None);
        assert_eq!(f.fence(true), Some(true));
        assert_eq!(f.fence(true), None);
    }
}

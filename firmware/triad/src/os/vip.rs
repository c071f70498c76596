//! The VIP as the runtime sees it: one narrow trait, [`VipOps`], carrying
//! out the core's [`VipAction`]s, with a kernel implementation
//! ([`KernelVip`]) and an in-memory one ([`FakeVip`]) of the same shape.
//!
//! The caller chooses the implementation (not `cfg(test)`), so runtime
//! tests drive the real loop against [`FakeVip`]. Neither implementation
//! decides anything: each action does exactly what it names, and ordering
//! (add before announce, remove before handing over) is the core's job.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use triad_core::VipAction;

use super::announce::{gratuitous_arp, unsolicited_na, AnnounceError, AnnounceSocket};
use super::netlink::{Netlink, NetlinkError};

/// The VIP's addresses and its kernel lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSpec {
    /// IPv4 VIP and prefix length.
    pub v4: Option<(Ipv4Addr, u8)>,
    /// IPv6 VIP and prefix length.
    pub v6: Option<(Ipv6Addr, u8)>,
    /// Kernel lifetime given on add and on every renew.
    pub lifetime_secs: u32,
}

impl VipSpec {
    /// Every configured address with its prefix length.
    fn addresses(&self) -> impl Iterator<Item = (IpAddr, u8)> {
        let v4 = self.v4.map(|(a, p)| (IpAddr::V4(a), p));
        let v6 = self.v6.map(|(a, p)| (IpAddr::V6(a), p));
        v4.into_iter().chain(v6)
    }
}

/// A VIP action failed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// Reading the interface's MAC failed.
    #[error("cannot read the MAC address of interface {ifindex}")]
    Mac {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// Opening the announce socket failed.
    #[error("cannot open the announce socket on interface {ifindex}")]
    Socket {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: AnnounceError,
    },
    /// An address operation failed (the source names address and link).
    #[error("VIP action {action:?} failed")]
    Address {
        /// The action.
        action: VipAction,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// Sending an announcement failed.
    #[error("announcing {address} failed")]
    Announce {
        /// The VIP announced.
        address: IpAddr,
        /// Cause.
        #[source]
        source: AnnounceError,
    },
    /// The lease ended before the action could go out, or while it was
    /// under way (then the VIP was removed again at once).
    #[error("VIP action {action:?} not carried out: the lease ended")]
    LeaseEnded {
        /// The action.
        action: VipAction,
    },
    /// A failure injected into [`FakeVip`].
    #[error("injected failure of {action:?}")]
    Injected {
        /// The action that was made to fail.
        action: VipAction,
    },
}

/// Carries out VIP actions. Implementations try every configured address
/// family even after one fails and report the first failure, so a
/// half-applied action leaves as little behind as possible (a Remove above
/// all).
pub trait VipOps {
    /// Carries out `action`; the runtime reports the result to the core as
    /// `Input::VipDone`.
    fn apply(&mut self, action: VipAction) -> impl Future<Output = Result<(), VipError>>;
}

/// The lease a VIP action is carried out under: the end the core gave
/// (none: no lease) and the core's clock.
pub struct Lease<'a> {
    /// The lease's end, if the core holds one.
    pub until: Option<triad_core::Instant>,
    /// The core's clock.
    pub now: &'a dyn Fn() -> triad_core::Instant,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("until", &self.until).finish()
    }
}

impl Lease<'_> {
    /// Whether the lease holds at this instant.
    pub fn holds(&self) -> bool {
        self.until.is_some_and(|t| (self.now)() < t)
    }
}

/// Carries out `action` only inside `lease` (invariant 1), whatever the
/// adapter: the lease is checked right before the action (no await
/// between the check and an announcement's send, which is synchronous),
/// and, for an action that leaves the VIP on the interface (Add, Renew:
/// a renew re-creates a lapsed address), again after its await: a freeze
/// or a slow netlink round trip that outlasted the lease is undone by an
/// immediate Remove. A Remove always goes out. The window that remains
/// (inside one syscall, or a freeze between the check and the send) is
/// the lease fence's to close in the kernel.
pub async fn apply_in_lease<V: VipOps>(vip: &mut V, action: VipAction, lease: &Lease<'_>) -> Result<(), VipError> {
    if action == VipAction::Remove {
        return vip.apply(action).await;
    }
    if !lease.holds() {
        return Err(VipError::LeaseEnded { action });
    }
    let result = vip.apply(action).await;
    if matches!(action, VipAction::Add | VipAction::Renew) && !lease.holds() {
        if let Err(e) = vip.apply(VipAction::Remove).await {
            tracing::error!(error = %crate::errors::chain(&e), "cannot remove the VIP after its lease ended; the kernel lifetime will");
        }
        return Err(VipError::LeaseEnded { action });
    }
    result
}

/// The VIP on a real interface: netlink for the addresses, a raw socket
/// for announcements.
#[derive(Debug)]
pub struct KernelVip {
    netlink: Netlink,
    ifindex: u32,
    mac: [u8; 6],
    socket: AnnounceSocket,
    spec: VipSpec,
}

impl KernelVip {
    /// Reads the interface's MAC and opens the announce socket.
    pub async fn new(netlink: Netlink, ifindex: u32, spec: VipSpec) -> Result<Self, VipError> {
        let mac = netlink.link_mac(ifindex).await.map_err(|source| VipError::Mac { ifindex, source })?;
        let socket = AnnounceSocket::new(ifindex).map_err(|source| VipError::Socket { ifindex, source })?;
        Ok(Self { netlink, ifindex, mac, socket, spec })
    }

    /// The MAC the announcements carry.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    async fn address_op(&self, action: VipAction, address: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let (nl, index, lifetime) = (&self.netlink, self.ifindex, self.spec.lifetime_secs);
        match action {
            VipAction::Add => nl.add_vip(index, address, prefix, lifetime).await,
            VipAction::Renew => nl.renew_vip(index, address, prefix, lifetime).await,
            VipAction::Remove => nl.remove_vip(index, address, prefix).await,
            VipAction::Announce => Ok(()),
        }
    }

    fn announce(&self, address: IpAddr) -> Result<(), AnnounceError> {
        let frame = match address {
            IpAddr::V4(a) => gratuitous_arp(self.mac, a),
            IpAddr::V6(a) => unsolicited_na(self.mac, a),
        };
        self.socket.send(&frame)
    }
}

impl VipOps for KernelVip {
    async fn apply(&mut self, action: VipAction) -> Result<(), VipError> {
        let mut first_error = None;
        for (address, prefix) in self.spec.addresses() {
            let result = if action == VipAction::Announce {
                self.announce(address).map_err(|source| VipError::Announce { address, source })
            } else {
                self.address_op(action, address, prefix).await.map_err(|source| VipError::Address { action, source })
            };
            if let Err(e) = result {
                tracing::debug!(?action, %address, error = %e, "VIP action failed for one address");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// An in-memory VIP for runtime tests: records every action and tracks
/// whether the VIP would be held.
#[derive(Clone, Default)]
pub struct FakeVip {
    /// Runs inside every action, as if it took time (a test moves its
    /// clock here: a slow netlink round trip, or a freeze in the await).
    pub during: Option<std::sync::Arc<dyn Fn(VipAction) + Send + Sync>>,
    /// Every action applied, in order, failed ones included.
    pub log: Vec<VipAction>,
    /// Whether the VIP is currently "on the interface".
    pub held: bool,
    /// Make the next action fail (it is still logged; it changes nothing).
    pub fail_next: bool,
}

impl VipOps for FakeVip {
    async fn apply(&mut self, action: VipAction) -> Result<(), VipError> {
        self.log.push(action);
        if let Some(during) = &self.during {
            during(action);
        }
        if std::mem::take(&mut self.fail_next) {
            return Err(VipError::Injected { action });
        }
        match action {
            // Like the kernel: renewing a lapsed address re-creates it.
            VipAction::Add | VipAction::Renew => self.held = true,
            VipAction::Remove => self.held = false,
            VipAction::Announce => {}
        }
        Ok(())
    }
}

impl std::fmt::Debug for FakeVip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVip").field("log", &self.log).field("held", &self.held).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use triad_core::Instant;

    /// A clock a FakeVip moves by `step` µs inside every action.
    fn slow_vip(step: u64) -> (FakeVip, Arc<AtomicU64>) {
        let clock = Arc::new(AtomicU64::new(0));
        let c = clock.clone();
        let vip = FakeVip {
            during: Some(Arc::new(move |_| {
                c.fetch_add(step, Ordering::SeqCst);
            })),
            ..FakeVip::default()
        };
        (vip, clock)
    }

    #[test]
    fn an_add_or_renew_that_outlasts_the_lease_is_undone() {
        for action in [VipAction::Add, VipAction::Renew] {
            let (mut vip, clock) = slow_vip(600);
            let now = || Instant(clock.load(Ordering::SeqCst));
            let lease = Lease { until: Some(Instant(500)), now: &now };
            let r = run(apply_in_lease(&mut vip, action, &lease));
            assert!(matches!(r, Err(VipError::LeaseEnded { .. })), "{action:?}: {r:?}");
            assert!(!vip.held, "{action:?}: the VIP stayed after the lease ended during the action");
            assert_eq!(vip.log, [action, VipAction::Remove]);
        }
    }

    #[test]
    fn nothing_but_remove_goes_out_without_a_lease() {
        let (mut vip, clock) = slow_vip(0);
        clock.store(500, Ordering::SeqCst);
        let now = || Instant(clock.load(Ordering::SeqCst));
        for until in [None, Some(Instant(500))] {
            let lease = Lease { until, now: &now };
            for action in [VipAction::Add, VipAction::Renew, VipAction::Announce] {
                let r = run(apply_in_lease(&mut vip, action, &lease));
                assert!(matches!(r, Err(VipError::LeaseEnded { .. })), "{action:?}: {r:?}");
            }
            run(apply_in_lease(&mut vip, VipAction::Remove, &lease)).expect("remove");
        }
        assert_eq!(vip.log, [VipAction::Remove, VipAction::Remove]);
    }

    #[test]
    fn inside_the_lease_actions_go_out_as_named() {
        let (mut vip, clock) = slow_vip(10);
        let now = || Instant(clock.load(Ordering::SeqCst));
        let lease = Lease { until: Some(Instant(1_000)), now: &now };
        for action in [VipAction::Add, VipAction::Announce, VipAction::Renew] {
            run(apply_in_lease(&mut vip, action, &lease)).expect("inside the lease");
        }
        assert!(vip.held);
        assert_eq!(vip.log, [VipAction::Add, VipAction::Announce, VipAction::Renew]);
    }

    fn run<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn fake_tracks_holding_and_logs_in_order() {
        let mut vip = FakeVip::default();
        run(async {
            for action in [VipAction::Add, VipAction::Announce, VipAction::Renew] {
                vip.apply(action).await.expect("apply");
            }
            assert!(vip.held);
            vip.apply(VipAction::Remove).await.expect("remove");
        });
        assert!(!vip.held);
        assert_eq!(vip.log, [VipAction::Add, VipAction::Announce, VipAction::Renew, VipAction::Remove]);
    }

    #[test]
    fn fake_fails_once_without_effect() {
        let mut vip = FakeVip { fail_next: true, ..FakeVip::default() };
        run(async {
            assert!(matches!(vip.apply(VipAction::Add).await, Err(VipError::Injected { action: VipAction::Add })));
            assert!(!vip.held);
            vip.apply(VipAction::Add).await.expect("second add");
        });
        assert!(vip.held);
        assert!(!vip.fail_next);
        assert_eq!(vip.log, [VipAction::Add, VipAction::Add]);
    }

    #[test]
    fn spec_lists_both_families() {
        let spec = VipSpec {
            v4: Some((Ipv4Addr::new(192, 0, 2, 10), 24)),
            v6: Some((Ipv6Addr::LOCALHOST, 64)),
            lifetime_secs: 2,
        };
        let all: Vec<_> = spec.addresses().collect();
        assert_eq!(all, [(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 24), (IpAddr::V6(Ipv6Addr::LOCALHOST), 64)]);
    }
}

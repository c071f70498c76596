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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeVip {
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

#[cfg(test)]
mod tests {
    use super::*;

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

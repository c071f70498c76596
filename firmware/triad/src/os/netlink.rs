//! rtnetlink adapter: interface lookup and the addresses on it.
//!
//! Owns one rtnetlink connection (its I/O task runs on the tokio runtime
//! that created it). The VIP is installed with a kernel lifetime
//! (IFA_CACHEINFO), so the kernel itself deletes it if the supervisor stops
//! renewing: a hung or frozen supervisor cannot keep holding the VIP. This
//! module must not decide when to add, renew or remove; it only does it.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlag, AddressMessage, CacheInfo};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

/// How often [`Netlink::wait_for_link`] looks for the interface again.
const LINK_POLL: Duration = Duration::from_millis(100);

/// A netlink operation failed. rtnetlink's error is boxed: it can hold a
/// whole netlink message, which would make every `Result` here large.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// [`Netlink::new`] was called outside a tokio runtime.
    #[error("no tokio runtime to drive the netlink connection")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The netlink socket could not be opened.
    #[error("cannot open a route netlink socket")]
    Connect(#[source] io::Error),
    /// Looking the interface up failed for a reason other than absence.
    #[error("cannot look up interface {name}")]
    GetLink {
        /// Interface name.
        name: String,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The interface did not appear in time.
    #[error("interface {name} did not appear within {timeout:?}")]
    LinkTimeout {
        /// Interface name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Reading the link (for its MAC) failed.
    #[error("cannot read link {ifindex}")]
    LinkMac {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The link exists but has no 6-byte hardware address.
    #[error("link {ifindex} has no Ethernet MAC address")]
    NoMac {
        /// Interface index.
        ifindex: u32,
    },
    /// Setting the link up failed.
    #[error("cannot set link {ifindex} up")]
    SetLinkUp {
        /// Interface index.
        ifindex: u32,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Adding the node's own address failed.
    #[error("cannot add address {address}/{prefix_len} to link {ifindex}")]
    EnsureAddress {
        /// Interface index.
        ifindex: u32,
        /// The address.
        address: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Adding the VIP failed.
    #[error("cannot add VIP {address}/{prefix_len} to link {ifindex}")]
    AddVip {
        /// Interface index.
        ifindex: u32,
        /// The VIP.
        address: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Renewing the VIP's lifetime failed.
    #[error("cannot renew VIP {address}/{prefix_len} on link {ifindex}")]
    RenewVip {
        /// Interface index.
        ifindex: u32,
        /// The VIP.
        address: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Removing the VIP failed (absence is not a failure).
    #[error("cannot remove VIP {address}/{prefix_len} from link {ifindex}")]
    RemoveVip {
        /// Interface index.
        ifindex: u32,
        /// The VIP.
        address: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Listing addresses failed.
    #[error("cannot list addresses of link {ifindex} (looking for {address})")]
    HasAddress {
        /// Interface index.
        ifindex: u32,
        /// The address looked for.
        address: IpAddr,
        /// Cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// A route-netlink connection. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and spawns its I/O task on the current tokio
    /// runtime. The socket belongs to the network namespace of the calling
    /// thread.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(NetlinkError::NoRuntime)?;
        let (connection, handle, _messages) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        // The task ends when every Handle is dropped.
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// Waits until interface `name` exists and returns its index. In the lab
    /// the veth is moved into the node's namespace after the supervisor
    /// starts, so absence is expected for a while.
    pub async fn wait_for_link(&self, name: &str, timeout: Duration) -> Result<u32, NetlinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lookup = self.handle.link().get().match_name(name.to_owned()).execute().try_next().await;
            match lookup {
                Ok(Some(link)) => return Ok(link.header.index),
                // A by-name lookup of a missing link fails with ENODEV.
                Ok(None) => {}
                Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                Err(source) => return Err(NetlinkError::GetLink { name: name.to_owned(), source: Box::new(source) }),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetlinkError::LinkTimeout { name: name.to_owned(), timeout });
            }
            tokio::time::sleep(LINK_POLL).await;
        }
    }

    /// The link's Ethernet MAC address.
    pub async fn link_mac(&self, ifindex: u32) -> Result<[u8; 6], NetlinkError> {
        let link = self
            .handle
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await
            .map_err(|source| NetlinkError::LinkMac { ifindex, source: Box::new(source) })?
            .ok_or(NetlinkError::NoMac { ifindex })?;
        link.attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or(NetlinkError::NoMac { ifindex })
    }

    /// Sets the link administratively up (idempotent).
    pub async fn set_link_up(&self, ifindex: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(ifindex)
            .up()
            .execute()
            .await
            .map_err(|source| NetlinkError::SetLinkUp { ifindex, source: Box::new(source) })
    }

    /// Adds the node's own permanent address; an existing one is fine.
    pub async fn ensure_address(&self, ifindex: u32, address: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        match self.handle.address().add(ifindex, address, prefix_len).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            result => result.map_err(|source| NetlinkError::EnsureAddress {
                ifindex,
                address,
                prefix_len,
                source: Box::new(source),
            }),
        }
    }

    /// Adds the VIP with a kernel lifetime of `lifetime_secs` (valid and
    /// preferred): the kernel deletes it unless [`Self::renew_vip`] comes
    /// first. IPv6 skips DAD: the VIP moves between nodes on purpose, and a
    /// tentative address could not be used (nor announced) for about a
    /// second. An existing VIP is renewed instead.
    pub async fn add_vip(
        &self,
        ifindex: u32,
        address: IpAddr,
        prefix_len: u8,
        lifetime_secs: u32,
    ) -> Result<(), NetlinkError> {
        let result = self.vip_request(ifindex, address, prefix_len, lifetime_secs, false).await;
        match result {
            // Already there (a restart, or a repeated Add): restart its lease.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                self.renew_vip(ifindex, address, prefix_len, lifetime_secs).await
            }
            result => {
                result.map_err(|source| NetlinkError::AddVip { ifindex, address, prefix_len, source: Box::new(source) })
            }
        }
    }

    /// Restarts the VIP's kernel lifetime (NLM_F_REPLACE, as
    /// `ip addr change ... valid_lft N preferred_lft N`). Note that the
    /// kernel creates the address if it has already expired; a caller that
    /// must know whether the lease lapsed checks [`Self::has_address`] first.
    pub async fn renew_vip(
        &self,
        ifindex: u32,
        address: IpAddr,
        prefix_len: u8,
        lifetime_secs: u32,
    ) -> Result<(), NetlinkError> {
        self.vip_request(ifindex, address, prefix_len, lifetime_secs, true)
            .await
            .map_err(|source| NetlinkError::RenewVip { ifindex, address, prefix_len, source: Box::new(source) })
    }

    /// Deletes the VIP; an absent VIP counts as removed.
    pub async fn remove_vip(&self, ifindex: u32, address: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = family(address);
        message.header.prefix_len = prefix_len;
        message.header.index = ifindex;
        message.attributes.push(AddressAttribute::Local(address));
        message.attributes.push(AddressAttribute::Address(address));
        match self.handle.address().del(message).execute().await {
            // The kernel says EADDRNOTAVAIL for a missing address; the lease
            // may simply have run out first.
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ESRCH)) => Ok(()),
            result => result.map_err(|source| NetlinkError::RemoveVip {
                ifindex,
                address,
                prefix_len,
                source: Box::new(source),
            }),
        }
    }

    /// Whether `address` is currently on the link (any prefix length).
    pub async fn has_address(&self, ifindex: u32, address: IpAddr) -> Result<bool, NetlinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(ifindex).set_address_filter(address);
        // Ask the kernel for one family only; the filter does the rest.
        request.message_mut().header.family = family(address);
        let found = request.execute().try_next().await.map_err(|source| NetlinkError::HasAddress {
            ifindex,
            address,
            source: Box::new(source),
        })?;
        Ok(found.is_some())
    }

    /// RTM_NEWADDR with a lifetime: exclusive create (`replace == false`)
    /// or create-or-replace.
    async fn vip_request(
        &self,
        ifindex: u32,
        address: IpAddr,
        prefix_len: u8,
        lifetime_secs: u32,
        replace: bool,
    ) -> Result<(), rtnetlink::Error> {
        let mut request = self.handle.address().add(ifindex, address, prefix_len);
        let attributes = &mut request.message_mut().attributes;
        // CacheInfo is non_exhaustive; cstamp/tstamp are ignored on input.
        let mut lifetime = CacheInfo::default();
        lifetime.ifa_preferred = lifetime_secs;
        lifetime.ifa_valid = lifetime_secs;
        attributes.push(AddressAttribute::CacheInfo(lifetime));
        if address.is_ipv6() {
            attributes.push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        }
        if replace {
            request.replace().execute().await
        } else {
            request.execute().await
        }
    }
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The positive errno of a netlink error reply, if it is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

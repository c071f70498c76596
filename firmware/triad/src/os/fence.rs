//! nftables adapter: a kernel-enforced lease fence for the VIP.
//!
//! [`Fence::install`] puts one netdev-family table, `triad_fence`, on the
//! node's interface (in the caller's network namespace). It holds a set
//! `lease` (and `lease6` when an IPv6 VIP is configured) with `flags
//! timeout`, and two base chains that drop the VIP's traffic unless the VIP
//! is an element of its set:
//!
//! ```text
//! table netdev triad_fence {
//!   set lease  { type ipv4_addr; flags timeout; }
//!   set lease6 { type ipv6_addr; flags timeout; }            # IPv6 VIP only
//!   chain egress { type filter hook egress device IFACE priority 0; policy accept;
//!     meta protocol arp arp saddr ip VIP arp saddr ip != @lease drop   # replies + gratuitous ARP
//!     meta protocol ip  ip saddr VIP ip saddr != @lease drop
//!     meta protocol ip6 ip6 saddr VIP6 ip6 saddr != @lease6 drop
//!     meta protocol ip6 meta l4proto 58 icmpv6 type 136 @th,64,128 VIP6 @th,64,128 != @lease6 drop  # NA
//!   }
//!   chain ingress { type filter hook ingress device IFACE priority 0; policy accept;
//!     meta protocol ip  ip daddr VIP ip daddr != @lease drop
//!     meta protocol ip6 ip6 daddr VIP6 ip6 daddr != @lease6 drop
//!   }
//! }
//! ```
//!
//! An element carries a kernel timeout, so the kernel itself silences the
//! VIP when the supervisor stops refreshing (dead, frozen, partitioned from
//! its own loop): the lease is enforced below the process. Expiry follows
//! jiffies (CLOCK_MONOTONIC), so this guards against a stuck supervisor,
//! not against a frozen kernel or VM.
//!
//! Choices that are not obvious:
//! - Incoming ARP requests for the VIP are NOT dropped: the egress ARP rule
//!   already drops the kernel's answer, and dropping on ingress would also
//!   hide another host's gratuitous ARP for the VIP from `arp_watch` (its
//!   socket is bound to ETH_P_ARP, which netdev ingress runs before).
//! - The NA rule checks `meta l4proto` (the kernel's parse, which skips
//!   extension headers) rather than the IPv6 next-header byte: an NA behind
//!   an extension header must be dropped too.
//! - The table is deleted and recreated in one batch with the trick nft
//!   uses (add, delete, add): it works whether or not an old table exists,
//!   on kernels without NFT_MSG_DESTROYTABLE.
//! - Not an owner table (NFT_TABLE_F_OWNER): it would vanish with the
//!   process and leave the VIP unfenced; the element's timeout is what
//!   must end the lease, not the socket.
//!
//! This module must not decide anything: it installs, grants, refreshes,
//! revokes and reads back exactly when told. It is synchronous (one
//! blocking netlink socket per [`Fence`]); each operation is one
//! `sendmsg` the kernel handles before returning plus reading the acks
//! (measured well under a millisecond), so the caller may run it inline or
//! on a blocking thread.
//!
//! Crate choice: `netlink-packet-netfilter` 0.4 has typed nf_tables
//! messages (tables, chains, rules, expressions, sets, elements with
//! timeout/expiration, batches) in pure Rust; `netlink-sys` is the socket
//! rtnetlink already uses. rustables has no element timeouts and the
//! `nftables` crate drives the `nft` binary with whole-second timeouts.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, DevHookNumber, ExpressionAttribute, Expressions, Hook,
    HookNumber, Immediate, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetFlags,
    SetMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// Name of the fence table (one per node, in the node's namespace).
pub const TABLE: &str = "triad_fence";
/// The IPv4 lease set.
pub const SET4: &str = "lease";
/// The IPv6 lease set.
pub const SET6: &str = "lease6";
/// The egress base chain.
pub const EGRESS: &str = "egress";
/// The ingress base chain.
pub const INGRESS: &str = "ingress";

// From linux/netfilter/nfnetlink.h and nf_tables.h, linux/if_ether.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_DATATYPE_IPADDR: u32 = 7;
const NFT_DATATYPE_IP6ADDR: u32 = 8;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_LOOKUP_F_INV: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ARP sender protocol address, IPv4 over Ethernet (8 + 6).
const ARP_SPA: u32 = 14;
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
const IPV6_SADDR: u32 = 8;
const IPV6_DADDR: u32 = 24;
/// NA target address, from the ICMPv6 header (type, code, csum, flags).
const NA_TARGET: u32 = 8;
const IFNAMSIZ: usize = 16;

/// Bounds a read that should never block: every answer to a batch is queued
/// before `sendmsg` returns. Only a kernel bug or a lost dump part hits it.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Netlink dump parts are at most a page or two; 64 KiB holds any of them.
const RECV_BUF: usize = 64 * 1024;

/// A fence operation failed. `op` names the operation ("install",
/// "grant", "refresh", "revoke", "check").
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Neither an IPv4 nor an IPv6 VIP was given.
    #[error("no VIP to fence: give an IPv4 or an IPv6 VIP")]
    NoVip,
    /// The interface name cannot name a Linux interface.
    #[error("invalid interface name {0:?}")]
    InterfaceName(String),
    /// The interface does not exist in this network namespace.
    #[error("interface {ifname} does not exist in this network namespace")]
    NoInterface {
        /// Interface name (or index, as text).
        ifname: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Opening or setting up the netfilter netlink socket failed.
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] io::Error),
    /// The kernel lacks nf_tables, the netdev family or its egress hook:
    /// the caller must not hold the VIP.
    #[error("the kernel cannot enforce the fence on {ifname} (nf_tables, netdev family or egress hook missing)")]
    Unsupported {
        /// Interface name.
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The lease element is not in the set (expired, revoked or never
    /// granted): the batch changed nothing, the VIP stays fenced.
    #[error("{op}: the lease element is not present (expired or never granted)")]
    NotPresent {
        /// Operation.
        op: &'static str,
    },
    /// `grant` found the element already present and changed nothing.
    #[error("{op}: the lease element is already present")]
    AlreadyPresent {
        /// Operation.
        op: &'static str,
    },
    /// The fence table or one of its sets is gone (deleted by someone
    /// else): the VIP is NOT fenced until `install` runs again.
    #[error("{op}: the fence table {TABLE} or its lease set is missing")]
    FenceMissing {
        /// Operation.
        op: &'static str,
    },
    /// The kernel refused the operation.
    #[error("{op}: the kernel refused the nf_tables request")]
    Kernel {
        /// Operation.
        op: &'static str,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving on the netlink socket failed.
    #[error("{op}: netlink I/O failed")]
    Io {
        /// Operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel did not answer every message of a request in time.
    #[error("{op}: no complete answer from the kernel within {RECV_TIMEOUT:?}")]
    Timeout {
        /// Operation.
        op: &'static str,
    },
    /// A reply could not be decoded.
    #[error("{op}: malformed netlink reply: {detail}")]
    Decode {
        /// Operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// What `grant` or `refresh` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The element is in the set with this timeout (milliseconds, as sent;
    /// the kernel rounds it down to whole jiffies).
    Held {
        /// Timeout sent to the kernel.
        ttl_ms: u64,
    },
    /// The ttl was under a millisecond: the element was revoked instead
    /// (a zero timeout would mean "never expires" to some kernels).
    Revoked,
}

/// A base chain as read back by [`Fence::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainState {
    /// No chain of that name in the table.
    Missing,
    /// The chain exists.
    Present {
        /// Bound to the expected device and hook, type filter, policy
        /// accept.
        hooked: bool,
        /// Number of rules in it.
        rules: usize,
        /// Its rules are, in order, exactly the expressions
        /// [`Fence::install`] put there (so a rule swapped for another
        /// with the count unchanged is noticed).
        as_installed: bool,
    },
}

/// A lease element as read back by [`Fence::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElementState {
    /// Time left before the kernel expires it (NFTA_SET_ELEM_EXPIRATION).
    pub remaining: Duration,
    /// The timeout it was added with (NFTA_SET_ELEM_TIMEOUT).
    pub timeout: Duration,
}

/// The fence as the kernel has it, from [`Fence::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceState {
    /// The `triad_fence` table exists.
    pub table: bool,
    /// Every configured lease set exists with `flags timeout`.
    pub sets: bool,
    /// The egress chain.
    pub egress: ChainState,
    /// The ingress chain.
    pub ingress: ChainState,
    /// Rules [`Fence::install`] puts in the egress chain.
    pub expected_egress_rules: usize,
    /// Rules [`Fence::install`] puts in the ingress chain.
    pub expected_ingress_rules: usize,
    /// The IPv4 VIP's element, if an IPv4 VIP is configured and present.
    pub lease4: Option<ElementState>,
    /// The IPv6 VIP's element, if an IPv6 VIP is configured and present.
    pub lease6: Option<ElementState>,
}

impl FenceState {
    /// Table, sets and both chains are there as installed (hooked right,
    /// with the expected rule counts).
    pub fn intact(&self) -> bool {
        let chain_ok = |chain: ChainState, expected| matches!(chain, ChainState::Present { hooked: true, rules, as_installed: true } if rules == expected);
        self.table
            && self.sets
            && chain_ok(self.egress, self.expected_egress_rules)
            && chain_ok(self.ingress, self.expected_ingress_rules)
    }
}

/// The lease fence on one interface. Owns one netfilter netlink socket,
/// bound to the network namespace of the thread that called
/// [`Fence::install`]; later calls act there whatever thread makes them.
#[derive(Debug)]
pub struct Fence {
    ifname: String,
    vip4: Option<Ipv4Addr>,
    vip6: Option<Ipv6Addr>,
    link: Mutex<Link>,
}

impl Fence {
    /// Replaces any previous fence with a fresh one on `ifname`, in one
    /// batch: the old table and any live element go (fail closed at start),
    /// then table, set(s), chains and rules are created. Until
    /// [`Fence::grant`], the VIP is silent on `ifname`.
    pub fn install(ifname: &str, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Result<Self, FenceError> {
        if vip4.is_none() && vip6.is_none() {
            return Err(FenceError::NoVip);
        }
        if ifname.is_empty() || ifname.len() >= IFNAMSIZ || ifname.bytes().any(|b| b == 0 || b == b'/') {
            return Err(FenceError::InterfaceName(ifname.to_owned()));
        }
        // The kernel answers ENOENT both for a missing device and for a
        // missing chain type; look the device up first to tell them apart.
        nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| FenceError::NoInterface { ifname: ifname.to_owned(), source: e.into() })?;
        let link = Link::open().map_err(|source| match source.raw_os_error() {
            Some(libc::EPROTONOSUPPORT) => FenceError::Unsupported { ifname: ifname.to_owned(), source },
            _ => FenceError::Socket(source),
        })?;
        let fence = Self { ifname: ifname.to_owned(), vip4, vip6, link: Mutex::new(link) };
        fence.batch(install_ops(ifname, vip4, vip6)).map_err(|e| match e {
            Nack::Errno(errno)
                if matches!(errno, libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::ENOENT | libc::EPROTONOSUPPORT) =>
            {
                FenceError::Unsupported { ifname: ifname.to_owned(), source: io::Error::from_raw_os_error(errno) }
            }
            other => other.into_error("install"),
        })?;
        Ok(fence)
    }

    /// [`Fence::install`] on the interface with index `ifindex`.
    pub fn install_ifindex(ifindex: u32, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Result<Self, FenceError> {
        let name = nix::net::if_::if_indextoname(ifindex)
            .map_err(|e| FenceError::NoInterface { ifname: ifindex.to_string(), source: e.into() })?;
        let name =
            name.into_string().map_err(|e| FenceError::InterfaceName(e.into_cstring().to_string_lossy().into()))?;
        Self::install(&name, vip4, vip6)
    }

    /// The interface the fence is on.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Adds the lease element(s) with timeout `ttl`, only if absent
    /// (NLM_F_EXCL): present, it fails with [`FenceError::AlreadyPresent`]
    /// rather than keep an old timeout. A ttl under 1 ms revokes instead.
    pub fn grant(&self, ttl: Duration) -> Result<Refreshed, FenceError> {
        let Some(ms) = lease_ms(ttl) else {
            self.revoke()?;
            return Ok(Refreshed::Revoked);
        };
        match self.batch(grant_ops(&self.keys(), ms)) {
            Ok(()) => Ok(Refreshed::Held { ttl_ms: ms.get() }),
            Err(Nack::Errno(libc::EEXIST)) => Err(FenceError::AlreadyPresent { op: "grant" }),
            Err(Nack::Errno(libc::ENOENT)) => Err(FenceError::FenceMissing { op: "grant" }),
            Err(e) => Err(e.into_error("grant")),
        }
    }

    /// Adds the arming element(s) with timeout `ttl`: a key no packet for
    /// the VIP carries (0.0.0.0, ::), whose only use is to make
    /// [`grant_armed`](Self::grant_armed) possible for `ttl` from now (a
    /// grant with a timeout read after this call returned, applied at
    /// whatever later instant, therefore ends within `ttl` of the arming:
    /// `triad_host::fence`). An old arming element is replaced, so its
    /// timeout is fresh.
    pub fn arm(&self, ttl: Duration) -> Result<(), FenceError> {
        let Some(ms) = lease_ms(ttl) else {
            return Err(FenceError::Kernel { op: "arm", source: io::Error::from_raw_os_error(libc::EINVAL) });
        };
        let arms = arming_keys(self.vip4, self.vip6);
        match self.batch(grant_ops(&arms, ms)) {
            Ok(()) => Ok(()),
            Err(Nack::Errno(libc::EEXIST)) => {
                match self.batch(refresh_ops(&arms, ms)) {
                    Ok(()) => Ok(()),
                    // One of several arming elements expired in between:
                    // arm what is missing on the next try.
                    Err(e) => Err(e.into_error("arm")),
                }
            }
            Err(Nack::Errno(libc::ENOENT)) => Err(FenceError::FenceMissing { op: "arm" }),
            Err(e) => Err(e.into_error("arm")),
        }
    }

    /// In ONE batch, deletes the arming element(s) and adds the lease
    /// element(s) (exclusively) with timeout `ttl`: fails as a whole with
    /// [`FenceError::NotPresent`] once the arming has expired, so a grant
    /// that reaches the kernel late cannot outlive the arming by more than
    /// its own timeout, which the caller took from a clock read after
    /// [`arm`](Self::arm) returned.
    pub fn grant_armed(&self, ttl: Duration) -> Result<Refreshed, FenceError> {
        let Some(ms) = lease_ms(ttl) else { return Ok(Refreshed::Revoked) };
        let arms = arming_keys(self.vip4, self.vip6);
        let ops = arms
            .iter()
            .map(|(set, key)| delete_element(set, key.clone()))
            .chain(self.keys().into_iter().map(|(set, key)| add_element(set, key, ms)))
            .collect();
        match self.batch(ops) {
            Ok(()) => Ok(Refreshed::Held { ttl_ms: ms.get() }),
            Err(Nack::Errno(libc::EEXIST)) => Err(FenceError::AlreadyPresent { op: "grant" }),
            Err(Nack::Errno(libc::ENOENT)) => Err(self.absent("grant")?),
            Err(e) => Err(e.into_error("grant")),
        }
    }

    /// Replaces the element(s) with fresh ones of timeout `ttl` in ONE
    /// batch (delete, add): the batch fails as a whole with
    /// [`FenceError::NotPresent`] if an element has already expired, so a
    /// late refresh cannot bring a lease back. A ttl under 1 ms revokes.
    pub fn refresh(&self, ttl: Duration) -> Result<Refreshed, FenceError> {
        let Some(ms) = lease_ms(ttl) else {
            self.revoke()?;
            return Ok(Refreshed::Revoked);
        };
        match self.batch(refresh_ops(&self.keys(), ms)) {
            Ok(()) => Ok(Refreshed::Held { ttl_ms: ms.get() }),
            Err(Nack::Errno(libc::ENOENT)) => Err(self.absent("refresh")?),
            Err(e) => Err(e.into_error("refresh")),
        }
    }

    /// Deletes the element(s); an absent element is fine. Fails with
    /// [`FenceError::FenceMissing`] if the table or a set is gone, since
    /// then the VIP is not fenced at all.
    pub fn revoke(&self) -> Result<(), FenceError> {
        // One batch per set: a batch fails whole, and one absent element
        // must not keep the other from being deleted.
        for (set, key) in self.keys() {
            match self.batch(vec![delete_element(set, key)]) {
                Ok(()) => {}
                Err(Nack::Errno(libc::ENOENT)) => {
                    if let FenceError::FenceMissing { op } = self.absent("revoke")? {
                        return Err(FenceError::FenceMissing { op });
                    }
                }
                Err(e) => return Err(e.into_error("revoke")),
            }
        }
        Ok(())
    }

    /// Reads the fence back from the kernel: table, sets, chains (hook and
    /// rule count) and the lease element(s) with their remaining time. A
    /// missing piece is reported in the state, not as an error.
    pub fn check(&self) -> Result<FenceState, FenceError> {
        const OP: &str = "check";
        let (expected_egress_rules, expected_ingress_rules) = rule_counts(self.vip4, self.vip6);
        let mut state = FenceState {
            table: false,
            sets: false,
            egress: ChainState::Missing,
            ingress: ChainState::Missing,
            expected_egress_rules,
            expected_ingress_rules,
            lease4: None,
            lease6: None,
        };
        let table = NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.into())] });
        match self.request(table, false) {
            Ok(_) => state.table = true,
            Err(Nack::Errno(libc::ENOENT)) => return Ok(state),
            Err(e) => return Err(e.into_error(OP)),
        }
        state.egress = self.chain_state(EGRESS, DevHookNumber::Egress)?;
        state.ingress = self.chain_state(INGRESS, DevHookNumber::Ingress)?;
        state.sets = true;
        for (set, key) in self.keys() {
            if !self.set_ok(set)? {
                state.sets = false;
                continue;
            }
            let element = self.element(set, &key)?;
            if set == SET4 {
                state.lease4 = element;
            } else {
                state.lease6 = element;
            }
        }
        Ok(state)
    }

    /// The (set, key) of every configured VIP.
    fn keys(&self) -> Vec<(&'static str, Vec<u8>)> {
        keys(self.vip4, self.vip6)
    }

    /// After an ENOENT: [`FenceError::NotPresent`] if table and sets are
    /// there (so the element was missing), else [`FenceError::FenceMissing`].
    fn absent(&self, op: &'static str) -> Result<FenceError, FenceError> {
        let table = NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.into())] });
        match self.request(table, false) {
            Ok(_) => {}
            Err(Nack::Errno(libc::ENOENT)) => return Ok(FenceError::FenceMissing { op }),
            Err(e) => return Err(e.into_error(op)),
        }
        for (set, _) in self.keys() {
            if !self.set_ok(set)? {
                return Ok(FenceError::FenceMissing { op });
            }
        }
        Ok(FenceError::NotPresent { op })
    }

    /// The set exists and has timeouts.
    fn set_ok(&self, set: &str) -> Result<bool, FenceError> {
        let get = NfTablesMessage::GetSet(SetMessage {
            attributes: vec![SetAttribute::Table(TABLE.into()), SetAttribute::Name(set.into())],
        });
        match self.request(get, false) {
            Ok(replies) => Ok(replies.iter().any(|m| match m {
                NfTablesMessage::NewSet(s) => {
                    s.attributes.iter().any(|a| matches!(a, SetAttribute::Flags(f) if f.contains(SetFlags::Timeout)))
                }
                _ => false,
            })),
            Err(Nack::Errno(libc::ENOENT)) => Ok(false),
            Err(e) => Err(e.into_error("check")),
        }
    }

    fn chain_state(&self, name: &str, hook: DevHookNumber) -> Result<ChainState, FenceError> {
        const OP: &str = "check";
        let get = NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![ChainAttribute::Table(TABLE.into()), ChainAttribute::Name(name.into())],
        });
        let chain = match self.request(get, false) {
            Ok(replies) => replies.into_iter().find_map(|m| match m {
                NfTablesMessage::NewChain(c) => Some(c),
                _ => None,
            }),
            Err(Nack::Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e.into_error(OP)),
        };
        let Some(chain) = chain else { return Ok(ChainState::Missing) };
        let hooked = chain_hooked(&chain, &self.ifname, hook);
        let rules = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(TABLE.into()), RuleAttribute::Chain(name.into())],
        });
        let rules = self.request(rules, true).map_err(|e| e.into_error(OP))?;
        // The dump filter is by table and chain name; count only rules
        // that name this chain, in case a kernel ignores the filter.
        let found: Vec<_> = rules
            .iter()
            .filter_map(|m| match m {
                NfTablesMessage::NewRule(r) => Some(r),
                _ => None,
            })
            .filter(|r| {
                r.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if t == TABLE))
                    && r.attributes.iter().any(|a| matches!(a, RuleAttribute::Chain(c) if c == name))
            })
            .map(canonical_rule)
            .collect();
        let expected: Vec<_> = install_ops(&self.ifname, self.vip4, self.vip6)
            .iter()
            .filter_map(|op| match &op.msg {
                NfTablesMessage::NewRule(r) => Some(r),
                _ => None,
            })
            .filter(|r| r.attributes.iter().any(|a| matches!(a, RuleAttribute::Chain(c) if c == name)))
            .map(canonical_rule)
            .collect();
        Ok(ChainState::Present { hooked, rules: found.len(), as_installed: found == expected })
    }

    /// The live element with `key` in `set`, if any (the kernel's dump
    /// leaves out expired elements not yet collected).
    fn element(&self, set: &str, key: &[u8]) -> Result<Option<ElementState>, FenceError> {
        const OP: &str = "check";
        let get = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![SetElementList::Table(TABLE.into()), SetElementList::Set(set.into())],
        });
        let replies = match self.request(get, true) {
            Ok(replies) => replies,
            Err(Nack::Errno(libc::ENOENT)) => return Ok(None),
            Err(e) => return Err(e.into_error(OP)),
        };
        for reply in &replies {
            let NfTablesMessage::NewSetElement(m) = reply else { continue };
            for list in &m.attributes {
                let SetElementList::Elements(elements) = list else { continue };
                for element in elements {
                    let ListAttribute::Element(attrs) = element else { continue };
                    if let Some(state) = element_state(attrs, key) {
                        return Ok(Some(state));
                    }
                }
            }
        }
        Ok(None)
    }

    fn batch(&self, ops: Vec<Op>) -> Result<(), Nack> {
        self.lock().batch(&ops)
    }

    fn request(&self, msg: NfTablesMessage, dump: bool) -> Result<Vec<NfTablesMessage>, Nack> {
        self.lock().request(msg, dump)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Link> {
        // The guarded state is a socket and a counter: a panic elsewhere
        // cannot leave it inconsistent, so a poisoned lock is still usable.
        self.link.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The element's state if `attrs` describe the element with `key`.
fn element_state(attrs: &[SetElementAttribute], key: &[u8]) -> Option<ElementState> {
    let matches = attrs.iter().any(|a| matches!(a, SetElementAttribute::Key(DataAttribute::Value(k)) if k == key));
    if !matches {
        return None;
    }
    let mut state = ElementState { remaining: Duration::ZERO, timeout: Duration::ZERO };
    for attr in attrs {
        match attr {
            SetElementAttribute::Expiration(ms) => state.remaining = Duration::from_millis(*ms),
            SetElementAttribute::Timeout(ms) => state.timeout = Duration::from_millis(*ms),
            _ => {}
        }
    }
    Some(state)
}

/// A rule's expressions in a comparable form: per expression its name and
/// its attributes' Debug text, sorted (the kernel may dump attributes in
/// another order than we sent them).
fn canonical_rule(rule: &RuleMessage) -> Vec<Vec<String>> {
    fn sorted<T: std::fmt::Debug>(attrs: &[T]) -> Vec<String> {
        let mut out: Vec<String> = attrs.iter().map(|a| format!("{a:?}")).collect();
        out.sort();
        out
    }
    let mut out = Vec::new();
    for attr in &rule.attributes {
        let RuleAttribute::Expressions(list) = attr else { continue };
        for expression in list {
            let mut parts = Vec::new();
            if let ListAttribute::Element(attrs) = expression {
                for a in attrs {
                    match a {
                        ExpressionAttribute::Data(data) => parts.extend(match data {
                            Expressions::Bitwise(v) => sorted(v),
                            Expressions::Cmp(v) => sorted(v),
                            Expressions::Immediate(v) => sorted(v),
                            Expressions::Lookup(v) => sorted(v),
                            Expressions::Meta(v) => sorted(v),
                            Expressions::Payload(v) => sorted(v),
                            other => vec![format!("{other:?}")],
                        }),
                        other => parts.push(format!("{other:?}")),
                    }
                }
            } else {
                parts.push(format!("{expression:?}"));
            }
            out.push(parts);
        }
    }
    out
}

/// Whether `chain` is a filter base chain on `ifname` at `hook`, priority
/// 0, policy accept.
fn chain_hooked(chain: &ChainMessage, ifname: &str, hook: DevHookNumber) -> bool {
    let mut device = false;
    let mut number = false;
    let mut priority = false;
    let mut policy = false;
    let mut filter = false;
    for attr in &chain.attributes {
        match attr {
            ChainAttribute::Hook(hooks) => {
                for h in hooks {
                    match h {
                        Hook::NetDeviceName(name) => device = name == ifname,
                        Hook::Number(n) => number = u32::from(*n) == u32::from(hook),
                        Hook::Priority(p) => priority = *p == 0,
                        _ => {}
                    }
                }
            }
            ChainAttribute::Policy(p) => policy = *p == NF_ACCEPT,
            ChainAttribute::Type(t) => filter = t == "filter",
            _ => {}
        }
    }
    device && number && priority && policy && filter
}

/// Milliseconds for the wire, or `None` for a ttl under 1 ms (which must
/// revoke: the kernel reads a timeout of 0 as "no timeout"). Saturates.
pub fn lease_ms(ttl: Duration) -> Option<NonZeroU64> {
    NonZeroU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Egress and ingress rule counts for the configured VIPs.
fn rule_counts(vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> (usize, usize) {
    let v4 = usize::from(vip4.is_some());
    let v6 = usize::from(vip6.is_some());
    (2 * v4 + 2 * v6, v4 + v6)
}

/// The arming keys: the unspecified address of each configured family, in
/// the same set as the VIP (no rule matches it: they match the VIP only).
fn arming_keys(vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Vec<(&'static str, Vec<u8>)> {
    keys(vip4.map(|_| Ipv4Addr::UNSPECIFIED), vip6.map(|_| Ipv6Addr::UNSPECIFIED))
}

fn keys(vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Vec<(&'static str, Vec<u8>)> {
    let v4 = vip4.map(|a| (SET4, a.octets().to_vec()));
    let v6 = vip6.map(|a| (SET6, a.octets().to_vec()));
    v4.into_iter().chain(v6).collect()
}

// ---------------------------------------------------------------------------
// Message building (pure).

/// One nf_tables message of a batch with its netlink flags.
#[derive(Clone, Debug)]
struct Op {
    msg: NfTablesMessage,
    flags: u16,
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

fn meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(Register::Reg1)]))
}

fn payload(base: u32, offset: u32, len: usize) -> ListAttribute<ExpressionAttribute> {
    // Lengths here are 1, 2, 4 or 16 bytes.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    expr(Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ]))
}

fn cmp_eq(value: &[u8]) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(value.to_vec())),
    ]))
}

/// Register 1 (holding the VIP) is NOT in `set`.
fn not_in(set: &str) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Lookup(vec![
        Lookup::Set(set.into()),
        Lookup::SourceRegister(Register::Reg1),
        Lookup::Flags(NFT_LOOKUP_F_INV),
    ]))
}

fn drop_verdict() -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Other(NF_DROP))])),
    ]))
}

/// `meta protocol PROTO; payload network+offset == vip; vip !in set; drop`.
fn network_rule(chain: &str, proto: u16, offset: u32, vip: &[u8], set: &str) -> Op {
    rule(
        chain,
        vec![
            meta(MetaKey::EtherTypeProtocol),
            cmp_eq(&proto.to_be_bytes()),
            payload(NFT_PAYLOAD_NETWORK_HEADER, offset, vip.len()),
            cmp_eq(vip),
            not_in(set),
            drop_verdict(),
        ],
    )
}

/// Outgoing NA whose target is `vip6`, unless leased.
fn na_rule(vip6: &[u8]) -> Op {
    rule(
        EGRESS,
        vec![
            meta(MetaKey::EtherTypeProtocol),
            cmp_eq(&ETH_P_IPV6.to_be_bytes()),
            meta(MetaKey::L4Proto),
            cmp_eq(&[IPPROTO_ICMPV6]),
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1),
            cmp_eq(&[ND_NEIGHBOR_ADVERT]),
            payload(NFT_PAYLOAD_TRANSPORT_HEADER, NA_TARGET, vip6.len()),
            cmp_eq(vip6),
            not_in(SET6),
            drop_verdict(),
        ],
    )
}

fn rule(chain: &str, expressions: Vec<ListAttribute<ExpressionAttribute>>) -> Op {
    Op {
        msg: NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(expressions),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_APPEND,
    }
}

fn set(name: &str, id: u32, key_type: u32, key_len: u32) -> Op {
    Op {
        msg: NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(name.into()),
                SetAttribute::Flags(SetFlags::Timeout),
                SetAttribute::KeyType(key_type),
                SetAttribute::KeyLen(key_len),
                SetAttribute::Id(id),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

fn chain(name: &str, ifname: &str, hook: DevHookNumber) -> Op {
    Op {
        msg: NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(TABLE.into()),
                ChainAttribute::Name(name.into()),
                ChainAttribute::Hook(vec![
                    Hook::Number(HookNumber::Dev(hook)),
                    Hook::Priority(0),
                    Hook::NetDeviceName(ifname.into()),
                ]),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Type("filter".into()),
            ],
        }),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

fn table(msg: fn(TableMessage) -> NfTablesMessage, flags: u16) -> Op {
    Op { msg: msg(TableMessage { attributes: vec![TableAttribute::Name(TABLE.into())] }), flags }
}

/// The whole install batch: add (so that the delete cannot fail), delete,
/// then build the fence from scratch.
fn install_ops(ifname: &str, vip4: Option<Ipv4Addr>, vip6: Option<Ipv6Addr>) -> Vec<Op> {
    let mut ops = vec![
        table(NfTablesMessage::NewTable, NLM_F_CREATE),
        table(NfTablesMessage::DeleteTable, 0),
        table(NfTablesMessage::NewTable, NLM_F_CREATE | NLM_F_EXCL),
    ];
    if vip4.is_some() {
        ops.push(set(SET4, 1, NFT_DATATYPE_IPADDR, 4));
    }
    if vip6.is_some() {
        ops.push(set(SET6, 2, NFT_DATATYPE_IP6ADDR, 16));
    }
    ops.push(chain(EGRESS, ifname, DevHookNumber::Egress));
    ops.push(chain(INGRESS, ifname, DevHookNumber::Ingress));
    if let Some(vip) = vip4 {
        let vip = vip.octets();
        // ARP replies and gratuitous ARP both carry the VIP as sender.
        ops.push(network_rule(EGRESS, ETH_P_ARP, ARP_SPA, &vip, SET4));
        ops.push(network_rule(EGRESS, ETH_P_IP, IPV4_SADDR, &vip, SET4));
        ops.push(network_rule(INGRESS, ETH_P_IP, IPV4_DADDR, &vip, SET4));
    }
    if let Some(vip) = vip6 {
        let vip = vip.octets();
        ops.push(na_rule(&vip));
        ops.push(network_rule(EGRESS, ETH_P_IPV6, IPV6_SADDR, &vip, SET6));
        ops.push(network_rule(INGRESS, ETH_P_IPV6, IPV6_DADDR, &vip, SET6));
    }
    ops
}

fn elements(set: &str, key: Vec<u8>, timeout: Option<NonZeroU64>) -> SetElementMessage {
    let mut element = vec![SetElementAttribute::Key(DataAttribute::Value(key))];
    if let Some(ms) = timeout {
        element.push(SetElementAttribute::Timeout(ms.get()));
    }
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.into()),
            SetElementList::Set(set.into()),
            SetElementList::Elements(vec![ListAttribute::Element(element)]),
        ],
    }
}

/// Adds the element with timeout `ms`; fails with EEXIST if present. The
/// timeout is a `NonZeroU64`: a zero can never reach the kernel.
fn add_element(set: &str, key: Vec<u8>, ms: NonZeroU64) -> Op {
    Op { msg: NfTablesMessage::NewSetElement(elements(set, key, Some(ms))), flags: NLM_F_CREATE | NLM_F_EXCL }
}

fn delete_element(set: &str, key: Vec<u8>) -> Op {
    Op { msg: NfTablesMessage::DeleteSetElement(elements(set, key, None)), flags: 0 }
}

fn grant_ops(keys: &[(&'static str, Vec<u8>)], ms: NonZeroU64) -> Vec<Op> {
    keys.iter().map(|(set, key)| add_element(set, key.clone(), ms)).collect()
}

/// Delete then add, per set, all in one batch: any absent element fails
/// the whole batch with ENOENT and nothing is added.
fn refresh_ops(keys: &[(&'static str, Vec<u8>)], ms: NonZeroU64) -> Vec<Op> {
    keys.iter().flat_map(|(set, key)| [delete_element(set, key.clone()), add_element(set, key.clone(), ms)]).collect()
}

fn netfilter(family: NetfilterProtoFamily, res_id: u16, inner: impl Into<NetfilterMessageInner>) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner)
}

/// Appends one netlink message to `out`.
fn encode(out: &mut Vec<u8>, message: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len(), 0);
    // The slice is exactly buffer_len() long, as serialize requires.
    message.serialize(&mut out[start..]);
}

/// Encodes `ops` as one nfnetlink batch with sequence numbers from
/// `first_seq`: begin, each op with NLM_F_REQUEST | NLM_F_ACK, end.
/// Returns the bytes and the sequence numbers of the ops (which must each
/// be answered) and of the whole batch.
fn encode_batch(ops: &[Op], first_seq: u32) -> (Vec<u8>, Vec<u32>, std::ops::RangeInclusive<u32>) {
    let mut out = Vec::new();
    let mut seq = first_seq;
    let begin = netfilter(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES, ControlMessage::BatchBegin);
    encode(&mut out, begin, NLM_F_REQUEST, seq);
    let mut acked = Vec::with_capacity(ops.len());
    for op in ops {
        seq = seq.wrapping_add(1);
        let msg = netfilter(NetfilterProtoFamily::NetDev, 0, op.msg.clone());
        encode(&mut out, msg, NLM_F_REQUEST | NLM_F_ACK | op.flags, seq);
        acked.push(seq);
    }
    seq = seq.wrapping_add(1);
    let end = netfilter(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES, ControlMessage::BatchEnd);
    encode(&mut out, end, NLM_F_REQUEST, seq);
    (out, acked, first_seq..=seq)
}

// ---------------------------------------------------------------------------
// The socket.

/// Why a request failed, before it is named for the caller.
#[derive(Debug)]
enum Nack {
    /// The kernel answered with this errno (positive).
    Errno(i32),
    Io(io::Error),
    Timeout,
    Decode(String),
}

impl Nack {
    fn into_error(self, op: &'static str) -> FenceError {
        match self {
            Nack::Errno(errno) => FenceError::Kernel { op, source: io::Error::from_raw_os_error(errno) },
            Nack::Io(source) => FenceError::Io { op, source },
            Nack::Timeout => FenceError::Timeout { op },
            Nack::Decode(detail) => FenceError::Decode { op, detail },
        }
    }
}

#[derive(Debug)]
struct Link {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Link {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry only the header of the failed message, not a copy
        // of it: answers to a batch stay small.
        socket.set_cap_ack(true)?;
        let timeout = nix::sys::time::TimeVal::new(
            i64::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            i64::from(RECV_TIMEOUT.subsec_micros()),
        );
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        // Start from a time-derived sequence number so that answers meant
        // for an earlier socket of this process are unlikely to match.
        let seq = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos());
        Ok(Self { socket, seq, buf: Vec::with_capacity(RECV_BUF) })
    }

    fn next_seqs(&mut self, n: usize) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        first
    }

    /// Sends `ops` as one batch and waits for an answer to each.
    fn batch(&mut self, ops: &[Op]) -> Result<(), Nack> {
        let first = self.next_seqs(ops.len() + 2);
        let (bytes, mut pending, ours) = encode_batch(ops, first);
        self.socket.send(&bytes, 0).map_err(Nack::Io)?;
        let mut error = None;
        // The kernel processes the whole batch inside sendmsg, so every
        // answer is already queued; once an error is seen, read only what
        // is there (a failed batch may leave some messages unanswered).
        while !pending.is_empty() {
            let flags = if error.is_some() { libc::MSG_DONTWAIT } else { 0 };
            let messages = match self.recv(flags) {
                Ok(messages) => messages,
                Err(Nack::Io(e)) if e.kind() == io::ErrorKind::WouldBlock && error.is_some() => break,
                Err(Nack::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(Nack::Timeout),
                Err(e) => return Err(e),
            };
            for message in messages {
                let seq = message.header.sequence_number;
                if !in_range(&ours, seq) {
                    continue;
                }
                if let NetlinkPayload::Error(e) = message.payload {
                    pending.retain(|s| *s != seq);
                    if let Some(code) = e.code {
                        error.get_or_insert(code.get().saturating_abs());
                    }
                }
            }
        }
        match error {
            Some(errno) => Err(Nack::Errno(errno)),
            None => Ok(()),
        }
    }

    /// Sends one GET (a dump if `dump`) and collects the replies until the
    /// ack or NLMSG_DONE.
    fn request(&mut self, msg: NfTablesMessage, dump: bool) -> Result<Vec<NfTablesMessage>, Nack> {
        let seq = self.next_seqs(1);
        let flags = if dump { NLM_F_REQUEST | NLM_F_DUMP } else { NLM_F_REQUEST | NLM_F_ACK };
        let mut bytes = Vec::new();
        encode(&mut bytes, netfilter(NetfilterProtoFamily::NetDev, 0, msg), flags, seq);
        self.socket.send(&bytes, 0).map_err(Nack::Io)?;
        let mut replies = Vec::new();
        loop {
            let messages = match self.recv(0) {
                Ok(messages) => messages,
                Err(Nack::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(Nack::Timeout),
                Err(e) => return Err(e),
            };
            for message in messages {
                if message.header.sequence_number != seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(Nack::Errno(code.get().saturating_abs())),
                        None => return Ok(replies),
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        if let NetfilterMessageInner::NfTables(m) = m.inner {
                            replies.push(m);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads one datagram and splits it into netlink messages.
    fn recv(&mut self, flags: libc::c_int) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, Nack> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        let len = loop {
            match self.socket.recv(&mut self.buf, flags | libc::MSG_TRUNC) {
                Ok(len) => break len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Nack::Io(e)),
            }
        };
        if len > self.buf.len() {
            return Err(Nack::Decode(format!("datagram of {len} bytes truncated to {}", self.buf.len())));
        }
        split(&self.buf)
    }
}

fn in_range(range: &std::ops::RangeInclusive<u32>, seq: u32) -> bool {
    // The range may wrap around u32::MAX.
    let (start, end) = (*range.start(), *range.end());
    if start <= end {
        (start..=end).contains(&seq)
    } else {
        seq >= start || seq <= end
    }
}

/// Splits a datagram into netlink messages; total on any input.
fn split(datagram: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, Nack> {
    let mut messages = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_ne_bytes);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(one) = rest.get(..len).filter(|_| len >= 16) else {
            return Err(Nack::Decode(format!("netlink message length {len} with {} bytes left", rest.len())));
        };
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(one).map_err(|e| Nack::Decode(e.to_string()))?;
        messages.push(message);
        let aligned = len.saturating_add(3) & !3;
        rest = rest.get(aligned..).unwrap_or(&[]);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(op: Op) -> Vec<u8> {
        let (bytes, _, _) = encode_batch(&[op], 100);
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn zero_and_sub_millisecond_ttls_never_reach_the_wire() {
        assert_eq!(lease_ms(Duration::ZERO), None);
        assert_eq!(lease_ms(Duration::from_micros(999)), None);
        assert_eq!(lease_ms(Duration::from_micros(1000)).map(NonZeroU64::get), Some(1));
        assert_eq!(lease_ms(Duration::from_millis(300)).map(NonZeroU64::get), Some(300));
        assert_eq!(lease_ms(Duration::MAX).map(NonZeroU64::get), Some(u64::MAX));
    }

    #[test]
    fn element_add_carries_the_timeout_in_ms_big_endian() {
        let ms = NonZeroU64::new(300).expect("non-zero");
        let bytes = encoded(add_element(SET4, vec![10, 77, 0, 100], ms));
        // NFTA_SET_ELEM_TIMEOUT (4): nla_len 12, type 4, u64 big-endian.
        let mut timeout = vec![12, 0, 4, 0];
        timeout.extend_from_slice(&300u64.to_be_bytes());
        assert!(contains(&bytes, &timeout), "no big-endian timeout in {bytes:02x?}");
        // The key, nested as NFTA_DATA_VALUE (1): nla_len 8.
        assert!(contains(&bytes, &[8, 0, 1, 0, 10, 77, 0, 100]));
        // NEWSETELEM (12) of subsystem nf_tables (10), with CREATE|EXCL.
        let second = &bytes[20..];
        assert_eq!(u16::from_ne_bytes([second[4], second[5]]), (10 << 8) | 12);
        let flags = u16::from_ne_bytes([second[6], second[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        // Family netdev (5) in nfgenmsg.
        assert_eq!(second[16], 5);
    }

    #[test]
    fn refresh_is_one_batch_of_delete_then_add() {
        let ms = NonZeroU64::new(250).expect("non-zero");
        let keys = keys(Some(Ipv4Addr::new(10, 0, 0, 1)), Some(Ipv6Addr::LOCALHOST));
        let ops = refresh_ops(&keys, ms);
        let kinds: Vec<_> = ops.iter().map(|op| op.msg.message_type()).collect();
        use netlink_packet_netfilter::nftables::NfTablesMessageType as T;
        assert_eq!(kinds, [T::DeleteSetElement, T::NewSetElement, T::DeleteSetElement, T::NewSetElement]);
        let (bytes, acked, all) = encode_batch(&ops, u32::MAX - 1);
        assert_eq!(acked.len(), 4);
        assert_eq!(*all.start(), u32::MAX - 1);
        assert!(acked.iter().all(|s| in_range(&all, *s)));
        assert!(!in_range(&all, 100));
        // Batch begin and end frame the ops, both for subsystem nf_tables.
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 16);
        assert_eq!(&bytes[18..20], &[0, 10]);
        let parsed = split(&bytes).expect("own bytes parse");
        assert_eq!(parsed.len(), 6);
        // The delete carries no timeout, the add does.
        let mut timeout = vec![12, 0, 4, 0];
        timeout.extend_from_slice(&250u64.to_be_bytes());
        assert!(!contains(&encoded(delete_element(SET4, vec![10, 0, 0, 1])), &timeout[..4]));
        assert!(contains(&bytes, &timeout));
    }

    #[test]
    fn install_builds_the_expected_rules() {
        let ops = install_ops("eth0", Some(Ipv4Addr::new(10, 77, 0, 100)), Some(Ipv6Addr::LOCALHOST));
        let count = |chain: &str| {
            ops.iter()
                .filter(|op| match &op.msg {
                    NfTablesMessage::NewRule(r) => {
                        r.attributes.iter().any(|a| matches!(a, RuleAttribute::Chain(c) if c == chain))
                    }
                    _ => false,
                })
                .count()
        };
        assert_eq!((count(EGRESS), count(INGRESS)), rule_counts(Some(Ipv4Addr::LOCALHOST), Some(Ipv6Addr::LOCALHOST)));
        assert_eq!(rule_counts(Some(Ipv4Addr::LOCALHOST), None), (2, 1));
        // The ARP rule loads 4 bytes at network offset 14 and ends in an
        // inverted lookup and a drop.
        let NfTablesMessage::NewRule(arp) = &ops[7].msg else { panic!("not a rule: {:?}", ops[7]) };
        let Some(RuleAttribute::Expressions(exprs)) = arp.attributes.get(2) else { panic!("no expressions") };
        assert_eq!(exprs[1], cmp_eq(&[0x08, 0x06]));
        assert_eq!(exprs[2], payload(NFT_PAYLOAD_NETWORK_HEADER, 14, 4));
        assert_eq!(exprs[4], not_in(SET4));
        assert_eq!(exprs[5], drop_verdict());
        let (bytes, acked, _) = encode_batch(&ops, 1);
        assert_eq!(acked.len(), ops.len());
        assert_eq!(split(&bytes).expect("parse").len(), ops.len() + 2);
    }

    #[test]
    fn split_is_total_on_garbage() {
        assert!(split(&[]).expect("empty").is_empty());
        assert!(split(&[1, 2, 3]).expect("short").is_empty());
        assert!(split(&[0xff; 16]).is_err());
    }

    #[test]
    fn element_state_reads_expiration_and_timeout() {
        let attrs = vec![
            SetElementAttribute::Key(DataAttribute::Value(vec![1, 2, 3, 4])),
            SetElementAttribute::Timeout(300),
            SetElementAttribute::Expiration(120),
        ];
        let state = element_state(&attrs, &[1, 2, 3, 4]).expect("matches");
        assert_eq!(state.remaining, Duration::from_millis(120));
        assert_eq!(state.timeout, Duration::from_millis(300));
        assert_eq!(element_state(&attrs, &[1, 2, 3, 5]), None);
    }
}

//! OS adapters: the only place the supervisor touches netlink, raw sockets
//! and scheduler syscalls.
//!
//! Each adapter does one thing to the kernel and reports what happened; none
//! of them decides anything (when to add, renew or give up the VIP is
//! `triad-core`'s business). The runtime reaches the VIP through the narrow
//! [`vip::VipOps`] trait, so its tests can use [`vip::FakeVip`] instead of
//! the kernel.
//!
//! - [`nbd_kernel`]: the kernel's nbd driver attached to the supervisor's
//!   own NBD export through a socketpair (the appliance's `/dev/nbdN`).
//! - [`init`]: the machine's init with `node.init` (early mounts,
//!   hostname, sysctls, the end of a shutdown in reboot(2)).
//! - [`modules`]: the kernel modules the appliance loads at boot, from a
//!   table in load order (finit_module; no modprobe on the image).
//! - [`netlink`]: links and addresses (the VIP as a kernel-side lease).
//! - [`announce`]: gratuitous ARP / unsolicited NA frames and the raw socket
//!   that sends them.
//! - [`arp_watch`]: notices another host answering for the VIP.
//! - [`fence`]: the nftables lease fence (the VIP silenced by the kernel
//!   unless a timed set element says the lease is held).
//! - [`pbx_process`]: the PBX's process: unprivileged, its own process
//!   group and cgroup, signalled as a group.
//! - [`realtime`]: memory locking and SCHED_FIFO.
//! - [`switch_root`]: from the UKI's small initramfs to the read-only root.
//! - [`reaper`]: the one waiter for every child and orphan (PID 1 or
//!   subreaper), routing the PBX's exit to its owner.
//! - [`vip`]: [`vip::VipOps`] with its kernel and in-memory implementations.
//! - [`watchdog`]: the hardware watchdog device (timeout, boot status,
//!   keepalive, magic close).

pub mod announce;
pub mod arp_watch;
pub mod fence;
pub mod init;
pub mod loopdev;
pub mod modules;
pub mod nbd_kernel;
pub mod netlink;
pub mod pbx_process;
pub mod realtime;
pub mod reaper;
pub mod switch_root;
pub mod vip;
pub mod watchdog;

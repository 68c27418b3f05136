//! The container's network namespace: what [`super::Record::NetNamespace`]
//! holds (one record per image, written after the freeze).
//!
//! ```text
//!   NetNamespace {
//!     links:      [lo (Loopback), eth0 (ContainerVeth), dummy0 (Dummy),
//!                  ifb0 (Ifb), v1 (VethPair { peer v2 }) ..]
//!                 name, index at checkpoint, MTU, up, MAC
//!     addresses:  RTM_NEWADDR bodies   (ifaddrmsg + attributes)
//!     routes:     RTM_NEWROUTE bodies  (rtmsg + attributes), every table
//!     rules:      RTM_NEWRULE bodies   (fib_rule_hdr + attributes)
//!     neighbours: RTM_NEWNEIGH bodies  (ndmsg + attributes), permanent only
//!     sysctls:    net.* values that differ from a fresh namespace's,
//!                 and every device's own (conf/DEV, neigh/DEV)
//!     iptables / ip6tables: iptables-save output, cr's own chains left out
//!   }
//! ```
//!
//! Addresses, routes, rules and neighbours are kept as the kernel encodes
//! them in an rtnetlink message body (the kernel's stable ABI), so every
//! attribute survives; they refer to devices by their interface index at
//! checkpoint, which restore maps to the new index through [`NetLink`]'s
//! name. What the kernel makes by itself (routes of protocol `kernel`, the
//! `local` table, IPv6 link-local and autoconfigured addresses, the three
//! default rules) is left out: it comes back with the links and addresses.

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};

/// The network namespace of the container's PID 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetNamespace {
    /// Every device, in index order.
    pub links: Vec<NetLink>,
    pub addresses: Vec<Blob>,
    pub routes: Vec<Blob>,
    pub rules: Vec<Blob>,
    pub neighbours: Vec<Blob>,
    /// In the order restore writes them.
    pub sysctls: Vec<NetSysctl>,
    /// `iptables-save` output without counters and without cr's
    /// `CR-NETLOCK` chain; empty when the namespace has no IPv4 rules.
    pub iptables: ByteString,
    /// The same for `ip6tables-save`.
    pub ip6tables: ByteString,
}

/// The namespace's nftables tables that iptables does not manage (made
/// with `nft` or over netlink), as `nft list table` prints them, one table
/// after another; `nft -f` reads it back (since 1.4).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Nftables {
    /// `FAMILY NAME` of each table, in the order of `ruleset`.
    pub tables: Vec<String>,
    pub ruleset: ByteString,
}

/// One network device of the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLink {
    /// Interface index at checkpoint (what the other lists refer to).
    pub index: u32,
    pub name: String,
    pub kind: NetLinkKind,
    pub mtu: u32,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// Hardware address, when the device has one.
    pub mac: Option<Blob>,
}

/// The kinds of device restore rebuilds. New kinds are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetLinkKind {
    /// `lo`: exists in every namespace.
    Loopback,
    /// `eth0`, the container's side of the veth pair cr wires at start.
    ContainerVeth,
    /// A `dummy` device the container created itself.
    Dummy,
    /// An `ifb` device the container created itself.
    Ifb,
    /// One end of a veth pair with both ends inside the namespace; `peer`
    /// names the other end (which has a record of its own).
    VethPair { peer: String },
}

/// A sysctl under `/proc/sys/net`, path relative to it
/// (`ipv4/ip_forward`), value as read (without the trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSysctl {
    pub path: String,
    pub value: String,
}

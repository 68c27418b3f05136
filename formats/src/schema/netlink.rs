//! Netlink sockets: what a [`super::FileKind::Netlink`] file holds (since
//! format 1.3).
//!
//! ```text
//!   File { id 7, flags O_RDWR, Netlink(NetlinkSocket {
//!       protocol 0 (NETLINK_ROUTE), dgram false (SOCK_RAW), port 1,
//!       groups [0x11, 0x2] (groups 1, 5 and 34), peer None,
//!       options { ext_ack, .. }, sndbuf, rcvbuf }) }
//! ```
//!
//! The receive queue is not kept: see docs/netlink.md for the rule.

use serde::{Deserialize, Serialize};

/// One netlink socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkSocket {
    /// `NETLINK_ROUTE`, `NETLINK_KOBJECT_UEVENT`, `NETLINK_GENERIC`...
    pub protocol: i32,
    /// `SOCK_DGRAM` (else `SOCK_RAW`).
    pub dgram: bool,
    /// Its port id (`nl_pid` of `getsockname`); 0: not bound.
    pub port: u32,
    /// Multicast groups it is a member of: bit `g - 1` of word `(g - 1) / 32`
    /// for group `g` (`NETLINK_LIST_MEMBERSHIPS`).
    pub groups: Vec<u32>,
    /// The default destination `connect` set: port id and groups.
    pub peer: Option<(u32, u32)>,
    pub options: NetlinkOptions,
    /// `SO_SNDBUF` and `SO_RCVBUF` as `getsockopt` reports them (doubled).
    pub sndbuf: u32,
    pub rcvbuf: u32,
}

/// The `SOL_NETLINK` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkOptions {
    pub pktinfo: bool,
    pub broadcast_error: bool,
    pub no_enobufs: bool,
    pub listen_all_nsid: bool,
    pub cap_ack: bool,
    pub ext_ack: bool,
    pub get_strict_chk: bool,
}

//! Netlink sockets at checkpoint, and the names of the socket families cr
//! refuses (raw and packet sockets...).
//!
//! ```text
//! survey (running)   claims(): a dup of the socket (pidfd_getfd) is
//!                    AF_NETLINK of a protocol cr moves (ROUTE, SOCK_DIAG,
//!                    KOBJECT_UEVENT, GENERIC) and its receive queue does
//!                    not start with a unicast message (an answer a
//!                    process may be waiting for); describe() says why not
//! collect()          (frozen) the same check, then protocol, type, port id
//!                    and groups (getsockname), NETLINK_LIST_MEMBERSHIPS,
//!                    the connect destination (getpeername), the
//!                    SOL_NETLINK flags and buffer sizes
//! ```
//!
//! Queued messages are not kept (docs/netlink.md): multicast notifications
//! waiting to be read are dropped; a queue whose first message is a
//! unicast (the kernel's answer to a request, or a dump in progress) is
//! refused. No code runs in the container: cr reads its duplicate.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;

use cr_formats::schema::{FileKind, NetlinkOptions, NetlinkSocket};

use crate::dump::files::FdObject;
use crate::dump::inet::{get_bytes, get_int, take_fd};
use crate::dump::DumpError;

/// The registry's name for this kind.
pub const KIND_NAME: &str = "netlink socket";

/// `linux/netlink.h`.
pub mod sys {
    pub const SOL_NETLINK: i32 = 270;
    pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
    pub const NETLINK_PKTINFO: i32 = 3;
    pub const NETLINK_BROADCAST_ERROR: i32 = 4;
    pub const NETLINK_NO_ENOBUFS: i32 = 5;
    pub const NETLINK_LISTEN_ALL_NSID: i32 = 8;
    pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
    pub const NETLINK_CAP_ACK: i32 = 10;
    pub const NETLINK_EXT_ACK: i32 = 11;
    pub const NETLINK_GET_STRICT_CHK: i32 = 12;
}

/// Protocols whose sockets hold no kernel state beyond their port id,
/// groups and flags, with their names.
const MOVED: &[(i32, &str)] = &[
    (libc::NETLINK_ROUTE, "NETLINK_ROUTE"),
    (libc::NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG"),
    (libc::NETLINK_KOBJECT_UEVENT, "NETLINK_KOBJECT_UEVENT"),
    (libc::NETLINK_GENERIC, "NETLINK_GENERIC"),
];

fn protocol_name(p: i32) -> String {
    let named = [
        (libc::NETLINK_USERSOCK, "NETLINK_USERSOCK"),
        (libc::NETLINK_FIREWALL, "NETLINK_FIREWALL"),
        (libc::NETLINK_NFLOG, "NETLINK_NFLOG"),
        (libc::NETLINK_XFRM, "NETLINK_XFRM"),
        (libc::NETLINK_SELINUX, "NETLINK_SELINUX"),
        (libc::NETLINK_ISCSI, "NETLINK_ISCSI"),
        (libc::NETLINK_AUDIT, "NETLINK_AUDIT"),
        (libc::NETLINK_FIB_LOOKUP, "NETLINK_FIB_LOOKUP"),
        (libc::NETLINK_CONNECTOR, "NETLINK_CONNECTOR"),
        (libc::NETLINK_NETFILTER, "NETLINK_NETFILTER"),
        (libc::NETLINK_IP6_FW, "NETLINK_IP6_FW"),
        (libc::NETLINK_DNRTMSG, "NETLINK_DNRTMSG"),
        (libc::NETLINK_SCSITRANSPORT, "NETLINK_SCSITRANSPORT"),
        (libc::NETLINK_ECRYPTFS, "NETLINK_ECRYPTFS"),
        (libc::NETLINK_RDMA, "NETLINK_RDMA"),
        (libc::NETLINK_CRYPTO, "NETLINK_CRYPTO"),
    ];
    MOVED
        .iter()
        .chain(named.iter())
        .find(|(n, _)| *n == p)
        .map_or(format!("protocol {p}"), |(_, name)| name.to_string())
}

/// `struct sockaddr_nl` of `getsockname` or `getpeername`: (port, groups).
fn nl_addr(s: RawFd, peer: bool) -> io::Result<(u32, u32)> {
    // SAFETY: an all-zero sockaddr_nl is valid.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_nl).cast();
    // SAFETY: the kernel writes at most `len` bytes into the live sockaddr_nl.
    let rc = unsafe {
        if peer {
            libc::getpeername(s, p, &mut len)
        } else {
            libc::getsockname(s, p, &mut len)
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((a.nl_pid, a.nl_groups))
}

/// The groups of the first queued message's sender address, or `None`
/// when the queue is empty (a peek: nothing is consumed).
fn first_queued(s: RawFd) -> io::Result<Option<u32>> {
    // SAFETY: an all-zero sockaddr_nl and msghdr are valid.
    let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_nl).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: recvmsg writes into the live buffers the msghdr names.
    let n = unsafe {
        libc::recvmsg(
            s,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(from.nl_groups))
}

/// A duplicate of a netlink socket and what the survey needs of it.
struct Probe {
    sock: std::os::fd::OwnedFd,
    protocol: i32,
}

fn probe(o: &FdObject) -> Option<Probe> {
    if !o.meta.file_type().is_socket() {
        return None;
    }
    let sock = take_fd(o.pid, o.entry.fd).ok()?;
    let s = sock.as_raw_fd();
    (get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()? == libc::AF_NETLINK).then_some(())?;
    let protocol = get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    Some(Probe { sock, protocol })
}

impl Probe {
    /// Why cr cannot move this netlink socket, or Ok.
    fn unsupported(&self) -> Result<(), String> {
        let name = protocol_name(self.protocol);
        if !MOVED.iter().any(|(p, _)| *p == self.protocol) {
            return Err(format!(
                "a netlink socket of {name}, whose kernel side may hold state cr cannot read (only {} move)",
                MOVED.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
            ));
        }
        match first_queued(self.sock.as_raw_fd()) {
            Ok(Some(0)) => Err(format!(
                "a {name} netlink socket with an answer to a request waiting to be read (a unicast message, maybe a dump in progress); cr drops a netlink queue, read it first"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("a {name} netlink socket whose queue cannot be peeked ({e})")),
        }
    }
}

/// Whether the registry entry claims this descriptor.
pub fn claims(o: &FdObject) -> bool {
    probe(o).is_some_and(|p| p.unsupported().is_ok())
}

/// For a refusal: what a socket no kind claims is. Netlink sockets say why
/// they cannot move; raw inet and packet sockets and other families are
/// named by family and type (inet TCP/UDP states: dump::inet::describe).
pub fn describe(o: &FdObject) -> Option<String> {
    if let Some(p) = probe(o) {
        return p
            .unsupported()
            .err()
            .map(|why| format!("{why} ({})", o.entry.target));
    }
    let sock = take_fd(o.pid, o.entry.fd).ok()?;
    let s = sock.as_raw_fd();
    let domain = get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    let ty = get_int(s, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    let protocol = get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    let what = match (domain, ty) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_RAW) => format!(
            "a raw {} socket (protocol {protocol}{}); cr does not move raw sockets",
            if domain == libc::AF_INET {
                "IPv4"
            } else {
                "IPv6"
            },
            match protocol {
                libc::IPPROTO_ICMP => ", ICMP",
                libc::IPPROTO_ICMPV6 => ", ICMPv6",
                _ => "",
            }
        ),
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM)
            if protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6 =>
        {
            "an ICMP (ping) socket; cr does not move ICMP sockets".to_string()
        }
        (libc::AF_PACKET, _) => format!(
            "a packet socket (AF_PACKET, {}); cr does not move packet sockets",
            if ty == libc::SOCK_RAW {
                "SOCK_RAW"
            } else {
                "SOCK_DGRAM"
            },
        ),
        (libc::AF_INET | libc::AF_INET6, _) => return None,
        _ => format!("a socket of family {domain} type {ty}"),
    };
    Some(format!("{what} ({})", o.entry.target))
}

/// The record of one netlink socket.
pub fn collect(o: &FdObject) -> Result<FileKind, DumpError> {
    let (pid, fd) = (o.pid, o.entry.fd);
    let err = |what: &str, e: io::Error| {
        DumpError::proc(pid, format!("netlink socket fd {fd} ({what})"), e)
    };
    let p =
        probe(o).ok_or_else(|| err("probing", io::Error::other("no longer a netlink socket")))?;
    let status = crate::dump::procfs::read_status(pid).ok();
    p.unsupported().map_err(|what| DumpError::Unsupported {
        pid: status.as_ref().map_or(pid, |s| s.pid_in_ns()),
        comm: status.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        what: format!("fd {fd} is {what}, which cr cannot move"),
    })?;
    let s = p.sock.as_raw_fd();
    let int = |level, name, what: &str| get_int(s, level, name).map_err(|e| err(what, e));
    let flag = |name, what: &str| int(sys::SOL_NETLINK, name, what).map(|v| v != 0);
    let (port, _) = nl_addr(s, false).map_err(|e| err("getsockname", e))?;
    let peer = nl_addr(s, true).map_err(|e| err("getpeername", e))?;
    let mut words = vec![0u8; 4 * 64];
    let n = get_bytes(
        s,
        sys::SOL_NETLINK,
        sys::NETLINK_LIST_MEMBERSHIPS,
        &mut words,
    )
    .map_err(|e| err("NETLINK_LIST_MEMBERSHIPS", e))?;
    let mut groups: Vec<u32> = words[..n.min(words.len())]
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    while groups.last() == Some(&0) {
        groups.pop();
    }
    Ok(FileKind::Netlink(NetlinkSocket {
        protocol: p.protocol,
        dgram: int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")? == libc::SOCK_DGRAM,
        port,
        groups,
        peer: (peer != (0, 0)).then_some(peer),
        options: NetlinkOptions {
            pktinfo: flag(sys::NETLINK_PKTINFO, "NETLINK_PKTINFO")?,
            broadcast_error: flag(sys::NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR")?,
            no_enobufs: flag(sys::NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS")?,
            listen_all_nsid: flag(sys::NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID")?,
            cap_ack: flag(sys::NETLINK_CAP_ACK, "NETLINK_CAP_ACK")?,
            ext_ack: flag(sys::NETLINK_EXT_ACK, "NETLINK_EXT_ACK")?,
            get_strict_chk: flag(sys::NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK")?,
        },
        sndbuf: int(libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        rcvbuf: int(libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
    }))
}

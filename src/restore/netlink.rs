//! Netlink sockets at restore, made by PID 1 (restore::tree::open_table) in
//! the container's network namespace.
//!
//! ```text
//! socket(AF_NETLINK, SOCK_RAW | SOCK_DGRAM, protocol)
//! SO_SNDBUFFORCE, SO_RCVBUFFORCE, the SOL_NETLINK flags
//! bind(port id, no groups)       the recorded port id; taken already (a
//!                                socket of the new namespace got it first):
//!                                bind(0), the kernel picks one (see
//!                                docs/netlink.md)
//! NETLINK_ADD_MEMBERSHIP         each recorded group
//! connect(port, groups)          when it had a default destination
//! ```

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use cr_formats::schema::NetlinkSocket;

use crate::dump::inet::set_int;
use crate::dump::netlink::sys;
use crate::error::{Error, Result};

fn sockaddr(port: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: an all-zero sockaddr_nl is valid.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_pid = port;
    a.nl_groups = groups;
    a
}

fn bind(s: RawFd, port: u32) -> io::Result<()> {
    let a = sockaddr(port, 0);
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: bind reads `len` bytes of the live sockaddr_nl.
    let rc = unsafe { libc::bind(s, (&a as *const libc::sockaddr_nl).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The groups of a membership bitmap: group `g` is bit `g - 1`.
pub fn groups_of(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    words.iter().enumerate().flat_map(|(i, w)| {
        (0..32)
            .filter(move |b| w & (1 << b) != 0)
            .map(move |b| i as u32 * 32 + b + 1)
    })
}

/// Creates the socket of one record; `flags` are the file's `O_*` flags
/// (O_NONBLOCK is kept).
pub fn open(n: &NetlinkSocket, flags: u32) -> Result<RawFd> {
    let fail = |what: &str, e: io::Error| {
        Error::Invalid(format!(
            "restoring a netlink socket of protocol {} (port {}): {what}: {e}",
            n.protocol, n.port
        ))
    };
    let mut ty = if n.dgram {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_RAW
    } | libc::SOCK_CLOEXEC;
    if flags & libc::O_NONBLOCK as u32 != 0 {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, ty, n.protocol) };
    if fd < 0 {
        return Err(fail("socket", io::Error::last_os_error()));
    }
    // SAFETY: socket just returned this fd; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let s = owned.as_raw_fd();
    let sol = libc::SOL_SOCKET;
    // getsockopt reports twice what setsockopt was given.
    set_int(s, sol, libc::SO_SNDBUFFORCE, (n.sndbuf / 2) as i32)
        .map_err(|e| fail("SO_SNDBUFFORCE", e))?;
    set_int(s, sol, libc::SO_RCVBUFFORCE, (n.rcvbuf / 2) as i32)
        .map_err(|e| fail("SO_RCVBUFFORCE", e))?;
    let o = &n.options;
    for (on, name, what) in [
        (o.pktinfo, sys::NETLINK_PKTINFO, "NETLINK_PKTINFO"),
        (
            o.broadcast_error,
            sys::NETLINK_BROADCAST_ERROR,
            "NETLINK_BROADCAST_ERROR",
        ),
        (o.no_enobufs, sys::NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"),
        (
            o.listen_all_nsid,
            sys::NETLINK_LISTEN_ALL_NSID,
            "NETLINK_LISTEN_ALL_NSID",
        ),
        (o.cap_ack, sys::NETLINK_CAP_ACK, "NETLINK_CAP_ACK"),
        (o.ext_ack, sys::NETLINK_EXT_ACK, "NETLINK_EXT_ACK"),
        (
            o.get_strict_chk,
            sys::NETLINK_GET_STRICT_CHK,
            "NETLINK_GET_STRICT_CHK",
        ),
    ] {
        if on {
            set_int(s, sys::SOL_NETLINK, name, 1).map_err(|e| fail(what, e))?;
        }
    }
    if n.port != 0 {
        match bind(s, n.port) {
            Ok(()) => {}
            // Taken in the new namespace: the kernel picks another.
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                bind(s, 0).map_err(|e| fail("binding (any port id)", e))?
            }
            Err(e) => return Err(fail(&format!("binding port id {}", n.port), e)),
        }
    }
    for g in groups_of(&n.groups) {
        set_int(s, sys::SOL_NETLINK, sys::NETLINK_ADD_MEMBERSHIP, g as i32)
            .map_err(|e| fail(&format!("joining group {g}"), e))?;
    }
    if let Some((port, groups)) = n.peer {
        let a = sockaddr(port, groups);
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: connect reads `len` bytes of the live sockaddr_nl.
        let rc = unsafe { libc::connect(s, (&a as *const libc::sockaddr_nl).cast(), len) };
        if rc < 0 {
            return Err(fail(
                &format!("connecting to port {port} groups {groups:#x}"),
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(owned.into_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_bitmap() {
        let g: Vec<u32> = groups_of(&[0x11, 0x2]).collect();
        assert_eq!(g, vec![1, 5, 34]);
    }
}

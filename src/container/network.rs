//! Container networking: the host bridge, a veth pair per container, the
//! container side's address, MAC and routes.
//!
//! # Topology
//!
//! ```text
//!   host network namespace (the supervisor's)        container netns (init_pid)
//!  ┌───────────────────────────────────────────┐    ┌──────────────────────────┐
//!  │ bridge `net.bridge` (one per host, shared) │    │ lo   up                  │
//!  │   address: gateway, e.g. 10.88.0.1/24      │    │ eth0 net.address         │
//!  │   ├── veth `net.veth` ◄──── veth pair ─────┼────┼─► (MAC net.mac)          │
//!  │   └── veth of another container            │    │ default via gateway      │
//!  └───────────────────────────────────────────┘    └──────────────────────────┘
//! ```
//!
//! * **Bridge per host.** Every container of a host hangs off the same Linux
//!   bridge. cr creates it when missing (with a fixed, locally administered
//!   MAC derived from its name, so the bridge's MAC does not follow its
//!   ports as containers come and go) but never deletes it, nor its
//!   addresses: other containers, or the operator, share them.
//! * **Veth per container.** The host side keeps the configured name
//!   (`net.veth`, see [`veth_name`]) and is a port of the bridge; the peer is
//!   created directly inside the container's network namespace as `eth0`
//!   with its MAC, in the same netlink message (moving a device between
//!   namespaces afterwards costs a synchronisation of the network stack).
//!   Deleting the host side deletes both ends, which is all [`teardown`]
//!   has to do.
//! * **Gateway rule.** The gateway is the bridge's IPv4 address inside the
//!   container's prefix. When the bridge has none there, cr adds the
//!   prefix's first host address (`10.88.0.1/24` for `10.88.0.10/24`); an
//!   address the operator put on the bridge in that prefix is used as is.
//! * **MAC kept when the container moves.** `eth0` takes the MAC from the
//!   container's config, not a random one, so after a migration to another
//!   host (whose bridge sits on the same flat network) the container answers
//!   with the same IP and the same MAC, and its peers' neighbour caches and
//!   established TCP connections stay valid.
//!
//! # Data flow of [`setup`]
//!
//! 1. Host netns: ensure the bridge exists and is up; find or add the
//!    gateway address.
//! 2. Host netns: one message creates the veth pair, the host side on the
//!    bridge and up, the peer as `eth0` with its MAC inside
//!    `/proc/<init_pid>/ns/net` (by fd).
//! 3. Container netns: add the address, bring up `eth0` and `lo`, add the
//!    default route.
//!
//! Any failure after step 2 began deletes the veth pair again (never the
//! bridge) and reports the step, the device and the kernel's message.
//!
//! # Talking netlink inside the container's namespace
//!
//! A netlink socket belongs to the network namespace of the thread that
//! creates it. cr's supervisor is single-threaded and forks later, so no
//! helper thread is used: the calling thread `setns`es into the container's
//! namespace, creates the rtnetlink socket, and `setns`es straight back to
//! the namespace it came from (kept open as `/proc/thread-self/ns/net`),
//! even when creating the socket failed. Everything else runs on a tokio
//! current-thread runtime built for the call and dropped before returning,
//! so no thread outlives a call.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::unistd::Pid;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::container::config::{Ipv4Cidr, NetConfig};
use crate::host::short_hash;

/// Longest network device name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Name of the container side of the veth pair, inside its namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network device name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A netlink request failed: `step` says what cr was doing, `device`
    /// which device it was doing it to.
    #[error("{step} {device:?}: {message}")]
    Netlink {
        step: &'static str,
        device: String,
        /// The kernel's error number, when the kernel answered with one.
        errno: Option<Errno>,
        message: String,
    },
    #[error("{what} of process {pid}: {source}")]
    Namespace {
        what: &'static str,
        pid: Pid,
        #[source]
        source: io::Error,
    },
    #[error("returning to the supervisor's network namespace failed: {0}; this thread is left in a container's namespace")]
    NamespaceReturn(#[source] io::Error),
    #[error("starting the netlink connection: {0}")]
    Runtime(#[source] io::Error),
    #[error("{device:?} exists but is not a bridge (it is a {kind} device)")]
    NotABridge { device: String, kind: String },
    #[error("container address {address} is the address of bridge {bridge:?} (the gateway); pick another address")]
    AddressIsGateway { address: Ipv4Cidr, bridge: String },
}

impl NetworkError {
    /// The kernel's error number, if this error came from a netlink answer.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetworkError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// The host-side veth name cr gives a container: `crv` and 8 hex digits of a
/// hash of the host root (or any string identifying the cr instance) and the
/// container name. 11 bytes, within the kernel's 15.
pub fn veth_name(root_hash_input: &str, container: &str) -> String {
    let mut input = Vec::with_capacity(root_hash_input.len() + container.len() + 1);
    input.extend_from_slice(root_hash_input.as_bytes());
    input.push(0);
    input.extend_from_slice(container.as_bytes());
    format!("crv{:08x}", short_hash(&input))
}

/// Creates the bridge if missing, brings it up, ensures it has an address in
/// the container's prefix (the prefix's first host address when it has none),
/// creates the veth pair, moves the peer into the network namespace of
/// `init_pid` as `eth0` with the configured MAC and address, brings up `lo`
/// and `eth0`, and adds a default route via the bridge's address.
///
/// On failure the veth pair is deleted again (if this call created it); the
/// bridge and its addresses are left alone.
pub fn setup(net: &NetConfig, init_pid: Pid) -> Result<(), NetworkError> {
    check_ifname(&net.bridge)?;
    check_ifname(&net.veth)?;
    let ns_path = format!("/proc/{init_pid}/ns/net");
    let container_ns = File::open(&ns_path).map_err(|source| NetworkError::Namespace {
        what: "opening the network namespace",
        pid: init_pid,
        source,
    })?;
    block_on(async {
        let host = connect().await?;
        let bridge = ensure_bridge(&host, &net.bridge).await?;
        let gateway = ensure_gateway(&host, &net.bridge, bridge, net.address).await?;

        // One message creates the pair: the host side already on the bridge
        // and up, the peer born inside the container's namespace as eth0
        // with its MAC (no move, no rename: moving a device between
        // namespaces is the slow part of wiring a container).
        let peer = LinkUnspec::new_with_name(CONTAINER_IFNAME)
            .address(net.mac.0.to_vec())
            .setns_by_fd(container_ns.as_raw_fd())
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(net.veth.clone())
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link()
            .add(pair)
            .execute()
            .await
            .map_err(nl_error("creating veth pair", &net.veth))?;

        let configured = async {
            let inside = connect_in(&container_ns, init_pid).await?;
            configure_container_side(&inside, net, gateway).await
        }
        .await;
        if let Err(err) = configured {
            // Best effort: the error that matters is the one being returned.
            let _ = delete_link(&host, &net.veth).await;
            return Err(err);
        }
        Ok(())
    })
}

/// Removes the host side of the veth pair if it still exists (which removes
/// the container side too). A veth that is already gone is not an error.
pub fn teardown(net: &NetConfig) -> Result<(), NetworkError> {
    check_ifname(&net.veth)?;
    block_on(async {
        let host = connect().await?;
        delete_link(&host, &net.veth).await
    })
}

/// Whether a network device of this name exists in the caller's network
/// namespace.
pub fn link_exists(name: &str) -> Result<bool, NetworkError> {
    check_ifname(name)?;
    block_on(async {
        let host = connect().await?;
        Ok(find_link(&host, name)
            .await
            .map_err(nl_error("looking up device", name))?
            .is_some())
    })
}

/// The IPv4 addresses of the device `name` (normally a bridge), in the
/// kernel's order.
pub fn bridge_addresses(name: &str) -> Result<Vec<Ipv4Cidr>, NetworkError> {
    check_ifname(name)?;
    block_on(async {
        let host = connect().await?;
        let index = require_link(&host, name, "looking up device").await?;
        ipv4_addresses(&host, name, index).await
    })
}

/// Runs `work` on a current-thread tokio runtime that lives only for this
/// call: no worker threads, nothing left behind.
fn block_on<T>(work: impl Future<Output = Result<T, NetworkError>>) -> Result<T, NetworkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetworkError::Runtime)?;
    runtime.block_on(work)
}

/// Opens an rtnetlink connection in the calling thread's network namespace.
/// Must run inside the runtime (the socket registers with its reactor).
async fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Runtime)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Opens an rtnetlink connection in the network namespace `ns` (of process
/// `pid`): enters it on this thread, creates the socket, returns at once.
async fn connect_in(ns: &File, pid: Pid) -> Result<Handle, NetworkError> {
    let guard = NetnsGuard::enter(ns, pid)?;
    let created = rtnetlink::new_connection();
    guard.leave()?;
    let (connection, handle, _) = created.map_err(NetworkError::Runtime)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The calling thread, switched into another network namespace; returns to
/// the original one on [`NetnsGuard::leave`] or, failing that, on drop
/// (e.g. while unwinding).
struct NetnsGuard {
    home: File,
    left: bool,
}

impl NetnsGuard {
    fn enter(target: &File, pid: Pid) -> Result<Self, NetworkError> {
        let home =
            File::open("/proc/thread-self/ns/net").map_err(|source| NetworkError::Namespace {
                what: "opening the supervisor's own network namespace before entering that",
                pid,
                source,
            })?;
        setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Namespace {
            what: "entering the network namespace",
            pid,
            source: e.into(),
        })?;
        Ok(NetnsGuard { home, left: false })
    }

    fn leave(mut self) -> Result<(), NetworkError> {
        self.left = true;
        setns(&self.home, CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetworkError::NamespaceReturn(e.into()))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if !self.left {
            // Nothing to report to from a destructor; `leave` reports errors.
            let _ = setns(&self.home, CloneFlags::CLONE_NEWNET);
        }
    }
}

/// Makes sure the bridge exists and is up; returns its index.
async fn ensure_bridge(host: &Handle, name: &str) -> Result<u32, NetworkError> {
    let link = match find_link(host, name)
        .await
        .map_err(nl_error("looking up bridge", name))?
    {
        Some(link) => link,
        None => {
            let created = host
                .link()
                .add(
                    LinkBridge::new(name)
                        .address(bridge_mac(name).to_vec())
                        .build(),
                )
                .execute()
                .await;
            match created {
                Ok(()) => {}
                // Another cr created it between our lookup and our add.
                Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
                Err(e) => return Err(nl_error("creating bridge", name)(e)),
            }
            find_link(host, name)
                .await
                .map_err(nl_error("looking up bridge", name))?
                .ok_or_else(|| NetworkError::Netlink {
                    step: "looking up new bridge",
                    device: name.to_string(),
                    errno: Some(Errno::ENODEV),
                    message: "it vanished right after being created".to_string(),
                })?
        }
    };
    match link_kind(&link) {
        Some(InfoKind::Bridge) => {}
        kind => {
            return Err(NetworkError::NotABridge {
                device: name.to_string(),
                kind: kind.map_or_else(|| "plain".to_string(), |k| k.to_string()),
            })
        }
    }
    let index = link.header.index;
    host.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_error("bringing up bridge", name))?;
    Ok(index)
}

/// Finds the bridge's address inside `container`'s prefix, adding the
/// prefix's first host address when there is none. Returns the gateway.
async fn ensure_gateway(
    host: &Handle,
    name: &str,
    index: u32,
    container: Ipv4Cidr,
) -> Result<Ipv4Addr, NetworkError> {
    let existing = ipv4_addresses(host, name, index).await?;
    let found = existing.iter().find(|a| container.contains(a.addr));
    let gateway = found.map_or_else(|| container.first_host(), |a| a.addr);
    // Refuse before touching the bridge: the container cannot be its gateway.
    if gateway == container.addr {
        return Err(NetworkError::AddressIsGateway {
            address: container,
            bridge: name.to_string(),
        });
    }
    if found.is_none() {
        let added = host
            .address()
            .add(index, IpAddr::V4(gateway), container.prefix)
            .execute()
            .await;
        match added {
            Ok(()) => {}
            // Another cr added it between our lookup and our add.
            Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
            Err(e) => return Err(nl_error("adding gateway address to bridge", name)(e)),
        }
    }
    Ok(gateway)
}

/// Inside the container's namespace: `peer` becomes `eth0` with the
/// configured MAC and address, `eth0` and `lo` go up, and the default route
/// goes via `gateway`.
async fn configure_container_side(
    inside: &Handle,
    net: &NetConfig,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let eth0 = require_link(inside, CONTAINER_IFNAME, "looking up in the container").await?;
    inside
        .address()
        .add(eth0, IpAddr::V4(net.address.addr), net.address.prefix)
        .execute()
        .await
        .map_err(nl_error(
            "adding address in the container",
            CONTAINER_IFNAME,
        ))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(nl_error("bringing up in the container", CONTAINER_IFNAME))?;
    let lo = require_link(inside, "lo", "looking up in the container").await?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(nl_error("bringing up in the container", "lo"))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(eth0)
        .build();
    inside.route().add(route).execute().await.map_err(nl_error(
        "adding default route in the container via",
        &gateway.to_string(),
    ))?;
    Ok(())
}

/// Deletes the device `name`; one that does not exist is not an error.
async fn delete_link(host: &Handle, name: &str) -> Result<(), NetworkError> {
    let Some(link) = find_link(host, name)
        .await
        .map_err(nl_error("looking up veth", name))?
    else {
        return Ok(());
    };
    match host.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(()),
        Err(e) => Err(nl_error("deleting veth", name)(e)),
    }
}

/// The device called `name`, or `None` when there is none.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let answer: Result<Vec<LinkMessage>, _> = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_collect()
        .await;
    match answer {
        Ok(mut links) => Ok(links.pop()),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The index of the device called `name`, which must exist.
async fn require_link(
    handle: &Handle,
    name: &str,
    step: &'static str,
) -> Result<u32, NetworkError> {
    find_link(handle, name)
        .await
        .map_err(nl_error(step, name))?
        .map(|link| link.header.index)
        .ok_or_else(|| NetworkError::Netlink {
            step,
            device: name.to_string(),
            errno: Some(Errno::ENODEV),
            message: Errno::ENODEV.desc().to_string(),
        })
}

async fn ipv4_addresses(
    handle: &Handle,
    name: &str,
    index: u32,
) -> Result<Vec<Ipv4Cidr>, NetworkError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_error("listing addresses of", name))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet && m.header.index == index)
        .filter_map(|m| {
            let addr = address_of(m)?;
            Some(Ipv4Cidr {
                addr,
                prefix: m.header.prefix_len,
            })
        })
        .collect())
}

/// The local IPv4 address of an address message (`IFA_LOCAL`, which differs
/// from `IFA_ADDRESS` only on point-to-point links).
fn address_of(message: &AddressMessage) -> Option<Ipv4Addr> {
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    };
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => v4(ip),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => v4(ip),
            _ => None,
        })
    })
}

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// A stable, locally administered unicast MAC for the bridge, from its name.
fn bridge_mac(name: &str) -> [u8; 6] {
    let h = short_hash(name.as_bytes()).to_be_bytes();
    [0x02, 0x63, h[0], h[1], h[2], h[3]]
}

/// A name for the veth peer while it is still on the host: `crp` and 8
/// random hex digits, unlikely to collide with a concurrent setup.
fn check_ifname(name: &str) -> Result<(), NetworkError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        "contains '/', ':', a space or NUL"
    } else {
        return Ok(());
    };
    Err(NetworkError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn errno_of(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => {
            Some(Errno::from_raw(message.raw_code().abs()))
        }
        _ => None,
    }
}

/// Turns an rtnetlink error into a [`NetworkError::Netlink`] for `step` on
/// `device`, keeping the kernel's errno and message.
fn nl_error(step: &'static str, device: &str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let device = device.to_string();
    move |error| {
        let errno = errno_of(&error);
        let message = match errno {
            Some(e) => e.desc().to_string(),
            None => error.to_string(),
        };
        NetworkError::Netlink {
            step,
            device,
            errno,
            message,
        }
    }
}

/// Tells the LAN where the container's address lives now: two gratuitous
/// ARP replies (a broadcast frame from its MAC, sender and target its own
/// address) sent from `eth0` inside its network namespace, so bridges and
/// switches learn the port and neighbours update their caches. A migrated
/// container keeps its IP and MAC; without this, frames for it would go to
/// the host it left until the bridges' entries age out.
pub fn announce(
    container: &crate::container::Container,
    net: &NetConfig,
) -> Result<(), NetworkError> {
    let pid = match container.status() {
        Ok((_, Some(pid))) => pid,
        _ => {
            return Err(NetworkError::Namespace {
                what: "finding PID 1 to announce the address",
                pid: Pid::from_raw(0),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        }
    };
    let ns =
        File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetworkError::Namespace {
            what: "opening the network namespace",
            pid,
            source,
        })?;
    let mac = net.mac.0;
    let ip = net.address.addr.octets();
    // A thread of its own: setns changes only the calling thread.
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetworkError> {
            let guard = NetnsGuard::enter(&ns, pid)?;
            let sent = send_gratuitous_arp(&mac, &ip);
            guard.leave()?;
            sent.map_err(|source| NetworkError::Namespace {
                what: "sending a gratuitous ARP from the namespace",
                pid,
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetworkError::Namespace {
                what: "announcing the address (the thread panicked)",
                pid,
                source: io::Error::other("panic"),
            })
        })
    })
}

/// Two ARP replies from `eth0` of the calling thread's namespace.
fn send_gratuitous_arp(mac: &[u8; 6], ip: &[u8; 4]) -> io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let name = std::ffi::CString::new(CONTAINER_IFNAME).map_err(io::Error::other)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new fd that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]); // Ethernet, IPv4, reply
    frame.extend_from_slice(mac);
    frame.extend_from_slice(ip);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(ip);
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..2 {
        // SAFETY: sendto reads `frame` and the sockaddr_ll we own, with
        // their lengths.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = veth_name("/var/lib/cr", "web");
        let b = veth_name("/var/lib/cr", "db");
        let c = veth_name("/tmp/other", "web");
        for n in [&a, &b, &c] {
            assert!(n.len() <= MAX_IFNAME_LEN, "{n}");
            assert!(n.starts_with("crv"), "{n}");
            check_ifname(n).unwrap();
        }
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, veth_name("/var/lib/cr", "web"));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "a-very-long-name-x", "a/b", "a b", "."] {
            assert!(matches!(
                check_ifname(bad),
                Err(NetworkError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn bridge_mac_is_local_unicast() {
        let m = bridge_mac("cr0");
        assert_eq!(m[0] & 0x03, 0x02);
    }
}

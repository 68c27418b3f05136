//! Checkpoint of the container's network namespace: devices, addresses,
//! routes (every table), policy rules, permanent neighbours, `net.*`
//! sysctls and iptables rules, into one [`NetNamespace`] record, and the
//! namespace's own nftables tables into an [`Nftables`] record.
//!
//! ```text
//!   survey (before the freeze)      collect (frozen, after the TCP lock)
//!   thread: setns(PID 1's netns)    thread: setns(PID 1's netns)
//!     RTM_GETLINK dump                links, addresses, routes, rules,
//!     every device a kind cr            neighbours (rtnetlink dumps)
//!     rebuilds? else refuse           /proc/sys/net/** (read in the netns)
//!                                     iptables-save, ip6tables-save,
//!                                     nft list table (tables of its own)
//!   thread: unshare(CLONE_NEWNET)
//!     /proc/sys/net/** of a fresh
//!     netns (kept for collect)
//!                                   record = what differs / what the
//!                                     kernel does not make by itself
//! ```
//!
//! Everything runs on a short-lived thread that enters the namespace
//! (`setns` only changes the calling thread; the thread, and the namespace
//! reference it holds, end with the call). A netlink socket, a
//! `/proc/sys/net` lookup and a forked `iptables-save` all take the
//! namespace of the thread that makes them.
//!
//! cr rebuilds `lo`, the container's `eth0`, `dummy` and `ifb` devices and
//! veth pairs with both ends inside; any other device (a bridge, a vlan, a
//! vxlan, a port of a bridge, a veth leading out) is refused
//! by [`survey`] while the container still runs. nftables tables other than
//! the ones iptables manages are saved as `nft list table` prints them
//! (when `nft` is installed; restore feeds them to `nft -f`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use cr_formats::schema::{
    Blob, ByteString, NetLink, NetLinkKind, NetNamespace, NetSysctl, Nftables,
};
use futures::StreamExt;
use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_core::{Emitable, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use crate::netlock;

/// Where the network sysctls of the calling thread's namespace are.
pub(crate) const SYSCTL_ROOT: &str = "/proc/sys/net";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{what} of process {pid}: {source}")]
    Namespace {
        what: &'static str,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("netlink {step}: {message}")]
    Netlink {
        step: String,
        errno: Option<Errno>,
        message: String,
    },
    #[error("an rtnetlink message in the image ({what}) does not parse: {message}")]
    Decode { what: &'static str, message: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("running {tool} in the container's network namespace (is it installed? the iptables package provides it): {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed in the container's network namespace: {stderr}")]
    Tool { tool: &'static str, stderr: String },
    /// Something cr cannot rebuild; the container keeps running.
    #[error("{0}")]
    Refused(String),
    #[error("the network namespace thread of process {0} panicked")]
    Thread(i32),
}

impl From<NetnsError> for crate::Error {
    fn from(e: NetnsError) -> Self {
        crate::Error::Invalid(e.to_string())
    }
}

/// Runs `f` on a new thread inside the network namespace of `pid`.
pub(crate) fn in_netns<T, F>(pid: i32, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> Result<T, NetnsError> + Send,
{
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetnsError::Namespace {
        what: "opening the network namespace",
        pid,
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Namespace {
                    what: "entering the network namespace",
                    pid,
                    source: e.into(),
                })?;
                f()
            })
            .join()
            .map_err(|_| NetnsError::Thread(pid))?
    })
}

/// Runs `f` on a new thread inside a new, empty network namespace.
fn in_fresh_netns<T, F>(f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> Result<T, NetnsError> + Send,
{
    let me = std::process::id() as i32;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Namespace {
                    what: "creating a fresh network namespace for its defaults",
                    pid: me,
                    source: e.into(),
                })?;
                f()
            })
            .join()
            .map_err(|_| NetnsError::Thread(me))?
    })
}

/// Runs `f` with an rtnetlink handle of the calling thread's namespace on a
/// current-thread runtime dropped before returning.
pub(crate) fn with_netlink<T, Fut>(f: impl FnOnce(Handle) -> Fut) -> Result<T, NetnsError>
where
    Fut: Future<Output = Result<T, NetnsError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| NetnsError::Io {
            what: "starting the netlink runtime",
            path: "rtnetlink".into(),
            source,
        })?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetnsError::Io {
                what: "opening an rtnetlink socket",
                path: "rtnetlink".into(),
                source,
            })?;
        let task = tokio::spawn(connection);
        let result = f(handle).await;
        task.abort();
        result
    })
}

pub(crate) fn errno_of(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => {
            Some(Errno::from_raw(message.raw_code().abs()))
        }
        _ => None,
    }
}

pub(crate) fn nl_error(step: String, error: rtnetlink::Error) -> NetnsError {
    let errno = errno_of(&error);
    let message = match errno {
        Some(e) => e.desc().to_string(),
        None => error.to_string(),
    };
    NetnsError::Netlink {
        step,
        errno,
        message,
    }
}

/// One `NLM_F_DUMP` request; the answers' payloads.
async fn dump(
    handle: &mut Handle,
    request: RouteNetlinkMessage,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetnsError> {
    let mut message = NetlinkMessage::from(request);
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut answers = handle
        .request(message)
        .map_err(|e| nl_error(format!("listing {what}"), e))?;
    let mut out = Vec::new();
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                return Err(nl_error(
                    format!("listing {what}"),
                    rtnetlink::Error::NetlinkError(e),
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

fn emit<M: Emitable>(message: &M) -> Blob {
    let mut buf = vec![0u8; message.buffer_len()];
    message.emit(&mut buf);
    Blob(buf)
}

pub(crate) fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
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

/// What cr makes of a device, or why it refuses it (the kind, said so
/// that "device X of kind K" reads well). `names` maps every index of the
/// namespace to its device's name.
fn classify(link: &LinkMessage, names: &HashMap<u32, String>) -> Result<NetLinkKind, String> {
    let name = link_name(link);
    let attr = |f: fn(&LinkAttribute) -> Option<i64>| link.attributes.iter().find_map(f);
    if let Some(controller) = attr(|a| match a {
        LinkAttribute::Controller(i) => Some(i64::from(*i)),
        _ => None,
    }) {
        let of = names
            .get(&(controller as u32))
            .map_or_else(|| format!("index {controller}"), |n| format!("{n:?}"));
        return Err(format!(
            "{} enslaved to {of}",
            link_kind(link).map_or_else(|| "plain".to_string(), |k| k.to_string())
        ));
    }
    let peer_elsewhere = attr(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(i64::from(*id)),
        _ => None,
    })
    .is_some();
    match link_kind(link) {
        None if name == "lo" => Ok(NetLinkKind::Loopback),
        Some(InfoKind::Veth) if name == crate::container::network::CONTAINER_IFNAME => {
            Ok(NetLinkKind::ContainerVeth)
        }
        Some(InfoKind::Veth) if !peer_elsewhere => {
            let peer = attr(|a| match a {
                LinkAttribute::Link(i) => Some(i64::from(*i)),
                _ => None,
            })
            .and_then(|i| names.get(&(i as u32)));
            match peer {
                Some(peer) => Ok(NetLinkKind::VethPair { peer: peer.clone() }),
                None => Err("veth without a peer in the namespace".into()),
            }
        }
        Some(InfoKind::Veth) => Err("veth with its peer in another namespace".into()),
        Some(InfoKind::Dummy) => Ok(NetLinkKind::Dummy),
        Some(InfoKind::Ifb) => Ok(NetLinkKind::Ifb),
        None => Err("plain".into()),
        Some(kind) => Err(kind.to_string()),
    }
}

fn index_map(links: &[LinkMessage]) -> HashMap<u32, String> {
    links
        .iter()
        .map(|l| (l.header.index, link_name(l)))
        .collect()
}

async fn links(handle: &mut Handle) -> Result<Vec<LinkMessage>, NetnsError> {
    Ok(dump(
        handle,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "network devices",
    )
    .await?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    })
    .collect())
}

fn refuse(pid: i32, link: &LinkMessage, kind: &str) -> NetnsError {
    NetnsError::Refused(format!(
        "cannot checkpoint: the network namespace of process {pid} (the container's PID 1) has device {:?} of kind {kind}, which cr does not rebuild (it rebuilds lo, eth0, dummy and ifb devices and veth pairs with both ends inside); the container keeps running",
        link_name(link)
    ))
}

/// Before the freeze: refuses a namespace cr could not rebuild. `pid` is
/// the host PID of the container's PID 1.
pub fn survey(pid: i32) -> Result<(), NetnsError> {
    // Read now, so that the freeze does not wait for it.
    fresh_defaults()?;
    in_netns(pid, || {
        let found = with_netlink(|mut handle| async move { links(&mut handle).await })?;
        let names = index_map(&found);
        for link in &found {
            if let Err(kind) = classify(link, &names) {
                return Err(refuse(pid, link, &kind));
            }
        }
        check_nft(pid)
    })
}

/// Tables iptables (nf_tables backend) makes; `iptables-save` covers them.
const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Checks that the namespace's nftables tables can be listed (they are
/// saved by [`collect_nftables`] in the frozen window). Without `nft` on the
/// host there is nothing to look at: the iptables tools are then the only
/// way rules got in from the host side.
fn check_nft(_pid: i32) -> Result<(), NetnsError> {
    own_nft_tables().map(|_| ())
}

/// `FAMILY NAME` of every nftables table iptables does not manage; `None`
/// without `nft` on the host.
fn own_nft_tables() -> Result<Option<Vec<String>>, NetnsError> {
    let Some(listing) = nft(&["list", "tables"])? else {
        return Ok(None);
    };
    let mut tables = Vec::new();
    for line in listing.lines() {
        // "table ip filter"
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["table", family, name] = words[..] {
            let by_iptables = matches!(family, "ip" | "ip6") && IPTABLES_TABLES.contains(&name);
            if !by_iptables {
                tables.push(format!("{family} {name}"));
            }
        }
    }
    Ok(Some(tables))
}

/// Runs `nft ARGS` (in the calling thread's namespaces) and returns its
/// output; `None` when `nft` is not installed.
fn nft(args: &[&str]) -> Result<Option<String>, NetnsError> {
    let out = match Command::new("nft").args(args).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NetnsError::Spawn {
                tool: "nft",
                source,
            })
        }
    };
    if !out.status.success() {
        return Err(NetnsError::Tool {
            tool: "nft",
            stderr: format!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// After the freeze: the nftables tables of the container's namespace
/// that iptables does not manage, with their chains, rules, sets, maps,
/// objects and counters, as `nft list table` prints them; `None` when there
/// are none (or no `nft` on the host).
pub fn collect_nftables(pid: i32) -> Result<Option<Nftables>, NetnsError> {
    in_netns(pid, || {
        let Some(tables) = own_nft_tables()? else {
            return Ok(None);
        };
        if tables.is_empty() {
            return Ok(None);
        }
        let mut ruleset = String::new();
        for table in &tables {
            let mut args = vec!["list", "table"];
            args.extend(table.split_whitespace());
            ruleset.push_str(&nft(&args)?.unwrap_or_default());
        }
        Ok(Some(Nftables {
            tables,
            ruleset: ByteString(ruleset.into_bytes()),
        }))
    })
}

/// After the freeze (and after the TCP lock): the whole namespace.
pub fn collect(pid: i32) -> Result<NetNamespace, NetnsError> {
    let defaults = fresh_defaults()?;
    let mut ns = in_netns(pid, || {
        let mut ns =
            with_netlink(|mut handle| async move { collect_rtnl(pid, &mut handle).await })?;
        let current = read_sysctls(Path::new(SYSCTL_ROOT))?;
        ns.sysctls = differing_sysctls(&current, defaults);
        ns.iptables = ByteString(save_rules("iptables-save")?.into_bytes());
        ns.ip6tables = ByteString(save_rules("ip6tables-save")?.into_bytes());
        Ok(ns)
    })?;
    ns.links.sort_by_key(|l| l.index);
    Ok(ns)
}

/// The `/proc/sys/net` values of a fresh namespace, read once per process
/// (the survey reads them before the freeze).
fn fresh_defaults() -> Result<&'static BTreeMap<String, String>, NetnsError> {
    static DEFAULTS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    if let Some(d) = DEFAULTS.get() {
        return Ok(d);
    }
    let read = in_fresh_netns(|| read_sysctls(Path::new(SYSCTL_ROOT)))?;
    Ok(DEFAULTS.get_or_init(|| read))
}

async fn collect_rtnl(pid: i32, handle: &mut Handle) -> Result<NetNamespace, NetnsError> {
    let mut ns = NetNamespace::default();
    let found = links(handle).await?;
    let names = index_map(&found);
    for link in found {
        let kind = classify(&link, &names).map_err(|kind| refuse(pid, &link, &kind))?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => Some(Blob(m.clone())),
            _ => None,
        });
        ns.links.push(NetLink {
            index: link.header.index,
            name: link_name(&link),
            kind,
            mtu,
            up: link.header.flags.contains(LinkFlags::Up),
            mac,
        });
    }
    let inet = |f: AddressFamily| matches!(f, AddressFamily::Inet | AddressFamily::Inet6);

    for m in dump(
        handle,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        "addresses",
    )
    .await?
    {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if inet(a.header.family) && keep_address(&a) {
                ns.addresses.push(emit(&a));
            }
        }
    }
    for m in dump(
        handle,
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        "routes",
    )
    .await?
    {
        if let RouteNetlinkMessage::NewRoute(mut r) = m {
            if inet(r.header.address_family) && keep_route(&r) {
                r.attributes
                    .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
                ns.routes.push(emit(&r));
            }
        }
    }
    for m in dump(
        handle,
        RouteNetlinkMessage::GetRule(RuleMessage::default()),
        "policy rules",
    )
    .await?
    {
        if let RouteNetlinkMessage::NewRule(r) = m {
            if inet(r.header.family) && !default_rule(&r) {
                ns.rules.push(emit(&r));
            }
        }
    }
    for m in dump(
        handle,
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        "neighbours",
    )
    .await?
    {
        if let RouteNetlinkMessage::NewNeighbour(n) = m {
            if inet(n.header.family) && n.header.state == NeighbourState::Permanent {
                ns.neighbours.push(emit(&n));
            }
        }
    }
    Ok(ns)
}

/// IPv4 addresses all; IPv6 ones only when made by hand (link-local and
/// autoconfigured addresses come back by themselves).
fn keep_address(a: &AddressMessage) -> bool {
    if a.header.family != AddressFamily::Inet6 {
        return true;
    }
    a.attributes.iter().any(|attr| match attr {
        AddressAttribute::Flags(f) => f.contains(AddressFlags::Permanent),
        _ => false,
    })
}

const RT_TABLE_LOCAL: u32 = 255;

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Routes the kernel does not make by itself.
fn keep_route(r: &RouteMessage) -> bool {
    r.header.protocol != RouteProtocol::Kernel
        && route_table(r) != RT_TABLE_LOCAL
        && !r.header.flags.contains(RouteFlags::Cloned)
        && !matches!(
            r.header.kind,
            RouteType::Local | RouteType::Broadcast | RouteType::Anycast | RouteType::Multicast
        )
}

/// The rules every namespace starts with (lookup local, main, default).
fn default_rule(r: &RuleMessage) -> bool {
    let priority = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    let selectors = r.attributes.iter().any(|a| {
        !matches!(
            a,
            RuleAttribute::Priority(_) | RuleAttribute::Table(_) | RuleAttribute::Protocol(_)
        )
    }) || r.header.src_len != 0
        || r.header.dst_len != 0;
    let by_kernel = r.attributes.iter().any(|a| {
        matches!(
            a,
            RuleAttribute::Protocol(rtnetlink::packet_route::route::RouteProtocol::Kernel)
        )
    });
    by_kernel || (!selectors && matches!((priority, table), (0, 255) | (32766, 254) | (32767, 253)))
}

/// Every readable and writable file under `root`, by path relative to it.
fn read_sysctls(root: &Path) -> Result<BTreeMap<String, String>, NetnsError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| NetnsError::Io {
            what: "listing",
            path: dir.display().to_string(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            // Write-only (flush) and read-only (status) entries are no state.
            if meta.permissions().mode() & 0o600 != 0o600 {
                continue;
            }
            // Some entries refuse reads until set (stable_secret): skip them.
            let Ok(value) = std::fs::read_to_string(&path) else {
                continue;
            };
            if let Ok(rel) = path.strip_prefix(root) {
                let value = value.strip_suffix('\n').unwrap_or(&value).to_string();
                out.insert(rel.to_string_lossy().into_owned(), value);
            }
        }
    }
    Ok(out)
}

/// Per-device directories a fresh namespace only has for `lo`; a device
/// starts with the `default` directory's values.
const PER_DEVICE: [&str; 4] = ["ipv4/conf/", "ipv6/conf/", "ipv4/neigh/", "ipv6/neigh/"];

/// The fresh namespace's value for `path`, `None` when it has none.
fn default_for<'a>(path: &str, defaults: &'a BTreeMap<String, String>) -> Option<&'a String> {
    if let Some(v) = defaults.get(path) {
        return Some(v);
    }
    let prefix = PER_DEVICE.iter().find(|p| path.starts_with(*p))?;
    let rest = &path[prefix.len()..];
    let (_device, leaf) = rest.split_once('/')?;
    defaults.get(&format!("{prefix}default/{leaf}"))
}

/// Restore writes global values first, then `all`, then `default`, then the
/// devices' own (writing `ip_forward` or `conf/all/forwarding` sets every
/// device's value, which the later writes then correct).
fn sysctl_rank(path: &str) -> u8 {
    match PER_DEVICE.iter().find(|p| path.starts_with(*p)) {
        None => 0,
        Some(p) => match path[p.len()..].split_once('/') {
            Some(("all", _)) => 1,
            Some(("default", _)) => 2,
            _ => 3,
        },
    }
}

/// Global, `all` and `default` values that differ from a fresh namespace's,
/// and every device's own values: a device's starting values depend on
/// the namespace's `default` (and `all`) at the time it was made, so only
/// writing all of them gives each device back exactly what it had.
fn differing_sysctls(
    current: &BTreeMap<String, String>,
    defaults: &BTreeMap<String, String>,
) -> Vec<NetSysctl> {
    let mut out: Vec<NetSysctl> = current
        .iter()
        .filter(|(path, value)| match default_for(path, defaults) {
            Some(_) if sysctl_rank(path) == 3 => true,
            Some(d) => d != *value,
            None => false,
        })
        .map(|(path, value)| NetSysctl {
            path: path.clone(),
            value: value.clone(),
        })
        .collect();
    out.sort_by(|a, b| (sysctl_rank(&a.path), &a.path).cmp(&(sysctl_rank(&b.path), &b.path)));
    out
}

/// `iptables-save` (or `ip6tables-save`) output of the calling thread's
/// namespace without comments and without cr's lock chain.
fn save_rules(tool: &'static str) -> Result<String, NetnsError> {
    let out = Command::new(tool)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(NetnsError::Tool {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(filter_rules(&String::from_utf8_lossy(&out.stdout)))
}

/// Drops comments and every line naming [`netlock::CHAIN`].
fn filter_rules(saved: &str) -> String {
    let mut out = String::new();
    for line in saved.lines() {
        if line.starts_with('#')
            || line
                .split_whitespace()
                .any(|w| w == netlock::CHAIN || w.strip_prefix(':') == Some(netlock::CHAIN))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Index at checkpoint -> name, for restore's remapping.
pub fn index_names(ns: &NetNamespace) -> HashMap<u32, String> {
    ns.links.iter().map(|l| (l.index, l.name.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_chain_is_left_out() {
        let saved = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:CR-NETLOCK - [0:0]\n-A INPUT -j CR-NETLOCK\n-A INPUT -p tcp -m tcp --dport 9999 -j DROP\n-A CR-NETLOCK -j DROP\nCOMMIT\n";
        assert_eq!(
            filter_rules(saved),
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 9999 -j DROP\nCOMMIT\n"
        );
    }

    #[test]
    fn device_sysctls_compare_with_default() {
        let mut d = BTreeMap::new();
        d.insert("ipv4/conf/default/forwarding".to_string(), "0".to_string());
        d.insert("ipv4/ip_forward".to_string(), "0".to_string());
        let mut c = BTreeMap::new();
        c.insert("ipv4/conf/eth0/forwarding".to_string(), "1".to_string());
        c.insert("ipv4/conf/dummy0/forwarding".to_string(), "0".to_string());
        c.insert("ipv4/ip_forward".to_string(), "1".to_string());
        c.insert("netfilter/unknown".to_string(), "1".to_string());
        let got = differing_sysctls(&c, &d);
        let paths: Vec<&str> = got.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ipv4/ip_forward",
                "ipv4/conf/dummy0/forwarding",
                "ipv4/conf/eth0/forwarding"
            ]
        );
    }
}

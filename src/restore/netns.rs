//! Restore of the container's network namespace from its
//! [`NetNamespace`] record, by the supervisor, after `network::setup` wired
//! `eth0` into PID 1's fresh namespace and before any process resumes.
//!
//! ```text
//!   thread: setns(PID 1's netns)
//!     links       lo / eth0: MTU, up or down; dummy, ifb, veth pairs inside:
//!                 created (names, MACs, MTU) then up or down; old index -> new index by name
//!     sysctls     /proc/sys/net/<path> written (global, all, default, devices)
//!     addresses   RTM_NEWADDR      (index remapped; EEXIST is fine: setup
//!     routes      RTM_NEWROUTE      made eth0's address and default route)
//!                 in passes, for routes whose gateway needs another route
//!     rules       RTM_NEWRULE
//!     neighbours  RTM_NEWNEIGH
//!     iptables-restore --noflush, ip6tables-restore --noflush
//! ```
//!
//! `--noflush` leaves cr's network lock (the `CR-NETLOCK` chain, in place
//! while TCP sockets are rebuilt) untouched and first in INPUT and OUTPUT:
//! the container's own rules come after it and take over when the lock is
//! lifted. A failure anywhere fails the restore; the namespace, and all
//! that was put in it, goes away with PID 1.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use cr_formats::schema::{Blob, NetLink, NetLinkKind, NetNamespace, Nftables};
use futures::StreamExt;
use nix::errno::Errno;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, Parseable, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourMessage;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::rule::RuleMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkDummy, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::dump::netns::{
    errno_of, in_netns, index_names, link_name, nl_error, with_netlink, NetnsError, SYSCTL_ROOT,
};

/// Rebuilds `ns` inside the network namespace of host process `pid`.
pub fn apply(ns: &NetNamespace, pid: i32) -> Result<(), NetnsError> {
    in_netns(pid, || {
        let remap = with_netlink(|mut handle| async move { links(ns, &mut handle).await })?;
        for s in &ns.sysctls {
            let path = format!("{SYSCTL_ROOT}/{}", s.path);
            std::fs::write(&path, s.value.as_bytes()).map_err(|source| NetnsError::Io {
                what: "restoring sysctl",
                path: format!("{path} = {:?}", s.value),
                source,
            })?;
        }
        with_netlink(|mut handle| async move { routing(ns, &remap, &mut handle).await })?;
        restore_rules("iptables-restore", ns.iptables.as_bytes())?;
        restore_rules("ip6tables-restore", ns.ip6tables.as_bytes())?;
        Ok(())
    })
}

async fn current_links(handle: &mut Handle) -> Result<HashMap<String, u32>, NetnsError> {
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    message.header.flags = NLM_F_REQUEST | rtnetlink::packet_core::NLM_F_DUMP;
    let mut answers = handle
        .request(message)
        .map_err(|e| nl_error("listing network devices".into(), e))?;
    let mut out = HashMap::new();
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                out.insert(link_name(&l), l.header.index);
            }
            NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                return Err(nl_error(
                    "listing network devices".into(),
                    rtnetlink::Error::NetlinkError(e),
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Devices: returns checkpoint index -> index now.
async fn links(ns: &NetNamespace, handle: &mut Handle) -> Result<HashMap<u32, u32>, NetnsError> {
    let existing = current_links(handle).await?;
    let mut made: Vec<String> = Vec::new();
    for link in &ns.links {
        match &link.kind {
            NetLinkKind::Loopback | NetLinkKind::ContainerVeth => {
                if !existing.contains_key(&link.name) {
                    return Err(NetnsError::Netlink {
                        step: format!("looking up {:?}", link.name),
                        errno: Some(Errno::ENODEV),
                        message: "the restored namespace has no such device (is the container's network configured?)".into(),
                    });
                }
            }
            NetLinkKind::VethPair { peer } => {
                // The pair is made once, when its first end comes.
                if !made.contains(peer) {
                    let other = ns.links.iter().find(|l| &l.name == peer).ok_or_else(|| {
                        NetnsError::Decode {
                            what: "veth pair",
                            message: format!(
                                "{:?} names peer {peer:?}, which the image does not list",
                                link.name
                            ),
                        }
                    })?;
                    let mut end = LinkUnspec::new_with_name(&link.name);
                    if link.mtu != 0 {
                        end = end.mtu(link.mtu);
                    }
                    if let Some(mac) = &link.mac {
                        end = end.address(mac.0.clone());
                    }
                    let mut end = end.build();
                    end.header.index = link.index;
                    let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                        .name(other.name.clone())
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(end)));
                    add_link(handle, pair, other).await?;
                }
                made.push(link.name.clone());
            }
            NetLinkKind::Ifb => {
                let ifb = LinkMessageBuilder::<LinkDummy>::new_with_info_kind(InfoKind::Ifb)
                    .name(link.name.clone());
                add_link(handle, ifb, link).await?;
            }
            NetLinkKind::Dummy => {
                add_link(handle, LinkDummy::new(&link.name), link).await?;
            }
        }
    }
    let now = current_links(handle).await?;
    for link in &ns.links {
        let Some(&index) = now.get(&link.name) else {
            return Err(NetnsError::Netlink {
                step: format!("looking up {:?}", link.name),
                errno: Some(Errno::ENODEV),
                message: "the device vanished right after being made".into(),
            });
        };
        let mut set = LinkUnspec::new_with_index(index);
        if link.mtu != 0 {
            set = set.mtu(link.mtu);
        }
        // eth0's MAC comes from the container's config, lo has none to set.
        if let (Some(mac), NetLinkKind::VethPair { .. }) = (&link.mac, &link.kind) {
            set = set.address(mac.0.clone());
        }
        set = if link.up { set.up() } else { set.down() };
        handle
            .link()
            .set(set.build())
            .execute()
            .await
            .map_err(|e| nl_error(format!("setting MTU and state of {:?}", link.name), e))?;
    }
    Ok(index_names(ns)
        .into_iter()
        .filter_map(|(old, name)| now.get(&name).map(|new| (old, *new)))
        .collect())
}

/// Creates a device from `builder` (kind and name set) with `link`'s MTU
/// and MAC; it is set up or down afterwards.
async fn add_link<T>(
    handle: &mut Handle,
    mut builder: LinkMessageBuilder<T>,
    link: &NetLink,
) -> Result<(), NetnsError> {
    if link.mtu != 0 {
        builder = builder.mtu(link.mtu);
    }
    if let Some(mac) = &link.mac {
        builder = builder.address(mac.0.clone());
    }
    // The same interface index as at checkpoint, when it is free.
    let mut message = builder.build();
    message.header.index = link.index;
    let step = || format!("creating device {:?}", link.name);
    match handle.link().add(message.clone()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno_of(&e), Some(Errno::EBUSY | Errno::EEXIST)) => {
            clear_indexes(&mut message);
            handle
                .link()
                .add(message)
                .execute()
                .await
                .map_err(|e| nl_error(step(), e))
        }
        Err(e) => Err(nl_error(step(), e)),
    }
}

/// Lets the kernel pick the indexes (of a veth's peer too).
fn clear_indexes(message: &mut LinkMessage) {
    message.header.index = 0;
    for attr in message.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                    peer.header.index = 0;
                }
            }
        }
    }
}

fn decode<T: Parseable<[u8]>>(blob: &Blob, what: &'static str) -> Result<T, NetnsError> {
    T::parse(blob.as_bytes()).map_err(|e| NetnsError::Decode {
        what,
        message: e.to_string(),
    })
}

fn remapped(index: u32, remap: &HashMap<u32, u32>, what: &'static str) -> Result<u32, NetnsError> {
    if index == 0 {
        return Ok(0);
    }
    remap
        .get(&index)
        .copied()
        .ok_or_else(|| NetnsError::Decode {
            what,
            message: format!("it names device index {index}, which the image does not list"),
        })
}

/// Sends one creating request; `Ok(Some(errno))` when the kernel refused.
async fn create(
    handle: &mut Handle,
    message: RouteNetlinkMessage,
) -> Result<Option<Errno>, NetnsError> {
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut answers = handle
        .request(request)
        .map_err(|e| nl_error("sending a request".into(), e))?;
    while let Some(answer) = answers.next().await {
        if let NetlinkPayload::Error(e) = answer.payload {
            if e.raw_code() != 0 {
                return Ok(Some(Errno::from_raw(e.raw_code().abs())));
            }
        }
    }
    Ok(None)
}

fn refused(step: &str, errno: Errno) -> NetnsError {
    NetnsError::Netlink {
        step: step.to_string(),
        errno: Some(errno),
        message: errno.desc().to_string(),
    }
}

async fn routing(
    ns: &NetNamespace,
    remap: &HashMap<u32, u32>,
    handle: &mut Handle,
) -> Result<(), NetnsError> {
    for blob in &ns.addresses {
        let mut a: AddressMessage = decode(blob, "address")?;
        a.header.index = remapped(a.header.index, remap, "address")?;
        let step = format!("restoring address {:?}", a.attributes);
        match create(handle, RouteNetlinkMessage::NewAddress(a)).await? {
            None | Some(Errno::EEXIST) => {}
            Some(e) => return Err(refused(&step, e)),
        }
    }

    // A route's gateway may only be reachable through another restored
    // route: retry what failed for want of one while progress is made.
    let mut pending: Vec<RouteMessage> = Vec::new();
    for blob in &ns.routes {
        let mut r: RouteMessage = decode(blob, "route")?;
        for attr in r.attributes.iter_mut() {
            match attr {
                RouteAttribute::Oif(i) | RouteAttribute::Iif(i) => {
                    *i = remapped(*i, remap, "route")?;
                }
                RouteAttribute::MultiPath(hops) => {
                    for hop in hops.iter_mut() {
                        hop.interface_index = remapped(hop.interface_index, remap, "route")?;
                    }
                }
                _ => {}
            }
        }
        pending.push(r);
    }
    loop {
        let before = pending.len();
        let mut failed = Vec::new();
        let mut last = None;
        for r in pending {
            let step = format!("restoring route {:?}", r.attributes);
            match create(handle, RouteNetlinkMessage::NewRoute(r.clone())).await? {
                None | Some(Errno::EEXIST) => {}
                Some(e) => {
                    last = Some(refused(&step, e));
                    failed.push(r);
                }
            }
        }
        if failed.is_empty() {
            break;
        }
        if failed.len() == before {
            if let Some(e) = last {
                return Err(e);
            }
        }
        pending = failed;
    }

    for blob in &ns.rules {
        let r: RuleMessage = decode(blob, "policy rule")?;
        let step = format!("restoring policy rule {:?}", r.attributes);
        match create(handle, RouteNetlinkMessage::NewRule(r)).await? {
            None | Some(Errno::EEXIST) => {}
            Some(e) => return Err(refused(&step, e)),
        }
    }
    for blob in &ns.neighbours {
        let mut n: NeighbourMessage = decode(blob, "neighbour")?;
        n.header.ifindex = remapped(n.header.ifindex, remap, "neighbour")?;
        let step = format!("restoring neighbour {:?}", n.attributes);
        match create(handle, RouteNetlinkMessage::NewNeighbour(n)).await? {
            None | Some(Errno::EEXIST) => {}
            Some(e) => return Err(refused(&step, e)),
        }
    }
    Ok(())
}

/// Feeds saved rules to `tool --noflush` in the calling thread's namespace.
fn restore_rules(tool: &'static str, rules: &[u8]) -> Result<(), NetnsError> {
    feed(tool, &["--noflush", "-w", "10"], rules)
}

/// Rebuilds the namespace's own nftables tables (the `Nftables` record)
/// inside the network namespace of host process `pid`, after [`apply`].
pub fn apply_nftables(nft: &Nftables, pid: i32) -> Result<(), NetnsError> {
    in_netns(pid, || feed("nft", &["-f", "-"], nft.ruleset.as_bytes()))
}

/// Runs `tool ARGS` with `input` on its standard input.
fn feed(tool: &'static str, args: &[&str], input: &[u8]) -> Result<(), NetnsError> {
    let rules = input;
    if rules.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules)
            .map_err(|source| NetnsError::Spawn { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(NetnsError::Tool {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; "),
        });
    }
    Ok(())
}

//! The container's network namespace across a real `cr checkpoint` +
//! `cr restore`: addresses (IPv4 and IPv6, beyond the configured one), MTU,
//! a veth pair inside, an ifb device, routes in two tables, a policy rule, a permanent
//! neighbour, an iptables rule that still drops, changed net sysctls; and
//! the refusal, before the freeze, of devices and rulesets cr does not
//! rebuild.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

/// PID 1 listens on 9998 and 9999 and accepts (and closes) connections.
const LISTENER: &str = r#"
import selectors, socket
sel = selectors.DefaultSelector()
for port in (9998, 9999):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
open("/tmp/ready", "w").close()
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.close()
"#;

fn pid_of(h: &TestHost, name: &str) -> i64 {
    h.status_json(name)["pid"]
        .as_i64()
        .expect("pid of a running container")
}

/// Runs `cmd` with the host's tools inside `name`'s network namespace.
#[track_caller]
fn inside(h: &TestHost, name: &str, cmd: &[&str]) -> String {
    let pid = pid_of(h, name);
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("running nsenter {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} in the container's netns failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.tcp_keepalive_time",
    "net.core.somaxconn",
    "net.ipv4.conf.eth0.rp_filter",
    "net.ipv4.conf.d0.forwarding",
    "net.ipv6.conf.d0.forwarding",
    "net.ipv4.conf.default.accept_redirects",
];

/// Everything the test set up, as text that must not change: device names
/// (without the peer index, which is new after restore), MTU and state,
/// addresses, every routing table, rules, permanent neighbours, iptables
/// rules and the sysctls.
fn snapshot(h: &TestHost, name: &str) -> String {
    let mut out = String::new();
    for line in inside(h, name, &["ip", "-o", "link", "show"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let dev = f[1].split('@').next().unwrap_or(f[1]);
        let mtu = f.iter().position(|w| *w == "mtu").map(|i| f[i + 1]);
        let state = f.iter().position(|w| *w == "state").map(|i| f[i + 1]);
        let mac = f
            .iter()
            .position(|w| w.starts_with("link/"))
            .map(|i| f[i + 1]);
        out.push_str(&format!(
            "link {dev} {} mtu {mtu:?} {state:?} {mac:?}\n",
            f[2]
        ));
    }
    for line in inside(h, name, &["ip", "-o", "addr", "show"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        out.push_str(&format!("addr {}\n", f[1..].join(" ")));
    }
    out.push_str(&inside(
        h,
        name,
        &["ip", "-4", "route", "show", "table", "all"],
    ));
    // The kernel's own IPv6 routes (fe80::/64, ff00::/8 per device) are
    // listed in the order the devices got their carrier, which the kernel
    // reports with a delay of its own: compare them as a set.
    let mut v6: Vec<String> = inside(h, name, &["ip", "-6", "route", "show", "table", "all"])
        .lines()
        .map(str::to_string)
        .collect();
    v6.sort();
    out.push_str(&(v6.join("\n") + "\n"));
    out.push_str(&inside(h, name, &["ip", "rule", "show"]));
    out.push_str(&inside(h, name, &["ip", "-6", "rule", "show"]));
    out.push_str(&inside(
        h,
        name,
        &["ip", "neigh", "show", "nud", "permanent"],
    ));
    out.push_str(&inside(
        h,
        name,
        &["ip", "-6", "neigh", "show", "nud", "permanent"],
    ));
    out.push_str(&inside(h, name, &["iptables", "-S"]));
    out.push_str(&inside(h, name, &["ip6tables", "-S"]));
    for s in SYSCTLS {
        out.push_str(&format!("{s} = {}", inside(h, name, &["sysctl", "-n", s])));
    }
    out
}

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn the_network_namespace_comes_back() {
    require(
        "iptables and iproute2 on the host",
        Command::new("iptables").arg("-V").output().is_ok()
            && Command::new("ip").arg("-V").output().is_ok(),
        "apt-get install iptables iproute2",
    );
    let h = TestHost::new();
    h.run(
        "net",
        TestImage::Python,
        Some(10),
        &["--mac", "02:00:00:aa:bb:30"],
        &["/usr/bin/python3", "-c", LISTENER],
    );
    assert!(
        wait_until(Duration::from_secs(10), || h
            .cr(&["exec", "net", "--", "test", "-e", "/tmp/ready"])
            .status
            .success()),
        "the listener did not start: {}",
        h.ok(&["logs", "net"])
    );
    let gw = h.net.addr(1);
    let second = h.net.ip(20);
    let neighbour = h.net.addr(77);
    for cmd in [
        vec!["ip", "link", "set", "eth0", "mtu", "1400"],
        vec!["ip", "addr", "add", &second, "dev", "eth0"],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:77::10/64",
            "dev",
            "eth0",
            "nodad",
        ],
        vec![
            "ip",
            "link",
            "add",
            "d0",
            "address",
            "02:00:00:00:d0:01",
            "type",
            "veth",
            "peer",
            "name",
            "d0p",
            "address",
            "02:00:00:00:d0:02",
        ],
        vec!["ip", "link", "set", "d0", "mtu", "9000", "up"],
        vec!["ip", "link", "set", "d0p", "mtu", "9000", "up"],
        vec!["ip", "addr", "add", "192.168.77.1/24", "dev", "d0"],
        vec![
            "ip",
            "link",
            "add",
            "d1",
            "address",
            "02:00:00:00:d1:01",
            "type",
            "ifb",
        ],
        vec![
            "ip",
            "route",
            "add",
            "172.31.5.0/24",
            "via",
            &gw,
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "route",
            "add",
            "172.31.6.0/24",
            "dev",
            "d0",
            "table",
            "100",
        ],
        vec![
            "ip",
            "-6",
            "route",
            "add",
            "fd00:99::/64",
            "via",
            "fd00:77::1",
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "rule",
            "add",
            "from",
            "192.168.77.0/24",
            "lookup",
            "100",
            "priority",
            "1000",
        ],
        vec![
            "ip",
            "-6",
            "rule",
            "add",
            "to",
            "fd00:99::/64",
            "lookup",
            "100",
            "priority",
            "1001",
        ],
        vec![
            "ip",
            "neigh",
            "add",
            &neighbour,
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
        vec![
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP",
        ],
        vec!["iptables", "-N", "MINE"],
        vec![
            "iptables",
            "-A",
            "MINE",
            "-s",
            "10.99.0.0/16",
            "-j",
            "RETURN",
        ],
        vec!["iptables", "-A", "INPUT", "-j", "MINE"],
        vec![
            "ip6tables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "9999",
            "-j",
            "DROP",
        ],
        vec!["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        vec!["sysctl", "-q", "-w", "net.ipv4.tcp_keepalive_time=600"],
        vec!["sysctl", "-q", "-w", "net.core.somaxconn=1000"],
        vec!["sysctl", "-q", "-w", "net.ipv4.conf.eth0.rp_filter=2"],
        vec!["sysctl", "-q", "-w", "net.ipv4.conf.d0.forwarding=0"],
        vec!["sysctl", "-q", "-w", "net.ipv6.conf.d0.forwarding=1"],
        vec![
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.default.accept_redirects=0",
        ],
    ] {
        inside(&h, "net", &cmd);
    }
    let open: SocketAddr = format!("{}:9998", h.net.addr(10)).parse().unwrap();
    let dropped: SocketAddr = format!("{}:9999", h.net.addr(10)).parse().unwrap();
    assert!(reachable(open), "port 9998 unreachable before checkpoint");
    assert!(
        !reachable(dropped),
        "the DROP rule did not drop before checkpoint"
    );
    let before = snapshot(&h, "net");

    // PID 1's listening TCP sockets make cr lock the network (CR-NETLOCK)
    // at checkpoint and restore: the saved rules must leave the lock out,
    // and the restored ones must not outlive or replace it.
    h.ok(&["checkpoint", "net"]);
    assert_eq!(h.state("net"), "stopped");
    h.ok(&["restore", "net"]);
    assert_eq!(h.state("net"), "running");

    // IPv6 link-local addresses go through duplicate address detection
    // again on the rebuilt devices: wait for it, as after any link-up.
    assert!(
        wait_until(Duration::from_secs(10), || !inside(
            &h,
            "net",
            &["ip", "addr"]
        )
        .contains("tentative")),
        "duplicate address detection did not finish"
    );
    let after = snapshot(&h, "net");
    assert_eq!(
        before, after,
        "the network namespace changed across checkpoint + restore"
    );
    // Spot checks, so that an empty snapshot cannot pass.
    for expected in [
        "link eth0 <BROADCAST,MULTICAST,UP,LOWER_UP> mtu Some(\"1400\")",
        "link d0 <BROADCAST,MULTICAST,UP,LOWER_UP> mtu Some(\"9000\") Some(\"UP\") Some(\"02:00:00:00:d0:01\")",
        "link d0p <BROADCAST,MULTICAST,UP,LOWER_UP> mtu Some(\"9000\") Some(\"UP\") Some(\"02:00:00:00:d0:02\")",
        "link d1: <BROADCAST,NOARP> mtu Some(\"1500\") Some(\"DOWN\") Some(\"02:00:00:00:d1:01\")",
        &format!("inet {second}"),
        "inet6 fd00:77::10/64",
        "inet 192.168.77.1/24",
        &format!("172.31.5.0/24 via {gw} dev eth0"),
        "172.31.6.0/24 dev d0 table 100",
        "fd00:99::/64 via fd00:77::1 dev eth0",
        "1000:\tfrom 192.168.77.0/24 lookup 100",
        "1001:\tfrom all to fd00:99::/64 lookup 100",
        &format!("{neighbour} dev eth0 lladdr 02:00:00:00:00:77 PERMANENT"),
        "-A INPUT -p tcp -m tcp --dport 9999 -j DROP",
        "-A MINE -s 10.99.0.0/16 -j RETURN",
        "net.ipv4.ip_forward = 1",
        "net.ipv4.tcp_keepalive_time = 600",
        "net.core.somaxconn = 1000",
        "net.ipv4.conf.eth0.rp_filter = 2",
        "net.ipv4.conf.d0.forwarding = 0",
        "net.ipv6.conf.d0.forwarding = 1",
        "net.ipv4.conf.default.accept_redirects = 0",
    ] {
        assert!(after.contains(expected), "{expected:?} missing after restore:\n{after}");
    }
    assert!(
        !after.contains("CR-NETLOCK"),
        "the network lock stayed:\n{after}"
    );
    assert!(reachable(open), "port 9998 unreachable after restore");
    assert!(
        !reachable(dropped),
        "the DROP rule no longer drops after restore"
    );
}

#[test]
fn a_bridge_inside_is_refused_before_the_freeze() {
    let h = TestHost::new();
    h.run(
        "bridgein",
        TestImage::Busybox,
        Some(11),
        &[],
        &["/bin/sh", "-c", "while :; do sleep 1; done"],
    );
    inside(
        &h,
        "bridgein",
        &["ip", "link", "add", "br1", "type", "bridge"],
    );
    let pid = pid_of(&h, "bridgein");
    let err = h.fails(&["checkpoint", "bridgein"]);
    assert!(
        err.contains("device \"br1\" of kind bridge"),
        "the refusal does not name the device and its kind: {err}"
    );
    assert!(
        err.contains(&pid.to_string()),
        "the refusal does not name the process: {err}"
    );
    assert_eq!(h.state("bridgein"), "running");
    assert_eq!(pid_of(&h, "bridgein"), pid);
    let links = inside(&h, "bridgein", &["ip", "-o", "link", "show"]);
    assert!(links.contains(" br1: "), "{links}");
}

/// Tables made with `nft` (not by iptables): a set with elements, a
/// named counter, chains at hooks with rules that refer to them.
const NFT_RULESET: &str = "table inet mine {
    counter seen { }
    set blocked { type ipv4_addr; elements = { 10.9.9.9, 10.9.9.10 } }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @blocked drop
        tcp dport 9999 counter name seen drop
    }
}
table ip other {
    chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 10.8.8.8 reject
    }
}
";

#[test]
fn nft_tables_come_back_with_their_sets_and_rules() {
    require(
        "nft on the host",
        Command::new("nft").arg("-v").output().is_ok(),
        "apt-get install nftables",
    );
    let h = TestHost::new();
    h.run(
        "nftin",
        TestImage::Busybox,
        Some(12),
        &[],
        &["/bin/sh", "-c", "while :; do sleep 1; done"],
    );
    let path = h.root.join("ruleset.nft");
    std::fs::write(&path, NFT_RULESET).expect("writing the ruleset");
    inside(&h, "nftin", &["nft", "-f", path.to_str().expect("path")]);
    let list = |h: &TestHost| {
        format!(
            "{}{}",
            inside(h, "nftin", &["nft", "list", "table", "inet", "mine"]),
            inside(h, "nftin", &["nft", "list", "table", "ip", "other"])
        )
    };
    let before = list(&h);
    assert!(before.contains("10.9.9.10"), "{before}");
    let pid = pid_of(&h, "nftin");
    h.ok(&["checkpoint", "nftin"]);
    assert_eq!(h.state("nftin"), "stopped");
    h.ok(&["restore", "nftin"]);
    assert_ne!(pid_of(&h, "nftin"), pid, "a new PID 1 after restore");
    let after = list(&h);
    assert_eq!(
        after, before,
        "the nftables tables changed across checkpoint and restore"
    );
    // Nothing doubled: exactly the two tables beside what iptables made.
    let tables = inside(&h, "nftin", &["nft", "list", "tables"]);
    assert_eq!(tables.matches("table inet mine").count(), 1, "{tables}");
    assert_eq!(tables.matches("table ip other").count(), 1, "{tables}");
}

//! Netlink sockets, zdtm-style: tests/programs/netlink.py (after the shared
//! head zdtm_lib.py) binds NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT and
//! NETLINK_GENERIC sockets with port ids, groups and flags, leaves a
//! notification queued, writes /crtest/ready, waits for /crtest/go and
//! checks all of it after a real `cr checkpoint` + `cr restore`. Netlink
//! sockets cr cannot move, raw, ICMP and packet sockets are refused before
//! the freeze, naming the process and the fd, and the container runs on.

mod common;

use std::time::Duration;

use common::*;

const LIB: &str = include_str!("programs/zdtm_lib.py");
const BODY: &str = include_str!("programs/netlink.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn result_of(h: &TestHost, name: &str) -> String {
    h.exec(name, &["touch", "/crtest/go"]);
    assert!(
        wait_until(Duration::from_secs(15), || !file_in(
            h,
            name,
            "/crtest/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", name])
    );
    file_in(h, name, "/crtest/result").trim().to_string()
}

#[test]
fn netlink_sockets_keep_their_ports_groups_and_flags_across_checkpoint_and_restore() {
    let h = TestHost::new();
    h.run_python_until("nl", &format!("{LIB}\n{BODY}"), "/crtest/ready");
    let summary: serde_json::Value =
        serde_json::from_str(&h.ok(&["checkpoint", "nl", "--json"])).expect("json");
    let shown = h.ok(&["inspect", summary["image"].as_str().expect("image")]);
    assert!(
        shown.contains("netlink protocol 0 port 1 groups [11, 1]"),
        "{shown}"
    );
    assert!(
        shown.contains("netlink protocol 15 port 4242 groups [1]"),
        "{shown}"
    );
    assert!(shown.contains("connected to port 0 groups 0x1"), "{shown}");
    h.ok(&["restore", "nl"]);
    assert_eq!(result_of(&h, "nl"), "PASS");
}

#[test]
fn the_netlink_checks_can_fail() {
    // Without a checkpoint the queued notification is still there.
    let h = TestHost::new();
    h.run_python_until("nl-bad", &format!("{LIB}\n{BODY}"), "/crtest/ready");
    let r = result_of(&h, "nl-bad");
    assert_eq!(
        r,
        "FAIL: route: the notification queued at checkpoint is still there"
    );
}

/// Runs `setup` (python, after LIB) in a container that keeps the socket
/// at fd 3 open, checks that `cr checkpoint` refuses naming the process
/// (pid 1, python3), fd 3 and `what`, and that the container runs on.
fn refused(name: &str, setup: &str, what: &str) {
    let h = TestHost::new();
    let script = format!("{LIB}\n{setup}\nos.dup2(s.fileno(), 3)\nready()\nwait_go()\nresult()\n");
    h.run_python_until(name, &script, "/crtest/ready");
    let err = h.fails(&["checkpoint", name]);
    assert!(
        err.contains("cannot checkpoint process 1 (python3): fd 3 is"),
        "{err}"
    );
    assert!(err.contains(what), "{err}");
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(h.state(name), "running");
    assert_eq!(
        h.ok(&["checkpoint", "list", name, "--json"]).trim(),
        "[]",
        "an image was left"
    );
    assert_eq!(result_of(&h, name), "PASS");
}

#[test]
fn a_netlink_answer_waiting_to_be_read_is_refused_before_the_freeze() {
    refused(
        "nl-answer",
        "import socket\n\
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n\
s.send(struct.pack('=IHHII', 32, 18, 0x301, 1, 0) + bytes(16))\n\
time.sleep(0.1)",
        "NETLINK_ROUTE netlink socket with an answer to a request waiting to be read",
    );
}

#[test]
fn a_netfilter_netlink_socket_is_refused_before_the_freeze() {
    refused(
        "nl-nf",
        "import socket\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)",
        "a netlink socket of NETLINK_NETFILTER",
    );
}

#[test]
fn a_raw_icmp_socket_is_refused_before_the_freeze() {
    refused(
        "raw-icmp",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
        "a raw IPv4 socket (protocol 1, ICMP); cr does not move raw sockets",
    );
}

#[test]
fn a_ping_socket_is_refused_before_the_freeze() {
    refused(
        "ping",
        "import socket\n\
open('/proc/sys/net/ipv4/ping_group_range', 'w').write('0 0')\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)",
        "an ICMP (ping) socket; cr does not move ICMP sockets",
    );
}

#[test]
fn a_packet_socket_is_refused_before_the_freeze() {
    refused(
        "packet",
        "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))",
        "a packet socket (AF_PACKET, SOCK_RAW); cr does not move packet sockets",
    );
}

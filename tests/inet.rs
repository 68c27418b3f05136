//! TCP and UDP sockets across a real `cr checkpoint` + `cr restore`
//! (src/dump/inet.rs, src/restore/inet.rs, src/netlock.rs): connections to
//! a peer outside the container and inside it keep every byte and see no
//! reset, listeners and UDP sockets come back with their options, and the
//! network lock never outlives a checkpoint or a restore.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

const SERVER: &str = include_str!("programs/inet_server.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn wait_file(h: &TestHost, name: &str, path: &str, secs: u64) -> String {
    assert!(
        wait_until(Duration::from_secs(secs), || !file_in(h, name, path)
            .is_empty()),
        "{name} did not write {path}: {}",
        h.ok(&["logs", name])
    );
    file_in(h, name, path)
}

fn pattern(tag: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(format!("{tag}{i:08}\n").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// The lock's chain in the network namespace of `name`'s PID 1, if any.
fn lock_rules(h: &TestHost, name: &str) -> String {
    let pid = h.status_json(name)["pid"]
        .as_i64()
        .expect("pid of a running container");
    let mut rules = String::new();
    for tool in ["iptables", "ip6tables"] {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args([tool, "-S"])
            .output()
            .expect("running iptables");
        assert!(
            out.status.success(),
            "{tool} -S failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rules.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    rules
        .lines()
        .filter(|l| l.contains("CR-NETLOCK"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client outside the container, data queued both ways.
struct Client {
    stream: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client { stream }
    }

    #[track_caller]
    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.stream
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} bytes from the restored server: {e}"));
        buf
    }
}

/// Runs the server program in a container with an address and connects a
/// client from the host side: `(container ip, client)`.
fn server_with_client(h: &TestHost, name: &str, ip: u8, extra: &[&str]) -> Client {
    let mut cmd = vec!["/usr/bin/python3", "-c", SERVER, "7000"];
    cmd.extend_from_slice(extra);
    h.run(name, TestImage::Python, Some(ip), &[], &cmd);
    wait_file(h, name, "/root/listening", 20);
    let addr: SocketAddr = format!("{}:7000", h.net.addr(ip)).parse().unwrap();
    let mut client = Client::connect(addr);
    client
        .stream
        .write_all(&pattern("client", 60000))
        .expect("sending to the server");
    client
}

/// The conversation after the restore: the server's queued bytes arrive
/// intact, the client's were read by the server, a question gets its answer.
#[track_caller]
fn finish_conversation(h: &TestHost, name: &str, client: &mut Client, sent: usize) {
    h.exec(name, &["touch", "/root/go"]);
    let got = client.read_exact(sent);
    assert!(
        got == pattern("server", sent),
        "the server's queued bytes came back changed"
    );
    client
        .stream
        .write_all(b"how are you\n")
        .expect("asking after the restore");
    let answer = client.read_exact(b"answer to how are you\n".len());
    assert_eq!(answer, b"answer to how are you\n");
    assert_eq!(wait_file(h, name, "/root/result", 30).trim(), "PASS");
}

#[test]
fn a_connection_to_a_peer_outside_survives_checkpoint_and_restore() {
    let h = TestHost::new();
    let mut client = server_with_client(&h, "srv", 10, &[]);
    let sent: usize = wait_file(&h, "srv", "/root/sent", 20)
        .trim()
        .parse()
        .unwrap();
    assert!(sent > 0);
    let _ = wait_file(&h, "srv", "/root/ready", 20);
    h.ok(&["checkpoint", "srv"]);
    assert_eq!(h.state("srv"), "stopped");
    h.ok(&["restore", "srv"]);
    assert_eq!(
        lock_rules(&h, "srv"),
        "",
        "the restore left the network locked"
    );
    finish_conversation(&h, "srv", &mut client, sent);
}

const LOCAL: &str = include_str!("programs/inet_local.py");

fn run_local(h: &TestHost, name: &str) {
    h.run(
        name,
        TestImage::Python,
        Some(20),
        &[],
        &["/usr/bin/python3", "-c", LOCAL],
    );
    let _ = wait_file(h, name, "/root/ready", 30);
}

#[test]
fn connections_inside_listeners_and_udp_survive_checkpoint_and_restore() {
    let h = TestHost::new();
    run_local(&h, "local");
    h.ok(&["checkpoint", "local"]);
    assert_eq!(h.state("local"), "stopped");
    h.ok(&["restore", "local"]);
    assert_eq!(
        lock_rules(&h, "local"),
        "",
        "the restore left the network locked"
    );
    h.exec("local", &["touch", "/root/go"]);
    assert_eq!(wait_file(&h, "local", "/root/result", 60).trim(), "PASS");
}

#[test]
fn the_local_checks_fail_without_a_checkpoint() {
    // The program can fail: with a datagram it did not send in the bound
    // socket's queue, its UDP check sees the wrong one.
    let h = TestHost::new();
    run_local(&h, "plain");
    h.exec(
        "plain",
        &[
            "/usr/bin/python3",
            "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'stray', ('127.0.0.1', 7104))",
        ],
    );
    h.exec("plain", &["touch", "/root/go"]);
    let result = wait_file(&h, "plain", "/root/result", 60);
    assert!(result.starts_with("FAIL: udp datagram"), "{result}");
}

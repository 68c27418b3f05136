//! `cr migrate` between two test hosts: network namespaces `host1` and
//! `host2` (each with its own state root, cgroup parent, bridge and `cr
//! serve`) and a `client`, joined by a `lan` bridge in a fourth namespace,
//! as DESIGN.md draws them. The container keeps its IP and MAC; a client
//! on the lan keeps one TCP connection to it across every migration.
//! Failures injected on the destination (`CR_MIGRATE_FAULT`) and refused
//! peers each end with the container running on exactly one host, its
//! memory intact, and nothing left on the other.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::{Redis, Reply};
use common::*;

const ECHO: &str = r#"
import os, socket, threading, time
def serve(c):
    f = c.makefile("rwb", buffering=0)
    while True:
        line = f.readline()
        if not line:
            return
        f.write(b"echo " + line)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(16)
big = bytearray(os.urandom(32 << 20))
def counter():
    i = 0
    while True:
        i += 1
        open("/root/count.tmp", "w").write("%d %d" % (i, sum(big[::4096])))
        os.rename("/root/count.tmp", "/root/count")
        time.sleep(0.05)
threading.Thread(target=counter, daemon=True).start()
open("/root/ready", "w").write("1")
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The four namespaces, the two hosts and their agents.
struct Lan {
    /// One two-host lan at a time on this machine: each migrates memory
    /// between two namespaces on both cores.
    _turn: nix::fcntl::Flock<File>,
    h1: TestHost,
    h2: TestHost,
    lan: String,
    client: String,
    serves: Vec<(usize, Child)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn new() -> Lan {
        require(
            "iproute2",
            Command::new("ip").arg("-V").output().is_ok(),
            "apt-get install -y iproute2",
        );
        std::fs::create_dir_all("/run/cr-tests").expect("creating /run/cr-tests");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/cr-tests/migrate-lan.lock")
            .expect("lan lock");
        let turn = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("locking the lan: {e}"));
        let mut h1 = TestHost::new();
        let mut h2 = TestHost::new();
        let tag = format!("crm{}x{}", h1.net.x, h1.net.y);
        let (lan, n1, n2, client) = (
            format!("{tag}-lan"),
            format!("{tag}-host1"),
            format!("{tag}-host2"),
            format!("{tag}-client"),
        );
        for ns in [&lan, &n1, &n2, &client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        // Both hosts bridge their containers onto the lan under the bridge
        // name the container's config carries.
        h2.bridge = h1.bridge.clone();
        h1.netns = Some(n1.clone());
        h2.netns = Some(n2.clone());
        let lan_fixture = Lan {
            _turn: turn,
            h1,
            h2,
            lan: lan.clone(),
            client: client.clone(),
            serves: Vec::new(),
        };
        ip(&["-n", &lan, "link", "add", "lan", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "lan", "up"]);
        let prefix = format!("10.{}.{}", lan_fixture.h1.net.x, lan_fixture.h1.net.y);
        for (i, ns) in [&n1, &n2, &client].into_iter().enumerate() {
            let (up, port) = (format!("up{i}"), format!("port{i}"));
            ip(&[
                "link", "add", &up, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &lan,
            ]);
            ip(&["-n", &lan, "link", "set", &port, "master", "lan", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            if ns == &client {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{prefix}.250/24"),
                    "dev",
                    &up,
                ]);
                ip(&["-n", ns, "link", "set", &up, "up"]);
            } else {
                let br = &lan_fixture.h1.bridge;
                ip(&["-n", ns, "link", "add", br, "type", "bridge"]);
                // A fixed MAC: a bridge takes its lowest port's otherwise, and
                // a container's veth joining or leaving would move it under
                // the other host's ARP entry.
                ip(&[
                    "-n",
                    ns,
                    "link",
                    "set",
                    br,
                    "address",
                    &format!("02:cb:00:00:00:0{}", i + 1),
                ]);
                ip(&["-n", ns, "link", "set", &up, "master", br, "up"]);
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{prefix}.{}/24", i + 1),
                    "dev",
                    br,
                ]);
                ip(&["-n", ns, "link", "set", br, "up"]);
            }
        }
        let f1 = lan_fixture.h1.ok(&["identity"]).trim().to_string();
        let f2 = lan_fixture.h2.ok(&["identity"]).trim().to_string();
        let port = 7447;
        lan_fixture.h1.ok(&[
            "peer",
            "add",
            "host2",
            &format!("{prefix}.2:{port}"),
            "--fingerprint",
            &f2,
        ]);
        lan_fixture.h2.ok(&[
            "peer",
            "add",
            "host1",
            &format!("{prefix}.1:{port}"),
            "--fingerprint",
            &f1,
        ]);
        lan_fixture
    }

    fn host(&self, i: usize) -> &TestHost {
        if i == 1 {
            &self.h1
        } else {
            &self.h2
        }
    }

    /// (Re)starts `cr serve` on host `i`, with `fault` injected if given.
    fn serve(&mut self, i: usize, fault: Option<&str>) {
        self.stop_serve(i);
        let before = self.serve_log(i).matches("listening on").count();
        let log = self.host(i).root.join("serve.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("serve log");
        let mut cmd = self.host(i).cr_cmd(&["serve"]);
        cmd.stdout(Stdio::null())
            .stderr(log.try_clone().expect("log"));
        if let Some(f) = fault {
            cmd.env("CR_MIGRATE_FAULT", f);
        }
        let child = cmd.spawn().expect("starting cr serve");
        self.serves.push((i, child));
        // Listening (after its recovery of what a killed agent left) once
        // it printed its own line.
        let started = wait_until(Duration::from_secs(10), || {
            self.serve_log(i).matches("listening on").count() > before
        });
        assert!(started, "cr serve did not start on host{i}");
        std::thread::sleep(Duration::from_millis(100));
    }

    fn stop_serve(&mut self, i: usize) {
        let mut kept = Vec::new();
        for (h, mut c) in self.serves.drain(..) {
            if h == i {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                kept.push((h, c));
            }
        }
        self.serves = kept;
    }

    fn serve_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.host(i).root.join("serve.log")).unwrap_or_default()
    }

    /// A TCP connection made from the client namespace.
    fn connect(&self, addr: &str) -> TcpStream {
        self.try_connect(addr).expect("connecting from the client")
    }

    fn try_connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let ns = File::open(format!("/run/netns/{}", self.client)).expect("client netns");
        let addr = addr.to_string();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
        })
        .join()
        .expect("connect thread")
    }

    fn names(&self, i: usize) -> Vec<String> {
        let out = self.host(i).ok(&["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list json");
        list.iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    fn staging_mounts(&self, i: usize) -> usize {
        let root = self.host(i).root.join("migrations");
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(root.to_str().unwrap_or("?")))
            .count()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (_, mut c) in self.serves.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Containers go while their namespaces still exist.
        for h in [&self.h1, &self.h2] {
            for name in ["echo", "redis"] {
                let _ = h.cr(&["destroy", name]);
            }
            let root = h.root.join("migrations");
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        for ns in [
            self.h1.netns.clone().unwrap_or_default(),
            self.h2.netns.clone().unwrap_or_default(),
            self.client.clone(),
            self.lan.clone(),
        ] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// One line out, its echo back.
fn exchange(conn: &mut TcpStream, reader: &mut BufReader<TcpStream>, n: u32) -> Result<(), String> {
    conn.write_all(format!("line {n}\n").as_bytes())
        .map_err(|e| format!("writing line {n}: {e}"))?;
    let mut back = String::new();
    reader
        .read_line(&mut back)
        .map_err(|e| format!("reading the echo of line {n}: {e}"))?;
    if back != format!("echo line {n}\n") {
        return Err(format!("line {n} came back as {back:?}"));
    }
    Ok(())
}

fn count(h: &TestHost) -> (u64, u64) {
    let out = h.cr(&["exec", "echo", "--", "cat", "/root/count"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn start_echo(lan: &Lan) -> String {
    let ip = lan.h1.net.addr(10);
    lan.h2.with_image(TestImage::Python);
    lan.h1.run(
        "echo",
        TestImage::Python,
        Some(10),
        &["--mac", "02:00:00:aa:bb:77", "--memory", "256M"],
        &["/usr/bin/python3", "-c", ECHO],
    );
    assert!(
        wait_until(Duration::from_secs(20), || count(&lan.h1).0 > 0),
        "the echo server did not start: {}",
        lan.h1.ok(&["logs", "echo"])
    );
    ip
}

#[test]
fn a_container_moves_there_and_back_with_its_address_and_a_client_connected() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let addr = start_echo(&lan);
    let mut conn = lan.connect(&format!("{addr}:7000"));
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut n = 0;
    for _ in 0..5 {
        n += 1;
        exchange(&mut conn, &mut reader, n).expect("before the migration");
    }
    let (_, sum) = count(&lan.h1);
    for (from, to, peer) in [(1, 2, "host2"), (2, 1, "host1")] {
        let t = Instant::now();
        let out = lan.host(from).ok(&["migrate", "echo", peer, "--json"]);
        let report: serde_json::Value = serde_json::from_str(&out).expect("report json");
        assert!(report["frozen_ms"].as_f64().unwrap_or(0.0) > 0.0, "{out}");
        assert!(t.elapsed() < Duration::from_secs(30));
        // Exactly one host has it, and it runs there.
        assert!(
            lan.names(from).is_empty(),
            "left on host{from}: {:?}",
            lan.names(from)
        );
        assert_eq!(lan.names(to), vec!["echo".to_string()]);
        assert_eq!(lan.host(to).state("echo"), "running");
        assert_eq!(
            lan.host(to)
                .exec("echo", &["cat", "/sys/class/net/eth0/address"])
                .trim(),
            "02:00:00:aa:bb:77"
        );
        // The same connection goes on; the memory came along.
        for _ in 0..5 {
            n += 1;
            exchange(&mut conn, &mut reader, n)
                .unwrap_or_else(|e| panic!("after moving to host{to}: {e}; {}", lan.serve_log(to)));
        }
        let (ticks, after) = count(lan.host(to));
        assert!(ticks > 0);
        assert_eq!(after, sum, "the container's memory changed on the way");
        assert_eq!(lan.staging_mounts(from) + lan.staging_mounts(to), 0);
    }
    // A new connection reaches it at the same address.
    let mut fresh = lan.connect(&format!("{addr}:7000"));
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut fresh_reader = BufReader::new(fresh.try_clone().expect("clone"));
    exchange(&mut fresh, &mut fresh_reader, 1).expect("a new connection");
}

#[test]
fn a_peer_that_is_not_trusted_is_refused_and_nothing_moves() {
    let mut lan = Lan::new();
    lan.serve(2, None);
    start_echo(&lan);
    // host1 pins the wrong certificate for a peer at host2's address.
    let own = lan.h1.ok(&["identity"]).trim().to_string();
    let address = format!("10.{}.{}.2:7447", lan.h1.net.x, lan.h1.net.y);
    lan.h1
        .ok(&["peer", "add", "impostor", &address, "--fingerprint", &own]);
    let err = lan.h1.fails(&["migrate", "echo", "impostor"]);
    assert!(
        err.contains("offered certificate") && err.contains(&own),
        "{err}"
    );
    // host2 stops trusting host1.
    lan.h2.ok(&["peer", "rm", "host1"]);
    let err = lan.h1.fails(&["migrate", "echo", "host2"]);
    assert!(err.contains("refused"), "{err}");
    assert!(lan.serve_log(2).contains("refused"), "{}", lan.serve_log(2));
    assert_eq!(lan.h1.state("echo"), "running");
    assert!(lan.names(2).is_empty());
    // An unknown peer name is a clear error too.
    let err = lan.h1.fails(&["migrate", "echo", "nowhere"]);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn every_failure_on_the_destination_leaves_the_container_running_on_the_source() {
    let mut lan = Lan::new();
    let addr = start_echo(&lan);
    let mut conn = lan.connect(&format!("{addr}:7000"));
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let (_, sum) = count(&lan.h1);
    let mut n = 0;
    for fault in ["transfer", "restore", "resume", "crash"] {
        lan.serve(2, Some(fault));
        let err = lan.h1.fails(&["migrate", "echo", "host2"]);
        assert!(!err.is_empty(), "{fault}");
        // Running here, memory intact, the connection alive.
        assert_eq!(lan.h1.state("echo"), "running", "after {fault}: {err}");
        let (t0, s) = count(&lan.h1);
        assert_eq!(s, sum, "after {fault}");
        assert!(
            wait_until(Duration::from_secs(5), || count(&lan.h1).0 > t0),
            "the container does not run after {fault}"
        );
        n += 1;
        exchange(&mut conn, &mut reader, n).unwrap_or_else(|e| panic!("after {fault}: {e}"));
        if fault == "crash" {
            // The agent died with the restored container frozen: its next
            // start removes it.
            assert_eq!(lan.h2.state("echo"), "frozen", "{}", lan.serve_log(2));
            lan.serve(2, None);
        }
        assert!(lan.names(2).is_empty(), "after {fault}: {:?}", lan.names(2));
        assert_eq!(lan.staging_mounts(2), 0, "after {fault}");
    }
    assert_eq!(lan.staging_mounts(1), 0);
}

#[test]
fn redis_with_100k_keys_moves_there_and_back_with_its_client_connected() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    lan.h2.with_image(TestImage::Redis);
    lan.h1.run(
        "redis",
        TestImage::Redis,
        Some(20),
        &["--memory", "512M"],
        &[
            "/usr/bin/redis-server",
            "--bind",
            "0.0.0.0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--enable-debug-command",
            "yes",
        ],
    );
    let addr = format!("{}:6379", lan.h1.net.addr(20));
    assert!(
        wait_until(Duration::from_secs(15), || lan.try_connect(&addr).is_ok()),
        "redis did not start: {}",
        lan.h1.ok(&["logs", "redis"])
    );
    let mut r = Redis::from_stream(lan.connect(&addr)).expect("redis client");
    assert_eq!(
        r.cmd(&["DEBUG", "POPULATE", "100000"]),
        Reply::Status("OK".into())
    );
    assert_eq!(
        r.cmd(&["SET", "session", "before"]),
        Reply::Status("OK".into())
    );
    for (i, (from, to, peer)) in [(1, 2, "host2"), (2, 1, "host1")].into_iter().enumerate() {
        lan.host(from).ok(&["migrate", "redis", peer]);
        assert!(lan.names(from).is_empty());
        assert_eq!(lan.host(to).state("redis"), "running");
        // The same connection: every key, and writes go on.
        assert_eq!(r.cmd(&["DBSIZE"]), Reply::Int(100_001 + i as i64));
        for k in [0, 4242, 99_999] {
            assert_eq!(r.get(&format!("key:{k}")), Some(format!("value:{k}")));
        }
        assert_eq!(r.cmd(&["INCR", "moves"]), Reply::Int(i as i64 + 1));
    }
    assert_eq!(r.get("session"), Some("before".into()));
}

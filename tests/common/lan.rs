//! Two test hosts on a lan, as DESIGN.md draws them: network namespaces
//! `host1` and `host2` (each with its own state root, cgroup parent, bridge
//! and `cr serve`) and a `client`, joined by a `lan` bridge in a fourth
//! namespace. Used by every test binary that migrates (`tests/migrate*.rs`);
//! one lan at a time on this machine (a file lock), since each migration
//! moves memory between two namespaces on both cores.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

pub const ECHO: &str = r#"
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
pub struct Lan {
    /// One two-host lan at a time on this machine: each migrates memory
    /// between two namespaces on both cores.
    pub _turn: nix::fcntl::Flock<File>,
    pub h1: TestHost,
    pub h2: TestHost,
    pub lan: String,
    pub client: String,
    pub serves: Vec<(usize, Child)>,
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
    pub fn new() -> Lan {
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

    pub fn host(&self, i: usize) -> &TestHost {
        if i == 1 {
            &self.h1
        } else {
            &self.h2
        }
    }

    /// (Re)starts `cr serve` on host `i`, with `fault` injected if given.
    pub fn serve(&mut self, i: usize, fault: Option<&str>) {
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

    pub fn stop_serve(&mut self, i: usize) {
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

    pub fn serve_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.host(i).root.join("serve.log")).unwrap_or_default()
    }

    /// A TCP connection made from the client namespace.
    pub fn connect(&self, addr: &str) -> TcpStream {
        self.try_connect(addr).expect("connecting from the client")
    }

    pub fn try_connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let ns = File::open(format!("/run/netns/{}", self.client)).expect("client netns");
        let addr = addr.to_string();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
        })
        .join()
        .expect("connect thread")
    }

    pub fn names(&self, i: usize) -> Vec<String> {
        let out = self.host(i).ok(&["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list json");
        list.iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    pub fn staging_mounts(&self, i: usize) -> usize {
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
            h.destroy_all();
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
pub fn exchange(
    conn: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    n: u32,
) -> Result<(), String> {
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

pub fn count(h: &TestHost) -> (u64, u64) {
    let out = h.cr(&["exec", "echo", "--", "cat", "/root/count"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

pub fn start_echo(lan: &Lan) -> String {
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

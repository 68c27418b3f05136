//! Checkpoint and restore of a container holding 10,000 established TCP
//! connections to a client outside it (this benchmark's own process, on the
//! host side of the container's bridge; 1 KiB the server has not read yet
//! queued in each) and 1,000 unix socket pairs with 4 KiB queued in each
//! direction. Prints the time of each object kind (the checkpoint's
//! `frozen_phases` from `--json`, PID 1's file timings from the restore's
//! `restore phases` line in supervisor.log) beside the totals and beside
//! the limit measured in the same run: taking and lifting the network lock
//! alone. After the restore, 200 of the connections are checked: the
//! server echoes the bytes queued at checkpoint.
//!
//! Run as root: `cargo bench --bench sockets`.

mod common;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cr_binary, Cleanup};

const BRIDGE: &str = "crbsock0";
const IP: &str = "10.249.78.2/24";
const ADDR: &str = "10.249.78.2:7000";
const CONNECTIONS: usize = 10_000;
const PAIRS: usize = 1_000;

/// Accepts CONNECTIONS connections and makes PAIRS socketpairs with data
/// queued both ways, then (once /root/go exists) echoes what it reads on
/// every connection.
const WORKLOAD: &str = r#"
import os, resource, selectors, socket, sys, time
conns, pairs = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7000))
l.listen(4096)
open("/root/listening", "w").write("1")
keep = []
for i in range(pairs):
    a, b = socket.socketpair()
    a.sendall(b"a" * 4096)
    b.sendall(b"b" * 4096)
    keep += [a, b]
accepted = []
while len(accepted) < conns:
    c, _ = l.accept()
    accepted.append(c)
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.05)
sel = selectors.EpollSelector()
for c in accepted:
    c.setblocking(False)
    sel.register(c, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        data = key.fileobj.recv(65536)
        if data:
            key.fileobj.sendall(data)
        else:
            sel.unregister(key.fileobj)
"#;

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a live struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_max as usize > CONNECTIONS + 2 * PAIRS + 100,
        "RLIMIT_NOFILE hard limit {} is too low for {CONNECTIONS} connections",
        lim.rlim_max
    );
}

fn wait_file(root: &std::path::Path, name: &str, file: &str, secs: u64) {
    let path = root.join(format!("containers/{name}/upper/root/{file}"));
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{name} did not write /root/{file}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `restore phases` line of the container's supervisor.log.
fn restore_phases(root: &std::path::Path, name: &str) -> String {
    let log = std::fs::read_to_string(root.join(format!("containers/{name}/supervisor.log")))
        .unwrap_or_default();
    log.lines()
        .rev()
        .find(|l| l.starts_with("restore phases"))
        .unwrap_or("(no restore phases line)")
        .to_string()
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    raise_nofile();
    let cr = cr_binary();
    let root = PathBuf::from(format!("/var/tmp/cr-bench-sockets-{}", std::process::id()));
    let host = Cleanup {
        cr: cr.clone(),
        root: root.clone(),
        bridge: Some(BRIDGE),
    };
    let run = |args: &[&str]| host.run(args);
    run(&[
        "image",
        "build-minimal",
        "py",
        "--with",
        "/usr/bin/python3",
        "--tree",
        "/usr/lib/python3.11",
    ]);

    // The limit: lock and unlock a fresh network namespace.
    let mut ns = Command::new("unshare")
        .args(["-n", "sleep", "60"])
        .spawn()
        .expect("unshare -n sleep");
    std::thread::sleep(Duration::from_millis(200));
    let rounds = 5;
    let t = Instant::now();
    for _ in 0..rounds {
        let lock = cr::netlock::NetLock::lock(ns.id() as i32).expect("locking");
        lock.unlock().expect("unlocking");
    }
    let lock_ms = t.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
    let _ = ns.kill();
    let _ = ns.wait();

    let name = "sockets";
    run(&[
        "run",
        name,
        "--image",
        "py",
        "--bridge",
        BRIDGE,
        "--ip",
        IP,
        "--",
        "/usr/bin/python3",
        "-c",
        WORKLOAD,
        &CONNECTIONS.to_string(),
        &PAIRS.to_string(),
    ]);
    wait_file(&root, name, "listening", 60);
    let addr: SocketAddr = ADDR.parse().expect("address");
    let t = Instant::now();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.write_all(&[b'0' + (i % 10) as u8; 1024])
            .expect("queueing 1 KiB");
        clients.push(c);
    }
    wait_file(&root, name, "ready", 120);
    println!(
        "{CONNECTIONS} connections opened in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Let the last segments be acknowledged.
    std::thread::sleep(Duration::from_millis(500));

    let image = root.join("image");
    let t = Instant::now();
    let out = run(&[
        "checkpoint",
        name,
        "--json",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1000.0;
    let summary: serde_json::Value = serde_json::from_str(&out).expect("summary json");
    let t = Instant::now();
    run(&["restore", name, "--image", image.to_str().expect("utf-8")]);
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;

    // The connections go on: the server echoes the queued bytes.
    run(&["exec", name, "--", "touch", "/root/go"]);
    for i in (0..CONNECTIONS).step_by(CONNECTIONS / 200) {
        let c = &mut clients[i];
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut echo = vec![0u8; 1024];
        c.read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("connection {i} after the restore: {e}"));
        assert!(
            echo.iter().all(|b| *b == b'0' + (i % 10) as u8),
            "connection {i}: the queued bytes came back changed"
        );
    }

    println!(
        "Sockets in a checkpoint: {CONNECTIONS} TCP connections to a client outside, {PAIRS} unix socket pairs (4 KiB queued each way)"
    );
    println!("  limit: network lock + unlock alone (iptables-restore x4)   {lock_ms:.1} ms");
    println!(
        "  checkpoint {checkpoint_ms:.0} ms (frozen {:.0} ms), restore {restore_ms:.0} ms",
        summary["frozen_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!("  frozen window by step and kind:");
    if let Some(phases) = summary["frozen_phases"].as_array() {
        for p in phases {
            let ms = p["ms"].as_f64().unwrap_or(0.0);
            let count = p["count"].as_u64().unwrap_or(0);
            let per = if count > 0 {
                format!("  ({:.1} us each)", ms * 1000.0 / count as f64)
            } else {
                String::new()
            };
            println!(
                "    {:40} x{count:<6} {ms:8.1} ms{per}",
                p["name"].as_str().unwrap_or("?")
            );
        }
    }
    println!("  restore: {}", restore_phases(&root, name));
    println!("  200 sampled connections echoed their queued bytes after the restore");
    drop(clients);
}

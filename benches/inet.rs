//! What TCP sockets add to a checkpoint's frozen window and to a restore:
//! a container holding 64 established loopback connections (128 sockets,
//! 16 KiB queued on each side of each) and a listener, against the same
//! program with no socket, and beside the limit measured in the same run:
//! taking and lifting the network lock alone (two `iptables-restore` runs
//! each way) in a fresh network namespace. Best of three rounds each.
//!
//! Run as root: `cargo bench --bench inet`.

mod common;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cr_binary, Cleanup};

const BRIDGE: &str = "crbinet0";

const WORKLOAD: &str = r#"
import os, socket, sys, time
n = int(sys.argv[1])
keep = []
if n:
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 7000))
    l.listen(128)
    keep.append(l)
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", 7000))
        a, _ = l.accept()
        c.sendall(b"x" * 16384)
        a.sendall(b"y" * 16384)
        keep += [c, a]
open("/root/ready", "w").write("1")
while True:
    time.sleep(1)
"#;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    let cr = cr_binary();
    let root = PathBuf::from(format!("/var/tmp/cr-bench-inet-{}", std::process::id()));
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
    let lock_secs = t.elapsed().as_secs_f64() / rounds as f64;
    let _ = ns.kill();
    let _ = ns.wait();

    let mut rows = Vec::new();
    for (name, conns, ip) in [
        ("plain", "0", "10.249.77.2/24"),
        ("sockets", "64", "10.249.77.3/24"),
    ] {
        run(&[
            "run",
            name,
            "--image",
            "py",
            "--bridge",
            BRIDGE,
            "--ip",
            ip,
            "--",
            "/usr/bin/python3",
            "-c",
            WORKLOAD,
            conns,
        ]);
        let ready = root.join(format!("containers/{name}/upper/root/ready"));
        let t = Instant::now();
        while !ready.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} did not get ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The machine is shared: the best of three rounds of checkpoint
        // (stopping the container) and restore.
        let (mut frozen, mut restore) = (f64::MAX, f64::MAX);
        for round in 0..3 {
            let image = root.join(format!("img-{name}-{round}"));
            let out = run(&[
                "checkpoint",
                name,
                "--json",
                "--image",
                image.to_str().expect("utf-8"),
            ]);
            let s: serde_json::Value = serde_json::from_str(&out).expect("summary json");
            frozen = frozen.min(s["frozen_ms"].as_f64().unwrap_or(f64::MAX) / 1000.0);
            let t = Instant::now();
            run(&["restore", name, "--image", image.to_str().expect("utf-8")]);
            restore = restore.min(t.elapsed().as_secs_f64());
        }
        rows.push((name, conns, frozen, restore));
    }
    println!("TCP sockets in a checkpoint (64 loopback connections = 128 sockets, 16 KiB queued each way, and a listener)");
    println!(
        "  limit: network lock + unlock alone (iptables-restore x4)   {:.1} ms",
        lock_secs * 1000.0
    );
    let base = rows[0];
    for (name, conns, frozen, restore) in &rows {
        println!(
            "  {name:8} ({conns:>2} connections): frozen {:.1} ms, restore {:.1} ms",
            frozen * 1000.0,
            restore * 1000.0
        );
    }
    let sockets = rows[1];
    let added = (sockets.2 - base.2) * 1000.0;
    println!(
        "  sockets add {added:.1} ms to the frozen window = {:.2} x the lock's own cost; restore +{:.1} ms",
        added / (lock_secs * 1000.0),
        (sockets.3 - base.3) * 1000.0
    );
}

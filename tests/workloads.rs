//! Real services in containers, checkpointed and restored while a client
//! outside the container keeps its connection open: redis-server with 100k
//! keys and a connected client, and a multi-threaded program with 1 GiB of
//! heap.

mod common;

use std::time::Duration;

use common::redis::{Redis, Reply};
use common::*;

const KEYS: usize = 100_000;

fn value(i: usize) -> String {
    format!("value-{}", i * 7919 % 1_000_003)
}

fn start_redis(h: &TestHost, name: &str) -> String {
    h.run(
        name,
        TestImage::Redis,
        Some(2),
        &[],
        &[
            "/usr/bin/redis-server",
            "--bind",
            "0.0.0.0",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    );
    let addr = h.net.addr(2);
    let up = wait_until(Duration::from_secs(15), || {
        Redis::connect(&addr).is_ok_and(|mut r| r.cmd(&["PING"]) == Reply::Status("PONG".into()))
    });
    assert!(up, "redis did not answer: {}", h.ok(&["logs", name]));
    addr
}

/// Loads KEYS keys with pipelined MSETs of 1000 keys each.
fn load(r: &mut Redis) {
    for batch in 0..KEYS / 1000 {
        let mut args = vec!["MSET".to_string()];
        for i in batch * 1000..(batch + 1) * 1000 {
            args.push(format!("key:{i}"));
            args.push(value(i));
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        r.send(&refs);
    }
    for _ in 0..KEYS / 1000 {
        assert_eq!(r.reply(), Reply::Status("OK".into()));
    }
}

fn check_data(r: &mut Redis, extra_keys: i64) {
    assert_eq!(r.cmd(&["DBSIZE"]), Reply::Int(KEYS as i64 + extra_keys));
    for i in [0, 1, 4242, KEYS / 2, KEYS - 1] {
        assert_eq!(r.get(&format!("key:{i}")), Some(value(i)), "key:{i}");
    }
}

#[test]
fn redis_with_100k_keys_keeps_its_data_and_its_connected_client() {
    let h = TestHost::new();
    let addr = start_redis(&h, "redis");
    let mut client = Redis::connect(&addr).expect("connecting to redis");
    load(&mut client);
    assert_eq!(
        client.cmd(&["SET", "session", "before"]),
        Reply::Status("OK".into())
    );
    check_data(&mut client, 1);

    h.ok(&["checkpoint", "redis"]);
    assert_eq!(h.state("redis"), "stopped");
    h.ok(&["restore", "redis"]);

    // The same connection, opened before the checkpoint, goes on.
    assert_eq!(client.get("session"), Some("before".into()));
    check_data(&mut client, 1);
    assert_eq!(
        client.cmd(&["SET", "session", "after"]),
        Reply::Status("OK".into())
    );
    assert_eq!(client.cmd(&["INCR", "counter"]), Reply::Int(1));
    // A new client sees the writes made after the restore.
    let mut other = Redis::connect(&addr).expect("connecting after restore");
    assert_eq!(other.get("session"), Some("after".into()));
    check_data(&mut other, 2);
}

#[test]
fn redis_left_running_after_a_checkpoint_serves_the_same_connection() {
    let h = TestHost::new();
    let addr = start_redis(&h, "redis");
    let mut client = Redis::connect(&addr).expect("connecting to redis");
    load(&mut client);
    h.ok(&["checkpoint", "redis", "--leave-running"]);
    assert_eq!(h.state("redis"), "running");
    check_data(&mut client, 0);
    assert_eq!(client.cmd(&["SET", "k", "v"]), Reply::Status("OK".into()));

    // The image taken while it kept running restores too (after a destroy),
    // with the data it had at the checkpoint.
    drop(client);
    h.ok(&["destroy", "redis"]);
    h.ok(&["restore", "redis"]);
    let mut again = Redis::connect(&addr).expect("connecting after restore");
    check_data(&mut again, 0);
}

/// A multi-threaded python holding 1 GiB of heap (every page marked with
/// its index) and a buffer per thread, each checksummed before the
/// checkpoint and checked by the program itself after the restore.
const BIG_HEAP: &str = r#"
import os, threading, time, zlib
PAGES = 1 << 18  # 1 GiB
heap = bytearray(os.urandom(1 << 20)) * 1024
for i in range(PAGES):
    heap[i * 4096:i * 4096 + 8] = i.to_bytes(8, "little")
crc = zlib.crc32(heap)
counts = [0] * 4
bufs = [bytearray(os.urandom(16 << 20)) for _ in range(4)]
crcs = [zlib.crc32(b) for b in bufs]
def work(k):
    while True:
        counts[k] += 1
        time.sleep(0.01)
threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
for t in threads:
    t.start()
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.05)
before = list(counts)
time.sleep(0.5)
bad = []
if zlib.crc32(heap) != crc:
    bad.append("heap checksum")
for i in range(0, PAGES, 4099):
    if int.from_bytes(heap[i * 4096:i * 4096 + 8], "little") != i:
        bad.append(f"page {i}")
        break
for k in range(4):
    if zlib.crc32(bufs[k]) != crcs[k]:
        bad.append(f"thread {k} buffer")
    if counts[k] <= before[k]:
        bad.append(f"thread {k} stopped")
open("/root/result", "w").write("FAIL: " + ", ".join(bad) if bad else "PASS")
time.sleep(3600)
"#;

#[test]
fn a_multithreaded_program_with_1_gib_of_heap_comes_back_checksummed() {
    let h = TestHost::new();
    h.run(
        "big",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", BIG_HEAP],
    );
    let ready = wait_until(Duration::from_secs(120), || {
        h.cr(&["exec", "big", "--", "test", "-e", "/root/ready"])
            .status
            .success()
    });
    assert!(ready, "not ready: {}", h.ok(&["logs", "big"]));
    h.ok(&["checkpoint", "big"]);
    assert_eq!(h.state("big"), "stopped");
    h.ok(&["restore", "big"]);
    h.exec("big", &["touch", "/root/go"]);
    let mut result = String::new();
    let done = wait_until(Duration::from_secs(60), || {
        result =
            String::from_utf8_lossy(&h.cr(&["exec", "big", "--", "cat", "/root/result"]).stdout)
                .into_owned();
        !result.is_empty()
    });
    assert!(done, "no result: {}", h.ok(&["logs", "big"]));
    assert_eq!(result.trim(), "PASS");
}

//! `cr migrate` between two test hosts: network namespaces `host1` and
//! `host2` (each with its own state root, cgroup parent, bridge and `cr
//! serve`) and a `client`, joined by a `lan` bridge in a fourth namespace,
//! as DESIGN.md draws them. The container keeps its IP and MAC; a client
//! on the lan keeps one TCP connection to it across every migration.
//! Failures injected on the destination (`CR_MIGRATE_FAULT`) and refused
//! peers each end with the container running on exactly one host, its
//! memory intact, and nothing left on the other.

mod common;

use std::io::BufReader;
use std::time::{Duration, Instant};

use common::lan::*;
use common::redis::{Redis, Reply};
use common::*;

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
        // The lazy fill freed the staging's pages as it copied them in.
        let freed = staging_freed(lan.host(to), "echo");
        assert!(freed > 0, "host{to}: nothing of the staging freed");
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

/// KiB of the page store the lazy fill of `name` on `h` freed as it copied
/// them in (its supervisor's log line), once the fill is done.
fn staging_freed(h: &TestHost, name: &str) -> u64 {
    let log = h.root.join("containers").join(name).join("supervisor.log");
    let mut line = None;
    wait_until(Duration::from_secs(10), || {
        line = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rfind(|l| l.starts_with("lazy pages:"))
            .map(str::to_string);
        line.is_some()
    });
    let line = line.unwrap_or_else(|| panic!("no lazy fill in {}", log.display()));
    line.split(" KiB of the page store freed")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no freed figure: {line}"))
}

/// The echo server runs on host1 with its memory intact, and the client's
/// connection exchanges line `n`.
fn still_on_host1(
    lan: &Lan,
    sum: u64,
    conn: &mut std::net::TcpStream,
    reader: &mut BufReader<std::net::TcpStream>,
    n: u32,
    what: &str,
) {
    assert_eq!(lan.h1.state("echo"), "running", "{what}");
    let (t0, s) = count(&lan.h1);
    assert_eq!(s, sum, "{what}");
    assert!(
        wait_until(Duration::from_secs(5), || count(&lan.h1).0 > t0),
        "the container does not run: {what}"
    );
    exchange(conn, reader, n).unwrap_or_else(|e| panic!("{what}: {e}"));
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
        n += 1;
        still_on_host1(
            &lan,
            sum,
            &mut conn,
            &mut reader,
            n,
            &format!("after {fault}: {err}"),
        );
        if fault == "crash" {
            // The agent died with the restored container frozen: its next
            // start removes it.
            assert_eq!(lan.h2.state("echo"), "frozen", "{}", lan.serve_log(2));
            lan.serve(2, None);
        }
        assert!(lan.names(2).is_empty(), "after {fault}: {:?}", lan.names(2));
        assert_eq!(lan.staging_mounts(2), 0, "after {fault}");
    }
    // A byte of a chunk flipped on the wire, after the source's checksums:
    // the destination refuses the stream (files, pages: checked on arrival),
    // and the container goes on here.
    lan.serve(2, None);
    for (fault, says) in [("corrupt-files", "checksum"), ("corrupt-pages", "checksum")] {
        let out = lan
            .h1
            .cr_cmd(&["migrate", "echo", "host2"])
            .env("CR_MIGRATE_FAULT", fault)
            .output()
            .expect("running cr migrate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fault}: {err}");
        assert!(
            err.contains("flipped the byte") && err.contains(says),
            "{fault}: {err}\n{}",
            lan.serve_log(2)
        );
        n += 1;
        still_on_host1(
            &lan,
            sum,
            &mut conn,
            &mut reader,
            n,
            &format!("after {fault}: {err}"),
        );
        assert!(
            wait_until(Duration::from_secs(10), || lan.names(2).is_empty()
                && lan.staging_mounts(2) == 0),
            "after {fault}: {:?}",
            lan.names(2)
        );
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
        let state = lan.host(to).state("redis");
        assert_eq!(
            state,
            "running",
            "redis on host{to} after the migration: {state}\nits log: {}\nstatus: {}\nhost{to}'s agent: {}",
            String::from_utf8_lossy(&lan.host(to).cr(&["logs", "redis"]).stdout),
            String::from_utf8_lossy(&lan.host(to).cr(&["status", "redis"]).stdout),
            lan.serve_log(to)
        );
        // The same connection: every key, and writes go on.
        assert_eq!(r.cmd(&["DBSIZE"]), Reply::Int(100_001 + i as i64));
        for k in [0, 4242, 99_999] {
            assert_eq!(r.get(&format!("key:{k}")), Some(format!("value:{k}")));
        }
        assert_eq!(r.cmd(&["INCR", "moves"]), Reply::Int(i as i64 + 1));
    }
    assert_eq!(r.get("session"), Some("before".into()));
}

fn count_of(h: &common::TestHost, name: &str) -> (u64, u64) {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Two migrations at once, in opposite directions between the same two
/// hosts: each container arrives whole, with its own address, MAC and
/// client connection, and neither migration disturbs the other.
#[test]
fn two_migrations_at_once_in_opposite_directions_do_not_interfere() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let a = start_echo(&lan);
    lan.h1.run(
        "echo2",
        common::TestImage::Python,
        Some(11),
        &["--mac", "02:00:00:aa:bb:78", "--memory", "256M"],
        &["/usr/bin/python3", "-c", ECHO],
    );
    let b = lan.h1.net.addr(11);
    assert!(
        common::wait_until(Duration::from_secs(20), || count_of(&lan.h1, "echo2").0 > 0),
        "echo2 did not start"
    );
    lan.h1.ok(&["migrate", "echo2", "host2"]);
    let open = |addr: &str| {
        let conn = lan.connect(&format!("{addr}:7000"));
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let reader = BufReader::new(conn.try_clone().expect("clone"));
        (conn, reader)
    };
    let (mut ca, mut ra) = open(&a);
    let (mut cb, mut rb) = open(&b);
    exchange(&mut ca, &mut ra, 1).expect("echo before");
    exchange(&mut cb, &mut rb, 1).expect("echo2 before");
    let sum_a = count_of(&lan.h1, "echo").1;
    let sum_b = count_of(&lan.h2, "echo2").1;
    let (h1, h2) = (&lan.h1, &lan.h2);
    let (ra_out, rb_out) = std::thread::scope(|s| {
        let one = s.spawn(|| h1.cr(&["migrate", "echo", "host2"]));
        let two = s.spawn(|| h2.cr(&["migrate", "echo2", "host1"]));
        (
            one.join().expect("migrate echo"),
            two.join().expect("migrate echo2"),
        )
    });
    for (what, out) in [("echo", &ra_out), ("echo2", &rb_out)] {
        assert!(
            out.status.success(),
            "migrating {what}: {}\nhost1: {}\nhost2: {}",
            String::from_utf8_lossy(&out.stderr),
            lan.serve_log(1),
            lan.serve_log(2)
        );
    }
    assert_eq!(lan.names(1), vec!["echo2".to_string()]);
    assert_eq!(lan.names(2), vec!["echo".to_string()]);
    for n in 2..6 {
        exchange(&mut ca, &mut ra, n).expect("echo after");
        exchange(&mut cb, &mut rb, n).expect("echo2 after");
    }
    assert_eq!(count_of(&lan.h2, "echo").1, sum_a, "echo's memory changed");
    assert_eq!(
        count_of(&lan.h1, "echo2").1,
        sum_b,
        "echo2's memory changed"
    );
    assert_eq!(lan.staging_mounts(1) + lan.staging_mounts(2), 0);
}

/// The destination lacks the container's image: it comes along by
/// content digest, is checked there, and is not sent again on the way
/// back; an image of the same name with other contents is refused.
#[test]
fn the_image_layer_goes_along_only_when_the_peer_lacks_it() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    lan.h1.run(
        "echo",
        common::TestImage::Python,
        Some(10),
        &["--mac", "02:00:00:aa:bb:77", "--memory", "256M"],
        &["/usr/bin/python3", "-c", ECHO],
    );
    assert!(
        common::wait_until(Duration::from_secs(20), || count(&lan.h1).0 > 0),
        "the echo server did not start"
    );
    let image = common::TestImage::Python.name();
    assert!(!lan.h2.root.join("images").join(image).exists());
    let phases = |out: &str| -> Vec<String> {
        let report: serde_json::Value = serde_json::from_str(out).expect("report json");
        report["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .filter_map(|p| p[0].as_str().map(str::to_string))
            .collect()
    };
    let there = lan.h1.ok(&["migrate", "echo", "host2", "--json"]);
    assert!(
        phases(&there).contains(&"image layer".to_string()),
        "{there}"
    );
    assert_eq!(lan.h2.state("echo"), "running");
    let listed = lan.h2.ok(&["image", "list"]);
    assert!(listed.contains(image), "{listed}");
    let back = lan.h2.ok(&["migrate", "echo", "host1", "--json"]);
    assert!(
        !phases(&back).contains(&"image layer".to_string()),
        "{back}"
    );
    assert_eq!(lan.h1.state("echo"), "running");

    // host2's image of that name now differs: refused, naming both digests.
    let rootfs = lan.h2.root.join("images").join(image).join("rootfs");
    std::fs::write(rootfs.join("etc/changed"), "x").expect("changing the image");
    let _ = std::fs::remove_file(lan.h2.root.join("images").join(image).join("digest"));
    let err = lan.h1.fails(&["migrate", "echo", "host2"]);
    assert!(
        err.contains("a different image under the same name")
            && err.matches("sha256:").count() >= 2,
        "{err}"
    );
    assert_eq!(lan.h1.state("echo"), "running");
    assert!(lan.names(2).is_empty());
}

/// `GET /file` over HTTP/1.0 from the client namespace: the body.
fn http_get(lan: &Lan, addr: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut conn = lan.try_connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /file HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("a reply without headers"))?;
    if !reply.starts_with(b"HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "{}",
            String::from_utf8_lossy(&reply[..split])
        )));
    }
    Ok(reply[split + 4..].to_vec())
}

/// Python's http.server moves there and back; a client on the lan gets
/// the same file from the same address before and after each move, from
/// the same server process.
#[test]
fn a_python_http_server_moves_there_and_back_and_serves_the_same_file() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    lan.h2.with_image(common::TestImage::Python);
    lan.h1.run(
        "web",
        common::TestImage::Python,
        Some(10),
        &["--mac", "02:00:00:aa:bb:78"],
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /srv && head -c 300000 /dev/urandom > /srv/file && cd /srv && exec /usr/bin/python3 -m http.server 8000",
        ],
    );
    let addr = format!("{}:8000", lan.h1.net.addr(10));
    assert!(
        wait_until(Duration::from_secs(20), || http_get(&lan, &addr).is_ok()),
        "the http server does not answer: {}",
        lan.h1.ok(&["logs", "web"])
    );
    let file = http_get(&lan, &addr).expect("GET before");
    assert_eq!(file.len(), 300000);
    for (from, to, peer) in [(1, 2, "host2"), (2, 1, "host1")] {
        // The first move keeps the image sent as a checkpoint on host1.
        let keep = if from == 1 {
            "--keep-image"
        } else {
            "--compress=never"
        };
        lan.host(from).ok(&["migrate", "web", peer, keep]);
        assert_eq!(lan.host(to).state("web"), "running");
        let got =
            http_get(&lan, &addr).unwrap_or_else(|e| panic!("GET after the move to {peer}: {e}"));
        assert!(got == file, "the file served on {peer} differs");
        assert!(lan
            .host(to)
            .exec("web", &["cat", "/proc/1/cmdline"])
            .contains("http.server"));
        assert!(lan.names(from).is_empty());
    }
    // The kept image is a checkpoint host1 can restore: the same server
    // with the same file (and nothing half-written beside it).
    let kept = lan.h1.ok(&["checkpoint", "list", "web"]);
    assert_eq!(
        kept.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{kept}"
    );
    lan.h1.ok(&["stop", "web"]);
    lan.h1.ok(&["restore", "web"]);
    let got = http_get(&lan, &addr).expect("GET after restoring the kept image");
    assert!(got == file, "the restored kept image serves another file");
}

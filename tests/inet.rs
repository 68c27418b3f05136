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

#[test]
fn leave_running_keeps_connections_working() {
    let h = TestHost::new();
    let mut client = server_with_client(&h, "live", 11, &[]);
    let sent: usize = wait_file(&h, "live", "/root/sent", 20)
        .trim()
        .parse()
        .unwrap();
    let _ = wait_file(&h, "live", "/root/ready", 20);
    h.ok(&["checkpoint", "live", "--leave-running"]);
    assert_eq!(h.state("live"), "running");
    assert_eq!(
        lock_rules(&h, "live"),
        "",
        "the checkpoint left the network locked"
    );
    finish_conversation(&h, "live", &mut client, sent);
}

/// A small tmpfs the image does not fit in; unmounted when dropped.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn new() -> TinyFs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "cr-test-tiny"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(ok.success(), "mounting a tmpfs");
        TinyFs(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_failed_checkpoint_unlocks_the_network_and_connections_go_on() {
    let h = TestHost::new();
    let mut client = server_with_client(&h, "full", 12, &[]);
    let sent: usize = wait_file(&h, "full", "/root/sent", 20)
        .trim()
        .parse()
        .unwrap();
    let _ = wait_file(&h, "full", "/root/ready", 20);
    // The page store does not fit: the checkpoint fails after the freeze,
    // with the network locked and the connection in repair mode.
    let tiny = TinyFs::new();
    let image = tiny.0.path().join("image");
    // No pre-copy: the page store must fill up after the freeze.
    let err = h.fails(&[
        "checkpoint",
        "full",
        "--no-pre-copy",
        "--image",
        image.to_str().unwrap(),
    ]);
    assert!(err.contains("checkpoint image"), "{err}");
    assert_eq!(h.state("full"), "running");
    assert_eq!(
        lock_rules(&h, "full"),
        "",
        "the failed checkpoint left the network locked"
    );
    finish_conversation(&h, "full", &mut client, sent);
}

/// Copies the image in `from` to `to` with every TCP connection's local
/// address changed to one the container does not have.
fn break_connections(from: &std::path::Path, to: &std::path::Path) {
    use cr_formats::schema::{FileKind, InetState, Record};
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "records.img" {
            // Files and directories (mounts/ holds the tmpfs archives).
            let cp = std::process::Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(to.join(entry.file_name()))
                .status()
                .unwrap();
            assert!(cp.success(), "copying {}", entry.path().display());
        }
    }
    let image = cr_formats::read_records(std::fs::File::open(from.join("records.img")).unwrap())
        .expect("reading the image");
    let out = std::fs::File::create(to.join("records.img")).unwrap();
    let mut w = cr_formats::RecordWriter::new(out, &image.manifest).unwrap();
    let mut broken = 0;
    for entry in image.entries {
        let mut record = entry.record;
        if let Record::Manifest(_) = record {
            continue;
        }
        if let Record::File(f) = &mut record {
            if let FileKind::Inet(s) = &mut f.kind {
                if let (InetState::Established(_), Some(local)) = (&s.state, &mut s.local) {
                    local.set_ip("10.255.255.254".parse().unwrap());
                    broken += 1;
                }
            }
        }
        w.write(&record).unwrap();
    }
    w.finish().unwrap();
    assert!(broken > 0, "the image holds no TCP connection");
}

#[test]
fn a_failed_restore_leaves_nothing_and_the_connection_comes_back_later() {
    let h = TestHost::new();
    let mut client = server_with_client(&h, "again", 13, &[]);
    let sent: usize = wait_file(&h, "again", "/root/sent", 20)
        .trim()
        .parse()
        .unwrap();
    let _ = wait_file(&h, "again", "/root/ready", 20);
    let good = h.root.join("good-image");
    let bad = h.root.join("bad-image");
    h.ok(&["checkpoint", "again", "--image", good.to_str().unwrap()]);
    break_connections(&good, &bad);
    let err = h.fails(&["restore", "again", "--image", bad.to_str().unwrap()]);
    assert!(err.contains("10.255.255.254"), "{err}");
    assert_eq!(h.state("again"), "stopped");
    assert!(
        h.container_cgroups("again")
            .iter()
            .all(|c| !c.join("cgroup.procs").exists()
                || std::fs::read_to_string(c.join("cgroup.procs"))
                    .unwrap_or_default()
                    .is_empty()),
        "the failed restore left processes behind"
    );
    // The peer saw no reset: the good image brings the conversation back.
    h.ok(&["restore", "again", "--image", good.to_str().unwrap()]);
    assert_eq!(lock_rules(&h, "again"), "");
    finish_conversation(&h, "again", &mut client, sent);
}

#[test]
fn sockets_cr_cannot_move_are_refused_before_the_freeze() {
    let h = TestHost::new();
    // A connection waiting in a listener's accept queue.
    h.run(
        "backlog",
        TestImage::Python,
        Some(14),
        &[],
        &[
            "/usr/bin/python3",
            "-c",
            "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 7000))\ns.listen(4)\nopen('/root/listening', 'w').write('1')\ntime.sleep(3600)",
        ],
    );
    wait_file(&h, "backlog", "/root/listening", 20);
    let addr: SocketAddr = format!("{}:7000", h.net.addr(14)).parse().unwrap();
    let _waiting = Client::connect(addr);
    let err = h.fails(&["checkpoint", "backlog"]);
    assert!(
        err.contains("waiting to be accepted") && err.contains("not frozen"),
        "{err}"
    );
    assert_eq!(h.state("backlog"), "running");
    assert!(h.ok(&["checkpoint", "list", "backlog"]).trim().is_empty());
}

const HALF: &str = include_str!("programs/inet_half.py");

/// Reads until EOF; an error (a reset) fails the test.
#[track_caller]
fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("reading to EOF after {} bytes: {e}", got.len()));
    got
}

/// Runs tests/programs/inet_half.py with two clients outside: A sends
/// "request" and shuts its side, B reads "hello" and the server's EOF and
/// sends "upload-1". Returns (A, B) once the server is ready.
fn half_closed(h: &TestHost, name: &str, ip: u8) -> (TcpStream, TcpStream) {
    h.run(
        name,
        TestImage::Python,
        Some(ip),
        &[],
        &["/usr/bin/python3", "-c", HALF],
    );
    wait_file(h, name, "/root/listening", 20);
    let addr: SocketAddr = format!("{}:7000", h.net.addr(ip)).parse().unwrap();
    let mut a = Client::connect(addr).stream;
    a.write_all(b"request").unwrap();
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = Client::connect(addr).stream;
    let mut hello = Vec::new();
    b.read_to_end(&mut hello)
        .expect("B reads the server's bytes and EOF");
    assert_eq!(hello, b"hello");
    b.write_all(b"upload-1").unwrap();
    let _ = wait_file(h, name, "/root/ready", 20);
    (a, b)
}

#[test]
fn half_closed_connections_survive_checkpoint_and_restore() {
    let h = TestHost::new();
    let (mut a, mut b) = half_closed(&h, "half", 15);
    let summary: serde_json::Value =
        serde_json::from_str(&h.ok(&["checkpoint", "half", "--json"])).expect("json");
    let shown = h.ok(&["inspect", summary["image"].as_str().expect("image")]);
    assert_eq!(
        shown
            .matches("half-closed (CLOSE_WAIT: the peer sent its FIN")
            .count(),
        2,
        "{shown}"
    );
    assert_eq!(
        shown
            .matches("half-closed (FIN_WAIT2: this side sent its FIN")
            .count(),
        2,
        "{shown}"
    );
    h.ok(&["restore", "half"]);
    assert_eq!(
        lock_rules(&h, "half"),
        "",
        "the restore left the network locked"
    );
    h.exec("half", &["touch", "/root/go"]);
    // A: the server's bytes, then its EOF; no reset.
    assert_eq!(read_to_eof(&mut a), b"part1part2");
    // B: the direction still open takes more, then this side closes.
    b.write_all(b"upload-2").expect("B sends after the restore");
    b.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut b), b"", "B's EOF is still there");
    assert_eq!(wait_file(&h, "half", "/root/result", 30).trim(), "PASS");
}

#[test]
fn the_half_closed_checks_fail_without_a_checkpoint() {
    // Sending on B's closed side is caught, as is a missing EOF: the
    // program's checks run against a live connection where B never closes.
    let h = TestHost::new();
    let (mut a, _b) = half_closed(&h, "half-bad", 16);
    h.exec("half-bad", &["touch", "/root/go"]);
    assert_eq!(read_to_eof(&mut a), b"part1part2");
    // B never sends upload-2 nor closes: the server's read of B times out.
    let r = wait_file(&h, "half-bad", "/root/result", 60);
    assert!(r.starts_with("FAIL: socket error"), "{r}");
}

/// `GET path` over HTTP/1.0: the body, after checking the status line.
fn http_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut client = Client::connect(addr);
    client
        .stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .expect("sending the request");
    let mut reply = Vec::new();
    client
        .stream
        .read_to_end(&mut reply)
        .expect("reading the reply");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a reply with headers");
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    reply[split + 4..].to_vec()
}

#[test]
fn an_http_server_serves_the_same_file_after_restore() {
    let h = TestHost::new();
    h.run(
        "web",
        TestImage::Python,
        Some(16),
        &[],
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /srv && head -c 300000 /dev/urandom > /srv/file && cd /srv && exec /usr/bin/python3 -m http.server 8000",
        ],
    );
    let addr: SocketAddr = format!("{}:8000", h.net.addr(16)).parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect_timeout(
            &addr,
            Duration::from_secs(1)
        )
        .is_ok()),
        "the http server does not answer: {}",
        h.ok(&["logs", "web"])
    );
    let before = http_get(addr, "/file");
    assert_eq!(before.len(), 300000);
    h.ok(&["checkpoint", "web"]);
    assert_eq!(h.state("web"), "stopped");
    h.ok(&["restore", "web"]);
    let after = http_get(addr, "/file");
    assert!(after == before, "the file served after the restore differs");
    // The same server process, not a new one: PID 1 is still python.
    assert!(h
        .exec("web", &["cat", "/proc/1/cmdline"])
        .contains("http.server"));
}

const BUSY: &str = r#"
import socket, threading
def serve(c):
    with c:
        f = c.makefile("rwb", buffering=0)
        for line in f:
            f.write(b"echo " + line)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(64)
open("/root/listening", "w").write("1")
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A busy server: a client outside opens a new connection every few
/// milliseconds while the container is checkpointed and restored, so
/// handshakes keep arriving at the freeze. The network is locked before
/// the freeze and the queue drained, so every checkpoint is taken and no
/// connection of the client fails (those that meet the lock are only
/// delayed: their SYN is sent again).
#[test]
fn a_listener_taking_new_connections_all_the_time_is_checkpointed() {
    let h = TestHost::new();
    h.run(
        "busy",
        TestImage::Python,
        Some(15),
        &[],
        &["/usr/bin/python3", "-c", BUSY],
    );
    wait_file(&h, "busy", "/root/listening", 20);
    let addr: SocketAddr = format!("{}:7000", h.net.addr(15)).parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut errors) = (0u32, Vec::new());
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let one = (|| -> std::io::Result<()> {
                    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
                    c.set_read_timeout(Some(Duration::from_secs(20)))?;
                    c.write_all(format!("{n}\n").as_bytes())?;
                    let want = format!("echo {n}\n");
                    let mut got = vec![0u8; want.len()];
                    c.read_exact(&mut got)?;
                    if got != want.as_bytes() {
                        return Err(std::io::Error::other(format!("got {got:?}")));
                    }
                    Ok(())
                })();
                match one {
                    Ok(()) => ok += 1,
                    Err(e) => errors.push(format!("connection {n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            (ok, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        let out = h.cr(&["checkpoint", "busy"]);
        assert!(
            out.status.success(),
            "checkpoint {round} of a busy listener failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.ok(&["restore", "busy"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors) = client.join().expect("client thread");
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    assert!(ok > 50, "only {ok} connections were served");
    assert_eq!(lock_rules(&h, "busy"), "");
}

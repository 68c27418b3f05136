//! Unix domain sockets across a real `cr checkpoint` + `cr restore`, checked
//! by python programs inside the container (zdtm style: the program sets
//! the state up, writes a ready marker, waits for a go marker, checks,
//! writes PASS or FAIL: <what>), and the refusals before the freeze.

mod common;

use std::time::Duration;

use common::*;

const PAIRS: &str = include_str!("programs/unix_pairs.py");
const NAMED: &str = include_str!("programs/unix_named.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checkpoints and restores `name`, says go, and returns its result.
fn round_trip(h: &TestHost, name: &str) -> String {
    h.ok(&["checkpoint", name]);
    assert_eq!(h.state(name), "stopped");
    h.ok(&["restore", name]);
    h.exec(name, &["touch", "/root/go"]);
    assert!(
        wait_until(Duration::from_secs(20), || !file_in(
            h,
            name,
            "/root/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", name])
    );
    file_in(h, name, "/root/result").trim().to_string()
}

#[test]
fn socketpairs_shared_by_parent_and_child_keep_their_queues() {
    let h = TestHost::new();
    h.run_python_until("pairs", PAIRS, "/root/ready");
    assert_eq!(round_trip(&h, "pairs"), "PASS");
}

#[test]
fn the_pair_checks_fail_when_the_queues_are_not_there() {
    // Without the data queued before the checkpoint, the program's checks
    // fail: they can tell.
    let h = TestHost::new();
    let broken = PAIRS.replace(
        "s1.sendall(b\"parent->child:\" + big)",
        "s1.sendall(b\"parent->child:\" + big[:-1] + b\"?\")",
    );
    assert_ne!(broken, PAIRS);
    h.run_python_until("badpairs", &broken, "/root/ready");
    h.exec("badpairs", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(20), || !file_in(
        &h,
        "badpairs",
        "/root/result"
    )
    .is_empty()));
    assert!(
        file_in(&h, "badpairs", "/root/result").starts_with("FAIL: child"),
        "{}",
        file_in(&h, "badpairs", "/root/result")
    );
}

#[test]
fn named_and_listening_sockets_come_back() {
    let h = TestHost::new();
    h.run_python_until("named", NAMED, "/root/ready");
    assert_eq!(round_trip(&h, "named"), "PASS");
    // A client from outside the program connects to the restored
    // listener bound by path.
    let out = h.exec(
        "named",
        &[
            "/usr/bin/python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/root/srv.sock'); s.sendall(b'ping'); print(s.recv(100).decode())",
        ],
    );
    assert_eq!(out.trim(), "pong:ping");
}

const SCM_RIGHTS: &str = r#"
import os, socket, time
a, b = socket.socketpair()
r, w = os.pipe()
socket.send_fds(a, [b"with an fd"], [r])
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)
msg, fds, _, _ = socket.recv_fds(b, 100, 4)
open("/root/result", "w").write("PASS" if msg == b"with an fd" and len(fds) == 1 else "FAIL")
time.sleep(1000)
"#;

#[test]
fn descriptors_in_flight_are_refused_before_the_freeze() {
    let h = TestHost::new();
    h.run_python_until("inflight", SCM_RIGHTS, "/root/ready");
    let err = h.fails(&["checkpoint", "inflight"]);
    assert!(
        err.contains("SCM_RIGHTS") && err.contains("fd 4") && err.contains("was not frozen"),
        "{err}"
    );
    assert_eq!(h.state("inflight"), "running");
    h.exec("inflight", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(10), || file_in(
        &h,
        "inflight",
        "/root/result"
    ) == "PASS"));
}

const OUTSIDE: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX)
s.connect("\0cr-test-host-daemon")
s.sendall(b"hello host")
pending = socket.socket(socket.AF_UNIX)
pending.connect("\0cr-test-host-backlog")
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)
open("/root/result", "w").write("PASS" if pending.getpeername() == b"\0cr-test-host-backlog" else "FAIL")
time.sleep(1000)
"#;

#[test]
fn a_peer_outside_the_container_is_refused_before_the_freeze() {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let h = TestHost::new();
    // A "host daemon": a listener in the container's network namespace
    // (abstract names are per namespace) that is no process of the
    // container. The container is started with a PID 1 that waits for it.
    h.run(
        "outside",
        TestImage::Python,
        None,
        &[],
        &[
            "/usr/bin/python3",
            "-c",
            &format!(
                "import os, time\nwhile not os.path.exists('/root/daemon'):\n    time.sleep(0.02)\nexec({OUTSIDE:?})"
            ),
        ],
    );
    let pid = h.status_json("outside")["pid"]
        .as_i64()
        .expect("the container's PID 1") as i32;
    let listener = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("its netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let addr = SocketAddr::from_abstract_name(b"cr-test-host-daemon").expect("address");
        let backlog = SocketAddr::from_abstract_name(b"cr-test-host-backlog").expect("address");
        (
            UnixListener::bind_addr(&addr).expect("binding the host daemon"),
            UnixListener::bind_addr(&backlog).expect("binding the host's second listener"),
        )
    })
    .join()
    .expect("listener thread");
    let (listener, never_accepts) = listener;
    h.exec("outside", &["touch", "/root/daemon"]);
    let (mut conn, _) = listener.accept().expect("the container connects");
    let mut hello = [0u8; 10];
    conn.read_exact(&mut hello).expect("hello");
    assert_eq!(&hello, b"hello host");
    assert!(wait_until(Duration::from_secs(10), || file_in(
        &h,
        "outside",
        "/root/ready"
    ) == "1"));
    let err = h.fails(&["checkpoint", "outside"]);
    assert!(
        err.contains("outside the container")
            && err.contains("fd 3")
            && err.contains("was not frozen"),
        "{err}"
    );
    assert_eq!(h.state("outside"), "running");
    // Once the first connection is gone (the daemon closes it; a closed
    // peer is fine), the one waiting in the backlog of a listener that is
    // no process of the container is refused in its turn.
    drop(conn);
    let err = h.fails(&["checkpoint", "outside"]);
    assert!(
        err.contains("backlog of socket:[")
            && err.contains("@cr-test-host-backlog, which is outside the container")
            && err.contains("fd 4")
            && err.contains("was not frozen"),
        "{err}"
    );
    assert_eq!(h.state("outside"), "running");
    h.exec("outside", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(10), || file_in(
        &h,
        "outside",
        "/root/result"
    ) == "PASS"));
    drop(never_accepts);
}

const SENT_BEFORE_ACCEPT: &str = r#"
import os, socket, time
l = socket.socket(socket.AF_UNIX)
l.bind("/root/l.sock")
l.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect("/root/l.sock")
c.sendall(b"too early")
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)
conn, _ = l.accept()
open("/root/result", "w").write("PASS" if conn.recv(100) == b"too early" else "FAIL")
time.sleep(1000)
"#;

#[test]
fn data_sent_on_a_connection_not_accepted_yet_is_refused_before_the_freeze() {
    let h = TestHost::new();
    h.run_python_until("early", SENT_BEFORE_ACCEPT, "/root/ready");
    let err = h.fails(&["checkpoint", "early"]);
    assert!(
        err.contains("backlog")
            && err.contains("data already sent")
            && err.contains("fd 4")
            && err.contains("was not frozen"),
        "{err}"
    );
    assert_eq!(h.state("early"), "running");
    h.exec("early", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(10), || file_in(
        &h,
        "early",
        "/root/result"
    ) == "PASS"));
}

const ASYNCIO: &str = r#"
import asyncio, threading
async def handle(reader, writer):
    data = await reader.read(100)
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    # Another thread wakes the loop through its self-pipe (a socketpair).
    threading.Thread(target=lambda: loop.call_soon_threadsafe(woken.set_result, b"+woken")).start()
    extra = await asyncio.wait_for(woken, 5)
    writer.write(b"async:" + data + extra)
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_unix_server(handle, "/root/async.sock")
    open("/root/ready", "w").write("1")
    await server.serve_forever()
asyncio.run(main())
"#;

#[test]
fn an_asyncio_loop_idle_in_epoll_serves_after_restore() {
    // asyncio's self-pipe is a socketpair and its listener a unix socket
    // bound by path, both registered in an epoll set; the loop sleeps in
    // epoll_wait at checkpoint.
    let h = TestHost::new();
    h.run_python_until("aio", ASYNCIO, "/root/ready");
    h.ok(&["checkpoint", "aio"]);
    h.ok(&["restore", "aio"]);
    let out = h.exec(
        "aio",
        &[
            "/usr/bin/python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/root/async.sock'); s.sendall(b'hi'); print(s.recv(100).decode())",
        ],
    );
    assert_eq!(out.trim(), "async:hi+woken");
}

const LIB: &str = include_str!("programs/zdtm_lib.py");
const PEERCRED: &str = include_str!("programs/unix_peercred.py");

/// Says go and returns the results of the peercred program's processes.
fn peercred_results(h: &TestHost, name: &str) -> Vec<String> {
    h.exec(name, &["touch", "/crtest/go"]);
    ["K", "S", "C"]
        .iter()
        .map(|p| {
            let path = format!("/crtest/result-{p}");
            assert!(
                wait_until(Duration::from_secs(20), || !file_in(h, name, &path)
                    .is_empty()),
                "no {path}; console: {}",
                h.ok(&["logs", name])
            );
            format!("{p}: {}", file_in(h, name, &path).trim())
        })
        .collect()
}

#[test]
fn peer_credentials_name_the_checkpointed_peers_after_restore() {
    let h = TestHost::new();
    h.run_python_until("peercred", &format!("{LIB}\n{PEERCRED}"), "/crtest/ready");
    h.ok(&["checkpoint", "peercred"]);
    h.ok(&["restore", "peercred"]);
    assert_eq!(
        peercred_results(&h, "peercred"),
        ["K: PASS", "S: PASS", "C: PASS"]
    );
}

#[test]
fn the_peer_credential_checks_can_fail() {
    // Expecting another uid for K's pair is caught.
    let h = TestHost::new();
    let body = PEERCRED.replace(
        "me = (os.getpid(), 1000, 2000)",
        "me = (os.getpid(), 1000, 2001)",
    );
    assert_ne!(body, PEERCRED);
    h.run_python_until("peercred-bad", &format!("{LIB}\n{body}"), "/crtest/ready");
    let r = peercred_results(&h, "peercred-bad");
    assert!(r[0].starts_with("K: FAIL: K pair a before"), "{r:?}");
    assert_eq!(r[1..], ["S: PASS", "C: PASS"]);
}

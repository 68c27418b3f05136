//! Faults on the source side of `cr migrate` and on the link, between the
//! two test hosts of `tests/common/lan.rs`: the source process killed in
//! the transfer and in the in-doubt window (after `Resume`), Ctrl-C, and
//! host1's lan link going down in the middle of a transfer. Each run ends
//! with the container running on exactly one host, its memory intact, a
//! client's TCP connection to it still exchanging lines, and no staging
//! mount or migration record left on either host.

mod common;

use std::io::BufReader;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lan::*;
use common::*;

/// The echo server with `mib` MiB of random memory, so that a transfer
/// takes long enough to be cut in the middle.
fn start_big_echo(lan: &Lan, mib: u32) -> String {
    let ip = lan.h1.net.addr(10);
    lan.h2.with_image(TestImage::Python);
    let program = ECHO.replace("32 << 20", &format!("{mib} << 20"));
    assert!(
        program.contains(&format!("os.urandom({mib} << 20)")),
        "the echo program changed: fix the fixture"
    );
    lan.h1.run(
        "echo",
        TestImage::Python,
        Some(10),
        &["--mac", "02:00:00:aa:bb:77", "--memory", "1G"],
        &["/usr/bin/python3", "-c", &program],
    );
    assert!(
        wait_until(Duration::from_secs(30), || count(&lan.h1).0 > 0),
        "the echo server did not start: {}",
        lan.h1.ok(&["logs", "echo"])
    );
    ip
}

struct Client {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
    n: u32,
}

impl Client {
    fn new(lan: &Lan, addr: &str) -> Client {
        let conn = lan.connect(&format!("{addr}:7000"));
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut c = Client { conn, reader, n: 0 };
        c.exchange("before the fault");
        c
    }

    fn exchange(&mut self, when: &str) {
        self.n += 1;
        exchange(&mut self.conn, &mut self.reader, self.n)
            .unwrap_or_else(|e| panic!("{when}: {e}"));
    }

    fn exchange_or(&mut self, when: &str, logs: impl Fn() -> String) {
        self.n += 1;
        exchange(&mut self.conn, &mut self.reader, self.n)
            .unwrap_or_else(|e| panic!("{when}: {e}\n{}", logs()));
    }
}

fn records(lan: &Lan, i: usize) -> Vec<String> {
    std::fs::read_dir(lan.host(i).root.join("migrations"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// The container runs on host `on` only, with memory checksum `sum` and
/// its counter advancing, the client still talks to it, and neither host
/// keeps a staging mount or a record (the destination within its idle
/// timeout).
fn assert_settled(lan: &Lan, client: &mut Client, on: usize, sum: u64, what: &str) {
    let other = 3 - on;
    let logs = || format!("serve1: {}\nserve2: {}", lan.serve_log(1), lan.serve_log(2));
    assert!(
        wait_until(Duration::from_secs(10), || lan.host(on).state("echo")
            == "running"),
        "{what}: echo is {} on host{on}\n{}",
        lan.host(on).state("echo"),
        logs()
    );
    let (t0, s) = count(lan.host(on));
    assert_eq!(s, sum, "{what}: the memory changed");
    assert!(
        wait_until(Duration::from_secs(5), || count(lan.host(on)).0 > t0),
        "{what}: the container does not run on host{on}"
    );
    client.exchange_or(what, logs);
    assert!(
        wait_until(Duration::from_secs(25), || lan.names(other).is_empty()
            && lan.staging_mounts(other) == 0
            && records(lan, other).is_empty()),
        "{what}: left on host{other}: {:?}, {} staging mounts, records {:?}\n{}",
        lan.names(other),
        lan.staging_mounts(other),
        records(lan, other),
        logs()
    );
    assert!(
        // A destination waits for Confirm until its idle timeout (15 s).
        wait_until(Duration::from_secs(20), || lan.staging_mounts(on) == 0
            && records(lan, on).is_empty()),
        "{what}: on host{on}: {} staging mounts, records {:?}\n{}",
        lan.staging_mounts(on),
        records(lan, on),
        logs()
    );
    assert_eq!(lan.names(on), vec!["echo".to_string()], "{what}");
}

fn migrate_with_fault(lan: &Lan, fault: &str) -> String {
    let out = lan
        .h1
        .cr_cmd(&["migrate", "echo", "host2"])
        .env("CR_MIGRATE_FAULT", fault)
        .output()
        .expect("running cr migrate");
    assert_eq!(out.status.code(), Some(70), "{fault}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_source_killed_in_the_transfer_is_thawed_by_its_agent_with_its_connections() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let addr = start_big_echo(&lan, 256);
    let mut client = Client::new(&lan, &addr);
    let (_, sum) = count(&lan.h1);
    let t = Instant::now();
    let err = migrate_with_fault(&lan, "source-transfer");
    assert!(err.contains("source-transfer"), "{err}");
    // host1's agent notices the dead process by itself.
    assert!(
        wait_until(Duration::from_secs(3), || records(&lan, 1).is_empty()),
        "not recovered by the agent: {}",
        lan.serve_log(1)
    );
    // The agent logs once it is done.
    assert!(
        wait_until(Duration::from_secs(3), || lan
            .serve_log(1)
            .contains("cut short")),
        "{}",
        lan.serve_log(1)
    );
    assert_settled(&lan, &mut client, 1, sum, "source killed in the transfer");
    assert!(t.elapsed() < Duration::from_secs(40));
}

#[test]
fn a_source_killed_after_resume_asks_the_destination_and_keeps_one_copy() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let addr = start_big_echo(&lan, 32);
    let mut client = Client::new(&lan, &addr);
    let (_, sum) = count(&lan.h1);
    // The destination resumed it: host1's agent asks and removes its copy.
    migrate_with_fault(&lan, "source-after-resume");
    assert!(
        wait_until(Duration::from_secs(8), || lan.names(1).is_empty()),
        "the frozen copy stays on host1: {}",
        lan.serve_log(1)
    );
    // The agent logs once it is done.
    assert!(
        wait_until(Duration::from_secs(3), || lan
            .serve_log(1)
            .contains("says it runs there")),
        "{}",
        lan.serve_log(1)
    );
    assert_settled(&lan, &mut client, 2, sum, "source killed after Resume");

    // Back to host1, then again with the resume failing on host2: the
    // answer is Failed, and host1 thaws its copy.
    lan.h2.ok(&["migrate", "echo", "host1"]);
    client.exchange("back on host1");
    lan.serve(2, Some("resume"));
    migrate_with_fault(&lan, "source-after-resume");
    assert!(
        wait_until(Duration::from_secs(8), || lan.h1.state("echo") == "running"),
        "not thawed on host1: {}",
        lan.serve_log(1)
    );
    // The agent logs once it is done.
    assert!(
        wait_until(Duration::from_secs(3), || lan
            .serve_log(1)
            .contains("failed there")),
        "{}",
        lan.serve_log(1)
    );
    assert_settled(
        &lan,
        &mut client,
        1,
        sum,
        "resume failed after the source died",
    );
}

#[test]
fn ctrl_c_before_resume_cancels_and_the_container_runs_here_again() {
    let mut lan = Lan::new();
    lan.serve(2, None);
    let addr = start_big_echo(&lan, 256);
    let mut client = Client::new(&lan, &addr);
    let (_, sum) = count(&lan.h1);
    let child = lan
        .h1
        .cr_cmd(&["migrate", "echo", "host2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cr migrate");
    // Its record appears when it is about to freeze.
    assert!(
        wait_until(Duration::from_secs(20), || !records(&lan, 1).is_empty()),
        "cr migrate did not start"
    );
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("cr migrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("migration of echo cancelled: it runs here again"),
        "{err}"
    );
    assert_settled(&lan, &mut client, 1, sum, "Ctrl-C");
    assert!(
        lan.serve_log(2).contains("cancelled"),
        "{}",
        lan.serve_log(2)
    );
}

#[test]
fn the_link_going_down_in_the_transfer_thaws_the_source_within_its_timeout() {
    let mut lan = Lan::new();
    lan.serve(2, None);
    let addr = start_big_echo(&lan, 384);
    let mut client = Client::new(&lan, &addr);
    let (_, sum) = count(&lan.h1);
    let ns1 = lan.h1.netns.clone().expect("host1 netns");
    let child = lan
        .h1
        .cr_cmd(&["migrate", "echo", "host2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cr migrate");
    // The destination mounts its staging directory when the streams open.
    assert!(
        wait_until(Duration::from_secs(30), || lan.staging_mounts(2) > 0),
        "the transfer did not start: {}",
        lan.serve_log(2)
    );
    let link = |state: &str| {
        let st = Command::new("ip")
            .args(["-n", &ns1, "link", "set", "up0", state])
            .status()
            .expect("ip");
        assert!(st.success(), "ip link set up0 {state}");
    };
    link("down");
    let down = Instant::now();
    let out = child.wait_with_output().expect("cr migrate");
    let gave_up = down.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        gave_up < Duration::from_secs(15),
        "gave up after {gave_up:?}: {err}"
    );
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(lan.h1.state("echo"), "running", "{err}");
    link("up");
    assert_settled(&lan, &mut client, 1, sum, "link down");
}

/// host2's agent dies once the container runs there, before it could say
/// `Resumed`; it is started again. The source, in doubt, asks the new
/// agent, which knows from disk that the container resumed: the copy on
/// host1 is removed, never thawed (that would run it on both hosts).
#[test]
fn a_destination_agent_that_dies_after_the_resume_still_answers_when_back() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, Some("crash-after-resume"));
    let addr = start_big_echo(&lan, 32);
    let mut client = Client::new(&lan, &addr);
    let (_, sum) = count(&lan.h1);
    let migrate = lan
        .h1
        .cr_cmd(&["migrate", "echo", "host2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running cr migrate");
    assert!(
        wait_until(Duration::from_secs(60), || lan
            .serve_log(2)
            .contains("CR_MIGRATE_FAULT=crash-after-resume: exiting")),
        "{}",
        lan.serve_log(2)
    );
    lan.serve(2, None);
    let out = migrate.wait_with_output().expect("cr migrate");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lan.serve_log(2)
    );
    assert_settled(
        &lan,
        &mut client,
        2,
        sum,
        "destination agent died after the resume",
    );
}

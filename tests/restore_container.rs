//! `cr restore` on real containers: a checkpointed container comes back
//! with its processes, memory, registers, files, pipes, IP and MAC, and goes
//! on where it stopped; what restore cannot rebuild yet is refused before
//! anything is built.

mod common;

use std::time::Duration;

use common::*;

const TICKER: &[&str] = &[
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /root/count; echo tick $i; sleep 0.1; done",
];

fn count(h: &TestHost, name: &str) -> u64 {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The numbers the ticker printed on its console, in order.
fn ticks(h: &TestHost, name: &str) -> Vec<u64> {
    h.ok(&["logs", name])
        .lines()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()))
        .collect()
}

#[test]
fn a_checkpointed_container_goes_on_where_it_stopped() {
    let h = TestHost::new();
    h.run(
        "tick",
        TestImage::Busybox,
        Some(10),
        &["--mac", "02:00:00:aa:bb:10", "--memory", "64M"],
        TICKER,
    );
    assert!(wait_until(Duration::from_secs(5), || count(&h, "tick") >= 5));
    h.ok(&["checkpoint", "tick"]);
    assert_eq!(h.state("tick"), "stopped");
    let at_checkpoint = *ticks(&h, "tick")
        .last()
        .expect("ticks before the checkpoint");

    let out = h.ok(&["restore", "tick"]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(h.state("tick"), "running");
    assert!(
        wait_until(Duration::from_secs(5), || count(&h, "tick")
            > at_checkpoint + 3),
        "the ticker did not go on"
    );
    // The sequence continues from the checkpointed value: its memory came back.
    let all = ticks(&h, "tick");
    let after: Vec<u64> = all
        .iter()
        .copied()
        .skip_while(|t| *t <= at_checkpoint)
        .collect();
    assert!(!after.is_empty(), "{all:?}");
    assert!(
        after[0] <= at_checkpoint + 1,
        "restarted instead of resuming: {at_checkpoint} then {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    // Same PID 1, same network identity and limits.
    assert_eq!(h.exec("tick", &["cat", "/proc/1/comm"]).trim(), "sh");
    assert_eq!(
        h.exec("tick", &["cat", "/sys/class/net/eth0/address"])
            .trim(),
        "02:00:00:aa:bb:10"
    );
    let json = h.status_json("tick");
    assert_eq!(json["ip"], h.net.ip(10));
    assert_eq!(json["limits"]["memory"].as_u64(), Some(64 << 20));
    h.exec("tick", &["ping", "-c", "1", "-W", "2", &h.net.addr(1)]);

    // A running container is not restored over.
    let err = h.fails(&["restore", "tick"]);
    assert!(err.contains("running") && err.contains("stopped"), "{err}");
}

#[test]
fn restore_after_destroy_and_twice_from_one_image() {
    let h = TestHost::new();
    h.run("again", TestImage::Busybox, Some(11), &[], TICKER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "again") >= 3));
    let image = h.root.join("img-again");
    let image = image.to_str().expect("utf-8");
    h.ok(&["checkpoint", "again", "--image", image]);
    let at_checkpoint = count(&h, "again");
    for round in 0..2 {
        h.ok(&["destroy", "again"]);
        assert!(!h.root.join("containers/again").exists());
        h.ok(&["restore", "again", "--image", image]);
        assert!(
            wait_until(Duration::from_secs(5), || count(&h, "again")
                > at_checkpoint + 2),
            "round {round}: the restored container does not run"
        );
        // Its files came back from the image too.
        assert!(count(&h, "again") >= at_checkpoint);
    }
}

#[test]
fn pipes_come_back_with_their_data() {
    let h = TestHost::new();
    h.run(
        "pipe",
        TestImage::Busybox,
        None,
        &[],
        &[
            "/bin/sh",
            "-c",
            "printf 'hello pipe\\n' | (sleep 1000; cat)",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    h.ok(&["checkpoint", "pipe"]);
    h.ok(&["restore", "pipe"]);
    let ps = h.exec("pipe", &["ps"]);
    let sleep_pid = ps
        .lines()
        .find(|l| l.split_whitespace().skip(2).collect::<Vec<_>>() == ["sleep", "1000"])
        .and_then(|l| l.split_whitespace().next())
        .expect("the restored sleep")
        .to_string();
    h.exec("pipe", &["kill", &sleep_pid]);
    assert!(
        wait_until(Duration::from_secs(3), || h
            .ok(&["logs", "pipe"])
            .contains("hello pipe")),
        "the restored cat did not read the pipe's data: {}",
        h.ok(&["logs", "pipe"])
    );
}

#[test]
fn what_restore_cannot_rebuild_is_refused_before_building() {
    let h = TestHost::new();
    // A process running as another user: restoring credentials is not built yet.
    let script = "import os, time\nos.setgid(65534)\nos.setuid(65534)\ntime.sleep(1000)\n";
    h.run(
        "user",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", script],
    );
    std::thread::sleep(Duration::from_millis(500));
    // A checkpoint that would stop the container is refused: it keeps running.
    let err = h.fails(&["checkpoint", "user"]);
    assert!(
        err.contains("not be restorable") && err.contains("keeps running"),
        "{err}"
    );
    assert_eq!(h.state("user"), "running");
    assert!(h.ok(&["checkpoint", "list", "user"]).trim().is_empty());
    // With --leave-running the image is written; restoring it is refused
    // before anything is built.
    h.ok(&["checkpoint", "user", "--leave-running"]);
    h.ok(&["destroy", "user"]);
    let err = h.fails(&["restore", "user"]);
    assert!(
        err.contains("another user") && err.contains("not supported yet"),
        "{err}"
    );
    assert!(
        !h.root.join("containers/user").exists(),
        "a refused restore left a container behind"
    );

    let err = h.fails(&["restore", "nosuch"]);
    assert!(err.contains("no checkpoint"), "{err}");
}

#[test]
fn a_damaged_image_is_refused_and_nothing_is_built() {
    let h = TestHost::new();
    h.run("dmg", TestImage::Busybox, None, &[], TICKER);
    let image = h.root.join("img-dmg");
    h.ok(&[
        "checkpoint",
        "dmg",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    h.ok(&["destroy", "dmg"]);
    let pages = image.join("pages.img");
    let mut bytes = std::fs::read(&pages).expect("pages.img");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&pages, &bytes).expect("write");
    let err = h.fails(&["restore", "dmg", "--image", image.to_str().expect("utf-8")]);
    assert!(err.contains("pages.img"), "{err}");
    assert!(!h.root.join("containers/dmg").exists());
    assert!(h.container_cgroups("dmg").is_empty());
}

#[test]
fn process_attributes_come_back() {
    let h = TestHost::new();
    h.run(
        "attrs",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sh", "-c", "mkdir -p /srv/work; cd /srv/work; umask 027; ulimit -n 512; renice -n 5 $$ >/dev/null; exec sleep 1000"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let read = |h: &TestHost| {
        let status = h.exec("attrs", &["cat", "/proc/1/status"]);
        let umask = status
            .lines()
            .find(|l| l.starts_with("Umask:"))
            .unwrap_or_default()
            .to_string();
        let limits = h.exec("attrs", &["cat", "/proc/1/limits"]);
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_string();
        let cwd = h.exec("attrs", &["readlink", "/proc/1/cwd"]);
        let stat = h.exec("attrs", &["cat", "/proc/1/stat"]);
        let nice = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(16)
            .unwrap_or_default()
            .to_string();
        (umask, nofile, cwd, nice)
    };
    let before = read(&h);
    assert!(before.0.contains("0027"), "{before:?}");
    h.ok(&["checkpoint", "attrs"]);
    h.ok(&["restore", "attrs"]);
    assert_eq!(read(&h), before);
}

#[test]
fn a_user_namespace_container_comes_back_with_its_id_map() {
    let h = TestHost::new();
    h.run("uns", TestImage::Busybox, None, &["--userns"], TICKER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "uns") >= 3));
    let map = h.exec("uns", &["cat", "/proc/self/uid_map"]);
    h.ok(&["checkpoint", "uns"]);
    let at_checkpoint = *ticks(&h, "uns").last().expect("ticks");
    h.ok(&["restore", "uns"]);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "uns")
        > at_checkpoint + 2));
    assert_eq!(h.exec("uns", &["cat", "/proc/self/uid_map"]), map);
    assert_eq!(h.exec("uns", &["id", "-u"]).trim(), "0");
}

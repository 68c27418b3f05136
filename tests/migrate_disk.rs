//! `cr migrate` of a container on a ploop-like disk (`cr run --disk`)
//! between the two test hosts of `tests/common/lan.rs`: its delta chain
//! goes along (the read-only deltas while it runs, the rest while frozen),
//! its files and its memory agree on the other side, and a failure on the
//! way leaves the container running on the source with its disk, and no
//! chain on the destination.

mod common;

use std::time::Duration;

use common::lan::*;
use common::*;

const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.05; done";

fn counter(h: &TestHost) -> u64 {
    h.cr(&["exec", "dk", "--", "cat", "/root/count"])
        .stdout
        .iter()
        .map(|b| *b as char)
        .collect::<String>()
        .trim()
        .parse()
        .unwrap_or(0)
}

fn start(lan: &Lan) -> String {
    lan.h2.with_image(TestImage::Busybox);
    lan.h1.run(
        "dk",
        TestImage::Busybox,
        Some(10),
        &["--disk", "128M", "--mac", "02:00:00:aa:bb:71"],
        &["/bin/sh", "-c", COUNTER],
    );
    assert!(wait_until(Duration::from_secs(10), || counter(&lan.h1) >= 3));
    // 8 MiB of random data and a small file, synced to the disk.
    lan.h1.exec(
        "dk",
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/root/big bs=1M count=8 2>/dev/null && echo before > /root/a && sync",
        ],
    );
    sum(&lan.h1)
}

fn sum(h: &TestHost) -> String {
    h.exec("dk", &["md5sum", "/root/big"])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The container runs on host `on` with its files and a counter that goes
/// on; the other host has no trace of it.
fn assert_on(lan: &Lan, on: usize, big: &str, files: &[(&str, &str)], what: &str) {
    let h = lan.host(on);
    let other = 3 - on;
    let logs = || format!("serve1: {}\nserve2: {}", lan.serve_log(1), lan.serve_log(2));
    assert_eq!(h.state("dk"), "running", "{what}\n{}", logs());
    assert_eq!(sum(h), big, "{what}: /root/big changed");
    for (file, text) in files {
        assert_eq!(h.exec("dk", &["cat", file]).trim(), *text, "{what}: {file}");
    }
    let c0 = counter(h);
    assert!(
        wait_until(Duration::from_secs(5), || counter(h) > c0),
        "{what}: the counter stopped at {c0}"
    );
    let check = h.ok(&["disk", "check", "dk"]);
    assert!(!check.contains("PROBLEM"), "{what}: {check}");
    assert!(
        wait_until(Duration::from_secs(20), || lan.names(other).is_empty()
            && !lan.host(other).root.join("containers/dk").exists()),
        "{what}: left on host{other}: {:?}\n{}",
        lan.names(other),
        logs()
    );
}

#[test]
fn a_container_on_a_disk_moves_there_and_back_with_its_files_and_memory() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let big = start(&lan);
    let before = counter(&lan.h1);
    let out = lan.h1.ok(&["migrate", "dk", "host2", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("report json");
    assert!(report["frozen_ms"].as_f64().is_some(), "{out}");
    assert_on(&lan, 2, &big, &[("/root/a", "before")], "on host2");
    // The counter went on from its value in memory, which the file agrees
    // with: not restarted.
    assert!(counter(&lan.h2) > before, "{out}");

    lan.h2
        .exec("dk", &["sh", "-c", "echo there > /root/b && sync"]);
    lan.h2.ok(&["migrate", "dk", "host1"]);
    assert_on(
        &lan,
        1,
        &big,
        &[("/root/a", "before"), ("/root/b", "there")],
        "back on host1",
    );
}

#[test]
fn a_failed_disk_migration_keeps_the_container_and_its_disk_on_the_source() {
    let mut lan = Lan::new();
    lan.serve(1, None);
    lan.serve(2, None);
    let big = start(&lan);
    let chain_before = deltas(&lan.h1);
    // A byte of the disk stream flipped on the wire.
    let out = migrate_with_fault(&lan, "corrupt-disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("flipped the byte") && err.contains("checksum"),
        "{err}\n{}",
        lan.serve_log(2)
    );
    assert_on(
        &lan,
        1,
        &big,
        &[("/root/a", "before")],
        "after a corrupt disk stream",
    );
    // The migration's two snapshots were folded back: the chain is as it was.
    assert_eq!(deltas(&lan.h1), chain_before, "after a corrupt disk stream");
    // The destination refuses what arrived, then the restore fails there.
    for fault in ["transfer", "restore"] {
        lan.serve(2, Some(fault));
        let err = lan.h1.fails(&["migrate", "dk", "host2"]);
        assert!(err.contains("fault injected"), "{fault}: {err}");
        assert_on(&lan, 1, &big, &[("/root/a", "before")], fault);
        assert_eq!(deltas(&lan.h1), chain_before, "{fault}");
    }
    // The source killed while frozen (no cleanup of its own): host1's agent
    // thaws the container and folds the disk's snapshots back.
    lan.serve(2, None);
    let out = migrate_with_fault(&lan, "source-transfer");
    assert!(!out.status.success());
    assert!(
        wait_until(Duration::from_secs(5), || lan
            .serve_log(1)
            .contains("snapshots of its disk folded back")),
        "{}",
        lan.serve_log(1)
    );
    assert_on(&lan, 1, &big, &[("/root/a", "before")], "source killed");
    assert_eq!(deltas(&lan.h1), chain_before, "source killed");
}

/// `cr migrate dk host2` on host1 with `CR_MIGRATE_FAULT=fault`.
fn migrate_with_fault(lan: &Lan, fault: &str) -> std::process::Output {
    lan.h1
        .cr_cmd(&["migrate", "dk", "host2"])
        .env("CR_MIGRATE_FAULT", fault)
        .output()
        .expect("running cr migrate")
}

/// The ids of the chain's deltas on host `h`, bottom first.
fn deltas(h: &TestHost) -> Vec<String> {
    let out = h.ok(&["disk", "list", "dk", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("disk list json");
    list.iter()
        .map(|d| d["id"].as_str().expect("a delta id").to_string())
        .collect()
}

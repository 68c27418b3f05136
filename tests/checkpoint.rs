//! `cr checkpoint`, `cr inspect`, `cr checkpoint list/rm` on real containers:
//! what the image holds, that the container keeps running (or stops), that
//! unsupported objects are refused before the freeze, and that a damaged
//! image is reported.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const COUNTER: &[&str] = &[
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done",
];

fn checkpoint_json(h: &TestHost, args: &[&str]) -> Value {
    let mut all = vec!["checkpoint"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&h.ok(&all)).expect("checkpoint --json")
}

fn inspect(image: &str) -> Value {
    let out = std::process::Command::new(CR)
        .args(["inspect", image, "--json"])
        .output()
        .expect("cr inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect json")
}

fn records_of<'a>(image: &'a Value, kind: &str) -> Vec<&'a Value> {
    image["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|e| e["record"].get(kind))
        .collect()
}

/// The container's counter, 0 while it has not written one yet.
fn count(h: &TestHost, name: &str) -> u64 {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn leave_running_writes_a_full_image_and_keeps_counting() {
    let h = TestHost::new();
    h.run("cnt", TestImage::Busybox, Some(10), &[], COUNTER);
    assert!(wait_until(Duration::from_secs(3), || count(&h, "cnt") > 2));
    let summary = checkpoint_json(&h, &["cnt", "--leave-running"]);
    assert_eq!(h.state("cnt"), "running");
    let before = count(&h, "cnt");
    assert!(
        wait_until(Duration::from_secs(3), || count(&h, "cnt") > before + 2),
        "counter stopped after checkpoint"
    );

    assert!(summary["processes"].as_u64().unwrap_or(0) >= 1, "{summary}");
    assert!(
        summary["pages_written"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert!(
        summary["frozen_ms"].as_f64().unwrap_or(1e9) < 5000.0,
        "{summary}"
    );
    let image = summary["image"].as_str().expect("image path").to_string();
    assert!(
        image.starts_with(h.root.join("checkpoints/cnt").to_str().expect("utf-8")),
        "{image}"
    );

    let img = inspect(&image);
    assert_eq!(img["manifest"]["container"], "cnt");
    assert!(
        img["manifest"]["config_toml"]
            .as_str()
            .unwrap_or("")
            .contains("02:")
            || img["manifest"]["config_toml"]
                .as_str()
                .unwrap_or("")
                .contains("mac")
    );
    let procs = records_of(&img, "Process");
    let init = procs.iter().find(|p| p["pid"] == 1).expect("PID 1 record");
    assert_eq!(init["comm"], "sh");
    assert_eq!(init["sid"], 1);
    assert!(
        init["sigactions"]
            .as_array()
            .map(|a| !a.is_empty())
            .unwrap_or(false),
        "sh installs signal handlers: {init}"
    );
    let threads = records_of(&img, "Thread");
    assert_eq!(threads.len(), procs.len(), "one thread per busybox process");
    assert!(threads
        .iter()
        .all(|t| !t["xsave"].as_str().unwrap_or("").is_empty()));
    let vmas = records_of(&img, "Vma");
    for kind in ["Heap", "Stack", "Vdso"] {
        assert!(
            vmas.iter().any(|v| v["pid"] == 1 && v["kind"] == kind),
            "no {kind} VMA for PID 1"
        );
    }
    let fds = records_of(&img, "Fd");
    for fd in 0..3 {
        assert!(
            fds.iter().any(|f| f["pid"] == 1 && f["fd"] == fd),
            "fd {fd} of PID 1 missing"
        );
    }
    // The three stdio fds of PID 1 share one open file (the console).
    let files: Vec<_> = fds
        .iter()
        .filter(|f| f["pid"] == 1)
        .map(|f| f["file"].clone())
        .collect();
    assert!(files.windows(2).all(|w| w[0] == w[1]), "{files:?}");
    assert!(img["pages"]["data"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn checkpoint_stops_by_default_then_list_and_rm() {
    let h = TestHost::new();
    h.run("stp", TestImage::Busybox, Some(11), &[], COUNTER);
    let veth = std::fs::read_to_string(h.root.join("containers/stp/config.toml")).expect("config");
    let summary = checkpoint_json(&h, &["stp"]);
    assert_eq!(summary["left_running"], false);
    assert_eq!(h.state("stp"), "stopped");
    assert!(
        wait_until(Duration::from_secs(5), || h
            .container_cgroups("stp")
            .is_empty()),
        "cgroups left"
    );
    let veth = veth
        .lines()
        .find(|l| l.starts_with("veth"))
        .and_then(|l| l.split('"').nth(1))
        .expect("veth")
        .to_string();
    assert!(
        wait_until(Duration::from_secs(5), || !link_exists(&veth)),
        "veth left"
    );
    let list = h.ok(&["checkpoint", "list", "stp"]);
    let id = list
        .split_whitespace()
        .next()
        .expect("one checkpoint")
        .to_string();
    assert_eq!(list.lines().count(), 1);
    // destroy keeps checkpoints.
    h.ok(&["destroy", "stp"]);
    assert_eq!(h.ok(&["checkpoint", "list", "stp"]).lines().count(), 1);
    let err = h.fails(&["checkpoint", "rm", "stp", "nosuch"]);
    assert!(err.contains("no checkpoint"), "{err}");
    h.ok(&["checkpoint", "rm", "stp", &id]);
    assert_eq!(h.ok(&["checkpoint", "list", "stp"]).trim(), "");
}

#[test]
fn a_socket_cr_cannot_move_is_refused_before_the_freeze() {
    // A packet socket: a family cr does not move.
    let h = TestHost::new();
    h.run_python_until(
        "sock",
        "import socket, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\nassert s.fileno() == 3\nopen('/root/ready', 'w').write('1')\ntime.sleep(3600)",
        "/root/ready",
    );
    let err = h.fails(&["checkpoint", "sock"]);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("process 1 (python3)"), "{err}");
    assert!(first.contains("fd 3") && first.contains("socket"), "{err}");
    assert!(first.contains("keeps running"), "{err}");
    assert_eq!(h.state("sock"), "running");
    let dir = h.root.join("checkpoints/sock");
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0,
        "a refused checkpoint left files"
    );
    // Still running.
    h.exec("sock", &["true"]);
}

#[test]
fn unknown_container_and_bad_image_dir() {
    let h = TestHost::new();
    let err = h.fails(&["checkpoint", "nosuch"]);
    assert!(err.contains("no container named"), "{err}");
    h.run(
        "idle",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sleep", "1000"],
    );
    let taken = h.root.join("taken");
    std::fs::create_dir_all(&taken).expect("mkdir");
    let err = h.fails(&[
        "checkpoint",
        "idle",
        "--image",
        taken.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(h.state("idle"), "running");
    h.ok(&["stop", "idle", "--time", "0"]);
    let err = h.fails(&["checkpoint", "idle"]);
    assert!(err.contains("stopped"), "{err}");
}

#[test]
fn pipe_contents_and_restart_states_are_recorded() {
    let h = TestHost::new();
    h.run(
        "pipe",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sh", "-c", "printf 'hello pipe' | (sleep 1000; cat)"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let image = h.root.join("img-pipe");
    h.ok(&[
        "checkpoint",
        "pipe",
        "--leave-running",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    let img = inspect(image.to_str().expect("utf-8"));
    let data = records_of(&img, "PipeData");
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0]["data"], hex(b"hello pipe"), "{}", data[0]);
    // The pipe's data was read without consuming it.
    let threads = records_of(&img, "Thread");
    assert!(
        threads
            .iter()
            .any(|t| t["syscall"].get("RestartBlock").is_some()),
        "sleep should be in a restartable nanosleep: {threads:?}"
    );
    let pid_of_sleep = threads
        .iter()
        .find(|t| t["comm"] == "sleep")
        .and_then(|t| t["pid"].as_i64())
        .expect("sleep thread");
    h.exec("pipe", &["kill", &pid_of_sleep.to_string()]);
    assert!(
        wait_until(Duration::from_secs(3), || h
            .ok(&["logs", "pipe"])
            .contains("hello pipe")),
        "the pipe lost its data"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 MiB of heap, each page marked differently, checked against its
/// checksum every round by the main thread ("ok N" or "bad N" in
/// /root/heap), while three threads sleep in a loop.
const LARGE_HEAP: &str = r#"
import threading, time, zlib
data = bytearray(b'x' * (64 << 20))
for j in range(0, len(data), 4096):
    data[j] = (j // 4096) % 251
want = zlib.crc32(data)
def spin():
    while True:
        time.sleep(0.05)
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
i = 0
while True:
    i += 1
    state = 'ok' if zlib.crc32(data) == want else 'bad'
    with open('/root/heap', 'w') as f:
        f.write('%s %d' % (state, i))
    with open('/root/count', 'w') as f:
        f.write(str(i))
    time.sleep(0.1)
"#;

/// What the large-heap script last wrote to /root/heap (retried while the
/// file is caught between truncation and write).
fn heap_state(h: &TestHost, name: &str) -> String {
    let mut state = String::new();
    wait_until(Duration::from_secs(3), || {
        let out = h.cr(&["exec", name, "--", "cat", "/root/heap"]);
        state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        !state.is_empty()
    });
    state
}

#[test]
fn multithreaded_process_with_a_large_heap() {
    let h = TestHost::new();
    h.run(
        "py",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", LARGE_HEAP],
    );
    assert!(wait_until(Duration::from_secs(10), || count(&h, "py") > 2));
    assert!(
        heap_state(&h, "py").starts_with("ok "),
        "{}",
        heap_state(&h, "py")
    );
    let at_checkpoint = count(&h, "py");
    let summary = checkpoint_json(&h, &["py", "--leave-running", "--compress", "zstd"]);
    assert_eq!(summary["threads"], 4, "{summary}");
    assert!(
        summary["pages_written"].as_u64().unwrap_or(0) >= 16384,
        "64 MiB heap not saved: {summary}"
    );
    // Compressed: the repetitive heap takes little space.
    assert!(
        summary["bytes"].as_u64().unwrap_or(u64::MAX) < 32 << 20,
        "{summary}"
    );
    let before = count(&h, "py");
    assert!(
        wait_until(Duration::from_secs(3), || count(&h, "py") > before),
        "python stopped"
    );
    let image = summary["image"].as_str().expect("image").to_string();
    let img = inspect(&image);
    let threads = records_of(&img, "Thread");
    assert_eq!(threads.len(), 4);
    assert!(
        threads.iter().all(|t| !t["rseq"].is_null()),
        "glibc registers rseq in every thread"
    );

    // Stop it and bring it back from the image: the heap is intact, every
    // thread is there and the main loop goes on from the checkpoint.
    h.ok(&["stop", "py", "--time", "0"]);
    h.ok(&["restore", "py", "--image", &image]);
    assert_eq!(h.state("py"), "running");
    let mut resumed = 0;
    wait_until(Duration::from_secs(3), || {
        resumed = count(&h, "py");
        resumed > 0
    });
    // From the checkpoint's iteration on: neither restarted nor the count
    // the left-running container reached afterwards.
    assert!(
        resumed >= at_checkpoint && resumed <= before + 30,
        "the restored loop is at {resumed}; the checkpoint was taken between {at_checkpoint} and {before}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || count(&h, "py") > resumed + 3),
        "the restored python does not go on"
    );
    let state = heap_state(&h, "py");
    assert!(state.starts_with("ok "), "the restored heap: {state}");
    let tasks = h.exec("py", &["ls", "/proc/1/task"]);
    assert_eq!(tasks.split_whitespace().count(), 4, "{tasks}");
}

#[test]
fn damaged_images_are_refused_with_the_record_they_hit() {
    let h = TestHost::new();
    h.run(
        "dmg",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sleep", "1000"],
    );
    let image = h.root.join("img-dmg");
    h.ok(&[
        "checkpoint",
        "dmg",
        "--leave-running",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    let records = image.join("records.img");
    let pristine = std::fs::read(&records).expect("records.img");

    let mut flipped = pristine.clone();
    let at = pristine.len() / 2;
    flipped[at] ^= 0x40;
    std::fs::write(&records, &flipped).expect("write");
    let out = std::process::Command::new(CR)
        .args(["inspect"])
        .arg(&image)
        .output()
        .expect("inspect");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a flipped byte went unnoticed");
    assert!(
        err.contains("records.img") && err.contains("frame"),
        "{err}"
    );

    std::fs::write(&records, &pristine[..pristine.len() - 10]).expect("write");
    let out = std::process::Command::new(CR)
        .args(["inspect"])
        .arg(&image)
        .output()
        .expect("inspect");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a truncated image was accepted");
    assert!(
        err.to_lowercase().contains("truncated") || err.contains("trailer"),
        "{err}"
    );
}

#[test]
fn the_containers_own_files_travel_in_the_image() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let h = TestHost::new();
    h.run(
        "files",
        TestImage::Busybox,
        None,
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo mine > /root/note; rm /etc/hostname; mkdir -p /srv/a; exec sleep 1000",
        ],
    );
    assert!(wait_until(Duration::from_secs(3), || h
        .cr(&["exec", "files", "--", "test", "-d", "/srv/a"])
        .status
        .success()));
    let image = h.root.join("img-files");
    h.ok(&[
        "checkpoint",
        "files",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    assert!(image.join("upper.tar").is_file());

    // Put the layer back into a fresh directory and look at it.
    let upper = h.root.join("restored-upper");
    cr::container::upper::extract(&image, &upper).expect("extracting the upper layer");
    assert_eq!(
        std::fs::read_to_string(upper.join("root/note")).expect("note"),
        "mine\n"
    );
    let whiteout = std::fs::symlink_metadata(upper.join("etc/hostname")).expect("whiteout");
    assert!(
        whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
        "deleting an image file must stay deleted"
    );
    assert!(upper.join("srv/a").is_dir());
    // A second extract replaces the layer and leaves no side directories.
    cr::container::upper::extract(&image, &upper).expect("extracting again");
    let siblings: Vec<_> = std::fs::read_dir(&h.root)
        .expect("root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("restored-upper"))
        .collect();
    assert_eq!(siblings, ["restored-upper"]);
}

#[test]
fn file_leases_are_refused_before_the_freeze() {
    // flock, POSIX and OFD locks are moved (tests/memkinds.rs); a lease is not.
    let h = TestHost::new();
    let script = "import fcntl, os, time\nfd = os.open('/root/lockfile', os.O_RDONLY | os.O_CREAT)\nfcntl.fcntl(fd, 1024, fcntl.F_RDLCK)\nopen('/root/locked', 'w').close()\ntime.sleep(1000)\n";
    h.run_python_until("lock", script, "/root/locked");
    let err = h.fails(&["checkpoint", "lock"]);
    assert!(
        err.contains("LEASE lock") && err.contains("/root/lockfile"),
        "{err}"
    );
    assert_eq!(h.state("lock"), "running");
}

//! Pre-copy (src/dump/precopy.rs) and its dirty-page tracker
//! (src/dump/dirty.rs) on the real kernel: a program that keeps rewriting a
//! large buffer (some pages with zeros, some released with MADV_DONTNEED)
//! and keeps mapping, unmapping and resizing small mappings while cr
//! pre-copies it (tests/programs/churn.py) is checkpointed and restored,
//! then checks every page byte for byte; `--leave-running` leaves it
//! running correctly with no userfaultfd behind; `--no-pre-copy` still
//! works; and the tracker reports exactly the pages written.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use cr::dump::dirty::{DirtyTracker, Written};
use serde_json::Value;

const CHURN: &str = include_str!("programs/churn.py");
/// Pages of the churned buffer (64 MiB).
const PAGES: &str = "16384";

fn start_churn(h: &TestHost, name: &str) {
    h.run(
        name,
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", CHURN, PAGES],
    );
    let ok = wait_until(Duration::from_secs(60), || {
        h.cr(&["exec", name, "--", "test", "-e", "/root/ready"])
            .status
            .success()
    });
    assert!(ok, "{name} did not get ready: {}", h.ok(&["logs", name]));
}

/// Asks the program for check number `gen` and returns its verdict.
fn verdict(h: &TestHost, name: &str, gen: u32) -> String {
    h.exec(name, &["touch", &format!("/root/go{gen}")]);
    let result = format!("/root/result{gen}");
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        let out = h.cr(&["exec", name, "--", "cat", &result]);
        text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        !text.is_empty()
    });
    assert!(ok, "no result {gen}; console: {}", h.ok(&["logs", name]));
    text
}

fn checkpoint_json(h: &TestHost, args: &[&str]) -> Value {
    let mut all = vec!["checkpoint"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&h.ok(&all)).expect("checkpoint --json")
}

fn inspect(image: &str) -> Value {
    let out = Command::new(CR)
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

fn image_dir(h: &TestHost, label: &str) -> String {
    h.root.join(label).to_string_lossy().into_owned()
}

/// The pre-copy part of a summary, checked to have copied the buffer.
fn assert_pre_copied(summary: &Value) {
    let pre = &summary["pre_copy"];
    assert!(pre.is_object(), "no pre-copy in {summary}");
    assert_eq!(pre["processes"], 1, "{summary}");
    assert!(
        pre["fallbacks"].as_array().is_some_and(|f| f.is_empty()),
        "{summary}"
    );
    // Pages were copied while the program ran. How many depends on the
    // program's mremap and munmap churn, which can cut a read of round 0
    // short (the rest is then copied while frozen); the benchmark measures
    // the pre-copy of a quiet process.
    let copied: u64 = pre["round_pages"]
        .as_array()
        .map(|r| r.iter().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    assert!(copied > 0, "the pre-copy copied nothing: {summary}");
    // The program rewrites pages all the time: some were copied again
    // while frozen.
    assert!(
        summary["frozen_pages_written"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
}

#[test]
fn memory_rewritten_during_the_pre_copy_is_restored_page_for_page() {
    let h = TestHost::new();
    start_churn(&h, "churn");
    let image = image_dir(&h, "img");
    let summary = checkpoint_json(&h, &["churn", "--image", &image]);
    assert_pre_copied(&summary);
    assert_eq!(h.state("churn"), "stopped");

    // The image holds pre-copy chunks and later chunks of the same process,
    // and says how many pre-copied pages later runs superseded.
    let inspected = inspect(&image);
    let owners: Vec<&Value> = inspected["page_chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| &c["owner"])
        .collect();
    assert!(owners.iter().any(|o| o.get("PreCopy").is_some()));
    assert!(owners.iter().any(|o| o.get("Mm").is_some()));
    assert!(
        inspected["pages"]["superseded"].as_u64().unwrap_or(0) > 0,
        "{}",
        inspected["pages"]
    );

    h.ok(&["restore", "churn", "--image", &image]);
    assert_eq!(verdict(&h, "churn", 1), "PASS");
}

#[test]
fn leave_running_after_pre_copy_leaves_no_userfaultfd_and_a_good_image() {
    let h = TestHost::new();
    start_churn(&h, "churn");
    let pid = h.status_json("churn")["pid"].as_i64().expect("pid");
    let image = image_dir(&h, "img");
    let summary = checkpoint_json(&h, &["churn", "--leave-running", "--image", &image]);
    assert_pre_copied(&summary);
    assert_eq!(h.state("churn"), "running");

    // Nothing of the tracker is left: no userfaultfd in the fd table, no
    // range still registered (VmFlags "uw").
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir") {
        let link = std::fs::read_link(entry.expect("fd").path()).unwrap_or_default();
        assert!(
            !link.to_string_lossy().contains("userfaultfd"),
            "fd left behind: {}",
            link.display()
        );
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    for line in smaps.lines().filter(|l| l.starts_with("VmFlags:")) {
        assert!(
            !line.split_whitespace().any(|f| f == "uw"),
            "a range is still registered: {line}"
        );
    }
    // The program ran on through the pre-copy and the freeze correctly.
    assert_eq!(verdict(&h, "churn", 1), "PASS");

    // The image brings back the state at the freeze.
    h.ok(&["stop", "churn", "--time", "0"]);
    h.ok(&["restore", "churn", "--image", &image]);
    assert_eq!(verdict(&h, "churn", 1), "PASS");
}

#[test]
fn no_pre_copy_copies_everything_frozen() {
    let h = TestHost::new();
    start_churn(&h, "churn");
    let image = image_dir(&h, "img");
    let summary = checkpoint_json(&h, &["churn", "--no-pre-copy", "--image", &image]);
    assert!(summary["pre_copy"].is_null(), "{summary}");
    let frozen = summary["frozen_pages_written"].as_u64().unwrap_or(0)
        + summary["frozen_zero_pages"].as_u64().unwrap_or(0);
    assert!(frozen >= 16384, "{summary}");
    let inspected = inspect(&image);
    assert!(inspected["page_chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .all(|c| c["owner"].get("PreCopy").is_none()));
    h.ok(&["restore", "churn", "--image", &image]);
    assert_eq!(verdict(&h, "churn", 1), "PASS");
}

/// A host python that maps 64 pages and then obeys commands on stdin:
/// `w I` writes page I, `m` maps 4 more pages; it answers each with one
/// line (addresses in hex).
const TOY: &str = r#"
import mmap, sys
buf = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(64):
    buf[i * 4096] = 1
import ctypes
addr = lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))
print(hex(addr(buf)), flush=True)
extra = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "w":
        buf[int(cmd[1]) * 4096 + 5] = 9
        print("ok", flush=True)
    elif cmd[0] == "m":
        m = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m[0] = 1
        extra.append(m)
        print(hex(addr(m)), flush=True)
"#;

struct Toy {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Toy {
    fn start() -> (Toy, u64) {
        let python = "/usr/bin/python3";
        require(
            "python3 on the host",
            std::path::Path::new(python).exists(),
            "install python3",
        );
        let mut child = Command::new(python)
            .args(["-c", TOY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut toy = Toy { child, out };
        let addr = toy.line();
        (toy, parse_hex(&addr))
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("reading the toy");
        s.trim().to_string()
    }

    fn say(&mut self, cmd: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("writing to the toy");
        self.line()
    }
}

impl Drop for Toy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex address")
}

fn has_uffd(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .any(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().contains("userfaultfd"))
                .unwrap_or(false)
        })
}

fn registered_ranges(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .expect("smaps")
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw"))
        .count()
}

#[test]
fn dirty_tracker_reports_exactly_the_pages_written() {
    require_root();
    let (mut toy, addr) = Toy::start();
    let pid = toy.child.id();
    // The buffer's whole mapping is registered (python may have merged it
    // with a neighbour); only the buffer's pages are looked at.
    let mut tracker =
        DirtyTracker::start(pid as i32, &|m| m.start <= addr && addr < m.end).expect("tracker");
    let range = tracker.registered()[0];
    assert!(range.0 <= addr && addr + 64 * 4096 <= range.1, "{range:x?}");
    assert!(!has_uffd(pid), "the target keeps the userfaultfd");
    assert_eq!(registered_ranges(pid), 1);
    let buf = |w: Vec<Written>| -> Vec<(u64, u64)> {
        let [Written::Runs(runs)] = &w[..] else {
            panic!("not tracked: {w:?}");
        };
        runs.iter()
            .flat_map(|&(a, n)| (a..a + n * 4096).step_by(4096))
            .filter(|p| (addr..addr + 64 * 4096).contains(p))
            .map(|p| (p - addr) / 4096)
            .map(|i| (i, 1))
            .collect()
    };
    assert_eq!(buf(tracker.round(&[range]).expect("round")), []);
    for page in [3, 7, 8, 9, 63] {
        assert_eq!(toy.say(&format!("w {page}")), "ok");
    }
    assert_eq!(
        buf(tracker.round(&[range]).expect("round")),
        [(3, 1), (7, 1), (8, 1), (9, 1), (63, 1)]
    );
    // Reported once: protected again by the scan.
    assert_eq!(buf(tracker.round(&[range]).expect("round")), []);
    // Written again after a round.
    assert_eq!(toy.say("w 3"), "ok");
    assert_eq!(buf(tracker.round(&[range]).expect("round")), [(3, 1)]);
    // A mapping made after the start is reported whole.
    let extra = parse_hex(&toy.say("m"));
    let extra_range = (extra, extra + 4 * 4096);
    let both = tracker.round(&[range, extra_range]).expect("round");
    assert_eq!(both[1], Written::Whole, "{both:?}");
    assert!(tracker.is_process(pid as i32));
    drop(tracker);
    // Dropping the tracker unregisters everything.
    assert_eq!(registered_ranges(pid), 0);
    assert!(!has_uffd(pid));
    assert_eq!(toy.say("w 5"), "ok");
}

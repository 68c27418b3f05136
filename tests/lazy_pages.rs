//! Lazy pages (src/restore/lazy.rs): `cr restore` resumes the container
//! before its private memory is filled and fills it right after through
//! userfaultfd. The program (tests/programs/lazy.py) acts the moment it is
//! resumed: it forks a child that checks the memory it inherited, moves a
//! mapping with mremap and drops another with MADV_DONTNEED, each while
//! the fill is still going on, and checks every byte. The same program
//! restored with `--pages eager` passes too, and the supervisor's log
//! shows which path ran.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const PROGRAM: &str = include_str!("programs/lazy.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checkpoints (the container stops), waits past the program's gap, restores
/// with `pages`, and returns the program's verdict and the supervisor's log
/// of the restore.
fn round_trip(pages: &str) -> (String, String) {
    let h = TestHost::new();
    h.run_python_until("lazy", PROGRAM, "/root/ready");
    h.ok(&["checkpoint", "lazy"]);
    let image = only_checkpoint(&h, "lazy").join("pages.img");
    let stored = fs::read(&image).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(1500));
    let log_path = h.root.join("containers/lazy/supervisor.log");
    let before = fs::read_to_string(&log_path).unwrap_or_default().len();
    h.ok(&["restore", "lazy", "--pages", pages]);
    let done = wait_until(Duration::from_secs(60), || {
        !file_in(&h, "lazy", "/root/result").is_empty()
    });
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let log = log.get(before..).unwrap_or_default().to_string();
    assert!(
        done,
        "no result; console: {}; supervisor: {log}",
        h.ok(&["logs", "lazy"])
    );
    // The user's checkpoint is restored from, never consumed.
    assert!(
        fs::read(&image).unwrap_or_default() == stored,
        "the restore changed {}",
        image.display()
    );
    (file_in(&h, "lazy", "/root/result").trim().to_string(), log)
}

/// The one checkpoint directory of `name`.
fn only_checkpoint(h: &TestHost, name: &str) -> std::path::PathBuf {
    let dir = h.root.join("checkpoints").join(name);
    let found: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[test]
fn memory_filled_after_the_resume_survives_fork_mremap_and_dontneed() {
    let (result, log) = round_trip("lazy");
    assert_eq!(result, "PASS", "supervisor: {log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("lazy pages:"))
        .unwrap_or_else(|| panic!("the restore did not fill pages lazily: {log}"));
    assert!(line.contains(" 0 errors"), "{line}");
    assert!(line.contains(" 0 KiB of the page store freed"), "{line}");
    assert!(!line.contains("(0 faults"), "no fault was served: {line}");
    // The child was forked while the fill went on: its address space was
    // filled through the fork event's userfaultfd.
    assert!(
        !line.contains(" 0 forks"),
        "the fork came after the fill: {line}"
    );
}

#[test]
fn eager_pages_restore_the_same_program() {
    let (result, log) = round_trip("eager");
    assert_eq!(result, "PASS", "supervisor: {log}");
    assert!(!log.contains("lazy pages:"), "{log}");
}

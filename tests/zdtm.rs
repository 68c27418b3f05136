//! One process holding many kinds of kernel state (tests/programs/state.py:
//! memory with holes and copy-on-write file pages, a heap pattern, signal
//! handlers and masks, an itimer, file offsets, O_APPEND, a pipe with data,
//! cwd, umask, rlimits), checked by the program itself after a real
//! `cr checkpoint` and `cr restore`.

mod common;

use std::time::Duration;

use common::*;

const PROGRAM: &str = include_str!("programs/state.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_kind_of_state_survives_checkpoint_and_restore() {
    let h = TestHost::new();
    h.run(
        "state",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", PROGRAM],
    );
    assert!(
        wait_until(Duration::from_secs(20), || file_in(
            &h,
            "state",
            "/root/ready"
        ) == "1"),
        "the program did not get ready: {}",
        h.ok(&["logs", "state"])
    );
    h.ok(&["checkpoint", "state"]);
    assert_eq!(h.state("state"), "stopped");
    h.ok(&["restore", "state"]);
    h.exec("state", &["touch", "/root/go"]);
    assert!(
        wait_until(Duration::from_secs(10), || !file_in(
            &h,
            "state",
            "/root/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", "state"])
    );
    assert_eq!(file_in(&h, "state", "/root/result").trim(), "PASS");
}

#[test]
fn the_checks_fail_without_a_restore_of_that_state() {
    // The program's checks can fail: a fresh start of it in a container whose
    // state files already exist (so it runs its checks at once) against
    // values it never set does not pass.
    let h = TestHost::new();
    let broken = PROGRAM.replace("anon[i * 4096:i * 4096 + 8] = (b\"page%04d\" % i)", "pass");
    h.run(
        "bad",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", &broken],
    );
    assert!(wait_until(Duration::from_secs(20), || file_in(
        &h,
        "bad",
        "/root/ready"
    ) == "1"));
    h.exec("bad", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(10), || !file_in(
        &h,
        "bad",
        "/root/result"
    )
    .is_empty()));
    assert!(file_in(&h, "bad", "/root/result").starts_with("FAIL: anon page 0"));
}

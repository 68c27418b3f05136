//! Process state beyond memory and files, zdtm-style: a python program
//! (tests/programs/*.py, after the shared head zdtm_lib.py) sets the state
//! up as the container's PID 1, writes /crtest/ready, waits for
//! /crtest/go, checks everything byte for byte and writes PASS or
//! FAIL: <what> to /crtest/result. Between ready and go: a real
//! `cr checkpoint` (the container stops) and `cr restore`.

mod common;

use std::time::Duration;

use common::*;

const LIB: &str = include_str!("programs/zdtm_lib.py");

fn program(body: &str) -> String {
    format!("{LIB}\n{body}")
}

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `body` in container `name`, checkpoints and restores it, lets it
/// check, and returns its result line.
fn checkpoint_restore_check(h: &TestHost, name: &str, body: &str) -> String {
    h.run_python_until(name, &program(body), "/crtest/ready");
    h.ok(&["checkpoint", name]);
    assert_eq!(h.state(name), "stopped");
    h.ok(&["restore", name]);
    h.exec(name, &["touch", "/crtest/go"]);
    assert!(
        wait_until(Duration::from_secs(15), || !file_in(
            h,
            name,
            "/crtest/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", name])
    );
    file_in(h, name, "/crtest/result").trim().to_string()
}

/// Runs `body` without checkpoint: go at once. Its checks must fail when
/// they meet state nobody restored (`break_it` replaces part of `body`).
fn fresh_check(h: &TestHost, name: &str, body: &str) -> String {
    h.run_python_until(name, &program(body), "/crtest/ready");
    h.exec(name, &["touch", "/crtest/go"]);
    assert!(wait_until(Duration::from_secs(15), || !file_in(
        h,
        name,
        "/crtest/result"
    )
    .is_empty()));
    file_in(h, name, "/crtest/result").trim().to_string()
}

#[test]
fn pending_signals_come_back_with_their_siginfo() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "sigs", include_str!("programs/signals.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn the_signal_checks_can_fail() {
    let h = TestHost::new();
    let body = include_str!("programs/signals.py").replace("sival_int=12", "sival_int=13");
    let r = fresh_check(&h, "sigs-bad", &body);
    assert!(r.starts_with("FAIL: second rt signal"), "{r}");
}

#[test]
fn posix_timers_come_back_with_their_ids_and_times() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "timers", include_str!("programs/timers.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn non_root_credentials_come_back_per_thread() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "creds", include_str!("programs/creds.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn scheduling_policies_and_nice_come_back_per_thread() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "sched", include_str!("programs/sched.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn a_stopped_child_comes_back_stopped_and_continues_on_sigcont() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "stopped", include_str!("programs/stopped.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn descriptors_1000_and_4000_come_back() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "highfd", include_str!("programs/highfd.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn more_files_than_half_the_descriptor_limit_come_back() {
    // The restorer's table of files overlaps the numbers it places.
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "manyfds", include_str!("programs/manyfds.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn zombies_come_back_with_their_exit_status() {
    let h = TestHost::new();
    let r = checkpoint_restore_check(&h, "zombie", include_str!("programs/zombie.py"));
    assert_eq!(r, "PASS");
}

#[test]
fn a_stopped_child_stays_stopped_when_the_container_is_left_running() {
    let h = TestHost::new();
    h.run_python_until(
        "stopped-lr",
        &program(include_str!("programs/stopped.py")),
        "/crtest/ready",
    );
    h.ok(&["checkpoint", "stopped-lr", "--leave-running"]);
    assert_eq!(h.state("stopped-lr"), "running");
    h.exec("stopped-lr", &["touch", "/crtest/go"]);
    assert!(
        wait_until(Duration::from_secs(15), || !file_in(
            &h,
            "stopped-lr",
            "/crtest/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", "stopped-lr"])
    );
    assert_eq!(file_in(&h, "stopped-lr", "/crtest/result").trim(), "PASS");
}

//! Event objects (eventfd, epoll, signalfd, timerfd, inotify) across a real
//! `cr checkpoint` + `cr restore`, zdtm-style: one python program per kind
//! (tests/programs/events/) sets its objects up, writes /root/ready, waits
//! for /root/go, checks every one of them exactly and writes PASS or
//! FAIL: <what> to /root/result. fanotify must be refused before the freeze.

mod common;

use std::time::Duration;

use common::*;

const PRELUDE: &str = include_str!("programs/events/prelude.py");

fn program(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_result(h: &TestHost, name: &str, secs: u64) -> String {
    assert!(
        wait_until(Duration::from_secs(secs), || !file_in(
            h,
            name,
            "/root/result"
        )
        .is_empty()),
        "no result from {name}; console: {}",
        h.ok(&["logs", name])
    );
    file_in(h, name, "/root/result").trim().to_string()
}

/// Runs `body` in a container, checkpoints it (stopping it), waits `away`,
/// restores it, lets the program check, and returns its verdict.
fn checkpoint_restore(h: &TestHost, name: &str, body: &str, away: Duration) -> String {
    h.run_python_until(name, &program(body), "/root/ready");
    h.ok(&["checkpoint", name]);
    assert_eq!(h.state(name), "stopped");
    std::thread::sleep(away);
    h.ok(&["restore", name]);
    h.exec(name, &["touch", "/root/go"]);
    wait_for_result(h, name, 20)
}

#[test]
fn eventfd_counter_semaphore_and_flags() {
    let h = TestHost::new();
    let body = include_str!("programs/events/eventfd.py");
    assert_eq!(checkpoint_restore(&h, "evfd", body, Duration::ZERO), "PASS");
}

#[test]
fn epoll_interest_list_with_every_kind_of_target() {
    let h = TestHost::new();
    let body = include_str!("programs/events/epoll.py");
    assert_eq!(
        checkpoint_restore(&h, "epoll", body, Duration::ZERO),
        "PASS"
    );
}

#[test]
fn epoll_item_whose_file_is_open_only_in_another_process() {
    let h = TestHost::new();
    let body = include_str!("programs/events/epoll_shared.py");
    assert_eq!(
        checkpoint_restore(&h, "epshare", body, Duration::ZERO),
        "PASS"
    );
}

#[test]
fn the_checks_fail_on_state_a_restore_did_not_produce() {
    // Without a checkpoint the inotify program's queued event is still
    // there and the timerfd program was never away: both must say FAIL.
    let h = TestHost::new();
    for (name, body, want) in [
        (
            "inot-nocr",
            include_str!("programs/events/inotify.py"),
            "FAIL: queued events were dropped",
        ),
        (
            "tfd-nocr",
            include_str!("programs/events/timerfd.py"),
            "FAIL: the container was away at least 3 s",
        ),
    ] {
        h.run_python_until(name, &program(body), "/root/ready");
        h.exec(name, &["touch", "/root/go"]);
        let result = wait_for_result(&h, name, 20);
        assert!(result.starts_with(want), "{name}: {result}");
    }
}

#[test]
fn signalfd_mask_flags_and_signals_after_restore() {
    let h = TestHost::new();
    let body = include_str!("programs/events/signalfd.py");
    h.run_python_until("sigfd", &program(body), "/root/ready");
    h.ok(&["checkpoint", "sigfd"]);
    h.ok(&["restore", "sigfd"]);
    h.exec("sigfd", &["touch", "/root/go"]);
    assert!(
        wait_until(Duration::from_secs(10), || !file_in(
            &h,
            "sigfd",
            "/root/want-usr2"
        )
        .is_empty()),
        "the program did not get to its SIGUSR2 check: {}",
        file_in(&h, "sigfd", "/root/result")
    );
    h.exec("sigfd", &["kill", "-USR2", "1"]);
    h.exec("sigfd", &["touch", "/root/sent"]);
    assert_eq!(wait_for_result(&h, "sigfd", 10), "PASS");
}

#[test]
fn timerfd_time_left_interval_ticks_and_clocks() {
    let h = TestHost::new();
    let body = include_str!("programs/events/timerfd.py");
    // Away 3 s: a monotonic timer must not count them.
    assert_eq!(
        checkpoint_restore(&h, "tfd", body, Duration::from_secs(3)),
        "PASS"
    );
}

#[test]
fn inotify_watches_by_path_and_mask() {
    let h = TestHost::new();
    let body = include_str!("programs/events/inotify.py");
    assert_eq!(checkpoint_restore(&h, "inot", body, Duration::ZERO), "PASS");
}

#[test]
fn a_python_event_loop_idle_in_epoll_wait_is_woken_after_restore() {
    let h = TestHost::new();
    let body = include_str!("programs/events/event_loop.py");
    h.run_python_until("loop", &program(body), "/root/ready");
    // Let it reach epoll_wait.
    std::thread::sleep(Duration::from_millis(500));
    h.ok(&["checkpoint", "loop"]);
    h.ok(&["restore", "loop"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        file_in(&h, "loop", "/root/result").is_empty(),
        "the loop woke up by itself: {}",
        file_in(&h, "loop", "/root/result")
    );
    let fd = file_in(&h, "loop", "/root/fds");
    let fd = fd.trim();
    h.exec(
        "loop",
        &["sh", "-c", &format!("echo ping > /proc/1/fd/{fd}")],
    );
    assert_eq!(wait_for_result(&h, "loop", 10), "PASS");
}

#[test]
fn fanotify_is_refused_before_the_freeze() {
    let h = TestHost::new();
    let body = include_str!("programs/events/fanotify.py");
    h.run_python_until("fan", &program(body), "/root/ready");
    let fd = file_in(&h, "fan", "/root/fanotify-fd");
    let err = h.fails(&["checkpoint", "fan"]);
    assert!(
        err.contains(&format!("fd {} is a fanotify group", fd.trim()))
            && err.contains("process 1 (python3)")
            && err.contains("was not frozen and keeps running"),
        "unexpected refusal: {err}"
    );
    assert_eq!(h.state("fan"), "running");
    // It really kept running, unfrozen, with its fanotify group working.
    h.exec("fan", &["touch", "/root/go"]);
    assert_eq!(wait_for_result(&h, "fan", 10), "PASS");
}

//! Memory and file kinds beyond private memory, each set up by a small
//! python program (tests/programs/memkinds/), checked by the program itself
//! after a real `cr checkpoint` and `cr restore` (zdtm-style: ready marker,
//! go marker, PASS or FAIL: <what>): shared anonymous memory and memfds
//! shared by a parent and its child, a writable shared file mapping, deleted
//! files (open and mapped), a FIFO with data between two processes, flock,
//! POSIX and OFD locks. A partly unmapped SysV segment is refused before
//! the freeze (whole attachments: tests/ipc.rs).

mod common;

use std::time::Duration;

use common::*;

const PRELUDE: &str = include_str!("programs/memkinds/prelude.py");

fn program(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `body` as PID 1, checkpoints (the container stops), restores, lets
/// the program check itself, and asserts that it passed.
fn round_trip(name: &str, body: &str) {
    let h = TestHost::new();
    h.run_python_until(name, &program(body), "/root/ready");
    h.ok(&["checkpoint", name]);
    assert_eq!(h.state(name), "stopped");
    h.ok(&["restore", name]);
    h.exec(name, &["touch", "/root/go"]);
    assert!(
        wait_until(Duration::from_secs(20), || !file_in(
            &h,
            name,
            "/root/result"
        )
        .is_empty()),
        "no result; console: {}",
        h.ok(&["logs", name])
    );
    assert_eq!(
        file_in(&h, name, "/root/result").trim(),
        "PASS",
        "console: {}",
        h.ok(&["logs", name])
    );
}

#[test]
fn shared_anonymous_memory_and_memfds_stay_shared() {
    round_trip("shmem", include_str!("programs/memkinds/shared_memory.py"));
}

#[test]
fn writable_shared_file_mapping_keeps_its_data_in_the_file() {
    round_trip(
        "sharedfile",
        include_str!("programs/memkinds/shared_file.py"),
    );
}

#[test]
fn deleted_files_come_back_with_contents_and_stay_deleted() {
    round_trip("deleted", include_str!("programs/memkinds/deleted.py"));
}

#[test]
fn fifo_with_data_between_two_processes() {
    round_trip("fifo", include_str!("programs/memkinds/fifo.py"));
}

#[test]
fn flock_posix_and_ofd_locks_are_held_after_restore() {
    round_trip("locks", include_str!("programs/memkinds/locks.py"));
}

#[test]
fn the_checks_fail_when_the_state_is_not_there() {
    // The shared memory program run without a checkpoint, its go marker
    // given before the child's writes can show, against pages it never
    // wrote: it must report a failure, not PASS.
    let h = TestHost::new();
    let broken = include_str!("programs/memkinds/shared_memory.py")
        .replace("shm[i * PAGE:i * PAGE + 8] = b\"shm%05d\" % i", "pass");
    h.run_python_until("bad", &program(&broken), "/root/ready");
    h.exec("bad", &["touch", "/root/go"]);
    assert!(wait_until(Duration::from_secs(20), || !file_in(
        &h,
        "bad",
        "/root/result"
    )
    .is_empty()));
    assert!(
        file_in(&h, "bad", "/root/result").starts_with("FAIL: shm page 0"),
        "{}",
        file_in(&h, "bad", "/root/result")
    );
}

#[test]
fn a_partial_sysv_attachment_is_refused_before_the_freeze() {
    let h = TestHost::new();
    let body = r#"
import ctypes
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 8192, 0o1600)
addr = libc.shmat(shmid, None, 0)
ctypes.memset(addr, 7, 16)
libc.munmap(ctypes.c_void_p(addr + 4096), 4096)
ready()
forever()
"#;
    h.run_python_until("sysv", &program(body), "/root/ready");
    let err = h.fails(&["checkpoint", "sysv"]);
    assert!(
        err.contains("SysV shared memory") && err.contains("process 1"),
        "{err}"
    );
    assert_eq!(h.state("sysv"), "running");
}

#[test]
fn leases_and_large_deleted_files_are_refused_before_the_freeze() {
    let h = TestHost::new();
    let lease = r#"
fd = os.open("/root/leased", os.O_RDONLY | os.O_CREAT)
fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE
ready()
forever()
"#;
    h.run_python_until("lease", &program(lease), "/root/ready");
    let err = h.fails(&["checkpoint", "lease"]);
    assert!(
        err.contains("process 1") && err.contains("LEASE") && err.contains("/root/leased"),
        "{err}"
    );
    assert_eq!(h.state("lease"), "running");

    let big = r#"
fd = os.open("/root/big", os.O_RDWR | os.O_CREAT)
os.write(fd, b"x" * (33 << 20))
os.unlink("/root/big")
ready()
forever()
"#;
    h.run_python_until("bigdeleted", &program(big), "/root/ready");
    let err = h.fails(&["checkpoint", "bigdeleted"]);
    assert!(
        err.contains("process 1") && err.contains("deleted file /root/big"),
        "{err}"
    );
    assert_eq!(h.state("bigdeleted"), "running");
}

//! The IPC namespace, zdtm-style (tests/programs/ipc.py after
//! zdtm_lib.py): SysV shared memory segments, a semaphore set, message
//! queues and POSIX message queues (one held open by a descriptor) are set
//! up, checkpointed and restored for real, and checked byte for byte by the
//! program: ids, keys, modes, sizes, contents, values, messages in order.
//! What cr does not move (attached segments, queues with a notification)
//! is refused before the freeze, and the container keeps running.

mod common;

use std::time::Duration;

use common::*;

const LIB: &str = include_str!("programs/zdtm_lib.py");
const IPC: &str = include_str!("programs/ipc.py");

fn program(body: &str) -> String {
    format!("{LIB}\n{body}")
}

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn go_and_result(h: &TestHost, name: &str) -> String {
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

/// `/proc/sysvipc/*` as the container sees it, without the time columns
/// and the pids of the last operations.
fn sysvipc(h: &TestHost, name: &str) -> String {
    let mut out = String::new();
    for (kind, keep) in [("shm", 8), ("sem", 7), ("msg", 6)] {
        let text = file_in(h, name, &format!("/proc/sysvipc/{kind}"));
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            out.push_str(&format!(
                "{kind} {}\n",
                cols[..keep.min(cols.len())].join(" ")
            ));
        }
    }
    out
}

#[test]
fn ipc_objects_come_back_with_their_ids_and_contents() {
    let h = TestHost::new();
    h.run_python_until("ipc", &program(IPC), "/crtest/ready");
    let before = sysvipc(&h, "ipc");
    assert!(before.contains("shm 4660 "), "{before}");
    h.ok(&["checkpoint", "ipc"]);
    assert_eq!(h.state("ipc"), "stopped");
    h.ok(&["restore", "ipc"]);
    let after = sysvipc(&h, "ipc");
    // key, id, perms, size / nsems / cbytes qnum, owner columns.
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                match c[0] {
                    // shm: key shmid perms size cpid lpid nattch -> drop pids
                    "shm" => format!("{} {} {} {} {} {}", c[0], c[1], c[2], c[3], c[4], c[7]),
                    "sem" => c[..5].join(" "),
                    // msg: key msqid perms cbytes qnum
                    _ => c[..6].join(" "),
                }
            })
            .collect()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "before:\n{before}\nafter:\n{after}"
    );
    assert_eq!(go_and_result(&h, "ipc"), "PASS");
}

#[test]
fn the_ipc_checks_can_fail() {
    // Without the semaphore values, the same program fails.
    let h = TestHost::new();
    let body = IPC.replace("ok(libc.semctl(sem, 0, SETALL, vals), \"SETALL\")", "pass");
    h.run_python_until("ipc-bad", &program(&body), "/crtest/ready");
    let r = go_and_result(&h, "ipc-bad");
    assert!(r.starts_with("FAIL: sem values"), "{r}");
}

/// Checkpoint must refuse, naming the object, and leave the container
/// running with its state.
fn refused(h: &TestHost, name: &str, setup: &str, expect: &[&str]) {
    let body = format!("{setup}\nready()\nwait_go()\nresult()\n");
    h.run_python_until(name, &program(&body), "/crtest/ready");
    let err = h.fails(&["checkpoint", name]);
    for e in expect {
        assert!(err.contains(e), "refusal {err:?} does not name {e:?}");
    }
    assert_eq!(h.state(name), "running");
    assert_eq!(go_and_result(h, name), "PASS");
}

#[test]
fn a_partly_unmapped_sysv_segment_is_refused_before_the_freeze() {
    let h = TestHost::new();
    refused(
        &h,
        "shm-part",
        "libc.shmat.restype = ctypes.c_void_p\n\
         shm = libc.shmget(0x4242, 3 * 4096, 0o1000 | 0o600)\n\
         addr = libc.shmat(shm, None, 0)\n\
         ctypes.memmove(addr, b'attached', 8)\n\
         libc.munmap(ctypes.c_void_p(addr + 8192), 4096)",
        &[
            "SysV shared memory",
            "process 1",
            "only part of its 12288 bytes",
            "not frozen",
        ],
    );
}

#[test]
fn a_posix_queue_with_a_notification_is_refused_before_the_freeze() {
    let h = TestHost::new();
    refused(
        &h,
        "mq-notify",
        "class Sigevent(ctypes.Structure):\n\
         \x20   _fields_ = [('value', ctypes.c_long), ('signo', ctypes.c_int), ('notify', ctypes.c_int), ('pad', ctypes.c_int * 12)]\n\
         mq = libc.mq_open(b'/notified', os.O_CREAT | os.O_RDWR, 0o600, None)\n\
         ev = Sigevent(0, signal.SIGUSR1, 0)\n\
         signal.signal(signal.SIGUSR1, lambda s, f: None)\n\
         assert libc.mq_notify(mq, ctypes.byref(ev)) == 0, ctypes.get_errno()",
        &["/notified", "notification", "not frozen"],
    );
}

#[test]
fn an_unlinked_posix_queue_held_open_is_refused_before_the_freeze() {
    let h = TestHost::new();
    refused(
        &h,
        "mq-unlinked",
        "mq = libc.mq_open(b'/unlinked', os.O_CREAT | os.O_RDWR, 0o600, None)\n\
         assert mq >= 0 and libc.mq_unlink(b'/unlinked') == 0",
        &["process 1", "/unlinked", "mq_unlink", "not frozen"],
    );
}

#[test]
fn sysv_segments_attached_by_a_parent_and_its_child_come_back() {
    let h = TestHost::new();
    let body = program(include_str!("programs/ipc_attach.py"));
    h.run_python_until("attach", &body, "/crtest/ready");
    h.ok(&["checkpoint", "attach"]);
    assert_eq!(h.state("attach"), "stopped");
    h.ok(&["restore", "attach"]);
    assert_eq!(go_and_result(&h, "attach"), "PASS");
}

#[test]
fn the_attachment_checks_can_fail() {
    // The child writes nothing after restore: the parent's check fails.
    let h = TestHost::new();
    let body = include_str!("programs/ipc_attach.py").replace(
        "ctypes.memmove(a_shared + 4096, b\"child after restore\", 19)",
        "pass",
    );
    h.run_python_until("attach-bad", &program(&body), "/crtest/ready");
    let r = go_and_result(&h, "attach-bad");
    assert!(
        r.starts_with("FAIL: write by the child after restore"),
        "{r}"
    );
}

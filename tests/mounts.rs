//! The container's mount namespace and UTS names, zdtm-style:
//! tests/programs/mounts.py (after the shared head zdtm_lib.py) writes
//! files in /tmp and /dev/shm, mounts a tmpfs with size= and files, a bind
//! mount, a read-only remount and a second proc, changes the hostname and
//! domain name, writes /crtest/ready, waits for /crtest/go and checks all
//! of it (contents, modes, owners, mountinfo options, order) after a real
//! `cr checkpoint` + `cr restore`. Mounts cr cannot rebuild are refused
//! before the freeze, naming the mount point, and the container runs on.

mod common;

use std::time::Duration;

use common::*;

const LIB: &str = include_str!("programs/zdtm_lib.py");
const BODY: &str = include_str!("programs/mounts.py");

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn result_of(h: &TestHost, name: &str) -> String {
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

#[test]
fn mounts_tmpfs_files_and_hostname_survive_checkpoint_and_restore() {
    let h = TestHost::new();
    h.run_python_until("mnt", &format!("{LIB}\n{BODY}"), "/crtest/ready");
    h.ok(&["checkpoint", "mnt"]);
    assert_eq!(h.state("mnt"), "stopped");
    h.ok(&["restore", "mnt"]);
    assert_eq!(result_of(&h, "mnt"), "PASS");
}

#[test]
fn the_mount_checks_can_fail() {
    // Without a checkpoint, state changed behind the program's back after
    // ready is reported.
    let h = TestHost::new();
    h.run_python_until("mnt-bad", &format!("{LIB}\n{BODY}"), "/crtest/ready");
    h.exec("mnt-bad", &["rm", "/tmp/note"]);
    h.exec("mnt-bad", &["umount", "/srv/b"]);
    h.exec("mnt-bad", &["hostname", "other"]);
    let r = result_of(&h, "mnt-bad");
    assert!(r.starts_with("FAIL: /tmp/note"), "{r}");
    assert!(r.contains("mount /srv/b"), "{r}");
    assert!(r.contains("hostname"), "{r}");
}

/// Mounts `what` in a running busybox container, checks that `cr
/// checkpoint` refuses naming `mount_point`, that the container still runs
/// unchanged and that no image was left.
fn refused(h: &TestHost, name: &str, setup: &str, mount_point: &str) {
    h.run(
        name,
        TestImage::Busybox,
        None,
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo alive > /tmp/alive; while true; do sleep 1; done",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || file_in(
        h,
        name,
        "/tmp/alive"
    ) == "alive\n"));
    h.exec(name, &["/bin/sh", "-c", setup]);
    let err = h.fails(&["checkpoint", name]);
    assert!(err.contains(mount_point), "{err}");
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(h.state(name), "running");
    assert_eq!(file_in(h, name, "/tmp/alive"), "alive\n");
    let list = h.ok(&["checkpoint", "list", name, "--json"]);
    assert_eq!(list.trim(), "[]", "an image was left");
    h.exec(name, &["/bin/sh", "-c", "echo again > /tmp/alive"]);
    assert_eq!(file_in(h, name, "/tmp/alive"), "again\n");
}

#[test]
fn a_bind_of_a_proc_file_is_refused_before_the_freeze() {
    let h = TestHost::new();
    refused(
        &h,
        "procbind",
        "touch /root/status && mount --bind /proc/1/status /root/status",
        "/root/status",
    );
}

#[test]
fn a_second_overlay_is_refused_before_the_freeze() {
    let h = TestHost::new();
    refused(
        &h,
        "ovl",
        "mkdir -p /srv/l1 /srv/l2 /srv/o && mount -t overlay overlay -o lowerdir=/srv/l1:/srv/l2 /srv/o",
        "/srv/o",
    );
}

#[test]
fn tmp_files_of_a_user_namespace_container_keep_their_owners() {
    let h = TestHost::new();
    h.run(
        "umnt",
        TestImage::Busybox,
        None,
        &["--userns"],
        &[
            "/bin/sh",
            "-c",
            "echo kept > /tmp/f; chown 1000:1001 /tmp/f; chmod 640 /tmp/f; echo shm > /dev/shm/s; while true; do sleep 1; done",
        ],
    );
    let stat = |h: &TestHost| h.exec("umnt", &["stat", "-c", "%u:%g %a", "/tmp/f"]);
    assert!(wait_until(Duration::from_secs(10), || file_in(
        &h,
        "umnt",
        "/dev/shm/s"
    ) == "shm\n"));
    let before = stat(&h);
    assert_eq!(before.trim(), "1000:1001 640");
    h.ok(&["checkpoint", "umnt"]);
    h.ok(&["restore", "umnt"]);
    assert_eq!(stat(&h), before);
    assert_eq!(file_in(&h, "umnt", "/tmp/f"), "kept\n");
    assert_eq!(file_in(&h, "umnt", "/dev/shm/s"), "shm\n");
}

#[test]
fn a_time_namespace_is_refused_before_the_freeze() {
    let h = TestHost::new();
    let script = format!(
        "{LIB}\n\
if libc.unshare(0x80) != 0:\n    raise OSError(ctypes.get_errno(), 'unshare(CLONE_NEWTIME)')\n\
if os.fork() == 0:\n    while True:\n        time.sleep(1)\n\
ready()\nwait_go()\nresult()\n"
    );
    h.run_python_until("timens", &script, "/crtest/ready");
    let err = h.fails(&["checkpoint", "timens"]);
    assert!(err.contains("time namespace"), "{err}");
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(h.state("timens"), "running");
    assert_eq!(
        h.ok(&["checkpoint", "list", "timens", "--json"]).trim(),
        "[]"
    );
    assert_eq!(result_of(&h, "timens"), "PASS");
}

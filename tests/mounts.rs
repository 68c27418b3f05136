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

const TIMENS: &str = include_str!("programs/timens.py");

/// The host pid of the process whose pid in container `name` is `pid`,
/// found among the descendants of its PID 1.
fn host_pid_in(h: &TestHost, name: &str, pid: i32) -> i32 {
    let init = h.status_json(name)["pid"].as_i64().expect("pid of PID 1") as i32;
    let mut todo = vec![init];
    while let Some(p) = todo.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ns_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last().map(str::to_string));
        if ns_pid == Some(pid.to_string()) {
            return p;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    panic!("no process {pid} in container {name}");
}

/// Writes the offsets of the time namespace the program announced in
/// /crtest/TAG (its maker's pid), as root on the host (the container has no
/// CAP_SYS_TIME), then tells it they are written.
fn write_offsets(h: &TestHost, name: &str, tag: &str, offsets: &[&str]) {
    let path = format!("/crtest/{tag}");
    assert!(
        wait_until(Duration::from_secs(10), || !file_in(h, name, &path)
            .is_empty()),
        "{name} did not make {tag}: {}",
        h.ok(&["logs", name])
    );
    let pid: i32 = file_in(h, name, &path).trim().parse().expect("pid");
    let host = host_pid_in(h, name, pid);
    for line in offsets {
        std::fs::write(format!("/proc/{host}/timens_offsets"), line).expect("timens_offsets");
    }
    h.exec(name, &["touch", &format!("{path}.done")]);
}

/// Starts the time namespace program and writes both namespaces' offsets.
fn run_timens(h: &TestHost, name: &str, body: &str) {
    h.run(
        name,
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", &format!("{LIB}\n{body}")],
    );
    write_offsets(
        h,
        name,
        "T",
        &["monotonic 86400 123\n", "boottime 172800 456\n"],
    );
    write_offsets(
        h,
        name,
        "T2",
        &["monotonic 1000 0\n", "boottime 3000 999999999\n"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || file_in(
            h,
            name,
            "/crtest/ready"
        ) == "1"),
        "{name} not ready: {}",
        h.ok(&["logs", name])
    );
}

#[test]
fn time_namespaces_keep_their_offsets_and_members_across_checkpoint_and_restore() {
    let h = TestHost::new();
    run_timens(&h, "timens", TIMENS);
    let summary: serde_json::Value =
        serde_json::from_str(&h.ok(&["checkpoint", "timens", "--json"])).expect("json");
    assert_eq!(h.state("timens"), "stopped");
    let image = summary["image"].as_str().expect("image path");
    let shown = h.ok(&["inspect", image]);
    assert!(
        shown.contains(
            "monotonic 86400.000000123 s, boottime 172800.000000456 s, made by process 1"
        ),
        "{shown}"
    );
    assert!(
        shown.contains(
            "monotonic 1000.000000000 s, boottime 3000.999999999 s, made by the restorer"
        ),
        "{shown}"
    );
    h.ok(&["restore", "timens"]);
    assert_eq!(result_of(&h, "timens"), "PASS");
}

#[test]
fn the_time_namespace_checks_can_fail() {
    // Expecting other offsets than the ones written is reported.
    let h = TestHost::new();
    let body = TIMENS.replace(
        "EXPECT_T = T_OFFSETS",
        "EXPECT_T = [(\"monotonic\", 86401, 123), (\"boottime\", 172800, 456)]",
    );
    assert_ne!(body, TIMENS);
    run_timens(&h, "timens-bad", &body);
    let r = result_of(&h, "timens-bad");
    assert!(r.starts_with("FAIL: C offsets as expected"), "{r}");
    assert!(r.contains("C monotonic"), "{r}");
    assert!(!r.contains("boottime:"), "{r}");
}

#[test]
fn a_process_that_joined_a_time_namespace_beside_its_maker_is_refused_before_the_freeze() {
    // PID 1 forks A, A forks Q (both in the container's time namespace);
    // PID 1 then makes T and Q joins it with setns: Q is in T without
    // being born there, and T's maker is alive, so restore could not put
    // Q back (T exists only once PID 1's husk has made it).
    let h = TestHost::new();
    let script = format!(
        r#"{LIB}
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.read(r, 1)
        fd = os.open("/proc/1/ns/time_for_children", os.O_RDONLY)
        if libc.setns(fd, 0x80) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
        open("/crtest/joined", "w").write("1")
    while True:
        time.sleep(1)
if libc.unshare(0x80) != 0:
    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWTIME)")
if os.fork() == 0:
    while True:
        time.sleep(1)
os.write(w, b"g")
while not os.path.exists("/crtest/joined"):
    time.sleep(0.02)
ready()
wait_go()
result()
"#
    );
    h.run_python_until("timens-join", &script, "/crtest/ready");
    let err = h.fails(&["checkpoint", "timens-join"]);
    assert!(
        err.contains("time namespace that process 1 made without being born into it"),
        "{err}"
    );
    assert!(err.contains("keeps running"), "{err}");
    assert_eq!(h.state("timens-join"), "running");
    assert_eq!(
        h.ok(&["checkpoint", "list", "timens-join", "--json"])
            .trim(),
        "[]"
    );
    assert_eq!(result_of(&h, "timens-join"), "PASS");
}

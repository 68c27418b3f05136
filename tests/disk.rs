//! Container disks on the real kernel: a container whose root is ext4 on a
//! loop device over the disk server's FUSE file, its snapshots, merge,
//! grow, the server killed during fsync'ed writes, and `cr disk check` on
//! corrupt chains. Every loop device and mount a test makes is removed by a
//! guard; the TestHost destroys the containers (which stops their servers).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SLEEP: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 1; done",
];

/// A flat image attached read-write to a loop device and mounted read-only
/// (ext4 replays its journal into the private copy): detached on drop.
struct MountedImage {
    device: String,
    dir: PathBuf,
}

impl MountedImage {
    fn new(image: &Path, dir: PathBuf) -> Self {
        let out = Command::new("losetup")
            .args(["--show", "-f"])
            .arg(image)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let guard = MountedImage { device, dir };
        fs::create_dir_all(&guard.dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "ext4", "-o", "ro", &guard.device])
            .arg(&guard.dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting {}", image.display());
        guard
    }

    /// The names at the top of the filesystem, without the standard ones.
    fn user_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("user-"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn disk_list(h: &TestHost, name: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&h.ok(&["disk", "list", name, "--json"])).expect("disk list json")
}

fn snapshot(h: &TestHost, name: &str, label: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["disk", "snapshot", name, "--label", label, "--json"]))
            .expect("snapshot json");
    v["snapshot"].as_str().expect("snapshot id").to_string()
}

/// The loop devices serving `name`'s disk.
fn loops_of(h: &TestHost, name: &str) -> Vec<String> {
    let file = h
        .root
        .join("containers")
        .join(name)
        .join("disk/mnt/disk.img");
    let out = Command::new("losetup")
        .args(["-j"])
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next().map(String::from))
        .collect()
}

fn fuse_mounted(h: &TestHost, name: &str) -> bool {
    let mnt = h.root.join("containers").join(name).join("disk/mnt");
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
}

#[test]
fn snapshots_show_their_moment_and_merge_keeps_the_view() {
    let h = TestHost::new();
    h.run("snap", TestImage::Busybox, None, &["--disk", "256M"], SLEEP);
    assert_eq!(
        loops_of(&h, "snap").len(),
        1,
        "one loop device serves the disk"
    );
    let st = h.status_json("snap");
    assert_eq!(st["disk"]["server"]["state"], "running", "{st}");
    let df = h.exec("snap", &["df", "-k", "/"]);
    assert!(
        df.contains("/dev/loop"),
        "the root is the loop device: {df}"
    );

    h.exec("snap", &["sh", "-c", "echo one > /user-a && sync"]);
    let s1 = snapshot(&h, "snap", "after-a");
    h.exec(
        "snap",
        &["sh", "-c", "echo two > /user-b && rm /user-a && sync"],
    );
    let s2 = snapshot(&h, "snap", "after-b");
    h.exec("snap", &["sh", "-c", "echo three > /user-c"]);
    assert_eq!(disk_list(&h, "snap").len(), 3);

    // Dirty tracking: what is written after a mark, and only that.
    let mark = h.ok(&["disk", "mark", "snap"]).trim().to_string();
    h.exec(
        "snap",
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/user-d bs=1M count=4 conv=fsync 2>/dev/null",
        ],
    );
    let dirty = h.ok(&["disk", "dirty", "snap", "--since", &mark]);
    let since_mark = dirty.lines().count();
    let all = h
        .ok(&["disk", "dirty", "snap", "--since", "0"])
        .lines()
        .count();
    assert!(since_mark >= 4, "4 MiB written since the mark: {dirty}");
    assert!(since_mark < all, "{since_mark} of {all} clusters dirty");

    let work = h.root.join("work");
    fs::create_dir_all(&work).unwrap();
    let views = [
        (Some(&s1), vec!["user-a"]),
        (Some(&s2), vec!["user-b"]),
        (None, vec!["user-b", "user-c", "user-d"]),
    ];
    h.exec("snap", &["sync"]);
    for (i, (id, expected)) in views.iter().enumerate() {
        let image = work.join(format!("view{i}.img"));
        let mut args = vec!["disk", "export", "snap", image.to_str().unwrap()];
        if let Some(id) = id {
            args.extend(["--snapshot", id.as_str()]);
        }
        h.ok(&args);
        let m = MountedImage::new(&image, work.join(format!("m{i}")));
        assert_eq!(&m.user_files(), expected, "view {i} ({id:?})");
        if i == 0 {
            assert_eq!(fs::read_to_string(m.dir.join("user-a")).unwrap(), "one\n");
        }
    }

    // Merge the top into s2 only: s1 stays a snapshot, s2 is the top again.
    let before = h.exec("snap", &["sh", "-c", "md5sum /user-*"]);
    h.ok(&["disk", "merge", "snap", "--into", &s2]);
    let list = disk_list(&h, "snap");
    let ids: Vec<&str> = list.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [s1.as_str(), s2.as_str()], "{list:?}");
    assert_eq!(list[0]["read_only"], true, "{list:?}");
    assert_eq!(list[1]["read_only"], false, "{list:?}");
    assert_eq!(h.exec("snap", &["sh", "-c", "md5sum /user-*"]), before);
    let err = h.fails(&["disk", "merge", "snap", "--into", "nonsense"]);
    assert!(err.contains("not a delta id"), "{err}");

    // Merge online: one delta left, the same files and contents.
    h.ok(&["disk", "merge", "snap"]);
    assert_eq!(disk_list(&h, "snap").len(), 1);
    assert_eq!(h.exec("snap", &["sh", "-c", "md5sum /user-*"]), before);
    let check = h.ok(&["disk", "check", "snap"]);
    assert!(check.contains("consistent"), "{check}");
    // And after a restart (the page cache is gone, everything is read back).
    h.ok(&["stop", "snap"]);
    assert!(
        loops_of(&h, "snap").is_empty(),
        "the loop device is detached after stop"
    );
    assert!(
        !fuse_mounted(&h, "snap"),
        "the FUSE mount is gone after stop"
    );
    h.ok(&["start", "snap"]);
    assert_eq!(h.exec("snap", &["sh", "-c", "md5sum /user-*"]), before);
    h.ok(&["destroy", "snap"]);
    assert!(loops_of(&h, "snap").is_empty());
}

#[test]
fn grow_resizes_the_device_online_and_the_filesystem() {
    let h = TestHost::new();
    h.run("grow", TestImage::Busybox, None, &["--disk", "128M"], SLEEP);
    let df_kib = |h: &TestHost| -> u64 {
        let out = h.exec("grow", &["df", "-k", "/"]);
        out.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = df_kib(&h);
    let out = h.ok(&["disk", "grow", "grow", "384M"]);
    let list = disk_list(&h, "grow");
    assert_eq!(list[0]["virtual_size"], 384u64 << 20);
    // The block device grew while the container runs.
    let dev = loops_of(&h, "grow").pop().expect("loop device");
    let size = Command::new("blockdev")
        .args(["--getsize64", &dev])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (384u64 << 20).to_string()
    );
    if !out.contains("filesystem grown online") {
        // This host lacks CAP_SYS_RESOURCE (KERNEL.md): ext4 grows offline
        // at the next start, which the message must say.
        assert!(out.contains("grows at the next start"), "{out}");
        h.ok(&["stop", "grow"]);
        h.ok(&["start", "grow"]);
    }
    let after = df_kib(&h);
    assert!(
        after > before * 2,
        "df: {before} KiB before, {after} KiB after growing 128M to 384M"
    );
    // Shrinking is refused with a clear message.
    let err = h.fails(&["disk", "grow", "grow", "64M"]);
    assert!(err.contains("not shrink"), "{err}");
}

const WRITER: &str = r#"
import hashlib, os, time
if os.path.exists('/data/fsynced'):
    # Started again after the kill: only be there to be inspected.
    while True:
        time.sleep(1)
os.makedirs('/data', exist_ok=True)
log = os.open('/data/fsynced', os.O_WRONLY | os.O_CREAT | os.O_APPEND)
i = 0
while True:
    data = os.urandom(256 * 1024)
    name = '/data/f%d' % i
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.write(log, ('%s %s\n' % (name, hashlib.sha256(data).hexdigest())).encode())
        os.fsync(log)
    except OSError:
        pass
    if i == 20:
        open('/ready', 'w').close()
    i += 1
"#;

#[test]
fn killed_server_is_reported_and_fsynced_files_survive() {
    let h = TestHost::new();
    h.with_image(TestImage::Python);
    h.ok(&[
        "run",
        "crash",
        "--image",
        "python",
        "--disk",
        "256M",
        "--",
        "/usr/bin/python3",
        "-c",
        WRITER,
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || h
            .cr(&["exec", "crash", "--", "test", "-e", "/ready"])
            .status
            .success()),
        "the writer did not start: {}",
        h.ok(&["logs", "crash"])
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = h.status_json("crash")["disk"]["server"]["pid"]
        .as_i64()
        .expect("server pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // Detected and reported.
    assert!(
        wait_until(Duration::from_secs(10), || h.status_json("crash")["disk"]
            ["server"]["state"]
            == "dead"),
        "status does not show the dead server: {}",
        h.status_json("crash")
    );
    let log_path = h.root.join("containers/crash/supervisor.log");
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("disk server")),
        "the supervisor did not log the dead server"
    );
    let text = h.ok(&["status", "crash"]);
    assert!(text.contains("DEAD"), "{text}");
    let err = h.fails(&["disk", "snapshot", "crash"]);
    assert!(err.contains("died"), "{err}");

    h.ok(&["stop", "crash", "--time", "0"]);
    assert!(
        loops_of(&h, "crash").is_empty(),
        "loop device left after stop"
    );
    assert!(
        !fuse_mounted(&h, "crash"),
        "dead FUSE mount left after stop"
    );
    let check = h.cr(&["disk", "check", "crash"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "chain inconsistent after the kill: {report}"
    );

    // Every file whose line reached the fsync'ed log is intact.
    h.ok(&["start", "crash"]);
    let log = h.exec("crash", &["cat", "/data/fsynced"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.split(' ').count() == 2).collect();
    assert!(lines.len() >= 20, "only {} files were logged", lines.len());
    let sums = h.exec("crash", &["sh", "-c", "sha256sum /data/f*"]);
    for line in lines {
        let (name, sum) = line.split_once(' ').unwrap();
        assert!(
            sums.lines()
                .any(|l| l.starts_with(sum) && l.ends_with(name)),
            "{name} lost or changed after the kill (sha256 {sum})"
        );
    }
}

#[test]
fn check_reports_every_corrupt_input() {
    let h = TestHost::new();
    let image = h.with_image(TestImage::Busybox);
    h.ok(&[
        "create",
        "chk",
        "--image",
        image,
        "--disk",
        "128M",
        "--",
        "/bin/true",
    ]);
    let chain = h.root.join("containers/chk/disk/chain");
    let ok = h.ok(&["disk", "check", "chk"]);
    assert!(ok.contains("chk: consistent"), "{ok}");
    let delta = fs::read_dir(&chain)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "delta"))
        .unwrap();
    let ok = h.ok(&["disk", "check", delta.to_str().unwrap()]);
    assert!(ok.contains("consistent"), "{ok}");

    type Damage = fn(&Path, &Path);
    let cases: [(&str, Damage, &str); 5] = [
        (
            "truncated delta",
            |_, d| {
                let f = fs::OpenOptions::new().write(true).open(d).unwrap();
                f.set_len(3000).unwrap();
            },
            "delta",
        ),
        (
            "flipped manifest byte",
            |c, _| {
                let m = c.join("chain.manifest");
                let mut b = fs::read(&m).unwrap();
                let last = b.len() - 1;
                b[last] ^= 0xff;
                fs::write(&m, b).unwrap();
            },
            "manifest",
        ),
        (
            "both header copies damaged",
            |_, d| {
                let mut b = fs::read(d).unwrap();
                for x in &mut b[..8] {
                    *x ^= 0x55;
                }
                for x in &mut b[4096..4104] {
                    *x ^= 0x55;
                }
                fs::write(d, b).unwrap();
            },
            "header",
        ),
        (
            "missing delta file",
            |_, d| fs::remove_file(d).unwrap(),
            "No such file",
        ),
        (
            "manifest is garbage",
            |c, _| fs::write(c.join("chain.manifest"), b"not a manifest at all").unwrap(),
            "manifest",
        ),
    ];
    for (what, damage, needle) in cases {
        let copy = h.root.join(format!("case-{}", what.replace(' ', "-")));
        fs::create_dir_all(&copy).unwrap();
        for e in fs::read_dir(&chain).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
        }
        damage(&copy, &copy.join(delta.file_name().unwrap()));
        let out = h.cr(&["disk", "check", copy.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: check must fail: {text}"
        );
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("PROBLEM: "))
            .collect();
        assert!(!problems.is_empty(), "{what}: no problem reported: {text}");
        assert!(
            problems
                .iter()
                .any(|p| p.to_lowercase().contains(&needle.to_lowercase())),
            "{what}: the problems do not mention {needle:?}: {text}"
        );
    }
    // A path that does not exist, and a file that is no delta at all.
    let err = h.fails(&["disk", "check", "/nonexistent/chain"]);
    assert!(err.contains("/nonexistent/chain"), "{err}");
    let junk = h.root.join("junk.delta");
    fs::write(&junk, vec![7u8; 10000]).unwrap();
    let out = h.cr(&["disk", "check", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM: "));
    // Containers without a disk are refused with a hint.
    h.ok(&["create", "plain", "--image", image, "--", "/bin/true"]);
    let err = h.fails(&["disk", "list", "plain"]);
    assert!(err.contains("--disk"), "{err}");
}

/// A checkpoint of a container on a disk takes a snapshot while frozen;
/// restoring it puts the disk back to that moment, so the files match the
/// memory even when the container ran on (and wrote) after the checkpoint.
#[test]
fn a_checkpoint_records_the_disk_and_restore_matches_files_and_memory() {
    let h = TestHost::new();
    h.run(
        "ck",
        TestImage::Busybox,
        None,
        &["--disk", "128M"],
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done",
        ],
    );
    let count = || -> u64 {
        h.exec("ck", &["cat", "/root/count"])
            .trim()
            .parse()
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(5), || count() >= 3));
    h.exec("ck", &["sh", "-c", "echo before > /root/a && sync"]);
    h.ok(&["checkpoint", "ck", "--leave-running"]);
    h.exec("ck", &["sh", "-c", "echo after > /root/b && sync"]);
    assert!(wait_until(Duration::from_secs(5), || count() >= 20));
    let ran_to = count();
    h.ok(&["stop", "ck"]);
    h.ok(&["restore", "ck"]);
    assert_eq!(h.exec("ck", &["cat", "/root/a"]).trim(), "before");
    assert!(
        !h.cr(&["exec", "ck", "--", "test", "-e", "/root/b"])
            .status
            .success(),
        "a file written after the checkpoint is on the restored disk"
    );
    // The counter goes on from the checkpoint's value, which the disk file
    // agrees with (it was not left at the later value).
    let resumed = count();
    assert!(resumed < ran_to, "count {resumed}, ran to {ran_to}");
    let labels: Vec<String> = disk_list(&h, "ck")
        .iter()
        .filter_map(|d| d["label"].as_str().map(str::to_string))
        .collect();
    assert!(
        labels
            .iter()
            .any(|l| l.starts_with("restored from snapshot")),
        "{labels:?}"
    );
}

#[test]
fn a_migrations_snapshots_fold_back_but_a_users_snapshot_is_kept() {
    let h = TestHost::new();
    h.run("fold", TestImage::Busybox, None, &["--disk", "128M"], SLEEP);
    let ids = |h: &TestHost| -> Vec<String> {
        disk_list(h, "fold")
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let host = cr::host::Host::open(&h.root).unwrap();
    let c = cr::container::Container::open(&host, "fold").unwrap();
    // What a migration takes: its own snapshot, then the checkpoint's.
    h.exec("fold", &["sh", "-c", "echo one > /one && sync"]);
    snapshot(&h, "fold", "before");
    let first = ids(&h);
    assert_eq!(first.len(), 2);
    let base = first[1].clone();
    h.ok(&["disk", "snapshot", "fold", "--label", "migration"]);
    h.exec("fold", &["sh", "-c", "echo two > /two && sync"]);
    h.ok(&["disk", "snapshot", "fold", "--label", "checkpoint"]);
    assert_eq!(ids(&h).len(), 4);
    assert_eq!(cr::migrate::disk::fold_back(&c, &base).unwrap(), 2);
    assert_eq!(ids(&h), first, "folded back to the chain before");
    assert_eq!(h.exec("fold", &["cat", "/one", "/two"]), "one\ntwo\n");
    // A snapshot of the user's among them: nothing is folded.
    h.ok(&["disk", "snapshot", "fold", "--label", "migration"]);
    h.ok(&["disk", "snapshot", "fold", "--label", "mine"]);
    let err = cr::migrate::disk::fold_back(&c, &base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"mine\"") && err.contains("--into"), "{err}");
    assert_eq!(ids(&h).len(), 4);
    h.ok(&["destroy", "fold"]);
}

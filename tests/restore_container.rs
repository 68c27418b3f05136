//! `cr restore` on real containers: a checkpointed container comes back
//! with its processes, memory, registers, files, pipes, IP and MAC, and goes
//! on where it stopped; what restore cannot rebuild yet is refused before
//! anything is built.

mod common;

use std::time::Duration;

use common::*;

const TICKER: &[&str] = &[
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /root/count; echo tick $i; sleep 0.1; done",
];

fn count(h: &TestHost, name: &str) -> u64 {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The numbers the ticker printed on its console, in order.
fn ticks(h: &TestHost, name: &str) -> Vec<u64> {
    h.ok(&["logs", name])
        .lines()
        .filter_map(|l| l.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()))
        .collect()
}

#[test]
fn a_checkpointed_container_goes_on_where_it_stopped() {
    let h = TestHost::new();
    h.run(
        "tick",
        TestImage::Busybox,
        Some(10),
        &["--mac", "02:00:00:aa:bb:10", "--memory", "64M"],
        TICKER,
    );
    assert!(wait_until(Duration::from_secs(5), || count(&h, "tick") >= 5));
    h.ok(&["checkpoint", "tick"]);
    assert_eq!(h.state("tick"), "stopped");
    let at_checkpoint = *ticks(&h, "tick")
        .last()
        .expect("ticks before the checkpoint");

    let out = h.ok(&["restore", "tick"]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(h.state("tick"), "running");
    assert!(
        wait_until(Duration::from_secs(5), || count(&h, "tick")
            > at_checkpoint + 3),
        "the ticker did not go on"
    );
    // The sequence continues from the checkpointed value: its memory came back.
    let all = ticks(&h, "tick");
    let after: Vec<u64> = all
        .iter()
        .copied()
        .skip_while(|t| *t <= at_checkpoint)
        .collect();
    assert!(!after.is_empty(), "{all:?}");
    assert!(
        after[0] <= at_checkpoint + 1,
        "restarted instead of resuming: {at_checkpoint} then {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    // Same PID 1, same network identity and limits.
    assert_eq!(h.exec("tick", &["cat", "/proc/1/comm"]).trim(), "sh");
    assert_eq!(
        h.exec("tick", &["cat", "/sys/class/net/eth0/address"])
            .trim(),
        "02:00:00:aa:bb:10"
    );
    let json = h.status_json("tick");
    assert_eq!(json["ip"], h.net.ip(10));
    assert_eq!(json["limits"]["memory"].as_u64(), Some(64 << 20));
    h.exec("tick", &["ping", "-c", "1", "-W", "2", &h.net.addr(1)]);

    // A running container is not restored over.
    let err = h.fails(&["restore", "tick"]);
    assert!(err.contains("running") && err.contains("stopped"), "{err}");
}

#[test]
fn restore_after_destroy_and_twice_from_one_image() {
    let h = TestHost::new();
    h.run("again", TestImage::Busybox, Some(11), &[], TICKER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "again") >= 3));
    let image = h.root.join("img-again");
    let image = image.to_str().expect("utf-8");
    h.ok(&["checkpoint", "again", "--image", image]);
    let at_checkpoint = count(&h, "again");
    for round in 0..2 {
        h.ok(&["destroy", "again"]);
        assert!(!h.root.join("containers/again").exists());
        h.ok(&["restore", "again", "--image", image]);
        assert!(
            wait_until(Duration::from_secs(5), || count(&h, "again")
                > at_checkpoint + 2),
            "round {round}: the restored container does not run"
        );
        // Its files came back from the image too.
        assert!(count(&h, "again") >= at_checkpoint);
    }
}

#[test]
fn pipes_come_back_with_their_data() {
    let h = TestHost::new();
    h.run(
        "pipe",
        TestImage::Busybox,
        None,
        &[],
        &[
            "/bin/sh",
            "-c",
            "printf 'hello pipe\\n' | (sleep 1000; cat)",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    h.ok(&["checkpoint", "pipe"]);
    h.ok(&["restore", "pipe"]);
    let ps = h.exec("pipe", &["ps"]);
    let sleep_pid = ps
        .lines()
        .find(|l| l.split_whitespace().skip(2).collect::<Vec<_>>() == ["sleep", "1000"])
        .and_then(|l| l.split_whitespace().next())
        .expect("the restored sleep")
        .to_string();
    h.exec("pipe", &["kill", &sleep_pid]);
    assert!(
        wait_until(Duration::from_secs(3), || h
            .ok(&["logs", "pipe"])
            .contains("hello pipe")),
        "the restored cat did not read the pipe's data: {}",
        h.ok(&["logs", "pipe"])
    );
}

#[test]
fn what_restore_cannot_rebuild_is_refused_before_building() {
    let h = TestHost::new();
    // A real-time process: the restored container's cpu cgroup gets no
    // real-time budget, so SCHED_FIFO is not restored yet. This one gets a
    // budget from the test, on the host side.
    let script = "import os, time\n\
        while True:\n\
        \ttry:\n\
        \t\tos.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n\
        \t\tbreak\n\
        \texcept PermissionError:\n\
        \t\ttime.sleep(0.05)\n\
        open('/root/rt', 'w').close()\n\
        time.sleep(1000)\n";
    h.run(
        "user",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", script],
    );
    let pid = h.status_json("user")["pid"].as_i64().expect("pid of PID 1");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    let cpu = cgroups
        .lines()
        .find_map(|l| l.split_once(":cpu:").map(|(_, p)| p.to_string()))
        .expect("a v1 cpu cgroup (prerequisite of this test)");
    let mut dir = std::path::PathBuf::from("/sys/fs/cgroup/cpu");
    for (i, part) in cpu.trim_matches('/').split('/').enumerate() {
        dir.push(part);
        std::fs::write(
            dir.join("cpu.rt_runtime_us"),
            (20_000 - i * 1000).to_string(),
        )
        .expect("giving the container a real-time budget");
    }
    assert!(
        wait_until(Duration::from_secs(5), || h
            .cr(&["exec", "user", "--", "test", "-e", "/root/rt"])
            .status
            .success()),
        "python did not get SCHED_FIFO: {}",
        h.ok(&["logs", "user"])
    );
    // A checkpoint that would stop the container is refused: it keeps running.
    let err = h.fails(&["checkpoint", "user"]);
    assert!(
        err.contains("not be restorable") && err.contains("keeps running"),
        "{err}"
    );
    assert_eq!(h.state("user"), "running");
    assert!(h.ok(&["checkpoint", "list", "user"]).trim().is_empty());
    // With --leave-running the image is written; restoring it is refused
    // before anything is built.
    h.ok(&["checkpoint", "user", "--leave-running"]);
    h.ok(&["destroy", "user"]);
    let err = h.fails(&["restore", "user"]);
    assert!(
        err.contains("process 1") && err.contains("real-time scheduling policy"),
        "{err}"
    );
    assert!(
        !h.root.join("containers/user").exists(),
        "a refused restore left a container behind"
    );

    let err = h.fails(&["restore", "nosuch"]);
    assert!(err.contains("no checkpoint"), "{err}");
}

/// Three threads, each named through /proc, count in a variable of their
/// own (two in `time.sleep`, one waiting on an Event with a timeout: a
/// futex); the main thread writes every counter to /root/count.
const THREADS: &str = r#"
import os, threading, time
counts = [0, 0, 0]
def work(k):
    with open('/proc/self/task/%d/comm' % threading.get_native_id(), 'w') as f:
        f.write('worker%d' % k)
    n = 0
    ev = threading.Event()
    while True:
        n += 1
        counts[k] = n
        if k == 1:
            ev.wait(0.05)
        else:
            time.sleep(0.05)
for k in range(3):
    threading.Thread(target=work, args=(k,), daemon=True).start()
while True:
    with open('/root/count.tmp', 'w') as f:
        f.write(' '.join(map(str, counts)) + '\n')
    os.rename('/root/count.tmp', '/root/count')
    time.sleep(0.1)
"#;

fn counters(h: &TestHost, name: &str) -> Vec<u64> {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// "TID comm" for every thread of the container's PID 1.
fn tasks(h: &TestHost, name: &str) -> Vec<String> {
    let out = h.exec(
        name,
        &[
            "/bin/sh",
            "-c",
            "for t in /proc/1/task/*; do echo ${t##*/} $(cat $t/comm); done",
        ],
    );
    out.lines().map(str::to_string).collect()
}

#[test]
fn a_multithreaded_python_goes_on_in_every_thread() {
    let h = TestHost::new();
    h.run(
        "mt",
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", THREADS],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = counters(&h, "mt");
            c.len() == 3 && c.iter().all(|n| *n > 10)
        }),
        "the threads do not count: {:?}",
        counters(&h, "mt")
    );
    let before_tasks = tasks(&h, "mt");
    assert_eq!(before_tasks.len(), 4, "{before_tasks:?}");
    for k in 0..3 {
        assert!(
            before_tasks
                .iter()
                .any(|t| t.ends_with(&format!(" worker{k}"))),
            "{before_tasks:?}"
        );
    }
    let before = counters(&h, "mt");
    h.ok(&["checkpoint", "mt"]);
    assert_eq!(h.state("mt"), "stopped");

    h.ok(&["restore", "mt"]);
    assert_eq!(h.state("mt"), "running");
    // Same threads, same TIDs, same names.
    assert_eq!(tasks(&h, "mt"), before_tasks);
    // Nothing of the restorer (its fds are >= 900) is left open.
    let fds = h.exec("mt", &["ls", "/proc/1/fd"]);
    assert!(
        fds.split_whitespace()
            .all(|fd| fd.parse::<i32>().is_ok_and(|fd| fd < 900)),
        "{fds}"
    );
    let first = counters(&h, "mt");
    assert_eq!(first.len(), 3, "{first:?}");
    for k in 0..3 {
        // From where it was, not from 0.
        assert!(
            first[k] >= before[k],
            "thread {k} restarted: {before:?} before the checkpoint, {first:?} after"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = counters(&h, "mt");
            c.len() == 3 && (0..3).all(|k| c[k] > first[k] + 5)
        }),
        "not every thread goes on: {before:?} before, {first:?} just after, {:?} now",
        counters(&h, "mt")
    );
    assert_eq!(tasks(&h, "mt"), before_tasks);

    // And once more from the same state after a second checkpoint.
    let again = counters(&h, "mt");
    h.ok(&["checkpoint", "mt"]);
    h.ok(&["restore", "mt"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = counters(&h, "mt");
            c.len() == 3 && (0..3).all(|k| c[k] > again[k] + 5)
        }),
        "a restored process cannot be checkpointed and restored again: {again:?}, {:?}",
        counters(&h, "mt")
    );
    assert_eq!(tasks(&h, "mt"), before_tasks);
}

/// Rewrites the records of image `dir`, changing every record with `edit`.
fn edit_records(dir: &std::path::Path, mut edit: impl FnMut(&mut cr_formats::schema::Record)) {
    use cr_formats::{read_records, RecordWriter};
    let path = dir.join("records.img");
    let image = read_records(std::fs::File::open(&path).expect("records.img")).expect("read");
    let out = std::io::BufWriter::new(std::fs::File::create(&path).expect("rewrite"));
    let mut w = RecordWriter::new(out, &image.manifest).expect("writer");
    for mut e in image.entries {
        if matches!(e.record, cr_formats::schema::Record::Manifest(_)) {
            continue;
        }
        edit(&mut e.record);
        w.write(&e.record).expect("write record");
    }
    w.finish().expect("finish records");
}

#[test]
fn a_failed_thread_rebuild_leaves_nothing_running_or_traced() {
    let h = TestHost::new();
    // PID 1 is a shell; the threaded python is its child.
    h.run(
        "clash",
        TestImage::Python,
        None,
        &[],
        &[
            "/bin/sh",
            "-c",
            "/usr/bin/python3 -c \"$0\" & wait",
            THREADS,
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = counters(&h, "clash");
            c.len() == 3 && c.iter().all(|n| *n > 3)
        }),
        "the threads do not count: {:?}",
        counters(&h, "clash")
    );
    let good = h.root.join("img-good");
    h.ok(&[
        "checkpoint",
        "clash",
        "--image",
        good.to_str().expect("utf-8"),
    ]);
    let bad = h.root.join("img-bad");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&good)
        .arg(&bad)
        .status()
        .expect("cp");
    assert!(cp.success());
    // The python's last thread gets TID 1, which the shell (PID 1) holds at
    // restore: its clone3 fails after the other thread was created.
    let mut python = None;
    let mut last = None;
    edit_records(&bad, |r| {
        if let cr_formats::schema::Record::Process(p) = r {
            if p.pid != 1 {
                python = Some(p.pid);
            }
        }
    });
    edit_records(&bad, |r| {
        if let cr_formats::schema::Record::Thread(t) = r {
            if Some(t.pid) == python && t.tid != t.pid {
                last = Some(t.tid);
            }
        }
    });
    let (python, last) = (python.expect("python"), last.expect("threads"));
    edit_records(&bad, |r| {
        if let cr_formats::schema::Record::Thread(t) = r {
            if t.pid == python && t.tid == last {
                t.tid = 1;
            }
        }
    });
    let started = std::time::Instant::now();
    let err = h.fails(&["restore", "clash", "--image", bad.to_str().expect("utf-8")]);
    // Killed and reaped at once: no wait on a traced zombie.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the failed restore took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("rebuilding process {python}"))
            && err.contains("thread 1")
            && err.contains("clone3")
            && err.contains("EEXIST"),
        "{err}"
    );
    assert_eq!(h.state("clash"), "stopped");
    // Nothing of it is left (no husk, no traced zombie): the good image
    // restores into the same container.
    h.ok(&["restore", "clash", "--image", good.to_str().expect("utf-8")]);
    let first = counters(&h, "clash");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = counters(&h, "clash");
            c.len() == 3 && first.len() == 3 && (0..3).all(|k| c[k] > first[k] + 3)
        }),
        "{first:?} {:?}",
        counters(&h, "clash")
    );
}

#[test]
fn a_damaged_image_is_refused_and_nothing_is_built() {
    let h = TestHost::new();
    h.run("dmg", TestImage::Busybox, None, &[], TICKER);
    let image = h.root.join("img-dmg");
    h.ok(&[
        "checkpoint",
        "dmg",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    h.ok(&["destroy", "dmg"]);
    let pages = image.join("pages.img");
    let mut bytes = std::fs::read(&pages).expect("pages.img");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&pages, &bytes).expect("write");
    let err = h.fails(&["restore", "dmg", "--image", image.to_str().expect("utf-8")]);
    assert!(err.contains("pages.img"), "{err}");
    assert!(!h.root.join("containers/dmg").exists());
    assert!(h.container_cgroups("dmg").is_empty());
}

#[test]
fn process_attributes_come_back() {
    let h = TestHost::new();
    h.run(
        "attrs",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sh", "-c", "mkdir -p /srv/work; cd /srv/work; umask 027; ulimit -n 512; renice -n 5 $$ >/dev/null; exec sleep 1000"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let read = |h: &TestHost| {
        let status = h.exec("attrs", &["cat", "/proc/1/status"]);
        let umask = status
            .lines()
            .find(|l| l.starts_with("Umask:"))
            .unwrap_or_default()
            .to_string();
        let limits = h.exec("attrs", &["cat", "/proc/1/limits"]);
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_string();
        let cwd = h.exec("attrs", &["readlink", "/proc/1/cwd"]);
        let stat = h.exec("attrs", &["cat", "/proc/1/stat"]);
        let nice = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(16)
            .unwrap_or_default()
            .to_string();
        (umask, nofile, cwd, nice)
    };
    let before = read(&h);
    assert!(before.0.contains("0027"), "{before:?}");
    h.ok(&["checkpoint", "attrs"]);
    h.ok(&["restore", "attrs"]);
    assert_eq!(read(&h), before);
}

#[test]
fn a_user_namespace_container_comes_back_with_its_id_map() {
    let h = TestHost::new();
    h.run("uns", TestImage::Busybox, None, &["--userns"], TICKER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "uns") >= 3));
    let map = h.exec("uns", &["cat", "/proc/self/uid_map"]);
    h.ok(&["checkpoint", "uns"]);
    let at_checkpoint = *ticks(&h, "uns").last().expect("ticks");
    h.ok(&["restore", "uns"]);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "uns")
        > at_checkpoint + 2));
    assert_eq!(h.exec("uns", &["cat", "/proc/self/uid_map"]), map);
    assert_eq!(h.exec("uns", &["id", "-u"]).trim(), "0");
}

#[test]
fn a_frozen_restore_runs_nothing_until_thawed() {
    let h = TestHost::new();
    h.run("cold", TestImage::Busybox, None, &[], TICKER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "cold") >= 3));
    h.ok(&["checkpoint", "cold"]);
    let out = h.ok(&["restore", "cold", "--frozen"]);
    assert!(out.contains("frozen"), "{out}");
    assert_eq!(h.state("cold"), "frozen");
    // Read from the host: the container's files are its overlay's upper
    // layer. Nothing moves while it is frozen.
    let file = h.root.join("containers/cold/upper/root/count");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let at_checkpoint: u64 = read().trim().parse().unwrap_or(0);
    assert!(
        at_checkpoint >= 3,
        "no count in the frozen container: {:?}",
        read()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        read().trim(),
        at_checkpoint.to_string(),
        "a task ran while frozen"
    );
    h.ok(&["thaw", "cold"]);
    assert_eq!(h.state("cold"), "running");
    assert!(
        wait_until(Duration::from_secs(5), || count(&h, "cold")
            > at_checkpoint + 2),
        "the ticker did not go on after the thaw"
    );
}

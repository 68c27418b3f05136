//! cgroups against the real kernel (needs root; skipped otherwise).
//!
//! Every test works under its own parent `cr-test-<pid>-<n>` and a guard
//! kills, removes and deletes the parent even when the test fails.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cr::container::cgroups::*;
use cr::container::config::Limits;
use nix::unistd::Pid;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: cgroup tests need root");
        false
    }
}

/// Owns a test cgroup and the children spawned into it; cleans up on drop.
struct Guard {
    cg: ContainerCgroup,
    children: Vec<Child>,
}

impl Guard {
    fn new(name: &str) -> Self {
        let layout = CgroupLayout::detect().expect("detect cgroup layout");
        let parent = format!(
            "cr-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Guard {
            cg: ContainerCgroup::new(&layout, &parent, name),
            children: Vec::new(),
        }
    }

    /// Spawns `sh -c script` and adds it to the cgroup before the script
    /// runs (it waits for a line on stdin). Returns its index.
    fn spawn_gated(&mut self, script: &str) -> usize {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _gate; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        self.cg
            .add_pid(Pid::from_raw(child.id() as i32))
            .expect("add_pid");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("open the gate");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Spawns `sh -c script`, then adds it to the cgroup.
    fn spawn(&mut self, script: &str) -> Pid {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = Pid::from_raw(child.id() as i32);
        self.children.push(child);
        self.cg.add_pid(pid).expect("add_pid");
        pid
    }

    fn wait(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.children[i].try_wait().expect("try_wait") {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.kill_all();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.remove();
        let _ = self.cg.remove_parent_if_empty();
        for p in self.cg.parent_paths() {
            let _ = fs::remove_dir(p);
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: Pid) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm end") + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn detect_finds_layout() {
    let layout = CgroupLayout::detect().expect("detect");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_is_v2 = mountinfo.lines().any(|l| {
        l.split_whitespace().nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 ")
    });
    if root_is_v2 {
        assert_eq!(layout.kind(), LayoutKind::V2);
    } else {
        assert_ne!(layout.kind(), LayoutKind::V2);
        let v1 = layout.v1().unwrap();
        for c in V1_REQUIRED {
            assert!(v1.mount(c).is_some(), "{c} not found");
        }
    }
    eprintln!("layout: {layout:?}");
}

#[test]
fn create_applies_limits_and_remove_cleans_up() {
    if !root() {
        return;
    }
    let g = Guard::new("limits");
    let limits = Limits {
        memory: Some(64 << 20),
        cpus: Some(1.5),
        pids: Some(100),
    };
    assert!(!g.cg.exists());
    g.cg.create(&limits).expect("create");
    assert!(g.cg.exists());
    for p in g.cg.paths() {
        assert!(p.is_dir(), "{} missing", p.display());
    }
    assert_eq!(g.cg.memory_limit().unwrap(), Some(64 << 20));
    assert_eq!(g.cg.cpu_max().unwrap(), Some((150_000, CFS_PERIOD_US)));
    assert_eq!(g.cg.pids_max().unwrap(), Some(100));
    assert_eq!(g.cg.oom_kills().unwrap(), 0);
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Thawed);
    assert!(g.cg.pids().unwrap().is_empty());

    if g.cg.kind() != LayoutKind::V2 {
        let devices =
            g.cg.paths()
                .into_iter()
                .find(|p| p.join("devices.list").exists())
                .expect("devices hierarchy");
        let list = fs::read_to_string(devices.join("devices.list")).unwrap();
        assert!(!list.contains("a *:* rwm"), "{list}");
        for want in ["c 1:3 rwm", "c 136:* rwm", "c 10:229 rwm", "b *:* m"] {
            assert!(list.lines().any(|l| l == want), "{want} not in {list}");
        }
        let memsw =
            g.cg.paths()
                .into_iter()
                .map(|p| p.join("memory.memsw.limit_in_bytes"))
                .find(|p| p.exists());
        if let Some(memsw) = memsw {
            assert_eq!(
                fs::read_to_string(memsw).unwrap().trim(),
                (64u64 << 20).to_string()
            );
        }
    }
    if g.cg.kind() == LayoutKind::Hybrid {
        assert!(g.cg.cgroup2_path().unwrap().is_dir());
    }

    // Creating it again is refused and leaves the existing one alone.
    let err = g.cg.create(&limits).unwrap_err();
    assert!(matches!(err, CgroupError::Exists { .. }), "{err}");
    assert!(g.cg.exists());

    g.cg.remove().expect("remove");
    assert!(!g.cg.exists());
    for p in g.cg.paths() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    for p in g.cg.parent_paths() {
        assert!(p.is_dir(), "shared parent {} was removed", p.display());
    }
    g.cg.remove().expect("remove is idempotent");
    g.cg.kill_all().expect("kill_all on a missing cgroup");

    // Unlimited readers report None.
    g.cg.create(&Limits::default())
        .expect("create without limits");
    assert_eq!(g.cg.memory_limit().unwrap(), None);
    assert_eq!(g.cg.cpu_max().unwrap(), None);
    assert_eq!(g.cg.pids_max().unwrap(), None);
    g.cg.remove().unwrap();
    g.cg.remove_parent_if_empty().unwrap();
    for p in g.cg.parent_paths() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn failed_create_leaves_nothing() {
    if !root() {
        return;
    }
    let g = Guard::new("broken");
    // pids.max above PID_MAX_LIMIT is refused by the kernel, after the
    // directories were made and the memory limit was written.
    let limits = Limits {
        memory: Some(64 << 20),
        cpus: None,
        pids: Some(1 << 40),
    };
    let err = g.cg.create(&limits).unwrap_err();
    assert!(err.to_string().contains("pids.max"), "{err}");
    assert!(!g.cg.exists());
    for p in g.cg.parent_paths() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn concurrent_creates_share_the_parent() {
    if !root() {
        return;
    }
    let layout = CgroupLayout::detect().unwrap();
    let parent = format!(
        "cr-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let guards: Vec<Guard> = (0..4)
        .map(|i| Guard {
            cg: ContainerCgroup::new(&layout, &parent, &format!("c{i}")),
            children: Vec::new(),
        })
        .collect();
    std::thread::scope(|s| {
        for g in &guards {
            s.spawn(|| g.cg.create(&Limits::default()).expect("create"));
        }
    });
    for g in &guards {
        assert!(g.cg.exists());
        g.cg.remove().unwrap();
    }
}

#[test]
fn add_pid_and_pids_include_child_cgroups() {
    if !root() {
        return;
    }
    let mut g = Guard::new("members");
    g.cg.create(&Limits::default()).unwrap();
    let a = g.spawn("exec sleep 30");
    let b = g.spawn("exec sleep 30");
    assert_eq!(g.cg.pids().unwrap(), vec![a.min(b), a.max(b)]);

    // Every hierarchy holds the task.
    let own = fs::read_to_string(format!("/proc/{a}/cgroup")).unwrap();
    let rel = g.cg.paths()[0]
        .strip_prefix(g.cg.paths()[0].ancestors().nth(2).unwrap())
        .unwrap()
        .to_path_buf();
    let n = own
        .lines()
        .filter(|l| l.ends_with(&format!("/{}", rel.display())))
        .count();
    assert!(n >= 1, "{own}");
    if g.cg.kind() == LayoutKind::Hybrid {
        assert!(
            own.lines()
                .any(|l| l.starts_with("0::/") && l.ends_with(&format!("/{}", rel.display()))),
            "{own}"
        );
    }

    // A child cgroup the container made itself: b moves there.
    let sub = g.cg.freezer_path().unwrap().join("sub/deeper");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("cgroup.procs"), b.to_string()).unwrap();
    assert_eq!(g.cg.pids().unwrap(), vec![a.min(b), a.max(b)]);

    g.cg.kill_all().unwrap();
    assert!(g.cg.pids().unwrap().is_empty());
    g.cg.remove().unwrap();
    assert!(!sub.exists());
    assert!(!g.cg.exists());
}

#[test]
fn freeze_stops_cpu_and_thaw_resumes() {
    if !root() {
        return;
    }
    let mut g = Guard::new("freeze");
    g.cg.create(&Limits::default()).unwrap();
    let pid = g.spawn("while :; do :; done");
    sleep(Duration::from_millis(100));

    g.cg.freeze().expect("freeze");
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Frozen);
    let (u1, t1) = (g.cg.cpu_usage_ns().unwrap(), proc_cpu_ticks(pid));
    sleep(Duration::from_millis(300));
    let (u2, t2) = (g.cg.cpu_usage_ns().unwrap(), proc_cpu_ticks(pid));
    assert!(u2 - u1 < 1_000_000, "frozen cgroup used {} ns", u2 - u1);
    assert_eq!(t1, t2, "frozen task's CPU time advanced");
    g.cg.freeze().expect("freezing a frozen cgroup is fine");

    g.cg.thaw().expect("thaw");
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Thawed);
    sleep(Duration::from_millis(300));
    let (u3, t3) = (g.cg.cpu_usage_ns().unwrap(), proc_cpu_ticks(pid));
    assert!(u3 > u2 + 30_000_000, "thawed task ran only {} ns", u3 - u2);
    assert!(t3 > t2, "thawed task's CPU time did not advance");
}

#[test]
fn kill_all_kills_everything() {
    if !root() {
        return;
    }
    let mut g = Guard::new("kill");
    g.cg.create(&Limits::default()).unwrap();
    let i = g.spawn_gated("sleep 30 & sleep 30 & while :; do :; done");
    let start = Instant::now();
    while g.cg.pids().unwrap().len() < 3 && start.elapsed() < Duration::from_secs(3) {
        sleep(Duration::from_millis(10));
    }
    assert_eq!(g.cg.pids().unwrap().len(), 3);
    g.cg.kill_all().expect("kill_all");
    assert!(g.cg.pids().unwrap().is_empty());
    let st = g.wait(i, Duration::from_secs(3)).expect("sh exited");
    assert!(!st.success());
    g.cg.remove().expect("remove");
    assert!(!g.cg.exists());
}

#[test]
fn kill_all_kills_a_frozen_cgroup() {
    if !root() {
        return;
    }
    let mut g = Guard::new("killfrozen");
    g.cg.create(&Limits::default()).unwrap();
    g.spawn("exec sleep 30");
    g.spawn("while :; do :; done");
    g.cg.freeze().unwrap();
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Frozen);
    g.cg.kill_all().expect("kill_all");
    assert!(g.cg.pids().unwrap().is_empty());
    for i in 0..2 {
        let st = g.wait(i, Duration::from_secs(3)).expect("child exited");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(9));
    }
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Thawed);
    g.cg.remove().expect("remove");
    assert!(!g.cg.exists());
}

#[test]
fn memory_hog_is_oom_killed() {
    if !root() {
        return;
    }
    let mut g = Guard::new("oom");
    g.cg.create(&Limits {
        memory: Some(50 << 20),
        ..Limits::default()
    })
    .unwrap();
    let i = g.spawn_gated(r#"x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived >&2"#);
    let st = g.wait(i, Duration::from_secs(20)).expect("hog ended");
    assert!(!st.success(), "hog exited with {st:?}");
    assert!(g.cg.oom_kills().unwrap() >= 1);
    let mut err = String::new();
    g.children[i]
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("survived"), "{err}");
}

#[test]
fn pids_limit_stops_forks() {
    if !root() {
        return;
    }
    let mut g = Guard::new("pids");
    g.cg.create(&Limits {
        pids: Some(5),
        ..Limits::default()
    })
    .unwrap();
    let i = g.spawn_gated("for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait");
    let st = g.wait(i, Duration::from_secs(10)).expect("sh ended");
    assert!(g.cg.pids().unwrap().len() <= 5);
    g.cg.kill_all().unwrap();
    let mut err = String::new();
    g.children[i]
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("sh: {st:?}, stderr: {err}");
    assert!(err.to_lowercase().contains("fork"), "{err}");
}

#[test]
fn paths_are_under_the_mounts() {
    let layout = CgroupLayout::detect().unwrap();
    let cg = ContainerCgroup::new(&layout, "cr-x", "y");
    for p in cg.paths() {
        assert!(p.ends_with(Path::new("cr-x/y")));
    }
}

/// On a hybrid host, the cgroup2 code paths (cgroup.freeze, cgroup.events,
/// cgroup.kill, cgroup.procs, cpu.stat) run against the unified mount as if
/// it were a pure cgroup2 host without resource controllers.
#[test]
fn cgroup2_paths_on_the_unified_mount() {
    if !root() {
        return;
    }
    let layout = CgroupLayout::detect().unwrap();
    let Some(unified) = layout
        .cgroup2_mount()
        .filter(|_| layout.kind() == LayoutKind::Hybrid)
    else {
        eprintln!("skipping: not a hybrid host");
        return;
    };
    let v2 = CgroupLayout::V2 {
        root: unified.to_path_buf(),
    };
    let parent = format!(
        "cr-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let mut g = Guard {
        cg: ContainerCgroup::new(&v2, &parent, "v2"),
        children: Vec::new(),
    };
    assert_eq!(g.cg.paths().len(), 1);

    // No memory controller in this cgroup2: the limit cannot be set, and
    // nothing is left behind.
    let err =
        g.cg.create(&Limits {
            memory: Some(64 << 20),
            ..Limits::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("memory.max"), "{err}");
    assert!(!g.cg.exists());
    assert!(!g.cg.parent_paths()[0].exists());

    g.cg.create(&Limits::default()).unwrap();
    let pid = g.spawn("while :; do :; done");
    let sleeper = g.spawn("exec sleep 30");
    let sub = g.cg.paths()[0].join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("cgroup.procs"), sleeper.to_string()).unwrap();
    assert_eq!(
        g.cg.pids().unwrap(),
        vec![pid.min(sleeper), pid.max(sleeper)]
    );

    sleep(Duration::from_millis(50));
    g.cg.freeze().unwrap();
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Frozen);
    let u1 = g.cg.cpu_usage_ns().unwrap();
    let t1 = proc_cpu_ticks(pid);
    sleep(Duration::from_millis(200));
    assert!(g.cg.cpu_usage_ns().unwrap() - u1 < 1_000_000);
    assert_eq!(proc_cpu_ticks(pid), t1);
    g.cg.thaw().unwrap();
    assert_eq!(g.cg.freezer_state().unwrap(), FreezerState::Thawed);
    // Thawed, the spinner runs again (given a few seconds on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.cg.cpu_usage_ns().unwrap() <= u1 + 30_000_000 && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    assert!(g.cg.cpu_usage_ns().unwrap() > u1 + 30_000_000);

    g.cg.freeze().unwrap();
    g.cg.kill_all().unwrap();
    assert!(g.cg.pids().unwrap().is_empty());
    for i in 0..2 {
        assert!(g.wait(i, Duration::from_secs(3)).is_some());
    }
    g.cg.remove().unwrap();
    assert!(!g.cg.exists());
}

//! The container runtime on the real kernel: isolation, limits, freezer,
//! exec, networking, lifecycle, and refusal of bad input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SLEEP: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 1; done",
];

#[test]
fn pid1_hostname_and_isolation() {
    let h = TestHost::new();
    h.run(
        "iso",
        TestImage::Busybox,
        Some(10),
        &["--hostname", "isohost"],
        SLEEP,
    );
    assert_eq!(h.state("iso"), "running");

    // Its command is PID 1 and host processes are invisible.
    let comm = h.exec("iso", &["cat", "/proc/1/comm"]);
    assert_eq!(comm.trim(), "sh");
    let pids: Vec<String> = h
        .exec("iso", &["ls", "/proc"])
        .split_whitespace()
        .filter(|s| s.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert!(
        pids.len() <= 4,
        "container sees too many processes: {pids:?}"
    );
    assert_eq!(h.exec("iso", &["hostname"]).trim(), "isohost");

    // Only its own interfaces.
    let links = h.exec("iso", &["ls", "/sys/class/net"]);
    let mut links: Vec<&str> = links.split_whitespace().collect();
    links.sort();
    assert_eq!(links, ["eth0", "lo"]);

    // Host mounts are invisible; / is the overlay.
    let mounts = h.exec("iso", &["cat", "/proc/mounts"]);
    assert!(
        !mounts.contains("/var/tmp/cr-test"),
        "host paths visible in mounts:\n{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.starts_with("overlay / overlay")),
        "{mounts}"
    );

    // Masked and read-only paths.
    assert_eq!(
        h.exec("iso", &["sh", "-c", "cat /proc/kcore | wc -c"])
            .trim(),
        "0"
    );
    assert_eq!(
        h.exec("iso", &["sh", "-c", "cat /proc/keys | wc -c"])
            .trim(),
        "0"
    );
    let out = h.cr(&[
        "exec",
        "iso",
        "--",
        "sh",
        "-c",
        "echo 1 > /proc/sys/kernel/sysrq",
    ]);
    assert!(!out.status.success(), "/proc/sys writable");
    let out = h.cr(&["exec", "iso", "--", "touch", "/sys/kernel/x"]);
    assert!(!out.status.success(), "/sys writable");
    // /proc/sys/net belongs to the container's own network namespace.
    h.exec(
        "iso",
        &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
    );

    // Standard devices, private devpts, tmpfs /tmp and /dev/shm.
    h.exec(
        "iso",
        &[
            "sh",
            "-c",
            "echo x > /dev/null && head -c 4 /dev/urandom | wc -c",
        ],
    );
    assert!(mounts.contains("devpts /dev/pts devpts"), "{mounts}");
    assert!(mounts.contains(" /dev/shm tmpfs"), "{mounts}");
    assert!(mounts.contains(" /tmp tmpfs"), "{mounts}");

    // Reduced capability set: no module loading, raw I/O, host time or reboot.
    let status = h.exec("iso", &["cat", "/proc/self/status"]);
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd line");
    let bits = u64::from_str_radix(bnd.split_whitespace().nth(1).expect("hex"), 16).expect("hex");
    for (cap, name) in [
        (16, "SYS_MODULE"),
        (17, "SYS_RAWIO"),
        (25, "SYS_TIME"),
        (22, "SYS_BOOT"),
    ] {
        assert_eq!(bits & (1 << cap), 0, "{name} still in the bounding set");
    }
    assert_ne!(bits & (1 << 21), 0, "SYS_ADMIN should be kept");
}

#[test]
fn exec_joins_every_namespace_and_passes_status() {
    let h = TestHost::new();
    h.run("ex", TestImage::Busybox, None, &[], SLEEP);
    let pid = h.status_json("ex")["pid"].as_i64().expect("pid");
    for ns in ["mnt", "uts", "ipc", "net", "pid", "cgroup"] {
        let inside = h.exec("ex", &["readlink", &format!("/proc/self/ns/{ns}")]);
        let init = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("reading ns link");
        assert_eq!(
            inside.trim(),
            init.to_string_lossy(),
            "{ns} namespace differs"
        );
    }
    // cgroup: the exec'd process sits in the container's cgroups.
    let cg = h.exec("ex", &["cat", "/proc/self/cgroup"]);
    assert!(
        cg.lines()
            .any(|l| l.contains(":memory:/") || l.starts_with("0::/")),
        "{cg}"
    );

    let out = h.cr(&[
        "exec",
        "ex",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let mut child = h
        .cr_cmd(&["exec", "ex", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning cr exec");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");

    let err = h.fails(&["exec", "ex", "--", "/no/such/cmd"]);
    assert!(err.contains("not found"), "{err}");
    let err = h.fails(&["exec", "nosuch", "--", "true"]);
    assert!(err.contains("no container named \"nosuch\""), "{err}");
}

#[test]
fn enter_gives_a_shell_on_a_pty() {
    let h = TestHost::new();
    h.run(
        "ent",
        TestImage::Busybox,
        None,
        &["--hostname", "enterme"],
        SLEEP,
    );
    let out = h.enter("ent", b"hostname; tty; exit 3\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("enterme"), "{text}");
    assert!(text.contains("/dev/pts/"), "not on a pty: {text}");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn memory_limit_kills_only_inside() {
    let h = TestHost::new();
    h.run("mem", TestImage::Busybox, None, &["--memory", "32M"], SLEEP);
    let json = h.status_json("mem");
    assert_eq!(json["limits"]["memory"].as_u64(), Some(32 << 20));
    // dd allocates its block size: 200M cannot fit in 32M.
    let out = h.cr(&[
        "exec",
        "mem",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=200M",
        "count=1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "hog was not OOM-killed: {out:?}"
    );
    assert_eq!(
        h.state("mem"),
        "running",
        "the container itself must survive"
    );
    let cg = h.container_cgroups("mem");
    let oom = cg
        .iter()
        .map(|d| d.join("memory.oom_control"))
        .chain(cg.iter().map(|d| d.join("memory.events")))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .next()
        .expect("memory cgroup file");
    assert!(
        oom.lines()
            .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0")),
        "{oom}"
    );
}

#[test]
fn pids_limit_stops_fork() {
    let h = TestHost::new();
    h.run("pids", TestImage::Busybox, None, &["--pids", "8"], SLEEP);
    let out = h.cr(&[
        "exec",
        "pids",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 & done; wait",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fork") || err.contains("resource"),
        "forking past the limit did not fail: {err}"
    );
    assert_eq!(h.state("pids"), "running");
}

#[test]
fn cpu_limit_caps_usage() {
    let h = TestHost::new();
    h.run(
        "cpu",
        TestImage::Busybox,
        None,
        &["--cpus", "0.25"],
        &["/bin/sh", "-c", "while :; do :; done"],
    );
    let usage = || -> u64 {
        for d in h.container_cgroups("cpu") {
            if let Ok(s) = std::fs::read_to_string(d.join("cpuacct.usage")) {
                return s.trim().parse().unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(d.join("cpu.stat")) {
                for l in s.lines() {
                    if let Some(v) = l.strip_prefix("usage_usec ") {
                        return v.parse::<u64>().unwrap_or(0) * 1000;
                    }
                }
            }
        }
        panic!("no CPU accounting file for the container");
    };
    let (u0, t0) = (usage(), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let used = (usage() - u0) as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        used < 0.40,
        "container used {used:.2} CPUs with a 0.25 limit"
    );
    assert!(used > 0.10, "container barely ran ({used:.2} CPUs)");
}

/// CPU time of the container's PID 1 (utime + stime, in clock ticks).
fn cpu_ticks(pid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect(")") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn freeze_stops_every_task_and_thaw_resumes() {
    let h = TestHost::new();
    h.run(
        "frz",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sh", "-c", "while :; do :; done"],
    );
    let pid = h.status_json("frz")["pid"].as_i64().expect("pid");
    std::thread::sleep(Duration::from_millis(100));
    h.ok(&["freeze", "frz"]);
    assert_eq!(h.state("frz"), "frozen");
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cpu_ticks(pid), before, "CPU time advanced while frozen");
    let err = h.fails(&["exec", "frz", "--", "true"]);
    assert!(err.contains("frozen"), "{err}");
    h.ok(&["thaw", "frz"]);
    assert_eq!(h.state("frz"), "running");
    assert!(
        wait_until(Duration::from_secs(3), || cpu_ticks(pid) > before),
        "did not resume"
    );
    let err = h.fails(&["thaw", "frz"]);
    assert!(err.contains("running"), "{err}");
}

#[test]
fn network_between_containers_and_host() {
    let h = TestHost::new();
    h.run(
        "n1",
        TestImage::Busybox,
        Some(10),
        &["--mac", "02:00:00:aa:bb:01"],
        SLEEP,
    );
    h.run(
        "n2",
        TestImage::Busybox,
        Some(11),
        &[],
        &[
            "/bin/sh",
            "-c",
            "while :; do echo pong | nc -l -p 8080; done",
        ],
    );
    let json = h.status_json("n1");
    assert_eq!(json["ip"], h.net.ip(10));
    assert_eq!(json["mac"], "02:00:00:aa:bb:01");
    let mac = h.exec("n1", &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(mac.trim(), "02:00:00:aa:bb:01");
    // The bridge got the prefix's first address: the containers' gateway.
    let route = h.exec("n1", &["ip", "route"]);
    assert!(
        route.contains(&format!("default via {}", h.net.addr(1))),
        "{route}"
    );
    // Container to container.
    h.exec("n1", &["ping", "-c", "1", "-W", "2", &h.net.addr(11)]);
    // Host to container.
    let mut reply = String::new();
    let ok = wait_until(Duration::from_secs(5), || match TcpStream::connect_timeout(
        &format!("{}:8080", h.net.addr(11)).parse().expect("addr"),
        Duration::from_secs(1),
    ) {
        Ok(mut s) => {
            reply.clear();
            s.read_to_string(&mut reply).is_ok() && reply.contains("pong")
        }
        Err(_) => false,
    });
    assert!(ok, "host could not reach the container: {reply:?}");
    // An address another container has is refused.
    h.with_image(TestImage::Busybox);
    let ip = h.net.ip(10);
    let err = h.fails(&[
        "run", "n3", "--image", "busybox", "--bridge", &h.bridge, "--ip", &ip, "--", "true",
    ]);
    assert!(err.contains("already used by container \"n1\""), "{err}");
    assert!(!h.root.join("containers/n3").exists());
}

#[test]
fn stop_destroy_and_logs() {
    let h = TestHost::new();
    // PID 1 ignores SIGTERM (a shell without a trap): stop kills after the grace time.
    h.run(
        "st",
        TestImage::Busybox,
        Some(20),
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo hello from pid1; echo data > /root/kept; while :; do sleep 1; done",
        ],
    );
    assert!(wait_until(Duration::from_secs(3), || h
        .ok(&["logs", "st"])
        .contains("hello from pid1")));
    let json = h.status_json("st");
    let veth = std::fs::read_to_string(h.root.join("containers/st/config.toml")).expect("config");
    let veth = veth
        .lines()
        .find(|l| l.starts_with("veth"))
        .expect("veth line")
        .split('"')
        .nth(1)
        .expect("name")
        .to_string();
    assert!(link_exists(&veth));
    let t0 = Instant::now();
    h.ok(&["stop", "st", "--time", "1"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "did not wait for the grace time"
    );
    assert_eq!(h.state("st"), "stopped");
    assert!(
        h.container_cgroups("st").is_empty(),
        "cgroups left after stop"
    );
    assert!(!link_exists(&veth), "veth left after stop");
    let pid = json["pid"].as_i64().expect("pid");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(h.status_json("st")["exit_signal"].as_i64(), Some(9));

    // Start again: the container's files persist in its overlay layer.
    h.ok(&["start", "st"]);
    assert_eq!(h.exec("st", &["cat", "/root/kept"]).trim(), "data");
    let err = h.fails(&["start", "st"]);
    assert!(err.contains("running"), "{err}");

    h.ok(&["destroy", "st"]);
    assert!(!h.root.join("containers/st").exists());
    assert!(h.container_cgroups("st").is_empty());
    assert!(!link_exists(&veth));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(h.root.to_str().expect("utf-8")),
        "mounts left: {mounts}"
    );
    let err = h.fails(&["status", "st"]);
    assert!(err.contains("no container named"), "{err}");
}

#[test]
fn init_exiting_by_itself_is_recorded() {
    let h = TestHost::new();
    h.run(
        "ex3",
        TestImage::Busybox,
        None,
        &[],
        &["/bin/sh", "-c", "echo bye; exit 3"],
    );
    assert!(wait_until(Duration::from_secs(5), || h.state("ex3") == "stopped"));
    let json = h.status_json("ex3");
    assert_eq!(json["exit_code"].as_i64(), Some(3));
    assert!(h.ok(&["logs", "ex3"]).contains("bye"));
    assert!(
        wait_until(Duration::from_secs(5), || h
            .container_cgroups("ex3")
            .is_empty()),
        "cgroups left after exit"
    );
    let list = h.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ex3") && l.contains("stopped")),
        "{list}"
    );
}

#[test]
fn ten_containers_in_parallel() {
    let h = TestHost::new();
    h.with_image(TestImage::Busybox);
    let children: Vec<_> = (0..10u8)
        .map(|i| {
            let ip = h.net.ip(50 + i);
            let name = format!("par{i}");
            h.cr_cmd(&[
                "run",
                &name,
                "--image",
                "busybox",
                "--bridge",
                &h.bridge,
                "--ip",
                &ip,
                "--",
                "/bin/sleep",
                "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning cr run")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("waiting");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&h.ok(&["list", "--json"])).expect("json");
    assert_eq!(list.len(), 10);
    assert!(list.iter().all(|c| c["state"] == "running"), "{list:?}");
    h.exec("par0", &["ping", "-c", "1", "-W", "2", &h.net.addr(59)]);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let h = TestHost::new();
    let img = h.with_image(TestImage::Busybox);
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "bad/name", "--image", img],
            "invalid container name",
        ),
        (
            &["run", "b1", "--image", "nosuchimage"],
            "no image named \"nosuchimage\"",
        ),
        (
            &["run", "b2", "--image", img, "--ip", "10.1.2.300/24"],
            "invalid IP address",
        ),
        (
            &["run", "b3", "--image", img, "--ip", "10.1.2.3"],
            "ADDRESS/PREFIX",
        ),
        (
            &["run", "b4", "--image", img, "--memory", "lots"],
            "invalid size",
        ),
        (&["run", "b5", "--image", img, "--cpus", "0"], "CPU limit"),
        (
            &["run", "b6", "--image", img, "--", "/bin/nosuch"],
            "not found in image",
        ),
        (
            &["run", "b7", "--image", img, "--hostname", "bad host"],
            "invalid hostname",
        ),
        (&["freeze", "nosuch"], "no container named"),
    ];
    for (args, expect) in cases {
        let err = h.fails(args);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(expect),
            "cr {}: the first line does not say {expect:?}: {err}",
            args.join(" ")
        );
    }
    let names = std::fs::read_dir(h.root.join("containers"))
        .expect("containers dir")
        .count();
    assert_eq!(names, 0, "a refused container left a directory");
    assert!(h.cgroup_dirs().iter().all(|d| std::fs::read_dir(d)
        .map(|r| r.flatten().all(|e| !e.path().is_dir()))
        .unwrap_or(true)));

    h.run("dup", TestImage::Busybox, None, &[], SLEEP);
    let err = h.fails(&["run", "dup", "--image", img, "--", "true"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        h.state("dup"),
        "running",
        "a refused duplicate must not touch the original"
    );

    // Not root.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            CR,
            "--root",
        ])
        .arg(&h.root)
        .arg("list")
        .output()
        .expect("running setpriv");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"));
}

#[test]
fn image_in_use_cannot_be_removed() {
    let h = TestHost::new();
    // A private copy of the image, so removing it does not touch the shared cache.
    let cached = cached_image(TestImage::Busybox);
    let src = cached.join("rootfs");
    h.ok(&["image", "import", "mine", src.to_str().expect("utf-8")]);
    let list = h.ok(&["image", "list"]);
    assert!(list.contains("mine"), "{list}");
    h.ok(&["run", "user1", "--image", "mine", "--", "/bin/sleep", "100"]);
    let err = h.fails(&["image", "rm", "mine"]);
    assert!(err.contains("user1"), "{err}");
    h.ok(&["destroy", "user1"]);
    h.ok(&["image", "rm", "mine"]);
    assert!(!h.root.join("images/mine").exists());
}

/// Host ids of a container's user namespace, from `cr status --json`.
fn userns_range(h: &TestHost, name: &str) -> (u64, u64, u64) {
    let json = h.status_json(name);
    let u = &json["userns"];
    (
        u["uid_base"].as_u64().expect("uid_base"),
        u["gid_base"].as_u64().expect("gid_base"),
        u["size"].as_u64().expect("size"),
    )
}

/// Owner uid and gid of a host file.
fn owner(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

fn status_ids(pid: i64, field: &str) -> Vec<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("status line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("id"))
        .collect()
}

#[test]
fn userns_root_inside_is_unprivileged_outside() {
    let h = TestHost::new();
    h.run("un", TestImage::Busybox, Some(30), &["--userns"], SLEEP);
    let (uid_base, gid_base, size) = userns_range(&h, "un");
    assert_eq!(size, 65536);
    assert!(
        uid_base >= 100000 && gid_base >= 100000,
        "{uid_base} {gid_base}"
    );
    let config = std::fs::read_to_string(h.root.join("containers/un/config.toml")).expect("config");
    assert!(
        config.contains(&format!("[userns]\nuid_base = {uid_base}\n")),
        "{config}"
    );
    let text = h.ok(&["status", "un"]);
    assert!(text.contains(&format!("uid {uid_base}-")), "{text}");

    // The mapping, seen inside; PID 1's ids, seen on the host.
    let words = |s: String| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    assert_eq!(
        words(h.exec("un", &["cat", "/proc/self/uid_map"])),
        ["0".to_string(), uid_base.to_string(), "65536".to_string()]
    );
    assert_eq!(
        words(h.exec("un", &["cat", "/proc/1/gid_map"])),
        ["0".to_string(), gid_base.to_string(), "65536".to_string()]
    );
    let pid = h.status_json("un")["pid"].as_i64().expect("pid");
    assert_eq!(status_ids(pid, "Uid:"), [uid_base; 4]);
    assert_eq!(status_ids(pid, "Gid:"), [gid_base; 4]);

    // Root inside, over files that look like root's.
    assert_eq!(h.exec("un", &["id", "-u"]).trim(), "0");
    assert_eq!(h.exec("un", &["id", "-g"]).trim(), "0");
    let ls = h.exec("un", &["ls", "-ln", "/bin/busybox"]);
    let f: Vec<&str> = ls.split_whitespace().collect();
    assert_eq!((f[2], f[3]), ("0", "0"), "{ls}");

    // Root inside writes new files and modifies the image's (copy-up).
    h.exec(
        "un",
        &[
            "sh",
            "-c",
            "echo x > /root/f && echo y >> /etc/hosts && echo z > /root/g && chown 1000:1001 /root/g",
        ],
    );
    assert!(h.exec("un", &["cat", "/etc/hosts"]).ends_with("y\n"));
    assert_eq!(
        h.exec("un", &["stat", "-c", "%u:%g", "/root/g"]).trim(),
        "1000:1001"
    );
    // On the host the upper layer holds them with the ids they have inside
    // (not shifted by the range), so the layer does not depend on the range.
    let upper = h.root.join("containers/un/upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("root/f")).expect("f"),
        "x\n"
    );
    assert_eq!(owner(&upper.join("root/f")), (0, 0));
    assert_eq!(owner(&upper.join("etc/hosts")), (0, 0));
    assert_eq!(owner(&upper.join("root/g")), (1000, 1001));
    // The image itself is untouched.
    let image_hosts = cached_image(TestImage::Busybox).join("rootfs/etc/hosts");
    assert!(!std::fs::read_to_string(image_hosts)
        .expect("image hosts")
        .ends_with("y\n"));

    // A lower directory removed and made again is empty (an opaque
    // directory: overlayfs with userxattr marks it with user.overlay.opaque).
    let out = h.exec(
        "un",
        &["sh", "-c", "rm -rf /var && mkdir /var && ls -A /var"],
    );
    assert_eq!(out, "");
    // Renaming a directory of the image works (overlayfs copies it up).
    h.exec("un", &["mv", "/usr/local", "/usr/local2"]);

    // /proc, /sys, /dev/pts, /dev nodes, /dev/console, and mounting as root.
    assert_eq!(h.exec("un", &["cat", "/proc/1/comm"]).trim(), "sh");
    let links = h.exec("un", &["ls", "/sys/class/net"]);
    let mut links: Vec<&str> = links.split_whitespace().collect();
    links.sort();
    assert_eq!(links, ["eth0", "lo"]);
    let mounts = h.exec("un", &["cat", "/proc/mounts"]);
    assert!(mounts.contains("devpts /dev/pts devpts"), "{mounts}");
    assert!(
        mounts.lines().any(|l| l.starts_with("overlay / overlay")),
        "{mounts}"
    );
    assert!(
        !mounts.contains("/var/tmp/cr-test"),
        "host paths visible in mounts:\n{mounts}"
    );
    assert_eq!(
        h.exec(
            "un",
            &[
                "sh",
                "-c",
                "echo x > /dev/null && head -c 4 /dev/urandom | wc -c"
            ]
        )
        .trim(),
        "4"
    );
    assert_eq!(
        h.exec("un", &["sh", "-c", "cat /proc/kcore | wc -c"])
            .trim(),
        "0"
    );
    h.exec("un", &["sh", "-c", "echo on-console > /dev/console"]);
    assert!(wait_until(Duration::from_secs(3), || h
        .ok(&["logs", "un"])
        .contains("on-console")));
    h.exec(
        "un",
        &[
            "sh",
            "-c",
            "mkdir -p /mnt && mount -t tmpfs t /mnt && touch /mnt/x",
        ],
    );
    // Root inside is not root over the host's files: sysfs stays read-only.
    let out = h.cr(&["exec", "un", "--", "touch", "/sys/kernel/x"]);
    assert!(!out.status.success(), "/sys writable");

    // The same bounding set as without a user namespace.
    let status = h.exec("un", &["cat", "/proc/self/status"]);
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd line");
    let bits = u64::from_str_radix(bnd.split_whitespace().nth(1).expect("hex"), 16).expect("hex");
    for (cap, name) in [
        (16, "SYS_MODULE"),
        (17, "SYS_RAWIO"),
        (25, "SYS_TIME"),
        (22, "SYS_BOOT"),
        (40, "CHECKPOINT_RESTORE"),
    ] {
        assert_eq!(bits & (1 << cap), 0, "{name} still in the bounding set");
    }
    assert_ne!(bits & (1 << 21), 0, "SYS_ADMIN should be kept");

    // cr exec joins every namespace, the user namespace included.
    for ns in ["user", "mnt", "uts", "ipc", "net", "pid", "cgroup"] {
        let inside = h.exec("un", &["readlink", &format!("/proc/self/ns/{ns}")]);
        let init = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns link");
        assert_eq!(
            inside.trim(),
            init.to_string_lossy(),
            "{ns} namespace differs"
        );
    }
    let host_userns = std::fs::read_link("/proc/self/ns/user").expect("own userns");
    let init_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("userns");
    assert_ne!(
        host_userns, init_userns,
        "PID 1 is in the host's user namespace"
    );

    // cr enter: a shell as root inside, on a pty of the container.
    let out = h.enter("un", b"echo uid=$(id -u); tty; exit 4\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("uid=0"), "{text}");
    assert!(text.contains("/dev/pts/"), "not on a pty: {text}");
    assert_eq!(out.status.code(), Some(4));

    // Networking: gateway and the host reach it.
    h.exec("un", &["ping", "-c", "1", "-W", "2", &h.net.addr(1)]);
    let status = Command::new("ping")
        .args(["-c", "1", "-W", "2", &h.net.addr(30)])
        .stdout(Stdio::null())
        .status()
        .expect("running ping");
    assert!(status.success(), "host cannot ping the container");
}

#[test]
fn userns_ranges_are_distinct_and_nothing_is_left() {
    let h = TestHost::new();
    h.run("ua", TestImage::Busybox, Some(40), &["--userns"], SLEEP);
    h.run("ub", TestImage::Busybox, Some(41), &["--userns"], SLEEP);
    h.run("plain", TestImage::Busybox, None, &[], SLEEP);
    let a = userns_range(&h, "ua");
    let b = userns_range(&h, "ub");
    assert!(
        a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0,
        "uid ranges overlap: {a:?} {b:?}"
    );
    assert!(
        a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1,
        "gid ranges overlap: {a:?} {b:?}"
    );
    assert!(h.status_json("plain")["userns"].is_null());
    let plain = h.status_json("plain")["pid"].as_i64().expect("pid");
    assert_eq!(status_ids(plain, "Uid:"), [0; 4]);
    // The two containers' root cannot reach each other's files: different
    // host uids, and a different user namespace each.
    let pa = h.status_json("ua")["pid"].as_i64().expect("pid");
    let pb = h.status_json("ub")["pid"].as_i64().expect("pid");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pa}/ns/user")).expect("ns"),
        std::fs::read_link(format!("/proc/{pb}/ns/user")).expect("ns")
    );

    let veth = |name: &str| -> String {
        let config = std::fs::read_to_string(h.root.join(format!("containers/{name}/config.toml")))
            .expect("config");
        config
            .lines()
            .find(|l| l.starts_with("veth"))
            .expect("veth line")
            .split('"')
            .nth(1)
            .expect("name")
            .to_string()
    };
    let (va, vb) = (veth("ua"), veth("ub"));
    assert!(link_exists(&va) && link_exists(&vb));

    // Stop: processes, cgroups and veth go; the upper layer stays.
    h.exec("ua", &["sh", "-c", "echo kept > /root/kept"]);
    h.ok(&["stop", "ua", "--time", "0"]);
    assert!(!std::path::Path::new(&format!("/proc/{pa}")).exists());
    assert!(
        h.container_cgroups("ua").is_empty(),
        "cgroups left after stop"
    );
    assert!(!link_exists(&va), "veth left after stop");
    h.ok(&["start", "ua"]);
    assert_eq!(h.exec("ua", &["cat", "/root/kept"]).trim(), "kept");
    assert_eq!(userns_range(&h, "ua"), a, "the range changed on restart");

    // Destroy: nothing is left, and the freed range is handed out again.
    h.ok(&["destroy", "ua"]);
    h.ok(&["destroy", "ub"]);
    for name in ["ua", "ub"] {
        assert!(!h.root.join("containers").join(name).exists());
        assert!(
            h.container_cgroups(name).is_empty(),
            "cgroups of {name} left"
        );
    }
    assert!(!link_exists(&va) && !link_exists(&vb), "veth left");
    assert!(!std::path::Path::new(&format!("/proc/{pb}")).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(h.root.to_str().expect("utf-8")),
        "mounts left: {mounts}"
    );
    h.run("uc", TestImage::Busybox, None, &["--userns"], SLEEP);
    assert_eq!(userns_range(&h, "uc").0, a.0.min(b.0));
}

/// Unmounts a test mount (lazily) when dropped.
struct MountGuard(std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn userns_failed_start_leaves_nothing() {
    let h = TestHost::new();
    // An image whose rootfs is an overlay mount: overlayfs cannot be
    // idmapped, so the start fails at that step.
    let cached = cached_image(TestImage::Busybox);
    let image = h.root.join("images/ovl");
    let (rootfs, upper, work) = (
        image.join("rootfs"),
        h.root.join("ovl-upper"),
        h.root.join("ovl-work"),
    );
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::copy(cached.join("image.toml"), image.join("image.toml")).expect("image.toml");
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            cached.join("rootfs").display(),
            upper.display(),
            work.display()
        ))
        .arg(&rootfs)
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting the test overlay");
    let _guard = MountGuard(rootfs.clone());

    let err = h.fails(&[
        "run",
        "bad",
        "--image",
        "ovl",
        "--userns",
        "--bridge",
        &h.bridge,
        "--ip",
        &h.net.ip(50),
        "--",
        "/bin/true",
    ]);
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("idmapping the mount of"), "{err}");
    assert!(!h.root.join("containers/bad").exists(), "directory left");
    assert!(h.container_cgroups("bad").is_empty(), "cgroups left");
    let veth = cr::container::network::veth_name(&h.root.to_string_lossy(), "bad");
    assert!(!link_exists(&veth), "veth left");
}

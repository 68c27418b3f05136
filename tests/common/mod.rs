//! Shared harness for cr's integration tests: a throw-away host (its own
//! state root, bridge and /24) that removes everything it created when it is
//! dropped, even when the test fails.
//!
//! Tests run as root against the real kernel. A missing prerequisite is a
//! failure that names it, never a skip.

#![allow(dead_code)]

pub mod lan;
pub mod redis;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cr::host::Host;

pub const CR: &str = env!("CARGO_BIN_EXE_cr");

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Fails the test unless a prerequisite is there.
pub fn require(what: &str, ok: bool, hint: &str) {
    assert!(ok, "missing prerequisite: {what} ({hint})");
}

pub fn require_root() {
    require(
        "root",
        nix::unistd::geteuid().is_root(),
        "cr's tests run as root against the real kernel",
    );
}

/// A host-wide claim on one /24 for this test (10.X.Y.0/24), so tests that
/// run in parallel, in one process or several, never share a subnet.
pub struct NetClaim {
    path: PathBuf,
    pub x: u8,
    pub y: u8,
}

impl NetClaim {
    pub fn take() -> Self {
        let dir = Path::new("/run/cr-tests");
        fs::create_dir_all(dir).expect("creating /run/cr-tests");
        for k in 0..10_000u32 {
            let (x, y) = (200 + (k / 250) as u8 % 50, (k % 250) as u8 + 1);
            let path = dir.join(format!("net-{x}-{y}"));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => {
                    let _ = fs::write(&path, std::process::id().to_string());
                    return NetClaim { path, x, y };
                }
                Err(_) => {
                    // A claim whose process is gone is stale: take it over.
                    let owner = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok());
                    if let Some(owner) = owner {
                        if !Path::new(&format!("/proc/{owner}")).exists() {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            }
        }
        panic!("no free test subnet under /run/cr-tests");
    }

    /// Address number `host` in this /24, with its prefix.
    pub fn ip(&self, host: u8) -> String {
        format!("10.{}.{}.{}/24", self.x, self.y, host)
    }

    pub fn addr(&self, host: u8) -> String {
        format!("10.{}.{}.{}", self.x, self.y, host)
    }
}

impl Drop for NetClaim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A test host: a state root, a bridge name and a subnet of its own.
pub struct TestHost {
    pub root: PathBuf,
    pub bridge: String,
    pub net: NetClaim,
    /// Network namespace the host's commands run in (None: the machine's).
    pub netns: Option<String>,
}

impl TestHost {
    pub fn new() -> Self {
        require_root();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let net = NetClaim::take();
        let root = PathBuf::from(format!("/var/tmp/cr-test-{}-{}", std::process::id(), seq));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("creating test root");
        TestHost {
            root,
            bridge: format!("crt{}x{}", net.x, net.y),
            net,
            netns: None,
        }
    }

    /// Runs `cr --root ROOT ARGS...` and returns its output.
    pub fn cr(&self, args: &[&str]) -> Output {
        self.cr_cmd(args).output().expect("running cr")
    }

    pub fn cr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                // Not `ip netns exec`: it mounts a fresh /sys that hides the
                // cgroup hierarchies.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(CR);
                c
            }
            None => Command::new(CR),
        };
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs cr and fails the test with its stderr unless it succeeds.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cr(args);
        assert!(
            out.status.success(),
            "cr {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs cr, expects it to fail, and returns its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cr(args);
        assert!(
            !out.status.success(),
            "cr {} succeeded but should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Makes image `name` (built once per target dir and shared read-only) available.
    pub fn with_image(&self, kind: TestImage) -> &'static str {
        let cached = cached_image(kind);
        let images = self.root.join("images");
        fs::create_dir_all(&images).expect("creating images dir");
        let link = images.join(kind.name());
        if !link.exists() {
            std::os::unix::fs::symlink(&cached, &link).expect("linking test image");
        }
        kind.name()
    }

    /// `cr run NAME --image IMG --ip ... --bridge ... EXTRA... -- CMD...`
    #[track_caller]
    pub fn run(
        &self,
        name: &str,
        image: TestImage,
        ip_host: Option<u8>,
        extra: &[&str],
        cmd: &[&str],
    ) {
        let image = self.with_image(image);
        let ip = ip_host.map(|h| self.net.ip(h));
        let mut args = vec!["run", name, "--image", image, "--bridge", &self.bridge];
        if let Some(ip) = &ip {
            args.extend(["--ip", ip.as_str()]);
        }
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        self.ok(&args);
    }

    /// `cr exec NAME -- CMD...`, returning stdout; fails the test on error.
    #[track_caller]
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// `cr enter NAME` with `input` typed into the shell; its output.
    pub fn enter(&self, name: &str, input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cr_cmd(&["enter", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning cr enter");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("writing to cr enter");
        child.wait_with_output().expect("waiting for cr enter")
    }

    /// Runs a python3 script as the container's PID 1 (TestImage::Python)
    /// and waits until it has created `ready` inside the container.
    #[track_caller]
    pub fn run_python_until(&self, name: &str, script: &str, ready: &str) {
        self.run(
            name,
            TestImage::Python,
            None,
            &[],
            &["/usr/bin/python3", "-c", script],
        );
        let ok = wait_until(Duration::from_secs(10), || {
            self.cr(&["exec", name, "--", "test", "-e", ready])
                .status
                .success()
        });
        assert!(
            ok,
            "{name} did not create {ready}: {}",
            self.ok(&["logs", name])
        );
    }

    pub fn state(&self, name: &str) -> String {
        let out = self.ok(&["status", name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        v["state"].as_str().unwrap_or("?").to_string()
    }

    pub fn status_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", name, "--json"])).expect("status json")
    }

    pub fn cgroup_parent(&self) -> String {
        Host::open(&self.root)
            .expect("opening test root")
            .cgroup_parent()
    }

    /// Every cgroup directory of this host that exists on the machine.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let parent = self.cgroup_parent();
        let mut found = Vec::new();
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let p = e.path().join(&parent);
                if p.exists() {
                    found.push(p);
                }
            }
        }
        let p = Path::new("/sys/fs/cgroup").join(&parent);
        if p.exists() {
            found.push(p);
        }
        found
    }

    /// Container cgroup directories left under this host's parent.
    pub fn container_cgroups(&self, name: &str) -> Vec<PathBuf> {
        self.cgroup_dirs()
            .into_iter()
            .map(|p| p.join(name))
            .filter(|p| p.exists())
            .collect()
    }
}

impl TestHost {
    /// Destroys every container of this host (while its namespaces exist).
    pub fn destroy_all(&self) {
        if let Ok(out) = self.cr_cmd(&["list", "--json"]).output() {
            if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                for c in list {
                    if let Some(name) = c["name"].as_str() {
                        let _ = self.cr_cmd(&["destroy", name]).output();
                    }
                }
            }
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.destroy_all();
        let mut del = Command::new("ip");
        if let Some(ns) = &self.netns {
            del.args(["-n", ns]);
        }
        let _ = del
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Removes a cgroup directory and its children (deepest first).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestImage {
    /// busybox only: a shell and the usual tools.
    Busybox,
    /// busybox plus Debian's python3 with its standard library.
    Python,
    /// busybox plus Debian's redis-server and redis-cli.
    Redis,
    /// busybox plus Debian's nginx (no modules, no /etc/nginx: tests write
    /// their own configuration).
    Nginx,
    /// busybox plus Debian's PostgreSQL 15 server (postgres, initdb, its
    /// libraries and share files) and the time zone database.
    Postgres,
}

impl TestImage {
    pub fn name(self) -> &'static str {
        match self {
            TestImage::Busybox => "busybox",
            TestImage::Python => "python",
            TestImage::Redis => "redis",
            TestImage::Nginx => "nginx",
            TestImage::Postgres => "postgres",
        }
    }

    fn build_args(self) -> Vec<&'static str> {
        match self {
            TestImage::Busybox => vec![],
            TestImage::Python => vec![
                "--with",
                "/usr/bin/python3",
                "--tree",
                "/usr/lib/python3.11",
            ],
            TestImage::Redis => vec![
                "--with",
                "/usr/bin/redis-server",
                "--with",
                "/usr/bin/redis-cli",
            ],
            TestImage::Nginx => vec!["--with", "/usr/sbin/nginx"],
            TestImage::Postgres => vec![
                "--with",
                "/usr/lib/postgresql/15/bin/postgres",
                "--with",
                "/usr/lib/postgresql/15/bin/initdb",
                "--tree",
                "/usr/lib/postgresql/15/lib",
                "--tree",
                "/usr/share/postgresql/15",
                "--tree",
                "/usr/share/zoneinfo",
            ],
        }
    }
}

/// Builds a test image once into a cache root under the target directory
/// (shared by every test of every binary; guarded by a lock) and returns the
/// image's directory.
pub fn cached_image(kind: TestImage) -> PathBuf {
    require(
        "busybox-static",
        Path::new("/bin/busybox").exists(),
        "apt-get install -y busybox-static",
    );
    let cache_root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cr-image-cache");
    fs::create_dir_all(&cache_root).expect("creating image cache");
    let lock_path = cache_root.join("build.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock file");
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .expect("locking image cache");
    let dir = cache_root.join("images").join(kind.name());
    if !dir.join("rootfs").is_dir() {
        let mut args = vec![
            "--root",
            cache_root.to_str().expect("utf-8 path"),
            "image",
            "build-minimal",
            kind.name(),
        ];
        args.extend(kind.build_args());
        let out = Command::new(CR)
            .args(&args)
            .output()
            .expect("running cr image build-minimal");
        assert!(
            out.status.success(),
            "building test image {}: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

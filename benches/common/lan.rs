//! Two test hosts on a lan for the migration benchmarks (DESIGN.md's
//! `host1` / `host2`): each a network namespace with its own `cr` state
//! root (so its own cgroup parent), a bridge holding the host's LAN
//! address, and a veth to a `lan` bridge in a third namespace. Each host
//! trusts the other (`cr identity` + `cr peer add` both ways) and may run
//! `cr serve`. Every `cr` command of a host runs as
//! `nsenter --net=/run/netns/NS cr --root ROOT ...`.
//!
//! ```text
//!   netns T-h1                    netns T-lan                    netns T-h2
//!   containers ─ BR 10.77.0.1 ─ up0 ══ port0 ─ lan ─ port1 ══ up1 ─ BR 10.77.0.2 ─ containers
//! ```
//!
//! The namespaces are private, so the subnet cannot clash with the
//! machine's; their names carry the benchmark's pid. Dropped (also when
//! the benchmark panics), the fixture stops the agents it started,
//! destroys every container of both roots (SIGKILL through the cgroups if
//! `cr destroy` fails), unmounts migration staging tmpfs, removes the
//! cgroup parents, the roots and the namespaces (with their veths and
//! bridges).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port `cr serve` listens on in each host namespace.
pub const SERVE_PORT: u16 = 7447;

/// One test host of a [`Lan`].
pub struct LanHost {
    pub cr: PathBuf,
    pub root: PathBuf,
    /// Its network namespace (under /run/netns).
    pub netns: String,
    /// Its LAN address, without prefix.
    pub address: String,
}

impl LanHost {
    /// `nsenter --net=NS cr --root ROOT ARGS...` (not `ip netns exec`: it
    /// mounts a fresh /sys that hides the cgroup hierarchies).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg(&self.cr)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs cr in the host; panics with its stderr unless it succeeds,
    /// returns its stdout.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("running nsenter cr");
        assert!(
            out.status.success(),
            "cr {} on {}: {}",
            args.join(" "),
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Names of the containers this host has.
    pub fn containers(&self) -> Vec<String> {
        let Ok(out) = self.cmd(&["list", "--json"]).output() else {
            return Vec::new();
        };
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Where `cr serve` of this host logs.
    pub fn serve_log(&self) -> PathBuf {
        self.root.join("serve.log")
    }

    /// This host's cgroup directories, one per v1 hierarchy (and v2).
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let Ok(host) = cr::host::Host::open(&self.root) else {
            return Vec::new();
        };
        let parent = host.cgroup_parent();
        let mut dirs: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join(&parent))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        let unified = Path::new("/sys/fs/cgroup").join(&parent);
        if unified.join("cgroup.procs").exists() {
            dirs.push(unified);
        }
        dirs
    }

    fn clean(&self) {
        for name in self.containers() {
            let _ = self.cmd(&["destroy", &name]).output();
        }
        // Staging tmpfs of migrations that did not end.
        if let Ok(entries) = fs::read_dir(self.root.join("migrations")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Whatever `cr destroy` left: thawed, killed, then the directories.
        let dirs = self.cgroup_dirs();
        for dir in &dirs {
            kill_cgroup_tree(dir);
        }
        for dir in &dirs {
            remove_cgroup_tree(dir);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn kill_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // Killed processes take a moment to leave.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two hosts, the lan namespace and the agents.
pub struct Lan {
    pub hosts: [LanHost; 2],
    /// The bridge name both hosts give their containers.
    pub bridge: String,
    /// The /24 without its last byte ("10.77.0").
    pub prefix: String,
    namespaces: Vec<String>,
    serves: Vec<(usize, Child)>,
}

impl Lan {
    /// Builds the hosts: namespaces, links, roots, identities and trust.
    pub fn new(cr: &Path) -> Lan {
        let tag = format!("crb{}", std::process::id());
        let prefix = "10.77.0".to_string();
        let host = |i: usize| LanHost {
            cr: cr.to_path_buf(),
            root: PathBuf::from(format!("/var/tmp/{tag}-host{}", i + 1)),
            netns: format!("{tag}-host{}", i + 1),
            address: format!("{prefix}.{}", i + 1),
        };
        let mut lan = Lan {
            hosts: [host(0), host(1)],
            bridge: "crbr0".to_string(),
            prefix,
            namespaces: Vec::new(),
            serves: Vec::new(),
        };
        let lan_ns = format!("{tag}-lan");
        for ns in [&lan_ns, &lan.hosts[0].netns, &lan.hosts[1].netns] {
            ip(&["netns", "add", ns]);
            lan.namespaces.push(ns.clone());
        }
        ip(&["-n", &lan_ns, "link", "add", "lan", "type", "bridge"]);
        ip(&["-n", &lan_ns, "link", "set", "lan", "up"]);
        for (i, h) in lan.hosts.iter().enumerate() {
            let _ = fs::remove_dir_all(&h.root);
            fs::create_dir_all(&h.root).expect("creating a host root");
            let (ns, up, port) = (&h.netns, format!("up{i}"), format!("port{i}"));
            ip(&[
                "link", "add", &up, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &lan_ns,
            ]);
            ip(&["-n", &lan_ns, "link", "set", &port, "master", "lan", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "add", &lan.bridge, "type", "bridge"]);
            // A fixed address: a bridge otherwise takes the lowest of its
            // ports' MACs, which changes as containers come and go, and
            // the other host's ARP entry then points nowhere for ~30 s.
            let mac = format!("02:cb:00:00:00:{:02x}", i + 1);
            ip(&["-n", ns, "link", "set", &lan.bridge, "address", &mac]);
            ip(&["-n", ns, "link", "set", &up, "master", &lan.bridge, "up"]);
            let addr = format!("{}/24", h.address);
            ip(&["-n", ns, "addr", "add", &addr, "dev", &lan.bridge]);
            ip(&["-n", ns, "link", "set", &lan.bridge, "up"]);
        }
        let fps: Vec<String> = lan
            .hosts
            .iter()
            .map(|h| h.run(&["identity"]).trim().to_string())
            .collect();
        for (i, h) in lan.hosts.iter().enumerate() {
            let other = 1 - i;
            let address = format!("{}:{SERVE_PORT}", lan.hosts[other].address);
            h.run(&[
                "peer",
                "add",
                &format!("host{}", other + 1),
                &address,
                "--fingerprint",
                &fps[other],
            ]);
        }
        lan
    }

    /// Starts `cr serve` on host `i` (0 or 1), logging to its serve log,
    /// and waits until it listens.
    pub fn serve(&mut self, i: usize) {
        let h = &self.hosts[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(h.serve_log())
            .expect("serve log");
        let child = h
            .cmd(&["serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting cr serve");
        self.serves.push((i, child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(h.serve_log()).is_ok_and(|l| l.contains("listening on")) {
            assert!(
                Instant::now() < deadline,
                "cr serve did not start on {}",
                h.netns
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID of host `i`'s `cr serve` (`nsenter` without `--fork` execs
    /// `cr` in its own process), if it was started.
    pub fn serve_pid(&self, i: usize) -> Option<u32> {
        self.serves
            .iter()
            .find(|(h, _)| *h == i)
            .map(|(_, c)| c.id())
    }

    pub fn serve_log(&self, i: usize) -> String {
        fs::read_to_string(self.hosts[i].serve_log()).unwrap_or_default()
    }

    /// Image `py` (python3 and its library) built on host1 and shared
    /// read-only with host2, for workloads that migrate.
    pub fn python_image(&self) {
        let (h1, h2) = (&self.hosts[0], &self.hosts[1]);
        h1.run(&[
            "image",
            "build-minimal",
            "py",
            "--with",
            "/usr/bin/python3",
            "--tree",
            "/usr/lib/python3.11",
        ]);
        fs::create_dir_all(h2.root.join("images")).expect("host2 images");
        std::os::unix::fs::symlink(h1.root.join("images/py"), h2.root.join("images/py"))
            .expect("sharing the image");
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (_, mut c) in self.serves.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Containers go while their namespaces still exist.
        for h in &self.hosts {
            h.clean();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

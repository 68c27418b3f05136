//! What the benchmarks share: the `cr` binary they drive and a guard that
//! removes everything a benchmark's host created, even when it panics;
//! [`lan`]: two test hosts in network namespaces for the migration benchmarks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// Only the migration benchmarks build the two-host lan.
#[allow(dead_code)]
pub mod lan;

/// The release `cr` next to the benchmark binary, built if missing.
pub fn cr_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // target/<profile>/deps/NAME-HASH -> target/<profile>/cr
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cr = dir.join("cr");
    if !cr.exists() {
        let status = Command::new("cargo")
            .args(["build", "--release", "--bin", "cr"])
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    cr
}

/// A benchmark's host: runs `cr --root ROOT`, and when dropped destroys
/// every container of `root`, deletes `bridge`, the host's cgroup parents
/// and the root itself.
pub struct Cleanup {
    pub cr: PathBuf,
    pub root: PathBuf,
    pub bridge: Option<&'static str>,
}

impl Cleanup {
    /// Runs `cr --root ROOT ARGS...`; panics with its stderr unless it
    /// succeeds, returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.cr)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("running cr");
        assert!(
            out.status.success(),
            "cr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let cr = |args: &[&str]| {
            Command::new(&self.cr)
                .arg("--root")
                .arg(&self.root)
                .args(args)
                .output()
        };
        if let Ok(out) = cr(&["list", "--json"]) {
            if let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                for c in list {
                    if let Some(name) = c["name"].as_str() {
                        let _ = cr(&["destroy", name]);
                    }
                }
            }
        }
        if let Some(bridge) = self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
        if let Ok(host) = cr::host::Host::open(&self.root) {
            let parent = host.cgroup_parent();
            if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
                for e in entries.flatten() {
                    let _ = fs::remove_dir(e.path().join(&parent));
                }
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

//! Throughput of a container's disk (ext4 on a loop device, direct I/O,
//! over the disk server's FUSE file of a ploop-like chain) beside the limit
//! measured in the same run: ext4 on a loop device (direct I/O) over a plain
//! file on the same host filesystem. fio with direct I/O on a file in each
//! filesystem (the container's through /proc/PID/root): sequential 1 MiB
//! write and read of 256 MiB, random 4 KiB write and read (5 s each). Also
//! the time of a consistent snapshot (frozen window and chain switch).
//!
//! Run as root: `cargo bench --bench disk`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cr_binary, Cleanup};

const JOBS: [(&str, &str, &str); 4] = [
    ("seq write 1M", "write", "1M"),
    ("seq read 1M", "read", "1M"),
    ("rand write 4K", "randwrite", "4k"),
    ("rand read 4K", "randread", "4k"),
];

/// ext4 on a loop device over a plain file, mounted on a directory: the limit.
struct PlainLoop {
    device: String,
    mnt: PathBuf,
    file: PathBuf,
}

impl PlainLoop {
    fn new(dir: &Path) -> Self {
        let file = dir.join("plain.img");
        let mnt = dir.join("plain-mnt");
        fs::create_dir_all(&mnt).unwrap();
        fs::File::create(&file).unwrap().set_len(1 << 30).unwrap();
        run(
            "mkfs.ext4",
            &["-q", "-F", "-b", "4096", file.to_str().unwrap()],
        );
        let out = Command::new("losetup")
            .args(["--show", "-f", "--direct-io=on", "--sector-size", "4096"])
            .arg(&file)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = PlainLoop { device, mnt, file };
        run("mount", &[&p.device, p.mnt.to_str().unwrap()]);
        p
    }
}

impl Drop for PlainLoop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = fs::remove_file(&self.file);
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// MiB/s of one fio job on `dir`.
fn fio(dir: &Path, rw: &str, bs: &str) -> f64 {
    let file = dir.join("fio.dat");
    let mut args = vec![
        "--name=bench".to_string(),
        format!("--filename={}", file.display()),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        "--size=256M".into(),
        "--direct=1".into(),
        "--ioengine=psync".into(),
        "--output-format=json".into(),
    ];
    if rw.starts_with("rand") {
        args.extend(["--time_based".into(), "--runtime=5".into()]);
    }
    if rw.contains("write") {
        args.push("--end_fsync=1".into());
    }
    let out = Command::new("fio")
        .args(&args)
        .output()
        .expect("fio (apt-get install fio)");
    assert!(
        out.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio json");
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    v["jobs"][0][side]["bw_bytes"].as_f64().expect("bw_bytes") / (1 << 20) as f64
}

fn main() {
    let cr = cr_binary();
    let root = PathBuf::from(format!("/var/tmp/cr-bench-disk-{}", std::process::id()));
    fs::create_dir_all(&root).unwrap();
    let host = Cleanup {
        cr,
        root: root.clone(),
        bridge: None,
    };
    host.run(&["image", "build-minimal", "busybox"]);
    host.run(&[
        "run",
        "bench",
        "--image",
        "busybox",
        "--disk",
        "1G",
        "--",
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 1; done",
    ]);
    let status: serde_json::Value =
        serde_json::from_str(&host.run(&["status", "bench", "--json"])).unwrap();
    let pid = status["pid"].as_i64().expect("pid");
    let disk_dir = PathBuf::from(format!("/proc/{pid}/root"));
    let plain = PlainLoop::new(&root);

    println!("fio, direct I/O, 256 MiB file, ext4 on loop (direct I/O) in both:");
    println!(
        "{:<14} {:>12} {:>14} {:>7}",
        "job", "cr disk", "plain loop", "ratio"
    );
    for (what, rw, bs) in JOBS {
        let ours = fio(&disk_dir, rw, bs);
        let limit = fio(&plain.mnt, rw, bs);
        println!(
            "{what:<14} {:>8.0} MiB/s {:>8.0} MiB/s {:>7.2}",
            ours,
            limit,
            ours / limit
        );
    }

    let mut frozen = Vec::new();
    let mut switch = Vec::new();
    for i in 0..5 {
        let out = host.run(&[
            "disk",
            "snapshot",
            "bench",
            "--label",
            &format!("s{i}"),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        frozen.push(
            v["frozen"]["nanos"].as_f64().unwrap_or(0.0) / 1e6
                + v["frozen"]["secs"].as_f64().unwrap_or(0.0) * 1e3,
        );
        switch.push(
            v["switch"]["nanos"].as_f64().unwrap_or(0.0) / 1e6
                + v["switch"]["secs"].as_f64().unwrap_or(0.0) * 1e3,
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "snapshot (5 runs, median): frozen {:.1} ms, chain switch {:.1} ms (target: under 50 ms)",
        median(&mut frozen),
        median(&mut switch)
    );
    drop(plain);
}

//! Checkpoint of a container holding 1 GiB of touched memory (half random
//! bytes, half zero pages), beside a plain `process_vm_readv` reader of the
//! same memory in the same run.
//!
//! Prints: frozen time with pre-copy (the default) and without it, the
//! pre-copy's own duration and rate, dump throughput, image size / RSS, and
//! the reader's bandwidth. Targets (issue 3): frozen time at most 0.25 s,
//! image at most 0.52 of RSS without compression. Restore: `cr restore` of
//! the whole container (from the pre-copied image) with lazy pages, target
//! at most 0.20 s, with the time until every page is in, the same restore
//! with eager pages, and the supervisor's phase breakdown (wall and CPU ms
//! of each phase, from its log).
//!
//! Run as root: `cargo bench --bench checkpoint`.

mod common;
use std::fs;
use std::io::IoSliceMut;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use common::{cr_binary, Cleanup};

const WORKLOAD: &str = "import os, time\n\
half = 512 << 20\n\
rnd = bytearray(os.urandom(half))\n\
zero = bytearray(half)\n\
for i in range(0, half, 4096):\n    zero[i] = 0\n\
open('/root/ready', 'w').write('1')\n\
while True:\n    time.sleep(1)\n";

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    let cr = cr_binary();
    let root = PathBuf::from(format!("/var/tmp/cr-bench-ckpt-{}", std::process::id()));
    let host = Cleanup {
        cr: cr.clone(),
        root: root.clone(),
        bridge: None,
    };
    let run = |args: &[&str]| host.run(args);
    run(&[
        "image",
        "build-minimal",
        "py",
        "--with",
        "/usr/bin/python3",
        "--tree",
        "/usr/lib/python3.11",
    ]);
    run(&[
        "run",
        "mem",
        "--image",
        "py",
        "--",
        "/usr/bin/python3",
        "-c",
        WORKLOAD,
    ]);
    let upper_ready = root.join("containers/mem/upper/root/ready");
    let t = Instant::now();
    while !upper_ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "workload did not get ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status: serde_json::Value =
        serde_json::from_str(&run(&["status", "mem", "--json"])).expect("json");
    let pid = status["pid"].as_i64().expect("pid") as i32;
    let rss = vm_rss(pid);

    // The limit: one reader copying every present page of the process.
    let (bytes_read, secs) = read_all_memory(pid);
    let reader_gbs = bytes_read as f64 / secs / 1e9;

    let mut results = Vec::new();
    for (label, compress, pre_copy) in [
        ("none", "none", true),
        ("none, no pre-copy", "none", false),
        ("zstd", "zstd", true),
    ] {
        let image = root.join(format!("img-{}", results.len()));
        let t = Instant::now();
        let mut args = vec![
            "checkpoint",
            "mem",
            "--leave-running",
            "--json",
            "--compress",
            compress,
            "--image",
            image.to_str().expect("utf-8"),
        ];
        if !pre_copy {
            args.push("--no-pre-copy");
        }
        let out = run(&args);
        let wall = t.elapsed().as_secs_f64();
        let s: serde_json::Value = serde_json::from_str(&out).expect("summary json");
        results.push((label, s, wall));
    }

    // Restore: from the uncompressed image, into a stopped container,
    // RESTORE_RUNS times with lazy pages (the median is the figure), once
    // with eager pages, then once from the zstd image (always eager). Each
    // run's phases come from the supervisor's log; a lazy run also waits
    // for the fill's end ("lazy pages: ... filled in T ms").
    run(&["stop", "mem", "--time", "0"]);
    let log = root.join("containers/mem/supervisor.log");
    let mut restores = Vec::new();
    let mut restored_rss = 0;
    // img-0: uncompressed with pre-copy, img-2: zstd with pre-copy.
    for (label, runs, image, pages) in [
        ("lazy", RESTORE_RUNS, "img-0", "lazy"),
        ("eager", 1, "img-0", "eager"),
        ("zstd", 1, "img-2", "lazy"),
    ] {
        let image = root.join(image);
        for _ in 0..runs {
            let logged = fs::read_to_string(&log).map(|l| l.len()).unwrap_or(0);
            let t = Instant::now();
            run(&[
                "restore",
                "mem",
                "--image",
                image.to_str().expect("utf-8"),
                "--pages",
                pages,
            ]);
            let secs = t.elapsed().as_secs_f64();
            let filled = (label == "lazy").then(|| wait_for_fill(&log, logged, t));
            let restored: serde_json::Value =
                serde_json::from_str(&run(&["status", "mem", "--json"])).expect("json");
            assert_eq!(
                restored["state"], "running",
                "the restored container does not run"
            );
            restored_rss = vm_rss(restored["pid"].as_i64().expect("pid") as i32);
            run(&["stop", "mem", "--time", "0"]);
            restores.push((label, secs, filled, last_phases(&log)));
        }
    }

    println!(
        "checkpoint of 1 GiB touched memory (512 MiB random, 512 MiB zero pages), RSS {:.0} MiB",
        rss as f64 / (1 << 20) as f64
    );
    println!("  limit: process_vm_readv of every present page   {reader_gbs:6.2} GB/s ({:.0} MiB in {:.3} s)", bytes_read as f64 / (1 << 20) as f64, secs);
    for (label, s, wall) in results {
        let frozen = s["frozen_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        // Memory processed while frozen: stored pages and the zero pages found.
        let frozen_pages = s["frozen_pages_written"].as_u64().unwrap_or(0)
            + s["frozen_zero_pages"].as_u64().unwrap_or(0);
        let bytes = s["bytes"].as_u64().unwrap_or(0);
        let gbs = (frozen_pages * 4096) as f64 / frozen.max(1e-9) / 1e9;
        println!(
            "  compression {label}: frozen {frozen:.3} s (target 0.25: {}), {frozen_pages} pages copied frozen ({gbs:.2} GB/s = {:.2} of the reader), image {:.0} MiB = {:.3} of RSS (target 0.52: {}), wall {wall:.2} s",
            if frozen <= 0.25 { "met" } else { "MISSED" },
            gbs / reader_gbs,
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / rss as f64,
            if (bytes as f64) <= 0.52 * rss as f64 { "met" } else { "MISSED" },
        );
        let pre = &s["pre_copy"];
        if pre.is_object() {
            let secs = pre["ms"].as_f64().unwrap_or(0.0) / 1000.0;
            let pages = pre["pages_written"].as_u64().unwrap_or(0)
                + pre["zero_pages"].as_u64().unwrap_or(0);
            let pre_gbs = (pages * 4096) as f64 / secs.max(1e-9) / 1e9;
            println!(
                "      pre-copy while running: {secs:.3} s, {} rounds {}, {pages} pages ({pre_gbs:.2} GB/s = {:.2} of the reader)",
                pre["rounds"],
                pre["round_pages"],
                pre_gbs / reader_gbs,
            );
        }
    }
    print_restore(&restores, restored_rss);
}

/// Restores of the uncompressed image measured; the median is reported.
const RESTORE_RUNS: usize = 3;

/// A restore: label, seconds until `cr restore` returned, seconds until a
/// lazy fill ended, the supervisor's phases.
type Restore<'a> = (&'a str, f64, Option<f64>, String);

fn print_restore(restores: &[Restore<'_>], rss: u64) {
    let median_of = |label: &str, pick: &dyn Fn(&Restore<'_>) -> Option<f64>| {
        let mut v: Vec<f64> = restores
            .iter()
            .filter(|r| r.0 == label)
            .filter_map(pick)
            .collect();
        v.sort_by(f64::total_cmp);
        (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), v)
    };
    let (median, runs) = median_of("lazy", &|r| Some(r.1));
    let (filled, _) = median_of("lazy", &|r| r.2);
    let (eager, _) = median_of("eager", &|r| Some(r.1));
    println!(
        "  restore (cr restore, whole command, lazy pages), median of {}: {median:.3} s (target 0.20: {}), runs {runs:.3?} s; every page in after {filled:.3} s; eager pages, same image: {eager:.3} s; restored RSS {:.0} MiB",
        runs.len(),
        if median <= 0.20 { "met" } else { "MISSED" },
        rss as f64 / (1 << 20) as f64
    );
    for (label, secs, filled, phases) in restores {
        let fill = filled.map_or(String::new(), |f| format!(", filled at {f:.3} s"));
        println!("    {label:5} {secs:.3} s{fill}; supervisor {phases}");
    }
}

/// Waits for the lazy fill's line after byte `from` of the supervisor's
/// log; returns the seconds since `start` when it was seen.
fn wait_for_fill(log: &std::path::Path, from: usize, start: Instant) -> f64 {
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text
            .get(from..)
            .is_some_and(|t| t.lines().any(|l| l.starts_with("lazy pages:")))
        {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the lazy fill did not end"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The last `restore phases` line of the supervisor's log.
fn last_phases(log: &std::path::Path) -> String {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("restore phases "))
        .unwrap_or("(no phases logged)")
        .to_string()
}

fn vm_rss(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Reads every readable private mapping of `pid` with process_vm_readv in
/// 4 MiB calls; returns bytes read and seconds.
fn read_all_memory(pid: i32) -> (u64, f64) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut ranges = Vec::new();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.contains("[vvar") || line.contains("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').expect("range");
        ranges.push((
            u64::from_str_radix(a, 16).expect("hex"),
            u64::from_str_radix(b, 16).expect("hex"),
        ));
    }
    let mut buf = vec![0u8; 4 << 20];
    buf.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let mut total = 0u64;
    let t = Instant::now();
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(buf.len());
            let remote = [RemoteIoVec {
                base: at as usize,
                len,
            }];
            let mut local = [IoSliceMut::new(&mut buf[..len])];
            match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
                Ok(n) if n > 0 => total += n as u64,
                _ => {}
            }
            at += len as u64;
        }
    }
    (total, t.elapsed().as_secs_f64())
}

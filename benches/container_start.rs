//! Container start and exec latency, beside a bare start of the same image.
//!
//! * `cr run` → PID 1 running (the command returns once PID 1 has exec'd),
//! * `cr exec NAME -- /bin/true` round trip,
//! * a bare start in the same run: fork, unshare the same namespaces, bind
//!   the image's rootfs, pivot_root and exec `/bin/true`, timed until the
//!   exec succeeded. It is the floor the kernel sets; cr adds cgroups, an
//!   overlay, /proc /sys /dev, a console, a veth and a supervisor.
//!
//! Run as root: `cargo bench --bench container_start`. Prints medians and
//! the 50 ms target beside them.

mod common;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, execv, fork, pipe2, pivot_root, ForkResult};

use common::{cr_binary, Cleanup};

const RUNS: usize = 30;
const TARGET_MS: f64 = 50.0;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    let cr = cr_binary();
    let root = PathBuf::from(format!("/var/tmp/cr-bench-{}", std::process::id()));
    let host = Cleanup {
        cr: cr.clone(),
        root: root.clone(),
        bridge: Some("crbench0"),
    };
    let cr_at = |args: &[&str]| {
        host.run(args);
    };
    cr_at(&["image", "build-minimal", "bench"]);
    let rootfs = root.join("images/bench/rootfs");

    // Warm up caches once.
    cr_at(&[
        "run",
        "warm",
        "--image",
        "bench",
        "--ip",
        "10.231.0.9/24",
        "--bridge",
        "crbench0",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    cr_at(&["destroy", "warm"]);

    let mut run_ms = Vec::new();
    let mut run_net_ms = Vec::new();
    for i in 0..RUNS {
        let name = format!("b{i}");
        let t = Instant::now();
        cr_at(&["run", &name, "--image", "bench", "--", "/bin/sleep", "1000"]);
        run_ms.push(ms(t.elapsed()));
        cr_at(&["destroy", &name]);

        let ip = format!("10.231.0.{}/24", 10 + i);
        let t = Instant::now();
        cr_at(&[
            "run",
            &name,
            "--image",
            "bench",
            "--ip",
            &ip,
            "--bridge",
            "crbench0",
            "--",
            "/bin/sleep",
            "1000",
        ]);
        run_net_ms.push(ms(t.elapsed()));
        if i + 1 < RUNS {
            cr_at(&["destroy", &name]);
        }
    }
    let last = format!("b{}", RUNS - 1);
    let mut exec_ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        cr_at(&["exec", &last, "--", "/bin/true"]);
        exec_ms.push(ms(t.elapsed()));
    }
    cr_at(&["destroy", &last]);

    let mut bare_ms = Vec::new();
    for _ in 0..RUNS {
        bare_ms.push(bare_start(&rootfs));
    }

    let bare = median(&mut bare_ms);
    let run = median(&mut run_ms);
    let run_net = median(&mut run_net_ms);
    println!("container start, median of {RUNS} runs (2 cores, this machine):");
    println!("  bare unshare+pivot_root+exec (limit)    {bare:8.2} ms");
    println!("  cr run, no network                      {run:8.2} ms  ({:.1}x bare; target {TARGET_MS} ms: {})", run / bare, verdict(run));
    println!("  cr run, veth + bridge + IP              {run_net:8.2} ms  ({:.1}x bare; target {TARGET_MS} ms: {})", run_net / bare, verdict(run_net));
    println!(
        "  cr exec -- /bin/true                    {:8.2} ms",
        median(&mut exec_ms)
    );
}

fn verdict(v: f64) -> &'static str {
    if v <= TARGET_MS {
        "met"
    } else {
        "MISSED"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The floor: new namespaces, the image bound as root, pivot_root, exec.
fn bare_start(rootfs: &Path) -> f64 {
    let t = Instant::now();
    let (r, w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    // SAFETY: the benchmark is single-threaded; the child only makes system
    // calls and execs or exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(r);
            let flags = CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWCGROUP;
            let ok = unshare(flags).is_ok()
                // SAFETY: still single-threaded in the child.
                && match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        let _ = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>);
                        let _ = mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND, None::<&str>);
                        let _ = chdir(rootfs);
                        let _ = pivot_root(".", ".");
                        let _ = umount2(".", MntFlags::MNT_DETACH);
                        let _ = chdir("/");
                        let prog = c"/bin/true";
                        let _ = execv(prog, &[prog]);
                        // SAFETY: leaving the forked child without destructors.
                        unsafe { libc::_exit(127) }
                    }
                    Ok(ForkResult::Parent { child }) => {
                        drop(w);
                        waitpid(child, None).is_ok()
                    }
                    Err(_) => false,
                };
            // SAFETY: leaving the forked child without destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut f = fs::File::from(r);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            let elapsed = ms(t.elapsed());
            let _ = waitpid(child, None);
            elapsed
        }
    }
}

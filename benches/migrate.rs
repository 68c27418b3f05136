//! `cr migrate` of a container holding 1 GiB of touched memory (half random
//! bytes, half zero pages: the workload of `benches/checkpoint.rs`) between
//! two test hosts on a lan (network namespaces, `benches/common/lan.rs`),
//! beside a bare QUIC stream of the same number of bytes between the same
//! two namespaces in the same run (the limit).
//!
//! Each migration starts a fresh container on host1 and moves it to host2
//! with `cr migrate NAME host2 --json` (pre-copy, the default, and
//! `--cold`); the report gives total and frozen time, bytes sent and the
//! transfer phase's throughput, and every phase. The limit is
//! cr-transport used directly: an endpoint listening in host2's namespace
//! (a thread that entered it before building its runtime and binding), a
//! client in host1's, mutually pinned identities, one data stream written
//! through `BlockingSend` and read through `BlockingRecv`, the engine's
//! adapters, with cr's own runtime (`cr::migrate::runtime`) and the same
//! `Tuning` as `cr serve`, run right after each migration (the machine is
//! shared: each migration is compared with the bare stream next to it).
//!
//! Targets (issue 6): transfer throughput at least 0.85 of the bare
//! stream; total time under 1.5 s.
//!
//! Run as root: `cargo bench --bench migrate`.

// Not every bench uses every helper of common.
#[allow(dead_code)]
mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cr_transport::{
    BlockingRecv, BlockingSend, Endpoint, Identity, MigrationId, Peer, StreamHeader, StreamKind,
    TrustStore, Tuning,
};
use nix::sched::{setns, CloneFlags};

use common::cr_binary;
use common::lan::{Lan, LanHost};

const WORKLOAD: &str = "import os, time\n\
half = 512 << 20\n\
rnd = bytearray(os.urandom(half))\n\
zero = bytearray(half)\n\
for i in range(0, half, 4096):\n    zero[i] = 0\n\
open('/root/ready', 'w').write('1')\n\
while True:\n    time.sleep(1)\n";

const TARGET_RATIO: f64 = 0.85;
const TARGET_TOTAL_S: f64 = 1.5;
/// The port of the bare stream's listener in host2's namespace.
const BARE_PORT: u16 = 7448;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    // The bare stream runs with the allocator settings of `cr serve`.
    cr::keep_freed_memory();
    let cr = cr_binary();
    let mut lan = Lan::new(&cr);
    lan.serve(1);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    // The image, built once on host1 and shared read-only with host2.
    lan.python_image();

    // CR_BENCH_MODES=pre,cold,... picks the runs (default: pre,cold,pre).
    let modes: Vec<bool> = std::env::var("CR_BENCH_MODES")
        .unwrap_or_else(|_| "pre,cold,pre".into())
        .split(',')
        .map(|m| match m.trim() {
            "pre" => false,
            "cold" => true,
            other => panic!("CR_BENCH_MODES: {other:?} is neither pre nor cold"),
        })
        .collect();
    let serve_pid = lan.serve_pid(1).expect("host2 serves");
    let mut runs = Vec::new();
    for cold in modes {
        let rss = start_workload(&lan);
        let (src0, dst0) = (children_cpu(), process_cpu(serve_pid));
        let t = Instant::now();
        let mut args = vec!["migrate", "mem", "host2", "--json"];
        if cold {
            args.push("--cold");
        }
        let out = h1.run(&args);
        let wall = t.elapsed().as_secs_f64();
        let cpu = (children_cpu() - src0, process_cpu(serve_pid) - dst0);
        let report: serde_json::Value = serde_json::from_str(&out).expect("report json");
        // It runs on host2 only.
        assert!(h1.containers().is_empty(), "left on host1");
        let status: serde_json::Value =
            serde_json::from_str(&h2.run(&["status", "mem", "--json"])).expect("status json");
        assert_eq!(status["state"], "running", "not running on host2");
        let dest = lan
            .serve_log(1)
            .lines()
            .rev()
            .find(|l| l.contains("runs here"))
            .unwrap_or("(no line in the destination's log)")
            .to_string();
        // The lazy fill after the resume ends before the bare stream runs.
        let fill = lazy_fill(h2);
        h2.run(&["destroy", "mem"]);
        // The limit, right after: the same bytes on one bare stream.
        let bytes = report["bytes"].as_u64().expect("bytes in the report");
        let self0 = self_cpu();
        let bare = bare_stream(&lan, bytes);
        let bare_cpu = self_cpu() - self0;
        let store = fresh_store(bytes);
        runs.push(Run {
            cold,
            rss,
            wall,
            report,
            dest,
            fill,
            adjacent: bytes as f64 / bare.as_secs_f64(),
            cpu,
            bare_cpu,
            bare_s: bare.as_secs_f64(),
            store,
        });
    }
    let bytes = runs[0].report["bytes"].as_u64().unwrap_or(0);
    let bare_bps = runs.iter().map(|r| r.adjacent).fold(0.0, f64::max);

    println!(
        "migration host1 -> host2 (network namespaces on a bridge, veth MTU 1500) of 1 GiB touched memory (512 MiB random, 512 MiB zero pages)"
    );
    println!(
        "  limit: bare QUIC stream of the same bytes ({:.0} MiB) host1 -> host2 (BlockingSend/BlockingRecv), measured after each migration: best {:.3} GB/s, each {:.3?} GB/s",
        bytes as f64 / (1 << 20) as f64,
        bare_bps / 1e9,
        runs.iter().map(|r| r.adjacent / 1e9).collect::<Vec<_>>()
    );
    for run in &runs {
        let Run {
            cold,
            rss,
            wall,
            report: r,
            dest,
            fill,
            adjacent,
            cpu,
            bare_cpu,
            bare_s,
            store,
        } = run;
        let ms = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let total = ms("total_ms") / 1e3;
        let frozen = ms("frozen_ms") / 1e3;
        let bps = ms("transfer_bytes_per_s");
        let ratio = bps / adjacent;
        let sent = r["bytes"].as_u64().unwrap_or(0);
        println!(
            "  {}: total {total:.3} s (target < {TARGET_TOTAL_S}: {}), frozen {frozen:.3} s, {:.0} MiB sent (RSS {:.0} MiB), transfer {:.3} GB/s = {ratio:.2} of the bare stream after it, {:.2} of the best (target {TARGET_RATIO}: {}); cr migrate wall {wall:.3} s",
            if *cold { "--cold      " } else { "pre-copy (2)" },
            met(total < TARGET_TOTAL_S),
            sent as f64 / (1 << 20) as f64,
            *rss as f64 / (1 << 20) as f64,
            bps / 1e9,
            bps / bare_bps,
            met(ratio >= TARGET_RATIO),
        );
        let phases: Vec<String> = r["phases"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| {
                        format!(
                            "{} {:.0}",
                            p[0].as_str().unwrap_or("?"),
                            p[1].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("      source phases (ms): {}", phases.join(", "));
        let ck = &r["checkpoint"];
        let pc = &ck["pre_copy"];
        println!(
            "      pre-copy {:.0} ms while running ({} rounds, {} pages), then {:.0} ms until the stream carried it; frozen dump {:.0} ms ({} pages), stream {:.0} ms, cleanup after {:.0} ms",
            pc["ms"].as_f64().unwrap_or(0.0),
            pc["rounds"].as_u64().unwrap_or(0),
            pc["pages_written"].as_u64().unwrap_or(0),
            pc["drain_ms"].as_f64().unwrap_or(0.0),
            ck["frozen_ms"].as_f64().unwrap_or(0.0),
            ck["frozen_pages_written"].as_u64().unwrap_or(0),
            ms("stream_ms"),
            ms("cleanup_ms"),
        );
        let frozen_phases: Vec<String> = ck["frozen_phases"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| {
                        format!(
                            "{} {:.1}",
                            p["name"].as_str().unwrap_or("?"),
                            p["ms"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "      source's frozen dump (ms): {}",
            frozen_phases.join(", ")
        );
        let z = &r["compression"];
        println!(
            "      compression (--compress auto): {} frames compressed, {} raw; zstd {:.2} GB/s, link {:.2} GB/s, ratio {:.2}",
            z["compressed_frames"].as_u64().unwrap_or(0),
            z["raw_frames"].as_u64().unwrap_or(0),
            z["zstd_bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1e9,
            z["link_bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1e9,
            z["ratio"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "      destination: {}",
            dest.split_once(": ").map_or(dest.as_str(), |(_, l)| l)
        );
        let l = &r["link"];
        println!(
            "      QUIC: {} datagrams ({:.0} MiB) sent, {} packets, {} lost ({:.1} MiB), {} congestion events, RTT {:.2} ms, MTU {}",
            l["udp_datagrams_sent"].as_u64().unwrap_or(0),
            l["udp_bytes_sent"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
            l["packets_sent"].as_u64().unwrap_or(0),
            l["lost_packets"].as_u64().unwrap_or(0),
            l["lost_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
            l["congestion_events"].as_u64().unwrap_or(0),
            l["rtt_ms"].as_f64().unwrap_or(f64::NAN),
            l["mtu"].as_u64().unwrap_or(0),
        );
        println!("      destination after the resume: {fill}");
        println!(
            "      storing the same bytes into a new tmpfs file here, right after: {:.2} s ({:.2} s CPU): the destination does it before the resume, the bare stream does not",
            store.0, store.1
        );
        println!(
            "      CPU (user+system): source cr migrate {:.2} s, destination cr serve {:.2} s, in {wall:.2} s of wall on {} cores; the bare stream after it: {bare_cpu:.2} s (both ends) in {bare_s:.2} s",
            cpu.0,
            cpu.1,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
}

/// One migration's figures.
struct Run {
    cold: bool,
    rss: u64,
    wall: f64,
    report: serde_json::Value,
    /// The destination's log line for it.
    dest: String,
    /// The destination's lazy fill after the resume (its supervisor's log).
    fill: String,
    /// The bare stream measured right after it, bytes/s.
    adjacent: f64,
    /// CPU seconds (user + system) of the source's `cr migrate` and of the
    /// destination's `cr serve` during it.
    cpu: (f64, f64),
    /// CPU seconds of both ends of the bare stream (this process), and its
    /// duration.
    bare_cpu: f64,
    bare_s: f64,
    /// Seconds (wall, CPU) to write the same bytes into a new file on a
    /// new tmpfs, right after.
    store: (f64, f64),
}

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

/// CPU seconds (user + system) of this process so far.
fn self_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// CPU seconds (user + system, its threads) of process `pid` so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat of cr serve");
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("stat number"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Starts the workload as `mem` on host1 and waits until its memory is
/// touched; returns its RSS.
fn start_workload(lan: &Lan) -> u64 {
    let h1 = &lan.hosts[0];
    let ip = format!("{}.10/24", lan.prefix);
    h1.run(&[
        "run",
        "mem",
        "--image",
        "py",
        "--bridge",
        &lan.bridge,
        "--ip",
        &ip,
        "--memory",
        "1536M",
        "--",
        "/usr/bin/python3",
        "-c",
        WORKLOAD,
    ]);
    let ready = h1.root.join("containers/mem/upper/root/ready");
    let t = Instant::now();
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the workload did not get ready: {}",
            h1.run(&["logs", "mem"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status: serde_json::Value =
        serde_json::from_str(&h1.run(&["status", "mem", "--json"])).expect("status json");
    vm_rss(status["pid"].as_i64().expect("pid") as i32)
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

/// Makes the calling thread live in `host`'s network namespace.
fn enter(host: &LanHost) {
    let ns = File::open(host.netns_path()).expect("opening the host's netns");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Sends `bytes` on one QUIC data stream from host1 to host2; returns the
/// time from opening the stream until every byte was acknowledged.
/// The `lazy pages:` line of the container's supervisor on `h`, once the
/// fill is done (10 s at most).
fn lazy_fill(h: &LanHost) -> String {
    let log = h.root.join("containers/mem/supervisor.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().rfind(|l| l.starts_with("lazy pages:")) {
            // With the restore's own phases (in the frozen window).
            let phases = text
                .lines()
                .rfind(|l| l.starts_with("restore phases"))
                .unwrap_or("(no restore phases)");
            return format!("{line}\n      destination's {phases}");
        }
        if Instant::now() > deadline {
            return format!("(no lazy fill in {} after 10 s)", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `bytes` into a new file on a tmpfs of its own (1 MiB writes)
/// and returns (wall, CPU of this process) seconds. On a VM whose freed
/// memory goes back to the host (virtio-balloon free page reporting) the
/// first touch of a page costs several times a reused one's.
fn fresh_store(bytes: u64) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("cr-bench-store-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("store directory");
    nix::mount::mount(
        Some("cr-bench"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2g"),
    )
    .expect("mounting the store tmpfs");
    let data = pattern();
    let (t, cpu0) = (Instant::now(), self_cpu());
    let written = File::create(dir.join("pages.img")).and_then(|mut f| {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(data.len() as u64) as usize;
            f.write_all(&data[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let figures = (t.elapsed().as_secs_f64(), self_cpu() - cpu0);
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&dir);
    written.expect("writing the store");
    figures
}

fn bare_stream(lan: &Lan, bytes: u64) -> Duration {
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    let server_id = Identity::generate().expect("identity");
    let client_id = Identity::generate().expect("identity");
    let listen: SocketAddr = format!("{}:{BARE_PORT}", h2.address)
        .parse()
        .expect("address");
    let server_trust = TrustStore::from_peers(vec![Peer::new(
        "host1",
        &format!("{}:{BARE_PORT}", h1.address),
        client_id.fingerprint(),
    )
    .expect("peer")])
    .expect("trust");
    let client_trust = TrustStore::from_peers(vec![Peer::new(
        "host2",
        &listen.to_string(),
        server_id.fingerprint(),
    )
    .expect("peer")])
    .expect("trust");
    let id = MigrationId([7; 16]);
    let data = pattern();
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = s.spawn(move || -> u64 {
            enter(h2);
            let rt = cr::migrate::runtime().expect("runtime");
            let endpoint = {
                let _g = rt.enter();
                Endpoint::listen(listen, &server_id, server_trust, Tuning::default())
                    .expect("listening in host2")
            };
            ready_tx.send(()).expect("ready");
            // Bounded, so that a client that failed ends the run instead of
            // leaving this thread (and the scope) waiting.
            let (session, _control) = rt
                .block_on(async {
                    let incoming = tokio::time::timeout(Duration::from_secs(30), endpoint.accept())
                        .await
                        .expect("no connection from host1 within 30 s")
                        .expect("incoming");
                    incoming.establish().await
                })
                .expect("session from host1");
            let (_, mut rx) = BlockingRecv::accept(rt.handle(), &session, id).expect("stream");
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                let n = rx.read(&mut buf).expect("reading the stream");
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            // Until the client closed: it waits for our last ACKs.
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), session.closed()).await;
            });
            got
        });
        ready_rx.recv().expect("the listener did not start");
        let client = s.spawn(move || -> Duration {
            enter(h1);
            let rt = cr::migrate::runtime().expect("runtime");
            let endpoint = {
                let _g = rt.enter();
                Endpoint::client(
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    &client_id,
                    client_trust,
                    Tuning::default(),
                )
                .expect("client endpoint in host1")
            };
            let (session, _control) = rt.block_on(endpoint.connect("host2")).expect("connect");
            let t = Instant::now();
            let header = StreamHeader::new(StreamKind::Pages, id, 0);
            let mut tx = BlockingSend::open(rt.handle(), &session, header).expect("open");
            let mut left = bytes;
            while left > 0 {
                let n = (left as usize).min(data.len());
                tx.write_all(&data[..n]).expect("writing the stream");
                left -= n as u64;
            }
            assert_eq!(tx.finish().expect("finishing the stream"), bytes);
            let elapsed = t.elapsed();
            session.close(0, "done");
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            });
            elapsed
        });
        let elapsed = client.join().expect("client thread");
        assert_eq!(server.join().expect("server thread"), bytes);
        elapsed
    })
}

/// 1 MiB of incompressible bytes (xorshift).
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

//! Adaptive compression of `cr migrate` (`--compress auto`) on a slow and
//! on a fast link: a container holding 192 MiB of text (log lines, which
//! zstd level 1 shrinks several times) moves from host1 to host2 of
//! `benches/common/lan.rs`, once with host1's lan link held to 200 Mbit/s
//! (`tc qdisc ... tbf`) and once at veth speed, each time with
//! `--compress never` and `--compress auto`. It prints total time, bytes
//! on the wire and what the compression gate decided (frames compressed
//! and sent raw, the speeds it measured).
//!
//! What is expected: on the slow link auto compresses nearly every frame
//! and is several times faster than never; on the fast link (faster than
//! one core of zstd here) it compresses only its probes and is no slower
//! than never.
//!
//! Run as root: `cargo bench --bench migrate_compress`.

// Not every bench uses every helper of common.
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cr_binary;
use common::lan::Lan;

const TEXT: &str = "import time\n\
def block(k):\n    return b''.join(b'2026-12-03T07:%02d:%02d host1 web1[%d]: GET /page/%d 200 %d bytes\\n' % (k % 60, i % 60, 1000 + i % 7, (i * 7919 + k) % 100000, i % 9000) for i in range(16000))\n\
blob = bytearray()\n\
k = 0\n\
while len(blob) < 192 << 20:\n    blob += block(k)\n    k += 1\n\
open('/root/ready', 'w').write(str(len(blob)))\n\
while True:\n    time.sleep(1)\n";

/// Host1's lan link on the slow runs.
const SLOW: &str = "200mbit";

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    let cr = cr_binary();
    let mut lan = Lan::new(&cr);
    lan.serve(1);
    let (h1, h2) = (&lan.hosts[0], &lan.hosts[1]);
    // The image, built once on host1 and shared read-only with host2.
    lan.python_image();
    let tc = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &h1.netns, "tc", "qdisc"])
            .args(args)
            .output()
            .expect("running tc");
        assert!(
            out.status.success(),
            "tc qdisc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    println!("cr migrate of 192 MiB of log-line text (python bytearray), host1 -> host2");
    for slow in [true, false] {
        if slow {
            tc(&[
                "add", "dev", "up0", "root", "tbf", "rate", SLOW, "burst", "256kb", "latency",
                "200ms",
            ]);
        }
        for compress in ["never", "auto"] {
            let ip = format!("{}.10/24", lan.prefix);
            h1.run(&[
                "run",
                "text",
                "--image",
                "py",
                "--bridge",
                &lan.bridge,
                "--ip",
                &ip,
                "--memory",
                "1G",
                "--",
                "/usr/bin/python3",
                "-c",
                TEXT,
            ]);
            let ready = h1.root.join("containers/text/upper/root/ready");
            let t = Instant::now();
            while !ready.exists() {
                assert!(
                    t.elapsed() < Duration::from_secs(180),
                    "the workload did not get ready: {}",
                    h1.run(&["logs", "text"])
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let arg = format!("--compress={compress}");
            let out = h1.run(&["migrate", "text", "host2", "--json", &arg]);
            let r: serde_json::Value = serde_json::from_str(&out).expect("report json");
            h2.run(&["destroy", "text"]);
            let z = &r["compression"];
            let gate = if z.is_null() {
                "no gate".to_string()
            } else {
                format!(
                    "gate: {} frames compressed, {} raw; zstd {:.2} GB/s, link {:.3} GB/s, ratio {:.2}",
                    z["compressed_frames"].as_u64().unwrap_or(0),
                    z["raw_frames"].as_u64().unwrap_or(0),
                    z["zstd_bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1e9,
                    z["link_bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1e9,
                    z["ratio"].as_f64().unwrap_or(f64::NAN),
                )
            };
            println!(
                "  link {:>9}, --compress {compress:<5}: total {:.2} s, frozen {:.2} s (after {:.2} s waiting for the pre-copy to cross), {:.0} MiB on the wire; {gate}",
                if slow { SLOW } else { "veth" },
                r["total_ms"].as_f64().unwrap_or(f64::NAN) / 1e3,
                r["frozen_ms"].as_f64().unwrap_or(f64::NAN) / 1e3,
                r["checkpoint"]["pre_copy"]["drain_ms"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    / 1e3,
                r["bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
            );
        }
        if slow {
            tc(&["del", "dev", "up0", "root"]);
        }
    }
}

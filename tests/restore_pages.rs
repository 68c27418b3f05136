//! The restore page path (src/restore/pages.rs): page stores of several
//! processes and many chunks, compressed or not, come back byte for byte;
//! a corrupt or truncated chunk in the middle of a big run is refused with
//! the frame named, and nothing of the half-written tree is left.
//!
//! The program (PID 1 and its forked child, each with 24 MiB of random
//! bytes, 8 MiB of a compressible pattern that differs on every page, 8 MiB
//! of touched zero pages and a mapping with holes) records digests, writes
//! /root/ready, waits for /root/go, then checks its memory and writes PASS
//! or FAIL: <what> to /root/result-<who>.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cr_formats::{PageReader, FRAME_HEADER_LEN};

const PROGRAM: &str = r#"
import hashlib, mmap, os, time
who = "parent"
if os.fork() == 0:
    who = "child"
rnd = bytearray(os.urandom(24 << 20))
pat = bytearray(b"".join((b"%s page %08d " % (who.encode(), i)) * 200 + b"." * 96 for i in range(2048)))
zero = bytearray(8 << 20)
for i in range(0, len(zero), 4096):
    zero[i] = 0
holes = mmap.mmap(-1, 256 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
def tag(i):
    return b"%s hole %04d" % (who.encode()[:1], i)
for i in range(0, 256, 5):
    holes[i * 4096:i * 4096 + 11] = tag(i)
want = (hashlib.sha256(rnd).hexdigest(), hashlib.sha256(pat).hexdigest())
open("/root/ready-" + who, "w").write("1")
if who == "parent":
    while not os.path.exists("/root/ready-child"):
        time.sleep(0.05)
    open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.05)
fails = []
got = (hashlib.sha256(rnd).hexdigest(), hashlib.sha256(pat).hexdigest())
if got[0] != want[0]:
    fails.append("random bytes differ")
if got[1] != want[1]:
    fails.append("pattern differs")
if zero.count(0) != len(zero):
    fails.append("zero pages are not zero")
for i in range(256):
    want_page = tag(i) if i % 5 == 0 else b"\0" * 11
    if holes[i * 4096:i * 4096 + 11] != want_page:
        fails.append("hole page %d" % i)
        break
open("/root/result-" + who, "w").write("FAIL: " + ", ".join(fails) if fails else "PASS")
while True:
    time.sleep(1)
"#;

fn file_in(h: &TestHost, name: &str, path: &str) -> String {
    let out = h.cr(&["exec", name, "--", "cat", path]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the program in container `name` until both processes are ready.
fn start(h: &TestHost, name: &str) {
    h.run(
        name,
        TestImage::Python,
        None,
        &[],
        &["/usr/bin/python3", "-c", PROGRAM],
    );
    assert!(
        wait_until(Duration::from_secs(60), || file_in(h, name, "/root/ready")
            == "1"),
        "the program did not get ready: {}",
        h.ok(&["logs", name])
    );
}

/// Lets the restored program check itself; both processes must pass.
fn check_passes(h: &TestHost, name: &str) {
    h.exec(name, &["touch", "/root/go"]);
    for who in ["parent", "child"] {
        let path = format!("/root/result-{who}");
        assert!(
            wait_until(Duration::from_secs(30), || !file_in(h, name, &path)
                .is_empty()),
            "no result from the {who}; console: {}",
            h.ok(&["logs", name])
        );
        assert_eq!(file_in(h, name, &path).trim(), "PASS", "the {who}");
    }
}

/// (seq, offset, stored length, compressed, owner pid, data bytes) of every
/// chunk frame of an image's page store.
fn chunks(image: &Path) -> Vec<(u32, u64, u32, bool, i32, usize)> {
    let file = std::fs::File::open(image.join("pages.img")).expect("pages.img");
    let mut reader = PageReader::new(std::io::BufReader::new(file)).expect("page store");
    let mut out = Vec::new();
    while let Some(c) = reader.next_chunk().expect("a valid page store") {
        // A process's pages: copied while frozen, or before (pre-copy).
        let Some(pid) = c.header.owner.pid() else {
            continue;
        };
        out.push((
            c.frame.seq,
            c.frame.offset,
            c.frame.stored_len,
            c.frame.compressed,
            pid,
            c.data().len(),
        ));
    }
    out
}

fn copy_image(from: &Path, to: &Path) {
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(cp.success(), "cp -a {} {}", from.display(), to.display());
}

/// Nothing of a failed restore is left: the container is stopped, its
/// cgroups hold no process, and the good image restores and passes.
fn nothing_left_then_good_restore(h: &TestHost, name: &str, good: &Path) {
    assert_eq!(h.state(name), "stopped");
    for dir in h.container_cgroups(name) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(
            procs.trim().is_empty(),
            "{} still holds {procs}",
            dir.display()
        );
    }
    h.ok(&["restore", name, "--image", good.to_str().expect("utf-8")]);
    check_passes(h, name);
}

#[test]
fn a_compressed_image_of_two_processes_restores_byte_for_byte() {
    let h = TestHost::new();
    start(&h, "zmem");
    let image = h.root.join("img-zstd");
    h.ok(&[
        "checkpoint",
        "zmem",
        "--compress",
        "zstd",
        "--image",
        image.to_str().expect("utf-8"),
    ]);
    assert_eq!(h.state("zmem"), "stopped");
    let c = chunks(&image);
    let pids: std::collections::BTreeSet<i32> = c.iter().map(|c| c.4).collect();
    assert!(pids.len() >= 2, "pages of {pids:?} only");
    assert!(
        c.iter().any(|c| c.3) && c.iter().any(|c| !c.3),
        "the store should hold compressed (pattern) and stored (random) chunks: {c:?}"
    );
    assert!(c.iter().any(|c| c.5 >= 1 << 20), "no big chunk in {c:?}");
    h.ok(&["restore", "zmem", "--image", image.to_str().expect("utf-8")]);
    check_passes(&h, "zmem");
}

#[test]
fn an_uncompressed_image_of_two_processes_restores_byte_for_byte() {
    let h = TestHost::new();
    start(&h, "rmem");
    h.ok(&["checkpoint", "rmem"]);
    h.ok(&["restore", "rmem"]);
    check_passes(&h, "rmem");
}

/// Damages the image at `good` (a copy at `bad`) with `damage`, expects
/// the restore to fail with an error containing every one of `expect`,
/// then checks that nothing was left behind.
fn refused(
    name: &str,
    damage: impl FnOnce(&Path, &[(u32, u64, u32, bool, i32, usize)]) -> Vec<String>,
) {
    let h = TestHost::new();
    start(&h, name);
    let good = h.root.join("img-good");
    h.ok(&["checkpoint", name, "--image", good.to_str().expect("utf-8")]);
    let bad = h.root.join("img-bad");
    copy_image(&good, &bad);
    let expect = damage(&bad.join("pages.img"), &chunks(&good));
    let err = h.fails(&["restore", name, "--image", bad.to_str().expect("utf-8")]);
    for e in &expect {
        assert!(err.contains(e.as_str()), "{err:?} does not say {e:?}");
    }
    nothing_left_then_good_restore(&h, name, &good);
}

/// The middle chunk of the biggest run of data (the 24 MiB of random bytes
/// span several chunks): frames before it were already written when it is
/// read.
fn middle_big_chunk(c: &[(u32, u64, u32, bool, i32, usize)]) -> (u32, u64, u32) {
    let big: Vec<_> = c.iter().filter(|c| c.5 >= 2 << 20).collect();
    assert!(big.len() >= 6, "too few big chunks: {c:?}");
    let m = big[big.len() / 2];
    (m.0, m.1, m.2)
}

#[test]
fn a_corrupt_chunk_in_the_middle_of_a_big_run_is_refused_and_nothing_is_left() {
    refused("corrupt", |pages, c| {
        let (seq, offset, len) = middle_big_chunk(c);
        let mut bytes = std::fs::read(pages).expect("pages.img");
        // A byte of page data in the middle of the chunk.
        let at = offset as usize + FRAME_HEADER_LEN + len as usize / 2;
        bytes[at] ^= 0x40;
        std::fs::write(pages, &bytes).expect("write");
        vec![
            "pages.img".into(),
            format!("frame {seq} at offset {offset}"),
            "checksum mismatch".into(),
        ]
    });
}

#[test]
fn a_page_store_truncated_in_the_middle_of_a_big_run_is_refused_and_nothing_is_left() {
    refused("trunc", |pages, c| {
        let (_, offset, len) = middle_big_chunk(c);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(pages)
            .expect("pages.img");
        file.set_len(offset + FRAME_HEADER_LEN as u64 + u64::from(len) / 2)
            .expect("truncate");
        vec!["pages.img".into(), "truncated".into()]
    });
}

//! The disk format: round trips, a model-based property test, crash sweeps
//! of the write and merge paths, every corrupt-input error, and flipped
//! bytes.

use std::collections::BTreeSet;

use cr_formats::disk::bat::{encode_block, BatEntry, BAT_BLOCK_LEN};
use cr_formats::disk::header::DeltaHeader;
use cr_formats::disk::*;
use proptest::prelude::*;

const CS: u32 = 4096;
const CSU: usize = CS as usize;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8 | 1
        })
        .collect()
}

fn read_all<D: ChainDir>(c: &Chain<D>) -> Vec<u8> {
    let mut buf = vec![0u8; c.virtual_size() as usize];
    c.read_at(0, &mut buf).unwrap();
    buf
}

fn top_file(dir: &MemDir) -> String {
    let m = ChainManifest::decode("m", &dir.read_manifest().unwrap()).unwrap();
    m.deltas.last().unwrap().file.clone()
}

fn assert_consistent<D: ChainDir>(dir: &D) {
    let r = check_chain(dir);
    assert!(r.is_consistent(), "check found: {:?}", r.findings);
}

#[test]
fn round_trip_in_memory_and_reopen() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 64 * 1024, CS, "base").unwrap();
    let mut model = vec![0u8; 64 * 1024];
    for (i, (off, len)) in [(0u64, 10usize), (4090, 20), (8192, 4096), (60000, 5536)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64, len);
        c.write_at(off, &data).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    assert_eq!(read_all(&c), model);
    c.flush().unwrap();
    drop(c);
    let c = Chain::open(dir.clone()).unwrap();
    assert!(c.is_writable());
    assert_eq!(read_all(&c), model);
    assert_eq!(c.dirty_since(Mark::ORIGIN), vec![0, 1, 2, 14, 15]);
    assert_consistent(&dir);
}

/// A chain directory under /tmp that is removed even when the test fails.
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("cr-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn files_on_disk_snapshot_merge_and_check() {
    let tmp = TempDir::new("fs");
    let dir = FsDir::new(&tmp.0);
    let mut c = Chain::create(dir.clone(), 8 << 20, DEFAULT_CLUSTER_SIZE, "base").unwrap();
    let a = pattern(1, 3 << 20);
    c.write_at(100, &a).unwrap();
    let base = c.manifest().deltas[0].id;
    let snap = c.snapshot("one").unwrap();
    let b = pattern(2, 5000);
    c.write_at(1 << 20, &b).unwrap();
    c.flush().unwrap();
    let mut model = vec![0u8; 8 << 20];
    model[100..100 + a.len()].copy_from_slice(&a);
    let old = model.clone();
    model[1 << 20..(1 << 20) + b.len()].copy_from_slice(&b);
    assert_eq!(read_all(&c), model);
    // The snapshot still shows the disk of its moment.
    let s = Chain::open_snapshot(dir.clone(), base).unwrap();
    assert!(!s.is_writable());
    assert_eq!(read_all(&s), old);
    assert_eq!(c.manifest().deltas[1].id, snap);
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 3);
    let out = c.merge(1).unwrap();
    assert_eq!(out.removed.id, snap);
    assert_eq!(read_all(&c), model);
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 2);
    drop(c);
    assert_consistent(&dir);
    let c = Chain::open(dir).unwrap();
    assert_eq!(read_all(&c), model);
    assert!(c.is_writable());
}

#[test]
fn snapshots_show_their_moment_and_refuse_writes() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 32 * 1024, CS, "").unwrap();
    let mut views = Vec::new();
    for i in 0..4u64 {
        c.write_at(i * 5000, &pattern(i, 3000)).unwrap();
        views.push((c.manifest().top().unwrap().id, read_all(&c)));
        c.snapshot(&format!("s{i}")).unwrap();
    }
    for (id, view) in &views {
        let mut s = Chain::open_snapshot(dir.clone(), *id).unwrap();
        assert_eq!(&read_all(&s), view);
        assert!(matches!(
            s.write_at(0, b"x"),
            Err(DiskError::ReadOnly { .. })
        ));
        assert!(matches!(s.snapshot("x"), Err(DiskError::ReadOnly { .. })));
    }
    let m = c.manifest();
    assert_eq!(m.deltas.len(), 5);
    assert!(m.deltas[..4].iter().all(|d| d.read_only) && !m.deltas[4].read_only);
    assert_eq!(m.deltas[2].label, "s1");
    assert!(matches!(
        Chain::open_snapshot(dir, DeltaId([7; 16])),
        Err(DiskError::NoSuchDelta { .. })
    ));
}

#[test]
fn grow_relocates_the_bat_and_shrink_is_refused() {
    let dir = MemDir::new();
    // 400 clusters fit one BAT block; 1200 need three.
    let mut c = Chain::create(dir.clone(), 400 * CS as u64, CS, "").unwrap();
    c.write_at(0, &pattern(1, 3 * CSU)).unwrap();
    c.write_at(399 * CS as u64, &pattern(2, CSU)).unwrap();
    c.snapshot("").unwrap();
    c.write_at(CS as u64, &pattern(3, 10)).unwrap();
    c.grow(1200 * CS as u64).unwrap();
    assert_eq!(c.virtual_size(), 1200 * CS as u64);
    c.write_at(1100 * CS as u64 + 7, &pattern(4, 9000)).unwrap();
    let model = read_all(&c);
    assert!(model[400 * CSU..1100 * CSU].iter().all(|&b| b == 0));
    assert!(matches!(c.grow(CS as u64), Err(DiskError::Shrink { .. })));
    assert!(matches!(
        c.read_at(1200 * CS as u64 - 1, &mut [0u8; 2]),
        Err(DiskError::OutOfRange { .. })
    ));
    c.flush().unwrap();
    assert_consistent(&dir);
    // The lower delta grows (and relocates its BAT) when the top folds into it.
    c.merge(1).unwrap();
    assert_eq!(read_all(&c), model);
    drop(c);
    assert_consistent(&dir);
    let c = Chain::open(dir).unwrap();
    assert_eq!(read_all(&c), model);
    assert_eq!(c.deltas()[0].header().bat_blocks, 3);
}

#[test]
fn dirty_tracking_across_marks_snapshots_and_merges() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 64 * CS as u64, CS, "").unwrap();
    c.write_at(0, &[1; 10]).unwrap();
    c.write_at(5 * CS as u64, &[1; 10]).unwrap();
    let m1 = c.mark().unwrap();
    assert!(c.dirty_since(m1).is_empty());
    c.write_at(5 * CS as u64 + 100, &[2; 10]).unwrap(); // rewrite, in place
    c.snapshot("").unwrap();
    c.write_at(9 * CS as u64, &[3; 10]).unwrap();
    assert_eq!(c.dirty_since(m1), vec![5, 9]);
    let m2 = c.mark().unwrap();
    c.write_at(CS as u64 - 1, &[4; 2]).unwrap(); // clusters 0 and 1, copy on write
    assert_eq!(c.dirty_since(m2), vec![0, 1]);
    assert_eq!(c.dirty_since(m1), vec![0, 1, 5, 9]);
    assert_eq!(c.dirty_since(Mark::ORIGIN), vec![0, 1, 5, 9]);
    c.merge(1).unwrap();
    assert_eq!(c.dirty_since(m2), vec![0, 1]);
    assert_eq!(c.dirty_since(m1), vec![0, 1, 5, 9]);
    c.flush().unwrap();
    drop(c);
    let c = Chain::open(dir).unwrap();
    assert_eq!(c.dirty_since(m2), vec![0, 1]);
    assert!(c.generation() > m2.0);
}

#[test]
fn dirty_query_on_a_16_gib_disk_is_fast() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir, 16 << 30, DEFAULT_CLUSTER_SIZE, "").unwrap();
    let m = c.mark().unwrap();
    let cluster = vec![5u8; DEFAULT_CLUSTER_SIZE as usize];
    for v in (0..16384u64).step_by(64) {
        c.write_at(v << 20, &cluster).unwrap();
    }
    c.snapshot("").unwrap();
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..100 {
        n = c.dirty_since(m).len();
    }
    let per = t.elapsed() / 100;
    assert_eq!(n, 256);
    eprintln!("dirty_since on 16 GiB (2 deltas): {per:?}");
    assert!(per < std::time::Duration::from_millis(1), "{per:?}");
}

#[test]
fn online_merge_of_the_top_with_writes_between_steps() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 64 * CS as u64, CS, "").unwrap();
    c.write_at(0, &pattern(1, 20 * CSU)).unwrap();
    c.snapshot("").unwrap();
    c.write_at(10 * CS as u64, &pattern(2, 30 * CSU)).unwrap();
    let m0 = c.mark().unwrap();
    c.merge_begin(1).unwrap();
    assert!(matches!(
        c.snapshot(""),
        Err(DiskError::MergeInProgress { .. })
    ));
    assert!(matches!(
        c.grow(1 << 20),
        Err(DiskError::MergeInProgress { .. })
    ));
    let mut steps = 0;
    loop {
        let p = c.merge_step(4).unwrap();
        // Writes go on, to the top, during the merge.
        c.write_at((steps % 60) * CS as u64 + 3, &pattern(100 + steps, 700))
            .unwrap();
        steps += 1;
        if p.ready || steps > 100 {
            break;
        }
    }
    let before = read_all(&c);
    let out = c.merge_finish().unwrap();
    assert!(out.clusters_copied > 0);
    assert_eq!(read_all(&c), before);
    assert_eq!(c.deltas().len(), 1);
    assert!(c.is_writable());
    assert!(matches!(c.merge_step(1), Err(DiskError::NoMerge)));
    // Everything written since m0 is still dirty.
    let dirty: BTreeSet<u64> = c.dirty_since(m0).into_iter().collect();
    assert!((0..steps.min(60)).all(|v| dirty.contains(&v)));
    c.flush().unwrap();
    drop(c);
    assert_consistent(&dir);
    assert_eq!(read_all(&Chain::open(dir).unwrap()), before);
}

// ---------------------------------------------------------------- the model

#[derive(Debug, Clone)]
enum Op {
    Write { at: u64, len: usize, seed: u64 },
    Snapshot,
    Merge(usize),
    Grow(u64),
    Flush,
    Reopen,
    Mark,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 1usize..3 * CSU, any::<u64>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        1 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::Merge),
        1 => (0u64..4).prop_map(Op::Grow),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Mark),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random writes, snapshots, merges, grows, reopens and marks against a
    /// Vec<u8>, compared byte for byte after every step; each snapshot's
    /// view and the dirty clusters against the model too.
    #[test]
    fn chain_matches_a_flat_model(clusters in 4u64..24, ops in proptest::collection::vec(op(), 1..40)) {
        let dir = MemDir::new();
        let mut c = Chain::create(dir.clone(), clusters * CS as u64, CS, "").unwrap();
        let mut model = vec![0u8; (clusters * CS as u64) as usize];
        // The frozen view of every read-only delta, bottom first.
        let mut views: Vec<(DeltaId, Vec<u8>)> = Vec::new();
        let mut mark = Mark::ORIGIN;
        let mut dirty: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Write { at, len, seed } => {
                    let at = at % model.len() as u64;
                    let len = len.min(model.len() - at as usize);
                    let data = pattern(seed, len);
                    c.write_at(at, &data).unwrap();
                    model[at as usize..at as usize + len].copy_from_slice(&data);
                    dirty.extend(at / CS as u64..=(at + len as u64 - 1) / CS as u64);
                }
                Op::Snapshot => {
                    views.push((c.manifest().top().unwrap().id, model.clone()));
                    c.snapshot("").unwrap();
                }
                Op::Merge(i) => {
                    let n = c.deltas().len();
                    if n > 1 {
                        let upper = 1 + i % (n - 1);
                        c.merge(upper).unwrap();
                        if upper < views.len() {
                            // The lower delta now shows what the merged one did.
                            views[upper - 1].1 = views.remove(upper).1;
                        } else {
                            views.pop();
                        }
                    }
                }
                Op::Grow(k) => {
                    let size = model.len() + (k as usize) * CSU;
                    c.grow(size as u64).unwrap();
                    model.resize(size, 0);
                }
                Op::Flush => c.flush().unwrap(),
                Op::Reopen => {
                    c.flush().unwrap();
                    drop(c);
                    c = Chain::open(dir.clone()).unwrap();
                }
                Op::Mark => {
                    prop_assert_eq!(c.dirty_since(mark), dirty.iter().copied().collect::<Vec<_>>());
                    mark = c.mark().unwrap();
                    dirty.clear();
                }
            }
            prop_assert!(read_all(&c) == model, "view differs after a step");
        }
        prop_assert_eq!(views.len(), c.deltas().len() - 1);
        for (id, view) in &views {
            let s = Chain::open_snapshot(dir.clone(), *id).unwrap();
            prop_assert!(&read_all(&s) == view, "snapshot view differs");
        }
        c.flush().unwrap();
        let r = check_chain(&dir);
        prop_assert!(r.is_consistent(), "{:?}", r.findings);
    }
}

// ------------------------------------------------------------ crash sweeps

const MODES: [CrashMode; 7] = [
    CrashMode::DropUnsynced,
    CrashMode::KeepUnsynced,
    CrashMode::TearLast,
    CrashMode::Random(1),
    CrashMode::Random(2),
    CrashMode::Random(3),
    CrashMode::Random(4),
];

/// A chain of two deltas with data in both, everything flushed.
fn crash_setup() -> (MemDir, Chain<MemDir>, Vec<u8>) {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 16 * CS as u64, CS, "").unwrap();
    c.write_at(0, &pattern(1, 6 * CSU)).unwrap();
    c.snapshot("").unwrap();
    c.write_at(2 * CS as u64, &pattern(2, 2 * CSU)).unwrap();
    c.write_at(10 * CS as u64, &pattern(3, CSU)).unwrap();
    c.flush().unwrap();
    let model = read_all(&c);
    (dir, c, model)
}

/// Runs `op` with the store dying at its n-th operation, for every n, and
/// hands each state a restart can find to `verify` with how many steps of
/// `op` returned before the crash.
fn sweep(
    op: impl Fn(&mut Chain<MemDir>, &mut usize) -> Result<(), DiskError>,
    verify: impl Fn(&Chain<MemDir>, usize, CrashMode),
) {
    for n in 0.. {
        let (dir, mut c, _) = crash_setup();
        dir.control().crash_after(n);
        let mut steps = 0;
        let r = op(&mut c, &mut steps);
        let crashed = dir.control().crashed();
        if !crashed {
            r.unwrap();
        }
        for mode in MODES {
            let after = dir.after_crash(mode);
            let report = check_chain(&after);
            assert!(
                report.is_consistent(),
                "crash at op {n} ({mode:?}): {:?}",
                report.findings
            );
            let c = Chain::open(after).unwrap();
            verify(&c, steps, mode);
        }
        if !crashed {
            assert!(n > 5, "the sweep ended at {n}");
            return;
        }
    }
}

#[test]
fn crash_at_every_step_of_writes_and_flushes() {
    let (_, _, old) = crash_setup();
    // Step 1: copy on write of cluster 1 (from the lower delta), in place in
    // 2 and 3, a fresh cluster 12; step 2: an in-place rewrite of cluster 10.
    let w1 = (CS as u64 + 100, pattern(7, 2 * CSU + 50));
    let w1b = (12 * CS as u64, pattern(8, CSU));
    let w2 = (10 * CS as u64 + 10, pattern(9, 300));
    let mut mid = old.clone();
    for (at, d) in [&w1, &w1b] {
        mid[*at as usize..*at as usize + d.len()].copy_from_slice(d);
    }
    let mut new = mid.clone();
    new[w2.0 as usize..w2.0 as usize + w2.1.len()].copy_from_slice(&w2.1);
    sweep(
        |c, steps| {
            c.write_at(w1.0, &w1.1)?;
            c.write_at(w1b.0, &w1b.1)?;
            c.flush()?;
            *steps = 1;
            c.write_at(w2.0, &w2.1)?;
            c.flush()?;
            *steps = 2;
            Ok(())
        },
        |c, steps, mode| {
            let got = read_all(c);
            let (before, after) = match steps {
                0 => (&old, &mid),
                1 => (&mid, &new),
                _ => (&new, &new),
            };
            for v in 0..16 {
                let r = v * CSU..(v + 1) * CSU;
                // The top already holds 2, 3 (step 1) and 10 (step 2).
                let in_place = (steps == 0 && (v == 2 || v == 3)) || (steps == 1 && v == 10);
                if in_place {
                    // A rewrite in place may land partly, byte by byte.
                    let ok = got[r.clone()]
                        .iter()
                        .zip(&before[r.clone()])
                        .zip(&after[r.clone()])
                        .all(|((g, b), a)| g == b || g == a);
                    assert!(ok, "cluster {v} after {steps} steps ({mode:?})");
                } else {
                    // A remapped cluster is wholly old or wholly new.
                    assert!(
                        got[r.clone()] == before[r.clone()] || got[r.clone()] == after[r.clone()],
                        "cluster {v} after {steps} steps ({mode:?})"
                    );
                }
            }
            // Every synced write is there.
            if steps == 2 {
                assert!(got == new);
            }
        },
    );
}

#[test]
fn crash_at_every_step_of_a_merge() {
    let (_, _, model) = crash_setup();
    // Fold the top into the bottom: the view never changes.
    sweep(
        |c, _| c.merge(1).map(|_| ()),
        |c, _, mode| assert!(read_all(c) == model, "{mode:?}"),
    );
    // Fold a read-only delta down, under a writable top.
    sweep(
        |c, _| {
            c.snapshot("")?;
            c.merge(1).map(|_| ())
        },
        |c, _, mode| assert!(read_all(c) == model, "{mode:?}"),
    );
}

#[test]
fn crash_at_every_step_of_snapshot_and_grow() {
    let (_, _, model) = crash_setup();
    let size = model.len();
    sweep(
        |c, steps| {
            c.snapshot("a")?;
            *steps = 1;
            // Past one BAT block: the BAT moves.
            c.grow(600 * CS as u64)?;
            *steps = 2;
            c.write_at(599 * CS as u64, &[9; 10])?;
            c.flush()?;
            *steps = 3;
            Ok(())
        },
        |c, steps, mode| {
            let got = read_all(c);
            assert!(got[..size] == model[..], "{mode:?}");
            assert!(got.len() == size || got.len() == 600 * CSU, "{mode:?}");
            if steps >= 2 {
                assert_eq!(got.len(), 600 * CSU);
            }
            if steps == 3 {
                assert_eq!(&got[599 * CSU..599 * CSU + 10], &[9; 10]);
            }
        },
    );
}

// ------------------------------------------------------- corrupt inputs

/// A one-delta image of 16 clusters with clusters 0, 3 and 7 written.
fn small_image() -> Vec<u8> {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 16 * CS as u64, CS, "").unwrap();
    for v in [0u64, 3, 7] {
        c.write_at(v * CS as u64, &pattern(v, CSU)).unwrap();
    }
    c.flush().unwrap();
    dir.file_bytes(&top_file(&dir)).unwrap()
}

fn open_bytes(bytes: Vec<u8>) -> Result<Delta<MemStore>, DiskError> {
    Delta::open(MemStore::from_bytes(bytes), "img")
}

fn header_of(bytes: &[u8]) -> DeltaHeader {
    *Delta::open(MemStore::from_bytes(bytes.to_vec()), "img")
        .unwrap()
        .header()
}

/// Rewrites the header (valid checksum) with `f` applied; slot 1 cleared.
fn with_header(bytes: &[u8], f: impl Fn(&mut DeltaHeader)) -> Vec<u8> {
    let mut h = header_of(bytes);
    f(&mut h);
    let mut out = bytes.to_vec();
    out[..1024].fill(0);
    out[..76].copy_from_slice(&h.encode());
    out
}

/// Rewrites BAT block 0 (both copies, valid checksums) with `f` applied.
fn with_bat(bytes: &[u8], f: impl Fn(&mut Vec<BatEntry>)) -> Vec<u8> {
    let d = open_bytes(bytes.to_vec()).unwrap();
    let mut entries: Vec<BatEntry> = (0..510).map(|v| d.entry(v).unwrap_or_default()).collect();
    f(&mut entries);
    let mut out = bytes.to_vec();
    let at = d.header().bat_offset as usize;
    out[at..at + BAT_BLOCK_LEN].copy_from_slice(&encode_block(0, 50, &entries));
    out[at + BAT_BLOCK_LEN..at + 2 * BAT_BLOCK_LEN].fill(0);
    out
}

macro_rules! assert_err {
    ($r:expr, $p:pat $(if $g:expr)?) => {
        match $r {
            Err(e @ $p) $(if $g)? => {
                let msg = e.to_string();
                assert!(!msg.contains('\n') && msg.len() > 10, "{msg}");
            }
            Err(e) => panic!("wrong error: {e:?}"),
            Ok(_) => panic!("accepted"),
        }
    };
}

#[test]
fn corrupt_delta_files_get_their_own_errors() {
    let img = small_image();
    assert!(open_bytes(img.clone()).is_ok());
    assert_err!(
        open_bytes(img[..100].to_vec()),
        DiskError::Truncated { len: 100, .. }
    );
    // Cut inside the BAT region, then inside the data.
    assert_err!(
        open_bytes(img[..5000].to_vec()),
        DiskError::BatRegion { .. }
    );
    assert_err!(
        open_bytes(img[..img.len() - 1].to_vec()),
        DiskError::BatEntryPastEnd { entry: 7, .. }
    );
    let mut b = img.clone();
    b[0] = b'X';
    assert_err!(open_bytes(b), DiskError::BadMagic { offset: 0, .. });
    let mut b = img.clone();
    b[10] = 1; // minor 1
    assert_err!(open_bytes(b), DiskError::UnsupportedVersion { .. });
    let mut b = img.clone();
    b[33] ^= 1;
    assert_err!(open_bytes(b), DiskError::HeaderChecksum { offset: 0, .. });
    assert_err!(
        open_bytes(with_header(&img, |h| h.cluster_size = 3000)),
        DiskError::BadClusterSize { size: 3000, .. }
    );
    assert_err!(
        open_bytes(with_header(&img, |h| h.flags = 4)),
        DiskError::UnknownFlags { bits: 4, .. }
    );
    assert_err!(
        open_bytes(with_header(&img, |h| h.virtual_size = 1000)),
        DiskError::BadVirtualSize { .. }
    );
    assert_err!(
        open_bytes(with_header(&img, |h| h.virtual_size = 600 * CS as u64)),
        DiskError::BatTooSmall { needed: 600, .. }
    );
    assert_err!(
        open_bytes(with_header(&img, |h| h.bat_offset = 0)),
        DiskError::BatRegion { .. }
    );
    assert_err!(
        open_bytes(with_bat(&img, |e| e[5] = BatEntry {
            cluster: 1000,
            generation: 1
        })),
        DiskError::BatEntryPastEnd {
            entry: 5,
            cluster: 1000,
            ..
        }
    );
    assert_err!(
        open_bytes(with_bat(&img, |e| e[5] = BatEntry {
            cluster: 1,
            generation: 1
        })),
        DiskError::BatEntryInMetadata {
            entry: 5,
            cluster: 1,
            ..
        }
    );
    let shared = with_bat(&img, |e| e[5] = e[3]);
    assert_err!(
        open_bytes(shared),
        DiskError::BatEntryShared {
            first: 3,
            entry: 5,
            ..
        }
    );
    assert_err!(
        open_bytes(with_bat(&img, |e| e[20] = BatEntry {
            cluster: 4,
            generation: 1
        })),
        DiskError::BatEntryBeyondSize { entry: 20, .. }
    );
    assert_err!(
        open_bytes(with_bat(&img, |e| e[3].generation = 99)),
        DiskError::BatEntryGeneration {
            entry: 3,
            generation: 99,
            ..
        }
    );
    // Both copies of a BAT block damaged.
    let mut b = with_bat(&img, |_| {});
    let at = header_of(&img).bat_offset as usize;
    b[at + 8] ^= 1;
    b[at + BAT_BLOCK_LEN..at + 2 * BAT_BLOCK_LEN].fill(0xee);
    assert_err!(open_bytes(b), DiskError::BatChecksum { block: 0, .. });
    // A block that says it is another.
    let mut b = img.clone();
    let block = encode_block(1, 3, &[]);
    b[at..at + BAT_BLOCK_LEN].copy_from_slice(&block);
    b[at + BAT_BLOCK_LEN..at + 2 * BAT_BLOCK_LEN].copy_from_slice(&block);
    assert_err!(
        open_bytes(b),
        DiskError::BatBlockIndex {
            block: 0,
            found: 1,
            ..
        }
    );
}

#[test]
fn a_damaged_newer_copy_falls_back_to_the_older_one() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 16 * CS as u64, CS, "").unwrap();
    c.write_at(0, &[1; 10]).unwrap();
    c.flush().unwrap();
    c.write_at(CS as u64, &[2; 10]).unwrap();
    c.flush().unwrap();
    let file = top_file(&dir);
    let mut b = dir.file_bytes(&file).unwrap();
    let d = open_bytes(b.clone()).unwrap();
    assert!(d.entry(1).is_some());
    // Copies alternate (B got seq 1, A seq 2): damage the newest, A.
    let at = d.header().bat_offset as usize;
    b[at + 9] ^= 0xff;
    let d = open_bytes(b.clone()).unwrap();
    assert!(d.entry(0).is_some() && d.entry(1).is_none());
    assert_eq!(d.damaged_copies(), 1);
    let r = check_delta(MemStore::from_bytes(b), "img");
    assert!(r.is_consistent());
    assert_eq!(r.deltas[0].damaged_bat_copies, 1);
}

fn chain_with_two_deltas() -> (MemDir, ChainManifest) {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 16 * CS as u64, CS, "").unwrap();
    c.write_at(0, &[1; 10]).unwrap();
    c.snapshot("").unwrap();
    c.flush().unwrap();
    let m = c.manifest().clone();
    (dir, m)
}

fn open_with_manifest(dir: &MemDir, m: &ChainManifest) -> Result<Chain<MemDir>, DiskError> {
    dir.put_manifest(m.encode().unwrap());
    Chain::open(dir.clone())
}

#[test]
fn corrupt_manifests_and_chains_get_their_own_errors() {
    let (dir, m) = chain_with_two_deltas();
    let good = m.encode().unwrap();
    let dec = |b: &[u8]| ChainManifest::decode("chain.manifest", b);
    assert_eq!(dec(&good).unwrap(), m);
    assert_err!(
        dec(&good[..10]),
        DiskError::ManifestTruncated { need: 20, .. }
    );
    assert_err!(
        dec(&good[..good.len() - 1]),
        DiskError::ManifestTruncated { .. }
    );
    let mut b = good.clone();
    b.push(0);
    assert_err!(dec(&b), DiskError::ManifestTrailing { extra: 1, .. });
    let mut b = good.clone();
    b[1] = 0;
    assert_err!(dec(&b), DiskError::ManifestMagic { .. });
    let mut b = good.clone();
    b[8] = 2;
    assert_err!(dec(&b), DiskError::UnsupportedVersion { .. });
    let mut b = good.clone();
    b[25] ^= 1;
    assert_err!(dec(&b), DiskError::ManifestChecksum { .. });
    // Valid framing around a payload that is not a manifest.
    let mut b = good[..20].to_vec();
    b[12..16].copy_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&[0xff, 0xff, 0xff]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..16]), &b[20..]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    assert_err!(dec(&b), DiskError::ManifestDecode { offset: 20, .. });

    let enc_dec = |m: &ChainManifest| dec(&m.encode().unwrap());
    let mut e = m.clone();
    e.deltas.clear();
    assert_err!(enc_dec(&e), DiskError::EmptyChain { .. });
    let mut e = m.clone();
    e.deltas[1].parent = Some(e.deltas[1].id);
    assert_err!(enc_dec(&e), DiskError::ChainCycle { entry: 1, .. });
    let mut e = m.clone();
    e.deltas[0].parent = Some(e.deltas[1].id);
    assert_err!(enc_dec(&e), DiskError::ChainCycle { entry: 0, .. });
    let mut e = m.clone();
    e.deltas[1].parent = Some(DeltaId([9; 16]));
    assert_err!(enc_dec(&e), DiskError::ChainGap { entry: 1, .. });
    let mut e = m.clone();
    e.deltas[1].parent = None;
    assert_err!(
        enc_dec(&e),
        DiskError::ChainGap {
            entry: 1,
            expected: Some(_),
            ..
        }
    );
    let mut e = m.clone();
    e.deltas[1].file = e.deltas[0].file.clone();
    assert_err!(
        enc_dec(&e),
        DiskError::DuplicateDelta {
            first: 0,
            entry: 1,
            ..
        }
    );
    let mut e = m.clone();
    e.deltas[0].read_only = false;
    assert_err!(enc_dec(&e), DiskError::WritableBelowTop { entry: 0, .. });
    let mut e = m.clone();
    e.deltas[1].file = "../etc/passwd".into();
    assert_err!(enc_dec(&e), DiskError::BadDeltaFileName { entry: 1, .. });

    // Manifest and files disagree.
    let mut e = m.clone();
    e.cluster_size = 8192;
    assert_err!(
        open_with_manifest(&dir, &e),
        DiskError::ClusterSizeMismatch {
            expected: 8192,
            found: 4096,
            ..
        }
    );
    let mut e = m.clone();
    let other = DeltaId([3; 16]);
    e.deltas[0].id = other;
    e.deltas[1].parent = Some(other);
    assert_err!(open_with_manifest(&dir, &e), DiskError::DeltaIdMismatch { expected, .. } if expected == other);
    // The lower delta claims a larger disk than the top.
    let lower = m.deltas[0].file.clone();
    let bytes = dir.file_bytes(&lower).unwrap();
    dir.put_file(
        &lower,
        with_header(&bytes, |h| h.virtual_size = 32 * CS as u64),
    );
    assert_err!(open_with_manifest(&dir, &m), DiskError::ChainShrinks { .. });
    // check lists every problem instead of stopping at the first.
    let top = m.deltas[1].file.clone();
    let bytes = dir.file_bytes(&top).unwrap();
    dir.put_file(&top, with_header(&bytes, |h| h.id = DeltaId([4; 16])));
    let r = check_chain(&dir);
    assert!(
        matches!(
            r.findings[..],
            [
                DiskError::DeltaIdMismatch { .. },
                DiskError::ChainShrinks { .. }
            ]
        ),
        "{:?}",
        r.findings
    );
    dir.put_file(&lower, bytes[..3000].to_vec());
    let r = check_chain(&dir);
    assert!(
        matches!(r.findings[0], DiskError::Truncated { .. }),
        "{:?}",
        r.findings
    );
}

#[test]
fn flipped_bytes_in_header_and_bat_never_panic() {
    // Both header slots and both BAT copies in use.
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 16 * CS as u64, CS, "").unwrap();
    c.write_at(0, &pattern(1, 3 * CSU)).unwrap();
    c.flush().unwrap();
    c.mark().unwrap();
    c.write_at(9 * CS as u64, &pattern(2, 100)).unwrap();
    c.flush().unwrap();
    let img = dir.file_bytes(&top_file(&dir)).unwrap();
    let meta = header_of(&img).bat_end() as usize;
    let mut accepted = 0;
    for i in 0..meta {
        for flip in [0xffu8, 0x01] {
            let mut b = img.clone();
            b[i] ^= flip;
            if let Ok(d) = open_bytes(b.clone()) {
                accepted += 1;
                let mut buf = vec![0u8; CSU];
                for (v, _) in d.entries() {
                    d.read(v, 0, &mut buf).unwrap();
                }
                assert!(check_delta(MemStore::from_bytes(b), "img").is_consistent());
            }
        }
    }
    // Padding bytes and spare copies do not matter; checksummed ones do.
    assert!(accepted > 0 && accepted < 2 * meta);
}

#[test]
fn revert_goes_back_to_a_snapshot_and_drops_what_came_after() {
    let dir = MemDir::new();
    let mut c = Chain::create(dir.clone(), 32 * 1024, CS, "").unwrap();
    c.write_at(100, &pattern(1, 3000)).unwrap();
    let at_snapshot = read_all(&c);
    let snap = c.manifest().top().unwrap().id;
    c.snapshot("checkpoint").unwrap();
    c.write_at(200, &pattern(2, 9000)).unwrap();
    c.snapshot("later").unwrap();
    c.write_at(20_000, &pattern(3, 4000)).unwrap();
    assert_ne!(read_all(&c), at_snapshot);
    let files_before = dir.file_names().len();

    let top = c.revert_to(snap, "restored").unwrap();
    assert_eq!(read_all(&c), at_snapshot);
    let m = c.manifest();
    assert_eq!(m.deltas.len(), 2);
    assert_eq!(m.top().unwrap().id, top);
    assert_eq!(m.top().unwrap().parent, Some(snap));
    // The two dropped deltas' files are gone, the new top's is there.
    assert_eq!(dir.file_names().len(), files_before - 1);
    assert_consistent(&dir);
    // It goes on as a disk, and the revert survives a reopen.
    c.write_at(0, b"after").unwrap();
    c.flush().unwrap();
    let now = read_all(&c);
    drop(c);
    let c = Chain::open(dir.clone()).unwrap();
    assert_eq!(read_all(&c), now);
    // Not a snapshot: refused.
    let mut c = c;
    let writable = c.manifest().top().unwrap().id;
    assert!(matches!(
        c.revert_to(writable, "x"),
        Err(DiskError::ReadOnly { .. })
    ));
    assert!(matches!(
        c.revert_to(DeltaId([9; 16]), "x"),
        Err(DiskError::NoSuchDelta { .. })
    ));
}

//! Pre-copy: the memory of a running container is copied into the page store
//! before the freeze, so that the frozen window copies only the pages
//! written since (tracked by [`crate::dump::dirty`]).
//!
//! ```text
//!  survey (running)
//!  start a DirtyTracker per process on its private anonymous mappings
//!      (heap, stacks, anonymous memory: what restore takes pre-copied
//!      pages for); a process that cannot be tracked is copied frozen
//!  round 0: every present page            ─┐ reader (this thread):
//!  round 1..N-1: pages written since the   │   process_vm_readv, 4 MiB slices
//!      previous round, while that shrinks  │ writer thread: zero detection,
//!                                          │   chunks, crc, zstd ─► page file
//!      chunks owned by PageOwner::PreCopy ─┘   (its own thread again)
//!  freeze, seize, collect
//!  per process (dump_memory): the tracker's last round, then per mapping
//!      copy   = present ∩ (written ∪ not stored as it is now)
//!      zero   = stored before the freeze ∩ not present now
//!      chunks owned by PageOwner::Mm, after every pre-copy chunk
//! ```
//!
//! The page store's rule (docs/image-format.md): a later run for a page
//! supersedes an earlier one, a `Zero` run included, and restore applies
//! `PreCopy` runs only inside the image's private anonymous `Vma`s. So a
//! page written again after it was pre-copied comes back with its later
//! contents; a page pre-copied with data and then zeroed, released
//! (`MADV_DONTNEED`) or unmapped and mapped again comes back zero; pages of
//! a mapping that was unmapped (or moved by `mremap`) before the freeze are
//! dropped by restore, and a moved mapping is not tracked at its new
//! address, so it is copied whole in the frozen window.
//!
//! Two sets per process keep this exact: `stored_any` (every page that has
//! a pre-copy run: a candidate for superseding) and `stored_cur` (pages
//! whose last stored copy is what the page holds unless the tracker reports
//! a write since). A page read while it was being written is reported by
//! the next round, because pages are protected before they are read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::sync::mpsc;
use std::time::Instant;

use cr_formats::schema::{Record, VmaKind};
use cr_formats::{PageOwner, PageRanges, PageWriter, RecordWriter};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use serde::Serialize;

use crate::dump::dirty::{DirtyTracker, Written};
use crate::dump::mm::{self, PAGE_SIZE};
use crate::dump::procfs::{self, MapsEntry};
use crate::dump::DumpError;
use crate::error::{Error, Result};

/// Bytes read from the process per call (and per buffer to the writer).
const SLICE: usize = 4 << 20;
/// Buffers between the reader and the writer thread.
const BUFFERS: usize = 6;
/// A round that copied less than this ends the pre-copy: the frozen window
/// copies that much in a few milliseconds.
const SMALL_ROUND: u64 = 8 << 20;

/// One process to pre-copy, as the survey found it.
pub struct Target<'a> {
    pub host_pid: i32,
    /// PID inside the container (the page store's owner id).
    pub pid: i32,
    pub comm: &'a str,
    pub maps: &'a [(MapsEntry, VmaKind)],
}

/// What the pre-copy did, for the checkpoint summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreCopyStats {
    /// From the start of tracking until the last round was copied (the
    /// container runs all along).
    pub ms: f64,
    /// After the last round, until a migration's stream had carried the
    /// pre-copy (the container runs all along): see `SinkWrite::drain`.
    pub drain_ms: f64,
    pub rounds: u32,
    /// Pages stored with their contents before the freeze.
    pub pages_written: u64,
    /// Pages recorded as zero before the freeze.
    pub zero_pages: u64,
    /// Pages copied in each round.
    pub round_pages: Vec<u64>,
    /// Processes tracked and pre-copied.
    pub processes: usize,
    /// Processes copied in the frozen window only, with the reason.
    pub fallbacks: Vec<String>,
}

/// One process's pre-copy state.
struct Proc {
    host_pid: i32,
    comm: String,
    tracker: Option<DirtyTracker>,
    pagemap: Option<File>,
    /// The survey's mappings, for round 0.
    maps: Vec<(MapsEntry, VmaKind)>,
    stored_any: PageRanges,
    stored_cur: PageRanges,
}

/// The pre-copy of a container: the trackers (dropping it releases them)
/// and what was stored, for the frozen window's [`PreCopy::dump_memory`].
pub struct PreCopy {
    /// By PID inside the container.
    procs: BTreeMap<i32, Proc>,
    pub stats: PreCopyStats,
}

/// Whether restore takes pre-copied pages for this mapping, so the
/// pre-copy tracks it: private anonymous memory (heap, stacks, anonymous
/// mappings). The restore side is `restore::overlay`.
pub fn tracked(m: &MapsEntry, kind: &VmaKind) -> bool {
    !m.shared && matches!(kind, VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack)
}

/// A slice of pages read, on its way to the writer thread.
struct Job {
    owner: PageOwner,
    addr: u64,
    buf: Vec<u8>,
    len: usize,
}

/// Tracks every target, copies its memory into `pages` while it runs, for
/// at most `max_rounds` rounds (the first copies everything present, the
/// others what was written since the previous one).
pub fn run<W: Write + Send>(
    targets: &[Target<'_>],
    pages: &mut PageWriter<W>,
    max_rounds: u32,
) -> Result<PreCopy> {
    let started = Instant::now();
    let before = pages.stats();
    let mut pc = PreCopy {
        procs: BTreeMap::new(),
        stats: PreCopyStats::default(),
    };
    for t in targets {
        let comm = t.comm;
        let select = |m: &MapsEntry| {
            m.read
                && mm::classify(t.pid, comm, m)
                    .map(|k| tracked(m, &k))
                    .unwrap_or(false)
        };
        let pagemap = File::open(format!("/proc/{}/pagemap", t.host_pid)).ok();
        let tracker = match DirtyTracker::start(t.host_pid, &select) {
            Ok(tr) if pagemap.is_some() => Some(tr),
            Ok(_) => {
                pc.stats.fallbacks.push(format!(
                    "process {} ({}): its pagemap cannot be opened",
                    t.pid, t.comm
                ));
                None
            }
            Err(e) => {
                pc.stats
                    .fallbacks
                    .push(format!("process {} ({}): {e}", t.pid, t.comm));
                None
            }
        };
        // Round 0 copies the mappings as they were registered.
        let maps: Vec<(MapsEntry, VmaKind)> = tracker
            .as_ref()
            .map(|tr| {
                tr.maps_at_start()
                    .iter()
                    .filter_map(|m| mm::classify(t.pid, comm, m).ok().map(|k| (m.clone(), k)))
                    .collect()
            })
            .unwrap_or_default();
        pc.procs.insert(
            t.pid,
            Proc {
                host_pid: t.host_pid,
                comm: t.comm.to_string(),
                tracker,
                pagemap,
                maps,
                stored_any: PageRanges::new(),
                stored_cur: PageRanges::new(),
            },
        );
    }
    pc.stats.processes = pc.procs.values().filter(|p| p.tracker.is_some()).count();

    let procs = &mut pc.procs;
    let stats = &mut pc.stats;
    let writer_pages = &mut *pages;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Job>(BUFFERS);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || -> Result<()> {
            for job in rx {
                writer_pages.write_pages(job.owner, job.addr, &job.buf[..job.len])?;
                let _ = back_tx.send(job.buf);
            }
            Ok(())
        });
        let mut copier = Copier {
            tx: Some(tx),
            back: back_rx,
            spare: (0..BUFFERS).map(|_| vec![0u8; SLICE]).collect(),
        };
        let mut result = Ok(());
        let mut previous = u64::MAX;
        for round in 0..max_rounds.max(1) {
            let copied = match copy_round(procs, round, &mut copier, &mut stats.fallbacks) {
                Ok(n) => n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            stats.rounds += 1;
            stats.round_pages.push(copied);
            let bytes = copied * PAGE_SIZE;
            // Stop when the dirty set is small, or no longer shrinks.
            if bytes < SMALL_ROUND || (round > 0 && copied > previous / 2) {
                break;
            }
            previous = copied;
        }
        copier.tx = None;
        let written = writer
            .join()
            .map_err(|_| Error::Invalid("the pre-copy page writer panicked".into()))?;
        // The writer's error (a full disk, say) is the cause of the
        // copier's "writer stopped".
        written.and(result)
    })?;
    // The last chunk is sealed now (its zero runs would otherwise be
    // counted with the frozen window's pages).
    pages.flush_chunk()?;
    let after = pages.stats();
    pc.stats.pages_written = after.data_pages - before.data_pages;
    pc.stats.zero_pages = after.zero_pages - before.zero_pages;
    pc.stats.ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(pc)
}

/// One round over every tracked process; returns the pages copied.
fn copy_round(
    procs: &mut BTreeMap<i32, Proc>,
    round: u32,
    copier: &mut Copier,
    fallbacks: &mut Vec<String>,
) -> Result<u64> {
    let mut copied = 0;
    for (&pid, p) in procs.iter_mut() {
        if p.tracker.is_none() {
            continue;
        }
        let work = match plan_round(pid, p, round) {
            Ok(work) => work,
            Err(e) => {
                // Gone or changed beyond tracking: copied frozen (what was
                // stored stays a candidate for superseding).
                fallbacks.push(format!("process {pid} ({}), round {round}: {e}", p.comm));
                p.tracker = None;
                p.stored_cur = PageRanges::new();
                continue;
            }
        };
        for (addr, n) in work {
            copied += copier.copy(PageOwner::PreCopy { pid }, p, addr, n)?;
        }
    }
    Ok(copied)
}

/// The runs one round copies of one process.
fn plan_round(
    pid: i32,
    p: &mut Proc,
    round: u32,
) -> std::result::Result<Vec<(u64, u64)>, crate::dump::dirty::DirtyError> {
    let maps: Vec<(MapsEntry, VmaKind)> = if round == 0 {
        std::mem::take(&mut p.maps)
    } else {
        procfs::read_maps(p.host_pid)?
            .into_iter()
            // A mapping cr cannot move is refused by the survey after the
            // freeze; here it is only not copied.
            .filter_map(|m| mm::classify(pid, &p.comm, &m).ok().map(|k| (m, k)))
            .collect()
    };
    let (Some(tracker), Some(pagemap)) = (p.tracker.as_mut(), p.pagemap.as_ref()) else {
        return Ok(Vec::new());
    };
    let vmas: Vec<&(MapsEntry, VmaKind)> = maps
        .iter()
        .filter(|(m, k)| tracked(m, k) && m.read)
        .collect();
    let ranges: Vec<(u64, u64)> = vmas.iter().map(|(m, _)| (m.start, m.end)).collect();
    let written = if round == 0 {
        // Everything registered counts as written: copied now.
        ranges
            .iter()
            .map(|&(s, e)| {
                let parts = tracker.registered_parts(s, e);
                if parts.is_empty() {
                    Written::Whole
                } else {
                    Written::Runs(
                        parts
                            .into_iter()
                            .map(|(s, e)| (s, (e - s) / PAGE_SIZE))
                            .collect(),
                    )
                }
            })
            .collect()
    } else {
        tracker.round(&ranges)?
    };
    let mut work = Vec::new();
    for ((m, kind), w) in vmas.into_iter().zip(&written) {
        if *w == Written::Whole {
            // Not tracked: copied whole in the frozen window.
            p.stored_cur.remove(m.start, m.end);
            continue;
        }
        let present = mm::dirty_runs(pagemap, pid, m, kind)?;
        let (copy, _) = plan_vma(m, &present, w, &mut p.stored_cur, &p.stored_any);
        work.extend(copy);
    }
    Ok(work)
}

/// Runs of pages: (first page address, number of pages).
type Runs = Vec<(u64, u64)>;

/// What to store of mapping `m` now: the present pages that were written
/// (or are not stored as they are), and the pages stored before that are
/// no longer present (superseded with zero). `present` is the mapping's
/// pages restore needs, as [`mm::dirty_runs`] gives them.
fn plan_vma(
    m: &MapsEntry,
    present: &[(u64, u64)],
    written: &Written,
    cur: &mut PageRanges,
    any: &PageRanges,
) -> (Runs, Runs) {
    let mut have = PageRanges::new();
    for &(a, n) in present {
        have.insert(a, a + n * PAGE_SIZE);
    }
    let mut need = PageRanges::new();
    match written {
        Written::Whole => need.insert(m.start, m.end),
        Written::Runs(runs) => {
            for &(a, n) in runs {
                let end = a + n * PAGE_SIZE;
                need.insert(a, end);
                // Written and gone since: the stored copy is not current.
                for (s, e) in have.gaps(a, end) {
                    cur.remove(s, e);
                }
            }
            for (s, e) in cur.gaps(m.start, m.end) {
                need.insert(s, e);
            }
        }
    }
    let mut copy = Vec::new();
    for &(a, n) in present {
        for (s, e) in need.overlaps(a, a + n * PAGE_SIZE) {
            copy.push((s, (e - s) / PAGE_SIZE));
        }
    }
    let mut zero = Vec::new();
    for (s, e) in any.overlaps(m.start, m.end) {
        for (gs, ge) in have.gaps(s, e) {
            zero.push((gs, (ge - gs) / PAGE_SIZE));
        }
    }
    (copy, zero)
}

/// The reading end of the pre-copy pipeline.
struct Copier {
    tx: Option<mpsc::SyncSender<Job>>,
    back: mpsc::Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Copier {
    /// Reads `n` pages at `addr` of the running process `p` and hands them
    /// to the writer; returns the pages read. Pages that cannot be read
    /// (unmapped meanwhile) are left to the frozen window.
    fn copy(&mut self, owner: PageOwner, p: &mut Proc, addr: u64, n: u64) -> Result<u64> {
        let end = addr + n * PAGE_SIZE;
        let mut at = addr;
        let mut pages = 0;
        while at < end {
            let len = ((end - at) as usize).min(SLICE);
            let mut buf = match self.spare.pop() {
                Some(b) => b,
                None => self
                    .back
                    .recv()
                    .map_err(|_| Error::Invalid("the pre-copy page writer stopped".into()))?,
            };
            let got = read_partial(p.host_pid, at, &mut buf[..len]);
            if got > 0 {
                p.stored_any.insert(at, at + got as u64);
                p.stored_cur.insert(at, at + got as u64);
                pages += got as u64 / PAGE_SIZE;
                let job = Job {
                    owner,
                    addr: at,
                    buf,
                    len: got,
                };
                let sent = self.tx.as_ref().map(|tx| tx.send(job));
                if !matches!(sent, Some(Ok(()))) {
                    return Err(Error::Invalid("the pre-copy page writer stopped".into()));
                }
            } else {
                self.spare.push(buf);
            }
            if got < len {
                p.stored_cur.remove(at + got as u64, end);
                break;
            }
            at += len as u64;
        }
        Ok(pages)
    }
}

/// Reads whole pages at `addr` of a running process into `buf` as far as
/// they can be read; returns the bytes read (a multiple of the page size).
fn read_partial(pid: i32, addr: u64, buf: &mut [u8]) -> usize {
    let mut done = 0usize;
    while done < buf.len() {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: buf.len() - done,
        }];
        let mut local = [IoSliceMut::new(&mut buf[done..])];
        match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
            Ok(n) if n > 0 => done += n,
            _ => break,
        }
    }
    done - done % PAGE_SIZE as usize
}

impl PreCopy {
    /// The frozen window's part of one process's memory: its `Vma`
    /// records, then the pages the pre-copy did not store as they are now
    /// (owner `Mm`), and zero runs over pre-copied pages that are gone.
    /// For a process that was not tracked this is the plain dump: every
    /// present page.
    pub fn dump_memory<W: Write, P: Write>(
        &mut self,
        host_pid: i32,
        pid: i32,
        maps: &[(MapsEntry, VmaKind)],
        records: &mut RecordWriter<W>,
        pages: &mut PageWriter<P>,
    ) -> Result<()> {
        let pagemap_path = format!("/proc/{host_pid}/pagemap");
        let pagemap =
            File::open(&pagemap_path).map_err(|e| DumpError::proc(pid, &pagemap_path, e))?;
        let mut empty_cur = PageRanges::new();
        let empty_any = PageRanges::new();
        let proc = self.procs.get_mut(&pid);
        let ranges: Vec<(u64, u64)> = maps
            .iter()
            .filter(|(m, k)| tracked(m, k))
            .map(|(m, _)| (m.start, m.end))
            .collect();
        let (written, cur, any) = match proc {
            Some(p) => {
                let written = match p.tracker.as_mut() {
                    Some(t) if t.is_process(host_pid) => t.round(&ranges).ok(),
                    _ => None,
                };
                (written, &mut p.stored_cur, &p.stored_any)
            }
            None => (None, &mut empty_cur, &empty_any),
        };
        let mut written = written.map(|w| w.into_iter());
        let owner = PageOwner::Mm { pid };
        let mut buf = Vec::new();
        for (m, kind) in maps {
            records.write(&Record::Vma(mm::vma_record(pid, m, kind.clone())))?;
            let present = mm::dirty_runs(&pagemap, pid, m, kind)?;
            let (copy, zero) = if tracked(m, kind) {
                let w = written
                    .as_mut()
                    .and_then(|w| w.next())
                    .unwrap_or(Written::Whole);
                plan_vma(m, &present, &w, cur, any)
            } else {
                (present, Vec::new())
            };
            for (addr, n) in copy {
                let mut done = 0;
                while done < n {
                    let take = (n - done).min(1024);
                    buf.resize((take * PAGE_SIZE) as usize, 0);
                    let at = addr + done * PAGE_SIZE;
                    mm::read_pages(host_pid, at, &mut buf)?;
                    pages.write_pages(owner, at, &buf)?;
                    done += take;
                }
            }
            for (addr, n) in zero {
                pages.write_zero_pages(owner, addr, n)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn vma(start: u64, end: u64) -> MapsEntry {
        crate::dump::procfs::parse_maps(&format!("{start:x}-{end:x} rw-p 00000000 00:00 0 \n"))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn only_written_or_unstored_pages_are_copied_and_gone_ones_zeroed() {
        let m = vma(0x10000, 0x20000);
        // Pages 0..8 were pre-copied; 8..16 never were.
        let mut any = PageRanges::new();
        any.insert(0x10000, 0x10000 + 8 * P);
        let mut cur = any.clone();
        // Present now: 0..4 and 6..12; page 2 was written, page 5 was
        // written and then released (not present).
        let present = [(0x10000, 4), (0x10000 + 6 * P, 6)];
        let written = Written::Runs(vec![(0x10000 + 2 * P, 1), (0x10000 + 5 * P, 1)]);
        let (copy, zero) = plan_vma(&m, &present, &written, &mut cur, &any);
        assert_eq!(copy, [(0x10000 + 2 * P, 1), (0x10000 + 8 * P, 4)]);
        // Pre-copied pages 4 and 5 are not present any more: zero runs.
        assert_eq!(zero, [(0x10000 + 4 * P, 2)]);
        // Page 5's stored copy is not current any more.
        assert_eq!(cur.overlaps(0x10000 + 5 * P, 0x10000 + 6 * P), []);
    }

    #[test]
    fn an_untracked_mapping_is_copied_whole() {
        let m = vma(0x10000, 0x14000);
        let mut any = PageRanges::new();
        any.insert(0x10000, 0x14000);
        let mut cur = any.clone();
        let present = [(0x10000, 2)];
        let (copy, zero) = plan_vma(&m, &present, &Written::Whole, &mut cur, &any);
        assert_eq!(copy, [(0x10000, 2)]);
        assert_eq!(zero, [(0x10000 + 2 * P, 2)]);
    }
}

//! Lazy pages: the private anonymous memory of the restored processes is
//! filled *after* they resume, through userfaultfd in missing mode, so a
//! restore does not wait for the kernel to allocate every page.
//!
//! ```text
//!  before the resume (supervisor)                after the resume (server thread)
//!  mmap pages.img; PageSlice::open checks         loop:
//!    headers + trailer; two threads check           read every userfaultfd's messages:
//!    every payload checksum (nothing is used          PAGEFAULT  copy that page's extent
//!    before it was verified)                                     (up to 64 pages) or map
//!  chunks in stream order through the overlay                    a zero page
//!    ("a later run wins"):                            FORK       a new address space with a
//!    private anonymous Vma  -> LazyMap (address                  copy of the parent's map
//!                              -> offset in the mmap) REMAP      move the map's extents
//!    anything else          -> written now            REMOVE,    forget the extents: those
//!                              (process_vm_writev)    UNMAP      pages are zero or gone now
//!  per process: injected userfaultfd(), taken     copy the next 1 MiB of some map (UFFDIO_COPY)
//!    with pidfd_getfd, UFFDIO_API (fork, remap,   a map that is empty: close its userfaultfd
//!    remove and unmap events), UFFDIO_REGISTER    (the kernel unregisters its ranges)
//!    (missing) of each whole mapping with pages   every map empty: unmap pages.img, end
//!  server thread starts, then registers and
//!  the resume
//! ```
//!
//! * Only an uncompressed page store is used in place; a compressed one is
//!   written eagerly (`pages::stream`). So is a process whose userfaultfd
//!   cannot be made (a user-namespace container: a userfaultfd that sees
//!   faults taken inside the kernel needs CAP_SYS_PTRACE in the initial
//!   namespace): its pages are written before the resume from the mapping.
//! * The server is the container's supervisor: if it dies before the fill
//!   ends, the kernel unregisters the ranges and pages not yet filled read
//!   as zero. The fill takes well under a second for a GiB.
//! * A migration's staging store (`RestoreOptions::staged`) was checked
//!   frame by frame as it arrived, so only its frame headers and chunk
//!   indexes are looked at here, and it is not read in whole before the
//!   resume. It is the restore's alone: what is copied in is punched out
//!   of its tmpfs file at once, so the fill holds the memory once, not
//!   twice. A fork ends that (parent and child then map the same bytes);
//!   a checkpoint of the user's is never touched.
//! * Choice: `cr restore --pages lazy|eager` (lazy by default).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cr_formats::schema::Vma;
use cr_formats::{Codec, PageChunk, PageOwner, PageSlice, PAGE_SIZE};
use memmap2::Mmap;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};
use crate::inject::{RemoteSyscall, Tracee};
use crate::restore::image::LoadedImage;
use crate::restore::overlay::{takes_pre_copy, PageOverlay};
use crate::restore::process::{write_pages, Pages, PreparedHusk};
use crate::restore::shmem::SharedObjects;
use crate::restore::RestoreError;
use crate::uffd::{self, Msg};

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages copied around a faulting address, within its extent.
const FAULT_WINDOW: u64 = 64;
/// Bytes copied between two looks at the userfaultfds.
const BATCH: u64 = 1 << 20;

/// How a restore writes private anonymous memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagesMode {
    /// Every page before the resume.
    Eager,
    /// After the resume, through userfaultfd (see the module documentation).
    Lazy,
}

/// Where the pages of one address space still to be filled are: extents
/// of virtual addresses, each backed by consecutive bytes of the mapped
/// page store. Extents never overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyMap {
    /// start -> (end, offset of `start`'s page in the page store)
    extents: BTreeMap<u64, (u64, u64)>,
}

impl LazyMap {
    /// Pages `[start, end)` come from offset `src` on (replacing what was
    /// there: a later run wins).
    pub fn insert(&mut self, start: u64, end: u64, src: u64) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        self.extents.insert(start, (end, src));
    }

    /// Forgets `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, (u64, u64))> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, v)| (*s, *v))
            .collect();
        for (s, (e, src)) in hit {
            self.extents.remove(&s);
            if s < start {
                self.extents.insert(s, (start, src));
            }
            if e > end {
                self.extents.insert(end, (e, src + (end - s)));
            }
        }
    }

    /// The extent holding `addr`: (start, end, src).
    pub fn find(&self, addr: u64) -> Option<(u64, u64, u64)> {
        let (s, (e, src)) = self.extents.range(..=addr).next_back()?;
        (addr < *e).then_some((*s, *e, *src))
    }

    /// The lowest extent.
    pub fn first(&self) -> Option<(u64, u64, u64)> {
        self.extents
            .iter()
            .next()
            .map(|(s, (e, src))| (*s, *e, *src))
    }

    /// `mremap` moved `[from, from + len)` to `to`.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let end = from.saturating_add(len);
        let moved: Vec<(u64, u64, u64)> = self
            .extents
            .range(..end)
            .filter(|(_, (e, _))| *e > from)
            .map(|(s, (e, src))| {
                let (cs, ce) = ((*s).max(from), (*e).min(end));
                (cs, ce, src + (cs - s))
            })
            .collect();
        self.remove(from, end);
        for (s, e, src) in moved {
            self.insert(s - from + to, e - from + to, src);
        }
    }

    /// Whether any extent lies in `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.extents
            .range(..end)
            .next_back()
            .is_some_and(|(_, (e, _))| *e > start)
    }

    pub fn pages(&self) -> u64 {
        self.extents.iter().map(|(s, (e, _))| (e - s) / PAGE).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }
}

/// The page store, mapped and verified, and what is left to fill.
pub struct LazyPages {
    store: Store,
    spaces: Vec<Space>,
}

/// The mapped page store; with its file when what was copied in is freed
/// from it (`RestoreOptions::staged`).
pub struct Store {
    map: Mmap,
    /// Open for writing (a hole can be punched). Dropped at the first fork:
    /// from then on two address spaces may want the same bytes.
    discard: Option<File>,
    /// Bytes freed so far.
    freed: u64,
}

impl Store {
    /// `[off, off + len)` was copied in and nothing else needs it: its
    /// memory goes (a hole in the tmpfs file). Best effort: if the punch
    /// fails the bytes just stay until the store is unmapped.
    fn consumed(&mut self, off: u64, len: u64) {
        let Some(file) = &self.discard else { return };
        let (Ok(o), Ok(l)) = (i64::try_from(off), i64::try_from(len)) else {
            return;
        };
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if nix::fcntl::fallocate(file, flags, o, l).is_ok() {
            self.freed += len;
        }
    }
}

/// One address space being filled.
struct Space {
    /// Container PID of the process (of its parent, for a forked child).
    pid: i32,
    uffd: OwnedFd,
    map: LazyMap,
    /// Faulting addresses not served yet.
    faults: Vec<u64>,
}

/// Whether this restore can fill memory lazily: the mode asks for it and
/// the page store is stored uncompressed.
pub fn usable(image: &LoadedImage, mode: PagesMode) -> Result<bool> {
    if mode == PagesMode::Eager {
        return Ok(false);
    }
    let path = cr_formats::layout::pages_path(&image.dir);
    let mut head = [0u8; cr_formats::STREAM_HEADER_LEN];
    let mut f = File::open(&path).map_err(|e| Error::io("opening checkpoint image", &path, e))?;
    std::io::Read::read_exact(&mut f, &mut head)
        .map_err(|e| Error::io("reading checkpoint image", &path, e))?;
    let header = cr_formats::StreamHeader::decode(&head, cr_formats::FORMAT_VERSION)
        .map_err(|e| Error::Invalid(format!("checkpoint image {}: {e}", path.display())))?;
    Ok(header.codec == Codec::None)
}

/// Maps and verifies the page store, writes now what cannot wait (every
/// page outside private anonymous memory, shared objects' pages) and
/// returns the maps of the rest, per process, for [`register`].
pub fn load(
    image: &LoadedImage,
    husks: &HashMap<i32, PreparedHusk>,
    shared: &SharedObjects<'_>,
    staged: bool,
    fail: &dyn Fn(i32, RestoreError) -> Error,
) -> Result<(Store, HashMap<i32, LazyMap>)> {
    let path = cr_formats::layout::pages_path(&image.dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(staged)
        .open(&path)
        .map_err(|e| Error::io("opening checkpoint image", &path, e))?;
    // A staged store is not read whole here: its pages come in as the fill
    // copies them, after the resume.
    let mut options = memmap2::MmapOptions::new();
    if !staged {
        options.populate();
    }
    // SAFETY: the mapping is read-only and private to this process; the
    // image file is cr's own (under the host's state root or a directory
    // the administrator named), and every byte used is checksummed below,
    // after the mapping was made (a staged store: as it arrived, by `cr
    // serve`, into its own tmpfs). Staged, this process punches
    // holes only in ranges it has copied and never reads again
    // (`Store::consumed`).
    let store = unsafe { options.map(&file) }
        .map_err(|e| Error::io("mapping checkpoint image", &path, e))?;
    let bad = |e: cr_formats::FormatError| {
        Error::Invalid(format!("checkpoint image {}: {e}", path.display()))
    };
    let slice = PageSlice::open(&store[..]).map_err(bad)?;
    let chunks = if staged {
        // Every payload was checked as it arrived.
        slice.chunks_checked_before(0..slice.len())
    } else {
        verify_on_two_threads(&slice)
    }
    .map_err(bad)?;
    let base = store.as_ptr() as u64;
    let mut overlay = PageOverlay::default();
    let mut maps: HashMap<i32, LazyMap> = HashMap::new();
    for chunk in &chunks {
        let owner = chunk.header.owner;
        let pid = match owner {
            PageOwner::Mm { pid } => pid,
            PageOwner::PreCopy { pid } if !husks.contains_key(&pid) => continue,
            PageOwner::PreCopy { pid } => pid,
            PageOwner::Shmem { id } => {
                shared.write_chunk(id, chunk.runs())?;
                continue;
            }
        };
        let (Some(husk), Some(p)) = (husks.get(&pid), image.processes.get(&pid)) else {
            return Err(Error::Invalid(format!(
                "checkpoint image {}: pages of unknown process {pid}",
                image.dir.display()
            )));
        };
        let pages = overlay.runs(pid, owner, chunk.runs(), &p.vmas);
        let map = maps.entry(pid).or_default();
        let now = defer(&pages, &p.vmas, base, store.len() as u64, map);
        write_pages(husk.pid, &p.vmas, &now).map_err(|e| fail(pid, e))?;
    }
    let store = Store {
        map: store,
        discard: staged.then_some(file),
        freed: 0,
    };
    Ok((store, maps))
}

/// Checks the payloads of `slice` in two halves at once.
fn verify_on_two_threads<'a>(slice: &PageSlice<'a>) -> cr_formats::Result<Vec<PageChunk<'a>>> {
    let n = slice.len();
    let total = slice.payload_bytes(0..n);
    // The frame where the first half of the bytes ends.
    let mut cut = 0;
    while cut < n && slice.payload_bytes(0..cut) < total / 2 {
        cut += 1;
    }
    std::thread::scope(|s| {
        let second = s.spawn(|| slice.verify(cut..n));
        let mut chunks = slice.verify(0..cut)?;
        let rest = second
            .join()
            .unwrap_or(Err(cr_formats::FormatError::BadHeader {
                what: "the page store verifier panicked",
            }))?;
        chunks.extend(rest);
        Ok(chunks)
    })
}

/// Splits one chunk's runs (from the overlay, in order) between `map`
/// (pages of private anonymous mappings, deferred) and the returned runs
/// (everything else, written now). Zero runs over deferred pages remove
/// them: fresh memory is zero.
fn defer<'a>(
    pages: &[Pages<'a>],
    vmas: &[Vma],
    base: u64,
    store_len: u64,
    map: &mut LazyMap,
) -> Vec<Pages<'a>> {
    let mut now = Vec::new();
    for run in pages {
        let start = run.vaddr;
        let end = start + run.nr_pages * PAGE;
        let in_store = run.data.and_then(|d| {
            let at = (d.as_ptr() as u64).checked_sub(base)?;
            (at + d.len() as u64 <= store_len).then_some(at)
        });
        let mut at = start;
        while at < end {
            // The mapping holding `at`, or the rest goes as it is (a stray
            // run is refused by write_pages).
            let Some(v) = vmas.iter().find(|v| v.start <= at && at < v.end) else {
                now.push(piece(run, at, end));
                break;
            };
            let stop = v.end.min(end);
            if takes_pre_copy(v) {
                match (run.data, in_store) {
                    (Some(_), Some(src)) => map.insert(at, stop, src + (at - start)),
                    // Zeros: fresh memory is zero, the deferred pages go.
                    _ => map.remove(at, stop),
                }
            } else {
                now.push(piece(run, at, stop));
            }
            at = stop;
        }
    }
    now
}

/// The part `[from, to)` of `run`.
fn piece<'a>(run: &Pages<'a>, from: u64, to: u64) -> Pages<'a> {
    let skip = (from - run.vaddr) as usize;
    let len = (to - from) as usize;
    Pages {
        vaddr: from,
        nr_pages: (to - from) / PAGE,
        data: run
            .data
            .map(|d| d.get(skip..skip + len).unwrap_or_default()),
    }
}

/// Makes a userfaultfd for every process with deferred pages and
/// registers its mappings; a process whose userfaultfd cannot be made
/// gets its pages written now instead.
pub fn register(
    store: Store,
    maps: HashMap<i32, LazyMap>,
    tracees: &mut [(i32, Tracee, Vec<Tracee>)],
    husks: &HashMap<i32, PreparedHusk>,
    image: &LoadedImage,
    fail: &dyn Fn(i32, RestoreError) -> Error,
) -> Result<LazyPages> {
    let mut spaces = Vec::new();
    for (pid, tracee, _) in tracees.iter_mut() {
        let Some(map) = maps.get(pid).filter(|m| !m.is_empty()) else {
            continue;
        };
        let (Some(husk), Some(p)) = (husks.get(pid), image.processes.get(pid)) else {
            continue;
        };
        match take_uffd(tracee, husk) {
            Ok(uffd) => {
                for v in p.vmas.iter().filter(|v| takes_pre_copy(v)) {
                    if !map.overlaps(v.start, v.end) {
                        continue;
                    }
                    uffd::register(
                        uffd.as_fd(),
                        v.start,
                        v.end - v.start,
                        uffd::UFFDIO_REGISTER_MODE_MISSING,
                    )
                    .map_err(|source| {
                        fail(
                            *pid,
                            RestoreError::Invalid {
                                pid: husk.pid,
                                what: format!(
                                    "UFFDIO_REGISTER of {:#x}-{:#x}: {source}",
                                    v.start, v.end
                                ),
                            },
                        )
                    })?;
                }
                spaces.push(Space {
                    pid: *pid,
                    uffd,
                    map: map.clone(),
                    faults: Vec::new(),
                });
            }
            Err(_) => {
                // No userfaultfd for this one: its pages now, from the store.
                let runs: Vec<Pages<'_>> = map
                    .extents
                    .iter()
                    .map(|(s, (e, src))| Pages {
                        vaddr: *s,
                        nr_pages: (e - s) / PAGE,
                        data: store.map.get(*src as usize..(*src + (e - s)) as usize),
                    })
                    .collect();
                write_pages(husk.pid, &p.vmas, &runs).map_err(|e| fail(*pid, e))?;
            }
        }
    }
    Ok(LazyPages { store, spaces })
}

/// A userfaultfd of the husk's address space that sees faults taken inside
/// the kernel too, with the non-cooperative events.
fn take_uffd(tracee: &mut Tracee, husk: &PreparedHusk) -> std::result::Result<OwnedFd, String> {
    let mut rs = RemoteSyscall::with_gadget(tracee, husk.gadget);
    rs.set_timeout(Some(Duration::from_secs(10)));
    let fd = rs
        .take_userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .map_err(|e| e.to_string())?;
    let wanted = uffd::UFFD_FEATURE_EVENT_FORK
        | uffd::UFFD_FEATURE_EVENT_REMAP
        | uffd::UFFD_FEATURE_EVENT_REMOVE
        | uffd::UFFD_FEATURE_EVENT_UNMAP;
    match uffd::api(fd.as_fd(), wanted) {
        Ok(got) if got & wanted == wanted => Ok(fd),
        Ok(got) => Err(format!("userfaultfd features {got:#x}, wanted {wanted:#x}")),
        Err(e) => Err(format!("UFFDIO_API: {e}")),
    }
}

impl LazyPages {
    /// Pages left to fill.
    pub fn pages(&self) -> u64 {
        self.spaces.iter().map(|s| s.map.pages()).sum()
    }

    /// Starts the server thread (see the module documentation): it serves
    /// faults at once, and fills the rest once the returned handle is
    /// dropped (after the resume, so the fill does not compete with it).
    /// It ends once every page is in, and logs what it did to the
    /// supervisor's log.
    pub fn serve(self) -> std::io::Result<FillGate> {
        let gate = Arc::new(AtomicBool::new(false));
        let open = Arc::clone(&gate);
        std::thread::Builder::new()
            .name("lazy-pages".into())
            .spawn(move || {
                let started = Instant::now();
                let pages = self.pages();
                let spaces = self.spaces.len();
                let stats = self.run(&open);
                eprintln!(
                    "lazy pages: {pages} pages of {spaces} processes filled in {:.1} ms \
                     ({} faults served, {} forks, {} errors; {} KiB of the page store freed as copied)",
                    started.elapsed().as_secs_f64() * 1e3,
                    stats.faults,
                    stats.forks,
                    stats.errors,
                    stats.freed >> 10,
                );
            })?;
        Ok(FillGate(gate))
    }

    fn run(mut self, gate: &AtomicBool) -> Stats {
        let mut stats = Stats::default();
        let mut msgs = Vec::new();
        let mut next = 0usize;
        while !self.spaces.is_empty() {
            if !gate.load(Ordering::Acquire) {
                // Before the resume: faults only, waiting for them.
                let mut fds: Vec<PollFd<'_>> = self
                    .spaces
                    .iter()
                    .map(|s| PollFd::new(s.uffd.as_fd(), PollFlags::POLLIN))
                    .collect();
                let _ = poll(&mut fds, PollTimeout::from(10u8));
            }
            // Messages first: a thread waits on each fault, and a fork or
            // mremap waits until its event was read.
            let mut i = 0;
            while i < self.spaces.len() {
                msgs.clear();
                if uffd::read_msgs(self.spaces[i].uffd.as_fd(), &mut msgs).is_err() {
                    self.spaces.swap_remove(i);
                    continue;
                }
                for m in msgs.drain(..) {
                    self.handle(i, m, &mut stats);
                }
                i += 1;
            }
            let store = &mut self.store;
            self.spaces.retain_mut(|space| {
                let gone = serve_faults(space, store, &mut stats).is_err();
                let done = space.map.is_empty() && space.faults.is_empty();
                !(gone || done)
            });
            if self.spaces.is_empty() {
                break;
            }
            if !gate.load(Ordering::Acquire) {
                continue;
            }
            next = (next + 1) % self.spaces.len();
            let space = &mut self.spaces[next];
            if let Some((s, e, src)) = space.map.first() {
                if let Fill::Gone(_) = fill(space, &mut self.store, s, e.min(s + BATCH), src) {
                    // The address space is gone (the process exited).
                    self.spaces.swap_remove(next);
                }
            }
        }
        stats.freed = self.store.freed;
        stats
    }

    fn handle(&mut self, i: usize, m: Msg, stats: &mut Stats) {
        match m {
            Msg::PageFault { address, .. } => {
                stats.faults += 1;
                self.spaces[i].faults.push(address);
            }
            Msg::Fork { ufd } => {
                stats.forks += 1;
                // Parent and child now map the same bytes of the store.
                self.store.discard = None;
                // SAFETY: the kernel installed `ufd` in this process for the
                // fork event; nothing else owns it.
                let uffd = unsafe { OwnedFd::from_raw_fd(ufd) };
                let child = Space {
                    pid: self.spaces[i].pid,
                    uffd,
                    map: self.spaces[i].map.clone(),
                    faults: Vec::new(),
                };
                self.spaces.push(child);
            }
            Msg::Remap { from, to, len } => self.spaces[i].map.remap(from, to, len),
            Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                self.spaces[i].map.remove(start, end)
            }
            Msg::Other { event } => {
                stats.errors += 1;
                eprintln!("lazy pages: unknown userfaultfd event {event:#x}");
            }
        }
    }
}

/// Opens the lazy page server's background fill when dropped (see
/// [`LazyPages::serve`]).
#[derive(Debug)]
pub struct FillGate(Arc<AtomicBool>);

impl Drop for FillGate {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Stats {
    faults: u64,
    forks: u64,
    errors: u64,
    freed: u64,
}

/// What one copy did.
enum Fill {
    Done,
    /// The address space is changing (an event waits to be read): the rest
    /// is still in the map.
    Again,
    /// The address space is gone, or the kernel refused.
    Gone(Errno),
}

/// Serves the faults `space` waits on: the faulting page's extent from
/// there on (up to [`FAULT_WINDOW`] pages), or a zero page. Faults that
/// met a changing address space stay for the next round.
fn serve_faults(
    space: &mut Space,
    store: &mut Store,
    stats: &mut Stats,
) -> std::result::Result<(), Errno> {
    let faults = std::mem::take(&mut space.faults);
    for address in faults {
        let result = match space.map.find(address) {
            Some((s, e, src)) => fill(
                space,
                store,
                address,
                e.min(address + FAULT_WINDOW * PAGE),
                src + (address - s),
            ),
            None => match uffd::zeropage(space.uffd.as_fd(), address, PAGE) {
                Ok(()) => Fill::Done,
                Err(Errno::EAGAIN) => Fill::Again,
                // Present already, or no longer registered: wake the thread
                // so it faults again normally.
                Err(Errno::EEXIST) | Err(Errno::ENOENT) => {
                    let _ = uffd::wake(space.uffd.as_fd(), address, PAGE);
                    Fill::Done
                }
                Err(e) => Fill::Gone(e),
            },
        };
        match result {
            Fill::Done => {}
            Fill::Again => space.faults.push(address),
            Fill::Gone(Errno::ESRCH) => return Err(Errno::ESRCH),
            Fill::Gone(e) => {
                stats.errors += 1;
                eprintln!(
                    "lazy pages: process {}: serving a fault at {address:#x}: {e}",
                    space.pid
                );
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Copies `[start, end)` of `space` from offset `src` of the store and
/// forgets it in the map (and in a discarded store, frees it). Pages
/// already there (a fault served them) are skipped.
fn fill(space: &mut Space, store: &mut Store, start: u64, end: u64, src: u64) -> Fill {
    let mut at = start;
    while at < end {
        let off = (src + (at - start)) as usize;
        let len = end - at;
        let Some(bytes) = store.map.get(off..off + len as usize) else {
            // The map points past the store: never built that way.
            space.map.remove(at, end);
            return Fill::Gone(Errno::EINVAL);
        };
        match uffd::copy(space.uffd.as_fd(), at, bytes.as_ptr(), len) {
            Ok(_) => {
                space.map.remove(at, end);
                store.consumed(off as u64, len);
                at = end;
            }
            Err((Errno::EEXIST, n)) => {
                // The page after the `n` bytes copied is present: skip it.
                let skip = (n + PAGE).min(len);
                space.map.remove(at, at + skip);
                store.consumed(off as u64, skip);
                at += skip;
            }
            Err((Errno::EAGAIN, n)) => {
                space.map.remove(at, at + n);
                store.consumed(off as u64, n);
                return Fill::Again;
            }
            Err((Errno::ENOENT, _)) => {
                // No registered mapping there any more (an unmap whose
                // event comes next): nothing to fill.
                space.map.remove(at, end);
                return Fill::Done;
            }
            Err((e, _)) => return Fill::Gone(e),
        }
    }
    Fill::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE;

    fn extents(m: &LazyMap) -> Vec<(u64, u64, u64)> {
        m.extents.iter().map(|(s, (e, o))| (*s, *e, *o)).collect()
    }

    #[test]
    fn a_later_insert_wins_and_splits_what_it_covers() {
        let mut m = LazyMap::default();
        m.insert(0, 10 * P, 100 * P);
        m.insert(3 * P, 5 * P, 500 * P);
        assert_eq!(
            extents(&m),
            vec![
                (0, 3 * P, 100 * P),
                (3 * P, 5 * P, 500 * P),
                (5 * P, 10 * P, 105 * P)
            ]
        );
        assert_eq!(m.pages(), 10);
        assert_eq!(m.find(4 * P), Some((3 * P, 5 * P, 500 * P)));
        assert_eq!(m.find(10 * P), None);
    }

    #[test]
    fn remove_trims_both_ends() {
        let mut m = LazyMap::default();
        m.insert(0, 4 * P, 0);
        m.insert(8 * P, 12 * P, 40 * P);
        m.remove(2 * P, 10 * P);
        assert_eq!(extents(&m), vec![(0, 2 * P, 0), (10 * P, 12 * P, 42 * P)]);
        m.remove(0, 100 * P);
        assert!(m.is_empty());
    }

    #[test]
    fn remap_moves_the_covered_part_only() {
        let mut m = LazyMap::default();
        m.insert(0, 4 * P, 0);
        m.remap(2 * P, 100 * P, 4 * P);
        assert_eq!(extents(&m), vec![(0, 2 * P, 0), (100 * P, 102 * P, 2 * P)]);
    }
}

//! Dirty-page tracking of a running process: which of its pages were written
//! since the last look. Pre-copy (`dump/precopy.rs`) uses it to copy memory
//! while a container runs and then, frozen, only what changed; live
//! migration will use it for its rounds over the network.
//!
//! This kernel has no soft-dirty bits. The tracker uses userfaultfd
//! write-protection in *async* mode instead (KERNEL.md): a write to a
//! protected page is resolved by the kernel itself (no fault handler, about
//! 0.7 us for the first write after a round) and leaves the page table entry
//! without its uffd-wp bit, which `PAGEMAP_SCAN` reports as `PAGE_IS_WRITTEN`.
//!
//! ```text
//!  start(pid, select)
//!    stop every thread (ptrace interrupt; a pause of milliseconds) ─
//!    inject userfaultfd(USER_MODE_ONLY) through a syscall instruction found
//!    in the vDSO ─ pidfd_getfd takes the fd ─ inject close(fd)
//!    UFFDIO_API (WP_ASYNC | WP_UNPOPULATED), read the maps, then per
//!    selected mapping, whole (a partial range would split it),
//!    UFFDIO_REGISTER(MODE_WP) + UFFDIO_WRITEPROTECT: every page protected,
//!    unpopulated ones too (pte markers) ─ resume every thread
//!  round(ranges)      per range: PAGEMAP_SCAN(WP_MATCHING | CHECK_WPASYNC,
//!                     PAGE_IS_WRITTEN) -> the pages written since the last
//!                     round, protected again in the same walk
//!                     a range outside what was registered, or one the
//!                     kernel no longer has registered (EPERM: mapped again,
//!                     moved by mremap) -> Written::Whole
//!  drop               close the fd: the kernel unregisters every range and
//!                     clears the wp bits; the process pays nothing after
//! ```
//!
//! The target never holds the userfaultfd itself (it is closed in the
//! target right after `pidfd_getfd`), so nothing of the tracker shows in its
//! fd table. A process that already has a userfaultfd of its own on a range
//! makes the register fail (EBUSY): that range is reported `Whole`.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::dump::procfs::{read_maps, MapsEntry};
use crate::dump::DumpError;
use crate::inject::{find_syscall_gadget, list_threads, InjectError, RemoteSyscall, Tracee};
use crate::uffd::{
    uffdio_api, uffdio_register, uffdio_writeprotect, UffdioApi, UffdioRange, UffdioRegister,
    UffdioWriteprotect, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP, UFFD_API,
    UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
};

const PAGE: u64 = 4096;

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

nix::ioctl_readwrite!(pagemap_scan, b'f', 16, PmScanArg);

/// Why a process cannot be tracked.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    #[error("process {pid}: dirty-page tracking needs {what}, which this kernel does not offer")]
    Unsupported { pid: i32, what: String },
    #[error("process {pid}: creating its userfaultfd: {source}")]
    Inject {
        pid: i32,
        #[source]
        source: InjectError,
    },
    #[error("process {pid}: {what}: {source}")]
    Sys {
        pid: i32,
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    Proc(#[from] DumpError),
}

/// What was written in one range since the previous round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Runs of written pages: (first page address, number of pages).
    Runs(Vec<(u64, u64)>),
    /// Treat every page as written: the range was not tracked (mapped
    /// after the start, moved, or its registration failed).
    Whole,
}

/// Tracks the pages one process writes. See the module documentation.
pub struct DirtyTracker {
    host_pid: i32,
    start_time: u64,
    uffd: OwnedFd,
    pagemap: File,
    /// Ranges registered and protected at the start, ascending.
    registered: Vec<(u64, u64)>,
    regions: Vec<PageRegion>,
    /// `/proc/PID/maps` when the ranges were registered.
    maps: Vec<MapsEntry>,
}

impl std::fmt::Debug for DirtyTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyTracker")
            .field("host_pid", &self.host_pid)
            .field("registered", &self.registered.len())
            .finish()
    }
}

impl DirtyTracker {
    /// Starts tracking the mappings of host process `host_pid` (which runs)
    /// that `select` picks from its `/proc/PID/maps`. Every page counts as
    /// clean afterwards. A mapping whose registration the kernel refuses is
    /// left out (reported `Whole` by every round).
    ///
    /// Registration must not change the process's mappings: registering
    /// part of a mapping would split it (and, say, a later `mremap` of the
    /// whole would fail with EFAULT). So every thread of the process is
    /// stopped (ptrace interrupt) while its maps are read and whole
    /// mappings are registered as they are, then resumed: a pause of a few
    /// milliseconds for this one process, not a freeze of the container.
    pub fn start(host_pid: i32, select: &dyn Fn(&MapsEntry) -> bool) -> Result<Self, DirtyError> {
        let start_time = start_time(host_pid)?;
        let mut tracees = stop_all_threads(host_pid)?;
        let main = tracees
            .iter_mut()
            .find(|t| t.tid().as_raw() == host_pid)
            .ok_or_else(|| DirtyError::Inject {
                pid: host_pid,
                source: InjectError::Invalid("its main thread is gone".into()),
            })?;
        let uffd = take_userfaultfd(host_pid, main)?;
        let sys = |what| {
            move |source| DirtyError::Sys {
                pid: host_pid,
                what,
                source,
            }
        };
        let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: wanted,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes the uffdio_api we own.
        match unsafe { uffdio_api(uffd.as_raw_fd(), &mut api) } {
            Ok(_) if api.features & wanted == wanted => {}
            Ok(_) | Err(Errno::EINVAL) => {
                return Err(DirtyError::Unsupported {
                    pid: host_pid,
                    what: "userfaultfd with UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED".into(),
                })
            }
            Err(e) => return Err(sys("UFFDIO_API")(e)),
        }
        let pagemap_path = format!("/proc/{host_pid}/pagemap");
        let pagemap =
            File::open(&pagemap_path).map_err(|e| DumpError::proc(host_pid, &pagemap_path, e))?;
        let maps = read_maps(host_pid)?;
        let mut tracker = DirtyTracker {
            host_pid,
            start_time,
            uffd,
            pagemap,
            registered: Vec::new(),
            regions: vec![PageRegion::default(); 4096],
            maps: Vec::new(),
        };
        for m in maps.iter().filter(|m| select(m)) {
            if tracker.register(m.start, m.end)? {
                tracker.registered.push((m.start, m.end));
            }
        }
        tracker.registered.sort_unstable();
        tracker.maps = maps;
        // PAGEMAP_SCAN exists (6.7 and later) and accepts these flags.
        if let Some(&(start, _)) = tracker.registered.first() {
            match tracker.scan(start, start + PAGE) {
                Err(Errno::ENOTTY) | Err(Errno::EINVAL) => {
                    return Err(DirtyError::Unsupported {
                        pid: host_pid,
                        what: "the PAGEMAP_SCAN ioctl with PM_SCAN_WP_MATCHING".into(),
                    })
                }
                Err(e) => return Err(sys("PAGEMAP_SCAN")(e)),
                Ok(_) => {}
            }
        }
        for t in tracees {
            t.detach().map_err(|source| DirtyError::Inject {
                pid: host_pid,
                source,
            })?;
        }
        Ok(tracker)
    }

    /// The process's mappings when tracking started.
    pub fn maps_at_start(&self) -> &[MapsEntry] {
        &self.maps
    }

    /// The host PID of the tracked process.
    pub fn host_pid(&self) -> i32 {
        self.host_pid
    }

    /// The ranges registered at the start.
    pub fn registered(&self) -> &[(u64, u64)] {
        &self.registered
    }

    /// Whether host PID `host_pid` is still the process this tracker
    /// started on (not a later one that got the same PID).
    pub fn is_process(&self, host_pid: i32) -> bool {
        host_pid == self.host_pid && start_time(host_pid).ok() == Some(self.start_time)
    }

    /// For each of `ranges` (mappings of the process now, page-aligned):
    /// the pages written since the start or the previous round. The pages
    /// reported are protected again, so the next round reports only later
    /// writes.
    pub fn round(&mut self, ranges: &[(u64, u64)]) -> Result<Vec<Written>, DirtyError> {
        let mut out = Vec::with_capacity(ranges.len());
        for &(start, end) in ranges {
            if !self.covers(start, end) {
                out.push(Written::Whole);
                continue;
            }
            match self.scan(start, end) {
                Ok(Some(runs)) => out.push(Written::Runs(runs)),
                Ok(None) | Err(Errno::EPERM) => out.push(Written::Whole),
                Err(e) => {
                    return Err(DirtyError::Sys {
                        pid: self.host_pid,
                        what: "PAGEMAP_SCAN",
                        source: e,
                    })
                }
            }
        }
        Ok(out)
    }

    /// The parts of `[start, end)` that were registered at the start.
    pub fn registered_parts(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.registered
            .iter()
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// Whether `[start, end)` lies inside the registered ranges (adjacent
    /// ones may have been merged into one mapping since).
    fn covers(&self, start: u64, end: u64) -> bool {
        let i = self.registered.partition_point(|r| r.0 <= start);
        if i == 0 {
            return false;
        }
        let mut reach = self.registered[i - 1].1;
        for &(s, e) in &self.registered[i..] {
            if reach >= end || s > reach {
                break;
            }
            reach = reach.max(e);
        }
        reach >= end
    }

    /// Registers `[start, end)` for write-protection and protects it.
    /// `Ok(false)`: the kernel refused this range (left untracked).
    fn register(&self, start: u64, end: u64) -> Result<bool, DirtyError> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the struct we own.
        match unsafe { uffdio_register(self.uffd.as_raw_fd(), &mut reg) } {
            Ok(_) => {}
            Err(Errno::EINVAL | Errno::EBUSY | Errno::EPERM | Errno::ENOMEM) => return Ok(false),
            Err(e) => {
                return Err(DirtyError::Sys {
                    pid: self.host_pid,
                    what: "UFFDIO_REGISTER",
                    source: e,
                })
            }
        }
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads the struct we own.
        match unsafe { uffdio_writeprotect(self.uffd.as_raw_fd(), &mut wp) } {
            Ok(_) => Ok(true),
            // The range changed meanwhile: whatever is registered of it
            // gets EPERM from the scans and counts as wholly written.
            Err(Errno::EINVAL | Errno::ENOENT | Errno::EAGAIN) => Ok(false),
            Err(e) => Err(DirtyError::Sys {
                pid: self.host_pid,
                what: "UFFDIO_WRITEPROTECT",
                source: e,
            }),
        }
    }

    /// The written pages of `[start, end)`, protected again; `None` when the
    /// walk did not progress (then the caller counts the range as written).
    fn scan(&mut self, start: u64, end: u64) -> Result<Option<Vec<(u64, u64)>>, Errno> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: at,
                end,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len`
            // page_region entries into `self.regions`, which holds that many.
            let n = unsafe { pagemap_scan(self.pagemap.as_raw_fd(), &mut arg) }? as usize;
            for r in &self.regions[..n.min(self.regions.len())] {
                let pages = (r.end - r.start) / PAGE;
                match runs.last_mut() {
                    Some((s, p)) if *s + *p * PAGE == r.start => *p += pages,
                    _ => runs.push((r.start, pages)),
                }
            }
            // Fewer results than the vector holds: the range is done (the
            // kernel's walk_end may stop short of `end` even then).
            if n < self.regions.len() {
                break;
            }
            if arg.walk_end <= at {
                return Ok(None);
            }
            at = arg.walk_end;
        }
        Ok(Some(runs))
    }
}

/// The process's start time (field 22 of `/proc/PID/stat`), which tells it
/// from a later process with the same PID.
fn start_time(pid: i32) -> Result<u64, DumpError> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    let bad = || DumpError::Parse {
        pid,
        path: path.clone().into(),
        message: "no start time".into(),
    };
    let rest = stat.rsplit_once(')').ok_or_else(bad)?.1;
    // After the comm: state is field 3, starttime field 22.
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)
}

/// Seizes and stops every thread of `host_pid`, threads created meanwhile
/// included. Dropping the tracees resumes them.
fn stop_all_threads(host_pid: i32) -> Result<Vec<Tracee>, DirtyError> {
    let inject = |source| DirtyError::Inject {
        pid: host_pid,
        source,
    };
    let pid = Pid::from_raw(host_pid);
    let mut tracees: Vec<Tracee> = Vec::new();
    loop {
        let mut new = false;
        for tid in list_threads(pid).map_err(inject)? {
            if !tracees.iter().any(|t| t.tid() == tid) {
                tracees.push(Tracee::seize_and_interrupt(tid).map_err(inject)?);
                new = true;
            }
        }
        for t in tracees.iter_mut() {
            t.wait_stop(Some(Duration::from_secs(10))).map_err(inject)?;
        }
        if !new {
            return Ok(tracees);
        }
    }
}

/// Makes `host_pid` create a userfaultfd and takes it: inject
/// `userfaultfd()` into its stopped main thread `tracee` through a
/// `syscall` instruction that is already there (the text is not patched),
/// `pidfd_getfd`, inject `close`.
fn take_userfaultfd(host_pid: i32, tracee: &mut Tracee) -> Result<OwnedFd, DirtyError> {
    let pid = Pid::from_raw(host_pid);
    let inject = |source| DirtyError::Inject {
        pid: host_pid,
        source,
    };
    let vdso = crate::inject::read_maps(pid)
        .map_err(inject)?
        .into_iter()
        .find(|m| m.path == "[vdso]")
        .map(|m| (m.start, m.end));
    let gadget = match vdso.map(|r| find_syscall_gadget(pid, Some(r))) {
        Some(Ok(at)) => at,
        _ => find_syscall_gadget(pid, None).map_err(inject)?,
    };
    let mut rs = RemoteSyscall::with_gadget(tracee, gadget);
    rs.set_timeout(Some(Duration::from_secs(10)));
    rs.take_userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY)
        .map_err(inject)
}

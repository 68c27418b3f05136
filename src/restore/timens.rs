//! Time namespaces at restore: each `TimeNamespace` record made again with
//! its offsets before any process enters it, and every process put back in
//! the namespace it was in.
//!
//! ```text
//! PID 1 (restorer), before the first husk      prepare()
//!   a namespace without a creator:              make(): unshare(CLONE_NEWTIME),
//!                                               offsets (below), keep
//!                                               ns/time_for_children
//!   then                                        setns(own time ns): its
//!                                               children are born in the
//!                                               host's again
//! each husk, before it forks its children       enter()
//!   its namespace is not the one it was born    setns(that namespace)
//!   into (its parent's time_for_children)
//!   it is the creator of a namespace            make(): its children are
//!                                               born in it
//!
//! make(), in the process that unshares          supervisor (wait_for_husks)
//!   unshare(CLONE_NEWTIME)
//!   0x02 "PID ID\n" on the report pipe ───────▶  write_offsets(): the
//!                                                 record's offsets to
//!                                                 /proc/HOST_PID/timens_offsets
//!   poll /proc/self/timens_offsets until
//!   it shows them (10 s at most)
//! ```
//!
//! The kernel takes offsets only from a writer with `CAP_SYS_TIME` over the
//! namespace (the opener of the file), which the container's processes and
//! the restorer (it has dropped the host capabilities) lack: the
//! supervisor, host root, writes them, while no task is in the namespace
//! yet, the only time the kernel takes them (later writes give EACCES). They are the recorded
//! ones, unchanged: the clocks inside keep their distance to the
//! container's clocks, which are the host's (cr makes no time namespace
//! for the container itself), so they advance over the checkpoint's pause
//! exactly as the container's own clocks do. The restorer's
//! descriptors of the namespaces are closed by each husk with its other
//! private descriptors. Which images can be restored this way is decided
//! by src/dump/timens.rs at checkpoint and checked again by [`check`].

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use std::time::{Duration, Instant};

use cr_formats::schema::{TimeNamespace, TimeOffset};
use nix::fcntl::{fcntl, FcntlArg};
use nix::sched::CloneFlags;

use crate::dump::timens::parse_offsets;
use crate::error::{Error, IoContext, Result};
use crate::restore::image::LoadedImage;
use crate::restore::tree::is_zombie;

/// The time namespace of image process `pid`: a record's id, `None` for
/// the host's.
fn time_of(image: &LoadedImage, pid: i32) -> Option<u32> {
    image
        .time_namespaces
        .iter()
        .find(|t| t.members.contains(&pid))
        .map(|t| t.id)
}

/// The namespace `pid`'s children are born in.
fn for_children_of(image: &LoadedImage, pid: i32) -> Option<u32> {
    image
        .time_namespaces
        .iter()
        .find(|t| t.creator == Some(pid))
        .map(|t| t.id)
        .or_else(|| time_of(image, pid))
}

/// The namespace `pid` is born in: its parent's children's (the host's
/// for the container's PID 1).
fn born_into(image: &LoadedImage, pid: i32) -> Option<u32> {
    if pid == 1 {
        return None;
    }
    let ppid = image.processes.get(&pid).map_or(1, |p| p.process.ppid);
    for_children_of(image, ppid)
}

/// Checks the records before anything is made: ids and members are
/// consistent and each process can be put back (see the module doc).
pub fn check(image: &LoadedImage) -> Result<()> {
    let refuse = |what: String| Error::Invalid(format!("cannot restore: {what}"));
    let live = |pid: i32| {
        image
            .processes
            .get(&pid)
            .is_some_and(|p| !is_zombie(&p.process))
    };
    let mut ids = HashSet::new();
    let mut placed = HashSet::new();
    for t in &image.time_namespaces {
        if !ids.insert(t.id) {
            return Err(refuse(format!("time namespace {} is recorded twice", t.id)));
        }
        if t.monotonic.nanos >= 1_000_000_000 || t.boottime.nanos >= 1_000_000_000 {
            return Err(refuse(format!(
                "time namespace {} has an offset of 1 s or more in its nanoseconds",
                t.id
            )));
        }
        if let Some(c) = t.creator.filter(|&c| !live(c) || t.members.contains(&c)) {
            return Err(refuse(format!(
                "time namespace {} is made by process {c}, which is no live process of the image outside it",
                t.id
            )));
        }
        for &m in &t.members {
            if !live(m) || !placed.insert(m) {
                return Err(refuse(format!(
                    "time namespace {} names process {m}, which is no live process of the image or is in two",
                    t.id
                )));
            }
        }
        if t.members.is_empty() && t.creator.is_none() {
            return Err(refuse(format!(
                "time namespace {} has neither a process in it nor one that made it",
                t.id
            )));
        }
    }
    for p in image.processes.values().filter(|p| !is_zombie(&p.process)) {
        let pid = p.process.pid;
        let Some(id) = time_of(image, pid) else {
            continue;
        };
        let creator = image
            .time_namespaces
            .iter()
            .find(|t| t.id == id)
            .and_then(|t| t.creator);
        if born_into(image, pid) != Some(id) && creator.is_some() {
            return Err(refuse(format!(
                "process {pid} is in time namespace {id}, made by process {}, without being born into it",
                creator.unwrap_or(0)
            )));
        }
    }
    Ok(())
}

/// The namespaces PID 1 made before the husks, and its own (the host's),
/// as descriptors every husk inherits.
pub struct TimeSpaces {
    host: Option<OwnedFd>,
    made: HashMap<u32, OwnedFd>,
}

fn moved_above(fd: OwnedFd, base: RawFd, what: &str) -> Result<OwnedFd> {
    let moved = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(base))
        .map_err(|e| Error::sys(format!("moving the descriptor of {what}"), e))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn open_ns(path: &str, base: RawFd) -> Result<OwnedFd> {
    let file = std::fs::File::open(path).ctx("opening", path)?;
    moved_above(file.into(), base, path)
}

/// The report pipe's byte that starts a request for offsets.
pub const REQUEST: u8 = 0x02;

/// `unshare(CLONE_NEWTIME)` in process `pid`, then the offsets of `t` in
/// the new namespace (its `time_for_children`), written by the supervisor
/// on a request over `report`, before any task is in it.
fn make(t: &TimeNamespace, pid: i32, report: RawFd) -> Result<()> {
    nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
        .map_err(|e| Error::sys(format!("making time namespace {} (unshare)", t.id), e))?;
    let want = (t.monotonic, t.boottime);
    let path = "/proc/self/timens_offsets";
    let read = || -> Result<(TimeOffset, TimeOffset)> {
        let text = std::fs::read_to_string(path).ctx("reading", path)?;
        parse_offsets(&text).map_err(|why| Error::Invalid(format!("{path}: {why}")))
    };
    if read()? == want {
        return Ok(()); // zero offsets: nothing to write
    }
    let line = format!("{}{pid} {}\n", REQUEST as char, t.id);
    // SAFETY: write from a live buffer to the report pipe.
    let rc = unsafe { libc::write(report, line.as_ptr().cast(), line.len()) };
    nix::errno::Errno::result(rc)
        .map_err(|e| Error::sys("asking the supervisor for the time offsets", e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = read()?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "time namespace {}: the offsets are {got:?} after 10 s, not {want:?}",
                t.id
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The supervisor's side of a request `PID ID` (after [`REQUEST`]): writes
/// the offsets of record `ID` to the `time_for_children` of the restored
/// process `PID`, which is `host_pid` on the host.
pub fn write_offsets(
    image: &LoadedImage,
    line: &str,
    host_pid: impl Fn(i32) -> Result<i32>,
) -> Result<()> {
    let bad = || {
        Error::Invalid(format!(
            "a bad time offsets request {line:?} from the restored tree"
        ))
    };
    let (pid, id) = line.split_once(' ').ok_or_else(bad)?;
    let pid: i32 = pid.parse().map_err(|_| bad())?;
    let id: u32 = id.parse().map_err(|_| bad())?;
    let t = image
        .time_namespaces
        .iter()
        .find(|t| t.id == id && (t.creator == Some(pid) || (t.creator.is_none() && pid == 1)))
        .ok_or_else(bad)?;
    let path = format!("/proc/{}/timens_offsets", host_pid(pid)?);
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .ctx("opening", &path)?;
    for (clock, o) in [("monotonic", t.monotonic), ("boottime", t.boottime)] {
        // One clock per write.
        f.write_all(format!("{clock} {} {}\n", o.secs, o.nanos).as_bytes())
            .ctx(
                &format!(
                    "writing the {clock} offset {}.{:09} s of time namespace {} to",
                    o.secs, o.nanos, t.id
                ),
                &path,
            )?;
    }
    Ok(())
}

fn join(fd: &OwnedFd, what: &str) -> Result<()> {
    nix::sched::setns(fd, CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
        .map_err(|e| Error::sys(format!("entering {what} (setns)"), e))
}

/// PID 1's side, before the first husk: makes every namespace that has no
/// creator and keeps descriptors of them and of its own, at or above
/// `base` (the restorer's private descriptors). Nothing when the image
/// has no time namespace.
pub fn prepare(image: &LoadedImage, base: RawFd, report: RawFd) -> Result<TimeSpaces> {
    let mut spaces = TimeSpaces {
        host: None,
        made: HashMap::new(),
    };
    if image.time_namespaces.is_empty() {
        return Ok(spaces);
    }
    let host = open_ns("/proc/self/ns/time", base)?;
    for t in image.time_namespaces.iter().filter(|t| t.creator.is_none()) {
        make(t, 1, report)?;
        let fd = open_ns("/proc/self/ns/time_for_children", base)?;
        spaces.made.insert(t.id, fd);
    }
    // Back to the host's namespace for the children (setns sets both).
    join(&host, "the container's time namespace")?;
    spaces.host = Some(host);
    Ok(spaces)
}

impl TimeSpaces {
    /// A husk's side, before it forks its children: into its recorded
    /// namespace if it was born into another, and its children's made
    /// again if it had made them one.
    pub fn enter(&self, image: &LoadedImage, pid: i32, report: RawFd) -> Result<()> {
        let want = time_of(image, pid);
        if want != born_into(image, pid) {
            let fd = match want {
                None => self.host.as_ref(),
                Some(id) => self.made.get(&id),
            }
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "process {pid}: time namespace {want:?} was not made before the husks"
                ))
            })?;
            join(fd, &format!("time namespace {want:?}"))
                .map_err(|e| Error::Invalid(format!("process {pid}: {e}")))?;
        }
        if let Some(t) = image
            .time_namespaces
            .iter()
            .find(|t| t.creator == Some(pid))
        {
            make(t, pid, report).map_err(|e| Error::Invalid(format!("process {pid}: {e}")))?;
        }
        Ok(())
    }
}

//! Checkpoint of event objects: eventfd, epoll, signalfd, timerfd and
//! inotify (their records are in `cr_formats::schema::event`; their rebuild
//! is `crate::restore::events`). fanotify is refused.
//!
//! ```text
//!   /proc/PID/fd/N      anon_inode:[eventfd] | [eventpoll] | [signalfd] |
//!                       [timerfd] | inotify | [fanotify]
//!   /proc/PID/fdinfo/N  eventfd-count / eventfd-semaphore     -> EventFd
//!                       tfd: lines + kcmp(KCMP_EPOLL_TFD)     -> Epoll items
//!                       sigmask                               -> SignalFd
//!                       clockid, ticks, it_value, ...         -> TimerFd
//!                       inotify wd: lines + open_by_handle_at -> Inotify watches
//! ```
//!
//! [`survey`] runs for every descriptor before the freeze and collects the
//! event objects once to find what cannot be moved (an epoll target that no
//! descriptor of the container refers to, an inotify watch whose inode has no
//! path, a fanotify group), so that the checkpoint is refused while the
//! container still runs. The registry entries in `files.rs` call the
//! `collect_*` functions again on the frozen container.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cr_formats::schema::{ByteString, EpollItem, FileKind, InotifyWatch, TimerFd};

use crate::dump::files::FdObject;
use crate::dump::procfs::{self, FdEntry};
use crate::dump::DumpError;

/// `/proc/PID/fd/N` targets of the kinds this module handles.
pub const EVENTFD: &str = "anon_inode:[eventfd]";
pub const EPOLL: &str = "anon_inode:[eventpoll]";
pub const SIGNALFD: &str = "anon_inode:[signalfd]";
pub const TIMERFD: &str = "anon_inode:[timerfd]";
pub const INOTIFY: &str = "anon_inode:inotify";
const FANOTIFY: &str = "anon_inode:[fanotify]";

/// `kcmp` types (linux/kcmp.h).
const KCMP_EPOLL_TFD: i32 = 7;

/// Checks, before the freeze, that the event object behind `entry` (if it
/// is one) can be moved; other descriptors pass.
pub fn survey(pid: i32, comm: &str, entry: &FdEntry) -> Result<(), DumpError> {
    let refuse = |what: String| DumpError::Unsupported {
        pid,
        comm: comm.to_string(),
        what: format!("fd {} is {what}", entry.fd),
    };
    match entry.target.as_str() {
        FANOTIFY => Err(refuse(
            "a fanotify group (anon_inode:[fanotify]); cr does not move fanotify marks \
             (they may watch whole mounts and filesystems and answer permission events)"
                .into(),
        )),
        EPOLL => collect_epoll(pid, entry).map(drop).map_err(refuse),
        INOTIFY => collect_inotify(pid, entry).map(drop).map_err(refuse),
        EVENTFD => collect_eventfd(entry).map(drop).map_err(refuse),
        SIGNALFD => collect_signalfd(entry).map(drop).map_err(refuse),
        TIMERFD => collect_timerfd(pid, entry).map(drop).map_err(refuse),
        _ => Ok(()),
    }
}

/// The registry's `collect` for each kind: a refusal names the fd.
pub fn collect(o: &FdObject) -> Result<FileKind, DumpError> {
    let result = match o.entry.target.as_str() {
        EVENTFD => collect_eventfd(o.entry),
        EPOLL => collect_epoll(o.pid, o.entry),
        SIGNALFD => collect_signalfd(o.entry),
        TIMERFD => collect_timerfd(o.pid, o.entry),
        INOTIFY => collect_inotify(o.pid, o.entry),
        other => Err(format!("{other} is not an event object")),
    };
    result.map_err(|what| {
        let comm = procfs::read_status(o.pid)
            .map(|s| s.name)
            .unwrap_or_default();
        DumpError::Unsupported {
            pid: o.pid,
            comm,
            what: format!("fd {} is {what}", o.entry.fd),
        }
    })
}

/// The value of an fdinfo line.
fn field<'a>(entry: &'a FdEntry, key: &str) -> Option<&'a str> {
    entry
        .info
        .extra
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(entry: &'a FdEntry, what: &str, key: &str) -> Result<&'a str, String> {
    field(entry, key).ok_or_else(|| format!("{what} whose fdinfo lacks {key:?}"))
}

/// `key:value` pairs of one fdinfo line such as
/// `5 events:       19 data:                5  pos:0 ino:58fd2 sdev:f`
/// (a key may stand alone with its value in the next word).
fn pairs(line: &str) -> HashMap<&str, &str> {
    let mut out = HashMap::new();
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        match word.split_once(':') {
            Some((key, "")) => {
                if let Some(value) = words.next() {
                    out.insert(key, value);
                }
            }
            Some((key, value)) => {
                out.insert(key, value);
            }
            None => {}
        }
    }
    out
}

fn hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s, 16).map_err(|_| format!("bad hex number {s:?}"))
}

fn parse_eventfd(entry: &FdEntry) -> Result<(u64, bool), String> {
    let count = hex_u64(required(entry, "an eventfd", "eventfd-count")?)?;
    let semaphore = match field(entry, "eventfd-semaphore") {
        Some("1") => true,
        Some("0") => false,
        Some(other) => return Err(format!("an eventfd with eventfd-semaphore {other:?}")),
        None => return Err("an eventfd whose fdinfo lacks eventfd-semaphore".into()),
    };
    Ok((count, semaphore))
}

fn collect_eventfd(entry: &FdEntry) -> Result<FileKind, String> {
    let (count, semaphore) = parse_eventfd(entry)?;
    Ok(FileKind::EventFd { count, semaphore })
}

fn collect_signalfd(entry: &FdEntry) -> Result<FileKind, String> {
    let mask = hex_u64(required(entry, "a signalfd", "sigmask")?)?;
    Ok(FileKind::SignalFd { mask })
}

/// `(seconds, nanoseconds)` as fdinfo prints a timespec.
fn timespec_ns(s: &str) -> Result<u64, String> {
    let bad = || format!("bad timespec {s:?}");
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(bad)?;
    let (sec, nsec) = inner.split_once(',').ok_or_else(bad)?;
    let sec: u64 = sec.trim().parse().map_err(|_| bad())?;
    let nsec: u64 = nsec.trim().parse().map_err(|_| bad())?;
    sec.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nsec))
        .ok_or_else(bad)
}

fn parse_timerfd(entry: &FdEntry) -> Result<TimerFd, String> {
    let what = "a timerfd";
    let clock = required(entry, what, "clockid")?;
    let ticks = required(entry, what, "ticks")?;
    let flags = required(entry, what, "settime flags")?;
    Ok(TimerFd {
        clock: clock
            .parse()
            .map_err(|_| format!("a timerfd with clockid {clock:?}"))?,
        settime_flags: u32::from_str_radix(flags, 8)
            .map_err(|_| format!("a timerfd with settime flags {flags:?}"))?,
        value_ns: timespec_ns(required(entry, what, "it_value")?)?,
        interval_ns: timespec_ns(required(entry, what, "it_interval")?)?,
        ticks: ticks
            .parse()
            .map_err(|_| format!("a timerfd with ticks {ticks:?}"))?,
        realtime_ns: 0,
    })
}

/// Makes the kernel bring an expired periodic timer up to date: fdinfo
/// shows it with no time left until its expiry is read or the timer is
/// queried. `timerfd_gettime` on a copy of the descriptor (`pidfd_getfd`)
/// moves it to its next expiry and counts the missed ones as ticks, exactly
/// as the process's own next read or query would.
fn settle_timer(pid: i32, fd: i32) -> Result<(), String> {
    let fail = |what: &str| {
        format!(
            "a timerfd, and {what} failed: {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: pidfd_open takes a pid and flags, returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(fail("pidfd_open"));
    }
    // SAFETY: pidfd_open just returned this fd; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes two fds and flags, returns a new fd or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(fail("pidfd_getfd"));
    }
    // SAFETY: pidfd_getfd just returned this fd; nothing else owns it.
    let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
    // SAFETY: all-zero is a valid itimerspec.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: timerfd_gettime writes into a live itimerspec.
    if unsafe { libc::timerfd_gettime(copy.as_raw_fd(), &mut spec) } < 0 {
        return Err(fail("timerfd_gettime"));
    }
    Ok(())
}

fn collect_timerfd(pid: i32, entry: &FdEntry) -> Result<FileKind, String> {
    settle_timer(pid, entry.fd)?;
    let path = format!("/proc/{pid}/fdinfo/{}", entry.fd);
    let text = fs::read_to_string(&path)
        .map_err(|e| format!("a timerfd, and reading {path} failed: {e}"))?;
    let fresh = FdEntry {
        fd: entry.fd,
        target: entry.target.clone(),
        info: procfs::parse_fdinfo(&text).map_err(|e| format!("a timerfd: {path}: {e}"))?,
    };
    let mut timer = parse_timerfd(&fresh)?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_err(|e| format!("a timerfd, and reading CLOCK_REALTIME failed: {e}"))?;
    timer.realtime_ns = (now.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec() as u64);
    Ok(FileKind::TimerFd(timer))
}

/// One `tfd:` line: (fd, events, data).
fn parse_epoll(entry: &FdEntry) -> Result<Vec<(i32, u32, u64)>, String> {
    let mut items = Vec::new();
    for (key, value) in &entry.info.extra {
        if key != "tfd" {
            continue;
        }
        let bad = || format!("an epoll with an fdinfo line it cannot read (tfd: {value})");
        let fd: i32 = value
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(bad)?;
        let p = pairs(value);
        let events = p
            .get("events")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let data = p
            .get("data")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        items.push((fd, events, data));
    }
    Ok(items)
}

#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// Whether fd `fd1` of `pid1` is the file that the `toff`-th item with fd
/// number `tfd` of epoll `efd` in `pid2` watches.
fn is_epoll_target(pid1: i32, fd1: i32, pid2: i32, efd: i32, tfd: i32, toff: u32) -> bool {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: kcmp only reads the slot, which lives until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_EPOLL_TFD,
            fd1,
            &slot as *const KcmpEpollSlot as usize,
        )
    };
    rc == 0
}

/// The descriptor numbers of `pid`.
fn fd_numbers(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// The other processes in the PID namespace of `pid`.
fn same_pid_ns(pid: i32) -> Vec<i32> {
    let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .filter(|p| *p != pid)
                .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).ok().as_ref() == Some(&ns))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The interest list, each target named by a descriptor of the container
/// found with kcmp: the item's own fd number first, then the other fds of
/// the process, then those of the other processes of its PID namespace.
fn collect_epoll(pid: i32, entry: &FdEntry) -> Result<FileKind, String> {
    let lines = parse_epoll(entry)?;
    let ns_pid = |p: i32| {
        procfs::read_status(p)
            .map(|s| s.pid_in_ns())
            .map_err(|e| format!("an epoll, and reading the status of process {p} failed: {e}"))
    };
    let own_pid = ns_pid(pid)?;
    let mut others: Option<Vec<i32>> = None;
    let mut seen: HashMap<i32, u32> = HashMap::new();
    let mut items = Vec::new();
    for (tfd, events, data) in lines {
        let toff = {
            let n = seen.entry(tfd).or_insert(0);
            *n += 1;
            *n - 1
        };
        let found = |p: i32, fds: &[i32]| {
            fds.iter()
                .copied()
                .find(|fd| is_epoll_target(p, *fd, pid, entry.fd, tfd, toff))
        };
        let mut target = None;
        if is_epoll_target(pid, tfd, pid, entry.fd, tfd, toff) {
            target = Some((own_pid, tfd));
        } else if let Some(fd) = found(pid, &fd_numbers(pid)) {
            target = Some((own_pid, fd));
        } else {
            for p in others.get_or_insert_with(|| same_pid_ns(pid)).iter() {
                if let Some(fd) = found(*p, &fd_numbers(*p)) {
                    target = Some((ns_pid(*p)?, fd));
                    break;
                }
            }
        }
        let (target_pid, target_fd) = target.ok_or_else(|| {
            format!(
                "an epoll watching a file added as fd {tfd} that no descriptor of the \
                 container refers to any more (it is held by something else, such as a \
                 mapping), which cr cannot move"
            )
        })?;
        items.push(EpollItem {
            fd: tfd,
            events,
            data,
            target_pid,
            target_fd,
        });
    }
    Ok(FileKind::Epoll { items })
}

/// One `inotify wd:` line.
#[derive(Debug, PartialEq, Eq)]
struct RawWatch {
    wd: i32,
    ino: u64,
    sdev: u32,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_inotify(entry: &FdEntry) -> Result<Vec<RawWatch>, String> {
    let mut watches = Vec::new();
    for (key, value) in &entry.info.extra {
        // `inotify wd:N ino:...` reads as key "inotify wd", value "N ino:...".
        if key != "inotify wd" {
            continue;
        }
        let bad = |what: &str| {
            format!("an inotify instance with an fdinfo line it cannot read ({what} in {value})")
        };
        let p = pairs(value);
        let hex32 = |k: &str| {
            p.get(k)
                .and_then(|v| u32::from_str_radix(v, 16).ok())
                .ok_or_else(|| bad(k))
        };
        let bytes = hex32("fhandle-bytes")? as usize;
        let text = p.get("f_handle").copied().unwrap_or("");
        if text.len() != bytes * 2 || !text.is_ascii() {
            return Err(bad("f_handle"));
        }
        let handle = (0..bytes)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad("f_handle"))?;
        watches.push(RawWatch {
            wd: value
                .split_whitespace()
                .next()
                .and_then(|w| i32::from_str_radix(w, 16).ok())
                .ok_or_else(|| bad("wd"))?,
            ino: p
                .get("ino")
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or_else(|| bad("ino"))?,
            sdev: hex32("sdev")?,
            mask: hex32("mask")?,
            handle_type: hex32("fhandle-type")? as i32,
            handle,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(watches)
}

/// The mount points (inside the container) of device `sdev` (the kernel's
/// encoding: major << 20 | minor) as process `pid` sees them, the ones that
/// show the whole filesystem first.
fn mounts_of(pid: i32, sdev: u32) -> Result<Vec<String>, String> {
    let dev = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
    let path = format!("/proc/{pid}/mountinfo");
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut mounts: Vec<(bool, String)> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (f.len() > 4 && f[2] == dev).then(|| (f[3] != "/", f[4].replace("\\040", " ")))
        })
        .collect();
    mounts.sort();
    if mounts.is_empty() {
        return Err(format!("no mount of device {dev} in the container"));
    }
    Ok(mounts.into_iter().map(|(_, point)| point).collect())
}

/// A descriptor of the container's mount at `point` (not `O_PATH`:
/// open_by_handle_at refuses those).
fn open_mount(pid: i32, point: &str) -> Result<OwnedFd, String> {
    let full = format!("/proc/{pid}/root{point}");
    let c = CString::new(full.clone()).map_err(|_| format!("mount point {full:?}"))?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "opening the mount {full}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Entries a search for a watched inode looks at, at most.
const SEARCH_LIMIT: usize = 200_000;

/// Finds the inode of a watch by walking its filesystem breadth first from
/// the container's mount of it (for filesystems whose file handles cannot
/// be opened, such as overlayfs without `nfs_export`). Other mounts are not
/// entered.
fn search_inode(pid: i32, point: &str, w: &RawWatch) -> Result<ByteString, String> {
    use std::os::unix::fs::MetadataExt;
    let same_dev = |m: &fs::Metadata| {
        libc::major(m.dev()) == w.sdev >> 20 && libc::minor(m.dev()) == w.sdev & 0xf_ffff
    };
    let base = format!("/proc/{pid}/root");
    let mut queue = std::collections::VecDeque::from([point.trim_end_matches('/').to_string()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        let here = if dir.is_empty() { "/" } else { dir.as_str() };
        let meta = fs::symlink_metadata(format!("{base}{here}"));
        if let Ok(m) = &meta {
            if m.ino() == w.ino && same_dev(m) {
                return Ok(ByteString::from(here));
            }
        }
        let Ok(entries) = fs::read_dir(format!("{base}{here}")) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > SEARCH_LIMIT {
                return Err(format!(
                    "its inode {} was not found in the first {SEARCH_LIMIT} entries under {point}",
                    w.ino
                ));
            }
            let Ok(m) = entry.metadata() else { continue };
            if !same_dev(&m) {
                continue;
            }
            let path = format!("{dir}/{}", entry.file_name().to_string_lossy());
            if m.ino() == w.ino {
                return Ok(ByteString::from(path.as_str()));
            }
            if m.is_dir() {
                queue.push_back(path);
            }
        }
    }
    Err(format!("its inode {} is not under {point}", w.ino))
}

/// The path inside the container of the inode a watch is on: the file
/// handle from fdinfo opened on a mount of the container, then read back
/// from /proc/self/fd (which shows it relative to the container's root);
/// where the filesystem cannot open handles, a search by inode number.
fn watch_path(pid: i32, w: &RawWatch) -> Result<ByteString, String> {
    let points = mounts_of(pid, w.sdev)?;
    match by_handle(pid, &points[0], w) {
        Ok(path) => Ok(path),
        Err(handle_error) => {
            search_inode(pid, &points[0], w).map_err(|e| format!("{handle_error}, and {e}"))
        }
    }
}

/// [`watch_path`] through the watch's file handle.
fn by_handle(pid: i32, point: &str, w: &RawWatch) -> Result<ByteString, String> {
    let mount = open_mount(pid, point)?;
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let mut buf = Vec::with_capacity(8 + w.handle.len());
    buf.extend_from_slice(&(w.handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&w.handle_type.to_ne_bytes());
    buf.extend_from_slice(&w.handle);
    // Keep the buffer aligned for the kernel's struct.
    let mut aligned = vec![0u32; buf.len().div_ceil(4)];
    // SAFETY: `aligned` holds at least buf.len() bytes; the regions differ.
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), buf.len())
    };
    // SAFETY: open_by_handle_at reads a file_handle of the size it states,
    // which the buffer holds; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            aligned.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "opening its inode by handle: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open_by_handle_at just returned this fd; nothing else owns it.
    let file = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("reading its path: {e}"))?;
    let path = link.to_string_lossy().into_owned();
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return Err(format!("it has no path ({path})"));
    }
    Ok(ByteString(
        std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()).to_vec(),
    ))
}

fn collect_inotify(pid: i32, entry: &FdEntry) -> Result<FileKind, String> {
    let mut watches = Vec::new();
    for w in parse_inotify(entry)? {
        let path = watch_path(pid, &w).map_err(|e| {
            format!(
                "an inotify instance whose watch {} (inode on device {}:{}) cannot be moved: {e}",
                w.wd,
                w.sdev >> 20,
                w.sdev & 0xf_ffff
            )
        })?;
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask,
        });
    }
    Ok(FileKind::Inotify { watches })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::procfs::parse_fdinfo;

    fn entry(target: &str, text: &str) -> FdEntry {
        FdEntry {
            fd: 3,
            target: target.into(),
            info: parse_fdinfo(text).unwrap(),
        }
    }

    #[test]
    fn eventfd_fields() {
        let e = entry(
            EVENTFD,
            "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1039\neventfd-count:               1f\neventfd-id: 1\neventfd-semaphore: 1\n",
        );
        assert_eq!(parse_eventfd(&e).unwrap(), (31, true));
        let e = entry(EVENTFD, "eventfd-count: 0\n");
        assert!(parse_eventfd(&e).is_err());
    }

    #[test]
    fn epoll_lines() {
        let e = entry(
            EPOLL,
            "pos:\t0\nflags:\t02000002\ntfd:        5 events:       19 data:                5  pos:0 ino:58fd2 sdev:f\ntfd:        3 events: 80000019 data: ffffffffffffffff  pos:0 ino:40f sdev:10\n",
        );
        assert_eq!(
            parse_epoll(&e).unwrap(),
            vec![(5, 0x19, 5), (3, 0x8000_0019, u64::MAX)]
        );
    }

    #[test]
    fn timerfd_fields() {
        let e = entry(
            TIMERFD,
            "clockid: 1\nticks: 3\nsettime flags: 01\nit_value: (99, 999243390)\nit_interval: (2, 500)\n",
        );
        let t = parse_timerfd(&e).unwrap();
        assert_eq!(t.clock, 1);
        assert_eq!(t.ticks, 3);
        assert_eq!(t.settime_flags, 1);
        assert_eq!(t.value_ns, 99_999_243_390);
        assert_eq!(t.interval_ns, 2_000_000_500);
    }

    #[test]
    fn inotify_lines() {
        let e = entry(
            INOTIFY,
            "inotify wd:2 ino:12402b sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b401200deb109f6\ninotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n",
        );
        let w = parse_inotify(&e).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].wd, 1);
        assert_eq!(w[0].mask, 0x300);
        assert_eq!(w[0].sdev, 0xfe0_0000);
        assert_eq!(
            w[1].handle,
            vec![0x2b, 0x40, 0x12, 0, 0xde, 0xb1, 0x09, 0xf6]
        );
        let bad = entry(
            INOTIFY,
            "inotify wd:1 sdev:1 mask:2 fhandle-bytes:8 fhandle-type:1 f_handle:2b\n",
        );
        assert!(parse_inotify(&bad).is_err());
    }

    #[test]
    fn signalfd_mask() {
        let e = entry(SIGNALFD, "sigmask:\t0000000000004200\n");
        assert_eq!(
            collect_signalfd(&e).unwrap(),
            FileKind::SignalFd { mask: 0x4200 }
        );
    }
}

//! Restore of event objects: eventfd, epoll, signalfd, timerfd and inotify
//! (collected by `crate::dump::events`; records in
//! `cr_formats::schema::event`).
//!
//! PID 1 of the restore creates them in the container's namespaces while it
//! opens the image's file table (`tree::open_table`), before any process is
//! forked, so they are inherited and shared like any other file:
//!
//! ```text
//!   open_table:  every file of the image, eventfd / signalfd / timerfd /
//!                inotify created here ([`create`]), each epoll created empty
//!   then         fill_epolls: every interest list, now that every file it
//!                may watch exists (pipes, files, other epolls...)
//! ```
//!
//! The kernel keys an epoll item by (file, fd number): the item is added
//! with the fd number the process had used, by placing the target file at
//! that number for the `EPOLL_CTL_ADD` and putting back whatever was there.
//!
//! What comes back and what does not:
//! * eventfd: counter, `EFD_SEMAPHORE`, `O_NONBLOCK`.
//! * epoll: each item's events (with `EPOLLET`, `EPOLLONESHOT`,
//!   `EPOLLEXCLUSIVE`) and data. Readiness is re-evaluated when the item is
//!   added: a level-triggered item ready at checkpoint is ready again; an
//!   edge-triggered item whose target is ready reports one edge after
//!   restore even if the process had already consumed it.
//!   `EPOLLWAKEUP` is dropped by the kernel without `CAP_BLOCK_SUSPEND`.
//! * signalfd: mask and flags (pending signals belong to the process).
//! * timerfd: clock, interval, unread ticks (`TFD_IOC_SET_TICKS`) and the
//!   settime flags. A `CLOCK_MONOTONIC` or `CLOCK_BOOTTIME` timer (relative
//!   or absolute) keeps the time it had left at checkpoint: the time the
//!   container spent checkpointed does not count. An absolute
//!   `CLOCK_REALTIME` timer keeps its wall-clock deadline: if that passed
//!   while the container was checkpointed it fires at once (periodic ones
//!   count the missed intervals as ticks). A relative `CLOCK_REALTIME` timer
//!   keeps the time it had left, like a monotonic one.
//! * inotify: each watch on its path (inside the container) with its mask
//!   and its watch descriptor number. Events still queued at checkpoint are
//!   dropped: the watches are re-armed, so changes made after the
//!   checkpoint are reported, but those made before it and not yet read are
//!   lost.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use cr_formats::schema::{EpollItem, FileKind, InotifyWatch, TimerFd};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::error::{Error, Result};
use crate::restore::image::{LoadedImage, ProcessImage};
use crate::restore::tree::FIRST_PRIVATE_FD;

/// `TFD_IOC_SET_TICKS` = `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// Whether restore creates files of this kind here.
pub fn handles(kind: &FileKind) -> bool {
    matches!(
        kind,
        FileKind::EventFd { .. }
            | FileKind::Epoll { .. }
            | FileKind::SignalFd { .. }
            | FileKind::TimerFd(_)
            | FileKind::Inotify { .. }
    )
}

/// Checks the event objects of process `p` before anything is built.
pub fn check(image: &LoadedImage, p: &ProcessImage) -> std::result::Result<(), String> {
    // The restorer's own descriptors start here; an item is placed at its
    // fd number for a moment while it is added.
    let private = crate::restore::tree::private_fds(image);
    for fd in &p.fds {
        let Some(file) = image.files.get(&fd.file) else {
            continue;
        };
        if let FileKind::Epoll { items } = &file.kind {
            for item in items {
                if !(0..private).contains(&item.fd) {
                    return Err(format!(
                        "fd {} is an epoll with an item added as fd {}, at or above {private} where the restorer keeps its own descriptors, which restore does not handle yet",
                        fd.fd, item.fd
                    ));
                }
                let target = target_file(image, item).map_err(|e| format!("fd {}: {e}", fd.fd))?;
                if target == file.id {
                    return Err(format!("fd {} is an epoll that watches itself", fd.fd));
                }
            }
        }
    }
    Ok(())
}

/// The file id an epoll item watches.
fn target_file(image: &LoadedImage, item: &EpollItem) -> std::result::Result<u64, String> {
    image
        .processes
        .get(&item.target_pid)
        .and_then(|p| p.fds.iter().find(|f| f.fd == item.target_fd))
        .map(|f| f.file)
        .ok_or_else(|| {
            format!(
                "an epoll item (fd {}) names fd {} of process {} as its target, which the image lacks",
                item.fd, item.target_fd, item.target_pid
            )
        })
}

/// Creates the object of `kind` (an epoll without its items, which
/// [`fill_epolls`] adds); `flags` are the file's `O_*` flags.
pub fn create(kind: &FileKind, flags: OFlag) -> Result<RawFd> {
    let nonblock = flags.contains(OFlag::O_NONBLOCK);
    match kind {
        FileKind::EventFd { count, semaphore } => eventfd(*count, *semaphore, nonblock),
        FileKind::Epoll { .. } => {
            // SAFETY: epoll_create1 takes a flag and returns a new fd.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            Errno::result(fd).map_err(|e| Error::sys("creating an epoll", e))
        }
        FileKind::SignalFd { mask } => signalfd(*mask, nonblock),
        FileKind::TimerFd(t) => timerfd(t, nonblock),
        FileKind::Inotify { watches } => inotify(watches, nonblock),
        other => Err(Error::Invalid(format!("{other:?} is not an event object"))),
    }
}

fn eventfd(count: u64, semaphore: bool, nonblock: bool) -> Result<RawFd> {
    let mut flags = libc::EFD_CLOEXEC;
    if semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    if nonblock {
        flags |= libc::EFD_NONBLOCK;
    }
    // SAFETY: eventfd takes an initial value and flags, returns a new fd.
    let fd = unsafe { libc::eventfd(0, flags) };
    let fd = Errno::result(fd).map_err(|e| Error::sys("creating an eventfd", e))?;
    if count > 0 {
        // The initial value of eventfd(2) is 32 bits; a write sets all 64.
        let bytes = count.to_ne_bytes();
        // SAFETY: writing 8 bytes from a live buffer to our eventfd.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if let Err(e) = Errno::result(n) {
            // SAFETY: closing the fd created above.
            unsafe { libc::close(fd) };
            return Err(Error::sys(
                format!("setting an eventfd's counter to {count}"),
                e,
            ));
        }
    }
    Ok(fd)
}

fn signalfd(mask: u64, nonblock: bool) -> Result<RawFd> {
    let mut flags = libc::SFD_CLOEXEC;
    if nonblock {
        flags |= libc::SFD_NONBLOCK;
    }
    // SAFETY: signalfd4 reads an 8-byte kernel sigset from a live u64.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    };
    Errno::result(fd)
        .map(|fd| fd as RawFd)
        .map_err(|e| Error::sys(format!("creating a signalfd for mask {mask:#x}"), e))
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn now_ns(clock: libc::clockid_t) -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a live timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    Errno::result(rc).map_err(|e| Error::sys(format!("reading clock {clock}"), e))?;
    Ok((ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64))
}

/// The `it_value` to set: see the module documentation for the rule.
fn timer_value(t: &TimerFd) -> Result<u64> {
    if t.value_ns == 0 || t.settime_flags & libc::TFD_TIMER_ABSTIME as u32 == 0 {
        return Ok(t.value_ns);
    }
    let wall = matches!(t.clock, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM);
    if wall {
        Ok(t.realtime_ns.saturating_add(t.value_ns))
    } else {
        // The alarm variant of CLOCK_BOOTTIME reads as CLOCK_BOOTTIME.
        let clock = if t.clock == libc::CLOCK_BOOTTIME_ALARM {
            libc::CLOCK_BOOTTIME
        } else {
            t.clock
        };
        Ok(now_ns(clock)?.saturating_add(t.value_ns))
    }
}

fn timerfd(t: &TimerFd, nonblock: bool) -> Result<RawFd> {
    let mut flags = libc::TFD_CLOEXEC;
    if nonblock {
        flags |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create takes a clock id and flags, returns a new fd.
    let fd = unsafe { libc::timerfd_create(t.clock, flags) };
    let fd = Errno::result(fd)
        .map_err(|e| Error::sys(format!("creating a timerfd on clock {}", t.clock), e))?;
    let set = || -> Result<()> {
        if t.value_ns != 0 || t.interval_ns != 0 {
            let spec = libc::itimerspec {
                it_interval: timespec(t.interval_ns),
                it_value: timespec(timer_value(t)?),
            };
            // SAFETY: timerfd_settime reads a live itimerspec; no old value.
            let rc = unsafe {
                libc::timerfd_settime(fd, t.settime_flags as i32, &spec, std::ptr::null_mut())
            };
            Errno::result(rc).map_err(|e| Error::sys("arming a timerfd", e))?;
        }
        if t.ticks > 0 {
            // SAFETY: TFD_IOC_SET_TICKS reads a u64 from a live variable.
            let rc = unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &t.ticks as *const u64) };
            Errno::result(rc)
                .map_err(|e| Error::sys(format!("setting {} unread timerfd ticks", t.ticks), e))?;
        }
        Ok(())
    };
    if let Err(e) = set() {
        // SAFETY: closing the fd created above.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

fn c_path(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Error::Invalid(format!("path {path:?} contains a NUL byte")))
}

/// An inotify instance with `watches` under their own watch descriptors.
/// The kernel hands out descriptors in increasing order; a gap is skipped by
/// adding and removing a watch on a path none of them is on, and the
/// `IN_IGNORED` events that leaves are read away.
fn inotify(watches: &[InotifyWatch], nonblock: bool) -> Result<RawFd> {
    // SAFETY: inotify_init1 takes flags and returns a new fd.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    let fd = Errno::result(fd).map_err(|e| Error::sys("creating an inotify instance", e))?;
    match add_watches(fd, watches, nonblock) {
        Ok(()) => Ok(fd),
        Err(e) => {
            // SAFETY: closing the fd created above.
            unsafe { libc::close(fd) };
            Err(e)
        }
    }
}

fn add_watches(fd: RawFd, watches: &[InotifyWatch], nonblock: bool) -> Result<()> {
    let mut sorted: Vec<&InotifyWatch> = watches.iter().collect();
    sorted.sort_by_key(|w| w.wd);
    let mut watched = Vec::new();
    for w in &sorted {
        if let Ok(m) = std::fs::metadata(w.path.to_string()) {
            watched.push((m.dev(), m.ino()));
        }
    }
    let mut filler = None;
    let mut skipped = false;
    let mut next = 1;
    for w in sorted {
        let path = w.path.to_string();
        while next < w.wd {
            let dummy = match &filler {
                Some(p) => p,
                None => filler.insert(filler_path(&watched).ok_or_else(|| {
                    Error::Invalid(format!(
                        "no path to skip inotify watch descriptor {next} with"
                    ))
                })?),
            };
            let c = c_path(dummy)?;
            // SAFETY: inotify_add_watch with a NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_ATTRIB) };
            let wd = Errno::result(wd)
                .map_err(|e| Error::sys(format!("skipping inotify watch descriptor {next}"), e))?;
            // SAFETY: removing the watch just added.
            unsafe { libc::inotify_rm_watch(fd, wd) };
            skipped = true;
            next = wd + 1;
        }
        let c = c_path(&path)?;
        // SAFETY: inotify_add_watch with a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), w.mask) };
        let wd = Errno::result(wd)
            .map_err(|e| Error::sys(format!("watching {path} with inotify"), e))?;
        if wd != w.wd {
            return Err(Error::Invalid(format!(
                "inotify gave watch descriptor {wd} for {path}, which had {}",
                w.wd
            )));
        }
        next = wd + 1;
    }
    if skipped {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a live buffer until the queue is empty.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
    if !nonblock {
        // SAFETY: F_SETFL on our own fd.
        unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
    }
    Ok(())
}

/// A path whose inode none of the watches is on.
fn filler_path(watched: &[(u64, u64)]) -> Option<String> {
    ["/", "/dev", "/proc", "/tmp", "/etc", "/sys"]
        .iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| !watched.contains(&(m.dev(), m.ino()))))
        .map(|p| p.to_string())
}

/// Adds every epoll's items, once every file of `table` (file id -> fd)
/// exists. Called by PID 1 before it forks.
pub fn fill_epolls(image: &LoadedImage, table: &HashMap<u64, RawFd>) -> Result<()> {
    let mut ids: Vec<_> = image.files.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let FileKind::Epoll { items } = &image.files[&id].kind else {
            continue;
        };
        // The table may overlap the numbers items were added as
        // (restore::tree::table_start): the epoll is worked on through a
        // copy above all of them, never displaced by an item.
        let private = crate::restore::tree::private_fds(image);
        // SAFETY: F_DUPFD_CLOEXEC duplicates the epoll's table fd.
        let copy = unsafe { libc::fcntl(table[&id], libc::F_DUPFD_CLOEXEC, private) };
        let copy = Errno::result(copy).map_err(|e| Error::sys("copying an epoll fd", e))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this fd; nothing else owns it.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        let epfd = copy.as_raw_fd();
        // Disarmed one-shot items first, while nothing else can be reported.
        let (disarmed, armed): (Vec<&EpollItem>, Vec<&EpollItem>) =
            items.iter().partition(|i| is_disarmed(i.events));
        for item in disarmed.into_iter().chain(armed) {
            let target = target_file(image, item).map_err(Error::Invalid)?;
            let src = *table.get(&target).ok_or_else(|| {
                Error::Invalid(format!("epoll item target file {target} was not opened"))
            })?;
            let failed = |e| {
                Error::sys(
                    format!(
                        "adding fd {} (events {:#x}) to an epoll",
                        item.fd, item.events
                    ),
                    e,
                )
            };
            if is_disarmed(item.events) {
                add_disarmed(epfd, src, item).map_err(failed)?;
            } else {
                add_item(epfd, src, item).map_err(failed)?;
            }
        }
    }
    Ok(())
}

/// Flag bits of an epoll item (the kernel's `EP_PRIVATE_BITS`): all a
/// one-shot item keeps once it has fired.
const PRIVATE_BITS: u32 =
    (libc::EPOLLWAKEUP | libc::EPOLLONESHOT | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32;

fn is_disarmed(events: u32) -> bool {
    events & libc::EPOLLONESHOT as u32 != 0 && events & !PRIVATE_BITS == 0
}

/// A one-shot item that had fired: `EPOLL_CTL_ADD` always arms
/// `EPOLLERR | EPOLLHUP`, so it is added listening for every event and
/// reported once here, which disarms it as it was. If its target is not
/// ready now, it stays armed for `EPOLLERR | EPOLLHUP` only.
fn add_disarmed(epfd: RawFd, src: RawFd, item: &EpollItem) -> std::result::Result<(), Errno> {
    let all = (libc::EPOLLIN
        | libc::EPOLLOUT
        | libc::EPOLLPRI
        | libc::EPOLLRDHUP
        | libc::EPOLLRDNORM
        | libc::EPOLLRDBAND
        | libc::EPOLLWRNORM
        | libc::EPOLLWRBAND) as u32;
    let mut listening = *item;
    listening.events |= all;
    add_item(epfd, src, &listening)?;
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 16];
    let mut fired = false;
    loop {
        // SAFETY: epoll_wait writes at most out.len() events into `out`.
        let n = unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), out.len() as i32, 0) };
        let n = Errno::result(n)? as usize;
        fired |= out[..n].iter().any(|e| {
            let data = e.u64;
            data == item.data
        });
        if n < out.len() {
            break;
        }
    }
    if !fired {
        let mut event = libc::epoll_event {
            events: item.events,
            u64: item.data,
        };
        // EPOLL_CTL_MOD names the item by the fd number it was added with.
        let rc = with_fd_at(src, item.fd, |n| {
            // SAFETY: epoll_ctl reads a live epoll_event.
            Errno::result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, n, &mut event) })
                .map(drop)
        });
        rc?;
    }
    Ok(())
}

/// `EPOLL_CTL_ADD` of the file at `src` under fd number `item.fd`.
fn add_item(epfd: RawFd, src: RawFd, item: &EpollItem) -> std::result::Result<(), Errno> {
    let mut event = libc::epoll_event {
        events: item.events,
        u64: item.data,
    };
    with_fd_at(src, item.fd, |n| {
        // SAFETY: epoll_ctl reads a live epoll_event.
        Errno::result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, n, &mut event) })
            .map(drop)
    })
}

/// Runs `f` with the file at `src` placed at fd number `n`, then puts back
/// whatever was at `n` (or closes it).
fn with_fd_at(
    src: RawFd,
    n: RawFd,
    f: impl FnOnce(RawFd) -> std::result::Result<(), Errno>,
) -> std::result::Result<(), Errno> {
    if src == n {
        // The table's copy is already at that number (the table may
        // overlap the processes' numbers: restore::tree::table_start).
        return f(n);
    }
    // SAFETY: fcntl on an fd number of this process; a copy of whatever is
    // at `n` is kept above FIRST_PRIVATE_FD to be put back below.
    let (saved, saved_flags) = unsafe {
        let flags = libc::fcntl(n, libc::F_GETFD);
        if flags >= 0 {
            let saved = libc::fcntl(n, libc::F_DUPFD_CLOEXEC, FIRST_PRIVATE_FD);
            (Errno::result(saved)?, flags)
        } else {
            (-1, 0)
        }
    };
    // SAFETY: dup3 between two fds of this process.
    let placed = Errno::result(unsafe { libc::dup3(src, n, libc::O_CLOEXEC) });
    let result = placed.and_then(|_| f(n));
    // SAFETY: puts back (or closes) fd `n` as it was before.
    unsafe {
        if saved >= 0 {
            let cloexec = if saved_flags & libc::FD_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            libc::dup3(saved, n, cloexec);
            libc::close(saved);
        } else {
            libc::close(n);
        }
    }
    result
}

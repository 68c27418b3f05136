//! Rebuilding a container's process tree.
//!
//! Two sides, in two processes:
//!
//! ```text
//! PID 1 (restorer code, in the container's        supervisor (host side)
//! namespaces, after pivot_root)
//! open every file of the image at fds >= base +
//!   100 (base: above the image's highest fd),
//! create every pipe and refill it
//! become(1):
//!   setsid/setpgid as recorded
//!   clone3(set_tid = [child pid]) for each
//!   child, which runs become(child) itself
//!   dup3 its files to their recorded numbers,
//!   close everything else
//!   write 'H' to the report pipe ──────────────▶  count one 'H' per process
//!   pause() forever (a husk)                      seize + interrupt every husk
//!                                                 (PTRACE_O_TRACECLONE)
//!                                                 rebuild each (restore::process:
//!                                                 its other threads by clone3
//!                                                 with their TIDs, memory,
//!                                                 registers, signal state)
//!                                                 detach every thread: the
//!                                                 container runs on
//! ```
//!
//! A descriptor shared by several processes (the same open file, after dup
//! or fork) is opened once before the first clone and inherited, so offsets
//! and flags stay shared as they were. What a husk cannot set up is
//! reported on the report pipe as a message instead of 'H'.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use cr_formats::schema::{FileKind, FileLock, LockKind, LockMode, PipeEnd, VmaKind};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::container::cgroups::ContainerCgroup;
use crate::dump::procfs;
use crate::error::{Error, Result};
use crate::inject::{RemoteSyscall, SeizeOptions, Tracee};
use crate::restore::events;
use crate::restore::image::LoadedImage;
use crate::restore::lazy::{self, FillGate};
use crate::restore::process::{finish, prepare_with};
use crate::restore::shmem::{self, SharedObjects};
use crate::restore::timens;
use crate::restore::RestoreOptions;

/// The restorer's own fds live at or above [`private_fds`], never below this.
pub const FIRST_PRIVATE_FD: RawFd = 900;
/// The files of the image are parked this far above the first private fd
/// before they are handed out.
const TABLE_OFFSET: RawFd = 100;

/// Where the restorer's own descriptors start: above every descriptor of
/// every process of the image (and never below [`FIRST_PRIVATE_FD`]), so
/// that placing an image fd never clobbers one of them.
pub fn private_fds(image: &LoadedImage) -> RawFd {
    image
        .processes
        .values()
        .flat_map(|p| p.fds.iter().map(|f| f.fd.saturating_add(1)))
        .max()
        .unwrap_or(0)
        .max(FIRST_PRIVATE_FD)
}

/// `SCHED_RESET_ON_FORK`, or-ed into a policy.
const SCHED_RESET_ON_FORK: u32 = 0x4000_0000;

/// Checks what this restore can rebuild, before anything is created.
pub fn check(image: &LoadedImage) -> Result<()> {
    timens::check(image)?;
    if image.config.userns.is_some() {
        shmem::check_userns(image)
            .map_err(|what| Error::Invalid(format!("cannot restore: {what}")))?;
    }
    for p in image.processes.values() {
        let pid = p.process.pid;
        let comm = &p.process.comm;
        let refuse =
            |what: String| Error::Invalid(format!("cannot restore process {pid} ({comm}): {what}"));
        if let cr_formats::schema::TaskState::Zombie { .. } = p.process.state {
            let parent = image.processes.get(&p.process.ppid);
            if pid == 1 || parent.is_none_or(|q| is_zombie(&q.process)) {
                return Err(refuse(format!(
                    "it is a zombie whose parent {} is not a live process of the image",
                    p.process.ppid
                )));
            }
            if !p.threads.is_empty() || !p.fds.is_empty() || !p.vmas.is_empty() {
                return Err(refuse(
                    "it is a zombie but has threads, descriptors or mappings".into(),
                ));
            }
            continue;
        }
        if !p.threads.iter().any(|t| t.tid == pid) {
            return Err(refuse(format!(
                "none of its {} threads is its thread group leader",
                p.threads.len()
            )));
        }
        if let cr_formats::schema::TaskState::Stopped { signo } = p.process.state {
            if ![libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].contains(&signo) {
                return Err(refuse(format!(
                    "it is stopped by signal {signo}, which is no stop signal"
                )));
            }
        }
        // SCHED_FIFO and SCHED_RR need a real-time budget that the
        // container's cpu cgroup does not get yet.
        if let Some(t) = p.threads.iter().find(|t| {
            ![libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE]
                .contains(&((t.sched.policy & !SCHED_RESET_ON_FORK) as i32))
        }) {
            return Err(refuse(format!(
                "thread {} has real-time scheduling policy {}; only SCHED_OTHER, SCHED_BATCH and SCHED_IDLE are restored",
                t.tid, t.sched.policy
            )));
        }
        for fd in &p.fds {
            if fd.fd < 0 {
                return Err(refuse(format!("it has a negative fd number {}", fd.fd)));
            }
            let file = image.files.get(&fd.file).ok_or_else(|| {
                refuse(format!(
                    "fd {} names file {} that the image lacks",
                    fd.fd, fd.file
                ))
            })?;
            match &file.kind {
                FileKind::Memfd { id, .. } if !image.shmem.contains_key(id) => {
                    return Err(refuse(format!(
                        "fd {} is memfd {id}, whose contents the image lacks",
                        fd.fd
                    )));
                }
                FileKind::Deleted { id, .. } if !image.deleted.contains_key(id) => {
                    return Err(refuse(format!(
                        "fd {} is deleted file {id}, whose contents the image lacks",
                        fd.fd
                    )));
                }
                FileKind::Mqueue { name } if !image.ipc.mqueues.iter().any(|q| &q.name == name) => {
                    return Err(refuse(format!(
                        "fd {} is POSIX message queue /{name}, which the image lacks",
                        fd.fd
                    )));
                }
                _ => {}
            }
        }
        for v in &p.vmas {
            let missing = match &v.kind {
                VmaKind::Shmem { id } | VmaKind::Memfd { id, .. } => !image.shmem.contains_key(id),
                VmaKind::SysvShm { shmid } => !image.ipc.shm.iter().any(|s| {
                    s.perm.id == *shmid && v.end - v.start == s.size.div_ceil(4096) * 4096
                }),
                VmaKind::File { path, dev, ino } if path.as_bytes().ends_with(b" (deleted)") => {
                    !image
                        .deleted
                        .values()
                        .any(|d| d.dev == *dev && d.ino == *ino)
                }
                _ => false,
            };
            if missing {
                return Err(refuse(format!(
                    "the mapping {:#x}-{:#x} ({:?}) names an object whose contents the image lacks",
                    v.start, v.end, v.kind
                )));
            }
        }
        events::check(image, p).map_err(refuse)?;
        for lock in image.locks.iter().filter(|l| l.pid == pid) {
            if lock.kind != LockKind::Posix {
                continue;
            }
            if !p.fds.iter().any(|f| f.file == lock.file) {
                return Err(refuse(format!(
                    "it holds a POSIX lock on file {} through no descriptor",
                    lock.file
                )));
            }
            // The rebuild opens and closes every mapped file in the process,
            // and closing any descriptor of a file drops its POSIX locks.
            if let Some(FileKind::Regular { path, .. }) =
                image.files.get(&lock.file).map(|f| &f.kind)
            {
                if p.vmas
                    .iter()
                    .any(|v| matches!(&v.kind, VmaKind::File { path: mp, .. } if mp == path))
                {
                    return Err(refuse(format!(
                        "it holds a POSIX lock on {path}, which it also maps; restoring that is not supported yet"
                    )));
                }
            }
        }
    }
    crate::restore::unix::check(image)?;
    Ok(())
}

/// Whether a process of the image is a zombie (exited, not reaped).
pub fn is_zombie(p: &cr_formats::schema::Process) -> bool {
    matches!(p.state, cr_formats::schema::TaskState::Zombie { .. })
}

/// PID 1's side: builds the tree of husks. Only returns on error.
pub fn husk_main(image: &LoadedImage, report: &OwnedFd) -> Result<Infallible> {
    crate::restore::mounts::set_uts(image)?;
    let base = private_fds(image);
    let table_fd = table_start(image, base, raise_nofile()?)?;
    let moved = fcntl(report, FcntlArg::F_DUPFD_CLOEXEC(base))
        .map_err(|e| Error::sys("moving the report pipe", e))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    let report = unsafe { OwnedFd::from_raw_fd(moved) };
    let times = timens::prepare(image, base, report.as_raw_fd())?;
    let deleted = shmem::create_deleted(image)?;
    let mut kinds = KindTimes::default();
    let table = match open_table(image, &deleted, table_fd, &mut kinds) {
        Ok(table) => table,
        Err(e) => {
            for path in deleted.values() {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    // The supervisor adds them to its `restore phases` line.
    let note = format!("{}{}\n", NOTE as char, kinds.render());
    // SAFETY: write from a live buffer to the report pipe.
    let rc = unsafe { libc::write(report.as_raw_fd(), note.as_ptr().cast(), note.len()) };
    Errno::result(rc).map_err(|e| Error::sys("reporting the file timings", e))?;
    become_process(1, image, &table, &times, report)
}

/// How long PID 1 took to make each kind of file (and how many), for the
/// supervisor's `restore phases` line: sent as one line on the report
/// pipe, after a [`NOTE`] byte, before the first 'H'.
#[derive(Default)]
struct KindTimes(Vec<(&'static str, usize, Duration)>);

impl KindTimes {
    fn add(&mut self, name: &'static str, count: usize, took: Duration) {
        match self.0.iter_mut().find(|k| k.0 == name) {
            Some(k) => {
                k.1 += count;
                k.2 += took;
            }
            None => self.0.push((name, count, took)),
        }
    }

    fn render(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(name, count, took)| format!("{name} x{count} {:.1}", took.as_secs_f64() * 1e3))
            .collect();
        format!("pid 1 files (ms): {}", parts.join(", "))
    }
}

/// Starts a line of timings on the report pipe: a byte no error message
/// starts with.
const NOTE: u8 = 0x01;

/// The name a file kind is timed under.
fn kind_name(kind: &FileKind) -> &'static str {
    match kind {
        FileKind::Regular { .. } => "regular file",
        FileKind::Directory { .. } => "directory",
        FileKind::CharDevice { .. } => "character device",
        FileKind::Pipe { .. } => "pipe",
        FileKind::Fifo { .. } => "FIFO",
        FileKind::Memfd { .. } => "memfd",
        FileKind::Deleted { .. } => "deleted file",
        FileKind::Unix(_) => "unix socket (placed)",
        FileKind::Inet(_) => "TCP/UDP socket",
        FileKind::Mqueue { .. } => "POSIX mqueue",
        FileKind::Netlink(_) => "netlink socket",
        _ => "event object",
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (without
/// `CAP_SYS_RESOURCE` the hard one cannot move) and returns it; each
/// process gets its recorded limits back in [`set_attributes`].
fn raise_nofile() -> Result<RawFd> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one live rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(Error::sys("getrlimit(RLIMIT_NOFILE)", Errno::last()));
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(Error::sys("setrlimit(RLIMIT_NOFILE)", Errno::last()));
        }
    }
    Ok(RawFd::try_from(lim.rlim_max).unwrap_or(RawFd::MAX))
}

/// Descriptors the restorer may hold besides the table: the report pipe
/// and a few passing ones (a copy saved while an epoll item is added, a
/// source moved out of the way while a process places its descriptors).
const SPARE_FDS: RawFd = 16;

/// Where the table of the image's files starts (see [`open_table`]).
///
/// Above the restorer's private descriptors (`base + TABLE_OFFSET`) when
/// the whole table fits there under the hard `RLIMIT_NOFILE`; otherwise as
/// high as it fits, so that it overlaps the numbers the processes use: a
/// container may hold up to the limit's number of descriptors, and its
/// restore needs them once, not twice. [`place_fds`] then moves them into
/// place without overwriting one still needed. The private descriptors
/// (at `base`) must still fit under the limit.
fn table_start(image: &LoadedImage, base: RawFd, hard: RawFd) -> Result<RawFd> {
    let mut keepers = HashSet::new();
    for file in image.files.values() {
        match &file.kind {
            FileKind::Fifo { pipe, .. } => keepers.insert((0, *pipe)),
            FileKind::Memfd { id, .. } => keepers.insert((1, *id)),
            _ => false,
        };
    }
    let slots = RawFd::try_from(image.files.len() + keepers.len())
        .unwrap_or(RawFd::MAX)
        .saturating_add(SPARE_FDS);
    let above = base + TABLE_OFFSET;
    if above.saturating_add(slots) <= hard {
        return Ok(above);
    }
    let overlapping = hard.saturating_sub(slots);
    if overlapping < FIRST_PRIVATE_FD || base + SPARE_FDS > hard {
        return Err(Error::Invalid(format!(
            "the image has {} open files and descriptors up to {}, but the restorer may hold at most {hard} descriptors (the hard RLIMIT_NOFILE)",
            image.files.len(),
            base - 1
        )));
    }
    Ok(overlapping)
}

/// Opens every file and pipe of the image once, at fds >= `table_fd`, and
/// takes the flock and OFD locks of each (they belong to the open file
/// description, which every husk inherits). `deleted`: where each deleted
/// file was written back.
fn open_table(
    image: &LoadedImage,
    deleted: &HashMap<u64, String>,
    table_fd: RawFd,
    kinds: &mut KindTimes,
) -> Result<HashMap<u64, RawFd>> {
    let mut table = HashMap::new();
    let mut pipes: HashMap<u64, (RawFd, RawFd)> = HashMap::new();
    // Unix sockets are made together (pairs, names, queues): restore::unix.
    let at = Instant::now();
    let mut unix = crate::restore::unix::open_all(image)?;
    kinds.add("unix sockets (made)", unix.len(), at.elapsed());
    // One read-write descriptor per FIFO and per memfd, which the
    // descriptions of the image are opened from.
    let mut fifos: HashMap<u64, RawFd> = HashMap::new();
    let mut memfds: HashMap<u64, RawFd> = HashMap::new();
    let mut ids: Vec<_> = image.files.keys().copied().collect();
    ids.sort_unstable();
    ids.sort_by_key(|id| crate::restore::inet::open_order(&image.files[id].kind));
    for id in ids {
        let at = Instant::now();
        let file = &image.files[&id];
        let flags = OFlag::from_bits_truncate(file.flags as i32)
            & !(OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_EXCL
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY);
        let fd = match &file.kind {
            FileKind::Regular { path, pos, .. } => {
                let fd = open(&path.to_string(), flags)?;
                // SAFETY: lseek on an fd we just opened.
                unsafe { libc::lseek(fd, *pos as libc::off_t, libc::SEEK_SET) };
                fd
            }
            FileKind::Directory { path, .. } => {
                open(&path.to_string(), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?
            }
            FileKind::CharDevice { path, .. } => {
                // The console of the checkpointed container was a pty of the
                // host; the restored container has its own, at /dev/console.
                let path = path.to_string();
                let path = if path.starts_with("/dev/pts/") {
                    "/dev/console".to_string()
                } else {
                    path
                };
                open(&path, flags | OFlag::O_NOCTTY)?
            }
            FileKind::Pipe { pipe, end } => {
                let (r, w) = match pipes.get(pipe) {
                    Some(ends) => *ends,
                    None => {
                        let ends = new_pipe(image, *pipe)?;
                        pipes.insert(*pipe, ends);
                        ends
                    }
                };
                let fd = match end {
                    PipeEnd::Read => r,
                    PipeEnd::Write => w,
                };
                if flags.contains(OFlag::O_NONBLOCK) {
                    // SAFETY: F_SETFL on an fd we own.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
                }
                fd
            }
            FileKind::Fifo { path, pipe, .. } => {
                let path = path.to_string();
                if !fifos.contains_key(pipe) {
                    // Read-write never blocks and keeps both ends alive while
                    // the image's ends are opened and the data goes back in.
                    let keeper = open(&path, OFlag::O_RDWR | OFlag::O_NONBLOCK)?;
                    refill_fifo(image, *pipe, keeper, &path)?;
                    fifos.insert(*pipe, park(keeper, table_fd)?);
                }
                let fd = open(&path, flags | OFlag::O_NONBLOCK)?;
                if !flags.contains(OFlag::O_NONBLOCK) {
                    // SAFETY: F_SETFL on an fd we own.
                    unsafe { libc::fcntl(fd, libc::F_SETFL, flags.bits() & !libc::O_NONBLOCK) };
                }
                fd
            }
            FileKind::Memfd { id: object, pos } => {
                let keeper = match memfds.get(object) {
                    Some(fd) => *fd,
                    None => {
                        let fd = park(shmem::open_memfd(image, *object)?, table_fd)?;
                        memfds.insert(*object, fd);
                        fd
                    }
                };
                let fd = open(&format!("/proc/self/fd/{keeper}"), flags)?;
                // SAFETY: lseek on an fd we just opened.
                unsafe { libc::lseek(fd, *pos as libc::off_t, libc::SEEK_SET) };
                fd
            }
            FileKind::Deleted { id: object, pos } => {
                let path = deleted.get(object).ok_or_else(|| {
                    Error::Invalid(format!("the image lacks deleted file {object}"))
                })?;
                let fd = open(path, flags)?;
                // SAFETY: lseek on an fd we just opened.
                unsafe { libc::lseek(fd, *pos as libc::off_t, libc::SEEK_SET) };
                fd
            }
            FileKind::Unix(u) => unix.remove(&id).ok_or_else(|| {
                Error::Invalid(format!("unix socket socket:[{}] was not created", u.ino))
            })?,
            FileKind::Inet(sock) => crate::restore::inet::open(sock, file.flags)?,
            FileKind::Netlink(n) => crate::restore::netlink::open(n, file.flags)?,
            FileKind::Mqueue { name } => {
                crate::restore::ipc::open_mqueue(name.as_bytes(), file.flags as i32)?
            }
            kind if events::handles(kind) => events::create(kind, flags)?,
            kind => {
                return Err(Error::Invalid(format!(
                    "file {id}: restoring {kind:?} is not supported here"
                )))
            }
        };
        let fd = park(fd, table_fd)?;
        for lock in image
            .locks
            .iter()
            .filter(|l| l.file == id && l.kind != LockKind::Posix)
        {
            take_lock(fd, lock)?;
        }
        table.insert(id, fd);
        kinds.add(kind_name(&file.kind), 1, at.elapsed());
    }
    // Epoll items last: every file they may watch exists now.
    let at = Instant::now();
    events::fill_epolls(image, &table)?;
    kinds.add("epoll items", 0, at.elapsed());
    Ok(table)
}

/// Takes `lock` again on `fd` (never waiting: the image says it was held,
/// so nothing may hold a conflicting one).
fn take_lock(fd: RawFd, lock: &FileLock) -> Result<()> {
    let what = || {
        format!(
            "taking the {:?} {:?} lock {}+{} on file {} again",
            lock.kind, lock.mode, lock.start, lock.len, lock.file
        )
    };
    let rc = match lock.kind {
        LockKind::Flock => {
            let op = match lock.mode {
                LockMode::Read => libc::LOCK_SH,
                LockMode::Write => libc::LOCK_EX,
            };
            // SAFETY: flock on an fd we own.
            unsafe { libc::flock(fd, op | libc::LOCK_NB) }
        }
        LockKind::Posix | LockKind::Ofd => {
            // SAFETY: an all-zero struct flock is valid; the fields are set below.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = match lock.mode {
                LockMode::Read => libc::F_RDLCK,
                LockMode::Write => libc::F_WRLCK,
            } as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = lock.start as libc::off_t;
            fl.l_len = lock.len as libc::off_t;
            let cmd = if lock.kind == LockKind::Ofd {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            // SAFETY: fcntl with a pointer to a live struct flock.
            unsafe { libc::fcntl(fd, cmd, &fl) }
        }
    };
    Errno::result(rc)
        .map(drop)
        .map_err(|e| Error::sys(what(), e))
}

/// Puts a FIFO's capacity and buffered bytes back through `fd`.
fn refill_fifo(image: &LoadedImage, pipe: u64, fd: RawFd, path: &str) -> Result<()> {
    let Some(data) = image.pipes.get(&pipe) else {
        return Ok(());
    };
    // SAFETY: F_SETPIPE_SZ on our own FIFO descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, data.capacity as libc::c_int) };
    let mut bytes = &data.data.0[..];
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice to our FIFO descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        let n =
            Errno::result(n).map_err(|e| Error::sys(format!("refilling the FIFO {path}"), e))?;
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Moves an fd to the private range (>= `table_fd`), close-on-exec.
fn park(fd: RawFd, table_fd: RawFd) -> Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we own; the old one is closed.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, table_fd) };
    let high = Errno::result(high).map_err(|e| Error::sys("parking a restored file", e))?;
    // SAFETY: closing the original fd we own.
    unsafe { libc::close(fd) };
    Ok(high)
}

fn open(path: &str, flags: OFlag) -> Result<RawFd> {
    let c = CString::new(path)
        .map_err(|_| Error::Invalid(format!("path {path:?} contains a NUL byte")))?;
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags.bits(), 0) };
    Errno::result(fd).map_err(|e| Error::sys(format!("opening {path}"), e))
}

/// A new pipe with the image's capacity and contents.
fn new_pipe(image: &LoadedImage, pipe: u64) -> Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    Errno::result(rc).map_err(|e| Error::sys("creating a pipe", e))?;
    if let Some(data) = image.pipes.get(&pipe) {
        // SAFETY: F_SETPIPE_SZ on our own pipe.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, data.capacity as libc::c_int) };
        let mut bytes = &data.data.0[..];
        while !bytes.is_empty() {
            // SAFETY: writing from a live slice to our pipe.
            let n = unsafe { libc::write(fds[1], bytes.as_ptr().cast(), bytes.len()) };
            let n = Errno::result(n).map_err(|e| Error::sys("refilling a pipe", e))?;
            bytes = &bytes[n as usize..];
        }
    }
    Ok((fds[0], fds[1]))
}

/// fork(2) with a chosen PID in the caller's PID namespace; 0 in the child.
fn fork_with_pid(pid: i32) -> Result<i32> {
    // SAFETY: PID 1 of a restore is single-threaded.
    match unsafe { crate::clone3::fork_into(0, Some(pid)) } {
        Ok(crate::clone3::Cloned::Child) => Ok(0),
        Ok(crate::clone3::Cloned::Parent(child)) => Ok(child.as_raw()),
        Err(e) => Err(Error::sys(
            format!("creating process {pid} (clone3 with set_tid)"),
            e,
        )),
    }
}

/// Becomes the husk of image process `pid`; only returns on error.
fn become_process(
    pid: i32,
    image: &LoadedImage,
    table: &HashMap<u64, RawFd>,
    times: &timens::TimeSpaces,
    report: OwnedFd,
) -> Result<Infallible> {
    // Before its children are born: they are born in its time_for_children.
    times.enter(image, pid, report.as_raw_fd())?;
    let p = &image.processes[&pid];
    let rec = &p.process;
    // SAFETY: getsid/getpgid/setsid/setpgid take and return plain integers.
    unsafe {
        if rec.sid == pid && libc::getsid(0) != pid && libc::setsid() < 0 {
            return Err(Error::sys(format!("process {pid}: setsid"), Errno::last()));
        }
        if libc::getpgid(0) != rec.pgid && libc::setpgid(0, rec.pgid) < 0 {
            return Err(Error::sys(
                format!("process {pid}: joining process group {}", rec.pgid),
                Errno::last(),
            ));
        }
    }
    // A zombie child's exit must not leave a SIGCHLD pending in this husk
    // (default action, unblocked: the kernel discards it).
    // SAFETY: signal and sigprocmask with a live, initialised set.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let mut zombies = Vec::new();
    for child in image.children_of(pid) {
        let zombie = is_zombie(&image.processes[&child].process);
        if fork_with_pid(child)? == 0 {
            if zombie {
                become_zombie(&image.processes[&child].process, &report);
            }
            let result = become_process(child, image, table, times, report);
            return result;
        }
        if zombie {
            zombies.push(child);
        }
    }
    for z in zombies {
        // Until it has exited (WNOWAIT: it stays a zombie).
        // SAFETY: waitid writes into a live, zeroed siginfo_t.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                z as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        Errno::result(rc)
            .map_err(|e| Error::sys(format!("process {pid}: waiting for zombie {z} to exit"), e))?;
    }
    let mut keep: HashSet<RawFd> = HashSet::new();
    keep.insert(report.as_raw_fd());
    let mut moves = Vec::with_capacity(p.fds.len());
    for fd in &p.fds {
        let from = *table.get(&fd.file).ok_or_else(|| {
            Error::Invalid(format!("process {pid}: fd {} names an unknown file", fd.fd))
        })?;
        moves.push(FdMove {
            from,
            to: fd.fd,
            cloexec: fd.cloexec,
        });
        keep.insert(fd.fd);
    }
    place_fds(table, &moves, report.as_raw_fd())
        .map_err(|(to, e)| Error::sys(format!("process {pid}: placing fd {to}"), e))?;
    close_all_but(&keep);
    set_attributes(p)?;
    // POSIX locks belong to the process: taken by the husk itself, once
    // its descriptors are final (closing any descriptor of a file drops them).
    for lock in image
        .locks
        .iter()
        .filter(|l| l.pid == pid && l.kind == LockKind::Posix)
    {
        let fd = p.fds.iter().find(|f| f.file == lock.file).ok_or_else(|| {
            Error::Invalid(format!(
                "process {pid}: a POSIX lock on file {} it holds no descriptor of",
                lock.file
            ))
        })?;
        take_lock(fd.fd, lock).map_err(|e| Error::Invalid(format!("process {pid}: {e}")))?;
    }
    // SAFETY: write one byte from a live buffer to the report pipe.
    let rc = unsafe { libc::write(report.as_raw_fd(), b"H".as_ptr().cast(), 1) };
    Errno::result(rc).map_err(|e| Error::sys(format!("process {pid}: reporting readiness"), e))?;
    drop(report);
    loop {
        // SAFETY: pause takes no arguments; the restorer interrupts it.
        unsafe { libc::pause() };
    }
}

/// A zombie's side: takes its recorded session, group and ids, then exits
/// with its recorded status (a signal's, without a core dump); its parent
/// leaves it unreaped. What fails is written to the report pipe.
fn become_zombie(p: &cr_formats::schema::Process, report: &OwnedFd) -> ! {
    let pid = p.pid;
    let c = &p.creds;
    let groups: Vec<libc::gid_t> = c.groups.clone();
    // SAFETY: plain integer syscalls, setgroups with a live array, write
    // from a live buffer; _exit never returns.
    unsafe {
        let steps: [(&str, libc::c_int); 5] = [
            (
                "setsid",
                if p.sid == pid && libc::getsid(0) != pid {
                    libc::setsid()
                } else {
                    0
                },
            ),
            (
                "setpgid",
                if libc::getpgid(0) != p.pgid {
                    libc::setpgid(0, p.pgid)
                } else {
                    0
                },
            ),
            ("setgroups", libc::setgroups(groups.len(), groups.as_ptr())),
            (
                "setresgid",
                libc::setresgid(c.gid.real, c.gid.effective, c.gid.saved),
            ),
            (
                "setresuid",
                libc::setresuid(c.uid.real, c.uid.effective, c.uid.saved),
            ),
        ];
        for (what, rc) in steps {
            if rc < 0 {
                let msg = format!("zombie {pid}: {what}: {}", Errno::last());
                libc::write(report.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        let status = match p.state {
            cr_formats::schema::TaskState::Zombie { exit_code } => exit_code,
            _ => 0,
        };
        let sig = status & 0x7f;
        if sig != 0 {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit((status >> 8) & 0xff)
    }
}

/// Process attributes the husk sets on itself; they survive the rebuild,
/// which only replaces memory and registers.
fn set_attributes(p: &crate::restore::image::ProcessImage) -> Result<()> {
    let rec = &p.process;
    let pid = rec.pid;
    let cwd = rec.cwd.to_string();
    if !cwd.is_empty() {
        nix::unistd::chdir(cwd.as_str()).map_err(|e| {
            Error::sys(
                format!("process {pid}: entering its working directory {cwd}"),
                e,
            )
        })?;
    }
    // SAFETY: umask, setrlimit, personality, setpriority and prctl take
    // plain integers or a pointer to a live rlimit.
    unsafe {
        libc::umask(rec.umask as libc::mode_t);
        for rl in &rec.rlimits {
            let lim = libc::rlimit {
                rlim_cur: rl.cur,
                rlim_max: rl.max,
            };
            if libc::setrlimit(rl.resource as _, &lim) != 0 {
                // Raising a hard limit needs CAP_SYS_RESOURCE, which the
                // container may lack: keep the hard limit, restore the soft one.
                let mut now = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(rl.resource as _, &mut now) == 0 {
                    now.rlim_cur = rl.cur.min(now.rlim_max);
                    libc::setrlimit(rl.resource as _, &now);
                }
            }
        }
        if libc::personality(0xffff_ffff) as u32 != rec.personality {
            libc::personality(rec.personality as libc::c_ulong);
        }
        let leader = p
            .threads
            .iter()
            .find(|t| t.tid == pid)
            .or(p.threads.first());
        if let Some(thread) = leader {
            libc::setpriority(libc::PRIO_PROCESS, 0, thread.sched.nice);
        }
        if rec.creds.no_new_privs {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            rec.pdeath_sig as libc::c_ulong,
            0,
            0,
            0,
        );
        if rec.dumpable <= 1 {
            libc::prctl(
                libc::PR_SET_DUMPABLE,
                rec.dumpable as libc::c_ulong,
                0,
                0,
                0,
            );
        }
    }
    Ok(())
}

/// One descriptor of a process: the table's copy of its file at `from`
/// goes to fd number `to`.
#[derive(Debug, Clone, Copy)]
struct FdMove {
    from: RawFd,
    to: RawFd,
    cloexec: bool,
}

/// Puts every descriptor of `moves` in place (a parallel move: the table
/// may overlap the numbers placed, see [`table_start`]). A move waits
/// while its number holds a table copy that another move still needs; a
/// copy is closed after its last use, so the descriptors in use never
/// grow beyond the table's; a cycle of waiting moves is broken by moving
/// one copy above `private` (the first private fd, above every number
/// placed). Table copies this process does not use are closed first.
/// On failure, the fd number that could not be placed.
fn place_fds(
    table: &HashMap<u64, RawFd>,
    moves: &[FdMove],
    private: RawFd,
) -> std::result::Result<(), (RawFd, Errno)> {
    let targets: HashSet<RawFd> = moves.iter().map(|m| m.to).collect();
    // Uses left of each table copy, by its current fd number.
    let mut uses: HashMap<RawFd, usize> = HashMap::new();
    for m in moves {
        *uses.entry(m.from).or_default() += 1;
    }
    for fd in table.values() {
        if !uses.contains_key(fd) && !targets.contains(fd) {
            // SAFETY: closing a table copy this process never uses.
            unsafe { libc::close(*fd) };
        }
    }
    // Where each table copy is now (moved out of the way of a cycle).
    let mut moved: HashMap<RawFd, RawFd> = HashMap::new();
    let mut waiting: HashMap<RawFd, Vec<usize>> = HashMap::new();
    let mut ready: Vec<usize> = (0..moves.len()).rev().collect();
    loop {
        while let Some(i) = ready.pop() {
            let m = moves[i];
            let from = moved.get(&m.from).copied().unwrap_or(m.from);
            if from != m.to && uses.get(&m.to).is_some_and(|n| *n > 0) {
                waiting.entry(m.to).or_default().push(i);
                continue;
            }
            let flags = if m.cloexec { libc::O_CLOEXEC } else { 0 };
            // SAFETY: fcntl and dup3 on fds of this process.
            let rc = unsafe {
                if from == m.to {
                    let fd_flags = if m.cloexec { libc::FD_CLOEXEC } else { 0 };
                    libc::fcntl(from, libc::F_SETFD, fd_flags)
                } else {
                    libc::dup3(from, m.to, flags)
                }
            };
            Errno::result(rc).map_err(|e| (m.to, e))?;
            let left = uses.entry(from).or_default();
            *left = left.saturating_sub(1);
            if *left == 0 {
                uses.remove(&from);
                if !targets.contains(&from) {
                    // SAFETY: closing a table copy after its last use.
                    unsafe { libc::close(from) };
                }
                ready.extend(waiting.remove(&from).unwrap_or_default());
            }
        }
        // Only cycles wait now: move the copy one of them waits for.
        let Some((&blocker, _)) = waiting.iter().next() else {
            return Ok(());
        };
        // SAFETY: F_DUPFD_CLOEXEC duplicates an fd of this process.
        let copy = unsafe { libc::fcntl(blocker, libc::F_DUPFD_CLOEXEC, private) };
        let copy = Errno::result(copy).map_err(|e| (blocker, e))?;
        // A blocker is always a copy still at its table slot: a copy moved
        // out of the way sits above every number placed.
        moved.insert(blocker, copy);
        if let Some(n) = uses.remove(&blocker) {
            uses.insert(copy, n);
        }
        ready.extend(waiting.remove(&blocker).unwrap_or_default());
    }
}

/// Closes every fd of this process not in `keep`.
fn close_all_but(keep: &HashSet<RawFd>) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing an fd of this process that nothing will use.
            unsafe { libc::close(fd) };
        }
    }
}

/// The supervisor's side: waits for every husk, rebuilds each process and
/// lets them all run. Returns the host PID of each container PID.
pub fn take_over(
    image: &LoadedImage,
    cgroup: &ContainerCgroup,
    report: &mut File,
    how: RestoreOptions,
) -> Result<HashMap<i32, i32>> {
    let live: Vec<i32> = image
        .processes
        .values()
        .filter(|p| !is_zombie(&p.process))
        .map(|p| p.process.pid)
        .collect();
    crate::restore::timing::mark("pid 1 setup");
    if let Err(e) = wait_for_husks(image, cgroup, live.len(), report) {
        // Deleted files PID 1 wrote back go with the failed restore.
        if !image.deleted.is_empty() {
            for pid in cgroup.pids().unwrap_or_default() {
                if procfs::read_status(pid.as_raw()).is_ok_and(|s| s.pid_in_ns() == 1) {
                    SharedObjects::new(image, &HashMap::from([(1, pid.as_raw())])).unlink_deleted();
                }
            }
        }
        return Err(e);
    }
    crate::restore::timing::mark("husks ready");
    let mut host_pid = HashMap::new();
    for pid in cgroup.pids()? {
        let status = procfs::read_status(pid.as_raw())?;
        host_pid.insert(status.pid_in_ns(), pid.as_raw());
    }
    // Every husk is single-threaded; the rebuild adds the other threads,
    // which PTRACE_O_TRACECLONE attaches (and stops) as they are born. A
    // failed rebuild kills and reaps every husk (see `abandon`); the caller
    // then kills the container.
    let options = SeizeOptions {
        trace_clone: true,
        ..SeizeOptions::default()
    };
    let mut tracees = Vec::new();
    for pid in &live {
        let host = *host_pid.get(pid).ok_or_else(|| {
            Error::Invalid(format!(
                "restored process {pid} is not in the container's cgroup"
            ))
        })?;
        let mut tracee = Tracee::seize_and_interrupt_with(Pid::from_raw(host), options)?;
        tracee.wait_stop(Some(Duration::from_secs(10)))?;
        // The husk may be stopped between its 'H' and closing the report
        // pipe: close every private fd from outside, so none is left in the
        // restored process.
        RemoteSyscall::new(&mut tracee)
            .inject(
                libc::SYS_close_range,
                [private_fds(image) as u64, u64::from(u32::MAX), 0, 0, 0, 0],
            )
            .map_err(|e| {
                Error::Invalid(format!(
                    "restored process {pid}: closing the restorer's descriptors: {e}"
                ))
            })?;
        tracees.push((*pid, tracee, Vec::new()));
    }
    crate::restore::timing::mark("seized");
    // Shared memory objects, memfds and deleted files several husks use.
    let mut shared = SharedObjects::new(image, &host_pid);
    let rebuilt = shared
        .open_held()
        .and_then(|()| rebuild_all(image, &mut tracees, &mut shared, how));
    shared.unlink_deleted();
    drop(shared);
    // Dropped once every process runs: the lazy page server's fill begins.
    let _fill = match rebuilt {
        Ok(gate) => gate,
        Err(e) => {
            abandon(tracees);
            return Err(e);
        }
    };
    // Detach everything, even past a failure, and report the first one.
    // A process that was stopped gets SIGSTOP first, while every thread is
    // still in a ptrace stop: it stops again before any of its code runs,
    // and SIGCONT resumes it.
    let mut first_error = None;
    if how.frozen {
        // Frozen before any task is let go: nothing runs until a thaw.
        if let Err(e) = cgroup.freeze() {
            first_error.get_or_insert(Error::from(e));
        }
    }
    for (pid, tracee, _) in &tracees {
        if let cr_formats::schema::TaskState::Stopped { signo } = image.processes[pid].process.state
        {
            if let Err(e) = nix::sys::signal::kill(
                tracee.tgid(),
                nix::sys::signal::Signal::try_from(signo)
                    .unwrap_or(nix::sys::signal::Signal::SIGSTOP),
            ) {
                first_error.get_or_insert_with(|| {
                    Error::sys(format!("stopping restored process {pid} again"), e)
                });
            }
        }
    }
    for (pid, tracee, threads) in tracees {
        for thread in threads {
            let tid = thread.tid();
            if let Err(e) = thread.detach() {
                first_error.get_or_insert_with(|| {
                    Error::Invalid(format!("resuming process {pid}, thread {tid}: {e}"))
                });
            }
        }
        if let Err(e) = tracee.detach() {
            first_error
                .get_or_insert_with(|| Error::Invalid(format!("resuming process {pid}: {e}")));
        }
    }
    crate::restore::timing::mark("resumed");
    match first_error {
        Some(e) => Err(e),
        None => Ok(host_pid),
    }
}

/// After a failed rebuild: half-built husks must never run. Every husk is
/// killed (its whole thread group), then every traced thread is reaped
/// (each leader after its threads, PID 1 last), so that nothing stays
/// attached and no zombie waits for the supervisor. (The new threads of
/// the process whose rebuild failed were killed and reaped by the rebuild
/// itself.)
fn abandon(tracees: Vec<(i32, Tracee, Vec<Tracee>)>) {
    for (_, tracee, _) in &tracees {
        let _ = nix::sys::signal::kill(tracee.tgid(), nix::sys::signal::Signal::SIGKILL);
    }
    // PID 1 last: its exit waits until every task of its PID namespace is
    // reaped, traced ones included.
    for (_, tracee, threads) in tracees.into_iter().rev() {
        for thread in threads {
            let _ = thread.reap_killed(Duration::from_secs(5));
        }
        let _ = tracee.reap_killed(Duration::from_secs(5));
    }
}

/// Rebuilds every husk: all address spaces are laid out first, then the
/// page store is streamed chunk by chunk into them (never held whole in
/// memory), then each process gets its state and registers.
fn rebuild_all(
    image: &LoadedImage,
    tracees: &mut [(i32, Tracee, Vec<Tracee>)],
    shared: &mut SharedObjects<'_>,
    how: RestoreOptions,
) -> Result<Option<FillGate>> {
    let fail = |pid: i32, e: crate::restore::RestoreError| {
        let comm = image
            .processes
            .get(&pid)
            .map(|p| p.process.comm.to_string())
            .unwrap_or_default();
        Error::Invalid(format!("rebuilding process {pid} ({comm}): {e}"))
    };
    let mut husks = HashMap::new();
    for (pid, tracee, _) in tracees.iter_mut() {
        let p = &image.processes[pid];
        let husk = prepare_with(tracee, &p.process, &p.threads, &p.vmas, Some(&mut *shared))
            .map_err(|e| fail(*pid, e))?;
        husks.insert(*pid, husk);
    }
    // Every segment is attached again: those removed while attached go.
    if let Some((_, init, _)) = tracees.iter().find(|(pid, _, _)| *pid == 1) {
        crate::restore::ipc::remove_destroyed(init.tgid().as_raw(), &image.ipc)?;
    }
    crate::restore::timing::mark("prepared");
    let lazy = if lazy::usable(image, how.pages)? {
        let (store, maps) = lazy::load(image, &husks, shared, how.staged, &fail)?;
        crate::restore::timing::mark("pages verified");
        let lazy = lazy::register(store, maps, tracees, &husks, image, &fail)?;
        Some(lazy)
    } else {
        crate::restore::pages::stream(image, &husks, shared, &fail)?;
        None
    };
    shared.seal()?;
    crate::restore::timing::mark("pages");
    // Faults on lazy pages are served from here on: the rest of the rebuild
    // may touch them (injected calls, registers), and so may the resume.
    let gate = lazy
        .map(|lazy| lazy.serve())
        .transpose()
        .map_err(|e| Error::Invalid(format!("starting the lazy page server: {e}")))?;
    for (pid, tracee, threads) in tracees.iter_mut() {
        let p = &image.processes[pid];
        let husk = husks
            .remove(pid)
            .ok_or_else(|| Error::Invalid(format!("process {pid} was not prepared")))?;
        *threads = finish(tracee, husk, &p.process, &p.threads).map_err(|e| fail(*pid, e))?;
    }
    Ok(gate)
}

/// Reads one 'H' per husk from the report pipe, PID 1's line of timings
/// (after a [`NOTE`] byte) and requests for time offsets (after
/// [`timens::REQUEST`], answered at once); anything else is an error
/// message from the tree.
fn wait_for_husks(
    image: &LoadedImage,
    cgroup: &ContainerCgroup,
    count: usize,
    report: &mut File,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    let mut buf = [0u8; 256];
    // A line after a NOTE or REQUEST byte, maybe split across reads.
    let mut note: Option<(u8, Vec<u8>)> = None;
    let host_pid = |pid: i32| -> Result<i32> {
        for p in cgroup.pids()? {
            if procfs::read_status(p.as_raw()).is_ok_and(|s| s.pid_in_ns() == pid) {
                return Ok(p.as_raw());
            }
        }
        Err(Error::Invalid(format!(
            "restored process {pid} is not in the container's cgroup"
        )))
    };
    while seen < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(report.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                return Err(Error::Invalid(format!(
                    "only {seen} of {count} restored processes got ready in 30 s"
                )))
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waiting for the restored processes", e)),
            Ok(_) => {}
        }
        let n = report
            .read(&mut buf)
            .map_err(|e| Error::io("reading", "the restore report pipe", e))?;
        if n == 0 {
            return Err(Error::Invalid(format!(
                "the restored tree exited after {seen} of {count} processes got ready"
            )));
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if let Some((kind, line)) = note.as_mut() {
                if *b == b'\n' {
                    let text = String::from_utf8_lossy(line).into_owned();
                    if *kind == NOTE {
                        crate::restore::timing::note(text);
                    } else {
                        timens::write_offsets(image, &text, host_pid)?;
                    }
                    note = None;
                } else {
                    line.push(*b);
                }
            } else if *b == NOTE || *b == timens::REQUEST {
                note = Some((*b, Vec::new()));
            } else if *b == b'H' {
                seen += 1;
            } else {
                let mut message = String::from_utf8_lossy(&buf[i..n]).into_owned();
                let mut rest = String::new();
                let _ = report.read_to_string(&mut rest);
                message.push_str(&rest);
                return Err(Error::Invalid(message));
            }
        }
    }
    Ok(())
}

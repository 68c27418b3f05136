//! Rebuilding a container's process tree.
//!
//! Two sides, in two processes:
//!
//! ```text
//! PID 1 (restorer code, in the container's        supervisor (host side)
//! namespaces, after pivot_root)
//! open every file of the image at fds >= 1000,
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

use cr_formats::schema::{FileKind, PipeEnd};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::container::cgroups::ContainerCgroup;
use crate::dump::procfs;
use crate::error::{Error, Result};
use crate::inject::{RemoteSyscall, SeizeOptions, Tracee};
use crate::restore::image::LoadedImage;
use crate::restore::process::{finish, prepare, write_pages, Pages, PreparedHusk};

/// Image descriptors must be below this; the restorer's own fds live above.
pub const FIRST_PRIVATE_FD: RawFd = 900;
/// Where the files of the image are parked before they are handed out.
const TABLE_FD: RawFd = 1000;

/// Checks what this restore can rebuild, before anything is created.
pub fn check(image: &LoadedImage) -> Result<()> {
    for p in image.processes.values() {
        let pid = p.process.pid;
        let comm = &p.process.comm;
        let refuse =
            |what: String| Error::Invalid(format!("cannot restore process {pid} ({comm}): {what}"));
        if !p.threads.iter().any(|t| t.tid == pid) {
            return Err(refuse(format!(
                "none of its {} threads is its thread group leader",
                p.threads.len()
            )));
        }
        if let Some(t) = p
            .threads
            .iter()
            .find(|t| t.creds.as_ref().is_some_and(|c| *c != p.process.creds))
        {
            return Err(refuse(format!(
                "thread {} has credentials of its own; restoring them is not supported yet",
                t.tid
            )));
        }
        if !p.process.shared_pending.is_empty() || p.threads.iter().any(|t| !t.pending.is_empty()) {
            return Err(refuse(
                "it has signals pending; re-queueing them is not supported yet".into(),
            ));
        }
        if let cr_formats::schema::TaskState::Stopped { .. } = p.process.state {
            return Err(refuse(
                "it is stopped (SIGSTOP); restoring stopped tasks is not supported yet".into(),
            ));
        }
        if let Some(t) = p
            .threads
            .iter()
            .find(|t| t.sched.policy != libc::SCHED_OTHER as u32)
        {
            return Err(refuse(format!(
                "thread {} has scheduling policy {}; only SCHED_OTHER is restored yet",
                t.tid, t.sched.policy
            )));
        }
        let c = &p.process.creds;
        if [
            c.uid.real,
            c.uid.effective,
            c.uid.saved,
            c.gid.real,
            c.gid.effective,
            c.gid.saved,
        ] != [0; 6]
        {
            return Err(refuse(
                "it runs as another user than root; restoring credentials is not supported yet"
                    .into(),
            ));
        }
        for fd in &p.fds {
            if fd.fd >= FIRST_PRIVATE_FD {
                return Err(refuse(format!(
                    "fd {} is above {FIRST_PRIVATE_FD}, which restore does not handle yet",
                    fd.fd
                )));
            }
            let file = image.files.get(&fd.file).ok_or_else(|| {
                refuse(format!(
                    "fd {} names file {} that the image lacks",
                    fd.fd, fd.file
                ))
            })?;
            if let FileKind::Fifo { path, .. } = &file.kind {
                return Err(refuse(format!(
                    "fd {} is the FIFO {path}; restoring FIFOs is not supported yet",
                    fd.fd
                )));
            }
        }
    }
    Ok(())
}

/// PID 1's side: builds the tree of husks. Only returns on error.
pub fn husk_main(image: &LoadedImage, report: &OwnedFd) -> Result<Infallible> {
    let moved = fcntl(report, FcntlArg::F_DUPFD_CLOEXEC(FIRST_PRIVATE_FD))
        .map_err(|e| Error::sys("moving the report pipe", e))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
    let report = unsafe { OwnedFd::from_raw_fd(moved) };
    let table = open_table(image)?;
    become_process(1, image, &table, report)
}

/// Opens every file and pipe of the image once, at fds >= 1000.
fn open_table(image: &LoadedImage) -> Result<HashMap<u64, RawFd>> {
    let mut table = HashMap::new();
    let mut pipes: HashMap<u64, (RawFd, RawFd)> = HashMap::new();
    let mut ids: Vec<_> = image.files.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
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
            FileKind::Fifo { path, .. } => {
                return Err(Error::Invalid(format!(
                    "restoring the FIFO {path} is not supported yet"
                )));
            }
        };
        table.insert(id, park(fd)?);
    }
    Ok(table)
}

/// Moves an fd to the private range (>= 1000), close-on-exec.
fn park(fd: RawFd) -> Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we own; the old one is closed.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, TABLE_FD) };
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
    report: OwnedFd,
) -> Result<Infallible> {
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
    for child in image.children_of(pid) {
        if fork_with_pid(child)? == 0 {
            let result = become_process(child, image, table, report);
            return result;
        }
    }
    let mut keep: HashSet<RawFd> = HashSet::new();
    keep.insert(report.as_raw_fd());
    for fd in &p.fds {
        let from = *table.get(&fd.file).ok_or_else(|| {
            Error::Invalid(format!("process {pid}: fd {} names an unknown file", fd.fd))
        })?;
        let flags = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 between two fds of this process.
        let rc = unsafe { libc::dup3(from, fd.fd, flags) };
        Errno::result(rc)
            .map_err(|e| Error::sys(format!("process {pid}: placing fd {}", fd.fd), e))?;
        keep.insert(fd.fd);
    }
    close_all_but(&keep);
    set_attributes(p)?;
    // SAFETY: write one byte from a live buffer to the report pipe.
    let rc = unsafe { libc::write(report.as_raw_fd(), b"H".as_ptr().cast(), 1) };
    Errno::result(rc).map_err(|e| Error::sys(format!("process {pid}: reporting readiness"), e))?;
    drop(report);
    loop {
        // SAFETY: pause takes no arguments; the restorer interrupts it.
        unsafe { libc::pause() };
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
) -> Result<HashMap<i32, i32>> {
    wait_for_husks(image.processes.len(), report)?;
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
    for pid in image.processes.keys() {
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
                [FIRST_PRIVATE_FD as u64, u64::from(u32::MAX), 0, 0, 0, 0],
            )
            .map_err(|e| {
                Error::Invalid(format!(
                    "restored process {pid}: closing the restorer's descriptors: {e}"
                ))
            })?;
        tracees.push((*pid, tracee, Vec::new()));
    }
    match rebuild_all(image, &mut tracees) {
        Ok(()) => {}
        Err(e) => {
            abandon(tracees);
            return Err(e);
        }
    }
    // Detach everything, even past a failure, and report the first one.
    let mut first_error = None;
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
fn rebuild_all(image: &LoadedImage, tracees: &mut [(i32, Tracee, Vec<Tracee>)]) -> Result<()> {
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
        let husk = prepare(tracee, &p.process, &p.threads, &p.vmas).map_err(|e| fail(*pid, e))?;
        husks.insert(*pid, husk);
    }
    stream_pages(image, &husks, &fail)?;
    for (pid, tracee, threads) in tracees.iter_mut() {
        let p = &image.processes[pid];
        let husk = husks
            .remove(pid)
            .ok_or_else(|| Error::Invalid(format!("process {pid} was not prepared")))?;
        *threads = finish(tracee, husk, &p.process, &p.threads).map_err(|e| fail(*pid, e))?;
    }
    Ok(())
}

/// Writes the page store of `image.dir` into the prepared husks, one
/// verified chunk at a time.
fn stream_pages(
    image: &LoadedImage,
    husks: &HashMap<i32, PreparedHusk>,
    fail: &dyn Fn(i32, crate::restore::RestoreError) -> Error,
) -> Result<()> {
    let path = cr_formats::layout::pages_path(&image.dir);
    let file = File::open(&path).map_err(|e| Error::io("opening checkpoint image", &path, e))?;
    let bad = |e: cr_formats::FormatError| {
        Error::Invalid(format!("checkpoint image {}: {e}", path.display()))
    };
    let mut reader = cr_formats::PageReader::new(std::io::BufReader::with_capacity(4 << 20, file))
        .map_err(bad)?;
    // Pre-copied pages and the later runs that supersede them.
    let mut overlay = crate::restore::overlay::PageOverlay::default();
    while let Some(chunk) = reader.next_chunk().map_err(bad)? {
        let owner = chunk.header.owner;
        let Some(pid) = owner.pid() else {
            continue;
        };
        let husk = match husks.get(&pid) {
            Some(husk) => husk,
            // Pre-copied from a process that exited before the freeze.
            None if matches!(owner, cr_formats::PageOwner::PreCopy { .. }) => continue,
            None => {
                return Err(Error::Invalid(format!(
                    "checkpoint image {}: pages of unknown process {pid}",
                    path.display()
                )))
            }
        };
        let vmas = &image.processes[&pid].vmas;
        let runs: Vec<Pages<'_>> = overlay.runs(pid, owner, chunk.runs(), vmas);
        write_pages(husk.pid, vmas, &runs).map_err(|e| fail(pid, e))?;
    }
    if !reader.is_complete() {
        return Err(Error::Invalid(format!(
            "checkpoint image {}: the page store is truncated",
            path.display()
        )));
    }
    Ok(())
}

/// Reads one 'H' per husk from the report pipe; anything else is an error
/// message from the tree.
fn wait_for_husks(count: usize, report: &mut File) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    let mut buf = [0u8; 256];
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
            if *b == b'H' {
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

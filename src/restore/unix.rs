//! Unix domain sockets at restore: PID 1 of the restore (in the container's
//! namespaces, after pivot_root, before any husk is forked) creates every
//! socket of the image once; the tree hands them out like any other file,
//! so a socket shared by several processes is one open file again.
//!
//! ```text
//!  connected pairs      unnamed:  socketpair(type)
//!                       named:    bind the client's own name, if any; a
//!                                 temporary listener bound to the accepted
//!                                 side's name; connect; accept; close the
//!                                 temporary listener (the accepted socket
//!                                 keeps the name, getsockname/getpeername
//!                                 answer as before)
//!                       peer closed: socketpair, the other end closed after
//!                                 the refill (EOF after the data)
//!  the others           socket(type), bind (a stale socket file at the
//!                       path is removed first), listen(backlog)
//!  backlogs             each client waiting in a listener's backlog
//!                       connects to it again, oldest first
//!  datagram links       connect(peer's name) when only one side named it
//!  queues               each socket's receive queue is sent again from its
//!                       peer (datagram: from a temporary socket to its
//!                       name when it has no peer), message by message
//!  then                 shutdown(2) states, socket files removed after the
//!                       bind when they were at checkpoint, file modes and
//!                       owners, SO_SNDBUF/SO_RCVBUF, SO_PASSCRED, O_NONBLOCK
//! ```
//!
//! `SO_PEERCRED` comes from the process that calls `socketpair`, `listen`
//! or `connect`, and nothing sets it afterwards. So each of these calls is
//! made as the recorded peer ([`as_peer`]): a helper forked with the
//! recorded pid (clone3 `set_tid`, sharing PID 1's descriptor table with
//! `CLONE_FILES`) and the recorded effective uid and gid makes the call
//! and exits before the husks exist; the socket keeps naming that pid, the
//! number the restored process gets again. Recorded pid 1 (or unknown): PID
//! 1 itself with the ids switched for the call.
//!
//! ```text
//!  PID 1                                  helper (pid P, shares the fd table)
//!  first call as P: two pipes,
//!  clone3(CLONE_FILES, set_tid P)
//!  each call as P: command ─────────────▶ setresgid/setresuid(-1, id, -1),
//!    (uid, gid, op)                       effective caps = permitted,
//!                                         socketpair / listen / connect
//!                  ◀───────────────────── errno or the new fds
//!  all made: close the command pipe ────▶ EOF: _exit
//!  waitpid(P)
//! ```
//!
//! One helper per recorded pid serves every call made as it (a fork costs
//! about a quarter of a millisecond here: 1,000 socketpairs made by one
//! process take one helper, not 1,000).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use cr_formats::schema::{FileId, FileKind, UnixCred, UnixName, UnixSocket, UnixState, UnixType};
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::restore::image::LoadedImage;

/// The unix sockets of an image, by inode, with their file id and flags.
fn sockets(image: &LoadedImage) -> BTreeMap<u64, (FileId, &UnixSocket, u32)> {
    image
        .files
        .values()
        .filter_map(|f| match &f.kind {
            FileKind::Unix(u) => Some((u.ino, (f.id, u, f.flags))),
            _ => None,
        })
        .collect()
}

fn refuse(u: &UnixSocket, what: &str) -> Error {
    Error::Invalid(format!(
        "cannot restore unix socket socket:[{}]: {what}",
        u.ino
    ))
}

/// Checks that every unix socket of the image can be rebuilt.
pub fn check(image: &LoadedImage) -> Result<()> {
    let all = sockets(image);
    for (_, u, _) in all.values() {
        if let Some(peer) = u.peer {
            let Some((_, p, _)) = all.get(&peer) else {
                return Err(refuse(
                    u,
                    &format!("its peer socket:[{peer}] is not in the image"),
                ));
            };
            if u.kind == UnixType::Dgram && p.peer != Some(u.ino) && p.name.is_none() {
                return Err(refuse(
                    u,
                    &format!("it is connected to the unnamed socket:[{peer}], which cannot be named again"),
                ));
            }
            if u.kind != UnixType::Dgram && p.peer != Some(u.ino) {
                return Err(refuse(u, "its peer is connected elsewhere"));
            }
        }
        let mutual = u
            .peer
            .is_some_and(|p| all.get(&p).is_some_and(|(_, p, _)| p.peer == Some(u.ino)));
        if !u.queue.is_empty() && u.kind == UnixType::Dgram && u.name.is_none() && !mutual {
            return Err(refuse(
                u,
                "it has messages queued but no name and no peer to send them from",
            ));
        }
        if u.state == UnixState::Connected
            && u.peer.is_none()
            && !u.peer_closed
            && !all.values().any(|(_, l, _)| l.pending.contains(&u.ino))
        {
            return Err(refuse(u, "it is connected but names no peer"));
        }
        for client in &u.pending {
            if !all.contains_key(client) {
                return Err(refuse(
                    u,
                    &format!(
                        "the client socket:[{client}] waiting in its backlog is not in the image"
                    ),
                ));
            }
            if u.name.is_none() {
                return Err(refuse(
                    u,
                    "it has connections waiting but no name to connect them to",
                ));
            }
        }
    }
    Ok(())
}

fn sys(u: &UnixSocket, what: &str) -> Error {
    Error::sys(
        format!("unix socket socket:[{}]: {what}", u.ino),
        Errno::last(),
    )
}

fn sock_type(kind: UnixType) -> i32 {
    match kind {
        UnixType::Stream => libc::SOCK_STREAM,
        UnixType::Dgram => libc::SOCK_DGRAM,
        UnixType::Seqpacket => libc::SOCK_SEQPACKET,
    }
}

fn new_socket(u: &UnixSocket) -> Result<OwnedFd> {
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, sock_type(u.kind) | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys(u, "socket"));
    }
    // SAFETY: the fd was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_un` for `name` and its length.
fn sockaddr(name: &UnixName) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, extra): (Vec<u8>, usize) = match name {
        UnixName::Path { path, .. } => (path.0.clone(), 1),
        UnixName::Abstract(blob) => {
            let mut b = vec![0u8];
            b.extend_from_slice(&blob.0);
            (b, 0)
        }
    };
    if bytes.len() + extra > addr.sun_path.len() {
        return None;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(&bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + extra;
    Some((addr, len as libc::socklen_t))
}

fn path_of(name: &UnixName) -> Option<CString> {
    match name {
        UnixName::Path { path, .. } => CString::new(path.0.clone()).ok(),
        UnixName::Abstract(_) => None,
    }
}

/// Binds `fd` to `name`, removing a stale socket file at the path first.
fn bind(u: &UnixSocket, fd: &OwnedFd, name: &UnixName) -> Result<()> {
    let (addr, len) = sockaddr(name).ok_or_else(|| refuse(u, "its name is too long"))?;
    if let Some(path) = path_of(name) {
        // SAFETY: an all-zero stat is valid; lstat writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: lstat with a NUL-terminated path and a live stat.
        if unsafe { libc::lstat(path.as_ptr(), &mut st) } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
        {
            // SAFETY: unlink with a NUL-terminated path.
            unsafe { libc::unlink(path.as_ptr()) };
        }
    }
    // SAFETY: bind reads `len` bytes of a live sockaddr_un.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(sys(u, &format!("binding to {}", show(name))));
    }
    Ok(())
}

fn connect(u: &UnixSocket, fd: &OwnedFd, name: &UnixName) -> Result<()> {
    let (addr, len) = sockaddr(name).ok_or_else(|| refuse(u, "its peer's name is too long"))?;
    // SAFETY: connect reads `len` bytes of a live sockaddr_un.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(sys(u, &format!("connecting to {}", show(name))));
    }
    Ok(())
}

/// [`connect`] as `cred` (the accepted side's `SO_PEERCRED`).
fn connect_as(
    peers: &mut Peers,
    u: &UnixSocket,
    fd: &OwnedFd,
    name: &UnixName,
    cred: Option<UnixCred>,
) -> Result<()> {
    let (addr, len) = sockaddr(name).ok_or_else(|| refuse(u, "its peer's name is too long"))?;
    peers
        .run(cred, Op::Connect(fd.as_raw_fd(), addr, len))
        .map(|_| ())
        .map_err(|e| {
            Error::sys(
                format!(
                    "unix socket socket:[{}]: connecting to {}",
                    u.ino,
                    show(name)
                ),
                e,
            )
        })
}

fn show(name: &UnixName) -> String {
    match name {
        UnixName::Path { path, .. } => path.to_string(),
        UnixName::Abstract(b) => format!("@{}", String::from_utf8_lossy(&b.0)),
    }
}

fn unlink(name: &UnixName) {
    if let Some(path) = path_of(name) {
        // SAFETY: unlink with a NUL-terminated path.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// A connected stream or seqpacket pair: a client (bound to `own` first,
/// if given) connected to a temporary listener bound to `name`; returns
/// (client, accepted), and the accepted socket carries `name`.
fn connect_named(
    peers: &mut Peers,
    a: &UnixSocket,
    own: Option<&UnixName>,
    b: &UnixSocket,
    name: &UnixName,
) -> Result<(OwnedFd, OwnedFd)> {
    let client = new_socket(a)?;
    if let Some(own) = own {
        bind(a, &client, own)?;
    }
    let listener = new_socket(b)?;
    bind(b, &listener, name)?;
    // The client's SO_PEERCRED comes from the listen, the accepted side's
    // from the connect.
    listen_as(peers, b, &listener, 1, a.peer_cred)?;
    let connected = connect_as(peers, a, &client, name, b.peer_cred);
    let accepted = connected.and_then(|()| {
        // SAFETY: accept4 on our listener with null address pointers.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(sys(b, "accepting from a temporary socket"));
        }
        // SAFETY: accept4 returned a new fd that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    drop(listener);
    unlink(name);
    Ok((client, accepted?))
}

/// A socketpair made as the recorded peer of `u` (both ends name the
/// process that makes the pair).
fn socketpair(peers: &mut Peers, u: &UnixSocket) -> Result<(OwnedFd, OwnedFd)> {
    let fds = peers
        .run(
            u.peer_cred,
            Op::Socketpair(sock_type(u.kind) | libc::SOCK_CLOEXEC),
        )
        .map_err(|e| Error::sys(format!("unix socket socket:[{}]: socketpair", u.ino), e))?;
    // SAFETY: socketpair returned two new fds (in this fd table) that we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `listen(fd, backlog)` as `cred`: the socket's own `SO_PEERCRED`, and
/// that of every client connecting to it, name them.
fn listen_as(
    peers: &mut Peers,
    u: &UnixSocket,
    fd: &OwnedFd,
    backlog: i32,
    cred: Option<UnixCred>,
) -> Result<()> {
    peers
        .run(cred, Op::Listen(fd.as_raw_fd(), backlog))
        .map(|_| ())
        .map_err(|e| Error::sys(format!("unix socket socket:[{}]: listen", u.ino), e))
}

/// A call that sets peer credentials, on descriptors of PID 1's table.
#[derive(Clone, Copy)]
enum Op {
    Socketpair(i32),
    Listen(RawFd, i32),
    Connect(RawFd, libc::sockaddr_un, libc::socklen_t),
}

impl Op {
    /// Makes the call; up to two new descriptors back.
    fn call(&self) -> std::result::Result<[RawFd; 2], Errno> {
        match *self {
            Op::Socketpair(ty) => {
                let mut fds = [0; 2];
                // SAFETY: socketpair writes two fds into the array.
                let rc = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
                Errno::result(rc).map(|_| fds)
            }
            Op::Listen(fd, backlog) => {
                // SAFETY: listen takes plain integers.
                Errno::result(unsafe { libc::listen(fd, backlog) }).map(|_| [-1, -1])
            }
            Op::Connect(fd, addr, len) => {
                // SAFETY: connect reads `len` bytes of a live sockaddr_un.
                let rc =
                    unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
                Errno::result(rc).map(|_| [-1, -1])
            }
        }
    }
}

/// Switches the effective uid and gid to `cred`'s, with every permitted
/// capability still effective (the kernel clears them on the switch), so
/// the call made next can bind and connect anywhere as before.
fn take_ids(uid: u32, gid: u32) -> std::result::Result<(), Errno> {
    // SAFETY: setresgid/setresuid take plain integers; -1 keeps an id.
    unsafe {
        Errno::result(libc::setresuid(u32::MAX, 0, u32::MAX))?;
        Errno::result(libc::setresgid(u32::MAX, gid, u32::MAX))?;
        Errno::result(libc::setresuid(u32::MAX, uid, u32::MAX))?;
    }
    let permitted = caps::read(None, caps::CapSet::Permitted).map_err(|_| Errno::EPERM)?;
    caps::set(None, caps::CapSet::Effective, &permitted).map_err(|_| Errno::EPERM)
}

/// One helper: a process with a recorded peer's pid sharing PID 1's
/// descriptor table, making calls as they come on its command pipe.
struct Helper {
    pid: nix::unistd::Pid,
    /// The command pipe (PID 1 writes [1], the helper reads [0]) and the
    /// results pipe (the helper writes [1], PID 1 reads [0]): one set of
    /// descriptors in the shared table.
    commands: [RawFd; 2],
    results: [RawFd; 2],
}

/// A command: uid, gid, op (tag, two ints, a sockaddr_un and its length).
const COMMAND: usize = 4 * 5 + std::mem::size_of::<libc::sockaddr_un>() + 4;

fn encode(uid: u32, gid: u32, op: &Op) -> [u8; COMMAND] {
    let mut b = [0u8; COMMAND];
    let (tag, x, y, addr, len) = match *op {
        Op::Socketpair(ty) => (0u32, ty, 0, None, 0),
        Op::Listen(fd, backlog) => (1, fd, backlog, None, 0),
        Op::Connect(fd, addr, len) => (2, fd, 0, Some(addr), len),
    };
    for (i, w) in [uid, gid, tag, x as u32, y as u32].iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if let Some(addr) = addr {
        // SAFETY: a sockaddr_un is plain bytes; reading it as such is sound.
        let raw = unsafe {
            std::slice::from_raw_parts(
                (&addr as *const libc::sockaddr_un).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_un>(),
            )
        };
        b[20..20 + raw.len()].copy_from_slice(raw);
    }
    b[COMMAND - 4..].copy_from_slice(&len.to_ne_bytes());
    b
}

fn decode(b: &[u8; COMMAND]) -> (u32, u32, Op) {
    let w = |i: usize| u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
    let (x, y) = (w(3) as i32, w(4) as i32);
    let op = match w(2) {
        0 => Op::Socketpair(x),
        1 => Op::Listen(x, y),
        _ => {
            // SAFETY: an all-zero sockaddr_un is valid; it is then filled
            // with the bytes encode() took from one.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::sockaddr_un>();
            // SAFETY: writing `size` bytes into the live sockaddr_un.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    b[20..20 + size].as_ptr(),
                    (&mut addr as *mut libc::sockaddr_un).cast::<u8>(),
                    size,
                )
            };
            let len = u32::from_ne_bytes([
                b[COMMAND - 4],
                b[COMMAND - 3],
                b[COMMAND - 2],
                b[COMMAND - 1],
            ]);
            Op::Connect(x, addr, len)
        }
    };
    (w(0), w(1), op)
}

fn read_full(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: read into the live rest of the buffer.
        let n = unsafe { libc::read(fd, buf[at..].as_mut_ptr().cast(), buf.len() - at) };
        if n <= 0 {
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return false;
        }
        at += n as usize;
    }
    true
}

fn write_full(fd: RawFd, buf: &[u8]) -> bool {
    // SAFETY: write from a live buffer; pipe writes this small are atomic.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) == buf.len() as isize }
}

/// The helpers of one restore, by pid; all gone (reaped) before any husk
/// is made, so their pids are free for the restored processes.
#[derive(Default)]
struct Peers {
    helpers: HashMap<i32, Helper>,
    /// `kernel.pid_max`, read once.
    pid_max: Option<i32>,
}

impl Peers {
    /// Makes `op` as the process `cred` names (see the module doc).
    /// `None`: PID 1 as it is.
    fn run(&mut self, cred: Option<UnixCred>, op: Op) -> std::result::Result<[RawFd; 2], Errno> {
        let Some(cred) = cred else {
            return op.call();
        };
        // A pid this PID namespace cannot give (0: unknown at checkpoint):
        // PID 1 with the recorded ids.
        let pid_max = *self.pid_max.get_or_insert_with(|| {
            std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .unwrap_or(32768)
        });
        if cred.pid <= 1 || cred.pid >= pid_max {
            // SAFETY: geteuid/getegid take no arguments.
            let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
            take_ids(cred.uid, cred.gid)?;
            let out = op.call();
            // SAFETY: as in take_ids; the saved uid is still 0, so the old
            // effective ids (and capabilities) come back.
            unsafe {
                Errno::result(libc::setresuid(u32::MAX, euid, u32::MAX))?;
                Errno::result(libc::setresgid(u32::MAX, egid, u32::MAX))?;
            }
            return out;
        }
        let h = match self.helpers.entry(cred.pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(spawn(cred.pid)?),
        };
        if !write_full(h.commands[1], &encode(cred.uid, cred.gid, &op)) {
            return Err(Errno::EPIPE);
        }
        let mut msg = [0u8; 12];
        if !read_full(h.results[0], &mut msg) {
            return Err(Errno::EPIPE);
        }
        let word = |i: usize| i32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        match word(0) {
            0 => Ok([word(4), word(8)]),
            e => Err(Errno::from_raw(e)),
        }
    }

    /// Ends every helper and reaps it.
    fn finish(&mut self) -> Result<()> {
        let mut first = None;
        for (pid, h) in self.helpers.drain() {
            // SAFETY: closing the command pipe's only write end: the
            // helper reads EOF and exits.
            unsafe { libc::close(h.commands[1]) };
            if let Err(e) = nix::sys::wait::waitpid(h.pid, None) {
                first.get_or_insert(Error::sys(format!("reaping the peer helper {pid}"), e));
            }
            // SAFETY: the helper is gone; closing the rest of its pipes.
            unsafe {
                libc::close(h.commands[0]);
                libc::close(h.results[0]);
                libc::close(h.results[1]);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Forks a helper with pid `pid` sharing this descriptor table.
fn spawn(pid: i32) -> std::result::Result<Helper, Errno> {
    let mut commands = [0; 2];
    let mut results = [0; 2];
    // SAFETY: pipe2 writes two fds into each array.
    unsafe {
        Errno::result(libc::pipe2(commands.as_mut_ptr(), libc::O_CLOEXEC))?;
        if let Err(e) = Errno::result(libc::pipe2(results.as_mut_ptr(), libc::O_CLOEXEC)) {
            libc::close(commands[0]);
            libc::close(commands[1]);
            return Err(e);
        }
    }
    // SAFETY: PID 1 of a restore is single-threaded; the child only makes
    // plain syscalls and _exits (it shares the fd table: it closes nothing
    // and runs no destructor).
    match unsafe { crate::clone3::fork_into(libc::CLONE_FILES, Some(pid)) } {
        Ok(crate::clone3::Cloned::Child) => {
            let mut cmd = [0u8; COMMAND];
            let mut ids = None;
            while read_full(commands[0], &mut cmd) {
                let (uid, gid, op) = decode(&cmd);
                let mut msg = [0u8; 12];
                let switched = if ids == Some((uid, gid)) {
                    Ok(())
                } else {
                    take_ids(uid, gid).inspect(|()| ids = Some((uid, gid)))
                };
                match switched.and_then(|()| op.call()) {
                    Ok(fds) => {
                        msg[4..8].copy_from_slice(&fds[0].to_ne_bytes());
                        msg[8..12].copy_from_slice(&fds[1].to_ne_bytes());
                    }
                    Err(e) => msg[..4].copy_from_slice(&(e as i32).to_ne_bytes()),
                }
                if !write_full(results[1], &msg) {
                    break;
                }
            }
            // SAFETY: _exit leaves at once, closing nothing of the table.
            unsafe { libc::_exit(0) }
        }
        Ok(crate::clone3::Cloned::Parent(child)) => Ok(Helper {
            pid: child,
            commands,
            results,
        }),
        Err(e) => {
            // SAFETY: closing the fds we made.
            unsafe {
                for fd in commands.iter().chain(results.iter()) {
                    libc::close(*fd);
                }
            }
            Err(e)
        }
    }
}

fn set_int(u: &UnixSocket, fd: &OwnedFd, opt: i32, v: i32, what: &str) -> Result<()> {
    // SAFETY: setsockopt reads one int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(sys(u, what));
    }
    Ok(())
}

/// Buffer sizes: the forced variants (CAP_NET_ADMIN) go past
/// `wmem_max`/`rmem_max`; the plain ones are the fallback. The kernel
/// doubles what it is given, so half of what getsockopt said is set.
fn set_buffers(u: &UnixSocket, fd: &OwnedFd) -> Result<()> {
    for (force, plain, v, what) in [
        (
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            u.sndbuf,
            "setting SO_SNDBUF",
        ),
        (
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            u.rcvbuf,
            "setting SO_RCVBUF",
        ),
    ] {
        let v = (v / 2).min(i32::MAX as u32) as i32;
        if v == 0 {
            continue;
        }
        if set_int(u, fd, force, v, what).is_err() {
            set_int(u, fd, plain, v, what)?;
        }
    }
    Ok(())
}

/// Sends `u`'s queue into it from `from` (connected to it) or, with
/// `to`, from an unconnected socket to that name.
fn refill(u: &UnixSocket, from: &OwnedFd, to: Option<&UnixName>) -> Result<()> {
    let addr = match to {
        Some(name) => Some(sockaddr(name).ok_or_else(|| refuse(u, "its name is too long"))?),
        None => None,
    };
    for msg in &u.queue {
        let mut data = &msg.0[..];
        loop {
            let (ptr, plen) = match &addr {
                Some((a, l)) => ((a as *const libc::sockaddr_un).cast::<libc::sockaddr>(), *l),
                None => (std::ptr::null(), 0),
            };
            // SAFETY: sendto reads `data` and, when given, `plen` bytes of a
            // live sockaddr_un.
            let n = unsafe {
                libc::sendto(
                    from.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ptr,
                    plen,
                )
            };
            if n < 0 {
                return Err(sys(
                    u,
                    &format!("writing back its queue ({} bytes left)", data.len()),
                ));
            }
            if u.kind != UnixType::Stream {
                break;
            }
            data = &data[n as usize..];
            if data.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// Creates every unix socket of the image; returns the fd of each by file
/// id (the caller owns them).
pub fn open_all(image: &LoadedImage) -> Result<HashMap<FileId, RawFd>> {
    let all = sockets(image);
    let mut peers = Peers::default();
    let mut fds: HashMap<u64, OwnedFd> = HashMap::new();
    // The other end of a pair whose peer was closed, until the refill.
    let mut ghosts: HashMap<u64, OwnedFd> = HashMap::new();
    // Names of listening (or otherwise bound, unpaired) sockets bind last;
    // names of accepted sockets are those of their listener.
    let mut paired: HashSet<u64> = HashSet::new();

    // 1. Connected pairs.
    for (ino, (_, u, _)) in &all {
        if paired.contains(ino) {
            continue;
        }
        let mutual = u
            .peer
            .and_then(|p| all.get(&p))
            .filter(|(_, p, _)| p.peer == Some(*ino));
        if let Some((_, p, _)) = mutual {
            let (a, b) = match (&u.name, &p.name) {
                (None, None) => socketpair(&mut peers, u)?,
                (_, Some(name)) if u.kind != UnixType::Dgram => {
                    connect_named(&mut peers, u, u.name.as_ref(), p, name)?
                }
                (Some(name), None) if u.kind != UnixType::Dgram => {
                    let (pb, ua) = connect_named(&mut peers, p, None, u, name)?;
                    (ua, pb)
                }
                _ => {
                    // Datagram sockets, at least one named: a socketpair
                    // bound afterwards (binding does not touch the link).
                    let (a, b) = socketpair(&mut peers, u)?;
                    if let Some(n) = &u.name {
                        bind(u, &a, n)?;
                    }
                    if let Some(n) = &p.name {
                        bind(p, &b, n)?;
                    }
                    (a, b)
                }
            };
            paired.insert(*ino);
            paired.insert(p.ino);
            fds.insert(*ino, a);
            fds.insert(p.ino, b);
        } else if u.peer_closed {
            let (a, b) = match &u.name {
                None => socketpair(&mut peers, u)?,
                Some(name) => {
                    let (ghost, a) = connect_named(&mut peers, u, None, u, name)?;
                    (a, ghost)
                }
            };
            paired.insert(*ino);
            fds.insert(*ino, a);
            ghosts.insert(*ino, b);
        }
    }
    // Clients waiting in a backlog connect once their listener listens.
    let waiting: HashSet<u64> = all
        .values()
        .flat_map(|(_, u, _)| u.pending.iter().copied())
        .collect();
    // 2. Everything else: bound, listening, unconnected.
    for (ino, (_, u, _)) in &all {
        if paired.contains(ino) || waiting.contains(ino) {
            continue;
        }
        let fd = new_socket(u)?;
        if let Some(name) = &u.name {
            bind(u, &fd, name)?;
        }
        if u.state == UnixState::Listen {
            listen_as(&mut peers, u, &fd, u.backlog as i32, u.peer_cred)?;
        }
        fds.insert(*ino, fd);
    }
    // Every call made as a peer is done: the helpers' pids must be free
    // before the husks are made.
    peers.finish()?;
    // 2b. Connections waiting to be accepted, in their backlog's order.
    for (_, l, _) in all.values() {
        for client in &l.pending {
            let Some((_, c, _)) = all.get(client) else {
                continue;
            };
            let name = l
                .name
                .as_ref()
                .ok_or_else(|| refuse(l, "it has connections waiting but no name"))?;
            let fd = new_socket(c)?;
            if let Some(own) = &c.name {
                bind(c, &fd, own)?;
            }
            connect(c, &fd, name)?;
            fds.insert(*client, fd);
        }
    }
    // 3. One-way datagram links, now that every name is bound.
    for (ino, (_, u, _)) in &all {
        if paired.contains(ino) || waiting.contains(ino) {
            continue;
        }
        if let Some((_, p, _)) = u.peer.and_then(|p| all.get(&p)) {
            let name = p
                .name
                .as_ref()
                .ok_or_else(|| refuse(u, "its peer has no name to connect to"))?;
            connect(u, &fds[ino], name)?;
        }
    }
    // 4. Queues, from the peer (or a stranger, to the name).
    for (ino, (_, u, _)) in &all {
        set_buffers(u, &fds[ino])?;
    }
    for (ino, (_, u, _)) in &all {
        if u.queue.is_empty() {
            continue;
        }
        if let Some(ghost) = ghosts.get(ino) {
            refill(u, ghost, None)?;
            continue;
        }
        let partner = u
            .peer
            .filter(|p| all.get(p).is_some_and(|(_, p, _)| p.peer == Some(*ino)));
        match (partner, &u.name) {
            (Some(p), _) => refill(u, &fds[&p], None)?,
            (None, Some(name)) if u.kind == UnixType::Dgram => {
                let stranger = new_socket(u)?;
                refill(u, &stranger, Some(name))?;
            }
            _ => return Err(refuse(u, "nothing can send its queued data back to it")),
        }
    }
    drop(ghosts);
    // 5. Shutdown states, names removed since, files, flags.
    for (ino, (_, u, flags)) in &all {
        let fd = &fds[ino];
        let how = match u.shutdown & 3 {
            1 => Some(libc::SHUT_RD),
            2 => Some(libc::SHUT_WR),
            3 => Some(libc::SHUT_RDWR),
            _ => None,
        };
        if let Some(how) = how {
            if !u.peer_closed {
                // SAFETY: shutdown on a socket we own.
                if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
                    return Err(sys(u, "shutdown"));
                }
            }
        }
        if let Some(
            name @ UnixName::Path {
                unlinked,
                mode,
                uid,
                gid,
                ..
            },
        ) = &u.name
        {
            if *unlinked {
                if !paired.contains(ino) {
                    unlink(name);
                }
            } else if let Some(path) = path_of(name) {
                if !paired.contains(ino) {
                    // SAFETY: chmod/lchown with a NUL-terminated path.
                    unsafe {
                        libc::chmod(path.as_ptr(), *mode as libc::mode_t);
                        libc::lchown(path.as_ptr(), *uid, *gid);
                    }
                }
            }
        }
        if u.pass_cred {
            set_int(u, fd, libc::SO_PASSCRED, 1, "setting SO_PASSCRED")?;
        }
        if flags & libc::O_NONBLOCK as u32 != 0 {
            // SAFETY: F_SETFL on a socket we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        }
    }
    let mut out = HashMap::new();
    for (ino, fd) in fds {
        if let Some((id, _, _)) = all.get(&ino) {
            out.insert(*id, fd.into_raw_fd());
        }
    }
    Ok(out)
}

//! Unix domain sockets at checkpoint: what each one is, who its peer is and
//! what is queued in it.
//!
//! ```text
//!  /proc/PID/fd/N ── xattr system.sockprotoname = "UNIX*" ──▶ claimed (files::REGISTRY)
//!
//!  unix_diag (NETLINK_SOCK_DIAG, opened inside the container's network
//!  namespace): every unix socket of the namespace with its type, state,
//!  name, bound file, peer inode, pending connections (icons), queue
//!  lengths and shutdown state
//!        │
//!        ├─ check (survey, before and after the freeze): every peer is a
//!        │  socket of the container, a connection waiting in a backlog
//!        │  comes from a client of the container that sent nothing yet,
//!        │  no descriptor is in flight (SCM_RIGHTS), names are absolute
//!        │  paths or abstract
//!        └─ collect (frozen): one UnixSocket record per socket, all from
//!           one dump made for the frozen window
//!
//!  queued data: pidfd_getfd hands us a duplicate of the socket (the same
//!  socket, not a copy); SO_PEEK_OFF = 0 and recvmsg(MSG_PEEK) walk the
//!  receive queue message by message without consuming it (MSG_TRUNC says a
//!  message continues in the next peek), then SO_PEEK_OFF is put back.
//! ```
//!
//! Data a socket has sent sits in its peer's receive queue (unix sockets
//! have no send queue of their own), so each socket's receive queue is all
//! there is to keep.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use cr_formats::schema::{
    Blob, ByteString, FileKind, UnixCred, UnixName, UnixSocket, UnixState, UnixType,
};

use crate::dump::files::FdObject;
use crate::dump::procfs;
use crate::dump::DumpError;

/// Whether a descriptor is a unix domain socket: sockfs names the protocol
/// in the `system.sockprotoname` attribute ("UNIX", "UNIX-STREAM").
pub fn is_unix(o: &FdObject) -> bool {
    if !o.meta.file_type().is_socket() {
        return false;
    }
    let Ok(path) = CString::new(format!("/proc/{}/fd/{}", o.pid, o.entry.fd)) else {
        return false;
    };
    let mut buf = [0u8; 32];
    // SAFETY: getxattr writes at most buf.len() bytes into buf; both
    // strings are NUL-terminated.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n > 0 && buf[..n as usize].starts_with(b"UNIX")
}

/// What unix_diag says about one socket.
#[derive(Debug, Clone, Default)]
pub struct Diag {
    pub ino: u64,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: u8,
    /// `TCP_ESTABLISHED` (1), `TCP_CLOSE` (7) or `TCP_LISTEN` (10).
    pub state: u8,
    /// The raw `sun_path` bytes (abstract names start with NUL).
    pub name: Option<Vec<u8>>,
    /// Inode of the bound socket file.
    pub vfs_ino: Option<u32>,
    pub peer: Option<u32>,
    /// The peers (clients) of connections waiting to be accepted.
    pub icons: Vec<u32>,
    /// (receive queue, send queue / backlog).
    pub rqlen: (u32, u32),
    pub shutdown: u8,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

fn diag_err(pid: i32, what: &str, e: impl std::fmt::Display) -> DumpError {
    DumpError::Parse {
        pid,
        path: format!("/proc/{pid}/ns/net").into(),
        message: format!("unix_diag: {what}: {e}"),
    }
}

/// A NETLINK_SOCK_DIAG socket in the network namespace of `host_pid`: a
/// helper thread enters the namespace and creates it there (a netlink
/// socket answers for the namespace it was created in).
fn diag_socket(host_pid: i32) -> Result<OwnedFd, DumpError> {
    let ns_path = format!("/proc/{host_pid}/ns/net");
    let ns = fs::File::open(&ns_path).map_err(|e| DumpError::proc(host_pid, &ns_path, e))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd, DumpError> {
            // SAFETY: setns on this helper thread only, with an fd we hold.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(diag_err(
                    host_pid,
                    "entering the network namespace",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: socket takes plain integers and returns a new fd or -1.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if fd < 0 {
                return Err(diag_err(
                    host_pid,
                    "opening a NETLINK_SOCK_DIAG socket",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: the fd was just created and nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .unwrap_or_else(|_| Err(diag_err(host_pid, "helper thread", "panicked")))
    })
}

/// Every unix socket of `host_pid`'s network namespace, by inode (one
/// dump of the whole namespace: the survey's check of every socket).
pub fn diag_all(host_pid: i32) -> Result<HashMap<u64, Diag>, DumpError> {
    let sock = diag_socket(host_pid)?;
    diag_request(&sock, host_pid)
}

/// The answer of one dump, shared by every socket collected while the
/// container is frozen (nothing changes meanwhile): a dump per socket made
/// the collection quadratic (3.8 ms per socket among 2,000). Keyed by the
/// network namespace's (device, inode); [`forget_diags`] drops it when a
/// frozen window begins and ends.
static DIAGS: std::sync::Mutex<Option<(NetnsKey, Diags)>> = std::sync::Mutex::new(None);

/// A network namespace's (device, inode).
type NetnsKey = (u64, u64);
/// One dump's answer, shared.
type Diags = std::sync::Arc<HashMap<u64, Diag>>;

/// Drops the dump [`collect`] keeps for the frozen window.
pub fn forget_diags() {
    if let Ok(mut cached) = DIAGS.lock() {
        *cached = None;
    }
}

/// The frozen window's dump of `host_pid`'s namespace, made once.
fn frozen_diags(host_pid: i32) -> Result<Diags, DumpError> {
    let ns_path = format!("/proc/{host_pid}/ns/net");
    let ns = fs::metadata(&ns_path).map_err(|e| DumpError::proc(host_pid, &ns_path, e))?;
    let key = (ns.dev(), ns.ino());
    let mut cached = DIAGS
        .lock()
        .map_err(|_| diag_err(host_pid, "the frozen dump", "a poisoned lock"))?;
    match cached.as_ref() {
        Some((k, diags)) if *k == key => Ok(diags.clone()),
        _ => {
            let diags = std::sync::Arc::new(diag_all(host_pid)?);
            *cached = Some((key, diags.clone()));
            Ok(diags)
        }
    }
}

/// Sends one unix_diag dump request on `sock` and reads every answer.
fn diag_request(sock: &OwnedFd, host_pid: i32) -> Result<HashMap<u64, Diag>, DumpError> {
    // struct nlmsghdr (16) + struct unix_diag_req (24)
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_DUMP;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(flags as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN)
            .to_ne_bytes(),
    );
    // No cookie (INET_DIAG_NOCOOKIE).
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: send from a live buffer on our socket.
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n != req.len() as isize {
        return Err(diag_err(
            host_pid,
            "sending the request",
            std::io::Error::last_os_error(),
        ));
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv into a live buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(diag_err(host_pid, "reading the answer", e));
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32_at(msgs, 0) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < 16 || len > msgs.len() {
                return Err(diag_err(host_pid, "answer", "a truncated netlink message"));
            }
            match kind {
                x if x == libc::NLMSG_DONE as u16 => return Ok(out),
                x if x == libc::NLMSG_ERROR as u16 => {
                    let errno = if len >= 20 {
                        -(u32_at(msgs, 16) as i32)
                    } else {
                        0
                    };
                    return Err(diag_err(
                        host_pid,
                        "the kernel refused the request",
                        std::io::Error::from_raw_os_error(errno),
                    ));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(d) = parse_diag(&msgs[16..len]) {
                        out.insert(d.ino, d);
                    }
                }
                _ => {}
            }
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

/// Parses one `struct unix_diag_msg` and its attributes.
fn parse_diag(body: &[u8]) -> Option<Diag> {
    if body.len() < 16 {
        return None;
    }
    let mut d = Diag {
        kind: body[1],
        state: body[2],
        ino: u64::from(u32_at(body, 4)),
        ..Diag::default()
    };
    let mut attrs = &body[16..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match kind {
            UNIX_DIAG_NAME => d.name = Some(data.to_vec()),
            UNIX_DIAG_VFS => d.vfs_ino = Some(u32_at(data, 0)),
            UNIX_DIAG_PEER => d.peer = Some(u32_at(data, 0)),
            UNIX_DIAG_ICONS => d.icons = data.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN => d.rqlen = (u32_at(data, 0), u32_at(data, 4)),
            UNIX_DIAG_SHUTDOWN => d.shutdown = data.first().copied().unwrap_or(0),
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(d)
}

/// The socket inode named by a `socket:[N]` fd target.
pub fn socket_ino(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A duplicate of descriptor `fd` of `host_pid` (the same open file).
fn take_fd(host_pid: i32, fd: i32) -> Result<OwnedFd, DumpError> {
    let proc_err =
        |e: std::io::Error| DumpError::proc(host_pid, format!("/proc/{host_pid}/fd/{fd}"), e);
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, host_pid, 0) };
    if pidfd < 0 {
        return Err(proc_err(std::io::Error::last_os_error()));
    }
    // SAFETY: the pidfd was just created and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(proc_err(std::io::Error::last_os_error()));
    }
    // SAFETY: pidfd_getfd returned a new fd (close-on-exec) that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

fn getsockopt_int(fd: &OwnedFd, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn setsockopt_int(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt reads one int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Why a queue could not be read.
#[derive(Debug)]
pub enum QueueProblem {
    /// A message carries descriptors (SCM_RIGHTS).
    InFlightFds(usize),
    /// A zero-length datagram, which a peek cannot step over.
    EmptyMessage,
    Io(std::io::Error),
}

/// The receive queue of `sock`, message by message, read with MSG_PEEK
/// (nothing is consumed). `stream`: the bytes are one run, not messages.
pub fn peek_queue(sock: &OwnedFd, stream: bool) -> Result<Vec<Vec<u8>>, QueueProblem> {
    let old_off =
        getsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(QueueProblem::Io)?;
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(QueueProblem::Io)?;
    let result = peek_all(sock, stream);
    let restored = setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old_off);
    let queue = result?;
    restored.map_err(QueueProblem::Io)?;
    Ok(queue)
}

fn peek_all(sock: &OwnedFd, stream: bool) -> Result<Vec<Vec<u8>>, QueueProblem> {
    let mut queue: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    // Room for the most descriptors one message can carry (SCM_MAX_FD).
    let mut control = vec![0u8; 4096];
    let mut continuing = false;
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: recvmsg writes into the live buffers msg points to.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR) => continue,
                _ => return Err(QueueProblem::Io(e)),
            }
        }
        let fds = close_passed_fds(&msg);
        if fds > 0 {
            return Err(QueueProblem::InFlightFds(fds));
        }
        let n = n as usize;
        if n == 0 {
            if stream || continuing {
                // End of stream (the peer shut down) or of a message.
                if !stream {
                    continuing = false;
                    continue;
                }
                break;
            }
            return Err(QueueProblem::EmptyMessage);
        }
        if stream {
            match queue.first_mut() {
                Some(run) => run.extend_from_slice(&buf[..n]),
                None => queue.push(buf[..n].to_vec()),
            }
            continue;
        }
        if continuing {
            if let Some(last) = queue.last_mut() {
                last.extend_from_slice(&buf[..n]);
            }
        } else {
            queue.push(buf[..n].to_vec());
        }
        continuing = msg.msg_flags & libc::MSG_TRUNC != 0;
    }
    Ok(queue)
}

/// Closes the descriptors an SCM_RIGHTS message installed in this process
/// while it was peeked at; returns how many there were.
fn close_passed_fds(msg: &libc::msghdr) -> usize {
    let mut count = 0;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / 4 {
                    let fd = std::ptr::read_unaligned(data.add(i * 4).cast::<libc::c_int>());
                    libc::close(fd);
                    count += 1;
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    count
}

/// One unix socket descriptor of the container, for [`check`].
pub struct SocketFd<'a> {
    pub host_pid: i32,
    /// PID inside the container.
    pub pid: i32,
    pub comm: &'a str,
    pub fd: i32,
    pub ino: u64,
}

fn refuse(s: &SocketFd, what: String) -> DumpError {
    DumpError::Unsupported {
        pid: s.pid,
        comm: s.comm.to_string(),
        what: format!("fd {} is a unix socket (socket:[{}]) {what}", s.fd, s.ino),
    }
}

/// A user's name for a socket address.
fn show_name(raw: &[u8]) -> String {
    match raw.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(raw)).into_owned(),
    }
}

/// Checks the container's unix sockets as a whole (the survey runs it
/// before and again after the freeze): each is refused, with a sentence
/// naming the process, the fd and the socket, when its peer is outside the
/// container, a connection waits in its backlog from outside or with data
/// already sent, a descriptor is in flight in its queue, or it is bound to
/// a relative path.
pub fn check(sockets: &[SocketFd]) -> Result<(), DumpError> {
    let Some(first) = sockets.first() else {
        return Ok(());
    };
    let diags = diag_all(first.host_pid)?;
    let ours: HashSet<u64> = sockets.iter().map(|s| s.ino).collect();
    for s in sockets {
        let d = diags.get(&s.ino).ok_or_else(|| {
            refuse(
                s,
                "that belongs to another network namespace than the container's".into(),
            )
        })?;
        if let Some(name) = &d.name {
            if name.first() != Some(&0) && name.first() != Some(&b'/') {
                return Err(refuse(
                    s,
                    format!(
                        "bound to the relative path {:?}, whose file cr cannot locate",
                        show_name(name)
                    ),
                ));
            }
        }
        let listener = waiting_in(&diags, s.ino);
        if let Some(l) = listener.filter(|l| !ours.contains(&l.ino)) {
            return Err(refuse(
                s,
                format!(
                    "whose connection waits in the backlog of socket:[{}]{}, which is outside the container; cr cannot move a connection to the outside",
                    l.ino,
                    l.name.as_deref().map(|n| format!(" {}", show_name(n))).unwrap_or_default()
                ),
            ));
        }
        if listener.is_some() {
            // Its peer is the embryo in a listener's backlog (which has no
            // inode): the client's connect makes it again, but the data the
            // client already sent sits in the embryo, out of reach.
            let dup = take_fd(s.host_pid, s.fd)?;
            let mut outq: libc::c_int = 0;
            // SAFETY: SIOCOUTQ writes one int into a live local.
            let rc = unsafe { libc::ioctl(dup.as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
            if rc == 0 && outq > 0 {
                return Err(refuse(
                    s,
                    format!("whose connection waits in a listening socket's backlog with data already sent into it ({outq} bytes of buffers); cr cannot read data from a connection not accepted yet"),
                ));
            }
        } else if let Some(peer) = d.peer.filter(|p| *p != 0) {
            if !ours.contains(&u64::from(peer)) {
                let name = diags
                    .get(&u64::from(peer))
                    .and_then(|p| p.name.as_deref())
                    .map(|n| format!(" {}", show_name(n)))
                    .unwrap_or_default();
                return Err(refuse(
                    s,
                    format!(
                        "connected to socket:[{peer}]{name}, which is outside the container (another process or the host); cr cannot move a connection to the outside"
                    ),
                ));
            }
        } else if d.peer == Some(0)
            && d.state == TCP_ESTABLISHED
            && i32::from(d.kind) != libc::SOCK_DGRAM
            && d.shutdown & 3 != 3
        {
            // A peer without an inode that is not closed (closing sets
            // both shutdown bits on the survivor): a connection waiting in
            // the backlog of a listener this namespace does not show.
            return Err(refuse(
                s,
                "whose connection waits to be accepted by a listening socket outside the container; cr cannot move a connection to the outside".into(),
            ));
        }
        if d.state == TCP_LISTEN {
            if let Some(client) = d.icons.iter().find(|c| !ours.contains(&u64::from(**c))) {
                return Err(refuse(
                    s,
                    format!(
                        "listening{} with a connection waiting to be accepted from {}, which is outside the container or closed; cr cannot move it",
                        d.name.as_deref().map(|n| format!(" on {}", show_name(n))).unwrap_or_default(),
                        if *client == 0 { "a client".to_string() } else { format!("socket:[{client}]") }
                    ),
                ));
            }
            if !d.icons.is_empty() && d.name.is_none() {
                return Err(refuse(
                    s,
                    "listening without a name, with connections waiting: cr cannot connect them again".into(),
                ));
            }
        }
        if d.state != TCP_LISTEN {
            let dup = take_fd(s.host_pid, s.fd)?;
            match peek_queue(&dup, i32::from(d.kind) == libc::SOCK_STREAM) {
                Ok(_) => {}
                Err(QueueProblem::InFlightFds(n)) => {
                    return Err(refuse(
                        s,
                        format!("with {n} file descriptor(s) in flight in its queue (SCM_RIGHTS); cr cannot move descriptors in flight"),
                    ))
                }
                Err(QueueProblem::EmptyMessage) => {
                    return Err(refuse(
                        s,
                        "with a zero-length message queued, which cr cannot read back".into(),
                    ))
                }
                Err(QueueProblem::Io(e)) => {
                    return Err(DumpError::proc(
                        s.host_pid,
                        format!("/proc/{}/fd/{} (peeking its queue)", s.host_pid, s.fd),
                        e,
                    ))
                }
            }
        }
    }
    Ok(())
}

/// The listening socket in whose backlog client `ino` waits, if any.
fn waiting_in(diags: &HashMap<u64, Diag>, ino: u64) -> Option<&Diag> {
    diags
        .values()
        .find(|l| l.state == TCP_LISTEN && l.icons.contains(&(ino as u32)))
}

/// The record of one unix socket; the container is frozen and [`check`]
/// accepted it.
pub fn collect(o: &FdObject) -> Result<FileKind, DumpError> {
    let host_pid = o.pid;
    let fd = o.entry.fd;
    let ino = socket_ino(&o.entry.target).unwrap_or_else(|| o.meta.ino());
    let diags = frozen_diags(host_pid)?;
    let d = diags.get(&ino).ok_or_else(|| DumpError::Parse {
        pid: host_pid,
        path: format!("/proc/{host_pid}/fd/{fd}").into(),
        message: format!("unix_diag does not know socket:[{ino}]"),
    })?;
    let io = |what: &str, e: std::io::Error| {
        DumpError::proc(host_pid, format!("/proc/{host_pid}/fd/{fd} ({what})"), e)
    };
    let kind = match i32::from(d.kind) {
        libc::SOCK_STREAM => UnixType::Stream,
        libc::SOCK_DGRAM => UnixType::Dgram,
        libc::SOCK_SEQPACKET => UnixType::Seqpacket,
        other => {
            return Err(DumpError::Parse {
                pid: host_pid,
                path: format!("/proc/{host_pid}/fd/{fd}").into(),
                message: format!("unix socket of unknown type {other}"),
            })
        }
    };
    let dup = take_fd(host_pid, fd)?;
    let queue = if d.state == TCP_LISTEN {
        Vec::new()
    } else {
        match peek_queue(&dup, kind == UnixType::Stream) {
            Ok(q) => q,
            Err(QueueProblem::Io(e)) => return Err(io("peeking its queue", e)),
            Err(other) => {
                return Err(DumpError::Parse {
                    pid: host_pid,
                    path: format!("/proc/{host_pid}/fd/{fd}").into(),
                    message: format!("its queue changed under the freeze: {other:?}"),
                })
            }
        }
    };
    let name = match &d.name {
        None => None,
        Some(raw) if raw.first() == Some(&0) => Some(UnixName::Abstract(Blob(raw[1..].to_vec()))),
        Some(raw) => {
            let path = raw.strip_suffix(&[0]).unwrap_or(raw);
            let text = String::from_utf8_lossy(path).into_owned();
            let file = format!("/proc/{host_pid}/root{text}");
            let meta = fs::symlink_metadata(&file)
                .ok()
                .filter(|m| m.file_type().is_socket());
            Some(UnixName::Path {
                path: ByteString(path.to_vec()),
                unlinked: meta.is_none(),
                mode: meta.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o777),
                uid: meta.as_ref().map(|m| m.uid()).unwrap_or(0),
                gid: meta.as_ref().map(|m| m.gid()).unwrap_or(0),
            })
        }
    };
    let waiting = waiting_in(&diags, ino).is_some();
    let peer = d.peer.filter(|p| *p != 0 && !waiting).map(u64::from);
    let state = match d.state {
        TCP_LISTEN => UnixState::Listen,
        TCP_ESTABLISHED if kind != UnixType::Dgram => UnixState::Connected,
        _ => UnixState::Unconnected,
    };
    let peer_closed = state == UnixState::Connected && peer.is_none() && !waiting;
    let peer_cred = if state == UnixState::Connected || state == UnixState::Listen {
        peer_cred(&dup, host_pid)
    } else {
        None
    };
    Ok(FileKind::Unix(UnixSocket {
        ino,
        kind,
        state,
        name,
        peer: if kind == UnixType::Dgram || state == UnixState::Connected {
            peer
        } else {
            None
        },
        peer_closed,
        backlog: if d.state == TCP_LISTEN { d.rqlen.1 } else { 0 },
        pending: if d.state == TCP_LISTEN {
            d.icons.iter().map(|i| u64::from(*i)).collect()
        } else {
            Vec::new()
        },
        shutdown: d.shutdown & 3,
        queue: queue.into_iter().map(Blob).collect(),
        peer_cred,
        pass_cred: getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_PASSCRED)
            .map_err(|e| io("SO_PASSCRED", e))?
            != 0,
        sndbuf: getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(|e| io("SO_SNDBUF", e))? as u32,
        rcvbuf: getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_RCVBUF)
            .map_err(|e| io("SO_RCVBUF", e))? as u32,
    }))
}

/// `SO_PEERCRED`, with the pid and ids as the container sees them.
fn peer_cred(sock: &OwnedFd, host_pid: i32) -> Option<UnixCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the ucred.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 || cred.pid == 0 {
        return None;
    }
    // A peer that has exited leaves its number, which the host may have
    // given to a process elsewhere since: only one in the container's pid
    // namespace is taken for it (0: unknown).
    let same_ns = |a: i32, b: i32| {
        let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        ns(a).is_some() && ns(a) == ns(b)
    };
    let pid = if same_ns(cred.pid, host_pid) {
        procfs::read_status(cred.pid)
            .map(|s| s.pid_in_ns())
            .unwrap_or(0)
    } else {
        0
    };
    let uid_map = procfs::IdMap::read(host_pid, "uid_map").ok()?;
    let gid_map = procfs::IdMap::read(host_pid, "gid_map").ok()?;
    Some(UnixCred {
        pid,
        uid: uid_map.to_inside(cred.uid),
        gid: gid_map.to_inside(cred.gid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(a.len()), 0);
        a
    }

    #[test]
    fn a_unix_diag_message_is_parsed() {
        let mut body = vec![libc::AF_UNIX as u8, libc::SOCK_STREAM as u8, TCP_LISTEN, 0];
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&[0xff; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/run/a.sock\0"));
        body.extend(attr(UNIX_DIAG_PEER, &7u32.to_ne_bytes()));
        let icons: Vec<u8> = [11u32, 12].iter().flat_map(|i| i.to_ne_bytes()).collect();
        body.extend(attr(UNIX_DIAG_ICONS, &icons));
        let rq: Vec<u8> = [2u32, 128].iter().flat_map(|i| i.to_ne_bytes()).collect();
        body.extend(attr(UNIX_DIAG_RQLEN, &rq));
        body.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        let d = parse_diag(&body).expect("parsed");
        assert_eq!(d.ino, 4242);
        assert_eq!(d.state, TCP_LISTEN);
        assert_eq!(d.name.as_deref(), Some(&b"/run/a.sock\0"[..]));
        assert_eq!(d.peer, Some(7));
        assert_eq!(d.icons, vec![11, 12]);
        assert_eq!(d.rqlen, (2, 128));
        assert_eq!(d.shutdown, 3);
        assert_eq!(
            show_name(d.name.as_deref().unwrap_or_default()),
            "/run/a.sock"
        );
        assert_eq!(show_name(b"\0svc"), "@svc");
    }

    #[test]
    fn damaged_diag_messages_do_not_panic() {
        assert!(parse_diag(&[1, 2, 3]).is_none());
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&[200, 0, 1, 0, 9]);
        let d = parse_diag(&body).expect("the header is enough");
        assert!(d.name.is_none());
        assert_eq!(socket_ino("socket:[77]"), Some(77));
        assert_eq!(socket_ino("pipe:[77]"), None);
    }
}

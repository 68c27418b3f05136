//! TCP and UDP sockets (IPv4 and IPv6) at checkpoint.
//!
//! ```text
//! survey (running)     claims(): a dup of the socket (pidfd_getfd) says its
//!                      family, type and TCP state; listening sockets with
//!                      connections waiting to be accepted and connecting
//!                      or closing TCP sockets (a FIN not acknowledged
//!                      yet) are refused (describe()); half-closed ones
//!                      (FIN_WAIT2, CLOSE_WAIT) move like established ones
//! before the freeze   lock_and_drain: with a TCP listener, lock the
//!                      container's netns (crate::netlock) and wait until
//!                      the running processes accepted every queued
//!                      connection (an EarlyLock)
//! frozen window        NetFreeze::begin: lock (unless locked above),
//!                      then TCP_REPAIR on every established connection
//! collect()            per socket: addresses, options; for a connection in
//!                      repair mode its sequences, both queues (peeked),
//!                      MSS, window scaling, SACK, timestamp, window
//! after the dump       --leave-running or failure: NetFreeze::resume
//!                      (repair off, unlock), the connections go on;
//!                      stop: NetFreeze::close_silently after the kill (a
//!                      socket closed in repair mode sends neither FIN nor
//!                      RST; the lock goes with the namespace)
//! ```
//!
//! cr (host root) works on duplicates of the container's sockets taken with
//! `pidfd_getfd`: the same kernel sockets, so no code runs in the container.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

use cr_formats::schema::{
    Blob, FileKind, InetFamily, InetProto, InetSocket, InetState, SocketOptions, TcpConnection,
    TcpWindow,
};
use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};

use crate::dump::files::FdObject;
use crate::dump::DumpError;
use crate::netlock::NetLock;

/// The registry's name for this kind.
pub const KIND_NAME: &str = "TCP/UDP socket";

/// Kernel constants not (all) in libc: `linux/tcp.h`, `linux/sockios.h`.
pub mod sys {
    pub const TCP_REPAIR: i32 = 19;
    pub const TCP_REPAIR_QUEUE: i32 = 20;
    pub const TCP_QUEUE_SEQ: i32 = 21;
    pub const TCP_REPAIR_OPTIONS: i32 = 22;
    pub const TCP_TIMESTAMP: i32 = 24;
    pub const TCP_REPAIR_WINDOW: i32 = 29;
    pub const TCP_NO_QUEUE: i32 = 0;
    pub const TCP_RECV_QUEUE: i32 = 1;
    pub const TCP_SEND_QUEUE: i32 = 2;
    pub const TCPOPT_MSS: u32 = 2;
    pub const TCPOPT_WINDOW: u32 = 3;
    pub const TCPOPT_SACK_PERM: u32 = 4;
    pub const TCPOPT_TIMESTAMP: u32 = 8;
    pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
    pub const TCPI_OPT_SACK: u8 = 2;
    pub const TCPI_OPT_WSCALE: u8 = 4;
    pub const SIOCINQ: u64 = 0x541B;
    pub const SIOCOUTQ: u64 = 0x5411;
    pub const SIOCOUTQNSD: u64 = 0x894B;
    pub const TCP_ESTABLISHED: u8 = 1;
    pub const TCP_FIN_WAIT2: u8 = 5;
    pub const TCP_CLOSE: u8 = 7;
    pub const TCP_CLOSE_WAIT: u8 = 8;
    pub const TCP_LISTEN: u8 = 10;
}

/// `getsockopt` of a plain int.
pub fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the int.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// `getsockopt` into a byte buffer; the length the kernel filled in.
pub fn get_bytes(fd: RawFd, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live buffer.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// `setsockopt` of a plain int.
pub fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    set_bytes(fd, level, name, &v.to_ne_bytes())
}

/// `setsockopt` from a byte buffer.
pub fn set_bytes(fd: RawFd, level: i32, name: i32, v: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt reads `len` bytes from the live buffer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v.as_ptr().cast(),
            v.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An `ioctl` that returns an int (SIOCINQ, SIOCOUTQ...).
fn ioctl_int(fd: RawFd, req: u64) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int to the pointer.
    let rc = unsafe { libc::ioctl(fd, req as _, &mut v as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// A duplicate of descriptor `fd` of host process `pid`.
pub fn take_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new fd nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, an fd number and flags.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd returned a new fd (close-on-exec) nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// What the survey learns about a socket.
struct Probe {
    sock: OwnedFd,
    domain: i32,
    ty: i32,
    protocol: i32,
    /// `tcpi_state`, `tcpi_options`, wscale byte, `tcpi_unacked`,
    /// `tcpi_sacked` (for a listener: accept queue length and backlog).
    tcp: Option<TcpInfo>,
}

#[derive(Clone, Copy)]
struct TcpInfo {
    state: u8,
    options: u8,
    wscale: u8,
    unacked: u32,
    sacked: u32,
}

fn tcp_info(fd: RawFd) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 104];
    let n = get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf)?;
    if n < 32 {
        return Err(io::Error::other("TCP_INFO too short"));
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Ok(TcpInfo {
        state: buf[0],
        options: buf[5],
        wscale: buf[6],
        unacked: word(24),
        sacked: word(28),
    })
}

fn probe(pid: i32, fd: i32) -> io::Result<Probe> {
    let sock = take_fd(pid, fd)?;
    let s = sock.as_raw_fd();
    let domain = get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let ty = get_int(s, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let tcp = if is_inet(domain) && ty == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP {
        Some(tcp_info(s)?)
    } else {
        None
    };
    Ok(Probe {
        sock,
        domain,
        ty,
        protocol,
        tcp,
    })
}

fn is_inet(domain: i32) -> bool {
    domain == libc::AF_INET || domain == libc::AF_INET6
}

impl Probe {
    fn proto(&self) -> Option<InetProto> {
        if !is_inet(self.domain) {
            return None;
        }
        match (self.ty, self.protocol) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Some(InetProto::Tcp),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Some(InetProto::Udp),
            _ => None,
        }
    }

    fn family_name(&self) -> &'static str {
        if self.domain == libc::AF_INET6 {
            "IPv6"
        } else {
            "IPv4"
        }
    }

    /// Why cr cannot move this inet socket, or Ok.
    fn unsupported(&self) -> Result<(), String> {
        let fam = self.family_name();
        let Some(proto) = self.proto() else {
            return Err(format!(
                "an {fam} socket of type {} protocol {}, which is neither TCP nor UDP",
                self.ty, self.protocol
            ));
        };
        let Some(info) = self.tcp else {
            return Ok(());
        };
        debug_assert_eq!(proto, InetProto::Tcp);
        let (local, peer) = (local_addr(&self.sock), peer_addr(&self.sock));
        let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or("-".into());
        match info.state {
            sys::TCP_ESTABLISHED | sys::TCP_CLOSE => Ok(()),
            sys::TCP_FIN_WAIT2 | sys::TCP_CLOSE_WAIT => Ok(()),
            sys::TCP_LISTEN if info.unacked == 0 => Ok(()),
            sys::TCP_LISTEN => Err(format!(
                "a TCP socket listening on {} with {} connection(s) waiting to be accepted; cr does not move an accept queue, accept them first",
                show(local),
                info.unacked
            )),
            state => Err(format!(
                "an {fam} TCP connection {} -> {} in state {}{}",
                show(local),
                show(peer),
                state_name(state),
                match state {
                    2 | 3 => " (connecting)",
                    // FIN_WAIT1, LAST_ACK, CLOSING: a FIN not acknowledged
                    // yet (these pass within the survey's retries).
                    _ => " (closing, its FIN not acknowledged yet)",
                }
            )),
        }
    }
}

/// FIN_WAIT2 or CLOSE_WAIT: one direction closed and acknowledged, the
/// other open; moved in repair mode like an established connection.
fn is_half_closed(state: u8) -> bool {
    state == sys::TCP_FIN_WAIT2 || state == sys::TCP_CLOSE_WAIT
}

fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn local_addr(sock: &OwnedFd) -> Option<SocketAddr> {
    let a = getsockname::<SockaddrStorage>(sock.as_raw_fd()).ok()?;
    let a = to_std(&a)?;
    (a.port() != 0 || !a.ip().is_unspecified()).then_some(a)
}

fn peer_addr(sock: &OwnedFd) -> Option<SocketAddr> {
    let a = getpeername::<SockaddrStorage>(sock.as_raw_fd()).ok()?;
    to_std(&a)
}

/// Whether the registry entry claims this descriptor: an inet socket cr
/// can move.
pub fn claims(o: &FdObject) -> bool {
    o.meta.file_type().is_socket()
        && probe(o.pid, o.entry.fd).is_ok_and(|p| p.proto().is_some() && p.unsupported().is_ok())
}

/// For a refusal: what an inet socket no kind claims is, and why it cannot
/// move; `None` for other sockets.
pub fn describe(o: &FdObject) -> Option<String> {
    let p = probe(o.pid, o.entry.fd).ok()?;
    if !is_inet(p.domain) {
        return None;
    }
    p.unsupported()
        .err()
        .map(|why| format!("{why} ({})", o.entry.target))
}

/// The record of one socket; an established connection must be in repair
/// mode ([`NetFreeze::begin`]).
pub fn collect(o: &FdObject) -> Result<FileKind, DumpError> {
    let (pid, fd) = (o.pid, o.entry.fd);
    let err =
        |what: &str, e: io::Error| DumpError::proc(pid, format!("socket fd {fd} ({what})"), e);
    let p = probe(pid, fd).map_err(|e| err("probing", e))?;
    // A socket that changed since the survey: refused in the frozen
    // window, named as the survey would.
    let status = crate::dump::procfs::read_status(pid).ok();
    let refuse = |what: String| DumpError::Unsupported {
        pid: status.as_ref().map_or(pid, |s| s.pid_in_ns()),
        comm: status.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        what: format!("fd {fd} is {what}, which cr cannot move"),
    };
    p.unsupported().map_err(refuse)?;
    let proto = p
        .proto()
        .ok_or_else(|| refuse("not a TCP or UDP socket".into()))?;
    let s = p.sock.as_raw_fd();
    let int = |level, name, what: &str| get_int(s, level, name).map_err(|e| err(what, e));
    let tcp = proto == InetProto::Tcp;
    let v6 = p.domain == libc::AF_INET6;
    let mut linger = [0u8; 8];
    get_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &mut linger)
        .map_err(|e| err("SO_LINGER", e))?;
    let l_onoff = i32::from_ne_bytes([linger[0], linger[1], linger[2], linger[3]]);
    let l_linger = i32::from_ne_bytes([linger[4], linger[5], linger[6], linger[7]]);
    let options = SocketOptions {
        reuseaddr: int(libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        reuseport: int(libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
        keepalive: int(libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        keepidle: if tcp {
            int(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")?
        } else {
            0
        },
        keepintvl: if tcp {
            int(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")?
        } else {
            0
        },
        keepcnt: if tcp {
            int(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT")?
        } else {
            0
        },
        nodelay: tcp && int(libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY")? != 0,
        sndbuf: int(libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF")?,
        rcvbuf: int(libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")?,
        linger: (l_onoff != 0).then_some(l_linger),
        v6only: v6 && int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0,
        broadcast: int(libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST")? != 0,
    };
    let state = match p.tcp {
        Some(info) if info.state == sys::TCP_LISTEN => InetState::Listen {
            backlog: info.sacked,
        },
        Some(info) if info.state == sys::TCP_ESTABLISHED => {
            InetState::Established(connection(s, info).map_err(|(what, e)| err(what, e))?)
        }
        Some(info) if is_half_closed(info.state) => InetState::HalfClosed {
            connection: connection(s, info).map_err(|(what, e)| err(what, e))?,
            fin_sent: info.state == sys::TCP_FIN_WAIT2,
            fin_received: info.state == sys::TCP_CLOSE_WAIT,
        },
        _ => InetState::Idle,
    };
    Ok(FileKind::Inet(InetSocket {
        family: if v6 { InetFamily::V6 } else { InetFamily::V4 },
        proto,
        local: local_addr(&p.sock),
        peer: peer_addr(&p.sock),
        state,
        options,
    }))
}

/// Reads an established connection in repair mode.
fn connection(s: RawFd, info: TcpInfo) -> Result<TcpConnection, (&'static str, io::Error)> {
    let tcp = libc::IPPROTO_TCP;
    let select =
        |q: i32| set_int(s, tcp, sys::TCP_REPAIR_QUEUE, q).map_err(|e| ("TCP_REPAIR_QUEUE", e));
    let outq = ioctl_int(s, sys::SIOCOUTQ)
        .map_err(|e| ("SIOCOUTQ", e))?
        .max(0) as usize;
    let unsent = ioctl_int(s, sys::SIOCOUTQNSD)
        .map_err(|e| ("SIOCOUTQNSD", e))?
        .max(0) as u32;
    let inq = ioctl_int(s, sys::SIOCINQ)
        .map_err(|e| ("SIOCINQ", e))?
        .max(0) as usize;
    select(sys::TCP_SEND_QUEUE)?;
    let snd_seq = get_int(s, tcp, sys::TCP_QUEUE_SEQ).map_err(|e| ("TCP_QUEUE_SEQ", e))? as u32;
    let send_queue = peek(s, outq).map_err(|e| ("reading the send queue", e))?;
    select(sys::TCP_RECV_QUEUE)?;
    let rcv_seq = get_int(s, tcp, sys::TCP_QUEUE_SEQ).map_err(|e| ("TCP_QUEUE_SEQ", e))? as u32;
    let recv_queue = peek(s, inq).map_err(|e| ("reading the receive queue", e))?;
    select(sys::TCP_NO_QUEUE)?;
    let mss = get_int(s, tcp, libc::TCP_MAXSEG).map_err(|e| ("TCP_MAXSEG", e))? as u32;
    let timestamp = if info.options & sys::TCPI_OPT_TIMESTAMPS != 0 {
        Some(get_int(s, tcp, sys::TCP_TIMESTAMP).map_err(|e| ("TCP_TIMESTAMP", e))? as u32)
    } else {
        None
    };
    let mut w = [0u8; 20];
    get_bytes(s, tcp, sys::TCP_REPAIR_WINDOW, &mut w).map_err(|e| ("TCP_REPAIR_WINDOW", e))?;
    let word = |i: usize| u32::from_ne_bytes([w[i * 4], w[i * 4 + 1], w[i * 4 + 2], w[i * 4 + 3]]);
    Ok(TcpConnection {
        snd_seq,
        rcv_seq,
        send_queue: Blob(send_queue),
        unsent,
        recv_queue: Blob(recv_queue),
        mss,
        wscale: (info.options & sys::TCPI_OPT_WSCALE != 0)
            .then_some((info.wscale & 0xf, info.wscale >> 4)),
        sack: info.options & sys::TCPI_OPT_SACK != 0,
        timestamp,
        window: TcpWindow {
            snd_wl1: word(0),
            snd_wnd: word(1),
            max_window: word(2),
            rcv_wnd: word(3),
            rcv_wup: word(4),
        },
    })
}

/// The `len` bytes of the selected queue, without consuming them.
fn peek(s: RawFd, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: recv writes at most `len` bytes into the live buffer.
    let n = unsafe {
        libc::recv(
            s,
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != len {
        return Err(io::Error::other(format!(
            "peeked {n} of {len} queued bytes"
        )));
    }
    Ok(buf)
}

/// How long the processes may take, with the network locked and before
/// the freeze, to accept the connections already in their listeners'
/// queues.
const ACCEPT_DRAIN: Duration = Duration::from_secs(1);

/// How long the accept queues must stay empty, with new connections locked
/// out, before everything is locked: time for the handshakes under way
/// (a SYN-ACK sent, its ACK in flight) to complete and be accepted.
const HANDSHAKE_GRACE: Duration = Duration::from_millis(20);

/// The network lock taken before the freeze ([`lock_and_drain`]), handed
/// to [`NetFreeze::begin`]; dropped unused, it lifts the lock.
#[derive(Debug, Default)]
pub struct EarlyLock(Option<NetLock>);

impl Drop for EarlyLock {
    fn drop(&mut self) {
        if let Some(lock) = self.0.take() {
            let _ = lock.unlock();
        }
    }
}

/// Before the freeze, while the processes run: when the container listens
/// on TCP, locks new connections out of its network namespace, waits, at
/// most [`ACCEPT_DRAIN`], until every connection already queued or being
/// handshaken was accepted (the queues empty for [`HANDSHAKE_GRACE`]),
/// then locks it all (from now on no handshake completes, so no
/// connection lands in an accept queue while frozen, where nothing could
/// take it, and none is left half-open). A queue that does not
/// drain is refused, naming the listener, and the lock is lifted.
/// `sockets`: (host pid, fd) of the container's inet sockets.
pub fn lock_and_drain(init: i32, sockets: &[(i32, i32)]) -> crate::Result<EarlyLock> {
    let mut listeners = Vec::new();
    for &(pid, fd) in sockets {
        // A socket closed since the survey is no listener to wait for.
        let Ok(p) = probe(pid, fd) else { continue };
        if p.tcp.is_some_and(|t| t.state == sys::TCP_LISTEN) {
            listeners.push((pid, fd, p));
        }
    }
    if listeners.is_empty() {
        return Ok(EarlyLock(None));
    }
    // New connections are kept out first while handshakes under way
    // complete (a half-open one would meet no socket after the restore and
    // be reset); once the queues stayed empty for HANDSHAKE_GRACE, all is
    // locked and they are checked once more.
    let lock = EarlyLock(Some(NetLock::lock_new_connections(init)?));
    let deadline = Instant::now() + ACCEPT_DRAIN;
    let mut empty_since: Option<Instant> = None;
    let mut tight = false;
    loop {
        let mut waiting = None;
        for (pid, fd, p) in &listeners {
            let info = tcp_info(p.sock.as_raw_fd())
                .map_err(|e| DumpError::proc(*pid, format!("socket fd {fd} (TCP_INFO)"), e))?;
            if info.unacked > 0 {
                waiting = Some((*pid, *fd, p, info.unacked));
                break;
            }
        }
        let Some((pid, fd, p, queued)) = waiting else {
            if tight {
                return Ok(lock);
            }
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= HANDSHAKE_GRACE {
                if let Some(l) = &lock.0 {
                    l.tighten()?;
                }
                tight = true;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        };
        empty_since = None;
        if Instant::now() >= deadline {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            return Err(DumpError::Unsupported {
                pid,
                comm,
                what: format!(
                    "fd {fd} is a TCP socket listening on {} with {queued} connection(s) that were not accepted within {ACCEPT_DRAIN:?} with the network locked; cr does not move an accept queue",
                    local_addr(&p.sock).map_or("-".into(), |a| a.to_string())
                ),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The container's TCP sockets held still for the dump: the network lock
/// and the connections put in repair mode. Dropped, it resumes them.
pub struct NetFreeze {
    lock: Option<NetLock>,
    /// Each connection in repair mode, and whether it had SO_REUSEADDR
    /// (leaving repair mode clears it).
    repaired: Vec<(OwnedFd, bool)>,
}

impl NetFreeze {
    /// Locks the network namespace of host process `init` and puts every
    /// established connection among `sockets` (host pid, fd) in repair
    /// mode. Nothing to do (None) when no TCP socket is among them.
    /// `early`: the lock [`lock_and_drain`] took, used instead of a new one.
    pub fn begin(
        init: i32,
        sockets: &[(i32, i32)],
        early: &mut EarlyLock,
    ) -> crate::Result<Option<NetFreeze>> {
        let mut tcp = Vec::new();
        for &(pid, fd) in sockets {
            let p =
                probe(pid, fd).map_err(|e| DumpError::proc(pid, format!("socket fd {fd}"), e))?;
            if p.tcp.is_some() {
                tcp.push((pid, fd, p.sock));
            }
        }
        if tcp.is_empty() {
            return Ok(None);
        }
        let lock = match early.0.take() {
            Some(lock) => lock,
            None => NetLock::lock(init)?,
        };
        let mut freeze = NetFreeze {
            lock: Some(lock),
            repaired: Vec::new(),
        };
        // After the lock no segment moves: the states read now hold.
        for (pid, fd, sock) in tcp {
            let s = sock.as_raw_fd();
            let info = tcp_info(s)
                .map_err(|e| DumpError::proc(pid, format!("socket fd {fd} (TCP_INFO)"), e))?;
            if info.state == sys::TCP_ESTABLISHED || is_half_closed(info.state) {
                let reuse = get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR).map_err(|e| {
                    DumpError::proc(pid, format!("socket fd {fd} (SO_REUSEADDR)"), e)
                })?;
                // Repair mode forces SO_REUSEADDR (for a restore's bind);
                // the dump needs no bind: keep the process's value, which
                // collect() records.
                set_int(s, libc::IPPROTO_TCP, sys::TCP_REPAIR, 1)
                    .and_then(|()| set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse))
                    .map_err(|e| {
                        DumpError::proc(pid, format!("socket fd {fd} (TCP_REPAIR on)"), e)
                    })?;
                freeze.repaired.push((sock, reuse != 0));
            }
        }
        Ok(Some(freeze))
    }

    /// Takes the connections out of repair mode and lifts the lock: they
    /// go on as if nothing happened.
    pub fn resume(mut self) -> crate::Result<()> {
        self.resume_inner()
    }

    /// Takes every connection out of repair mode but leaves the network
    /// locked (its rules stay in the namespace after this process exits):
    /// for a container held frozen whose fate is decided later.
    pub fn keep_locked(mut self) -> crate::Result<()> {
        let left = self.leave_repair();
        // Dropped without unlocking: the rules stay.
        self.lock = None;
        left.map_or(Ok(()), Err)
    }

    fn leave_repair(&mut self) -> Option<crate::Error> {
        let mut first = None;
        for (sock, reuse) in self.repaired.drain(..) {
            if let Err(e) = repair_off(sock.as_raw_fd(), reuse) {
                first.get_or_insert(crate::Error::Invalid(format!(
                    "taking a TCP connection out of repair mode: {e}"
                )));
            }
        }
        first
    }

    fn resume_inner(&mut self) -> crate::Result<()> {
        let mut first = self.leave_repair();
        if let Some(lock) = self.lock.take() {
            if let Err(e) = lock.unlock() {
                first.get_or_insert(e.into());
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// For a container that was stopped after its checkpoint: closes cr's
    /// duplicates with the connections still in repair mode (no FIN, no
    /// RST reaches the peer); the lock goes away with the namespace.
    pub fn close_silently(mut self) {
        self.repaired.clear();
        self.lock = None;
    }
}

/// Takes connection `s` out of repair mode, giving it back its
/// SO_REUSEADDR (leaving repair mode clears it).
fn repair_off(s: RawFd, reuse: bool) -> io::Result<()> {
    set_int(s, libc::IPPROTO_TCP, sys::TCP_REPAIR, 0)
        .and_then(|()| set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse as i32))
}

/// Takes every TCP socket of host processes `pids` that is in repair mode
/// out of it, as [`NetFreeze::resume`] would have: for the connections of
/// a container whose checkpointing process died (a killed `cr migrate`),
/// found through duplicates of the processes' descriptors. Repair mode
/// left SO_REUSEADDR at the process's value ([`NetFreeze::begin`] set it
/// back), so it is read before and restored after. Returns how many
/// connections it took out; the first error, after trying all of them.
pub fn leave_repair_left(pids: &[i32]) -> crate::Result<usize> {
    let mut done = 0;
    let mut first = None;
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if !is_socket {
                continue;
            }
            let Ok(p) = probe(pid, fd) else { continue };
            if p.tcp.is_none() {
                continue;
            }
            let s = p.sock.as_raw_fd();
            if get_int(s, libc::IPPROTO_TCP, sys::TCP_REPAIR).unwrap_or(0) == 0 {
                continue;
            }
            let off = get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)
                .and_then(|reuse| repair_off(s, reuse != 0));
            match off {
                Ok(()) => done += 1,
                Err(e) => {
                    first.get_or_insert(crate::Error::from(DumpError::proc(
                        pid,
                        format!("socket fd {fd} (TCP_REPAIR off)"),
                        e,
                    )));
                }
            }
        }
    }
    first.map_or(Ok(done), Err)
}

impl Drop for NetFreeze {
    fn drop(&mut self) {
        let _ = self.resume_inner();
    }
}

//! TCP and UDP sockets (IPv4 and IPv6) at restore.
//!
//! ```text
//! supervisor: NetLock on the new netns before its network comes up
//!             (needs_lock: the image has a TCP socket)
//! PID 1 (restore::tree::open_table, in the container's netns, with
//! CAP_NET_ADMIN there), listeners and idle sockets first (open_order):
//!   listener     socket, options, bind, listen(backlog)
//!   idle / UDP   socket, options, bind if it was bound, connect if it was
//!   connection   socket, TCP_REPAIR on, options, bind (repair mode may
//!                share a listener's port), TCP_QUEUE_SEQ of both queues at
//!                (seq - queued bytes), TCP_TIMESTAMP, connect (no SYN in
//!                repair mode), TCP_REPAIR_OPTIONS (MSS, window scale,
//!                SACK, timestamps), refill the send then the receive
//!                queue, TCP_REPAIR_WINDOW, TCP_REPAIR off
//! supervisor: once every process runs, unlock: the peers' retransmissions
//!             get through and the connections go on
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use cr_formats::schema::{
    FileKind, InetFamily, InetProto, InetSocket, InetState, SocketOptions, TcpConnection,
};
use nix::sys::socket::{SockaddrIn, SockaddrIn6, SockaddrLike};

use crate::dump::inet::{set_bytes, set_int, sys};
use crate::error::{Error, Result};
use crate::restore::image::LoadedImage;

/// Whether restoring this image needs the network lock: any TCP socket.
pub fn needs_lock(image: &LoadedImage) -> bool {
    image
        .files
        .values()
        .any(|f| matches!(&f.kind, FileKind::Inet(s) if s.proto == InetProto::Tcp))
}

/// Files are opened in this order: listeners and idle sockets (0) before
/// connections (1), so a listener takes its port before a connection
/// accepted from it shares it.
pub fn open_order(kind: &FileKind) -> u8 {
    match kind {
        FileKind::Inet(InetSocket {
            state: InetState::Established(_) | InetState::HalfClosed { .. },
            ..
        }) => 1,
        _ => 0,
    }
}

/// Creates the socket of one record, in the calling process's network
/// namespace; `flags` are the file's `O_*` flags (O_NONBLOCK is kept).
pub fn open(sock: &InetSocket, flags: u32) -> Result<RawFd> {
    let name = describe(sock);
    let fail = |what: &str, e: io::Error| Error::Invalid(format!("restoring {name}: {what}: {e}"));
    let domain = match sock.family {
        InetFamily::V4 => libc::AF_INET,
        InetFamily::V6 => libc::AF_INET6,
    };
    let (ty, proto) = match sock.proto {
        InetProto::Tcp => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
        InetProto::Udp => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
    };
    let mut ty = ty | libc::SOCK_CLOEXEC;
    if flags & libc::O_NONBLOCK as u32 != 0 {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return Err(fail("socket", io::Error::last_os_error()));
    }
    // SAFETY: socket just returned this fd; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let s = owned.as_raw_fd();
    match &sock.state {
        InetState::Established(conn) => {
            repaired(s, sock, conn, Fins::default()).map_err(|(w, e)| fail(w, e))?;
        }
        InetState::HalfClosed {
            connection,
            fin_sent,
            fin_received,
        } => {
            let fins = Fins {
                sent: *fin_sent,
                received: *fin_received,
            };
            repaired(s, sock, connection, fins).map_err(|(w, e)| fail(w, e))?;
        }
        InetState::Listen { backlog } => {
            set_options(s, sock, &sock.options).map_err(|(w, e)| fail(w, e))?;
            if let Some(local) = sock.local {
                bind(s, local).map_err(|e| fail(&format!("binding {local}"), e))?;
            }
            // SAFETY: listen takes plain integers.
            if unsafe { libc::listen(s, *backlog as i32) } < 0 {
                return Err(fail("listen", io::Error::last_os_error()));
            }
        }
        InetState::Idle => {
            set_options(s, sock, &sock.options).map_err(|(w, e)| fail(w, e))?;
            if let Some(local) = sock.local {
                bind(s, local).map_err(|e| fail(&format!("binding {local}"), e))?;
            }
            if let (InetProto::Udp, Some(peer)) = (sock.proto, sock.peer) {
                connect(s, peer).map_err(|e| fail(&format!("connecting to {peer}"), e))?;
            }
        }
    }
    Ok(owned.into_raw_fd())
}

/// Which FINs a half-closed connection had sent and received.
#[derive(Debug, Clone, Copy, Default)]
struct Fins {
    /// This side's FIN, acknowledged (FIN_WAIT2).
    sent: bool,
    /// The peer's FIN (CLOSE_WAIT).
    received: bool,
}

/// An established or half-closed connection rebuilt in repair mode, then
/// let go: its FIN queued again (sent), the peer's FIN delivered again.
fn repaired(s: RawFd, sock: &InetSocket, conn: &TcpConnection, fins: Fins) -> OptResult {
    let peer = sock.peer.ok_or((
        "no peer address",
        io::Error::from(io::ErrorKind::InvalidData),
    ))?;
    let local = sock.local.ok_or((
        "no local address",
        io::Error::from(io::ErrorKind::InvalidData),
    ))?;
    set_int(s, libc::IPPROTO_TCP, sys::TCP_REPAIR, 1).map_err(|e| ("TCP_REPAIR on", e))?;
    set_options(s, sock, &sock.options)?;
    bind(s, local).map_err(|e| ("binding the local address", e))?;
    connection(s, peer, conn, fins)?;
    set_int(s, libc::IPPROTO_TCP, sys::TCP_REPAIR, 0).map_err(|e| ("TCP_REPAIR off", e))?;
    if fins.received {
        // The peer's FIN again, from its address: the socket goes to
        // CLOSE_WAIT and a read gives EOF after the queued data, as before.
        crate::restore::tcp_fin::inject(s, local, peer, conn)
            .map_err(|e| ("delivering the peer's FIN again (raw socket)", e))?;
    }
    fill(s, &conn.send_queue.0[sent_len(conn)..])
        .map_err(|e| ("sending the queued bytes never sent", e))?;
    // Leaving repair mode resets SO_REUSEADDR.
    set_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        sock.options.reuseaddr as i32,
    )
    .map_err(|e| ("SO_REUSEADDR", e))
}

/// "TCP connection 10.0.0.2:80 -> 10.0.0.1:4000" for messages.
fn describe(sock: &InetSocket) -> String {
    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or("-".into());
    let proto = match sock.proto {
        InetProto::Tcp => "TCP",
        InetProto::Udp => "UDP",
    };
    match &sock.state {
        InetState::Established(_) | InetState::HalfClosed { .. } => {
            format!(
                "the {proto} connection {} -> {}",
                show(sock.local),
                show(sock.peer)
            )
        }
        InetState::Listen { .. } => format!("the {proto} socket listening on {}", show(sock.local)),
        InetState::Idle => format!(
            "the {proto} socket {} -> {}",
            show(sock.local),
            show(sock.peer)
        ),
    }
}

fn with_sockaddr<T>(addr: SocketAddr, f: impl FnOnce(&dyn SockaddrLike) -> T) -> T {
    match addr {
        SocketAddr::V4(a) => f(&SockaddrIn::from(a)),
        SocketAddr::V6(a) => f(&SockaddrIn6::from(a)),
    }
}

fn bind(s: RawFd, addr: SocketAddr) -> io::Result<()> {
    with_sockaddr(addr, |a| {
        // SAFETY: bind reads `len` bytes of a live sockaddr.
        let rc = unsafe { libc::bind(s, a.as_ptr(), a.len()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

fn connect(s: RawFd, addr: SocketAddr) -> io::Result<()> {
    with_sockaddr(addr, |a| {
        // SAFETY: connect reads `len` bytes of a live sockaddr.
        let rc = unsafe { libc::connect(s, a.as_ptr(), a.len()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
}

type OptResult = std::result::Result<(), (&'static str, io::Error)>;

/// The options a socket had; buffers are set with the FORCE variants
/// (CAP_NET_ADMIN) so the recorded sizes come back whatever the sysctl caps.
fn set_options(s: RawFd, sock: &InetSocket, o: &SocketOptions) -> OptResult {
    let sol = libc::SOL_SOCKET;
    let tcp = libc::IPPROTO_TCP;
    let set = |level, name, v: i32, what| set_int(s, level, name, v).map_err(|e| (what, e));
    if sock.family == InetFamily::V6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            o.v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    // In repair mode SO_REUSEADDR would undo the forced reuse that lets a
    // connection share its listener's port; it is set after repair mode.
    if !matches!(
        sock.state,
        InetState::Established(_) | InetState::HalfClosed { .. }
    ) {
        set(sol, libc::SO_REUSEADDR, o.reuseaddr as i32, "SO_REUSEADDR")?;
    }
    set(sol, libc::SO_REUSEPORT, o.reuseport as i32, "SO_REUSEPORT")?;
    set(sol, libc::SO_BROADCAST, o.broadcast as i32, "SO_BROADCAST")?;
    // getsockopt reports twice what setsockopt was given.
    set(sol, libc::SO_SNDBUFFORCE, o.sndbuf / 2, "SO_SNDBUFFORCE")?;
    set(sol, libc::SO_RCVBUFFORCE, o.rcvbuf / 2, "SO_RCVBUFFORCE")?;
    set(sol, libc::SO_KEEPALIVE, o.keepalive as i32, "SO_KEEPALIVE")?;
    let mut linger = [0u8; 8];
    linger[..4].copy_from_slice(&(o.linger.is_some() as i32).to_ne_bytes());
    linger[4..].copy_from_slice(&o.linger.unwrap_or(0).to_ne_bytes());
    set_bytes(s, sol, libc::SO_LINGER, &linger).map_err(|e| ("SO_LINGER", e))?;
    if sock.proto == InetProto::Tcp {
        if o.keepidle > 0 {
            set(tcp, libc::TCP_KEEPIDLE, o.keepidle, "TCP_KEEPIDLE")?;
        }
        if o.keepintvl > 0 {
            set(tcp, libc::TCP_KEEPINTVL, o.keepintvl, "TCP_KEEPINTVL")?;
        }
        if o.keepcnt > 0 {
            set(tcp, libc::TCP_KEEPCNT, o.keepcnt, "TCP_KEEPCNT")?;
        }
        set(tcp, libc::TCP_NODELAY, o.nodelay as i32, "TCP_NODELAY")?;
    }
    Ok(())
}

/// An established connection in repair mode, bound to its local address.
/// A FIN counts in the recorded sequences but is no byte of a queue: the
/// queues start one before, and this side's FIN is queued again (in repair
/// mode: marked sent, not sent; the peer, which has it, acknowledges the
/// retransmission).
fn connection(s: RawFd, peer: SocketAddr, c: &TcpConnection, fins: Fins) -> OptResult {
    let tcp = libc::IPPROTO_TCP;
    let set = |name, v: i32, what| set_int(s, tcp, name, v).map_err(|e| (what, e));
    let outq = c.send_queue.0.len() as u32;
    let inq = c.recv_queue.0.len() as u32;
    set(
        sys::TCP_REPAIR_QUEUE,
        sys::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    set(
        sys::TCP_QUEUE_SEQ,
        c.snd_seq.wrapping_sub(outq).wrapping_sub(fins.sent as u32) as i32,
        "TCP_QUEUE_SEQ (send)",
    )?;
    set(
        sys::TCP_REPAIR_QUEUE,
        sys::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    set(
        sys::TCP_QUEUE_SEQ,
        c.rcv_seq
            .wrapping_sub(inq)
            .wrapping_sub(fins.received as u32) as i32,
        "TCP_QUEUE_SEQ (receive)",
    )?;
    if let Some(ts) = c.timestamp {
        set(sys::TCP_TIMESTAMP, ts as i32, "TCP_TIMESTAMP")?;
    }
    connect(s, peer).map_err(|e| ("connect in repair mode", e))?;
    let mut opts: Vec<(u32, u32)> = vec![(sys::TCPOPT_MSS, c.mss)];
    if let Some((snd, rcv)) = c.wscale {
        opts.push((sys::TCPOPT_WINDOW, u32::from(snd) | u32::from(rcv) << 16));
    }
    if c.sack {
        opts.push((sys::TCPOPT_SACK_PERM, 0));
    }
    if c.timestamp.is_some() {
        opts.push((sys::TCPOPT_TIMESTAMP, 0));
    }
    let raw: Vec<u8> = opts
        .iter()
        .flat_map(|(code, val)| code.to_ne_bytes().into_iter().chain(val.to_ne_bytes()))
        .collect();
    set_bytes(s, tcp, sys::TCP_REPAIR_OPTIONS, &raw).map_err(|e| ("TCP_REPAIR_OPTIONS", e))?;
    set(
        sys::TCP_REPAIR_QUEUE,
        sys::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    // What had been sent goes back as sent (the peer may have it); the
    // never-sent tail is sent for real once out of repair mode.
    fill(s, &c.send_queue.0[..sent_len(c)]).map_err(|e| ("refilling the send queue", e))?;
    set(
        sys::TCP_REPAIR_QUEUE,
        sys::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    fill(s, &c.recv_queue.0).map_err(|e| ("refilling the receive queue", e))?;
    set(sys::TCP_REPAIR_QUEUE, sys::TCP_NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    let w = &c.window;
    // The window's left edge may not lie beyond what was received, which
    // stops before the peer's FIN until it comes again.
    let rcv_nxt = c.rcv_seq.wrapping_sub(fins.received as u32);
    let rcv_wup = if (w.rcv_wup.wrapping_sub(rcv_nxt) as i32) > 0 {
        rcv_nxt
    } else {
        w.rcv_wup
    };
    let raw: Vec<u8> = [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, rcv_wup]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    set_bytes(s, tcp, sys::TCP_REPAIR_WINDOW, &raw).map_err(|e| ("TCP_REPAIR_WINDOW", e))?;
    if fins.sent {
        // With the send queue selected, the FIN is marked sent without
        // reaching the network (else it would wait unsent and the peer's
        // acknowledgements of it would look like acks of unsent data).
        set(
            sys::TCP_REPAIR_QUEUE,
            sys::TCP_SEND_QUEUE,
            "TCP_REPAIR_QUEUE",
        )?;
        // SAFETY: shutdown takes plain integers.
        if unsafe { libc::shutdown(s, libc::SHUT_WR) } < 0 {
            return Err((
                "shutdown(SHUT_WR) in repair mode",
                io::Error::last_os_error(),
            ));
        }
        set(sys::TCP_REPAIR_QUEUE, sys::TCP_NO_QUEUE, "TCP_REPAIR_QUEUE")?;
    }
    Ok(())
}

/// Bytes of the send queue that had been sent at checkpoint.
fn sent_len(c: &TcpConnection) -> usize {
    c.send_queue.0.len().saturating_sub(c.unsent as usize)
}

/// Writes `data` into the selected queue in slices the kernel accepts.
fn fill(s: RawFd, mut data: &[u8]) -> io::Result<()> {
    let mut chunk = 64 << 10;
    let mut waited = 0;
    while !data.is_empty() {
        let len = data.len().min(chunk);
        // SAFETY: send reads `len` bytes of the live slice.
        let n = unsafe { libc::send(s, data.as_ptr().cast(), len, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOMEM) && chunk > 4096 {
                chunk /= 2;
                continue;
            }
            if e.raw_os_error() == Some(libc::EAGAIN) && waited < 100 {
                // A non-blocking socket: the buffer held these bytes at
                // checkpoint, so room comes as the kernel accounts for them.
                waited += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

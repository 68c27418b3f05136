//! TCP and UDP sockets over IPv4 and IPv6: what a [`super::FileKind::Inet`]
//! file holds.
//!
//! ```text
//!   File { id 9, flags O_RDWR|O_NONBLOCK, Inet(InetSocket {
//!       family V4, proto Tcp, local 10.0.0.2:80, peer 10.0.0.1:40000,
//!       state Established(TcpConnection { sequences, queues, window, options }),
//!       options SocketOptions { reuseaddr, keepalive, nodelay, buffers, linger .. } }) }
//! ```
//!
//! An established connection is read in `TCP_REPAIR` mode while the
//! container's network is locked, so its sequence numbers and queues are
//! those of a connection on which nothing moves; restore rebuilds it in
//! repair mode (sequences, queues, options, window) and lets it go on.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::bytes::Blob;

/// One TCP or UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    pub family: InetFamily,
    pub proto: InetProto,
    /// `getsockname`; `None` when the socket is not bound.
    pub local: Option<SocketAddr>,
    /// `getpeername`; `None` when not connected.
    pub peer: Option<SocketAddr>,
    pub state: InetState,
    pub options: SocketOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InetFamily {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InetProto {
    Tcp,
    Udp,
}

/// What the socket was doing. New states are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InetState {
    /// TCP not listening nor connected (possibly bound), or any UDP socket
    /// (bound and connected as `local`/`peer` say). Queued datagrams are
    /// not kept: they are lost as a datagram may be.
    Idle,
    /// A listening TCP socket with an empty accept queue.
    Listen { backlog: u32 },
    /// An established TCP connection.
    Established(TcpConnection),
    /// A half-closed TCP connection (since 1.3): `fin_sent`, this side
    /// shut its sending side and the peer acknowledged the FIN
    /// (`FIN_WAIT2`); `fin_received`, the peer's FIN arrived (`CLOSE_WAIT`).
    /// `snd_seq` and `rcv_seq` count the FIN as the kernel does; the queues
    /// hold data only.
    HalfClosed {
        connection: TcpConnection,
        fin_sent: bool,
        fin_received: bool,
    },
}

/// The state of an established connection, as `TCP_REPAIR` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnection {
    /// Sequence number after the last byte queued for sending
    /// (`TCP_QUEUE_SEQ` on the send queue: `write_seq`).
    pub snd_seq: u32,
    /// Sequence number after the last byte received (`rcv_nxt`).
    pub rcv_seq: u32,
    /// Bytes written but not acknowledged by the peer (sent or not).
    pub send_queue: Blob,
    /// Of `send_queue`, the bytes at its end never sent (`SIOCOUTQNSD`).
    pub unsent: u32,
    /// Bytes received but not read by the process.
    pub recv_queue: Blob,
    /// `TCP_MAXSEG`.
    pub mss: u32,
    /// Window scaling, when negotiated: (ours for sending, ours for receiving).
    pub wscale: Option<(u8, u8)>,
    pub sack: bool,
    /// The connection's current TCP timestamp (`TCP_TIMESTAMP`), when
    /// timestamps were negotiated.
    pub timestamp: Option<u32>,
    pub window: TcpWindow,
}

/// `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// The options restored on every socket (TCP ones are 0/false on UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOptions {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`.
    pub keepidle: i32,
    pub keepintvl: i32,
    pub keepcnt: i32,
    pub nodelay: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` as `getsockopt` reports them (doubled).
    pub sndbuf: i32,
    pub rcvbuf: i32,
    /// `SO_LINGER` seconds when lingering is on.
    pub linger: Option<i32>,
    /// `IPV6_V6ONLY` (IPv6 sockets only).
    pub v6only: bool,
    pub broadcast: bool,
}

//! Unix domain sockets: one [`UnixSocket`] per socket, carried by
//! [`super::FileKind::Unix`] (a socket has exactly one open file
//! description, so the file record is the socket record).
//!
//! ```text
//!   File { id 3, Unix { ino 901, Stream, Established, peer 902, queue ["pong"] } }
//!   File { id 4, Unix { ino 902, Stream, Established, peer 901, queue ["ping"] } }
//!   File { id 5, Unix { ino 910, Stream, Listen, name Path("/run/app.sock"), pending [920] } }
//!   File { id 6, Unix { ino 920, Stream, Connected, peer None } }   (waits in 910's backlog)
//! ```
//!
//! Sockets refer to each other by inode (`ino`, `peer`), as the kernel's
//! `unix_diag` names them. `queue` is what the socket itself would read next
//! (its receive queue), one entry per message for datagram and seqpacket
//! sockets, one entry for the whole byte stream of a stream socket. Restore
//! writes each queue back from the socket's peer, so the bytes end up in the
//! same queue they were read from.

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};

/// One unix domain socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// Inode number of the socket (`socket:[ino]`), its name in this image.
    pub ino: u64,
    pub kind: UnixType,
    pub state: UnixState,
    /// The address it is bound to, if any.
    pub name: Option<UnixName>,
    /// The socket it is connected to (for a datagram socket: the one its
    /// `connect` named; the link need not go both ways).
    pub peer: Option<u64>,
    /// A connected stream or seqpacket socket whose peer was closed (the
    /// peer is gone, its data and the EOF remain).
    pub peer_closed: bool,
    /// `listen(2)` backlog (`sk_max_ack_backlog`), for a listening socket.
    pub backlog: u32,
    /// For a listening socket: the clients whose connections wait in its
    /// backlog, oldest first (their inodes). Such a client is `Connected`
    /// with no `peer` (its peer is the not yet accepted socket, which has
    /// no descriptor and is made again by the client's `connect`).
    pub pending: Vec<u64>,
    /// `shutdown(2)` state: bit 0 = no more receiving, bit 1 = no more
    /// sending (the kernel's `RCV_SHUTDOWN` and `SEND_SHUTDOWN`).
    pub shutdown: u8,
    /// Its receive queue, oldest first.
    pub queue: Vec<Blob>,
    /// `SO_PEERCRED` at checkpoint, as the container sees the ids
    /// (pid 0: unknown); restore makes the socket as this peer (docs/unix-sockets.md).
    pub peer_cred: Option<UnixCred>,
    /// `SO_PASSCRED`.
    pub pass_cred: bool,
    /// `SO_SNDBUF` and `SO_RCVBUF` as `getsockopt` reports them (doubled).
    pub sndbuf: u32,
    pub rcvbuf: u32,
}

/// The socket's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixType {
    Stream,
    Dgram,
    Seqpacket,
}

/// Where the socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixState {
    /// Neither listening nor connected (maybe bound; a datagram socket may
    /// still name a peer).
    Unconnected,
    Listen,
    Connected,
}

/// A unix socket address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixName {
    /// A path in the container's filesystem. `unlinked`: the socket file
    /// was removed after the bind (restore binds, then removes it again).
    Path {
        path: ByteString,
        unlinked: bool,
        /// Mode bits, owner and group of the socket file.
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An abstract name, without its leading NUL byte.
    Abstract(Blob),
}

/// `struct ucred`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

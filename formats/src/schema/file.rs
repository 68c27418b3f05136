//! Open files: descriptors, the open file descriptions they point to, pipe
//! contents and locks.
//!
//! ```text
//!   Fd { pid 7, fd 0 } --\
//!   Fd { pid 7, fd 3 } ----> File { id 12, Pipe { pipe 9001, Read } } ---> PipeData { pipe 9001 }
//!   Fd { pid 8, fd 0 } --/   File { id 13, Pipe { pipe 9001, Write } } --/
//! ```
//!
//! A [`File`] is one open file description (`struct file`): its offset and
//! status flags are shared by every descriptor that refers to it, in one
//! process (`dup`) or several (`fork`, `SCM_RIGHTS`). Descriptors name it by
//! [`FileId`], so restore opens it once and installs it wherever it was.

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};
use super::event::{EpollItem, InotifyWatch, TimerFd};
use super::inet::InetSocket;
use super::netlink::NetlinkSocket;
use super::unix::UnixSocket;

/// Identifies a [`File`] within one image.
pub type FileId = u64;
/// Identifies a pipe (its inode number) within one image.
pub type PipeId = u64;

/// One file descriptor of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub pid: i32,
    pub fd: i32,
    /// `FD_CLOEXEC`.
    pub cloexec: bool,
    pub file: FileId,
}

/// One open file description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub id: FileId,
    /// `O_*` access mode and status flags (`fcntl(F_GETFL)`).
    pub flags: u32,
    /// Owner for `SIGIO` (`F_GETOWN_EX`), when one is set.
    pub owner: Option<FileOwner>,
    pub kind: FileKind,
}

/// `F_SETOWN_EX` and `F_SETSIG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    /// `F_OWNER_TID`, `F_OWNER_PID` or `F_OWNER_PGRP`.
    pub kind: i32,
    pub pid: i32,
    pub signo: i32,
}

/// What an open file description refers to. New kinds are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file, reopened by path; `size` is checked on restore.
    Regular {
        path: ByteString,
        pos: u64,
        size: u64,
    },
    Directory {
        path: ByteString,
        pos: u64,
    },
    /// A character device such as `/dev/null` or a pty.
    CharDevice {
        path: ByteString,
        rdev: u64,
        pos: u64,
    },
    /// One end of an anonymous pipe.
    Pipe {
        pipe: PipeId,
        end: PipeEnd,
    },
    /// One end of a named pipe.
    Fifo {
        path: ByteString,
        pipe: PipeId,
        end: PipeEnd,
    },
    /// A unix domain socket (see [`super::unix`]).
    Unix(UnixSocket),
    /// An eventfd: its counter and `EFD_SEMAPHORE` (`O_NONBLOCK` is in the
    /// file's flags). See [`super::event`].
    EventFd {
        count: u64,
        semaphore: bool,
    },
    /// An epoll instance and its interest list.
    Epoll {
        items: Vec<EpollItem>,
    },
    /// A signalfd and the signals it accepts (bit N-1 for signal N).
    SignalFd {
        mask: u64,
    },
    TimerFd(TimerFd),
    /// An inotify instance and its watches; queued events are not kept.
    Inotify {
        watches: Vec<InotifyWatch>,
    },
    /// A TCP or UDP socket over IPv4 or IPv6.
    Inet(InetSocket),
    /// A memfd held as a descriptor: the object is the `ShmemObject` `id`.
    Memfd {
        id: u64,
        pos: u64,
    },
    /// A regular file deleted while open: the `DeletedFile` `id`.
    Deleted {
        id: u64,
        pos: u64,
    },
    /// A POSIX message queue descriptor: the `PosixMqueue` `name` (no `/`).
    Mqueue {
        name: ByteString,
    },
    /// A netlink socket (see [`super::netlink`]; since 1.3).
    Netlink(NetlinkSocket),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipeEnd {
    Read,
    Write,
}

/// What a pipe held when it was frozen (read with `tee(2)`, not consumed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeData {
    pub pipe: PipeId,
    /// `F_GETPIPE_SZ`.
    pub capacity: u32,
    pub data: Blob,
}

/// A lock held on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// The process holding it (for `Posix`), or one that has the file open.
    pub pid: i32,
    pub file: FileId,
    pub kind: LockKind,
    pub mode: LockMode,
    pub start: u64,
    /// 0 means to the end of the file.
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `fcntl(F_SETLK)`, owned by a process.
    Posix,
    /// `flock(2)`, owned by the open file description.
    Flock,
    /// `fcntl(F_OFD_SETLK)`, owned by the open file description.
    Ofd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    Read,
    Write,
}

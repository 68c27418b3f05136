//! Event objects: eventfd, epoll, signalfd, timerfd and inotify.
//!
//! Each is one [`super::FileKind`] variant of a [`super::File`] record, so it
//! is shared by every descriptor that refers to it like any other open file.
//! Most of the state comes from `/proc/PID/fdinfo/FD` at checkpoint:
//!
//! ```text
//!   File { id 7, EventFd { count 5, semaphore true } }
//!   File { id 8, Epoll { items: [ EpollItem { fd 5, events, data, target (pid 1, fd 5) } ] } }
//!   File { id 9, SignalFd { mask } }
//!   File { id 10, TimerFd(TimerFd { clock, value_ns, interval_ns, ticks, .. }) }
//!   File { id 11, Inotify { watches: [ InotifyWatch { wd 1, path "/etc", mask } ] } }
//! ```
//!
//! An epoll item names its target by a descriptor of the image (`target_pid`,
//! `target_fd`), which restore resolves to a file id through the `Fd` records.

use serde::{Deserialize, Serialize};

use super::bytes::ByteString;

/// One entry of an epoll interest list (a `tfd:` line of fdinfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollItem {
    /// The fd number the item was added with (`EPOLL_CTL_ADD`), which
    /// `EPOLL_CTL_MOD`/`DEL` name it by; the kernel keys items by
    /// (file, fd number).
    pub fd: i32,
    /// `EPOLL*` bits, including `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`
    /// and `EPOLLWAKEUP` (a fired one-shot item keeps only its flag bits).
    pub events: u32,
    pub data: u64,
    /// A descriptor of the image (container PID and fd number) that refers
    /// to the watched open file; it need not be `fd` itself.
    pub target_pid: i32,
    pub target_fd: i32,
}

/// A timerfd as fdinfo shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFd {
    /// `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`, or an alarm clock.
    pub clock: i32,
    /// `TFD_TIMER_ABSTIME` and `TFD_TIMER_CANCEL_ON_SET` as last set.
    pub settime_flags: u32,
    /// Time left until the next expiry at checkpoint, in ns; 0 when disarmed.
    pub value_ns: u64,
    pub interval_ns: u64,
    /// Expirations not yet read.
    pub ticks: u64,
    /// `CLOCK_REALTIME` when `value_ns` was read, in ns since the epoch;
    /// absolute `CLOCK_REALTIME` timers are re-armed for the same wall time.
    pub realtime_ns: u64,
}

/// One inotify watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    /// The watched inode's path inside the container.
    pub path: ByteString,
    /// The user mask: `IN_*` events plus `IN_ONESHOT` / `IN_EXCL_UNLINK`.
    pub mask: u32,
}

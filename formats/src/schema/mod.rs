//! The records of a checkpoint: what a container's processes were made of.
//!
//! A records stream is the manifest followed by any number of records, one
//! per frame, each the postcard encoding of a [`Record`]:
//!
//! ```text
//!   Manifest                       frame 0, exactly once
//!   Process { pid 1 }              one per thread group
//!     Thread { pid 1, tid 1 }      one per thread
//!     Vma { pid 1, .. }            one per mapping, pages in pages.img
//!     Fd { pid 1, fd 0, file 4 }   one per descriptor
//!   File { id 4, .. }              one per open file description
//!   PipeData { pipe .. }           one per pipe with data in it
//!   FileLock { .. }                one per lock
//!   Shmem { id .. }                one per shared memory object or memfd
//!   DeletedFile { id .. }          one per deleted-but-open (or mapped) file
//!   SysvShm / SysvSem /            one per object of the IPC namespace
//!   SysvMsgQueue / PosixMqueue
//!   Mount { index .. }             one per rebuilt mount (see [`ns`])
//!   Uts { hostname .. }            once
//!   NetNamespace { links .. }      the container's network namespace, once
//!   TimeNamespace { id .. }        one per time namespace of its own
//!   Nftables { tables .. }         nftables tables iptables does not make
//! ```
//!
//! The order above is what the dumper writes, but readers take any order
//! after the manifest: records refer to each other by pid, tid and file id.
//!
//! Compatibility: postcard writes a variant as its index, so a variant is
//! only ever appended to [`Record`] (and to every nested enum), with the
//! next tag; appending one bumps the minor version. Structs never change
//! within a major version (see [`crate::version`]).

mod bytes;
mod event;
mod file;
mod inet;
mod ipc;
mod manifest;
mod netlink;
mod netns;
mod ns;
mod process;
mod shmem;
mod thread;
mod unix;
mod vma;

use serde::{Deserialize, Serialize};

pub use bytes::{Blob, ByteString};
pub use event::{EpollItem, InotifyWatch, TimerFd};
pub use file::{
    Fd, File, FileId, FileKind, FileLock, FileOwner, LockKind, LockMode, PipeData, PipeEnd, PipeId,
};
pub use inet::{
    InetFamily, InetProto, InetSocket, InetState, SocketOptions, TcpConnection, TcpWindow,
};
pub use ipc::{IpcPerm, MqMessage, PosixMqueue, SysvMessage, SysvMsgQueue, SysvSem, SysvShm};
pub use manifest::{Arch, Manifest};
pub use netlink::{NetlinkOptions, NetlinkSocket};
pub use netns::{NetLink, NetLinkKind, NetNamespace, NetSysctl, Nftables};
pub use ns::{Mount, MountKind, Propagation, TimeNamespace, TimeOffset, Uts};
pub use process::{
    CapSets, Credentials, ITimers, IdSet, MmState, PosixTimer, Process, Rlimit, SigAction,
    TaskState, Timer,
};
pub use shmem::{DeletedFile, ShmemKind, ShmemObject};
pub use thread::{RobustList, Rseq, Sched, SigAltStack, SyscallRestart, Thread};
pub use unix::{UnixCred, UnixName, UnixSocket, UnixState, UnixType};
pub use vma::{Vma, VmaKind};

/// Declares [`Record`] and [`RecordKind`] from one list so they cannot drift;
/// the tag of each kind must equal its variant index (a test checks it
/// against postcard's encoding).
macro_rules! records {
    ($($(#[$doc:meta])* $name:ident($ty:ty) = $tag:literal,)*) => {
        /// One record of a records stream. Variants are only ever appended.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Record {
            $($(#[$doc])* $name($ty),)*
        }

        /// Which [`Record`] variant a frame holds; the frame header carries
        /// it as its tag, so a damaged frame can still be named.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u16)]
        pub enum RecordKind {
            $($name = $tag,)*
        }

        impl Record {
            pub fn kind(&self) -> RecordKind {
                match self {
                    $(Record::$name(_) => RecordKind::$name,)*
                }
            }
        }

        impl RecordKind {
            /// Every kind, in tag order.
            pub const ALL: &'static [RecordKind] = &[$(RecordKind::$name,)*];

            pub fn from_tag(tag: u16) -> Option<RecordKind> {
                match tag {
                    $($tag => Some(RecordKind::$name),)*
                    _ => None,
                }
            }

            pub fn tag(self) -> u16 {
                self as u16
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(RecordKind::$name => stringify!($name),)*
                }
            }
        }
    };
}

records! {
    /// What the image is of; frame 0 and only there.
    Manifest(Manifest) = 0,
    Process(Process) = 1,
    Thread(Thread) = 2,
    Vma(Vma) = 3,
    /// An open file description.
    File(File) = 4,
    Fd(Fd) = 5,
    PipeData(PipeData) = 6,
    FileLock(FileLock) = 7,
    /// A shared anonymous memory object or a memfd (pages in pages.img).
    Shmem(ShmemObject) = 8,
    /// A file deleted while open or mapped, with its contents.
    DeletedFile(DeletedFile) = 9,
    /// A SysV shared memory segment of the IPC namespace (see [`ipc`]).
    SysvShm(SysvShm) = 10,
    /// A SysV semaphore set.
    SysvSem(SysvSem) = 11,
    /// A SysV message queue and its messages.
    SysvMsgQueue(SysvMsgQueue) = 12,
    /// A POSIX message queue and its messages.
    PosixMqueue(PosixMqueue) = 13,
    /// A mount of the container's mount namespace that restore rebuilds.
    Mount(Mount) = 14,
    /// The container's hostname and domain name.
    Uts(Uts) = 15,
    /// The container's network namespace: devices, addresses, routes,
    /// rules, neighbours, net sysctls and netfilter rules; at most once.
    NetNamespace(NetNamespace) = 16,
    /// A time namespace made by processes of the container, with its
    /// offsets and the processes in it (since 1.3).
    TimeNamespace(TimeNamespace) = 17,
    /// The network namespace's own nftables tables; at most once (since
    /// 1.4).
    Nftables(Nftables) = 18,
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

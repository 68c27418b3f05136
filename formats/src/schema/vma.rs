//! A virtual memory area: one line of `/proc/PID/maps` with what backs it
//! and whether its pages are in the page store.

use serde::{Deserialize, Serialize};

use super::bytes::ByteString;

/// One mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// The process whose address space holds it.
    pub pid: i32,
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `PROT_*`.
    pub prot: u32,
    /// `MAP_*` as `mmap(2)` takes them (`MAP_SHARED`, `MAP_PRIVATE`,
    /// `MAP_GROWSDOWN`, `MAP_NORESERVE`...).
    pub flags: u32,
    /// `MADV_*` advice to replay, one bit per advice number.
    pub madvise: u64,
    /// Offset in the backing object, in bytes (as `/proc/PID/maps` and
    /// `mmap(2)` give it).
    pub pgoff: u64,
    pub kind: VmaKind,
    /// Whether its contents are in the page store (under the process's
    /// address space, or under the shared object for `Shmem`/`Memfd`).
    pub in_page_store: bool,
}

/// What backs a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    Anonymous,
    /// `[heap]`.
    Heap,
    /// `[stack]`.
    Stack,
    /// A file, recognised again by device and inode on restore.
    File {
        path: ByteString,
        dev: u64,
        ino: u64,
    },
    /// Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`), one object per
    /// `id` across processes.
    Shmem {
        id: u64,
    },
    /// A `memfd_create(2)` file.
    Memfd {
        name: ByteString,
        id: u64,
    },
    /// A System V shared memory segment.
    SysvShm {
        shmid: i32,
    },
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vsyscall]`.
    Vsyscall,
}

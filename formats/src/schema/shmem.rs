//! Memory objects that outlive a single mapping: shared anonymous memory
//! and memfds (their pages are in the page store under
//! `PageOwner::Shmem { id }`, addressed by offset in the object), and files
//! deleted while still open or mapped (their bytes are in the record).
//!
//! ```text
//!   Vma { pid 7, Shmem { id 900 } } --\
//!   Vma { pid 8, Shmem { id 900 } } ----> Shmem { id 900, size, Anonymous } --> pages.img: Shmem { id 900 }
//!   File { id 4, Memfd { id 901 } } ----> Shmem { id 901, size, Memfd { name, seals } }
//!   File { id 5, Deleted { id 77 } } ---> DeletedFile { id 77, path, mode, data }
//!   Vma { pid 7, File { dev, ino 77 } } -/   (a mapping of a deleted file: by dev and ino)
//! ```

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};

/// One shared memory object, recorded once however many processes map it
/// or hold it open. `id` is what `VmaKind::Shmem`, `VmaKind::Memfd` and
/// `FileKind::Memfd` name (the object's inode number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmemObject {
    pub id: u64,
    /// Its size in bytes (`i_size`); pages beyond the stored ones are holes.
    pub size: u64,
    pub kind: ShmemKind,
}

/// What a shared memory object is. New kinds are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShmemKind {
    /// `MAP_SHARED | MAP_ANONYMOUS` memory (`/dev/zero (deleted)` in maps).
    Anonymous,
    /// A `memfd_create(2)` file: its name (without the `memfd:` prefix) and
    /// its seals (`F_GET_SEALS`).
    Memfd { name: ByteString, seals: u32 },
}

/// A regular file that was unlinked while a process still had it open or
/// mapped, with its whole contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedFile {
    /// What `FileKind::Deleted` names (the inode number).
    pub id: u64,
    /// Device and inode, as the mappings of it (`VmaKind::File`) name them.
    pub dev: u64,
    pub ino: u64,
    /// The path it had, without ` (deleted)`.
    pub path: ByteString,
    /// Permission bits.
    pub mode: u32,
    pub data: Blob,
}

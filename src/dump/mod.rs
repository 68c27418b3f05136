//! Dump: collect a frozen container's processes into a checkpoint image.
//!
//! ```text
//! precheck (container running)   every fd and mapping of every process is
//!                                claimed by a kind in files::REGISTRY / mm,
//!                                or the checkpoint is refused here, before
//!                                anything is frozen
//! pre-copy (still running)       precopy.rs: memory copied into the page
//!                                store while dirty.rs tracks what is
//!                                written meanwhile
//! freeze (cgroup freezer)        ── frozen window starts
//! seize every thread (ptrace)
//! collect per process:           status, creds, tree links   -> Process
//!                                threads: regs, xsave, mask  -> Thread
//!                                maps + pages                -> Vma + page store
//!                                (after a pre-copy: only pages written since)
//!                                fds                         -> File, Fd, PipeData
//!                                unix sockets (unix.rs)      -> File { Unix }
//! the IPC namespace (ipc.rs)     SysV shm/sem/msg, POSIX mqueues -> Sysv*, PosixMqueue
//! write records.img, pages.img   (formats: framed, checksummed, optional zstd)
//! leave running: detach + thaw   ── frozen window ends
//! or stop: kill every process
//! ```
//!
//! Any failure after the freeze detaches every thread and thaws the
//! container: it keeps running as if nothing happened, and the partial image
//! is removed.

pub mod checkpoint;
pub mod dirty;
pub mod events;
pub mod files;
pub mod inet;
pub mod ipc;
pub mod mm;
pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod precopy;
pub mod procfs;
pub mod shmem;
pub mod timens;
pub mod unix;

use std::path::{Path, PathBuf};

/// What went wrong while collecting, and where.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("reading {} of process {pid}: {source}", path.display())]
    Proc {
        pid: i32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {} of process {pid}: {message}", path.display())]
    Parse {
        pid: i32,
        path: PathBuf,
        message: String,
    },
    /// An object cr cannot checkpoint yet; the message names the process,
    /// the fd or address and the object.
    #[error("cannot checkpoint process {pid} ({comm}): {what}; the container was not frozen and keeps running")]
    Unsupported {
        pid: i32,
        comm: String,
        what: String,
    },
    #[error("reading memory of process {pid} at {addr:#x}: {source}")]
    Memory {
        pid: i32,
        addr: u64,
        #[source]
        source: nix::Error,
    },
}

impl DumpError {
    pub fn proc(pid: i32, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DumpError::Proc {
            pid,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

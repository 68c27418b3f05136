//! The IPC namespace of a container: SysV shared memory segments, semaphore
//! sets and message queues, and POSIX message queues.
//!
//! These objects belong to the namespace, not to a process: a container
//! keeps them while no process holds them. One record per object, written
//! after the processes:
//!
//! ```text
//!   SysvShm { perm { key, id, uid, gid, mode }, size, data }
//!   SysvSem { perm, values [3, 0, 7] }
//!   SysvMsgQueue { perm, qbytes, messages [ { mtype 2, data }, .. ] }
//!   PosixMqueue { name "q1", mode, uid, gid, maxmsg, msgsize,
//!                 messages [ { priority 5, data }, .. ] }
//! ```
//!
//! Restore creates each object with the same id (through
//! `/proc/sys/kernel/{shm,sem,msg}_next_id`) in the new IPC namespace before
//! any process of the container runs. A descriptor of a POSIX queue is a
//! [`super::FileKind::Mqueue`] naming the queue.

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};

/// The `ipc_perm` of a SysV object. Owner ids are as the container's user
/// namespace sees them (the host's when it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcPerm {
    /// `IPC_PRIVATE` (0) or the key the object was created with.
    pub key: i32,
    /// The id `shmget`/`semget`/`msgget` returned.
    pub id: i32,
    pub uid: u32,
    pub gid: u32,
    /// The creator's ids; restore cannot set them (the restorer creates the
    /// object), they are kept for `cr inspect`.
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits (lower 9) and, for segments, `SHM_DEST`/`SHM_LOCKED`.
    pub mode: u32,
}

/// A SysV shared memory segment (its attachments are the processes'
/// `Vma`s of kind `SysvShm { shmid }`, at their addresses with their
/// protection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvShm {
    pub perm: IpcPerm,
    /// The size asked of `shmget`, in bytes.
    pub size: u64,
    /// The contents, without trailing zero bytes (the rest of `size` is 0).
    pub data: Blob,
}

/// A SysV semaphore set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvSem {
    pub perm: IpcPerm,
    /// The value of every semaphore, in order (`GETALL`).
    pub values: Vec<u16>,
}

/// A SysV message queue with its messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMsgQueue {
    pub perm: IpcPerm,
    /// `msg_qbytes`: the most bytes the queue holds.
    pub qbytes: u64,
    pub messages: Vec<SysvMessage>,
}

/// One message of a SysV queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMessage {
    pub mtype: i64,
    pub data: Blob,
}

/// A POSIX message queue of the container's `/dev/mqueue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixMqueue {
    /// Its name without the leading `/`.
    pub name: ByteString,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    /// In the order `mq_receive` returns them: highest priority first,
    /// oldest first within a priority.
    pub messages: Vec<MqMessage>,
}

/// One message of a POSIX queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqMessage {
    pub priority: u32,
    pub data: Blob,
}

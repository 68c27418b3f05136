//! Namespace state beyond the processes: the mounts a container's processes
//! added to its mount namespace after start (and the contents of its tmpfs
//! mounts), its UTS names, and the time namespaces its processes made.
//!
//! ```text
//!   Mount { index 0, /tmp, Tmpfs(archive 0) }      standard /tmp: contents only
//!   Mount { index 1, /dev/shm, Tmpfs(archive 1) }  standard /dev/shm: contents only
//!   Mount { index 2, /mnt/scratch, Tmpfs(..) }     added: mounted, then filled
//!   Mount { index 3, /srv/b, Bind { from /srv/a } }
//!   Uts { hostname, domainname }                    once
//!   TimeNamespace { id 0, monotonic, boottime,      one per time namespace
//!     creator Some(7), members [8, 9] }             of the container's own
//! ```
//!
//! Mounts are replayed in `index` order (the order of the container's
//! `mountinfo`). A tmpfs's files are in `mounts/INDEX.tar` in the image
//! directory (GNU tar with xattrs, numeric owners).

use serde::{Deserialize, Serialize};

use crate::schema::ByteString;

/// One mount of the container's mount namespace that restore rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Position in the container's mount table: mounts are rebuilt in
    /// ascending order.
    pub index: u32,
    /// Mount point inside the container (absolute).
    pub mount_point: ByteString,
    pub kind: MountKind,
    /// Per-mount flags as `MS_*` bits (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`,
    /// `MS_NOEXEC`, `MS_NOATIME`, `MS_NODIRATIME`, `MS_RELATIME`,
    /// `MS_STRICTATIME`).
    pub flags: u64,
    /// Superblock options as `mountinfo` shows them, without `rw`/`ro`
    /// (e.g. `size=1024k,mode=755,inode64`).
    pub data: ByteString,
    /// The superblock itself is read-only (`mount -o remount,ro`).
    pub sb_readonly: bool,
    pub propagation: Propagation,
}

/// What a [`Mount`] is and where its contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// One of the mounts the start path creates itself (`/tmp`,
    /// `/dev/shm`): not mounted again, only refilled from its archive and
    /// given its recorded flags.
    Standard { archive: u32 },
    /// A new tmpfs, filled from `mounts/ARCHIVE.tar`.
    Tmpfs { archive: u32 },
    /// A bind mount of `source`, a path inside the container as it was
    /// when this mount was made (an earlier mount's point plus the path
    /// inside it).
    Bind { source: ByteString },
    /// A new instance of a pseudo filesystem: `proc`, `sysfs`, `mqueue`,
    /// `devpts`.
    Pseudo { fstype: ByteString },
}

/// Mount propagation, as `mountinfo`'s optional fields show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    Private,
    Shared,
    Unbindable,
}

/// The UTS namespace's names at checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uts {
    pub hostname: ByteString,
    pub domainname: ByteString,
}

/// A time namespace that processes of the container made
/// (`unshare(CLONE_NEWTIME)`), with its clock offsets. The container's own
/// clocks are the host's: processes in neither a creator's nor a member's
/// place are in the host's time namespace.
///
/// A process's time namespace is the one whose `members` name it (else
/// the host's); the namespace its children go to (`time_for_children`) is
/// the one whose `creator` it is, else its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeNamespace {
    /// Its number in this image.
    pub id: u32,
    /// `CLOCK_MONOTONIC` offset, as `/proc/PID/timens_offsets` shows it.
    pub monotonic: TimeOffset,
    /// `CLOCK_BOOTTIME` offset.
    pub boottime: TimeOffset,
    /// The process (pid in the container) whose `time_for_children` it is
    /// while its own time namespace is another: the one that made it with
    /// `unshare`. Restore makes it again in that process, so its children
    /// are born in it. `None`: restore makes it first and every member
    /// joins it with `setns`.
    pub creator: Option<i32>,
    /// The processes (pids in the container) whose time namespace it is.
    pub members: Vec<i32>,
}

/// A clock offset: seconds and nanoseconds (`0..1_000_000_000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeOffset {
    pub secs: i64,
    pub nanos: u32,
}

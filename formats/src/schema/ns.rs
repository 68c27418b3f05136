//! Namespace state beyond the processes: the mounts a container's processes
//! added to its mount namespace after start (and the contents of its tmpfs
//! mounts), and its UTS names.
//!
//! ```text
//!   Mount { index 0, /tmp, Tmpfs(archive 0) }      standard /tmp: contents only
//!   Mount { index 1, /dev/shm, Tmpfs(archive 1) }  standard /dev/shm: contents only
//!   Mount { index 2, /mnt/scratch, Tmpfs(..) }     added: mounted, then filled
//!   Mount { index 3, /srv/b, Bind { from /srv/a } }
//!   Uts { hostname, domainname }                    once
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

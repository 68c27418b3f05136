//! File descriptors: which kinds cr can checkpoint, and how each is
//! collected. One entry per kind in [`REGISTRY`]; a descriptor no kind claims
//! makes the checkpoint refuse with a sentence naming the process, the fd and
//! the object.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use cr_formats::schema::{ByteString, FileKind, PipeEnd};

use crate::dump::procfs::FdEntry;
use crate::dump::{events, DumpError};

/// What the kernel tells about the object behind one descriptor.
pub struct FdObject<'a> {
    pub pid: i32,
    pub entry: &'a FdEntry,
    pub meta: fs::Metadata,
}

/// One kind of file cr can checkpoint.
pub struct FileKindDump {
    /// Name for messages and `cr inspect`.
    pub name: &'static str,
    /// Whether this kind handles the object.
    pub claims: fn(&FdObject) -> bool,
    /// Its record (pipes are identified by inode; their data is collected
    /// separately while the container is frozen).
    pub collect: fn(&FdObject) -> Result<FileKind, DumpError>,
}

/// Character devices a container may hold open: the standard nodes of its
/// private /dev, its console and ptys are re-opened by path on restore.
const DEVICES: &[(u32, u32)] = &[
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 1),
    (5, 2),
];

/// Every kind of file descriptor cr can checkpoint.
pub static REGISTRY: &[FileKindDump] = &[
    // Before "regular file": a queue's descriptor looks like one (one
    // removed with mq_unlink is refused by dump::ipc::check_fds).
    FileKindDump {
        name: crate::dump::ipc::MQUEUE_KIND,
        claims: |o| {
            nix::sys::statfs::statfs(format!("/proc/{}/fd/{}", o.pid, o.entry.fd).as_str())
                .is_ok_and(|s| s.filesystem_type().0 == crate::dump::ipc::MQUEUE_MAGIC)
        },
        collect: |o| {
            Ok(FileKind::Mqueue {
                name: ByteString::from(o.entry.target.trim_start_matches('/')),
            })
        },
    },
    FileKindDump {
        name: "regular file",
        claims: |o| o.meta.file_type().is_file() && path_target(o).is_some() && !is_deleted(o),
        collect: |o| {
            Ok(FileKind::Regular {
                path: ByteString::from(o.entry.target.as_str()),
                pos: o.entry.info.pos,
                size: o.meta.size(),
            })
        },
    },
    FileKindDump {
        name: "directory",
        claims: |o| o.meta.file_type().is_dir() && path_target(o).is_some() && !is_deleted(o),
        collect: |o| {
            Ok(FileKind::Directory {
                path: ByteString::from(o.entry.target.as_str()),
                pos: o.entry.info.pos,
            })
        },
    },
    FileKindDump {
        name: "character device",
        claims: |o| {
            let rdev = o.meta.rdev();
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            o.meta.file_type().is_char_device()
                && path_target(o).is_some()
                && (DEVICES.contains(&(major, minor)) || major == 136)
        },
        collect: |o| {
            Ok(FileKind::CharDevice {
                path: ByteString::from(o.entry.target.as_str()),
                rdev: o.meta.rdev(),
                pos: o.entry.info.pos,
            })
        },
    },
    FileKindDump {
        name: "pipe",
        claims: |o| o.meta.file_type().is_fifo() && o.entry.target.starts_with("pipe:["),
        collect: |o| {
            Ok(FileKind::Pipe {
                pipe: o.meta.ino(),
                end: pipe_end(o),
            })
        },
    },
    FileKindDump {
        name: "FIFO",
        claims: |o| o.meta.file_type().is_fifo() && path_target(o).is_some() && !is_deleted(o),
        collect: |o| {
            Ok(FileKind::Fifo {
                path: ByteString::from(o.entry.target.as_str()),
                pipe: o.meta.ino(),
                end: pipe_end(o),
            })
        },
    },
    FileKindDump {
        name: UNIX_SOCKET,
        claims: crate::dump::unix::is_unix,
        collect: crate::dump::unix::collect,
    },
    FileKindDump {
        name: "eventfd",
        claims: |o| o.entry.target == events::EVENTFD,
        collect: events::collect,
    },
    FileKindDump {
        name: "epoll",
        claims: |o| o.entry.target == events::EPOLL,
        collect: events::collect,
    },
    FileKindDump {
        name: "signalfd",
        claims: |o| o.entry.target == events::SIGNALFD,
        collect: events::collect,
    },
    FileKindDump {
        name: "timerfd",
        claims: |o| o.entry.target == events::TIMERFD,
        collect: events::collect,
    },
    FileKindDump {
        name: "inotify",
        claims: |o| o.entry.target == events::INOTIFY,
        collect: events::collect,
    },
    FileKindDump {
        name: crate::dump::inet::KIND_NAME,
        claims: crate::dump::inet::claims,
        collect: crate::dump::inet::collect,
    },
    FileKindDump {
        name: crate::dump::netlink::KIND_NAME,
        claims: crate::dump::netlink::claims,
        collect: crate::dump::netlink::collect,
    },
    FileKindDump {
        name: "memfd",
        claims: |o| {
            o.meta.file_type().is_file()
                && crate::dump::shmem::memfd_name(&o.entry.target).is_some()
        },
        collect: |o| {
            Ok(FileKind::Memfd {
                id: o.meta.ino(),
                pos: o.entry.info.pos,
            })
        },
    },
    FileKindDump {
        name: "deleted file",
        claims: |o| {
            o.meta.file_type().is_file()
                && crate::dump::shmem::deleted_path(&o.entry.target).is_some()
        },
        collect: |o| {
            Ok(FileKind::Deleted {
                id: o.meta.ino(),
                pos: o.entry.info.pos,
            })
        },
    },
];

/// The name of the unix socket kind ([`crate::dump::unix`]), which the
/// survey also checks as a whole.
pub const UNIX_SOCKET: &str = "unix socket";

fn path_target<'a>(o: &'a FdObject) -> Option<&'a str> {
    o.entry
        .target
        .starts_with('/')
        .then_some(o.entry.target.as_str())
}

fn is_deleted(o: &FdObject) -> bool {
    o.entry.target.ends_with(" (deleted)") || o.meta.nlink() == 0
}

fn pipe_end(o: &FdObject) -> PipeEnd {
    if o.entry.info.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 {
        PipeEnd::Write
    } else {
        PipeEnd::Read
    }
}

/// The kind that claims a descriptor, or a refusal naming it.
/// Also returns what the kernel said about the object, so collecting it
/// later does not ask again.
pub fn classify(
    pid: i32,
    comm: &str,
    entry: &FdEntry,
) -> Result<(&'static FileKindDump, fs::Metadata), DumpError> {
    events::survey(pid, comm, entry)?;
    let path = format!("/proc/{pid}/fd/{}", entry.fd);
    let meta = fs::metadata(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    let object = FdObject { pid, entry, meta };
    REGISTRY
        .iter()
        .find(|kind| (kind.claims)(&object))
        .map(|kind| (kind, object.meta.clone()))
        .ok_or_else(|| DumpError::Unsupported {
            pid,
            comm: comm.to_string(),
            what: format!(
                "fd {} is {}, which cr cannot move yet",
                entry.fd,
                describe(&object)
            ),
        })
}

/// Collects the record of a descriptor that [`classify`] accepted.
pub fn collect(
    pid: i32,
    entry: &FdEntry,
    kind: &FileKindDump,
    meta: &fs::Metadata,
) -> Result<FileKind, DumpError> {
    (kind.collect)(&FdObject {
        pid,
        entry,
        meta: meta.clone(),
    })
}

/// A user's name for an object no kind claims.
fn describe(o: &FdObject) -> String {
    let target = &o.entry.target;
    if let Some(inner) = target.strip_prefix("anon_inode:") {
        let inner = inner.trim_matches(|c| c == '[' || c == ']');
        return format!("an {inner} ({target})");
    }
    if target.starts_with("socket:") {
        if let Some(other) = crate::dump::netlink::describe(o) {
            return other;
        }
        if let Some(inet) = crate::dump::inet::describe(o) {
            return inet;
        }
        return format!("a socket ({target})");
    }
    let ft = o.meta.file_type();
    if ft.is_block_device() {
        return format!("the block device {target}");
    }
    if ft.is_char_device() {
        let rdev = o.meta.rdev();
        return format!(
            "the device {target} ({}:{})",
            libc::major(rdev),
            libc::minor(rdev)
        );
    }
    if is_deleted(o) {
        return format!("the deleted file {target}");
    }
    target.to_string()
}

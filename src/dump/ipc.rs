//! The container's IPC namespace: SysV shared memory, semaphores, message
//! queues and POSIX message queues.
//!
//! These objects outlive the processes that made them, so they are collected
//! from the namespace itself, not from the processes:
//!
//! ```text
//! survey (before the freeze)      a thread joins /proc/PID1/ns/ipc and
//!                                 refuses what cannot move: partial
//!                                 attachments of a segment, segments
//!                                 attached from outside the container,
//!                                 queues with a notification registered,
//!                                 full POSIX queues
//! collect (frozen)                the same thread, in the namespace:
//!   *_INFO + *_STAT_ANY by index  every segment, semaphore set and queue
//!   shmat(SHM_RDONLY)             a segment's contents
//!   semctl(GETALL)                a set's values
//!   msgrcv(MSG_COPY)              every message, not consumed
//!   /proc/PID1/root/dev/mqueue    the names of the POSIX queues
//!   mq_receive + mq_send          every message, taken and put back in the
//!                                 same order (the container is frozen)
//! write                           SysvShm, SysvSem, SysvMsgQueue, PosixMqueue
//! ```
//!
//! A descriptor of a POSIX queue (`files::REGISTRY`) is recorded as
//! `FileKind::Mqueue` naming the queue. Owner ids are written as the
//! container's user namespace sees them.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use cr_formats::schema::{
    Blob, ByteString, IpcPerm, MqMessage, PosixMqueue, SysvMessage, SysvMsgQueue, SysvSem, SysvShm,
};
use nix::errno::Errno;

/// The name of the descriptor kind of POSIX queues in `files::REGISTRY`.
pub const MQUEUE_KIND: &str = "POSIX message queue";

/// Refuses a descriptor of a POSIX queue removed with `mq_unlink`: no name
/// is left to find it by, in the namespace or on restore. `fds`: (fd,
/// its inode's link count) of process `pid` (`comm`).
pub fn check_fds(pid: i32, comm: &str, fds: &[(i32, u64, &str)]) -> Result<(), IpcError> {
    for &(fd, nlink, target) in fds {
        if nlink == 0 {
            return Err(IpcError::Unsupported(format!(
                "process {pid} ({comm}) holds fd {fd}, POSIX message queue {target}, which was removed with mq_unlink and cannot be moved"
            )));
        }
    }
    Ok(())
}

/// `statfs` magic of the mqueue filesystem.
pub const MQUEUE_MAGIC: i64 = 0x1980_0202;

// Commands and flags of the SysV calls (linux/ipc.h, shm.h, sem.h, msg.h).
pub(crate) const IPC_CREAT: i32 = 0o1000;
pub(crate) const IPC_EXCL: i32 = 0o2000;
pub(crate) const IPC_NOWAIT: i32 = 0o4000;
pub(crate) const IPC_RMID: i32 = 0;
pub(crate) const IPC_SET: i32 = 1;
pub(crate) const IPC_STAT: i32 = 2;
pub(crate) const SHM_RDONLY: i32 = 0o10000;
const SHM_INFO: i32 = 14;
const SHM_STAT_ANY: i32 = 15;
pub(crate) const GETALL: i32 = 13;
pub(crate) const SETALL: i32 = 17;
const SEM_INFO: i32 = 19;
const SEM_STAT_ANY: i32 = 20;
const MSG_INFO: i32 = 12;
const MSG_STAT_ANY: i32 = 13;
const MSG_COPY: i32 = 0o40000;
/// `SHM_DEST` in a segment's mode: removed, gone with its last detach.
pub const SHM_DEST: u32 = 0o1000;

/// `struct ipc64_perm` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Perm64 {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
    pub seq: u16,
    pub pad: u16,
    pub unused: [u64; 2],
}

/// `struct shmid64_ds` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShmidDs {
    pub perm: Perm64,
    pub segsz: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
    pub unused: [u64; 2],
}

/// `struct semid64_ds` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SemidDs {
    pub perm: Perm64,
    pub otime: i64,
    pub unused1: u64,
    pub ctime: i64,
    pub unused2: u64,
    pub nsems: u64,
    pub unused: [u64; 2],
}

/// `struct msqid64_ds` on x86-64.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MsqidDs {
    pub perm: Perm64,
    pub stime: i64,
    pub rtime: i64,
    pub ctime: i64,
    pub cbytes: u64,
    pub qnum: u64,
    pub qbytes: u64,
    pub lspid: i32,
    pub lrpid: i32,
    pub unused: [u64; 2],
}

/// `struct mq_attr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MqAttr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
    pub pad: [i64; 4],
}

/// What went wrong with the IPC namespace.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An object cr cannot move; the sentence names it.
    #[error("cannot checkpoint the container's IPC namespace: {0}; the container was not frozen and keeps running")]
    Unsupported(String),
    #[error("the IPC namespace helper thread panicked")]
    Helper,
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> IpcError {
    let what = what.into();
    move |source| IpcError::Sys { what, source }
}

/// Everything of one IPC namespace.
#[derive(Debug, Default, Clone)]
pub struct IpcObjects {
    pub shm: Vec<SysvShm>,
    pub sem: Vec<SysvSem>,
    pub msg: Vec<SysvMsgQueue>,
    pub mqueues: Vec<PosixMqueue>,
}

/// Maps host ids to the container's (its user namespace's `uid_map` or
/// `gid_map`; identity without one).
struct IdMap(Vec<(u32, u32, u32)>);

impl IdMap {
    fn read(pid: i32, file: &str) -> Result<Self, IpcError> {
        let path = format!("/proc/{pid}/{file}");
        let text = fs::read_to_string(&path).map_err(|source| IpcError::Io {
            path: path.clone(),
            source,
        })?;
        let mut v = Vec::new();
        for line in text.lines() {
            let f: Vec<u32> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [inside, outside, count] = f[..] {
                v.push((inside, outside, count));
            }
        }
        Ok(IdMap(v))
    }

    fn to_inside(&self, host: u32) -> u32 {
        for &(inside, outside, count) in &self.0 {
            if host >= outside && host - outside < count {
                return inside + (host - outside);
            }
        }
        65534
    }
}

/// Runs `f` on a thread that joined the IPC namespace of host process
/// `pid` (a thread may join an IPC namespace on its own).
fn in_namespace<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> Result<T, IpcError> + Send + 'static,
) -> Result<T, IpcError> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = fs::File::open(&path).map_err(|source| IpcError::Io {
        path: path.clone(),
        source,
    })?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC)
            .map_err(sys(format!("joining the IPC namespace {path}")))?;
        f()
    })
    .join()
    .map_err(|_| IpcError::Helper)?
}

/// A mapping of a SysV segment in a process of the container.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub pid: i32,
    pub comm: String,
    pub start: u64,
    pub end: u64,
    pub shmid: i32,
}

/// Checks before the freeze that every object of the namespace of the
/// container whose PID 1 is host process `init` can be moved, and that
/// every attachment of a segment in its processes is whole (restore
/// attaches the whole segment again at the same address).
pub fn survey(init: i32, attachments: Vec<Attachment>) -> Result<(), IpcError> {
    let mq_dir = mqueue_dir(init)?;
    in_namespace(init, move || {
        let segments = list_shm()?;
        for a in &attachments {
            let refuse = |what: String| {
                IpcError::Unsupported(format!(
                    "process {} ({}) maps {:#x}-{:#x} of SysV shared memory segment {}, {what}",
                    a.pid, a.comm, a.start, a.end, a.shmid
                ))
            };
            let Some((_, ds)) = segments.iter().find(|(id, _)| *id == a.shmid) else {
                return Err(refuse(
                    "which is not in the container's IPC namespace".into(),
                ));
            };
            if a.end - a.start != ds.segsz.div_ceil(4096) * 4096 {
                return Err(refuse(format!(
                    "only part of its {} bytes, and partial attachments are not moved",
                    ds.segsz
                )));
            }
        }
        for (id, ds) in &segments {
            let inside = attachments.iter().filter(|a| a.shmid == *id).count() as u64;
            if ds.nattch > inside {
                return Err(IpcError::Unsupported(format!(
                    "SysV shared memory segment {id} (key {:#x}) is attached {} times but only {inside} times by the container's processes",
                    ds.perm.key, ds.nattch
                )));
            }
        }
        for name in mqueue_names(&mq_dir)? {
            let fd = mq_open(&name)?;
            let info = mq_info(&fd, &name)?;
            if info.contains("NOTIFY_PID:") && !info.contains("NOTIFY_PID:0") {
                return Err(IpcError::Unsupported(format!(
                    "POSIX message queue /{} has a notification registered (mq_notify), which cr cannot move",
                    String::from_utf8_lossy(&name)
                )));
            }
            let attr = mq_getattr(&fd, &name)?;
            if attr.curmsgs >= attr.maxmsg {
                return Err(IpcError::Unsupported(format!(
                    "POSIX message queue /{} is full ({} messages): a blocked sender would slip its message in while cr reads the queue",
                    String::from_utf8_lossy(&name),
                    attr.curmsgs
                )));
            }
        }
        Ok(())
    })
}

impl IpcObjects {
    /// The records, in the order they are written.
    pub fn into_records(self) -> impl Iterator<Item = cr_formats::schema::Record> {
        use cr_formats::schema::Record;
        let shm = self.shm.into_iter().map(Record::SysvShm);
        let sem = self.sem.into_iter().map(Record::SysvSem);
        let msg = self.msg.into_iter().map(Record::SysvMsgQueue);
        let mq = self.mqueues.into_iter().map(Record::PosixMqueue);
        shm.chain(sem).chain(msg).chain(mq)
    }
}

/// Collects every object of the (frozen) container's IPC namespace.
pub fn collect(init: i32) -> Result<IpcObjects, IpcError> {
    let uids = IdMap::read(init, "uid_map")?;
    let gids = IdMap::read(init, "gid_map")?;
    let mq_dir = mqueue_dir(init)?;
    in_namespace(init, move || {
        let perm = |id: i32, p: &Perm64| IpcPerm {
            key: p.key,
            id,
            uid: uids.to_inside(p.uid),
            gid: gids.to_inside(p.gid),
            cuid: uids.to_inside(p.cuid),
            cgid: gids.to_inside(p.cgid),
            mode: p.mode,
        };
        let mut out = IpcObjects::default();
        for (id, ds) in list_shm()? {
            out.shm.push(SysvShm {
                perm: perm(id, &ds.perm),
                size: ds.segsz,
                data: Blob(shm_contents(id, ds.segsz)?),
            });
        }
        for (id, ds) in list_sem()? {
            let mut values = vec![0u16; ds.nsems as usize];
            // SAFETY: GETALL writes nsems u16 values to the buffer, which
            // holds exactly that many.
            let rc = unsafe { libc::syscall(libc::SYS_semctl, id, 0, GETALL, values.as_mut_ptr()) };
            Errno::result(rc).map_err(sys(format!("reading semaphore set {id}")))?;
            out.sem.push(SysvSem {
                perm: perm(id, &ds.perm),
                values,
            });
        }
        for (id, ds) in list_msg()? {
            let mut messages = Vec::new();
            // A message is never larger than the queue.
            let mut buf = vec![0u8; 8 + ds.qbytes.max(ds.cbytes) as usize];
            for index in 0..ds.qnum {
                // SAFETY: msgrcv writes at most buf.len() - 8 bytes of text
                // after the 8-byte type into buf.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_msgrcv,
                        id,
                        buf.as_mut_ptr(),
                        buf.len() - 8,
                        index as i64,
                        IPC_NOWAIT | MSG_COPY,
                    )
                };
                let n = Errno::result(n).map_err(sys(format!(
                    "copying message {index} of message queue {id}"
                )))? as usize;
                let mut mtype = [0u8; 8];
                mtype.copy_from_slice(&buf[..8]);
                messages.push(SysvMessage {
                    mtype: i64::from_ne_bytes(mtype),
                    data: Blob(buf[8..8 + n].to_vec()),
                });
            }
            out.msg.push(SysvMsgQueue {
                perm: perm(id, &ds.perm),
                qbytes: ds.qbytes,
                messages,
            });
        }
        for name in mqueue_names(&mq_dir)? {
            out.mqueues
                .push(collect_mqueue(&mq_dir, &name, &uids, &gids)?);
        }
        Ok(out)
    })
}

/// The container's `/dev/mqueue`, as the host reaches it; it must be the
/// mqueue filesystem of its namespace, or the queues could not be listed.
fn mqueue_dir(init: i32) -> Result<String, IpcError> {
    let dir = format!("/proc/{init}/root/dev/mqueue");
    let st = nix::sys::statfs::statfs(dir.as_str()).map_err(|e| {
        IpcError::Unsupported(format!(
            "its POSIX message queues cannot be listed: {dir} is not reachable ({e})"
        ))
    })?;
    if st.filesystem_type().0 != MQUEUE_MAGIC {
        return Err(IpcError::Unsupported(
            "its POSIX message queues cannot be listed: /dev/mqueue in the container is not an mqueue filesystem".to_string(),
        ));
    }
    Ok(dir)
}

fn mqueue_names(dir: &str) -> Result<Vec<Vec<u8>>, IpcError> {
    let rd = fs::read_dir(dir).map_err(|source| IpcError::Io {
        path: dir.to_string(),
        source,
    })?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|source| IpcError::Io {
            path: dir.to_string(),
            source,
        })?;
        names.push(e.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// Opens queue `name` of the calling thread's IPC namespace, read-write and
/// non-blocking.
fn mq_open(name: &[u8]) -> Result<OwnedFd, IpcError> {
    let cname = CString::new(name.to_vec())
        .map_err(|_| IpcError::Unsupported("a POSIX message queue name holds a NUL".into()))?;
    // SAFETY: mq_open reads the NUL-terminated name; no attr without O_CREAT.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            cname.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0,
            std::ptr::null::<MqAttr>(),
        )
    };
    let fd = Errno::result(fd).map_err(sys(format!(
        "opening POSIX message queue /{}",
        String::from_utf8_lossy(name)
    )))?;
    // SAFETY: mq_open just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub(crate) fn mq_getattr(fd: &OwnedFd, name: &[u8]) -> Result<MqAttr, IpcError> {
    let mut attr = MqAttr::default();
    // SAFETY: mq_getsetattr writes one mq_attr to the pointer; no new attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd.as_raw_fd(),
            std::ptr::null::<MqAttr>(),
            &mut attr as *mut MqAttr,
        )
    };
    Errno::result(rc).map_err(sys(format!(
        "reading the attributes of POSIX message queue /{}",
        String::from_utf8_lossy(name)
    )))?;
    Ok(attr)
}

/// The queue's status line (`QSIZE:.. NOTIFY:.. SIGNO:.. NOTIFY_PID:..`).
fn mq_info(fd: &OwnedFd, name: &[u8]) -> Result<String, IpcError> {
    let mut buf = [0u8; 256];
    let n = nix::unistd::read(fd, &mut buf).map_err(sys(format!(
        "reading the status of POSIX message queue /{}",
        String::from_utf8_lossy(name)
    )))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn collect_mqueue(
    dir: &str,
    name: &[u8],
    uids: &IdMap,
    gids: &IdMap,
) -> Result<PosixMqueue, IpcError> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let fd = mq_open(name)?;
    let meta = fs::metadata(format!("{dir}/{shown}")).map_err(|source| IpcError::Io {
        path: format!("{dir}/{shown}"),
        source,
    })?;
    let attr = mq_getattr(&fd, name)?;
    let mut buf = vec![0u8; attr.msgsize.max(1) as usize];
    let mut messages = Vec::new();
    loop {
        let mut prio: u32 = 0;
        // SAFETY: mq_timedreceive writes at most buf.len() bytes to buf and
        // the priority to prio; no timeout (the fd is non-blocking).
        let n = unsafe {
            libc::syscall(
                libc::SYS_mq_timedreceive,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut prio as *mut u32,
                std::ptr::null::<libc::timespec>(),
            )
        };
        match Errno::result(n) {
            Ok(n) => messages.push(MqMessage {
                priority: prio,
                data: Blob(buf[..n as usize].to_vec()),
            }),
            Err(Errno::EAGAIN) => break,
            Err(e) => {
                // Put back what was taken before failing.
                let _ = mq_send_all(&fd, name, &messages);
                return Err(sys(format!("reading POSIX message queue /{shown}"))(e));
            }
        }
    }
    mq_send_all(&fd, name, &messages)?;
    Ok(PosixMqueue {
        name: ByteString(name.to_vec()),
        mode: meta.mode() & 0o7777,
        uid: uids.to_inside(meta.uid()),
        gid: gids.to_inside(meta.gid()),
        maxmsg: attr.maxmsg,
        msgsize: attr.msgsize,
        messages,
    })
}

/// Sends `messages` in order to the queue.
pub(crate) fn mq_send_all(
    fd: &OwnedFd,
    name: &[u8],
    messages: &[MqMessage],
) -> Result<(), IpcError> {
    for m in messages {
        // SAFETY: mq_timedsend reads len bytes from the message; no timeout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mq_timedsend,
                fd.as_raw_fd(),
                m.data.0.as_ptr(),
                m.data.0.len(),
                m.priority,
                std::ptr::null::<libc::timespec>(),
            )
        };
        Errno::result(rc).map_err(sys(format!(
            "putting a message back into POSIX message queue /{}",
            String::from_utf8_lossy(name)
        )))?;
    }
    Ok(())
}

/// Calls `stat` for every index up to the highest in use (`info`), keeping
/// the slots in use: (id, ds).
fn list<T: Default>(
    what: &str,
    info: impl Fn(*mut u8) -> i64,
    stat: impl Fn(i32, *mut T) -> i64,
) -> Result<Vec<(i32, T)>, IpcError> {
    let mut buf = [0u64; 32];
    let max =
        Errno::result(info(buf.as_mut_ptr().cast())).map_err(sys(format!("listing the {what}")))?;
    let mut out = Vec::new();
    for index in 0..=max as i32 {
        let mut ds = T::default();
        match Errno::result(stat(index, &mut ds)) {
            Ok(id) => out.push((id as i32, ds)),
            Err(Errno::EINVAL) | Err(Errno::EIDRM) => {} // a free slot
            Err(e) => return Err(sys(format!("reading {what} slot {index}"))(e)),
        }
    }
    Ok(out)
}

fn list_shm() -> Result<Vec<(i32, ShmidDs)>, IpcError> {
    list(
        "SysV shared memory segments",
        // SAFETY: SHM_INFO writes a struct shm_info (under 256 bytes) to the
        // buffer of [`list`], which holds 256.
        |buf| unsafe { libc::syscall(libc::SYS_shmctl, 0, SHM_INFO, buf) },
        // SAFETY: SHM_STAT_ANY writes one shmid64_ds to ds.
        |index, ds| unsafe { libc::syscall(libc::SYS_shmctl, index, SHM_STAT_ANY, ds) },
    )
}

fn list_sem() -> Result<Vec<(i32, SemidDs)>, IpcError> {
    list(
        "SysV semaphore sets",
        // SAFETY: SEM_INFO writes a struct seminfo (40 bytes) to the buffer.
        |buf| unsafe { libc::syscall(libc::SYS_semctl, 0, 0, SEM_INFO, buf) },
        // SAFETY: SEM_STAT_ANY writes one semid64_ds to ds.
        |index, ds| unsafe { libc::syscall(libc::SYS_semctl, index, 0, SEM_STAT_ANY, ds) },
    )
}

fn list_msg() -> Result<Vec<(i32, MsqidDs)>, IpcError> {
    list(
        "SysV message queues",
        // SAFETY: MSG_INFO writes a struct msginfo (32 bytes) to the buffer.
        |buf| unsafe { libc::syscall(libc::SYS_msgctl, 0, MSG_INFO, buf) },
        // SAFETY: MSG_STAT_ANY writes one msqid64_ds to ds.
        |index, ds| unsafe { libc::syscall(libc::SYS_msgctl, index, MSG_STAT_ANY, ds) },
    )
}

/// A segment's bytes, read through a read-only attachment in cr itself,
/// without trailing zeros. Only pages the segment holds are read (mincore):
/// reading a hole would allocate it.
fn shm_contents(id: i32, size: u64) -> Result<Vec<u8>, IpcError> {
    // SAFETY: shmat maps the segment read-only at an address the kernel
    // picks; it is only read below, for its size, and detached after.
    let addr = unsafe { libc::syscall(libc::SYS_shmat, id, 0usize, SHM_RDONLY) };
    let addr = Errno::result(addr).map_err(sys(format!("attaching SysV segment {id}")))? as usize;
    let read = || -> Result<Vec<u8>, IpcError> {
        let page = 4096usize;
        let size = size as usize;
        let pages = size.div_ceil(page);
        let mut resident = vec![0u8; pages];
        // SAFETY: the attachment covers `pages` pages from `addr`; mincore
        // writes one byte per page into `resident`, which holds that many.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, size, resident.as_mut_ptr()) };
        Errno::result(rc).map_err(sys(format!("finding the pages of SysV segment {id}")))?;
        let mut data = vec![0u8; size];
        for (i, r) in resident.iter().enumerate() {
            if r & 1 == 0 {
                continue;
            }
            let start = i * page;
            let end = (start + page).min(size);
            // SAFETY: [start, end) lies inside the attachment, which stays
            // until the shmdt below; nothing writes it meanwhile (read-only
            // here, and the container is frozen).
            let src =
                unsafe { std::slice::from_raw_parts((addr + start) as *const u8, end - start) };
            data[start..end].copy_from_slice(src);
        }
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        data.truncate(end);
        Ok(data)
    };
    let data = read();
    // SAFETY: detaches the attachment made above; nothing refers to it after.
    unsafe { libc::syscall(libc::SYS_shmdt, addr) };
    data
}

//! Rebuilding the container's IPC namespace: SysV shared memory segments,
//! semaphore sets, message queues and POSIX message queues.
//!
//! ```text
//! PID 1 of the restore, in the new IPC namespace, in its cgroups, before
//! pivot_root (the host's /proc/sys is still reachable and writable) and
//! before any process of the image exists:
//!   for each object:  /proc/sys/kernel/{shm,sem,msg}_next_id = id
//!                     shmget/semget/msgget(key, IPC_CREAT|IPC_EXCL)
//!                     (the kernel must hand out the same id, or restore fails)
//!                     IPC_STAT + IPC_SET: owner, mode (and msg_qbytes)
//!                     contents: segment bytes, SETALL, msgsnd in order
//!   each POSIX queue: mq_open(O_CREAT|O_EXCL, maxmsg, msgsize), mq_send in
//!                     order, fchmod + fchown
//! later, open_table (restore::tree): a FileKind::Mqueue descriptor is
//!   mq_open(name) with the recorded access mode and O_NONBLOCK
//! ```
//!
//! A failure stops PID 1, which takes the new namespace (and every object
//! made in it) with it: nothing is left behind.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use cr_formats::schema::{IpcPerm, PosixMqueue, SysvMsgQueue, SysvSem, SysvShm};
use nix::errno::Errno;

use crate::dump::ipc::{
    mq_send_all, IpcObjects, MqAttr, MsqidDs, SemidDs, ShmidDs, GETALL, IPC_CREAT, IPC_EXCL,
    IPC_NOWAIT, IPC_SET, IPC_STAT, SETALL,
};
use crate::error::{Error, Result};

fn sys(what: String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::sys(what, e)
}

/// Creates every object of `ipc` in the calling process's IPC namespace.
pub fn restore(ipc: &IpcObjects) -> Result<()> {
    for s in &ipc.shm {
        restore_shm(s)?;
    }
    for s in &ipc.sem {
        restore_sem(s)?;
    }
    for q in &ipc.msg {
        restore_msg(q)?;
    }
    for q in &ipc.mqueues {
        restore_mqueue(q)?;
    }
    Ok(())
}

/// Makes the next `kind` object (shm, sem or msg) get `id`.
fn next_id(kind: &str, id: i32) -> Result<()> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|source| Error::Io {
        what: "setting the next IPC id in".into(),
        path: path.into(),
        source,
    })
}

fn check_id(what: &str, perm: &IpcPerm, got: i64) -> Result<()> {
    if got != i64::from(perm.id) {
        return Err(Error::Invalid(format!(
            "{what} {} (key {:#x}) came back with id {got}",
            perm.id, perm.key
        )));
    }
    Ok(())
}

fn flags(perm: &IpcPerm) -> i32 {
    IPC_CREAT | IPC_EXCL | (perm.mode & 0o777) as i32
}

fn restore_shm(s: &SysvShm) -> Result<()> {
    let what = format!("SysV shared memory segment {}", s.perm.id);
    next_id("shm", s.perm.id)?;
    // SAFETY: shmget takes plain values.
    let id = unsafe { libc::syscall(libc::SYS_shmget, s.perm.key, s.size, flags(&s.perm)) };
    let id = Errno::result(id).map_err(sys(format!("creating {what}")))?;
    check_id("SysV shared memory segment", &s.perm, id)?;
    let mut ds = ShmidDs::default();
    // SAFETY: IPC_STAT writes one shmid64_ds to ds.
    let rc = unsafe { libc::syscall(libc::SYS_shmctl, id, IPC_STAT, &mut ds as *mut ShmidDs) };
    Errno::result(rc).map_err(sys(format!("reading {what}")))?;
    ds.perm.uid = s.perm.uid;
    ds.perm.gid = s.perm.gid;
    ds.perm.mode = s.perm.mode & 0o777;
    // SAFETY: IPC_SET reads one shmid64_ds from ds.
    let rc = unsafe { libc::syscall(libc::SYS_shmctl, id, IPC_SET, &ds as *const ShmidDs) };
    Errno::result(rc).map_err(sys(format!("setting the owner and mode of {what}")))?;
    let data = s.data.as_bytes();
    if data.is_empty() {
        return Ok(());
    }
    if data.len() as u64 > s.size {
        return Err(Error::Invalid(format!(
            "{what}: the image holds {} bytes for a segment of {}",
            data.len(),
            s.size
        )));
    }
    // SAFETY: shmat maps the new segment read-write where the kernel picks;
    // it is written below within its size and detached right after.
    let addr = unsafe { libc::syscall(libc::SYS_shmat, id, 0usize, 0) };
    let addr = Errno::result(addr).map_err(sys(format!("attaching {what}")))? as usize;
    // SAFETY: the attachment covers `size` >= data.len() bytes at `addr`,
    // nothing else uses it, and it is detached right after.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len());
        libc::syscall(libc::SYS_shmdt, addr);
    }
    Ok(())
}

fn restore_sem(s: &SysvSem) -> Result<()> {
    let what = format!("SysV semaphore set {}", s.perm.id);
    next_id("sem", s.perm.id)?;
    // SAFETY: semget takes plain values.
    let id = unsafe { libc::syscall(libc::SYS_semget, s.perm.key, s.values.len(), flags(&s.perm)) };
    let id = Errno::result(id).map_err(sys(format!("creating {what}")))?;
    check_id("SysV semaphore set", &s.perm, id)?;
    let mut ds = SemidDs::default();
    // SAFETY: IPC_STAT writes one semid64_ds to ds.
    let rc = unsafe { libc::syscall(libc::SYS_semctl, id, 0, IPC_STAT, &mut ds as *mut SemidDs) };
    Errno::result(rc).map_err(sys(format!("reading {what}")))?;
    ds.perm.uid = s.perm.uid;
    ds.perm.gid = s.perm.gid;
    ds.perm.mode = s.perm.mode & 0o777;
    // SAFETY: IPC_SET reads one semid64_ds from ds.
    let rc = unsafe { libc::syscall(libc::SYS_semctl, id, 0, IPC_SET, &ds as *const SemidDs) };
    Errno::result(rc).map_err(sys(format!("setting the owner and mode of {what}")))?;
    if s.values.is_empty() {
        return Ok(());
    }
    // SAFETY: SETALL reads one u16 per semaphore of the set, which has
    // values.len() of them.
    let rc = unsafe { libc::syscall(libc::SYS_semctl, id, 0, SETALL, s.values.as_ptr()) };
    Errno::result(rc).map_err(sys(format!("setting the values of {what}")))?;
    let mut check = vec![0u16; s.values.len()];
    // SAFETY: GETALL writes one u16 per semaphore into `check`.
    let rc = unsafe { libc::syscall(libc::SYS_semctl, id, 0, GETALL, check.as_mut_ptr()) };
    Errno::result(rc).map_err(sys(format!("reading back the values of {what}")))?;
    if check != s.values {
        return Err(Error::Invalid(format!(
            "{what}: values {check:?} after SETALL, not {:?}",
            s.values
        )));
    }
    Ok(())
}

fn restore_msg(q: &SysvMsgQueue) -> Result<()> {
    let what = format!("SysV message queue {}", q.perm.id);
    next_id("msg", q.perm.id)?;
    // SAFETY: msgget takes plain values.
    let id = unsafe { libc::syscall(libc::SYS_msgget, q.perm.key, flags(&q.perm)) };
    let id = Errno::result(id).map_err(sys(format!("creating {what}")))?;
    check_id("SysV message queue", &q.perm, id)?;
    let mut ds = MsqidDs::default();
    // SAFETY: IPC_STAT writes one msqid64_ds to ds.
    let rc = unsafe { libc::syscall(libc::SYS_msgctl, id, IPC_STAT, &mut ds as *mut MsqidDs) };
    Errno::result(rc).map_err(sys(format!("reading {what}")))?;
    ds.perm.uid = q.perm.uid;
    ds.perm.gid = q.perm.gid;
    ds.perm.mode = q.perm.mode & 0o777;
    ds.qbytes = q.qbytes;
    // SAFETY: IPC_SET reads one msqid64_ds from ds.
    let rc = unsafe { libc::syscall(libc::SYS_msgctl, id, IPC_SET, &ds as *const MsqidDs) };
    Errno::result(rc).map_err(sys(format!(
        "setting the owner, mode and size ({} bytes) of {what}",
        q.qbytes
    )))?;
    for (i, m) in q.messages.iter().enumerate() {
        let mut buf = Vec::with_capacity(8 + m.data.0.len());
        buf.extend_from_slice(&m.mtype.to_ne_bytes());
        buf.extend_from_slice(m.data.as_bytes());
        // SAFETY: msgsnd reads the 8-byte type and data.len() bytes of text
        // from buf, which holds exactly that.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_msgsnd,
                id,
                buf.as_ptr(),
                m.data.0.len(),
                IPC_NOWAIT,
            )
        };
        Errno::result(rc).map_err(sys(format!("sending message {i} to {what}")))?;
    }
    Ok(())
}

fn mq_name(name: &[u8]) -> Result<CString> {
    CString::new(name.to_vec()).map_err(|_| {
        Error::Invalid(format!(
            "POSIX message queue name {:?} holds a NUL",
            String::from_utf8_lossy(name)
        ))
    })
}

fn restore_mqueue(q: &PosixMqueue) -> Result<()> {
    let name = q.name.0.as_slice();
    let what = format!("POSIX message queue /{}", q.name);
    let cname = mq_name(name)?;
    let attr = MqAttr {
        maxmsg: q.maxmsg,
        msgsize: q.msgsize,
        ..MqAttr::default()
    };
    // SAFETY: mq_open reads the NUL-terminated name and one mq_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            cname.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NONBLOCK,
            q.mode & 0o777,
            &attr as *const MqAttr,
        )
    };
    let fd = Errno::result(fd).map_err(sys(format!(
        "creating {what} (maxmsg {}, msgsize {})",
        q.maxmsg, q.msgsize
    )))?;
    // SAFETY: mq_open just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    mq_send_all(&fd, name, &q.messages).map_err(|e| Error::Invalid(e.to_string()))?;
    nix::sys::stat::fchmod(
        &fd,
        nix::sys::stat::Mode::from_bits_truncate(q.mode & 0o7777),
    )
    .map_err(sys(format!("setting the mode of {what}")))?;
    nix::unistd::fchown(
        &fd,
        Some(nix::unistd::Uid::from_raw(q.uid)),
        Some(nix::unistd::Gid::from_raw(q.gid)),
    )
    .map_err(sys(format!("setting the owner of {what}")))?;
    Ok(())
}

/// `shmat` flags.
const SHM_EXEC: u64 = 0o100000;
const SHM_REMAP: u64 = 0o40000;

/// Step 3a of a process rebuild (restore::process): attaches segment
/// `shmid` (created by [`restore`] in the namespace the husk is in) at the
/// mapping's address, replacing what is there, with its protection.
pub fn attach(
    rs: &mut crate::inject::RemoteSyscall<'_>,
    v: &cr_formats::schema::Vma,
    shmid: i32,
) -> std::result::Result<(), crate::inject::InjectError> {
    let prot = v.prot as i32;
    let mut flags = SHM_REMAP;
    if prot & libc::PROT_WRITE == 0 {
        flags |= crate::dump::ipc::SHM_RDONLY as u64;
    }
    if prot & libc::PROT_EXEC != 0 {
        flags |= SHM_EXEC;
    }
    let got = rs.inject(libc::SYS_shmat, [shmid as u64, v.start, flags, 0, 0, 0])?;
    if got < 0 {
        return Err(crate::inject::InjectError::Invalid(format!(
            "shmat({shmid}, {:#x}) failed: {}",
            v.start,
            Errno::from_raw(-got as i32)
        )));
    }
    if got as u64 != v.start {
        return Err(crate::inject::InjectError::Invalid(format!(
            "shmat({shmid}) attached at {got:#x}, not {:#x}",
            v.start
        )));
    }
    // shmat maps readable (and writable unless read-only); an mprotect
    // since may have taken that away.
    let given = libc::PROT_READ
        | if flags & crate::dump::ipc::SHM_RDONLY as u64 == 0 {
            libc::PROT_WRITE
        } else {
            0
        }
        | (prot & libc::PROT_EXEC);
    if given != prot {
        rs.remote_mprotect(v.start, v.end - v.start, prot)?;
    }
    Ok(())
}

/// Removes (`IPC_RMID`) the segments that were removed while attached
/// (`SHM_DEST`), once every process of the image attached them again;
/// `init` is the host pid of the container's PID 1 (its IPC namespace).
pub fn remove_destroyed(init: i32, ipc: &IpcObjects) -> Result<()> {
    let ids: Vec<i32> = ipc
        .shm
        .iter()
        .filter(|s| s.perm.mode & crate::dump::ipc::SHM_DEST != 0)
        .map(|s| s.perm.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let path = format!("/proc/{init}/ns/ipc");
    let ns = std::fs::File::open(&path).map_err(|source| Error::Io {
        what: "opening".into(),
        path: path.clone().into(),
        source,
    })?;
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWIPC)
            .map_err(sys(format!("joining the IPC namespace {path}")))?;
        for id in ids {
            // SAFETY: IPC_RMID takes no buffer.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_shmctl,
                    id,
                    crate::dump::ipc::IPC_RMID,
                    std::ptr::null::<u8>(),
                )
            };
            Errno::result(rc).map_err(sys(format!(
                "removing SysV shared memory segment {id} again (it was removed while attached)"
            )))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::Invalid("the IPC namespace helper thread panicked".into()))?
}

/// Opens a descriptor of queue `name` (created by [`restore`]) with the
/// access mode and `O_NONBLOCK` of `flags`.
pub fn open_mqueue(name: &[u8], flags: i32) -> Result<RawFd> {
    let cname = mq_name(name)?;
    let flags = flags & (libc::O_ACCMODE | libc::O_NONBLOCK);
    // SAFETY: mq_open reads the NUL-terminated name; no attr without O_CREAT.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            cname.as_ptr(),
            flags,
            0,
            std::ptr::null::<MqAttr>(),
        )
    };
    Ok(Errno::result(fd).map_err(sys(format!(
        "opening POSIX message queue /{}",
        String::from_utf8_lossy(name)
    )))? as RawFd)
}

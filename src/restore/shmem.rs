//! Restoring what several processes share beyond private memory: shared
//! anonymous memory, memfds and deleted files (collected by `dump::shmem`).
//!
//! ```text
//!  PID 1 (restorer, before the tree)        supervisor (host side)
//!  create_deleted: each DeletedFile
//!    written back at its path (or beside
//!    it when a new file took the name),
//!    still linked
//!  open_memfd: each memfd held as an fd:
//!    memfd_create(name) + ftruncate
//!                                           SharedObjects::new: objects held as fds
//!                                             (their husk, fd) are the sources
//!                                           map_vmas, per husk, per Shmem/Memfd VMA:
//!                                             first use: created in this husk
//!                                               (anonymous: mmap SHARED|ANONYMOUS of
//!                                               the object's size, the VMA's part
//!                                               mremap'ed into place; memfd:
//!                                               memfd_create + ftruncate + mmap)
//!                                             later uses: open /proc/PID/map_files/
//!                                               START-END of the first mapper (or
//!                                               /proc/PID/fd/N of a holder), mmap it
//!                                           stream_pages: Shmem { id } chunks are
//!                                             pwritten into the object through the
//!                                             supervisor's own fd of it
//!                                           seal: memfd seals, once filled
//!                                           unlink_deleted: the deleted files are
//!                                             unlinked again, success or not
//! ```
//!
//! So every process maps the same object again: a write by one is seen by
//! the others, and `/proc/PID/maps` shows `/dev/zero (deleted)` or
//! `/memfd:NAME (deleted)` as before. Opening `map_files` needs
//! `CAP_SYS_ADMIN` in the initial user namespace: with `--userns` only
//! memfds held as descriptors can be shared between processes this way.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use cr_formats::schema::{DeletedFile, FileKind, ShmemKind, ShmemObject, Vma, VmaKind};
use cr_formats::PageRunRef;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::inject::{write_memory, InjectError, RemoteSyscall};
use crate::restore::image::LoadedImage;

/// What a restore in a container with its own user namespace cannot do:
/// its husks cannot open `/proc/PID/map_files`, so an object is refused
/// there when it has more than one mapping and no descriptor to reopen.
pub fn check_userns(image: &LoadedImage) -> std::result::Result<(), String> {
    let mut mappings: HashMap<u64, Vec<(i32, u64)>> = HashMap::new();
    for p in image.processes.values() {
        for v in &p.vmas {
            if let VmaKind::Shmem { id } | VmaKind::Memfd { id, .. } = &v.kind {
                mappings
                    .entry(*id)
                    .or_default()
                    .push((p.process.pid, v.start));
            }
        }
    }
    let held: Vec<u64> = image
        .files
        .values()
        .filter_map(|f| match f.kind {
            FileKind::Memfd { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for (id, maps) in mappings {
        if maps.len() > 1 && !held.contains(&id) {
            let (pid, addr) = maps[1];
            return Err(format!(
                "process {pid} maps shared memory object {id} at {addr:#x}, which another mapping created; sharing it needs /proc/PID/map_files, which a container with its own user namespace cannot open"
            ));
        }
    }
    Ok(())
}

/// The scratch offset of names passed to injected calls.
const SCRATCH_NAME: u64 = 2048;

/// Where a deleted file is written back inside the container: its own
/// path, or, when that name is taken by a file created later, a name
/// beside it.
pub fn deleted_paths(d: &DeletedFile) -> (String, String) {
    let path = d.path.to_string();
    let (dir, _) = path.rsplit_once('/').unwrap_or(("", ""));
    let fallback = format!("{dir}/.cr-deleted-{}", d.id);
    (path, fallback)
}

/// PID 1's side: writes every deleted file of the image back (linked, so
/// the husks can open and map it by path; the supervisor unlinks them once
/// the tree is rebuilt). Returns the path each went to, by id.
pub fn create_deleted(image: &LoadedImage) -> Result<HashMap<u64, String>> {
    let mut out = HashMap::new();
    for d in image.deleted.values() {
        let (path, fallback) = deleted_paths(d);
        let create = |p: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(p)
        };
        let (file, at) = match create(&path) {
            Ok(f) => (f, path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = create(&fallback)
                    .map_err(|e| Error::io("recreating a deleted file", &fallback, e))?;
                (f, fallback)
            }
            Err(e) => return Err(Error::io("recreating a deleted file", &path, e)),
        };
        file.write_all_at(&d.data.0, 0)
            .map_err(|e| Error::io("refilling a deleted file", &at, e))?;
        // SAFETY: fchmod on a file we hold.
        unsafe { libc::fchmod(file.as_raw_fd(), d.mode as libc::mode_t) };
        out.insert(d.id, at);
    }
    Ok(out)
}

/// PID 1's side: a new memfd for object `id` (name and size from the
/// image), to be parked in the file table; other descriptions of the same
/// object reopen it through /proc/self/fd.
pub fn open_memfd(image: &LoadedImage, id: u64) -> Result<RawFd> {
    let obj = image
        .shmem
        .get(&id)
        .ok_or_else(|| Error::Invalid(format!("the image lacks the memfd object {id}")))?;
    let ShmemKind::Memfd { name, .. } = &obj.kind else {
        return Err(Error::Invalid(format!(
            "object {id} is held as a memfd but is not one"
        )));
    };
    let cname = CString::new(name.as_bytes().to_vec())
        .map_err(|_| Error::Invalid(format!("memfd name {name} holds a NUL")))?;
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    let fd = Errno::result(fd).map_err(|e| Error::sys(format!("memfd_create({name})"), e))?;
    // SAFETY: ftruncate on the memfd just created.
    let rc = unsafe { libc::ftruncate(fd, obj.size as libc::off_t) };
    Errno::result(rc).map_err(|e| Error::sys(format!("sizing memfd {name}"), e))?;
    Ok(fd)
}

/// Where husks find an object that exists already.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A mapping of it at `addr` in a husk.
    Mapping { host: i32, ns: i32, addr: u64 },
    /// A descriptor of it in a husk.
    Fd { host: i32, ns: i32, fd: i32 },
}

impl Source {
    /// Paths of the object: inside the container (for a husk) and on the host.
    fn paths(self) -> std::result::Result<(String, String), InjectError> {
        match self {
            Source::Fd { host, ns, fd } => Ok((
                format!("/proc/{ns}/fd/{fd}"),
                format!("/proc/{host}/fd/{fd}"),
            )),
            Source::Mapping { host, ns, addr } => {
                // The range as it is now: a later mapping may have merged with it.
                let maps = crate::inject::read_maps(Pid::from_raw(host))?;
                let m = maps
                    .iter()
                    .find(|m| m.start <= addr && addr < m.end)
                    .ok_or_else(|| {
                        InjectError::Invalid(format!(
                            "process {ns} no longer maps the shared object at {addr:#x}"
                        ))
                    })?;
                let range = format!("{:x}-{:x}", m.start, m.end);
                Ok((
                    format!("/proc/{ns}/map_files/{range}"),
                    format!("/proc/{host}/map_files/{range}"),
                ))
            }
        }
    }
}

/// The supervisor's table of shared objects during a rebuild.
pub struct SharedObjects<'a> {
    image: &'a LoadedImage,
    sources: HashMap<u64, Source>,
    /// The supervisor's own descriptor of each object, for its pages and seals.
    files: HashMap<u64, File>,
    /// Deleted files: (dev, ino) -> their path inside the container.
    deleted: HashMap<(u64, u64), String>,
    /// Host PID of PID 1 (whose root the deleted files are found under).
    root_pid: i32,
}

impl<'a> SharedObjects<'a> {
    /// `host_pid` maps each container PID to its host PID. Then
    /// [`SharedObjects::open_held`].
    pub fn new(image: &'a LoadedImage, host_pid: &HashMap<i32, i32>) -> Self {
        let mut sources = HashMap::new();
        for p in image.processes.values() {
            for fd in &p.fds {
                if let Some(FileKind::Memfd { id, .. }) = image.files.get(&fd.file).map(|f| &f.kind)
                {
                    let host = host_pid.get(&p.process.pid).copied().unwrap_or(0);
                    sources.entry(*id).or_insert(Source::Fd {
                        host,
                        ns: p.process.pid,
                        fd: fd.fd,
                    });
                }
            }
        }
        let root_pid = host_pid.get(&1).copied().unwrap_or(0);
        let mut deleted = HashMap::new();
        for d in image.deleted.values() {
            let (path, fallback) = deleted_paths(d);
            // PID 1 took the fallback name only when the path was taken.
            let at =
                if std::fs::symlink_metadata(format!("/proc/{root_pid}/root{fallback}")).is_ok() {
                    fallback
                } else {
                    path
                };
            deleted.insert((d.dev, d.ino), at);
        }
        SharedObjects {
            image,
            sources,
            files: HashMap::new(),
            deleted,
            root_pid,
        }
    }

    /// Opens the memfds PID 1 created for descriptors (for their pages and seals).
    pub fn open_held(&mut self) -> Result<()> {
        let held: Vec<(u64, Source)> = self.sources.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, src) in held {
            self.open_own(id, src)?;
        }
        Ok(())
    }

    fn open_own(&mut self, id: u64, src: Source) -> Result<()> {
        let (_, host_path) = src
            .paths()
            .map_err(|e| Error::Invalid(format!("shared object {id}: {e}")))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&host_path)
            .map_err(|e| Error::io("opening a shared memory object", &host_path, e))?;
        self.files.insert(id, file);
        Ok(())
    }

    /// The path inside the container of a mapped deleted file.
    pub fn deleted_path(&self, dev: u64, ino: u64) -> Option<&str> {
        self.deleted.get(&(dev, ino)).map(String::as_str)
    }

    fn object(&self, id: u64) -> std::result::Result<&'a ShmemObject, InjectError> {
        self.image
            .shmem
            .get(&id)
            .ok_or_else(|| InjectError::Invalid(format!("the image lacks shared object {id}")))
    }

    /// Maps one Shmem/Memfd VMA of husk `pid` (container PID `ns`): the
    /// object is created there if no husk has it yet.
    pub fn map(
        &mut self,
        rs: &mut RemoteSyscall<'_>,
        pid: Pid,
        ns: i32,
        v: &Vma,
        scratch: u64,
    ) -> std::result::Result<(), InjectError> {
        let id = match &v.kind {
            VmaKind::Shmem { id } | VmaKind::Memfd { id, .. } => *id,
            other => {
                return Err(InjectError::Invalid(format!(
                    "{other:?} is not a shared memory object"
                )))
            }
        };
        let obj = self.object(id)?;
        let len = v.end - v.start;
        let prot = v.prot as i32;
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        let sharing = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if let Some(src) = self.sources.get(&id).copied() {
            let (path, _) = src.paths()?;
            let flags = if shared && prot & libc::PROT_WRITE != 0 {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            let fd = remote_openat(rs, pid, scratch, path.as_bytes(), flags)?;
            let got = rs.remote_mmap(v.start, len, prot, sharing | libc::MAP_FIXED, fd, v.pgoff);
            rs.remote_close(fd)?;
            check_at(got?, v.start)?;
            return Ok(());
        }
        match &obj.kind {
            ShmemKind::Anonymous => {
                let whole = obj.size.div_ceil(4096) * 4096;
                if v.pgoff.checked_add(len).is_none_or(|e| e > whole) {
                    return Err(InjectError::Invalid(format!(
                        "the mapping covers {:#x}+{len:#x} of an object of {:#x} bytes",
                        v.pgoff, obj.size
                    )));
                }
                if v.pgoff == 0 && len == whole {
                    let got = rs.remote_mmap(
                        v.start,
                        len,
                        prot,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )?;
                    check_at(got, v.start)?;
                } else {
                    // The object is larger than this mapping: create it
                    // whole anywhere, move the mapped part into place, drop
                    // the rest.
                    let tmp = rs.remote_mmap(
                        0,
                        whole,
                        prot,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )?;
                    let got = rs.remote_mremap(
                        tmp + v.pgoff,
                        len,
                        len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        v.start,
                    )?;
                    rs.remote_munmap(tmp, whole)?;
                    check_at(got, v.start)?;
                }
            }
            ShmemKind::Memfd { name, .. } => {
                let mut z = name.as_bytes().to_vec();
                z.push(0);
                write_memory(pid, scratch + SCRATCH_NAME, &z)?;
                let fd = rs.inject(
                    libc::SYS_memfd_create,
                    [
                        scratch + SCRATCH_NAME,
                        u64::from(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING),
                        0,
                        0,
                        0,
                        0,
                    ],
                )? as i32;
                let sized = rs.inject(libc::SYS_ftruncate, [fd as u64, obj.size, 0, 0, 0, 0]);
                // A shared mapping that cannot write goes through a read-only
                // descriptor, as it must have been if the memfd is sealed
                // against writing (a writable descriptor's shared mapping
                // would forbid F_SEAL_WRITE).
                let read_only = shared && prot & libc::PROT_WRITE == 0;
                let got = sized.and_then(|_| {
                    let via = if read_only {
                        let own = format!("/proc/self/fd/{fd}");
                        remote_openat(rs, pid, scratch, own.as_bytes(), libc::O_RDONLY)?
                    } else {
                        fd
                    };
                    let got =
                        rs.remote_mmap(v.start, len, prot, sharing | libc::MAP_FIXED, via, v.pgoff);
                    if via != fd {
                        rs.remote_close(via)?;
                    }
                    got
                });
                rs.remote_close(fd)?;
                check_at(got?, v.start)?;
            }
        }
        let src = Source::Mapping {
            host: pid.as_raw(),
            ns,
            addr: v.start,
        };
        self.sources.insert(id, src);
        self.open_own(id, src)
            .map_err(|e| InjectError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// Writes one page-store chunk of object `id` into it.
    pub fn write_chunk<'r>(
        &self,
        id: u64,
        runs: impl Iterator<Item = PageRunRef<'r>>,
    ) -> Result<()> {
        let file = self.files.get(&id).ok_or_else(|| {
            Error::Invalid(format!(
                "the page store holds pages of shared object {id}, which no process maps or holds"
            ))
        })?;
        let size = self.image.shmem.get(&id).map_or(0, |o| o.size);
        for run in runs {
            // Fresh objects are zero: only data is written, and never past
            // the object's size (its last page may be partial).
            if let cr_formats::RunKind::Data = run.kind {
                let end = (run.vaddr + run.data.len() as u64).min(size);
                if end > run.vaddr {
                    let bytes = &run.data[..(end - run.vaddr) as usize];
                    file.write_all_at(bytes, run.vaddr).map_err(|e| {
                        Error::io(
                            "writing the pages of a shared memory object",
                            format!("object {id}"),
                            e,
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Once every page is in: the memfds get their seals back.
    pub fn seal(&self) -> Result<()> {
        for (id, file) in &self.files {
            if let Some(ShmemKind::Memfd { name, seals }) =
                self.image.shmem.get(id).map(|o| &o.kind)
            {
                if *seals != 0 {
                    // SAFETY: F_ADD_SEALS on a memfd we hold; no memory is passed.
                    let rc = unsafe {
                        libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, *seals as libc::c_int)
                    };
                    Errno::result(rc).map_err(|e| {
                        Error::sys(format!("sealing memfd {name} with {seals:#x}"), e)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Unlinks the deleted files written back by PID 1 (after the rebuild,
    /// whether it worked or not).
    pub fn unlink_deleted(&self) {
        for path in self.deleted.values() {
            let _ = std::fs::remove_file(format!("/proc/{}/root{path}", self.root_pid));
        }
    }
}

fn check_at(got: u64, want: u64) -> std::result::Result<(), InjectError> {
    if got != want {
        return Err(InjectError::Invalid(format!(
            "the shared object was mapped at {got:#x}, not {want:#x}"
        )));
    }
    Ok(())
}

/// `openat(AT_FDCWD, path, flags | O_CLOEXEC)` in the target.
pub fn remote_openat(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    scratch: u64,
    path: &[u8],
    flags: i32,
) -> std::result::Result<i32, InjectError> {
    if path.len() as u64 >= 4096 - SCRATCH_NAME || path.contains(&0) {
        return Err(InjectError::Invalid(format!(
            "path {:?} is too long or holds a NUL",
            String::from_utf8_lossy(path)
        )));
    }
    let mut z = path.to_vec();
    z.push(0);
    write_memory(pid, scratch + SCRATCH_NAME, &z)?;
    let fd = rs.inject(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as i64 as u64,
            scratch + SCRATCH_NAME,
            (flags | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    Ok(fd as i32)
}

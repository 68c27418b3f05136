//! Memory and file objects that are not one process's private memory:
//! shared anonymous memory, memfds, files deleted while open or mapped, and
//! the file locks held on open files.
//!
//! ```text
//!   survey (running)   survey_task: deleted files small enough to carry in a
//!                      record; only lock kinds cr can take again (POSIX,
//!                      flock, OFD; no leases); every lock of the container
//!                      visible in some descriptor's fdinfo
//!   frozen, per task   ShmemDump::dump_task: each object once, whichever
//!                      process maps it or holds it first:
//!     Shmem/Memfd      /proc/PID/map_files/START-END or /proc/PID/fd/N opened,
//!                      SEEK_DATA/SEEK_HOLE walk: only pages that exist are read,
//!                      into the page store under PageOwner::Shmem { id }
//!                      (all-zero ones become zero runs), then a Shmem record
//!                      (size, memfd name and seals)
//!     deleted file     read whole into a DeletedFile record
//!   FileTable          fd_locks: the `lock:` lines of each fd's fdinfo -> FileLock
//! ```
//!
//! An object's id is its inode number: every mapping and descriptor of it
//! names the same one, in any process.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use cr_formats::schema::{
    Blob, ByteString, DeletedFile, FileLock, LockKind, LockMode, Record, ShmemKind, ShmemObject,
    VmaKind,
};
use cr_formats::{PageOwner, PageWriter, RecordWriter};

use crate::dump::files::FileKindDump;
use crate::dump::procfs::{FdEntry, MapsEntry};
use crate::dump::DumpError;
use crate::error::Result;

/// The largest deleted file cr carries (its bytes go into one record).
pub const MAX_DELETED_FILE: u64 = 32 << 20;
/// Bytes read from an object at a time.
const SLICE: u64 = 4 << 20;
const PAGE: u64 = 4096;

/// The memfd name in a maps line or fd link: `/memfd:NAME (deleted)`.
pub fn memfd_name(target: &str) -> Option<&str> {
    let rest = target.strip_prefix("/memfd:")?;
    Some(rest.strip_suffix(" (deleted)").unwrap_or(rest))
}

/// A path as `/proc` shows it for an unlinked file, without the suffix.
pub fn deleted_path(target: &str) -> Option<&str> {
    target
        .strip_suffix(" (deleted)")
        .filter(|p| p.starts_with('/') && !p.starts_with("/memfd:"))
}

/// One lock line of fdinfo (`lock:\t1: FLOCK  ADVISORY  WRITE 123 00:2a:456 0 EOF`)
/// or of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// POSIX, FLOCK, OFDLCK, LEASE, DELEG...
    pub class: String,
    /// ADVISORY, MANDATORY, ...
    pub flavor: String,
    /// READ, WRITE, UNLCK, ...
    pub mode: String,
    pub ino: u64,
    pub start: u64,
    /// 0: to the end of the file.
    pub len: u64,
}

pub fn parse_lock_line(line: &str) -> Option<LockLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // "1:" CLASS FLAVOR MODE PID MAJ:MIN:INO START END
    if f.len() < 8 || f[1] == "->" {
        return None;
    }
    let ino = f[5].rsplit(':').next()?.parse().ok()?;
    let start: u64 = f[6].parse().ok()?;
    let len = match f[7] {
        "EOF" => 0,
        end => end.parse::<u64>().ok()?.checked_sub(start)? + 1,
    };
    Some(LockLine {
        class: f[1].to_string(),
        flavor: f[2].to_string(),
        mode: f[3].to_string(),
        ino,
        start,
        len,
    })
}

/// The locks a descriptor's fdinfo lists: POSIX locks of its process on
/// that file, flock and OFD locks of its open file description.
fn fd_lock_lines(entry: &FdEntry) -> impl Iterator<Item = LockLine> + '_ {
    entry
        .info
        .extra
        .iter()
        .filter(|(k, _)| k == "lock")
        .filter_map(|(_, v)| parse_lock_line(v))
}

/// The record of a lock line cr can take again, or why not.
fn lock_record(pid: i32, file: u64, l: &LockLine) -> std::result::Result<FileLock, String> {
    let kind = match l.class.as_str() {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        other => return Err(format!("a {other} lock")),
    };
    if l.flavor != "ADVISORY" {
        return Err(format!("a {} {} lock", l.flavor, l.class));
    }
    let mode = match l.mode.as_str() {
        "READ" => LockMode::Read,
        "WRITE" => LockMode::Write,
        other => return Err(format!("a {} lock in mode {other}", l.class)),
    };
    Ok(FileLock {
        pid,
        file,
        kind,
        mode,
        start: l.start,
        len: l.len,
    })
}

/// The locks held through one descriptor (of file `file`, process `pid`
/// inside the container).
pub fn fd_locks(pid: i32, entry: &FdEntry, file: u64) -> Vec<FileLock> {
    fd_lock_lines(entry)
        .filter_map(|l| lock_record(pid, file, &l).ok())
        .collect()
}

/// Survey checks for one task (container PID `pid`) before the freeze.
pub fn survey_task(
    pid: i32,
    comm: &str,
    host_pid: i32,
    maps: &[(MapsEntry, VmaKind)],
    fds: &[(FdEntry, &'static FileKindDump, fs::Metadata)],
) -> std::result::Result<(), DumpError> {
    let refuse = |what: String| DumpError::Unsupported {
        pid,
        comm: comm.to_string(),
        what,
    };
    for (entry, _, meta) in fds {
        for line in fd_lock_lines(entry) {
            lock_record(pid, 0, &line).map_err(|what| {
                refuse(format!(
                    "fd {} ({}) holds {what}, which cr cannot move yet",
                    entry.fd, entry.target
                ))
            })?;
        }
        if deleted_path(&entry.target).is_some()
            && meta.file_type().is_file()
            && meta.size() > MAX_DELETED_FILE
        {
            return Err(refuse(format!(
                "fd {} is the deleted file {} of {} bytes; cr carries deleted files up to {MAX_DELETED_FILE} bytes",
                entry.fd,
                entry.target,
                meta.size()
            )));
        }
    }
    for (entry, _, _) in fds {
        if memfd_name(&entry.target).is_some() {
            refuse_hugetlb(&format!("/proc/{host_pid}/fd/{}", entry.fd), pid).map_err(|e| {
                e.unwrap_or_else(|| {
                    refuse(format!(
                        "fd {} is the hugetlb memfd {}, which cr cannot move yet",
                        entry.fd, entry.target
                    ))
                })
            })?;
        }
    }
    for (m, kind) in maps {
        if matches!(kind, VmaKind::Memfd { .. } | VmaKind::Shmem { .. }) {
            refuse_hugetlb(&map_files(host_pid, m), pid).map_err(|e| {
                e.unwrap_or_else(|| {
                    refuse(format!(
                        "the mapping {:#x}-{:#x} is of the hugetlb memfd {}, which cr cannot move yet",
                        m.start, m.end, m.name
                    ))
                })
            })?;
        }
        if matches!(kind, VmaKind::File { .. }) && deleted_path(&m.name).is_some() {
            let path = map_files(host_pid, m);
            let meta = fs::metadata(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
            if meta.size() > MAX_DELETED_FILE {
                return Err(refuse(format!(
                    "the mapping {:#x}-{:#x} is of the deleted file {} of {} bytes; cr carries deleted files up to {MAX_DELETED_FILE} bytes",
                    m.start,
                    m.end,
                    m.name,
                    meta.size()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses locks that no descriptor of the container shows (a lock whose
/// file is only held by a mapping, for example): `locks` is `/proc/locks`,
/// `host_pids` the container's processes, `seen` the inodes whose locks
/// some descriptor's fdinfo listed.
pub fn check_all_locks_seen(
    locks: &str,
    host_pids: &[i32],
    seen: &HashSet<u64>,
) -> std::result::Result<(), String> {
    for line in locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(pid) = f.get(4).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !host_pids.contains(&pid) {
            continue;
        }
        if let Some(l) = parse_lock_line(line) {
            if !seen.contains(&l.ino) {
                return Err(format!(
                    "process {pid} holds a {} lock on inode {} through no open descriptor, which cr cannot move yet",
                    l.class, l.ino
                ));
            }
        }
    }
    Ok(())
}

/// Inodes whose locks a descriptor's fdinfo lists.
pub fn locked_inodes(fds: &[(FdEntry, &'static FileKindDump, fs::Metadata)]) -> Vec<u64> {
    fds.iter()
        .flat_map(|(e, _, _)| fd_lock_lines(e).map(|l| l.ino).collect::<Vec<_>>())
        .collect()
}

/// `Err(None)` when the object at `path` lives on hugetlbfs (its pages are
/// huge pages, which restore does not create), `Err(Some(..))` when it
/// cannot be looked at.
fn refuse_hugetlb(path: &str, pid: i32) -> std::result::Result<(), Option<DumpError>> {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let c = std::ffi::CString::new(path).map_err(|_| None)?;
    // SAFETY: an all-zero statfs is a valid buffer for statfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs with a NUL-terminated path and a live buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Some(DumpError::proc(
            pid,
            path,
            std::io::Error::last_os_error(),
        )));
    }
    if st.f_type as i64 == HUGETLBFS_MAGIC {
        return Err(None);
    }
    Ok(())
}

fn map_files(host_pid: i32, m: &MapsEntry) -> String {
    format!("/proc/{host_pid}/map_files/{:x}-{:x}", m.start, m.end)
}

/// Objects already written, so each goes into the image once.
#[derive(Default)]
pub struct ShmemDump {
    objects: HashSet<u64>,
    deleted: HashSet<(u64, u64)>,
}

impl ShmemDump {
    /// Writes every shared memory object and deleted file that this task
    /// maps or holds and that no earlier task did.
    pub fn dump_task<W: Write, P: Write>(
        &mut self,
        host_pid: i32,
        pid: i32,
        maps: &[(MapsEntry, VmaKind)],
        fds: &[(FdEntry, &'static FileKindDump, fs::Metadata)],
        records: &mut RecordWriter<W>,
        pages: &mut PageWriter<P>,
    ) -> Result<()> {
        for (m, kind) in maps {
            match kind {
                VmaKind::Shmem { id } | VmaKind::Memfd { id, .. } if self.objects.insert(*id) => {
                    let path = map_files(host_pid, m);
                    let name = memfd_name(&m.name);
                    self.object(pid, &path, *id, name, records, pages)?;
                }
                VmaKind::File { dev, ino, .. }
                    if deleted_path(&m.name).is_some() && self.deleted.insert((*dev, *ino)) =>
                {
                    let path = map_files(host_pid, m);
                    deleted_file(pid, &path, &m.name, records)?;
                }
                _ => {}
            }
        }
        for (entry, _, meta) in fds {
            if !meta.file_type().is_file() {
                continue;
            }
            let path = format!("/proc/{host_pid}/fd/{}", entry.fd);
            if let Some(name) = memfd_name(&entry.target) {
                if self.objects.insert(meta.ino()) {
                    self.object(pid, &path, meta.ino(), Some(name), records, pages)?;
                }
            } else if deleted_path(&entry.target).is_some()
                && self.deleted.insert((meta.dev(), meta.ino()))
            {
                deleted_file(pid, &path, &entry.target, records)?;
            }
        }
        Ok(())
    }

    /// One shared memory object: its pages (only those that exist), then
    /// its record.
    fn object<W: Write, P: Write>(
        &mut self,
        pid: i32,
        path: &str,
        id: u64,
        memfd: Option<&str>,
        records: &mut RecordWriter<W>,
        pages: &mut PageWriter<P>,
    ) -> Result<()> {
        let file = File::open(path).map_err(|e| DumpError::proc(pid, path, e))?;
        let size = file
            .metadata()
            .map_err(|e| DumpError::proc(pid, path, e))?
            .size();
        let mut buf = Vec::new();
        for (start, end) in data_extents(&file, size).map_err(|e| DumpError::proc(pid, path, e))? {
            let mut at = start;
            while at < end {
                let take = (end - at).min(SLICE);
                buf.clear();
                buf.resize(take as usize, 0);
                let mut done = 0;
                while done < buf.len() {
                    let n = file
                        .read_at(&mut buf[done..], at + done as u64)
                        .map_err(|e| DumpError::proc(pid, path, e))?;
                    if n == 0 {
                        break; // past i_size: the rest of the page is zero
                    }
                    done += n;
                }
                pages.write_pages(PageOwner::Shmem { id }, at, &buf)?;
                at += take;
            }
        }
        let kind = match memfd {
            Some(name) => {
                // SAFETY: F_GET_SEALS only reads the seals of a file we hold.
                let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
                ShmemKind::Memfd {
                    name: ByteString::from(name),
                    seals: seals.max(0) as u32,
                }
            }
            None => ShmemKind::Anonymous,
        };
        records.write(&Record::Shmem(ShmemObject { id, size, kind }))?;
        Ok(())
    }
}

/// The page-aligned ranges of `file` (of `size` bytes) that hold data, by
/// `SEEK_DATA`/`SEEK_HOLE`: pages never written are holes and not read.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at: i64 = 0;
    let end = size.div_ceil(PAGE) * PAGE;
    while (at as u64) < size {
        // SAFETY: lseek on a descriptor we hold; no memory is passed.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = data as u64 / PAGE * PAGE;
        let e = ((hole as u64).div_ceil(PAGE) * PAGE).min(end);
        if e <= s {
            break;
        }
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
        at = e as i64;
    }
    Ok(out)
}

/// A deleted file's record with its whole contents.
fn deleted_file<W: Write>(
    pid: i32,
    proc_path: &str,
    shown: &str,
    records: &mut RecordWriter<W>,
) -> Result<()> {
    let file = File::open(proc_path).map_err(|e| DumpError::proc(pid, proc_path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| DumpError::proc(pid, proc_path, e))?;
    let mut data = vec![0u8; meta.size().min(MAX_DELETED_FILE) as usize];
    let mut done = 0;
    while done < data.len() {
        let n = file
            .read_at(&mut data[done..], done as u64)
            .map_err(|e| DumpError::proc(pid, proc_path, e))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    data.truncate(done);
    records.write(&Record::DeletedFile(DeletedFile {
        id: meta.ino(),
        dev: meta.dev(),
        ino: meta.ino(),
        path: ByteString::from(deleted_path(shown).unwrap_or(shown)),
        mode: meta.mode() & 0o7777,
        data: Blob(data),
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("1: FLOCK  ADVISORY  WRITE 123 00:2a:456 0 EOF").unwrap();
        assert_eq!(
            (l.class.as_str(), l.ino, l.start, l.len),
            ("FLOCK", 456, 0, 0)
        );
        let l = parse_lock_line("7: POSIX  ADVISORY  READ 9 fd:01:77 10 19").unwrap();
        assert_eq!((l.mode.as_str(), l.start, l.len), ("READ", 10, 10));
        assert!(parse_lock_line("7: -> POSIX  ADVISORY  WRITE 9 fd:01:77 0 EOF").is_none());
        let lease = parse_lock_line("2: LEASE  ACTIVE  READ 9 fd:01:77 0 EOF").unwrap();
        assert!(lock_record(1, 0, &lease).is_err());
        let locks = "1: POSIX  ADVISORY  WRITE 42 00:2a:456 0 EOF\n";
        assert!(check_all_locks_seen(locks, &[42], &HashSet::from([456])).is_ok());
        assert!(check_all_locks_seen(locks, &[42], &HashSet::new()).is_err());
        assert!(check_all_locks_seen(locks, &[43], &HashSet::new()).is_ok());
    }

    #[test]
    fn names() {
        assert_eq!(memfd_name("/memfd:buf (deleted)"), Some("buf"));
        assert_eq!(deleted_path("/tmp/x (deleted)"), Some("/tmp/x"));
        assert_eq!(deleted_path("/memfd:x (deleted)"), None);
        assert_eq!(deleted_path("/tmp/x"), None);
    }

    #[test]
    fn extents_skip_holes() {
        let f = tempfile_in_shm();
        f.write_at(b"x", 3 * PAGE + 5).unwrap();
        f.set_len(10 * PAGE).unwrap();
        assert_eq!(
            data_extents(&f, 10 * PAGE).unwrap(),
            vec![(3 * PAGE, 4 * PAGE)]
        );
    }

    fn tempfile_in_shm() -> File {
        let name = std::ffi::CString::new("extents").unwrap();
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: memfd_create just returned this fd; nothing else owns it.
        unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }
}

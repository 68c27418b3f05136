//! The FUSE filesystem that shows a chain as one flat file.
//!
//! ```text
//!   MOUNT/            inode 1, a directory
//!   MOUNT/disk.img    inode 2, size = the chain's virtual size
//!
//!   read(off, n)   -> lock chain, read_at      (holes read as zeros)
//!   write(off, d)  -> lock chain, write_at     (copy on write in the top)
//!   fsync / flush  -> lock chain, flush        (what the loop device sends
//!                                               for a REQ_PREFLUSH)
//!   open / release -> count handles (the server stops only at zero)
//! ```
//!
//! Attributes have no cache time, so a grow is seen by the next `stat`
//! (which is what makes `LOOP_SET_CAPACITY` find the new size). A chain
//! error is logged and answered with EIO: the filesystem above sees an I/O
//! error, never wrong data.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};

use super::control::Shared;

/// The flat file's name in the mount.
pub const DISK_FILE: &str = "disk.img";
const FILE_INO: INodeNo = INodeNo(2);
const NO_CACHE: Duration = Duration::ZERO;
/// The largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

pub struct FlatDisk {
    shared: Arc<Shared>,
    created: SystemTime,
}

impl FlatDisk {
    pub fn new(shared: Arc<Shared>) -> Self {
        FlatDisk {
            shared,
            created: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == FILE_INO {
            (
                FileType::RegularFile,
                0o600,
                self.shared.lock().virtual_size(),
                1,
            )
        } else {
            (FileType::Directory, 0o700, 0, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn io_error(&self, what: &str, err: impl std::fmt::Display) -> Errno {
        self.shared.io_errors.fetch_add(1, Ordering::SeqCst);
        eprintln!("disk server: {what}: {err}");
        Errno::EIO
    }
}

impl Filesystem for FlatDisk {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: the loop device sends up to its max_sectors.
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == DISK_FILE {
            reply.entry(&NO_CACHE, &self.attr(FILE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == FILE_INO {
            reply.attr(&NO_CACHE, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The size changes only through `cr disk grow`; a truncate to the
        // current size (O_TRUNC-less opens do none) is harmless.
        match size {
            Some(s) if ino != FILE_INO || s != self.shared.lock().virtual_size() => {
                reply.error(Errno::EPERM)
            }
            _ => reply.attr(&NO_CACHE, &self.attr(ino)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        self.shared.open_files.fetch_add(1, Ordering::SeqCst);
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let chain = self.shared.lock();
        let end = (offset.saturating_add(u64::from(size))).min(chain.virtual_size());
        let len = end.saturating_sub(offset) as usize;
        let mut buf = vec![0u8; len];
        match chain.read_at(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                drop(chain);
                reply.error(self.io_error(&format!("read of {len} bytes at {offset}"), e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let mut chain = self.shared.lock();
        if offset.saturating_add(data.len() as u64) > chain.virtual_size() {
            reply.error(Errno::ENOSPC);
            return;
        }
        match chain.write_at(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                drop(chain);
                let what = format!("write of {} bytes at {offset}", data.len());
                reply.error(self.io_error(&what, e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.shared.lock().flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.io_error("flush", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.lock().flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.io_error("fsync", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if ino == FILE_INO {
            // Whatever the last user wrote is made durable before it is gone.
            let flushed = self.shared.lock().flush();
            self.shared.open_files.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = flushed {
                reply.error(self.io_error("flush at release", e));
                return;
            }
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, DISK_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

//! The userfaultfd ABI (`include/uapi/linux/userfaultfd.h`) as both sides
//! of cr use it: the dump's dirty-page tracker (`dump/dirty.rs`:
//! write-protect, async mode) and the restore's lazy pages
//! (`restore/lazy.rs`: missing mode, with the non-cooperative events).
//!
//! A userfaultfd belongs to the address space of the process that created
//! it; cr makes the target create it (an injected `userfaultfd()`) and
//! takes it with `pidfd_getfd` (`RemoteSyscall::take_userfaultfd`). Every
//! ioctl below then acts on the target's memory from cr's own process.
//!
//! ```text
//!  uffd_msg (32 bytes, packed)
//!  0       1    2    4    8                                               32
//!  +-------+----+----+----+-----------------------------------------------+
//!  | event | 0  | 0  | 0  | arg: pagefault {flags u64, address u64, tid}  |
//!  | u8    |    |u16 |u32 |      fork {ufd u32}                           |
//!  |       |    |    |    |      remap {from, to, len}                    |
//!  |       |    |    |    |      remove / unmap {start, end}              |
//!  +-------+----+----+----+-----------------------------------------------+
//! ```

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

pub const UFFD_API: u64 = 0xaa;
/// `userfaultfd()` flag: handle faults from user mode only (no privilege
/// needed; faults taken inside the kernel are not reported).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// Size of one `struct uffd_msg`.
pub const MSG_LEN: usize = 32;

#[repr(C)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

#[repr(C)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

nix::ioctl_readwrite!(uffdio_api, 0xaa, 0x3f, UffdioApi);
nix::ioctl_readwrite!(uffdio_register, 0xaa, 0x00, UffdioRegister);
nix::ioctl_readwrite!(uffdio_writeprotect, 0xaa, 0x06, UffdioWriteprotect);
nix::ioctl_read!(uffdio_wake, 0xaa, 0x02, UffdioRange);
nix::ioctl_readwrite!(uffdio_copy, 0xaa, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, 0xaa, 0x04, UffdioZeropage);

/// `UFFDIO_API`: asks for `features`; returns those the kernel granted.
pub fn api(fd: BorrowedFd<'_>, features: u64) -> Result<u64, Errno> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the uffdio_api we own.
    unsafe { uffdio_api(fd.as_raw_fd(), &mut api) }?;
    Ok(api.features)
}

/// `UFFDIO_REGISTER` of `[start, start + len)` in `mode`.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<(), Errno> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes the struct we own.
    unsafe { uffdio_register(fd.as_raw_fd(), &mut reg) }.map(drop)
}

/// `UFFDIO_COPY` of `len` bytes from `src` (in this process) to `dst` (in
/// the userfaultfd's address space), waking the threads waiting on that
/// range. On error, also the bytes copied before it.
pub fn copy(fd: BorrowedFd<'_>, dst: u64, src: *const u8, len: u64) -> Result<u64, (Errno, u64)> {
    let mut c = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads the struct we own and `len` bytes at `src`,
    // which the caller guarantees are readable memory of this process.
    match unsafe { uffdio_copy(fd.as_raw_fd(), &mut c) } {
        Ok(_) => Ok(c.copy.max(0) as u64),
        Err(e) => Err((e, c.copy.max(0) as u64)),
    }
}

/// `UFFDIO_ZEROPAGE` over `[start, start + len)`, waking its waiters.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes the struct we own.
    unsafe { uffdio_zeropage(fd.as_raw_fd(), &mut z) }.map(drop)
}

/// `UFFDIO_WAKE` of the threads waiting on `[start, start + len)`.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE reads the range we own.
    unsafe { uffdio_wake(fd.as_raw_fd(), &mut r) }.map(drop)
}

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// A thread waits for the page at `address` (page aligned).
    PageFault { address: u64, write: bool },
    /// The process forked: `ufd` is a new userfaultfd (in this process)
    /// for the child's address space, whose registered ranges are those
    /// of the parent.
    Fork { ufd: i32 },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `MADV_DONTNEED`/`MADV_REMOVE` dropped `[start, end)`: those pages
    /// read as zero from now on.
    Remove { start: u64, end: u64 },
    /// `munmap` (or a mapping over it) removed `[start, end)`.
    Unmap { start: u64, end: u64 },
    /// An event this build does not know.
    Other { event: u8 },
}

impl Msg {
    /// Decodes one `struct uffd_msg`.
    pub fn decode(b: &[u8; MSG_LEN]) -> Msg {
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        match b[0] {
            UFFD_EVENT_PAGEFAULT => Msg::PageFault {
                address: u64_at(16) & !0xfff,
                write: u64_at(8) & 1 != 0,
            },
            UFFD_EVENT_FORK => Msg::Fork {
                ufd: i32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            },
            UFFD_EVENT_REMAP => Msg::Remap {
                from: u64_at(8),
                to: u64_at(16),
                len: u64_at(24),
            },
            UFFD_EVENT_REMOVE => Msg::Remove {
                start: u64_at(8),
                end: u64_at(16),
            },
            UFFD_EVENT_UNMAP => Msg::Unmap {
                start: u64_at(8),
                end: u64_at(16),
            },
            event => Msg::Other { event },
        }
    }
}

/// Reads the messages waiting on a non-blocking userfaultfd (none: an
/// empty list). `Err(Errno::ENODEV)`-like errors mean the address space is
/// gone.
pub fn read_msgs(fd: BorrowedFd<'_>, out: &mut Vec<Msg>) -> Result<(), Errno> {
    let mut buf = [0u8; MSG_LEN * 16];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                for m in buf[..n].chunks_exact(MSG_LEN) {
                    if let Ok(m) = <&[u8; MSG_LEN]>::try_from(m) {
                        out.push(Msg::decode(m));
                    }
                }
                if n < buf.len() {
                    return Ok(());
                }
            }
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_from_their_kernel_layout() {
        let mut b = [0u8; MSG_LEN];
        b[0] = UFFD_EVENT_PAGEFAULT;
        b[8..16].copy_from_slice(&1u64.to_ne_bytes());
        b[16..24].copy_from_slice(&0x7f00_1234u64.to_ne_bytes());
        assert_eq!(
            Msg::decode(&b),
            Msg::PageFault {
                address: 0x7f00_1000,
                write: true
            }
        );
        let mut b = [0u8; MSG_LEN];
        b[0] = UFFD_EVENT_REMAP;
        b[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        b[16..24].copy_from_slice(&0x9000u64.to_ne_bytes());
        b[24..32].copy_from_slice(&0x2000u64.to_ne_bytes());
        assert_eq!(
            Msg::decode(&b),
            Msg::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        );
        let mut b = [0u8; MSG_LEN];
        b[0] = UFFD_EVENT_FORK;
        b[8..12].copy_from_slice(&17i32.to_ne_bytes());
        assert_eq!(Msg::decode(&b), Msg::Fork { ufd: 17 });
        b[0] = 0x77;
        assert_eq!(Msg::decode(&b), Msg::Other { event: 0x77 });
    }
}

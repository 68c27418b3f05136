//! Reading and writing a target's memory from outside.
//!
//! ```text
//!  read_memory / read_memory_vectored   process_vm_readv: one local iovec,
//!                                       up to 1024 remote iovecs per call
//!  write_memory                         process_vm_writev ──EFAULT (read-only
//!                                       page)──► pwrite(/proc/PID/mem), which
//!                                       writes through FOLL_FORCE (COW for
//!                                       private mappings)
//!  poke_bytes / restore_words           PTRACE_PEEKDATA/POKEDATA on the
//!                                       aligned words around a few bytes
//!                                       (patching a gadget into r-x text)
//! ```
//!
//! `process_vm_readv` stops at the first page it cannot read; the functions
//! here report that as a short count (the bytes before it were transferred)
//! and as an error only when nothing could be transferred.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use super::error::{InjectError, Result};

/// At most this many remote iovecs per process_vm_* call (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;
/// Bytes per process_vm_* call are kept under this (the kernel silently caps
/// a call at `MAX_RW_COUNT`, just under 2 GiB; a batch can reach twice this).
const MAX_CALL_BYTES: usize = 1 << 29;

fn mem_err(pid: Pid, op: &'static str, addr: u64, len: usize, errno: Errno) -> InjectError {
    InjectError::Memory {
        pid,
        op,
        addr,
        len,
        errno,
    }
}

/// Reads `buf.len()` bytes at `addr` with process_vm_readv. Returns how many
/// bytes were read: fewer than asked when an unreadable page was met. An
/// error only when not even the first byte could be read.
pub fn read_memory(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<usize> {
    let total = buf.len();
    let mut done = 0;
    while done < total {
        let n = (total - done).min(MAX_CALL_BYTES);
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: n,
        }];
        let mut local = [IoSliceMut::new(&mut buf[done..done + n])];
        match process_vm_readv(pid, &mut local, &remote) {
            Ok(0) => break,
            Ok(got) => {
                done += got;
                if got < n {
                    break;
                }
            }
            Err(e) if done == 0 => {
                return Err(mem_err(pid, "process_vm_readv", addr, total, e));
            }
            Err(_) => break,
        }
    }
    Ok(done)
}

/// [`read_memory`] that fails unless all of `buf` was read.
pub fn read_memory_exact(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    let done = read_memory(pid, addr, buf)?;
    if done == len {
        Ok(())
    } else {
        Err(InjectError::Short {
            pid,
            op: "process_vm_readv",
            addr,
            len,
            done,
        })
    }
}

/// Reads many remote ranges into `dst`, back to back, with as few system
/// calls as possible (one local iovec, up to [`IOV_MAX`] remote ones per
/// call, adjacent ranges merged into one). Returns the number of bytes read: when it is short of the total,
/// the range holding byte `n` (counting through the ranges in order) could
/// not be read and nothing after it was.
pub fn read_memory_vectored(pid: Pid, ranges: &[(u64, usize)], dst: &mut [u8]) -> Result<usize> {
    let want: usize = ranges.iter().map(|r| r.1).sum();
    if dst.len() < want {
        return Err(InjectError::Invalid(format!(
            "read_memory_vectored: {} bytes of ranges, {} bytes of buffer",
            want,
            dst.len()
        )));
    }
    // Split ranges into pieces the kernel takes whole.
    let mut pieces = ranges.iter().flat_map(|&(base, len)| {
        (0..len.div_ceil(MAX_CALL_BYTES).max(1)).map(move |i| {
            let off = i * MAX_CALL_BYTES;
            RemoteIoVec {
                base: (base + off as u64) as usize,
                len: (len - off.min(len)).min(MAX_CALL_BYTES),
            }
        })
    });
    let mut done = 0usize;
    let mut batch: Vec<RemoteIoVec> = Vec::with_capacity(IOV_MAX);
    loop {
        batch.clear();
        let mut bytes = 0usize;
        while batch.len() < IOV_MAX {
            // Peek-free batching: stop before a piece that would overflow.
            match pieces.next() {
                Some(p) if p.len == 0 => continue,
                Some(p) => {
                    bytes += p.len;
                    // Adjacent ranges become one iovec: the kernel's cost is
                    // per iovec, the local side is contiguous anyway.
                    match batch.last_mut() {
                        Some(last)
                            if last.base + last.len == p.base
                                && last.len + p.len <= MAX_CALL_BYTES =>
                        {
                            last.len += p.len
                        }
                        _ => batch.push(p),
                    }
                    if bytes >= MAX_CALL_BYTES {
                        break;
                    }
                }
                None => break,
            }
        }
        if batch.is_empty() {
            return Ok(done);
        }
        let mut local = [IoSliceMut::new(&mut dst[done..done + bytes])];
        match process_vm_readv(pid, &mut local, &batch) {
            Ok(got) => {
                done += got;
                if got < bytes {
                    return Ok(done);
                }
            }
            Err(e) if done == 0 => {
                return Err(mem_err(
                    pid,
                    "process_vm_readv",
                    batch[0].base as u64,
                    bytes,
                    e,
                ));
            }
            Err(_) => return Ok(done),
        }
    }
}

/// process_vm_writev alone: fails (EFAULT, or a short count) on pages the
/// target cannot write, e.g. read-only text. Returns the bytes written.
pub fn process_vm_write(pid: Pid, addr: u64, data: &[u8]) -> Result<usize> {
    let total = data.len();
    let mut done = 0;
    while done < total {
        let n = (total - done).min(MAX_CALL_BYTES);
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: n,
        }];
        let local = [IoSlice::new(&data[done..done + n])];
        match process_vm_writev(pid, &local, &remote) {
            Ok(0) => break,
            Ok(got) => {
                done += got;
                if got < n {
                    break;
                }
            }
            Err(e) if done == 0 => {
                return Err(mem_err(pid, "process_vm_writev", addr, total, e));
            }
            Err(_) => break,
        }
    }
    Ok(done)
}

fn open_proc_mem(pid: Pid, write: bool) -> Result<File> {
    let path = format!("/proc/{pid}/mem");
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(&path)
        .map_err(|source| InjectError::Io {
            what: "opening",
            path: path.into(),
            source,
        })
}

/// Writes through `/proc/PID/mem`, which also writes read-only private
/// pages (copy-on-write, as a debugger setting a breakpoint does).
pub fn write_proc_mem(pid: Pid, addr: u64, data: &[u8]) -> Result<()> {
    let f = open_proc_mem(pid, true)?;
    let mut done = 0;
    while done < data.len() {
        match f.write_at(&data[done..], addr + done as u64) {
            Ok(0) => {
                return Err(InjectError::Short {
                    pid,
                    op: "pwrite /proc/PID/mem",
                    addr,
                    len: data.len(),
                    done,
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(mem_err(
                    pid,
                    "pwrite /proc/PID/mem",
                    addr + done as u64,
                    data.len() - done,
                    errno,
                ));
            }
        }
    }
    Ok(())
}

/// Reads through `/proc/PID/mem`. Returns the bytes read (short at the
/// first unreadable page).
pub fn read_proc_mem(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<usize> {
    let f = open_proc_mem(pid, false)?;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], addr + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if done == 0 => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(mem_err(pid, "pread /proc/PID/mem", addr, buf.len(), errno));
            }
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Writes `data` at `addr`: process_vm_writev first, and for what it could
/// not write (read-only pages) `/proc/PID/mem`.
pub fn write_memory(pid: Pid, addr: u64, data: &[u8]) -> Result<()> {
    let done = match process_vm_write(pid, addr, data) {
        Ok(n) => n,
        Err(InjectError::Memory {
            errno: Errno::EFAULT,
            ..
        }) => 0,
        Err(e) => return Err(e),
    };
    if done == data.len() {
        return Ok(());
    }
    write_proc_mem(pid, addr + done as u64, &data[done..])
}

/// `PTRACE_PEEKDATA` of the word at `addr`.
pub fn peek_word(tid: Pid, addr: u64) -> Result<u64> {
    Errno::clear();
    // SAFETY: PEEKDATA reads the tracee's memory and returns the word; the
    // `data` argument is unused (glibc's wrapper supplies its own), no
    // memory of ours is touched.
    let w = unsafe {
        libc::ptrace(
            libc::PTRACE_PEEKDATA,
            tid.as_raw(),
            addr as usize as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if w == -1 {
        let e = Errno::last();
        if e as i32 != 0 {
            return Err(mem_err(tid, "PTRACE_PEEKDATA", addr, 8, e));
        }
    }
    Ok(w as u64)
}

/// `PTRACE_POKEDATA` of the word at `addr` (works on read-only text).
pub fn poke_word(tid: Pid, addr: u64, word: u64) -> Result<()> {
    // SAFETY: POKEDATA writes `word` (passed by value) into the tracee's
    // memory; no memory of ours is touched.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_POKEDATA,
            tid.as_raw(),
            addr as usize as *mut libc::c_void,
            word as usize as *mut libc::c_void,
        )
    };
    if r == -1 {
        return Err(mem_err(tid, "PTRACE_POKEDATA", addr, 8, Errno::last()));
    }
    Ok(())
}

/// Writes a few bytes at `addr` with PEEKDATA/POKEDATA on the aligned words
/// that hold them (aligned words never cross a page, so this works at the
/// end of a mapping). Returns the original words for [`restore_words`].
pub fn poke_bytes(tid: Pid, addr: u64, bytes: &[u8]) -> Result<Vec<(u64, u64)>> {
    let orig = peek_words(tid, addr, bytes.len())?;
    poke_words(tid, &overlay_words(&orig, addr, bytes), &orig)?;
    Ok(orig)
}

/// Pokes `words`; on failure puts `orig` back for those already written.
pub fn poke_words(tid: Pid, words: &[(u64, u64)], orig: &[(u64, u64)]) -> Result<()> {
    for (i, &(a, w)) in words.iter().enumerate() {
        if let Err(e) = poke_word(tid, a, w) {
            restore_words(tid, &orig[..i.min(orig.len())])?;
            return Err(e);
        }
    }
    Ok(())
}

/// The aligned words holding `[addr, addr + len)`, as (address, word).
pub fn peek_words(tid: Pid, addr: u64, len: usize) -> Result<Vec<(u64, u64)>> {
    let end = addr + len as u64;
    let mut out = Vec::with_capacity(2);
    let mut a = addr & !7;
    while a < end {
        out.push((a, peek_word(tid, a)?));
        a += 8;
    }
    Ok(out)
}

/// `words` (from [`peek_words`]) with `bytes` laid over them at `addr`.
pub fn overlay_words(words: &[(u64, u64)], addr: u64, bytes: &[u8]) -> Vec<(u64, u64)> {
    let end = addr + bytes.len() as u64;
    words
        .iter()
        .map(|&(wa, w)| {
            let mut b = w.to_ne_bytes();
            for (i, slot) in b.iter_mut().enumerate() {
                let a = wa + i as u64;
                if a >= addr && a < end {
                    *slot = bytes[(a - addr) as usize];
                }
            }
            (wa, u64::from_ne_bytes(b))
        })
        .collect()
}

/// Puts back the words [`poke_bytes`] replaced.
pub fn restore_words(tid: Pid, saved: &[(u64, u64)]) -> Result<()> {
    for &(a, w) in saved.iter().rev() {
        poke_word(tid, a, w)?;
    }
    Ok(())
}

//! Address spaces: which mappings cr can checkpoint, and which of their
//! pages go into the page store.
//!
//! A mapping's pages are saved when they differ from what restore would get
//! by mapping it again: every present page of a private anonymous mapping
//! (heap, stacks, anonymous memory), and the pages of a private file mapping
//! that were written (copy-on-write copies: present in `pagemap` without the
//! file-page bit). Pages never touched are not present and not saved; pages
//! that are all zero become zero runs in the page store and take no space.
//! The vDSO and vvar are not saved: restore moves the new process's own vDSO
//! to the old address. Shared mappings save nothing under the process: the
//! pages of shared anonymous memory and memfds are saved once per object
//! (`dump::shmem`), those of shared file mappings are the file's (part of
//! the container's files); a private mapping of a memfd saves its
//! copy-on-write pages like a private file mapping.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use cr_formats::schema::{ByteString, Vma, VmaKind};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::dump::procfs::MapsEntry;
use crate::dump::DumpError;

pub const PAGE_SIZE: u64 = 4096;

/// pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// The record kind of one mapping, or a refusal naming it.
pub fn classify(pid: i32, comm: &str, m: &MapsEntry) -> Result<VmaKind, DumpError> {
    let refuse = |what: &str| DumpError::Unsupported {
        pid,
        comm: comm.to_string(),
        what: format!(
            "the mapping {:#x}-{:#x} ({}) is {what}, which cr cannot move yet",
            m.start,
            m.end,
            if m.name.is_empty() {
                "anonymous"
            } else {
                m.name.as_str()
            }
        ),
    };
    Ok(match m.name.as_str() {
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" | "[vvar_vclock]" => VmaKind::Vvar,
        "[vsyscall]" => VmaKind::Vsyscall,
        "" | "/dev/zero (deleted)" if m.shared => VmaKind::Shmem { id: m.inode },
        name if name.starts_with("[anon_shmem:") && m.shared => VmaKind::Shmem { id: m.inode },
        "" => VmaKind::Anonymous,
        name if name.starts_with("[anon:") && !m.shared => VmaKind::Anonymous,
        // The inode of a SysV segment's mapping is its id; the segment's
        // record carries its contents (dump::ipc).
        name if name.starts_with("/SYSV") && m.shared && m.offset == 0 => VmaKind::SysvShm {
            shmid: m.inode as i32,
        },
        name if name.starts_with("/SYSV") => {
            return Err(refuse(
                "SysV shared memory mapped from an offset into the segment (split by mprotect or partly unmapped)",
            ))
        }
        name if name.starts_with("/memfd:") => VmaKind::Memfd {
            name: ByteString::from(crate::dump::shmem::memfd_name(name).unwrap_or(name)),
            id: m.inode,
        },
        // Files, deleted ones included (their contents go into a
        // DeletedFile record, found again by device and inode), shared
        // writable ones included (their data lives in the file, which is
        // part of the container's files).
        name if name.starts_with('/') => VmaKind::File {
            path: ByteString::from(name),
            dev: libc::makedev(m.dev_major, m.dev_minor),
            ino: m.inode,
        },
        _ => return Err(refuse("a special mapping")),
    })
}

/// Whether restore needs the mapping's pages from the page store.
pub fn saves_pages(kind: &VmaKind) -> bool {
    !matches!(kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall)
}

/// The VMA record of one mapping.
pub fn vma_record(pid: i32, m: &MapsEntry, kind: VmaKind) -> Vma {
    let mut flags = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u32;
    if matches!(kind, VmaKind::Stack) {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    if matches!(kind, VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack) {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    Vma {
        pid,
        start: m.start,
        end: m.end,
        prot: m.prot(),
        flags,
        madvise: 0,
        pgoff: m.offset,
        // A shared file mapping's pages are the file's.
        in_page_store: saves_pages(&kind) && !m.shared,
        kind,
    }
}

/// Runs of pages of `m` to save: (address, number of pages).
pub fn dirty_runs(
    pagemap: &File,
    pid: i32,
    m: &MapsEntry,
    kind: &VmaKind,
) -> Result<Vec<(u64, u64)>, DumpError> {
    if !saves_pages(kind) || !m.read || m.shared {
        return Ok(Vec::new());
    }
    let npages = (m.len() / PAGE_SIZE) as usize;
    let mut raw = vec![0u8; npages * 8];
    let offset = m.start / PAGE_SIZE * 8;
    let mut done = 0;
    while done < raw.len() {
        let n = pagemap
            .read_at(&mut raw[done..], offset + done as u64)
            .map_err(|e| DumpError::proc(pid, format!("/proc/{pid}/pagemap"), e))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    let file_backed = matches!(kind, VmaKind::File { .. } | VmaKind::Memfd { .. });
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, entry) in raw.chunks_exact(8).enumerate() {
        let bits = u64::from_le_bytes([
            entry[0], entry[1], entry[2], entry[3], entry[4], entry[5], entry[6], entry[7],
        ]);
        let present = bits & (PM_PRESENT | PM_SWAP) != 0;
        // In a private file mapping only copy-on-write copies differ from the file.
        let wanted = present && !(file_backed && bits & PM_FILE != 0);
        if !wanted {
            continue;
        }
        let addr = m.start + i as u64 * PAGE_SIZE;
        match runs.last_mut() {
            Some((start, n)) if *start + *n * PAGE_SIZE == addr => *n += 1,
            _ => runs.push((addr, 1)),
        }
    }
    Ok(runs)
}

/// Reads `len` bytes at `addr` of a stopped or frozen process into `buf`.
pub fn read_pages(pid: i32, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
    let mut done = 0usize;
    while done < buf.len() {
        let remote = [RemoteIoVec {
            base: (addr + done as u64) as usize,
            len: buf.len() - done,
        }];
        let mut local = [IoSliceMut::new(&mut buf[done..])];
        let n = process_vm_readv(Pid::from_raw(pid), &mut local, &remote).map_err(|source| {
            DumpError::Memory {
                pid,
                addr: addr + done as u64,
                source,
            }
        })?;
        if n == 0 {
            return Err(DumpError::Memory {
                pid,
                addr: addr + done as u64,
                source: nix::Error::EFAULT,
            });
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::procfs::parse_maps;

    #[test]
    fn kinds_and_refusals() {
        let maps = parse_maps(
            "1000-2000 rw-p 00000000 00:00 0 [heap]\n\
             2000-3000 rw-s 00000000 00:01 5 /dev/zero (deleted)\n\
             3000-4000 r-xp 00001000 fd:01 77 /usr/bin/python3\n\
             4000-5000 rw-s 00000000 fd:01 78 /srv/data\n\
             5000-6000 rw-p 00000000 00:00 0 \n\
             6000-7000 r-xp 00000000 00:00 0 [vdso]\n",
        )
        .unwrap();
        assert_eq!(classify(1, "x", &maps[0]).unwrap(), VmaKind::Heap);
        assert_eq!(
            classify(1, "x", &maps[1]).unwrap(),
            VmaKind::Shmem { id: 5 }
        );
        assert!(matches!(
            classify(1, "x", &maps[2]).unwrap(),
            VmaKind::File { ino: 77, .. }
        ));
        assert!(matches!(
            classify(1, "x", &maps[3]).unwrap(),
            VmaKind::File { ino: 78, .. }
        ));
        assert_eq!(classify(1, "x", &maps[4]).unwrap(), VmaKind::Anonymous);
        let vdso = classify(1, "x", &maps[5]).unwrap();
        assert!(!vma_record(1, &maps[5], vdso).in_page_store);
    }

    #[test]
    fn own_heap_pages_are_found_and_read() {
        let mut data = vec![7u8; 64 * 1024];
        data[100] = 9;
        let me = std::process::id() as i32;
        let maps = crate::dump::procfs::read_maps(me).unwrap();
        let addr = data.as_ptr() as u64;
        let m = maps
            .iter()
            .find(|m| m.start <= addr && addr < m.end)
            .unwrap();
        let kind = classify(me, "test", m).unwrap();
        let pagemap = File::open(format!("/proc/{me}/pagemap")).unwrap();
        let runs = dirty_runs(&pagemap, me, m, &kind).unwrap();
        let page = addr / PAGE_SIZE * PAGE_SIZE;
        assert!(
            runs.iter()
                .any(|(s, n)| *s <= page && page < s + n * PAGE_SIZE),
            "{runs:?}"
        );
        let mut buf = vec![0u8; 16];
        read_pages(me, addr + 96, &mut buf).unwrap();
        assert_eq!(&buf[..6], &[7, 7, 7, 7, 9, 7]);
    }
}

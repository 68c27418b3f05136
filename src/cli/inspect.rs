//! `cr inspect IMAGE`: every record of a checkpoint image with the frame it
//! came in (offset, length, checksum), and every page chunk. Nothing in an
//! image is opaque: `--json` gives all of it.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use clap::Args;
use cr_formats::schema::{FileKind, Record};
use cr_formats::{PageReader, RecordReader};

use crate::error::IoContext;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image directory (holds records.img and pages.img).
    pub image: PathBuf,
    /// Print every record and chunk as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<i32> {
    let records_path = cr_formats::layout::records_path(&args.image);
    let pages_path = cr_formats::layout::pages_path(&args.image);
    let file = File::open(&records_path).ctx("opening", &records_path)?;
    let mut reader = RecordReader::new(BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", records_path.display()))?;
    let manifest = reader.manifest().clone();
    let mut records = Vec::new();
    for entry in reader.by_ref() {
        records.push(entry.map_err(|e| anyhow::anyhow!("{}: {e}", records_path.display()))?);
    }
    let file = File::open(&pages_path).ctx("opening", &pages_path)?;
    let mut pages = PageReader::new(BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", pages_path.display()))?;
    let mut chunks = Vec::new();
    // A later run for a page supersedes an earlier one (pre-copy): count
    // the stored pages that restore overwrites.
    let mut live: std::collections::HashMap<i32, cr_formats::PageRanges> = Default::default();
    let (mut superseded, mut pre_copy_pages) = (0u64, 0u64);
    while let Some(chunk) = pages
        .next_chunk()
        .map_err(|e| anyhow::anyhow!("{}: {e}", pages_path.display()))?
    {
        if let Some(pid) = chunk.header.owner.pid() {
            let set = live.entry(pid).or_default();
            for run in &chunk.header.runs {
                let end = run.vaddr + u64::from(run.nr_pages) * 4096;
                superseded += set
                    .overlaps(run.vaddr, end)
                    .iter()
                    .map(|(s, e)| (e - s) / 4096)
                    .sum::<u64>();
                set.remove(run.vaddr, end);
                if run.kind == cr_formats::RunKind::Data {
                    set.insert(run.vaddr, end);
                }
            }
            if matches!(chunk.header.owner, cr_formats::PageOwner::PreCopy { .. }) {
                pre_copy_pages += chunk.header.data_pages();
            }
        }
        chunks.push(serde_json::json!({
            "frame": chunk.frame,
            "owner": chunk.header.owner,
            "runs": chunk.header.runs,
            "data_pages": chunk.header.data_pages(),
            "zero_pages": chunk.header.zero_pages(),
        }));
    }
    let stats = pages.stats();
    if args.json {
        let out = serde_json::json!({
            "manifest": manifest,
            "records": records,
            "page_chunks": chunks,
            "pages": {
                "data": stats.data_pages,
                "zero": stats.zero_pages,
                "pre_copy_data": pre_copy_pages,
                "superseded": superseded,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!(
        "image {} of container {:?}: cr {}, kernel {}, format checked (every frame's checksum and the trailer)",
        args.image.display(),
        manifest.container,
        manifest.cr_version,
        manifest.kernel_release
    );
    println!(
        "{:>5} {:>10} {:>8} {:>10}  RECORD",
        "SEQ", "OFFSET", "BYTES", "CRC32C"
    );
    for e in &records {
        println!(
            "{:>5} {:>10} {:>8} {:>10x}  {}",
            e.frame.seq,
            e.frame.offset,
            e.frame.frame_len(),
            e.frame.checksum,
            summary(&e.record)
        );
    }
    println!(
        "pages: {} chunks, {} pages stored, {} zero pages ({} bytes of page data)",
        chunks.len(),
        stats.data_pages,
        stats.zero_pages,
        stats.data_pages * 4096
    );
    if pre_copy_pages > 0 {
        println!(
            "       {pre_copy_pages} of the stored pages were copied before the freeze (pre-copy); {superseded} stored pages are superseded by a later run for the same page (restore applies runs in order)"
        );
    }
    let upper = args.image.join(crate::container::upper::UPPER_ARCHIVE);
    match std::fs::metadata(&upper) {
        Ok(meta) => println!(
            "container files: {} ({} bytes, tar with xattrs)",
            upper.display(),
            meta.len()
        ),
        Err(_) => println!("container files: none in this image"),
    }
    Ok(0)
}

/// One line per record.
fn summary(record: &Record) -> String {
    match record {
        Record::Manifest(m) => format!("manifest {}", m.container),
        Record::Process(p) => format!(
            "process {} ({}) ppid {} pgid {} sid {} uid {} exe {}",
            p.pid, p.comm, p.ppid, p.pgid, p.sid, p.creds.uid.effective, p.exe
        ),
        Record::Thread(t) => format!(
            "thread {} of {} ({}) {} bytes of xsave, sigmask {:#x}, {:?}",
            t.tid,
            t.pid,
            t.comm,
            t.xsave.0.len(),
            t.sigmask,
            t.syscall
        ),
        Record::Vma(v) => format!(
            "vma of {} {:#x}-{:#x} prot {} {:?}{}",
            v.pid,
            v.start,
            v.end,
            v.prot,
            v.kind,
            if v.in_page_store { "" } else { " (no pages)" }
        ),
        Record::File(f) => match &f.kind {
            FileKind::Regular { path, pos, .. } => format!("file {} regular {path} at {pos}", f.id),
            FileKind::Directory { path, .. } => format!("file {} directory {path}", f.id),
            FileKind::CharDevice { path, .. } => format!("file {} device {path}", f.id),
            FileKind::Pipe { pipe, end } => format!("file {} pipe {pipe} {end:?} end", f.id),
            FileKind::Fifo { path, end, .. } => format!("file {} fifo {path} {end:?} end", f.id),
            FileKind::Unix(u) => format!(
                "file {} unix {:?} {:?} socket:[{}] peer {:?} name {:?} {} queued",
                f.id,
                u.kind,
                u.state,
                u.ino,
                u.peer,
                u.name,
                u.queue.len()
            ),
            FileKind::EventFd { count, semaphore } => {
                format!("file {} eventfd count {count} semaphore {semaphore}", f.id)
            }
            FileKind::Epoll { items } => format!("file {} epoll with {} items", f.id, items.len()),
            FileKind::SignalFd { mask } => format!("file {} signalfd mask {mask:#x}", f.id),
            FileKind::TimerFd(t) => format!(
                "file {} timerfd clock {} value {} ns interval {} ns ticks {}",
                f.id, t.clock, t.value_ns, t.interval_ns, t.ticks
            ),
            FileKind::Inotify { watches } => {
                format!("file {} inotify with {} watches", f.id, watches.len())
            }
            FileKind::Inet(s) => format!(
                "file {} {:?} {:?} {} -> {} {}",
                f.id,
                s.proto,
                s.family,
                s.local.map(|a| a.to_string()).unwrap_or("-".into()),
                s.peer.map(|a| a.to_string()).unwrap_or("-".into()),
                match &s.state {
                    cr_formats::schema::InetState::Idle => "idle".to_string(),
                    cr_formats::schema::InetState::Listen { backlog } =>
                        format!("listening (backlog {backlog})"),
                    cr_formats::schema::InetState::Established(c) => format!(
                        "established ({} bytes to send, {} received)",
                        c.send_queue.0.len(),
                        c.recv_queue.0.len()
                    ),
                    cr_formats::schema::InetState::HalfClosed {
                        connection: c,
                        fin_sent,
                        fin_received,
                    } => format!(
                        "half-closed ({}; {} bytes to send, {} received)",
                        match (fin_sent, fin_received) {
                            (true, false) => "FIN_WAIT2: this side sent its FIN",
                            (false, true) => "CLOSE_WAIT: the peer sent its FIN",
                            _ => "both FINs",
                        },
                        c.send_queue.0.len(),
                        c.recv_queue.0.len()
                    ),
                }
            ),
            FileKind::Memfd { id, pos } => format!("file {} memfd {id} at {pos}", f.id),
            FileKind::Deleted { id, pos } => format!("file {} deleted file {id} at {pos}", f.id),
            FileKind::Mqueue { name } => format!("file {} POSIX message queue /{name}", f.id),
            FileKind::Netlink(n) => format!(
                "file {} netlink protocol {} port {} groups {:x?}{}",
                f.id,
                n.protocol,
                n.port,
                n.groups,
                n.peer
                    .map(|(port, groups)| format!(" connected to port {port} groups {groups:#x}"))
                    .unwrap_or_default()
            ),
        },
        Record::Fd(fd) => format!(
            "fd {} of {} -> file {}{}",
            fd.fd,
            fd.pid,
            fd.file,
            if fd.cloexec { " cloexec" } else { "" }
        ),
        Record::PipeData(p) => format!(
            "pipe {} data: {} bytes (capacity {})",
            p.pipe,
            p.data.0.len(),
            p.capacity
        ),
        Record::FileLock(l) => format!(
            "lock of {} on file {}: {:?} {:?}",
            l.pid, l.file, l.kind, l.mode
        ),
        Record::Shmem(o) => format!("shmem {} of {} bytes {:?}", o.id, o.size, o.kind),
        Record::DeletedFile(d) => format!(
            "deleted file {} {} mode {:o}: {} bytes",
            d.id,
            d.path,
            d.mode,
            d.data.0.len()
        ),
        Record::SysvShm(s) => format!(
            "SysV shm id {} key {:#x} mode {:o} owner {}:{}, {} bytes ({} stored)",
            s.perm.id,
            s.perm.key,
            s.perm.mode,
            s.perm.uid,
            s.perm.gid,
            s.size,
            s.data.0.len()
        ),
        Record::SysvSem(s) => format!(
            "SysV semaphores id {} key {:#x} mode {:o} owner {}:{}, values {:?}",
            s.perm.id, s.perm.key, s.perm.mode, s.perm.uid, s.perm.gid, s.values
        ),
        Record::SysvMsgQueue(q) => format!(
            "SysV message queue id {} key {:#x} mode {:o} owner {}:{}, qbytes {}, {} messages",
            q.perm.id,
            q.perm.key,
            q.perm.mode,
            q.perm.uid,
            q.perm.gid,
            q.qbytes,
            q.messages.len()
        ),
        Record::PosixMqueue(q) => format!(
            "POSIX message queue /{} mode {:o} owner {}:{}, maxmsg {} msgsize {}, {} messages",
            q.name,
            q.mode,
            q.uid,
            q.gid,
            q.maxmsg,
            q.msgsize,
            q.messages.len()
        ),
        Record::Mount(m) => format!(
            "mount {} at {}: {:?} flags {:#x} data {:?}{} {:?}",
            m.index,
            m.mount_point,
            m.kind,
            m.flags,
            m.data.to_string(),
            if m.sb_readonly { " sb-ro" } else { "" },
            m.propagation
        ),
        Record::Uts(u) => format!(
            "uts hostname {:?} domainname {:?}",
            u.hostname.to_string(),
            u.domainname.to_string()
        ),
        Record::NetNamespace(n) => format!(
            "network namespace: {} links, {} addresses, {} routes, {} rules, {} neighbours, {} sysctls",
            n.links.len(),
            n.addresses.len(),
            n.routes.len(),
            n.rules.len(),
            n.neighbours.len(),
            n.sysctls.len()
        ),
        Record::TimeNamespace(t) => format!(
            "time namespace {}: monotonic {}.{:09} s, boottime {}.{:09} s, made by {}, members {:?}",
            t.id,
            t.monotonic.secs,
            t.monotonic.nanos,
            t.boottime.secs,
            t.boottime.nanos,
            t.creator
                .map_or("the restorer".to_string(), |p| format!("process {p}")),
            t.members
        ),
        Record::Nftables(n) => format!(
            "nftables: {} table(s) ({}), {} bytes of ruleset",
            n.tables.len(),
            n.tables.join(", "),
            n.ruleset.0.len()
        ),
    }
}

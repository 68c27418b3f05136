//! The disk server's control protocol, and the one handler that serves it.
//!
//! ```text
//!   client                                   server (control thread)
//!   connect disk/control.sock
//!   {"op":"snapshot","label":"L"}\n  ─────▶  lock chain, run, unlock
//!                                    ◀─────  {"ok":{"kind":"snapshot",...}}\n
//!                                            or {"error":"one sentence"}\n
//!   (read: the reply line is followed by exactly `len` raw bytes)
//! ```
//!
//! One request per connection, JSON lines, both sides on the same host.
//! Requests are handled one at a time by the control thread; the FUSE
//! threads keep serving the block device meanwhile, taking the same chain
//! mutex for each request. A long operation (merge, export) takes the lock
//! in short steps, so I/O goes on between them.
//!
//! [`handle`] is also what `cr disk` runs in-process on a stopped
//! container's chain (under the chain's lock file), so a command means the
//! same whether or not the container runs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cr_formats::disk::{check_chain, Chain, DeltaId, FsDir, Mark};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Clusters copied per merge step while holding the chain lock.
const MERGE_STEP: u64 = 16;
/// Clusters read per lock hold by an export.
const EXPORT_STEP: u64 = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Sizes, generation, open handles, I/O errors.
    Status,
    /// Make every write so far durable.
    Flush,
    /// A new empty top delta; the old top is the snapshot.
    Snapshot { label: String },
    /// The chain's deltas, bottom first.
    List,
    /// Fold every delta into the bottom one, online.
    Merge,
    /// Fold every delta above `delta` (an id) into it, online: undoes the
    /// snapshots taken since `delta` was the top (a failed migration's).
    MergeInto { delta: String },
    /// Grow the virtual disk to `size` bytes.
    Grow { size: u64 },
    /// Close the current write generation.
    Mark,
    /// Virtual clusters written after `mark`.
    DirtySince { mark: u32 },
    /// `len` bytes of the virtual disk at `offset` (raw bytes follow the reply).
    Read { offset: u64, len: u64 },
    /// Write the disk (or the snapshot `snapshot`, a delta id) as a flat,
    /// sparse file at `path`.
    Export {
        path: PathBuf,
        snapshot: Option<String>,
    },
    /// Verify the chain (after a flush, with writes held).
    Check,
    /// Flush and end the server once nothing has the disk open.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Status(DiskStatus),
    Snapshot {
        /// The delta that now holds the disk as it was: the snapshot's id.
        snapshot: String,
        /// The new writable top.
        top: String,
        /// How long the chain switch took.
        micros: u64,
    },
    List {
        deltas: Vec<DeltaView>,
    },
    Merged {
        removed: u32,
        clusters_copied: u64,
    },
    Mark {
        mark: u32,
    },
    Dirty {
        clusters: Vec<u64>,
    },
    Data {
        len: u64,
    },
    Exported {
        bytes: u64,
        clusters: u64,
    },
    Check(CheckView),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    pub virtual_size: u64,
    pub cluster_size: u32,
    pub generation: u32,
    pub deltas: usize,
    /// Open handles on the flat file (the loop device holds one).
    pub open_files: u64,
    /// Requests the server answered with EIO.
    pub io_errors: u64,
}

/// One delta of `cr disk list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeltaView {
    pub id: String,
    pub label: String,
    pub read_only: bool,
    pub created_unix_ns: u64,
    pub virtual_size: u64,
    pub allocated_clusters: u64,
}

/// What `cr disk check` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckView {
    pub consistent: bool,
    pub findings: Vec<String>,
    pub deltas: Vec<DeltaCheckView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeltaCheckView {
    pub file: String,
    pub id: String,
    pub virtual_size: u64,
    pub generation: u32,
    pub allocated_clusters: u64,
    pub unreferenced_clusters: u64,
    pub damaged_bat_copies: u32,
}

impl From<cr_formats::disk::CheckReport> for CheckView {
    fn from(r: cr_formats::disk::CheckReport) -> Self {
        CheckView {
            consistent: r.is_consistent(),
            findings: r.findings.iter().map(|f| f.to_string()).collect(),
            deltas: r
                .deltas
                .iter()
                .map(|d| DeltaCheckView {
                    file: d.file.clone(),
                    id: d.id.to_string(),
                    virtual_size: d.virtual_size,
                    generation: d.generation,
                    allocated_clusters: d.allocated_clusters,
                    unreferenced_clusters: d.unreferenced_clusters,
                    damaged_bat_copies: d.damaged_bat_copies,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Envelope {
    Ok(Reply),
    Error(String),
}

/// The chain and the counters the FUSE threads and the control thread share.
#[derive(Debug)]
pub struct Shared {
    pub chain: Mutex<Chain<FsDir>>,
    pub chain_dir: PathBuf,
    pub open_files: AtomicU64,
    pub io_errors: AtomicU64,
    /// Set by [`Request::Stop`]: the server ends after the reply.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new(chain: Chain<FsDir>, chain_dir: PathBuf) -> Self {
        Shared {
            chain: Mutex::new(chain),
            chain_dir,
            open_files: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// The chain; a panicked holder cannot have left it half-changed in a
    /// way the format does not survive (every change is ordered for crashes).
    pub fn lock(&self) -> MutexGuard<'_, Chain<FsDir>> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn disk(e: cr_formats::disk::DiskError) -> Error {
    Error::Disk(Box::new(e))
}

/// Parses a delta id as `cr disk list` shows it (a UUID).
pub fn parse_delta_id(text: &str) -> Result<DeltaId> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{text:?} is not a delta id: give the UUID `cr disk list` shows"
        )));
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| Error::Invalid(format!("{text:?} is not a delta id")))?;
    }
    Ok(DeltaId(id))
}

/// Runs one request; `out` receives the raw bytes of a [`Request::Read`].
pub fn handle(shared: &Shared, req: &Request, out: &mut Vec<u8>) -> Result<Reply> {
    match req {
        Request::Status => {
            let c = shared.lock();
            Ok(Reply::Status(DiskStatus {
                virtual_size: c.virtual_size(),
                cluster_size: c.cluster_size(),
                generation: c.generation(),
                deltas: c.deltas().len(),
                open_files: shared.open_files.load(Ordering::SeqCst),
                io_errors: shared.io_errors.load(Ordering::SeqCst),
            }))
        }
        Request::Flush => {
            shared.lock().flush().map_err(disk)?;
            Ok(Reply::Done)
        }
        Request::Snapshot { label } => {
            let start = Instant::now();
            let mut c = shared.lock();
            let frozen = c
                .manifest()
                .top()
                .map(|t| t.id)
                .ok_or_else(|| Error::Invalid("the chain has no delta".into()))?;
            let top = c.snapshot(label).map_err(disk)?;
            Ok(Reply::Snapshot {
                snapshot: frozen.to_string(),
                top: top.to_string(),
                micros: start.elapsed().as_micros() as u64,
            })
        }
        Request::List => {
            let c = shared.lock();
            let deltas = c
                .manifest()
                .deltas
                .iter()
                .zip(c.deltas())
                .map(|(e, d)| DeltaView {
                    id: e.id.to_string(),
                    label: e.label.clone(),
                    read_only: e.read_only,
                    created_unix_ns: e.created_unix_ns,
                    virtual_size: d.virtual_size(),
                    allocated_clusters: d.entries().count() as u64,
                })
                .collect();
            Ok(Reply::List { deltas })
        }
        Request::Merge => merge_above(shared, None),
        Request::MergeInto { delta } => merge_above(shared, Some(parse_delta_id(delta)?)),
        Request::Grow { size } => {
            let mut c = shared.lock();
            if *size < c.virtual_size() {
                return Err(Error::Invalid(format!(
                    "the disk is {} bytes; it can grow, not shrink to {size}",
                    c.virtual_size()
                )));
            }
            c.grow(*size).map_err(disk)?;
            c.flush().map_err(disk)?;
            Ok(Reply::Done)
        }
        Request::Mark => {
            let mut c = shared.lock();
            let m = c.mark().map_err(disk)?;
            Ok(Reply::Mark { mark: m.0 })
        }
        Request::DirtySince { mark } => Ok(Reply::Dirty {
            clusters: shared.lock().dirty_since(Mark(*mark)),
        }),
        Request::Read { offset, len } => {
            let len = usize::try_from(*len)
                .ok()
                .filter(|l| *l <= 64 << 20)
                .ok_or_else(|| Error::Invalid(format!("a read of {len} bytes is too large")))?;
            out.resize(len, 0);
            shared.lock().read_at(*offset, out).map_err(disk)?;
            Ok(Reply::Data { len: len as u64 })
        }
        Request::Export { path, snapshot } => export(shared, path, snapshot.as_deref()),
        Request::Check => {
            let mut c = shared.lock();
            c.flush().map_err(disk)?;
            // Holding the lock: no write lands while the files are read.
            let report = check_chain(&FsDir::new(&shared.chain_dir));
            drop(c);
            Ok(Reply::Check(report.into()))
        }
        Request::Stop => {
            super::serve::wait_released(shared)?;
            shared.lock().flush().map_err(disk)?;
            shared.stopping.store(true, Ordering::SeqCst);
            Ok(Reply::Done)
        }
    }
}

/// Folds the delta above `base` (the bottom one when None) into it until
/// `base` is the top, in short steps.
fn merge_above(shared: &Shared, base: Option<DeltaId>) -> Result<Reply> {
    let mut removed = 0u32;
    let mut copied = 0u64;
    loop {
        {
            let mut c = shared.lock();
            let at = match base {
                None => 0,
                Some(id) => c
                    .manifest()
                    .deltas
                    .iter()
                    .position(|d| d.id == id)
                    .ok_or_else(|| Error::Invalid(format!("the chain has no delta {id}")))?,
            };
            if c.deltas().len() < at + 2 {
                break;
            }
            c.merge_begin(at + 1).map_err(disk)?;
        }
        loop {
            let p = shared.lock().merge_step(MERGE_STEP).map_err(disk)?;
            copied += p.copied;
            if p.ready {
                break;
            }
        }
        let outcome = shared.lock().merge_finish().map_err(disk)?;
        copied += outcome.clusters_copied;
        removed += 1;
    }
    Ok(Reply::Merged {
        removed,
        clusters_copied: copied,
    })
}

/// Writes the view of the disk (the live one, or snapshot `id`'s) into a
/// sparse file: only the clusters some delta holds.
fn export(shared: &Shared, path: &Path, snapshot: Option<&str>) -> Result<Reply> {
    let id = snapshot.map(parse_delta_id).transpose()?;
    let top = shared.lock().manifest().top().map(|t| t.id);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .ctx("creating the export file", path)?;
    let result = match id {
        Some(id) if Some(id) != top => {
            // A read-only delta never changes (no merge can run while this
            // request does: requests are handled one at a time).
            let view = Chain::open_snapshot(FsDir::new(&shared.chain_dir), id).map_err(disk)?;
            let guard = Mutex::new(view);
            copy_view(&file, path, || {
                guard.lock().unwrap_or_else(|p| p.into_inner())
            })
        }
        _ => copy_view(&file, path, || shared.lock()),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn copy_view<'a, F>(file: &File, path: &Path, lock: F) -> Result<Reply>
where
    F: Fn() -> MutexGuard<'a, Chain<FsDir>>,
{
    let (size, cs, clusters) = {
        let c = lock();
        (
            c.virtual_size(),
            u64::from(c.cluster_size()),
            c.dirty_since(Mark::ORIGIN),
        )
    };
    file.set_len(size).ctx("sizing the export file", path)?;
    let mut buf = vec![0u8; cs as usize];
    let mut written = 0u64;
    for batch in clusters.chunks(EXPORT_STEP as usize) {
        let c = lock();
        for &v in batch {
            let offset = v * cs;
            let n = cs.min(size.saturating_sub(offset)) as usize;
            c.read_at(offset, &mut buf[..n]).map_err(disk)?;
            if buf[..n].iter().any(|b| *b != 0) {
                file.write_all_at(&buf[..n], offset)
                    .ctx("writing the export file", path)?;
                written += 1;
            }
        }
    }
    file.sync_all().ctx("syncing the export file", path)?;
    Ok(Reply::Exported {
        bytes: size,
        clusters: written,
    })
}

/// Serves one connection: a request line, a reply line, raw bytes for a read.
pub fn serve_connection(shared: &Shared, stream: UnixStream) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut data = Vec::new();
    let envelope = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match handle(shared, &req, &mut data) {
            Ok(reply) => Envelope::Ok(reply),
            Err(e) => Envelope::Error(crate::cli::describe(&anyhow::Error::new(e))),
        },
        Err(e) => Envelope::Error(format!("bad control request {:?}: {e}", line.trim())),
    };
    let mut w = &stream;
    let Ok(mut text) = serde_json::to_string(&envelope) else {
        return;
    };
    text.push('\n');
    if w.write_all(text.as_bytes()).is_ok() && matches!(envelope, Envelope::Ok(Reply::Data { .. }))
    {
        let _ = w.write_all(&data);
    }
}

/// Sends `req` to the server listening on `socket`; `data` receives the
/// bytes of a read. `timeout`: how long the server may take to answer.
pub fn call(socket: &Path, req: &Request, data: &mut Vec<u8>, timeout: Duration) -> Result<Reply> {
    let stream = UnixStream::connect(socket).ctx("connecting to the disk server at", socket)?;
    stream
        .set_read_timeout(Some(timeout))
        .ctx("setting a timeout on", socket)?;
    let mut text = serde_json::to_string(req)
        .map_err(|e| Error::Invalid(format!("encoding a control request: {e}")))?;
    text.push('\n');
    (&stream)
        .write_all(text.as_bytes())
        .ctx("writing to the disk server at", socket)?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .ctx("reading the disk server's reply at", socket)?;
    if line.is_empty() {
        return Err(Error::Invalid(format!(
            "the disk server at {} closed the connection without replying (did it die?)",
            socket.display()
        )));
    }
    let envelope: Envelope = serde_json::from_str(&line).map_err(|e| {
        Error::Invalid(format!(
            "the disk server sent {:?}, not a reply: {e}",
            line.trim()
        ))
    })?;
    match envelope {
        Envelope::Error(message) => Err(Error::Invalid(message)),
        Envelope::Ok(reply) => {
            if let Reply::Data { len } = &reply {
                data.resize(*len as usize, 0);
                reader
                    .read_exact(data)
                    .ctx("reading data from the disk server at", socket)?;
            }
            Ok(reply)
        }
    }
}

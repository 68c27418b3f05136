//! Migration of a container between hosts: `cr migrate` (the source,
//! [`source`]) and the receiving side of `cr serve` (the destination,
//! [`destination`]), over the QUIC sessions of `cr-transport`. The protocol
//! (messages, state machines, every failure) is `docs/migration-protocol.md`;
//! this module is the engine around it.
//!
//! ```text
//!  source                                   destination
//!  Offer (config, sizes) ─────────────────▶ checks name, image, address
//!                        ◀───────────────── Accept
//!  pre-copy, freeze, dump into a tmpfs
//!  staging dir; the container stays frozen
//!  StreamsOpen, then three streams: ──────▶ into a tmpfs staging dir
//!    records.img | pages.img | tar of the rest (upper layer, mounts)
//!  Committed (bytes per stream) ──────────▶ totals compared
//!                                           cr restore --frozen --pages lazy
//!                        ◀───────────────── Restored
//!  Resume ────────────────────────────────▶ thaw, announce the MAC (ARP)
//!                        ◀───────────────── Resumed
//!  stop + destroy the frozen copy
//!  Confirm ───────────────────────────────▶ done
//! ```
//!
//! Until `Resumed` arrives the source keeps its container frozen and thaws
//! it on any failure; the destination runs nothing before `Resume` and
//! removes what it built on any failure before it. Staging directories are
//! tmpfs mounts (memory, not disk), removed when the migration ends; the
//! destination's lazy restore maps its received page store straight from
//! there.

pub mod destination;
pub mod progress;
pub mod recovery;
pub mod source;

pub use recovery::{recover, Record, Role};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cr_transport::protocol::{Committed, StreamDecl, StreamTotal};
use cr_transport::{
    BlockingRecv, BlockingSend, ControlStream, Message, MigrationId, Session, StreamHeader,
    StreamKind,
};
use tokio::runtime::Handle;

use crate::error::{Error, IoContext, Result};
use crate::host::Host;

/// The streams of a version-1 migration, in the order they are declared.
pub const STREAMS: [StreamDecl; 3] = [
    StreamDecl {
        kind: StreamKind::Records,
        index: 0,
    },
    StreamDecl {
        kind: StreamKind::Pages,
        index: 0,
    },
    StreamDecl {
        kind: StreamKind::Files,
        index: 0,
    },
];

/// A migration's working directory: a tmpfs mount at
/// `ROOT/migrations/ID`, so no image touches the disk. Dropped, it is
/// unmounted (lazily: a lazy restore may still map a file of it) and
/// removed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Mounts a tmpfs of at most `size` bytes for migration `id`.
    pub fn create(host: &Host, id: &MigrationId, size: u64) -> Result<Staging> {
        let dir = host.root().join("migrations").join(id.to_string());
        fs::create_dir_all(&dir).ctx("creating migration staging directory", &dir)?;
        let opts = format!("size={},mode=0700", size.max(16 << 20));
        nix::mount::mount(
            Some("cr-migration"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| {
            let _ = fs::remove_dir(&dir);
            Error::sys(format!("mounting a tmpfs on {}", dir.display()), e)
        })?;
        Ok(Staging { dir })
    }

    /// Where the image goes (not created: a checkpoint makes it).
    pub fn image_dir(&self) -> PathBuf {
        self.dir.join("image")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Bytes a tmpfs staging directory may hold for a container whose memory
/// and files take `sizes`: the image is at most about that, plus room.
pub fn staging_size(memory: u64, files: u64) -> u64 {
    memory
        .saturating_add(files)
        .saturating_mul(2)
        .saturating_add(256 << 20)
}

/// The control stream from synchronous code, with a deadline on every
/// receive.
pub struct Control {
    rt: Handle,
    stream: ControlStream,
    peer: String,
}

impl Control {
    pub fn new(rt: &Handle, stream: ControlStream) -> Control {
        let peer = stream.peer().to_string();
        Control {
            rt: rt.clone(),
            stream,
            peer,
        }
    }

    pub fn send(&mut self, message: &Message) -> Result<()> {
        let peer = self.peer.clone();
        self.rt
            .block_on(self.stream.send(message))
            .map_err(|e| Error::Invalid(format!("sending {} to {peer}: {e}", message.name())))
    }

    /// The next message, or an error when none comes within `timeout`.
    pub fn recv(&mut self, timeout: Duration, waiting_for: &str) -> Result<Message> {
        let peer = self.peer.clone();
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, self.stream.recv()).await })
        {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(Error::Invalid(format!(
                "waiting for {waiting_for} from {peer}: {e}"
            ))),
            Err(_) => Err(Error::Invalid(format!(
                "{peer} sent no {waiting_for} within {timeout:?}"
            ))),
        }
    }
}

/// Sends the image in `dir` on the three [`STREAMS`] at once; returns what
/// each carried, for `Committed`.
pub fn send_image(
    rt: &Handle,
    session: &Session,
    id: MigrationId,
    dir: &Path,
    progress: &progress::Progress,
) -> Result<Committed> {
    let peer = session.peer().name.clone();
    let open = |decl: &StreamDecl| {
        BlockingSend::open(rt, session, StreamHeader::new(decl.kind, id, decl.index))
            .map_err(|e| Error::Invalid(format!("opening a data stream to {peer}: {e}")))
    };
    let mut senders = Vec::new();
    for decl in &STREAMS {
        senders.push((*decl, open(decl)?));
    }
    progress.transfer(crate::dump::checkpoint::dir_size(dir));
    let sending = std::sync::atomic::AtomicBool::new(true);
    let results: Vec<Result<StreamTotal>> = std::thread::scope(|s| {
        let handles: Vec<_> = senders
            .into_iter()
            .map(|(decl, tx)| {
                let peer = peer.clone();
                let sent = progress.sent.clone();
                s.spawn(move || -> Result<StreamTotal> {
                    let mut tx = progress::Counted { inner: tx, sent };
                    let fail = |e: io::Error| {
                        Error::Invalid(format!("sending the {:?} stream to {peer}: {e}", decl.kind))
                    };
                    match decl.kind {
                        StreamKind::Records => {
                            copy_file(&cr_formats::layout::records_path(dir), &mut tx)?
                        }
                        StreamKind::Pages => {
                            copy_file(&cr_formats::layout::pages_path(dir), &mut tx)?
                        }
                        _ => archive_rest(dir, &mut tx)?,
                    }
                    let bytes = tx.inner.finish().map_err(fail)?;
                    Ok(StreamTotal {
                        kind: decl.kind,
                        index: decl.index,
                        bytes,
                    })
                })
            })
            .collect();
        s.spawn(|| {
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                progress.tick();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a stream sender panicked".into())))
            })
            .collect();
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        results
    });
    let streams = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(Committed {
        migration: id,
        streams,
    })
}

fn copy_file(path: &Path, out: &mut impl Write) -> Result<()> {
    let mut f = File::open(path).ctx("opening", path)?;
    copy_chunks(&mut f, out).ctx("sending", path)?;
    Ok(())
}

/// `io::copy` with 1 MiB reads and writes instead of its 8 KiB buffer:
/// a 512 MiB page store is 512 syscalls per side rather than 65536.
fn copy_chunks(input: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; cr_transport::blocking::CHUNK];
    let mut total = 0u64;
    loop {
        if source::interrupted() {
            return Err(io::Error::other("cancelled by the user (Ctrl-C)"));
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Everything of the image directory but the two streams, as a tar.
fn archive_rest(dir: &Path, out: &mut impl Write) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut names: Vec<_> = fs::read_dir(dir)
        .ctx("reading", dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != cr_formats::layout::RECORDS_FILE && n != cr_formats::layout::PAGES_FILE)
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let result = if path.is_dir() {
            tar.append_dir_all(&name, &path)
        } else {
            tar.append_path_with_name(&path, &name)
        };
        result.ctx("archiving", &path)?;
    }
    tar.into_inner().ctx("archiving", dir)?;
    Ok(())
}

/// Receives the three [`STREAMS`] of migration `id` into `dir`, each at
/// most `cap` bytes; returns what each carried.
pub fn receive_image(
    rt: &Handle,
    session: &Session,
    id: MigrationId,
    dir: &Path,
    cap: u64,
) -> Result<Vec<StreamTotal>> {
    let peer = session.peer().name.clone();
    let mut streams = Vec::new();
    for _ in 0..STREAMS.len() {
        let stream = BlockingRecv::accept(rt, session, id)
            .map_err(|e| Error::Invalid(format!("accepting a data stream from {peer}: {e}")))?;
        streams.push(stream);
    }
    let results: Vec<Result<StreamTotal>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|(header, rx)| {
                let peer = peer.clone();
                s.spawn(move || receive_stream(header, rx, dir, cap, &peer))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a stream receiver panicked".into())))
            })
            .collect()
    });
    let totals = results.into_iter().collect::<Result<Vec<_>>>()?;
    for decl in &STREAMS {
        if !totals
            .iter()
            .any(|t| t.kind == decl.kind && t.index == decl.index)
        {
            return Err(Error::Invalid(format!(
                "{peer} did not send the {:?} stream",
                decl.kind
            )));
        }
    }
    Ok(totals)
}

/// Counts what passes, and refuses more than `cap` bytes.
struct Capped<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(io::Error::other(format!(
                "the stream is larger than the {} bytes allowed",
                self.cap
            )));
        }
        Ok(n)
    }
}

fn receive_stream(
    header: StreamHeader,
    rx: BlockingRecv,
    dir: &Path,
    cap: u64,
    peer: &str,
) -> Result<StreamTotal> {
    let mut input = Capped {
        inner: rx,
        read: 0,
        cap,
    };
    let fail = |what: &str, e: io::Error| {
        Error::Invalid(format!(
            "receiving the {:?} stream from {peer}: {what}: {e}",
            header.kind
        ))
    };
    let into_file = |path: PathBuf, input: &mut Capped<BlockingRecv>| -> Result<()> {
        let mut f = File::create(&path).ctx("creating", &path)?;
        copy_chunks(input, &mut f).map_err(|e| fail("writing", e))?;
        Ok(())
    };
    match (header.kind, header.index) {
        (StreamKind::Records, 0) => into_file(cr_formats::layout::records_path(dir), &mut input)?,
        (StreamKind::Pages, 0) => into_file(cr_formats::layout::pages_path(dir), &mut input)?,
        (StreamKind::Files, 0) => unpack_rest(&mut input, dir, peer)?,
        (kind, index) => {
            return Err(Error::Invalid(format!(
                "{peer} opened a {kind:?} stream {index}, which version 1 does not send"
            )))
        }
    }
    // The stream must have ended with its FIN: a reset or a cut is an error
    // of the reads above; the tar reader may stop before the end.
    io::copy(&mut input, &mut io::sink()).map_err(|e| fail("reading to its end", e))?;
    Ok(StreamTotal {
        kind: header.kind,
        index: header.index,
        bytes: input.read,
    })
}

/// Unpacks the tar of the image's other files into `dir`, refusing any
/// entry that would land outside it.
fn unpack_rest(input: &mut impl Read, dir: &Path, peer: &str) -> Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let entries = archive
        .entries()
        .map_err(|e| Error::Invalid(format!("the files stream from {peer}: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::Invalid(format!("the files stream from {peer}: {e}")))?;
        let path = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        match entry.unpack_in(dir) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Invalid(format!(
                    "the files stream from {peer} holds {}, which lies outside the image",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "the files stream from {peer}: unpacking {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(())
}

/// A runtime for the transport: QUIC runs on its two workers while the
/// engine's threads block on streams.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cr-quic")
        .build()
        .map_err(|e| Error::Invalid(format!("starting the QUIC runtime: {e}")))
}

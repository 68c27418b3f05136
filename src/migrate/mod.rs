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
pub mod layer;
pub mod progress;
pub mod recovery;
pub mod source;

pub use recovery::{recover, Record, Role};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
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

/// Sends an image on the three [`STREAMS`] while the checkpoint makes it.
///
/// ```text
///  start (before the checkpoint)   open Records, Pages, Files
///  checkpoint with page_sink:      the page store is written straight
///    pre-copy rounds (running)     into the Pages stream (no queue of its own:
///    freeze, dump                  the pre-copy goes at the stream's pace)
///  finish (checkpoint done)        end Pages; records.img ──▶ Records,
///                                  tar of the rest ──▶ Files, in parallel
/// ```
///
/// The page store is append-only (a later run for a page supersedes an
/// earlier one, `docs/image-format.md`), so the Pages stream is exactly a
/// `pages.img`, its pre-copy chunks sent while the container still runs;
/// the source keeps no copy. Dropped without [`ImageSender::finish`], it
/// resets every stream: the destination sees an error, never a short image.
pub struct ImageSender {
    id: MigrationId,
    peer: String,
    pages: Arc<PagesOut>,
    records: Option<BlockingSend>,
    files: Option<BlockingSend>,
    sent: Arc<AtomicU64>,
}

/// The Pages stream, shared by the checkpoint's page writer and the sender.
struct PagesOut {
    tx: Mutex<Option<progress::Counted<BlockingSend>>>,
    peer: String,
}

impl PagesOut {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut progress::Counted<BlockingSend>) -> io::Result<T>,
    ) -> io::Result<T> {
        // Ctrl-C stops a pre-copy that goes at the stream's pace.
        if source::interrupted() {
            return Err(io::Error::other("the migration was cancelled"));
        }
        let mut tx = self
            .tx
            .lock()
            .map_err(|_| io::Error::other("a writer of the page stream panicked"))?;
        match tx.as_mut() {
            Some(tx) => f(tx),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the page stream to {} was closed", self.peer),
            )),
        }
    }
}

impl crate::dump::checkpoint::SinkWrite for PagesOut {
    fn write_all(&self, data: &[u8]) -> io::Result<()> {
        self.with(|tx| tx.write_all(data))
    }

    fn flush(&self) -> io::Result<()> {
        self.with(|tx| tx.flush())
    }
}

impl ImageSender {
    /// Opens the three streams of migration `id`.
    pub fn start(
        rt: &Handle,
        session: &Session,
        id: MigrationId,
        progress: &progress::Progress,
    ) -> Result<ImageSender> {
        let peer = session.peer().name.clone();
        let open = |kind: StreamKind| {
            BlockingSend::open(rt, session, StreamHeader::new(kind, id, 0))
                .map_err(|e| Error::Invalid(format!("opening a data stream to {peer}: {e}")))
        };
        let records = open(StreamKind::Records)?;
        let pages = open(StreamKind::Pages)?;
        let files = open(StreamKind::Files)?;
        let sent = progress.sent.clone();
        Ok(ImageSender {
            id,
            pages: Arc::new(PagesOut {
                tx: Mutex::new(Some(progress::Counted {
                    inner: pages,
                    sent: sent.clone(),
                })),
                peer: peer.clone(),
            }),
            peer,
            records: Some(records),
            files: Some(files),
            sent,
        })
    }

    /// Where the checkpoint writes its page store.
    pub fn page_sink(&self) -> crate::dump::checkpoint::PageSink {
        crate::dump::checkpoint::PageSink {
            name: format!("the page stream to {}", self.peer),
            out: self.pages.clone(),
        }
    }

    /// The checkpoint into `dir` is complete: the page stream ends, the
    /// records and the other files follow; returns what each stream
    /// carried, for `Committed`.
    pub fn finish(mut self, dir: &Path) -> Result<Committed> {
        let pages = self
            .pages
            .tx
            .lock()
            .ok()
            .and_then(|mut tx| tx.take())
            .ok_or_else(|| Error::Invalid("the page stream is gone".into()))?;
        let records = self.records.take();
        let files = self.files.take();
        let peer = self.peer.clone();
        let sent = self.sent.clone();
        let end = |kind: StreamKind, tx: BlockingSend| -> Result<StreamTotal> {
            let bytes = tx.finish().map_err(|e| {
                Error::Invalid(format!("sending the {kind:?} stream to {peer}: {e}"))
            })?;
            Ok(StreamTotal {
                kind,
                index: 0,
                bytes,
            })
        };
        let send = |kind: StreamKind, tx: Option<BlockingSend>| -> Result<StreamTotal> {
            let tx = tx.ok_or_else(|| Error::Invalid(format!("the {kind:?} stream is gone")))?;
            let mut tx = progress::Counted {
                inner: tx,
                sent: sent.clone(),
            };
            match kind {
                StreamKind::Records => copy_file(&cr_formats::layout::records_path(dir), &mut tx)?,
                _ => archive_rest(dir, &mut tx)?,
            }
            end(kind, tx.inner)
        };
        let (records, pages, files) = std::thread::scope(|s| {
            let r = s.spawn(|| send(StreamKind::Records, records));
            let p = s.spawn(|| end(StreamKind::Pages, pages.inner));
            let f = send(StreamKind::Files, files);
            let panicked = |what: &str| Err(Error::Invalid(format!("the {what} sender panicked")));
            (
                r.join().unwrap_or_else(|_| panicked("records")),
                p.join().unwrap_or_else(|_| panicked("pages")),
                f,
            )
        });
        Ok(Committed {
            migration: self.id,
            streams: vec![records?, pages?, files?],
        })
    }
}

impl Drop for ImageSender {
    fn drop(&mut self) {
        // Unfinished, the page stream is dropped now (and so reset) even if
        // a writer thread of a failed checkpoint still holds the sink.
        if let Ok(mut tx) = self.pages.tx.lock() {
            tx.take();
        }
    }
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

/// The Layer stream's declaration (sent beside [`STREAMS`] when the
/// destination lacks the container's image).
pub const LAYER_STREAM: StreamDecl = StreamDecl {
    kind: StreamKind::Layer,
    index: 0,
};

/// Sends image `image` of `store` on the Layer stream of migration `id`
/// (before the checkpoint: the container runs meanwhile).
pub fn send_layer(
    rt: &Handle,
    session: &Session,
    id: MigrationId,
    store: &crate::image::store::ImageStore,
    image: &str,
    progress: &progress::Progress,
) -> Result<StreamTotal> {
    let peer = session.peer().name.clone();
    let tx = BlockingSend::open(rt, session, StreamHeader::new(StreamKind::Layer, id, 0))
        .map_err(|e| Error::Invalid(format!("opening the layer stream to {peer}: {e}")))?;
    let mut tx = progress::Counted {
        inner: tx,
        sent: progress.sent.clone(),
    };
    layer::send(store, image, &mut tx)?;
    let bytes = tx
        .inner
        .finish()
        .map_err(|e| Error::Invalid(format!("sending the layer stream to {peer}: {e}")))?;
    Ok(StreamTotal {
        kind: StreamKind::Layer,
        index: 0,
        bytes,
    })
}

/// Where a received layer goes: image `image` of `store`, if its digest
/// is `digest`.
pub struct LayerTarget {
    pub store: crate::image::store::ImageStore,
    pub image: String,
    pub digest: cr_transport::protocol::LayerDigest,
}

/// Receives the streams `declared` of migration `id` into `dir`, each at
/// most `cap` bytes (a layer at most [`layer::LAYER_CAP`], into `layer`);
/// returns what each carried.
pub fn receive_image(
    rt: &Handle,
    session: &Session,
    id: MigrationId,
    dir: &Path,
    cap: u64,
    declared: &[StreamDecl],
    layer: Option<&LayerTarget>,
) -> Result<Vec<StreamTotal>> {
    let peer = session.peer().name.clone();
    // Each stream is read from the moment it arrives: the source sends the
    // page store while it still pre-copies, before the other two exist.
    let results: Vec<Result<StreamTotal>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut accepted = Ok(());
        for _ in 0..declared.len() {
            match BlockingRecv::accept(rt, session, id) {
                Ok((header, rx)) => {
                    let peer = peer.clone();
                    handles
                        .push(s.spawn(move || receive_stream(header, rx, dir, cap, layer, &peer)));
                }
                Err(e) => {
                    accepted = Err(Error::Invalid(format!(
                        "accepting a data stream from {peer}: {e}"
                    )));
                    break;
                }
            }
        }
        let mut results: Vec<Result<StreamTotal>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a stream receiver panicked".into())))
            })
            .collect();
        if let Err(e) = accepted {
            results.push(Err(e));
        }
        results
    });
    let totals = results.into_iter().collect::<Result<Vec<_>>>()?;
    for decl in declared {
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
    layer: Option<&LayerTarget>,
    peer: &str,
) -> Result<StreamTotal> {
    let mut input = Capped {
        inner: rx,
        read: 0,
        cap: if header.kind == StreamKind::Layer {
            layer::LAYER_CAP
        } else {
            cap
        },
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
        (StreamKind::Layer, 0) => match layer {
            Some(l) => layer::receive(&l.store, &l.image, l.digest, &mut input, peer)?,
            None => {
                return Err(Error::Invalid(format!(
                    "{peer} sent an image layer this host did not ask for"
                )))
            }
        },
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

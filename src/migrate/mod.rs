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
pub mod disk;
pub mod layer;
pub mod progress;
pub mod recovery;
pub mod source;

pub use recovery::{recover, Record, Role};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Whether the data streams are compressed (`cr migrate --compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// zstd frame by frame while it outruns the link and the data shrinks
    /// ([`cr_formats::CompressGate`]).
    #[default]
    Auto,
    /// zstd on every frame (a frame that does not shrink is sent raw).
    Always,
    /// No compression.
    Never,
}

/// How the source writes its data streams: the compression, its gate,
/// and (fault injection for tests) a stream to corrupt on the wire.
#[derive(Clone)]
pub struct WireOptions {
    pub compression: cr_formats::Compression,
    pub gate: Option<Arc<cr_formats::CompressGate>>,
    /// Flip a byte of this stream after its checksums were computed
    /// (`CR_MIGRATE_FAULT=corrupt-pages|corrupt-files|corrupt-disk`).
    pub corrupt: Option<StreamKind>,
}

impl WireOptions {
    pub fn new(compress: Compress) -> WireOptions {
        let corrupt = match std::env::var("CR_MIGRATE_FAULT").as_deref() {
            Ok("corrupt-pages") => Some(StreamKind::Pages),
            Ok("corrupt-files") => Some(StreamKind::Files),
            Ok("corrupt-disk") => Some(StreamKind::DiskClusters),
            _ => None,
        };
        let zstd = cr_formats::Compression::Zstd { level: 1 };
        let (compression, gate) = match compress {
            Compress::Auto => (zstd, Some(cr_formats::CompressGate::new())),
            Compress::Always => (zstd, None),
            Compress::Never => (cr_formats::Compression::None, None),
        };
        WireOptions {
            compression,
            gate,
            corrupt,
        }
    }

    fn wire(&self, kind: StreamKind, inner: BlockingSend, sent: Arc<AtomicU64>) -> Wire {
        Wire {
            inner,
            sent,
            gate: self.gate.clone(),
            // Past the stream header and the first frame header: a byte of
            // the first payload.
            corrupt_at: (self.corrupt == Some(kind)).then_some(32 + 24 + 100),
            written: 0,
        }
    }
}

/// A data stream as the source writes it: counts bytes for the progress
/// bar, times how long the link keeps the writer waiting (for the
/// compression gate), and for fault injection flips one byte.
pub struct Wire {
    inner: BlockingSend,
    sent: Arc<AtomicU64>,
    gate: Option<Arc<cr_formats::CompressGate>>,
    corrupt_at: Option<u64>,
    written: u64,
}

/// What a slow link may still have to carry when the freeze comes
/// ([`BlockingSend::drain`]): at 200 Mbit/s, 40 ms.
pub const FREEZE_BACKLOG: u64 = 1 << 20;

impl Wire {
    /// Ends the stream (see [`BlockingSend::finish`]).
    pub fn finish(self) -> io::Result<u64> {
        self.inner.finish()
    }
}

impl Write for Wire {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let start = std::time::Instant::now();
        let n = match self.corrupt_at {
            Some(at) if at >= self.written && at < self.written + data.len() as u64 => {
                let mut bad = data.to_vec();
                bad[(at - self.written) as usize] ^= 0x5a;
                let n = self.inner.write(&bad)?;
                if at < self.written + n as u64 {
                    eprintln!("cr migrate: CR_MIGRATE_FAULT: flipped the byte at {at} of a stream");
                    self.corrupt_at = None;
                }
                n
            }
            _ => self.inner.write(data)?,
        };
        if let Some(g) = &self.gate {
            g.sent(n, start.elapsed());
        }
        self.written += n as u64;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
    records: Option<Wire>,
    files: Option<Wire>,
    /// A container on a disk: its chain (the read-only part sent already).
    disk: Option<disk::DiskSender>,
    wire: WireOptions,
    /// `--keep-image`: where the image is kept.
    keep: Option<KeptImage>,
}

/// `--keep-image`: a copy of the image being sent, in `partial` until
/// [`KeptImage::complete`] moves it to `kept`; dropped before, it is
/// removed (an incomplete copy is no checkpoint).
pub struct KeptImage {
    kept: PathBuf,
    partial: PathBuf,
    done: bool,
}

impl KeptImage {
    /// Completes the copy once the migration is settled (outside the
    /// frozen window): the page store written beside the stream is synced,
    /// the other files of the checkpoint in `dir` are copied, and the
    /// directory is moved into place. Returns where it is.
    pub fn complete(mut self, dir: &Path) -> Result<PathBuf> {
        let pages = cr_formats::layout::pages_path(&self.partial);
        File::open(&pages)
            .and_then(|f| f.sync_all())
            .ctx("syncing", &pages)?;
        for entry in fs::read_dir(dir).ctx("reading", dir)?.flatten() {
            let from = entry.path();
            let to = self.partial.join(entry.file_name());
            if entry.file_name() == cr_formats::layout::PAGES_FILE {
                continue;
            }
            if from.is_dir() {
                fs::create_dir(&to).ctx("creating", &to)?;
                crate::image::store::copy_tree(&from, &to).map_err(Error::from)?;
            } else {
                fs::copy(&from, &to).ctx("copying", &from)?;
                File::open(&to)
                    .and_then(|f| f.sync_all())
                    .ctx("syncing", &to)?;
            }
        }
        File::open(&self.partial)
            .and_then(|d| d.sync_all())
            .ctx("syncing", &self.partial)?;
        fs::rename(&self.partial, &self.kept)
            .ctx("moving the kept image into place", &self.kept)?;
        self.done = true;
        Ok(self.kept.clone())
    }
}

impl Drop for KeptImage {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// The Pages stream, shared by the checkpoint's page writer and the sender.
struct PagesOut {
    tx: Mutex<Option<Wire>>,
    peer: String,
    /// `--keep-image`: the page store is written here too.
    tee: Mutex<Option<(File, PathBuf)>>,
}

impl PagesOut {
    fn with<T>(&self, f: impl FnOnce(&mut Wire) -> io::Result<T>) -> io::Result<T> {
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
        self.with(|tx| tx.write_all(data))?;
        let mut tee = self
            .tee
            .lock()
            .map_err(|_| io::Error::other("a writer of the kept page store panicked"))?;
        if let Some((file, path)) = tee.as_mut() {
            file.write_all(data)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.with(|tx| tx.flush())
    }

    /// Until at most [`FREEZE_BACKLOG`] is left for the link (Ctrl-C ends
    /// the wait).
    fn drain(&self) -> io::Result<()> {
        self.with(|tx| tx.inner.drain(FREEZE_BACKLOG, &source::interrupted))
    }
}

impl ImageSender {
    /// Opens the three streams of migration `id`, written as `wire` says,
    /// and for a container on a disk (`disk`) the disk stream, on which it
    /// sends the chain's read-only deltas now (the container runs).
    pub fn start(
        rt: &Handle,
        session: &Session,
        id: MigrationId,
        progress: &progress::Progress,
        wire: &WireOptions,
        disk: Option<&crate::container::Container>,
    ) -> Result<ImageSender> {
        let peer = session.peer().name.clone();
        let open = |kind: StreamKind| {
            BlockingSend::open(rt, session, StreamHeader::new(kind, id, 0))
                .map(|tx| wire.wire(kind, tx, progress.sent.clone()))
                .map_err(|e| Error::Invalid(format!("opening a data stream to {peer}: {e}")))
        };
        let records = open(StreamKind::Records)?;
        let pages = open(StreamKind::Pages)?;
        let files = open(StreamKind::Files)?;
        let disk = match disk {
            Some(container) => Some(disk::DiskSender::start(
                container,
                open(StreamKind::DiskClusters)?,
                wire,
                &peer,
            )?),
            None => None,
        };
        Ok(ImageSender {
            disk,
            id,
            pages: Arc::new(PagesOut {
                tx: Mutex::new(Some(pages)),
                peer: peer.clone(),
                tee: Mutex::new(None),
            }),
            keep: None,
            peer,
            records: Some(records),
            files: Some(files),
            wire: wire.clone(),
        })
    }

    /// Keeps a copy of the image in `dir` (a checkpoint directory): the
    /// page store is written there as it is sent, the other files by
    /// [`KeptImage::complete`]; `dir` appears only complete and synced.
    pub fn keep(mut self, dir: &Path) -> Result<ImageSender> {
        if dir.exists() {
            return Err(Error::Invalid(format!("{} exists already", dir.display())));
        }
        let partial = dir.with_extension("partial");
        fs::create_dir_all(&partial).ctx("creating", &partial)?;
        let path = cr_formats::layout::pages_path(&partial);
        let file = File::create(&path).ctx("creating", &path)?;
        if let Ok(mut tee) = self.pages.tee.lock() {
            *tee = Some((file, path));
        }
        self.keep = Some(KeptImage {
            kept: dir.to_path_buf(),
            partial,
            done: false,
        });
        Ok(self)
    }

    /// The kept copy (`--keep-image`), once the checkpoint is done: its
    /// page store is written; the rest is for [`KeptImage::complete`].
    pub fn take_kept(&mut self) -> Option<KeptImage> {
        // The page store's file closes here; complete() syncs it by path.
        if let Ok(mut tee) = self.pages.tee.lock() {
            tee.take();
        }
        self.keep.take()
    }

    /// Where the checkpoint writes its page store (compressed as the
    /// options given to [`ImageSender::start`] say).
    pub fn page_sink(&self) -> crate::dump::checkpoint::PageSink {
        crate::dump::checkpoint::PageSink {
            name: format!("the page stream to {}", self.peer),
            out: self.pages.clone(),
            gate: self.wire.gate.clone(),
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
        let disk = self.disk.take();
        let peer = self.peer.clone();
        let wire = self.wire.clone();
        let end = |kind: StreamKind, tx: Wire| -> Result<StreamTotal> {
            let bytes = tx
                .finish()
                .map_err(|e| Error::stream(format!("sending the {kind:?} stream to {peer}"), e))?;
            Ok(StreamTotal {
                kind,
                index: 0,
                bytes,
            })
        };
        let send = |kind: StreamKind, tx: Option<Wire>| -> Result<StreamTotal> {
            let mut tx =
                tx.ok_or_else(|| Error::Invalid(format!("the {kind:?} stream is gone")))?;
            match kind {
                StreamKind::Records => copy_file(&cr_formats::layout::records_path(dir), &mut tx)?,
                _ => {
                    tx = blob(tx, &wire, &format!("the files stream to {peer}"), |out| {
                        archive_rest(dir, out)
                    })?
                }
            }
            end(kind, tx)
        };
        let (records, pages, files, disk) = std::thread::scope(|s| {
            let r = s.spawn(|| send(StreamKind::Records, records));
            let p = s.spawn(|| end(StreamKind::Pages, pages));
            let d = s.spawn(|| {
                disk.map(|d| d.finish().and_then(|tx| end(StreamKind::DiskClusters, tx)))
            });
            let f = send(StreamKind::Files, files);
            let panicked = |what: &str| Err(Error::Invalid(format!("the {what} sender panicked")));
            (
                r.join().unwrap_or_else(|_| panicked("records")),
                p.join().unwrap_or_else(|_| panicked("pages")),
                f,
                d.join().unwrap_or_else(|_| Some(panicked("disk"))),
            )
        });
        let mut streams = vec![records?, pages?, files?];
        if let Some(disk) = disk {
            streams.push(disk?);
        }
        Ok(Committed {
            migration: self.id,
            streams,
        })
    }
}

/// Writes a blob stream (checksummed frames, compressed as `wire` says)
/// with `fill` onto `tx`; hands `tx` back for its FIN.
fn blob(
    tx: Wire,
    wire: &WireOptions,
    what: &str,
    fill: impl FnOnce(&mut cr_formats::BlobWriter<Wire>) -> Result<()>,
) -> Result<Wire> {
    let framing = |e: cr_formats::FormatError| Error::stream(what, e);
    let mut out =
        cr_formats::BlobWriter::new(tx, wire.compression, wire.gate.clone()).map_err(framing)?;
    fill(&mut out)?;
    let (_, tx) = out.finish().map_err(framing)?;
    Ok(tx)
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
    wire: &WireOptions,
) -> Result<StreamTotal> {
    let peer = session.peer().name.clone();
    let tx = BlockingSend::open(rt, session, StreamHeader::new(StreamKind::Layer, id, 0))
        .map_err(|e| Error::stream(format!("opening the layer stream to {peer}"), e))?;
    let tx = wire.wire(StreamKind::Layer, tx, progress.sent.clone());
    let tx = blob(tx, wire, &format!("the layer stream to {peer}"), |out| {
        layer::send(store, image, out)
    })?;
    let bytes = tx
        .finish()
        .map_err(|e| Error::stream(format!("sending the layer stream to {peer}"), e))?;
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

/// Where the streams of a migration go on the destination.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    /// The staging image directory (records, pages, the files archive).
    pub dir: &'a Path,
    /// Bytes each of those streams may carry.
    pub cap: u64,
    /// Where a layer goes (at most [`layer::LAYER_CAP`]), if one is wanted.
    pub layer: Option<&'a LayerTarget>,
    /// Where a disk chain goes, for a container on a disk.
    pub disk: Option<&'a disk::DiskTarget>,
}

/// Receives the streams `declared` of migration `id` as `targets` say;
/// returns what each carried.
pub fn receive_image(
    rt: &Handle,
    session: &Session,
    id: MigrationId,
    declared: &[StreamDecl],
    targets: Targets<'_>,
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
                    handles.push(s.spawn(move || receive_stream(header, rx, targets, &peer)));
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
    // The cause, not its echo: once one stream fails the source resets the
    // others, and those resets are not worth reporting.
    let (errors, totals): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_err());
    let mut errors: Vec<Error> = errors.into_iter().filter_map(|r| r.err()).collect();
    if !errors.is_empty() {
        let cause = errors.iter().position(|e| !e.is_peer_reset()).unwrap_or(0);
        return Err(errors.swap_remove(cause));
    }
    let totals: Vec<StreamTotal> = totals.into_iter().filter_map(|r| r.ok()).collect();
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
    targets: Targets<'_>,
    peer: &str,
) -> Result<StreamTotal> {
    let Targets {
        dir,
        cap,
        layer,
        disk,
    } = targets;
    let mut input = Capped {
        inner: rx,
        read: 0,
        cap: match (header.kind, disk) {
            (StreamKind::Layer, _) => layer::LAYER_CAP,
            (StreamKind::DiskClusters, Some(d)) => d.cap,
            _ => cap,
        },
    };
    let fail = |what: &str, e: io::Error| {
        Error::stream(
            format!("receiving the {:?} stream from {peer}: {what}", header.kind),
            e,
        )
    };
    let into_file = |path: PathBuf, input: &mut Capped<BlockingRecv>| -> Result<()> {
        let mut f = File::create(&path).ctx("creating", &path)?;
        copy_chunks(input, &mut f).map_err(|e| fail("writing", e))?;
        Ok(())
    };
    match (header.kind, header.index) {
        (StreamKind::Records, 0) => into_file(cr_formats::layout::records_path(dir), &mut input)?,
        (StreamKind::Pages, 0) => receive_pages(&mut input, dir, peer)?,
        (StreamKind::Files, 0) => {
            let mut blob = blob_reader(&mut input, "files", peer)?;
            unpack_rest(&mut blob, dir, peer)?;
            blob_end(blob, "files", peer)?;
        }
        (StreamKind::Layer, 0) => match layer {
            Some(l) => {
                let mut blob = blob_reader(&mut input, "layer", peer)?;
                layer::receive(&l.store, &l.image, l.digest, &mut blob, peer)?;
                blob_end(blob, "layer", peer)?;
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{peer} sent an image layer this host did not ask for"
                )))
            }
        },
        (StreamKind::DiskClusters, 0) => match disk {
            Some(d) => {
                let mut blob = blob_reader(&mut input, "disk", peer)?;
                disk::receive(&mut blob, d, peer)?;
                blob_end(blob, "disk", peer)?;
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{peer} sent a disk for a container without one"
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

/// Writes the page store as it arrives, checked frame by frame on the way
/// (`StreamCheck`: the restore in the frozen window then need not read
/// every payload again); chunks the source compressed are stored raw (the
/// lazy restore serves pages from the mapped file, which only a raw store
/// allows), checked as they are decompressed.
fn receive_pages(input: &mut impl Read, dir: &Path, peer: &str) -> Result<()> {
    let path = cr_formats::layout::pages_path(dir);
    let what = format!("the Pages stream from {peer}");
    let mut head = [0u8; cr_formats::STREAM_HEADER_LEN];
    input
        .read_exact(&mut head)
        .map_err(|e| Error::stream(format!("{what}: its header"), e))?;
    let header = cr_formats::StreamHeader::decode(&head, cr_formats::FORMAT_VERSION)
        .map_err(|e| Error::stream(what.as_str(), e))?;
    let f = File::create(&path).ctx("creating", &path)?;
    if header.codec == cr_formats::Codec::None {
        let mut out = Checked {
            check: cr_formats::StreamCheck::new(cr_formats::StreamKind::Pages),
            out: f,
        };
        out.write_all(&head)
            .map_err(|e| Error::stream(format!("{what}: writing"), e))?;
        copy_chunks(input, &mut out).map_err(|e| Error::stream(format!("{what}: writing"), e))?;
        out.check
            .finish()
            .map_err(|e| Error::stream(what.as_str(), e))?;
    } else {
        let input = io::Cursor::new(head).chain(input);
        cr_formats::decompress_stream(input, io::BufWriter::with_capacity(1 << 20, f))
            .map_err(|e| Error::stream(what.as_str(), e))?;
    }
    Ok(())
}

/// A file written through a [`cr_formats::StreamCheck`]: a byte is written
/// only after the check accepted it.
struct Checked {
    check: cr_formats::StreamCheck,
    out: File,
}

impl Write for Checked {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check
            .feed(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.out.write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn blob_reader<R: Read>(input: R, what: &str, peer: &str) -> Result<cr_formats::BlobReader<R>> {
    cr_formats::BlobReader::new(input)
        .map_err(|e| Error::stream(format!("the {what} stream from {peer}"), e))
}

/// Reads a blob stream to its verified trailer (an archive reader may stop
/// before it).
fn blob_end<R: Read>(mut blob: cr_formats::BlobReader<R>, what: &str, peer: &str) -> Result<()> {
    io::copy(&mut blob, &mut io::sink())
        .map_err(|e| Error::stream(format!("the {what} stream from {peer}"), e))?;
    Ok(())
}

/// Unpacks the tar of the image's other files into `dir`, refusing any
/// entry that would land outside it.
fn unpack_rest(input: &mut impl Read, dir: &Path, peer: &str) -> Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let entries = archive
        .entries()
        .map_err(|e| Error::stream(format!("the files stream from {peer}"), e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::stream(format!("the files stream from {peer}"), e))?;
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
                return Err(Error::stream(
                    format!("the files stream from {peer}: unpacking {}", path.display()),
                    e,
                ))
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

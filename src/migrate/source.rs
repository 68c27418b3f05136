//! `cr migrate NAME PEER`: the source side of a migration (stop-and-copy).
//! See the module documentation of [`crate::migrate`] and
//! `docs/migration-protocol.md` (the source's state machine).
//!
//! The container is frozen from the checkpoint until the destination says
//! it resumed. Every failure before `Resume` was sent thaws it here
//! ([`FrozenContainer`] thaws when dropped); once `Resume` was sent, a lost
//! answer is resolved by asking the destination (`Query`), and when that
//! is impossible the container is left frozen (cgroup freezer, network
//! locked) rather than risk it running on both hosts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cr_transport::protocol::{
    Abort, ImageSizes, LayerQuery, MigrationRef, Offer, OutcomeState, Phase, TransferMode,
};
use cr_transport::{Endpoint, Identity, Message, MigrationId, TrustStore, Tuning};
use serde::Serialize;

use crate::container::Container;
use crate::dump::checkpoint::{checkpoint_frozen, CheckpointOptions, FrozenContainer};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::migrate::{recover, runtime, staging_size, Control, ImageSender, Record, Role, Staging};

/// Set by SIGINT/SIGTERM while a migration runs: it aborts at the next
/// step that can still be undone.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// How `cr migrate` runs.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Pre-copy rounds before the freeze (0: everything while frozen).
    pub pre_copy_rounds: u32,
    /// How long the destination may take to restore.
    pub restore_timeout: Duration,
    /// Compression of the data streams.
    pub compress: crate::migrate::Compress,
    /// `--keep-image`: where to keep a copy of the image sent, as a
    /// checkpoint of the container.
    pub keep_image: Option<std::path::PathBuf>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            pre_copy_rounds: 2,
            restore_timeout: Duration::from_secs(120),
            compress: crate::migrate::Compress::Auto,
            keep_image: None,
        }
    }
}

/// What a finished migration reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    pub container: String,
    pub peer: String,
    pub migration: String,
    /// Every phase in order with its duration.
    pub phases: Vec<(String, f64)>,
    /// From the freeze until the destination said it resumed.
    pub frozen_ms: f64,
    /// From the start until the peer said the container runs there.
    pub total_ms: f64,
    /// Stopping and removing the frozen copy here afterwards.
    pub cleanup_ms: f64,
    /// Bytes sent on the data streams.
    pub bytes: u64,
    /// From the streams' opening (before the pre-copy) until the last
    /// byte was acknowledged: the page store crosses while it is written.
    pub stream_ms: f64,
    /// `bytes` over `stream_ms`.
    pub transfer_bytes_per_s: f64,
    /// The checkpoint taken for it (pre-copy, frozen window, pages).
    pub checkpoint: crate::dump::checkpoint::CheckpointSummary,
    /// `--compress auto`: how many frames the gate compressed and the
    /// speeds it went by.
    pub compression: Option<cr_formats::GateFigures>,
    /// The QUIC connection to the peer, at the end.
    pub link: LinkFigures,
}

/// What the QUIC connection of a migration did (quinn's statistics).
#[derive(Debug, Clone, Serialize)]
pub struct LinkFigures {
    pub udp_datagrams_sent: u64,
    pub udp_bytes_sent: u64,
    pub packets_sent: u64,
    /// Packets declared lost (and their bytes), sent again.
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    pub rtt_ms: f64,
    pub mtu: u16,
}

impl LinkFigures {
    fn of(session: &cr_transport::Session) -> LinkFigures {
        let s = session.connection().stats();
        LinkFigures {
            udp_datagrams_sent: s.udp_tx.datagrams,
            udp_bytes_sent: s.udp_tx.bytes,
            packets_sent: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            congestion_events: s.path.congestion_events,
            rtt_ms: s.path.rtt.as_secs_f64() * 1e3,
            mtu: s.path.current_mtu,
        }
    }
}

struct Phases {
    start: Instant,
    last: Instant,
    list: Vec<(String, f64)>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            list: Vec::new(),
        }
    }

    fn end(&mut self, name: &str) -> f64 {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_secs_f64() * 1e3;
        self.list.push((name.to_string(), ms));
        self.last = now;
        ms
    }
}

/// Whether Ctrl-C or SIGTERM came (the stream copy loops stop on it).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted(what: &str) -> Result<()> {
    if interrupted() {
        return Err(Error::Invalid(format!("cancelled by the user {what}")));
    }
    Ok(())
}

/// The error of a migration that failed before `Resume`: a cancellation
/// says so, in the words `docs/cli.md` promises.
fn before_resume(name: &str, e: Error) -> Error {
    if interrupted() {
        return Error::Invalid(format!("migration of {name} cancelled: it runs here again"));
    }
    // The QUIC idle timeout: the peer stopped answering (down, cut off).
    let text = e.to_string();
    if text.contains("lost: timed out") {
        return Error::Invalid(format!(
            "the peer is unreachable ({text}); migration of {name} given up: it runs here again"
        ));
    }
    e
}

/// Fault injection for tests of the source's failure paths
/// (`docs/migration-protocol.md`, section 7): `CR_MIGRATE_FAULT` in `cr
/// migrate`'s environment makes it die as a `kill -9` would, with no
/// cleanup: `source-transfer` once the checkpoint is done (frozen, locked, the
/// page store sent, not the records), `source-after-resume` right after `Resume` went out (before the
/// answer is read).
fn source_fault(which: &str) -> bool {
    std::env::var("CR_MIGRATE_FAULT").is_ok_and(|f| f == which)
}

fn die(which: &str) -> ! {
    eprintln!("cr migrate: CR_MIGRATE_FAULT={which}: exiting without cleanup");
    // SAFETY: _exit ends the process at once (no destructors, no atexit),
    // as a kill would; nothing is left half-written by it.
    unsafe { libc::_exit(70) }
}

/// Migrates container `name` to the trusted peer `peer`.
pub fn migrate(
    host: &Host,
    name: &str,
    peer: &str,
    opts: &MigrateOptions,
) -> Result<MigrationReport> {
    for line in recover(host) {
        eprintln!("cr migrate: {line}");
    }
    let container = Container::open(host, name)?;
    container.require_running("migrate")?;
    let identity = Identity::load_or_create(host.root())
        .map_err(|e| Error::Invalid(format!("this host's identity: {e}")))?;
    let trust = TrustStore::load(host.root()).map_err(|e| Error::Invalid(e.to_string()))?;
    trust
        .get(peer)
        .map_err(|e| Error::Invalid(format!("{e} (add it with `cr peer add`)")))?;
    let rt = runtime()?;
    let endpoint = {
        let _guard = rt.enter();
        Endpoint::client(
            std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            &identity,
            trust,
            Tuning {
                // A peer silent this long is gone: the container thaws here.
                idle_timeout: Duration::from_secs(10),
                ..Tuning::default()
            },
        )
        .map_err(|e| Error::Invalid(format!("opening a QUIC endpoint: {e}")))?
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal
    // safe.
    unsafe {
        let handler = nix::sys::signal::SigHandler::Handler(on_signal);
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, handler);
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, handler);
    }
    let mut phases = Phases::new();
    let progress = crate::migrate::progress::Progress::new(name, peer);
    progress.phase("connecting");
    let (session, control) = rt
        .block_on(endpoint.connect(peer))
        .map_err(|e| Error::Invalid(format!("connecting to {peer}: {e}")))?;
    let mut control = Control::new(rt.handle(), control);
    phases.end("connect");

    let id = MigrationId::random()
        .map_err(|_| Error::Invalid("no random bytes for a migration id".into()))?;
    let config = std::fs::read(container.dir.join("config.toml"))
        .map_err(|e| Error::io("reading", container.dir.join("config.toml"), e))?;
    let sizes = ImageSizes {
        memory: memory_of(&container)?,
        disk: if container.config.disk.is_some() {
            crate::migrate::disk::size_of(&container)
        } else {
            0
        },
        files: crate::dump::checkpoint::dir_size(&container.dir.join("upper")),
    };
    let images = crate::image::store::ImageStore::new(host.images_dir());
    let digest = crate::migrate::layer::digest(&images, &container.config.image)?;
    control.send(&Message::Offer(Offer {
        migration: id,
        container: name.to_string(),
        config,
        sizes,
        layer: Some(digest),
        mode: if opts.pre_copy_rounds > 0 {
            TransferMode::PreCopy
        } else {
            TransferMode::StopAndCopy
        },
    }))?;
    match control.recv(Duration::from_secs(30), "Accept")? {
        Message::Accept(r) if r.migration == id => {}
        Message::Failed(f) => {
            return Err(Error::Invalid(format!(
                "{peer} refused {name}: {}",
                f.reason
            )))
        }
        other => return Err(unexpected(peer, "Accept", &other)),
    }
    // Does the peer have the image? If not, it goes first, while the
    // container runs.
    control.send(&Message::LayerQuery(LayerQuery {
        migration: id,
        digest,
    }))?;
    let send_layer = match control.recv(Duration::from_secs(30), "LayerHave")? {
        Message::LayerHave(h) if h.migration == id && h.digest == digest => !h.have,
        other => return Err(unexpected(peer, "LayerHave", &other)),
    };
    phases.end("offer");
    if let Err(e) = check_interrupted("before the checkpoint") {
        let _ = control.send(&Message::Abort(Abort {
            migration: id,
            reason: e.to_string(),
        }));
        return Err(before_resume(name, e));
    }
    progress.phase(if opts.pre_copy_rounds > 0 {
        "pre-copy, freeze, checkpoint"
    } else {
        "freeze, checkpoint"
    });

    // Dropped before the end (the migration failed), it undoes the disk's
    // snapshots; declared before `frozen`, it drops after the thaw.
    let disk_undo = match crate::migrate::disk::DiskUndo::new(&container) {
        Ok(undo) => undo,
        Err(e) => {
            let _ = control.send(&Message::Abort(Abort {
                migration: id,
                reason: format!("reading the disk chain failed: {e}"),
            }));
            return Err(before_resume(name, e));
        }
    };
    let mut record = Record::new(name, Role::Source, Some(peer));
    // A recovery after this process died folds the snapshots too.
    record.disk_base = disk_undo.base().map(str::to_string);
    record.write(host, &id)?;
    let abort = |control: &mut Control, reason: String| {
        let _ = control.send(&Message::Abort(Abort {
            migration: id,
            reason: reason.clone(),
        }));
    };
    let staging = match Staging::create(host, &id, staging_size(sizes.memory, sizes.files)) {
        Ok(s) => s,
        Err(e) => {
            abort(&mut control, format!("staging failed: {e}"));
            Record::remove(host, &id);
            return Err(before_resume(name, e));
        }
    };
    // The streams open now: the page store crosses while the checkpoint
    // writes it, pre-copy rounds while the container still runs.
    let streams_at = Instant::now();
    let mut streams = crate::migrate::STREAMS.to_vec();
    if container.config.disk.is_some() {
        streams.push(crate::migrate::disk::DISK_STREAM);
    }
    if send_layer {
        streams.push(crate::migrate::LAYER_STREAM);
    }
    let mut layer_total = None;
    let wire = crate::migrate::WireOptions::new(opts.compress);
    let sender = control
        .send(&Message::StreamsOpen(cr_transport::protocol::StreamsOpen {
            migration: id,
            streams,
        }))
        .and_then(|()| {
            if send_layer {
                progress.phase(&format!("image {} to {peer}", container.config.image));
                layer_total = Some(crate::migrate::send_layer(
                    rt.handle(),
                    &session,
                    id,
                    &images,
                    &container.config.image,
                    &progress,
                    &wire,
                )?);
                phases.end("image layer");
            }
            let disk = container.config.disk.is_some().then_some(&container);
            ImageSender::start(rt.handle(), &session, id, &progress, &wire, disk).and_then(
                |sender| match &opts.keep_image {
                    Some(dir) => sender.keep(dir),
                    None => Ok(sender),
                },
            )
        });
    let mut sender = match sender {
        Ok(s) => s,
        Err(e) => {
            let e = peer_reason(&mut control, peer, e);
            abort(&mut control, e.to_string());
            Record::remove(host, &id);
            return Err(e);
        }
    };
    progress.transfer(
        sizes
            .memory
            .saturating_add(sizes.files)
            .saturating_add(sizes.disk),
    );
    let ckpt = CheckpointOptions {
        image_dir: staging.image_dir(),
        leave_running: false,
        keep_frozen: true,
        compression: wire.compression,
        pre_copy_rounds: opts.pre_copy_rounds,
        page_sink: Some(sender.page_sink()),
    };
    let ticking = AtomicBool::new(true);
    let mut kept = None;
    let (checkpointed, sent) = std::thread::scope(|s| {
        s.spawn(|| {
            while ticking.load(Ordering::Relaxed) {
                progress.tick();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let done = (|| {
            // An Abort goes out before the streams are reset (when `sender`
            // is dropped), so the destination logs why.
            let (checkpointed, frozen) = match checkpoint_frozen(&container, &ckpt) {
                Ok(done) => done,
                Err(e) => {
                    // The peer stopped a stream: the others go now, so that it
                    // stops waiting for them and says why.
                    let e = if e.is_peer_reset() {
                        drop(sender);
                        peer_reason(&mut control, peer, e)
                    } else {
                        e
                    };
                    let e = before_resume(name, e);
                    abort(&mut control, format!("checkpoint failed: {e}"));
                    return Err(e);
                }
            };
            phases.end("checkpoint");
            if source_fault("source-transfer") {
                // Frozen, network locked, connections in repair mode, the
                // page store sent but not the records.
                die("source-transfer");
            }
            // Until Resume is sent every error thaws the container
            // (dropping `frozen` thaws it).
            let committed = match check_interrupted("during the transfer") {
                Err(e) => {
                    let e = before_resume(name, e);
                    abort(&mut control, e.to_string());
                    drop(sender);
                    Err(e)
                }
                Ok(()) => {
                    // Completed once the container runs on the peer, not
                    // in the frozen window.
                    kept = sender.take_kept();
                    sender
                        .finish(&staging.image_dir())
                        .and_then(|mut committed| {
                            committed.streams.extend(layer_total);
                            let bytes: u64 = committed.streams.iter().map(|s| s.bytes).sum();
                            control.send(&Message::Committed(committed))?;
                            Ok(bytes)
                        })
                }
            };
            Ok((checkpointed, frozen, committed))
        })();
        ticking.store(false, Ordering::Relaxed);
        done
    })
    .map(|(checkpointed, frozen, committed)| (checkpointed, (frozen, committed)))
    .inspect_err(|_| Record::remove(host, &id))?;
    let (frozen, sent) = sent;
    let bytes = match sent {
        Ok(bytes) => bytes,
        Err(e) => {
            let e = peer_reason(&mut control, peer, e);
            abort(&mut control, e.to_string());
            frozen.thaw()?;
            Record::remove(host, &id);
            return Err(before_resume(name, e));
        }
    };
    let stream_ms = streams_at.elapsed().as_secs_f64() * 1e3;
    phases.end("transfer");
    progress.after_transfer(&format!("restore on {peer}"));
    let restored = (|| -> Result<()> {
        match control.recv(opts.restore_timeout, "Restored")? {
            Message::Restored(r) if r.migration == id => Ok(()),
            Message::Failed(f) => Err(Error::Invalid(format!(
                "{peer} could not restore {name} ({:?}): {}",
                f.phase, f.reason
            ))),
            other => Err(unexpected(peer, "Restored", &other)),
        }?;
        check_interrupted("before the resume; the container runs here again")
    })();
    if let Err(e) = restored {
        abort(&mut control, e.to_string());
        frozen.thaw()?;
        Record::remove(host, &id);
        return Err(before_resume(name, e));
    }
    record.decided = true;
    record.write(host, &id)?;
    phases.end("remote restore");

    // The point of no return: from here the destination may run it.
    progress.phase(&format!("resume on {peer}"));
    let resumed = control
        .send(&Message::Resume(MigrationRef { migration: id }))
        .inspect(|()| {
            if source_fault("source-after-resume") {
                // Let Resume leave this host before dying.
                std::thread::sleep(Duration::from_millis(300));
                die("source-after-resume");
            }
        })
        .and_then(
            |()| match control.recv(Duration::from_secs(30), "Resumed")? {
                Message::Resumed(r) if r.migration == id => Ok(true),
                Message::Failed(f) if f.phase == Phase::Resume => Ok(false),
                other => Err(unexpected(peer, "Resumed", &other)),
            },
        );
    let resumed = match resumed {
        Ok(r) => r,
        Err(e) => match query(&rt, &endpoint, peer, id) {
            Some(OutcomeState::Resumed) => true,
            Some(OutcomeState::Failed) | Some(OutcomeState::Unknown) => false,
            Some(OutcomeState::InProgress) | None => {
                disk_undo.keep();
                frozen.hold()?;
                return Err(Error::Invalid(format!(
                    "{name} may be running on {peer} now: the answer to Resume was lost ({e}) \
                     and {peer} cannot be asked; {name} stays frozen here (network locked). \
                     Check on {peer} with `cr status {name}`; if it runs there, \
                     `cr destroy {name}` here, else `cr thaw {name}` here"
                )));
            }
        },
    };
    if !resumed {
        frozen.thaw()?;
        Record::remove(host, &id);
        return Err(Error::Invalid(format!(
            "{peer} could not resume {name}; it runs here again"
        )));
    }
    let frozen_ms = frozen.frozen_for().as_secs_f64() * 1e3;
    phases.end("resume");
    // The migration is done when the container runs on the peer; removing
    // the frozen copy here is reported apart.
    let total_ms = phases.start.elapsed().as_secs_f64() * 1e3;
    progress.phase("removing the copy here");
    disk_undo.keep();
    finish_here(&container, frozen)?;
    Record::remove(host, &id);
    let _ = control.send(&Message::Confirm(MigrationRef { migration: id }));
    let cleanup_ms = phases.end("destroy here");
    if interrupted() {
        eprintln!(
            "cr migrate: the cancellation came too late: {name} was already resuming on {peer}, and runs there now"
        );
    }
    if let Some(kept) = kept {
        match kept.complete(&staging.image_dir()) {
            Ok(dir) => eprintln!("cr migrate: the image sent is kept in {}", dir.display()),
            Err(e) => eprintln!("cr migrate: {name} runs on {peer}; keeping its image failed: {e}"),
        }
    }
    drop(staging);
    let link = LinkFigures::of(&session);
    session.close(0, "done");
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });
    Ok(MigrationReport {
        container: name.to_string(),
        peer: peer.to_string(),
        migration: id.to_string(),
        frozen_ms,
        total_ms,
        cleanup_ms,
        bytes,
        stream_ms,
        transfer_bytes_per_s: bytes as f64 / (stream_ms / 1e3).max(1e-9),
        phases: phases.list,
        checkpoint: checkpointed,
        compression: wire.gate.as_ref().map(|g| g.figures()),
        link,
    })
}

/// The container runs on the peer: its frozen copy here is stopped and
/// removed (its checkpoints, if any, stay).
fn finish_here(container: &Container, frozen: FrozenContainer) -> Result<()> {
    frozen.stop(container)?;
    crate::container::destroy::destroy(container, Duration::ZERO)
}

/// Asks the destination, on a new connection, what became of `id`.
fn query(
    rt: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    peer: &str,
    id: MigrationId,
) -> Option<OutcomeState> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((_session, control)) = rt.block_on(endpoint.connect(peer)) {
            let mut control = Control::new(rt.handle(), control);
            if control
                .send(&Message::Query(MigrationRef { migration: id }))
                .is_ok()
            {
                if let Ok(Message::Outcome(o)) = control.recv(Duration::from_secs(5), "Outcome") {
                    if o.migration == id {
                        return Some(o.state);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// A data stream failed because the peer stopped reading it: the peer
/// says why in a `Failed` on the control stream, which is the error to
/// report (a corrupt frame, a stream too large, a disk that does not
/// check).
fn peer_reason(control: &mut Control, peer: &str, e: Error) -> Error {
    if !e.is_peer_reset() {
        return e;
    }
    match control.recv(Duration::from_secs(2), "Failed") {
        Ok(Message::Failed(f)) => Error::Invalid(format!(
            "{peer} failed the migration ({:?}): {}",
            f.phase, f.reason
        )),
        _ => e,
    }
}

fn unexpected(peer: &str, expected: &str, got: &Message) -> Error {
    match got {
        Message::Failed(f) => Error::Invalid(format!(
            "{peer} failed the migration ({:?}): {}",
            f.phase, f.reason
        )),
        other => Error::Invalid(format!(
            "{peer} sent {} where {expected} was expected",
            other.name()
        )),
    }
}

/// Resident memory of the container's processes (an estimate of its
/// image), in bytes.
fn memory_of(container: &Container) -> Result<u64> {
    let mut total = 0u64;
    for pid in container.cgroup()?.pids()? {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            total += kb * 1024;
        }
    }
    Ok(total)
}

//! The destination side of a migration, run by `cr serve` for each
//! session (see [`crate::migrate`] and `docs/migration-protocol.md`, the
//! destination's state machine).
//!
//! Nothing of the stream is trusted: the offered configuration is parsed
//! and checked here (name, image present, address free), every stream is
//! capped and lands in a tmpfs staging directory of the migration's own,
//! the files archive may not leave it, and the image is read by the same
//! verifying decoders as `cr restore`. The container is restored frozen and
//! thawed only on the source's `Resume`; any failure before that removes
//! everything that was built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cr_transport::protocol::{Failed, LayerHave, MigrationRef, Outcome, OutcomeState, Phase};
use cr_transport::{ControlStream, Message, MigrationId, Session};
use tokio::runtime::Handle;

use crate::container::config::ContainerConfig;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::host::{validate_name, Host};
use crate::image::store::ImageStore;
use crate::migrate::{
    receive_image, staging_size, Control, LayerTarget, Record, Role, Staging, LAYER_STREAM, STREAMS,
};
use crate::restore::{PagesMode, RestoreOptions};

/// What this agent knows of the migrations it took part in (for `Query`).
pub type Outcomes = Arc<Mutex<HashMap<MigrationId, OutcomeState>>>;

/// Fault injection for tests of the failure paths
/// (`docs/migration-protocol.md`, section 7): `CR_MIGRATE_FAULT=PHASE` in
/// `cr serve`'s environment makes that phase of every migration fail here
/// as a real error there would: `transfer` (the streams arrived but are
/// refused), `restore` (the restore fails), `resume` (the thaw fails),
/// `crash` (the agent dies right after the restore, before `Resume`) or
/// `crash-after-resume` (it dies once the container runs, before it said
/// `Resumed`).
fn fault(phase: &str) -> Result<()> {
    match std::env::var("CR_MIGRATE_FAULT") {
        Ok(p) if p == phase && phase.starts_with("crash") => {
            eprintln!("cr serve: CR_MIGRATE_FAULT={phase}: exiting");
            std::process::exit(70)
        }
        Ok(p) if p == phase => Err(Error::Invalid(format!(
            "fault injected in the {phase} phase (CR_MIGRATE_FAULT)"
        ))),
        _ => Ok(()),
    }
}

fn set(host: &Host, outcomes: &Outcomes, id: MigrationId, state: OutcomeState) {
    if let Ok(mut o) = outcomes.lock() {
        o.insert(id, state);
    }
    if matches!(state, OutcomeState::Resumed | OutcomeState::Failed) {
        if let Err(e) = store_outcome(host, id, state) {
            eprintln!("migration {id}: keeping its outcome on disk: {e}");
        }
    }
}

/// How long a settled outcome is kept on disk for a source that asks.
const OUTCOME_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

fn outcome_path(host: &Host, id: MigrationId) -> std::path::PathBuf {
    host.root()
        .join("migrations")
        .join("outcomes")
        .join(id.to_string())
}

/// A settled outcome survives the agent (a restarted `cr serve` must not
/// answer "unknown" for a container it resumed: the source would thaw its
/// copy). Older ones are pruned on the way.
fn store_outcome(host: &Host, id: MigrationId, state: OutcomeState) -> Result<()> {
    let path = outcome_path(host, id);
    let dir = path.parent().unwrap_or(host.root());
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let text = match state {
        OutcomeState::Resumed => "resumed",
        _ => "failed",
    };
    crate::container::config::write_atomic(&path, text.as_bytes())?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > OUTCOME_KEPT);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// What this host remembers of migration `id`: the agent's table, else
/// what an earlier agent kept on disk.
fn outcome_of(host: &Host, outcomes: &Outcomes, id: MigrationId) -> OutcomeState {
    if let Some(state) = outcomes.lock().ok().and_then(|o| o.get(&id).copied()) {
        return state;
    }
    stored_outcome(host, id).unwrap_or(OutcomeState::Unknown)
}

/// The settled outcome of migration `id` kept on disk, if any.
pub fn stored_outcome(host: &Host, id: MigrationId) -> Option<OutcomeState> {
    match std::fs::read_to_string(outcome_path(host, id)).as_deref() {
        Ok("resumed") => Some(OutcomeState::Resumed),
        Ok("failed") => Some(OutcomeState::Failed),
        _ => None,
    }
}

/// Serves one session: a migration (Offer ...) or a `Query`.
pub fn serve_session(
    host: &Host,
    rt: &Handle,
    session: Session,
    control: ControlStream,
    outcomes: &Outcomes,
) -> Result<()> {
    let served = serve(host, rt, &session, control, outcomes);
    if served.is_err() {
        // The Failed just sent must reach the source before the connection
        // goes (dropping it would discard what is not acknowledged yet):
        // the source closes it once it has read it.
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.closed()).await;
        });
    }
    served
}

fn serve(
    host: &Host,
    rt: &Handle,
    session: &Session,
    control: ControlStream,
    outcomes: &Outcomes,
) -> Result<()> {
    let peer = session.peer().name.clone();
    let mut control = Control::new(rt, control);
    let first = control.recv(Duration::from_secs(30), "Offer or Query")?;
    let offer = match first {
        Message::Query(q) => {
            let state = outcome_of(host, outcomes, q.migration);
            control.send(&Message::Outcome(Outcome {
                migration: q.migration,
                state,
            }))?;
            // Closing now could drop the answer unsent: the asker closes
            // the session once it has read it.
            let _ = control.recv(Duration::from_secs(5), "the end of the session");
            return Ok(());
        }
        Message::Offer(offer) => offer,
        other => {
            return Err(Error::Invalid(format!(
                "{peer} sent {} before an Offer",
                other.name()
            )))
        }
    };
    let id = offer.migration;
    let started = Instant::now();
    eprintln!(
        "migration {id}: {peer} offers container {}",
        offer.container
    );
    let fail = |control: &mut Control, phase: Phase, e: Error| -> Error {
        let _ = control.send(&Message::Failed(Failed {
            migration: id,
            phase,
            reason: e.to_string(),
        }));
        set(host, outcomes, id, OutcomeState::Failed);
        eprintln!("migration {id}: failed in {phase:?}: {e}");
        e
    };
    let (config, layer) = match check_offer(host, &offer) {
        Ok(c) => c,
        Err(e) => return Err(fail(&mut control, Phase::Offer, e)),
    };
    set(host, outcomes, id, OutcomeState::InProgress);
    control.send(&Message::Accept(MigrationRef { migration: id }))?;

    // The source asks for the layer, then opens the streams (the layer's
    // too when this host lacks the image).
    let mut declared = STREAMS.to_vec();
    if config.disk.is_some() {
        declared.push(crate::migrate::disk::DISK_STREAM);
    }
    if layer.is_some() {
        declared.push(LAYER_STREAM);
    }
    let mut next = control.recv(Duration::from_secs(60), "LayerQuery or StreamsOpen");
    if let Ok(Message::LayerQuery(q)) = &next {
        let have = q.migration == id && layer.is_none() && Some(q.digest) == offer.layer;
        let answer = Message::LayerHave(LayerHave {
            migration: id,
            digest: q.digest,
            have,
        });
        if let Err(e) = control.send(&answer) {
            return Err(fail(&mut control, Phase::Offer, e));
        }
        next = control.recv(Duration::from_secs(60), "StreamsOpen");
    }
    match next {
        Ok(Message::StreamsOpen(o)) if o.migration == id && o.streams == declared => {}
        Ok(Message::Abort(a)) => {
            set(host, outcomes, id, OutcomeState::Failed);
            return Err(Error::Invalid(format!("{peer} aborted: {}", a.reason)));
        }
        Ok(other) => {
            let e = Error::Invalid(format!("{peer} sent {} for StreamsOpen", other.name()));
            return Err(fail(&mut control, Phase::Transfer, e));
        }
        Err(e) => return Err(fail(&mut control, Phase::Transfer, e)),
    }
    let size = staging_size(memory_bound(&config, offer.sizes.memory), offer.sizes.files);
    let staging = match Staging::create(host, &id, size) {
        Ok(s) => s,
        Err(e) => return Err(fail(&mut control, Phase::Transfer, e)),
    };
    if let Err(e) = std::fs::create_dir(staging.image_dir()) {
        let e = Error::io("creating", staging.image_dir(), e);
        return Err(fail(&mut control, Phase::Transfer, e));
    }
    // A disk goes straight to its place in the container's directory
    // (not to the tmpfs); until the restore owns that directory, a failure
    // removes it, and a record lets the next agent remove it if this one
    // dies first.
    let mut record = Record::new(&config.name, Role::Destination, None);
    if let Err(e) = record.write(host, &id) {
        return Err(fail(&mut control, Phase::Transfer, e));
    }
    let container_dir = host.container_dir(&config.name);
    let mut partial = PartialDisk {
        dir: config.disk.is_some().then(|| container_dir.clone()),
    };
    let disk_target = config.disk.map(|d| crate::migrate::disk::DiskTarget {
        chain: crate::storage::DiskPaths::new(&container_dir).chain,
        max_virtual: d.size,
        cap: disk_cap(offer.sizes.disk, d.size),
    });
    let image_dir = staging.image_dir();
    let targets = crate::migrate::Targets {
        dir: &image_dir,
        cap: size,
        layer: layer.as_ref(),
        disk: disk_target.as_ref(),
    };
    let received = receive_image(rt, session, id, &declared, targets).and_then(|totals| {
        match control.recv(Duration::from_secs(60), "Committed")? {
            Message::Committed(c) if c.migration == id => {
                for t in &c.streams {
                    if !totals.contains(t) {
                        return Err(Error::Invalid(format!(
                            "{peer} says its {:?} stream carried {} bytes, {} arrived",
                            t.kind,
                            t.bytes,
                            totals
                                .iter()
                                .find(|x| x.kind == t.kind && x.index == t.index)
                                .map_or(0, |x| x.bytes)
                        )));
                    }
                }
                Ok(totals.iter().map(|t| t.bytes).sum::<u64>())
            }
            Message::Abort(a) => Err(Error::Invalid(format!("{peer} aborted: {}", a.reason))),
            other => Err(Error::Invalid(format!(
                "{peer} sent {} for Committed",
                other.name()
            ))),
        }
    });
    let received = received.and_then(|b| fault("transfer").map(|()| b));
    let bytes = match received {
        Ok(b) => b,
        Err(e) => {
            // A source that gives up sends Abort, then resets its streams;
            // the resets may arrive first: its reason is the one to log.
            let e = match control.recv(Duration::from_millis(500), "Abort") {
                Ok(Message::Abort(a)) => Error::Invalid(format!("{peer} aborted: {}", a.reason)),
                _ => e,
            };
            drop(partial);
            Record::remove(host, &id);
            return Err(fail(&mut control, Phase::Transfer, e));
        }
    };
    let transferred = started.elapsed();
    let how = RestoreOptions {
        pages: PagesMode::Lazy,
        frozen: true,
        // Checked as it arrived; it goes once the container runs.
        staged: true,
    };
    let name = config.name.clone();
    let restored = fault("restore").and_then(|()| {
        crate::restore::container::restore(host, &name, Some(&staging.image_dir()), how)
    });
    if let Err(e) = restored {
        drop(partial);
        Record::remove(host, &id);
        return Err(fail(&mut control, Phase::Restore, e));
    }
    // The restored container owns its directory now (destroy removes it).
    partial.dir = None;
    fault("crash")?;
    let container = Container::open(host, &name)?;
    // Nothing runs here before the source says so.
    let go = control
        .send(&Message::Restored(MigrationRef { migration: id }))
        .and_then(|()| control.recv(Duration::from_secs(60), "Resume"));
    let restored = started.elapsed();
    match go {
        Ok(Message::Resume(r)) if r.migration == id => {}
        other => {
            let why = match other {
                Ok(Message::Abort(a)) => format!("{peer} aborted: {}", a.reason),
                Ok(m) => format!("{peer} sent {} for Resume", m.name()),
                Err(e) => e.to_string(),
            };
            let _ = crate::container::destroy::destroy(&container, Duration::ZERO);
            Record::remove(host, &id);
            set(host, outcomes, id, OutcomeState::Failed);
            eprintln!("migration {id}: no Resume ({why}); {name} removed");
            return Err(Error::Invalid(why));
        }
    }
    if let Err(e) = fault("resume").and_then(|()| crate::container::freeze::thaw(&container)) {
        let _ = crate::container::destroy::destroy(&container, Duration::ZERO);
        Record::remove(host, &id);
        return Err(fail(&mut control, Phase::Resume, e));
    }
    // The outcome first: recovery keeps a container whose outcome on disk
    // says it resumed, even if the record could not say so any more.
    set(host, outcomes, id, OutcomeState::Resumed);
    record.decided = true;
    let _ = record.write(host, &id);
    fault("crash-after-resume")?;
    if let Some(net) = &config.network {
        if let Err(e) = crate::container::network::announce(&container, net) {
            eprintln!("migration {id}: announcing {}: {e}", net.address.addr);
        }
    }
    let _ = control.send(&Message::Resumed(MigrationRef { migration: id }));
    eprintln!(
        "migration {id}: {name} from {peer} runs here: {bytes} bytes received in {:.0} ms, \
         restored at {:.0} ms, resumed at {:.0} ms",
        transferred.as_secs_f64() * 1e3,
        restored.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    // Confirm is a courtesy: the container runs here either way.
    let _ = control.recv(Duration::from_secs(30), "Confirm");
    drop(staging);
    Record::remove(host, &id);
    Ok(())
}

/// The memory a container's image may take: what the source announced
/// (its processes' resident sets), but never more than the config's limit
/// (resident sets count shared pages once per process).
fn memory_bound(config: &ContainerConfig, announced: u64) -> u64 {
    config
        .limits
        .memory
        .map_or(announced, |limit| announced.min(limit))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A disk chain received for a container not restored yet: removed when
/// dropped (see [`crate::migrate::disk::remove_partial`]).
struct PartialDisk {
    dir: Option<std::path::PathBuf>,
}

impl Drop for PartialDisk {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            crate::migrate::disk::remove_partial(dir);
        }
    }
}

/// Bytes a disk stream may carry: what the source announced, plus what the
/// container may write meanwhile (the two snapshots of a migration each
/// start a delta, each at most the disk's size), plus headers.
fn disk_cap(announced: u64, size: u64) -> u64 {
    announced
        .saturating_add(size.saturating_mul(2))
        .saturating_add(64 << 20)
}

/// The offered container, checked against this host before anything is
/// accepted.
/// Returns the container's config, and where its image layer goes when
/// this host lacks it.
fn check_offer(
    host: &Host,
    offer: &cr_transport::protocol::Offer,
) -> Result<(ContainerConfig, Option<LayerTarget>)> {
    validate_name("container", &offer.container)?;
    if offer.mode == cr_transport::protocol::TransferMode::PostCopy {
        return Err(Error::Invalid(
            "post-copy migration is not implemented on this host".into(),
        ));
    }
    let text = std::str::from_utf8(&offer.config)
        .map_err(|_| Error::Invalid("the offered config is not UTF-8".into()))?;
    let config: ContainerConfig = toml::from_str(text)
        .map_err(|e| Error::Invalid(format!("the offered config does not parse: {e}")))?;
    if config.name != offer.container {
        return Err(Error::Invalid(format!(
            "the offered config names container {:?}, the offer {:?}",
            config.name, offer.container
        )));
    }
    if host.container_dir(&config.name).exists() {
        return Err(Error::Invalid(format!(
            "a container named {:?} exists on this host already",
            config.name
        )));
    }
    let store = ImageStore::new(host.images_dir());
    let layer = match (store.exists(&config.image), offer.layer) {
        (true, Some(theirs)) => {
            let ours = crate::migrate::layer::digest(&store, &config.image)?;
            if ours != theirs {
                return Err(Error::Invalid(format!(
                    "image {:?} on this host is {ours}, the container's is {theirs}: a different image under the same name",
                    config.image
                )));
            }
            None
        }
        (true, None) => None,
        (false, Some(digest)) => Some(LayerTarget {
            store,
            image: config.image.clone(),
            digest,
        }),
        (false, None) => {
            return Err(Error::Invalid(format!(
                "image {:?} is not on this host and the peer did not offer it",
                config.image
            )))
        }
    };
    if let Some(net) = &config.network {
        crate::container::create::check_address_free(host, net.address)?;
    }
    // The image is staged in memory (tmpfs) before it is restored: there
    // must be room for it.
    let need = memory_bound(&config, offer.sizes.memory)
        .saturating_add(offer.sizes.files)
        .saturating_add(64 << 20);
    if let Some(available) = mem_available() {
        if need > available {
            return Err(Error::Invalid(format!(
                "not enough memory on this host to receive {:?}: {need} bytes needed, {available} available",
                config.name
            )));
        }
    }
    if config.disk.is_some() {
        // The chain goes to this host's disk: there must be room for it.
        let need = offer.sizes.disk.saturating_add(64 << 20);
        let root = host.root();
        let stat = nix::sys::statvfs::statvfs(root)
            .map_err(|e| Error::sys(format!("statvfs of {}", root.display()), e))?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        if free < need {
            return Err(Error::Invalid(format!(
                "no room for the disk of {:?}: {need} bytes needed, {free} free under {}",
                config.name,
                root.display()
            )));
        }
    }
    Ok((config, layer))
}

//! What a killed migration leaves behind, and how this host settles it.
//!
//! Each side of a migration keeps a [`Record`] at `ROOT/migrations/ID.json`
//! while it runs; the record says which side it is, which process runs it
//! and how far it got. [`recover`] looks at the records whose process is
//! gone and finishes them; it runs at the start of `cr migrate` and `cr
//! serve`, and every second in a running `cr serve` (so a provider's host
//! settles a killed `cr migrate` by itself).
//!
//! ```text
//!  record (owner dead)              container here      recovery
//!  Source, before Resume            frozen, netns       TCP repair off, unlock,
//!                                   locked, TCP in      thaw: it runs here again;
//!                                   repair mode         the disk's snapshots folded
//!                                                       back (`disk_base`)
//!  Source, Resume sent (in doubt)   frozen, locked      Query the peer (new session):
//!                                                         Resumed        -> destroy here
//!                                                         Failed/Unknown -> thaw here
//!                                                         InProgress or
//!                                                         unreachable    -> stay frozen,
//!                                                                           ask again later
//!  Destination, before resume       restored, frozen    destroy it
//!  Destination, resumed             runs                keep it
//!  either                           staging tmpfs       unmount, remove
//! ```
//!
//! A record is live while its process runs (same pid, same start time):
//! recovery never touches the migrations in progress of another process or
//! of the agent itself. Two recoveries at once (a `cr migrate` starting
//! while the agent's pass runs) take turns on a record through an `flock`
//! of its file.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cr_transport::protocol::{MigrationRef, OutcomeState};
use cr_transport::{Endpoint, Identity, Message, MigrationId, TrustStore, Tuning};

use crate::container::Container;
use crate::error::{Error, IoContext, Result};
use crate::host::Host;
use crate::migrate::{runtime, Control};

/// How long an in-doubt source waits before it asks its peer again.
const ASK_AGAIN: Duration = Duration::from_secs(3);

/// How long one `Query` may take (connection, handshake, answer).
const QUERY_TIMEOUT: Duration = Duration::from_secs(4);

/// Which side of a migration a [`Record`] was left by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Source,
    Destination,
}

/// A migration under way on this host (`ROOT/migrations/ID.json`), so that
/// a later `cr migrate` or `cr serve` can finish what a killed one left:
/// the source's container frozen with its network locked, the
/// destination's container restored but never resumed, a staging mount.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub container: String,
    pub role: Role,
    /// The cr process that runs the migration.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat`, clock ticks since boot), so that
    /// a new process with a reused pid is not taken for it.
    #[serde(default)]
    pub started: Option<u64>,
    /// Source: the peer's name in the trust store, to ask it what became
    /// of a migration in doubt.
    #[serde(default)]
    pub peer: Option<String>,
    /// Source: Resume was sent, the answer may have been lost (the
    /// container may run on the peer: never thaw it here unasked).
    /// Destination: the container was resumed here (keep it).
    pub decided: bool,
    /// Source: the top delta of the container's disk before the
    /// migration's snapshots; a container that goes on here gets them
    /// folded back into it (`DiskUndo`).
    #[serde(default)]
    pub disk_base: Option<String>,
}

impl Record {
    /// The record of a migration run by this process.
    pub fn new(container: &str, role: Role, peer: Option<&str>) -> Record {
        let pid = std::process::id();
        Record {
            container: container.to_string(),
            role,
            pid,
            started: start_time(pid),
            peer: peer.map(str::to_string),
            decided: false,
            disk_base: None,
        }
    }

    fn path(host: &Host, id: &MigrationId) -> PathBuf {
        host.root().join("migrations").join(format!("{id}.json"))
    }

    pub fn write(&self, host: &Host, id: &MigrationId) -> Result<()> {
        let path = Record::path(host, id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).ctx("creating", dir)?;
        }
        let text = serde_json::to_string(self)
            .map_err(|e| Error::Invalid(format!("encoding a migration record: {e}")))?;
        crate::container::config::write_atomic(&path, text.as_bytes())
    }

    pub fn remove(host: &Host, id: &MigrationId) {
        let _ = fs::remove_file(Record::path(host, id));
    }

    /// Whether the process that wrote it still runs.
    fn owner_alive(&self) -> bool {
        match (start_time(self.pid), self.started) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            // An old record without a start time: the pid alone.
            (Some(_), None) => true,
        }
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

fn parse_id(hex: &str) -> Option<MigrationId> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(MigrationId(bytes))
}

/// Finishes what killed migrations left on this host (see [`Record`]);
/// returns one line per thing done, for the log.
pub fn recover(host: &Host) -> Vec<String> {
    let dir = host.root().join("migrations");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json").and_then(parse_id) else {
            continue;
        };
        // Another recovery has it: its turn.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(_turn) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        // Read under the lock: the other recovery may have removed it.
        let Ok(record) = fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Record>(&t).map_err(|e| e.to_string()))
        else {
            continue;
        };
        if record.owner_alive() {
            continue;
        }
        if let Some(line) = settle(host, &dir, &path, &id, &record) {
            done.push(line);
        }
    }
    done
}

/// Settles one record whose process is gone; the line for the log, if
/// anything was done. The record stays only for a source in doubt whose
/// peer could not say.
fn settle(
    host: &Host,
    dir: &Path,
    path: &Path,
    id: &MigrationId,
    record: &Record,
) -> Option<String> {
    let staging = dir.join(id.to_string());
    if staging.exists() {
        let _ = nix::mount::umount2(&staging, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_dir_all(staging.with_extension("partial"));
    }
    let name = &record.container;
    let container = Container::open(host, name).ok();
    let line = match (record.role, record.decided, container) {
        (Role::Source, false, Some(c)) => Some(match resume_here(&c) {
            Ok(how) => {
                let disk = fold_disk(&c, record);
                format!("migration {id} of {name} was cut short: it runs here again ({how}){disk}")
            }
            Err(e) => format!("migration {id} of {name} was cut short; resuming it here: {e}"),
        }),
        (Role::Source, true, Some(c)) => {
            let Some(peer) = record.peer.as_deref() else {
                let _ = fs::remove_file(path);
                return Some(format!(
                    "migration {id} of {name} is in doubt and its record names no peer: \
                     it stays frozen here; thaw or destroy it once you know where it runs"
                ));
            };
            // Not more often than every ASK_AGAIN per record.
            let asked = fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok());
            if asked.is_some_and(|a| a < ASK_AGAIN) && record.started.is_none() {
                return None;
            }
            match ask(host, peer, *id) {
                Ok(OutcomeState::Resumed) => Some(
                    match crate::container::destroy::destroy(&c, Duration::ZERO) {
                        Ok(()) => format!(
                            "migration {id} of {name} was in doubt; {peer} says it runs there: removed here"
                        ),
                        Err(e) => format!(
                            "migration {id} of {name} runs on {peer}; removing the frozen copy here: {e}"
                        ),
                    },
                ),
                Ok(state @ (OutcomeState::Failed | OutcomeState::Unknown)) => {
                    let how = if state == OutcomeState::Failed {
                        "failed there"
                    } else {
                        "does not know it"
                    };
                    Some(match resume_here(&c) {
                        Ok(done) => format!(
                            "migration {id} of {name} was in doubt; {peer} {how}: it runs here again ({done}){}",
                            fold_disk(&c, record)
                        ),
                        Err(e) => format!(
                            "migration {id} of {name} was in doubt; {peer} {how}; resuming it here: {e}"
                        ),
                    })
                }
                other => {
                    let why = match other {
                        Ok(_) => format!("{peer} is still resuming it"),
                        Err(e) => e.to_string(),
                    };
                    // Asked again on a later pass; `started: None` marks a
                    // record recovery has taken over (its owner is gone).
                    let mut kept = record.clone();
                    kept.started = None;
                    kept.pid = 0;
                    let _ = kept.write(host, id);
                    return Some(format!(
                        "migration {id} of {name} is in doubt ({why}): it stays frozen here \
                         (network locked); asking {peer} again in {}s",
                        ASK_AGAIN.as_secs()
                    ));
                }
            }
        }
        // Resumed here, and said so on disk before the record could.
        (Role::Destination, false, Some(_))
            if crate::migrate::destination::stored_outcome(host, *id)
                == Some(OutcomeState::Resumed) =>
        {
            None
        }
        (Role::Destination, false, Some(c)) => {
            let _ = crate::container::destroy::destroy(&c, Duration::ZERO);
            Some(format!(
                "migration {id} of {name} never resumed here: removed"
            ))
        }
        // Cut short while its disk arrived: the chain has no container yet.
        (Role::Destination, false, None) if host.container_dir(name).exists() => {
            crate::migrate::disk::remove_partial(&host.container_dir(name));
            Some(format!(
                "migration {id} of {name} cut short while its disk arrived: removed"
            ))
        }
        _ => None,
    };
    let _ = fs::remove_file(path);
    line
}

/// A source container that goes on here: the snapshots the migration took
/// of its disk are folded back (`DiskUndo` of a `cr migrate` that could not
/// do it). Returns what to add to the log line.
fn fold_disk(c: &Container, record: &Record) -> String {
    let Some(base) = &record.disk_base else {
        return String::new();
    };
    match crate::migrate::disk::fold_back(c, base) {
        Ok(0) => String::new(),
        Ok(n) => format!("; {n} snapshots of its disk folded back"),
        Err(e) => format!("; {e}"),
    }
}

/// A source's frozen copy goes on here, as [`FrozenContainer::thaw`]
/// would have done it: its TCP connections out of repair mode while the
/// network is still locked, then the lock lifted, then the cgroup thawed.
///
/// [`FrozenContainer::thaw`]: crate::dump::checkpoint::FrozenContainer::thaw
fn resume_here(c: &Container) -> Result<String> {
    let cgroup = c.cgroup()?;
    let pids: Vec<i32> = cgroup.pids()?.into_iter().map(|p| p.as_raw()).collect();
    let repaired = crate::dump::inet::leave_repair_left(&pids);
    let unlocked = match c.status() {
        Ok((_, Some(init))) => crate::netlock::NetLock::left_on(init.as_raw())
            .map_err(Error::from)
            .and_then(|l| l.unlock_left().map_err(Error::from)),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    let thawed = cgroup.thaw().map_err(Error::from);
    let n = repaired?;
    unlocked.and(thawed)?;
    Ok(format!(
        "{n} TCP connection(s) out of repair mode, network unlocked"
    ))
}

/// Asks `peer`, on a new session, what became of migration `id`.
fn ask(host: &Host, peer: &str, id: MigrationId) -> Result<OutcomeState> {
    let identity = Identity::load_or_create(host.root())
        .map_err(|e| Error::Invalid(format!("this host's identity: {e}")))?;
    let trust = TrustStore::load(host.root()).map_err(|e| Error::Invalid(e.to_string()))?;
    let rt = runtime()?;
    let endpoint = {
        let _guard = rt.enter();
        Endpoint::client(
            std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            &identity,
            trust,
            Tuning {
                idle_timeout: QUERY_TIMEOUT,
                ..Tuning::default()
            },
        )
        .map_err(|e| Error::Invalid(format!("opening a QUIC endpoint: {e}")))?
    };
    let connected =
        rt.block_on(async { tokio::time::timeout(QUERY_TIMEOUT, endpoint.connect(peer)).await });
    let (session, control) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Error::Invalid(format!("{peer} is unreachable: {e}"))),
        Err(_) => {
            return Err(Error::Invalid(format!(
                "{peer} is unreachable: no answer within {QUERY_TIMEOUT:?}"
            )))
        }
    };
    let mut control = Control::new(rt.handle(), control);
    control.send(&Message::Query(MigrationRef { migration: id }))?;
    let state = match control.recv(QUERY_TIMEOUT, "Outcome")? {
        Message::Outcome(o) if o.migration == id => o.state,
        other => {
            return Err(Error::Invalid(format!(
                "{peer} answered the Query with {}",
                other.name()
            )))
        }
    };
    session.close(0, "done");
    Ok(state)
}

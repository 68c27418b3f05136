//! `cr checkpoint`: the dump pipeline drawn in [`crate::dump`], from a
//! running container to an image directory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cr_formats::schema::{
    Arch, Blob, ByteString, CapSets, Credentials, Fd as FdRecord, File as FileRecord, FileKind,
    ITimers, IdSet, Manifest, MmState, PipeData, PosixTimer, Process, Record, Rlimit, RobustList,
    Rseq, Sched, SigAction, SigAltStack, SyscallRestart, TaskState, Thread, Timer,
};
use cr_formats::{Compression, PageOwner, PageWriter, PageWriterOptions, RecordWriter};
use nix::fcntl::OFlag;
use nix::unistd::Pid;
use serde::Serialize;

use crate::container::cgroups::ContainerCgroup;
use crate::container::Container;
use crate::dump::mm::{self, PAGE_SIZE};
use crate::dump::procfs::{self, FdEntry, TaskStatus};
use crate::dump::{files, inet, netns, precopy, shmem, timens, DumpError};
use crate::error::{Error, IoContext, Result};
use crate::inject::{regs_to_array, RemoteScratch, RemoteSyscall, Tracee};

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Where the image goes; it must not exist yet.
    pub image_dir: PathBuf,
    /// Thaw the container afterwards instead of stopping it.
    pub leave_running: bool,
    /// Neither: keep it frozen (every task seized, its network locked) and
    /// hand it to the caller as a [`FrozenContainer`]; see
    /// [`checkpoint_frozen`]. Takes precedence over `leave_running`.
    pub keep_frozen: bool,
    pub compression: Compression,
    /// Rounds of pre-copy before the freeze (`dump/precopy.rs`); 0 copies
    /// all memory in the frozen window.
    pub pre_copy_rounds: u32,
    /// Where the page store goes instead of `pages.img` (a migration's
    /// page stream); the image then has no `pages.img`.
    pub page_sink: Option<PageSink>,
}

/// A page store's bytes, written somewhere other than the image directory
/// ([`CheckpointOptions::page_sink`]). The checkpoint writes through it
/// and drops its handle; the owner keeps another and ends the stream.
#[derive(Clone)]
pub struct PageSink {
    /// What the bytes go to, for error messages.
    pub name: String,
    pub out: std::sync::Arc<dyn SinkWrite>,
    /// Decides chunk by chunk whether the checkpoint's compression is used
    /// (`cr migrate --compress auto`).
    pub gate: Option<std::sync::Arc<cr_formats::CompressGate>>,
}

/// Where a [`PageSink`] writes (shared with its owner, hence `&self`).
pub trait SinkWrite: Send + Sync {
    fn write_all(&self, data: &[u8]) -> std::io::Result<()>;
    fn flush(&self) -> std::io::Result<()>;
    /// Waits until what was written is nearly all delivered (a stream's
    /// backlog on a slow link): called after the pre-copy, before the
    /// freeze, so that the backlog does not cross in the frozen window.
    fn drain(&self) -> std::io::Result<()>;
}

impl std::fmt::Debug for PageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSink")
            .field("name", &self.name)
            .finish()
    }
}

impl Write for PageSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What `cr checkpoint` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSummary {
    pub image: PathBuf,
    /// From the freeze until the container was thawed or stopped.
    pub frozen_ms: f64,
    pub processes: usize,
    pub threads: usize,
    /// Pages stored with their contents.
    pub pages_written: u64,
    /// Pages recorded as zero (no contents stored).
    pub zero_pages: u64,
    /// Bytes of the image on disk.
    pub bytes: u64,
    pub left_running: bool,
    /// The pre-copy before the freeze (time, rounds, pages), if one ran.
    pub pre_copy: Option<crate::dump::precopy::PreCopyStats>,
    /// Pages stored with their contents while frozen.
    pub frozen_pages_written: u64,
    /// Zero pages recorded while frozen.
    pub frozen_zero_pages: u64,
    /// Where the frozen window went: each step, and the collection of each
    /// kind of file (with how many were collected), in the order met.
    pub frozen_phases: Vec<PhaseTime>,
}

/// One step of the frozen window (or one kind of file collected in it).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    pub name: String,
    /// Objects handled (files of the kind, processes, ...); 0 for a step.
    pub count: usize,
    pub ms: f64,
}

/// The [`PhaseTime`]s of one frozen window, summed by name.
#[derive(Default)]
struct Phases(Vec<PhaseTime>);

impl Phases {
    fn add(&mut self, name: &str, count: usize, took: Duration) {
        match self.0.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.count += count;
                p.ms += ms(took);
            }
            None => self.0.push(PhaseTime {
                name: name.to_string(),
                count,
                ms: ms(took),
            }),
        }
    }

    /// Times `step` as phase `name`.
    fn time<T>(&mut self, name: &str, step: impl FnOnce() -> T) -> T {
        let at = Instant::now();
        let out = step();
        self.add(name, 0, at.elapsed());
        out
    }
}

/// One process of the container as found on the host.
struct Task {
    host_pid: i32,
    status: TaskStatus,
    tids: Vec<i32>,
    /// Each descriptor with the kind that claimed it and the object's
    /// metadata (stat taken once, in the survey).
    fds: Vec<(FdEntry, &'static files::FileKindDump, fs::Metadata)>,
    maps: Vec<(procfs::MapsEntry, cr_formats::schema::VmaKind)>,
    /// The signal of the group stop the task was in, if any (learnt
    /// from its first ptrace stop: a frozen task's /proc state says D).
    stopped_by: Option<i32>,
    /// A zombie's exit status (as `waitpid` reports it).
    zombie: Option<i32>,
    /// Its time namespaces (not read for a zombie).
    time_ns: Option<timens::TimeNs>,
}

/// The time namespaces of the container's processes (refused here when
/// restore could not make them again: src/dump/timens.rs).
fn time_namespaces(tasks: &[Task]) -> Result<Vec<cr_formats::schema::TimeNamespace>> {
    let host_to_ns: HashMap<i32, i32> = tasks
        .iter()
        .map(|t| (t.host_pid, t.status.pid_in_ns()))
        .collect();
    let view: Vec<timens::TimeTask<'_>> = tasks
        .iter()
        .filter_map(|t| {
            Some(timens::TimeTask {
                host_pid: t.host_pid,
                status: &t.status,
                parent: host_to_ns.get(&t.status.ppid).copied(),
                ns: t.time_ns?,
            })
        })
        .collect();
    Ok(timens::plan(&view, timens::host_time_ns()?)?)
}

/// Finds every process of the container and checks that cr can move each of
/// its objects. Refuses with the first one it cannot.
fn survey(cgroup: &ContainerCgroup) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    let mut locked = std::collections::HashSet::new();
    let pids: Vec<i32> = cgroup.pids()?.iter().map(|p| p.as_raw()).collect();
    for &pid in &pids {
        let status = procfs::read_status(pid)?;
        let comm = status.name.clone();
        if status.state == 'Z' {
            continue; // found with its parent below
        }
        let tids = procfs::read_tids(pid)?;
        let time_ns = timens::read(pid, &status, &tids)?;
        let mut fds = Vec::new();
        for entry in procfs::read_fds(pid)? {
            let (kind, meta) =
                files::classify(pid, &comm, &entry).map_err(|e| rename_pid(e, &status))?;
            fds.push((entry, kind, meta));
        }
        let mut maps = Vec::new();
        for m in procfs::read_maps(pid)? {
            let kind = mm::classify(status.pid_in_ns(), &comm, &m)?;
            maps.push((m, kind));
        }
        shmem::survey_task(status.pid_in_ns(), &comm, pid, &maps, &fds)?;
        let mqueue_fds: Vec<(i32, u64, &str)> = fds
            .iter()
            .filter(|(_, kind, _)| kind.name == crate::dump::ipc::MQUEUE_KIND)
            .map(|(e, _, meta)| {
                (
                    e.fd,
                    std::os::unix::fs::MetadataExt::nlink(meta),
                    e.target.as_str(),
                )
            })
            .collect();
        crate::dump::ipc::check_fds(status.pid_in_ns(), &comm, &mqueue_fds)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        locked.extend(shmem::locked_inodes(&fds));
        tasks.push(Task {
            host_pid: pid,
            tids,
            status,
            fds,
            maps,
            stopped_by: None,
            zombie: None,
            time_ns: Some(time_ns),
        });
    }
    // Zombies have left the cgroup: their parents still hold them.
    let parents: Vec<i32> = tasks.iter().map(|t| t.host_pid).collect();
    for (pid, exit_status) in procfs::zombie_children(&parents) {
        let Ok(status) = procfs::read_status(pid) else {
            continue; // reaped meanwhile (never while frozen)
        };
        tasks.push(Task {
            host_pid: pid,
            status,
            tids: Vec::new(),
            fds: Vec::new(),
            maps: Vec::new(),
            stopped_by: None,
            zombie: Some(exit_status),
            time_ns: None,
        });
    }
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    shmem::check_all_locks_seen(&locks, &pids, &locked).map_err(Error::Invalid)?;
    tasks.sort_by_key(|t| t.status.pid_in_ns());
    check_unix_sockets(&tasks)?;
    time_namespaces(&tasks)?;
    if let Some(init) = tasks.first() {
        let attachments: Vec<crate::dump::ipc::Attachment> = tasks
            .iter()
            .flat_map(|t| {
                t.maps.iter().filter_map(|(m, kind)| match kind {
                    cr_formats::schema::VmaKind::SysvShm { shmid } => {
                        Some(crate::dump::ipc::Attachment {
                            pid: t.status.pid_in_ns(),
                            comm: t.status.name.clone(),
                            start: m.start,
                            end: m.end,
                            shmid: *shmid,
                        })
                    }
                    _ => None,
                })
            })
            .collect();
        crate::dump::ipc::survey(init.host_pid, attachments)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        crate::dump::mounts::survey(init.host_pid, &init.status)?;
    }
    Ok(tasks)
}

/// The container's unix sockets, checked together (peers, backlogs,
/// descriptors in flight: see [`crate::dump::unix::check`]).
fn check_unix_sockets(tasks: &[Task]) -> Result<()> {
    let mut sockets = Vec::new();
    for t in tasks {
        for (entry, kind, _) in &t.fds {
            if kind.name == files::UNIX_SOCKET {
                if let Some(ino) = crate::dump::unix::socket_ino(&entry.target) {
                    sockets.push(crate::dump::unix::SocketFd {
                        host_pid: t.host_pid,
                        pid: t.status.pid_in_ns(),
                        comm: &t.status.name,
                        fd: entry.fd,
                        ino,
                    });
                }
            }
        }
    }
    Ok(crate::dump::unix::check(&sockets)?)
}

/// The record of a zombie: its ids, credentials and exit status; no
/// memory, threads or descriptors.
fn zombie_process(
    task: &Task,
    host_to_ns: &HashMap<i32, i32>,
    exit_status: i32,
) -> Result<Process> {
    let st = &task.status;
    Ok(Process {
        pid: st.pid_in_ns(),
        ppid: host_to_ns.get(&st.ppid).copied().unwrap_or(0),
        pgid: st.ns_pgid.last().copied().unwrap_or(0),
        sid: st.ns_sid.last().copied().unwrap_or(0),
        state: TaskState::Zombie {
            exit_code: exit_status,
        },
        comm: ByteString::from(st.name.as_str()),
        exe: ByteString::from(""),
        cwd: ByteString::from(""),
        root: ByteString::from(""),
        creds: credentials(task.host_pid, st, 0)?,
        umask: st.umask,
        personality: 0,
        dumpable: 0,
        pdeath_sig: 0,
        child_subreaper: false,
        rlimits: Vec::new(),
        mm: None,
        sigactions: Vec::new(),
        shared_pending: Vec::new(),
        itimers: ITimers::default(),
        posix_timers: Vec::new(),
    })
}

/// Refusals name the process by its PID inside the container.
fn rename_pid(err: DumpError, status: &TaskStatus) -> DumpError {
    match err {
        DumpError::Unsupported { comm, what, .. } => DumpError::Unsupported {
            pid: status.pid_in_ns(),
            comm,
            what,
        },
        other => other,
    }
}

/// How long the survey before the freeze is retried while it refuses.
const SETTLE: Duration = Duration::from_secs(2);

/// The survey before the freeze, retried for up to [`SETTLE`] while it
/// refuses: some refused states pass by themselves within milliseconds (a
/// client's connection waiting in a busy server's accept queue, a
/// connection still opening), and a busy server must not be refused for
/// them. A state that lasts is refused as the last attempt saw it.
fn survey_settled(cgroup: &ContainerCgroup) -> Result<Vec<Task>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match survey(cgroup) {
            Err(Error::Dump(DumpError::Unsupported { .. })) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            // A short-lived process (a shell's `sleep`) exited while it was
            // being read: look again.
            Err(Error::Dump(DumpError::Proc { source, .. }))
                if Instant::now() < deadline
                    && (source.kind() == std::io::ErrorKind::NotFound
                        || source.raw_os_error() == Some(libc::ESRCH)) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Checkpoints `container` into `opts.image_dir`.
pub fn checkpoint(container: &Container, opts: &CheckpointOptions) -> Result<CheckpointSummary> {
    let opts = CheckpointOptions {
        keep_frozen: false,
        ..opts.clone()
    };
    run(container, &opts).map(|(summary, _)| summary)
}

/// Checkpoints `container` into `opts.image_dir` and leaves it frozen: the
/// image is complete and durable, and the container is exactly as it was
/// at the freeze, until the caller thaws it ([`FrozenContainer::thaw`]: it
/// goes on as if nothing happened) or stops it
/// ([`FrozenContainer::stop`]: as `cr checkpoint` without
/// `--leave-running`). A migration's source holds it so until the
/// destination runs the container. Dropped, it thaws.
pub fn checkpoint_frozen(
    container: &Container,
    opts: &CheckpointOptions,
) -> Result<(CheckpointSummary, FrozenContainer)> {
    let opts = CheckpointOptions {
        keep_frozen: true,
        leave_running: false,
        ..opts.clone()
    };
    let (summary, frozen) = run(container, &opts)?;
    let frozen =
        frozen.ok_or_else(|| Error::Invalid("the container was not kept frozen".into()))?;
    // The cgroup freezer holds the tasks too, not only this process's
    // ptrace stops: should this process die (a killed `cr migrate`), they
    // stay still, their connections in repair mode and the network
    // locked, until a recovery resumes them as thaw() would
    // (migrate::recovery); they never run on a socket left in repair mode.
    frozen.cgroup.freeze()?;
    Ok((summary, frozen))
}

/// A container left frozen by [`checkpoint_frozen`].
pub struct FrozenContainer {
    cgroup: ContainerCgroup,
    tracees: Vec<Tracee>,
    net: Option<inet::NetFreeze>,
    precopy: Option<precopy::PreCopy>,
    frozen_at: Instant,
    done: bool,
}

impl std::fmt::Debug for FrozenContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenContainer")
            .field("tasks", &self.tracees.len())
            .field("frozen_for", &self.frozen_at.elapsed())
            .finish()
    }
}

impl FrozenContainer {
    /// How long it has been frozen.
    pub fn frozen_for(&self) -> Duration {
        self.frozen_at.elapsed()
    }

    /// Lets it go on: the network lock lifted, every task detached, the
    /// cgroup thawed.
    pub fn thaw(mut self) -> Result<()> {
        self.done = true;
        let resumed = self.net.take().map(inet::NetFreeze::resume);
        for t in std::mem::take(&mut self.tracees) {
            let _ = t.detach();
        }
        let thawed = self.cgroup.thaw();
        self.precopy.take();
        if let Some(Err(e)) = resumed {
            return Err(e);
        }
        thawed.map_err(Error::from)
    }

    /// Leaves it frozen without a holder: the cgroup freezer holds every
    /// task and the network stays locked after this process exits (a
    /// migration in doubt: it may run on the other host). `cr thaw` lets
    /// it go on.
    pub fn hold(mut self) -> Result<()> {
        self.done = true;
        self.cgroup.freeze()?;
        for t in std::mem::take(&mut self.tracees) {
            let _ = t.detach();
        }
        self.precopy.take();
        match self.net.take() {
            Some(net) => net.keep_locked(),
            None => Ok(()),
        }
    }

    /// Stops it for good (its image is what remains): every task killed,
    /// its sockets closed without a word to their peers, the container
    /// stopped.
    pub fn stop(mut self, container: &Container) -> Result<()> {
        self.done = true;
        // Killed tasks die only once the freezer lets them; the ptrace
        // stops still hold them meanwhile.
        let _ = self.cgroup.thaw();
        kill_traced(std::mem::take(&mut self.tracees));
        if let Some(net) = self.net.take() {
            net.close_silently();
        }
        self.precopy.take();
        crate::container::stop::stop_killed(container)
    }
}

impl Drop for FrozenContainer {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.net.take().map(inet::NetFreeze::resume);
            for t in std::mem::take(&mut self.tracees) {
                let _ = t.detach();
            }
            let _ = self.cgroup.thaw();
        }
    }
}

fn run(
    container: &Container,
    opts: &CheckpointOptions,
) -> Result<(CheckpointSummary, Option<FrozenContainer>)> {
    container.require_running("checkpoint")?;
    if opts.image_dir.exists() {
        return Err(Error::Invalid(format!(
            "image directory {} already exists",
            opts.image_dir.display()
        )));
    }
    let cgroup = container.cgroup()?;
    // Refuse what cannot be moved before anything is frozen.
    let surveyed = survey_settled(&cgroup)?;
    if let Some(init) = surveyed.first() {
        netns::survey(init.host_pid)?;
    }

    let partial = opts.image_dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).ctx("creating image directory", &partial)?;
    let image_id =
        u64::from(std::process::id()) << 32 | u64::from(crate::container::state::unix_now() as u32);
    let (mut pages, pending) = match open_page_store(&partial, image_id, opts) {
        Ok(store) => store,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    // Memory copied while the container runs; the trackers live until the
    // container was thawed or stopped.
    let precopy = if opts.pre_copy_rounds > 0 {
        // Not stopped or zombie tasks: a group-stopped task cannot be paused
        // for the tracker's set-up, a zombie has no memory. They are copied
        // while frozen.
        let targets: Vec<precopy::Target<'_>> = surveyed
            .iter()
            .filter(|t| t.status.state != 'T' && t.zombie.is_none())
            .map(|t| precopy::Target {
                host_pid: t.host_pid,
                pid: t.status.pid_in_ns(),
                comm: &t.status.name,
                maps: &t.maps,
            })
            .collect();
        match precopy::run(&targets, &mut pages, opts.pre_copy_rounds) {
            Ok(pc) => Some(pc),
            Err(e) => {
                drop(pages);
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        }
    } else {
        None
    };
    // Stopped tasks and their threads, to seize before the freeze.
    let stopped: Vec<(i32, i32)> = surveyed
        .iter()
        .filter(|t| t.status.state == 'T')
        .flat_map(|t| t.tids.iter().map(move |tid| (t.host_pid, *tid)))
        .collect();
    // TCP listeners get their accept queues drained with the network
    // locked, just before the freeze (inet::lock_and_drain).
    let inet_sockets: Vec<(i32, i32)> = surveyed
        .iter()
        .flat_map(|t| {
            t.fds
                .iter()
                .filter(|(_, kind, _)| kind.name == inet::KIND_NAME)
                .map(|(entry, _, _)| (t.host_pid, entry.fd))
        })
        .collect();
    let init_pid = surveyed.first().map(|t| t.host_pid);
    drop(surveyed);
    let mut precopy = precopy;
    if let (Some(pc), Some(sink)) = (precopy.as_mut(), &opts.page_sink) {
        // What the pre-copy wrote into a stream crosses now, while the
        // container runs, not in the frozen window.
        let at = Instant::now();
        let drained = pages.flush_chunk().map_err(Error::from).and_then(|()| {
            sink.out
                .drain()
                .map_err(|e| Error::stream(format!("sending the pre-copy to {}", sink.name), e))
        });
        if let Err(e) = drained {
            drop(pages);
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        pc.stats.drain_ms = at.elapsed().as_secs_f64() * 1e3;
    }
    let pre_copy_stats = precopy.as_ref().map(|pc| pc.stats.clone());
    if (!opts.leave_running || opts.keep_frozen) && precopy.is_some() && opts.page_sink.is_none() {
        // The container will be stopped once its image is durable: what
        // the pre-copy wrote goes to disk now, not in the frozen window.
        let path = cr_formats::layout::pages_path(&partial);
        let _ = File::open(&path).and_then(|f| f.sync_data());
    }

    // Stopped tasks are seized before the freeze: attaching to a task in a
    // group stop waits until it traps again, which a frozen one never does.
    let mut tracees: Vec<Tracee> = Vec::new();
    for (_, tid) in stopped {
        match Tracee::seize_and_interrupt(Pid::from_raw(tid)) {
            Ok(t) => tracees.push(t),
            Err(e) => {
                drop(tracees);
                drop(pages);
                let _ = fs::remove_dir_all(&partial);
                return Err(inject_err(e));
            }
        }
    }
    let mut early = match init_pid {
        Some(init) => match inet::lock_and_drain(init, &inet_sockets) {
            Ok(lock) => lock,
            Err(e) => {
                drop(tracees);
                drop(pages);
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        },
        None => inet::EarlyLock::default(),
    };
    let frozen_at = Instant::now();
    if let Err(e) = cgroup.freeze() {
        drop(tracees);
        drop(pages);
        let _ = fs::remove_dir_all(&partial);
        return Err(e.into());
    }
    // A container on a disk: its files as they are now, beside its memory
    // (synced, then a snapshot; restore reverts the disk to it).
    if container.config.disk.is_some() {
        let taken = crate::storage::disk::ContainerDisk::open(container)
            .and_then(|d| d.snapshot_frozen("checkpoint"))
            .and_then(|t| {
                let path = partial.join(cr_formats::layout::DISK_SNAPSHOT_FILE);
                fs::write(&path, &t.snapshot).ctx("writing", &path)
            });
        if let Err(e) = taken {
            drop(tracees);
            drop(pages);
            let _ = cgroup.thaw();
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    }
    // TCP sockets held still (network lock, repair mode); dropped, it lets
    // them go on.
    let mut net: Option<inet::NetFreeze> = None;
    let mut phases = Phases::default();
    crate::dump::unix::forget_diags();
    let dumped = dump_frozen(
        container,
        &cgroup,
        &partial,
        opts,
        &mut tracees,
        &mut net,
        Frozen {
            early: &mut early,
            image_id,
            pages,
            pending,
            precopy: precopy.as_mut(),
            phases: &mut phases,
        },
    )
    .and_then(|done| {
        if !opts.leave_running || opts.keep_frozen {
            let at = Instant::now();
            // The container is about to be stopped: make sure the image is
            // one `cr restore` can bring back, or keep the container.
            let image = crate::restore::image::LoadedImage::load(&partial)?;
            crate::restore::tree::check(&image).map_err(|e| {
                Error::Invalid(format!(
                    "the checkpoint would not be restorable, so the container was not stopped and keeps running ({e}); `--leave-running` writes such an image anyway"
                ))
            })?;
            phases.add("restorability check", 0, at.elapsed());
        }
        Ok(done)
    });
    crate::dump::unix::forget_diags();
    let (stats, tasks, pending) = match dumped {
        Ok(done) => done,
        Err(err) => {
            // The container goes on as if nothing happened.
            drop(net);
            drop(tracees);
            let _ = cgroup.thaw();
            let _ = fs::remove_dir_all(&partial);
            return Err(err);
        }
    };
    let frozen_ms;
    let mut kept = None;
    if opts.leave_running && !opts.keep_frozen {
        let resumed = phases.time("network resume", || net.take().map(inet::NetFreeze::resume));
        if let Some(Err(e)) = resumed {
            drop(tracees);
            let _ = cgroup.thaw();
            let _ = pending.wait();
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        for t in tracees {
            let _ = t.detach();
        }
        let _ = cgroup.thaw();
        frozen_ms = ms(frozen_at.elapsed());
        // Tracking ends: the kernel unregisters the ranges, the container
        // pays nothing more for it.
        drop(precopy);
        // The page store is still being written: the container runs meanwhile.
        if let Err(e) = pending.wait() {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    } else {
        // The container is kept frozen for someone to rely on the image, or
        // goes away: either way its image must be durable first.
        let synced = phases.time("page store written + image synced", || {
            pending.wait().and_then(|()| sync_image(&partial, opts))
        });
        if let Err(e) = synced {
            drop(net);
            drop(tracees);
            let _ = cgroup.thaw();
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        if opts.keep_frozen {
            frozen_ms = ms(frozen_at.elapsed());
            kept = Some(FrozenContainer {
                cgroup: container.cgroup()?,
                tracees,
                net,
                precopy,
                frozen_at,
                done: false,
            });
        } else {
            phases.time("kill", || kill_traced(tracees));
            if let Some(net) = net {
                phases.time("sockets closed in repair mode", || net.close_silently());
            }
            frozen_ms = ms(frozen_at.elapsed());
            drop(precopy);
            crate::container::stop::stop_killed(container)?;
        }
    }
    // A container left running was thawed before the image was synced: the
    // frozen window does not wait for the disk. The image is in place only
    // once it is durable.
    sync_image(&partial, opts)?;
    fs::rename(&partial, &opts.image_dir).ctx("moving the image into place", &opts.image_dir)?;
    let bytes = dir_size(&opts.image_dir);
    let summary = CheckpointSummary {
        image: opts.image_dir.clone(),
        frozen_ms,
        processes: tasks.0,
        threads: tasks.1,
        pages_written: stats.0,
        zero_pages: stats.1,
        bytes,
        left_running: opts.leave_running,
        frozen_pages_written: stats.0 - pre_copy_stats.as_ref().map_or(0, |p| p.pages_written),
        frozen_zero_pages: stats.1 - pre_copy_stats.as_ref().map_or(0, |p| p.zero_pages),
        pre_copy: pre_copy_stats,
        frozen_phases: phases.0,
    };
    Ok((summary, kept))
}

/// Where page-store bytes go while the container is frozen: a thread
/// writes them to the file, so the frozen window pays for copying memory
/// out of the container, not for the copy into the page cache (which costs
/// as much again). At most [`BACKLOG_CHUNKS`] buffers wait; beyond that the
/// dump waits for the disk.
struct BackgroundFile {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    /// A [`PageSink`] is written directly, without the thread: it has a
    /// queue of its own (a migration's stream), and a copy less counts.
    direct: Option<PageSink>,
}

/// 4 MiB buffers waiting for the writer thread at most (2 GiB).
const BACKLOG_CHUNKS: usize = 512;
const BACKGROUND_BUF: usize = 4 << 20;

/// The writer thread of a [`BackgroundFile`].
pub struct PendingWrite {
    /// None: written directly ([`BackgroundFile::direct`]).
    handle: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

impl BackgroundFile {
    fn spawn(
        file: Box<dyn Write + Send>,
        path: PathBuf,
        backlog: usize,
    ) -> Result<(Self, PendingWrite)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(backlog);
        let handle = std::thread::Builder::new()
            .name("page-writer".into())
            .spawn(move || {
                let mut file = file;
                for block in rx {
                    file.write_all(&block)?;
                }
                file.flush()
            })
            .ctx("starting the page writer for", &path)?;
        Ok((
            BackgroundFile {
                tx: Some(tx),
                buf: Vec::with_capacity(BACKGROUND_BUF),
                direct: None,
            },
            PendingWrite {
                handle: Some(handle),
                path,
            },
        ))
    }

    /// Writes straight into `sink` on the caller's thread.
    fn direct(sink: PageSink) -> (Self, PendingWrite) {
        let path = PathBuf::from(&sink.name);
        (
            BackgroundFile {
                tx: None,
                buf: Vec::new(),
                direct: Some(sink),
            },
            PendingWrite { handle: None, path },
        )
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKGROUND_BUF));
        match &self.tx {
            Some(tx) => tx
                .send(block)
                .map_err(|_| std::io::Error::other("the page writer stopped")),
            None => Err(std::io::Error::other("the page writer is closed")),
        }
    }
}

impl Write for BackgroundFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(sink) = &mut self.direct {
            sink.write_all(data)?;
            return Ok(data.len());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKGROUND_BUF {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(sink) = &mut self.direct {
            return sink.flush();
        }
        self.send()
    }
}

impl Drop for BackgroundFile {
    fn drop(&mut self) {
        let _ = self.send();
        self.tx = None;
    }
}

impl PendingWrite {
    /// Waits until every byte is written.
    fn wait(self) -> Result<()> {
        let Some(handle) = self.handle else {
            return Ok(());
        };
        match handle.join() {
            Ok(result) => result.ctx("writing the page store", &self.path),
            Err(_) => Err(Error::Invalid(format!(
                "the page writer for {} panicked",
                self.path.display()
            ))),
        }
    }
}

/// Flushes an image's files to disk.
fn sync_image(dir: &Path, opts: &CheckpointOptions) -> Result<()> {
    for file in [
        cr_formats::layout::RECORDS_FILE,
        cr_formats::layout::PAGES_FILE,
    ] {
        if file == cr_formats::layout::PAGES_FILE && opts.page_sink.is_some() {
            continue;
        }
        let path = dir.join(file);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .ctx("syncing", &path)?;
    }
    Ok(())
}

/// Kills the seized tasks. A traced task's death is reported to its tracer
/// first: reap each one here, in whatever order they finish (an exiting
/// PID 1 waits for the rest of its namespace), so their parents and the
/// supervisor see them exit.
fn kill_traced(tracees: Vec<Tracee>) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut left: Vec<Pid> = tracees.iter().map(|t| t.tid()).collect();
    for tid in &left {
        let _ = nix::sys::signal::kill(*tid, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left.is_empty() && Instant::now() < deadline {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                left.retain(|t| *t != pid)
            }
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    drop(tracees);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes of the files directly in `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

type PageCounts = (u64, u64);
type TaskCounts = (usize, usize);

/// The page store opened before the freeze (a pre-copy writes into it
/// first): its writer and the thread that writes its file.
fn open_page_store(
    dir: &Path,
    image_id: u64,
    opts: &CheckpointOptions,
) -> Result<(PageWriter<BackgroundFile>, PendingWrite)> {
    let mut page_opts = PageWriterOptions::new(image_id);
    page_opts.compression = opts.compression;
    let (background, pending) = match &opts.page_sink {
        // A stream: a short backlog, so the pre-copy goes at the stream's
        // pace and the frozen window does not start with a queue to send.
        Some(sink) => BackgroundFile::direct(sink.clone()),
        None => {
            let pages_path = cr_formats::layout::pages_path(dir);
            let pages_file = File::create(&pages_path).ctx("creating", &pages_path)?;
            BackgroundFile::spawn(Box::new(pages_file), pages_path, BACKLOG_CHUNKS)?
        }
    };
    let mut writer = PageWriter::new(background, page_opts)?;
    if let Some(gate) = opts.page_sink.as_ref().and_then(|s| s.gate.clone()) {
        writer.set_gate(gate);
    }
    Ok((writer, pending))
}

/// What the frozen window continues from.
struct Frozen<'a> {
    /// The network lock taken before the freeze, if any.
    early: &'a mut inet::EarlyLock,
    image_id: u64,
    pages: PageWriter<BackgroundFile>,
    pending: PendingWrite,
    precopy: Option<&'a mut precopy::PreCopy>,
    /// Where the frozen window's time goes.
    phases: &'a mut Phases,
}

/// Everything between the freeze and the thaw.
fn dump_frozen(
    container: &Container,
    cgroup: &ContainerCgroup,
    dir: &Path,
    opts: &CheckpointOptions,
    tracees: &mut Vec<Tracee>,
    net: &mut Option<inet::NetFreeze>,
    frozen: Frozen<'_>,
) -> Result<(PageCounts, TaskCounts, PendingWrite)> {
    let Frozen {
        early,
        image_id,
        mut pages,
        pending,
        mut precopy,
        phases,
    } = frozen;
    // Processes may have come or gone between the survey and the freeze.
    let mut tasks = phases.time("survey again", || survey(cgroup))?;
    let at = Instant::now();
    for task in &tasks {
        for tid in &task.tids {
            if tracees.iter().any(|t| t.tid().as_raw() == *tid) {
                continue; // a stopped task, seized before the freeze
            }
            tracees.push(Tracee::seize_and_interrupt(Pid::from_raw(*tid)).map_err(inject_err)?);
        }
    }
    // The v1 freezer reports ptrace stops only once thawed; the interrupt
    // is already queued, so every task stops before it runs user code.
    cgroup.thaw()?;
    for t in tracees.iter_mut() {
        t.wait_stop(Some(Duration::from_secs(10)))
            .map_err(inject_err)?;
    }
    // A task in a group stop reports that stop (with its signal) first.
    for task in tasks.iter_mut() {
        let first = tracees
            .iter()
            .find(|t| t.tid().as_raw() == task.host_pid)
            .and_then(|t| t.stop());
        if let Some(crate::inject::Stop::Group(signo)) = first {
            task.stopped_by = Some(signo);
        }
    }
    phases.add("seize", tracees.len(), at.elapsed());
    // Every task is stopped: lock the network, TCP connections in repair mode.
    let sockets: Vec<(i32, i32)> = tasks
        .iter()
        .flat_map(|t| {
            t.fds
                .iter()
                .filter(|(_, kind, _)| kind.name == inet::KIND_NAME)
                .map(|(entry, _, _)| (t.host_pid, entry.fd))
        })
        .collect();
    if let Some(init) = tasks.first() {
        let at = Instant::now();
        *net = inet::NetFreeze::begin(init.host_pid, &sockets, early)?;
        phases.add(
            "network lock + TCP repair mode",
            sockets.len(),
            at.elapsed(),
        );
    }

    let manifest = Manifest {
        image_id,
        cr_version: env!("CARGO_PKG_VERSION").to_string(),
        container: container.name.clone(),
        config_toml: fs::read_to_string(container.dir.join("config.toml"))
            .ctx("reading", container.dir.join("config.toml"))?,
        created_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        arch: Arch::X86_64,
        page_size: PAGE_SIZE as u32,
        kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        pages_codec: match opts.compression {
            Compression::None => cr_formats::Codec::None,
            Compression::Zstd { .. } => cr_formats::Codec::Zstd,
        },
    };
    let records_path = cr_formats::layout::records_path(dir);
    let records_file = File::create(&records_path).ctx("creating", &records_path)?;
    let mut records =
        RecordWriter::new(BufWriter::with_capacity(1 << 20, records_file), &manifest)?;

    let host_to_ns: HashMap<i32, i32> = tasks
        .iter()
        .map(|t| (t.host_pid, t.status.pid_in_ns()))
        .collect();
    let mut files = FileTable::default();
    let mut shmem_objects = shmem::ShmemDump::default();
    let mut threads = 0;
    for task in &tasks {
        let pid = task.status.pid_in_ns();
        if let Some(exit_status) = task.zombie {
            records.write(&Record::Process(zombie_process(
                task,
                &host_to_ns,
                exit_status,
            )?))?;
            continue;
        }
        let mut task_tracees: Vec<&mut Tracee> = tracees
            .iter_mut()
            .filter(|t| task.tids.contains(&t.tid().as_raw()))
            .collect();
        let at = Instant::now();
        let process = collect_process(task, &host_to_ns, &mut task_tracees)?;
        records.write(&Record::Process(process.clone()))?;
        for tracee in task_tracees.iter_mut() {
            let mut thread = collect_thread(pid, tracee)?;
            if thread.creds.as_ref() == Some(&process.creds) {
                thread.creds = None;
            }
            records.write(&Record::Thread(thread))?;
            threads += 1;
        }
        phases.add("processes + threads", 1, at.elapsed());
        let at = Instant::now();
        match precopy.as_deref_mut() {
            Some(pc) => pc.dump_memory(task.host_pid, pid, &task.maps, &mut records, &mut pages)?,
            None => dump_memory(task, &mut records, &mut pages)?,
        }
        phases.add("memory", 0, at.elapsed());
        let at = Instant::now();
        shmem_objects.dump_task(
            task.host_pid,
            pid,
            &task.maps,
            &task.fds,
            &mut records,
            &mut pages,
        )?;
        phases.add("shared memory", 0, at.elapsed());
        files.dump(task, &mut records, phases)?;
    }
    if let Some(init) = tasks.first() {
        let at = Instant::now();
        let ipc =
            crate::dump::ipc::collect(init.host_pid).map_err(|e| Error::Invalid(e.to_string()))?;
        for record in ipc.into_records() {
            records.write(&record)?;
        }
        phases.add("ipc namespace", 0, at.elapsed());
        let at = Instant::now();
        let plan = crate::dump::mounts::survey(init.host_pid, &init.status)?;
        crate::dump::mounts::dump(init.host_pid, &plan, dir, &mut records)?;
        phases.add("mounts", 0, at.elapsed());
        let at = Instant::now();
        records.write(&Record::NetNamespace(netns::collect(init.host_pid)?))?;
        if let Some(nft) = netns::collect_nftables(init.host_pid)? {
            records.write(&Record::Nftables(nft))?;
        }
        phases.add("network namespace", 0, at.elapsed());
    }
    for space in time_namespaces(&tasks)? {
        records.write(&Record::TimeNamespace(space))?;
    }
    let at = Instant::now();
    records.finish()?;
    let (_, page_stats) = pages.finish()?;
    phases.add("records + page store finished", 0, at.elapsed());
    // Every task is stopped: the files match the memory just saved.
    phases.time("container files archived", || {
        crate::container::upper::archive(&container.dir.join("upper"), dir)
    })?;
    Ok((
        (page_stats.data_pages, page_stats.zero_pages),
        (tasks.len(), threads),
        pending,
    ))
}

fn inject_err(e: crate::inject::InjectError) -> Error {
    Error::Invalid(format!("seizing the container's tasks: {e}"))
}

fn collect_process(
    task: &Task,
    host_to_ns: &HashMap<i32, i32>,
    tracees: &mut [&mut Tracee],
) -> Result<Process> {
    let st = &task.status;
    let pid = st.pid_in_ns();
    let host = task.host_pid;
    let link = |name: &str| -> ByteString {
        fs::read_link(format!("/proc/{host}/{name}"))
            .map(|p| ByteString::from(p.to_string_lossy().as_ref()))
            .unwrap_or_else(|_| ByteString::from(""))
    };
    let stat = fs::read_to_string(format!("/proc/{host}/stat"))
        .map_err(|e| DumpError::proc(pid, "stat", e))?;
    let mmf = procfs::parse_stat_mm(&stat).map_err(|message| DumpError::Parse {
        pid,
        path: format!("/proc/{host}/stat").into(),
        message,
    })?;
    let auxv =
        fs::read(format!("/proc/{host}/auxv")).map_err(|e| DumpError::proc(pid, "auxv", e))?;
    let personality = fs::read_to_string(format!("/proc/{host}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let main = tracees
        .iter_mut()
        .find(|t| t.tid().as_raw() == host)
        .ok_or_else(|| Error::Invalid(format!("process {pid}: its main thread was not seized")))?;
    let mut rs = RemoteSyscall::new(main);
    let brk = rs.inject(libc::SYS_brk, [0; 6]).map_err(inject_err)? as u64;
    let mut scratch = RemoteScratch::new(&mut rs, 4096).map_err(inject_err)?;
    let mut sigactions = Vec::new();
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let act = scratch.rt_sigaction(sig, None).map_err(inject_err)?;
        if act.handler != 0 || act.flags != 0 || act.mask != 0 {
            sigactions.push(SigAction {
                signo: sig as u32,
                handler: act.handler,
                flags: act.flags,
                restorer: act.restorer,
                mask: act.mask,
            });
        }
    }
    // Parent-death signal (written to memory) and dumpable (returned).
    let at = scratch.addr();
    scratch
        .syscall()
        .inject(
            libc::SYS_prctl,
            [libc::PR_GET_PDEATHSIG as u64, at, 0, 0, 0, 0],
        )
        .map_err(inject_err)?;
    let mut word = [0u8; 4];
    scratch.read(0, &mut word).map_err(inject_err)?;
    let pdeath_sig = i32::from_ne_bytes(word);
    let dumpable = scratch
        .syscall()
        .inject(
            libc::SYS_prctl,
            [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0],
        )
        .map_err(inject_err)? as u32;
    let mut itimers = [Timer::default(); 3];
    for (which, timer) in itimers.iter_mut().enumerate() {
        let addr = scratch.addr();
        scratch
            .syscall()
            .inject(libc::SYS_getitimer, [which as u64, addr, 0, 0, 0, 0])
            .map_err(inject_err)?;
        let mut raw = [0u8; 32];
        scratch.read(0, &mut raw).map_err(inject_err)?;
        let word =
            |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        *timer = Timer {
            interval_ns: word(0) * 1_000_000_000 + word(1) * 1000,
            value_ns: word(2) * 1_000_000_000 + word(3) * 1000,
        };
    }
    let securebits = scratch
        .syscall()
        .inject(
            libc::SYS_prctl,
            [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
        )
        .map_err(inject_err)? as u32;
    let posix_timers = collect_posix_timers(&mut scratch, host, pid)?;
    scratch.close().map_err(inject_err)?;
    let shared_pending = main
        .peek_pending_signals(true)
        .map_err(inject_err)?
        .into_iter()
        .map(|s| Blob(s.siginfo))
        .collect();
    let mut rlimits = Vec::new();
    for resource in 0..16u32 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit with a null new limit only writes the old one into `lim`.
        let rc = unsafe { libc::prlimit(host, resource as _, std::ptr::null(), &mut lim) };
        if rc == 0 {
            rlimits.push(Rlimit {
                resource,
                cur: lim.rlim_cur,
                max: lim.rlim_max,
            });
        }
    }
    // Ids as the container sees them (its user namespace, if it has one).
    Ok(Process {
        pid,
        ppid: host_to_ns.get(&st.ppid).copied().unwrap_or(0),
        pgid: st.ns_pgid.last().copied().unwrap_or(0),
        sid: st.ns_sid.last().copied().unwrap_or(0),
        state: match (task.stopped_by, st.state) {
            (Some(signo), _) => TaskState::Stopped { signo },
            (None, 'T') => TaskState::Stopped {
                signo: libc::SIGSTOP,
            },
            _ => TaskState::Alive,
        },
        comm: ByteString::from(st.name.as_str()),
        exe: link("exe"),
        cwd: link("cwd"),
        root: link("root"),
        creds: credentials(host, st, securebits)?,
        umask: st.umask,
        personality,
        dumpable,
        pdeath_sig,
        child_subreaper: false,
        rlimits,
        mm: Some(MmState {
            start_code: mmf[0],
            end_code: mmf[1],
            start_stack: mmf[2],
            start_data: mmf[3],
            end_data: mmf[4],
            start_brk: mmf[5],
            brk,
            arg_start: mmf[6],
            arg_end: mmf[7],
            env_start: mmf[8],
            env_end: mmf[9],
            auxv: Blob(auxv),
            exe_file: link("exe"),
        }),
        sigactions,
        shared_pending,
        itimers: ITimers {
            real: itimers[0],
            virt: itimers[1],
            prof: itimers[2],
        },
        posix_timers,
    })
}

/// A task's credentials, ids as the container sees them (its user
/// namespace, if it has one).
fn credentials(host: i32, st: &TaskStatus, securebits: u32) -> Result<Credentials> {
    let uid_map = procfs::IdMap::read(host, "uid_map")?;
    let gid_map = procfs::IdMap::read(host, "gid_map")?;
    let ids = |v: [u32; 4], map: &procfs::IdMap| IdSet {
        real: map.to_inside(v[0]),
        effective: map.to_inside(v[1]),
        saved: map.to_inside(v[2]),
        fs: map.to_inside(v[3]),
    };
    Ok(Credentials {
        uid: ids(st.uid, &uid_map),
        gid: ids(st.gid, &gid_map),
        groups: st.groups.iter().map(|g| gid_map.to_inside(*g)).collect(),
        caps: CapSets {
            inheritable: st.cap_inh,
            permitted: st.cap_prm,
            effective: st.cap_eff,
            bounding: st.cap_bnd,
            ambient: st.cap_amb,
        },
        securebits,
        no_new_privs: st.no_new_privs,
    })
}

/// The POSIX timers of `/proc/HOST/timers`, with their time left and
/// interval (`timer_gettime`) and overrun (`timer_getoverrun`) injected
/// through `scratch`.
fn collect_posix_timers(
    scratch: &mut RemoteScratch<'_, '_>,
    host: i32,
    pid: i32,
) -> Result<Vec<PosixTimer>> {
    let path = format!("/proc/{host}/timers");
    let text = fs::read_to_string(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    let listed = procfs::parse_proc_timers(&text).map_err(|message| DumpError::Parse {
        pid,
        path: path.clone().into(),
        message,
    })?;
    let mut timers = Vec::with_capacity(listed.len());
    for t in listed {
        let at = scratch.addr();
        scratch
            .syscall()
            .inject(libc::SYS_timer_gettime, [t.id as u64, at, 0, 0, 0, 0])
            .map_err(inject_err)?;
        let mut raw = [0u8; 32];
        scratch.read(0, &mut raw).map_err(inject_err)?;
        let word =
            |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let overrun = scratch
            .syscall()
            .inject(libc::SYS_timer_getoverrun, [t.id as u64, 0, 0, 0, 0, 0])
            .map_err(inject_err)? as i32;
        let notify_tid = if t.notify & libc::SIGEV_THREAD_ID != 0 {
            procfs::read_status(t.target)
                .map(|s| s.pid_in_ns())
                .map_err(Error::from)?
        } else {
            0
        };
        timers.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            signo: t.signo,
            value: t.value,
            notify_tid,
            timer: Timer {
                interval_ns: word(0) * 1_000_000_000 + word(1),
                value_ns: word(2) * 1_000_000_000 + word(3),
            },
            overrun,
        });
    }
    Ok(timers)
}

fn collect_thread(pid: i32, tracee: &mut Tracee) -> Result<Thread> {
    let tid = tracee.tid().as_raw();
    let regs = tracee.collect_regs().map_err(inject_err)?;
    let rseq = tracee.get_rseq_config().map_err(inject_err)?;
    // Queued for this thread, then those the seize or an injection
    // dequeued (kept by the tracee for re-delivery; still theirs if the
    // container is left running).
    let pending = tracee
        .peek_pending_signals(false)
        .map_err(inject_err)?
        .into_iter()
        .chain(tracee.pending_signals().iter().cloned())
        .map(|s| Blob(s.siginfo))
        .collect();
    let user = regs.user_regs();
    let syscall = match user.rax as i64 {
        -514..=-512 => SyscallRestart::Restart { nr: user.orig_rax },
        -516 => SyscallRestart::RestartBlock { nr: user.orig_rax },
        _ => SyscallRestart::None,
    };
    let mut rs = RemoteSyscall::new(tracee);
    let altstack = rs.get_sigaltstack().map_err(inject_err)?;
    let mut scratch = RemoteScratch::new(&mut rs, 4096).map_err(inject_err)?;
    let addr = scratch.addr();
    scratch
        .syscall()
        .inject(
            libc::SYS_prctl,
            [libc::PR_GET_TID_ADDRESS as u64, addr, 0, 0, 0, 0],
        )
        .map_err(inject_err)?;
    let mut word = [0u8; 8];
    scratch.read(0, &mut word).map_err(inject_err)?;
    let securebits = scratch
        .syscall()
        .inject(
            libc::SYS_prctl,
            [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
        )
        .map_err(inject_err)? as u32;
    let mut param = [0u8; 4];
    let at = scratch.addr();
    scratch
        .syscall()
        .inject(libc::SYS_sched_getparam, [0, at, 0, 0, 0, 0])
        .map_err(inject_err)?;
    scratch.read(0, &mut param).map_err(inject_err)?;
    scratch.close().map_err(inject_err)?;
    let status = procfs::read_status(tid)?;
    let (mut head, mut len) = (0u64, 0usize);
    // SAFETY: get_robust_list writes one pointer and one length into the
    // two locals passed by address.
    unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        );
    }
    // SAFETY: sched_getscheduler and getpriority take plain integers.
    let (policy, nice) = unsafe {
        (
            libc::sched_getscheduler(tid),
            libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
        )
    };
    let comm = fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
    Ok(Thread {
        pid,
        tid: status.pid_in_ns(),
        comm: ByteString::from(comm.trim_end()),
        regs: Blob(
            regs_to_array(&user)
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect(),
        ),
        fs_base: user.fs_base,
        gs_base: user.gs_base,
        xsave: Blob(regs.xstate),
        sigmask: regs.sigmask,
        pending,
        sigaltstack: SigAltStack {
            sp: altstack.sp,
            flags: altstack.flags,
            size: altstack.size,
        },
        clear_child_tid: u64::from_ne_bytes(word),
        robust_list: RobustList {
            head,
            len: len as u64,
        },
        rseq: (rseq.rseq_abi_pointer != 0).then_some(Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            sig: rseq.signature,
        }),
        sched: Sched {
            policy: policy.max(0) as u32,
            priority: u32::from_ne_bytes(param),
            nice,
        },
        // Dropped by the caller when equal to the process's.
        creds: Some(credentials(tid, &status, securebits)?),
        syscall,
    })
}

/// VMA records and the pages restore needs.
fn dump_memory<W: Write, P: Write>(
    task: &Task,
    records: &mut RecordWriter<W>,
    pages: &mut PageWriter<P>,
) -> Result<()> {
    let pid = task.status.pid_in_ns();
    let pagemap_path = format!("/proc/{}/pagemap", task.host_pid);
    let pagemap = File::open(&pagemap_path).map_err(|e| DumpError::proc(pid, &pagemap_path, e))?;
    let mut buf = Vec::new();
    for (m, kind) in &task.maps {
        records.write(&Record::Vma(mm::vma_record(pid, m, kind.clone())))?;
        for (addr, n) in mm::dirty_runs(&pagemap, pid, m, kind)? {
            // Large runs go through in slices that keep the buffer bounded.
            let mut done = 0;
            while done < n {
                let take = (n - done).min(1024);
                buf.resize((take * PAGE_SIZE) as usize, 0);
                let at = addr + done * PAGE_SIZE;
                mm::read_pages(task.host_pid, at, &mut buf)?;
                pages.write_pages(PageOwner::Mm { pid }, at, &buf)?;
                done += take;
            }
        }
    }
    Ok(())
}

/// A descriptor already recorded: host pid, fd number, file id.
type SeenFd = (i32, i32, u64);

/// Open file descriptions seen so far, so descriptors that share one (after
/// dup or fork) share one File record.
#[derive(Default)]
struct FileTable {
    next_id: u64,
    /// (dev, ino) -> one descriptor of each open file description seen on
    /// it, in kcmp order (all anonymous-inode files share one inode, so a
    /// group may be large: lookups are binary searches, not scans)
    seen: HashMap<(u64, u64), Vec<SeenFd>>,
    pipes_done: Vec<u64>,
    /// Locks written (flock and OFD locks show in every fd of their file).
    locks_done: std::collections::HashSet<String>,
}

impl FileTable {
    fn dump<W: Write>(
        &mut self,
        task: &Task,
        records: &mut RecordWriter<W>,
        phases: &mut Phases,
    ) -> Result<()> {
        let pid = task.status.pid_in_ns();
        for (entry, kind, meta) in &task.fds {
            let at = Instant::now();
            let key = (
                std::os::unix::fs::MetadataExt::dev(meta),
                std::os::unix::fs::MetadataExt::ino(meta),
            );
            let group = self.seen.entry(key).or_default();
            let found = find_file(group, task.host_pid, entry.fd);
            let id = match found {
                Ok(at) => group[at].2,
                Err(at) => {
                    self.next_id += 1;
                    let id = self.next_id;
                    let file_kind = files::collect(task.host_pid, entry, kind, meta)?;
                    if let FileKind::Pipe { pipe, .. } | FileKind::Fifo { pipe, .. } = &file_kind {
                        if !self.pipes_done.contains(pipe) {
                            self.pipes_done.push(*pipe);
                            records.write(&Record::PipeData(pipe_data(
                                task.host_pid,
                                entry.fd,
                                *pipe,
                            )?))?;
                        }
                    }
                    records.write(&Record::File(FileRecord {
                        id,
                        flags: entry.info.flags & !(libc::O_CLOEXEC as u32),
                        owner: None,
                        kind: file_kind,
                    }))?;
                    if let Some(group) = self.seen.get_mut(&key) {
                        group.insert(at, (task.host_pid, entry.fd, id));
                    }
                    id
                }
            };
            for lock in shmem::fd_locks(pid, entry, id) {
                let owner = match lock.kind {
                    cr_formats::schema::LockKind::Posix => lock.pid,
                    _ => 0,
                };
                let key = format!(
                    "{owner} {:?}",
                    cr_formats::schema::FileLock { pid: 0, ..lock }
                );
                if self.locks_done.insert(key) {
                    records.write(&Record::FileLock(lock))?;
                }
            }
            records.write(&Record::Fd(FdRecord {
                pid,
                fd: entry.fd,
                cloexec: entry.info.flags & libc::O_CLOEXEC as u32 != 0,
                file: id,
            }))?;
            phases.add(&format!("files: {}", kind.name), 1, at.elapsed());
        }
        Ok(())
    }
}

/// Where the open file description of `fd` of `pid` is in `group` (kept in
/// kcmp order): `Ok(index)` if a descriptor of it is there, else `Err(index)`
/// where it belongs. If the kernel cannot order two files, the group is
/// searched one by one and a new file goes at the end (still correct,
/// only slower).
fn find_file(group: &[SeenFd], pid: i32, fd: i32) -> std::result::Result<usize, usize> {
    let mut unordered = false;
    let found = group.binary_search_by(|(p, f, _)| {
        file_order(*p, *f, pid, fd).unwrap_or_else(|| {
            unordered = true;
            std::cmp::Ordering::Less
        })
    });
    if !unordered {
        return found;
    }
    group
        .iter()
        .position(|(p, f, _)| file_order(*p, *f, pid, fd) == Some(std::cmp::Ordering::Equal))
        .ok_or(group.len())
}

/// How the kernel orders the open file descriptions behind two descriptors
/// (`kcmp(KCMP_FILE)`: equal when they are the same description); `None`
/// when it cannot tell.
fn file_order(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Option<std::cmp::Ordering> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp compares two kernel objects named by integers.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    match rc {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// The bytes waiting in a pipe, read without consuming them: a new read end
/// is opened through /proc and `tee(2)` copies the buffer into a pipe of ours.
fn pipe_data(host_pid: i32, fd: i32, pipe: u64) -> Result<PipeData> {
    let path = format!("/proc/{host_pid}/fd/{fd}");
    let source = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .ctx("opening pipe", &path)?;
    // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity.
    let capacity = unsafe { libc::fcntl(source.as_raw_fd(), libc::F_GETPIPE_SZ) }.max(0) as u32;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| Error::sys("creating a pipe", e))?;
    // SAFETY: F_SETPIPE_SZ resizes our own pipe; a failure leaves it as it was.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as libc::c_int) };
    // SAFETY: tee copies between two pipe fds we hold; no memory is passed.
    let n = unsafe {
        libc::tee(
            source.as_raw_fd(),
            w.as_raw_fd(),
            capacity as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let mut data = Vec::new();
    if n > 0 {
        drop(w);
        File::from(r)
            .read_to_end(&mut data)
            .ctx("reading pipe copy", &path)?;
    } else {
        drop((r, w));
    }
    Ok(PipeData {
        pipe,
        capacity,
        data: Blob(data),
    })
}

/// One process dumped into memory by [`dump_process`].
#[derive(Debug, Clone)]
pub struct DumpedProcess {
    pub process: Process,
    pub threads: Vec<Thread>,
    pub vmas: Vec<cr_formats::schema::Vma>,
    /// The pages restore needs: (address, contents), a whole number of pages each.
    pub pages: Vec<(u64, Vec<u8>)>,
}

/// Dumps one single-threaded process outside any container (tests and
/// tools): `tracee` is its seized, stopped main thread. Descriptors are not
/// collected.
pub fn dump_process(host_pid: i32, tracee: &mut Tracee) -> Result<DumpedProcess> {
    dump_threads(host_pid, std::slice::from_mut(tracee))
}

/// [`dump_process`] for a process with any number of threads: `tracees`
/// holds every thread, seized and stopped, the leader first.
pub fn dump_threads(host_pid: i32, tracees: &mut [Tracee]) -> Result<DumpedProcess> {
    let status = procfs::read_status(host_pid)?;
    let pid = status.pid_in_ns();
    let mut maps = Vec::new();
    for m in procfs::read_maps(host_pid)? {
        let kind = mm::classify(pid, &status.name, &m)?;
        maps.push((m, kind));
    }
    let task = Task {
        host_pid,
        tids: procfs::read_tids(host_pid)?,
        status,
        fds: Vec::new(),
        maps,
        stopped_by: None,
        zombie: None,
        time_ns: None,
    };
    let mut refs: Vec<&mut Tracee> = tracees.iter_mut().collect();
    let process = collect_process(&task, &HashMap::new(), &mut refs)?;
    let mut threads = Vec::with_capacity(tracees.len());
    for tracee in tracees.iter_mut() {
        let mut thread = collect_thread(pid, tracee)?;
        if thread.creds.as_ref() == Some(&process.creds) {
            thread.creds = None;
        }
        threads.push(thread);
    }
    let pagemap_path = format!("/proc/{host_pid}/pagemap");
    let pagemap = File::open(&pagemap_path).map_err(|e| DumpError::proc(pid, &pagemap_path, e))?;
    let mut vmas = Vec::new();
    let mut pages = Vec::new();
    for (m, kind) in &task.maps {
        vmas.push(mm::vma_record(pid, m, kind.clone()));
        for (addr, n) in mm::dirty_runs(&pagemap, pid, m, kind)? {
            let mut buf = vec![0u8; (n * PAGE_SIZE) as usize];
            mm::read_pages(host_pid, addr, &mut buf)?;
            pages.push((addr, buf));
        }
    }
    Ok(DumpedProcess {
        process,
        threads,
        vmas,
        pages,
    })
}

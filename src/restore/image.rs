//! A checkpoint image read back for restore: every record verified (frame
//! checksums and the trailer) and grouped by process before anything of the
//! container is built. The page store is not read here: the rebuild streams
//! it chunk by chunk, verifying each (restore::tree), and a damaged chunk
//! kills the half-built tree. A damaged or truncated image is never
//! half-restored.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use cr_formats::schema::{
    DeletedFile, Fd, File as FileRecord, FileId, FileLock, Manifest, Mount, PipeData, PipeId,
    Process, Record, ShmemObject, Thread, Uts, Vma,
};

use crate::container::config::ContainerConfig;
use crate::error::{Error, IoContext, Result};

/// One process of the image with everything that names it.
#[derive(Debug, Clone)]
pub struct ProcessImage {
    pub process: Process,
    pub threads: Vec<Thread>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
}

#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub manifest: Manifest,
    pub config: ContainerConfig,
    /// By PID inside the container, ascending.
    pub processes: BTreeMap<i32, ProcessImage>,
    pub files: HashMap<FileId, FileRecord>,
    pub pipes: HashMap<PipeId, PipeData>,
    /// File locks, in image order.
    pub locks: Vec<FileLock>,
    /// Shared anonymous memory objects and memfds, by id.
    pub shmem: HashMap<u64, ShmemObject>,
    /// Files deleted while open or mapped, by id.
    pub deleted: HashMap<u64, DeletedFile>,
    /// The objects of the container's IPC namespace.
    pub ipc: crate::dump::ipc::IpcObjects,
    /// The container's network namespace (images before it was recorded
    /// have none).
    pub netns: Option<cr_formats::schema::NetNamespace>,
    /// The namespace's own nftables tables (since format 1.4).
    pub nftables: Option<cr_formats::schema::Nftables>,
    /// The image directory: the page store is streamed from it (and
    /// verified chunk by chunk) while the processes are rebuilt.
    pub dir: std::path::PathBuf,
    /// Mounts to rebuild, by ascending index (restore::mounts).
    pub mounts: Vec<Mount>,
    /// The UTS names at checkpoint (images before format 1.2 have none).
    pub uts: Option<Uts>,
    /// Time namespaces the container's processes made (restore::timens).
    pub time_namespaces: Vec<cr_formats::schema::TimeNamespace>,
}

impl LoadedImage {
    /// Reads and verifies the records (every checksum and the trailer).
    pub fn load(dir: &Path) -> Result<Self> {
        let records_path = cr_formats::layout::records_path(dir);
        let file = File::open(&records_path).ctx("opening checkpoint image", &records_path)?;
        let image = cr_formats::read_records(BufReader::new(file)).map_err(|e| {
            Error::Invalid(format!("checkpoint image {}: {e}", records_path.display()))
        })?;
        let config: ContainerConfig =
            toml::from_str(&image.manifest.config_toml).map_err(|e| Error::Config {
                path: records_path.clone(),
                message: format!("the container config in the image: {}", e.message()),
            })?;
        let mut processes: BTreeMap<i32, ProcessImage> = BTreeMap::new();
        let mut files = HashMap::new();
        let mut pipes = HashMap::new();
        let mut locks = Vec::new();
        let mut shmem = HashMap::new();
        let mut deleted = HashMap::new();
        let mut ipc = crate::dump::ipc::IpcObjects::default();
        let mut mounts = Vec::new();
        let mut uts = None;
        let mut netns = None;
        let mut nftables = None;
        let mut time_namespaces = Vec::new();
        let missing = |what: &str, pid: i32| {
            Error::Invalid(format!(
                "checkpoint image {}: {what} of process {pid} comes before its process record",
                dir.display()
            ))
        };
        for entry in image.entries {
            match entry.record {
                Record::Manifest(_) => {}
                Record::FileLock(l) => locks.push(l),
                Record::Mount(m) => mounts.push(m),
                Record::Uts(u) => uts = Some(u),
                Record::Shmem(o) => {
                    shmem.insert(o.id, o);
                }
                Record::DeletedFile(d) => {
                    deleted.insert(d.id, d);
                }
                Record::Process(p) => {
                    processes.insert(
                        p.pid,
                        ProcessImage {
                            process: p,
                            threads: Vec::new(),
                            vmas: Vec::new(),
                            fds: Vec::new(),
                        },
                    );
                }
                Record::Thread(t) => processes
                    .get_mut(&t.pid)
                    .ok_or_else(|| missing("a thread", t.pid))?
                    .threads
                    .push(t),
                Record::Vma(v) => processes
                    .get_mut(&v.pid)
                    .ok_or_else(|| missing("a mapping", v.pid))?
                    .vmas
                    .push(v),
                Record::Fd(f) => processes
                    .get_mut(&f.pid)
                    .ok_or_else(|| missing("a descriptor", f.pid))?
                    .fds
                    .push(f),
                Record::File(f) => {
                    files.insert(f.id, f);
                }
                Record::PipeData(p) => {
                    pipes.insert(p.pipe, p);
                }
                Record::SysvShm(s) => ipc.shm.push(s),
                Record::SysvSem(s) => ipc.sem.push(s),
                Record::SysvMsgQueue(q) => ipc.msg.push(q),
                Record::PosixMqueue(q) => ipc.mqueues.push(q),
                Record::NetNamespace(n) => netns = Some(n),
                Record::Nftables(n) => nftables = Some(n),
                Record::TimeNamespace(t) => time_namespaces.push(t),
            }
        }
        mounts.sort_by_key(|m: &Mount| m.index);
        if !processes.contains_key(&1) {
            return Err(Error::Invalid(format!(
                "checkpoint image {} has no PID 1",
                dir.display()
            )));
        }
        Ok(LoadedImage {
            manifest: image.manifest,
            config,
            processes,
            files,
            pipes,
            locks,
            shmem,
            deleted,
            ipc,
            netns,
            nftables,
            dir: dir.to_path_buf(),
            mounts,
            uts,
            time_namespaces,
        })
    }

    /// PIDs of the children of `pid`, ascending.
    pub fn children_of(&self, pid: i32) -> Vec<i32> {
        self.processes
            .values()
            .filter(|p| p.process.ppid == pid && p.process.pid != pid)
            .map(|p| p.process.pid)
            .collect()
    }
}

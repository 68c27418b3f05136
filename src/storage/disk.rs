//! A container's disk as the engine uses it: created from an image, attached
//! for a start, released after, and reached by `cr disk`, checkpoint and
//! migration through [`ContainerDisk`].
//!
//! ```text
//! create:   Chain::create(disk/chain, SIZE)
//!           mkfs.ext4 -d IMAGE/rootfs into a sparse file of SIZE bytes
//!           import its data extents (SEEK_DATA) cluster by cluster; flush
//! start:    spawn cr __disk-serve, LOOP_CONFIGURE its flat file (direct
//!           I/O, autoclear); PID 1 mounts /dev/loopN as ext4 on rootfs/
//!           (if the filesystem is smaller than the disk: e2fsck + resize2fs
//!           first, offline)
//! stop:     PID 1 gone -> its mount namespace and the ext4 mount go ->
//!           autoclear detaches the loop device -> the server's last handle
//!           closes -> {"op":"stop"}: flush, unmount, exit
//! snapshot: syncfs(/proc/PID1/root); freeze cgroup; syncfs; switch the
//!           chain's top (server); thaw
//! grow:     chain grows (server); stat the flat file (FUSE size);
//!           LOOP_SET_CAPACITY; EXT4_IOC_RESIZE_FS on the root (needs
//!           CAP_SYS_RESOURCE, else the filesystem grows at the next start)
//! dirty:    mark() / dirty_since(mark) / read_clusters(..): the incremental
//!           copy primitives for migration, over the control socket
//! ```

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cr_formats::disk::{check_chain, check_delta, Chain, FsDir, DEFAULT_CLUSTER_SIZE};
use nix::errno::Errno;
use nix::unistd::Pid;

use super::control::{self, CheckView, DeltaView, Reply, Request, Shared};
use super::loopdev::{self, LoopDevice, LoopOptions};
use super::serve::{self, ServerHealth};
use super::DiskPaths;
use crate::container::state::Status;
use crate::container::Container;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::host::Host;

/// The smallest disk cr makes: ext4 with its journal needs room.
pub const MIN_DISK_SIZE: u64 = 64 << 20;
/// The filesystem's block size (and the loop device's logical block size).
pub const FS_BLOCK: u32 = 4096;
/// `_IOW('f', 16, __u64)`: ext4 online resize to a block count.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

fn disk_err(e: cr_formats::disk::DiskError) -> Error {
    Error::Disk(Box::new(e))
}

/// Creates the disk of a new container: a chain of `size` bytes holding a
/// fresh ext4 with the image's tree in it.
pub fn create(container_dir: &Path, size: u64, rootfs: &Path) -> Result<()> {
    if size < MIN_DISK_SIZE || size % u64::from(FS_BLOCK) != 0 {
        return Err(Error::Invalid(format!(
            "a disk of {size} bytes: give at least 64M, a multiple of 4K"
        )));
    }
    let paths = DiskPaths::new(container_dir);
    fs::create_dir_all(&paths.chain).ctx("creating", &paths.chain)?;
    let mut chain = Chain::create(FsDir::new(&paths.chain), size, DEFAULT_CLUSTER_SIZE, "base")
        .map_err(disk_err)?;
    let scratch = paths.dir.join("mkfs.img");
    let result = make_filesystem(&scratch, size, rootfs)
        .and_then(|()| import_sparse(&scratch, &mut chain))
        .and_then(|()| chain.flush().map_err(disk_err));
    let _ = fs::remove_file(&scratch);
    result
}

/// mkfs.ext4 with the tree of `rootfs` into a sparse file of `size` bytes.
fn make_filesystem(file: &Path, size: u64, rootfs: &Path) -> Result<()> {
    File::create(file)
        .and_then(|f| f.set_len(size))
        .ctx("creating", file)?;
    // Inode tables and journal zeroed now (a regular file gets holes for
    // that), so the kernel's lazy init thread writes nothing later.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", "cr-root", "-E"])
        .arg("lazy_itable_init=0,lazy_journal_init=0")
        .arg("-d")
        .arg(rootfs)
        .arg(file)
        .output()
        .ctx("running mkfs.ext4 (apt-get install e2fsprogs) for", file)?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "mkfs.ext4 -d {} failed ({}): {}",
            rootfs.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Copies every non-zero cluster of the data extents of `file` into `chain`.
fn import_sparse(file: &Path, chain: &mut Chain<FsDir>) -> Result<()> {
    let f = File::open(file).ctx("opening", file)?;
    let size = chain.virtual_size();
    let cs = u64::from(chain.cluster_size());
    let mut buf = vec![0u8; cs as usize];
    let mut pos = 0u64;
    let mut next_cluster = 0u64;
    while pos < size {
        let Some(data) = seek(&f, pos, libc::SEEK_DATA, file)? else {
            break;
        };
        let hole = seek(&f, data, libc::SEEK_HOLE, file)?.unwrap_or(size);
        let first = (data / cs).max(next_cluster);
        let last = hole.div_ceil(cs);
        for v in first..last {
            let offset = v * cs;
            let n = cs.min(size - offset) as usize;
            buf[..n].fill(0);
            let mut done = 0;
            while done < n {
                let r = f
                    .read_at(&mut buf[done..n], offset + done as u64)
                    .ctx("reading", file)?;
                if r == 0 {
                    break;
                }
                done += r;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                chain.write_at(offset, &buf[..n]).map_err(disk_err)?;
            }
        }
        next_cluster = last;
        pos = hole.max(last * cs);
    }
    Ok(())
}

/// lseek with SEEK_DATA/SEEK_HOLE; None past the last data (ENXIO).
fn seek(f: &File, pos: u64, whence: libc::c_int, path: &Path) -> Result<Option<u64>> {
    // SAFETY: lseek on an fd we own; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    match Errno::result(r) {
        Ok(off) => Ok(Some(off as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(Error::sys(format!("seeking in {}", path.display()), e)),
    }
}

/// The disk of a container being started: its server and loop device.
#[derive(Debug)]
pub struct AttachedDisk {
    pub server: Pid,
    pub device: LoopDevice,
}

/// Starts the disk's server and attaches its flat file to a loop device.
/// Run by the supervisor before PID 1 exists.
pub fn attach(host: &Host, name: &str, container_dir: &Path) -> Result<AttachedDisk> {
    let paths = DiskPaths::new(container_dir);
    match serve::health(&paths) {
        ServerHealth::Stopped => {}
        ServerHealth::Dead { .. } => serve::clear_dead(&paths),
        // Left by a supervisor that died: the container is stopped, so
        // nothing uses it any more.
        ServerHealth::Running { .. } => serve::stop(&paths)?,
    }
    let server = serve::spawn(host, name, &paths)?;
    let opts = LoopOptions {
        direct_io: true,
        read_only: false,
        autoclear: true,
        block_size: FS_BLOCK,
    };
    match loopdev::attach(&paths.file, opts) {
        Ok(device) => Ok(AttachedDisk { server, device }),
        Err(e) => {
            let _ = serve::stop(&paths);
            serve::reap(server);
            Err(e)
        }
    }
}

/// Grows the filesystem on `device` (not mounted) to the device's size if it
/// is smaller: what a `cr disk grow` that could not resize online left.
pub fn grow_filesystem_offline(device: &Path) -> Result<bool> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(device)
        .output()
        .ctx("running dumpe2fs on", device)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let (Some(blocks), Some(block_size)) = (field("Block count:"), field("Block size:")) else {
        return Err(Error::Invalid(format!(
            "dumpe2fs -h {} shows no block count: {}",
            device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    if blocks * block_size >= loopdev::device_size(device)? {
        return Ok(false);
    }
    for (tool, args) in [("e2fsck", &["-f", "-p"][..]), ("resize2fs", &[][..])] {
        let out = Command::new(tool)
            .args(args)
            .arg(device)
            .output()
            .ctx(&format!("running {tool} on"), device)?;
        // e2fsck: 1 means "errors corrected", which -p may do.
        let ok = out.status.success() || (tool == "e2fsck" && out.status.code() == Some(1));
        if !ok {
            return Err(Error::Invalid(format!(
                "{tool} {} failed ({}): {}",
                device.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(true)
}

/// Stops the server of a container whose PID 1 is gone (no-op without one).
pub fn release(container_dir: &Path) -> Result<()> {
    serve::stop(&DiskPaths::new(container_dir))
}

/// What a consistent snapshot took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotTaken {
    /// The delta holding the disk as it was: `cr disk export --snapshot`.
    pub snapshot: String,
    /// The new writable top.
    pub top: String,
    /// How long the container was frozen for it (zero when it was already
    /// frozen or not running).
    pub frozen: Duration,
    /// How long the chain switch took in the server.
    pub switch: Duration,
}

/// What `cr disk grow` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grown {
    pub size: u64,
    /// The loop device and its new size, when the container runs.
    pub device: Option<(PathBuf, u64)>,
    /// Whether ext4 was grown online; else at the next start.
    pub filesystem_online: bool,
}

/// A container's disk, reached through its server when it runs.
pub struct ContainerDisk {
    container: Container,
    paths: DiskPaths,
}

impl ContainerDisk {
    pub fn open(container: &Container) -> Result<Self> {
        if container.config.disk.is_none() {
            return Err(Error::Invalid(format!(
                "container {:?} has no disk (its root is an overlay); create it with --disk SIZE",
                container.name
            )));
        }
        Ok(ContainerDisk {
            container: container.clone(),
            paths: DiskPaths::new(&container.dir),
        })
    }

    pub fn paths(&self) -> &DiskPaths {
        &self.paths
    }

    pub fn health(&self) -> ServerHealth {
        serve::health(&self.paths)
    }

    /// Runs `req` on the chain: through the server when one runs, else in
    /// this process under the chain's lock.
    pub fn request(&self, req: &Request, data: &mut Vec<u8>) -> Result<Reply> {
        match self.health() {
            ServerHealth::Running { .. } => {
                control::call(&self.paths.socket, req, data, serve::call_timeout(req))
            }
            ServerHealth::Dead { pid } => Err(self.dead(pid)),
            ServerHealth::Stopped => {
                if self.container.status()?.0 != Status::Stopped {
                    return Err(Error::Invalid(format!(
                        "container {:?} runs but its disk server does not",
                        self.container.name
                    )));
                }
                let _lock = serve::lock_chain(&self.paths)?;
                if *req == Request::Check {
                    return Ok(Reply::Check(
                        check_chain(&FsDir::new(&self.paths.chain)).into(),
                    ));
                }
                let chain = Chain::open(FsDir::new(&self.paths.chain)).map_err(disk_err)?;
                let shared = Shared::new(chain, self.paths.chain.clone());
                control::handle(&shared, req, data)
            }
        }
    }

    fn dead(&self, pid: i32) -> Error {
        let name = &self.container.name;
        Error::Invalid(format!(
            "the disk server of {name:?} (pid {pid}) died; stop the container (`cr stop {name}`) and run `cr disk check {name}`"
        ))
    }

    /// The container's root, when it runs (and its server is alive).
    fn running_root(&self) -> Result<Option<(Status, File)>> {
        if let ServerHealth::Dead { pid } = self.health() {
            return Err(self.dead(pid));
        }
        let (status, pid) = self.container.status()?;
        let Some(pid) = pid else { return Ok(None) };
        let path = PathBuf::from(format!("/proc/{pid}/root"));
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)
            .ctx("opening the container's root", &path)?;
        Ok(Some((status, root)))
    }

    /// A consistent snapshot: the filesystem synced, the container frozen
    /// while the chain switches to a new top (and while syncing again).
    pub fn snapshot(&self, label: &str) -> Result<SnapshotTaken> {
        let Some((status, root)) = self.running_root()? else {
            return self.switch(label, Duration::ZERO);
        };
        // Most dirty data goes out before the freeze, so the freeze is short.
        syncfs(&root)?;
        if status == Status::Frozen {
            return self.snapshot_frozen(label);
        }
        let cgroup = self.container.cgroup()?;
        cgroup.freeze()?;
        let start = Instant::now();
        let taken = syncfs(&root).and_then(|()| self.switch(label, Duration::ZERO));
        let frozen = start.elapsed();
        let thawed = cgroup.thaw();
        let mut taken = taken?;
        thawed?;
        taken.frozen = frozen;
        Ok(taken)
    }

    /// A snapshot of a container that is frozen now (a checkpoint): syncfs
    /// and the switch, nothing else. The disk then matches the memory.
    pub fn snapshot_frozen(&self, label: &str) -> Result<SnapshotTaken> {
        if let Some((_, root)) = self.running_root()? {
            syncfs(&root)?;
        }
        self.switch(label, Duration::ZERO)
    }

    fn switch(&self, label: &str, frozen: Duration) -> Result<SnapshotTaken> {
        let req = Request::Snapshot {
            label: label.to_string(),
        };
        match self.request(&req, &mut Vec::new())? {
            Reply::Snapshot {
                snapshot,
                top,
                micros,
            } => Ok(SnapshotTaken {
                snapshot,
                top,
                frozen,
                switch: Duration::from_micros(micros),
            }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Puts the disk back as snapshot `snapshot` (a delta id as
    /// [`SnapshotTaken::snapshot`] names it) holds it, dropping what was
    /// written since: what `cr restore` of a checkpoint does, so the files
    /// match the memory. The container must be stopped.
    pub fn revert(&self, snapshot: &str) -> Result<()> {
        let name = &self.container.name;
        if self.container.status()?.0 != Status::Stopped || self.health() != ServerHealth::Stopped {
            return Err(Error::Invalid(format!(
                "the disk of {name:?} can only be reverted while the container is stopped"
            )));
        }
        let _lock = serve::lock_chain(&self.paths)?;
        let mut chain = Chain::open(FsDir::new(&self.paths.chain)).map_err(disk_err)?;
        let id = chain
            .manifest()
            .deltas
            .iter()
            .find(|d| d.id.to_string() == snapshot)
            .map(|d| d.id)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the disk of {name:?} no longer has snapshot {snapshot} (merged or removed since the checkpoint); \
                     the checkpoint's memory cannot be matched with its files"
                ))
            })?;
        chain
            .revert_to(id, &format!("restored from snapshot {snapshot}"))
            .map_err(disk_err)?;
        Ok(())
    }

    /// Grows the disk; online when the container runs.
    pub fn grow(&self, size: u64) -> Result<Grown> {
        if size % u64::from(FS_BLOCK) != 0 {
            return Err(Error::Invalid(format!(
                "a disk size of {size} bytes is not a multiple of 4K"
            )));
        }
        let req = Request::Grow { size };
        match self.request(&req, &mut Vec::new())? {
            Reply::Done => {}
            other => return Err(unexpected(&req, &other)),
        }
        // The config says the disk's size (a migration's destination holds
        // the chain to it).
        let mut config = self.container.config.clone();
        config.disk = Some(crate::container::config::DiskConfig { size });
        config.save(&self.container.dir.join("config.toml"))?;
        let Some((_, root)) = self.running_root()? else {
            return Ok(Grown {
                size,
                device: None,
                filesystem_online: false,
            });
        };
        // A stat refreshes the size the kernel holds for the FUSE file,
        // which LOOP_SET_CAPACITY reads.
        fs::metadata(&self.paths.file).ctx("refreshing the size of", &self.paths.file)?;
        let device = loopdev::devices_backed_by(&self.paths.file)
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no loop device serves {}",
                    self.paths.file.display()
                ))
            })?;
        loopdev::set_capacity(&device)?;
        let device_size = loopdev::device_size(&device)?;
        let blocks = device_size / u64::from(FS_BLOCK);
        // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count)
        // through the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(root.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) };
        let filesystem_online = match Errno::result(rc) {
            Ok(_) => true,
            // No CAP_SYS_RESOURCE (this host: see KERNEL.md): the
            // supervisor grows it offline at the next start.
            Err(Errno::EPERM) => false,
            Err(e) => {
                return Err(Error::sys(
                    format!("growing the container's ext4 to {blocks} blocks"),
                    e,
                ))
            }
        };
        Ok(Grown {
            size,
            device: Some((device, device_size)),
            filesystem_online,
        })
    }

    /// The chain's deltas, bottom first.
    pub fn deltas(&self) -> Result<Vec<DeltaView>> {
        match self.request(&Request::List, &mut Vec::new())? {
            Reply::List { deltas } => Ok(deltas),
            other => Err(unexpected(&Request::List, &other)),
        }
    }

    /// Folds every delta above `delta` (an id) into it, online: undoes the
    /// snapshots taken since `delta` was the top. Returns how many deltas
    /// went.
    pub fn merge_into(&self, delta: &str) -> Result<u32> {
        let req = Request::MergeInto {
            delta: delta.to_string(),
        };
        match self.request(&req, &mut Vec::new())? {
            Reply::Merged { removed, .. } => Ok(removed),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Closes the current write generation: what is written from now on is
    /// in [`ContainerDisk::dirty_since`] of the returned mark.
    pub fn mark(&self) -> Result<u32> {
        match self.request(&Request::Mark, &mut Vec::new())? {
            Reply::Mark { mark } => Ok(mark),
            other => Err(unexpected(&Request::Mark, &other)),
        }
    }

    /// The virtual clusters written after `mark` (0: every allocated one).
    pub fn dirty_since(&self, mark: u32) -> Result<Vec<u64>> {
        let req = Request::DirtySince { mark };
        match self.request(&req, &mut Vec::new())? {
            Reply::Dirty { clusters } => Ok(clusters),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Reads whole clusters of the live disk, one request each.
    pub fn read_clusters(&self, clusters: &[u64]) -> Result<Vec<(u64, Vec<u8>)>> {
        let (size, cs) = match self.request(&Request::Status, &mut Vec::new())? {
            Reply::Status(s) => (s.virtual_size, u64::from(s.cluster_size)),
            other => return Err(unexpected(&Request::Status, &other)),
        };
        let mut out = Vec::with_capacity(clusters.len());
        for &v in clusters {
            let offset = v * cs;
            let len = cs.min(size.saturating_sub(offset));
            let mut data = Vec::new();
            let req = Request::Read { offset, len };
            match self.request(&req, &mut data)? {
                Reply::Data { .. } => out.push((v, data)),
                other => return Err(unexpected(&req, &other)),
            }
        }
        Ok(out)
    }
}

fn unexpected(req: &Request, reply: &Reply) -> Error {
    Error::Invalid(format!("the disk server answered {req:?} with {reply:?}"))
}

fn syncfs(root: &File) -> Result<()> {
    // SAFETY: syncfs takes an fd we own.
    let rc = unsafe { libc::syncfs(root.as_raw_fd()) };
    Errno::result(rc)
        .map(drop)
        .sys(|| "syncing the container's filesystem (syncfs)".into())
}

/// `cr disk check FILE|DIR`: one delta file, or a chain directory.
pub fn check_path(path: &Path) -> Result<CheckView> {
    if path.is_dir() {
        return Ok(check_chain(&FsDir::new(path)).into());
    }
    let file = File::open(path).ctx("opening", path)?;
    Ok(check_delta(file, &path.display().to_string()).into())
}

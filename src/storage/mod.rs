//! Container disks: a ploop-like chain of deltas (`cr_formats::disk`) served
//! as a block device, with ext4 on it as the container's root.
//!
//! ```text
//!  container processes
//!        │ files
//!  ext4 (mounted by PID 1 on containers/NAME/rootfs, in its mount namespace)
//!        │ bios
//!  /dev/loopN  (LOOP_CONFIGURE: direct I/O, autoclear)        loopdev.rs
//!        │ O_DIRECT reads/writes, fsync for every flush
//!  FUSE: containers/NAME/disk/mnt/disk.img                     fuse.rs
//!        │ /dev/fuse requests (2 threads)
//!  cr __disk-serve NAME: Mutex<Chain<FsDir>>                   serve.rs
//!        │ read_at / write_at / flush          ▲ JSON lines on
//!  containers/NAME/disk/chain/                 │ disk/control.sock  control.rs
//!     chain.manifest, <id>.delta ...      cr disk snapshot|list|merge|grow|
//!                                         check|export, checkpoint, migration
//! ```
//!
//! [`disk`] is the engine side: creating a disk from an image (mkfs.ext4
//! into a sparse file, imported cluster by cluster), attaching it when the
//! supervisor starts the container and releasing it when PID 1 is gone, and
//! [`disk::ContainerDisk`], through which `cr disk`, checkpoint and
//! migration reach the chain: through the running server when there is
//! one, in-process under the chain's lock file when the container is
//! stopped. `docs/disks.md` describes it for users.

pub mod control;
pub mod disk;
pub mod fuse;
pub mod loopdev;
pub mod serve;

use std::path::{Path, PathBuf};

/// Where a container's disk lives, under its directory.
#[derive(Debug, Clone)]
pub struct DiskPaths {
    /// `containers/NAME/disk`
    pub dir: PathBuf,
    /// The chain: manifest and delta files.
    pub chain: PathBuf,
    /// The FUSE mount point.
    pub mnt: PathBuf,
    /// The flat file in the FUSE mount, the loop device's backing file.
    pub file: PathBuf,
    /// The server's control socket.
    pub socket: PathBuf,
    /// `server.json`: the running server's pid.
    pub state: PathBuf,
    /// flock(2) held by whoever has the chain open.
    pub lock: PathBuf,
    /// The server's stderr.
    pub log: PathBuf,
}

impl DiskPaths {
    pub fn new(container_dir: &Path) -> Self {
        let dir = container_dir.join("disk");
        DiskPaths {
            chain: dir.join("chain"),
            mnt: dir.join("mnt"),
            file: dir.join("mnt").join(fuse::DISK_FILE),
            socket: dir.join("control.sock"),
            state: dir.join("server.json"),
            lock: dir.join("lock"),
            log: dir.join("server.log"),
            dir,
        }
    }
}

//! One host's state root (`--root`, `CR_ROOT`, default `/var/lib/cr`).
//!
//! Everything a host owns lives below it, so two test "hosts" can share a
//! machine:
//!
//! ```text
//! ROOT/
//!   lock                    flock(2) held while names and addresses are allocated
//!   images/NAME/            image.toml + rootfs/
//!   containers/NAME/        config.toml, state.json, console.log, upper/, work/, rootfs/
//! ```
//!
//! The host's cgroup parent is derived from the root: `cr` for the default
//! root, `cr-<hash>` for any other, so each host's containers live under a
//! cgroup parent of their own.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

pub const DEFAULT_ROOT: &str = "/var/lib/cr";

#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

/// Holds the host lock until dropped.
pub struct HostLock {
    _lock: Flock<File>,
}

impl Host {
    /// Opens (creating if needed) the state root.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        for dir in [
            root.to_path_buf(),
            root.join("images"),
            root.join("containers"),
        ] {
            fs::create_dir_all(&dir).ctx("creating state directory", &dir)?;
        }
        let root = fs::canonicalize(root).ctx("resolving state root", root)?;
        Ok(Host { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers_dir().join(name)
    }

    /// Where the checkpoint images of container `name` live; `cr destroy`
    /// keeps them.
    pub fn checkpoints_dir(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }

    /// Ids of the complete checkpoints of container `name`, oldest first
    /// (ids are UTC times and sort as such).
    pub fn checkpoint_ids(&self, name: &str) -> Vec<String> {
        let mut ids = Vec::new();
        if let Ok(entries) = fs::read_dir(self.checkpoints_dir(name)) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !id.ends_with(".partial") && e.path().join("records.img").is_file() {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids
    }

    /// The cgroup directory name under which this host's containers live.
    pub fn cgroup_parent(&self) -> String {
        if self.root == Path::new(DEFAULT_ROOT) {
            "cr".to_string()
        } else {
            format!(
                "cr-{:08x}",
                short_hash(self.root.as_os_str().as_encoded_bytes())
            )
        }
    }

    /// Takes the host-wide lock (names, IP addresses, image removal).
    pub fn lock(&self) -> Result<HostLock> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("opening lock file", &path)?;
        let _ = file.as_fd();
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys(format!("locking {}", path.display()), e))?;
        Ok(HostLock { _lock: lock })
    }

    /// Names of all containers with a directory under this root, sorted.
    pub fn container_names(&self) -> Result<Vec<String>> {
        let dir = self.containers_dir();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
            let entry = entry.ctx("listing", &dir)?;
            if entry.path().join("config.toml").is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A stable 32-bit FNV-1a hash, used for host-unique short names
/// (cgroup parents, veth names) that must fit kernel limits.
pub fn short_hash(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x01000193);
    }
    hash
}

/// Checks a container or image name: 1-63 characters of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web1", "a", "db.prod-2", "x_y"] {
            assert!(validate_name("container", good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-x", ".x", "a/b", "..", "a b", "é", long.as_str()] {
            assert!(validate_name("container", bad).is_err(), "{bad}");
        }
    }
}

//! The image store: root filesystems containers start from.
//!
//! An image is a plain directory tree plus a small metadata file. Containers
//! use an image's `rootfs/` read-only as the lower layer of their overlay, so
//! an image must not change (or be removed) while containers use it.
//!
//! ```text
//! ROOT/images/
//!   NAME/
//!     image.toml            name, source, created (unix seconds), size (bytes), files
//!     rootfs/               the root filesystem, owned and moded as in the source
//!   .tmp-NAME-PID/          an import or build in progress (renamed to NAME/ when done)
//! ```
//!
//! * [`store`]: [`ImageStore`]: get, list, remove, and `import` from a
//!   directory or a `.tar`, `.tar.gz`/`.tgz` or `.tar.zst` tarball.
//! * [`build`]: builders that create an image from the host:
//!   `build_minimal` (busybox plus chosen host programs and their libraries)
//!   and `build_debian` (debootstrap).
//! * this file: the error type, [`Image`] and its metadata, and path
//!   resolution *inside* a rootfs (symlinks are followed as the container will
//!   see them, never escaping the rootfs).

pub mod build;
pub mod store;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use build::{find_debian_mirror, DebianOptions, MinimalOptions};
pub use store::ImageStore;

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// The search path used for bare command names inside an image.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything that can go wrong with images; each message is one sentence
/// naming what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image named {0:?} (see `cr image list`)")]
    NotFound(String),
    #[error("an image named {0:?} already exists (see `cr image list`)")]
    Exists(String),
    #[error("image {name:?} is used by containers {}; destroy them first", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    #[error("command {command:?} not found in image {image:?}")]
    CommandNotFound { image: String, command: String },
    #[error("image {0:?} has neither /sbin/init nor /bin/sh; give the container a command to run")]
    NoInit(String),
    #[error("{message}")]
    InvalidName { name: String, message: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("cannot import {}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    #[error("tarball {} has an entry {entry:?} that points outside the image; refusing to import it", path.display())]
    UnsafeEntry { path: PathBuf, entry: String },
    #[error("{what} is not installed: apt-get install -y {package}")]
    Missing { what: String, package: String },
    #[error("cannot build image {image:?}: {message}")]
    Build { image: String, message: String },
    #[error("no Debian mirror found in {searched}; pass a mirror URL explicitly (--mirror)")]
    NoMirror { searched: String },
    #[error("image metadata {} is unreadable: {message}", path.display())]
    Metadata { path: PathBuf, message: String },
}

impl ImageError {
    /// An I/O error on `path` while doing `what` ("reading", "creating directory", ...).
    pub fn io(what: impl Into<String>, path: impl AsRef<Path>, source: io::Error) -> Self {
        ImageError::Io {
            what: what.into(),
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Attaches "what, where" to an `io::Result`.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: &str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: &str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| ImageError::io(what, path, e))
    }
}

/// Checks an image name with the host's naming rules.
pub fn validate_name(name: &str) -> Result<()> {
    crate::host::validate_name("image", name).map_err(|e| ImageError::InvalidName {
        name: name.to_string(),
        message: e.to_string(),
    })
}

/// The contents of `image.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: String,
    /// Where the image came from, e.g. `directory /srv/rootfs` or
    /// `debootstrap bookworm (minbase)`.
    pub source: String,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Apparent size of the regular files in the rootfs (hard links counted once).
    pub size: u64,
    /// Number of entries (files, directories, symlinks, devices) in the rootfs.
    pub files: u64,
}

/// One image in the store.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    #[serde(skip)]
    pub name: String,
    /// The root filesystem on the host, `ROOT/images/NAME/rootfs`.
    pub rootfs: PathBuf,
    #[serde(flatten)]
    pub meta: ImageMeta,
}

impl Image {
    /// The command a container of this image runs when none is given:
    /// `/sbin/init` if the rootfs has it (symlinks resolved inside the rootfs),
    /// else `/bin/sh`.
    pub fn default_command(&self) -> Result<Vec<String>> {
        for candidate in ["/sbin/init", "/bin/sh"] {
            if self.is_executable(Path::new(candidate)) {
                return Ok(vec![candidate.to_string()]);
            }
        }
        Err(ImageError::NoInit(self.name.clone()))
    }

    /// Finds `cmd` inside the image: an absolute path as is, a bare name on
    /// [`IMAGE_PATH`]. Symlinks are resolved relative to the rootfs (an
    /// absolute target such as `/bin/busybox` means `ROOTFS/bin/busybox`).
    ///
    /// Returns the path *as seen inside the container* (e.g. `/bin/sh`, not
    /// the busybox binary it links to, since multi-call binaries look at
    /// `argv[0]`). Use [`Image::host_path`] for where it lives on the host.
    pub fn resolve_command(&self, cmd: &str) -> Result<PathBuf> {
        let not_found = || ImageError::CommandNotFound {
            image: self.name.clone(),
            command: cmd.to_string(),
        };
        if cmd.is_empty() {
            return Err(not_found());
        }
        if cmd.contains('/') {
            // Relative paths are taken from the container's working directory, `/`.
            let path = Path::new("/").join(cmd);
            return if self.is_executable(&path) {
                Ok(path)
            } else {
                Err(not_found())
            };
        }
        for dir in IMAGE_PATH.split(':') {
            let path = Path::new(dir).join(cmd);
            if self.is_executable(&path) {
                return Ok(path);
            }
        }
        Err(not_found())
    }

    /// Where the in-container path `path` lives on the host, with every
    /// symlink resolved inside the rootfs.
    pub fn host_path(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        resolve_in_root(&self.rootfs, path).ctx("resolving inside the image", path)
    }

    fn is_executable(&self, path: &Path) -> bool {
        match resolve_in_root(&self.rootfs, path).and_then(std::fs::metadata) {
            Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
            Err(_) => false,
        }
    }
}

/// Resolves `path` as a process chrooted into `root` would: `..` never goes
/// above `root`, and symlinks (absolute or relative) are followed inside
/// `root`. Returns the host path of the final entry (which need not exist;
/// intermediate components must).
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    const MAX_LINKS: usize = 40;
    let mut pending: VecDeque<OsString> = components(path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let host = root.join(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for (i, c) in components(&target).into_iter().enumerate() {
                    pending.insert(i, c);
                }
            }
            Ok(_) => resolved = candidate,
            // A missing last component is fine (the caller checks existence);
            // a missing directory in the middle is an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound && pending.is_empty() => {
                resolved = candidate
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved))
}

/// The normal and `..` components of a path (root and `.` dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn image(root: &Path) -> Image {
        Image {
            name: "t".into(),
            rootfs: root.to_path_buf(),
            meta: ImageMeta {
                name: "t".into(),
                source: "test".into(),
                created: 0,
                size: 0,
                files: 0,
            },
        }
    }

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn resolves_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        exe(&root.join("usr/bin/busybox"));
        symlink("/bin/busybox", root.join("usr/bin/sh")).unwrap();
        symlink("../../../../../etc/passwd", root.join("usr/bin/escape")).unwrap();
        symlink("loop", root.join("usr/bin/loop")).unwrap();

        assert_eq!(
            resolve_in_root(root, Path::new("/bin/sh")).unwrap(),
            root.join("usr/bin/busybox")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/bin/escape")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../bin/../bin/busybox")).unwrap(),
            root.join("usr/bin/busybox")
        );
        assert!(resolve_in_root(root, Path::new("/bin/loop")).is_err());

        let img = image(root);
        assert_eq!(img.resolve_command("sh").unwrap(), Path::new("/usr/bin/sh"));
        assert_eq!(
            img.resolve_command("/bin/sh").unwrap(),
            Path::new("/bin/sh")
        );
        assert!(img.resolve_command("escape").is_err());
        assert!(img.resolve_command("loop").is_err());
        let err = img.resolve_command("nosuch").unwrap_err().to_string();
        assert_eq!(err, "command \"nosuch\" not found in image \"t\"");
        std::fs::create_dir(root.join("sbin")).unwrap();
        // /bin/sh exists, /sbin/init does not.
        assert_eq!(img.default_command().unwrap(), vec!["/bin/sh".to_string()]);
        symlink("/usr/bin/busybox", root.join("sbin/init")).unwrap();
        assert_eq!(
            img.default_command().unwrap(),
            vec!["/sbin/init".to_string()]
        );
    }

    #[test]
    fn no_init_message() {
        let dir = tempfile::tempdir().unwrap();
        let err = image(dir.path()).default_command().unwrap_err().to_string();
        assert!(err.contains("neither /sbin/init nor /bin/sh"), "{err}");
    }

    #[test]
    fn in_use_message() {
        let err = ImageError::InUse {
            name: "base".into(),
            users: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            err.to_string(),
            "image \"base\" is used by containers a, b; destroy them first"
        );
    }
}

//! The on-disk image store: lookup, listing, removal and import.
//!
//! ```text
//! ROOT/images/
//!   NAME/image.toml         metadata (see `ImageMeta`)
//!   NAME/rootfs/            the root filesystem
//!   .tmp-NAME-PID/          import or build in progress: image.toml + rootfs/,
//!                           renamed (RENAME_NOREPLACE) to NAME/ when complete
//!   .rm-NAME-PID/           removal in progress (renamed away first, then deleted)
//! ```
//!
//! Every way of creating an image goes through [`ImageStore::create`], which
//! fills a temporary directory and renames it into place, so an image either
//! exists completely or not at all. Temporary directories left behind by a
//! killed process are cleaned up by the next import.
//!
//! Imports accept a directory (copied with `cp -a`, preserving ownership,
//! modes, hard links, symlinks, device nodes, xattrs and timestamps) or a
//! tarball: plain, gzip or zstd compressed, recognised by its magic bytes.
//! Tar entries whose path contains `..` are refused.
//!
//! Callers serialise `remove` against container creation with the host lock
//! (`Host::lock`) and pass the containers that use the image.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::{Archive, EntryType};

use super::{validate_name, Ctx, Image, ImageError, ImageMeta, Result};

/// The image store, `ROOT/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// A store rooted at `dir` (normally `Host::images_dir()`); nothing is
    /// created until an image is.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        ImageStore {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an image (complete or not) named `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).symlink_metadata().is_ok()
    }

    /// Looks up one image.
    pub fn get(&self, name: &str) -> Result<Image> {
        validate_name(name)?;
        let dir = self.dir.join(name);
        let rootfs = dir.join("rootfs");
        if !rootfs.is_dir() {
            return Err(ImageError::NotFound(name.to_string()));
        }
        let meta_path = dir.join("image.toml");
        let mut meta = match fs::read_to_string(&meta_path) {
            Ok(text) => toml::from_str::<ImageMeta>(&text).map_err(|e| ImageError::Metadata {
                path: meta_path.clone(),
                message: e.message().to_string(),
            })?,
            // A rootfs placed here by hand: describe it as well as we can.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let created = fs::metadata(&dir)
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map(unix_seconds)
                    .unwrap_or(0);
                ImageMeta {
                    name: name.to_string(),
                    source: "unknown (no image.toml)".to_string(),
                    created,
                    size: 0,
                    files: 0,
                }
            }
            Err(e) => return Err(ImageError::io("reading", &meta_path, e)),
        };
        // The directory name is authoritative.
        meta.name = name.to_string();
        Ok(Image {
            name: name.to_string(),
            rootfs,
            meta,
        })
    }

    /// All complete images, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("listing", &self.dir, e)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.ctx("listing", &self.dir)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || validate_name(&name).is_err() {
                continue;
            }
            if !entry.path().join("rootfs").is_dir() {
                continue;
            }
            images.push(self.get(&name)?);
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Deletes an image. `users` are the containers created from it (the
    /// caller holds the host lock); removal is refused while there are any.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<()> {
        let image = self.get(name)?;
        if !users.is_empty() {
            return Err(ImageError::InUse {
                name: image.name,
                users: users.to_vec(),
            });
        }
        let dir = self.dir.join(name);
        let doomed = self.dir.join(format!(".rm-{name}-{}", std::process::id()));
        fs::rename(&dir, &doomed).ctx("moving aside for removal", &dir)?;
        fs::remove_dir_all(&doomed).ctx("removing", &doomed)
    }

    /// Imports a directory or tarball at `source` as image `name`.
    pub fn import(&self, name: &str, source: impl AsRef<Path>) -> Result<Image> {
        let source = source.as_ref();
        let meta = fs::metadata(source).ctx("cannot import from", source)?;
        if meta.is_dir() {
            let canonical = fs::canonicalize(source).ctx("resolving", source)?;
            fs::create_dir_all(&self.dir).ctx("creating image store", &self.dir)?;
            let store = fs::canonicalize(&self.dir).ctx("resolving", &self.dir)?;
            if store.starts_with(&canonical) {
                return Err(ImageError::Unsupported {
                    path: source.to_path_buf(),
                    reason: format!(
                        "it contains the image store {} (it would be copied into itself)",
                        store.display()
                    ),
                });
            }
            let description = format!("directory {}", canonical.display());
            self.create(name, &description, |rootfs| copy_tree(&canonical, rootfs))
        } else if meta.is_file() {
            let format = detect_format(source)?;
            let description = format!("{} {}", format.describe(), source.display());
            self.create(name, &description, |rootfs| {
                unpack_tarball(source, format, rootfs)
            })
        } else {
            Err(ImageError::Unsupported {
                path: source.to_path_buf(),
                reason: "not a directory or a regular file".to_string(),
            })
        }
    }

    /// Creates image `name` atomically: `fill` populates an empty rootfs
    /// directory (mode 0755, owned by root) under `ROOT/images/.tmp-NAME-PID/`;
    /// on success the metadata is written and the directory renamed into place,
    /// on any failure it is unmounted (if anything was mounted below it) and
    /// deleted.
    pub fn create(
        &self,
        name: &str,
        source: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Image> {
        validate_name(name)?;
        fs::create_dir_all(&self.dir).ctx("creating image store", &self.dir)?;
        if self.exists(name) {
            return Err(ImageError::Exists(name.to_string()));
        }
        self.clean_stale();

        let tmp = self.dir.join(format!(".tmp-{name}-{}", std::process::id()));
        match fs::create_dir(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ImageError::Build {
                    image: name.to_string(),
                    message: format!("{} is in use by another build", tmp.display()),
                })
            }
            Err(e) => return Err(ImageError::io("creating", &tmp, e)),
        }
        let guard = TmpGuard(Some(tmp.clone()));
        let rootfs = tmp.join("rootfs");
        fs::create_dir(&rootfs).ctx("creating", &rootfs)?;
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).ctx("chmod", &rootfs)?;

        fill(&rootfs)?;

        let (size, files) = measure(&rootfs)?;
        let meta = ImageMeta {
            name: name.to_string(),
            source: source.to_string(),
            created: unix_seconds(SystemTime::now()),
            size,
            files,
        };
        let meta_path = tmp.join("image.toml");
        let text = toml::to_string(&meta).map_err(|e| ImageError::Metadata {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        fs::write(&meta_path, text).ctx("writing", &meta_path)?;

        let dest = self.dir.join(name);
        match renameat2(
            AT_FDCWD,
            &tmp,
            AT_FDCWD,
            &dest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => {
                return Err(ImageError::Exists(name.to_string()))
            }
            Err(e) => {
                return Err(ImageError::io(
                    format!("renaming {} to", tmp.display()),
                    &dest,
                    e.into(),
                ))
            }
        }
        guard.disarm();
        Ok(Image {
            name: name.to_string(),
            rootfs: dest.join("rootfs"),
            meta,
        })
    }

    /// Removes `.tmp-*` and `.rm-*` directories whose process is gone.
    fn clean_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if !(name.starts_with(".tmp-") || name.starts_with(".rm-")) {
                continue;
            }
            let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let path = entry.path();
                unmount_below(&path);
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// Deletes a temporary image directory unless disarmed.
struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            unmount_below(&path);
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Lazily unmounts everything mounted at or below `dir` (deepest first), so
/// that deleting it cannot reach into a mounted /proc, /sys or /dev.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(dir) = fs::canonicalize(dir) else {
        return;
    };
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Decodes the `\040`-style octal escapes of /proc/self/mountinfo.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsStr::from_bytes(&out).to_os_string()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Apparent size of the regular files (hard links once) and the number of
/// entries below `root`, not following symlinks.
pub(crate) fn measure(root: &Path) -> Result<(u64, u64)> {
    let mut size = 0u64;
    let mut files = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
            let entry = entry.ctx("listing", &dir)?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).ctx("inspecting", &path)?;
            files += 1;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                size += meta.len();
            }
        }
    }
    Ok((size, files))
}

/// Runs an external tool, returning its output if it exits with status 0
/// and a [`ImageError::Tool`] (with the tail of its stderr) otherwise.
pub(crate) fn run_tool(tool: &str, cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ImageError::io("running", tool, e))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ImageError::Tool {
            tool: tool.to_string(),
            status: output.status.to_string(),
            stderr: tail(&output.stderr, 20),
        })
    }
}

/// The last `lines` lines of some tool output, trimmed, as one string.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join("; ");
    if joined.is_empty() {
        "no error output".to_string()
    } else {
        joined
    }
}

/// Copies the contents of directory `src` into existing directory `dst`
/// with everything preserved (`cp -a --reflink=auto SRC/. DST/`).
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut from = src.as_os_str().to_os_string();
    from.push("/.");
    let mut to = dst.as_os_str().to_os_string();
    to.push("/");
    run_tool(
        "cp",
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg("--")
            .arg(from)
            .arg(to),
    )?;
    Ok(())
}

/// A recognised tarball compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarFormat {
    Plain,
    Gzip,
    Zstd,
}

impl TarFormat {
    fn describe(self) -> &'static str {
        match self {
            TarFormat::Plain => "tarball",
            TarFormat::Gzip => "gzip tarball",
            TarFormat::Zstd => "zstd tarball",
        }
    }
}

/// Recognises a tarball by its first bytes (the extension only matters for
/// old tar files without a `ustar` signature).
pub fn detect_format(path: &Path) -> Result<TarFormat> {
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .ctx("opening", path)?
        .take(512)
        .read_to_end(&mut head)
        .ctx("reading", path)?;
    let unsupported = |reason: &str| ImageError::Unsupported {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(TarFormat::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(TarFormat::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Ok(TarFormat::Plain)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(unsupported(
            "xz-compressed tarballs are not supported; decompress it (unxz) or recompress it with gzip or zstd",
        ))
    } else if head.starts_with(b"BZh") {
        Err(unsupported(
            "bzip2-compressed tarballs are not supported; decompress it (bunzip2) or recompress it with gzip or zstd",
        ))
    } else if head.len() == 512 && path.extension() == Some(OsStr::new("tar")) {
        // A pre-POSIX (v7) tar file has no signature.
        Ok(TarFormat::Plain)
    } else {
        Err(unsupported(
            "not a directory or a .tar, .tar.gz/.tgz or .tar.zst tarball",
        ))
    }
}

/// Unpacks tarball `path` into `dst` with ownership, modes, mtimes, xattrs,
/// hard links and device nodes preserved. Entries with `..` are refused.
pub(crate) fn unpack_tarball(path: &Path, format: TarFormat, dst: &Path) -> Result<()> {
    let file = BufReader::new(File::open(path).ctx("opening", path)?);
    let reader: Box<dyn Read> = match format {
        TarFormat::Plain => Box::new(file),
        TarFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        TarFormat::Zstd => {
            Box::new(zstd::Decoder::with_buffer(file).ctx("reading zstd stream", path)?)
        }
    };
    unpack(reader, path, dst)
}

pub(crate) fn unpack(reader: impl Read, path: &Path, dst: &Path) -> Result<()> {
    let dst = fs::canonicalize(dst).ctx("resolving", dst)?;
    let mut archive = Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);

    let reading = |e: io::Error| ImageError::io("reading tarball", path, flatten(e));
    // Directories are applied last, deepest first, so that restrictive modes
    // do not get in the way of their contents (as tar::Archive::unpack does).
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(reading)? {
        let mut entry = entry.map_err(reading)?;
        let entry_path = entry.path().map_err(reading)?.into_owned();
        let unsafe_entry = || ImageError::UnsafeEntry {
            path: path.to_path_buf(),
            entry: entry_path.display().to_string(),
        };
        let rel = relative_entry_path(&entry_path).ok_or_else(unsafe_entry)?;
        let unpack_err = |e: io::Error| {
            ImageError::io(format!("unpacking {:?} from", entry_path), path, flatten(e))
        };
        match entry.header().entry_type() {
            EntryType::Directory => directories.push((rel, entry)),
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                make_special(&entry, &rel, &dst, path)?
            }
            _ => {
                if rel.as_os_str().is_empty() {
                    continue;
                }
                if !entry.unpack_in(&dst).map_err(unpack_err)? {
                    return Err(unsafe_entry());
                }
            }
        }
    }
    directories.sort_by(|a, b| b.0.cmp(&a.0));
    for (rel, mut entry) in directories {
        let entry_path = rel.display().to_string();
        entry.unpack_in(&dst).map_err(|e| {
            ImageError::io(format!("unpacking {entry_path:?} from"), path, flatten(e))
        })?;
        let target = if rel.as_os_str().is_empty() {
            dst.clone()
        } else {
            dst.join(&rel)
        };
        if let Ok(mtime) = entry.header().mtime() {
            set_mtime(&target, mtime);
        }
    }
    Ok(())
}

/// Folds an error's source chain into its message (the tar crate's errors
/// print only their outer description otherwise).
fn flatten(e: io::Error) -> io::Error {
    use std::error::Error as _;
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    io::Error::new(e.kind(), message)
}

/// The entry path relative to the destination, or `None` if it has `..`.
fn relative_entry_path(path: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => rel.push(p),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(rel)
}

/// Sets a file's atime and mtime without following symlinks; best effort
/// (a timestamp is not worth failing an import for).
fn set_mtime(path: &Path, mtime: u64) {
    let secs = i64::try_from(mtime).unwrap_or(0);
    let time = TimeSpec::new(secs, 0);
    let _ = utimensat(
        AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Creates a FIFO or device node from a tar entry (the tar crate would
/// unpack those as empty regular files).
fn make_special<R: Read>(
    entry: &tar::Entry<'_, R>,
    rel: &Path,
    dst: &Path,
    tarball: &Path,
) -> Result<()> {
    let header = entry.header();
    let name = rel.display().to_string();
    let bad = |e: io::Error| ImageError::io(format!("reading entry {name:?} of"), tarball, e);
    let Some(file_name) = rel.file_name() else {
        return Ok(());
    };
    let parent = safe_parent(dst, rel, tarball)?;
    let target = parent.join(file_name);

    let kind = match header.entry_type() {
        EntryType::Fifo => SFlag::S_IFIFO,
        EntryType::Char => SFlag::S_IFCHR,
        _ => SFlag::S_IFBLK,
    };
    let mode = header.mode().map_err(bad)? & 0o7777;
    let dev = if kind == SFlag::S_IFIFO {
        0
    } else {
        let major = header.device_major().map_err(bad)?.unwrap_or(0);
        let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
        makedev(u64::from(major), u64::from(minor))
    };
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => {
            return Err(ImageError::io(
                "creating device node over a directory",
                &target,
                io::Error::from_raw_os_error(libc::EISDIR),
            ))
        }
        Ok(_) => fs::remove_file(&target).ctx("replacing", &target)?,
        Err(_) => {}
    }
    mknod(&target, kind, Mode::from_bits_truncate(mode), dev)
        .map_err(|e| ImageError::io("creating device node", &target, e.into()))?;
    let uid = u32::try_from(header.uid().map_err(bad)?).unwrap_or(0);
    let gid = u32::try_from(header.gid().map_err(bad)?).unwrap_or(0);
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).ctx("chown", &target)?;
    // mknod applies the umask and chown clears set-id bits: set the mode last.
    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).ctx("chmod", &target)?;
    if let Ok(mtime) = header.mtime() {
        set_mtime(&target, mtime);
    }
    Ok(())
}

/// Creates the parent directories of `rel` below `dst`, following symlinks
/// only when they stay inside `dst`; returns the (resolved) parent.
fn safe_parent(dst: &Path, rel: &Path, tarball: &Path) -> Result<PathBuf> {
    let mut cur = dst.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(cur);
    };
    for part in parent.components() {
        let next = cur.join(part);
        match fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&next).ctx("creating", &next)?;
                cur = next;
            }
            Err(e) => return Err(ImageError::io("inspecting", &next, e)),
            Ok(meta) if meta.is_dir() => cur = next,
            Ok(meta) if meta.file_type().is_symlink() => {
                let real = fs::canonicalize(&next).ctx("resolving", &next)?;
                if !real.starts_with(dst) || !real.is_dir() {
                    return Err(ImageError::UnsafeEntry {
                        path: tarball.to_path_buf(),
                        entry: rel.display().to_string(),
                    });
                }
                cur = real;
            }
            Ok(_) => {
                return Err(ImageError::io(
                    "creating directory",
                    &next,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo("/a\\040b"),
            std::ffi::OsString::from("/a b")
        );
        assert_eq!(
            unescape_mountinfo("/plain"),
            std::ffi::OsString::from("/plain")
        );
        assert_eq!(unescape_mountinfo("/x\\"), std::ffi::OsString::from("/x\\"));
    }

    #[test]
    fn entry_paths() {
        assert_eq!(
            relative_entry_path(Path::new("./etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            relative_entry_path(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(relative_entry_path(Path::new("../evil")), None);
        assert_eq!(relative_entry_path(Path::new("a/../../evil")), None);
    }

    #[test]
    fn formats() {
        let dir = tempfile::tempdir().unwrap();
        let xz = dir.path().join("x.tar.xz");
        fs::write(&xz, [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]).unwrap();
        let err = detect_format(&xz).unwrap_err().to_string();
        assert!(err.contains("xz") && err.contains("x.tar.xz"), "{err}");
        let txt = dir.path().join("notes.txt");
        fs::write(&txt, "hello").unwrap();
        let err = detect_format(&txt).unwrap_err().to_string();
        assert!(err.contains("notes.txt"), "{err}");
        let gz = dir.path().join("no-extension");
        fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        assert_eq!(detect_format(&gz).unwrap(), TarFormat::Gzip);
    }
}

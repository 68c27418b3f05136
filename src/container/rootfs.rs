//! A container's root filesystem and mount tree, built by its PID 1 inside
//! its new mount namespace, before it execs the container's command.
//!
//! ```text
//! /            overlayfs: lower = image rootfs (read-only, shared),
//!                         upper = containers/NAME/upper (the container's changes)
//!              or, with --disk, ext4 on /dev/loopN (see crate::storage)
//! /proc        proc of the container's PID namespace; sensitive files masked,
//!              /proc/sys read-only except /proc/sys/net (its own netns)
//! /sys         sysfs, read-only
//! /dev         tmpfs with null zero full random urandom tty (device nodes;
//!              with a user namespace, bind mounts of the host's nodes, since
//!              mknod is not allowed there), console (the pty its supervisor
//!              logs), fd/stdin/stdout/stderr links
//! /dev/pts     a private devpts instance; /dev/ptmx points into it
//! /dev/shm     tmpfs           /dev/mqueue  mqueue of its IPC namespace
//! /tmp         tmpfs
//! ```
//!
//! Everything is mounted after `/` was made recursively private, so no mount
//! propagates to the host, and the whole tree dies with the namespace.
//!
//! In a user namespace (see [`crate::container::userns`]) the overlay's
//! layers are idmapped mounts the supervisor made: the container's directory
//! is attached over itself and the image's rootfs on `lower` inside it, and
//! the overlay is mounted from those with `userxattr`.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};

use crate::container::userns;
use crate::error::{Error, IoContext, Result, SysContext};

/// Where the pieces of a container's root come from.
pub struct RootfsSpec<'a> {
    /// The image's root filesystem (overlay lower layer, never written).
    pub lower: &'a Path,
    /// The container's own changes (overlay upper layer).
    pub upper: &'a Path,
    /// Overlayfs work directory, on the same filesystem as `upper`.
    pub work: &'a Path,
    /// The mount point the root is assembled on before `pivot_root`.
    pub target: &'a Path,
    /// Host path of the console pty's slave, bound onto `/dev/console`.
    pub console: Option<&'a Path>,
    /// Set when the container runs in a user namespace.
    pub idmapped: Option<IdmappedLayers>,
    /// With `--disk`: the block device (a loop device over the disk server's
    /// flat file) whose ext4 is the root, instead of the overlay.
    pub disk: Option<&'a Path>,
}

/// Detached idmapped mounts (from the supervisor) the overlay of a container
/// in a user namespace is built from.
pub struct IdmappedLayers {
    /// The container's directory (holding `upper`, `work`, `rootfs`),
    /// attached over itself.
    pub container_dir: OwnedFd,
    /// The image's rootfs, attached on [`IdmappedLayers::lower_mount_point`].
    pub lower: OwnedFd,
    /// Where `lower` is attached: `lower` in the container's directory.
    pub lower_mount_point: PathBuf,
}

/// Files under /proc hidden behind /dev/null.
const MASKED_FILES: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/key-users",
    "proc/sysrq-trigger",
    "proc/timer_list",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/kallsyms",
    "proc/kmsg",
    "proc/kpagecount",
    "proc/kpageflags",
    "proc/kpagecgroup",
    "proc/config.gz",
];

/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &["proc/acpi", "proc/scsi", "proc/driver", "sys/firmware"];

/// Directories made read-only.
const READONLY_DIRS: &[&str] = &["proc/sys", "proc/irq", "proc/bus", "proc/fs"];

/// Character devices in the container's /dev: name, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Mount points (inside the container) of every mount [`build`] makes,
/// with the console: what a checkpoint does not record as added by the
/// container (see [`crate::dump::mounts`]).
pub fn standard_mount_points() -> Vec<String> {
    let mut points: Vec<String> = ["/", "/proc", "/sys", "/dev"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    points.extend(DEVICES.iter().map(|(name, _, _)| format!("/dev/{name}")));
    for p in [
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/dev/console",
        "/tmp",
    ] {
        points.push(p.to_string());
    }
    for p in MASKED_FILES
        .iter()
        .chain(MASKED_DIRS)
        .chain(READONLY_DIRS)
        .chain(&["proc/sys/net"])
    {
        points.push(format!("/{p}"));
    }
    points
}

/// Checks that a path can be named in overlayfs mount options.
pub fn check_overlay_path(path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text.contains([',', ':', '\\']) || text.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!(
            "path {} cannot be used for an overlay layer: it contains ',', ':', '\\' or white space",
            path.display()
        )));
    }
    Ok(())
}

/// Builds the mount tree on `spec.target`; [`pivot`] then makes it `/`.
/// Runs in the container's PID 1, in its new mount namespace.
pub fn build(spec: &RootfsSpec) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .sys(|| "making / recursively private".into())?;
    match &spec.idmapped {
        _ if spec.disk.is_some() => mount_disk(spec)?,
        Some(layers) => {
            let dir = spec.upper.parent().unwrap_or(Path::new("/"));
            userns::attach(&layers.container_dir, dir)?;
            userns::attach(&layers.lower, &layers.lower_mount_point)?;
            mount_overlay(spec, &layers.lower_mount_point, "userxattr")?;
        }
        None => mount_overlay(spec, spec.lower, "")?,
    }
    let t = spec.target;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount("proc", &t.join("proc"), "proc", nosuid, None)?;
    do_mount(
        "sysfs",
        &t.join("sys"),
        "sysfs",
        nosuid | MsFlags::MS_RDONLY,
        None,
    )?;
    build_dev(t, spec.console, spec.idmapped.is_some())?;
    do_mount(
        "tmpfs",
        &t.join("tmp"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mask_proc(t)
}

/// Mounts the ext4 of the container's disk on the target.
fn mount_disk(spec: &RootfsSpec) -> Result<()> {
    let Some(device) = spec.disk else {
        return Ok(());
    };
    // Whoever probes a loop device (losetup -f looking for a free one, blkid)
    // holds it exclusively for a moment: EBUSY then is worth a retry.
    let mut tries = 0;
    loop {
        match mount(
            Some(device),
            spec.target,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Err(nix::errno::Errno::EBUSY) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    }
    .sys(|| {
        format!(
            "mounting the container's disk {} (ext4) on {}",
            device.display(),
            spec.target.display()
        )
    })
}

/// Mounts the overlay root from `lower` and the spec's upper and work
/// directories; `extra` are further overlay options ("" for none).
fn mount_overlay(spec: &RootfsSpec, lower: &Path, extra: &str) -> Result<()> {
    for p in [lower, spec.upper, spec.work] {
        check_overlay_path(p)?;
    }
    // The options are visible in the container's /proc/mounts: name the
    // layers relative to the container's directory, so no host path shows.
    let base = spec.upper.parent().unwrap_or(Path::new("/"));
    chdir(base).sys(|| format!("entering {}", base.display()))?;
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        relative_to(lower, base).display(),
        relative_to(spec.upper, base).display(),
        relative_to(spec.work, base).display()
    );
    if !extra.is_empty() {
        options.push(',');
        options.push_str(extra);
    }
    mount(
        Some("overlay"),
        spec.target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .sys(|| format!("mounting the overlay root on {}", spec.target.display()))
}

/// `path` relative to the directory `base` (both absolute), with `..` steps.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..base.len() {
        rel.push("..");
    }
    for c in &path[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel
}

/// Mounts `fstype` on `target`, creating the directory if needed.
fn do_mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    ensure_dir(target)?;
    mount(Some(source), target, Some(fstype), flags, data)
        .sys(|| format!("mounting {fstype} on {}", target.display()))
}

fn ensure_dir(path: &Path) -> Result<()> {
    if !path.is_dir() {
        fs::create_dir_all(path).ctx("creating mount point", path)?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .sys(|| format!("bind-mounting {} on {}", source.display(), target.display()))
}

fn remount_readonly(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .sys(|| format!("making {} read-only", target.display()))
}

/// Builds /dev. `bind_nodes`: bind-mount the host's device nodes instead of
/// creating them (mknod is not allowed in a user namespace).
fn build_dev(t: &Path, console: Option<&Path>, bind_nodes: bool) -> Result<()> {
    let dev = t.join("dev");
    do_mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    let mode = Mode::from_bits_truncate(0o666);
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if bind_nodes {
            let host = Path::new("/dev").join(name);
            fs::File::create(&path).ctx("creating", &path)?;
            bind(&host, &path, MsFlags::empty())?;
            continue;
        }
        mknod(&path, SFlag::S_IFCHR, mode, makedev(*major, *minor))
            .sys(|| format!("creating device node {}", path.display()))?;
        // mknod applies the umask; the nodes must be usable by everyone.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .ctx("setting mode of", &path)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let path = dev.join(link);
        symlink(to, &path).ctx("creating link", &path)?;
    }
    do_mount(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    do_mount(
        "shm",
        &dev.join("shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )?;
    do_mount(
        "mqueue",
        &dev.join("mqueue"),
        "mqueue",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    if let Some(console) = console {
        let path = dev.join("console");
        fs::File::create(&path).ctx("creating", &path)?;
        bind(console, &path, MsFlags::empty())?;
    }
    Ok(())
}

fn mask_proc(t: &Path) -> Result<()> {
    let null = t.join("dev/null");
    for file in MASKED_FILES {
        let path = t.join(file);
        if path.exists() {
            bind(&null, &path, MsFlags::empty())?;
        }
    }
    for dir in MASKED_DIRS {
        let path = t.join(dir);
        if path.is_dir() {
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
            .sys(|| format!("masking {}", path.display()))?;
        }
    }
    for dir in READONLY_DIRS {
        let path = t.join(dir);
        if path.is_dir() {
            bind(&path, &path, MsFlags::MS_REC)?;
            remount_readonly(&path)?;
        }
    }
    // The container's own network namespace stays tunable.
    let net = t.join("proc/sys/net");
    if net.is_dir() {
        bind(&net, &net, MsFlags::MS_REC)?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(None::<&str>, &net, None::<&str>, flags, None::<&str>)
            .sys(|| format!("making {} writable", net.display()))?;
    }
    Ok(())
}

/// Makes the tree built on `t` the calling process's `/`.
pub fn pivot(t: &Path) -> Result<()> {
    chdir(t).sys(|| format!("entering {}", t.display()))?;
    pivot_root(".", ".").sys(|| format!("pivot_root into {}", t.display()))?;
    // The old root is now stacked under the new one at "/": detach it.
    umount2(".", MntFlags::MNT_DETACH).sys(|| "detaching the old root".into())?;
    chdir("/").sys(|| "entering the new root".into())
}

/// The directories of a container's root under its state directory.
pub struct RootfsDirs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
    /// Mount point of the idmapped image rootfs (user namespace only).
    pub lower: PathBuf,
}

impl RootfsDirs {
    pub fn new(container_dir: &Path) -> Self {
        RootfsDirs {
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
            target: container_dir.join("rootfs"),
            lower: container_dir.join("lower"),
        }
    }

    /// Creates the directories; `lower` only when `userns`.
    pub fn create(&self, userns: bool) -> Result<()> {
        let lower = userns.then_some(&self.lower);
        for dir in [&self.upper, &self.work, &self.target]
            .into_iter()
            .chain(lower)
        {
            fs::create_dir_all(dir).ctx("creating", dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let base = Path::new("/var/lib/cr/containers/web1");
        assert_eq!(
            relative_to(Path::new("/var/lib/cr/containers/web1/upper"), base),
            Path::new("upper")
        );
        assert_eq!(
            relative_to(Path::new("/var/lib/cr/images/debian/rootfs"), base),
            Path::new("../../images/debian/rootfs")
        );
        assert_eq!(relative_to(base, base), Path::new("."));
    }
}

//! Rebuilding the container's mount namespace and UTS names from the
//! records [`crate::dump::mounts`] wrote.
//!
//! ```text
//! PID 1, after rootfs::build, once the supervisor moved it into the
//! container's cgroups (so restored tmpfs pages are charged there), before
//! pivot_root (host paths still visible, so the host's tar runs):
//! for each Mount record, by index:
//!   Standard  /tmp, /dev/shm: already mounted; files extracted into it
//!   Tmpfs     mount tmpfs with the recorded options, files extracted
//!   Bind      bind mount of the recorded source inside the new root
//!   Pseudo    a fresh proc / sysfs / mqueue / devpts with its options
//!   then:     superblock read-only (remount), per-mount flags (bind
//!             remount), propagation (shared / unbindable)
//! PID 1, after pivot_root and sethostname (restore::tree::husk_main):
//!   sethostname / setdomainname from the Uts record
//! ```
//!
//! Everything happens in the container's new mount namespace: a restore
//! that fails dies with PID 1 and leaves no mount behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cr_formats::schema::{Mount, MountKind, Propagation};
use nix::mount::{mount, MsFlags};

use crate::container::upper::{run_tar, TAR_XATTRS};
use crate::dump::mounts::archive_path;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::restore::image::LoadedImage;

/// Rebuilds every recorded mount under `target` (the new root, not yet
/// pivoted into).
pub fn rebuild(image: &LoadedImage, target: &Path) -> Result<()> {
    for m in &image.mounts {
        rebuild_one(image, m, target)?;
    }
    Ok(())
}

/// `path` (absolute, inside the container) under `target`.
fn inside(target: &Path, path: &str) -> PathBuf {
    target.join(path.trim_start_matches('/'))
}

fn rebuild_one(image: &LoadedImage, m: &Mount, target: &Path) -> Result<()> {
    let mp_text = m.mount_point.to_string();
    let at = inside(target, &mp_text);
    let data = m.data.to_string();
    let data = (!data.is_empty()).then_some(data.as_str());
    match &m.kind {
        MountKind::Standard { archive } => extract(image, *archive, &at, &mp_text)?,
        MountKind::Tmpfs { archive } => {
            ensure_dir(&at)?;
            mount(Some("tmpfs"), &at, Some("tmpfs"), MsFlags::empty(), data)
                .sys(|| format!("mounting the tmpfs at {mp_text}"))?;
            extract(image, *archive, &at, &mp_text)?;
        }
        MountKind::Bind { source } => {
            let from = inside(target, &source.to_string());
            let meta = fs::metadata(&from).ctx("finding the source of a bind mount", &from)?;
            if meta.is_dir() {
                ensure_dir(&at)?;
            } else if !at.exists() {
                fs::File::create(&at).ctx("creating bind mount point", &at)?;
            }
            mount(
                Some(&from),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .sys(|| format!("bind-mounting {source} on {mp_text}"))?;
        }
        MountKind::Pseudo { fstype } => {
            let fstype = fstype.to_string();
            ensure_dir(&at)?;
            let data = match (fstype.as_str(), data) {
                ("devpts", Some(d)) => Some(format!("newinstance,{d}")),
                ("devpts", None) => Some("newinstance".to_string()),
                (_, d) => d.map(str::to_string),
            };
            mount(
                Some(fstype.as_str()),
                &at,
                Some(fstype.as_str()),
                MsFlags::empty(),
                data.as_deref(),
            )
            .sys(|| format!("mounting {fstype} at {mp_text}"))?;
        }
    }
    if m.sb_readonly {
        mount(
            None::<&str>,
            &at,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            data,
        )
        .sys(|| format!("making the filesystem at {mp_text} read-only"))?;
    }
    let flags = MsFlags::from_bits_truncate(m.flags);
    mount(
        None::<&str>,
        &at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .sys(|| format!("setting the flags of the mount at {mp_text}"))?;
    let propagation = match m.propagation {
        Propagation::Private => None,
        Propagation::Shared => Some(MsFlags::MS_SHARED),
        Propagation::Unbindable => Some(MsFlags::MS_UNBINDABLE),
    };
    if let Some(p) = propagation {
        mount(None::<&str>, &at, None::<&str>, p, None::<&str>)
            .sys(|| format!("setting the propagation of the mount at {mp_text}"))?;
    }
    Ok(())
}

fn ensure_dir(path: &Path) -> Result<()> {
    if !path.is_dir() {
        fs::create_dir_all(path).ctx("creating mount point", path)?;
    }
    Ok(())
}

/// Extracts archive `n` of the image into `at`.
fn extract(image: &LoadedImage, n: u32, at: &Path, mount_point: &str) -> Result<()> {
    let archive = archive_path(&image.dir, n);
    if !archive.is_file() {
        return Err(Error::Invalid(format!(
            "image {} has no {}: it does not hold the files of the tmpfs at {mount_point}",
            image.dir.display(),
            archive.display()
        )));
    }
    run_tar(
        Command::new("tar")
            .args(TAR_XATTRS)
            .arg("--same-permissions")
            .arg("--same-owner")
            .arg("-C")
            .arg(at)
            .arg("-xf")
            .arg(&archive),
        &format!("restoring the files of the tmpfs at {mount_point}"),
        &archive,
    )
}

/// Gives the calling process's UTS namespace the recorded names.
pub fn set_uts(image: &LoadedImage) -> Result<()> {
    let Some(uts) = &image.uts else {
        return Ok(());
    };
    use std::os::unix::ffi::OsStrExt;
    nix::unistd::sethostname(std::ffi::OsStr::from_bytes(uts.hostname.as_bytes()))
        .sys(|| format!("setting hostname {:?}", uts.hostname.to_string()))?;
    let domain = uts.domainname.as_bytes();
    // SAFETY: setdomainname reads `len` bytes from a live slice.
    let rc = unsafe { libc::setdomainname(domain.as_ptr().cast(), domain.len()) };
    nix::errno::Errno::result(rc)
        .sys(|| format!("setting domain name {:?}", uts.domainname.to_string()))?;
    Ok(())
}

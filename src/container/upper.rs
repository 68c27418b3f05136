//! The container's own files: the overlay's upper layer, saved into a
//! checkpoint image and put back on restore, side by side.
//!
//! The layer is archived with GNU tar (`upper.tar` in the image directory)
//! with every extended attribute, because overlayfs keeps its whiteouts as
//! 0:0 character devices and its opaque directories and redirects as
//! `trusted.overlay.*` (or, in a user namespace, `user.overlay.*`) xattrs:
//! without them a restored container would see files it had deleted.
//! Archiving runs while every task is stopped, so the files match the memory
//! image.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// File name of the archived upper layer inside an image directory.
pub const UPPER_ARCHIVE: &str = "upper.tar";

pub(crate) const TAR_XATTRS: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
];

/// Archives `upper` into `image_dir/upper.tar`.
pub fn archive(upper: &Path, image_dir: &Path) -> Result<()> {
    let archive = image_dir.join(UPPER_ARCHIVE);
    run_tar(
        Command::new("tar")
            .args(TAR_XATTRS)
            .arg("--sparse")
            .arg("-C")
            .arg(upper)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
        "archiving the container's files",
        upper,
    )
}

/// Replaces `upper` with the layer archived in `image_dir`. The old layer
/// is kept aside until the new one is complete, so a failure loses nothing.
pub fn extract(image_dir: &Path, upper: &Path) -> Result<()> {
    let archive = image_dir.join(UPPER_ARCHIVE);
    if !archive.is_file() {
        return Err(Error::Invalid(format!(
            "image {} has no {UPPER_ARCHIVE}: it does not hold the container's files",
            image_dir.display()
        )));
    }
    let fresh = upper.with_extension("restoring");
    let old = upper.with_extension("old");
    let _ = fs::remove_dir_all(&fresh);
    fs::create_dir_all(&fresh).ctx("creating", &fresh)?;
    if let Err(e) = run_tar(
        Command::new("tar")
            .args(TAR_XATTRS)
            .arg("--same-permissions")
            .arg("--same-owner")
            .arg("-C")
            .arg(&fresh)
            .arg("-xf")
            .arg(&archive),
        "restoring the container's files",
        &archive,
    ) {
        let _ = fs::remove_dir_all(&fresh);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&old);
    if upper.exists() {
        fs::rename(upper, &old).ctx("moving aside", upper)?;
    }
    fs::rename(&fresh, upper).ctx("putting in place", upper)?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

pub(crate) fn run_tar(cmd: &mut Command, what: &str, path: &Path) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        Error::io(
            format!("{what}: running tar (apt-get install -y tar)"),
            path,
            e,
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::Invalid(format!(
        "{what} ({}): tar failed: {}",
        path.display(),
        stderr.lines().last().unwrap_or("no message")
    )))
}

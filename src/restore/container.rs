//! `cr restore NAME`: rebuild a container from a checkpoint image.
//!
//! ```text
//! load and verify the image's records (every checksum, the trailer); the
//!   supervisor verifies the page store as it reads it
//! check that this restore can rebuild every process (refuse before building)
//! container directory: reuse a stopped one, or recreate it from the config
//!   the image carries (a destroyed container comes back with its IP and MAC)
//! put the container's files (upper layer) back from the image
//! start its supervisor in restore mode: namespaces, cgroups with the limits,
//!   network, root filesystem as for `cr start`; then PID 1 builds the tree of
//!   husks and the supervisor rebuilds and resumes them (restore::tree)
//! ```
//!
//! A failure before the supervisor runs leaves a recreated container
//! directory removed again; the image is never modified.

use std::fs;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::container::create::check_address_free;
use crate::container::state::Status;
use crate::container::{start, upper, Container};
use crate::error::{Error, IoContext, Result};
use crate::host::{validate_name, Host};
use crate::restore::image::LoadedImage;
use crate::restore::{tree, RestoreOptions};

/// Restores container `name` from `image_dir` (default: its newest
/// checkpoint); returns the host PID of its PID 1.
pub fn restore(
    host: &Host,
    name: &str,
    image_dir: Option<&Path>,
    how: RestoreOptions,
) -> Result<(Pid, PathBuf)> {
    validate_name("container", name)?;
    let image_dir = match image_dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            let newest = host.checkpoint_ids(name).pop().ok_or_else(|| {
                Error::Invalid(format!("container {name:?} has no checkpoint to restore (see `cr checkpoint list {name}`)"))
            })?;
            host.checkpoints_dir(name).join(newest)
        }
    };
    // The records say what will be built; the supervisor reads (and
    // verifies) the page store once, when it rebuilds the memory.
    let image = LoadedImage::load(&image_dir)?;
    if image.manifest.container != name || image.config.name != name {
        return Err(Error::Invalid(format!(
            "image {} is a checkpoint of container {:?}, not {name:?}",
            image_dir.display(),
            image.manifest.container
        )));
    }
    tree::check(&image)?;

    let dir = host.container_dir(name);
    let created = {
        let _lock = host.lock()?;
        if dir.join("config.toml").is_file() {
            let container = Container::open(host, name)?;
            let (status, _) = container.status()?;
            if status != Status::Stopped {
                return Err(Error::WrongState {
                    name: name.to_string(),
                    state: status.to_string(),
                    action: "restore",
                    needed: "stopped",
                });
            }
            false
        } else {
            if let Some(net) = &image.config.network {
                check_address_free(host, net.address)?;
            }
            fs::create_dir_all(&dir).ctx("creating container directory", &dir)?;
            if let Err(e) = image.config.save(&dir.join("config.toml")) {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            true
        }
    };
    let undo = |e: Error| {
        if created {
            let _ = fs::remove_dir_all(&dir);
        }
        e
    };
    drop(image);
    upper::extract(&image_dir, &dir.join("upper")).map_err(undo)?;
    let container = Container::open(host, name).map_err(undo)?;
    // A container on a disk: the files as they were at the checkpoint.
    let snapshot = image_dir.join(cr_formats::layout::DISK_SNAPSHOT_FILE);
    if snapshot.exists() {
        let id = fs::read_to_string(&snapshot)
            .ctx("reading", &snapshot)
            .map_err(undo)?;
        crate::storage::disk::ContainerDisk::open(&container)
            .and_then(|disk| disk.revert(id.trim()))
            .map_err(undo)?;
    }
    let pid = start::start_with(&container, Some((&image_dir, how))).map_err(undo)?;
    Ok((pid, image_dir))
}

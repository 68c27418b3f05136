//! `cr destroy`: stop the container if it runs and remove everything cr
//! created for it: processes, cgroups, the veth, the disk server, and its
//! state directory (with the disk).
//! Checkpoint images are kept.

use std::fs;
use std::time::Duration;

use crate::container::state::Status;
use crate::container::stop::stop;
use crate::container::supervisor::cleanup_runtime;
use crate::container::Container;
use crate::error::{IoContext, Result};

pub fn destroy(container: &Container, grace: Duration) -> Result<()> {
    let (status, _) = container.status()?;
    if status != Status::Stopped {
        stop(container, grace)?;
    }
    // Best effort first (leftovers of a crashed supervisor), then a removal
    // that reports what could not be removed.
    let cgroup = container.cgroup()?;
    cleanup_runtime(&container.config, &cgroup);
    if container.config.disk.is_some() {
        crate::storage::disk::release(&container.dir)?;
    }
    if cgroup.exists() {
        cgroup.remove()?;
    }
    let _lock = container.host.lock()?;
    fs::remove_dir_all(&container.dir).ctx("removing container directory", &container.dir)
}

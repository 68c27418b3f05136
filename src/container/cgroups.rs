//! cgroups for containers: layout detection (pure cgroup2, hybrid, v1),
//! limits, membership, the freezer, and removal.
//!
//! INTERFACE SKETCH (to be implemented).

use std::path::PathBuf;

use nix::unistd::Pid;

use crate::container::config::Limits;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// Whether tasks run or are stopped by the freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone)]
pub enum CgroupLayout {}

impl CgroupLayout {
    /// Reads /proc/self/mountinfo and finds the layout.
    pub fn detect() -> Result<Self, CgroupError> {
        todo!()
    }
}

/// One container's cgroup(s): `<parent>/<name>` in each hierarchy used.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {}

impl ContainerCgroup {
    pub fn new(_layout: &CgroupLayout, _parent: &str, _name: &str) -> Self {
        todo!()
    }
    /// Creates the cgroup(s) and applies limits (and the device whitelist on v1).
    pub fn create(&self, _limits: &Limits) -> Result<(), CgroupError> {
        todo!()
    }
    /// Moves `pid` (0 = the calling process) into every hierarchy.
    pub fn add_pid(&self, _pid: Pid) -> Result<(), CgroupError> {
        todo!()
    }
    pub fn freeze(&self) -> Result<(), CgroupError> {
        todo!()
    }
    pub fn thaw(&self) -> Result<(), CgroupError> {
        todo!()
    }
    pub fn freezer_state(&self) -> Result<FreezerState, CgroupError> {
        todo!()
    }
    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        todo!()
    }
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        todo!()
    }
    pub fn remove(&self) -> Result<(), CgroupError> {
        todo!()
    }
    pub fn exists(&self) -> bool {
        todo!()
    }
}

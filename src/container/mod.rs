//! Containers: config, lifecycle verbs, and the kernel objects a container is
//! made of.
//!
//! Data flow of `cr run`: [`create`] validates and writes `config.toml`;
//! [`start`] spawns the [`supervisor`], which creates the [`cgroups`], forks
//! PID 1 into new namespaces, wires the [`network`], and lets PID 1 build its
//! [`rootfs`], drop [`capabilities`] and exec the command; with `--userns`
//! PID 1 runs in its own [`userns`]. [`exec`] joins a
//! running container; [`stop`] and [`destroy`] take it down.

pub mod capabilities;
pub mod cgroups;
pub mod config;
pub mod create;
pub mod destroy;
pub mod exec;
pub mod freeze;
pub mod network;
pub mod rootfs;
pub mod start;
pub mod state;
pub mod stop;
pub mod supervisor;
pub mod upper;
pub mod userns;

use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::host::{validate_name, Host};
use cgroups::{CgroupLayout, ContainerCgroup, FreezerState};
use config::ContainerConfig;
use state::{RuntimeState, Status};

/// A container known to a host: its directory, config and runtime state.
#[derive(Debug, Clone)]
pub struct Container {
    pub host: Host,
    pub name: String,
    pub dir: PathBuf,
    pub config: ContainerConfig,
}

impl Container {
    /// Opens an existing container by name.
    pub fn open(host: &Host, name: &str) -> Result<Self> {
        validate_name("container", name)?;
        let dir = host.container_dir(name);
        let config_path = dir.join("config.toml");
        if !config_path.is_file() {
            return Err(Error::NoSuchContainer(name.to_string()));
        }
        let config = ContainerConfig::load(&config_path)?;
        Ok(Container {
            host: host.clone(),
            name: name.to_string(),
            dir,
            config,
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub fn runtime_state(&self) -> Result<Option<RuntimeState>> {
        RuntimeState::load(&self.state_path())
    }

    pub fn cgroup(&self) -> Result<ContainerCgroup> {
        let layout = CgroupLayout::detect()?;
        Ok(ContainerCgroup::new(
            &layout,
            &self.host.cgroup_parent(),
            &self.name,
        ))
    }

    /// Running, frozen or stopped, and the host PID of PID 1 when it runs.
    pub fn status(&self) -> Result<(Status, Option<Pid>)> {
        let Some(state) = self.runtime_state()? else {
            return Ok((Status::Stopped, None));
        };
        if !state.init_alive() {
            return Ok((Status::Stopped, None));
        }
        let pid = Pid::from_raw(state.init_pid);
        let cgroup = self.cgroup()?;
        let frozen = match cgroup.freezer_state() {
            Ok(FreezerState::Thawed) => false,
            Ok(FreezerState::Freezing | FreezerState::Frozen) => true,
            // PID 1 exited just now and its supervisor removed the cgroups.
            Err(_) if !cgroup.exists() => return Ok((Status::Stopped, None)),
            Err(e) => return Err(e.into()),
        };
        Ok((
            if frozen {
                Status::Frozen
            } else {
                Status::Running
            },
            Some(pid),
        ))
    }

    /// The host PID of PID 1, or an error naming the state the container is in.
    pub fn require_running(&self, action: &'static str) -> Result<Pid> {
        match self.status()? {
            (Status::Running, Some(pid)) => Ok(pid),
            (state, _) => Err(Error::WrongState {
                name: self.name.clone(),
                state: state.to_string(),
                action,
                needed: "running",
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

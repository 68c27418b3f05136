//! `cr stop`: SIGTERM to PID 1, SIGKILL to every process of the container
//! after the grace time, then wait until its supervisor has recorded the exit
//! and removed the container's cgroups and veth.

use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::state::{process_start_time, unix_now, ExitRecord, Status};
use crate::container::supervisor::{cleanup_runtime, record_exit};
use crate::container::Container;
use crate::error::{Error, Result};

/// How long the supervisor may take to clean up after PID 1 died.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(10);

/// Stops a running or frozen container. `grace` is how long PID 1 may take
/// to exit after SIGTERM; zero kills at once.
pub fn stop(container: &Container, grace: Duration) -> Result<()> {
    let (status, pid) = container.status()?;
    let state = container.runtime_state()?;
    let cgroup = container.cgroup()?;
    match (status, pid) {
        (Status::Stopped, _) => {
            return Err(Error::WrongState {
                name: container.name.clone(),
                state: status.to_string(),
                action: "stop",
                needed: "running or frozen",
            })
        }
        (Status::Frozen, _) => cgroup.kill_all()?,
        (Status::Running, Some(pid)) => {
            if grace.is_zero() || kill(pid, Signal::SIGTERM).is_err() || !wait_gone(pid, grace) {
                cgroup.kill_all()?;
            }
        }
        (Status::Running, None) => cgroup.kill_all()?,
    }
    if let Some(state) = state {
        let init = Pid::from_raw(state.init_pid);
        if !wait_gone(init, SUPERVISOR_GRACE) {
            return Err(Error::Invalid(format!(
                "container {:?}: PID 1 (host PID {init}) did not exit after SIGKILL",
                container.name
            )));
        }
        let supervisor = Pid::from_raw(state.supervisor_pid);
        if !wait_gone(supervisor, SUPERVISOR_GRACE) || supervisor_missed_exit(container)? {
            // The supervisor is gone or stuck: record and clean up ourselves.
            record_exit(
                &container.dir,
                ExitRecord {
                    code: None,
                    signal: Some(Signal::SIGKILL as i32),
                    at: unix_now(),
                },
            )?;
        }
    }
    cleanup_runtime(&container.config, &cgroup);
    if container.config.disk.is_some() {
        // The supervisor stops the disk server after PID 1; if it could
        // not (it died), do it here.
        crate::storage::disk::release(&container.dir)?;
    }
    Ok(())
}

/// Stops a container that may already be stopping (its processes were just
/// killed, as a checkpoint does): when it is stopped already, waits until
/// its supervisor has finished (cgroups removed, veth gone), so that a
/// restore right after finds nothing of it in the way.
pub fn stop_killed(container: &Container) -> Result<()> {
    match stop(container, Duration::ZERO) {
        Ok(()) => Ok(()),
        Err(e) => match container.status() {
            Ok((Status::Stopped, _)) => {
                if let Some(state) = container.runtime_state()? {
                    wait_gone(Pid::from_raw(state.supervisor_pid), SUPERVISOR_GRACE);
                }
                let cgroup = container.cgroup()?;
                cleanup_runtime(&container.config, &cgroup);
                if cgroup.exists() {
                    cgroup.remove()?;
                }
                Ok(())
            }
            _ => Err(e),
        },
    }
}

fn supervisor_missed_exit(container: &Container) -> Result<bool> {
    Ok(container.runtime_state()?.is_some_and(|s| s.exit.is_none()))
}

/// Waits until `pid` is gone (or a zombie); false if it still runs after `timeout`.
pub fn wait_gone(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if process_start_time(pid.as_raw()).is_none() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(5));
    }
}

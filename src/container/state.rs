//! A container's runtime state: `ROOT/containers/NAME/state.json`, written by
//! its supervisor when PID 1 starts and again when it exits.
//!
//! The state a user sees (`running`, `frozen`, `stopped`) is derived, not
//! stored: a container runs while the recorded PID 1 is alive (checked with
//! its start time, so a recycled PID is never mistaken for it) and no exit
//! was recorded; it is frozen when its freezer cgroup says so.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::container::config::write_atomic;
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// Host PID of the supervisor, the parent of PID 1.
    pub supervisor_pid: i32,
    /// Host PID of the container's PID 1.
    pub init_pid: i32,
    /// PID 1's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub init_start_time: u64,
    /// Unix time when PID 1 started.
    pub started_at: u64,
    /// How PID 1 ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit status when PID 1 called exit.
    pub code: Option<i32>,
    /// Signal number when PID 1 was killed by a signal.
    pub signal: Option<i32>,
    /// Unix time of the exit.
    pub at: u64,
}

/// What a user sees in `cr list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Frozen,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Frozen => "frozen",
            Status::Stopped => "stopped",
        })
    }
}

impl RuntimeState {
    /// Reads the state file; `None` when the container never started.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Config {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading container state", path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, &bytes)
    }

    /// Whether the recorded PID 1 is still the live process it was.
    pub fn init_alive(&self) -> bool {
        self.exit.is_none() && process_start_time(self.init_pid) == Some(self.init_start_time)
    }
}

/// A process's start time in clock ticks since boot, or `None` if it is gone
/// (or a zombie).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start behind the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a file, ignoring that it is already gone.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e).ctx("removing", path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }
}

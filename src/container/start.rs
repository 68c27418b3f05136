//! `cr start`: launch a created container's supervisor and wait until PID 1
//! runs (or until the supervisor reports why it could not start).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::{pipe2, Pid};

use crate::container::state::Status;
use crate::container::supervisor::STATUS_FD;
use crate::container::Container;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::restore::{PagesMode, RestoreOptions};

/// Starts the container; returns the host PID of its PID 1.
pub fn start(container: &Container) -> Result<Pid> {
    start_with(container, None)
}

/// Starts the container, or with `restore`, rebuilds it from that checkpoint
/// image; returns the host PID of its PID 1.
pub fn start_with(container: &Container, restore: Option<(&Path, RestoreOptions)>) -> Result<Pid> {
    let (status, _) = container.status()?;
    if status != Status::Stopped {
        return Err(Error::WrongState {
            name: container.name.clone(),
            state: status.to_string(),
            action: "start",
            needed: "stopped",
        });
    }
    let exe = std::env::current_exe().ctx("finding the cr executable", "/proc/self/exe")?;
    let (read_end, write_end) =
        pipe2(OFlag::O_CLOEXEC).sys(|| "creating the status pipe".into())?;
    let log_path = container.dir.join("supervisor.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .ctx("opening supervisor log", &log_path)?;
    let log_err = log.try_clone().ctx("opening supervisor log", &log_path)?;
    let status_fd = write_end.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.arg("--root")
        .arg(container.host.root())
        .arg("__supervise")
        .arg(&container.name)
        .args(restore.iter().flat_map(|(dir, how)| {
            let pages = match how.pages {
                PagesMode::Lazy => "lazy",
                PagesMode::Eager => "eager",
            };
            let mut args = vec![
                std::ffi::OsStr::new("--restore"),
                dir.as_os_str(),
                std::ffi::OsStr::new("--pages"),
                std::ffi::OsStr::new(pages),
            ];
            if how.frozen {
                args.push(std::ffi::OsStr::new("--frozen"));
            }
            if how.staged {
                args.push(std::ffi::OsStr::new("--staged"));
            }
            args
        }))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure only calls dup2 and setsid, both async-signal-safe,
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(status_fd, STATUS_FD) < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().ctx("starting the supervisor", &exe)?;
    drop(write_end);
    let mut report = String::new();
    let mut reader = File::from(read_end);
    let read = reader.read_to_string(&mut report);
    if report.is_empty() || read.is_err() {
        // The supervisor died before it could say anything.
        let status = child.wait().ok();
        return Err(Error::Start {
            name: container.name.clone(),
            message: format!(
                "its supervisor exited ({}) without reporting; see {}",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "status unknown".into()),
                log_path.display()
            ),
        });
    }
    let line = report.lines().next().unwrap_or_default();
    if let Some(pid) = line.strip_prefix("ok ") {
        // The supervisor lives on in its own session; init adopts it when
        // this process exits.
        drop(child);
        let pid: i32 = pid.trim().parse().map_err(|_| Error::Start {
            name: container.name.clone(),
            message: format!("its supervisor reported {line:?}"),
        })?;
        return Ok(Pid::from_raw(pid));
    }
    let _ = child.wait();
    Err(Error::Start {
        name: container.name.clone(),
        message: line.strip_prefix("error ").unwrap_or(line).to_string(),
    })
}

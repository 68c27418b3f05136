//! `cr __disk-serve NAME`: the process that serves a container's disk.
//!
//! ```text
//! supervisor (cr start)                      cr __disk-serve NAME (own session)
//! spawn, status pipe on fd 3  ─────────────▶ flock disk/lock (one server per chain)
//!                                            open the chain (FsDir disk/chain)
//!                                            mount FUSE on disk/mnt (2 threads)
//!                                            listen on disk/control.sock
//!                                            write disk/server.json {pid, start}
//!             ◀──────────────── "ok" ─────── loop: one control request at a time
//! attach the loop device, PID 1 mounts ext4
//! ...
//! PID 1 exited ── {"op":"stop"} ───────────▶ wait (10 s) until no handle is open
//!                                            flush, unmount, remove the socket
//!                                            and server.json, exit 0
//! ```
//!
//! The server is not a thread of the supervisor: it must outlive `cr
//! start`, and a crash of one must not take the other down. A server that
//! dies leaves `server.json` behind: `cr status` reports it dead, and the
//! supervisor (polling the server's pidfd) logs it and detaches the dead
//! mount. The kernel then answers every I/O on the loop device with EIO;
//! everything the container had fsync'ed is in the chain (see
//! `docs/disk-format.md`, the durability rule).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cr_formats::disk::{Chain, FsDir};
use fuser::{Config, MountOption, Session};
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{pipe2, Pid};
use serde::{Deserialize, Serialize};

use super::control::{self, Request, Shared};
use super::fuse::FlatDisk;
use super::DiskPaths;
use crate::container::state::process_start_time;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::host::Host;

/// The fd on which the server reports to whoever spawned it.
const STATUS_FD: RawFd = 3;
/// How long a stopping server waits for the loop device to let go.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long a control request may take (a merge of a large disk is longer:
/// see [`call_timeout`]).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// `disk/server.json`: which process serves the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    pub pid: i32,
    /// Its start time in clock ticks since boot, against PID reuse.
    pub start_time: u64,
}

/// Whether a container's disk server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ServerHealth {
    /// No server and no record of one.
    Stopped,
    Running {
        pid: i32,
    },
    /// A server was recorded but its process is gone: it died (or was
    /// killed) without stopping.
    Dead {
        pid: i32,
    },
}

impl std::fmt::Display for ServerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerHealth::Stopped => f.write_str("stopped"),
            ServerHealth::Running { pid } => write!(f, "running (pid {pid})"),
            ServerHealth::Dead { pid } => write!(
                f,
                "DEAD (pid {pid} is gone; the container's root gives I/O errors)"
            ),
        }
    }
}

pub fn health(paths: &DiskPaths) -> ServerHealth {
    let Ok(text) = fs::read_to_string(&paths.state) else {
        return ServerHealth::Stopped;
    };
    match serde_json::from_str::<ServerState>(&text) {
        Ok(s) if process_start_time(s.pid) == Some(s.start_time) => {
            ServerHealth::Running { pid: s.pid }
        }
        Ok(s) => ServerHealth::Dead { pid: s.pid },
        Err(_) => ServerHealth::Dead { pid: 0 },
    }
}

/// Entry point of `cr __disk-serve NAME`.
pub fn run(host: &Host, name: &str) -> Result<i32> {
    // SAFETY: fd 3 was set up by `spawn` (dup2 in pre_exec) as the write end
    // of the status pipe, and nothing else in this process owns it.
    let mut status = File::from(unsafe { OwnedFd::from_raw_fd(STATUS_FD) });
    for sig in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }.sys(|| format!("ignoring {sig}"))?;
    }
    let paths = DiskPaths::new(&host.container_dir(name));
    match start(&paths) {
        Ok((shared, listener, session, _lock)) => {
            let _ = writeln!(status, "ok");
            drop(status);
            serve(&paths, &shared, &listener);
            drop(listener);
            let _ = fs::remove_file(&paths.socket);
            let unmounted = session.umount_and_join();
            let _ = fs::remove_file(&paths.state);
            if let Err(e) = unmounted {
                eprintln!("disk server: unmounting {}: {e}", paths.mnt.display());
                return Ok(1);
            }
            Ok(0)
        }
        Err(err) => {
            let _ = writeln!(status, "error {}", err.to_string().replace('\n', " "));
            Ok(1)
        }
    }
}

type Started = (
    Arc<Shared>,
    UnixListener,
    fuser::BackgroundSession,
    Flock<File>,
);

fn start(paths: &DiskPaths) -> Result<Started> {
    let lock = lock_chain(paths)?;
    let chain = Chain::open(FsDir::new(&paths.chain)).map_err(|e| Error::Disk(Box::new(e)))?;
    if !chain.is_writable() {
        return Err(Error::Invalid(format!(
            "the disk chain in {} has no writable top",
            paths.chain.display()
        )));
    }
    let shared = Arc::new(Shared::new(chain, paths.chain.clone()));
    // A server that died left its mount behind (ENOTCONN): detach it.
    let _ = umount2(&paths.mnt, MntFlags::MNT_DETACH);
    fs::create_dir_all(&paths.mnt).ctx("creating", &paths.mnt)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("cr-disk".into()),
        MountOption::Subtype("cr-disk".into()),
    ];
    config.n_threads = Some(2);
    let session = Session::new(FlatDisk::new(shared.clone()), &paths.mnt, &config)
        .ctx("mounting the disk's FUSE filesystem on", &paths.mnt)?
        .spawn()
        .ctx("starting the FUSE threads for", &paths.mnt)?;
    let _ = fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket).ctx("listening on", &paths.socket)?;
    let me = std::process::id() as i32;
    let state = ServerState {
        pid: me,
        start_time: process_start_time(me).unwrap_or(0),
    };
    let text = serde_json::to_string(&state)
        .map_err(|e| Error::Invalid(format!("encoding server state: {e}")))?;
    fs::write(&paths.state, text).ctx("writing", &paths.state)?;
    Ok((shared, listener, session, lock))
}

/// Takes the chain's lock file: one server or `cr disk` command at a time.
pub fn lock_chain(paths: &DiskPaths) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
        .ctx("opening", &paths.lock)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        Error::sys(
            format!(
                "locking the disk chain ({}): another cr process is using it",
                paths.lock.display()
            ),
            e,
        )
    })
}

fn serve(paths: &DiskPaths, shared: &Shared, listener: &UnixListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                control::serve_connection(shared, s);
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(e) => {
                eprintln!("disk server: accepting on {}: {e}", paths.socket.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits until no handle on the flat file is open (the loop device let go).
pub fn wait_released(shared: &Shared) -> Result<()> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let open = shared.open_files.load(Ordering::SeqCst);
        if open == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Invalid(format!(
                "the disk is still open ({open} handles, a loop device?) after {}s; not stopping",
                RELEASE_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `cr __disk-serve NAME` in its own session and waits until it
/// serves (or reports why it cannot). The caller reaps it.
pub fn spawn(host: &Host, name: &str, paths: &DiskPaths) -> Result<Pid> {
    let exe = std::env::current_exe().ctx("finding the cr executable", "/proc/self/exe")?;
    let (read_end, write_end) =
        pipe2(OFlag::O_CLOEXEC).sys(|| "creating the status pipe".into())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .ctx("opening", &paths.log)?;
    let log_err = log.try_clone().ctx("opening", &paths.log)?;
    let status_fd = std::os::fd::AsRawFd::as_raw_fd(&write_end);
    let mut cmd = Command::new(&exe);
    cmd.arg("--root")
        .arg(host.root())
        .arg("__disk-serve")
        .arg(name)
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
    let mut child = cmd.spawn().ctx("starting the disk server", &exe)?;
    drop(write_end);
    let mut report = String::new();
    let _ = File::from(read_end).read_to_string(&mut report);
    let line = report.lines().next().unwrap_or_default().to_string();
    if line == "ok" {
        return Ok(Pid::from_raw(child.id() as i32));
    }
    let _ = child.wait();
    Err(Error::Invalid(format!(
        "the disk server of {name:?} did not start: {}",
        match line.strip_prefix("error ") {
            Some(m) => m.to_string(),
            None => format!("it exited without reporting; see {}", paths.log.display()),
        }
    )))
}

/// Stops the server if one runs; removes what a dead one left (its mount,
/// socket and record).
pub fn stop(paths: &DiskPaths) -> Result<()> {
    match health(paths) {
        ServerHealth::Stopped => Ok(()),
        ServerHealth::Dead { .. } => {
            clear_dead(paths);
            Ok(())
        }
        ServerHealth::Running { pid } => {
            let exited = || {
                let deadline = Instant::now() + RELEASE_WAIT;
                while process_start_time(pid).is_some() {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    reap(Pid::from_raw(pid));
                    std::thread::sleep(Duration::from_millis(10));
                }
                true
            };
            let asked = control::call(
                &paths.socket,
                &Request::Stop,
                &mut Vec::new(),
                CONTROL_TIMEOUT,
            );
            match asked {
                Ok(_) if exited() => Ok(()),
                Ok(_) => Err(Error::Invalid(format!(
                    "the disk server (pid {pid}) did not exit after it was stopped"
                ))),
                // Stopped by someone else meanwhile (the supervisor stops it
                // once PID 1 is gone): its socket goes first.
                Err(_) if exited() => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Detaches a dead server's FUSE mount and removes its socket; keeps
/// nothing that would make the next start fail.
pub fn clear_dead(paths: &DiskPaths) {
    let _ = umount2(&paths.mnt, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(&paths.socket);
    let _ = fs::remove_file(&paths.state);
}

/// Reaps `pid` if it is an exited child of this process.
pub fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// The timeout for a request: merges and exports scale with the disk.
pub fn call_timeout(req: &Request) -> Duration {
    match req {
        Request::Merge | Request::MergeInto { .. } | Request::Export { .. } | Request::Check => {
            Duration::from_secs(3600)
        }
        _ => CONTROL_TIMEOUT,
    }
}

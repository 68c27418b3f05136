//! `cr exec` and `cr enter`: run a command inside a running container.
//!
//! The calling process opens PID 1's namespace files, moves itself into the
//! container's cgroups, joins every namespace with `setns` (its user
//! namespace first, when it has one, then becoming uid/gid 0 there), and forks: the
//! child is then inside the container's PID namespace as well, drops the
//! capabilities a container does not have, and execs. The parent waits and
//! passes the exit status through (128 + N for a death by signal N).
//! `cr exec` passes stdin, stdout and stderr straight through; `cr enter`
//! gives the shell a new pty and copies between it and the caller's terminal.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, execvpe, fork, isatty, read, setsid, write, ForkResult, Pid};

use crate::container::capabilities::drop_host_capabilities;
use crate::container::supervisor::{attach_stdio, CONTAINER_ENV};
use crate::container::userns;
use crate::container::Container;
use crate::error::{Error, IoContext, Result, SysContext};

/// Namespaces joined, in order. The mount namespace comes last: after it,
/// paths resolve inside the container.
const JOIN_ORDER: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs `argv` in the container with the caller's stdio; returns its exit code.
pub fn exec(container: &Container, argv: &[String]) -> Result<i32> {
    if argv.is_empty() {
        return Err(Error::Invalid("cr exec needs a command after --".into()));
    }
    let argv = to_cstrings(argv)?;
    let init = container.require_running("exec")?;
    join(container, init)?;
    // SAFETY: cr is single-threaded here, so the child may run ordinary code.
    match unsafe { fork() }.sys(|| "forking the command".into())? {
        ForkResult::Child => {
            let Err(err) = exec_child(&argv);
            eprintln!("cr exec: {err}");
            // SAFETY: ends the forked child without running destructors twice.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => wait_for(child),
    }
}

/// Starts an interactive login shell in the container on a new pty.
pub fn enter(container: &Container) -> Result<i32> {
    let init = container.require_running("enter")?;
    let stdin = std::io::stdin();
    let interactive = isatty(stdin.as_fd()).unwrap_or(false);
    let size = if interactive {
        window_size(stdin.as_raw_fd())
    } else {
        None
    };
    join(container, init)?;
    // Opened after joining the mount namespace: the pty belongs to the
    // container's devpts, so the shell's tty has a name inside.
    let pty = openpty(size.as_ref(), None).sys(|| "opening a pty".into())?;
    let shell = login_shell();
    let argv = to_cstrings(&[shell, "-l".to_string()])?;
    // SAFETY: cr is single-threaded here, so the child may run ordinary code.
    match unsafe { fork() }.sys(|| "forking the shell".into())? {
        ForkResult::Child => {
            drop(pty.master);
            let Err(err) = attach_tty(pty.slave).and_then(|()| exec_child(&argv));
            eprintln!("cr enter: {err}");
            // SAFETY: ends the forked child without running destructors twice.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(pty.slave);
            let saved = if interactive {
                Some(raw_mode(&stdin)?)
            } else {
                None
            };
            let relayed = relay(&pty.master, interactive);
            if let Some(saved) = saved {
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
            }
            relayed?;
            wait_for(child)
        }
    }
}

/// The shell `cr enter` starts: bash when the image has it. Called after
/// joining the mount namespace, so paths are the container's.
fn login_shell() -> String {
    for shell in ["/bin/bash", "/bin/sh"] {
        if std::path::Path::new(shell).exists() {
            return shell.to_string();
        }
    }
    "/bin/sh".to_string()
}

fn to_cstrings(items: &[String]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| Error::Invalid(format!("argument {s:?} contains a NUL byte")))
        })
        .collect()
}

/// Moves the calling process into the container's cgroups and namespaces.
/// In a container with a user namespace it joins that first (which gives it
/// every capability over the container's other namespaces) and ends as
/// uid/gid 0 inside.
fn join(container: &Container, init: Pid) -> Result<()> {
    let user_ns = userns::open_userns(init)?;
    let user_ns = if userns::is_other_userns(&user_ns)? {
        Some(user_ns)
    } else {
        None
    };
    let mut fds: Vec<(OwnedFd, CloneFlags, &str)> = Vec::new();
    for (name, flag) in JOIN_ORDER {
        let path = format!("/proc/{init}/ns/{name}");
        let file = File::open(&path).ctx("opening namespace", &path)?;
        fds.push((OwnedFd::from(file), flag, name));
    }
    container.cgroup()?.add_pid(Pid::from_raw(0))?;
    if let Some(ns) = &user_ns {
        setns(ns, CloneFlags::CLONE_NEWUSER).sys(|| {
            format!(
                "joining the user namespace of container {:?}",
                container.name
            )
        })?;
    }
    for (fd, flag, name) in fds {
        setns(fd, flag).sys(|| {
            format!(
                "joining the {name} namespace of container {:?}",
                container.name
            )
        })?;
    }
    if user_ns.is_some() {
        userns::become_root()?;
    }
    Ok(())
}

/// The child side: drop capabilities, reset the environment, exec.
fn exec_child(argv: &[CString]) -> Result<Infallible> {
    chdir("/").sys(|| "entering /".into())?;
    drop_host_capabilities()?;
    let env = to_cstrings(
        &CONTAINER_ENV
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?;
    // execvpe searches the caller's PATH: make it the container's.
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    let err = execvpe(&argv[0], argv, &env).map_err(|e| match e {
        Errno::ENOENT => {
            Error::Invalid(format!("{:?}: command not found in the container", argv[0]))
        }
        e => Error::sys(format!("executing {:?}", argv[0]), e),
    });
    match err {
        Err(e) => Err(e),
    }
}

fn attach_tty(slave: OwnedFd) -> Result<()> {
    setsid().sys(|| "starting a session".into())?;
    // SAFETY: TIOCSCTTY takes an int argument; the fd is an open pty slave.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).sys(|| "taking the pty as controlling terminal".into())?;
    attach_stdio(&slave)
}

/// Waits for the command; its exit code, or 128 + signal.
fn wait_for(child: Pid) -> Result<i32> {
    // Ctrl-C and Ctrl-\ belong to the command, not to cr.
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waiting for the command", e)),
        }
    }
}

fn window_size(fd: i32) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(ws)
}

fn raw_mode(stdin: &std::io::Stdin) -> Result<Termios> {
    let saved = tcgetattr(stdin).sys(|| "reading terminal settings".into())?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(stdin, SetArg::TCSANOW, &raw).sys(|| "setting raw mode".into())?;
    Ok(saved)
}

/// Copies stdin to the pty and the pty to stdout until the shell is gone.
fn relay(master: &OwnedFd, interactive: bool) -> Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut buf = [0u8; 16384];
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waiting for the pty", e)),
            Ok(_) => {}
        }
        let master_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let stdin_ready = stdin_open
            && fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
        if master_ready {
            match read(master.as_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => return Ok(()),
                Ok(n) => write_all(&stdout, &buf[..n])?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("reading the pty", e)),
            }
        }
        if stdin_ready {
            match read(stdin.as_fd(), &mut buf) {
                Ok(0) => {
                    stdin_open = false;
                    if !interactive {
                        // End of input: end of file for the shell, as Ctrl-D.
                        write_all(master, &[4])?;
                    }
                }
                Ok(n) => write_all(master, &buf[..n])?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("reading stdin", e)),
            }
        }
    }
}

fn write_all<F: AsFd>(fd: F, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        match write(fd.as_fd(), bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("writing to the terminal", e)),
        }
    }
    Ok(())
}

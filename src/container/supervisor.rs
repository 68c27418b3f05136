//! The supervisor: one small process per running container, the parent of
//! its PID 1, so the container does not depend on the shell that started it.
//!
//! `cr start` re-executes `cr` as `cr __supervise NAME` in a new session and
//! waits on a status pipe (fd 3). The supervisor:
//!
//! ```text
//! supervisor                                   PID 1 (cloned, new PID namespace)
//! create cgroups with limits
//! open the console pty, console.log
//! clone3(NEWPID [| NEWUSER]) ────────────────▶ [userns: wait for the id maps]
//! [userns: uid_map, gid_map, idmapped
//!  mounts of the layers ── SCM_RIGHTS ──────▶ setresuid/setresgid(0)]
//!                                             unshare(mnt uts ipc net)
//!            ◀───────────── 'R' (namespaces ready)
//! move PID 1 into its cgroups                 build the mount tree (overlay,
//! network: veth into PID 1's netns            /proc, /sys, /dev) meanwhile
//!            ───────────── 'G' ─────────────▶ unshare(cgroup), setsid, console
//!                                             as ctty, pivot_root, hostname
//!                                             drop capabilities, exec CMD
//!            ◀── EOF (exec worked) or an error message
//! write state.json, report "ok PID" on fd 3
//! loop: copy console to console.log, until PID 1 exits
//! record the exit in state.json, remove cgroups and veth
//! ```
//!
//! Any failure before the exec is reported on fd 3 as "error MESSAGE" and
//! everything created so far is removed.
//!
//! PID 1 is created with a raw `clone3` (fork-like: no new stack) so that,
//! with `--userns`, it starts in a new user namespace as well, which then
//! owns every namespace PID 1 creates (see [`crate::container::userns`]).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    dup2_stderr, dup2_stdin, dup2_stdout, execve, pipe2, read, sethostname, setsid, Pid,
};

use crate::clone3::{fork_into, Cloned};
use crate::container::capabilities::drop_host_capabilities;
use crate::container::cgroups::{CgroupLayout, ContainerCgroup};
use crate::container::config::{ContainerConfig, UsernsConfig};
use crate::container::network;
use crate::container::rootfs::{self, IdmappedLayers, RootfsDirs, RootfsSpec};
use crate::container::state::{process_start_time, unix_now, ExitRecord, RuntimeState};
use crate::container::userns;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::host::Host;
use crate::image::ImageStore;
use crate::restore::{self, image::LoadedImage, RestoreOptions};
use crate::storage::{self, disk::AttachedDisk};

/// The fd on which the supervisor reports to `cr start`.
pub const STATUS_FD: RawFd = 3;

/// Namespaces PID 1 creates for itself before its network is wired. The PID
/// (and user) namespace comes from the supervisor's `clone3`; the cgroup
/// namespace comes after PID 1 joined its cgroups.
pub const CONTAINER_NAMESPACES: [CloneFlags; 4] = [
    CloneFlags::CLONE_NEWNS,
    CloneFlags::CLONE_NEWUTS,
    CloneFlags::CLONE_NEWIPC,
    CloneFlags::CLONE_NEWNET,
];

/// The environment a container's command starts with.
pub const CONTAINER_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=linux",
    "container=cr",
];

/// Everything the supervisor needs after PID 1 runs.
struct Launched {
    init: Pid,
    console: OwnedFd,
    cgroup: ContainerCgroup,
    /// With `--disk`: the disk server's pid (the supervisor watches it).
    disk_server: Option<Pid>,
}

/// Entry point of `cr __supervise NAME`. Never returns on success paths that
/// matter: it exits when PID 1 exits.
/// `restore` names a checkpoint image: PID 1 then rebuilds the image's
/// process tree instead of executing the container's command.
pub fn run(host: &Host, name: &str, restore: Option<(&Path, RestoreOptions)>) -> Result<i32> {
    let how = restore.map(|r| r.1).unwrap_or_default();
    let restore = restore.map(|r| r.0);
    // SAFETY: fd 3 was set up by `cr start` (dup2 in pre_exec) as the write
    // end of the status pipe, and nothing else in this process owns it.
    let mut status = File::from(unsafe { OwnedFd::from_raw_fd(STATUS_FD) });
    let dir = host.container_dir(name);
    let config = ContainerConfig::load(&dir.join("config.toml"))?;
    // The supervisor must outlive the terminal and the cr that started it.
    for sig in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }.sys(|| format!("ignoring {sig}"))?;
    }
    if restore.is_some() {
        restore::timing::mark("start");
    }
    let image = match restore.map(LoadedImage::load).transpose() {
        Ok(image) => image,
        Err(err) => {
            let _ = writeln!(status, "error {}", one_line(&err.to_string()));
            return Ok(1);
        }
    };
    if image.is_some() {
        restore::timing::mark("image loaded");
    }
    match launch(host, &config, image.as_ref(), how) {
        Ok(launched) => {
            if image.is_some() {
                restore::timing::mark("state saved");
                eprintln!("{}", restore::timing::summary());
            }
            drop(image);
            let _ = writeln!(status, "ok {}", launched.init);
            drop(status);
            monitor(host, &config, launched)
        }
        Err(err) => {
            let _ = writeln!(status, "error {}", one_line(&err.to_string()));
            Ok(1)
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

fn launch(
    host: &Host,
    config: &ContainerConfig,
    restore: Option<&LoadedImage>,
    how: RestoreOptions,
) -> Result<Launched> {
    let dir = host.container_dir(&config.name);
    let image = ImageStore::new(host.images_dir()).get(&config.image)?;
    let command = if config.command.is_empty() {
        image.default_command()?
    } else {
        config.command.clone()
    };
    image.resolve_command(&command[0])?;
    let dirs = RootfsDirs::new(&dir);
    dirs.create(config.userns.is_some())?;

    let layout = CgroupLayout::detect()?;
    let cgroup = ContainerCgroup::new(&layout, &host.cgroup_parent(), &config.name);
    if !cgroup.pids()?.is_empty() {
        return Err(Error::Invalid(format!(
            "container {:?} still has processes in its cgroup; stop it first",
            config.name
        )));
    }
    cgroup.create(&config.limits)?;
    // The disk is served and attached before PID 1 exists: PID 1 mounts it.
    let disk = match config.disk {
        Some(_) => match attach_disk(host, config, &dir) {
            Ok(d) => Some(d),
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        },
        None => None,
    };
    let launched = spawn_init(
        config,
        &image.rootfs,
        &dirs,
        &command,
        &cgroup,
        &dir,
        restore.map(|image| (image, how)),
        disk.as_ref().map(|d| d.device.path.as_path()),
    )
    .inspect_err(|_| {
        let _ = cgroup.kill_all();
        let _ = cgroup.remove();
        if let Some(net) = &config.network {
            let _ = network::teardown(net);
        }
    });
    // PID 1 has mounted the disk (or failed): the ext4 mount holds the loop
    // device now, and it detaches itself when that mount goes.
    let server = disk.map(|d| d.server);
    match launched {
        Ok(mut launched) => {
            launched.disk_server = server;
            Ok(launched)
        }
        Err(e) => {
            if server.is_some() {
                let _ = storage::disk::release(&dir);
            }
            Err(e)
        }
    }
}

/// Serves and attaches the container's disk; grows its filesystem first if
/// a `cr disk grow` could not do it online.
fn attach_disk(host: &Host, config: &ContainerConfig, dir: &Path) -> Result<AttachedDisk> {
    let disk = storage::disk::attach(host, &config.name, dir)?;
    match storage::disk::grow_filesystem_offline(&disk.device.path) {
        Ok(true) => eprintln!(
            "disk: grew the filesystem on {} to the disk's size",
            disk.device.path.display()
        ),
        Ok(false) => {}
        Err(e) => {
            drop(disk.device);
            let _ = storage::disk::release(dir);
            return Err(e);
        }
    }
    Ok(disk)
}

#[allow(clippy::too_many_arguments)]
fn spawn_init(
    config: &ContainerConfig,
    lower: &Path,
    dirs: &RootfsDirs,
    command: &[String],
    cgroup: &ContainerCgroup,
    dir: &Path,
    restore: Option<(&LoadedImage, RestoreOptions)>,
    disk: Option<&Path>,
) -> Result<Launched> {
    let how = restore.map(|r| r.1).unwrap_or_default();
    let restore = restore.map(|r| r.0);
    // A lock a frozen restore left belongs to the namespace of a run that ended.
    let _ = std::fs::remove_file(dir.join(crate::container::freeze::NETLOCK_MARK));
    let pty = openpty(
        Some(&Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .sys(|| "opening the console pty".into())?;
    // The console is a log, not an interactive terminal: no CR before LF.
    let mut termios = tcgetattr(&pty.slave).sys(|| "reading console settings".into())?;
    termios.output_flags.remove(OutputFlags::ONLCR);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).sys(|| "setting console mode".into())?;
    let console_path = nix::unistd::ttyname(&pty.slave).sys(|| "naming the console pty".into())?;
    if let Some(map) = &config.userns {
        // Root inside must be able to reopen /dev/console: make the pty its own.
        nix::unistd::fchown(
            &pty.slave,
            Some(nix::unistd::Uid::from_raw(map.uid_base)),
            Some(nix::unistd::Gid::from_raw(map.gid_base)),
        )
        .sys(|| format!("handing the console pty to uid {}", map.uid_base))?;
    }

    let (to_child_r, to_child_w) = pipe2(OFlag::O_CLOEXEC).sys(|| "creating a pipe".into())?;
    let (from_child_r, from_child_w) = pipe2(OFlag::O_CLOEXEC).sys(|| "creating a pipe".into())?;

    // With a user namespace, the supervisor passes PID 1 its idmapped layers
    // over this socket once the id maps are written.
    let idmap_sock = match config.userns {
        Some(_) => Some(
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .sys(|| "creating the idmap socket pair".into())?,
        ),
        None => None,
    };
    let (idmap_parent, idmap_child) = match idmap_sock {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };

    let argv = cstrings(command)?;
    let envp = cstrings(CONTAINER_ENV)?;
    let spec_paths = (
        lower.to_path_buf(),
        dirs.upper.clone(),
        dirs.work.clone(),
        dirs.target.clone(),
        dirs.lower.clone(),
    );

    let mut flags = libc::CLONE_NEWPID;
    if config.userns.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: the supervisor is single-threaded here (no runtime or thread was
    // started yet), so the child may allocate and run ordinary code.
    let cloned = unsafe { fork_into(flags, None) }.sys(|| {
        if config.userns.is_some() {
            "creating PID 1 in new user and PID namespaces".into()
        } else {
            "creating PID 1 in a new PID namespace".into()
        }
    })?;
    let child = match cloned {
        Cloned::Child => {
            drop(to_child_w);
            drop(from_child_r);
            drop(pty.master);
            drop(idmap_parent);
            let init = InitArgs {
                hostname: &config.hostname,
                lower: &spec_paths.0,
                upper: &spec_paths.1,
                work: &spec_paths.2,
                target: &spec_paths.3,
                console: &console_path,
                console_fd: pty.slave,
                argv: &argv,
                envp: &envp,
                idmap: idmap_child,
                lower_mount_point: &spec_paths.4,
                restore,
                disk,
            };
            let Err(err) = init_main(init, to_child_r, &from_child_w);
            let mut report = File::from(from_child_w);
            let _ = report.write_all(one_line(&err.to_string()).as_bytes());
            // SAFETY: _exit ends this forked child without running the
            // parent's atexit handlers or destructors a second time.
            unsafe { libc::_exit(127) }
        }
        Cloned::Parent(child) => child,
    };
    drop(to_child_r);
    drop(from_child_w);
    drop(pty.slave);
    drop(idmap_child);
    let mut from_child = File::from(from_child_r);
    let mut to_child = File::from(to_child_w);

    let fail = |message: String| -> Error {
        let _ = kill(child, Signal::SIGKILL);
        // Reap PID 1, and on the way every task this supervisor still
        // traces (a traced thread's zombie waits for its tracer, and PID 1
        // cannot finish exiting before it is gone).
        loop {
            match waitpid(None, Some(WaitPidFlag::__WALL)) {
                Ok(status) if status.pid() == Some(child) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        Error::Invalid(message)
    };

    if let (Some(map), Some(sock)) = (&config.userns, &idmap_parent) {
        if let Err(e) = share_idmap(child, map, dir, lower, sock) {
            return Err(fail(e.to_string()));
        }
    }
    drop(idmap_parent);

    let mut ready = [0u8; 1];
    match from_child.read(&mut ready) {
        Ok(1) if ready[0] == b'R' => {}
        _ => {
            let mut message = String::new();
            let _ = from_child.read_to_string(&mut message);
            return Err(fail(if message.is_empty() {
                "PID 1 exited while setting up its namespaces".into()
            } else {
                message
            }));
        }
    }
    if let Err(e) = cgroup.add_pid(child) {
        return Err(fail(e.to_string()));
    }
    // A restored TCP socket must not meet a peer's packet before it exists.
    let netlock = match restore.filter(|image| restore::inet::needs_lock(image)) {
        Some(_) => match crate::netlock::NetLock::lock(child.as_raw()) {
            Ok(lock) => Some(lock),
            Err(e) => return Err(fail(e.to_string())),
        },
        None => None,
    };
    if let Some(net) = &config.network {
        if let Err(e) = network::setup(net, child) {
            return Err(fail(e.to_string()));
        }
    }
    // The namespace's own devices, addresses, routes, sysctls and rules.
    if let Some(ns) = restore.and_then(|image| image.netns.as_ref()) {
        if let Err(e) = restore::netns::apply(ns, child.as_raw()) {
            return Err(fail(e.to_string()));
        }
    }
    if let Some(nft) = restore.and_then(|image| image.nftables.as_ref()) {
        if let Err(e) = restore::netns::apply_nftables(nft, child.as_raw()) {
            return Err(fail(e.to_string()));
        }
    }
    if restore.is_some() {
        restore::timing::mark("cgroups+network");
    }
    if to_child.write_all(b"G").is_err() {
        return Err(fail("PID 1 exited before it was told to start".into()));
    }
    drop(to_child);
    if let Some(image) = restore {
        if let Err(e) = restore::tree::take_over(image, cgroup, &mut from_child, how) {
            return Err(fail(e.to_string()));
        }
        match netlock {
            // Restored frozen: its sockets stay silent until the thaw (a
            // migration's destination that drops it before Resume must not
            // send a FIN to the clients of the source's copy).
            Some(lock) if how.frozen => {
                drop(lock);
                if let Err(e) =
                    std::fs::write(dir.join(crate::container::freeze::NETLOCK_MARK), b"")
                {
                    return Err(fail(format!("recording the network lock: {e}")));
                }
            }
            Some(lock) => {
                if let Err(e) = lock.unlock() {
                    return Err(fail(e.to_string()));
                }
            }
            None => {}
        }
    } else {
        let mut message = String::new();
        let _ = from_child.read_to_string(&mut message);
        if !message.is_empty() {
            return Err(fail(message));
        }
    }

    let init_start_time = process_start_time(child.as_raw()).ok_or_else(|| {
        Error::Invalid(format!(
            "PID 1 ({}) exited right after exec",
            command.join(" ")
        ))
    })?;
    let state = RuntimeState {
        supervisor_pid: std::process::id() as i32,
        init_pid: child.as_raw(),
        init_start_time,
        started_at: unix_now(),
        exit: None,
    };
    state.save(&dir.join("state.json"))?;
    Ok(Launched {
        init: child,
        console: pty.master,
        cgroup: cgroup.clone(),
        disk_server: None,
    })
}

/// Gives PID 1 (waiting in its new user namespace) its id maps and the
/// idmapped mounts of the container's directory and of the image's rootfs.
fn share_idmap(
    child: Pid,
    map: &UsernsConfig,
    dir: &Path,
    lower: &Path,
    sock: &OwnedFd,
) -> Result<()> {
    userns::write_maps(child, map)?;
    let ns = userns::open_userns(child)?;
    let dir_tree = userns::idmapped_clone(dir, &ns, false)?;
    // The image is shared by every container made from it: read-only.
    let lower_tree = userns::idmapped_clone(lower, &ns, true)?;
    userns::send_fds(sock, &[dir_tree.as_raw_fd(), lower_tree.as_raw_fd()])
}

fn cstrings<S: AsRef<str>>(items: &[S]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_ref()).map_err(|_| {
                Error::Invalid(format!("argument {:?} contains a NUL byte", s.as_ref()))
            })
        })
        .collect()
}

struct InitArgs<'a> {
    hostname: &'a str,
    lower: &'a Path,
    upper: &'a Path,
    work: &'a Path,
    target: &'a Path,
    console: &'a Path,
    console_fd: OwnedFd,
    argv: &'a [CString],
    envp: &'a [CString],
    /// With a user namespace: the socket the idmapped layers arrive on.
    idmap: Option<OwnedFd>,
    /// Where the idmapped image rootfs is attached.
    lower_mount_point: &'a Path,
    /// Rebuild this image's process tree instead of executing `argv`.
    restore: Option<&'a LoadedImage>,
    /// With `--disk`: the loop device whose ext4 is the root.
    disk: Option<&'a Path>,
}

/// PID 1 before its exec. Only returns on error.
fn init_main(args: InitArgs, go: OwnedFd, ready: &OwnedFd) -> Result<Infallible> {
    let idmapped = match &args.idmap {
        Some(sock) => {
            // Blocks until the supervisor wrote the id maps.
            let mut trees = userns::recv_fds(sock, 2)?.into_iter();
            let (Some(container_dir), Some(lower)) = (trees.next(), trees.next()) else {
                return Err(Error::Invalid("PID 1 got no idmapped mounts".into()));
            };
            userns::become_root()?;
            Some(IdmappedLayers {
                container_dir,
                lower,
                lower_mount_point: args.lower_mount_point.to_path_buf(),
            })
        }
        None => None,
    };
    let mut flags = CloneFlags::empty();
    for ns in CONTAINER_NAMESPACES {
        flags |= ns;
    }
    unshare(flags).sys(|| "creating the container's namespaces".into())?;
    let on_disk = args.disk.is_some();
    let spec = RootfsSpec {
        lower: args.lower,
        upper: args.upper,
        work: args.work,
        target: args.target,
        console: Some(args.console),
        idmapped,
        disk: args.disk,
    };
    // A disk root opens its loop device, which the container's devices
    // cgroup (v1 whitelist) denies: mount it before the cgroup moves.
    if on_disk {
        rootfs::build(&spec)?;
    }
    nix::unistd::write(ready, b"R").sys(|| "reporting readiness".into())?;
    // While the supervisor moves this process into its cgroups (slow on v1:
    // each move waits for an RCU grace period) and wires the network, build
    // the mount tree.
    if !on_disk {
        rootfs::build(&spec)?;
    }
    let mut byte = [0u8; 1];
    match read(go.as_fd(), &mut byte) {
        Ok(1) => {}
        _ => return Err(Error::Invalid("the supervisor went away".into())),
    }
    drop(go);
    // The IPC namespace's objects, before any process of the image exists
    // (and while the host's /proc/sys, with its *_next_id, is reachable);
    // the mounts once in its cgroups, so the restored tmpfs files are
    // charged there.
    if let Some(image) = args.restore {
        restore::ipc::restore(&image.ipc)?;
        restore::mounts::rebuild(image, args.target)?;
    }
    // Now inside its cgroups: the cgroup namespace is rooted there.
    unshare(CloneFlags::CLONE_NEWCGROUP).sys(|| "creating the cgroup namespace".into())?;
    setsid().sys(|| "starting a session".into())?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); the fd is
    // the open console pty slave.
    let rc = unsafe { libc::ioctl(args.console_fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(rc).sys(|| "making the console the controlling terminal".into())?;
    attach_stdio(&args.console_fd)?;
    if args.console_fd.as_raw_fd() > 2 {
        drop(args.console_fd);
    }
    rootfs::pivot(args.target)?;
    sethostname(args.hostname).sys(|| format!("setting hostname {:?}", args.hostname))?;
    drop_host_capabilities()?;
    if let Some(image) = args.restore {
        return restore::tree::husk_main(image, ready);
    }
    close_extra_fds();
    execve(&args.argv[0], args.argv, args.envp).sys(|| format!("executing {:?}", args.argv[0]))
}

/// Makes `fd` the calling process's stdin, stdout and stderr.
pub fn attach_stdio(fd: &OwnedFd) -> Result<()> {
    dup2_stdin(fd).sys(|| "attaching stdin".into())?;
    dup2_stdout(fd).sys(|| "attaching stdout".into())?;
    dup2_stderr(fd).sys(|| "attaching stderr".into())
}

/// Marks every fd above stderr close-on-exec so PID 1 starts with 0, 1, 2 and
/// the error pipe (already close-on-exec) only.
fn close_extra_fds() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Copies the console to console.log until PID 1 exits, then records the exit
/// and removes the container's cgroups and veth.
fn monitor(host: &Host, config: &ContainerConfig, launched: Launched) -> Result<i32> {
    let dir = host.container_dir(&config.name);
    let log_path = dir.join("console.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .ctx("opening console log", &log_path)?;
    let pidfd = pidfd_open(launched.init)?;
    let mut server = match launched.disk_server {
        Some(pid) => Some((pid, pidfd_open(pid)?)),
        None => None,
    };
    let mut console_open = true;
    let mut buf = vec![0u8; 65536];
    let status = loop {
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if console_open {
            fds.push(PollFd::new(launched.console.as_fd(), PollFlags::POLLIN));
        }
        if let Some((_, fd)) = &server {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waiting for PID 1", e)),
            Ok(_) => {}
        }
        let init_done = fds[0].revents().is_some_and(|r| !r.is_empty());
        let server_done = server.is_some()
            && fds
                .last()
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
        let console_ready = console_open
            && fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
        if console_ready {
            console_open = copy_console(&launched.console, &mut log, &mut buf);
        }
        if server_done {
            if let Some((pid, _)) = server.take() {
                disk_server_died(&dir, pid);
            }
        }
        if init_done {
            while console_open && copy_console_nonblocking(&launched.console, &mut log, &mut buf) {}
            break waitpid(launched.init, None).sys(|| "reaping PID 1".into())?;
        }
    };
    let exit = match status {
        WaitStatus::Exited(_, code) => ExitRecord {
            code: Some(code),
            signal: None,
            at: unix_now(),
        },
        WaitStatus::Signaled(_, sig, _) => ExitRecord {
            code: None,
            signal: Some(sig as i32),
            at: unix_now(),
        },
        _ => ExitRecord {
            code: None,
            signal: None,
            at: unix_now(),
        },
    };
    record_exit(&dir, exit)?;
    cleanup_runtime(config, &launched.cgroup);
    if let Some((pid, _)) = server {
        // The mount namespace is gone with PID 1: the loop device lets go
        // of the disk and the server can flush and end.
        if let Err(e) = storage::disk::release(&dir) {
            eprintln!("disk: stopping the disk server (pid {pid}): {e}");
        }
        storage::serve::reap(pid);
    }
    Ok(0)
}

/// The disk server died while the container runs: every I/O on its root
/// now fails with EIO. Say so, and detach the dead FUSE mount so the next
/// start can serve the disk again.
fn disk_server_died(dir: &Path, pid: Pid) {
    let how = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
        _ => "is gone".to_string(),
    };
    eprintln!(
        "disk: the disk server (pid {pid}) {how}; the container's root filesystem now fails with I/O errors. \
         Everything fsync'ed is on the disk: stop the container, `cr disk check`, start it again"
    );
    let paths = storage::DiskPaths::new(dir);
    let _ = nix::mount::umount2(&paths.mnt, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&paths.socket);
}

/// Writes PID 1's exit into state.json (keeping the rest).
pub fn record_exit(dir: &Path, exit: ExitRecord) -> Result<()> {
    let path = dir.join("state.json");
    if let Some(mut state) = RuntimeState::load(&path)? {
        if state.exit.is_none() {
            state.exit = Some(exit);
            state.save(&path)?;
        }
    }
    Ok(())
}

/// Removes what a running container holds on the host: processes left in its
/// cgroups, the cgroups, and the host side of its veth.
pub fn cleanup_runtime(config: &ContainerConfig, cgroup: &ContainerCgroup) {
    let _ = cgroup.kill_all();
    let _ = cgroup.remove();
    if let Some(net) = &config.network {
        let _ = network::teardown(net);
    }
}

/// Copies what the console has; false once the pty is closed for good.
fn copy_console(console: &OwnedFd, log: &mut File, buf: &mut [u8]) -> bool {
    match read(console.as_fd(), buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = log.write_all(&buf[..n]);
            true
        }
        Err(Errno::EINTR) | Err(Errno::EAGAIN) => true,
        // EIO: every slave fd is closed (PID 1 and its children are gone).
        Err(_) => false,
    }
}

/// Drains the console after PID 1 exited; false when nothing is left.
fn copy_console_nonblocking(console: &OwnedFd, log: &mut File, buf: &mut [u8]) -> bool {
    let mut fds = [PollFd::new(console.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => {
            fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
                && copy_console(console, log, buf)
        }
        _ => false,
    }
}

/// A pidfd for `pid`: readable once the process exits.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(fd).sys(|| format!("pidfd_open({pid})"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

//! The optional user namespace of a container (`--userns`).
//!
//! Without it a container's root is the host's root, held back by dropped
//! capabilities, private namespaces and the devices cgroup. With it, PID 1 is
//! cloned into a new user namespace that owns every other namespace of the
//! container: uid/gid `0..size` inside are `base..base + size` on the host,
//! so root inside is root over the container's namespaces only and an
//! unprivileged uid everywhere else.
//!
//! ```text
//! supervisor (host root)                       PID 1
//! clone3(NEWUSER | NEWPID) ────────────────────▶ waits on the idmap socket
//! write /proc/PID/uid_map, gid_map
//!   ("0 BASE SIZE")
//! open_tree(container dir, CLONE) + mount_setattr(IDMAP, PID 1's userns)
//! open_tree(image rootfs, CLONE)  + mount_setattr(IDMAP | RDONLY, ...)
//! send both mount fds (SCM_RIGHTS) ────────────▶ setresgid/setgroups/setresuid(0)
//!                                                unshare(mnt uts ipc net) ...
//!                                                move_mount: the container dir
//!                                                over itself, the image on `lower`;
//!                                                overlay (userxattr) from them
//! ```
//!
//! The idmapped mounts map on-disk id N to N inside the container: the
//! image's root-owned files look root-owned inside, and what the container
//! writes into its upper layer is stored with the ids it has inside (a file
//! root inside creates is owned by uid 0 on disk), so the upper layer is the
//! same whether or not the container runs in a user namespace and does not
//! depend on the range it got on this host. Overlayfs mounted inside a user
//! namespace cannot write `trusted.*` xattrs, so it runs with `userxattr`:
//! its opaque-directory and whiteout markers are `user.overlay.*` xattrs.
//!
//! Checked on Linux 6.18: an overlay mount itself cannot be idmapped
//! (`mount_setattr` gives EINVAL), so the layers are idmapped instead.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Pid, Uid};

use crate::container::config::{ContainerConfig, UsernsConfig};
use crate::error::{Error, IoContext, Result, SysContext};
use crate::host::Host;

/// Host uid and gid of the first range handed out.
pub const FIRST_BASE: u32 = 100_000;
/// Ids mapped per container: uid/gid 0..65535 inside.
pub const RANGE_SIZE: u32 = 65_536;
/// Ranges tried before giving up (100000 + 65536 * 60000 stays below 2^32).
const MAX_RANGES: u32 = 60_000;

/// The first range `FIRST_BASE + RANGE_SIZE * k` no other container of this
/// host uses. Call with the host lock held.
pub fn allocate(host: &Host, name: &str) -> Result<UsernsConfig> {
    let mut taken = Vec::new();
    for other in host.container_names()? {
        if other == name {
            continue;
        }
        let path = host.container_dir(&other).join("config.toml");
        if let Ok(config) = ContainerConfig::load(&path) {
            if let Some(userns) = config.userns {
                taken.push(userns);
            }
        }
    }
    (0..MAX_RANGES)
        .map(|k| {
            let base = FIRST_BASE + RANGE_SIZE * k;
            UsernsConfig {
                uid_base: base,
                gid_base: base,
                size: RANGE_SIZE,
            }
        })
        .find(|candidate| taken.iter().all(|t| !candidate.overlaps(t)))
        .ok_or_else(|| {
            Error::Invalid("no free user namespace id range is left on this host".into())
        })
}

/// Writes `uid_map` and `gid_map` of `pid` (a process in a new user namespace).
pub fn write_maps(pid: Pid, userns: &UsernsConfig) -> Result<()> {
    for (file, gid) in [("uid_map", false), ("gid_map", true)] {
        let path = format!("/proc/{pid}/{file}");
        let line = userns.map_line(gid);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| Error::Invalid(format!("writing {file} of PID {pid}: {e}")))?;
    }
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2) (version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached bind mount of `path` whose ids are mapped through the user
/// namespace `userns` (on-disk id N is id N inside that namespace),
/// read-only when `readonly`.
pub fn idmapped_clone(path: &Path, userns: &File, readonly: bool) -> Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains a NUL byte", path.display())))?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new fd
    // or -1; no memory of ours is written.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = Errno::result(fd).sys(|| format!("cloning the mount of {}", path.display()))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed, the path is
    // an empty C string used with AT_EMPTY_PATH on the tree fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).sys(|| {
        format!(
            "idmapping the mount of {} (its filesystem must support idmapped mounts)",
            path.display()
        )
    })?;
    Ok(tree)
}

/// Attaches the detached mount `tree` on `target` (in the caller's mount
/// namespace).
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<()> {
    let c_target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains a NUL byte", target.display())))?;
    // SAFETY: move_mount reads two NUL-terminated paths and changes no memory
    // of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc)
        .map(drop)
        .sys(|| format!("attaching an idmapped mount on {}", target.display()))
}

/// Sends `fds` over the socket `sock` with one byte of payload.
pub fn send_fds(sock: &OwnedFd, fds: &[RawFd]) -> Result<()> {
    let iov = [IoSlice::new(b"M")];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map(drop)
        .sys(|| "passing the idmapped mounts to PID 1".into())
}

/// Receives the fds [`send_fds`] sent; exactly `count` of them.
pub fn recv_fds(sock: &OwnedFd, count: usize) -> Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .sys(|| "receiving the idmapped mounts from the supervisor".into())?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().sys(|| "reading the idmapped mounts".into())? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                // SAFETY: SCM_RIGHTS just installed this fd in our table;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if fds.len() != count {
        return Err(Error::Invalid(
            "the supervisor went away before it passed the idmapped mounts".into(),
        ));
    }
    Ok(fds)
}

/// Makes the calling process uid/gid 0 of its (new or joined) user
/// namespace, with no supplementary groups.
pub fn become_root() -> Result<()> {
    let (uid, gid) = (Uid::from_raw(0), Gid::from_raw(0));
    setresgid(gid, gid, gid).sys(|| "becoming gid 0 in the user namespace".into())?;
    setgroups(&[]).sys(|| "clearing supplementary groups in the user namespace".into())?;
    setresuid(uid, uid, uid).sys(|| "becoming uid 0 in the user namespace".into())
}

/// The user namespace file of `pid`.
pub fn open_userns(pid: Pid) -> Result<File> {
    let path = format!("/proc/{pid}/ns/user");
    File::open(&path).ctx("opening user namespace", &path)
}

/// True when `ns` is a different user namespace from the caller's.
pub fn is_other_userns(ns: &File) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = Path::new("/proc/self/ns/user");
    let mine = std::fs::metadata(own).ctx("reading", own)?;
    let theirs = ns
        .metadata()
        .ctx("reading", "the container's user namespace")?;
    Ok((mine.dev(), mine.ino()) != (theirs.dev(), theirs.ino()))
}

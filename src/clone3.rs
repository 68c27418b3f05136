//! clone3(2) used like fork(2): the child runs on a copy of the caller's
//! stack, in the namespaces `flags` asks for, optionally with a chosen PID.
//! nix has no clone3; this is the one place cr calls it for processes (the
//! restorer injects its own clone3 for threads).

use nix::errno::Errno;
use nix::unistd::Pid;

/// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1, 80 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 80);

/// What [`fork_into`] returned in each process.
pub enum Cloned {
    Child,
    Parent(Pid),
}

/// Forks into new namespaces (`CLONE_NEW*` in `flags`), with PID `pid` in
/// the caller's PID namespace when given (needs CAP_SYS_ADMIN over it). The
/// child gets SIGCHLD on exit to its parent.
///
/// # Safety
/// As for fork(2): the caller must be single-threaded, so that the child may
/// allocate and run ordinary code.
pub unsafe fn fork_into(flags: libc::c_int, pid: Option<libc::pid_t>) -> nix::Result<Cloned> {
    let tid: [libc::pid_t; 1] = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags: flags as u32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            tid.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: `args` is a valid, fully initialised clone_args of the size
    // passed; set_tid points at a live array of one pid (or is 0); stack 0
    // makes the child run on a copy of this stack, as fork.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(rc)? {
        0 => Ok(Cloned::Child),
        child => Ok(Cloned::Parent(Pid::from_raw(child as libc::pid_t))),
    }
}

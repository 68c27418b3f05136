//! A thread: registers, FPU state, signal state and the per-thread kernel
//! pointers (`clear_child_tid`, robust futex list, rseq).

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};
use super::process::Credentials;

/// One thread of a process, leader included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// The thread group it belongs to.
    pub pid: i32,
    pub tid: i32,
    /// `/proc/PID/task/TID/comm`.
    pub comm: ByteString,
    /// `struct user_regs_struct` as `PTRACE_GETREGS` returns it.
    pub regs: Blob,
    pub fs_base: u64,
    pub gs_base: u64,
    /// The xsave area as `PTRACE_GETREGSET(NT_X86_XSTATE)` returns it; its
    /// size depends on the CPU.
    pub xsave: Blob,
    /// Blocked signals.
    pub sigmask: u64,
    /// Signals pending for this thread only, as raw `siginfo_t`.
    pub pending: Vec<Blob>,
    pub sigaltstack: SigAltStack,
    pub clear_child_tid: u64,
    pub robust_list: RobustList,
    /// `None` if the thread registered no rseq area.
    pub rseq: Option<Rseq>,
    pub sched: Sched,
    /// `None` when equal to the process's credentials.
    pub creds: Option<Credentials>,
    pub syscall: SyscallRestart,
}

/// `sigaltstack(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SigAltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// `set_robust_list(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

/// `rseq(2)` registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// Scheduling: `sched_getattr(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sched {
    /// `SCHED_*`.
    pub policy: u32,
    /// Real-time priority.
    pub priority: u32,
    pub nice: i32,
}

/// Whether the thread was stopped inside a system call that must be
/// restarted on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyscallRestart {
    /// Not in a system call, or in one that completed.
    None,
    /// Interrupted with `-ERESTARTSYS`, `-ERESTARTNOINTR` or
    /// `-ERESTARTNOHAND`: re-enter system call `nr`.
    Restart { nr: u64 },
    /// Interrupted with `-ERESTART_RESTARTBLOCK`: call `restart_syscall(2)`.
    RestartBlock { nr: u64 },
}

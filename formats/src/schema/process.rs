//! A process (thread group): identity, credentials, address space layout,
//! signal dispositions and timers. Its threads are [`super::Thread`]
//! records, its mappings [`super::Vma`] records, its descriptors
//! [`super::Fd`] records, all naming it by `pid`.
//!
//! Pids are those seen inside the container's pid namespace.

use serde::{Deserialize, Serialize};

use super::bytes::{Blob, ByteString};

/// One thread group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The thread group id (pid of the leader).
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: TaskState,
    /// `/proc/PID/comm` of the leader.
    pub comm: ByteString,
    /// `/proc/PID/exe`.
    pub exe: ByteString,
    /// `/proc/PID/cwd`, relative to the container's root.
    pub cwd: ByteString,
    /// `/proc/PID/root`, relative to the container's root.
    pub root: ByteString,
    /// Credentials of the leader; a thread with other ones says so.
    pub creds: Credentials,
    pub umask: u32,
    /// `personality(0xffffffff)`.
    pub personality: u32,
    /// `PR_GET_DUMPABLE`.
    pub dumpable: u32,
    /// `PR_GET_PDEATHSIG`.
    pub pdeath_sig: i32,
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    pub rlimits: Vec<Rlimit>,
    /// `None` for a zombie.
    pub mm: Option<MmState>,
    /// Handlers of the signals whose disposition is not the default.
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole group, as raw `siginfo_t` (128 bytes).
    pub shared_pending: Vec<Blob>,
    pub itimers: ITimers,
    pub posix_timers: Vec<PosixTimer>,
}

/// What the task was doing when it was frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Alive,
    /// Stopped by a job-control signal; restored stopped.
    Stopped {
        signo: i32,
    },
    /// Exited but not reaped.
    Zombie {
        exit_code: i32,
    },
}

/// A task's credentials (`struct cred`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: IdSet,
    pub gid: IdSet,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub caps: CapSets,
    /// `PR_GET_SECUREBITS`.
    pub securebits: u32,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
}

/// Real, effective, saved and filesystem ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSet {
    pub real: u32,
    pub effective: u32,
    pub saved: u32,
    pub fs: u32,
}

/// The five capability sets, one bit per capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// One `getrlimit` resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// The fields `prctl(PR_SET_MM, PR_SET_MM_MAP)` restores (`struct
/// prctl_mm_map`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmState {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `/proc/PID/auxv`, as the kernel hands it out.
    pub auxv: Blob,
    /// The file `/proc/PID/exe` points to (`exe_fd` of the map).
    pub exe_file: ByteString,
}

/// One signal's disposition (`struct kernel_sigaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    /// `SIG_DFL` (0), `SIG_IGN` (1) or the handler's address.
    pub handler: u64,
    /// `SA_*`.
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// The three interval timers of `setitimer(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ITimers {
    pub real: Timer,
    pub virt: Timer,
    pub prof: Timer,
}

/// A timer's period and time to the next expiry; zero is disarmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timer {
    pub interval_ns: u64,
    pub value_ns: u64,
}

/// A `timer_create(2)` timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The id the process knows it by; restore asks for the same one.
    pub id: i32,
    /// `CLOCK_*`.
    pub clock: i32,
    /// `SIGEV_*`.
    pub notify: i32,
    pub signo: i32,
    /// `sigev_value`.
    pub value: u64,
    /// The thread notified with `SIGEV_THREAD_ID`.
    pub notify_tid: i32,
    pub timer: Timer,
    pub overrun: i32,
}

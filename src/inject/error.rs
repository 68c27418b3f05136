//! Errors of the injection primitives: every variant names the thread (or
//! process) it concerns, the ptrace request or system call that failed, and
//! the errno the kernel gave.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;

pub type Result<T, E = InjectError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A ptrace request was refused.
    #[error("ptrace({request}) on thread {tid}: {errno}")]
    Ptrace {
        tid: Pid,
        request: &'static str,
        errno: Errno,
    },
    /// `waitpid` failed.
    #[error("waitpid on thread {tid}: {errno}")]
    Wait { tid: Pid, errno: Errno },
    /// The thread exited or was killed while we were working on it.
    #[error("thread {tid} {how} while {during}")]
    Exited {
        tid: Pid,
        how: String,
        during: &'static str,
    },
    /// No ptrace-stop came within the allowed time.
    #[error("thread {tid}: no ptrace-stop within {timeout:?} while {during}")]
    Timeout {
        tid: Pid,
        during: &'static str,
        timeout: Duration,
    },
    /// An operation needs the thread in a ptrace-stop and it is running.
    #[error("thread {tid} is not in a ptrace-stop; {action} needs one")]
    NotStopped { tid: Pid, action: &'static str },
    /// A stop of a kind the operation cannot work from.
    #[error("thread {tid}: {action} cannot start from a {stop}")]
    BadStop {
        tid: Pid,
        action: &'static str,
        stop: String,
    },
    /// An injected system call returned an error (-4095..-1).
    #[error("thread {tid}: injected {syscall} (nr {nr}) failed: {errno}")]
    Remote {
        tid: Pid,
        syscall: &'static str,
        nr: i64,
        errno: Errno,
    },
    /// process_vm_readv/writev, /proc/PID/mem or PEEK/POKEDATA failed.
    #[error("{op} of {len} bytes at {addr:#x} in process {pid}: {errno}")]
    Memory {
        pid: Pid,
        op: &'static str,
        addr: u64,
        len: usize,
        errno: Errno,
    },
    /// A memory transfer stopped early.
    #[error("{op} at {addr:#x} in process {pid}: only {done} of {len} bytes transferred")]
    Short {
        pid: Pid,
        op: &'static str,
        addr: u64,
        len: usize,
        done: usize,
    },
    /// Reading a /proc file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No `syscall` instruction in the executable memory searched.
    #[error("no `syscall` instruction (0f 05) in the executable memory of process {pid}")]
    NoGadget { pid: Pid },
    /// Patch mode would put the gadget inside an active rseq critical
    /// section, where the kernel redirects the thread to the abort handler.
    #[error(
        "thread {tid}: rip {rip:#x} lies in the rseq critical section \
         [{start:#x}, {end:#x}); inject through a known gadget instead"
    )]
    InRseqCs {
        tid: Pid,
        rip: u64,
        start: u64,
        end: u64,
    },
    /// Malformed input or kernel answer.
    #[error("{0}")]
    Invalid(String),
}

impl InjectError {
    pub(crate) fn ptrace(tid: Pid, request: &'static str, errno: Errno) -> Self {
        InjectError::Ptrace {
            tid,
            request,
            errno,
        }
    }

    /// The errno inside, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            InjectError::Ptrace { errno, .. }
            | InjectError::Wait { errno, .. }
            | InjectError::Remote { errno, .. }
            | InjectError::Memory { errno, .. } => Some(*errno),
            InjectError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

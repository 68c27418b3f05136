//! One seized thread: attach, stop, wait, resume, detach.
//!
//! ```text
//!  seize(tid) ──► running, traced ──interrupt()──► (stop pending)
//!                                                   │  waitpid(__WALL)
//!                      signal-delivery-stop ◄───────┤  (signal dequeued first:
//!                      record it, PTRACE_INTERRUPT  │   kept for re-delivery;
//!                      again, PTRACE_CONT 0 ────────┘   any trap eats the
//!                                                   │   pending interrupt)
//!                                                   ▼
//!                           PTRACE_EVENT_STOP (interrupt or group stop)
//!                               │ regs, injection, ...
//!                               ▼
//!                 detach(): re-deliver recorded signals, PTRACE_DETACH
//! ```
//!
//! With the cgroup v1 freezer, `PTRACE_SEIZE` + `PTRACE_INTERRUPT` succeed on
//! a frozen task but the stop is reported only once the cgroup is thawed, so
//! the two halves are separate calls: [`Tracee::seize_and_interrupt`] every
//! thread while frozen, thaw, then [`Tracee::wait_stop`] each one.
//!
//! ptrace binds a tracee to the *thread* that seized it, so [`Tracee`] is
//! neither `Send` nor `Sync`: every request must come from that thread.
//!
//! **Signals that arrive before the stop.** After `PTRACE_INTERRUPT`, the
//! kernel may dequeue a signal before it reaches the interrupt stop; that is
//! reported as a signal-delivery-stop. The signal (number and raw siginfo) is
//! recorded in [`Tracee::pending_signals`], suppressed, and waiting goes on.
//! Signals that interrupt an injected system call are handled the same way.
//! [`Tracee::detach`] delivers them again: the first one exactly (from a
//! signal-delivery-stop, with its original siginfo put back by
//! `PTRACE_SETSIGINFO`), any further ones queued again with `tgkill` (their
//! siginfo then says `SI_TKILL` from the tracer). A checkpointer that dumps
//! the task instead takes them with [`Tracee::take_pending_signals`] and
//! stores them with the task's queued signals.

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use libc::{c_int, c_long, c_uint};
use nix::errno::Errno;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::{InjectError, Result};

/// `PTRACE_EVENT_STOP`: group-stop or `PTRACE_INTERRUPT` stop of a seized task.
pub const PTRACE_EVENT_STOP: c_int = 128;
/// The `PTRACE_O_TRACESYSGOOD` bit in syscall-stop signal numbers.
const SYSCALL_STOP_SIG: c_int = libc::SIGTRAP | 0x80;

/// How long [`Tracee::detach`] (and Drop) waits for a running tracee to stop.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Thin wrapper over `ptrace(2)`: the request's name goes into the error.
///
/// # Safety
/// For requests that read or write the caller's memory, `addr` and `data`
/// must be valid pointers to buffers of the size the request uses, live for
/// the call. Requests that take only integers (SEIZE, INTERRUPT, CONT,
/// SYSCALL, DETACH) are always sound.
pub(crate) unsafe fn ptrace_raw(
    request: c_uint,
    name: &'static str,
    tid: Pid,
    addr: usize,
    data: usize,
) -> Result<c_long> {
    // SAFETY: the caller upholds this function's contract: `addr` and
    // `data` are plain integers or pointers to live buffers of the size the
    // request uses. The kernel does not keep the pointers.
    let ret = unsafe {
        libc::ptrace(
            request,
            tid.as_raw(),
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if ret == -1 {
        Err(InjectError::ptrace(tid, name, Errno::last()))
    } else {
        Ok(ret)
    }
}

/// `tgkill(tgid, tid, sig)`.
pub(crate) fn tgkill(tgid: Pid, tid: Pid, sig: c_int) -> nix::Result<()> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            tgid.as_raw() as c_long,
            tid.as_raw() as c_long,
            sig as c_long,
        )
    };
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Options for `PTRACE_SEIZE`. `PTRACE_O_TRACESYSGOOD` is always set (the
/// injection code tells syscall-stops apart by it); `PTRACE_O_EXITKILL` is
/// never set: a crashed checkpointer must leave the container running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeizeOptions {
    /// `PTRACE_O_TRACECLONE`: new threads/children are seized too; their ids
    /// are collected in [`Tracee::take_new_threads`].
    pub trace_clone: bool,
    /// `PTRACE_O_TRACEEXIT`: stop at exit (`PTRACE_EVENT_EXIT`).
    pub trace_exit: bool,
}

impl SeizeOptions {
    fn bits(self) -> usize {
        let mut o = libc::PTRACE_O_TRACESYSGOOD;
        if self.trace_clone {
            o |= libc::PTRACE_O_TRACECLONE;
        }
        if self.trace_exit {
            o |= libc::PTRACE_O_TRACEEXIT;
        }
        o as usize
    }
}

/// The kind of ptrace-stop a tracee is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` after `PTRACE_INTERRUPT` (stop signal SIGTRAP).
    Interrupt,
    /// `PTRACE_EVENT_STOP` for a group-stop; the stop signal.
    Group(c_int),
    /// Signal-delivery-stop; the signal about to be delivered.
    Signal(c_int),
    /// Syscall-entry or syscall-exit stop (`PTRACE_SYSCALL`).
    Syscall,
    /// Another `PTRACE_EVENT_*` stop (clone, exec, exit, ...).
    Event(c_int),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Interrupt => write!(f, "interrupt stop"),
            Stop::Group(s) => write!(f, "group-stop ({})", signame(*s)),
            Stop::Signal(s) => write!(f, "signal-delivery-stop ({})", signame(*s)),
            Stop::Syscall => write!(f, "syscall-stop"),
            Stop::Event(e) => write!(f, "PTRACE_EVENT {e} stop"),
        }
    }
}

fn signame(sig: c_int) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// A signal dequeued while we were stopping the thread (or injecting), kept
/// to be delivered again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    pub signo: i32,
    /// The raw 128-byte `siginfo_t` the kernel reported.
    pub siginfo: Vec<u8>,
}

/// What `waitpid` said about the thread.
enum Waited {
    Stopped(Stop),
    Gone(String),
}

fn decode_status(status: c_int) -> Waited {
    if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let stop = if event == PTRACE_EVENT_STOP {
            if sig == libc::SIGTRAP {
                Stop::Interrupt
            } else {
                Stop::Group(sig)
            }
        } else if event != 0 {
            Stop::Event(event)
        } else if sig == SYSCALL_STOP_SIG {
            Stop::Syscall
        } else {
            Stop::Signal(sig)
        };
        Waited::Stopped(stop)
    } else if libc::WIFEXITED(status) {
        Waited::Gone(format!("exited with status {}", libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Waited::Gone(format!("was killed by {}", signame(libc::WTERMSIG(status))))
    } else {
        Waited::Gone(format!("changed state (wait status {status:#x})"))
    }
}

/// `waitpid(tid, __WALL)`, blocking when `deadline` is None, else polling
/// with a growing back-off until the deadline. `Ok(None)` on timeout.
fn waitpid_until(tid: Pid, deadline: Option<Instant>) -> Result<Option<c_int>> {
    let mut status: c_int = 0;
    let flags = libc::__WALL | if deadline.is_some() { libc::WNOHANG } else { 0 };
    let mut spins = 0u32;
    let mut nap = Duration::from_micros(20);
    loop {
        // SAFETY: waitpid writes one c_int into `status`, which we own.
        let r = unsafe { libc::waitpid(tid.as_raw(), &mut status, flags) };
        if r == -1 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(InjectError::Wait { tid, errno: e });
        }
        if r == tid.as_raw() {
            return Ok(Some(status));
        }
        // r == 0: WNOHANG and nothing yet.
        let Some(deadline) = deadline else { continue };
        if Instant::now() >= deadline {
            return Ok(None);
        }
        if spins < 64 {
            spins += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }
}

/// The thread group id of `tid`, from `/proc/<tid>/status`.
pub fn thread_group_of(tid: Pid) -> Result<Pid> {
    let path = format!("/proc/{tid}/status");
    let text = fs::read_to_string(&path).map_err(|source| InjectError::Io {
        what: "reading",
        path: path.clone().into(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
        .ok_or_else(|| InjectError::Invalid(format!("{path}: no Tgid line")))
}

/// The thread ids of process `pid` (`/proc/<pid>/task`), sorted.
pub fn list_threads(pid: Pid) -> Result<Vec<Pid>> {
    let path = format!("/proc/{pid}/task");
    let rd = fs::read_dir(&path).map_err(|source| InjectError::Io {
        what: "listing",
        path: path.clone().into(),
        source,
    })?;
    let mut tids = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|source| InjectError::Io {
            what: "listing",
            path: path.clone().into(),
            source,
        })?;
        if let Some(t) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            tids.push(Pid::from_raw(t));
        }
    }
    tids.sort();
    Ok(tids)
}

/// One thread seized with `PTRACE_SEIZE`.
///
/// Dropping it detaches (best effort, re-delivering recorded signals); call
/// [`Tracee::detach`] to see errors. A thread that runs (or sits in a v1
/// frozen cgroup) and does not stop within [`DETACH_TIMEOUT`] cannot be
/// detached; it stays traced until the seizing thread exits, when the
/// kernel detaches it.
#[derive(Debug)]
pub struct Tracee {
    tid: Pid,
    tgid: Pid,
    options: SeizeOptions,
    attached: bool,
    /// `None` while running.
    stop: Option<Stop>,
    pending: Vec<PendingSignal>,
    new_threads: Vec<Pid>,
    /// rip already checked against the rseq critical section (patch mode).
    pub(crate) rseq_checked_rip: Option<u64>,
    /// The current syscall-stop is a syscall-exit stop left by injection.
    pub(crate) at_syscall_exit: bool,
    /// The current signal-delivery-stop is the SIGTRAP of patch mode.
    pub(crate) own_trap: bool,
    /// Bumped whenever the registers may change other than by injection
    /// (a resume, `set_regs`): injection caches the saved registers per value.
    pub(crate) regs_gen: Cell<u64>,
    /// ptrace requests must come from the seizing thread.
    _not_send: PhantomData<*mut ()>,
}

impl Tracee {
    /// `PTRACE_SEIZE` with default options. The thread keeps running.
    pub fn seize(tid: Pid) -> Result<Tracee> {
        Self::seize_with(tid, SeizeOptions::default())
    }

    /// `PTRACE_SEIZE` with `options`. The thread keeps running.
    pub fn seize_with(tid: Pid, options: SeizeOptions) -> Result<Tracee> {
        let tgid = thread_group_of(tid)?;
        // SAFETY: PTRACE_SEIZE takes the options as an integer, no pointers.
        unsafe { ptrace_raw(libc::PTRACE_SEIZE, "PTRACE_SEIZE", tid, 0, options.bits()) }?;
        Ok(Tracee {
            tid,
            tgid,
            options,
            attached: true,
            stop: None,
            pending: Vec::new(),
            new_threads: Vec::new(),
            rseq_checked_rip: None,
            at_syscall_exit: false,
            own_trap: false,
            regs_gen: Cell::new(0),
            _not_send: PhantomData,
        })
    }

    /// `PTRACE_SEIZE` then `PTRACE_INTERRUPT`, without waiting: under the v1
    /// freezer the stop is reported only after the thaw, so seize every
    /// thread first, thaw, then [`Tracee::wait_stop`] each one.
    pub fn seize_and_interrupt(tid: Pid) -> Result<Tracee> {
        Self::seize_and_interrupt_with(tid, SeizeOptions::default())
    }

    /// [`Tracee::seize_and_interrupt`] with options.
    pub fn seize_and_interrupt_with(tid: Pid, options: SeizeOptions) -> Result<Tracee> {
        let mut t = Self::seize_with(tid, options)?;
        t.interrupt()?;
        Ok(t)
    }

    /// The thread id.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The thread group (process) id.
    pub fn tgid(&self) -> Pid {
        self.tgid
    }

    /// The options it was seized with.
    pub fn options(&self) -> SeizeOptions {
        self.options
    }

    /// `PTRACE_SETOPTIONS` on a stopped thread (`PTRACE_O_TRACESYSGOOD`
    /// stays set). Threads auto-attached later inherit them.
    pub fn set_options(&mut self, options: SeizeOptions) -> Result<()> {
        self.require_stopped("PTRACE_SETOPTIONS")?;
        // SAFETY: PTRACE_SETOPTIONS takes the options as an integer.
        unsafe {
            ptrace_raw(
                libc::PTRACE_SETOPTIONS,
                "PTRACE_SETOPTIONS",
                self.tid,
                0,
                options.bits(),
            )
        }?;
        self.options = options;
        Ok(())
    }

    /// The current ptrace-stop, or None while running.
    pub fn stop(&self) -> Option<Stop> {
        self.stop
    }

    /// Whether we still trace it.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Signals recorded (and suppressed) while stopping or injecting; see
    /// the module documentation.
    pub fn pending_signals(&self) -> &[PendingSignal] {
        &self.pending
    }

    /// Takes the recorded signals: [`Tracee::detach`] will then not deliver
    /// them again (the caller saves them in the image instead).
    pub fn take_pending_signals(&mut self) -> Vec<PendingSignal> {
        std::mem::take(&mut self.pending)
    }

    /// Threads auto-attached through `PTRACE_O_TRACECLONE` since the last
    /// call. Each starts with a pending `PTRACE_EVENT_STOP`: wrap it with
    /// [`Tracee::adopt`] and `wait_stop` it.
    pub fn take_new_threads(&mut self) -> Vec<Pid> {
        std::mem::take(&mut self.new_threads)
    }

    /// A [`Tracee`] for a thread that is already traced by this thread
    /// (auto-attached by `PTRACE_O_TRACECLONE`), considered running.
    pub fn adopt(tid: Pid, options: SeizeOptions) -> Result<Tracee> {
        Ok(Tracee {
            tid,
            tgid: thread_group_of(tid)?,
            options,
            attached: true,
            stop: None,
            pending: Vec::new(),
            new_threads: Vec::new(),
            rseq_checked_rip: None,
            at_syscall_exit: false,
            own_trap: false,
            regs_gen: Cell::new(0),
            _not_send: PhantomData,
        })
    }

    fn require_attached(&self, action: &'static str) -> Result<()> {
        if self.attached {
            Ok(())
        } else {
            Err(InjectError::Exited {
                tid: self.tid,
                how: "is no longer traced".into(),
                during: action,
            })
        }
    }

    /// The current stop, or `NotStopped`.
    pub(crate) fn require_stopped(&self, action: &'static str) -> Result<Stop> {
        self.require_attached(action)?;
        self.stop.ok_or(InjectError::NotStopped {
            tid: self.tid,
            action,
        })
    }

    /// `PTRACE_INTERRUPT`. A no-op when the thread is already stopped.
    pub fn interrupt(&mut self) -> Result<()> {
        self.require_attached("PTRACE_INTERRUPT")?;
        if self.stop.is_some() {
            return Ok(());
        }
        // SAFETY: PTRACE_INTERRUPT takes no pointers.
        unsafe { ptrace_raw(libc::PTRACE_INTERRUPT, "PTRACE_INTERRUPT", self.tid, 0, 0) }?;
        Ok(())
    }

    /// The next ptrace-stop, whatever it is, without handling it. Returns at
    /// once if the thread is already stopped. `timeout` None blocks.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Stop> {
        self.wait_until(timeout.map(|t| Instant::now() + t), timeout, "waiting")
    }

    pub(crate) fn wait_until(
        &mut self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
        during: &'static str,
    ) -> Result<Stop> {
        self.require_attached(during)?;
        if let Some(s) = self.stop {
            return Ok(s);
        }
        let Some(status) = waitpid_until(self.tid, deadline)? else {
            return Err(InjectError::Timeout {
                tid: self.tid,
                during,
                timeout: timeout.unwrap_or_default(),
            });
        };
        match decode_status(status) {
            Waited::Stopped(s) => {
                self.stop = Some(s);
                Ok(s)
            }
            Waited::Gone(how) => {
                self.attached = false;
                self.stop = None;
                Err(InjectError::Exited {
                    tid: self.tid,
                    how,
                    during,
                })
            }
        }
    }

    /// Waits for the `PTRACE_EVENT_STOP` (interrupt stop or group-stop) of a
    /// previous [`Tracee::interrupt`]. Signal-delivery-stops met on the way
    /// are recorded and suppressed (see the module documentation); clone
    /// events record the new thread; other stops are resumed.
    ///
    /// Any ptrace-stop consumes a pending `PTRACE_INTERRUPT` (the kernel
    /// clears `JOBCTL_TRAP_STOP` on every trap), so before resuming from
    /// such a stop the interrupt is requested again.
    pub fn wait_stop(&mut self, timeout: Option<Duration>) -> Result<Stop> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.wait_until(deadline, timeout, "waiting for the interrupt stop")? {
                s @ (Stop::Interrupt | Stop::Group(_)) => return Ok(s),
                Stop::Signal(sig) => self.record_signal(sig)?,
                Stop::Event(e) => self.note_event(e)?,
                Stop::Syscall => {}
            }
            self.rearm_interrupt()?;
            self.resume(libc::PTRACE_CONT, "PTRACE_CONT", 0)?;
        }
    }

    /// `PTRACE_INTERRUPT` even while stopped: the trap is then reported as
    /// soon as the thread is resumed, before it returns to user space.
    pub(crate) fn rearm_interrupt(&self) -> Result<()> {
        self.require_attached("PTRACE_INTERRUPT")?;
        // SAFETY: PTRACE_INTERRUPT takes no pointers.
        unsafe { ptrace_raw(libc::PTRACE_INTERRUPT, "PTRACE_INTERRUPT", self.tid, 0, 0) }?;
        Ok(())
    }

    /// `PTRACE_GETEVENTMSG`: at a clone/fork event stop the new task's id,
    /// at an exit event the exit status.
    pub fn event_msg(&self) -> Result<u64> {
        self.require_stopped("PTRACE_GETEVENTMSG")?;
        let mut msg: libc::c_ulong = 0;
        // SAFETY: GETEVENTMSG writes one unsigned long into `msg`.
        unsafe {
            ptrace_raw(
                libc::PTRACE_GETEVENTMSG,
                "PTRACE_GETEVENTMSG",
                self.tid,
                0,
                &mut msg as *mut libc::c_ulong as usize,
            )
        }?;
        Ok(msg as u64)
    }

    /// Records the new thread of a clone event.
    pub(crate) fn note_event(&mut self, event: c_int) -> Result<()> {
        if matches!(
            event,
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK
        ) {
            let tid = self.event_msg()?;
            self.new_threads.push(Pid::from_raw(tid as i32));
        }
        Ok(())
    }

    /// Records the signal of the current signal-delivery-stop.
    pub(crate) fn record_signal(&mut self, sig: c_int) -> Result<()> {
        let siginfo = self.get_siginfo()?.to_vec();
        self.pending.push(PendingSignal {
            signo: sig,
            siginfo,
        });
        Ok(())
    }

    /// Resumes with `request` (PTRACE_CONT/SYSCALL/DETACH) and signal `sig`.
    /// User code may run: forget what was checked about the stop.
    pub(crate) fn resume(&mut self, request: c_uint, name: &'static str, sig: c_int) -> Result<()> {
        self.rseq_checked_rip = None;
        self.bump_regs_gen();
        self.resume_keep(request, name, sig)
    }

    pub(crate) fn bump_regs_gen(&self) {
        self.regs_gen.set(self.regs_gen.get().wrapping_add(1));
    }

    /// [`Tracee::resume`] for injection, where no user code runs.
    pub(crate) fn resume_keep(
        &mut self,
        request: c_uint,
        name: &'static str,
        sig: c_int,
    ) -> Result<()> {
        debug_assert!(matches!(
            request,
            libc::PTRACE_CONT | libc::PTRACE_SYSCALL | libc::PTRACE_DETACH
        ));
        self.require_stopped(name)?;
        // SAFETY: CONT, SYSCALL and DETACH take the signal as an integer.
        unsafe { ptrace_raw(request, name, self.tid, 0, sig as usize) }?;
        self.stop = None;
        self.at_syscall_exit = false;
        self.own_trap = false;
        Ok(())
    }

    /// `PTRACE_CONT` with signal `sig` (0 for none). Recorded signals stay
    /// recorded.
    pub fn cont(&mut self, sig: c_int) -> Result<()> {
        self.resume(libc::PTRACE_CONT, "PTRACE_CONT", sig)
    }

    /// `PTRACE_SYSCALL` with signal `sig`: run to the next syscall entry or
    /// exit (reported as [`Stop::Syscall`] by [`Tracee::wait`]).
    pub fn syscall_step(&mut self, sig: c_int) -> Result<()> {
        self.resume(libc::PTRACE_SYSCALL, "PTRACE_SYSCALL", sig)
    }

    /// Detaches, stopping the thread first if it runs, and delivers the
    /// recorded signals again.
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    /// Reaps this thread after its process was sent SIGKILL: a traced
    /// thread that dies stays a zombie until its tracer waits for it (a
    /// dying PID namespace would wait for it forever). Reap the other
    /// threads first: the kernel reports a thread group leader only once
    /// the rest of its group is gone.
    pub fn reap_killed(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.stop = None;
        loop {
            let status = match waitpid_until(self.tid, Some(deadline)) {
                Ok(Some(status)) => status,
                Ok(None) => {
                    return Err(InjectError::Timeout {
                        tid: self.tid,
                        during: "reaping a killed thread",
                        timeout,
                    })
                }
                Err(InjectError::Wait {
                    errno: Errno::ECHILD,
                    ..
                }) => {
                    // Not ours to wait for any more (detached or reaped).
                    self.attached = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if let Waited::Gone(_) = decode_status(status) {
                self.attached = false;
                return Ok(());
            }
        }
    }

    fn detach_inner(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        if self.stop.is_none() {
            self.interrupt()?;
            self.wait_stop(Some(DETACH_TIMEOUT))?;
        }
        if let (Some(Stop::Signal(sig)), false) = (self.stop, self.own_trap) {
            // A signal-delivery-stop met through `wait`: keep its signal.
            self.record_signal(sig)?;
            self.own_trap = true;
        }
        if self.pending.is_empty() {
            self.resume(libc::PTRACE_DETACH, "PTRACE_DETACH", 0)?;
            self.attached = false;
            return Ok(());
        }
        self.detach_redelivering()
    }

    /// Detach with recorded signals: the first is delivered from a
    /// signal-delivery-stop with its siginfo restored, the rest re-queued.
    fn detach_redelivering(&mut self) -> Result<()> {
        let first = self.pending[0].clone();
        if !matches!(self.stop, Some(Stop::Signal(_))) {
            // Make a signal-delivery-stop for it.
            self.queue_signal(first.signo)?;
            self.cont(0)?;
            let deadline = Instant::now() + DETACH_TIMEOUT;
            loop {
                match self.wait_until(
                    Some(deadline),
                    Some(DETACH_TIMEOUT),
                    "re-delivering signals",
                ) {
                    Ok(Stop::Signal(s)) if s == first.signo => break,
                    Ok(Stop::Signal(s)) => {
                        self.record_signal(s)?;
                        self.cont(0)?;
                    }
                    Ok(Stop::Event(e)) => {
                        self.note_event(e)?;
                        self.cont(0)?;
                    }
                    Ok(_) => self.cont(0)?,
                    Err(InjectError::Timeout { .. }) => {
                        // Blocked now: it stays queued (siginfo approximated).
                        self.interrupt()?;
                        self.wait_stop(Some(DETACH_TIMEOUT))?;
                        let rest: Vec<_> = self.pending.drain(1..).collect();
                        self.pending.clear();
                        for p in rest {
                            self.queue_signal(p.signo)?;
                        }
                        self.resume(libc::PTRACE_DETACH, "PTRACE_DETACH", 0)?;
                        self.attached = false;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.set_siginfo(&first.siginfo)?;
        let rest: Vec<_> = self.pending.drain(1..).collect();
        self.pending.clear();
        for p in rest {
            self.queue_signal(p.signo)?;
        }
        self.resume(libc::PTRACE_DETACH, "PTRACE_DETACH", first.signo)?;
        self.attached = false;
        Ok(())
    }

    fn queue_signal(&self, sig: c_int) -> Result<()> {
        tgkill(self.tgid, self.tid, sig).map_err(|errno| InjectError::Ptrace {
            tid: self.tid,
            request: "tgkill (re-queueing a recorded signal)",
            errno,
        })
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.attached {
            if self.detach_inner().is_err() && self.attached {
                // Last resort: a plain detach from whatever stop it is in.
                // SAFETY: PTRACE_DETACH takes the signal as an integer.
                let _ = unsafe { ptrace_raw(libc::PTRACE_DETACH, "PTRACE_DETACH", self.tid, 0, 0) };
            }
            self.attached = false;
        }
    }
}

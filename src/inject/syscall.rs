//! System calls run inside a stopped tracee, without parasite code.
//!
//! Patch mode (the default; any stop, gadget written at the current RIP):
//!
//! ```text
//!  GETREGS (saved) ─► PEEK/POKEDATA `0f 05 cc` at rip ─► SETREGS rax=nr,
//!  rdi rsi rdx r10 r8 r9 = args, orig_rax=-1 ─► PTRACE_CONT ─► syscall; int3
//!  ─► SIGTRAP stop (rip = gadget+3) ─► GETREGS: rax = result
//!  ─► POKEDATA original words ─► SETREGS (saved)
//! ```
//!
//! Known-gadget mode (`0f 05` already executable at a given address, e.g. an
//! injection page or a `syscall` found by [`find_syscall_gadget`]):
//!
//! ```text
//!  GETREGS (saved) ─► SETREGS rip=gadget, rax=nr, args, orig_rax=-1
//!  ─► PTRACE_SYSCALL ─► syscall-entry stop ─► PTRACE_SYSCALL ─► syscall-exit
//!  stop: rax = result ─► [park: PTRACE_INTERRUPT + PTRACE_SYSCALL ─► interrupt
//!  stop, only when needed, see below] ─► SETREGS (saved)
//! ```
//!
//! No instruction after the gadget ever runs, so the syscall may unmap the
//! page that holds the gadget (the final `munmap` of an injection page).
//!
//! Why `orig_rax = -1`: a thread stopped inside a restartable syscall shows
//! `rax = -ERESTART*` and the syscall number in `orig_rax`; the kernel's
//! restart logic (run on the way back to user space, after the stop) would
//! rewind rip over our gadget. With -1 it leaves the injected state alone;
//! putting the saved registers back afterwards restarts the original call.
//!
//! Why "park": that restart logic only runs when the thread goes through
//! signal handling on its way out. Interrupt stops and signal-delivery-stops
//! are inside it, a syscall-exit stop is not. So when the saved registers
//! need a restart (`orig_rax >= 0`, `rax = -ERESTART*`), the thread is first
//! moved from the syscall-exit stop into an interrupt stop, and the registers
//! are put back there. Likewise when the *injected* call comes back with
//! -ERESTART* (a signal or the freezer interrupted it): the thread is parked,
//! then resumed so that the kernel restarts it through the gadget.
//!
//! Signals dequeued while an injected call runs are recorded in the tracee
//! (see `ptrace.rs`) and suppressed, so no handler ever runs on injected
//! registers.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libc::{c_int, c_long, user_regs_struct};
use nix::errno::Errno;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::{InjectError, Result};
use super::memory::{
    overlay_words, peek_words, poke_words, read_memory, read_memory_exact, restore_words,
    write_memory,
};
use super::ptrace::{ptrace_raw, Stop, Tracee, DETACH_TIMEOUT};

/// `syscall; int3`, written at RIP in patch mode.
pub const PATCH_GADGET: [u8; 3] = [0x0f, 0x05, 0xcc];
/// `syscall`.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;

pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// Whether a raw syscall return value is one of the kernel's internal
/// restart codes.
pub fn is_erestart(ret: i64) -> bool {
    matches!(
        -ret,
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
    )
}

/// Whether registers saved at a stop belong to a syscall the kernel must
/// still restart.
pub fn needs_restart(regs: &user_regs_struct) -> bool {
    (regs.orig_rax as i64) >= 0 && is_erestart(regs.rax as i64)
}

/// A name for the syscalls this module issues, for error messages.
pub fn syscall_name(nr: i64) -> &'static str {
    match nr as c_long {
        libc::SYS_mmap => "mmap",
        libc::SYS_munmap => "munmap",
        libc::SYS_mremap => "mremap",
        libc::SYS_mprotect => "mprotect",
        libc::SYS_close => "close",
        libc::SYS_close_range => "close_range",
        libc::SYS_prctl => "prctl",
        libc::SYS_rt_sigaction => "rt_sigaction",
        libc::SYS_rt_sigprocmask => "rt_sigprocmask",
        libc::SYS_sigaltstack => "sigaltstack",
        libc::SYS_getpid => "getpid",
        libc::SYS_gettid => "gettid",
        libc::SYS_userfaultfd => "userfaultfd",
        libc::SYS_madvise => "madvise",
        libc::SYS_rseq => "rseq",
        libc::SYS_arch_prctl => "arch_prctl",
        libc::SYS_set_robust_list => "set_robust_list",
        libc::SYS_set_tid_address => "set_tid_address",
        libc::SYS_dup3 => "dup3",
        libc::SYS_openat => "openat",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_clock_nanosleep => "clock_nanosleep",
        libc::SYS_rt_sigreturn => "rt_sigreturn",
        libc::SYS_exit => "exit",
        libc::SYS_clone3 => "clone3",
        libc::SYS_setpriority => "setpriority",
        libc::SYS_setitimer => "setitimer",
        _ => "syscall",
    }
}

/// Where the `syscall` instruction comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gadget {
    /// Write `syscall; int3` at the current RIP for each call.
    Patch,
    /// `0f 05` is executable at this address; run it with PTRACE_SYSCALL.
    Known(u64),
}

/// Runs system calls inside a stopped [`Tracee`].
///
/// Between two calls the thread is back in its saved state (registers and
/// text), so a crash of the tracer between calls leaves it intact. The saved
/// registers and the original text words are cached while the thread stays
/// stopped and untouched (see `Tracee::regs_gen`), which saves a GETREGS and
/// a PEEKDATA per call.
///
/// Patch mode writes into the text at RIP: every other thread that may run
/// that code must be stopped too, or use a known gadget. The patched page of
/// a private file mapping stays a private (anonymous, copy-on-write) copy
/// afterwards, with the original bytes back in it.
pub struct RemoteSyscall<'t> {
    tracee: &'t mut Tracee,
    gadget: Gadget,
    timeout: Option<Duration>,
    cache: Option<Saved>,
}

/// Saved state of the tracee for one `regs_gen`.
struct Saved {
    gen: u64,
    regs: user_regs_struct,
    /// Original text words at regs.rip (patch mode), once read.
    words: Option<Vec<(u64, u64)>>,
}

impl<'t> RemoteSyscall<'t> {
    /// Patch mode.
    pub fn new(tracee: &'t mut Tracee) -> Self {
        RemoteSyscall {
            tracee,
            gadget: Gadget::Patch,
            timeout: None,
            cache: None,
        }
    }

    /// Known-gadget mode: `addr` holds `0f 05` in executable memory.
    pub fn with_gadget(tracee: &'t mut Tracee, addr: u64) -> Self {
        RemoteSyscall {
            tracee,
            gadget: Gadget::Known(addr),
            timeout: None,
            cache: None,
        }
    }

    pub fn gadget(&self) -> Gadget {
        self.gadget
    }

    pub fn set_gadget(&mut self, gadget: Gadget) {
        self.gadget = gadget;
    }

    /// How long one injected call may take (None, the default: no limit).
    /// On timeout the thread is interrupted and its registers put back.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub fn tracee(&mut self) -> &mut Tracee {
        self.cache = None;
        self.tracee
    }

    /// The target process id.
    pub fn pid(&self) -> Pid {
        self.tracee.tgid()
    }

    /// Runs syscall `nr` and returns rax as is (errors are -errno).
    pub fn inject_raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let stop = self.tracee.require_stopped("syscall injection")?;
        self.check_start_stop(stop)?;
        let r = match self.gadget {
            Gadget::Patch => self.run_patch(nr, args),
            Gadget::Known(addr) => self.run_known(addr, nr, args),
        };
        if r.is_err() {
            self.cache = None;
        }
        r
    }

    /// The registers to put back after the call (cached per `regs_gen`).
    fn saved_regs(&mut self) -> Result<user_regs_struct> {
        let gen = self.tracee.regs_gen.get();
        if let Some(c) = &self.cache {
            if c.gen == gen {
                return Ok(c.regs);
            }
        }
        let regs = self.tracee.get_regs()?;
        self.cache = Some(Saved {
            gen,
            regs,
            words: None,
        });
        Ok(regs)
    }

    /// The original text words under the patch at `rip` (cached).
    fn saved_words(&mut self, rip: u64) -> Result<Vec<(u64, u64)>> {
        if let Some(Saved {
            words: Some(w),
            regs,
            ..
        }) = &self.cache
        {
            if regs.rip == rip {
                return Ok(w.clone());
            }
        }
        let w = peek_words(self.tracee.tid(), rip, PATCH_GADGET.len())?;
        if let Some(c) = &mut self.cache {
            c.words = Some(w.clone());
        }
        Ok(w)
    }

    /// Runs syscall `nr`; a return in -4095..-1 is [`InjectError::Remote`].
    pub fn inject(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let ret = self.inject_raw(nr, args)?;
        if (-4095..=-1).contains(&ret) {
            return Err(InjectError::Remote {
                tid: self.tracee.tid(),
                syscall: syscall_name(nr),
                nr,
                errno: Errno::from_raw((-ret) as i32),
            });
        }
        Ok(ret)
    }

    /// Refuses stops injection cannot start from: a syscall-entry stop (the
    /// kernel is about to run the *tracee's* syscall with our registers) and
    /// the exit event. A foreign signal-delivery-stop (met through
    /// [`Tracee::wait`]) has its signal recorded first: resuming suppresses it.
    fn check_start_stop(&mut self, stop: Stop) -> Result<()> {
        if let Stop::Signal(sig) = stop {
            if !self.tracee.own_trap {
                self.tracee.record_signal(sig)?;
                // Recorded once; later injections resume from our own trap.
                self.tracee.own_trap = true;
            }
            return Ok(());
        }
        let t = &*self.tracee;
        let bad = match stop {
            Stop::Event(libc::PTRACE_EVENT_EXIT) => true,
            Stop::Syscall if !t.at_syscall_exit => {
                let mut info = [0u64; 12];
                // SAFETY: GET_SYSCALL_INFO writes at most addr = 96 bytes
                // into `info`, a 96-byte buffer we own.
                unsafe {
                    ptrace_raw(
                        PTRACE_GET_SYSCALL_INFO,
                        "PTRACE_GET_SYSCALL_INFO",
                        t.tid(),
                        std::mem::size_of_val(&info),
                        info.as_mut_ptr() as usize,
                    )
                }?;
                (info[0] & 0xff) as u8 == PTRACE_SYSCALL_INFO_ENTRY
            }
            _ => false,
        };
        if bad {
            let what = if stop == Stop::Syscall {
                "syscall-entry stop".to_string()
            } else {
                stop.to_string()
            };
            return Err(InjectError::BadStop {
                tid: t.tid(),
                action: "syscall injection",
                stop: what,
            });
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<Stop> {
        self.tracee
            .wait_until(deadline, self.timeout, "running an injected syscall")
    }

    /// Patch mode; see the module documentation.
    fn run_patch(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tracee.tid();
        let saved = self.saved_regs()?;
        let rip = saved.rip;
        self.check_rseq(rip)?;
        let words = self.saved_words(rip)?;
        poke_words(tid, &overlay_words(&words, rip, &PATCH_GADGET), &words)?;
        let regs = injected_regs(&saved, rip, nr, args);
        let outcome = self.run_to_trap(&regs, rip + PATCH_GADGET.len() as u64);
        let restored = self.put_back(&saved, &words, false);
        let ret = outcome?;
        restored?;
        Ok(ret)
    }

    fn run_to_trap(&mut self, regs: &user_regs_struct, trap_rip: u64) -> Result<i64> {
        self.tracee.set_regs_keep(regs)?;
        self.tracee
            .resume_keep(libc::PTRACE_CONT, "PTRACE_CONT", 0)?;
        let deadline = self.deadline();
        loop {
            match self.wait(deadline)? {
                Stop::Signal(libc::SIGTRAP) => {
                    let now = self.tracee.get_regs()?;
                    if now.rip == trap_rip {
                        self.tracee.own_trap = true;
                        return Ok(now.rax as i64);
                    }
                    self.tracee.record_signal(libc::SIGTRAP)?;
                }
                Stop::Signal(sig) => self.tracee.record_signal(sig)?,
                Stop::Event(e) => self.tracee.note_event(e)?,
                Stop::Interrupt | Stop::Group(_) | Stop::Syscall => {}
            }
            self.tracee
                .resume_keep(libc::PTRACE_CONT, "PTRACE_CONT", 0)?;
        }
    }

    /// Known-gadget mode; see the module documentation.
    fn run_known(&mut self, gadget: u64, nr: i64, args: [u64; 6]) -> Result<i64> {
        let saved = self.saved_regs()?;
        let regs = injected_regs(&saved, gadget, nr, args);
        let outcome = self.run_through_gadget(&regs);
        let fixup = needs_restart(&saved);
        let restored = match &outcome {
            Ok(_) if !fixup => {
                // Fast path: registers go back at the syscall-exit stop.
                let r = self.tracee.set_regs_keep(&saved);
                self.tracee.at_syscall_exit = true;
                r
            }
            _ => self.put_back(&saved, &[], true),
        };
        let ret = outcome?;
        restored?;
        Ok(ret)
    }

    /// From any stop: set `regs`, run the gadget under PTRACE_SYSCALL, and
    /// return the result at the syscall-exit stop (restarting interrupted
    /// calls through the gadget).
    fn run_through_gadget(&mut self, regs: &user_regs_struct) -> Result<i64> {
        let deadline = self.deadline();
        self.tracee.set_regs_keep(regs)?;
        self.step(0)?;
        loop {
            // Up to the syscall-entry stop.
            loop {
                match self.wait(deadline)? {
                    Stop::Syscall => break,
                    Stop::Signal(sig) => self.tracee.record_signal(sig)?,
                    Stop::Event(e) => self.tracee.note_event(e)?,
                    Stop::Interrupt | Stop::Group(_) => {}
                }
                self.step(0)?;
            }
            self.step(0)?;
            // Up to the syscall-exit stop.
            loop {
                match self.wait(deadline)? {
                    Stop::Syscall => break,
                    Stop::Signal(sig) => self.tracee.record_signal(sig)?,
                    Stop::Event(e) => self.tracee.note_event(e)?,
                    Stop::Interrupt | Stop::Group(_) => {}
                }
                self.step(0)?;
            }
            let ret = self.tracee.get_regs()?.rax as i64;
            if !is_erestart(ret) {
                return Ok(ret);
            }
            // Interrupted: park inside signal handling, then let the kernel
            // rewind rip onto the gadget and run it again.
            self.park(deadline)?;
            self.step(0)?;
        }
    }

    fn step(&mut self, sig: c_int) -> Result<()> {
        self.tracee
            .resume_keep(libc::PTRACE_SYSCALL, "PTRACE_SYSCALL", sig)
    }

    /// From a syscall-exit stop to an interrupt stop (inside the kernel's
    /// signal handling, before any user instruction runs). Resumes only with
    /// PTRACE_SYSCALL, so nothing escapes tracing on the way.
    fn park(&mut self, deadline: Option<Instant>) -> Result<()> {
        loop {
            // Every trap consumes a pending interrupt: ask again each time.
            self.tracee.rearm_interrupt()?;
            self.step(0)?;
            match self.wait(deadline)? {
                Stop::Interrupt | Stop::Group(_) => return Ok(()),
                Stop::Signal(sig) => self.tracee.record_signal(sig)?,
                Stop::Event(e) => self.tracee.note_event(e)?,
                Stop::Syscall => {}
            }
        }
    }

    /// Puts memory and registers back after an injection, whatever state it
    /// ended in: a running thread (timeout) is interrupted first; a thread at
    /// a syscall-exit stop is parked first when `park_from_exit` (so the
    /// kernel's restart logic sees the saved registers).
    fn put_back(
        &mut self,
        saved: &user_regs_struct,
        words: &[(u64, u64)],
        park_from_exit: bool,
    ) -> Result<()> {
        if !self.tracee.is_attached() {
            return Err(InjectError::Exited {
                tid: self.tracee.tid(),
                how: "is gone".into(),
                during: "putting registers back after an injected syscall",
            });
        }
        if self.tracee.stop().is_none() {
            self.tracee.interrupt()?;
            self.tracee.wait_stop(Some(DETACH_TIMEOUT))?;
        }
        if park_from_exit && self.tracee.stop() == Some(Stop::Syscall) {
            let deadline = Instant::now() + DETACH_TIMEOUT;
            self.park(Some(deadline))?;
        }
        let mem = restore_words(self.tracee.tid(), words);
        self.tracee.set_regs_keep(saved)?;
        mem
    }

    /// Patch mode must not write its gadget inside an rseq critical section:
    /// the kernel would move rip to the abort handler on the way out.
    fn check_rseq(&mut self, rip: u64) -> Result<()> {
        if self.tracee.rseq_checked_rip == Some(rip) {
            return Ok(());
        }
        let conf = match self.tracee.get_rseq_config() {
            Ok(c) => c,
            // Kernels without the request have no rseq state to worry about.
            Err(InjectError::Ptrace {
                errno: Errno::EIO | Errno::EINVAL,
                ..
            }) => {
                self.tracee.rseq_checked_rip = Some(rip);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if conf.rseq_abi_pointer != 0 {
            let pid = self.tracee.tid();
            let mut cs_ptr = [0u8; 8];
            // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; ... }
            if read_memory(pid, conf.rseq_abi_pointer + 8, &mut cs_ptr)? == 8 {
                let cs = u64::from_ne_bytes(cs_ptr);
                if cs != 0 {
                    // struct rseq_cs { u32 version; u32 flags; u64 start_ip;
                    //                  u64 post_commit_offset; u64 abort_ip; }
                    let mut raw = [0u8; 32];
                    read_memory_exact(pid, cs, &mut raw)?;
                    let start = u64_at(&raw, 8);
                    let end = start.wrapping_add(u64_at(&raw, 16));
                    if rip >= start && rip < end {
                        return Err(InjectError::InRseqCs {
                            tid: pid,
                            rip,
                            start,
                            end,
                        });
                    }
                }
            }
        }
        self.tracee.rseq_checked_rip = Some(rip);
        Ok(())
    }

    // ---- helpers built on inject ----

    /// `mmap` in the target; returns the address.
    pub fn remote_mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: u64,
    ) -> Result<u64> {
        let r = self.inject(
            libc::SYS_mmap,
            [addr, len, prot as u64, flags as u64, fd as i64 as u64, off],
        )?;
        Ok(r as u64)
    }

    pub fn remote_munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.inject(libc::SYS_munmap, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }

    /// `mremap`; returns the new address.
    pub fn remote_mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: c_int,
        new_addr: u64,
    ) -> Result<u64> {
        self.inject(
            libc::SYS_mremap,
            [old, old_len, new_len, flags as u64, new_addr, 0],
        )
        .map(|r| r as u64)
    }

    pub fn remote_mprotect(&mut self, addr: u64, len: u64, prot: c_int) -> Result<()> {
        self.inject(libc::SYS_mprotect, [addr, len, prot as u64, 0, 0, 0])
            .map(drop)
    }

    pub fn remote_close(&mut self, fd: c_int) -> Result<()> {
        self.inject(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
            .map(drop)
    }

    pub fn remote_prctl(
        &mut self,
        option: c_int,
        a2: u64,
        a3: u64,
        a4: u64,
        a5: u64,
    ) -> Result<i64> {
        self.inject(libc::SYS_prctl, [option as u64, a2, a3, a4, a5, 0])
    }

    /// `rt_sigaction(sig, new_ptr, old_ptr, 8)` with pointers in the target
    /// (see [`RemoteScratch::rt_sigaction`] for struct in/out).
    pub fn remote_rt_sigaction(&mut self, sig: c_int, new_ptr: u64, old_ptr: u64) -> Result<()> {
        self.inject(
            libc::SYS_rt_sigaction,
            [sig as u64, new_ptr, old_ptr, 8, 0, 0],
        )
        .map(drop)
    }

    /// `sigaltstack(new_ptr, old_ptr)` with pointers in the target.
    pub fn remote_sigaltstack(&mut self, new_ptr: u64, old_ptr: u64) -> Result<()> {
        self.inject(libc::SYS_sigaltstack, [new_ptr, old_ptr, 0, 0, 0, 0])
            .map(drop)
    }

    pub fn remote_getpid(&mut self) -> Result<i64> {
        self.inject(libc::SYS_getpid, [0; 6])
    }

    /// `userfaultfd(flags)`; returns the fd in the target (take it with
    /// `pidfd_getfd`).
    pub fn remote_userfaultfd(&mut self, flags: c_int) -> Result<c_int> {
        self.inject(libc::SYS_userfaultfd, [flags as u64, 0, 0, 0, 0, 0])
            .map(|fd| fd as c_int)
    }

    /// Makes the target create a userfaultfd (`flags`) for its own address
    /// space and takes it: injected `userfaultfd`, `pidfd_getfd` from here,
    /// injected `close`. The target keeps no descriptor of it.
    pub fn take_userfaultfd(&mut self, flags: c_int) -> Result<OwnedFd> {
        let pid = self.pid();
        let local = |what: &str, errno: Errno| {
            InjectError::Invalid(format!("{what} of process {pid}: {errno}"))
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let pidfd = Errno::result(pidfd).map_err(|e| local("pidfd_open", e))?;
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as c_int) };
        let remote = self.remote_userfaultfd(flags)?;
        // SAFETY: pidfd_getfd takes two fds and flags and returns a new fd of
        // ours (close-on-exec) or -1.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), remote, 0) };
        let taken = Errno::result(got).map(|fd| {
            // SAFETY: pidfd_getfd returned a new fd that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd as c_int) }
        });
        let closed = self.remote_close(remote);
        let taken = taken.map_err(|e| local("pidfd_getfd of the userfaultfd", e))?;
        closed?;
        Ok(taken)
    }

    /// The target thread's alternate signal stack (`sigaltstack(NULL, &old)`
    /// through a scratch page).
    pub fn get_sigaltstack(&mut self) -> Result<SigAltStack> {
        let mut s = RemoteScratch::new(self, 4096)?;
        let r = s.sigaltstack(None);
        s.close()?;
        r
    }

    /// The target's action for `sig` (`rt_sigaction(sig, NULL, &old)`).
    pub fn get_sigaction(&mut self, sig: c_int) -> Result<KernelSigaction> {
        let mut s = RemoteScratch::new(self, 4096)?;
        let r = s.rt_sigaction(sig, None);
        s.close()?;
        r
    }
}

fn injected_regs(saved: &user_regs_struct, rip: u64, nr: i64, a: [u64; 6]) -> user_regs_struct {
    let mut r = *saved;
    r.rax = nr as u64;
    r.rdi = a[0];
    r.rsi = a[1];
    r.rdx = a[2];
    r.r10 = a[3];
    r.r8 = a[4];
    r.r9 = a[5];
    r.orig_rax = u64::MAX;
    r.rip = rip;
    r
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(w)
}

/// The kernel's `struct sigaction` for `rt_sigaction` on x86-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

impl KernelSigaction {
    pub const SIZE: usize = 32;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        for (i, v) in [self.handler, self.flags, self.restorer, self.mask]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        KernelSigaction {
            handler: u64_at(b, 0),
            flags: u64_at(b, 8),
            restorer: u64_at(b, 16),
            mask: u64_at(b, 24),
        }
    }
}

/// `stack_t` on x86-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

impl SigAltStack {
    pub const SIZE: usize = 24;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.sp.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[16..24].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let mut f = [0u8; 4];
        f.copy_from_slice(&b[8..12]);
        SigAltStack {
            sp: u64_at(b, 0),
            flags: i32::from_ne_bytes(f),
            size: u64_at(b, 16),
        }
    }
}

/// An anonymous read-write mapping in the target, made by injection, for
/// passing structs to and from injected calls. Unmapped by
/// [`RemoteScratch::close`] or, best effort, on drop.
pub struct RemoteScratch<'r, 't> {
    rs: &'r mut RemoteSyscall<'t>,
    addr: u64,
    len: usize,
    mapped: bool,
}

impl<'r, 't> RemoteScratch<'r, 't> {
    /// Offset of the "old" struct for calls with new/old pointers.
    const OLD_OFF: usize = 512;

    /// Maps `len` bytes (rounded up to pages) in the target.
    pub fn new(rs: &'r mut RemoteSyscall<'t>, len: usize) -> Result<Self> {
        let len = len.max(1).div_ceil(4096) * 4096;
        let addr = rs.remote_mmap(
            0,
            len as u64,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )?;
        Ok(RemoteScratch {
            rs,
            addr,
            len,
            mapped: true,
        })
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The injector, to run calls that use the scratch memory.
    pub fn syscall(&mut self) -> &mut RemoteSyscall<'t> {
        self.rs
    }

    fn check(&self, off: usize, n: usize) -> Result<()> {
        if off.checked_add(n).is_some_and(|e| e <= self.len) {
            Ok(())
        } else {
            Err(InjectError::Invalid(format!(
                "scratch access of {n} bytes at offset {off} outside its {} bytes",
                self.len
            )))
        }
    }

    /// Copies `data` into the scratch memory at `off`.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        write_memory(self.rs.pid(), self.addr + off as u64, data)
    }

    /// Copies scratch memory at `off` into `buf`.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        read_memory_exact(self.rs.pid(), self.addr + off as u64, buf)
    }

    /// `rt_sigaction(sig, new, &old)`; returns the old action.
    pub fn rt_sigaction(
        &mut self,
        sig: c_int,
        new: Option<&KernelSigaction>,
    ) -> Result<KernelSigaction> {
        self.check(Self::OLD_OFF, KernelSigaction::SIZE)?;
        let new_ptr = match new {
            Some(act) => {
                self.write(0, &act.to_bytes())?;
                self.addr
            }
            None => 0,
        };
        let old_ptr = self.addr + Self::OLD_OFF as u64;
        self.rs.remote_rt_sigaction(sig, new_ptr, old_ptr)?;
        let mut b = [0u8; KernelSigaction::SIZE];
        self.read(Self::OLD_OFF, &mut b)?;
        Ok(KernelSigaction::from_bytes(&b))
    }

    /// `sigaltstack(new, &old)`; returns the old stack.
    pub fn sigaltstack(&mut self, new: Option<&SigAltStack>) -> Result<SigAltStack> {
        self.check(Self::OLD_OFF, SigAltStack::SIZE)?;
        let new_ptr = match new {
            Some(st) => {
                self.write(0, &st.to_bytes())?;
                self.addr
            }
            None => 0,
        };
        let old_ptr = self.addr + Self::OLD_OFF as u64;
        self.rs.remote_sigaltstack(new_ptr, old_ptr)?;
        let mut b = [0u8; SigAltStack::SIZE];
        self.read(Self::OLD_OFF, &mut b)?;
        Ok(SigAltStack::from_bytes(&b))
    }

    /// Unmaps the scratch memory.
    pub fn close(mut self) -> Result<()> {
        self.mapped = false;
        self.rs.remote_munmap(self.addr, self.len as u64)
    }
}

impl Drop for RemoteScratch<'_, '_> {
    fn drop(&mut self) {
        if self.mapped {
            self.mapped = false;
            let _ = self.rs.remote_munmap(self.addr, self.len as u64);
        }
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

/// Reads `/proc/PID/maps` (parsed by the one maps parser,
/// [`crate::dump::procfs::parse_maps`], which keeps names with spaces).
pub fn read_maps(pid: Pid) -> Result<Vec<MapsEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).map_err(|source| InjectError::Io {
        what: "reading",
        path: path.clone().into(),
        source,
    })?;
    let entries = crate::dump::procfs::parse_maps(&text)
        .map_err(|e| InjectError::Invalid(format!("{path}: {e}")))?;
    Ok(entries
        .into_iter()
        .map(|m| {
            let flag = |on: bool, c: char| if on { c } else { '-' };
            MapsEntry {
                start: m.start,
                end: m.end,
                perms: [
                    flag(m.read, 'r'),
                    flag(m.write, 'w'),
                    flag(m.exec, 'x'),
                    if m.shared { 's' } else { 'p' },
                ]
                .iter()
                .collect(),
                path: m.name,
            }
        })
        .collect())
}

/// Finds the bytes `0f 05` (`syscall`) in readable executable memory of
/// process `pid`, within `range` (start, end) when given. `[vsyscall]` is
/// skipped (it cannot be read and only emulates three calls).
pub fn find_syscall_gadget(pid: Pid, range: Option<(u64, u64)>) -> Result<u64> {
    const CHUNK: usize = 1 << 20;
    let (lo, hi) = range.unwrap_or((0, u64::MAX));
    let mut buf = vec![0u8; CHUNK];
    for m in read_maps(pid)? {
        let p = m.perms.as_bytes();
        if p.len() < 3 || p[0] != b'r' || p[2] != b'x' || m.path == "[vsyscall]" {
            continue;
        }
        let start = m.start.max(lo);
        let end = m.end.min(hi);
        let mut at = start;
        while at + 1 < end {
            let n = ((end - at) as usize).min(CHUNK);
            let got = match read_memory(pid, at, &mut buf[..n]) {
                Ok(g) => g,
                Err(_) => break,
            };
            if let Some(i) = buf[..got].windows(2).position(|w| w == SYSCALL_INSN) {
                return Ok(at + i as u64);
            }
            if got < n || got < 2 {
                break;
            }
            // Overlap one byte so a pair split across chunks is found.
            at += got as u64 - 1;
        }
    }
    Err(InjectError::NoGadget { pid })
}

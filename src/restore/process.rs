//! Rebuilding one process, with all its threads, inside a husk, by syscall
//! injection only.
//!
//! A *husk* is a stopped single-threaded process whose only job is to
//! become the checkpointed one: a fork of cr, seized by the restorer. Its
//! thread becomes the image's thread group leader (TID = PID). Nothing of
//! the checkpointed program ever runs inside cr: everything below is done
//! from outside, through [`RemoteSyscall`] (ptrace), and memory writes
//! through `process_vm_writev` or `/proc/PID/mem`.
//!
//! ```text
//!  husk address space                          steps
//!  ┌───────────────────────────────┐
//!  │ cr's text, heap, stacks, libs │  0  take the husk's regs; set
//!  │ [vvar][vvar_vclock][vdso]     │     orig_rax = -1 (no restart games);
//!  └───────────────────────────────┘     unregister its rseq area; make sure
//!        │ patch mode (gadget at rip)    it is traced with PTRACE_O_TRACECLONE
//!        ▼
//!  ┌──────────┬──────────┐              1  free range F (outside the image's
//!  │ gadget   │ scratch  │ at F            VMAs and the husk's maps, 1 MiB
//!  │ r-x 0f05 │ rw-      │                 margins): mmap gadget r-x, write
//!  └──────────┴──────────┘                 `0f 05` via /proc/PID/mem; scratch
//!        │ known-gadget mode from now on (PTRACE_SYSCALL)
//!        ▼
//!  in the leader, per other thread T of the image:  1b clone3(CLONE_VM|FS|
//!  clone_args + set_tid=[T] in scratch ──► clone3       FILES|SIGHAND|THREAD|
//!  PTRACE_EVENT_CLONE: the kernel attached T, which     SYSVSEM, set_tid=[T],
//!  sits in PTRACE_EVENT_STOP before its first           no stack): T born
//!  instruction (its rip: gadget+2, never run)           with its recorded TID
//!        ▼
//!  munmap everything but F and the vvar/vdso block   2  then mremap the
//!  [vvar][vvar_vclock][vdso] ── hop (F+2 pages) ──►     block, piece by
//!  the image's vvar/vdso address                        piece, via a hop
//!        ▼
//!  for each VMA: open(path)+mmap(FIXED, pgoff)+close   3  or anonymous
//!  (GROWSDOWN for the stack), recorded prot at once;     mmap; then pages:
//!  pages written with process_vm_writev, falling back    zero runs are
//!  to /proc/PID/mem (FOLL_FORCE, copy-on-write) for      written only over
//!  read-only mappings: no mprotect round trip            file mappings
//!        ▼
//!  prctl(PR_SET_MM, PR_SET_MM_MAP, scratch, 104)       4  code/data/brk/stack/
//!                                                        args/env, auxv, exe_fd
//!        ▼
//!  leader: rt_sigaction ×62 (recorded or SIG_DFL),      5  process-wide state
//!  setitimer ×3                                            once, then each
//!  every thread, injected in that thread (gadget F):       thread's own state,
//!  sigaltstack, set_tid_address, set_robust_list,          run by the thread
//!  PR_SET_NAME (comm), rseq; setpriority if its nice       itself
//!  differs from the leader's
//!        ▼
//!  every thread blocks every signal (PTRACE_SETSIGMASK); 5b restore::signals,
//!  leader: timer_create with the recorded ids,               restore::creds
//!  rt_(tg)sigqueueinfo for each pending signal; every
//!  thread, in itself: sched_setscheduler, ids, groups,
//!  capabilities, securebits; leader: dumpable, pdeath
//!  signal again (new ids reset them)
//!        ▼
//!  munmap scratch; munmap gadget (the syscall-exit stop 7  nothing of cr is
//!  comes after the page is gone: no instruction after      left in the
//!  the gadget ever runs; the other threads stay stopped)   address space
//!        ▼
//!  every thread: PTRACE_SETREGSET xstate,               6  final registers
//!  PTRACE_SETSIGMASK, SETREGS (restart rule below);
//!  the caller detaches every thread
//! ```
//!
//! **Threads.** A new thread gets nothing per-thread from the leader that
//! matters: with CLONE_VM the kernel gives it no rseq area, no alternate
//! signal stack and no robust list, and `clear_child_tid` is 0; step 5
//! sets each from the image and step 6 replaces its registers (so its
//! rip, rsp and fs_base at birth never matter: clone3 accepts `stack = 0`
//! with CLONE_VM, the child simply starts on the leader's rsp, and it never
//! runs before detach). The clones come right after step 1 because the
//! injected clone3 needs the gadget and the scratch page (for `clone_args`
//! and `set_tid`), and before step 2 so that a TID already taken fails the
//! rebuild before any of the image is mapped. `set_tid` names the TID in
//! the husk's PID namespace (the container's). The restart rule below
//! applies to every thread on its own (threads of python or redis sit in
//! futex waits, epoll_wait, nanosleep...).
//!
//! Entry points: [`rebuild_process`] does it all with every page in memory;
//! a restore streaming a page store calls [`prepare`] (steps 0-3a, with
//! 1b), [`write_pages`] once per chunk (3b), then [`finish`] (4-7).
//!
//! **Restart rule.** A checkpointed thread stopped inside a restartable
//! syscall shows `rax = -ERESTART*`, `orig_rax = nr`, `rip` just after the
//! `syscall` instruction. A fresh husk's kernel knows nothing of that
//! syscall, so the restorer rewinds by hand and disables the kernel's own
//! restart logic (`orig_rax = -1`):
//!
//! * `Restart { nr }` (`-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`):
//!   `rax = nr`, `rip -= 2`: the same call with the same arguments runs again.
//! * `RestartBlock { nr }` (`-ERESTART_RESTARTBLOCK`): the kernel's restart
//!   block is lost, so the original call runs again (`rax = nr`, `rip -= 2`).
//!   For `nanosleep` (35: `rdi = req`, `rsi = rem`) and relative
//!   `clock_nanosleep` (230: `rsi = flags` without `TIMER_ABSTIME`, `rdx =
//!   req`, `r10 = rem`), the kernel wrote the remaining time to `rem` when it
//!   was interrupted: `req` is pointed at `rem`, so only the rest is slept.
//!   Other such calls (poll, futex with a timeout...) restart with their
//!   original timeout.
//! * `None`: registers as saved, `orig_rax = -1`.
//!
//! The two bytes before the rewound `rip` must be `syscall` (`0f 05`) in the
//! restored memory, or the rebuild fails.

use std::collections::HashSet;
use std::time::Duration;

use cr_formats::schema::{MmState, Process, SyscallRestart, Thread, Vma, VmaKind};
use cr_formats::PageRunRef;
use libc::user_regs_struct;
use nix::unistd::Pid;

use super::shmem::{remote_openat, SharedObjects};
use super::{creds, signals, RestoreError, Result};
use crate::inject::{
    read_maps, read_memory_exact, regs_from_array, write_memory, write_proc_mem, InjectError,
    KernelSigaction, RemoteSyscall, SigAltStack, Tracee, GP_REGS, SYSCALL_INSN,
};

const PAGE: u64 = 4096;
/// One past the highest user address on x86-64 (4-level paging).
const TASK_TOP: u64 = 0x7fff_ffff_f000;
/// Kept free around every existing mapping when choosing the restorer's
/// pages (covers the stack guard gap).
const MARGIN: u64 = 1 << 20;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const SS_DISABLE: i32 = 2;
const SS_AUTODISARM: i32 = 1 << 31;
const TIMER_ABSTIME: u64 = 1;
/// `sizeof(struct robust_list_head)`.
const ROBUST_LIST_HEAD_SIZE: u64 = 24;
/// `sizeof(struct prctl_mm_map)`.
const PRCTL_MM_MAP_SIZE: usize = 104;
/// `struct clone_args` up to `set_tid_size` (`CLONE_ARGS_SIZE_VER1`).
const CLONE_ARGS_SIZE: usize = 80;
/// A thread of the same process: what glibc's `pthread_create` passes,
/// minus the TLS and tid pointers (the registers and `set_tid_address` put
/// those back).
const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;
/// How long a new thread may take to report its first stop.
const THREAD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scratch layout: the struct for the current call at 0, clone3's `set_tid`
/// array at 128, auxv at 256, path strings at 1024.
const SCRATCH_SET_TID: u64 = 128;
const SCRATCH_AUXV: u64 = 256;
const SCRATCH_PATH: u64 = 1024;

/// A run of page contents for the process's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pages<'a> {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// The pages, `nr_pages * 4096` bytes; `None` for pages that are all zero.
    pub data: Option<&'a [u8]>,
}

impl<'a> From<PageRunRef<'a>> for Pages<'a> {
    fn from(r: PageRunRef<'a>) -> Self {
        Pages {
            vaddr: r.vaddr,
            nr_pages: u64::from(r.nr_pages),
            data: match r.kind {
                cr_formats::RunKind::Data => Some(r.data),
                cr_formats::RunKind::Zero => None,
            },
        }
    }
}

/// Turns the stopped husk `tracee` (a single-threaded process; the thread
/// becomes the image's thread group leader) into the checkpointed `process`
/// with all its `threads`: see the module documentation for the steps. On
/// success every thread is stopped with its checkpointed registers: the
/// husk's own in `tracee`, the others (created with their recorded TIDs) in
/// the returned tracees, in the image's order. The caller detaches them all
/// and the process runs on where it was checkpointed. On failure the husk is
/// left half-built and must be killed; once threads were created, it is
/// killed already (SIGKILL, its new threads reaped) and the caller only
/// reaps the leader.
///
/// The same as [`prepare`], [`write_pages`] (once, with every run) and
/// [`finish`]; a restore that streams a page store calls those three itself,
/// [`write_pages`] once per chunk.
pub fn rebuild_process(
    tracee: &mut Tracee,
    process: &Process,
    threads: &[Thread],
    vmas: &[Vma],
    pages: &[Pages<'_>],
) -> Result<Vec<Tracee>> {
    let husk = prepare(tracee, process, threads, vmas)?;
    write_pages(husk.pid, vmas, pages)?;
    finish(tracee, husk, process, threads)
}

/// A husk between [`prepare`] and [`finish`]: its address space has the
/// image's mappings (not yet their contents) plus the restorer's gadget and
/// scratch pages, and it has all the image's threads, the new ones stopped
/// before their first instruction.
#[derive(Debug)]
pub struct PreparedHusk {
    pub pid: Pid,
    /// The r-x page holding `syscall` (known-gadget mode).
    pub gadget: u64,
    /// The rw- page for syscall arguments.
    pub scratch: u64,
    /// The threads created in step 1b, in the image's order, the leader
    /// left out. Dropped before [`finish`] hands them over, they kill the
    /// process: a half-built thread must never run.
    pub threads: NewThreads,
}

/// Threads created in a husk, each with its TID inside the container's
/// PID namespace. Until [`NewThreads::into_tracees`] they are a guard:
/// dropping them SIGKILLs the whole process and reaps these threads (as
/// their tracer), so none is ever detached half-built or left a traced
/// zombie. The leader stays with its caller, who reaps it
/// ([`Tracee::reap_killed`] or `waitpid`).
#[derive(Debug, Default)]
pub struct NewThreads(Vec<(i32, Tracee)>);

impl NewThreads {
    /// The TIDs, in creation order.
    pub fn tids(&self) -> Vec<i32> {
        self.0.iter().map(|t| t.0).collect()
    }

    /// Hands the threads over: no longer a guard.
    pub fn into_tracees(mut self) -> Vec<Tracee> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|t| t.1)
            .collect()
    }
}

impl Drop for NewThreads {
    fn drop(&mut self) {
        let Some((_, first)) = self.0.first() else {
            return;
        };
        let _ = nix::sys::signal::kill(first.tgid(), nix::sys::signal::Signal::SIGKILL);
        for (_, t) in self.0.drain(..) {
            let _ = t.reap_killed(THREAD_STOP_TIMEOUT);
        }
    }
}

/// Steps 0 to 3a: checks the image, neutralises the husk, sets up the
/// gadget, creates the other threads, empties the address space, moves the
/// vDSO and maps every VMA.
pub fn prepare(
    tracee: &mut Tracee,
    process: &Process,
    threads: &[Thread],
    vmas: &[Vma],
) -> Result<PreparedHusk> {
    prepare_with(tracee, process, threads, vmas, None)
}

/// [`prepare`] for a process of a tree: `shared` creates or finds the
/// shared memory objects (and deleted files) several husks map; without
/// it, such mappings are refused.
pub fn prepare_with(
    tracee: &mut Tracee,
    process: &Process,
    threads: &[Thread],
    vmas: &[Vma],
    shared: Option<&mut SharedObjects<'_>>,
) -> Result<PreparedHusk> {
    let pid = tracee.tgid();
    let invalid = |what: String| RestoreError::Invalid { pid, what };
    let (_leader, others, _mm) = split_threads(pid, process, threads)?;
    let husk = |what: &'static str| move |source| RestoreError::Husk { pid, what, source };
    let xsize = tracee
        .xstate_size()
        .map_err(husk("reading the XSTATE size"))?;
    for thread in threads {
        final_registers(thread).map_err(invalid)?;
        if xsize != thread.xsave.0.len() {
            return Err(invalid(format!(
                "thread {}: the image's XSTATE is {} bytes, this machine's {xsize}",
                thread.tid,
                thread.xsave.0.len()
            )));
        }
    }
    if !others.is_empty() && !tracee.options().trace_clone {
        // New threads must be attached (and stopped) as they are born.
        let mut options = tracee.options();
        options.trace_clone = true;
        tracee
            .set_options(options)
            .map_err(husk("PTRACE_SETOPTIONS (PTRACE_O_TRACECLONE)"))?;
    }

    // Step 0: neutralise the husk's own thread state.
    let mut regs = tracee.get_regs().map_err(husk("PTRACE_GETREGS"))?;
    regs.orig_rax = u64::MAX;
    regs.rax = 0;
    tracee.set_regs(&regs).map_err(husk("PTRACE_SETREGS"))?;
    let rseq = tracee
        .get_rseq_config()
        .map_err(husk("PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let husk_maps = read_maps(pid).map_err(husk("reading its maps"))?;

    // Step 1: gadget and scratch pages in a free range.
    let block = husk_vdso_block(pid, &husk_maps)?;
    let block_len: u64 = block.iter().map(|p| p.1 - p.0).sum();
    let busy: Vec<(u64, u64)> = vmas
        .iter()
        .map(|v| (v.start, v.end))
        .chain(husk_maps.iter().map(|m| (m.start, m.end)))
        .filter(|r| r.0 < TASK_TOP)
        .collect();
    let want = 2 * PAGE + block_len;
    let gadget = find_free_range(&busy, want, MARGIN, TASK_TOP)
        .ok_or(RestoreError::NoFreeRange { pid, len: want })?;
    let scratch = gadget + PAGE;
    let hop = gadget + 2 * PAGE;
    {
        let mut rs = RemoteSyscall::new(tracee);
        if rseq.rseq_abi_pointer != 0 {
            rs.inject(
                libc::SYS_rseq,
                [
                    rseq.rseq_abi_pointer,
                    u64::from(rseq.rseq_abi_size),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(rseq.signature),
                    0,
                    0,
                ],
            )
            .map_err(husk("unregistering its rseq area"))?;
        }
        let setup = |what, addr| {
            move |source| RestoreError::Gadget {
                pid,
                what,
                addr,
                source,
            }
        };
        map_exact(&mut rs, gadget, libc::PROT_READ | libc::PROT_EXEC)
            .map_err(setup("gadget", gadget))?;
        write_proc_mem(pid, gadget, &SYSCALL_INSN).map_err(setup("gadget", gadget))?;
        map_exact(&mut rs, scratch, libc::PROT_READ | libc::PROT_WRITE)
            .map_err(setup("scratch", scratch))?;
    }
    let mut rs = RemoteSyscall::with_gadget(tracee, gadget);

    // Step 1b: the other threads, with their recorded TIDs, born stopped.
    let mut born = NewThreads::default();
    for thread in &others {
        let t = clone_thread(&mut rs, pid, thread.tid, scratch)?;
        born.0.push((thread.tid, t));
    }

    // Step 2: drop the husk's memory, move its vDSO where the image had it.
    let keep = [
        (gadget, scratch + PAGE),
        (block[0].0, block[block.len() - 1].1),
    ];
    for (start, end) in complement(&keep, 0, TASK_TOP) {
        rs.remote_munmap(start, end - start)
            .map_err(|source| RestoreError::Unmap {
                pid,
                start,
                end,
                source,
            })?;
    }
    move_vdso(&mut rs, pid, &block, vmas, hop)?;

    // Step 3a: the image's mappings (their pages come with write_pages).
    map_vmas(&mut rs, pid, vmas, scratch, shared, process.pid)?;
    Ok(PreparedHusk {
        pid,
        gadget,
        scratch,
        threads: born,
    })
}

/// The image's thread group leader (TID = PID: the husk's own thread), its
/// other threads in the image's order, and its mm; or the reason it cannot
/// be rebuilt.
fn split_threads<'a>(
    pid: Pid,
    process: &'a Process,
    threads: &'a [Thread],
) -> Result<(&'a Thread, Vec<&'a Thread>, &'a MmState)> {
    let invalid = |what: String| RestoreError::Invalid { pid, what };
    let mut seen = HashSet::new();
    for t in threads {
        if t.pid != process.pid {
            return Err(invalid(format!(
                "thread {} belongs to process {}, not {}",
                t.tid, t.pid, process.pid
            )));
        }
        if t.tid <= 0 || !seen.insert(t.tid) {
            return Err(invalid(format!(
                "thread {} appears twice (or has no valid TID) among its {} threads",
                t.tid,
                threads.len()
            )));
        }
    }
    let leader = threads
        .iter()
        .find(|t| t.tid == process.pid)
        .ok_or_else(|| {
            invalid(format!(
                "none of its {} threads is the thread group leader {}",
                threads.len(),
                process.pid
            ))
        })?;
    let others = threads.iter().filter(|t| t.tid != process.pid).collect();
    let mm = process
        .mm
        .as_ref()
        .ok_or_else(|| invalid("the image has no address space (a zombie)".into()))?;
    Ok((leader, others, mm))
}

/// Step 1b for one thread: `clone3(CLONE_THREAD..., set_tid = [tid])`
/// injected in the leader. The tracee is seized with
/// `PTRACE_O_TRACECLONE`, so the kernel attaches the new thread and stops
/// it (`PTRACE_EVENT_STOP`) before it returns to user space: it never runs
/// an instruction (its rip would be just after the gadget). No stack is
/// given (`stack = 0`, `stack_size = 0`: clone3 accepts that with CLONE_VM
/// and the child starts on the parent's rsp), since its registers are all
/// replaced in step 6.
fn clone_thread(rs: &mut RemoteSyscall<'_>, pid: Pid, tid: i32, scratch: u64) -> Result<Tracee> {
    let err = |what: &'static str| {
        move |source| RestoreError::Thread {
            pid,
            tid,
            what: what.to_string(),
            source,
        }
    };
    let set_tid = scratch + SCRATCH_SET_TID;
    let mut args = Vec::with_capacity(CLONE_ARGS_SIZE);
    // flags, pidfd, child_tid, parent_tid, exit_signal (0 for a thread),
    // stack, stack_size, tls, set_tid, set_tid_size.
    for w in [CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, set_tid, 1] {
        args.extend_from_slice(&w.to_ne_bytes());
    }
    write_memory(pid, scratch, &args).map_err(err("writing struct clone_args"))?;
    write_memory(pid, set_tid, &tid.to_ne_bytes()).map_err(err("writing the set_tid array"))?;
    let got = rs.inject(
        libc::SYS_clone3,
        [scratch, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0],
    );
    // Whatever clone3 said, every thread the kernel attached gets a tracee
    // (so it is detached or dies with the husk, never left traced).
    let options = rs.tracee().options();
    let mut born = Vec::new();
    for host_tid in rs.tracee().take_new_threads() {
        born.push(Tracee::adopt(host_tid, options).map_err(err("adopting the new thread"))?);
    }
    let got = got.map_err(err("clone3 with set_tid"))?;
    let Some(mut thread) = born.pop() else {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "clone3 created thread {got} (wanted {tid}) but ptrace reported no new thread"
            ),
        });
    };
    if !born.is_empty() || got != i64::from(tid) {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "clone3 with set_tid = [{tid}] created thread {got} ({} attached)",
                born.len() + 1
            ),
        });
    }
    thread
        .wait_stop(Some(THREAD_STOP_TIMEOUT))
        .map_err(err("waiting for the new thread's first stop"))?;
    Ok(thread)
}

/// Steps 4 to 7, once every page is written: mm fields, the state of every
/// thread, unmapping the restorer's pages, final registers. Returns the
/// tracees of the threads other than the leader (see [`rebuild_process`]).
pub fn finish(
    tracee: &mut Tracee,
    husk: PreparedHusk,
    process: &Process,
    threads: &[Thread],
) -> Result<Vec<Tracee>> {
    let PreparedHusk {
        pid,
        gadget,
        scratch,
        threads: mut born,
    } = husk;
    let invalid = |what: String| RestoreError::Invalid { pid, what };
    let (leader, others, mm) = split_threads(pid, process, threads)?;
    let born_tids = born.tids();
    let image_tids: Vec<i32> = others.iter().map(|t| t.tid).collect();
    if born_tids != image_tids {
        return Err(invalid(format!(
            "the husk has threads {born_tids:?}, the image {image_tids:?}"
        )));
    }
    let final_regs = final_registers(leader).map_err(invalid)?;
    check_syscall_insn(pid, leader, &final_regs)?;
    let mut other_regs = Vec::with_capacity(others.len());
    for thread in &others {
        let regs = final_registers(thread).map_err(invalid)?;
        check_syscall_insn(pid, thread, &regs)?;
        other_regs.push(regs);
    }
    let mut rs = RemoteSyscall::with_gadget(tracee, gadget);

    // Step 4: the mm fields.
    set_mm_map(&mut rs, pid, mm, scratch)?;

    // Step 5: process-wide signal state, then each thread's own state, run
    // by that thread.
    restore_signal_state(&mut rs, pid, process, scratch)?;
    restore_thread_state(&mut rs, pid, leader, scratch)?;
    for ((_, t), thread) in born.0.iter_mut().zip(&others) {
        let mut trs = RemoteSyscall::with_gadget(t, gadget);
        restore_thread_state(&mut trs, pid, thread, scratch)?;
        if thread.sched.nice != leader.sched.nice {
            // Nice is per thread; the new one inherited the leader's.
            trs.inject(
                libc::SYS_setpriority,
                [
                    libc::PRIO_PROCESS as u64,
                    0,
                    thread.sched.nice as i64 as u64,
                    0,
                    0,
                    0,
                ],
            )
            .map_err(|source| RestoreError::ThreadState {
                pid,
                what: format!("thread {}: setpriority({})", thread.tid, thread.sched.nice),
                source,
            })?;
        }
    }

    // Step 5b: POSIX timers and pending signals, every thread blocking
    // every signal until step 6 (restore::signals); then scheduling and
    // credentials, each thread its own, the leader last (restore::creds).
    signals::block_all(pid, rs.tracee())?;
    for (_, t) in born.0.iter_mut() {
        signals::block_all(pid, t)?;
    }
    signals::restore_timers(&mut rs, pid, process, scratch)?;
    signals::requeue_pending(&mut rs, pid, process, threads, scratch)?;
    for ((_, t), thread) in born.0.iter_mut().zip(&others) {
        let mut trs = RemoteSyscall::with_gadget(t, gadget);
        creds::apply_sched(&mut trs, pid, thread.tid, &thread.sched, scratch)?;
        let c = thread.creds.as_ref().unwrap_or(&process.creds);
        creds::apply_creds(&mut trs, pid, thread.tid, c, scratch)?;
    }
    creds::apply_sched(&mut rs, pid, leader.tid, &leader.sched, scratch)?;
    let c = leader.creds.as_ref().unwrap_or(&process.creds);
    creds::apply_creds(&mut rs, pid, leader.tid, c, scratch)?;
    // New ids reset these two (kernel commit_creds).
    let again = |what: &'static str| {
        move |source| RestoreError::ThreadState {
            pid,
            what: what.into(),
            source,
        }
    };
    if process.dumpable <= 1 {
        rs.remote_prctl(libc::PR_SET_DUMPABLE, u64::from(process.dumpable), 0, 0, 0)
            .map_err(again("prctl(PR_SET_DUMPABLE)"))?;
    }
    rs.remote_prctl(libc::PR_SET_PDEATHSIG, process.pdeath_sig as u64, 0, 0, 0)
        .map_err(again("prctl(PR_SET_PDEATHSIG)"))?;

    // Step 7: nothing of the restorer stays mapped.
    let cleanup = |what, addr| {
        move |source| RestoreError::Cleanup {
            pid,
            what,
            addr,
            source,
        }
    };
    rs.remote_munmap(scratch, PAGE)
        .map_err(cleanup("scratch", scratch))?;
    rs.remote_munmap(gadget, PAGE)
        .map_err(cleanup("gadget", gadget))?;
    drop(rs);

    // Step 6: registers last (injection puts the husk's back after each
    // call), in every thread.
    let set = |what| move |source| RestoreError::Registers { pid, what, source };
    tracee
        .set_xstate(&leader.xsave.0)
        .map_err(set("XSTATE (PTRACE_SETREGSET)"))?;
    tracee
        .set_sigmask(leader.sigmask)
        .map_err(set("the signal mask (PTRACE_SETSIGMASK)"))?;
    tracee
        .set_regs(&final_regs)
        .map_err(set("the general registers (PTRACE_SETREGS)"))?;
    for (((tid, t), thread), regs) in born.0.iter_mut().zip(&others).zip(&other_regs) {
        let tid = *tid;
        let set = |what: &str| {
            let what = what.to_string();
            move |source| RestoreError::Thread {
                pid,
                tid,
                what,
                source,
            }
        };
        t.set_xstate(&thread.xsave.0)
            .map_err(set("setting XSTATE (PTRACE_SETREGSET)"))?;
        t.set_sigmask(thread.sigmask)
            .map_err(set("setting the signal mask (PTRACE_SETSIGMASK)"))?;
        t.set_regs(regs)
            .map_err(set("setting the general registers (PTRACE_SETREGS)"))?;
    }
    Ok(born.into_tracees())
}

/// `mmap(addr, PAGE, prot, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)`.
fn map_exact(rs: &mut RemoteSyscall<'_>, addr: u64, prot: i32) -> Result<(), InjectError> {
    let got = rs.remote_mmap(
        addr,
        PAGE,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    )?;
    if got != addr {
        return Err(InjectError::Invalid(format!(
            "mmap at {addr:#x} returned {got:#x}"
        )));
    }
    Ok(())
}

/// The registers the thread resumes with, after the restart rule (module
/// documentation).
pub fn final_registers(thread: &Thread) -> Result<user_regs_struct, String> {
    let raw = &thread.regs.0;
    if raw.len() != GP_REGS * 8 {
        return Err(format!(
            "thread {}: {} bytes of registers, expected {}",
            thread.tid,
            raw.len(),
            GP_REGS * 8
        ));
    }
    let mut words = [0u64; GP_REGS];
    for (w, c) in words.iter_mut().zip(raw.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        *w = u64::from_ne_bytes(b);
    }
    let rewind = |rip: u64| {
        rip.checked_sub(2)
            .ok_or_else(|| format!("thread {}: rip {rip:#x} cannot be rewound", thread.tid))
    };
    let mut r = regs_from_array(&words);
    r.fs_base = thread.fs_base;
    r.gs_base = thread.gs_base;
    match thread.syscall {
        SyscallRestart::None => {}
        SyscallRestart::Restart { nr } => {
            r.rax = nr;
            r.rip = rewind(r.rip)?;
        }
        SyscallRestart::RestartBlock { nr } => {
            r.rax = nr;
            r.rip = rewind(r.rip)?;
            match nr as i64 {
                libc::SYS_nanosleep if r.rsi != 0 => r.rdi = r.rsi,
                libc::SYS_clock_nanosleep if r.r10 != 0 && r.rsi & TIMER_ABSTIME == 0 => {
                    r.rdx = r.r10
                }
                _ => {}
            }
        }
    }
    r.orig_rax = u64::MAX;
    Ok(r)
}

/// A restarted syscall must find `syscall` (or `int 0x80`) before rip.
fn check_syscall_insn(pid: Pid, thread: &Thread, regs: &user_regs_struct) -> Result<()> {
    if thread.syscall == SyscallRestart::None {
        return Ok(());
    }
    let mut insn = [0u8; 2];
    read_memory_exact(pid, regs.rip, &mut insn).map_err(|source| RestoreError::Pages {
        pid,
        addr: regs.rip,
        len: 2,
        source,
    })?;
    if insn != SYSCALL_INSN && insn != [0xcd, 0x80] {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "thread {} was in syscall {:?} but {:#x} holds {insn:02x?}, not a syscall instruction",
                thread.tid, thread.syscall, regs.rip
            ),
        });
    }
    Ok(())
}

/// The highest page-aligned range of `len` bytes in `[lo, hi)` that keeps
/// `margin` bytes away from every range of `busy` (in any order, may overlap).
pub fn find_free_range(busy: &[(u64, u64)], len: u64, margin: u64, hi: u64) -> Option<u64> {
    // Never below the usual mmap_min_addr.
    let lo = margin.max(0x10000);
    let mut sorted = busy.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut top = hi;
    for &(start, end) in merged.iter().rev() {
        let gap_lo = end.saturating_add(margin);
        if top >= gap_lo && top - gap_lo >= len {
            return Some((top - len) & !(PAGE - 1));
        }
        top = top.min(start.saturating_sub(margin));
    }
    (top >= lo && top - lo >= len).then(|| (top - len) & !(PAGE - 1))
}

/// The ranges of `[lo, hi)` outside every range of `keep`.
fn complement(keep: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut out = Vec::new();
    let mut at = lo;
    for (s, e) in keep {
        if s > at {
            out.push((at, s.min(hi)));
        }
        at = at.max(e);
    }
    if at < hi {
        out.push((at, hi));
    }
    out
}

/// The husk's `[vvar]`, `[vvar_vclock]`, `[vdso]` pieces: (start, end, name),
/// contiguous, in address order.
fn husk_vdso_block(pid: Pid, maps: &[crate::inject::MapsEntry]) -> Result<Vec<(u64, u64, String)>> {
    let block: Vec<(u64, u64, String)> = maps
        .iter()
        .filter(|m| matches!(m.path.as_str(), "[vvar]" | "[vvar_vclock]" | "[vdso]"))
        .map(|m| (m.start, m.end, m.path.clone()))
        .collect();
    if block.is_empty() {
        return Err(RestoreError::VdsoLayout {
            pid,
            what: "the husk has no [vdso]".into(),
        });
    }
    if block.windows(2).any(|w| w[0].1 != w[1].0) {
        return Err(RestoreError::VdsoLayout {
            pid,
            what: format!("the husk's vvar/vdso pieces are not contiguous: {block:x?}"),
        });
    }
    Ok(block)
}

/// Moves the husk's vvar/vdso block to where the image had it, piece by
/// piece, through the free `hop` range (the two places may overlap).
fn move_vdso(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    block: &[(u64, u64, String)],
    vmas: &[Vma],
    hop: u64,
) -> Result<()> {
    let mut image: Vec<&Vma> = vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Vvar | VmaKind::Vdso))
        .collect();
    image.sort_by_key(|v| v.start);
    let husk_shape: Vec<(u64, bool)> = block.iter().map(|p| (p.1 - p.0, p.2 == "[vdso]")).collect();
    let image_shape: Vec<(u64, bool)> = image
        .iter()
        .map(|v| (v.end - v.start, v.kind == VmaKind::Vdso))
        .collect();
    if husk_shape != image_shape || image.windows(2).any(|w| w[0].end != w[1].start) {
        return Err(RestoreError::VdsoLayout {
            pid,
            what: format!(
                "the image's vvar/vdso pieces {image_shape:x?} differ from this kernel's {husk_shape:x?}"
            ),
        });
    }
    let target = image[0].start;
    let base = block[0].0;
    if target == base {
        return Ok(());
    }
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    for (from_base, to_base) in [(base, hop), (hop, target)] {
        for (start, end, name) in block {
            let (from, to, len) = (
                from_base + start - base,
                to_base + start - base,
                end - start,
            );
            let got = rs
                .remote_mremap(from, len, len, flags, to)
                .map_err(|source| RestoreError::VdsoMove {
                    pid,
                    name: name.clone(),
                    from,
                    to,
                    source,
                })?;
            if got != to {
                return Err(RestoreError::VdsoLayout {
                    pid,
                    what: format!("mremap of {name} to {to:#x} gave {got:#x}"),
                });
            }
        }
    }
    Ok(())
}

/// Writes a NUL-terminated path into the scratch page.
fn put_path(pid: Pid, scratch: u64, path: &[u8]) -> Result<u64, InjectError> {
    if path.len() as u64 >= PAGE - SCRATCH_PATH || path.contains(&0) {
        return Err(InjectError::Invalid(format!(
            "path {:?} is too long or holds a NUL",
            String::from_utf8_lossy(path)
        )));
    }
    let mut z = path.to_vec();
    z.push(0);
    write_memory(pid, scratch + SCRATCH_PATH, &z)?;
    Ok(scratch + SCRATCH_PATH)
}

/// `openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)` in the target.
fn remote_open(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    scratch: u64,
    path: &[u8],
) -> Result<i32, InjectError> {
    let p = put_path(pid, scratch, path)?;
    let fd = rs.inject(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as i64 as u64,
            p,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    Ok(fd as i32)
}

/// Step 3a: every VMA of the image, with its recorded protection.
fn map_vmas(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    vmas: &[Vma],
    scratch: u64,
    mut shared: Option<&mut SharedObjects<'_>>,
    ns_pid: i32,
) -> Result<()> {
    // Consecutive mappings of one file share one descriptor.
    let mut open: Option<(Vec<u8>, i32)> = None;
    for v in vmas {
        let err = |source| RestoreError::MapVma {
            pid,
            start: v.start,
            end: v.end,
            kind: kind_name(&v.kind),
            source,
        };
        let len = v.end - v.start;
        let prot = v.prot as i32;
        let growsdown = v.flags & libc::MAP_GROWSDOWN as u32;
        let (flags, fd, off) = match &v.kind {
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall => continue,
            VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | growsdown as i32,
                -1,
                0,
            ),
            VmaKind::Shmem { .. } | VmaKind::Memfd { .. } if shared.is_some() => {
                if let Some(objects) = shared.as_deref_mut() {
                    objects.map(rs, pid, ns_pid, v, scratch).map_err(err)?;
                }
                continue;
            }
            VmaKind::SysvShm { shmid } => {
                crate::restore::ipc::attach(rs, v, *shmid).map_err(err)?;
                continue;
            }
            // Private file mappings and shared ones; a writable shared one
            // through a descriptor opened read-write (its data is the file's).
            // A deleted file was written back under a path of its own.
            VmaKind::File { path, dev, ino } => {
                let map_shared = v.flags & libc::MAP_SHARED as u32 != 0;
                let writable = map_shared && prot & libc::PROT_WRITE != 0;
                let mut path = path.as_bytes().to_vec();
                if path.ends_with(b" (deleted)") {
                    match shared.as_deref().and_then(|s| s.deleted_path(*dev, *ino)) {
                        Some(p) => path = p.as_bytes().to_vec(),
                        None => {
                            return Err(RestoreError::UnsupportedVma {
                                pid,
                                start: v.start,
                                end: v.end,
                                kind: v.kind.clone(),
                            })
                        }
                    }
                }
                // The cache key tells read-only and read-write opens apart.
                let mut key = path.clone();
                key.push(u8::from(writable));
                let fd = match &open {
                    Some((p, fd)) if *p == key => *fd,
                    _ => {
                        if let Some((_, old)) = open.take() {
                            rs.remote_close(old).map_err(err)?;
                        }
                        let fd = if writable {
                            remote_openat(rs, pid, scratch, &path, libc::O_RDWR)
                        } else {
                            remote_open(rs, pid, scratch, &path)
                        }
                        .map_err(err)?;
                        open = Some((key, fd));
                        fd
                    }
                };
                // The image's pgoff is the byte offset of /proc/PID/maps.
                let sharing = if map_shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                (sharing | libc::MAP_FIXED, fd, v.pgoff)
            }
            other => {
                return Err(RestoreError::UnsupportedVma {
                    pid,
                    start: v.start,
                    end: v.end,
                    kind: other.clone(),
                })
            }
        };
        let got = rs
            .remote_mmap(v.start, len, prot, flags, fd, off)
            .map_err(err)?;
        if got != v.start {
            return Err(err(InjectError::Invalid(format!(
                "mmap(MAP_FIXED) returned {got:#x}"
            ))));
        }
    }
    if let Some((path, fd)) = open {
        rs.remote_close(fd).map_err(|source| RestoreError::MapVma {
            pid,
            start: 0,
            end: 0,
            kind: format!("closing {}", String::from_utf8_lossy(&path)),
            source,
        })?;
    }
    Ok(())
}

fn kind_name(kind: &VmaKind) -> String {
    match kind {
        VmaKind::File { path, .. } => String::from_utf8_lossy(path.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    }
}

/// Step 3b: page contents, after [`prepare`], in any number of calls (one
/// per page-store chunk). Zero runs matter only over file mappings (fresh
/// anonymous memory is zero already). Runs of other owners must be left
/// out by the caller.
pub fn write_pages(pid: Pid, vmas: &[Vma], pages: &[Pages<'_>]) -> Result<()> {
    for run in pages {
        let len = run.nr_pages * PAGE;
        let end = run.vaddr + len;
        let inside = vmas
            .iter()
            .any(|v| v.start <= run.vaddr && run.vaddr < v.end);
        if !inside {
            return Err(RestoreError::StrayPages {
                pid,
                addr: run.vaddr,
                len,
            });
        }
        let err = |addr, len| {
            move |source| RestoreError::Pages {
                pid,
                addr,
                len,
                source,
            }
        };
        match run.data {
            Some(data) => {
                if data.len() as u64 != len {
                    return Err(RestoreError::Invalid {
                        pid,
                        what: format!(
                            "page run {:#x}: {} pages but {} bytes",
                            run.vaddr,
                            run.nr_pages,
                            data.len()
                        ),
                    });
                }
                write_memory(pid, run.vaddr, data).map_err(err(run.vaddr, len))?;
            }
            None => {
                for v in vmas
                    .iter()
                    .filter(|v| matches!(v.kind, VmaKind::File { .. }))
                {
                    let (s, e) = (v.start.max(run.vaddr), v.end.min(end));
                    if s < e {
                        let zeros = vec![0u8; (e - s) as usize];
                        write_memory(pid, s, &zeros).map_err(err(s, e - s))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Step 4: `prctl(PR_SET_MM, PR_SET_MM_MAP, &map, 104)`, with the exe file
/// (every mapping of the husk's old exe is gone by now, so no EBUSY).
fn set_mm_map(rs: &mut RemoteSyscall<'_>, pid: Pid, mm: &MmState, scratch: u64) -> Result<()> {
    let err = |what| move |source| RestoreError::MmMap { pid, what, source };
    let auxv = &mm.auxv.0;
    if auxv.len() as u64 > SCRATCH_PATH - SCRATCH_AUXV {
        return Err(RestoreError::Invalid {
            pid,
            what: format!("auxv of {} bytes", auxv.len()),
        });
    }
    write_memory(pid, scratch + SCRATCH_AUXV, auxv).map_err(err("writing auxv"))?;
    let exe_fd = if mm.exe_file.as_bytes().is_empty() {
        None
    } else {
        Some(
            remote_open(rs, pid, scratch, mm.exe_file.as_bytes())
                .map_err(err("opening the exe"))?,
        )
    };
    let mut map = Vec::with_capacity(PRCTL_MM_MAP_SIZE);
    for w in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        scratch + SCRATCH_AUXV,
    ] {
        map.extend_from_slice(&w.to_ne_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
    map.extend_from_slice(&exe_fd.map_or(u32::MAX, |fd| fd as u32).to_ne_bytes());
    write_memory(pid, scratch, &map).map_err(err("writing struct prctl_mm_map"))?;
    let r = rs
        .remote_prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP as u64,
            scratch,
            PRCTL_MM_MAP_SIZE as u64,
            0,
        )
        .map_err(err("prctl(PR_SET_MM, PR_SET_MM_MAP)"));
    if let Some(fd) = exe_fd {
        rs.remote_close(fd).map_err(err("closing the exe"))?;
    }
    r.map(drop)
}

/// Step 5, process-wide: signal dispositions and interval timers.
fn restore_signal_state(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    process: &Process,
    scratch: u64,
) -> Result<()> {
    let err = |what: String| move |source| RestoreError::ThreadState { pid, what, source };
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        // Everything the image does not name goes back to SIG_DFL: the husk
        // inherited cr's own handlers.
        let act = process
            .sigactions
            .iter()
            .find(|a| a.signo == sig)
            .map(|a| KernelSigaction {
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            })
            .unwrap_or_default();
        let what = || format!("rt_sigaction({sig})");
        write_memory(pid, scratch, &act.to_bytes()).map_err(err(what()))?;
        rs.remote_rt_sigaction(sig as i32, scratch, 0)
            .map_err(err(what()))?;
    }

    let t = &process.itimers;
    for (which, timer) in [t.real, t.virt, t.prof].iter().enumerate() {
        let tv = |ns: u64| {
            // A timer due in under a microsecond must not become disarmed.
            let us = ns.div_ceil(1000);
            [us / 1_000_000, us % 1_000_000]
        };
        let mut raw = Vec::with_capacity(32);
        for w in tv(timer.interval_ns).into_iter().chain(tv(timer.value_ns)) {
            raw.extend_from_slice(&w.to_ne_bytes());
        }
        let what = || format!("setitimer({which})");
        write_memory(pid, scratch, &raw).map_err(err(what()))?;
        rs.inject(libc::SYS_setitimer, [which as u64, scratch, 0, 0, 0, 0])
            .map_err(err(what()))?;
    }
    Ok(())
}

/// Step 5, per thread, injected in that thread: alternate signal stack,
/// `clear_child_tid`, robust futex list, comm, rseq.
fn restore_thread_state(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    thread: &Thread,
    scratch: u64,
) -> Result<()> {
    let tid = thread.tid;
    let err = |what: String| {
        move |source| RestoreError::ThreadState {
            pid,
            what: format!("thread {tid}: {what}"),
            source,
        }
    };
    let alt = &thread.sigaltstack;
    let st = if alt.flags & SS_DISABLE != 0 || alt.size == 0 {
        SigAltStack {
            sp: 0,
            flags: SS_DISABLE,
            size: 0,
        }
    } else {
        SigAltStack {
            sp: alt.sp,
            flags: alt.flags & SS_AUTODISARM,
            size: alt.size,
        }
    };
    write_memory(pid, scratch, &st.to_bytes()).map_err(err("sigaltstack".into()))?;
    rs.remote_sigaltstack(scratch, 0)
        .map_err(err("sigaltstack".into()))?;

    rs.inject(
        libc::SYS_set_tid_address,
        [thread.clear_child_tid, 0, 0, 0, 0, 0],
    )
    .map_err(err("set_tid_address".into()))?;
    let rl = &thread.robust_list;
    let len = if rl.len == 0 {
        ROBUST_LIST_HEAD_SIZE
    } else {
        rl.len
    };
    rs.inject(libc::SYS_set_robust_list, [rl.head, len, 0, 0, 0, 0])
        .map_err(err("set_robust_list".into()))?;
    let comm = thread.comm.as_bytes();
    if !comm.is_empty() {
        // The kernel keeps at most 15 bytes and a NUL.
        let mut name = comm[..comm.len().min(15)].to_vec();
        name.push(0);
        write_memory(pid, scratch, &name).map_err(err("PR_SET_NAME".into()))?;
        rs.remote_prctl(libc::PR_SET_NAME, scratch, 0, 0, 0)
            .map_err(err("prctl(PR_SET_NAME)".into()))?;
    }
    if let Some(r) = &thread.rseq {
        rs.inject(
            libc::SYS_rseq,
            [r.addr, u64::from(r.len), 0, u64::from(r.sig), 0, 0],
        )
        .map_err(err(format!("rseq({:#x})", r.addr)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_range_is_highest_gap_with_margins() {
        let busy = [(0x40_0000, 0x60_0000), (0x7000_0000, 0x7010_0000)];
        let hi = 0x8000_0000;
        let a = find_free_range(&busy, 0x3000, 0x10_0000, hi).unwrap();
        assert_eq!(a, hi - 0x3000);
        let a = find_free_range(&busy, 0x3000, 0x10_0000, 0x7018_0000).unwrap();
        assert_eq!(a, 0x7000_0000 - 0x10_0000 - 0x3000);
        assert!(find_free_range(&[(0, hi)], 0x1000, 0, hi).is_none());
        // Overlapping ranges: the outer one counts.
        let a = find_free_range(&[(0x1000, 0x9000), (0x2000, 0x3000)], 0x1000, 0, 0xb000);
        assert_eq!(a, Some(0xa000));
        let a = find_free_range(&[(0x1000, 0xa800), (0x2000, 0x3000)], 0x1000, 0, 0xb000);
        assert_eq!(a, None);
    }

    #[test]
    fn complement_skips_kept_ranges() {
        assert_eq!(
            complement(&[(0x5000, 0x6000), (0x1000, 0x2000)], 0, 0x8000),
            vec![(0, 0x1000), (0x2000, 0x5000), (0x6000, 0x8000)]
        );
        assert_eq!(complement(&[(0, 0x8000)], 0, 0x8000), vec![]);
    }
}

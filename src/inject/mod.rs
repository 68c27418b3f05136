//! Syscall injection through ptrace: the primitives `cr` uses to act inside
//! a target process without a parasite code blob.
//!
//! ```text
//!            tracer (this thread)                      target thread
//!  Tracee::seize_and_interrupt(tid) ── PTRACE_SEIZE+INTERRUPT ──► (stop pending)
//!  [thaw the v1 freezer here]                                        │
//!  Tracee::wait_stop(timeout)  ◄──────── PTRACE_EVENT_STOP ──────────┘
//!  get_regs / get_xstate / get_sigmask / get_rseq_config / peek_pending_signals
//!  RemoteSyscall::inject(nr, args)
//!     save regs ─► gadget (patch `0f 05 cc` at rip, or a known `0f 05`)
//!     ─► rax=nr, args, orig_rax=-1 ─► run ─► rax ─► restore memory and regs
//!  read_memory / write_memory (process_vm_*, /proc/PID/mem)
//!  Tracee::detach() ── re-deliver recorded signals, PTRACE_DETACH ──► runs on
//! ```
//!
//! Files: `ptrace.rs` (attach/stop/wait/detach), `regs.rs` (registers,
//! XSTATE, sigmask, rseq, siginfo), `syscall.rs` (injection, gadgets, remote
//! helpers, scratch memory), `memory.rs` (remote memory I/O), `error.rs`.
//! x86-64 only.

pub mod error;
pub mod memory;
pub mod ptrace;
pub mod regs;
pub mod syscall;

pub use error::{InjectError, Result};
pub use memory::{
    overlay_words, peek_word, peek_words, poke_bytes, poke_word, poke_words, process_vm_write,
    read_memory, read_memory_exact, read_memory_vectored, read_proc_mem, restore_words,
    write_memory, write_proc_mem, IOV_MAX,
};
pub use ptrace::{
    list_threads, thread_group_of, PendingSignal, SeizeOptions, Stop, Tracee, DETACH_TIMEOUT,
    PTRACE_EVENT_STOP,
};
pub use regs::{
    regs_from_array, regs_to_array, RseqConfig, ThreadRegs, FPREGS_SIZE, GP_REGS, NT_PRFPREG,
    NT_X86_XSTATE, SIGINFO_SIZE,
};
pub use syscall::{
    find_syscall_gadget, is_erestart, needs_restart, read_maps, syscall_name, Gadget,
    KernelSigaction, MapsEntry, RemoteScratch, RemoteSyscall, SigAltStack, ERESTARTNOHAND,
    ERESTARTNOINTR, ERESTARTSYS, ERESTART_RESTARTBLOCK, PATCH_GADGET, SYSCALL_INSN,
};

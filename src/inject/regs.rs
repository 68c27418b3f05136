//! Registers and per-thread signal state of a stopped tracee.
//!
//! ```text
//!  PTRACE_GETREGS / SETREGS            user_regs_struct (27 u64, fs_base/gs_base included)
//!  PTRACE_GETREGSET NT_X86_XSTATE      XSAVE area, sized by the kernel's answer
//!  PTRACE_GETREGSET NT_PRFPREG         legacy FXSAVE area (512 bytes)
//!  PTRACE_GETSIGMASK / SETSIGMASK      blocked-signal mask (8 bytes)
//!  PTRACE_GET_RSEQ_CONFIGURATION       registered rseq area
//!  PTRACE_GETSIGINFO / SETSIGINFO      siginfo of the current signal stop
//!  PTRACE_PEEKSIGINFO                  queued signals (per-thread or shared)
//! ```
//!
//! The collected state is plain data ([`ThreadRegs`], [`RseqConfig`]) that
//! serde can write into an image. `sigaltstack` is no ptrace request: it is
//! read by injection (see `RemoteScratch::sigaltstack` in `syscall.rs`).

use std::mem::size_of;
use std::sync::OnceLock;

use libc::{c_uint, user_regs_struct};
use serde::{Deserialize, Serialize};

use super::error::{InjectError, Result};
use super::ptrace::{ptrace_raw, PendingSignal, Tracee};

/// `NT_X86_XSTATE` regset.
pub const NT_X86_XSTATE: usize = 0x202;
/// `NT_PRFPREG` regset (FXSAVE layout).
pub const NT_PRFPREG: usize = 2;
/// Size of the `NT_PRFPREG` regset.
pub const FPREGS_SIZE: usize = 512;
pub const PTRACE_PEEKSIGINFO: c_uint = 0x4209;
pub const PTRACE_GETSIGMASK: c_uint = 0x420a;
pub const PTRACE_SETSIGMASK: c_uint = 0x420b;
pub const PTRACE_GET_RSEQ_CONFIGURATION: c_uint = 0x420f;
/// `PTRACE_PEEKSIGINFO` flag: read the process-wide (shared) queue.
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Size of a raw `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;
/// Upper bound for the first `NT_X86_XSTATE` read; the kernel says how much
/// it filled, and that answer is used from then on.
const XSTATE_PROBE_SIZE: usize = 64 * 1024;
/// Number of u64 in `user_regs_struct`.
pub const GP_REGS: usize = 27;

static XSTATE_SIZE: OnceLock<usize> = OnceLock::new();

/// `user_regs_struct` as 27 u64 in field order: r15 r14 r13 r12 rbp rbx r11
/// r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base
/// gs_base ds es fs gs.
pub fn regs_to_array(r: &user_regs_struct) -> [u64; GP_REGS] {
    [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds,
        r.es, r.fs, r.gs,
    ]
}

/// The inverse of [`regs_to_array`].
pub fn regs_from_array(a: &[u64; GP_REGS]) -> user_regs_struct {
    user_regs_struct {
        r15: a[0],
        r14: a[1],
        r13: a[2],
        r12: a[3],
        rbp: a[4],
        rbx: a[5],
        r11: a[6],
        r10: a[7],
        r9: a[8],
        r8: a[9],
        rax: a[10],
        rcx: a[11],
        rdx: a[12],
        rsi: a[13],
        rdi: a[14],
        orig_rax: a[15],
        rip: a[16],
        cs: a[17],
        eflags: a[18],
        rsp: a[19],
        ss: a[20],
        fs_base: a[21],
        gs_base: a[22],
        ds: a[23],
        es: a[24],
        fs: a[25],
        gs: a[26],
    }
}

/// Everything register-like of one thread, as plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRegs {
    /// `user_regs_struct` in field order (see [`regs_to_array`]).
    pub gp: [u64; GP_REGS],
    /// The `NT_X86_XSTATE` regset, as long as the kernel made it.
    pub xstate: Vec<u8>,
    /// Blocked signals (bit n-1 for signal n).
    pub sigmask: u64,
}

impl ThreadRegs {
    /// The general-purpose registers as the kernel's struct.
    pub fn user_regs(&self) -> user_regs_struct {
        regs_from_array(&self.gp)
    }
    pub fn rip(&self) -> u64 {
        self.gp[16]
    }
    pub fn rsp(&self) -> u64 {
        self.gp[19]
    }
    pub fn fs_base(&self) -> u64 {
        self.gp[21]
    }
    pub fn gs_base(&self) -> u64 {
        self.gp[22]
    }
}

/// `struct ptrace_rseq_configuration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawRseqConfig {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

fn bytes_of_words(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

impl Tracee {
    /// `PTRACE_GETREGS`.
    pub fn get_regs(&self) -> Result<user_regs_struct> {
        self.require_stopped("PTRACE_GETREGS")?;
        let mut regs = regs_from_array(&[0; GP_REGS]);
        // SAFETY: GETREGS writes one user_regs_struct into `regs`, which we
        // own and which has exactly the kernel's layout (libc's definition).
        unsafe {
            ptrace_raw(
                libc::PTRACE_GETREGS,
                "PTRACE_GETREGS",
                self.tid(),
                0,
                &mut regs as *mut user_regs_struct as usize,
            )
        }?;
        Ok(regs)
    }

    /// `PTRACE_SETREGS`.
    pub fn set_regs(&self, regs: &user_regs_struct) -> Result<()> {
        self.bump_regs_gen();
        self.set_regs_keep(regs)
    }

    /// `PTRACE_SETREGS` from injection (keeps the cached saved registers).
    pub(crate) fn set_regs_keep(&self, regs: &user_regs_struct) -> Result<()> {
        self.require_stopped("PTRACE_SETREGS")?;
        // SAFETY: SETREGS only reads one user_regs_struct from `regs`.
        unsafe {
            ptrace_raw(
                libc::PTRACE_SETREGS,
                "PTRACE_SETREGS",
                self.tid(),
                0,
                regs as *const user_regs_struct as usize,
            )
        }?;
        Ok(())
    }

    fn get_regset(&self, nt: usize, name: &'static str, cap: usize) -> Result<Vec<u8>> {
        self.require_stopped(name)?;
        let mut buf = vec![0u8; cap];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: GETREGSET writes at most iov_len bytes to iov_base, a live
        // buffer of that length we own, and updates iov_len in `iov`.
        unsafe {
            ptrace_raw(
                libc::PTRACE_GETREGSET,
                name,
                self.tid(),
                nt,
                &mut iov as *mut libc::iovec as usize,
            )
        }?;
        let n = iov.iov_len.min(buf.len());
        buf.truncate(n);
        Ok(buf)
    }

    fn set_regset(&self, nt: usize, name: &'static str, data: &[u8]) -> Result<()> {
        self.require_stopped(name)?;
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: SETREGSET only reads iov_len bytes from iov_base, which is
        // `data`, borrowed for the duration of the call.
        unsafe {
            ptrace_raw(
                libc::PTRACE_SETREGSET,
                name,
                self.tid(),
                nt,
                &mut iov as *mut libc::iovec as usize,
            )
        }?;
        Ok(())
    }

    /// The XSAVE area (`NT_X86_XSTATE`), exactly as long as the kernel
    /// reports (the first call probes with a 64 KiB buffer).
    pub fn get_xstate(&self) -> Result<Vec<u8>> {
        let cap = XSTATE_SIZE.get().copied().unwrap_or(XSTATE_PROBE_SIZE);
        let buf = self.get_regset(NT_X86_XSTATE, "PTRACE_GETREGSET(NT_X86_XSTATE)", cap)?;
        let _ = XSTATE_SIZE.set(buf.len());
        Ok(buf)
    }

    /// The XSAVE area size the kernel uses, asked from the kernel.
    pub fn xstate_size(&self) -> Result<usize> {
        match XSTATE_SIZE.get() {
            Some(n) => Ok(*n),
            None => Ok(self.get_xstate()?.len()),
        }
    }

    /// Writes the XSAVE area back (`PTRACE_SETREGSET NT_X86_XSTATE`).
    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        self.set_regset(NT_X86_XSTATE, "PTRACE_SETREGSET(NT_X86_XSTATE)", xstate)
    }

    /// The legacy FXSAVE area (`NT_PRFPREG`, 512 bytes).
    pub fn get_fpregs(&self) -> Result<Vec<u8>> {
        self.get_regset(NT_PRFPREG, "PTRACE_GETREGSET(NT_PRFPREG)", FPREGS_SIZE)
    }

    /// Writes the FXSAVE area back.
    pub fn set_fpregs(&self, fpregs: &[u8]) -> Result<()> {
        self.set_regset(NT_PRFPREG, "PTRACE_SETREGSET(NT_PRFPREG)", fpregs)
    }

    /// The blocked-signal mask (`PTRACE_GETSIGMASK`).
    pub fn get_sigmask(&self) -> Result<u64> {
        self.require_stopped("PTRACE_GETSIGMASK")?;
        let mut mask: u64 = 0;
        // SAFETY: GETSIGMASK with addr = 8 writes exactly 8 bytes into `mask`.
        unsafe {
            ptrace_raw(
                PTRACE_GETSIGMASK,
                "PTRACE_GETSIGMASK",
                self.tid(),
                size_of::<u64>(),
                &mut mask as *mut u64 as usize,
            )
        }?;
        Ok(mask)
    }

    /// Sets the blocked-signal mask (`PTRACE_SETSIGMASK`; the kernel drops
    /// SIGKILL and SIGSTOP from it).
    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        self.require_stopped("PTRACE_SETSIGMASK")?;
        // SAFETY: SETSIGMASK with addr = 8 reads exactly 8 bytes from `mask`.
        unsafe {
            ptrace_raw(
                PTRACE_SETSIGMASK,
                "PTRACE_SETSIGMASK",
                self.tid(),
                size_of::<u64>(),
                &mask as *const u64 as usize,
            )
        }?;
        Ok(())
    }

    /// The registered rseq area (`PTRACE_GET_RSEQ_CONFIGURATION`); a null
    /// pointer and size 0 when none is registered.
    pub fn get_rseq_config(&self) -> Result<RseqConfig> {
        self.require_stopped("PTRACE_GET_RSEQ_CONFIGURATION")?;
        let mut raw = RawRseqConfig::default();
        // SAFETY: the kernel writes at most addr = sizeof(RawRseqConfig)
        // bytes into `raw`, a #[repr(C)] struct with the kernel's layout.
        let n = unsafe {
            ptrace_raw(
                PTRACE_GET_RSEQ_CONFIGURATION,
                "PTRACE_GET_RSEQ_CONFIGURATION",
                self.tid(),
                size_of::<RawRseqConfig>(),
                &mut raw as *mut RawRseqConfig as usize,
            )
        }?;
        if n < 20 {
            return Err(InjectError::Invalid(format!(
                "PTRACE_GET_RSEQ_CONFIGURATION on thread {} returned only {n} bytes",
                self.tid()
            )));
        }
        Ok(RseqConfig {
            rseq_abi_pointer: raw.rseq_abi_pointer,
            rseq_abi_size: raw.rseq_abi_size,
            signature: raw.signature,
            flags: raw.flags,
        })
    }

    /// The siginfo of the current stop (`PTRACE_GETSIGINFO`), raw bytes.
    pub fn get_siginfo(&self) -> Result<[u8; SIGINFO_SIZE]> {
        self.require_stopped("PTRACE_GETSIGINFO")?;
        let mut words = [0u64; SIGINFO_SIZE / 8];
        // SAFETY: GETSIGINFO writes one 128-byte siginfo_t into `words`
        // (128 bytes, 8-byte aligned).
        unsafe {
            ptrace_raw(
                libc::PTRACE_GETSIGINFO,
                "PTRACE_GETSIGINFO",
                self.tid(),
                0,
                words.as_mut_ptr() as usize,
            )
        }?;
        let mut out = [0u8; SIGINFO_SIZE];
        out.copy_from_slice(&bytes_of_words(&words));
        Ok(out)
    }

    /// Replaces the siginfo of the current signal-delivery-stop.
    pub fn set_siginfo(&self, siginfo: &[u8]) -> Result<()> {
        self.require_stopped("PTRACE_SETSIGINFO")?;
        if siginfo.len() != SIGINFO_SIZE {
            return Err(InjectError::Invalid(format!(
                "siginfo must be {SIGINFO_SIZE} bytes, got {}",
                siginfo.len()
            )));
        }
        let mut words = [0u64; SIGINFO_SIZE / 8];
        for (w, c) in words.iter_mut().zip(siginfo.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            *w = u64::from_ne_bytes(b);
        }
        // SAFETY: SETSIGINFO reads one 128-byte siginfo_t from `words`.
        unsafe {
            ptrace_raw(
                libc::PTRACE_SETSIGINFO,
                "PTRACE_SETSIGINFO",
                self.tid(),
                0,
                words.as_ptr() as usize,
            )
        }?;
        Ok(())
    }

    /// The signals queued for this thread (`shared` false) or for the whole
    /// process (`shared` true), oldest first, without dequeuing them
    /// (`PTRACE_PEEKSIGINFO`).
    pub fn peek_pending_signals(&self, shared: bool) -> Result<Vec<PendingSignal>> {
        self.require_stopped("PTRACE_PEEKSIGINFO")?;
        const BATCH: usize = 32;
        let mut out = Vec::new();
        let mut words = vec![0u64; BATCH * SIGINFO_SIZE / 8];
        loop {
            let args = PeekSiginfoArgs {
                off: out.len() as u64,
                flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
                nr: BATCH as i32,
            };
            // SAFETY: PEEKSIGINFO reads the args struct (#[repr(C)], kernel
            // layout) and writes at most `nr` = BATCH siginfos of 128 bytes
            // into `words`, which holds exactly BATCH * 128 bytes.
            let n = unsafe {
                ptrace_raw(
                    PTRACE_PEEKSIGINFO,
                    "PTRACE_PEEKSIGINFO",
                    self.tid(),
                    &args as *const PeekSiginfoArgs as usize,
                    words.as_mut_ptr() as usize,
                )
            }?;
            let n = (n.max(0) as usize).min(BATCH);
            for i in 0..n {
                let w = &words[i * 16..(i + 1) * 16];
                let siginfo = bytes_of_words(w);
                let signo = (w[0] & 0xffff_ffff) as i32;
                out.push(PendingSignal { signo, siginfo });
            }
            if n < BATCH {
                return Ok(out);
            }
        }
    }

    /// General registers, XSAVE area and signal mask in one go.
    pub fn collect_regs(&self) -> Result<ThreadRegs> {
        Ok(ThreadRegs {
            gp: regs_to_array(&self.get_regs()?),
            xstate: self.get_xstate()?,
            sigmask: self.get_sigmask()?,
        })
    }

    /// Puts back what [`Tracee::collect_regs`] took.
    pub fn restore_regs(&self, regs: &ThreadRegs) -> Result<()> {
        self.set_regs(&regs.user_regs())?;
        self.set_xstate(&regs.xstate)?;
        self.set_sigmask(regs.sigmask)
    }
}

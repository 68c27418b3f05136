//! Pending signals and POSIX timers of a process being rebuilt (step 5 of
//! [`crate::restore::process`]), all by injection into its leader.
//!
//! ```text
//! image                                   husk (every thread blocks every
//!                                         signal from here to step 6)
//! Process.posix_timers  ── prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)
//!   (id order)          ── timer_create(clock, sigevent, &id = recorded id)
//!                       ── timer_settime(id, relative, interval + time left)
//!                       ── prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)
//! Process.shared_pending ── rt_sigqueueinfo(tgid, signo, siginfo)
//! Thread.pending         ── rt_tgsigqueueinfo(tgid, tid, signo, siginfo)
//! Thread.sigmask         ── PTRACE_SETSIGMASK (step 6)
//! ```
//!
//! A process may queue any `si_code` to itself (the kernel only checks
//! the sender when it is another process), so each siginfo comes back as
//! it was recorded: `si_code`, `si_pid`, `si_uid`, `si_value`. The calls are
//! injected in the leader: `rt_tgsigqueueinfo` accepts a sender whose TID
//! is the thread group id. Every thread blocks every signal meanwhile so
//! that nothing is delivered while the restorer still injects; step 6 puts
//! the recorded masks back, and signals not blocked there are delivered
//! as soon as the process runs.

use cr_formats::schema::{PosixTimer, Process, Thread};
use nix::unistd::Pid;

use super::{RestoreError, Result};
use crate::inject::{write_memory, RemoteSyscall, Tracee};

/// Every signal blocked (the kernel ignores SIGKILL and SIGSTOP).
pub const ALL_SIGNALS: u64 = u64::MAX;
/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, ...)` (Linux 6.17+): `timer_create`
/// takes the timer id to create from `*created_timer_id`.
pub const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;
/// `sizeof(siginfo_t)`.
const SIGINFO_SIZE: usize = 128;
/// `sizeof(struct sigevent)`.
const SIGEVENT_SIZE: usize = 64;

/// Blocks every signal of `tracee` (`PTRACE_SETSIGMASK`).
pub fn block_all(pid: Pid, tracee: &mut Tracee) -> Result<()> {
    tracee
        .set_sigmask(ALL_SIGNALS)
        .map_err(|source| RestoreError::Registers {
            pid,
            what: "the signal mask to block everything while signals are queued",
            source,
        })
}

/// The signal number of a raw `siginfo_t`.
fn signo_of(siginfo: &[u8]) -> Option<i32> {
    let b: [u8; 4] = siginfo.get(0..4)?.try_into().ok()?;
    Some(i32::from_ne_bytes(b))
}

/// Queues the process's pending signals again, process-wide ones first,
/// each in its recorded order, by injection in the leader (`rs`). Every
/// thread must block every signal (see [`block_all`]).
pub fn requeue_pending(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    process: &Process,
    threads: &[Thread],
    scratch: u64,
) -> Result<()> {
    let tgid = process.pid as u64;
    let mut queue: Vec<(Option<i32>, &[u8])> = process
        .shared_pending
        .iter()
        .map(|s| (None, &s.0[..]))
        .collect();
    for t in threads {
        queue.extend(t.pending.iter().map(|s| (Some(t.tid), &s.0[..])));
    }
    for (tid, info) in queue {
        let invalid = |what: String| RestoreError::Invalid { pid, what };
        let signo = signo_of(info)
            .filter(|s| (1..=64).contains(s) && info.len() == SIGINFO_SIZE)
            .ok_or_else(|| {
                invalid(format!(
                    "a pending signal's siginfo of {} bytes is malformed",
                    info.len()
                ))
            })?;
        let what = match tid {
            None => format!("pending signal {signo} (rt_sigqueueinfo)"),
            Some(tid) => format!("thread {tid}'s pending signal {signo} (rt_tgsigqueueinfo)"),
        };
        let err = |source| RestoreError::ThreadState {
            pid,
            what: what.clone(),
            source,
        };
        write_memory(pid, scratch, info).map_err(err)?;
        match tid {
            None => rs.inject(
                libc::SYS_rt_sigqueueinfo,
                [tgid, signo as u64, scratch, 0, 0, 0],
            ),
            Some(tid) => rs.inject(
                libc::SYS_rt_tgsigqueueinfo,
                [tgid, tid as u64, signo as u64, scratch, 0, 0],
            ),
        }
        .map_err(err)?;
    }
    Ok(())
}

/// Creates the process's POSIX timers again with their recorded ids, in id
/// order, and arms them with their interval and the time that was left.
pub fn restore_timers(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    process: &Process,
    scratch: u64,
) -> Result<()> {
    if process.posix_timers.is_empty() {
        return Ok(());
    }
    let err = |what: String| move |source| RestoreError::ThreadState { pid, what, source };
    let mut timers: Vec<&PosixTimer> = process.posix_timers.iter().collect();
    timers.sort_by_key(|t| t.id);
    rs.remote_prctl(PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0)
        .map_err(err(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS): this kernel cannot create timers with chosen ids"
                .into(),
        ))?;
    for t in timers {
        let id = t.id;
        // struct sigevent: value, signo, notify, then the thread id.
        let mut ev = vec![0u8; SIGEVENT_SIZE];
        ev[0..8].copy_from_slice(&t.value.to_ne_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_ne_bytes());
        let id_at = scratch + SIGEVENT_SIZE as u64;
        let what = || format!("POSIX timer {id} (timer_create)");
        write_memory(pid, scratch, &ev).map_err(err(what()))?;
        write_memory(pid, id_at, &id.to_ne_bytes()).map_err(err(what()))?;
        rs.inject(
            libc::SYS_timer_create,
            [t.clock as i64 as u64, scratch, id_at, 0, 0, 0],
        )
        .map_err(err(what()))?;
        let mut got = [0u8; 4];
        crate::inject::read_memory_exact(pid, id_at, &mut got).map_err(err(what()))?;
        if i32::from_ne_bytes(got) != id {
            return Err(RestoreError::Invalid {
                pid,
                what: format!(
                    "timer_create made timer {} instead of {id}",
                    i32::from_ne_bytes(got)
                ),
            });
        }
        if t.timer.value_ns == 0 {
            continue; // created disarmed
        }
        let ts = |ns: u64| [ns / 1_000_000_000, ns % 1_000_000_000];
        let mut its = Vec::with_capacity(32);
        for w in ts(t.timer.interval_ns)
            .into_iter()
            .chain(ts(t.timer.value_ns))
        {
            its.extend_from_slice(&w.to_ne_bytes());
        }
        let what = || format!("POSIX timer {id} (timer_settime)");
        write_memory(pid, scratch, &its).map_err(err(what()))?;
        rs.inject(libc::SYS_timer_settime, [id as u64, 0, scratch, 0, 0, 0])
            .map_err(err(what()))?;
    }
    rs.remote_prctl(PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0)
        .map_err(err("prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)".into()))?;
    Ok(())
}

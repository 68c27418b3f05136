//! Credentials and scheduling of a thread being rebuilt, injected into that
//! thread itself (credentials and scheduling are per thread in Linux; a
//! raw `setresuid` changes only the calling thread). Run last in step 5 of
//! [`crate::restore::process`]: the husk needs root's capabilities for
//! everything before (`PR_SET_MM_MAP`, mappings, ...), the restorer's
//! ptrace needs nothing from the tracee once attached.
//!
//! ```text
//! sched_setscheduler(0, policy, priority)      while still privileged
//! PR_CAPBSET_DROP   every capability outside the recorded bounding set
//! setgroups         supplementary groups
//! PR_SET_SECUREBITS SECBIT_NO_SETUID_FIXUP: changing ids keeps every capability
//! setresgid, setfsgid, setresuid, setfsuid
//! capset            inheritable as recorded (permitted, effective kept)
//! PR_CAP_AMBIENT    clear, raise each recorded ambient capability
//! PR_SET_SECUREBITS as recorded (needs CAP_SETPCAP, still effective)
//! capset            effective, permitted, inheritable as recorded
//! ```
//!
//! Changing ids resets the process's dumpable flag and the thread's
//! parent-death signal (kernel `commit_creds`): the caller sets both again
//! afterwards.

use cr_formats::schema::{Credentials, Sched};
use nix::unistd::Pid;

use super::{RestoreError, Result};
use crate::inject::{read_memory_exact, write_memory, InjectError, RemoteSyscall};

/// `SECBIT_NO_SETUID_FIXUP`.
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// Supplementary groups that fit in the scratch page after the structs.
const MAX_GROUPS: usize = 768;
const GROUPS_AT: u64 = 1024;

/// The highest capability number this kernel knows.
pub fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Sets the scheduling policy and real-time priority of the thread `rs`
/// injects into, if not `SCHED_OTHER` (the nice value is set apart).
pub fn apply_sched(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    tid: i32,
    sched: &Sched,
    scratch: u64,
) -> Result<()> {
    if sched.policy == libc::SCHED_OTHER as u32 {
        return Ok(());
    }
    let err = |source| RestoreError::ThreadState {
        pid,
        what: format!(
            "thread {tid}: sched_setscheduler(policy {}, priority {})",
            sched.policy, sched.priority
        ),
        source,
    };
    write_memory(pid, scratch, &sched.priority.to_ne_bytes()).map_err(err)?;
    rs.inject(
        libc::SYS_sched_setscheduler,
        [0, u64::from(sched.policy), scratch, 0, 0, 0],
    )
    .map_err(err)?;
    Ok(())
}

/// Gives the thread `rs` injects into the credentials `c` (see the module
/// documentation for the order).
pub fn apply_creds(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    tid: i32,
    c: &Credentials,
    scratch: u64,
) -> Result<()> {
    let step = |what: &str| {
        let what = format!("thread {tid}: credentials: {what}");
        move |source| RestoreError::ThreadState { pid, what, source }
    };
    let prctl = |rs: &mut RemoteSyscall<'_>, args: [u64; 3], what: &str| {
        rs.inject(libc::SYS_prctl, [args[0], args[1], args[2], 0, 0, 0])
            .map_err(step(what))
    };
    for cap in 0..=cap_last_cap() {
        if c.caps.bounding & (1u64 << cap) == 0 {
            let now = prctl(
                rs,
                [libc::PR_CAPBSET_READ as u64, u64::from(cap), 0],
                "PR_CAPBSET_READ",
            )?;
            if now == 1 {
                prctl(
                    rs,
                    [libc::PR_CAPBSET_DROP as u64, u64::from(cap), 0],
                    &format!("PR_CAPBSET_DROP({cap})"),
                )?;
            }
        }
    }
    if c.groups.len() > MAX_GROUPS {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "thread {tid} has {} supplementary groups; restore handles {MAX_GROUPS}",
                c.groups.len()
            ),
        });
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    write_memory(pid, scratch + GROUPS_AT, &groups).map_err(step("setgroups"))?;
    rs.inject(
        libc::SYS_setgroups,
        [c.groups.len() as u64, scratch + GROUPS_AT, 0, 0, 0, 0],
    )
    .map_err(step("setgroups"))?;
    prctl(
        rs,
        [libc::PR_SET_SECUREBITS as u64, SECBIT_NO_SETUID_FIXUP, 0],
        "PR_SET_SECUREBITS(NO_SETUID_FIXUP)",
    )?;
    let (u, g) = (&c.uid, &c.gid);
    rs.inject(
        libc::SYS_setresgid,
        [g.real.into(), g.effective.into(), g.saved.into(), 0, 0, 0],
    )
    .map_err(step("setresgid"))?;
    rs.inject(libc::SYS_setfsgid, [g.fs.into(), 0, 0, 0, 0, 0])
        .map_err(step("setfsgid"))?;
    rs.inject(
        libc::SYS_setresuid,
        [u.real.into(), u.effective.into(), u.saved.into(), 0, 0, 0],
    )
    .map_err(step("setresuid"))?;
    rs.inject(libc::SYS_setfsuid, [u.fs.into(), 0, 0, 0, 0, 0])
        .map_err(step("setfsuid"))?;
    // setfsuid/setfsgid report no error: check what the kernel kept.
    let fsuid = rs
        .inject(libc::SYS_setfsuid, [u64::from(u32::MAX), 0, 0, 0, 0, 0])
        .map_err(step("setfsuid"))?;
    let fsgid = rs
        .inject(libc::SYS_setfsgid, [u64::from(u32::MAX), 0, 0, 0, 0, 0])
        .map_err(step("setfsgid"))?;
    if fsuid != i64::from(u.fs) || fsgid != i64::from(g.fs) {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "thread {tid}: fsuid/fsgid are {fsuid}/{fsgid}, the image has {}/{}",
                u.fs, g.fs
            ),
        });
    }

    let (eff, prm) = capget(rs, pid, scratch).map_err(step("capget"))?;
    capset(rs, pid, scratch, [eff, prm, c.caps.inheritable])
        .map_err(step("capset (inheritable)"))?;
    prctl(
        rs,
        [
            libc::PR_CAP_AMBIENT as u64,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
            0,
        ],
        "PR_CAP_AMBIENT_CLEAR_ALL",
    )?;
    for cap in 0..64u64 {
        if c.caps.ambient & (1 << cap) != 0 {
            prctl(
                rs,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                ],
                &format!("PR_CAP_AMBIENT_RAISE({cap})"),
            )?;
        }
    }
    prctl(
        rs,
        [libc::PR_SET_SECUREBITS as u64, u64::from(c.securebits), 0],
        "PR_SET_SECUREBITS",
    )?;
    capset(
        rs,
        pid,
        scratch,
        [c.caps.effective, c.caps.permitted, c.caps.inheritable],
    )
    .map_err(step("capset"))?;
    Ok(())
}

/// `capget`: (effective, permitted) of the calling thread.
fn capget(rs: &mut RemoteSyscall<'_>, pid: Pid, scratch: u64) -> Result<(u64, u64), InjectError> {
    let mut header = Vec::with_capacity(8);
    header.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    header.extend_from_slice(&0i32.to_ne_bytes());
    write_memory(pid, scratch, &header)?;
    rs.inject(libc::SYS_capget, [scratch, scratch + 8, 0, 0, 0, 0])?;
    let mut data = [0u8; 24];
    read_memory_exact(pid, scratch + 8, &mut data)?;
    let word = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&data[i * 4..i * 4 + 4]);
        u64::from(u32::from_ne_bytes(b))
    };
    // Two {effective, permitted, inheritable} structs: low, then high bits.
    Ok((word(0) | word(3) << 32, word(1) | word(4) << 32))
}

/// `capset` of the calling thread: `[effective, permitted, inheritable]`.
fn capset(
    rs: &mut RemoteSyscall<'_>,
    pid: Pid,
    scratch: u64,
    sets: [u64; 3],
) -> Result<(), InjectError> {
    let mut buf = Vec::with_capacity(32);
    buf.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    buf.extend_from_slice(&0i32.to_ne_bytes());
    for half in [0, 32] {
        for set in sets {
            buf.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
        }
    }
    write_memory(pid, scratch, &buf)?;
    rs.inject(libc::SYS_capset, [scratch, scratch + 8, 0, 0, 0, 0])?;
    Ok(())
}

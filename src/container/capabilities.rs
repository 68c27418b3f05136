//! The capability set of a container's processes.
//!
//! A cr container is a privileged system container in the OpenVZ/LXC sense:
//! root inside is root over the container's own namespaces (its network,
//! mounts, hostname, IPC, processes) but not over the host. It keeps every
//! capability except the ones below, which act on the host as a whole and
//! which no namespace confines. They are dropped from the bounding set, so no
//! process in the container, setuid or not, can get them back.
//!
//! | dropped | why |
//! |---|---|
//! | `SYS_MODULE` | loading kernel modules |
//! | `SYS_RAWIO` | raw I/O ports, `/dev/mem` |
//! | `SYS_TIME` | setting the host clock |
//! | `SYS_BOOT` | rebooting (kexec) |
//! | `SYS_PACCT` | host process accounting |
//! | `SYS_TTY_CONFIG` | `vhangup` on host terminals |
//! | `SYSLOG` | the host's kernel log |
//! | `DAC_READ_SEARCH` | `open_by_handle_at`, which reaches host files by handle |
//! | `LINUX_IMMUTABLE` | immutable/append-only flags on shared image files |
//! | `MAC_ADMIN`, `MAC_OVERRIDE` | the host's LSM policy |
//! | `AUDIT_CONTROL`, `AUDIT_READ` | the host's audit subsystem |
//! | `WAKE_ALARM`, `BLOCK_SUSPEND` | host power management |
//! | `BPF`, `PERFMON` | kernel-wide BPF programs and performance monitoring |
//! | `CHECKPOINT_RESTORE` | checkpoint/restore of the host's processes |
//!
//! With `--userns` the same set is dropped from the bounding set inside the
//! container's user namespace; the capabilities kept then act only on the
//! namespaces that user namespace owns (see [`crate::container::userns`]).
//!
//! Device access is limited separately by the devices cgroup (v1) and a
//! private `/dev` with only the standard nodes.

use caps::{CapSet, Capability, CapsHashSet};

use crate::error::{Error, Result};

/// Capabilities no process in a container has.
pub const DROPPED: &[Capability] = &[
    Capability::CAP_SYS_MODULE,
    Capability::CAP_SYS_RAWIO,
    Capability::CAP_SYS_TIME,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_SYS_PACCT,
    Capability::CAP_SYS_TTY_CONFIG,
    Capability::CAP_SYSLOG,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_LINUX_IMMUTABLE,
    Capability::CAP_MAC_ADMIN,
    Capability::CAP_MAC_OVERRIDE,
    Capability::CAP_AUDIT_CONTROL,
    Capability::CAP_AUDIT_READ,
    Capability::CAP_WAKE_ALARM,
    Capability::CAP_BLOCK_SUSPEND,
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_CHECKPOINT_RESTORE,
];

/// Drops [`DROPPED`] from the bounding, permitted, effective and inheritable
/// sets of the calling thread and clears the ambient set. Called by a
/// container's PID 1 and by `cr exec` just before they exec.
pub fn drop_host_capabilities() -> Result<()> {
    let fail = |what: &str, e: caps::errors::CapsError| {
        Error::Invalid(format!("dropping capabilities ({what}): {e}"))
    };
    for cap in DROPPED {
        let bounded = caps::has_cap(None, CapSet::Bounding, *cap)
            .map_err(|e| fail("reading bounding set", e))?;
        if bounded {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|e| fail("bounding set", e))?;
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let mut current: CapsHashSet = caps::read(None, set).map_err(|e| fail("reading", e))?;
        for cap in DROPPED {
            current.remove(cap);
        }
        caps::set(None, set, &current).map_err(|e| fail("setting", e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient set", e))?;
    Ok(())
}

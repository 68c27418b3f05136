//! The network lock: while a container's TCP sockets are checkpointed or
//! being rebuilt, no packet enters or leaves its network namespace, so no
//! peer packet meets a missing or half-built socket and draws a reset, and
//! the queues read at checkpoint do not move under cr.
//!
//! ```text
//!   lock(netns)    iptables-restore --noflush / ip6tables-restore --noflush
//!                  inside the container's netns (setns before exec):
//!                    -N CR-NETLOCK
//!                    -A CR-NETLOCK -m mark --mark BYPASS_MARK -j RETURN
//!                    -A CR-NETLOCK -j DROP
//!                    -I INPUT 1 -j CR-NETLOCK ; -I OUTPUT 1 -j CR-NETLOCK
//!   unlock()       deletes the two jumps and the chain (both families)
//! ```
//!
//! The rules live in the container's own network namespace: they vanish
//! with it (a stopped container, a failed restore), and nothing on the host
//! changes. A peer that sends while the lock holds sees its segments
//! dropped and retransmits them later, as after a lost packet.
//! `iptables` is Debian's (either backend; nf_tables here).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The chain that drops everything.
pub const CHAIN: &str = "CR-NETLOCK";

/// The packet mark the lock lets through: the FIN of a half-closed
/// connection that restore delivers again (restore::tcp_fin), sent while
/// every other packet is still held back.
pub const BYPASS_MARK: u32 = 0x4352_0001;

#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("opening the network namespace of process {pid}: {source}")]
    Netns {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("running {tool} to {what} the container's network (is the iptables package installed? scripts/setup installs it): {source}")]
    Spawn {
        tool: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed to {what} the container's network: {stderr}")]
    Failed {
        tool: &'static str,
        what: &'static str,
        stderr: String,
    },
}

impl From<NetLockError> for crate::Error {
    fn from(e: NetLockError) -> Self {
        crate::Error::Invalid(e.to_string())
    }
}

/// A locked network namespace; [`NetLock::unlock`] lifts the lock. Dropped
/// without unlocking, it only lets go of the namespace (whose rules go
/// away with it).
#[derive(Debug)]
pub struct NetLock {
    netns: OwnedFd,
}

const TOOLS: [&str; 2] = ["iptables-restore", "ip6tables-restore"];
/// What each of [`TOOLS`] restores, printed.
const SAVE_TOOLS: [&str; 2] = ["iptables-save", "ip6tables-save"];

impl NetLock {
    /// Locks the network namespace of host process `pid`.
    pub fn lock(pid: i32) -> Result<NetLock, NetLockError> {
        NetLock::install(pid, "-j DROP")
    }

    /// Locks new TCP connections out of the network namespace of host
    /// process `pid` (their SYNs are dropped; the peer sends them again a
    /// second later) while everything else still flows, so handshakes
    /// already under way complete; [`NetLock::tighten`] then locks it all.
    pub fn lock_new_connections(pid: i32) -> Result<NetLock, NetLockError> {
        NetLock::install(pid, "-p tcp --syn -j DROP")
    }

    /// From locking new connections out to locking everything.
    pub fn tighten(&self) -> Result<(), NetLockError> {
        let rules = format!("*filter\n-A {CHAIN} -j DROP\nCOMMIT\n");
        for tool in TOOLS {
            self.run(tool, "lock", &rules)?;
        }
        Ok(())
    }

    fn install(pid: i32, drop: &str) -> Result<NetLock, NetLockError> {
        let netns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|source| NetLockError::Netns { pid, source })?;
        let lock = NetLock {
            netns: netns.into(),
        };
        let rules = format!(
            "*filter\n:{CHAIN} - [0:0]\n-A {CHAIN} -m mark --mark {BYPASS_MARK:#x} -j RETURN\n-A {CHAIN} {drop}\n-I INPUT 1 -j {CHAIN}\n-I OUTPUT 1 -j {CHAIN}\nCOMMIT\n"
        );
        for (i, tool) in TOOLS.iter().enumerate() {
            if let Err(e) = lock.run(tool, "lock", &rules) {
                // Undo the families already locked.
                for done in &TOOLS[..i] {
                    let _ = lock.run(done, "unlock", &unlock_rules());
                }
                return Err(e);
            }
        }
        Ok(lock)
    }

    /// The lock a process that is gone may have left on the network
    /// namespace of host process `pid`, to lift with
    /// [`NetLock::unlock_left`].
    pub fn left_on(pid: i32) -> Result<NetLock, NetLockError> {
        let netns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|source| NetLockError::Netns { pid, source })?;
        Ok(NetLock {
            netns: netns.into(),
        })
    }

    /// Lifts the lock in both families (both are tried even if one fails).
    pub fn unlock(self) -> Result<(), NetLockError> {
        let mut first = Ok(());
        for tool in TOOLS {
            if let Err(e) = self.run(tool, "unlock", &unlock_rules()) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Lifts the lock in each family where it is (a namespace that was
    /// never locked, or only in one family, is fine): for what a process
    /// that is gone may have left.
    pub fn unlock_left(self) -> Result<(), NetLockError> {
        let head = format!(":{CHAIN} ");
        let mut first = Ok(());
        for (restore, save) in TOOLS.into_iter().zip(SAVE_TOOLS) {
            let lifted = self
                .exec(save, "look at", &["-t", "filter"], None)
                .and_then(|rules| match rules.lines().any(|l| l.starts_with(&head)) {
                    true => self.run(restore, "unlock", &unlock_rules()),
                    false => Ok(()),
                });
            if let Err(e) = lifted {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Runs `tool --noflush` inside the namespace with `rules` on stdin.
    fn run(&self, tool: &'static str, what: &'static str, rules: &str) -> Result<(), NetLockError> {
        self.exec(tool, what, &["--noflush", "-w", "10"], Some(rules))
            .map(drop)
    }

    /// Runs `tool ARGS` inside the namespace, with `input` on stdin;
    /// returns its stdout.
    fn exec(
        &self,
        tool: &'static str,
        what: &'static str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, NetLockError> {
        let ns = self.netns.as_raw_fd();
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setns(2), which is async-signal-safe; `ns` is an fd the
        // child inherited.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawn = |source| NetLockError::Spawn { tool, what, source };
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.unwrap_or_default().as_bytes())
                .map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NetLockError::Failed {
                tool,
                what,
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', "; "),
            })
        }
    }
}

fn unlock_rules() -> String {
    format!("*filter\n-D INPUT -j {CHAIN}\n-D OUTPUT -j {CHAIN}\n-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n")
}

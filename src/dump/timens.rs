//! Time namespaces at checkpoint: which processes of the container are in
//! a time namespace of their own, which one made it, and its offsets.
//!
//! ```text
//! survey (running)    read(): each process's ns/time and
//!   and frozen          ns/time_for_children inodes (every thread the
//!                       same as its leader, else refused)
//!                     plan(): one TimeNamespace per inode other than the
//!                       host's; its creator (time_for_children == it,
//!                       time != it: the process that called unshare), its
//!                       members (time == it), its offsets from
//!                       /proc/PID/timens_offsets of a process whose
//!                       time_for_children it is; refuses what restore
//!                       cannot make again (see below)
//! dump_frozen         one Record::TimeNamespace per namespace
//! ```
//!
//! Restore (src/restore/timens.rs) can put a process in a time namespace
//! in two ways only: a child is born in its parent's `time_for_children`,
//! and `setns` puts a single-threaded process in an existing namespace
//! (both its own and its children's). A process whose `time_for_children`
//! differs from its own namespace can only be made by `unshare` in that
//! process, so such a namespace is made again by its creator, and nothing
//! else may `setns` into it (it does not exist yet when the other
//! processes are made). [`plan`] refuses, before the freeze:
//!
//! - two processes that each made the same namespace their children's;
//! - a process that is in a namespace made by another process without
//!   being born into it (it joined with `setns`, or its parent left it);
//! - a namespace whose offsets no process shows (none has it as its
//!   `time_for_children`);
//! - a thread whose time namespaces differ from its thread group leader's.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;

use cr_formats::schema::{TimeNamespace, TimeOffset};

use crate::dump::procfs::TaskStatus;
use crate::dump::DumpError;

/// A process's time namespaces: the inodes of `ns/time` and
/// `ns/time_for_children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeNs {
    pub time: u64,
    pub for_children: u64,
}

/// One process as the plan sees it.
pub struct TimeTask<'a> {
    pub host_pid: i32,
    pub status: &'a TaskStatus,
    /// Its parent's pid in the container; `None` for the container's PID 1.
    pub parent: Option<i32>,
    pub ns: TimeNs,
}

fn ino(pid: i32, path: &str) -> Result<u64, DumpError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| DumpError::proc(pid, path, e))
}

/// The inode of cr's own time namespace: the host's, the container's.
pub fn host_time_ns() -> Result<u64, DumpError> {
    ino(0, "/proc/self/ns/time")
}

/// Reads the time namespaces of host process `host_pid` and checks that
/// every one of its threads `tids` shares them.
pub fn read(host_pid: i32, status: &TaskStatus, tids: &[i32]) -> Result<TimeNs, DumpError> {
    let pid = status.pid_in_ns();
    let of = |dir: String| -> Result<TimeNs, DumpError> {
        Ok(TimeNs {
            time: ino(pid, &format!("{dir}/ns/time"))?,
            for_children: ino(pid, &format!("{dir}/ns/time_for_children"))?,
        })
    };
    let ns = of(format!("/proc/{host_pid}"))?;
    for &tid in tids.iter().filter(|&&t| t != host_pid) {
        match of(format!("/proc/{host_pid}/task/{tid}")) {
            Ok(t) if t != ns => {
                return Err(DumpError::Unsupported {
                    pid,
                    comm: status.name.clone(),
                    what: format!(
                        "its thread {tid} is in other time namespaces than the process (unshare(CLONE_NEWTIME) in a thread), which cr cannot restore"
                    ),
                })
            }
            // A thread that exited meanwhile.
            Ok(_) | Err(_) => {}
        }
    }
    Ok(ns)
}

/// Parses `/proc/PID/timens_offsets`: `monotonic S N` and `boottime S N`.
pub fn parse_offsets(text: &str) -> Result<(TimeOffset, TimeOffset), String> {
    let mut monotonic = None;
    let mut boottime = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [clock, secs, nanos] = f[..] else {
            return Err(format!("unexpected line {line:?}"));
        };
        let offset = TimeOffset {
            secs: secs
                .parse()
                .map_err(|_| format!("bad seconds in {line:?}"))?,
            nanos: nanos
                .parse()
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| format!("bad nanoseconds in {line:?}"))?,
        };
        match clock {
            "monotonic" | "1" => monotonic = Some(offset),
            "boottime" | "7" => boottime = Some(offset),
            _ => return Err(format!("unknown clock in {line:?}")),
        }
    }
    match (monotonic, boottime) {
        (Some(m), Some(b)) => Ok((m, b)),
        _ => Err(format!("monotonic or boottime missing in {text:?}")),
    }
}

/// The time namespaces of the container's processes (`tasks`, by
/// ascending pid), or the refusal of one that restore cannot rebuild.
/// `host` is [`host_time_ns`].
pub fn plan(tasks: &[TimeTask<'_>], host: u64) -> Result<Vec<TimeNamespace>, DumpError> {
    let refuse = |t: &TimeTask<'_>, what: String| DumpError::Unsupported {
        pid: t.status.pid_in_ns(),
        comm: t.status.name.clone(),
        what,
    };
    let by_pid: HashMap<i32, &TimeTask<'_>> =
        tasks.iter().map(|t| (t.status.pid_in_ns(), t)).collect();
    // Namespace inode -> its record, numbered in order of first sight.
    let mut spaces: BTreeMap<u64, TimeNamespace> = BTreeMap::new();
    let space = |spaces: &mut BTreeMap<u64, TimeNamespace>, ino: u64| {
        let id = spaces.len() as u32;
        spaces.entry(ino).or_insert(TimeNamespace {
            id,
            monotonic: TimeOffset { secs: 0, nanos: 0 },
            boottime: TimeOffset { secs: 0, nanos: 0 },
            creator: None,
            members: Vec::new(),
        });
    };
    let mut offsets_from: HashMap<u64, i32> = HashMap::new();
    for t in tasks {
        let pid = t.status.pid_in_ns();
        if t.ns.time != host {
            space(&mut spaces, t.ns.time);
            if let Some(s) = spaces.get_mut(&t.ns.time) {
                s.members.push(pid);
            }
        }
        if t.ns.for_children != host {
            let n = t.ns.for_children;
            space(&mut spaces, n);
            offsets_from.entry(n).or_insert(t.host_pid);
            if let Some(s) = spaces.get_mut(&n).filter(|_| n != t.ns.time) {
                if let Some(first) = s.creator {
                    return Err(refuse(
                        t,
                        format!(
                            "its children's time namespace is also process {first}'s, and only one process can make a time namespace again at restore"
                        ),
                    ));
                }
                s.creator = Some(pid);
            }
        }
    }
    for t in tasks {
        let born_into = t
            .parent
            .and_then(|p| by_pid.get(&p))
            .map_or(host, |p| p.ns.for_children);
        if t.ns.time == born_into || t.ns.time == host {
            continue;
        }
        // It joins its namespace with setns at restore: only one made
        // before any process (no creator) exists then.
        if let Some(c) = spaces.get(&t.ns.time).and_then(|s| s.creator) {
            return Err(refuse(
                t,
                format!(
                    "it is in the time namespace that process {c} made without being born into it (setns, or its parent is in another), which cr cannot restore"
                ),
            ));
        }
    }
    for (ino, s) in spaces.iter_mut() {
        let Some(&host_pid) = offsets_from.get(ino) else {
            let t = by_pid[&s.members[0]];
            return Err(refuse(
                t,
                "it is in a time namespace that no process has as its children's, so its offsets cannot be read".into(),
            ));
        };
        let path = format!("/proc/{host_pid}/timens_offsets");
        let text = fs::read_to_string(&path).map_err(|e| DumpError::proc(host_pid, &path, e))?;
        let (m, b) = parse_offsets(&text)
            .map_err(|why| DumpError::proc(host_pid, &path, std::io::Error::other(why)))?;
        s.monotonic = m;
        s.boottime = b;
    }
    let mut out: Vec<TimeNamespace> = spaces.into_values().collect();
    out.sort_by_key(|s| s.id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_as_the_kernel_shows_them() {
        let (m, b) =
            parse_offsets("monotonic        1000         5\nboottime     -2000         0\n")
                .unwrap();
        assert_eq!(
            m,
            TimeOffset {
                secs: 1000,
                nanos: 5
            }
        );
        assert_eq!(
            b,
            TimeOffset {
                secs: -2000,
                nanos: 0
            }
        );
        assert!(parse_offsets("monotonic 1 0\n").is_err());
        assert!(parse_offsets("monotonic 1 1000000000\nboottime 0 0\n").is_err());
        assert!(parse_offsets("realtime 1 0\nboottime 0 0\n").is_err());
    }

    fn task(pid: i32, parent: Option<i32>, time: u64, for_children: u64) -> TimeTask<'static> {
        // The plan only borrows the status; leak it for the test's 'static.
        let status: &'static TaskStatus = Box::leak(Box::new(TaskStatus {
            name: format!("p{pid}"),
            ns_pid: vec![pid],
            tgid: pid,
            ..Default::default()
        }));
        TimeTask {
            host_pid: 0,
            status,
            parent,
            ns: TimeNs { time, for_children },
        }
    }

    #[test]
    fn a_namespace_joined_by_setns_beside_its_creator_is_refused() {
        // 1 host; 2 made N=9; 3 is 1's child and in N (setns).
        let tasks = vec![
            task(1, None, 5, 5),
            task(2, Some(1), 5, 9),
            task(3, Some(1), 9, 9),
        ];
        let err = plan(&tasks, 5).unwrap_err().to_string();
        assert!(err.contains("process 2 made without being born"), "{err}");
    }

    #[test]
    fn two_creators_of_one_namespace_are_refused() {
        let tasks = vec![
            task(1, None, 5, 5),
            task(2, Some(1), 5, 9),
            task(3, Some(1), 5, 9),
        ];
        let err = plan(&tasks, 5).unwrap_err().to_string();
        assert!(err.contains("also process 2"), "{err}");
    }

    #[test]
    fn no_namespace_of_its_own_gives_no_record() {
        let tasks = vec![task(1, None, 5, 5), task(2, Some(1), 5, 5)];
        assert!(plan(&tasks, 5).unwrap().is_empty());
    }
}

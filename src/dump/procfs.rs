//! Readers for the `/proc/PID/...` files a checkpoint collects from: status
//! (ids in the container's PID namespace, credentials), maps, fdinfo and the
//! fd links. Parsing is split from reading so it is tested on fixed text.

use std::fs;
use std::path::PathBuf;

use crate::dump::DumpError;

/// What `/proc/PID/status` says about a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStatus {
    pub name: String,
    pub state: char,
    /// Host PID of the parent (`PPid`).
    pub ppid: i32,
    pub tgid: i32,
    /// The task's ids in each nested PID namespace, outermost first; the last
    /// one is the id inside the container.
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    /// real, effective, saved, fs
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    pub umask: u32,
    pub sig_blk: u64,
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub threads: u32,
}

impl TaskStatus {
    /// The id inside the innermost PID namespace.
    pub fn pid_in_ns(&self) -> i32 {
        self.ns_pid.last().copied().unwrap_or(self.tgid)
    }
}

pub fn parse_status(text: &str) -> Result<TaskStatus, String> {
    let mut st = TaskStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let ints = || -> Result<Vec<i64>, String> {
            value
                .split_whitespace()
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("bad number in {key}: {value:?}"))
                })
                .collect()
        };
        let hex =
            || u64::from_str_radix(value, 16).map_err(|_| format!("bad hex in {key}: {value:?}"));
        let ids = || -> Result<[u32; 4], String> {
            let v = ints()?;
            if v.len() != 4 {
                return Err(format!("{key} has {} fields, expected 4", v.len()));
            }
            Ok([v[0] as u32, v[1] as u32, v[2] as u32, v[3] as u32])
        };
        match key {
            "Name" => st.name = value.to_string(),
            "State" => st.state = value.chars().next().unwrap_or('?'),
            "PPid" => st.ppid = ints()?.first().copied().unwrap_or(0) as i32,
            "Tgid" => st.tgid = ints()?.first().copied().unwrap_or(0) as i32,
            "NSpid" => st.ns_pid = ints()?.into_iter().map(|v| v as i32).collect(),
            "NSpgid" => st.ns_pgid = ints()?.into_iter().map(|v| v as i32).collect(),
            "NSsid" => st.ns_sid = ints()?.into_iter().map(|v| v as i32).collect(),
            "Uid" => st.uid = ids()?,
            "Gid" => st.gid = ids()?,
            "Groups" => st.groups = ints()?.into_iter().map(|v| v as u32).collect(),
            "CapInh" => st.cap_inh = hex()?,
            "CapPrm" => st.cap_prm = hex()?,
            "CapEff" => st.cap_eff = hex()?,
            "CapBnd" => st.cap_bnd = hex()?,
            "CapAmb" => st.cap_amb = hex()?,
            "NoNewPrivs" => st.no_new_privs = value == "1",
            "Umask" => {
                st.umask =
                    u32::from_str_radix(value, 8).map_err(|_| format!("bad umask {value:?}"))?
            }
            "Seccomp" => st.seccomp = ints()?.first().copied().unwrap_or(0) as u32,
            "SigBlk" => st.sig_blk = hex()?,
            "SigPnd" => st.sig_pnd = hex()?,
            "ShdPnd" => st.shd_pnd = hex()?,
            "Threads" => st.threads = ints()?.first().copied().unwrap_or(0) as u32,
            _ => {}
        }
    }
    if st.tgid == 0 {
        return Err("no Tgid line".into());
    }
    Ok(st)
}

pub fn read_status(pid: i32) -> Result<TaskStatus, DumpError> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    parse_status(&text).map_err(|message| DumpError::Parse {
        pid,
        path: path.into(),
        message,
    })
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, ...), empty
    /// for anonymous mappings.
    pub name: String,
}

impl MapsEntry {
    pub fn prot(&self) -> u32 {
        let mut prot = 0;
        if self.read {
            prot |= libc::PROT_READ as u32;
        }
        if self.write {
            prot |= libc::PROT_WRITE as u32;
        }
        if self.exec {
            prot |= libc::PROT_EXEC as u32;
        }
        prot
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_maps_line)
        .collect()
}

fn parse_maps_line(line: &str) -> Result<MapsEntry, String> {
    let bad = || format!("malformed maps line {line:?}");
    let mut it = line.splitn(6, ' ');
    let range = it.next().ok_or_else(bad)?;
    let perms = it.next().ok_or_else(bad)?.as_bytes();
    let offset = it.next().ok_or_else(bad)?;
    let dev = it.next().ok_or_else(bad)?;
    let inode = it.next().ok_or_else(bad)?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
    if perms.len() != 4 {
        return Err(bad());
    }
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    Ok(MapsEntry {
        start: hex(start)?,
        end: hex(end)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset)?,
        dev_major: u32::from_str_radix(major, 16).map_err(|_| bad())?,
        dev_minor: u32::from_str_radix(minor, 16).map_err(|_| bad())?,
        inode: inode.parse().map_err(|_| bad())?,
        name,
    })
}

pub fn read_maps(pid: i32) -> Result<Vec<MapsEntry>, DumpError> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    parse_maps(&text).map_err(|message| DumpError::Parse {
        pid,
        path: path.into(),
        message,
    })
}

/// `/proc/PID/fdinfo/FD`: position, flags, mount id, and the kind-specific
/// lines (eventfd-count, tfd, inotify, ...) kept as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    pub extra: Vec<(String, String)>,
}

pub fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let mut info = FdInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "pos" => info.pos = value.parse().map_err(|_| format!("bad pos {value:?}"))?,
            "flags" => {
                info.flags =
                    u32::from_str_radix(value, 8).map_err(|_| format!("bad flags {value:?}"))?
            }
            "mnt_id" => info.mnt_id = value.parse().map_err(|_| format!("bad mnt_id {value:?}"))?,
            "ino" => info.ino = value.parse().map_err(|_| format!("bad ino {value:?}"))?,
            _ => info.extra.push((key.to_string(), value.to_string())),
        }
    }
    Ok(info)
}

/// An open descriptor of a task as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEntry {
    pub fd: i32,
    /// What `/proc/PID/fd/FD` points to: a path, or `pipe:[N]`, `socket:[N]`,
    /// `anon_inode:[eventfd]`, ...
    pub target: String,
    pub info: FdInfo,
}

/// Every open descriptor of `pid`, sorted by number.
pub fn read_fds(pid: i32) -> Result<Vec<FdEntry>, DumpError> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut fds = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| DumpError::proc(pid, &dir, e))? {
        let entry = entry.map_err(|e| DumpError::proc(pid, &dir, e))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let link = match fs::read_link(entry.path()) {
            Ok(link) => link,
            // Closed between the listing and now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DumpError::proc(pid, entry.path(), e)),
        };
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let info = match fs::read_to_string(&info_path) {
            Ok(text) => parse_fdinfo(&text).map_err(|message| DumpError::Parse {
                pid,
                path: info_path.clone().into(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DumpError::proc(pid, &info_path, e)),
        };
        fds.push(FdEntry {
            fd,
            target: link.to_string_lossy().into_owned(),
            info,
        });
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

/// The memory layout fields of `/proc/PID/stat` that `PR_SET_MM_MAP` needs:
/// start_code, end_code, start_stack, start_data, end_data, start_brk,
/// arg_start, arg_end, env_start, env_end.
pub fn parse_stat_mm(text: &str) -> Result<[u64; 10], String> {
    let rest = &text[text.rfind(')').ok_or("no ')' in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3; field n is fields[n - 3].
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .ok_or_else(|| format!("stat has no field {n}"))?
            .parse()
            .map_err(|_| format!("stat field {n} is not a number"))
    };
    Ok([
        field(26)?,
        field(27)?,
        field(28)?,
        field(45)?,
        field(46)?,
        field(47)?,
        field(48)?,
        field(49)?,
        field(50)?,
        field(51)?,
    ])
}

/// File locks of the whole host (`/proc/locks`): the holder's host PID and
/// the line describing the lock (kind, mode, inode, range).
pub fn read_locks() -> Vec<(i32, String)> {
    parse_locks(&fs::read_to_string("/proc/locks").unwrap_or_default())
}

pub fn parse_locks(text: &str) -> Vec<(i32, String)> {
    text.lines()
        .filter(|l| !l.contains("->")) // waiters, not holders
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let pid = f.get(4)?.parse().ok()?;
            Some((
                pid,
                format!("{} {} lock on inode {}", f.get(1)?, f.get(3)?, f.get(5)?),
            ))
        })
        .collect()
}

/// An id mapping of a user namespace as `/proc/PID/uid_map` shows it to
/// the host: (id inside, id outside, count) lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap(pub Vec<(u32, u32, u32)>);

impl IdMap {
    pub fn parse(text: &str) -> Self {
        IdMap(
            text.lines()
                .filter_map(|l| {
                    let v: Vec<u32> = l
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (v.len() == 3).then(|| (v[0], v[1], v[2]))
                })
                .collect(),
        )
    }

    /// `/proc/PID/{uid,gid}_map` of a process.
    pub fn read(pid: i32, file: &str) -> Result<Self, DumpError> {
        let path = format!("/proc/{pid}/{file}");
        fs::read_to_string(&path)
            .map(|t| Self::parse(&t))
            .map_err(|e| DumpError::proc(pid, &path, e))
    }

    /// The id inside the namespace of a host id (the overflow id 65534 when
    /// it is not mapped, as the kernel shows it).
    pub fn to_inside(&self, host: u32) -> u32 {
        self.0
            .iter()
            .find(|(_, outside, count)| host >= *outside && host - outside < *count)
            .map(|(inside, outside, _)| inside + (host - outside))
            .unwrap_or(65534)
    }
}

/// Thread ids of a process (`/proc/PID/task`), sorted.
pub fn read_tids(pid: i32) -> Result<Vec<i32>, DumpError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let mut tids = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| DumpError::proc(pid, &dir, e))? {
        let entry = entry.map_err(|e| DumpError::proc(pid, &dir, e))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// Parses `/proc/PID/timers`: one block per timer.
///
/// ```text
/// ID: 2
/// signal: 37/0000000000001234
/// notify: signal/pid.1
/// ClockID: 1
/// ```
///
/// Returns (id, signo, value, notify, notified host pid, clock) per timer;
/// `notify` carries `libc::SIGEV_THREAD_ID` when the line says `tid`.
pub fn parse_proc_timers(text: &str) -> std::result::Result<Vec<ProcTimer>, String> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let bad = || format!("bad {key} line in timers: {value:?}");
        if key == "ID" {
            out.push(ProcTimer {
                id: value.parse().map_err(|_| bad())?,
                ..ProcTimer::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else {
            return Err(format!("timers: {key} before any ID"));
        };
        match key {
            "signal" => {
                let (sig, val) = value.split_once('/').ok_or_else(bad)?;
                t.signo = sig.parse().map_err(|_| bad())?;
                t.value =
                    u64::from_str_radix(val.trim_start_matches("0x"), 16).map_err(|_| bad())?;
            }
            "notify" => {
                let (kind, target) = value.split_once('/').ok_or_else(bad)?;
                let (who, id) = target.split_once('.').ok_or_else(bad)?;
                t.notify = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                if who == "tid" {
                    t.notify |= libc::SIGEV_THREAD_ID;
                }
                t.target = id.parse().map_err(|_| bad())?;
            }
            "ClockID" => t.clock = value.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(out)
}

/// One block of `/proc/PID/timers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub value: u64,
    pub notify: i32,
    /// The notified process or thread, as a host id.
    pub target: i32,
    pub clock: i32,
}

/// State, parent and exit status of a task from `/proc/PID/stat` (fields
/// 3, 4 and 52: the exit status is in the form `waitpid` reports it).
pub fn parse_stat_exit(text: &str) -> Result<(char, i32, i32), String> {
    let rest = &text[text.rfind(')').ok_or("no ')' in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|f| f.chars().next())
        .ok_or("stat has no state")?;
    let int = |n: usize| -> Result<i32, String> {
        fields
            .get(n - 3)
            .ok_or_else(|| format!("stat has no field {n}"))?
            .parse()
            .map_err(|_| format!("stat field {n} is not a number"))
    };
    Ok((state, int(4)?, int(52)?))
}

/// Zombies (exited, not yet reaped) whose parent is one of `parents`
/// (host PIDs), with their exit status. A zombie has left its cgroup, so
/// only its parent links it to the container.
pub fn zombie_children(parents: &[i32]) -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Ok(('Z', ppid, status)) = parse_stat_exit(&text) {
            if parents.contains(&ppid) {
                out.push((pid, status));
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tredis-server\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t5\t0\t0\nFDSize:\t64\nGroups:\t1 2 \nNStgid:\t4242\t7\nNSpid:\t4242\t7\nNSpgid:\t4200\t1\nNSsid:\t4200\t1\nThreads:\t4\nSigQ:\t0/95547\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\nSigBlk:\t0000000000010000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180004a02\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";

    #[test]
    fn status_fields() {
        let st = parse_status(STATUS).unwrap();
        assert_eq!(st.name, "redis-server");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 4200);
        assert_eq!(st.pid_in_ns(), 7);
        assert_eq!(st.ns_pgid, vec![4200, 1]);
        assert_eq!(st.gid, [0, 5, 0, 0]);
        assert_eq!(st.groups, vec![1, 2]);
        assert_eq!(st.cap_eff, 0x1fffeffffff);
        assert_eq!(st.shd_pnd, 0x100);
        assert_eq!(st.sig_blk, 0x10000);
        assert_eq!(st.threads, 4);
        assert_eq!(st.umask, 0o22);
        assert!(parse_status("Name:\tx\n").is_err());
        assert!(parse_status("Tgid:\tx\n").is_err());
    }

    #[test]
    fn maps_lines() {
        let text = "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n7f1c2a000000-7f1c2a022000 r-xp 00002000 fd:01 1234567                    /usr/lib/x86_64-linux-gnu/libc.so.6\n7ffd1e5f1000-7ffd1e5f3000 r-xp 00000000 00:00 0                          [vdso]\n7f00 rw-s 0 0:0 0\n";
        assert!(parse_maps(text).is_err());
        let maps = parse_maps(&text.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].name, "[heap]");
        assert!(maps[0].write && !maps[0].exec && !maps[0].shared);
        assert_eq!(maps[1].offset, 0x2000);
        assert_eq!((maps[1].dev_major, maps[1].dev_minor), (0xfd, 1));
        assert_eq!(maps[1].inode, 1234567);
        assert_eq!(maps[1].name, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(maps[1].prot(), (libc::PROT_READ | libc::PROT_EXEC) as u32);
        let spaced = parse_maps("1000-2000 rw-s 00000000 00:05 99 /memfd:a b (deleted)").unwrap();
        assert_eq!(spaced[0].name, "/memfd:a b (deleted)");
        assert!(spaced[0].shared);
    }

    #[test]
    fn locks() {
        let l = parse_locks("1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n2: FLOCK  ADVISORY  READ  99 00:2a:77 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 100 00:2a:77 0 EOF\n");
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0],
            (1234, "POSIX WRITE lock on inode 08:01:5678".to_string())
        );
        assert_eq!(l[1].0, 99);
    }

    #[test]
    fn id_maps() {
        let m = IdMap::parse("         0     100000      65536\n");
        assert_eq!(m.to_inside(100000), 0);
        assert_eq!(m.to_inside(101000), 1000);
        assert_eq!(m.to_inside(0), 65534);
        let init = IdMap::parse("         0          0 4294967295\n");
        assert_eq!(init.to_inside(1000), 1000);
    }

    #[test]
    fn fdinfo_fields() {
        let info =
            parse_fdinfo("pos:\t42\nflags:\t02100002\nmnt_id:\t31\nino:\t77\neventfd-count:\t5\n")
                .unwrap();
        assert_eq!(info.pos, 42);
        assert_eq!(info.flags, 0o2100002);
        assert_eq!(info.mnt_id, 31);
        assert_eq!(info.ino, 77);
        assert_eq!(
            info.extra,
            vec![("eventfd-count".to_string(), "5".to_string())]
        );
        assert!(parse_fdinfo("pos:\tx\n").is_err());
    }

    #[test]
    fn proc_timers() {
        let t = parse_proc_timers(
            "ID: 2\nsignal: 37/0000000000001234\nnotify: signal/pid.1\nClockID: 1\nID: 5\nsignal: 14/0000000000000000\nnotify: signal/tid.77\nClockID: 0\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 2,
                signo: 37,
                value: 0x1234,
                notify: libc::SIGEV_SIGNAL,
                target: 1,
                clock: 1
            }
        );
        assert_eq!(t[1].notify, libc::SIGEV_THREAD_ID);
        assert_eq!(t[1].target, 77);
        assert!(parse_proc_timers("signal: 1/0\n").is_err());
        assert!(parse_proc_timers("ID: x\n").is_err());
        assert_eq!(parse_proc_timers("").unwrap(), vec![]);
    }

    #[test]
    fn stat_exit_status() {
        let zombie = "77 (a b) c) Z 1 77 1 0 -1 4228 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 10752\n";
        assert_eq!(parse_stat_exit(zombie).unwrap(), ('Z', 1, 10752));
        assert!(parse_stat_exit("1 (x) S 0").is_err());
    }
}

//! The container's namespace state beyond its processes: its mount tree,
//! its UTS names (time namespaces: src/dump/timens.rs).
//!
//! ```text
//! survey (before the freeze)        /proc/PID1/mountinfo, in order:
//!                                   the start path's own mounts
//!                                   (rootfs::standard_mount_points) are
//!                                   skipped, except /tmp and /dev/shm whose
//!                                   files are kept; every other mount is
//!                                   classified (tmpfs, bind from inside,
//!                                   proc/sysfs/mqueue/devpts instance) or
//!                                   refused, naming its mount point
//! dump (every task stopped)         the same survey again (mounts may have
//!                                   changed before the freeze), each tmpfs
//!                                   archived with tar into mounts/N.tar,
//!                                   Mount records, the Uts record (read
//!                                   from a thread that joined the
//!                                   container's UTS namespace)
//! ```
//!
//! A bind mount is rebuilt from a path inside the container: its source
//! superblock must be the overlay root or a tmpfs seen earlier in the
//! table (whose mount point plus the bind's root inside it names the
//! source). Anything else (a block device, FUSE, a second overlay, a bind of
//! a `/proc` file or of something outside the container) is refused before
//! the freeze. [`crate::restore::mounts`] replays the records.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cr_formats::schema::{ByteString, Mount, MountKind, Propagation, Record, Uts};
use cr_formats::RecordWriter;

use crate::container::rootfs;
use crate::container::upper::{run_tar, TAR_XATTRS};
use crate::dump::procfs::TaskStatus;
use crate::dump::DumpError;
use crate::error::{Error, IoContext, Result};

/// Directory of the tmpfs archives inside an image directory.
pub const MOUNTS_DIR: &str = "mounts";

/// Path of archive `n` inside `image_dir`.
pub fn archive_path(image_dir: &Path, n: u32) -> PathBuf {
    image_dir.join(MOUNTS_DIR).join(format!("{n}.tar"))
}

/// The standard mounts whose files are kept (tmpfs the start path makes).
const KEPT_STANDARD: &[&str] = &["/tmp", "/dev/shm"];

/// Pseudo filesystems a fresh instance of which restore mounts again.
const PSEUDO: &[&str] = &["proc", "sysfs", "mqueue", "devpts"];

/// One line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the superblock.
    pub dev: String,
    /// The path inside the superblock this mount shows.
    pub root: String,
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    /// Optional fields (`shared:N`, `master:N`, `unbindable`).
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Superblock options.
    pub super_options: String,
}

/// Parses `mountinfo` text; paths come back with `\NNN` escapes decoded.
pub fn parse_mountinfo(text: &str) -> std::result::Result<Vec<MountInfo>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| format!("no separator in mountinfo line {line:?}"))?;
        if dash < 6 || fields.len() < dash + 4 {
            return Err(format!("short mountinfo line {line:?}"));
        }
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("bad number {s:?} in mountinfo line {line:?}"))
        };
        out.push(MountInfo {
            id: num(fields[0])?,
            parent: num(fields[1])?,
            dev: fields[2].to_string(),
            root: unescape(fields[3]),
            mount_point: unescape(fields[4]),
            options: fields[5].to_string(),
            optional: fields[6..dash].iter().map(|s| s.to_string()).collect(),
            fstype: fields[dash + 1].to_string(),
            source: unescape(fields[dash + 2]),
            super_options: fields[dash + 3].to_string(),
        });
    }
    Ok(out)
}

/// Decodes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per-mount options as `MS_*` bits.
pub fn mount_flags(options: &str) -> u64 {
    let mut flags = 0u64;
    for opt in options.split(',') {
        flags |= match opt {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "nosymfollow" => libc::MS_NOSYMFOLLOW,
            _ => 0,
        };
    }
    flags
}

/// Superblock options without `rw`/`ro`, and whether `ro` was among them.
fn super_data(options: &str) -> (String, bool) {
    let readonly = options.split(',').any(|o| o == "ro");
    let rest: Vec<&str> = options
        .split(',')
        .filter(|o| *o != "ro" && *o != "rw" && !o.is_empty())
        .collect();
    (rest.join(","), readonly)
}

/// What the dump keeps of the container's mount namespace.
#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    pub mounts: Vec<Mount>,
    /// Archive number and mount point of each tmpfs whose files are kept.
    pub archives: Vec<(u32, String)>,
}

/// Reads PID 1's mount table and classifies every mount; refuses (naming
/// the mount point) what restore cannot rebuild.
pub fn survey(host_pid: i32, status: &TaskStatus) -> std::result::Result<MountPlan, DumpError> {
    let path = format!("/proc/{host_pid}/mountinfo");
    let pid = status.pid_in_ns();
    let text = fs::read_to_string(&path).map_err(|e| DumpError::proc(pid, &path, e))?;
    let table = parse_mountinfo(&text).map_err(|message| DumpError::Parse {
        pid,
        path: path.clone().into(),
        message,
    })?;
    classify(&table, &rootfs::standard_mount_points()).map_err(|what| DumpError::Unsupported {
        pid,
        comm: status.name.clone(),
        what,
    })
}

/// The classification itself, on a parsed table (`standard`: the mount
/// points the start path creates).
pub fn classify(
    table: &[MountInfo],
    standard: &[String],
) -> std::result::Result<MountPlan, String> {
    let mut plan = MountPlan::default();
    let mut seen_standard: Vec<&str> = Vec::new();
    // Superblocks a bind may come from: dev -> (mount point, fstype).
    let mut sources: HashMap<&str, (&str, &str)> = HashMap::new();
    for (index, m) in table.iter().enumerate() {
        let mp = m.mount_point.as_str();
        let is_standard = standard.iter().any(|s| s == mp) && !seen_standard.contains(&mp);
        let covered = table[index + 1..]
            .iter()
            .any(|later| later.mount_point == mp);
        let propagation = propagation(m)?;
        let (data, sb_readonly) = super_data(&m.super_options);
        let record = |kind: MountKind| Mount {
            index: index as u32,
            mount_point: ByteString::from(mp),
            kind,
            flags: mount_flags(&m.options),
            data: ByteString::from(data.as_str()),
            sb_readonly,
            propagation,
        };
        if is_standard {
            seen_standard.push(mp);
            if m.root == "/" {
                sources.entry(m.dev.as_str()).or_insert((mp, &m.fstype));
            }
            if KEPT_STANDARD.contains(&mp) && m.fstype == "tmpfs" {
                if covered {
                    return Err(covered_msg(mp));
                }
                let archive = plan.archives.len() as u32;
                plan.archives.push((archive, mp.to_string()));
                plan.mounts.push(record(MountKind::Standard { archive }));
            }
            continue;
        }
        let refuse =
            |why: String| format!("the mount at {mp} ({} from {}) {why}", m.fstype, m.source);
        if m.root.ends_with("//deleted") || m.root.ends_with(" (deleted)") {
            return Err(refuse("is a bind mount of a deleted file".into()));
        }
        if let Some((src_mp, src_fs)) = sources.get(m.dev.as_str()) {
            // The same superblock as an earlier mount: a bind mount.
            if m.root != "/" && *src_fs != "overlay" && *src_fs != "tmpfs" {
                return Err(refuse(format!(
                    "is a bind mount of {} inside a {src_fs} filesystem, which cr cannot rebuild",
                    m.root
                )));
            }
            let source = join_inside(src_mp, &m.root);
            plan.mounts.push(record(MountKind::Bind {
                source: ByteString::from(source.as_str()),
            }));
            continue;
        }
        if m.root != "/" {
            return Err(refuse(format!(
                "is a bind mount of {} from a filesystem that is not mounted in the container (outside it), which cr cannot rebuild",
                m.root
            )));
        }
        let kind = if m.fstype == "tmpfs" {
            if covered {
                return Err(covered_msg(mp));
            }
            let archive = plan.archives.len() as u32;
            plan.archives.push((archive, mp.to_string()));
            MountKind::Tmpfs { archive }
        } else if PSEUDO.contains(&m.fstype.as_str()) {
            MountKind::Pseudo {
                fstype: ByteString::from(m.fstype.as_str()),
            }
        } else {
            return Err(refuse(
                "cannot be rebuilt: cr moves tmpfs, proc, sysfs, mqueue and devpts mounts and bind mounts from inside the container".into(),
            ));
        };
        sources.entry(m.dev.as_str()).or_insert((mp, &m.fstype));
        plan.mounts.push(record(kind));
    }
    Ok(plan)
}

fn covered_msg(mp: &str) -> String {
    format!("the tmpfs at {mp} is covered by a later mount at the same place, so its files cannot be read")
}

fn propagation(m: &MountInfo) -> std::result::Result<Propagation, String> {
    let mut p = Propagation::Private;
    for f in &m.optional {
        if f.starts_with("shared:") {
            p = Propagation::Shared;
        } else if f.starts_with("master:") {
            return Err(format!(
                "the mount at {} is a slave ({f}) of another mount, a propagation cr cannot rebuild",
                m.mount_point
            ));
        } else if f == "unbindable" {
            p = Propagation::Unbindable;
        }
    }
    Ok(p)
}

/// `root` (a path inside a superblock) under the mount point `mp`.
fn join_inside(mp: &str, root: &str) -> String {
    let root = root.trim_start_matches('/');
    match (mp, root) {
        (_, "") => mp.to_string(),
        ("/", _) => format!("/{root}"),
        _ => format!("{mp}/{root}"),
    }
}

/// Archives the kept tmpfs mounts and writes the Mount and Uts records.
/// Runs while every task is stopped.
pub fn dump(
    host_pid: i32,
    plan: &MountPlan,
    image_dir: &Path,
    records: &mut RecordWriter<impl std::io::Write>,
) -> Result<()> {
    if !plan.archives.is_empty() {
        let dir = image_dir.join(MOUNTS_DIR);
        fs::create_dir_all(&dir).ctx("creating", &dir)?;
    }
    let userns = container_userns(host_pid)?;
    for (n, mp) in &plan.archives {
        let from = PathBuf::from(format!("/proc/{host_pid}/root{mp}"));
        let to = archive_path(image_dir, *n);
        let out = fs::File::create(&to).ctx("creating", &to)?;
        let mut cmd = Command::new("tar");
        cmd.args(TAR_XATTRS)
            .arg("--sparse")
            .arg("--one-file-system")
            .arg("-C")
            .arg(&from)
            .arg("-cf")
            .arg("-")
            .arg(".")
            .stdout(out);
        if let Some(ns) = &userns {
            // Owners are archived as the container sees them, so that its
            // PID 1 (inside the namespace) can give them back on restore.
            let fd = ns.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and
            // only makes async-signal-safe system calls (setns, setgroups,
            // setresgid, setresuid) on an fd that stays open until then.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWUSER) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Become the namespace's root, as its own processes
                    // see it (setgroups may be denied there: harmless).
                    libc::setgroups(0, std::ptr::null());
                    if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        run_tar(&mut cmd, &format!("archiving the tmpfs at {mp}"), &from)?;
    }
    for m in &plan.mounts {
        records.write(&Record::Mount(m.clone()))?;
    }
    records.write(&Record::Uts(read_uts(host_pid)?))?;
    Ok(())
}

/// The user namespace of `host_pid` when it is not cr's own.
fn container_userns(host_pid: i32) -> Result<Option<fs::File>> {
    let path = format!("/proc/{host_pid}/ns/user");
    let theirs = fs::metadata(&path).ctx("reading", &path)?.ino();
    let ours = fs::metadata("/proc/self/ns/user")
        .ctx("reading", "/proc/self/ns/user")?
        .ino();
    if theirs == ours {
        return Ok(None);
    }
    Ok(Some(fs::File::open(&path).ctx("opening", &path)?))
}

/// The hostname and domain name of `host_pid`'s UTS namespace, read by a
/// thread that joins it (UTS is per thread: the caller stays where it is).
pub fn read_uts(host_pid: i32) -> Result<Uts> {
    let ns_path = format!("/proc/{host_pid}/ns/uts");
    let ns = fs::File::open(&ns_path).ctx("opening", &ns_path)?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Uts> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUTS).map_err(|e| {
                Error::sys(
                    format!("joining the UTS namespace of process {host_pid}"),
                    e,
                )
            })?;
            let read = |name: &str| -> Result<ByteString> {
                let path = format!("/proc/sys/kernel/{name}");
                let text = fs::read_to_string(&path).ctx("reading", &path)?;
                Ok(ByteString::from(text.trim_end_matches('\n')))
            };
            Ok(Uts {
                hostname: read("hostname")?,
                domainname: read("domainname")?,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("the UTS reader thread panicked".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "\
100 90 0:50 / / rw,relatime - overlay overlay rw,lowerdir=a,upperdir=b,workdir=c
101 100 0:51 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
102 100 0:52 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
103 100 0:53 / /dev rw,nosuid,noexec - tmpfs tmpfs rw,size=65536k,mode=755
104 103 0:54 / /dev/shm rw,nosuid,nodev - tmpfs shm rw,size=65536k
105 100 0:55 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,mode=1777
";

    fn standard() -> Vec<String> {
        ["/", "/proc", "/sys", "/dev", "/dev/shm", "/tmp"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn the_start_path_keeps_only_tmp_and_shm() {
        let plan = classify(&parse_mountinfo(START).unwrap(), &standard()).unwrap();
        assert_eq!(
            plan.archives,
            vec![(0, "/dev/shm".into()), (1, "/tmp".into())]
        );
        assert_eq!(plan.mounts.len(), 2);
    }

    #[test]
    fn added_mounts_are_classified() {
        let text = format!(
            "{START}\
106 100 0:60 / /mnt/scratch rw,relatime shared:7 - tmpfs tmpfs rw,size=1024k
107 100 0:50 /srv/a /srv/b ro,relatime - overlay overlay rw,lowerdir=a
108 100 0:61 / /mnt/p rw - proc proc rw
109 100 0:60 /sub /mnt/sub\\040x rw - tmpfs tmpfs rw,size=1024k
"
        );
        let plan = classify(&parse_mountinfo(&text).unwrap(), &standard()).unwrap();
        let m = &plan.mounts[2];
        assert_eq!(m.kind, MountKind::Tmpfs { archive: 2 });
        assert_eq!(m.data.to_string(), "size=1024k");
        assert_eq!(m.propagation, Propagation::Shared);
        assert_eq!(
            plan.mounts[3].kind,
            MountKind::Bind {
                source: "/srv/a".into()
            }
        );
        assert_eq!(plan.mounts[3].flags & libc::MS_RDONLY, libc::MS_RDONLY);
        assert!(matches!(plan.mounts[4].kind, MountKind::Pseudo { .. }));
        assert_eq!(plan.mounts[5].mount_point.to_string(), "/mnt/sub x");
        assert_eq!(
            plan.mounts[5].kind,
            MountKind::Bind {
                source: "/mnt/scratch/sub".into()
            }
        );
    }

    #[test]
    fn what_cannot_move_is_refused_by_mount_point() {
        for (line, word) in [
            (
                "106 100 7:0 / /mnt/disk rw - ext4 /dev/loop0 rw",
                "/mnt/disk",
            ),
            ("106 100 0:51 /1/status /x rw - proc proc rw", "/x"),
            ("106 100 0:4 net:[4026] /y rw - nsfs nsfs rw", "/y"),
            ("106 100 0:70 / /z rw - fuse.sshfs host:/ rw", "/z"),
            ("106 100 0:70 / /o rw - overlay overlay rw", "/o"),
        ] {
            let text = format!("{START}{line}\n");
            let err = classify(&parse_mountinfo(&text).unwrap(), &standard()).unwrap_err();
            assert!(err.contains(word), "{err}");
        }
    }
}

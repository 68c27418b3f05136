//! cgroups for containers: layout detection (pure cgroup2, hybrid, v1),
//! limits, membership, the freezer, killing, and removal.
//!
//! Data flow:
//!
//! ```text
//!  /proc/self/mountinfo --CgroupLayout::detect--> CgroupLayout
//!        (which v1 controller lives at which mount; where cgroup2 is)
//!  CgroupLayout + parent + name --ContainerCgroup::new--> ContainerCgroup
//!        (pure: `<mount>/<parent>/<name>` in every hierarchy used)
//!  ContainerCgroup::create(&Limits)   mkdir + limit files (+ v1 device whitelist)
//!  ContainerCgroup::add_pid(pid)      pid -> cgroup.procs of every hierarchy
//!  freeze / thaw / freezer_state      v1 freezer.state, or v2 cgroup.freeze + cgroup.events
//!  pids / kill_all / remove           tear-down; the shared parent stays
//! ```
//!
//! Layouts:
//! - **cgroup2** (`/sys/fs/cgroup` is cgroup2): one directory under the
//!   cgroup2 mount; memory/cpu/pids are enabled in `cgroup.subtree_control`
//!   of every level down to the parent.
//! - **v1**: one directory per hierarchy among memory, cpu, cpuacct, pids,
//!   freezer and devices (several controllers may share one mount, e.g.
//!   `cpu,cpuacct`; each mount is used once).
//! - **hybrid**: v1 as above, plus the same `<parent>/<name>` in the cgroup2
//!   mount (e.g. `/sys/fs/cgroup/unified`), which holds the tasks too and
//!   gives `cgroup.kill`. That directory is best-effort: when the cgroup2
//!   mount cannot be used, the container lives in v1 only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::config::Limits;

/// CFS period used for CPU limits, in microseconds.
pub const CFS_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
pub const CFS_MIN_QUOTA_US: u64 = 1_000;
/// How long `freeze` and `thaw` wait for the freezer to settle.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `remove` retries `rmdir` on EBUSY while tasks are still exiting.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `kill_all` waits for the cgroup to become empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// v1 controllers a container gets a directory in (cpuset, blkio and named
/// hierarchies such as `name=systemd` are not used).
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];
/// v1 controllers that must be mounted.
pub const V1_REQUIRED: &[&str] = &["memory", "cpu", "pids", "freezer"];
/// cgroup2 controllers that must be available (`cgroup.controllers`) on a
/// pure cgroup2 host.
pub const V2_REQUIRED: &[&str] = &["memory", "cpu", "pids"];
/// The v1 device whitelist, written to `devices.allow` after `a` went to
/// `devices.deny`: mknod of anything; null, zero, full, random, urandom,
/// tty, console, ptmx, the pty slaves, fuse and tun.
pub const V1_DEVICE_ALLOW: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:229 rwm",
    "c 10:200 rwm",
];

/// Names the kernel uses for v1 controllers in a cgroup mount's super
/// options; anything else there (`rw`, `noprefix`, `name=...`,
/// `release_agent=...`, `clone_children`, ...) is not a controller.
const KNOWN_V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "io",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// v1 `memory.limit_in_bytes` at or above this means "no limit"
/// (the kernel reports `PAGE_COUNTER_MAX * PAGE_SIZE`).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_0000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("/proc/self/mountinfo line {line}: {message}")]
    Mountinfo { line: usize, message: String },
    #[error("cgroup file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid cgroup {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("invalid cgroup limit: {0}")]
    InvalidLimit(String),
    #[error("cgroup {} already exists (a container with this name is running, or a stale cgroup was left behind)", path.display())]
    Exists { path: PathBuf },
    #[error("cgroup {}: {what} did not finish within {:.1}s: {detail}", path.display(), waited.as_secs_f64())]
    Timeout {
        what: &'static str,
        path: PathBuf,
        waited: Duration,
        detail: String,
    },
    #[error("cgroup {}: {what}: {source}", path.display())]
    Sys {
        what: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl CgroupError {
    fn io(what: impl Into<String>, path: &Path, source: io::Error) -> Self {
        CgroupError::Io {
            what: what.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// Whether tasks run or are stopped by the freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

impl fmt::Display for FreezerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FreezerState::Thawed => "THAWED",
            FreezerState::Freezing => "FREEZING",
            FreezerState::Frozen => "FROZEN",
        })
    }
}

/// Which of the three layouts a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    V2,
    Hybrid,
    V1,
}

/// Where each v1 controller is mounted (controllers sharing a hierarchy,
/// like `cpu,cpuacct`, map to the same mount point).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Mounts {
    controllers: BTreeMap<String, PathBuf>,
}

impl V1Mounts {
    /// The mount point of `controller`'s hierarchy.
    pub fn mount(&self, controller: &str) -> Option<&Path> {
        self.controllers.get(controller).map(PathBuf::as_path)
    }

    /// Every mounted controller and its mount point, sorted by controller.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.controllers
            .iter()
            .map(|(c, p)| (c.as_str(), p.as_path()))
    }

    /// The controllers bound to the hierarchy mounted at `mount`.
    pub fn controllers_at(&self, mount: &Path) -> Vec<&str> {
        self.iter()
            .filter(|(_, m)| *m == mount)
            .map(|(c, _)| c)
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.controllers.is_empty()
    }
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup2: everything under one mount (usually `/sys/fs/cgroup`).
    V2 { root: PathBuf },
    /// v1 controller hierarchies plus a cgroup2 mount (usually
    /// `/sys/fs/cgroup/unified`) that holds no resource controllers we use.
    Hybrid { v1: V1Mounts, unified: PathBuf },
    /// v1 controller hierarchies only.
    V1 { v1: V1Mounts },
}

/// One line of mountinfo, the parts we need.
#[derive(Debug)]
struct MountEntry {
    id: u64,
    parent: u64,
    mount_point: PathBuf,
    fstype: String,
    super_opts: String,
}

impl CgroupLayout {
    /// Reads /proc/self/mountinfo and finds the layout; on a pure cgroup2
    /// host also checks that memory, cpu and pids are available.
    pub fn detect() -> Result<Self> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|e| CgroupError::io("reading", path, e))?;
        let layout = Self::from_mountinfo(&text)?;
        layout.check_controllers()?;
        Ok(layout)
    }

    /// Finds the layout from the text of a mountinfo file (pure parsing).
    /// Only visible mounts count: a mount hidden by another one on top of
    /// it (or of one of its ancestors) is ignored. When a hierarchy is
    /// mounted more than once, a mount under `/sys/fs/cgroup` wins.
    pub fn from_mountinfo(text: &str) -> Result<Self> {
        let entries = parse_mountinfo(text)?;
        let visible = visible_mounts(&entries);
        let under_sys = |p: &Path| p.starts_with("/sys/fs/cgroup");

        let mut v1 = V1Mounts::default();
        let mut v2: Vec<&Path> = Vec::new();
        for e in entries.iter().filter(|e| visible.contains(&e.id)) {
            match e.fstype.as_str() {
                "cgroup" => {
                    for c in e
                        .super_opts
                        .split(',')
                        .filter(|o| KNOWN_V1_CONTROLLERS.contains(o))
                    {
                        let better = match v1.controllers.get(c) {
                            None => true,
                            Some(old) => !under_sys(old) && under_sys(&e.mount_point),
                        };
                        if better {
                            v1.controllers.insert(c.to_string(), e.mount_point.clone());
                        }
                    }
                }
                "cgroup2" => v2.push(&e.mount_point),
                _ => {}
            }
        }
        let rank = |p: &Path| {
            if p == Path::new("/sys/fs/cgroup") {
                0
            } else if p == Path::new("/sys/fs/cgroup/unified") {
                1
            } else if under_sys(p) {
                2
            } else {
                3
            }
        };
        let unified = v2.iter().min_by_key(|p| rank(p)).map(|p| p.to_path_buf());

        let missing: Vec<&str> = V1_REQUIRED
            .iter()
            .copied()
            .filter(|c| v1.mount(c).is_none())
            .collect();
        let found = || {
            let names: Vec<&str> = v1.iter().map(|(c, _)| c).collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        if missing.is_empty() {
            return Ok(match unified {
                Some(unified) => CgroupLayout::Hybrid { v1, unified },
                None => CgroupLayout::V1 { v1 },
            });
        }
        if missing.len() == V1_REQUIRED.len() {
            // No required controller is bound to v1: stray v1 hierarchies
            // (net_cls, name=systemd, ...) do not make a host v1.
            if let Some(root) = unified {
                return Ok(CgroupLayout::V2 { root });
            }
            if v1.is_empty() {
                return Err(CgroupError::Unsupported(
                    "no cgroup filesystem is mounted (neither cgroup2 nor cgroup v1 controllers in /proc/self/mountinfo); `ip netns exec` mounts a fresh /sys without them: enter a network namespace with `nsenter --net=/run/netns/NAME` instead".into(),
                ));
            }
        }
        Err(CgroupError::Unsupported(format!(
            "cgroup v1 is in use but the {} controller{} {} not mounted (v1 controllers found: {}); cr needs {}",
            quoted_list(&missing),
            if missing.len() == 1 { "" } else { "s" },
            if missing.len() == 1 { "is" } else { "are" },
            found(),
            V1_REQUIRED.join(", "),
        )))
    }

    /// Checks the kernel side of the layout: on pure cgroup2, that the
    /// memory, cpu and pids controllers are in the root's `cgroup.controllers`.
    pub fn check_controllers(&self) -> Result<()> {
        if let CgroupLayout::V2 { root } = self {
            let path = root.join("cgroup.controllers");
            check_v2_controllers(&path, &read_string(&path)?)?;
        }
        Ok(())
    }

    pub fn kind(&self) -> LayoutKind {
        match self {
            CgroupLayout::V2 { .. } => LayoutKind::V2,
            CgroupLayout::Hybrid { .. } => LayoutKind::Hybrid,
            CgroupLayout::V1 { .. } => LayoutKind::V1,
        }
    }

    /// The v1 controller mounts (none on pure cgroup2).
    pub fn v1(&self) -> Option<&V1Mounts> {
        match self {
            CgroupLayout::V2 { .. } => None,
            CgroupLayout::Hybrid { v1, .. } | CgroupLayout::V1 { v1 } => Some(v1),
        }
    }

    /// The cgroup2 mount (the root on pure cgroup2, the unified mount on
    /// hybrid hosts).
    pub fn cgroup2_mount(&self) -> Option<&Path> {
        match self {
            CgroupLayout::V2 { root } => Some(root),
            CgroupLayout::Hybrid { unified, .. } => Some(unified),
            CgroupLayout::V1 { .. } => None,
        }
    }
}

/// `'a'`, `'a' and 'b'`, `'a', 'b' and 'c'`.
fn quoted_list(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|c| format!("'{c}'")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => q.join(""),
    }
}

/// Checks that `text` (a `cgroup.controllers` read from `path`) lists every
/// controller of [`V2_REQUIRED`].
fn check_v2_controllers(path: &Path, text: &str) -> Result<()> {
    let available: Vec<&str> = text.split_whitespace().collect();
    let missing: Vec<&str> = V2_REQUIRED
        .iter()
        .copied()
        .filter(|c| !available.contains(c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CgroupError::Unsupported(format!(
        "the cgroup2 controller{} {} {} not available in {} (it lists: {}); cr needs {}",
        if missing.len() == 1 { "" } else { "s" },
        quoted_list(&missing),
        if missing.len() == 1 { "is" } else { "are" },
        path.display(),
        if available.is_empty() {
            "nothing".to_string()
        } else {
            available.join(" ")
        },
        V2_REQUIRED.join(", "),
    )))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: &str| CgroupError::Mountinfo {
            line: n + 1,
            message: format!("{message}: {line:?}"),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        // id parent maj:min root mount-point mount-options [optional...] - fstype source super-options
        let sep = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .ok_or_else(|| bad("no ' - ' separator"))?;
        if fields.len() < sep + 3 {
            return Err(bad("too few fields after ' - '"));
        }
        let id = fields[0].parse().map_err(|_| bad("bad mount id"))?;
        let parent = fields[1].parse().map_err(|_| bad("bad parent id"))?;
        entries.push(MountEntry {
            id,
            parent,
            mount_point: unescape_mount_path(fields[4]),
            fstype: fields[sep + 1].to_string(),
            super_opts: fields[sep + 3].to_string(),
        });
    }
    Ok(entries)
}

/// Ids of the mounts that are visible: not covered by another mount on the
/// same mount point (a child of it there), and not below an ancestor that
/// is covered by some mount other than the one on the path to it.
fn visible_mounts(entries: &[MountEntry]) -> HashSet<u64> {
    let by_id: HashMap<u64, &MountEntry> = entries.iter().map(|e| (e.id, e)).collect();
    // Covered mount id -> the mount on top of it.
    let covered_by: HashMap<u64, u64> = entries
        .iter()
        .filter_map(|e| {
            let p = by_id.get(&e.parent)?;
            (p.mount_point == e.mount_point && p.id != e.id).then_some((p.id, e.id))
        })
        .collect();
    let mut visible = HashSet::new();
    for e in entries {
        if covered_by.contains_key(&e.id) {
            continue;
        }
        let mut cur = e;
        let mut ok = true;
        // Bounded walk up the tree (a malformed file could have a cycle).
        for _ in 0..=entries.len() {
            match by_id.get(&cur.parent) {
                Some(p) if p.id != cur.id => {
                    if covered_by.get(&p.id).is_some_and(|&top| top != cur.id) {
                        ok = false;
                        break;
                    }
                    cur = p;
                }
                _ => break,
            }
        }
        if ok {
            visible.insert(e.id);
        }
    }
    visible
}

/// Which cgroup version a hierarchy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One hierarchy the container has a directory in.
#[derive(Debug, Clone)]
struct Hierarchy {
    version: Version,
    mount: PathBuf,
    /// v1 controllers bound to this hierarchy (empty for cgroup2).
    controllers: Vec<String>,
    dir: PathBuf,
    /// The hybrid cgroup2 directory: used when it exists, skipped when not.
    optional: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    fn usable(&self) -> bool {
        !self.optional || self.dir.is_dir()
    }
}

/// One container's cgroup(s): `<parent>/<name>` in each hierarchy used.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    kind: LayoutKind,
    parent: Vec<String>,
    name: String,
    /// Why `parent` or `name` cannot be used, if so; checked by every
    /// operation that touches the kernel.
    invalid: Option<(&'static str, String, &'static str)>,
    hierarchies: Vec<Hierarchy>,
}

fn check_component(c: &str) -> Option<&'static str> {
    if c.is_empty() {
        Some("empty path component")
    } else if c == "." || c == ".." {
        Some("'.' and '..' are not allowed")
    } else if c.contains('/') {
        Some("must not contain '/'")
    } else if c.contains('\0') || c.contains('\n') {
        Some("must not contain NUL or newline")
    } else {
        None
    }
}

impl ContainerCgroup {
    /// Computes the container's directories: `<mount>/<parent>/<name>` in
    /// every hierarchy used. `parent` may have several `/`-separated levels
    /// (or be empty). Pure: nothing is touched; bad names are reported by
    /// the first operation.
    pub fn new(layout: &CgroupLayout, parent: &str, name: &str) -> Self {
        let parent_parts: Vec<String> = parent
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let invalid = parent_parts
            .iter()
            .find_map(|p| check_component(p).map(|why| ("parent", parent.to_string(), why)))
            .or_else(|| check_component(name).map(|why| ("name", name.to_string(), why)));

        let rel: PathBuf = parent_parts
            .iter()
            .chain(std::iter::once(&name.to_string()))
            .collect();
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        if let Some(v1) = layout.v1() {
            for c in V1_CONTROLLERS {
                let Some(mount) = v1.mount(c) else { continue };
                if hierarchies.iter().any(|h| h.mount == mount) {
                    continue;
                }
                hierarchies.push(Hierarchy {
                    version: Version::V1,
                    mount: mount.to_path_buf(),
                    controllers: v1
                        .controllers_at(mount)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    dir: mount.join(&rel),
                    optional: false,
                });
            }
        }
        if let Some(mount) = layout.cgroup2_mount() {
            hierarchies.push(Hierarchy {
                version: Version::V2,
                mount: mount.to_path_buf(),
                controllers: Vec::new(),
                dir: mount.join(&rel),
                optional: layout.kind() == LayoutKind::Hybrid,
            });
        }
        ContainerCgroup {
            kind: layout.kind(),
            parent: parent_parts,
            name: name.to_string(),
            invalid,
            hierarchies,
        }
    }

    fn check(&self) -> Result<()> {
        match &self.invalid {
            Some((what, value, why)) => Err(CgroupError::InvalidName {
                what,
                value: value.clone(),
                why,
            }),
            None => Ok(()),
        }
    }

    pub fn kind(&self) -> LayoutKind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's directory in every hierarchy (for diagnostics).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir.clone()).collect()
    }

    /// The shared parent's directory in every hierarchy.
    pub fn parent_paths(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .filter_map(|h| h.dir.parent().map(Path::to_path_buf))
            .collect()
    }

    /// The container's cgroup2 directory (pure cgroup2, or the hybrid
    /// unified one), if the layout has one.
    pub fn cgroup2_path(&self) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.version == Version::V2)
            .map(|h| h.dir.as_path())
    }

    /// The directory whose freezer [`Self::freeze`] uses and whose
    /// `cgroup.procs` (with its child cgroups) [`Self::pids`] reads: the v1
    /// freezer hierarchy, or the cgroup2 directory on pure cgroup2.
    pub fn freezer_path(&self) -> Option<&Path> {
        self.freezer().ok().map(|h| h.dir.as_path())
    }

    /// The directory that holds `controller` (cgroup2 on pure cgroup2).
    fn controller(&self, controller: &str) -> Result<&Hierarchy> {
        let found = match self.kind {
            LayoutKind::V2 => self.hierarchies.iter().find(|h| h.version == Version::V2),
            _ => self
                .hierarchies
                .iter()
                .find(|h| h.version == Version::V1 && h.has(controller)),
        };
        found.ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "cgroup {}: the '{controller}' controller is not mounted on this host",
                self.name
            ))
        })
    }

    fn v1_controller(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == Version::V1 && h.has(controller))
    }

    /// Creates the cgroup(s) and applies limits (and the device whitelist on
    /// v1). The parent may already exist (it is shared); the container's own
    /// directory must not. On failure everything created here is removed.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        self.check()?;
        let cpu_quota = match limits.cpus {
            Some(c) if !c.is_finite() || c <= 0.0 => {
                return Err(CgroupError::InvalidLimit(format!(
                    "cpus must be a positive number, not {c}"
                )))
            }
            Some(c) => Some(((c * CFS_PERIOD_US as f64).round() as u64).max(CFS_MIN_QUOTA_US)),
            None => None,
        };
        let mut created: Vec<PathBuf> = Vec::new();
        let result = self.create_inner(limits, cpu_quota, &mut created);
        if result.is_err() {
            for dir in created.iter().rev() {
                // Best effort: a shared parent someone else now uses stays.
                let _ = fs::remove_dir(dir);
            }
        }
        result
    }

    fn create_inner(
        &self,
        limits: &Limits,
        cpu_quota: Option<u64>,
        created: &mut Vec<PathBuf>,
    ) -> Result<()> {
        for h in &self.hierarchies {
            match self.make_dirs(h, created) {
                Ok(()) => {}
                Err(CgroupError::Io { source, .. })
                    if h.optional
                        && matches!(
                            source.raw_os_error(),
                            Some(libc::ENOENT | libc::EROFS | libc::EACCES | libc::EPERM)
                        ) =>
                {
                    // Hybrid cgroup2 directory: absent or unusable mount is fine.
                }
                Err(e) => return Err(e),
            }
        }
        match self.kind {
            LayoutKind::V2 => self.apply_v2(limits, cpu_quota),
            _ => self.apply_v1(limits, cpu_quota),
        }
    }

    /// Creates `<mount>/<parent...>/<name>` in one hierarchy. The parent
    /// levels may exist or be created (or removed) concurrently by others;
    /// the container's directory must be new.
    fn make_dirs(&self, h: &Hierarchy, created: &mut Vec<PathBuf>) -> Result<()> {
        if !h.mount.is_dir() {
            return Err(CgroupError::io(
                "using mount",
                &h.mount,
                io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cur = h.mount.clone();
            let mut vanished = false;
            for (level, part) in self.parent.iter().enumerate() {
                if h.version == Version::V2 {
                    // Controllers must be enabled in the level above before
                    // they show up in this one.
                    enable_v2_controllers(&cur)?;
                }
                cur.push(part);
                match fs::create_dir(&cur) {
                    Ok(()) => {
                        created.push(cur.clone());
                        if h.has("cpuset") {
                            init_cpuset(&cur)?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound && level > 0 && attempt < 5 => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(CgroupError::io("creating directory", &cur, e)),
                }
            }
            if vanished {
                continue; // a parent level vanished under us: start again
            }
            if h.version == Version::V2 {
                enable_v2_controllers(&cur)?;
            }
            match fs::create_dir(&h.dir) {
                Ok(()) => {
                    created.push(h.dir.clone());
                    if h.has("cpuset") {
                        init_cpuset(&h.dir)?;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists {
                        path: h.dir.clone(),
                    })
                }
                // Someone removed the empty shared parent between our mkdirs.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => continue,
                Err(e) => return Err(CgroupError::io("creating directory", &h.dir, e)),
            }
        }
    }

    fn apply_v1(&self, limits: &Limits, cpu_quota: Option<u64>) -> Result<()> {
        if let Some(bytes) = limits.memory {
            let h = self.controller("memory")?;
            write_file(&h.dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            let memsw = h.dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                // Memory + swap = memory: no swap beyond the limit.
                write_file(&memsw, &bytes.to_string())?;
            }
        }
        if let Some(quota) = cpu_quota {
            let h = self.controller("cpu")?;
            write_file(&h.dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            write_file(&h.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(n) = limits.pids {
            let h = self.controller("pids")?;
            write_file(&h.dir.join("pids.max"), &n.to_string())?;
        }
        if let Some(h) = self.v1_controller("devices") {
            write_file(&h.dir.join("devices.deny"), "a")?;
            let allow = h.dir.join("devices.allow");
            for rule in V1_DEVICE_ALLOW {
                write_file(&allow, rule)?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, limits: &Limits, cpu_quota: Option<u64>) -> Result<()> {
        let h = self.controller("memory")?;
        if let Some(bytes) = limits.memory {
            write_file(&h.dir.join("memory.max"), &bytes.to_string())?;
            let swap = h.dir.join("memory.swap.max");
            if swap.exists() {
                // Like v1's memsw limit: no swap beyond the memory limit.
                write_file(&swap, "0")?;
            }
        }
        if let Some(quota) = cpu_quota {
            write_file(&h.dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
        }
        if let Some(n) = limits.pids {
            write_file(&h.dir.join("pids.max"), &n.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` (0 = the calling process) into every hierarchy.
    pub fn add_pid(&self, pid: Pid) -> Result<()> {
        self.check()?;
        let value = pid.as_raw().to_string();
        for h in self.hierarchies.iter().filter(|h| h.usable()) {
            write_file(&h.dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    fn freezer(&self) -> Result<&Hierarchy> {
        self.controller("freezer")
    }

    /// Freezes every task and waits (up to [`FREEZE_TIMEOUT`]) until the
    /// kernel reports the cgroup frozen. On timeout the cgroup is thawed
    /// again and an error names it.
    pub fn freeze(&self) -> Result<()> {
        self.check()?;
        let h = self.freezer()?;
        match h.version {
            Version::V1 => {
                let state = h.dir.join("freezer.state");
                write_file(&state, "FROZEN")?;
                let mut polls = 0u32;
                let mut last = String::new();
                let done = wait_for(FREEZE_TIMEOUT, || {
                    last = read_string(&state)?.trim().to_string();
                    polls += 1;
                    if last != "FROZEN" && polls % 20 == 0 {
                        // Re-asserting FROZEN makes the kernel retry tasks
                        // that were busy the first time.
                        write_file(&state, "FROZEN")?;
                    }
                    Ok(last == "FROZEN")
                })?;
                if !done {
                    let _ = write_file(&state, "THAWED");
                    return Err(CgroupError::Timeout {
                        what: "freezing",
                        path: h.dir.clone(),
                        waited: FREEZE_TIMEOUT,
                        detail: format!("freezer.state stayed {last}; thawed it again"),
                    });
                }
            }
            Version::V2 => {
                write_file(&h.dir.join("cgroup.freeze"), "1")?;
                let events = h.dir.join("cgroup.events");
                let done = wait_for(FREEZE_TIMEOUT, || {
                    Ok(read_keyed(&events, "frozen")? == Some(1))
                })?;
                if !done {
                    let _ = write_file(&h.dir.join("cgroup.freeze"), "0");
                    return Err(CgroupError::Timeout {
                        what: "freezing",
                        path: h.dir.clone(),
                        waited: FREEZE_TIMEOUT,
                        detail: "cgroup.events never showed 'frozen 1'; thawed it again".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Thaws the cgroup and waits (up to [`FREEZE_TIMEOUT`]) until the
    /// kernel reports it running.
    pub fn thaw(&self) -> Result<()> {
        self.check()?;
        let h = self.freezer()?;
        self.request_thaw(h)?;
        let done = match h.version {
            Version::V1 => {
                let state = h.dir.join("freezer.state");
                wait_for(FREEZE_TIMEOUT, || {
                    Ok(read_string(&state)?.trim() == "THAWED")
                })?
            }
            Version::V2 => {
                let events = h.dir.join("cgroup.events");
                wait_for(FREEZE_TIMEOUT, || {
                    Ok(read_keyed(&events, "frozen")? == Some(0))
                })?
            }
        };
        if !done {
            return Err(CgroupError::Timeout {
                what: "thawing",
                path: h.dir.clone(),
                waited: FREEZE_TIMEOUT,
                detail: "still frozen (is a parent cgroup frozen?)".into(),
            });
        }
        Ok(())
    }

    fn request_thaw(&self, h: &Hierarchy) -> Result<()> {
        match h.version {
            Version::V1 => write_file(&h.dir.join("freezer.state"), "THAWED"),
            Version::V2 => write_file(&h.dir.join("cgroup.freeze"), "0"),
        }
    }

    /// The freezer state: v1 `freezer.state`; v2 `frozen` in cgroup.events
    /// (Frozen), else `cgroup.freeze` = 1 (Freezing), else Thawed.
    pub fn freezer_state(&self) -> Result<FreezerState> {
        self.check()?;
        let h = self.freezer()?;
        match h.version {
            Version::V1 => {
                let path = h.dir.join("freezer.state");
                let s = read_string(&path)?;
                match s.trim() {
                    "THAWED" => Ok(FreezerState::Thawed),
                    "FREEZING" => Ok(FreezerState::Freezing),
                    "FROZEN" => Ok(FreezerState::Frozen),
                    other => Err(CgroupError::Parse {
                        path,
                        message: format!("unknown freezer state {other:?}"),
                    }),
                }
            }
            Version::V2 => {
                if read_keyed(&h.dir.join("cgroup.events"), "frozen")? == Some(1) {
                    return Ok(FreezerState::Frozen);
                }
                if read_u64(&h.dir.join("cgroup.freeze"))? == 1 {
                    Ok(FreezerState::Freezing)
                } else {
                    Ok(FreezerState::Thawed)
                }
            }
        }
    }

    /// Every process in the container's cgroup and its child cgroups
    /// (v1: the freezer hierarchy; cgroup2: the cgroup), sorted. Empty if
    /// the cgroup does not exist.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        self.check()?;
        let h = self.freezer()?;
        let mut dirs = Vec::new();
        collect_dirs(&h.dir, &mut dirs)?;
        let mut pids = BTreeSet::new();
        for dir in &dirs {
            let path = dir.join("cgroup.procs");
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                // A cgroup removed while we walk (its directory gone, or
                // its files answering ENODEV while the removal completes):
                // it holds no process.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENODEV) =>
                {
                    continue
                }
                Err(e) => return Err(CgroupError::io("reading", &path, e)),
            };
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let pid: i32 = line.parse().map_err(|_| CgroupError::Parse {
                    path: path.clone(),
                    message: format!("not a pid: {line:?}"),
                })?;
                pids.insert(pid);
            }
        }
        Ok(pids.into_iter().map(Pid::from_raw).collect())
    }

    /// SIGKILLs every process: `cgroup.kill` where a cgroup2 directory
    /// exists, and `kill(2)` for every pid from [`Self::pids`]. A frozen
    /// cgroup is thawed so the kill is delivered. Waits (up to
    /// [`KILL_TIMEOUT`]) until no process is left. A missing cgroup is fine.
    pub fn kill_all(&self) -> Result<()> {
        self.check()?;
        if let Some(h) = self
            .hierarchies
            .iter()
            .find(|h| h.version == Version::V2 && h.dir.is_dir())
        {
            let path = h.dir.join("cgroup.kill");
            match write_file_raw(&path, "1") {
                Ok(()) => {}
                // Old kernel without cgroup.kill, or removed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError::io("writing \"1\" to", &path, e)),
            }
        }
        let freezer = self.freezer()?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for &pid in &pids {
                match kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        return Err(CgroupError::Sys {
                            what: format!("sending SIGKILL to pid {pid}"),
                            path: freezer.dir.clone(),
                            source: e,
                        })
                    }
                }
            }
            // The directory may go away meanwhile (the supervisor removes it
            // once PID 1 is gone): then there is nothing left to thaw.
            if matches!(
                self.freezer_state(),
                Ok(FreezerState::Freezing | FreezerState::Frozen)
            ) {
                self.request_thaw(freezer)?;
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(CgroupError::Timeout {
                    what: "killing every process",
                    path: freezer.dir.clone(),
                    waited: KILL_TIMEOUT,
                    detail: format!(
                        "still there: {}",
                        pids.iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                });
            }
            sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }

    /// Removes the container's directory (child cgroups first) in every
    /// hierarchy, retrying on EBUSY for up to [`REMOVE_TIMEOUT`] while tasks
    /// exit. The shared parent stays. Missing directories are fine.
    pub fn remove(&self) -> Result<()> {
        self.check()?;
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let mut first_err = None;
        for h in &self.hierarchies {
            if let Err(e) = remove_tree(&h.dir, deadline) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes the shared parent directory in every hierarchy where it is
    /// empty (no other container uses it); busy or missing ones are left.
    pub fn remove_parent_if_empty(&self) -> Result<()> {
        self.check()?;
        for h in &self.hierarchies {
            let mut dir = h.dir.clone();
            // Innermost parent level first, up to (not including) the mount.
            for _ in 0..self.parent.len() {
                if !dir.pop() {
                    break;
                }
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) => {
                        break
                    }
                    Err(e) => return Err(CgroupError::io("removing directory", &dir, e)),
                }
            }
        }
        Ok(())
    }

    /// Whether any of the container's directories exists.
    pub fn exists(&self) -> bool {
        self.invalid.is_none() && self.hierarchies.iter().any(|h| h.dir.is_dir())
    }

    /// CPU time used by the cgroup, in nanoseconds (v1 `cpuacct.usage`;
    /// cgroup2 `cpu.stat` usage_usec).
    pub fn cpu_usage_ns(&self) -> Result<u64> {
        self.check()?;
        if let Some(h) = self.v1_controller("cpuacct") {
            return read_u64(&h.dir.join("cpuacct.usage"));
        }
        // cpu.stat exists in every cgroup2 cgroup, with or without the cpu
        // controller.
        let h = self
            .hierarchies
            .iter()
            .find(|h| h.version == Version::V2 && h.usable())
            .ok_or_else(|| {
                CgroupError::Unsupported(format!(
                    "cgroup {}: no cpuacct controller and no cgroup2 directory to read CPU usage from",
                    self.name
                ))
            })?;
        let path = h.dir.join("cpu.stat");
        let usec = read_keyed(&path, "usage_usec")?.ok_or_else(|| CgroupError::Parse {
            path: path.clone(),
            message: "no usage_usec line".into(),
        })?;
        Ok(usec.saturating_mul(1000))
    }

    /// Memory in use, in bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn memory_usage(&self) -> Result<u64> {
        self.check()?;
        let h = self.controller("memory")?;
        match h.version {
            Version::V1 => read_u64(&h.dir.join("memory.usage_in_bytes")),
            Version::V2 => read_u64(&h.dir.join("memory.current")),
        }
    }

    /// The memory limit in bytes; None when unlimited.
    pub fn memory_limit(&self) -> Result<Option<u64>> {
        self.check()?;
        let h = self.controller("memory")?;
        match h.version {
            Version::V1 => {
                let v = read_u64(&h.dir.join("memory.limit_in_bytes"))?;
                Ok((v < V1_UNLIMITED).then_some(v))
            }
            Version::V2 => read_max(&h.dir.join("memory.max")),
        }
    }

    /// The CPU limit as (quota, period) in microseconds; None when unlimited.
    pub fn cpu_max(&self) -> Result<Option<(u64, u64)>> {
        self.check()?;
        let h = self.controller("cpu")?;
        match h.version {
            Version::V1 => {
                let qpath = h.dir.join("cpu.cfs_quota_us");
                let q = read_string(&qpath)?;
                let q = q.trim();
                if q.starts_with('-') {
                    return Ok(None);
                }
                let quota = q.parse().map_err(|_| CgroupError::Parse {
                    path: qpath,
                    message: format!("not a number: {q:?}"),
                })?;
                Ok(Some((quota, read_u64(&h.dir.join("cpu.cfs_period_us"))?)))
            }
            Version::V2 => {
                let path = h.dir.join("cpu.max");
                let s = read_string(&path)?;
                let mut it = s.split_whitespace();
                let bad = || CgroupError::Parse {
                    path: path.clone(),
                    message: format!("expected 'QUOTA PERIOD', got {:?}", s.trim()),
                };
                let (q, p) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
                if q == "max" {
                    return Ok(None);
                }
                Ok(Some((
                    q.parse().map_err(|_| bad())?,
                    p.parse().map_err(|_| bad())?,
                )))
            }
        }
    }

    /// The pids limit; None when unlimited ("max").
    pub fn pids_max(&self) -> Result<Option<u64>> {
        self.check()?;
        let h = self.controller("pids")?;
        read_max(&h.dir.join("pids.max"))
    }

    /// How many processes the OOM killer killed in the cgroup (v1
    /// memory.oom_control, v2 memory.events: `oom_kill N`).
    pub fn oom_kills(&self) -> Result<u64> {
        self.check()?;
        let h = self.controller("memory")?;
        let path = match h.version {
            Version::V1 => h.dir.join("memory.oom_control"),
            Version::V2 => h.dir.join("memory.events"),
        };
        read_keyed(&path, "oom_kill")?.ok_or_else(|| CgroupError::Parse {
            path,
            message: "no oom_kill line (kernel too old?)".into(),
        })
    }
}

/// Enables memory, cpu and pids (those available and not yet enabled) in
/// `dir`'s `cgroup.subtree_control`.
fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let available = read_string(&dir.join("cgroup.controllers"))?;
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_string(&control)?;
    let enabled: HashSet<&str> = enabled.split_whitespace().collect();
    for c in available.split_whitespace() {
        if V2_REQUIRED.contains(&c) && !enabled.contains(c) {
            write_file(&control, &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes: copy
/// them from the parent so tasks can be added.
fn init_cpuset(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = dir.join(file);
        if !path.exists() || !read_string(&path)?.trim().is_empty() {
            continue;
        }
        let value = read_string(&parent.join(file))?;
        write_file(&path, value.trim())?;
    }
    Ok(())
}

/// `dir` and every directory below it, parents before children. Nothing if
/// `dir` does not exist.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgroupError::io("listing", dir, e)),
    };
    out.push(dir.to_path_buf());
    for entry in entries {
        let entry = entry.map_err(|e| CgroupError::io("listing", dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| CgroupError::io("reading type of", &entry.path(), e))?
            .is_dir();
        if is_dir {
            collect_dirs(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs)?;
    // Parents come before their descendants: reversed, children go first.
    for d in dirs.iter().rev() {
        let mut delay = Duration::from_millis(1);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(CgroupError::io("removing directory", d, e)),
            }
        }
    }
    Ok(())
}

/// Polls `check` with short, growing sleeps until it says done (true) or
/// `timeout` passes (false).
fn wait_for(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    loop {
        if check()? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// One `write(2)` of `value` to an existing cgroup file.
fn write_file_raw(path: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    write_file_raw(path, value)
        .map_err(|e| CgroupError::io(format!("writing {value:?} to"), path, e))
}

fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| CgroupError::io("reading", path, e))
}

fn read_u64(path: &Path) -> Result<u64> {
    let s = read_string(path)?;
    s.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        message: format!("not a number: {:?}", s.trim()),
    })
}

/// A number, or None for "max".
fn read_max(path: &Path) -> Result<Option<u64>> {
    let s = read_string(path)?;
    match s.trim() {
        "max" => Ok(None),
        v => v.parse().map(Some).map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            message: format!("expected a number or 'max', got {v:?}"),
        }),
    }
}

/// The value of `key` in a "key value" per line file.
fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>> {
    let s = read_string(path)?;
    for line in s.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or("");
            return v.parse().map(Some).map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                message: format!("{key}: not a number: {v:?}"),
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 25 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:9 - securityfs securityfs rw
";

    /// This test machine: separate v1 mounts, cgroup2 at unified.
    const HYBRID: &str = "\
1 0 8:1 / / rw,relatime - ext4 /dev/vda rw
23 1 0:21 / /sys rw,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// systemd-style hybrid with combined hierarchies and optional fields.
    const HYBRID_SYSTEMD: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw,errors=remount-ro
33 24 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
39 33 0:33 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
40 33 0:34 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
41 33 0:35 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
42 33 0:36 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
43 33 0:37 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,devices
";

    /// Pure v1 with combined cpu,cpuacct and no cgroup2.
    const V1_COMBINED: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
20 1 0:18 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
30 20 0:25 / /sys/fs/cgroup rw - tmpfs cgroup_root rw,mode=755
31 30 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
32 30 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
33 30 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
34 30 0:29 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,freezer
35 30 0:30 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,devices
36 30 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpuset,noprefix,release_agent=/sbin/agent
";

    fn v1_of(l: &CgroupLayout) -> &V1Mounts {
        l.v1().expect("layout has v1 mounts")
    }

    #[test]
    fn pure_v2() {
        let l = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        assert_eq!(
            l,
            CgroupLayout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(l.kind(), LayoutKind::V2);
        let cg = ContainerCgroup::new(&l, "cr", "web1");
        assert_eq!(cg.paths(), vec![PathBuf::from("/sys/fs/cgroup/cr/web1")]);
        assert_eq!(cg.cgroup2_path(), Some(Path::new("/sys/fs/cgroup/cr/web1")));
    }

    #[test]
    fn hybrid_this_machine() {
        let l = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        assert_eq!(l.kind(), LayoutKind::Hybrid);
        assert_eq!(l.cgroup2_mount(), Some(Path::new("/sys/fs/cgroup/unified")));
        let v1 = v1_of(&l);
        for c in [
            "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        ] {
            assert_eq!(
                v1.mount(c),
                Some(Path::new("/sys/fs/cgroup").join(c).as_path())
            );
        }
        assert_eq!(v1.mount("systemd"), None);
        assert_eq!(v1.mount("name=systemd"), None);

        let cg = ContainerCgroup::new(&l, "cr", "web1");
        let want: Vec<PathBuf> = [
            "memory", "cpu", "cpuacct", "pids", "freezer", "devices", "unified",
        ]
        .iter()
        .map(|h| PathBuf::from(format!("/sys/fs/cgroup/{h}/cr/web1")))
        .collect();
        assert_eq!(cg.paths(), want);
        assert_eq!(
            cg.cgroup2_path(),
            Some(Path::new("/sys/fs/cgroup/unified/cr/web1"))
        );
    }

    #[test]
    fn hybrid_systemd_combined() {
        let l = CgroupLayout::from_mountinfo(HYBRID_SYSTEMD).unwrap();
        assert_eq!(l.kind(), LayoutKind::Hybrid);
        let v1 = v1_of(&l);
        let cpu = Path::new("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(v1.mount("cpu"), Some(cpu));
        assert_eq!(v1.mount("cpuacct"), Some(cpu));
        assert_eq!(v1.controllers_at(cpu), vec!["cpu", "cpuacct"]);
        assert_eq!(
            v1.mount("net_prio"),
            Some(Path::new("/sys/fs/cgroup/net_cls,net_prio"))
        );
        let cg = ContainerCgroup::new(&l, "a/b", "c");
        assert_eq!(
            cg.paths(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/a/b/c"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/b/c"),
                PathBuf::from("/sys/fs/cgroup/pids/a/b/c"),
                PathBuf::from("/sys/fs/cgroup/freezer/a/b/c"),
                PathBuf::from("/sys/fs/cgroup/devices/a/b/c"),
                PathBuf::from("/sys/fs/cgroup/unified/a/b/c"),
            ]
        );
        assert_eq!(
            cg.parent_paths()[0],
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
    }

    #[test]
    fn v1_combined_cpu_cpuacct() {
        let l = CgroupLayout::from_mountinfo(V1_COMBINED).unwrap();
        assert_eq!(l.kind(), LayoutKind::V1);
        assert_eq!(l.cgroup2_mount(), None);
        let v1 = v1_of(&l);
        assert_eq!(v1.mount("cpu"), v1.mount("cpuacct"));
        assert_eq!(v1.mount("cpuset"), Some(Path::new("/sys/fs/cgroup/cpuset")));
        // noprefix and release_agent= are options, not controllers.
        assert_eq!(
            v1.controllers_at(Path::new("/sys/fs/cgroup/cpuset")),
            vec!["cpuset"]
        );
        let cg = ContainerCgroup::new(&l, "/cr/", "x");
        assert_eq!(cg.paths().len(), 5);
        assert!(cg.paths().iter().all(|p| p.ends_with("cr/x")));
        assert_eq!(cg.cgroup2_path(), None);
    }

    #[test]
    fn missing_v1_controller_is_named() {
        let text: String = V1_COMBINED
            .lines()
            .filter(|l| !l.contains("freezer"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = CgroupLayout::from_mountinfo(&text).unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported(_)));
        assert!(err.to_string().contains("'freezer'"), "{err}");
    }

    #[test]
    fn nothing_mounted() {
        let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n";
        let err = CgroupLayout::from_mountinfo(text).unwrap_err();
        assert!(err.to_string().contains("no cgroup"), "{err}");
    }

    #[test]
    fn stray_v1_on_v2_host_is_v2() {
        let text =
            format!("{PURE_V2}40 26 0:40 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls\n");
        let l = CgroupLayout::from_mountinfo(&text).unwrap();
        assert_eq!(l.kind(), LayoutKind::V2);
    }

    #[test]
    fn overmounted_cgroup2_is_ignored() {
        // A tmpfs mounted over /sys/fs/cgroup hides the cgroup2 mount below
        // it; the v1 mounts on top of the tmpfs are what is visible.
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
20 1 0:18 / /sys rw - sysfs sysfs rw
26 20 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
30 26 0:25 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
34 30 0:29 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
";
        let l = CgroupLayout::from_mountinfo(text).unwrap();
        assert_eq!(l.kind(), LayoutKind::V1);
    }

    #[test]
    fn escaped_mount_point_and_duplicates() {
        let text =
            format!("{V1_COMBINED}50 1 0:32 / /mnt/my\\040mem rw - cgroup cgroup rw,memory\n");
        let l = CgroupLayout::from_mountinfo(&text).unwrap();
        // The mount under /sys/fs/cgroup wins over the second one.
        assert_eq!(
            v1_of(&l).mount("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            unescape_mount_path("/mnt/my\\040mem"),
            PathBuf::from("/mnt/my mem")
        );
        assert_eq!(unescape_mount_path("/a\\\\b"), PathBuf::from("/a\\\\b"));
    }

    #[test]
    fn malformed_line() {
        let err = CgroupLayout::from_mountinfo("1 0 8:1 / / rw ext4\n").unwrap_err();
        assert!(
            matches!(err, CgroupError::Mountinfo { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn v2_controllers_checked() {
        let p = Path::new("/sys/fs/cgroup/cgroup.controllers");
        assert!(check_v2_controllers(p, "cpuset cpu io memory hugetlb pids rdma misc\n").is_ok());
        let err = check_v2_controllers(p, "hugetlb\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'memory', 'cpu' and 'pids' are not available"),
            "{err}"
        );
        assert!(err.contains("/sys/fs/cgroup/cgroup.controllers"), "{err}");
        let err = check_v2_controllers(p, "cpu memory")
            .unwrap_err()
            .to_string();
        assert!(err.contains("controller 'pids' is not available"), "{err}");
        let err = check_v2_controllers(p, "").unwrap_err().to_string();
        assert!(err.contains("it lists: nothing"), "{err}");
    }

    #[test]
    fn bad_names_are_rejected() {
        let l = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        for (parent, name) in [("cr", ".."), ("../etc", "x"), ("cr", "a/b"), ("cr", "")] {
            let cg = ContainerCgroup::new(&l, parent, name);
            let err = cg.create(&Limits::default()).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidName { .. }), "{err}");
            assert!(!cg.exists());
        }
    }

    #[test]
    fn bad_cpu_limit() {
        let l = CgroupLayout::from_mountinfo(PURE_V2).unwrap();
        let cg = ContainerCgroup::new(&l, "cr", "x");
        let limits = Limits {
            cpus: Some(-1.0),
            ..Limits::default()
        };
        assert!(matches!(
            cg.create(&limits),
            Err(CgroupError::InvalidLimit(_))
        ));
    }
}

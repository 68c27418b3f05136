//! Restore: turning stopped "husk" processes back into checkpointed ones,
//! from outside, by ptrace syscall injection only (no restorer blob).
//!
//! ```text
//!  husk (a stopped fork of cr)  ──process::rebuild_process──►  the
//!                                                              checkpointed
//!  memory, vDSO, mm fields, signal state, rseq, registers      process, still
//!                                                              stopped; the
//!                                                              caller detaches
//! ```
//!
//! One process, all its threads, is rebuilt by [`process`]; the container's
//! tree of processes by [`tree`]; pending signals and POSIX timers by
//! [`signals`], credentials and scheduling by [`creds`]. Not yet: SysV
//! shared memory, real-time scheduling.

pub mod container;
pub mod creds;
pub mod events;
pub mod image;
pub mod inet;
pub mod ipc;
pub mod lazy;

pub use lazy::PagesMode;

/// How `cr restore` brings a container back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreOptions {
    /// When private memory is filled (src/restore/lazy.rs).
    pub pages: PagesMode,
    /// Leave every task frozen (cgroup freezer) once rebuilt: `cr thaw`
    /// (or a migration's Resume) lets it run.
    pub frozen: bool,
    /// The image is a migration's staging (`cr serve`'s own tmpfs): its
    /// page store was checked frame by frame as it arrived
    /// (`cr_formats::StreamCheck`), so its payloads are not checked again
    /// in the frozen window; and it is this restore's alone, so lazy pages
    /// are freed from its file as they are copied in and the fill does not
    /// hold the memory twice. Never for a checkpoint a user may restore
    /// again.
    pub staged: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            pages: PagesMode::Lazy,
            frozen: false,
            staged: false,
        }
    }
}

pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod overlay;
pub mod pages;
pub mod process;
pub mod shmem;
pub mod signals;
pub mod tcp_fin;
pub mod timens;
pub mod timing;
pub mod tree;
pub mod unix;

use cr_formats::schema::VmaKind;
use nix::unistd::Pid;

use crate::inject::InjectError;

/// What failed while rebuilding process `pid`, and where. Each variant is
/// one step of [`process::rebuild_process`]; the inner [`InjectError`]
/// names the syscall and the errno.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Step 0: the husk's own thread state (registers, rseq) could not be
    /// taken or neutralised.
    #[error("process {pid}: preparing the husk ({what}): {source}")]
    Husk {
        pid: Pid,
        what: &'static str,
        #[source]
        source: InjectError,
    },
    /// No free address range for the restorer's own pages.
    #[error("process {pid}: no free address range of {len:#x} bytes outside the image's mappings and the husk's")]
    NoFreeRange { pid: Pid, len: u64 },
    /// Step 1: mapping or filling the gadget / scratch pages.
    #[error("process {pid}: setting up the {what} page at {addr:#x}: {source}")]
    Gadget {
        pid: Pid,
        what: &'static str,
        addr: u64,
        #[source]
        source: InjectError,
    },
    /// Step 2: unmapping the husk's own memory.
    #[error("process {pid}: unmapping the husk's memory {start:#x}-{end:#x}: {source}")]
    Unmap {
        pid: Pid,
        start: u64,
        end: u64,
        #[source]
        source: InjectError,
    },
    /// Step 2: the husk's `[vvar]`/`[vdso]` block is missing or does not match
    /// the image's.
    #[error("process {pid}: vDSO: {what}")]
    VdsoLayout { pid: Pid, what: String },
    /// Step 2: moving the vvar/vdso block.
    #[error("process {pid}: moving {name} {from:#x} to {to:#x}: {source}")]
    VdsoMove {
        pid: Pid,
        name: String,
        from: u64,
        to: u64,
        #[source]
        source: InjectError,
    },
    /// Step 3: mapping one VMA (open/mmap/close).
    #[error("process {pid}: mapping VMA {start:#x}-{end:#x} ({kind}): {source}")]
    MapVma {
        pid: Pid,
        start: u64,
        end: u64,
        kind: String,
        #[source]
        source: InjectError,
    },
    /// Step 3: a VMA of a kind this step cannot restore yet.
    #[error("process {pid}: VMA {start:#x}-{end:#x} is {kind:?}, which restore cannot map yet")]
    UnsupportedVma {
        pid: Pid,
        start: u64,
        end: u64,
        kind: VmaKind,
    },
    /// Step 3: writing page contents.
    #[error("process {pid}: writing {len:#x} bytes of pages at {addr:#x}: {source}")]
    Pages {
        pid: Pid,
        addr: u64,
        len: u64,
        #[source]
        source: InjectError,
    },
    /// Step 3: a page run outside every VMA of the image.
    #[error("process {pid}: page run {addr:#x}+{len:#x} lies outside the image's VMAs")]
    StrayPages { pid: Pid, addr: u64, len: u64 },
    /// Step 4: `prctl(PR_SET_MM, PR_SET_MM_MAP)` (or opening the exe for it).
    #[error("process {pid}: restoring the mm fields ({what}): {source}")]
    MmMap {
        pid: Pid,
        what: &'static str,
        #[source]
        source: InjectError,
    },
    /// Step 5: a thread-state syscall (sigaction, sigaltstack, itimer,
    /// rseq, set_tid_address, set_robust_list).
    #[error("process {pid}: restoring {what}: {source}")]
    ThreadState {
        pid: Pid,
        what: String,
        #[source]
        source: InjectError,
    },
    /// Step 6: registers, XSTATE or signal mask.
    #[error("process {pid}: setting {what}: {source}")]
    Registers {
        pid: Pid,
        what: &'static str,
        #[source]
        source: InjectError,
    },
    /// Step 7: unmapping the scratch or gadget page.
    #[error("process {pid}: unmapping the {what} page at {addr:#x}: {source}")]
    Cleanup {
        pid: Pid,
        what: &'static str,
        addr: u64,
        #[source]
        source: InjectError,
    },
    /// A step done for one thread other than the leader: creating it with
    /// its TID (step 1b), or setting its registers (step 6).
    #[error("process {pid}, thread {tid}: {what}: {source}")]
    Thread {
        pid: Pid,
        /// The TID inside the container's PID namespace.
        tid: i32,
        what: String,
        #[source]
        source: InjectError,
    },
    /// The image is not one this step can restore (no leader thread, no mm,
    /// malformed registers...).
    #[error("process {pid}: {what}")]
    Invalid { pid: Pid, what: String },
}

pub type Result<T, E = RestoreError> = std::result::Result<T, E>;

//! cr: checkpoint/restore and live migration of OpenVZ-style system containers.
//!
//! The library is the engine; `src/main.rs` only parses the command line and
//! dispatches to [`cli`]. The pipeline (see `docs/architecture.md`):
//!
//! ```text
//!  host        state root (--root): images, containers, checkpoints
//!  image       root filesystems a container starts from
//!  container   config, lifecycle verbs, namespaces, cgroups, rootfs, network,
//!              the per-container supervisor (monitor) that is PID 1's parent
//! ```
//!
//! Later stages (freeze, dump, restore, migrate, agent) plug in beside these.

pub mod agent;
pub mod cli;
pub mod clone3;
pub mod container;
pub mod dump;
pub mod error;
pub mod host;
pub mod image;
pub mod inject;
pub mod migrate;
pub mod netlock;
pub mod restore;
pub mod size;
pub mod storage;
pub mod uffd;

pub use error::{Error, Result};

/// Keeps freed memory in the process instead of giving it back to the
/// kernel at once. Call it first thing in `main`.
///
/// glibc's malloc serves blocks of 128 KiB and more (a threshold it raises
/// by itself only up to the size of blocks freed so far) with `mmap` and
/// trims a heap's top above 128 KiB. A migration moves its bytes in
/// buffers of 1 to 4 MiB (stream chunks, QUIC's receive batches, page
/// slices) that one thread allocates and another frees; each came back as
/// fresh pages, paying a page fault and zeroing per 4 KiB: about a tenth
/// of a migration's CPU on both hosts (`benches/migrate.rs` prints the CPU
/// of each side). With blocks up to 32 MiB (glibc's largest threshold)
/// taken from the heap and 64 MiB kept at a heap's top, those buffers are
/// reused; what a process keeps is bounded by its peak use plus 64 MiB
/// per malloc arena.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets malloc's tunables; it is called before
    // any thread of ours exists, and glibc serialises it against
    // allocations anyway. A refused value (return 0) leaves the default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

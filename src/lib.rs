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

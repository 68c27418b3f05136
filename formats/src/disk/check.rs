//! Check: verify a chain or one delta file and list every problem found.
//! It opens everything read-only and never repairs.
//!
//! ```text
//!   manifest: decodes, checksum, structure (cycle, gap, duplicates, names)
//!   each delta: header (either slot valid), each BAT block (one copy
//!               valid), each entry (inside the file, not metadata, not
//!               shared, inside the virtual size, generation not ahead)
//!   links: delta id = manifest id, one cluster size, sizes never shrink
//! ```
//!
//! Space in a file that no entry references (clusters written before a crash
//! whose BAT entry never made it, a BAT region left by a grow) is not a
//! problem; it is counted in [`DeltaReport::unreferenced_clusters`].

use super::chain::link_problems;
use super::delta::Delta;
use super::dir::ChainDir;
use super::error::{io_err, DiskError};
use super::manifest::{ChainManifest, CHAIN_MANIFEST};
use super::storage::Storage;
use super::DeltaId;

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every problem, in the order found.
    pub findings: Vec<DiskError>,
    /// The deltas whose header could be read, bottom first.
    pub deltas: Vec<DeltaReport>,
}

impl CheckReport {
    pub fn is_consistent(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Figures about one delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaReport {
    pub file: String,
    pub id: DeltaId,
    pub virtual_size: u64,
    pub cluster_size: u32,
    pub generation: u32,
    /// Clusters the BAT maps.
    pub allocated_clusters: u64,
    /// Whole clusters in the file.
    pub file_clusters: u64,
    /// Whole clusters that neither hold metadata nor are mapped.
    pub unreferenced_clusters: u64,
    /// BAT blocks whose newer copy was damaged, so the older one was used:
    /// what a crash during a flush leaves, not an inconsistency.
    pub damaged_bat_copies: u32,
}

fn report<S: Storage>(d: &Delta<S>) -> DeltaReport {
    let h = d.header();
    let cs = u64::from(h.cluster_size);
    let file_clusters = d.store().len().unwrap_or(0) / cs;
    let allocated = d.entries().count() as u64;
    let metadata = 1 + (h.bat_end() - h.bat_offset).div_ceil(cs);
    DeltaReport {
        file: d.name().to_string(),
        id: h.id,
        virtual_size: h.virtual_size,
        cluster_size: h.cluster_size,
        generation: h.generation,
        allocated_clusters: allocated,
        file_clusters,
        unreferenced_clusters: file_clusters.saturating_sub(allocated + metadata),
        damaged_bat_copies: d.damaged_copies(),
    }
}

/// Checks one delta file.
pub fn check_delta<S: Storage>(store: S, name: &str) -> CheckReport {
    let mut out = CheckReport::default();
    match Delta::load(store, name, &mut out.findings) {
        Ok(d) => out.deltas.push(report(&d)),
        Err(e) => out.findings.push(e),
    }
    out
}

/// Checks a chain: its manifest, every delta and the links between them.
pub fn check_chain<D: ChainDir>(dir: &D) -> CheckReport {
    let mut out = CheckReport::default();
    let mpath = dir.describe(CHAIN_MANIFEST);
    let manifest = match dir
        .read_manifest()
        .map_err(io_err(&mpath, "read", 0))
        .and_then(|b| ChainManifest::decode(&mpath, &b))
    {
        Ok(m) => m,
        Err(e) => {
            out.findings.push(e);
            return out;
        }
    };
    let mut below: Option<Delta<D::Store>> = None;
    for e in &manifest.deltas {
        let path = dir.describe(&e.file);
        let loaded = dir
            .open(&e.file, false)
            .map_err(io_err(&path, "open", 0))
            .and_then(|s| Delta::load(s, &path, &mut out.findings));
        match loaded {
            Ok(d) => {
                out.findings
                    .extend(link_problems(e, manifest.cluster_size, &d, below.as_ref()));
                out.deltas.push(report(&d));
                below = Some(d);
            }
            Err(err) => {
                out.findings.push(err);
                below = None;
            }
        }
    }
    out
}

//! Merge: fold delta `u` into the delta below it, online.
//!
//! ```text
//!   begin(u):   reopen u-1 writable; grow it to u's size; if u is the top,
//!               take a mark M1
//!   step(n):    copy up to n clusters of u into u-1 (in place where u-1 holds
//!               them, else fresh clusters), then flush u-1 (sync data, BAT,
//!               sync). At the end of a pass over u, if u is the top: the
//!               next pass copies what was written since the pass's mark,
//!               under a new mark.
//!   finish():   copy what is left (no writes can interleave), flush u-1,
//!               replace the manifest without u (u-1 takes u's writability
//!               and parents u+1), then remove u's file
//! ```
//!
//! Why it is safe at every point: while the manifest still lists `u`, every
//! cluster `u` holds shadows `u-1`'s, so what the merge writes into `u-1` is
//! invisible; a crash leaves the old chain with the same view (the merge can
//! simply start again). Once the manifest no longer lists `u`, `u-1` holds
//! everything `u` did, durably: the flush came before the manifest replace.
//! The merged view is therefore identical before, during and after.
//! Generations are copied with the clusters, so dirty tracking is unchanged.
//! Writes go on between steps (to the top, even if it is `u`); snapshot,
//! grow and another merge are refused until the merge finishes.

use super::chain::Chain;
use super::delta::Delta;
use super::dir::ChainDir;
use super::error::{io_err, DiskError, Result};
use super::manifest::DeltaEntry;

/// A merge in progress.
#[derive(Debug, Clone)]
pub struct MergeState {
    /// The delta being folded into the one below.
    pub upper: usize,
    cursor: u64,
    /// Copy only entries newer than this (None: all, the first pass).
    since: Option<u32>,
    /// The mark that closed the current pass's generation (top only).
    mark: Option<u32>,
    pass: u32,
}

/// Where a merge stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeProgress {
    /// Clusters copied by this step.
    pub copied: u64,
    /// The pass now under way (1: all of the delta; later: what was written
    /// during the previous pass).
    pub pass: u32,
    /// Whether [`Chain::merge_finish`] now has at most one step's work left.
    pub ready: bool,
}

/// What a finished merge removed from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    pub removed: DeltaEntry,
    pub clusters_copied: u64,
}

impl<D: ChainDir> Chain<D> {
    /// Folds delta `upper` into the one below, start to end.
    pub fn merge(&mut self, upper: usize) -> Result<MergeOutcome> {
        self.merge_begin(upper)?;
        let mut copied = 0;
        loop {
            let p = self.merge_step(256)?;
            copied += p.copied;
            if p.ready {
                break;
            }
        }
        let mut out = self.merge_finish()?;
        out.clusters_copied += copied;
        Ok(out)
    }

    /// Starts folding delta `upper` (index, bottom 0) into `upper - 1`.
    pub fn merge_begin(&mut self, upper: usize) -> Result<()> {
        if !self.writable {
            return Err(DiskError::ReadOnly { what: "merge" });
        }
        if let Some(m) = &self.merge {
            return Err(DiskError::MergeInProgress {
                what: "merge",
                upper: m.upper,
            });
        }
        if upper == 0 || upper >= self.deltas.len() {
            return Err(DiskError::BadMergeIndex {
                index: upper,
                len: self.deltas.len(),
            });
        }
        let lower = upper - 1;
        let entry = &self.manifest.deltas[lower];
        let path = self.dir.describe(&entry.file);
        let store = self
            .dir
            .open(&entry.file, true)
            .map_err(io_err(&path, "open", 0))?;
        let mut d = Delta::open(store, &path)?;
        if d.id() != entry.id {
            return Err(DiskError::DeltaIdMismatch {
                file: path,
                expected: entry.id,
                found: d.id(),
            });
        }
        d.grow(self.deltas[upper].virtual_size())?;
        self.deltas[lower] = d;
        let mark = if upper == self.deltas.len() - 1 {
            Some(self.mark()?.0)
        } else {
            None
        };
        self.merge = Some(MergeState {
            upper,
            cursor: 0,
            since: None,
            mark,
            pass: 1,
        });
        Ok(())
    }

    /// Copies up to `budget` clusters; writes may come between steps.
    pub fn merge_step(&mut self, budget: u64) -> Result<MergeProgress> {
        let mut st = self.merge.clone().ok_or(DiskError::NoMerge)?;
        let (copied, cursor) = self.copy_pass(st.upper, st.cursor, st.since, budget.max(1))?;
        st.cursor = cursor;
        let mut ready = false;
        if cursor >= self.deltas[st.upper].header().bat_capacity() {
            match st.mark {
                Some(mark) => {
                    let left = self.deltas[st.upper]
                        .entries()
                        .filter(|(_, e)| e.generation > mark)
                        .count() as u64;
                    st.since = Some(mark);
                    st.mark = Some(self.mark()?.0);
                    st.cursor = 0;
                    st.pass += 1;
                    ready = left <= budget;
                }
                None => ready = true,
            }
        }
        let pass = st.pass;
        self.merge = Some(st);
        Ok(MergeProgress {
            copied,
            pass,
            ready,
        })
    }

    /// Copies what is left, then switches the manifest and removes the
    /// merged delta's file.
    pub fn merge_finish(&mut self) -> Result<MergeOutcome> {
        let st = self.merge.clone().ok_or(DiskError::NoMerge)?;
        let (upper, lower) = (st.upper, st.upper - 1);
        let (mut copied, _) = self.copy_pass(upper, st.cursor, st.since, u64::MAX)?;
        if let Some(mark) = st.mark {
            copied += self.copy_pass(upper, 0, Some(mark), u64::MAX)?.0;
        }
        let mut m = self.manifest.clone();
        m.deltas[lower].read_only = m.deltas[upper].read_only;
        let lower_id = m.deltas[lower].id;
        if let Some(above) = m.deltas.get_mut(upper + 1) {
            above.parent = Some(lower_id);
        }
        let removed = m.deltas.remove(upper);
        self.commit_manifest(m)?;
        drop(self.deltas.remove(upper));
        self.merge = None;
        let path = self.dir.describe(&removed.file);
        self.dir
            .remove(&removed.file)
            .map_err(io_err(&path, "remove", 0))?;
        Ok(MergeOutcome {
            removed,
            clusters_copied: copied,
        })
    }

    /// Copies up to `budget` clusters of `upper` newer than `since` from
    /// virtual cluster `cursor` on into `upper - 1`, then flushes it.
    /// Returns the count and where to go on.
    fn copy_pass(
        &mut self,
        upper: usize,
        cursor: u64,
        since: Option<u32>,
        budget: u64,
    ) -> Result<(u64, u64)> {
        let lower = upper - 1;
        // No entry on disk may be newer than its delta's header.
        let g = self.deltas[upper].generation();
        if g > self.deltas[lower].generation() {
            self.deltas[lower].set_generation(g)?;
        }
        let end = self.deltas[upper].header().bat_capacity();
        let mut buf = vec![0u8; self.cluster_size() as usize];
        let mut copied = 0;
        let mut v = cursor;
        while v < end && copied < budget {
            if let Some(e) = self.deltas[upper].entry(v) {
                if since.is_none_or(|s| e.generation > s) {
                    self.deltas[upper].read(v, 0, &mut buf)?;
                    self.deltas[lower].write_cluster(v, &buf, e.generation)?;
                    copied += 1;
                }
            }
            v += 1;
        }
        self.deltas[lower].flush()?;
        Ok((copied, v))
    }
}

//! A disk as a chain of deltas: read-only ones below, one writable top.
//!
//! ```text
//!   read v:   top --(not here)--> delta n-1 --> ... --> delta 0 --> zeros
//!   write v:  top holds v ?  in place
//!             else           whole cluster = below's bytes + the new ones,
//!                            written to a fresh cluster of the top (copy on write)
//!   snapshot: flush top; create an empty delta; manifest: old top read-only,
//!             new top writable (one atomic replace)
//!   grow:     the top's virtual size grows (its BAT may move, see delta.rs)
//!   mark:     the top's generation + 1 (durable); returns the old one
//!   dirty_since(M): virtual clusters whose entry in any delta has a
//!             generation > M
//! ```
//!
//! Every write is tagged with the top's generation, kept per BAT entry. A
//! mark closes a generation, so "written since mark M" is the set of entries
//! with a later generation, across all deltas (merges keep generations):
//! live migration takes a mark, copies, takes the next mark, copies what was
//! written since the previous one, and so on. The query scans the BATs in
//! memory: 16 Ki entries per delta for a 16 GiB disk at 1 MiB clusters.

use super::delta::Delta;
use super::dir::ChainDir;
use super::error::{io_err, DiskError, Result};
use super::manifest::{ChainManifest, DeltaEntry, CHAIN_MANIFEST};
use super::DeltaId;

/// A point in the write history of a chain: writes after it have a later
/// generation. [`Mark::ORIGIN`] is before every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark(pub u32);

impl Mark {
    pub const ORIGIN: Mark = Mark(0);
}

/// The first write generation of a new chain.
pub const FIRST_GENERATION: u32 = 1;

/// An open chain.
#[derive(Debug)]
pub struct Chain<D: ChainDir> {
    pub(super) dir: D,
    pub(super) manifest: ChainManifest,
    pub(super) deltas: Vec<Delta<D::Store>>,
    pub(super) writable: bool,
    pub(super) merge: Option<super::merge::MergeState>,
}

impl<D: ChainDir> Chain<D> {
    /// Creates a chain of one empty writable delta in an empty directory.
    pub fn create(dir: D, virtual_size: u64, cluster_size: u32, label: &str) -> Result<Self> {
        let id = dir.new_id();
        let file = delta_file_name(id);
        let path = dir.describe(&file);
        let store = dir.create(&file).map_err(io_err(&path, "create", 0))?;
        let delta = Delta::create(
            store,
            &path,
            id,
            virtual_size,
            cluster_size,
            FIRST_GENERATION,
        )?;
        let manifest = ChainManifest {
            cluster_size,
            deltas: vec![DeltaEntry {
                id,
                parent: None,
                file,
                label: label.to_string(),
                read_only: false,
                created_unix_ns: dir.now_unix_ns(),
            }],
        };
        let mut chain = Chain {
            dir,
            manifest: manifest.clone(),
            deltas: vec![delta],
            writable: true,
            merge: None,
        };
        chain.commit_manifest(manifest)?;
        Ok(chain)
    }

    /// Opens a chain; writable if its top delta is.
    pub fn open(dir: D) -> Result<Self> {
        Self::open_with(dir, true, None)
    }

    /// Opens a chain read-only.
    pub fn open_read_only(dir: D) -> Result<Self> {
        Self::open_with(dir, false, None)
    }

    /// Opens, read-only, the disk as it was when delta `id` was the top: the
    /// chain cut above it.
    pub fn open_snapshot(dir: D, id: DeltaId) -> Result<Self> {
        Self::open_with(dir, false, Some(id))
    }

    fn open_with(dir: D, writable: bool, upto: Option<DeltaId>) -> Result<Self> {
        let mpath = dir.describe(CHAIN_MANIFEST);
        let bytes = dir.read_manifest().map_err(io_err(&mpath, "read", 0))?;
        let mut manifest = ChainManifest::decode(&mpath, &bytes)?;
        if let Some(id) = upto {
            let i = manifest
                .deltas
                .iter()
                .position(|d| d.id == id)
                .ok_or(DiskError::NoSuchDelta { id })?;
            manifest.deltas.truncate(i + 1);
        }
        let top = manifest.deltas.len() - 1;
        let writable = writable && !manifest.deltas[top].read_only;
        let mut deltas: Vec<Delta<D::Store>> = Vec::with_capacity(manifest.deltas.len());
        for (i, e) in manifest.deltas.iter().enumerate() {
            let path = dir.describe(&e.file);
            let store = dir
                .open(&e.file, writable && i == top)
                .map_err(io_err(&path, "open", 0))?;
            let d = Delta::open(store, &path)?;
            if let Some(p) = link_problems(e, manifest.cluster_size, &d, deltas.last())
                .into_iter()
                .next()
            {
                return Err(p);
            }
            deltas.push(d);
        }
        Ok(Chain {
            dir,
            manifest,
            deltas,
            writable,
            merge: None,
        })
    }

    pub fn manifest(&self) -> &ChainManifest {
        &self.manifest
    }
    pub fn dir(&self) -> &D {
        &self.dir
    }
    pub fn deltas(&self) -> &[Delta<D::Store>] {
        &self.deltas
    }
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    pub fn cluster_size(&self) -> u32 {
        self.manifest.cluster_size
    }
    /// The size of the virtual disk: the top's.
    pub fn virtual_size(&self) -> u64 {
        self.top().virtual_size()
    }
    /// The generation writes are tagged with now.
    pub fn generation(&self) -> u32 {
        self.top().generation()
    }

    pub(super) fn top(&self) -> &Delta<D::Store> {
        &self.deltas[self.deltas.len() - 1]
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        let size = self.virtual_size();
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(DiskError::OutOfRange {
                offset,
                len: len as u64,
                size,
            }),
        }
    }

    /// Which delta (index, bottom 0) holds virtual cluster `v`, if any.
    pub fn holder(&self, v: u64) -> Option<usize> {
        self.holder_below(v, self.deltas.len())
    }

    fn holder_below(&self, v: u64, below: usize) -> Option<usize> {
        (0..below)
            .rev()
            .find(|&i| self.deltas[i].entry(v).is_some())
    }

    /// Reads part of cluster `v` as the deltas `0..below` show it.
    pub(super) fn read_piece(
        &self,
        v: u64,
        offset: u32,
        buf: &mut [u8],
        below: usize,
    ) -> Result<()> {
        match self.holder_below(v, below) {
            Some(i) => self.deltas[i].read(v, offset, buf),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Splits `offset..offset + len` into (cluster, offset in it, start in
    /// the buffer, length) pieces.
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, u32, usize, usize)> {
        let cs = u64::from(self.cluster_size());
        let mut done = 0usize;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let pos = offset + done as u64;
            let within = pos % cs;
            let n = ((cs - within) as usize).min(len - done);
            let piece = (pos / cs, within as u32, done, n);
            done += n;
            Some(piece)
        })
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        for (v, within, start, n) in self.pieces(offset, buf.len()) {
            self.read_piece(v, within, &mut buf[start..start + n], self.deltas.len())?;
        }
        Ok(())
    }

    /// Writes `data` to the virtual disk at `offset`, into the top delta.
    /// Durable after the next [`Chain::flush`].
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(DiskError::ReadOnly { what: "write" });
        }
        self.check_range(offset, data.len())?;
        let cs = self.cluster_size() as usize;
        let top = self.deltas.len() - 1;
        let generation = self.generation();
        let pieces: Vec<_> = self.pieces(offset, data.len()).collect();
        for (v, within, start, n) in pieces {
            let piece = &data[start..start + n];
            if self.deltas[top].entry(v).is_some() {
                self.deltas[top].write_in_place(v, within, piece, generation)?;
            } else if n == cs {
                self.deltas[top].write_new(v, piece, generation)?;
            } else {
                let mut cluster = vec![0u8; cs];
                self.read_piece(v, 0, &mut cluster, top)?;
                cluster[within as usize..within as usize + n].copy_from_slice(piece);
                self.deltas[top].write_new(v, &cluster, generation)?;
            }
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&mut self) -> Result<()> {
        for d in &mut self.deltas {
            d.flush()?;
        }
        Ok(())
    }

    /// Freezes the top and puts a new empty writable delta on it; returns the
    /// new top's id. Costs a flush, one small file and a manifest replace.
    pub fn snapshot(&mut self, label: &str) -> Result<DeltaId> {
        self.check_changeable("snapshot")?;
        self.flush()?;
        let id = self.dir.new_id();
        let file = delta_file_name(id);
        let path = self.dir.describe(&file);
        let (size, generation, parent) = {
            let top = self.top();
            (top.virtual_size(), top.generation(), top.id())
        };
        let store = self.dir.create(&file).map_err(io_err(&path, "create", 0))?;
        let delta = match Delta::create(store, &path, id, size, self.cluster_size(), generation) {
            Ok(d) => d,
            Err(e) => {
                // Not in the manifest: nothing refers to it.
                let _ = self.dir.remove(&file);
                return Err(e);
            }
        };
        let mut m = self.manifest.clone();
        if let Some(top) = m.deltas.last_mut() {
            top.read_only = true;
        }
        m.deltas.push(DeltaEntry {
            id,
            parent: Some(parent),
            file,
            label: label.to_string(),
            read_only: false,
            created_unix_ns: self.dir.now_unix_ns(),
        });
        self.commit_manifest(m)?;
        self.deltas.push(delta);
        Ok(id)
    }

    /// Goes back to the disk as delta `id` (read-only, a snapshot) holds
    /// it: every delta above it is dropped and a new empty writable top is
    /// put on it; returns the new top's id. What was written since that
    /// snapshot is gone (a restore of a checkpoint taken with it). The
    /// manifest switches atomically; the dropped files are removed after.
    pub fn revert_to(&mut self, id: DeltaId, label: &str) -> Result<DeltaId> {
        self.check_changeable("revert")?;
        let Some(at) = self.manifest.deltas.iter().position(|d| d.id == id) else {
            return Err(DiskError::NoSuchDelta { id });
        };
        if !self.manifest.deltas[at].read_only {
            return Err(DiskError::ReadOnly {
                what: "revert to the writable top (it is not a snapshot)",
            });
        }
        self.flush()?;
        let new = self.dir.new_id();
        let file = delta_file_name(new);
        let path = self.dir.describe(&file);
        let (size, generation) = {
            let top = self.top();
            (self.deltas[at].virtual_size(), top.generation())
        };
        let store = self.dir.create(&file).map_err(io_err(&path, "create", 0))?;
        let delta = match Delta::create(store, &path, new, size, self.cluster_size(), generation) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.dir.remove(&file);
                return Err(e);
            }
        };
        let mut m = self.manifest.clone();
        let dropped: Vec<String> = m.deltas.drain(at + 1..).map(|d| d.file).collect();
        m.deltas.push(DeltaEntry {
            id: new,
            parent: Some(id),
            file,
            label: label.to_string(),
            read_only: false,
            created_unix_ns: self.dir.now_unix_ns(),
        });
        self.commit_manifest(m)?;
        self.deltas.truncate(at + 1);
        self.deltas.push(delta);
        for f in dropped {
            let _ = self.dir.remove(&f);
        }
        Ok(new)
    }

    /// Grows the virtual disk to `new_size` bytes; shrinking is refused.
    pub fn grow(&mut self, new_size: u64) -> Result<()> {
        self.check_changeable("grow")?;
        let top = self.deltas.len() - 1;
        self.deltas[top].grow(new_size)
    }

    /// Closes the current generation (durably) and returns it: what is
    /// written from now on is in [`Chain::dirty_since`] of the returned mark.
    pub fn mark(&mut self) -> Result<Mark> {
        if !self.writable {
            return Err(DiskError::ReadOnly { what: "mark" });
        }
        let top = self.deltas.len() - 1;
        let g = self.deltas[top].generation();
        let next = g
            .checked_add(1)
            .ok_or_else(|| DiskError::GenerationOverflow {
                file: self.deltas[top].name().to_string(),
            })?;
        self.deltas[top].set_generation(next)?;
        Ok(Mark(g))
    }

    /// The virtual clusters written after `mark`, ascending. With
    /// [`Mark::ORIGIN`]: every cluster any delta holds.
    pub fn dirty_since(&self, mark: Mark) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for d in &self.deltas {
            out.extend(
                d.entries()
                    .filter(|(_, e)| e.generation > mark.0)
                    .map(|(v, _)| v),
            );
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn check_changeable(&self, what: &'static str) -> Result<()> {
        if !self.writable {
            return Err(DiskError::ReadOnly { what });
        }
        if let Some(m) = &self.merge {
            return Err(DiskError::MergeInProgress {
                what,
                upper: m.upper,
            });
        }
        Ok(())
    }

    /// Validates, encodes and atomically replaces the manifest.
    pub(super) fn commit_manifest(&mut self, m: ChainManifest) -> Result<()> {
        let path = self.dir.describe(CHAIN_MANIFEST);
        m.validate(&path)?;
        let bytes = m.encode()?;
        self.dir
            .replace_manifest(&bytes)
            .map_err(io_err(&path, "replace", 0))?;
        self.manifest = m;
        Ok(())
    }
}

/// The file name of delta `id`.
pub fn delta_file_name(id: DeltaId) -> String {
    format!("{id}.delta")
}

/// What is wrong between a manifest entry, its delta and the delta below.
pub(super) fn link_problems<S>(
    entry: &DeltaEntry,
    cluster_size: u32,
    d: &Delta<S>,
    below: Option<&Delta<S>>,
) -> Vec<DiskError>
where
    S: super::Storage,
{
    let mut out = Vec::new();
    if d.id() != entry.id {
        out.push(DiskError::DeltaIdMismatch {
            file: d.name().to_string(),
            expected: entry.id,
            found: d.id(),
        });
    }
    if d.cluster_size() != cluster_size {
        out.push(DiskError::ClusterSizeMismatch {
            file: d.name().to_string(),
            expected: cluster_size,
            found: d.cluster_size(),
        });
    }
    if let Some(b) = below {
        if d.virtual_size() < b.virtual_size() {
            out.push(DiskError::ChainShrinks {
                file: d.name().to_string(),
                size: d.virtual_size(),
                below: b.name().to_string(),
                below_size: b.virtual_size(),
            });
        }
    }
    out
}

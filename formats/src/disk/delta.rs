//! One delta file: its header, its BAT held in memory, and the write path
//! that keeps the file crash-safe.
//!
//! ```text
//!   | header area (4 KiB) | BAT region | data cluster | data cluster | ...
//!   cluster 0 ........................ | p = first free cluster, growing ->
//! ```
//!
//! Write ordering (the durability rule):
//!
//! 1. A new virtual cluster gets the next free physical cluster; the whole
//!    cluster is written there (partial writes were filled from below by the
//!    chain). Only the in-memory BAT learns of it; its block is marked dirty.
//! 2. [`Delta::flush`]: sync the file (the data is durable), then write each
//!    dirty BAT block into its spare copy, then sync again.
//! 3. Header changes (grow, a mark, a relocated BAT) are written into the
//!    spare header slot and synced at once, never batched with the BAT, so
//!    that no BAT entry on disk is newer than the header that governs it.
//!
//! A crash before 2 completes leaves the on-disk BAT as it was: the new
//! clusters are unreferenced space past the last referenced one, which the
//! next writer reuses. A crash during 2 tears at most the spare copy of a
//! block, which then fails its checksum: the reader keeps the old copy. No
//! BAT entry on disk ever points at a cluster whose data was not synced.
//!
//! A write to a cluster already in this delta goes in place, like a write to a
//! disk: until the next flush its bytes may be old, new or mixed after a crash,
//! but never another cluster's bytes.

use std::collections::{BTreeSet, HashMap};

use super::bat::{self, BatEntry, BAT_BLOCK_LEN, BAT_PAIR_LEN, ENTRIES_PER_BLOCK};
use super::error::{io_err, DiskError, Result};
use super::header::{
    self, check_cluster_size, check_virtual_size, DeltaHeader, HEADER_AREA, MAX_BAT_BLOCKS,
};
use super::storage::Storage;
use super::{DeltaId, DISK_FORMAT_VERSION};

/// Where each BAT block's current copy is.
#[derive(Debug, Clone, Copy)]
struct BlockState {
    slot: u8,
    seq: u64,
}

/// An open delta file.
#[derive(Debug)]
pub struct Delta<S> {
    store: S,
    name: String,
    header: DeltaHeader,
    header_slot: usize,
    bat: Vec<BatEntry>,
    blocks: Vec<BlockState>,
    dirty: BTreeSet<u32>,
    next_free: u64,
    unsynced: bool,
    damaged_copies: u32,
}

impl<S: Storage> Delta<S> {
    /// Writes a new, empty delta into `store` (which should be empty) and
    /// syncs it. The BAT region is zeros (no entries): one `set_len`, so this
    /// costs the same for any virtual size.
    pub fn create(
        store: S,
        name: &str,
        id: DeltaId,
        virtual_size: u64,
        cluster_size: u32,
        generation: u32,
    ) -> Result<Self> {
        check_cluster_size(name, u64::from(cluster_size))?;
        check_virtual_size(name, virtual_size, cluster_size)?;
        let clusters = virtual_size.div_ceil(u64::from(cluster_size));
        let blocks = bat::blocks_for(clusters) as u32;
        let header = DeltaHeader {
            version: DISK_FORMAT_VERSION,
            flags: 0,
            seq: 1,
            cluster_size,
            virtual_size,
            bat_offset: HEADER_AREA,
            bat_blocks: blocks,
            generation,
            id,
        };
        let end = header.bat_end();
        store.set_len(0).map_err(io_err(name, "truncate", 0))?;
        store.set_len(end).map_err(io_err(name, "extend", end))?;
        header::write_header_slot(&store, name, &header, 0)?;
        Ok(Delta {
            store,
            name: name.to_string(),
            next_free: end.div_ceil(u64::from(cluster_size)),
            header,
            header_slot: 0,
            bat: vec![BatEntry::default(); blocks as usize * ENTRIES_PER_BLOCK],
            blocks: vec![BlockState { slot: 0, seq: 0 }; blocks as usize],
            dirty: BTreeSet::new(),
            unsynced: false,
            damaged_copies: 0,
        })
    }

    /// Opens a delta, refusing it at its first problem.
    pub fn open(store: S, name: &str) -> Result<Self> {
        let mut findings = Vec::new();
        let d = Self::load(store, name, &mut findings)?;
        match findings.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(d),
        }
    }

    /// Decodes a delta, pushing every BAT problem to `findings`; only a
    /// header problem (or an i/o error) is returned as an error. Entries
    /// found wrong are dropped from the returned delta.
    pub fn load(store: S, name: &str, findings: &mut Vec<DiskError>) -> Result<Self> {
        let (header, header_slot) = header::read_header(&store, name)?;
        let nblocks = header.bat_blocks as usize;
        let mut bat = Vec::with_capacity(nblocks * ENTRIES_PER_BLOCK);
        let mut blocks = Vec::with_capacity(nblocks);
        let mut pair = vec![0u8; BAT_PAIR_LEN as usize];
        let mut damaged_copies = 0;
        for b in 0..header.bat_blocks {
            let off = header.bat_offset + u64::from(b) * BAT_PAIR_LEN;
            store
                .read_at(&mut pair, off)
                .map_err(io_err(name, "read BAT", off))?;
            match bat::decode_block(name, b, off, &pair) {
                Ok(d) => {
                    damaged_copies += u32::from(d.other_damaged);
                    bat.extend_from_slice(&d.entries);
                    blocks.push(BlockState {
                        slot: d.slot,
                        seq: d.seq,
                    });
                }
                Err(e) => {
                    findings.push(e);
                    bat.extend(std::iter::repeat_n(BatEntry::default(), ENTRIES_PER_BLOCK));
                    // Both copies are bad: the next write may use either.
                    blocks.push(BlockState { slot: 1, seq: 0 });
                }
            }
        }
        let len = store.len().map_err(io_err(name, "stat", 0))?;
        let cs = u64::from(header.cluster_size);
        let file_clusters = len / cs;
        let virtual_clusters = header.virtual_clusters();
        let mut owner: HashMap<u32, u64> = HashMap::new();
        let mut max_ref = 0u64;
        for (v, e) in bat.iter_mut().enumerate() {
            if !e.is_allocated() {
                continue;
            }
            let v = v as u64;
            let p = u64::from(e.cluster);
            let problem = if v >= virtual_clusters {
                Some(DiskError::BatEntryBeyondSize {
                    file: name.to_string(),
                    entry: v,
                    virtual_clusters,
                })
            } else if p * cs < HEADER_AREA
                || (p * cs < header.bat_end() && (p + 1) * cs > header.bat_offset)
            {
                Some(DiskError::BatEntryInMetadata {
                    file: name.to_string(),
                    entry: v,
                    cluster: e.cluster,
                })
            } else if p >= file_clusters {
                Some(DiskError::BatEntryPastEnd {
                    file: name.to_string(),
                    entry: v,
                    cluster: e.cluster,
                    file_clusters,
                })
            } else if let Some(&first) = owner.get(&e.cluster) {
                Some(DiskError::BatEntryShared {
                    file: name.to_string(),
                    first,
                    entry: v,
                    cluster: e.cluster,
                })
            } else if e.generation > header.generation {
                Some(DiskError::BatEntryGeneration {
                    file: name.to_string(),
                    entry: v,
                    generation: e.generation,
                    header_generation: header.generation,
                })
            } else {
                None
            };
            match problem {
                Some(p) => {
                    findings.push(p);
                    *e = BatEntry::default();
                }
                None => {
                    owner.insert(e.cluster, v);
                    max_ref = max_ref.max(p);
                }
            }
        }
        let next_free = header.bat_end().div_ceil(cs).max(max_ref + 1);
        Ok(Delta {
            store,
            name: name.to_string(),
            header,
            header_slot,
            bat,
            blocks,
            dirty: BTreeSet::new(),
            next_free,
            unsynced: false,
            damaged_copies,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }
    pub fn id(&self) -> DeltaId {
        self.header.id
    }
    pub fn cluster_size(&self) -> u32 {
        self.header.cluster_size
    }
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }
    pub fn generation(&self) -> u32 {
        self.header.generation
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    /// BAT blocks read from their older copy because the newer one was
    /// damaged (torn by a crash during a flush, or bad media).
    pub fn damaged_copies(&self) -> u32 {
        self.damaged_copies
    }
    /// The first cluster number the next allocation takes.
    pub fn next_free(&self) -> u64 {
        self.next_free
    }

    /// The entry of virtual cluster `v`, if this delta holds it.
    pub fn entry(&self, v: u64) -> Option<BatEntry> {
        if v >= self.header.virtual_clusters() {
            return None;
        }
        self.bat
            .get(v as usize)
            .copied()
            .filter(BatEntry::is_allocated)
    }

    /// Every allocated virtual cluster with its entry.
    pub fn entries(&self) -> impl Iterator<Item = (u64, BatEntry)> + '_ {
        self.bat
            .iter()
            .take(self.header.virtual_clusters() as usize)
            .enumerate()
            .filter(|(_, e)| e.is_allocated())
            .map(|(v, e)| (v as u64, *e))
    }

    /// Reads `buf.len()` bytes at `offset` inside virtual cluster `v`, which
    /// this delta must hold.
    pub fn read(&self, v: u64, offset: u32, buf: &mut [u8]) -> Result<()> {
        let e = self.entry(v).ok_or(DiskError::OutOfRange {
            offset: v,
            len: buf.len() as u64,
            size: self.header.virtual_size,
        })?;
        let at = u64::from(e.cluster) * u64::from(self.header.cluster_size) + u64::from(offset);
        self.store
            .read_at(buf, at)
            .map_err(io_err(&self.name, "read cluster", at))
    }

    /// Writes into virtual cluster `v`, which this delta holds, in place.
    pub fn write_in_place(
        &mut self,
        v: u64,
        offset: u32,
        data: &[u8],
        generation: u32,
    ) -> Result<()> {
        let Some(e) = self.entry(v) else {
            return Err(DiskError::OutOfRange {
                offset: v,
                len: data.len() as u64,
                size: self.header.virtual_size,
            });
        };
        let at = u64::from(e.cluster) * u64::from(self.header.cluster_size) + u64::from(offset);
        self.store
            .write_at(data, at)
            .map_err(io_err(&self.name, "write cluster", at))?;
        self.unsynced = true;
        if e.generation < generation {
            self.set_entry(
                v,
                BatEntry {
                    cluster: e.cluster,
                    generation,
                },
            );
        }
        Ok(())
    }

    /// Writes a whole cluster for virtual cluster `v` into a fresh physical
    /// cluster; the BAT on disk learns of it at the next [`Delta::flush`].
    pub fn write_new(&mut self, v: u64, data: &[u8], generation: u32) -> Result<()> {
        debug_assert_eq!(data.len(), self.header.cluster_size as usize);
        if v >= self.header.virtual_clusters() {
            return Err(DiskError::OutOfRange {
                offset: v,
                len: data.len() as u64,
                size: self.header.virtual_size,
            });
        }
        let p = self.next_free;
        let Ok(cluster) = u32::try_from(p) else {
            return Err(DiskError::DeltaFull {
                file: self.name.clone(),
            });
        };
        let at = p * u64::from(self.header.cluster_size);
        self.store
            .write_at(data, at)
            .map_err(io_err(&self.name, "write cluster", at))?;
        self.next_free += 1;
        self.unsynced = true;
        self.set_entry(
            v,
            BatEntry {
                cluster,
                generation,
            },
        );
        Ok(())
    }

    /// Writes a whole cluster for `v`: in place if held, else fresh.
    pub fn write_cluster(&mut self, v: u64, data: &[u8], generation: u32) -> Result<()> {
        if self.entry(v).is_some() {
            self.write_in_place(v, 0, data, generation)
        } else {
            self.write_new(v, data, generation)
        }
    }

    fn set_entry(&mut self, v: u64, e: BatEntry) {
        self.bat[v as usize] = e;
        self.dirty.insert((v / ENTRIES_PER_BLOCK as u64) as u32);
    }

    /// Whether writes wait for a flush.
    pub fn needs_flush(&self) -> bool {
        self.unsynced || !self.dirty.is_empty()
    }

    /// Makes every write durable: sync the data, then write the dirty BAT
    /// blocks into their spare copies, then sync again.
    pub fn flush(&mut self) -> Result<()> {
        if !self.needs_flush() {
            return Ok(());
        }
        self.store
            .sync()
            .map_err(io_err(&self.name, "sync data", 0))?;
        let mut written = Vec::with_capacity(self.dirty.len());
        for &b in &self.dirty {
            let st = self.blocks[b as usize];
            let slot = 1 - st.slot;
            let seq = st.seq + 1;
            let start = b as usize * ENTRIES_PER_BLOCK;
            let bytes = bat::encode_block(b, seq, &self.bat[start..start + ENTRIES_PER_BLOCK]);
            let off = self.header.bat_offset
                + u64::from(b) * BAT_PAIR_LEN
                + u64::from(slot) * BAT_BLOCK_LEN as u64;
            self.store
                .write_at(&bytes, off)
                .map_err(io_err(&self.name, "write BAT", off))?;
            written.push((b, BlockState { slot, seq }));
        }
        self.store
            .sync()
            .map_err(io_err(&self.name, "sync BAT", 0))?;
        for (b, st) in written {
            self.blocks[b as usize] = st;
        }
        self.dirty.clear();
        self.unsynced = false;
        Ok(())
    }

    /// Writes `header` (its seq bumped) into the spare header slot and syncs.
    fn write_header(&mut self, mut header: DeltaHeader) -> Result<()> {
        header.seq = self.header.seq + 1;
        let slot = 1 - self.header_slot;
        header::write_header_slot(&self.store, &self.name, &header, slot)?;
        self.header = header;
        self.header_slot = slot;
        Ok(())
    }

    /// Sets the write generation (durably).
    pub fn set_generation(&mut self, generation: u32) -> Result<()> {
        let h = DeltaHeader {
            generation,
            ..self.header
        };
        self.write_header(h)
    }

    /// Grows the virtual size. When the BAT has no room, a larger one (twice
    /// the blocks, or what is needed) is written at the end of the file and
    /// synced before the header switches to it; the old region is left
    /// unused.
    pub fn grow(&mut self, new_size: u64) -> Result<()> {
        let cur = self.header.virtual_size;
        if new_size < cur {
            return Err(DiskError::Shrink {
                current: cur,
                requested: new_size,
            });
        }
        check_virtual_size(&self.name, new_size, self.header.cluster_size)?;
        if new_size == cur {
            return Ok(());
        }
        let cs = u64::from(self.header.cluster_size);
        let needed = new_size.div_ceil(cs);
        if needed <= self.header.bat_capacity() {
            let h = DeltaHeader {
                virtual_size: new_size,
                ..self.header
            };
            return self.write_header(h);
        }
        self.flush()?;
        let blocks = bat::blocks_for(needed)
            .max(2 * u64::from(self.header.bat_blocks))
            .min(u64::from(MAX_BAT_BLOCKS)) as u32;
        let offset = self.next_free * cs;
        let mut table = self.bat.clone();
        table.resize(blocks as usize * ENTRIES_PER_BLOCK, BatEntry::default());
        let zero = vec![0u8; BAT_BLOCK_LEN];
        for b in 0..blocks {
            let start = b as usize * ENTRIES_PER_BLOCK;
            let copy = bat::encode_block(b, 1, &table[start..start + ENTRIES_PER_BLOCK]);
            let off = offset + u64::from(b) * BAT_PAIR_LEN;
            for (bytes, at) in [(&copy, off), (&zero, off + BAT_BLOCK_LEN as u64)] {
                self.store
                    .write_at(bytes, at)
                    .map_err(io_err(&self.name, "write BAT", at))?;
            }
        }
        self.store
            .sync()
            .map_err(io_err(&self.name, "sync BAT", offset))?;
        let h = DeltaHeader {
            virtual_size: new_size,
            bat_offset: offset,
            bat_blocks: blocks,
            ..self.header
        };
        self.write_header(h)?;
        self.bat = table;
        self.blocks = vec![BlockState { slot: 0, seq: 1 }; blocks as usize];
        self.next_free = h.bat_end().div_ceil(cs);
        Ok(())
    }
}

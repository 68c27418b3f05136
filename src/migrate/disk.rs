//! A container's ploop-like disk in a migration: its delta chain
//! (`docs/disk-format.md`) crosses on the `DiskClusters 0` stream, a tar
//! of the chain directory inside a blob stream (checksummed frames,
//! compressed as the migration's other streams).
//!
//! ```text
//!  source                                         destination
//!  before the freeze (the container runs):
//!    snapshot: the chain switches to a new top;   containers/NAME/disk/chain/
//!    every delta below it is read-only now ──────▶  <id>.delta (each a plain
//!    and is sent                                     file, new, capped)
//!  checkpoint (frozen; it takes a snapshot of
//!    its own, recorded in the image)
//!  the deltas not sent yet, then the manifest ───▶  chain.manifest last
//!                                                 check_chain: consistent,
//!                                                 virtual size within the
//!                                                 config's disk size
//!                                                 restore reverts the chain
//!                                                 to the checkpoint's snapshot
//! ```
//!
//! So the frozen window carries only what was written since the first
//! snapshot. Nothing lands outside the chain directory of the container
//! being received: entries must be regular files named `chain.manifest`
//! or `NAME.delta` (one plain component), each new, all of them within
//! the size the destination allows.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cr_formats::disk::manifest::CHAIN_MANIFEST;
use cr_formats::{BlobWriter, ChainManifest, FsDir};
use cr_transport::protocol::StreamDecl;
use cr_transport::StreamKind;

use crate::container::Container;
use crate::error::{Error, IoContext, Result};
use crate::migrate::{Wire, WireOptions};
use crate::storage::disk::ContainerDisk;
use crate::storage::DiskPaths;

/// The disk stream's declaration (for a container with a disk).
pub const DISK_STREAM: StreamDecl = StreamDecl {
    kind: StreamKind::DiskClusters,
    index: 0,
};

/// Bytes of the chain's files (the Offer's `sizes.disk`).
pub fn size_of(container: &Container) -> u64 {
    crate::dump::checkpoint::dir_size(&DiskPaths::new(&container.dir).chain)
}

/// Sends a container's chain: the read-only part at [`DiskSender::start`],
/// the rest at [`DiskSender::finish`].
pub struct DiskSender {
    tar: tar::Builder<BlobWriter<Wire>>,
    chain: PathBuf,
    sent: BTreeSet<String>,
    what: String,
}

impl DiskSender {
    /// Takes a snapshot (the container is frozen about a millisecond for
    /// it) and sends every delta below the new top on `tx`.
    pub fn start(
        container: &Container,
        tx: Wire,
        wire: &WireOptions,
        peer: &str,
    ) -> Result<DiskSender> {
        let what = format!("the disk stream to {peer}");
        let blob = BlobWriter::new(tx, wire.compression, wire.gate.clone())
            .map_err(|e| Error::stream(what.as_str(), e))?;
        let mut tar = tar::Builder::new(blob);
        tar.mode(tar::HeaderMode::Deterministic);
        let mut sender = DiskSender {
            tar: {
                tar.follow_symlinks(false);
                tar
            },
            chain: DiskPaths::new(&container.dir).chain,
            sent: BTreeSet::new(),
            what,
        };
        ContainerDisk::open(container)?.snapshot("migration")?;
        let manifest = read_manifest(&sender.chain)?;
        for delta in manifest.deltas.iter().filter(|d| d.read_only) {
            sender.send(&delta.file)?;
        }
        Ok(sender)
    }

    fn send(&mut self, file: &str) -> Result<()> {
        let path = self.chain.join(file);
        if super::source::interrupted() {
            return Err(Error::Invalid(format!("{}: cancelled", self.what)));
        }
        self.tar
            .append_path_with_name(&path, file)
            .ctx("sending", &path)?;
        self.sent.insert(file.to_string());
        Ok(())
    }

    /// The checkpoint is done (the container is frozen): the deltas not
    /// sent yet, then the manifest; returns the stream for its FIN.
    pub fn finish(mut self) -> Result<Wire> {
        let manifest = read_manifest(&self.chain)?;
        for delta in &manifest.deltas {
            if !self.sent.contains(&delta.file) {
                self.send(&delta.file)?;
            }
        }
        self.send(CHAIN_MANIFEST)?;
        let what = self.what.clone();
        let blob = self
            .tar
            .into_inner()
            .map_err(|e| Error::stream(what.as_str(), e))?;
        let (_, tx) = blob.finish().map_err(|e| Error::stream(what.as_str(), e))?;
        Ok(tx)
    }
}

/// A container's disk chain as it was before a migration snapshotted it.
/// Dropped while armed (the migration failed and the container stays
/// here), it folds every delta above the top of then back into it, so
/// the chain is as before, not two snapshots longer; [`DiskUndo::keep`]
/// disarms it (the container went, or may have).
pub struct DiskUndo {
    container: Container,
    /// The top delta's id before the migration; None: nothing to undo.
    base: Option<String>,
}

impl DiskUndo {
    /// Remembers the chain's top now (nothing for a container without a
    /// disk).
    pub fn new(container: &Container) -> Result<DiskUndo> {
        let base = match container.config.disk {
            Some(_) => {
                let chain = DiskPaths::new(&container.dir).chain;
                let manifest = read_manifest(&chain)?;
                let top = manifest.top().ok_or_else(|| {
                    Error::Invalid(format!("{}: the chain has no delta", chain.display()))
                })?;
                Some(top.id.to_string())
            }
            None => None,
        };
        Ok(DiskUndo {
            container: container.clone(),
            base,
        })
    }

    /// The top delta's id before the migration (None: no disk), for the
    /// migration's record.
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// The snapshots stay.
    pub fn keep(mut self) {
        self.base = None;
    }
}

impl Drop for DiskUndo {
    fn drop(&mut self) {
        let Some(base) = self.base.take() else {
            return;
        };
        if let Err(e) = fold_back(&self.container, &base) {
            // Nothing is lost: the snapshots hold the same files.
            eprintln!("cr migrate: {e}");
        }
    }
}

/// Labels of the snapshots a migration takes: its own before the
/// transfer, the checkpoint's in the frozen window.
const MIGRATION_LABELS: [&str; 2] = ["migration", "checkpoint"];

/// Folds the deltas a migration added above `base` (the top before it)
/// back into it, online. Only when every one of them is the migration's
/// own (by label): a snapshot a user took meanwhile is kept, and the error
/// says how to fold by hand. Returns how many deltas went.
pub fn fold_back(container: &Container, base: &str) -> Result<u32> {
    let name = &container.name;
    let by_hand = format!("`cr disk merge {name} --into {base}` folds them");
    let disk = ContainerDisk::open(container)?;
    let deltas = disk.deltas()?;
    let above = deltas
        .iter()
        .position(|d| d.id == base)
        .map(|at| &deltas[at + 1..])
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the disk of {name} no longer has delta {base}: the migration's snapshots stay"
            ))
        })?;
    if let Some(other) = above
        .iter()
        .find(|d| !MIGRATION_LABELS.contains(&d.label.as_str()))
    {
        return Err(Error::Invalid(format!(
            "the disk of {name} keeps the migration's snapshots: delta {} ({:?}) was not made by it; {by_hand}",
            other.id, other.label
        )));
    }
    disk.merge_into(base).map_err(|e| {
        Error::Invalid(format!(
            "the disk of {name} keeps the migration's snapshots (folding them back failed: {e}); {by_hand}"
        ))
    })
}

fn read_manifest(chain: &Path) -> Result<ChainManifest> {
    let path = chain.join(CHAIN_MANIFEST);
    let bytes = fs::read(&path).ctx("reading", &path)?;
    ChainManifest::decode(CHAIN_MANIFEST, &bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Where a received chain goes and what it may be.
pub struct DiskTarget {
    /// `containers/NAME/disk/chain` of the container being received.
    pub chain: PathBuf,
    /// The config's disk size: the chain's virtual size may not exceed it.
    pub max_virtual: u64,
    /// Bytes the stream may carry.
    pub cap: u64,
}

/// Copies `input` into the new, empty file `out`, leaving every 4 KiB
/// block of zeros a hole: a delta's unwritten clusters stay unallocated on
/// the destination as they were on the source (the stream carries them as
/// zeros or as a GNU sparse entry's gaps, which read back as zeros).
/// Returns the bytes copied.
fn copy_sparse(input: &mut impl Read, out: &mut File) -> io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 64 * BLOCK];
    let mut at = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        // One write per run of blocks holding data, not one per block.
        let mut run: Option<usize> = None;
        for (i, block) in buf[..filled].chunks(BLOCK).enumerate() {
            let data = block.iter().any(|&b| b != 0);
            match (data, run) {
                (true, None) => run = Some(i * BLOCK),
                (false, Some(start)) => {
                    out.write_all_at(&buf[start..i * BLOCK], at + start as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            out.write_all_at(&buf[start..filled], at + start as u64)?;
        }
        at += filled as u64;
    }
    // A trailing hole still counts toward the file's length.
    out.set_len(at)?;
    Ok(at)
}

/// Whether `name` may be a file of a chain directory.
fn allowed_name(name: &str) -> bool {
    name == CHAIN_MANIFEST
        || name.strip_suffix(".delta").is_some_and(|stem| {
            !stem.is_empty()
                && !stem.starts_with('.')
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
}

/// Receives a chain from the tar in `input` into `target.chain` (which
/// must not hold one yet) and checks it.
pub fn receive(input: &mut impl Read, target: &DiskTarget, peer: &str) -> Result<()> {
    let bad = |what: String| Error::Invalid(format!("the disk stream from {peer}: {what}"));
    fs::create_dir_all(&target.chain).ctx("creating", &target.chain)?;
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    let mut manifest = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let name = path.to_str().unwrap_or_default().to_string();
        // Delta files are sparse: the archive may hold them as GNU sparse
        // entries, which read back whole.
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_gnu_sparse()) || !allowed_name(&name) {
            return Err(bad(format!(
                "{} is not a file of a disk chain",
                path.display()
            )));
        }
        if manifest {
            return Err(bad(format!("{name} after the manifest")));
        }
        manifest = name == CHAIN_MANIFEST;
        let dest = target.chain.join(&name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        copy_sparse(&mut entry, &mut out).map_err(|e| bad(format!("{name}: {e}")))?;
        out.sync_all().ctx("syncing", &dest)?;
    }
    if !manifest {
        return Err(bad("no chain.manifest".into()));
    }
    File::open(&target.chain)
        .and_then(|d| d.sync_all())
        .ctx("syncing", &target.chain)?;
    let report = cr_formats::check_chain(&FsDir::new(&target.chain));
    if !report.is_consistent() {
        let findings: Vec<String> = report
            .findings
            .iter()
            .take(3)
            .map(|f| f.to_string())
            .collect();
        return Err(bad(format!(
            "the chain is not consistent: {}",
            findings.join("; ")
        )));
    }
    let size = report.deltas.last().map_or(0, |d| d.virtual_size);
    if size > target.max_virtual {
        return Err(bad(format!(
            "a disk of {size} bytes, larger than the {} bytes of the container's config",
            target.max_virtual
        )));
    }
    Ok(())
}

/// Removes a received chain again (the migration failed before the restore
/// took the directory over). Only a container directory that holds no
/// config is removed: it is this migration's.
pub fn remove_partial(container_dir: &Path) {
    if container_dir.exists() && !container_dir.join("config.toml").exists() {
        let _ = fs::remove_dir_all(container_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chain_files_are_allowed() {
        for ok in ["chain.manifest", "0123abcd.delta", "a-b_c.1.delta"] {
            assert!(allowed_name(ok), "{ok}");
        }
        for bad in [
            "../x.delta",
            "x/y.delta",
            ".delta",
            "..delta",
            "/etc/passwd",
            "config.toml",
            "chain.manifest.tmp",
            "",
        ] {
            assert!(!allowed_name(bad), "{bad}");
        }
    }

    #[test]
    fn zero_blocks_stay_holes_and_the_bytes_read_back_the_same() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB of data, 8 MiB of zeros, one odd-sized tail with data,
        // then 2 MiB of zeros at the end (the length must still count).
        let mut data = vec![0x5au8; 1 << 20];
        data.extend(std::iter::repeat_n(0u8, 8 << 20));
        data.extend_from_slice(&[1, 2, 3]);
        data.extend(std::iter::repeat_n(0u8, 2 << 20));
        let path = dir.path().join("x.delta");
        let mut out = File::create_new(&path).unwrap();
        let n = copy_sparse(&mut data.as_slice(), &mut out).unwrap();
        drop(out);
        assert_eq!(n, data.len() as u64);
        assert_eq!(fs::read(&path).unwrap(), data);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), data.len() as u64);
        // The data blocks only (1 MiB and one 4 KiB block), not 11 MiB.
        let allocated = meta.blocks() * 512;
        assert!(
            allocated <= (1 << 20) + (64 << 10),
            "{allocated} bytes allocated for 1 MiB of data"
        );
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_hostile_archive_writes_nothing_outside_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let target = DiskTarget {
            chain: dir.path().join("c/disk/chain"),
            max_virtual: 1 << 30,
            cap: 1 << 30,
        };
        let archive = tar_of(&[("config.toml", b"x")]);
        let err = receive(&mut archive.as_slice(), &target, "p").unwrap_err();
        assert!(
            err.to_string().contains("not a file of a disk chain"),
            "{err}"
        );
        assert!(!dir.path().join("c/disk/chain/config.toml").exists());
        // A manifest that is garbage: refused by the check.
        let archive = tar_of(&[("a.delta", b"junk"), ("chain.manifest", b"junk")]);
        let target2 = DiskTarget {
            chain: dir.path().join("d/disk/chain"),
            max_virtual: 1 << 30,
            cap: 1 << 30,
        };
        let err = receive(&mut archive.as_slice(), &target2, "p").unwrap_err();
        assert!(err.to_string().contains("not consistent"), "{err}");
        let archive = tar_of(&[("a.delta", b"junk")]);
        let target3 = DiskTarget {
            chain: dir.path().join("e/disk/chain"),
            max_virtual: 1 << 30,
            cap: 1 << 30,
        };
        let err = receive(&mut archive.as_slice(), &target3, "p").unwrap_err();
        assert!(err.to_string().contains("no chain.manifest"), "{err}");
        remove_partial(&dir.path().join("e"));
        assert!(!dir.path().join("e").exists());
    }
}

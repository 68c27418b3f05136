//! Where a chain's files live: the [`ChainDir`] trait, for a directory on a
//! file system ([`FsDir`]) and for memory ([`MemDir`], which can crash).
//!
//! ```text
//!   CHAIN_DIR/
//!     chain.manifest          the chain (replaced atomically)
//!     <delta id>.delta        one file per delta
//! ```
//!
//! The chain reads and writes its deltas only through [`super::Storage`]; the
//! directory opens, creates and removes them and replaces the manifest:
//! write a temporary file, sync it, rename it over the manifest, sync the
//! directory. Ids and timestamps come from here too, so that memory tests
//! are deterministic.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::manifest::CHAIN_MANIFEST;
use super::storage::{CrashControl, CrashMode, CrashStore, Storage};
use super::DeltaId;

/// A directory holding a chain.
pub trait ChainDir {
    type Store: Storage;
    /// Opens an existing delta file.
    fn open(&self, name: &str, writable: bool) -> io::Result<Self::Store>;
    /// Creates a new, empty delta file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Self::Store>;
    /// Removes a delta file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The manifest's bytes.
    fn read_manifest(&self) -> io::Result<Vec<u8>>;
    /// Replaces the manifest atomically and durably.
    fn replace_manifest(&self, bytes: &[u8]) -> io::Result<()>;
    /// A fresh delta id.
    fn new_id(&self) -> DeltaId;
    /// Now, for creation times.
    fn now_unix_ns(&self) -> u64;
    /// How errors name `file` (a path).
    fn describe(&self, file: &str) -> String;
}

/// A chain in a directory of the file system.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FsDir { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ChainDir for FsDir {
    type Store = File;
    fn open(&self, name: &str, writable: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.path.join(name))
    }
    fn create(&self, name: &str) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }
    fn read_manifest(&self) -> io::Result<Vec<u8>> {
        std::fs::read(self.path.join(CHAIN_MANIFEST))
    }
    fn replace_manifest(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.join(format!("{CHAIN_MANIFEST}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path.join(CHAIN_MANIFEST))?;
        // The rename, and any delta created since, are durable with the directory.
        File::open(&self.path)?.sync_all()
    }
    fn new_id(&self) -> DeltaId {
        let now = self.now_unix_ns();
        let mut id = [0u8; 16];
        for (i, half) in id.chunks_mut(8).enumerate() {
            // RandomState is seeded from the OS once per thread and differs per call.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now);
            h.write_u32(std::process::id());
            h.write_usize(i);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        DeltaId(id)
    }
    fn now_unix_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    fn describe(&self, file: &str) -> String {
        self.path.join(file).display().to_string()
    }
}

#[derive(Debug, Default)]
struct MemFiles {
    files: BTreeMap<String, CrashStore>,
    manifest: Option<Vec<u8>>,
    next_id: u64,
}

/// A chain in memory. Its files are [`CrashStore`]s sharing one
/// [`CrashControl`]; the manifest replacement counts as one operation and
/// is atomic. [`MemDir::after_crash`] gives the directory a restart finds.
#[derive(Debug, Clone)]
pub struct MemDir {
    inner: Arc<Mutex<MemFiles>>,
    ctl: Arc<CrashControl>,
}

impl Default for MemDir {
    fn default() -> Self {
        Self::new()
    }
}

impl MemDir {
    pub fn new() -> Self {
        MemDir {
            inner: Arc::new(Mutex::new(MemFiles::default())),
            ctl: CrashControl::new(),
        }
    }
    fn files(&self) -> std::sync::MutexGuard<'_, MemFiles> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The crash switch of every file in here.
    pub fn control(&self) -> &Arc<CrashControl> {
        &self.ctl
    }
    /// The names of the files, the manifest not included.
    pub fn file_names(&self) -> Vec<String> {
        self.files().files.keys().cloned().collect()
    }
    /// The current bytes of a file.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.files().files.get(name).map(CrashStore::bytes)
    }
    /// Replaces a file's bytes (durably), for tests that damage a chain.
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) {
        let store = CrashStore::new(bytes, self.ctl.clone());
        self.files().files.insert(name.to_string(), store);
    }
    /// Replaces the manifest's bytes, valid or not.
    pub fn put_manifest(&self, bytes: Vec<u8>) {
        self.files().manifest = Some(bytes);
    }
    /// What a restart finds if the process dies now: each file as
    /// [`CrashStore::image_after_crash`] leaves it, the last manifest.
    pub fn after_crash(&self, mode: CrashMode) -> MemDir {
        let f = self.files();
        let out = MemDir::new();
        {
            let mut o = out.files();
            for (i, (name, store)) in f.files.iter().enumerate() {
                let mode = match mode {
                    CrashMode::Random(seed) => {
                        CrashMode::Random(seed.wrapping_add(i as u64 * 0x9e37_79b9))
                    }
                    m => m,
                };
                let store = CrashStore::new(store.image_after_crash(mode), out.ctl.clone());
                o.files.insert(name.clone(), store);
            }
            o.manifest = f.manifest.clone();
            o.next_id = f.next_id;
        }
        out
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl ChainDir for MemDir {
    type Store = CrashStore;
    fn open(&self, name: &str, _writable: bool) -> io::Result<CrashStore> {
        self.files()
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }
    fn create(&self, name: &str) -> io::Result<CrashStore> {
        self.ctl.tick()?;
        let mut f = self.files();
        if f.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let store = CrashStore::new(Vec::new(), self.ctl.clone());
        f.files.insert(name.to_string(), store.clone());
        Ok(store)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.ctl.tick()?;
        self.files()
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }
    fn read_manifest(&self) -> io::Result<Vec<u8>> {
        self.files()
            .manifest
            .clone()
            .ok_or_else(|| not_found(CHAIN_MANIFEST))
    }
    fn replace_manifest(&self, bytes: &[u8]) -> io::Result<()> {
        self.ctl.tick()?;
        self.files().manifest = Some(bytes.to_vec());
        Ok(())
    }
    fn new_id(&self) -> DeltaId {
        let mut f = self.files();
        f.next_id += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&f.next_id.to_be_bytes());
        DeltaId(id)
    }
    fn now_unix_ns(&self) -> u64 {
        self.files().next_id * 1_000_000_000
    }
    fn describe(&self, file: &str) -> String {
        format!("mem:{file}")
    }
}

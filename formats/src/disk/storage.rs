//! Where a delta's bytes live: the [`Storage`] trait (positional reads and
//! writes, `sync`, `len`, `set_len`), implemented for [`std::fs::File`], for
//! memory ([`MemStore`]) and for a store that can crash ([`CrashStore`]).
//!
//! The crashing store models what a disk keeps after a power cut: every write
//! since the last [`Storage::sync`] may be kept, dropped or torn (a prefix of
//! it kept), in any combination. A shared [`CrashControl`] counts the mutating
//! operations (write, sync, set_len) of all stores of one test and makes
//! operation number `n` and all after it fail, as if the process died there;
//! [`CrashStore::image_after_crash`] then gives the bytes a restart would find.
//!
//! ```text
//!   op:        write  write  sync  write  set_len  write(fails: dead)
//!   durable:   ----------------^   (everything before the sync)
//!   pending:                       [ write, set_len, write ]  kept/dropped/torn
//! ```

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Positional storage for one delta file.
#[allow(clippy::len_without_is_empty)]
pub trait Storage {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every earlier write durable.
    fn sync(&self) -> io::Result<()>;
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl Storage for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

fn read_slice(bytes: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| eof())?;
    let end = start.checked_add(buf.len()).ok_or_else(eof)?;
    let src = bytes.get(start..end).ok_or_else(eof)?;
    buf.copy_from_slice(src);
    Ok(())
}

fn write_slice(bytes: &mut Vec<u8>, buf: &[u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| too_big())?;
    let end = start.checked_add(buf.len()).ok_or_else(too_big)?;
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(buf);
    Ok(())
}

fn resize(bytes: &mut Vec<u8>, len: u64) -> io::Result<()> {
    bytes.resize(usize::try_from(len).map_err(|_| too_big())?, 0);
    Ok(())
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end")
}

fn too_big() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "offset too large for memory")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file in memory; clones share the bytes.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemStore {
            bytes: Arc::new(Mutex::new(bytes)),
        }
    }
    /// A copy of the current bytes.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.bytes).clone()
    }
}

impl Storage for MemStore {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_slice(&lock(&self.bytes), buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_slice(&mut lock(&self.bytes), buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.bytes).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        resize(&mut lock(&self.bytes), len)
    }
}

/// Counts the mutating operations of a group of [`CrashStore`]s and kills
/// them at a chosen one.
#[derive(Debug)]
pub struct CrashControl {
    ops: AtomicU64,
    fail_at: AtomicU64,
}

impl Default for CrashControl {
    fn default() -> Self {
        CrashControl {
            ops: AtomicU64::new(0),
            fail_at: AtomicU64::new(u64::MAX),
        }
    }
}

impl CrashControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Operation number `n` (counting from the current count) and every
    /// later one fail.
    pub fn crash_after(&self, n: u64) {
        let now = self.ops.load(Ordering::SeqCst);
        self.fail_at.store(now.saturating_add(n), Ordering::SeqCst);
    }
    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.ops.load(Ordering::SeqCst) >= self.fail_at.load(Ordering::SeqCst)
    }
    /// Mutating operations counted so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }
    /// Counts one operation; `Err` when the store is dead.
    pub fn tick(&self) -> io::Result<()> {
        if self.crashed() {
            return Err(dead());
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_at.load(Ordering::SeqCst) {
            return Err(dead());
        }
        Ok(())
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

/// What survives the crash of a [`CrashStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was synced.
    DropUnsynced,
    /// Everything, as if the cache had been written back just in time.
    KeepUnsynced,
    /// Everything but the last unsynced operation, which is torn in half.
    TearLast,
    /// Each unsynced operation kept, dropped or torn, chosen by the seed.
    Random(u64),
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

/// A file in memory that remembers what was synced and can crash.
#[derive(Debug, Clone)]
pub struct CrashStore {
    state: Arc<Mutex<CrashState>>,
    ctl: Arc<CrashControl>,
}

impl CrashStore {
    /// A durable file holding `bytes`, killed by `ctl`.
    pub fn new(bytes: Vec<u8>, ctl: Arc<CrashControl>) -> Self {
        CrashStore {
            state: Arc::new(Mutex::new(CrashState {
                current: bytes.clone(),
                durable: bytes,
                pending: Vec::new(),
            })),
            ctl,
        }
    }

    /// The bytes as the running process sees them.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.state).current.clone()
    }

    /// The bytes a restart finds after a crash now.
    pub fn image_after_crash(&self, mode: CrashMode) -> Vec<u8> {
        let st = lock(&self.state);
        let mut out = st.durable.clone();
        let last = st.pending.len().wrapping_sub(1);
        let mut rng = match mode {
            CrashMode::Random(seed) => seed | 1,
            _ => 1,
        };
        for (i, op) in st.pending.iter().enumerate() {
            // 0 drop, 1 keep, 2 tear.
            let fate = match mode {
                CrashMode::DropUnsynced => 0,
                CrashMode::KeepUnsynced => 1,
                CrashMode::TearLast if i == last => 2,
                CrashMode::TearLast => 1,
                CrashMode::Random(_) => xorshift(&mut rng) % 3,
            };
            match (op, fate) {
                (_, 0) => {}
                (Pending::SetLen(len), _) => {
                    let _ = resize(&mut out, *len);
                }
                (Pending::Write { offset, data }, 1) => {
                    let _ = write_slice(&mut out, data, *offset);
                }
                (Pending::Write { offset, data }, _) => {
                    let cut = (xorshift(&mut rng) as usize) % data.len().max(1);
                    let cut = if mode == CrashMode::TearLast {
                        data.len() / 2
                    } else {
                        cut
                    };
                    let _ = write_slice(&mut out, &data[..cut], *offset);
                }
            }
        }
        out
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

impl Storage for CrashStore {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.ctl.crashed() {
            return Err(dead());
        }
        read_slice(&lock(&self.state).current, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let alive = self.ctl.tick();
        let mut st = lock(&self.state);
        // The write that the crash interrupts was issued: it may land torn.
        st.pending.push(Pending::Write {
            offset,
            data: buf.to_vec(),
        });
        alive?;
        write_slice(&mut st.current, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.ctl.tick()?;
        let mut st = lock(&self.state);
        st.durable = st.current.clone();
        st.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        if self.ctl.crashed() {
            return Err(dead());
        }
        Ok(lock(&self.state).current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let alive = self.ctl.tick();
        let mut st = lock(&self.state);
        st.pending.push(Pending::SetLen(len));
        alive?;
        resize(&mut st.current, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_and_models_unsynced() {
        let ctl = CrashControl::new();
        let s = CrashStore::new(Vec::new(), ctl.clone());
        s.write_at(b"aaaa", 0).unwrap();
        s.sync().unwrap();
        s.write_at(b"bbbb", 0).unwrap();
        assert_eq!(s.image_after_crash(CrashMode::DropUnsynced), b"aaaa");
        assert_eq!(s.image_after_crash(CrashMode::KeepUnsynced), b"bbbb");
        assert_eq!(s.image_after_crash(CrashMode::TearLast), b"bbaa");
        ctl.crash_after(1);
        s.write_at(b"cc", 4).unwrap();
        assert!(s.write_at(b"dd", 6).is_err());
        assert!(s.sync().is_err());
        assert!(ctl.crashed());
        // The interrupted write may still land.
        assert_eq!(s.image_after_crash(CrashMode::KeepUnsynced), b"bbbbccdd");
        assert_eq!(s.image_after_crash(CrashMode::DropUnsynced), b"aaaa");
    }

    #[test]
    fn mem_store_reads_past_end_fail() {
        let s = MemStore::new();
        s.write_at(b"xy", 2).unwrap();
        assert_eq!(s.bytes(), b"\0\0xy");
        let mut b = [0u8; 3];
        assert!(s.read_at(&mut b, 2).is_err());
        s.set_len(1).unwrap();
        assert_eq!(s.len().unwrap(), 1);
    }
}

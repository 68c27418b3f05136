//! Blob streams: opaque bytes (a tar archive, the files of a disk chain) cut
//! into the checksummed frames of [`crate::frame`], each compressed or not,
//! so that what a migration sends beside the image is checked end to end
//! like the image itself.
//!
//! ```text
//!  stream := stream header (kind 3 blob) | blob frame 0 | ... | trailer
//!  blob frame payload: the next BLOB_FRAME bytes of the data, raw, or one
//!                      zstd frame of them (flag bit 0)
//!
//!  BlobWriter::write ─ fills BLOB_FRAME bytes ─▶ zstd? (Compression, and the
//!                      CompressGate when there is one) ─▶ FrameWriter ─▶ W
//!  BlobReader::read  ◀─ verified, decompressed payload ◀─ FrameReader ◀─ R
//! ```
//!
//! [`BlobReader::read`] returns `Ok(0)` only once the trailer has been
//! verified and the input has ended after it: a stream cut short, a frame
//! out of place or a flipped bit is an error, never a short blob.
//!
//! [`CompressGate`] decides frame by frame whether compressing pays: it
//! learns how fast zstd goes on this data and how fast the link takes
//! bytes (from the time writers spend blocked on it), and compresses only
//! while zstd is faster than the link and the data shrinks. The page
//! writer uses the same gate ([`crate::PageWriter::set_gate`]).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{FormatError, Result};
use crate::frame::{
    checksum, Compression, FrameKind, FrameReader, FrameWriter, StreamHeader, StreamKind,
    StreamStats,
};

/// Data bytes per blob frame.
pub const BLOB_FRAME: usize = 1 << 20;

/// Writes a blob stream to `W`.
pub struct BlobWriter<W: Write> {
    frames: FrameWriter<W>,
    buf: Vec<u8>,
    packer: Packer,
}

impl<W: Write> BlobWriter<W> {
    /// Writes the stream header. `gate`, if given, decides per frame
    /// whether a `Compression::Zstd` stream compresses it.
    pub fn new(w: W, compression: Compression, gate: Option<Arc<CompressGate>>) -> Result<Self> {
        let header = StreamHeader::new(StreamKind::Blob, compression.codec(), 0);
        Ok(BlobWriter {
            frames: FrameWriter::new(w, header)?,
            buf: Vec::with_capacity(BLOB_FRAME),
            packer: Packer::new(compression, gate)?,
        })
    }

    fn emit(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let compressed = self.packer.compress(&self.buf)?;
        let payload = if compressed {
            self.packer.output()
        } else {
            &self.buf
        };
        self.frames.write_frame(
            FrameKind::Blob,
            0,
            compressed,
            self.buf.len(),
            payload,
            checksum(payload),
        )?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and the trailer; returns the stream's
    /// figures and the writer underneath.
    pub fn finish(mut self) -> Result<(StreamStats, W)> {
        self.emit()?;
        self.frames.finish_into_inner()
    }
}

fn to_io(e: FormatError) -> io::Error {
    match e {
        FormatError::Io { source, .. } => source,
        other => io::Error::other(other),
    }
}

impl<W: Write> Write for BlobWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOB_FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOB_FRAME {
            self.emit().map_err(to_io)?;
        }
        Ok(n)
    }

    /// Flushes the writer underneath; a partial frame stays buffered.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// zstd with a [`CompressGate`]: compresses a payload when the gate says
/// it pays, and keeps the result only when it is smaller. Shared by the
/// blob writer and the page store's chunk encoder.
pub(crate) struct Packer {
    cctx: Option<zstd::bulk::Compressor<'static>>,
    gate: Option<Arc<CompressGate>>,
    out: Vec<u8>,
}

impl Packer {
    pub(crate) fn new(compression: Compression, gate: Option<Arc<CompressGate>>) -> Result<Self> {
        let cctx = match compression {
            Compression::None => None,
            Compression::Zstd { level } => Some(zstd::bulk::Compressor::new(level).map_err(
                |e| FormatError::Compress {
                    reason: e.to_string(),
                },
            )?),
        };
        Ok(Packer {
            cctx,
            gate,
            out: Vec::new(),
        })
    }

    pub(crate) fn set_gate(&mut self, gate: Arc<CompressGate>) {
        self.gate = Some(gate);
    }

    /// Compresses `raw` into [`Packer::output`] if the stream compresses
    /// and the gate agrees; true when that output is smaller than `raw`.
    pub(crate) fn compress(&mut self, raw: &[u8]) -> Result<bool> {
        let Some(cctx) = self.cctx.as_mut() else {
            return Ok(false);
        };
        if !self.gate.as_ref().is_none_or(|g| g.should_compress()) {
            return Ok(false);
        }
        let start = Instant::now();
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress_to_buffer(raw, &mut self.out)
            .map_err(|e| FormatError::Compress {
                reason: e.to_string(),
            })?;
        if let Some(g) = &self.gate {
            g.compressed(raw.len(), self.out.len(), start.elapsed());
        }
        Ok(self.out.len() < raw.len())
    }

    /// What the last [`Packer::compress`] that returned true made.
    pub(crate) fn output(&self) -> &[u8] {
        &self.out
    }

    /// [`Packer::output`], handed over.
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// Reads a blob stream from `R`, verifying every frame and the trailer.
pub struct BlobReader<R: Read> {
    frames: FrameReader<R>,
    data: Vec<u8>,
    pos: usize,
}

impl<R: Read> BlobReader<R> {
    /// Reads and checks the stream header.
    pub fn new(r: R) -> Result<Self> {
        Ok(BlobReader {
            frames: FrameReader::new(r, StreamKind::Blob)?,
            data: Vec::new(),
            pos: 0,
        })
    }

    /// The trailer's figures, once the whole stream has been read.
    pub fn complete(&self) -> Option<StreamStats> {
        self.frames.complete()
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.data.len() {
            match self.frames.next_frame() {
                Ok(Some(_)) => {
                    let spare = std::mem::take(&mut self.data);
                    self.data = self.frames.take_payload(spare);
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("blob stream: {e}"),
                    ))
                }
            }
        }
        let n = out.len().min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Whether compressing the next frame pays, learnt from the frames before.
///
/// Compressing makes a stream faster only when zstd takes raw bytes faster
/// than the link takes stored bytes and the data shrinks: with both running
/// in parallel, compressed throughput is `min(zstd, link / ratio)` against
/// `link` raw. The gate keeps smoothed figures of the three:
///
/// * zstd's speed and ratio, from [`CompressGate::compressed`] (frames it
///   compressed; while compression is off, one frame in
///   [`CompressGate::PROBE_EVERY`] is compressed anyway to keep them fresh);
/// * the link's speed, from [`CompressGate::sent`]: bytes a writer handed to
///   the link over the time it spent blocked doing so, in windows of at
///   least 4 MiB. A link that is not the bottleneck never blocks its writer
///   and so looks fast, which is right: compressing for it gains nothing.
///
/// Until zstd was measured it compresses; until the link was, it trusts
/// zstd (a link is rarely faster than one core of zstd level 1).
#[derive(Debug, Default)]
pub struct CompressGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct GateState {
    /// Raw bytes per second zstd took (smoothed).
    zstd: Option<f64>,
    /// Stored over raw bytes (smoothed).
    ratio: f64,
    /// Bytes per second the link took (smoothed).
    link: Option<f64>,
    window_bytes: u64,
    window_time: Duration,
    window_start: Option<Instant>,
    skipped: u32,
    /// Frames compressed and left raw, for reports.
    on: u64,
    off: u64,
}

/// What a gate decided, for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GateFigures {
    pub compressed_frames: u64,
    pub raw_frames: u64,
    /// Raw bytes per second zstd took, if measured.
    pub zstd_bytes_per_s: Option<f64>,
    /// Bytes per second the link took, if measured.
    pub link_bytes_per_s: Option<f64>,
    /// Stored over raw bytes of the frames zstd compressed.
    pub ratio: f64,
}

const SMOOTH: f64 = 0.3;
const LINK_WINDOW: u64 = 4 << 20;

fn smooth(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o + SMOOTH * (new - o),
        None => new,
    }
}

impl CompressGate {
    /// While compression is off, one frame in this many is compressed to
    /// measure zstd again.
    pub const PROBE_EVERY: u32 = 16;

    pub fn new() -> Arc<CompressGate> {
        Arc::new(CompressGate::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is a handful of figures: a writer that panicked while
        // holding the lock left them usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to compress the next frame.
    pub fn should_compress(&self) -> bool {
        let mut s = self.lock();
        let pays = match (s.zstd, s.link) {
            (None, _) => true,
            (Some(_), None) => s.ratio < 0.9,
            (Some(z), Some(l)) => z > l && s.ratio < 0.9,
        };
        if pays {
            s.on += 1;
            return true;
        }
        s.skipped += 1;
        if s.skipped >= Self::PROBE_EVERY {
            s.skipped = 0;
            s.on += 1;
            return true;
        }
        s.off += 1;
        false
    }

    /// zstd took `took` to turn `raw` bytes into `stored`.
    pub fn compressed(&self, raw: usize, stored: usize, took: Duration) {
        if raw == 0 {
            return;
        }
        let mut s = self.lock();
        let rate = raw as f64 / took.as_secs_f64().max(1e-7);
        s.zstd = Some(smooth(s.zstd, rate));
        let ratio = (stored as f64 / raw as f64).min(1.0);
        s.ratio = if s.on <= 1 {
            ratio
        } else {
            s.ratio + SMOOTH * (ratio - s.ratio)
        };
    }

    /// A writer spent `took` handing `bytes` to the link.
    pub fn sent(&self, bytes: usize, took: Duration) {
        self.sent_at(bytes, took, Instant::now());
    }

    /// [`CompressGate::sent`] at `now`: in a window where the writers were
    /// blocked most of the time the link is the bottleneck, and its speed
    /// is the window's bytes over its wall time; otherwise the link kept
    /// up, and bytes over blocked time says by how much.
    fn sent_at(&self, bytes: usize, took: Duration, now: Instant) {
        let mut s = self.lock();
        let start = *s.window_start.get_or_insert(now - took);
        s.window_bytes += bytes as u64;
        s.window_time += took;
        if s.window_bytes >= LINK_WINDOW {
            let wall = now.saturating_duration_since(start).max(s.window_time);
            let busy = s.window_time.as_secs_f64() / wall.as_secs_f64().max(1e-7);
            let over = if busy > 0.5 { wall } else { s.window_time };
            let rate = s.window_bytes as f64 / over.as_secs_f64().max(1e-7);
            // A link that slows down is believed at once; one that speeds
            // up, gradually.
            s.link = Some(match s.link {
                Some(old) if rate < old => rate,
                old => smooth(old, rate),
            });
            s.window_bytes = 0;
            s.window_time = Duration::ZERO;
            s.window_start = None;
        }
    }

    /// What it decided so far.
    pub fn figures(&self) -> GateFigures {
        let s = self.lock();
        GateFigures {
            compressed_frames: s.on,
            raw_frames: s.off,
            zstd_bytes_per_s: s.zstd,
            link_bytes_per_s: s.link,
            ratio: s.ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(
        data: &[u8],
        compression: Compression,
        gate: Option<Arc<CompressGate>>,
    ) -> Vec<u8> {
        let mut w = BlobWriter::new(Vec::new(), compression, gate).unwrap();
        w.write_all(data).unwrap();
        let (stats, bytes) = w.finish().unwrap();
        assert_eq!(stats.bytes, bytes.len() as u64);
        bytes
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = BlobReader::new(bytes).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn a_blob_comes_back_whole_raw_and_compressed() {
        let data = sample(3 * BLOB_FRAME + 12345);
        for compression in [Compression::None, Compression::Zstd { level: 1 }] {
            let bytes = roundtrip(&data, compression, None);
            if compression != Compression::None {
                assert!(bytes.len() < data.len() / 4, "{}", bytes.len());
            }
            assert_eq!(read_all(&bytes).unwrap(), data);
        }
        assert!(read_all(&roundtrip(&[], Compression::None, None))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_an_error() {
        let data = sample(2 * BLOB_FRAME + 100);
        let bytes = roundtrip(&data, Compression::Zstd { level: 1 }, None);
        // A byte in each part: header, first frame header, payloads, trailer.
        let step = (bytes.len() / 97).max(1);
        for at in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(read_all(&bad).is_err(), "a flip at {at} went through");
        }
        for len in [0, 10, 40, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                read_all(&bytes[..len]).is_err(),
                "cut at {len} went through"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }

    #[test]
    fn the_gate_compresses_only_while_zstd_outruns_the_link() {
        let gate = CompressGate::new();
        assert!(gate.should_compress(), "unmeasured: compress");
        // zstd at 400 MB/s, halving the data.
        gate.compressed(1 << 20, 1 << 19, Duration::from_micros(2600));
        // A slow link: 100 MB/s.
        gate.sent(8 << 20, Duration::from_millis(84));
        assert!(gate.should_compress());
        // The link got fast (1 GB/s): compression goes off but is probed.
        for _ in 0..10 {
            gate.sent(8 << 20, Duration::from_millis(8));
        }
        let decisions: Vec<bool> = (0..2 * CompressGate::PROBE_EVERY)
            .map(|_| gate.should_compress())
            .collect();
        assert_eq!(decisions.iter().filter(|d| **d).count(), 2, "{decisions:?}");
        // Incompressible data: off even on a slow link.
        let gate = CompressGate::new();
        gate.compressed(1 << 20, 1 << 20, Duration::from_micros(500));
        gate.sent(8 << 20, Duration::from_millis(800));
        assert!(!gate.should_compress());
        let f = gate.figures();
        assert_eq!(f.raw_frames, 1);
    }

    #[test]
    fn a_link_that_keeps_its_writer_waiting_is_measured_by_wall_time() {
        let gate = CompressGate::new();
        gate.compressed(1 << 20, 1 << 18, Duration::from_micros(2500));
        // 8 MiB in 320 ms of wall time (25 MB/s), the writer blocked 80% of
        // it in many short waits: the link is 25 MB/s, slower than zstd.
        let t0 = Instant::now();
        for i in 1..=64u32 {
            gate.sent_at(
                128 << 10,
                Duration::from_millis(4),
                t0 + Duration::from_millis(5 * i as u64),
            );
        }
        let link = gate.figures().link_bytes_per_s.unwrap();
        assert!((20e6..35e6).contains(&link), "{link}");
        assert!(gate.should_compress());
    }

    #[test]
    fn a_gated_writer_writes_what_the_reader_reads() {
        let data = sample(5 * BLOB_FRAME);
        let gate = CompressGate::new();
        gate.compressed(1 << 20, 1 << 19, Duration::from_micros(2600));
        for _ in 0..4 {
            gate.sent(8 << 20, Duration::from_millis(8));
        }
        let bytes = roundtrip(&data, Compression::Zstd { level: 1 }, Some(gate.clone()));
        assert_eq!(read_all(&bytes).unwrap(), data);
        assert!(gate.figures().raw_frames >= 4, "{:?}", gate.figures());
    }
}

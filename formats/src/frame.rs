//! The framing shared by every image stream: a stream header, numbered and
//! checksummed frames, and a trailer that seals the stream.
//!
//! ```text
//!  stream := stream header | frame 0 | frame 1 | ... | frame N-1 | trailer frame
//!
//!  stream header (32 bytes, little endian)
//!  0       8      10     12     13      14       16          24        28        32
//!  +-------+------+------+------+-------+--------+-----------+---------+---------+
//!  | magic | major| minor| kind | codec | 0 0    | image id  | 0 0 0 0 | crc32c  |
//!  |"CR-IMAGE"    |      | 1 records    |        | u64       |         | of 0..28|
//!  |       | u16  | u16  | 2 pages      |0 none  |           |         |         |
//!  |       |      |      |      |1 zstd |        |           |         |         |
//!  +-------+------+------+------+-------+--------+-----------+---------+---------+
//!
//!  frame header (24 bytes, little endian), then `stored len` payload bytes
//!  0      1       2      4      8            12        16            20         24
//!  +------+-------+------+------+------------+---------+-------------+----------+
//!  | kind | flags | tag  | seq  | stored len | raw len | payload crc | header   |
//!  | 1 rec| bit 0:| rec. | u32  | u32        | u32     | crc32c of   | crc32c   |
//!  | 2 pg | zstd  | kind |      | <= 64 MiB  |<= 64 MiB| the stored  | of 0..20 |
//!  |255 tr|       | u16  |      |            |         | payload     |          |
//!  +------+-------+------+------+------------+---------+-------------+----------+
//!
//!  trailer payload (24 bytes, in a frame of kind 255 whose seq is N)
//!  0              8                 16              20         24
//!  +--------------+-----------------+---------------+----------+
//!  | frames: N    | bytes before    | stream digest | 0 0 0 0  |
//!  | u64          | the trailer, u64| u32           |          |
//!  +--------------+-----------------+---------------+----------+
//! ```
//!
//! * The stream digest is the crc32c of the stream header and of every frame
//!   header before the trailer, in order. Each frame header holds its
//!   payload's crc32c and is itself checked, so the digest commits to every
//!   byte of the stream at the cost of 24 bytes of hashing per frame.
//! * Frames are numbered from 0; a frame out of place is a `Sequence` error.
//!   The stream is complete only once the trailer is read, checked and
//!   followed by the end of the input: anything shorter is `Truncated`.
//! * A payload's declared sizes are checked against [`MAX_FRAME_LEN`] before
//!   a byte is allocated for it, and its checksum is checked before it is
//!   decompressed or decoded.
//! * `magic` and the version sit at the same offsets in every version, so a
//!   reader can tell a future format from a damaged one.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, FramePart, Result};
use crate::schema::RecordKind;
use crate::version::{Version, FORMAT_VERSION};

/// The first 8 bytes of every image stream.
pub const MAGIC: [u8; 8] = *b"CR-IMAGE";
/// Size of the stream header.
pub const STREAM_HEADER_LEN: usize = 32;
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// Size of the trailer frame's payload.
pub const TRAILER_LEN: usize = 24;
/// Cap on a frame's stored and raw payload sizes: a hostile length can make
/// a reader allocate at most this much.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// Frame flag: the payload is one zstd frame that decompresses to `raw len`.
pub const FLAG_ZSTD: u8 = 1;

/// crc32c (Castagnoli), hardware accelerated where the CPU has it.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum StreamKind {
    /// Typed records ([`crate::Record`]), one per frame.
    Records = 1,
    /// Page chunks ([`crate::pages`]).
    Pages = 2,
    /// Opaque bytes cut into frames ([`crate::blob`]): the archives a
    /// migration sends beside the image (since 1.5).
    Blob = 3,
}

impl StreamKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(StreamKind::Records),
            2 => Some(StreamKind::Pages),
            3 => Some(StreamKind::Blob),
            _ => None,
        }
    }
}

/// The compression a stream's frames may use. Each frame says whether it is
/// compressed (a chunk that does not shrink is stored raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Zstd = 1,
}

/// A writer's choice of compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    /// zstd at this level (1 is fast, 3 is zstd's default, up to 22).
    Zstd {
        level: i32,
    },
}

impl Compression {
    pub fn codec(self) -> Codec {
        match self {
            Compression::None => Codec::None,
            Compression::Zstd { .. } => Codec::Zstd,
        }
    }
}

/// The decoded stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub version: Version,
    pub kind: StreamKind,
    pub codec: Codec,
    /// Ties the streams of one image together (records and pages).
    pub image_id: u64,
}

impl StreamHeader {
    /// A header of the current version.
    pub fn new(kind: StreamKind, codec: Codec, image_id: u64) -> Self {
        StreamHeader {
            version: FORMAT_VERSION,
            kind,
            codec,
            image_id,
        }
    }

    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.version.minor.to_le_bytes());
        b[12] = self.kind as u8;
        b[13] = self.codec as u8;
        b[16..24].copy_from_slice(&self.image_id.to_le_bytes());
        let crc = checksum(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header for a reader of version `supported`. The checks run
    /// in this order: magic, checksum (a damaged header of a version we
    /// cannot read is reported as the version), version, fields.
    pub fn decode(b: &[u8; STREAM_HEADER_LEN], supported: Version) -> Result<Self> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = Version::new(le16(&b[8..10]), le16(&b[10..12]));
        let stored = le32(&b[28..32]);
        let computed = checksum(&b[0..28]);
        if stored != computed {
            supported.check_readable(version)?;
            return Err(FormatError::HeaderChecksum { stored, computed });
        }
        supported.check_readable(version)?;
        let kind = StreamKind::from_u8(b[12]).ok_or(FormatError::BadHeader {
            what: "unknown stream kind",
        })?;
        let codec = match b[13] {
            0 => Codec::None,
            1 => Codec::Zstd,
            _ => {
                return Err(FormatError::BadHeader {
                    what: "unknown compression codec",
                })
            }
        };
        if b[14..16] != [0, 0] || b[24..28] != [0; 4] {
            return Err(FormatError::BadHeader {
                what: "reserved bytes are not zero",
            });
        }
        Ok(StreamHeader {
            version,
            kind,
            codec,
            image_id: le64(&b[16..24]),
        })
    }

    /// Refuses a stream of another image.
    pub fn expect_image(&self, image_id: u64) -> Result<()> {
        if self.image_id == image_id {
            Ok(())
        } else {
            Err(FormatError::ImageMismatch {
                expected: image_id,
                found: self.image_id,
            })
        }
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum FrameKind {
    Record = 1,
    PageChunk = 2,
    /// A piece of a blob stream.
    Blob = 3,
    Trailer = 255,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Record),
            2 => Some(FrameKind::PageChunk),
            3 => Some(FrameKind::Blob),
            255 => Some(FrameKind::Trailer),
            _ => None,
        }
    }
}

/// Where a frame is and what it holds, as `cr inspect` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameInfo {
    pub seq: u32,
    /// Byte offset of the frame header in the stream.
    pub offset: u64,
    pub kind: FrameKind,
    /// The record kind for record frames ([`RecordKind`]), 0 otherwise.
    pub tag: u16,
    pub compressed: bool,
    /// Payload bytes in the stream.
    pub stored_len: u32,
    /// Payload bytes once decompressed.
    pub raw_len: u32,
    /// crc32c of the stored payload.
    pub checksum: u32,
}

impl FrameInfo {
    /// Bytes the frame takes in the stream, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// A name for error messages and listings: the record kind, "page chunk"
    /// or "trailer".
    pub fn label(&self) -> Option<&'static str> {
        label(self.kind, self.tag)
    }

    fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0] = self.kind as u8;
        b[1] = if self.compressed { FLAG_ZSTD } else { 0 };
        b[2..4].copy_from_slice(&self.tag.to_le_bytes());
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.stored_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.checksum.to_le_bytes());
        let crc = checksum(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

fn label(kind: FrameKind, tag: u16) -> Option<&'static str> {
    match kind {
        FrameKind::Record => RecordKind::from_tag(tag).map(RecordKind::name),
        FrameKind::PageChunk => Some("page chunk"),
        FrameKind::Blob => Some("blob chunk"),
        FrameKind::Trailer => Some("trailer"),
    }
}

/// What a finished stream amounts to; the trailer holds the same figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Frames before the trailer.
    pub frames: u32,
    /// Bytes of the whole stream, trailer included.
    pub bytes: u64,
    /// The stream digest stored in the trailer.
    pub digest: u32,
}

/// Writes a stream header, frames and the trailer straight to `W`.
///
/// [`crate::RecordWriter`] and [`crate::PageWriter`] are built on it; it is
/// public for tools and tests that need frames around payloads of their own
/// (the fuzz targets frame arbitrary bytes with valid checksums so that the
/// decoders behind the checksums see them).
pub struct FrameWriter<W: Write> {
    w: W,
    header: StreamHeader,
    offset: u64,
    next_seq: u32,
    digest: u32,
}

impl<W: Write> FrameWriter<W> {
    /// Writes the stream header.
    pub fn new(w: W, header: StreamHeader) -> Result<Self> {
        let mut fw = FrameWriter {
            w,
            header,
            offset: 0,
            next_seq: 0,
            digest: 0,
        };
        let bytes = header.encode();
        fw.digest = crc32c::crc32c_append(fw.digest, &bytes);
        fw.put(&bytes)?;
        Ok(fw)
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// The sequence number and offset the next frame will get.
    pub fn position(&self) -> (u32, u64) {
        (self.next_seq, self.offset)
    }

    /// Writes one frame whose `payload` is already encoded (and compressed
    /// when `compressed`), with its crc32c `checksum` computed by the caller
    /// (so encoding can run on other threads).
    /// The trailer is written by [`FrameWriter::finish`] only.
    pub fn write_frame(
        &mut self,
        kind: FrameKind,
        tag: u16,
        compressed: bool,
        raw_len: usize,
        payload: &[u8],
        checksum: u32,
    ) -> Result<FrameInfo> {
        if kind == FrameKind::Trailer {
            return Err(FormatError::BadFrame {
                seq: self.next_seq,
                offset: self.offset,
                what: "the trailer is written by finish".into(),
            });
        }
        let stored_len = frame_len(payload.len(), self.offset, "frame payload")?;
        let raw_len = frame_len(raw_len, self.offset, "frame raw payload")?;
        if self.next_seq == u32::MAX {
            return Err(FormatError::TooLarge {
                what: "frame count",
                offset: self.offset,
                len: u64::from(u32::MAX),
                max: u64::from(u32::MAX) - 1,
            });
        }
        let info = FrameInfo {
            seq: self.next_seq,
            offset: self.offset,
            kind,
            tag,
            compressed,
            stored_len,
            raw_len,
            checksum,
        };
        let head = info.encode();
        self.digest = crc32c::crc32c_append(self.digest, &head);
        self.put(&head)?;
        self.put(payload)?;
        self.next_seq += 1;
        Ok(info)
    }

    /// Writes the trailer and flushes.
    pub fn finish(self) -> Result<StreamStats> {
        self.finish_into_inner().map(|(stats, _)| stats)
    }

    /// [`FrameWriter::finish`], handing back the writer underneath.
    pub fn finish_into_inner(mut self) -> Result<(StreamStats, W)> {
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(&u64::from(self.next_seq).to_le_bytes());
        t[8..16].copy_from_slice(&self.offset.to_le_bytes());
        t[16..20].copy_from_slice(&self.digest.to_le_bytes());
        let info = FrameInfo {
            seq: self.next_seq,
            offset: self.offset,
            kind: FrameKind::Trailer,
            tag: 0,
            compressed: false,
            stored_len: TRAILER_LEN as u32,
            raw_len: TRAILER_LEN as u32,
            checksum: checksum(&t),
        };
        self.put(&info.encode())?;
        self.put(&t)?;
        let offset = self.offset;
        self.w
            .flush()
            .map_err(|source| FormatError::Io { offset, source })?;
        Ok((
            StreamStats {
                frames: self.next_seq,
                bytes: self.offset,
                digest: self.digest,
            },
            self.w,
        ))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let offset = self.offset;
        self.w
            .write_all(bytes)
            .map_err(|source| FormatError::Io { offset, source })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

fn frame_len(len: usize, offset: u64, what: &'static str) -> Result<u32> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_FRAME_LEN => Ok(l),
        _ => Err(FormatError::TooLarge {
            what,
            offset,
            len: len as u64,
            max: u64::from(MAX_FRAME_LEN),
        }),
    }
}

/// Reads and verifies frames; see the module comment for what it checks.
pub(crate) struct FrameReader<R: Read> {
    r: R,
    header: StreamHeader,
    offset: u64,
    next_seq: u32,
    digest: u32,
    stored: Vec<u8>,
    raw: Vec<u8>,
    /// Whether the last frame's payload is in `raw` (decompressed).
    in_raw: bool,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    state: ReadState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    /// The trailer was verified and the input ended after it.
    Complete(StreamStats),
    /// An error was returned; the offset where it happened.
    Failed(u64),
}

impl<R: Read> FrameReader<R> {
    /// Reads the stream header and checks it is a `kind` stream of a version
    /// this build reads.
    pub(crate) fn new(r: R, kind: StreamKind) -> Result<Self> {
        let mut fr = FrameReader {
            r,
            header: StreamHeader::new(kind, Codec::None, 0),
            offset: 0,
            next_seq: 0,
            digest: 0,
            stored: Vec::new(),
            raw: Vec::new(),
            in_raw: false,
            dctx: None,
            state: ReadState::Reading,
        };
        let mut b = [0u8; STREAM_HEADER_LEN];
        fr.read_exact_or_truncated(&mut b, "stream header")?;
        fr.header = StreamHeader::decode(&b, FORMAT_VERSION)?;
        if fr.header.kind != kind {
            return Err(FormatError::BadHeader {
                what: match kind {
                    StreamKind::Records => {
                        "another kind of stream where a records stream was expected"
                    }
                    StreamKind::Pages => "another kind of stream where a pages stream was expected",
                    StreamKind::Blob => "another kind of stream where a blob stream was expected",
                },
            });
        }
        fr.digest = crc32c::crc32c_append(0, &b);
        Ok(fr)
    }

    pub(crate) fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// The trailer's figures, once the whole stream has been verified.
    pub(crate) fn complete(&self) -> Option<StreamStats> {
        match self.state {
            ReadState::Complete(s) => Some(s),
            _ => None,
        }
    }

    /// Reads and verifies the next frame, whose payload [`Self::payload`]
    /// then holds; `None` once the trailer has been verified and the input
    /// has ended. After an error every call fails.
    pub(crate) fn next_frame(&mut self) -> Result<Option<FrameInfo>> {
        match self.state {
            ReadState::Complete(_) => return Ok(None),
            ReadState::Failed(offset) => return Err(FormatError::Failed { offset }),
            ReadState::Reading => {}
        }
        self.in_raw = false;
        let read = self.read_frame();
        if read.is_err() {
            self.poison();
        }
        read
    }

    /// The verified, decompressed payload of the frame last returned.
    pub(crate) fn payload(&self) -> &[u8] {
        if self.in_raw {
            &self.raw
        } else {
            &self.stored
        }
    }

    /// Hands over the buffer that holds the last frame's payload (what
    /// [`Self::payload`] returns), putting `spare` in its place: the payload
    /// leaves the reader without a copy. The next frame refills `spare`.
    pub(crate) fn take_payload(&mut self, spare: Vec<u8>) -> Vec<u8> {
        if self.in_raw {
            std::mem::replace(&mut self.raw, spare)
        } else {
            std::mem::replace(&mut self.stored, spare)
        }
    }

    /// Marks the stream failed: a caller found the last payload invalid.
    pub(crate) fn poison(&mut self) {
        self.state = ReadState::Failed(self.offset);
    }

    /// Reads one frame into `stored` (and `raw` when it was compressed).
    fn read_frame(&mut self) -> Result<Option<FrameInfo>> {
        let seq = self.next_seq;
        let offset = self.offset;
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.read_exact_or_truncated(&mut head, "frame header or trailer")?;
        let info = decode_frame_header(&head, seq, offset, &self.header)?;
        self.read_payload(info.stored_len)?;
        if checksum(&self.stored) != info.checksum {
            return Err(FormatError::FrameChecksum {
                seq,
                offset,
                part: FramePart::Payload,
                kind: info.label(),
            });
        }

        if info.kind == FrameKind::Trailer {
            self.verify_trailer(&info)?;
            return Ok(None);
        }
        self.digest = crc32c::crc32c_append(self.digest, &head);
        self.next_seq += 1;
        if info.compressed {
            self.decompress(&info)?;
            self.in_raw = true;
        }
        Ok(Some(info))
    }

    fn verify_trailer(&mut self, info: &FrameInfo) -> Result<()> {
        let stats = check_trailer(&self.stored, info, self.next_seq, self.digest)?;
        // The input must end here.
        let mut probe = [0u8; 1];
        if self.read_full(&mut probe)? != 0 {
            return Err(FormatError::TrailingData {
                offset: self.offset - 1,
            });
        }
        self.state = ReadState::Complete(stats);
        Ok(())
    }

    fn decompress(&mut self, info: &FrameInfo) -> Result<()> {
        let fail = |reason: String| FormatError::Decompress {
            seq: info.seq,
            offset: info.offset,
            reason,
        };
        // The writer's zstd frames declare their size: a frame that lies
        // about it is refused before its output buffer is allocated.
        match zstd::zstd_safe::get_frame_content_size(&self.stored) {
            Ok(Some(n)) if n == u64::from(info.raw_len) => {}
            Ok(Some(n)) => {
                return Err(fail(format!(
                    "the zstd frame holds {n} bytes, the frame header says {}",
                    info.raw_len
                )))
            }
            Ok(None) => return Err(fail("the zstd frame does not declare its size".into())),
            Err(_) => return Err(fail("not a zstd frame".into())),
        }
        if self.dctx.is_none() {
            self.dctx = Some(zstd::bulk::Decompressor::new().map_err(|e| fail(e.to_string()))?);
        }
        let Some(dctx) = self.dctx.as_mut() else {
            return Err(fail("no zstd context".into()));
        };
        self.raw.clear();
        self.raw.reserve(info.raw_len as usize);
        let n = dctx
            .decompress_to_buffer(&self.stored[..], &mut self.raw)
            .map_err(|e| fail(e.to_string()))?;
        if n != info.raw_len as usize {
            return Err(fail(format!(
                "{n} bytes, the frame declares {}",
                info.raw_len
            )));
        }
        Ok(())
    }

    /// Reads exactly `len` payload bytes into `stored`, growing the buffer
    /// only as bytes arrive.
    fn read_payload(&mut self, len: u32) -> Result<()> {
        let offset = self.offset;
        self.stored.clear();
        self.stored.reserve((len as usize).min(1 << 20));
        let n = loop {
            match (&mut self.r)
                .take(u64::from(len))
                .read_to_end(&mut self.stored)
            {
                Ok(_) => break self.stored.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(FormatError::Io {
                        offset: offset + self.stored.len() as u64,
                        source,
                    })
                }
            }
        };
        self.offset += n as u64;
        if n < len as usize {
            return Err(FormatError::Truncated {
                offset: self.offset,
                expected: "frame payload",
            });
        }
        Ok(())
    }

    fn read_exact_or_truncated(&mut self, buf: &mut [u8], expected: &'static str) -> Result<()> {
        if self.read_full(buf)? < buf.len() {
            return Err(FormatError::Truncated {
                offset: self.offset,
                expected,
            });
        }
        Ok(())
    }

    /// Fills `buf` unless the input ends first; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.offset += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(FormatError::Io {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        Ok(n)
    }
}

/// Decodes frame `seq` at `offset` of a stream whose header is `stream`,
/// and checks everything a reader checks before it touches the payload:
/// the header's checksum, the sequence number, known kind and flags, and
/// the size cap.
pub(crate) fn decode_frame_header(
    head: &[u8; FRAME_HEADER_LEN],
    seq: u32,
    offset: u64,
    stream: &StreamHeader,
) -> Result<FrameInfo> {
    if checksum(&head[0..20]) != le32(&head[20..24]) {
        return Err(FormatError::FrameChecksum {
            seq,
            offset,
            part: FramePart::Header,
            kind: None,
        });
    }
    let found = le32(&head[4..8]);
    if found != seq {
        return Err(FormatError::Sequence {
            expected: seq,
            found,
            offset,
        });
    }
    let bad = |what: String| FormatError::BadFrame { seq, offset, what };
    let kind = FrameKind::from_u8(head[0])
        .ok_or_else(|| bad(format!("unknown frame kind {}", head[0])))?;
    let flags = head[1];
    let info = FrameInfo {
        seq,
        offset,
        kind,
        tag: le16(&head[2..4]),
        compressed: flags & FLAG_ZSTD != 0,
        stored_len: le32(&head[8..12]),
        raw_len: le32(&head[12..16]),
        checksum: le32(&head[16..20]),
    };
    check_frame_header(stream, &info, flags).map_err(bad)?;
    for (what, len) in [
        ("frame payload", info.stored_len),
        ("frame raw payload", info.raw_len),
    ] {
        if len > MAX_FRAME_LEN {
            return Err(FormatError::TooLarge {
                what,
                offset,
                len: u64::from(len),
                max: u64::from(MAX_FRAME_LEN),
            });
        }
    }
    Ok(info)
}

/// Values a writer of this version never puts in a frame header whose
/// checksum is right.
fn check_frame_header(stream: &StreamHeader, info: &FrameInfo, flags: u8) -> Result<(), String> {
    if flags & !FLAG_ZSTD != 0 {
        return Err(format!("unknown frame flags {flags:#04x}"));
    }
    let allowed = match stream.kind {
        StreamKind::Records => FrameKind::Record,
        StreamKind::Pages => FrameKind::PageChunk,
        StreamKind::Blob => FrameKind::Blob,
    };
    if info.kind != allowed && info.kind != FrameKind::Trailer {
        return Err(format!(
            "a {:?} frame in a {:?} stream",
            info.kind, stream.kind
        ));
    }
    if info.kind != FrameKind::Record && info.tag != 0 {
        return Err(format!("tag {} on a {:?} frame", info.tag, info.kind));
    }
    if info.compressed && stream.codec != Codec::Zstd {
        return Err("a compressed frame in a stream without compression".into());
    }
    if !info.compressed && info.stored_len != info.raw_len {
        return Err(format!(
            "uncompressed frame with stored length {} and raw length {}",
            info.stored_len, info.raw_len
        ));
    }
    if info.kind == FrameKind::Trailer
        && (info.compressed || info.stored_len as usize != TRAILER_LEN)
    {
        return Err("malformed trailer frame".into());
    }
    Ok(())
}

/// Checks a trailer's payload `t` (already checksummed) against what the
/// reader counted: `frames` frames before it and the stream `digest`.
pub(crate) fn check_trailer(
    t: &[u8],
    info: &FrameInfo,
    frames: u32,
    digest: u32,
) -> Result<StreamStats> {
    let offset = info.offset;
    let mismatch = |what, stored: u64, computed: u64| FormatError::TrailerMismatch {
        offset,
        what,
        stored,
        computed,
    };
    if t.len() != TRAILER_LEN {
        return Err(mismatch("length", t.len() as u64, TRAILER_LEN as u64));
    }
    let stored_frames = le64(&t[0..8]);
    if stored_frames != u64::from(frames) {
        return Err(mismatch("frame count", stored_frames, u64::from(frames)));
    }
    let bytes = le64(&t[8..16]);
    if bytes != offset {
        return Err(mismatch("byte count", bytes, offset));
    }
    let stored_digest = le32(&t[16..20]);
    if stored_digest != digest {
        return Err(mismatch(
            "stream digest",
            u64::from(stored_digest),
            u64::from(digest),
        ));
    }
    if t[20..24] != [0; 4] {
        return Err(mismatch("reserved word", u64::from(le32(&t[20..24])), 0));
    }
    Ok(StreamStats {
        frames,
        bytes: offset + (FRAME_HEADER_LEN + TRAILER_LEN) as u64,
        digest,
    })
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks a stream as its bytes go by, in pieces of any size, without
/// holding a payload: the stream header, every frame header (checksum,
/// sequence, kind, sizes), every payload's checksum, the trailer and that
/// nothing follows it. What it accepted is what [`FrameReader`] would
/// accept, so a file written from it needs no second pass over its
/// payloads (a migration's page store, checked as it arrives while the
/// container still runs).
#[derive(Debug)]
pub struct StreamCheck {
    kind: StreamKind,
    header: Option<StreamHeader>,
    /// A stream or frame header being gathered.
    head: Vec<u8>,
    /// The frame whose payload is going by, its bytes left and their crc.
    payload: Option<(FrameInfo, u32, u32)>,
    /// The trailer's payload (kept: it is checked whole).
    trailer: Vec<u8>,
    offset: u64,
    seq: u32,
    digest: u32,
    stats: Option<StreamStats>,
}

impl StreamCheck {
    /// A check of a stream of `kind`.
    pub fn new(kind: StreamKind) -> StreamCheck {
        StreamCheck {
            kind,
            header: None,
            head: Vec::with_capacity(STREAM_HEADER_LEN),
            payload: None,
            trailer: Vec::new(),
            offset: 0,
            seq: 0,
            digest: 0,
            stats: None,
        }
    }

    /// Checks the next `bytes` of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.stats.is_some() {
                return Err(FormatError::TrailingData {
                    offset: self.offset,
                });
            }
            let taken = match self.payload.take() {
                Some((info, left, crc)) => self.payload_bytes(info, left, crc, bytes)?,
                None => self.header_bytes(bytes)?,
            };
            self.offset += taken as u64;
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    /// The stream ended: it must have ended with its trailer.
    pub fn finish(&self) -> Result<StreamStats> {
        self.stats.ok_or(FormatError::Truncated {
            offset: self.offset,
            expected: if self.header.is_none() {
                "stream header"
            } else if self.payload.is_some() {
                "frame payload"
            } else {
                "frame header or trailer"
            },
        })
    }

    fn header_bytes(&mut self, bytes: &[u8]) -> Result<usize> {
        let want = match self.header {
            None => STREAM_HEADER_LEN,
            Some(_) => FRAME_HEADER_LEN,
        };
        let n = (want - self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..n]);
        if self.head.len() < want {
            return Ok(n);
        }
        let head = std::mem::take(&mut self.head);
        match self.header {
            None => {
                let b: &[u8; STREAM_HEADER_LEN] =
                    head[..].try_into().map_err(|_| FormatError::BadHeader {
                        what: "stream header",
                    })?;
                let header = StreamHeader::decode(b, FORMAT_VERSION)?;
                if header.kind != self.kind {
                    return Err(FormatError::BadHeader {
                        what: "a stream of another kind",
                    });
                }
                self.digest = crc32c::crc32c_append(0, &head);
                self.header = Some(header);
            }
            Some(header) => {
                let b: &[u8; FRAME_HEADER_LEN] =
                    head[..].try_into().map_err(|_| FormatError::BadHeader {
                        what: "frame header",
                    })?;
                let at = self.offset + n as u64 - FRAME_HEADER_LEN as u64;
                let info = decode_frame_header(b, self.seq, at, &header)?;
                if info.kind != FrameKind::Trailer {
                    self.digest = crc32c::crc32c_append(self.digest, &head);
                }
                if info.stored_len == 0 {
                    // An empty payload ends at once (its crc32c is 0).
                    self.frame_done(info, 0)?;
                } else {
                    self.payload = Some((info, info.stored_len, 0));
                }
            }
        }
        self.head = Vec::with_capacity(FRAME_HEADER_LEN);
        Ok(n)
    }

    fn payload_bytes(
        &mut self,
        info: FrameInfo,
        left: u32,
        crc: u32,
        bytes: &[u8],
    ) -> Result<usize> {
        let n = (left as usize).min(bytes.len());
        let crc = crc32c::crc32c_append(crc, &bytes[..n]);
        if info.kind == FrameKind::Trailer {
            self.trailer.extend_from_slice(&bytes[..n]);
        }
        let left = left - n as u32;
        if left > 0 {
            self.payload = Some((info, left, crc));
        } else {
            self.frame_done(info, crc)?;
        }
        Ok(n)
    }

    fn frame_done(&mut self, info: FrameInfo, crc: u32) -> Result<()> {
        if crc != info.checksum {
            return Err(FormatError::FrameChecksum {
                seq: info.seq,
                offset: info.offset,
                part: FramePart::Payload,
                kind: info.label(),
            });
        }
        if info.kind == FrameKind::Trailer {
            self.stats = Some(check_trailer(&self.trailer, &info, self.seq, self.digest)?);
        } else {
            self.seq = self.seq.checked_add(1).ok_or(FormatError::BadFrame {
                seq: u32::MAX,
                offset: info.offset,
                what: "more frames than a stream may number".into(),
            })?;
        }
        Ok(())
    }
}

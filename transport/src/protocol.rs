//! The migration protocol: the control messages `cr migrate` (the source)
//! and `cr serve` (the destination) exchange on one bidirectional QUIC
//! stream, the header that starts every unidirectional data stream, and
//! version negotiation. `docs/migration-protocol.md` is the specification;
//! this comment is its summary.
//!
//! # Sequence (stop-and-copy)
//!
//! ```text
//!  source (cr migrate)                               destination (cr serve)
//!    |  QUIC + mutual TLS, both certificates pinned       |
//!    |---- Hello {versions 1..=1, host} ---------------->|  pick highest common
//!    |<--- HelloAck {version} ----------------------------|  (or HelloRefused)
//!    |---- Offer {id, container, config, sizes, layer} ->|  check name, limits
//!    |<--- Accept {id} -----------------------------------|  (or Failed{Offer})
//!    |---- LayerQuery {id, digest} ---------------------->|
//!    |<--- LayerHave {id, digest, have} ------------------|
//!  freeze
//!    |---- StreamsOpen {id, [records, pages.., disk, files, layer?]} ->|
//!    |==== uni streams: StreamHeader{kind, id, index} + bytes, FIN ===>|  restore reads
//!    |---- Committed {id, bytes per stream} ------------->|  straight from them
//!    |<--- Restored {id} ---------------------------------|  built, tasks stopped
//!    |---- Resume {id} ---------------------------------->|  point of no return
//!    |<--- Resumed {id} ----------------------------------|  container runs here
//!  destroy the frozen copy
//!    |---- Confirm {id} --------------------------------->|  forget the outcome
//! ```
//!
//! Until it has received `Resumed` the source keeps its frozen container:
//! on `Failed`, a lost connection before `Resume`, a corrupt stream or
//! Ctrl-C (it sends `Abort`) it thaws it. After sending `Resume` it is in
//! doubt: it stays frozen and asks with `Query {id}` on a new connection
//! until the destination answers `Outcome`. The destination resumes only
//! after `Resume`, and removes what it built on every failure before it.
//!
//! # The destination's state machine
//!
//! ```text
//!   Connected --Hello/HelloAck--> Negotiated --Offer/Accept--> Offered
//!   Offered --LayerQuery/LayerHave--> Offered
//!   Offered --StreamsOpen--> Receiving --Committed + all streams FIN--> Restoring
//!   Restoring --Restored--> Ready --Resume--> Running --Resumed--> Resumed --Confirm--> Done
//!
//!   Offered | Receiving | Restoring | Ready
//!        --Abort | Failed | stream reset | connection lost | bad frame--> Cleanup (remove all)
//!   Running  --connection lost--> keeps running, remembers Outcome for Query
//! ```
//!
//! # The source's state machine
//!
//! ```text
//!   Connecting --HelloAck--> Negotiated --Accept--> Offered --(layer)--> Freezing
//!   Freezing --frozen--> Sending --every stream finished--> Committed
//!   Committed --Restored--> Resuming (Resume sent) --Resumed--> Destroying --Confirm--> Done
//!
//!   any state before Resuming --Failed | connection lost | error | Ctrl-C (Abort)--> Thaw
//!   Resuming --connection lost--> InDoubt: stay frozen, reconnect, Query {id}
//!   InDoubt --Outcome Resumed--> Destroying;  --Outcome Failed | Unknown--> Thaw
//! ```
//!
//! # Versions
//!
//! A build supports [`SUPPORTED`]: the current [`PROTOCOL_VERSION`] and the
//! one before it. The client sends its range in `Hello`; the server picks the
//! highest version both support ([`negotiate`]) or answers `HelloRefused`
//! naming both ranges. Bump the version for breaking changes, not for
//! additive ones (a new message kind the old side never receives is
//! additive). `Hello`, `HelloAck` and `HelloRefused` keep their layout in
//! every version so any two builds can negotiate; every later frame carries
//! the negotiated version and a frame with another is refused.
//!
//! # Control frame
//!
//! ```text
//!   0        4         6      7       8            12           16
//!   | "CRMP" | version | kind | flags | length u32 | crc32c u32 | payload (length bytes)
//!            u16 LE             = 0     LE, <= 1 MiB   over 0..12 + payload
//! ```
//! The payload is the message's struct in postcard. Every field is
//! checked at decode ([`Message::validate`]); an invalid one is an error
//! naming the message and the field.
//!
//! # Data stream header
//!
//! ```text
//!   0        4         6      7       8               24      26         28           32
//!   | "CRDS" | version | kind | flags | migration id | index | reserved | crc32c u32 | data ... FIN
//!            u16 LE             = 0     16 bytes        u16 LE  = 0        over 0..28
//! ```
//! `kind` is a [`StreamKind`]; `index` numbers parallel streams of a kind.
//! A data stream ends with an explicit FIN; a reset or a lost connection is
//! an error for the reader, never a short image.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks by preference.
pub const PROTOCOL_VERSION: u16 = 1;
/// The versions this build accepts: the current one and the one before it
/// (there is none before version 1).
pub const SUPPORTED: VersionRange = VersionRange {
    min: if PROTOCOL_VERSION > 1 {
        PROTOCOL_VERSION - 1
    } else {
        1
    },
    max: PROTOCOL_VERSION,
};
/// The magic that starts every control frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CRMP";
/// The magic that starts every data stream.
pub const STREAM_MAGIC: [u8; 4] = *b"CRDS";
/// Bytes in a control frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Bytes in a data stream header.
pub const STREAM_HEADER_LEN: usize = 32;
/// Largest control message payload.
pub const MAX_MESSAGE_LEN: u32 = 1 << 20;
/// Longest container name in an offer.
pub const MAX_CONTAINER_NAME: usize = 64;
/// Longest reason text in `Failed`, `Abort`, `HelloRefused`.
pub const MAX_REASON: usize = 4096;
/// Longest host name in `Hello`.
pub const MAX_HOST: usize = 253;
/// Most data streams in one migration.
pub const MAX_STREAMS: usize = 64;

const FRAME_CONTROL: &str = "control frame";
const FRAME_STREAM: &str = "data stream header";

/// Why a frame or stream header was refused, or negotiation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the peer closed the control stream")]
    Closed,
    #[error("{what} cut short: {got} of {expected} bytes")]
    Truncated {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}: bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        what: &'static str,
        found: [u8; 4],
        expected: [u8; 4],
    },
    #[error("{what}: protocol version {found} is not supported (this build: {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u16,
        supported: VersionRange,
    },
    #[error("control frame has version {found}, but version {negotiated} was negotiated")]
    VersionMismatch { found: u16, negotiated: u16 },
    #[error("{what}: unknown kind {kind}")]
    UnknownKind { what: &'static str, kind: u8 },
    #[error("control frame: kind {kind} ({name}) is reserved for a later protocol version")]
    ReservedKind { kind: u8, name: &'static str },
    #[error("{what}: reserved flags {flags:#04x} are set")]
    FlagsSet { what: &'static str, flags: u8 },
    #[error("data stream header: reserved field is {found:#06x}, expected 0")]
    ReservedField { found: u16 },
    #[error("control frame: payload length {len} exceeds the limit of {max} bytes")]
    TooLong { len: u32, max: u32 },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{kind} message: {reason}")]
    Decode { kind: &'static str, reason: String },
    #[error("{kind} message: {extra} bytes after the end of the message")]
    TrailingBytes { kind: &'static str, extra: usize },
    #[error("{kind} message: invalid {field}: {reason}")]
    Invalid {
        kind: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("{kind} message: encodes to {len} bytes, over the limit of {max}")]
    EncodeTooLong {
        kind: &'static str,
        len: usize,
        max: u32,
    },
    #[error("no common protocol version: we support {ours}, the peer supports {theirs}")]
    NoCommonVersion {
        ours: VersionRange,
        theirs: VersionRange,
    },
    #[error("the peer refused our protocol versions {ours}: it supports {theirs} ({reason})")]
    Refused {
        ours: VersionRange,
        theirs: VersionRange,
        reason: String,
    },
    #[error("expected a {expected} message, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("data stream of migration {found} arrived on the session of migration {expected}")]
    ForeignStream {
        expected: MigrationId,
        found: MigrationId,
    },
}

type Result<T> = std::result::Result<T, ProtocolError>;

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "version {}", self.min)
        } else {
            write!(f, "versions {}..={}", self.min, self.max)
        }
    }
}

impl VersionRange {
    /// Whether `version` lies in the range.
    pub fn contains(&self, version: u16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// The highest version in both ranges, or an error naming both.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u16> {
    let high = ours.max.min(theirs.max);
    let low = ours.min.max(theirs.min);
    if ours.min > ours.max || theirs.min > theirs.max || high < low {
        return Err(ProtocolError::NoCommonVersion { ours, theirs });
    }
    Ok(high)
}

/// A migration's identity: 16 random bytes chosen by the source, carried
/// in every message and stream header so concurrent migrations never mix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MigrationId(pub [u8; 16]);

impl MigrationId {
    /// A fresh random id.
    pub fn random() -> std::result::Result<MigrationId, ring::error::Unspecified> {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(MigrationId(bytes))
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationId({self})")
    }
}

/// SHA-256 of an image layer's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerDigest(pub [u8; 32]);

impl fmt::Display for LayerDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LayerDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerDigest({self})")
    }
}

/// What a data stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum StreamKind {
    /// The checkpoint's record stream (`records.img`).
    Records = 1,
    /// A page stream (`pages.img`); several may run in parallel.
    Pages = 2,
    /// Disk clusters of the container's block image delta chain.
    DiskClusters = 3,
    /// The container's own files (the overlay's upper layer).
    Files = 4,
    /// The image layer, sent only when the destination lacks it.
    Layer = 5,
}

impl StreamKind {
    /// The kind for a header byte.
    pub fn from_u8(value: u8) -> Option<StreamKind> {
        Some(match value {
            1 => StreamKind::Records,
            2 => StreamKind::Pages,
            3 => StreamKind::DiskClusters,
            4 => StreamKind::Files,
            5 => StreamKind::Layer,
            _ => return None,
        })
    }
}

/// The phase a migration failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Hello,
    Offer,
    Layer,
    Transfer,
    Restore,
    Resume,
    Confirm,
}

/// How the source moves memory. Only stop-and-copy exists in version 1;
/// the others are named so that adding them is additive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMode {
    StopAndCopy,
    PreCopy,
    PostCopy,
}

/// Expected sizes, for progress and for the destination's limit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageSizes {
    pub memory: u64,
    pub disk: u64,
    pub files: u64,
}

/// One data stream the source is about to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDecl {
    pub kind: StreamKind,
    pub index: u16,
}

/// A finished data stream and the bytes it carried (after its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTotal {
    pub kind: StreamKind,
    pub index: u16,
    pub bytes: u64,
}

/// What the destination knows about a migration (answer to `Query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeState {
    /// Never heard of it, or already cleaned up after a failure.
    Unknown,
    /// Still restoring; it will not resume without `Resume`.
    InProgress,
    /// It failed and everything it built is gone.
    Failed,
    /// It runs on the destination.
    Resumed,
}

/// Client → server: the versions it speaks. Frozen layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub versions: VersionRange,
    /// The client host's name, for the server's log.
    pub host: String,
}

/// Server → client: the version chosen. Frozen layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub version: u16,
}

/// Server → client: no common version. Frozen layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRefused {
    pub supported: VersionRange,
    pub reason: String,
}

/// Source → destination: a container to receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub migration: MigrationId,
    pub container: String,
    /// The container's configuration file, verbatim (the engine parses it).
    pub config: Vec<u8>,
    pub sizes: ImageSizes,
    /// The image layer it runs on, by content.
    pub layer: Option<LayerDigest>,
    pub mode: TransferMode,
}

/// A message that names only its migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRef {
    pub migration: MigrationId,
}

/// Source → destination: is this layer there?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerQuery {
    pub migration: MigrationId,
    pub digest: LayerDigest,
}

/// Destination → source: whether it has the layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerHave {
    pub migration: MigrationId,
    pub digest: LayerDigest,
    pub have: bool,
}

/// Source → destination: the data streams that follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamsOpen {
    pub migration: MigrationId,
    pub streams: Vec<StreamDecl>,
}

/// Source → destination: every data stream is finished; totals to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub migration: MigrationId,
    pub streams: Vec<StreamTotal>,
}

/// Either side: the migration failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub migration: MigrationId,
    pub phase: Phase,
    pub reason: String,
}

/// Source → destination: stop and remove everything (Ctrl-C, a local error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub migration: MigrationId,
    pub reason: String,
}

/// Destination → source: answer to `Query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub migration: MigrationId,
    pub state: OutcomeState,
}

/// Every control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloAck(HelloAck),
    HelloRefused(HelloRefused),
    Offer(Offer),
    Accept(MigrationRef),
    LayerQuery(LayerQuery),
    LayerHave(LayerHave),
    StreamsOpen(StreamsOpen),
    Committed(Committed),
    Restored(MigrationRef),
    Resume(MigrationRef),
    Resumed(MigrationRef),
    Confirm(MigrationRef),
    Failed(Failed),
    Abort(Abort),
    Query(MigrationRef),
    Outcome(Outcome),
}

/// Kind bytes reserved for live migration (not decodable in version 1).
pub const RESERVED_KINDS: &[(u8, &str)] = &[
    (32, "PrecopyRound"),
    (33, "PrecopyDone"),
    (34, "PageRequest"),
    (35, "PageData"),
];

impl Message {
    /// The kind byte of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::HelloAck(_) => 2,
            Message::HelloRefused(_) => 3,
            Message::Offer(_) => 4,
            Message::Accept(_) => 5,
            Message::LayerQuery(_) => 6,
            Message::LayerHave(_) => 7,
            Message::StreamsOpen(_) => 8,
            Message::Committed(_) => 9,
            Message::Restored(_) => 10,
            Message::Resume(_) => 11,
            Message::Resumed(_) => 12,
            Message::Confirm(_) => 13,
            Message::Failed(_) => 14,
            Message::Abort(_) => 15,
            Message::Query(_) => 16,
            Message::Outcome(_) => 17,
        }
    }

    /// The message's name, as errors show it.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).unwrap_or("?")
    }

    /// The migration a message is about (`None` for the hello messages).
    pub fn migration(&self) -> Option<MigrationId> {
        Some(match self {
            Message::Hello(_) | Message::HelloAck(_) | Message::HelloRefused(_) => return None,
            Message::Offer(m) => m.migration,
            Message::Accept(m)
            | Message::Restored(m)
            | Message::Resume(m)
            | Message::Resumed(m)
            | Message::Confirm(m)
            | Message::Query(m) => m.migration,
            Message::LayerQuery(m) => m.migration,
            Message::LayerHave(m) => m.migration,
            Message::StreamsOpen(m) => m.migration,
            Message::Committed(m) => m.migration,
            Message::Failed(m) => m.migration,
            Message::Abort(m) => m.migration,
            Message::Outcome(m) => m.migration,
        })
    }

    /// Checks every field a hostile peer could set out of range.
    pub fn validate(&self) -> Result<()> {
        let kind = self.name();
        let invalid = |field, reason: String| {
            Err(ProtocolError::Invalid {
                kind,
                field,
                reason,
            })
        };
        match self {
            Message::Hello(m) => {
                if m.versions.min == 0 || m.versions.min > m.versions.max {
                    return invalid(
                        "versions",
                        format!(
                            "{}..={} is empty or starts at 0",
                            m.versions.min, m.versions.max
                        ),
                    );
                }
                check_text(kind, "host", &m.host, MAX_HOST)?;
            }
            Message::HelloAck(m) => {
                if m.version == 0 {
                    return invalid("version", "0 is not a version".to_string());
                }
            }
            Message::HelloRefused(m) => {
                if m.supported.min > m.supported.max {
                    return invalid("supported", "the range is empty".to_string());
                }
                check_text(kind, "reason", &m.reason, MAX_REASON)?;
            }
            Message::Offer(m) => {
                check_container_name(&m.container)
                    .or_else(|reason| invalid("container", reason))?;
                if m.config.len() > MAX_MESSAGE_LEN as usize / 2 {
                    return invalid("config", format!("{} bytes is too large", m.config.len()));
                }
            }
            Message::StreamsOpen(m) => {
                check_streams(kind, m.streams.iter().map(|s| (s.kind, s.index)))?;
            }
            Message::Committed(m) => {
                check_streams(kind, m.streams.iter().map(|s| (s.kind, s.index)))?;
            }
            Message::Failed(m) => check_text(kind, "reason", &m.reason, MAX_REASON)?,
            Message::Abort(m) => check_text(kind, "reason", &m.reason, MAX_REASON)?,
            Message::Accept(_)
            | Message::LayerQuery(_)
            | Message::LayerHave(_)
            | Message::Restored(_)
            | Message::Resume(_)
            | Message::Resumed(_)
            | Message::Confirm(_)
            | Message::Query(_)
            | Message::Outcome(_) => {}
        }
        Ok(())
    }

    fn payload(&self) -> std::result::Result<Vec<u8>, postcard::Error> {
        match self {
            Message::Hello(m) => postcard::to_stdvec(m),
            Message::HelloAck(m) => postcard::to_stdvec(m),
            Message::HelloRefused(m) => postcard::to_stdvec(m),
            Message::Offer(m) => postcard::to_stdvec(m),
            Message::Accept(m)
            | Message::Restored(m)
            | Message::Resume(m)
            | Message::Resumed(m)
            | Message::Confirm(m)
            | Message::Query(m) => postcard::to_stdvec(m),
            Message::LayerQuery(m) => postcard::to_stdvec(m),
            Message::LayerHave(m) => postcard::to_stdvec(m),
            Message::StreamsOpen(m) => postcard::to_stdvec(m),
            Message::Committed(m) => postcard::to_stdvec(m),
            Message::Failed(m) => postcard::to_stdvec(m),
            Message::Abort(m) => postcard::to_stdvec(m),
            Message::Outcome(m) => postcard::to_stdvec(m),
        }
    }

    fn from_payload(kind: u8, payload: &[u8]) -> Result<Message> {
        let name = kind_name(kind).unwrap_or("?");
        fn take<'a, T: Deserialize<'a>>(name: &'static str, payload: &'a [u8]) -> Result<T> {
            let (value, rest) =
                postcard::take_from_bytes(payload).map_err(|e| ProtocolError::Decode {
                    kind: name,
                    reason: e.to_string(),
                })?;
            if !rest.is_empty() {
                return Err(ProtocolError::TrailingBytes {
                    kind: name,
                    extra: rest.len(),
                });
            }
            Ok(value)
        }
        Ok(match kind {
            1 => Message::Hello(take(name, payload)?),
            2 => Message::HelloAck(take(name, payload)?),
            3 => Message::HelloRefused(take(name, payload)?),
            4 => Message::Offer(take(name, payload)?),
            5 => Message::Accept(take(name, payload)?),
            6 => Message::LayerQuery(take(name, payload)?),
            7 => Message::LayerHave(take(name, payload)?),
            8 => Message::StreamsOpen(take(name, payload)?),
            9 => Message::Committed(take(name, payload)?),
            10 => Message::Restored(take(name, payload)?),
            11 => Message::Resume(take(name, payload)?),
            12 => Message::Resumed(take(name, payload)?),
            13 => Message::Confirm(take(name, payload)?),
            14 => Message::Failed(take(name, payload)?),
            15 => Message::Abort(take(name, payload)?),
            16 => Message::Query(take(name, payload)?),
            17 => Message::Outcome(take(name, payload)?),
            _ => return Err(kind_error(kind)),
        })
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        1 => "Hello",
        2 => "HelloAck",
        3 => "HelloRefused",
        4 => "Offer",
        5 => "Accept",
        6 => "LayerQuery",
        7 => "LayerHave",
        8 => "StreamsOpen",
        9 => "Committed",
        10 => "Restored",
        11 => "Resume",
        12 => "Resumed",
        13 => "Confirm",
        14 => "Failed",
        15 => "Abort",
        16 => "Query",
        17 => "Outcome",
        _ => return None,
    })
}

fn kind_error(kind: u8) -> ProtocolError {
    match RESERVED_KINDS.iter().find(|(k, _)| *k == kind) {
        Some((_, name)) => ProtocolError::ReservedKind { kind, name },
        None => ProtocolError::UnknownKind {
            what: FRAME_CONTROL,
            kind,
        },
    }
}

/// The hello messages keep one layout in every version.
fn is_hello_kind(kind: u8) -> bool {
    matches!(kind, 1..=3)
}

fn check_text(kind: &'static str, field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(ProtocolError::Invalid {
            kind,
            field,
            reason: format!("{} bytes, over the limit of {max}", text.len()),
        });
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ProtocolError::Invalid {
            kind,
            field,
            reason: "contains control characters".to_string(),
        });
    }
    Ok(())
}

/// A container name the destination may use as a directory name:
/// 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn check_container_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_CONTAINER_NAME {
        return Err(format!(
            "{name:?} must have 1 to {MAX_CONTAINER_NAME} characters"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("{name:?} starts with '.' or '-'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "{name:?} has a character other than letters, digits, '_', '.', '-'"
        ));
    }
    Ok(())
}

fn check_streams(
    kind: &'static str,
    streams: impl Iterator<Item = (StreamKind, u16)>,
) -> Result<()> {
    let mut seen = Vec::new();
    for (k, index) in streams {
        if seen.contains(&(k, index)) {
            return Err(ProtocolError::Invalid {
                kind,
                field: "streams",
                reason: format!("{k:?} stream {index} is listed twice"),
            });
        }
        seen.push((k, index));
        if seen.len() > MAX_STREAMS {
            return Err(ProtocolError::Invalid {
                kind,
                field: "streams",
                reason: format!("more than {MAX_STREAMS} streams"),
            });
        }
    }
    Ok(())
}

/// A decoded control frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: u8,
    pub length: u32,
    pub crc: u32,
}

/// Encodes `message` as one control frame of protocol `version`.
pub fn encode(version: u16, message: &Message) -> Result<Vec<u8>> {
    let payload = message.payload().map_err(|e| ProtocolError::Decode {
        kind: message.name(),
        reason: e.to_string(),
    })?;
    if payload.len() > MAX_MESSAGE_LEN as usize {
        return Err(ProtocolError::EncodeTooLong {
            kind: message.name(),
            len: payload.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.extend_from_slice(&FRAME_MAGIC);
    frame.extend_from_slice(&version.to_le_bytes());
    frame.push(message.kind());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..12]), &payload);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Checks a control frame header: magic, flags, size cap, a known kind and
/// a supported version (the hello kinds are accepted at any version).
pub fn decode_header(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader> {
    let magic: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != FRAME_MAGIC {
        return Err(ProtocolError::BadMagic {
            what: FRAME_CONTROL,
            found: magic,
            expected: FRAME_MAGIC,
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let kind = bytes[6];
    let flags = bytes[7];
    let length = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if flags != 0 {
        return Err(ProtocolError::FlagsSet {
            what: FRAME_CONTROL,
            flags,
        });
    }
    if kind_name(kind).is_none() {
        return Err(kind_error(kind));
    }
    if version == 0 || (!is_hello_kind(kind) && !SUPPORTED.contains(version)) {
        return Err(ProtocolError::UnsupportedVersion {
            what: FRAME_CONTROL,
            found: version,
            supported: SUPPORTED,
        });
    }
    if length > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong {
            len: length,
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(FrameHeader {
        version,
        kind,
        length,
        crc,
    })
}

/// Checks the checksum over header and payload, decodes and validates.
pub fn decode_payload(
    header_bytes: &[u8; FRAME_HEADER_LEN],
    header: &FrameHeader,
    payload: &[u8],
) -> Result<Message> {
    if payload.len() != header.length as usize {
        return Err(ProtocolError::Truncated {
            what: FRAME_CONTROL,
            expected: header.length as usize,
            got: payload.len(),
        });
    }
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..12]), payload);
    if computed != header.crc {
        return Err(ProtocolError::Checksum {
            what: FRAME_CONTROL,
            stored: header.crc,
            computed,
        });
    }
    let message = Message::from_payload(header.kind, payload)?;
    message.validate()?;
    Ok(message)
}

/// Decodes one whole frame from `bytes` (it must hold exactly one).
pub fn decode(bytes: &[u8]) -> Result<(u16, Message)> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(ProtocolError::Truncated {
            what: FRAME_CONTROL,
            expected: FRAME_HEADER_LEN,
            got: bytes.len(),
        });
    }
    let mut head = [0u8; FRAME_HEADER_LEN];
    head.copy_from_slice(&bytes[..FRAME_HEADER_LEN]);
    let header = decode_header(&head)?;
    let message = decode_payload(&head, &header, &bytes[FRAME_HEADER_LEN..])?;
    Ok((header.version, message))
}

/// Reads one frame from a blocking reader. `negotiated` is the version
/// every non-hello frame must carry once negotiation is done.
pub fn read_message<R: Read>(reader: &mut R, negotiated: Option<u16>) -> Result<Message> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < FRAME_HEADER_LEN {
        return Err(ProtocolError::Truncated {
            what: FRAME_CONTROL,
            expected: FRAME_HEADER_LEN,
            got,
        });
    }
    let header = decode_header(&head)?;
    check_negotiated(&header, negotiated)?;
    let mut payload = vec![0u8; header.length as usize];
    let got = read_full(reader, &mut payload)?;
    if got < payload.len() {
        return Err(ProtocolError::Truncated {
            what: FRAME_CONTROL,
            expected: FRAME_HEADER_LEN + payload.len(),
            got: FRAME_HEADER_LEN + got,
        });
    }
    decode_payload(&head, &header, &payload)
}

/// Writes one frame to a blocking writer and flushes it.
pub fn write_message<W: Write>(writer: &mut W, version: u16, message: &Message) -> Result<()> {
    let frame = encode(version, message)?;
    writer
        .write_all(&frame)
        .and_then(|_| writer.flush())
        .map_err(|source| ProtocolError::Io {
            what: "writing a control frame",
            source,
        })
}

/// Refuses a non-hello frame whose version is not the negotiated one.
pub fn check_negotiated(header: &FrameHeader, negotiated: Option<u16>) -> Result<()> {
    match negotiated {
        Some(v) if !is_hello_kind(header.kind) && header.version != v => {
            Err(ProtocolError::VersionMismatch {
                found: header.version,
                negotiated: v,
            })
        }
        _ => Ok(()),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ProtocolError::Io {
                    what: "reading a control frame",
                    source,
                })
            }
        }
    }
    Ok(filled)
}

/// The header at the start of every unidirectional data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub version: u16,
    pub kind: StreamKind,
    pub migration: MigrationId,
    pub index: u16,
}

impl StreamHeader {
    /// A header of the current protocol version.
    pub fn new(kind: StreamKind, migration: MigrationId, index: u16) -> StreamHeader {
        StreamHeader {
            version: PROTOCOL_VERSION,
            kind,
            migration,
            index,
        }
    }

    /// The header's 32 bytes.
    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[0..4].copy_from_slice(&STREAM_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.kind as u8;
        b[7] = 0;
        b[8..24].copy_from_slice(&self.migration.0);
        b[24..26].copy_from_slice(&self.index.to_le_bytes());
        b[26..28].copy_from_slice(&0u16.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks and decodes a header.
    pub fn decode(b: &[u8; STREAM_HEADER_LEN]) -> Result<StreamHeader> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != STREAM_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: FRAME_STREAM,
                found: magic,
                expected: STREAM_MAGIC,
            });
        }
        let stored = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let computed = crc32c::crc32c(&b[..28]);
        if stored != computed {
            return Err(ProtocolError::Checksum {
                what: FRAME_STREAM,
                stored,
                computed,
            });
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if !SUPPORTED.contains(version) {
            return Err(ProtocolError::UnsupportedVersion {
                what: FRAME_STREAM,
                found: version,
                supported: SUPPORTED,
            });
        }
        let kind = StreamKind::from_u8(b[6]).ok_or(ProtocolError::UnknownKind {
            what: FRAME_STREAM,
            kind: b[6],
        })?;
        if b[7] != 0 {
            return Err(ProtocolError::FlagsSet {
                what: FRAME_STREAM,
                flags: b[7],
            });
        }
        let reserved = u16::from_le_bytes([b[26], b[27]]);
        if reserved != 0 {
            return Err(ProtocolError::ReservedField { found: reserved });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[8..24]);
        Ok(StreamHeader {
            version,
            kind,
            migration: MigrationId(id),
            index: u16::from_le_bytes([b[24], b[25]]),
        })
    }
}

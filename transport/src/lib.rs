//! cr-transport: QUIC sessions between cr hosts. It knows nothing about
//! processes; `cr serve` and `cr migrate` build on it.
//!
//! ```text
//!   identity   ROOT/identity/{key.pem,cert.pem}   -> Identity, Fingerprint
//!   trust      ROOT/peers.toml                    -> TrustStore of Peer {name, address, fingerprint}
//!   endpoint   quinn + rustls (ring), mutual pinned TLS -> Session + ControlStream
//!   protocol   control frames (Message), data stream headers, version negotiation
//!   blocking   BlockingSend (io::Write) / BlockingRecv (io::Read) for engine threads
//! ```
//!
//! `docs/migration-protocol.md` specifies the protocol.

pub mod blocking;
pub mod endpoint;
pub mod identity;
pub mod protocol;
pub mod trust;

pub use blocking::{BlockingControl, BlockingRecv, BlockingSend};
pub use endpoint::{
    AcceptError, ConnectError, ControlStream, Endpoint, EndpointError, IncomingSession, Session,
    SessionError, Tuning,
};
pub use identity::{Fingerprint, FingerprintError, Identity, IdentityError};
pub use protocol::{Message, MigrationId, ProtocolError, StreamHeader, StreamKind};
pub use trust::{Peer, TrustError, TrustStore};

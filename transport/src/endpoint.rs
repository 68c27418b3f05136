//! QUIC endpoints with mutual, pinned authentication, and the sessions they
//! establish: `cr serve` listens with [`Endpoint::listen`] and admits
//! [`IncomingSession`]s; `cr migrate` uses [`Endpoint::client`] and
//! [`Endpoint::connect`].
//!
//! ```text
//!   client (cr migrate)                         server (cr serve)
//!   PinnedServer verifier:                      PinnedClients verifier:
//!     accepts exactly peer.fingerprint            accepts any fingerprint in peers.toml
//!   ---------------- QUIC Initial + TLS 1.3 (ALPN "cr-migrate") ---------------->
//!   <------------- server certificate + CertificateVerify ----------------------
//!     check fingerprint, then the handshake
//!     signature (ring's algorithms)
//!   ---------------- client certificate + CertificateVerify ------------------->
//!                                               check fingerprint and signature;
//!                                               unknown: TLS alert, the connection
//!                                               ends before any stream is read
//!   ---- control stream: Hello ------------------------------------------------>
//!   <--- HelloAck | HelloRefused -----------------------------------------------
//!   = Session (peer name, negotiated version) + ControlStream on both sides
//! ```
//!
//! Each connection gets its own verifier instance (`connect_with`,
//! `accept_with`), which records the fingerprint the other side offered, so
//! a refusal reports it: [`ConnectError::Mismatch`] names offered and
//! expected, [`AcceptError::UnknownClient`] names what an unknown client
//! offered (for `cr serve`'s log). The server reads the trust store snapshot
//! current at each accept ([`Endpoint::set_trust`]).
//!
//! Data streams are unidirectional, opened by the sender with
//! [`Session::open_stream`] (which writes the [`StreamHeader`]) and taken
//! by the receiver with [`Session::accept_stream`] (which checks it).
//!
//! [`Tuning`] sets the windows for bulk transfer on a LAN: a stream may
//! have 16 MiB in flight (more than a 1 Gbit/s path with 100 ms of RTT
//! needs, and little enough that a migration's pre-copy does not run
//! seconds ahead of a slow link; before the freeze the migration waits for
//! that backlog with `BlockingSend::drain`), a connection 256 MiB, and UDP socket buffers are
//! raised to 16 MiB so bursts are not dropped by the kernel; quinn sends
//! with GSO (10 segments per send) when the kernel offers it, and MTU
//! discovery goes up to [`MAX_MTU`] where the path allows. The receiver is
//! asked (QUIC's ACK frequency extension) to acknowledge every 32nd packet
//! or after 5 ms rather than every second one: on a 1500-byte LAN a bulk
//! stream is about 370,000 packets per 512 MiB, and the acknowledgements
//! were a packet, a send and a receive each, on both hosts' CPUs.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Fingerprint, Identity};
use crate::protocol::{
    self, negotiate, Hello, HelloAck, HelloRefused, Message, MigrationId, ProtocolError,
    StreamHeader, VersionRange, FRAME_HEADER_LEN, STREAM_HEADER_LEN, SUPPORTED,
};
use crate::trust::{Peer, TrustError, TrustStore};

/// The name every certificate carries and every client asks for. It is
/// not checked: peers are pinned by fingerprint.
pub const SERVER_NAME: &str = "cr-host";
/// The ALPN protocol id.
pub const ALPN: &[u8] = b"cr-migrate";
/// Default port of `cr serve`.
pub const DEFAULT_PORT: u16 = 7447;
/// The largest UDP payload used. quinn hands the kernel up to 10 GSO
/// segments per send and Linux refuses a UDP GSO send over 64 KiB, so
/// bigger segments fail to send and MTU discovery falls back to 1200.
pub const MAX_MTU: u16 = 6400;
/// Application close code: normal end of a session.
pub const CLOSE_DONE: u32 = 0;
/// Application close code: the protocol failed (bad frame, no common version).
pub const CLOSE_PROTOCOL: u32 = 1;
/// Stream reset code: the writer was dropped before `finish()`.
pub const RESET_ABANDONED: u32 = 2;
/// Stream stop code: the reader was dropped before the end.
pub const STOP_ABANDONED: u32 = 3;

/// Knobs for bulk throughput and liveness.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Bytes one stream may have unread at the receiver.
    pub stream_receive_window: u64,
    /// Bytes all streams of a connection may have unread at the receiver.
    pub receive_window: u64,
    /// Bytes the sender buffers unacknowledged.
    pub send_window: u64,
    /// UDP socket send and receive buffer size requested from the kernel.
    pub socket_buffer: usize,
    /// Largest UDP payload MTU discovery tries; capped at [`MAX_MTU`].
    /// On a 1500-byte LAN the probes above 1472 are lost and the path stays
    /// at 1472; on loopback or a veth/bridge with a larger MTU, bigger
    /// packets halve the per-byte cost (measured: `benches/quic_stream.rs`).
    pub mtu_upper_bound: u16,
    /// The peer acknowledges after this many packets that ask for it
    /// (QUIC ACK frequency extension; 1 is plain QUIC's every second one).
    pub ack_eliciting_threshold: u32,
    /// ... or at the latest this long after the first unacknowledged one
    /// (quinn clamps it to at most the path's RTT or 25 ms).
    pub max_ack_delay: Duration,
    /// Data streams the peer may open at once.
    pub max_streams: u32,
    /// A connection with no packet for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval (keeps a session alive through a long restore).
    pub keep_alive: Duration,
    /// How long the server waits for the client's `Hello`.
    pub hello_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            stream_receive_window: 16 << 20,
            receive_window: 256 << 20,
            send_window: 256 << 20,
            socket_buffer: 16 << 20,
            mtu_upper_bound: MAX_MTU,
            ack_eliciting_threshold: 31,
            max_ack_delay: Duration::from_millis(5),
            max_streams: 64,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no tokio runtime: create the endpoint inside a runtime (or under Handle::enter)")]
    NoRuntime,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("transport configuration: {0}")]
    Config(String),
    #[error("reading the local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Why `connect` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("resolving {address} of peer {peer}: {reason}")]
    Resolve {
        peer: String,
        address: String,
        reason: String,
    },
    #[error("connecting to peer {peer} at {address}: {reason}")]
    Connect {
        peer: String,
        address: SocketAddr,
        reason: String,
    },
    #[error("peer {peer} at {address} offered certificate {offered}, but {expected} is pinned for it; if the peer's identity changed, run `cr peer rm {peer}` and add it again")]
    Mismatch {
        peer: String,
        address: SocketAddr,
        offered: Fingerprint,
        expected: Fingerprint,
    },
    #[error("peer {peer} at {address} refused our certificate {ours}: {reason}; on {peer}, run `cr peer add` with this fingerprint")]
    Refused {
        peer: String,
        address: SocketAddr,
        ours: Fingerprint,
        reason: String,
    },
    #[error("handshake with peer {peer} at {address}: {reason}")]
    Handshake {
        peer: String,
        address: SocketAddr,
        reason: String,
    },
    #[error("peer {peer}: {source}")]
    Protocol {
        peer: String,
        #[source]
        source: ProtocolError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Why an incoming connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("refused {remote}: its certificate {offered} is not in the trusted peers")]
    UnknownClient {
        remote: SocketAddr,
        offered: Fingerprint,
    },
    #[error("handshake with {remote}: {reason}")]
    Handshake { remote: SocketAddr, reason: String },
    #[error("peer {peer} ({remote}): {source}")]
    Protocol {
        peer: String,
        remote: SocketAddr,
        #[source]
        source: ProtocolError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Why an operation on an established session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection to peer {peer} lost: {reason}")]
    ConnectionLost { peer: String, reason: String },
    #[error("peer {peer} refused our certificate {ours}: {reason}")]
    Refused {
        peer: String,
        ours: Fingerprint,
        reason: String,
    },
    #[error("peer {peer} reset the {what} (code {code})")]
    Reset {
        peer: String,
        what: &'static str,
        code: u64,
    },
    #[error("peer {peer}: {what} closed")]
    Closed { peer: String, what: &'static str },
    #[error("peer {peer}: {source}")]
    Protocol {
        peer: String,
        #[source]
        source: ProtocolError,
    },
    #[error("peer {peer}: no {what} within {after:?}")]
    Timeout {
        peer: String,
        what: &'static str,
        after: Duration,
    },
}

impl SessionError {
    /// Whether `e`, or an error it wraps, is the peer resetting or stopping
    /// a stream ([`SessionError::Reset`]); the blocking adapters carry it
    /// inside an `io::Error`, which is looked into too.
    pub fn is_reset_in(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut at = Some(e);
        while let Some(e) = at {
            if let Some(SessionError::Reset { .. }) = e.downcast_ref::<SessionError>() {
                return true;
            }
            // io::Error's source() skips the error it wraps.
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref());
            if inner.is_some_and(|inner| SessionError::is_reset_in(inner)) {
                return true;
            }
            at = e.source();
        }
        false
    }
}

/// A bound QUIC endpoint with this host's identity.
#[derive(Clone)]
pub struct Endpoint {
    quinn: quinn::Endpoint,
    identity: Identity,
    trust: Arc<RwLock<TrustStore>>,
    transport: Arc<quinn::TransportConfig>,
    tuning: Tuning,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local", &self.quinn.local_addr().ok())
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Endpoint {
    /// An endpoint that accepts sessions on `addr` (and can connect too).
    /// Call inside a tokio runtime context.
    pub fn listen(
        addr: SocketAddr,
        identity: &Identity,
        trust: TrustStore,
        tuning: Tuning,
    ) -> Result<Endpoint, EndpointError> {
        Endpoint::bind(addr, identity, trust, tuning, true)
    }

    /// An endpoint that only connects, bound to `bind` (usually
    /// `0.0.0.0:0`). Call inside a tokio runtime context.
    pub fn client(
        bind: SocketAddr,
        identity: &Identity,
        trust: TrustStore,
        tuning: Tuning,
    ) -> Result<Endpoint, EndpointError> {
        Endpoint::bind(bind, identity, trust, tuning, false)
    }

    fn bind(
        addr: SocketAddr,
        identity: &Identity,
        trust: TrustStore,
        tuning: Tuning,
        server: bool,
    ) -> Result<Endpoint, EndpointError> {
        let runtime = quinn::default_runtime().ok_or(EndpointError::NoRuntime)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EndpointError::NoRuntime);
        }
        let socket =
            UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
        set_socket_buffers(&socket, tuning.socket_buffer);
        let transport = Arc::new(transport_config(&tuning)?);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(tuning.mtu_upper_bound.clamp(1200, MAX_MTU))
            .map_err(|e| EndpointError::Config(format!("mtu_upper_bound: {e}")))?;
        let mut endpoint = Endpoint {
            quinn: quinn::Endpoint::new(endpoint_config, None, socket, runtime)
                .map_err(|source| EndpointError::Bind { addr, source })?,
            identity: identity.clone(),
            trust: Arc::new(RwLock::new(trust)),
            transport,
            tuning,
        };
        if server {
            let (config, _) = endpoint.server_config()?;
            endpoint.quinn.set_server_config(Some(config));
        }
        endpoint.quinn.set_default_client_config(
            endpoint
                .client_config(Fingerprint::from_bytes([0; 32]))
                .map(|(c, _)| c)?,
        );
        Ok(endpoint)
    }

    /// The bound UDP address (the ephemeral port, for tests).
    pub fn local_addr(&self) -> Result<SocketAddr, EndpointError> {
        self.quinn.local_addr().map_err(EndpointError::LocalAddr)
    }

    /// This endpoint's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Replaces the trusted peers; later accepts and connects use them
    /// (`cr serve` reloads `peers.toml` with this).
    pub fn set_trust(&self, trust: TrustStore) {
        match self.trust.write() {
            Ok(mut guard) => *guard = trust,
            Err(poisoned) => *poisoned.into_inner() = trust,
        }
    }

    /// A copy of the current trusted peers.
    pub fn trust(&self) -> TrustStore {
        match self.trust.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn server_config(&self) -> Result<(quinn::ServerConfig, OfferedSlot), EndpointError> {
        let trusted: Vec<Fingerprint> =
            self.trust().peers().iter().map(|p| p.fingerprint).collect();
        let offered = OfferedSlot::default();
        let verifier = Arc::new(PinnedClients {
            trusted,
            offered: offered.clone(),
            algorithms: provider().signature_verification_algorithms,
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| EndpointError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.identity.certificate().clone()],
                self.identity.private_key(),
            )
            .map_err(|e| EndpointError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        Ok((config, offered))
    }

    fn client_config(
        &self,
        expected: Fingerprint,
    ) -> Result<(quinn::ClientConfig, OfferedSlot), EndpointError> {
        let offered = OfferedSlot::default();
        let verifier = Arc::new(PinnedServer {
            expected,
            offered: offered.clone(),
            algorithms: provider().signature_verification_algorithms,
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| EndpointError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![self.identity.certificate().clone()],
                self.identity.private_key(),
            )
            .map_err(|e| EndpointError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        Ok((config, offered))
    }

    /// Connects to the trusted peer named `name`.
    pub async fn connect(&self, name: &str) -> Result<(Session, ControlStream), ConnectError> {
        let peer = self.trust().get(name)?.clone();
        self.connect_peer(&peer).await
    }

    /// Connects to `peer` (which need not be in the trust store: the client
    /// pins `peer.fingerprint` either way), then negotiates the version.
    pub async fn connect_peer(
        &self,
        peer: &Peer,
    ) -> Result<(Session, ControlStream), ConnectError> {
        self.connect_with_versions(peer, SUPPORTED).await
    }

    /// [`Endpoint::connect_peer`] offering `versions` instead of
    /// [`SUPPORTED`] (compatibility tests, and a build that must stay on an
    /// older version during a rolling upgrade).
    pub async fn connect_with_versions(
        &self,
        peer: &Peer,
        versions: VersionRange,
    ) -> Result<(Session, ControlStream), ConnectError> {
        let address = resolve(peer).await?;
        let (config, offered) =
            self.client_config(peer.fingerprint)
                .map_err(|e| ConnectError::Connect {
                    peer: peer.name.clone(),
                    address,
                    reason: e.to_string(),
                })?;
        let connecting = self
            .quinn
            .connect_with(config, address, SERVER_NAME)
            .map_err(|e| ConnectError::Connect {
                peer: peer.name.clone(),
                address,
                reason: e.to_string(),
            })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                return Err(match offered.get() {
                    Some(fp) if fp != peer.fingerprint => ConnectError::Mismatch {
                        peer: peer.name.clone(),
                        address,
                        offered: fp,
                        expected: peer.fingerprint,
                    },
                    _ => match refusal_reason(&e) {
                        Some(reason) => ConnectError::Refused {
                            peer: peer.name.clone(),
                            address,
                            ours: self.identity.fingerprint(),
                            reason,
                        },
                        None => ConnectError::Handshake {
                            peer: peer.name.clone(),
                            address,
                            reason: e.to_string(),
                        },
                    },
                });
            }
        };
        let session = Session {
            conn,
            peer: peer.clone(),
            ours: self.identity.fingerprint(),
            version: 0,
            send_window: self.tuning.send_window,
        };
        // With TLS 1.3 the client finishes its handshake before the server
        // has checked the client's certificate, so a refusal shows up on the
        // first exchange: the hello.
        let (send, recv) = session.conn.open_bi().await.map_err(|e| session.lost(e))?;
        let mut control = ControlStream {
            send,
            recv,
            version: None,
            peer: peer.name.clone(),
            ours: session.ours,
        };
        let hello = Message::Hello(Hello {
            versions,
            host: host_name(),
        });
        control.send_raw(versions.max, &hello).await?;
        let protocol_err = |source| ConnectError::Protocol {
            peer: peer.name.clone(),
            source,
        };
        let version = match control.recv().await? {
            Message::HelloAck(HelloAck { version }) => {
                if !versions.contains(version) {
                    return Err(protocol_err(ProtocolError::UnsupportedVersion {
                        what: "HelloAck",
                        found: version,
                        supported: versions,
                    }));
                }
                version
            }
            Message::HelloRefused(HelloRefused { supported, reason }) => {
                return Err(protocol_err(ProtocolError::Refused {
                    ours: versions,
                    theirs: supported,
                    reason,
                }))
            }
            other => {
                return Err(protocol_err(ProtocolError::Unexpected {
                    expected: "HelloAck",
                    got: other.name(),
                }))
            }
        };
        control.version = Some(version);
        Ok((Session { version, ..session }, control))
    }

    /// The next incoming connection; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<IncomingSession> {
        let incoming = self.quinn.accept().await?;
        Some(IncomingSession {
            incoming,
            endpoint: self.clone(),
        })
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.quinn
            .close(VarInt::from_u32(CLOSE_DONE), b"endpoint closed");
    }

    /// Waits until every connection has been closed cleanly (call before
    /// exiting so the peers see the close).
    pub async fn wait_idle(&self) {
        self.quinn.wait_idle().await;
    }

    /// The tuning this endpoint was built with.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }
}

/// A connection attempt not yet authenticated. `cr serve` spawns a task per
/// incoming and calls [`IncomingSession::establish`] there, so a slow peer
/// does not hold up the others.
pub struct IncomingSession {
    incoming: quinn::Incoming,
    endpoint: Endpoint,
}

impl IncomingSession {
    /// The UDP address the connection comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Runs the handshake with the trust store current now, then the
    /// version negotiation.
    pub async fn establish(self) -> Result<(Session, ControlStream), AcceptError> {
        let remote = self.incoming.remote_address();
        let trust = self.endpoint.trust();
        let handshake_err = |reason: String| AcceptError::Handshake { remote, reason };
        let (config, offered) = self
            .endpoint
            .server_config()
            .map_err(|e| handshake_err(e.to_string()))?;
        let connecting = self
            .incoming
            .accept_with(Arc::new(config))
            .map_err(|e| handshake_err(e.to_string()))?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                return Err(match offered.get() {
                    Some(fp) if trust.by_fingerprint(&fp).is_none() => AcceptError::UnknownClient {
                        remote,
                        offered: fp,
                    },
                    _ => handshake_err(e.to_string()),
                })
            }
        };
        let fingerprint = peer_fingerprint(&conn)
            .ok_or_else(|| handshake_err("no client certificate".to_string()))?;
        let peer =
            trust
                .by_fingerprint(&fingerprint)
                .cloned()
                .ok_or(AcceptError::UnknownClient {
                    remote,
                    offered: fingerprint,
                })?;
        let session = Session {
            conn,
            peer: peer.clone(),
            ours: self.endpoint.identity.fingerprint(),
            version: 0,
            send_window: self.endpoint.tuning.send_window,
        };
        let timeout = self.endpoint.tuning.hello_timeout;
        let timed_out = || SessionError::Timeout {
            peer: peer.name.clone(),
            what: "control stream",
            after: timeout,
        };
        let (send, recv) = tokio::time::timeout(timeout, session.conn.accept_bi())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| session.lost(e))?;
        let mut control = ControlStream {
            send,
            recv,
            version: None,
            peer: peer.name.clone(),
            ours: session.ours,
        };
        let first = tokio::time::timeout(timeout, control.recv())
            .await
            .map_err(|_| timed_out())??;
        let protocol_err = |source| AcceptError::Protocol {
            peer: peer.name.clone(),
            remote,
            source,
        };
        let theirs = match first {
            Message::Hello(hello) => hello.versions,
            other => {
                let err = ProtocolError::Unexpected {
                    expected: "Hello",
                    got: other.name(),
                };
                session.close(CLOSE_PROTOCOL, &err.to_string());
                return Err(protocol_err(err));
            }
        };
        match negotiate(SUPPORTED, theirs) {
            Ok(version) => {
                control
                    .send_raw(version, &Message::HelloAck(HelloAck { version }))
                    .await?;
                control.version = Some(version);
                Ok((Session { version, ..session }, control))
            }
            Err(err) => {
                let refusal = Message::HelloRefused(HelloRefused {
                    supported: SUPPORTED,
                    reason: err.to_string(),
                });
                // The refusal is best effort: the error is ours either way.
                let _ = control.send_raw(SUPPORTED.max, &refusal).await;
                let _ = control.send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), control.send.stopped()).await;
                session.close(CLOSE_PROTOCOL, "no common protocol version");
                Err(protocol_err(err))
            }
        }
    }
}

/// An authenticated connection to a trusted peer, after version
/// negotiation. Cheap to clone; every clone is the same connection. When
/// the last clone and the last stream of it are dropped, quinn closes the
/// connection at once and discards unsent data: keep a `Session` until the
/// peer has answered (for a data stream, [`crate::BlockingSend::finish`]
/// returns once the peer acknowledged every byte).
#[derive(Clone)]
pub struct Session {
    conn: quinn::Connection,
    peer: Peer,
    ours: Fingerprint,
    version: u16,
    /// [`Tuning::send_window`], which [`crate::BlockingSend::drain`] caps
    /// for a while and then puts back.
    send_window: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer.name)
            .field("remote", &self.conn.remote_address())
            .field("version", &self.version)
            .finish()
    }
}

impl Session {
    /// The trusted peer on the other end (its entry in peers.toml).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    pub(crate) fn ours(&self) -> Fingerprint {
        self.ours
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The underlying quinn connection (statistics, RTT).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The bytes the connection may have unacknowledged, as set up
    /// ([`Tuning::send_window`]).
    pub fn send_window(&self) -> u64 {
        self.send_window
    }

    /// Opens a data stream and writes its header.
    pub async fn open_stream(
        &self,
        header: StreamHeader,
    ) -> Result<quinn::SendStream, SessionError> {
        let mut send = self.conn.open_uni().await.map_err(|e| self.lost(e))?;
        send.write_all(&header.encode())
            .await
            .map_err(|e| self.write_error(e, "data stream"))?;
        Ok(send)
    }

    /// Accepts the next data stream the peer opened and checks its header
    /// (it must belong to `migration`).
    pub async fn accept_stream(
        &self,
        migration: MigrationId,
    ) -> Result<(StreamHeader, quinn::RecvStream), SessionError> {
        let mut recv = self.conn.accept_uni().await.map_err(|e| self.lost(e))?;
        let mut head = [0u8; STREAM_HEADER_LEN];
        recv.read_exact(&mut head)
            .await
            .map_err(|e| self.read_exact_error(e, "data stream header", STREAM_HEADER_LEN))?;
        let header = StreamHeader::decode(&head).map_err(|source| self.protocol(source))?;
        if header.migration != migration {
            return Err(self.protocol(ProtocolError::ForeignStream {
                expected: migration,
                found: header.migration,
            }));
        }
        Ok((header, recv))
    }

    /// Closes the connection with an application code and reason.
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Resolves when the connection is gone, with why.
    pub async fn closed(&self) -> SessionError {
        let e = self.conn.closed().await;
        self.lost(e)
    }

    pub(crate) fn lost(&self, e: quinn::ConnectionError) -> SessionError {
        connection_error(&self.peer.name, self.ours, e)
    }

    fn protocol(&self, source: ProtocolError) -> SessionError {
        SessionError::Protocol {
            peer: self.peer.name.clone(),
            source,
        }
    }

    fn write_error(&self, e: quinn::WriteError, what: &'static str) -> SessionError {
        write_error(&self.peer.name, self.ours, e, what)
    }

    fn read_exact_error(
        &self,
        e: quinn::ReadExactError,
        what: &'static str,
        expected: usize,
    ) -> SessionError {
        read_exact_error(&self.peer.name, self.ours, e, what, expected)
    }
}

pub(crate) fn connection_error(
    peer: &str,
    ours: Fingerprint,
    e: quinn::ConnectionError,
) -> SessionError {
    match refusal_reason(&e) {
        Some(reason) => SessionError::Refused {
            peer: peer.to_string(),
            ours,
            reason,
        },
        None => SessionError::ConnectionLost {
            peer: peer.to_string(),
            reason: e.to_string(),
        },
    }
}

pub(crate) fn write_error(
    peer: &str,
    ours: Fingerprint,
    e: quinn::WriteError,
    what: &'static str,
) -> SessionError {
    match e {
        quinn::WriteError::Stopped(code) => SessionError::Reset {
            peer: peer.to_string(),
            what,
            code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => connection_error(peer, ours, e),
        quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
            SessionError::Closed {
                peer: peer.to_string(),
                what,
            }
        }
    }
}

pub(crate) fn read_error(
    peer: &str,
    ours: Fingerprint,
    e: quinn::ReadError,
    what: &'static str,
) -> SessionError {
    match e {
        quinn::ReadError::Reset(code) => SessionError::Reset {
            peer: peer.to_string(),
            what,
            code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => connection_error(peer, ours, e),
        quinn::ReadError::ClosedStream
        | quinn::ReadError::IllegalOrderedRead
        | quinn::ReadError::ZeroRttRejected => SessionError::Closed {
            peer: peer.to_string(),
            what,
        },
    }
}

fn read_exact_error(
    peer: &str,
    ours: Fingerprint,
    e: quinn::ReadExactError,
    what: &'static str,
    expected: usize,
) -> SessionError {
    match e {
        quinn::ReadExactError::FinishedEarly(got) => SessionError::Protocol {
            peer: peer.to_string(),
            source: ProtocolError::Truncated {
                what,
                expected,
                got,
            },
        },
        quinn::ReadExactError::ReadError(e) => read_error(peer, ours, e, what),
    }
}

/// The control stream of a session: framed [`Message`]s both ways.
pub struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    version: Option<u16>,
    peer: String,
    ours: Fingerprint,
}

impl fmt::Debug for ControlStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlStream")
            .field("peer", &self.peer)
            .field("version", &self.version)
            .finish()
    }
}

impl ControlStream {
    /// The negotiated version every frame carries.
    pub fn version(&self) -> u16 {
        self.version.unwrap_or(SUPPORTED.max)
    }

    /// The peer's name.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub(crate) fn ours(&self) -> Fingerprint {
        self.ours
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), SessionError> {
        self.send_raw(self.version(), message).await
    }

    async fn send_raw(&mut self, version: u16, message: &Message) -> Result<(), SessionError> {
        let frame =
            protocol::encode(version, message).map_err(|source| SessionError::Protocol {
                peer: self.peer.clone(),
                source,
            })?;
        self.send
            .write_all(&frame)
            .await
            .map_err(|e| write_error(&self.peer, self.ours, e, "control stream"))
    }

    /// Receives one message; a frame with another version than the
    /// negotiated one, or any invalid frame, is an error.
    pub async fn recv(&mut self) -> Result<Message, SessionError> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        match self.recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => {
                return Err(SessionError::Protocol {
                    peer: self.peer.clone(),
                    source: ProtocolError::Closed,
                })
            }
            Err(e) => {
                return Err(read_exact_error(
                    &self.peer,
                    self.ours,
                    e,
                    "control frame",
                    FRAME_HEADER_LEN,
                ))
            }
        }
        let protocol = |source| SessionError::Protocol {
            peer: self.peer.clone(),
            source,
        };
        let header = protocol::decode_header(&head).map_err(protocol)?;
        protocol::check_negotiated(&header, self.version).map_err(protocol)?;
        let mut payload = vec![0u8; header.length as usize];
        self.recv.read_exact(&mut payload).await.map_err(|e| {
            read_exact_error(
                &self.peer,
                self.ours,
                e,
                "control frame",
                header.length as usize,
            )
        })?;
        protocol::decode_payload(&head, &header, &payload).map_err(protocol)
    }

    /// Ends our side of the control stream.
    pub fn finish(&mut self) {
        // Finishing twice is harmless; there is nothing to report.
        let _ = self.send.finish();
    }

    /// The two quinn halves and the negotiated version (for
    /// [`crate::blocking::BlockingControl`]).
    pub fn into_parts(self) -> (quinn::SendStream, quinn::RecvStream, u16, String) {
        let version = self.version();
        (self.send, self.recv, version, self.peer)
    }
}

/// Whether a connection error is the other side refusing our certificate
/// (a TLS alert), and its text.
fn refusal_reason(e: &quinn::ConnectionError) -> Option<String> {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..0x200).contains(&code).then(|| close.to_string())
        }
        _ => None,
    }
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of_certificate(c))
}

async fn resolve(peer: &Peer) -> Result<SocketAddr, ConnectError> {
    let fail = |reason: String| ConnectError::Resolve {
        peer: peer.name.clone(),
        address: peer.address.clone(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host(peer.address.as_str())
        .await
        .map_err(|e| fail(e.to_string()))?;
    addrs.next().ok_or_else(|| fail("no address".to_string()))
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf, which
    // lives for the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    let mut out = String::new();
    for c in name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > protocol::MAX_HOST {
            break;
        }
        out.push(c);
    }
    out
}

fn transport_config(tuning: &Tuning) -> Result<quinn::TransportConfig, EndpointError> {
    let varint = |what: &str, v: u64| {
        VarInt::from_u64(v).map_err(|_| EndpointError::Config(format!("{what} {v} is too large")))
    };
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(varint(
        "stream_receive_window",
        tuning.stream_receive_window,
    )?)
    .receive_window(varint("receive_window", tuning.receive_window)?)
    .send_window(tuning.send_window)
    .max_concurrent_uni_streams(VarInt::from_u32(tuning.max_streams))
    .max_concurrent_bidi_streams(VarInt::from_u32(4))
    .max_idle_timeout(Some(IdleTimeout::try_from(tuning.idle_timeout).map_err(
        |_| {
            EndpointError::Config(format!(
                "idle timeout {:?} is too long",
                tuning.idle_timeout
            ))
        },
    )?))
    .keep_alive_interval(Some(tuning.keep_alive))
    .datagram_receive_buffer_size(None)
    .enable_segmentation_offload(true);
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(tuning.ack_eliciting_threshold))
        .max_ack_delay(Some(tuning.max_ack_delay));
    t.ack_frequency_config(Some(ack));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(tuning.mtu_upper_bound.clamp(1200, MAX_MTU));
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}

/// Asks for large UDP buffers: SO_*BUFFORCE works for root beyond
/// net.core.[rw]mem_max; otherwise the plain option, capped by the kernel.
fn set_socket_buffers(socket: &UdpSocket, size: usize) {
    let fd = socket.as_raw_fd();
    let value: libc::c_int = size.min(i32::MAX as usize) as libc::c_int;
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt reads sizeof(c_int) bytes from &value, a
            // live local, on a socket fd we own.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

/// Where a verifier records the fingerprint the other side offered.
#[derive(Debug, Clone, Default)]
struct OfferedSlot(Arc<Mutex<Option<Fingerprint>>>);

impl OfferedSlot {
    fn set(&self, fp: Fingerprint) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(fp),
            Err(p) => *p.into_inner() = Some(fp),
        }
    }

    fn get(&self) -> Option<Fingerprint> {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// The client's verifier: the server must present exactly `expected`.
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    offered: OfferedSlot,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered = Fingerprint::of_certificate(end_entity);
        self.offered.set(offered);
        if offered == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's verifier: the client must present a trusted fingerprint.
#[derive(Debug)]
struct PinnedClients {
    trusted: Vec<Fingerprint>,
    offered: OfferedSlot,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let offered = Fingerprint::of_certificate(end_entity);
        self.offered.set(offered);
        if self.trusted.contains(&offered) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

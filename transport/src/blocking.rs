//! Blocking adapters so the engine's synchronous threads (dump writes to a
//! `std::io::Write`, restore reads from a `std::io::Read`) can use QUIC
//! streams driven by a tokio runtime running elsewhere.
//!
//! ```text
//!   engine thread                      runtime (any worker)
//!   BlockingSend::write ─ fills a 1 MiB chunk
//!        │ full / flush: blocking_send(Bytes) ─▶ [bounded queue, 4 chunks] ─▶ pump task:
//!        │                                                       write_chunk(..) on the SendStream
//!   drain(): send window capped, Barrier ───────────────────────▶ answered once QUIC took
//!        ◀──────────────────────────────────────────────────────── every piece before it
//!   finish(): last chunk + Finish ─────────────────────────────▶ finish(); stopped() = all acked
//!        ◀────────────────────────── oneshot: Ok(bytes) | Err(why) ──┘
//!
//!   BlockingRecv::read ◀─ blocking_recv ◀─ [bounded queue, 8 batches] ◀─ pump task:
//!                                                     read_chunks(..) from the RecvStream
//!   Data(batch) ... End (the sender's FIN)  |  Error (reset, connection lost)
//! ```
//!
//! The engine thread fills the next chunk while the runtime sends the one
//! before, so per-`write` overhead is a memcpy; the queues bound memory.
//!
//! A stream is complete only when the writer called [`BlockingSend::finish`]:
//! dropping a `BlockingSend` without it resets the stream, and the reader
//! then gets an error, never a silent short read. [`BlockingRecv::read`]
//! returns `Ok(0)` only after the sender's explicit FIN.
//!
//! **Threads.** These types block the calling thread. Use them from plain
//! `std::thread`s (or `spawn_blocking`), never from a runtime worker or from
//! inside `block_on`: there tokio panics ("Cannot block the current thread
//! from within a runtime") instead of deadlocking. The runtime must stay
//! alive, on other threads, while they are in use; if it shuts down, the
//! pending operation fails with an error.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::{
    connection_error, read_error, write_error, ControlStream, Session, SessionError,
    RESET_ABANDONED, STOP_ABANDONED,
};
use crate::identity::Fingerprint;
use crate::protocol::{self, Message, MigrationId, ProtocolError, StreamHeader};

/// Bytes gathered before a chunk is handed to the runtime.
pub const CHUNK: usize = 1 << 20;
const SEND_DEPTH: usize = 4;
const RECV_DEPTH: usize = 8;
const READ_BATCH: usize = 64;

enum Piece {
    Data(Bytes),
    /// Answered once QUIC has taken every piece before it.
    Barrier(std::sync::mpsc::SyncSender<()>),
    Finish,
}

/// A QUIC send stream as a blocking [`Write`].
pub struct BlockingSend {
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Piece>>,
    done: Option<oneshot::Receiver<Result<u64, SessionError>>>,
    peer: String,
    /// The connection and its usual send window, for [`BlockingSend::drain`]
    /// (None for a control stream).
    window: Option<(quinn::Connection, u64)>,
}

/// How often [`BlockingSend::drain`] asks whether to give up.
const DRAIN_POLL: Duration = Duration::from_millis(100);

impl BlockingSend {
    /// Opens a data stream on `session` (writing its header) and wraps it.
    pub fn open(
        handle: &Handle,
        session: &Session,
        header: StreamHeader,
    ) -> Result<BlockingSend, SessionError> {
        let stream = handle.block_on(session.open_stream(header))?;
        Ok(BlockingSend::new(handle, session, stream))
    }

    /// Wraps a send stream of `session`.
    pub fn new(handle: &Handle, session: &Session, stream: quinn::SendStream) -> BlockingSend {
        let mut send =
            BlockingSend::spawn(handle, stream, session.peer().name.clone(), session.ours());
        send.window = Some((session.connection().clone(), session.send_window()));
        send
    }

    fn spawn(
        handle: &Handle,
        stream: quinn::SendStream,
        peer: String,
        ours: Fingerprint,
    ) -> BlockingSend {
        let (tx, rx) = mpsc::channel(SEND_DEPTH);
        let (done_tx, done_rx) = oneshot::channel();
        let task_peer = peer.clone();
        handle.spawn(async move {
            let result = pump_send(stream, rx, &task_peer, ours).await;
            // The writer may be gone already; then nobody needs the result.
            let _ = done_tx.send(result);
        });
        BlockingSend {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            done: Some(done_rx),
            peer,
            window: None,
        }
    }

    /// Hands QUIC what is buffered and waits until it has taken every byte
    /// written so far, with at most `backlog` bytes of the whole connection
    /// left unacknowledged: what the link still has to carry is then at
    /// most `backlog`. A migration calls it before the freeze, so that a
    /// slow link's backlog crosses while the container still runs.
    ///
    /// The connection's send window is capped at `backlog` meanwhile and
    /// put back after. `cancelled` is asked every 100 ms; when it says so
    /// the wait ends with an `Interrupted` error.
    pub fn drain(&mut self, backlog: u64, cancelled: &dyn Fn() -> bool) -> io::Result<()> {
        let _cap = self.window.as_ref().map(|(conn, usual)| {
            conn.set_send_window(backlog);
            WindowCap {
                conn: conn.clone(),
                usual: *usual,
            }
        });
        self.send_buffer()?;
        let (taken_tx, taken) = std::sync::mpsc::sync_channel(1);
        self.send_piece(Piece::Barrier(taken_tx))?;
        loop {
            match taken.recv_timeout(DRAIN_POLL) {
                Ok(()) => return Ok(()),
                Err(RecvTimeoutError::Timeout) if cancelled() => {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        format!("waiting for the stream to peer {} to drain", self.peer),
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The pump stopped: it has the reason.
                    self.tx = None;
                    return Err(self.outcome_error());
                }
            }
        }
    }

    fn send_piece(&mut self, piece: Piece) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(self.finished_error());
        };
        if tx.blocking_send(piece).is_err() {
            // The pump stopped: it has the reason.
            self.tx = None;
            return Err(self.outcome_error());
        }
        Ok(())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.send_piece(Piece::Data(Bytes::from(full)))
    }

    /// Sends what is buffered, ends the stream with FIN and waits until the
    /// peer acknowledged every byte. Returns the bytes written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.send_buffer()?;
        self.send_piece(Piece::Finish)?;
        self.tx = None;
        self.wait_outcome()
    }

    fn wait_outcome(&mut self) -> io::Result<u64> {
        let Some(done) = self.done.take() else {
            return Err(self.finished_error());
        };
        match done.blocking_recv() {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(session_io_error(e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "stream to peer {}: the runtime stopped before the stream ended",
                    self.peer
                ),
            )),
        }
    }

    fn outcome_error(&mut self) -> io::Error {
        match self.wait_outcome() {
            Err(e) => e,
            Ok(_) => self.finished_error(),
        }
    }

    fn finished_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("stream to peer {} has failed or ended", self.peer),
        )
    }
}

impl Write for BlockingSend {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Err(self.finished_error());
        }
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    /// Hands the buffered bytes to the runtime (does not end the stream).
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

async fn pump_send(
    mut stream: quinn::SendStream,
    mut rx: mpsc::Receiver<Piece>,
    peer: &str,
    ours: Fingerprint,
) -> Result<u64, SessionError> {
    const WHAT: &str = "data stream";
    let mut total = 0u64;
    loop {
        match rx.recv().await {
            Some(Piece::Data(bytes)) => {
                total += bytes.len() as u64;
                stream
                    .write_chunk(bytes)
                    .await
                    .map_err(|e| write_error(peer, ours, e, WHAT))?;
            }
            Some(Piece::Barrier(taken)) => {
                // The writer may have given up waiting.
                let _ = taken.try_send(());
            }
            Some(Piece::Finish) => {
                stream.finish().map_err(|_| SessionError::Closed {
                    peer: peer.to_string(),
                    what: WHAT,
                })?;
                return match stream.stopped().await {
                    Ok(None) => Ok(total),
                    Ok(Some(code)) => Err(SessionError::Reset {
                        peer: peer.to_string(),
                        what: WHAT,
                        code: code.into_inner(),
                    }),
                    Err(quinn::StoppedError::ConnectionLost(e)) => {
                        Err(connection_error(peer, ours, e))
                    }
                    Err(quinn::StoppedError::ZeroRttRejected) => Err(SessionError::Closed {
                        peer: peer.to_string(),
                        what: WHAT,
                    }),
                };
            }
            None => {
                // Dropped without finish(): the reader must see an error.
                let _ = stream.reset(VarInt::from_u32(RESET_ABANDONED));
                return Err(SessionError::Closed {
                    peer: peer.to_string(),
                    what: WHAT,
                });
            }
        }
    }
}

/// Puts a connection's send window back when dropped.
struct WindowCap {
    conn: quinn::Connection,
    usual: u64,
}

impl Drop for WindowCap {
    fn drop(&mut self) {
        self.conn.set_send_window(self.usual);
    }
}

enum Item {
    Data(Vec<Bytes>),
    End,
    Error(SessionError),
}

/// A QUIC receive stream as a blocking [`Read`].
pub struct BlockingRecv {
    rx: mpsc::Receiver<Item>,
    pending: VecDeque<Bytes>,
    state: RecvState,
    peer: String,
}

enum RecvState {
    Open,
    End,
    /// Every read from now on returns this again.
    Failed(Failure),
}

/// How a receive stream failed, kept to be returned by every later read;
/// a reset stays a [`SessionError::Reset`] inside the `io::Error`, so that
/// callers can tell it from other failures by type.
enum Failure {
    Reset {
        peer: String,
        what: &'static str,
        code: u64,
    },
    Other(io::ErrorKind, String),
}

impl Failure {
    fn new(e: SessionError) -> Failure {
        match e {
            SessionError::Reset { peer, what, code } => Failure::Reset { peer, what, code },
            e => {
                let e = session_io_error(e);
                Failure::Other(e.kind(), e.to_string())
            }
        }
    }

    fn error(&self) -> io::Error {
        match self {
            Failure::Reset { peer, what, code } => session_io_error(SessionError::Reset {
                peer: peer.clone(),
                what,
                code: *code,
            }),
            Failure::Other(kind, message) => io::Error::new(*kind, message.clone()),
        }
    }
}

impl BlockingRecv {
    /// Accepts the next data stream of `migration` on `session` and wraps it.
    pub fn accept(
        handle: &Handle,
        session: &Session,
        migration: MigrationId,
    ) -> Result<(StreamHeader, BlockingRecv), SessionError> {
        let (header, stream) = handle.block_on(session.accept_stream(migration))?;
        Ok((header, BlockingRecv::new(handle, session, stream)))
    }

    /// Wraps a receive stream of `session`.
    pub fn new(handle: &Handle, session: &Session, stream: quinn::RecvStream) -> BlockingRecv {
        BlockingRecv::spawn(handle, stream, session.peer().name.clone(), session.ours())
    }

    fn spawn(
        handle: &Handle,
        stream: quinn::RecvStream,
        peer: String,
        ours: Fingerprint,
    ) -> BlockingRecv {
        let (tx, rx) = mpsc::channel(RECV_DEPTH);
        let task_peer = peer.clone();
        handle.spawn(pump_recv(stream, tx, task_peer, ours));
        BlockingRecv {
            rx,
            pending: VecDeque::new(),
            state: RecvState::Open,
            peer,
        }
    }

    fn refill(&mut self) -> io::Result<bool> {
        loop {
            match &self.state {
                RecvState::End => return Ok(false),
                RecvState::Failed(failure) => return Err(failure.error()),
                RecvState::Open => {}
            }
            match self.rx.blocking_recv() {
                Some(Item::Data(batch)) => {
                    self.pending
                        .extend(batch.into_iter().filter(|b| !b.is_empty()));
                    if !self.pending.is_empty() {
                        return Ok(true);
                    }
                }
                Some(Item::End) => self.state = RecvState::End,
                Some(Item::Error(e)) => self.state = RecvState::Failed(Failure::new(e)),
                None => {
                    self.state = RecvState::Failed(Failure::Other(
                        io::ErrorKind::BrokenPipe,
                        format!(
                            "stream from peer {}: the runtime stopped before the stream ended",
                            self.peer
                        ),
                    ))
                }
            }
        }
    }
}

impl Read for BlockingRecv {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pending.is_empty() && !self.refill()? {
            return Ok(0);
        }
        let mut filled = 0;
        while filled < out.len() {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let n = front.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&front[..n]);
            filled += n;
            if n == front.len() {
                self.pending.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        Ok(filled)
    }
}

async fn pump_recv(
    mut stream: quinn::RecvStream,
    tx: mpsc::Sender<Item>,
    peer: String,
    ours: Fingerprint,
) {
    let mut bufs: Vec<Bytes> = vec![Bytes::new(); READ_BATCH];
    loop {
        let item = match stream.read_chunks(&mut bufs).await {
            Ok(Some(n)) => Item::Data(bufs[..n].iter_mut().map(std::mem::take).collect()),
            Ok(None) => Item::End,
            Err(e) => Item::Error(read_error(&peer, ours, e, "data stream")),
        };
        let last = !matches!(item, Item::Data(_));
        if tx.send(item).await.is_err() {
            // The reader is gone before the end: tell the sender.
            let _ = stream.stop(VarInt::from_u32(STOP_ABANDONED));
            return;
        }
        if last {
            return;
        }
    }
}

/// A control stream for a synchronous thread.
pub struct BlockingControl {
    send: BlockingSend,
    recv: BlockingRecv,
    version: u16,
}

impl BlockingControl {
    /// Wraps an established control stream.
    pub fn new(handle: &Handle, control: ControlStream) -> BlockingControl {
        let ours = control.ours();
        let (send, recv, version, peer) = control.into_parts();
        BlockingControl {
            send: BlockingSend::spawn(handle, send, peer.clone(), ours),
            recv: BlockingRecv::spawn(handle, recv, peer, ours),
            version,
        }
    }

    /// Sends one message (flushed at once).
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        protocol::write_message(&mut self.send, self.version, message)
    }

    /// Receives one message of the negotiated version.
    pub fn recv(&mut self) -> Result<Message, ProtocolError> {
        protocol::read_message(&mut self.recv, Some(self.version))
    }

    /// Ends our side of the control stream and waits until the peer has it.
    pub fn finish(self) -> io::Result<u64> {
        self.send.finish()
    }
}

fn session_io_error(e: SessionError) -> io::Error {
    let kind = match &e {
        SessionError::ConnectionLost { .. } | SessionError::Refused { .. } => {
            io::ErrorKind::ConnectionAborted
        }
        SessionError::Reset { .. } => io::ErrorKind::ConnectionReset,
        SessionError::Closed { .. } => io::ErrorKind::BrokenPipe,
        SessionError::Protocol { .. } => io::ErrorKind::InvalidData,
        SessionError::Timeout { .. } => io::ErrorKind::TimedOut,
    };
    io::Error::new(kind, e)
}

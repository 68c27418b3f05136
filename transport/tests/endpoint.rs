//! Two endpoints on 127.0.0.1: mutual pinned authentication, refusals,
//! version negotiation over the wire, and bulk transfer through the
//! blocking adapters.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use cr_transport::endpoint::{AcceptError, ConnectError, SessionError};
use cr_transport::protocol::{MigrationRef, ProtocolError, VersionRange};
use cr_transport::{
    BlockingControl, BlockingRecv, BlockingSend, Endpoint, Identity, Message, MigrationId, Peer,
    StreamHeader, StreamKind, TrustStore, Tuning,
};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Pair {
    server: Endpoint,
    client: Endpoint,
    server_id: Identity,
    client_id: Identity,
    /// The server as the client knows it.
    server_peer: Peer,
}

/// A server trusting the client as "client1", a client trusting the server
/// as "server1".
fn pair(rt: &Runtime) -> Pair {
    pair_tuned(rt, Tuning::default())
}

/// [`pair`] with the server's windows as `server_tuning` says.
fn pair_tuned(rt: &Runtime, server_tuning: Tuning) -> Pair {
    let _guard = rt.enter();
    let server_id = Identity::generate().unwrap();
    let client_id = Identity::generate().unwrap();
    let server_trust = TrustStore::from_peers(vec![Peer::new(
        "client1",
        "127.0.0.1:1",
        client_id.fingerprint(),
    )
    .unwrap()])
    .unwrap();
    let server = Endpoint::listen(any(), &server_id, server_trust, server_tuning).unwrap();
    let addr = server.local_addr().unwrap();
    let server_peer = Peer::new("server1", &addr.to_string(), server_id.fingerprint()).unwrap();
    let client_trust = TrustStore::from_peers(vec![server_peer.clone()]).unwrap();
    let client = Endpoint::client(any(), &client_id, client_trust, Tuning::default()).unwrap();
    Pair {
        server,
        client,
        server_id,
        client_id,
        server_peer,
    }
}

#[test]
fn pinned_peers_authenticate_each_other() {
    let rt = runtime();
    let p = pair(&rt);
    let server = p.server.clone();
    let accepted = rt.spawn(async move {
        let (session, mut control) = server.accept().await.unwrap().establish().await.unwrap();
        let msg = control.recv().await.unwrap();
        control
            .send(&Message::Resumed(MigrationRef {
                migration: MigrationId([1; 16]),
            }))
            .await
            .unwrap();
        (session, control, msg)
    });
    let (session, mut control) = rt.block_on(p.client.connect("server1")).unwrap();
    assert_eq!(session.peer().name, "server1");
    assert_eq!(session.version(), 1);
    rt.block_on(control.send(&Message::Resume(MigrationRef {
        migration: MigrationId([1; 16]),
    })))
    .unwrap();
    let reply = rt.block_on(control.recv()).unwrap();
    assert_eq!(
        reply,
        Message::Resumed(MigrationRef {
            migration: MigrationId([1; 16])
        })
    );
    let (server_session, _server_control, msg) = rt.block_on(accepted).unwrap();
    let peer = server_session.peer();
    let version = server_session.version();
    assert_eq!(peer.name, "client1");
    assert_eq!(peer.fingerprint, p.client_id.fingerprint());
    assert_eq!(version, 1);
    assert_eq!(
        msg,
        Message::Resume(MigrationRef {
            migration: MigrationId([1; 16])
        })
    );
}

#[test]
fn unknown_client_is_refused_and_named() {
    let rt = runtime();
    let p = pair(&rt);
    let stranger = Identity::generate().unwrap();
    let stranger_ep = {
        let _g = rt.enter();
        Endpoint::client(
            any(),
            &stranger,
            TrustStore::from_peers(vec![p.server_peer.clone()]).unwrap(),
            Tuning::default(),
        )
        .unwrap()
    };
    let server = p.server.clone();
    let accepted = rt.spawn(async move { server.accept().await.unwrap().establish().await });
    let client_result = rt.block_on(stranger_ep.connect("server1"));
    let server_result = rt.block_on(accepted).unwrap();
    match server_result {
        Err(AcceptError::UnknownClient { offered, remote }) => {
            assert_eq!(offered, stranger.fingerprint());
            assert_eq!(remote, stranger_ep.local_addr().unwrap());
            let text = AcceptError::UnknownClient { offered, remote }.to_string();
            assert!(text.contains(&stranger.fingerprint().to_string()), "{text}");
        }
        other => panic!("expected UnknownClient, got {other:?}"),
    }
    // The client learns it was refused, with its own fingerprint named.
    let err = client_result.unwrap_err();
    let ours = stranger.fingerprint();
    match &err {
        ConnectError::Refused { ours: o, .. } => assert_eq!(*o, ours),
        ConnectError::Session(SessionError::Refused { ours: o, .. }) => assert_eq!(*o, ours),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(err.to_string().contains(&ours.to_string()), "{err}");
}

#[test]
fn mismatched_server_is_refused() {
    let rt = runtime();
    let p = pair(&rt);
    let wrong: cr_transport::Fingerprint = Identity::generate().unwrap().fingerprint();
    let pinned_wrong = Peer::new("server1", &p.server_peer.address, wrong).unwrap();
    let server = p.server.clone();
    let accepted = rt.spawn(async move {
        tokio::time::timeout(Duration::from_secs(5), async {
            server.accept().await.unwrap().establish().await
        })
        .await
    });
    let err = rt
        .block_on(p.client.connect_peer(&pinned_wrong))
        .unwrap_err();
    match &err {
        ConnectError::Mismatch {
            peer,
            offered,
            expected,
            ..
        } => {
            assert_eq!(peer, "server1");
            assert_eq!(*offered, p.server_id.fingerprint());
            assert_eq!(*expected, wrong);
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&p.server_id.fingerprint().to_string()) && text.contains(&wrong.to_string()),
        "{text}"
    );
    // The server never got a session out of it.
    match rt.block_on(accepted).unwrap() {
        Ok(Ok(s)) => panic!("server established {s:?}"),
        Ok(Err(AcceptError::Handshake { .. })) | Err(_) => {}
        Ok(Err(other)) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn trust_changes_apply_to_the_next_accept() {
    let rt = runtime();
    let p = pair(&rt);
    p.server.set_trust(TrustStore::default());
    let server = p.server.clone();
    let accepted = rt.spawn(async move { server.accept().await.unwrap().establish().await });
    assert!(rt.block_on(p.client.connect("server1")).is_err());
    assert!(matches!(
        rt.block_on(accepted).unwrap(),
        Err(AcceptError::UnknownClient { .. })
    ));
}

#[test]
fn version_negotiation_over_the_wire() {
    let rt = runtime();
    let p = pair(&rt);
    // Overlap: a client speaking 1..=5 gets 1 from this build.
    let server = p.server.clone();
    let accepted = rt.spawn(async move { server.accept().await.unwrap().establish().await });
    let (s, _c) = rt
        .block_on(
            p.client
                .connect_with_versions(&p.server_peer, VersionRange { min: 1, max: 5 }),
        )
        .unwrap();
    assert_eq!(s.version(), 1);
    let (server_side, _sc) = rt.block_on(accepted).unwrap().unwrap();
    assert_eq!(server_side.version(), 1);
    // No overlap: refused, both ranges named on both sides.
    let server = p.server.clone();
    let accepted =
        rt.spawn(async move { server.accept().await.unwrap().establish().await.map(|_| ()) });
    let err = rt
        .block_on(
            p.client
                .connect_with_versions(&p.server_peer, VersionRange { min: 7, max: 9 }),
        )
        .unwrap_err();
    match &err {
        ConnectError::Protocol {
            source:
                ProtocolError::Refused {
                    ours,
                    theirs,
                    reason,
                },
            ..
        } => {
            assert_eq!(*ours, VersionRange { min: 7, max: 9 });
            assert_eq!(*theirs, cr_transport::protocol::SUPPORTED);
            assert!(reason.contains("7..=9"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    match rt.block_on(accepted).unwrap() {
        Err(AcceptError::Protocol {
            source: ProtocolError::NoCommonVersion { theirs, .. },
            ..
        }) => {
            assert_eq!(theirs, VersionRange { min: 7, max: 9 })
        }
        other => panic!("expected NoCommonVersion, got {other:?}"),
    }
}

/// Deterministic bytes for stream `seed`.
fn fill(seed: u64, buf: &mut [u8], state: &mut u64) {
    if *state == 0 {
        *state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    }
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[test]
fn parallel_256_mib_arrives_byte_identical() {
    const TOTAL: u64 = 256 << 20;
    const STREAMS: u16 = 3;
    let rt = runtime();
    let p = pair(&rt);
    let migration = MigrationId([5; 16]);
    let server = p.server.clone();
    let server_session =
        rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() });
    let (client_session, _control) = rt.block_on(p.client.connect("server1")).unwrap();
    let (server_session, _server_control) = rt.block_on(server_session).unwrap();
    let per_stream = TOTAL / STREAMS as u64;

    let handle = rt.handle().clone();
    let senders: Vec<_> = (0..STREAMS)
        .map(|i| {
            let handle = handle.clone();
            let session = client_session.clone();
            std::thread::spawn(move || {
                let mut w = BlockingSend::open(
                    &handle,
                    &session,
                    StreamHeader::new(StreamKind::Pages, migration, i),
                )
                .unwrap();
                let mut buf = vec![0u8; 100_003]; // odd sizes cross chunk boundaries
                let mut state = 0;
                let mut crc = 0u32;
                let mut left = per_stream;
                while left > 0 {
                    let n = buf.len().min(left as usize);
                    fill(i as u64 + 1, &mut buf[..n], &mut state);
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    w.write_all(&buf[..n]).unwrap();
                    left -= n as u64;
                }
                assert_eq!(w.finish().unwrap(), per_stream);
                (i, crc)
            })
        })
        .collect();
    let receivers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let handle = handle.clone();
            let session = server_session.clone();
            std::thread::spawn(move || {
                let (header, mut r) = BlockingRecv::accept(&handle, &session, migration).unwrap();
                assert_eq!(header.kind, StreamKind::Pages);
                let mut buf = vec![0u8; 65_521];
                let mut crc = 0u32;
                let mut total = 0u64;
                loop {
                    let n = r.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    total += n as u64;
                }
                (header.index, crc, total)
            })
        })
        .collect();
    let mut sent: Vec<(u16, u32)> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let mut got: Vec<(u16, u32, u64)> = receivers.into_iter().map(|t| t.join().unwrap()).collect();
    sent.sort();
    got.sort();
    assert_eq!(got.len(), STREAMS as usize);
    for ((i, crc), (j, crc2, total)) in sent.iter().zip(&got) {
        assert_eq!(i, j);
        assert_eq!(*total, per_stream, "stream {i} length");
        assert_eq!(crc, crc2, "stream {i} content");
    }
}

/// Sets up one data stream and returns the reader's result after `cut`
/// ran on the writer side midway.
fn read_after(
    cut: impl FnOnce(BlockingSend, &cr_transport::Session) + Send + 'static,
) -> std::io::Result<u64> {
    let rt = runtime();
    let p = pair(&rt);
    let migration = MigrationId([6; 16]);
    let server = p.server.clone();
    let server_session =
        rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() });
    let (client_session, _control) = rt.block_on(p.client.connect("server1")).unwrap();
    let (server_session, _sc) = rt.block_on(server_session).unwrap();
    let handle = rt.handle().clone();
    let h2 = handle.clone();
    let writer = std::thread::spawn(move || {
        let mut w = BlockingSend::open(
            &h2,
            &client_session,
            StreamHeader::new(StreamKind::Records, migration, 0),
        )
        .unwrap();
        w.write_all(&vec![1u8; 3 << 20]).unwrap();
        w.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        cut(w, &client_session);
    });
    let (_, mut r) = BlockingRecv::accept(&handle, &server_session, migration).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let result = loop {
        match r.read(&mut buf) {
            Ok(0) => break Ok(total),
            Ok(n) => total += n as u64,
            Err(e) => break Err(e),
        }
    };
    writer.join().unwrap();
    result
}

#[test]
fn connection_closed_mid_stream_is_an_error_for_the_reader() {
    let result = read_after(|w, session| {
        session.close(9, "cut");
        drop(w);
    });
    let err = result.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("client1"), "{err}");
}

#[test]
fn writer_dropped_without_finish_is_an_error_for_the_reader() {
    let err = read_after(|w, _| drop(w)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // A reset, by type, not only by kind or text.
    assert!(SessionError::is_reset_in(&err), "{err}");
}

#[test]
fn finished_stream_reads_to_its_end() {
    let n = read_after(|w, _| {
        w.finish().unwrap();
    })
    .unwrap();
    assert_eq!(n, 3 << 20);
}

#[test]
fn foreign_migration_stream_is_refused() {
    let rt = runtime();
    let p = pair(&rt);
    let server = p.server.clone();
    let ss = rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() });
    let (cs, _c) = rt.block_on(p.client.connect("server1")).unwrap();
    let (ss, _sc) = rt.block_on(ss).unwrap();
    let mut send = rt
        .block_on(cs.open_stream(StreamHeader::new(
            StreamKind::Files,
            MigrationId([1; 16]),
            0,
        )))
        .unwrap();
    send.finish().unwrap();
    match rt.block_on(ss.accept_stream(MigrationId([2; 16]))) {
        Err(SessionError::Protocol {
            source: ProtocolError::ForeignStream { expected, found },
            ..
        }) => {
            assert_eq!(expected, MigrationId([2; 16]));
            assert_eq!(found, MigrationId([1; 16]));
        }
        other => panic!("expected ForeignStream, got {other:?}"),
    }
}

#[test]
fn blocking_control_exchanges_messages() {
    let rt = runtime();
    let p = pair(&rt);
    let server = p.server.clone();
    let ss = rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() });
    let (_cs, cc) = rt.block_on(p.client.connect("server1")).unwrap();
    let (_ss, sc) = rt.block_on(ss).unwrap();
    let handle = rt.handle().clone();
    let h2 = handle.clone();
    let server_thread = std::thread::spawn(move || {
        let mut control = BlockingControl::new(&h2, sc);
        let got = control.recv().unwrap();
        control
            .send(&Message::Restored(MigrationRef {
                migration: MigrationId([3; 16]),
            }))
            .unwrap();
        let closed = control.recv();
        (got, closed)
    });
    let mut control = BlockingControl::new(&handle, cc);
    control
        .send(&Message::Resume(MigrationRef {
            migration: MigrationId([3; 16]),
        }))
        .unwrap();
    assert_eq!(
        control.recv().unwrap(),
        Message::Restored(MigrationRef {
            migration: MigrationId([3; 16])
        })
    );
    control.finish().unwrap();
    let (got, closed) = server_thread.join().unwrap();
    assert_eq!(
        got,
        Message::Resume(MigrationRef {
            migration: MigrationId([3; 16])
        })
    );
    assert!(matches!(closed, Err(ProtocolError::Closed)), "{closed:?}");
}

/// A reader that takes 128 KiB every 10 ms (about 13 MB/s) through a 2 MiB
/// stream window: after `drain(1 MiB)` the writer may have at most that
/// unacknowledged, and the receiver at most its window unread, so all but
/// 3 MiB of what was written has been read. Without the drain the writer's
/// own queue (about 5 MiB) and the window would still be on their way.
#[test]
fn drain_waits_until_little_is_left_to_carry() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const MIB: u64 = 1 << 20;
    const WRITTEN: u64 = 12 * MIB;
    const BACKLOG: u64 = MIB;
    const WINDOW: u64 = 2 * MIB;
    let rt = runtime();
    let tuning = Tuning {
        stream_receive_window: WINDOW,
        ..Tuning::default()
    };
    let p = pair_tuned(&rt, tuning);
    let migration = MigrationId([8; 16]);
    let server = p.server.clone();
    let ss = rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() });
    let (cs, _cc) = rt.block_on(p.client.connect("server1")).unwrap();
    let (ss, _sc) = rt.block_on(ss).unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let counted = read.clone();
    let reader = rt.spawn(async move {
        let (_, mut recv) = ss.accept_stream(migration).await.unwrap();
        let mut buf = vec![0u8; 128 << 10];
        loop {
            match recv.read(&mut buf).await.unwrap() {
                Some(n) => counted.fetch_add(n as u64, Ordering::SeqCst),
                None => break,
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ss
    });
    let mut w = BlockingSend::open(
        rt.handle(),
        &cs,
        StreamHeader::new(StreamKind::Pages, migration, 0),
    )
    .unwrap();
    w.write_all(&vec![7u8; WRITTEN as usize]).unwrap();
    w.drain(BACKLOG, &|| false).unwrap();
    let at_drain = read.load(Ordering::SeqCst);
    assert!(
        at_drain >= WRITTEN - BACKLOG - WINDOW,
        "drained with only {at_drain} of {WRITTEN} bytes read"
    );
    // The window is back: the rest goes, and the stream ends complete.
    w.write_all(&vec![7u8; MIB as usize]).unwrap();
    assert_eq!(w.finish().unwrap(), WRITTEN + MIB);
    let _ss = rt.block_on(reader).unwrap();
    assert_eq!(read.load(Ordering::SeqCst), WRITTEN + MIB);

    // A drain that is cancelled gives up with Interrupted.
    let stop = AtomicBool::new(false);
    let mut w = BlockingSend::open(
        rt.handle(),
        &cs,
        StreamHeader::new(StreamKind::Pages, migration, 1),
    )
    .unwrap();
    w.write_all(&vec![7u8; 4 * MIB as usize]).unwrap();
    stop.store(true, Ordering::SeqCst);
    let err = w.drain(1, &|| stop.load(Ordering::SeqCst)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "{err}");
}

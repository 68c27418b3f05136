//! Control frames and data stream headers: round trips, and every corrupt
//! byte refused with its exact error.

use cr_transport::protocol::*;

fn id() -> MigrationId {
    MigrationId([7; 16])
}

fn all_messages() -> Vec<Message> {
    let m = || MigrationRef { migration: id() };
    vec![
        Message::Hello(Hello {
            versions: VersionRange { min: 1, max: 1 },
            host: "host1".into(),
        }),
        Message::HelloAck(HelloAck { version: 1 }),
        Message::HelloRefused(HelloRefused {
            supported: SUPPORTED,
            reason: "no".into(),
        }),
        Message::Offer(Offer {
            migration: id(),
            container: "web1".into(),
            config: b"memory = \"1G\"\n".to_vec(),
            sizes: ImageSizes {
                memory: 1 << 30,
                disk: 8 << 30,
                files: 12345,
            },
            layer: Some(LayerDigest([9; 32])),
            mode: TransferMode::StopAndCopy,
        }),
        Message::Accept(m()),
        Message::LayerQuery(LayerQuery {
            migration: id(),
            digest: LayerDigest([1; 32]),
        }),
        Message::LayerHave(LayerHave {
            migration: id(),
            digest: LayerDigest([1; 32]),
            have: true,
        }),
        Message::StreamsOpen(StreamsOpen {
            migration: id(),
            streams: vec![
                StreamDecl {
                    kind: StreamKind::Records,
                    index: 0,
                },
                StreamDecl {
                    kind: StreamKind::Pages,
                    index: 0,
                },
                StreamDecl {
                    kind: StreamKind::Pages,
                    index: 1,
                },
            ],
        }),
        Message::Committed(Committed {
            migration: id(),
            streams: vec![StreamTotal {
                kind: StreamKind::Pages,
                index: 0,
                bytes: 1 << 30,
            }],
        }),
        Message::Restored(m()),
        Message::Resume(m()),
        Message::Resumed(m()),
        Message::Confirm(m()),
        Message::Failed(Failed {
            migration: id(),
            phase: Phase::Restore,
            reason: "mount failed".into(),
        }),
        Message::Abort(Abort {
            migration: id(),
            reason: "interrupted".into(),
        }),
        Message::Query(m()),
        Message::Outcome(Outcome {
            migration: id(),
            state: OutcomeState::Resumed,
        }),
    ]
}

/// Rewrites the header CRC after tampering so the check under test is reached.
fn fix_crc(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..12]), &frame[16..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn frame_of(message: &Message) -> Vec<u8> {
    encode(PROTOCOL_VERSION, message).unwrap()
}

#[test]
fn every_message_round_trips() {
    let messages = all_messages();
    let kinds: std::collections::BTreeSet<u8> = messages.iter().map(|m| m.kind()).collect();
    assert_eq!(kinds.len(), messages.len(), "kinds are unique");
    for message in messages {
        let frame = frame_of(&message);
        assert_eq!(&frame[..4], b"CRMP");
        assert_eq!(frame[6], message.kind());
        assert_eq!(
            u32::from_le_bytes(frame[8..12].try_into().unwrap()) as usize,
            frame.len() - 16
        );
        let (version, back) = decode(&frame).unwrap();
        assert_eq!(version, PROTOCOL_VERSION);
        assert_eq!(back, message);
        // And through the blocking reader/writer.
        let mut wire = Vec::new();
        write_message(&mut wire, PROTOCOL_VERSION, &message).unwrap();
        let mut reader = &wire[..];
        assert_eq!(
            read_message(&mut reader, Some(PROTOCOL_VERSION)).unwrap(),
            message
        );
        assert!(matches!(
            read_message(&mut reader, Some(1)),
            Err(ProtocolError::Closed)
        ));
    }
}

#[test]
fn corrupt_headers_are_refused_exactly() {
    let good = frame_of(&Message::Resume(MigrationRef { migration: id() }));

    let mut f = good.clone();
    f[0] = b'X';
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::BadMagic { found, .. } if &found == b"XRMP"),
        "{e}"
    );

    let mut f = good.clone();
    f[7] = 0x80;
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::FlagsSet { flags: 0x80, .. }
    ));

    let mut f = good.clone();
    f[6] = 99;
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::UnknownKind { kind: 99, .. }
    ));

    let mut f = good.clone();
    f[6] = 34;
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::ReservedKind {
                kind: 34,
                name: "PageRequest"
            }
        ),
        "{e}"
    );

    let mut f = good.clone();
    f[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::UnsupportedVersion { found, supported, .. } if found == PROTOCOL_VERSION + 1 && supported == SUPPORTED),
        "{e}"
    );
    let mut f = good.clone();
    f[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::UnsupportedVersion { found: 0, .. }
    ));

    let mut f = good.clone();
    f[8..12].copy_from_slice(&(MAX_MESSAGE_LEN + 1).to_le_bytes());
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::TooLong { len, max } if len == MAX_MESSAGE_LEN + 1 && max == MAX_MESSAGE_LEN)
    );

    // Length says one byte more than there is.
    let mut f = good.clone();
    let len = u32::from_le_bytes(f[8..12].try_into().unwrap());
    f[8..12].copy_from_slice(&(len + 1).to_le_bytes());
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Truncated { expected, got, .. } if expected == len as usize + 1 && got == len as usize),
        "{e}"
    );
    let mut reader = &f[..];
    let e = read_message(&mut reader, None).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Truncated { expected, got, .. } if expected == 16 + len as usize + 1 && got == 16 + len as usize),
        "{e}"
    );

    // A header cut short.
    let mut reader = &good[..10];
    let e = read_message(&mut reader, None).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Truncated {
                expected: 16,
                got: 10,
                ..
            }
        ),
        "{e}"
    );

    // A flipped payload byte and a flipped crc byte.
    let mut f = good.clone();
    *f.last_mut().unwrap() ^= 1;
    let stored = u32::from_le_bytes(f[12..16].try_into().unwrap());
    let computed = crc32c::crc32c_append(crc32c::crc32c(&f[..12]), &f[16..]);
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(e, ProtocolError::Checksum { stored: s, computed: c, .. } if s == stored && c == computed),
        "{e}"
    );
    let mut f = good.clone();
    f[13] ^= 0xff;
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::Checksum { .. }
    ));
}

#[test]
fn negotiated_version_is_enforced_after_hello() {
    // A frame claiming version 1 on a session that negotiated 2 (as a newer
    // build would) is refused; hello kinds are exempt.
    let resume = frame_of(&Message::Resume(MigrationRef { migration: id() }));
    let mut reader = &resume[..];
    let e = read_message(&mut reader, Some(2)).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::VersionMismatch {
                found: 1,
                negotiated: 2
            }
        ),
        "{e}"
    );
    let ack = frame_of(&Message::HelloAck(HelloAck { version: 1 }));
    let mut reader = &ack[..];
    read_message(&mut reader, Some(2)).unwrap();
    // A Hello from a far newer build still decodes (its layout is frozen).
    let hello = encode(
        40,
        &Message::Hello(Hello {
            versions: VersionRange { min: 39, max: 40 },
            host: String::new(),
        }),
    )
    .unwrap();
    assert_eq!(decode(&hello).unwrap().0, 40);
}

#[test]
fn payload_errors_name_the_message_and_field() {
    // Trailing bytes after a valid payload.
    let mut f = frame_of(&Message::Resume(MigrationRef { migration: id() }));
    f.push(0);
    let len = (f.len() - 16) as u32;
    f[8..12].copy_from_slice(&len.to_le_bytes());
    fix_crc(&mut f);
    let e = decode(&f).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::TrailingBytes {
                kind: "Resume",
                extra: 1
            }
        ),
        "{e}"
    );

    // A payload that is not the message at all.
    let mut f = frame_of(&Message::Resume(MigrationRef { migration: id() }));
    f.truncate(16 + 3);
    f[8..12].copy_from_slice(&3u32.to_le_bytes());
    fix_crc(&mut f);
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::Decode { kind: "Resume", .. }
    ));

    // An unknown enum value (phase 200) inside Failed.
    let failed = Message::Failed(Failed {
        migration: id(),
        phase: Phase::Hello,
        reason: String::new(),
    });
    let mut f = frame_of(&failed);
    f[16 + 16] = 200;
    fix_crc(&mut f);
    assert!(matches!(
        decode(&f).unwrap_err(),
        ProtocolError::Decode { kind: "Failed", .. }
    ));

    let offer = |name: &str| {
        Message::Offer(Offer {
            migration: id(),
            container: name.into(),
            config: vec![],
            sizes: ImageSizes::default(),
            layer: None,
            mode: TransferMode::StopAndCopy,
        })
    };
    for bad in ["../../etc", "a/b", "", ".hidden", "x\0y", &"n".repeat(65)] {
        let e = decode(&frame_of(&offer(bad))).unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Invalid {
                    kind: "Offer",
                    field: "container",
                    ..
                }
            ),
            "{bad:?}: {e}"
        );
    }
    let e = decode(&frame_of(&Message::Hello(Hello {
        versions: VersionRange { min: 3, max: 2 },
        host: String::new(),
    })))
    .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Invalid {
                kind: "Hello",
                field: "versions",
                ..
            }
        ),
        "{e}"
    );
    let e = decode(&frame_of(&Message::HelloAck(HelloAck { version: 0 }))).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Invalid {
                kind: "HelloAck",
                field: "version",
                ..
            }
        ),
        "{e}"
    );
    let e = decode(&frame_of(&Message::Abort(Abort {
        migration: id(),
        reason: "a\u{1b}[2J".into(),
    })))
    .unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Invalid {
                kind: "Abort",
                field: "reason",
                ..
            }
        ),
        "{e}"
    );
    let twice = Message::StreamsOpen(StreamsOpen {
        migration: id(),
        streams: vec![
            StreamDecl {
                kind: StreamKind::Pages,
                index: 1
            };
            2
        ],
    });
    let e = decode(&frame_of(&twice)).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::Invalid {
                kind: "StreamsOpen",
                field: "streams",
                ..
            }
        ),
        "{e}"
    );

    let huge = Message::Failed(Failed {
        migration: id(),
        phase: Phase::Hello,
        reason: "x".repeat(MAX_MESSAGE_LEN as usize + 1),
    });
    assert!(matches!(
        encode(1, &huge).unwrap_err(),
        ProtocolError::EncodeTooLong { kind: "Failed", .. }
    ));
}

#[test]
fn version_negotiation() {
    let r = |min, max| VersionRange { min, max };
    assert_eq!(negotiate(r(1, 3), r(2, 5)).unwrap(), 3);
    assert_eq!(negotiate(r(2, 5), r(1, 3)).unwrap(), 3);
    assert_eq!(negotiate(r(1, 1), r(1, 1)).unwrap(), 1);
    assert_eq!(negotiate(r(4, 4), r(1, 4)).unwrap(), 4);
    let e = negotiate(r(1, 2), r(3, 4)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no common protocol version: we support versions 1..=2, the peer supports versions 3..=4"
    );
    assert!(matches!(
        negotiate(r(1, 2), r(2, 1)),
        Err(ProtocolError::NoCommonVersion { .. })
    ));
    // Current and previous are accepted.
    assert_eq!(SUPPORTED.max, PROTOCOL_VERSION);
    assert!(SUPPORTED.min >= PROTOCOL_VERSION.saturating_sub(1).max(1));
}

#[test]
fn stream_headers_round_trip_and_refuse_corruption() {
    for (kind, index) in [
        (StreamKind::Records, 0),
        (StreamKind::Pages, 2),
        (StreamKind::DiskClusters, 0),
        (StreamKind::Files, 0),
        (StreamKind::Layer, 0),
    ] {
        let h = StreamHeader::new(kind, id(), index);
        let b = h.encode();
        assert_eq!(b.len(), STREAM_HEADER_LEN);
        assert_eq!(StreamHeader::decode(&b).unwrap(), h);
    }
    let good = StreamHeader::new(StreamKind::Pages, id(), 1).encode();
    let recrc = |b: &mut [u8; STREAM_HEADER_LEN]| {
        let c = crc32c::crc32c(&b[..28]);
        b[28..].copy_from_slice(&c.to_le_bytes());
    };
    let mut b = good;
    b[3] = b'X';
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::BadMagic { .. }
    ));
    let mut b = good;
    b[10] ^= 1;
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::Checksum { .. }
    ));
    let mut b = good;
    b[4] = 9;
    recrc(&mut b);
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::UnsupportedVersion { found: 9, .. }
    ));
    let mut b = good;
    b[6] = 6;
    recrc(&mut b);
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::UnknownKind { kind: 6, .. }
    ));
    let mut b = good;
    b[7] = 1;
    recrc(&mut b);
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::FlagsSet { flags: 1, .. }
    ));
    let mut b = good;
    b[26] = 1;
    recrc(&mut b);
    assert!(matches!(
        StreamHeader::decode(&b).unwrap_err(),
        ProtocolError::ReservedField { found: 1 }
    ));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: random frames and mutations of good ones.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let goods: Vec<Vec<u8>> = all_messages().iter().map(frame_of).collect();
    for i in 0..20000 {
        let mut f = goods[i % goods.len()].clone();
        let flips = 1 + (next() % 4) as usize;
        for _ in 0..flips {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        if i % 2 == 0 {
            fix_crc(&mut f);
        }
        let _ = decode(&f);
        let mut hb = [0u8; STREAM_HEADER_LEN];
        for b in hb.iter_mut() {
            *b = next() as u8;
        }
        let _ = StreamHeader::decode(&hb);
    }
}

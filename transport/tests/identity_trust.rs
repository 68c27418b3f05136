//! Identity creation and loading, fingerprints, and the trust store.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};

use cr_transport::identity::{CERT_FILE, IDENTITY_DIR, KEY_FILE};
use cr_transport::trust::PEERS_FILE;
use cr_transport::{
    Fingerprint, FingerprintError, Identity, IdentityError, Peer, TrustError, TrustStore,
};

const FP_A: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const FP_B: &str = "sha256:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn fingerprint_round_trips() {
    let fp: Fingerprint = FP_A.parse().unwrap();
    assert_eq!(fp.to_string(), FP_A);
    assert_eq!(fp.as_bytes()[1], 0x11);
    let id = Identity::generate().unwrap();
    let shown = id.fingerprint().to_string();
    assert_eq!(shown.len(), 7 + 64);
    assert_eq!(shown.parse::<Fingerprint>().unwrap(), id.fingerprint());
    assert_eq!(
        id.fingerprint(),
        Fingerprint::of_certificate(id.certificate())
    );
}

#[test]
fn fingerprint_parsing_is_strict() {
    let hex = &FP_A[7..];
    assert_eq!(
        hex.parse::<Fingerprint>().unwrap_err(),
        FingerprintError::MissingPrefix {
            input: hex.to_string()
        }
    );
    let upper = format!("sha256:{}", hex.to_uppercase());
    assert_eq!(
        upper.parse::<Fingerprint>().unwrap_err(),
        FingerprintError::NotLowercaseHex {
            input: upper.clone(),
            position: 27,
            found: 'A'
        }
    );
    let short = &FP_A[..FP_A.len() - 2];
    assert_eq!(
        short.parse::<Fingerprint>().unwrap_err(),
        FingerprintError::Length {
            input: short.to_string(),
            len: 62
        }
    );
    let long = format!("{FP_A}00");
    assert_eq!(
        long.parse::<Fingerprint>().unwrap_err(),
        FingerprintError::Length {
            input: long.clone(),
            len: 66
        }
    );
    let colon = format!("{}:{}", &FP_A[..9], &FP_A[10..]);
    assert_eq!(
        colon.parse::<Fingerprint>().unwrap_err(),
        FingerprintError::NotLowercaseHex {
            input: colon.clone(),
            position: 9,
            found: ':'
        }
    );
    let spaced = format!(" {FP_A}");
    assert!(matches!(
        spaced.parse::<Fingerprint>(),
        Err(FingerprintError::MissingPrefix { .. })
    ));
    assert!(matches!(
        "sha256:".parse::<Fingerprint>(),
        Err(FingerprintError::Length { len: 0, .. })
    ));
}

#[test]
fn identity_is_created_once_and_reloaded_identical() {
    let root = tempfile::tempdir().unwrap();
    let first = Identity::load_or_create(root.path()).unwrap();
    let dir = root.path().join(IDENTITY_DIR);
    let key_mode = std::fs::metadata(dir.join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let again = Identity::load_or_create(root.path()).unwrap();
    let loaded = Identity::load(root.path()).unwrap();
    assert_eq!(first.fingerprint(), again.fingerprint());
    assert_eq!(first.fingerprint(), loaded.fingerprint());
    assert_eq!(first.certificate(), loaded.certificate());
    // Nothing but the identity directory is left in the root.
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![IDENTITY_DIR.to_string()]);
    // A different root has a different identity.
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        Identity::load_or_create(other.path())
            .unwrap()
            .fingerprint(),
        first.fingerprint()
    );
}

#[test]
fn concurrent_creation_yields_one_identity() {
    for _ in 0..5 {
        let root = tempfile::tempdir().unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.path().to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    Identity::load_or_create(&root).unwrap().fingerprint()
                })
            })
            .collect();
        let fps: Vec<Fingerprint> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(fps.iter().all(|fp| *fp == fps[0]), "{fps:?}");
        assert_eq!(Identity::load(root.path()).unwrap().fingerprint(), fps[0]);
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "temp directories left behind"
        );
    }
}

#[test]
fn concurrent_creation_across_processes_yields_one_identity() {
    // Processes, not threads: each child is this test binary re-run on the
    // helper test below, racing on one root.
    if std::env::var_os("CR_IDENTITY_RACE_ROOT").is_some() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "identity_race_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("CR_IDENTITY_RACE_ROOT", root.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut fps = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.split_once("FP "))
            .expect("child printed no fingerprint");
        fps.push(line.1.trim().parse::<Fingerprint>().unwrap());
    }
    assert!(fps.iter().all(|fp| *fp == fps[0]), "{fps:?}");
    assert_eq!(Identity::load(root.path()).unwrap().fingerprint(), fps[0]);
}

#[test]
fn identity_race_child() {
    if let Some(root) = std::env::var_os("CR_IDENTITY_RACE_ROOT") {
        let id = Identity::load_or_create(std::path::Path::new(&root)).unwrap();
        println!("FP {}", id.fingerprint());
    }
}

#[test]
fn identity_refuses_readable_key_and_half_directory() {
    let root = tempfile::tempdir().unwrap();
    Identity::load_or_create(root.path()).unwrap();
    let key = root.path().join(IDENTITY_DIR).join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    match Identity::load(root.path()) {
        Err(IdentityError::KeyPermissions { path, mode }) => {
            assert_eq!(path, key);
            assert_eq!(mode, 0o644);
        }
        other => panic!("expected KeyPermissions, got {other:?}"),
    }
    std::fs::remove_file(root.path().join(IDENTITY_DIR).join(CERT_FILE)).unwrap();
    match Identity::load_or_create(root.path()) {
        Err(IdentityError::Incomplete {
            present, missing, ..
        }) => {
            assert_eq!(present, KEY_FILE);
            assert_eq!(missing, CERT_FILE);
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
}

#[test]
fn identity_refuses_key_of_another_certificate() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Identity::load_or_create(a.path()).unwrap();
    Identity::load_or_create(b.path()).unwrap();
    std::fs::copy(
        b.path().join(IDENTITY_DIR).join(CERT_FILE),
        a.path().join(IDENTITY_DIR).join(CERT_FILE),
    )
    .unwrap();
    assert!(matches!(
        Identity::load(a.path()),
        Err(IdentityError::KeyMismatch { .. })
    ));
}

fn peer(name: &str, address: &str, fp: &str) -> Peer {
    Peer::new(name, address, fp.parse().unwrap()).unwrap()
}

#[test]
fn trust_store_add_list_lookup_remove() {
    let root = tempfile::tempdir().unwrap();
    assert!(TrustStore::load(root.path()).unwrap().peers().is_empty());
    TrustStore::add_peer(root.path(), peer("host2", "10.88.1.2:7447", FP_A)).unwrap();
    TrustStore::add_peer(root.path(), peer("host3", "[fd00::3]:7447", FP_B)).unwrap();
    let store = TrustStore::load(root.path()).unwrap();
    let names: Vec<&str> = store.peers().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["host2", "host3"]);
    assert_eq!(store.by_name("host2").unwrap().address, "10.88.1.2:7447");
    assert_eq!(
        store.by_fingerprint(&FP_B.parse().unwrap()).unwrap().name,
        "host3"
    );
    assert_eq!(
        store.by_name("host3").unwrap().host_port().unwrap(),
        ("fd00::3", 7447)
    );
    assert!(store.by_name("host4").is_none());
    let text = std::fs::read_to_string(root.path().join(PEERS_FILE)).unwrap();
    assert!(text.contains("[[peer]]") && text.contains(FP_A), "{text}");

    let removed = TrustStore::remove_peer(root.path(), "host2").unwrap();
    assert_eq!(removed.fingerprint.to_string(), FP_A);
    let store = TrustStore::load(root.path()).unwrap();
    assert_eq!(store.peers().len(), 1);
    assert!(store.by_fingerprint(&FP_A.parse().unwrap()).is_none());
    // Only peers.toml and the lock remain: no temp files.
    let mut names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["peers.lock", "peers.toml"]);
}

#[test]
fn trust_store_refuses_duplicates_and_unknown_names() {
    let root = tempfile::tempdir().unwrap();
    TrustStore::add_peer(root.path(), peer("host2", "10.88.1.2:7447", FP_A)).unwrap();
    match TrustStore::add_peer(root.path(), peer("host2", "10.88.1.9:7447", FP_B)) {
        Err(TrustError::DuplicateName { name, address }) => {
            assert_eq!(name, "host2");
            assert_eq!(address, "10.88.1.2:7447");
        }
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    match TrustStore::add_peer(root.path(), peer("other", "10.88.1.9:7447", FP_A)) {
        Err(TrustError::DuplicateFingerprint { existing, .. }) => assert_eq!(existing, "host2"),
        other => panic!("expected DuplicateFingerprint, got {other:?}"),
    }
    let err = TrustStore::remove_peer(root.path(), "nosuch").unwrap_err();
    assert_eq!(err.to_string(), "no peer named \"nosuch\" (known: host2)");
    // The failed edits changed nothing.
    assert_eq!(TrustStore::load(root.path()).unwrap().peers().len(), 1);
}

#[test]
fn trust_store_concurrent_adds_keep_every_peer() {
    let root = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let root = root.path().to_path_buf();
            std::thread::spawn(move || {
                let fp = Fingerprint::from_bytes([i as u8 + 1; 32]);
                TrustStore::add_peer(
                    &root,
                    Peer::new(&format!("h{i}"), "10.0.0.1:1", fp).unwrap(),
                )
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(TrustStore::load(root.path()).unwrap().peers().len(), 8);
}

#[test]
fn peer_names_and_addresses_are_checked() {
    let fp: Fingerprint = FP_A.parse().unwrap();
    for bad in ["", "../x", "a/b", "-x", ".x", "a b", &"x".repeat(65)] {
        assert!(
            matches!(
                Peer::new(bad, "1.2.3.4:5", fp),
                Err(TrustError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    for bad in [
        "1.2.3.4",
        "1.2.3.4:0",
        "1.2.3.4:70000",
        ":7447",
        "fd00::1:7447",
        "[fd00::1:7447",
        "[zz]:1",
        "a b:1",
    ] {
        assert!(
            matches!(
                Peer::new("ok", bad, fp),
                Err(TrustError::InvalidAddress { .. })
            ),
            "{bad:?}"
        );
    }
    for good in ["1.2.3.4:7447", "host2.lan:1", "[::1]:7447"] {
        Peer::new("ok", good, fp).unwrap();
    }
}

#[test]
fn hand_edited_store_with_errors_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join(PEERS_FILE);
    std::fs::write(&path, format!("[[peer]]\nname = \"a\"\naddress = \"1.2.3.4:1\"\nfingerprint = \"{FP_A}\"\n[[peer]]\nname = \"a\"\naddress = \"1.2.3.4:2\"\nfingerprint = \"{FP_B}\"\n")).unwrap();
    assert!(matches!(
        TrustStore::load(root.path()),
        Err(TrustError::Parse { .. })
    ));
    std::fs::write(
        &path,
        "[[peer]]\nname = \"a\"\naddress = \"1.2.3.4:1\"\nfingerprint = \"sha256:zz\"\n",
    )
    .unwrap();
    let err = TrustStore::load(root.path()).unwrap_err();
    assert!(err.to_string().contains("sha256:zz"), "{err}");
}

//! A host's identity: an ECDSA P-256 key pair and a self-signed certificate,
//! created on first use under the host's state root and loaded afterwards.
//! Peers pin each other by the certificate's [`Fingerprint`], like SSH's
//! known_hosts pins host keys; nothing here depends on a CA, a name or a date.
//!
//! ```text
//!   ROOT/identity/            mode 0700, appears whole (rename of a temp dir)
//!     key.pem                 PKCS#8 private key, mode 0600
//!     cert.pem                self-signed X.509 certificate
//!
//!   fingerprint = "sha256:" + lowercase hex of SHA-256(certificate DER)
//! ```
//!
//! Creation is atomic: the key and certificate are written and synced into
//! `ROOT/identity.tmp-PID-RANDOM/`, then that directory is renamed to
//! `ROOT/identity`. When two processes race, one rename wins; the loser's
//! rename fails (the target is not empty), it removes its temp directory and
//! loads the winner's identity, so both end up with the same one.
//!
//! Loading refuses a key file that group or others can read (as ssh does),
//! a key that does not match the certificate, and a half-populated directory.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The directory under a state root that holds the identity.
pub const IDENTITY_DIR: &str = "identity";
/// The private key's file name inside [`IDENTITY_DIR`].
pub const KEY_FILE: &str = "key.pem";
/// The certificate's file name inside [`IDENTITY_DIR`].
pub const CERT_FILE: &str = "cert.pem";

/// Why an identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating the host key and certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a PEM {what}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "{dir} holds {present} but not {missing}; move the directory away to create a new identity"
    )]
    Incomplete {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("the key in {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        reason: String,
    },
}

/// Why a fingerprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("fingerprint {input:?} does not start with \"sha256:\"")]
    MissingPrefix { input: String },
    #[error("fingerprint {input:?} has {len} hex digits after \"sha256:\", expected 64")]
    Length { input: String, len: usize },
    #[error("fingerprint {input:?} has {found:?} at position {position}; expected a lowercase hex digit")]
    NotLowercaseHex {
        input: String,
        position: usize,
        found: char,
    },
}

/// SHA-256 of a certificate's DER bytes. Shown and parsed as
/// `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The prefix of the text form.
    pub const PREFIX: &'static str = "sha256:";

    /// The fingerprint of a certificate given as DER bytes.
    pub fn of_certificate(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// A fingerprint from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(input: &str) -> Result<Fingerprint, FingerprintError> {
        let hex =
            input
                .strip_prefix(Self::PREFIX)
                .ok_or_else(|| FingerprintError::MissingPrefix {
                    input: input.to_string(),
                })?;
        // Check the characters first, so a stray non-ASCII character is
        // named rather than miscounted.
        for (i, c) in hex.chars().enumerate() {
            if !matches!(c, '0'..='9' | 'a'..='f') {
                return Err(FingerprintError::NotLowercaseHex {
                    input: input.to_string(),
                    position: Self::PREFIX.len() + i,
                    found: c,
                });
            }
        }
        if hex.len() != 64 {
            return Err(FingerprintError::Length {
                input: input.to_string(),
                len: hex.len(),
            });
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            bytes[i] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Fingerprint(bytes))
    }
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A host's key pair and certificate, ready for TLS.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `root/identity/`, creating it first if it does not exist.
    /// Safe against concurrent callers on the same root.
    pub fn load_or_create(root: &Path) -> Result<Identity, IdentityError> {
        let dir = root.join(IDENTITY_DIR);
        match Identity::load(root) {
            Ok(identity) => return Ok(identity),
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(root).map_err(|source| IdentityError::Io {
            what: "creating the state root",
            path: root.to_path_buf(),
            source,
        })?;
        let tmp = root.join(format!(
            "{IDENTITY_DIR}.tmp-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        let result = Identity::write_new(&tmp).and_then(|_| {
            match fs::rename(&tmp, &dir) {
                Ok(()) => sync_dir(root),
                // Another process created it first: keep theirs.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    Ok(())
                }
                Err(source) => Err(IdentityError::Io {
                    what: "renaming the new identity into place",
                    path: dir.clone(),
                    source,
                }),
            }
        });
        // Gone after a successful rename; left after a lost race or a failure.
        let _ = fs::remove_dir_all(&tmp);
        result?;
        Identity::load(root)
    }

    /// Loads an existing `root/identity/`. A missing directory is an
    /// [`IdentityError::Io`] with kind `NotFound`.
    pub fn load(root: &Path) -> Result<Identity, IdentityError> {
        let dir = root.join(IDENTITY_DIR);
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        fs::metadata(&dir).map_err(|source| IdentityError::Io {
            what: "reading the identity directory",
            path: dir.clone(),
            source,
        })?;
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => {}
            (false, false) => {
                return Err(IdentityError::Io {
                    what: "reading the host key",
                    path: key_path,
                    source: io::Error::from(io::ErrorKind::NotFound),
                })
            }
            (true, false) => {
                return Err(IdentityError::Incomplete {
                    dir,
                    present: KEY_FILE,
                    missing: CERT_FILE,
                })
            }
            (false, true) => {
                return Err(IdentityError::Incomplete {
                    dir,
                    present: CERT_FILE,
                    missing: KEY_FILE,
                })
            }
        }
        let mode = fs::metadata(&key_path)
            .map_err(|source| IdentityError::Io {
                what: "reading the host key",
                path: key_path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::KeyPermissions {
                path: key_path,
                mode: mode & 0o7777,
            });
        }
        let key_pem = read(&key_path, "reading the host key")?;
        let cert_pem = read(&cert_path, "reading the host certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| IdentityError::Pem {
            what: "private key",
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| IdentityError::Pem {
            what: "certificate",
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        let identity = Identity::from_der(cert, key);
        identity
            .check_key_matches()
            .map_err(|reason| IdentityError::KeyMismatch {
                key: key_path,
                cert: cert_path,
                reason,
            })?;
        Ok(identity)
    }

    /// A fresh identity kept in memory only (tests, one-off tools).
    pub fn generate() -> Result<Identity, IdentityError> {
        let (cert_pem, key_pem) = generate_pem()?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
                what: "private key",
                path: PathBuf::from("(generated)"),
                reason: e.to_string(),
            })?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            IdentityError::Pem {
                what: "certificate",
                path: PathBuf::from("(generated)"),
                reason: e.to_string(),
            }
        })?;
        Ok(Identity::from_der(cert, key))
    }

    fn from_der(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Identity {
        let fingerprint = Fingerprint::of_certificate(&cert);
        Identity {
            cert,
            key: Arc::new(key),
            fingerprint,
        }
    }

    fn check_key_matches(&self) -> Result<(), String> {
        let signer =
            rustls::crypto::ring::sign::any_supported_type(&self.key).map_err(|e| e.to_string())?;
        rustls::sign::CertifiedKey::new(vec![self.cert.clone()], signer)
            .keys_match()
            .map_err(|e| e.to_string())
    }

    /// The certificate's fingerprint: what peers pin (`cr identity` prints it).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate in DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Writes a new key and certificate into `dir` (created, mode 0700).
    fn write_new(dir: &Path) -> Result<(), IdentityError> {
        let (cert_pem, key_pem) = generate_pem()?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|source| IdentityError::Io {
                what: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
        write_synced(&dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
        write_synced(&dir.join(CERT_FILE), cert_pem.as_bytes(), 0o644)?;
        sync_dir(dir)
    }
}

/// A new key pair and self-signed certificate, both PEM.
fn generate_pem() -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![crate::endpoint::SERVER_NAME.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cr host");
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Io {
            what: "syncing",
            path: dir.to_path_buf(),
            source,
        })
}

/// A random number for temp names (not a secret).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SystemRandom only fails when the kernel's getrandom fails; fall back
    // to the time then, which is good enough for a temp name.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return nanos;
    }
    u64::from_le_bytes(bytes)
}

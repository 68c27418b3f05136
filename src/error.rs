//! The engine's error type: every failure says what failed and where (which
//! container, which file, which system call), so the CLI can print it as one
//! sentence.

use std::io;
use std::path::{Path, PathBuf};

use crate::container::cgroups::CgroupError;
use crate::container::network::NetworkError;
use crate::dump::DumpError;
use crate::image::ImageError;
use crate::inject::InjectError;
use crate::size::SizeError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cr must run as root (it creates namespaces, cgroups and network devices); run it with sudo")]
    NotRoot,
    #[error("invalid {kind} name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit")]
    InvalidName { kind: &'static str, name: String },
    #[error("no container named {0:?} (see `cr list`)")]
    NoSuchContainer(String),
    #[error("a container named {0:?} already exists")]
    ContainerExists(String),
    #[error("container {name:?} is {state}; {action} needs it {needed}")]
    WrongState {
        name: String,
        state: String,
        action: &'static str,
        needed: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("container {name:?} failed to start: {message}")]
    Start { name: String, message: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("checkpoint image: {0}")]
    Format(#[from] cr_formats::FormatError),
    #[error("disk: {0}")]
    Disk(Box<cr_formats::DiskError>),
    /// A migration's data stream failed; `what` names the stream and the
    /// peer.
    #[error("{what}: {source}")]
    Stream {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// An I/O error on `path` while doing `what` ("reading", "creating directory", ...).
    pub fn io(what: impl Into<String>, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A failed system call, described by what it was for.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }

    /// A failure of the data stream `what` ("sending the Records stream to
    /// host2").
    pub fn stream(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Stream {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether this failure is the peer resetting a data stream: then the
    /// peer's own reason (a `Failed` on the control stream) is the one to
    /// report, and on the receiving side it is the echo of another error.
    pub fn is_peer_reset(&self) -> bool {
        cr_transport::SessionError::is_reset_in(self)
    }
}

/// Attaches "what, where" to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, what: &str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: &str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}

/// Attaches "what" to a `nix::Result`.
pub trait SysContext<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cr_transport::SessionError;

    fn reset() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            SessionError::Reset {
                peer: "host2".into(),
                what: "data stream",
                code: 2,
            },
        )
    }

    #[test]
    fn a_peer_reset_is_found_through_every_wrapper() {
        let format = |source| cr_formats::FormatError::Io { offset: 7, source };
        assert!(Error::stream("sending the Records stream to host2", reset()).is_peer_reset());
        assert!(Error::Format(format(reset())).is_peer_reset());
        assert!(Error::io("sending", "/x", io::Error::other(format(reset()))).is_peer_reset());
        // The text alone is not the error.
        let text = Error::Invalid(reset().to_string());
        assert!(text.to_string().contains("reset the data stream"));
        assert!(!text.is_peer_reset());
        let lost = io::Error::new(
            io::ErrorKind::ConnectionAborted,
            SessionError::ConnectionLost {
                peer: "host2".into(),
                reason: "timed out".into(),
            },
        );
        assert!(!Error::stream("sending", lost).is_peer_reset());
    }
}

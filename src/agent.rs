//! `cr serve`: the agent on every host that accepts migrations. It listens
//! for QUIC sessions from trusted peers (`cr peer add`), serves each on a
//! thread of its own (a migration, or a source's `Query` about one), and
//! logs every migration's phases to its standard error.
//!
//! ```text
//!  accept loop (tokio) ── incoming ──▶ task: handshake (pinned mutual TLS),
//!                                      version ──▶ blocking thread:
//!                                      migrate::destination::serve_session
//! ```
//!
//! A thread runs [`crate::migrate::recover`] every second: a `cr migrate`
//! killed on this host (its container frozen, its network locked) is
//! settled by the agent without anyone running cr again.
//!
//! Several migrations run at once without sharing anything but the
//! outcome table: each has its own migration id, staging directory,
//! container and streams.

use std::net::SocketAddr;
use std::sync::Arc;

use cr_transport::{Endpoint, Identity, TrustStore, Tuning};

use crate::error::{Error, Result};
use crate::host::Host;
use crate::migrate::destination::{serve_session, Outcomes};

/// The port `cr serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = cr_transport::endpoint::DEFAULT_PORT;

/// How often the agent looks for migrations that a killed process left.
const RECOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A peer silent this long has lost its session (keep-alives every 5 s
/// keep a live one open through a long restore).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs the agent until the process is stopped.
pub fn serve(host: &Host, listen: SocketAddr) -> Result<()> {
    let identity = Identity::load_or_create(host.root())
        .map_err(|e| Error::Invalid(format!("this host's identity: {e}")))?;
    let trust = TrustStore::load(host.root()).map_err(|e| Error::Invalid(e.to_string()))?;
    for line in crate::migrate::recover(host) {
        eprintln!("cr serve: {line}");
    }
    let rt = crate::migrate::runtime()?;
    let endpoint = {
        let _guard = rt.enter();
        Endpoint::listen(
            listen,
            &identity,
            trust,
            Tuning {
                // A source silent this long is gone (killed, cut off): its
                // migration is cleaned up here.
                idle_timeout: IDLE_TIMEOUT,
                ..Tuning::default()
            },
        )
        .map_err(|e| Error::Invalid(format!("listening on {listen}: {e}")))?
    };
    let bound = endpoint
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    eprintln!(
        "cr serve: listening on {bound} as {} (root {})",
        identity.fingerprint(),
        host.root().display()
    );
    // What a `cr migrate` killed on this host leaves (a container frozen,
    // its network locked) is settled within a second or two, without
    // anyone running cr again. Migrations in progress, the agent's own
    // included, are not touched (recovery skips live processes).
    {
        let host = host.clone();
        std::thread::Builder::new()
            .name("cr-recovery".into())
            .spawn(move || loop {
                std::thread::sleep(RECOVERY_INTERVAL);
                for line in crate::migrate::recover(&host) {
                    eprintln!("cr serve: {line}");
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the recovery thread: {e}")))?;
    }
    let outcomes: Outcomes = Arc::default();
    let handle = rt.handle().clone();
    rt.block_on(async move {
        while let Some(incoming) = endpoint.accept().await {
            let remote = incoming.remote_address();
            // The trust store as it is now: peers added since the start count.
            match TrustStore::load(host.root()) {
                Ok(trust) => endpoint.set_trust(trust),
                Err(e) => eprintln!("cr serve: reading the trusted peers: {e}"),
            }
            let (host, outcomes, handle) = (host.clone(), outcomes.clone(), handle.clone());
            tokio::spawn(async move {
                match incoming.establish().await {
                    Ok((session, control)) => {
                        let peer = session.peer().name.clone();
                        let served = tokio::task::spawn_blocking(move || {
                            serve_session(&host, &handle, session, control, &outcomes)
                        })
                        .await;
                        match served {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => eprintln!("cr serve: session with {peer}: {e}"),
                            Err(e) => eprintln!("cr serve: session with {peer} panicked: {e}"),
                        }
                    }
                    Err(e) => eprintln!("cr serve: refused {remote}: {e}"),
                }
            });
        }
    });
    Ok(())
}

//! Container networking: the host bridge, a veth pair per container, the
//! container side's address, MAC and routes.
//!
//! INTERFACE SKETCH (to be implemented).

use nix::unistd::Pid;

use crate::container::config::NetConfig;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Netlink(String),
}

/// Creates the bridge if missing, brings it up, ensures it has an address in
/// the container's prefix (the prefix's first host address when it has none),
/// creates the veth pair, moves the peer into the network namespace of
/// `init_pid` as `eth0` with the configured MAC and address, brings up `lo`
/// and `eth0`, and adds a default route via the bridge's address.
pub fn setup(_net: &NetConfig, _init_pid: Pid) -> Result<(), NetworkError> {
    todo!()
}

/// Removes the host side of the veth pair if it still exists.
pub fn teardown(_net: &NetConfig) -> Result<(), NetworkError> {
    todo!()
}

pub fn veth_name(root: &str, container: &str) -> String {
    format!("crv{:08x}", crate::host::short_hash(format!("{root}/{container}").as_bytes()))
}

//! `cr freeze` / `cr thaw`: stop and resume every task of a container at
//! once through its freezer cgroup.

use crate::container::state::Status;
use crate::container::Container;
use crate::error::{Error, Result};

pub fn freeze(container: &Container) -> Result<()> {
    container.require_running("freeze")?;
    Ok(container.cgroup()?.freeze()?)
}

/// In a container's directory: its network namespace was left locked by a
/// frozen restore (`cr restore --frozen`); the thaw lifts the lock.
pub const NETLOCK_MARK: &str = "netlock";

pub fn thaw(container: &Container) -> Result<()> {
    match container.status()? {
        (Status::Frozen, pid) => {
            let mark = container.dir.join(NETLOCK_MARK);
            if let (true, Some(pid)) = (mark.exists(), pid) {
                crate::netlock::NetLock::left_on(pid.as_raw())?.unlock_left()?;
                let _ = std::fs::remove_file(&mark);
            }
            Ok(container.cgroup()?.thaw()?)
        }
        (state, _) => Err(Error::WrongState {
            name: container.name.clone(),
            state: state.to_string(),
            action: "thaw",
            needed: "frozen",
        }),
    }
}

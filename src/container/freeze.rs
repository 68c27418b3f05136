//! `cr freeze` / `cr thaw`: stop and resume every task of a container at
//! once through its freezer cgroup.

use crate::container::state::Status;
use crate::container::Container;
use crate::error::{Error, Result};

pub fn freeze(container: &Container) -> Result<()> {
    container.require_running("freeze")?;
    Ok(container.cgroup()?.freeze()?)
}

pub fn thaw(container: &Container) -> Result<()> {
    match container.status()?.0 {
        Status::Frozen => Ok(container.cgroup()?.thaw()?),
        state => Err(Error::WrongState {
            name: container.name.clone(),
            state: state.to_string(),
            action: "thaw",
            needed: "frozen",
        }),
    }
}

//! `cr freeze` and `cr thaw`.

use crate::cli::run::NameArg;
use crate::container::freeze;
use crate::container::Container;
use crate::host::Host;

pub fn freeze(host: &Host, args: NameArg) -> anyhow::Result<i32> {
    freeze::freeze(&Container::open(host, &args.name)?)?;
    Ok(0)
}

pub fn thaw(host: &Host, args: NameArg) -> anyhow::Result<i32> {
    freeze::thaw(&Container::open(host, &args.name)?)?;
    Ok(0)
}

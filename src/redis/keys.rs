//! Key names, wire formats and the Lua scripts.

use std::str::FromStr;

use super::error::BackplaneError;
use super::DecodeError;
use crate::{Epoch, Version};

pub(super) const SYNC_LUA: &str = include_str!("sync.lua");
pub(super) const MODIFY_LUA: &str = include_str!("modify.lua");

/// The Redis names of one channel.
#[derive(Debug)]
pub(super) struct Keys {
    pub(super) state: String,
    pub(super) history: String,
    pub(super) channel: String,
}

impl Keys {
    pub(super) fn new(prefix: &str, name: &str) -> Self {
        Keys {
            state: format!("{prefix}state:{name}"),
            history: format!("{prefix}history:{name}"),
            channel: format!("{prefix}{name}"),
        }
    }
}

pub(super) fn parse_position(
    epoch: &str,
    version: &str,
) -> Result<(Epoch, Version), BackplaneError> {
    match (Epoch::from_str(epoch), Version::from_str(version)) {
        (Ok(e), Ok(v)) => Ok((e, v)),
        _ => Err(BackplaneError::from(DecodeError::new(format!(
            "not a channel state: epoch {epoch:?}, version {version:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_names_never_collide() {
        let a = Keys::new("p:", "a");
        let b = Keys::new("p:", "history:a");
        assert_ne!(a.history, b.state);
        assert_ne!(a.state, b.history);
    }
}

//! Catching a channel up with Redis: after joining, after a reconnect.

use std::sync::Arc;

use super::backplane::Core;
use super::channel::Relay;
use super::error::BackplaneError;
use super::keys::{parse_position, Keys};
use crate::{Epoch, Version};

/// A channel's state as `sync.lua` read it.
pub(super) struct Snapshot {
    pub(super) epoch: Epoch,
    pub(super) version: Version,
    pub(super) value: Vec<u8>,
    /// `"<version> <value>"` entries of the caller's epoch, oldest first.
    pub(super) history: Vec<Vec<u8>>,
}

impl Core {
    /// Reads (or recreates) a channel's state with `sync.lua`.
    pub(super) async fn sync(
        &self,
        keys: &Keys,
        initial: &[u8],
        held: Option<(Epoch, Version)>,
    ) -> Result<Snapshot, BackplaneError> {
        let (held_epoch, held_version) = match held {
            Some((e, v)) => (e.to_string(), v.get()),
            None => (String::new(), 0),
        };
        let mut call = self.sync_script.key(&keys.state);
        call.key(&keys.history)
            .arg(Epoch::random().to_string())
            .arg(initial)
            .arg(held_epoch)
            .arg(held_version)
            .arg(&keys.channel);
        let (epoch, version, value, history): (String, String, Vec<u8>, Vec<Vec<u8>>) =
            self.invoke(&call).await?;
        let (epoch, version) = parse_position(&epoch, &version)?;
        Ok(Snapshot {
            epoch,
            version,
            value,
            history,
        })
    }

    /// Brings one channel up to date with Redis: relays every retained
    /// update newer than what it holds, in order, then the current state.
    pub(super) async fn catch_up(&self, relay: &dyn Relay) -> Result<(), BackplaneError> {
        let held = relay.position();
        let snapshot = self.sync(relay.keys(), relay.initial(), Some(held)).await?;
        if snapshot.epoch == held.0 {
            for entry in &snapshot.history {
                let Some((version, value)) = split_entry(entry) else {
                    continue;
                };
                if version > held.1 && version < snapshot.version {
                    relay.deliver_encoded(snapshot.epoch, version, value);
                }
            }
        }
        relay.deliver_encoded(snapshot.epoch, snapshot.version, &snapshot.value);
        Ok(())
    }

    /// Catches every open channel up, after (re)subscribing.
    pub(super) async fn catch_up_all(&self) -> Result<(), BackplaneError> {
        let channels: Vec<Arc<dyn Relay>> = self.channels.read().values().cloned().collect();
        for relay in channels {
            self.catch_up(&*relay).await?;
        }
        Ok(())
    }
}

/// Splits a history entry `"<version> <value>"`.
fn split_entry(entry: &[u8]) -> Option<(Version, &[u8])> {
    let space = entry.iter().position(|&b| b == b' ')?;
    let version = std::str::from_utf8(&entry[..space]).ok()?.parse().ok()?;
    Some((version, &entry[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_entries_split_at_the_first_space() {
        assert_eq!(
            split_entry(b"12 a b"),
            Some((Version::new(12), &b"a b"[..]))
        );
        assert_eq!(split_entry(b"7 "), Some((Version::new(7), &b""[..])));
        assert_eq!(split_entry(b"x 1"), None);
        assert_eq!(split_entry(b"12"), None);
    }
}

//! Key names, wire formats and the Lua scripts: everything that says how a
//! channel is laid out in Redis, in one place.
//!
//! Every reply and message from Redis is parsed here, field by field, into
//! typed values or a [`DecodeError`]; nothing from Redis is trusted.

use std::str::FromStr;

use ::redis::Value;

use super::DecodeError;
use crate::{Epoch, Version};

/// The scripts, each after `channel.lua`, what they share.
pub(super) const SYNC_LUA: &str = concat!(include_str!("channel.lua"), include_str!("sync.lua"));
pub(super) const MODIFY_LUA: &str =
    concat!(include_str!("channel.lua"), include_str!("modify.lua"));

/// The prefix `modify.lua` puts on an error raised by a caller's snippet.
pub(super) const SNIPPET_ERROR: &str = "LONGPOLL_SNIPPET";

/// The Redis names of one channel. Every key of a channel is built here,
/// from the prefix and the name, and carries the same hash tag (`{name}`),
/// so that a Redis Cluster keeps them in one slot, where the scripts that
/// touch them together can run.
#[derive(Debug)]
pub(super) struct Keys {
    /// The channel's hash (`P{name}`): epoch, version, value, keep, and the
    /// history as `h<version>` fields. Also the Pub/Sub channel's name.
    pub(super) state: String,
    /// The start of every idempotency key of the channel (`P{name}:once:`).
    once: String,
}

/// The longest channel name (bytes): a name is part of every key and
/// message of its channel.
pub(crate) const MAX_NAME_LEN: usize = 1024;

/// Why a prefix or channel name cannot be used.
pub(super) fn check_name(prefix: &str, name: &str) -> Result<(), String> {
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "the key prefix {prefix:?} contains a brace: braces are kept for the hash tag"
        ));
    }
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['{', '}']) {
        return Err(format!(
            "channel name {:?} is not 1 to {MAX_NAME_LEN} bytes without braces",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

impl Keys {
    /// The names of channel `name`; `check_name` must accept both.
    pub(super) fn new(prefix: &str, name: &str) -> Self {
        debug_assert!(check_name(prefix, name).is_ok());
        let state = format!("{prefix}{{{name}}}");
        Keys {
            once: format!("{state}:once:"),
            state,
        }
    }

    /// The Pub/Sub channel: the hash's name, in the same slot.
    pub(super) fn channel(&self) -> &str {
        &self.state
    }

    /// The key that remembers the publish with idempotency key `id`.
    pub(super) fn once(&self, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.once.len() + id.len());
        key.extend_from_slice(self.once.as_bytes());
        key.extend_from_slice(id);
        key
    }
}

/// A channel's state as a script returned it.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) epoch: Epoch,
    pub(super) version: Version,
    pub(super) value: Vec<u8>,
    /// `(version, value)` history entries, checked to rise strictly and to
    /// stay below `version`, oldest first.
    pub(super) entries: Vec<(Version, Vec<u8>)>,
    /// History entries left out because they did not parse or did not rise
    /// below the state (bad data in Redis).
    pub(super) unreadable: usize,
}

/// What `modify.lua` answered.
#[derive(Debug)]
pub(super) struct ModifyReply {
    pub(super) epoch: Epoch,
    pub(super) version: Version,
    pub(super) value: Vec<u8>,
    pub(super) outcome: Outcome,
    pub(super) note: Vec<u8>,
}

/// Whether a `modify.lua` call published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The snippet returned no new value.
    Declined,
    /// A new version was published.
    Published,
    /// The idempotency key was already there: nothing was done, and
    /// epoch and version are those of the first publish.
    Repeated,
}

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError::new(what.into())
}

/// The bytes of a string reply.
fn bytes(value: Value, what: &str) -> Result<Vec<u8>, DecodeError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(bad(format!("{what}: expected a string, got {other:?}"))),
    }
}

fn array(value: Value, what: &str) -> Result<Vec<Value>, DecodeError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(bad(format!("{what}: expected an array, got {other:?}"))),
    }
}

/// An epoch and a version as Redis stores them (16 hex digits, decimal).
pub(super) fn parse_position(
    epoch: &[u8],
    version: &[u8],
) -> Result<(Epoch, Version), DecodeError> {
    let parsed = std::str::from_utf8(epoch)
        .ok()
        .and_then(|e| Epoch::from_str(e).ok())
        .zip(
            std::str::from_utf8(version)
                .ok()
                .and_then(|v| Version::from_str(v).ok()),
        );
    parsed.ok_or_else(|| {
        bad(format!(
            "not a channel position: epoch {:?}, version {:?}",
            String::from_utf8_lossy(epoch),
            String::from_utf8_lossy(version)
        ))
    })
}

/// A Pub/Sub message `"<epoch> <version> <value>"`.
pub(super) fn parse_message(payload: &[u8]) -> Result<(Epoch, Version, &[u8]), DecodeError> {
    let mut parts = payload.splitn(3, |&b| b == b' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(epoch), Some(version), Some(value)) => {
            let (epoch, version) = parse_position(epoch, version)?;
            Ok((epoch, version, value))
        }
        _ => Err(bad(format!(
            "not a channel message: {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(64)])
        ))),
    }
}

/// A history entry `"<version> <value>"`.
pub(super) fn split_entry(entry: &[u8]) -> Option<(Version, &[u8])> {
    let space = entry.iter().position(|&b| b == b' ')?;
    let version = std::str::from_utf8(&entry[..space]).ok()?.parse().ok()?;
    Some((version, &entry[space + 1..]))
}

/// The reply of `sync.lua`: `None` for a missing state it did not create.
/// History entries that do not parse, or that do not rise strictly below
/// the state's version, are left out: the versions they held then count as
/// lost, which the broadcaster reports as a lag.
pub(super) fn parse_snapshot(reply: Value) -> Result<Option<Snapshot>, DecodeError> {
    let items = array(reply, "channel state")?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut items = items.into_iter();
    let (Some(epoch), Some(version), Some(value), Some(entries), None) = (
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
    ) else {
        return Err(bad("channel state: expected 4 fields"));
    };
    let (epoch, version) = parse_position(
        &bytes(epoch, "channel epoch")?,
        &bytes(version, "channel version")?,
    )?;
    let value = bytes(value, "channel value")?;
    let mut kept: Vec<(Version, Vec<u8>)> = Vec::new();
    let mut unreadable = 0;
    for entry in array(entries, "channel history")? {
        let Ok(entry) = bytes(entry, "history entry") else {
            unreadable += 1;
            continue;
        };
        let Some((v, value)) = split_entry(&entry) else {
            unreadable += 1;
            continue;
        };
        if v < version && kept.last().is_none_or(|(last, _)| *last < v) {
            kept.push((v, value.to_vec()));
        } else {
            unreadable += 1;
        }
    }
    Ok(Some(Snapshot {
        epoch,
        version,
        value,
        entries: kept,
        unreadable,
    }))
}

/// The reply of `modify.lua`.
pub(super) fn parse_modify(reply: Value) -> Result<ModifyReply, DecodeError> {
    let mut items = array(reply, "publish reply")?.into_iter();
    let (Some(epoch), Some(version), Some(value), Some(changed), Some(note), None) = (
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
    ) else {
        return Err(bad("publish reply: expected 5 fields"));
    };
    let (epoch, version) = parse_position(
        &bytes(epoch, "publish epoch")?,
        &bytes(version, "publish version")?,
    )?;
    let outcome = match changed {
        Value::Int(0) => Outcome::Declined,
        Value::Int(1) => Outcome::Published,
        Value::Int(2) => Outcome::Repeated,
        other => return Err(bad(format!("publish reply: bad outcome {other:?}"))),
    };
    Ok(ModifyReply {
        epoch,
        version,
        value: bytes(value, "publish value")?,
        outcome,
        note: bytes(note, "publish note")?,
    })
}

/// The reply of `HMGET state epoch version`: `None` if the state is missing.
pub(super) fn parse_probe(reply: Value) -> Result<Option<(Epoch, Version)>, DecodeError> {
    let mut items = array(reply, "channel probe")?.into_iter();
    match (items.next(), items.next(), items.next()) {
        (Some(Value::Nil), _, None) | (_, Some(Value::Nil), None) => Ok(None),
        (Some(epoch), Some(version), None) => parse_position(
            &bytes(epoch, "channel epoch")?,
            &bytes(version, "channel version")?,
        )
        .map(Some),
        _ => Err(bad("channel probe: expected 2 fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_names_never_collide_and_share_their_tag() {
        let (a, b) = (Keys::new("p:", "a"), Keys::new("p:", "a:once:x"));
        assert_eq!(a.state, "p:{a}");
        assert_ne!(a.once(b"x"), b.state.as_bytes());
        let (c, d) = (Keys::new("p:", "a"), Keys::new("p:", "a:b"));
        assert_ne!(c.once(b"b:c"), d.once(b"c"));
        // Every key of a channel hashes by `{name}` alone.
        assert!(c.once(b"id").starts_with(b"p:{a}"));
        assert_eq!(c.channel(), c.state);
    }

    #[test]
    fn names_with_braces_or_out_of_bounds_are_refused() {
        assert!(check_name("p:", "room-1").is_ok());
        assert!(check_name("p{", "a").is_err());
        assert!(check_name("p:", "").is_err());
        assert!(check_name("p:", "a}b").is_err());
        assert!(check_name("p:", "{a").is_err());
        assert!(check_name("p:", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("p:", &"é".repeat(MAX_NAME_LEN)).is_err());
    }

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

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    #[test]
    fn a_snapshot_keeps_only_entries_that_rise_below_the_state() {
        let reply = Value::Array(vec![
            s("00000000000000aa"),
            s("9"),
            s("nine"),
            Value::Array(vec![
                s("5 five"),
                s("garbage"),
                s("4 four"), // out of order
                s("7 seven"),
                Value::Int(3),
                s("9 nine"), // not below the state
                s("12 twelve"),
            ]),
        ]);
        let snap = parse_snapshot(reply).unwrap().unwrap();
        assert_eq!(snap.version, Version::new(9));
        let versions: Vec<u64> = snap.entries.iter().map(|(v, _)| v.get()).collect();
        assert_eq!(versions, [5, 7]);
        assert_eq!(
            snap.unreadable, 5,
            "garbage, 4, an integer, 9 and 12 left out"
        );
    }

    #[test]
    fn replies_of_the_wrong_shape_are_decode_errors() {
        assert!(parse_snapshot(Value::Nil).is_err());
        assert!(parse_snapshot(Value::Array(vec![
            s("zz"),
            s("1"),
            s(""),
            Value::Array(vec![])
        ]))
        .is_err());
        assert!(parse_snapshot(Value::Array(vec![
            s("0a"),
            s("-1"),
            s(""),
            Value::Array(vec![])
        ]))
        .is_err());
        assert!(parse_modify(Value::Array(vec![
            s("0a"),
            s("1"),
            s(""),
            Value::Int(7),
            s("")
        ]))
        .is_err());
        assert!(parse_message(b"0a 1").is_err());
        assert!(parse_message(b"0a x v").is_err());
        assert_eq!(
            parse_message(b"0a 3 a b").unwrap(),
            (Epoch::new(10).unwrap(), Version::new(3), &b"a b"[..])
        );
        assert_eq!(
            parse_probe(Value::Array(vec![Value::Nil, Value::Nil])).unwrap(),
            None
        );
    }
}

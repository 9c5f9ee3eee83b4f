//! A Redis Cluster's slot map, as this crate keeps it for its sharded
//! subscriptions: which master owns each hash slot, read with
//! `CLUSTER SHARDS` (Redis 7.0+) and parsed, never trusted.
//!
//! redis-rs keeps a slot map of its own for commands, but offers no way to
//! read it, and its sharded subscriptions do not survive slot moves and
//! failovers; so the subscription side keeps this one.

use std::sync::Arc;

use ::redis::Value;

use super::DecodeError;

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, if not empty), or of the whole
/// key, modulo 16384.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Which master owns each slot; `None` for a slot without a healthy master
/// (its master failed and no replica took over yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Slot ranges (inclusive), sorted, with the address (`host:port`) of
    /// their master.
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    /// The master that owns `slot`, if one does.
    pub(super) fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|&(_, hi, _)| hi < slot);
        match self.ranges.get(i) {
            Some((lo, _, master)) if *lo <= slot => Some(master),
            _ => None,
        }
    }

    /// Whether no slot is known.
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The masters, each once.
    pub(super) fn masters(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.ranges.iter().map(|r| Arc::clone(&r.2)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether every slot has a healthy master.
    pub(super) fn is_complete(&self) -> bool {
        let mut next: u32 = 0;
        for &(lo, hi, _) in &self.ranges {
            if u32::from(lo) != next {
                return false;
            }
            next = u32::from(hi) + 1;
        }
        next == u32::from(SLOTS)
    }
}

/// Fields of a `CLUSTER SHARDS` entry: a RESP2 array of alternating names
/// and values, or a RESP3 map.
fn fields(value: Value, what: &str) -> Result<Vec<(String, Value)>, DecodeError> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => {
            return Err(DecodeError::new(format!(
                "{what}: expected a map, got {other:?}"
            )))
        }
    };
    pairs
        .into_iter()
        .map(|(k, v)| match k {
            Value::BulkString(b) => Ok((String::from_utf8_lossy(&b).into_owned(), v)),
            Value::SimpleString(s) => Ok((s, v)),
            other => Err(DecodeError::new(format!(
                "{what}: a field name is {other:?}"
            ))),
        })
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// Parses a `CLUSTER SHARDS` reply: for each shard, its slot ranges and
/// its healthy master (role `master`, health `online`). A shard whose
/// master is not healthy owns nothing in the map.
pub(super) fn parse_shards(reply: Value) -> Result<SlotMap, DecodeError> {
    let Value::Array(shards) = reply else {
        return Err(DecodeError::new("CLUSTER SHARDS: not an array"));
    };
    let mut ranges = Vec::new();
    for shard in shards {
        let mut slots = Vec::new();
        let mut master = None;
        for (name, value) in fields(shard, "CLUSTER SHARDS shard")? {
            match (name.as_str(), value) {
                ("slots", Value::Array(bounds)) => {
                    for pair in bounds.chunks(2) {
                        let [lo, hi] = pair else {
                            return Err(DecodeError::new("CLUSTER SHARDS: odd slot bounds"));
                        };
                        let bound = |v: &Value| {
                            int(v)
                                .and_then(|n| u16::try_from(n).ok())
                                .filter(|&n| n < SLOTS)
                        };
                        match (bound(lo), bound(hi)) {
                            (Some(lo), Some(hi)) if lo <= hi => slots.push((lo, hi)),
                            _ => return Err(DecodeError::new("CLUSTER SHARDS: bad slot range")),
                        }
                    }
                }
                ("nodes", Value::Array(nodes)) => {
                    for node in nodes {
                        let node = fields(node, "CLUSTER SHARDS node")?;
                        let get = |key: &str| node.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                        let role = get("role").and_then(text);
                        let health = get("health").and_then(text);
                        let ip = get("ip").and_then(text);
                        let port = get("port").and_then(int);
                        if let (Some("master"), Some("online"), Some(ip), Some(port)) =
                            (role.as_deref(), health.as_deref(), ip, port)
                        {
                            master = Some(Arc::<str>::from(format!("{ip}:{port}")));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(master) = master {
            for (lo, hi) in slots {
                ranges.push((lo, hi, Arc::clone(&master)));
            }
        }
    }
    ranges.sort_by_key(|r| r.0);
    if ranges.windows(2).any(|w| w[0].1 >= w[1].0) {
        return Err(DecodeError::new("CLUSTER SHARDS: overlapping slot ranges"));
    }
    Ok(SlotMap { ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // The examples of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"p:{room}:once:x"), slot_of(b"room"));
    }

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    fn node(port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            s("id"),
            s("abc"),
            s("port"),
            Value::Int(port),
            s("ip"),
            s("127.0.0.1"),
            s("role"),
            s(role),
            s("health"),
            s(health),
        ])
    }

    #[test]
    fn cluster_shards_maps_slots_to_healthy_masters() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![
                    Value::Int(0),
                    Value::Int(99),
                    Value::Int(200),
                    Value::Int(16383),
                ]),
                s("nodes"),
                Value::Array(vec![
                    node(7001, "replica", "online"),
                    node(7000, "master", "online"),
                ]),
            ]),
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(100), Value::Int(199)]),
                s("nodes"),
                Value::Array(vec![node(7002, "master", "failed")]),
            ]),
        ]);
        let map = parse_shards(reply).unwrap();
        assert_eq!(map.owner(0).map(|m| &**m), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(16383).map(|m| &**m), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(150), None, "a failed master owns nothing");
        assert!(!map.is_complete());
        assert_eq!(map.masters().len(), 1);
        assert!(parse_shards(Value::Int(3)).is_err());
        assert!(parse_shards(Value::Array(vec![Value::Array(vec![
            s("slots"),
            Value::Array(vec![Value::Int(5), Value::Int(2)]),
        ])]))
        .is_err());
    }
}

//! Slots, hash tags, and the shards as `CLUSTER NODES` shows them.

use std::collections::BTreeMap;

use super::SLOTS;

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key, or of its hash tag (the text between the first `{` and the
/// next `}`, if not empty), modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
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

pub(super) fn crc16(bytes: &[u8]) -> u16 {
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

/// A hash tag (`{...}`, braces included) whose keys all hash to `slot`.
pub(crate) fn tag_for_slot(slot: u16) -> String {
    assert!(slot < SLOTS, "no slot {slot}");
    (0u32..)
        .map(|n| format!("{{t{n}}}"))
        .find(|tag| slot_of(tag.as_bytes()) == slot)
        .expect("every slot has a tag")
}

/// One master and the slots it owns, as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Shard {
    /// The master's slot ranges (inclusive), in order.
    pub(crate) slots: Vec<(u16, u16)>,
    /// The master's address, `127.0.0.1:port`.
    pub(crate) master: String,
    /// The master's node id.
    pub(crate) id: String,
    /// The addresses of its replicas that the cluster sees as healthy.
    pub(crate) replicas: Vec<String>,
}

impl Shard {
    /// Whether the master owns `slot`.
    pub(crate) fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }

    /// Whether the master owns the slot of `key`.
    pub(crate) fn owns_key(&self, key: &[u8]) -> bool {
        self.owns(slot_of(key))
    }

    /// The first slot the master owns.
    pub(crate) fn first_slot(&self) -> u16 {
        self.slots[0].0
    }

    /// A hash tag (`{...}`) whose keys land on this master.
    pub(crate) fn tag(&self) -> String {
        (0u32..)
            .map(|n| format!("{{s{n}}}"))
            .find(|tag| self.owns_key(tag.as_bytes()))
            .expect("a master owns at least one slot")
    }

    /// The URL of the master (`redis://127.0.0.1:port/`).
    pub(crate) fn url(&self) -> String {
        format!("redis://{}/", self.master)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
pub(super) struct NodeLine {
    id: String,
    addr: String,
    master: bool,
    failed: bool,
    connected: bool,
    /// The node id of its master, for a replica.
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
    /// An `[slot->-id]` or `[slot-<-id]` entry: a slot moving.
    pub(super) migrating: bool,
}

/// Parses `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
pub(super) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 8, "not a CLUSTER NODES line: {line:?}");
            let addr = fields[1]
                .split(['@', ','])
                .next()
                .unwrap_or_default()
                .to_owned();
            let flags: Vec<&str> = fields[2].split(',').collect();
            let mut slots = Vec::new();
            let mut migrating = false;
            for token in &fields[8..] {
                if token.starts_with('[') {
                    migrating = true;
                    continue;
                }
                let (lo, hi) = token.split_once('-').unwrap_or((token, token));
                slots.push((
                    lo.parse().expect("a slot number"),
                    hi.parse().expect("a slot number"),
                ));
            }
            NodeLine {
                id: fields[0].to_owned(),
                addr,
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                connected: fields[7] == "connected",
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
                migrating,
            }
        })
        .collect()
}

/// The healthy masters that own slots, with their healthy replicas.
pub(super) fn shards_of(nodes: &[NodeLine]) -> Vec<Shard> {
    let mut replicas: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for node in nodes {
        if let (false, false, true, Some(master)) =
            (node.master, node.failed, node.connected, &node.master_id)
        {
            replicas
                .entry(master.as_str())
                .or_default()
                .push(node.addr.clone());
        }
    }
    let mut shards: Vec<Shard> = nodes
        .iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .map(|n| {
            let mut slots = n.slots.clone();
            slots.sort_unstable();
            let mut reps = replicas.remove(n.id.as_str()).unwrap_or_default();
            reps.sort();
            Shard {
                slots,
                master: n.addr.clone(),
                id: n.id.clone(),
                replicas: reps,
            }
        })
        .collect();
    shards.sort();
    shards
}

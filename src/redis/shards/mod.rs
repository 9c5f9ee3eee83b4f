//! Sharded Pub/Sub on a Redis Cluster, managed here rather than by the
//! client library: one RESP3 connection per master that carries
//! subscriptions only, this crate's own slot map, and every channel
//! subscribed with `SSUBSCRIBE` on the master that owns its slot.
//!
//! Why not the cluster client's own subscriptions: after a reconnect it
//! resubscribes a node's channels in one `SSUBSCRIBE`, which Redis refuses
//! when they span slots; it forgets a channel the server unsubscribed (a
//! slot moved); after a failover it does not resubscribe at all. And a
//! subscription push is taken as the reply to the oldest command in flight
//! on its connection, so these connections carry no command whose reply
//! matters: only the push stream is trusted (confirmations, messages, the
//! server's `SUNSUBSCRIBE`), never reply contents.
//!
//! # How a channel is kept subscribed
//!
//! Every wanted channel has a [`Place`]: nowhere yet, sent to a master,
//! confirmed by that master's `ssubscribe` push, or leaving (this instance
//! unsubscribes it). It goes back to *nowhere*, and the slot map is read
//! again, when:
//!
//! - the server unsubscribes it (`SUNSUBSCRIBE` push that this instance did
//!   not ask for): its slot moved;
//! - its master's connection is lost (a `Disconnection` push, or a `PING`
//!   without answer): a failover, or a network cut;
//! - its `SSUBSCRIBE` was not confirmed within the command timeout (it was
//!   refused with `MOVED`, say);
//! - a periodic read of the slot map names another owner for its slot.
//!
//! The subscription task places every channel that is nowhere on the
//! master the map names (one pipeline of single-channel `SSUBSCRIBE` per
//! master), and then reads those channels again from Redis: what was
//! published while they were not subscribed reaches the waiters.
//!
//! Commands to one master go out in the order they were decided (a lock
//! per master is held from the decision to the send), so a channel
//! unsubscribed and subscribed again ends subscribed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, Value,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

mod events;

use super::backplane::Config;
use super::error::{BackplaneError, Kind};
use super::slots::{slot_of, SlotMap};
use events::read_map;

/// The most channels in one pipeline of `SSUBSCRIBE`.
const PIPELINE: usize = 10_000;

/// What a master's subscription connection pushed, with where it came from.
pub(super) struct Push {
    pub(super) node: Arc<str>,
    /// Which connection to that node: pushes of a replaced one say nothing
    /// about the current one.
    pub(super) conn: u64,
    pub(super) info: PushInfo,
}

/// Where a wanted channel is subscribed.
#[derive(Clone, Debug)]
enum Place {
    Nowhere,
    Sent {
        node: Arc<str>,
        at: Instant,
    },
    Confirmed {
        node: Arc<str>,
    },
    /// Unsubscribing from `node`: still subscribed there until the command
    /// goes out, and taken back if the channel is wanted again meanwhile.
    Leaving {
        node: Arc<str>,
        confirmed: bool,
    },
}

struct Node {
    conn: MultiplexedConnection,
    id: u64,
}

#[derive(Default)]
struct State {
    map: SlotMap,
    /// Read the slot map again before placing anything.
    stale_map: bool,
    nodes: HashMap<Arc<str>, Node>,
    wanted: HashMap<String, Place>,
    /// `SUNSUBSCRIBE`s this instance sent, not yet confirmed: their
    /// confirmation is not a slot move.
    leaving: HashSet<(Arc<str>, String)>,
    next_id: u64,
    /// Connections lost since the start, for the stats.
    lost: u64,
}

/// The sharded subscriptions of one backplane.
pub(super) struct Shards {
    /// Where to read the slot map when no known master answers, and the
    /// credentials of every connection.
    seeds: Vec<ConnectionInfo>,
    state: Mutex<State>,
    /// One lock per master, held from deciding what to send to it to
    /// sending it.
    sending: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    /// One slot map read at a time.
    refreshing: tokio::sync::Mutex<()>,
    events: mpsc::UnboundedSender<Push>,
    /// Some channel is not confirmed where it should be: the task looks
    /// at the subscriptions again at its next round.
    pub(super) attention: AtomicBool,
}

/// What happened to the subscriptions after a push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// A message on `channel`: relay it.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// Nothing to do.
    Nothing,
    /// A channel lost its place (or a connection was lost): repair.
    Repair,
}

impl Shards {
    /// The subscriptions, and the stream of pushes of every connection
    /// they open, for the subscription task.
    pub(super) fn new(seeds: Vec<ConnectionInfo>) -> (Self, mpsc::UnboundedReceiver<Push>) {
        let (events, rx) = mpsc::unbounded_channel();
        let shards = Shards {
            seeds,
            state: Mutex::new(State {
                stale_map: true,
                ..State::default()
            }),
            sending: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            events,
            attention: AtomicBool::new(true),
        };
        (shards, rx)
    }

    /// Connections lost so far.
    pub(super) fn lost(&self) -> u64 {
        self.state.lock().lost
    }

    /// Marks the subscriptions for a look at the task's next round.
    pub(super) fn attend(&self) {
        self.attention.store(true, Ordering::Release);
    }

    /// Takes the mark of [`attend`](Self::attend).
    pub(super) fn take_attention(&self) -> bool {
        self.attention.swap(false, Ordering::AcqRel)
    }

    /// Whether every wanted channel is confirmed where it was sent.
    pub(super) fn is_settled(&self) -> bool {
        self.state
            .lock()
            .wanted
            .values()
            .all(|p| matches!(p, Place::Confirmed { .. } | Place::Leaving { .. }))
    }

    /// Whether every wanted channel is subscribed (sent or confirmed).
    pub(super) fn is_up(&self) -> bool {
        self.state
            .lock()
            .wanted
            .values()
            .all(|p| !matches!(p, Place::Nowhere))
    }

    /// The connection info for the node at `addr` (`host:port`), with the
    /// seeds' credentials, in `protocol`.
    fn info(&self, addr: &str, protocol: ProtocolVersion) -> Option<ConnectionInfo> {
        let (host, port) = addr.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let seed = self.seeds.first()?;
        let settings = seed.redis_settings().clone().set_protocol(protocol);
        Some(
            seed.clone()
                .set_addr(ConnectionAddr::Tcp(host.to_owned(), port))
                .set_redis_settings(settings),
        )
    }

    /// Reads the slot map again (from a known master, else a seed), and
    /// moves every channel subscribed on a master that no longer owns its
    /// slot back to nowhere.
    pub(super) async fn refresh(&self, config: &Config) -> Result<(), BackplaneError> {
        let _one = self.refreshing.lock().await;
        let mut candidates: Vec<ConnectionInfo> = {
            let state = self.state.lock();
            state
                .map
                .masters()
                .iter()
                .filter_map(|m| self.info(m, ProtocolVersion::RESP2))
                .collect()
        };
        candidates.extend(self.seeds.iter().cloned());
        let mut last = None;
        for info in candidates {
            match read_map(info, config).await {
                Ok(map) => {
                    self.adopt(map);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BackplaneError::new(Kind::Config, "no cluster seed")))
    }

    fn adopt(&self, map: SlotMap) {
        let mut state = self.state.lock();
        for (channel, place) in state.wanted.iter_mut() {
            let owner = map.owner(slot_of(channel.as_bytes()));
            let on = match place {
                Place::Sent { node, .. } | Place::Confirmed { node } => Some(node),
                _ => None,
            };
            if let Some(on) = on {
                if owner != Some(on) {
                    *place = Place::Nowhere;
                    self.attend();
                }
            }
        }
        // Only a map in which every slot has a master is final; while a
        // failover is under way, read it again at the next repair.
        state.stale_map = !map.is_complete();
        state.map = map;
    }

    /// The subscription connection to `node`, opened if needed.
    async fn connect(
        &self,
        node: &Arc<str>,
        config: &Config,
    ) -> Result<(MultiplexedConnection, u64), BackplaneError> {
        let id = {
            let mut state = self.state.lock();
            if let Some(n) = state.nodes.get(node) {
                return Ok((n.conn.clone(), n.id));
            }
            state.next_id += 1;
            state.next_id
        };
        let info = self
            .info(node, ProtocolVersion::RESP3)
            .ok_or_else(|| BackplaneError::new(Kind::Config, format!("bad node {node}")))?;
        let client = Client::open(info).map_err(|e| BackplaneError::new(Kind::Config, e))?;
        let (events, name) = (self.events.clone(), Arc::clone(node));
        let sender = move |info: PushInfo| {
            events.send(Push {
                node: Arc::clone(&name),
                conn: id,
                info,
            })
        };
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_push_sender(sender);
        let conn = client
            .get_multiplexed_async_connection_with_config(&conn_config)
            .await
            .map_err(BackplaneError::from_redis)?;
        let mut state = self.state.lock();
        // Another caller may have connected meanwhile: keep theirs.
        let kept = state
            .nodes
            .entry(Arc::clone(node))
            .or_insert(Node { conn, id });
        Ok((kept.conn.clone(), kept.id))
    }

    /// Forgets the connection `id` to `node` (if it is the current one):
    /// every channel subscribed there goes back to nowhere.
    fn lose(&self, node: &Arc<str>, id: Option<u64>) -> bool {
        let mut state = self.state.lock();
        match state.nodes.get(node) {
            Some(n) if id.is_none_or(|id| id == n.id) => {}
            _ => return false,
        }
        state.nodes.remove(node);
        state.lost += 1;
        self.attend();
        state.stale_map = true;
        state.leaving.retain(|(n, _)| n != node);
        state.wanted.retain(|_, place| match place {
            Place::Sent { node: n, .. } | Place::Confirmed { node: n } if n == node => {
                *place = Place::Nowhere;
                true
            }
            // Leaving a node that is gone: nothing left to unsubscribe.
            Place::Leaving { node: n, .. } => n != node,
            _ => true,
        });
        true
    }

    fn send_lock(&self, node: &Arc<str>) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.sending.lock().entry(Arc::clone(node)).or_default())
    }

    /// Wants `names` and subscribes those that are nowhere on their
    /// masters; returns the names sent (to read them again after).
    pub(super) async fn subscribe(&self, names: &[String], config: &Config) -> Vec<String> {
        {
            let mut state = self.state.lock();
            for name in names {
                let place = state.wanted.entry(name.clone()).or_insert(Place::Nowhere);
                if let Place::Leaving { node, confirmed } = place {
                    // Still subscribed there: take the leaving back.
                    let node = Arc::clone(node);
                    *place = if *confirmed {
                        Place::Confirmed { node }
                    } else {
                        Place::Sent {
                            node,
                            at: Instant::now(),
                        }
                    };
                }
            }
        }
        self.place(Some(names), config).await
    }

    /// Unsubscribes `names` (one pipeline of `SUNSUBSCRIBE` per master).
    pub(super) async fn unsubscribe(&self, names: &[String], config: &Config) {
        let mut by_node: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        {
            let mut state = self.state.lock();
            for name in names {
                let leaving = match state.wanted.get(name) {
                    Some(Place::Sent { node, .. }) => Place::Leaving {
                        node: Arc::clone(node),
                        confirmed: false,
                    },
                    Some(Place::Confirmed { node }) => Place::Leaving {
                        node: Arc::clone(node),
                        confirmed: true,
                    },
                    Some(Place::Nowhere) => {
                        state.wanted.remove(name);
                        continue;
                    }
                    Some(Place::Leaving { .. }) | None => continue,
                };
                if let Place::Leaving { node, .. } = &leaving {
                    by_node
                        .entry(Arc::clone(node))
                        .or_default()
                        .push(name.clone());
                }
                state.wanted.insert(name.clone(), leaving);
            }
        }
        for (node, names) in by_node {
            let lock = self.send_lock(&node);
            let _sending = lock.lock().await;
            let (conn, gone) = {
                let mut state = self.state.lock();
                let State {
                    wanted,
                    leaving,
                    nodes,
                    ..
                } = &mut *state;
                let mut gone = Vec::new();
                for name in names {
                    if matches!(wanted.get(&name), Some(Place::Leaving { node: n, .. }) if *n == node)
                    {
                        wanted.remove(&name);
                        leaving.insert((Arc::clone(&node), name.clone()));
                        gone.push(name);
                    }
                }
                (nodes.get(&node).map(|n| n.conn.clone()), gone)
            };
            let Some(mut conn) = conn else { continue };
            for chunk in gone.chunks(PIPELINE) {
                let mut pipe = ::redis::pipe();
                for name in chunk {
                    pipe.cmd("SUNSUBSCRIBE").arg(name);
                }
                let sent = tokio::time::timeout(
                    config.command_timeout,
                    pipe.ignore_errors().query_async::<Vec<Value>>(&mut conn),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    // The connection is going: nothing stays subscribed on it.
                    self.lose(&node, None);
                    break;
                }
            }
        }
    }

    /// Subscribes the wanted channels that are nowhere (all of them, or
    /// those among `only`) on the masters that own their slots; returns
    /// the names sent.
    async fn place(&self, only: Option<&[String]>, config: &Config) -> Vec<String> {
        let stale = {
            let state = self.state.lock();
            state.stale_map || state.map.is_empty()
        };
        if stale {
            let _ = self.refresh(config).await;
        }
        let mut by_node: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        {
            let state = self.state.lock();
            let mut add = |name: &String| {
                if matches!(state.wanted.get(name), Some(Place::Nowhere)) {
                    if let Some(owner) = state.map.owner(slot_of(name.as_bytes())) {
                        by_node
                            .entry(Arc::clone(owner))
                            .or_default()
                            .push(name.clone());
                    }
                }
            };
            match only {
                Some(names) => names.iter().for_each(&mut add),
                None => state.wanted.keys().for_each(&mut add),
            }
        }
        let sends = by_node
            .into_iter()
            .map(|(node, names)| self.place_on(node, names, config));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Sends `SSUBSCRIBE` for `names` to `node`.
    async fn place_on(&self, node: Arc<str>, names: Vec<String>, config: &Config) -> Vec<String> {
        let lock = self.send_lock(&node);
        let _sending = lock.lock().await;
        let (mut conn, id) = match self.connect(&node, config).await {
            Ok(c) => c,
            Err(_) => {
                // Down (a failover under way?): read the map again next time.
                self.state.lock().stale_map = true;
                self.attend();
                return Vec::new();
            }
        };
        let names: Vec<String> = {
            let mut state = self.state.lock();
            let now = Instant::now();
            names
                .into_iter()
                .filter(|name| match state.wanted.get_mut(name) {
                    Some(place @ Place::Nowhere) => {
                        *place = Place::Sent {
                            node: Arc::clone(&node),
                            at: now,
                        };
                        true
                    }
                    _ => false,
                })
                .collect()
        };
        if !names.is_empty() {
            // Confirmations are looked for at the task's next rounds.
            self.attend();
        }
        for chunk in names.chunks(PIPELINE) {
            let mut pipe = ::redis::pipe();
            for name in chunk {
                pipe.cmd("SSUBSCRIBE").arg(name);
            }
            let sent = tokio::time::timeout(
                config.command_timeout,
                pipe.ignore_errors().query_async::<Vec<Value>>(&mut conn),
            )
            .await;
            match sent {
                // Reply contents are not trusted (see the module docs):
                // an error among them only says the map may be stale.
                Ok(Ok(replies)) => {
                    if replies.iter().any(|r| matches!(r, Value::ServerError(_))) {
                        self.state.lock().stale_map = true;
                    }
                }
                _ => {
                    self.lose(&node, Some(id));
                    return Vec::new();
                }
            }
        }
        names
    }
}

/// How often the subscription task looks for channels to place again.
pub(super) const REPAIR_EVERY: Duration = Duration::from_millis(50);

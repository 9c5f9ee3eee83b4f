//! What the subscription task does with the subscriptions: handle each
//! push of a master's connection, put channels that lost their place back
//! (repair), and the keep-alive (the slot map read again, every connection
//! pinged).

use std::sync::Arc;
use std::time::Instant;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ConnectionInfo, PushKind, Value};

use super::{Place, Push, Pushed, Shards};
use crate::redis::backplane::Config;
use crate::redis::error::{BackplaneError, Kind};
use crate::redis::slots::{parse_shards, SlotMap};

impl Shards {
    /// Handles one push of a subscription connection.
    pub(in crate::redis) fn on_push(&self, push: Push) -> Pushed {
        let Push { node, conn, info } = push;
        let channel = |data: &[Value]| match data.first() {
            Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        match info.kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = info.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                        Pushed::Message { channel, payload }
                    }
                    _ => Pushed::Nothing,
                }
            }
            PushKind::SSubscribe => {
                if let Some(name) = channel(&info.data) {
                    let mut state = self.state.lock();
                    if let Some(place) = state.wanted.get_mut(&name) {
                        if matches!(place, Place::Sent { node: n, .. } if *n == node) {
                            *place = Place::Confirmed { node };
                        } else if let Place::Leaving { node: n, confirmed } = place {
                            if *n == node {
                                *confirmed = true;
                            }
                        }
                    }
                }
                Pushed::Nothing
            }
            PushKind::SUnsubscribe => {
                let Some(name) = channel(&info.data) else {
                    return Pushed::Nothing;
                };
                let mut state = self.state.lock();
                if state.leaving.remove(&(Arc::clone(&node), name.clone())) {
                    return Pushed::Nothing; // ours
                }
                match state.wanted.get(&name) {
                    Some(Place::Sent { node: n, .. } | Place::Confirmed { node: n })
                        if *n == node =>
                    {
                        // The server let go of it: its slot moved.
                        state.wanted.insert(name, Place::Nowhere);
                        state.stale_map = true;
                        self.attend();
                        Pushed::Repair
                    }
                    Some(Place::Leaving { node: n, .. }) if *n == node => {
                        state.wanted.remove(&name);
                        Pushed::Nothing
                    }
                    _ => Pushed::Nothing,
                }
            }
            PushKind::Disconnection => {
                if self.lose(&node, Some(conn)) {
                    Pushed::Repair
                } else {
                    Pushed::Nothing
                }
            }
            _ => Pushed::Nothing,
        }
    }

    /// Puts back every channel whose `SSUBSCRIBE` was not confirmed within
    /// `timeout`, then places every channel that is nowhere; returns the
    /// names sent, to read them again.
    pub(in crate::redis) async fn repair(&self, config: &Config) -> Vec<String> {
        let pending = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let mut expired = false;
            let mut nowhere = false;
            for place in state.wanted.values_mut() {
                match place {
                    Place::Sent { at, .. } if now.duration_since(*at) > config.command_timeout => {
                        *place = Place::Nowhere;
                        expired = true;
                        nowhere = true;
                    }
                    Place::Nowhere => nowhere = true,
                    _ => {}
                }
            }
            if expired {
                state.stale_map = true;
            }
            nowhere
        };
        if !pending {
            return Vec::new();
        }
        self.place(None, config).await
    }

    /// The keep-alive: reads the slot map (a change without any push, a
    /// failover noticed late) and pings every master's connection; a
    /// connection that does not answer is lost.
    pub(in crate::redis) async fn keep_alive(&self, config: &Config) {
        let _ = self.refresh(config).await;
        let nodes: Vec<(Arc<str>, MultiplexedConnection, u64)> = {
            let state = self.state.lock();
            state
                .nodes
                .iter()
                .map(|(k, n)| (Arc::clone(k), n.conn.clone(), n.id))
                .collect()
        };
        let pings = nodes.into_iter().map(|(node, mut conn, id)| async move {
            let ping = ::redis::cmd("PING");
            // Any reply counts: on this connection a reply may be a push.
            let answered =
                tokio::time::timeout(config.command_timeout, ping.query_async::<Value>(&mut conn))
                    .await;
            (node, id, matches!(answered, Ok(Ok(_))))
        });
        for (node, id, alive) in futures_util::future::join_all(pings).await {
            if !alive {
                self.lose(&node, Some(id));
            }
        }
    }
}

/// Reads `CLUSTER SHARDS` on a connection of its own (RESP2, timeouts).
pub(super) async fn read_map(
    info: ConnectionInfo,
    config: &Config,
) -> Result<SlotMap, BackplaneError> {
    let client = Client::open(info).map_err(|e| BackplaneError::new(Kind::Config, e))?;
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&conn_config)
        .await
        .map_err(BackplaneError::from_redis)?;
    let reply: Value = ::redis::cmd("CLUSTER")
        .arg("SHARDS")
        .query_async(&mut conn)
        .await
        .map_err(BackplaneError::from_redis)?;
    Ok(parse_shards(reply)?)
}

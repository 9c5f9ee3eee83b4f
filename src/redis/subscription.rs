//! The subscription task: one Pub/Sub connection for every channel on a
//! single Redis (or one per master on a cluster, see [`Shards`]),
//! reconnect with backoff, keep-alive, the periodic check, and dispatch of
//! messages to their channel. Channels are added and removed in batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::Msg;
use tokio::sync::mpsc;

use super::backplane::Core;
use super::error::{BackplaneError, Kind};
use super::keys::parse_message;
use super::relay::{Delivery, Relay};
use super::shards::{Push, Pushed, Shards, REPAIR_EVERY};
use crate::Epoch;

/// The most channels in one `SUBSCRIBE` or `UNSUBSCRIBE` (one of a million
/// overflows the server's output buffer for Pub/Sub clients).
const SUBSCRIBE_BATCH: usize = 10_000;

/// The subscription side of a backplane.
pub(super) enum Subscriber {
    /// The live subscription's command half, `None` while reconnecting.
    /// Held across "add channels and subscribe to them" and across
    /// "subscribe to every channel and publish the sink", so that no
    /// channel is missed by both.
    Single(tokio::sync::Mutex<Option<PubSubSink>>),
    /// Sharded subscriptions on a cluster.
    Cluster(Box<Shards>),
}

/// What the subscription task starts with.
pub(super) enum Start {
    Single(PubSubSink, PubSubStream),
    Cluster(mpsc::UnboundedReceiver<Push>),
}

impl Core {
    /// A new subscription connection, not yet subscribed to anything.
    pub(super) async fn open_subscription(
        &self,
    ) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        let super::commands::Server::Single(client) = &self.server else {
            unreachable!("a cluster has no single subscription");
        };
        match tokio::time::timeout(self.config.connect_timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub.split()),
            Ok(Err(e)) => Err(BackplaneError::from_redis(e)),
            Err(elapsed) => Err(BackplaneError::new(Kind::Unavailable, elapsed)),
        }
    }

    /// Subscribes `sink` to `names`, in batches: every subscription on a
    /// single Redis goes through here.
    async fn subscribe(
        &self,
        sink: &mut PubSubSink,
        names: &[String],
    ) -> Result<(), BackplaneError> {
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            let timeout = self.config.command_timeout * (batch.len() / 1000 + 1) as u32;
            match tokio::time::timeout(timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BackplaneError::from_redis(e)),
                Err(elapsed) => return Err(BackplaneError::new(Kind::Unavailable, elapsed)),
            }
        }
        Ok(())
    }

    /// Subscribes `sink` to every open channel and makes it the live
    /// subscription.
    async fn subscribe_all(&self, sink: &mut PubSubSink) -> Result<(), BackplaneError> {
        let Subscriber::Single(live) = &self.subscriber else {
            unreachable!("single Redis only");
        };
        let mut live = live.lock().await;
        let names: Vec<String> = self.channels.read().keys().cloned().collect();
        self.subscribe(sink, &names).await?;
        *live = Some(sink.clone());
        Ok(())
    }

    /// Adds channels and subscribes to them, in one step against
    /// [`subscribe_all`](Self::subscribe_all) (no channel is missed by
    /// both), and in batches. Returns, for each relay, the one registered
    /// under its name: itself, or one a concurrent call registered first.
    ///
    /// A failure to subscribe is not returned: the subscription is going
    /// down, or a shard is, and the task subscribes the channel again
    /// when it is back, and reads it again.
    pub(super) async fn register(&self, relays: Vec<Arc<dyn Relay>>) -> Vec<Arc<dyn Relay>> {
        match &self.subscriber {
            Subscriber::Single(live) => {
                let subscription = live.lock().await;
                let (registered, added) = self.insert(relays);
                if let Some(mut sink) = subscription.clone() {
                    let _ = self.subscribe(&mut sink, &added).await;
                }
                registered
            }
            Subscriber::Cluster(shards) => {
                let (registered, added) = self.insert(relays);
                shards.subscribe(&added, &self.config).await;
                registered
            }
        }
    }

    /// Puts relays in the map; returns what is registered under each name,
    /// and the names added.
    fn insert(&self, relays: Vec<Arc<dyn Relay>>) -> (Vec<Arc<dyn Relay>>, Vec<String>) {
        let mut channels = self.channels.write();
        let mut added = Vec::new();
        let registered = relays
            .into_iter()
            .map(|relay| {
                let name = relay.keys().channel().to_owned();
                match channels.get(&name) {
                    Some(open) => Arc::clone(open),
                    None => {
                        channels.insert(name.clone(), Arc::clone(&relay));
                        added.push(name);
                        relay
                    }
                }
            })
            .collect();
        (registered, added)
    }

    /// Removes channels (each only if it is the one registered under its
    /// name) and unsubscribes from them, in batches.
    pub(super) async fn unregister(&self, relays: &[Arc<dyn Relay>]) {
        let remove = |channels: &mut std::collections::HashMap<String, Arc<dyn Relay>>| {
            let mut names = Vec::new();
            for relay in relays {
                let name = relay.keys().channel();
                if channels.get(name).is_some_and(|r| Arc::ptr_eq(r, relay)) {
                    channels.remove(name);
                    names.push(name.to_owned());
                }
            }
            names
        };
        match &self.subscriber {
            Subscriber::Single(live) => {
                let subscription = live.lock().await;
                let names = remove(&mut self.channels.write());
                if let Some(mut sink) = subscription.clone() {
                    for batch in names.chunks(SUBSCRIBE_BATCH) {
                        let timeout = self.config.command_timeout * (batch.len() / 1000 + 1) as u32;
                        // A failure means the subscription is going down: a
                        // new one subscribes only to what is registered.
                        if !matches!(
                            tokio::time::timeout(timeout, sink.unsubscribe(batch)).await,
                            Ok(Ok(()))
                        ) {
                            break;
                        }
                    }
                }
            }
            Subscriber::Cluster(shards) => {
                let names = remove(&mut self.channels.write());
                shards.unsubscribe(&names, &self.config).await;
            }
        }
    }

    /// Relays one Pub/Sub message to its channel.
    fn dispatch(self: &Arc<Self>, channel: &[u8], payload: &[u8]) {
        let Ok(name) = std::str::from_utf8(channel) else {
            return;
        };
        let relay = self.channels.read().get(name).cloned();
        let Some(relay) = relay else { return };
        match parse_message(payload) {
            Ok((epoch, version, value)) => match relay.on_message(epoch, version, value) {
                Delivery::Done => {}
                Delivery::Resync => self.request_resync(relay),
                Delivery::Rejected(e) => self.message_rejected(relay, e.into()),
            },
            Err(e) => self.message_rejected(relay, e.into()),
        }
    }

    /// Every "the subscription failed" goes through here.
    fn subscription_failed(&self, error: BackplaneError) {
        *self.last_error.lock() = Some(Arc::new(error));
    }
}

/// The subscription task. Runs until aborted.
pub(super) async fn run(core: Arc<Core>, start: Start) {
    match start {
        Start::Single(sink, stream) => run_single(core, Some((sink, stream))).await,
        Start::Cluster(rx) => run_cluster(core, rx).await,
    }
}

impl Core {
    /// Records whether the subscription is up (subscribed where it must be,
    /// and caught up), and tells telemetry of each change: `reason` says
    /// why it went down.
    pub(super) fn set_connected(&self, up: bool, reason: &str) {
        let mut link = self.link.lock();
        match (self.connected.swap(up, Ordering::AcqRel), up) {
            (false, true) => crate::telemetry::subscription_up(&mut link, &self.telemetry),
            (true, false) => {
                crate::telemetry::subscription_lost(&mut link, &self.telemetry, reason);
            }
            _ => {}
        }
    }
}

/// One Redis: relays messages, checks the channels with local waiters
/// every `check_interval`, and on any failure reconnects, resubscribes and
/// catches every channel up.
async fn run_single(core: Arc<Core>, mut first: Option<(PubSubSink, PubSubStream)>) {
    let Subscriber::Single(live) = &core.subscriber else {
        unreachable!("single Redis only");
    };
    let mut backoff = core.config.backoff_min;
    loop {
        let opened = match first.take() {
            Some(conn) => Ok(conn),
            None => core.open_subscription().await,
        };
        let up = match opened {
            Ok((mut sink, stream)) => match core.subscribe_all(&mut sink).await {
                // Subscribed first, then caught up: nothing published in
                // between is missed, and what arrives twice is dropped.
                Ok(()) => core.catch_up_all().await.map(|()| (sink, stream)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (sink, mut stream) = match up {
            Ok(up) => up,
            Err(e) => {
                crate::telemetry::reconnect_failed(&mut core.link.lock(), &e);
                core.subscription_failed(e);
                *live.lock().await = None;
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(core.config.backoff_max);
                continue;
            }
        };
        core.set_connected(true, "");
        backoff = core.config.backoff_min;

        let pinger = keep_alive(sink, core.config.ping_interval, core.config.command_timeout);
        tokio::pin!(pinger);
        let mut check = tokio::time::interval(core.config.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await; // the first tick is immediate
        let lost = loop {
            tokio::select! {
                msg = next_message(&mut stream) => match msg {
                    Some(msg) => core.dispatch(msg.get_channel_name().as_bytes(), msg.get_payload_bytes()),
                    None => break "the subscription connection closed",
                },
                () = &mut pinger => break "the subscription did not answer a PING",
                _ = check.tick() => {
                    let core = Arc::clone(&core);
                    tokio::spawn(async move { core.check().await });
                }
            }
        };

        core.set_connected(false, lost);
        core.subscription_failed(BackplaneError::new(Kind::Unavailable, lost));
        *live.lock().await = None;
        // If Redis restarted, the command connection is dead too: open a
        // new one for the next command rather than fail it on the old one.
        core.command.reset();
        core.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        // Come back soon, but not all instances in the same instant.
        tokio::time::sleep(jitter(core.config.backoff_min)).await;
    }
}

/// A cluster: relays the messages of every master's connection; places
/// the channels that lost their place (a slot moved, a master failed
/// over, a connection lost) on the master that owns them now, and reads
/// them again; reads the slot map and pings every connection every
/// `ping_interval`; checks the channels with local waiters every
/// `check_interval`. Placing and pinging run beside the relaying, one at a
/// time, so that a master that does not answer delays no message of the
/// others.
async fn run_cluster(core: Arc<Core>, mut rx: mpsc::UnboundedReceiver<Push>) {
    let Subscriber::Cluster(shards) = &core.subscriber else {
        unreachable!("cluster only");
    };
    let busy = Arc::new(AtomicBool::new(false));
    let mut repair = tokio::time::interval(REPAIR_EVERY);
    repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(core.config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut check = tokio::time::interval(core.config.check_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    core.set_connected(true, "");
    loop {
        let keep_alive = tokio::select! {
            push = rx.recv() => {
                let Some(push) = push else { return };
                match shards.on_push(push) {
                    Pushed::Message { channel, payload } => core.dispatch(&channel, &payload),
                    Pushed::Repair => core.set_connected(false, "a shard's subscription lost its place"),
                    Pushed::Nothing => {}
                }
                continue;
            }
            _ = repair.tick() => false,
            _ = ping.tick() => true,
            _ = check.tick() => {
                let core = Arc::clone(&core);
                tokio::spawn(async move { core.check().await });
                continue;
            }
        };
        if !keep_alive && !shards.attention.load(Ordering::Acquire) {
            continue;
        }
        if busy.swap(true, Ordering::AcqRel) {
            continue; // the last round is still on its way
        }
        let (core, busy) = (Arc::clone(&core), Arc::clone(&busy));
        tokio::spawn(async move {
            let Subscriber::Cluster(shards) = &core.subscriber else {
                unreachable!("cluster only");
            };
            if keep_alive {
                shards.keep_alive(&core.config).await;
            }
            if shards.take_attention() {
                let placed = shards.repair(&core.config).await;
                if !placed.is_empty() {
                    let relays: Vec<Arc<dyn Relay>> = {
                        let channels = core.channels.read();
                        placed
                            .iter()
                            .filter_map(|n| channels.get(n).cloned())
                            .collect()
                    };
                    if let Err(e) = core.catch_up(relays).await {
                        core.subscription_failed(e);
                    }
                }
                // Until every channel is confirmed where it was sent, look
                // again at the next round.
                if !shards.is_settled() {
                    shards.attend();
                }
                core.set_connected(shards.is_up(), "a shard's subscription is not placed yet");
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Pings the subscription every `interval`; returns when a ping fails.
async fn keep_alive(mut sink: PubSubSink, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, sink.ping::<::redis::Value>()).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

async fn next_message(stream: &mut PubSubStream) -> Option<Msg> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// A delay between `d / 2` and `d`.
pub(super) fn jitter(d: Duration) -> Duration {
    let permille = (Epoch::random().get() % 1000) as u32;
    d / 2 + d * permille / 2000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}

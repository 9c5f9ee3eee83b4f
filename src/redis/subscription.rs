//! The subscription task: one Pub/Sub connection for every channel,
//! reconnect with backoff, keep-alive, the periodic check, and dispatch of
//! messages to their channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::Msg;

use super::backplane::Core;
use super::channel::{Delivery, Relay};
use super::error::{BackplaneError, Kind};
use super::keys::parse_message;
use crate::Epoch;

impl Core {
    /// A new subscription connection, not yet subscribed to anything.
    pub(super) async fn open_subscription(
        &self,
    ) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        match tokio::time::timeout(self.config.connect_timeout, self.client.get_async_pubsub())
            .await
        {
            Ok(Ok(pubsub)) => Ok(pubsub.split()),
            Ok(Err(e)) => Err(BackplaneError::from_redis(e)),
            Err(elapsed) => Err(BackplaneError::new(Kind::Unavailable, elapsed)),
        }
    }

    /// Subscribes `sink` to `names`: every subscription goes through here.
    async fn subscribe(
        &self,
        sink: &mut PubSubSink,
        names: &[String],
    ) -> Result<(), BackplaneError> {
        if names.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.config.command_timeout, sink.subscribe(names)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BackplaneError::from_redis(e)),
            Err(elapsed) => Err(BackplaneError::new(Kind::Unavailable, elapsed)),
        }
    }

    /// Subscribes `sink` to every open channel and makes it the live
    /// subscription.
    async fn subscribe_all(&self, sink: &mut PubSubSink) -> Result<(), BackplaneError> {
        let mut live = self.subscription.lock().await;
        let names: Vec<String> = self.channels.read().keys().cloned().collect();
        self.subscribe(sink, &names).await?;
        *live = Some(sink.clone());
        Ok(())
    }

    /// Adds a channel and subscribes to it on the live subscription, in one
    /// step against [`subscribe_all`](Self::subscribe_all), so that no
    /// channel is missed by both. `Err` holds the channel a concurrent call
    /// registered under the name first.
    pub(super) async fn register(&self, relay: Arc<dyn Relay>) -> Result<(), Arc<dyn Relay>> {
        let subscription = self.subscription.lock().await;
        let name = relay.keys().channel.clone();
        {
            let mut channels = self.channels.write();
            if let Some(open) = channels.get(&name) {
                return Err(Arc::clone(open));
            }
            channels.insert(name.clone(), relay);
        }
        if let Some(mut sink) = subscription.clone() {
            // A failure here means the subscription is going down: the task
            // subscribes to every channel, this one included, when it is
            // back, and catches them up.
            let _ = self.subscribe(&mut sink, &[name]).await;
        }
        Ok(())
    }

    /// Relays one Pub/Sub message to its channel.
    fn dispatch(self: &Arc<Self>, msg: &Msg) {
        let relay = self.channels.read().get(msg.get_channel_name()).cloned();
        let Some(relay) = relay else { return };
        match parse_message(msg.get_payload_bytes()) {
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

/// The subscription task: relays messages, checks the channels with local
/// waiters every `check_interval`, and on any failure reconnects,
/// resubscribes and catches every channel up. Runs until aborted.
pub(super) async fn run(core: Arc<Core>, mut first: Option<(PubSubSink, PubSubStream)>) {
    let mut backoff = core.config.backoff_min;
    let mut link = crate::telemetry::Link::default();
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
                crate::telemetry::reconnect_failed(&mut link, &e);
                core.subscription_failed(e);
                *core.subscription.lock().await = None;
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(core.config.backoff_max);
                continue;
            }
        };
        core.connected.store(true, Ordering::Release);
        crate::telemetry::subscription_up(&mut link);
        backoff = core.config.backoff_min;

        let pinger = keep_alive(sink, core.config.ping_interval, core.config.command_timeout);
        tokio::pin!(pinger);
        let mut check = tokio::time::interval(core.config.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await; // the first tick is immediate
        let lost = loop {
            tokio::select! {
                msg = next_message(&mut stream) => match msg {
                    Some(msg) => core.dispatch(&msg),
                    None => break "the subscription connection closed",
                },
                () = &mut pinger => break "the subscription did not answer a PING",
                _ = check.tick() => {
                    let core = Arc::clone(&core);
                    tokio::spawn(async move { core.check().await });
                }
            }
        };

        core.connected.store(false, Ordering::Release);
        crate::telemetry::subscription_lost(&mut link, lost);
        core.subscription_failed(BackplaneError::new(Kind::Unavailable, lost));
        *core.subscription.lock().await = None;
        // If Redis restarted, the command connection is dead too: open a
        // new one for the next command rather than fail it on the old one.
        core.command.lock().take();
        core.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        // Come back soon, but not all instances in the same instant.
        tokio::time::sleep(jitter(core.config.backoff_min)).await;
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

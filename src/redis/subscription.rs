//! The subscription task: one Pub/Sub connection for every channel,
//! reconnect with backoff, keep-alive, and dispatch of messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::Msg;

use super::backplane::Core;
use super::error::{BackplaneError, Kind};
use super::keys::parse_position;
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

    /// Subscribes `sink` to every open channel and makes it the live
    /// subscription.
    pub(super) async fn subscribe_all(&self, sink: &mut PubSubSink) -> Result<(), BackplaneError> {
        let mut live = self.subscription.lock().await;
        let names: Vec<String> = self.channels.read().keys().cloned().collect();
        if !names.is_empty() {
            match tokio::time::timeout(self.config.command_timeout, sink.subscribe(&names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BackplaneError::from_redis(e)),
                Err(elapsed) => return Err(BackplaneError::new(Kind::Unavailable, elapsed)),
            }
        }
        *live = Some(sink.clone());
        Ok(())
    }

    /// Relays one Pub/Sub message to its channel.
    pub(super) fn dispatch(&self, msg: &Msg) {
        let relay = self.channels.read().get(msg.get_channel_name()).cloned();
        let Some(relay) = relay else { return };
        let payload = msg.get_payload_bytes();
        let mut parts = payload.splitn(3, |&b| b == b' ');
        let (Some(epoch), Some(version), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(epoch), Ok(version)) = (std::str::from_utf8(epoch), std::str::from_utf8(version))
        else {
            return;
        };
        if let Ok((epoch, version)) = parse_position(epoch, version) {
            relay.deliver_encoded(epoch, version, value);
        }
    }
}

/// The subscription task: relays messages, and on any failure reconnects,
/// resubscribes and catches every channel up. Runs until aborted.
pub(super) async fn run(core: Arc<Core>, mut first: Option<(PubSubSink, PubSubStream)>) {
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
                Ok(()) => match core.catch_up_all().await {
                    Ok(()) => Some((sink, stream)),
                    Err(_) => None,
                },
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some((sink, mut stream)) = up else {
            *core.subscription.lock().await = None;
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(core.config.backoff_max);
            continue;
        };
        core.connected.store(true, Ordering::Release);
        backoff = core.config.backoff_min;

        let pinger = keep_alive(sink, core.config.ping_interval, core.config.command_timeout);
        tokio::pin!(pinger);
        loop {
            tokio::select! {
                msg = next_message(&mut stream) => match msg {
                    Some(msg) => core.dispatch(&msg),
                    None => break, // connection closed
                },
                () = &mut pinger => break, // connection dead
            }
        }

        core.connected.store(false, Ordering::Release);
        *core.subscription.lock().await = None;
        // If Redis restarted, the command connection is dead too: open a
        // new one for the next command rather than fail it on the old one.
        core.command.lock().take();
        core.reconnects.fetch_add(1, Ordering::Relaxed);
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
fn jitter(d: Duration) -> Duration {
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

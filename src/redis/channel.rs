//! [`Channel`]: opening a channel, publishing, and relaying what Redis
//! sends to the local broadcaster (with de-duplication by version).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::backplane::{Backplane, Core};
use super::error::{BackplaneError, Kind};
use super::keys::{parse_position, Keys};
use super::modify::{Modify, ModifyReply, ModifyScript};
use super::{Codec, DecodeError};
use crate::{Broadcaster, Epoch, Update, Version};

/// How many abandoned epochs a channel remembers, to ignore late messages
/// from them.
const RETIRED_EPOCHS: usize = 8;

/// Configures a [`Channel`] before opening it.
#[derive(Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct ChannelBuilder<'a> {
    pub(super) backplane: &'a Backplane,
    pub(super) name: String,
    pub(super) history: usize,
    pub(super) max_waiters: Option<usize>,
}

impl ChannelBuilder<'_> {
    /// Keeps the last `k` updates, in Redis and in each instance's
    /// broadcaster (default 1: latest-value semantics; see
    /// [`Builder::history`](crate::Builder::history)).
    ///
    /// With `k > 1`, a client up to `k` versions behind receives every
    /// update it missed, and an instance that lost its subscription relays
    /// every update it missed meanwhile (up to `k`), in order. Each publish
    /// then also appends to and trims a list in Redis.
    ///
    /// # Panics
    ///
    /// If `k` is 0.
    pub fn history(mut self, k: usize) -> Self {
        assert!(
            k >= 1,
            "longpoll: history must keep at least the current value"
        );
        self.history = k;
        self
    }

    /// Bounds the local waiters of this instance (see
    /// [`Builder::max_waiters`](crate::Builder::max_waiters)).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = Some(n);
        self
    }

    /// Joins the channel: reads its state from Redis, creating it with
    /// `initial` at version 0 under a new epoch if it does not exist, and
    /// subscribes to its changes.
    ///
    /// `initial` is also the value the channel starts again from if Redis
    /// loses it. Opening a name that this backplane already opened returns
    /// the same channel (with the settings it was first opened with).
    ///
    /// # Errors
    ///
    /// [`is_unavailable`](BackplaneError::is_unavailable) if Redis does not
    /// answer; [`is_decode`](BackplaneError::is_decode) if the stored value
    /// is not a `T`; [`is_config`](BackplaneError::is_config) if the name is
    /// already open with another type; [`is_server`](BackplaneError::is_server)
    /// if the key holds something else than a channel.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the channel may have been
    /// created in Redis, but nothing is left half-open in this process
    /// except, possibly, the subscription to its changes.
    pub async fn open<T>(self, initial: T) -> Result<Channel<T>, BackplaneError>
    where
        T: Codec + Send + Sync + 'static,
    {
        let backplane = self.backplane.clone();
        let core = &backplane.shared.core;
        let keys = Keys::new(&core.prefix, &self.name);
        if let Some(open) = core.channels.read().get(&keys.channel) {
            return Channel::from_relay(&backplane, &keys.channel, Arc::clone(open));
        }

        let initial = initial.encode();
        let snapshot = core.sync(&keys, &initial, None).await?;
        let value = T::decode(&snapshot.value)?;
        let mut builder = Broadcaster::builder()
            .history(self.history)
            .epoch(snapshot.epoch)
            .initial_version(snapshot.version);
        if let Some(n) = self.max_waiters {
            builder = builder.max_waiters(n);
        }
        let relay = Arc::new(ChannelCore {
            keys,
            broadcaster: builder.build(value),
            initial,
            history: self.history,
            retired: Mutex::new(Vec::new()),
        });

        {
            // Register, then subscribe, then read again: an update published
            // after the first read and before the subscription took effect
            // is caught by the second read.
            let subscription = core.subscription.lock().await;
            {
                let mut channels = core.channels.write();
                if let Some(open) = channels.get(&relay.keys.channel) {
                    // Opened by a concurrent call meanwhile.
                    let open = Arc::clone(open);
                    drop(channels);
                    return Channel::from_relay(&backplane, &relay.keys.channel, open);
                }
                channels.insert(relay.keys.channel.clone(), relay.clone());
            }
            if let Some(mut sink) = subscription.clone() {
                // A failure here means the subscription is going down: the
                // task subscribes to every channel, this one included, when
                // it is back, and catches them up.
                let _ = tokio::time::timeout(
                    core.config.command_timeout,
                    sink.subscribe(&relay.keys.channel),
                )
                .await;
            }
        }
        // Same reasoning: if this fails, the task catches up on reconnect.
        let _ = core.catch_up(&*relay).await;
        Ok(Channel {
            inner: relay,
            backplane,
        })
    }
}

/// A value shared by every instance, relayed to a local [`Broadcaster`].
///
/// Publish with [`publish`](Self::publish) or [`modify`](Self::modify) on
/// any instance; wait with [`broadcaster`](Self::broadcaster) on every
/// instance. Clones share the channel.
pub struct Channel<T> {
    pub(super) inner: Arc<ChannelCore<T>>,
    pub(super) backplane: Backplane,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            inner: Arc::clone(&self.inner),
            backplane: self.backplane.clone(),
        }
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("key", &self.inner.keys.state)
            .field("broadcaster", &self.inner.broadcaster)
            .finish_non_exhaustive()
    }
}

impl<T> Channel<T> {
    /// This instance's broadcaster for the channel: wait on it, with cursors
    /// from any instance.
    ///
    /// Its epoch and versions are the channel's, as stored in Redis. Publish
    /// through the channel, not on the broadcaster: a local
    /// [`notify`](Broadcaster::notify) would reach this instance only and
    /// take a version number that Redis will give to another value.
    /// [`close`](Broadcaster::close) it on shutdown to answer held waits.
    pub fn broadcaster(&self) -> &Broadcaster<T> {
        &self.inner.broadcaster
    }

    /// The state this instance holds now (see [`Broadcaster::current`]).
    pub fn current(&self) -> Update<T> {
        self.inner.broadcaster.current()
    }

    /// The Redis key of the channel's state hash.
    pub fn key(&self) -> &str {
        &self.inner.keys.state
    }
}

impl<T: Codec + Send + Sync + 'static> Channel<T> {
    pub(super) fn from_relay(
        backplane: &Backplane,
        name: &str,
        relay: Arc<dyn Relay>,
    ) -> Result<Self, BackplaneError> {
        match relay.into_any().downcast::<ChannelCore<T>>() {
            Ok(inner) => Ok(Channel {
                inner,
                backplane: backplane.clone(),
            }),
            Err(_) => Err(BackplaneError::new(
                Kind::Config,
                format!("channel {name:?} is already open with another value type"),
            )),
        }
    }

    /// Replaces the value on every instance and returns its version.
    ///
    /// One script in Redis bumps the version, stores the value, trims the
    /// history and publishes the update. When this returns, this
    /// instance's waiters have been woken; other instances' are woken as
    /// their subscription delivers the update, one Redis hop later.
    ///
    /// # Errors
    ///
    /// [`is_unavailable`](BackplaneError::is_unavailable) if Redis cannot be
    /// reached: nothing was published (unless the answer timed out, see
    /// there); [`is_closed`](BackplaneError::is_closed) if this instance's
    /// broadcaster is closed; [`is_server`](BackplaneError::is_server) if
    /// Redis refused the script.
    ///
    /// # Cancel safety
    ///
    /// Once the script is sent, dropping the future does not take it back:
    /// the update may have been published, and if so every instance,
    /// this one included, still receives it through its subscription.
    pub async fn publish(&self, value: T) -> Result<Version, BackplaneError> {
        if self.inner.broadcaster.is_closed() {
            return Err(BackplaneError::closed());
        }
        let core = &self.backplane.shared.core;
        let keys = &self.inner.keys;
        let encoded = value.encode();
        let mut call = core.publish_script.key(&keys.state);
        call.key(&keys.history)
            .arg(Epoch::random().to_string())
            .arg(&self.inner.initial)
            .arg(self.inner.history)
            .arg(&keys.channel)
            .arg(encoded);
        let reply: ModifyReply = core.invoke(&call).await?;
        let (epoch, version) = parse_position(&reply.0, &reply.1)?;
        self.inner.settle(core, epoch, version, value).await;
        Ok(version)
    }

    /// Prepares an atomic read-modify-publish with `script` (see
    /// [`ModifyScript`]); add keys and arguments, then
    /// [`invoke`](Modify::invoke) it.
    pub fn modify<'a>(&'a self, script: &'a ModifyScript) -> Modify<'a, T> {
        Modify {
            channel: self,
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A channel as the subscription task sees it, whatever its value type.
pub(super) trait Relay: Send + Sync + 'static {
    fn keys(&self) -> &Keys;
    fn initial(&self) -> &[u8];
    /// The epoch and version this instance holds.
    fn position(&self) -> (Epoch, Version);
    /// Relays an update received or re-read from Redis.
    fn deliver_encoded(&self, epoch: Epoch, version: Version, value: &[u8]);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

pub(super) struct ChannelCore<T> {
    pub(super) keys: Keys,
    pub(super) broadcaster: Broadcaster<T>,
    /// The encoded initial value, for recreating a lost channel.
    pub(super) initial: Vec<u8>,
    pub(super) history: usize,
    /// Epochs this channel left, newest last: late messages from them are
    /// ignored, so that the epoch never flips back. The lock also makes
    /// each delivery's check-and-publish one step.
    pub(super) retired: Mutex<Vec<Epoch>>,
}

impl<T: Codec + Send + Sync + 'static> ChannelCore<T> {
    /// Relays `(epoch, version)` to the broadcaster unless it is stale;
    /// `value` is decoded only if it is needed.
    pub(super) fn deliver(
        &self,
        epoch: Epoch,
        version: Version,
        value: impl FnOnce() -> Result<T, DecodeError>,
    ) {
        let mut retired = self.retired.lock();
        let (cur_epoch, cur_version) = self.position();
        if epoch == cur_epoch {
            if version <= cur_version {
                return; // a duplicate, or overtaken
            }
            if let Ok(value) = value() {
                // Cannot be `NotNewer` (checked under `retired`); `Closed`
                // means shutting down.
                let _ = self.broadcaster.publish_at(version, value);
            }
        } else if !retired.contains(&epoch) {
            if let Ok(value) = value() {
                if retired.len() == RETIRED_EPOCHS {
                    retired.remove(0);
                }
                retired.push(cur_epoch);
                let _ = self.broadcaster.restart(epoch, version, value);
            }
        }
    }

    /// Relays the outcome of this instance's own publish.
    pub(super) async fn settle(&self, core: &Core, epoch: Epoch, version: Version, value: T) {
        let (cur_epoch, cur_version) = self.position();
        if self.history > 1 && epoch == cur_epoch && version > cur_version.next() {
            // Updates from other instances are still on their way through
            // the subscription; read them now so that local waiters get
            // every version, in order, rather than a gap.
            let _ = core.catch_up(self).await;
        }
        self.deliver(epoch, version, || Ok(value));
    }
}

impl<T: Codec + Send + Sync + 'static> Relay for ChannelCore<T> {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    fn initial(&self) -> &[u8] {
        &self.initial
    }

    fn position(&self) -> (Epoch, Version) {
        let current = self.broadcaster.current();
        (current.epoch(), current.version())
    }

    fn deliver_encoded(&self, epoch: Epoch, version: Version, value: &[u8]) {
        self.deliver(epoch, version, || T::decode(value));
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

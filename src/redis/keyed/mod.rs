//! [`KeyedChannels`]: a keyed hub whose keys are backplane channels,
//! subscribed on this instance only while they are live here.
//!
//! `builder.rs` configures and starts a hub; `live.rs` keeps, for each key
//! live on this instance, the relay that brings it in line with Redis (fed
//! by the local hub's hooks); `loader.rs` subscribes, reads and
//! unsubscribes those keys in batches.

mod builder;
mod live;
mod loader;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::error::{BackplaneError, Kind};
use super::keys::{check_name, Keys, Outcome};
use super::relay::{run_modify, Publish};
use super::{Codec, ModifyScript};
use crate::keyed::{Keyed, TooManyKeys, WaitMany};
use crate::{Broadcaster, Cursor, Epoch, Version};

pub use builder::KeyedChannelsBuilder;
use live::{id_of, Inner};

/// A [`KeyedChannels`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyedError {
    /// The key is not live on this instance and the hub's
    /// [`max_keys`](KeyedChannelsBuilder::max_keys) is reached: nothing was
    /// created, here or in Redis. An HTTP server answers `503` with
    /// `Retry-After`.
    #[error(transparent)]
    TooManyKeys(#[from] TooManyKeys),
    /// The key cannot name a channel: empty, longer than the hub allows,
    /// or holding a brace. Nothing reached Redis. An HTTP server answers
    /// `400`.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Redis failed, or the key's data in it is unusable (see
    /// [`BackplaneError`]'s `is_*`).
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// Where a [`KeyedChannels`] publish landed: the epoch and version of the
/// update (or, for a repeated [`publish_once`](KeyedChannels::publish_once),
/// of the first publish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The key's epoch the update belongs to.
    pub epoch: Epoch,
    /// The update's version.
    pub version: Version,
}

/// A keyed hub whose keys are backplane channels: a publish to a key on
/// any instance wakes its waiters on every instance.
///
/// Under it is a local [`Keyed`] hub ([`hub`](Self::hub)): a key is live on
/// this instance while it is in use here, and only then subscribed. The
/// first use of a key on an instance subscribes it and reads its state
/// and history from Redis, in a batch with the other keys that came live
/// meanwhile; only that key's waiters wait for the read. Once the key is
/// idle here (no handle, no waiter), the local hub's sweep parks it, and
/// it is unsubscribed; past the idle timeout it is forgotten here. Reading
/// a key never creates anything in Redis: a key Redis does not hold is
/// at its *absent* state (version 0 of an epoch derived from its name, the
/// [`init`](KeyedChannelsBuilder::init) value), the same on every instance.
/// The first publish creates it, under a new epoch.
///
/// Cheap to clone: clones share the hub.
///
/// ```no_run
/// use longpoll::redis::{Backplane, KeyedChannels};
/// use longpoll::Cursor;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backplane = Backplane::connect("redis://127.0.0.1:6379/").await?;
/// let rooms: KeyedChannels<String> = backplane
///     .keyed("rooms")
///     .history(100)
///     .max_keys(10_000)
///     .ttl(Some(Duration::from_secs(86_400)))
///     .build()?;
/// // Subscribed and read from Redis on first use; unsubscribed once idle.
/// let lobby = rooms.broadcaster("lobby").await?;
/// let wait = lobby.wait_timeout(Cursor::NEXT, Duration::from_secs(30));
/// rooms.publish("lobby", "hello".to_string()).await?; // on any instance
/// assert_eq!(**wait.await?.value(), "hello");
/// # Ok(()) }
/// ```
pub struct KeyedChannels<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for KeyedChannels<T> {
    fn clone(&self) -> Self {
        KeyedChannels {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for KeyedChannels<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedChannels")
            .field("name", &self.inner.name)
            .field("live", &self.inner.relays.lock().len())
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

impl<T: Codec + Send + Sync + 'static> KeyedChannels<T> {
    /// The local hub: for [`KeyedPoll`](crate::http::KeyedPoll) and
    /// [`EventStreams`](crate::sse::EventStreams), which serve its keys.
    ///
    /// Serve a key from it after [`broadcaster`](Self::broadcaster) or
    /// [`load`](Self::load) returned (while holding what they returned):
    /// a key that the local hub creates by itself is subscribed and read in
    /// the background, and until then its waits are refused
    /// ([`WaitError::Closed`](crate::WaitError::Closed): an HTTP server
    /// answers `503` with `Retry-After`), and a request without a cursor
    /// gets a baseline of no epoch the others know, which its next poll
    /// corrects with a resync.
    pub fn hub(&self) -> &Keyed<String, T> {
        &self.inner.hub
    }

    /// The hub's name (see [`Backplane::keyed`](crate::redis::Backplane::keyed)).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The Redis key (and Pub/Sub channel) of `key`.
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.channel_name(key)
    }

    fn check(&self, key: &str) -> Result<(), KeyedError> {
        if key.len() > self.inner.max_key_len {
            return Err(KeyedError::InvalidKey(format!(
                "longer than {} bytes",
                self.inner.max_key_len
            )));
        }
        check_name(
            &self.inner.core.prefix,
            &format!("{}:{key}", self.inner.name),
        )
        .map_err(KeyedError::InvalidKey)?;
        if key.is_empty() {
            return Err(KeyedError::InvalidKey(String::from("empty")));
        }
        Ok(())
    }

    /// `key`'s broadcaster on this instance, subscribed and in line with
    /// Redis: its state and history are read first if the key was not live
    /// here. Wait on it with cursors from any instance. While the handle
    /// lives, the key stays live (and subscribed).
    ///
    /// # Errors
    ///
    /// [`KeyedError::InvalidKey`], [`KeyedError::TooManyKeys`] (both before
    /// anything reaches Redis), or [`KeyedError::Backplane`] if Redis did
    /// not answer the read ([`is_unavailable`](BackplaneError::is_unavailable);
    /// the key is read again in the background) or holds unusable data for
    /// the key (its waits are then refused until it heals).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the read goes on for the other callers.
    pub async fn broadcaster(&self, key: &str) -> Result<Broadcaster<T>, KeyedError> {
        self.check(key)?;
        let b = self.inner.hub.broadcaster(key)?;
        self.ready(key, &b).await?;
        Ok(b)
    }

    /// [`broadcaster`](Self::broadcaster) for several keys, read in one
    /// batch.
    ///
    /// # Errors
    ///
    /// As [`broadcaster`](Self::broadcaster), for the first key that
    /// fails; nothing is kept live by a failed call.
    ///
    /// # Cancel safety
    ///
    /// As [`broadcaster`](Self::broadcaster).
    pub async fn load<'k, I>(&self, keys: I) -> Result<Vec<Broadcaster<T>>, KeyedError>
    where
        I: IntoIterator<Item = &'k str>,
    {
        let mut handles = Vec::new();
        let mut names = Vec::new();
        for key in keys {
            self.check(key)?;
            handles.push(self.inner.hub.broadcaster(key)?);
            names.push(key);
        }
        for (key, b) in names.iter().zip(&handles) {
            self.ready(key, b).await?;
        }
        Ok(handles)
    }

    /// Waits on several `(key, cursor)` pairs at once, as
    /// [`Keyed::wait_many`], once every key is loaded (in one batch).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    ///
    /// # Cancel safety
    ///
    /// As [`Keyed::wait_many`].
    pub async fn wait_many<I, C>(&self, pairs: I) -> Result<WaitMany<String, T>, KeyedError>
    where
        I: IntoIterator<Item = (String, C)>,
        C: Into<Cursor>,
    {
        let pairs: Vec<(String, Cursor)> = pairs.into_iter().map(|(k, c)| (k, c.into())).collect();
        let held = self.load(pairs.iter().map(|(k, _)| k.as_str())).await?;
        let wait = self.inner.hub.wait_many(pairs)?;
        drop(held);
        Ok(wait)
    }

    /// Waits until the relay of `b` had its first read.
    async fn ready(&self, key: &str, b: &Broadcaster<T>) -> Result<(), KeyedError> {
        let id = id_of(b);
        loop {
            let relay = self
                .inner
                .relays
                .lock()
                .get(key)
                .filter(|l| l.id == id)
                .map(|l| Arc::clone(&l.relay));
            let Some(relay) = relay else {
                // Another caller made the key live and its hook has not run
                // yet: a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let notified = relay.load.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if relay.loaded.load(Ordering::Acquire) {
                return match relay.failure.lock().clone() {
                    Some(e) => Err(BackplaneError::shared(&e).into()),
                    None => Ok(()),
                };
            }
            if relay.sync.stale.load(Ordering::Acquire) {
                return Err(BackplaneError::new(
                    Kind::Unavailable,
                    "the key's state could not be read from Redis",
                )
                .into());
            }
            notified.await;
            if !relay.loaded.load(Ordering::Acquire) && relay.sync.stale.load(Ordering::Acquire) {
                let why = self.inner.backplane.last_error();
                return Err(match why {
                    Some(e) => BackplaneError::shared(&e),
                    None => BackplaneError::new(
                        Kind::Unavailable,
                        "the key's state could not be read from Redis",
                    ),
                }
                .into());
            }
        }
    }

    /// Publishes `value` to `key` on every instance and returns where it
    /// landed, as [`Channel::publish`](crate::redis::Channel::publish). The key
    /// becomes live on this instance (so that the publish counts against
    /// [`max_keys`](KeyedChannelsBuilder::max_keys) before it reaches
    /// Redis), and its local waiters are woken before this returns. The
    /// first publish to a key Redis does not hold creates it, under a new
    /// epoch.
    ///
    /// # Errors
    ///
    /// [`KeyedError::InvalidKey`] or [`KeyedError::TooManyKeys`] before
    /// anything reaches Redis; else as
    /// [`Channel::publish`](crate::redis::Channel::publish).
    ///
    /// # Cancel safety
    ///
    /// As [`Channel::publish`](crate::redis::Channel::publish).
    pub async fn publish(&self, key: &str, value: T) -> Result<Published, KeyedError> {
        self.publish_inner(key, None, value).await
    }

    /// [`publish`](Self::publish), safe to retry with the same `id`, as
    /// [`Channel::publish_once`](crate::redis::Channel::publish_once).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_once(
        &self,
        key: &str,
        id: impl AsRef<[u8]>,
        value: T,
    ) -> Result<Published, KeyedError> {
        self.publish_inner(key, Some(id.as_ref()), value).await
    }

    async fn publish_inner(
        &self,
        key: &str,
        once: Option<&[u8]>,
        value: T,
    ) -> Result<Published, KeyedError> {
        self.check(key)?;
        let b = self.inner.hub.broadcaster(key)?;
        if b.is_closed() {
            return Err(BackplaneError::closed().into());
        }
        let core = &self.inner.core;
        let relay = self
            .inner
            .relays
            .lock()
            .get(key)
            .filter(|l| l.id == id_of(&b))
            .map(|l| Arc::clone(&l.relay));
        let mut call = match &relay {
            Some(relay) => relay.modify_call(core, once, &[])?,
            None => {
                let keys = Keys::new(&core.prefix, &format!("{}:{key}", self.inner.name));
                let initial = (self.inner.init)(key).encode();
                Publish {
                    keys: &keys,
                    initial: &initial,
                    history: self.inner.history,
                    once_ttl: self.inner.once_ttl,
                    ttl: self.inner.ttl,
                    held: None,
                }
                .call(core, once, &[])
            }
        };
        call.arg(value.encode());
        let reply = match &relay {
            // Timed until its message comes back.
            Some(relay) => relay.run_modify(core, &core.publish_script, &call).await?,
            None => run_modify(core, None, &core.publish_script, &call).await?,
        };
        if let (Outcome::Published, Some(relay)) = (reply.outcome, &relay) {
            relay.settle(core, &reply, value).await;
        }
        drop(b);
        Ok(Published {
            epoch: reply.epoch,
            version: reply.version,
        })
    }

    /// Runs `script` as a read-modify-publish of `key` (see
    /// [`ModifyScript`]); `keys` and `args` are the snippet's `KEYS` and
    /// `ARGV`. Returns the version published, or `None` if the snippet
    /// published nothing.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), and as
    /// [`Modify::invoke`](crate::redis::Modify::invoke).
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Self::publish).
    pub async fn modify(
        &self,
        key: &str,
        script: &ModifyScript,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Option<Version>, KeyedError> {
        self.check(key)?;
        let b = self.inner.hub.broadcaster(key)?;
        self.ready(key, &b).await?;
        let core = &self.inner.core;
        let Some(relay) = self.inner.relay_of(key) else {
            return Err(
                BackplaneError::new(Kind::Unavailable, "the key went idle meanwhile").into(),
            );
        };
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let mut call = relay.modify_call(core, None, &keys)?;
        for a in args {
            call.arg(a);
        }
        let reply = relay.run_modify(core, &script.script, &call).await?;
        if reply.outcome == Outcome::Published {
            let value = T::decode(&reply.value).map_err(BackplaneError::from)?;
            relay.settle(core, &reply, value).await;
            return Ok(Some(reply.version));
        }
        Ok(None)
    }

    /// Keys live on this instance now (subscribed, or about to be).
    pub fn live_keys(&self) -> usize {
        self.inner.relays.lock().len()
    }
}

//! [`KeyedChannels`]: a keyed hub whose keys are backplane channels,
//! subscribed on this instance only while they are live here.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::backplane::{Backplane, Core};
use super::error::{BackplaneError, Kind};
use super::keys::{check_name, Keys, Outcome};
use super::loader::{run, Queue};
use super::relay::{run_modify, ChannelCore, Local, Publish, Relay, SyncState, HOLD_AHEAD};
use super::{Codec, ModifyScript};
use crate::keyed::{Hooks, Keyed, TooManyKeys, WaitMany};
use crate::{Broadcaster, Cursor, Epoch, Version};

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

/// Configures a [`KeyedChannels`] hub: see [`Backplane::keyed`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedChannelsBuilder<T> {
    backplane: Backplane,
    name: String,
    history: usize,
    max_keys: usize,
    max_key_len: usize,
    idle_timeout: Duration,
    ttl: Option<Duration>,
    once_ttl: Duration,
    max_waiters: Option<usize>,
    init: Option<Init<T>>,
}

/// The value of a key Redis does not hold.
type Init<T> = Arc<dyn Fn(&str) -> T + Send + Sync>;

impl<T> fmt::Debug for KeyedChannelsBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedChannelsBuilder")
            .field("name", &self.name)
            .field("history", &self.history)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Backplane {
    /// A [`KeyedChannelsBuilder`] for the keyed hub `name`: its key `k` is
    /// the channel `<name>:<k>` of this backplane, shared by every instance
    /// that builds a hub of that name.
    pub fn keyed<T>(&self, name: &str) -> KeyedChannelsBuilder<T> {
        KeyedChannelsBuilder {
            backplane: self.clone(),
            name: name.to_owned(),
            history: 1,
            max_keys: 100_000,
            max_key_len: 256,
            idle_timeout: Duration::from_secs(60),
            ttl: Some(Duration::from_secs(24 * 3600)),
            once_ttl: super::channel::ONCE_TTL,
            max_waiters: None,
            init: None,
        }
    }
}

impl<T> KeyedChannelsBuilder<T> {
    /// Every key keeps its last `k` updates, locally and in Redis (default
    /// 1), as [`ChannelBuilder::history`](super::ChannelBuilder::history).
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

    /// At most `n` keys live or parked on this instance (default 100 000),
    /// as [`KeyedBuilder::max_keys`](crate::keyed::KeyedBuilder::max_keys):
    /// past it, a call that names a new key fails with
    /// [`KeyedError::TooManyKeys`] before anything reaches Redis.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The longest key, in bytes (default 256, at most 1000); longer keys
    /// are [`KeyedError::InvalidKey`].
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.max_key_len = n.min(1000);
        self
    }

    /// How long a key stays on this instance unused (default 60 s), as
    /// [`KeyedBuilder::idle_timeout`](crate::keyed::KeyedBuilder::idle_timeout).
    /// A key not in use is unsubscribed at the next sweep (every half of
    /// this), and forgotten here once idle this long.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How long Redis keeps a key nobody publishes to (default 24 hours;
    /// `None`: for ever), as [`ChannelBuilder::ttl`](super::ChannelBuilder::ttl).
    /// Every publish sets it again. A key that expired is a new sequence:
    /// cursors of its old epoch are answered
    /// [`Resync::OtherEpoch`](crate::Resync::OtherEpoch).
    ///
    /// # Panics
    ///
    /// If `ttl` is under a millisecond.
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        assert!(
            ttl.is_none_or(|t| t >= Duration::from_millis(1)),
            "longpoll: a channel's time to live is at least 1 ms"
        );
        self.ttl = ttl;
        self
    }

    /// How long Redis remembers an idempotency key of
    /// [`publish_once`](KeyedChannels::publish_once) (default 60 s).
    pub fn remember_publishes(mut self, ttl: Duration) -> Self {
        self.once_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Bounds each key's local waiters (see
    /// [`Builder::max_waiters`](crate::Builder::max_waiters)).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = Some(n);
        self
    }

    /// The value of a key that Redis does not hold (default
    /// `T::default()`): its state at version 0 of its *absent* epoch, which
    /// every instance derives from the key's name without writing it. It
    /// must be the same on every instance.
    pub fn init<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> T + Send + Sync + 'static,
    {
        self.init = Some(Arc::new(f));
        self
    }
}

impl<T: Codec + Default + Send + Sync + 'static> KeyedChannelsBuilder<T> {
    /// Builds the hub, and starts its loader and its sweeper.
    ///
    /// # Errors
    ///
    /// [`is_config`](BackplaneError::is_config) if the hub's name is empty,
    /// holds a brace or is too long.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build(mut self) -> Result<KeyedChannels<T>, BackplaneError> {
        let init = self
            .init
            .take()
            .unwrap_or_else(|| Arc::new(|_: &str| T::default()));
        self.assemble(init)
    }
}

impl<T: Codec + Send + Sync + 'static> KeyedChannelsBuilder<T> {
    /// As [`build`](Self::build), for a `T` without `Default`: the value
    /// of [`init`](Self::init) is required.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    ///
    /// # Panics
    ///
    /// If no [`init`](Self::init) was given, or outside a tokio runtime.
    pub fn build_with_init(mut self) -> Result<KeyedChannels<T>, BackplaneError> {
        let init = self
            .init
            .take()
            .expect("longpoll: `build_with_init` needs `KeyedChannelsBuilder::init`");
        self.assemble(init)
    }

    fn assemble(self, init: Init<T>) -> Result<KeyedChannels<T>, BackplaneError> {
        let core = Arc::clone(&self.backplane.shared.core);
        check_name(&core.prefix, &format!("{}:", self.name))
            .map_err(|e| BackplaneError::new(Kind::Config, e))?;
        let queue = Arc::new(Queue::default());
        let (history, max_waiters) = (self.history, self.max_waiters);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<T>>| {
            let (on_live, on_idle) = (weak.clone(), weak.clone());
            let hooks = Hooks {
                live: Box::new(move |key: &String, b: &Broadcaster<T>| {
                    if let Some(inner) = on_live.upgrade() {
                        inner.went_live(key, b);
                    }
                }),
                idle: Box::new(move |key: &String, b: &Broadcaster<T>| {
                    if let Some(inner) = on_idle.upgrade() {
                        inner.went_idle(key, b);
                    }
                }),
            };
            let local_init = Arc::clone(&init);
            let hub = Keyed::builder()
                .max_keys(self.max_keys)
                .idle_timeout(self.idle_timeout)
                .configure(move |_: &String| {
                    let mut b = crate::Builder::new()
                        .history(history)
                        .hold_ahead(HOLD_AHEAD)
                        // Until its state is read from Redis.
                        .refusing_waits();
                    if let Some(n) = max_waiters {
                        b = b.max_waiters(n);
                    }
                    b
                })
                .init(move |key: &String| local_init(key))
                .hooks(hooks)
                .build_with_init();
            Inner {
                core: Arc::clone(&core),
                backplane: self.backplane.clone(),
                hub,
                name: self.name.clone(),
                history,
                max_key_len: self.max_key_len,
                ttl: self.ttl,
                once_ttl: self.once_ttl,
                init,
                relays: Mutex::new(HashMap::new()),
                queue: Arc::clone(&queue),
            }
        });
        let period = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(inner.hub.sweeper(period));
        tokio::spawn(run(core, queue, Arc::downgrade(&inner)));
        Ok(KeyedChannels { inner })
    }
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

pub(super) struct Inner<T> {
    core: Arc<Core>,
    backplane: Backplane,
    hub: Keyed<String, T>,
    name: String,
    history: usize,
    max_key_len: usize,
    ttl: Option<Duration>,
    once_ttl: Duration,
    init: Init<T>,
    /// The relay of each live key, and which broadcaster it serves (by
    /// address: the hooks hold it alive while they run).
    relays: Mutex<HashMap<String, LiveKey<T>>>,
    queue: Arc<Queue>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // The loader finds the hub gone and ends.
        self.queue.wake.notify_one();
        // Nothing of this hub is relayed any more.
        let relays: Vec<Arc<dyn Relay>> = self
            .relays
            .get_mut()
            .drain()
            .map(|(_, live)| live.erased)
            .collect();
        let core = Arc::clone(&self.core);
        if !relays.is_empty() && !core.stopped.load(Ordering::Acquire) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { core.unregister(&relays).await });
            }
        }
    }
}

/// A live key's relay.
struct LiveKey<T> {
    /// The address of the broadcaster it serves.
    id: usize,
    relay: Arc<ChannelCore<T>>,
    /// The same, as the backplane sees it.
    erased: Arc<dyn Relay>,
}

/// The address that tells one broadcaster from another.
fn id_of<T>(b: &Broadcaster<T>) -> usize {
    Arc::as_ptr(&b.shared) as *const () as usize
}

/// The epoch of the absent state of the channel `key` (its hash's name):
/// the same on every instance, without writing it (FNV-1a, 64 bits).
fn absent_epoch(key: &str) -> Epoch {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Epoch::new(h | 1).expect("odd, so not zero")
}

impl<T: Codec + Send + Sync + 'static> Inner<T> {
    pub(super) fn channel_name(&self, key: &str) -> String {
        Keys::new(&self.core.prefix, &format!("{}:{key}", self.name))
            .channel()
            .to_owned()
    }

    pub(super) fn relay_of(&self, key: &str) -> Option<Arc<ChannelCore<T>>> {
        self.relays.lock().get(key).map(|l| Arc::clone(&l.relay))
    }

    pub(super) fn is_loaded(&self, relay: &Arc<dyn Relay>) -> bool {
        relay.is_loaded()
    }

    /// The hook: `key` got the live broadcaster `b`.
    fn went_live(&self, key: &str, b: &Broadcaster<T>) {
        let keys = Keys::new(&self.core.prefix, &format!("{}:{key}", self.name));
        let absent = absent_epoch(&keys.state);
        let (hub, owned) = (self.hub.clone(), key.to_owned());
        let id = id_of(b);
        let local = Local::Key(Box::new(move || {
            hub.live(owned.as_str()).filter(|b| id_of(b) == id)
        }));
        let relay = Arc::new(ChannelCore {
            keys,
            local,
            initial: (self.init)(key).encode(),
            absent: Some(absent),
            loaded: AtomicBool::new(false),
            load: tokio::sync::Notify::new(),
            history: self.history,
            once_ttl: self.once_ttl,
            ttl: self.ttl,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
        });
        let erased: Arc<dyn Relay> = relay.clone();
        self.relays
            .lock()
            .insert(key.to_owned(), LiveKey { id, relay, erased });
        self.queue.push(key);
    }

    /// The hook: `b`, live for `key`, left the map.
    fn went_idle(&self, key: &str, b: &Broadcaster<T>) {
        if leave(&mut self.relays.lock(), key, id_of(b)) {
            self.queue.push(key);
        }
    }
}

/// Forgets `key`'s relay if it serves the broadcaster `id`; whether it did.
/// A key parked and brought back while the sweep that parked it was still
/// on its way to the hook has a new relay already: the late call leaves
/// it alone.
fn leave<T>(relays: &mut HashMap<String, LiveKey<T>>, key: &str, id: usize) -> bool {
    if relays.get(key).is_some_and(|l| l.id == id) {
        relays.remove(key);
        return true;
    }
    false
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

    /// The hub's name (see [`Backplane::keyed`]).
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
    /// landed, as [`Channel::publish`](super::Channel::publish). The key
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
    /// [`Channel::publish`](super::Channel::publish).
    ///
    /// # Cancel safety
    ///
    /// As [`Channel::publish`](super::Channel::publish).
    pub async fn publish(&self, key: &str, value: T) -> Result<Published, KeyedError> {
        self.publish_inner(key, None, value).await
    }

    /// [`publish`](Self::publish), safe to retry with the same `id`, as
    /// [`Channel::publish_once`](super::Channel::publish_once).
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
        let reply = run_modify(
            core,
            relay.as_deref().map(|r| r as &dyn Relay),
            &core.publish_script,
            &call,
        )
        .await?;
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
    /// [`Modify::invoke`](super::Modify::invoke).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: usize) -> LiveKey<u64> {
        let relay = Arc::new(ChannelCore {
            keys: Keys::new("p:", "k"),
            local: Local::Key(Box::new(|| None)),
            initial: Vec::new(),
            absent: Some(absent_epoch("p:{k}")),
            loaded: AtomicBool::new(false),
            load: tokio::sync::Notify::new(),
            history: 1,
            once_ttl: Duration::from_secs(1),
            ttl: None,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
        });
        let erased: Arc<dyn Relay> = relay.clone();
        LiveKey { id, relay, erased }
    }

    #[test]
    fn a_late_idle_call_leaves_the_relay_of_a_newer_broadcaster() {
        let mut relays = HashMap::new();
        relays.insert("k".to_owned(), live(1));
        // Parked and back before the sweep's call arrived: a new relay.
        relays.insert("k".to_owned(), live(2));
        assert!(
            !leave(&mut relays, "k", 1),
            "the late call of broadcaster 1"
        );
        assert_eq!(relays["k"].id, 2);
        assert!(leave(&mut relays, "k", 2));
        assert!(relays.is_empty());
        assert!(!leave(&mut relays, "k", 2));
    }

    #[test]
    fn the_absent_epoch_is_the_same_for_a_name_and_differs_between_names() {
        assert_eq!(absent_epoch("p:{a}"), absent_epoch("p:{a}"));
        assert_ne!(absent_epoch("p:{a}"), absent_epoch("p:{b}"));
    }
}

//! Keyed channels: one [`Broadcaster`] per key, created on first use and
//! removed again once idle, and one wait over several keys.
//!
//! A server rarely publishes one thing: it has one stock per product, one
//! feed per chat room. A [`Keyed<K, T>`] maps each key to its own
//! broadcaster, so that a client waits on exactly the topic it shows, and a
//! publish to one room wakes only that room's waiters.
//!
//! ```
//! # tokio_test::block_on(async {
//! use longpoll::keyed::Keyed;
//! use longpoll::Cursor;
//!
//! let rooms: Keyed<String, String> = Keyed::builder().history(100).build();
//! let wait = rooms.wait("lobby", Cursor::NEXT)?; // creates the room
//! rooms.notify("lobby", "hello".to_string())?;
//! let changed = wait.await?;
//! assert_eq!(**changed.value(), "hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Creation and the key limit
//!
//! Every method that names a key creates its broadcaster if it does not
//! exist yet: a client that waits on a room nobody has written to must still
//! hear the first message. A new key starts with the value made by
//! [`KeyedBuilder::init`] (or `T::default()`), with the settings of
//! [`KeyedBuilder::configure`]: history, waiter limit, epoch.
//!
//! Since any client can name a key, the number of keys is capped
//! ([`KeyedBuilder::max_keys`], 100 000 by default). Past the cap, a method
//! that would create a key fails with [`TooManyKeys`] and creates nothing;
//! keys that exist keep working. An HTTP server answers `503`.
//!
//! # Idle cleanup
//!
//! A key is *in use* while someone outside the hub holds its broadcaster: a
//! handle from [`Keyed::broadcaster`], a pending wait or stream, or a
//! registered callback. [`Keyed::sweep`] visits every key and, for each one
//! not in use:
//!
//! 1. *parks* it: the broadcaster (about 200 bytes with its empty waiter
//!    list) is dropped, and only what a cursor needs is kept: the epoch and
//!    the retained updates. The next use builds a broadcaster that
//!    continues the same sequence, so a client's cursor stays valid and
//!    nothing is lost. A parked key with a history of one, a `u64` key and
//!    a `()` value costs about 80 bytes in all, against about 280 live
//!    (`examples/key_memory.rs` measures it);
//! 2. *removes* it once it has gone unused for
//!    [`KeyedBuilder::idle_timeout`], so that memory returns when topics
//!    come and go: churning through a million distinct keys leaves memory
//!    flat. A closed broadcaster is removed at once.
//!
//! Run sweeps from a timer: [`Keyed::sweeper`] is that timer for tokio. A
//! key's idle clock restarts at each sweep that finds it in use or used
//! since the sweep before (the hub handed out its broadcaster: a lookup, a
//! publish, a wait), so a key is removed between `idle_timeout` and
//! `idle_timeout` plus two sweep periods after its last use, never earlier.
//!
//! Removing a key forgets its history. A client that comes back with a
//! cursor from the removed broadcaster is answered at once with
//! [`Resync::OtherEpoch`](crate::Resync::OtherEpoch) by the new one (each
//! new key draws its own epoch): it resynchronises, it does not hang.
//!
//! # Why cleanup cannot strand a waiter
//!
//! The danger of parking or removing idle keys is a waiter left on a
//! broadcaster that is no longer in the map: publishes go to the key's new
//! broadcaster, and the waiter never hears of them. The hub rules this out
//! with one invariant: **a reference to a key's broadcaster is only ever
//! obtained under the lock of the key's shard** (or from one someone
//! already has). A sweep holds that same lock while it decides, and parks
//! or removes a key only if the map's own reference to the broadcaster's
//! shared state is the only one left (`Arc::strong_count == 1`) and its
//! waiter count is 0. Every waiter holds a reference: an
//! [`OwnedWait`], a [`WaitMany`], a [`ChangedStream`], a
//! [`Registration`](crate::Registration), or the [`Broadcaster`] that a
//! [`Wait`](crate::Wait) borrows. So under the lock there are two cases:
//!
//! - the sweep comes first: the key is parked or removed, and the waiter's
//!   lookup, which waits for the lock, installs a new broadcaster that every
//!   later publish reaches;
//! - the lookup comes first: the count is 2, and the sweep keeps the key.
//!
//! A detached callback ([`Registration::detach`](crate::Registration::detach))
//! holds no reference; it is covered by the waiter count, read under the
//! same lock. `tests/keyed_cleanup.rs` races sweeps against waiters on the
//! same keys from many threads and checks that every waiter hears the
//! publish that follows it; the loom models in `loom/tests/keyed.rs` check
//! a sweep against a lookup and a close.
//!
//! Only [`Broadcaster`] values are *handles* (what can publish): the map
//! holds one per live key. Dropping the hub drops those, and a key's
//! broadcaster closes once no handle is left, so a pending [`OwnedWait`]
//! or stream on a key of a dropped hub resolves with
//! [`WaitError::Closed`](crate::WaitError::Closed) rather than waiting
//! forever.
//!
//! # Waiting on several keys
//!
//! [`Keyed::wait_many`] waits on several `(key, cursor)` pairs at once and
//! resolves with every key whose answer is ready, each by the same cursor
//! rules as a single wait: one long poll (or one task) for many topics.
//!
//! # Sharding, and what runs under a lock
//!
//! Keys are spread over [`KeyedBuilder::shards`] maps, each behind its own
//! mutex, so that lookups of different keys rarely contend. A shard's lock
//! is held for one map operation and never while a broadcaster's lock is
//! held (a sweep takes a broadcaster's lock under the shard's, never the
//! other way round).
//!
//! The only user code that runs under a shard lock is the key's `Eq`
//! (`Q: Eq` for the borrowed form a method takes): a hash-map lookup
//! compares the key asked for with the stored keys whose hash matches,
//! under the lock. Keep `Eq` plain (no locks, no calls into the hub).
//! Everything else runs outside every lock of the hub:
//!
//! | user code | runs |
//! |-----------|------|
//! | `Hash` of the key | once per call, before the lock; the hash is stored with the key, so the map never rehashes a key under its lock |
//! | `to_owned` / `Clone` of the key | before the lock, when a key is created or brought back |
//! | [`KeyedBuilder::init`], [`KeyedBuilder::configure`] | before the lock; a panic in them (or in `to_owned`) reaches the caller and loses no place under [`KeyedBuilder::max_keys`] |
//! | `Drop` of a key, a value or a broadcaster | after the lock is released (removal, parking, bringing a key back) |
//! | wakers and callbacks | on the thread that publishes or closes, outside every lock, as for any [`Broadcaster`] |
//!
//! [`ChangedStream`]: crate::ChangedStream

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::sync::Arc;
use crate::wait::WaitState;
use crate::{Broadcaster, ClosedError, Cursor, OwnedWait, Version};

mod builder;
mod hub;
mod wait_many;

pub use builder::KeyedBuilder;
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use hub::Hooks;
use hub::Hub;
use wait_many::OneOfMany;
pub use wait_many::{ReadyKeys, WaitMany};

/// Creating a key would pass [`KeyedBuilder::max_keys`]: nothing was
/// created.
///
/// Keys that exist keep working. Retry once idle keys have been swept, or
/// answer `503` with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many keys (limit {limit})")]
pub struct TooManyKeys {
    /// The configured maximum number of keys.
    pub limit: usize,
}

/// A publish through [`Keyed::notify`] or [`Keyed::modify`] failed: nothing
/// was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyedPublishError {
    /// The key did not exist and the key limit is reached.
    #[error(transparent)]
    TooManyKeys(#[from] TooManyKeys),
    /// The key's broadcaster was closed (by [`Keyed::remove`] or through a
    /// handle). The next call on the key after a sweep gets a new one.
    #[error("broadcaster closed")]
    Closed,
}

impl From<ClosedError> for KeyedPublishError {
    fn from(_: ClosedError) -> Self {
        KeyedPublishError::Closed
    }
}

/// A map from keys to [`Broadcaster`]s: created on first use, removed once
/// idle, capped in number. See the [module documentation](self).
///
/// `Keyed` is a cheap handle: clones share one map.
pub struct Keyed<K, T> {
    shared: Arc<Hub<K, T>>,
}

impl<K, T> Clone for Keyed<K, T> {
    fn clone(&self) -> Self {
        Keyed {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, T> fmt::Debug for Keyed<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("keys", &self.len())
            .field("max_keys", &self.shared.max_keys)
            .field("idle_timeout", &self.shared.idle_timeout)
            .field("shards", &self.shared.shard_count())
            .finish_non_exhaustive()
    }
}

impl<K, T: Default> Default for Keyed<K, T> {
    fn default() -> Self {
        KeyedBuilder::new().build()
    }
}

impl<K, T> Keyed<K, T> {
    /// A [`KeyedBuilder`] with the defaults: at most 100 000 keys, removed
    /// after 60 s idle, a history of one per key.
    pub fn builder() -> KeyedBuilder<K, T> {
        KeyedBuilder::new()
    }

    /// The number of keys now.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hub's metric handles, shared by its keys.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn telemetry(&self) -> &crate::telemetry::Handles {
        &self.shared.telemetry
    }

    /// Records a wait refused for the key limit.
    pub(crate) fn refused(&self, e: &TooManyKeys) {
        let why = crate::telemetry::Refused::TooManyKeys { limit: e.limit };
        crate::telemetry::refused(&self.shared.telemetry, why);
    }

    /// The key limit (see [`KeyedBuilder::max_keys`]).
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys
    }

    /// How long a key stays unused before a sweep removes it (see
    /// [`KeyedBuilder::idle_timeout`]).
    pub fn idle_timeout(&self) -> Duration {
        self.shared.idle_timeout
    }
}

impl<K: Hash + Eq + Clone, T> Keyed<K, T> {
    /// The broadcaster of `key`, creating it if needed.
    ///
    /// While the returned handle (or a clone, or a wait on it) is alive, the
    /// key is in use and no sweep parks or removes it. Drop it when done: a
    /// handle kept forever keeps the key live forever.
    ///
    /// # Errors
    ///
    /// [`TooManyKeys`] if the key does not exist and the limit is reached.
    pub fn broadcaster<Q>(&self, key: &Q) -> Result<Broadcaster<T>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.shared
            .obtain(key, true)
            .map(|b| b.expect("created if missing"))
    }

    /// The broadcaster of `key` if it exists; never creates one.
    pub fn get<Q>(&self, key: &Q) -> Option<Broadcaster<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.shared.obtain(key, false).ok().flatten()
    }

    /// The live broadcaster of `key`, if it has one: never creates, brings
    /// back or marks the key used (for the Redis backplane's relay).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn live<Q>(&self, key: &Q) -> Option<Broadcaster<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.live_one(key)
    }

    /// Whether `key` exists now.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.contains(key)
    }

    /// Publishes `value` to `key` (creating the key if needed), as
    /// [`Broadcaster::notify`].
    ///
    /// # Errors
    ///
    /// [`KeyedPublishError::TooManyKeys`] if the key would be created past
    /// the limit; [`KeyedPublishError::Closed`] if its broadcaster was
    /// closed. Nothing is published in either case.
    pub fn notify<Q>(&self, key: &Q, value: T) -> Result<Version, KeyedPublishError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        Ok(self.broadcaster(key)?.notify(value)?)
    }

    /// Reads `key`'s value and publishes what `f` makes of it, in one step,
    /// as [`Broadcaster::modify`] (creating the key if needed).
    ///
    /// `f` runs under the key's broadcaster lock: it must not call into this
    /// hub or that broadcaster.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify).
    pub fn modify<Q, F>(&self, key: &Q, f: F) -> Result<Option<Version>, KeyedPublishError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: FnOnce(&T) -> Option<T>,
    {
        Ok(self.broadcaster(key)?.modify(f)?)
    }

    /// Waits for a change of `key` after `cursor`, by the rules of
    /// [`Broadcaster::wait`] (creating the key if needed).
    ///
    /// The returned [`OwnedWait`] owns its reference to the key's
    /// broadcaster, so it can be stored or moved to another task; the key
    /// is in use until it completes or is dropped. It is not a handle: if
    /// the hub is dropped (and no one else holds the key's [`Broadcaster`]),
    /// it resolves with [`WaitError::Closed`](crate::WaitError::Closed).
    ///
    /// # Errors
    ///
    /// [`TooManyKeys`] at once, if the key would be created past the limit.
    /// The future resolves with the errors of [`Broadcaster::wait`].
    ///
    /// # Cancel safety
    ///
    /// As [`Broadcaster::wait`]: dropping the future unregisters it in O(1)
    /// and consumes nothing.
    pub fn wait<Q>(&self, key: &Q, cursor: impl Into<Cursor>) -> Result<OwnedWait<T>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let broadcaster = self.broadcaster(key).inspect_err(|e| self.refused(e))?;
        Ok(broadcaster.wait_owned(cursor))
    }

    /// Waits on several `(key, cursor)` pairs at once (creating keys as
    /// needed), and resolves with every key whose answer is ready.
    ///
    /// Each pair follows the [cursor rules](Cursor) of a single wait: a key
    /// whose cursor is behind is ready at once, a key at its current version
    /// waits. When the first key is ready, every other key that is ready at
    /// that moment is included too, in the order given; the answer is never
    /// empty. Keys that were not ready are unregistered. An answer can be
    /// an error for one key ([`WaitError::Closed`](crate::WaitError::Closed), [`WaitError::Full`](crate::WaitError::Full))
    /// while others are changes.
    ///
    /// Each wake-up of the future re-checks every pair, so keep the list to
    /// the topics one client shows (tens, not thousands).
    ///
    /// # Errors
    ///
    /// [`TooManyKeys`] at once, if a key would be created past the limit;
    /// nothing is registered then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future unregisters every pair, in O(1)
    /// each, and consumes nothing. Waiting again with the same cursors sees
    /// everything the dropped wait would have.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use longpoll::keyed::Keyed;
    /// use longpoll::Version;
    ///
    /// let stock: Keyed<String, u32> = Keyed::builder().init(|_| 10).build();
    /// let apples = stock.broadcaster("apples")?.current().cursor();
    /// let pears = stock.broadcaster("pears")?.current().cursor();
    ///
    /// let pairs = [("apples".to_string(), apples), ("pears".to_string(), pears)];
    /// let wait = stock.wait_many(pairs)?;
    /// stock.notify("pears", 9)?;
    /// let ready = wait.await;
    /// assert_eq!(ready.len(), 1);
    /// let (key, answer) = &ready[0];
    /// assert_eq!(key, "pears");
    /// assert_eq!(answer.as_ref().unwrap().version(), Version::new(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn wait_many<I, C>(&self, pairs: I) -> Result<WaitMany<K, T>, TooManyKeys>
    where
        I: IntoIterator<Item = (K, C)>,
        C: Into<Cursor>,
    {
        let pairs = pairs.into_iter();
        let mut waits = Vec::with_capacity(pairs.size_hint().0);
        for (key, cursor) in pairs {
            let broadcaster = self
                .broadcaster::<K>(&key)
                .inspect_err(|e| self.refused(e))?;
            let state = WaitState::new(&broadcaster.shared, cursor.into());
            waits.push(OneOfMany {
                key,
                shared: Arc::clone(&broadcaster.shared),
                state,
                done: false,
            });
        }
        Ok(WaitMany {
            waits,
            finished: false,
        })
    }

    /// Removes `key` now, whatever its use, and closes its broadcaster:
    /// pending waiters on it resolve with [`WaitError::Closed`](crate::WaitError::Closed) (and wait
    /// again, on a new broadcaster). Returns whether the key existed.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.remove(key)
    }

    /// Closes the hub, for graceful shutdown: every live broadcaster is
    /// closed now, so pending waits resolve with [`WaitError::Closed`](crate::WaitError::Closed) and
    /// event streams end; every broadcaster the hub hands out later is
    /// closed too. Returns `false` if it was already closed.
    ///
    /// Keys stay (and keep counting against the limit) until swept.
    pub fn close(&self) -> bool {
        let hub = &*self.shared;
        if hub.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        for live in hub.live() {
            // Outside the shard's lock: closing runs the waiters' callbacks.
            for b in live {
                b.close();
            }
        }
        true
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Parks every key not in use, removes those unused for at least the
    /// idle timeout (and closed ones), and returns how many it removed.
    ///
    /// A key is in use while anything outside the hub refers to its
    /// broadcaster (a handle, a pending wait or stream, a registration) or
    /// a callback is registered on it; see the [module documentation](self) for parking
    /// and for why this cannot race with a new waiter. Costs one pass over
    /// every key, locking one shard at a time; the removed keys and values
    /// are dropped after the shard's lock is released.
    pub fn sweep(&self) -> usize {
        self.shared.sweep()
    }
}

// loom's `Arc` has no `Weak`; the models do not need a timer.
#[cfg(all(feature = "tokio", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<K, T> Keyed<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// A future that calls [`sweep`](Self::sweep) every `period`, for
    /// `tokio::spawn`. It ends once every handle to the hub is dropped.
    ///
    /// A period of half the idle timeout removes a key between one and one
    /// and a half idle timeouts after its last use.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use longpoll::keyed::Keyed;
    /// use std::time::Duration;
    ///
    /// let hub: Keyed<u64, ()> = Keyed::builder().idle_timeout(Duration::from_secs(10)).build();
    /// tokio::spawn(hub.sweeper(Duration::from_secs(5)));
    /// hub.broadcaster(&7).unwrap();
    /// assert_eq!(hub.len(), 1);
    /// tokio::time::sleep(Duration::from_secs(16)).await;
    /// assert_eq!(hub.len(), 0);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn sweeper(
        &self,
        period: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hub: std::sync::Weak<Hub<K, T>> = Arc::downgrade(&self.shared);
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                match hub.upgrade() {
                    Some(shared) => {
                        Keyed { shared }.sweep();
                    }
                    None => return,
                }
            }
        }
    }
}

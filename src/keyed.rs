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
//! with one invariant: **a handle to a key's broadcaster is only ever
//! obtained under the lock of the key's shard** (or by cloning a handle
//! someone already has). A sweep holds that same lock while it decides, and
//! parks or removes a key only if the map's own handle is the only one left
//! (`Arc::strong_count == 1`) and no callback is registered. Every waiter
//! holds a handle (a [`KeyWait`], a [`WaitMany`], a [`UpdateStream`], or the
//! [`Broadcaster`] that a [`Wait`](crate::Wait) borrows), so under the lock
//! there are two cases:
//!
//! - the sweep comes first: the key is parked or removed, and the waiter's
//!   lookup, which waits for the lock, installs a new broadcaster that every
//!   later publish reaches;
//! - the lookup comes first: the count is 2, and the sweep keeps the key.
//!
//! A detached callback ([`Registration::detach`](crate::Registration::detach))
//! holds no handle; it is covered by the waiter count, read under the same
//! lock. `tests/keyed_cleanup.rs` races sweeps against waiters on the same
//! keys from many threads and checks that every waiter hears the publish
//! that follows it.
//!
//! # Waiting on several keys
//!
//! [`Keyed::wait_many`] waits on several `(key, cursor)` pairs at once and
//! resolves with every key whose answer is ready, each by the same cursor
//! rules as a single wait: one long poll (or one task) for many topics.
//!
//! # Sharding
//!
//! Keys are spread over [`KeyedBuilder::shards`] maps, each behind its own
//! mutex, so that lookups of different keys rarely contend. A lookup holds
//! its shard's lock for one hash-map operation and never while a
//! broadcaster's lock is held; user code ([`KeyedBuilder::init`],
//! [`KeyedBuilder::configure`], a value's `Drop`) never runs under a shard
//! lock.
//!
//! [`UpdateStream`]: crate::UpdateStream

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
// tokio's clock when there is one, so that a paused test clock drives both
// the sweeper's timer and the idle times it compares.
#[cfg(not(feature = "tokio"))]
use std::time::Instant;
#[cfg(feature = "tokio")]
use tokio::time::Instant;

use parking_lot::Mutex;

use crate::wait::WaitState;
use crate::{
    Broadcaster, Builder, Changed, ClosedError, Cursor, Epoch, Update, Version, WaitError,
};

const POLLED_AFTER_DONE: &str = "longpoll: keyed wait polled after it completed";

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

type Configure<K> = Box<dyn Fn(&K) -> Builder + Send + Sync>;
type Init<K, T> = Box<dyn Fn(&K) -> T + Send + Sync>;

/// Configures a [`Keyed`] hub: key limit, idle timeout, shards, and the
/// settings and first value of each new key.
///
/// ```
/// use longpoll::keyed::Keyed;
/// use longpoll::Builder;
/// use std::time::Duration;
///
/// let rooms: Keyed<String, Vec<String>> = Keyed::builder()
///     .max_keys(10_000)
///     .idle_timeout(Duration::from_secs(300))
///     .history(50) // every room keeps its last 50 updates ...
///     .configure(|room: &String| {
///         // ... except the announcements, which keep 500
///         let k = if room == "announcements" { 500 } else { 50 };
///         Builder::new().history(k).max_waiters(10_000)
///     })
///     .build();
/// assert_eq!(rooms.broadcaster("announcements")?.history_capacity(), 500);
/// assert_eq!(rooms.broadcaster("lobby")?.history_capacity(), 50);
/// # Ok::<(), longpoll::keyed::TooManyKeys>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedBuilder<K, T> {
    max_keys: usize,
    idle_timeout: Duration,
    shards: Option<usize>,
    configure: Configure<K>,
    init: Option<Init<K, T>>,
    hooks: Option<Hooks<K, T>>,
}

/// What the Redis backplane's keyed hub (`redis::KeyedChannels`) hears of
/// the local hub under it: a key got a live broadcaster (created, or
/// brought back from parked), or its live broadcaster left the map (parked
/// or removed). Both run outside every lock, with the broadcaster in
/// question still alive; the calls for one key may come in either order
/// when threads race, so the listener tells them apart by broadcaster.
pub(crate) struct Hooks<K, T> {
    pub(crate) live: Hook<K, T>,
    pub(crate) idle: Hook<K, T>,
}

/// One of the [`Hooks`].
pub(crate) type Hook<K, T> = Box<dyn Fn(&K, &Broadcaster<T>) + Send + Sync>;

impl<K, T> KeyedBuilder<K, T> {
    fn new() -> Self {
        KeyedBuilder {
            max_keys: 100_000,
            idle_timeout: Duration::from_secs(60),
            shards: None,
            configure: Box::new(|_| Builder::new()),
            init: None,
            hooks: None,
        }
    }

    /// Installs the [`Hooks`].
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn hooks(mut self, hooks: Hooks<K, T>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Refuses to create keys past `n` with [`TooManyKeys`]. Default
    /// 100 000.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// How long a key must have been unused before [`Keyed::sweep`] removes
    /// it. Default 60 seconds; zero removes every unused key at the next
    /// sweep.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Spreads the keys over `n` maps with a lock each (rounded up to a power
    /// of two). Default: four per available CPU, at least 8, at most 256.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn shards(mut self, n: usize) -> Self {
        assert!(n >= 1, "longpoll: a keyed hub needs at least one shard");
        self.shards = Some(n);
        self
    }

    /// Every new key keeps its last `k` updates: shorthand for
    /// [`configure`](Self::configure) with `Builder::new().history(k)`.
    ///
    /// # Panics
    ///
    /// If `k` is 0, as [`Builder::history`].
    pub fn history(self, k: usize) -> Self {
        // Check now rather than at the first key.
        let _ = Builder::new().history(k);
        self.configure(move |_| Builder::new().history(k))
    }

    /// Builds each new key's broadcaster from the [`Builder`] that `f`
    /// returns for it: per-key history, waiter limit or epoch.
    ///
    /// `f` runs outside the hub's locks, and may run for a key that another
    /// thread creates at the same moment (the loser's broadcaster is
    /// dropped unused).
    pub fn configure<F>(mut self, f: F) -> Self
    where
        F: Fn(&K) -> Builder + Send + Sync + 'static,
    {
        self.configure = Box::new(f);
        self
    }

    /// Makes the first value of each new key (default: `T::default()`).
    ///
    /// Runs outside the hub's locks, like [`configure`](Self::configure).
    pub fn init<F>(mut self, f: F) -> Self
    where
        F: Fn(&K) -> T + Send + Sync + 'static,
    {
        self.init = Some(Box::new(f));
        self
    }

    /// Builds the hub with the values of [`init`](Self::init).
    ///
    /// # Panics
    ///
    /// If no [`init`](Self::init) was given: use
    /// [`build`](Self::build) for a `T: Default`.
    pub fn build_with_init(self) -> Keyed<K, T> {
        let init = self
            .init
            .expect("longpoll: `build_with_init` needs `KeyedBuilder::init`");
        Self::assemble(
            self.max_keys,
            self.idle_timeout,
            self.shards,
            self.configure,
            init,
            self.hooks,
        )
    }

    fn assemble(
        max_keys: usize,
        idle_timeout: Duration,
        shards: Option<usize>,
        configure: Configure<K>,
        init: Init<K, T>,
        hooks: Option<Hooks<K, T>>,
    ) -> Keyed<K, T> {
        let n = shards
            .unwrap_or_else(|| {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cpus * 4).clamp(8, 256)
            })
            .next_power_of_two();
        let shards = (0..n).map(|_| Mutex::new(HashMap::new())).collect();
        Keyed {
            shared: Arc::new(Hub {
                shards,
                mask: n - 1,
                hasher: RandomState::new(),
                len: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                max_keys,
                idle_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
                idle_timeout,
                start: Instant::now(),
                configure,
                init,
                hooks,
            }),
        }
    }
}

impl<K, T: Default> KeyedBuilder<K, T> {
    /// Builds the hub. New keys start with [`init`](Self::init)'s value if
    /// one was given, otherwise with `T::default()`.
    pub fn build(mut self) -> Keyed<K, T> {
        let init = self
            .init
            .take()
            .unwrap_or_else(|| Box::new(|_: &K| T::default()));
        Self::assemble(
            self.max_keys,
            self.idle_timeout,
            self.shards,
            self.configure,
            init,
            self.hooks,
        )
    }
}

impl<K, T> fmt::Debug for KeyedBuilder<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// A map from keys to [`Broadcaster`]s: created on first use, removed once
/// idle, capped in number. See the [module documentation](self).
///
/// `Keyed` is a cheap handle: clones share one map.
pub struct Keyed<K, T> {
    shared: Arc<Hub<K, T>>,
}

struct Hub<K, T> {
    shards: Box<[Shard<K, T>]>,
    /// `shards.len() - 1`; the length is a power of two.
    mask: usize,
    /// Picks the shard. Each shard's map hashes again with its own state.
    hasher: RandomState,
    /// Keys in all shards. Raised before a key is inserted, so that the
    /// limit holds exactly even when shards insert concurrently.
    len: AtomicUsize,
    /// Set by [`Keyed::close`]: every broadcaster made live after it is
    /// closed before anyone sees it.
    closed: AtomicBool,
    max_keys: usize,
    idle_timeout: Duration,
    idle_ms: u64,
    /// The zero of [`Entry::touched`].
    start: Instant,
    configure: Configure<K>,
    init: Init<K, T>,
    hooks: Option<Hooks<K, T>>,
}

/// One lock's share of the keys.
type Shard<K, T> = Mutex<HashMap<K, Entry<T>>>;

/// One key's slot, and when it was last known to be in use.
struct Entry<T> {
    slot: Slot<T>,
    /// Low 63 bits: when a sweep last found the key in use or used, in
    /// milliseconds after [`Hub::start`] (or when the key was created).
    /// Top bit ([`USED`]): whether the hub handed out the key's broadcaster
    /// since the last sweep. A flag rather than a timestamp, so that a
    /// lookup costs no clock read; packed, so that an idle key costs 8
    /// bytes less.
    touched: u64,
}

/// The "used since the last sweep" bit of [`Entry::touched`].
const USED: u64 = 1 << 63;

/// A key's state: a live broadcaster, or only what its cursors need.
enum Slot<T> {
    Live(Broadcaster<T>),
    /// Not in use at the last sweep: the retained updates, oldest first
    /// (never empty). The next use builds a broadcaster that continues them.
    Parked(Box<[Update<T>]>),
}

/// The newest update of a parked key: which parked state a broadcaster
/// built from it continues.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Tip(Epoch, Version);

impl Tip {
    fn of<T>(retained: &[Update<T>]) -> Self {
        let last = retained
            .last()
            .expect("a parked key keeps its current value");
        Tip(last.epoch(), last.version())
    }
}

impl<K, T> Hub<K, T> {
    /// Milliseconds since the hub was built (below [`USED`]: 2^63 ms is
    /// 292 million years).
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).map_or(USED - 1, |ms| ms.min(USED - 1))
    }

    /// Closes `b` (new, without waiters) if the hub is closed. Called under
    /// the shard lock that installs `b`: [`Keyed::close`] sets the flag
    /// before it takes each shard's lock, so a broadcaster installed after
    /// close visited its shard sees the flag, and one installed before is
    /// closed by close itself.
    fn close_if_closed(&self, b: &Broadcaster<T>) {
        if self.closed.load(Ordering::SeqCst) {
            b.close();
        }
    }

    /// Tells the hooks that `key` got the live broadcaster `b`.
    fn went_live<Q>(&self, key: &Q, b: &Broadcaster<T>)
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        if let Some(hooks) = &self.hooks {
            (hooks.live)(&key.to_owned(), b);
        }
    }

    /// Tells the hooks that `b`, live for `key`, left the map.
    fn went_idle(&self, key: &K, b: &Broadcaster<T>) {
        if let Some(hooks) = &self.hooks {
            (hooks.idle)(key, b);
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, T> {
        // The top bits: the low ones also pick the bucket inside the shard.
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 32) as usize & self.mask]
    }
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
            .field("shards", &self.shared.shards.len())
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
        self.obtain(key, true)
            .map(|b| b.expect("created if missing"))
    }

    /// The broadcaster of `key` if it exists; never creates one.
    pub fn get<Q>(&self, key: &Q) -> Option<Broadcaster<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.obtain(key, false).ok().flatten()
    }

    /// Hands out a handle to `key`'s live broadcaster: brings a parked key
    /// back, or creates a missing one if `create`. User code (`configure`,
    /// `init`) and the building of a broadcaster run outside the shard lock;
    /// the handle itself is cloned under it (see "Why cleanup cannot strand
    /// a waiter").
    fn obtain<Q>(&self, key: &Q, create: bool) -> Result<Option<Broadcaster<T>>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let hub = &*self.shared;
        let shard = hub.shard(key);
        // A broadcaster built outside the lock, and the tip of the parked
        // history it continues (`None`: a new key).
        let mut built: Option<(Broadcaster<T>, Option<Tip>)> = None;
        // Whether we hold one place under the key limit.
        let mut reserved = false;
        let release = |reserved: bool| {
            if reserved {
                hub.len.fetch_sub(1, Ordering::Relaxed);
            }
        };
        loop {
            let mut map = shard.lock();
            match map.get_mut(key) {
                Some(entry) => {
                    entry.touched |= USED;
                    match &entry.slot {
                        Slot::Live(b) => {
                            let b = b.clone();
                            drop(map);
                            release(reserved);
                            return Ok(Some(b));
                        }
                        Slot::Parked(retained) => {
                            let tip = Tip::of(retained);
                            if let Some((b, Some(t))) = &built {
                                if *t == tip {
                                    let b = b.clone();
                                    hub.close_if_closed(&b);
                                    entry.slot = Slot::Live(b.clone());
                                    drop(map);
                                    release(reserved);
                                    hub.went_live(key, &b);
                                    return Ok(Some(b));
                                }
                            }
                            let retained = retained.to_vec();
                            drop(map);
                            let owned = key.to_owned();
                            let b = (hub.configure)(&owned).build_from(retained);
                            built = Some((b, Some(tip)));
                        }
                    }
                }
                None => {
                    if !create {
                        drop(map);
                        release(reserved);
                        return Ok(None);
                    }
                    if let Some((b, None)) = &built {
                        let b = b.clone();
                        hub.close_if_closed(&b);
                        map.insert(
                            key.to_owned(),
                            Entry {
                                slot: Slot::Live(b.clone()),
                                touched: hub.now(),
                            },
                        );
                        drop(map);
                        // The place reserved below is now taken by the key.
                        hub.went_live(key, &b);
                        return Ok(Some(b));
                    }
                    drop(map);
                    // Reserve a place under the limit before building: the
                    // limit then holds exactly, whatever other shards do.
                    if !reserved {
                        if hub.len.fetch_add(1, Ordering::Relaxed) >= hub.max_keys {
                            hub.len.fetch_sub(1, Ordering::Relaxed);
                            return Err(TooManyKeys {
                                limit: hub.max_keys,
                            });
                        }
                        reserved = true;
                    }
                    let owned = key.to_owned();
                    let b = (hub.configure)(&owned).build((hub.init)(&owned));
                    built = Some((b, None));
                }
            }
        }
    }

    /// The live broadcaster of `key`, if it has one: never creates, brings
    /// back or marks the key used.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn live<Q>(&self, key: &Q) -> Option<Broadcaster<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.shared.shard(key).lock();
        match map.get(key).map(|e| &e.slot) {
            Some(Slot::Live(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Whether `key` exists now.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.shard(key).lock().contains_key(key)
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
    /// The returned future owns its handle, so it can be stored or moved to
    /// another task; the key is in use until it completes or is dropped.
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
    pub fn wait<Q>(&self, key: &Q, cursor: impl Into<Cursor>) -> Result<KeyWait<T>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let broadcaster = self.broadcaster(key)?;
        let state = WaitState::new(&broadcaster.shared, cursor.into());
        Ok(KeyWait {
            broadcaster,
            state,
            done: false,
        })
    }

    /// Waits on several `(key, cursor)` pairs at once (creating keys as
    /// needed), and resolves with every key whose answer is ready.
    ///
    /// Each pair follows the [cursor rules](Cursor) of a single wait: a key
    /// whose cursor is behind is ready at once, a key at its current version
    /// waits. When the first key is ready, every other key that is ready at
    /// that moment is included too, in the order given; the answer is never
    /// empty. Keys that were not ready are unregistered. An answer can be
    /// an error for one key ([`WaitError::Closed`], [`WaitError::Full`])
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
            let broadcaster = self.broadcaster_owned(key.clone())?;
            let state = WaitState::new(&broadcaster.shared, cursor.into());
            waits.push(OneOfMany {
                key,
                broadcaster,
                state,
                done: false,
            });
        }
        Ok(WaitMany {
            waits,
            finished: false,
        })
    }

    fn broadcaster_owned(&self, key: K) -> Result<Broadcaster<T>, TooManyKeys> {
        self.broadcaster::<K>(&key)
    }

    /// Removes `key` now, whatever its use, and closes its broadcaster:
    /// pending waiters on it resolve with [`WaitError::Closed`] (and wait
    /// again, on a new broadcaster). Returns whether the key existed.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.shared.shard(key).lock().remove_entry(key);
        match removed {
            Some((key, entry)) => {
                self.shared.len.fetch_sub(1, Ordering::Relaxed);
                if let Slot::Live(b) = &entry.slot {
                    b.close();
                    self.shared.went_idle(&key, b);
                }
                drop((key, entry));
                true
            }
            None => false,
        }
    }

    /// Closes the hub, for graceful shutdown: every live broadcaster is
    /// closed now, so pending waits resolve with [`WaitError::Closed`] and
    /// event streams end; every broadcaster the hub hands out later is
    /// closed too. Returns `false` if it was already closed.
    ///
    /// Keys stay (and keep counting against the limit) until swept.
    pub fn close(&self) -> bool {
        let hub = &*self.shared;
        if hub.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        for shard in hub.shards.iter() {
            let live: Vec<Broadcaster<T>> = shard
                .lock()
                .values()
                .filter_map(|e| match &e.slot {
                    Slot::Live(b) => Some(b.clone()),
                    Slot::Parked(_) => None,
                })
                .collect();
            // Outside the lock: closing runs the waiters' callbacks.
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
    /// A key is in use while any handle to its broadcaster exists outside
    /// the hub (including pending waits and streams) or a callback is
    /// registered on it; see the [module documentation](self) for parking
    /// and for why this cannot race with a new waiter. Costs one pass over
    /// every key, locking one shard at a time; the removed keys and values
    /// are dropped after the shard's lock is released.
    pub fn sweep(&self) -> usize {
        let hub = &*self.shared;
        let mut removed = 0;
        let mut garbage: Vec<(K, Entry<T>)> = Vec::new();
        let mut parked: Vec<(K, Broadcaster<T>)> = Vec::new();
        for shard in hub.shards.iter() {
            let now = hub.now();
            let mut map = shard.lock();
            garbage.extend(map.extract_if(|key, entry| {
                if entry.touched & USED != 0 {
                    entry.touched = now;
                }
                let idle = now.saturating_sub(entry.touched) >= hub.idle_ms;
                let Slot::Live(b) = &entry.slot else {
                    return idle;
                };
                // Only the map holds it: nobody can be inside its lock, and
                // nobody can get a new handle while we hold the shard lock.
                if Arc::strong_count(&b.shared) > 1 || b.waiter_count() > 0 {
                    entry.touched = now;
                    return false;
                }
                if idle || b.is_closed() {
                    return true;
                }
                // Unused but not idle long enough: keep only what a cursor
                // needs (epoch, versions, retained values).
                let retained = Slot::Parked(b.history().into_boxed_slice());
                if let Slot::Live(b) = std::mem::replace(&mut entry.slot, retained) {
                    if hub.hooks.is_some() {
                        parked.push((key.clone(), b));
                    }
                }
                false
            }));
            // Give memory back once most of a shard's keys are gone.
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                let keep = 2 * map.len();
                map.shrink_to(keep);
            }
            drop(map);
            removed += garbage.len();
            hub.len.fetch_sub(garbage.len(), Ordering::Relaxed);
            for (key, b) in &parked {
                hub.went_idle(key, b);
            }
            for (key, entry) in &garbage {
                if let Slot::Live(b) = &entry.slot {
                    hub.went_idle(key, b);
                }
            }
            parked.clear();
            garbage.clear();
        }
        removed
    }
}

#[cfg(feature = "tokio")]
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
    pub fn sweeper(&self, period: Duration) -> impl Future<Output = ()> + Send + 'static {
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

/// Future returned by [`Keyed::wait`]: a [`Broadcaster::wait`] that owns
/// its handle.
///
/// # Cancel safety
///
/// Dropping it unregisters it at once, in O(1); nothing is consumed.
#[must_use = "futures do nothing unless polled"]
pub struct KeyWait<T> {
    broadcaster: Broadcaster<T>,
    state: WaitState,
    done: bool,
}

impl<T> KeyWait<T> {
    /// The broadcaster this future waits on.
    pub fn broadcaster(&self) -> &Broadcaster<T> {
        &self.broadcaster
    }
}

impl<T> Future for KeyWait<T> {
    type Output = Result<Changed<T>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.done, "{}", POLLED_AFTER_DONE);
        let r = this.state.poll(&this.broadcaster.shared, cx);
        this.done = r.is_ready();
        r
    }
}

impl<T> Drop for KeyWait<T> {
    fn drop(&mut self) {
        self.state.cancel(&self.broadcaster.shared);
    }
}

impl<T> fmt::Debug for KeyWait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyWait")
            .field("since", &self.state.since())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

struct OneOfMany<K, T> {
    key: K,
    broadcaster: Broadcaster<T>,
    state: WaitState,
    done: bool,
}

/// Future returned by [`Keyed::wait_many`]: resolves with every key whose
/// answer is ready, in the order the pairs were given; never empty.
///
/// # Cancel safety
///
/// Dropping it unregisters every pair at once; nothing is consumed.
#[must_use = "futures do nothing unless polled"]
pub struct WaitMany<K, T> {
    waits: Vec<OneOfMany<K, T>>,
    finished: bool,
}

// Nothing in it is pinned: the keys and states move freely.
impl<K, T> Unpin for WaitMany<K, T> {}

/// What [`WaitMany`] resolves to: each ready key with its answer.
pub type ReadyKeys<K, T> = Vec<(K, Result<Changed<T>, WaitError>)>;

impl<K, T> WaitMany<K, T> {
    /// How many `(key, cursor)` pairs this wait covers.
    pub fn len(&self) -> usize {
        self.waits.len()
    }

    /// Whether it covers no pair: such a wait never resolves.
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }
}

impl<K: Clone, T> Future for WaitMany<K, T> {
    type Output = ReadyKeys<K, T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.finished, "{}", POLLED_AFTER_DONE);
        let mut ready = Vec::new();
        // Poll every pair, even after one is ready: each that is not ready
        // registers (or refreshes) this task's waker, and each that is ready
        // joins the answer.
        for w in &mut this.waits {
            let OneOfMany {
                key,
                broadcaster,
                state,
                done,
            } = w;
            if let Poll::Ready(r) = state.poll(&broadcaster.shared, cx) {
                *done = true;
                ready.push((key.clone(), r));
            }
        }
        if ready.is_empty() {
            return Poll::Pending;
        }
        this.finished = true;
        // Unregister the rest now rather than when the future is dropped.
        for w in &mut this.waits {
            if !w.done {
                w.done = true;
                w.state.cancel(&w.broadcaster.shared);
            }
        }
        Poll::Ready(ready)
    }
}

impl<K, T> Drop for WaitMany<K, T> {
    fn drop(&mut self) {
        for w in &mut self.waits {
            w.state.cancel(&w.broadcaster.shared);
        }
    }
}

impl<K: fmt::Debug, T> fmt::Debug for WaitMany<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitMany")
            .field(
                "keys",
                &self.waits.iter().map(|w| &w.key).collect::<Vec<_>>(),
            )
            .field("finished", &self.finished)
            .finish()
    }
}

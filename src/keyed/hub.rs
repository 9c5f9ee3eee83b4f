//! The keyed hub's map: shards of entries, each a live broadcaster or a
//! parked history; how a handle is obtained, and how a sweep parks and
//! removes idle keys.
//!
//! # What runs under a shard lock
//!
//! Only a lookup's `Eq` (the `Q: Eq` of the borrowed key, comparing the
//! key asked for with the stored keys whose hash matches) and our own code.
//! A key is hashed once, before the lock, and its hash is stored in its
//! entry, so that the map's growth and shrinking never hash again; keys are
//! cloned (`to_owned`) before the lock; `init` and `configure` run before
//! it; every entry, key, broadcaster and value that leaves the map is
//! dropped after it.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::time::Duration;
// tokio's clock when there is one, so that a paused test clock drives both
// the sweeper's timer and the idle times it compares.
#[cfg(not(feature = "tokio"))]
use std::time::Instant;
#[cfg(feature = "tokio")]
use tokio::time::Instant;

use hashbrown::HashTable;

use super::builder::{Configure, Init};
use super::TooManyKeys;
use crate::sync::{AtomicBool, AtomicUsize, Mutex};
use crate::{Broadcaster, Epoch, Update, Version};

pub(crate) struct Hub<K, T> {
    shards: Box<[Shard<K, T>]>,
    /// `shards.len() - 1`; the length is a power of two.
    mask: usize,
    /// Hashes every key once, before any lock: its top bits pick the
    /// shard, and the whole hash is stored in the entry.
    hasher: RandomState,
    /// Keys in all shards. Raised before a key is inserted, so that the
    /// limit holds exactly even when shards insert concurrently.
    pub(crate) len: AtomicUsize,
    /// Set by [`Keyed::close`](super::Keyed::close): every broadcaster made
    /// live after it is closed before anyone sees it.
    pub(crate) closed: AtomicBool,
    pub(crate) max_keys: usize,
    pub(crate) idle_timeout: Duration,
    idle_ms: u64,
    /// The zero of [`Entry::touched`].
    start: Instant,
    configure: Configure<K>,
    init: Init<K, T>,
    /// Told when a key gets or loses its live broadcaster (the Redis
    /// backplane's keyed hub listens); `None` for a plain hub.
    hooks: Option<Hooks<K, T>>,
    /// Metric handles shared by every key's broadcaster, registered once.
    pub(crate) telemetry: crate::telemetry::Handles,
}

/// What the Redis backplane's keyed hub (`redis::KeyedChannels`) hears of
/// the local hub under it: a key got a live broadcaster (created, or
/// brought back from parked), or its live broadcaster left the map (parked
/// or removed). Both run outside every lock of the hub, while the
/// broadcaster in question is still alive; when threads race, the calls
/// for one key may come in either order, so the listener tells them apart
/// by broadcaster.
pub(crate) struct Hooks<K, T> {
    pub(crate) live: Hook<K, T>,
    pub(crate) idle: Hook<K, T>,
}

/// One of the [`Hooks`].
pub(crate) type Hook<K, T> = Box<dyn Fn(&K, &Broadcaster<T>) + Send + Sync>;

/// One lock's share of the keys.
type Shard<K, T> = Mutex<HashTable<Entry<K, T>>>;

/// One key: its hash, its slot, and when it was last known to be in use.
struct Entry<K, T> {
    /// `Hub::hasher`'s hash of the key, so that the table never hashes a
    /// key again (under the lock).
    hash: u64,
    key: K,
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

/// A broadcaster built outside the lock for `key`, continuing the parked
/// history whose tip is `tip` (`None`: a new key).
struct Built<K, T> {
    key: K,
    broadcaster: Broadcaster<T>,
    tip: Option<Tip>,
    /// The hooks' own copy of a new key's name (made with it, outside the
    /// lock): the map takes `key`.
    told: Option<K>,
}

/// One place taken under the key limit, given back when dropped (a panic
/// of `to_owned`, `init` or `configure` unwinds through it) unless a new
/// key took it.
struct Reservation<'a>(&'a AtomicUsize);

impl<'a> Reservation<'a> {
    fn take(len: &'a AtomicUsize, max: usize) -> Result<Self, TooManyKeys> {
        if len.fetch_add(1, Ordering::Relaxed) >= max {
            len.fetch_sub(1, Ordering::Relaxed);
            return Err(TooManyKeys { limit: max });
        }
        Ok(Reservation(len))
    }

    /// The place now belongs to a key in the map.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<K, T> Hub<K, T> {
    pub(crate) fn new(
        max_keys: usize,
        idle_timeout: Duration,
        shards: usize,
        configure: Configure<K>,
        init: Init<K, T>,
        hooks: Option<Hooks<K, T>>,
    ) -> Self {
        let n = shards.next_power_of_two();
        Hub {
            shards: (0..n).map(|_| Mutex::new(HashTable::new())).collect(),
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
            telemetry: crate::telemetry::Handles::new(),
        }
    }

    /// Tells the hooks that `key` got the live broadcaster `b`.
    fn went_live(&self, key: &K, b: &Broadcaster<T>) {
        if let Some(hooks) = &self.hooks {
            (hooks.live)(key, b);
        }
    }

    /// Tells the hooks that `b`, live for `key`, left the map.
    fn went_idle(&self, key: &K, b: &Broadcaster<T>) {
        if let Some(hooks) = &self.hooks {
            (hooks.idle)(key, b);
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Milliseconds since the hub was built (below [`USED`]: 2^63 ms is
    /// 292 million years).
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).map_or(USED - 1, |ms| ms.min(USED - 1))
    }

    /// Closes `b` (new, without waiters) if the hub is closed. Called under
    /// the shard lock that installs `b`: [`Keyed::close`](super::Keyed::close)
    /// sets the flag before it takes each shard's lock, so a broadcaster
    /// installed after close visited its shard sees the flag, and one
    /// installed before is closed by close itself.
    fn close_if_closed(&self, b: &Broadcaster<T>) {
        if self.closed.load(Ordering::SeqCst) {
            b.close();
        }
    }

    /// The key's hash (the key's `Hash` runs here, outside every lock) and
    /// its shard.
    fn locate<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, &Shard<K, T>) {
        let hash = self.hasher.hash_one(key);
        // The top bits: hashbrown uses the low ones for the bucket and the
        // top seven for its tags, below these.
        (hash, &self.shards[(hash >> 32) as usize & self.mask])
    }

    /// The live broadcaster of `key`, if it has one: never creates, brings
    /// back or marks the key used.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn live_one<Q>(&self, key: &Q) -> Option<Broadcaster<T>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        let map = shard.lock();
        match map.find(hash, |e| e.key.borrow() == key).map(|e| &e.slot) {
            Some(Slot::Live(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Every live broadcaster, one shard at a time.
    pub(crate) fn live(&self) -> impl Iterator<Item = Vec<Broadcaster<T>>> + '_ {
        self.shards.iter().map(|shard| {
            shard
                .lock()
                .iter()
                .filter_map(|e| match &e.slot {
                    Slot::Live(b) => Some(b.clone()),
                    Slot::Parked(_) => None,
                })
                .collect()
        })
    }
}

impl<K: Eq, T> Hub<K, T> {
    /// Whether `key` exists now.
    pub(crate) fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        let found = shard.lock().find(hash, |e| e.key.borrow() == key).is_some();
        found
    }

    /// Takes `key` out of the map; the caller drops it, outside the lock.
    fn take_out<Q>(&self, key: &Q) -> Option<(K, Slot<T>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        let mut map = shard.lock();
        let entry = map
            .find_entry(hash, |e| e.key.borrow() == key)
            .ok()
            .map(|e| e.remove().0);
        drop(map);
        let entry = entry?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some((entry.key, entry.slot))
    }

    /// Removes `key` and closes its live broadcaster; whether it existed.
    pub(crate) fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.take_out(key) {
            Some((key, slot)) => {
                if let Slot::Live(b) = &slot {
                    b.close();
                    self.went_idle(&key, b);
                }
                drop((key, slot));
                true
            }
            None => false,
        }
    }

    /// Hands out a handle to `key`'s live broadcaster: brings a parked key
    /// back, or creates a missing one if `create`. User code (`Hash`,
    /// `to_owned`, `configure`, `init`) and the building of a broadcaster
    /// run outside the shard lock; the handle itself is cloned under it
    /// (see "Why cleanup cannot strand a waiter" in the module docs).
    pub(crate) fn obtain<Q>(
        &self,
        key: &Q,
        create: bool,
    ) -> Result<Option<Broadcaster<T>>, TooManyKeys>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        // Declared before the lock is, so dropped after it is released.
        let mut built: Option<Built<K, T>> = None;
        let mut reserved: Option<Reservation<'_>> = None;
        loop {
            let mut map = shard.lock();
            match map.find_mut(hash, |e| e.key.borrow() == key) {
                Some(entry) => {
                    entry.touched |= USED;
                    match &entry.slot {
                        Slot::Live(b) => return Ok(Some(b.clone())),
                        Slot::Parked(retained) => {
                            let tip = Tip::of(retained);
                            if let Some(Built { tip: Some(t), .. }) = &built {
                                if *t == tip {
                                    let Built {
                                        key: owned,
                                        broadcaster: b,
                                        ..
                                    } = built.take().expect("checked");
                                    self.close_if_closed(&b);
                                    let parked =
                                        std::mem::replace(&mut entry.slot, Slot::Live(b.clone()));
                                    drop(map);
                                    self.went_live(&owned, &b);
                                    drop((owned, parked));
                                    return Ok(Some(b));
                                }
                            }
                            let retained = retained.to_vec();
                            drop(map);
                            drop(built.take());
                            let owned = key.to_owned();
                            let broadcaster = (self.configure)(&owned)
                                .build_from_in(retained, self.telemetry.clone());
                            built = Some(Built {
                                key: owned,
                                broadcaster,
                                tip: Some(tip),
                                told: None,
                            });
                        }
                    }
                }
                None => {
                    if !create {
                        return Ok(None);
                    }
                    if let Some(Built { tip: None, .. }) = &built {
                        let Built {
                            key: owned,
                            broadcaster: b,
                            told,
                            ..
                        } = built.take().expect("checked");
                        self.close_if_closed(&b);
                        let entry = Entry {
                            hash,
                            key: owned,
                            slot: Slot::Live(b.clone()),
                            touched: self.now(),
                        };
                        // Growth rehashes with the stored hashes.
                        map.insert_unique(hash, entry, |e| e.hash);
                        // The place reserved below is now taken by the key.
                        if let Some(r) = reserved.take() {
                            r.keep();
                        }
                        drop(map);
                        if let Some(told) = told {
                            self.went_live(&told, &b);
                        }
                        return Ok(Some(b));
                    }
                    drop(map);
                    // Reserve a place under the limit before building: the
                    // limit then holds exactly, whatever other shards do,
                    // and a panic below gives the place back.
                    if reserved.is_none() {
                        reserved = Some(Reservation::take(&self.len, self.max_keys)?);
                    }
                    drop(built.take());
                    let owned = key.to_owned();
                    let broadcaster = (self.configure)(&owned)
                        .build_in((self.init)(&owned), self.telemetry.clone());
                    built = Some(Built {
                        told: self.hooks.as_ref().map(|_| key.to_owned()),
                        key: owned,
                        broadcaster,
                        tip: None,
                    });
                }
            }
        }
    }

    /// Parks every key not in use, removes those unused for at least the
    /// idle timeout (and closed ones), and returns how many it removed.
    pub(crate) fn sweep(&self) -> usize
    where
        K: Clone,
    {
        let mut removed = 0;
        let mut garbage: Vec<Entry<K, T>> = Vec::new();
        // The parked broadcasters, with their key if the hooks want it.
        let mut retired: Vec<(Option<K>, Broadcaster<T>)> = Vec::new();
        let hooked = self.hooks.is_some();
        for shard in self.shards.iter() {
            let now = self.now();
            let mut map = shard.lock();
            garbage.extend(map.extract_if(|entry| {
                if entry.touched & USED != 0 {
                    entry.touched = now;
                }
                let idle = now.saturating_sub(entry.touched) >= self.idle_ms;
                let Slot::Live(b) = &entry.slot else {
                    return idle;
                };
                // Only the map holds it: nobody can be inside its lock, and
                // nobody can get a new handle while we hold the shard lock.
                // Streams, owned waits and registrations hold the shared
                // state too, so they count here; detached callbacks are
                // seen in the waiter count.
                if crate::sync::Arc::strong_count(&b.shared) > 1 || b.waiter_count() > 0 {
                    entry.touched = now;
                    return false;
                }
                if idle || b.is_closed() {
                    return true;
                }
                // Unused but not idle long enough: keep only what a cursor
                // needs (epoch, versions, retained values). The broadcaster
                // is dropped after the lock is released.
                // (With hooks, the key is cloned here, under the lock: hooks
                // are crate-internal, on `String` keys only.)
                let parked = Slot::Parked(b.history().into_boxed_slice());
                if let Slot::Live(b) = std::mem::replace(&mut entry.slot, parked) {
                    retired.push((hooked.then(|| entry.key.clone()), b));
                }
                false
            }));
            // Give memory back once most of a shard's keys are gone.
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                let keep = 2 * map.len();
                map.shrink_to(keep, |e| e.hash);
            }
            drop(map);
            removed += garbage.len();
            self.len.fetch_sub(garbage.len(), Ordering::Relaxed);
            if hooked {
                for (key, b) in &retired {
                    if let Some(key) = key {
                        self.went_idle(key, b);
                    }
                }
                for entry in &garbage {
                    if let Slot::Live(b) = &entry.slot {
                        self.went_idle(&entry.key, b);
                    }
                }
            }
            garbage.clear();
            retired.clear();
        }
        removed
    }
}

//! [`Channel`]: opening a channel, publishing, and relaying what Redis
//! sends to the local broadcaster (in order, each version once).

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::backplane::{Backplane, Core};
use super::commands::ScriptCall;
use super::error::{BackplaneError, Kind};
use super::keys::{parse_modify, Keys, ModifyReply, Outcome, Snapshot};
use super::modify::{Modify, ModifyScript};
use super::{Codec, DecodeError};
use crate::{Broadcaster, Epoch, Update, Version};

/// How many abandoned epochs a channel remembers: late messages from them
/// are ignored, and Redis found holding one of them is behind.
const RETIRED_EPOCHS: usize = 8;

/// How far ahead of this instance a client's cursor may be and still wait
/// here for the version it names (see [`Channel::broadcaster`]).
const HOLD_AHEAD: u8 = u8::MAX;

/// How long an idempotency key is remembered by default.
pub(super) const ONCE_TTL: Duration = Duration::from_secs(60);

/// Configures a [`Channel`] before opening it.
#[derive(Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct ChannelBuilder<'a> {
    pub(super) backplane: &'a Backplane,
    pub(super) name: String,
    pub(super) history: usize,
    pub(super) max_waiters: Option<usize>,
    pub(super) once_ttl: Duration,
    pub(super) ttl: Option<Duration>,
}

impl ChannelBuilder<'_> {
    /// Keeps the last `k` updates in each instance's broadcaster (default 1:
    /// latest-value semantics; see [`Builder::history`](crate::Builder::history)),
    /// and asks Redis to keep at least `k`.
    ///
    /// With `k > 1`, a client up to `k` versions behind receives every
    /// update it missed, on any instance, also on one opened after the
    /// updates were published; an instance that lost its subscription
    /// relays every update it missed meanwhile (up to `k`), in order.
    ///
    /// The list in Redis belongs to the channel: it keeps the largest `k`
    /// any instance opened the channel with, whichever instance publishes.
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

    /// How long Redis remembers the idempotency key of a
    /// [`publish_once`](Channel::publish_once) or [`Modify::once`] (default
    /// 60 s): a retry within that time publishes nothing new.
    ///
    /// # Panics
    ///
    /// If `ttl` is under a millisecond.
    pub fn remember_publishes(mut self, ttl: Duration) -> Self {
        assert!(
            ttl >= Duration::from_millis(1),
            "longpoll: idempotency keys are kept for at least 1 ms"
        );
        self.once_ttl = ttl;
        self
    }

    /// Lets Redis forget the channel once nobody published for `ttl`
    /// (default: never). Every publish sets the time to live again, on any
    /// instance (give every instance the same `ttl`).
    ///
    /// A channel that expired starts again, like one whose data Redis lost
    /// (see [the module docs](super#recovery)): under a new
    /// [`Epoch`](crate::Epoch), from its initial value, so that a client
    /// holding a cursor of the old sequence is told
    /// ([`Resync::OtherEpoch`](crate::Resync::OtherEpoch)) rather than left
    /// waiting on it.
    ///
    /// # Panics
    ///
    /// If `ttl` is under a millisecond.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        assert!(
            ttl >= Duration::from_millis(1),
            "longpoll: a channel's time to live is at least 1 ms"
        );
        self.ttl = Some(ttl);
        self
    }

    /// Joins the channel: reads its state and retained history from Redis,
    /// creating it with `initial` at version 0 under a new epoch if it does
    /// not exist, and subscribes to its changes.
    ///
    /// `initial` is also the value the channel starts again from if Redis
    /// loses it. Opening a name that this backplane already opened returns
    /// the same channel (with the settings it was first opened with).
    ///
    /// # Errors
    ///
    /// [`is_unavailable`](BackplaneError::is_unavailable) if Redis does not
    /// answer; [`is_decode`](BackplaneError::is_decode) if the stored state
    /// is not a `T` at a version; [`is_config`](BackplaneError::is_config)
    /// if the name is already open with another type, or is empty, longer
    /// than 1024 bytes or holds a brace (`{`, `}`: braces are kept for the
    /// hash tag);
    /// [`is_server`](BackplaneError::is_server) if the key holds something
    /// else than a channel.
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
        super::keys::check_name(&core.prefix, &self.name)
            .map_err(|e| BackplaneError::new(Kind::Config, e))?;
        let keys = Keys::new(&core.prefix, &self.name);
        if let Some(open) = core.channels.read().get(keys.channel()) {
            return Channel::from_relay(&backplane, keys.channel(), Arc::clone(open));
        }

        let initial = initial.encode();
        let call = core.sync_call(
            &keys,
            &initial,
            self.history,
            None,
            String::new(),
            Some(self.ttl),
        );
        let snapshot = core.read(&call).await?.ok_or_else(|| {
            BackplaneError::from(DecodeError::new("the created state is missing"))
        })?;
        let retained = decode_snapshot::<T>(snapshot)?.into_updates();
        let mut builder = Broadcaster::builder()
            .history(self.history)
            .hold_ahead(HOLD_AHEAD);
        if let Some(n) = self.max_waiters {
            builder = builder.max_waiters(n);
        }
        let relay = Arc::new(ChannelCore {
            keys,
            broadcaster: builder.build_from(retained),
            initial,
            history: self.history,
            once_ttl: self.once_ttl,
            ttl: self.ttl,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
        });

        // Register, then subscribe, then read again: an update published
        // after the first read and before the subscription took effect is
        // caught by the second read.
        let registered = core.register(vec![relay.clone() as Arc<dyn Relay>]).await;
        if let Some(open) = registered.into_iter().next() {
            let ours: Arc<dyn Relay> = relay.clone();
            if !Arc::ptr_eq(&open, &ours) {
                // Opened by a concurrent call meanwhile.
                return Channel::from_relay(&backplane, relay.keys.channel(), open);
            }
        }
        // If this fails, the task catches the channel up on reconnect, or
        // the periodic check does.
        let _ = core.resync(&*relay).await;
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
            .field("failure", &*self.inner.failure.lock())
            .finish_non_exhaustive()
    }
}

impl<T> Channel<T> {
    /// This instance's broadcaster for the channel: wait on it, with cursors
    /// from any instance.
    ///
    /// Its epoch and versions are the channel's, as stored in Redis. A
    /// cursor of the channel's epoch that is ahead of this instance (another
    /// instance answered the client first) waits here until this instance
    /// reaches that version, or the wait times out: it is never answered
    /// with older state than the client has seen. (Only a cursor more than
    /// 255 versions ahead is answered at once, with
    /// [`Resync::Ahead`](crate::Resync::Ahead).)
    ///
    /// While the channel is broken (see [`failure`](Self::failure)), waits
    /// on it fail at once with [`WaitError::Closed`](crate::WaitError::Closed)
    /// (an HTTP server answers `503` with `Retry-After`) instead of waiting
    /// for changes that cannot be relayed.
    ///
    /// Publish through the channel, not on the broadcaster: a local
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

    /// The Redis key of the channel's hash (`<prefix>{<name>}`), which is
    /// also its Pub/Sub channel's name.
    pub fn key(&self) -> &str {
        &self.inner.keys.state
    }

    /// The channel's hash tag, `{<name>}`: on a Redis Cluster, a key that a
    /// [`ModifyScript`] touches must contain it, so that it lives in the
    /// channel's slot, on the shard where the script runs.
    pub fn hash_tag(&self) -> &str {
        let key = &self.inner.keys.state;
        &key[key.find('{').expect("every key carries its tag")..]
    }

    /// Why the channel is broken on this instance, or `None` if it is not.
    ///
    /// A channel breaks when what Redis holds for it cannot be used: a key
    /// of another type under its name, a field that is not a number, a
    /// value that does not decode as `T`. Other channels are not affected.
    /// While broken, its waits fail at once (see
    /// [`broadcaster`](Self::broadcaster)); the backplane reads it again at
    /// every [check](super::Builder::check_interval) and reconnect, and it
    /// heals by itself once Redis holds a usable state (a good publish, or
    /// the bad key deleted: then it starts again under a new epoch).
    /// Redis being unreachable does not break a channel.
    pub fn failure(&self) -> Option<Arc<BackplaneError>> {
        self.inner.failure.lock().clone()
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
    /// If Redis holds an older version of the epoch than this instance has
    /// seen (restored from an older snapshot, a failover to a lagging
    /// replica), the script first moves the channel to a new epoch, so that
    /// no version is handed out twice with different values.
    ///
    /// # Errors
    ///
    /// [`is_unavailable`](BackplaneError::is_unavailable) if Redis cannot be
    /// reached: nothing was published (unless the answer timed out, see
    /// there, and [`publish_once`](Self::publish_once) for a safe retry);
    /// [`is_closed`](BackplaneError::is_closed) if this instance's
    /// broadcaster is closed; [`is_server`](BackplaneError::is_server) if
    /// Redis refused the script (a key of another type under the channel's
    /// name: the channel is then [broken](Self::failure));
    /// [`is_decode`](BackplaneError::is_decode) if its state in Redis is
    /// not one this crate wrote.
    ///
    /// # Cancel safety
    ///
    /// Once the script is sent, dropping the future does not take it back:
    /// the update may have been published, and if so every instance,
    /// this one included, still receives it through its subscription.
    pub async fn publish(&self, value: T) -> Result<Version, BackplaneError> {
        self.publish_inner(None, value).await
    }

    /// [`publish`](Self::publish) that is safe to retry: the first call
    /// with a given `id` publishes, and any later call with the same `id`
    /// (on any instance, within [`remember_publishes`](ChannelBuilder::remember_publishes))
    /// publishes nothing and returns the version of the first.
    ///
    /// For a publish whose answer timed out: it may have run, and retrying
    /// it with the same `id` cannot publish twice. Pick an `id` unique per
    /// change (a request id, a UUID).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Self::publish); a retry with the same `id` settles it.
    pub async fn publish_once(
        &self,
        id: impl AsRef<[u8]>,
        value: T,
    ) -> Result<Version, BackplaneError> {
        self.publish_inner(Some(id.as_ref()), value).await
    }

    async fn publish_inner(
        &self,
        once: Option<&[u8]>,
        value: T,
    ) -> Result<Version, BackplaneError> {
        let core = &self.backplane.shared.core;
        let mut call = self.inner.modify_call(core, once, &[])?;
        call.arg(value.encode());
        let reply = self
            .inner
            .run_modify(core, &core.publish_script, &call)
            .await?;
        if reply.outcome == Outcome::Published {
            self.inner.settle(core, &reply, value).await;
        }
        Ok(reply.version)
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
            once: None,
        }
    }
}

/// A channel as the subscription task sees it, whatever its value type.
pub(super) trait Relay: Send + Sync + 'static {
    fn keys(&self) -> &Keys;
    fn initial(&self) -> &[u8];
    /// Whether a read creates the state if it is missing, and with which
    /// time to live: `None` for a read that never writes a missing state.
    fn creates(&self) -> Option<Option<Duration>>;
    /// Whether `at` (what Redis holds; `None`: nothing) is the position
    /// this instance holds.
    fn is_at(&self, at: Option<(Epoch, Version)>) -> bool;
    /// The history this instance keeps.
    fn history(&self) -> usize;
    /// The epoch and version this instance holds.
    fn position(&self) -> (Epoch, Version);
    /// The epochs this channel left, space-separated, for the scripts.
    fn retired(&self) -> String;
    /// Local waiters now.
    fn waiters(&self) -> usize;
    fn sync(&self) -> &SyncState;
    fn is_failing(&self) -> bool;
    /// Relays one Pub/Sub message.
    fn on_message(&self, epoch: Epoch, version: Version, value: &[u8]) -> Delivery;
    /// Applies a state read from Redis (`None`: missing): newer history
    /// entries in order, then the state, or a new epoch. Returns whether
    /// the epoch changed.
    fn apply(&self, snapshot: Option<Snapshot>) -> Result<bool, DecodeError>;
    /// Marks the channel broken (`Some`) or healed (`None`); returns
    /// whether that changed anything.
    fn set_failure(&self, failure: Option<Arc<BackplaneError>>) -> bool;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// What became of a Pub/Sub message.
#[derive(Debug)]
pub(super) enum Delivery {
    /// Relayed, or a duplicate, or from an epoch this channel left.
    Done,
    /// Another epoch, or a gap: Redis must be read to know what to relay.
    Resync,
    /// The value does not decode: the channel is broken.
    Rejected(DecodeError),
}

/// Single flight for reading a channel again: each request is served by a
/// read that started after it, and reads of one channel never overlap, so
/// that they are applied in the order Redis ran them.
#[derive(Default)]
pub(super) struct SyncState {
    pub(super) lock: tokio::sync::Mutex<()>,
    /// Requests so far.
    requested: AtomicU64,
    /// The number of requests the last applied read covers.
    covered: AtomicU64,
    /// A resync task is spawned and has not started yet.
    pub(super) scheduled: AtomicBool,
    /// The last read failed as unavailable: read again at the next chance.
    pub(super) stale: AtomicBool,
}

impl SyncState {
    /// Files a request; returns its number.
    pub(super) fn request(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether request `n` is already covered (call with the lock held).
    pub(super) fn is_covered(&self, n: u64) -> bool {
        self.covered.load(Ordering::Acquire) >= n
    }

    /// The requests a read starting now covers (call with the lock held).
    pub(super) fn starting(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// A read that started at `starting` was applied (lock held).
    pub(super) fn applied(&self, starting: u64) {
        self.covered.store(starting, Ordering::Release);
        self.stale.store(false, Ordering::Release);
    }
}

pub(super) struct ChannelCore<T> {
    pub(super) keys: Keys,
    pub(super) broadcaster: Broadcaster<T>,
    /// The encoded initial value, for recreating a lost channel.
    pub(super) initial: Vec<u8>,
    pub(super) history: usize,
    pub(super) once_ttl: Duration,
    /// The channel's time to live in Redis, set again by every publish.
    pub(super) ttl: Option<Duration>,
    /// Epochs this channel left, newest last. The lock also makes each
    /// delivery's check-and-publish, and each snapshot, one step.
    pub(super) retired: Mutex<Vec<Epoch>>,
    pub(super) sync: SyncState,
    pub(super) failure: Mutex<Option<Arc<BackplaneError>>>,
}

/// Decodes `bytes`; a panicking decoder counts as a failed decode, so that
/// it cannot take the subscription task down.
fn decode<T: Codec>(bytes: &[u8]) -> Result<T, DecodeError> {
    catch_unwind(AssertUnwindSafe(|| T::decode(bytes)))
        .unwrap_or_else(|_| Err(DecodeError::new("the decoder panicked")))
}

/// A snapshot whose values are decoded.
struct Decoded<T> {
    epoch: Epoch,
    /// Entries whose value decodes, oldest first, then the state.
    updates: Vec<(Version, T)>,
}

impl<T> Decoded<T> {
    fn into_updates(self) -> Vec<Update<T>> {
        let epoch = self.epoch;
        self.updates
            .into_iter()
            .map(|(version, value)| Update {
                epoch,
                version,
                value: Arc::new(value),
            })
            .collect()
    }
}

/// Decodes a snapshot. An entry that does not decode is left out (its
/// version counts as lost); a state that does not decode is an error.
fn decode_snapshot<T: Codec>(snapshot: Snapshot) -> Result<Decoded<T>, DecodeError> {
    let state = decode::<T>(&snapshot.value)?;
    let mut updates: Vec<(Version, T)> = snapshot
        .entries
        .iter()
        .filter_map(|(v, bytes)| decode::<T>(bytes).ok().map(|t| (*v, t)))
        .collect();
    updates.push((snapshot.version, state));
    Ok(Decoded {
        epoch: snapshot.epoch,
        updates,
    })
}

impl<T: Codec + Send + Sync + 'static> ChannelCore<T> {
    /// The keys and arguments `modify.lua` takes before the caller's.
    pub(super) fn modify_call(
        &self,
        core: &Core,
        once: Option<&[u8]>,
        keys: &[Vec<u8>],
    ) -> Result<ScriptCall, BackplaneError> {
        if self.broadcaster.is_closed() {
            return Err(BackplaneError::closed());
        }
        let (epoch, version) = self.position();
        let mut call = ScriptCall::default();
        call.key(&self.keys.state);
        match once {
            Some(id) => call.key(self.keys.once(id)),
            None => call.key(&self.keys.state),
        };
        for key in keys {
            call.key(key);
        }
        let once_ms = once.map_or(0, |_| self.once_ttl.as_millis().max(1));
        let ttl = self.ttl.map_or(0, |t| t.as_millis().max(1));
        call.arg(Epoch::random().to_string())
            .arg(&self.initial)
            .arg(self.history.to_string())
            .arg(self.keys.channel())
            .arg(epoch.to_string())
            .arg(version.to_string())
            .arg(self.retired())
            .arg(once_ms.to_string())
            .arg(core.server.publish_command())
            .arg(ttl.to_string());
        Ok(call)
    }

    /// Runs `modify.lua` (with a snippet) and parses its reply; a failure
    /// that says the channel's data is unusable breaks the channel.
    pub(super) async fn run_modify(
        &self,
        core: &Core,
        script: &::redis::Script,
        call: &ScriptCall,
    ) -> Result<ModifyReply, BackplaneError> {
        let reply = core
            .run_script(script, call)
            .await
            .and_then(|v| parse_modify(v).map_err(BackplaneError::from));
        match reply {
            Ok(reply) => Ok(reply),
            Err(e) if e.is_unavailable() || e.is_snippet() => Err(e),
            Err(e) => {
                let e = Arc::new(e);
                core.channel_failed(self, Arc::clone(&e));
                Err(BackplaneError::shared(&e))
            }
        }
    }

    /// Relays the outcome of this instance's own publish: at once if it is
    /// the next version, else after reading what came between (or the new
    /// epoch) from Redis, so that local waiters get every version in order.
    pub(super) async fn settle(&self, core: &Core, reply: &ModifyReply, value: T) {
        let (epoch, version) = self.position();
        let next = reply.epoch == epoch
            && (reply.version == version.next() || (self.history == 1 && reply.version > version));
        if !next {
            if reply.epoch == epoch && reply.version <= version {
                return; // relayed already, through the subscription
            }
            if core.resync(self).await.is_ok() {
                return; // the read ran after the publish: it covers it
            }
            if reply.epoch != self.position().0 {
                // Not known to be current: leave it to the next read.
                return;
            }
        }
        self.deliver_one(reply.epoch, reply.version, value);
    }

    /// Publishes `(epoch, version)` if it is the channel's epoch and newer.
    fn deliver_one(&self, epoch: Epoch, version: Version, value: T) -> bool {
        let _order = self.retired.lock();
        let current = self.broadcaster.current();
        if current.epoch() != epoch || version <= current.version() {
            return false;
        }
        // Cannot be `NotNewer` (checked under `retired`); `Closed` means
        // shutting down.
        self.broadcaster.publish_at(version, value).is_ok()
    }
}

impl<T: Codec + Send + Sync + 'static> Relay for ChannelCore<T> {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    fn initial(&self) -> &[u8] {
        &self.initial
    }

    fn creates(&self) -> Option<Option<Duration>> {
        Some(self.ttl)
    }

    fn is_at(&self, at: Option<(Epoch, Version)>) -> bool {
        at == Some(self.position())
    }

    fn history(&self) -> usize {
        self.history
    }

    fn position(&self) -> (Epoch, Version) {
        let current = self.broadcaster.current();
        (current.epoch(), current.version())
    }

    fn retired(&self) -> String {
        let retired = self.retired.lock();
        let mut out = String::with_capacity(retired.len() * 17);
        for e in retired.iter() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&e.to_string());
        }
        out
    }

    fn waiters(&self) -> usize {
        self.broadcaster.waiter_count()
    }

    fn sync(&self) -> &SyncState {
        &self.sync
    }

    fn is_failing(&self) -> bool {
        self.failure.lock().is_some()
    }

    fn on_message(&self, epoch: Epoch, version: Version, value: &[u8]) -> Delivery {
        {
            let retired = self.retired.lock();
            let (cur_epoch, cur_version) = self.position();
            if epoch != cur_epoch {
                return if retired.contains(&epoch) {
                    Delivery::Done // late, from an epoch this channel left
                } else {
                    Delivery::Resync
                };
            }
            if version <= cur_version {
                return Delivery::Done; // a duplicate, or overtaken
            }
            if version != cur_version.next() && self.history > 1 {
                // A gap: the versions between are in Redis's history.
                return Delivery::Resync;
            }
        }
        match decode::<T>(value) {
            Ok(value) => {
                self.deliver_one(epoch, version, value);
                Delivery::Done
            }
            Err(e) => Delivery::Rejected(e),
        }
    }

    fn apply(&self, snapshot: Option<Snapshot>) -> Result<bool, DecodeError> {
        // A read of a channel creates its state when missing.
        let snapshot =
            snapshot.ok_or_else(|| DecodeError::new("the channel's state is missing"))?;
        let decoded = decode_snapshot::<T>(snapshot)?;
        let mut retired = self.retired.lock();
        let current = self.broadcaster.current();
        if decoded.epoch == current.epoch() {
            for (version, value) in decoded.updates {
                if version > self.broadcaster.version() {
                    let _ = self.broadcaster.publish_at(version, value);
                }
            }
            return Ok(false);
        }
        // Another epoch: Redis is the authority; start over from what it
        // holds, with the history it kept for the new epoch.
        let mut updates = decoded.updates.into_iter();
        let (version, value) = updates.next().expect("the state is always there");
        if retired.len() == RETIRED_EPOCHS {
            retired.remove(0);
        }
        retired.retain(|e| *e != decoded.epoch);
        retired.push(current.epoch());
        let _ = self.broadcaster.restart(decoded.epoch, version, value);
        for (version, value) in updates {
            let _ = self.broadcaster.publish_at(version, value);
        }
        Ok(true)
    }

    fn set_failure(&self, failure: Option<Arc<BackplaneError>>) -> bool {
        let mut slot = self.failure.lock();
        let was = slot.is_some();
        let is = failure.is_some();
        *slot = failure;
        drop(slot);
        if was != is {
            self.broadcaster.set_failing(is);
        }
        was != is
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

//! Relaying what Redis holds and sends to a local broadcaster, in order,
//! each version once: [`ChannelCore`], shared by a [`Channel`](super::Channel)
//! and by each live key of a [`KeyedChannels`](super::KeyedChannels) hub,
//! and the [`Relay`] interface the subscription task and the recovery see.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::backplane::Core;
use super::commands::ScriptCall;
use super::error::BackplaneError;
use super::keys::{parse_modify, Keys, ModifyReply, Outcome, Snapshot};
use super::{Codec, DecodeError};
use crate::{Broadcaster, Epoch, Update, Version};

/// How many abandoned epochs a channel remembers: late messages from them
/// are ignored, and Redis found holding one of them is behind.
const RETIRED_EPOCHS: usize = 8;

/// How far ahead of this instance a client's cursor may be and still wait
/// here for the version it names (see [`Channel::broadcaster`](super::Channel::broadcaster)).
pub(super) const HOLD_AHEAD: u8 = u8::MAX;

/// The position of a key that is not live, which nothing compares with.
const NO_EPOCH: Epoch = match Epoch::new(1) {
    Some(e) => e,
    None => unreachable!(),
};

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
    /// Whether a read of Redis was applied yet.
    fn is_loaded(&self) -> bool;
    /// A first read was tried (it may have failed): whoever waits for it
    /// looks again.
    fn load_attempted(&self);
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
    /// Where the periodic check last found Redis when it found this
    /// instance elsewhere, for counting the versions a read heals.
    pub(super) behind: crate::telemetry::Behind,
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

/// The local broadcaster that a [`ChannelCore`] relays to.
pub(super) enum Local<T> {
    /// A channel's own.
    Owned(Broadcaster<T>),
    /// A key's in a keyed hub, looked up when needed: `None` once the key
    /// is no longer live (parked or removed).
    Key(Box<dyn Fn() -> Option<Broadcaster<T>> + Send + Sync>),
}

pub(super) struct ChannelCore<T> {
    pub(super) keys: Keys,
    pub(super) local: Local<T>,
    /// The encoded initial value, for recreating a lost channel (or, for a
    /// key, the value of its absent state).
    pub(super) initial: Vec<u8>,
    /// For a key of a keyed hub, the epoch of its absent state (version 0,
    /// the initial value): what every instance holds for a key that Redis
    /// does not hold, without writing it. `None` for a channel, whose reads
    /// create its state.
    pub(super) absent: Option<Epoch>,
    /// Whether a read of Redis was applied yet. A key's broadcaster refuses
    /// waits until then (it holds no state of the channel's sequence).
    pub(super) loaded: AtomicBool,
    /// Woken when the first read is applied, or fails.
    pub(super) load: tokio::sync::Notify,
    pub(super) history: usize,
    pub(super) once_ttl: Duration,
    /// The channel's time to live in Redis, set again by every publish.
    pub(super) ttl: Option<Duration>,
    /// Epochs this channel left, newest last. The lock also makes each
    /// delivery's check-and-publish, and each snapshot, one step.
    pub(super) retired: Mutex<Vec<Epoch>>,
    pub(super) sync: SyncState,
    pub(super) failure: Mutex<Option<Arc<BackplaneError>>>,
    /// Times this instance's publishes until their message comes back.
    pub(super) delivery: crate::telemetry::Delivery,
}

/// Decodes `bytes`; a panicking decoder counts as a failed decode, so that
/// it cannot take the subscription task down.
fn decode<T: Codec>(bytes: &[u8]) -> Result<T, DecodeError> {
    catch_unwind(AssertUnwindSafe(|| T::decode(bytes)))
        .unwrap_or_else(|_| Err(DecodeError::new("the decoder panicked")))
}

/// A snapshot whose values are decoded.
pub(super) struct Decoded<T> {
    epoch: Epoch,
    /// Entries whose value decodes, oldest first, then the state.
    updates: Vec<(Version, T)>,
    /// History entries left out: they did not parse, did not rise below
    /// the state, or their value did not decode. Their versions count as
    /// lost (a cursor among them is answered `Lagged`).
    pub(super) unreadable: usize,
}

impl<T> Decoded<T> {
    pub(super) fn into_updates(self) -> Vec<Update<T>> {
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
pub(super) fn decode_snapshot<T: Codec>(snapshot: Snapshot) -> Result<Decoded<T>, DecodeError> {
    let state = decode::<T>(&snapshot.value)?;
    let mut updates: Vec<(Version, T)> = snapshot
        .entries
        .iter()
        .filter_map(|(v, bytes)| decode::<T>(bytes).ok().map(|t| (*v, t)))
        .collect();
    let unreadable = snapshot.unreadable + (snapshot.entries.len() - updates.len());
    updates.push((snapshot.version, state));
    Ok(Decoded {
        epoch: snapshot.epoch,
        updates,
        unreadable,
    })
}

/// What a publish script needs to know about the channel and the
/// publisher: `modify.lua`'s keys and arguments before the caller's.
pub(super) struct Publish<'a> {
    pub(super) keys: &'a Keys,
    pub(super) initial: &'a [u8],
    pub(super) history: usize,
    pub(super) once_ttl: Duration,
    pub(super) ttl: Option<Duration>,
    /// The position the publisher holds, and the epochs it left (`None`:
    /// it holds nothing, as a keyed hub publishing to a key it does not
    /// hold live).
    pub(super) held: Option<((Epoch, Version), String)>,
}

impl Publish<'_> {
    pub(super) fn call(&self, core: &Core, once: Option<&[u8]>, keys: &[Vec<u8>]) -> ScriptCall {
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
        let ((epoch, version), retired) = match &self.held {
            Some(((e, v), retired)) => ((e.to_string(), v.get().to_string()), retired.as_str()),
            None => ((String::new(), String::from("0")), ""),
        };
        call.arg(Epoch::random().to_string())
            .arg(self.initial)
            .arg(self.history.to_string())
            .arg(self.keys.channel())
            .arg(epoch)
            .arg(version)
            .arg(retired)
            .arg(once_ms.to_string())
            .arg(core.server.publish_command())
            .arg(ttl.to_string());
        call
    }
}

/// Runs `modify.lua` (with a snippet) and parses its reply; a failure that
/// says the channel's data is unusable breaks `relay` if there is one.
pub(super) async fn run_modify(
    core: &Core,
    relay: Option<&dyn Relay>,
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
        Err(e) => match relay {
            Some(relay) => {
                let e = Arc::new(e);
                core.channel_failed(relay, Arc::clone(&e));
                Err(BackplaneError::shared(&e))
            }
            None => Err(e),
        },
    }
}

impl<T> ChannelCore<T> {
    /// Runs `f` on the local broadcaster, if there is one now.
    pub(super) fn with_local<R>(&self, f: impl FnOnce(&Broadcaster<T>) -> R) -> Option<R> {
        match &self.local {
            Local::Owned(b) => Some(f(b)),
            Local::Key(live) => live().map(|b| f(&b)),
        }
    }
}

impl<T: Codec + Send + Sync + 'static> ChannelCore<T> {
    /// The keys and arguments `modify.lua` takes before the caller's.
    pub(super) fn modify_call(
        &self,
        core: &Core,
        once: Option<&[u8]>,
        keys: &[Vec<u8>],
    ) -> Result<ScriptCall, BackplaneError> {
        if self.with_local(Broadcaster::is_closed).unwrap_or(false) {
            return Err(BackplaneError::closed());
        }
        let held = self
            .loaded
            .load(Ordering::Acquire)
            .then(|| (self.position(), self.retired()));
        let publish = Publish {
            keys: &self.keys,
            initial: &self.initial,
            history: self.history,
            once_ttl: self.once_ttl,
            ttl: self.ttl,
            held,
        };
        Ok(publish.call(core, once, keys))
    }

    /// Runs `modify.lua` (with a snippet) and parses its reply; a failure
    /// that says the channel's data is unusable breaks the channel. Every
    /// publish of a relay goes through here: it is timed until its
    /// message comes back, once the relay is subscribed and read (a key's
    /// first publish may come before).
    pub(super) async fn run_modify(
        &self,
        core: &Core,
        script: &::redis::Script,
        call: &ScriptCall,
    ) -> Result<ModifyReply, BackplaneError> {
        let sent = crate::telemetry::publish_sending(&self.delivery, || {
            self.loaded.load(Ordering::Acquire)
        });
        let reply = run_modify(core, Some(self), script, call).await;
        let published = reply
            .as_ref()
            .ok()
            .filter(|r| r.outcome == Outcome::Published);
        crate::telemetry::publish_replied(
            &self.delivery,
            sent,
            published.map(|r| (r.epoch, r.version)),
        );
        reply
    }

    /// Relays the outcome of this instance's own publish: at once if it is
    /// the next version, else after reading what came between (or the new
    /// epoch) from Redis, so that local waiters get every version in order.
    pub(super) async fn settle(&self, core: &Core, reply: &ModifyReply, value: T) {
        if !self.loaded.load(Ordering::Acquire) {
            return; // the first read, on its way, covers it
        }
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
        self.with_local(|b| {
            let current = b.current();
            if current.epoch() != epoch || version <= current.version() {
                return false;
            }
            // Cannot be `NotNewer` (checked under `retired`); `Closed` means
            // shutting down.
            b.publish_at(version, value).is_ok()
        })
        .unwrap_or(false)
    }

    /// The first read was applied (or failed): whoever waits for it goes on.
    fn loaded(&self) {
        self.loaded.store(true, Ordering::Release);
        self.load.notify_waiters();
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
        match self.absent {
            None => Some(self.ttl),
            // A key: a read never writes a missing state.
            Some(_) => None,
        }
    }

    fn is_at(&self, at: Option<(Epoch, Version)>) -> bool {
        let at = match (at, self.absent) {
            (Some(at), _) => at,
            (None, Some(absent)) => (absent, Version::ZERO),
            (None, None) => return false,
        };
        self.loaded.load(Ordering::Acquire) && at == self.position()
    }

    fn history(&self) -> usize {
        self.history
    }

    fn position(&self) -> (Epoch, Version) {
        self.with_local(|b| {
            let current = b.current();
            (current.epoch(), current.version())
        })
        .unwrap_or((self.absent.unwrap_or(NO_EPOCH), Version::ZERO))
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
        self.with_local(Broadcaster::waiter_count).unwrap_or(0)
    }

    fn sync(&self) -> &SyncState {
        &self.sync
    }

    fn is_failing(&self) -> bool {
        self.failure.lock().is_some()
    }

    fn on_message(&self, epoch: Epoch, version: Version, value: &[u8]) -> Delivery {
        crate::telemetry::message_arrived(&self.delivery, epoch, version);
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
        let snapshot = match (snapshot, self.absent) {
            (Some(snapshot), _) => snapshot,
            // A key that Redis does not hold: its absent state.
            (None, Some(absent)) => Snapshot {
                epoch: absent,
                version: Version::ZERO,
                value: self.initial.clone(),
                entries: Vec::new(),
                unreadable: 0,
            },
            // A read of a channel creates its state when missing.
            (None, None) => return Err(DecodeError::new("the channel's state is missing")),
        };
        let decoded = match decode_snapshot::<T>(snapshot) {
            Ok(d) => d,
            Err(e) => {
                self.loaded();
                return Err(e);
            }
        };
        if decoded.unreadable > 0 {
            crate::telemetry::history_dropped(self.keys.channel(), decoded.unreadable);
        }
        let first = !self.loaded.load(Ordering::Acquire);
        let mut retired = self.retired.lock();
        let restarted = self.with_local(|b| {
            let current = b.current();
            if decoded.epoch == current.epoch() && !first {
                for (version, value) in decoded.updates {
                    if version > b.version() {
                        let _ = b.publish_at(version, value);
                    }
                }
                return false;
            }
            // Another epoch (or the first read of a key, whose broadcaster
            // held nothing yet): Redis is the authority; start over from
            // what it holds, with the history it kept for the epoch.
            let mut updates = decoded.updates.into_iter();
            let (version, value) = updates.next().expect("the state is always there");
            if !first {
                if retired.len() == RETIRED_EPOCHS {
                    retired.remove(0);
                }
                retired.retain(|e| *e != decoded.epoch);
                retired.push(current.epoch());
            }
            let _ = b.restart(decoded.epoch, version, value);
            for (version, value) in updates {
                let _ = b.publish_at(version, value);
            }
            if first && self.failure.lock().is_none() {
                // Born refusing waits: now it holds the channel's state.
                b.set_failing(false);
            }
            !first
        });
        drop(retired);
        if first {
            self.loaded();
        }
        Ok(restarted.unwrap_or(false))
    }

    fn set_failure(&self, failure: Option<Arc<BackplaneError>>) -> bool {
        let mut slot = self.failure.lock();
        let was = slot.is_some();
        let is = failure.is_some();
        *slot = failure;
        drop(slot);
        if was != is && self.loaded.load(Ordering::Acquire) {
            self.with_local(|b| b.set_failing(is));
        }
        was != is
    }

    fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn load_attempted(&self) {
        self.load.notify_waiters();
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

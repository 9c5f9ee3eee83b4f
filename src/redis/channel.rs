//! [`Channel`]: opening a channel of a fixed name, publishing to it, and
//! the local broadcaster its updates are relayed to (see `relay.rs`).

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::backplane::Backplane;
use super::error::{BackplaneError, Kind};
use super::keys::{Keys, Outcome};
use super::modify::{Modify, ModifyScript};
use super::relay::{decode_snapshot, ChannelCore, Local, Relay, SyncState, HOLD_AHEAD};
use super::{Codec, DecodeError};
use crate::{Broadcaster, Update, Version};

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
        let decoded = decode_snapshot::<T>(snapshot)?;
        if decoded.unreadable > 0 {
            crate::telemetry::history_dropped(keys.channel(), decoded.unreadable);
        }
        let retained = decoded.into_updates();
        let mut builder = Broadcaster::builder()
            .history(self.history)
            .hold_ahead(HOLD_AHEAD);
        if let Some(n) = self.max_waiters {
            builder = builder.max_waiters(n);
        }
        let relay = Arc::new(ChannelCore {
            keys,
            local: Local::Owned(builder.build_from(retained)),
            initial,
            absent: None,
            loaded: AtomicBool::new(true),
            load: tokio::sync::Notify::new(),
            history: self.history,
            once_ttl: self.once_ttl,
            ttl: self.ttl,
            retired: Mutex::new(Vec::new()),
            sync: SyncState::default(),
            failure: Mutex::new(None),
            delivery: crate::telemetry::Delivery::new(&core.telemetry),
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
            .field("broadcaster", self.broadcaster())
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
        match &self.inner.local {
            Local::Owned(b) => b,
            Local::Key(_) => unreachable!("a channel owns its broadcaster"),
        }
    }

    /// The state this instance holds now (see [`Broadcaster::current`]).
    pub fn current(&self) -> Update<T> {
        self.broadcaster().current()
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

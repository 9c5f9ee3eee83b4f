//! [`KeyedChannelsBuilder`]: the settings of a keyed hub, and its start:
//! the local hub with its hooks, the sweeper and the loader.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::live::Inner;
use super::loader::{run, Queue};
use super::KeyedChannels;
#[cfg(doc)]
use super::KeyedError;
use crate::keyed::{Hooks, Keyed};
use crate::redis::backplane::Backplane;
use crate::redis::error::{BackplaneError, Kind};
use crate::redis::keys::check_name;
use crate::redis::relay::HOLD_AHEAD;
use crate::redis::Codec;
use crate::Broadcaster;

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
pub(super) type Init<T> = Arc<dyn Fn(&str) -> T + Send + Sync>;

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
            once_ttl: crate::redis::channel::ONCE_TTL,
            max_waiters: None,
            init: None,
        }
    }
}

impl<T> KeyedChannelsBuilder<T> {
    /// Every key keeps its last `k` updates, locally and in Redis (default
    /// 1), as [`ChannelBuilder::history`](crate::redis::ChannelBuilder::history).
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
    /// `None`: for ever), as [`ChannelBuilder::ttl`](crate::redis::ChannelBuilder::ttl).
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

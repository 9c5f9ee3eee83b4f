//! A Redis backplane: several server instances share one version sequence.
//!
//! When one process is not enough, several run behind a load balancer. A
//! change posted to instance A must then wake the long polls held by
//! instance B, and a client that lands on another instance must keep its
//! cursor. This module keeps each channel's epoch, version and value in
//! Redis and relays every change to a local [`Broadcaster`] in each
//! instance, so waiters use the same API and the same
//! [`Cursor`](crate::Cursor) as without a backplane, and the version a
//! client saw on A means the same on B.
//!
//! # Usage
//!
//! One [`Backplane`] per process (one Redis URL and key prefix), one
//! [`Channel`] per value that changes. Publish through the channel; wait on
//! its [`broadcaster`](Channel::broadcaster).
//!
//! ```no_run
//! use longpoll::redis::Backplane;
//! use longpoll::Cursor;
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), longpoll::redis::BackplaneError> {
//! let backplane = Backplane::builder("redis://127.0.0.1:6379/")
//!     .prefix("shop:")
//!     .connect()
//!     .await?;
//! // Created in Redis with this value if missing; otherwise joined as it is.
//! let stock = backplane.channel("stock", 10u32).await?;
//!
//! // In a long-poll handler: the cursor came from the client, maybe from
//! // another instance.
//! let waiter = stock.broadcaster().wait_timeout(Cursor::NEXT, Duration::from_secs(30));
//!
//! // On any instance: one atomic step in Redis, then every instance's waiters wake.
//! let version = stock.publish(9).await?;
//! let changed = waiter.await.expect("woken by the publish");
//! assert_eq!(changed.version(), version);
//! # Ok(()) }
//! ```
//!
//! # What lives where
//!
//! For a channel `name` under the key prefix `P` (default `longpoll:`):
//!
//! | key or channel          | holds                                                      |
//! |-------------------------|------------------------------------------------------------|
//! | `Pstate:name` (hash)    | `epoch` (16 hex digits), `version` (integer), `value` (bytes, see [`Codec`]) |
//! | `Phistory:name` (list)  | the last `k` updates as `"<version> <value>"`, with [`ChannelBuilder::history`] `k > 1` |
//! | Pub/Sub channel `Pname` | every update as `"<epoch> <version> <value>"`              |
//!
//! A publish is one Lua script: it bumps the version, stores the value,
//! trims the history and `PUBLISH`es, atomically, and returns the new
//! version. Every instance holds one subscription connection for all its
//! channels and one multiplexed connection for commands; a held long poll
//! costs Redis nothing.
//!
//! # Recovery
//!
//! When the subscription drops (a network blip, `CLIENT KILL`, a Redis
//! restart) the instance reconnects with jittered exponential backoff,
//! subscribes again, and then re-reads every channel. Whatever was
//! published meanwhile reaches the local waiters: every update still in
//! the history, in order, or else the latest value. Duplicates (an update
//! both re-read and received) are dropped by version, and versions never go
//! backwards.
//!
//! If Redis lost a channel's data (a restart without persistence), the first
//! instance to notice recreates it under a new [`Epoch`], in the same
//! atomic step as the check, with the channel's initial value. Every
//! instance then [`restart`](Broadcaster::restart)s its broadcaster, so each
//! client gets [`Resync::OtherEpoch`](crate::Resync::OtherEpoch) and starts
//! over from the new state instead of waiting on a dead sequence. The same
//! happens if Redis comes back *behind* what an instance saw (restored from
//! an older snapshot): versions would otherwise be reused for other values.
//!
//! While Redis is unreachable, held waits keep waiting (or time out as
//! usual), and publishes fail at once with an error for which
//! [`BackplaneError::is_unavailable`] holds. Nothing panics.
//!
//! # Switching instances
//!
//! A client may poll any instance with the cursor another one gave it. One
//! race remains: a client told of version `v` by A that polls B before B's
//! subscription delivered `v` (typically a fraction of a millisecond) holds
//! a cursor B has not reached. B answers at once with its current state,
//! flagged [`Resync::Ahead`](crate::Resync::Ahead), as for any cursor from
//! the future; the client's next poll, with that answer's cursor, is
//! answered at once with `v`. Nothing is lost; the client sees one extra,
//! older answer.
//!
//! # What it costs Redis
//!
//! Per instance: two connections (commands and subscription), whatever the
//! number of channels and waiters, and a `PING` every 5 seconds. Per
//! publish: one round trip (`EVALSHA`; inside the script `HMGET`,
//! `HINCRBY`, `HSET`, `RPUSH` and `LTRIM` with a history, and one
//! `PUBLISH`, delivered once to every subscribed instance). Per held long
//! poll: nothing. Per channel opened, and again per channel after a
//! reconnect: one `SUBSCRIBE` (all channels in one) and one `EVALSHA`.
//!
//! # Read, modify, publish
//!
//! [`Channel::publish`] replaces the value. To derive the next value from
//! the current one atomically across instances, and to touch other keys in
//! the same step, pass a Lua snippet: see [`ModifyScript`].
//!
//! # Limits
//!
//! One Redis server, version 4.0 or later (or a primary with replicas), is
//! assumed, not Redis Cluster. The local waiters of an instance only hear
//! of changes made through the backplane: do not publish on a channel's
//! broadcaster directly. An opened channel stays subscribed for as long as
//! its backplane lives, so open a bounded set of them. Redis must not evict
//! the keys (`maxmemory-policy noeviction`, the default); if it does, the
//! channel restarts under a new epoch.

mod codec;
mod error;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, Msg, Script, ScriptInvocation};
use parking_lot::{Mutex, RwLock};

pub use codec::{Codec, DecodeError};
pub use error::BackplaneError;
use error::Kind;

use crate::{Broadcaster, Epoch, Update, Version};

const SYNC_LUA: &str = include_str!("redis/sync.lua");
const MODIFY_LUA: &str = include_str!("redis/modify.lua");

/// How many abandoned epochs a channel remembers, to ignore late messages
/// from them.
const RETIRED_EPOCHS: usize = 8;

/// A connection to Redis shared by every [`Channel`] of this process.
///
/// A cheap handle: clones share one subscription connection, one command
/// connection and one background task, which stops when the last handle
/// (including those held by channels) is dropped.
#[derive(Clone)]
pub struct Backplane {
    shared: Arc<Handle>,
}

/// Owns the background task: aborts it when the last handle goes.
struct Handle {
    core: Arc<Core>,
    task: tokio::task::AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the handles and the subscription task share.
struct Core {
    client: Client,
    prefix: String,
    config: Config,
    /// The command connection, `None` after it failed.
    command: Mutex<Option<MultiplexedConnection>>,
    /// Held while opening a command connection, so that a burst of publishes
    /// after an outage opens one, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Every open channel, by Pub/Sub channel name.
    channels: RwLock<HashMap<String, Arc<dyn Relay>>>,
    /// The live subscription's command half, `None` while reconnecting.
    /// Held across "add a channel and subscribe to it" and across "subscribe
    /// to every channel and publish the sink", so that no channel is missed
    /// by both.
    subscription: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Subscribed and caught up.
    connected: AtomicBool,
    reconnects: AtomicU64,
    sync_script: Script,
    publish_script: Script,
}

#[derive(Clone, Debug)]
struct Config {
    connect_timeout: Duration,
    command_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    ping_interval: Duration,
}

/// Configures a [`Backplane`]: key prefix, timeouts, reconnect backoff.
///
/// ```no_run
/// use longpoll::redis::Backplane;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), longpoll::redis::BackplaneError> {
/// let backplane = Backplane::builder("redis://127.0.0.1:6379/")
///     .prefix("shop:")
///     .command_timeout(Duration::from_millis(500))
///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(5))
///     .connect()
///     .await?;
/// assert_eq!(backplane.prefix(), "shop:");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct Builder {
    url: String,
    prefix: String,
    config: Config,
}

impl Builder {
    /// The prefix of every key and Pub/Sub channel name (default
    /// `longpoll:`). Instances that share channels use the same prefix;
    /// separate applications (or tests) on one Redis use different ones.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a TCP connection and handshake (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to a command (default 1 s); past it,
    /// the command fails as unavailable and the connection is replaced.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }

    /// The first and the longest delay between attempts to subscribe again
    /// (default 50 ms and 2 s): each failed attempt doubles it, with
    /// jitter, so that instances do not come back in step.
    ///
    /// # Panics
    ///
    /// If `min` is zero or greater than `max`.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        assert!(
            !min.is_zero() && min <= max,
            "longpoll: backoff needs 0 < min <= max"
        );
        self.config.backoff_min = min;
        self.config.backoff_max = max;
        self
    }

    /// How often the idle subscription is checked with a `PING` (default
    /// 5 s), to notice a connection that died without being closed.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "longpoll: ping interval must not be 0");
        self.config.ping_interval = interval;
        self
    }

    /// Connects the command and subscription connections and starts the task
    /// that relays changes to this process.
    ///
    /// # Errors
    ///
    /// [`is_config`](BackplaneError::is_config) for a URL the Redis client
    /// rejects; [`is_unavailable`](BackplaneError::is_unavailable) if Redis
    /// does not answer; [`is_server`](BackplaneError::is_server) if it
    /// refuses the connection (authentication, for instance).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(self) -> Result<Backplane, BackplaneError> {
        let client =
            Client::open(self.url.as_str()).map_err(|e| BackplaneError::new(Kind::Config, e))?;
        let publish_body = compose_modify("return ARGV[1]", false);
        let core = Arc::new(Core {
            client,
            prefix: self.prefix,
            config: self.config,
            command: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            channels: RwLock::new(HashMap::new()),
            subscription: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            sync_script: Script::new(SYNC_LUA),
            publish_script: Script::new(&publish_body),
        });
        core.command().await?;
        let first = core.open_subscription().await?;
        let task = tokio::spawn(run(Arc::clone(&core), Some(first))).abort_handle();
        Ok(Backplane {
            shared: Arc::new(Handle { core, task }),
        })
    }
}

impl Backplane {
    /// A [`Builder`] for the Redis at `url` (`redis://[:password@]host:port/[db]`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            prefix: String::from("longpoll:"),
            config: Config {
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_secs(2),
                ping_interval: Duration::from_secs(5),
            },
        }
    }

    /// Connects to the Redis at `url` with the default settings; see
    /// [`Builder::connect`].
    ///
    /// # Errors
    ///
    /// As [`Builder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Backplane, BackplaneError> {
        Self::builder(url).connect().await
    }

    /// Opens the channel `name` with the default settings (no history, no
    /// waiter limit); see [`ChannelBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`ChannelBuilder::open`].
    pub async fn channel<T>(&self, name: &str, initial: T) -> Result<Channel<T>, BackplaneError>
    where
        T: Codec + Send + Sync + 'static,
    {
        self.channel_builder(name).open(initial).await
    }

    /// A [`ChannelBuilder`] for the channel `name`, to set its history and
    /// waiter limit.
    pub fn channel_builder(&self, name: &str) -> ChannelBuilder<'_> {
        ChannelBuilder {
            backplane: self,
            name: name.to_owned(),
            history: 1,
            max_waiters: None,
        }
    }

    /// The key prefix (see [`Builder::prefix`]).
    pub fn prefix(&self) -> &str {
        &self.shared.core.prefix
    }

    /// Whether the subscription is up and every channel caught up with
    /// Redis. `false` while reconnecting: local waiters then only hear of
    /// changes once it is back.
    pub fn is_connected(&self) -> bool {
        self.shared.core.connected.load(Ordering::Acquire)
    }

    /// How many times the subscription was lost since [`connect`](Self::connect).
    pub fn reconnects(&self) -> u64 {
        self.shared.core.reconnects.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane")
            .field("prefix", &self.prefix())
            .field("connected", &self.is_connected())
            .field("channels", &self.shared.core.channels.read().len())
            .field("reconnects", &self.reconnects())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Channel`] before opening it.
#[derive(Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct ChannelBuilder<'a> {
    backplane: &'a Backplane,
    name: String,
    history: usize,
    max_waiters: Option<usize>,
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
    inner: Arc<ChannelCore<T>>,
    backplane: Backplane,
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
    fn from_relay(
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

/// A read-modify-publish in Redis, written as a Lua snippet.
///
/// The snippet is the body of a Lua function
/// `function(value, KEYS, ARGV)`: `value` is the channel's current value as
/// stored (see [`Codec`]), `KEYS` and `ARGV` are the keys and arguments given
/// to [`Modify::key`] and [`Modify::arg`]. It returns up to two results:
///
/// 1. the new value (a string; a number is converted with `tostring`), or
///    `nil`/`false` to publish nothing;
/// 2. optionally, a note for the caller (a string), returned as
///    [`Modified::note`]: why nothing was published, for instance.
///
/// The snippet runs inside the publish script, atomically with the version
/// bump and the `PUBLISH`: no other publish, on any instance, comes between
/// its read and its write. It may read and write the keys it is given, and
/// raise an error with `error(...)` (the call then fails with
/// [`is_server`](BackplaneError::is_server) and nothing is published).
///
/// Build it once (its SHA-1 is computed here) and reuse it.
///
/// ```no_run
/// use longpoll::redis::{Backplane, ModifyScript};
///
/// # #[tokio::main] async fn main() -> Result<(), longpoll::redis::BackplaneError> {
/// // Take `ARGV[1]` units, unless fewer are left.
/// let take = ModifyScript::new(r#"
///     local left = tonumber(value) - tonumber(ARGV[1])
///     if left < 0 then return nil, 'sold out' end
///     return left
/// "#);
/// let backplane = Backplane::connect("redis://127.0.0.1:6379/").await?;
/// let stock = backplane.channel("stock", 10u32).await?;
/// let done = stock.modify(&take).arg("3").invoke().await?;
/// if done.is_published() {
///     println!("{} left at version {}", done.update().value(), done.update().version());
/// } else {
///     println!("{}", String::from_utf8_lossy(done.note()));
/// }
/// # Ok(()) }
/// ```
pub struct ModifyScript {
    script: Script,
}

impl ModifyScript {
    /// Wraps `body`, the Lua body of `function(value, KEYS, ARGV)`.
    pub fn new(body: &str) -> Self {
        ModifyScript {
            script: Script::new(&compose_modify(body, true)),
        }
    }
}

impl fmt::Debug for ModifyScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModifyScript")
            .field("sha1", &self.script.get_hash())
            .finish()
    }
}

/// A [`ModifyScript`] call being prepared: see [`Channel::modify`].
#[must_use = "nothing happens until `invoke` is awaited"]
pub struct Modify<'a, T> {
    channel: &'a Channel<T>,
    script: &'a ModifyScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<T> fmt::Debug for Modify<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Modify")
            .field("script", self.script)
            .field("keys", &self.keys.len())
            .field("args", &self.args.len())
            .finish_non_exhaustive()
    }
}

impl<T: Codec + Send + Sync + 'static> Modify<'_, T> {
    /// Appends a key: the snippet's `KEYS[1]`, `KEYS[2]`, ... in order.
    /// Give the full key name (with your prefix).
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    /// Appends an argument: the snippet's `ARGV[1]`, `ARGV[2]`, ... in order.
    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Self {
        self.args.push(arg.as_ref().to_vec());
        self
    }

    /// Runs the script in Redis; if it published, wakes this instance's
    /// waiters before returning (other instances' through their
    /// subscription, as for [`Channel::publish`]).
    ///
    /// # Errors
    ///
    /// As [`Channel::publish`]; a snippet that raised an error gives
    /// [`is_server`](BackplaneError::is_server), a new value that is not a
    /// `T` gives [`is_decode`](BackplaneError::is_decode) (it was published
    /// nevertheless).
    ///
    /// # Cancel safety
    ///
    /// As [`Channel::publish`].
    pub async fn invoke(self) -> Result<Modified<T>, BackplaneError> {
        let channel = self.channel;
        let inner = &channel.inner;
        if inner.broadcaster.is_closed() {
            return Err(BackplaneError::closed());
        }
        let core = &channel.backplane.shared.core;
        let mut call = self.script.script.key(&inner.keys.state);
        call.key(&inner.keys.history);
        for key in &self.keys {
            call.key(key);
        }
        call.arg(Epoch::random().to_string())
            .arg(&inner.initial)
            .arg(inner.history)
            .arg(&inner.keys.channel);
        for arg in &self.args {
            call.arg(arg);
        }
        let (epoch, version, value, published, note): ModifyReply = core.invoke(&call).await?;
        let (epoch, version) = parse_position(&epoch, &version)?;
        // Decoded twice: once for the caller, once for the broadcaster,
        // which takes its value by value.
        let update = Update {
            epoch,
            version,
            value: Arc::new(T::decode(&value)?),
        };
        inner.settle(core, epoch, version, T::decode(&value)?).await;
        Ok(Modified {
            update,
            published: published != 0,
            note,
        })
    }
}

/// What a [`Modify`] call did.
#[derive(Debug)]
pub struct Modified<T> {
    update: Update<T>,
    published: bool,
    note: Vec<u8>,
}

impl<T> Modified<T> {
    /// The state the script left in Redis: the new update if it published,
    /// the unchanged current one otherwise.
    pub fn update(&self) -> &Update<T> {
        &self.update
    }

    /// The state the script left in Redis, by value.
    pub fn into_update(self) -> Update<T> {
        self.update
    }

    /// Whether the snippet returned a new value, published as a new version.
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// The snippet's second result, or empty if it returned none.
    pub fn note(&self) -> &[u8] {
        &self.note
    }
}

/// `{epoch, version, value, changed, note}` from `modify.lua`.
type ModifyReply = (String, String, Vec<u8>, i64, Vec<u8>);

/// The script text for a modify snippet; `echo` makes it return the new
/// value (a plain publish knows it already).
fn compose_modify(body: &str, echo: bool) -> String {
    format!(
        "local function modify(value, KEYS, ARGV)\n{body}\nend\nlocal echo = {echo}\n{MODIFY_LUA}"
    )
}

/// The Redis names of one channel.
#[derive(Debug)]
struct Keys {
    state: String,
    history: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str, name: &str) -> Self {
        Keys {
            state: format!("{prefix}state:{name}"),
            history: format!("{prefix}history:{name}"),
            channel: format!("{prefix}{name}"),
        }
    }
}

/// A channel's state as `sync.lua` read it.
struct Snapshot {
    epoch: Epoch,
    version: Version,
    value: Vec<u8>,
    /// `"<version> <value>"` entries of the caller's epoch, oldest first.
    history: Vec<Vec<u8>>,
}

/// A channel as the subscription task sees it, whatever its value type.
trait Relay: Send + Sync + 'static {
    fn keys(&self) -> &Keys;
    fn initial(&self) -> &[u8];
    /// The epoch and version this instance holds.
    fn position(&self) -> (Epoch, Version);
    /// Relays an update received or re-read from Redis.
    fn deliver_encoded(&self, epoch: Epoch, version: Version, value: &[u8]);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

struct ChannelCore<T> {
    keys: Keys,
    broadcaster: Broadcaster<T>,
    /// The encoded initial value, for recreating a lost channel.
    initial: Vec<u8>,
    history: usize,
    /// Epochs this channel left, newest last: late messages from them are
    /// ignored, so that the epoch never flips back. The lock also makes
    /// each delivery's check-and-publish one step.
    retired: Mutex<Vec<Epoch>>,
}

impl<T: Codec + Send + Sync + 'static> ChannelCore<T> {
    /// Relays `(epoch, version)` to the broadcaster unless it is stale;
    /// `value` is decoded only if it is needed.
    fn deliver(
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
    async fn settle(&self, core: &Core, epoch: Epoch, version: Version, value: T) {
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

impl Core {
    /// The command connection, opened if needed.
    async fn command(&self) -> Result<MultiplexedConnection, BackplaneError> {
        if let Some(conn) = self.command.lock().clone() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.command.lock().clone() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.command_timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(BackplaneError::from_redis)?;
        *self.command.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a script on the command connection; drops the connection if it
    /// failed, so that the next call opens a new one.
    async fn invoke<R: ::redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<R, BackplaneError> {
        let mut conn = self.command().await?;
        call.invoke_async(&mut conn).await.map_err(|e| {
            let e = BackplaneError::from_redis(e);
            if e.is_unavailable() {
                self.command.lock().take();
            }
            e
        })
    }

    /// Reads (or recreates) a channel's state with `sync.lua`.
    async fn sync(
        &self,
        keys: &Keys,
        initial: &[u8],
        held: Option<(Epoch, Version)>,
    ) -> Result<Snapshot, BackplaneError> {
        let (held_epoch, held_version) = match held {
            Some((e, v)) => (e.to_string(), v.get()),
            None => (String::new(), 0),
        };
        let mut call = self.sync_script.key(&keys.state);
        call.key(&keys.history)
            .arg(Epoch::random().to_string())
            .arg(initial)
            .arg(held_epoch)
            .arg(held_version)
            .arg(&keys.channel);
        let (epoch, version, value, history): (String, String, Vec<u8>, Vec<Vec<u8>>) =
            self.invoke(&call).await?;
        let (epoch, version) = parse_position(&epoch, &version)?;
        Ok(Snapshot {
            epoch,
            version,
            value,
            history,
        })
    }

    /// Brings one channel up to date with Redis: relays every retained
    /// update newer than what it holds, in order, then the current state.
    async fn catch_up(&self, relay: &dyn Relay) -> Result<(), BackplaneError> {
        let held = relay.position();
        let snapshot = self.sync(relay.keys(), relay.initial(), Some(held)).await?;
        if snapshot.epoch == held.0 {
            for entry in &snapshot.history {
                let Some((version, value)) = split_entry(entry) else {
                    continue;
                };
                if version > held.1 && version < snapshot.version {
                    relay.deliver_encoded(snapshot.epoch, version, value);
                }
            }
        }
        relay.deliver_encoded(snapshot.epoch, snapshot.version, &snapshot.value);
        Ok(())
    }

    /// Catches every open channel up, after (re)subscribing.
    async fn catch_up_all(&self) -> Result<(), BackplaneError> {
        let channels: Vec<Arc<dyn Relay>> = self.channels.read().values().cloned().collect();
        for relay in channels {
            self.catch_up(&*relay).await?;
        }
        Ok(())
    }

    /// A new subscription connection, not yet subscribed to anything.
    async fn open_subscription(&self) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        match tokio::time::timeout(self.config.connect_timeout, self.client.get_async_pubsub())
            .await
        {
            Ok(Ok(pubsub)) => Ok(pubsub.split()),
            Ok(Err(e)) => Err(BackplaneError::from_redis(e)),
            Err(elapsed) => Err(BackplaneError::new(Kind::Unavailable, elapsed)),
        }
    }

    /// Subscribes `sink` to every open channel and makes it the live
    /// subscription.
    async fn subscribe_all(&self, sink: &mut PubSubSink) -> Result<(), BackplaneError> {
        let mut live = self.subscription.lock().await;
        let names: Vec<String> = self.channels.read().keys().cloned().collect();
        if !names.is_empty() {
            match tokio::time::timeout(self.config.command_timeout, sink.subscribe(&names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BackplaneError::from_redis(e)),
                Err(elapsed) => return Err(BackplaneError::new(Kind::Unavailable, elapsed)),
            }
        }
        *live = Some(sink.clone());
        Ok(())
    }

    /// Relays one Pub/Sub message to its channel.
    fn dispatch(&self, msg: &Msg) {
        let relay = self.channels.read().get(msg.get_channel_name()).cloned();
        let Some(relay) = relay else { return };
        let payload = msg.get_payload_bytes();
        let mut parts = payload.splitn(3, |&b| b == b' ');
        let (Some(epoch), Some(version), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(epoch), Ok(version)) = (std::str::from_utf8(epoch), std::str::from_utf8(version))
        else {
            return;
        };
        if let Ok((epoch, version)) = parse_position(epoch, version) {
            relay.deliver_encoded(epoch, version, value);
        }
    }
}

/// The subscription task: relays messages, and on any failure reconnects,
/// resubscribes and catches every channel up. Runs until aborted.
async fn run(core: Arc<Core>, mut first: Option<(PubSubSink, PubSubStream)>) {
    let mut backoff = core.config.backoff_min;
    loop {
        let opened = match first.take() {
            Some(conn) => Ok(conn),
            None => core.open_subscription().await,
        };
        let up = match opened {
            Ok((mut sink, stream)) => match core.subscribe_all(&mut sink).await {
                // Subscribed first, then caught up: nothing published in
                // between is missed, and what arrives twice is dropped.
                Ok(()) => match core.catch_up_all().await {
                    Ok(()) => Some((sink, stream)),
                    Err(_) => None,
                },
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some((sink, mut stream)) = up else {
            *core.subscription.lock().await = None;
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(core.config.backoff_max);
            continue;
        };
        core.connected.store(true, Ordering::Release);
        backoff = core.config.backoff_min;

        let pinger = keep_alive(sink, core.config.ping_interval, core.config.command_timeout);
        tokio::pin!(pinger);
        loop {
            tokio::select! {
                msg = next_message(&mut stream) => match msg {
                    Some(msg) => core.dispatch(&msg),
                    None => break, // connection closed
                },
                () = &mut pinger => break, // connection dead
            }
        }

        core.connected.store(false, Ordering::Release);
        *core.subscription.lock().await = None;
        // If Redis restarted, the command connection is dead too: open a
        // new one for the next command rather than fail it on the old one.
        core.command.lock().take();
        core.reconnects.fetch_add(1, Ordering::Relaxed);
        // Come back soon, but not all instances in the same instant.
        tokio::time::sleep(jitter(core.config.backoff_min)).await;
    }
}

/// Pings the subscription every `interval`; returns when a ping fails.
async fn keep_alive(mut sink: PubSubSink, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, sink.ping::<::redis::Value>()).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

async fn next_message(stream: &mut PubSubStream) -> Option<Msg> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// A delay between `d / 2` and `d`.
fn jitter(d: Duration) -> Duration {
    let permille = (Epoch::random().get() % 1000) as u32;
    d / 2 + d * permille / 2000
}

fn parse_position(epoch: &str, version: &str) -> Result<(Epoch, Version), BackplaneError> {
    match (Epoch::from_str(epoch), Version::from_str(version)) {
        (Ok(e), Ok(v)) => Ok((e, v)),
        _ => Err(BackplaneError::from(DecodeError::new(format!(
            "not a channel state: epoch {epoch:?}, version {version:?}"
        )))),
    }
}

/// Splits a history entry `"<version> <value>"`.
fn split_entry(entry: &[u8]) -> Option<(Version, &[u8])> {
    let space = entry.iter().position(|&b| b == b' ')?;
    let version = std::str::from_utf8(&entry[..space]).ok()?.parse().ok()?;
    Some((version, &entry[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_entries_split_at_the_first_space() {
        assert_eq!(
            split_entry(b"12 a b"),
            Some((Version::new(12), &b"a b"[..]))
        );
        assert_eq!(split_entry(b"7 "), Some((Version::new(7), &b""[..])));
        assert_eq!(split_entry(b"x 1"), None);
        assert_eq!(split_entry(b"12"), None);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn keys_of_different_names_never_collide() {
        let a = Keys::new("p:", "a");
        let b = Keys::new("p:", "history:a");
        assert_ne!(a.history, b.state);
        assert_ne!(a.state, b.history);
    }
}

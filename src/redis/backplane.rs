//! [`Backplane`]: the connection to Redis, its builder and the command
//! connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Client, IntoConnectionInfo, Script};
use parking_lot::{Mutex, RwLock};

use super::channel::ChannelBuilder;
use super::commands::{cluster_client, CommandSlot, Server};
use super::error::{BackplaneError, Kind};
use super::keys::SYNC_LUA;
use super::modify::compose_modify;
use super::relay::Relay;
use super::shards::Shards;
use super::subscription::{run, Start, Subscriber};
use super::{Channel, Codec};

/// A connection to Redis shared by every [`Channel`] of this process.
///
/// A cheap handle: clones share one subscription connection, one command
/// connection and one background task, which stops when the last handle
/// (including those held by channels) is dropped.
#[derive(Clone)]
pub struct Backplane {
    pub(super) shared: Arc<Handle>,
}

/// Owns the background task: aborts it when the last handle goes.
pub(super) struct Handle {
    pub(super) core: Arc<Core>,
    pub(super) task: tokio::task::AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.stopped.store(true, Ordering::Release);
        self.task.abort();
        crate::telemetry::backplane_stopped(self.core.connected.load(Ordering::Acquire));
    }
}

/// What the handles and the subscription task share.
pub(super) struct Core {
    pub(super) server: Server,
    pub(super) prefix: String,
    pub(super) config: Config,
    /// The command connection.
    pub(super) command: CommandSlot,
    /// Every open channel, by Pub/Sub channel name.
    pub(super) channels: RwLock<HashMap<String, Arc<dyn Relay>>>,
    /// The subscription side: one connection, or one per master.
    pub(super) subscriber: Subscriber,
    /// Subscribed and caught up.
    pub(super) connected: AtomicBool,
    /// What telemetry knows of the subscription's outages (see
    /// [`Core::set_connected`]).
    pub(super) link: Mutex<crate::telemetry::Link>,
    /// The metric handles of every channel's publishes and checks,
    /// registered when the backplane is built.
    pub(super) telemetry: crate::telemetry::BackplaneMetrics,
    /// Set when the last handle is gone: retry loops of resyncs stop.
    pub(super) stopped: AtomicBool,
    pub(super) stats: Counters,
    /// Why the subscription last failed, for [`Backplane::last_error`].
    pub(super) last_error: Mutex<Option<Arc<BackplaneError>>>,
    pub(super) sync_script: Script,
    pub(super) publish_script: Script,
}

/// The counters behind [`Stats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) reconnects: AtomicU64,
    pub(super) resyncs: AtomicU64,
    pub(super) restarts: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) channel_failures: AtomicU64,
    pub(super) healed: AtomicU64,
}

/// What a [`Backplane`] went through since it connected: for an operator's
/// dashboard. Every count only rises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Times the subscription was lost (see [`Backplane::reconnects`]).
    pub reconnects: u64,
    /// Channel states read again from Redis: after a reconnect, an epoch
    /// change, a gap, a failed channel, or a periodic check that found this
    /// instance behind (see [`Builder::check_interval`]).
    pub resyncs: u64,
    /// Epoch changes relayed to a local broadcaster: Redis lost a channel's
    /// data, or came back behind what the instances saw.
    pub restarts: u64,
    /// Pub/Sub messages that did not parse, or whose value did not decode.
    pub rejected: u64,
    /// Times a channel broke (see [`Channel::failure`]).
    pub channel_failures: u64,
    /// Times a broken channel healed.
    pub healed: u64,
}

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) ping_interval: Duration,
    pub(super) check_interval: Duration,
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
    target: Target,
    prefix: String,
    config: Config,
}

/// Where a [`Builder`] connects.
#[derive(Clone, Debug)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
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

    /// How often the channels that have local waiters (and those that
    /// failed) are checked against Redis (default 40 s): one `HMGET` per
    /// channel, pipelined. A channel found behind is read again, so that a
    /// Pub/Sub message lost without a reconnect delays its waiters by at
    /// most this long.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    pub fn check_interval(mut self, interval: Duration) -> Self {
        assert!(
            !interval.is_zero(),
            "longpoll: check interval must not be 0"
        );
        self.config.check_interval = interval;
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
        super::keys::check_name(&self.prefix, "x")
            .map_err(|e| BackplaneError::new(Kind::Config, e))?;
        let (server, subscriber, cluster) = match &self.target {
            Target::Single(url) => {
                let client =
                    Client::open(url.as_str()).map_err(|e| BackplaneError::new(Kind::Config, e))?;
                let subscriber = Subscriber::Single(tokio::sync::Mutex::new(None));
                (Server::Single(Box::new(client)), subscriber, None)
            }
            Target::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err(BackplaneError::new(Kind::Config, "no cluster seed given"));
                }
                let infos = seeds
                    .iter()
                    .map(|s| s.as_str().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BackplaneError::new(Kind::Config, e))?;
                let client = cluster_client(seeds, &self.config)?;
                let (shards, events) = Shards::new(infos);
                (
                    Server::Cluster(Box::new(client)),
                    Subscriber::Cluster(Box::new(shards)),
                    Some(events),
                )
            }
        };
        let publish_body = compose_modify("return ARGV[1]", false);
        let core = Arc::new(Core {
            server,
            prefix: self.prefix,
            config: self.config,
            command: CommandSlot::default(),
            channels: RwLock::new(HashMap::new()),
            subscriber,
            connected: AtomicBool::new(false),
            link: Mutex::new(crate::telemetry::Link::default()),
            telemetry: crate::telemetry::BackplaneMetrics::new(),
            stopped: AtomicBool::new(false),
            stats: Counters::default(),
            last_error: Mutex::new(None),
            sync_script: Script::new(SYNC_LUA),
            publish_script: Script::new(&publish_body),
        });
        core.command().await?;
        let start = match cluster {
            None => {
                let (sink, stream) = core.open_subscription().await?;
                Start::Single(sink, stream)
            }
            Some(events) => {
                let Subscriber::Cluster(shards) = &core.subscriber else {
                    unreachable!("built above");
                };
                shards.refresh(&core.config).await?;
                Start::Cluster(events)
            }
        };
        crate::telemetry::backplane_connected(&core.prefix);
        let task = tokio::spawn(run(Arc::clone(&core), start)).abort_handle();
        Ok(Backplane {
            shared: Arc::new(Handle { core, task }),
        })
    }
}

impl Backplane {
    /// A [`Builder`] for the Redis at `url` (`redis://[:password@]host:port/[db]`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Self::builder_for(Target::Single(url.into()))
    }

    /// A [`Builder`] for the Redis Cluster that these seed nodes belong to
    /// (`redis://[:password@]host:port/` each; one reachable seed is
    /// enough, the others are tried when it is not).
    ///
    /// On a cluster every key of a channel carries its hash tag, so that
    /// the scripts run on the shard that owns the channel's slot; updates
    /// travel by sharded Pub/Sub (`SPUBLISH`, `SSUBSCRIBE`, Redis 7.0+), on
    /// one subscription connection per master, which follow slot moves and
    /// failovers (see the [module documentation](super#redis-cluster)).
    pub fn cluster<I, S>(seeds: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder_for(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    fn builder_for(target: Target) -> Builder {
        Builder {
            target,
            prefix: String::from("longpoll:"),
            config: Config {
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_secs(2),
                ping_interval: Duration::from_secs(5),
                check_interval: Duration::from_secs(40),
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
            once_ttl: super::channel::ONCE_TTL,
            ttl: None,
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
        self.stats().reconnects
    }

    /// Whether this backplane talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.shared.core.server.is_cluster()
    }

    /// The counters of what this backplane went through (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        let c = &self.shared.core.stats;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let lost = match &self.shared.core.subscriber {
            Subscriber::Cluster(shards) => shards.lost(),
            Subscriber::Single(_) => 0,
        };
        Stats {
            reconnects: get(&c.reconnects) + lost,
            resyncs: get(&c.resyncs),
            restarts: get(&c.restarts),
            rejected: get(&c.rejected),
            channel_failures: get(&c.channel_failures),
            healed: get(&c.healed),
        }
    }

    /// Why the subscription (or the catch-up after it) last failed, if it
    /// ever did: what an operator looks at while
    /// [`is_connected`](Self::is_connected) is `false`.
    pub fn last_error(&self) -> Option<Arc<BackplaneError>> {
        self.shared.core.last_error.lock().clone()
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

//! A Redis backplane: several server instances share one version sequence.
//!
//! When one process is not enough, several run behind a load balancer. A
//! change posted to instance A must then wake the long polls held by
//! instance B, and a client that lands on another instance must keep its
//! cursor. This module keeps each channel's epoch, version and value in
//! Redis and relays every change to a local [`Broadcaster`](crate::Broadcaster) in each
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
//! | `Pstate:name` (hash)    | `epoch` (16 hex digits), `version` (integer), `value` (bytes, see [`Codec`]), `keep` (the history depth) |
//! | `Phistory:name` (list)  | the last `keep` updates as `"<version> <value>"`, when `keep > 1` |
//! | `Ponce:<len>:name:<id>` | the epoch and version of a [`Channel::publish_once`], for [`ChannelBuilder::remember_publishes`] |
//! | Pub/Sub channel `Pname` | every update as `"<epoch> <version> <value>"`              |
//!
//! `keep` belongs to the channel: the largest [`ChannelBuilder::history`]
//! any instance opened it with, whichever instance publishes.
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
//! subscribes again, and then reads every channel again, in one pipeline
//! that returns only the history entries after the version each channel
//! holds. Whatever was published meanwhile reaches the local waiters: every
//! update still in the history, in order, or else the latest value with
//! [`Resync::Lagged`](crate::Resync::Lagged). Duplicates (an update both
//! read and received) are dropped by version, and versions never go
//! backwards. A Pub/Sub message lost without a reconnect is found by the
//! periodic check ([`Builder::check_interval`], 40 s by default) of the
//! channels that have local waiters.
//!
//! If Redis lost a channel's data (a restart without persistence,
//! `FLUSHALL`, the key deleted), the first instance to notice recreates it
//! under a new [`Epoch`](crate::Epoch), in the same atomic step as the check, with the
//! channel's initial value. Every instance then
//! [`restart`](crate::Broadcaster::restart)s its broadcaster, so each client gets
//! [`Resync::OtherEpoch`](crate::Resync::OtherEpoch) and starts over from
//! the new state instead of waiting on a dead sequence.
//!
//! The same happens if Redis comes back *behind* what an instance saw
//! (restored from an older snapshot, a failover to a lagging replica): every
//! script (publish, catch-up, check) carries the position the instance
//! holds, and one that finds Redis behind it moves the channel to a new
//! epoch before anything else, so that no version is handed out again with
//! another value. An epoch change is only ever taken from a read of Redis,
//! one at a time per channel, so that an answer and a message that arrive
//! in either order never leave an instance on an older epoch.
//!
//! While Redis is unreachable, held waits keep waiting (or time out as
//! usual), and publishes fail at once with an error for which
//! [`BackplaneError::is_unavailable`] holds. A publish whose answer timed
//! out may have run: retry it with [`Channel::publish_once`] (or
//! [`Modify::once`]) to publish it at most once. Nothing panics.
//!
//! # A broken channel
//!
//! If what Redis holds for one channel cannot be used (a key of another
//! type under its name, a field that is not a number, a value that does not
//! decode), that channel alone breaks: its publishes fail with a typed
//! error, its waits fail at once with
//! [`WaitError::Closed`](crate::WaitError::Closed) (an HTTP server answers
//! `503`) instead of waiting for nothing, and [`Channel::failure`] says
//! why. The other channels and the subscription go on. The broken channel
//! is read again at every check and reconnect, and heals by itself once
//! Redis holds a usable state. [`Backplane::stats`] counts failures,
//! resyncs, epoch restarts and rejected messages for a dashboard.
//!
//! # Switching instances
//!
//! A client may poll any instance with the cursor another one gave it. A
//! client told of version `v` by A that polls B before B's subscription
//! delivered `v` holds a cursor B has not reached: B holds the poll until
//! it reaches `v` (then waits for the next change, as A would) or the poll
//! times out. It never answers with older state than the client saw (only a
//! cursor more than 255 versions ahead is answered at once, with
//! [`Resync::Ahead`](crate::Resync::Ahead)). An instance opened after some
//! updates were published loads the retained history, so it serves a
//! client up to `k` versions behind as well as the others do.
//!
//! # What a Redis incident costs
//!
//! What the tests on a private server show (`tests/redis_recovery.rs`, and
//! `tests/redis_soak.rs`, which injects all of these at random under load
//! and checks every waiter's sequence and every instance's final state):
//!
//! | incident                                          | what clients see                                    |
//! |---------------------------------------------------|-----------------------------------------------------|
//! | subscription lost, restart with persistence       | every update, late; past `k` missed, `Lagged`       |
//! | restart without persistence, `FLUSHALL`           | one `OtherEpoch` resync, from the initial value     |
//! | restored behind (old snapshot, lagging replica)   | one `OtherEpoch` resync, from what Redis holds      |
//! | a key of another type, a value that does not decode | that channel's polls answer `503` until it is fixed |
//! | Redis slower than the command timeout             | publishes fail as unavailable (retry with `publish_once`); waits go on |
//! | a Pub/Sub message lost                            | the update, up to one check interval late           |
//!
//! At worst an explicit resync, never a silently wrong value, with one
//! limit: a restore behind is seen by an instance that saw the lost
//! versions. If the only instances that publish before one of those
//! notices are instances that had not seen them either (their
//! subscription was down meanwhile), those publishes reuse the lost
//! versions, and the instances that saw them move to a new epoch when they
//! notice. Likewise, Redis found holding an epoch an instance left more
//! than 8 epoch changes ago is not recognised as behind.
//!
//! # What it costs Redis
//!
//! Per instance: two connections (commands and subscription), whatever the
//! number of channels and waiters, a `PING` every 5 seconds, and every 40
//! seconds one pipelined `HMGET` per channel that has local waiters. Per
//! publish: one round trip (`EVALSHA`; inside the script `HMGET`,
//! `HINCRBY`, `HSET`, `RPUSH` and `LTRIM` with a history, a `GET` and a
//! `SET` with an idempotency key, and one `PUBLISH`, delivered once to
//! every subscribed instance). Per held long poll: nothing. Per channel
//! opened: one `SUBSCRIBE` and two `EVALSHA`; after a reconnect, one
//! `SUBSCRIBE` for all channels and one pipeline of one `EVALSHA` per
//! channel, which returns only what the instance missed.
//!
//! # Read, modify, publish
//!
//! [`Channel::publish`] replaces the value. To derive the next value from
//! the current one atomically across instances, and to touch other keys in
//! the same step, pass a Lua snippet: see [`ModifyScript`].
//!
//! # Limits
//!
//! One Redis server (tested with 7.0), or a primary with replicas, is
//! assumed, not Redis Cluster. The local waiters of an instance only hear
//! of changes made through the backplane: do not publish on a channel's
//! broadcaster directly. An opened channel stays subscribed for as long as
//! its backplane lives, so open a bounded set of them. Redis must not evict
//! the keys (`maxmemory-policy noeviction`, the default); if it does, the
//! channel restarts under a new epoch.

mod backplane;
mod channel;
mod codec;
mod commands;
mod error;
mod keyed;
mod keys;
mod loader;
mod modify;
mod recovery;
mod relay;
mod shards;
mod slots;
mod subscription;

pub use backplane::{Backplane, Builder, Stats};
pub use channel::{Channel, ChannelBuilder};
pub use codec::{Codec, DecodeError};
pub use error::BackplaneError;
pub use keyed::{KeyedChannels, KeyedChannelsBuilder, KeyedError, Published};
pub use modify::{Modified, Modify, ModifyScript};

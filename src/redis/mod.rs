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
//! For a channel `name` under the key prefix `P` (default `longpoll:`),
//! every key carries the hash tag `{name}`, so that on a Redis Cluster
//! they all live in one slot, on one shard:
//!
//! | key or channel              | holds                                                      |
//! |-----------------------------|------------------------------------------------------------|
//! | `P{name}` (hash)            | `epoch` (16 hex digits), `version` (integer), `value` (bytes, see [`Codec`]), `keep` (the history depth), and one field `h<version>` per retained update before the current one |
//! | `P{name}:once:<id>`         | the epoch and version of a [`Channel::publish_once`], for [`ChannelBuilder::remember_publishes`] |
//! | Pub/Sub channel `P{name}`   | every update as `"<epoch> <version> <value>"` (sharded Pub/Sub on a cluster) |
//!
//! Names and prefixes hold no brace (`{`, `}`): they are the hash tag's.
//! `keep` belongs to the channel: the largest [`ChannelBuilder::history`]
//! any instance opened it with, whichever instance publishes. One hash per
//! channel is one time to live ([`ChannelBuilder::ttl`]) and one unit that
//! moves when a slot does.
//!
//! A publish is one Lua script: it bumps the version, stores the value,
//! keeps the one it replaces as history (and drops the oldest), sets the
//! time to live again and publishes, atomically, and returns the new
//! version. Every instance holds one subscription connection for all its
//! channels (one per master on a cluster) and one connection for commands;
//! a held long poll costs Redis nothing.
//!
//! # Many keys: [`KeyedChannels`]
//!
//! [`Backplane::keyed`] builds a keyed hub (one broadcaster per key, as
//! [`Keyed`](crate::keyed::Keyed)) whose keys are channels of the
//! backplane: a chat's rooms, a user's notifications, a document. A key is
//! subscribed on an instance only while it is live there (in use, or used
//! recently): its first use subscribes it and reads its state and history
//! from Redis, in a batch with the other keys that came live meanwhile
//! (up to 1 000 keys at a time: one `SUBSCRIBE` of them, or one pipeline
//! of `SSUBSCRIBE` per master, then one pipeline of reads; a resubscribe
//! after a reconnect sends up to 10 000 channels per `SUBSCRIBE`); only that key's
//! waiters wait for it. When the local sweep parks or removes the key, it
//! is unsubscribed, in batches too. Reading a key never creates anything in
//! Redis: a key that Redis does not hold is at its *absent* state (version
//! 0 of an epoch derived from its name, the hub's initial value), the same
//! on every instance, and the first publish creates it under a new epoch.
//! Keys carry a time to live (a day by default), set again by every
//! publish, so that abandoned keys stop costing memory; a key that expired
//! is a new epoch for clients holding old cursors, never a silent reuse of
//! versions. [`KeyedChannelsBuilder::max_keys`] refuses a new key with a
//! typed error before anything reaches Redis.
//!
//! # Redis Cluster
//!
//! [`Backplane::cluster`] takes the cluster's seed nodes. Commands go
//! through the `redis` crate's cluster connection, which follows `MOVED`
//! and `ASK` (with explicit retries and timeouts); when a request fails as
//! unavailable the connection is replaced, since one can get stuck for
//! good after a master is killed under load. Updates travel by sharded
//! Pub/Sub: the scripts run on the shard that owns the channel's slot and
//! `SPUBLISH` there; each instance subscribes with `SSUBSCRIBE` on one
//! connection per master that carries nothing else, with its own slot map
//! (`CLUSTER SHARDS`), because a subscription push is taken as the reply
//! to a command in flight on its connection. A channel goes back to being
//! placed, and is read again, when the server unsubscribes it (its slot
//! moved), when its master's connection is lost (a failover: placed on the
//! promoted replica once the cluster names it), when a subscribe is not
//! confirmed, or when the slot map (read again at every ping) names
//! another owner.
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
//! and checks every waiter's sequence and every instance's final state),
//! and on a private cluster (`tests/redis_cluster_backplane.rs`,
//! `tests/redis_keyed_cluster.rs`):
//!
//! | incident                                          | what clients see                                    |
//! |---------------------------------------------------|-----------------------------------------------------|
//! | subscription lost, restart with persistence       | every update, late; past `k` missed, `Lagged`       |
//! | restart without persistence, `FLUSHALL`           | one `OtherEpoch` resync, from the initial value     |
//! | restored behind (old snapshot, lagging replica)   | one `OtherEpoch` resync, from what Redis holds      |
//! | a key of another type, a value that does not decode | that channel's polls answer `503` until it is fixed |
//! | a history entry that does not decode | left out, with a warning: a client whose cursor is before it is answered `Lagged`, never another value |
//! | Redis slower than the command timeout             | publishes fail as unavailable (retry with `publish_once`); waits go on |
//! | a Pub/Sub message lost                            | the update, up to one check interval late           |
//! | a cluster master killed (its replica promoted)    | that shard's publishes fail as unavailable for about the failover's time, then every update, late; writes the replica had not received are a new epoch |
//! | a slot moved to another master                    | nothing: every update, a moment late               |
//! | a key that expired (its time to live)             | one `OtherEpoch` resync, from the absent state      |
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
//! number of channels and waiters (on a cluster: the cluster connection,
//! which holds one per node, and one subscription connection per master), a `PING` every 5 seconds, and every 40
//! seconds one pipelined `HMGET` per channel that has local waiters. Per
//! publish: one round trip (`EVALSHA`; inside the script `HMGET`,
//! `HINCRBY`, `HSET`, `HSET` and `HDEL` of history fields with a history,
//! `PEXPIRE` with a time to live, a `GET` and a `SET` with an idempotency
//! key, and one `PUBLISH`, delivered once to every subscribed instance). Per held long poll: nothing. Per channel
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
//! One Redis server (tested with 7.0), a primary with replicas, or a Redis
//! Cluster (7.0+, for sharded Pub/Sub; tested with three masters and three
//! replicas). The local waiters of an instance only hear of changes made
//! through the backplane: do not publish on a channel's broadcaster
//! directly. An opened [`Channel`] stays subscribed for as long as its
//! backplane lives, so open a bounded set of them; for topics that come
//! and go, use [`KeyedChannels`]. Redis must not evict the keys
//! (`maxmemory-policy noeviction`, the default); if it does, the channel
//! restarts under a new epoch. On a cluster, a [`ModifyScript`]'s own keys
//! must carry the channel's [hash tag](Channel::hash_tag), and the cluster
//! client retries a request whose connection dropped, which may then run
//! twice: make such publishes idempotent with [`Channel::publish_once`].

mod backplane;
mod channel;
mod codec;
mod commands;
mod error;
mod keyed;
mod keys;
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

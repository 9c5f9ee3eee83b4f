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

mod backplane;
mod channel;
mod codec;
mod error;
mod keys;
mod modify;
mod recovery;
mod subscription;

pub use backplane::{Backplane, Builder, Stats};
pub use channel::{Channel, ChannelBuilder};
pub use codec::{Codec, DecodeError};
pub use error::BackplaneError;
pub use modify::{Modified, Modify, ModifyScript};

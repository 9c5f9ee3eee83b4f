//! Long-poll notification: a value that changes, and every waiter hearing of
//! each change, with a version cursor so that no client ever misses one.
//!
//! A [`Broadcaster<T>`] holds the current value at a [`Version`] that rises
//! by one per change. A client passes the last version it saw as its
//! [`Cursor`]; a [`wait`](Broadcaster::wait) on it is ready at once if the
//! client is behind, and otherwise resolves on the next change. Waiters are
//! futures (cancel safe, O(1) to drop) or callbacks over the same list, and a
//! publish wakes all of them outside the lock without allocating per waiter.
//!
//! # Example
//!
//! The long-poll loop of one client, against a stock that two buyers take
//! from. The page was rendered at some version; its first poll passes that
//! version, so a change made between the render and the poll is not lost.
//!
//! ```
//! use longpoll::Broadcaster;
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() {
//!     let stock = Broadcaster::new(10u32);
//!     let rendered = stock.current(); // what the page showed: 10, at version 0
//!
//!     let page = tokio::spawn({
//!         let stock = stock.clone();
//!         async move {
//!             let mut cursor = rendered.cursor();
//!             loop {
//!                 match stock.wait_timeout(cursor, Duration::from_secs(30)).await {
//!                     Ok(changed) if **changed.value() == 8 => return changed.version(),
//!                     Ok(changed) => cursor = changed.cursor(), // poll again at once
//!                     Err(e) if e.is_timed_out() => {}          // 204: same cursor
//!                     Err(e) => panic!("{e}"),                  // closed: back off
//!                 }
//!             }
//!         }
//!     });
//!
//!     // Read, check and publish in one step: the stock never goes below 0.
//!     stock.modify(|n| n.checked_sub(1)).unwrap();
//!     stock.modify(|n| n.checked_sub(1)).unwrap();
//!     assert_eq!(page.await.unwrap().get(), 2);
//! }
//! ```
//!
//! # Cursor semantics
//!
//! | the client's cursor                     | a wait ...                                      |
//! |-----------------------------------------|-------------------------------------------------|
//! | [`Cursor::NEXT`] (none)                 | waits for the next change after the call        |
//! | the current version                     | waits for the next change                       |
//! | an older version                        | is ready at once with what the client missed    |
//! | a newer version                         | is ready at once with the current state         |
//! | another [`Epoch`]                       | is ready at once with the current state         |
//!
//! Every broadcaster draws a random [`Epoch`] so that a cursor from an
//! earlier process is recognised as foreign rather than trusted.
//!
//! # No lost wake-ups
//!
//! A waiter registers and checks the version under the same lock that a
//! publish takes. Either the publish came first, and the check sees the new
//! version, or the waiter was registered first, and the publish takes it out
//! of the list and wakes it.
//!
//! What is checked, and how: the loom models in `loom/tests/loom.rs` (one
//! broadcaster) and `loom/tests/keyed.rs` (the keyed hub) run on loom's
//! mutex, atomics and `Arc`, swapped in through the crate's sync shim.
//! Each is explored for every interleaving loom generates with at most two
//! preemptions per execution (`LOOM_MAX_PREEMPTIONS=2`, as CI runs them),
//! which is not every interleaving there is. They cover: a wait racing a
//! publish, a close, or a cancelled wait beside it; a `Cursor::NEXT` pinned
//! before a racing publish; a stale drop after the list was taken; a stale
//! waiter after restarts back to its very cursor; a waker that changes on
//! re-poll; a callback and a future on one list racing a publish and a
//! close; the last two handles dropped at once; a stream's place under the
//! waiter limit; a keyed sweep racing a wait, a publish, a close and the
//! hub's drop. Stress tests (`tests/stress.rs`, `tests/keyed_cleanup.rs`)
//! race many threads and tasks for what the models are too small to reach.
//!
//! # Handles and closing
//!
//! Every [`Broadcaster`] value is a handle. Futures borrowed from one,
//! [`OwnedWait`]s, [`ChangedStream`]s and [`Registration`]s are not: when
//! the last handle is dropped the broadcaster closes, and every waiter
//! learns it ([`WaitError::Closed`]), as a `tokio::sync::watch` receiver
//! does when its sender goes.
//!
//! # User code and locks
//!
//! No user code runs under the broadcaster's lock, with one documented
//! exception: the closure of [`Broadcaster::modify`]. Wakers, callbacks and
//! the `Drop` of values run after the lock is released. If a waker or a
//! callback panics, every other waiter is still woken or called, and the
//! first panic then resumes in the caller of the publish (or close); the
//! publish has taken effect, and [`Broadcaster::version`] says where the
//! sequence stands.
//!
//! # History and lagging
//!
//! By default only the current value is kept: a client that is behind gets
//! the latest state, flagged [`Resync::Lagged`] if it skipped versions. With
//! [`Builder::history`] set to `k`, a client up to `k` versions behind
//! receives every update it missed, in order, in one [`Changed`]; an older
//! one receives what is retained and the number of versions it lost. Nothing
//! is ever dropped silently.
//!
//! # Limits, cancellation and closing
//!
//! Dropping a pending [`Wait`] or [`Registration`] unregisters it at once, in
//! O(1): [`Broadcaster::waiter_count`] shows it immediately.
//! [`Builder::max_waiters`] bounds the list; past it a wait fails with
//! [`WaitError::Full`]. A stream holds its place from the first time it
//! waits until it ends, so a running stream never meets `Full`. [`Broadcaster::close`] answers every waiter with
//! [`WaitError::Closed`], for graceful shutdown.
//!
//! # Compared to `tokio::sync`
//!
//! [`tokio::sync::watch`] keeps a version per receiver, inside the process: a
//! long-poll client is a new receiver per request, with no way to say "I last
//! saw version 41" or to learn that a cursor is from before a restart.
//! [`tokio::sync::broadcast`] queues every value per receiver and reports
//! lag, but has no "current value" for a client that arrives late. `longpoll`
//! makes the cursor a value the client carries between requests.
//!
//! # Observability
//!
//! With the `tracing` feature the crate emits [`tracing`] events, with
//! targets under `longpoll::`; with `metrics` it records metrics named
//! `longpoll_*` through the [`metrics`] facade. Without them nothing of
//! either is compiled in. No span is ever created (none per waiter), and no
//! metric label names a key or a channel (a channel's name appears in the
//! backplane's events only). Events of every publish are `TRACE`, of every
//! refused wait or resync `DEBUG`, of incidents `INFO` and `WARN`.
//!
//! A broadcaster registers its metric handles with the recorder in place when
//! it is built (a keyed hub does so once, for all its keys), and a backplane
//! when it connects: install the recorder before building broadcasters and
//! connecting backplanes. A registration or a publish then looks nothing
//! up; a registration costs one gauge increment, a publish that wakes
//! anyone two clock reads and a few atomic operations, and nothing is done
//! per waiter beyond counting it. No recorder or subscriber code runs under
//! the crate's locks.
//!
//!
//! | name | kind | labels / fields | what |
//! |------|------|-----------------|------|
//! | `longpoll_waiters` | gauge | | waiters in the lists now, over every broadcaster: futures, callbacks, and streams while they wait (a stream between two items is not counted, unlike `waiter_count`) |
//! | `longpoll_publishes_total` | counter | | publishes: `notify`, `modify`, `publish_at`, `restart` |
//! | `longpoll_fanout_duration_seconds` | histogram | | for each publish that woke anyone: the time to call every waker and callback, after the lock is released (not until the woken tasks have run) |
//! | `longpoll_fanout_waiters` | histogram | | for each publish that woke anyone: how many it woke |
//! | `longpoll_refused_waits_total` | counter | `reason`: `full` (waiter limit), `closed` (closed, or its backplane channel is broken), `too_many_keys` (a keyed hub's key limit) | waits refused at once: futures, callbacks, streams, and the HTTP layer's answers made without a wait; a wait that was pending when its broadcaster closed is not counted |
//! | `longpoll_resyncs_total` | counter | `reason`: `lagged`, `ahead`, `other_epoch` | answers of `LongPoll::respond`, `KeyedPoll` (one per key) and SSE streams that tell a client to start over; a first answer without a cursor (`initial`) is not counted |
//! | `longpoll_backplane_connected` | gauge | | backplanes whose subscription is up (subscribed and caught up) |
//! | `longpoll_backplane_reconnects_total` | counter | | subscriptions lost (as `Stats::reconnects`) |
//! | `longpoll_backplane_downtime_seconds` | histogram | | from a subscription lost to subscribed and caught up again |
//! | `longpoll_backplane_catchup_versions` | histogram | | for each catch-up after (re)subscribing: the versions it moved the channels forward, summed over channels (updates missed while the subscription was down); channels moved to a new epoch are counted in `longpoll_backplane_epoch_restarts_total` instead |
//! | `longpoll_backplane_catchup_duration_seconds` | histogram | | for each catch-up: the time to read and apply every channel (one pipeline) |
//! | `longpoll_backplane_epoch_restarts_total` | counter | | channels moved to a new epoch: Redis lost their data or came back behind (as `Stats::restarts`) |
//! | `longpoll_backplane_channel_failures_total`, `..._channel_heals_total` | counter | | channels that broke (unusable data in Redis), and that healed |
//! | `longpoll_backplane_rejected_messages_total` | counter | | Pub/Sub messages that did not parse or decode |
//! | `longpoll_backplane_unreadable_history_total` | counter | | history entries read from Redis that did not parse or decode, left out (clients see a lag there) |
//! | `longpoll_backplane_delivery_duration_seconds` | histogram | | on the instance that publishes (a channel's or a keyed hub's `publish`, `publish_once`, `modify`): from just before the publish script is sent until that publish's own Pub/Sub message comes back on this instance's subscription, matched by channel, epoch and version; this instance's clock only, whichever of the script's reply and the message comes first. Timed only while the subscription is up, one publish in flight per channel: a publish made while another of its channel is still out (concurrent ones, or one right after another whose message has not come back yet) is not sampled. A publish whose message is lost with the subscription, that published nothing, or that failed records nothing |
//! | `longpoll_backplane_missed_versions_total` | counter | | versions the periodic check (`Builder::check_interval`) found a channel missing that the read it started brought in: Pub/Sub messages lost without a reconnect (versions missed while the subscription was down are in `longpoll_backplane_catchup_versions`) |
//! | `longpoll::publish` "published" | `TRACE` event | `version`, `waiters` (woken), `fanout_ns` | every publish |
//! | `longpoll::publish` "restarted under a new epoch" | `DEBUG` event | `epoch`, `version`, `waiters`, `fanout_ns` | every restart |
//! | `longpoll::publish` "closed", "failing: waiters answered closed" | `DEBUG` event | `waiters` | a close; a backplane channel that broke, answering its waiters |
//! | `longpoll::wait` "wait refused" | `DEBUG` event | `reason` (as the counter), `limit` | every refused wait |
//! | `longpoll::resync` "resync" | `DEBUG` event | `reason` (as the counter), `skipped` (lagged), `endpoint`: `long_poll`, `keyed_poll`, `sse` | every resync answer |
//! | `longpoll::backplane` "backplane connected" | `INFO` event | `prefix` | `Builder::connect` succeeded |
//! | `longpoll::backplane` "backplane subscription lost; reconnecting" | `WARN` event | `reason` | the subscription dropped |
//! | `longpoll::backplane` "backplane cannot subscribe; retrying with backoff" | `WARN` event, then `DEBUG` ("... yet", with `attempts`) | `error` | the first failed attempt of an outage, then each next one |
//! | `longpoll::backplane` "backplane subscription restored" | `INFO` event | `downtime_ms`, `attempts` | subscribed and caught up after a loss (`DEBUG` "backplane subscribed" the first time) |
//! | `longpoll::backplane` "backplane caught up" | `INFO` event | `channels`, `versions`, `restarted`, `elapsed_ms` | every catch-up of at least one channel |
//! | `longpoll::backplane` "channel restarted under a new epoch: ..." | `WARN` event | `channel`, `epoch` | an epoch restart |
//! | `longpoll::backplane` "channel broken; ...", "channel healed" | `WARN`, `INFO` event | `channel`, `error` | a channel that breaks or heals |
//! | `longpoll::backplane` "message rejected; ..." | `WARN` event | `channel`, `error` | a Pub/Sub message that did not parse or decode |
//! | `longpoll::backplane` "unreadable history entries left out; ..." | `WARN` event | `channel`, `entries` | a read of a channel found history entries that did not parse or decode |
//! | `longpoll::backplane` "backplane stopped" | `DEBUG` event | | the last handle dropped |
//!
//! [`tracing`]: https://docs.rs/tracing
//! [`metrics`]: https://docs.rs/metrics
//!
//! # Features
//!
//! | feature | default | enables |
//! |---------|---------|---------|
//! | `tokio` | yes     | [`Broadcaster::wait_timeout`] and [`Keyed::sweeper`](keyed::Keyed::sweeper), on tokio's timer |
//! | `http`  | yes     | [`http`]: the long-poll endpoint on the `http` crate's types (query and `If-None-Match` parsing, `200`/`204`/`400`/`503` answers, one body encoding per update, the envelope of a batch, a poll over several keys); [`sse`]: server-sent events on the same cursor (`Last-Event-ID` resume, keep-alive comments, lag as a `resync` event) |
//! | `tower` | no      | `tower::Service` for [`http::LongPoll`], [`http::KeyedPoll`] and [`sse::SseEndpoint`] (depends on `tower-service` only) |
//! | `axum`  | no      | [`http::PollRequest`] and [`http::KeyedRequest`] as axum extractors whose rejection is the endpoint's `400` (depends on `axum-core`) |
//! | `redis` | no      | [`redis`]: a Redis backplane, so that several server instances share one version sequence and wake each other's waiters |
//! | `tracing` | no    | events through `tracing` 0.1 (see [Observability](#observability)) |
//! | `metrics` | no    | metrics through the `metrics` 0.24 facade (see [Observability](#observability)) |
//!
//! [`tokio::sync::watch`]: https://docs.rs/tokio/latest/tokio/sync/watch/index.html
//! [`tokio::sync::broadcast`]: https://docs.rs/tokio/latest/tokio/sync/broadcast/index.html
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod broadcaster;
mod builder;
mod changed;
mod error;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod keyed;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod registration;
mod shared;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod sse;
mod stream;
mod sync;
mod telemetry;
mod version;
mod wait;
mod waiters;

pub use broadcaster::Broadcaster;
pub use builder::Builder;
pub use changed::{Changed, Resync, Update};
pub use error::{ClosedError, ParseEpochError, ParseVersionError, PublishError, WaitError};
pub use version::{Cursor, Epoch, Version};
#[cfg(feature = "tokio")]
pub use wait::WaitTimeout;
pub use wait::{ChangedStream, OwnedWait, Registration, Wait};

/// The README's code, compiled and run as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

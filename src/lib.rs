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
//! # Features
//!
//! | feature | default | enables |
//! |---------|---------|---------|
//! | `tokio` | yes     | [`Broadcaster::wait_timeout`] and [`Keyed::sweeper`](keyed::Keyed::sweeper), on tokio's timer |
//! | `http`  | yes     | [`http`]: the long-poll endpoint on the `http` crate's types (query and `If-None-Match` parsing, `200`/`204`/`400`/`503` answers, one body encoding per update, the envelope of a batch, a poll over several keys); [`sse`]: server-sent events on the same cursor (`Last-Event-ID` resume, keep-alive comments, lag as a `resync` event) |
//! | `tower` | no      | `tower::Service` for [`http::LongPoll`], [`http::KeyedPoll`] and [`sse::SseEndpoint`] (depends on `tower-service` only) |
//! | `axum`  | no      | [`http::PollRequest`] and [`http::KeyedRequest`] as axum extractors whose rejection is the endpoint's `400` (depends on `axum-core`) |
//! | `redis` | no      | [`redis`]: a Redis backplane, so that several server instances share one version sequence and wake each other's waiters |
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

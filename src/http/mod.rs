//! The HTTP side of a long poll, on the [`http`] crate's types: any
//! framework that speaks `http::Request`/`http::Response` (hyper, axum,
//! anything built on them) serves a long-poll endpoint in a few lines.
//!
//! [`LongPoll<T>`] wraps a [`Broadcaster<T>`] with an encoder that turns an
//! [`Update<T>`] into bytes. For each request it:
//!
//! 1. parses `since`, `epoch` and `timeout` from the query and `If-None-Match`
//!    from the headers into an owned [`PollRequest`], or answers `400` with
//!    `{"error": "..."}` saying what is wrong ([`RequestError`]);
//! 2. drops the request, and waits on the broadcaster for at most the
//!    timeout;
//! 3. answers:
//!
//! | outcome                                   | status | headers                                   |
//! |-------------------------------------------|--------|-------------------------------------------|
//! | a change after the cursor                 | `200`  | `ETag: "<epoch>-<version>"`, `Cache-Control: no-store` |
//! | a cursor the server did not issue         | `200`  | at once, the current state, as for a change |
//! | timeout, the client named a cursor        | `204`  | `Cache-Control: no-store`                 |
//! | timeout, the client named no cursor       | `200`  | the current state, as for a change        |
//! | broadcaster closed (shutdown)             | `503`  | `Retry-After: 1` (configurable)           |
//! | waiter limit reached                      | `503`  | `Retry-After: 5` (configurable)           |
//! | a method other than `GET` or `HEAD`       | `405`  | `Allow: GET, HEAD` (in [`LongPoll::handle`]) |
//!
//! # The query and the headers
//!
//! | input                  | form                                  | meaning                                  |
//! |------------------------|---------------------------------------|------------------------------------------|
//! | `since`                | unsigned 64-bit decimal               | the last version the client saw          |
//! | `epoch`                | a string of at most 64 bytes; this server's are 16 hex digits | the sequence that version belongs to |
//! | `timeout`              | decimal seconds, `0..=max` (300)      | how long to hold (default 30 s)          |
//! | `If-None-Match`        | `*` or a list of entity tags (RFC 9110) | the same as `epoch` + `since`; the query's `since` wins |
//!
//! Names and values are percent-decoded; unknown parameters are ignored; no
//! input makes a parser panic. The parsers are plain functions
//! ([`PollRequest::parse`], [`parse_timeout`], [`IfNoneMatch::parse`],
//! [`KeyedRequest::parse`], [`Form::parse`], [`percent_decode`],
//! [`media_type_is`]) that can be tested and fuzzed without a server.
//!
//! # A cursor the server did not issue
//!
//! A client must never be stuck retrying its cursor. An `epoch` that is not
//! this server's, whatever its form (another format, another deployment,
//! garbage, repeated), is *foreign*: the poll is answered at once with the
//! current state, as a cursor from another epoch is
//! ([`PollRequest::is_foreign`], [`Resync::OtherEpoch`]). Only an epoch over
//! [`MAX_EPOCH_LEN`] bytes is a `400`. A malformed `since` or `timeout` is
//! still a `400`: it is not a cursor the server issued either, but a request
//! the client wrote wrong.
//!
//! # `If-None-Match`
//!
//! As RFC 9110 defines it: `*` or a comma-separated list of entity tags,
//! weak (`W/"..."`) or strong, compared weakly. A list that holds the
//! current ETag is held as for the current cursor; a list of other tags
//! only is answered `200` at once (from the newest of this server's tags in
//! it, so a client that is behind still receives what it missed); `*` is
//! held as for the current cursor. An unparsable header is ignored, as if
//! absent, never a `400`. Several `If-None-Match` headers are one list.
//!
//! A page on another origin cannot send `If-None-Match` without a CORS
//! preflight on every poll: cross-origin, send the cursor in the query (see
//! [CORS](#cors)).
//!
//! # Bodies: one encoding per update
//!
//! A publish wakes every held request at once, and each answers with the
//! same update. Its bytes are encoded once, kept, and handed to every
//! waiter as a clone of one [`Bytes`] (a reference count, not a copy): a
//! fan-out to 100 000 waiters runs the encoder once. The cache knows an
//! update by its value's allocation, so that one cache serves every key of
//! a hub ([`LongPoll::for_broadcaster`], [`KeyedPoll`]) and event streams
//! too ([`EventStreams`](crate::sse::EventStreams) `::from(&poll)`).
//!
//! [`BodyFormat::Latest`] (the default) sends the encoder's bytes for the
//! newest update as the whole body. [`BodyFormat::Envelope`] sends what an
//! event stream carries, in one answer:
//!
//! # The envelope
//!
//! `200`, `Content-Type: application/json`, `Cache-Control: no-store`,
//! `ETag: "<epoch>-<version>"` of the newest update:
//!
//! ```text
//! {"epoch":"1f2e3d4c5b6a7988","version":42,
//!  "updates":[{"version":41,"data":<the encoder's bytes>},{"version":42,"data":...}],
//!  "resync":{"reason":"lagged","skipped":3}}
//! ```
//!
//! | field      | what |
//! |------------|------|
//! | `epoch`    | the epoch of the sequence, 16 hex digits: send it back as `epoch` |
//! | `version`  | the newest version in `updates`: send it back as `since` |
//! | `updates`  | every update after the client's cursor that the broadcaster retains, oldest first, never empty; each `data` is the encoder's bytes, which must be JSON |
//! | `resync`   | only when the answer is a new baseline (the client replaces what it shows rather than appending): `{"reason":"lagged","skipped":N}` (N versions are gone), `{"reason":"ahead"}` (a cursor newer than the current version), `{"reason":"other-epoch"}` (another epoch, or a foreign cursor), `{"reason":"initial"}` (no cursor) |
//!
//! The reason words are those of the SSE [`resync`](crate::sse#events)
//! event. In the envelope format a request that names no cursor at all is
//! answered at once with a baseline (every retained update, `"reason":
//! "initial"`), as an event stream starts. The envelope of one update
//! without a resync, what every waiter woken by a publish receives, is made
//! once and shared as the bodies are.
//!
//! # Several keys in one poll
//!
//! [`KeyedPoll`] serves a [`Keyed`](crate::keyed::Keyed) hub: the long poll
//! of each key ([`KeyedPoll::long_poll`]), and one poll over several keys
//! ([`KeyedPoll::handle`], over [`Keyed::wait_many`](crate::keyed::Keyed::wait_many)):
//!
//! ```text
//! GET /stock?keys=apples,pears&cursors=1f2e3d4c5b6a7988-41,0a1b2c3d4e5f6789-7&timeout=30
//! ```
//!
//! | input     | form | meaning |
//! |-----------|------|---------|
//! | `keys`    | keys separated by commas once percent-decoded, 1 to 16 of them ([`KeyedPollConfig::max_keys`]), each 1 to 128 bytes ([`KeyedPollConfig::max_key_len`]), none twice | the keys to wait on |
//! | `cursors` | optional; `<epoch>-<version>` per key, in the order of `keys`; an element may be empty | where the client stands on each key; no cursor: the key's state at once |
//! | `timeout` | as for one key | |
//!
//! The poll is held until one key changes; then every key that has news at
//! that moment is answered. A key without a cursor, or with one the server
//! did not issue (foreign, never an error; only a cursor over
//! [`MAX_CURSOR_LEN`] bytes is a `400`), is answered at once. The answer is
//! `200 application/json`, `Cache-Control: no-store`, one envelope per key
//! that has news, in the order of `keys`, each naming its key:
//!
//! ```text
//! {"answers":[{"key":"pears","epoch":"0a1b2c3d4e5f6789","version":8,"updates":[{"version":8,"data":9}]}]}
//! ```
//!
//! The client keeps `epoch-version` of each answered key as its next
//! cursor, and the cursors of the others. A timeout is `204`; a key the hub
//! cannot create ([`TooManyKeys`](crate::keyed::TooManyKeys)) is `503` with
//! `Retry-After`. A key whose broadcaster is closed or full is left out of
//! an answer that has other keys' news, and is a `503` with `Retry-After`
//! when no ready key has any.
//!
//! # Use it in hyper
//!
//! [`LongPoll::handle`] takes the request by value: it parses what it needs
//! into an owned [`PollRequest`], drops the request, then waits. A held poll
//! thus keeps no header bytes (nor the read buffer they point into) alive.
//! Its future is what `service_fn` wants, and [`FullBody`] is a hyper body.
//!
//! ```no_run
//! use bytes::Bytes;
//! use hyper::{server::conn::http1, service::service_fn};
//! use hyper_util::rt::TokioIo;
//! use longpoll::{http::LongPoll, Broadcaster};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let stock = Broadcaster::new(10u32);
//!     let poll = LongPoll::new(stock.clone(), |u| {
//!         Bytes::from(format!(r#"{{"count":{},"version":{}}}"#, u.value(), u.version()))
//!     });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9999").await?;
//!     loop {
//!         let (tcp, _) = listener.accept().await?;
//!         let poll = poll.clone();
//!         // The request moves into `handle`, which drops it before waiting.
//!         let service = service_fn(move |req| poll.handle(req));
//!         // A task per connection: a held poll must not block the next client.
//!         tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
//!     }
//! }
//! ```
//!
//! A handler that routes several paths calls [`LongPoll::parse`], drops the
//! request, then [`LongPoll::wait`] and [`LongPoll::respond`].
//!
//! # Use it in axum
//!
//! With the `axum` feature, [`PollRequest`] is an extractor (its rejection
//! is the endpoint's own `400`): axum drops the request before the handler
//! waits. The response is axum's as it is.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod with_axum {
//! use axum::{extract::State, response::IntoResponse, routing::get, Router};
//! use bytes::Bytes;
//! use longpoll::http::{LongPoll, PollRequest};
//! use longpoll::Broadcaster;
//!
//! async fn status(State(poll): State<LongPoll<u32>>, request: PollRequest) -> impl IntoResponse {
//!     poll.serve(request).await
//! }
//!
//! pub async fn main() -> std::io::Result<()> {
//!     let stock = Broadcaster::new(10u32);
//!     let poll = LongPoll::new(stock.clone(), |u| Bytes::from(u.value().to_string()));
//!     let app = Router::new().route("/status", get(status)).with_state(poll);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9999").await?;
//!     axum::serve(listener, app).await
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "axum")]
//! #     let _ = with_axum::main;
//! # }
//! ```
//!
//! The extractor reads its [`PollConfig`] from the state (`PollConfig:
//! FromRef<S>`): implemented for a `LongPoll` and a [`KeyedPoll`] state;
//! for a state of your own, implement `FromRef<YourState> for PollConfig`.
//! Without the feature, take axum's `Request` and call
//! [`LongPoll::handle`].
//!
//! # tower
//!
//! With the `tower` feature, [`LongPoll`], [`KeyedPoll`] and
//! [`SseEndpoint`](crate::sse::SseEndpoint) are `tower::Service<http::Request<B>>`
//! for any body `B`: always ready, never failing (`Error = Infallible`).
//! axum's `Router::route_service` and hyper-util's `TowerToHyperService`
//! take them as they are, and `tower-http` layers wrap them:
//!
//! ```no_run
//! # #[cfg(feature = "tower")]
//! # mod with_tower {
//! use std::time::Duration;
//! use axum::Router;
//! use bytes::Bytes;
//! use longpoll::http::LongPoll;
//! use longpoll::Broadcaster;
//! use tower::ServiceBuilder;
//! use axum::http::StatusCode;
//! use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};
//!
//! pub fn app(stock: Broadcaster<u32>) -> Router {
//!     let poll = LongPoll::new(stock, |u| Bytes::from(u.value().to_string()));
//!     let layers = ServiceBuilder::new()
//!         .layer(TraceLayer::new_for_http())
//!         // Longer than the longest poll (300 s), or held polls are cut.
//!         .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(310)));
//!     Router::new().route_service("/status", layers.service(poll))
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "tower")]
//! #     let _ = with_tower::app;
//! # }
//! ```
//!
//! A `TimeoutLayer` must outlast [`PollConfig::max_timeout`], or it answers
//! held polls itself. `CompressionLayer` compresses long-poll answers, and
//! leaves event streams alone with its default predicate (see
//! [the SSE module](crate::sse#compression)).
//!
//! # CORS
//!
//! A page on another origin polls without a preflight per poll when the
//! request is a CORS "simple request": `GET`, no custom header, the cursor
//! in the query (`since` and `epoch`, not `If-None-Match`). Every answer
//! (`200`, `204`, `400`, `503`) must then carry
//! `Access-Control-Allow-Origin`, and expose `ETag` and `Retry-After` to the
//! page's script ([`EXPOSED_HEADERS`]). With the `tower` feature,
//! `tower-http`'s `CorsLayer` does both, for every answer of the service it
//! wraps (and answers preflights itself, with an empty [`FullBody`]):
//!
//! ```no_run
//! # #[cfg(feature = "tower")]
//! # mod with_cors {
//! use axum::http::{HeaderValue, Method};
//! use longpoll::http::EXPOSED_HEADERS;
//! use tower_http::cors::CorsLayer;
//!
//! pub fn cors() -> CorsLayer {
//!     CorsLayer::new()
//!         .allow_origin(HeaderValue::from_static("https://app.example"))
//!         .allow_methods([Method::GET])
//!         .expose_headers(EXPOSED_HEADERS)
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "tower")]
//! #     let _ = with_cors::cors;
//! # }
//! ```
//!
//! # A browser client
//!
//! [`CLIENT_JS`] is `client/longpoll.js`, an ES module without
//! dependencies that speaks all of the above from a page: the cursor in the
//! query (so no preflight from another origin), the `204` loop, `503` and
//! `Retry-After` with a capped, jittered backoff, the envelope's batches
//! and resync reasons, several keys in one poll, and event streams with the
//! long poll as a fallback. [`client_js_response`] serves it in one line
//! (`.route("/longpoll.js", get(|| async { client_js_response() }))` in
//! axum); a page then calls `subscribe(url, { onUpdate, onResync })`.
//!
//! # Shutdown
//!
//! Close the broadcaster ([`Broadcaster::close`]) when the server stops
//! accepting: every held request is answered at once with `503` and
//! `Retry-After`, instead of keeping the server up for the rest of its
//! timeout.
//!
//! [`Broadcaster<T>`]: crate::Broadcaster
//! [`Broadcaster::close`]: crate::Broadcaster::close
//! [`Update<T>`]: crate::Update
//! [`Bytes`]: bytes::Bytes
//! [`Resync::OtherEpoch`]: crate::Resync::OtherEpoch

pub(crate) mod answer;
#[cfg(feature = "axum")]
mod axum;
mod client;
mod form;
mod if_none_match;
mod keyed;
mod keyed_request;
mod long_poll;
mod request;
#[cfg(feature = "tower")]
mod service;

pub use answer::{error_response, BodyFormat, FullBody, APPLICATION_JSON};
pub use client::{client_js_response, CLIENT_JS, TEXT_JAVASCRIPT};

/// The response headers a page on another origin must be allowed to read:
/// `ETag` (its next cursor) and `Retry-After` (how long to back off after a
/// `503`). For `tower-http`'s `CorsLayer::expose_headers`, or a hand-written
/// `Access-Control-Expose-Headers`.
pub const EXPOSED_HEADERS: [::http::header::HeaderName; 2] =
    [::http::header::ETAG, ::http::header::RETRY_AFTER];
pub use form::{media_type_is, percent_decode, Form, FormError};
pub use if_none_match::{etag, IfNoneMatch};
pub use keyed::{KeyedPoll, KeyedResponseFuture};
pub use keyed_request::{KeyedPollConfig, KeyedRequest, KeyedRequestError, MAX_CURSOR_LEN};
pub use long_poll::{LongPoll, PollWait, ResponseFuture};
pub use request::{parse_timeout, PollConfig, PollRequest, RequestError, MAX_EPOCH_LEN};

pub(crate) use answer::{is_get_or_head, method_not_allowed, unavailable};

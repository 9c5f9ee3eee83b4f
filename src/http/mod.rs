//! The HTTP side of a long poll, on the [`http`] crate's types: any
//! framework that speaks `http::Request`/`http::Response` (hyper, axum,
//! anything built on them) serves a long-poll endpoint in a few lines.
//!
//! [`LongPoll<T>`] wraps a [`Broadcaster<T>`] with an encoder that turns an
//! [`Update<T>`] into the bytes of a response body. For each request it:
//!
//! 1. parses `since`, `epoch` and `timeout` from the query and `If-None-Match`
//!    from the headers into a [`PollRequest`], or answers `400` with
//!    `{"error": "..."}` saying what is wrong ([`RequestError`]);
//! 2. waits on the broadcaster for at most the timeout;
//! 3. answers:
//!
//! | outcome                                   | status | headers                                   |
//! |-------------------------------------------|--------|-------------------------------------------|
//! | a change after the cursor                 | `200`  | `ETag: "<epoch>-<version>"`, `Cache-Control: no-store` |
//! | timeout, the client named a cursor        | `204`  | `Cache-Control: no-store`                 |
//! | timeout, the client named no cursor       | `200`  | the current state, as for a change        |
//! | broadcaster closed (shutdown)             | `503`  | `Retry-After: 1` (configurable)           |
//! | waiter limit reached                      | `503`  | `Retry-After: 5` (configurable)           |
//!
//! # One encoding per version
//!
//! A publish wakes every held request at once, and each answers with the
//! same version. The body of each `(epoch, version)` is encoded once, kept,
//! and handed to every waiter as a clone of one [`Bytes`] (a reference
//! count, not a copy): a fan-out to 100 000 waiters runs the encoder once.
//!
//! # The query and the headers
//!
//! | input                  | form                                  | meaning                                  |
//! |------------------------|---------------------------------------|------------------------------------------|
//! | `since`                | unsigned 64-bit decimal               | the last version the client saw          |
//! | `epoch`                | 1 to 16 hex digits                    | the sequence that version belongs to     |
//! | `timeout`              | decimal seconds, `0..=max` (300)      | how long to hold (default 30 s)          |
//! | `If-None-Match`        | `"<epoch>-<version>"` (an earlier ETag) | the same as `epoch` + `since`; the query's `since` wins |
//!
//! Names and values are percent-decoded; unknown parameters are ignored; no
//! input makes a parser panic. The parsers are plain functions
//! ([`PollRequest::parse`], [`parse_timeout`], [`parse_if_none_match`],
//! [`Form::parse`], [`percent_decode`], [`media_type_is`]) that can be tested
//! and fuzzed without a server.
//!
//! # Use it in hyper
//!
//! A handler is one call; [`Full`] wraps the body for hyper.
//!
//! [`Full`]: https://docs.rs/http-body-util/latest/http_body_util/struct.Full.html
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//! use longpoll::{http::LongPoll, Broadcaster};
//! use std::convert::Infallible;
//!
//! async fn status(
//!     poll: LongPoll<u32>,
//!     req: Request<Incoming>,
//! ) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(poll.handle(req.uri(), req.headers()).await.map(Full::new))
//! }
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
//!         let service = service_fn(move |req| status(poll.clone(), req));
//!         // A task per connection: a held poll must not block the next client.
//!         tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
//!     }
//! }
//! ```
//!
//! # Use it in axum
//!
//! The same handler, with the URI and headers as extractors and the body
//! converted into axum's:
//!
//! ```no_run
//! use axum::{body::Body, extract::State, http::{HeaderMap, Uri}, response::Response};
//! use axum::{routing::get, Router};
//! use bytes::Bytes;
//! use longpoll::{http::LongPoll, Broadcaster};
//!
//! async fn status(State(poll): State<LongPoll<u32>>, uri: Uri, headers: HeaderMap) -> Response {
//!     poll.handle(&uri, &headers).await.map(Body::from)
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let stock = Broadcaster::new(10u32);
//!     let poll = LongPoll::new(stock.clone(), |u| Bytes::from(u.value().to_string()));
//!     let app = Router::new().route("/status", get(status)).with_state(poll);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9999").await?;
//!     axum::serve(listener, app).await
//! }
//! ```
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

mod form;
mod request;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, RETRY_AFTER};
use ::http::{Response, StatusCode, Uri};
use bytes::Bytes;
use parking_lot::Mutex;

pub use form::{media_type_is, percent_decode, Form, FormError};
pub use request::{
    etag, parse_if_none_match, parse_timeout, PollConfig, PollRequest, RequestError,
};

use crate::{Broadcaster, Changed, Epoch, Update, Version, WaitError, WaitTimeout};

/// `application/json`, the default content type of a [`LongPoll`]'s bodies.
pub const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// How many recent versions keep their encoded body.
const KEPT_BODIES: usize = 8;

/// A long-poll endpoint over a [`Broadcaster<T>`](crate::Broadcaster): parses
/// requests, waits, and answers with bodies encoded once per version.
///
/// `LongPoll` is a cheap handle (clone it into each connection); clones
/// share the broadcaster and the body cache.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http::{HeaderMap, StatusCode, Uri};
/// use longpoll::{http::LongPoll, Broadcaster};
///
/// let stock = Broadcaster::new(10u32);
/// let poll = LongPoll::new(stock.clone(), |u| Bytes::from(u.value().to_string()));
/// let uri = |q: &str| -> Uri { format!("/status?{q}").parse().unwrap() };
///
/// // Up to date, nothing happens within the timeout: 204.
/// let resp = poll.handle(&uri("since=0&timeout=1"), &HeaderMap::new()).await;
/// assert_eq!(resp.status(), StatusCode::NO_CONTENT);
///
/// // Behind: answered at once, with the ETag to send back next time.
/// stock.notify(9)?;
/// let resp = poll.handle(&uri("since=0"), &HeaderMap::new()).await;
/// assert_eq!(resp.status(), StatusCode::OK);
/// assert_eq!(resp.body(), "9");
/// let etag = format!("\"{}-1\"", stock.epoch());
/// assert_eq!(resp.headers()["etag"], etag.as_str());
///
/// // Malformed: 400 with a JSON message.
/// let resp = poll.handle(&uri("since=-1"), &HeaderMap::new()).await;
/// assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
/// # Ok(())
/// # }
/// ```
pub struct LongPoll<T> {
    broadcaster: Broadcaster<T>,
    config: PollConfig,
    content_type: HeaderValue,
    bodies: Arc<Bodies<T>>,
}

type Encoder<T> = dyn Fn(&Update<T>) -> Bytes + Send + Sync;

/// The encoder and the bodies of the last few versions.
struct Bodies<T> {
    encode: Box<Encoder<T>>,
    /// Newest last. A handful of entries: waiters answer with the version
    /// that woke them, which is almost always the newest.
    recent: Mutex<VecDeque<(Epoch, Version, Bytes)>>,
}

impl<T> LongPoll<T> {
    /// An endpoint over `broadcaster` whose `200` bodies are what `encode`
    /// makes of an update, sent as `application/json`, with the default
    /// [`PollConfig`].
    ///
    /// `encode` runs once per version, under a lock shared by this handle's
    /// clones: keep it short, and do not call back into this `LongPoll` from
    /// it.
    pub fn new<F>(broadcaster: Broadcaster<T>, encode: F) -> Self
    where
        F: Fn(&Update<T>) -> Bytes + Send + Sync + 'static,
    {
        LongPoll {
            broadcaster,
            config: PollConfig::default(),
            content_type: APPLICATION_JSON,
            bodies: Arc::new(Bodies {
                encode: Box::new(encode),
                recent: Mutex::new(VecDeque::with_capacity(KEPT_BODIES)),
            }),
        }
    }

    /// Uses `config` for timeouts and `Retry-After`.
    #[must_use]
    pub fn with_config(mut self, config: PollConfig) -> Self {
        self.config = config;
        self
    }

    /// Sends `200` bodies with this `Content-Type` instead of
    /// `application/json`.
    #[must_use]
    pub fn with_content_type(mut self, content_type: HeaderValue) -> Self {
        self.content_type = content_type;
        self
    }

    /// The broadcaster this endpoint waits on.
    pub fn broadcaster(&self) -> &Broadcaster<T> {
        &self.broadcaster
    }

    /// The timeouts and `Retry-After` values in use.
    pub fn config(&self) -> &PollConfig {
        &self.config
    }

    /// Parses a request's URI and headers with this endpoint's config (see
    /// [`PollRequest::from_parts`]).
    ///
    /// # Errors
    ///
    /// A [`RequestError`]: answer it with [`RequestError::into_response`].
    pub fn parse(&self, uri: &Uri, headers: &HeaderMap) -> Result<PollRequest, RequestError> {
        PollRequest::from_parts(uri, headers, &self.config)
    }

    /// Waits as `request` asks: from its cursor, for at most its timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future (the client went away) unregisters
    /// the waiter at once.
    pub fn wait(&self, request: &PollRequest) -> WaitTimeout<'_, T> {
        self.broadcaster
            .wait_timeout(request.cursor(), request.timeout())
    }

    /// Parses, waits and answers: the whole endpoint in one call.
    ///
    /// Never fails: a malformed request gets its `400` here. The method is
    /// not checked; route only `GET` (and `HEAD`) to it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime with timers enabled.
    pub async fn handle(&self, uri: &Uri, headers: &HeaderMap) -> Response<Bytes> {
        let request = match self.parse(uri, headers) {
            Ok(request) => request,
            Err(e) => return e.into_response(),
        };
        let answer = self.wait(&request).await;
        self.respond(&request, answer)
    }

    /// The response to `request` once its wait ended with `answer` (see the
    /// table in the [module docs](self)).
    pub fn respond(
        &self,
        request: &PollRequest,
        answer: Result<Changed<T>, WaitError>,
    ) -> Response<Bytes> {
        match answer {
            Ok(changed) => self.update_response(changed.latest()),
            Err(WaitError::TimedOut) if request.names_cursor() => {
                let mut resp = Response::new(Bytes::new());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
                resp
            }
            Err(WaitError::TimedOut) => self.update_response(&self.broadcaster.current()),
            Err(WaitError::Closed) => unavailable(
                "the server is shutting down; retry later",
                self.config.get_closed_retry_after(),
            ),
            Err(WaitError::Full { .. }) => unavailable(
                "too many requests are waiting; retry later",
                self.config.get_full_retry_after(),
            ),
        }
    }

    /// `200` with `update`'s body, `ETag`, `Content-Type` and
    /// `Cache-Control: no-store`: the answer to a poll that `update` ends.
    pub fn update_response(&self, update: &Update<T>) -> Response<Bytes> {
        let mut resp = Response::new(self.body(update));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, self.content_type.clone());
        headers.insert(CACHE_CONTROL, NO_STORE);
        headers.insert(ETAG, etag(update.epoch(), update.version()));
        resp
    }

    /// The encoded body of `update`: encoded on the first call for its
    /// `(epoch, version)`, then shared.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use longpoll::{http::LongPoll, Broadcaster};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let encoded = Arc::new(AtomicUsize::new(0));
    /// let poll = LongPoll::new(Broadcaster::new(7), {
    ///     let encoded = Arc::clone(&encoded);
    ///     move |u| {
    ///         encoded.fetch_add(1, Ordering::Relaxed);
    ///         Bytes::from(u.value().to_string())
    ///     }
    /// });
    /// let current = poll.broadcaster().current();
    /// let a = poll.body(&current);
    /// let b = poll.body(&current);
    /// assert_eq!(a, "7");
    /// assert_eq!(a.as_ptr(), b.as_ptr()); // the same bytes, not a copy
    /// assert_eq!(encoded.load(Ordering::Relaxed), 1);
    /// ```
    pub fn body(&self, update: &Update<T>) -> Bytes {
        let key = (update.epoch(), update.version());
        let mut recent = self.bodies.recent.lock();
        if let Some((_, _, body)) = recent.iter().rev().find(|(e, v, _)| (*e, *v) == key) {
            return body.clone();
        }
        // Encoded under the lock: the waiters woken with this version wait
        // here for the one encoding instead of each making their own.
        let body = (self.bodies.encode)(update);
        if recent.len() >= KEPT_BODIES {
            recent.pop_front();
        }
        recent.push_back((key.0, key.1, body.clone()));
        body
    }
}

impl<T> Clone for LongPoll<T> {
    fn clone(&self) -> Self {
        LongPoll {
            broadcaster: self.broadcaster.clone(),
            config: self.config,
            content_type: self.content_type.clone(),
            bodies: Arc::clone(&self.bodies),
        }
    }
}

impl<T> fmt::Debug for LongPoll<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LongPoll")
            .field("broadcaster", &self.broadcaster)
            .field("config", &self.config)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// A response with a JSON body `{"error": message}`, `Content-Type:
/// application/json` and `Cache-Control: no-store`.
///
/// ```
/// use http::StatusCode;
/// use longpoll::http::error_response;
///
/// let resp = error_response(StatusCode::CONFLICT, "sold \"out\"");
/// assert_eq!(resp.status(), StatusCode::CONFLICT);
/// assert_eq!(resp.body(), r#"{"error":"sold \"out\""}"#);
/// ```
pub fn error_response(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(error_body(message)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// `{"error": message}` as JSON text.
fn error_body(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 12);
    out.push_str(r#"{"error":""#);
    for c in message.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push_str("\"}");
    out
}

/// `503` with `Retry-After` in whole seconds (rounded up, at least 1).
fn unavailable(message: &str, retry_after: Duration) -> Response<Bytes> {
    let secs = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_escape_quotes_backslashes_and_controls() {
        assert_eq!(error_body("a\"b\\c\nd"), r#"{"error":"a\"b\\c\u000ad"}"#);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let header = |d| unavailable("x", d).headers()[RETRY_AFTER].clone();
        assert_eq!(header(Duration::from_millis(1500)), "2");
        assert_eq!(header(Duration::ZERO), "1");
        assert_eq!(header(Duration::from_secs(1)), "1");
    }
}

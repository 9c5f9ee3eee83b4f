//! Server-sent events on the same cursor as a long poll: one response that
//! stays open and carries every change as a `text/event-stream` event.
//!
//! Where a long poll answers once and the client asks again, an
//! [`EventStream`] keeps the response open and writes each update as it is
//! published. Its cursor is the same [`Cursor`] the long poll uses, carried
//! in each event's `id:`, so the browser's `EventSource` resumes exactly
//! where it stopped.
//!
//! ```text
//! retry: 3000
//!
//! event: resync
//! data: {"reason":"initial"}
//!
//! id: 1f2e3d4c5b6a7988-41
//! data: {"text":"hello"}
//!
//! : keep-alive
//!
//! id: 1f2e3d4c5b6a7988-42
//! data: {"text":"hi"}
//!
//! ```
//!
//! # Events
//!
//! | event            | when                                            | `data:`                                  |
//! |------------------|-------------------------------------------------|------------------------------------------|
//! | (none: `message`) | one per update, oldest first, with `id: <epoch>-<version>` | the encoder's bytes for the update |
//! | `resync`         | before a baseline: no cursor, or a cursor the stream cannot continue | `{"reason":"initial"}`, `{"reason":"lagged","skipped":N}`, `{"reason":"ahead"}` or `{"reason":"other-epoch"}` |
//! | `error`          | the broadcaster refused the waiter (limit); the stream ends | `{"error":"..."}`               |
//! | `: keep-alive`   | a comment after [`SseConfig::keep_alive`] without an event | (none: proxies see traffic, browsers ignore it) |
//!
//! A client appends every `message`. On `resync` it clears what it shows:
//! the messages that follow are the new baseline (every update the
//! broadcaster still retains after the cursor). The stream starts with
//! `retry:` ([`SseConfig::retry`]), the reconnection delay the browser
//! should use. The reason words are those of a long poll's
//! [envelope](crate::http#the-envelope).
//!
//! # Resuming: `Last-Event-ID`
//!
//! After a dropped connection, `EventSource` reconnects by itself and sends
//! the last `id:` it saw as `Last-Event-ID`. The stream continues from that
//! cursor by the [cursor rules](Cursor): within the broadcaster's history
//! ([`Builder::history`](crate::Builder::history)) the client receives
//! every update it missed, once each, in order; beyond it, a `resync` event
//! with `"reason":"lagged"` and the retained updates. A first connection can
//! name its cursor in the query instead (`?since=41&epoch=1f2e3d4c5b6a7988`,
//! as for a long poll); `Last-Event-ID` wins when both are present. With no
//! cursor at all the stream starts with a baseline: `resync` with
//! `"reason":"initial"`, then every retained update.
//!
//! A cursor this server did not issue (an id or an epoch of another form,
//! from another deployment, or garbage) starts the stream from scratch, as
//! no cursor does: [`parse_cursor`] never fails, so an `EventSource` is
//! never answered with an error it would retry forever or give up on.
//!
//! # Slow readers and memory
//!
//! An `EventStream` buffers nothing per client. It is pulled: the server
//! asks it for the next frame only once the previous one was written to the
//! socket, and it then answers from the broadcaster's history at its own
//! cursor. A reader that falls behind by more than the history gets a
//! `resync` event with `"reason":"lagged"` and the number of updates it
//! lost, never an ever-growing queue. Each frame holds at most one answer:
//! at most `history` updates. Each update is encoded once, whatever the
//! number of streams that carry it (the cache of [`EventStreams`], which it
//! can share with a [`LongPoll`]).
//!
//! # Serving it
//!
//! [`EventStream`] is an [`http_body::Body`] (for hyper) and a
//! [`Stream`](futures_core::Stream) of [`Bytes`] (for anything else). In
//! axum, `axum::body::Body::new(stream)` wraps it. [`SseEndpoint`] is the
//! whole endpoint over one broadcaster: [`SseEndpoint::handle`] takes the
//! request by value (nothing of it is kept while the stream is open), and
//! with the `tower` feature it is a `tower::Service`.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, Request, Response};
//! use longpoll::sse::{EventStreams, SseBody, SseEndpoint};
//! use longpoll::Broadcaster;
//!
//! async fn events(
//!     endpoint: SseEndpoint<String>,
//!     req: Request<Incoming>,
//! ) -> Result<Response<SseBody<String>>, Infallible> {
//!     // `405` for other methods, `503` once closed, else the stream.
//!     Ok(endpoint.handle(req))
//! }
//! # fn main() {
//! let feed = Broadcaster::new(String::new());
//! let streams = EventStreams::new(|u: &longpoll::Update<String>| bytes::Bytes::from(u.value().to_string()));
//! let endpoint = streams.endpoint(feed);
//! # let _ = (events, endpoint);
//! # }
//! ```
//!
//! # Compression
//!
//! A compressing proxy or middleware that buffers would hold events back.
//! `tower-http`'s `CompressionLayer` leaves `text/event-stream` responses
//! alone with its default predicate (`DefaultPredicate` includes
//! `NotForContentType::SSE`): keep that predicate, or add
//! `NotForContentType::SSE` to your own. Every stream response also
//! carries `X-Accel-Buffering: no`, which tells nginx not to buffer it.
//!
//! [`Bytes`]: bytes::Bytes

mod endpoint;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use ::http::{Response, Uri};
use bytes::Bytes;

pub use endpoint::{SseBody, SseEndpoint};
pub use stream::EventStream;

use crate::http::answer::Bodies;
use crate::http::{KeyedPoll, LongPoll, PollConfig, PollRequest};
use crate::{Broadcaster, Cursor, Epoch, Update, Version};

/// `text/event-stream`, the content type of an [`EventStream`] response.
pub const TEXT_EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// The name of the header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The comment written when nothing else was sent for a keep-alive
/// interval.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// How many updates keep their encoding by default.
const CACHED_UPDATES: usize = 256;

/// Timing advice of an event stream: reconnection delay and keep-alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct SseConfig {
    retry: Duration,
    keep_alive: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            retry: Duration::from_secs(3),
            keep_alive: Duration::from_secs(15),
        }
    }
}

impl SseConfig {
    /// The defaults: `retry: 3000` and a keep-alive comment every 15 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the browser should wait before reconnecting, sent as
    /// `retry:` (in milliseconds) at the start of each stream.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// Writes a `: keep-alive` comment after this long without an event,
    /// so that proxies and load balancers do not close an idle stream
    /// (many do after 30 to 60 s).
    ///
    /// # Panics
    ///
    /// If `every` is zero.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        assert!(
            !every.is_zero(),
            "longpoll: keep-alive interval must not be 0"
        );
        self.keep_alive = every;
        self
    }

    /// The `retry:` advice.
    pub fn get_retry(&self) -> Duration {
        self.retry
    }

    /// The keep-alive interval.
    pub fn get_keep_alive(&self) -> Duration {
        self.keep_alive
    }
}

/// The `id:` of the event for `version` of `epoch`: `<epoch>-<version>`,
/// the epoch in 16 hex digits, the version in decimal.
///
/// ```
/// use longpoll::{sse, Cursor, Epoch, Version};
///
/// let e = Epoch::new(0xab).unwrap();
/// assert_eq!(sse::event_id(e, Version::new(42)), "00000000000000ab-42");
/// assert_eq!(
///     sse::parse_event_id("00000000000000ab-42"),
///     Some(Cursor::at(Version::new(42)).with_epoch(e))
/// );
/// ```
pub fn event_id(epoch: Epoch, version: Version) -> String {
    format!("{epoch}-{version}")
}

/// Reads an [`event_id`] back into a cursor; `None` if it is not one.
pub fn parse_event_id(id: &str) -> Option<Cursor> {
    let (epoch, version) = id.trim().split_once('-')?;
    let epoch: Epoch = epoch.parse().ok()?;
    let version: Version = version.parse().ok()?;
    Some(Cursor::at(version).with_epoch(epoch))
}

/// The cursor a request asks to resume from: `Last-Event-ID` if present
/// and not empty, otherwise `since` and `epoch` in the query, otherwise
/// `None` (start with a baseline).
///
/// Never fails: an id or a query cursor this server did not issue (another
/// format, another deployment, garbage) is `None` too, so the stream starts
/// from scratch instead of the browser being refused and retrying.
///
/// ```
/// use http::{HeaderMap, Uri};
/// use longpoll::{sse, Version};
///
/// let uri: Uri = "/events?since=5&epoch=00000000000000ab".parse()?;
/// let cursor = sse::parse_cursor(&uri, &HeaderMap::new()).unwrap();
/// assert_eq!(cursor.version(), Some(Version::new(5)));
///
/// let mut headers = HeaderMap::new();
/// headers.insert("last-event-id", "v2:not-ours".parse()?);
/// assert_eq!(sse::parse_cursor(&uri, &headers), None); // from scratch
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_cursor(uri: &Uri, headers: &HeaderMap) -> Option<Cursor> {
    if let Some(id) = headers.get(LAST_EVENT_ID) {
        // An empty id is what `EventSource` sends before any event had one:
        // no cursor, look at the query.
        let id = id.to_str().ok().map(str::trim);
        if id != Some("") {
            return id.and_then(parse_event_id);
        }
    }
    let request = PollRequest::parse(uri.query(), None, &PollConfig::new()).ok()?;
    let cursor = request.cursor();
    (!request.is_foreign() && cursor.version().is_some()).then_some(cursor)
}

/// Turns broadcasters into event streams: an encoder for the updates, the
/// cache of their encodings, and the [`SseConfig`]. One `EventStreams`
/// serves any number of broadcasters of the same type (all the keys of a
/// [`Keyed`](crate::keyed::Keyed) hub), and each update is encoded once
/// whatever the number of streams that carry it.
pub struct EventStreams<T> {
    bodies: Arc<Bodies<T>>,
    config: SseConfig,
}

impl<T> Clone for EventStreams<T> {
    fn clone(&self) -> Self {
        EventStreams {
            bodies: Arc::clone(&self.bodies),
            config: self.config,
        }
    }
}

impl<T> fmt::Debug for EventStreams<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStreams")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T> From<&LongPoll<T>> for EventStreams<T> {
    /// Event streams with the long poll's encoder and body cache: an update
    /// sent both ways is encoded once. The long poll's encoder must then
    /// write what a `data:` field can carry (any bytes; line breaks become
    /// several `data:` lines).
    fn from(poll: &LongPoll<T>) -> Self {
        EventStreams {
            bodies: Arc::clone(poll.bodies()),
            config: SseConfig::default(),
        }
    }
}

impl<K, T> From<&KeyedPoll<K, T>> for EventStreams<T> {
    /// Event streams with the keyed endpoint's encoder and body cache: an
    /// update sent both ways is encoded once.
    fn from(poll: &KeyedPoll<K, T>) -> Self {
        EventStreams {
            bodies: Arc::clone(poll.bodies()),
            config: SseConfig::default(),
        }
    }
}

impl<T> EventStreams<T> {
    /// Event streams whose `data:` is `encode(update)`, with the default
    /// [`SseConfig`].
    ///
    /// Line breaks in the encoded bytes are allowed: each line becomes one
    /// `data:` line, and `EventSource` joins them back with `\n`.
    pub fn new<F>(encode: F) -> Self
    where
        F: Fn(&Update<T>) -> Bytes + Send + Sync + 'static,
    {
        EventStreams {
            bodies: Arc::new(Bodies::new(Box::new(encode), CACHED_UPDATES)),
            config: SseConfig::default(),
        }
    }

    /// Uses `config` for retry advice and keep-alive comments.
    pub fn with_config(mut self, config: SseConfig) -> Self {
        self.config = config;
        self
    }

    /// Keeps the encodings of the last `n` updates encoded (default 256),
    /// shared with every clone (and with the [`LongPoll`] it came from).
    #[must_use]
    pub fn with_cache_capacity(self, n: usize) -> Self {
        self.bodies.set_capacity(n);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &SseConfig {
        &self.config
    }

    /// An event stream of `broadcaster` from `cursor` (`None`: start with a
    /// baseline of every retained update).
    pub fn stream(&self, broadcaster: &Broadcaster<T>, cursor: Option<Cursor>) -> EventStream<T> {
        EventStream::new(
            broadcaster.clone(),
            Arc::clone(&self.bodies),
            self.config,
            cursor,
        )
    }

    /// A `200` response carrying [`stream`](Self::stream), with
    /// `Content-Type: text/event-stream`, `Cache-Control: no-store` and
    /// `X-Accel-Buffering: no` (so nginx passes events on at once).
    pub fn response(
        &self,
        broadcaster: &Broadcaster<T>,
        cursor: Option<Cursor>,
    ) -> Response<EventStream<T>> {
        let mut resp = Response::new(self.stream(broadcaster, cursor));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, TEXT_EVENT_STREAM);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
    }

    /// The endpoint that streams `broadcaster` (a cheap value: two handles).
    pub fn endpoint(&self, broadcaster: Broadcaster<T>) -> SseEndpoint<T> {
        SseEndpoint::new(self.clone(), broadcaster)
    }
}

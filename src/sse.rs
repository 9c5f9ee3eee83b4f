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
//! | `: keep-alive`   | a comment after [`SseConfig::heartbeat`] without an event | (none: proxies see traffic, browsers ignore it) |
//!
//! A client appends every `message`. On `resync` it clears what it shows:
//! the messages that follow are the new baseline (every update the
//! broadcaster still retains after the cursor). The stream starts with
//! `retry:` ([`SseConfig::retry`]), the reconnection delay the browser
//! should use.
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
//! # Slow readers and memory
//!
//! An `EventStream` buffers nothing per client. It is pulled: the server
//! asks it for the next frame only once the previous one was written to the
//! socket, and it then answers from the broadcaster's history at its own
//! cursor. A reader that falls behind by more than the history gets a
//! `resync` event with `"reason":"lagged"` and the number of updates it
//! lost, never an ever-growing queue. Each frame holds at most one answer:
//! at most `history` updates.
//!
//! # Serving it
//!
//! [`EventStream`] is an [`http_body::Body`] (for hyper) and a
//! [`Stream`](futures_core::Stream) of [`Bytes`] (for anything else). In
//! axum, `axum::body::Body::new(stream)` wraps it.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, Request, Response};
//! use longpoll::sse::{EventStream, Sse};
//! use longpoll::Broadcaster;
//!
//! async fn events(
//!     sse: Sse<String>,
//!     feed: Broadcaster<String>,
//!     req: Request<Incoming>,
//! ) -> Result<Response<EventStream<String>>, Infallible> {
//!     // A bad `since` or `Last-Event-ID` still gets a stream: from scratch.
//!     let cursor = Sse::<String>::cursor(req.uri(), req.headers()).unwrap_or(None);
//!     Ok(sse.response(&feed, cursor))
//! }
//! # fn main() {
//! # let sse = Sse::new(|u: &longpoll::Update<String>| bytes::Bytes::from(u.value().to_string()));
//! # let _ = (events, sse);
//! # }
//! ```
//!
//! [`Bytes`]: bytes::Bytes

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use ::http::{Response, StatusCode, Uri};
use bytes::{BufMut, Bytes, BytesMut};

use crate::http::{error_response, PollConfig, PollRequest, RequestError};
use crate::wait::WaitState;
use crate::{Broadcaster, Changed, Cursor, Epoch, Resync, Update, Version, WaitError};

/// `text/event-stream`, the content type of an [`EventStream`] response.
pub const TEXT_EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// The name of the header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The comment written when nothing else was sent for a heartbeat interval.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

type Encoder<T> = Arc<dyn Fn(&Update<T>) -> Bytes + Send + Sync>;

/// Timing advice of an event stream: reconnection delay and heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct SseConfig {
    retry: Duration,
    heartbeat: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            retry: Duration::from_secs(3),
            heartbeat: Duration::from_secs(15),
        }
    }
}

impl SseConfig {
    /// The defaults: `retry: 3000` and a heartbeat every 15 s.
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
    pub fn heartbeat(mut self, every: Duration) -> Self {
        assert!(
            !every.is_zero(),
            "longpoll: heartbeat interval must not be 0"
        );
        self.heartbeat = every;
        self
    }

    /// The `retry:` advice.
    pub fn get_retry(&self) -> Duration {
        self.retry
    }

    /// The heartbeat interval.
    pub fn get_heartbeat(&self) -> Duration {
        self.heartbeat
    }
}

/// The cursor of an event-stream request could not be read: answer `400`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseRequestError {
    /// `since` or `epoch` in the query is malformed.
    #[error(transparent)]
    Query(#[from] RequestError),
    /// `Last-Event-ID` is not an id of this server, `<epoch>-<version>`.
    #[error("`Last-Event-ID` must be an event id of this server, of the form <epoch>-<version>")]
    InvalidLastEventId,
}

impl SseRequestError {
    /// Always `400 Bad Request`.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// `400` with `{"error": "<this error's message>"}`.
    pub fn into_response(self) -> Response<Bytes> {
        error_response(self.status(), &self.to_string())
    }
}

/// The `id:` of the event for `version` of `epoch`: `<epoch>-<version>`,
/// the epoch in 16 hex digits, the version in decimal.
///
/// ```
/// use longpoll::{sse, Epoch, Version};
///
/// let e = Epoch::new(0xab).unwrap();
/// assert_eq!(sse::event_id(e, Version::new(42)), "00000000000000ab-42");
/// assert_eq!(
///     sse::parse_event_id("00000000000000ab-42"),
///     Some(longpoll::Cursor::at(Version::new(42)).with_epoch(e))
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

/// Turns a broadcaster into event streams: an encoder for the updates and
/// the [`SseConfig`]. One `Sse` serves any number of broadcasters of the
/// same type (all the keys of a [`Keyed`](crate::keyed::Keyed) hub).
pub struct Sse<T> {
    encode: Encoder<T>,
    config: SseConfig,
}

impl<T> Clone for Sse<T> {
    fn clone(&self) -> Self {
        Sse {
            encode: Arc::clone(&self.encode),
            config: self.config,
        }
    }
}

impl<T> fmt::Debug for Sse<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T> Sse<T> {
    /// Event streams whose `data:` is `encode(update)`, with the default
    /// [`SseConfig`].
    ///
    /// Line breaks in the encoded bytes are allowed: each line becomes one
    /// `data:` line, and `EventSource` joins them back with `\n`.
    pub fn new<F>(encode: F) -> Self
    where
        F: Fn(&Update<T>) -> Bytes + Send + Sync + 'static,
    {
        Sse {
            encode: Arc::new(encode),
            config: SseConfig::default(),
        }
    }

    /// Uses `config` for retry advice and heartbeats.
    pub fn with_config(mut self, config: SseConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &SseConfig {
        &self.config
    }

    /// The cursor a request asks to resume from: `Last-Event-ID` if
    /// present, otherwise `since` and `epoch` in the query, otherwise
    /// `None` (start with a baseline).
    ///
    /// # Errors
    ///
    /// [`SseRequestError`] for a malformed `Last-Event-ID`, `since` or
    /// `epoch`; a server answers `400` with
    /// [`into_response`](SseRequestError::into_response).
    pub fn cursor(uri: &Uri, headers: &HeaderMap) -> Result<Option<Cursor>, SseRequestError> {
        if let Some(id) = headers.get(LAST_EVENT_ID) {
            let id = id
                .to_str()
                .map_err(|_| SseRequestError::InvalidLastEventId)?;
            // An empty id is what `EventSource` sends before any event had
            // one: no cursor.
            if !id.trim().is_empty() {
                return parse_event_id(id)
                    .map(Some)
                    .ok_or(SseRequestError::InvalidLastEventId);
            }
        }
        let request = PollRequest::parse(uri.query(), None, &PollConfig::new())?;
        Ok(request
            .names_cursor()
            .then(|| request.cursor())
            .filter(|c| c.version().is_some()))
    }

    /// An event stream of `broadcaster` from `cursor` (`None`: start with a
    /// baseline of every retained update).
    pub fn stream(&self, broadcaster: &Broadcaster<T>, cursor: Option<Cursor>) -> EventStream<T> {
        let cursor = cursor.filter(|c| c.version().is_some());
        EventStream {
            broadcaster: broadcaster.watcher(),
            encode: Arc::clone(&self.encode),
            state: None,
            phase: Phase::Start(cursor),
            config: self.config,
            heartbeat: None,
        }
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
}

enum Phase {
    /// Not polled yet: the first frame (retry advice, maybe a baseline)
    /// is still to be written.
    Start(Option<Cursor>),
    Streaming,
    Ended,
}

/// A `text/event-stream` body: every update of one broadcaster after a
/// cursor, as events. See the [module documentation](self).
///
/// It is an [`http_body::Body`] with [`Bytes`] frames and a
/// [`Stream`](futures_core::Stream) of `Result<Bytes, Infallible>`; it ends
/// when the broadcaster is closed (the browser then reconnects after the
/// `retry:` delay, with its `Last-Event-ID`).
///
/// # Cancel safety
///
/// Dropping it unregisters its waiter at once. Polling it consumes nothing
/// that is not returned: its cursor only moves when a frame is.
#[must_use = "streams do nothing unless polled"]
pub struct EventStream<T> {
    broadcaster: crate::broadcaster::Watcher<T>,
    encode: Encoder<T>,
    /// The wait at the cursor of the last frame; `None` before the first.
    state: Option<WaitState>,
    phase: Phase,
    config: SseConfig,
    /// Created on the first wait, inside the runtime.
    heartbeat: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> EventStream<T> {
    /// The cursor the next frame continues from; `None` before the first
    /// frame of a stream that starts with a baseline.
    pub fn cursor(&self) -> Option<Cursor> {
        match &self.phase {
            Phase::Start(c) => *c,
            _ => self
                .state
                .as_ref()
                .map(|s| Cursor::new(Some(s.since()), s.epoch())),
        }
    }

    fn first_frame(&mut self, cursor: Option<Cursor>) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(format!("retry: {}\n\n", self.config.retry.as_millis()).as_bytes());
        let shared = &self.broadcaster.shared;
        match cursor {
            Some(c) => self.state = Some(WaitState::new(shared, c)),
            None => {
                let retained = self.broadcaster.history();
                resync_event(&mut out, "initial", None);
                for u in &retained {
                    self.event(&mut out, u);
                }
                let last = retained.last().expect("history is never empty");
                self.state = Some(WaitState::new(shared, last.cursor()));
            }
        }
        out.freeze()
    }

    fn event(&self, out: &mut BytesMut, update: &Update<T>) {
        let data = (self.encode)(update);
        out.put_slice(b"id: ");
        out.put_slice(event_id(update.epoch(), update.version()).as_bytes());
        out.put_u8(b'\n');
        data_lines(out, &data);
        out.put_u8(b'\n');
    }

    fn changed_frame(&self, changed: &Changed<T>) -> Bytes {
        let mut out = BytesMut::new();
        match changed.resync() {
            None => {}
            Some(Resync::Lagged { skipped }) => resync_event(&mut out, "lagged", Some(skipped)),
            Some(Resync::Ahead) => resync_event(&mut out, "ahead", None),
            Some(Resync::OtherEpoch) => resync_event(&mut out, "other-epoch", None),
        }
        for u in changed.updates() {
            self.event(&mut out, u);
        }
        out.freeze()
    }

    /// Restarts the heartbeat interval from now.
    fn reset_heartbeat(&mut self) {
        if let Some(sleep) = &mut self.heartbeat {
            let at = tokio::time::Instant::now() + self.config.heartbeat;
            sleep.as_mut().reset(at);
        }
    }

    fn poll_frame_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match std::mem::replace(&mut self.phase, Phase::Streaming) {
            Phase::Ended => {
                self.phase = Phase::Ended;
                return Poll::Ready(None);
            }
            Phase::Start(cursor) => {
                let frame = self.first_frame(cursor);
                return Poll::Ready(Some(frame));
            }
            Phase::Streaming => {}
        }
        let state = self.state.as_mut().expect("set by the first frame");
        match state.poll(&self.broadcaster.shared, cx) {
            Poll::Ready(Ok(changed)) => {
                self.state = Some(WaitState::new(&self.broadcaster.shared, changed.cursor()));
                let frame = self.changed_frame(&changed);
                self.reset_heartbeat();
                Poll::Ready(Some(frame))
            }
            Poll::Ready(Err(WaitError::Closed)) => {
                self.state = None;
                self.phase = Phase::Ended;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.state = None;
                self.phase = Phase::Ended;
                let mut out = BytesMut::new();
                out.put_slice(b"event: error\n");
                data_lines(&mut out, format!("{{\"error\":\"{e}\"}}").as_bytes());
                out.put_u8(b'\n');
                Poll::Ready(Some(out.freeze()))
            }
            Poll::Pending => {
                let every = self.config.heartbeat;
                let sleep = self
                    .heartbeat
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.reset_heartbeat();
                    return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
                }
                Poll::Pending
            }
        }
    }
}

/// `event: resync` with `{"reason": ...}` (and `"skipped"` for a lag).
fn resync_event(out: &mut BytesMut, reason: &str, skipped: Option<u64>) {
    out.put_slice(b"event: resync\ndata: {\"reason\":\"");
    out.put_slice(reason.as_bytes());
    out.put_u8(b'"');
    if let Some(n) = skipped {
        out.put_slice(format!(",\"skipped\":{n}").as_bytes());
    }
    out.put_slice(b"}\n\n");
}

/// One `data:` line per line of `data` (split at `\r\n`, `\n` or `\r`, as
/// `EventSource` reads them).
fn data_lines(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, next) = match end {
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
        match next {
            Some(next) => rest = next,
            None => return,
        }
    }
}

impl<T> futures_core::Stream for EventStream<T> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_frame_inner(cx).map(|o| o.map(Ok))
    }
}

impl<T> http_body::Body for EventStream<T> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .poll_frame_inner(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }
}

impl<T> Drop for EventStream<T> {
    fn drop(&mut self) {
        if let Some(state) = &mut self.state {
            state.cancel(&self.broadcaster.shared);
        }
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("cursor", &self.cursor())
            .field("ended", &matches!(self.phase, Phase::Ended))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

//! [`SseEndpoint`]: the event-stream endpoint over one broadcaster, and its
//! body type.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{Request, Response};
use bytes::Bytes;

use super::{parse_cursor, EventStream, EventStreams};
use crate::http::{is_get_or_head, method_not_allowed, unavailable, FullBody};
use crate::Broadcaster;

/// The `Retry-After` of the `503` answered once the broadcaster is closed.
const CLOSED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The event-stream endpoint of one broadcaster: [`EventStreams`] (encoder,
/// cache, config) and the [`Broadcaster`] it streams.
///
/// A cheap handle: clone it into each connection. With the `tower` feature
/// it is a `tower::Service<http::Request<B>>`.
pub struct SseEndpoint<T> {
    streams: EventStreams<T>,
    broadcaster: Broadcaster<T>,
}

impl<T> SseEndpoint<T> {
    pub(crate) fn new(streams: EventStreams<T>, broadcaster: Broadcaster<T>) -> Self {
        SseEndpoint {
            streams,
            broadcaster,
        }
    }

    /// The broadcaster streamed.
    pub fn broadcaster(&self) -> &Broadcaster<T> {
        &self.broadcaster
    }

    /// The encoder, cache and config.
    pub fn streams(&self) -> &EventStreams<T> {
        &self.streams
    }

    /// Answers `req`, taken by value so that nothing of it is kept while the
    /// stream is open: `405` (with `Allow`) for a method other than `GET`
    /// or `HEAD`, `503` with `Retry-After: 1` once the broadcaster is
    /// closed, otherwise `200` with the event stream from the request's
    /// cursor ([`parse_cursor`]: a foreign or malformed cursor starts from
    /// scratch, never a `400`).
    pub fn handle<B>(&self, req: Request<B>) -> Response<SseBody<T>> {
        if !is_get_or_head(req.method()) {
            return method_not_allowed("GET, HEAD").map(SseBody::full);
        }
        let cursor = parse_cursor(req.uri(), req.headers());
        drop(req);
        if self.broadcaster.is_closed() {
            return unavailable(
                "the server is shutting down; retry later",
                CLOSED_RETRY_AFTER,
            )
            .map(SseBody::full);
        }
        self.streams
            .response(&self.broadcaster, cursor)
            .map(|stream| SseBody {
                inner: Inner::Events(stream),
            })
    }
}

impl<T> Clone for SseEndpoint<T> {
    fn clone(&self) -> Self {
        SseEndpoint {
            streams: self.streams.clone(),
            broadcaster: self.broadcaster.clone(),
        }
    }
}

impl<T> fmt::Debug for SseEndpoint<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEndpoint")
            .field("streams", &self.streams)
            .field("broadcaster", &self.broadcaster)
            .finish()
    }
}

/// The body of an [`SseEndpoint`]'s answers: the event stream, or the
/// complete body of a `405` or `503`.
///
/// Its [`Default`] is the empty body (which `tower-http`'s CORS layer uses
/// to answer a preflight).
pub struct SseBody<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Events(EventStream<T>),
    Full(FullBody),
}

impl<T> SseBody<T> {
    fn full(bytes: Bytes) -> Self {
        SseBody {
            inner: Inner::Full(FullBody::new(bytes)),
        }
    }

    /// The event stream, if this is one.
    pub fn as_stream(&self) -> Option<&EventStream<T>> {
        match &self.inner {
            Inner::Events(s) => Some(s),
            Inner::Full(_) => None,
        }
    }
}

impl<T> Default for SseBody<T> {
    fn default() -> Self {
        SseBody {
            inner: Inner::Full(FullBody::default()),
        }
    }
}

impl<T> http_body::Body for SseBody<T> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        // Both variants are `Unpin`.
        match &mut self.get_mut().inner {
            Inner::Events(s) => Pin::new(s).poll_frame(cx),
            Inner::Full(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Events(s) => s.is_ended(),
            Inner::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Events(_) => http_body::SizeHint::default(),
            Inner::Full(b) => b.size_hint(),
        }
    }
}

impl<T> fmt::Debug for SseBody<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Events(s) => f.debug_tuple("SseBody").field(s).finish(),
            Inner::Full(b) => f.debug_tuple("SseBody").field(b).finish(),
        }
    }
}

//! [`EventStream`]: the `text/event-stream` body, pulled from history.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};

use super::{event_id, SseConfig, KEEP_ALIVE};
use crate::broadcaster::Watcher;
use crate::http::answer::{error_body, resync_json, Bodies};
use crate::telemetry::{self, Endpoint::Sse};
use crate::wait::WaitState;
use crate::{Broadcaster, Changed, Cursor, Resync, Update, WaitError};

enum Phase {
    /// Not polled yet: the first frame (retry advice, maybe a baseline)
    /// is still to be written.
    Start(Option<Cursor>),
    Streaming,
    Ended,
}

/// A `text/event-stream` body: every update of one broadcaster after a
/// cursor, as events. See the [module documentation](super).
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
    /// Not a handle: the stream ends when the broadcaster's last handle is
    /// dropped.
    broadcaster: Watcher<T>,
    bodies: Arc<Bodies<T>>,
    /// The wait at the cursor of the last frame; `None` before the first.
    state: Option<WaitState>,
    phase: Phase,
    config: SseConfig,
    /// Created on the first wait, inside the runtime.
    keep_alive: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> EventStream<T> {
    pub(crate) fn new(
        broadcaster: Broadcaster<T>,
        bodies: Arc<Bodies<T>>,
        config: SseConfig,
        cursor: Option<Cursor>,
    ) -> Self {
        EventStream {
            broadcaster: broadcaster.watcher(),
            bodies,
            state: None,
            phase: Phase::Start(cursor.filter(|c| c.version().is_some())),
            config,
            keep_alive: None,
        }
    }

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
        out.put_slice(format!("retry: {}\n\n", self.config.get_retry().as_millis()).as_bytes());
        let shared = &self.broadcaster.shared;
        match cursor {
            // A stream's wait keeps its place under the waiter limit from
            // one frame to the next: a running stream never meets `Full`.
            Some(c) => self.state = Some(WaitState::new_stream(shared, c)),
            None => {
                let retained = self.broadcaster.history();
                resync_event(&mut out, None);
                for u in &retained {
                    self.event(&mut out, u);
                }
                let last = retained.last().expect("history is never empty");
                self.state = Some(WaitState::new_stream(shared, last.cursor()));
            }
        }
        out.freeze()
    }

    fn event(&self, out: &mut BytesMut, update: &Update<T>) {
        let data = self.bodies.data(update);
        out.put_slice(b"id: ");
        out.put_slice(event_id(update.epoch(), update.version()).as_bytes());
        out.put_u8(b'\n');
        data_lines(out, &data);
        out.put_u8(b'\n');
    }

    fn changed_frame(&self, changed: &Changed<T>) -> Bytes {
        let mut out = BytesMut::new();
        if let Some(resync) = changed.resync() {
            resync_event(&mut out, Some(resync));
        }
        for u in changed.updates() {
            self.event(&mut out, u);
        }
        out.freeze()
    }

    /// Restarts the keep-alive interval from now.
    fn reset_keep_alive(&mut self) {
        if let Some(sleep) = &mut self.keep_alive {
            let at = tokio::time::Instant::now() + self.config.get_keep_alive();
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
                telemetry::resync(&self.broadcaster.shared.telemetry, changed.resync(), Sse);
                state.advance(&changed);
                let frame = self.changed_frame(&changed);
                self.reset_keep_alive();
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
                data_lines(&mut out, error_body(&e.to_string()).as_bytes());
                out.put_u8(b'\n');
                Poll::Ready(Some(out.freeze()))
            }
            Poll::Pending => {
                let every = self.config.get_keep_alive();
                let sleep = self
                    .keep_alive
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.reset_keep_alive();
                    return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE)));
                }
                Poll::Pending
            }
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }
}

/// `event: resync` with `{"reason": ...}` (`"initial"` for `None`).
fn resync_event(out: &mut BytesMut, resync: Option<Resync>) {
    out.put_slice(b"event: resync\ndata: ");
    match resync {
        Some(resync) => resync_json(out, resync),
        None => out.put_slice(br#"{"reason":"initial"}"#),
    }
    out.put_slice(b"\n\n");
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
        self.is_ended()
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
            .field("ended", &self.is_ended())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

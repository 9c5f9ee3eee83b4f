//! [`ChangedStream`]: the answers of successive waits, as a stream.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::shared::Shared;
use crate::sync::Arc;
use crate::wait::WaitState;
use crate::{Changed, Cursor, WaitError};

/// Stream returned by [`Broadcaster::stream`](crate::Broadcaster::stream):
/// yields a [`Changed`] per wake-up, each continuing from the cursor of the
/// previous one.
///
/// It ends after yielding [`WaitError::Closed`] (a close, or the last
/// [handle](crate::Broadcaster#handles-and-the-last-one) dropped), and
/// after [`WaitError::Full`], which it can only yield the first time it has
/// to wait: from then on it holds its place under the waiter limit until
/// it ends or is dropped, so a running stream never ends under load.
///
/// # Cancel safety
///
/// `next()` is cancel safe: a dropped `next()` consumes nothing, and the
/// stream's cursor only moves when an item is returned.
#[must_use = "streams do nothing unless polled"]
pub struct ChangedStream<T> {
    shared: Arc<Shared<T>>,
    state: WaitState,
    ended: bool,
}

impl<T> ChangedStream<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, cursor: Cursor) -> Self {
        let state = WaitState::new_stream(&shared, cursor);
        ChangedStream {
            shared,
            state,
            ended: false,
        }
    }
}

impl<T> futures_core::Stream for ChangedStream<T> {
    type Item = Result<Changed<T>, WaitError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.state.poll(&this.shared, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(changed)) => {
                this.state.advance(&changed);
                Poll::Ready(Some(Ok(changed)))
            }
            Poll::Ready(Err(e)) => {
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<T> futures_core::FusedStream for ChangedStream<T> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<T> Drop for ChangedStream<T> {
    fn drop(&mut self) {
        self.state.cancel(&self.shared);
    }
}

impl<T> fmt::Debug for ChangedStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangedStream")
            .field("since", &self.state.since())
            .field("epoch", &self.state.epoch())
            .field("ended", &self.ended)
            .finish()
    }
}

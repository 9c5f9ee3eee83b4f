//! [`WaitMany`]: one wait over several keys.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::shared::Shared;
use crate::sync::Arc;
use crate::wait::WaitState;
use crate::{Changed, WaitError};

const POLLED_AFTER_DONE: &str = "longpoll: keyed wait polled after it completed";

pub(super) struct OneOfMany<K, T> {
    pub(super) key: K,
    pub(super) shared: Arc<Shared<T>>,
    pub(super) state: WaitState,
    pub(super) done: bool,
}

/// Future returned by [`Keyed::wait_many`](super::Keyed::wait_many): resolves with every key whose
/// answer is ready, in the order the pairs were given; never empty.
///
/// # Cancel safety
///
/// Dropping it unregisters every pair at once; nothing is consumed.
#[must_use = "futures do nothing unless polled"]
pub struct WaitMany<K, T> {
    pub(super) waits: Vec<OneOfMany<K, T>>,
    pub(super) finished: bool,
}

// Nothing in it is pinned: the keys and states move freely.
impl<K, T> Unpin for WaitMany<K, T> {}

/// What [`WaitMany`] resolves to: each ready key with its answer.
pub type ReadyKeys<K, T> = Vec<(K, Result<Changed<T>, WaitError>)>;

impl<K, T> WaitMany<K, T> {
    /// How many `(key, cursor)` pairs this wait covers.
    pub fn len(&self) -> usize {
        self.waits.len()
    }

    /// Whether it covers no pair: such a wait never resolves.
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }
}

impl<K: Clone, T> Future for WaitMany<K, T> {
    type Output = ReadyKeys<K, T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.finished, "{}", POLLED_AFTER_DONE);
        let mut ready = Vec::new();
        // Poll every pair, even after one is ready: each that is not ready
        // registers (or refreshes) this task's waker, and each that is ready
        // joins the answer.
        for w in &mut this.waits {
            let OneOfMany {
                key,
                shared,
                state,
                done,
            } = w;
            if let Poll::Ready(r) = state.poll(shared, cx) {
                *done = true;
                ready.push((key.clone(), r));
            }
        }
        if ready.is_empty() {
            return Poll::Pending;
        }
        this.finished = true;
        // Unregister the rest now rather than when the future is dropped.
        for w in &mut this.waits {
            if !w.done {
                w.done = true;
                w.state.cancel(&w.shared);
            }
        }
        Poll::Ready(ready)
    }
}

impl<K, T> Drop for WaitMany<K, T> {
    fn drop(&mut self) {
        for w in &mut self.waits {
            w.state.cancel(&w.shared);
        }
    }
}

impl<K: fmt::Debug, T> fmt::Debug for WaitMany<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitMany")
            .field(
                "keys",
                &self.waits.iter().map(|w| &w.key).collect::<Vec<_>>(),
            )
            .field("finished", &self.finished)
            .finish()
    }
}

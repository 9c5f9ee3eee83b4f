//! [`Registration`]: the handle of a registered callback.

use std::fmt;

use crate::shared::Shared;
use crate::sync::Arc;
use crate::{Epoch, Version};

/// A callback registered with [`Broadcaster::register`](crate::Broadcaster::register).
///
/// Dropping it cancels the callback if it has not run yet; a callback already
/// running on a publishing thread finishes. It is not a
/// [handle](crate::Broadcaster#handles-and-the-last-one): when the last
/// handle goes, a pending callback is called with
/// [`WaitError::Closed`](crate::WaitError::Closed).
#[must_use = "dropping a Registration cancels its callback; call `detach` to keep it"]
pub struct Registration<T> {
    shared: Arc<Shared<T>>,
    since: Version,
    epoch: Option<Epoch>,
    /// The list's generation at registration (see `Inner::generation`).
    generation: u64,
    idx: u32,
    pending: bool,
}

impl<T> Registration<T> {
    pub(crate) fn pending(
        shared: Arc<Shared<T>>,
        since: Version,
        epoch: Option<Epoch>,
        generation: u64,
        idx: u32,
    ) -> Self {
        Registration {
            shared,
            since,
            epoch,
            generation,
            idx,
            pending: true,
        }
    }

    pub(crate) fn fired(shared: Arc<Shared<T>>) -> Self {
        Registration {
            shared,
            since: Version::ZERO,
            epoch: None,
            generation: 0,
            idx: 0,
            pending: false,
        }
    }

    /// Cancels the callback. Returns `true` if it had not been taken for
    /// calling yet (it never will be), `false` if it already ran, is running,
    /// or was answered at registration.
    pub fn cancel(mut self) -> bool {
        self.cancel_inner()
    }

    /// Lets the callback stay registered after this handle is gone: it runs
    /// on the next change or on close (including the close that dropping
    /// the last `Broadcaster` handle makes).
    pub fn detach(mut self) {
        self.pending = false;
    }

    fn cancel_inner(&mut self) -> bool {
        if !std::mem::take(&mut self.pending) {
            return false;
        }
        let mut inner = self.shared.inner.lock();
        let cb = if inner.holds(self.generation) {
            inner.waiters.remove_callback(self.idx)
        } else {
            None
        };
        drop(inner);
        crate::telemetry::waiters_removed(&self.shared.telemetry, usize::from(cb.is_some()));
        // The callback's captures may run arbitrary code when dropped.
        cb.is_some()
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        self.cancel_inner();
    }
}

impl<T> fmt::Debug for Registration<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("since", &self.since)
            .field("epoch", &self.epoch)
            .field("pending", &self.pending)
            .finish()
    }
}

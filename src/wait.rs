//! The waiting side: [`WaitState`] (one waiter's cursor and slot), and the
//! futures over it: [`Wait`], [`OwnedWait`], [`WaitTimeout`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::shared::Shared;
use crate::sync::Arc;
use crate::{Changed, Cursor, Epoch, Version, WaitError};

pub use crate::registration::Registration;
pub use crate::stream::ChangedStream;

const POLLED_AFTER_DONE: &str = "longpoll: a wait polled after it completed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not registered (not polled yet, or woken and waiting again).
    Init,
    /// A waker sits in slot `idx` of generation `generation`.
    Registered,
    /// Answered, or cancelled.
    Done,
}

/// What a waiter is, for the waiter limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A future: takes a place only while registered.
    Future,
    /// A stream that holds no place yet (it never had to wait).
    Stream,
    /// A stream that holds a place, in the list or out of it
    /// (`Inner::streams_in`, `Inner::streams_out`).
    HeldStream,
}

/// One waiter's state: its cursor and, once registered, its slot. 32 bytes.
pub(crate) struct WaitState {
    since: Version,
    /// `None` until registration for a cursor that named no epoch.
    epoch: Option<Epoch>,
    /// The list's generation at registration (see `Inner::generation`).
    generation: u64,
    idx: u32,
    phase: Phase,
    kind: Kind,
}

impl WaitState {
    /// Pins down "the next change after this call" for a cursor without a
    /// version; a cursor with one is checked when first polled.
    pub(crate) fn new<T>(shared: &Shared<T>, cursor: Cursor) -> Self {
        let (since, epoch) = match cursor.version() {
            Some(v) => (v, cursor.epoch()),
            None => {
                let inner = shared.inner.lock();
                let cur = inner.current();
                // A foreign epoch stays foreign: answered at once when polled.
                (cur.version, Some(cursor.epoch().unwrap_or(cur.epoch)))
            }
        };
        WaitState {
            since,
            epoch,
            generation: 0,
            idx: 0,
            phase: Phase::Init,
            kind: Kind::Future,
        }
    }

    /// The state of a stream at `cursor`.
    pub(crate) fn new_stream<T>(shared: &Shared<T>, cursor: Cursor) -> Self {
        WaitState {
            kind: Kind::Stream,
            ..Self::new(shared, cursor)
        }
    }

    /// Continues after `changed`, keeping a stream's place.
    pub(crate) fn advance<T>(&mut self, changed: &Changed<T>) {
        debug_assert_eq!(self.phase, Phase::Done);
        self.since = changed.version();
        self.epoch = Some(changed.epoch());
        self.phase = Phase::Init;
    }

    pub(crate) fn since(&self) -> Version {
        self.since
    }

    pub(crate) fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// A `Registration` for a callback registered at this cursor.
    pub(crate) fn into_registration<T>(
        self,
        shared: Arc<Shared<T>>,
        epoch: Epoch,
        generation: u64,
        idx: u32,
    ) -> Registration<T> {
        Registration::pending(shared, self.since, Some(epoch), generation, idx)
    }

    fn finish<R>(
        &mut self,
        r: Result<Changed<R>, WaitError>,
    ) -> Poll<Result<Changed<R>, WaitError>> {
        self.phase = Phase::Done;
        Poll::Ready(r)
    }

    /// Gives a held stream's place back (`inner` is locked); it ends.
    fn release<T>(&mut self, inner: &mut crate::shared::Inner<T>) {
        if self.kind == Kind::HeldStream {
            inner.streams_out -= 1;
            self.kind = Kind::Stream;
        }
    }

    pub(crate) fn poll<T>(
        &mut self,
        shared: &Shared<T>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Changed<T>, WaitError>> {
        let mut fresh = None;
        loop {
            match self.phase {
                Phase::Done => panic!("{}", POLLED_AFTER_DONE),
                Phase::Init => {
                    // Clone before locking: a waker's clone may run arbitrary code.
                    let waker = fresh.take().unwrap_or_else(|| cx.waker().clone());
                    // Register, then check, under one lock: a publish either
                    // happened before (and the check sees it) or will take our
                    // slot (and wake us).
                    let mut inner = shared.inner.lock();
                    if inner.closed {
                        self.release(&mut inner);
                        drop(inner);
                        return self.finish(Err(WaitError::Closed));
                    }
                    if let Some(answer) = inner.answer(self.since, self.epoch) {
                        drop(inner);
                        return self.finish(Ok(answer));
                    }
                    if self.kind == Kind::HeldStream {
                        // Its place is already counted, out of the list.
                        inner.streams_out -= 1;
                    } else if inner.places() >= shared.max_waiters {
                        drop(inner);
                        return self.finish(Err(WaitError::Full {
                            limit: shared.max_waiters,
                        }));
                    }
                    if self.kind != Kind::Future {
                        inner.streams_in += 1;
                        self.kind = Kind::HeldStream;
                    }
                    self.idx = inner.waiters.insert_waker(waker);
                    self.epoch = Some(inner.current().epoch);
                    self.generation = inner.generation;
                    self.phase = Phase::Registered;
                    return Poll::Pending;
                }
                Phase::Registered => {
                    let mut inner = shared.inner.lock();
                    if !inner.holds(self.generation) {
                        // The list was taken out (a held stream's place moved
                        // out of it with it).
                        if inner.closed {
                            self.release(&mut inner);
                            drop(inner);
                            return self.finish(Err(WaitError::Closed));
                        }
                        // A publish: the answer is ready, unless restarts
                        // brought the sequence back to our very cursor, in
                        // which case we wait again.
                        match inner.answer(self.since, self.epoch) {
                            Some(answer) => {
                                drop(inner);
                                return self.finish(Ok(answer));
                            }
                            None => {
                                self.phase = Phase::Init;
                                continue;
                            }
                        }
                    }
                    let slot = inner
                        .waiters
                        .waker_mut(self.idx)
                        .expect("a registered waiter has a slot");
                    if slot.will_wake(cx.waker()) {
                        return Poll::Pending;
                    }
                    if let Some(new) = fresh.take() {
                        let old = std::mem::replace(slot, new);
                        drop(inner);
                        drop(old);
                        return Poll::Pending;
                    }
                    // Polled by another task: clone its waker outside the lock
                    // and look again.
                    drop(inner);
                    fresh = Some(cx.waker().clone());
                }
            }
        }
    }

    /// Unregisters in O(1) if still registered, and gives a stream's place
    /// back. The waiter is done.
    pub(crate) fn cancel<T>(&mut self, shared: &Shared<T>) {
        let registered = self.phase == Phase::Registered;
        self.phase = Phase::Done;
        if !registered && self.kind != Kind::HeldStream {
            return;
        }
        let mut inner = shared.inner.lock();
        let waker = if registered && inner.holds(self.generation) {
            if self.kind == Kind::HeldStream {
                inner.streams_in -= 1;
                self.kind = Kind::Stream;
            }
            inner.waiters.remove_waker(self.idx)
        } else {
            self.release(&mut inner);
            None
        };
        drop(inner);
        // A waker's drop may run arbitrary code: not under our lock.
        drop(waker);
    }

    fn fmt_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) {
        d.field("since", &self.since)
            .field("epoch", &self.epoch)
            .field("phase", &self.phase);
    }
}

/// Future returned by [`Broadcaster::wait`](crate::Broadcaster::wait).
///
/// Resolves with the [`Changed`] answer for its cursor, or a [`WaitError`].
///
/// # Cancel safety
///
/// Dropping it unregisters it at once, in O(1); nothing is consumed.
///
/// # Panics
///
/// When polled again after it completed.
#[must_use = "futures do nothing unless polled"]
pub struct Wait<'a, T> {
    shared: &'a Shared<T>,
    state: WaitState,
}

impl<'a, T> Wait<'a, T> {
    pub(crate) fn new(shared: &'a Arc<Shared<T>>, state: WaitState) -> Self {
        Wait { shared, state }
    }
}

impl<T> Future for Wait<'_, T> {
    type Output = Result<Changed<T>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.state.poll(this.shared, cx)
    }
}

impl<T> Drop for Wait<'_, T> {
    fn drop(&mut self) {
        self.state.cancel(self.shared);
    }
}

impl<T> fmt::Debug for Wait<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Wait");
        self.state.fmt_fields(&mut d);
        d.finish()
    }
}

/// Future returned by [`Broadcaster::wait_owned`](crate::Broadcaster::wait_owned)
/// and [`Keyed::wait`](crate::keyed::Keyed::wait): a [`Wait`] that owns its
/// reference to the broadcaster, so it can be stored or moved to a task.
///
/// It is not a [handle](crate::Broadcaster#handles-and-the-last-one): it
/// resolves with [`WaitError::Closed`] once every handle is dropped.
///
/// # Cancel safety
///
/// Dropping it unregisters it at once, in O(1); nothing is consumed.
///
/// # Panics
///
/// When polled again after it completed.
#[must_use = "futures do nothing unless polled"]
pub struct OwnedWait<T> {
    shared: Arc<Shared<T>>,
    state: WaitState,
}

impl<T> OwnedWait<T> {
    pub(crate) fn new(shared: Arc<Shared<T>>, state: WaitState) -> Self {
        OwnedWait { shared, state }
    }

    /// Whether this future waits on the broadcaster of `b`.
    pub fn waits_on(&self, b: &crate::Broadcaster<T>) -> bool {
        Arc::ptr_eq(&self.shared, &b.shared)
    }
}

impl<T> Future for OwnedWait<T> {
    type Output = Result<Changed<T>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.state.poll(&this.shared, cx)
    }
}

impl<T> Drop for OwnedWait<T> {
    fn drop(&mut self) {
        self.state.cancel(&self.shared);
    }
}

impl<T> fmt::Debug for OwnedWait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("OwnedWait");
        self.state.fmt_fields(&mut d);
        d.finish()
    }
}

#[cfg(feature = "tokio")]
pin_project_lite::pin_project! {
    /// Future returned by [`Broadcaster::wait_timeout`](crate::Broadcaster::wait_timeout).
    ///
    /// # Cancel safety
    ///
    /// Dropping it unregisters it at once, in O(1); nothing is consumed.
    ///
    /// # Panics
    ///
    /// When polled again after it completed.
    #[must_use = "futures do nothing unless polled"]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub struct WaitTimeout<'a, T> {
        wait: Wait<'a, T>,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

#[cfg(feature = "tokio")]
impl<'a, T> WaitTimeout<'a, T> {
    pub(crate) fn new(wait: Wait<'a, T>, sleep: tokio::time::Sleep) -> Self {
        WaitTimeout { wait, sleep }
    }
}

#[cfg(feature = "tokio")]
impl<T> Future for WaitTimeout<'_, T> {
    type Output = Result<Changed<T>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = Pin::new(&mut *this.wait).poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                // Unregister now rather than when the future is dropped.
                this.wait.state.cancel(this.wait.shared);
                Poll::Ready(Err(WaitError::TimedOut))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "tokio")]
impl<T> fmt::Debug for WaitTimeout<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitTimeout")
            .field("wait", &self.wait)
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

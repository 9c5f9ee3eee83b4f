//! The waiting side: [`WaitState`] (one waiter's cursor and slot), and the
//! futures over it: [`Wait`], [`OwnedWait`], [`WaitTimeout`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::shared::Shared;
use crate::sync::Arc;
use crate::telemetry::{self, Refused};
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
                    if inner.refuses_waits() {
                        self.release(&mut inner);
                        drop(inner);
                        telemetry::refused(&shared.telemetry, Refused::Closed);
                        return self.finish(Err(WaitError::Closed));
                    }
                    if let Some(answer) =
                        inner.answer_or_hold(self.since, self.epoch, shared.hold_ahead)
                    {
                        drop(inner);
                        return self.finish(Ok(answer));
                    }
                    if self.kind == Kind::HeldStream {
                        // Its place is already counted, out of the list.
                        inner.streams_out -= 1;
                    } else if inner.places() >= shared.max_waiters {
                        drop(inner);
                        let limit = shared.max_waiters;
                        telemetry::refused(&shared.telemetry, Refused::Full { limit });
                        return self.finish(Err(WaitError::Full { limit }));
                    }
                    if self.kind != Kind::Future {
                        inner.streams_in += 1;
                        self.kind = Kind::HeldStream;
                    }
                    self.idx = inner.waiters.insert_waker(waker);
                    self.epoch = Some(inner.current().epoch);
                    self.generation = inner.generation;
                    self.phase = Phase::Registered;
                    drop(inner);
                    telemetry::waiter_added(&shared.telemetry);
                    return Poll::Pending;
                }
                Phase::Registered => {
                    let mut inner = shared.inner.lock();
                    if !inner.holds(self.generation) {
                        // The list was taken out (a held stream's place moved
                        // out of it with it).
                        if inner.refuses_waits() {
                            self.release(&mut inner);
                            drop(inner);
                            return self.finish(Err(WaitError::Closed));
                        }
                        // A publish: the answer is ready, unless restarts
                        // brought the sequence back to our very cursor, or
                        // the cursor is held ahead and not reached yet, in
                        // which case we wait again.
                        match inner.answer_or_hold(self.since, self.epoch, shared.hold_ahead) {
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
        telemetry::waiters_removed(&shared.telemetry, usize::from(waker.is_some()));
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
/// The two states a backplane sets on its broadcasters: cursors held
/// ahead, and failing waits. Crate-internal, so tested here.
#[cfg(all(test, feature = "tokio"))]
mod backplane_states {
    use std::time::Duration;

    use tokio_test::task;
    use tokio_test::{assert_pending, assert_ready};

    use crate::{Broadcaster, Cursor, Resync, Version, WaitError};

    fn held() -> Broadcaster<u64> {
        Broadcaster::builder().history(8).hold_ahead(4).build(0)
    }

    #[test]
    fn a_cursor_a_little_ahead_waits_until_reached_then_for_the_next_change() {
        let b = held();
        let cursor = Cursor::at(Version::new(3)).with_epoch(b.epoch());
        let mut wait = task::spawn(b.wait(cursor));
        assert_pending!(wait.poll());
        for n in 1..=3 {
            b.notify(n).unwrap();
            assert!(wait.is_woken());
            assert_pending!(wait.poll(), "version {n} is not past the cursor");
            assert_eq!(b.waiter_count(), 1);
        }
        b.notify(4).unwrap();
        let changed = assert_ready!(wait.poll()).unwrap();
        assert_eq!(changed.resync(), None);
        assert_eq!(changed.version(), Version::new(4));
    }

    #[test]
    fn a_cursor_far_ahead_or_a_callback_is_answered_at_once() {
        let b = held();
        let far = Cursor::at(Version::new(5)).with_epoch(b.epoch());
        let changed = assert_ready!(task::spawn(b.wait(far)).poll()).unwrap();
        assert_eq!(changed.resync(), Some(Resync::Ahead));
        let near = Cursor::at(Version::new(1)).with_epoch(b.epoch());
        let (tx, rx) = std::sync::mpsc::channel();
        let reg = b.register(near, move |r| tx.send(r).unwrap()).unwrap();
        assert_eq!(
            rx.try_recv().unwrap().unwrap().resync(),
            Some(Resync::Ahead)
        );
        drop(reg);
    }

    #[test]
    fn a_held_cursor_dropped_after_a_publish_leaves_no_slot() {
        let b = held();
        let cursor = Cursor::at(Version::new(2)).with_epoch(b.epoch());
        let mut first = task::spawn(b.wait(cursor));
        assert_pending!(first.poll());
        b.notify(1).unwrap(); // takes its slot; it has not looked yet
        let mut second = task::spawn(b.wait(Cursor::NEXT));
        assert_pending!(second.poll());
        drop(first); // must not remove `second`'s slot
        assert_eq!(b.waiter_count(), 1);
        b.notify(2).unwrap();
        assert_eq!(
            assert_ready!(second.poll()).unwrap().version(),
            Version::new(2)
        );
        assert_eq!(b.waiter_count(), 0);
    }

    #[test]
    fn failing_answers_waits_closed_and_clearing_it_lets_them_wait_again() {
        let b = held();
        let mut pending = task::spawn(b.wait(Cursor::NEXT));
        assert_pending!(pending.poll());
        let mut stale = task::spawn(b.wait(Cursor::NEXT));
        assert_pending!(stale.poll());
        assert!(b.set_failing(true));
        assert!(!b.set_failing(true));
        assert_eq!(
            assert_ready!(pending.poll()).unwrap_err(),
            WaitError::Closed
        );
        let mut refused = task::spawn(b.wait(Cursor::NEXT));
        assert_eq!(
            assert_ready!(refused.poll()).unwrap_err(),
            WaitError::Closed
        );
        assert!(b.set_failing(false));
        // Woken while failing, polled only after: it waits again, in a slot
        // of its own.
        assert_pending!(stale.poll());
        let mut fresh = task::spawn(b.wait(Cursor::NEXT));
        assert_pending!(fresh.poll());
        assert_eq!(b.waiter_count(), 2);
        drop(stale);
        assert_eq!(b.waiter_count(), 1);
        b.notify(9).unwrap();
        assert_eq!(**assert_ready!(fresh.poll()).unwrap().value(), 9);
        assert!(!b.is_closed());
    }

    /// Many tasks on two threads wait with cursors at, behind and ahead of
    /// the current version, some dropped half-way, while another thread
    /// publishes: every wait ends past its cursor, none is lost, no slot
    /// is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_cursors_under_concurrent_publishes_lose_no_wake_up() {
        let b = Broadcaster::builder()
            .history(4)
            .hold_ahead(u8::MAX)
            .build(0u64);
        let publisher = {
            let b = b.clone();
            tokio::spawn(async move {
                for n in 1..=2_000u64 {
                    b.notify(n).unwrap();
                    if n % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut tasks = Vec::new();
        for i in 0..400u64 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let now = b.version().get();
                let target = (now + i % 7).saturating_sub(2).min(2_000);
                let cursor = Cursor::at(Version::new(target)).with_epoch(b.epoch());
                if i % 5 == 0 {
                    // Dropped while it may be held.
                    let _ = tokio::time::timeout(Duration::from_micros(i), b.wait(cursor)).await;
                    return None;
                }
                let r = b.wait_timeout(cursor, Duration::from_secs(2)).await;
                Some((target, r))
            }));
        }
        publisher.await.unwrap();
        for t in tasks {
            if let Some((target, r)) = t.await.unwrap() {
                match r {
                    Ok(changed) => assert!(changed.version().get() > target),
                    // Cursor at the very last version: nothing came after.
                    Err(WaitError::TimedOut) => assert_eq!(target, 2_000),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(b.waiter_count(), 0);
    }
}

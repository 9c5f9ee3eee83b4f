//! [`Broadcaster`]: the handle and the publish paths.

use std::fmt;
use std::sync::atomic::Ordering;

use crate::changed::{Changed, Update};
use crate::error::{ClosedError, PublishError, WaitError};
use crate::shared::{resume, Inner, Panic, Shared};
use crate::sync::{Arc, MutexGuard};
use crate::telemetry::{self, FanOut, Refused};
use crate::wait::{ChangedStream, OwnedWait, Registration, Wait, WaitState};
use crate::{Builder, Cursor, Epoch, Version};

/// A value that changes over time, and the waiters that want to hear of it.
///
/// `Broadcaster` is a cheap handle: clones share one state, and it is
/// `Send + Sync` when `T` is. See the [crate documentation](crate) for the
/// cursor rules and a complete long-poll loop.
///
/// # Handles and the last one
///
/// Every `Broadcaster` value is a *handle*: only handles publish. What
/// waits is not a handle: a [`wait_owned`](Self::wait_owned) future, a
/// [`stream`](Self::stream), a [`Registration`] or a detached callback
/// keeps the state alive but not the sequence. When the last handle is
/// dropped nothing can ever be published again, so the broadcaster closes
/// as [`close`](Self::close) does: pending waits resolve with
/// [`WaitError::Closed`], streams yield it and end, callbacks are called
/// with it (on the thread that dropped the handle). A callback that owns a
/// clone of the handle keeps the broadcaster open, as a
/// `tokio::sync::watch` receiver that holds its own sender would.
pub struct Broadcaster<T> {
    pub(crate) shared: Arc<Shared<T>>,
}

impl Broadcaster<()> {
    /// A [`Builder`] for history, limits and epoch; `T` is chosen by
    /// [`Builder::build`].
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<T> Broadcaster<T> {
    /// A broadcaster holding `initial` at version 0, with a random epoch, a
    /// history of one and no waiter limit.
    pub fn new(initial: T) -> Self {
        Builder::default().build(initial)
    }

    /// A handle over `shared`, counted.
    pub(crate) fn from_shared(shared: Arc<Shared<T>>) -> Self {
        shared.handles.fetch_add(1, Ordering::Relaxed);
        Broadcaster { shared }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.shared.inner.lock()
    }

    /// Replaces the value, bumps the version by one and wakes every waiter:
    /// this crate's `send`.
    ///
    /// Waking happens after the lock is released, and costs no allocation
    /// per waiter. Once the history is full, a publish reuses the
    /// allocation of the update it evicts when nobody holds that one any
    /// more; the evicted value is dropped after the waiters are woken.
    ///
    /// # Errors
    ///
    /// [`ClosedError`] once the broadcaster is closed; the value is dropped.
    ///
    /// # Panics
    ///
    /// At version `u64::MAX` (see [`Version::next`]), with nothing
    /// published. If a waiter's waker or a callback panics, every other
    /// waiter is still woken or called, and then the first panic resumes
    /// here: the update *was* published (read [`version`](Self::version)
    /// to see where the sequence stands).
    ///
    /// ```
    /// # let b = longpoll::Broadcaster::new(0);
    /// let v = b.notify(7)?;
    /// assert_eq!(v, b.version());
    /// assert_eq!(**b.current().value(), 7);
    /// # Ok::<(), longpoll::ClosedError>(())
    /// ```
    pub fn notify(&self, value: T) -> Result<Version, ClosedError> {
        let inner = self.lock();
        if inner.closed {
            drop(inner);
            drop(value);
            return Err(ClosedError);
        }
        let Some(version) = next_version(&inner) else {
            drop(inner);
            drop(value);
            panic!("longpoll: version overflow");
        };
        self.publish_next(inner, version, value);
        Ok(version)
    }

    /// Reads the current value and publishes what `f` makes of it, in one
    /// step: no other publish can come between the read and the write.
    ///
    /// `f` returns `None` to publish nothing: the version stays and nobody
    /// is woken. Returns the new version, or `None` if `f` declined.
    ///
    /// `f` runs under the broadcaster's lock (the only user code that
    /// does): keep it short, and do not call back into this broadcaster
    /// from it (that deadlocks). The value it returns is dropped, if ever,
    /// outside the lock.
    ///
    /// # Errors
    ///
    /// [`ClosedError`] once the broadcaster is closed; `f` is not called.
    ///
    /// # Panics
    ///
    /// At version `u64::MAX`, before `f` is called. A panic of `f`
    /// propagates with nothing published. Panicking wakers and callbacks
    /// as [`notify`](Self::notify).
    ///
    /// ```
    /// # let b = longpoll::Broadcaster::new(10u32);
    /// // Take one unit, unless sold out.
    /// let taken = b.modify(|stock| stock.checked_sub(1))?;
    /// assert!(taken.is_some());
    /// assert_eq!(**b.current().value(), 9);
    /// # Ok::<(), longpoll::ClosedError>(())
    /// ```
    pub fn modify<F>(&self, f: F) -> Result<Option<Version>, ClosedError>
    where
        F: FnOnce(&T) -> Option<T>,
    {
        let inner = self.lock();
        if inner.closed {
            return Err(ClosedError);
        }
        let Some(version) = next_version(&inner) else {
            drop(inner);
            panic!("longpoll: version overflow");
        };
        let Some(value) = f(inner.current().value()) else {
            return Ok(None);
        };
        self.publish_next(inner, version, value);
        Ok(Some(version))
    }

    /// Publishes `value` as `version`, the next one, under `inner`, and
    /// wakes everyone: the step `notify` and `modify` share. The value an
    /// evicted update's reused allocation held is dropped after the lock
    /// is released; a panicking waker or callback resumes here.
    fn publish_next(&self, mut inner: MutexGuard<'_, Inner<T>>, version: Version, value: T) {
        let prev = (inner.current().version, inner.current().epoch);
        let (value, old) = inner.arc_for(self.shared.history, value);
        let update = Update {
            epoch: prev.1,
            version,
            value,
        };
        let panicked = self.publish_locked(inner, prev, update);
        drop(old);
        resume(panicked);
    }

    /// Publishes `value` at an explicit `version`, which may skip ahead.
    ///
    /// For backplanes that relay a sequence numbered elsewhere: skipped
    /// versions count as lost, so a cursor inside the gap is answered with
    /// [`Resync::Lagged`](crate::Resync::Lagged).
    ///
    /// # Errors
    ///
    /// [`PublishError::NotNewer`] if `version` is not above the current one
    /// (a duplicate or reordered delivery); [`PublishError::Closed`] once
    /// closed. Nothing is published in either case.
    ///
    /// # Panics
    ///
    /// Panicking wakers and callbacks as [`notify`](Self::notify).
    pub fn publish_at(&self, version: Version, value: T) -> Result<(), PublishError> {
        let value = std::sync::Arc::new(value);
        let inner = self.lock();
        self.publish_at_locked(inner, version, value)
    }

    fn publish_at_locked(
        &self,
        inner: MutexGuard<'_, Inner<T>>,
        version: Version,
        value: std::sync::Arc<T>,
    ) -> Result<(), PublishError> {
        // On refusal, release the lock before `value` is dropped: its drop
        // may run arbitrary code, even a publish on this broadcaster.
        if inner.closed {
            drop(inner);
            return Err(PublishError::Closed);
        }
        let current = inner.current().version;
        if version <= current {
            drop(inner);
            return Err(PublishError::NotNewer { version, current });
        }
        let prev = (current, inner.current().epoch);
        let update = Update {
            epoch: prev.1,
            version,
            value,
        };
        resume(self.publish_locked(inner, prev, update));
        Ok(())
    }

    /// Starts a new sequence: a new `epoch`, at `version`, holding `value`.
    ///
    /// The history is cleared and every waiter is answered at once with
    /// [`Resync::OtherEpoch`](crate::Resync::OtherEpoch). A backplane calls
    /// this when the store that numbered the old sequence lost it. With the
    /// current epoch this is [`publish_at`](Self::publish_at).
    ///
    /// A restart may return to an `(epoch, version)` the broadcaster held
    /// before, any number of times: a waiter of the earlier sequence never
    /// takes or removes the slot of a waiter of the later one.
    ///
    /// # Errors
    ///
    /// As [`publish_at`](Self::publish_at).
    ///
    /// # Panics
    ///
    /// Panicking wakers and callbacks as [`notify`](Self::notify).
    pub fn restart(&self, epoch: Epoch, version: Version, value: T) -> Result<(), PublishError> {
        let value = std::sync::Arc::new(value);
        let mut inner = self.lock();
        if inner.closed {
            drop(inner);
            return Err(PublishError::Closed);
        }
        let (old_version, old_epoch) = (inner.current().version, inner.current().epoch);
        if epoch == old_epoch {
            return self.publish_at_locked(inner, version, value);
        }
        let old = std::mem::take(&mut inner.history);
        inner.history.push_back(Update {
            epoch,
            version,
            value,
        });
        let taken = inner.take_all(&self.shared.spare);
        // Every callback registered at the old (version, epoch).
        let answer = inner.answer(old_version, Some(old_epoch));
        drop(inner);
        drop(old);
        let what = FanOut::Restart(epoch, version);
        resume(
            self.shared
                .fan_out(what, taken, || answer.clone().ok_or(WaitError::Closed)),
        );
        Ok(())
    }

    /// Publishes `update` (already validated) after `prev`, the state the
    /// waiters registered at, releases the lock, then wakes.
    fn publish_locked(
        &self,
        mut inner: MutexGuard<'_, Inner<T>>,
        prev: (Version, Epoch),
        update: Update<T>,
    ) -> Option<Panic> {
        let what = FanOut::Publish(update.version);
        let (taken, evicted) = inner.push(update, self.shared.history, &self.shared.spare);
        // Callbacks all registered at `prev`: one answer serves them all.
        let answer = if taken.callbacks.is_empty() {
            None
        } else {
            inner.answer(prev.0, Some(prev.1))
        };
        drop(inner);
        // Wake first: the evicted value's drop (a free, or user code) is
        // nobody's wait.
        let panicked = self
            .shared
            .fan_out(what, taken, || answer.clone().ok_or(WaitError::Closed));
        drop(evicted);
        panicked
    }

    /// Closes the broadcaster: every pending waiter resolves with
    /// [`WaitError::Closed`] and every later wait fails at once.
    ///
    /// A future that a publish woke but that has not been polled yet also
    /// resolves `Closed`: after a close, nothing is delivered. Dropping the
    /// last handle closes too (see [the type's docs](Self#handles-and-the-last-one)).
    ///
    /// For graceful shutdown: a server closes its broadcasters so that held
    /// long polls are answered (`503`, `Retry-After`) instead of running out
    /// their timeout. Returns `false` if it was already closed.
    ///
    /// # Panics
    ///
    /// If a callback panics, every other one is still called with
    /// `Closed`, then the first panic resumes here; the broadcaster is
    /// closed.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use longpoll::{Broadcaster, Cursor, WaitError};
    ///
    /// let b = Broadcaster::new(0);
    /// let wait = b.wait(Cursor::NEXT);
    /// assert!(b.close());
    /// assert_eq!(wait.await.unwrap_err(), WaitError::Closed);
    /// assert!(b.notify(1).is_err());
    /// # });
    /// ```
    pub fn close(&self) -> bool {
        let (closed, panicked) = self.shared.close();
        resume(panicked);
        closed
    }

    /// Sets or clears the failing state (see `Inner::failing`). Setting it
    /// answers every pending waiter with [`WaitError::Closed`] (taking the
    /// list out starts a new generation, so no stale waiter touches a slot
    /// of a later one). Returns whether the state changed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_failing(&self, failing: bool) -> bool {
        let mut inner = self.lock();
        if inner.failing == failing {
            return false;
        }
        inner.failing = failing;
        if !failing {
            return true;
        }
        let taken = inner.take_all(&self.shared.spare);
        drop(inner);
        resume(
            self.shared
                .fan_out(FanOut::Failing, taken, || Err(WaitError::Closed)),
        );
        true
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The current state: value, version and epoch.
    pub fn current(&self) -> Update<T> {
        self.lock().current().clone()
    }

    /// The current version.
    pub fn version(&self) -> Version {
        self.lock().current().version
    }

    /// The epoch of the current sequence.
    pub fn epoch(&self) -> Epoch {
        self.lock().current().epoch
    }

    /// The retained updates, oldest first; the last one is the current state.
    pub fn history(&self) -> Vec<Update<T>> {
        self.lock().history.iter().cloned().collect()
    }

    /// How many updates are retained at most (see [`Builder::history`]).
    pub fn history_capacity(&self) -> usize {
        self.shared.history
    }

    /// Places taken now under the waiter limit (see
    /// [`Builder::max_waiters`]): registered futures and callbacks, and
    /// streams from the first time they waited until they end. A dropped
    /// future, stream or registration leaves this count at once.
    pub fn waiter_count(&self) -> usize {
        self.lock().places()
    }

    /// The waiter limit, if one was set (see [`Builder::max_waiters`]).
    pub fn max_waiters(&self) -> Option<usize> {
        (self.shared.max_waiters != usize::MAX).then_some(self.shared.max_waiters)
    }

    /// Whether two handles share one broadcaster.
    pub fn same_broadcaster(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Waits for a change after `cursor` (see the [cursor rules](Cursor)).
    ///
    /// With [`Cursor::NEXT`], "the next change" means one published after
    /// this call, even if the future is first polled later.
    ///
    /// The future registers when first polled, after checking the cursor
    /// under the same lock that publishes take: no interleaving of a publish
    /// and a wait loses a change.
    ///
    /// A cursor is a [`Cursor`], or the answer of an earlier wait
    /// (`&Changed`, `&Update`), which carries its epoch: chain waits with
    /// `b.wait(&changed)` or `b.wait(changed.cursor())`. A bare version is
    /// `Cursor::at(version)`, which matches any epoch.
    ///
    /// # Errors
    ///
    /// [`WaitError::Closed`] if the broadcaster is or gets closed;
    /// [`WaitError::Full`] if the waiter limit is reached at registration.
    /// Never [`WaitError::TimedOut`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. Dropping the future (for instance when another
    /// `select!` branch wins) unregisters it at once in O(1); no change is
    /// consumed, so a new wait with the same cursor sees everything the
    /// dropped one would have.
    ///
    /// # Panics
    ///
    /// When polled again after it completed.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use longpoll::{Broadcaster, Cursor, Version};
    ///
    /// let b = Broadcaster::new("v0");
    /// let seen = b.current();
    /// b.notify("v1").unwrap();
    /// // A client that saw version 0 is answered at once.
    /// let changed = b.wait(&seen).await.unwrap();
    /// assert_eq!(**changed.value(), "v1");
    /// assert_eq!(changed.version(), Version::new(1));
    /// // The next wait continues from the answer, in its epoch.
    /// let next = b.wait(&changed);
    /// # drop(next);
    /// # let _ = Cursor::at(Version::new(1));
    /// # });
    /// ```
    pub fn wait(&self, cursor: impl Into<Cursor>) -> Wait<'_, T> {
        Wait::new(&self.shared, WaitState::new(&self.shared, cursor.into()))
    }

    /// Like [`wait`](Self::wait), but the future owns its reference to the
    /// broadcaster: it can be stored, or moved to another task, without
    /// borrowing this handle.
    ///
    /// The future is not a handle (see [above](Self#handles-and-the-last-one)):
    /// if every handle is dropped while it waits, it resolves with
    /// [`WaitError::Closed`].
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// As [`wait`](Self::wait): dropping it unregisters it in O(1).
    ///
    /// # Panics
    ///
    /// When polled again after it completed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use longpoll::{Broadcaster, Cursor};
    ///
    /// let b = Broadcaster::new(0u32);
    /// let wait = b.wait_owned(Cursor::NEXT);
    /// let task = tokio::spawn(async move { wait.await.map(|c| **c.value()) });
    /// b.notify(5).unwrap();
    /// assert_eq!(task.await.unwrap(), Ok(5));
    /// # }
    /// ```
    pub fn wait_owned(&self, cursor: impl Into<Cursor>) -> OwnedWait<T> {
        let state = WaitState::new(&self.shared, cursor.into());
        OwnedWait::new(Arc::clone(&self.shared), state)
    }

    /// Calls `callback` once with the answer for `cursor`: the original demo's
    /// callback list, for code that is not async.
    ///
    /// If the cursor is already behind, `callback` runs before `register`
    /// returns. Otherwise it runs on the thread that publishes the next change
    /// (after the lock is released), or with [`WaitError::Closed`] on close.
    /// Dropping the returned [`Registration`] cancels the callback.
    ///
    /// # Errors
    ///
    /// [`WaitError::Closed`] or [`WaitError::Full`]; the callback is dropped
    /// without being called.
    ///
    /// ```
    /// use longpoll::{Broadcaster, Cursor};
    /// use std::sync::mpsc;
    ///
    /// let b = Broadcaster::new(10);
    /// let (tx, rx) = mpsc::channel();
    /// let reg = b.register(Cursor::NEXT, move |answer| {
    ///     tx.send(**answer.unwrap().value()).unwrap();
    /// })?;
    /// assert_eq!(b.waiter_count(), 1);
    /// b.notify(9)?;
    /// assert_eq!(rx.recv()?, 9);
    /// assert_eq!(b.waiter_count(), 0);
    /// drop(reg);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register<F>(
        &self,
        cursor: impl Into<Cursor>,
        callback: F,
    ) -> Result<Registration<T>, WaitError>
    where
        F: FnOnce(Result<Changed<T>, WaitError>) + Send + 'static,
    {
        let state = WaitState::new(&self.shared, cursor.into());
        let callback = Box::new(callback);
        let mut inner = self.lock();
        if inner.refuses_waits() {
            drop(inner);
            telemetry::refused(&self.shared.telemetry, Refused::Closed);
            return Err(WaitError::Closed);
        }
        if let Some(answer) = inner.answer(state.since(), state.epoch()) {
            drop(inner);
            callback(Ok(answer));
            return Ok(Registration::fired(Arc::clone(&self.shared)));
        }
        if inner.places() >= self.shared.max_waiters {
            drop(inner);
            let limit = self.shared.max_waiters;
            telemetry::refused(&self.shared.telemetry, Refused::Full { limit });
            return Err(WaitError::Full { limit });
        }
        let idx = inner.waiters.insert_callback(callback);
        let (epoch, generation) = (inner.current().epoch, inner.generation);
        drop(inner);
        telemetry::waiter_added(&self.shared.telemetry);
        Ok(state.into_registration(Arc::clone(&self.shared), epoch, generation, idx))
    }

    /// A [`Stream`](futures_core::Stream) of answers from `cursor` on: each
    /// item continues where the previous one ended.
    ///
    /// With a history longer than the burst of changes between two polls of
    /// the stream, every version arrives exactly once, in order; a longer
    /// burst arrives as one item flagged [`Resync::Lagged`](crate::Resync::Lagged),
    /// and the stream goes on.
    ///
    /// The stream takes a place under [`Builder::max_waiters`] the first
    /// time it has to wait, and keeps it until it ends or is dropped, so
    /// that it never meets [`WaitError::Full`] once it runs: **only a
    /// stream that finds the list full the first time it has to wait
    /// yields `Err(Full)`, and then ends** (it holds nothing; make a new
    /// one later). It also ends after yielding [`WaitError::Closed`] (a
    /// [`close`](Self::close), or the last handle dropped). So a
    /// `while let Some(Ok(changed)) = stream.next().await` loop ends only
    /// when the stream cannot go on.
    ///
    /// The stream is not a handle: it does not keep the broadcaster open.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use futures::StreamExt;
    /// use longpoll::{Broadcaster, Cursor};
    ///
    /// let b = Broadcaster::builder().history(8).build(0);
    /// let mut stream = b.stream(Cursor::NEXT);
    /// b.notify(1).unwrap();
    /// b.notify(2).unwrap();
    /// let changed = stream.next().await.unwrap().unwrap();
    /// let seen: Vec<i32> = changed.updates().iter().map(|u| **u.value()).collect();
    /// assert_eq!(seen, [1, 2]);
    /// # });
    /// ```
    pub fn stream(&self, cursor: impl Into<Cursor>) -> ChangedStream<T> {
        ChangedStream::new(Arc::clone(&self.shared), cursor.into())
    }
}

#[cfg(feature = "tokio")]
impl<T> Broadcaster<T> {
    /// Like [`wait`](Self::wait), but gives up after `timeout` with
    /// [`WaitError::TimedOut`].
    ///
    /// A change that is ready at the deadline wins over the timeout.
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`], [`WaitError::Closed`] or [`WaitError::Full`]:
    /// the three are distinct so that an HTTP layer can answer `204`, `503`
    /// and `503` respectively.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime with timers enabled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use longpoll::{Broadcaster, Cursor, WaitError};
    /// use std::time::Duration;
    ///
    /// let b = Broadcaster::new(());
    /// let r = b.wait_timeout(Cursor::NEXT, Duration::from_secs(30)).await;
    /// assert_eq!(r.unwrap_err(), WaitError::TimedOut);
    /// # }
    /// ```
    pub fn wait_timeout(
        &self,
        cursor: impl Into<Cursor>,
        timeout: std::time::Duration,
    ) -> crate::WaitTimeout<'_, T> {
        crate::WaitTimeout::new(self.wait(cursor), tokio::time::sleep(timeout))
    }
}

/// A reference to a broadcaster's state that is not a handle: it reads
/// and waits but does not keep the broadcaster open. The SSE body holds
/// one, so that it ends when the last handle is dropped.
#[cfg(feature = "http")]
pub(crate) struct Watcher<T> {
    pub(crate) shared: Arc<Shared<T>>,
}

#[cfg(feature = "http")]
impl<T> Watcher<T> {
    /// The retained updates, oldest first.
    pub(crate) fn history(&self) -> Vec<Update<T>> {
        self.shared.inner.lock().history.iter().cloned().collect()
    }
}

#[cfg(feature = "http")]
impl<T> Broadcaster<T> {
    pub(crate) fn watcher(&self) -> Watcher<T> {
        Watcher {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The version after the current one, `None` at `u64::MAX`.
fn next_version<T>(inner: &Inner<T>) -> Option<Version> {
    inner
        .current()
        .version
        .get()
        .checked_add(1)
        .map(Version::new)
}

impl<T> Clone for Broadcaster<T> {
    fn clone(&self) -> Self {
        Broadcaster::from_shared(Arc::clone(&self.shared))
    }
}

impl<T> Drop for Broadcaster<T> {
    /// The last handle closes the broadcaster (see
    /// [the type's docs](Broadcaster#handles-and-the-last-one)). A callback
    /// that panics then is resumed here, unless this thread is already
    /// unwinding (the panic is then dropped, rather than aborting).
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let (_, panicked) = self.shared.close();
        if !std::thread::panicking() {
            resume(panicked);
        }
    }
}

impl<T: Default> Default for Broadcaster<T> {
    fn default() -> Self {
        Broadcaster::new(T::default())
    }
}

impl<T> fmt::Debug for Broadcaster<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Broadcaster")
            .field("epoch", &inner.current().epoch)
            .field("version", &inner.current().version)
            .field("waiters", &inner.places())
            .field("closed", &inner.closed)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
impl<T> Broadcaster<T> {
    /// What a cursor from a sequence this broadcaster cannot even name (an
    /// epoch in another format, from another deployment) gets: at once, as a
    /// cursor of another epoch does, without registering a waiter.
    pub(crate) fn answer_foreign(&self) -> Result<Changed<T>, WaitError> {
        let inner = self.lock();
        if inner.refuses_waits() {
            drop(inner);
            telemetry::refused(&self.shared.telemetry, Refused::Closed);
            return Err(WaitError::Closed);
        }
        Ok(inner.retained_after(None, Some(crate::Resync::OtherEpoch)))
    }
}

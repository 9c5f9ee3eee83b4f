//! [`Broadcaster`]: the handle, its shared state and the publish paths.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::task::Waker;

use crate::changed::{Changed, Resync, Update};
use crate::error::{ClosedError, PublishError, WaitError};
use crate::sync::{Mutex, MutexGuard};
use crate::wait::{Registration, UpdateStream, Wait, WaitState};
use crate::waiters::{Taken, Waiters};
use crate::{Cursor, Epoch, Version};

/// A value that changes over time, and the waiters that want to hear of it.
///
/// `Broadcaster` is a cheap handle: clones share one state, and it is
/// `Send + Sync` when `T` is. See the [crate documentation](crate) for the
/// cursor rules and a complete long-poll loop.
pub struct Broadcaster<T> {
    pub(crate) shared: Arc<Shared<T>>,
}

/// The state every handle, future and registration points at.
pub(crate) struct Shared<T> {
    /// Everything that changes, under one lock: value, version, epoch,
    /// history and waiters move together, which is what makes
    /// "register, then check" airtight.
    pub(crate) inner: Mutex<Inner<T>>,
    /// Most updates kept for cursors that fall behind (at least 1).
    history: usize,
    /// Most waiters (futures and callbacks) registered at once.
    pub(crate) max_waiters: usize,
    /// How far ahead of the current version a same-epoch cursor may be and
    /// still wait for that version rather than be answered at once (0: not
    /// at all). A backplane sets it: there, a cursor ahead usually comes
    /// from a faster instance, and this one will get there.
    pub(crate) hold_ahead: u8,
    /// The emptied waker vector of the last fan-out, for the next round of
    /// registrations. Under its own lock, so that returning it after a
    /// fan-out does not contend with the waiters that fan-out just woke.
    /// Lock order: `inner`, then `spare`.
    spare: Mutex<Vec<Option<Waker>>>,
}

pub(crate) struct Inner<T> {
    /// Retained updates, oldest first; the last one is the current state.
    /// Never empty.
    history: VecDeque<Update<T>>,
    /// Waiters registered at the current `(epoch, version)`.
    pub(crate) waiters: Waiters<T>,
    /// Bumped by every [`Broadcaster::restart`] into another epoch. Within
    /// one era `(epoch, version)` only goes up; a restart may return to an
    /// earlier pair (a failover to a store holding an old epoch), and the era
    /// tells a waiter of the old sequence from one of the new.
    pub(crate) era: u16,
    pub(crate) closed: bool,
    /// While set, waits are answered [`WaitError::Closed`] at once, as if
    /// closed, but publishes still go through: a backplane channel whose
    /// store holds unusable data, until it heals.
    pub(crate) failing: bool,
}

impl<T> Inner<T> {
    pub(crate) fn current(&self) -> &Update<T> {
        self.history.back().expect("history is never empty")
    }

    /// Whether the broadcaster still stands where a waiter registered: if so,
    /// the waiter's slot is still in the list.
    pub(crate) fn holds(&self, since: Version, epoch: Option<Epoch>, era: u16) -> bool {
        let cur = self.current();
        !self.refuses_waits() && cur.version == since && Some(cur.epoch) == epoch && self.era == era
    }

    /// Whether a wait is answered [`WaitError::Closed`] now.
    pub(crate) fn refuses_waits(&self) -> bool {
        self.closed || self.failing
    }

    /// As [`answer`](Self::answer), except that a cursor of the current
    /// epoch at most `hold` versions ahead waits (`None`) for the version it
    /// names.
    pub(crate) fn answer_or_hold(
        &self,
        since: Version,
        epoch: Option<Epoch>,
        hold: u8,
    ) -> Option<Changed<T>> {
        let cur = self.current();
        if since > cur.version
            && epoch.is_none_or(|e| e == cur.epoch)
            && since.get() - cur.version.get() <= u64::from(hold)
        {
            return None;
        }
        self.answer(since, epoch)
    }

    /// What a cursor gets now, or `None` if it must wait for the next change.
    pub(crate) fn answer(&self, since: Version, epoch: Option<Epoch>) -> Option<Changed<T>> {
        let cur = self.current();
        if epoch.is_some_and(|e| e != cur.epoch) {
            return Some(self.retained_after(None, Some(Resync::OtherEpoch)));
        }
        if since == cur.version {
            return None;
        }
        if since > cur.version {
            return Some(self.retained_after(None, Some(Resync::Ahead)));
        }
        let missed = cur.version.get() - since.get();
        // The common cases, without walking the history: a waiter woken by
        // the last publish is exactly one version behind, and with a history
        // of one only the current value is there to give.
        if missed == 1 || self.history.len() == 1 {
            let resync = (missed > 1).then_some(Resync::Lagged {
                skipped: missed - 1,
            });
            return Some(Changed::one(cur.clone(), resync));
        }
        let kept = self
            .history
            .iter()
            .rev()
            .take_while(|u| u.version > since)
            .count() as u64;
        let resync = (kept < missed).then_some(Resync::Lagged {
            skipped: missed - kept,
        });
        Some(self.retained_after(Some(since), resync))
    }

    /// The retained updates newer than `since` (all of them for `None`).
    fn retained_after(&self, since: Option<Version>, resync: Option<Resync>) -> Changed<T> {
        let newer = |u: &&Update<T>| since.is_none_or(|s| u.version > s);
        if self.history.len() == 1 || self.history.iter().rev().nth(1).is_none_or(|u| !newer(&u)) {
            return Changed::one(self.current().clone(), resync);
        }
        let mut updates: Vec<Update<T>> = self
            .history
            .iter()
            .rev()
            .take_while(newer)
            .cloned()
            .collect();
        updates.reverse();
        Changed::many(updates, resync)
    }

    /// Makes `update` the current state and takes every waiter out.
    /// Returns what must be dropped or woken once the lock is released.
    fn push(
        &mut self,
        update: Update<T>,
        history: usize,
        spare: &Mutex<Vec<Option<Waker>>>,
    ) -> (Taken<T>, Option<Update<T>>) {
        let evicted = if self.history.len() >= history {
            self.history.pop_front()
        } else {
            None
        };
        self.history.push_back(update);
        (self.waiters.take_all(spare), evicted)
    }
}

/// Configures a [`Broadcaster`]: history, waiter limit, epoch, first version.
///
/// ```
/// use longpoll::{Broadcaster, Version};
///
/// let b = Broadcaster::builder()
///     .history(64)          // cursors up to 64 versions behind miss nothing
///     .max_waiters(100_000) // the 100 001st waiter gets `WaitError::Full`
///     .build(String::from("hello"));
/// assert_eq!(b.version(), Version::ZERO);
/// assert_eq!(b.max_waiters(), Some(100_000));
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    history: usize,
    max_waiters: Option<usize>,
    epoch: Option<Epoch>,
    initial_version: Version,
    hold_ahead: u8,
    failing: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            history: 1,
            max_waiters: None,
            epoch: None,
            initial_version: Version::ZERO,
            hold_ahead: 0,
            failing: false,
        }
    }
}

impl Builder {
    /// The defaults: a history of one, no waiter limit, a random epoch,
    /// version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the last `k` updates (default 1: latest-value semantics).
    ///
    /// A cursor at most `k` versions behind the current one receives every
    /// update it missed, in order. An older one receives what is retained,
    /// flagged [`Resync::Lagged`] with the number of versions it lost.
    ///
    /// # Panics
    ///
    /// If `k` is 0: the current value is always retained.
    pub fn history(mut self, k: usize) -> Self {
        assert!(
            k >= 1,
            "longpoll: history must keep at least the current value"
        );
        self.history = k;
        self
    }

    /// Refuses registrations past `n` waiters (futures and callbacks
    /// together) with [`WaitError::Full`]. Default: no limit.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = Some(n);
        self
    }

    /// Uses `epoch` instead of a random one: for a sequence that continues
    /// one kept elsewhere (a database, a backplane).
    pub fn epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Starts the sequence at `version` instead of 0.
    pub fn initial_version(mut self, version: Version) -> Self {
        self.initial_version = version;
        self
    }

    /// Lets a cursor of the current epoch up to `max` versions ahead wait
    /// for that version instead of being answered at once with
    /// [`Resync::Ahead`] (futures and streams; a callback is still answered
    /// at once). For a backplane, whose instances reach a version one after
    /// the other.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn hold_ahead(mut self, max: u8) -> Self {
        self.hold_ahead = max;
        self
    }

    /// Builds the broadcaster failing (see `Inner::failing`): its waits are
    /// refused until `set_failing(false)`. For a backplane key, whose state
    /// is read from Redis after the broadcaster is made.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn refusing_waits(mut self) -> Self {
        self.failing = true;
        self
    }

    /// Builds the broadcaster, holding `initial` at the initial version.
    pub fn build<T>(self, initial: T) -> Broadcaster<T> {
        let first = Update {
            epoch: self.epoch.unwrap_or_else(Epoch::random),
            version: self.initial_version,
            value: Arc::new(initial),
        };
        self.build_from(vec![first])
    }

    /// Builds a broadcaster that continues `retained` (oldest first, never
    /// empty): its epoch, versions and history, with this builder's limits.
    /// The keyed hub uses it to bring back a key it parked while idle; the
    /// builder's epoch and initial version are not used.
    pub(crate) fn build_from<T>(self, retained: Vec<Update<T>>) -> Broadcaster<T> {
        debug_assert!(!retained.is_empty());
        let skip = retained.len().saturating_sub(self.history);
        let mut history = VecDeque::with_capacity(self.history.min(1024));
        history.extend(retained.into_iter().skip(skip));
        Broadcaster {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    history,
                    waiters: Waiters::new(),
                    era: 0,
                    closed: false,
                    failing: self.failing,
                }),
                history: self.history,
                max_waiters: self.max_waiters.unwrap_or(usize::MAX),
                hold_ahead: self.hold_ahead,
                spare: Mutex::new(Vec::new()),
            }),
        }
    }
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.shared.inner.lock()
    }

    /// Replaces the value, bumps the version by one and wakes every waiter.
    ///
    /// Waking happens after the lock is released, and costs no allocation
    /// per waiter.
    ///
    /// # Errors
    ///
    /// [`ClosedError`] once the broadcaster is closed; the value is dropped.
    ///
    /// ```
    /// # let b = longpoll::Broadcaster::new(0);
    /// let v = b.notify(7)?;
    /// assert_eq!(v, b.version());
    /// assert_eq!(**b.current().value(), 7);
    /// # Ok::<(), longpoll::ClosedError>(())
    /// ```
    pub fn notify(&self, value: T) -> Result<Version, ClosedError> {
        let value = Arc::new(value);
        let inner = self.lock();
        if inner.closed {
            drop(inner);
            return Err(ClosedError);
        }
        let version = inner.current().version.next();
        let epoch = inner.current().epoch;
        self.publish_locked(
            inner,
            Update {
                epoch,
                version,
                value,
            },
        );
        Ok(version)
    }

    /// Reads the current value and publishes what `f` makes of it, in one
    /// step: no other publish can come between the read and the write.
    ///
    /// `f` returns `None` to publish nothing: the version stays and nobody
    /// is woken. Returns the new version, or `None` if `f` declined.
    ///
    /// `f` runs under the broadcaster's lock: keep it short, and do not call
    /// back into this broadcaster from it (that deadlocks).
    ///
    /// # Errors
    ///
    /// [`ClosedError`] once the broadcaster is closed; `f` is not called.
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
        let Some(value) = f(inner.current().value()) else {
            return Ok(None);
        };
        let version = inner.current().version.next();
        let epoch = inner.current().epoch;
        self.publish_locked(
            inner,
            Update {
                epoch,
                version,
                value: Arc::new(value),
            },
        );
        Ok(Some(version))
    }

    /// Publishes `value` at an explicit `version`, which may skip ahead.
    ///
    /// For backplanes that relay a sequence numbered elsewhere: skipped
    /// versions count as lost, so a cursor inside the gap is answered with
    /// [`Resync::Lagged`].
    ///
    /// # Errors
    ///
    /// [`PublishError::NotNewer`] if `version` is not above the current one
    /// (a duplicate or reordered delivery); [`PublishError::Closed`] once
    /// closed. Nothing is published in either case.
    pub fn publish_at(&self, version: Version, value: T) -> Result<(), PublishError> {
        let value = Arc::new(value);
        let inner = self.lock();
        self.publish_at_locked(inner, version, value)
    }

    fn publish_at_locked(
        &self,
        inner: MutexGuard<'_, Inner<T>>,
        version: Version,
        value: Arc<T>,
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
        let epoch = inner.current().epoch;
        self.publish_locked(
            inner,
            Update {
                epoch,
                version,
                value,
            },
        );
        Ok(())
    }

    /// Starts a new sequence: a new `epoch`, at `version`, holding `value`.
    ///
    /// The history is cleared and every waiter is answered at once with
    /// [`Resync::OtherEpoch`]. A backplane calls this when the store that
    /// numbered the old sequence lost it. With the current epoch this is
    /// [`publish_at`](Self::publish_at).
    ///
    /// # Errors
    ///
    /// As [`publish_at`](Self::publish_at).
    pub fn restart(&self, epoch: Epoch, version: Version, value: T) -> Result<(), PublishError> {
        let value = Arc::new(value);
        let mut inner = self.lock();
        if inner.closed {
            return Err(PublishError::Closed);
        }
        let (old_version, old_epoch) = (inner.current().version, inner.current().epoch);
        if epoch == old_epoch {
            return self.publish_at_locked(inner, version, value);
        }
        let old = std::mem::take(&mut inner.history);
        inner.era = inner.era.wrapping_add(1);
        inner.history.push_back(Update {
            epoch,
            version,
            value,
        });
        let taken = inner.waiters.take_all(&self.shared.spare);
        // Every callback registered at the old (version, epoch).
        let answer = inner.answer(old_version, Some(old_epoch));
        drop(inner);
        drop(old);
        self.fan_out(taken, || answer.clone().ok_or(WaitError::Closed));
        Ok(())
    }

    /// Publishes `update` (already validated), releases the lock, then wakes.
    fn publish_locked(&self, mut inner: MutexGuard<'_, Inner<T>>, update: Update<T>) {
        let prev = (inner.current().version, inner.current().epoch);
        let (taken, evicted) = inner.push(update, self.shared.history, &self.shared.spare);
        // Callbacks all registered at `prev`: one answer serves them all.
        let answer = if taken.callbacks.is_empty() {
            None
        } else {
            inner.answer(prev.0, Some(prev.1))
        };
        drop(inner);
        drop(evicted);
        self.fan_out(taken, || answer.clone().ok_or(WaitError::Closed));
    }

    /// Wakes what a publish or a close took out, outside the lock.
    ///
    /// Everyone is told even if a waker or a callback panics; the first
    /// panic is resumed once everyone has been told.
    fn fan_out(&self, taken: Taken<T>, answer: impl Fn() -> Result<Changed<T>, WaitError>) {
        let Taken {
            mut wakers,
            callbacks,
        } = taken;
        let mut panicked = None;
        if !wakers.is_empty() {
            // `wake_all` wakes the rest if one panics; the callbacks below
            // still run, and the panic is resumed at the end.
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| wake_all(&mut wakers))) {
                panicked = Some(p);
                wakers.clear();
            }
            let mut spare = self.shared.spare.lock();
            if wakers.capacity() > spare.capacity() {
                *spare = wakers;
            }
        }
        for cb in callbacks.into_iter().flatten() {
            let answer = answer();
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(move || cb(answer))) {
                panicked.get_or_insert(p);
            }
        }
        if let Some(p) = panicked {
            panic::resume_unwind(p);
        }
    }

    /// Closes the broadcaster: every pending waiter resolves with
    /// [`WaitError::Closed`] and every later wait fails at once.
    ///
    /// A future that a publish woke but that has not been polled yet also
    /// resolves `Closed`: after a close, nothing is delivered.
    ///
    /// For graceful shutdown: a server closes its broadcasters so that held
    /// long polls are answered (`503`, `Retry-After`) instead of running out
    /// their timeout. Returns `false` if it was already closed.
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
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.closed = true;
        let taken = inner.waiters.take_all(&self.shared.spare);
        drop(inner);
        self.fan_out(taken, || Err(WaitError::Closed));
        true
    }

    /// Sets or clears the failing state (see `Inner::failing`). Setting it
    /// answers every pending waiter with [`WaitError::Closed`]; it starts a
    /// new era, so that no stale waiter touches a slot of the list taken
    /// here. Returns whether the state changed.
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
        inner.era = inner.era.wrapping_add(1);
        let taken = inner.waiters.take_all(&self.shared.spare);
        drop(inner);
        self.fan_out(taken, || Err(WaitError::Closed));
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

    /// Waiters (futures and callbacks) registered now. A dropped future or
    /// registration leaves this count at once.
    pub fn waiter_count(&self) -> usize {
        self.lock().waiters.len()
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
    /// ```
    /// # tokio_test::block_on(async {
    /// use longpoll::{Broadcaster, Version};
    ///
    /// let b = Broadcaster::new("v0");
    /// b.notify("v1").unwrap();
    /// // A client that saw version 0 is answered at once.
    /// let changed = b.wait(Version::new(0)).await.unwrap();
    /// assert_eq!(**changed.value(), "v1");
    /// assert_eq!(changed.version(), Version::new(1));
    /// # });
    /// ```
    pub fn wait(&self, cursor: impl Into<Cursor>) -> Wait<'_, T> {
        Wait::new(&self.shared, WaitState::new(&self.shared, cursor.into()))
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
            return Err(WaitError::Closed);
        }
        if let Some(answer) = inner.answer(state.since(), state.epoch()) {
            drop(inner);
            callback(Ok(answer));
            return Ok(Registration::fired(Arc::clone(&self.shared)));
        }
        if inner.waiters.len() >= self.shared.max_waiters {
            return Err(WaitError::Full {
                limit: self.shared.max_waiters,
            });
        }
        let idx = inner.waiters.insert_callback(callback);
        let (epoch, era) = (inner.current().epoch, inner.era);
        drop(inner);
        Ok(state.into_registration(Arc::clone(&self.shared), epoch, era, idx))
    }

    /// A [`Stream`](futures_core::Stream) of answers from `cursor` on: each
    /// item continues where the previous one ended.
    ///
    /// With a history longer than the burst of changes between two polls of
    /// the stream, every version arrives exactly once, in order. The stream
    /// ends after yielding an error ([`WaitError::Closed`] or
    /// [`WaitError::Full`]).
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
    pub fn stream(&self, cursor: impl Into<Cursor>) -> UpdateStream<T> {
        UpdateStream::new(Arc::clone(&self.shared), cursor.into())
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

/// Wakes every waker, even if one of them panics.
fn wake_all(wakers: &mut Vec<Option<Waker>>) {
    struct Rest<'a>(std::vec::Drain<'a, Option<Waker>>);
    impl Drop for Rest<'_> {
        fn drop(&mut self) {
            // Only reached with wakers left when a `wake` panicked.
            self.0.by_ref().flatten().for_each(Waker::wake);
        }
    }
    let mut rest = Rest(wakers.drain(..));
    rest.0.by_ref().flatten().for_each(Waker::wake);
}

impl<T> Clone for Broadcaster<T> {
    fn clone(&self) -> Self {
        Broadcaster {
            shared: Arc::clone(&self.shared),
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
            .field("waiters", &inner.waiters.len())
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
        if inner.closed {
            return Err(WaitError::Closed);
        }
        Ok(inner.retained_after(None, Some(Resync::OtherEpoch)))
    }
}

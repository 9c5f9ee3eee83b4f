//! The state every handle, future, stream and registration points at, the
//! cursor rules that answer a waiter, and the fan-out that wakes them.
//!
//! # Locks
//!
//! `Shared::inner` guards value, version, epoch, history and waiters
//! together. `Shared::spare` holds an emptied waker vector between
//! fan-outs. Lock order: `inner`, then `spare`. No user code (a waker's
//! `wake` or `drop`, a callback, a value's `drop`) runs under either; the
//! one exception is [`Broadcaster::modify`](crate::Broadcaster::modify)'s
//! closure, which is documented as running under `inner`.
//!
//! # Handles
//!
//! `handles` counts the [`Broadcaster`](crate::Broadcaster) values, the
//! only things that can publish. Futures that borrow a handle, owned waits,
//! streams, registrations and the SSE body hold the `Arc<Shared>` but are
//! not handles. When the count drops to zero the broadcaster closes, so
//! every waiter learns that nothing will ever come.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::task::Waker;

use crate::changed::{Changed, Resync, Update};
use crate::error::WaitError;
use crate::sync::{AtomicUsize, Mutex};
use crate::telemetry::{self, FanOut};
use crate::waiters::{Taken, Waiters, Wakers};
use crate::{Epoch, Version};

/// A panic caught while waking, resumed once everyone was told.
pub(crate) type Panic = Box<dyn std::any::Any + Send + 'static>;

pub(crate) struct Shared<T> {
    /// Everything that changes, under one lock: value, version, epoch,
    /// history and waiters move together, which is what makes
    /// "register, then check" airtight.
    pub(crate) inner: Mutex<Inner<T>>,
    /// Most updates kept for cursors that fall behind (at least 1).
    pub(crate) history: usize,
    /// Most places taken at once (see [`Inner::places`]).
    pub(crate) max_waiters: usize,
    /// The emptied waker vector of the last fan-out, for the next round of
    /// registrations. Under its own lock, so that returning it after a
    /// fan-out does not contend with the waiters that fan-out just woke.
    pub(crate) spare: Mutex<Vec<Option<Waker>>>,
    /// `Broadcaster` handles alive (see the module docs).
    pub(crate) handles: AtomicUsize,
    /// How far ahead of the current version a same-epoch cursor may be and
    /// still wait for that version rather than be answered at once (0: not
    /// at all). A backplane sets it: there, a cursor ahead usually comes
    /// from a faster instance, and this one will get there.
    pub(crate) hold_ahead: u8,
    /// Metric handles, registered when built (empty without the `metrics`
    /// feature).
    pub(crate) telemetry: crate::telemetry::Handles,
}

pub(crate) struct Inner<T> {
    /// Retained updates, oldest first; the last one is the current state.
    /// Never empty.
    pub(crate) history: VecDeque<Update<T>>,
    /// Waiters registered since the last time the list was taken.
    pub(crate) waiters: Waiters<T>,
    /// Bumped each time the waiter list is taken out whole (a publish, a
    /// restart, a close). A waiter that registered in generation `g` still
    /// has its slot if and only if the generation is still `g`: the slot
    /// indices of a later generation are never confused with it, however
    /// the sequence moved (a restart may return to an earlier epoch and
    /// version). A `u64` bumped once per publish does not wrap: at a
    /// billion publishes a second it would take 584 years.
    pub(crate) generation: u64,
    /// Streams that hold a place under the waiter limit but are not in the
    /// list now (between two items, or just woken).
    pub(crate) streams_out: usize,
    /// Streams whose waker is in the list now.
    pub(crate) streams_in: usize,
    pub(crate) closed: bool,
    /// While set, waits are answered [`WaitError::Closed`] at once, as if
    /// closed, but publishes still go through: a backplane channel whose
    /// store holds unusable data, until it heals.
    pub(crate) failing: bool,
}

impl<T> Inner<T> {
    pub(crate) fn new(history: VecDeque<Update<T>>) -> Self {
        Inner {
            history,
            waiters: Waiters::new(),
            generation: 0,
            streams_out: 0,
            streams_in: 0,
            closed: false,
            failing: false,
        }
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

    pub(crate) fn current(&self) -> &Update<T> {
        self.history.back().expect("history is never empty")
    }

    /// Whether a waiter registered in `generation` still has its slot.
    pub(crate) fn holds(&self, generation: u64) -> bool {
        self.generation == generation
    }

    /// Places taken under the waiter limit: every registered future and
    /// callback, and every stream from the first time it waited until it
    /// ends or is dropped.
    pub(crate) fn places(&self) -> usize {
        self.waiters.len() + self.streams_out
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
    pub(crate) fn retained_after(
        &self,
        since: Option<Version>,
        resync: Option<Resync>,
    ) -> Changed<T> {
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

    /// An `Arc` for `value`, the next update's: the allocation of the
    /// update about to be evicted when nobody else holds it (its old value
    /// is returned, to be dropped once the lock is released), else a new
    /// one. A publish into a full history then allocates and frees nothing.
    pub(crate) fn arc_for(&mut self, history: usize, value: T) -> (std::sync::Arc<T>, Option<T>) {
        if self.history.len() >= history {
            if let Some(front) = self.history.front_mut() {
                if let Some(slot) = std::sync::Arc::get_mut(&mut front.value) {
                    let old = std::mem::replace(slot, value);
                    let evicted = self.history.pop_front().expect("the front");
                    return (evicted.value, Some(old));
                }
            }
        }
        (std::sync::Arc::new(value), None)
    }

    /// Takes every waiter out and starts a new generation. The streams in
    /// the list keep their places, now out of it.
    pub(crate) fn take_all(&mut self, spare: &Mutex<Vec<Option<Waker>>>) -> Taken<T> {
        self.generation = self.generation.wrapping_add(1);
        self.streams_out += std::mem::take(&mut self.streams_in);
        self.waiters.take_all(spare)
    }

    /// Makes `update` the current state and takes every waiter out.
    /// Returns what must be dropped or woken once the lock is released.
    pub(crate) fn push(
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
        (self.take_all(spare), evicted)
    }
}

impl<T> Shared<T> {
    /// Closes the broadcaster; `false` if it was closed already. A panic
    /// of a callback is returned, to be resumed by the caller.
    pub(crate) fn close(&self) -> (bool, Option<Panic>) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return (false, None);
        }
        inner.closed = true;
        let taken = inner.take_all(&self.spare);
        drop(inner);
        (
            true,
            self.fan_out(FanOut::Close, taken, || Err(WaitError::Closed)),
        )
    }

    /// Wakes what a publish or a close took out, outside the lock.
    ///
    /// Everyone is told even if wakers or callbacks panic: each is called
    /// under its own `catch_unwind`. The first panic is returned (the others
    /// are dropped) once everyone has been told.
    pub(crate) fn fan_out(
        &self,
        what: FanOut,
        taken: Taken<T>,
        answer: impl Fn() -> Result<Changed<T>, WaitError>,
    ) -> Option<Panic> {
        let Taken { wakers, callbacks } = taken;
        let timer = telemetry::fan_out_started(what, taken_any(&wakers, &callbacks));
        let mut panicked = None;
        let mut woken = 0usize;
        let mut wake = |waker: Waker| {
            woken += 1;
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                panicked.get_or_insert(p);
            }
        };
        match wakers {
            Wakers::Few(few) => few.into_iter().flatten().for_each(&mut wake),
            Wakers::Many(mut wakers) => {
                wakers.drain(..).flatten().for_each(&mut wake);
                let mut spare = self.spare.lock();
                if wakers.capacity() > spare.capacity() {
                    std::mem::swap(&mut *spare, &mut wakers);
                }
            }
        }
        for cb in callbacks.into_iter().flatten() {
            woken += 1;
            let answer = answer();
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(move || cb(answer))) {
                panicked.get_or_insert(p);
            }
        }
        telemetry::fanned_out(&self.telemetry, what, woken, timer);
        panicked
    }
}

/// Whether a fan-out has anyone to wake or call.
fn taken_any<T>(wakers: &Wakers, callbacks: &[Option<crate::waiters::Callback<T>>]) -> bool {
    !callbacks.is_empty()
        || match wakers {
            Wakers::Few(few) => few.iter().any(Option::is_some),
            Wakers::Many(many) => !many.is_empty(),
        }
}

/// Resumes a panic caught during a fan-out.
pub(crate) fn resume(panicked: Option<Panic>) {
    if let Some(p) = panicked {
        panic::resume_unwind(p);
    }
}

//! The waiter list: one slab of wakers and one of callbacks, for the
//! current generation only.
//!
//! Every publish (and every restart and close) takes both slabs out whole
//! (an O(1) swap under the lock), starts a new generation, and wakes them
//! after the lock is released. A pending waiter therefore lives in the slab
//! of the generation it registered in: if the generation is still that one,
//! its slot is where it left it; if not, a publish (or a close) already took
//! it. That is all a cancelled future needs to unregister in O(1), with no
//! ABA: the generation is a `u64` that only goes up, so a restart that
//! returns to an earlier `(epoch, version)` is still told apart, however
//! many times it does.

use std::task::Waker;

use crate::sync::Mutex;
use crate::{Changed, WaitError};

/// A registered callback, called once with the answer (or `Closed`).
pub(crate) type Callback<T> = Box<dyn FnOnce(Result<Changed<T>, WaitError>) + Send + 'static>;

/// A vector of optional entries with a free list: O(1) insert and remove by
/// index, 16 bytes a slot for a `Waker`.
pub(crate) struct Slab<S> {
    entries: Vec<Option<S>>,
    /// Indices of `None` entries, reused before the vector grows.
    free: Vec<u32>,
}

impl<S> Slab<S> {
    const fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    fn insert(&mut self, value: S) -> u32 {
        match self.free.pop() {
            Some(idx) => {
                debug_assert!(self.entries[idx as usize].is_none());
                self.entries[idx as usize] = Some(value);
                idx
            }
            None => {
                let idx =
                    u32::try_from(self.entries.len()).expect("longpoll: more than 2^32 waiters");
                self.entries.push(Some(value));
                idx
            }
        }
    }

    fn get_mut(&mut self, idx: u32) -> Option<&mut S> {
        self.entries.get_mut(idx as usize).and_then(Option::as_mut)
    }

    fn remove(&mut self, idx: u32) -> Option<S> {
        let taken = self.entries.get_mut(idx as usize).and_then(Option::take);
        if taken.is_some() {
            self.free.push(idx);
        }
        taken
    }

    /// Takes every entry out, leaving `replacement` (which must be empty) in
    /// place.
    fn take(&mut self, replacement: Vec<Option<S>>) -> Vec<Option<S>> {
        debug_assert!(replacement.is_empty());
        self.free.clear();
        std::mem::replace(&mut self.entries, replacement)
    }
}

/// The waiters registered at the current `(epoch, version)`.
pub(crate) struct Waiters<T> {
    wakers: Slab<Waker>,
    callbacks: Slab<Callback<T>>,
}

/// Everything a publish took out of the list, to be woken outside the lock.
pub(crate) struct Taken<T> {
    pub(crate) wakers: Wakers,
    pub(crate) callbacks: Vec<Option<Callback<T>>>,
}

/// Up to this many wakers are moved out of the slab by value, which keeps
/// the slab's vector (no allocation, no `spare` lock, nothing to free).
pub(crate) const FEW: usize = 4;

/// The wakers a publish took out.
pub(crate) enum Wakers {
    /// A handful, moved out; the slab kept its vector.
    Few([Option<Waker>; FEW]),
    /// The slab's whole vector; an emptied one took its place.
    Many(Vec<Option<Waker>>),
}

impl<T> Waiters<T> {
    pub(crate) const fn new() -> Self {
        Waiters {
            wakers: Slab::new(),
            callbacks: Slab::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.wakers.len() + self.callbacks.len()
    }

    pub(crate) fn insert_waker(&mut self, waker: Waker) -> u32 {
        self.wakers.insert(waker)
    }

    pub(crate) fn waker_mut(&mut self, idx: u32) -> Option<&mut Waker> {
        self.wakers.get_mut(idx)
    }

    pub(crate) fn remove_waker(&mut self, idx: u32) -> Option<Waker> {
        self.wakers.remove(idx)
    }

    pub(crate) fn insert_callback(&mut self, cb: Callback<T>) -> u32 {
        self.callbacks.insert(cb)
    }

    pub(crate) fn remove_callback(&mut self, idx: u32) -> Option<Callback<T>> {
        self.callbacks.remove(idx)
    }

    /// Takes every waiter out. O(1): two vector swaps. The wakers' slab is
    /// replaced by `spare`, an emptied vector of an earlier fan-out, so that
    /// the next round of registrations does not grow one from nothing.
    ///
    /// A handful of wakers ([`FEW`]) are moved out instead, leaving the
    /// slab's vector in place: the common one-waiter publish then takes no
    /// second lock and frees nothing.
    pub(crate) fn take_all(&mut self, spare: &Mutex<Vec<Option<Waker>>>) -> Taken<T> {
        let wakers = if self.wakers.entries.len() <= FEW {
            let mut few: [Option<Waker>; FEW] = Default::default();
            for (slot, waker) in few.iter_mut().zip(self.wakers.entries.drain(..)) {
                *slot = waker;
            }
            self.wakers.free.clear();
            Wakers::Few(few)
        } else {
            let spare = std::mem::take(&mut *spare.lock());
            Wakers::Many(self.wakers.take(spare))
        };
        let callbacks = if self.callbacks.entries.is_empty() {
            Vec::new()
        } else {
            self.callbacks.take(Vec::new())
        };
        Taken { wakers, callbacks }
    }
}

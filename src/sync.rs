//! The one place that picks the synchronisation primitives, so that the
//! loom models (`RUSTFLAGS="--cfg loom"`, see `loom/`) can swap in loom's
//! checked versions: every lock, atomic and shared `Arc` of the broadcaster
//! and of the keyed hub comes from here.
//!
//! The values users see (`Update::value`, an `Arc<T>`) stay `std`'s: loom
//! need not see them, as no waiter reads or writes through them to
//! synchronise.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize};
    pub(crate) use std::sync::Arc;

    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    /// `parking_lot::Mutex`: no poisoning, and a fast uncontended path.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(parking_lot::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize};
    pub(crate) use loom::sync::Arc;

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    /// loom's model-checked mutex.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // A panic under one of our locks is a bug: no user code runs there.
            self.0.lock().expect("longpoll: lock poisoned")
        }
    }
}

pub(crate) use imp::{Arc, AtomicBool, AtomicUsize, Mutex, MutexGuard};

//! The one place that picks the lock implementation, so that the loom models
//! (`RUSTFLAGS="--cfg loom"`) can swap in loom's checked mutex.

#[cfg(not(loom))]
mod imp {
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
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    /// loom's model-checked mutex.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // Nothing of ours panics while holding the lock; a poisoned lock is a bug.
            self.0.lock().expect("longpoll: lock poisoned")
        }
    }
}

pub(crate) use imp::{Mutex, MutexGuard};

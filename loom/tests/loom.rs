//! Loom models of the waiter list: every interleaving of register, publish,
//! drop and close, on loom's checked mutex.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --manifest-path loom/Cargo.toml
//! ```
//!
//! A lost wake-up shows up as a deadlock: `block_on` parks forever and loom
//! reports it.
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::task::Poll;

use loom::future::block_on;
use loom::sync::atomic::AtomicUsize;
use loom::sync::Arc;
use futures::Stream;
use loom::thread;
use longpoll::{Broadcaster, Cursor, Version, WaitError};

/// A waiter registering while a publisher bumps the version: the waiter
/// ends with version 1 whichever comes first.
#[test]
fn wait_racing_notify_always_sees_the_change() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let changed = block_on(b.wait(Version::ZERO)).unwrap();
        assert_eq!(changed.version(), Version::new(1));
        assert_eq!(**changed.value(), 1);
        publisher.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
    });
}

/// `Cursor::NEXT` pins the version at the call: a publish that lands
/// between the call and the first poll is still delivered.
#[test]
fn next_cursor_racing_notify_sees_a_change_after_the_call() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let wait = b.wait(Cursor::NEXT);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let changed = block_on(wait).unwrap();
        assert_eq!(changed.version(), Version::new(1));
        publisher.join().unwrap();
    });
}

/// One waiter is polled once and dropped while a publisher runs and a
/// second waiter waits: the second is woken, and the list ends empty
/// (the dropped waiter never removes the second one's slot).
#[test]
fn drop_of_one_waiter_racing_notify_leaves_the_other_woken() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let dropper = {
            let b = b.clone();
            thread::spawn(move || {
                let mut wait = Box::pin(b.wait(Version::ZERO));
                // One poll registers it (or finds the change); then cancel.
                block_on(futures::future::poll_fn(|cx| {
                    let _ = wait.as_mut().poll(cx);
                    Poll::Ready(())
                }));
                drop(wait);
            })
        };
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let changed = block_on(b.wait(Version::ZERO)).unwrap();
        assert_eq!(changed.version(), Version::new(1));
        dropper.join().unwrap();
        publisher.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
    });
}

/// A waiter registered at version 0 is dropped only after a publish took
/// the list and a new waiter took its slot index at version 1: the late
/// drop must not unregister the newcomer, who sees version 2.
#[test]
fn stale_drop_after_publish_never_removes_a_newer_waiter() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        // A stream owns its handle, so it can be dropped on another thread.
        let mut old = b.stream(Version::ZERO);
        block_on(futures::future::poll_fn(|cx| {
            assert!(Pin::new(&mut old).poll_next(cx).is_pending());
            Poll::Ready(())
        }));
        b.notify(1).unwrap();
        let dropper = thread::spawn(move || drop(old));
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(2).unwrap())
        };
        let changed = block_on(b.wait(Version::new(1))).unwrap();
        assert_eq!(changed.version(), Version::new(2));
        dropper.join().unwrap();
        publisher.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
    });
}

/// A waiter racing `close`: it resolves (with the change or `Closed`),
/// never hangs, and nothing stays registered.
#[test]
fn wait_racing_close_resolves() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let closer = {
            let b = b.clone();
            thread::spawn(move || assert!(b.close()))
        };
        let r = block_on(b.wait(Version::ZERO));
        assert_eq!(r.unwrap_err(), WaitError::Closed);
        closer.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
        assert!(b.notify(1).is_err());
    });
}

/// A callback registered while a publisher runs and the handle is dropped:
/// the callback runs at most once, and the list ends empty.
#[test]
fn callback_register_notify_and_cancel_race() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let calls = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let reg = {
            let calls = calls.clone();
            b.register(Version::ZERO, move |r| {
                assert_eq!(r.unwrap().version(), Version::new(1));
                calls.fetch_add(1, SeqCst);
            })
            .unwrap()
        };
        let cancelled = reg.cancel();
        publisher.join().unwrap();
        let n = calls.load(SeqCst);
        assert!(n <= 1);
        // Cancelled before the publish took it: never called.
        assert_eq!(cancelled, n == 0);
        assert_eq!(b.waiter_count(), 0);
    });
}

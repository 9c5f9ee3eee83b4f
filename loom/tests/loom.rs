//! Loom models of one broadcaster's waiter list: register, publish, drop,
//! close, restarts, a re-polled waker, the last handle dropped, and the
//! places that streams hold. Every lock, atomic and shared `Arc` of the
//! crate comes from its sync shim (`src/sync.rs`), which swaps in loom's.
//!
//! Run with (CI does):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --manifest-path loom/Cargo.toml --target-dir target/loom
//! ```
//!
//! Each model is explored for every interleaving loom generates with at
//! most two preemptions per execution (`LOOM_MAX_PREEMPTIONS=2`), not for
//! every interleaving there is. A lost wake-up shows up as a deadlock:
//! `block_on` parks forever and loom reports it.
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
use longpoll::{Broadcaster, Cursor, Epoch, Version, WaitError};

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
        let changed = block_on(b.wait(Cursor::at(Version::ZERO))).unwrap();
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
                let mut wait = Box::pin(b.wait(Cursor::at(Version::ZERO)));
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
        let changed = block_on(b.wait(Cursor::at(Version::ZERO))).unwrap();
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
        let mut old = b.stream(Cursor::at(Version::ZERO));
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
        let changed = block_on(b.wait(Cursor::at(Version::new(1)))).unwrap();
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
        let r = block_on(b.wait(Cursor::at(Version::ZERO)));
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
            b.register(Cursor::at(Version::ZERO), move |r| {
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

/// Polls `fut` once on this thread with a waker that does nothing.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    Pin::new(fut).poll(&mut cx)
}

/// A waiter of the old sequence, after two restarts that bring the
/// broadcaster back to its very `(epoch, version)`, is polled and dropped
/// on one thread while a new waiter of the same cursor waits and a
/// publisher runs: the new waiter is woken with the publish, and the list
/// ends empty (the stale one never takes or removes the new one's slot).
#[test]
fn stale_waiter_after_restarts_back_racing_a_new_waiter_and_notify() {
    loom::model(|| {
        let (home, other) = (Epoch::new(1).unwrap(), Epoch::new(2).unwrap());
        let b = Broadcaster::builder().epoch(home).build(0u32);
        let mut stale = b.wait_owned(Cursor::NEXT);
        assert!(poll_once(&mut stale).is_pending());
        b.restart(other, Version::ZERO, 0).unwrap();
        b.restart(home, Version::ZERO, 0).unwrap();
        let fresh = b.wait(Cursor::at(Version::ZERO).with_epoch(home));
        let stale = thread::spawn(move || {
            // Back at its cursor: it registers again, then goes.
            let _ = poll_once(&mut stale);
            drop(stale);
        });
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let changed = block_on(fresh).unwrap();
        assert_eq!(changed.version(), Version::new(1));
        stale.join().unwrap();
        publisher.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
    });
}

/// A waiter registered by one task is moved to another, whose waker is
/// different, while a publisher runs: the publish wakes the new task
/// (the re-poll swaps the waker in the slot, or sees that the list was
/// taken).
#[test]
fn waker_changed_on_repoll_racing_notify_wakes_the_new_task() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let mut wait = b.wait_owned(Cursor::at(Version::ZERO));
        assert!(poll_once(&mut wait).is_pending());
        let waiter = thread::spawn(move || block_on(wait).unwrap().version());
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        assert_eq!(waiter.join().unwrap(), Version::new(1));
        publisher.join().unwrap();
        assert_eq!(b.waiter_count(), 0);
    });
}

/// A detached callback and a future on the same list, racing a publish and
/// a close: each hears exactly one answer (the change or `Closed`), the
/// future never hangs, and nothing stays registered.
#[test]
fn callback_and_future_on_one_list_racing_notify_and_close() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let calls = calls.clone();
            b.register(Cursor::at(Version::ZERO), move |r| {
                match r {
                    Ok(c) => assert_eq!(c.version(), Version::new(1)),
                    Err(e) => assert!(e.is_closed()),
                }
                calls.fetch_add(1, SeqCst);
            })
            .unwrap()
            .detach();
        }
        let closer = {
            let b = b.clone();
            thread::spawn(move || b.close())
        };
        let publisher = {
            let b = b.clone();
            thread::spawn(move || {
                let _ = b.notify(1);
            })
        };
        match block_on(b.wait(Cursor::at(Version::ZERO))) {
            Ok(c) => assert_eq!(c.version(), Version::new(1)),
            Err(e) => assert!(e.is_closed()),
        }
        assert!(closer.join().unwrap());
        publisher.join().unwrap();
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(b.waiter_count(), 0);
    });
}

/// The last two handles dropped on two threads while an owned wait and a
/// detached callback wait: exactly one drop closes, and both hear `Closed`.
#[test]
fn last_two_handles_dropped_racing_resolve_the_waiters_closed() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let calls = calls.clone();
            b.register(Cursor::NEXT, move |r| {
                assert_eq!(r.unwrap_err(), WaitError::Closed);
                calls.fetch_add(1, SeqCst);
            })
            .unwrap()
            .detach();
        }
        let wait = b.wait_owned(Cursor::NEXT);
        let other = b.clone();
        let dropper = thread::spawn(move || drop(other));
        let waiter = thread::spawn(move || block_on(wait));
        drop(b);
        dropper.join().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap_err(), WaitError::Closed);
        assert_eq!(calls.load(SeqCst), 1);
    });
}

/// A stream holding the only place under `max_waiters(1)` is woken by a
/// publish while another task tries to wait: the other task is refused
/// (the stream keeps its place, in the list or out of it), and the stream
/// yields the change and registers again without meeting `Full`.
#[test]
fn stream_keeps_its_place_racing_notify_and_another_wait() {
    loom::model(|| {
        let b = Broadcaster::builder().max_waiters(1).build(0u32);
        let mut stream = b.stream(Cursor::at(Version::ZERO));
        block_on(futures::future::poll_fn(|cx| {
            assert!(Pin::new(&mut stream).poll_next(cx).is_pending());
            Poll::Ready(())
        }));
        let publisher = {
            let b = b.clone();
            thread::spawn(move || b.notify(1).unwrap())
        };
        let other = {
            let b = b.clone();
            thread::spawn(move || {
                let mut w = b.wait(Cursor::at(Version::ZERO));
                match poll_once(&mut w) {
                    // Refused while the stream holds the place ...
                    Poll::Ready(Err(e)) => assert!(e.is_full()),
                    // ... or answered at once after the publish.
                    Poll::Ready(Ok(c)) => assert_eq!(c.version(), Version::new(1)),
                    Poll::Pending => panic!("took the stream's place"),
                }
            })
        };
        let item = block_on(futures::StreamExt::next(&mut stream));
        assert_eq!(item.unwrap().unwrap().version(), Version::new(1));
        publisher.join().unwrap();
        other.join().unwrap();
        assert_eq!(b.waiter_count(), 1, "the stream still holds its place");
        drop(stream);
        assert_eq!(b.waiter_count(), 0);
    });
}

/// A reader holds an answer and drops it while a publisher publishes twice
/// into a full history (which reuses the evicted update's allocation when
/// nobody holds it): the held value never changes, and the last value is
/// the publisher's.
#[test]
fn held_answer_racing_publishes_that_reuse_allocations_keeps_its_value() {
    loom::model(|| {
        let b = Broadcaster::new(0u32);
        b.notify(1).unwrap();
        let held = block_on(b.wait(Cursor::at(Version::ZERO))).unwrap();
        let publisher = {
            let b = b.clone();
            thread::spawn(move || {
                b.notify(2).unwrap();
                b.notify(3).unwrap();
            })
        };
        assert_eq!(**held.value(), 1);
        let again = held.clone();
        drop(held);
        assert_eq!(**again.value(), 1);
        drop(again);
        publisher.join().unwrap();
        assert_eq!(**b.current().value(), 3);
    });
}

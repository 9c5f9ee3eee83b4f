//! The callback API: when a callback fires, what cancels it, and that
//! callbacks, wakers and values may call back into the broadcaster (they run
//! outside its lock) without deadlocking.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use longpoll::{Broadcaster, Changed, Cursor, Registration, Resync, Version, WaitError};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

/// Runs `f` on its own thread and fails the test if it has not returned
/// within ten seconds: a deadlock becomes a failure instead of a hang.
fn within_ten_seconds<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        // Returned, or panicked (the sender was dropped): join tells which.
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(r) => r,
            Err(p) => panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: still running after 10 s"),
    }
}

fn version_of(r: Result<Changed<u32>, WaitError>) -> u64 {
    r.unwrap().version().get()
}

#[test]
fn register_next_then_notify_fires_once_with_that_notify() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let reg = b
        .register(Cursor::NEXT, move |r| {
            let c = r.unwrap();
            tx.send((c.version(), **c.value(), c.resync())).unwrap();
        })
        .unwrap();
    assert!(rx.try_recv().is_err());
    assert_eq!(b.waiter_count(), 1);
    b.notify(7).unwrap();
    assert_eq!(rx.try_recv().unwrap(), (Version::new(1), 7, None));
    assert_eq!(b.waiter_count(), 0);
    b.notify(8).unwrap();
    // Called once: the channel's sender went with the callback.
    assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert!(!reg.cancel(), "already ran");
}

#[test]
fn register_next_then_notify_runs_the_callback_on_the_publishing_thread() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |_| {
        tx.send(thread::current().id()).unwrap()
    })
    .unwrap()
    .detach();
    let publisher = thread::scope(|s| {
        s.spawn(|| {
            b.notify(1).unwrap();
            thread::current().id()
        })
        .join()
        .unwrap()
    });
    assert_eq!(rx.try_recv().unwrap(), publisher);
}

#[test]
fn register_with_cursor_behind_fires_inline_before_register_returns() {
    let b = Broadcaster::new(0u32);
    b.notify(1).unwrap();
    b.notify(2).unwrap();
    let fired_on = Arc::new(Mutex::new(None));
    let reg = b
        .register(Cursor::at(Version::new(1)), {
            let fired_on = Arc::clone(&fired_on);
            move |r| *fired_on.lock().unwrap() = Some((thread::current().id(), version_of(r)))
        })
        .unwrap();
    assert_eq!(
        *fired_on.lock().unwrap(),
        Some((thread::current().id(), 2)),
        "fired on this thread, before register returned"
    );
    assert_eq!(b.waiter_count(), 0);
    assert!(!reg.cancel(), "answered at registration");
}

#[test]
fn register_with_other_epoch_fires_inline_flagged_other_epoch() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let foreign = Cursor::at(Version::ZERO).with_epoch(longpoll::Epoch::random());
    let _reg = b
        .register(foreign, move |r| tx.send(r.unwrap().resync()).unwrap())
        .unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(Resync::OtherEpoch));
}

#[test]
fn registration_dropped_before_notify_cancels_and_the_callback_never_runs() {
    let b = Broadcaster::new(0u32);
    let ran = Arc::new(AtomicUsize::new(0));
    let reg = b
        .register(Cursor::NEXT, {
            let ran = Arc::clone(&ran);
            move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(b.waiter_count(), 1);
    assert_eq!(Arc::strong_count(&ran), 2);
    drop(reg);
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(Arc::strong_count(&ran), 1, "the callback was dropped");
    b.notify(1).unwrap();
    b.close();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn registration_detached_then_notify_still_fires() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| tx.send(version_of(r)).unwrap())
        .unwrap()
        .detach();
    assert_eq!(b.waiter_count(), 1);
    b.notify(1).unwrap();
    assert_eq!(rx.try_recv().unwrap(), 1);
}

#[test]
fn registration_detached_then_close_fires_with_closed() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| {
        tx.send(r.map(|c| c.version())).unwrap()
    })
    .unwrap()
    .detach();
    b.close();
    assert_eq!(rx.try_recv().unwrap(), Err(WaitError::Closed));
}

#[test]
fn cancel_while_pending_returns_true_and_the_callback_never_runs() {
    let b = Broadcaster::new(0u32);
    let reg = b
        .register(Cursor::NEXT, |_| panic!("cancelled callbacks never run"))
        .unwrap();
    assert!(reg.cancel());
    assert_eq!(b.waiter_count(), 0);
    b.notify(1).unwrap();
}

#[test]
fn cancel_after_notify_or_close_returns_false() {
    let b = Broadcaster::new(0u32);
    let after_notify = b.register(Cursor::NEXT, |_| {}).unwrap();
    b.notify(1).unwrap();
    assert!(!after_notify.cancel());

    let after_close = b.register(Cursor::NEXT, |_| {}).unwrap();
    b.close();
    assert!(!after_close.cancel());
}

#[test]
fn cancel_from_inside_another_callback_of_the_same_publish_returns_false_and_both_run() {
    let b = Broadcaster::new(0u32);
    let ran = Arc::new(AtomicUsize::new(0));
    let second: Arc<Mutex<Option<Registration<u32>>>> = Arc::default();
    let first = b
        .register(Cursor::NEXT, {
            let (ran, second) = (Arc::clone(&ran), Arc::clone(&second));
            move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
                let reg = second.lock().unwrap().take().unwrap();
                // Already taken out for calling by this publish.
                assert!(!reg.cancel());
            }
        })
        .unwrap();
    *second.lock().unwrap() = Some(
        b.register(Cursor::NEXT, {
            let ran = Arc::clone(&ran);
            move |_| {
                ran.fetch_add(10, Ordering::SeqCst);
            }
        })
        .unwrap(),
    );
    within_ten_seconds(move || b.notify(1).unwrap());
    assert_eq!(ran.load(Ordering::SeqCst), 11);
    drop(first);
}

#[test]
fn panicking_callback_then_other_callbacks_and_wakers_still_run_and_notify_panics() {
    let b = Broadcaster::new(0u32);
    let ran = Arc::new(AtomicUsize::new(0));
    let counting = |n| {
        let ran = Arc::clone(&ran);
        move |r: Result<Changed<u32>, WaitError>| {
            assert_eq!(version_of(r), 1);
            ran.fetch_add(n, Ordering::SeqCst);
        }
    };
    let _a = b.register(Cursor::NEXT, counting(1)).unwrap();
    let _p = b
        .register(Cursor::NEXT, |_| panic!("callback failed"))
        .unwrap();
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    let _c = b.register(Cursor::NEXT, counting(10)).unwrap();
    let _q = b
        .register(Cursor::NEXT, |_| panic!("second failure"))
        .unwrap();
    let _d = b.register(Cursor::NEXT, counting(100)).unwrap();

    let payload = panic::catch_unwind(AssertUnwindSafe(|| b.notify(1))).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("callback failed"),
        "the first panic propagates"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 111, "every other callback ran");
    assert!(wait.is_woken());
    assert_eq!(
        assert_ready!(wait.poll()).unwrap().version(),
        Version::new(1)
    );

    // The broadcaster is left consistent and usable.
    assert_eq!(b.version(), Version::new(1));
    assert_eq!(b.waiter_count(), 0);
    let mut next = spawn(b.wait(Cursor::NEXT));
    assert_pending!(next.poll());
    assert_eq!(b.notify(2).unwrap(), Version::new(2));
    assert_ready!(next.poll()).unwrap();
}

#[test]
fn panicking_callback_on_close_then_other_callbacks_still_closed_and_close_panics() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let _p = b.register(Cursor::NEXT, |_| panic!("boom")).unwrap();
    let _a = b
        .register(Cursor::NEXT, move |r| tx.send(r.unwrap_err()).unwrap())
        .unwrap();
    assert!(panic::catch_unwind(AssertUnwindSafe(|| b.close())).is_err());
    assert_eq!(rx.try_recv().unwrap(), WaitError::Closed);
    assert!(b.is_closed());
    assert!(!b.close());
}

#[test]
fn callback_that_notifies_the_same_broadcaster_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let inner = b.clone();
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::NEXT, move |r| {
        let seen = version_of(r);
        let published = inner.notify(2).unwrap().get();
        tx.send((seen, published)).unwrap();
    })
    .unwrap()
    .detach();
    let b2 = b.clone();
    within_ten_seconds(move || b2.notify(1).unwrap());
    assert_eq!(rx.try_recv().unwrap(), (1, 2));
    assert_eq!(b.version(), Version::new(2));
    assert_eq!(**b.current().value(), 2);
}

#[test]
fn callback_that_modifies_and_reads_the_same_broadcaster_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let inner = b.clone();
    b.register(Cursor::NEXT, move |_| {
        assert_eq!(inner.waiter_count(), 0);
        assert_eq!(inner.version(), Version::new(1));
        inner.modify(|n| Some(n * 10)).unwrap();
        let _ = format!("{inner:?}");
    })
    .unwrap()
    .detach();
    let b2 = b.clone();
    within_ten_seconds(move || b2.notify(4).unwrap());
    assert_eq!(**b.current().value(), 40);
}

/// Registers a callback that records each version it sees and registers
/// itself again from inside, at the cursor it was answered with.
fn chain(b: Broadcaster<u32>, seen: Arc<Mutex<Vec<u64>>>, cursor: Cursor) {
    let again = b.clone();
    b.register(cursor, move |r| {
        if let Ok(changed) = r {
            seen.lock().unwrap().push(changed.version().get());
            chain(again, seen, changed.cursor());
        }
    })
    .unwrap()
    .detach();
}

#[test]
fn callback_that_registers_again_from_inside_sees_every_later_notify_once() {
    let b = Broadcaster::new(0u32);
    let seen = Arc::new(Mutex::new(Vec::new()));
    chain(b.clone(), Arc::clone(&seen), Cursor::NEXT);
    let b2 = b.clone();
    within_ten_seconds(move || {
        for i in 1..=100 {
            b2.notify(i).unwrap();
            assert_eq!(b2.waiter_count(), 1, "re-registered at once");
        }
    });
    assert_eq!(*seen.lock().unwrap(), (1..=100).collect::<Vec<u64>>());
    b.close();
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn callback_that_registers_behind_from_inside_gets_its_inline_answer() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let inner = b.clone();
    b.register(Cursor::NEXT, move |_| {
        let tx = tx.clone();
        inner
            .register(Cursor::at(Version::ZERO), move |r| {
                tx.send(version_of(r)).unwrap()
            })
            .unwrap()
            .detach();
    })
    .unwrap()
    .detach();
    let b2 = b.clone();
    within_ten_seconds(move || b2.notify(1).unwrap());
    assert_eq!(rx.try_recv().unwrap(), 1);
}

// ---- wakers and values that call back in ------------------------------------

/// A waker that publishes on its broadcaster when the last clone is dropped.
struct NotifyOnDrop {
    b: Broadcaster<u32>,
    dropped: Arc<AtomicUsize>,
}

impl Wake for NotifyOnDrop {
    fn wake(self: Arc<Self>) {}
}

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
        let _ = self.b.notify(100);
    }
}

fn notify_on_drop(b: &Broadcaster<u32>, dropped: &Arc<AtomicUsize>) -> Waker {
    Waker::from(Arc::new(NotifyOnDrop {
        b: b.clone(),
        dropped: Arc::clone(dropped),
    }))
}

#[test]
fn waker_whose_drop_notifies_then_woken_by_notify_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let dropped = Arc::new(AtomicUsize::new(0));
    let b2 = b.clone();
    let d2 = Arc::clone(&dropped);
    within_ten_seconds(move || {
        let mut wait = b2.wait(Cursor::NEXT);
        let waker = notify_on_drop(&b2, &d2);
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker); // the list holds the last clone
        b2.notify(1).unwrap();
        drop(wait);
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(b.version(), Version::new(2), "the waker's drop published");
}

#[test]
fn waker_whose_drop_notifies_then_wait_dropped_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let dropped = Arc::new(AtomicUsize::new(0));
    let b2 = b.clone();
    let d2 = Arc::clone(&dropped);
    within_ten_seconds(move || {
        let mut wait = b2.wait(Cursor::NEXT);
        let waker = notify_on_drop(&b2, &d2);
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        drop(wait); // cancels, dropping the last clone
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(b.version(), Version::new(1));
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn waker_whose_drop_notifies_then_replaced_by_another_task_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let dropped = Arc::new(AtomicUsize::new(0));
    let b2 = b.clone();
    let d2 = Arc::clone(&dropped);
    let polled_again = within_ten_seconds(move || {
        let mut wait = b2.wait(Cursor::NEXT);
        let waker = notify_on_drop(&b2, &d2);
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        // Another task polls: the old waker is replaced and dropped, which
        // publishes, so this poll or the next sees version 1.
        let mut other = spawn(());
        let first = other.enter(|cx, _| Pin::new(&mut wait).poll(cx));
        match first {
            Poll::Ready(r) => version_of(r),
            Poll::Pending => {
                assert!(other.is_woken());
                match other.enter(|cx, _| Pin::new(&mut wait).poll(cx)) {
                    Poll::Ready(r) => version_of(r),
                    Poll::Pending => panic!("woken but not ready"),
                }
            }
        }
    });
    assert_eq!(polled_again, 1);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[test]
fn waker_whose_drop_notifies_then_close_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let dropped = Arc::new(AtomicUsize::new(0));
    let b2 = b.clone();
    let d2 = Arc::clone(&dropped);
    within_ten_seconds(move || {
        let mut wait = b2.wait(Cursor::NEXT);
        let waker = notify_on_drop(&b2, &d2);
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        assert!(b2.close());
        drop(wait);
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(
        b.version(),
        Version::ZERO,
        "the drop's notify found it closed"
    );
}

/// A waker that publishes from `wake` itself.
struct NotifyOnWake(Broadcaster<u32>);

impl Wake for NotifyOnWake {
    fn wake(self: Arc<Self>) {
        let _ = self.0.modify(|n| (*n < 5).then_some(n + 1));
    }
}

#[test]
fn waker_whose_wake_notifies_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let b2 = b.clone();
    within_ten_seconds(move || {
        let mut wait = b2.wait(Cursor::NEXT);
        let waker = Waker::from(Arc::new(NotifyOnWake(b2.clone())));
        assert!(Pin::new(&mut wait)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        b2.notify(1).unwrap();
        drop(wait);
    });
    assert_eq!(**b.current().value(), 2);
}

/// Something a callback captures whose drop publishes.
struct PublishOnDrop(Broadcaster<u32>);

impl Drop for PublishOnDrop {
    fn drop(&mut self) {
        let _ = self.0.notify(9);
    }
}

#[test]
fn callback_whose_captures_notify_on_drop_then_cancelled_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let b2 = b.clone();
    within_ten_seconds(move || {
        let guard = PublishOnDrop(b2.clone());
        let reg = b2.register(Cursor::NEXT, move |_| drop(guard)).unwrap();
        assert!(reg.cancel());
        let guard = PublishOnDrop(b2.clone());
        let reg = b2.register(Cursor::NEXT, move |_| drop(guard)).unwrap();
        drop(reg);
        // Refused at registration: dropped without running.
        b2.close();
        let guard = PublishOnDrop(b2.clone());
        assert!(b2.register(Cursor::NEXT, move |_| drop(guard)).is_err());
    });
    assert_eq!(b.version(), Version::new(2));
}

/// A value whose drop publishes on the broadcaster that held it.
struct Node(Option<Broadcaster<Node>>);

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let _ = b.notify(Node(None));
        }
    }
}

#[test]
fn value_whose_drop_notifies_then_evicted_from_history_does_not_deadlock() {
    let b = Broadcaster::new(Node(None));
    let b2 = b.clone();
    within_ten_seconds(move || {
        b2.notify(Node(Some(b2.clone()))).unwrap();
        // Evicts the value above, whose drop publishes version 3.
        b2.notify(Node(None)).unwrap();
    });
    assert_eq!(b.version(), Version::new(3));
}

#[test]
fn value_whose_drop_notifies_then_refused_by_publish_at_does_not_deadlock() {
    let b = Broadcaster::new(Node(None));
    b.notify(Node(None)).unwrap();
    let b2 = b.clone();
    within_ten_seconds(move || {
        let stale = b2.publish_at(Version::new(1), Node(Some(b2.clone())));
        assert!(stale.is_err());
    });
    assert_eq!(
        b.version(),
        Version::new(2),
        "the refused value's drop published"
    );
}

#[test]
fn value_whose_drop_notifies_then_refused_by_restart_does_not_deadlock() {
    let b = Broadcaster::new(Node(None));
    b.notify(Node(None)).unwrap();
    let b2 = b.clone();
    let epoch = b.epoch();
    within_ten_seconds(move || {
        let stale = b2.restart(epoch, Version::new(1), Node(Some(b2.clone())));
        assert!(stale.is_err());
    });
    assert_eq!(b.version(), Version::new(2));
}

#[test]
fn value_whose_drop_notifies_then_refused_as_closed_does_not_deadlock() {
    let b = Broadcaster::new(Node(None));
    b.close();
    let b2 = b.clone();
    within_ten_seconds(move || {
        assert!(b2.notify(Node(Some(b2.clone()))).is_err());
        assert!(b2
            .publish_at(Version::new(5), Node(Some(b2.clone())))
            .is_err());
        let other = longpoll::Epoch::random();
        assert!(b2
            .restart(other, Version::ZERO, Node(Some(b2.clone())))
            .is_err());
    });
    assert_eq!(b.version(), Version::ZERO);
}

/// A waker whose `wake` panics, counting its calls.
struct PanicOnWake(AtomicUsize);

impl Wake for PanicOnWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("waker failed");
    }
}

/// Polls `wait` once with `waker`; it must register.
fn park_with(wait: &mut Pin<Box<longpoll::Wait<'_, u32>>>, waker: &Waker) {
    let mut cx = Context::from_waker(waker);
    assert!(wait.as_mut().poll(&mut cx).is_pending());
}

#[test]
fn two_panicking_wakers_then_every_other_waiter_is_still_told_and_notify_panics_once() {
    let b = Broadcaster::new(0u32);
    let bad = Arc::new(PanicOnWake(AtomicUsize::new(0)));
    let bad_waker = Waker::from(Arc::clone(&bad));
    let mut first = Box::pin(b.wait(Cursor::NEXT));
    park_with(&mut first, &bad_waker);
    let mut good = spawn(b.wait(Cursor::NEXT));
    assert_pending!(good.poll());
    let mut second = Box::pin(b.wait(Cursor::NEXT));
    park_with(&mut second, &bad_waker);
    let (tx, rx) = mpsc::channel();
    let _cb = b
        .register(Cursor::NEXT, move |r| tx.send(version_of(r)).unwrap())
        .unwrap();

    let payload = panic::catch_unwind(AssertUnwindSafe(|| b.notify(1))).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("waker failed")
    );
    assert_eq!(
        bad.0.load(Ordering::SeqCst),
        2,
        "both panicking wakers were called"
    );
    assert!(good.is_woken());
    assert_eq!(rx.try_recv(), Ok(1));
    // The publish took effect: the caller can read where it stands.
    assert_eq!(b.version(), Version::new(1));
    assert_eq!(
        assert_ready!(good.poll()).unwrap().version(),
        Version::new(1)
    );
}

/// A value whose drop calls back into the broadcaster.
struct ReadsOnDrop(Option<Broadcaster<ReadsOnDrop>>);

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let _ = b.version();
        }
    }
}

#[test]
fn modify_at_the_last_version_panics_with_no_user_code_under_the_lock() {
    let b = Broadcaster::builder()
        .initial_version(Version::new(u64::MAX))
        .build(ReadsOnDrop(None));
    let inner = b.clone();
    let result = within_ten_seconds(move || {
        panic::catch_unwind(AssertUnwindSafe(|| {
            inner.modify(|_| Some(ReadsOnDrop(Some(inner.clone()))))
        }))
        .is_err()
    });
    assert!(result, "a version past u64::MAX cannot be published");
    assert_eq!(b.version(), Version::new(u64::MAX));
}

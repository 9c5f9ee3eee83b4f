//! Closing: every pending future, stream and callback is answered with
//! `Closed`, later calls fail fast, and a second close is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use longpoll::{Broadcaster, ClosedError, Cursor, Epoch, PublishError, Version, WaitError};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

#[test]
fn close_wakes_every_pending_wait_with_closed() {
    let b = Broadcaster::new(0u32);
    let mut waits: Vec<_> = (0..10).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    assert!(b.close());
    assert_eq!(b.waiter_count(), 0);
    for w in &mut waits {
        assert!(w.is_woken());
        assert_eq!(assert_ready!(w.poll()).unwrap_err(), WaitError::Closed);
    }
}

#[test]
fn close_calls_every_pending_callback_with_closed_once() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let regs: Vec<_> = (0..10)
        .map(|i| {
            let tx = tx.clone();
            b.register(Cursor::NEXT, move |r| tx.send((i, r.unwrap_err())).unwrap())
                .unwrap()
        })
        .collect();
    drop(tx);
    assert!(b.close());
    let mut got: Vec<(i32, WaitError)> = rx.iter().collect();
    got.sort_by_key(|(i, _)| *i);
    let expected: Vec<(i32, WaitError)> = (0..10).map(|i| (i, WaitError::Closed)).collect();
    assert_eq!(got, expected);
    for reg in regs {
        assert!(!reg.cancel(), "already called");
    }
}

#[test]
fn close_answers_waits_and_callbacks_together() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    let called = Arc::new(AtomicBool::new(false));
    let reg = b
        .register(Cursor::NEXT, {
            let called = Arc::clone(&called);
            move |r| {
                assert!(r.unwrap_err().is_closed());
                called.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(b.waiter_count(), 2);
    b.close();
    assert!(called.load(Ordering::SeqCst));
    assert!(assert_ready!(wait.poll()).unwrap_err().is_closed());
    drop(reg);
}

#[test]
fn close_then_wait_fails_at_once_whatever_the_cursor() {
    let b = Broadcaster::builder()
        .epoch(Epoch::new(1).unwrap())
        .build(0u32);
    b.notify(1).unwrap();
    b.notify(2).unwrap();
    b.close();
    for cursor in [
        Cursor::NEXT,
        Cursor::at(Version::new(2)),
        Cursor::at(Version::new(0)),
        Cursor::at(Version::new(9)),
        Cursor::at(Version::new(2)).with_epoch(Epoch::new(5).unwrap()),
    ] {
        let mut wait = spawn(b.wait(cursor));
        assert_eq!(
            assert_ready!(wait.poll()).unwrap_err(),
            WaitError::Closed,
            "{cursor:?}"
        );
    }
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn wait_created_before_close_and_first_polled_after_gets_closed() {
    let b = Broadcaster::new(0u32);
    let wait = b.wait(Cursor::NEXT);
    b.close();
    assert_eq!(
        assert_ready!(spawn(wait).poll()).unwrap_err(),
        WaitError::Closed
    );
}

#[test]
fn close_then_register_fails_and_drops_the_callback_uncalled() {
    let b = Broadcaster::new(0u32);
    b.notify(1).unwrap();
    b.close();
    let witness = Arc::new(());
    for cursor in [Cursor::NEXT, Cursor::at(Version::ZERO)] {
        let held = Arc::clone(&witness);
        let r = b.register(cursor, move |_| {
            let _ = &held;
            panic!("a callback refused at registration must not run");
        });
        assert_eq!(r.unwrap_err(), WaitError::Closed);
    }
    assert_eq!(Arc::strong_count(&witness), 1, "the callbacks were dropped");
    assert_eq!(b.waiter_count(), 0);
}

#[test]
fn close_then_every_publish_fails_and_changes_nothing() {
    let b = Broadcaster::builder().history(4).build(0u32);
    b.notify(1).unwrap();
    b.close();
    assert_eq!(b.notify(2), Err(ClosedError));
    let mut called = false;
    assert_eq!(
        b.modify(|_| {
            called = true;
            Some(3)
        }),
        Err(ClosedError)
    );
    assert!(!called, "modify's closure is not run once closed");
    assert_eq!(
        b.publish_at(Version::new(10), 10),
        Err(PublishError::Closed)
    );
    assert_eq!(
        b.restart(Epoch::random(), Version::ZERO, 0),
        Err(PublishError::Closed)
    );
    assert_eq!(b.version(), Version::new(1));
    assert_eq!(**b.current().value(), 1);
    assert_eq!(b.history().len(), 2);
}

#[test]
fn close_twice_returns_true_then_false() {
    let b = Broadcaster::new(());
    assert!(!b.is_closed());
    assert!(b.close());
    assert!(b.is_closed());
    assert!(!b.close());
    assert!(b.is_closed());
}

#[test]
fn close_through_one_clone_closes_every_handle() {
    let a = Broadcaster::new(0u32);
    let b = a.clone();
    let mut wait = spawn(a.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    assert!(b.close());
    assert!(a.is_closed());
    assert!(!a.close());
    assert!(assert_ready!(wait.poll()).unwrap_err().is_closed());
}

#[test]
fn closed_broadcaster_still_shows_its_last_state() {
    let b = Broadcaster::new("last");
    b.notify("final").unwrap();
    b.close();
    assert_eq!(**b.current().value(), "final");
    assert_eq!(b.version(), Version::new(1));
    assert!(format!("{b:?}").contains("closed: true"));
}

#[test]
fn stream_pending_then_close_yields_closed_then_ends() {
    let b = Broadcaster::new(0u32);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    b.close();
    assert!(stream.is_woken());
    assert_eq!(
        assert_ready!(stream.poll_next()).unwrap().unwrap_err(),
        WaitError::Closed
    );
    assert!(futures::stream::FusedStream::is_terminated(&*stream));
    assert!(assert_ready!(stream.poll_next()).is_none());
    assert!(assert_ready!(stream.poll_next()).is_none());
}

#[test]
fn stream_after_close_yields_closed_then_ends() {
    let b = Broadcaster::new(0u32);
    b.close();
    let mut stream = spawn(b.stream(Cursor::at(Version::ZERO)));
    assert!(assert_ready!(stream.poll_next()).unwrap().is_err());
    assert!(assert_ready!(stream.poll_next()).is_none());
}

/// A close answers every pending future with `Closed`, including one whose
/// change was published but not yet polled: the broadcaster is shutting
/// down, and the client will resync after the restart.
#[test]
fn notify_then_close_before_the_woken_wait_polls_answers_closed() {
    let b = Broadcaster::new(0u32);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    b.notify(1).unwrap();
    b.close();
    assert_eq!(assert_ready!(wait.poll()).unwrap_err(), WaitError::Closed);
}

#[test]
fn callback_that_closes_from_inside_a_close_sees_false_and_does_not_deadlock() {
    let b = Broadcaster::new(0u32);
    let (tx, rx) = mpsc::channel();
    let inner = b.clone();
    b.register(Cursor::NEXT, move |r| {
        tx.send((r.unwrap_err(), inner.close(), inner.is_closed()))
            .unwrap();
    })
    .unwrap()
    .detach();
    assert!(b.close());
    assert_eq!(rx.try_recv().unwrap(), (WaitError::Closed, false, true));
}

#[test]
fn errors_say_closed_and_their_predicates_agree() {
    assert_eq!(WaitError::Closed.to_string(), "broadcaster closed");
    assert_eq!(ClosedError.to_string(), "broadcaster closed");
    assert_eq!(PublishError::Closed.to_string(), "broadcaster closed");
    assert!(WaitError::Closed.is_closed());
    assert!(!WaitError::Closed.is_full());
    assert!(!WaitError::Closed.is_timed_out());
}

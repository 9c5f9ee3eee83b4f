//! The waiter limit: past `max_waiters` a registration fails with
//! `Full { limit }`, futures and callbacks count together, and every place
//! freed (by a drop, a publish or an answer) can be taken again.

use longpoll::{Broadcaster, Cursor, Version, WaitError};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

#[test]
fn no_limit_by_default() {
    let b = Broadcaster::new(());
    assert_eq!(b.max_waiters(), None);
    let mut waits: Vec<_> = (0..10_000).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    assert_eq!(b.waiter_count(), 10_000);
}

#[test]
fn max_waiters_n_then_the_next_wait_fails_full_with_the_limit() {
    let b = Broadcaster::builder().max_waiters(3).build(0u32);
    assert_eq!(b.max_waiters(), Some(3));
    let mut waits: Vec<_> = (0..3).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    let mut fourth = spawn(b.wait(Cursor::NEXT));
    let err = assert_ready!(fourth.poll()).unwrap_err();
    assert_eq!(err, WaitError::Full { limit: 3 });
    assert!(err.is_full());
    assert!(!err.is_closed() && !err.is_timed_out());
    assert_eq!(err.to_string(), "too many waiters (limit 3)");
    assert_eq!(b.waiter_count(), 3);
    // The refused future does not hold on to anything.
    assert_eq!(fourth.waker_ref_count(), 1);
}

#[test]
fn max_waiters_n_then_dropping_one_frees_a_place() {
    let b = Broadcaster::builder().max_waiters(2).build(0u32);
    let mut first = spawn(b.wait(Cursor::NEXT));
    let mut second = spawn(b.wait(Cursor::NEXT));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());

    drop(first);
    let mut third = spawn(b.wait(Cursor::NEXT));
    assert_pending!(third.poll());
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());

    b.notify(1).unwrap();
    assert_eq!(
        assert_ready!(second.poll()).unwrap().version(),
        Version::new(1)
    );
    assert_eq!(
        assert_ready!(third.poll()).unwrap().version(),
        Version::new(1)
    );
}

#[test]
fn max_waiters_n_then_a_publish_frees_every_place() {
    let b = Broadcaster::builder().max_waiters(2).build(0u32);
    let mut waits: Vec<_> = (0..2).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    b.notify(1).unwrap();
    assert_eq!(b.waiter_count(), 0, "woken waiters no longer count");
    let mut next: Vec<_> = (0..2).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut next {
        assert_pending!(w.poll());
    }
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());
}

#[test]
fn callbacks_and_waits_count_together_toward_the_limit() {
    let b = Broadcaster::builder().max_waiters(3).build(0u32);
    let r1 = b.register(Cursor::NEXT, |_| {}).unwrap();
    let r2 = b.register(Cursor::NEXT, |_| {}).unwrap();
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    assert_eq!(b.waiter_count(), 3);

    let refused = b.register(Cursor::NEXT, |_| panic!("refused callbacks never run"));
    assert_eq!(refused.unwrap_err(), WaitError::Full { limit: 3 });
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());

    drop(r1);
    let r3 = b.register(Cursor::NEXT, |_| {}).unwrap();
    assert!(b.register(Cursor::NEXT, |_| {}).unwrap_err().is_full());
    assert!(r2.cancel());
    let mut another = spawn(b.wait(Cursor::NEXT));
    assert_pending!(another.poll());
    drop(r3);
}

#[test]
fn cursor_behind_is_answered_even_when_full() {
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    b.notify(1).unwrap();
    let mut holder = spawn(b.wait(Cursor::NEXT));
    assert_pending!(holder.poll());

    let changed = assert_ready!(spawn(b.wait(Cursor::at(Version::ZERO))).poll()).unwrap();
    assert_eq!(changed.version(), Version::new(1));
    let (tx, rx) = std::sync::mpsc::channel();
    let reg = b
        .register(Cursor::at(Version::ZERO), move |r| {
            tx.send(r.unwrap().version()).unwrap()
        })
        .unwrap();
    assert_eq!(rx.try_recv().unwrap(), Version::new(1));
    drop(reg);
    assert_eq!(b.waiter_count(), 1);
}

#[test]
fn max_waiters_zero_refuses_every_wait_that_would_have_to_wait() {
    let b = Broadcaster::builder().max_waiters(0).build(0u32);
    assert_eq!(
        assert_ready!(spawn(b.wait(Cursor::NEXT)).poll()).unwrap_err(),
        WaitError::Full { limit: 0 }
    );
    assert!(b.register(Cursor::NEXT, |_| {}).unwrap_err().is_full());
    b.notify(1).unwrap();
    assert!(assert_ready!(spawn(b.wait(Cursor::at(Version::ZERO))).poll()).is_ok());
}

#[test]
fn stream_refused_for_full_yields_full_then_ends() {
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    let mut holder = spawn(b.wait(Cursor::NEXT));
    assert_pending!(holder.poll());
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_eq!(
        assert_ready!(stream.poll_next()).unwrap().unwrap_err(),
        WaitError::Full { limit: 1 }
    );
    assert!(assert_ready!(stream.poll_next()).is_none());
}

#[test]
fn close_with_a_full_list_answers_everyone_and_then_refuses_as_closed_not_full() {
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    let mut holder = spawn(b.wait(Cursor::NEXT));
    assert_pending!(holder.poll());
    b.close();
    assert!(assert_ready!(holder.poll()).unwrap_err().is_closed());
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_closed());
    assert!(b.register(Cursor::NEXT, |_| {}).unwrap_err().is_closed());
}

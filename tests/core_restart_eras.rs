//! Restarts that bring a broadcaster back to an earlier `(epoch, version)`,
//! however many: a waiter of the old sequence never touches the slot of a
//! waiter of the new one, by a poll or by a drop.

use longpoll::{Broadcaster, Cursor, Epoch, Version};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

/// Restarts `b` into `other` and back `n` times, ending at `(home, 0)`.
fn round_trips(b: &Broadcaster<u32>, home: Epoch, other: Epoch, n: usize) {
    for _ in 0..n {
        b.restart(other, Version::ZERO, 0).unwrap();
        b.restart(home, Version::ZERO, 0).unwrap();
    }
}

const MANY: usize = 1 << 15; // 65 536 restarts

#[test]
fn many_round_trips_then_stale_drop_leaves_the_newer_waiter_registered() {
    let (home, other) = (Epoch::new(1).unwrap(), Epoch::new(2).unwrap());
    let b = Broadcaster::builder().epoch(home).build(0u32);
    let mut stale = spawn(b.wait(Cursor::NEXT));
    assert_pending!(stale.poll());
    round_trips(&b, home, other, MANY);
    let mut fresh = spawn(b.wait(Cursor::NEXT));
    assert_pending!(fresh.poll());
    assert_eq!(b.waiter_count(), 1);

    drop(stale);
    assert_eq!(
        b.waiter_count(),
        1,
        "the stale drop left the fresh waiter alone"
    );
    b.notify(1).unwrap();
    assert!(fresh.is_woken());
    assert_eq!(
        assert_ready!(fresh.poll()).unwrap().version(),
        Version::new(1)
    );
}

#[test]
fn many_round_trips_then_stale_poll_waits_in_a_slot_of_its_own() {
    let (home, other) = (Epoch::new(1).unwrap(), Epoch::new(2).unwrap());
    let b = Broadcaster::builder().epoch(home).build(0u32);
    let mut stale = spawn(b.wait(Cursor::NEXT));
    assert_pending!(stale.poll());
    round_trips(&b, home, other, MANY);
    let mut fresh = spawn(b.wait(Cursor::NEXT));
    assert_pending!(fresh.poll());

    // Back at its very cursor: the stale waiter waits again, in a new slot.
    assert_pending!(stale.poll());
    assert_eq!(b.waiter_count(), 2);
    b.notify(1).unwrap();
    assert!(
        fresh.is_woken(),
        "the stale poll did not take the fresh waiter's slot"
    );
    assert!(stale.is_woken());
    assert_eq!(
        assert_ready!(fresh.poll()).unwrap().version(),
        Version::new(1)
    );
    assert_eq!(
        assert_ready!(stale.poll()).unwrap().version(),
        Version::new(1)
    );
}

#[test]
fn many_round_trips_then_stale_registration_cancel_leaves_the_newer_callback() {
    let (home, other) = (Epoch::new(1).unwrap(), Epoch::new(2).unwrap());
    let b = Broadcaster::builder().epoch(home).build(0u32);
    let stale = b.register(Cursor::NEXT, |_| {}).unwrap();
    round_trips(&b, home, other, MANY);
    let (tx, rx) = std::sync::mpsc::channel();
    let _fresh = b
        .register(Cursor::NEXT, move |r| {
            tx.send(r.unwrap().version()).unwrap()
        })
        .unwrap();
    assert!(
        !stale.cancel(),
        "the stale callback was answered by the first restart"
    );
    assert_eq!(b.waiter_count(), 1);
    b.notify(1).unwrap();
    assert_eq!(rx.try_recv(), Ok(Version::new(1)));
}

//! History and lagging: within the retained history a cursor receives every
//! update it missed, in order, exactly once; beyond it, an explicit
//! `Resync::Lagged { skipped }` with what is retained; gaps from `publish_at`
//! count as lost; `restart` starts a new epoch and clears the history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use longpoll::{Broadcaster, Changed, Cursor, Epoch, PublishError, Resync, Version};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

fn versions<T>(changed: &Changed<T>) -> Vec<u64> {
    changed
        .updates()
        .iter()
        .map(|u| u.version().get())
        .collect()
}

fn values(changed: &Changed<u64>) -> Vec<u64> {
    changed.updates().iter().map(|u| **u.value()).collect()
}

fn epoch(n: u64) -> Epoch {
    Epoch::new(n).expect("non-zero epoch")
}

/// The value published at version `v` is `v`, so values and versions can be
/// checked against each other.
fn with_history(k: usize, n: u64) -> Broadcaster<u64> {
    let b = Broadcaster::builder().history(k).epoch(epoch(1)).build(0);
    for v in 1..=n {
        b.notify(v).unwrap();
    }
    b
}

fn answer_now(b: &Broadcaster<u64>, cursor: impl Into<Cursor>) -> Changed<u64> {
    let mut wait = spawn(b.wait(cursor));
    assert_ready!(wait.poll()).unwrap()
}

#[test]
fn history_k_cursor_k_behind_receives_every_missed_update_in_order() {
    let b = with_history(4, 4);
    let changed = answer_now(&b, Cursor::at(Version::new(0)));
    assert_eq!(versions(&changed), [1, 2, 3, 4]);
    assert_eq!(values(&changed), [1, 2, 3, 4]);
    assert_eq!(changed.resync(), None);
    assert_eq!(changed.latest().version(), Version::new(4));
}

#[test]
fn history_k_cursor_k_plus_one_behind_is_lagged_by_one_with_the_k_retained() {
    let b = with_history(4, 5);
    let changed = answer_now(&b, Cursor::at(Version::new(0)));
    assert_eq!(versions(&changed), [2, 3, 4, 5]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 1 }));
}

#[test]
fn history_k_cursor_far_behind_is_lagged_by_every_version_not_retained() {
    let b = with_history(4, 100);
    let changed = answer_now(&b, Cursor::at(Version::new(10)));
    assert_eq!(versions(&changed), [97, 98, 99, 100]);
    assert_eq!(values(&changed), [97, 98, 99, 100]);
    // 90 versions after the cursor, 4 retained.
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 86 }));
}

/// For every history size, number of publishes and cursor: the answer holds
/// exactly the retained versions after the cursor, in order, and `skipped`
/// counts exactly the others.
#[test]
fn every_cursor_behind_gets_retained_updates_after_it_and_the_exact_skipped_count() {
    for k in [1usize, 2, 3, 8] {
        for n in 0..=(2 * k as u64 + 2) {
            let b = with_history(k, n);
            let oldest_kept = (n + 1).saturating_sub(k as u64);
            assert_eq!(b.history().len() as u64, n - oldest_kept + 1, "k={k} n={n}");
            assert_eq!(b.history_capacity(), k);
            for c in 0..n {
                let changed = answer_now(&b, Cursor::at(Version::new(c)));
                let expected: Vec<u64> = ((c + 1).max(oldest_kept)..=n).collect();
                assert_eq!(versions(&changed), expected, "k={k} n={n} c={c}");
                assert_eq!(values(&changed), expected, "k={k} n={n} c={c}");
                let skipped = (n - c) - expected.len() as u64;
                let resync = (skipped > 0).then_some(Resync::Lagged { skipped });
                assert_eq!(changed.resync(), resync, "k={k} n={n} c={c}");
            }
            // At the current version: waits.
            let mut wait = spawn(b.wait(Cursor::at(Version::new(n))));
            assert_pending!(wait.poll());
        }
    }
}

#[test]
fn default_history_is_one_latest_value_only() {
    let b = Broadcaster::builder().epoch(epoch(1)).build(0u64);
    assert_eq!(b.history_capacity(), 1);
    for v in 1..=3 {
        b.notify(v).unwrap();
    }
    assert_eq!(b.history().len(), 1);
    assert_eq!(b.history()[0].version(), Version::new(3));

    let one_behind = answer_now(&b, Cursor::at(Version::new(2)));
    assert_eq!(versions(&one_behind), [3]);
    assert_eq!(one_behind.resync(), None);

    let two_behind = answer_now(&b, Cursor::at(Version::new(1)));
    assert_eq!(versions(&two_behind), [3]);
    assert_eq!(two_behind.resync(), Some(Resync::Lagged { skipped: 1 }));
}

#[test]
fn default_history_waiter_woken_then_three_notifies_before_poll_gets_latest_lagged_by_two() {
    let b = Broadcaster::new(0u64);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    for v in 1..=3 {
        b.notify(v).unwrap();
    }
    assert!(wait.is_woken());
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [3]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 2 }));
}

#[test]
fn history_waiter_woken_then_three_notifies_before_poll_gets_all_three_in_order() {
    let b = with_history(3, 0);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    for v in 1..=3 {
        b.notify(v).unwrap();
    }
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [1, 2, 3]);
    assert_eq!(changed.resync(), None);
    assert_eq!(
        changed.into_updates().len(),
        3,
        "into_updates keeps every update"
    );
}

#[test]
fn history_chained_cursors_see_every_version_exactly_once_in_order() {
    let b = with_history(4, 0);
    let mut cursor = b.current().cursor();
    let mut seen = Vec::new();
    for round in 0..50u64 {
        // Bursts of 1 to 4 publishes between two polls all fit in the history.
        for _ in 0..(round % 4 + 1) {
            let next = b.version().get() + 1;
            b.notify(next).unwrap();
        }
        let changed = answer_now(&b, cursor);
        assert_eq!(changed.resync(), None);
        seen.extend(versions(&changed));
        cursor = changed.cursor();
    }
    let expected: Vec<u64> = (1..=b.version().get()).collect();
    assert_eq!(seen, expected);
}

#[test]
fn callback_registered_with_history_gets_the_single_update_that_woke_it() {
    let b = with_history(8, 2);
    let (tx, rx) = mpsc::channel();
    b.register(Cursor::at(Version::new(2)), move |r| {
        tx.send(versions(&r.unwrap())).unwrap();
    })
    .unwrap()
    .detach();
    b.notify(3).unwrap();
    b.notify(4).unwrap();
    assert_eq!(rx.try_recv().unwrap(), [3]);
    assert!(rx.try_recv().is_err(), "a callback runs once");
}

#[test]
fn callback_registered_behind_with_history_gets_every_missed_update_inline() {
    let b = with_history(8, 5);
    let (tx, rx) = mpsc::channel();
    let reg = b
        .register(Cursor::at(Version::new(2)), move |r| {
            tx.send(versions(&r.unwrap())).unwrap();
        })
        .unwrap();
    assert_eq!(rx.try_recv().unwrap(), [3, 4, 5]);
    assert!(!reg.cancel());
}

#[test]
fn ahead_and_other_epoch_answers_hold_the_retained_history() {
    let b = with_history(4, 2);
    let ahead = answer_now(&b, Cursor::at(Version::new(10)));
    assert_eq!(ahead.resync(), Some(Resync::Ahead));
    assert_eq!(versions(&ahead), [0, 1, 2]);
    let foreign = answer_now(&b, Cursor::at(Version::new(2)).with_epoch(epoch(9)));
    assert_eq!(foreign.resync(), Some(Resync::OtherEpoch));
    assert_eq!(versions(&foreign), [0, 1, 2]);
}

// ---- publish_at ------------------------------------------------------------

#[test]
fn publish_at_gap_then_cursor_before_gap_is_lagged_by_the_skipped_versions() {
    let b = with_history(8, 0);
    b.publish_at(Version::new(5), 5).unwrap();
    assert_eq!(b.version(), Version::new(5));

    let from_zero = answer_now(&b, Cursor::at(Version::new(0)));
    assert_eq!(versions(&from_zero), [5]);
    assert_eq!(from_zero.resync(), Some(Resync::Lagged { skipped: 4 }));

    b.notify(6).unwrap();
    let from_five = answer_now(&b, Cursor::at(Version::new(5)));
    assert_eq!(versions(&from_five), [6]);
    assert_eq!(from_five.resync(), None);

    let from_zero = answer_now(&b, Cursor::at(Version::new(0)));
    assert_eq!(versions(&from_zero), [5, 6]);
    assert_eq!(from_zero.resync(), Some(Resync::Lagged { skipped: 4 }));

    // A cursor inside the gap lost only version 4.
    let from_three = answer_now(&b, Cursor::at(Version::new(3)));
    assert_eq!(versions(&from_three), [5, 6]);
    assert_eq!(from_three.resync(), Some(Resync::Lagged { skipped: 1 }));
}

#[test]
fn pending_wait_then_publish_at_with_gap_answers_lagged() {
    let b = with_history(8, 0);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    b.publish_at(Version::new(3), 3).unwrap();
    assert!(wait.is_woken());
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [3]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 2 }));
}

#[test]
fn publish_at_next_version_is_a_plain_continuation() {
    let b = with_history(8, 2);
    let mut wait = spawn(b.wait(Cursor::at(Version::new(2))));
    assert_pending!(wait.poll());
    b.publish_at(Version::new(3), 3).unwrap();
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&changed), [3]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn publish_at_not_newer_is_refused_and_wakes_nobody() {
    let b = with_history(8, 3);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    for stale in [0, 2, 3] {
        assert_eq!(
            b.publish_at(Version::new(stale), 99),
            Err(PublishError::NotNewer {
                version: Version::new(stale),
                current: Version::new(3),
            })
        );
    }
    assert!(!wait.is_woken());
    assert_pending!(wait.poll());
    assert_eq!(b.version(), Version::new(3));
    assert_eq!(**b.current().value(), 3);
    assert_eq!(b.history().len(), 4);
    assert_eq!(
        PublishError::NotNewer {
            version: Version::new(2),
            current: Version::new(3)
        }
        .to_string(),
        "version 2 is not newer than the current version 3"
    );
}

// ---- restart ---------------------------------------------------------------

#[test]
fn restart_wakes_pending_waits_and_callbacks_with_other_epoch_and_clears_history() {
    let b = with_history(8, 3);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
    let (tx, rx) = mpsc::channel();
    let _reg = b
        .register(Cursor::NEXT, move |r| {
            let c = r.unwrap();
            tx.send((versions(&c), c.epoch(), c.resync())).unwrap();
        })
        .unwrap();
    assert_eq!(b.waiter_count(), 2);

    b.restart(epoch(2), Version::new(0), 100).unwrap();
    assert_eq!(b.waiter_count(), 0);
    assert_eq!(b.epoch(), epoch(2));
    assert_eq!(b.version(), Version::new(0));
    assert_eq!(b.history().len(), 1);
    assert_eq!(**b.current().value(), 100);

    assert!(wait.is_woken());
    let changed = assert_ready!(wait.poll()).unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(changed.epoch(), epoch(2));
    assert_eq!(versions(&changed), [0]);
    assert_eq!(values(&changed), [100]);

    assert_eq!(
        rx.try_recv().unwrap(),
        (vec![0], epoch(2), Some(Resync::OtherEpoch))
    );
}

#[test]
fn restart_then_old_epoch_cursor_is_other_epoch_and_new_cursor_waits() {
    let b = with_history(8, 3);
    let old = b.current().cursor();
    b.restart(epoch(2), Version::new(50), 50).unwrap();

    let changed = answer_now(&b, old);
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(versions(&changed), [50]);

    let mut wait = spawn(b.wait(&changed));
    assert_pending!(wait.poll());
    b.notify(51).unwrap();
    let next = assert_ready!(wait.poll()).unwrap();
    assert_eq!(versions(&next), [51]);
    assert_eq!(next.epoch(), epoch(2));
    assert_eq!(next.resync(), None);

    // A cursor without an epoch is read in the new sequence: of the 48
    // versions after 3, only 50 and 51 exist.
    let bare = answer_now(&b, Cursor::at(Version::new(3)));
    assert_eq!(versions(&bare), [50, 51]);
    assert_eq!(bare.resync(), Some(Resync::Lagged { skipped: 46 }));
}

#[test]
fn restart_may_go_back_to_a_lower_version_in_the_new_epoch() {
    let b = with_history(4, 10);
    b.restart(epoch(2), Version::new(1), 1).unwrap();
    assert_eq!(b.version(), Version::new(1));
    assert_eq!(b.notify(2).unwrap(), Version::new(2));
}

#[test]
fn restart_with_current_epoch_is_publish_at() {
    let b = with_history(4, 3);
    assert_eq!(
        b.restart(epoch(1), Version::new(3), 0),
        Err(PublishError::NotNewer {
            version: Version::new(3),
            current: Version::new(3)
        })
    );
    b.restart(epoch(1), Version::new(6), 6).unwrap();
    let changed = answer_now(&b, Cursor::at(Version::new(3)));
    assert_eq!(versions(&changed), [6]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 2 }));
    let kept: Vec<u64> = b.history().iter().map(|u| u.version().get()).collect();
    assert_eq!(kept, [1, 2, 3, 6], "the history is kept");
}

// ---- what history holds on to ----------------------------------------------

/// Counts live instances, to see when the broadcaster lets go of a value.
struct Tracked(Arc<AtomicUsize>);

impl Tracked {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked(Arc::clone(live))
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn values_evicted_from_history_are_dropped_and_at_most_k_are_kept() {
    let live = Arc::new(AtomicUsize::new(0));
    let b = Broadcaster::builder().history(3).build(Tracked::new(&live));
    for _ in 0..10 {
        b.notify(Tracked::new(&live)).unwrap();
        assert!(live.load(Ordering::SeqCst) <= 3);
    }
    assert_eq!(live.load(Ordering::SeqCst), 3);
    b.restart(epoch(5), Version::ZERO, Tracked::new(&live))
        .unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1, "restart clears the history");
    drop(b);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn answer_shares_the_published_value_instead_of_cloning_it() {
    let b = with_history(4, 0);
    let mut waits: Vec<_> = (0..10).map(|_| spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    b.notify(1).unwrap();
    let answers: Vec<Changed<u64>> = waits
        .iter_mut()
        .map(|w| assert_ready!(w.poll()).unwrap())
        .collect();
    let current = b.current();
    for a in &answers {
        assert!(Arc::ptr_eq(a.value(), current.value()));
    }
}

#[test]
#[should_panic(expected = "history must keep at least the current value")]
fn history_zero_is_refused() {
    let _ = Broadcaster::builder().history(0);
}

/// `restart` may bring the sequence back to an earlier `(epoch, version)`
/// pair (a failover to a store that still holds the old epoch). A waiter of
/// the first era must neither panic nor be mistaken for one of the last.
#[test]
fn restart_back_to_an_earlier_epoch_and_version_keeps_old_and_new_waiters_apart() {
    let a = Epoch::new(0xa).unwrap();
    let b_epoch = Epoch::new(0xb).unwrap();
    let b = Broadcaster::builder().epoch(a).build(0u32);

    // An old waiter registers at (a, 0) and is dropped after the round trip.
    let mut old = spawn(b.wait(Cursor::at(Version::ZERO).with_epoch(a)));
    assert_pending!(old.poll());
    b.restart(b_epoch, Version::ZERO, 1).unwrap();
    b.restart(a, Version::ZERO, 2).unwrap();
    assert!(old.is_woken());

    // A new waiter registers at the same (a, 0), in the old one's slot.
    let mut new = spawn(b.wait(Cursor::at(Version::ZERO).with_epoch(a)));
    assert_pending!(new.poll());
    drop(old);
    assert_eq!(
        b.waiter_count(),
        1,
        "the old waiter's drop removed the new one"
    );
    b.notify(3).unwrap();
    assert!(new.is_woken());
    let changed = assert_ready!(new.poll()).unwrap();
    assert_eq!(**changed.value(), 3);
}

/// An old waiter polled after the round trip is back at its own cursor: it
/// waits again (registered anew) rather than panicking, and sees the next
/// change.
#[test]
fn waiter_polled_after_restarts_return_to_its_cursor_waits_again() {
    let a = Epoch::new(0xa).unwrap();
    let b = Broadcaster::builder().epoch(a).build(0u32);
    let mut old = spawn(b.wait(Cursor::at(Version::ZERO).with_epoch(a)));
    assert_pending!(old.poll());
    b.restart(Epoch::new(0xb).unwrap(), Version::ZERO, 1)
        .unwrap();
    b.restart(a, Version::ZERO, 2).unwrap();
    assert_pending!(old.poll());
    assert_eq!(b.waiter_count(), 1);
    b.notify(3).unwrap();
    let changed = assert_ready!(old.poll()).unwrap();
    assert_eq!((changed.version(), **changed.value()), (Version::new(1), 3));
}

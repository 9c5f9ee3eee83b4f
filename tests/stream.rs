//! `ChangedStream`: every version exactly once and in order when the history
//! covers the bursts between two polls, resync flags when it does not, and a
//! `next()` that can be dropped without losing anything.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use longpoll::{Broadcaster, Changed, Cursor, Epoch, Resync, Version};
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};

fn versions<T>(changed: &Changed<T>) -> Vec<u64> {
    changed
        .updates()
        .iter()
        .map(|u| u.version().get())
        .collect()
}

#[test]
fn stream_from_next_then_one_notify_per_poll_yields_each_version_once_in_order() {
    let b = Broadcaster::new(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    for v in 1..=20u64 {
        assert_pending!(stream.poll_next());
        b.notify(v).unwrap();
        assert!(stream.is_woken());
        let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
        assert_eq!(versions(&changed), [v]);
        assert_eq!(**changed.value(), v);
        assert_eq!(changed.resync(), None);
    }
}

#[test]
fn stream_with_history_then_burst_of_notifies_yields_them_as_one_item_in_order() {
    let b = Broadcaster::builder().history(8).build(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    for v in 1..=5 {
        b.notify(v).unwrap();
    }
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(versions(&changed), [1, 2, 3, 4, 5]);
    assert_eq!(changed.resync(), None);
    assert_pending!(stream.poll_next());
}

#[test]
fn stream_with_default_history_then_burst_yields_latest_flagged_lagged_then_continues() {
    let b = Broadcaster::new(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    for v in 1..=3 {
        b.notify(v).unwrap();
    }
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(versions(&changed), [3]);
    assert_eq!(changed.resync(), Some(Resync::Lagged { skipped: 2 }));
    b.notify(4).unwrap();
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(versions(&changed), [4]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn stream_from_cursor_behind_yields_missed_updates_first_then_waits() {
    let b = Broadcaster::builder().history(8).build(0u64);
    for v in 1..=4 {
        b.notify(v).unwrap();
    }
    let mut stream = spawn(b.stream(Cursor::at(Version::new(1))));
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(versions(&changed), [2, 3, 4]);
    assert_pending!(stream.poll_next());
    assert_eq!(b.waiter_count(), 1);
}

#[test]
fn stream_next_dropped_while_pending_then_notify_then_next_yields_it() {
    let b = Broadcaster::new(0u64);
    let mut stream = b.stream(Cursor::NEXT);
    // `select!` polled `next()` once and another branch won.
    assert!(stream.next().now_or_never().is_none());
    assert_eq!(b.waiter_count(), 1, "the stream keeps its place");
    b.notify(1).unwrap();
    let changed = stream.next().now_or_never().unwrap().unwrap().unwrap();
    assert_eq!(versions(&changed), [1]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn stream_woken_then_next_dropped_before_its_poll_then_next_yields_the_change() {
    let b = Broadcaster::new(0u64);
    let mut stream = b.stream(Cursor::NEXT);
    {
        let mut next = spawn(stream.next());
        assert_pending!(next.poll());
        b.notify(1).unwrap();
        assert!(next.is_woken());
        // Dropped without being polled again.
    }
    b.notify(2).unwrap();
    let changed = stream.next().now_or_never().unwrap().unwrap().unwrap();
    assert_eq!(changed.version(), Version::new(2));
}

#[tokio::test]
async fn stream_next_losing_select_to_another_branch_loses_nothing() {
    let b = Broadcaster::builder().history(16).build(0u64);
    let mut stream = b.stream(Cursor::NEXT);
    let mut seen = Vec::new();
    for v in 1..=10u64 {
        // Nothing is published yet: the other branch wins, `next()` is dropped.
        tokio::select! {
            biased;
            item = stream.next() => panic!("nothing published yet: {item:?}"),
            () = tokio::task::yield_now() => {}
        }
        b.notify(v).unwrap();
        let changed = stream.next().await.unwrap().unwrap();
        assert_eq!(changed.resync(), None);
        seen.extend(versions(&changed));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_against_a_publisher_thread_yields_every_version_exactly_once_in_order() {
    const N: u64 = 20_000;
    // History longer than the whole run: the consumer can never lag.
    let b = Broadcaster::builder().history(N as usize + 1).build(0u64);
    let mut stream = b.stream(Cursor::at(Version::ZERO));
    let publisher = std::thread::spawn({
        let b = b.clone();
        move || {
            for v in 1..=N {
                b.notify(v).unwrap();
            }
        }
    });
    let consume = async {
        let mut seen = Vec::with_capacity(N as usize);
        let mut items = 0;
        while seen.last() != Some(&N) {
            let changed = stream.next().await.unwrap().unwrap();
            assert_eq!(changed.resync(), None);
            for u in changed.updates() {
                assert_eq!(**u.value(), u.version().get());
                seen.push(u.version().get());
            }
            items += 1;
        }
        (seen, items)
    };
    let (seen, items) = tokio::time::timeout(Duration::from_secs(60), consume)
        .await
        .expect("a wake-up was lost");
    publisher.join().unwrap();
    assert_eq!(seen, (1..=N).collect::<Vec<u64>>());
    assert!((1..=N).contains(&items));
}

#[test]
fn stream_then_restart_yields_other_epoch_then_continues_in_the_new_epoch() {
    let b = Broadcaster::builder()
        .epoch(Epoch::new(1).unwrap())
        .build(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    let e2 = Epoch::new(2).unwrap();
    b.restart(e2, Version::new(7), 7).unwrap();
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(changed.cursor(), Cursor::at(Version::new(7)).with_epoch(e2));
    assert_pending!(stream.poll_next());
    b.notify(8).unwrap();
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(versions(&changed), [8]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn stream_from_ahead_cursor_yields_ahead_then_continues() {
    let b = Broadcaster::new(0u64);
    let mut stream = spawn(b.stream(Cursor::at(Version::new(50))));
    let changed = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!(changed.resync(), Some(Resync::Ahead));
    assert_pending!(stream.poll_next());
    b.notify(1).unwrap();
    assert_eq!(
        versions(&assert_ready!(stream.poll_next()).unwrap().unwrap()),
        [1]
    );
}

#[test]
fn stream_holds_one_registration_however_often_polled() {
    let b = Broadcaster::new(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    for _ in 0..5 {
        assert_pending!(stream.poll_next());
    }
    assert_eq!(b.waiter_count(), 1);
    b.notify(1).unwrap();
    assert_eq!(b.waiter_count(), 1, "woken, it keeps its place");
    assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_pending!(stream.poll_next());
    assert_eq!(b.waiter_count(), 1);
}

#[test]
fn stream_created_before_notify_and_first_polled_after_yields_it() {
    let b = Broadcaster::new(0u64);
    let stream = b.stream(Cursor::NEXT);
    b.notify(1).unwrap();
    let mut stream = spawn(stream);
    assert_eq!(
        versions(&assert_ready!(stream.poll_next()).unwrap().unwrap()),
        [1]
    );
}

#[test]
fn stream_outlives_the_broadcaster_handle_it_came_from() {
    let b = Broadcaster::new(0u64);
    let keep = b.clone();
    let mut stream = spawn(b.stream(Cursor::NEXT));
    drop(b);
    assert_pending!(stream.poll_next());
    keep.notify(1).unwrap();
    assert_ready!(stream.poll_next()).unwrap().unwrap();
}

#[test]
fn stream_between_items_keeps_its_place_when_other_waiters_fill_the_list() {
    let b = Broadcaster::builder().max_waiters(2).build(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    b.notify(1).unwrap();
    // The stream was woken and is out of the list; a future takes a place.
    let mut other = spawn(b.wait(Cursor::NEXT));
    assert_pending!(other.poll());
    // The stream's place is still its own: a third waiter is refused.
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());
    assert_eq!(
        versions(&assert_ready!(stream.poll_next()).unwrap().unwrap()),
        [1]
    );
    // Under load, the stream goes on waiting rather than ending with `Full`.
    assert_pending!(stream.poll_next());
    b.notify(2).unwrap();
    assert_eq!(
        versions(&assert_ready!(stream.poll_next()).unwrap().unwrap()),
        [2]
    );
    assert!(assert_ready!(other.poll()).is_ok());
}

#[test]
fn stream_dropped_between_items_gives_its_place_back() {
    let b = Broadcaster::builder().max_waiters(1).build(0u64);
    let mut stream = spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    b.notify(1).unwrap();
    assert_eq!(
        b.waiter_count(),
        1,
        "the woken stream still holds its place"
    );
    assert!(assert_ready!(spawn(b.wait(Cursor::NEXT)).poll())
        .unwrap_err()
        .is_full());
    drop(stream);
    assert_eq!(b.waiter_count(), 0);
    let mut wait = spawn(b.wait(Cursor::NEXT));
    assert_pending!(wait.poll());
}

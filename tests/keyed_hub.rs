//! The keyed hub: keys created on first use, capped, configured per key,
//! removed by a sweep once idle, and never while in use.

use std::time::Duration;

use futures::FutureExt;
use longpoll::keyed::{Keyed, KeyedPublishError, TooManyKeys};
use longpoll::{Builder, Cursor, Resync, Version, WaitError};
use tokio_test::{assert_pending, assert_ready, task};

fn hub(max_keys: usize, idle: Duration) -> Keyed<String, u32> {
    Keyed::builder()
        .max_keys(max_keys)
        .idle_timeout(idle)
        .shards(4)
        .build()
}

#[test]
fn first_use_creates_the_key_with_its_initial_value() {
    let hub: Keyed<String, String> = Keyed::builder()
        .init(|k: &String| format!("room {k}"))
        .build();
    assert!(hub.is_empty());
    assert!(hub.get("a").is_none(), "get never creates");
    let b = hub.broadcaster("a").unwrap();
    assert_eq!(**b.current().value(), "room a");
    assert_eq!(b.version(), Version::ZERO);
    assert_eq!(hub.len(), 1);
    assert!(hub.contains_key("a"));
    assert!(hub.get("a").unwrap().same_broadcaster(&b));
    assert!(hub.broadcaster("a").unwrap().same_broadcaster(&b));
    assert_eq!(hub.len(), 1);
}

#[test]
fn publish_to_one_key_leaves_the_others_alone() {
    let hub = hub(100, Duration::from_secs(60));
    hub.notify("a", 1).unwrap();
    hub.notify("a", 2).unwrap();
    hub.notify("b", 7).unwrap();
    assert_eq!(hub.get("a").unwrap().version(), Version::new(2));
    assert_eq!(**hub.get("b").unwrap().current().value(), 7);
    assert_eq!(hub.get("b").unwrap().version(), Version::new(1));
    assert_eq!(
        hub.modify("b", |n| Some(n + 1)).unwrap(),
        Some(Version::new(2))
    );
    assert_eq!(hub.modify("b", |_| None).unwrap(), None);
    assert_eq!(**hub.get("b").unwrap().current().value(), 8);
}

#[test]
fn creating_past_the_key_limit_fails_and_creates_nothing() {
    let hub = hub(3, Duration::from_secs(60));
    for k in ["a", "b", "c"] {
        hub.broadcaster(k).unwrap();
    }
    assert_eq!(hub.broadcaster("d").unwrap_err(), TooManyKeys { limit: 3 });
    assert_eq!(
        hub.notify("d", 1).unwrap_err(),
        KeyedPublishError::TooManyKeys(TooManyKeys { limit: 3 })
    );
    assert!(hub.wait("d", Cursor::NEXT).is_err());
    assert!(hub
        .wait_many([
            ("a".to_string(), Cursor::NEXT),
            ("d".to_string(), Cursor::NEXT)
        ])
        .is_err());
    assert_eq!(hub.len(), 3);
    assert!(!hub.contains_key("d"));
    // Existing keys keep working.
    assert_eq!(hub.notify("a", 5).unwrap(), Version::new(1));
    // Once a key is gone, there is room again.
    assert!(hub.remove("c"));
    hub.broadcaster("d").unwrap();
    assert_eq!(hub.len(), 3);
}

#[test]
fn key_limit_holds_exactly_under_concurrent_creation() {
    let hub = hub(1000, Duration::from_secs(60));
    let created: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let hub = hub.clone();
                s.spawn(move || {
                    (0..400)
                        .filter(|i| hub.broadcaster(&format!("{t}-{i}")).is_ok())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 1000);
    assert_eq!(hub.len(), 1000);
}

#[test]
fn per_key_builder_sets_history_and_waiter_limit() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .history(4)
        .configure(|k: &String| {
            if k.starts_with("big") {
                Builder::new().history(32).max_waiters(2)
            } else {
                Builder::new().history(4)
            }
        })
        .build();
    assert_eq!(hub.broadcaster("small").unwrap().history_capacity(), 4);
    let big = hub.broadcaster("big-1").unwrap();
    assert_eq!(big.history_capacity(), 32);
    assert_eq!(big.max_waiters(), Some(2));

    // A client two behind in a history-4 key gets both updates.
    hub.notify("small", 1).unwrap();
    hub.notify("small", 2).unwrap();
    let changed = hub
        .wait("small", Cursor::at(Version::ZERO))
        .unwrap()
        .now_or_never()
        .expect("behind: ready at once")
        .unwrap();
    let seen: Vec<u32> = changed.updates().iter().map(|u| **u.value()).collect();
    assert_eq!(seen, [1, 2]);
}

#[test]
fn sweep_removes_idle_keys_only_after_the_idle_timeout() {
    let hub = hub(100, Duration::from_millis(200));
    hub.notify("a", 1).unwrap();
    hub.notify("b", 1).unwrap();
    assert_eq!(hub.sweep(), 0, "not idle long enough");
    assert_eq!(hub.len(), 2);
    std::thread::sleep(Duration::from_millis(120));
    hub.notify("b", 2).unwrap(); // touches b
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(hub.sweep(), 1, "a is idle for 240ms, b for 120ms");
    assert!(!hub.contains_key("a"));
    assert!(hub.contains_key("b"));
    assert_eq!(hub.len(), 1);
}

#[test]
fn sweep_keeps_keys_with_handles_waiters_or_callbacks() {
    let hub = hub(100, Duration::ZERO);
    let held = hub.broadcaster("held").unwrap();
    let mut waiting = task::spawn(hub.wait("waiting", Cursor::NEXT).unwrap());
    assert_pending!(waiting.poll());
    let reg = hub
        .broadcaster("callback")
        .unwrap()
        .register(Cursor::NEXT, |_| {})
        .unwrap();
    reg.detach(); // no handle left, but a callback is registered
    hub.broadcaster("unused").unwrap();

    assert_eq!(hub.sweep(), 1);
    assert!(!hub.contains_key("unused"));
    assert_eq!(hub.len(), 3);

    // The waiter still hears the publish: it sits on the key's broadcaster.
    hub.notify("waiting", 9).unwrap();
    assert!(waiting.is_woken());
    assert_eq!(**assert_ready!(waiting.poll()).unwrap().value(), 9);
    drop(waiting);
    drop(held);
    hub.notify("callback", 1).unwrap(); // runs and removes the callback
    assert_eq!(hub.sweep(), 3);
    assert!(hub.is_empty());
}

#[test]
fn a_dropped_wait_makes_its_key_idle_again() {
    let hub = hub(100, Duration::ZERO);
    let mut w = task::spawn(hub.wait("a", Cursor::NEXT).unwrap());
    assert_pending!(w.poll());
    assert_eq!(hub.get("a").unwrap().waiter_count(), 1);
    assert_eq!(hub.sweep(), 0);
    drop(w);
    assert_eq!(hub.get("a").unwrap().waiter_count(), 0);
    assert_eq!(hub.sweep(), 1);
}

#[test]
fn a_cursor_from_a_removed_key_resyncs_on_the_new_one() {
    let hub = hub(100, Duration::ZERO);
    hub.notify("a", 1).unwrap();
    let old = hub.get("a").unwrap().current().cursor();
    assert_eq!(hub.sweep(), 1);
    let changed = hub
        .wait("a", old)
        .unwrap()
        .now_or_never()
        .expect("a foreign epoch is answered at once")
        .unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(**changed.value(), 0);
}

#[test]
fn remove_closes_the_key_and_its_waiters_come_back_to_a_new_one() {
    let hub = hub(100, Duration::from_secs(60));
    let mut w = task::spawn(hub.wait("a", Cursor::NEXT).unwrap());
    assert_pending!(w.poll());
    assert!(hub.remove("a"));
    assert!(!hub.remove("a"));
    assert!(w.is_woken());
    assert_eq!(assert_ready!(w.poll()).unwrap_err(), WaitError::Closed);
    assert!(hub.is_empty());
    let fresh = hub.broadcaster("a").unwrap();
    assert!(!fresh.is_closed());
}

#[test]
fn a_closed_key_refuses_publishes_until_it_is_swept() {
    let hub = hub(100, Duration::ZERO);
    hub.broadcaster("a").unwrap().close();
    assert_eq!(hub.notify("a", 1).unwrap_err(), KeyedPublishError::Closed);
    assert_eq!(hub.sweep(), 1);
    assert_eq!(hub.notify("a", 1).unwrap(), Version::new(1));
}

#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn sweeper_task_removes_idle_keys_and_ends_with_the_hub() {
    let hub = hub(100, Duration::from_secs(10));
    let sweeper = tokio::spawn(hub.sweeper(Duration::from_secs(5)));
    hub.notify("a", 1).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(hub.len(), 1, "idle for 6s of 10");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(hub.len(), 0);
    drop(hub);
    tokio::time::timeout(Duration::from_secs(30), sweeper)
        .await
        .expect("the sweeper ends once the hub is gone")
        .unwrap();
}

#[tokio::test]
async fn key_wait_moves_to_another_task() {
    let hub = hub(100, Duration::from_secs(60));
    let wait = hub.wait("a", Cursor::NEXT).unwrap();
    let task = tokio::spawn(wait);
    tokio::task::yield_now().await;
    hub.notify("a", 3).unwrap();
    let changed = task.await.unwrap().unwrap();
    assert_eq!(**changed.value(), 3);
}

#[test]
fn a_parked_key_continues_its_sequence_history_and_settings() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .idle_timeout(Duration::from_secs(60))
        .configure(|_: &String| Builder::new().history(4).max_waiters(7))
        .build();
    for v in 1..=5 {
        hub.notify("a", v).unwrap();
    }
    let before = hub.get("a").unwrap();
    let cursor = before.current().cursor();
    drop(before);
    assert_eq!(hub.sweep(), 0, "parked, not removed");
    assert!(hub.contains_key("a"));
    assert_eq!(hub.len(), 1);

    let after = hub.get("a").unwrap();
    assert_eq!(after.current().cursor(), cursor, "same epoch and version");
    assert_eq!(after.history_capacity(), 4);
    assert_eq!(after.max_waiters(), Some(7));
    let kept: Vec<u32> = after.history().iter().map(|u| **u.value()).collect();
    assert_eq!(kept, [2, 3, 4, 5]);
    drop(after);

    // A client two versions behind, coming back after the key was parked
    // again, receives exactly what it missed.
    assert_eq!(hub.sweep(), 0);
    let changed = hub
        .wait("a", Cursor::at(Version::new(3)))
        .unwrap()
        .now_or_never()
        .expect("behind: ready at once")
        .unwrap();
    let seen: Vec<u32> = changed.updates().iter().map(|u| **u.value()).collect();
    assert_eq!(seen, [4, 5]);
    assert_eq!(changed.resync(), None);

    // A waiter at the tip of a parked key hears the next publish.
    assert_eq!(hub.sweep(), 0);
    let mut w = task::spawn(hub.wait("a", cursor).unwrap());
    assert_pending!(w.poll());
    hub.notify("a", 6).unwrap();
    assert_eq!(**assert_ready!(w.poll()).unwrap().value(), 6);
}

#[test]
fn concurrent_first_uses_of_a_parked_key_share_one_broadcaster() {
    let hub: Keyed<u32, u32> = Keyed::builder().build();
    for round in 0..200u32 {
        hub.notify(&1, round).unwrap();
        hub.sweep(); // parks key 1
        let handles: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| hub.broadcaster(&1).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(handles.iter().all(|b| b.same_broadcaster(&handles[0])));
        assert_eq!(**handles[0].current().value(), round);
    }
    assert_eq!(hub.len(), 1);
}

#[test]
fn closing_the_hub_answers_pending_waits_and_closes_every_later_key() {
    let hub = hub(100, Duration::from_secs(60));
    let mut live = task::spawn(hub.wait("live", Cursor::NEXT).unwrap());
    assert_pending!(live.poll());
    hub.notify("parked", 1).unwrap();
    assert_eq!(hub.sweep(), 0); // parks "parked"
    assert!(hub.close());
    assert!(!hub.close());
    assert!(hub.is_closed());
    assert_eq!(assert_ready!(live.poll()).unwrap_err(), WaitError::Closed);
    // A parked key brought back, and a new key, are closed as well.
    assert!(hub.broadcaster("parked").unwrap().is_closed());
    assert!(hub.broadcaster("new").unwrap().is_closed());
    assert_eq!(hub.notify("new", 1).unwrap_err(), KeyedPublishError::Closed);
    let answer = hub.wait("other", Cursor::NEXT).unwrap().now_or_never();
    assert_eq!(answer.unwrap().unwrap_err(), WaitError::Closed);
}

//! One wait over several `(key, cursor)` pairs: the same cursor rules as a
//! single wait, every ready key in one answer, and cancel safety.

use std::time::Duration;

use futures::FutureExt;
use longpoll::keyed::Keyed;
use longpoll::{Builder, Cursor, Epoch, Resync, Version, WaitError};
use tokio_test::{assert_pending, assert_ready, task};

fn hub() -> Keyed<String, u32> {
    Keyed::builder().history(8).build()
}

fn s(key: &str) -> String {
    key.to_string()
}

fn values(changed: &longpoll::Changed<u32>) -> Vec<u32> {
    changed.updates().iter().map(|u| **u.value()).collect()
}

#[test]
fn pending_until_one_key_changes_then_only_that_key() {
    let hub = hub();
    let mut w = task::spawn(
        hub.wait_many([
            (s("a"), Cursor::NEXT),
            (s("b"), Cursor::NEXT),
            (s("c"), Cursor::NEXT),
        ])
        .unwrap(),
    );
    assert_eq!(w.len(), 3);
    assert_pending!(w.poll());
    for k in ["a", "b", "c"] {
        assert_eq!(hub.get(k).unwrap().waiter_count(), 1, "{k} registered");
    }
    hub.notify("b", 1).unwrap();
    assert!(w.is_woken());
    let ready = assert_ready!(w.poll());
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, "b");
    assert_eq!(values(ready[0].1.as_ref().unwrap()), [1]);
    // The others were unregistered when the answer was made.
    for k in ["a", "b", "c"] {
        assert_eq!(hub.get(k).unwrap().waiter_count(), 0, "{k} unregistered");
    }
}

#[test]
fn every_key_ready_at_the_wake_is_in_the_answer_in_the_given_order() {
    let hub = hub();
    let mut w = task::spawn(
        hub.wait_many([
            (s("a"), Cursor::NEXT),
            (s("b"), Cursor::NEXT),
            (s("c"), Cursor::NEXT),
        ])
        .unwrap(),
    );
    assert_pending!(w.poll());
    hub.notify("c", 1).unwrap();
    hub.notify("a", 1).unwrap();
    hub.notify("a", 2).unwrap();
    let ready = assert_ready!(w.poll());
    let keys: Vec<&str> = ready.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "c"]);
    assert_eq!(values(ready[0].1.as_ref().unwrap()), [1, 2]);
    assert_eq!(values(ready[1].1.as_ref().unwrap()), [1]);
}

#[test]
fn keys_behind_their_cursor_are_answered_at_once_with_what_they_missed() {
    let hub = hub();
    for v in 1..=3 {
        hub.notify("a", v).unwrap();
    }
    hub.notify("b", 10).unwrap();
    let b_now = hub.get("b").unwrap().current().cursor();
    let ready = hub
        .wait_many([(s("a"), Cursor::at(Version::new(1))), (s("b"), b_now)])
        .unwrap()
        .now_or_never()
        .expect("a is behind: ready at once");
    assert_eq!(ready.len(), 1, "b is at its current version: not ready");
    assert_eq!(ready[0].0, "a");
    let changed = ready[0].1.as_ref().unwrap();
    assert_eq!(values(changed), [2, 3]);
    assert_eq!(changed.resync(), None);
}

#[test]
fn cursor_rules_per_key_lagged_ahead_and_other_epoch() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .configure(|_: &String| Builder::new().history(2))
        .build();
    for v in 1..=5 {
        hub.notify("lagged", v).unwrap();
    }
    hub.notify("ahead", 1).unwrap();
    hub.broadcaster("foreign").unwrap();
    let foreign = Cursor::at(Version::ZERO).with_epoch(Epoch::new(1).unwrap());
    let ready = hub
        .wait_many([
            (s("lagged"), Cursor::at(Version::ZERO)),
            (s("ahead"), Cursor::at(Version::new(9))),
            (s("foreign"), foreign),
        ])
        .unwrap()
        .now_or_never()
        .expect("all three are ready at once");
    let answers: Vec<_> = ready
        .iter()
        .map(|(k, r)| (k.as_str(), r.as_ref().unwrap().resync()))
        .collect();
    assert_eq!(
        answers,
        [
            ("lagged", Some(Resync::Lagged { skipped: 3 })),
            ("ahead", Some(Resync::Ahead)),
            ("foreign", Some(Resync::OtherEpoch)),
        ]
    );
    assert_eq!(values(ready[0].1.as_ref().unwrap()), [4, 5]);
}

#[test]
fn dropping_the_wait_unregisters_every_key() {
    let hub = hub();
    let mut w = task::spawn(
        hub.wait_many([(s("a"), Cursor::NEXT), (s("b"), Cursor::NEXT)])
            .unwrap(),
    );
    assert_pending!(w.poll());
    assert_eq!(hub.get("a").unwrap().waiter_count(), 1);
    drop(w);
    assert_eq!(hub.get("a").unwrap().waiter_count(), 0);
    assert_eq!(hub.get("b").unwrap().waiter_count(), 0);
    // Nothing was consumed: the same cursors see the change.
    let a = hub.get("a").unwrap().current().cursor();
    let b = hub.get("b").unwrap().current().cursor();
    hub.notify("a", 1).unwrap();
    let ready = hub
        .wait_many([(s("a"), a), (s("b"), b)])
        .unwrap()
        .now_or_never()
        .unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, "a");
}

#[test]
fn a_closed_key_answers_with_its_error_next_to_the_other_keys() {
    let hub: Keyed<String, u32> = Keyed::builder()
        .configure(|k: &String| {
            if k == "tiny" {
                Builder::new().max_waiters(0)
            } else {
                Builder::new()
            }
        })
        .build();
    let mut w = task::spawn(
        hub.wait_many([(s("a"), Cursor::NEXT), (s("b"), Cursor::NEXT)])
            .unwrap(),
    );
    assert_pending!(w.poll());
    assert!(hub.remove("b"));
    let ready = assert_ready!(w.poll());
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, "b");
    assert_eq!(ready[0].1.as_ref().unwrap_err(), &WaitError::Closed);

    let ready = hub
        .wait_many([(s("a"), Cursor::NEXT), (s("tiny"), Cursor::NEXT)])
        .unwrap()
        .now_or_never()
        .expect("a full key answers at once");
    assert_eq!(ready[0].0, "tiny");
    assert!(ready[0].1.as_ref().unwrap_err().is_full());
    assert_eq!(hub.get("a").unwrap().waiter_count(), 0);
}

#[tokio::test]
async fn one_task_polls_many_topics_in_a_loop_without_missing_a_change() {
    let hub: Keyed<u32, u32> = Keyed::builder().history(64).build();
    let mut cursors: Vec<(u32, Cursor)> = (0..16)
        .map(|k| (k, hub.broadcaster(&k).unwrap().current().cursor()))
        .collect();
    let publisher = tokio::spawn({
        let hub = hub.clone();
        async move {
            for n in 1..=20u32 {
                for k in 0..16 {
                    if (k + n) % 3 == 0 {
                        hub.notify(&k, n).unwrap();
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 16];
    let expected: Vec<Vec<u32>> = (0..16)
        .map(|k| (1..=20).filter(|n| (k + n) % 3 == 0).collect())
        .collect();
    while seen != expected {
        let ready = tokio::time::timeout(
            Duration::from_secs(5),
            hub.wait_many(cursors.iter().copied()).unwrap(),
        )
        .await
        .expect("changes keep coming until all are seen");
        for (key, answer) in ready {
            let changed = answer.unwrap();
            assert_eq!(changed.resync(), None);
            seen[key as usize].extend(values(&changed));
            cursors[key as usize].1 = changed.cursor();
        }
    }
    publisher.await.unwrap();
}

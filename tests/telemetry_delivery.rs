//! The backplane's metrics of normal operation, against a private
//! `redis-server`: how long a publish takes to come back over Pub/Sub to
//! the instance that made it (`longpoll_backplane_delivery_duration_seconds`),
//! for channels and keyed hubs, and the versions the periodic check found
//! missing (`longpoll_backplane_missed_versions_total`). No timing is
//! asserted: only how many samples there are, and when there are none.
#![cfg(all(feature = "redis", feature = "metrics"))]

mod redis_common;
mod telemetry_common;

use std::time::Duration;

use longpoll::redis::{Backplane, Channel, KeyedChannels, ModifyScript};
use longpoll::{Cursor, Version};
use redis_common::{command, unique_prefix, OwnRedis};
use telemetry_common::TestRecorder;

const WAIT: Duration = Duration::from_secs(10);
const DELIVERY: &str = "longpoll_backplane_delivery_duration_seconds";
const MISSED: &str = "longpoll_backplane_missed_versions_total";

/// Waits until `f` holds, or fails the test with `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the histogram holds `n` samples, then a moment more, and
/// checks that no other came.
async fn samples(rec: &TestRecorder, n: usize, what: &str) {
    until(what, || rec.histogram(DELIVERY).len() >= n).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.histogram(DELIVERY).len(), n, "{what}");
}

#[tokio::test]
async fn each_publish_is_timed_until_its_own_message_comes_back() {
    let Some(redis) = OwnRedis::start("each_publish_is_timed_until_its_own_message") else {
        return;
    };
    // On this thread (a current-thread runtime): the handles registered
    // when the backplane is built record here.
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let url = redis.url();
    let prefix = unique_prefix("delivery");
    let a = Backplane::builder(&url)
        .prefix(&prefix)
        // A reconnect waits at least a second: a publish right after the
        // subscription is killed reaches no subscriber.
        .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(4))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        rec.described(DELIVERY).map(|(unit, _)| unit),
        Some(Some(metrics::Unit::Seconds))
    );
    until("subscribed", || a.is_connected()).await;
    let ch: Channel<u64> = a
        .channel_builder("chan-secret")
        .history(8)
        .open(0)
        .await
        .unwrap();
    assert!(rec.histogram(DELIVERY).is_empty());

    // One sample per publish, each waited for before the next publish
    // (one in flight at a time per channel is timed).
    for v in 1..=5u64 {
        assert_eq!(ch.publish(v).await.unwrap(), Version::new(v));
        samples(&rec, v as usize, &format!("publish {v} timed")).await;
    }
    assert!(rec
        .histogram(DELIVERY)
        .iter()
        .all(|s| s.is_finite() && *s >= 0.0));

    // A modify that publishes is timed; one that declines, and a repeated
    // `publish_once`, publish nothing and leave the slot free.
    let take = ModifyScript::new("if ARGV[1] == 'no' then return nil end return ARGV[1]");
    assert!(!ch
        .modify(&take)
        .arg("no")
        .invoke()
        .await
        .unwrap()
        .is_published());
    assert!(ch
        .modify(&take)
        .arg("6")
        .invoke()
        .await
        .unwrap()
        .is_published());
    samples(&rec, 6, "the modify that published").await;
    ch.publish_once("once", 7).await.unwrap();
    samples(&rec, 7, "the first publish_once").await;
    assert!(ch.publish_once("once", 7).await.is_ok());
    ch.publish(8).await.unwrap();
    samples(&rec, 8, "a publish after a repeat").await;

    // A keyed hub's keys are timed the same way.
    let rooms: KeyedChannels<u64> = a.keyed("rooms").history(4).build().unwrap();
    let lobby = rooms.broadcaster("lobby-secret").await.unwrap();
    for v in 1..=3u64 {
        let at = rooms.publish("lobby-secret", v).await.unwrap();
        assert_eq!(at.version, Version::new(v));
        samples(&rec, 8 + v as usize, &format!("keyed publish {v} timed")).await;
    }
    assert_eq!(lobby.current().version(), Version::new(3));

    // The subscription killed, then a publish whose message reaches no
    // subscriber: no sample, and the next publish once the subscription is
    // back is timed again.
    let _: i64 = command(
        &url,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    ch.publish(9).await.unwrap();
    let (_, subscribers): (String, i64) =
        command(&url, redis::cmd("PUBSUB").arg("NUMSUB").arg(ch.key())).await;
    assert_eq!(subscribers, 0, "the message of publish 9 reached no one");
    until("A notices", || !a.is_connected()).await;
    until("A is back", || a.is_connected()).await;
    assert_eq!(ch.current().version(), Version::new(9));
    assert_eq!(rec.histogram(DELIVERY).len(), 11, "publish 9 is not timed");
    ch.publish(10).await.unwrap();
    samples(&rec, 12, "the first publish after the reconnect").await;

    // No waiter was held: the periodic check looked at nothing.
    assert_eq!(rec.counter(MISSED, &[]), 0);
    drop(lobby);
    rec.assert_no_names_in_labels(&["secret", &prefix]);
}

#[tokio::test]
async fn the_periodic_check_counts_the_versions_it_found_missing() {
    let Some(redis) = OwnRedis::start("the_periodic_check_counts_the_versions_missing") else {
        return;
    };
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let url = redis.url();
    let a = Backplane::builder(&url)
        .prefix(unique_prefix("missed"))
        .check_interval(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        rec.described(MISSED).map(|(unit, _)| unit),
        Some(Some(metrics::Unit::Count))
    );
    until("subscribed", || a.is_connected()).await;
    let ch: Channel<u64> = a.channel("c", 0).await.unwrap();
    let b = ch.broadcaster().clone();
    let wait = tokio::spawn(async move { b.wait_timeout(Cursor::NEXT, WAIT).await });
    until("the waiter registers", || {
        ch.broadcaster().waiter_count() == 1
    })
    .await;

    // Three versions behind the instance's back: the state moves on in
    // Redis, and no message is published.
    let _: i64 = command(
        &url,
        redis::cmd("HINCRBY").arg(ch.key()).arg("version").arg(3),
    )
    .await;
    let _: i64 = command(&url, redis::cmd("HSET").arg(ch.key()).arg("value").arg("3")).await;
    until("the check heals it", || {
        ch.current().version() == Version::new(3)
    })
    .await;
    let woken = wait.await.unwrap().unwrap();
    assert_eq!(**woken.value(), 3);
    until("counted", || rec.counter(MISSED, &[]) == 3).await;
    assert!(a.is_connected());
    assert_eq!(a.reconnects(), 0, "healed without a reconnect");
    // Nothing was published by this instance.
    assert!(rec.histogram(DELIVERY).is_empty());

    // The next checks find it in line: nothing more is counted.
    let resyncs = a.stats().resyncs;
    let b = ch.broadcaster().clone();
    let _held = tokio::spawn(async move { b.wait_timeout(Cursor::NEXT, WAIT).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.stats().resyncs, resyncs);
    assert_eq!(rec.counter(MISSED, &[]), 3);
}

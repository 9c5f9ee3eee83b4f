//! The Redis backplane's events and metrics (the table in the crate docs),
//! against a private `redis-server`: connect, a lost subscription and its
//! reconnect, the catch-up of what was published meanwhile and the time it
//! was down, an epoch restart, a channel that breaks and heals, a rejected
//! message, the backplane's end. No channel name in any label.
#![cfg(all(feature = "redis", feature = "tracing", feature = "metrics"))]

mod redis_common;
mod telemetry_common;

use std::time::Duration;

use longpoll::redis::{Backplane, Channel};
use longpoll::{Cursor, Version, WaitError};
use redis_common::{command, unique_prefix, OwnRedis};
use telemetry_common::{Capture, TestRecorder};
use tracing::Level;

const BACKPLANE: &str = "longpoll::backplane";
const WAIT: Duration = Duration::from_secs(10);
const CHANNEL: &str = "chan-secret";

/// Waits until `f` holds, or fails the test with `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes `values` on the channel from another instance, in a thread and
/// runtime of its own, outside the test's subscriber and recorder. Blocks
/// the test's thread, so the test's backplane cannot reconnect meanwhile.
///
/// That thread has a subscriber of its own, which it discards: with one
/// thread-local subscriber alive, `tracing` caches an event's interest from
/// the thread that hits it first, and a thread without one would turn the
/// event off for the test's thread too (a global subscriber, as a server
/// has, is not affected).
fn publish_elsewhere(url: &str, prefix: &str, values: &[u64]) {
    let (url, prefix, values) = (url.to_owned(), prefix.to_owned(), values.to_vec());
    std::thread::spawn(move || {
        let _discarded = Capture::new().set_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Backplane::builder(url)
                .prefix(prefix)
                .connect()
                .await
                .unwrap();
            let ch: Channel<u64> = b.channel_builder(CHANNEL).history(8).open(0).await.unwrap();
            for v in values {
                ch.publish(v).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
}

/// Holds a wait on `ch`, so that the periodic check looks at it.
fn hold(ch: &Channel<u64>) -> tokio::task::JoinHandle<Result<longpoll::Changed<u64>, WaitError>> {
    let ch = ch.clone();
    tokio::spawn(async move { ch.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await })
}

#[tokio::test]
async fn the_backplane_traces_and_measures_every_incident() {
    let Some(redis) = OwnRedis::start("the_backplane_traces_and_measures_every_incident") else {
        return;
    };
    // On this thread (a current-thread runtime): every task of the
    // backplane records here.
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let capture = Capture::new();
    let _tracing = capture.set_default();
    let url = redis.url();
    let prefix = unique_prefix("telemetry");
    let gauge = |rec: &TestRecorder| rec.gauge("longpoll_backplane_connected");

    // Connect.
    let a = Backplane::builder(&url)
        .prefix(&prefix)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .command_timeout(Duration::from_millis(500))
        .check_interval(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let e = capture.one(BACKPLANE, "backplane connected");
    assert_eq!(e.level, Level::INFO);
    assert_eq!(e.field("prefix"), Some(prefix.as_str()));
    until("subscribed", || gauge(&rec) == Some(1.0)).await;
    assert_eq!(
        capture.one(BACKPLANE, "backplane subscribed").level,
        Level::DEBUG
    );
    let ch: Channel<u64> = a.channel_builder(CHANNEL).history(8).open(0).await.unwrap();

    // The subscription lost while another instance publishes three times.
    let _: i64 = command(
        &url,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    until("A notices", || !a.is_connected()).await;
    let lost = capture.one(BACKPLANE, "backplane subscription lost; reconnecting");
    assert_eq!(lost.level, Level::WARN);
    assert!(lost.field("reason").is_some());
    assert_eq!(gauge(&rec), Some(0.0));
    assert_eq!(rec.counter("longpoll_backplane_reconnects_total", &[]), 1);
    let blocked = std::time::Instant::now();
    publish_elsewhere(&url, &prefix, &[1, 2, 3]);
    let down_at_least = blocked.elapsed();
    until("A is back and caught up", || {
        a.is_connected() && ch.current().version() == Version::new(3)
    })
    .await;
    let restored = capture.one(BACKPLANE, "backplane subscription restored");
    assert_eq!(restored.level, Level::INFO);
    assert!(restored.u64("downtime_ms") >= down_at_least.as_millis() as u64);
    assert_eq!(restored.u64("attempts"), 1);
    let downtime = rec.histogram("longpoll_backplane_downtime_seconds");
    assert_eq!(downtime.len(), 1);
    assert!(downtime[0] >= down_at_least.as_secs_f64(), "{downtime:?}");
    let caught = capture.one(BACKPLANE, "backplane caught up");
    assert_eq!(caught.level, Level::INFO);
    assert_eq!(caught.u64("channels"), 1);
    assert_eq!(caught.u64("versions"), 3);
    assert_eq!(caught.u64("restarted"), 0);
    assert_eq!(rec.histogram("longpoll_backplane_catchup_versions"), [3.0]);
    assert_eq!(
        rec.histogram("longpoll_backplane_catchup_duration_seconds")
            .len(),
        1
    );
    assert_eq!(gauge(&rec), Some(1.0));

    // Redis loses everything: the channel restarts under a new epoch.
    let old = ch.current().epoch();
    let held = hold(&ch);
    let _: () = command(&url, &redis::cmd("FLUSHALL")).await;
    until("a new epoch", || ch.current().epoch() != old).await;
    let restart = capture.one(
        BACKPLANE,
        "channel restarted under a new epoch: Redis lost its data or came back behind",
    );
    assert_eq!(restart.level, Level::WARN);
    assert_eq!(
        restart.field("channel"),
        Some(format!("{prefix}{{{CHANNEL}}}").as_str())
    );
    assert_eq!(
        restart.field("epoch"),
        Some(ch.current().epoch().to_string().as_str())
    );
    assert_eq!(
        rec.counter("longpoll_backplane_epoch_restarts_total", &[]),
        1
    );
    assert!(held.await.unwrap().is_ok());

    // A key of another type breaks the channel; deleting it heals it.
    let held = hold(&ch);
    until("the waiter registers", || {
        ch.broadcaster().waiter_count() == 1
    })
    .await;
    let _: i64 = command(&url, redis::cmd("DEL").arg(ch.key())).await;
    let _: () = command(&url, redis::cmd("SET").arg(ch.key()).arg("not a hash")).await;
    until("broken", || ch.failure().is_some()).await;
    let broke = capture.one(
        BACKPLANE,
        "channel broken; its waits are refused until it heals",
    );
    assert_eq!(broke.level, Level::WARN);
    assert!(broke.field("error").is_some());
    assert_eq!(
        rec.counter("longpoll_backplane_channel_failures_total", &[]),
        1
    );
    assert_eq!(held.await.unwrap().unwrap_err(), WaitError::Closed);
    let failing = capture.one("longpoll::publish", "failing: waiters answered closed");
    assert_eq!(failing.level, Level::DEBUG);
    assert_eq!(failing.u64("waiters"), 1);
    let refused = ch.broadcaster().wait(Cursor::NEXT).await;
    assert_eq!(refused.unwrap_err(), WaitError::Closed);
    assert_eq!(
        rec.counter("longpoll_refused_waits_total", &[("reason", "closed")]),
        1
    );
    let _: i64 = command(&url, redis::cmd("DEL").arg(ch.key())).await;
    until("healed", || ch.failure().is_none()).await;
    assert_eq!(capture.one(BACKPLANE, "channel healed").level, Level::INFO);
    assert_eq!(
        rec.counter("longpoll_backplane_channel_heals_total", &[]),
        1
    );

    // A message that does not parse.
    let channel = format!("{prefix}{{{CHANNEL}}}");
    let _: i64 = command(&url, redis::cmd("PUBLISH").arg(&channel).arg("garbage")).await;
    until("rejected", || {
        rec.counter("longpoll_backplane_rejected_messages_total", &[]) == 1
    })
    .await;
    let rejected = capture.one(BACKPLANE, "message rejected; reading the channel again");
    assert_eq!(rejected.level, Level::WARN);
    assert_eq!(rejected.field("channel"), Some(channel.as_str()));

    // The end.
    drop(ch);
    drop(a);
    assert_eq!(gauge(&rec), Some(0.0));
    assert_eq!(
        capture.one(BACKPLANE, "backplane stopped").level,
        Level::DEBUG
    );
    assert_eq!(capture.spans(), 0);
    rec.assert_no_names_in_labels(&["secret", &prefix]);
}

#[tokio::test]
async fn a_backplane_that_cannot_subscribe_warns_once_then_says_how_long_it_was_down() {
    let Some(mut redis) = OwnRedis::start("a_backplane_that_cannot_subscribe_warns_once") else {
        return;
    };
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let capture = Capture::new();
    let _tracing = capture.set_default();
    let a = Backplane::builder(redis.url())
        .prefix(unique_prefix("telemetry-down"))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect_timeout(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let _ch: Channel<u64> = a.channel("c", 0).await.unwrap();
    until("subscribed", || a.is_connected()).await;
    redis.kill();
    until("A notices", || !a.is_connected()).await;
    until("several attempts fail", || {
        capture
            .find(BACKPLANE, "backplane cannot subscribe yet")
            .len()
            >= 2
    })
    .await;
    let first = capture.one(
        BACKPLANE,
        "backplane cannot subscribe; retrying with backoff",
    );
    assert_eq!(first.level, Level::WARN);
    assert!(first.field("error").is_some());
    redis.restart();
    until("A is back", || a.is_connected()).await;
    let restored = capture.one(BACKPLANE, "backplane subscription restored");
    let later = capture.find(BACKPLANE, "backplane cannot subscribe yet");
    assert!(later.iter().all(|e| e.level == Level::DEBUG));
    assert_eq!(restored.u64("attempts"), 1 + 1 + later.len() as u64);
    assert_eq!(rec.counter("longpoll_backplane_reconnects_total", &[]), 1);
    assert_eq!(
        rec.histogram("longpoll_backplane_downtime_seconds").len(),
        1
    );
}

#[tokio::test]
async fn an_unreadable_history_entry_is_a_warning_a_count_and_a_marked_gap_never_a_wrong_value() {
    let Some(redis) = OwnRedis::start(
        "an_unreadable_history_entry_is_a_warning_a_count_and_a_marked_gap_never_a_wrong_value",
    ) else {
        return;
    };
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let capture = Capture::new();
    let _tracing = capture.set_default();
    let url = redis.url();
    let prefix = unique_prefix("telemetry-history");
    let a = Backplane::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let ch: Channel<u64> = a.channel_builder(CHANNEL).history(8).open(0).await.unwrap();
    for v in 1..=5u64 {
        ch.publish(v * 10).await.unwrap();
    }
    assert_eq!(
        rec.counter("longpoll_backplane_unreadable_history_total", &[]),
        0
    );
    // Version 3's entry holds a value that is not a `u64`.
    let _: i64 = command(
        &url,
        redis::cmd("HSET").arg(ch.key()).arg("h3").arg("thirty"),
    )
    .await;

    // A late instance reads the channel: the entry is left out, and said so.
    let b = Backplane::builder(&url)
        .prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let late: Channel<u64> = b.channel_builder(CHANNEL).history(8).open(0).await.unwrap();
    assert_eq!(late.current().version(), Version::new(5));
    let warned = capture.one(
        BACKPLANE,
        "unreadable history entries left out; their versions count as lost",
    );
    assert_eq!(warned.level, Level::WARN);
    assert_eq!(warned.u64("entries"), 1);
    assert_eq!(
        warned.field("channel"),
        Some(format!("{prefix}{{{CHANNEL}}}").as_str())
    );
    assert_eq!(
        rec.counter("longpoll_backplane_unreadable_history_total", &[]),
        1
    );
    rec.assert_no_names_in_labels(&[CHANNEL]);

    // A client that saw version 2 gets what is left after it, with the gap
    // marked; nobody is ever handed another value for version 3.
    let epoch = late.current().epoch();
    let changed = late
        .broadcaster()
        .wait(Cursor::at(Version::new(2)).with_epoch(epoch))
        .await
        .unwrap();
    assert!(
        matches!(changed.resync(), Some(longpoll::Resync::Lagged { .. })),
        "{:?}",
        changed.resync()
    );
    let got: Vec<(u64, u64)> = changed
        .updates()
        .iter()
        .map(|u| (u.version().get(), **u.value()))
        .collect();
    assert!(got.iter().all(|(v, _)| *v != 3), "{got:?}");
    assert_eq!(got.last(), Some(&(5, 50)), "{got:?}");
    // A client that saw version 3 from the healthy instance is in line.
    let next = late
        .broadcaster()
        .wait(Cursor::at(Version::new(3)).with_epoch(epoch))
        .await
        .unwrap();
    assert_eq!(next.resync(), None);
    assert_eq!(
        next.updates()
            .iter()
            .map(|u| (u.version().get(), **u.value()))
            .collect::<Vec<_>>(),
        [(4, 40), (5, 50)]
    );
}

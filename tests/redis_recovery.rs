//! What the backplane guarantees when Redis misbehaves, one test per
//! guarantee, each on a private `redis-server` (never the shared one):
//! a store restored behind, a broken channel among good ones, a lagging
//! instance, a late instance, epoch changes in any order, a lost message,
//! the channel's own history depth, a retried publish, a cheap catch-up.

mod redis_common;

use std::time::Duration;

use longpoll::redis::{Backplane, Channel, ModifyScript};
use longpoll::{Cursor, Resync, Version, WaitError};
use redis_common::{command, unique_prefix, OwnRedis};

const WAIT: Duration = Duration::from_secs(10);

fn builder(redis: &OwnRedis, prefix: &str) -> longpoll::redis::Builder {
    Backplane::builder(redis.url())
        .prefix(prefix)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
}

async fn instance(redis: &OwnRedis, prefix: &str) -> Backplane {
    builder(redis, prefix).connect().await.unwrap()
}

async fn cmd<T: redis::FromRedisValue>(redis: &OwnRedis, c: &mut redis::Cmd) -> T {
    command(&redis.url(), c).await
}

async fn kill_subscriptions(redis: &OwnRedis) -> i64 {
    cmd(
        redis,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await
}

/// Waits until `f` holds, or fails the test with `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_publish_on_a_store_restored_behind_starts_a_new_epoch_before_reusing_a_version() {
    let Some(redis) = OwnRedis::start("a_publish_on_a_store_restored_behind") else {
        return;
    };
    let prefix = unique_prefix("behind-publish");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let on_a: Channel<u64> = a.channel_builder("c").history(8).open(0).await.unwrap();
    let on_b: Channel<u64> = b.channel_builder("c").history(8).open(0).await.unwrap();
    for n in 1..=5 {
        on_a.publish(n).await.unwrap();
    }
    until("B reaches 5", || {
        on_b.current().version() == Version::new(5)
    })
    .await;
    let seen = on_b.current();
    // Restored in place to version 2, subscriptions untouched: no
    // catch-up runs before the next publish.
    let _: i64 = cmd(
        &redis,
        redis::cmd("HSET")
            .arg(on_a.key())
            .arg("version")
            .arg(2)
            .arg("value")
            .arg(2),
    )
    .await;
    let waiter = tokio::spawn({
        let on_b = on_b.clone();
        let cursor = seen.cursor();
        async move { on_b.broadcaster().wait_timeout(cursor, WAIT).await }
    });
    let version = on_a.publish(30).await.unwrap();
    let now = on_a.current();
    assert_ne!(
        now.epoch(),
        seen.epoch(),
        "version 3 was already delivered as 3"
    );
    assert_eq!((now.version(), **now.value()), (version, 30));
    assert_eq!(version, Version::new(3));
    let changed = waiter.await.unwrap().unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(changed.epoch(), now.epoch());
    until("B follows", || on_b.current().cursor() == now.cursor()).await;
    assert_eq!(**on_b.current().value(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_channel_fails_alone_tells_its_waiters_and_heals() {
    let Some(redis) = OwnRedis::start("a_broken_channel_fails_alone") else {
        return;
    };
    let prefix = unique_prefix("broken");
    let a = builder(&redis, &prefix)
        .check_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let b = instance(&redis, &prefix).await;
    let mut good_a = Vec::new();
    let mut good_b = Vec::new();
    for i in 0..8 {
        good_a.push(a.channel::<u64>(&format!("good{i}"), 0).await.unwrap());
        good_b.push(b.channel::<u64>(&format!("good{i}"), 0).await.unwrap());
    }
    let typed: Channel<u64> = a.channel("typed", 0).await.unwrap();
    let field: Channel<u64> = a.channel("field", 0).await.unwrap();
    let value: Channel<u64> = a.channel("value", 0).await.unwrap();
    let held: Vec<_> = [&typed, &field, &value]
        .into_iter()
        .map(|ch| {
            let ch = ch.clone();
            tokio::spawn(async move { ch.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await })
        })
        .collect();
    until("the waiters register", || {
        typed.broadcaster().waiter_count()
            + field.broadcaster().waiter_count()
            + value.broadcaster().waiter_count()
            == 3
    })
    .await;

    // A key of another type, a version that is not a number, a value
    // that is not a `u64`, and the subscription lost.
    let _: i64 = cmd(&redis, redis::cmd("DEL").arg(typed.key())).await;
    let _: () = cmd(&redis, redis::cmd("SET").arg(typed.key()).arg("not a hash")).await;
    let _: i64 = cmd(
        &redis,
        redis::cmd("HSET").arg(field.key()).arg("version").arg("x"),
    )
    .await;
    let _: i64 = cmd(
        &redis,
        redis::cmd("HSET")
            .arg(value.key())
            .arg("version")
            .arg(1)
            .arg("value")
            .arg("seven"),
    )
    .await;
    kill_subscriptions(&redis).await;
    for (i, ch) in good_b.iter().enumerate() {
        ch.publish(i as u64 + 100).await.unwrap();
    }

    // The others catch up and the subscription is back.
    until("A is connected again", || {
        a.is_connected() && a.reconnects() >= 1
    })
    .await;
    for (i, ch) in good_a.iter().enumerate() {
        let want = i as u64 + 100;
        until("a good channel catches up", || {
            **ch.current().value() == want
        })
        .await;
    }
    // The broken ones tell their waiters, say why, and refuse publishes.
    for h in held {
        assert_eq!(h.await.unwrap().unwrap_err(), WaitError::Closed);
    }
    let e = typed.failure().expect("typed is broken");
    assert!(e.is_server(), "{e:?}");
    assert!(field.failure().expect("field is broken").is_decode());
    assert!(value.failure().expect("value is broken").is_decode());
    assert!(typed.publish(1).await.unwrap_err().is_server());
    assert!(field.publish(1).await.unwrap_err().is_decode());
    let r = value.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await;
    assert_eq!(r.unwrap_err(), WaitError::Closed, "waits fail at once");
    assert!(a.stats().channel_failures >= 3);

    // Fixed in Redis: each heals by itself, under a new epoch or with the
    // good value.
    let _: i64 = cmd(&redis, redis::cmd("DEL").arg(typed.key())).await;
    let _: i64 = cmd(&redis, redis::cmd("DEL").arg(field.key())).await;
    let _: i64 = cmd(
        &redis,
        redis::cmd("HSET").arg(value.key()).arg("value").arg("7"),
    )
    .await;
    until("the broken channels heal", || {
        typed.failure().is_none() && field.failure().is_none() && value.failure().is_none()
    })
    .await;
    assert_eq!(**value.current().value(), 7);
    assert_eq!(
        **typed.current().value(),
        0,
        "started again from the initial value"
    );
    let waiter = tokio::spawn({
        let typed = typed.clone();
        async move { typed.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await }
    });
    until("the waiter registers", || {
        typed.broadcaster().waiter_count() == 1
    })
    .await;
    typed.publish(5).await.unwrap();
    assert_eq!(**waiter.await.unwrap().unwrap().value(), 5);
    assert!(a.stats().healed >= 3);
}

#[tokio::test]
async fn a_cursor_from_a_faster_instance_waits_on_a_lagging_one_until_it_catches_up() {
    let Some(redis) = OwnRedis::start("a_cursor_from_a_faster_instance_waits") else {
        return;
    };
    let prefix = unique_prefix("ahead");
    let a = instance(&redis, &prefix).await;
    // B comes back slowly after losing its subscription.
    let b = builder(&redis, &prefix)
        .reconnect_backoff(Duration::from_millis(600), Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let on_a: Channel<u64> = a.channel("c", 0).await.unwrap();
    let on_b: Channel<u64> = b.channel("c", 0).await.unwrap();
    kill_subscriptions(&redis).await;
    until("B notices", || !b.is_connected()).await;
    on_a.publish(1).await.unwrap();
    // The client saw version 1 on A, and now polls B, which has not.
    let cursor = on_a.current().cursor();
    assert_eq!(on_b.current().version(), Version::ZERO);
    let poll = tokio::spawn({
        let on_b = on_b.clone();
        async move { on_b.broadcaster().wait_timeout(cursor, WAIT).await }
    });
    // Held while B lags, and still held once B reached version 1: it now
    // waits for version 2, as it would on A.
    until("B catches up", || {
        on_b.current().version() == Version::new(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !poll.is_finished(),
        "no answer with older state than the client saw"
    );
    on_a.publish(2).await.unwrap();
    let changed = poll.await.unwrap().expect("answered with the next change");
    assert_eq!(changed.resync(), None);
    assert_eq!((changed.version(), **changed.value()), (Version::new(2), 2));
}

#[tokio::test]
async fn an_instance_opened_late_serves_the_retained_history() {
    let Some(redis) = OwnRedis::start("an_instance_opened_late_serves_the_history") else {
        return;
    };
    let prefix = unique_prefix("late");
    let a = instance(&redis, &prefix).await;
    let on_a: Channel<u64> = a.channel_builder("log").history(8).open(0).await.unwrap();
    for n in 1..=5 {
        on_a.publish(n * 10).await.unwrap();
    }
    let b = instance(&redis, &prefix).await;
    let on_b: Channel<u64> = b.channel_builder("log").history(8).open(0).await.unwrap();
    // A client that saw version 2 on A polls B, opened after all of it.
    let cursor = Cursor::at(Version::new(2)).with_epoch(on_a.current().epoch());
    let changed = on_b.broadcaster().wait(cursor).await.unwrap();
    assert_eq!(changed.resync(), None, "not lagged: B loaded the history");
    let values: Vec<u64> = changed.updates().iter().map(|u| **u.value()).collect();
    assert_eq!(values, [30, 40, 50]);
}

// One thread: the late answer stays unread until the test polls it.
#[tokio::test]
async fn an_epoch_learned_by_pubsub_then_an_older_one_by_a_late_reply_leaves_no_instance_stuck() {
    let Some(redis) = OwnRedis::start("epochs_in_any_order") else {
        return;
    };
    let prefix = unique_prefix("epochs");
    let a = builder(&redis, &prefix)
        .reconnect_backoff(Duration::from_millis(400), Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let b = instance(&redis, &prefix).await;
    let on_a: Channel<u64> = a.channel("c", 0).await.unwrap();
    let on_b: Channel<u64> = b.channel("c", 0).await.unwrap();
    on_a.publish(1).await.unwrap(); // the script is loaded
    until("B has 1", || on_b.current().version() == Version::new(1)).await;
    let first = on_a.current().epoch();

    kill_subscriptions(&redis).await;
    until("A notices", || !a.is_connected()).await;
    on_a.publish(10).await.unwrap(); // a command connection again
                                     // Lost: A's publish creates epoch E2, and its answer waits unread.
    let _: i64 = cmd(&redis, redis::cmd("DEL").arg(on_a.key())).await;
    let mut late = Box::pin(on_a.publish(2));
    let first_poll = futures::poll!(late.as_mut());
    assert!(first_poll.is_pending(), "{first_poll:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Lost again: B starts epoch E3.
    let _: i64 = cmd(&redis, redis::cmd("DEL").arg(on_a.key())).await;
    on_b.publish(3).await.unwrap();
    let third = on_b.current().epoch();
    assert_ne!(third, first);
    // A learns E3 when it catches up, then reads the late answer of E2.
    until("A catches up with E3", || {
        a.is_connected() && on_a.current().epoch() == third
    })
    .await;
    late.await.unwrap();
    // Whatever the order, A follows E3 from here on.
    let v = on_b.publish(4).await.unwrap();
    until("A stays on E3 and gets 4", || {
        let cur = on_a.current();
        cur.epoch() == third && cur.version() == v
    })
    .await;
    assert_eq!(**on_a.current().value(), 4);
}

#[tokio::test]
async fn a_lost_message_heals_at_the_next_check_without_a_reconnect() {
    let Some(redis) = OwnRedis::start("a_lost_message_heals") else {
        return;
    };
    let prefix = unique_prefix("lost");
    let a = builder(&redis, &prefix)
        .check_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let on_a: Channel<u64> = a.channel("c", 0).await.unwrap();
    let waiter = tokio::spawn({
        let on_a = on_a.clone();
        async move { on_a.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await }
    });
    until("the waiter registers", || {
        on_a.broadcaster().waiter_count() == 1
    })
    .await;
    // A change whose message never comes (as if Pub/Sub dropped it).
    let _: i64 = cmd(
        &redis,
        redis::cmd("HSET")
            .arg(on_a.key())
            .arg("version")
            .arg(1)
            .arg("value")
            .arg(11),
    )
    .await;
    let changed = waiter.await.unwrap().expect("found by the periodic check");
    assert_eq!(
        (changed.version(), **changed.value()),
        (Version::new(1), 11)
    );
    assert_eq!(a.reconnects(), 0);
}

#[tokio::test]
async fn the_history_depth_belongs_to_the_channel_not_to_the_last_publisher() {
    let Some(redis) = OwnRedis::start("the_history_depth_belongs_to_the_channel") else {
        return;
    };
    let prefix = unique_prefix("depth");
    let (a, b, c) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let deep: Channel<u64> = a.channel_builder("c").history(8).open(0).await.unwrap();
    let none: Channel<u64> = b.channel_builder("c").history(1).open(0).await.unwrap();
    let short: Channel<u64> = c.channel_builder("c").history(2).open(0).await.unwrap();
    for n in 1..=3 {
        none.publish(n).await.unwrap();
    }
    for n in 4..=6 {
        short.publish(n).await.unwrap();
    }
    // The history is kept in the channel's hash, one field per version
    // before the current one: 0 to 5 here, with 6 the current value.
    let fields: Vec<String> = (0..=6).map(|v| format!("h{v}")).collect();
    let entries: Vec<Option<String>> =
        cmd(&redis, redis::cmd("HMGET").arg(deep.key()).arg(&fields)).await;
    let want: Vec<Option<String>> = (0..=5).map(|v| Some(v.to_string())).chain([None]).collect();
    assert_eq!(entries, want);
    let _ = deep;
}

#[tokio::test]
async fn a_publish_retried_with_its_idempotency_key_publishes_once() {
    let Some(redis) = OwnRedis::start("a_publish_retried_with_its_idempotency_key") else {
        return;
    };
    let prefix = unique_prefix("once");
    let a = builder(&redis, &prefix)
        .command_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let b = instance(&redis, &prefix).await;
    let on_a: Channel<u64> = a.channel("c", 0).await.unwrap();
    let on_b: Channel<u64> = b.channel("c", 0).await.unwrap();
    on_a.publish(1).await.unwrap();

    // The answer times out while Redis sleeps; the publish runs after.
    let (slept, err) = tokio::join!(redis.sleep(0.6), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        on_a.publish_once("order-17", 2).await.unwrap_err()
    });
    assert!(err.is_unavailable(), "{err:?}");
    let () = slept;
    // Retried, on any instance: nothing new is published.
    let again = on_b.publish_once("order-17", 2).await.unwrap();
    assert_eq!(again, Version::new(2), "the version of the first attempt");
    let again = on_a.publish_once("order-17", 3).await.unwrap();
    assert_eq!(again, Version::new(2));
    let state: Vec<String> = cmd(
        &redis,
        redis::cmd("HMGET")
            .arg(on_a.key())
            .arg("version")
            .arg("value"),
    )
    .await;
    assert_eq!(state, ["2", "2"]);
    // Another key publishes; so does a modify, once.
    assert_eq!(
        on_a.publish_once("order-18", 4).await.unwrap(),
        Version::new(3)
    );
    let add = ModifyScript::new("return tonumber(value) + 1");
    let first = on_b.modify(&add).once("m-1").invoke().await.unwrap();
    let second = on_b.modify(&add).once("m-1").invoke().await.unwrap();
    assert!(first.is_published() && !first.is_repeat());
    assert!(second.is_repeat());
    assert_eq!(first.update().version(), Version::new(4));
    until("A has everything", || {
        on_a.current().version() == Version::new(4)
    })
    .await;
    assert_eq!(**on_a.current().value(), 5);
}

async fn info_stat(redis: &OwnRedis, field: &str) -> u64 {
    let info: String = cmd(redis, redis::cmd("INFO").arg("stats")).await;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has {field}"))
}

#[tokio::test]
async fn a_catch_up_reads_only_what_is_missing_in_one_pipeline() {
    let Some(redis) = OwnRedis::start("a_catch_up_reads_only_what_is_missing") else {
        return;
    };
    const CHANNELS: usize = 100;
    let prefix = unique_prefix("catchup");
    let a = instance(&redis, &prefix).await;
    let mut channels = Vec::new();
    for i in 0..CHANNELS {
        let ch: Channel<String> = a
            .channel_builder(&format!("c{i}"))
            .history(64)
            .open(String::new())
            .await
            .unwrap();
        channels.push(ch);
    }
    // Full histories: 100 channels x 64 entries x 500 bytes = 3.2 MB.
    let big = "x".repeat(500);
    for ch in &channels {
        for _ in 0..64 {
            ch.publish(big.clone()).await.unwrap();
        }
    }
    let last = channels[CHANNELS - 1].clone();
    let bytes = info_stat(&redis, "total_net_output_bytes").await;
    let reads = info_stat(&redis, "total_reads_processed").await;
    let before = a.reconnects();
    kill_subscriptions(&redis).await;
    until("A is back", || a.reconnects() > before && a.is_connected()).await;
    let sent = info_stat(&redis, "total_net_output_bytes").await - bytes;
    let read = info_stat(&redis, "total_reads_processed").await - reads;
    assert!(
        sent < 100_000,
        "the catch-up sent {sent} bytes: only what is missing"
    );
    assert!(
        read < 40,
        "{read} reads for {CHANNELS} channels: one pipeline"
    );
    assert_eq!(last.current().version(), Version::new(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_slower_than_the_command_timeout_delays_but_breaks_nothing() {
    let Some(redis) = OwnRedis::start("a_script_slower_than_the_command_timeout") else {
        return;
    };
    let prefix = unique_prefix("slow");
    let a = builder(&redis, &prefix)
        .command_timeout(Duration::from_millis(200))
        .check_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let b = instance(&redis, &prefix).await;
    let slow_a: Channel<u64> = a.channel("slow", 0).await.unwrap();
    let mut good = Vec::new();
    for i in 0..5 {
        let on_a: Channel<u64> = a.channel(&format!("g{i}"), 0).await.unwrap();
        let on_b: Channel<u64> = b.channel(&format!("g{i}"), 0).await.unwrap();
        good.push((on_a, on_b));
    }
    // Busy for ARGV[1] microseconds, then add one.
    let slow = ModifyScript::new(
        r#"
        local t0 = redis.call('TIME')
        local start = t0[1] * 1000000 + t0[2]
        repeat
            local t = redis.call('TIME')
        until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
        return tonumber(value) + 1
        "#,
    );
    let (slow_result, ()) = tokio::join!(slow_a.modify(&slow).arg("400000").invoke(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (i, (_, on_b)) in good.iter().enumerate() {
            on_b.publish(i as u64 + 1).await.unwrap();
        }
    });
    let err = slow_result.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        slow_a.failure().is_none(),
        "a slow script is not a broken channel"
    );
    for (i, (on_a, _)) in good.iter().enumerate() {
        let want = i as u64 + 1;
        until("the other channels get their updates", || {
            **on_a.current().value() == want
        })
        .await;
    }
    until("the slow publish arrives too", || {
        **slow_a.current().value() == 1
    })
    .await;
    until("A is connected", || a.is_connected()).await;
    assert_eq!(slow_a.publish(5).await.unwrap(), Version::new(2));
}

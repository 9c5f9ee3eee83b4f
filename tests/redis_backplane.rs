//! Two backplane instances in one process, on the shared Redis: a change
//! published on one wakes the waiters of the other, at the same version.

mod redis_common;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use longpoll::redis::{Backplane, Channel, ModifyScript};
use longpoll::{Cursor, Resync, Version};
use redis_common::{command, delete_prefix, shared_redis, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);

/// Waits until `ch` holds `version` (each wait is for a change after the
/// current state, so this loop always yields).
async fn reach<T>(ch: &Channel<T>, version: Version) {
    tokio::time::timeout(WAIT, async {
        loop {
            let cur = ch.current();
            if cur.version() >= version {
                return;
            }
            let _ = ch.broadcaster().wait(cur.cursor()).await;
        }
    })
    .await
    .expect("the channel reaches the version");
}

/// One backplane instance on the shared Redis, under the test's prefix.
async fn instance(url: &str, prefix: &str) -> Backplane {
    Backplane::builder(url)
        .prefix(prefix)
        .connect()
        .await
        .unwrap()
}

async fn two_instances(url: &str, prefix: &str) -> (Backplane, Backplane) {
    (instance(url, prefix).await, instance(url, prefix).await)
}

#[tokio::test]
async fn publish_on_a_wakes_a_waiter_on_b_at_the_same_version() {
    let Some(url) = shared_redis("publish_on_a_wakes_a_waiter_on_b_at_the_same_version") else {
        return;
    };
    let prefix = unique_prefix("wake");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a = a.channel("count", 10u32).await.unwrap();
    let on_b = b.channel("count", 10u32).await.unwrap();
    assert_eq!(on_a.current().epoch(), on_b.current().epoch());
    assert_eq!(on_b.current().version(), Version::ZERO);

    let waiter = tokio::spawn({
        let on_b = on_b.clone();
        async move { on_b.broadcaster().wait_timeout(Cursor::NEXT, WAIT).await }
    });
    // Let the waiter register before publishing.
    while on_b.broadcaster().waiter_count() == 0 {
        tokio::task::yield_now().await;
    }
    let version = on_a.publish(9).await.unwrap();

    let changed = waiter.await.unwrap().expect("woken on B");
    assert_eq!(version, Version::new(1));
    assert_eq!(changed.version(), version);
    assert_eq!(**changed.value(), 9);
    assert_eq!(changed.epoch(), on_a.current().epoch());
    assert_eq!(changed.resync(), None);
    // A's own broadcaster was updated before `publish` returned.
    assert_eq!(on_a.current().version(), version);
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_cursor_from_a_is_answered_on_b_with_what_it_missed() {
    let Some(url) = shared_redis("a_cursor_from_a_is_answered_on_b_with_what_it_missed") else {
        return;
    };
    let prefix = unique_prefix("switch");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a = a
        .channel_builder("log")
        .history(8)
        .open(String::new())
        .await
        .unwrap();
    let on_b = b
        .channel_builder("log")
        .history(8)
        .open(String::new())
        .await
        .unwrap();

    on_a.publish("one".into()).await.unwrap();
    let seen_on_a = on_a.current().cursor(); // the client's cursor, from A
    on_a.publish("two".into()).await.unwrap();
    on_a.publish("three".into()).await.unwrap();

    // Once B has received them...
    reach(&on_b, Version::new(3)).await;
    // ... the client polls B with A's cursor, and B answers at once with
    // the two updates it missed, in order.
    let changed = on_b.broadcaster().wait(seen_on_a).await.unwrap();
    let values: Vec<&str> = changed
        .updates()
        .iter()
        .map(|u| u.value().as_str())
        .collect();
    assert_eq!(values, ["two", "three"]);
    assert_eq!(changed.resync(), None);

    // A cursor at the current version waits on B, as it would on A.
    let current = on_b.current().cursor();
    let r = on_b
        .broadcaster()
        .wait_timeout(current, Duration::from_millis(50))
        .await;
    assert!(r.unwrap_err().is_timed_out());
    delete_prefix(&url, &prefix).await;
}

/// Publishes from many tasks on both instances; streams on both see every
/// version exactly once, in order, and the returned versions are 1..=N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_on_two_instances_reach_both_in_order_exactly_once() {
    let Some(url) =
        shared_redis("concurrent_publishes_on_two_instances_reach_both_in_order_exactly_once")
    else {
        return;
    };
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    const TOTAL: u64 = 2 * TASKS * EACH;
    let prefix = unique_prefix("order");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a: Channel<u64> = a.channel_builder("n").history(512).open(0).await.unwrap();
    let on_b: Channel<u64> = b.channel_builder("n").history(512).open(0).await.unwrap();

    let watch = |ch: Channel<u64>| {
        tokio::spawn(async move {
            let mut stream = ch.broadcaster().stream(ch.current().cursor());
            let mut seen = Vec::new();
            while seen.last() != Some(&TOTAL) {
                let changed = tokio::time::timeout(WAIT, stream.next())
                    .await
                    .expect("updates keep coming")
                    .unwrap()
                    .unwrap();
                assert_eq!(changed.resync(), None, "nothing lagged");
                seen.extend(changed.updates().iter().map(|u| u.version().get()));
            }
            seen
        })
    };
    let (watch_a, watch_b) = (watch(on_a.clone()), watch(on_b.clone()));

    let mut publishers = Vec::new();
    for ch in [&on_a, &on_b] {
        for t in 0..TASKS {
            let ch = ch.clone();
            publishers.push(tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..EACH {
                    versions.push(ch.publish(t * 1000 + i).await.unwrap().get());
                }
                versions
            }));
        }
    }
    let mut returned = HashSet::new();
    for p in publishers {
        for v in p.await.unwrap() {
            assert!(returned.insert(v), "version {v} returned twice");
        }
    }
    assert_eq!(returned, (1..=TOTAL).collect::<HashSet<_>>());

    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(watch_a.await.unwrap(), expected);
    assert_eq!(watch_b.await.unwrap(), expected);
    assert_eq!(on_a.current().version(), on_b.current().version());
    assert_eq!(**on_a.current().value(), **on_b.current().value());
    delete_prefix(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_wakes_every_waiter_on_both_instances() {
    let Some(url) = shared_redis("a_publish_wakes_every_waiter_on_both_instances") else {
        return;
    };
    let prefix = unique_prefix("fanout");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a = a.channel("x", 0u32).await.unwrap();
    let on_b = b.channel("x", 0u32).await.unwrap();
    let mut waiters = Vec::new();
    for ch in [&on_a, &on_b] {
        for _ in 0..500 {
            let ch = ch.clone();
            waiters.push(tokio::spawn(async move {
                ch.broadcaster()
                    .wait_timeout(Cursor::at(Version::ZERO), WAIT)
                    .await
                    .map(|c| (c.version(), **c.value()))
            }));
        }
    }
    while on_a.broadcaster().waiter_count() + on_b.broadcaster().waiter_count() < 1000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    on_b.publish(5).await.unwrap();
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), (Version::new(1), 5));
    }
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn an_instance_that_joins_late_starts_at_the_current_version() {
    let Some(url) = shared_redis("an_instance_that_joins_late_starts_at_the_current_version")
    else {
        return;
    };
    let prefix = unique_prefix("late");
    let a = instance(&url, &prefix).await;
    let on_a = a.channel("v", String::from("first")).await.unwrap();
    for s in ["b", "c", "d"] {
        on_a.publish(s.into()).await.unwrap();
    }
    let b = instance(&url, &prefix).await;
    // Its initial value is ignored: the channel exists.
    let on_b = b.channel("v", String::from("ignored")).await.unwrap();
    assert_eq!(on_b.current().version(), Version::new(3));
    assert_eq!(on_b.current().epoch(), on_a.current().epoch());
    assert_eq!(on_b.current().value().as_str(), "d");
    delete_prefix(&url, &prefix).await;
}

const TAKE: &str = r#"
    local left = tonumber(value) - 1
    if left < 0 then return nil, 'sold out' end
    return left, 'taken'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modify_script_never_oversells_across_two_instances() {
    let Some(url) = shared_redis("a_modify_script_never_oversells_across_two_instances") else {
        return;
    };
    let prefix = unique_prefix("stock");
    let (a, b) = two_instances(&url, &prefix).await;
    let script = std::sync::Arc::new(ModifyScript::new(TAKE));
    let on_a = a.channel("stock", 30u32).await.unwrap();
    let on_b = b.channel("stock", 30u32).await.unwrap();

    let mut buyers = Vec::new();
    for ch in [&on_a, &on_b] {
        for _ in 0..40 {
            let (ch, script) = (ch.clone(), script.clone());
            buyers.push(tokio::spawn(async move {
                let done = ch.modify(&script).invoke().await.unwrap();
                let note = String::from_utf8(done.note().to_vec()).unwrap();
                (done.is_published(), note, done.update().version().get())
            }));
        }
    }
    let mut taken_at = Vec::new();
    let mut sold_out = 0;
    for b in buyers {
        match b.await.unwrap() {
            (true, note, v) => {
                assert_eq!(note, "taken");
                taken_at.push(v);
            }
            (false, note, v) => {
                assert_eq!(note, "sold out");
                assert_eq!(v, 30, "refused only once all 30 were taken");
                sold_out += 1;
            }
        }
    }
    taken_at.sort_unstable();
    assert_eq!(taken_at, (1..=30).collect::<Vec<_>>());
    assert_eq!(sold_out, 50);
    for ch in [&on_a, &on_b] {
        reach(ch, Version::new(30)).await;
        assert_eq!(**ch.current().value(), 0);
    }
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_modify_script_touches_its_own_keys_in_the_same_step() {
    let Some(url) = shared_redis("a_modify_script_touches_its_own_keys_in_the_same_step") else {
        return;
    };
    let prefix = unique_prefix("keys");
    let bp = instance(&url, &prefix).await;
    let ch = bp.channel("members", 0u32).await.unwrap();
    let join = ModifyScript::new(
        r#"
        if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return nil, 'already' end
        return tonumber(value) + 1
        "#,
    );
    let set = format!("{prefix}set");
    let first = ch
        .modify(&join)
        .key(&set)
        .arg("ann")
        .invoke()
        .await
        .unwrap();
    assert!(first.is_published());
    assert_eq!(**first.update().value(), 1);
    let again = ch
        .modify(&join)
        .key(&set)
        .arg("ann")
        .invoke()
        .await
        .unwrap();
    assert!(!again.is_published());
    assert_eq!(again.note(), b"already");
    assert_eq!(again.update().version(), first.update().version());
    let members: Vec<String> = command(&url, redis::cmd("SMEMBERS").arg(&set)).await;
    assert_eq!(members, ["ann"]);
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_snippet_that_raises_an_error_publishes_nothing() {
    let Some(url) = shared_redis("a_snippet_that_raises_an_error_publishes_nothing") else {
        return;
    };
    let prefix = unique_prefix("raise");
    let bp = instance(&url, &prefix).await;
    let ch = bp.channel("c", 1u32).await.unwrap();
    let bad = ModifyScript::new("error('no way')");
    let err = ch.modify(&bad).invoke().await.unwrap_err();
    assert!(err.is_server(), "{err:?}");
    assert!(!err.is_unavailable());
    assert_eq!(ch.current().version(), Version::ZERO);
    // A new value that is not a `u32` is published (Redis has no types),
    // but reported as not decoding.
    let wrong = ModifyScript::new("return 'seven'");
    assert!(ch.modify(&wrong).invoke().await.unwrap_err().is_decode());
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn reopening_a_name_shares_the_channel_and_another_type_is_refused() {
    let Some(url) = shared_redis("reopening_a_name_shares_the_channel_and_another_type_is_refused")
    else {
        return;
    };
    let prefix = unique_prefix("reopen");
    let bp = instance(&url, &prefix).await;
    let first = bp.channel("c", 1u32).await.unwrap();
    let second = bp.channel("c", 2u32).await.unwrap();
    assert!(first.broadcaster().same_broadcaster(second.broadcaster()));
    let err = bp.channel("c", String::new()).await.unwrap_err();
    assert!(err.is_config(), "{err:?}");
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_stored_value_of_another_type_fails_open_with_a_decode_error() {
    let Some(url) = shared_redis("a_stored_value_of_another_type_fails_open_with_a_decode_error")
    else {
        return;
    };
    let prefix = unique_prefix("decode");
    let writer = instance(&url, &prefix).await;
    writer
        .channel("c", String::from("not a number"))
        .await
        .unwrap();
    let reader = instance(&url, &prefix).await;
    let err = reader.channel("c", 0u32).await.unwrap_err();
    assert!(err.is_decode(), "{err:?}");
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn a_deleted_channel_starts_again_under_a_new_epoch_on_every_instance() {
    let Some(url) =
        shared_redis("a_deleted_channel_starts_again_under_a_new_epoch_on_every_instance")
    else {
        return;
    };
    let prefix = unique_prefix("deleted");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a = a.channel("c", 100u32).await.unwrap();
    let on_b = b.channel("c", 100u32).await.unwrap();
    on_a.publish(50).await.unwrap();
    reach(&on_b, Version::new(1)).await;
    let old = on_a.current();
    let waiter = tokio::spawn({
        let on_b = on_b.clone();
        let cursor = old.cursor();
        async move { on_b.broadcaster().wait_timeout(cursor, WAIT).await }
    });

    // The data is lost (as after a restart without persistence).
    let _: i64 = command(&url, redis::cmd("DEL").arg(on_a.key())).await;
    let version = on_a.publish(40).await.unwrap();

    let changed = waiter.await.unwrap().expect("B is told");
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_ne!(changed.epoch(), old.epoch());
    assert_eq!(changed.epoch(), on_a.current().epoch());
    assert_eq!(version, Version::new(1));
    assert_eq!(**changed.latest().value(), 40);
    delete_prefix(&url, &prefix).await;
}

#[tokio::test]
async fn nothing_listening_is_an_unavailable_error() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Backplane::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let err = Backplane::connect("http://not-redis/").await.unwrap_err();
    assert!(err.is_config(), "{err:?}");
}

/// Publishes dropped at random points (before sending, in flight, while
/// settling) leave both instances at Redis's version, in step, with no
/// version seen twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_publishes_leave_both_instances_in_step() {
    let Some(url) = shared_redis("cancelled_publishes_leave_both_instances_in_step") else {
        return;
    };
    let prefix = unique_prefix("cancel");
    let (a, b) = two_instances(&url, &prefix).await;
    let on_a: Channel<u64> = a.channel_builder("n").history(256).open(0).await.unwrap();
    let on_b: Channel<u64> = b.channel_builder("n").history(256).open(0).await.unwrap();
    let watch = |ch: Channel<u64>| {
        // The cursor is taken before the task is spawned: a watcher that
        // started late would otherwise begin after the first publishes.
        let mut cursor = ch.current().cursor();
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            loop {
                let Ok(changed) = ch
                    .broadcaster()
                    .wait_timeout(cursor, Duration::from_millis(500))
                    .await
                else {
                    return seen; // quiet: the publishers are done
                };
                seen.extend(changed.updates().iter().map(|u| u.version().get()));
                cursor = changed.cursor();
            }
        })
    };
    let (watch_a, watch_b) = (watch(on_a.clone()), watch(on_b.clone()));

    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let ch = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            // Half get 0 to 300 µs: some never leave, some are cut off
            // waiting for Redis's answer. The other half have time to
            // finish, however busy the machine (and publish 0, with no
            // time at all, cannot).
            let budget = if i < 50 {
                Duration::from_micros(i * 37 % 300)
            } else {
                WAIT
            };
            tokio::time::timeout(budget, ch.publish(i)).await.is_ok()
        }));
    }
    let mut finished = 0;
    for t in tasks {
        finished += usize::from(t.await.unwrap());
    }
    assert!(
        (50..100).contains(&finished),
        "some publishes were cancelled, the rest finished ({finished})"
    );
    let last = on_a.publish(1000).await.unwrap();
    reach(&on_b, last).await;

    let stored: Vec<String> = command(
        &url,
        redis::cmd("HMGET")
            .arg(on_a.key())
            .arg("epoch")
            .arg("version"),
    )
    .await;
    assert_eq!(
        stored[1],
        last.to_string(),
        "the last publish is Redis's version"
    );
    for (ch, watch) in [(&on_a, watch_a), (&on_b, watch_b)] {
        assert_eq!(ch.current().version(), last);
        assert_eq!(ch.current().epoch().to_string(), stored[0]);
        let seen = watch.await.unwrap();
        let expected: Vec<u64> = (1..=last.get()).collect();
        assert_eq!(seen, expected, "every version once, in order");
    }
    delete_prefix(&url, &prefix).await;
}

#[test]
fn backplane_futures_and_handles_are_send_and_sync() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Backplane>();
    send_sync::<Channel<u64>>();
    send_sync::<ModifyScript>();
    send_sync::<longpoll::redis::BackplaneError>();
    // Never polled: only their types matter.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    send(&Backplane::connect("redis://127.0.0.1:1/"));
    fn with_channel(ch: &Channel<u64>, script: &ModifyScript) {
        send(&ch.publish(1));
        send(&ch.modify(script).arg("x").invoke());
    }
    let _ = with_channel;
}

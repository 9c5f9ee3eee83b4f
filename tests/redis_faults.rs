//! Faults on a private `redis-server` (never the shared one): subscriptions
//! killed mid-run, a restart that loses the data, a restore from an older
//! snapshot. Every waiter ends at the latest version, sees nothing twice,
//! and the epoch changes only where data was lost.

mod redis_common;

use std::time::Duration;

use longpoll::redis::{Backplane, Channel};
use longpoll::{Cursor, Epoch, Resync, Version};
use redis_common::{command, unique_prefix, OwnRedis};

const WAIT: Duration = Duration::from_secs(10);

async fn instance(redis: &OwnRedis, prefix: &str) -> Backplane {
    Backplane::builder(redis.url())
        .prefix(prefix)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap()
}

async fn kill_subscriptions(redis: &OwnRedis) -> i64 {
    command(
        &redis.url(),
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await
}

/// Waits until both instances are subscribed again and hold the same
/// state, with an epoch other than `old` if given.
async fn converge<T>(
    a: (&Backplane, &Channel<T>),
    b: (&Backplane, &Channel<T>),
    old: Option<Epoch>,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            let (ea, eb) = (a.1.current(), b.1.current());
            if a.0.is_connected()
                && b.0.is_connected()
                && ea.cursor() == eb.cursor()
                && old.is_none_or(|old| ea.epoch() != old)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both instances converge");
}

/// A client's long-poll loop: every version it is handed, in order.
async fn follow(ch: Channel<u64>, until: Version) -> Vec<u64> {
    let mut cursor = ch.current().cursor();
    let mut seen = Vec::new();
    while cursor.version() < Some(until) {
        let changed = ch
            .broadcaster()
            .wait_timeout(cursor, WAIT)
            .await
            .expect("changes keep coming");
        assert_eq!(changed.resync(), None, "nothing lost, nothing restarted");
        seen.extend(changed.updates().iter().map(|u| u.version().get()));
        cursor = changed.cursor();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_mid_run_lose_nothing_and_keep_the_epoch() {
    let Some(redis) =
        OwnRedis::start("killed_subscriptions_mid_run_lose_nothing_and_keep_the_epoch")
    else {
        return;
    };
    const EACH: u64 = 150;
    const TOTAL: u64 = 2 * EACH;
    let prefix = unique_prefix("kill");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let on_a: Channel<u64> = a.channel_builder("n").history(1024).open(0).await.unwrap();
    let on_b: Channel<u64> = b.channel_builder("n").history(1024).open(0).await.unwrap();
    let epoch = on_a.current().epoch();

    let mut clients = Vec::new();
    for ch in [&on_a, &on_b] {
        for _ in 0..20 {
            clients.push(tokio::spawn(follow(ch.clone(), Version::new(TOTAL))));
        }
    }
    let publisher = |ch: Channel<u64>| {
        tokio::spawn(async move {
            for i in 0..EACH {
                ch.publish(i).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let (pa, pb) = (publisher(on_a.clone()), publisher(on_b.clone()));
    let mut killed = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        killed += kill_subscriptions(&redis).await;
    }
    pa.await.unwrap();
    pb.await.unwrap();

    let expected: Vec<u64> = (1..=TOTAL).collect();
    for c in clients {
        assert_eq!(c.await.unwrap(), expected);
    }
    assert!(killed >= 2, "CLIENT KILL found subscriptions ({killed})");
    converge((&a, &on_a), (&b, &on_b), None).await;
    assert!(a.reconnects() >= 1 && b.reconnects() >= 1);
    assert_eq!(on_a.current().epoch(), epoch, "no data was lost");
    assert_eq!(on_b.current().version(), Version::new(TOTAL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_moves_every_instance_to_one_new_epoch() {
    let Some(mut redis) =
        OwnRedis::start("a_restart_without_persistence_moves_every_instance_to_one_new_epoch")
    else {
        return;
    };
    let prefix = unique_prefix("restart");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let on_a: Channel<u64> = a.channel("stock", 10).await.unwrap();
    let on_b: Channel<u64> = b.channel("stock", 10).await.unwrap();
    for n in [9, 8, 7] {
        on_a.publish(n).await.unwrap();
    }
    converge((&a, &on_a), (&b, &on_b), None).await;
    let before = on_b.current();
    assert_eq!(before.version(), Version::new(3));

    let held: Vec<_> = (0..10)
        .map(|_| {
            let on_b = on_b.clone();
            let cursor = before.cursor();
            tokio::spawn(async move { on_b.broadcaster().wait_timeout(cursor, WAIT).await })
        })
        .collect();

    redis.kill();
    // Publishes fail with a clear error; nothing panics.
    let err = on_a.publish(6).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(on_b.publish(6).await.unwrap_err().is_unavailable());
    // Held polls keep waiting, and time out as usual.
    let r = on_a
        .broadcaster()
        .wait_timeout(before.cursor(), Duration::from_millis(100))
        .await;
    assert!(r.unwrap_err().is_timed_out());
    assert!(held.iter().all(|h| !h.is_finished()));
    assert_eq!(on_a.current().cursor(), before.cursor());

    redis.restart(); // empty
    converge((&a, &on_a), (&b, &on_b), Some(before.epoch())).await;

    let after = on_a.current();
    assert_eq!(after.version(), Version::ZERO);
    assert_eq!(**after.value(), 10, "started again from the initial value");
    for h in held {
        let changed = h.await.unwrap().expect("told of the new epoch");
        assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
        assert_eq!(changed.epoch(), after.epoch());
    }

    // The new sequence works across instances.
    let waiter = tokio::spawn({
        let on_a = on_a.clone();
        let cursor = after.cursor();
        async move { on_a.broadcaster().wait_timeout(cursor, WAIT).await }
    });
    let v = on_b.publish(4).await.unwrap();
    let changed = waiter.await.unwrap().unwrap();
    assert_eq!((changed.version(), changed.epoch()), (v, after.epoch()));
    assert_eq!(v, Version::new(1));
    assert_eq!(changed.resync(), None);
}

#[tokio::test]
async fn a_store_restored_behind_the_instances_moves_them_to_a_new_epoch() {
    let Some(redis) =
        OwnRedis::start("a_store_restored_behind_the_instances_moves_them_to_a_new_epoch")
    else {
        return;
    };
    let prefix = unique_prefix("behind");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let on_a: Channel<u64> = a.channel("c", 0).await.unwrap();
    let on_b: Channel<u64> = b.channel("c", 0).await.unwrap();
    for n in 1..=5 {
        on_a.publish(n).await.unwrap();
    }
    converge((&a, &on_a), (&b, &on_b), None).await;
    let seen = on_b.current();
    let waiter = tokio::spawn({
        let on_b = on_b.clone();
        let cursor = seen.cursor();
        async move { on_b.broadcaster().wait_timeout(cursor, WAIT).await }
    });

    // As if restored from a snapshot taken at version 2: versions 3.. would
    // be handed out again, for other values.
    let _: i64 = command(
        &redis.url(),
        redis::cmd("HSET")
            .arg(on_a.key())
            .arg("version")
            .arg(2)
            .arg("value")
            .arg(2),
    )
    .await;
    kill_subscriptions(&redis).await;
    converge((&a, &on_a), (&b, &on_b), Some(seen.epoch())).await;

    let changed = waiter.await.unwrap().unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!((changed.version(), **changed.value()), (Version::new(2), 2));
    // A client that saw version 5 is not left waiting for a version 5 that
    // would carry another value.
    let old_cursor = Cursor::new(Some(Version::new(5)), Some(seen.epoch()));
    let answer = on_a.broadcaster().wait(old_cursor).await.unwrap();
    assert_eq!(answer.resync(), Some(Resync::OtherEpoch));
}

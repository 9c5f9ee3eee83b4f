//! Keyed channels on the backplane (`KeyedChannels`), on a private
//! `redis-server`: a key is subscribed on an instance while it is live
//! there and unsubscribed once the sweep parks it; its first use reads its
//! state and history from Redis, and a read never creates anything there;
//! one subscription connection per instance, subscribed in batches,
//! whatever the number of keys; `max_keys` refuses before Redis is asked;
//! a key that expired in Redis is a new epoch, explicitly.

mod redis_common;

use std::time::Duration;

use longpoll::redis::{Backplane, KeyedChannels, KeyedError};
use longpoll::{Cursor, Resync, Version};
use redis_common::{command, unique_prefix, OwnRedis};

const WAIT: Duration = Duration::from_secs(10);

async fn instance(redis: &OwnRedis, prefix: &str) -> Backplane {
    Backplane::builder(redis.url())
        .prefix(prefix)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .check_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap()
}

fn rooms(bp: &Backplane, idle: Duration) -> KeyedChannels<String> {
    bp.keyed("rooms")
        .history(8)
        .idle_timeout(idle)
        .max_keys(2000)
        .build()
        .unwrap()
}

async fn cmd<T: redis::FromRedisValue>(redis: &OwnRedis, c: &mut redis::Cmd) -> T {
    command(&redis.url(), c).await
}

/// Subscribers of each of `channels`, as Redis counts them.
async fn subscribers(redis: &OwnRedis, channels: &[String]) -> Vec<i64> {
    let reply: Vec<redis::Value> =
        cmd(redis, redis::cmd("PUBSUB").arg("NUMSUB").arg(channels)).await;
    reply
        .chunks(2)
        .map(|pair| match &pair[1] {
            redis::Value::Int(n) => *n,
            other => panic!("NUMSUB: {other:?}"),
        })
        .collect()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test]
async fn a_publish_on_a_wakes_a_waiter_on_b_and_a_read_creates_nothing() {
    let Some(redis) = OwnRedis::start("a_publish_on_a_wakes_a_waiter_on_b") else {
        return;
    };
    let prefix = unique_prefix("keyed");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let (on_a, on_b) = (rooms(&a, WAIT), rooms(&b, WAIT));

    // A read of a room nobody wrote to: its absent state, the same on both
    // instances, and nothing in Redis.
    let lobby_b = on_b.broadcaster("lobby").await.unwrap();
    let lobby_a = on_a.broadcaster("lobby").await.unwrap();
    assert_eq!(lobby_a.current().cursor(), lobby_b.current().cursor());
    assert_eq!(lobby_b.version(), Version::ZERO);
    let key = on_a.redis_key("lobby");
    let exists: i64 = cmd(&redis, redis::cmd("EXISTS").arg(&key)).await;
    assert_eq!(exists, 0, "a read never creates state in Redis");
    assert_eq!(cmd::<i64>(&redis, &mut redis::cmd("DBSIZE")).await, 0);

    // The first publish creates the room under a new epoch: a waiter at
    // the absent state is told so, with the message.
    let absent = lobby_b.current().cursor();
    let wait = lobby_b.wait_timeout(absent, WAIT);
    let v1 = on_a.publish("lobby", "hello".into()).await.unwrap().version;
    let changed = wait.await.unwrap();
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(
        (changed.version(), &**changed.value()),
        (v1, &"hello".to_string())
    );

    // From then on, in sequence.
    let wait = lobby_b.wait_timeout(changed.cursor(), WAIT);
    let v2 = on_a.publish("lobby", "again".into()).await.unwrap().version;
    let changed = wait.await.unwrap();
    assert_eq!(changed.resync(), None);
    assert_eq!(
        (changed.version(), &**changed.value()),
        (v2, &"again".to_string())
    );
    assert_eq!(lobby_a.current().cursor(), changed.cursor());
}

#[tokio::test]
async fn a_key_is_subscribed_while_live_and_unsubscribed_once_parked() {
    let Some(redis) = OwnRedis::start("a_key_is_subscribed_while_live") else {
        return;
    };
    let prefix = unique_prefix("live");
    let a = instance(&redis, &prefix).await;
    let on_a = rooms(&a, Duration::from_millis(200));
    let names = vec![on_a.redis_key("x"), on_a.redis_key("y")];
    assert_eq!(subscribers(&redis, &names).await, [0, 0]);
    let x = on_a.broadcaster("x").await.unwrap();
    assert_eq!(
        subscribers(&redis, &names).await,
        [1, 0],
        "subscribed on first use"
    );
    let y = on_a.broadcaster("y").await.unwrap();
    assert_eq!(subscribers(&redis, &names).await, [1, 1]);
    drop(x);
    until("x is unsubscribed once parked", async || {
        subscribers(&redis, &names).await == [0, 1]
    })
    .await;
    // y is in use: a wait on it keeps it live.
    let wait = on_a.hub().wait("y", y.current().cursor()).unwrap();
    drop(y);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscribers(&redis, &names).await, [0, 1]);
    // Back on x: subscribed again, and it reads what it missed.
    let b = instance(&redis, &prefix).await;
    let on_b = rooms(&b, WAIT);
    let v = on_b
        .publish("x", "while parked".into())
        .await
        .unwrap()
        .version;
    let x = on_a.broadcaster("x").await.unwrap();
    assert_eq!(x.version(), v, "the first use reads the key from Redis");
    assert_eq!(subscribers(&redis, &names).await, [2, 1]);
    let v = on_b.publish("y", "wakes".into()).await.unwrap().version;
    assert_eq!(wait.await.unwrap().version(), v);
    drop(x);
    until("every key is unsubscribed once idle", async || {
        on_a.live_keys() == 0 && subscribers(&redis, &names).await == [1, 1]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_take_one_connection_and_a_few_batched_subscribes() {
    let Some(redis) = OwnRedis::start("a_thousand_keys_take_one_connection") else {
        return;
    };
    let prefix = unique_prefix("many");
    let a = instance(&redis, &prefix).await;
    let on_a = rooms(&a, WAIT);
    let _: () = cmd(&redis, redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let mut tasks = Vec::new();
    for key in &keys {
        let (on_a, key) = (on_a.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            on_a.broadcaster(&key).await.unwrap()
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    // One subscription connection, subscribed to every key.
    let clients: String = cmd(&redis, redis::cmd("CLIENT").arg("LIST")).await;
    let subscribed: Vec<u64> = clients
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("sub=")))
        .map(|n| n.parse().unwrap())
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(subscribed, [1000]);
    let stats: String = cmd(&redis, redis::cmd("INFO").arg("commandstats")).await;
    let calls = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    assert!(
        calls("subscribe") < 50,
        "{} SUBSCRIBE for 1000 keys: batched",
        calls("subscribe")
    );
    assert_eq!(cmd::<i64>(&redis, &mut redis::cmd("DBSIZE")).await, 0);
    assert_eq!(on_a.live_keys(), 1000);
    drop(held);
}

#[tokio::test]
async fn past_max_keys_is_a_typed_error_and_never_a_redis_key() {
    let Some(redis) = OwnRedis::start("past_max_keys_is_a_typed_error") else {
        return;
    };
    let prefix = unique_prefix("max");
    let a = instance(&redis, &prefix).await;
    let on_a: KeyedChannels<String> = a.keyed("rooms").max_keys(2).build().unwrap();
    let _x = on_a.broadcaster("x").await.unwrap();
    let _y = on_a.broadcaster("y").await.unwrap();
    match on_a.publish("z", "no room".into()).await {
        Err(KeyedError::TooManyKeys(e)) => assert_eq!(e.limit, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        on_a.broadcaster("z").await,
        Err(KeyedError::TooManyKeys(_))
    ));
    for bad in ["", "a{b", "}", &"x".repeat(300)] {
        assert!(
            matches!(
                on_a.publish(bad, "x".into()).await,
                Err(KeyedError::InvalidKey(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        cmd::<i64>(&redis, &mut redis::cmd("DBSIZE")).await,
        0,
        "nothing reached Redis"
    );
    // Existing keys keep working.
    on_a.publish("x", "fine".into()).await.unwrap();
}

#[tokio::test]
async fn a_key_that_expired_in_redis_is_a_new_epoch_for_old_cursors() {
    let Some(redis) = OwnRedis::start("a_key_that_expired_in_redis") else {
        return;
    };
    let prefix = unique_prefix("ttl");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let build = |bp: &Backplane| -> KeyedChannels<String> {
        bp.keyed("rooms")
            .history(4)
            .ttl(Some(Duration::from_millis(300)))
            .build()
            .unwrap()
    };
    let (on_a, on_b) = (build(&a), build(&b));
    on_a.publish("r", "one".into()).await.unwrap();
    let r = on_b.broadcaster("r").await.unwrap();
    let old = r.current();
    assert_eq!(&**old.value(), "one");
    let key = on_a.redis_key("r");
    let pttl: i64 = cmd(&redis, redis::cmd("PTTL").arg(&key)).await;
    assert!(
        pttl > 0 && pttl <= 300,
        "a publish sets the time to live: {pttl}"
    );
    // Publishes refresh it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    on_a.publish("r", "two".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cmd::<i64>(&redis, redis::cmd("EXISTS").arg(&key)).await, 1);
    let held = r.current();
    assert_eq!(&**held.value(), "two");

    // Left alone, it expires; the periodic check finds the key gone and
    // the instance moves to the absent state: a client holding the old
    // cursor is told, it does not wait on a dead sequence.
    let changed = r
        .wait_timeout(held.cursor(), WAIT)
        .await
        .expect("answered once the key expired");
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(changed.version(), Version::ZERO);
    assert_eq!(cmd::<i64>(&redis, redis::cmd("EXISTS").arg(&key)).await, 0);
    // The next publish is a new epoch again, never a reused version.
    let wait = r.wait_timeout(changed.cursor(), WAIT);
    let v = on_a.publish("r", "three".into()).await.unwrap().version;
    let next = wait.await.unwrap();
    assert_eq!(next.resync(), Some(Resync::OtherEpoch));
    assert_eq!((next.version(), &**next.value()), (v, &"three".to_string()));
    assert_ne!(next.epoch(), old.epoch());
    let _ = Cursor::NEXT;
}

#[tokio::test]
async fn wait_many_loads_every_key_and_answers_the_one_that_changed() {
    let Some(redis) = OwnRedis::start("wait_many_loads_every_key") else {
        return;
    };
    let prefix = unique_prefix("many");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let (on_a, on_b) = (rooms(&a, WAIT), rooms(&b, WAIT));
    on_a.publish("p", "p1".into()).await.unwrap();
    let held = on_b.load(["p", "q", "r"]).await.unwrap();
    let pairs: Vec<(String, Cursor)> = ["p", "q", "r"]
        .iter()
        .zip(&held)
        .map(|(k, b)| (k.to_string(), b.current().cursor()))
        .collect();
    drop(held);
    let wait = on_b.wait_many(pairs).await.unwrap();
    on_a.publish("p", "p2".into()).await.unwrap();
    let ready = tokio::time::timeout(WAIT, wait).await.unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].0, "p");
    assert_eq!(&**ready[0].1.as_ref().unwrap().value(), "p2");
}

#[tokio::test]
async fn dropping_the_hub_and_its_backplane_closes_every_connection() {
    let Some(redis) = OwnRedis::start("dropping_the_hub_and_its_backplane") else {
        return;
    };
    let clients = || async {
        let list: String = cmd(&redis, redis::cmd("CLIENT").arg("LIST")).await;
        // Every client but the one asking.
        list.lines().count() - 1
    };
    let prefix = unique_prefix("drop");
    let a = instance(&redis, &prefix).await;
    let on_a = rooms(&a, Duration::from_millis(100));
    on_a.publish("x", "1".into()).await.unwrap();
    drop(on_a.broadcaster("y").await.unwrap());
    assert!(
        clients().await >= 2,
        "a command and a subscription connection"
    );
    drop(on_a);
    drop(a);
    // Nothing of the hub (its loader, its sweeper) keeps the backplane.
    until("every connection of the backplane is closed", async || {
        clients().await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_going_live_and_idle_under_load_lose_no_wake_up_and_end_unsubscribed() {
    let Some(redis) = OwnRedis::start("keys_going_live_and_idle_under_load") else {
        return;
    };
    const KEYS: usize = 6;
    let prefix = unique_prefix("churn");
    let (a, b) = (
        instance(&redis, &prefix).await,
        instance(&redis, &prefix).await,
    );
    let on_a = rooms(&a, WAIT);
    // On B, keys are swept (parked, removed) every few milliseconds.
    let on_b: KeyedChannels<String> = b
        .keyed("rooms")
        .history(8)
        .idle_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A publisher per key, every 10 ms.
    let mut publishers = Vec::new();
    for key in &keys {
        let (on_a, key, stop) = (on_a.clone(), key.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                on_a.publish(&key, n.to_string()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // Waiters that take a key live, wait for its next update, and let it
    // go idle again, over and over: each wait must be woken by the next
    // publish, whatever the sweeps and subscriptions did meanwhile.
    let mut waiters = Vec::new();
    for i in 0..4 * KEYS {
        let (on_b, key) = (on_b.clone(), keys[i % KEYS].clone());
        waiters.push(tokio::spawn(async move {
            let mut woken = 0;
            for round in 0..40u64 {
                let b = on_b.broadcaster(&key).await.unwrap();
                let at = b.current().cursor();
                let changed = b
                    .wait_timeout(at, Duration::from_secs(2))
                    .await
                    .unwrap_or_else(|e| panic!("{key}: a wait after {at:?} was never woken: {e}"));
                assert!(changed.version() > at.version().unwrap() || changed.resync().is_some());
                woken += 1;
                drop(b);
                tokio::time::sleep(Duration::from_millis((round * 7 + i as u64) % 25)).await;
            }
            woken
        }));
    }
    let mut woken = 0;
    for w in waiters {
        woken += w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    assert_eq!(woken, 4 * KEYS * 40);
    // Once idle, B is subscribed to nothing: only A's subscriptions remain.
    let names: Vec<String> = keys.iter().map(|k| on_a.redis_key(k)).collect();
    until("B unsubscribed every key", async || {
        on_b.live_keys() == 0 && subscribers(&redis, &names).await == vec![1; KEYS]
    })
    .await;
}

#[tokio::test]
async fn a_channel_with_a_time_to_live_starts_again_under_a_new_epoch_once_expired() {
    let Some(redis) = OwnRedis::start("a_channel_with_a_time_to_live") else {
        return;
    };
    let prefix = unique_prefix("chttl");
    let a = instance(&redis, &prefix).await;
    let ch: longpoll::redis::Channel<u64> = a
        .channel_builder("c")
        .history(4)
        .ttl(Duration::from_millis(300))
        .open(0)
        .await
        .unwrap();
    let pttl: i64 = cmd(&redis, redis::cmd("PTTL").arg(ch.key())).await;
    assert!(
        pttl > 0 && pttl <= 300,
        "created with its time to live: {pttl}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ch.publish(1).await.unwrap();
    let pttl: i64 = cmd(&redis, redis::cmd("PTTL").arg(ch.key())).await;
    assert!(pttl > 200, "a publish sets it again: {pttl}");
    let held = ch.current();
    // Expired: the periodic check recreates it under a new epoch, from the
    // initial value, and tells the waiter.
    let changed = ch
        .broadcaster()
        .wait_timeout(held.cursor(), WAIT)
        .await
        .expect("told once it expired");
    assert_eq!(changed.resync(), Some(Resync::OtherEpoch));
    assert_eq!(**changed.value(), 0);
    assert_ne!(changed.epoch(), held.epoch());
}

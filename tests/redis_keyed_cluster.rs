//! Keyed channels on a real Redis Cluster (three masters, three replicas,
//! started by the test): two instances exchange updates on a thousand keys
//! spread over every shard, each instance with one subscription connection
//! per master; a master is killed while both hold waiters on keys of every
//! shard (every waiter's sequence stays gap-free or explicitly marked, and
//! every instance ends on what Redis holds); a key's slot moves while both
//! hold waiters on it.

mod redis_cluster_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use longpoll::redis::{Backplane, KeyedChannels};
use longpoll::{Broadcaster, Cursor, Version, WaitError};
use parking_lot::Mutex;
use redis_cluster_common::sequence::Log;
use redis_cluster_common::{query, slot_of, Cluster, Shard};

const WAIT: Duration = Duration::from_secs(30);

async fn instance(cluster: &Cluster, every: Duration) -> Backplane {
    Backplane::cluster(cluster.urls())
        .prefix("kc:")
        .ping_interval(every)
        .check_interval(every.max(Duration::from_secs(1)))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("the cluster answers")
}

fn hub(bp: &Backplane) -> KeyedChannels<u64> {
    bp.keyed("t")
        .history(16)
        .idle_timeout(WAIT)
        .build()
        .unwrap()
}

/// Waits until `b` holds at least `version`.
async fn reach(b: &Broadcaster<u64>, version: Version, what: &str) {
    tokio::time::timeout(WAIT, async {
        while b.version() < version {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never reached {version}"));
}

/// Subscription connections on the master at `addr` that hold sharded
/// subscriptions, and how many each holds.
async fn sharded_subscribers(addr: &str) -> Vec<u64> {
    let list: String = query(addr, redis::cmd("CLIENT").arg("LIST")).await.unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("ssub=")))
        .map(|n| n.parse().unwrap())
        .filter(|&n| n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_exchange_updates_on_a_thousand_keys_over_every_shard() {
    let Some(cluster) = Cluster::start("two_instances_exchange_updates_on_a_thousand_keys").await
    else {
        return;
    };
    let (a, b) = (
        instance(&cluster, Duration::from_secs(1)).await,
        instance(&cluster, Duration::from_secs(1)).await,
    );
    let (on_a, on_b) = (hub(&a), hub(&b));
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let shards = cluster.shards().await;
    let mut per_shard: HashMap<String, u64> = HashMap::new();
    for key in &keys {
        let slot = slot_of(on_a.redis_key(key).as_bytes());
        let owner = shards.iter().find(|s| s.owns(slot)).unwrap();
        *per_shard.entry(owner.master.clone()).or_default() += 1;
    }
    assert_eq!(per_shard.len(), 3, "keys on every shard: {per_shard:?}");

    let at_a = on_a.load(keys.iter().map(String::as_str)).await.unwrap();
    let at_b = on_b.load(keys.iter().map(String::as_str)).await.unwrap();
    // Every key subscribed on its own master, on one connection per master
    // and instance.
    for shard in &shards {
        let mut subs = sharded_subscribers(&shard.master).await;
        subs.sort_unstable();
        let n = per_shard[&shard.master];
        assert_eq!(
            subs,
            [n, n],
            "{}: two instances, one connection each",
            shard.master
        );
    }
    // A to B, then B to A.
    for (from, to, at) in [(&on_a, "B", &at_b), (&on_b, "A", &at_a)] {
        let mut versions = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            versions.push(from.publish(key, i as u64).await.unwrap().version);
        }
        for ((key, b), v) in keys.iter().zip(at).zip(versions) {
            reach(b, v, &format!("{key} on {to}")).await;
        }
    }
    for (key, b) in keys.iter().zip(&at_a) {
        let v = b.current();
        assert_eq!(v.version(), Version::new(2), "{key}");
    }
}

/// A long-poll client of one key on one instance, until `stop`.
async fn waiter(hub: KeyedChannels<u64>, key: String, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let b = hub.broadcaster(&key).await.unwrap();
    let mut cursor: Cursor = b.current().cursor();
    while !stop.load(Ordering::Relaxed) {
        match b.wait_timeout(cursor, Duration::from_millis(300)).await {
            Ok(changed) => {
                log.lock().answer(&key, cursor, &changed);
                cursor = changed.cursor();
            }
            Err(WaitError::TimedOut) => {}
            Err(e) => panic!("{key}: {e}"),
        }
    }
}

/// A key name whose slot the master of `shard` owns.
fn key_on(hub: &KeyedChannels<u64>, shard: &Shard, n: usize) -> String {
    (0u32..)
        .map(|i| format!("k{n}-{i}"))
        .find(|k| shard.owns(slot_of(hub.redis_key(k).as_bytes())))
        .expect("a master owns slots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_keyed_waiters_leaves_every_sequence_gap_free_or_marked() {
    let Some(mut cluster) = Cluster::start("a_master_killed_under_keyed_waiters").await else {
        return;
    };
    let every = Duration::from_millis(250);
    let (a, b) = (
        instance(&cluster, every).await,
        instance(&cluster, every).await,
    );
    let (on_a, on_b) = (hub(&a), hub(&b));
    let shards = cluster.shards().await;
    let keys: Vec<String> = shards
        .iter()
        .enumerate()
        .flat_map(|(n, s)| (0..5).map(move |i| (n * 10 + i, s.clone())))
        .map(|(n, s)| key_on(&on_a, &s, n))
        .collect();
    let log = Arc::new(Mutex::new(Log::default()));
    let (stop_waiters, stop_publishers) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut waiters = Vec::new();
    for key in &keys {
        for h in [&on_a, &on_b] {
            waiters.push(tokio::spawn(waiter(
                h.clone(),
                key.clone(),
                log.clone(),
                stop_waiters.clone(),
            )));
        }
    }
    let mut publishers = Vec::new();
    for (h, base) in [(&on_a, 1_000_000u64), (&on_b, 2_000_000)] {
        let (h, keys, stop) = (h.clone(), keys.clone(), stop_publishers.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for key in &keys {
                    n += 1;
                    let id = (base + n).to_string();
                    for _ in 0..100 {
                        match h.publish_once(key, &id, base + n).await {
                            Ok(_) => break,
                            Err(longpoll::redis::KeyedError::Backplane(e))
                                if e.is_unavailable() =>
                            {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => panic!("{key}: {e}"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill_master(&shards[2].master).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_publishers.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    // Every instance ends on what Redis holds.
    let held_a = on_a.load(keys.iter().map(String::as_str)).await.unwrap();
    let held_b = on_b.load(keys.iter().map(String::as_str)).await.unwrap();
    tokio::time::timeout(WAIT, async {
        'again: loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (key, (x, y)) in keys.iter().zip(held_a.iter().zip(&held_b)) {
                let master = cluster
                    .shard_of_key(on_a.redis_key(key).as_bytes())
                    .await
                    .master;
                let Ok(held): Result<Vec<Option<String>>, _> = query(
                    &master,
                    redis::cmd("HMGET")
                        .arg(on_a.redis_key(key))
                        .arg("epoch")
                        .arg("version"),
                )
                .await
                else {
                    continue 'again;
                };
                for b in [x, y] {
                    let cur = b.current();
                    if held[0].as_deref() != Some(&*cur.epoch().to_string())
                        || held[1].as_deref() != Some(&*cur.version().to_string())
                    {
                        continue 'again;
                    }
                }
            }
            return;
        }
    })
    .await
    .expect("every instance ends on what Redis holds");
    stop_waiters.store(true, Ordering::Relaxed);
    for w in waiters {
        w.await.unwrap();
    }
    let log = log.lock();
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    assert!(
        log.observed >= published,
        "{} seen, {published} published",
        log.observed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_slot_moved_under_live_waiters_keeps_them_woken() {
    let Some(cluster) = Cluster::start("a_keys_slot_moved_under_live_waiters").await else {
        return;
    };
    // Only the old master's `SUNSUBSCRIBE` tells the instances.
    let hour = Duration::from_secs(3600);
    let (a, b) = (
        instance(&cluster, hour).await,
        instance(&cluster, hour).await,
    );
    let (on_a, on_b) = (hub(&a), hub(&b));
    let shards = cluster.shards().await;
    let key = key_on(&on_a, &shards[1], 0);
    let slot = slot_of(on_a.redis_key(&key).as_bytes());
    on_a.publish(&key, 1).await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let waiters = [
        tokio::spawn(waiter(on_a.clone(), key.clone(), log.clone(), stop.clone())),
        tokio::spawn(waiter(on_b.clone(), key.clone(), log.clone(), stop.clone())),
    ];
    let (x, y) = (
        on_a.broadcaster(&key).await.unwrap(),
        on_b.broadcaster(&key).await.unwrap(),
    );
    cluster.move_slot(slot, &shards[0].master).await;
    for n in 2..12u64 {
        let from = if n % 2 == 0 { &on_a } else { &on_b };
        let v = from.publish(&key, n).await.unwrap().version;
        reach(&x, v, "A").await;
        reach(&y, v, "B").await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in waiters {
        w.await.unwrap();
    }
    let log = log.lock();
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    assert_eq!(log.marked, 0, "a slot move loses nothing: {:#?}", log.marks);
}

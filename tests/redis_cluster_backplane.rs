//! The backplane on a real Redis Cluster (three masters, three replicas,
//! started by the test): channels on every shard, updates that cross
//! instances by sharded Pub/Sub, a master killed under load (its replica
//! takes over), and a slot moved while waiters hold it. Every waiter's
//! sequence must stay gap-free or explicitly marked, and every instance
//! must end on what Redis holds.

mod redis_cluster_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use longpoll::redis::{Backplane, Channel};
use longpoll::{Cursor, Version, WaitError};
use parking_lot::Mutex;
use redis_cluster_common::sequence::Log;
use redis_cluster_common::{query, slot_of, Cluster, Shard};

const WAIT: Duration = Duration::from_secs(30);

async fn instance(cluster: &Cluster, prefix: &str) -> Backplane {
    instance_with(cluster, prefix, Duration::from_millis(250)).await
}

/// An instance that pings and checks every `every`: long enough, and only
/// the server's own pushes tell it of a change.
async fn instance_with(cluster: &Cluster, prefix: &str, every: Duration) -> Backplane {
    Backplane::cluster(cluster.urls())
        .prefix(prefix)
        .ping_interval(every)
        .check_interval(every.max(Duration::from_secs(1)))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("the cluster answers")
}

/// A channel name whose slot the master of `shard` owns.
fn name_on(shard: &Shard, n: usize) -> String {
    (0u32..)
        .map(|i| format!("c{n}-{i}"))
        .find(|name| shard.owns(slot_of(name.as_bytes())))
        .expect("a master owns slots")
}

/// Waits until `ch` holds at least `version`.
async fn reach<T>(ch: &Channel<T>, version: Version) {
    tokio::time::timeout(WAIT, async {
        while ch.current().version() < version {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never reached {version}", ch.key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_every_shard_cross_instances_by_sharded_pubsub() {
    let Some(cluster) = Cluster::start("channels_on_every_shard_cross_instances").await else {
        return;
    };
    let (a, b) = (
        instance(&cluster, "p:").await,
        instance(&cluster, "p:").await,
    );
    assert!(a.is_cluster());
    for (n, shard) in cluster.shards().await.iter().enumerate() {
        let name = name_on(shard, n);
        let on_a: Channel<u64> = a.channel_builder(&name).history(4).open(0).await.unwrap();
        let on_b: Channel<u64> = b.channel_builder(&name).history(4).open(0).await.unwrap();
        let wait = on_b
            .broadcaster()
            .wait_timeout(on_b.current().cursor(), WAIT);
        let v = on_a.publish(7).await.unwrap();
        let changed = wait.await.expect("B is woken");
        assert_eq!((changed.version(), **changed.value()), (v, 7));
        // The channel's hash lives on the master that owns its tag.
        let exists: i64 = query(&shard.master, redis::cmd("EXISTS").arg(on_a.key()))
            .await
            .unwrap();
        assert_eq!(exists, 1, "{} is on {}", on_a.key(), shard.master);
        assert_eq!(on_a.hash_tag(), format!("{{{name}}}"));
        // A modify snippet with a key of its own, in the channel's slot.
        let script = longpoll::redis::ModifyScript::new(
            "redis.call('INCR', KEYS[1]) return tonumber(value) + 1",
        );
        let side = format!("side:{}", on_b.hash_tag());
        let done = on_b.modify(&script).key(&side).invoke().await.unwrap();
        assert_eq!(**done.update().value(), 8);
        reach(&on_a, done.update().version()).await;
    }
    assert_eq!(a.stats().channel_failures, 0);
}

/// A long-poll client of one channel on one instance, until `stop`.
async fn waiter(ch: Channel<u64>, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let name = ch.key().to_owned();
    let mut cursor: Cursor = ch.current().cursor();
    while !stop.load(Ordering::Relaxed) {
        match ch
            .broadcaster()
            .wait_timeout(cursor, Duration::from_millis(300))
            .await
        {
            Ok(changed) => {
                log.lock().answer(&name, cursor, &changed);
                cursor = changed.cursor();
            }
            Err(WaitError::TimedOut) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

/// Publishes rising values on `channels` until `stop`, each once even if
/// retried (`publish_once`); counts what failed.
async fn publisher(
    channels: Vec<Channel<u64>>,
    base: u64,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        for ch in &channels {
            n += 1;
            let value = base + n;
            let id = value.to_string();
            let mut tries = 0;
            loop {
                match ch.publish_once(&id, value).await {
                    Ok(_) => break,
                    Err(e) if e.is_unavailable() && tries < 100 => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{}: {e}", ch.key()),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

/// Waits until every channel of both instances holds what Redis holds.
async fn converge(cluster: &Cluster, pairs: &[(Channel<u64>, Channel<u64>)]) {
    tokio::time::timeout(WAIT, async {
        'again: loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (on_a, on_b) in pairs {
                let master = cluster.shard_of_key(on_a.key().as_bytes()).await.master;
                let held: Vec<Option<String>> = match query(
                    &master,
                    redis::cmd("HMGET")
                        .arg(on_a.key())
                        .arg("epoch")
                        .arg("version"),
                )
                .await
                {
                    Ok(h) => h,
                    Err(_) => continue 'again,
                };
                for ch in [on_a, on_b] {
                    let cur = ch.current();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_leaves_every_sequence_gap_free_or_marked() {
    let Some(mut cluster) = Cluster::start("a_master_killed_mid_run").await else {
        return;
    };
    let (a, b) = (
        instance(&cluster, "k:").await,
        instance(&cluster, "k:").await,
    );
    let shards = cluster.shards().await;
    let mut pairs = Vec::new();
    for (n, shard) in shards.iter().enumerate() {
        for i in 0..3 {
            let name = name_on(shard, n * 10 + i);
            let on_a: Channel<u64> = a.channel_builder(&name).history(16).open(0).await.unwrap();
            let on_b: Channel<u64> = b.channel_builder(&name).history(16).open(0).await.unwrap();
            pairs.push((on_a, on_b));
        }
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop_waiters = Arc::new(AtomicBool::new(false));
    let stop_publishers = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut waiters = Vec::new();
    for (on_a, on_b) in &pairs {
        for ch in [on_a, on_b] {
            waiters.push(tokio::spawn(waiter(
                ch.clone(),
                log.clone(),
                stop_waiters.clone(),
            )));
        }
    }
    let publishers = vec![
        tokio::spawn(publisher(
            pairs.iter().map(|p| p.0.clone()).collect(),
            1_000_000,
            stop_publishers.clone(),
            failed.clone(),
        )),
        tokio::spawn(publisher(
            pairs.iter().map(|p| p.1.clone()).collect(),
            2_000_000,
            stop_publishers.clone(),
            failed.clone(),
        )),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failover = cluster.kill_master(&shards[1].master).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_publishers.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    converge(&cluster, &pairs).await;
    stop_waiters.store(true, Ordering::Relaxed);
    for w in waiters {
        w.await.unwrap();
    }
    let log = log.lock();
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    assert!(
        log.observed > published,
        "waiters saw {} updates of {published} published",
        log.observed
    );
    assert!(
        a.stats().reconnects + b.stats().reconnects >= 2,
        "both instances lost the killed master: {:?} {:?}",
        a.stats(),
        b.stats()
    );
    eprintln!(
        "failover took {:?}; {published} published, {} failed tries, {} seen, {} marked",
        failover.took,
        failed.load(Ordering::Relaxed),
        log.observed,
        log.marked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_live_waiters_keeps_them_woken() {
    let Some(cluster) = Cluster::start("a_slot_moved_under_live_waiters").await else {
        return;
    };
    // Neither the periodic slot map read nor the position check comes
    // before the test ends: the old master's `SUNSUBSCRIBE` alone tells
    // each instance that the slot moved.
    let hour = Duration::from_secs(3600);
    let (a, b) = (
        instance_with(&cluster, "m:", hour).await,
        instance_with(&cluster, "m:", hour).await,
    );
    let shards = cluster.shards().await;
    let name = name_on(&shards[0], 0);
    let slot = slot_of(name.as_bytes());
    let on_a: Channel<u64> = a.channel_builder(&name).history(8).open(0).await.unwrap();
    let on_b: Channel<u64> = b.channel_builder(&name).history(8).open(0).await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let waiters = [
        tokio::spawn(waiter(on_a.clone(), log.clone(), stop.clone())),
        tokio::spawn(waiter(on_b.clone(), log.clone(), stop.clone())),
    ];
    on_a.publish(1).await.unwrap();
    reach(&on_b, Version::new(1)).await;

    // Keys move while both instances hold waiters on them, and publishes go on.
    let migration = cluster.begin_migration(slot, &shards[2].master).await;
    on_b.publish(2).await.unwrap();
    assert!(migration.move_keys(100).await > 0);
    on_a.publish(3).await.unwrap();
    migration.finish().await;
    // After the move: the old master unsubscribed both instances; each must
    // subscribe on the new one, or these would never reach the other.
    for (n, from) in (4..14).zip([&on_a, &on_b].into_iter().cycle()) {
        let v = from.publish(n).await.unwrap();
        reach(&on_a, v).await;
        reach(&on_b, v).await;
    }
    let exists: i64 = query(&shards[2].master, redis::cmd("EXISTS").arg(on_a.key()))
        .await
        .unwrap();
    assert_eq!(exists, 1, "the hash moved with its slot");
    stop.store(true, Ordering::Relaxed);
    for w in waiters {
        w.await.unwrap();
    }
    let log = log.lock();
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    assert_eq!(
        log.marked, 0,
        "a slot move loses nothing: {} seen, marked: {:#?}",
        log.observed, log.marks
    );
    assert_eq!(on_a.current().version(), Version::new(13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_connection_stuck_by_a_failover_under_load_is_replaced() {
    let Some(mut cluster) = Cluster::start("a_command_connection_stuck_by_a_failover").await else {
        return;
    };
    let a = instance(&cluster, "w:").await;
    let shards = cluster.shards().await;
    let mut channels = Vec::new();
    for (n, shard) in shards.iter().enumerate() {
        for i in 0..4 {
            let ch: Channel<u64> = a.channel(&name_on(shard, n * 10 + i), 0).await.unwrap();
            channels.push(ch);
        }
    }
    // About 300 publishes in flight when the master dies.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..300 {
        let ch = channels[i % channels.len()].clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let _ = ch.publish(n).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill_master(&shards[0].master).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    // Once the replica took over, every shard takes publishes again.
    for ch in &channels {
        tokio::time::timeout(WAIT, async {
            while ch.publish(0).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} never takes a publish again", ch.key()));
    }
}

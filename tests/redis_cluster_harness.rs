//! The test Redis Cluster itself (`tests/redis_cluster_common`), checked with
//! the `redis` crate's cluster client: hash-tagged keys land on each of the
//! three masters, a killed master is replaced by its replica and a client
//! follows, a slot moves with its keys under a live client, and a dropped
//! cluster (also on a panic) leaves no process or directory behind.

mod redis_cluster_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use redis_cluster_common::{query, slot_of, tag_for_slot, Cluster, Shard};

async fn connect(cluster: &Cluster) -> ClusterConnection {
    ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("valid seeds")
        .get_async_connection()
        .await
        .expect("the cluster answers")
}

/// Reads `key` on the replica at `addr` (`READONLY`, then `GET`).
async fn get_on_replica(addr: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (value,): (Option<String>,) = redis::pipe()
        .cmd("READONLY")
        .ignore()
        .cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    value
}

async fn count_keys(addr: &str, slot: u16) -> i64 {
    query(addr, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot))
        .await
        .unwrap()
}

fn is_moved(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::Moved)
}

#[test]
fn slots_follow_the_cluster_specification() {
    // The check value of CRC16/XMODEM, and the hash-tag examples of the
    // Redis Cluster specification.
    assert_eq!(slot_of(b"123456789"), 0x31C3);
    assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
    assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
    assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    for slot in [0, 1, 5460, 5461, 16383] {
        assert_eq!(slot_of(tag_for_slot(slot).as_bytes()), slot);
    }
}

#[tokio::test]
async fn keys_hash_tagged_to_each_shard_live_on_its_master() {
    let Some(cluster) = Cluster::start("keys_hash_tagged_to_each_shard_live_on_its_master").await
    else {
        return;
    };
    let shards = cluster.shards().await;
    assert_eq!(shards.len(), 3, "three masters: {shards:?}");
    assert!(shards.iter().all(|s| s.replicas.len() == 1), "{shards:?}");

    // The harness computes slots as the servers do.
    for key in [
        "{s0}:state",
        "plain",
        "a{b}c",
        "{}x",
        "{user1000}.following",
    ] {
        let slot: u16 = query(
            &shards[0].master,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
        .unwrap();
        assert_eq!(slot_of(key.as_bytes()), slot, "slot of {key:?}");
    }

    // One script call per shard, with two keys of one hash tag: the state
    // hash and the history list of a channel.
    let script = Script::new(
        r"
        redis.call('HSET', KEYS[1], 'value', ARGV[1])
        redis.call('RPUSH', KEYS[2], ARGV[1])
        return redis.call('HGET', KEYS[1], 'value')
        ",
    );
    let mut conn = connect(&cluster).await;
    let mut tags = Vec::new();
    for shard in &shards {
        let tag = shard.tag();
        let (state, history) = (format!("{tag}state"), format!("{tag}history"));
        let echoed: String = script
            .key(&state)
            .key(&history)
            .arg(&shard.master)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(echoed, shard.master);

        // On its master, and on no other.
        for other in &shards {
            let exists: redis::RedisResult<i64> = query(
                &other.master,
                redis::cmd("EXISTS").arg(&state).arg(&history),
            )
            .await;
            if other == shard {
                assert_eq!(exists.unwrap(), 2, "both keys on {}", shard.master);
            } else {
                let e = exists.expect_err("another master redirects");
                assert!(is_moved(&e), "{e}");
            }
        }
        tags.push(tag);
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 3, "one tag per shard");

    // Keys of two shards in one script: refused, nothing runs.
    let e = script
        .key(format!("{}state", tags[0]))
        .key(format!("{}history", tags[1]))
        .arg("x")
        .invoke_async::<String>(&mut conn)
        .await
        .expect_err("two slots in one script");
    assert_eq!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::CrossSlot),
        "{e}"
    );
}

#[tokio::test]
async fn a_killed_master_is_replaced_by_its_replica_and_the_client_follows() {
    let started = Instant::now();
    let Some(mut cluster) =
        Cluster::start("a_killed_master_is_replaced_by_its_replica_and_the_client_follows").await
    else {
        return;
    };
    let up = started.elapsed();
    let shard: Shard = cluster.shards().await.remove(0);
    let replica = shard.replicas[0].clone();
    let key = format!("{}k", shard.tag());

    let mut conn = connect(&cluster).await;
    redis::cmd("SET")
        .arg(&key)
        .arg("before")
        .exec_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_on_replica(&replica, &key).await.as_deref() != Some("before") {
        assert!(Instant::now() < deadline, "the replica never got the write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let failover = cluster.kill_master(&shard.master).await;
    assert_eq!(failover.killed, shard.master);
    assert_eq!(failover.shard.master, replica, "the replica took over");
    assert_eq!(failover.shard.slots, shard.slots);
    assert!(failover.shard.replicas.is_empty());
    assert_eq!(cluster.shard_of_key(key.as_bytes()).await.master, replica);

    // The same client reconnects to the new master on its own.
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("before"));
    redis::cmd("SET")
        .arg(&key)
        .arg("after")
        .exec_async(&mut conn)
        .await
        .unwrap();
    let direct: Option<String> = query(&replica, redis::cmd("GET").arg(&key)).await.unwrap();
    assert_eq!(direct.as_deref(), Some("after"));

    // The killed node comes back as a replica of the one that replaced it.
    let rejoined = cluster.restart(&shard.master).await;
    let now = cluster.shard_of_key(key.as_bytes()).await;
    assert_eq!(now.master, replica);
    assert_eq!(now.replicas, vec![shard.master.clone()]);
    eprintln!(
        "cluster up in {up:?}, failover in {:?}, rejoined in {rejoined:?} (node timeout {:?})",
        failover.took,
        cluster.node_timeout()
    );
}

#[tokio::test]
async fn a_slot_moved_with_its_keys_is_served_by_its_new_master_to_a_live_client() {
    let Some(cluster) =
        Cluster::start("a_slot_moved_with_its_keys_is_served_by_its_new_master_to_a_live_client")
            .await
    else {
        return;
    };
    let shards = cluster.shards().await;
    let (from, to) = (&shards[0], &shards[1]);
    let slot = from.first_slot();
    let tag = tag_for_slot(slot);
    const KEYS: usize = 250;

    let mut conn = connect(&cluster).await;
    for i in 0..KEYS {
        redis::cmd("SET")
            .arg(format!("{tag}:{i}"))
            .arg(i)
            .exec_async(&mut conn)
            .await
            .unwrap();
    }
    let counter = format!("{tag}:counter");
    redis::cmd("SET")
        .arg(&counter)
        .arg(0)
        .exec_async(&mut conn)
        .await
        .unwrap();

    // A client that keeps writing to the slot while it moves.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = tokio::spawn({
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        let (mut conn, counter) = (connect(&cluster).await, counter.clone());
        async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match redis::cmd("INCR").arg(&counter).exec_async(&mut conn).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        }
    });

    let migration = cluster.begin_migration(slot, &to.master).await;
    assert_eq!(migration.from().master, from.master);
    let moved = migration.move_keys(100).await;
    assert_eq!(moved, 100);
    // Half-way: moved keys are answered by the new master (ASK), the others
    // by the old one.
    assert_eq!(count_keys(&to.master, slot).await, 100);
    for i in [0, KEYS / 2, KEYS - 1] {
        let value: i64 = redis::cmd("GET")
            .arg(format!("{tag}:{i}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, i as i64);
    }
    migration.finish().await;
    // Let the writer go on a little against the new owner.
    let before = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < before + 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let errors = writer.await.unwrap();

    assert_eq!(cluster.shard_of_slot(slot).await.master, to.master);
    assert_eq!(count_keys(&to.master, slot).await, KEYS as i64 + 1);
    assert_eq!(count_keys(&from.master, slot).await, 0);
    assert!(errors.is_empty(), "the writer failed: {errors:?}");
    let total: i64 = query(&to.master, redis::cmd("GET").arg(&counter))
        .await
        .unwrap();
    assert_eq!(
        total as u64,
        done.load(Ordering::Relaxed),
        "every INCR counted once"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    for i in 0..KEYS {
        let value: i64 = redis::cmd("GET")
            .arg(format!("{tag}:{i}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, i as i64);
    }
}

#[test]
fn a_cluster_dropped_by_a_panicking_test_leaves_no_process_or_directory() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let Some(cluster) = Cluster::start(
                "a_cluster_dropped_by_a_panicking_test_leaves_no_process_or_directory",
            )
            .await
            else {
                return;
            };
            tx.send((cluster.addrs(), cluster.root().to_owned()))
                .unwrap();
            panic!("a test failing with its cluster up");
        });
    })
    .join();
    let Ok((addrs, root)) = rx.recv() else {
        // No cluster: skipped, or failed to start (then fail here too).
        if let Err(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        return;
    };
    assert!(panicked.is_err(), "the thread panicked");
    assert_eq!(addrs.len(), 6);
    for addr in &addrs {
        let refused = std::net::TcpStream::connect_timeout(
            &addr.parse().unwrap(),
            Duration::from_millis(500),
        )
        .is_err();
        assert!(refused, "{addr} still accepts connections");
    }
    assert!(!root.exists(), "{} is left behind", root.display());
}

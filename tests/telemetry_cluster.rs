//! The backplane's link gauge and reconnect counter on a Redis Cluster,
//! whose subscriptions are one connection per master: up once every
//! channel is placed, down while a killed master's channels have no place,
//! back up after its replica took over, and given back when the backplane
//! is dropped. Publishes (of a channel and of a keyed hub's key) timed
//! until their sharded Pub/Sub message comes back, one sample each.
#![cfg(all(feature = "redis", feature = "metrics"))]

mod redis_cluster_common;
mod telemetry_common;

use std::time::Duration;

use longpoll::redis::{Backplane, Channel, KeyedChannels};
use redis_cluster_common::Cluster;
use telemetry_common::TestRecorder;

const WAIT: Duration = Duration::from_secs(20);
const DELIVERY: &str = "longpoll_backplane_delivery_duration_seconds";

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cluster_backplane_reports_its_link_through_a_failover_and_its_end() {
    let Some(mut cluster) = Cluster::start("telemetry_cluster").await else {
        return;
    };
    // On this thread (a current-thread runtime): every task of the
    // backplane records here.
    let rec = TestRecorder::new();
    let _metrics = metrics::set_default_local_recorder(&rec);
    let gauge = |rec: &TestRecorder| rec.gauge("longpoll_backplane_connected");

    let backplane = Backplane::cluster(cluster.urls())
        .prefix("tc:")
        .ping_interval(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("the cluster answers");
    let ch: Channel<u64> = backplane.channel("c", 0).await.unwrap();
    until("up", || gauge(&rec) == Some(1.0)).await;

    // Each publish timed until its message comes back over sharded
    // Pub/Sub, each waited for before the next.
    let delivery = |rec: &TestRecorder| rec.histogram(DELIVERY).len();
    for v in 1..=3u64 {
        ch.publish(v).await.unwrap();
        until("the publish is timed", || delivery(&rec) == v as usize).await;
    }
    let rooms: KeyedChannels<u64> = backplane.keyed("rooms").build().unwrap();
    let lobby = rooms.broadcaster("lobby").await.unwrap();
    rooms.publish("lobby", 1).await.unwrap();
    until("the keyed publish is timed", || delivery(&rec) == 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(delivery(&rec), 4);

    // Kill the master that holds the channel.
    let owner = cluster.shard_of_key(ch.key().as_bytes()).await.master;
    cluster.kill_master(&owner).await;
    until("down, then up again", || {
        rec.counter("longpoll_backplane_reconnects_total", &[]) >= 1 && gauge(&rec) == Some(1.0)
    })
    .await;
    assert!(ch.publish(1).await.is_ok() || ch.publish(1).await.is_ok());

    drop((lobby, rooms, ch));
    drop(backplane);
    until("given back", || gauge(&rec) == Some(0.0)).await;
}

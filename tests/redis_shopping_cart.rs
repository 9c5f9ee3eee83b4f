//! The shopping-cart example, two processes on one Redis (`--redis`): a
//! change on one wakes the long polls of the other, a client may switch
//! instances keeping its cursor, and concurrent buyers on both never
//! oversell.

mod common;
mod redis_common;

use std::process::Child;
use std::time::Duration;

use redis_common::{command, delete_prefix, shared_redis, unique_prefix, OwnRedis};
use serde_json::Value;

/// A running example process, killed on drop.
struct Instance {
    child: Child,
    addr: String,
}

impl Instance {
    fn start(redis_url: &str, prefix: &str, inventory: u32) -> Instance {
        let inventory = inventory.to_string();
        let (child, addr) = common::spawn_binary(&[
            "--redis",
            redis_url,
            "--redis-prefix",
            prefix,
            "--inventory",
            &inventory,
        ]);
        Instance { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(
    client: &reqwest::Client,
    at: &Instance,
    session: &str,
    action: &str,
) -> (u16, Value) {
    let resp = client
        .post(at.url("/cart"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("session={session}&action={action}"))
        .send()
        .await
        .expect("POST /cart");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = client.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `/stats` until the instance holds `version` (bounded).
async fn reach(client: &reqwest::Client, at: &Instance, version: u64) -> Value {
    for _ in 0..500 {
        let (_, stats) = get(client, at.url("/stats")).await;
        if stats["version"].as_u64() >= Some(version) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never reached version {version}", at.addr);
}

/// Polls `/stats` until the instance holds `n` long polls (bounded).
async fn holding(client: &reqwest::Client, at: &Instance, n: u64) {
    for _ in 0..500 {
        let (_, stats) = get(client, at.url("/stats")).await;
        if stats["waiters"].as_u64() == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never held {n} long polls", at.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_on_a_wakes_a_long_poll_held_by_b() {
    let Some(redis) = shared_redis("an_add_on_a_wakes_a_long_poll_held_by_b") else {
        return;
    };
    let prefix = unique_prefix("cart-wake");
    let a = Instance::start(&redis, &prefix, 5);
    let b = Instance::start(&redis, &prefix, 5);
    let client = common::client();

    let poll = tokio::spawn({
        let client = client.clone();
        let url = b.url("/status?since=0&timeout=10");
        async move { get(&client, url).await }
    });
    holding(&client, &b, 1).await;
    let (status, added) = post(&client, &a, "ann", "add").await;
    assert_eq!(status, 200);

    let (status, woken) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(woken["inventorycount"], 4);
    assert_eq!(woken["version"], 1);
    assert_eq!(woken["version"], added["version"]);
    assert_eq!(woken["epoch"], added["epoch"]);
    delete_prefix(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_switches_instance_keeps_its_since_and_epoch() {
    let Some(redis) = shared_redis("a_client_that_switches_instance_keeps_its_since_and_epoch")
    else {
        return;
    };
    let prefix = unique_prefix("cart-switch");
    let a = Instance::start(&redis, &prefix, 5);
    let b = Instance::start(&redis, &prefix, 5);
    let client = common::client();

    // The client's last answer came from A.
    let (_, added) = post(&client, &a, "ann", "add").await;
    let (since, epoch) = (
        added["version"].as_u64().unwrap(),
        added["epoch"].as_str().unwrap(),
    );
    reach(&client, &b, since).await;

    // On B, that cursor is current: nothing new, so the poll is held (204).
    let (status, _) = get(
        &client,
        b.url(&format!("/status?since={since}&epoch={epoch}&timeout=0.2")),
    )
    .await;
    assert_eq!(status, 204);
    // The same as an ETag.
    let resp = client
        .get(b.url("/status?timeout=0.2"))
        .header("if-none-match", format!("\"{epoch}-{since}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    // Held on B, woken by a change on A.
    let poll = tokio::spawn({
        let client = client.clone();
        let url = b.url(&format!("/status?since={since}&epoch={epoch}&timeout=10"));
        async move { get(&client, url).await }
    });
    holding(&client, &b, 1).await;
    let (status, _) = post(&client, &a, "bob", "add").await;
    assert_eq!(status, 200);
    let (status, next) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(next["version"], since + 1);
    assert_eq!(next["inventorycount"], 3);
    assert_eq!(next["epoch"], epoch);

    // A cursor from another sequence is answered at once, on either.
    for at in [&a, &b] {
        let (status, now) = get(
            &client,
            at.url(&format!("/status?since={since}&epoch=1234&timeout=10")),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(now["epoch"], epoch);
    }
    // The cart is shared too: bob's unit is in his cart on B.
    let (status, again) = post(&client, &b, "bob", "add").await;
    assert_eq!(
        (status, &again["in_cart"], &again["version"]),
        (200, &Value::Bool(true), &next["version"])
    );
    delete_prefix(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_on_each_of_two_instances_never_oversell() {
    let Some(redis) = shared_redis("fifty_clients_on_each_of_two_instances_never_oversell") else {
        return;
    };
    const INVENTORY: u64 = 10;
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 4;
    let prefix = unique_prefix("cart-oversell");
    let instances = std::sync::Arc::new([
        Instance::start(&redis, &prefix, INVENTORY as u32),
        Instance::start(&redis, &prefix, INVENTORY as u32),
    ]);
    let client = common::client();

    // Every client adds and removes its unit a few times, on its instance.
    let mut tasks = Vec::new();
    for i in 0..2 * CLIENTS {
        let (client, instances) = (client.clone(), instances.clone());
        tasks.push(tokio::spawn(async move {
            let at = &instances[i % 2];
            let session = format!("s{i}");
            let (mut added, mut removed, mut refused) = (0u32, 0u32, 0u32);
            for _ in 0..ROUNDS {
                let (status, body) = post(&client, at, &session, "add").await;
                let count = body["inventorycount"].as_u64().unwrap();
                assert!(count <= INVENTORY);
                match status {
                    200 => {
                        assert_eq!(body["in_cart"], true);
                        added += 1;
                        let (status, body) = post(&client, at, &session, "remove").await;
                        assert_eq!((status, &body["in_cart"]), (200, &Value::Bool(false)));
                        assert!(body["inventorycount"].as_u64().unwrap() >= 1);
                        removed += 1;
                    }
                    409 => {
                        assert_eq!(count, 0, "refused only when sold out");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (added, removed, refused)
        }));
    }
    // Meanwhile, half the clients hold a unit for good.
    let mut holders = Vec::new();
    for i in 0..2 * CLIENTS {
        let (client, instances) = (client.clone(), instances.clone());
        holders.push(tokio::spawn(async move {
            let (status, _) = post(&client, &instances[i % 2], &format!("h{i}"), "add").await;
            status
        }));
    }
    let (mut added, mut removed) = (0, 0);
    for t in tasks {
        let (a, r, _) = t.await.unwrap();
        added += a;
        removed += r;
    }
    let mut held = 0;
    for h in holders {
        match h.await.unwrap() {
            200 => held += 1,
            409 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(held <= INVENTORY, "{held} units held of {INVENTORY}");
    assert_eq!(added, removed);

    // Both instances agree on the count, and it matches the carts in Redis.
    let version = u64::from(added + removed) + held;
    let key = format!("{prefix}cart:sessions");
    let in_carts: u64 = command(&redis, redis::cmd("SCARD").arg(&key)).await;
    assert_eq!(in_carts, held);
    for at in instances.iter() {
        let stats = reach(&client, at, version).await;
        assert_eq!(stats["version"], version, "one version per change");
        let (status, now) = get(&client, at.url("/status?since=0&timeout=0")).await;
        assert_eq!(status, 200);
        assert_eq!(now["inventorycount"], INVENTORY - held);
    }
    delete_prefix(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_cart_changes_get_503_and_held_polls_204() {
    let Some(mut redis) =
        OwnRedis::start("while_redis_is_down_cart_changes_get_503_and_held_polls_204")
    else {
        return;
    };
    let prefix = unique_prefix("cart-down");
    let a = Instance::start(&redis.url(), &prefix, 3);
    let client = common::client();
    let (_, added) = post(&client, &a, "ann", "add").await;
    let (since, epoch) = (
        added["version"].as_u64().unwrap(),
        added["epoch"].as_str().unwrap().to_owned(),
    );

    redis.kill();
    let resp = client
        .post(a.url("/cart"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("session=bob&action=add")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, _) = get(
        &client,
        a.url(&format!("/status?since={since}&epoch={epoch}&timeout=0.2")),
    )
    .await;
    assert_eq!(status, 204, "a held poll times out as usual");

    // Redis comes back empty: the shop starts again from its inventory
    // under a new epoch, and a held poll is told at once.
    let poll = tokio::spawn({
        let client = client.clone();
        let url = a.url(&format!("/status?since={since}&epoch={epoch}&timeout=10"));
        async move { get(&client, url).await }
    });
    holding(&client, &a, 1).await;
    redis.restart();
    let (status, now) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_ne!(now["epoch"], epoch);
    assert_eq!(now["inventorycount"], 3);
    let (status, _) = post(&client, &a, "bob", "add").await;
    assert_eq!(status, 200);
}

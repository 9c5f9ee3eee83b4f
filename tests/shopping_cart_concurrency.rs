//! The shopping cart under concurrency, over real sockets: many clients
//! adding and removing at once, long polls dropped by their clients, and the
//! waiter limit.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{client, json, post_cart, stats, Server};

const CLIENTS: usize = 50;
const OPS_PER_CLIENT: usize = 20;
const INVENTORY: i64 = 10;

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn until_waiters(client: &reqwest::Client, server: &Server, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = stats(client, server).await;
        if s["waiters"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "waiters never reached {n}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_adding_and_removing_keep_the_count_in_bounds_and_the_versions_gap_free() {
    let server = Server::start(&["--inventory", &INVENTORY.to_string()]).await;
    let client = client();
    let epoch = stats(&client, &server).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // A waiter that chains from version 0 with `since` and `epoch`, as the
    // page does, until it is told the final version.
    let (final_tx, mut final_rx) = tokio::sync::watch::channel(None::<u64>);
    let chain = tokio::spawn({
        let client = client.clone();
        let base = server.url("");
        let epoch = epoch.clone();
        async move {
            let (mut since, mut seen) = (0u64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if final_rx.borrow_and_update().is_some_and(|f| f == since) {
                    return (since, seen);
                }
                let url = format!("{base}/status?since={since}&epoch={epoch}&timeout=0.5");
                let resp = client.get(url).send().await.unwrap();
                match resp.status().as_u16() {
                    200 => {
                        let body: serde_json::Value = resp.json().await.unwrap();
                        let version = body["version"].as_u64().unwrap();
                        assert!(
                            version > since,
                            "versions only go up: {since} then {version}"
                        );
                        since = version;
                        seen.push((version, body["inventorycount"].as_i64().unwrap()));
                    }
                    204 => {}
                    other => panic!("the chaining waiter got {other}"),
                }
            }
            panic!("the chaining waiter never reached the final version");
        }
    });

    // 50 clients, each its own session, adding and removing at random.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = client.clone();
            let base = server.url("");
            tokio::spawn(async move {
                let session = format!("client-{i}");
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
                let mut in_cart = false;
                let mut changes = Vec::new(); // (version, delta, count after)
                for _ in 0..OPS_PER_CLIENT {
                    let action = if rng.next().is_multiple_of(2) {
                        "add"
                    } else {
                        "remove"
                    };
                    let resp = client
                        .post(format!("{base}/cart"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("session={session}&action={action}"))
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.unwrap();
                    let count = body["inventorycount"].as_i64().unwrap();
                    let version = body["version"].as_u64().unwrap();
                    assert!(
                        (0..=INVENTORY).contains(&count),
                        "count {count} out of bounds"
                    );
                    match (status, action, in_cart) {
                        (200, "add", false) => changes.push((version, -1, count)),
                        (200, "remove", true) => changes.push((version, 1, count)),
                        (200, _, _) => {} // a no-op
                        (409, "add", false) => assert_eq!(count, 0, "sold out only at 0"),
                        other => panic!("unexpected answer {other:?}: {body}"),
                    }
                    in_cart = body["in_cart"].as_bool().unwrap();
                    // Only this client touches its session: the cart
                    // holds its unit exactly after a successful add.
                    assert_eq!(in_cart, status == 200 && action == "add");
                }
                changes
            })
        })
        .collect();

    let mut by_version = BTreeMap::new();
    for c in clients {
        for (version, delta, count) in c.await.unwrap() {
            assert!(
                by_version.insert(version, (delta, count)).is_none(),
                "two changes answered with version {version}"
            );
        }
    }
    let final_version = stats(&client, &server).await["version"].as_u64().unwrap();
    assert!(final_version > 0);

    // Gap-free: the changes carry exactly the versions 1..=final, and
    // replaying them in version order gives every count that was answered.
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (1..=final_version).collect::<Vec<_>>()
    );
    let mut count = INVENTORY;
    for (version, (delta, answered)) in &by_version {
        count += delta;
        assert!((0..=INVENTORY).contains(&count));
        assert_eq!(count, *answered, "the count answered at version {version}");
    }

    final_tx.send(Some(final_version)).unwrap();
    let (last, seen) = chain.await.unwrap();
    assert_eq!(
        last, final_version,
        "the chaining waiter ends at the final version"
    );
    for (version, shown) in seen {
        assert_eq!(
            shown, by_version[&version].1,
            "the poll showed the count of version {version}"
        );
    }
    let current: serde_json::Value = json(
        client
            .get(server.url("/status?timeout=0"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(current["inventorycount"], count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_dropped_long_polls_leave_no_waiters_within_two_seconds() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let polls: Vec<_> = (0..500)
        .map(|_| {
            let req = client.get(server.url("/status?since=0&timeout=60"));
            tokio::spawn(async move { req.send().await })
        })
        .collect();
    until_waiters(&client, &server, 500, Duration::from_secs(10)).await;

    // The clients give up: their requests are dropped and the connections
    // closed.
    for poll in &polls {
        poll.abort();
    }
    for poll in polls {
        assert!(poll.await.unwrap_err().is_cancelled());
    }
    let dropped = Instant::now();
    until_waiters(&client, &server, 0, Duration::from_secs(2)).await;
    eprintln!("500 dropped polls unregistered in {:?}", dropped.elapsed());

    // Nothing was published, and the server still serves polls.
    assert_eq!(stats(&client, &server).await["version"], 0);
    let resp = client
        .get(server.url("/status?since=0&timeout=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_past_max_waiters_get_503_with_retry_after_until_one_leaves() {
    let server = Server::start(&["--max-waiters", "3"]).await;
    let client = client();
    let held: Vec<_> = (0..3)
        .map(|_| {
            let req = client.get(server.url("/status?since=0&timeout=30"));
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    until_waiters(&client, &server, 3, Duration::from_secs(5)).await;

    let resp = client
        .get(server.url("/status?since=0&timeout=30"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(json(resp, 503).await["error"].is_string());
    // A client that is behind is answered at once: it needs no slot.
    let resp = client
        .get(server.url("/status?since=7&timeout=30"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A change answers the three; the slots are free again.
    json(post_cart(&client, &server, "a", "add").await, 200).await;
    for poll in held {
        assert_eq!(poll.await.unwrap().status(), 200);
    }
    let resp = client
        .get(server.url("/status?since=1&timeout=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

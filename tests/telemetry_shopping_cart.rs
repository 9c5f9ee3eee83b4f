//! The shopping cart's `GET /metrics`, over a real socket: Prometheus text
//! in which a held poll moves the waiters gauge and a change to the cart
//! shows as a publish with its fan-out.
#![cfg(all(feature = "http", feature = "metrics"))]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client, post_cart, stats, Server};

/// Every sample of a Prometheus text answer, by its name and labels as
/// written (`name` or `name{le="0.1"}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("`name value`");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape(client: &reqwest::Client, server: &Server) -> HashMap<String, f64> {
    let resp = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    samples(&resp.text().await.unwrap())
}

/// Scrapes until `f` holds for the samples.
async fn until(
    client: &reqwest::Client,
    server: &Server,
    what: &str,
    f: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(client, server).await;
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never: {what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_show_a_held_poll_and_the_fan_out_of_a_change() {
    let server = Server::start(&[]).await;
    let client = client();
    let before = scrape(&client, &server).await;
    assert_eq!(before["longpoll_waiters"], 0.0);
    assert_eq!(before["shopping_cart_held_polls"], 0.0);
    assert_eq!(before["shopping_cart_stock_units"], 10.0);
    let publishes = before
        .get("longpoll_publishes_total")
        .copied()
        .unwrap_or(0.0);

    let s = stats(&client, &server).await;
    let (version, epoch) = (s["version"].as_u64().unwrap(), s["epoch"].as_str().unwrap());
    let held: Vec<_> = (0..3)
        .map(|_| {
            let req = client.get(server.url(&format!("/status?since={version}&epoch={epoch}")));
            tokio::spawn(async move { req.send().await.unwrap().status() })
        })
        .collect();
    let during = until(&client, &server, "three polls held", |s| {
        s.get("longpoll_waiters") == Some(&3.0)
    })
    .await;
    assert_eq!(during["shopping_cart_held_polls"], 3.0);

    let resp = post_cart(&client, &server, "metrics-session", "add").await;
    assert_eq!(resp.status(), 200);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    let after = until(&client, &server, "the fan-out recorded", |s| {
        s.get("longpoll_fanout_waiters_count") == Some(&1.0)
    })
    .await;
    assert_eq!(after["longpoll_waiters"], 0.0);
    assert_eq!(after["longpoll_publishes_total"], publishes + 1.0);
    assert_eq!(after["longpoll_fanout_waiters_sum"], 3.0);
    assert_eq!(after["longpoll_fanout_waiters_bucket{le=\"10\"}"], 1.0);
    assert_eq!(after["longpoll_fanout_duration_seconds_count"], 1.0);
    let sum = after["longpoll_fanout_duration_seconds_sum"];
    assert!(sum > 0.0 && sum < 1.0, "{sum}");
    assert_eq!(after["shopping_cart_stock_units"], 9.0);
    // No label names the session, the product or a key.
    assert!(after.keys().all(|k| !k.contains("session")), "{after:#?}");

    let resp = client.post(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    server.shutdown().await.unwrap();
}

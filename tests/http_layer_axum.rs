//! The HTTP layer in axum, over a real socket: `examples/axum_inventory.rs`
//! answers the long poll exactly as the hyper demo does.
#![cfg(feature = "axum")]

use std::time::{Duration, Instant};

use longpoll::Broadcaster;

#[path = "../examples/axum_inventory.rs"]
#[allow(dead_code)]
mod axum_inventory;

/// Serves the example's router on 127.0.0.1:0; returns its base URL.
async fn start(stock: &Broadcaster<u32>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum_inventory::app(stock.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn until_waiters(stock: &Broadcaster<u32>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while stock.waiter_count() != n {
        assert!(
            Instant::now() < deadline,
            "waiters stayed at {}",
            stock.waiter_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn axum_long_poll_is_answered_by_a_take() {
    let stock = Broadcaster::new(10u32);
    let base = start(&stock).await;
    let client = client();
    let poll = tokio::spawn(
        client
            .get(format!("{base}/status?since=0&timeout=10"))
            .send(),
    );
    until_waiters(&stock, 1).await;

    let take = client.post(format!("{base}/take")).send().await.unwrap();
    assert_eq!(take.status(), 200);
    assert_eq!(take.headers()["content-type"], "application/json");
    let take: serde_json::Value = take.json().await.unwrap();
    assert_eq!(take, serde_json::json!({"inventorycount": 9, "version": 1}));

    let resp = poll.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["etag"],
        format!("\"{}-1\"", stock.epoch()).as_str()
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["inventorycount"], 9);
    assert_eq!(body["epoch"], stock.epoch().to_string());
}

#[tokio::test]
async fn axum_answers_204_400_409_and_503_like_the_hyper_demo() {
    let stock = Broadcaster::new(0u32);
    let base = start(&stock).await;
    let client = client();

    let resp = client
        .get(format!("{base}/status?since=0&timeout=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = client
        .get(format!("{base}/status?since=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("since"));

    let post = |path: &str| client.post(format!("{base}{path}")).send();
    assert_eq!(post("/take").await.unwrap().status(), 409, "empty");
    assert_eq!(post("/put").await.unwrap().status(), 200);
    assert_eq!(post("/take").await.unwrap().status(), 200);
    assert_eq!(post("/take").await.unwrap().status(), 409);
    assert_eq!(stock.version().get(), 2, "refused changes publish nothing");

    let held = tokio::spawn(
        client
            .get(format!("{base}/status?since=2&timeout=30"))
            .send(),
    );
    until_waiters(&stock, 1).await;
    stock.close();
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
}

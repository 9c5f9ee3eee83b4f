//! The endpoints as `tower::Service`s over a real socket: axum's
//! `route_service` and hyper-util's `TowerToHyperService` take them as they
//! are, and `tower-http`'s trace, timeout and compression layers compose
//! with them (compression leaves the event stream alone).
#![cfg(feature = "tower")]

use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use longpoll::http::{BodyFormat, KeyedPoll, LongPoll};
use longpoll::keyed::Keyed;
use longpoll::sse::EventStreams;
use longpoll::{Broadcaster, Update};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

const STEP: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn encode(u: &Update<u32>) -> Bytes {
    Bytes::from(format!(r#"{{"n":{}}}"#, u.value()))
}

async fn serve_axum(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn until_waiters<T>(b: &Broadcaster<T>, n: usize) {
    tokio::time::timeout(STEP, async {
        while b.waiter_count() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waiters stayed at {}", b.waiter_count()));
}

#[tokio::test]
async fn axum_route_service_takes_the_long_poll_under_trace_and_timeout_layers() {
    let stock = Broadcaster::new(3u32);
    let poll = LongPoll::new(stock.clone(), encode);
    let layers = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(60),
        ));
    let app = Router::new().route_service("/status", layers.service(poll));
    let base = serve_axum(app).await;
    let c = client();

    let held = tokio::spawn(c.get(format!("{base}/status?since=0&timeout=30")).send());
    until_waiters(&stock, 1).await;
    stock.notify(4).unwrap();
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["etag"],
        format!("\"{}-1\"", stock.epoch()).as_str()
    );
    assert_eq!(resp.text().await.unwrap(), r#"{"n":4}"#);

    let resp = c
        .get(format!("{base}/status?since=1&timeout=0.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(format!("{base}/status?since=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c.post(format!("{base}/status")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_layer_shorter_than_the_poll_answers_for_it_and_unregisters_the_waiter() {
    use tower::ServiceExt;

    let stock = Broadcaster::new(0u32);
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(5),
        ))
        .service(LongPoll::new(stock.clone(), encode));
    let req = http::Request::get("/status?since=0&timeout=60")
        .body(())
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(stock.waiter_count(), 0, "the dropped poll left no waiter");
}

#[tokio::test]
async fn hyper_util_tower_to_hyper_service_takes_the_long_poll_as_it_is() {
    let stock = Broadcaster::new(1u32);
    let poll = LongPoll::new(stock.clone(), encode).with_format(BodyFormat::Envelope);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(poll.clone());
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
        }
    });
    let c = client();
    let held = tokio::spawn(c.get(format!("{base}/?since=0&timeout=30")).send());
    until_waiters(&stock, 1).await;
    stock.notify(2).unwrap();
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "epoch": stock.epoch().to_string(),
            "version": 1,
            "updates": [{"version": 1, "data": {"n": 2}}],
        })
    );
}

#[tokio::test]
async fn route_service_takes_the_event_stream_and_the_multi_key_poll() {
    let feed = Broadcaster::builder().history(8).build(0u32);
    let streams = EventStreams::new(encode);
    let hub: Keyed<String, u32> = Keyed::builder().init(|_| 7).build();
    let keyed = KeyedPoll::new(hub.clone(), encode);
    let app = Router::new()
        .route_service("/events", streams.endpoint(feed.clone()))
        .route_service("/stock", keyed);
    let base = serve_axum(app).await;
    let c = client();

    let mut events = c.get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    read_until(&mut events, &mut text, r#"data: {"n":0}"#).await;
    feed.notify(5).unwrap();
    read_until(&mut events, &mut text, r#"data: {"n":5}"#).await;

    // Both keys without a cursor: both states at once.
    let body: serde_json::Value = c
        .get(format!("{base}/stock?keys=apples,pears"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answers = body["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1]["key"], "pears");
    assert_eq!(answers[1]["updates"][0]["data"]["n"], 7);
    assert_eq!(answers[1]["resync"]["reason"], "initial");
}

/// Reads until `text` contains `needle`.
async fn read_until(resp: &mut reqwest::Response, text: &mut String, needle: &str) {
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(STEP, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; got {text:?}"))
            .unwrap()
            .expect("stream open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// A raw HTTP/1.1 GET over a socket (reqwest would decompress behind our
/// back); returns the head and whatever body arrived by `until`.
async fn raw_get(base: &str, path: &str, until: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(STEP, async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let end = got.windows(4).position(|w| w == b"\r\n\r\n");
            let done = n == 0
                || end.is_some_and(|e| {
                    let body = &got[e + 4..];
                    until.is_empty() || body.windows(until.len()).any(|w| w == until.as_bytes())
                });
            if done {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {until:?} in time: {:?}", String::from_utf8_lossy(&got)));
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    (head, got[end + 4..].to_vec())
}

#[tokio::test]
async fn compression_gzips_long_poll_answers_and_leaves_the_event_stream_alone() {
    let feed = Broadcaster::builder().history(8).build(0u32);
    // A body worth compressing (the default predicate skips under 32 bytes).
    let poll = LongPoll::new(feed.clone(), |u: &Update<u32>| {
        Bytes::from(format!(
            r#"{{"n":{},"pad":"{}"}}"#,
            u.value(),
            "x".repeat(200)
        ))
    });
    let streams = EventStreams::from(&poll);
    let app = Router::new()
        .route_service("/status", poll)
        .route_service("/events", streams.endpoint(feed.clone()))
        .layer(CompressionLayer::new());
    let base = serve_axum(app).await;

    let (head, _) = raw_get(&base, "/status?since=9", "").await;
    assert!(head.contains("content-encoding: gzip"), "{head}");

    // The stream: not compressed, and its first events arrive while it is
    // open (nothing buffered them).
    let (head, body) = raw_get(&base, "/events", "\"n\":0").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("retry:"));
}

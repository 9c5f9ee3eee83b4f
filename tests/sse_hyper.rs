//! An event stream served by plain hyper over a real socket: the body type
//! needs no adapter, keep-alive comments arrive while nothing is published, and a
//! reconnect with `Last-Event-ID` continues where the last one stopped.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use longpoll::sse::{EventStreams, SseConfig};
use longpoll::{Broadcaster, Update};
use tokio::net::TcpListener;

const STEP: Duration = Duration::from_secs(5);

/// Serves `feed` as an event stream on 127.0.0.1:0; returns the URL.
async fn serve(feed: Broadcaster<String>, config: SseConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let streams = EventStreams::new(|u: &Update<String>| Bytes::from(u.value().to_string()))
        .with_config(config);
    let endpoint = streams.endpoint(feed);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    // The request is dropped here; the stream keeps nothing of it.
                    let resp = endpoint.handle(req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
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

#[tokio::test]
async fn hyper_serves_keep_alives_and_a_last_event_id_resume() {
    let feed = Broadcaster::builder()
        .history(16)
        .build("start".to_string());
    let config = SseConfig::new()
        .keep_alive(Duration::from_millis(100))
        .retry(Duration::from_millis(250));
    let url = serve(feed.clone(), config).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let mut text = String::new();
    read_until(&mut resp, &mut text, "data: start\n\n").await;
    assert!(text.starts_with("retry: 250\n\n"), "{text}");
    // Nothing is published: the idle stream carries keep-alive comments.
    read_until(&mut resp, &mut text, ": keep-alive\n\n").await;
    feed.notify("one".into()).unwrap();
    read_until(&mut resp, &mut text, "data: one\n\n").await;
    let last_id = format!("{}-1", feed.epoch());
    assert!(text.contains(&format!("id: {last_id}\n")), "{text}");
    drop(resp);

    feed.notify("two".into()).unwrap();
    feed.notify("three".into()).unwrap();
    let mut resp = client
        .get(&url)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    read_until(&mut resp, &mut text, "data: three\n\n").await;
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas, ["two", "three"], "each missed event once, no resync");
}

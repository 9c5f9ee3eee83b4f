//! One poll over several keys: the keys and cursors of the query, held
//! until one key changes, every ready key answered with its own envelope,
//! limits and foreign cursors.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use longpoll::http::{FullBody, KeyedPoll, KeyedPollConfig};
use longpoll::keyed::Keyed;
use longpoll::{Cursor, Update};
use serde_json::{json, Value};

fn hub() -> (Keyed<String, u32>, KeyedPoll<String, u32>) {
    let hub: Keyed<String, u32> = Keyed::builder().history(4).init(|_| 0).build();
    let poll = KeyedPoll::new(hub.clone(), |u: &Update<u32>| {
        Bytes::from(u.value().to_string())
    })
    .with_config(KeyedPollConfig::new().max_keys(3).max_key_len(8));
    (hub, poll)
}

fn id(c: Cursor) -> String {
    format!("{}-{}", c.epoch().unwrap(), c.version().unwrap())
}

fn cursor(hub: &Keyed<String, u32>, key: &str) -> String {
    id(hub.broadcaster(key).unwrap().current().cursor())
}

async fn get(poll: &KeyedPoll<String, u32>, query: &str) -> Response<Bytes> {
    let req = Request::get(format!("/stock?{query}")).body(()).unwrap();
    let Ok(resp) = poll.handle(req).await;
    resp.map(FullBody::into_bytes)
}

fn answers(resp: &Response<Bytes>) -> Vec<Value> {
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.body());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    body["answers"].as_array().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_poll_is_held_until_one_key_changes_and_names_the_key_of_every_update() {
    let (hub, poll) = hub();
    let (a, b, c) = (cursor(&hub, "a"), cursor(&hub, "b"), cursor(&hub, "c"));
    let query = format!("keys=a,b,c&cursors={a},{b},{c}&timeout=30");
    let held = tokio::spawn({
        let poll = poll.clone();
        async move { get(&poll, &query).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "held while nothing changed");
    hub.notify("b", 5).unwrap();
    hub.notify("b", 6).unwrap();
    let got = answers(&held.await.unwrap());
    let e = hub.broadcaster("b").unwrap().epoch().to_string();
    assert_eq!(
        got,
        [json!({"key": "b", "epoch": e, "version": 2,
                "updates": [{"version": 1, "data": 5}, {"version": 2, "data": 6}]})]
    );

    // Nothing changes: 204.
    let query = format!("keys=a,b&cursors={a},{}&timeout=2", cursor(&hub, "b"));
    assert_eq!(get(&poll, &query).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(start_paused = true)]
async fn keys_without_a_cursor_or_with_a_foreign_one_are_answered_at_once_with_the_ready_ones() {
    let (hub, poll) = hub();
    let a = cursor(&hub, "a");
    hub.notify("c", 9).unwrap();
    let stale_c = "0000000000000001-0"; // another epoch
    let started = tokio::time::Instant::now();
    let query = format!("keys=a,b,c&cursors={a},v2:not-ours,{stale_c}&timeout=30");
    let got = answers(&get(&poll, &query).await);
    assert_eq!(started.elapsed(), Duration::ZERO);
    let keys: Vec<&str> = got.iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["b", "c"], "a is current: not answered");
    assert_eq!(got[0]["resync"]["reason"], "other-epoch");
    assert_eq!(got[1]["resync"]["reason"], "other-epoch");

    // No cursor: the key's retained updates, as a baseline; a key that is
    // behind at that moment comes along.
    let query = format!(
        "keys=a,c&cursors=,{}",
        id(Cursor::at(longpoll::Version::ZERO).with_epoch(hub.broadcaster("c").unwrap().epoch()))
    );
    let got = answers(&get(&poll, &query).await);
    assert_eq!(got[0]["key"], "a");
    assert_eq!(got[0]["resync"], json!({"reason": "initial"}));
    assert_eq!(got[0]["updates"], json!([{"version": 0, "data": 0}]));
    assert_eq!(got[1]["key"], "c");
    assert_eq!(got[1]["updates"], json!([{"version": 1, "data": 9}]));
    assert!(got[1].get("resync").is_none());
}

#[tokio::test]
async fn limits_are_400s_and_a_foreign_cursor_never_is() {
    let (hub, poll) = hub();
    let a = cursor(&hub, "a");
    let cases = [
        ("", "keys"),
        ("keys=", "keys"),
        ("keys=a,b,c,d", "at most 3"),
        ("keys=a,,b", "a key"),
        ("keys=abcdefghi", "a key"),
        ("keys=a,a", "twice"),
        ("keys=a&cursors=x,y", "cursors"),
        ("keys=a&keys=b", "more than once"),
        ("keys=a&timeout=x", "timeout"),
    ];
    for (query, says) in cases {
        let resp = get(&poll, query).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = serde_json::from_slice(resp.body()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let long = "f".repeat(longpoll::http::MAX_CURSOR_LEN + 1);
    let resp = get(&poll, &format!("keys=a&cursors={long}")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // A trailing comma, percent-encoded commas, garbage cursors: fine.
    for (query, status) in [
        (
            format!("keys=a&cursors={a},&timeout=0"),
            StatusCode::NO_CONTENT,
        ),
        (
            format!("keys=a%2Cb&cursors={a}%2C%ZZ&timeout=0"),
            StatusCode::OK,
        ),
        ("keys=a&cursors=%ZZ&timeout=0".to_owned(), StatusCode::OK),
    ] {
        assert_eq!(get(&poll, &query).await.status(), status, "{query}");
    }
}

#[tokio::test]
async fn the_key_limit_of_the_hub_is_a_503_and_closing_answers_held_polls() {
    let hub: Keyed<String, u32> = Keyed::builder().max_keys(1).build();
    let poll = KeyedPoll::new(hub.clone(), |u: &Update<u32>| {
        Bytes::from(u.value().to_string())
    });
    let a = cursor(&hub, "a");
    let resp = get(&poll, &format!("keys=a,b&cursors={a},")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");

    let held = tokio::spawn({
        let poll = poll.clone();
        async move { get(&poll, &format!("keys=a&cursors={a}&timeout=60")).await }
    });
    while hub.broadcaster("a").unwrap().waiter_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hub.close();
    let resp = held.await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_dropped_poll_unregisters_every_key() {
    let (hub, poll) = hub();
    let (a, b) = (cursor(&hub, "a"), cursor(&hub, "b"));
    let held = tokio::spawn({
        let poll = poll.clone();
        async move { get(&poll, &format!("keys=a,b&cursors={a},{b}&timeout=60")).await }
    });
    let waiters = |k: &str| hub.broadcaster(k).unwrap().waiter_count();
    while waiters("a") + waiters("b") < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.abort();
    let _ = held.await;
    assert_eq!((waiters("a"), waiters("b")), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_key_that_fails_is_left_out_and_the_others_news_still_comes() {
    // "full" takes no waiter: every wait on it fails `Full` at once.
    let hub: Keyed<String, u32> = Keyed::builder()
        .history(4)
        .init(|_| 0)
        .configure(|k: &String| {
            let b = longpoll::Builder::new().history(4);
            if k == "full" {
                b.max_waiters(0)
            } else {
                b
            }
        })
        .build();
    let poll = KeyedPoll::new(hub.clone(), |u: &Update<u32>| {
        Bytes::from(u.value().to_string())
    });
    let (a, full) = (cursor(&hub, "a"), cursor(&hub, "full"));
    hub.notify("a", 7).unwrap();

    // "a" has news and "full" fails: "a" is answered, "full" left out.
    let got = answers(&get(&poll, &format!("keys=full,a&cursors={full},{a}&timeout=30")).await);
    let keys: Vec<&str> = got.iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a"], "{got:?}");
    assert_eq!(got[0]["updates"], json!([{"version": 1, "data": 7}]));

    // Only the failing key is ready: 503 with its Retry-After.
    let a = cursor(&hub, "a");
    let resp = get(&poll, &format!("keys=full,a&cursors={full},{a}&timeout=30")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
}

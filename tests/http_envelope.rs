//! The envelope answer: every update since the cursor, in order, with the
//! resync reason, each update encoded once and the one-update envelope
//! shared by every waiter of a fan-out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use longpoll::http::{BodyFormat, FullBody, LongPoll};
use longpoll::keyed::Keyed;
use longpoll::{Broadcaster, Epoch, Update, Version};
use serde_json::{json, Value};

/// An envelope endpoint over `b` whose encoder counts its calls.
fn counted(b: &Broadcaster<u32>) -> (LongPoll<u32>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let poll = LongPoll::new(b.clone(), {
        let calls = Arc::clone(&calls);
        move |u: &Update<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            Bytes::from(format!(r#"{{"n":{}}}"#, u.value()))
        }
    })
    .with_format(BodyFormat::Envelope);
    (poll, calls)
}

async fn get(poll: &LongPoll<u32>, query: &str) -> Response<Bytes> {
    let req = Request::get(format!("/status?{query}")).body(()).unwrap();
    let Ok(resp) = poll.handle(req).await;
    resp.map(FullBody::into_bytes)
}

fn json(resp: &Response<Bytes>) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    serde_json::from_slice(resp.body()).unwrap()
}

fn updates(versions: &[(u64, u32)]) -> Value {
    versions
        .iter()
        .map(|(v, n)| json!({"version": v, "data": {"n": n}}))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_answer_carries_every_update_since_the_cursor_and_the_resync_reason() {
    let b = Broadcaster::builder().history(3).build(0u32);
    let (poll, _) = counted(&b);
    let e = b.epoch().to_string();
    for n in 1..=5 {
        b.notify(n).unwrap();
    }

    // Within history: every missed update, oldest first, no resync.
    let resp = get(&poll, &format!("since=3&epoch={e}")).await;
    assert_eq!(resp.headers()["etag"], format!("\"{e}-5\"").as_str());
    assert_eq!(
        json(&resp),
        json!({"epoch": e, "version": 5, "updates": updates(&[(4, 4), (5, 5)])})
    );

    // Beyond it: what is retained, and how many versions are gone.
    let body = json(&get(&poll, &format!("since=0&epoch={e}")).await);
    assert_eq!(body["updates"], updates(&[(3, 3), (4, 4), (5, 5)]));
    assert_eq!(body["resync"], json!({"reason": "lagged", "skipped": 2}));

    // Ahead, another epoch, a foreign epoch: the retained history, flagged.
    let other = Epoch::new(b.epoch().get() ^ 1).unwrap();
    for (query, reason) in [
        (format!("since=9&epoch={e}"), "ahead"),
        (format!("since=1&epoch={other}"), "other-epoch"),
        ("since=1&epoch=v2:eu-west".to_owned(), "other-epoch"),
    ] {
        let body = json(&get(&poll, &query).await);
        assert_eq!(body["resync"], json!({"reason": reason}), "{query}");
        assert_eq!(body["updates"], updates(&[(3, 3), (4, 4), (5, 5)]));
    }

    // No cursor at all: a baseline at once, as an event stream starts.
    let started = tokio::time::Instant::now();
    let body = json(&get(&poll, "timeout=30").await);
    assert_eq!(body["resync"], json!({"reason": "initial"}));
    assert_eq!(body["updates"], updates(&[(3, 3), (4, 4), (5, 5)]));
    assert_eq!(started.elapsed(), Duration::ZERO);

    // Up to date: held, then 204.
    let resp = get(&poll, &format!("since=5&epoch={e}&timeout=1")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_shares_one_envelope_and_encodes_each_update_once() {
    const WAITERS: usize = 2_000;
    let b = Broadcaster::builder().history(4).build(0u32);
    let (poll, calls) = counted(&b);
    let e = b.epoch();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let poll = poll.clone();
            tokio::spawn(async move { get(&poll, &format!("since=0&epoch={e}&timeout=60")).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(10), async {
        while b.waiter_count() < WAITERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    b.notify(1).unwrap();
    let mut pointers = HashSet::new();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(json(&resp)["updates"], updates(&[(1, 1)]));
        pointers.insert(resp.body().as_ptr() as usize);
    }
    assert_eq!(
        pointers.len(),
        1,
        "every waiter got the same envelope bytes"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Batches of several updates reuse each update's encoding.
    b.notify(2).unwrap();
    for _ in 0..10 {
        let body = json(&get(&poll, &format!("since=0&epoch={e}")).await);
        assert_eq!(body["updates"], updates(&[(1, 1), (2, 2)]));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "update 2 encoded once");
}

#[tokio::test]
async fn one_cache_serves_every_key_of_a_hub_and_never_mixes_them_up() {
    // Every key shares one epoch and version numbers: only the value's
    // identity tells their updates apart.
    let epoch = Epoch::new(42).unwrap();
    let hub: Keyed<String, u32> = Keyed::builder()
        .configure(move |_| longpoll::Builder::new().epoch(epoch))
        .init(|k: &String| if k == "a" { 10 } else { 20 })
        .build();
    let a = hub.broadcaster("a").unwrap();
    let poll = LongPoll::new(a.clone(), |u: &Update<u32>| {
        Bytes::from(u.value().to_string())
    });
    let pb = poll.for_broadcaster(hub.broadcaster("b").unwrap());
    assert_eq!(poll.body(&a.current()), "10");
    assert_eq!(pb.body(&pb.broadcaster().current()), "20");
    hub.notify("a", 11).unwrap();
    hub.notify("b", 21).unwrap();
    assert_eq!(a.current().version(), Version::new(1));
    assert_eq!(poll.body(&a.current()), "11");
    assert_eq!(pb.body(&pb.broadcaster().current()), "21");
}

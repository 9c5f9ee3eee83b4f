//! The HTTP layer's answers: each wait outcome mapped to its status and
//! headers, one body encoding per version whatever the fan-out, and held
//! requests that are dropped or closed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use longpoll::http::{FullBody, LongPoll, PollConfig, PollRequest};
use longpoll::{Broadcaster, Cursor, Update, Version, WaitError};
use parking_lot::Mutex;

/// `GET /status?query` with `headers`, through `LongPoll::handle`; the
/// body collected.
async fn get(poll: &LongPoll<u32>, query: &str, headers: &HeaderMap) -> Response<Bytes> {
    let mut req = Request::get(format!("/status?{query}")).body(()).unwrap();
    *req.headers_mut() = headers.clone();
    let Ok(resp) = poll.handle(req).await;
    resp.map(FullBody::into_bytes)
}

/// A `LongPoll` over `b` whose encoder counts its calls.
fn counted(b: &Broadcaster<u32>) -> (LongPoll<u32>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let poll = LongPoll::new(b.clone(), {
        let calls = Arc::clone(&calls);
        move |u: &Update<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            Bytes::from(format!("{{\"n\":{},\"v\":{}}}", u.value(), u.version()))
        }
    });
    (poll, calls)
}

async fn until_waiters<T>(b: &Broadcaster<T>, n: usize) {
    for _ in 0..1000 {
        if b.waiter_count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("waiters stayed at {} instead of {n}", b.waiter_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_ten_thousand_waiters_encodes_the_body_once() {
    const WAITERS: usize = 10_000;
    let b = Broadcaster::new(10u32);
    let (poll, calls) = counted(&b);
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let poll = poll.clone();
            tokio::spawn(async move { get(&poll, "since=0&timeout=60", &HeaderMap::new()).await })
        })
        .collect();
    until_waiters(&b, WAITERS).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing encoded before a change"
    );

    b.notify(9).unwrap();
    let mut pointers = HashSet::new();
    for task in tasks {
        let resp = task.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.body(), r#"{"n":9,"v":1}"#);
        pointers.insert(resp.body().as_ptr() as usize);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one encoding for the whole fan-out"
    );
    assert_eq!(pointers.len(), 1, "every waiter got the same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaining_pollers_see_each_version_encoded_once() {
    const POLLERS: usize = 200;
    const CHANGES: u32 = 30;
    let b = Broadcaster::new(0u32);
    let encoded = Arc::new(Mutex::new(Vec::new()));
    let poll = LongPoll::new(b.clone(), {
        let encoded = Arc::clone(&encoded);
        move |u: &Update<u32>| {
            encoded.lock().push(u.version());
            Bytes::from(u.version().to_string())
        }
    });
    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| {
            let poll = poll.clone();
            tokio::spawn(async move {
                let mut since = 0u64;
                while since < u64::from(CHANGES) {
                    let resp = get(
                        &poll,
                        &format!("since={since}&timeout=30"),
                        &HeaderMap::new(),
                    )
                    .await;
                    assert_eq!(resp.status(), StatusCode::OK);
                    let v: u64 = std::str::from_utf8(resp.body()).unwrap().parse().unwrap();
                    assert!(v > since);
                    since = v;
                }
            })
        })
        .collect();
    for n in 1..=CHANGES {
        // Publish only once every poller is back: each version is then
        // answered while it is the newest.
        until_waiters(&b, POLLERS).await;
        b.notify(n).unwrap();
    }
    for p in pollers {
        p.await.unwrap();
    }
    let encoded = encoded.lock();
    let distinct: HashSet<_> = encoded.iter().collect();
    assert_eq!(
        distinct.len(),
        encoded.len(),
        "a version was encoded twice: {encoded:?}"
    );
    assert_eq!(
        encoded.len(),
        CHANGES as usize,
        "each version answered someone: {encoded:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_outcome_maps_to_its_status_and_headers() {
    let b = Broadcaster::builder().max_waiters(1).build(5u32);
    let (poll, _) = counted(&b);
    let etag0 = format!("\"{}-0\"", b.epoch());
    let named = PollRequest::new(Cursor::at(Version::ZERO), Duration::from_secs(1), true);
    let unnamed = PollRequest::new(Cursor::NEXT, Duration::from_secs(1), false);

    // A change: 200, ETag, no-store, JSON.
    let resp = poll.respond(
        &named,
        Ok(b.wait(Cursor::at(Version::new(7))).await.unwrap()),
    );
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["etag"], etag0.as_str());
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["content-type"], "application/json");

    // A timeout: 204 for a client with a cursor, the current state otherwise.
    let resp = poll.respond(&named, Err(WaitError::TimedOut));
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.body().is_empty());
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let resp = poll.respond(&unnamed, Err(WaitError::TimedOut));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), r#"{"n":5,"v":0}"#);
    assert_eq!(resp.headers()["etag"], etag0.as_str());

    // Full and closed: 503 with Retry-After and a JSON error.
    let resp = poll.respond(&named, Err(WaitError::Full { limit: 1 }));
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let resp = poll.respond(&named, Err(WaitError::Closed));
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("shutting down"));

    // The same through `handle`, with the limit really reached.
    let holder = tokio::spawn({
        let poll = poll.clone();
        async move { get(&poll, "since=0&timeout=10", &HeaderMap::new()).await }
    });
    until_waiters(&b, 1).await;
    let resp = get(&poll, "since=0", &HeaderMap::new()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    // Paused time: the held one times out after its 10 s.
    assert_eq!(holder.await.unwrap().status(), StatusCode::NO_CONTENT);
}

#[tokio::test(start_paused = true)]
async fn config_sets_timeouts_retry_after_and_content_type() {
    let b = Broadcaster::new(1u32);
    let poll = LongPoll::new(b.clone(), |u: &Update<u32>| {
        Bytes::from(u.value().to_string())
    })
    .with_config(
        PollConfig::new()
            .default_timeout(Duration::from_secs(2))
            .max_timeout(Duration::from_secs(5))
            .closed_retry_after(Duration::from_millis(2500))
            .full_retry_after(Duration::from_secs(9)),
    )
    .with_content_type(HeaderValue::from_static("text/plain"));

    let started = tokio::time::Instant::now();
    let resp = get(&poll, "since=0", &HeaderMap::new()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "the configured default"
    );

    let resp = get(&poll, "since=0&timeout=6", &HeaderMap::new()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        body["error"],
        "`timeout` must be a decimal number of seconds from 0 to 5"
    );

    let resp = get(&poll, "since=9", &HeaderMap::new()).await;
    assert_eq!(resp.headers()["content-type"], "text/plain");

    b.close();
    let resp = get(&poll, "since=0", &HeaderMap::new()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "3", "2.5 s rounds up");
}

#[tokio::test(start_paused = true)]
async fn if_none_match_holds_a_list_with_the_current_tag_and_answers_others_at_once() {
    let b = Broadcaster::builder().history(4).build(1u32);
    let (poll, _) = counted(&b);
    let tag = |v: u64| format!("\"{}-{v}\"", b.epoch());
    b.notify(2).unwrap();
    b.notify(3).unwrap(); // version 2
    let inm = |values: &[&str]| {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("if-none-match", v.parse().unwrap());
        }
        headers
    };

    // Several headers are one list: the current tag (in the second) holds.
    let resp = get(&poll, "timeout=1", &inm(&["\"other\"", &tag(2)])).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // So does `*`, and a weak form of the current tag in a list.
    let resp = get(&poll, "timeout=1", &inm(&["*"])).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let weak = format!("W/{}, \"x\"", tag(2));
    assert_eq!(
        get(&poll, "timeout=1", &inm(&[&weak])).await.status(),
        StatusCode::NO_CONTENT
    );

    // Older tags only: at once, from the newest of them.
    let started = tokio::time::Instant::now();
    let list = format!("{}, {}", tag(0), tag(1));
    let resp = get(&poll, "timeout=30", &inm(&[&list])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), r#"{"n":3,"v":2}"#);
    assert_eq!(resp.headers()["etag"], tag(2).as_str());
    // Tags of no one we know: at once, with the current state.
    let resp = get(&poll, "timeout=30", &inm(&["\"v2:abc\", W/\"1-2\""])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), r#"{"n":3,"v":2}"#);
    assert_eq!(started.elapsed(), Duration::ZERO, "neither was held");

    // Unparsable: as if absent, so the demo's rule (200 on timeout).
    let resp = get(&poll, "timeout=1", &inm(&["no quotes"])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "held as for no cursor"
    );
}

#[tokio::test(start_paused = true)]
async fn a_foreign_epoch_is_answered_at_once_with_the_current_state() {
    let b = Broadcaster::new(4u32);
    let (poll, _) = counted(&b);
    let started = tokio::time::Instant::now();
    for query in [
        "since=0&epoch=v2:eu-west&timeout=30",
        "epoch=xyz&timeout=30",
        "since=99&epoch=0&timeout=30",
        "since=0&epoch=00000000000000001&timeout=30",
    ] {
        let resp = get(&poll, query, &HeaderMap::new()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{query}");
        assert_eq!(resp.body(), r#"{"n":4,"v":0}"#, "{query}");
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(b.waiter_count(), 0, "a foreign cursor never registers");
    let too_long = format!("epoch={}", "e".repeat(65));
    let resp = get(&poll, &too_long, &HeaderMap::new()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Through `wait`: the answer is a resync from another epoch.
    let req = poll
        .parse(&"/s?epoch=abc%3Adef".parse().unwrap(), &HeaderMap::new())
        .unwrap();
    assert!(req.is_foreign());
    let changed = poll.wait(&req).await.unwrap();
    assert_eq!(changed.resync(), Some(longpoll::Resync::OtherEpoch));
    b.close();
    assert_eq!(poll.wait(&req).await.unwrap_err(), WaitError::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_closed_requests_leave_no_waiters() {
    let b = Broadcaster::new(0u32);
    let (poll, calls) = counted(&b);
    let spawn = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| {
                let poll = poll.clone();
                tokio::spawn(
                    async move { get(&poll, "since=0&timeout=60", &HeaderMap::new()).await },
                )
            })
            .collect()
    };

    // Dropped by their clients: unregistered at once.
    let dropped = spawn(1000);
    until_waiters(&b, 1000).await;
    for t in &dropped {
        t.abort();
    }
    for t in dropped {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    assert_eq!(b.waiter_count(), 0);

    // Closed: every held request answered 503, nothing encoded.
    let held = spawn(100);
    until_waiters(&b, 100).await;
    assert!(b.close());
    for t in held {
        let resp = t.await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A request body that says when it is dropped.
struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn handle_drops_the_request_before_the_poll_waits() {
    let b = Broadcaster::new(0u32);
    let (poll, _) = counted(&b);
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = Request::get("/status?since=0&timeout=60")
        .header("x-large", "x".repeat(4096))
        .body(Flag(dropped.clone()))
        .unwrap();
    let mut held = tokio_test::task::spawn(poll.handle(req));
    tokio_test::assert_pending!(held.poll());
    assert_eq!(b.waiter_count(), 1, "the poll is held");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the request (and its header bytes) is gone while the poll waits"
    );
    b.notify(1).unwrap();
    let Ok(resp) = tokio_test::assert_ready!(held.poll());
    assert_eq!(resp.status(), StatusCode::OK);
}

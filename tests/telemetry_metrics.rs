//! The `metrics` feature: every metric of the core, the HTTP layer and SSE
//! (the table in the crate docs) appears with the right values and labels,
//! through a recorder of the test's own; nothing is looked up per waiter or
//! per key; no key name ever becomes a label.
#![cfg(feature = "metrics")]

mod telemetry_common;

use std::sync::mpsc;

use futures::StreamExt;
use longpoll::keyed::Keyed;
use longpoll::{Broadcaster, Cursor, Epoch, Version, WaitError};
use telemetry_common::TestRecorder;
use tokio_test::{assert_pending, assert_ready, task};

const WAITERS: &str = "longpoll_waiters";
const PUBLISHES: &str = "longpoll_publishes_total";
const FANOUT_SECONDS: &str = "longpoll_fanout_duration_seconds";
const FANOUT_WAITERS: &str = "longpoll_fanout_waiters";
const REFUSED: &str = "longpoll_refused_waits_total";
const RESYNCS: &str = "longpoll_resyncs_total";

/// A broadcaster whose handles are bound to `rec`.
fn recorded<T>(rec: &TestRecorder, b: impl FnOnce() -> Broadcaster<T>) -> Broadcaster<T> {
    metrics::with_local_recorder(rec, b)
}

#[test]
fn the_waiters_gauge_follows_futures_callbacks_and_streams_in_and_out_of_the_list() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::new(0u32));
    assert_eq!(rec.gauge(WAITERS), Some(0.0));

    let mut futures: Vec<_> = (0..3).map(|_| task::spawn(b.wait(Cursor::NEXT))).collect();
    for f in &mut futures {
        assert_pending!(f.poll());
    }
    let (tx, rx) = mpsc::channel();
    let reg = b
        .register(Cursor::NEXT, move |r| tx.send(r.is_ok()).unwrap())
        .unwrap();
    let mut stream = task::spawn(b.stream(Cursor::NEXT));
    assert_pending!(stream.poll_next());
    assert_eq!(rec.gauge(WAITERS), Some(5.0));

    // A cancelled future leaves at once.
    drop(futures.pop());
    assert_eq!(rec.gauge(WAITERS), Some(4.0));

    // A publish takes the other four out.
    b.notify(1).unwrap();
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
    assert!(rx.recv().unwrap());
    drop(reg);
    assert_eq!(
        rec.gauge(WAITERS),
        Some(0.0),
        "a fired callback is not counted twice"
    );

    // The stream waits again: back in the list; dropping it leaves.
    assert!(assert_ready!(stream.poll_next()).unwrap().is_ok());
    assert_pending!(stream.poll_next());
    assert_eq!(rec.gauge(WAITERS), Some(1.0));
    drop(stream);
    assert_eq!(rec.gauge(WAITERS), Some(0.0));

    // A cancelled callback leaves too.
    let reg = b.register(Cursor::NEXT, |_| {}).unwrap();
    assert_eq!(rec.gauge(WAITERS), Some(1.0));
    assert!(reg.cancel());
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_wait_leaves_the_gauge() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::new(()));
    let r = b
        .wait_timeout(Cursor::NEXT, std::time::Duration::from_secs(1))
        .await;
    assert_eq!(r.unwrap_err(), WaitError::TimedOut);
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
}

#[test]
fn a_publish_records_its_fan_out_size_and_time_and_one_without_waiters_only_counts() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::new(0u32));
    b.notify(1).unwrap();
    assert_eq!(rec.counter(PUBLISHES, &[]), 1);
    assert!(rec.histogram(FANOUT_SECONDS).is_empty());
    assert!(rec.histogram(FANOUT_WAITERS).is_empty());

    let mut waits: Vec<_> = (0..7).map(|_| task::spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    let (tx, rx) = mpsc::channel();
    let _reg = b
        .register(Cursor::NEXT, move |_| tx.send(()).unwrap())
        .unwrap();
    b.modify(|n| Some(n + 1)).unwrap();
    rx.recv().unwrap();
    assert_eq!(rec.counter(PUBLISHES, &[]), 2);
    assert_eq!(rec.histogram(FANOUT_WAITERS), [8.0]);
    let seconds = rec.histogram(FANOUT_SECONDS);
    assert_eq!(seconds.len(), 1);
    assert!(seconds[0] > 0.0 && seconds[0] < 10.0, "{seconds:?}");

    // `publish_at` and `restart` are publishes too.
    b.publish_at(Version::new(10), 10).unwrap();
    let mut w = task::spawn(b.wait(Cursor::NEXT));
    assert_pending!(w.poll());
    b.restart(Epoch::new(0xabc).unwrap(), Version::new(3), 3)
        .unwrap();
    assert_eq!(rec.counter(PUBLISHES, &[]), 4);
    assert_eq!(rec.histogram(FANOUT_WAITERS), [8.0, 1.0]);
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
}

#[test]
fn a_close_empties_the_gauge_and_is_not_a_publish() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::new(0u32));
    let mut waits: Vec<_> = (0..4).map(|_| task::spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    let _reg = b.register(Cursor::NEXT, |_| {}).unwrap();
    assert_eq!(rec.gauge(WAITERS), Some(5.0));
    b.close();
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
    assert_eq!(rec.counter(PUBLISHES, &[]), 0);
    assert!(rec.histogram(FANOUT_WAITERS).is_empty());
}

#[test]
fn refused_waits_are_counted_by_reason() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::builder().max_waiters(1).build(0u32));
    let mut first = task::spawn(b.wait(Cursor::NEXT));
    assert_pending!(first.poll());
    // Full: a future, a callback, a stream.
    let mut second = task::spawn(b.wait(Cursor::NEXT));
    assert!(matches!(
        assert_ready!(second.poll()),
        Err(WaitError::Full { limit: 1 })
    ));
    assert!(b.register(Cursor::NEXT, |_| {}).is_err());
    let mut stream = task::spawn(b.stream(Cursor::NEXT));
    assert!(assert_ready!(stream.poll_next()).unwrap().is_err());
    assert_eq!(rec.counter(REFUSED, &[("reason", "full")]), 3);

    // Closed: the pending one is answered (not a refusal), later ones refused.
    b.close();
    assert_eq!(assert_ready!(first.poll()).unwrap_err(), WaitError::Closed);
    assert_eq!(rec.counter(REFUSED, &[("reason", "closed")]), 0);
    let mut late = task::spawn(b.wait(Cursor::NEXT));
    assert_eq!(assert_ready!(late.poll()).unwrap_err(), WaitError::Closed);
    assert!(b.register(Cursor::NEXT, |_| {}).is_err());
    assert_eq!(rec.counter(REFUSED, &[("reason", "closed")]), 2);
    assert_eq!(rec.counter(REFUSED, &[("reason", "too_many_keys")]), 0);
}

#[test]
fn a_keyed_hub_counts_waits_refused_for_the_key_limit() {
    let rec = TestRecorder::new();
    let hub: Keyed<String, u32> =
        metrics::with_local_recorder(&rec, || Keyed::builder().max_keys(1).init(|_| 0).build());
    let _kept = hub.wait("first", Cursor::NEXT).unwrap();
    assert!(hub.wait("second", Cursor::NEXT).is_err());
    assert!(hub
        .wait_many([("third".to_string(), Cursor::NEXT)])
        .is_err());
    assert_eq!(rec.counter(REFUSED, &[("reason", "too_many_keys")]), 2);
    // A publish refused for the key limit is not a wait.
    assert!(hub.notify("fourth", 1).is_err());
    assert_eq!(rec.counter(REFUSED, &[("reason", "too_many_keys")]), 2);
}

#[test]
fn no_registration_publish_or_new_key_looks_a_metric_up() {
    let rec = TestRecorder::new();
    let b = recorded(&rec, || Broadcaster::new(0u32));
    let hub: Keyed<u64, u32> = metrics::with_local_recorder(&rec, || Keyed::builder().build());
    let after_build = rec.lookups();
    assert!(after_build > 0);
    // Everything below runs with the recorder in place: a lookup would be
    // seen.
    metrics::with_local_recorder(&rec, || {
        let mut waits: Vec<_> = (0..1000)
            .map(|_| task::spawn(b.wait(Cursor::NEXT)))
            .collect();
        for w in &mut waits {
            assert_pending!(w.poll());
        }
        b.notify(1).unwrap();
        let mut keyed: Vec<_> = (0..100u64)
            .map(|k| task::spawn(hub.wait(&k, Cursor::NEXT).unwrap()))
            .collect();
        for w in &mut keyed {
            assert_pending!(w.poll());
        }
        for k in 0..100u64 {
            hub.notify(&k, 1).unwrap();
        }
    });
    assert_eq!(rec.lookups(), after_build);
    assert_eq!(rec.gauge(WAITERS), Some(0.0));
    assert_eq!(rec.histogram(FANOUT_WAITERS).len(), 101);
}

#[test]
fn every_core_metric_is_described_with_its_unit() {
    let rec = TestRecorder::new();
    let _b = recorded(&rec, || Broadcaster::new(()));
    for (name, unit) in [
        (WAITERS, metrics::Unit::Count),
        (PUBLISHES, metrics::Unit::Count),
        (FANOUT_SECONDS, metrics::Unit::Seconds),
        (FANOUT_WAITERS, metrics::Unit::Count),
        (REFUSED, metrics::Unit::Count),
        (RESYNCS, metrics::Unit::Count),
    ] {
        let (u, text) = rec.described(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(u, Some(unit), "{name}");
        assert!(!text.is_empty());
    }
}

#[cfg(feature = "http")]
mod over_http {
    use super::*;

    use ::http::Request;
    use bytes::Bytes;
    use longpoll::http::{FullBody, KeyedPoll, LongPoll};
    use longpoll::sse::EventStreams;
    use longpoll::Update;

    fn encode(u: &Update<u32>) -> Bytes {
        Bytes::from(u.value().to_string())
    }

    async fn get(poll: &LongPoll<u32>, query: &str) -> ::http::StatusCode {
        let req = Request::get(format!("/s?{query}")).body(()).unwrap();
        let Ok(resp) = poll.handle(req).await;
        resp.map(FullBody::into_bytes).status()
    }

    const OTHER_EPOCH: &str = "00000000000000ab";

    #[tokio::test(start_paused = true)]
    async fn long_poll_answers_count_resyncs_by_reason() {
        let rec = TestRecorder::new();
        let b = recorded(&rec, || Broadcaster::builder().history(2).build(0u32));
        let poll = LongPoll::new(b.clone(), encode);
        for n in 1..=5 {
            b.notify(n).unwrap();
        }
        let e = b.epoch();
        // Up to date with the last version but one: no resync.
        assert_eq!(get(&poll, &format!("since=4&epoch={e}")).await, 200);
        assert_eq!(get(&poll, &format!("since=0&epoch={e}")).await, 200);
        assert_eq!(get(&poll, &format!("since=1&epoch={e}")).await, 200);
        assert_eq!(get(&poll, &format!("since=99&epoch={e}")).await, 200);
        assert_eq!(
            get(&poll, &format!("since=3&epoch={OTHER_EPOCH}")).await,
            200
        );
        // An epoch of another form: answered at once, as another epoch.
        assert_eq!(get(&poll, "since=3&epoch=not-ours").await, 200);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "lagged")]), 2);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "ahead")]), 1);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "other_epoch")]), 2);

        // A closed endpoint: the baseline of the envelope format and a
        // foreign cursor are refused too.
        let envelope =
            LongPoll::new(b.clone(), encode).with_format(longpoll::http::BodyFormat::Envelope);
        b.close();
        let Ok(resp) = envelope.handle(Request::get("/s").body(()).unwrap()).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(get(&poll, "since=3&epoch=not-ours").await, 503);
        assert_eq!(rec.counter(REFUSED, &[("reason", "closed")]), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_poll_answers_count_resyncs_and_refusals_without_naming_a_key() {
        let rec = TestRecorder::new();
        let hub: Keyed<String, u32> = metrics::with_local_recorder(&rec, || {
            Keyed::builder().history(2).max_keys(2).init(|_| 0).build()
        });
        let poll = KeyedPoll::new(hub.clone(), encode);
        for n in 1..=4 {
            hub.notify("apples-secret", n).unwrap();
        }
        let e = hub.broadcaster("apples-secret").unwrap().epoch();
        let q = format!("/s?keys=apples-secret&cursors={e}-0");
        let Ok(resp) = poll.handle(Request::get(q).body(()).unwrap()).await;
        assert_eq!(resp.status(), 200);
        let q = format!("/s?keys=apples-secret&cursors={OTHER_EPOCH}-1");
        let Ok(resp) = poll.handle(Request::get(q).body(()).unwrap()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "lagged")]), 1);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "other_epoch")]), 1);

        // The key limit: a baseline (no cursor) and a cursor, and the
        // single-key endpoint.
        hub.notify("pears-secret", 1).unwrap();
        let Ok(resp) = poll
            .handle(Request::get("/s?keys=plums-secret").body(()).unwrap())
            .await;
        assert_eq!(resp.status(), 503);
        let q = format!("/s?keys=figs-secret&cursors={e}-0");
        let Ok(resp) = poll.handle(Request::get(q).body(()).unwrap()).await;
        assert_eq!(resp.status(), 503);
        assert!(poll.long_poll("kiwis-secret").is_err());
        assert_eq!(rec.counter(REFUSED, &[("reason", "too_many_keys")]), 3);

        hub.close();
        let Ok(resp) = poll
            .handle(Request::get("/s?keys=apples-secret").body(()).unwrap())
            .await;
        assert_eq!(resp.status(), 503);
        assert_eq!(rec.counter(REFUSED, &[("reason", "closed")]), 1);
        rec.assert_no_names_in_labels(&["secret", "apples", "pears", "plums", "figs", "kiwis"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_stream_counts_the_resync_it_sends() {
        let rec = TestRecorder::new();
        let b = recorded(&rec, || Broadcaster::builder().history(2).build(0u32));
        let streams = EventStreams::new(encode);
        for n in 1..=5 {
            b.notify(n).unwrap();
        }
        let lagged = Cursor::at(Version::ZERO).with_epoch(b.epoch());
        let mut stream = streams.stream(&b, Some(lagged));
        let _retry = stream.next().await.unwrap().unwrap();
        let frame = stream.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&frame)
            .unwrap()
            .contains("event: resync"));
        assert_eq!(rec.counter(RESYNCS, &[("reason", "lagged")]), 1);

        // Up to date: no resync, and a waiter in the gauge while it waits.
        let mut current = streams.stream(&b, Some(b.current().cursor()));
        let _retry = current.next().await.unwrap().unwrap();
        let mut next = task::spawn(current.next());
        assert_pending!(next.poll());
        assert_eq!(rec.gauge(WAITERS), Some(1.0));
        b.notify(6).unwrap();
        assert!(assert_ready!(next.poll()).is_some());
        assert_eq!(rec.counter(RESYNCS, &[("reason", "lagged")]), 1);
        assert_eq!(rec.counter(RESYNCS, &[("reason", "ahead")]), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_run_names_no_key_in_any_label() {
        let rec = TestRecorder::new();
        let hub: Keyed<String, u32> = metrics::with_local_recorder(&rec, || {
            Keyed::builder().history(2).max_keys(3).init(|_| 0).build()
        });
        let poll = KeyedPoll::new(hub.clone(), encode);
        let streams = EventStreams::from(&poll);
        for key in ["room-alpha", "room-beta"] {
            let b = hub.broadcaster(key).unwrap();
            let mut s = streams.stream(&b, Some(Cursor::at(Version::ZERO).with_epoch(b.epoch())));
            let _ = s.next().await;
            for n in 1..=4 {
                hub.notify(key, n).unwrap();
            }
            let _ = s.next().await;
            let single = poll.long_poll(key).unwrap();
            let q = format!("/s?since=0&epoch={}", b.epoch());
            let Ok(_) = single.handle(Request::get(q).body(()).unwrap()).await;
        }
        drop(hub.wait("room-gamma", Cursor::NEXT).unwrap());
        assert!(hub.wait("room-delta", Cursor::NEXT).is_err());
        assert!(rec.counter(RESYNCS, &[("reason", "lagged")]) >= 2);
        rec.assert_no_names_in_labels(&["room", "alpha", "beta", "gamma", "delta"]);
    }
}

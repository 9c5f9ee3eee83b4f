//! The `tracing` feature: every event of the core, the HTTP layer and SSE
//! (the table in the crate docs) with its target, level and fields,
//! captured by a layer of the test's own; no span, ever; nothing at `INFO`
//! or above from the core's everyday work.
#![cfg(feature = "tracing")]

mod telemetry_common;

use std::sync::mpsc;

use longpoll::keyed::Keyed;
use longpoll::{Broadcaster, Cursor, Epoch, Version, WaitError};
use telemetry_common::Capture;
use tokio_test::{assert_pending, assert_ready, task};
use tracing::Level;

const PUBLISH: &str = "longpoll::publish";
const WAIT: &str = "longpoll::wait";
const RESYNC: &str = "longpoll::resync";

#[test]
fn a_publish_is_a_trace_event_with_its_version_fan_out_size_and_time() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let b = Broadcaster::new(0u32);
    b.notify(1).unwrap();
    let quiet = capture.one(PUBLISH, "published");
    assert_eq!(quiet.level, Level::TRACE);
    assert_eq!(quiet.u64("version"), 1);
    assert_eq!(quiet.u64("waiters"), 0);

    capture.clear();
    let mut waits: Vec<_> = (0..5).map(|_| task::spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    let (tx, rx) = mpsc::channel();
    let _reg = b
        .register(Cursor::NEXT, move |_| tx.send(()).unwrap())
        .unwrap();
    b.modify(|n| Some(n + 1)).unwrap();
    rx.recv().unwrap();
    let e = capture.one(PUBLISH, "published");
    assert_eq!(e.u64("version"), 2);
    assert_eq!(e.u64("waiters"), 6);
    assert!(e.u64("fanout_ns") > 0, "{e:?}");
    assert_eq!(capture.spans(), 0, "no span, per waiter or otherwise");
}

#[test]
fn a_restart_and_a_close_are_debug_events_with_the_waiters_they_answer() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let b = Broadcaster::new(0u32);
    let mut w = task::spawn(b.wait(Cursor::NEXT));
    assert_pending!(w.poll());
    b.restart(Epoch::new(0xfeed).unwrap(), Version::new(7), 7)
        .unwrap();
    let e = capture.one(PUBLISH, "restarted under a new epoch");
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.field("epoch"), Some("000000000000feed"));
    assert_eq!(e.u64("version"), 7);
    assert_eq!(e.u64("waiters"), 1);

    let mut waits: Vec<_> = (0..3).map(|_| task::spawn(b.wait(Cursor::NEXT))).collect();
    for w in &mut waits {
        assert_pending!(w.poll());
    }
    b.close();
    let e = capture.one(PUBLISH, "closed");
    assert_eq!(e.level, Level::DEBUG);
    assert_eq!(e.u64("waiters"), 3);
}

#[test]
fn refused_waits_are_debug_events_with_their_reason_and_limit() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    let mut first = task::spawn(b.wait(Cursor::NEXT));
    assert_pending!(first.poll());
    let mut second = task::spawn(b.wait(Cursor::NEXT));
    assert!(assert_ready!(second.poll()).is_err());
    assert!(b.register(Cursor::NEXT, |_| {}).is_err());
    b.close();
    assert_eq!(assert_ready!(first.poll()).unwrap_err(), WaitError::Closed);
    let mut late = task::spawn(b.wait(Cursor::NEXT));
    assert!(assert_ready!(late.poll()).is_err());

    let hub: Keyed<String, u32> = Keyed::builder().max_keys(0).build();
    assert!(hub.wait("any", Cursor::NEXT).is_err());

    let refused = capture.find(WAIT, "wait refused");
    let reasons: Vec<_> = refused
        .iter()
        .map(|e| {
            assert_eq!(e.level, Level::DEBUG);
            (e.field("reason").unwrap(), e.field("limit"))
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("full", Some("1")),
            ("full", Some("1")),
            ("closed", None),
            ("too_many_keys", Some("0")),
        ]
    );
}

#[test]
fn the_core_says_nothing_at_info_or_above_about_its_everyday_work() {
    let capture = Capture::new();
    let _guard = capture.set_default();
    let b = Broadcaster::builder().max_waiters(1).build(0u32);
    let mut w = task::spawn(b.wait(Cursor::NEXT));
    assert_pending!(w.poll());
    assert!(b.register(Cursor::NEXT, |_| {}).is_err());
    b.notify(1).unwrap();
    b.restart(Epoch::new(1).unwrap(), Version::ZERO, 0).unwrap();
    b.close();
    let events = capture.events();
    assert_eq!(events.len(), 4, "{events:#?}");
    // More verbose than INFO: DEBUG or TRACE.
    assert!(events.iter().all(|e| e.level > Level::INFO), "{events:#?}");
}

#[cfg(feature = "http")]
mod over_http {
    use super::*;

    use ::http::Request;
    use bytes::Bytes;
    use futures::StreamExt;
    use longpoll::http::{KeyedPoll, LongPoll};
    use longpoll::sse::EventStreams;
    use longpoll::Update;

    fn encode(u: &Update<u32>) -> Bytes {
        Bytes::from(u.value().to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn resync_answers_are_debug_events_naming_reason_and_endpoint() {
        let capture = Capture::new();
        let _guard = capture.set_default();
        let b = Broadcaster::builder().history(2).build(0u32);
        let poll = LongPoll::new(b.clone(), encode);
        for n in 1..=5 {
            b.notify(n).unwrap();
        }
        let e = b.epoch();
        for q in [
            format!("since=0&epoch={e}"),
            format!("since=9&epoch={e}"),
            "since=1&epoch=00000000000000ab".to_string(),
        ] {
            let Ok(resp) = poll
                .handle(Request::get(format!("/s?{q}")).body(()).unwrap())
                .await;
            assert_eq!(resp.status(), 200);
        }

        let hub: Keyed<String, u32> = Keyed::builder().history(2).build();
        let keyed = KeyedPoll::new(hub.clone(), encode);
        for n in 1..=4 {
            hub.notify("k", n).unwrap();
        }
        let ke = hub.broadcaster("k").unwrap().epoch();
        let q = format!("/s?keys=k&cursors={ke}-0");
        let Ok(resp) = keyed.handle(Request::get(q).body(()).unwrap()).await;
        assert_eq!(resp.status(), 200);

        let streams = EventStreams::new(encode);
        let mut stream = streams.stream(&b, Some(Cursor::at(Version::ZERO).with_epoch(e)));
        let _retry = stream.next().await;
        let _resync = stream.next().await;

        let got: Vec<_> = capture
            .find(RESYNC, "resync")
            .into_iter()
            .map(|e| {
                assert_eq!(e.level, Level::DEBUG);
                (
                    e.field("reason").unwrap().to_owned(),
                    e.field("endpoint").unwrap().to_owned(),
                    e.field("skipped").map(str::to_owned),
                )
            })
            .collect();
        let want = |r: &str, ep: &str, s: Option<&str>| (r.into(), ep.into(), s.map(Into::into));
        assert_eq!(
            got,
            [
                want("lagged", "long_poll", Some("3")),
                want("ahead", "long_poll", None),
                want("other_epoch", "long_poll", None),
                want("lagged", "keyed_poll", Some("2")),
                want("lagged", "sse", Some("3")),
            ]
        );
        assert_eq!(capture.spans(), 0);
    }
}

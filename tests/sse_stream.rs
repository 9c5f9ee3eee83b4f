//! The event stream at the poll level: first frame, resume by cursor,
//! lag, keep-alive comments, closing, one encoding per update, and the
//! cursor a request names (never an error).
#![cfg(feature = "http")]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Uri};
use longpoll::sse::{self, EventStream, EventStreams, SseConfig};
use longpoll::{Broadcaster, Cursor, Epoch, Update, Version};
use tokio_test::{assert_pending, assert_ready, task};

/// One parsed event: its type (`message` if none), id and data.
#[derive(Debug, PartialEq, Eq)]
struct Event {
    kind: String,
    id: Option<String>,
    data: String,
}

/// Parses whole events out of `text`, as `EventSource` does (comments and
/// `retry:` lines skipped).
fn parse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut kind = "message".to_string();
            let mut id = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            (!data.is_empty()).then(|| Event {
                kind,
                id,
                data: data.join("\n"),
            })
        })
        .collect()
}

fn sse() -> EventStreams<String> {
    EventStreams::new(|u: &Update<String>| Bytes::from(u.value().to_string()))
}

fn text(frame: Option<Result<Bytes, std::convert::Infallible>>) -> String {
    let bytes = frame.expect("a frame").unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn next(s: &mut task::Spawn<EventStream<String>>) -> String {
    text(assert_ready!(s.poll_next()))
}

fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[tokio::test]
async fn no_cursor_starts_with_retry_and_a_baseline_of_the_retained_history() {
    let b = Broadcaster::builder().history(3).build("a".to_string());
    for v in ["b", "c", "d"] {
        b.notify(v.to_string()).unwrap();
    }
    let sse = sse().with_config(SseConfig::new().retry(Duration::from_millis(1500)));
    let mut s = task::spawn(sse.stream(&b, None));
    let first = next(&mut s);
    assert!(first.starts_with("retry: 1500\n\n"), "{first}");
    let events = parse(&first);
    assert_eq!(events[0].kind, "resync");
    assert_eq!(events[0].data, r#"{"reason":"initial"}"#);
    assert_eq!(datas(&events[1..]), ["b", "c", "d"]);
    let e = b.epoch();
    assert_eq!(events[3].id.as_deref(), Some(&*format!("{e}-3")));

    assert_pending!(s.poll_next());
    b.notify("e".to_string()).unwrap();
    assert!(s.is_woken());
    let events = parse(&next(&mut s));
    assert_eq!(
        events,
        [Event {
            kind: "message".into(),
            id: Some(format!("{e}-4")),
            data: "e".into()
        }]
    );
}

#[tokio::test]
async fn resume_within_history_delivers_every_missed_event_once_in_order() {
    let b = Broadcaster::builder().history(8).build("v0".to_string());
    let sse = sse();
    let mut s = task::spawn(sse.stream(&b, None));
    let baseline = parse(&next(&mut s));
    let last_id = baseline.last().unwrap().id.clone().unwrap();
    drop(s); // the connection drops

    for v in 1..=5 {
        b.notify(format!("v{v}")).unwrap();
    }
    let cursor = sse::parse_event_id(&last_id).unwrap();
    let mut s = task::spawn(sse.stream(&b, Some(cursor)));
    assert_eq!(next(&mut s), "retry: 3000\n\n");
    let events = parse(&next(&mut s));
    assert_eq!(datas(&events), ["v1", "v2", "v3", "v4", "v5"]);
    assert!(events.iter().all(|e| e.kind == "message"));
    assert_pending!(s.poll_next());
    b.notify("v6".into()).unwrap();
    assert_eq!(datas(&parse(&next(&mut s))), ["v6"]);
}

#[tokio::test]
async fn resume_beyond_history_sends_a_lagged_resync_then_the_retained_events() {
    let b = Broadcaster::builder().history(3).build(String::new());
    let old = b.current().cursor();
    for v in 1..=10 {
        b.notify(format!("v{v}")).unwrap();
    }
    let mut s = task::spawn(sse().stream(&b, Some(old)));
    next(&mut s); // retry
    let events = parse(&next(&mut s));
    assert_eq!(events[0].kind, "resync");
    assert_eq!(events[0].data, r#"{"reason":"lagged","skipped":7}"#);
    assert_eq!(datas(&events[1..]), ["v8", "v9", "v10"]);
}

#[tokio::test]
async fn a_reader_that_stops_pulling_gets_one_bounded_lagged_frame_not_a_queue() {
    let b = Broadcaster::builder().history(8).build(String::new());
    let mut s = task::spawn(sse().stream(&b, Some(b.current().cursor())));
    next(&mut s);
    assert_pending!(s.poll_next());
    // The reader stops pulling while a thousand updates go by.
    for v in 1..=1000 {
        b.notify(format!("v{v}")).unwrap();
    }
    let frame = next(&mut s);
    let events = parse(&frame);
    assert_eq!(events.len(), 9, "one resync and the 8 retained updates");
    assert_eq!(events[0].data, r#"{"reason":"lagged","skipped":992}"#);
    assert_eq!(events[8].data, "v1000");
    assert_pending!(s.poll_next());
}

#[tokio::test]
async fn a_foreign_or_future_cursor_resyncs() {
    let b = Broadcaster::new("x".to_string());
    let foreign = Cursor::at(Version::ZERO).with_epoch(Epoch::new(7).unwrap());
    let mut s = task::spawn(sse().stream(&b, Some(foreign)));
    next(&mut s);
    let events = parse(&next(&mut s));
    assert_eq!(events[0].data, r#"{"reason":"other-epoch"}"#);
    assert_eq!(datas(&events[1..]), ["x"]);

    let ahead = Cursor::at(Version::new(50)).with_epoch(b.epoch());
    let mut s = task::spawn(sse().stream(&b, Some(ahead)));
    next(&mut s);
    assert_eq!(parse(&next(&mut s))[0].data, r#"{"reason":"ahead"}"#);
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_sends_keep_alive_comments_at_the_keep_alive_interval() {
    let b = Broadcaster::new(String::new());
    let config = SseConfig::new().keep_alive(Duration::from_secs(10));
    let mut s = sse()
        .with_config(config)
        .stream(&b, Some(b.current().cursor()));
    s.next().await.unwrap().unwrap(); // retry
    let start = tokio::time::Instant::now();
    let beat = s.next().await.unwrap().unwrap();
    assert_eq!(&beat[..], b": keep-alive\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    // An event restarts the interval.
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.notify("m".into()).unwrap();
    let event = s.next().await.unwrap().unwrap();
    assert!(event.starts_with(b"id: "));
    let after_event = tokio::time::Instant::now();
    let beat = s.next().await.unwrap().unwrap();
    assert_eq!(&beat[..], b": keep-alive\n\n");
    assert_eq!(after_event.elapsed(), Duration::from_secs(10));
}

#[tokio::test]
async fn closing_the_broadcaster_ends_the_stream() {
    let b = Broadcaster::new(String::new());
    let mut s = task::spawn(sse().stream(&b, Some(b.current().cursor())));
    next(&mut s);
    assert_pending!(s.poll_next());
    b.close();
    assert!(s.is_woken());
    assert!(assert_ready!(s.poll_next()).is_none());
    assert!(http_body::Body::is_end_stream(&*s));
}

#[tokio::test]
async fn a_full_broadcaster_sends_an_error_event_and_ends() {
    let b = Broadcaster::builder().max_waiters(0).build(String::new());
    let mut s = task::spawn(sse().stream(&b, Some(b.current().cursor())));
    next(&mut s);
    let events = parse(&next(&mut s));
    assert_eq!(events[0].kind, "error");
    assert!(events[0].data.contains("too many waiters"), "{events:?}");
    assert!(assert_ready!(s.poll_next()).is_none());
}

#[tokio::test]
async fn dropping_the_stream_unregisters_its_waiter() {
    let b = Broadcaster::new(String::new());
    let mut s = task::spawn(sse().stream(&b, None));
    next(&mut s);
    assert_pending!(s.poll_next());
    assert_eq!(b.waiter_count(), 1);
    drop(s);
    assert_eq!(b.waiter_count(), 0);
}

#[tokio::test]
async fn multi_line_data_becomes_several_data_lines() {
    let b = Broadcaster::new("one\ntwo\r\nthree\rfour".to_string());
    let mut s = task::spawn(sse().stream(&b, None));
    let frame = next(&mut s);
    assert!(
        frame.contains("data: one\ndata: two\ndata: three\ndata: four\n\n"),
        "{frame}"
    );
    assert_eq!(parse(&frame)[1].data, "one\ntwo\nthree\nfour");
}

#[test]
fn the_request_cursor_comes_from_last_event_id_then_the_query() {
    let e = Epoch::new(0xabc).unwrap();
    let uri: Uri = "/events?since=5&epoch=abc".parse().unwrap();
    let mut headers = HeaderMap::new();
    assert_eq!(
        sse::parse_cursor(&uri, &headers),
        Some(Cursor::at(Version::new(5)).with_epoch(e))
    );
    headers.insert(
        "last-event-id",
        HeaderValue::from_static("0000000000000abc-9"),
    );
    assert_eq!(
        sse::parse_cursor(&uri, &headers),
        Some(Cursor::at(Version::new(9)).with_epoch(e)),
        "Last-Event-ID wins"
    );
    headers.insert("last-event-id", HeaderValue::from_static(""));
    assert_eq!(
        sse::parse_cursor(&"/events".parse().unwrap(), &headers),
        None
    );
    assert_eq!(
        sse::parse_cursor(&uri, &headers),
        Some(Cursor::at(Version::new(5)).with_epoch(e)),
        "an empty id: the query"
    );
}

#[test]
fn a_cursor_the_server_did_not_issue_starts_from_scratch_never_an_error() {
    let uri: Uri = "/events?since=5&epoch=abc".parse().unwrap();
    for id in ["nonsense", "v2:eu-west-7", "0-1", "abc-x", "\u{1}"] {
        let mut headers = HeaderMap::new();
        headers.insert(
            "last-event-id",
            HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("x")),
        );
        assert_eq!(sse::parse_cursor(&uri, &headers), None, "{id:?}");
    }
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", HeaderValue::from_bytes(b"\xff-1").unwrap());
    assert_eq!(sse::parse_cursor(&uri, &headers), None);
    for query in [
        "since=x",
        "since=5&epoch=v2:eu",
        "since=5&epoch=0",
        "epoch=abc",
        "since=1&since=2",
    ] {
        let uri: Uri = format!("/events?{query}").parse().unwrap();
        assert_eq!(sse::parse_cursor(&uri, &HeaderMap::new()), None, "{query}");
    }
}

#[tokio::test]
async fn each_update_is_encoded_once_whatever_the_number_of_streams() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streams = EventStreams::new({
        let calls = calls.clone();
        move |u: &Update<String>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Bytes::from(u.value().to_string())
        }
    });
    let b = Broadcaster::builder().history(4).build("a".to_string());
    let mut all: Vec<_> = (0..50)
        .map(|_| task::spawn(streams.stream(&b, Some(b.current().cursor()))))
        .collect();
    for s in &mut all {
        next(s);
        assert_pending!(s.poll_next());
    }
    b.notify("b".into()).unwrap();
    b.notify("c".into()).unwrap();
    for s in &mut all {
        assert_eq!(datas(&parse(&next(s))), ["b", "c"]);
    }
    // And a baseline of the same history: nothing new to encode but "a".
    let mut late = task::spawn(streams.stream(&b, None));
    assert_eq!(datas(&parse(&next(&mut late))[1..]), ["a", "b", "c"]);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn event_ids_round_trip_and_reject_garbage() {
    let e = Epoch::random();
    let id = sse::event_id(e, Version::new(12));
    assert_eq!(
        sse::parse_event_id(&id),
        Some(Cursor::at(Version::new(12)).with_epoch(e))
    );
    for bad in ["", "-", "12", "zz-1", "0-1", "abc-", "abc--1", "abc-1-2"] {
        assert_eq!(sse::parse_event_id(bad), None, "{bad:?}");
    }
}

/// A running event stream keeps its place under the waiter limit between
/// two frames: a wait that arrives then is refused, not the stream.
#[tokio::test]
async fn a_running_stream_keeps_its_place_under_the_waiter_limit_between_frames() {
    let b = Broadcaster::builder()
        .max_waiters(1)
        .build(String::from("a"));
    let mut events = task::spawn(sse().stream(&b, Some(b.current().cursor())));
    next(&mut events); // retry:
    assert_pending!(events.poll_next());
    b.notify("b".into()).unwrap();
    assert_eq!(parse(&next(&mut events))[0].data, "b");

    // Between two frames: the stream still holds the one place.
    let mut other = task::spawn(b.wait(Cursor::NEXT));
    assert!(assert_ready!(other.poll()).unwrap_err().is_full());

    assert_pending!(events.poll_next());
    b.notify("c".into()).unwrap();
    let frame = parse(&next(&mut events));
    assert_eq!(frame[0].kind, "message", "{frame:?}");
    assert_eq!(frame[0].data, "c");
    drop(events);
    assert_eq!(b.waiter_count(), 0, "a dropped stream gives its place back");
}

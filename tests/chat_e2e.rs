//! The chat example end to end over a real socket: long polls and event
//! streams of several clients, reconnection within and beyond a room's
//! history, validation, the room limit and shutdown; and, with the `redis`
//! feature, several instances sharing their rooms through Redis, and
//! through a private Redis Cluster with rooms on each of its masters.
#![cfg(feature = "axum")]
#![allow(missing_docs)]

#[path = "../examples/chat/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Long enough for anything on loopback.
const STEP: Duration = Duration::from_secs(5);

struct Server {
    base: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(settings: app::Settings) -> Server {
        Self::serve(app::Chat::new(settings)).await
    }

    async fn serve(chat: app::Chat) -> Server {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app::serve(listener, chat, async move {
            let _ = rx.await;
        }));
        Server {
            base,
            shutdown: Some(tx),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn settings(history: usize) -> app::Settings {
    app::Settings {
        history,
        ..app::Settings::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(
    c: &reqwest::Client,
    s: &Server,
    room: &str,
    name: &str,
    text: &str,
) -> reqwest::Response {
    let form = format!("name={}&text={}", urlencode(name), urlencode(text));
    tokio::time::timeout(
        STEP,
        c.post(s.url(&format!("/rooms/{room}/messages")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send(),
    )
    .await
    .expect("post answered")
    .unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A long poll; `cursor` is `(epoch, version)`.
async fn poll(
    c: &reqwest::Client,
    s: &Server,
    room: &str,
    cursor: Option<(&str, u64)>,
    timeout: u32,
) -> reqwest::Response {
    let mut url = s.url(&format!("/rooms/{room}/messages"));
    if let Some((epoch, version)) = cursor {
        url += &format!("?since={version}&epoch={epoch}&timeout={timeout}");
    }
    tokio::time::timeout(
        STEP + Duration::from_secs(timeout.into()),
        c.get(url).send(),
    )
    .await
    .expect("poll answered")
    .unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

/// The messages of a long-poll envelope (a room's starting point carries
/// none).
fn messages(body: &Value) -> Vec<Value> {
    body["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["data"].clone())
        .filter(|m| !m.is_null())
        .collect()
}

fn texts(body: &Value) -> Vec<String> {
    messages(body)
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

fn cursor(body: &Value) -> (String, u64) {
    (
        body["epoch"].as_str().unwrap().to_string(),
        body["version"].as_u64().unwrap(),
    )
}

/// One event of a stream.
#[derive(Debug, Clone)]
struct Event {
    kind: String,
    id: Option<String>,
    data: String,
}

/// An open event stream, read chunk by chunk.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(
        c: &reqwest::Client,
        s: &Server,
        room: &str,
        last_event_id: Option<&str>,
    ) -> Stream {
        let mut req = c.get(s.url(&format!("/rooms/{room}/events")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(STEP, req.send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// Reads until `n` more events (comments and `retry:` aside) arrived.
    async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Event {
                    kind: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.kind = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.into());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data = v.into();
                        has_data = true;
                    }
                }
                if has_data {
                    out.push(e);
                }
            }
            if out.len() >= n {
                break;
            }
            let chunk = tokio::time::timeout(STEP, self.resp.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("the stream is still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        out
    }

    /// Whether the server ends the stream within `STEP`.
    async fn ends(mut self) -> bool {
        loop {
            match tokio::time::timeout(STEP, self.resp.chunk()).await {
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Ok(Ok(Some(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// The text of each message event (starting points, `null`, left out).
fn event_texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "message")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            v["text"].as_str().map(String::from)
        })
        .collect()
}

#[tokio::test]
async fn a_message_reaches_every_open_poll_and_stream_of_its_room_only() {
    let s = Server::start(settings(100)).await;
    let c = client();
    let lobby = json(poll(&c, &s, "lobby", None, 0).await).await;
    let other = json(poll(&c, &s, "other", None, 0).await).await;
    let (le, lv) = cursor(&lobby);
    let (oe, ov) = cursor(&other);

    let pollers: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (
                c.clone(),
                s.url(&format!(
                    "/rooms/lobby/messages?since={lv}&epoch={le}&timeout=10"
                )),
            );
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        })
        .collect();
    let other_poll = {
        let (c, url) = (
            c.clone(),
            s.url(&format!(
                "/rooms/other/messages?since={ov}&epoch={oe}&timeout=2"
            )),
        );
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    let mut stream = Stream::open(&c, &s, "lobby", None).await;
    let baseline = stream.events(2).await; // resync initial + the starting point
    assert_eq!(baseline[0].kind, "resync");

    tokio::time::sleep(Duration::from_millis(200)).await; // the polls are held
    assert_eq!(
        post(&c, &s, "lobby", "ann", "hello lobby").await.status(),
        200
    );

    for p in pollers {
        let body = json(tokio::time::timeout(STEP, p).await.unwrap().unwrap()).await;
        assert_eq!(texts(&body), ["hello lobby"]);
        assert_eq!(messages(&body)[0]["name"], "ann");
        assert_eq!(body["resync"], Value::Null);
    }
    assert_eq!(event_texts(&stream.events(1).await), ["hello lobby"]);
    let other = tokio::time::timeout(STEP, other_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.status(), 204, "another room's poll times out empty");
}

#[tokio::test]
async fn a_poller_back_within_history_gets_every_missed_message_once_in_order() {
    let s = Server::start(settings(5)).await;
    let c = client();
    post(&c, &s, "r", "a", "m0").await;
    let seen = json(poll(&c, &s, "r", None, 0).await).await;
    assert_eq!(texts(&seen), ["m0"]);
    let (e, v) = cursor(&seen);
    // Away while four messages go by (history 5: all kept).
    for i in 1..=4 {
        post(&c, &s, "r", "a", &format!("m{i}")).await;
    }
    let back = json(poll(&c, &s, "r", Some((&e, v)), 10).await).await;
    assert_eq!(texts(&back), ["m1", "m2", "m3", "m4"]);
    assert_eq!(back["resync"], Value::Null);
    // Nothing more: the next poll with the new cursor times out.
    let (e, v) = cursor(&back);
    assert_eq!(poll(&c, &s, "r", Some((&e, v)), 1).await.status(), 204);
}

#[tokio::test]
async fn a_poller_back_beyond_history_is_told_and_gets_what_the_room_kept() {
    let s = Server::start(settings(3)).await;
    let c = client();
    let seen = json(poll(&c, &s, "r", None, 0).await).await;
    let (e, v) = cursor(&seen);
    for i in 1..=10 {
        post(&c, &s, "r", "a", &format!("m{i}")).await;
    }
    let back = json(poll(&c, &s, "r", Some((&e, v)), 10).await).await;
    assert_eq!(back["resync"]["reason"], "lagged");
    assert_eq!(back["resync"]["skipped"], 7);
    assert_eq!(texts(&back), ["m8", "m9", "m10"]);
}

#[tokio::test]
async fn a_stream_reconnecting_with_last_event_id_gets_every_missed_message_once_in_order() {
    let s = Server::start(settings(5)).await;
    let c = client();
    post(&c, &s, "r", "a", "m0").await;
    let mut stream = Stream::open(&c, &s, "r", None).await;
    let baseline = stream.events(3).await; // resync, starting point, m0
    assert_eq!(event_texts(&baseline), ["m0"]);
    let last_id = baseline.last().unwrap().id.clone().unwrap();
    drop(stream); // the connection drops

    for i in 1..=4 {
        post(&c, &s, "r", "a", &format!("m{i}")).await;
    }
    let mut stream = Stream::open(&c, &s, "r", Some(&last_id)).await;
    let missed = stream.events(4).await;
    assert!(missed.iter().all(|e| e.kind == "message"), "{missed:?}");
    assert_eq!(event_texts(&missed), ["m1", "m2", "m3", "m4"]);
    post(&c, &s, "r", "a", "m5").await;
    assert_eq!(event_texts(&stream.events(1).await), ["m5"]);

    // Away again, from the same last id, while the room moves 20 past it:
    // beyond the history of 5, a resync, then what the room kept.
    drop(stream);
    for i in 6..=20 {
        post(&c, &s, "r", "a", &format!("m{i}")).await;
    }
    let mut back = Stream::open(&c, &s, "r", Some(&last_id)).await;
    let events = back.events(6).await;
    assert_eq!(events[0].kind, "resync");
    let reason: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(reason["reason"], "lagged");
    assert_eq!(reason["skipped"], 15);
    assert_eq!(
        event_texts(&events[1..]),
        ["m16", "m17", "m18", "m19", "m20"]
    );
}

#[tokio::test]
async fn bad_rooms_bad_messages_and_markup_are_handled() {
    let s = Server::start(settings(5)).await;
    let c = client();
    for room in ["Upper", "a%20b", "x!", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let r = poll(&c, &s, room, None, 0).await;
        assert_eq!(r.status(), 400, "{room}");
    }
    assert_eq!(post(&c, &s, "r", "a", "   ").await.status(), 400);
    let long = "x".repeat(501);
    assert_eq!(post(&c, &s, "r", "a", &long).await.status(), 413);
    assert_eq!(post(&c, &s, "r", &"n".repeat(33), "hi").await.status(), 400);
    let huge = format!("text={}", "y".repeat(20_000));
    let r = c
        .post(s.url("/rooms/r/messages"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "body over 16 KiB");
    let r = c
        .post(s.url("/rooms/r/messages"))
        .header("content-type", "application/json")
        .body(r#"{"text":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Markup is a message like any other: stored and sent as text (the
    // page writes it with textContent).
    let xss = "<img src=x onerror=alert(1)>";
    assert_eq!(post(&c, &s, "r", "<b>", xss).await.status(), 200);
    let body = json(poll(&c, &s, "r", None, 0).await).await;
    assert_eq!(texts(&body), [xss]);
    assert_eq!(messages(&body)[0]["name"], "<b>");
    // Nothing from the rejected posts got in.
    assert_eq!(body["version"], 1);
}

#[tokio::test]
async fn the_page_imports_the_browser_client_the_server_serves() {
    let s = Server::start(settings(5)).await;
    let c = client();
    let page = c.get(s.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"import { subscribe } from "/longpoll.js";"#));
    let js = c.get(s.url("/longpoll.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(js.text().await.unwrap(), longpoll::http::CLIENT_JS);
}

#[tokio::test]
async fn past_the_room_limit_new_rooms_get_503_and_old_ones_work() {
    let s = Server::start(app::Settings {
        max_rooms: 2,
        ..settings(5)
    })
    .await;
    let c = client();
    assert_eq!(post(&c, &s, "a", "x", "1").await.status(), 200);
    assert_eq!(post(&c, &s, "b", "x", "1").await.status(), 200);
    let r = post(&c, &s, "c", "x", "1").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(poll(&c, &s, "c", None, 0).await.status(), 503);
    assert_eq!(post(&c, &s, "a", "x", "2").await.status(), 200);
}

#[tokio::test]
async fn shutdown_answers_held_polls_with_503_and_ends_streams() {
    let mut s = Server::start(settings(5)).await;
    let c = client();
    let seen = json(poll(&c, &s, "r", None, 0).await).await;
    let (e, v) = cursor(&seen);
    let held = {
        let (c, url) = (
            c.clone(),
            s.url(&format!("/rooms/r/messages?since={v}&epoch={e}&timeout=60")),
        );
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    let mut stream = Stream::open(&c, &s, "r", None).await;
    stream.events(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let _ = s.shutdown.take().unwrap().send(());
    let resp = tokio::time::timeout(STEP, held)
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(stream.ends().await, "the event stream ends");
    tokio::time::timeout(STEP, &mut s.task)
        .await
        .expect("the server stops")
        .unwrap();
}

#[tokio::test]
async fn one_poll_over_several_rooms_names_the_room_of_every_message() {
    let s = Server::start(settings(10)).await;
    let c = client();
    // No cursors: each room's baseline at once, naming its room.
    let body: Value = c
        .get(s.url("/rooms?keys=red,blue"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answers = body["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["key"], "red");
    assert_eq!(answers[0]["resync"]["reason"], "initial");
    let id = |a: &Value| format!("{}-{}", a["epoch"].as_str().unwrap(), a["version"]);
    let cursors = format!("{},{}", id(&answers[0]), id(&answers[1]));

    // Held until one room has a message; only that room is answered.
    let url = s.url(&format!(
        "/rooms?keys=red,blue&cursors={cursors}&timeout=10"
    ));
    let held = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished());
    assert_eq!(post(&c, &s, "blue", "bo", "hi blue").await.status(), 200);
    let body = json(held.await.unwrap()).await;
    let answers = body["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["key"], "blue");
    assert_eq!(texts(&answers[0]), ["hi blue"]);

    // A room name the chat refuses, or too many rooms: 400.
    for bad in ["/rooms?keys=Red", "/rooms?keys=a,b,c,d,e,f,g,h,i"] {
        assert_eq!(
            c.get(s.url(bad)).send().await.unwrap().status(),
            400,
            "{bad}"
        );
    }
}

/// Chat instances that share their rooms through the shared Redis (under a
/// key prefix of their own).
#[cfg(feature = "redis")]
#[path = "redis_common/mod.rs"]
mod redis_common;

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;

    /// An instance on the Redis at `url`, under `prefix`.
    async fn instance(url: &str, prefix: &str, settings: app::Settings) -> Server {
        let backplane = longpoll::redis::Backplane::builder(url)
            .prefix(prefix)
            .connect()
            .await
            .unwrap();
        let rooms = app::Rooms::shared(&settings, &backplane).unwrap();
        Server::serve(app::Chat::with_rooms(settings, rooms)).await
    }

    #[tokio::test]
    async fn a_message_posted_on_one_instance_reaches_polls_and_streams_on_another() {
        let Some(url) = redis_common::shared_redis("chat on two instances") else {
            return;
        };
        let prefix = redis_common::unique_prefix("chat");
        let (a, b) = (
            instance(&url, &prefix, settings(5)).await,
            instance(&url, &prefix, settings(5)).await,
        );
        let c = client();
        // A room nobody wrote to: the same baseline on both, and nothing in
        // Redis.
        let on_a = json(poll(&c, &a, "lobby", None, 0).await).await;
        let on_b = json(poll(&c, &b, "lobby", None, 0).await).await;
        assert_eq!(cursor(&on_a), cursor(&on_b));
        let (e, v) = cursor(&on_b);
        let keys: Vec<String> =
            redis_common::command(&url, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
        assert!(keys.is_empty(), "reading a room creates nothing: {keys:?}");

        // Held on B, posted on A.
        let held = {
            let (c, url) = (
                c.clone(),
                b.url(&format!(
                    "/rooms/lobby/messages?since={v}&epoch={e}&timeout=10"
                )),
            );
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        };
        let mut stream = Stream::open(&c, &b, "lobby", None).await;
        stream.events(1).await; // the room's starting point
        tokio::time::sleep(Duration::from_millis(200)).await;
        let posted = post(&c, &a, "lobby", "alice", "hello from A").await;
        assert_eq!(posted.status(), 200);
        let posted: Value = posted.json().await.unwrap();
        let body = json(held.await.unwrap()).await;
        assert_eq!(texts(&body), ["hello from A"]);
        assert_eq!(body["epoch"], posted["epoch"]);
        // The room's first message starts its sequence in Redis, under a
        // new epoch: the stream says so, then carries the room as it is.
        let events = stream.events(3).await;
        assert_eq!(events[0].kind, "resync", "{events:?}");
        assert!(events[0].data.contains("other-epoch"), "{events:?}");
        assert!(events[2].data.contains("hello from A"), "{events:?}");

        // And back, in sequence now.
        let (e, v) = cursor(&body);
        let held = {
            let (c, url) = (
                c.clone(),
                a.url(&format!(
                    "/rooms/lobby/messages?since={v}&epoch={e}&timeout=10"
                )),
            );
            tokio::spawn(async move { c.get(url).send().await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            post(&c, &b, "lobby", "bob", "hi from B").await.status(),
            200
        );
        let body = json(held.await.unwrap()).await;
        assert_eq!(texts(&body), ["hi from B"]);
        assert!(body["resync"].is_null(), "{body}");
        redis_common::delete_prefix(&url, &prefix).await;
    }

    #[tokio::test]
    async fn bad_room_names_and_rooms_past_the_limit_never_reach_redis() {
        let Some(url) = redis_common::shared_redis("chat rooms past the limit") else {
            return;
        };
        let prefix = redis_common::unique_prefix("chatmax");
        let s = instance(
            &url,
            &prefix,
            app::Settings {
                max_rooms: 1,
                ..settings(5)
            },
        )
        .await;
        let c = client();
        assert_eq!(post(&c, &s, "a", "x", "1").await.status(), 200);
        for bad in ["Upper", "a%7Bb%7D", "way-too-long-for-a-room-name-here-x"] {
            assert_eq!(post(&c, &s, bad, "x", "1").await.status(), 400, "{bad}");
        }
        let r = post(&c, &s, "b", "x", "1").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(poll(&c, &s, "b", None, 0).await.status(), 503);
        let keys: Vec<String> =
            redis_common::command(&url, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
        assert_eq!(keys.len(), 1, "one room in Redis: {keys:?}");
        assert_eq!(post(&c, &s, "a", "x", "2").await.status(), 200);
        redis_common::delete_prefix(&url, &prefix).await;
    }
}

/// A private Redis Cluster (three masters, three replicas) for the chat
/// instances of `on_cluster`.
#[cfg(feature = "redis")]
#[path = "redis_cluster_common/mod.rs"]
mod redis_cluster_common;

/// Chat instances on a Redis Cluster, built as `main.rs` builds them for
/// `--redis-cluster <seeds>`.
#[cfg(feature = "redis")]
mod on_cluster {
    use super::*;
    use longpoll::redis::{Backplane, KeyedChannels};
    use redis_cluster_common::{query, slot_of, Cluster, Shard};

    /// The prefix of the chat's keys: `main.rs`'s default.
    const PREFIX: &str = "chat:";

    /// An instance on `cluster`, with every node as a seed, wired as
    /// `main.rs` wires `--redis-cluster`; and its rooms, to name their keys.
    async fn instance(
        cluster: &Cluster,
        settings: app::Settings,
    ) -> (Server, KeyedChannels<app::Entry>) {
        let seeds: Vec<String> = cluster.urls();
        let backplane = Backplane::cluster(seeds.iter().cloned())
            .prefix(PREFIX)
            .connect()
            .await
            .expect("the cluster answers");
        assert!(backplane.is_cluster());
        let rooms = app::Rooms::shared(&settings, &backplane).unwrap();
        let app::Rooms::Shared(keyed) = rooms.clone() else {
            unreachable!("shared rooms")
        };
        (
            Server::serve(app::Chat::with_rooms(settings, rooms)).await,
            keyed,
        )
    }

    /// A room whose key the master of `shard` owns.
    fn room_on(rooms: &KeyedChannels<app::Entry>, shard: &Shard) -> String {
        (0u32..)
            .map(|i| format!("room-{i}"))
            .find(|r| shard.owns(slot_of(rooms.redis_key(r).as_bytes())))
            .expect("a master owns slots")
    }

    /// Every key the master at `addr` holds.
    async fn keys_on(addr: &str) -> Vec<String> {
        query(addr, redis::cmd("KEYS").arg("*")).await.unwrap()
    }

    /// The sharded Pub/Sub channels subscribed on the master at `addr`.
    async fn shard_channels_on(addr: &str) -> Vec<String> {
        query(addr, redis::cmd("PUBSUB").arg("SHARDCHANNELS"))
            .await
            .unwrap()
    }

    /// A long poll from `(epoch, version)`, held in a task.
    fn held_poll(
        c: &reqwest::Client,
        s: &Server,
        room: &str,
        (epoch, version): (String, u64),
    ) -> JoinHandle<reqwest::Response> {
        let (c, url) = (
            c.clone(),
            s.url(&format!(
                "/rooms/{room}/messages?since={version}&epoch={epoch}&timeout=10"
            )),
        );
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    }

    #[tokio::test]
    async fn a_message_posted_on_one_instance_reaches_polls_and_streams_on_another_on_every_master()
    {
        let Some(cluster) = Cluster::start("chat on a cluster, rooms on every master").await else {
            return;
        };
        let (a, rooms) = instance(&cluster, settings(5)).await;
        let (b, _) = instance(&cluster, settings(5)).await;
        let shards = cluster.shards().await;
        assert_eq!(shards.len(), 3, "{shards:?}");
        let names: Vec<String> = shards.iter().map(|s| room_on(&rooms, s)).collect();
        let c = client();

        // On B, in every room: a poll held from the room's baseline (the
        // same on A), and an event stream.
        let mut held = Vec::new();
        let mut streams = Vec::new();
        for room in &names {
            let on_a = json(poll(&c, &a, room, None, 0).await).await;
            let on_b = json(poll(&c, &b, room, None, 0).await).await;
            assert_eq!(cursor(&on_a), cursor(&on_b), "{room}");
            held.push(held_poll(&c, &b, room, cursor(&on_b)));
            let mut stream = Stream::open(&c, &b, room, None).await;
            let first = stream.events(2).await; // resync initial, the starting point
            assert_eq!(first[0].kind, "resync", "{room}: {first:?}");
            assert_eq!(first[1].data, "null", "{room}: {first:?}");
            streams.push(stream);
        }
        // Reading created nothing; each room is subscribed on its own
        // master.
        for (room, shard) in names.iter().zip(&shards) {
            assert!(keys_on(&shard.master).await.is_empty(), "{}", shard.master);
            let subscribed = shard_channels_on(&shard.master).await;
            assert_eq!(subscribed, [rooms.redis_key(room)], "{}", shard.master);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Posted on A, in every room.
        let mut posts = Vec::new();
        for room in &names {
            let posted = post(&c, &a, room, "alice", &format!("hello {room}")).await;
            assert_eq!(posted.status(), 200, "{room}");
            posts.push(posted.json::<Value>().await.unwrap());
        }
        // Each room's key is on its own master, alone.
        for (room, shard) in names.iter().zip(&shards) {
            assert_eq!(
                keys_on(&shard.master).await,
                [rooms.redis_key(room)],
                "{}",
                shard.master
            );
        }
        let mut cursors = Vec::new();
        for ((room, held), posted) in names.iter().zip(held).zip(&posts) {
            let resp = tokio::time::timeout(STEP, held)
                .await
                .unwrap_or_else(|_| panic!("{room}: the poll on B is answered"))
                .unwrap();
            let body = json(resp).await;
            assert_eq!(texts(&body), [format!("hello {room}")], "{room}");
            assert_eq!(body["epoch"], posted["epoch"], "{room}");
            cursors.push(cursor(&body));
        }
        // The room's first message starts its sequence in Redis, under a
        // new epoch: each stream says so, then carries the room as it is.
        for ((room, stream), posted) in names.iter().zip(&mut streams).zip(&posts) {
            let events = stream.events(3).await;
            assert_eq!(events[0].kind, "resync", "{room}: {events:?}");
            assert!(events[0].data.contains("other-epoch"), "{room}: {events:?}");
            assert_eq!(event_texts(&events), [format!("hello {room}")], "{room}");
            assert_eq!(events[2].id.as_deref(), posted["id"].as_str(), "{room}");
        }

        // And back, from B to polls held on A: in sequence now.
        let held: Vec<_> = names
            .iter()
            .zip(cursors)
            .map(|(room, at)| held_poll(&c, &a, room, at))
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut posts = Vec::new();
        for room in &names {
            let posted = post(&c, &b, room, "bob", &format!("hi {room}")).await;
            assert_eq!(posted.status(), 200, "{room}");
            posts.push(posted.json::<Value>().await.unwrap());
        }
        for (room, held) in names.iter().zip(held) {
            let body = json(tokio::time::timeout(STEP, held).await.unwrap().unwrap()).await;
            assert_eq!(texts(&body), [format!("hi {room}")], "{room}");
            assert!(body["resync"].is_null(), "{room}: {body}");
        }
        for ((room, stream), posted) in names.iter().zip(&mut streams).zip(&posts) {
            let events = stream.events(1).await;
            assert_eq!(event_texts(&events), [format!("hi {room}")], "{room}");
            assert_eq!(events[0].id.as_deref(), posted["id"].as_str(), "{room}");
        }
    }

    #[tokio::test]
    async fn a_bad_room_name_is_a_400_that_never_reaches_a_master() {
        let Some(cluster) = Cluster::start("chat on a cluster, bad room names").await else {
            return;
        };
        let (s, rooms) = instance(&cluster, settings(5)).await;
        let shards = cluster.shards().await;
        let c = client();
        for bad in [
            "Upper",
            "a%7Bb%7D",
            "%7B%7D",
            "a%20b",
            "way-too-long-for-a-room-name-here-x",
        ] {
            assert_eq!(post(&c, &s, bad, "x", "1").await.status(), 400, "{bad}");
            assert_eq!(poll(&c, &s, bad, None, 0).await.status(), 400, "{bad}");
            let events = c.get(s.url(&format!("/rooms/{bad}/events"))).send();
            let events = tokio::time::timeout(STEP, events).await.unwrap().unwrap();
            assert_eq!(events.status(), 400, "{bad}");
            let several = c.get(s.url(&format!("/rooms?keys=lobby,{bad}"))).send();
            let several = tokio::time::timeout(STEP, several).await.unwrap().unwrap();
            assert_eq!(several.status(), 400, "{bad}");
        }
        // No master holds a key, or a subscription, of any of them.
        for shard in &shards {
            assert!(keys_on(&shard.master).await.is_empty(), "{}", shard.master);
            assert!(
                shard_channels_on(&shard.master).await.is_empty(),
                "{}",
                shard.master
            );
        }
        // Where a good room's post goes: one key, on its master.
        assert_eq!(post(&c, &s, "lobby", "x", "1").await.status(), 200);
        let mut keys = Vec::new();
        for shard in &shards {
            keys.extend(keys_on(&shard.master).await);
        }
        assert_eq!(keys, [rooms.redis_key("lobby")]);
        let owner = cluster
            .shard_of_key(rooms.redis_key("lobby").as_bytes())
            .await;
        assert_eq!(keys_on(&owner.master).await, keys);
    }
}

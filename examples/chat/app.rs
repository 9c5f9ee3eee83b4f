//! The chat server itself: state, routes and serving, shared by `main.rs`
//! and the tests (which include this file with `#[path]`).
//!
//! | endpoint                      | what                                                        |
//! |-------------------------------|-------------------------------------------------------------|
//! | `GET /`                       | the page (`?room=<name>&transport=poll\|sse`)               |
//! | `GET /longpoll.js`            | the browser client the page imports (`longpoll::http::CLIENT_JS`) |
//! | `GET /rooms/{room}/messages`  | long poll: `since`, `epoch`, `timeout`; no cursor: the room's retained messages at once |
//! | `GET /rooms/{room}/events`    | server-sent events: `Last-Event-ID` or `since` + `epoch`    |
//! | `GET /rooms?keys=a,b&cursors=..` | one long poll over several rooms                        |
//! | `POST /rooms/{room}/messages` | `name=..&text=..`, form-encoded                             |
//! | `GET /healthz`                | `200` once the server accepts requests                      |
//!
//! A room name is 1 to 32 characters of `a-z`, `0-9`, `-` and `_`. A
//! message's text is 1 to `max_message_chars` characters, its author's
//! name at most 32; a request body is at most 16 KiB.
//!
//! Every answer is `longpoll::http`'s: a long poll answers with its
//! envelope (`{"epoch","version","updates":[{"version","data"}],"resync"}`,
//! each `data` a message or `null` for a room's starting point), the
//! multi-room poll with one such envelope per room that changed, and the
//! event stream with one event per message. Each message is encoded to JSON
//! once, for every poll and stream that carries it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use longpoll::http::{
    client_js_response, error_response, media_type_is, BodyFormat, Form, KeyedPoll,
    KeyedPollConfig, KeyedRequest, PollConfig, PollRequest,
};
use longpoll::keyed::{Keyed, KeyedPublishError, TooManyKeys};
use longpoll::sse::{event_id, EventStreams, SseConfig};
use longpoll::Update;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The page, served as is: everything it needs is inline, but for the
/// browser client it imports from `/longpoll.js`.
const PAGE: &str = include_str!("chat.html");
/// The largest request body accepted (413 past it).
const MAX_BODY: usize = 16 * 1024;
/// The longest author name, in characters.
const MAX_NAME_CHARS: usize = 32;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) name: String,
    pub(crate) text: String,
}

/// A room's value at each version: the message published at it. A room
/// starts at version 0 with no message.
pub(crate) type Entry = Option<Message>;

/// What the server is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Messages each room keeps for clients that reconnect.
    pub(crate) history: usize,
    /// Most rooms at once (503 past it).
    pub(crate) max_rooms: usize,
    /// How long an unused room is kept.
    pub(crate) room_idle: Duration,
    /// The longest message, in characters.
    pub(crate) max_message_chars: usize,
    /// Long-poll timeouts.
    pub(crate) poll: PollConfig,
    /// SSE retry advice and keep-alive.
    pub(crate) sse: SseConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history: 100,
            max_rooms: 1000,
            room_idle: Duration::from_secs(600),
            max_message_chars: 500,
            poll: PollConfig::new(),
            sse: SseConfig::new(),
        }
    }
}

/// The most rooms one multi-room poll may name.
const MAX_POLLED_ROOMS: usize = 8;

/// The server's state: the rooms, their long polls and event streams (one
/// encoder and one cache of encoded messages for both).
#[derive(Clone)]
pub(crate) struct Chat {
    rooms: Keyed<String, Entry>,
    poll: KeyedPoll<String, Entry>,
    streams: EventStreams<Entry>,
    settings: Arc<Settings>,
}

impl Chat {
    pub(crate) fn new(settings: Settings) -> Self {
        let rooms = Keyed::builder()
            .history(settings.history)
            .max_keys(settings.max_rooms)
            .idle_timeout(settings.room_idle)
            .build();
        let config = KeyedPollConfig::new()
            .poll(settings.poll)
            .max_keys(MAX_POLLED_ROOMS)
            .max_key_len(32);
        let poll = KeyedPoll::new(rooms.clone(), |u: &Update<Entry>| {
            Bytes::from(message_json(u).to_string())
        })
        .with_config(config)
        .with_format(BodyFormat::Envelope);
        let streams = EventStreams::from(&poll).with_config(settings.sse);
        Chat {
            rooms,
            poll,
            streams,
            settings: Arc::new(settings),
        }
    }

    /// The rooms (the tests look inside).
    #[allow(dead_code)]
    pub(crate) fn rooms(&self) -> &Keyed<String, Entry> {
        &self.rooms
    }
}

/// The long-poll extractors read their timeouts from the chat's state.
impl axum::extract::FromRef<Chat> for PollConfig {
    fn from_ref(chat: &Chat) -> PollConfig {
        *chat.poll.config().get_poll()
    }
}

impl axum::extract::FromRef<Chat> for KeyedPollConfig {
    fn from_ref(chat: &Chat) -> KeyedPollConfig {
        *chat.poll.config()
    }
}

/// `{"version": N, "name": ..., "text": ...}`, or `null` for a room's
/// starting point.
fn message_json(u: &Update<Entry>) -> Value {
    match &**u.value() {
        Some(m) => json!({ "version": u.version().get(), "name": m.name, "text": m.text }),
        None => Value::Null,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response {
    error_response(status, message).map(Body::from)
}

/// `503` with `Retry-After`, for a full server or one shutting down.
fn unavailable(message: &str, retry_after_secs: u32) -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

fn too_many_rooms(e: TooManyKeys) -> Response {
    unavailable(&format!("{e}: try again later"), 5)
}

/// Whether `room` is a valid room name: 1 to 32 of `a-z0-9_-`.
pub(crate) fn valid_room(room: &str) -> bool {
    (1..=32).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `400` if `room` is not a valid room name.
fn room_error(room: &str) -> Option<Response> {
    (!valid_room(room)).then(|| {
        error(
            StatusCode::BAD_REQUEST,
            "a room name is 1 to 32 characters of a-z, 0-9, '-' and '_'",
        )
    })
}

/// The routes, over `chat`.
pub(crate) fn router(chat: Chat) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/longpoll.js", get(|| async { client_js_response() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/rooms", get(poll_rooms))
        .route("/rooms/{room}/messages", get(poll).post(post))
        .route("/rooms/{room}/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(chat)
}

async fn page() -> Response {
    let mut resp = PAGE.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing from elsewhere, and no script but its own and
    // the client it imports from this server.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'",
        ),
    );
    resp
}

/// The long poll of one room. Without a cursor: the room's retained
/// messages at once (a baseline, `"resync": {"reason": "initial"}`). With
/// one: every message after it as soon as there is one, or `204` after the
/// timeout. The request is gone by the time the poll waits: the handler
/// takes the parsed [`PollRequest`], not the request.
async fn poll(
    State(chat): State<Chat>,
    Path(room): Path<String>,
    request: Result<PollRequest, longpoll::http::RequestError>,
) -> Response {
    if let Some(resp) = room_error(&room) {
        return resp;
    }
    let request = match request {
        Ok(r) => r,
        Err(e) => return IntoResponse::into_response(e),
    };
    match chat.poll.long_poll(&room) {
        Ok(poll) => poll.serve(request).await.into_response(),
        Err(e) => too_many_rooms(e),
    }
}

/// One long poll over several rooms: `?keys=a,b&cursors=<id>,<id>`.
async fn poll_rooms(
    State(chat): State<Chat>,
    request: Result<KeyedRequest, longpoll::http::KeyedRequestError>,
) -> Response {
    let request = match request {
        Ok(r) => r,
        Err(e) => return IntoResponse::into_response(e),
    };
    if let Some(resp) = request.keys().find_map(room_error) {
        return resp;
    }
    chat.poll.serve(request).await.into_response()
}

/// The event stream of a room.
async fn events(State(chat): State<Chat>, Path(room): Path<String>, req: Request) -> Response {
    if let Some(resp) = room_error(&room) {
        return resp;
    }
    match chat.rooms.broadcaster(&room) {
        Ok(b) => chat.streams.endpoint(b).handle(req).into_response(),
        Err(e) => too_many_rooms(e),
    }
}

/// Publishes a message: `name` (optional) and `text`, form-encoded.
async fn post(
    State(chat): State<Chat>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(resp) = room_error(&room) {
        return resp;
    }
    let form_type = headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| media_type_is(t.as_bytes(), "application/x-www-form-urlencoded"));
    if !form_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the message as application/x-www-form-urlencoded",
        );
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let text = form.get("text").unwrap_or("").trim();
    let name = form.get("name").unwrap_or("").trim();
    let name = if name.is_empty() { "anonymous" } else { name };
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    let max = chat.settings.max_message_chars;
    if text.chars().count() > max {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a message is at most {max} characters"),
        );
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("a name is at most {MAX_NAME_CHARS} characters"),
        );
    }
    let message = Message {
        name: name.to_string(),
        text: text.to_string(),
    };
    let published = chat
        .rooms
        .broadcaster(&room)
        .map_err(KeyedPublishError::from)
        .and_then(|b| Ok((b.notify(Some(message))?, b.epoch())));
    match published {
        Ok((version, epoch)) => json_response(
            StatusCode::OK,
            &json!({
                "version": version.get(),
                "epoch": epoch.to_string(),
                "id": event_id(epoch, version),
            }),
        ),
        Err(KeyedPublishError::TooManyKeys(e)) => too_many_rooms(e),
        Err(_closed) => unavailable("the server is shutting down", 1),
    }
}

/// Serves `chat` on `listener` until `shutdown` completes; then closes
/// every room, so that held long polls are answered `503` and event
/// streams end, and waits for the connections to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    chat: Chat,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let sweeper = tokio::spawn(chat.rooms.sweeper(chat.settings.room_idle / 2));
    let rooms = chat.rooms.clone();
    let app = router(chat);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            rooms.close();
        })
        .await;
    if let Err(e) = result {
        eprintln!("server error: {e}");
    }
    sweeper.abort();
}

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
//! A room name is 1 to 32 characters of `a-z`, `0-9`, `-` and `_`,
//! checked before anything else (and before Redis); past `max_rooms` a
//! new room is refused with `503`. A message's text is 1 to
//! `max_message_chars` characters, its author's name at most 32; a request
//! body is at most 16 KiB.
//!
//! The rooms live in this process ([`Rooms::Local`]), or on a Redis
//! backplane ([`Rooms::Shared`], feature `redis`), so that several
//! instances serve every room: a message posted to one reaches the pages
//! held by all. A room is then read from Redis when it is first used on an
//! instance, before it is served.
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
use longpoll::{Broadcaster, Epoch, Update, Version};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry(pub(crate) Option<Message>);

/// How a room's value is stored in Redis: `{"name":..,"text":..}`, or
/// empty for a room's starting point.
#[cfg(feature = "redis")]
impl longpoll::redis::Codec for Entry {
    fn encode(&self) -> Vec<u8> {
        match &self.0 {
            Some(m) => json!({ "name": m.name, "text": m.text })
                .to_string()
                .into_bytes(),
            None => Vec::new(),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, longpoll::redis::DecodeError> {
        if bytes.is_empty() {
            return Ok(Entry(None));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(longpoll::redis::DecodeError::new)?;
        match (v["name"].as_str(), v["text"].as_str()) {
            (Some(name), Some(text)) => Ok(Entry(Some(Message {
                name: name.to_owned(),
                text: text.to_owned(),
            }))),
            _ => Err(longpoll::redis::DecodeError::new("not a chat message")),
        }
    }
}

/// What the server is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Messages each room keeps for clients that reconnect.
    pub(crate) history: usize,
    /// Most rooms at once (503 past it).
    pub(crate) max_rooms: usize,
    /// How long an unused room is kept (on a backplane: on this instance).
    pub(crate) room_idle: Duration,
    /// On a backplane, how long Redis keeps a room nobody posts to.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) room_ttl: Duration,
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
            room_ttl: Duration::from_secs(7 * 24 * 3600),
            max_message_chars: 500,
            poll: PollConfig::new(),
            sse: SseConfig::new(),
        }
    }
}

/// The most rooms one multi-room poll may name.
const MAX_POLLED_ROOMS: usize = 8;

/// Where the rooms live.
#[derive(Clone)]
pub(crate) enum Rooms {
    /// In this process.
    Local(Keyed<String, Entry>),
    /// On a Redis backplane, shared by every instance.
    #[cfg(feature = "redis")]
    Shared(longpoll::redis::KeyedChannels<Entry>),
}

/// Why a room cannot be served now.
enum RoomError {
    /// `max_rooms` is reached.
    Full(TooManyKeys),
    /// Redis does not answer, or holds something unusable for the room.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unavailable(String),
    /// The server is shutting down.
    Closed,
}

impl RoomError {
    fn response(self) -> Response {
        match self {
            RoomError::Full(e) => too_many_rooms(e),
            RoomError::Unavailable(why) => {
                unavailable(&format!("the room is unavailable: {why}"), 1)
            }
            RoomError::Closed => unavailable("the server is shutting down", 1),
        }
    }
}

#[cfg(feature = "redis")]
impl From<longpoll::redis::KeyedError> for RoomError {
    fn from(e: longpoll::redis::KeyedError) -> Self {
        use longpoll::redis::KeyedError;
        match e {
            KeyedError::TooManyKeys(e) => RoomError::Full(e),
            KeyedError::Backplane(e) if e.is_closed() => RoomError::Closed,
            other => RoomError::Unavailable(other.to_string()),
        }
    }
}

impl Rooms {
    /// The rooms of this process.
    pub(crate) fn local(settings: &Settings) -> Rooms {
        Rooms::Local(
            Keyed::builder()
                .history(settings.history)
                .max_keys(settings.max_rooms)
                .idle_timeout(settings.room_idle)
                .build(),
        )
    }

    /// The rooms of every instance on `backplane`.
    #[cfg(feature = "redis")]
    pub(crate) fn shared(
        settings: &Settings,
        backplane: &longpoll::redis::Backplane,
    ) -> Result<Rooms, longpoll::redis::BackplaneError> {
        Ok(Rooms::Shared(
            backplane
                .keyed("rooms")
                .history(settings.history)
                .max_keys(settings.max_rooms)
                .max_key_len(32)
                .idle_timeout(settings.room_idle)
                .ttl(Some(settings.room_ttl))
                .build()?,
        ))
    }

    /// The hub the polls and streams are served from.
    pub(crate) fn hub(&self) -> &Keyed<String, Entry> {
        match self {
            Rooms::Local(hub) => hub,
            #[cfg(feature = "redis")]
            Rooms::Shared(shared) => shared.hub(),
        }
    }

    /// `room`'s broadcaster, ready to serve: on a backplane, in line with
    /// Redis (read from it if the room was not live here). Keep it while
    /// serving the room.
    async fn room(&self, room: &str) -> Result<Broadcaster<Entry>, RoomError> {
        match self {
            Rooms::Local(hub) => hub.broadcaster(room).map_err(RoomError::Full),
            #[cfg(feature = "redis")]
            Rooms::Shared(shared) => Ok(shared.broadcaster(room).await?),
        }
    }

    /// [`room`](Self::room) for several rooms (read in one batch).
    async fn rooms<'r>(
        &self,
        rooms: impl Iterator<Item = &'r str>,
    ) -> Result<Vec<Broadcaster<Entry>>, RoomError> {
        match self {
            Rooms::Local(hub) => rooms
                .map(|r| hub.broadcaster(r).map_err(RoomError::Full))
                .collect(),
            #[cfg(feature = "redis")]
            Rooms::Shared(shared) => Ok(shared.load(rooms).await?),
        }
    }

    /// Publishes `entry` to `room`: where it landed.
    async fn publish(&self, room: &str, entry: Entry) -> Result<(Epoch, Version), RoomError> {
        match self {
            Rooms::Local(hub) => {
                let published = hub
                    .broadcaster(room)
                    .map_err(KeyedPublishError::from)
                    .and_then(|b| Ok((b.epoch(), b.notify(entry)?)));
                match published {
                    Ok((epoch, version)) => Ok((epoch, version)),
                    Err(KeyedPublishError::TooManyKeys(e)) => Err(RoomError::Full(e)),
                    Err(_closed) => Err(RoomError::Closed),
                }
            }
            #[cfg(feature = "redis")]
            Rooms::Shared(shared) => {
                if shared.hub().is_closed() {
                    return Err(RoomError::Closed);
                }
                let p = shared.publish(room, entry).await?;
                Ok((p.epoch, p.version))
            }
        }
    }
}

/// The server's state: the rooms, their long polls and event streams (one
/// encoder and one cache of encoded messages for both).
#[derive(Clone)]
pub(crate) struct Chat {
    rooms: Rooms,
    poll: KeyedPoll<String, Entry>,
    streams: EventStreams<Entry>,
    settings: Arc<Settings>,
}

impl Chat {
    /// A chat whose rooms live in this process.
    #[allow(dead_code)] // the tests use it
    pub(crate) fn new(settings: Settings) -> Self {
        let rooms = Rooms::local(&settings);
        Self::with_rooms(settings, rooms)
    }

    /// A chat over `rooms`.
    pub(crate) fn with_rooms(settings: Settings, rooms: Rooms) -> Self {
        let config = KeyedPollConfig::new()
            .poll(settings.poll)
            .max_keys(MAX_POLLED_ROOMS)
            .max_key_len(32);
        let poll = KeyedPoll::new(rooms.hub().clone(), |u: &Update<Entry>| {
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
        self.rooms.hub()
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
    match &u.value().0 {
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
    // Held while the poll is served: the room stays live (and, on a
    // backplane, subscribed and read).
    let _held = match chat.rooms.room(&room).await {
        Ok(b) => b,
        Err(e) => return e.response(),
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
    // Held while the poll is served: the rooms stay live (and, on a
    // backplane, subscribed and read).
    let _held = match chat.rooms.rooms(request.keys()).await {
        Ok(held) => held,
        Err(e) => return e.response(),
    };
    chat.poll.serve(request).await.into_response()
}

/// The event stream of a room.
async fn events(State(chat): State<Chat>, Path(room): Path<String>, req: Request) -> Response {
    if let Some(resp) = room_error(&room) {
        return resp;
    }
    match chat.rooms.room(&room).await {
        Ok(b) => chat.streams.endpoint(b).handle(req).into_response(),
        Err(e) => e.response(),
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
    match chat.rooms.publish(&room, Entry(Some(message))).await {
        Ok((epoch, version)) => json_response(
            StatusCode::OK,
            &json!({
                "version": version.get(),
                "epoch": epoch.to_string(),
                "id": event_id(epoch, version),
            }),
        ),
        Err(e) => e.response(),
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
    // A backplane's rooms sweep themselves.
    let sweeper = match &chat.rooms {
        Rooms::Local(hub) => Some(tokio::spawn(hub.sweeper(chat.settings.room_idle / 2))),
        #[cfg(feature = "redis")]
        Rooms::Shared(_) => None,
    };
    let rooms = chat.rooms.hub().clone();
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
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
}

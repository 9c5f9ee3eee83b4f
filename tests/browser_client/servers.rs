//! The servers of `tests/browser_client.rs`: the page's origin (the test
//! page and the module) and the API's origin (the crate's endpoints behind
//! `CorsLayer`, and scripted ones that fail or answer out of turn).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use longpoll::http::{
    client_js_response, error_response, BodyFormat, KeyedPoll, LongPoll, EXPOSED_HEADERS,
};
use longpoll::keyed::Keyed;
use longpoll::sse::{EventStreams, SseEndpoint};
use longpoll::{Broadcaster, Update};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_http::cors::CorsLayer;

/// How many updates every broadcaster keeps.
pub(crate) const HISTORY: usize = 8;
/// The epochs of the scripted server.
pub(crate) const REPLAY_E: &str = "00000000000000e1";
pub(crate) const REPLAY_F: &str = "00000000000000f2";
/// The `Retry-After` of each scripted `503` of `/flaky` (`None`: no header).
pub(crate) const FLAKY_SCRIPT: [Option<u32>; 5] = [Some(1), Some(1), None, None, None];

/// Both servers, running.
pub(crate) struct Servers {
    /// `http://127.0.0.1:PORT` of the page.
    pub(crate) page_origin: String,
    /// The API server's address.
    pub(crate) api_addr: SocketAddr,
    pub(crate) api: Arc<Api>,
    /// Behind `/latest` (the `Latest` format, history 1).
    pub(crate) latest: Broadcaster<u64>,
    /// Behind `/rooms` (several keys).
    pub(crate) rooms: Keyed<String, u64>,
    /// Behind `/flaky`, once its `503`s are answered.
    pub(crate) flaky: Broadcaster<u64>,
}

impl Servers {
    /// Starts both on free loopback ports.
    pub(crate) async fn start() -> Servers {
        let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
        serve(
            page_listener,
            Router::new()
                .route("/", get(|| async { Html(PAGE) }))
                .route("/longpoll.js", get(|| async { client_js_response() })),
        );

        let latest = Broadcaster::new(0u64);
        let rooms: Keyed<String, u64> = Keyed::builder().history(HISTORY).build();
        let flaky = Broadcaster::new(0u64);
        let api = Arc::new(Api {
            feed: Mutex::new(Feed::new(0)),
            latest: LongPoll::new(latest.clone(), encode_latest),
            rooms: KeyedPoll::new(rooms.clone(), encode),
            flaky: LongPoll::new(flaky.clone(), encode).with_format(BodyFormat::Envelope),
            flaky_script: Mutex::new(FLAKY_SCRIPT.into_iter().collect()),
            replay_polls: Mutex::default(),
            replay_streams: Mutex::default(),
            counts: Mutex::default(),
            options: AtomicUsize::new(0),
        });
        let cors = CorsLayer::new()
            .allow_origin(HeaderValue::from_str(&page_origin).unwrap())
            .allow_methods([Method::GET])
            .expose_headers(EXPOSED_HEADERS);
        let app = Router::new()
            .route("/feed", get(feed))
            .route("/feed/events", get(feed_events))
            .route("/latest", get(latest_poll))
            .route("/rooms", get(rooms_poll))
            .route("/flaky", get(flaky_poll))
            .route("/down", get(|| async { unavailable(Some(1)) }))
            .route(
                "/down-for-a-minute",
                get(|| async { unavailable(Some(60)) }),
            )
            .route("/broken-events", get(|| async { unavailable(Some(1)) }))
            .route("/replay", get(replay))
            .route("/replay/events", get(replay_events))
            .with_state(api.clone())
            .layer(cors)
            .layer(middleware::from_fn_with_state(api.clone(), count));
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api_listener.local_addr().unwrap();
        serve(api_listener, app);
        Servers {
            page_origin,
            api_addr,
            api,
            latest,
            rooms,
            flaky,
        }
    }
}

fn serve(listener: TcpListener, app: Router) {
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// The page: imports the module and exposes `start(name, url, options)`,
/// which subscribes and records every callback in `logs[name]`, and
/// `abort(name)`; each update is logged with the transport that brought
/// it. Every `fetch` is recorded in `requests` with its
/// start and end times, and every `EventSource` is kept, so that
/// `openStreams()` counts those not closed.
pub(crate) const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>client</title>
<script type="module">
import { subscribe } from "/longpoll.js";
window.logs = {};
window.requests = [];
const controllers = {};
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const entry = { url: String(input), start: performance.now() };
  window.requests.push(entry);
  try {
const r = await realFetch(input, init);
entry.status = r.status;
entry.end = performance.now();
return r;
  } catch (e) {
entry.error = String(e);
entry.end = performance.now();
throw e;
  }
};
const streams = [];
const RealEventSource = window.EventSource;
window.EventSource = class extends RealEventSource {
  constructor(url, init) { super(url, init); streams.push(this); }
};
window.openStreams = () => streams.filter((s) => s.readyState !== 2).length;
window.start = (name, url, options) => {
  const log = window.logs[name] = [];
  const controller = controllers[name] = new AbortController();
  const saved = window.EventSource;
  if (options.noEventSource) window.EventSource = undefined;
  let sub = null;
  try {
sub = subscribe(url, {
  ...options,
  signal: controller.signal,
  onUpdate: (data, meta) => log.push({ t: "update", data, ...meta, by: sub.transport }),
  onResync: (info) => log.push({ t: "resync", ...info }),
  onStatus: (state, d) => log.push({ t: "status", state, transport: d.transport,
    delay: d.delay ?? null, attempt: d.attempt ?? null, status: d.status ?? null,
    retryAfter: d.retryAfter ?? null }),
});
  } finally {
window.EventSource = saved;
  }
};
window.abort = (name) => controllers[name].abort();
window.ready = true;
</script>"#;

/// A broadcaster with its long poll and event stream; replaced whole on
/// a restart.
pub(crate) struct Feed {
    pub(crate) broadcaster: Broadcaster<u64>,
    poll: LongPoll<u64>,
    events: SseEndpoint<u64>,
}

impl Feed {
    pub(crate) fn new(initial: u64) -> Feed {
        let broadcaster = Broadcaster::builder().history(HISTORY).build(initial);
        let poll = LongPoll::new(broadcaster.clone(), encode).with_format(BodyFormat::Envelope);
        let events = EventStreams::from(&poll).endpoint(broadcaster.clone());
        Feed {
            broadcaster,
            poll,
            events,
        }
    }
}

/// The API server's state.
pub(crate) struct Api {
    /// Replaced on a restart.
    pub(crate) feed: Mutex<Feed>,
    latest: LongPoll<u64>,
    rooms: KeyedPoll<String, u64>,
    flaky: LongPoll<u64>,
    flaky_script: Mutex<VecDeque<Option<u32>>>,
    /// The query of every request to `/replay` and `/replay/events`.
    pub(crate) replay_polls: Mutex<Vec<String>>,
    pub(crate) replay_streams: Mutex<Vec<String>>,
    /// Requests by path, and preflights.
    pub(crate) counts: Mutex<HashMap<String, usize>>,
    pub(crate) options: AtomicUsize,
}

impl Api {
    pub(crate) fn count(&self, path: &str) -> usize {
        self.counts.lock().get(path).copied().unwrap_or(0)
    }
}

fn encode(u: &Update<u64>) -> Bytes {
    Bytes::from(format!(r#"{{"n":{}}}"#, u.value()))
}

/// The `Latest` format of the shopping cart: the state, its version and
/// epoch, in one object.
fn encode_latest(u: &Update<u64>) -> Bytes {
    Bytes::from(format!(
        r#"{{"n":{},"version":{},"epoch":"{}"}}"#,
        u.value(),
        u.version(),
        u.epoch()
    ))
}

type Shared = State<Arc<Api>>;

async fn feed(State(api): Shared, req: Request) -> Response {
    let poll = api.feed.lock().poll.clone();
    poll.handle(req).await.into_response()
}

async fn feed_events(State(api): Shared, req: Request) -> Response {
    let events = api.feed.lock().events.clone();
    events.handle(req).into_response()
}

async fn latest_poll(State(api): Shared, req: Request) -> Response {
    api.latest.handle(req).await.into_response()
}

async fn rooms_poll(State(api): Shared, req: Request) -> Response {
    api.rooms.handle(req).await.into_response()
}

fn unavailable(retry_after: Option<u32>) -> Response {
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp.map(Body::from)
}

/// The scripted `503`s, then the long poll.
async fn flaky_poll(State(api): Shared, req: Request) -> Response {
    let next = api.flaky_script.lock().pop_front();
    match next {
        Some(retry_after) => unavailable(retry_after),
        None => api.flaky.handle(req).await.into_response(),
    }
}

fn envelope(epoch: &str, updates: &[u64], resync: Option<&str>) -> Value {
    let mut env = json!({
        "epoch": epoch,
        "version": updates.last().unwrap(),
        "updates": updates.iter().map(|v| json!({"version": v, "data": {"v": v}})).collect::<Vec<_>>(),
    });
    if let Some(reason) = resync {
        env["resync"] = json!({ "reason": reason });
    }
    env
}

/// A server that answers out of turn: a baseline, an answer that
/// overlaps it, a stale one, one of another epoch without a resync, then
/// timeouts.
async fn replay(State(api): Shared, uri: Uri) -> Response {
    let n = {
        let mut polls = api.replay_polls.lock();
        polls.push(uri.query().unwrap_or("").to_owned());
        polls.len() - 1
    };
    let body = match n {
        0 => envelope(REPLAY_E, &[1, 2], Some("initial")),
        1 => envelope(REPLAY_E, &[2, 3], None),
        2 => envelope(REPLAY_E, &[1], None),
        3 => envelope(REPLAY_F, &[7], None),
        _ => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return StatusCode::NO_CONTENT.into_response();
        }
    };
    let mut resp = body.to_string().into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn event(epoch: &str, v: u64) -> String {
    format!("id: {epoch}-{v}\ndata: {{\"v\":{v}}}\n\n")
}

/// The same as a stream: a baseline of 1 to 3 that ends; then, whatever
/// the cursor, 2 and 3 again and 4, on a stream that stays open.
async fn replay_events(State(api): Shared, uri: Uri) -> Response {
    let n = {
        let mut streams = api.replay_streams.lock();
        streams.push(uri.query().unwrap_or("").to_owned());
        streams.len() - 1
    };
    let body = if n == 0 {
        let text = format!(
            "retry: 100\n\nevent: resync\ndata: {{\"reason\":\"initial\"}}\n\n{}{}{}",
            event(REPLAY_E, 1),
            event(REPLAY_E, 2),
            event(REPLAY_E, 3)
        );
        Body::from(text)
    } else {
        let text = format!(
            "{}{}{}",
            event(REPLAY_E, 2),
            event(REPLAY_E, 3),
            event(REPLAY_E, 4)
        );
        let first = futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(text)) });
        Body::from_stream(first.chain(futures::stream::pending()))
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Counts requests by path, and preflights.
async fn count(State(api): Shared, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        api.options.fetch_add(1, Ordering::SeqCst);
    } else {
        *api.counts
            .lock()
            .entry(req.uri().path().to_owned())
            .or_default() += 1;
    }
    next.run(req).await
}

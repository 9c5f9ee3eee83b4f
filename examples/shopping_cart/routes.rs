//! The routes: a plain `match` on method and path, one small function each.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    COOKIE, ETAG, IF_NONE_MATCH, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use longpoll::http::{
    client_js_response, error_response, media_type_is, Form, FullBody, LongPoll, PollConfig,
    PollRequest, CLIENT_JS,
};
use longpoll::Update;

use super::assets;
use super::cart::{Action, CartError, CartState, MemoryStore, Stock, Store};
use super::tracker::{Activity, Busy};

/// The page, with `{{SESSION}}`, `{{COUNT}}`, `{{INVENTORY}}`, `{{VERSION}}`,
/// `{{EPOCH}}` and `{{IN_CART}}` filled in per request.
const PAGE: &str = include_str!("index.html");

/// The largest `POST /cart` body accepted.
pub(crate) const BODY_LIMIT: usize = 8 * 1024;

/// How long a client may take to send a `POST /cart` body once its headers
/// are in (the headers themselves have the server's header-read timeout).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest session id accepted, in bytes.
const SESSION_MAX: usize = 128;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    store: Store,
    poll: LongPoll<Stock>,
    inventory: u32,
}

impl App {
    /// A shop of `inventory` units, holding polls `poll_timeout` unless they
    /// ask otherwise, and at most `max_waiters` of them.
    pub(crate) fn new(inventory: u32, poll_timeout: Duration, max_waiters: usize) -> App {
        let store = Store::Memory(MemoryStore::new(inventory, max_waiters));
        App::with_store(store, inventory, poll_timeout)
    }

    /// A shop over `store`, which holds `inventory` units in all.
    pub(crate) fn with_store(store: Store, inventory: u32, poll_timeout: Duration) -> App {
        let poll = LongPoll::new(store.broadcaster().clone(), encode_stock)
            .with_config(PollConfig::new().default_timeout(poll_timeout));
        App {
            store,
            poll,
            inventory,
        }
    }

    /// Answers every held long poll with `503` and refuses new ones.
    pub(crate) fn close(&self) {
        self.store.close();
    }
}

/// The long-poll body: `{"inventorycount": N, "version": V, "epoch": "E"}`.
/// Runs once per version, however many polls it answers.
fn encode_stock(update: &Update<Stock>) -> Bytes {
    Bytes::from(format!(
        r#"{{"inventorycount":{},"version":{},"epoch":"{}"}}"#,
        update.value().count,
        update.version(),
        update.epoch()
    ))
}

/// What every request is answered with: a boxed future, so that hyper's
/// per-connection slot for it is two words whatever the route, and a
/// request costs the size of its own route's future only.
pub(crate) type Answer =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// The service of one connection: routes each request, and marks it in
/// progress until its answer is ready (see [`Activity`]).
pub(crate) struct Service {
    app: Arc<App>,
    activity: Arc<Activity>,
}

impl Service {
    pub(crate) fn new(app: Arc<App>, activity: Arc<Activity>) -> Service {
        Service { app, activity }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let busy = self.activity.begin(req.version() == hyper::Version::HTTP_2);
        route(&self.app, req, busy)
    }
}

/// Routes one request; `busy` ends with its answer. Never fails: every
/// error is an HTTP answer.
pub(crate) fn route(app: &Arc<App>, req: Request<Incoming>, busy: Busy) -> Answer {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => status(app, req, busy),
        (&Method::GET | &Method::HEAD, "/") => {
            let app = Arc::clone(app);
            answer_with(busy, async move { page(&app, req.headers()).await })
        }
        (&Method::POST, "/cart") => {
            let app = Arc::clone(app);
            answer_with(busy, async move { cart(&app, req).await })
        }
        (&Method::GET | &Method::HEAD, "/stats") => ready(busy, stats(app)),
        (&Method::GET | &Method::HEAD, "/healthz") => ready(busy, text(StatusCode::OK, "ok\n")),
        (&Method::GET | &Method::HEAD, "/longpoll.js") => ready(busy, client_js(req.headers())),
        (&Method::GET | &Method::HEAD, "/metrics") => ready(busy, metrics(app)),
        (_, "/metrics") => ready(busy, method_not_allowed("GET, HEAD")),
        (&Method::GET | &Method::HEAD, path) if assets::is_asset(path) => {
            let resp = assets::get(path, req.headers()).expect("an asset");
            ready(busy, resp)
        }
        (_, "/" | "/stats" | "/healthz" | "/longpoll.js") => {
            ready(busy, method_not_allowed("GET, HEAD"))
        }
        (_, path) if assets::is_asset(path) => ready(busy, method_not_allowed("GET, HEAD")),
        (_, "/status") => ready(busy, method_not_allowed("GET")),
        (_, "/cart") => ready(busy, method_not_allowed("POST")),
        _ => ready(busy, text(StatusCode::NOT_FOUND, "not found\n")),
    }
}

/// `GET /status`: the long poll.
///
/// The request is parsed into an owned [`PollRequest`] and dropped before
/// the wait. Its URI and header values are slices of hyper's read buffer: a
/// request kept alive while the poll is held would pin that buffer, and
/// hyper's next read (which notices a client that goes away) would reserve a
/// second one for every held poll.
fn status(app: &Arc<App>, req: Request<Incoming>, busy: Busy) -> Answer {
    let parsed = app.poll.parse(req.uri(), req.headers());
    drop(req);
    let request: PollRequest = match parsed {
        Ok(request) => request,
        Err(e) => return ready(busy, e.into_response()),
    };
    let app = Arc::clone(app);
    Box::pin(async move {
        let answer = app.poll.wait(&request).await;
        let resp = app.poll.respond(&request, answer);
        drop(busy);
        Ok(resp.map(Full::new))
    })
}

/// An answer that is ready now.
fn ready(busy: Busy, resp: Response<Bytes>) -> Answer {
    drop(busy);
    Box::pin(std::future::ready(Ok(resp.map(Full::new))))
}

/// The answer `fut` makes, `busy` until then.
fn answer_with(busy: Busy, fut: impl Future<Output = Response<Bytes>> + Send + 'static) -> Answer {
    Box::pin(async move {
        let resp = fut.await;
        drop(busy);
        Ok(resp.map(Full::new))
    })
}

/// `GET /`: the page, showing this visitor's cart; a new visitor gets a
/// session cookie.
async fn page(app: &App, headers: &HeaderMap) -> Response<Bytes> {
    let (session, is_new) = match session_cookie(headers) {
        Some(session) => (session.to_owned(), false),
        None => (new_session_id(), true),
    };
    let state = match app.store.snapshot(&session).await {
        Ok(state) => state,
        Err(_) => return unavailable("the cart store is unavailable"),
    };
    let html = PAGE
        .replace("{{SESSION}}", &session)
        .replace("{{COUNT}}", &state.count.to_string())
        .replace("{{INVENTORY}}", &app.inventory.to_string())
        .replace("{{VERSION}}", &state.version.to_string())
        .replace("{{EPOCH}}", &state.epoch.to_string())
        .replace("{{IN_CART}}", if state.in_cart { "true" } else { "false" });
    let mut resp = Response::new(Bytes::from(html));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HTML);
    // The page embeds a version: a cached copy would start from a stale one.
    h.insert(CACHE_CONTROL, NO_STORE);
    h.insert(CONTENT_SECURITY_POLICY, assets::PAGE_POLICY);
    if is_new {
        let cookie = format!("session={session}; Path=/; SameSite=Lax; HttpOnly");
        h.insert(
            SET_COOKIE,
            HeaderValue::try_from(cookie).expect("session ids are header-safe"),
        );
    }
    resp
}

/// `GET /longpoll.js`: the browser client the page's script imports
/// ([`CLIENT_JS`]), cached as `page.js` is: `no-cache` with an `ETag`, so
/// a browser revalidates it on each load and picks up a new build at once;
/// `304` without a body if `If-None-Match` names the tag.
fn client_js(headers: &HeaderMap) -> Response<Bytes> {
    static TAG: OnceLock<HeaderValue> = OnceLock::new();
    let tag = TAG.get_or_init(|| {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        CLIENT_JS.hash(&mut hasher);
        HeaderValue::try_from(format!("\"{:016x}\"", hasher.finish())).expect("hex is header-safe")
    });
    let mut resp = client_js_response().map(FullBody::into_bytes);
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag);
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.body_mut() = Bytes::new();
        resp.headers_mut().remove(CONTENT_TYPE);
    }
    let h = resp.headers_mut();
    h.insert(ETAG, tag.clone());
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `POST /cart`: `session=<id>&action=add|remove`.
async fn cart(app: &App, req: Request<Incoming>) -> Response<Bytes> {
    let headers = req.headers();
    let content_type = headers.get(CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
    if !media_type_is(content_type, FORM) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the form as application/x-www-form-urlencoded",
        );
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return too_large();
    }
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let form = match Form::parse(&body) {
        Ok(form) => form,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("undecodable form: {e}"))
        }
    };
    let session = match form.get("session") {
        None | Some("") => return bad_request("`session` is missing or empty"),
        Some(s) if s.len() > SESSION_MAX => {
            return bad_request("`session` is longer than 128 bytes")
        }
        Some(s) if s.chars().any(char::is_control) => {
            return bad_request("`session` contains control characters")
        }
        Some(s) => s,
    };
    let action = match form.get("action").map(Action::parse) {
        None => return bad_request("`action` is missing"),
        Some(None) => return bad_request("`action` must be `add` or `remove`"),
        Some(Some(action)) => action,
    };
    match app.store.apply(session, action).await {
        Ok(state) => json(StatusCode::OK, cart_json(&state, None)),
        Err(CartError::SoldOut(state)) => {
            json(StatusCode::CONFLICT, cart_json(&state, Some("sold out")))
        }
        Err(CartError::Closed) => unavailable("the server is shutting down"),
        Err(CartError::Unavailable) => unavailable("the cart store is unavailable"),
    }
}

/// `503` with `Retry-After: 1`.
fn unavailable(message: &str) -> Response<Bytes> {
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Reads a body of at most [`BODY_LIMIT`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, Response<Bytes>> {
    let collect = Limited::new(body, BODY_LIMIT).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(bad_request("the request body could not be read")),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "the request body took too long",
        )),
    }
}

/// `{"inventorycount", "version", "epoch", "in_cart"}`, and `"error"` if any.
fn cart_json(state: &CartState, error: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "inventorycount": state.count,
        "version": state.version.get(),
        "epoch": state.epoch.to_string(),
        "in_cart": state.in_cart,
    });
    if let Some(error) = error {
        v["error"] = error.into();
    }
    v
}

/// `GET /stats`: held long polls, version and epoch.
fn stats(app: &App) -> Response<Bytes> {
    let b = app.store.broadcaster();
    let current = b.current();
    json(
        StatusCode::OK,
        serde_json::json!({
            "waiters": b.waiter_count(),
            "version": current.version().get(),
            "epoch": current.epoch().to_string(),
        }),
    )
}

/// `GET /metrics`: every metric in Prometheus's text format, after setting
/// the cart's own gauges (units in stock, polls held now).
fn metrics(app: &App) -> Response<Bytes> {
    let b = app.store.broadcaster();
    metrics::gauge!("shopping_cart_stock_units").set(b.current().value().count);
    metrics::gauge!("shopping_cart_held_polls").set(b.waiter_count() as f64);
    let mut resp = Response::new(Bytes::from(super::telemetry::render()));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// The `session` cookie, if the request has one that looks like an id this
/// server hands out (so it is safe to put into the page as is).
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("session="))
        .find(|id| valid_session_id(id))
}

/// 1 to 128 ASCII letters, digits, `-` or `_`.
fn valid_session_id(id: &str) -> bool {
    (1..=SESSION_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// 128 bits as 32 hex digits, from SipHash keyed by the OS's randomness
/// (std's `RandomState`): not guessable from other ids.
fn new_session_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let keys = RandomState::new();
    format!(
        "{:016x}{:016x}",
        keys.hash_one((n, 0u8)),
        keys.hash_one((n, 1u8))
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(body.as_bytes()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT);
    resp
}

fn bad_request(message: &str) -> Response<Bytes> {
    error_response(StatusCode::BAD_REQUEST, message)
}

fn too_large() -> Response<Bytes> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the body is larger than 8 KiB",
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

//! The browser client, `client/longpoll.js`, shipped with the crate.

use ::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use ::http::Response;
use bytes::Bytes;

use super::FullBody;

/// The browser client: an ES module without dependencies that speaks this
/// crate's protocol (`client/longpoll.js`, documented in the file).
///
/// It keeps the cursor and sends it in the query, loops on `204`, backs off
/// after a `503` (never sooner than `Retry-After`, then capped exponential
/// backoff with jitter), delivers every update of an
/// [envelope](super#the-envelope) once, in order, reports resyncs (a new
/// epoch replaces what the page shows), polls several keys at once, reads
/// [server-sent events](crate::sse) with the long poll as a fallback, and
/// stops on an `AbortSignal`. A page uses it as:
///
/// ```js
/// import { subscribe } from "/longpoll.js";
/// subscribe("/feed", {
///   events: "/feed/events",              // optional: SSE first
///   onUpdate(data, { epoch, version }) { show(data); },
///   onResync({ reason }) { clear(); },   // the updates that follow are a new baseline
/// });
/// ```
///
/// Serve it with [`client_js_response`].
pub const CLIENT_JS: &str = include_str!("../../client/longpoll.js");

/// `text/javascript; charset=utf-8`, the content type of [`CLIENT_JS`].
pub const TEXT_JAVASCRIPT: HeaderValue = HeaderValue::from_static("text/javascript; charset=utf-8");

/// `200` with [`CLIENT_JS`] (not copied), `Content-Type: text/javascript;
/// charset=utf-8` and `Cache-Control: no-cache` (a browser asks again after
/// a server upgrade). hyper serves it as is; axum takes it as a response.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let app: Router = Router::new()
///     .route("/longpoll.js", get(|| async { longpoll::http::client_js_response() }));
/// # drop(app);
/// ```
///
/// In a hyper `service_fn`: `"/longpoll.js" => Ok(longpoll::http::client_js_response())`.
pub fn client_js_response() -> Response<FullBody> {
    let mut resp = Response::new(FullBody::new(Bytes::from_static(CLIENT_JS.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_JAVASCRIPT);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

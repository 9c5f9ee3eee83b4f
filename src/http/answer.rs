//! The answers: bodies encoded once per update, the JSON envelope of a
//! batch, error and `503` responses, and [`FullBody`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use ::http::{Response, StatusCode};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

use crate::{Changed, Resync, Update};

/// `application/json`, the default content type of a long poll's bodies.
pub const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

pub(crate) const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// What a `200` of a long poll carries.
///
/// ```text
/// Latest:   <the encoder's bytes for the newest update>
/// Envelope: {"epoch":"1f2e3d4c5b6a7988","version":42,
///            "updates":[{"version":41,"data":<bytes>},{"version":42,"data":<bytes>}],
///            "resync":{"reason":"lagged","skipped":3}}
/// ```
///
/// See the [module documentation](super#the-envelope) for the envelope's
/// fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyFormat {
    /// The encoder's bytes for the newest update, with the endpoint's
    /// content type (the default): a client that only shows the latest
    /// state needs nothing else.
    #[default]
    Latest,
    /// A JSON envelope with every update since the cursor, oldest first,
    /// and the resync reason when the answer is a new baseline: what an
    /// SSE stream carries, in one answer. The encoder's bytes must be JSON.
    Envelope,
}

/// A body of one [`Bytes`] frame, or none: what `http_body_util::Full`
/// is, without that dependency. hyper serves it as is, and axum's
/// `IntoResponse` takes a `Response<FullBody>`.
///
/// Its [`Default`] is the empty body (which `tower-http`'s CORS layer uses
/// to answer a preflight).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FullBody {
    data: Option<Bytes>,
}

impl FullBody {
    /// A body of `data` (no frame at all if it is empty).
    pub fn new(data: Bytes) -> Self {
        FullBody {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// The bytes, if not yet taken by the server.
    pub fn bytes(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// The bytes (empty if already sent).
    pub fn into_bytes(self) -> Bytes {
        self.data.unwrap_or_default()
    }
}

impl From<Bytes> for FullBody {
    fn from(data: Bytes) -> Self {
        FullBody::new(data)
    }
}

impl http_body::Body for FullBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .data
                .take()
                .map(|d| Ok(http_body::Frame::data(d))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A response with a JSON body `{"error": message}`, `Content-Type:
/// application/json` and `Cache-Control: no-store`.
///
/// ```
/// use http::StatusCode;
/// use longpoll::http::error_response;
///
/// let resp = error_response(StatusCode::CONFLICT, "sold \"out\"");
/// assert_eq!(resp.status(), StatusCode::CONFLICT);
/// assert_eq!(resp.body(), r#"{"error":"sold \"out\""}"#);
/// ```
pub fn error_response(status: StatusCode, message: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(error_body(message)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// `{"error": message}` as JSON text.
pub(crate) fn error_body(message: &str) -> String {
    let mut out = BytesMut::with_capacity(message.len() + 12);
    out.put_slice(br#"{"error":"#);
    json_string(&mut out, message);
    out.put_u8(b'}');
    String::from_utf8(out.to_vec()).expect("JSON text of a str is UTF-8")
}

/// `s` as a JSON string, quotes included.
pub(crate) fn json_string(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    for c in s.chars() {
        match c {
            '"' => out.put_slice(b"\\\""),
            '\\' => out.put_slice(b"\\\\"),
            c if u32::from(c) < 0x20 => {
                out.put_slice(format!("\\u{:04x}", u32::from(c)).as_bytes());
            }
            c => {
                let mut buf = [0; 4];
                out.put_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.put_u8(b'"');
}

/// `503` with `Retry-After` in whole seconds (rounded up, at least 1).
pub(crate) fn unavailable(message: &str, retry_after: Duration) -> Response<Bytes> {
    let secs = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// `204 No Content` with `Cache-Control: no-store`.
pub(crate) fn no_content() -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// `405` with `Allow`.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint answers GET and HEAD only",
    );
    resp.headers_mut()
        .insert(::http::header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Whether a method is one a poll or a stream answers.
pub(crate) fn is_get_or_head(method: &::http::Method) -> bool {
    method == ::http::Method::GET || method == ::http::Method::HEAD
}

type Encoder<T> = dyn Fn(&Update<T>) -> Bytes + Send + Sync;

/// The encoder and the bodies of recent updates, shared by every clone of
/// an endpoint and by the endpoints of several broadcasters.
///
/// An update is known by its value's allocation: every clone of an
/// [`Update`] shares one `Arc<T>`, and each publish makes a new one. The
/// cache keeps a `Weak` to it, so that the address cannot be reused for
/// another update while the entry exists: two broadcasters (the keys of a
/// hub) never share an entry, even with equal epochs and versions.
pub(crate) struct Bodies<T> {
    encode: Box<Encoder<T>>,
    capacity: AtomicUsize,
    cache: Mutex<Cache<T>>,
}

struct Cache<T> {
    entries: HashMap<usize, Entry<T>>,
    /// Oldest first, for eviction.
    order: VecDeque<usize>,
}

struct Entry<T> {
    /// Keeps the address of the update's value from being reused.
    _value: Weak<T>,
    slot: Arc<Slot>,
}

/// One update's encodings, each made at most once.
#[derive(Default)]
struct Slot {
    /// The encoder's bytes.
    data: OnceLock<Bytes>,
    /// The envelope of an answer made of this update alone, without a
    /// resync: what every waiter woken by its publish gets.
    envelope: OnceLock<Bytes>,
    /// The `ETag` of an answer whose newest update is this one.
    etag: OnceLock<HeaderValue>,
}

impl<T> Bodies<T> {
    pub(crate) fn new(encode: Box<Encoder<T>>, capacity: usize) -> Self {
        Bodies {
            encode,
            capacity: AtomicUsize::new(capacity.max(1)),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    fn slot(&self, update: &Update<T>) -> Arc<Slot> {
        let key = Arc::as_ptr(update.value()).cast::<()>() as usize;
        let mut cache = self.cache.lock();
        if let Some(entry) = cache.entries.get(&key) {
            return Arc::clone(&entry.slot);
        }
        let capacity = self.capacity();
        let mut evicted = Vec::new();
        while cache.entries.len() >= capacity {
            let Some(old) = cache.order.pop_front() else {
                break;
            };
            evicted.extend(cache.entries.remove(&old));
        }
        let slot = Arc::new(Slot::default());
        cache.entries.insert(
            key,
            Entry {
                _value: Arc::downgrade(update.value()),
                slot: Arc::clone(&slot),
            },
        );
        cache.order.push_back(key);
        drop(cache);
        // Outside the lock: dropping a `Weak` may free the value's memory.
        drop(evicted);
        slot
    }

    /// The encoder's bytes for `update`, encoded on first use and shared.
    ///
    /// Waiters that ask for the same update at once wait for the one
    /// encoding rather than each making their own.
    pub(crate) fn data(&self, update: &Update<T>) -> Bytes {
        let slot = self.slot(update);
        slot.data.get_or_init(|| (self.encode)(update)).clone()
    }

    /// The `ETag` of an answer whose newest update is `update`, made once
    /// and shared, like its body.
    pub(crate) fn etag(&self, update: &Update<T>) -> HeaderValue {
        let slot = self.slot(update);
        slot.etag
            .get_or_init(|| super::etag(update.epoch(), update.version()))
            .clone()
    }

    /// The envelope of `changed` (see [`BodyFormat::Envelope`]), with `key`
    /// first if given. A single update without a resync is cached.
    pub(crate) fn envelope(&self, changed: &Changed<T>, key: Option<&str>) -> Bytes {
        let updates = changed.updates();
        if let ([only], None, None) = (updates, changed.resync(), key) {
            let slot = self.slot(only);
            return slot
                .envelope
                .get_or_init(|| {
                    let data = slot.data.get_or_init(|| (self.encode)(only)).clone();
                    let mut out = BytesMut::with_capacity(data.len() + 80);
                    write_envelope(&mut out, None, changed, false, |_| data.clone());
                    out.freeze()
                })
                .clone();
        }
        let mut out = BytesMut::new();
        self.write_envelope(&mut out, key, changed, false);
        out.freeze()
    }

    /// The envelope of a baseline for a client that named no cursor:
    /// `"resync":{"reason":"initial"}`.
    pub(crate) fn initial_envelope(&self, changed: &Changed<T>) -> Bytes {
        let mut out = BytesMut::new();
        self.write_envelope(&mut out, None, changed, true);
        out.freeze()
    }

    /// Appends the envelope of `changed` to `out`; `initial` marks a
    /// baseline for a client that named no cursor.
    pub(crate) fn write_envelope(
        &self,
        out: &mut BytesMut,
        key: Option<&str>,
        changed: &Changed<T>,
        initial: bool,
    ) {
        if let ([_], None, false) = (changed.updates(), changed.resync(), initial) {
            if let Some(key) = key {
                // `{"key":..,` + the cached envelope without its `{`.
                let cached = self.envelope(changed, None);
                out.put_slice(br#"{"key":"#);
                json_string(out, key);
                out.put_u8(b',');
                out.put_slice(&cached[1..]);
                return;
            }
        }
        write_envelope(out, key, changed, initial, |u| self.data(u));
    }
}

/// `{"key":..,"epoch":..,"version":..,"updates":[..],"resync":..}`.
fn write_envelope<T>(
    out: &mut BytesMut,
    key: Option<&str>,
    changed: &Changed<T>,
    initial: bool,
    mut data: impl FnMut(&Update<T>) -> Bytes,
) {
    out.put_u8(b'{');
    if let Some(key) = key {
        out.put_slice(br#""key":"#);
        json_string(out, key);
        out.put_u8(b',');
    }
    let latest = changed.latest();
    out.put_slice(
        format!(
            r#""epoch":"{}","version":{},"updates":["#,
            latest.epoch(),
            latest.version()
        )
        .as_bytes(),
    );
    for (i, u) in changed.updates().iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(format!(r#"{{"version":{},"data":"#, u.version()).as_bytes());
        out.put_slice(&data(u));
        out.put_u8(b'}');
    }
    out.put_u8(b']');
    if initial {
        out.put_slice(br#","resync":{"reason":"initial"}"#);
    } else if let Some(resync) = changed.resync() {
        out.put_slice(br#","resync":"#);
        resync_json(out, resync);
    }
    out.put_u8(b'}');
}

/// The word SSE's `resync` event and the envelope use for a reason.
pub(crate) fn resync_reason(resync: Resync) -> &'static str {
    match resync {
        Resync::Lagged { .. } => "lagged",
        Resync::Ahead => "ahead",
        Resync::OtherEpoch => "other-epoch",
    }
}

/// `{"reason":"lagged","skipped":N}`, `{"reason":"ahead"}`, ...
pub(crate) fn resync_json(out: &mut BytesMut, resync: Resync) {
    out.put_slice(br#"{"reason":""#);
    out.put_slice(resync_reason(resync).as_bytes());
    out.put_u8(b'"');
    if let Resync::Lagged { skipped } = resync {
        out.put_slice(format!(r#","skipped":{skipped}"#).as_bytes());
    }
    out.put_u8(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_escape_quotes_backslashes_and_controls() {
        assert_eq!(error_body("a\"b\\c\nd"), r#"{"error":"a\"b\\c\u000ad"}"#);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let header = |d| unavailable("x", d).headers()[RETRY_AFTER].clone();
        assert_eq!(header(Duration::from_millis(1500)), "2");
        assert_eq!(header(Duration::ZERO), "1");
        assert_eq!(header(Duration::from_secs(1)), "1");
    }
}

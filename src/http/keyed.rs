//! [`KeyedPoll`]: long polls over a [`Keyed`] hub, of one key or of several
//! keys at once.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use ::http::{Request, Response, StatusCode, Uri};
use bytes::{BufMut, Bytes, BytesMut};

use super::answer::{
    error_response, is_get_or_head, method_not_allowed, no_content, unavailable, Bodies, FullBody,
    APPLICATION_JSON, NO_STORE,
};
use super::form::{percent_decode, raw_pairs};
use super::long_poll::Settings;
use super::request::{parse_timeout, PollConfig, RequestError, MAX_EPOCH_LEN};
use super::{BodyFormat, LongPoll};
use crate::keyed::{Keyed, TooManyKeys, WaitMany};
use crate::sse::parse_event_id;
use crate::telemetry::{self, Endpoint, Refused};
use crate::{Changed, Cursor, Update, WaitError};

/// The longest cursor accepted in `cursors`, in bytes: an epoch of
/// [`MAX_EPOCH_LEN`], a `-`, and 20 digits. A longer one is a `400`; any
/// shorter one that is not of this server's form is foreign.
pub const MAX_CURSOR_LEN: usize = MAX_EPOCH_LEN + 21;

/// The limits of a multi-key poll, and the [`PollConfig`] of its timeouts.
///
/// ```
/// use longpoll::http::{KeyedPollConfig, PollConfig};
/// use std::time::Duration;
///
/// let config = KeyedPollConfig::new()
///     .max_keys(8)
///     .max_key_len(32)
///     .poll(PollConfig::new().default_timeout(Duration::from_secs(20)));
/// assert_eq!(config.get_max_keys(), 8);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct KeyedPollConfig {
    poll: PollConfig,
    max_keys: usize,
    max_key_len: usize,
}

impl Default for KeyedPollConfig {
    fn default() -> Self {
        KeyedPollConfig {
            poll: PollConfig::default(),
            max_keys: 16,
            max_key_len: 128,
        }
    }
}

impl KeyedPollConfig {
    /// At most 16 keys of at most 128 bytes each, with the default
    /// [`PollConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Timeouts and `Retry-After`, for single-key and multi-key polls.
    pub fn poll(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }

    /// The most keys one poll may name (default 16); more is a `400`.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The longest key, in bytes once percent-decoded (default 128); longer
    /// is a `400`.
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.max_key_len = n;
        self
    }

    /// The timeouts and `Retry-After` values.
    pub fn get_poll(&self) -> &PollConfig {
        &self.poll
    }

    /// The most keys per poll.
    pub fn get_max_keys(&self) -> usize {
        self.max_keys
    }

    /// The longest key.
    pub fn get_max_key_len(&self) -> usize {
        self.max_key_len
    }
}

/// A multi-key poll that cannot be served as sent: answer `400` with
/// [`into_response`](Self::into_response). A cursor the server did not
/// issue is never an error: it is foreign, and answered at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyedRequestError {
    /// `keys` is absent, empty, or does not decode.
    #[error("`keys` must list 1 or more keys, separated by commas")]
    MissingKeys,
    /// More keys than [`KeyedPollConfig::max_keys`].
    #[error("at most {max} keys may be polled at once")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// An empty key, or one longer than [`KeyedPollConfig::max_key_len`],
    /// or one the server's key type does not accept.
    #[error("a key must be 1 to {max_len} bytes of a valid key")]
    InvalidKey {
        /// The longest key accepted.
        max_len: usize,
    },
    /// A key listed twice.
    #[error("a key is listed twice in `keys`")]
    DuplicateKey,
    /// `cursors` lists more cursors than `keys` lists keys.
    #[error("`cursors` must not list more cursors than `keys` lists keys")]
    TooManyCursors,
    /// A cursor over [`MAX_CURSOR_LEN`] bytes.
    #[error("a cursor must be at most {max} bytes", max = MAX_CURSOR_LEN)]
    CursorTooLong,
    /// `timeout` is malformed, or a parameter is repeated.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl KeyedRequestError {
    /// Always `400 Bad Request`.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// `400` with `{"error": "<this error's message>"}`.
    pub fn into_response(self) -> Response<Bytes> {
        error_response(self.status(), &self.to_string())
    }
}

/// Where one key of a multi-key poll starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyStart {
    /// No cursor: answered at once with the key's retained updates.
    Baseline,
    Cursor(Cursor),
    /// A cursor of another form: answered at once, as another epoch.
    Foreign,
}

/// One multi-key poll as the client asked for it: the keys (as sent), a
/// cursor for each, and how long to hold. See the
/// [module documentation](super#several-keys-in-one-poll).
///
/// ```
/// use longpoll::http::{KeyedPollConfig, KeyedRequest};
///
/// let config = KeyedPollConfig::new();
/// let req = KeyedRequest::parse(Some("keys=apples,pears&cursors=00000000000000ab-3,"), &config)?;
/// assert_eq!(req.keys().collect::<Vec<_>>(), ["apples", "pears"]);
/// assert_eq!(req.cursor(0).unwrap().version().unwrap().get(), 3);
/// assert_eq!(req.cursor(1), None); // no cursor: its current state at once
/// # Ok::<(), longpoll::http::KeyedRequestError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedRequest {
    keys: Vec<(String, KeyStart)>,
    timeout: Duration,
}

impl KeyedRequest {
    /// Parses a query string (without the `?`):
    ///
    /// * `keys`: the keys, separated by commas once percent-decoded (so a
    ///   key cannot hold a comma), 1 to [`max_keys`](KeyedPollConfig::max_keys)
    ///   of them, each 1 to [`max_key_len`](KeyedPollConfig::max_key_len)
    ///   bytes, none twice;
    /// * `cursors` (optional): the cursor of each key, in the same order,
    ///   each `<epoch>-<version>` (an SSE event id, an ETag without its
    ///   quotes). An empty or missing cursor asks for the key's current
    ///   state at once; one this server did not issue is foreign (answered
    ///   at once, as another epoch);
    /// * `timeout`: as for a single long poll.
    ///
    /// Unknown parameters are ignored. Never panics.
    ///
    /// # Errors
    ///
    /// A [`KeyedRequestError`] for anything outside these bounds.
    pub fn parse(query: Option<&str>, config: &KeyedPollConfig) -> Result<Self, KeyedRequestError> {
        let mut keys = None;
        let mut cursors = None;
        let mut timeout = None;
        for (name, value) in raw_pairs(query.unwrap_or("").as_bytes()) {
            let Ok(name) = percent_decode(name) else {
                continue;
            };
            let (slot, name): (&mut Option<&[u8]>, &'static str) = match name.as_str() {
                "keys" => (&mut keys, "keys"),
                "cursors" => (&mut cursors, "cursors"),
                "timeout" => (&mut timeout, "timeout"),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(RequestError::DuplicateParameter { name }.into());
            }
        }
        let max = config.poll.get_max_timeout();
        let timeout = match timeout {
            Some(raw) => {
                let raw = percent_decode(raw).map_err(|_| RequestError::InvalidTimeout { max })?;
                parse_timeout(&raw, max)?
            }
            None => config.poll.get_default_timeout(),
        };

        let keys = keys
            .and_then(|raw| percent_decode(raw).ok())
            .filter(|k| !k.is_empty())
            .ok_or(KeyedRequestError::MissingKeys)?;
        let count = keys.split(',').count();
        if count > config.max_keys {
            return Err(KeyedRequestError::TooManyKeys {
                max: config.max_keys,
            });
        }
        // Undecodable cursors: all foreign, but not an error.
        let (cursors, undecodable) = match cursors {
            Some(raw) => match percent_decode(raw) {
                Ok(s) => (s, false),
                Err(_) if raw.len() > (MAX_CURSOR_LEN + 1) * count => {
                    return Err(KeyedRequestError::CursorTooLong)
                }
                Err(_) => (String::new(), true),
            },
            None => (String::new(), false),
        };
        let mut cursor_list: Vec<&str> = if cursors.is_empty() {
            Vec::new()
        } else {
            cursors.split(',').collect()
        };
        // A trailing comma after the last cursor is not one more cursor.
        if cursor_list.len() == count + 1 && cursor_list.last() == Some(&"") {
            cursor_list.pop();
        }
        if cursor_list.len() > count {
            return Err(KeyedRequestError::TooManyCursors);
        }

        let mut out: Vec<(String, KeyStart)> = Vec::with_capacity(count);
        for (i, key) in keys.split(',').enumerate() {
            if key.is_empty() || key.len() > config.max_key_len {
                return Err(KeyedRequestError::InvalidKey {
                    max_len: config.max_key_len,
                });
            }
            if out.iter().any(|(k, _)| k == key) {
                return Err(KeyedRequestError::DuplicateKey);
            }
            let start = match cursor_list.get(i).map(|c| c.trim()) {
                _ if undecodable => KeyStart::Foreign,
                None | Some("") => KeyStart::Baseline,
                Some(c) if c.len() > MAX_CURSOR_LEN => {
                    return Err(KeyedRequestError::CursorTooLong)
                }
                Some(c) => parse_event_id(c).map_or(KeyStart::Foreign, KeyStart::Cursor),
            };
            out.push((key.to_owned(), start));
        }
        Ok(KeyedRequest { keys: out, timeout })
    }

    /// [`parse`](Self::parse) on a request's URI.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn from_uri(uri: &Uri, config: &KeyedPollConfig) -> Result<Self, KeyedRequestError> {
        Self::parse(uri.query(), config)
    }

    /// The keys, as sent, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is named (never, for a parsed request).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The cursor of the `i`-th key: `None` if it has none (its current
    /// state is answered at once), or if it is foreign.
    pub fn cursor(&self, i: usize) -> Option<Cursor> {
        match self.keys.get(i)?.1 {
            KeyStart::Cursor(c) => Some(c),
            KeyStart::Baseline | KeyStart::Foreign => None,
        }
    }

    /// Whether the `i`-th key's cursor is foreign (not of this server's
    /// form): answered at once with the key's state, as another epoch.
    pub fn is_foreign(&self, i: usize) -> bool {
        matches!(self.keys.get(i), Some((_, KeyStart::Foreign)))
    }

    /// How long to hold the poll before answering `204`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Long polls over a [`Keyed`] hub: the endpoint of each key
/// ([`long_poll`](Self::long_poll)), and one poll over several keys
/// ([`handle`](Self::handle)), all sharing one encoder and one body cache.
///
/// See the [module documentation](super#several-keys-in-one-poll) for the
/// wire format.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http::{Request, StatusCode};
/// use longpoll::http::KeyedPoll;
/// use longpoll::keyed::Keyed;
///
/// let stock: Keyed<String, u32> = Keyed::builder().init(|_| 10).build();
/// let poll = KeyedPoll::new(stock.clone(), |u| Bytes::from(u.value().to_string()));
/// let apples = stock.broadcaster("apples")?.current().cursor();
/// let pears = stock.broadcaster("pears")?.current().cursor();
/// let id = |c: longpoll::Cursor| format!("{}-{}", c.epoch().unwrap(), c.version().unwrap());
///
/// let uri = format!("/stock?keys=apples,pears&cursors={},{}&timeout=30", id(apples), id(pears));
/// let held = poll.handle(Request::get(uri).body(())?);
/// stock.notify("pears", 9)?;
/// let Ok(resp) = held.await;
/// assert_eq!(resp.status(), StatusCode::OK);
/// let body = String::from_utf8(resp.into_body().into_bytes().to_vec())?;
/// assert!(body.starts_with(r#"{"answers":[{"key":"pears","epoch":"#), "{body}");
/// assert!(body.ends_with(r#""updates":[{"version":1,"data":9}]}]}"#), "{body}");
/// # Ok(())
/// # }
/// ```
pub struct KeyedPoll<K, T> {
    hub: Keyed<K, T>,
    settings: Settings<T>,
    config: KeyedPollConfig,
}

impl<K, T> Clone for KeyedPoll<K, T> {
    fn clone(&self) -> Self {
        KeyedPoll {
            hub: self.hub.clone(),
            settings: self.settings.clone(),
            config: self.config,
        }
    }
}

impl<K, T> fmt::Debug for KeyedPoll<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPoll")
            .field("hub", &self.hub)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How many updates keep their encoding by default.
const CACHED_UPDATES: usize = 1024;

impl<K, T> KeyedPoll<K, T> {
    /// Long polls over `hub` whose updates are what `encode` makes of them
    /// (JSON: the multi-key answer embeds it), with the default
    /// [`KeyedPollConfig`]; the single-key endpoints answer in
    /// [`BodyFormat::Latest`].
    pub fn new<F>(hub: Keyed<K, T>, encode: F) -> Self
    where
        F: Fn(&Update<T>) -> Bytes + Send + Sync + 'static,
    {
        KeyedPoll {
            hub,
            settings: Settings::new(Bodies::new(Box::new(encode), CACHED_UPDATES)),
            config: KeyedPollConfig::default(),
        }
    }

    /// Uses `config` for limits, timeouts and `Retry-After`.
    #[must_use]
    pub fn with_config(mut self, config: KeyedPollConfig) -> Self {
        self.settings.config = config.poll;
        self.config = config;
        self
    }

    /// The single-key endpoints answer in `format` (the multi-key answer is
    /// always made of envelopes).
    #[must_use]
    pub fn with_format(mut self, format: BodyFormat) -> Self {
        self.settings.format = format;
        self
    }

    /// Keeps the encodings of the last `n` updates encoded (default 1024),
    /// for every key and every clone.
    #[must_use]
    pub fn with_cache_capacity(self, n: usize) -> Self {
        self.settings.bodies.set_capacity(n);
        self
    }

    /// The hub.
    pub fn hub(&self) -> &Keyed<K, T> {
        &self.hub
    }

    /// The limits and timeouts.
    pub fn config(&self) -> &KeyedPollConfig {
        &self.config
    }

    pub(crate) fn bodies(&self) -> &std::sync::Arc<Bodies<T>> {
        &self.settings.bodies
    }
}

impl<K, T> KeyedPoll<K, T>
where
    K: Hash + Eq + Clone,
{
    /// The long-poll endpoint of one key (created if needed), sharing this
    /// endpoint's encoder and cache.
    ///
    /// # Errors
    ///
    /// [`TooManyKeys`] if the key would be created past the hub's limit:
    /// answer `503`.
    pub fn long_poll<Q>(&self, key: &Q) -> Result<LongPoll<T>, TooManyKeys>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let broadcaster = self
            .hub
            .broadcaster(key)
            .inspect_err(|e| self.hub.refused(e))?;
        Ok(LongPoll::from_settings(broadcaster, self.settings.clone()))
    }
}

impl<K, T> KeyedPoll<K, T>
where
    K: Hash + Eq + Clone + FromStr,
{
    /// Parses `req` as a multi-key poll, drops it, waits on every key at
    /// once ([`Keyed::wait_many`]) and answers. Never fails: a malformed
    /// request gets its `400`, another method than `GET` or `HEAD` a `405`,
    /// a key the hub cannot create a `503`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future unregisters every key's waiter.
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn handle<B>(&self, req: Request<B>) -> KeyedResponseFuture<K, T> {
        if !is_get_or_head(req.method()) {
            return KeyedResponseFuture::ready(method_not_allowed("GET, HEAD"));
        }
        let request = KeyedRequest::from_uri(req.uri(), &self.config);
        drop(req);
        match request {
            Ok(request) => self.serve(request),
            Err(e) => KeyedResponseFuture::ready(e.into_response()),
        }
    }

    /// Waits as `request` asks and answers: [`handle`](Self::handle) for a
    /// request already parsed.
    ///
    /// Keys without a cursor, and keys whose cursor is foreign, are
    /// answered at once (with every other key ready at that moment);
    /// otherwise the poll is held until one key changes, or the timeout
    /// (`204`).
    ///
    /// # Cancel safety
    ///
    /// As [`handle`](Self::handle).
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn serve(&self, request: KeyedRequest) -> KeyedResponseFuture<K, T> {
        let bad_key = || {
            KeyedResponseFuture::ready(
                KeyedRequestError::InvalidKey {
                    max_len: self.config.max_key_len,
                }
                .into_response(),
            )
        };
        let mut names = Vec::with_capacity(request.keys.len());
        let mut now: Vec<(usize, KeyAnswer<T>)> = Vec::new();
        let mut pairs = Vec::new();
        for (i, (name, start)) in request.keys.into_iter().enumerate() {
            let Ok(key) = K::from_str(&name) else {
                return bad_key();
            };
            match start {
                KeyStart::Cursor(cursor) => pairs.push((key.clone(), cursor)),
                KeyStart::Baseline | KeyStart::Foreign => {
                    let b = match self.hub.broadcaster(&key) {
                        Ok(b) => b,
                        Err(e) => {
                            self.hub.refused(&e);
                            return self.too_many_keys(e);
                        }
                    };
                    let answer = match start {
                        KeyStart::Baseline if b.is_closed() => {
                            telemetry::refused(self.hub.telemetry(), Refused::Closed);
                            Err(WaitError::Closed)
                        }
                        KeyStart::Baseline => Ok(Changed::many(b.history(), None)),
                        _ => b.answer_foreign(),
                    };
                    now.push((
                        i,
                        KeyAnswer {
                            answer,
                            initial: start == KeyStart::Baseline,
                        },
                    ));
                }
            }
            names.push((key, name));
        }
        let mut wait = match self.hub.wait_many(pairs) {
            Ok(w) => w,
            Err(e) => return self.too_many_keys(e),
        };
        if !now.is_empty() {
            // Answer at once, with whatever else is ready at this moment.
            if !wait.is_empty() {
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(ready) = Pin::new(&mut wait).poll(&mut cx) {
                    now.extend(ready.into_iter().map(|(k, answer)| {
                        let i = position(&names, &k);
                        (
                            i,
                            KeyAnswer {
                                answer,
                                initial: false,
                            },
                        )
                    }));
                }
            }
            drop(wait);
            now.sort_by_key(|(i, _)| *i);
            return KeyedResponseFuture::ready(self.respond(&names, now));
        }
        KeyedResponseFuture {
            state: KeyedState::Waiting {
                wait,
                poll: self.clone(),
                names,
                sleep: tokio::time::sleep(request.timeout),
            },
        }
    }

    fn too_many_keys(&self, e: TooManyKeys) -> KeyedResponseFuture<K, T> {
        KeyedResponseFuture::ready(unavailable(
            &format!("{e}; retry later"),
            self.config.poll.get_full_retry_after(),
        ))
    }

    /// `200` with the ready keys in request order, or `503` if one of them
    /// failed.
    fn respond(
        &self,
        names: &[(K, String)],
        answers: Vec<(usize, KeyAnswer<T>)>,
    ) -> Response<Bytes> {
        for (_, a) in &answers {
            telemetry::answered(self.hub.telemetry(), &a.answer, Endpoint::KeyedPoll);
            match &a.answer {
                Ok(_) => {}
                Err(WaitError::Full { .. }) => {
                    return unavailable(
                        "too many requests are waiting; retry later",
                        self.config.poll.get_full_retry_after(),
                    )
                }
                Err(_) => {
                    return unavailable(
                        "the server is shutting down; retry later",
                        self.config.poll.get_closed_retry_after(),
                    )
                }
            }
        }
        let mut out = BytesMut::new();
        out.put_slice(br#"{"answers":["#);
        for (n, (i, a)) in answers.iter().enumerate() {
            if n > 0 {
                out.put_u8(b',');
            }
            let changed = a.answer.as_ref().expect("checked above");
            self.settings
                .bodies
                .write_envelope(&mut out, Some(&names[*i].1), changed, a.initial);
        }
        out.put_slice(b"]}");
        let mut resp = Response::new(out.freeze());
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, APPLICATION_JSON);
        headers.insert(CACHE_CONTROL, NO_STORE);
        resp
    }
}

fn position<K: Eq>(names: &[(K, String)], key: &K) -> usize {
    names
        .iter()
        .position(|(k, _)| k == key)
        .expect("every ready key was asked for")
}

struct KeyAnswer<T> {
    answer: Result<Changed<T>, WaitError>,
    /// A baseline for a key without a cursor.
    initial: bool,
}

pin_project_lite::pin_project! {
    /// Future returned by [`KeyedPoll::handle`] and [`KeyedPoll::serve`]
    /// (and the tower `Service`): the response, once one key changed or the
    /// timeout passed. Never an `Err`.
    ///
    /// # Cancel safety
    ///
    /// Dropping it unregisters every key's waiter at once.
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled, or after it
    /// completed.
    #[must_use = "futures do nothing unless polled"]
    pub struct KeyedResponseFuture<K, T> {
        #[pin]
        state: KeyedState<K, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = KeyedStateProj]
    enum KeyedState<K, T> {
        Ready { response: Option<Response<FullBody>> },
        Waiting {
            wait: WaitMany<K, T>,
            poll: KeyedPoll<K, T>,
            names: Vec<(K, String)>,
            #[pin]
            sleep: tokio::time::Sleep,
        },
    }
}

impl<K, T> KeyedResponseFuture<K, T> {
    fn ready(response: Response<Bytes>) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Ready {
                response: Some(response.map(FullBody::new)),
            },
        }
    }
}

impl<K, T> Future for KeyedResponseFuture<K, T>
where
    K: Hash + Eq + Clone + FromStr,
{
    type Output = Result<Response<FullBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let response = match state.as_mut().project() {
            KeyedStateProj::Ready { response } => {
                return Poll::Ready(Ok(response
                    .take()
                    .expect("`KeyedResponseFuture` polled after it completed")));
            }
            KeyedStateProj::Waiting {
                wait,
                poll,
                names,
                sleep,
            } => match Pin::new(wait).poll(cx) {
                Poll::Ready(ready) => {
                    let answers = ready
                        .into_iter()
                        .map(|(k, answer)| {
                            let i = position(names, &k);
                            let initial = false;
                            (i, KeyAnswer { answer, initial })
                        })
                        .collect();
                    poll.respond(names, answers)
                }
                Poll::Pending => match sleep.poll(cx) {
                    Poll::Ready(()) => no_content(),
                    Poll::Pending => return Poll::Pending,
                },
            },
        };
        // Done: unregister every waiter and release the handles now.
        state.set(KeyedState::Ready { response: None });
        Poll::Ready(Ok(response.map(FullBody::new)))
    }
}

impl<K, T> fmt::Debug for KeyedResponseFuture<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = matches!(self.state, KeyedState::Waiting { .. });
        f.debug_struct("KeyedResponseFuture")
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

//! [`LongPoll`]: the endpoint over one broadcaster, and its futures.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use ::http::{Request, Response, Uri};
use bytes::Bytes;

use super::answer::{
    is_get_or_head, method_not_allowed, no_content, unavailable, Bodies, BodyFormat, FullBody,
    APPLICATION_JSON, NO_STORE,
};
use super::request::{PollConfig, PollRequest, Position, RequestError};
use crate::telemetry::{self, Endpoint, Refused};
use crate::wait::WaitState;
use crate::{Broadcaster, Changed, Update, WaitError, WaitTimeout};

/// How many recent updates keep their encoded body, at least.
const KEPT_BODIES: usize = 8;
/// ... and at most, by default, whatever the history.
const MAX_KEPT_BODIES: usize = 1024;

/// A long-poll endpoint over a [`Broadcaster<T>`](crate::Broadcaster): parses
/// requests, waits, and answers with bodies encoded once per update.
///
/// `LongPoll` is a cheap handle (clone it into each connection); clones
/// share the broadcaster and the body cache.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http::{Request, StatusCode};
/// use longpoll::{http::LongPoll, Broadcaster};
///
/// let stock = Broadcaster::new(10u32);
/// let poll = LongPoll::new(stock.clone(), |u| Bytes::from(u.value().to_string()));
/// let get = |q: &str| Request::get(format!("/status?{q}")).body(()).unwrap();
///
/// // Up to date, nothing happens within the timeout: 204.
/// let Ok(resp) = poll.handle(get("since=0&timeout=1")).await;
/// assert_eq!(resp.status(), StatusCode::NO_CONTENT);
///
/// // Behind: answered at once, with the ETag to send back next time.
/// stock.notify(9)?;
/// let Ok(resp) = poll.handle(get("since=0")).await;
/// assert_eq!(resp.status(), StatusCode::OK);
/// assert_eq!(resp.body().bytes().unwrap(), "9");
/// let etag = format!("\"{}-1\"", stock.epoch());
/// assert_eq!(resp.headers()["etag"], etag.as_str());
///
/// // Malformed: 400 with a JSON message.
/// let Ok(resp) = poll.handle(get("since=-1")).await;
/// assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
/// # Ok(())
/// # }
/// ```
pub struct LongPoll<T> {
    broadcaster: Broadcaster<T>,
    settings: Settings<T>,
}

/// What the endpoints of several broadcasters share: config, format and
/// the body cache.
pub(crate) struct Settings<T> {
    pub(crate) config: PollConfig,
    pub(crate) content_type: HeaderValue,
    pub(crate) format: BodyFormat,
    pub(crate) bodies: Arc<Bodies<T>>,
}

impl<T> Clone for Settings<T> {
    fn clone(&self) -> Self {
        Settings {
            config: self.config,
            content_type: self.content_type.clone(),
            format: self.format,
            bodies: Arc::clone(&self.bodies),
        }
    }
}

impl<T> Settings<T> {
    pub(crate) fn new(bodies: Bodies<T>) -> Self {
        Settings {
            config: PollConfig::default(),
            content_type: APPLICATION_JSON,
            format: BodyFormat::Latest,
            bodies: Arc::new(bodies),
        }
    }
}

impl<T> LongPoll<T> {
    /// An endpoint over `broadcaster` whose `200` bodies are what `encode`
    /// makes of an update, sent as `application/json`, with the default
    /// [`PollConfig`] and [`BodyFormat::Latest`].
    ///
    /// `encode` runs once per update (while the update is among the last
    /// [`cache_capacity`](Self::cache_capacity) encoded): keep it short, and
    /// do not call back into this `LongPoll` from it.
    pub fn new<F>(broadcaster: Broadcaster<T>, encode: F) -> Self
    where
        F: Fn(&Update<T>) -> Bytes + Send + Sync + 'static,
    {
        let capacity = broadcaster
            .history_capacity()
            .clamp(KEPT_BODIES, MAX_KEPT_BODIES);
        LongPoll {
            broadcaster,
            settings: Settings::new(Bodies::new(Box::new(encode), capacity)),
        }
    }

    /// Uses `config` for timeouts and `Retry-After`.
    #[must_use]
    pub fn with_config(mut self, config: PollConfig) -> Self {
        self.settings.config = config;
        self
    }

    /// Sends [`BodyFormat::Latest`] bodies with this `Content-Type` instead
    /// of `application/json`. The envelope is always `application/json`.
    #[must_use]
    pub fn with_content_type(mut self, content_type: HeaderValue) -> Self {
        self.settings.content_type = content_type;
        self
    }

    /// Answers in `format`: the newest update's bytes
    /// ([`BodyFormat::Latest`], the default), or the envelope of every
    /// update since the cursor ([`BodyFormat::Envelope`]).
    #[must_use]
    pub fn with_format(mut self, format: BodyFormat) -> Self {
        self.settings.format = format;
        self
    }

    /// Keeps the encodings of the last `n` updates encoded (at least 1),
    /// for this handle and every handle that shares its cache. Default: the
    /// broadcaster's history capacity, from 8 to 1024.
    ///
    /// An update's encoding is made once while it stays among them: size it
    /// to the updates that are asked for at once (the newest of each
    /// broadcaster that [`for_broadcaster`](Self::for_broadcaster) serves,
    /// and the history that reconnecting clients read).
    #[must_use]
    pub fn with_cache_capacity(self, n: usize) -> Self {
        self.settings.bodies.set_capacity(n);
        self
    }

    /// The same endpoint (encoder, body cache, config, format) over another
    /// broadcaster of the same type: one `LongPoll` serves every key of a
    /// [`Keyed`](crate::keyed::Keyed) hub, and each update is still encoded
    /// once.
    ///
    /// The cache tells updates apart by their value's allocation, never by
    /// `(epoch, version)` alone, so that two broadcasters never share a body.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use longpoll::http::LongPoll;
    /// use longpoll::keyed::Keyed;
    ///
    /// let rooms: Keyed<String, String> = Keyed::builder().build();
    /// let lobby = rooms.broadcaster("lobby")?;
    /// let poll = LongPoll::new(lobby.clone(), |u| Bytes::from(u.value().to_string()));
    /// let other = poll.for_broadcaster(rooms.broadcaster("other")?);
    /// assert!(other.broadcaster().same_broadcaster(&rooms.broadcaster("other")?));
    /// # Ok::<(), longpoll::keyed::TooManyKeys>(())
    /// ```
    pub fn for_broadcaster(&self, broadcaster: Broadcaster<T>) -> Self {
        LongPoll::from_settings(broadcaster, self.settings.clone())
    }

    pub(crate) fn from_settings(broadcaster: Broadcaster<T>, settings: Settings<T>) -> Self {
        LongPoll {
            broadcaster,
            settings,
        }
    }

    /// The broadcaster this endpoint waits on.
    pub fn broadcaster(&self) -> &Broadcaster<T> {
        &self.broadcaster
    }

    /// The timeouts and `Retry-After` values in use.
    pub fn config(&self) -> &PollConfig {
        &self.settings.config
    }

    /// The format of `200` bodies.
    pub fn format(&self) -> BodyFormat {
        self.settings.format
    }

    /// How many updates keep their encodings (see
    /// [`with_cache_capacity`](Self::with_cache_capacity)).
    pub fn cache_capacity(&self) -> usize {
        self.settings.bodies.capacity()
    }

    /// Parses a request's URI and headers with this endpoint's config (see
    /// [`PollRequest::from_parts`]).
    ///
    /// The result owns what it needs: drop the request before waiting, so
    /// that a held poll does not keep the request's header bytes (and with
    /// them the server's read buffer) alive. [`handle`](Self::handle) does
    /// that for you.
    ///
    /// # Errors
    ///
    /// A [`RequestError`]: answer it with [`RequestError::into_response`].
    pub fn parse(&self, uri: &Uri, headers: &HeaderMap) -> Result<PollRequest, RequestError> {
        PollRequest::from_parts(uri, headers, &self.settings.config)
    }

    /// Waits as `request` asks: from its cursor, for at most its timeout.
    /// A foreign cursor ([`PollRequest::is_foreign`]) is answered at once
    /// with the current state.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future (the client went away) unregisters
    /// the waiter at once.
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn wait(&self, request: &PollRequest) -> PollWait<'_, T> {
        let inner = match self.start(request) {
            Start::Now(answer) => PollWaitInner::Ready {
                answer: Some(answer),
            },
            Start::At(cursor) => PollWaitInner::Waiting {
                wait: self.broadcaster.wait_timeout(cursor, request.timeout()),
            },
        };
        PollWait { inner }
    }

    /// Whether `request` is answered at once (a foreign cursor; no cursor
    /// in the envelope format), or waits from a cursor.
    fn start(&self, request: &PollRequest) -> Start<T> {
        if self.is_baseline(request) {
            let answer = if self.broadcaster.is_closed() {
                telemetry::refused(&self.broadcaster.shared.telemetry, Refused::Closed);
                Err(WaitError::Closed)
            } else {
                Ok(Changed::many(self.broadcaster.history(), None))
            };
            return Start::Now(answer);
        }
        match self.position(request) {
            Position::Foreign => Start::Now(self.broadcaster.answer_foreign()),
            Position::At(cursor) => Start::At(cursor),
        }
    }

    /// A request without a cursor, answered in the envelope format: a
    /// baseline, at once.
    fn is_baseline(&self, request: &PollRequest) -> bool {
        self.settings.format == BodyFormat::Envelope && !request.names_cursor()
    }

    fn position(&self, request: &PollRequest) -> Position {
        request.position(|| {
            let current = self.broadcaster.current();
            (current.epoch(), current.version())
        })
    }

    /// The whole endpoint in one call: parses `req`, drops it, waits, and
    /// answers. The future owns everything it needs (it borrows neither the
    /// request nor `self`), and resolves to `Ok`: a malformed request gets
    /// its `400`, a method other than `GET` or `HEAD` a `405`. The
    /// `Result<_, Infallible>` is what hyper's `service_fn` and a tower
    /// `Service` want; axum takes it as a response as it is.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn handle<B>(&self, req: Request<B>) -> ResponseFuture<T> {
        if !is_get_or_head(req.method()) {
            return ResponseFuture::ready(method_not_allowed("GET, HEAD"));
        }
        let request = self.parse(req.uri(), req.headers());
        // Nothing of the request outlives the parse.
        drop(req);
        match request {
            Ok(request) => self.serve(request),
            Err(e) => ResponseFuture::ready(e.into_response()),
        }
    }

    /// Waits as `request` asks and answers: [`handle`](Self::handle) for a
    /// request already parsed (by the axum extractor, say).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled.
    pub fn serve(&self, request: PollRequest) -> ResponseFuture<T> {
        match self.start(&request) {
            Start::Now(answer) => ResponseFuture::ready(self.respond(&request, answer)),
            Start::At(cursor) => ResponseFuture {
                state: State::Waiting {
                    wait: OwnedWait {
                        state: WaitState::new(&self.broadcaster.shared, cursor),
                        poll: self.clone(),
                    },
                    sleep: tokio::time::sleep(request.timeout()),
                    request,
                },
            },
        }
    }

    /// The response to `request` once its wait ended with `answer` (see the
    /// table in the [module docs](super)).
    pub fn respond(
        &self,
        request: &PollRequest,
        answer: Result<Changed<T>, WaitError>,
    ) -> Response<Bytes> {
        telemetry::answered(
            &self.broadcaster.shared.telemetry,
            &answer,
            Endpoint::LongPoll,
        );
        match answer {
            Ok(changed) if self.is_baseline(request) => {
                let body = self.settings.bodies.initial_envelope(&changed);
                ok(body, APPLICATION_JSON, self.etag(changed.latest()))
            }
            Ok(changed) => self.changed_response(&changed),
            Err(WaitError::TimedOut) if request.names_cursor() => no_content(),
            Err(WaitError::TimedOut) => self.update_response(&self.broadcaster.current()),
            Err(WaitError::Closed) => unavailable(
                "the server is shutting down; retry later",
                self.settings.config.get_closed_retry_after(),
            ),
            Err(WaitError::Full { .. }) => unavailable(
                "too many requests are waiting; retry later",
                self.settings.config.get_full_retry_after(),
            ),
        }
    }

    /// `200` answering with `changed`, in this endpoint's format, with the
    /// newest update's `ETag`, and `Cache-Control: no-store`.
    pub fn changed_response(&self, changed: &Changed<T>) -> Response<Bytes> {
        let latest = changed.latest();
        let (body, content_type) = match self.settings.format {
            BodyFormat::Envelope => (self.envelope(changed), APPLICATION_JSON),
            BodyFormat::Latest => (self.body(latest), self.settings.content_type.clone()),
        };
        ok(body, content_type, self.etag(latest))
    }

    /// `200` answering with `update` alone: the answer to a poll that
    /// `update` ends.
    pub fn update_response(&self, update: &Update<T>) -> Response<Bytes> {
        match self.settings.format {
            BodyFormat::Envelope => self.changed_response(&Changed::one(update.clone(), None)),
            BodyFormat::Latest => ok(
                self.body(update),
                self.settings.content_type.clone(),
                self.etag(update),
            ),
        }
    }

    /// The encoded body of `update`: encoded on the first call, then
    /// shared.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use longpoll::{http::LongPoll, Broadcaster};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let encoded = Arc::new(AtomicUsize::new(0));
    /// let poll = LongPoll::new(Broadcaster::new(7), {
    ///     let encoded = Arc::clone(&encoded);
    ///     move |u| {
    ///         encoded.fetch_add(1, Ordering::Relaxed);
    ///         Bytes::from(u.value().to_string())
    ///     }
    /// });
    /// let current = poll.broadcaster().current();
    /// let a = poll.body(&current);
    /// let b = poll.body(&current);
    /// assert_eq!(a, "7");
    /// assert_eq!(a.as_ptr(), b.as_ptr()); // the same bytes, not a copy
    /// assert_eq!(encoded.load(Ordering::Relaxed), 1);
    /// ```
    pub fn body(&self, update: &Update<T>) -> Bytes {
        self.settings.bodies.data(update)
    }

    /// The [envelope](super#the-envelope) of `changed`: every update's
    /// encoded bytes (each encoded once), the newest version and epoch, and
    /// the resync reason. The envelope of a single update without a resync
    /// (what every waiter woken by a publish gets) is made once and shared.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use bytes::Bytes;
    /// use longpoll::{http::LongPoll, Broadcaster, Cursor, Version};
    ///
    /// let feed = Broadcaster::builder().history(8).build(0u32);
    /// let poll = LongPoll::new(feed.clone(), |u| Bytes::from(u.value().to_string()));
    /// feed.notify(1)?;
    /// feed.notify(2)?;
    /// let changed = feed.wait(Cursor::at(Version::ZERO)).await?;
    /// let epoch = feed.epoch();
    /// assert_eq!(
    ///     poll.envelope(&changed),
    ///     format!(r#"{{"epoch":"{epoch}","version":2,"updates":[{{"version":1,"data":1}},{{"version":2,"data":2}}]}}"#),
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn envelope(&self, changed: &Changed<T>) -> Bytes {
        self.settings.bodies.envelope(changed, None)
    }

    /// The `ETag` of an answer whose newest update is `update`, made once
    /// per update and shared.
    fn etag(&self, update: &Update<T>) -> HeaderValue {
        self.settings.bodies.etag(update)
    }

    pub(crate) fn bodies(&self) -> &Arc<Bodies<T>> {
        &self.settings.bodies
    }
}

/// How a poll starts.
enum Start<T> {
    /// Answered at once.
    Now(Result<Changed<T>, WaitError>),
    /// Waits from this cursor.
    At(crate::Cursor),
}

/// `200` with `body`, its content type, `etag` and `Cache-Control: no-store`.
///
/// The header map is sized for its three entries: a server keeps each
/// answer's map until the connection's next request, so at 100 000 held
/// polls every byte of it counts.
fn ok(body: Bytes, content_type: HeaderValue, etag: HeaderValue) -> Response<Bytes> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    *headers = HeaderMap::with_capacity(3);
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(ETAG, etag);
    resp
}

impl<T> Clone for LongPoll<T> {
    fn clone(&self) -> Self {
        self.for_broadcaster(self.broadcaster.clone())
    }
}

impl<T> fmt::Debug for LongPoll<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LongPoll")
            .field("broadcaster", &self.broadcaster)
            .field("config", &self.settings.config)
            .field("content_type", &self.settings.content_type)
            .field("format", &self.settings.format)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// Future returned by [`LongPoll::wait`]: the wait's answer, or the
    /// immediate answer to a foreign cursor.
    ///
    /// # Cancel safety
    ///
    /// Dropping it unregisters the waiter at once, in O(1); nothing is
    /// consumed.
    #[must_use = "futures do nothing unless polled"]
    pub struct PollWait<'a, T> {
        #[pin]
        inner: PollWaitInner<'a, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = PollWaitProj]
    enum PollWaitInner<'a, T> {
        Ready { answer: Option<Result<Changed<T>, WaitError>> },
        Waiting { #[pin] wait: WaitTimeout<'a, T> },
    }
}

impl<T> Future for PollWait<'_, T> {
    type Output = Result<Changed<T>, WaitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            PollWaitProj::Ready { answer } => {
                Poll::Ready(answer.take().expect("`PollWait` polled after it completed"))
            }
            PollWaitProj::Waiting { wait } => wait.poll(cx),
        }
    }
}

impl<T> fmt::Debug for PollWait<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = matches!(self.inner, PollWaitInner::Ready { .. });
        f.debug_struct("PollWait")
            .field("ready", &ready)
            .finish_non_exhaustive()
    }
}

/// A wait that owns its endpoint: unregistered on drop.
struct OwnedWait<T> {
    poll: LongPoll<T>,
    state: WaitState,
}

impl<T> Drop for OwnedWait<T> {
    fn drop(&mut self) {
        self.state.cancel(&self.poll.broadcaster.shared);
    }
}

pin_project_lite::pin_project! {
    /// Future returned by [`LongPoll::handle`] and [`LongPoll::serve`] (and
    /// the tower `Service`): the response, once the poll is answered. Never
    /// an `Err`.
    ///
    /// It owns what it needs (a handle to the endpoint, the parsed request,
    /// the waiter and its timer): a server may drop the request as soon as
    /// it has this future.
    ///
    /// # Cancel safety
    ///
    /// Dropping it unregisters the waiter at once, in O(1).
    ///
    /// # Panics
    ///
    /// When polled outside a tokio runtime with timers enabled, or after it
    /// completed.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<T> {
        #[pin]
        state: State<T>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<T> {
        Ready { response: Option<Response<FullBody>> },
        Waiting {
            wait: OwnedWait<T>,
            request: PollRequest,
            #[pin]
            sleep: tokio::time::Sleep,
        },
    }
}

impl<T> ResponseFuture<T> {
    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response.map(FullBody::new)),
            },
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<Response<FullBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let response = match state.as_mut().project() {
            StateProj::Ready { response } => {
                return Poll::Ready(Ok(response
                    .take()
                    .expect("`ResponseFuture` polled after it completed")));
            }
            StateProj::Waiting {
                wait,
                request,
                sleep,
            } => {
                let shared = &wait.poll.broadcaster.shared;
                let answer = match wait.state.poll(shared, cx) {
                    Poll::Ready(answer) => answer,
                    Poll::Pending => match sleep.poll(cx) {
                        Poll::Ready(()) => {
                            // Unregister now rather than when dropped.
                            wait.state.cancel(shared);
                            Err(WaitError::TimedOut)
                        }
                        Poll::Pending => return Poll::Pending,
                    },
                };
                wait.poll.respond(request, answer).map(FullBody::new)
            }
        };
        // Done: release the endpoint handle and the timer now.
        state.set(State::Ready { response: None });
        Poll::Ready(Ok(response))
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = matches!(self.state, State::Waiting { .. });
        f.debug_struct("ResponseFuture")
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

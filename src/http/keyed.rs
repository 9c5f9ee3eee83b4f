//! [`KeyedPoll`]: long polls over a [`Keyed`] hub, of one key or of several
//! keys at once.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, Waker};

use ::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use ::http::{Request, Response};
use bytes::{BufMut, Bytes, BytesMut};

use super::answer::{
    is_get_or_head, method_not_allowed, no_content, unavailable, Bodies, FullBody,
    APPLICATION_JSON, NO_STORE,
};
use super::keyed_request::{KeyStart, KeyedPollConfig, KeyedRequest, KeyedRequestError};
use super::long_poll::Settings;
use super::{BodyFormat, LongPoll};
use crate::keyed::{Keyed, TooManyKeys, WaitMany};
use crate::telemetry::{self, Endpoint, Refused};
use crate::{Changed, Update, WaitError};

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

    /// `200` with the ready keys that have an answer, in request order;
    /// `503` only if every ready key failed (its waiters are full, or it
    /// was closed). A key that failed is left out of a `200`: the client
    /// keeps its cursor and asks again with its next poll, so one broken key
    /// never holds back the news of the others.
    fn respond(
        &self,
        names: &[(K, String)],
        answers: Vec<(usize, KeyAnswer<T>)>,
    ) -> Response<Bytes> {
        for (_, a) in &answers {
            telemetry::answered(self.hub.telemetry(), &a.answer, Endpoint::KeyedPoll);
        }
        if !answers.iter().any(|(_, a)| a.answer.is_ok()) {
            return match answers.first().map(|(_, a)| &a.answer) {
                Some(Err(WaitError::Full { .. })) => unavailable(
                    "too many requests are waiting; retry later",
                    self.config.poll.get_full_retry_after(),
                ),
                _ => unavailable(
                    "the server is shutting down; retry later",
                    self.config.poll.get_closed_retry_after(),
                ),
            };
        }
        let mut out = BytesMut::new();
        out.put_slice(br#"{"answers":["#);
        let answered = answers
            .iter()
            .filter_map(|(i, a)| Some((i, a.answer.as_ref().ok()?, a.initial)));
        for (n, (i, changed, initial)) in answered.enumerate() {
            if n > 0 {
                out.put_u8(b',');
            }
            self.settings
                .bodies
                .write_envelope(&mut out, Some(&names[*i].1), changed, initial);
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

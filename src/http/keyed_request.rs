//! [`KeyedRequest`]: what a multi-key poll asks for (its keys, a cursor per
//! key, a timeout), parsed from the query, and the limits it is parsed under.

use std::time::Duration;

use ::http::{Response, StatusCode, Uri};
use bytes::Bytes;

use super::answer::error_response;
use super::form::{percent_decode, raw_pairs};
use super::request::{parse_timeout, PollConfig, RequestError, MAX_EPOCH_LEN};
use crate::sse::parse_event_id;
use crate::Cursor;

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
    pub(super) poll: PollConfig,
    max_keys: usize,
    pub(super) max_key_len: usize,
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
pub(super) enum KeyStart {
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
    pub(super) keys: Vec<(String, KeyStart)>,
    pub(super) timeout: Duration,
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

//! The request side: from a query string and an `If-None-Match` header to a
//! [`PollRequest`], or a [`RequestError`] worth a `400`.

use std::time::Duration;

use ::http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use ::http::Uri;

use super::form::{percent_decode, raw_pairs};
use super::if_none_match::IfNoneMatch;
use crate::{Cursor, Epoch, Version};

/// What a long-poll endpoint accepts and how it answers when it cannot wait:
/// default and longest hold, and the `Retry-After` of its `503`s.
///
/// ```
/// use longpoll::http::PollConfig;
/// use std::time::Duration;
///
/// let config = PollConfig::new()
///     .default_timeout(Duration::from_secs(20))
///     .max_timeout(Duration::from_secs(60));
/// assert_eq!(config.get_default_timeout(), Duration::from_secs(20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    default_timeout: Duration,
    max_timeout: Duration,
    closed_retry_after: Duration,
    full_retry_after: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            closed_retry_after: Duration::from_secs(1),
            full_retry_after: Duration::from_secs(5),
        }
    }
}

impl PollConfig {
    /// Holds a request 30 s unless it asks otherwise, at most 300 s;
    /// `Retry-After: 1` when closed, `Retry-After: 5` when full.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long to hold a request that sends no `timeout` (default 30 s).
    /// Capped at [`max_timeout`](Self::max_timeout).
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// The longest `timeout` a client may ask for (default 300 s); a longer
    /// one is answered `400`.
    #[must_use]
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.max_timeout = timeout;
        self
    }

    /// The `Retry-After` of the `503` answered once the broadcaster is
    /// closed, i.e. during shutdown (default 1 s). Rounded up to whole
    /// seconds, at least 1.
    #[must_use]
    pub fn closed_retry_after(mut self, delay: Duration) -> Self {
        self.closed_retry_after = delay;
        self
    }

    /// The `Retry-After` of the `503` answered when the broadcaster holds its
    /// maximum number of waiters (default 5 s). Rounded up to whole seconds,
    /// at least 1.
    #[must_use]
    pub fn full_retry_after(mut self, delay: Duration) -> Self {
        self.full_retry_after = delay;
        self
    }

    /// How long a request without `timeout` is held: the configured default,
    /// capped at the maximum.
    pub fn get_default_timeout(&self) -> Duration {
        self.default_timeout.min(self.max_timeout)
    }

    /// The longest `timeout` accepted.
    pub fn get_max_timeout(&self) -> Duration {
        self.max_timeout
    }

    /// The `Retry-After` sent when closed.
    pub fn get_closed_retry_after(&self) -> Duration {
        self.closed_retry_after
    }

    /// The `Retry-After` sent when full.
    pub fn get_full_retry_after(&self) -> Duration {
        self.full_retry_after
    }
}

/// The longest `epoch` accepted, in bytes once percent-decoded: a longer
/// one is a `400` ([`RequestError::EpochTooLong`]). Any shorter value that
/// is not this server's epoch is foreign, never an error.
pub const MAX_EPOCH_LEN: usize = 64;

/// A long-poll request that cannot be served as sent: answer `400` with
/// [`into_response`](RequestError::into_response).
///
/// The message names the parameter and the accepted form, so that the
/// person reading the `400` can fix the request. A cursor the server did
/// not issue is never an error (see [`PollRequest::is_foreign`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// `since` is not an unsigned 64-bit decimal integer.
    #[error("`since` must be an unsigned 64-bit decimal integer")]
    InvalidSince,
    /// `epoch` is longer than [`MAX_EPOCH_LEN`] bytes.
    #[error("`epoch` must be at most {max} bytes", max = MAX_EPOCH_LEN)]
    EpochTooLong,
    /// `timeout` is not a decimal number of seconds in `0..=max`.
    #[error("`timeout` must be a decimal number of seconds from 0 to {}", .max.as_secs_f64())]
    InvalidTimeout {
        /// The longest timeout accepted.
        max: Duration,
    },
    /// `since` or `timeout` appears twice in the query, so which one counts
    /// is unclear.
    #[error("query parameter `{name}` appears more than once")]
    DuplicateParameter {
        /// The repeated parameter.
        name: &'static str,
    },
}

impl RequestError {
    /// Always `400 Bad Request`.
    pub fn status(&self) -> ::http::StatusCode {
        ::http::StatusCode::BAD_REQUEST
    }

    /// `400` with `{"error": "<this error's message>"}`.
    pub fn into_response(self) -> ::http::Response<bytes::Bytes> {
        super::answer::error_response(self.status(), &self.to_string())
    }
}

/// Where a poll starts, as far as the request alone can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Start {
    /// A cursor the broadcaster's rules answer (possibly another epoch).
    Cursor(Cursor),
    /// An epoch that is no [`Epoch`] at all (another format, another
    /// deployment), or an `If-None-Match` list with no tag of ours.
    Foreign,
    /// An `If-None-Match` list of several tags of ours: which one counts
    /// depends on the current state.
    Tags(Box<[Cursor]>),
}

/// Where a poll stands once compared with the broadcaster's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// Wait from this cursor (answered at once if it is not current).
    At(Cursor),
    /// Answer at once with the current state, as for another epoch.
    Foreign,
}

/// One long poll as the client asked for it: where it stands, how long it
/// will wait, and whether it named a cursor at all.
///
/// ```
/// use longpoll::http::{PollConfig, PollRequest};
/// use longpoll::{Epoch, Version};
/// use std::time::Duration;
///
/// let config = PollConfig::new();
/// let req = PollRequest::parse(Some("since=41&epoch=00000000000000ff&timeout=2.5"), None, &config)?;
/// assert_eq!(req.cursor().version(), Some(Version::new(41)));
/// assert_eq!(req.cursor().epoch(), Epoch::new(255));
/// assert_eq!(req.timeout(), Duration::from_millis(2500));
/// assert!(req.names_cursor());
///
/// // The original demo's client: no cursor, an unknown `session` parameter.
/// let req = PollRequest::parse(Some("session=abc"), None, &config)?;
/// assert!(!req.names_cursor());
/// assert_eq!(req.timeout(), Duration::from_secs(30));
///
/// // A cursor from another deployment, in another format: foreign, not an error.
/// let req = PollRequest::parse(Some("since=7&epoch=v2:eu-west"), None, &config)?;
/// assert!(req.is_foreign());
/// # Ok::<(), longpoll::http::RequestError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRequest {
    start: Start,
    timeout: Duration,
    names_cursor: bool,
}

impl PollRequest {
    /// A request at `cursor`, held at most `timeout`. `names_cursor` says
    /// whether the client sent a cursor (see [`names_cursor`](Self::names_cursor)).
    pub fn new(cursor: Cursor, timeout: Duration, names_cursor: bool) -> Self {
        PollRequest {
            start: Start::Cursor(cursor),
            timeout,
            names_cursor,
        }
    }

    /// A request whose cursor is foreign (see [`is_foreign`](Self::is_foreign)),
    /// held at most `timeout` (it never is: it is answered at once).
    pub fn foreign(timeout: Duration) -> Self {
        PollRequest {
            start: Start::Foreign,
            timeout,
            names_cursor: true,
        }
    }

    /// Parses the query string (without the `?`) and the `If-None-Match`
    /// header's value.
    ///
    /// * `since`: the last version seen (decimal `u64`);
    /// * `epoch`: the sequence it came from. This server's epochs are hex
    ///   ([`Epoch`]); any other value of at most [`MAX_EPOCH_LEN`] bytes
    ///   (another format, another deployment, repeated) is *foreign*: the
    ///   poll is answered at once with the current state, whatever `since`
    ///   says;
    /// * `timeout`: seconds to hold, decimal allowed, `0..=max`; absent means
    ///   the configured default;
    /// * `If-None-Match` (RFC 9110): `*` or a list of entity tags, used when
    ///   the query has no `since` (the query wins). A list that holds the
    ///   current ETag is held; a list of other tags only is answered at
    ///   once; `*` is held as for the current cursor. A value that does not
    ///   parse is ignored, as if absent.
    ///
    /// Names and values are percent-decoded; unknown parameters are ignored,
    /// even if they do not decode. This function never panics.
    ///
    /// # Errors
    ///
    /// A [`RequestError`] for a malformed `since` or `timeout`, an `epoch`
    /// over [`MAX_EPOCH_LEN`] bytes, or a repeated `since` or `timeout`.
    pub fn parse(
        query: Option<&str>,
        if_none_match: Option<&[u8]>,
        config: &PollConfig,
    ) -> Result<Self, RequestError> {
        let mut since = None;
        let mut epoch = None;
        let mut epochs = 0usize;
        let mut timeout = None;
        for (name, value) in raw_pairs(query.unwrap_or("").as_bytes()) {
            // An undecodable name is not one of ours: ignore it.
            let Ok(name) = percent_decode(name) else {
                continue;
            };
            let (slot, name): (&mut Option<&[u8]>, &'static str) = match name.as_str() {
                "since" => (&mut since, "since"),
                "timeout" => (&mut timeout, "timeout"),
                "epoch" => {
                    check_epoch_len(value)?;
                    epochs += 1;
                    epoch = Some(value);
                    continue;
                }
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(RequestError::DuplicateParameter { name });
            }
        }

        let since = since
            .map(|raw| {
                percent_decode(raw)
                    .ok()
                    .and_then(|s| s.parse::<Version>().ok())
                    .ok_or(RequestError::InvalidSince)
            })
            .transpose()?;
        let max = config.get_max_timeout();
        let timeout = match timeout {
            Some(raw) => {
                let raw = percent_decode(raw).map_err(|_| RequestError::InvalidTimeout { max })?;
                parse_timeout(&raw, max)?
            }
            None => config.get_default_timeout(),
        };
        // `None`: no epoch; `Some(None)`: a foreign one.
        let epoch: Option<Option<Epoch>> = epoch.map(|raw| {
            let ours = percent_decode(raw)
                .ok()
                .and_then(|s| s.parse::<Epoch>().ok());
            // Two epochs: which one counts is unclear, and neither is to be
            // trusted.
            ours.filter(|_| epochs == 1)
        });
        let inm = match since {
            Some(_) => None,
            None => if_none_match.and_then(IfNoneMatch::parse),
        };
        let names_cursor = since.is_some() || epoch.is_some() || inm.is_some();
        let start = match (since, epoch, inm) {
            (_, Some(None), None) => Start::Foreign,
            (Some(version), epoch, _) => Start::Cursor(Cursor::new(Some(version), epoch.flatten())),
            (None, _, Some(inm)) if inm.is_any() => Start::Cursor(Cursor::NEXT),
            (None, _, Some(inm)) => {
                let mut ours = inm.into_cursors();
                match ours.len() {
                    0 => Start::Foreign,
                    1 => Start::Cursor(ours.pop().expect("one tag")),
                    _ => Start::Tags(ours.into_boxed_slice()),
                }
            }
            (None, epoch, None) => Start::Cursor(Cursor::new(None, epoch.flatten())),
        };
        Ok(PollRequest {
            start,
            timeout,
            names_cursor,
        })
    }

    /// [`parse`](Self::parse) on a request's URI and headers. Several
    /// `If-None-Match` headers count as one list, as RFC 9110 says.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    ///
    /// ```
    /// use http::Request;
    /// use longpoll::http::{PollConfig, PollRequest};
    /// use longpoll::Version;
    ///
    /// let req = Request::get("/status?timeout=0")
    ///     .header("if-none-match", "\"00000000000000ff-7\"")
    ///     .body(())?;
    /// let poll = PollRequest::from_parts(req.uri(), req.headers(), &PollConfig::new())?;
    /// assert_eq!(poll.cursor().version(), Some(Version::new(7)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(
        uri: &Uri,
        headers: &HeaderMap,
        config: &PollConfig,
    ) -> Result<Self, RequestError> {
        let mut inm = headers.get_all(IF_NONE_MATCH).iter();
        let first = inm.next();
        match inm.next() {
            None => Self::parse(uri.query(), first.map(HeaderValue::as_bytes), config),
            Some(second) => {
                let mut joined = Vec::new();
                for v in first.into_iter().chain([second]).chain(inm) {
                    if !joined.is_empty() {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                Self::parse(uri.query(), Some(&joined), config)
            }
        }
    }

    /// Where the client stands. [`Cursor::NEXT`] if it named no version, or
    /// if its cursor is foreign ([`is_foreign`](Self::is_foreign)). For an
    /// `If-None-Match` list of several of this server's tags, the first;
    /// [`LongPoll`](super::LongPoll) compares every listed tag with the
    /// current state.
    pub fn cursor(&self) -> Cursor {
        match &self.start {
            Start::Cursor(c) => *c,
            Start::Foreign => Cursor::NEXT,
            Start::Tags(tags) => tags[0],
        }
    }

    /// Whether the client's cursor comes from a sequence this server cannot
    /// even name: an `epoch` that is not a hex [`Epoch`] (another format,
    /// another deployment), or an `If-None-Match` with no tag of this
    /// server's form. [`LongPoll`](super::LongPoll) answers such a poll at
    /// once with the current state, flagged
    /// [`Resync::OtherEpoch`](crate::Resync::OtherEpoch), exactly as it
    /// answers a hex epoch that is not the current one.
    pub fn is_foreign(&self) -> bool {
        matches!(self.start, Start::Foreign)
    }

    /// How long to hold the request before answering `204`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the client sent `since`, `epoch` or an `If-None-Match` that
    /// parses.
    ///
    /// A client that sent none of them (the original jQuery demo) reads every
    /// answer as data, so on timeout it gets `200` with the current state
    /// rather than `204`.
    pub fn names_cursor(&self) -> bool {
        self.names_cursor
    }

    /// Where this poll stands against the current `(epoch, version)`,
    /// which is read only if the answer depends on it.
    pub(crate) fn position(&self, current: impl FnOnce() -> (Epoch, Version)) -> Position {
        match &self.start {
            Start::Cursor(c) => Position::At(*c),
            Start::Foreign => Position::Foreign,
            Start::Tags(tags) => {
                let (epoch, version) = current();
                Position::At(pick_tag(tags, epoch, version))
            }
        }
    }
}

/// The cursor of an `If-None-Match` list of our tags that answers best:
/// the current one if listed (held); else the newest of the current epoch
/// not ahead of it (every update since, at once); else any (answered at
/// once as ahead or from another epoch).
fn pick_tag(tags: &[Cursor], epoch: Epoch, version: Version) -> Cursor {
    let current = Cursor::at(version).with_epoch(epoch);
    if tags.contains(&current) {
        return current;
    }
    tags.iter()
        .filter(|c| c.epoch() == Some(epoch) && c.version() <= Some(version))
        .max_by_key(|c| c.version())
        .copied()
        .unwrap_or(tags[0])
}

/// `epoch` over [`MAX_EPOCH_LEN`] bytes once decoded (an undecodable value
/// counts its raw bytes).
fn check_epoch_len(raw: &[u8]) -> Result<(), RequestError> {
    let len = percent_decode(raw).map_or(raw.len(), |s| s.len());
    if len > MAX_EPOCH_LEN {
        return Err(RequestError::EpochTooLong);
    }
    Ok(())
}

/// Parses a `timeout`: decimal seconds such as `30`, `2.5` or `.25`, from 0
/// to `max` inclusive. Digits past nanoseconds round up to the next
/// nanosecond.
///
/// # Errors
///
/// [`RequestError::InvalidTimeout`] for anything else: signs, exponents,
/// `inf`, spaces, or a value above `max`.
///
/// ```
/// use longpoll::http::parse_timeout;
/// use std::time::Duration;
///
/// let max = Duration::from_secs(300);
/// assert_eq!(parse_timeout("2.5", max)?, Duration::from_millis(2500));
/// assert_eq!(parse_timeout("300", max)?, max);
/// assert!(parse_timeout("300.001", max).is_err());
/// assert!(parse_timeout("-1", max).is_err());
/// assert!(parse_timeout("1e3", max).is_err());
/// # Ok::<(), longpoll::http::RequestError>(())
/// ```
pub fn parse_timeout(s: &str, max: Duration) -> Result<Duration, RequestError> {
    let err = RequestError::InvalidTimeout { max };
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (s, ""),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(err);
    }
    let secs = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().map_err(|_| err)?
    };
    let mut nanos = 0u32;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    let timeout = Duration::new(secs, nanos);
    // Digits past nanoseconds round up, so that nothing above `max` passes.
    let finer = frac.bytes().skip(9).any(|b| b != b'0');
    let timeout = if finer {
        timeout.checked_add(Duration::from_nanos(1)).ok_or(err)?
    } else {
        timeout
    };
    if timeout > max {
        return Err(err);
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_fraction_digits_past_nanoseconds_round_up() {
        let max = Duration::from_secs(300);
        assert_eq!(
            parse_timeout("0.0000000011", max).unwrap(),
            Duration::from_nanos(2)
        );
        assert_eq!(
            parse_timeout("0.0000000010000", max).unwrap(),
            Duration::from_nanos(1)
        );
        assert!(parse_timeout("300.0000000001", max).is_err());
        assert_eq!(parse_timeout("1.", max).unwrap(), Duration::from_secs(1));
        assert!(parse_timeout(".", max).is_err());
        assert!(parse_timeout("99999999999999999999999", max).is_err());
    }

    #[test]
    fn query_since_wins_over_if_none_match() {
        let config = PollConfig::new();
        let req = PollRequest::parse(Some("since=3"), Some(b"garbage"), &config).unwrap();
        assert_eq!(req.cursor(), Cursor::at(Version::new(3)));
        // Without `since`, an unparsable header is ignored, as if absent.
        let req = PollRequest::parse(Some("timeout=1"), Some(b"garbage"), &config).unwrap();
        assert_eq!(req.cursor(), Cursor::NEXT);
        assert!(!req.names_cursor());
    }

    #[test]
    fn a_list_of_tags_picks_the_current_then_the_newest_behind() {
        let e = Epoch::new(5).unwrap();
        let o = Epoch::new(6).unwrap();
        let at = |v, e| Cursor::at(Version::new(v)).with_epoch(e);
        let tags = [at(9, o), at(3, e), at(5, e), at(8, e)];
        assert_eq!(pick_tag(&tags, e, Version::new(5)), at(5, e));
        assert_eq!(pick_tag(&tags, e, Version::new(7)), at(5, e));
        assert_eq!(pick_tag(&tags, e, Version::new(2)), at(9, o));
    }
}

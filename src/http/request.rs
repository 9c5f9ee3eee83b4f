//! The request side: from a query string and an `If-None-Match` header to a
//! [`PollRequest`], or a [`RequestError`] worth a `400`.

use std::time::Duration;

use ::http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use ::http::Uri;

use super::form::{percent_decode, raw_pairs};
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

/// A long-poll request that cannot be served as sent: answer `400` with
/// [`into_response`](RequestError::into_response).
///
/// The message names the parameter and the accepted form, so that the
/// person reading the `400` can fix the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// `since` is not an unsigned 64-bit decimal integer.
    #[error("`since` must be an unsigned 64-bit decimal integer")]
    InvalidSince,
    /// `epoch` is not 1 to 16 hex digits, or is all zeros.
    #[error("`epoch` must be 1 to 16 hex digits, not all zero")]
    InvalidEpoch,
    /// `timeout` is not a decimal number of seconds in `0..=max`.
    #[error("`timeout` must be a decimal number of seconds from 0 to {}", .max.as_secs_f64())]
    InvalidTimeout {
        /// The longest timeout accepted.
        max: Duration,
    },
    /// `If-None-Match` is not exactly one ETag of the form `"<epoch>-<version>"`.
    #[error(
        "`If-None-Match` must be one ETag from this server, of the form \"<epoch>-<version>\""
    )]
    InvalidIfNoneMatch,
    /// A parameter appears twice in the query, so which one counts is unclear.
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
        super::error_response(self.status(), &self.to_string())
    }
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
/// # Ok::<(), longpoll::http::RequestError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollRequest {
    cursor: Cursor,
    timeout: Duration,
    names_cursor: bool,
}

impl PollRequest {
    /// A request at `cursor`, held at most `timeout`. `names_cursor` says
    /// whether the client sent a cursor (see [`names_cursor`](Self::names_cursor)).
    pub fn new(cursor: Cursor, timeout: Duration, names_cursor: bool) -> Self {
        PollRequest {
            cursor,
            timeout,
            names_cursor,
        }
    }

    /// Parses the query string (without the `?`) and the `If-None-Match`
    /// header's value.
    ///
    /// * `since`: the last version seen (decimal `u64`);
    /// * `epoch`: the epoch it came from (hex);
    /// * `timeout`: seconds to hold, decimal allowed, `0..=max`; absent means
    ///   the configured default;
    /// * `If-None-Match: "<epoch>-<version>"`: the ETag of an earlier answer,
    ///   used when the query has no `since` (the query wins).
    ///
    /// Names and values are percent-decoded; unknown parameters are ignored,
    /// even if they do not decode. This function never panics.
    ///
    /// # Errors
    ///
    /// A [`RequestError`] for a malformed `since`, `epoch`, `timeout` or
    /// `If-None-Match`, or a repeated `since`, `epoch` or `timeout`.
    pub fn parse(
        query: Option<&str>,
        if_none_match: Option<&[u8]>,
        config: &PollConfig,
    ) -> Result<Self, RequestError> {
        let mut since = None;
        let mut epoch = None;
        let mut timeout = None;
        for (name, value) in raw_pairs(query.unwrap_or("").as_bytes()) {
            // An undecodable name is not one of ours: ignore it.
            let Ok(name) = percent_decode(name) else {
                continue;
            };
            let (slot, name): (&mut Option<&[u8]>, &'static str) = match name.as_str() {
                "since" => (&mut since, "since"),
                "epoch" => (&mut epoch, "epoch"),
                "timeout" => (&mut timeout, "timeout"),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(RequestError::DuplicateParameter { name });
            }
        }

        let decoded = |raw: &[u8], err| percent_decode(raw).map_err(|_| err);
        let since = since
            .map(|raw| {
                decoded(raw, RequestError::InvalidSince)?
                    .parse::<Version>()
                    .map_err(|_| RequestError::InvalidSince)
            })
            .transpose()?;
        let epoch = epoch
            .map(|raw| {
                decoded(raw, RequestError::InvalidEpoch)?
                    .parse::<Epoch>()
                    .map_err(|_| RequestError::InvalidEpoch)
            })
            .transpose()?;
        let max = config.get_max_timeout();
        let timeout = match timeout {
            Some(raw) => parse_timeout(&decoded(raw, RequestError::InvalidTimeout { max })?, max)?,
            None => config.get_default_timeout(),
        };

        let cursor = match (since, if_none_match) {
            (Some(version), _) => Cursor::new(Some(version), epoch),
            (None, Some(etag)) => parse_if_none_match(etag)?,
            (None, None) => Cursor::new(None, epoch),
        };
        let names_cursor = since.is_some() || epoch.is_some() || if_none_match.is_some();
        Ok(PollRequest {
            cursor,
            timeout,
            names_cursor,
        })
    }

    /// [`parse`](Self::parse) on a request's URI and headers.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse); also [`RequestError::InvalidIfNoneMatch`]
    /// when the request has more than one `If-None-Match` header.
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
        if inm.next().is_some() {
            return Err(RequestError::InvalidIfNoneMatch);
        }
        Self::parse(uri.query(), first.map(HeaderValue::as_bytes), config)
    }

    /// Where the client stands. [`Cursor::NEXT`] if it named no version.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// How long to hold the request before answering `204`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the client sent `since`, `epoch` or `If-None-Match`.
    ///
    /// A client that sent none of them (the original jQuery demo) reads every
    /// answer as data, so on timeout it gets `200` with the current state
    /// rather than `204`.
    pub fn names_cursor(&self) -> bool {
        self.names_cursor
    }
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

/// The ETag of a version: `"<epoch>-<version>"`, epoch in 16 hex digits.
///
/// ```
/// use longpoll::http::etag;
/// use longpoll::{Epoch, Version};
///
/// let tag = etag(Epoch::new(255).unwrap(), Version::new(7));
/// assert_eq!(tag, "\"00000000000000ff-7\"");
/// ```
pub fn etag(epoch: Epoch, version: Version) -> HeaderValue {
    HeaderValue::try_from(format!("\"{epoch}-{version}\""))
        .expect("hex digits, a dash and decimal digits are valid header characters")
}

/// Parses an `If-None-Match` value that carries one of our [`etag`]s into the
/// cursor it stands for. A weak tag (`W/"..."`) is accepted too.
///
/// # Errors
///
/// [`RequestError::InvalidIfNoneMatch`] for `*`, a list of several tags, or a
/// tag that is not `"<epoch>-<version>"`.
///
/// ```
/// use longpoll::http::parse_if_none_match;
/// use longpoll::{Cursor, Epoch, Version};
///
/// let cursor = parse_if_none_match(b" W/\"00000000000000ff-7\" ")?;
/// assert_eq!(cursor, Cursor::new(Some(Version::new(7)), Epoch::new(255)));
/// assert!(parse_if_none_match(b"*").is_err());
/// assert!(parse_if_none_match(b"\"ff-7\", \"ff-8\"").is_err());
/// # Ok::<(), longpoll::http::RequestError>(())
/// ```
pub fn parse_if_none_match(value: &[u8]) -> Result<Cursor, RequestError> {
    let err = RequestError::InvalidIfNoneMatch;
    let tag = value.trim_ascii();
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    let inner = tag
        .strip_prefix(b"\"")
        .and_then(|t| t.strip_suffix(b"\""))
        .ok_or(err)?;
    let inner = std::str::from_utf8(inner).map_err(|_| err)?;
    let (epoch, version) = inner.split_once('-').ok_or(err)?;
    let epoch = epoch.parse::<Epoch>().map_err(|_| err)?;
    let version = version.parse::<Version>().map_err(|_| err)?;
    Ok(Cursor::new(Some(version), Some(epoch)))
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
        // Without `since`, the header is parsed and must be valid.
        assert_eq!(
            PollRequest::parse(Some("epoch=1"), Some(b"garbage"), &config),
            Err(RequestError::InvalidIfNoneMatch)
        );
    }
}

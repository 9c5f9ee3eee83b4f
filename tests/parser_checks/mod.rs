//! The properties every parser of the HTTP layer must have, as functions
//! that panic when one does not hold. Shared by the property tests
//! (`tests/proptest_parsers.rs`, run by `cargo test`) and the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, through `#[path]`), so that both check
//! the same thing.
//!
//! For any input: no panic; an error is a `400` whose body is
//! `{"error": "<the error's message>"}`; an accepted value is within its
//! bounds and survives a round trip through the form this server writes it
//! in (ETag, event id, query, percent-encoding). A cursor is never an error
//! for its content: a foreign epoch or tag is foreign, an unparsable
//! `If-None-Match` is ignored, and an event stream's cursor never fails.
#![allow(dead_code)]

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use http::{StatusCode, Uri};
use longpoll::http::{
    etag, media_type_is, parse_timeout, percent_decode, Form, FormError, IfNoneMatch,
    KeyedPollConfig, KeyedRequest, KeyedRequestError, PollConfig, PollRequest, RequestError,
    MAX_CURSOR_LEN, MAX_EPOCH_LEN,
};
use longpoll::sse;
use longpoll::{Cursor, Epoch, Version};

/// The longest `timeout` of the default [`PollConfig`].
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// `status` is 400 and `body` is `{"error": message}`.
fn assert_400_json(status: StatusCode, body: &[u8], message: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(body).expect("the 400 body is JSON");
    assert_eq!(json["error"].as_str(), Some(message), "body {json}");
}

/// A parse error of a long poll is a clear `400`.
pub(crate) fn assert_bad_request(e: RequestError) {
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    let message = e.to_string();
    assert!(!message.is_empty());
    let resp = e.into_response();
    assert_400_json(resp.status(), resp.body(), &message);
}

// ---------------------------------------------------------------- encoders

/// `application/x-www-form-urlencoded` encoding of one name or value, the
/// way a browser writes it: unreserved bytes as they are, space as `+`,
/// everything else as `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `name=value&...`, each part encoded.
pub(crate) fn encode_form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(n, v)| format!("{}={}", percent_encode(n), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A plain, obviously correct percent-decoder to compare against.
fn reference_decode(input: &[u8]) -> Result<String, FormError> {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex);
                let lo = input.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi * 16 + lo),
                    _ => return Err(FormError::InvalidEscape { offset: i }),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::InvalidUtf8)
}

// ------------------------------------------------------------------ checks

/// `percent_decode` agrees with the reference decoder, and what it decodes
/// encodes back to an input that decodes the same.
pub(crate) fn check_percent_decode(input: &[u8]) {
    let decoded = percent_decode(input);
    assert_eq!(decoded, reference_decode(input), "input {input:?}");
    match decoded {
        Ok(s) => assert_eq!(
            percent_decode(percent_encode(&s).as_bytes()).as_ref(),
            Ok(&s)
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Encoding then decoding any string gives it back.
pub(crate) fn check_percent_round_trip(s: &str) {
    let encoded = percent_encode(s);
    assert_eq!(percent_decode(encoded.as_bytes()).as_deref(), Ok(s));
}

/// `Form::parse` accepts exactly the bodies whose every `&`-separated name
/// and value decode; the pairs it returns, encoded again, parse to the same
/// form; an escape error points at a `%` of the input.
pub(crate) fn check_form(body: &[u8]) {
    let expected: Result<Vec<(String, String)>, FormError> = body
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = match piece.iter().position(|&b| b == b'=') {
                Some(eq) => (&piece[..eq], &piece[eq + 1..]),
                None => (piece, &piece[piece.len()..]),
            };
            Ok((reference_decode(name)?, reference_decode(value)?))
        })
        .collect();
    match Form::parse(body) {
        Ok(form) => {
            let pairs: Vec<(String, String)> = form
                .pairs()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(Ok(pairs), expected, "body {body:?}");
            assert_eq!(form.len(), form.pairs().count());
            let again = Form::parse(encode_form(form.pairs()).as_bytes()).expect("re-encoded form");
            assert_eq!(again, form);
            // `get` answers with the first field of a name.
            if let Some((name, value)) = form.pairs().next() {
                assert_eq!(form.get(name), Some(value));
            }
        }
        Err(e) => {
            assert!(expected.is_err(), "refused {body:?} that decodes: {e}");
            if let FormError::InvalidEscape { offset } = e {
                assert_eq!(body.get(offset), Some(&b'%'), "offset {offset} in {body:?}");
            }
        }
    }
}

/// A form made of these pairs, encoded, parses back to them.
pub(crate) fn check_form_round_trip(pairs: &[(String, String)]) {
    let body = encode_form(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let form = Form::parse(body.as_bytes()).expect("an encoded form parses");
    let back: Vec<(&str, &str)> = form.pairs().collect();
    let sent: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(back, sent);
}

/// `parse_timeout` accepts a duration within the maximum, or refuses with a
/// `400`; digits only and at most one dot are ever accepted.
pub(crate) fn check_timeout(s: &str) {
    match parse_timeout(s, MAX_TIMEOUT) {
        Ok(d) => {
            assert!(d <= MAX_TIMEOUT, "{s:?} gave {d:?}");
            assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            assert!(s.bytes().filter(|&b| b == b'.').count() <= 1);
            // Close to what a float parser makes of it.
            let f: f64 = s
                .parse()
                .unwrap_or_else(|_| format!("0{s}").parse().unwrap());
            assert!((d.as_secs_f64() - f).abs() < 1e-6, "{s:?} gave {d:?}");
        }
        Err(e) => assert_bad_request(e),
    }
}

/// Any duration within the maximum, written with nanosecond digits, parses
/// back exactly.
pub(crate) fn check_timeout_round_trip(d: Duration) {
    let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
    assert_eq!(parse_timeout(&s, MAX_TIMEOUT), Ok(d));
    if d.subsec_nanos() == 0 {
        assert_eq!(parse_timeout(&d.as_secs().to_string(), MAX_TIMEOUT), Ok(d));
    }
}

/// `IfNoneMatch::parse`: `*`, a list whose tags of our form each write
/// back (as our ETag, strong or weak) to a header that matches them, or
/// nothing (ignored). Never an error: the same value in a poll request
/// changes nothing about whether the query is refused.
pub(crate) fn check_if_none_match(value: &[u8]) {
    match IfNoneMatch::parse(value) {
        Some(inm) if inm.is_any() => {
            assert_eq!(value.trim_ascii(), b"*");
            assert!(value.iter().all(|&b| b == b'*' || b == b' ' || b == b'\t'));
            assert!(inm.is_empty());
        }
        Some(inm) => {
            assert!(!inm.is_empty());
            assert!(inm.cursors().count() <= inm.len());
            assert!(value.contains(&b'"'), "a list of tags has quotes");
            for cursor in inm.cursors() {
                let (version, epoch) = (cursor.version().unwrap(), cursor.epoch().unwrap());
                assert!(inm.matches(epoch, version));
                let tag = etag(epoch, version);
                let back = IfNoneMatch::parse(tag.as_bytes()).expect("our ETag parses");
                assert_eq!(back.cursors().collect::<Vec<_>>(), [cursor]);
                let weak = format!("W/{}", tag.to_str().unwrap());
                assert!(IfNoneMatch::parse(weak.as_bytes())
                    .unwrap()
                    .matches(epoch, version));
            }
        }
        None => {
            let ows = |b: &u8| *b == b' ' || *b == b'\t';
            let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
            let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
            assert_ne!(&value[start..end.max(start)], b"*");
        }
    }
    let config = PollConfig::new();
    assert_eq!(
        PollRequest::parse(Some("timeout=1"), Some(value), &config).map(|r| r.timeout()),
        Ok(Duration::from_secs(1)),
        "If-None-Match is never a 400"
    );
}

/// A cursor written the ways this server writes it (ETag, weak ETag, query,
/// event id, multi-key cursor) parses back to itself everywhere.
pub(crate) fn check_cursor_round_trip(version: u64, epoch: u64) {
    let Some(epoch) = Epoch::new(epoch) else {
        return;
    };
    let version = Version::new(version);
    let cursor = Cursor::new(Some(version), Some(epoch));
    let config = PollConfig::new();

    let tag = etag(epoch, version);
    let ours = |v: &[u8]| IfNoneMatch::parse(v).unwrap().cursors().collect::<Vec<_>>();
    assert_eq!(ours(tag.as_bytes()), [cursor]);
    let weak = format!(" W/{} ", tag.to_str().unwrap());
    assert_eq!(ours(weak.as_bytes()), [cursor]);
    let by_header = PollRequest::parse(None, Some(tag.as_bytes()), &config).unwrap();
    assert_eq!(by_header.cursor(), cursor);
    assert!(by_header.names_cursor());

    let query = format!("since={version}&epoch={epoch}&session=x");
    let by_query = PollRequest::parse(Some(&query), None, &config).unwrap();
    assert_eq!(by_query.cursor(), cursor);
    assert!(!by_query.is_foreign());
    assert_eq!(by_query.timeout(), config.get_default_timeout());

    let id = sse::event_id(epoch, version);
    assert_eq!(sse::parse_event_id(&id), Some(cursor));
    let keyed = KeyedRequest::parse(
        Some(&format!("keys=a&cursors={id}")),
        &KeyedPollConfig::new(),
    )
    .unwrap();
    assert_eq!(keyed.cursor(0), Some(cursor));
}

/// `PollRequest::parse` on any query and `If-None-Match`: a request within
/// the bounds, or a `400` that the query alone explains (the header never
/// causes one). A foreign request names a cursor. The same query in a URI,
/// with the header in a header map, gives the same answer through
/// `from_parts`.
pub(crate) fn check_poll_request(query: &str, if_none_match: Option<&[u8]>) {
    let config = PollConfig::new();
    let parsed = PollRequest::parse(Some(query), if_none_match, &config);
    let query_alone = PollRequest::parse(Some(query), None, &config);
    assert_eq!(parsed.as_ref().err(), query_alone.as_ref().err());
    match &parsed {
        Ok(req) => {
            assert!(req.timeout() <= config.get_max_timeout());
            if if_none_match.and_then(IfNoneMatch::parse).is_some() {
                assert!(req.names_cursor());
            }
            if req.cursor().version().is_some() || req.is_foreign() {
                assert!(req.names_cursor());
            }
        }
        Err(e) => {
            if *e == RequestError::EpochTooLong {
                assert!(query.len() > MAX_EPOCH_LEN);
            }
            assert_bad_request(*e);
        }
    }
    let Ok(uri) = format!("/status?{query}").parse::<Uri>() else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(value) = if_none_match {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        headers.insert(IF_NONE_MATCH, value);
    }
    let through_parts = PollRequest::from_parts(&uri, &headers, &config);
    let direct = PollRequest::parse(uri.query(), if_none_match, &config);
    assert_eq!(through_parts, direct);
}

/// `KeyedRequest::parse` on any query: within the limits, each key 1 to
/// `max_key_len` bytes and listed once, or a `400`; a cursor over the
/// length limit is the only cursor error.
pub(crate) fn check_keyed_request(query: &str) {
    let config = KeyedPollConfig::new().max_keys(4).max_key_len(8);
    match KeyedRequest::parse(Some(query), &config) {
        Ok(req) => {
            assert!((1..=4).contains(&req.len()));
            let keys: Vec<&str> = req.keys().collect();
            for (i, k) in keys.iter().enumerate() {
                assert!((1..=8).contains(&k.len()) && !k.contains(','));
                assert!(!keys[..i].contains(k), "{k} twice");
                if let Some(c) = req.cursor(i) {
                    assert!(c.version().is_some() && c.epoch().is_some());
                    assert!(!req.is_foreign(i));
                }
            }
            assert!(req.timeout() <= config.get_poll().get_max_timeout());
        }
        Err(e) => {
            if e == KeyedRequestError::CursorTooLong {
                assert!(query.len() > MAX_CURSOR_LEN);
            }
            let message = e.to_string();
            let resp = e.into_response();
            assert_400_json(resp.status(), resp.body(), &message);
        }
    }
}

/// `media_type_is` ignores parameters, ASCII case and surrounding space,
/// and a type always matches itself.
pub(crate) fn check_media_type(content_type: &[u8], expected: &str) {
    let answer = media_type_is(content_type, expected);
    assert_eq!(
        media_type_is(&content_type.to_ascii_uppercase(), expected),
        answer
    );
    assert_eq!(
        media_type_is(&content_type.to_ascii_lowercase(), expected),
        answer
    );
    if !content_type.contains(&b';') {
        let mut with_params = content_type.to_vec();
        with_params.extend_from_slice(b"; charset=UTF-8");
        assert_eq!(media_type_is(&with_params, expected), answer);
        let mut spaced = b" \t".to_vec();
        spaced.extend_from_slice(content_type);
        spaced.extend_from_slice(b" ");
        assert_eq!(media_type_is(&spaced, expected), answer);
    }
    if !expected.contains(';') {
        assert!(media_type_is(expected.as_bytes(), expected));
    }
}

/// A `Last-Event-ID` header (with any query): a cursor naming both parts,
/// or none (from scratch), never an error; an id that parses is written
/// back the same.
pub(crate) fn check_last_event_id(id: &[u8], query: &str) {
    if let Ok(text) = std::str::from_utf8(id) {
        if let Some(cursor) = sse::parse_event_id(text) {
            let (version, epoch) = (cursor.version().unwrap(), cursor.epoch().unwrap());
            assert_eq!(
                sse::parse_event_id(&sse::event_id(epoch, version)),
                Some(cursor)
            );
        }
    }
    let Ok(uri) = format!("/events?{query}").parse::<Uri>() else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(id) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", value);
    if let Some(cursor) = sse::parse_cursor(&uri, &headers) {
        assert!(cursor.version().is_some());
    }
}

//! The HTTP layer's parsers as plain functions: the query and
//! `If-None-Match` into a poll request, timeouts, ETags, form bodies and
//! media types. Ends with a seeded random sweep that no input survives as a
//! panic.

use std::time::Duration;

use longpoll::http::{
    etag, media_type_is, parse_timeout, percent_decode, Form, FormError, IfNoneMatch, PollConfig,
    PollRequest, RequestError, MAX_EPOCH_LEN,
};
use longpoll::{Cursor, Epoch, Version};

const FF: &str = "00000000000000ff";

fn parse(query: &str) -> Result<PollRequest, RequestError> {
    PollRequest::parse(Some(query), None, &PollConfig::new())
}

#[test]
fn absent_cursor_is_next_and_names_nothing() {
    for query in [None, Some(""), Some("session=abc&_=1712")] {
        let req = PollRequest::parse(query, None, &PollConfig::new()).unwrap();
        assert_eq!(req.cursor(), Cursor::NEXT);
        assert!(!req.names_cursor());
        assert_eq!(req.timeout(), Duration::from_secs(30));
    }
}

#[test]
fn since_and_epoch_make_the_cursor_and_name_it() {
    let req = parse(&format!("since=41&epoch={FF}")).unwrap();
    assert_eq!(
        req.cursor(),
        Cursor::new(Some(Version::new(41)), Epoch::new(255))
    );
    assert!(req.names_cursor());

    let req = parse("epoch=FF").unwrap();
    assert_eq!(req.cursor(), Cursor::new(None, Epoch::new(255)));
    assert!(req.names_cursor(), "an epoch alone names a cursor");

    let req = parse("since=18446744073709551615").unwrap();
    assert_eq!(req.cursor().version(), Some(Version::new(u64::MAX)));
}

#[test]
fn malformed_parameters_are_each_named_in_the_error() {
    let max = Duration::from_secs(300);
    let cases = [
        ("since=", RequestError::InvalidSince),
        ("since=+1", RequestError::InvalidSince),
        ("since=%2B1", RequestError::InvalidSince),
        ("since=1%", RequestError::InvalidSince),
        ("since=18446744073709551616", RequestError::InvalidSince),
        ("since= 1", RequestError::InvalidSince),
        (
            &*format!("epoch={}", "e".repeat(65)),
            RequestError::EpochTooLong,
        ),
        (
            &*format!("since=1&epoch={}", "%41".repeat(65)),
            RequestError::EpochTooLong,
        ),
        ("timeout=", RequestError::InvalidTimeout { max }),
        ("timeout=NaN", RequestError::InvalidTimeout { max }),
        ("timeout=inf", RequestError::InvalidTimeout { max }),
        ("timeout=301", RequestError::InvalidTimeout { max }),
        ("timeout=1.2.3", RequestError::InvalidTimeout { max }),
        (
            "since=1&since=1",
            RequestError::DuplicateParameter { name: "since" },
        ),
        (
            "timeout=1&t%69meout=2",
            RequestError::DuplicateParameter { name: "timeout" },
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(parse(query), Err(expected), "{query}");
    }
    assert_eq!(
        RequestError::InvalidTimeout { max }.to_string(),
        "`timeout` must be a decimal number of seconds from 0 to 300"
    );
}

#[test]
fn values_and_names_are_percent_decoded_and_unknown_ones_ignored() {
    let req = parse("%73ince=%34%32&timeout=1%2E5&junk=%ZZ&%FF=1&=x&&flag").unwrap();
    assert_eq!(req.cursor().version(), Some(Version::new(42)));
    assert_eq!(req.timeout(), Duration::from_millis(1500));
}

#[test]
fn timeout_defaults_and_limits_come_from_the_config() {
    let config = PollConfig::new()
        .default_timeout(Duration::from_secs(500))
        .max_timeout(Duration::from_secs(60));
    let req = PollRequest::parse(None, None, &config).unwrap();
    assert_eq!(
        req.timeout(),
        Duration::from_secs(60),
        "the default is capped at the max"
    );
    assert!(PollRequest::parse(Some("timeout=60"), None, &config).is_ok());
    assert_eq!(
        PollRequest::parse(Some("timeout=60.5"), None, &config),
        Err(RequestError::InvalidTimeout {
            max: Duration::from_secs(60)
        })
    );
}

#[test]
fn timeout_accepts_decimal_seconds_only() {
    let max = Duration::from_secs(300);
    let ok = [
        ("0", Duration::ZERO),
        ("0.0", Duration::ZERO),
        (".5", Duration::from_millis(500)),
        ("7.", Duration::from_secs(7)),
        ("007", Duration::from_secs(7)),
        ("299.999999999", Duration::new(299, 999_999_999)),
        ("300.000000000", max),
    ];
    for (s, d) in ok {
        assert_eq!(parse_timeout(s, max), Ok(d), "{s}");
    }
    for s in [
        "",
        ".",
        "-0",
        "+1",
        "1e1",
        "0x10",
        " 1",
        "1 ",
        "1,5",
        "300.0000000001",
        "١",
    ] {
        assert!(parse_timeout(s, max).is_err(), "{s:?} was accepted");
    }
}

/// Epochs this server never issues: another format, another deployment,
/// zero, too long for an `Epoch`, repeated, undecodable.
const FOREIGN_EPOCHS: &[&str] = &[
    "xyz",
    "g",
    "0",
    "0000000000000000",
    "00000000000000001",
    "v2%3Aeu-west-1",
    "%ZZ",
    "",
    "00000000000000ff&epoch=00000000000000ff",
];

#[test]
fn an_epoch_the_server_did_not_issue_is_foreign_never_an_error() {
    for epoch in FOREIGN_EPOCHS {
        for query in [format!("since=3&epoch={epoch}"), format!("epoch={epoch}")] {
            let req = parse(&query).unwrap_or_else(|e| panic!("{query}: {e}"));
            assert!(req.is_foreign(), "{query}");
            assert!(req.names_cursor(), "{query}");
        }
    }
    // Up to 64 bytes is a foreign epoch; more is absurd, and a 400.
    assert!(parse(&format!("epoch={}", "e".repeat(MAX_EPOCH_LEN)))
        .unwrap()
        .is_foreign());
    assert!(!parse(&format!("epoch={FF}")).unwrap().is_foreign());
    // A malformed `since` is still a 400, whatever the epoch.
    assert_eq!(parse("since=x&epoch=xyz"), Err(RequestError::InvalidSince));
}

#[test]
fn if_none_match_gives_the_cursor_when_the_query_has_no_since() {
    let tag = etag(Epoch::new(255).unwrap(), Version::new(9));
    let config = PollConfig::new();
    let req = PollRequest::parse(Some("timeout=1"), Some(tag.as_bytes()), &config).unwrap();
    assert_eq!(
        req.cursor(),
        Cursor::new(Some(Version::new(9)), Epoch::new(255))
    );
    assert!(req.names_cursor());

    // The query's `since` wins, with the query's epoch (or none).
    let req = PollRequest::parse(Some("since=3"), Some(tag.as_bytes()), &config).unwrap();
    assert_eq!(req.cursor(), Cursor::at(Version::new(3)));
}

#[test]
fn if_none_match_is_star_or_a_list_and_anything_else_is_ignored() {
    let config = PollConfig::new();
    let with = |inm: &[u8]| PollRequest::parse(Some("timeout=1"), Some(inm), &config).unwrap();

    // `*`: held as for the current cursor; a cursor was named (204 on timeout).
    let star = with(b" * ");
    assert_eq!(star.cursor(), Cursor::NEXT);
    assert!(star.names_cursor() && !star.is_foreign());

    // A list with one of our tags among others: that tag is the cursor.
    let list = with(br#""abc", W/"00000000000000ff-9", "x""#);
    assert_eq!(
        list.cursor(),
        Cursor::new(Some(Version::new(9)), Epoch::new(255))
    );

    // A list of other tags only: foreign, answered at once.
    for other in [&br#""abc""#[..], br#"W/"ff-9", "00000000000000FF-9""#] {
        let req = with(other);
        assert!(req.is_foreign() && req.names_cursor(), "{other:?}");
    }

    // Unparsable: ignored, as if absent (no cursor named).
    for bad in [
        &b""[..],
        b"abc",
        b"\"abc",
        b"\"a\" \"b\"",
        b"w/\"a\"",
        b"\"a\x01\"",
    ] {
        let req = with(bad);
        assert!(!req.names_cursor() && !req.is_foreign(), "{bad:?}");
        assert_eq!(req.cursor(), Cursor::NEXT);
    }
}

#[test]
fn etags_round_trip_and_compare_weakly() {
    let e = Epoch::new(0xdead_beef).unwrap();
    let tag = etag(e, Version::new(12));
    assert_eq!(tag, "\"00000000deadbeef-12\"");
    let cursor = Cursor::new(Some(Version::new(12)), Some(e));
    for form in [
        tag.as_bytes().to_vec(),
        format!("W/{}", tag.to_str().unwrap()).into_bytes(),
    ] {
        let inm = IfNoneMatch::parse(&form).unwrap();
        assert!(inm.matches(e, Version::new(12)));
        assert!(!inm.matches(e, Version::new(13)));
        assert_eq!(inm.cursors().collect::<Vec<_>>(), [cursor]);
    }
    // Tags we never write: not ours, never a match.
    for other in [
        &b"\"\""[..],
        b"\"00000000deadbeef_12\"",
        b"\"00000000deadbeef-12-1\"",
        b"\"0000000000000000-1\"",
        b"\"00000000DEADBEEF-12\"",
        b"\"00000000deadbeef-012\"",
        b"\"\xff-1\"",
    ] {
        let inm = IfNoneMatch::parse(other).unwrap();
        assert_eq!(inm.len(), 1);
        assert_eq!(
            inm.cursors().count(),
            0,
            "{:?}",
            String::from_utf8_lossy(other)
        );
        assert!(!inm.matches(e, Version::new(12)));
    }
}

#[test]
fn forms_decode_like_browsers_send_them() {
    let form = Form::parse(b"session=a%2Bb+c&action=add&action=remove&empty=&novalue").unwrap();
    assert_eq!(form.get("session"), Some("a+b c"));
    assert_eq!(
        form.get("action"),
        Some("add"),
        "the first of repeated fields"
    );
    assert_eq!(form.get("empty"), Some(""));
    assert_eq!(form.get("novalue"), Some(""));
    assert_eq!(form.len(), 5);
    assert!(Form::parse(b"").unwrap().is_empty());
    assert_eq!(
        Form::parse("név=Zoé".as_bytes()).unwrap().get("név"),
        Some("Zoé"),
        "raw UTF-8 passes through"
    );
}

#[test]
fn undecodable_forms_are_refused_whole() {
    assert_eq!(
        Form::parse(b"a=1&b=%4"),
        Err(FormError::InvalidEscape { offset: 6 })
    );
    assert_eq!(Form::parse(b"a=%C3%28"), Err(FormError::InvalidUtf8));
    assert_eq!(Form::parse(b"a=\xff"), Err(FormError::InvalidUtf8));
    assert_eq!(
        percent_decode(b"%"),
        Err(FormError::InvalidEscape { offset: 0 })
    );
    assert_eq!(
        percent_decode(b"%%41"),
        Err(FormError::InvalidEscape { offset: 0 })
    );
    assert_eq!(percent_decode(b"%41%61").as_deref(), Ok("Aa"));
}

#[test]
fn media_types_compare_without_parameters() {
    let form = "application/x-www-form-urlencoded";
    for yes in [
        &b"application/x-www-form-urlencoded"[..],
        b"application/x-www-form-urlencoded; charset=UTF-8",
        b"  APPLICATION/x-www-form-urlencoded  ;charset=utf-8",
        b"application/x-www-form-urlencoded;",
    ] {
        assert!(
            media_type_is(yes, form),
            "{:?}",
            String::from_utf8_lossy(yes)
        );
    }
    for no in [
        &b"application/x-www-form-urlencodedx"[..],
        b"application/json",
        b"multipart/form-data; boundary=application/x-www-form-urlencoded",
        b"",
        b";application/x-www-form-urlencoded",
        b"\xffapplication/x-www-form-urlencoded",
    ] {
        assert!(
            !media_type_is(no, form),
            "{:?}",
            String::from_utf8_lossy(no)
        );
    }
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn no_input_makes_a_parser_panic() {
    // Bytes weighted toward the ones the parsers care about.
    const ALPHABET: &[u8] = b"since=epoch&timeout%+.-0123456789abcdefABCDEFW/\" *,;\xff\xc3\x00\t";
    let mut rng = XorShift(0x5EED_1234_ABCD_0001);
    let config = PollConfig::new();
    let mut accepted = 0;
    for _ in 0..50_000 {
        let len = (rng.next() % 48) as usize;
        let input: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if r.is_multiple_of(4) {
                    (r >> 8) as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&input);
        if PollRequest::parse(Some(&text), None, &config).is_ok() {
            accepted += 1;
        }
        let _ = PollRequest::parse(Some(&text), Some(&input), &config);
        let _ = IfNoneMatch::parse(&input);
        let _ = parse_timeout(&text, Duration::MAX);
        let _ = percent_decode(&input);
        let _ = Form::parse(&input);
        let _ = media_type_is(&input, &text);
    }
    // The sweep reached past the error paths.
    assert!(accepted > 100, "only {accepted} inputs parsed");
}

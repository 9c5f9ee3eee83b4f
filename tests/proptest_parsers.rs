//! Every parser of the HTTP layer on generated input (the short run of the
//! cargo-fuzz targets in `fuzz/`, on stable Rust, in a few seconds): no
//! panic, errors are a `400` with a JSON message, accepted values are within
//! bounds and survive a round trip (ETag, query, event id, percent-encoding,
//! form). The properties themselves are in `parser_checks`, shared with the
//! fuzz targets.
//!
//! The generators mix plain random bytes with input built from the pieces
//! the parsers look for (`%`, hex digits, `+`, `&`, `=`, quotes, `W/`, dots,
//! the parameter names), so that most cases get past the first check.

mod parser_checks;

use std::time::Duration;

use parser_checks as check;
use proptest::prelude::*;

/// Cases per property; together they take a few seconds.
const CASES: u32 = 2000;

/// Any string of up to `max` chars (any Unicode scalar, controls included).
/// Cheaper to generate than `any::<String>()`'s regex.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Bytes drawn from what percent-decoding and form splitting look at.
fn form_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"%".to_vec()),
        Just(b"+".to_vec()),
        Just(b"&".to_vec()),
        Just(b"=".to_vec()),
        Just(b"%C3%A9".to_vec()),
        Just(b"%FF".to_vec()),
        Just(b"%2".to_vec()),
        Just(b"%g0".to_vec()),
        "[0-9a-fA-F]{1,2}".prop_map(String::into_bytes),
        "[a-z ]{0,4}".prop_map(String::into_bytes),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

/// A query built from our parameter names (sometimes encoded, sometimes
/// repeated) and values that are sometimes valid.
fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("since"),
        Just("epoch"),
        Just("timeout"),
        Just("session"),
        Just("s%69nce"),
        Just("%ZZ"),
        Just(""),
    ];
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9a-fA-F]{0,18}",
        "[0-9]{0,4}(\\.[0-9]{0,12})?",
        "[-+ .%0-9a-z]{0,8}",
        Just("18446744073709551616".to_owned()),
        text(8),
    ];
    let pair = (name, value, any::<bool>()).prop_map(|(n, v, eq)| {
        if eq {
            format!("{n}={v}")
        } else {
            format!("{n}{v}")
        }
    });
    prop_oneof![
        4 => prop::collection::vec(pair, 0..5).prop_map(|p| p.join("&")),
        1 => text(24),
    ]
}

/// One entity tag: mostly ETag-shaped (sometimes exactly ours), sometimes
/// broken.
fn entity_tag() -> impl Strategy<Value = String> {
    let shaped = (
        prop_oneof![Just(""), Just("W/"), Just(" "), Just("w/")],
        prop_oneof![Just("\""), Just("")],
        prop_oneof!["[0-9a-fA-F]{0,17}", "[0-9a-f]{16}"],
        prop_oneof![Just("-"), Just(""), Just("--")],
        "[0-9]{0,21}",
        prop_oneof![Just("\""), Just("")],
    )
        .prop_map(|(w, q1, e, dash, v, q2)| format!("{w}{q1}{e}{dash}{v}{q2}"));
    prop_oneof![4 => shaped, 1 => Just("*".to_owned()), 1 => text(6)]
}

/// An `If-None-Match` value: `*`, a list of tags with the separators RFC
/// 9110 allows (and some it does not), or any bytes.
fn if_none_match() -> impl Strategy<Value = Vec<u8>> {
    let sep = prop_oneof![Just(","), Just(", "), Just(" ,,\t"), Just(" "), Just("")];
    let list = prop::collection::vec((entity_tag(), sep), 1..4).prop_map(|tags| {
        tags.into_iter()
            .map(|(t, s)| format!("{t}{s}"))
            .collect::<String>()
            .into_bytes()
    });
    prop_oneof![
        4 => list,
        1 => Just(b"*".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// A multi-key query: `keys` and `cursors` lists of sometimes valid,
/// sometimes broken elements, with `timeout` and noise.
fn keyed_query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        "[a-z]{0,10}",
        Just("a".to_owned()),
        Just("%2C".to_owned()),
        text(4)
    ];
    let cursor = prop_oneof![
        Just(String::new()),
        "[0-9a-f]{16}-[0-9]{1,3}",
        "[0-9a-fA-F]{0,17}-?[0-9]{0,21}",
        "[a-z:%]{0,90}",
    ];
    (
        prop::collection::vec(key, 0..6),
        prop::option::of(prop::collection::vec(cursor, 0..7)),
        prop::option::of(timeout_text()),
        any::<bool>(),
    )
        .prop_map(|(keys, cursors, timeout, twice)| {
            let mut q = format!("keys={}", keys.join(","));
            if let Some(c) = cursors {
                q += &format!("&cursors={}", c.join(","));
            }
            if let Some(t) = timeout {
                q += &format!("&timeout={t}");
            }
            if twice {
                q += "&keys=a";
            }
            q
        })
}

/// A `timeout` value: mostly number-shaped.
fn timeout_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{0,4}(\\.[0-9]{0,14})?",
        1 => "[-+eE .0-9a-z]{0,10}",
        1 => text(12),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn percent_decode_of_any_bytes_matches_the_reference(input in form_bytes()) {
        check::check_percent_decode(&input);
    }

    #[test]
    fn percent_encode_then_decode_is_identity(s in text(24)) {
        check::check_percent_round_trip(&s);
    }

    #[test]
    fn form_parse_of_any_body_is_all_or_nothing(body in form_bytes()) {
        check::check_form(&body);
    }

    #[test]
    fn form_parse_of_an_encoded_form_returns_its_pairs(
        pairs in prop::collection::vec((text(8), text(8)), 0..6)
    ) {
        check::check_form_round_trip(&pairs);
    }

    #[test]
    fn poll_request_of_any_query_and_etag_is_a_bounded_request_or_a_query_400(
        query in query(),
        tag in prop::option::of(if_none_match()),
    ) {
        check::check_poll_request(&query, tag.as_deref());
    }

    #[test]
    fn if_none_match_of_any_value_is_a_list_star_or_ignored(value in if_none_match()) {
        check::check_if_none_match(&value);
    }

    #[test]
    fn keyed_request_of_any_query_is_within_limits_or_400(query in keyed_query()) {
        check::check_keyed_request(&query);
    }

    #[test]
    fn cursor_written_as_etag_query_or_event_id_parses_back(version in any::<u64>(), epoch in any::<u64>()) {
        check::check_cursor_round_trip(version, epoch);
    }

    #[test]
    fn timeout_of_any_text_is_within_the_maximum_or_400(s in timeout_text()) {
        check::check_timeout(&s);
    }

    #[test]
    fn timeout_within_the_maximum_parses_back_exactly(nanos in 0..=300_000_000_000u64) {
        check::check_timeout_round_trip(Duration::from_nanos(nanos));
    }

    #[test]
    fn media_type_ignores_case_parameters_and_space(
        content_type in prop_oneof![
            Just(b"application/x-www-form-urlencoded".to_vec()),
            "[a-zA-Z/ ;=-]{0,40}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ],
        expected in prop_oneof![Just("application/x-www-form-urlencoded".to_owned()), "[a-z/;-]{0,20}"],
    ) {
        check::check_media_type(&content_type, &expected);
    }

    #[test]
    fn last_event_id_of_any_value_is_a_cursor_or_from_scratch(
        id in if_none_match().prop_map(|v| v.into_iter().filter(|&b| b != b'"').collect::<Vec<u8>>()),
        query in query(),
    ) {
        check::check_last_event_id(&id, &query);
    }
}

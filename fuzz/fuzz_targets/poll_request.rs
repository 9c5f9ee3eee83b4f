//! `PollRequest::parse` and `from_parts` on any query and `If-None-Match`:
//! a request within bounds, or a `400` with a JSON message that the query
//! alone explains.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: (&str, Option<&[u8]>)| {
    let (query, if_none_match) = input;
    parser_checks::check_poll_request(query, if_none_match);
});

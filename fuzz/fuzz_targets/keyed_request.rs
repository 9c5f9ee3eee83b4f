//! `KeyedRequest::parse` on any query: keys and cursors within the limits,
//! or a `400` with a JSON message; a foreign cursor is never an error.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|query: &str| {
    parser_checks::check_keyed_request(query);
});

//! `Last-Event-ID` (with any query) for an event stream: a cursor, or none
//! (from scratch), never an error; an id that parses is written back the
//! same.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: (&[u8], &str)| {
    let (id, query) = input;
    parser_checks::check_last_event_id(id, query);
});

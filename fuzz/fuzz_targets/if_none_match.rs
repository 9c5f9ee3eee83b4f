//! `IfNoneMatch::parse` on any value: `*`, a list whose tags of our form
//! write back as ETags that match them, or ignored; never a `400`.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: (&[u8], u64, u64)| {
    let (value, version, epoch) = input;
    parser_checks::check_if_none_match(value);
    parser_checks::check_cursor_round_trip(version, epoch);
});

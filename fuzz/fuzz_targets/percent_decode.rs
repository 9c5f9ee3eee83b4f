//! `percent_decode` on any bytes: agrees with a reference decoder, and what
//! it decodes encodes back to the same string.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    parser_checks::check_percent_decode(input);
    if let Ok(s) = std::str::from_utf8(input) {
        parser_checks::check_percent_round_trip(s);
    }
});

//! `parse_timeout` on any text: a duration within the maximum, close to
//! the decimal it spells, or a `400`.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: (&str, u64)| {
    let (text, nanos) = input;
    parser_checks::check_timeout(text);
    let within = nanos % (parser_checks::MAX_TIMEOUT.as_nanos() as u64 + 1);
    parser_checks::check_timeout_round_trip(std::time::Duration::from_nanos(within));
});

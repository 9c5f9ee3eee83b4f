//! `Form::parse` on any body: all pairs decode or the body is refused
//! whole; accepted pairs, encoded again, parse to the same form.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    parser_checks::check_form(body);
});

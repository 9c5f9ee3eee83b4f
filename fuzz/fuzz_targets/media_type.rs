//! `media_type_is` on any content type: parameters, case and surrounding
//! space never change the answer; a type matches itself.
#![no_main]

#[path = "../../tests/parser_checks/mod.rs"]
mod parser_checks;

libfuzzer_sys::fuzz_target!(|input: (&[u8], &str)| {
    let (content_type, expected) = input;
    parser_checks::check_media_type(content_type, expected);
});

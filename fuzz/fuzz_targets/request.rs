//! Fuzz target: `kinbar::fuzzing::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kinbar::fuzzing::request(data));

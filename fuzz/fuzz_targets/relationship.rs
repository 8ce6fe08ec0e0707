//! Fuzz target: `kinbar::fuzzing::relationship`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kinbar::fuzzing::relationship(data));

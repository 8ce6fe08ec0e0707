//! Fuzz target: `kinbar::fuzzing::validation_yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kinbar::fuzzing::validation_yaml(data));

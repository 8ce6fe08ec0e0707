//! Fuzz target: `kinbar::fuzzing::schema`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kinbar::fuzzing::schema(data));

//! Fuzz target: `kinbar::fuzzing::zedtoken`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kinbar::fuzzing::zedtoken(data));

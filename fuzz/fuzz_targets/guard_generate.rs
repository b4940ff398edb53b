#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ig_e2e::fuzz::guard_generate(data));

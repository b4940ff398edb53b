#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ig_e2e::fuzz::policy_decode(data));

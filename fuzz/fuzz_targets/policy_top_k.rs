#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ig_e2e::fuzz::policy_top_k(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floodgate::fuzz::request_head(data));

//! libFuzzer entry of the `connect_response` target (`scripts/fuzz connect_response`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::tunnel::connect_response(data));

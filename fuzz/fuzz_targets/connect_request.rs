//! libFuzzer entry of the `connect_request` target (`scripts/fuzz connect_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::tunnel::connect_request(data));

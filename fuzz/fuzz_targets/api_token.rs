//! libFuzzer entry of the `api_token` target (`scripts/fuzz api_token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::directory::api_token(data));

//! libFuzzer entry of the `proxy_status` target (`scripts/fuzz proxy_status`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::errors::proxy_status(data));

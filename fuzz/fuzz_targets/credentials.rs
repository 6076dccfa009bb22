//! libFuzzer entry of the `credentials` target (`scripts/fuzz credentials`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::credentials::credentials(data));

//! libFuzzer entry of the `script_upload` target (`scripts/fuzz script_upload`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::directory::script_upload(data));

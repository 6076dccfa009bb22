//! libFuzzer entry of the `service_json` target (`scripts/fuzz service_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::directory::service_json(data));

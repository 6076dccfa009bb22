//! libFuzzer entry of the `wrangler_config` target (`scripts/fuzz wrangler_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::config::wrangler_config(data));

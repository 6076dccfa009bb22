//! libFuzzer entry of the `binding_fetch` target (`scripts/fuzz binding_fetch`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::binding::binding_fetch(data));

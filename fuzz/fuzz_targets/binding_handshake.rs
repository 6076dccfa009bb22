//! libFuzzer entry of the `binding_handshake` target (`scripts/fuzz binding_handshake`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::binding::binding_handshake(data));

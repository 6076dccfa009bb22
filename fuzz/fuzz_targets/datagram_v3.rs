//! libFuzzer entry of the `datagram_v3` target (`scripts/fuzz datagram_v3`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::tunnel::datagram_v3(data));

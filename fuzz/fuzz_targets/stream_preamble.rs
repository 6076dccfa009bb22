//! libFuzzer entry of the `stream_preamble` target (`scripts/fuzz stream_preamble`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::tunnel::stream_preamble(data));

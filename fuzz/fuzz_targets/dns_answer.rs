//! libFuzzer entry of the `dns_answer` target (`scripts/fuzz dns_answer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wvpc_fuzz::targets::dns::dns_answer(data));

//! wvpc-bench

//! Example project: the script in `script/` (a proxy to the `API` binding with its own
//! timeout) and its integration tests in `tests/`, written with `wvpc-testing`. This crate
//! only builds the script for wasm32-wasip2 (`build.rs`) and exports its path as
//! `WVPC_EXAMPLE_SCRIPT`.

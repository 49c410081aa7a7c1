//! Driver, checks and seeds: `fuzz/drivers/wasm_module.rs`.
#![no_main]

use canister_snapshots_fuzz::wasm_module;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wasm_module::run(data));

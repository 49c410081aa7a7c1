//! Driver, checks and seeds: `fuzz/drivers/canister_payload.rs`.
#![no_main]

use canister_snapshots_fuzz::canister_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| canister_payload::run(data));

//! Driver, checks and seeds: `fuzz/drivers/management_payload.rs`.
#![no_main]

use canister_snapshots_fuzz::management_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| management_payload::run(data));

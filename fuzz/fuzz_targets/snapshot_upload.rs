//! Driver, checks and seeds: `fuzz/drivers/snapshot_upload.rs`.
#![no_main]

use canister_snapshots_fuzz::snapshot_upload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: snapshot_upload::Upload| snapshot_upload::check(&input));

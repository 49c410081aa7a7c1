//! Driver, checks and seeds: `fuzz/drivers/snapshot_dir.rs`.
#![no_main]

use canister_snapshots_fuzz::snapshot_dir;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: snapshot_dir::Dir| snapshot_dir::check(&input));

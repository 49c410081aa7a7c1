//! Driver, checks and seeds: `fuzz/drivers/page_map_ops.rs`.
#![no_main]

use canister_snapshots_fuzz::page_map_ops;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: page_map_ops::Ops| page_map_ops::check(&input));

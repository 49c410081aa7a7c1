//! Driver and checks: `fuzz/drivers/memory_tracker.rs` (the memory tracker against the copying
//! design, byte for byte).
#![no_main]

use canister_snapshots_fuzz::memory_tracker;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: memory_tracker::Steps| memory_tracker::check(&input));

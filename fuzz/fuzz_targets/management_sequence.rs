//! Driver, checks and seeds: `fuzz/drivers/management_sequence.rs`.
#![no_main]

use canister_snapshots_fuzz::management_sequence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: management_sequence::Sequence| management_sequence::check(&input));

//! Driver, checks and seeds: `fuzz/drivers/http_request.rs`.
#![no_main]

use canister_snapshots_fuzz::http_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| http_request::run(data));

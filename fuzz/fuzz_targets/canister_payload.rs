//! Hostile payloads to the test canister: a trap or reject leaves the canister unchanged.
#![no_main]

use canister_snapshots::execution::{TestCanisterEngine, execute_canister_message};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const METHODS: &[&str] = &[
    "write_heap",
    "read_heap",
    "fill_heap",
    "write_stable",
    "read_stable",
    "fill_stable",
    "memory_sizes",
    "set_certified_data",
    "set_global",
    "get_global",
    "trap",
    "unknown",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (execution, mut state, canister) = common::replica();
    let before = state.state_hash();
    let method = METHODS[selector as usize % METHODS.len()];
    let canister_state = state.canisters.get_mut(&canister).expect("created");
    let result = execute_canister_message(
        &TestCanisterEngine,
        execution.config(),
        canister_state,
        candid::Principal::anonymous(),
        state.time,
        method,
        payload,
    );
    if result.is_err() {
        assert_eq!(state.state_hash(), before, "a rejected {method} changed the state");
    }
});

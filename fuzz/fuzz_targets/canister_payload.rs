//! Hostile payloads to the test canister: a trap or reject leaves the canister unchanged.
#![no_main]

use canister_snapshots::execution::test_canister::METHODS;
use canister_snapshots::execution::{MemoryContext, TestCanisterEngine, execute_canister_message};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (execution, mut state, canister) = common::replica();
    let before = state.state_hash();
    // One index past the end asks for a method that does not exist.
    let method = METHODS
        .get(selector as usize % (METHODS.len() + 1))
        .copied()
        .unwrap_or("unknown");
    let memory = MemoryContext {
        subnet_memory_usage: state.memory_usage(),
        snapshots_size: state.snapshots.snapshots_size(canister),
    };
    let canister_state = state.canisters.get_mut(&canister).expect("created");
    let result = execute_canister_message(
        &TestCanisterEngine,
        execution.config(),
        canister_state,
        memory,
        candid::Principal::anonymous(),
        state.time,
        method,
        payload,
    );
    if result.is_err() {
        assert_eq!(
            state.state_hash(),
            before,
            "a rejected {method} changed the state"
        );
    }
});

//! Hostile management payloads: any method name, any bytes. Nothing panics, and a rejected
//! message leaves the state exactly as it was.
#![no_main]

use canister_snapshots::management::METHODS;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (execution, mut state, _) = common::replica();
    let method = METHODS
        .get(selector as usize % (METHODS.len() + 1))
        .copied()
        .unwrap_or("no_such_method");
    let sender = if selector & 0x80 == 0 {
        candid::Principal::from_slice(&common::CONTROLLER)
    } else {
        candid::Principal::anonymous()
    };
    let before = state.state_hash();
    let result = execution
        .management_canister()
        .execute(&mut state, sender, method, payload);
    if result.is_err() {
        assert_eq!(state.state_hash(), before, "a rejected {method} changed the state");
    }
});

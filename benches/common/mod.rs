//! Helpers the state-directory benches share (`checkpoint.rs`, `invocation.rs`).

#![allow(dead_code)]

use canister_snapshots::memory::Memory;
use canister_snapshots::replicated_state::ReplicatedState;

/// The stable memory of the state's only canister.
pub fn stable(state: &mut ReplicatedState) -> &mut Memory {
    let canister = state.canisters.values_mut().next().expect("one canister");
    &mut canister
        .execution_state
        .as_mut()
        .expect("code installed")
        .stable_memory
}

/// A field of `/proc/self/status` given in kB (`"VmRSS:"`, `"RssAnon:"`), in bytes; 0 where
/// there is no such file.
pub fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|r| r.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

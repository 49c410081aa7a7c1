//! Helpers the benches share: how much to run (`Scale`), the state directory's canister, the
//! process's resident memory.

#![allow(dead_code)]

use canister_snapshots::memory::Memory;
use canister_snapshots::replicated_state::ReplicatedState;

/// How much to run, from the environment and the arguments.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `cargo test --benches`: one iteration each, smallest sizes.
    Smoke,
    /// `BENCH_QUICK=1`: the smaller sizes.
    Quick,
    /// Everything, up to the issues' sizes.
    Full,
}

impl Scale {
    /// The scale to run at, or `None` when `BENCH_SKIP` is set (build only); `bench` names the
    /// bench in the message.
    pub fn from_env(bench: &str) -> Option<Scale> {
        if std::env::var_os("BENCH_SKIP").is_some_and(|v| v != "0") {
            eprintln!("{bench}: BENCH_SKIP is set, not running");
            return None;
        }
        Some(if !std::env::args().any(|a| a == "--bench") {
            Scale::Smoke
        } else if std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0") {
            Scale::Quick
        } else {
            Scale::Full
        })
    }
}

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

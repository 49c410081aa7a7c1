//! `canister-snapshots`: replica-side canister snapshots for the Internet Computer.
//!
//! The layers, bottom up (each depends only on the ones before it):
//! - [`memory`]: copy-on-write 4 KiB page memory and its checksum;
//! - [`state`]: canister state in the IC's terms;
//! - [`snapshots`]: snapshot ids, snapshots and the per-canister store with its accounting.
//!
//! See `ARCHITECTURE.md` for the codemap and the invariants that hold across it.

pub mod cli;
pub mod config;
pub mod execution;
pub mod harness;
pub mod management;
pub mod memory;
pub mod replicated_state;
pub mod scheduler;
pub mod snapshots;
pub mod state;

pub use config::Config;
pub use execution::TEST_CANISTER_WASM;
pub use harness::{RejectResponse, StateMachine};

#![doc = include_str!("../README.md")]
//!
//! The layers, bottom up (each depends only on the ones before it): [`memory`] ← [`state`] ←
//! [`snapshots`] ← [`replicated_state`] ← [`execution`] / [`management`] ← [`scheduler`] ←
//! [`harness`] ← [`cli`], and [`client`] ← [`transfer`] ← [`harness`]. `ARCHITECTURE.md` has
//! the codemap and the invariants.

pub mod archive;
pub mod cli;
pub mod client;
pub mod config;
pub mod execution;
pub mod harness;
pub mod management;
pub mod memory;
pub mod progress;
pub mod replicated_state;
pub mod scheduler;
pub mod snapshots;
pub mod state;
pub mod transfer;

pub use config::Config;
pub use execution::TEST_CANISTER_WASM;
pub use harness::{RejectResponse, StateMachine};

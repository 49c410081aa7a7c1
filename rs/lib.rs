#![doc = include_str!("../README.md")]
//!
//! The layers, bottom up (each depends only on the ones before it): [`memory`] ← [`state`] ←
//! [`snapshots`] ← [`replicated_state`] ← [`execution`] / [`management`] ← [`scheduler`] ←
//! [`harness`] ← [`cli`], and [`client`] ← [`transfer`] ← [`harness`]; [`state_manager`] (the
//! state directory) sits on [`replicated_state`] and is used by [`scheduler`] and [`harness`];
//! [`replica`] (the node: state directory, pool, history, certification) sits on
//! [`scheduler`] and [`http`] (the IC's HTTP interface, `serve`) on [`replica`];
//! [`testing`] (workloads, and with the `proptest` feature the reference model and restore
//! properties) sits on top and nothing depends on it. `ARCHITECTURE.md` has the codemap and the
//! invariants.

// Untrusted input (payloads, uploads, snapshot directories, checkpoint files) reaches most of
// this crate: no unwrap, expect, indexing, panic or unchecked arithmetic outside tests, except
// where an `allow` states the invariant beside it. The modules below that still opt out say so
// at their top (issue 9, panic hygiene).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

pub mod archive;
pub mod cli;
pub mod client;
pub mod config;
pub mod embedders;
pub mod execution;
pub mod harness;
pub mod http;
pub mod management;
pub mod memory;
pub mod progress;
pub mod replica;
pub mod replicated_state;
pub mod scheduler;
pub mod snapshots;
pub mod state;
pub mod state_manager;
pub mod testing;
pub mod transfer;

pub use config::Config;
pub use execution::TEST_CANISTER_WASM;
pub use harness::{IngressCall, RejectResponse, StateMachine};

//! The fuzz drivers: one module per fuzz target, each with the target's input type, the checks
//! run on every input, and the seeds its committed corpus (`fuzz/corpus/<target>/`) is made of.
//!
//! This code is compiled twice: as the library of the fuzz crate (`cargo +nightly fuzz`, where
//! each `fuzz_targets/<target>.rs` is a one-line `fuzz_target!` around [`Target::run`]), and by
//! `tests/fuzz_corpus.rs` through `#[path]`, which replays every committed corpus on stable so
//! that CI catches a regression without nightly. It uses only the crate's public API, and
//! nothing in it reads the clock or a `HashMap`: an input replays the same way everywhere.

pub mod canister_payload;
pub mod http_request;
pub mod input;
pub mod management_payload;
pub mod management_sequence;
pub mod memory_tracker;
pub mod page_map_ops;
pub mod replica;
pub mod snapshot_dir;
pub mod snapshot_upload;
pub mod templates;
pub mod wasm_module;

/// A fuzz target as the corpus replay sees it.
pub struct Target {
    pub name: &'static str,
    /// Decodes the input and runs every check on it; panics on a finding.
    pub run: fn(&[u8]),
    /// Named seeds, built from valid payloads.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "management_payload",
        run: management_payload::run,
        seeds: management_payload::seeds,
    },
    Target {
        name: "canister_payload",
        run: canister_payload::run,
        seeds: canister_payload::seeds,
    },
    Target {
        name: "management_sequence",
        run: management_sequence::run,
        seeds: management_sequence::seeds,
    },
    Target {
        name: "snapshot_upload",
        run: snapshot_upload::run,
        seeds: snapshot_upload::seeds,
    },
    Target {
        name: "snapshot_dir",
        run: snapshot_dir::run,
        seeds: snapshot_dir::seeds,
    },
    Target {
        name: "page_map_ops",
        run: page_map_ops::run,
        seeds: page_map_ops::seeds,
    },
    Target {
        name: "http_request",
        run: http_request::run,
        seeds: http_request::seeds,
    },
    Target {
        name: "wasm_module",
        run: wasm_module::run,
        seeds: wasm_module::seeds,
    },
];

//! Testing kit: workloads for any driver, and (feature `proptest`) strategies, a reference
//! model and ready-to-call restore properties.
//!
//! - [`workload`] (always compiled, no dependency): the [`workload::Operation`] type over
//!   several canisters and callers, its conversion to ingress messages, and a seeded
//!   generator. A simulator feeding several replicas and the property tests share it.
//! - [`model`] (feature `proptest`): the reference model, a plain subnet of test canisters
//!   with `Vec<u8>` memories, whose [`model::Model::step`] returns the expected outcome.
//! - [`check`] (feature `proptest`): [`check::assert_matches_model`], which drives a
//!   `StateMachine` and the model with the same operations and reports the first divergence.
//! - [`strategies`] (feature `proptest`): proptest strategies over the workload's types:
//!   principals, settings, memory operations biased to page boundaries, management calls valid
//!   and mutated, whole sequences.
//! - [`properties`] (feature `proptest`): the four restore properties, each taking a
//!   `ProptestConfig` and the user's operation strategy, and printing a failure as its seed
//!   and minimal sequence in pasteable Rust.
//! - [`power_loss`]: the state directory a power loss would leave, built from a recording of
//!   the state manager's durability operations (issue 26).
//! - [`simulation`]: replica agreement under simulation (issue 8): one seeded stream of batches
//!   on replicas with different thread counts, invariants checked after every round.
//!
//! Nothing here is used by the replica itself; it depends on the [`crate::harness`] layer and
//! below, and nothing depends on it.

// Test support: the reference model and the checks report a divergence by panicking, as test
// code does; nothing here runs in a replica.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]
#![forbid(unsafe_code)]

#[cfg(feature = "proptest")]
pub mod check;
#[cfg(feature = "proptest")]
pub mod model;
pub mod power_loss;
#[cfg(feature = "proptest")]
pub mod properties;
pub mod simulation;
#[cfg(feature = "proptest")]
pub mod strategies;
pub mod workload;

//! Testing kit: workloads for any driver, and (feature `proptest`) strategies, a reference
//! model and ready-to-call restore properties.
//!
//! - [`workload`] (always compiled, no dependency): the [`workload::Operation`] type over
//!   several canisters and callers, its conversion to ingress messages, and a seeded
//!   generator. A simulator feeding several replicas and the property tests share it.
//! - [`simulation`]: replica agreement under simulation (issue 8): one seeded stream of batches
//!   on replicas with different thread counts, invariants checked after every round.
//!
//! Nothing here is used by the replica itself; it depends on the [`crate::harness`] layer and
//! below, and nothing depends on it.

pub mod simulation;
pub mod workload;

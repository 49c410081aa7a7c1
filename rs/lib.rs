//! `canister-snapshots`: replica-side canister snapshots for the Internet Computer.
//!
//! The layers, bottom up (each depends only on the ones before it):
//! - [`memory`]: copy-on-write 4 KiB page memory and its checksum;
//! - [`state`]: canister state in the IC's terms;
//! - [`snapshots`]: snapshot ids, snapshots and the per-canister store with its accounting.
//!
//! See `ARCHITECTURE.md` for the codemap and the invariants that hold across it.

pub mod memory;
pub mod snapshots;
pub mod state;

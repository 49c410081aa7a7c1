//! This project's wire-compatible extensions of the management canister's snapshot types
//! (`spec/management.md`, "Extensions"). Candid record subtyping keeps standard clients working:
//! a client that sends the crate's `TakeCanisterSnapshotArgs` omits `label` (decoded as `null`),
//! and a client that decodes `Vec<Snapshot>` skips `label` and `checksum`.

use candid::{CandidType, Principal};
use serde::Deserialize;

/// `TakeCanisterSnapshotArgs` plus an optional `label`.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TakeCanisterSnapshotArgs {
    pub canister_id: Principal,
    pub replace_snapshot: Option<serde_bytes::ByteBuf>,
    pub uninstall_code: Option<bool>,
    pub sender_canister_version: Option<u64>,
    pub label: Option<String>,
}

/// `Snapshot` plus the snapshot's `label` and 32-byte `checksum` (`spec/checksum.md`).
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    pub taken_at_timestamp: u64,
    pub total_size: u64,
    pub label: Option<String>,
    #[serde(with = "serde_bytes")]
    pub checksum: Vec<u8>,
}

/// Longest label accepted, in bytes of UTF-8.
pub const MAX_SNAPSHOT_LABEL_BYTES: usize = 64;

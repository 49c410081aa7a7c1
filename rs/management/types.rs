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

/// `read_canister_snapshot_metadata`'s reply as `ic.did` types it (`spec/ic-snapshots.did`),
/// plus the snapshot's `label` and `checksum`. `source` is a `variant` and `globals` a
/// `vec variant`, not `opt` as in the crate's `ReadCanisterSnapshotMetadataResult` (which
/// accepts either for older replicas): a client generated from `ic.did` cannot decode an `opt`
/// where it expects a value, while the crate type decodes a value into its `opt` fields. Both
/// kinds of client skip the two extra fields.
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct SnapshotMetadata {
    pub source: ic_management_canister_types::SnapshotSource,
    pub taken_at_timestamp: u64,
    pub wasm_module_size: u64,
    pub globals: Vec<ic_management_canister_types::SnapshotMetadataGlobal>,
    pub wasm_memory_size: u64,
    pub stable_memory_size: u64,
    pub wasm_chunk_store: Vec<ic_management_canister_types::ChunkHash>,
    pub canister_version: u64,
    #[serde(with = "serde_bytes")]
    pub certified_data: Vec<u8>,
    pub global_timer: Option<ic_management_canister_types::CanisterTimer>,
    pub on_low_wasm_memory_hook_status:
        Option<ic_management_canister_types::OnLowWasmMemoryHookStatus>,
    pub label: Option<String>,
    #[serde(with = "serde_bytes")]
    pub checksum: Vec<u8>,
}

/// `UploadCanisterSnapshotMetadataArgs` plus `base_snapshot`: when set, the new snapshot starts
/// as a copy-on-write copy of that snapshot's module and memories (resized to the declared
/// sizes) instead of zeros, so an uploader sends only the pages that changed
/// (`spec/transfer.md`, incremental upload).
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct UploadCanisterSnapshotMetadataArgs {
    pub canister_id: Principal,
    pub replace_snapshot: Option<serde_bytes::ByteBuf>,
    pub wasm_module_size: u64,
    pub globals: Vec<ic_management_canister_types::SnapshotMetadataGlobal>,
    pub wasm_memory_size: u64,
    pub stable_memory_size: u64,
    #[serde(with = "serde_bytes")]
    pub certified_data: Vec<u8>,
    pub global_timer: Option<ic_management_canister_types::CanisterTimer>,
    pub on_low_wasm_memory_hook_status:
        Option<ic_management_canister_types::OnLowWasmMemoryHookStatus>,
    pub base_snapshot: Option<serde_bytes::ByteBuf>,
}

/// `UploadCanisterSnapshotDataArgs` with the chunk decoded as bytes (wire-identical: a `blob`),
/// which decodes at memcpy speed instead of byte by byte.
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct UploadCanisterSnapshotDataArgs {
    pub canister_id: Principal,
    #[serde(with = "serde_bytes")]
    pub snapshot_id: Vec<u8>,
    pub kind: ic_management_canister_types::SnapshotDataOffset,
    #[serde(with = "serde_bytes")]
    pub chunk: Vec<u8>,
}

/// [`UploadCanisterSnapshotDataArgs`] with the ids and bytes borrowed from the buffer they are
/// encoded from or decoded out of: the same Candid type and the same wire bytes, without a copy
/// of the chunk on either side (`benches/README.md`, "Copies on the message path").
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct UploadCanisterSnapshotDataArgsRef<'a> {
    pub canister_id: Principal,
    #[serde(borrow)]
    pub snapshot_id: &'a serde_bytes::Bytes,
    pub kind: ic_management_canister_types::SnapshotDataOffset,
    #[serde(borrow)]
    pub chunk: &'a serde_bytes::Bytes,
}

/// `ReadCanisterSnapshotDataResult` with the chunk borrowed from the reply: decoding it copies
/// nothing.
#[derive(CandidType, Deserialize, Debug, Clone, Copy)]
pub struct ReadCanisterSnapshotDataResultRef<'a> {
    #[serde(borrow)]
    pub chunk: &'a serde_bytes::Bytes,
}

/// Largest slice `read_canister_snapshot_data` returns or `upload_canister_snapshot_data`
/// accepts, as on the IC.
pub const MAX_SLICE_BYTES: u64 = 2_000_000;

/// Largest Wasm module an uploaded snapshot may declare (the IC's module limit).
pub const MAX_WASM_MODULE_BYTES: u64 = 100 << 20;

/// Largest Wasm chunk-store chunk, and most chunks per store (the IC's limits).
pub const MAX_WASM_CHUNK_BYTES: usize = 1 << 20;
pub const MAX_WASM_CHUNKS: usize = 100;

/// Most exported globals an uploaded snapshot may declare.
pub const MAX_GLOBALS: usize = 1000;

/// Certified data is at most 32 bytes.
pub const MAX_CERTIFIED_DATA_BYTES: usize = 32;

//! This project's wire-compatible extensions of the management canister's snapshot types
//! (`spec/management.md`, "Extensions"). Candid record subtyping keeps standard clients working:
//! a client that sends the crate's `TakeCanisterSnapshotArgs` omits `label` (decoded as `null`),
//! and a client that decodes `Vec<Snapshot>` skips `label` and `checksum`; a client that
//! decodes `canister_info`'s reply with `ic.did` skips `scheduled_snapshots`.

use candid::{CandidType, Principal};
use serde::Deserialize;

pub use crate::state::{CanisterChange, CanisterChangeDetails, ScheduledSnapshotRecord};

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

/// `UpdateSettingsArgs` plus `snapshot_schedule` (`spec/management.md`, "Scheduled
/// snapshots"): absent or `null` leaves the schedule as it is, so standard clients keep working.
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct UpdateSettingsArgs {
    pub canister_id: Principal,
    pub settings: ic_management_canister_types::CanisterSettings,
    pub sender_canister_version: Option<u64>,
    pub snapshot_schedule: Option<SnapshotScheduleChange>,
}

/// Sets or clears a canister's snapshot schedule.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SnapshotScheduleChange {
    #[serde(rename = "set")]
    Set(SnapshotScheduleArgs),
    #[serde(rename = "clear")]
    Clear,
}

/// A snapshot every `interval_seconds` of batch time, keeping the newest `keep`, optionally
/// only while the canister is stopped.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotScheduleArgs {
    pub interval_seconds: u64,
    pub keep: u64,
    pub only_when_stopped: Option<bool>,
}

/// Shortest and longest schedule interval accepted.
pub const MIN_SNAPSHOT_INTERVAL_SECONDS: u64 = 1;
pub const MAX_SNAPSHOT_INTERVAL_SECONDS: u64 = 366 * 86_400;

/// The label scheduled snapshots carry.
pub const SCHEDULED_SNAPSHOT_LABEL: &str = "scheduled";

/// `canister_status`'s reply (`CanisterStatusResult`, field for field) plus the canister's
/// `snapshot_schedule`, which clients decoding the crate type skip.
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct CanisterStatusResult {
    pub status: ic_management_canister_types::CanisterStatusType,
    pub ready_for_migration: bool,
    pub version: u64,
    pub settings: ic_management_canister_types::DefiniteCanisterSettings,
    pub module_hash: Option<Vec<u8>>,
    pub memory_size: candid::Nat,
    pub memory_metrics: ic_management_canister_types::MemoryMetrics,
    pub cycles: candid::Nat,
    pub reserved_cycles: candid::Nat,
    pub idle_cycles_burned_per_day: candid::Nat,
    pub query_stats: ic_management_canister_types::QueryStats,
    pub snapshot_schedule: Option<SnapshotScheduleStatus>,
}

/// A schedule as `canister_status` reports it.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotScheduleStatus {
    pub interval_seconds: u64,
    pub keep: u64,
    pub only_when_stopped: bool,
    /// Batch time (ns) the next snapshot is due at.
    pub next_due: u64,
    /// The last scheduled take that was refused, until one succeeds.
    pub last_failure: Option<ScheduledSnapshotFailureStatus>,
}

#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSnapshotFailureStatus {
    pub time: u64,
    /// The IC `ErrorCode` of the refusal (e.g. 406 quota, 501 out of cycles).
    pub error_code: u64,
    pub message: String,
}

/// `canister_info`'s reply: `ic.did`'s `canister_info_result` field for field, plus the
/// canister's recent scheduled takes (`spec/management.md`, "Scheduled snapshots"), an extra
/// record field that a client decoding with `ic.did` or the IC's `CanisterInfoResult` skips.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CanisterInfoResult {
    pub total_num_changes: u64,
    pub recent_changes: Vec<Change>,
    pub module_hash: Option<Vec<u8>>,
    pub controllers: Vec<Principal>,
    /// Extension: the last scheduled takes (as many as `num_requested_changes`), oldest first.
    pub scheduled_snapshots: Vec<ScheduledSnapshotChange>,
}

/// `ic.did`'s `change`: unlike the IC's Rust `Change` (whose `details` is an `opt`, so that
/// a replica may add variants), `details` is required, so every entry of a reply carries one
/// of the IC's variants.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub timestamp_nanos: u64,
    pub canister_version: u64,
    pub origin: ic_management_canister_types::ChangeOrigin,
    pub details: ic_management_canister_types::ChangeDetails,
}

/// One scheduled take as `canister_info` reports it: when, at which canister version, as
/// whom (the controller that set the schedule), the snapshot it made and the one it replaced.
#[derive(CandidType, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSnapshotChange {
    pub timestamp_nanos: u64,
    pub canister_version: u64,
    pub origin: ic_management_canister_types::ChangeOrigin,
    #[serde(with = "serde_bytes")]
    pub snapshot_id: Vec<u8>,
    pub replaced_snapshot: Option<serde_bytes::ByteBuf>,
}

impl CanisterChange {
    /// The entry as `ic.did`'s `change`, or `None` for a scheduled take.
    pub fn to_wire(&self) -> Option<Change> {
        Some(Change {
            timestamp_nanos: self.timestamp_nanos,
            canister_version: self.canister_version,
            origin: self.origin.clone(),
            details: self.details.as_ref()?.to_ic()?,
        })
    }

    /// The entry as a [`ScheduledSnapshotChange`], if it is a scheduled take.
    pub fn to_scheduled_snapshot(&self) -> Option<ScheduledSnapshotChange> {
        match &self.details {
            Some(CanisterChangeDetails::ScheduledSnapshot(record)) => {
                Some(ScheduledSnapshotChange {
                    timestamp_nanos: self.timestamp_nanos,
                    canister_version: self.canister_version,
                    origin: self.origin.clone(),
                    snapshot_id: record.snapshot_id.clone(),
                    replaced_snapshot: record.replaced_snapshot.clone(),
                })
            }
            _ => None,
        }
    }
}

//! A transfer's position: the progress file that makes downloads and uploads resumable, the
//! byte budget that stops a transfer on purpose (for tests of resumption), and the checkpoint
//! routine both directions share (`spec/transfer.md`, "Writing safely, resuming").

// The client's own streaming loops: offsets and counts are bounded by region sizes that
// `SnapshotDir::validate` checked against the metadata (the IC's limits, far below u64::MAX),
// buffers are allocated to `SLICE_BYTES` and indexed only by slices in flight (fewer than the
// buffers), and Candid encodes every value of the crate's argument types. What this module
// reads from disk goes through `dir.rs` and `tools.rs`, which are under the crate's lints.
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{TransferError, TransferOptions, dir};
use crate::snapshots::SnapshotRegion;

/// Progress is made durable (file synced, progress file rewritten) every this many slices.
pub(super) const SYNC_EVERY_SLICES: u64 = 32;

/// `.download_progress.json` / `.upload_progress.json`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Progress {
    /// Hex of the snapshot id being transferred.
    pub snapshot_id: String,
    pub wasm_module: u64,
    pub wasm_memory: u64,
    pub stable_memory: u64,
    /// Hex hashes of the chunks already transferred.
    pub chunks: Vec<String>,
    /// Upload only: hex id of the snapshot this upload supersedes, deleted once the upload is
    /// verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// Upload only: hex id of the snapshot `replace_snapshot` destroyed when the upload
    /// started (the quota was full and the caller named it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_at_start: Option<String>,
    /// Upload only: the canister (text) the upload goes into. A resume into another canister is
    /// refused. Absent in progress files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canister_id: Option<String>,
    /// Upload only: hex id of the base snapshot of an incremental upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_snapshot: Option<String>,
    /// Upload only: the directory's snapshot checksum when the upload started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_checksum: Option<String>,
    /// Upload only: the hash of each file when the upload started, so that a resume of an
    /// edited directory is refused naming the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_files: Option<super::FileHashes>,
}

impl Progress {
    pub fn offset(&mut self, region: SnapshotRegion) -> &mut u64 {
        match region {
            SnapshotRegion::WasmModule => &mut self.wasm_module,
            SnapshotRegion::WasmMemory => &mut self.wasm_memory,
            SnapshotRegion::StableMemory => &mut self.stable_memory,
        }
    }

    pub fn load(path: &Path) -> Result<Option<Progress>, TransferError> {
        match dir::read_small_file(path, dir::MAX_PROGRESS_JSON_BYTES, "progress file")? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| TransferError::Resume {
                        path: path.to_path_buf(),
                        reason: format!("the progress file does not parse: {e}"),
                    })
            }
            None => Ok(None),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), TransferError> {
        dir::write_atomically(
            path,
            &serde_json::to_vec(self).expect("progress serialises"),
        )
    }
}

/// Counts bytes against `stop_after_bytes`.
pub(super) struct Budget {
    pub moved: u64,
    limit: Option<u64>,
}

impl Budget {
    pub fn new(options: &TransferOptions) -> Self {
        Budget {
            moved: 0,
            limit: options.stop_after_bytes,
        }
    }

    pub fn spend(&mut self, bytes: u64) {
        self.moved += bytes;
    }

    pub fn exhausted(&self) -> bool {
        self.exhausted_after(0)
    }

    /// Whether moving `more` bytes would spend the budget: a batch of slices ends at the slice
    /// that spends it, so a stop comes exactly where it would without batching.
    pub fn exhausted_after(&self, more: u64) -> bool {
        self.limit.is_some_and(|limit| self.moved + more >= limit)
    }
}

/// The slices of a region to send together next: up to `parallel` slices of at most
/// `slice_bytes` from `offset`, ending early at the slice that spends the budget.
pub(super) fn next_batch(
    offset: u64,
    size: u64,
    slice_bytes: u64,
    parallel: usize,
    budget: &Budget,
) -> Vec<(u64, u64)> {
    let mut batch = Vec::new();
    let (mut at, mut planned) = (offset, 0u64);
    while at < size && batch.len() < parallel.max(1) {
        let len = slice_bytes.min(size - at);
        batch.push((at, len));
        at += len;
        planned += len;
        if budget.exhausted_after(planned) {
            break;
        }
    }
    batch
}

/// Where a transfer is within a region, after a slice.
pub(super) struct Step {
    pub region: SnapshotRegion,
    pub offset: u64,
    pub size: u64,
    pub slices: u64,
}

/// Every [`SYNC_EVERY_SLICES`] slices, at the end of a region, and when the budget is spent:
/// makes the data durable (`sync`) and then records the offset, so the progress file never
/// claims bytes that could still be lost. Then stops the transfer if the budget is spent.
pub(super) fn checkpoint(
    progress: &mut Progress,
    progress_path: &Path,
    step: &Step,
    budget: &Budget,
    bar: &indicatif::ProgressBar,
    sync: impl FnOnce() -> Result<(), TransferError>,
) -> Result<(), TransferError> {
    if step.slices.is_multiple_of(SYNC_EVERY_SLICES)
        || step.offset == step.size
        || budget.exhausted()
    {
        sync()?;
        *progress.offset(step.region) = step.offset;
        progress.save(progress_path)?;
    }
    if budget.exhausted() && step.offset < step.size {
        bar.abandon();
        return Err(TransferError::Interrupted {
            bytes: budget.moved,
        });
    }
    Ok(())
}

//! Snapshot transfer, client side: download a snapshot into a local directory and upload one
//! back, through the management methods in 2,000,000-byte slices, with resumption and an end-
//! to-end checksum. Semantics and formats in `spec/transfer.md`.
//!
//! Written against [`ManagementClient`], as a client of any replica would be (every byte crosses
//! the Candid message path); `StateMachine`'s `download_canister_snapshot`,
//! `upload_canister_snapshot*` methods are thin wrappers over [`download_canister_snapshot`] and
//! [`upload_canister_snapshot`]. `download.rs` and `upload.rs` hold the two directions,
//! `progress.rs` the resumable position they share, `dir.rs` the directory layout, `tools.rs`
//! the offline tools. It reads and writes files only under the directory it is given; every
//! file it reads is untrusted.

mod dir;
mod download;
mod progress;
mod tools;
mod upload;

use std::path::{Path, PathBuf};

use candid::Principal;
use ic_management_canister_types::ReadCanisterSnapshotMetadataArgs;

use crate::client::{ManagementClient, RejectResponse};
use crate::management::types::{MAX_SLICE_BYTES, SnapshotMetadata};
use crate::memory::PAGE_SIZE;
use crate::memory::checksum::Hash;

pub use dir::{ChecksumRecord, REGIONS, SnapshotDir, changed_page_runs, for_each_block};
pub use download::download_canister_snapshot;
pub use tools::{DiffReport, PageRanges, RegionDiff, diff, inspect, nonzero_page_ranges};
pub use upload::upload_canister_snapshot;

/// Slices are whole pages: 488 pages = 1,998,848 bytes, the most that fits in
/// [`MAX_SLICE_BYTES`]. Page-aligned slices let an upload skip unchanged pages exactly.
pub const SLICE_BYTES: u64 = (MAX_SLICE_BYTES / PAGE_SIZE as u64) * PAGE_SIZE as u64;

/// Why a transfer failed. Each variant names the file or step, so the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{step} was rejected: {reject}")]
    Reject {
        step: &'static str,
        reject: RejectResponse,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("{path} is missing")]
    MissingFile { path: PathBuf },
    #[error(
        "{path} has {actual} bytes, but metadata.json says {expected}: the file is truncated or not from this snapshot"
    )]
    FileSize {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} hashes to {actual}, not to the hash in its name: the chunk is corrupted")]
    ChunkHash { path: PathBuf, actual: String },
    #[error("checksum mismatch for {what}: expected {expected}, computed {actual}")]
    ChecksumMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{path} already holds a complete snapshot: download into an empty directory")]
    DirectoryNotEmpty { path: PathBuf },
    #[error("cannot resume from {path}: {reason}; delete it to start over")]
    Resume { path: PathBuf, reason: String },
    #[error("the transfer stopped after {bytes} bytes as asked; run it again to resume")]
    Interrupted { bytes: u64 },
}

impl TransferError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        TransferError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn reject(step: &'static str) -> impl FnOnce(RejectResponse) -> Self {
        move |reject| TransferError::Reject { step, reject }
    }
}

/// Knobs for a transfer.
#[derive(Debug, Clone, Default)]
pub struct TransferOptions {
    /// Stop (as if interrupted) once this many bytes have been transferred; for testing
    /// resumption.
    pub stop_after_bytes: Option<u64>,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub snapshot_id: Vec<u8>,
    /// Bytes of data sent in `upload_canister_snapshot_data` messages.
    pub bytes_sent: u64,
    pub messages: u64,
    pub checksum: Hash,
}

/// The snapshot an incremental upload starts from: on the replica, and its download on disk.
#[derive(Debug, Clone)]
pub struct UploadBase<'a> {
    pub snapshot_id: Vec<u8>,
    pub dir: &'a Path,
}

/// `read_canister_snapshot_metadata`, with this project's extension fields.
pub fn read_canister_snapshot_metadata<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
    snapshot_id: Vec<u8>,
) -> Result<SnapshotMetadata, RejectResponse> {
    let args = ReadCanisterSnapshotMetadataArgs {
        canister_id,
        snapshot_id,
    };
    client
        .management_call(sender, "read_canister_snapshot_metadata", (args,))
        .map(|(metadata,)| metadata)
}

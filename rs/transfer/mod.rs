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

#![forbid(unsafe_code)]

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

pub use dir::{
    ChecksumRecord, DirectoryDigest, EXACT_FLOAT_GLOBALS, Edits, FileHashes, KnownRoots,
    MAX_CHECKSUM_JSON_BYTES, MAX_CHUNK_FILE_BYTES, MAX_METADATA_JSON_BYTES,
    MAX_PROGRESS_JSON_BYTES, MAX_WASM_MODULE_FILE_BYTES, REGIONS, SnapshotDir, changed_page_runs,
    check_declared_sizes, chunk_hashes, for_each_block, lock_directory,
};
pub use download::{DOWNLOAD_PROGRESS, TRANSFER_LOCK, download_canister_snapshot};
pub use progress::SYNC_EVERY_SLICES;
pub use tools::{DiffReport, PageRanges, RegionDiff, diff, inspect, nonzero_page_ranges, unhex};
pub use upload::{UPLOAD_PROGRESS, upload_canister_snapshot};

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
    #[error(
        "{path} already holds a complete snapshot: download into a new or empty directory, or \
         pass force (`--force`) to overwrite it"
    )]
    DirectoryNotEmpty { path: PathBuf },
    #[error(
        "{path} is not empty ({entry} is there) and is not a snapshot download of this tool: \
         download into a new or empty directory; this tool never deletes what it did not write"
    )]
    ForeignDirectory { path: PathBuf, entry: String },
    #[error(
        "{path} is a symbolic link: a snapshot directory holds plain files and directories only \
         (nothing is followed out of it); replace the link by the file itself"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path} has {size} bytes, more than the {limit} a {what} may have: it is not a file of \
         a snapshot directory"
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error(
        "the snapshot quota of canister {canister_id} is full (it holds {existing}): uploading \
         must replace one of them, which destroys it when the upload starts, before the upload \
         is verified. Pass the snapshot it supersedes explicitly (`replace_snapshot`, \
         `--replace ID`), delete a snapshot, or raise the quota"
    )]
    QuotaForcesReplace {
        canister_id: Principal,
        /// Hex ids of the canister's snapshots.
        existing: String,
    },
    #[error(
        "snapshot {uploaded} was uploaded and verified, but deleting snapshot {replaced}, which \
         it supersedes, failed: {reject}; delete it yourself"
    )]
    SupersededNotDeleted {
        uploaded: String,
        replaced: String,
        reject: RejectResponse,
    },
    #[error(
        "{path} changed since its download ({files}) and the upload is strict: upload without \
         strict (`--strict`) to send the edits, or restore the files"
    )]
    EditedSinceDownload { path: PathBuf, files: String },
    #[error("cannot resume from {path}: {reason}; delete it to start over")]
    Resume { path: PathBuf, reason: String },
    #[error("the transfer stopped after {bytes} bytes as asked; run it again to resume")]
    Interrupted { bytes: u64 },
    #[error(
        "the replica could not make what was uploaded durable: {source}; the progress file \
         claims only what was durable before, run the upload again to resume"
    )]
    NotDurable {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

/// Slices a transfer keeps in flight at once by default, as dfx and icp-cli do.
pub const PARALLEL_SLICES: usize = 3;

/// The most slices a transfer keeps in flight (about 2 MB of buffers each).
pub const MAX_PARALLEL_SLICES: usize = 16;

/// Knobs for a transfer.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Slices sent together ([`ManagementClient::update_calls`]: one round on the harness),
    /// from 1 to [`MAX_PARALLEL_SLICES`] (a value outside counts as the nearest bound). Default
    /// [`PARALLEL_SLICES`].
    pub parallel_slices: usize,
    /// Stop (as if interrupted) once this many bytes have been transferred; for testing
    /// resumption.
    pub stop_after_bytes: Option<u64>,
    /// Let a download overwrite a directory that holds a complete snapshot (its
    /// `metadata.json`, `checksum.json` and region files). Never lets it write into a directory
    /// holding anything else.
    pub force: bool,
    /// Refuse to upload a directory whose files changed since its download (by its
    /// `checksum.json`) instead of uploading the edits and reporting them (`--strict`).
    pub strict: bool,
    /// Every this many slices (and at the end of each region) the transfer makes what it moved
    /// durable (a download syncs its file, an upload asks the replica,
    /// [`ManagementClient::make_durable`]) and records it in its progress file: what a killed
    /// transfer resends at most. Default [`SYNC_EVERY_SLICES`]; 0 counts as 1.
    pub sync_every_slices: u64,
    /// Test hook: the process aborts, as if killed (`kill -9`: no destructor, no checkpoint),
    /// once this many slices have been moved, after the slice's calls and before the progress
    /// file can record it. For the tests that kill a transfer between slices.
    #[doc(hidden)]
    pub abort_after_slices: Option<u64>,
}

impl TransferOptions {
    /// [`Self::parallel_slices`] within its bounds: each slice in flight holds a buffer.
    pub fn slices_in_flight(&self) -> usize {
        self.parallel_slices.clamp(1, MAX_PARALLEL_SLICES)
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            parallel_slices: PARALLEL_SLICES,
            stop_after_bytes: None,
            force: false,
            strict: false,
            sync_every_slices: SYNC_EVERY_SLICES,
            abort_after_slices: None,
        }
    }
}

/// What an upload did to the snapshot it supersedes (`replace_snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// Nothing was to be replaced.
    Nothing,
    /// The upload went into a new snapshot; once its checksum was verified, the superseded one
    /// was deleted (`delete_canister_snapshot`).
    DeletedAfterVerification(Vec<u8>),
    /// The quota left no room: the upload passed `replace_snapshot`, which destroyed the
    /// superseded snapshot when the upload started, before it was verified (the caller
    /// consented by naming it).
    ReplacedAtStart(Vec<u8>),
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub snapshot_id: Vec<u8>,
    /// Bytes of data sent in `upload_canister_snapshot_data` messages.
    pub bytes_sent: u64,
    pub messages: u64,
    pub checksum: Hash,
    pub replaced: Replaced,
    /// Which files changed since the directory was downloaded (by its `checksum.json`): what
    /// this upload carried that the downloaded snapshot did not.
    pub edits: Edits,
    /// An earlier run of this upload had finished it (and was killed before it reported the
    /// id): nothing was sent, the snapshot it made is reported.
    pub already_uploaded: bool,
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

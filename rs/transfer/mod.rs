//! Snapshot transfer, client side: download a snapshot into a local directory and upload one
//! back, through the management methods in 2,000,000-byte slices, with resumption and an end-
//! to-end checksum. Semantics and formats in `spec/transfer.md`.
//!
//! The top of the stack beside the CLI: it drives a [`StateMachine`] as a client would (every
//! byte crosses the Candid message path) and adds `download_canister_snapshot`,
//! `upload_canister_snapshot` and `upload_canister_snapshot_incremental` to it. It reads and
//! writes files only under the directory it is given; every file it reads is untrusted.

mod dir;
mod tools;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candid::Principal;
use ic_management_canister_types::{
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult, ReadCanisterSnapshotMetadataArgs,
    ReadCanisterSnapshotMetadataResult, SnapshotDataKind, SnapshotDataOffset,
    UploadCanisterSnapshotMetadataResult,
};
use serde::{Deserialize, Serialize};

use crate::harness::{RejectResponse, StateMachine};
use crate::management::types::{
    MAX_SLICE_BYTES, SnapshotMetadata, UploadCanisterSnapshotDataArgs,
    UploadCanisterSnapshotMetadataArgs,
};
use crate::memory::PAGE_SIZE;
use crate::memory::checksum::{Hash, hex};
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;

pub use dir::{ChecksumRecord, REGIONS, SnapshotDir, changed_page_runs, for_each_block};
pub use tools::{DiffReport, PageRanges, RegionDiff, diff, inspect, nonzero_page_ranges};

/// Slices are whole pages: 488 pages = 1,998,848 bytes, the most that fits in
/// [`MAX_SLICE_BYTES`]. Page-aligned slices let an upload skip unchanged pages exactly.
pub const SLICE_BYTES: u64 = (MAX_SLICE_BYTES / PAGE_SIZE as u64) * PAGE_SIZE as u64;

/// Progress is made durable (file synced, progress file rewritten) every this many slices.
const SYNC_EVERY_SLICES: u64 = 32;

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

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    /// Hex of the snapshot id being transferred.
    snapshot_id: String,
    wasm_module: u64,
    wasm_memory: u64,
    stable_memory: u64,
    /// Hex hashes of the chunks already transferred.
    chunks: Vec<String>,
}

impl Progress {
    fn offset(&mut self, region: SnapshotRegion) -> &mut u64 {
        match region {
            SnapshotRegion::WasmModule => &mut self.wasm_module,
            SnapshotRegion::WasmMemory => &mut self.wasm_memory,
            SnapshotRegion::StableMemory => &mut self.stable_memory,
        }
    }

    fn load(path: &Path) -> Result<Option<Progress>, TransferError> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| TransferError::Resume {
                        path: path.to_path_buf(),
                        reason: format!("the progress file does not parse: {e}"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TransferError::io(path, e)),
        }
    }

    fn save(&self, path: &Path) -> Result<(), TransferError> {
        dir::write_atomically(
            path,
            &serde_json::to_vec(self).expect("progress serialises"),
        )
    }
}

/// Counts bytes against `stop_after_bytes`.
struct Budget {
    moved: u64,
    limit: Option<u64>,
}

impl Budget {
    fn new(options: &TransferOptions) -> Self {
        Budget {
            moved: 0,
            limit: options.stop_after_bytes,
        }
    }

    fn spend(&mut self, bytes: u64) {
        self.moved += bytes;
    }

    fn exhausted(&self) -> bool {
        self.limit.is_some_and(|limit| self.moved >= limit)
    }
}

/// Where a transfer is within a region, after a slice.
struct Step {
    region: SnapshotRegion,
    offset: u64,
    size: u64,
    slices: u64,
}

/// Every [`SYNC_EVERY_SLICES`] slices, at the end of a region, and when the budget is spent:
/// makes the data durable (`sync`) and then records the offset, so the progress file never
/// claims bytes that could still be lost. Then stops the transfer if the budget is spent.
fn checkpoint(
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

fn read_kind(region: SnapshotRegion, offset: u64, size: u64) -> SnapshotDataKind {
    match region {
        SnapshotRegion::WasmModule => SnapshotDataKind::WasmModule { offset, size },
        SnapshotRegion::WasmMemory => SnapshotDataKind::WasmMemory { offset, size },
        SnapshotRegion::StableMemory => SnapshotDataKind::StableMemory { offset, size },
    }
}

fn upload_kind(region: SnapshotRegion, offset: u64) -> SnapshotDataOffset {
    match region {
        SnapshotRegion::WasmModule => SnapshotDataOffset::WasmModule { offset },
        SnapshotRegion::WasmMemory => SnapshotDataOffset::WasmMemory { offset },
        SnapshotRegion::StableMemory => SnapshotDataOffset::StableMemory { offset },
    }
}

impl StateMachine {
    /// `read_canister_snapshot_metadata`, with this project's extension fields.
    pub fn read_canister_snapshot_metadata(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
    ) -> Result<SnapshotMetadata, RejectResponse> {
        let args = ReadCanisterSnapshotMetadataArgs {
            canister_id,
            snapshot_id,
        };
        self.management(sender, "read_canister_snapshot_metadata", (args,))
            .map(|(metadata,)| metadata)
    }

    /// Downloads a snapshot into `dir` (created if needed) in 2 MB slices, resuming an
    /// interrupted download of the same snapshot, and verifies the files against the
    /// snapshot's checksum. `dir` then has the dfx layout (`spec/transfer.md`).
    pub fn download_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
        dir: &Path,
    ) -> Result<(), TransferError> {
        self.download_canister_snapshot_with(
            canister_id,
            sender,
            snapshot_id,
            dir,
            &TransferOptions::default(),
        )
    }

    /// [`Self::download_canister_snapshot`] with options.
    pub fn download_canister_snapshot_with(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
        dir: &Path,
        options: &TransferOptions,
    ) -> Result<(), TransferError> {
        let metadata_bytes = {
            let args = ReadCanisterSnapshotMetadataArgs {
                canister_id,
                snapshot_id: snapshot_id.clone(),
            };
            let payload = candid::encode_one(args).expect("encodes");
            self.update_call(
                Principal::management_canister(),
                sender.unwrap_or_else(Principal::anonymous),
                "read_canister_snapshot_metadata",
                payload,
            )
            .map_err(TransferError::reject("read_canister_snapshot_metadata"))?
        };
        // One reply, two views: the crate type for metadata.json, ours for the checksum.
        let decode_error = |e: candid::Error| TransferError::Metadata {
            path: PathBuf::from("read_canister_snapshot_metadata reply"),
            reason: e.to_string(),
        };
        let metadata: ReadCanisterSnapshotMetadataResult =
            candid::decode_one(&metadata_bytes).map_err(decode_error)?;
        let extended: SnapshotMetadata =
            candid::decode_one(&metadata_bytes).map_err(decode_error)?;

        let snapshot_dir = SnapshotDir::new(dir);
        fs::create_dir_all(snapshot_dir.chunk_store_dir())
            .map_err(|e| TransferError::io(&snapshot_dir.chunk_store_dir(), e))?;
        let progress_path = dir.join(".download_progress.json");
        let id_hex = hex(&snapshot_id);
        let mut progress = match Progress::load(&progress_path)? {
            Some(p) if p.snapshot_id != id_hex => {
                return Err(TransferError::Resume {
                    path: progress_path,
                    reason: format!(
                        "it is a download of snapshot {}, not {id_hex}",
                        p.snapshot_id
                    ),
                });
            }
            Some(p) => p,
            None if snapshot_dir.metadata_path().exists() => {
                return Err(TransferError::DirectoryNotEmpty {
                    path: dir.to_path_buf(),
                });
            }
            None => Progress {
                snapshot_id: id_hex,
                ..Progress::default()
            },
        };
        progress.save(&progress_path)?;

        let mut budget = Budget::new(options);
        for region in REGIONS {
            let size = SnapshotDir::region_size(&metadata, region);
            let final_path = snapshot_dir.region_path(region);
            if *progress.offset(region) >= size && final_path.exists() {
                continue;
            }
            let part = dir::part_path(&final_path);
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&part)
                .map_err(|e| TransferError::io(&part, e))?;
            // Whatever lies past the last durable offset may be torn: drop it.
            let mut offset = (*progress.offset(region)).min(size);
            file.set_len(offset)
                .and_then(|()| file.seek(SeekFrom::Start(offset)).map(|_| ()))
                .map_err(|e| TransferError::io(&part, e))?;
            let bar = progress_bar(size, region.name());
            bar.set_position(offset);
            let mut slices = 0u64;
            while offset < size {
                let len = SLICE_BYTES.min(size - offset);
                let args = ReadCanisterSnapshotDataArgs {
                    canister_id,
                    snapshot_id: snapshot_id.clone(),
                    kind: read_kind(region, offset, len),
                };
                let (data,): (ReadCanisterSnapshotDataResult,) = self
                    .management(sender, "read_canister_snapshot_data", (args,))
                    .map_err(TransferError::reject("read_canister_snapshot_data"))?;
                if data.chunk.len() as u64 != len {
                    return Err(TransferError::Metadata {
                        path: part.clone(),
                        reason: format!(
                            "the replica returned {} bytes for a slice of {len}",
                            data.chunk.len()
                        ),
                    });
                }
                file.write_all(&data.chunk)
                    .map_err(|e| TransferError::io(&part, e))?;
                offset += len;
                slices += 1;
                budget.spend(len);
                bar.set_position(offset);
                let step = Step {
                    region,
                    offset,
                    size,
                    slices,
                };
                checkpoint(&mut progress, &progress_path, &step, &budget, &bar, || {
                    file.sync_data().map_err(|e| TransferError::io(&part, e))
                })?;
            }
            bar.finish_and_clear();
            drop(file);
            fs::rename(&part, &final_path).map_err(|e| TransferError::io(&final_path, e))?;
        }

        for chunk in &metadata.wasm_chunk_store {
            let hash_hex = hex(&chunk.hash);
            if progress.chunks.contains(&hash_hex) {
                continue;
            }
            let args = ReadCanisterSnapshotDataArgs {
                canister_id,
                snapshot_id: snapshot_id.clone(),
                kind: SnapshotDataKind::WasmChunk {
                    hash: chunk.hash.clone(),
                },
            };
            let (data,): (ReadCanisterSnapshotDataResult,) = self
                .management(sender, "read_canister_snapshot_data", (args,))
                .map_err(TransferError::reject("read_canister_snapshot_data (chunk)"))?;
            dir::write_atomically(&snapshot_dir.chunk_path(&chunk.hash), &data.chunk)?;
            progress.chunks.push(hash_hex);
            progress.save(&progress_path)?;
        }

        snapshot_dir.write_metadata(&metadata)?;
        let record = ChecksumRecord {
            checksum: hex(&extended.checksum),
            canister_id: canister_id.to_text(),
            snapshot_id: hex(&snapshot_id),
            label: extended.label.clone(),
        };
        snapshot_dir.write_checksum_record(&record)?;
        fs::remove_file(&progress_path).map_err(|e| TransferError::io(&progress_path, e))?;
        let computed = snapshot_dir.compute_checksum()?;
        if computed.as_slice() != extended.checksum.as_slice() {
            return Err(TransferError::ChecksumMismatch {
                what: format!("the download in {}", dir.display()),
                expected: record.checksum,
                actual: hex(&computed),
            });
        }
        Ok(())
    }

    /// Uploads the snapshot in `dir` as a new snapshot of `canister_id` (replacing
    /// `replace_snapshot` if given), resuming an interrupted upload of the same directory, and
    /// checks that the replica's checksum of the result equals the directory's. Returns the new
    /// snapshot id.
    pub fn upload_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &Path,
        replace_snapshot: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, TransferError> {
        self.upload_canister_snapshot_with(
            canister_id,
            sender,
            dir,
            replace_snapshot,
            None,
            &TransferOptions::default(),
        )
        .map(|report| report.snapshot_id)
    }

    /// Uploads `dir` sending only the pages that differ from `base` (a snapshot of the same
    /// canister and its download): the new snapshot starts as a copy-on-write copy of the base.
    pub fn upload_canister_snapshot_incremental(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &Path,
        base: UploadBase<'_>,
        replace_snapshot: Option<Vec<u8>>,
    ) -> Result<UploadReport, TransferError> {
        self.upload_canister_snapshot_with(
            canister_id,
            sender,
            dir,
            replace_snapshot,
            Some(base),
            &TransferOptions::default(),
        )
    }

    /// The upload behind [`Self::upload_canister_snapshot`] and
    /// [`Self::upload_canister_snapshot_incremental`].
    pub fn upload_canister_snapshot_with(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &Path,
        replace_snapshot: Option<Vec<u8>>,
        base: Option<UploadBase<'_>>,
        options: &TransferOptions,
    ) -> Result<UploadReport, TransferError> {
        let snapshot_dir = SnapshotDir::new(dir);
        let (metadata, local_checksum) = snapshot_dir.validate_and_checksum()?;
        if let Some(record) = snapshot_dir.read_checksum_record()?
            && record.checksum != hex(&local_checksum)
        {
            return Err(TransferError::ChecksumMismatch {
                what: format!(
                    "{} against its checksum.json (edited files? delete checksum.json to \
                         upload them anyway)",
                    dir.display()
                ),
                expected: record.checksum,
                actual: hex(&local_checksum),
            });
        }
        let base_dir = match &base {
            Some(base) => {
                let base_dir = SnapshotDir::new(base.dir);
                let on_chain = self
                    .read_canister_snapshot_metadata(canister_id, sender, base.snapshot_id.clone())
                    .map_err(TransferError::reject(
                        "read_canister_snapshot_metadata (base)",
                    ))?;
                let (base_metadata, local) = base_dir.validate_and_checksum()?;
                if on_chain.checksum.as_slice() != local.as_slice() {
                    return Err(TransferError::ChecksumMismatch {
                        what: format!(
                            "the base directory {} against snapshot {}",
                            base.dir.display(),
                            hex(&base.snapshot_id)
                        ),
                        expected: hex(&on_chain.checksum),
                        actual: hex(&local),
                    });
                }
                Some((base_dir, base_metadata))
            }
            None => None,
        };

        let progress_path = dir.join(".upload_progress.json");
        let mut progress = match Progress::load(&progress_path)? {
            Some(p) => {
                let id = crate::transfer::tools::unhex(&p.snapshot_id).ok_or_else(|| {
                    TransferError::Resume {
                        path: progress_path.clone(),
                        reason: "its snapshot id is not hex".into(),
                    }
                })?;
                self.read_canister_snapshot_metadata(canister_id, sender, id)
                    .map_err(|reject| TransferError::Resume {
                        path: progress_path.clone(),
                        reason: format!("the snapshot it was uploading is gone ({reject})"),
                    })?;
                p
            }
            None => {
                let globals = metadata.globals.iter().flatten().cloned().collect();
                let args = UploadCanisterSnapshotMetadataArgs {
                    canister_id,
                    replace_snapshot: replace_snapshot.map(serde_bytes::ByteBuf::from),
                    wasm_module_size: metadata.wasm_module_size,
                    globals,
                    wasm_memory_size: metadata.wasm_memory_size,
                    stable_memory_size: metadata.stable_memory_size,
                    certified_data: metadata.certified_data.clone(),
                    global_timer: metadata.global_timer.clone(),
                    on_low_wasm_memory_hook_status: metadata.on_low_wasm_memory_hook_status.clone(),
                    base_snapshot: base
                        .as_ref()
                        .map(|b| serde_bytes::ByteBuf::from(b.snapshot_id.clone())),
                };
                let (result,): (UploadCanisterSnapshotMetadataResult,) = self
                    .management(sender, "upload_canister_snapshot_metadata", (args,))
                    .map_err(TransferError::reject("upload_canister_snapshot_metadata"))?;
                let progress = Progress {
                    snapshot_id: hex(&result.snapshot_id),
                    ..Progress::default()
                };
                progress.save(&progress_path)?;
                progress
            }
        };
        let snapshot_id = crate::transfer::tools::unhex(&progress.snapshot_id)
            .expect("written as hex above or checked on resume");

        let mut report = UploadReport {
            snapshot_id: snapshot_id.clone(),
            bytes_sent: 0,
            messages: 0,
            checksum: local_checksum,
        };
        let mut budget = Budget::new(options);
        for region in REGIONS {
            let size = SnapshotDir::region_size(&metadata, region);
            // What the new snapshot already holds where nothing is sent: the base's bytes
            // (if the base module has the same size), else zeros for memories. A fresh module
            // has no reference: every byte must be sent.
            let reference: Option<Option<PathBuf>> = match (&base_dir, region) {
                (Some((base_dir, base_meta)), SnapshotRegion::WasmModule) => {
                    (base_meta.wasm_module_size == size).then(|| Some(base_dir.region_path(region)))
                }
                (Some((base_dir, _)), _) => Some(Some(base_dir.region_path(region))),
                (None, SnapshotRegion::WasmModule) => None,
                (None, _) => Some(None),
            };
            let path = snapshot_dir.region_path(region);
            let mut file =
                BufReader::new(File::open(&path).map_err(|e| TransferError::io(&path, e))?);
            let mut reference_file = match &reference {
                Some(Some(p)) => Some(BufReader::new(
                    File::open(p).map_err(|e| TransferError::io(p, e))?,
                )),
                _ => None,
            };
            let mut offset = *progress.offset(region);
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| TransferError::io(&path, e))?;
            if let Some(r) = &mut reference_file {
                r.seek(SeekFrom::Start(offset))
                    .map_err(|e| TransferError::io(&path, e))?;
            }
            let bar = progress_bar(size, region.name());
            bar.set_position(offset);
            let mut slices = 0u64;
            let mut block = vec![0u8; SLICE_BYTES as usize];
            let mut reference_block = vec![0u8; SLICE_BYTES as usize];
            while offset < size {
                let len = SLICE_BYTES.min(size - offset) as usize;
                let n = dir::read_full(&mut file, &mut block[..len])
                    .map_err(|e| TransferError::io(&path, e))?;
                if n != len {
                    return Err(TransferError::FileSize {
                        path: path.clone(),
                        expected: size,
                        actual: offset + n as u64,
                    });
                }
                let runs = match &reference {
                    None => vec![(0, (len as u64).div_ceil(PAGE_SIZE as u64))],
                    Some(_) => {
                        reference_block[..len].fill(0);
                        if let Some(r) = &mut reference_file {
                            // A shorter base reads as zeros past its end.
                            dir::read_full(r, &mut reference_block[..len])
                                .map_err(|e| TransferError::io(&path, e))?;
                        }
                        changed_page_runs(&reference_block[..len], &block[..len])
                    }
                };
                for (first_page, pages) in runs {
                    let start = first_page as usize * PAGE_SIZE;
                    let end = (start + pages as usize * PAGE_SIZE).min(len);
                    let args = UploadCanisterSnapshotDataArgs {
                        canister_id,
                        snapshot_id: snapshot_id.clone(),
                        kind: upload_kind(region, offset + start as u64),
                        chunk: block[start..end].to_vec(),
                    };
                    self.management::<()>(sender, "upload_canister_snapshot_data", (args,))
                        .map_err(TransferError::reject("upload_canister_snapshot_data"))?;
                    report.bytes_sent += (end - start) as u64;
                    report.messages += 1;
                    budget.spend((end - start) as u64);
                }
                offset += len as u64;
                slices += 1;
                bar.set_position(offset);
                let step = Step {
                    region,
                    offset,
                    size,
                    slices,
                };
                checkpoint(&mut progress, &progress_path, &step, &budget, &bar, || {
                    Ok(())
                })?;
            }
            bar.finish_and_clear();
        }
        for chunk in &metadata.wasm_chunk_store {
            let hash_hex = hex(&chunk.hash);
            if progress.chunks.contains(&hash_hex) {
                continue;
            }
            let path = snapshot_dir.chunk_path(&chunk.hash);
            let bytes = fs::read(&path).map_err(|e| TransferError::io(&path, e))?;
            let args = UploadCanisterSnapshotDataArgs {
                canister_id,
                snapshot_id: snapshot_id.clone(),
                kind: SnapshotDataOffset::WasmChunk,
                chunk: bytes,
            };
            self.management::<()>(sender, "upload_canister_snapshot_data", (args,))
                .map_err(TransferError::reject(
                    "upload_canister_snapshot_data (chunk)",
                ))?;
            report.messages += 1;
            progress.chunks.push(hash_hex);
            progress.save(&progress_path)?;
        }

        let uploaded = self
            .read_canister_snapshot_metadata(canister_id, sender, snapshot_id.clone())
            .map_err(TransferError::reject(
                "read_canister_snapshot_metadata (check)",
            ))?;
        if uploaded.checksum.as_slice() != local_checksum.as_slice() {
            return Err(TransferError::ChecksumMismatch {
                what: format!("the uploaded snapshot {}", hex(&snapshot_id)),
                expected: hex(&local_checksum),
                actual: hex(&uploaded.checksum),
            });
        }
        fs::remove_file(&progress_path).map_err(|e| TransferError::io(&progress_path, e))?;
        Ok(report)
    }
}

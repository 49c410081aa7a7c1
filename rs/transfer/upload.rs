//! Upload: a local directory into a new snapshot on the replica, in page-aligned slices (only
//! the pages that differ from a base, for an incremental upload), with a progress file for
//! resumption and the replica's checksum compared with the directory's at the end
//! (`spec/transfer.md`).

use std::fs::{self, File};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candid::Principal;
use ic_management_canister_types::{SnapshotDataOffset, UploadCanisterSnapshotMetadataResult};

use super::progress::{Budget, Progress, Step, checkpoint};
use super::{
    REGIONS, SLICE_BYTES, SnapshotDir, TransferError, TransferOptions, UploadBase, UploadReport,
    changed_page_runs, dir, read_canister_snapshot_metadata,
};
use crate::client::ManagementClient;
use crate::management::types::{
    UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
};
use crate::memory::PAGE_SIZE;
use crate::memory::checksum::hex;
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;

fn upload_kind(region: SnapshotRegion, offset: u64) -> SnapshotDataOffset {
    match region {
        SnapshotRegion::WasmModule => SnapshotDataOffset::WasmModule { offset },
        SnapshotRegion::WasmMemory => SnapshotDataOffset::WasmMemory { offset },
        SnapshotRegion::StableMemory => SnapshotDataOffset::StableMemory { offset },
    }
}

/// Uploads the snapshot in `dir` as a new snapshot of `canister_id` (replacing
/// `replace_snapshot` if given), sending only the pages that differ from `base` if given,
/// resuming an interrupted upload of the same directory, and checks that the replica's checksum
/// of the result equals the directory's.
pub fn upload_canister_snapshot<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
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
            let on_chain = read_canister_snapshot_metadata(
                client,
                canister_id,
                sender,
                base.snapshot_id.clone(),
            )
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
            read_canister_snapshot_metadata(client, canister_id, sender, id).map_err(|reject| {
                TransferError::Resume {
                    path: progress_path.clone(),
                    reason: format!("the snapshot it was uploading is gone ({reject})"),
                }
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
            let (result,): (UploadCanisterSnapshotMetadataResult,) = client
                .management_call(sender, "upload_canister_snapshot_metadata", (args,))
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
        let mut file = BufReader::new(File::open(&path).map_err(|e| TransferError::io(&path, e))?);
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
                client
                    .management_call::<()>(sender, "upload_canister_snapshot_data", (args,))
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
        client
            .management_call::<()>(sender, "upload_canister_snapshot_data", (args,))
            .map_err(TransferError::reject(
                "upload_canister_snapshot_data (chunk)",
            ))?;
        report.messages += 1;
        progress.chunks.push(hash_hex);
        progress.save(&progress_path)?;
    }

    let uploaded =
        read_canister_snapshot_metadata(client, canister_id, sender, snapshot_id.clone()).map_err(
            TransferError::reject("read_canister_snapshot_metadata (check)"),
        )?;
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

//! Upload: a local directory into a new snapshot on the replica, in page-aligned slices (only
//! the pages that differ from a base, for an incremental upload), with a progress file for
//! resumption and the replica's checksum compared with the directory's at the end
//! (`spec/transfer.md`).
//!
//! Each byte is hashed once per side. The client hashes the directory once, before sending
//! (`SnapshotDir::digest`: read ahead, on every core); the slices it then reads and sends are
//! not hashed again. The replica hashes the pages it received once, when the final metadata read
//! asks for the checksum: `PageMap`'s cached Merkle hash, on every core for a large upload,
//! memoised in the snapshot and in the page maps' nodes, so a later list, load or state hash
//! does not hash them again. (A resumed upload's first metadata read hashes what was sent so
//! far; the final one rehashes only the paths of the pages written since.)

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

use std::fs;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candid::Principal;
use ic_error_types::ErrorCode;
use ic_management_canister_types::{
    CanisterIdRecord, DeleteCanisterSnapshotArgs, Snapshot, SnapshotDataOffset, SnapshotSource,
    UploadCanisterSnapshotMetadataResult,
};

use super::progress::{Budget, Progress, Step, checkpoint, next_batch};
use super::{
    DirectoryDigest, Edits, REGIONS, Replaced, SLICE_BYTES, SnapshotDir, TransferError,
    TransferOptions, UploadBase, UploadReport, changed_page_runs, chunk_hashes, dir,
    read_canister_snapshot_metadata,
};
use crate::client::{ManagementClient, RejectResponse};
use crate::management::types::{
    UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotDataArgsRef,
    UploadCanisterSnapshotMetadataArgs,
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

/// Where an upload records how far it got (`spec/transfer.md`).
pub const UPLOAD_PROGRESS: &str = ".upload_progress.json";

/// Uploads the snapshot in `dir` as a new snapshot of `canister_id`, sending only the pages that
/// differ from `base` if given, resuming an interrupted upload of the same directory, and checks
/// that the replica's checksum of the result equals the directory's.
///
/// `replace_snapshot: Some(id)` means "this upload supersedes `id`": `id` is deleted once the
/// new snapshot is verified, or, only if the quota leaves no room for a new one, replaced when
/// the upload starts. Without it, a full quota is an error (`QuotaForcesReplace`), never a
/// silent replacement (`spec/transfer.md`, "Replacing a snapshot").
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
    let digest = snapshot_dir.digest()?;
    let local_checksum = digest.checksum;
    // What is on disk is what is uploaded; the edits since the download are reported, or,
    // strictly, refused.
    let edits = digest.edits_since(snapshot_dir.read_checksum_record()?.as_ref());
    if options.strict && edits.is_edited() {
        return Err(TransferError::EditedSinceDownload {
            path: dir.to_path_buf(),
            files: match &edits {
                Edits::Files(files) => files.join(", "),
                _ => "which files is unknown: its checksum.json predates per-file hashes".into(),
            },
        });
    }
    let metadata = &digest.metadata;
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

    let progress_path = dir.join(UPLOAD_PROGRESS);
    let base_hex = base.as_ref().map(|b| hex(&b.snapshot_id));
    let mut progress = match Progress::load(&progress_path)? {
        Some(p) => {
            check_resume(
                &p,
                &progress_path,
                canister_id,
                &replace_snapshot,
                &base_hex,
                &digest,
            )?;
            let id =
                crate::transfer::unhex(&p.snapshot_id).ok_or_else(|| TransferError::Resume {
                    path: progress_path.clone(),
                    reason: "its snapshot id is not hex".into(),
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
            // A run killed after its upload was durable but before it reported the id left
            // the finished snapshot (and no progress file: it goes once the checksum is
            // verified). Report it rather than upload a copy, or fail for the quota it holds.
            let inputs = [
                replace_snapshot.as_ref(),
                base.as_ref().map(|b| &b.snapshot_id),
            ];
            if let Some(finished) = finished_upload(client, canister_id, sender, &digest, &inputs) {
                return report_finished(
                    client,
                    canister_id,
                    sender,
                    finished,
                    replace_snapshot,
                    digest.checksum,
                    edits,
                );
            }
            let globals: Vec<_> = metadata.globals.iter().flatten().cloned().collect();
            let args = |replace: Option<&Vec<u8>>| UploadCanisterSnapshotMetadataArgs {
                canister_id,
                replace_snapshot: replace.cloned().map(serde_bytes::ByteBuf::from),
                wasm_module_size: metadata.wasm_module_size,
                globals: globals.clone(),
                wasm_memory_size: metadata.wasm_memory_size,
                stable_memory_size: metadata.stable_memory_size,
                certified_data: metadata.certified_data.clone(),
                global_timer: metadata.global_timer.clone(),
                on_low_wasm_memory_hook_status: metadata.on_low_wasm_memory_hook_status.clone(),
                base_snapshot: base
                    .as_ref()
                    .map(|b| serde_bytes::ByteBuf::from(b.snapshot_id.clone())),
            };
            if let Some(old) = &replace_snapshot {
                // Before anything is created: the snapshot to supersede must exist.
                read_canister_snapshot_metadata(client, canister_id, sender, old.clone()).map_err(
                    TransferError::reject(
                        "read_canister_snapshot_metadata (the snapshot to replace)",
                    ),
                )?;
            }
            // What the progress file records of where the upload belongs, checked on resume.
            let started = Progress {
                canister_id: Some(canister_id.to_text()),
                base_snapshot: base_hex.clone(),
                directory_checksum: Some(hex(&local_checksum)),
                directory_files: Some(digest.files.clone()),
                ..Progress::default()
            };
            // Verify before destroy: into a new snapshot while the quota has room; the one it
            // supersedes is deleted only once the new one's checksum is verified.
            let metadata_step = "upload_canister_snapshot_metadata";
            let progress = match client.management_call::<(UploadCanisterSnapshotMetadataResult,)>(
                sender,
                metadata_step,
                (args(None),),
            ) {
                Ok((result,)) => Progress {
                    snapshot_id: hex(&result.snapshot_id),
                    supersedes: replace_snapshot.as_deref().map(hex),
                    ..started.clone()
                },
                Err(reject) if is_quota_reached(&reject) => match &replace_snapshot {
                    // Named by the caller: consent to lose it before verification.
                    Some(old) => {
                        let (result,): (UploadCanisterSnapshotMetadataResult,) = client
                            .management_call(sender, metadata_step, (args(Some(old)),))
                            .map_err(TransferError::reject(metadata_step))?;
                        Progress {
                            snapshot_id: hex(&result.snapshot_id),
                            replaced_at_start: Some(hex(old)),
                            ..started.clone()
                        }
                    }
                    None => {
                        return Err(TransferError::QuotaForcesReplace {
                            canister_id,
                            existing: existing_snapshots(client, canister_id, sender),
                        });
                    }
                },
                Err(reject) => return Err(TransferError::reject(metadata_step)(reject)),
            };
            // The new snapshot is durable on the replica before the progress file names it:
            // a resume after `kill -9` finds it there.
            make_durable(client)?;
            progress.save(&progress_path)?;
            progress
        }
    };
    let snapshot_id = crate::transfer::unhex(&progress.snapshot_id)
        .expect("written as hex above or checked on resume");

    let mut report = UploadReport {
        snapshot_id: snapshot_id.clone(),
        bytes_sent: 0,
        messages: 0,
        checksum: local_checksum,
        edits,
        already_uploaded: false,
        replaced: match &progress.replaced_at_start {
            Some(old) => Replaced::ReplacedAtStart(unhex_recorded(old, &progress_path)?),
            None => Replaced::Nothing,
        },
    };
    let mut budget = Budget::new(options);
    for region in REGIONS {
        let size = SnapshotDir::region_size(metadata, region);
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
        let mut file = BufReader::new(dir::open_plain_file(&path)?);
        let mut reference_file = match &reference {
            Some(Some(p)) => Some(BufReader::new(dir::open_plain_file(p)?)),
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
        let parallel = options.slices_in_flight();
        let mut blocks = vec![vec![0u8; SLICE_BYTES as usize]; parallel];
        let mut reference_block = vec![0u8; SLICE_BYTES as usize];
        while offset < size {
            // Read the next slices and find what each must send, then send the messages of all
            // of them together (one round on the harness), then account for them slice by
            // slice, in order.
            let batch = next_batch(offset, size, SLICE_BYTES, parallel, &budget);
            let mut sends: Vec<(usize, usize, usize)> = Vec::new(); // (slice, start, end)
            for (i, &(at, len)) in batch.iter().enumerate() {
                let len = len as usize;
                let block = &mut blocks[i];
                let n = dir::read_full(&mut file, &mut block[..len])
                    .map_err(|e| TransferError::io(&path, e))?;
                if n != len {
                    return Err(TransferError::FileSize {
                        path: path.clone(),
                        expected: size,
                        actual: at + n as u64,
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
                sends.extend(runs.into_iter().map(|(first_page, pages)| {
                    let start = first_page as usize * PAGE_SIZE;
                    (i, start, (start + pages as usize * PAGE_SIZE).min(len))
                }));
            }
            let mut results = Vec::with_capacity(sends.len());
            for group in sends.chunks(parallel) {
                let calls = group
                    .iter()
                    .map(|&(i, start, end)| {
                        // Encoded from the block itself: one copy, into the payload.
                        let args = UploadCanisterSnapshotDataArgsRef {
                            canister_id,
                            snapshot_id: serde_bytes::Bytes::new(&snapshot_id),
                            kind: upload_kind(region, batch[i].0 + start as u64),
                            chunk: serde_bytes::Bytes::new(&blocks[i][start..end]),
                        };
                        let payload = candid::encode_one(args).expect("a crate type encodes");
                        ("upload_canister_snapshot_data", payload)
                    })
                    .collect();
                results.extend(client.update_calls(sender, calls));
            }
            let mut results = sends.iter().zip(results).peekable();
            for (i, &(_, len)) in batch.iter().enumerate() {
                while let Some((&(_, start, end), result)) =
                    results.next_if(|((slice, _, _), _)| *slice == i)
                {
                    result.map_err(TransferError::reject("upload_canister_snapshot_data"))?;
                    report.bytes_sent += (end - start) as u64;
                    report.messages += 1;
                    budget.spend((end - start) as u64);
                }
                offset += len;
                slices += 1;
                bar.set_position(offset);
                let step = Step {
                    region,
                    offset,
                    size,
                    slices,
                };
                // The replica holds the slices durably before the progress file says so.
                checkpoint(
                    &mut progress,
                    &progress_path,
                    &step,
                    &mut budget,
                    &bar,
                    || make_durable(client),
                )?;
            }
        }
        bar.finish_and_clear();
    }
    for hash in chunk_hashes(metadata) {
        let hash_hex = hex(&hash);
        if progress.chunks.contains(&hash_hex) {
            continue;
        }
        let path = snapshot_dir.chunk_path(&hash);
        let bytes = dir::read_small_file(&path, dir::MAX_CHUNK_FILE_BYTES, "Wasm chunk")?
            .ok_or_else(|| TransferError::MissingFile { path: path.clone() })?;
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
        make_durable(client)?;
        progress.chunks.push(hash_hex);
        progress.save(&progress_path)?;
    }

    let uploaded =
        read_canister_snapshot_metadata(client, canister_id, sender, snapshot_id.clone()).map_err(
            TransferError::reject("read_canister_snapshot_metadata (check)"),
        )?;
    if uploaded.checksum.as_slice() != local_checksum.as_slice() {
        // The new snapshot is not the directory: delete it (best effort) rather than leave a
        // wrong copy that looks like a backup. Nothing else was touched, unless the quota
        // forced `replace_snapshot` with the caller's consent.
        let deleted = delete_snapshot(client, canister_id, sender, &snapshot_id).is_ok();
        let _ = fs::remove_file(&progress_path);
        return Err(TransferError::ChecksumMismatch {
            what: format!(
                "the uploaded snapshot {} ({}; {})",
                hex(&snapshot_id),
                if deleted {
                    "deleted"
                } else {
                    "deleting it failed: delete it yourself"
                },
                match (&progress.supersedes, &progress.replaced_at_start) {
                    (Some(old), _) => format!("snapshot {old}, which it was to replace, is kept"),
                    (None, Some(old)) => format!("snapshot {old} was replaced when it started"),
                    (None, None) => "no other snapshot was touched".to_string(),
                }
            ),
            expected: hex(&local_checksum),
            actual: hex(&uploaded.checksum),
        });
    }
    fs::remove_file(&progress_path).map_err(|e| TransferError::io(&progress_path, e))?;
    if let Some(old) = &progress.supersedes {
        let old_id = unhex_recorded(old, &progress_path)?;
        delete_snapshot(client, canister_id, sender, &old_id).map_err(|reject| {
            TransferError::SupersededNotDeleted {
                uploaded: hex(&snapshot_id),
                replaced: old.clone(),
                reject,
            }
        })?;
        report.replaced = Replaced::DeletedAfterVerification(old_id);
    }
    Ok(report)
}

/// The snapshot of the canister that an earlier run of this upload finished, if any: one
/// uploaded (source `metadata_upload`) whose checksum is the directory's and whose timer and
/// hook status (which the checksum leaves out) are the directory's, and which is not one of
/// this upload's `inputs` (the snapshot it supersedes, its base): those are what the upload
/// starts from, never what it made. Costs one listing and one metadata read per snapshot of
/// the canister (at most its quota). A listing or read the replica refuses finds nothing: the
/// upload then goes ahead and meets the refusal itself.
fn finished_upload<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
    digest: &DirectoryDigest,
    inputs: &[Option<&Vec<u8>>],
) -> Option<Vec<u8>> {
    let (snapshots,): (Vec<Snapshot>,) = client
        .management_call(
            sender,
            "list_canister_snapshots",
            (CanisterIdRecord { canister_id },),
        )
        .ok()?;
    snapshots.into_iter().map(|s| s.id).find(|id| {
        !inputs.contains(&Some(id))
            && read_canister_snapshot_metadata(client, canister_id, sender, id.clone()).is_ok_and(
                |uploaded| {
                    matches!(uploaded.source, SnapshotSource::MetadataUpload(_))
                        && uploaded.checksum.as_slice() == digest.checksum.as_slice()
                        && same_on_the_wire(&uploaded.global_timer, &digest.metadata.global_timer)
                        && same_on_the_wire(
                            &uploaded.on_low_wasm_memory_hook_status,
                            &digest.metadata.on_low_wasm_memory_hook_status,
                        )
                },
            )
    })
}

/// Whether two values encode to the same Candid (the management types have no `PartialEq`).
fn same_on_the_wire<T: candid::CandidType>(a: &T, b: &T) -> bool {
    matches!((candid::encode_one(a), candid::encode_one(b)), (Ok(a), Ok(b)) if a == b)
}

/// The report of an upload an earlier run finished: its snapshot, verified by checksum when
/// it was found, and what it was to supersede deleted now if that run did not get to it.
fn report_finished<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
    snapshot_id: Vec<u8>,
    replace_snapshot: Option<Vec<u8>>,
    checksum: crate::memory::Hash,
    edits: Edits,
) -> Result<UploadReport, TransferError> {
    let replaced = match replace_snapshot {
        Some(old)
            if read_canister_snapshot_metadata(client, canister_id, sender, old.clone())
                .is_ok() =>
        {
            delete_snapshot(client, canister_id, sender, &old).map_err(|reject| {
                TransferError::SupersededNotDeleted {
                    uploaded: hex(&snapshot_id),
                    replaced: hex(&old),
                    reject,
                }
            })?;
            Replaced::DeletedAfterVerification(old)
        }
        // Gone already: the earlier run deleted it (or replaced it when it started).
        _ => Replaced::Nothing,
    };
    Ok(UploadReport {
        snapshot_id,
        bytes_sent: 0,
        messages: 0,
        checksum,
        edits,
        already_uploaded: true,
        replaced,
    })
}

/// [`ManagementClient::make_durable`], as the transfer's error.
fn make_durable<C: ManagementClient + ?Sized>(client: &mut C) -> Result<(), TransferError> {
    client
        .make_durable()
        .map_err(|source| TransferError::NotDurable { source })
}

/// Whether a refused `upload_canister_snapshot_metadata` was refused for the quota alone (the
/// replica's `CanisterRejectedMessage` and its message, `spec/transfer.md`).
fn is_quota_reached(reject: &RejectResponse) -> bool {
    reject.error_code == ErrorCode::CanisterRejectedMessage
        && reject
            .reject_message
            .contains("reached the maximum number of snapshots")
}

/// The hex ids of the canister's snapshots, for a message; "its snapshots" if listing fails.
fn existing_snapshots<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
) -> String {
    client
        .management_call::<(Vec<Snapshot>,)>(
            sender,
            "list_canister_snapshots",
            (CanisterIdRecord { canister_id },),
        )
        .map(|(list,)| {
            let ids: Vec<String> = list
                .iter()
                .map(|s| format!("snapshot {}", hex(&s.id)))
                .collect();
            ids.join(", ")
        })
        .unwrap_or_else(|_| "its snapshots".to_string())
}

fn delete_snapshot<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
    snapshot_id: &[u8],
) -> Result<(), RejectResponse> {
    let args = DeleteCanisterSnapshotArgs {
        canister_id,
        snapshot_id: snapshot_id.to_vec(),
    };
    client.management_call(sender, "delete_canister_snapshot", (args,))
}

/// A snapshot id the progress file records in hex.
fn unhex_recorded(text: &str, progress_path: &Path) -> Result<Vec<u8>, TransferError> {
    crate::transfer::unhex(text).ok_or_else(|| TransferError::Resume {
        path: progress_path.to_path_buf(),
        reason: format!("{text:?} is not a hex snapshot id"),
    })
}

/// Refuses to resume an upload that belongs elsewhere: into another canister, from another
/// base, superseding another snapshot, or of a directory edited since the upload started. A
/// progress file written before these were recorded is checked for what it has.
fn check_resume(
    progress: &Progress,
    progress_path: &Path,
    canister_id: Principal,
    replace_snapshot: &Option<Vec<u8>>,
    base_hex: &Option<String>,
    digest: &DirectoryDigest,
) -> Result<(), TransferError> {
    let partial = format!(
        "(the partial upload is snapshot {}: delete it with delete_canister_snapshot if you \
         start over)",
        progress.snapshot_id
    );
    let refuse = |reason: String| {
        Err(TransferError::Resume {
            path: progress_path.to_path_buf(),
            reason: format!("{reason} {partial}"),
        })
    };
    if let Some(recorded) = &progress.canister_id
        && *recorded != canister_id.to_text()
    {
        return refuse(format!(
            "it is an upload into canister {recorded}, not {canister_id}"
        ));
    }
    if progress.canister_id.is_some() && progress.base_snapshot != *base_hex {
        return refuse(format!(
            "it is an upload from base snapshot {}, not {}",
            progress.base_snapshot.as_deref().unwrap_or("none"),
            base_hex.as_deref().unwrap_or("none")
        ));
    }
    let recorded_replace = progress
        .supersedes
        .as_ref()
        .or(progress.replaced_at_start.as_ref());
    let given_replace = replace_snapshot.as_deref().map(hex);
    if recorded_replace != given_replace.as_ref() {
        return refuse(format!(
            "it is an upload replacing snapshot {}, not {}",
            recorded_replace.map(String::as_str).unwrap_or("none"),
            given_replace.as_deref().unwrap_or("none")
        ));
    }
    let changed = match (&progress.directory_files, &progress.directory_checksum) {
        (Some(files), _) => match files.changed_files(&digest.files) {
            changed if changed.is_empty() => None,
            changed => Some(changed.join(", ")),
        },
        (None, Some(checksum)) if *checksum != hex(&digest.checksum) => {
            Some("files unknown".to_string())
        }
        _ => None,
    };
    if let Some(files) = changed {
        return refuse(format!(
            "the directory changed since this upload started ({files}), so the slices already \
             sent are not its bytes"
        ));
    }
    Ok(())
}

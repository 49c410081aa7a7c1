//! Download: a snapshot on the replica into a local directory, in page-aligned slices, with
//! `.part` files, a progress file for resumption and the checksum checked at the end
//! (`spec/transfer.md`).
//!
//! Each byte is hashed once per side. The client hashes each memory's bytes as it writes them
//! (`RootHasher`, on every core) and never reads the files back to verify them; the replica's
//! checksum in the metadata reply is memoised in the snapshot and its page maps' nodes, so
//! downloading a snapshot again hashes nothing on the replica.

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

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candid::Principal;
use ic_management_canister_types::{
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult, ReadCanisterSnapshotMetadataArgs,
    ReadCanisterSnapshotMetadataResult, SnapshotDataKind,
};

use super::progress::{Budget, Progress, Step, checkpoint, next_batch};
use super::{
    ChecksumRecord, DirectoryDigest, KnownRoots, REGIONS, SLICE_BYTES, SnapshotDir, TransferError,
    TransferOptions, dir,
};
use crate::client::{ManagementClient, decode_reply_one};
use crate::management::types::{ReadCanisterSnapshotDataResultRef, SnapshotMetadata};
use crate::memory::checksum::{Hash, MemoryRootBuilder, hex};
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;

/// The progress file of a download, in the directory it downloads into.
pub const DOWNLOAD_PROGRESS: &str = ".download_progress.json";

/// The lock file earlier versions of the command line left in a transfer's directory (it now
/// locks the directory itself and creates nothing): ours, so a download into a directory
/// holding only it is a download into an empty one.
pub const TRANSFER_LOCK: &str = ".transfer.lock";

/// What a directory holds before a download starts (one without a progress file).
enum Contents {
    /// Absent, empty, or only the temporary file of a first progress file that a crash cut
    /// short.
    Empty,
    /// `metadata.json`: a complete snapshot (ours, dfx's or icp-cli's).
    CompleteSnapshot,
    /// Something else, named by its first entry: not ours to write into.
    Foreign(String),
}

fn directory_contents(snapshot_dir: &SnapshotDir) -> Result<Contents, TransferError> {
    let root = snapshot_dir.root();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::Empty),
        Err(e) => return Err(TransferError::io(root, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TransferError::io(root, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let interrupted_start = dir::part_path(Path::new(DOWNLOAD_PROGRESS));
    names.retain(|name| Path::new(name) != interrupted_start && name != TRANSFER_LOCK);
    if dir::plain_file_len(&snapshot_dir.metadata_path())?.is_some() {
        return Ok(Contents::CompleteSnapshot);
    }
    Ok(match names.into_iter().next() {
        None => Contents::Empty,
        Some(name) => Contents::Foreign(name),
    })
}

/// Removes the files of the complete snapshot a forced download overwrites, `metadata.json`
/// first so that the directory never looks complete with a mix of two snapshots. Chunk files
/// stay: each is named by its hash, so a stale one is never mistaken for another, and readers
/// ignore chunks `metadata.json` does not list.
fn remove_snapshot_files(snapshot_dir: &SnapshotDir) -> Result<(), TransferError> {
    let files = [snapshot_dir.metadata_path(), snapshot_dir.checksum_path()]
        .into_iter()
        .chain(REGIONS.map(|region| snapshot_dir.region_path(region)));
    for path in files {
        dir::refuse_symlink(&path)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TransferError::io(&path, e)),
        }
    }
    Ok(())
}

/// Computes a memory root on a thread of its own (hashing on every core) from the replies a
/// download writes, so that hashing overlaps reading the next slices and writing the file. At
/// most [`HASH_QUEUE_REPLIES`] replies wait for it, so memory stays bounded.
struct RootHasher {
    queue: std::sync::mpsc::SyncSender<(Vec<u8>, usize)>,
    thread: std::thread::JoinHandle<Hash>,
}

/// Replies (of at most one slice each) waiting to be hashed.
const HASH_QUEUE_REPLIES: usize = 4;

impl RootHasher {
    /// Starts from the bytes `part` already holds (those of an interrupted download).
    fn start(part: &Path) -> Result<Self, TransferError> {
        let mut builder = MemoryRootBuilder::new();
        dir::for_each_block(part, |_, block| builder.push_bytes_parallel(block))?;
        let (queue, replies) =
            std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(HASH_QUEUE_REPLIES);
        let thread = std::thread::spawn(move || {
            for (reply, start) in replies {
                builder.push_bytes_parallel(&reply[start..]);
            }
            builder.finish()
        });
        Ok(RootHasher { queue, thread })
    }

    /// Hashes `reply[start..]`, the next bytes of the region.
    fn push(&mut self, reply: Vec<u8>, start: usize) {
        // The thread ends only when the queue is dropped: a send cannot fail.
        let _ = self.queue.send((reply, start));
    }

    /// The root of every byte pushed.
    fn finish(self) -> Hash {
        drop(self.queue);
        self.thread.join().expect("hashing bytes does not panic")
    }
}

fn read_kind(region: SnapshotRegion, offset: u64, size: u64) -> SnapshotDataKind {
    match region {
        SnapshotRegion::WasmModule => SnapshotDataKind::WasmModule { offset, size },
        SnapshotRegion::WasmMemory => SnapshotDataKind::WasmMemory { offset, size },
        SnapshotRegion::StableMemory => SnapshotDataKind::StableMemory { offset, size },
    }
}

/// Downloads a snapshot into `dir` (created if needed) in 2 MB slices, resuming an interrupted
/// download of the same snapshot, and verifies the files against the snapshot's checksum.
/// `dir` then has the dfx layout (`spec/transfer.md`).
///
/// `dir` must be absent, empty, or this snapshot's interrupted download; a complete snapshot
/// is overwritten only with `options.force`, and a directory holding anything else is refused.
pub fn download_canister_snapshot<C: ManagementClient + ?Sized>(
    client: &mut C,
    canister_id: Principal,
    sender: Principal,
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
        client
            .update_call(sender, "read_canister_snapshot_metadata", payload)
            .map_err(TransferError::reject("read_canister_snapshot_metadata"))?
    };
    // One reply, two views: the crate type for metadata.json, ours for the checksum.
    let decode_error = |e: candid::Error| TransferError::Metadata {
        path: PathBuf::from("read_canister_snapshot_metadata reply"),
        reason: e.to_string(),
    };
    let metadata: ReadCanisterSnapshotMetadataResult =
        candid::decode_one(&metadata_bytes).map_err(decode_error)?;
    let extended: SnapshotMetadata = candid::decode_one(&metadata_bytes).map_err(decode_error)?;

    let snapshot_dir = SnapshotDir::new(dir);
    let progress_path = dir.join(DOWNLOAD_PROGRESS);
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
        None => {
            let overwrite = match directory_contents(&snapshot_dir)? {
                Contents::Empty => false,
                Contents::CompleteSnapshot if options.force => true,
                Contents::CompleteSnapshot => {
                    return Err(TransferError::DirectoryNotEmpty {
                        path: dir.to_path_buf(),
                    });
                }
                Contents::Foreign(entry) => {
                    return Err(TransferError::ForeignDirectory {
                        path: dir.to_path_buf(),
                        entry,
                    });
                }
            };
            fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
            let progress = Progress {
                snapshot_id: id_hex,
                ..Progress::default()
            };
            // The progress file first: from here on the directory is a download in progress,
            // which a rerun resumes, whatever step a crash interrupts.
            progress.save(&progress_path)?;
            if overwrite {
                remove_snapshot_files(&snapshot_dir)?;
            }
            progress
        }
    };
    dir::refuse_symlink(&snapshot_dir.chunk_store_dir())?;
    fs::create_dir_all(snapshot_dir.chunk_store_dir())
        .map_err(|e| TransferError::io(&snapshot_dir.chunk_store_dir(), e))?;

    let mut budget = Budget::new(options);
    let mut known = KnownRoots::default();
    for region in REGIONS {
        let size = SnapshotDir::region_size(&metadata, region);
        let final_path = snapshot_dir.region_path(region);
        if *progress.offset(region) >= size && dir::plain_file_len(&final_path)? == Some(size) {
            continue;
        }
        let part = dir::part_path(&final_path);
        dir::refuse_symlink(&part)?;
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
        // The memories are hashed as they are written, on other threads (a resumed download
        // first hashes what the `.part` file already holds): no second pass over the files.
        let mut hasher = match region {
            SnapshotRegion::WasmModule => None,
            _ => Some(RootHasher::start(&part)?),
        };
        let bar = progress_bar(size, region.name());
        bar.set_position(offset);
        let mut slices = 0u64;
        while offset < size {
            // Several slices in flight (one round on the harness), then written in order.
            let batch = next_batch(
                offset,
                size,
                SLICE_BYTES,
                options.slices_in_flight(),
                &budget,
            );
            let calls = batch
                .iter()
                .map(|&(at, len)| {
                    let args = ReadCanisterSnapshotDataArgs {
                        canister_id,
                        snapshot_id: snapshot_id.clone(),
                        kind: read_kind(region, at, len),
                    };
                    let payload = candid::encode_one(args).expect("a crate type encodes");
                    ("read_canister_snapshot_data", payload)
                })
                .collect();
            let replies = client.update_calls(sender, calls);
            for (&(at, len), reply) in batch.iter().zip(replies) {
                debug_assert_eq!(at, offset, "a batch is written in order");
                let reply = reply.map_err(TransferError::reject("read_canister_snapshot_data"))?;
                // Borrowed from the reply: the bytes go from the reply into the file.
                let data: ReadCanisterSnapshotDataResultRef<'_> = decode_reply_one(&reply)
                    .map_err(TransferError::reject("read_canister_snapshot_data (reply)"))?;
                if data.chunk.len() as u64 != len {
                    return Err(TransferError::Metadata {
                        path: part.clone(),
                        reason: format!(
                            "the replica returned {} bytes for a slice of {len}",
                            data.chunk.len()
                        ),
                    });
                }
                file.write_all(data.chunk)
                    .map_err(|e| TransferError::io(&part, e))?;
                if let Some(hasher) = &mut hasher {
                    // The chunk borrows from the reply: where it starts in it.
                    let start = data.chunk.as_ptr() as usize - reply.as_ptr() as usize;
                    hasher.push(reply, start);
                }
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
                checkpoint(
                    &mut progress,
                    &progress_path,
                    &step,
                    &mut budget,
                    &bar,
                    || file.sync_data().map_err(|e| TransferError::io(&part, e)),
                )?;
            }
        }
        bar.finish_and_clear();
        match (region, hasher) {
            (SnapshotRegion::WasmMemory, Some(hasher)) => known.wasm_memory = Some(hasher.finish()),
            (SnapshotRegion::StableMemory, Some(hasher)) => {
                known.stable_memory = Some(hasher.finish())
            }
            _ => {}
        }
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
        let (data,): (ReadCanisterSnapshotDataResult,) = client
            .management_call(sender, "read_canister_snapshot_data", (args,))
            .map_err(TransferError::reject("read_canister_snapshot_data (chunk)"))?;
        dir::write_atomically(&snapshot_dir.chunk_path(&chunk.hash), &data.chunk)?;
        progress.chunks.push(hash_hex);
        progress.save(&progress_path)?;
    }

    snapshot_dir.write_metadata(&metadata)?;
    // The files as written, hashed once: the checksum to verify, and each file's hash for
    // `checksum.json`, which an upload compares against to say what was edited.
    let digest = snapshot_dir.digest_with(&known);
    let verified = |digest: &DirectoryDigest| digest.checksum.as_slice() == extended.checksum;
    let record = ChecksumRecord {
        checksum: hex(&extended.checksum),
        canister_id: canister_id.to_text(),
        snapshot_id: hex(&snapshot_id),
        label: extended.label.clone(),
        // Per-file hashes only of files that are the snapshot's.
        files: digest
            .as_ref()
            .ok()
            .filter(|digest| verified(digest))
            .map(|digest| digest.files.clone()),
    };
    snapshot_dir.write_checksum_record(&record)?;
    fs::remove_file(&progress_path).map_err(|e| TransferError::io(&progress_path, e))?;
    let digest = digest?;
    if !verified(&digest) {
        return Err(TransferError::ChecksumMismatch {
            what: format!("the download in {}", dir.display()),
            expected: record.checksum,
            actual: hex(&digest.checksum),
        });
    }
    Ok(())
}

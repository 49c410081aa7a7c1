//! Push: a snapshot directory into an archive. Blocks first (each skipped if present), the
//! manifest last, under a push lock (`spec/archive.md`).

use std::collections::VecDeque;
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use candid::Principal;
use ic_management_canister_types::ReadCanisterSnapshotMetadataResult;
use indicatif::ProgressBar;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::manifest::{BLOCK_BYTES, MANIFEST_FORMAT, Manifest, RegionBlocks};
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY, LOCK_REFRESH, STALE_LOCK};
use crate::memory::checksum::{Hash, hex, sha256};
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;
use crate::transfer::{REGIONS, SnapshotDir, chunk_hashes, for_each_block};

/// Knobs for a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The canister the snapshot belongs to; default: the one `checksum.json` records.
    pub canister_id: Option<Principal>,
    /// Blocks uploaded at once.
    pub concurrency: usize,
    /// Stop as if killed after this many blocks (or just before the manifest, if the snapshot
    /// has no more): the lock and the blocks stay, the manifest is not written. For crash tests.
    pub stop_after_blocks: Option<u64>,
    /// How long to wait for a running prune to finish.
    pub lock_wait: Duration,
    /// Age (by the store's clock) past which another client's lock is ignored.
    pub stale_after: Duration,
    /// Called once every block is stored, just before the manifest is written: the moment a
    /// concurrent prune could hurt. For tests.
    pub before_manifest: Option<Hook>,
}

/// A callback (see [`PushOptions::before_manifest`]).
#[derive(Clone)]
pub struct Hook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            canister_id: None,
            concurrency: DEFAULT_CONCURRENCY,
            stop_after_blocks: None,
            lock_wait: Duration::from_secs(60),
            stale_after: STALE_LOCK,
            before_manifest: None,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// `<canister>/<id>`, what `pull` takes.
    pub manifest: String,
    pub checksum: Hash,
    /// Bytes of the snapshot's module, memories and chunks.
    pub snapshot_bytes: u64,
    /// Non-zero blocks the snapshot has (zero blocks are not stored).
    pub blocks: u64,
    /// Blocks that were not in the archive and were uploaded.
    pub blocks_sent: u64,
    /// Bytes uploaded: the blocks sent and the manifest.
    pub bytes_sent: u64,
    /// The manifest was already there: nothing was sent.
    pub already_archived: bool,
}

impl Archive {
    /// Pushes the snapshot directory `dir` (validated, and its checksum checked against
    /// `checksum.json` if present) and returns the manifest's name. Idempotent: a block
    /// already present is not sent again, and a snapshot already archived sends nothing.
    pub fn push(&self, dir: &FsPath, options: &PushOptions) -> Result<PushReport, ArchiveError> {
        let snapshot_dir = SnapshotDir::new(dir);
        let (metadata, checksum) = snapshot_dir.validate_and_checksum()?;
        let record = snapshot_dir.read_checksum_record()?;
        if let Some(record) = &record
            && record.checksum != hex(&checksum)
        {
            return Err(ArchiveError::DirectoryChecksum {
                dir: dir.to_path_buf(),
                recorded: record.checksum.clone(),
                computed: hex(&checksum),
            });
        }
        let canister_id = match (options.canister_id, &record) {
            (Some(id), _) => id,
            (None, Some(record)) => {
                Principal::from_text(&record.canister_id).map_err(|e| ArchiveError::Argument {
                    what: "canister_id in checksum.json",
                    text: record.canister_id.clone(),
                    reason: e.to_string(),
                })?
            }
            (None, None) => {
                return Err(ArchiveError::NoCanisterId {
                    dir: dir.to_path_buf(),
                });
            }
        };
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT.to_string(),
            block_bytes: BLOCK_BYTES,
            canister_id: canister_id.to_text(),
            snapshot_id: record
                .as_ref()
                .map(|r| r.snapshot_id.clone())
                .unwrap_or_default(),
            label: record.as_ref().and_then(|r| r.label.clone()),
            taken_at_timestamp: metadata.taken_at_timestamp,
            checksum: hex(&checksum),
            metadata_candid: hex(&candid::encode_one(&metadata).map_err(|e| {
                ArchiveError::Argument {
                    what: "metadata.json",
                    text: dir.display().to_string(),
                    reason: format!("it does not encode as Candid: {e}"),
                }
            })?),
            wasm_module: RegionBlocks::default(),
            wasm_memory: RegionBlocks::default(),
            stable_memory: RegionBlocks::default(),
            chunks: chunk_hashes(&metadata).iter().map(|h| hex(h)).collect(),
        };
        let name = manifest.name();
        let manifest_path = self.path(&format!("manifests/{name}.json"));
        let mut report = PushReport {
            manifest: name,
            checksum,
            snapshot_bytes: metadata
                .wasm_module_size
                .saturating_add(metadata.wasm_memory_size)
                .saturating_add(metadata.stable_memory_size),
            blocks: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            already_archived: false,
        };
        match self.runtime.block_on(self.store.head(&manifest_path)) {
            Ok(_) => {
                report.already_archived = true;
                return Ok(report);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }

        let lock = self.acquire_push_lock(options)?;
        let mut uploader = Uploader {
            archive: self,
            lock: &lock,
            inflight: VecDeque::new(),
            concurrency: options.concurrency.max(1),
            stop_after: options.stop_after_blocks,
            blocks: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            error: None,
            last_refresh: Instant::now(),
            bar: progress_bar(report.snapshot_bytes, "push"),
        };
        let result = uploader.push_snapshot(&snapshot_dir, &metadata, &mut manifest);
        uploader.bar.finish_and_clear();
        report.blocks = uploader.blocks;
        report.blocks_sent = uploader.blocks_sent;
        report.bytes_sent = uploader.bytes_sent;
        match result {
            // As if killed: the lock stays (it expires), the blocks stay, no manifest.
            Err(e @ ArchiveError::Interrupted { .. }) => return Err(e),
            Err(e) => {
                self.release_lock(&lock);
                return Err(e);
            }
            Ok(()) => {}
        }
        if let Some(hook) = &options.before_manifest {
            (hook.0)();
        }
        // Last: the manifest, once every block it names is stored.
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Manifest {
            name: report.manifest.clone(),
            reason: e.to_string(),
        })?;
        report.bytes_sent = report.bytes_sent.saturating_add(json.len() as u64);
        let written = self.runtime.block_on(self.put(&manifest_path, json));
        self.release_lock(&lock);
        written.map(|()| report)
    }
}

/// Uploads blocks, at most `concurrency` at once, while the caller reads and hashes the next.
struct Uploader<'a> {
    archive: &'a Archive,
    lock: &'a Path,
    inflight: VecDeque<JoinHandle<Result<u64, object_store::Error>>>,
    concurrency: usize,
    stop_after: Option<u64>,
    blocks: u64,
    blocks_sent: u64,
    bytes_sent: u64,
    /// The first failure; once set, the rest of the snapshot is read but nothing more is sent.
    error: Option<ArchiveError>,
    last_refresh: Instant,
    bar: ProgressBar,
}

impl Uploader<'_> {
    fn push_snapshot(
        &mut self,
        snapshot_dir: &SnapshotDir,
        metadata: &ReadCanisterSnapshotMetadataResult,
        manifest: &mut Manifest,
    ) -> Result<(), ArchiveError> {
        for region in REGIONS {
            let blocks = self.push_region(snapshot_dir, metadata, region)?;
            let size = SnapshotDir::region_size(metadata, region);
            let entry = RegionBlocks { size, blocks };
            match region {
                SnapshotRegion::WasmModule => manifest.wasm_module = entry,
                SnapshotRegion::WasmMemory => manifest.wasm_memory = entry,
                SnapshotRegion::StableMemory => manifest.stable_memory = entry,
            }
        }
        for hash in chunk_hashes(metadata) {
            let mut chunk = Vec::new();
            for_each_block(&snapshot_dir.chunk_path(&hash), |_, bytes| {
                chunk.extend_from_slice(bytes)
            })?;
            // `validate` checked that the chunk hashes to its name.
            self.submit(hex(&hash), chunk);
        }
        self.drain();
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        if self.stop_after.is_some() {
            return Err(ArchiveError::Interrupted {
                blocks: self.blocks,
            });
        }
        Ok(())
    }

    /// Cuts a region file into [`BLOCK_BYTES`] blocks (the last may be shorter), submits the
    /// non-zero ones, and returns the manifest's list.
    fn push_region(
        &mut self,
        snapshot_dir: &SnapshotDir,
        metadata: &ReadCanisterSnapshotMetadataResult,
        region: SnapshotRegion,
    ) -> Result<Vec<Option<String>>, ArchiveError> {
        let block = BLOCK_BYTES as usize;
        let mut names = Vec::with_capacity(
            SnapshotDir::region_size(metadata, region).div_ceil(BLOCK_BYTES) as usize,
        );
        let mut pending: Vec<u8> = Vec::with_capacity(block);
        for_each_block(&snapshot_dir.region_path(region), |_, mut bytes| {
            while !bytes.is_empty() {
                let (head, rest) =
                    bytes.split_at(block.saturating_sub(pending.len()).min(bytes.len()));
                pending.extend_from_slice(head);
                bytes = rest;
                if pending.len() == block {
                    let full = std::mem::replace(&mut pending, Vec::with_capacity(block));
                    names.push(self.block(full));
                }
            }
        })?;
        if !pending.is_empty() {
            names.push(self.block(pending));
        }
        Ok(names)
    }

    /// The manifest entry of one region block: `None` if all zero (not stored), else its hash,
    /// submitted for upload.
    fn block(&mut self, bytes: Vec<u8>) -> Option<String> {
        self.bar.inc(bytes.len() as u64);
        if bytes.iter().all(|&b| b == 0) {
            return None;
        }
        let name = hex(&sha256(&bytes));
        self.submit(name.clone(), bytes);
        Some(name)
    }

    /// Uploads a block unless present, once the number in flight allows.
    fn submit(&mut self, name: String, bytes: Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        if self.stop_after.is_some_and(|n| self.blocks >= n) {
            self.error = Some(ArchiveError::Interrupted {
                blocks: self.blocks,
            });
            return;
        }
        self.blocks = self.blocks.saturating_add(1);
        while self.inflight.len() >= self.concurrency {
            self.wait_one();
        }
        if self.last_refresh.elapsed() >= LOCK_REFRESH {
            self.last_refresh = Instant::now();
            if let Err(e) = self
                .archive
                .runtime
                .block_on(self.archive.refresh_lock(self.lock))
            {
                self.error = Some(e);
                return;
            }
        }
        let store = self.archive.store.clone();
        let path = self.archive.block_path(&name);
        self.inflight
            .push_back(self.archive.runtime.spawn(async move {
                match store.head(&path).await {
                    Ok(_) => Ok(0),
                    Err(object_store::Error::NotFound { .. }) => {
                        let len = bytes.len() as u64;
                        store.put(&path, PutPayload::from(bytes)).await?;
                        Ok(len)
                    }
                    Err(e) => Err(e),
                }
            }));
    }

    fn wait_one(&mut self) {
        let Some(task) = self.inflight.pop_front() else {
            return;
        };
        match self.archive.runtime.block_on(task) {
            Ok(Ok(0)) => {}
            Ok(Ok(sent)) => {
                self.blocks_sent = self.blocks_sent.saturating_add(1);
                self.bytes_sent = self.bytes_sent.saturating_add(sent);
            }
            Ok(Err(e)) => {
                self.error.get_or_insert(e.into());
            }
            Err(join) => {
                self.error.get_or_insert(ArchiveError::Io {
                    path: "block upload task".into(),
                    source: std::io::Error::other(join.to_string()),
                });
            }
        }
    }

    fn drain(&mut self) {
        while !self.inflight.is_empty() {
            self.wait_one();
        }
    }
}

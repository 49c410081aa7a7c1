//! Push: a snapshot directory into an archive, page by page. Every non-zero page is named by
//! its leaf hash; pages no pack holds yet are appended to new packs (pages object first, index
//! second); the manifest is written last, under a push lock (`spec/archive.md`).
//!
//! Cost: one GET of every pack index of the archive (32 bytes per stored page: 8 MiB for
//! 1 GiB of distinct pages), one leaf hash per page (on every core), and one PUT pair per new
//! pack. A map from page hash to (pack, position) holds every stored page: ~72 bytes per page,
//! 18 MiB per GiB stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use candid::Principal;
use futures::{StreamExt, TryStreamExt};
use ic_management_canister_types::ReadCanisterSnapshotMetadataResult;
use indicatif::ProgressBar;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use rayon::prelude::*;
use tokio::task::JoinHandle;

use super::manifest::{
    ChunkPages, DEFAULT_PACK_PAGES, MANIFEST_FORMAT, MAX_MANIFEST_BYTES, MAX_PACK_PAGES, Manifest,
    PAGE_BYTES, PackIndex, PageRuns, Run,
};
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY, LOCK_REFRESH, STALE_LOCK};
use crate::memory::checksum::{Hash, hex, leaf_hash};
use crate::progress::progress_bar;
use crate::snapshots::SnapshotRegion;
use crate::transfer::{REGIONS, SnapshotDir, chunk_hashes, for_each_block};

/// Knobs for a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The canister the snapshot belongs to; default: the one `checksum.json` records.
    pub canister_id: Option<Principal>,
    /// Packs uploaded at once (each up to `pack_pages` × 4 KiB in memory).
    pub concurrency: usize,
    /// Pages per new pack, `1..=MAX_PACK_PAGES`; default 1,024 (4 MiB).
    pub pack_pages: u32,
    /// Stop as if killed after this many new packs were stored (or just before the manifest,
    /// if the snapshot has no more): the lock and the packs stay, the manifest is not
    /// written. For crash tests.
    pub stop_after_packs: Option<u64>,
    /// How long to wait for a running prune to finish.
    pub lock_wait: Duration,
    /// Age (by the store's clock) past which another client's lock is ignored.
    pub stale_after: Duration,
    /// Called once every pack is stored, just before the manifest is written: the moment a
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
            concurrency: DEFAULT_CONCURRENCY / 2,
            pack_pages: DEFAULT_PACK_PAGES,
            stop_after_packs: None,
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
    /// Bytes of the snapshot's module and memories.
    pub snapshot_bytes: u64,
    /// Non-zero pages of the snapshot (regions and chunks).
    pub pages: u64,
    /// Pages no pack held, stored in new packs.
    pub pages_sent: u64,
    /// New packs stored.
    pub packs_sent: u64,
    /// Bytes uploaded: new packs' pages and indexes, and the manifest.
    pub bytes_sent: u64,
    /// Bytes of pack indexes read to learn which pages the archive holds.
    pub bytes_received: u64,
    /// The manifest was already there: nothing was sent.
    pub already_archived: bool,
}

impl Archive {
    /// Pushes the snapshot directory `dir` (validated, and its checksum checked against
    /// `checksum.json` if present) and returns the manifest's name. Idempotent: a page
    /// already in a pack is not sent again, and a snapshot already archived sends nothing.
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
            page_bytes: PAGE_BYTES,
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
            packs: Vec::new(),
            wasm_module: PageRuns::default(),
            wasm_memory: PageRuns::default(),
            stable_memory: PageRuns::default(),
            chunks: Vec::new(),
        };
        let name = manifest.name();
        let manifest_path = self.manifest_path(&name);
        let mut report = PushReport {
            manifest: name,
            checksum,
            snapshot_bytes: metadata
                .wasm_module_size
                .saturating_add(metadata.wasm_memory_size)
                .saturating_add(metadata.stable_memory_size),
            pages: 0,
            pages_sent: 0,
            packs_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
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
        // Under the lock: a prune that started before it has finished, so every index read
        // now names a pack that stays until this push releases the lock.
        let known = match self.runtime.block_on(self.load_indexes()) {
            Ok(known) => known,
            Err(e) => {
                self.release_lock(&lock);
                return Err(e);
            }
        };
        report.bytes_received = known.bytes_read;
        let mut packer = Packer {
            archive: self,
            lock: &lock,
            packs: known.packs,
            pages: known.pages,
            open: Vec::new(),
            open_hashes: Vec::new(),
            pack_pages: options.pack_pages.clamp(1, MAX_PACK_PAGES),
            inflight: VecDeque::new(),
            concurrency: options.concurrency.max(1),
            stop_after: options.stop_after_packs,
            sealed: 0,
            report: &mut report,
            error: None,
            last_refresh: Instant::now(),
            bar: progress_bar(0, "push"),
        };
        packer.bar.set_length(packer.report.snapshot_bytes);
        let result = packer.push_snapshot(&snapshot_dir, &metadata, &mut manifest);
        packer.bar.finish_and_clear();
        match result {
            // As if killed: the lock stays (it expires), the packs stay, no manifest.
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
        // Last: the manifest, once every pack it names is stored.
        let json = match serde_json::to_vec(&manifest) {
            Ok(json) => json,
            Err(e) => {
                self.release_lock(&lock);
                return Err(ArchiveError::Manifest {
                    name: report.manifest.clone(),
                    reason: e.to_string(),
                });
            }
        };
        if json.len() as u64 > MAX_MANIFEST_BYTES {
            self.release_lock(&lock);
            return Err(ArchiveError::ManifestTooLarge {
                name: report.manifest.clone(),
                bytes: json.len() as u64,
            });
        }
        report.bytes_sent = report.bytes_sent.saturating_add(json.len() as u64);
        let written = self.runtime.block_on(self.put(&manifest_path, json));
        self.release_lock(&lock);
        written.map(|()| report)
    }

    /// Every pack index of the archive, checked against its name. An index that is missing,
    /// unreadable or corrupt only costs deduplication: its pages are stored again.
    async fn load_indexes(&self) -> Result<KnownPages, ArchiveError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&self.path("packs")))
            .try_collect()
            .await?;
        let names: Vec<String> = objects
            .iter()
            .filter(|o| o.size <= PackIndex::MAX_BYTES)
            .filter_map(|o| o.location.filename()?.strip_suffix(".index"))
            .map(str::to_string)
            .collect();
        let indexes: Vec<_> = futures::stream::iter(names)
            .map(|name| async move {
                let index = self.read_index(&name).await;
                (name, index)
            })
            .buffered(DEFAULT_CONCURRENCY)
            .collect()
            .await;
        let mut known = KnownPages::default();
        for (name, index) in indexes {
            let Ok((index, bytes)) = index else { continue };
            known.bytes_read = known.bytes_read.saturating_add(bytes);
            let Ok(id) = u32::try_from(known.packs.len()) else {
                break;
            };
            known.packs.push(Some(name));
            for (position, hash) in (0u32..).zip(index.pages) {
                known.pages.entry(hash).or_insert((id, position));
            }
        }
        Ok(known)
    }
}

/// The pages the archive holds: pack ids (positions in `packs`) and each page's place.
#[derive(Default)]
struct KnownPages {
    packs: Vec<Option<String>>,
    pages: HashMap<Hash, (u32, u32)>,
    bytes_read: u64,
}

/// A sealed pack on its way: pages object, then index object.
type Upload = JoinHandle<Result<u64, object_store::Error>>;

/// Cuts byte strings into pages, finds each in the archive or appends it to the open pack,
/// and uploads sealed packs, at most `concurrency` at once.
struct Packer<'a> {
    archive: &'a Archive,
    lock: &'a Path,
    /// Pack names by id: the archive's, then this push's (`None` while open).
    packs: Vec<Option<String>>,
    /// Where each known page is: (pack id, position). Only looked up, never iterated.
    pages: HashMap<Hash, (u32, u32)>,
    open: Vec<u8>,
    open_hashes: Vec<Hash>,
    pack_pages: u32,
    inflight: VecDeque<Upload>,
    concurrency: usize,
    stop_after: Option<u64>,
    sealed: u64,
    report: &'a mut PushReport,
    /// The first failure; once set, nothing more is sent.
    error: Option<ArchiveError>,
    last_refresh: Instant,
    bar: ProgressBar,
}

impl Packer<'_> {
    fn push_snapshot(
        &mut self,
        snapshot_dir: &SnapshotDir,
        metadata: &ReadCanisterSnapshotMetadataResult,
        manifest: &mut Manifest,
    ) -> Result<(), ArchiveError> {
        for region in REGIONS {
            let size = SnapshotDir::region_size(metadata, region);
            let runs = self.push_file(&snapshot_dir.region_path(region))?;
            let entry = PageRuns { size, runs };
            match region {
                SnapshotRegion::WasmModule => manifest.wasm_module = entry,
                SnapshotRegion::WasmMemory => manifest.wasm_memory = entry,
                SnapshotRegion::StableMemory => manifest.stable_memory = entry,
            }
        }
        for hash in chunk_hashes(metadata) {
            let path = snapshot_dir.chunk_path(&hash);
            let size = std::fs::metadata(&path)
                .map_err(|e| ArchiveError::io(&path, e))?
                .len();
            let runs = self.push_file(&path)?;
            manifest.chunks.push(ChunkPages {
                hash: hex(&hash),
                pages: PageRuns { size, runs },
            });
        }
        self.seal();
        self.drain();
        match self.error.take() {
            // Counted once the packs in flight have landed.
            Some(ArchiveError::Interrupted { .. }) => {
                return Err(ArchiveError::Interrupted {
                    packs: self.report.packs_sent,
                });
            }
            Some(error) => return Err(error),
            None => {}
        }
        if self.stop_after.is_some() {
            return Err(ArchiveError::Interrupted {
                packs: self.report.packs_sent,
            });
        }
        self.name_packs(manifest)
    }

    /// Replaces the pack ids of the runs by positions in the manifest's own pack table, in
    /// order of first use, now that every pack is sealed and named.
    fn name_packs(&self, manifest: &mut Manifest) -> Result<(), ArchiveError> {
        let mut table: BTreeMap<u32, u32> = BTreeMap::new();
        let mut names = Vec::new();
        let strings = [
            &mut manifest.wasm_module,
            &mut manifest.wasm_memory,
            &mut manifest.stable_memory,
        ]
        .into_iter()
        .chain(manifest.chunks.iter_mut().map(|c| &mut c.pages));
        for pages in strings {
            for run in &mut pages.runs {
                let Some(id) = run.0 else { continue };
                let position =
                    match table.get(&id) {
                        Some(position) => *position,
                        None => {
                            let name = self.packs.get(id as usize).cloned().flatten().ok_or_else(
                                || ArchiveError::Manifest {
                                    name: manifest.canister_id.clone(),
                                    reason: format!("pack {id} was never sealed"),
                                },
                            )?;
                            let position = u32::try_from(names.len()).unwrap_or(u32::MAX);
                            names.push(name);
                            table.insert(id, position);
                            position
                        }
                    };
                run.0 = Some(position);
            }
        }
        manifest.packs = names;
        Ok(())
    }

    /// The runs of one file (a region or a chunk), read in blocks; a partial last page is
    /// zero-padded. Zero pages make zero runs.
    fn push_file(&mut self, path: &FsPath) -> Result<Vec<Run>, ArchiveError> {
        let mut runs: Vec<Run> = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let page = PAGE_BYTES as usize;
        for_each_block(path, |_, bytes| {
            // `for_each_block` yields page-aligned blocks but the last; keep any tail.
            let bytes: std::borrow::Cow<[u8]> = if carry.is_empty() {
                std::borrow::Cow::Borrowed(bytes)
            } else {
                let mut joined = std::mem::take(&mut carry);
                joined.extend_from_slice(bytes);
                std::borrow::Cow::Owned(joined)
            };
            let whole = bytes
                .len()
                .saturating_sub(bytes.len().checked_rem(page).unwrap_or(0));
            let (pages, tail) = bytes.split_at(whole);
            self.push_pages(pages, &mut runs);
            carry.extend_from_slice(tail);
        })?;
        if !carry.is_empty() {
            carry.resize(page, 0);
            self.push_pages(&carry, &mut runs);
        }
        Ok(runs)
    }

    /// Hashes whole pages on every core, then places each in order.
    fn push_pages(&mut self, bytes: &[u8], runs: &mut Vec<Run>) {
        let hashes: Vec<Option<Hash>> = bytes
            .par_chunks(PAGE_BYTES as usize)
            .map(|page| {
                let page: &[u8; PAGE_BYTES as usize] = page.try_into().ok()?;
                (!page.iter().all(|&b| b == 0)).then(|| leaf_hash(page))
            })
            .collect();
        for (page, hash) in bytes.chunks(PAGE_BYTES as usize).zip(hashes) {
            self.bar.inc(PAGE_BYTES);
            let place = hash.map(|hash| self.place(hash, page));
            extend(runs, place);
        }
    }

    /// Where a non-zero page is: its pack and position, appending it to the open pack if no
    /// pack holds it.
    fn place(&mut self, hash: Hash, page: &[u8]) -> (u32, u32) {
        self.report.pages = self.report.pages.saturating_add(1);
        if let Some(place) = self.pages.get(&hash) {
            return *place;
        }
        if self.open_hashes.is_empty() {
            self.packs.push(None);
        }
        let id = u32::try_from(self.packs.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let position = u32::try_from(self.open_hashes.len()).unwrap_or(u32::MAX);
        self.open.extend_from_slice(page);
        self.open_hashes.push(hash);
        self.pages.insert(hash, (id, position));
        self.report.pages_sent = self.report.pages_sent.saturating_add(1);
        if self.open_hashes.len() >= self.pack_pages as usize {
            self.seal();
        }
        (id, position)
    }

    /// Names the open pack and uploads it: pages object first, index object second, so that
    /// an index (what makes a later push skip the pages) never names pages not stored.
    fn seal(&mut self) {
        if self.open_hashes.is_empty() {
            return;
        }
        let index = PackIndex {
            pages: std::mem::take(&mut self.open_hashes),
        };
        let pages = std::mem::replace(
            &mut self.open,
            Vec::with_capacity((self.pack_pages as usize).saturating_mul(PAGE_BYTES as usize)),
        );
        let name = index.name();
        if let Some(slot) = self.packs.last_mut() {
            *slot = Some(name.clone());
        }
        if self.error.is_some() {
            return;
        }
        if self.stop_after.is_some_and(|n| self.sealed >= n) {
            self.error = Some(ArchiveError::Interrupted {
                packs: self.report.packs_sent,
            });
            return;
        }
        self.sealed = self.sealed.saturating_add(1);
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
        let pages_path = self.archive.pack_path(&name, "pages");
        let index_path = self.archive.pack_path(&name, "index");
        let index = index.encode();
        self.inflight
            .push_back(self.archive.runtime.spawn(async move {
                let len = (pages.len() as u64).saturating_add(index.len() as u64);
                store.put(&pages_path, PutPayload::from(pages)).await?;
                store.put(&index_path, PutPayload::from(index)).await?;
                Ok(len)
            }));
    }

    fn wait_one(&mut self) {
        let Some(task) = self.inflight.pop_front() else {
            return;
        };
        match self.archive.runtime.block_on(task) {
            Ok(Ok(sent)) => {
                self.report.packs_sent = self.report.packs_sent.saturating_add(1);
                self.report.bytes_sent = self.report.bytes_sent.saturating_add(sent);
            }
            Ok(Err(e)) => {
                self.error.get_or_insert(e.into());
            }
            Err(join) => {
                self.error.get_or_insert(ArchiveError::Io {
                    path: "pack upload task".into(),
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

/// Appends one page (`None`: zero) to a list of runs, extending the last run when the page
/// continues it.
fn extend(runs: &mut Vec<Run>, place: Option<(u32, u32)>) {
    if let Some(last) = runs.last_mut() {
        let Run(pack, first, count) = *last;
        let continues = match place {
            None => pack.is_none(),
            Some((id, position)) => pack == Some(id) && first.checked_add(count) == Some(position),
        };
        if continues {
            last.2 = count.saturating_add(1);
            return;
        }
    }
    runs.push(match place {
        None => Run(None, 0, 1),
        Some((id, position)) => Run(Some(id), position, 1),
    });
}

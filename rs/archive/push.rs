//! Push: a snapshot directory into an archive, page by page. Every non-zero page is named by
//! its leaf hash; pages no whole pack holds yet are appended to new packs (pages object first,
//! index second); the manifest is written last, under a push lease (`spec/archive.md`).
//!
//! A push trusts no pack it has not checked: a pack is used only if it is whole by the sizes
//! the listing carries (`verify.rs`; with `verify_pages`, by its pages' hashes too). A snapshot
//! already archived is skipped only if every pack its manifest names is whole; otherwise the
//! push runs as if it were new, stores again the pages the damaged packs held, and rewrites
//! the manifest: a repair, which a store's lost or truncated object otherwise never gets.
//!
//! Cost: one listing of `packs/`, one GET of every whole pack's index (32 bytes per stored
//! page: 8 MiB for 1 GiB of distinct pages), one leaf hash per page (on every core), and one
//! PUT pair per new pack. An archived snapshot costs the listing only. A map from page hash to (pack, position) holds every stored page: ~72 bytes per page,
//! 18 MiB per GiB stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path as FsPath;
use std::time::Duration;

use candid::Principal;
use futures::StreamExt;
use ic_management_canister_types::ReadCanisterSnapshotMetadataResult;
use indicatif::ProgressBar;
use object_store::{ObjectStoreExt, PutPayload};
use rayon::prelude::*;
use tokio::task::JoinHandle;

use super::lock::Lease;
use super::manifest::{
    ChunkPages, DEFAULT_PACK_PAGES, MANIFEST_FORMAT, MAX_MANIFEST_BYTES, MAX_PACK_PAGES, Manifest,
    PAGE_BYTES, PackIndex, PageRuns, Run,
};
use super::pull::IndexError;
use super::verify::PackListing;
use super::{Archive, ArchiveError, DEFAULT_CONCURRENCY, Hook, LOCK_REFRESH, STALE_LOCK};
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
    /// How often the push rewrites its lock while it runs.
    pub lock_refresh: Duration,
    /// Hash every page of every pack the push relies on (reading each once), not only check
    /// the packs' sizes: finds a page a store corrupted in place.
    pub verify_pages: bool,
    /// Called once every pack is stored, just before the manifest is written: the moment a
    /// concurrent prune could hurt. For tests.
    pub before_manifest: Option<Hook>,
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
            lock_refresh: LOCK_REFRESH,
            verify_pages: false,
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
    /// The manifest was already there and every pack it names whole: nothing was sent.
    pub already_archived: bool,
    /// Packs found missing or damaged (by size, index, or with
    /// [`PushOptions::verify_pages`], a page): the pages this snapshot needed from them were
    /// stored again, and its manifest names the new packs.
    pub packs_damaged: Vec<String>,
}

impl Archive {
    /// Pushes the snapshot directory `dir` (validated, and its checksum checked against
    /// `checksum.json` if present) and returns the manifest's name. Idempotent: a page
    /// already in a whole pack is not sent again, and a snapshot already archived whose packs
    /// are all whole sends nothing; one whose packs a store lost or damaged is repaired.
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
            packs_damaged: Vec::new(),
        };
        // An archived snapshot: nothing to do if every pack its manifest names is whole. A
        // pack that is not (a store lost or damaged it) is repaired below: its pages stored
        // again, the manifest rewritten. A manifest that does not parse is rewritten too.
        let mut damaged: BTreeSet<String> = BTreeSet::new();
        match self.runtime.block_on(self.read_manifest(&report.manifest)) {
            Ok(existing) => {
                let (bad, read) = self.runtime.block_on(async {
                    let listing = self.list_packs().await?;
                    self.damaged_packs(existing.referenced_packs(), &listing, options.verify_pages)
                        .await
                })?;
                report.bytes_received = report.bytes_received.saturating_add(read);
                if bad.is_empty() {
                    report.already_archived = true;
                    return Ok(report);
                }
                damaged = bad;
            }
            Err(ArchiveError::ManifestNotFound { .. } | ArchiveError::Manifest { .. }) => {}
            Err(e) => return Err(e),
        }

        let lease = self.acquire_push_lease(options)?;
        let result = self.push_leased(
            &lease,
            &snapshot_dir,
            &metadata,
            &mut manifest,
            &mut report,
            damaged,
            options,
        );
        match result {
            // As if killed: the lock stays (it expires), the packs stay, no manifest.
            Err(e @ ArchiveError::Interrupted { .. }) => Err(e),
            result => {
                self.release(lease);
                result.map(|()| report)
            }
        }
    }

    /// The push proper, under its lease: packs, then the manifest. A prune that started
    /// before the lease has finished, and none starts while it is held, so every index read
    /// here names a pack that stays until the lease is released.
    #[allow(clippy::too_many_arguments)]
    fn push_leased(
        &self,
        lease: &Lease,
        snapshot_dir: &SnapshotDir,
        metadata: &ReadCanisterSnapshotMetadataResult,
        manifest: &mut Manifest,
        report: &mut PushReport,
        mut damaged: BTreeSet<String>,
        options: &PushOptions,
    ) -> Result<(), ArchiveError> {
        let mut verified: BTreeSet<String> = BTreeSet::new();
        loop {
            let (listing, known) = self.runtime.block_on(async {
                let listing = self.list_packs().await?;
                let known = self.load_indexes(&listing, &damaged).await;
                Ok::<_, ArchiveError>((listing, known))
            })?;
            report.bytes_received = report.bytes_received.saturating_add(known.bytes_read);
            damaged.extend(known.damaged);
            let existing: BTreeSet<String> = known.packs.iter().flatten().cloned().collect();
            report.pages = 0;
            manifest.chunks.clear();
            let mut packer = Packer {
                archive: self,
                packs: known.packs,
                pages: known.pages,
                open: Vec::new(),
                open_hashes: Vec::new(),
                pack_pages: options.pack_pages.clamp(1, MAX_PACK_PAGES),
                inflight: VecDeque::new(),
                concurrency: options.concurrency.max(1),
                stop_after: options.stop_after_packs,
                sealed: 0,
                report: &mut *report,
                error: None,
                bar: progress_bar(0, "push"),
            };
            packer.bar.set_length(packer.report.snapshot_bytes);
            let result = packer.push_snapshot(snapshot_dir, metadata, manifest);
            packer.bar.finish_and_clear();
            result?;
            if !options.verify_pages {
                break;
            }
            // On request: every page of every pack this snapshot relies on (that this push
            // did not write), hashed. A damaged pack's pages are stored again, and the
            // snapshot placed again without it.
            let relied_on: Vec<String> = manifest
                .packs
                .iter()
                .filter(|p| existing.contains(*p) && !verified.contains(*p))
                .cloned()
                .collect();
            let (bad, read) = self.runtime.block_on(self.damaged_packs(
                relied_on.iter().cloned(),
                &listing,
                true,
            ))?;
            report.bytes_received = report.bytes_received.saturating_add(read);
            verified.extend(relied_on.into_iter().filter(|p| !bad.contains(p)));
            if bad.is_empty() {
                break;
            }
            damaged.extend(bad);
        }
        report.packs_damaged = damaged.into_iter().collect();
        if let Some(hook) = &options.before_manifest {
            (hook.0)();
        }
        // Last: the manifest, once every pack it names is stored, while the lock is sure to
        // have been live all along (a prune never swept what this manifest names).
        let json = serde_json::to_vec(&*manifest).map_err(|e| ArchiveError::Manifest {
            name: report.manifest.clone(),
            reason: e.to_string(),
        })?;
        if json.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ArchiveError::ManifestTooLarge {
                name: report.manifest.clone(),
                bytes: json.len() as u64,
            });
        }
        lease.check(options.stale_after)?;
        report.bytes_sent = report.bytes_sent.saturating_add(json.len() as u64);
        self.runtime
            .block_on(self.put(&self.manifest_path(&report.manifest), json))
    }

    /// Every whole pack's index, checked against its name. A pack that is not whole by the
    /// listing's sizes, or whose index is corrupt, or that `exclude` names, only costs
    /// deduplication: its pages are stored again. (A pages object without an index is a
    /// crashed push's, not damage.)
    async fn load_indexes(&self, listing: &PackListing, exclude: &BTreeSet<String>) -> KnownPages {
        let mut known = KnownPages::default();
        let mut names = Vec::new();
        for (name, objects) in listing {
            if objects.index.is_none() || exclude.contains(name) {
                continue;
            }
            match objects.check_sizes() {
                Ok(_) => names.push(name.clone()),
                Err(_) => known.damaged.push(name.clone()),
            }
        }
        let indexes: Vec<_> = futures::stream::iter(names)
            .map(|name| async move {
                let index = self.read_index(&name).await;
                (name, index)
            })
            .buffered(DEFAULT_CONCURRENCY)
            .collect()
            .await;
        for (name, index) in indexes {
            let (index, bytes) = match index {
                Ok(found) => found,
                Err(IndexError::Corrupt(_)) => {
                    known.damaged.push(name);
                    continue;
                }
                Err(_) => continue,
            };
            known.bytes_read = known.bytes_read.saturating_add(bytes);
            let Ok(id) = u32::try_from(known.packs.len()) else {
                break;
            };
            known.packs.push(Some(name));
            for (position, hash) in (0u32..).zip(index.pages) {
                known.pages.entry(hash).or_insert((id, position));
            }
        }
        known
    }
}

/// The pages the archive holds: pack ids (positions in `packs`) and each page's place.
#[derive(Default)]
struct KnownPages {
    packs: Vec<Option<String>>,
    pages: HashMap<Hash, (u32, u32)>,
    bytes_read: u64,
    /// Packs found not whole: their pages are stored again.
    damaged: Vec<String>,
}

/// A sealed pack on its way: pages object, then index object.
type Upload = JoinHandle<Result<u64, object_store::Error>>;

/// Cuts byte strings into pages, finds each in the archive or appends it to the open pack,
/// and uploads sealed packs, at most `concurrency` at once.
struct Packer<'a> {
    archive: &'a Archive,
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

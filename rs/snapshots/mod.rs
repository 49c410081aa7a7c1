//! Snapshots: ids, the snapshot itself, the per-canister store and its accounting.
//!
//! Depends on [`crate::state`] and [`crate::memory`]. A snapshot is a set of O(1) clones of a
//! canister's module, memories and small fields: taking one copies no page, and a page is copied
//! later only when the live canister (or an upload) writes to it. This module decides nothing
//! about callers, cycles or rate limits ([`crate::management`] does) and never reads the clock:
//! `taken_at_timestamp` is the batch time handed in.
//!
//! The store is a `BTreeMap` ordered by [`SnapshotId`] (canister first, then the local counter),
//! so the snapshots of one canister form one contiguous, ordered range on every replica.

#![forbid(unsafe_code)]

mod id;
mod ranges;

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};
use sha2::{Digest, Sha256};

use crate::memory::{Hash, Memory, PAGE_SIZE};
use crate::state::{
    CanisterState, ChunkStore, ExecutionState, Global, GlobalTimer, HookStatus,
    WASM_CHUNK_ACCOUNTED_BYTES, WasmModule,
};

pub use id::{InvalidSnapshotId, SnapshotId};
pub use ranges::ByteRanges;

/// How a snapshot came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    TakenFromCanister,
    MetadataUpload,
}

/// What a snapshot holds and a load restores, as one value: captured from a canister by a
/// take, declared by an upload, restored by a load, hashed by the checksum and read back by
/// `read_canister_snapshot_metadata`. Clones are O(1) in the memory size (the memories are
/// copy-on-write and the module and chunks are shared).
#[derive(Clone, Debug)]
pub struct SnapshotContent {
    pub wasm_module: WasmModule,
    pub wasm_memory: Memory,
    pub stable_memory: Memory,
    pub exported_globals: Vec<Global>,
    pub certified_data: Vec<u8>,
    pub wasm_chunk_store: ChunkStore,
    /// The global timer and low-memory hook status as recorded: the canister's at a take, and
    /// what the uploader declared for an upload (`None`: not given). Loading restores them only
    /// for an uploaded snapshot, and only where given; a taken snapshot leaves the canister's
    /// current ones in place, as the replica does.
    pub global_timer: Option<GlobalTimer>,
    pub on_low_wasm_memory_hook_status: Option<HookStatus>,
}

impl SnapshotContent {
    /// The content of `canister` as a take records it, or `None` if it has no code. O(globals
    /// + chunks): the memories and the module are shared, not copied.
    pub fn of_canister(canister: &CanisterState) -> Option<Self> {
        let execution = canister.execution_state.as_ref()?;
        Some(SnapshotContent {
            wasm_module: execution.wasm_module.clone(),
            wasm_memory: execution.wasm_memory.clone(),
            stable_memory: execution.stable_memory.clone(),
            exported_globals: execution.exported_globals.clone(),
            certified_data: canister.certified_data.clone(),
            wasm_chunk_store: canister.wasm_chunk_store.clone(),
            global_timer: Some(canister.global_timer.into()),
            on_low_wasm_memory_hook_status: Some(canister.on_low_wasm_memory_hook_status),
        })
    }

    /// The parts the checksum binds, each reduced to its hash (cached in the page maps).
    pub fn digest(&self) -> SnapshotDigest<'_> {
        SnapshotDigest {
            wasm_module_hash: *self.wasm_module.hash(),
            wasm_memory_root: self.wasm_memory.root_hash(),
            stable_memory_root: self.stable_memory.root_hash(),
            exported_globals: &self.exported_globals,
            certified_data: &self.certified_data,
            chunk_hashes: self.wasm_chunk_store.keys().copied().collect(),
        }
    }

    /// The snapshot checksum of `spec/checksum.md` (not memoised: see
    /// [`CanisterSnapshot::checksum`]).
    pub fn checksum(&self) -> Hash {
        snapshot_checksum(&self.digest())
    }

    /// The logical size, as the IC defines `total_size`: module + both memories + globals +
    /// certified data + chunk store (a chunk counts [`WASM_CHUNK_ACCOUNTED_BYTES`]). Not the
    /// bytes the snapshot really holds (see [`SnapshotStore::unique_bytes`]).
    /// O(globals + chunks).
    pub fn total_size(&self) -> u64 {
        [
            self.wasm_module.len(),
            self.wasm_memory.size_bytes(),
            self.stable_memory.size_bytes(),
            self.exported_globals.iter().map(Global::size).sum::<u64>(),
            self.certified_data.len() as u64,
            (self.wasm_chunk_store.len() as u64).saturating_mul(WASM_CHUNK_ACCOUNTED_BYTES),
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    /// The recorded size of a region.
    pub fn region_size(&self, region: SnapshotRegion) -> u64 {
        match region {
            SnapshotRegion::WasmModule => self.wasm_module.len(),
            SnapshotRegion::WasmMemory => self.wasm_memory.size_bytes(),
            SnapshotRegion::StableMemory => self.stable_memory.size_bytes(),
        }
    }
}

/// A canister snapshot: its content, which only this module changes (so the memoised checksum
/// can never go stale), plus provenance.
#[derive(Clone, Debug)]
pub struct CanisterSnapshot {
    id: SnapshotId,
    pub taken_at_timestamp: u64,
    pub canister_version: u64,
    pub source: SnapshotSource,
    pub label: Option<String>,
    content: SnapshotContent,
    /// For a snapshot created by `upload_canister_snapshot_metadata` and not yet loaded: what
    /// has been written.
    upload: Option<UploadState>,
    /// Memoised [`SnapshotContent::checksum`]; cleared by anything that changes the content.
    checksum: OnceLock<Hash>,
}

/// The byte ranges an upload has written, per region (`spec/transfer.md`, completeness).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadState {
    pub wasm_module: ByteRanges,
    pub wasm_memory: ByteRanges,
    pub stable_memory: ByteRanges,
}

/// A region of a snapshot that data is read from or uploaded to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotRegion {
    WasmModule,
    WasmMemory,
    StableMemory,
}

impl SnapshotRegion {
    pub fn name(self) -> &'static str {
        match self {
            SnapshotRegion::WasmModule => "wasm_module",
            SnapshotRegion::WasmMemory => "wasm_memory",
            SnapshotRegion::StableMemory => "stable_memory",
        }
    }
}

/// Why the store refuses a request. Messages are the replica's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    NotFound {
        snapshot_id: SnapshotId,
        canister_id: Principal,
    },
    WrongCanister {
        snapshot_id: SnapshotId,
        canister_id: Principal,
    },
    QuotaReached {
        canister_id: Principal,
        limit: usize,
    },
    NoCode {
        canister_id: Principal,
    },
    /// The canister's snapshot counter is at `u64::MAX`: a new id would reuse an old one.
    IdsExhausted {
        canister_id: Principal,
    },
}

impl SnapshotError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SnapshotError::NotFound { .. } => ErrorCode::CanisterSnapshotNotFound,
            SnapshotError::WrongCanister { .. }
            | SnapshotError::QuotaReached { .. }
            | SnapshotError::NoCode { .. }
            | SnapshotError::IdsExhausted { .. } => ErrorCode::CanisterRejectedMessage,
        }
    }
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::NotFound {
                snapshot_id,
                canister_id,
            } => write!(
                f,
                "Could not find the snapshot ID {snapshot_id} for canister {canister_id}."
            ),
            SnapshotError::WrongCanister {
                snapshot_id,
                canister_id,
            } => write!(
                f,
                "The snapshot {snapshot_id} does not belong to canister {canister_id}."
            ),
            SnapshotError::QuotaReached { canister_id, limit } => write!(
                f,
                "Canister {canister_id} has reached the maximum number of snapshots allowed: \
                 {limit}. Delete one, or pass it as `replace_snapshot`."
            ),
            SnapshotError::NoCode { canister_id } => write!(
                f,
                "Canister {canister_id} has no code installed: there is nothing to snapshot. \
                 Install code first."
            ),
            SnapshotError::IdsExhausted { canister_id } => write!(
                f,
                "Canister {canister_id} has used every snapshot id (its counter is at its \
                 maximum) and ids are never reused: create a new canister for new snapshots."
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<SnapshotError> for UserError {
    fn from(err: SnapshotError) -> Self {
        UserError::new(err.code(), err)
    }
}

/// The canister's snapshot counter after allocating one more id: checked, since a counter
/// that wrapped would hand out an id again.
fn next_snapshot_id(canister: &CanisterState) -> Result<u64, SnapshotError> {
    canister
        .next_snapshot_id
        .checked_add(1)
        .ok_or(SnapshotError::IdsExhausted {
            canister_id: canister.canister_id,
        })
}

impl CanisterSnapshot {
    /// Captures `canister` as a new snapshot stamped `time`, and advances the canister's
    /// snapshot counter. O(1) in the size of its memories.
    pub fn capture(
        canister: &mut CanisterState,
        time: u64,
        label: Option<String>,
    ) -> Result<Self, SnapshotError> {
        let next_snapshot_id = next_snapshot_id(canister)?;
        let content = SnapshotContent::of_canister(canister).ok_or(SnapshotError::NoCode {
            canister_id: canister.canister_id,
        })?;
        let snapshot = Self::from_parts(
            SnapshotId::new(canister.canister_id, canister.next_snapshot_id),
            SnapshotSource::TakenFromCanister,
            time,
            canister.canister_version,
            label,
            content,
            None,
        );
        canister.next_snapshot_id = next_snapshot_id;
        Ok(snapshot)
    }

    /// An uploaded snapshot's starting point, with a fresh id: `content` holds the declared
    /// sizes, zeros or a base snapshot's bytes (an incremental upload); `upload` records what
    /// counts as written already.
    pub fn for_upload(
        canister: &mut CanisterState,
        time: u64,
        content: SnapshotContent,
        upload: UploadState,
    ) -> Result<Self, SnapshotError> {
        let next_snapshot_id = next_snapshot_id(canister)?;
        let snapshot = Self::from_parts(
            SnapshotId::new(canister.canister_id, canister.next_snapshot_id),
            SnapshotSource::MetadataUpload,
            time,
            canister.canister_version,
            None,
            content,
            Some(upload),
        );
        canister.next_snapshot_id = next_snapshot_id;
        Ok(snapshot)
    }

    /// A snapshot from its parts, as a checkpoint stored it. Advances no counter.
    pub fn from_parts(
        id: SnapshotId,
        source: SnapshotSource,
        taken_at_timestamp: u64,
        canister_version: u64,
        label: Option<String>,
        content: SnapshotContent,
        upload: Option<UploadState>,
    ) -> Self {
        CanisterSnapshot {
            id,
            taken_at_timestamp,
            canister_version,
            source,
            label,
            content,
            upload,
            checksum: OnceLock::new(),
        }
    }

    /// What the snapshot holds. Read-only: only uploads change it, through
    /// [`Self::write_region`] and [`Self::add_chunk`], which forget the memoised checksum.
    pub fn content(&self) -> &SnapshotContent {
        &self.content
    }

    /// Lets the state manager serve the memories' pages from a checkpoint's page files instead
    /// of the heap. `rebase` must change no byte, so the memoised checksum stays valid.
    pub fn rebase_memories(&mut self, mut rebase: impl FnMut(&mut Memory)) {
        rebase(&mut self.content.wasm_memory);
        rebase(&mut self.content.stable_memory);
    }

    /// What an upload has written so far, while the snapshot still accepts data.
    pub fn upload(&self) -> Option<&UploadState> {
        self.upload.as_ref()
    }

    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    pub fn canister_id(&self) -> Principal {
        self.id.canister_id()
    }

    /// Replaces `canister`'s code, memories, globals, certified data and chunk store with this
    /// snapshot's (O(1): the memories are shared); for an uploaded snapshot, also the timer and
    /// hook status it declared. Cycles, controllers, settings, version and history are left to
    /// the caller.
    pub fn restore_into(&self, canister: &mut CanisterState) {
        let content = &self.content;
        canister.execution_state = Some(ExecutionState {
            wasm_module: content.wasm_module.clone(),
            wasm_memory: content.wasm_memory.clone(),
            stable_memory: content.stable_memory.clone(),
            exported_globals: content.exported_globals.clone(),
        });
        canister.certified_data = content.certified_data.clone();
        canister.wasm_chunk_store = content.wasm_chunk_store.clone();
        if self.source == SnapshotSource::MetadataUpload {
            if let Some(timer) = content.global_timer {
                canister.global_timer = timer.deadline();
            }
            if let Some(status) = content.on_low_wasm_memory_hook_status {
                canister.on_low_wasm_memory_hook_status = status;
            }
        }
    }

    /// [`SnapshotContent::total_size`].
    pub fn total_size(&self) -> u64 {
        self.content.total_size()
    }

    /// The snapshot checksum of `spec/checksum.md`, memoised. The first call costs the hashing
    /// of the pages changed since any memory sharing them was last hashed.
    pub fn checksum(&self) -> Hash {
        *self.checksum.get_or_init(|| self.content.checksum())
    }

    /// The recorded size of a region.
    pub fn region_size(&self, region: SnapshotRegion) -> u64 {
        self.content.region_size(region)
    }

    /// Reads `[offset, offset + len)` of a region; `None` if the range is outside it.
    pub fn read_region(&self, region: SnapshotRegion, offset: u64, len: u64) -> Option<Vec<u8>> {
        let end = offset.checked_add(len)?;
        if end > self.region_size(region) {
            return None;
        }
        let content = &self.content;
        match region {
            SnapshotRegion::WasmModule => content
                .wasm_module
                .bytes()
                .get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?)
                .map(<[u8]>::to_vec),
            SnapshotRegion::WasmMemory => content.wasm_memory.read_vec(offset, len).ok(),
            SnapshotRegion::StableMemory => content.stable_memory.read_vec(offset, len).ok(),
        }
    }

    /// Writes uploaded bytes into a region and records them as written. The caller has
    /// checked that this is an uploaded snapshot and that the range is inside the region.
    pub fn write_region(&mut self, region: SnapshotRegion, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        debug_assert!(
            end <= self.region_size(region),
            "range checked by the caller"
        );
        let content = &mut self.content;
        let written = match region {
            SnapshotRegion::WasmModule => {
                usize::try_from(offset).is_ok_and(|offset| content.wasm_module.write(offset, data))
            }
            SnapshotRegion::WasmMemory => content.wasm_memory.write(offset, data).is_ok(),
            SnapshotRegion::StableMemory => content.stable_memory.write(offset, data).is_ok(),
        };
        debug_assert!(written, "range checked by the caller");
        if !written {
            return;
        }
        if let Some(upload) = &mut self.upload {
            let ranges = match region {
                SnapshotRegion::WasmModule => &mut upload.wasm_module,
                SnapshotRegion::WasmMemory => &mut upload.wasm_memory,
                SnapshotRegion::StableMemory => &mut upload.stable_memory,
            };
            ranges.insert(offset, end);
        }
        self.checksum.take();
    }

    /// Whether uploads may still write into this snapshot: created by an upload and never
    /// loaded. A load seals it ([`Self::seal`]), as the replica makes a loaded snapshot
    /// immutable (dfinity/ic #11029), so what a canister runs is never changed under it.
    pub fn accepts_data(&self) -> bool {
        self.upload.is_some()
    }

    /// Makes an uploaded snapshot immutable: called when it is loaded.
    pub fn seal(&mut self) {
        self.upload = None;
    }

    /// Adds a chunk to the chunk store (an upload), keyed by its SHA-256.
    pub fn add_chunk(&mut self, chunk: Vec<u8>) -> Hash {
        let hash = crate::memory::checksum::sha256(&chunk);
        self.content.wasm_chunk_store.insert(hash, chunk.into());
        self.checksum.take();
        hash
    }

    /// Whether an uploaded snapshot may be loaded: its module must be complete (a module with
    /// holes is not a module). Memories need not be: a range never written reads as zero, which
    /// is what a downloaded memory's all-zero slices, skipped by uploaders, mean
    /// (`spec/transfer.md`). Returns the first missing module range.
    pub fn missing_module_range(&self) -> Option<(u64, u64)> {
        self.upload
            .as_ref()
            .and_then(|u| u.wasm_module.first_gap(self.content.wasm_module.len()))
    }
}

/// The parts the snapshot checksum is made of, each already reduced to a hash where the spec
/// says so. Built from a live snapshot or from a downloaded directory alike.
pub struct SnapshotDigest<'a> {
    pub wasm_module_hash: Hash,
    pub wasm_memory_root: Hash,
    pub stable_memory_root: Hash,
    pub exported_globals: &'a [Global],
    pub certified_data: &'a [u8],
    /// Chunk hashes in ascending order.
    pub chunk_hashes: Vec<Hash>,
}

const SNAPSHOT_TAG: u8 = 0x03;
const SNAPSHOT_DOMAIN: &[u8] = b"ic-canister-snapshots/snapshot/v1";

/// The snapshot checksum (`spec/checksum.md`): binds the module hash, both memory roots, the
/// globals, the certified data and the chunk hashes. Provenance (time, version, source, label)
/// is left out so a snapshot downloaded and uploaded again keeps its checksum.
pub fn snapshot_checksum(digest: &SnapshotDigest<'_>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([SNAPSHOT_TAG]);
    hasher.update(SNAPSHOT_DOMAIN);
    hasher.update(digest.wasm_module_hash);
    hasher.update(digest.wasm_memory_root);
    hasher.update(digest.stable_memory_root);
    let mut globals = Vec::with_capacity(
        digest
            .exported_globals
            .len()
            .saturating_mul(17)
            .saturating_add(4),
    );
    globals.extend_from_slice(&(digest.exported_globals.len() as u32).to_be_bytes());
    for global in digest.exported_globals {
        global.encode(&mut globals);
    }
    hasher.update(&globals);
    hasher.update((digest.certified_data.len() as u32).to_be_bytes());
    hasher.update(digest.certified_data);
    hasher.update((digest.chunk_hashes.len() as u32).to_be_bytes());
    for hash in &digest.chunk_hashes {
        hasher.update(hash);
    }
    hasher.finalize().into()
}

/// Every snapshot on the subnet, ordered by id, with the per-canister quota.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    snapshots: BTreeMap<SnapshotId, CanisterSnapshot>,
    max_snapshots_per_canister: usize,
}

impl SnapshotStore {
    pub fn new(max_snapshots_per_canister: usize) -> Self {
        SnapshotStore {
            snapshots: BTreeMap::new(),
            max_snapshots_per_canister,
        }
    }

    pub fn max_snapshots_per_canister(&self) -> usize {
        self.max_snapshots_per_canister
    }

    /// The snapshots of one canister, oldest first. O(log n + k).
    pub fn list(&self, canister_id: Principal) -> impl Iterator<Item = &CanisterSnapshot> {
        self.snapshots
            .range(SnapshotId::range_of(canister_id))
            .map(|(_, snapshot)| snapshot)
    }

    /// Every snapshot, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &CanisterSnapshot> {
        self.snapshots.values()
    }

    pub fn count(&self, canister_id: Principal) -> usize {
        self.list(canister_id).count()
    }

    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The snapshot `snapshot_id` if it exists and belongs to `canister_id`.
    pub fn get(
        &self,
        canister_id: Principal,
        snapshot_id: &SnapshotId,
    ) -> Result<&CanisterSnapshot, SnapshotError> {
        match self.snapshots.get(snapshot_id) {
            None => Err(SnapshotError::NotFound {
                snapshot_id: snapshot_id.clone(),
                canister_id,
            }),
            Some(snapshot) if snapshot.canister_id() != canister_id => {
                Err(SnapshotError::WrongCanister {
                    snapshot_id: snapshot_id.clone(),
                    canister_id,
                })
            }
            Some(snapshot) => Ok(snapshot),
        }
    }

    /// Like [`Self::get`], for changing an uploaded snapshot.
    pub fn get_mut(
        &mut self,
        canister_id: Principal,
        snapshot_id: &SnapshotId,
    ) -> Result<&mut CanisterSnapshot, SnapshotError> {
        self.get(canister_id, snapshot_id)?;
        self.snapshots
            .get_mut(snapshot_id)
            .ok_or_else(|| SnapshotError::NotFound {
                snapshot_id: snapshot_id.clone(),
                canister_id,
            })
    }

    /// Whether `canister_id` may add a snapshot: `replace` must exist and belong to it;
    /// without `replace`, the quota must have room.
    pub fn check_room(
        &self,
        canister_id: Principal,
        replace: Option<&SnapshotId>,
    ) -> Result<(), SnapshotError> {
        match replace {
            Some(id) => self.get(canister_id, id).map(|_| ()),
            None if self.count(canister_id) >= self.max_snapshots_per_canister => {
                Err(SnapshotError::QuotaReached {
                    canister_id,
                    limit: self.max_snapshots_per_canister,
                })
            }
            None => Ok(()),
        }
    }

    /// Stores `snapshot`, first removing `replace`. The caller has passed [`Self::check_room`]
    /// for the same arguments.
    pub fn commit(&mut self, snapshot: CanisterSnapshot, replace: Option<&SnapshotId>) {
        if let Some(id) = replace {
            let removed = self.snapshots.remove(id);
            debug_assert!(removed.is_some(), "check_room verified {id} exists");
        }
        debug_assert!(self.count(snapshot.canister_id()) < self.max_snapshots_per_canister);
        self.snapshots.insert(snapshot.id.clone(), snapshot);
    }

    /// Takes a snapshot of `canister` at `time`: room check, capture, commit. The management
    /// canister runs the same three steps with its own checks in between.
    pub fn take(
        &mut self,
        canister: &mut CanisterState,
        time: u64,
        replace: Option<&SnapshotId>,
        label: Option<String>,
    ) -> Result<SnapshotId, SnapshotError> {
        self.check_room(canister.canister_id, replace)?;
        let snapshot = CanisterSnapshot::capture(canister, time, label)?;
        let id = snapshot.id.clone();
        self.commit(snapshot, replace);
        Ok(id)
    }

    /// Puts back a snapshot read from storage, whatever the quota is now (it held when the
    /// snapshot was stored).
    pub fn restore(&mut self, snapshot: CanisterSnapshot) {
        self.snapshots.insert(snapshot.id.clone(), snapshot);
    }

    pub fn delete(
        &mut self,
        canister_id: Principal,
        snapshot_id: &SnapshotId,
    ) -> Result<CanisterSnapshot, SnapshotError> {
        self.get(canister_id, snapshot_id)?;
        self.snapshots
            .remove(snapshot_id)
            .ok_or_else(|| SnapshotError::NotFound {
                snapshot_id: snapshot_id.clone(),
                canister_id,
            })
    }

    /// Deletes every snapshot of `canister_id` (on `delete_canister`).
    pub fn delete_all(&mut self, canister_id: Principal) {
        let ids: Vec<SnapshotId> = self.list(canister_id).map(|s| s.id.clone()).collect();
        for id in ids {
            self.snapshots.remove(&id);
        }
    }

    /// Sum of `total_size` over the canister's snapshots: `memory_metrics.snapshots_size`.
    pub fn snapshots_size(&self, canister_id: Principal) -> u64 {
        self.list(canister_id)
            .map(CanisterSnapshot::total_size)
            .sum()
    }

    /// Sum of `total_size` over every snapshot on the subnet, recounted: O(snapshots). The
    /// replicated state keeps it as a running total (`ReplicatedState::memory_totals`).
    pub fn total_size(&self) -> u64 {
        self.iter().map(CanisterSnapshot::total_size).sum()
    }

    /// Bytes the canister's snapshots really hold beyond its live state: pages and modules
    /// not shared with `canister`, each counted once however many snapshots share it. This is
    /// the RAM a snapshot costs. O(pages changed since the snapshots were taken · height).
    pub fn unique_bytes(&self, canister: &CanisterState) -> u64 {
        let empty = Memory::new();
        let live = canister.execution_state.as_ref();
        let live_wasm = live.map_or(&empty, |e| &e.wasm_memory);
        let live_stable = live.map_or(&empty, |e| &e.stable_memory);
        let mut seen = HashSet::new();
        let mut pages = 0u64;
        let mut modules: Vec<&WasmModule> = Vec::new();
        for snapshot in self.list(canister.canister_id) {
            let content = snapshot.content();
            let mut count = |_: u64, _: &crate::memory::Page| pages = pages.saturating_add(1);
            content
                .wasm_memory
                .page_map()
                .for_each_page_not_shared_with(live_wasm.page_map(), &mut seen, &mut count);
            content
                .stable_memory
                .page_map()
                .for_each_page_not_shared_with(live_stable.page_map(), &mut seen, &mut count);
            let module = &content.wasm_module;
            let shared_with_live = live.is_some_and(|e| e.wasm_module.shares_bytes_with(module));
            if !shared_with_live && !modules.iter().any(|m| m.shares_bytes_with(module)) {
                modules.push(module);
            }
        }
        modules
            .iter()
            .map(|m| m.len())
            .fold(pages.saturating_mul(PAGE_SIZE as u64), u64::saturating_add)
    }
}

#[cfg(test)]
mod tests;

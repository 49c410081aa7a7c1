//! Snapshot transfer: read metadata and data (download), upload metadata and data (upload).
//! Semantics in `spec/transfer.md`.

use std::sync::OnceLock;

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterTimer, ChunkHash, ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult,
    ReadCanisterSnapshotMetadataArgs, SnapshotDataKind, SnapshotDataOffset,
    UploadCanisterSnapshotMetadataResult,
};

use super::snapshots::MemoryChange;
use super::types::{
    MAX_CERTIFIED_DATA_BYTES, MAX_GLOBALS, MAX_SLICE_BYTES, MAX_WASM_CHUNK_BYTES, MAX_WASM_CHUNKS,
    MAX_WASM_MODULE_BYTES, SnapshotMetadata, UploadCanisterSnapshotDataArgsRef,
    UploadCanisterSnapshotMetadataArgs,
};
use super::{
    ManagementCanister, canister, canister_mut, canister_not_found, check_snapshot_viewer,
    controlled, invalid_payload, reply,
};
use crate::memory::{MAX_WASM_MEMORY_BYTES, Memory, PAGE_SIZE, WASM_PAGE_SIZE};
use crate::replicated_state::ReplicatedState;
use crate::snapshots::{
    CanisterSnapshot, SnapshotContent, SnapshotId, SnapshotRegion, UploadState,
};
use crate::state::{
    ChunkStore, Global, GlobalTimer, HookStatus, WASM_CHUNK_ACCOUNTED_BYTES, WasmModule,
};

/// The reply of `read_canister_snapshot_data` for `len` bytes that `fill` appends: exactly the
/// bytes of `candid::encode_one(ReadCanisterSnapshotDataResult { chunk })`, built without first
/// gathering the chunk into a `Vec` of its own, so each byte is copied once, from the pages into
/// the reply (`benches/README.md`, "Copies on the message path").
///
/// The encoding of `record { chunk : blob }` is a fixed header (magic, type table, argument
/// type), the chunk's length in LEB128, then its bytes. The header is taken from Candid's own
/// encoding of an empty chunk (whose last byte is the LEB128 of 0), so it cannot drift from
/// what `candid` writes.
fn read_reply(
    len: u64,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), UserError>,
) -> Result<Vec<u8>, UserError> {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    // `record { chunk : blob }` with an empty blob: Candid encodes every value of that type.
    #[allow(clippy::expect_used)]
    let header = HEADER.get_or_init(|| {
        let mut empty = candid::encode_one(ReadCanisterSnapshotDataResult { chunk: Vec::new() })
            .expect("a fixed Candid type encodes");
        let zero_length = empty.pop();
        debug_assert_eq!(zero_length, Some(0), "the empty blob's LEB128 length");
        empty
    });
    let capacity = header
        .len()
        .saturating_add(10)
        .saturating_add(usize::try_from(len).unwrap_or(0));
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(header);
    let mut rest = len;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    let start = out.len();
    fill(&mut out)?;
    debug_assert_eq!(
        out.len().saturating_sub(start) as u64,
        len,
        "fill appends exactly len bytes"
    );
    Ok(out)
}

/// Appends bytes `offset .. offset + len` of `memory` (bounds checked by the caller) page by
/// page, straight from the pages.
/// A checkpointed page that fails its hash is the replica's `CertifiedStateUnavailable`, never
/// data.
// The arithmetic keeps `at < end` and `in_page < PAGE_SIZE`, so nothing over- or underflows
// (`end` is saturated; the caller checked `offset + len` against the region's size).
#[allow(clippy::arithmetic_side_effects)]
fn extend_from_pages(
    out: &mut Vec<u8>,
    memory: &Memory,
    offset: u64,
    len: u64,
) -> Result<(), UserError> {
    let pages = memory.page_map();
    let (mut at, end) = (offset, offset.saturating_add(len));
    while at < end {
        let in_page = (at % PAGE_SIZE as u64) as usize;
        let n = (PAGE_SIZE - in_page).min((end - at) as usize);
        let page = pages
            .page_bytes(at / PAGE_SIZE as u64)
            .map_err(|err| crate::execution::trap_on_memory_error(err.into()))?;
        out.extend_from_slice(page.get(in_page..in_page + n).unwrap_or_default());
        at += n as u64;
    }
    Ok(())
}

fn region_of_read(kind: &SnapshotDataKind) -> Option<(SnapshotRegion, u64, u64)> {
    match *kind {
        SnapshotDataKind::WasmModule { offset, size } => {
            Some((SnapshotRegion::WasmModule, offset, size))
        }
        SnapshotDataKind::WasmMemory { offset, size } => {
            Some((SnapshotRegion::WasmMemory, offset, size))
        }
        SnapshotDataKind::StableMemory { offset, size } => {
            Some((SnapshotRegion::StableMemory, offset, size))
        }
        SnapshotDataKind::WasmChunk { .. } => None,
    }
}

fn region_of_upload(kind: &SnapshotDataOffset) -> Option<(SnapshotRegion, u64)> {
    match *kind {
        SnapshotDataOffset::WasmModule { offset } => Some((SnapshotRegion::WasmModule, offset)),
        SnapshotDataOffset::WasmMemory { offset } => Some((SnapshotRegion::WasmMemory, offset)),
        SnapshotDataOffset::StableMemory { offset } => Some((SnapshotRegion::StableMemory, offset)),
        SnapshotDataOffset::WasmChunk => None,
    }
}

/// `InvalidManagementPayload` for a slice larger than [`MAX_SLICE_BYTES`].
fn check_slice_size(len: u64) -> Result<(), UserError> {
    if len > MAX_SLICE_BYTES {
        return Err(invalid_payload(format!(
            "a slice is at most {MAX_SLICE_BYTES} bytes, got {len}: split it"
        )));
    }
    Ok(())
}

/// `InvalidManagementPayload` unless `[offset, offset + len)` lies inside the region.
fn check_slice_bounds(
    snapshot: &CanisterSnapshot,
    region: SnapshotRegion,
    offset: u64,
    len: u64,
) -> Result<(), UserError> {
    match offset.checked_add(len) {
        Some(end) if end <= snapshot.region_size(region) => Ok(()),
        _ => Err(outside(snapshot, region, offset, len)),
    }
}

fn outside(
    snapshot: &CanisterSnapshot,
    region: SnapshotRegion,
    offset: u64,
    len: u64,
) -> UserError {
    invalid_payload(format!(
        "slice [{offset}, {offset} + {len}) is outside the {} of snapshot {}, which has {} bytes",
        region.name(),
        snapshot.id(),
        snapshot.region_size(region)
    ))
}

/// The replica's `WasmChunkStoreError`: `CanisterContractViolation`.
fn chunk_store_error(message: String) -> UserError {
    UserError::new(
        ErrorCode::CanisterContractViolation,
        format!("Error from Wasm chunk store: {message}."),
    )
}

impl ManagementCanister<'_> {
    pub(super) fn read_canister_snapshot_metadata(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: ReadCanisterSnapshotMetadataArgs,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let canister = canister(state, args.canister_id)?;
        check_snapshot_viewer(canister, sender)?;
        let snapshot = state.snapshots.get(args.canister_id, &snapshot_id)?;
        let content = snapshot.content();
        reply((SnapshotMetadata {
            source: snapshot.source.into(),
            taken_at_timestamp: snapshot.taken_at_timestamp,
            wasm_module_size: content.wasm_module.len(),
            globals: content.exported_globals.iter().map(Into::into).collect(),
            wasm_memory_size: content.wasm_memory.size_bytes(),
            stable_memory_size: content.stable_memory.size_bytes(),
            wasm_chunk_store: content
                .wasm_chunk_store
                .keys()
                .map(|hash| ChunkHash {
                    hash: hash.to_vec(),
                })
                .collect(),
            canister_version: snapshot.canister_version,
            certified_data: content.certified_data.clone(),
            global_timer: content.global_timer.map(CanisterTimer::from),
            on_low_wasm_memory_hook_status: content.on_low_wasm_memory_hook_status.map(Into::into),
            label: snapshot.label.clone(),
            checksum: snapshot.checksum().to_vec(),
        },))
    }

    /// The replica's order (canister_manager.rs, `read_snapshot_data`): the viewer, the
    /// snapshot, the slice size, then the charge for the baseline plus the size *requested* (a
    /// chunk counts as [`WASM_CHUNK_ACCOUNTED_BYTES`]), paid up front by the canister whoever
    /// reads; then the bounds and the chunk lookup. A refusal after the charge keeps it, as on
    /// the replica: the only refusals here that change the state.
    pub(super) fn read_canister_snapshot_data(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: ReadCanisterSnapshotDataArgs,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let canister = canister(state, args.canister_id)?;
        check_snapshot_viewer(canister, sender)?;
        state.snapshots.get(args.canister_id, &snapshot_id)?;
        let requested = match region_of_read(&args.kind) {
            Some((_, _, size)) => {
                check_slice_size(size)?;
                size
            }
            None => WASM_CHUNK_ACCOUNTED_BYTES,
        };
        self.charge(
            state,
            args.canister_id,
            self.config
                .read_data_base_instructions
                .saturating_add(requested),
        )?;
        let snapshot = state.snapshots.get(args.canister_id, &snapshot_id)?;
        match (region_of_read(&args.kind), &args.kind) {
            (Some((region, offset, size)), _) => {
                // From here `offset + size` is within the region: the fills below cannot fail.
                check_slice_bounds(snapshot, region, offset, size)?;
                let content = snapshot.content();
                read_reply(size, |out| match region {
                    SnapshotRegion::WasmModule => {
                        let bytes = content.wasm_module.bytes();
                        let range = usize::try_from(offset).unwrap_or(usize::MAX)
                            ..usize::try_from(offset.saturating_add(size)).unwrap_or(usize::MAX);
                        out.extend_from_slice(bytes.get(range).unwrap_or_default());
                        Ok(())
                    }
                    SnapshotRegion::WasmMemory => {
                        extend_from_pages(out, &content.wasm_memory, offset, size)
                    }
                    SnapshotRegion::StableMemory => {
                        extend_from_pages(out, &content.stable_memory, offset, size)
                    }
                })
            }
            (None, SnapshotDataKind::WasmChunk { hash }) => <[u8; 32]>::try_from(hash.as_slice())
                .ok()
                .and_then(|key| snapshot.content().wasm_chunk_store.get(&key))
                .map(|chunk| {
                    read_reply(chunk.len() as u64, |out| {
                        out.extend_from_slice(chunk);
                        Ok(())
                    })
                })
                .ok_or_else(|| {
                    chunk_store_error(format!(
                        "snapshot {snapshot_id} has no Wasm chunk with hash {}",
                        crate::memory::checksum::hex(hash)
                    ))
                })?,
            (None, _) => Err(invalid_payload(
                "read_canister_snapshot_data: unknown data kind".to_string(),
            )),
        }
    }

    /// Charges `instructions` to the canister, refusing (and charging nothing) if it cannot pay
    /// above its freezing threshold.
    fn charge(
        &self,
        state: &mut ReplicatedState,
        canister_id: Principal,
        instructions: u64,
    ) -> Result<(), UserError> {
        let canister = canister(state, canister_id)?;
        let usage = state.canister_memory_usage(canister);
        let change = MemoryChange {
            after: usage,
            before: usage,
            instructions,
        };
        let charge = self.check_memory_and_cycles(state, canister, &change)?;
        charge.apply(canister_mut(state, canister_id)?);
        Ok(())
    }

    pub(super) fn upload_canister_snapshot_metadata(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: UploadCanisterSnapshotMetadataArgs,
    ) -> Result<Vec<u8>, UserError> {
        // The replica's order (canister_manager.rs, create_snapshot_from_metadata): the
        // canister and its controller, the metadata, `replace_snapshot` or the quota, the
        // heap-delta rate, then memory and cycles.
        controlled(state, args.canister_id, sender)?;
        if args.wasm_module_size == 0 || args.wasm_module_size > MAX_WASM_MODULE_BYTES {
            return Err(invalid_payload(format!(
                "wasm_module_size must be between 1 and {MAX_WASM_MODULE_BYTES} bytes, got {}",
                args.wasm_module_size
            )));
        }
        for (name, size, limit) in [
            (
                "wasm_memory_size",
                args.wasm_memory_size,
                MAX_WASM_MEMORY_BYTES,
            ),
            (
                "stable_memory_size",
                args.stable_memory_size,
                self.config.stable_memory_limit_bytes,
            ),
        ] {
            if !size.is_multiple_of(WASM_PAGE_SIZE) || size > limit {
                return Err(invalid_payload(format!(
                    "{name} must be a multiple of 65536 (the Wasm page size) and at most \
                     {limit}, got {size}"
                )));
            }
        }
        if args.certified_data.len() > MAX_CERTIFIED_DATA_BYTES {
            return Err(invalid_payload(format!(
                "certified_data is at most {MAX_CERTIFIED_DATA_BYTES} bytes, got {}",
                args.certified_data.len()
            )));
        }
        if args.globals.len() > MAX_GLOBALS {
            return Err(invalid_payload(format!(
                "at most {MAX_GLOBALS} globals, got {}",
                args.globals.len()
            )));
        }
        let globals = args
            .globals
            .iter()
            .map(Global::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid_payload)?;
        // Kept as given: `null` means "leave the canister's as is" on load.
        let global_timer = args.global_timer.as_ref().map(GlobalTimer::from);
        let hook = args
            .on_low_wasm_memory_hook_status
            .as_ref()
            .map(HookStatus::from);
        let replace = args
            .replace_snapshot
            .as_deref()
            .map(|b| SnapshotId::from_bytes(b))
            .transpose()?;
        let base_id = args
            .base_snapshot
            .as_deref()
            .map(|b| SnapshotId::from_bytes(b))
            .transpose()?;

        let canister = controlled(state, args.canister_id, sender)?;
        state
            .snapshots
            .check_room(args.canister_id, replace.as_ref())?;
        self.check_heap_delta_rate(canister)?;
        let base = base_id
            .as_ref()
            .map(|id| state.snapshots.get(args.canister_id, id))
            .transpose()?;
        // Start from zeros, or from the base snapshot resized to the declared sizes.
        let mut upload = UploadState::default();
        let (wasm_module, mut wasm_memory, mut stable_memory) = match base.map(|b| b.content()) {
            Some(base_content) => {
                // Only a complete module is inherited: the never-written bytes of an
                // incomplete base are zeros, not a module.
                let complete = base.is_some_and(|b| b.missing_module_range().is_none());
                let module = if complete && base_content.wasm_module.len() == args.wasm_module_size
                {
                    upload.wasm_module.insert(0, args.wasm_module_size);
                    base_content.wasm_module.clone()
                } else {
                    WasmModule::zeroed(args.wasm_module_size as usize)
                };
                (
                    module,
                    base_content.wasm_memory.clone(),
                    base_content.stable_memory.clone(),
                )
            }
            None => (
                WasmModule::zeroed(args.wasm_module_size as usize),
                Memory::new(),
                Memory::new(),
            ),
        };
        let memory_error = |e: crate::memory::MemoryError| invalid_payload(e.to_string());
        wasm_memory
            .resize(args.wasm_memory_size, MAX_WASM_MEMORY_BYTES)
            .map_err(memory_error)?;
        stable_memory
            .resize(
                args.stable_memory_size,
                self.config.stable_memory_limit_bytes,
            )
            .map_err(memory_error)?;
        let content = SnapshotContent {
            wasm_module,
            wasm_memory,
            stable_memory,
            exported_globals: globals,
            certified_data: args.certified_data,
            wasm_chunk_store: ChunkStore::new(),
            global_timer,
            on_low_wasm_memory_hook_status: hook,
        };
        let change = MemoryChange::new_snapshot(
            self.config,
            state,
            canister,
            replace.as_ref(),
            content.total_size(),
        )?;
        let charge = self.check_memory_and_cycles(state, canister, &change)?;

        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .ok_or_else(|| canister_not_found(args.canister_id))?;
        let snapshot = CanisterSnapshot::for_upload(canister, time, content, upload)?;
        let snapshot_id = snapshot.id().to_bytes();
        state.snapshots.commit(snapshot, replace.as_ref());
        charge.apply(canister);
        reply((UploadCanisterSnapshotMetadataResult { snapshot_id },))
    }

    /// The replica's order (canister_manager.rs, `write_snapshot_data`): the controller, the
    /// snapshot, a snapshot that accepts data (uploaded and never loaded: #11029), the
    /// heap-delta rate (a chunk-store error there), then the data: a slice is charged its bytes
    /// and then bounds-checked, and the charge stays if the bounds are wrong, as on the replica;
    /// a chunk already present is accepted without a charge, a new one must fit the chunk
    /// store and the canister's memory (it counts [`WASM_CHUNK_ACCOUNTED_BYTES`]) and is charged
    /// its bytes.
    pub(super) fn upload_canister_snapshot_data(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: UploadCanisterSnapshotDataArgsRef<'_>,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(args.snapshot_id)?;
        let canister = controlled(state, args.canister_id, sender)?;
        let snapshot = state.snapshots.get(args.canister_id, &snapshot_id)?;
        if !snapshot.accepts_data() {
            return Err(UserError::new(
                ErrorCode::CanisterSnapshotImmutable,
                format!(
                    "Snapshot {snapshot_id} does not accept data: only snapshots created by \
                     upload_canister_snapshot_metadata and not yet loaded can be mutated. Upload \
                     its metadata again to start a new one."
                ),
            ));
        }
        if canister.heap_delta_debit >= self.config.heap_delta_rate_limit_bytes {
            return Err(chunk_store_error(format!(
                "canister {} is heap delta rate limited: current delta debit is {}, but limit \
                 is {}; retry after a few rounds",
                args.canister_id,
                canister.heap_delta_debit,
                self.config.heap_delta_rate_limit_bytes
            )));
        }
        let bytes = args.chunk.len() as u64;
        match region_of_upload(&args.kind) {
            Some((region, offset)) => {
                check_slice_size(bytes)?;
                self.charge(state, args.canister_id, bytes)?;
                let snapshot = state.snapshots.get_mut(args.canister_id, &snapshot_id)?;
                check_slice_bounds(snapshot, region, offset, bytes)?;
                // Straight from the payload into the pages: no decoded copy in between.
                snapshot.write_region(region, offset, args.chunk);
            }
            None => {
                if args.chunk.len() > MAX_WASM_CHUNK_BYTES {
                    return Err(chunk_store_error(format!(
                        "a Wasm chunk is at most {MAX_WASM_CHUNK_BYTES} bytes, got {bytes}"
                    )));
                }
                let hash = crate::memory::checksum::sha256(args.chunk);
                if snapshot.content().wasm_chunk_store.contains_key(&hash) {
                    return reply(());
                }
                if snapshot.content().wasm_chunk_store.len() >= MAX_WASM_CHUNKS {
                    return Err(chunk_store_error(format!(
                        "the Wasm chunk store of snapshot {snapshot_id} is full \
                         ({MAX_WASM_CHUNKS} chunks)"
                    )));
                }
                let usage = state.canister_memory_usage(canister);
                let change = MemoryChange {
                    after: usage.saturating_add(WASM_CHUNK_ACCOUNTED_BYTES),
                    before: usage,
                    instructions: bytes,
                };
                let charge = self.check_memory_and_cycles(state, canister, &change)?;
                charge.apply(canister_mut(state, args.canister_id)?);
                state
                    .snapshots
                    .get_mut(args.canister_id, &snapshot_id)?
                    .add_chunk(args.chunk.to_vec());
            }
        }
        reply(())
    }
}

//! Snapshot transfer: read metadata and data (download), upload metadata and data (upload).
//! Semantics in `spec/transfer.md`.

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
    MAX_WASM_MODULE_BYTES, SnapshotMetadata, UploadCanisterSnapshotDataArgs,
    UploadCanisterSnapshotMetadataArgs,
};
use super::{
    ManagementCanister, canister, check_snapshot_viewer, controlled, invalid_payload, reply,
};
use crate::memory::{MAX_WASM_MEMORY_BYTES, Memory, WASM_PAGE_SIZE};
use crate::replicated_state::ReplicatedState;
use crate::snapshots::{CanisterSnapshot, SnapshotId, SnapshotRegion, UploadState};
use crate::state::{Global, GlobalTimer, HookStatus, WasmModule};

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

/// `InvalidManagementPayload` unless `[offset, offset + len)` is a slice the region allows.
fn check_slice(
    snapshot: &CanisterSnapshot,
    region: SnapshotRegion,
    offset: u64,
    len: u64,
) -> Result<(), UserError> {
    if len > MAX_SLICE_BYTES {
        return Err(invalid_payload(format!(
            "a slice is at most {MAX_SLICE_BYTES} bytes, got {len}: split it"
        )));
    }
    let size = snapshot.region_size(region);
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(invalid_payload(format!(
            "slice [{offset}, {offset} + {len}) is outside the {} of snapshot {}, which has \
             {size} bytes",
            region.name(),
            snapshot.id()
        ))),
    }
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
        reply((SnapshotMetadata {
            source: Some(snapshot.source.into()),
            taken_at_timestamp: snapshot.taken_at_timestamp,
            wasm_module_size: snapshot.wasm_module.len(),
            globals: snapshot
                .exported_globals
                .iter()
                .map(|g| Some(g.into()))
                .collect(),
            wasm_memory_size: snapshot.wasm_memory.size_bytes(),
            stable_memory_size: snapshot.stable_memory.size_bytes(),
            wasm_chunk_store: snapshot
                .wasm_chunk_store
                .keys()
                .map(|hash| ChunkHash {
                    hash: hash.to_vec(),
                })
                .collect(),
            canister_version: snapshot.canister_version,
            certified_data: snapshot.certified_data.clone(),
            global_timer: snapshot.global_timer.map(CanisterTimer::from),
            on_low_wasm_memory_hook_status: snapshot.on_low_wasm_memory_hook_status.map(Into::into),
            label: snapshot.label.clone(),
            checksum: snapshot.checksum().to_vec(),
        },))
    }

    pub(super) fn read_canister_snapshot_data(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: ReadCanisterSnapshotDataArgs,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let canister = canister(state, args.canister_id)?;
        check_snapshot_viewer(canister, sender)?;
        let snapshot = state.snapshots.get(args.canister_id, &snapshot_id)?;
        let chunk = match region_of_read(&args.kind) {
            Some((region, offset, size)) => {
                check_slice(snapshot, region, offset, size)?;
                snapshot
                    .read_region(region, offset, size)
                    .expect("range checked above")
            }
            None => {
                let SnapshotDataKind::WasmChunk { hash } = &args.kind else {
                    unreachable!("region_of_read covers the other kinds")
                };
                let key: [u8; 32] = hash.as_slice().try_into().unwrap_or([0; 32]);
                match snapshot.wasm_chunk_store.get(&key) {
                    Some(chunk) => chunk.to_vec(),
                    None => {
                        return Err(invalid_payload(format!(
                            "snapshot {snapshot_id} has no Wasm chunk with hash {}",
                            crate::memory::checksum::hex(hash)
                        )));
                    }
                }
            }
        };
        self.charge_data_transfer(state, args.canister_id, chunk.len() as u64)?;
        reply((ReadCanisterSnapshotDataResult { chunk },))
    }

    /// Charges `read_data_base_instructions + bytes` instructions, refusing if the canister
    /// cannot pay above its freezing threshold.
    fn charge_data_transfer(
        &self,
        state: &mut ReplicatedState,
        canister_id: Principal,
        bytes: u64,
    ) -> Result<(), UserError> {
        let canister = canister(state, canister_id)?;
        let usage = canister.memory_usage() + state.snapshots.snapshots_size(canister_id);
        let change = MemoryChange {
            after: usage,
            before: usage,
            instructions: self.config.read_data_base_instructions + bytes,
        };
        let cost = self.check_memory_and_cycles(state, canister, &change)?;
        state
            .canisters
            .get_mut(&canister_id)
            .expect("checked above")
            .cycles -= cost;
        Ok(())
    }

    pub(super) fn upload_canister_snapshot_metadata(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: UploadCanisterSnapshotMetadataArgs,
    ) -> Result<Vec<u8>, UserError> {
        // Payload first: every declared size and field must make sense.
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
        let base = base_id
            .as_ref()
            .map(|id| state.snapshots.get(args.canister_id, id))
            .transpose()?;
        let declared = args.wasm_module_size
            + args.wasm_memory_size
            + args.stable_memory_size
            + globals.iter().map(Global::size).sum::<u64>()
            + args.certified_data.len() as u64;
        let change =
            MemoryChange::new_snapshot(self.config, state, canister, replace.as_ref(), declared)?;
        let cost = self.check_memory_and_cycles(state, canister, &change)?;

        // Start from zeros, or from the base snapshot resized to the declared sizes.
        let mut upload = UploadState::default();
        let (wasm_module, mut wasm_memory, mut stable_memory) = match base {
            Some(base) => {
                // Only a complete module is inherited: the never-written bytes of an
                // incomplete base are zeros, not a module.
                let module = if base.wasm_module.len() == args.wasm_module_size
                    && base.missing_module_range().is_none()
                {
                    upload.wasm_module.insert(0, args.wasm_module_size);
                    base.wasm_module.clone()
                } else {
                    WasmModule::zeroed(args.wasm_module_size as usize)
                };
                (module, base.wasm_memory.clone(), base.stable_memory.clone())
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

        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .expect("checked by `controlled` above");
        let snapshot = CanisterSnapshot::for_upload(
            canister,
            time,
            wasm_module,
            wasm_memory,
            stable_memory,
            globals,
            args.certified_data,
            global_timer,
            hook,
            upload,
        );
        let snapshot_id = snapshot.id().to_bytes();
        state.snapshots.commit(snapshot, replace.as_ref());
        canister.cycles -= cost;
        reply((UploadCanisterSnapshotMetadataResult { snapshot_id },))
    }

    pub(super) fn upload_canister_snapshot_data(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: UploadCanisterSnapshotDataArgs,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        controlled(state, args.canister_id, sender)?;
        let snapshot = state.snapshots.get(args.canister_id, &snapshot_id)?;
        if snapshot.upload.is_none() {
            return Err(UserError::new(
                ErrorCode::CanisterSnapshotImmutable,
                format!(
                    "Snapshot {snapshot_id} was taken from the canister, not created by \
                     upload_canister_snapshot_metadata: only uploaded snapshots accept data."
                ),
            ));
        }
        let region = region_of_upload(&args.kind);
        match region {
            Some((region, offset)) => {
                check_slice(snapshot, region, offset, args.chunk.len() as u64)?;
            }
            None => {
                if args.chunk.len() > MAX_WASM_CHUNK_BYTES {
                    return Err(invalid_payload(format!(
                        "a Wasm chunk is at most {MAX_WASM_CHUNK_BYTES} bytes, got {}",
                        args.chunk.len()
                    )));
                }
                if snapshot.wasm_chunk_store.len() >= MAX_WASM_CHUNKS {
                    return Err(invalid_payload(format!(
                        "the Wasm chunk store of snapshot {snapshot_id} is full \
                         ({MAX_WASM_CHUNKS} chunks)"
                    )));
                }
            }
        }
        self.charge_data_transfer(state, args.canister_id, args.chunk.len() as u64)?;
        let snapshot = state.snapshots.get_mut(args.canister_id, &snapshot_id)?;
        match region {
            Some((region, offset)) => snapshot.write_region(region, offset, &args.chunk),
            None => {
                snapshot.add_chunk(args.chunk);
            }
        }
        reply(())
    }
}

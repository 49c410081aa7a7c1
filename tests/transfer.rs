//! Download, upload and cross-canister load through the harness, and the directory format.

mod common;

use std::path::Path;

use candid::{Decode, Encode, Principal};
use canister_snapshots::client::ManagementClient;
use canister_snapshots::transfer::{
    Edits, SnapshotDir, TransferError, TransferOptions, UploadBase,
};
use canister_snapshots::{RejectResponse, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::ErrorCode;
use serde_bytes::ByteBuf;

const MIB: u64 = 1 << 20;

fn user() -> Principal {
    Principal::from_slice(&[0x11; 29])
}

fn canister_with_data(sm: &mut StateMachine, heap: u64, stable: u64) -> Principal {
    let canister = sm.create_canister_with_settings(Some(user()), None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user()));
    let pattern: Vec<u8> = (0..heap).map(|i| (i * 7 % 251) as u8).collect();
    for (i, piece) in pattern.chunks(MIB as usize).enumerate() {
        let arg = Encode!(&(i as u64 * MIB), &ByteBuf::from(piece.to_vec())).unwrap();
        sm.update_call(canister, user(), "write_heap", arg).unwrap();
    }
    if stable > 0 {
        // Sparse stable memory: a record at the start and one at the end.
        sm.update_call(
            canister,
            user(),
            "fill_stable",
            Encode!(&0u64, &stable, &0u8).unwrap(),
        )
        .unwrap();
        sm.update_call(
            canister,
            user(),
            "fill_stable",
            Encode!(&5u64, &100u64, &0xAAu8).unwrap(),
        )
        .unwrap();
        sm.update_call(
            canister,
            user(),
            "fill_stable",
            Encode!(&(stable - 10), &10u64, &0xBBu8).unwrap(),
        )
        .unwrap();
    }
    sm.update_call(
        canister,
        user(),
        "set_global",
        Encode!(&1u32, &-5i64).unwrap(),
    )
    .unwrap();
    sm.update_call(
        canister,
        user(),
        "set_certified_data",
        Encode!(&ByteBuf::from(vec![3u8; 32])).unwrap(),
    )
    .unwrap();
    canister
}

fn read(
    sm: &mut StateMachine,
    canister: Principal,
    method: &str,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let reply = sm
        .update_call(canister, user(), method, Encode!(&offset, &len).unwrap())
        .unwrap();
    Decode!(&reply, ByteBuf).unwrap().into_vec()
}

fn live_root(sm: &StateMachine, canister: Principal) -> ([u8; 32], [u8; 32]) {
    let e = sm.state().canisters[&canister]
        .execution_state
        .as_ref()
        .unwrap();
    (e.wasm_memory.root_hash(), e.stable_memory.root_hash())
}

/// A client that counts the calls it passes on to the harness.
struct CountingClient<'a> {
    sm: &'a mut StateMachine,
    calls: u64,
}

impl ManagementClient for CountingClient<'_> {
    fn update_call(
        &mut self,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        self.calls += 1;
        ManagementClient::update_call(self.sm, sender, method, payload)
    }

    fn update_calls(
        &mut self,
        sender: Principal,
        calls: Vec<(&str, Vec<u8>)>,
    ) -> Vec<Result<Vec<u8>, RejectResponse>> {
        self.calls += calls.len() as u64;
        ManagementClient::update_calls(self.sm, sender, calls)
    }
}

fn sm_with_quota(n: usize) -> StateMachine {
    StateMachine::with_config(canister_snapshots::Config {
        max_snapshots_per_canister: n,
        ..Default::default()
    })
}

#[test]
fn round_trip_restores_identical_memory_and_checksum() {
    let mut sm = sm_with_quota(2);
    let canister = canister_with_data(&mut sm, 3 * MIB + 5, 2 * MIB);
    let before = live_root(&sm, canister);
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    sm.download_canister_snapshot(canister, Some(user()), snapshot.id.clone(), &dir)
        .unwrap();
    let local = SnapshotDir::new(&dir).compute_checksum().unwrap();
    let listed = sm
        .list_canister_snapshots_with_info(canister, Some(user()))
        .unwrap();
    assert_eq!(listed[0].checksum, local.to_vec());

    // Wreck the canister, upload the directory, load it.
    sm.update_call(
        canister,
        user(),
        "fill_heap",
        Encode!(&0u64, &MIB, &0xFFu8).unwrap(),
    )
    .unwrap();
    let uploaded = sm
        .upload_canister_snapshot(canister, Some(user()), &dir, None)
        .unwrap();
    assert_ne!(uploaded, snapshot.id);
    sm.load_canister_snapshot(canister, Some(user()), uploaded.clone())
        .unwrap();
    assert_eq!(live_root(&sm, canister), before);
    let listed = sm
        .list_canister_snapshots_with_info(canister, Some(user()))
        .unwrap();
    assert_eq!(
        listed[0].checksum, listed[1].checksum,
        "uploaded equals taken"
    );
    let global = sm
        .update_call(canister, user(), "get_global", Encode!(&1u32).unwrap())
        .unwrap();
    assert_eq!(Decode!(&global, i64).unwrap(), -5);
    let history = sm.canister_info(canister, Some(1)).unwrap();
    let Some(ic_management_canister_types::ChangeDetails::LoadSnapshot(record)) =
        &history.recent_changes[0].details
    else {
        panic!("expected a load_snapshot entry")
    };
    assert_eq!(
        record.source,
        ic_management_canister_types::SnapshotSource::MetadataUpload(candid::Reserved)
    );
}

#[test]
fn directory_uses_the_dfx_layout_and_crate_types() {
    let mut sm = StateMachine::new();
    let canister = canister_with_data(&mut sm, MIB, 0);
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    sm.download_canister_snapshot(canister, Some(user()), snapshot.id, tmp.path())
        .unwrap();
    for file in [
        "metadata.json",
        "wasm_module.bin",
        "wasm_memory.bin",
        "stable_memory.bin",
    ] {
        assert!(tmp.path().join(file).is_file(), "{file}");
    }
    assert!(tmp.path().join("wasm_chunk_store").is_dir());
    let json = std::fs::read(tmp.path().join("metadata.json")).unwrap();
    let metadata: ic_management_canister_types::ReadCanisterSnapshotMetadataResult =
        serde_json::from_slice(&json).unwrap();
    assert_eq!(metadata.wasm_memory_size, MIB);
    assert_eq!(
        std::fs::metadata(tmp.path().join("wasm_memory.bin"))
            .unwrap()
            .len(),
        MIB
    );
    assert!(!tmp.path().join(".download_progress.json").exists());
}

/// A directory written by "another tool": only the crate's types and plain files, no
/// checksum.json, extra files lying around.
fn write_foreign_dir(dir: &Path, heap: &[u8], stable: &[u8]) {
    use ic_management_canister_types::*;
    std::fs::create_dir_all(dir.join("wasm_chunk_store")).unwrap();
    let metadata = ReadCanisterSnapshotMetadataResult {
        source: Some(SnapshotSource::TakenFromCanister(candid::Reserved)),
        taken_at_timestamp: 1_700_000_000_000_000_000,
        wasm_module_size: TEST_CANISTER_WASM.len() as u64,
        globals: vec![
            Some(SnapshotMetadataGlobal::I64(9)),
            Some(SnapshotMetadataGlobal::I64(0)),
        ],
        wasm_memory_size: heap.len() as u64,
        stable_memory_size: stable.len() as u64,
        wasm_chunk_store: vec![],
        canister_version: 3,
        certified_data: vec![1, 2, 3],
        global_timer: Some(CanisterTimer::Inactive),
        on_low_wasm_memory_hook_status: Some(OnLowWasmMemoryHookStatus::ConditionNotSatisfied),
    };
    std::fs::write(
        dir.join("metadata.json"),
        serde_json::to_vec(&metadata).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("wasm_module.bin"), TEST_CANISTER_WASM).unwrap();
    std::fs::write(dir.join("wasm_memory.bin"), heap).unwrap();
    std::fs::write(dir.join("stable_memory.bin"), stable).unwrap();
    std::fs::write(dir.join(".lock"), b"").unwrap();
}

#[test]
fn a_directory_written_from_the_crate_types_uploads_and_loads() {
    let mut sm = StateMachine::new();
    let canister = canister_with_data(&mut sm, 0, 0);
    let tmp = tempfile::tempdir().unwrap();
    let mut heap = vec![0u8; 2 * 65536];
    heap[70_000..70_004].copy_from_slice(b"dfx!");
    write_foreign_dir(tmp.path(), &heap, &vec![0u8; 65536]);
    let id = sm
        .upload_canister_snapshot(canister, Some(user()), tmp.path(), None)
        .unwrap();
    sm.load_canister_snapshot(canister, Some(user()), id)
        .unwrap();
    assert_eq!(read(&mut sm, canister, "read_heap", 70_000, 4), b"dfx!");
    let global = sm
        .update_call(canister, user(), "get_global", Encode!(&0u32).unwrap())
        .unwrap();
    assert_eq!(Decode!(&global, i64).unwrap(), 9);
}

#[test]
fn edit_and_incremental_upload_sends_only_changed_pages() {
    let mut sm = sm_with_quota(3);
    let canister = canister_with_data(&mut sm, 4 * MIB, 4 * MIB);
    let base = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (base_dir, edited) = (tmp.path().join("base"), tmp.path().join("edited"));
    sm.download_canister_snapshot(canister, Some(user()), base.id.clone(), &base_dir)
        .unwrap();
    sm.download_canister_snapshot(canister, Some(user()), base.id.clone(), &edited)
        .unwrap();
    // Repair a record in stable memory, as the seeds' users wanted to.
    let mut stable = std::fs::read(edited.join("stable_memory.bin")).unwrap();
    stable[3 * MIB as usize + 1..3 * MIB as usize + 6].copy_from_slice(b"fixed");
    std::fs::write(edited.join("stable_memory.bin"), &stable).unwrap();
    std::fs::remove_file(edited.join("checksum.json")).unwrap();
    let report = canister_snapshots::transfer::diff(&base_dir, &edited).unwrap();
    assert_eq!(report.regions[2].changed, vec![(3 * MIB / 4096, 1)]);

    let upload = sm
        .upload_canister_snapshot_incremental(
            canister,
            Some(user()),
            &edited,
            UploadBase {
                snapshot_id: base.id.clone(),
                dir: &base_dir,
            },
            None,
        )
        .unwrap();
    assert_eq!(upload.bytes_sent, 4096, "one page, not 8 MiB");
    assert_eq!(upload.messages, 1);
    sm.load_canister_snapshot(canister, Some(user()), upload.snapshot_id)
        .unwrap();
    assert_eq!(
        read(&mut sm, canister, "read_stable", 3 * MIB + 1, 5),
        b"fixed"
    );
    assert_eq!(read(&mut sm, canister, "read_stable", 5, 1), vec![0xAA]);
}

#[test]
fn interrupted_download_and_upload_resume_without_restarting() {
    let mut sm = sm_with_quota(2);
    let canister = canister_with_data(&mut sm, 6 * MIB, 0);
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let stop = TransferOptions {
        stop_after_bytes: Some(2 * MIB),
        ..TransferOptions::default()
    };
    let err = sm
        .download_canister_snapshot_with(
            canister,
            Some(user()),
            snapshot.id.clone(),
            tmp.path(),
            &stop,
        )
        .unwrap_err();
    assert!(matches!(err, TransferError::Interrupted { .. }), "{err}");
    assert!(
        !tmp.path().join("metadata.json").exists(),
        "no metadata before completion"
    );
    assert!(tmp.path().join("wasm_memory.bin.part").exists());
    let round_before = sm.state().round;
    let mut counting = CountingClient {
        sm: &mut sm,
        calls: 0,
    };
    canister_snapshots::transfer::download_canister_snapshot(
        &mut counting,
        canister,
        user(),
        snapshot.id.clone(),
        tmp.path(),
        &TransferOptions::default(),
    )
    .unwrap();
    let reads = counting.calls;
    let rounds = sm.state().round - round_before;
    // The interruption came after the 8-byte module and two heap slices (8 + 1 slice < 2 MiB
    // ≤ 8 + 2 slices), all durable; the resume reads the metadata once, then only the rest of
    // the heap (the stable memory is empty), never a slice already on disk.
    let slice = canister_snapshots::transfer::SLICE_BYTES;
    let resumed_slices = (6 * MIB - 2 * slice).div_ceil(slice);
    assert_eq!(resumed_slices, 2);
    assert_eq!(reads, 1 + resumed_slices, "resumed, {reads} calls");
    // Both slices are read in one round (3 in flight by default).
    assert_eq!(rounds, 2, "the metadata, then one round for both slices");
    // A second download into the same directory is refused.
    let again = sm
        .download_canister_snapshot(canister, Some(user()), snapshot.id.clone(), tmp.path())
        .unwrap_err();
    assert!(
        matches!(again, TransferError::DirectoryNotEmpty { .. }),
        "{again}"
    );

    let err = sm
        .upload_canister_snapshot_with(canister, Some(user()), tmp.path(), None, None, &stop)
        .unwrap_err();
    assert!(matches!(err, TransferError::Interrupted { .. }), "{err}");
    assert_eq!(
        sm.list_canister_snapshots(canister, Some(user()))
            .unwrap()
            .len(),
        2
    );
    let id = sm
        .upload_canister_snapshot(canister, Some(user()), tmp.path(), None)
        .unwrap();
    assert_eq!(
        sm.list_canister_snapshots(canister, Some(user()))
            .unwrap()
            .len(),
        2
    );
    sm.load_canister_snapshot(canister, Some(user()), id)
        .unwrap();
}

#[test]
fn corrupted_directories_are_refused_with_the_problem_named() {
    let mut sm = StateMachine::new();
    let canister = canister_with_data(&mut sm, MIB, 0);
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sm.download_canister_snapshot(canister, Some(user()), snapshot.id.clone(), dir)
        .unwrap();
    let snapshot_dir = SnapshotDir::new(dir);

    // Edited bytes: caught by the recorded checksum (uploaded as edits, or refused if strict).
    let mut heap = std::fs::read(dir.join("wasm_memory.bin")).unwrap();
    heap[100] ^= 1;
    std::fs::write(dir.join("wasm_memory.bin"), &heap).unwrap();
    let err = sm.upload_canister_snapshot_with(
        canister,
        Some(user()),
        dir,
        Some(snapshot.id.clone()),
        None,
        &strict(),
    );
    assert!(
        matches!(err, Err(TransferError::EditedSinceDownload { .. })),
        "{err:?}"
    );
    let recorded = snapshot_dir.read_checksum_record().unwrap().unwrap();
    assert_ne!(
        canister_snapshots::memory::checksum::hex(&snapshot_dir.compute_checksum().unwrap()),
        recorded.checksum
    );

    // Wrong length.
    heap.truncate(1000);
    std::fs::write(dir.join("wasm_memory.bin"), &heap).unwrap();
    let err = snapshot_dir.validate().unwrap_err();
    assert!(
        matches!(err, TransferError::FileSize { expected, actual: 1000, .. } if expected == MIB),
        "{err}"
    );
    assert!(err.to_string().contains("wasm_memory.bin"));

    // Missing file.
    std::fs::remove_file(dir.join("wasm_memory.bin")).unwrap();
    assert!(matches!(
        snapshot_dir.validate(),
        Err(TransferError::MissingFile { .. })
    ));

    // metadata.json that does not parse, and one with impossible sizes.
    std::fs::write(dir.join("metadata.json"), b"{not json").unwrap();
    let err = snapshot_dir.validate().unwrap_err();
    assert!(err.to_string().contains("metadata.json"), "{err}");
    let mut bad: serde_json::Value = serde_json::to_value(common::minimal_metadata()).unwrap();
    bad["wasm_memory_size"] = serde_json::json!(1000);
    std::fs::write(dir.join("metadata.json"), bad.to_string()).unwrap();
    let err = snapshot_dir.validate().unwrap_err();
    assert!(err.to_string().contains("multiple of 65536"), "{err}");
    // Nothing was created on the replica by the refused upload.
    assert_eq!(
        sm.list_canister_snapshots(canister, Some(user()))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn cross_canister_load_needs_control_of_both() {
    let mut sm = StateMachine::new();
    let a = canister_with_data(&mut sm, MIB, 0);
    let b = canister_with_data(&mut sm, 0, 0);
    let snapshot = sm.take_canister_snapshot(a, Some(user()), None).unwrap();
    sm.load_canister_snapshot(b, Some(user()), snapshot.id.clone())
        .unwrap();
    assert_eq!(live_root(&sm, a), live_root(&sm, b));
    let info = sm.canister_info(b, Some(1)).unwrap();
    let Some(ic_management_canister_types::ChangeDetails::LoadSnapshot(record)) =
        &info.recent_changes[0].details
    else {
        panic!("expected load_snapshot")
    };
    assert_eq!(record.from_canister_id, Some(a));

    // A stranger's canister C cannot take A's snapshot.
    let stranger = Principal::from_slice(&[0x22; 29]);
    let c = sm.create_canister_with_settings(Some(stranger), None);
    sm.install_canister(c, TEST_CANISTER_WASM.to_vec(), vec![], Some(stranger));
    let err = sm
        .load_canister_snapshot(c, Some(stranger), snapshot.id)
        .unwrap_err();
    // The replica's CanisterSnapshotNotController.
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
}

mod methods {
    use super::*;
    use canister_snapshots::management::types::UploadCanisterSnapshotMetadataArgs as UploadMeta;
    use ic_management_canister_types::{
        CanisterSettings, ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult,
        SnapshotDataKind, SnapshotDataOffset, SnapshotVisibility, UpdateSettingsArgs,
        UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
        UploadCanisterSnapshotMetadataResult,
    };

    fn read_data(
        sm: &mut StateMachine,
        canister: Principal,
        sender: Principal,
        id: &[u8],
        kind: SnapshotDataKind,
    ) -> Result<Vec<u8>, canister_snapshots::RejectResponse> {
        let args = ReadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: id.to_vec(),
            kind,
        };
        sm.management::<(ReadCanisterSnapshotDataResult,)>(
            Some(sender),
            "read_canister_snapshot_data",
            (args,),
        )
        .map(|(r,)| r.chunk)
    }

    fn upload_meta(
        sm: &mut StateMachine,
        canister: Principal,
        module: u64,
        heap: u64,
    ) -> Result<Vec<u8>, canister_snapshots::RejectResponse> {
        // The plain crate type: standard clients work without the extension field.
        let args = UploadCanisterSnapshotMetadataArgs {
            canister_id: canister,
            replace_snapshot: None,
            wasm_module_size: module,
            // The test canister's two i64 globals: a load checks them against the module.
            globals: vec![ic_management_canister_types::SnapshotMetadataGlobal::I64(0); 2],
            wasm_memory_size: heap,
            stable_memory_size: 0,
            certified_data: vec![],
            global_timer: None,
            on_low_wasm_memory_hook_status: None,
        };
        sm.management::<(UploadCanisterSnapshotMetadataResult,)>(
            Some(user()),
            "upload_canister_snapshot_metadata",
            (args,),
        )
        .map(|(r,)| r.snapshot_id)
    }

    fn upload_data(
        sm: &mut StateMachine,
        canister: Principal,
        id: &[u8],
        kind: SnapshotDataOffset,
        chunk: Vec<u8>,
    ) -> Result<(), canister_snapshots::RejectResponse> {
        let args = UploadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: id.to_vec(),
            kind,
            chunk,
        };
        sm.management::<()>(Some(user()), "upload_canister_snapshot_data", (args,))
    }

    #[test]
    fn read_slices_are_bounded_and_checked() {
        let mut sm = StateMachine::new();
        let canister = canister_with_data(&mut sm, MIB, 0);
        let id = sm
            .take_canister_snapshot(canister, Some(user()), None)
            .unwrap()
            .id;
        let ok = read_data(
            &mut sm,
            canister,
            user(),
            &id,
            SnapshotDataKind::WasmMemory {
                offset: 10,
                size: 3,
            },
        )
        .unwrap();
        assert_eq!(ok, vec![70, 77, 84]);
        for (kind, needle) in [
            (
                SnapshotDataKind::WasmMemory {
                    offset: 0,
                    size: 2_000_001,
                },
                "at most 2000000",
            ),
            (
                SnapshotDataKind::WasmMemory {
                    offset: MIB - 1,
                    size: 2,
                },
                "outside the wasm_memory",
            ),
            (
                SnapshotDataKind::WasmModule {
                    offset: u64::MAX,
                    size: 2,
                },
                "outside the wasm_module",
            ),
        ] {
            let err = read_data(&mut sm, canister, user(), &id, kind).unwrap_err();
            assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
            assert!(
                err.reject_message.contains(needle),
                "{}",
                err.reject_message
            );
        }
        // An unknown chunk is the replica's WasmChunkStoreError: a contract violation.
        let kind = SnapshotDataKind::WasmChunk { hash: vec![1; 32] };
        let err = read_data(&mut sm, canister, user(), &id, kind).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterContractViolation);
        assert!(err.reject_message.contains("no Wasm chunk"), "{err}");
    }

    #[test]
    fn visibility_governs_list_and_read_but_not_upload() {
        let mut sm = StateMachine::new();
        let canister = canister_with_data(&mut sm, MIB, 0);
        let id = sm
            .take_canister_snapshot(canister, Some(user()), None)
            .unwrap()
            .id;
        let viewer = Principal::from_slice(&[0x33; 29]);
        let kind = || SnapshotDataKind::WasmMemory { offset: 0, size: 1 };
        let err = read_data(&mut sm, canister, viewer, &id, kind()).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
        assert!(sm.list_canister_snapshots(canister, Some(viewer)).is_err());

        for visibility in [
            SnapshotVisibility::Public,
            SnapshotVisibility::AllowedViewers(vec![viewer]),
        ] {
            let args = UpdateSettingsArgs {
                canister_id: canister,
                settings: CanisterSettings {
                    snapshot_visibility: Some(visibility),
                    ..Default::default()
                },
                sender_canister_version: None,
            };
            sm.management::<()>(Some(user()), "update_settings", (args,))
                .unwrap();
            assert!(read_data(&mut sm, canister, viewer, &id, kind()).is_ok());
            assert_eq!(
                sm.list_canister_snapshots(canister, Some(viewer))
                    .unwrap()
                    .len(),
                1
            );
            assert!(
                sm.read_canister_snapshot_metadata(canister, Some(viewer), id.clone())
                    .is_ok()
            );
            // Viewers read; they do not take, load, delete or upload.
            let err = sm
                .take_canister_snapshot(canister, Some(viewer), Some(id.clone()))
                .unwrap_err();
            assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);
            let err = sm
                .delete_canister_snapshot(canister, Some(viewer), id.clone())
                .unwrap_err();
            assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);
        }
        let status = sm.canister_status(canister, Some(user())).unwrap();
        assert_eq!(
            status.settings.snapshot_visibility,
            SnapshotVisibility::AllowedViewers(vec![viewer])
        );
    }

    #[test]
    fn upload_metadata_is_validated() {
        let mut sm = StateMachine::new();
        let canister = canister_with_data(&mut sm, 0, 0);
        for (module, heap, needle) in [
            (0, 0, "wasm_module_size"),
            (200 << 20, 0, "wasm_module_size"),
            (8, 1000, "wasm_memory_size"),
            (8, 5 << 30, "wasm_memory_size"),
        ] {
            let err = upload_meta(&mut sm, canister, module, heap).unwrap_err();
            assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
            assert!(
                err.reject_message.contains(needle),
                "{}",
                err.reject_message
            );
        }
        let args = UploadMeta {
            canister_id: canister,
            replace_snapshot: None,
            wasm_module_size: 8,
            globals: vec![],
            wasm_memory_size: 0,
            stable_memory_size: 0,
            certified_data: vec![0; 33],
            global_timer: None,
            on_low_wasm_memory_hook_status: None,
            base_snapshot: None,
        };
        let err = sm
            .management::<(UploadCanisterSnapshotMetadataResult,)>(
                Some(user()),
                "upload_canister_snapshot_metadata",
                (args,),
            )
            .unwrap_err();
        assert!(
            err.reject_message.contains("certified_data"),
            "{}",
            err.reject_message
        );
        assert!(
            sm.list_canister_snapshots(canister, Some(user()))
                .unwrap()
                .is_empty()
        );
        // The quota applies to uploads as to takes.
        upload_meta(&mut sm, canister, 8, 0).unwrap();
        let err = upload_meta(&mut sm, canister, 8, 0).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    }

    #[test]
    fn upload_data_goes_only_into_uploaded_snapshots_within_bounds() {
        let mut sm = sm_with_quota(3);
        let canister = canister_with_data(&mut sm, 0, 0);
        let taken = sm
            .take_canister_snapshot(canister, Some(user()), None)
            .unwrap()
            .id;
        let err = upload_data(
            &mut sm,
            canister,
            &taken,
            SnapshotDataOffset::WasmMemory { offset: 0 },
            vec![1],
        )
        .unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterSnapshotImmutable);

        let id = upload_meta(&mut sm, canister, 8, 65536).unwrap();
        for (kind, len, needle) in [
            (
                SnapshotDataOffset::WasmMemory { offset: 65535 },
                2,
                "outside",
            ),
            (SnapshotDataOffset::WasmModule { offset: 0 }, 9, "outside"),
            (SnapshotDataOffset::StableMemory { offset: 0 }, 1, "outside"),
            (
                SnapshotDataOffset::WasmMemory { offset: 0 },
                2_000_001,
                "at most",
            ),
        ] {
            let err = upload_data(&mut sm, canister, &id, kind, vec![0; len]).unwrap_err();
            assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
            assert!(
                err.reject_message.contains(needle),
                "{}",
                err.reject_message
            );
        }
        // Another canister's snapshot id through this canister.
        let other = canister_with_data(&mut sm, 0, 0);
        let err = upload_data(
            &mut sm,
            other,
            &id,
            SnapshotDataOffset::WasmModule { offset: 0 },
            vec![0],
        )
        .unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);

        // An incomplete module cannot be loaded; the message names the gap.
        upload_data(
            &mut sm,
            canister,
            &id,
            SnapshotDataOffset::WasmModule { offset: 0 },
            TEST_CANISTER_WASM[..4].to_vec(),
        )
        .unwrap();
        let err = sm
            .load_canister_snapshot(canister, Some(user()), id.clone())
            .unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
        assert!(
            err.reject_message.contains("[4, 8)"),
            "{}",
            err.reject_message
        );
        upload_data(
            &mut sm,
            canister,
            &id,
            SnapshotDataOffset::WasmModule { offset: 4 },
            TEST_CANISTER_WASM[4..].to_vec(),
        )
        .unwrap();
        // The memory was never written: zero fill is intended.
        sm.load_canister_snapshot(canister, Some(user()), id)
            .unwrap();
        assert_eq!(read(&mut sm, canister, "read_heap", 65535, 1), vec![0]);
    }
}

// ---------------------------------------------------------------------------------------------
// Edited directories upload (issue 10, item 9)
// ---------------------------------------------------------------------------------------------

/// A snapshot of a canister with data, downloaded into `dir`.
fn downloaded_into(sm: &mut StateMachine, dir: &Path) -> (Principal, Vec<u8>) {
    let canister = canister_with_data(sm, 3 * MIB, 3 * MIB);
    let id = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap()
        .id;
    sm.download_canister_snapshot(canister, Some(user()), id.clone(), dir)
        .unwrap();
    (canister, id)
}

fn edit_stable(dir: &Path, offset: usize, bytes: &[u8]) {
    let mut stable = std::fs::read(dir.join("stable_memory.bin")).unwrap();
    stable[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(dir.join("stable_memory.bin"), &stable).unwrap();
}

fn strict() -> TransferOptions {
    TransferOptions {
        strict: true,
        ..TransferOptions::default()
    }
}

/// Today's main refused an edited `stable_memory.bin` until `checksum.json` was deleted by
/// hand. Now the edit is uploaded as it is on disk and the report names the edited file; the
/// replica's checksum is the checksum of the bytes read from disk.
#[test]
fn an_edited_directory_uploads_and_the_report_names_the_edited_files() {
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    let (canister, _) = downloaded_into(&mut sm, tmp.path());
    edit_stable(tmp.path(), 2 * MIB as usize, b"repaired");

    let report = sm
        .upload_canister_snapshot_with(
            canister,
            Some(user()),
            tmp.path(),
            None,
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    assert_eq!(report.edits, Edits::Files(vec!["stable_memory.bin".into()]));
    assert!(tmp.path().join("checksum.json").exists(), "nothing deleted");
    assert_eq!(
        report.checksum,
        SnapshotDir::new(tmp.path()).compute_checksum().unwrap()
    );
    sm.load_canister_snapshot(canister, Some(user()), report.snapshot_id)
        .unwrap();
    assert_eq!(
        read(&mut sm, canister, "read_stable", 2 * MIB, 8),
        b"repaired"
    );
}

/// Every kind of file is named: memories, module, metadata (a timer the snapshot checksum
/// leaves out) and a chunk added to the listing.
#[test]
fn the_edits_name_every_kind_of_file() {
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    downloaded_into(&mut sm, tmp.path());
    let dir = SnapshotDir::new(tmp.path());
    let record = dir.read_checksum_record().unwrap();
    assert_eq!(
        dir.digest().unwrap().edits_since(record.as_ref()),
        Edits::Unchanged
    );
    let mut heap = std::fs::read(tmp.path().join("wasm_memory.bin")).unwrap();
    heap[7] ^= 1;
    std::fs::write(tmp.path().join("wasm_memory.bin"), &heap).unwrap();
    let mut module = std::fs::read(tmp.path().join("wasm_module.bin")).unwrap();
    *module.last_mut().unwrap() ^= 1;
    std::fs::write(tmp.path().join("wasm_module.bin"), &module).unwrap();
    let chunk = b"a chunk".to_vec();
    let hash = canister_snapshots::memory::checksum::sha256(&chunk);
    std::fs::write(dir.chunk_path(&hash), &chunk).unwrap();
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.metadata_path()).unwrap()).unwrap();
    metadata["wasm_chunk_store"] = serde_json::json!([{ "hash": hash.to_vec() }]);
    metadata["global_timer"] = serde_json::json!({ "active": 42 });
    std::fs::write(dir.metadata_path(), metadata.to_string()).unwrap();
    let hash_hex = canister_snapshots::memory::checksum::hex(&hash);
    assert_eq!(
        dir.digest().unwrap().edits_since(record.as_ref()),
        Edits::Files(vec![
            "metadata.json".into(),
            "wasm_module.bin".into(),
            "wasm_memory.bin".into(),
            format!("wasm_chunk_store/{hash_hex}.bin"),
        ])
    );
}

/// `strict` refuses an edited directory, naming the files, before a message is sent; it
/// accepts the directory as downloaded.
#[test]
fn a_strict_upload_refuses_an_edited_directory_naming_the_files() {
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    let (canister, _) = downloaded_into(&mut sm, tmp.path());
    edit_stable(tmp.path(), 5, b"edit");
    let (hash, round) = (sm.state().state_hash(), sm.state().round);
    let err = sm
        .upload_canister_snapshot_with(canister, Some(user()), tmp.path(), None, None, &strict())
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::EditedSinceDownload { files, .. } if files == "stable_memory.bin"),
        "{err}"
    );
    assert!(
        err.to_string().contains("--strict"),
        "says what to do: {err}"
    );
    assert_eq!((sm.state().state_hash(), sm.state().round), (hash, round));

    edit_stable(tmp.path(), 5, &[0xAA; 4]);
    let report = sm
        .upload_canister_snapshot_with(canister, Some(user()), tmp.path(), None, None, &strict())
        .unwrap();
    assert_eq!(report.edits, Edits::Unchanged);
}

/// A `checksum.json` written before per-file hashes still works: an unedited directory is
/// unchanged, an edited one "changed, files unknown", uploaded, or refused when strict.
#[test]
fn a_checksum_record_without_file_hashes_still_works() {
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    let (canister, _) = downloaded_into(&mut sm, tmp.path());
    let dir = SnapshotDir::new(tmp.path());
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.checksum_path()).unwrap()).unwrap();
    assert!(record["files"].is_object(), "written by the download");
    record.as_object_mut().unwrap().remove("files");
    std::fs::write(dir.checksum_path(), record.to_string()).unwrap();
    let old = dir.read_checksum_record().unwrap();
    assert_eq!(old.as_ref().unwrap().files, None);
    assert_eq!(
        dir.digest().unwrap().edits_since(old.as_ref()),
        Edits::Unchanged
    );

    edit_stable(tmp.path(), 5, b"edit");
    let err = sm
        .upload_canister_snapshot_with(canister, Some(user()), tmp.path(), None, None, &strict())
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::EditedSinceDownload { files, .. } if files.contains("unknown")),
        "{err}"
    );
    let report = sm
        .upload_canister_snapshot_with(
            canister,
            Some(user()),
            tmp.path(),
            None,
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    assert_eq!(report.edits, Edits::FilesUnknown);
}

/// A resumed upload belongs to its canister, its base, the snapshot it replaces and the
/// directory as it was when it started: a resume against anything else is refused, with the
/// progress file and the replica left as they were, and the right resume still completes.
#[test]
fn a_resumed_upload_refuses_another_canister_or_an_edited_directory() {
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    let (canister, _) = downloaded_into(&mut sm, tmp.path());
    let other = canister_with_data(&mut sm, MIB, 0);
    let stop = TransferOptions {
        stop_after_bytes: Some(MIB),
        ..TransferOptions::default()
    };
    let err = sm
        .upload_canister_snapshot_with(canister, Some(user()), tmp.path(), None, None, &stop)
        .unwrap_err();
    assert!(matches!(err, TransferError::Interrupted { .. }), "{err}");
    let progress_path = tmp.path().join(".upload_progress.json");
    let progress = std::fs::read(&progress_path).unwrap();
    let state = sm.state().state_hash();
    let refused = |sm: &mut StateMachine, canister, replace: Option<Vec<u8>>, needle: &str| {
        let err = sm
            .upload_canister_snapshot_with(
                canister,
                Some(user()),
                tmp.path(),
                replace,
                None,
                &TransferOptions::default(),
            )
            .unwrap_err();
        assert!(
            matches!(err, TransferError::Resume { .. }) && err.to_string().contains(needle),
            "{needle}: {err}"
        );
        assert!(err.to_string().contains("start over"), "{err}");
        assert_eq!(std::fs::read(&progress_path).unwrap(), progress);
        assert_eq!(sm.state().state_hash(), state);
    };
    refused(&mut sm, other, None, &format!("not {other}"));
    refused(
        &mut sm,
        canister,
        Some(vec![1; 16]),
        "replacing snapshot none",
    );
    edit_stable(tmp.path(), 5, b"late edit");
    refused(
        &mut sm,
        canister,
        None,
        "changed since this upload started (stable_memory.bin)",
    );
    edit_stable(tmp.path(), 5, &[0xAA; 9]);
    let report = sm
        .upload_canister_snapshot_with(
            canister,
            Some(user()),
            tmp.path(),
            None,
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    sm.load_canister_snapshot(canister, Some(user()), report.snapshot_id)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Fewer copies, same wire bytes (issue 11)
// ---------------------------------------------------------------------------------------------

/// `read_canister_snapshot_data` encodes its reply straight from the pages: it must be byte
/// for byte what Candid writes for `ReadCanisterSnapshotDataResult`, for every region, length
/// (LEB128 lengths of 1 to 3 bytes, the empty slice, unaligned offsets) and for a chunk; and
/// the borrowed decoding the client uses must see the same bytes as the owned one.
#[test]
fn read_replies_are_candid_s_own_bytes() {
    use canister_snapshots::management::types::ReadCanisterSnapshotDataResultRef;
    use canister_snapshots::snapshots::SnapshotRegion;
    use ic_management_canister_types::{
        ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult, SnapshotDataKind,
    };
    // An uploaded snapshot with a chunk: a download with a chunk added to its listing.
    let mut sm = sm_with_quota(3);
    let tmp = tempfile::tempdir().unwrap();
    let (canister, _) = downloaded_into(&mut sm, tmp.path());
    let dir = SnapshotDir::new(tmp.path());
    let chunk = b"a chunk in the store".to_vec();
    let hash = canister_snapshots::memory::checksum::sha256(&chunk);
    std::fs::write(dir.chunk_path(&hash), &chunk).unwrap();
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.metadata_path()).unwrap()).unwrap();
    metadata["wasm_chunk_store"] = serde_json::json!([{ "hash": hash.to_vec() }]);
    std::fs::write(dir.metadata_path(), metadata.to_string()).unwrap();
    let id = sm
        .upload_canister_snapshot(canister, Some(user()), tmp.path(), None)
        .unwrap();
    let hash = hash.to_vec();
    let slice = canister_snapshots::transfer::SLICE_BYTES;
    let kinds = [
        SnapshotDataKind::WasmModule { offset: 0, size: 8 },
        SnapshotDataKind::WasmModule { offset: 3, size: 0 },
        SnapshotDataKind::WasmMemory {
            offset: 0,
            size: 127,
        },
        SnapshotDataKind::WasmMemory {
            offset: 4000,
            size: 128,
        },
        SnapshotDataKind::WasmMemory {
            offset: 4095,
            size: 16_384,
        },
        SnapshotDataKind::WasmMemory {
            offset: MIB + 1,
            size: slice,
        },
        SnapshotDataKind::WasmMemory {
            offset: 0,
            size: 2_000_000,
        },
        SnapshotDataKind::StableMemory {
            offset: 0,
            size: 70_000,
        },
        SnapshotDataKind::WasmChunk { hash },
    ];
    for kind in kinds {
        let args = ReadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: id.clone(),
            kind: kind.clone(),
        };
        let reply = ManagementClient::update_call(
            &mut sm,
            user(),
            "read_canister_snapshot_data",
            Encode!(&args).unwrap(),
        )
        .unwrap();
        let owned = Decode!(&reply, ReadCanisterSnapshotDataResult).unwrap();
        assert_eq!(
            reply,
            Encode!(&owned).unwrap(),
            "{kind:?}: the reply is Candid's encoding of its content"
        );
        let borrowed: ReadCanisterSnapshotDataResultRef<'_> = candid::decode_one(&reply).unwrap();
        assert_eq!(borrowed.chunk.as_ref(), owned.chunk.as_slice(), "{kind:?}");
    }
    let heap = std::fs::read(dir.region_path(SnapshotRegion::WasmMemory)).unwrap();
    let args = ReadCanisterSnapshotDataArgs {
        canister_id: canister,
        snapshot_id: id,
        kind: SnapshotDataKind::WasmMemory {
            offset: 4095,
            size: 16_384,
        },
    };
    let (data,): (ReadCanisterSnapshotDataResult,) = sm
        .management(Some(user()), "read_canister_snapshot_data", (args,))
        .unwrap();
    assert_eq!(
        data.chunk,
        heap[4095..4095 + 16_384],
        "the bytes are the memory's"
    );
}

/// The client encodes upload slices from its buffer (`UploadCanisterSnapshotDataArgsRef`): the
/// same bytes as the owned crate type and as `ic-management-canister-types`' type, which the
/// replica decodes borrowed.
#[test]
fn borrowed_upload_arguments_encode_to_the_same_bytes() {
    use canister_snapshots::management::types::{
        UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotDataArgsRef,
    };
    use ic_management_canister_types::SnapshotDataOffset;
    let canister = Principal::from_slice(&[7; 10]);
    let snapshot_id = vec![9u8; 18];
    for (kind, len) in [
        (SnapshotDataOffset::WasmModule { offset: 0 }, 0usize),
        (SnapshotDataOffset::WasmMemory { offset: 4096 }, 127),
        (SnapshotDataOffset::StableMemory { offset: 1 << 40 }, 128),
        (SnapshotDataOffset::WasmMemory { offset: 0 }, 1_998_848),
        (SnapshotDataOffset::WasmChunk, 1 << 20),
    ] {
        let chunk: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let borrowed = Encode!(&UploadCanisterSnapshotDataArgsRef {
            canister_id: canister,
            snapshot_id: serde_bytes::Bytes::new(&snapshot_id),
            kind: kind.clone(),
            chunk: serde_bytes::Bytes::new(&chunk),
        })
        .unwrap();
        let owned = Encode!(&UploadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: snapshot_id.clone(),
            kind: kind.clone(),
            chunk: chunk.clone(),
        })
        .unwrap();
        let official = Encode!(
            &ic_management_canister_types::UploadCanisterSnapshotDataArgs {
                canister_id: canister,
                snapshot_id: snapshot_id.clone(),
                kind: kind.clone(),
                chunk: chunk.clone(),
            }
        )
        .unwrap();
        assert_eq!(borrowed, owned, "{kind:?} {len}");
        assert_eq!(borrowed, official, "{kind:?} {len}");
        let decoded: UploadCanisterSnapshotDataArgsRef<'_> = candid::decode_one(&official).unwrap();
        assert_eq!(decoded.chunk.as_ref(), chunk.as_slice());
    }
}

/// `submit_ingress_batch`: several messages, one round, each answered in the order given (a
/// refusal among them answered in its place, the others executed).
#[test]
fn a_batch_of_ingress_messages_shares_one_round() {
    use canister_snapshots::IngressCall;
    let mut sm = sm_with_quota(1);
    let canister = canister_with_data(&mut sm, MIB, 0);
    let call = |method: &str, payload: Vec<u8>| IngressCall {
        receiver: canister,
        sender: user(),
        method: method.to_string(),
        payload,
    };
    let round = sm.state().round;
    let answers = sm.submit_ingress_batch(vec![
        call("read_heap", Encode!(&0u64, &4u64).unwrap()),
        call("no_such_method", vec![]),
        call(
            "write_heap",
            Encode!(&0u64, &ByteBuf::from(b"new!".to_vec())).unwrap(),
        ),
        call("read_heap", Encode!(&0u64, &4u64).unwrap()),
    ]);
    assert_eq!(sm.state().round, round + 1);
    assert_eq!(answers.len(), 4);
    let heap = |answer: &Result<Vec<u8>, RejectResponse>| {
        Decode!(answer.as_ref().unwrap(), ByteBuf)
            .unwrap()
            .into_vec()
    };
    assert_eq!(heap(&answers[0]), vec![0, 7, 14, 21]);
    assert!(answers[1].is_err());
    assert!(answers[2].is_ok());
    assert_eq!(heap(&answers[3]), b"new!");
}

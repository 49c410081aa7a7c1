//! Where this replica follows the real one to the letter: the order of the checks (the first
//! failing check decides the error), the error codes, and what is charged when. Each test
//! names the replica's code it follows (dfinity/ic `rs/execution_environment/src/
//! canister_manager.rs` and `canister_manager/types.rs`), and each failed on the main before
//! this file.

mod common;

use canister_snapshots::management::types::UploadCanisterSnapshotDataArgs;
use canister_snapshots::state::WASM_CHUNK_ACCOUNTED_BYTES;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterSettings, ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult,
    SnapshotDataKind, SnapshotDataOffset, TakeCanisterSnapshotArgs,
};

use common::*;

const LIMIT: u64 = 64 << 10;

fn config() -> Config {
    Config {
        max_snapshots_per_canister: 3,
        heap_delta_rate_limit_bytes: LIMIT,
        ..Config::default()
    }
}

fn chunk_args(c: &TestCanister, id: &[u8], chunk: Vec<u8>) -> UploadCanisterSnapshotDataArgs {
    UploadCanisterSnapshotDataArgs {
        canister_id: c.id,
        snapshot_id: id.to_vec(),
        kind: SnapshotDataOffset::WasmChunk,
        chunk,
    }
}

fn send_data(
    sm: &mut StateMachine,
    c: &TestCanister,
    args: UploadCanisterSnapshotDataArgs,
) -> Result<(), canister_snapshots::RejectResponse> {
    sm.management::<()>(Some(c.sender), "upload_canister_snapshot_data", (args,))
}

fn read_data(
    sm: &mut StateMachine,
    c: &TestCanister,
    id: &[u8],
    kind: SnapshotDataKind,
) -> Result<Vec<u8>, canister_snapshots::RejectResponse> {
    let args = ReadCanisterSnapshotDataArgs {
        canister_id: c.id,
        snapshot_id: id.to_vec(),
        kind,
    };
    sm.management::<(ReadCanisterSnapshotDataResult,)>(
        Some(c.sender),
        "read_canister_snapshot_data",
        (args,),
    )
    .map(|(r,)| r.chunk)
}

/// Writes `bytes` of heap in one message: the canister's heap-delta debit grows by them.
fn dirty(sm: &mut StateMachine, c: &TestCanister, bytes: u64) {
    c.fill(sm, false, 0, bytes, 0x42);
}

// ---------------------------------------------------------------------------------------------
// load_canister_snapshot: who, and in what order
// ---------------------------------------------------------------------------------------------

/// The heap-delta rate limit is checked before the snapshot is looked up: a rate-limited
/// canister gets 210 even for a snapshot that does not exist.
#[test]
fn load_checks_the_rate_limit_before_the_snapshot() {
    let setup = || {
        let (mut sm, c) = env_with_config(config());
        dirty(&mut sm, &c, 4 * LIMIT);
        (sm, c)
    };
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.load_canister_snapshot(c.id, Some(c.sender), snapshot_id(c.id, 99))
    });
    assert_eq!(
        err.error_code,
        ErrorCode::CanisterHeapDeltaRateLimited,
        "{err}"
    );
}

fn snapshot_id(canister: candid::Principal, counter: u64) -> Vec<u8> {
    canister_snapshots::snapshots::SnapshotId::new(canister, counter).to_bytes()
}

/// Loading another canister's snapshot without controlling that canister is the replica's
/// `CanisterSnapshotNotController`: `CanisterRejectedMessage`, after the snapshot is found.
#[test]
fn load_of_an_uncontrolled_canisters_snapshot_is_a_reject() {
    let setup = || {
        let (mut sm, a) = env_with_config(config());
        let snapshot = sm
            .take_canister_snapshot(a.id, Some(a.sender), None)
            .unwrap()
            .id;
        let b = install_new(&mut sm, user(7));
        (sm, (b, snapshot))
    };
    let err = assert_refused_without_effect(setup, |sm, (b, id)| {
        sm.load_canister_snapshot(b.id, Some(b.sender), id.clone())
    });
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &["Only a controller of the canister that snapshot"],
    );
}

/// The baseline charge comes before the module and consistency checks: a canister that cannot
/// pay the baseline gets `CanisterOutOfCycles` even for an inconsistent snapshot.
#[test]
fn load_charges_the_baseline_before_checking_the_snapshot() {
    let setup = || {
        let mut sm = StateMachine::with_config(config());
        let settings = CanisterSettings {
            freezing_threshold: Some(0u64.into()),
            ..CanisterSettings::default()
        };
        // Enough for the upload's 2e9 + size instructions, not for a second baseline.
        let cycles = sm.config().instructions_cost(2_000_000_000 + 2 * (1 << 20));
        let id = create(&mut sm, controller(), cycles, Some(settings));
        sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller()));
        let c = TestCanister {
            id,
            sender: controller(),
        };
        let mut args = upload_args(&c, TEST_CANISTER_WASM.len() as u64);
        args.globals = vec![]; // inconsistent with the module
        let snapshot = upload_metadata(&mut sm, c.sender, args).unwrap();
        (sm, (c, snapshot))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| {
        sm.load_canister_snapshot(c.id, Some(c.sender), id.clone())
    });
    assert_eq!(err.error_code, ErrorCode::CanisterOutOfCycles, "{err}");
}

// ---------------------------------------------------------------------------------------------
// The heap-delta rate limit at its boundary
// ---------------------------------------------------------------------------------------------

/// The replica refuses once the debit *reaches* the limit (`>=`).
#[test]
fn a_debit_equal_to_the_limit_is_refused() {
    let setup = || {
        let (mut sm, c) = env_with_config(Config {
            heap_delta_rate_limit_bytes: 2 * LIMIT,
            ..config()
        });
        // 4 allowances written, one drained by the message's own round: a debit of exactly
        // the limit (2 allowances) after one more round.
        dirty(&mut sm, &c, 3 * 2 * LIMIT);
        sm.tick();
        assert_eq!(sm.state().canisters[&c.id].heap_delta_debit, 2 * LIMIT);
        (sm, c)
    };
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.take_canister_snapshot(c.id, Some(c.sender), None)
    });
    assert_eq!(err.error_code, ErrorCode::CanisterHeapDeltaRateLimited);
    let err = assert_refused_without_effect(setup, upload_metadata_result);
    assert_eq!(err.error_code, ErrorCode::CanisterHeapDeltaRateLimited);
}

fn upload_metadata_result(
    sm: &mut StateMachine,
    c: &TestCanister,
) -> Result<(), canister_snapshots::RejectResponse> {
    let args = upload_args(c, TEST_CANISTER_WASM.len() as u64);
    sm.management::<(ic_management_canister_types::UploadCanisterSnapshotMetadataResult,)>(
        Some(c.sender),
        "upload_canister_snapshot_metadata",
        (args,),
    )
    .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// upload_canister_snapshot_metadata and _data
// ---------------------------------------------------------------------------------------------

/// The controller is checked before the metadata: a stranger's invalid metadata is refused as
/// a stranger's, and reveals nothing about what is wrong with it.
#[test]
fn upload_metadata_checks_the_controller_before_the_metadata() {
    let err = assert_refused_without_effect(
        || env_with_config(config()),
        |sm, c| {
            let mut args = upload_args(c, 0); // invalid: no module
            args.certified_data = vec![0; 99];
            sm.management::<(ic_management_canister_types::UploadCanisterSnapshotMetadataResult,)>(
                Some(stranger()),
                "upload_canister_snapshot_metadata",
                (args,),
            )
        },
    );
    assert_eq!(
        err.error_code,
        ErrorCode::CanisterInvalidController,
        "{err}"
    );
    assert!(!err.reject_message.contains("wasm_module_size"), "{err}");
}

/// A chunk already in the store is accepted again without a charge; a new chunk is charged its
/// bytes and counts a whole [`WASM_CHUNK_ACCOUNTED_BYTES`] toward the snapshot's size.
#[test]
fn a_chunk_already_present_is_free_and_each_chunk_counts_one_mib() {
    let (mut sm, c) = env_with_config(config());
    let id = upload_metadata(&mut sm, c.sender, upload_args(&c, 8)).unwrap();
    let size = |sm: &StateMachine| sm.state().snapshots.snapshots_size(c.id);
    let before = (c.cycles(&sm), size(&sm));
    send_data(&mut sm, &c, chunk_args(&c, &id, vec![5; 1000])).unwrap();
    let after_first = (c.cycles(&sm), size(&sm));
    assert_eq!(
        before.0 - after_first.0,
        sm.config().instructions_cost(1000),
        "a new chunk is charged its bytes"
    );
    assert_eq!(after_first.1 - before.1, WASM_CHUNK_ACCOUNTED_BYTES);
    send_data(&mut sm, &c, chunk_args(&c, &id, vec![5; 1000])).unwrap();
    assert_eq!(
        (c.cycles(&sm), size(&sm)),
        after_first,
        "the same chunk again is free"
    );
}

/// An uploaded snapshot that has been loaded is immutable, like a taken one (dfinity/ic
/// #11029): the canister runs what it holds.
#[test]
fn a_loaded_upload_accepts_no_more_data() {
    let setup = || {
        let (mut sm, c) = env_with_config(config());
        let id = upload_metadata(
            &mut sm,
            c.sender,
            upload_args(&c, TEST_CANISTER_WASM.len() as u64),
        )
        .unwrap();
        upload_module(&mut sm, &c, &id, TEST_CANISTER_WASM);
        sm.load_canister_snapshot(c.id, Some(c.sender), id.clone())
            .unwrap();
        (sm, (c, id))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| {
        let args = UploadCanisterSnapshotDataArgs {
            canister_id: c.id,
            snapshot_id: id.clone(),
            kind: SnapshotDataOffset::WasmMemory { offset: 0 },
            chunk: vec![1; 10],
        };
        send_data(sm, c, args)
    });
    assert_eq!(
        err.error_code,
        ErrorCode::CanisterSnapshotImmutable,
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// take_canister_snapshot with uninstall_code; uninstall_code and the chunk store
// ---------------------------------------------------------------------------------------------

/// With `uninstall_code`, the checks count the memory the uninstall frees: a canister that
/// can keep one copy of its memory, not two, can still take a snapshot and uninstall.
#[test]
fn take_with_uninstall_counts_the_freed_memory() {
    let setup = || {
        let mut sm = StateMachine::with_config(config());
        // Cycles to keep about 1.5 × 100 MiB for 30 days, plus the take's cost.
        let mib100 = 100u64 << 20;
        let cycles = sm.config().storage_cost(mib100 * 3 / 2, 2_592_000)
            + sm.config()
                .instructions_cost(2_000_000_000 + mib100 + (1 << 20));
        let id = create(&mut sm, controller(), cycles, None);
        sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller()));
        let c = TestCanister {
            id,
            sender: controller(),
        };
        c.write(&mut sm, true, mib100 - 1, &[1]);
        for _ in 0..20 {
            sm.tick();
        }
        (sm, c)
    };
    let take = |uninstall_code| TakeCanisterSnapshotArgs {
        canister_id: setup().1.id,
        replace_snapshot: None,
        uninstall_code,
        sender_canister_version: None,
    };
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.management::<(ic_management_canister_types::Snapshot,)>(
            Some(c.sender),
            "take_canister_snapshot",
            (take(None),),
        )
    });
    assert_eq!(
        err.error_code,
        ErrorCode::InsufficientCyclesInMemoryGrow,
        "{err}"
    );
    let (mut sm, c) = setup();
    sm.management::<(ic_management_canister_types::Snapshot,)>(
        Some(c.sender),
        "take_canister_snapshot",
        (take(Some(true)),),
    )
    .unwrap();
    assert!(sm.state().canisters[&c.id].execution_state.is_none());
}

/// `uninstall_code` clears the Wasm chunk store, as the interface spec says.
#[test]
fn uninstall_code_clears_the_chunk_store() {
    let (mut sm, c) = env_with_config(config());
    let id = upload_metadata(
        &mut sm,
        c.sender,
        upload_args(&c, TEST_CANISTER_WASM.len() as u64),
    )
    .unwrap();
    upload_module(&mut sm, &c, &id, TEST_CANISTER_WASM);
    send_data(&mut sm, &c, chunk_args(&c, &id, vec![9; 100])).unwrap();
    sm.load_canister_snapshot(c.id, Some(c.sender), id).unwrap();
    assert_eq!(sm.state().canisters[&c.id].wasm_chunk_store.len(), 1);
    let args = ic_management_canister_types::UninstallCodeArgs {
        canister_id: c.id,
        sender_canister_version: None,
    };
    sm.management::<()>(Some(c.sender), "uninstall_code", (args,))
        .unwrap();
    assert!(sm.state().canisters[&c.id].wasm_chunk_store.is_empty());
}

// ---------------------------------------------------------------------------------------------
// read_canister_snapshot_data: size, charge, bounds
// ---------------------------------------------------------------------------------------------

/// The replica checks the slice size, then charges the baseline plus the size *requested* up
/// front, then checks the bounds, and keeps the charge when they fail.
#[test]
fn read_data_charges_the_requested_size_up_front_and_keeps_it() {
    let (mut sm, c) = env_with_config(config());
    c.fill(&mut sm, true, 0, 65_536, 3);
    let id = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap()
        .id;
    let config = sm.config().clone();
    let cost = |n: u64| config.instructions_cost(config.read_data_base_instructions + n);

    // Too large: refused before any charge.
    let before = c.cycles(&sm);
    let err = read_data(
        &mut sm,
        &c,
        &id,
        SnapshotDataKind::StableMemory {
            offset: u64::MAX,
            size: 2_000_001,
        },
    )
    .unwrap_err();
    assert!(err.reject_message.contains("at most 2000000"), "{err}");
    assert_eq!(c.cycles(&sm), before);

    // Out of bounds: refused after the charge for what was asked, which stays.
    let err = read_data(
        &mut sm,
        &c,
        &id,
        SnapshotDataKind::StableMemory {
            offset: 65_000,
            size: 1_000,
        },
    )
    .unwrap_err();
    assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
    assert_eq!(before - c.cycles(&sm), cost(1_000));

    // A chunk is charged as 1 MiB, found or not.
    let before = c.cycles(&sm);
    let err = read_data(
        &mut sm,
        &c,
        &id,
        SnapshotDataKind::WasmChunk { hash: vec![0; 32] },
    )
    .unwrap_err();
    assert_eq!(err.error_code, ErrorCode::CanisterContractViolation);
    assert_eq!(before - c.cycles(&sm), cost(WASM_CHUNK_ACCOUNTED_BYTES));
}

// ---------------------------------------------------------------------------------------------
// last_install_timestamp
// ---------------------------------------------------------------------------------------------

/// The replica stamps every execution state it creates with the batch time
/// (`Hypervisor::create_execution_state` in dfinity/ic `rs/execution_environment/src/
/// hypervisor.rs`: install, reinstall, upgrade and a snapshot load) and certifies it at
/// `/canister/<id>/last_install_timestamp` while code is installed; a take with
/// `uninstall_code` drops it with the code. Messages and plain takes keep it; a checkpoint
/// keeps it; the state hash covers it.
#[test]
fn last_install_timestamp_is_set_by_installs_and_loads_and_cleared_by_an_uninstalling_take() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), config()).unwrap();
    let c = install_new(&mut sm, controller());
    let stamp = |sm: &StateMachine| sm.state().canisters[&c.id].last_install_timestamp;
    let installed = sm.state().time;
    assert_eq!(stamp(&sm), Some(installed));

    sm.advance_time(std::time::Duration::from_secs(10));
    c.write(&mut sm, false, 0, b"kept");
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    assert_eq!(stamp(&sm), Some(installed), "messages and takes keep it");

    sm.advance_time(std::time::Duration::from_secs(10));
    sm.upgrade_canister(c.id, TEST_CANISTER_WASM.to_vec(), vec![], Some(c.sender))
        .unwrap();
    let upgraded = sm.state().time;
    assert!(upgraded > installed);
    assert_eq!(stamp(&sm), Some(upgraded), "an upgrade is an install");

    sm.advance_time(std::time::Duration::from_secs(10));
    let take = TakeCanisterSnapshotArgs {
        canister_id: c.id,
        replace_snapshot: None,
        uninstall_code: Some(true),
        sender_canister_version: None,
    };
    let mut restamped = sm.state().clone();
    if let Some(canister) = restamped.canisters.get_mut(&c.id) {
        canister.last_install_timestamp = Some(installed);
    }
    assert_ne!(
        restamped.state_hash(),
        sm.state_hash(),
        "the state hash covers it"
    );
    sm.management::<(ic_management_canister_types::Snapshot,)>(
        Some(c.sender),
        "take_canister_snapshot",
        (take,),
    )
    .unwrap();
    assert_eq!(stamp(&sm), None, "a take with uninstall_code clears it");

    sm.advance_time(std::time::Duration::from_secs(10));
    sm.load_canister_snapshot(c.id, Some(c.sender), snapshot.id)
        .unwrap();
    let loaded = sm.state().time;
    assert!(loaded > upgraded);
    assert_eq!(stamp(&sm), Some(loaded), "a load stamps the loaded code");

    let hash = sm.state_hash();
    sm.checkpoint().unwrap();
    drop(sm);
    let sm = StateMachine::open(dir.path(), config()).unwrap();
    assert_eq!(stamp(&sm), Some(loaded), "a checkpoint keeps it");
    assert_eq!(sm.state_hash(), hash);
}

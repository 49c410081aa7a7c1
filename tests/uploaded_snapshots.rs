//! Loading an uploaded snapshot: what the replica checks before it trusts one (the module, the
//! globals, the low-memory hook status, a complete module even through a base), and what such a
//! load restores of the timer and the hook. Every refusal is checked against a twin machine.

mod common;

use canister_snapshots::management::types::{SnapshotMetadata, UploadCanisterSnapshotMetadataArgs};
use canister_snapshots::state::HookStatus;
use canister_snapshots::{Config, RejectResponse, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterSettings, CanisterTimer, OnLowWasmMemoryHookStatus, SnapshotMetadataGlobal,
};
use serde_bytes::ByteBuf;

use common::*;

/// A machine (quota 3) with the test canister and a complete uploaded snapshot made from
/// `args` (its module the test canister's own), ready to load.
fn with_upload(
    edit: impl Fn(&mut UploadCanisterSnapshotMetadataArgs),
) -> (StateMachine, (TestCanister, Vec<u8>)) {
    let (mut sm, c) = env_with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    let mut args = upload_args(&c, TEST_CANISTER_WASM.len() as u64);
    edit(&mut args);
    let id = upload_metadata(&mut sm, c.sender, args).unwrap();
    upload_module(&mut sm, &c, &id, TEST_CANISTER_WASM);
    (sm, (c, id))
}

fn load(sm: &mut StateMachine, c: &TestCanister, id: &[u8]) -> Result<(), RejectResponse> {
    sm.load_canister_snapshot(c.id, Some(c.sender), id.to_vec())
}

// ---------------------------------------------------------------------------------------------
// The replica crash: globals that do not fit the module
// ---------------------------------------------------------------------------------------------

/// The four messages that used to bring the replica down: upload metadata with no globals,
/// upload the module, load, `set_global`. The load is now refused and changes nothing.
#[test]
fn an_upload_without_the_modules_globals_is_refused_at_load() {
    let err = assert_refused_without_effect(
        || with_upload(|args| args.globals = vec![]),
        |sm, (c, id)| load(sm, c, id),
    );
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::InvalidManagementPayload,
        RejectCode::CanisterReject,
        &[
            "inconsistent",
            "globals",
            "exports 2 globals, the snapshot has 0",
        ],
    );
    // And the canister still runs its own globals: set_global works as before.
    let (mut sm, (c, id)) = with_upload(|args| args.globals = vec![]);
    assert!(load(&mut sm, &c, &id).is_err());
    c.set_global(&mut sm, 0, 7);
    assert_eq!(c.get_global(&mut sm, 0), 7);
}

#[test]
fn an_upload_with_globals_of_the_wrong_type_is_refused_at_load() {
    let err = assert_refused_without_effect(
        || {
            with_upload(|args| {
                args.globals = vec![
                    SnapshotMetadataGlobal::F32(1.5),
                    SnapshotMetadataGlobal::I64(0),
                ]
            })
        },
        |sm, (c, id)| load(sm, c, id),
    );
    assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload, "{err}");
    assert!(
        err.reject_message
            .contains("global 0 is i64 in the module but f32 in the snapshot"),
        "{err}"
    );
    let err = assert_refused_without_effect(
        || with_upload(|args| args.globals.push(SnapshotMetadataGlobal::I32(1))),
        |sm, (c, id)| load(sm, c, id),
    );
    assert!(
        err.reject_message
            .contains("exports 2 globals, the snapshot has 3"),
        "{err}"
    );
}

#[test]
fn an_upload_with_the_modules_globals_loads_and_runs() {
    let (mut sm, (c, id)) = with_upload(|args| {
        args.globals = vec![
            SnapshotMetadataGlobal::I64(-5),
            SnapshotMetadataGlobal::I64(9),
        ]
    });
    load(&mut sm, &c, &id).unwrap();
    assert_eq!(c.get_global(&mut sm, 0), -5);
    assert_eq!(c.get_global(&mut sm, 1), 9);
    c.set_global(&mut sm, 1, 10);
    assert_eq!(c.get_global(&mut sm, 1), 10);
}

/// A module the engine does not accept is refused at load with the code an install of it
/// gets (the replica compiles the module first and reports the engine's error).
#[test]
fn an_upload_whose_module_the_engine_refuses_is_refused_at_load() {
    let setup = || {
        let (mut sm, c) = env_with_config(Config {
            max_snapshots_per_canister: 3,
            ..Config::default()
        });
        let id = upload_metadata(&mut sm, c.sender, upload_args(&c, 8)).unwrap();
        upload_module(&mut sm, &c, &id, b"not wasm");
        (sm, (c, id))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| load(sm, c, id));
    assert_eq!(err.error_code, ErrorCode::CanisterInvalidWasm, "{err}");
    assert!(err.reject_message.contains("cannot be loaded"), "{err}");
    assert!(
        err.reject_message.contains("magic header not detected"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// An incomplete base must not make an incomplete upload loadable
// ---------------------------------------------------------------------------------------------

/// Upload metadata for a 1,000-byte module and no data: not loadable. A second upload with that
/// snapshot as its base used to inherit the 1,000 zero bytes as if they had been written, load,
/// and leave the canister running zeros as its module.
#[test]
fn an_incomplete_base_gives_no_module_to_an_upload() {
    let setup = || {
        let (mut sm, c) = env_with_config(Config {
            max_snapshots_per_canister: 3,
            ..Config::default()
        });
        let base = upload_metadata(&mut sm, c.sender, upload_args(&c, 1_000)).unwrap();
        assert_reject(
            load(&mut sm, &c, &base),
            ErrorCode::CanisterRejectedMessage,
            RejectCode::CanisterReject,
            &["incomplete", "[0, 1000)"],
        );
        let mut second = upload_args(&c, 1_000);
        second.base_snapshot = Some(ByteBuf::from(base));
        let id = upload_metadata(&mut sm, c.sender, second).unwrap();
        (sm, (c, id))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| load(sm, c, id));
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &[
            "incomplete",
            "bytes [0, 1000) of its Wasm module were never uploaded",
        ],
    );
}

/// A complete base still gives its module: an incremental upload need not resend it.
#[test]
fn a_complete_base_gives_its_module_to_an_upload() {
    let (mut sm, (c, base)) = with_upload(|_| {});
    let mut args = upload_args(&c, TEST_CANISTER_WASM.len() as u64);
    args.base_snapshot = Some(ByteBuf::from(base));
    let id = upload_metadata(&mut sm, c.sender, args).unwrap();
    load(&mut sm, &c, &id).unwrap();
    assert_eq!(c.memory_sizes(&mut sm), (65_536, 0));
}

// ---------------------------------------------------------------------------------------------
// Low-memory hook status and global timer
// ---------------------------------------------------------------------------------------------

fn hook(status: OnLowWasmMemoryHookStatus) -> impl Fn(&mut UploadCanisterSnapshotMetadataArgs) {
    move |args| args.on_low_wasm_memory_hook_status = Some(status.clone())
}

/// With no `wasm_memory_threshold` the hook condition cannot hold, so an uploaded status of
/// "ready" (or "executed") contradicts the canister: refused, as the replica refuses it.
#[test]
fn a_hook_status_inconsistent_with_the_canister_is_refused_at_load() {
    for status in [
        OnLowWasmMemoryHookStatus::Ready,
        OnLowWasmMemoryHookStatus::Executed,
    ] {
        let err = assert_refused_without_effect(
            || with_upload(hook(status.clone())),
            |sm, (c, id)| load(sm, c, id),
        );
        assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload, "{err}");
        assert!(
            err.reject_message
                .contains("hook condition is not satisfied"),
            "{err}"
        );
    }
}

/// With a threshold above what remains under the limit, the condition holds: "ready" is
/// consistent and is restored, "condition not satisfied" is the one refused.
#[test]
fn a_hook_status_consistent_with_the_canister_is_restored() {
    let satisfied = |status: OnLowWasmMemoryHookStatus| {
        let (mut sm, (c, id)) = with_upload(hook(status));
        let settings = CanisterSettings {
            wasm_memory_limit: Some(1_000_000u64.into()),
            wasm_memory_threshold: Some(950_000u64.into()),
            ..CanisterSettings::default()
        };
        update_settings(&mut sm, c.sender, c.id, settings).unwrap();
        (sm, (c, id))
    };
    let (mut sm, (c, id)) = satisfied(OnLowWasmMemoryHookStatus::Ready);
    load(&mut sm, &c, &id).unwrap();
    assert_eq!(
        sm.state().canisters[&c.id].on_low_wasm_memory_hook_status,
        HookStatus::Ready
    );
    let err = assert_refused_without_effect(
        || satisfied(OnLowWasmMemoryHookStatus::ConditionNotSatisfied),
        |sm, (c, id)| load(sm, c, id),
    );
    assert!(
        err.reject_message.contains("hook condition is satisfied"),
        "{err}"
    );
}

/// The replica's condition is `wasm_memory_limit < heap + threshold`: with no threshold, a
/// snapshot heap above the canister's limit satisfies it. "ready" is then restored and
/// "condition not satisfied" refused; a null status is never checked.
#[test]
fn a_heap_above_the_limit_satisfies_the_hook_condition_without_a_threshold() {
    let over_the_limit = |status: Option<OnLowWasmMemoryHookStatus>| {
        let (mut sm, (c, id)) =
            with_upload(move |args| args.on_low_wasm_memory_hook_status = status.clone());
        let settings = CanisterSettings {
            wasm_memory_limit: Some(65_535u64.into()),
            wasm_memory_threshold: Some(0u64.into()),
            ..CanisterSettings::default()
        };
        update_settings(&mut sm, c.sender, c.id, settings).unwrap();
        (sm, (c, id))
    };
    let (mut sm, (c, id)) = over_the_limit(Some(OnLowWasmMemoryHookStatus::Ready));
    load(&mut sm, &c, &id).unwrap();
    assert_eq!(
        sm.state().canisters[&c.id].on_low_wasm_memory_hook_status,
        HookStatus::Ready
    );
    let err = assert_refused_without_effect(
        || over_the_limit(Some(OnLowWasmMemoryHookStatus::ConditionNotSatisfied)),
        |sm, (c, id)| load(sm, c, id),
    );
    assert!(
        err.reject_message.contains("hook condition is satisfied"),
        "{err}"
    );
    let (mut sm, (c, id)) = over_the_limit(None);
    load(&mut sm, &c, &id).unwrap();
}

/// Gives the canister an active timer and a "ready" hook the only way the test canister
/// allows: by loading an uploaded snapshot that declares them.
fn with_timer_and_hook(sm: &mut StateMachine, c: &TestCanister) {
    let settings = CanisterSettings {
        wasm_memory_limit: Some(1_000_000u64.into()),
        wasm_memory_threshold: Some(950_000u64.into()),
        ..CanisterSettings::default()
    };
    update_settings(sm, c.sender, c.id, settings).unwrap();
    let mut args = upload_args(c, TEST_CANISTER_WASM.len() as u64);
    args.global_timer = Some(CanisterTimer::Active(123));
    args.on_low_wasm_memory_hook_status = Some(OnLowWasmMemoryHookStatus::Ready);
    let id = upload_metadata(sm, c.sender, args).unwrap();
    upload_module(sm, c, &id, TEST_CANISTER_WASM);
    load(sm, c, &id).unwrap();
    sm.delete_canister_snapshot(c.id, Some(c.sender), id)
        .unwrap();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!(canister.global_timer, Some(123));
    assert_eq!(canister.on_low_wasm_memory_hook_status, HookStatus::Ready);
}

/// The replica does not restore the timer or the hook status of a *taken* snapshot: the
/// canister keeps its current ones (rs/execution_environment's
/// `load_canister_snapshot` keeps `system_state.global_timer` unless the source is an upload).
#[test]
fn loading_a_taken_snapshot_keeps_the_current_timer_and_hook_status() {
    let (mut sm, c) = env_with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    let taken = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap()
        .id;
    with_timer_and_hook(&mut sm, &c);
    load(&mut sm, &c, &taken).unwrap();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!(canister.global_timer, Some(123));
    assert_eq!(canister.on_low_wasm_memory_hook_status, HookStatus::Ready);
}

/// An upload that gives no timer and no hook status (`null`) leaves the canister's as they
/// are; one that gives them restores them. Reading the metadata back returns what was
/// uploaded, `null` included.
#[test]
fn an_upload_restores_the_timer_and_hook_status_only_when_given() {
    let (mut sm, c) = env_with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    with_timer_and_hook(&mut sm, &c);
    let id = upload_metadata(
        &mut sm,
        c.sender,
        upload_args(&c, TEST_CANISTER_WASM.len() as u64),
    )
    .unwrap();
    upload_module(&mut sm, &c, &id, TEST_CANISTER_WASM);
    let read: SnapshotMetadata = sm
        .read_canister_snapshot_metadata(c.id, Some(c.sender), id.clone())
        .unwrap();
    assert!(read.global_timer.is_none(), "{:?}", read.global_timer);
    assert!(read.on_low_wasm_memory_hook_status.is_none());
    load(&mut sm, &c, &id).unwrap();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!(canister.global_timer, Some(123));
    assert_eq!(canister.on_low_wasm_memory_hook_status, HookStatus::Ready);
    sm.delete_canister_snapshot(c.id, Some(c.sender), id)
        .unwrap();

    let mut args = upload_args(&c, TEST_CANISTER_WASM.len() as u64);
    args.global_timer = Some(CanisterTimer::Inactive);
    args.on_low_wasm_memory_hook_status = Some(OnLowWasmMemoryHookStatus::Executed);
    let id = upload_metadata(&mut sm, c.sender, args).unwrap();
    upload_module(&mut sm, &c, &id, TEST_CANISTER_WASM);
    let read = sm
        .read_canister_snapshot_metadata(c.id, Some(c.sender), id.clone())
        .unwrap();
    assert!(matches!(read.global_timer, Some(CanisterTimer::Inactive)));
    assert!(matches!(
        read.on_low_wasm_memory_hook_status,
        Some(OnLowWasmMemoryHookStatus::Executed)
    ));
    load(&mut sm, &c, &id).unwrap();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!(canister.global_timer, None);
    assert_eq!(
        canister.on_low_wasm_memory_hook_status,
        HookStatus::Executed
    );
}

//! The management canister through the harness ([`StateMachine`]): every lifecycle method, the
//! snapshot methods and their semantics, every row of the error table of
//! `/work/shared/reference/ic-snapshots.md`, and this project's label/checksum extension.
//!
//! Memories stay small (KiB to a few MiB) so the whole file runs in a few seconds in debug.
//! Every refused call is checked to leave the state exactly as it was with
//! [`assert_refused_without_effect`]: the same setup is built twice, one machine gets the
//! refused call and the other an empty round, and both their contents and state hashes must
//! agree.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use candid::{Decode, Encode, Nat, Principal, Reserved};
use canister_snapshots::management::METHODS;
use canister_snapshots::management::types::{
    MAX_SNAPSHOT_LABEL_BYTES, SnapshotInfo, TakeCanisterSnapshotArgs as LabelledTakeArgs,
};
use canister_snapshots::memory::checksum::sha256;
use canister_snapshots::replicated_state::{GENESIS_TIME_NANOS, canister_id_from_index};
use canister_snapshots::snapshots::SnapshotId;
use canister_snapshots::state::{CanisterStatus, Global, MAX_CANISTER_HISTORY_CHANGES};
use canister_snapshots::{Config, RejectResponse, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInstallMode, CanisterSettings as SettingsArgs,
    CanisterStatusType, Change, ChangeDetails, ChangeOrigin, CodeDeploymentMode,
    CodeDeploymentRecord, ControllersChangeRecord, CreateCanisterArgs, CreationRecord,
    DeleteCanisterSnapshotArgs, FromUserRecord, LoadCanisterSnapshotArgs, LoadSnapshotRecord,
    ProvisionalCreateCanisterWithCyclesArgs, Snapshot, SnapshotSource, SnapshotVisibility,
    TakeCanisterSnapshotArgs, UninstallCodeArgs,
};

use common::*;

// ---------------------------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------------------------

/// A call to make against any machine.
type BoxedCall<'a> = Box<dyn Fn(&mut StateMachine) -> Result<(), RejectResponse> + 'a>;
/// A call about the [`fixture`]'s canister and snapshot.
type FixtureCall = fn(&mut StateMachine, &TestCanister, &Vec<u8>) -> Result<(), RejectResponse>;
type BoxedFixtureCall =
    Box<dyn Fn(&mut StateMachine, &TestCanister, &Vec<u8>) -> Result<(), RejectResponse>>;

fn mgmt() -> Principal {
    Principal::management_canister()
}

fn from_user(user_id: Principal) -> ChangeOrigin {
    ChangeOrigin::FromUser(FromUserRecord { user_id })
}

fn uninstall_code(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
) -> Result<(), RejectResponse> {
    let args = UninstallCodeArgs {
        canister_id,
        sender_canister_version: None,
    };
    sm.management(Some(sender), "uninstall_code", (args,))
}

fn delete_canister(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
) -> Result<(), RejectResponse> {
    sm.management(
        Some(sender),
        "delete_canister",
        (CanisterIdRecord { canister_id },),
    )
}

/// `take_canister_snapshot` with the standard argument type, through `update_call`.
fn take(
    sm: &mut StateMachine,
    sender: Principal,
    args: &TakeCanisterSnapshotArgs,
) -> Result<Snapshot, RejectResponse> {
    sm.update_call(
        mgmt(),
        sender,
        "take_canister_snapshot",
        Encode!(args).unwrap(),
    )
    .map(|reply| Decode!(&reply, Snapshot).unwrap())
}

fn take_args(canister_id: Principal) -> TakeCanisterSnapshotArgs {
    TakeCanisterSnapshotArgs {
        canister_id,
        replace_snapshot: None,
        uninstall_code: None,
        sender_canister_version: None,
    }
}

/// The canister's history as the IC's types read it (scheduled takes are kept apart:
/// `tests/scheduled_snapshots.rs`).
fn history(sm: &StateMachine, canister_id: Principal) -> Vec<Change> {
    sm.state().canisters[&canister_id]
        .history
        .changes()
        .map(|change| change.to_ic())
        .collect()
}

fn last_change(sm: &StateMachine, canister_id: Principal) -> Change {
    history(sm, canister_id)
        .pop()
        .expect("history is never empty")
}

fn config_with_quota(max_snapshots_per_canister: usize) -> Config {
    Config {
        max_snapshots_per_canister,
        ..Config::default()
    }
}

/// A populated canister with one snapshot: the usual setup of the error tests.
fn fixture() -> (StateMachine, (TestCanister, Vec<u8>)) {
    let (sm, canister, snapshot) = populated_env(true);
    (sm, (canister, snapshot.unwrap()))
}

/// A canister id this subnet has not allocated.
fn missing_canister() -> Principal {
    canister_id_from_index(77)
}

/// The bytes of the snapshot id `counter` of `canister_id`, built by hand (not by the crate).
fn snapshot_id_bytes(canister_id: Principal, counter: u64) -> Vec<u8> {
    [&counter.to_be_bytes()[..], canister_id.as_slice()].concat()
}

/// The canister's own memory as `canister_status` reports its parts.
fn own_memory(status: &ic_management_canister_types::CanisterStatusResult, cert: u64) -> Nat {
    let m = &status.memory_metrics;
    m.wasm_memory_size.clone()
        + m.stable_memory_size.clone()
        + m.global_memory_size.clone()
        + m.wasm_binary_size.clone()
        + m.wasm_chunk_store_size.clone()
        + Nat::from(cert)
}

// =============================================================================================
// 1. Lifecycle methods
// =============================================================================================

#[test]
fn provisional_create_canister_with_cycles_sets_amount_controllers_and_history() {
    let mut sm = StateMachine::new();
    let id = create(&mut sm, user(1), 123_456_789, None);
    assert_eq!(id, canister_id_from_index(0), "the first allocated id");
    let canister = &sm.state().canisters[&id];
    assert_eq!(canister.cycles, 123_456_789);
    assert_eq!(canister.controllers, BTreeSet::from([user(1)]));
    assert_eq!(canister.canister_version, 0);
    assert!(canister.execution_state.is_none());
    assert_eq!(canister.status, CanisterStatus::Running);
    assert_eq!(
        history(&sm, id),
        vec![Change {
            timestamp_nanos: GENESIS_TIME_NANOS,
            canister_version: 0,
            origin: from_user(user(1)),
            details: Some(ChangeDetails::Creation(CreationRecord {
                controllers: vec![user(1)],
                environment_variables_hash: None,
            })),
        }]
    );
    let status = sm.canister_status(id, Some(user(1))).unwrap();
    assert_eq!(status.cycles, Nat::from(123_456_789u64));
    assert_eq!(status.module_hash, None);
    assert_eq!(status.status, CanisterStatusType::Running);
    assert_eq!(status.version, 0);

    // No amount: the configured default. Settings: applied, controllers replace the sender.
    let args = ProvisionalCreateCanisterWithCyclesArgs {
        amount: None,
        settings: Some(SettingsArgs {
            controllers: Some(vec![user(2), user(3)]),
            freezing_threshold: Some(Nat::from(7u64)),
            ..Default::default()
        }),
        specified_id: None,
        sender_canister_version: None,
    };
    let (record,): (CanisterIdRecord,) = sm
        .management(
            Some(user(1)),
            "provisional_create_canister_with_cycles",
            (args,),
        )
        .unwrap();
    assert_eq!(record.canister_id, canister_id_from_index(1));
    let canister = &sm.state().canisters[&record.canister_id];
    assert_eq!(canister.cycles, sm.config().default_canister_cycles);
    assert_eq!(canister.controllers, BTreeSet::from([user(2), user(3)]));
    assert_eq!(canister.settings.freezing_threshold, 7);
    // user(1) created it but does not control it.
    assert_reject(
        sm.canister_status(record.canister_id, Some(user(1))),
        ErrorCode::CanisterInvalidController,
        RejectCode::CanisterError,
        &["Only the controllers"],
    );
}

#[test]
fn provisional_create_with_specified_id_and_duplicate() {
    let wanted = canister_id_from_index(0);
    let setup = || {
        let mut sm = StateMachine::new();
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: Some(Nat::from(1_000u64)),
            settings: None,
            specified_id: Some(wanted),
            sender_canister_version: None,
        };
        let (record,): (CanisterIdRecord,) = sm
            .management(
                Some(user(1)),
                "provisional_create_canister_with_cycles",
                (args,),
            )
            .unwrap();
        assert_eq!(record.canister_id, wanted);
        (sm, ())
    };
    let err = assert_refused_without_effect(setup, |sm, ()| {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: Some(Nat::from(5u64)),
            settings: None,
            specified_id: Some(wanted),
            sender_canister_version: None,
        };
        sm.management::<(CanisterIdRecord,)>(
            Some(user(2)),
            "provisional_create_canister_with_cycles",
            (args,),
        )
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterIdAlreadyExists,
        RejectCode::SysTransient,
        &[&wanted.to_string(), "exists or existed"],
    );

    // The allocator skips the id taken by `specified_id`.
    let (mut sm, ()) = setup();
    assert_eq!(sm.state().canisters[&wanted].cycles, 1_000);
    let next = create(&mut sm, user(1), 1, None);
    assert_eq!(next, canister_id_from_index(1));
    // Any principal may be specified.
    let arbitrary = Principal::from_slice(&[9; 10]);
    let args = ProvisionalCreateCanisterWithCyclesArgs {
        amount: None,
        settings: None,
        specified_id: Some(arbitrary),
        sender_canister_version: None,
    };
    let (record,): (CanisterIdRecord,) = sm
        .management(
            Some(user(1)),
            "provisional_create_canister_with_cycles",
            (args,),
        )
        .unwrap();
    assert_eq!(record.canister_id, arbitrary);
    assert_eq!(sm.state().canisters.len(), 3);
}

#[test]
fn create_canister_uses_default_cycles_and_settings() {
    let mut sm = StateMachine::new();
    let (record,): (CanisterIdRecord,) = sm
        .management(
            Some(user(1)),
            "create_canister",
            (CreateCanisterArgs {
                settings: None,
                sender_canister_version: None,
            },),
        )
        .unwrap();
    let canister = &sm.state().canisters[&record.canister_id];
    assert_eq!(canister.cycles, sm.config().default_canister_cycles);
    assert_eq!(canister.controllers, BTreeSet::from([user(1)]));
    assert_eq!(
        canister.settings.snapshot_visibility,
        SnapshotVisibility::Controllers
    );

    let settings = SettingsArgs {
        controllers: Some(vec![user(4)]),
        snapshot_visibility: Some(SnapshotVisibility::Public),
        ..Default::default()
    };
    let (record,): (CanisterIdRecord,) = sm
        .management(
            Some(user(1)),
            "create_canister",
            (CreateCanisterArgs {
                settings: Some(settings),
                sender_canister_version: None,
            },),
        )
        .unwrap();
    let canister = &sm.state().canisters[&record.canister_id];
    assert_eq!(canister.controllers, BTreeSet::from([user(4)]));
    assert_eq!(
        canister.settings.snapshot_visibility,
        SnapshotVisibility::Public
    );
    assert_eq!(
        history(&sm, record.canister_id)[0].details,
        Some(ChangeDetails::Creation(CreationRecord {
            controllers: vec![user(4)],
            environment_variables_hash: None,
        }))
    );
}

#[test]
fn install_upgrade_and_reinstall_semantics() {
    let (mut sm, c) = env();
    assert_eq!(c.version(&sm), 1);
    assert_eq!(
        last_change(&sm, c.id).details,
        Some(ChangeDetails::CodeDeployment(CodeDeploymentRecord {
            mode: CodeDeploymentMode::Install,
            module_hash: sha256(TEST_CANISTER_WASM).to_vec(),
        }))
    );
    populate(&mut sm, &c);
    assert_eq!(c.memory_sizes(&mut sm), (131_072, 65_536));

    // Upgrade: stable memory and certified data stay; heap and globals start afresh.
    let v2 = module("v2");
    install_code(
        &mut sm,
        controller(),
        c.id,
        CanisterInstallMode::Upgrade(None),
        v2.clone(),
    )
    .unwrap();
    assert_eq!(c.version(&sm), 2);
    assert_eq!(c.memory_sizes(&mut sm), (0, 65_536));
    assert_eq!(c.read(&mut sm, true, 9_000, 13), b"stable marker");
    assert_eq!(c.read(&mut sm, true, 0, 3), [0x5B; 3]);
    assert_reject(
        c.try_read(&mut sm, false, 0, 1),
        ErrorCode::CanisterTrapped,
        RejectCode::CanisterError,
        &["outside the memory of 0 bytes"],
    );
    assert_eq!(c.get_global(&mut sm, 0), 0);
    assert_eq!(c.get_global(&mut sm, 1), 0);
    assert_eq!(c.certified_data(&sm), b"certified");
    assert_eq!(
        sm.canister_status(c.id, Some(controller()))
            .unwrap()
            .module_hash,
        Some(sha256(&v2).to_vec())
    );
    assert_eq!(
        last_change(&sm, c.id),
        Change {
            timestamp_nanos: sm.get_time(),
            canister_version: 2,
            origin: from_user(controller()),
            details: Some(ChangeDetails::CodeDeployment(CodeDeploymentRecord {
                mode: CodeDeploymentMode::Upgrade,
                module_hash: sha256(&v2).to_vec(),
            })),
        }
    );

    // Reinstall: everything starts afresh.
    c.write(&mut sm, false, 10, b"x");
    c.set_global(&mut sm, 0, 5);
    let v3 = module("v3");
    install_code(
        &mut sm,
        controller(),
        c.id,
        CanisterInstallMode::Reinstall,
        v3.clone(),
    )
    .unwrap();
    assert_eq!(c.version(&sm), 3);
    assert_eq!(c.memory_sizes(&mut sm), (0, 0));
    assert_eq!(c.get_global(&mut sm, 0), 0);
    assert_eq!(c.certified_data(&sm), b"");
    assert_eq!(
        last_change(&sm, c.id).details,
        Some(ChangeDetails::CodeDeployment(CodeDeploymentRecord {
            mode: CodeDeploymentMode::Reinstall,
            module_hash: sha256(&v3).to_vec(),
        }))
    );

    // Reinstall works on an empty canister too.
    let empty = create(&mut sm, controller(), 1_000_000, None);
    install_code(
        &mut sm,
        controller(),
        empty,
        CanisterInstallMode::Reinstall,
        module("v1"),
    )
    .unwrap();
    assert_eq!(sm.state().canisters[&empty].canister_version, 1);
}

#[test]
fn install_on_non_empty_canister_is_refused() {
    let err = assert_refused_without_effect(
        || {
            let (sm, c, _) = populated_env(false);
            (sm, c)
        },
        |sm, c| {
            install_code(
                sm,
                controller(),
                c.id,
                CanisterInstallMode::Install,
                module("v2"),
            )
        },
    );
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterNonEmpty,
        RejectCode::CanisterError,
        &["not empty", "reinstall"],
    );
}

#[test]
fn upgrade_of_empty_canister_is_refused() {
    let setup = || {
        let mut sm = StateMachine::new();
        let id = create(&mut sm, controller(), 1_000_000_000_000, None);
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        install_code(
            sm,
            controller(),
            *id,
            CanisterInstallMode::Upgrade(None),
            TEST_CANISTER_WASM.to_vec(),
        )
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterWasmModuleNotFound,
        RejectCode::CanisterError,
        &["no code to upgrade"],
    );
}

#[test]
fn module_without_wasm_header_is_refused() {
    let modules: [&[u8]; 4] = [b"", b"\0asm", b"\0asm\x02\0\0\0", b"#!/bin/sh\necho hi"];
    let modes = [
        CanisterInstallMode::Install,
        CanisterInstallMode::Reinstall,
        CanisterInstallMode::Upgrade(None),
    ];
    for bad in modules {
        for mode in &modes {
            // Install on an empty canister; reinstall and upgrade on an installed one.
            let setup = || {
                let mut sm = StateMachine::new();
                let id = create(&mut sm, controller(), 1_000_000_000_000, None);
                if *mode != CanisterInstallMode::Install {
                    sm.install_canister(
                        id,
                        TEST_CANISTER_WASM.to_vec(),
                        vec![],
                        Some(controller()),
                    );
                }
                (sm, id)
            };
            let err = assert_refused_without_effect(setup, |sm, id| {
                install_code(sm, controller(), *id, *mode, bad.to_vec())
            });
            assert_reject::<()>(
                Err(err),
                ErrorCode::CanisterInvalidWasm,
                RejectCode::CanisterError,
                &["Wasm module is invalid"],
            );
        }
    }
}

#[test]
fn uninstall_code_keeps_snapshots_and_records_the_change() {
    let (mut sm, c, snapshot) = populated_env(true);
    let snapshot = snapshot.unwrap();
    let version = c.version(&sm);
    sm.advance_time(Duration::from_secs(1));
    uninstall_code(&mut sm, controller(), c.id).unwrap();

    let canister = &sm.state().canisters[&c.id];
    assert!(canister.execution_state.is_none());
    assert!(canister.certified_data.is_empty());
    assert_eq!(canister.canister_version, version + 1);
    assert_eq!(
        last_change(&sm, c.id),
        Change {
            timestamp_nanos: sm.get_time(),
            canister_version: version + 1,
            origin: from_user(controller()),
            details: Some(ChangeDetails::CodeUninstall),
        }
    );
    let status = sm.canister_status(c.id, Some(controller())).unwrap();
    assert_eq!(status.module_hash, None);
    let list = sm
        .list_canister_snapshots(c.id, Some(controller()))
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, snapshot);

    assert_reject(
        c.try_read(&mut sm, false, 0, 1),
        ErrorCode::CanisterWasmModuleNotFound,
        RejectCode::CanisterError,
        &["contains no Wasm module"],
    );
    // The kept snapshot brings the code back.
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot)
        .unwrap();
    assert_eq!(c.read(&mut sm, false, 70_000, 11), b"heap marker");
    assert_eq!(c.version(&sm), version + 2);
}

#[test]
fn stopped_canister_rejects_calls_but_not_snapshots() {
    let setup = || {
        let (mut sm, c, _) = populated_env(false);
        sm.stop_canister(c.id, Some(controller())).unwrap();
        (sm, c)
    };
    let err = assert_refused_without_effect(setup, |sm, c| c.try_read(sm, false, 0, 1));
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterStopped,
        RejectCode::CanisterError,
        &["is stopped", "start_canister"],
    );
    let err = assert_refused_without_effect(setup, |sm, c| {
        c.call(sm, "write_heap", Encode!(&0u64, &b"x".to_vec()).unwrap())
    });
    assert_eq!(err.error_code, ErrorCode::CanisterStopped);

    let (mut sm, c) = setup();
    assert_eq!(
        sm.canister_status(c.id, Some(controller())).unwrap().status,
        CanisterStatusType::Stopped
    );
    // Stopping changes neither the version nor the history.
    assert_eq!(c.version(&sm), 1);
    // The management canister still serves a stopped canister: take and load work.
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id)
        .unwrap();
    sm.start_canister(c.id, Some(controller())).unwrap();
    assert_eq!(
        sm.canister_status(c.id, Some(controller())).unwrap().status,
        CanisterStatusType::Running
    );
    assert_eq!(c.read(&mut sm, false, 70_000, 11), b"heap marker");
    // Start and stop are for controllers only.
    for method in ["start_canister", "stop_canister"] {
        let err = assert_refused_without_effect(setup, |sm, c| {
            sm.management::<()>(
                Some(stranger()),
                method,
                (CanisterIdRecord { canister_id: c.id },),
            )
        });
        assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);
    }
}

#[test]
fn canister_status_counts_snapshots_in_memory() {
    let (mut sm, c) = env_with_config(config_with_quota(3));
    populate(&mut sm, &c);
    let cert = c.certified_data(&sm).len() as u64;
    let status = sm.canister_status(c.id, Some(controller())).unwrap();
    let own = own_memory(&status, cert);
    assert_eq!(status.memory_metrics.snapshots_size, Nat::from(0u64));
    assert_eq!(status.memory_size, own);
    assert_eq!(
        status.memory_metrics.wasm_memory_size,
        Nat::from(131_072u64)
    );
    assert_eq!(
        status.memory_metrics.stable_memory_size,
        Nat::from(65_536u64)
    );
    // Two globals at the replica's 32 bytes each (`size_of::<Global>()`), whatever their type.
    assert_eq!(status.memory_metrics.global_memory_size, Nat::from(64u64));
    assert_eq!(
        status.memory_metrics.wasm_binary_size,
        Nat::from(TEST_CANISTER_WASM.len())
    );

    let first = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(
        Nat::from(first.total_size),
        own,
        "total_size is the logical size"
    );
    c.fill(&mut sm, false, 200_000, 100_000, 1);
    let second = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert!(second.total_size > first.total_size);

    let status = sm.canister_status(c.id, Some(controller())).unwrap();
    let list = sm
        .list_canister_snapshots(c.id, Some(controller()))
        .unwrap();
    let sum: u64 = list.iter().map(|s| s.total_size).sum();
    assert_eq!(sum, first.total_size + second.total_size);
    assert_eq!(status.memory_metrics.snapshots_size, Nat::from(sum));
    assert_eq!(
        status.memory_size,
        own_memory(&status, cert) + Nat::from(sum)
    );
    assert_eq!(
        sm.state().snapshots.snapshots_size(c.id),
        sum,
        "the store agrees"
    );

    sm.delete_canister_snapshot(c.id, Some(controller()), first.id)
        .unwrap();
    let status = sm.canister_status(c.id, Some(controller())).unwrap();
    assert_eq!(
        status.memory_metrics.snapshots_size,
        Nat::from(second.total_size)
    );
}

#[test]
fn canister_info_reports_the_history() {
    let mut sm = StateMachine::new();
    let c = install_new(&mut sm, controller());
    let genesis = sm.get_time();
    c.write(&mut sm, false, 0, b"data");
    sm.advance_time(Duration::from_secs(10));
    let taken_at = sm.get_time();
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(snapshot.taken_at_timestamp, taken_at);
    sm.advance_time(Duration::from_secs(10));
    let loaded_at = sm.get_time();
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id.clone())
        .unwrap();
    sm.advance_time(Duration::from_secs(10));
    let uninstalled_at = sm.get_time();
    uninstall_code(&mut sm, controller(), c.id).unwrap();
    sm.advance_time(Duration::from_secs(10));
    let changed_at = sm.get_time();
    let new_controllers = vec![controller(), user(2)];
    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            controllers: Some(new_controllers.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    // A settings change without controllers bumps the version but records nothing.
    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            freezing_threshold: Some(Nat::from(100u64)),
            ..Default::default()
        },
    )
    .unwrap();

    let mut sorted = new_controllers.clone();
    sorted.sort();
    let expected = vec![
        Change {
            timestamp_nanos: genesis,
            canister_version: 0,
            origin: from_user(controller()),
            details: Some(ChangeDetails::Creation(CreationRecord {
                controllers: vec![controller()],
                environment_variables_hash: None,
            })),
        },
        Change {
            timestamp_nanos: genesis,
            canister_version: 1,
            origin: from_user(controller()),
            details: Some(ChangeDetails::CodeDeployment(CodeDeploymentRecord {
                mode: CodeDeploymentMode::Install,
                module_hash: sha256(TEST_CANISTER_WASM).to_vec(),
            })),
        },
        Change {
            timestamp_nanos: loaded_at,
            canister_version: 2,
            origin: from_user(controller()),
            details: Some(ChangeDetails::LoadSnapshot(LoadSnapshotRecord {
                from_canister_id: None,
                snapshot_id: snapshot.id.clone(),
                canister_version: 1,
                taken_at_timestamp: taken_at,
                source: SnapshotSource::TakenFromCanister(Reserved),
            })),
        },
        Change {
            timestamp_nanos: uninstalled_at,
            canister_version: 3,
            origin: from_user(controller()),
            details: Some(ChangeDetails::CodeUninstall),
        },
        Change {
            timestamp_nanos: changed_at,
            canister_version: 4,
            origin: from_user(controller()),
            details: Some(ChangeDetails::ControllersChange(ControllersChangeRecord {
                controllers: sorted.clone(),
            })),
        },
    ];

    // canister_info is public: the harness calls it as the anonymous principal.
    let info = sm.canister_info(c.id, Some(10)).unwrap();
    assert_eq!(info.total_num_changes, 5);
    assert_eq!(info.recent_changes, expected);
    assert_eq!(info.module_hash, None);
    assert_eq!(info.controllers, sorted);
    assert_eq!(c.version(&sm), 5);

    // num_requested_changes: none by default, the most recent ones, capped by what is kept.
    let info = sm.canister_info(c.id, None).unwrap();
    assert!(info.recent_changes.is_empty());
    assert_eq!(info.total_num_changes, 5);
    let info = sm.canister_info(c.id, Some(2)).unwrap();
    assert_eq!(info.recent_changes, expected[3..].to_vec());
    let info = sm.canister_info(c.id, Some(u64::MAX)).unwrap();
    assert_eq!(info.recent_changes, expected);

    // A stranger may ask too, through the raw call.
    let reply = sm
        .update_call(
            mgmt(),
            stranger(),
            "canister_info",
            Encode!(&CanisterInfoArgs {
                canister_id: c.id,
                num_requested_changes: Some(1),
            })
            .unwrap(),
        )
        .unwrap();
    let info = Decode!(&reply, ic_management_canister_types::CanisterInfoResult).unwrap();
    assert_eq!(info.recent_changes, expected[4..].to_vec());
}

#[test]
fn canister_history_keeps_the_last_changes_and_counts_all() {
    let mut sm = StateMachine::new();
    let c = install_new(&mut sm, controller());
    for n in 0..25u8 {
        update_settings(
            &mut sm,
            controller(),
            c.id,
            SettingsArgs {
                controllers: Some(vec![controller(), user(100 + n)]),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let info = sm.canister_info(c.id, Some(100)).unwrap();
    assert_eq!(info.total_num_changes, 27);
    assert_eq!(info.recent_changes.len(), MAX_CANISTER_HISTORY_CHANGES);
    let last = info.recent_changes.last().unwrap();
    assert_eq!(last.canister_version, 26);
    let versions: Vec<u64> = info
        .recent_changes
        .iter()
        .map(|c| c.canister_version)
        .collect();
    assert_eq!(versions, (7..=26).collect::<Vec<u64>>());
}

#[test]
fn update_settings_changes_controllers_threshold_and_visibility() {
    let (mut sm, c, _) = populated_env(true);
    let version = c.version(&sm);

    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            freezing_threshold: Some(Nat::from(1_234u64)),
            ..Default::default()
        },
    )
    .unwrap();
    let status = sm.canister_status(c.id, Some(controller())).unwrap();
    assert_eq!(status.settings.freezing_threshold, Nat::from(1_234u64));
    assert_eq!(c.version(&sm), version + 1);

    // snapshot_visibility: controllers (default) → public → allowed viewers → controllers.
    assert_reject(
        sm.list_canister_snapshots(c.id, Some(user(5))),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &["snapshot_visibility"],
    );
    for (visibility, viewer_ok, stranger_ok) in [
        (SnapshotVisibility::Public, true, true),
        (
            SnapshotVisibility::AllowedViewers(vec![user(5)]),
            true,
            false,
        ),
        (SnapshotVisibility::Controllers, false, false),
    ] {
        update_settings(
            &mut sm,
            controller(),
            c.id,
            SettingsArgs {
                snapshot_visibility: Some(visibility.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            sm.canister_status(c.id, Some(controller()))
                .unwrap()
                .settings
                .snapshot_visibility,
            visibility
        );
        assert_eq!(
            sm.list_canister_snapshots(c.id, Some(user(5))).is_ok(),
            viewer_ok,
            "{visibility:?}"
        );
        assert_eq!(
            sm.list_canister_snapshots(c.id, Some(stranger())).is_ok(),
            stranger_ok,
            "{visibility:?}"
        );
        assert!(sm.list_canister_snapshots(c.id, Some(controller())).is_ok());
    }
    // Visibility is about listing only: a viewer cannot take, load or delete.
    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            snapshot_visibility: Some(SnapshotVisibility::Public),
            ..Default::default()
        },
    )
    .unwrap();
    let id = sm.list_canister_snapshots(c.id, Some(stranger())).unwrap()[0]
        .id
        .clone();
    assert_eq!(
        sm.load_canister_snapshot(c.id, Some(stranger()), id)
            .unwrap_err()
            .error_code,
        ErrorCode::CanisterInvalidController
    );

    // Controllers: the new set takes over, the old controller loses control.
    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            controllers: Some(vec![user(2)]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        sm.state().canisters[&c.id].controllers,
        BTreeSet::from([user(2)])
    );
    assert_reject(
        sm.take_canister_snapshot(c.id, Some(controller()), None),
        ErrorCode::CanisterInvalidController,
        RejectCode::CanisterError,
        &["Only the controllers"],
    );
    // Ten controllers are allowed.
    let ten: Vec<Principal> = (0..10).map(|n| user(200 + n)).collect();
    update_settings(
        &mut sm,
        user(2),
        c.id,
        SettingsArgs {
            controllers: Some(ten.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sm.state().canisters[&c.id].controllers.len(), 10);
}

#[test]
fn update_settings_refuses_more_than_ten_principals() {
    let eleven: Vec<Principal> = (0..11).map(|n| user(200 + n)).collect();
    let cases = [
        (
            SettingsArgs {
                controllers: Some(eleven.clone()),
                ..Default::default()
            },
            "controllers has 11 entries",
        ),
        (
            SettingsArgs {
                snapshot_visibility: Some(SnapshotVisibility::AllowedViewers(eleven.clone())),
                ..Default::default()
            },
            "snapshot_visibility.allowed_viewers has 11 entries",
        ),
        (
            // Nothing is applied when one field is bad, even a valid field before it.
            SettingsArgs {
                freezing_threshold: Some(Nat::from(1u64)),
                controllers: Some(eleven.clone()),
                ..Default::default()
            },
            "at most 10",
        ),
    ];
    for (settings, needle) in cases {
        let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
            update_settings(sm, controller(), c.id, settings.clone())
        });
        assert_reject::<()>(
            Err(err),
            ErrorCode::InvalidManagementPayload,
            RejectCode::CanisterReject,
            &[needle],
        );
    }
    // Creation validates settings the same way.
    let err = assert_refused_without_effect(fixture, |sm, _| {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: None,
            settings: Some(SettingsArgs {
                controllers: Some(eleven.clone()),
                ..Default::default()
            }),
            specified_id: None,
            sender_canister_version: None,
        };
        sm.management::<(CanisterIdRecord,)>(
            Some(user(1)),
            "provisional_create_canister_with_cycles",
            (args,),
        )
    });
    assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
}

#[test]
fn delete_canister_must_be_stopped_and_deletes_its_snapshots() {
    let setup = || {
        let (mut sm, (a, snapshot)) = fixture();
        let b = install_new(&mut sm, controller());
        let b_snapshot = sm
            .take_canister_snapshot(b.id, Some(controller()), None)
            .unwrap();
        (sm, (a, snapshot, b, b_snapshot.id))
    };
    let err =
        assert_refused_without_effect(setup, |sm, (a, ..)| delete_canister(sm, controller(), a.id));
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterNotStopped,
        RejectCode::CanisterError,
        &["must be stopped", "stop_canister"],
    );

    let (mut sm, (a, _, b, b_snapshot)) = setup();
    sm.stop_canister(a.id, Some(controller())).unwrap();
    assert_eq!(
        delete_canister(&mut sm, stranger(), a.id)
            .unwrap_err()
            .error_code,
        ErrorCode::CanisterInvalidController
    );
    assert_eq!(sm.state().snapshots.len(), 2);
    delete_canister(&mut sm, controller(), a.id).unwrap();
    assert!(!sm.state().canisters.contains_key(&a.id));
    assert_eq!(sm.state().snapshots.len(), 1, "only b's snapshot is left");
    assert_eq!(sm.state().snapshots.count(a.id), 0);
    for result in [
        sm.canister_status(a.id, Some(controller())).map(|_| ()),
        sm.list_canister_snapshots(a.id, Some(controller()))
            .map(|_| ()),
        a.try_read(&mut sm, false, 0, 1).map(|_| ()),
        delete_canister(&mut sm, controller(), a.id),
    ] {
        assert_reject(
            result,
            ErrorCode::CanisterNotFound,
            RejectCode::DestinationInvalid,
            &[&a.id.to_string()],
        );
    }
    // The other canister and its snapshot are untouched.
    let list = sm
        .list_canister_snapshots(b.id, Some(controller()))
        .unwrap();
    assert_eq!(list[0].id, b_snapshot);
    sm.load_canister_snapshot(b.id, Some(controller()), b_snapshot)
        .unwrap();
    // A deleted id is never handed out again.
    let next = create(&mut sm, controller(), 1, None);
    assert_ne!(next, a.id);
}

// =============================================================================================
// 2. Snapshot semantics
// =============================================================================================

#[test]
fn take_keeps_the_version_load_bumps_it_and_records_history() {
    let (mut sm, c, _) = populated_env(false);
    let version = c.version(&sm);
    let history_before = history(&sm, c.id);
    sm.advance_time(Duration::from_secs(42));
    let taken_at = sm.get_time();
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(snapshot.taken_at_timestamp, taken_at);
    assert_eq!(c.version(&sm), version, "take does not change the version");
    assert_eq!(history(&sm, c.id), history_before, "take records nothing");
    let stored = sm.state().snapshots.iter().next().unwrap();
    assert_eq!(stored.canister_version, version);
    assert_eq!(stored.taken_at_timestamp, taken_at);

    c.write(&mut sm, false, 0, b"later");
    sm.advance_time(Duration::from_millis(1));
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id.clone())
        .unwrap();
    assert_eq!(c.version(&sm), version + 1);
    assert_eq!(
        last_change(&sm, c.id),
        Change {
            timestamp_nanos: sm.get_time(),
            canister_version: version + 1,
            origin: from_user(controller()),
            details: Some(ChangeDetails::LoadSnapshot(LoadSnapshotRecord {
                from_canister_id: None,
                snapshot_id: snapshot.id.clone(),
                canister_version: version,
                taken_at_timestamp: taken_at,
                source: SnapshotSource::TakenFromCanister(Reserved),
            })),
        }
    );
    // Loading again bumps again and records the same snapshot's provenance.
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id)
        .unwrap();
    assert_eq!(c.version(&sm), version + 2);
    assert_eq!(history(&sm, c.id).len(), history_before.len() + 2);
}

#[test]
fn snapshot_ids_have_the_ic_format_and_are_never_reused() {
    let (mut sm, c) = env_with_config(config_with_quota(2));
    let s0 = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(s0.id, snapshot_id_bytes(c.id, 0));
    assert_eq!(s0.id.len(), 8 + c.id.as_slice().len());
    let s1 = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(s1.id, snapshot_id_bytes(c.id, 1));

    sm.delete_canister_snapshot(c.id, Some(controller()), s0.id.clone())
        .unwrap();
    let s2 = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(s2.id, snapshot_id_bytes(c.id, 2), "0 is not reused");
    let s3 = sm
        .take_canister_snapshot(c.id, Some(controller()), Some(s1.id.clone()))
        .unwrap();
    assert_eq!(
        s3.id,
        snapshot_id_bytes(c.id, 3),
        "a replacement gets a new id"
    );

    let listed: Vec<Vec<u8>> = sm
        .list_canister_snapshots(c.id, Some(controller()))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![s2.id.clone(), s3.id.clone()], "oldest first");

    let parsed = SnapshotId::from_bytes(&s3.id).unwrap();
    assert_eq!(parsed.canister_id(), c.id);
    assert_eq!(parsed.local_id(), 3);
    assert_eq!(parsed.to_string(), format!("{}-3", c.id));
    assert_eq!(sm.state().canisters[&c.id].next_snapshot_id, 4);

    // Counters are per canister.
    let other = install_new(&mut sm, controller());
    let first = sm
        .take_canister_snapshot(other.id, Some(controller()), None)
        .unwrap();
    assert_eq!(first.id, snapshot_id_bytes(other.id, 0));
}

#[test]
fn replace_snapshot_replaces_without_checking_the_quota() {
    let (mut sm, c, s0) = populated_env(true);
    let s0 = s0.unwrap();
    assert_eq!(sm.config().max_snapshots_per_canister, 1);
    c.write(&mut sm, false, 0, b"second");
    let s1 = sm
        .take_canister_snapshot(c.id, Some(controller()), Some(s0.clone()))
        .unwrap();
    let list = sm
        .list_canister_snapshots(c.id, Some(controller()))
        .unwrap();
    assert_eq!(list, vec![s1.clone()]);
    assert_eq!(sm.state().snapshots.len(), 1);
    assert_reject(
        sm.load_canister_snapshot(c.id, Some(controller()), s0.clone()),
        ErrorCode::CanisterSnapshotNotFound,
        RejectCode::DestinationInvalid,
        &[&format!("{}-0", c.id)],
    );
    c.write(&mut sm, false, 0, b"third!");
    sm.load_canister_snapshot(c.id, Some(controller()), s1.id)
        .unwrap();
    assert_eq!(c.read(&mut sm, false, 0, 6), b"second");
}

#[test]
fn take_with_uninstall_code_uninstalls_atomically_and_still_loads() {
    let (mut sm, c, _) = populated_env(false);
    let version = c.version(&sm);
    let before = contents(sm.state()).canisters[0].clone();
    sm.advance_time(Duration::from_secs(3));
    let args = TakeCanisterSnapshotArgs {
        uninstall_code: Some(true),
        ..take_args(c.id)
    };
    let snapshot = take(&mut sm, controller(), &args).unwrap();

    let canister = &sm.state().canisters[&c.id];
    assert!(canister.execution_state.is_none());
    assert!(canister.certified_data.is_empty());
    assert_eq!(canister.canister_version, version + 1);
    assert_eq!(
        last_change(&sm, c.id),
        Change {
            timestamp_nanos: sm.get_time(),
            canister_version: version + 1,
            origin: from_user(controller()),
            details: Some(ChangeDetails::CodeUninstall),
        }
    );
    // The snapshot was taken before the uninstall.
    let stored = sm.state().snapshots.iter().next().unwrap();
    assert_eq!(stored.canister_version, version);
    assert_eq!(
        Some(*stored.content().wasm_module.hash()),
        before.module_hash
    );
    assert_reject(
        c.try_read(&mut sm, false, 0, 1),
        ErrorCode::CanisterWasmModuleNotFound,
        RejectCode::CanisterError,
        &["no Wasm module"],
    );

    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id)
        .unwrap();
    assert_eq!(c.version(&sm), version + 2);
    let after = contents(sm.state()).canisters[0].clone();
    assert_eq!(after.module_hash, before.module_hash);
    assert_eq!(after.wasm_memory, before.wasm_memory);
    assert_eq!(after.stable_memory, before.stable_memory);
    assert_eq!(after.globals, before.globals);
    assert_eq!(after.certified_data, before.certified_data);
    assert_eq!(c.read(&mut sm, true, 9_000, 13), b"stable marker");

    // `uninstall_code: Some(false)` and `None` leave the code in place.
    for flag in [Some(false), None] {
        let args = TakeCanisterSnapshotArgs {
            uninstall_code: flag,
            replace_snapshot: Some(snapshot_id_bytes(
                c.id,
                sm.state().canisters[&c.id].next_snapshot_id - 1,
            )),
            ..take_args(c.id)
        };
        take(&mut sm, controller(), &args).unwrap();
        assert!(sm.state().canisters[&c.id].execution_state.is_some());
        assert_eq!(c.version(&sm), version + 2);
    }
}

#[test]
fn load_restores_contents_byte_for_byte_but_keeps_cycles_and_controllers() {
    let (mut sm, c, _) = populated_env(false);
    let at_take = contents(sm.state()).canisters[0].clone();
    let heap_at_take = c.read(&mut sm, false, 0, 131_072);
    let stable_at_take = c.read(&mut sm, true, 0, 65_536);

    let cycles_before_take = c.cycles(&sm);
    let own = sm.state().canisters[&c.id].memory_usage();
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    assert_eq!(snapshot.total_size, own);
    let config = sm.config().clone();
    let take_cost = config.instructions_cost(config.snapshot_base_instructions + own);
    assert!(take_cost > 0);
    assert_eq!(c.cycles(&sm), cycles_before_take - take_cost);

    // Change every restorable part, and the parts a load must keep.
    c.fill(&mut sm, false, 0, 300_000, 0xEE);
    c.write(&mut sm, true, 9_000, b"STABLE MARKER");
    c.fill(&mut sm, true, 70_000, 10, 1);
    c.set_global(&mut sm, 0, 7);
    c.set_global(&mut sm, 1, -7);
    c.set_certified_data(&mut sm, &[0xCD; 32]);
    update_settings(
        &mut sm,
        controller(),
        c.id,
        SettingsArgs {
            controllers: Some(vec![controller(), user(9)]),
            ..Default::default()
        },
    )
    .unwrap();
    sm.advance_time(Duration::from_secs(60));
    let cycles_before_load = c.cycles(&sm);
    let held = sm
        .state()
        .canister_memory_usage(&sm.state().canisters[&c.id]);
    assert_ne!(
        contents(sm.state()).canisters[0].wasm_memory,
        at_take.wasm_memory
    );

    sm.load_canister_snapshot(c.id, Some(user(9)), snapshot.id.clone())
        .unwrap();
    let after = contents(sm.state()).canisters[0].clone();
    assert_eq!(after.module_hash, at_take.module_hash);
    assert_eq!(after.wasm_memory, at_take.wasm_memory, "heap size and root");
    assert_eq!(
        after.stable_memory, at_take.stable_memory,
        "stable size and root"
    );
    assert_eq!(
        after.globals,
        Some(vec![Global::I64(-42), Global::I64(i64::MAX)])
    );
    assert_eq!(after.certified_data, b"certified");
    assert_eq!(c.memory_sizes(&mut sm), (131_072, 65_536));
    assert_eq!(c.read(&mut sm, false, 0, 131_072), heap_at_take);
    assert_eq!(c.read(&mut sm, true, 0, 65_536), stable_at_take);
    assert_eq!(c.get_global(&mut sm, 0), -42);
    assert_eq!(c.get_global(&mut sm, 1), i64::MAX);

    // Cycles: those of the canister, minus the load's price and the storage its round charged
    // for the minute before it; not those at the take.
    let load_cost =
        config.instructions_cost(config.snapshot_base_instructions + snapshot.total_size);
    let storage = config.storage_charge(held, 60);
    assert!(storage > 0);
    assert_eq!(after.cycles, cycles_before_load - storage - load_cost);
    // Controllers and settings: those of the canister.
    assert_eq!(after.controllers, BTreeSet::from([controller(), user(9)]));
    assert_eq!(
        after.history.last().unwrap().origin,
        from_user(user(9)),
        "the new controller loaded it"
    );

    // A snapshot is not disturbed by later writes to the canister (copy-on-write).
    let checksum = sm.state().snapshots.iter().next().unwrap().checksum();
    c.fill(&mut sm, false, 0, 131_072, 0x11);
    c.fill(&mut sm, true, 0, 65_536, 0x22);
    let stored = sm.state().snapshots.iter().next().unwrap();
    assert_eq!(checksum_from_bytes(stored), checksum);
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id)
        .unwrap();
    assert_eq!(c.read(&mut sm, false, 0, 131_072), heap_at_take);
}

#[test]
fn load_onto_another_canister_needs_control_of_both() {
    let (mut sm, a, _) = populated_env(false);
    let snapshot = sm
        .take_canister_snapshot(a.id, Some(controller()), None)
        .unwrap();
    let b = install_new(&mut sm, controller());
    let b_version = b.version(&sm);
    let a_before = contents(sm.state()).canisters[0].clone();

    sm.load_canister_snapshot(b.id, Some(controller()), snapshot.id.clone())
        .unwrap();
    assert_eq!(b.read(&mut sm, false, 70_000, 11), b"heap marker");
    assert_eq!(b.get_global(&mut sm, 0), -42);
    assert_eq!(b.version(&sm), b_version + 1);
    assert_eq!(
        last_change(&sm, b.id).details,
        Some(ChangeDetails::LoadSnapshot(LoadSnapshotRecord {
            from_canister_id: Some(a.id),
            snapshot_id: snapshot.id.clone(),
            canister_version: a_before.version,
            taken_at_timestamp: snapshot.taken_at_timestamp,
            source: SnapshotSource::TakenFromCanister(Reserved),
        }))
    );
    let a_after = contents(sm.state()).canisters[0].clone();
    assert_eq!(a_after.version, a_before.version, "the source is untouched");
    assert_eq!(a_after.wasm_memory, a_before.wasm_memory);

    // A controller of the target only may not load the source's snapshot.
    let setup = || {
        let (mut sm, a, _) = populated_env(false);
        let snapshot = sm
            .take_canister_snapshot(a.id, Some(controller()), None)
            .unwrap();
        let b = install_new(&mut sm, user(7));
        (sm, (b, snapshot.id))
    };
    let err = assert_refused_without_effect(setup, |sm, (b, id)| {
        sm.load_canister_snapshot(b.id, Some(user(7)), id.clone())
    });
    // The replica's CanisterSnapshotNotController: CanisterRejectedMessage.
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &[
            "Only a controller of the canister that snapshot",
            &user(7).to_string(),
        ],
    );
}

#[test]
fn traps_leave_the_canister_exactly_as_before() {
    let setup = || {
        let (mut sm, c, snapshot) = populated_env(true);
        update_settings(
            &mut sm,
            controller(),
            c.id,
            SettingsArgs {
                wasm_memory_limit: Some(Nat::from(256u64 << 10)),
                ..Default::default()
            },
        )
        .unwrap();
        (sm, (c, snapshot))
    };
    let cases: Vec<(&str, Vec<u8>, ErrorCode, &str)> = vec![
        (
            "trap",
            Encode!(&"boom").unwrap(),
            ErrorCode::CanisterCalledTrap,
            "boom",
        ),
        (
            "read_heap",
            Encode!(&131_000u64, &100u64).unwrap(),
            ErrorCode::CanisterTrapped,
            "outside the memory",
        ),
        (
            "read_stable",
            Encode!(&u64::MAX, &2u64).unwrap(),
            ErrorCode::CanisterTrapped,
            "outside the memory",
        ),
        (
            "set_certified_data",
            Encode!(&serde_bytes::ByteBuf::from(vec![1u8; 33])).unwrap(),
            ErrorCode::CanisterCalledTrap,
            "at most 32 bytes",
        ),
        (
            "set_global",
            Encode!(&2u32, &1i64).unwrap(),
            ErrorCode::CanisterCalledTrap,
            "global 2 does not exist",
        ),
        (
            "write_heap",
            Encode!(
                &(250u64 << 10),
                &serde_bytes::ByteBuf::from(vec![1u8; 10_000])
            )
            .unwrap(),
            ErrorCode::CanisterOutOfMemory,
            "exceeds its limit",
        ),
        (
            "fill_heap",
            Encode!(&u64::MAX, &2u64, &1u8).unwrap(),
            ErrorCode::CanisterTrapped,
            "overflows",
        ),
        (
            "write_heap",
            Encode!(&"not the right argument").unwrap(),
            ErrorCode::CanisterCalledTrap,
            "failed to decode the argument of write_heap",
        ),
        (
            "no_such_method",
            Encode!().unwrap(),
            ErrorCode::CanisterMethodNotFound,
            "no update method 'no_such_method'",
        ),
    ];
    for (method, payload, code, needle) in cases {
        let err =
            assert_refused_without_effect(setup, |sm, (c, _)| c.call(sm, method, payload.clone()));
        assert_reject::<()>(Err(err), code, RejectCode::CanisterError, &[needle]);
    }

    // A reply larger than the limit is a contract violation: the message's writes are
    // discarded like a trap's.
    let small_replies = || {
        let (mut sm, c) = env_with_config(Config {
            max_reply_bytes: 1_000,
            ..Config::default()
        });
        populate(&mut sm, &c);
        (sm, c)
    };
    let err = assert_refused_without_effect(small_replies, |sm, c| c.try_read(sm, false, 0, 2_000));
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterContractViolation,
        RejectCode::CanisterError,
        &["exceeds the limit of 1000 bytes"],
    );
    let (mut sm, c) = small_replies();
    assert_eq!(c.read(&mut sm, false, 70_000, 11), b"heap marker");
    // Even the 6-byte reply of a write can be too large: the write is then discarded.
    let tiny_replies = || {
        env_with_config(Config {
            max_reply_bytes: 5,
            ..Config::default()
        })
    };
    let err = assert_refused_without_effect(tiny_replies, |sm, c| {
        c.call(sm, "fill_heap", Encode!(&0u64, &10_000u64, &9u8).unwrap())
    });
    assert_eq!(err.error_code, ErrorCode::CanisterContractViolation);
    let (mut sm, c) = tiny_replies();
    assert!(
        c.call(
            &mut sm,
            "fill_heap",
            Encode!(&0u64, &10_000u64, &9u8).unwrap()
        )
        .is_err()
    );
    assert_eq!(sm.state().canisters[&c.id].wasm_memory_size(), 0);

    // Read back: the data is the data written before the traps.
    let (mut sm, (c, _)) = setup();
    let trapped = c.call(&mut sm, "trap", Encode!(&"x").unwrap());
    assert!(trapped.is_err());
    assert_eq!(c.read(&mut sm, false, 70_000, 11), b"heap marker");
    assert_eq!(c.get_global(&mut sm, 0), -42);
    assert_eq!(c.certified_data(&sm), b"certified");
    // A trapped message charges no heap delta.
    assert_eq!(sm.state().canisters[&c.id].heap_delta_debit, 0);
}

// =============================================================================================
// 3. The error table
// =============================================================================================

#[test]
fn error_canister_not_found() {
    let missing = missing_canister();
    let missing_snapshot = snapshot_id_bytes(missing, 0);
    let calls: Vec<(&str, BoxedCall<'_>)> = vec![
        (
            "take",
            Box::new(|sm| {
                sm.take_canister_snapshot(missing, Some(controller()), None)
                    .map(drop)
            }),
        ),
        (
            "load",
            Box::new(|sm| {
                sm.load_canister_snapshot(missing, Some(controller()), missing_snapshot.clone())
            }),
        ),
        (
            "list",
            Box::new(|sm| {
                sm.list_canister_snapshots(missing, Some(controller()))
                    .map(drop)
            }),
        ),
        (
            "delete snapshot",
            Box::new(|sm| {
                sm.delete_canister_snapshot(missing, Some(controller()), missing_snapshot.clone())
            }),
        ),
        (
            "status",
            Box::new(|sm| sm.canister_status(missing, Some(controller())).map(drop)),
        ),
        (
            "info",
            Box::new(|sm| sm.canister_info(missing, Some(1)).map(drop)),
        ),
        (
            "install",
            Box::new(|sm| {
                install_code(
                    sm,
                    controller(),
                    missing,
                    CanisterInstallMode::Install,
                    TEST_CANISTER_WASM.to_vec(),
                )
            }),
        ),
        (
            "uninstall",
            Box::new(|sm| uninstall_code(sm, controller(), missing)),
        ),
        (
            "start",
            Box::new(|sm| sm.start_canister(missing, Some(controller()))),
        ),
        (
            "stop",
            Box::new(|sm| sm.stop_canister(missing, Some(controller()))),
        ),
        (
            "update_settings",
            Box::new(|sm| update_settings(sm, controller(), missing, SettingsArgs::default())),
        ),
        (
            "delete canister",
            Box::new(|sm| delete_canister(sm, controller(), missing)),
        ),
        (
            "canister call",
            Box::new(|sm| {
                sm.update_call(
                    missing,
                    controller(),
                    "read_heap",
                    Encode!(&0u64, &1u64).unwrap(),
                )
                .map(drop)
            }),
        ),
    ];
    for (name, call) in calls {
        let err = assert_refused_without_effect(fixture, |sm, _| call(sm));
        assert_eq!(err.error_code, ErrorCode::CanisterNotFound, "{name}: {err}");
        assert_reject::<()>(
            Err(err),
            ErrorCode::CanisterNotFound,
            RejectCode::DestinationInvalid,
            &[&missing.to_string(), "not found"],
        );
    }
}

#[test]
fn error_invalid_controller() {
    // take, load, delete: controllers only.
    let calls: Vec<(&str, BoxedFixtureCall)> = vec![
        (
            "take",
            Box::new(|sm, c, _| {
                sm.take_canister_snapshot(c.id, Some(stranger()), None)
                    .map(drop)
            }),
        ),
        (
            "take replacing",
            Box::new(|sm, c, id| {
                sm.take_canister_snapshot(c.id, Some(stranger()), Some(id.clone()))
                    .map(drop)
            }),
        ),
        (
            "load",
            Box::new(|sm, c, id| sm.load_canister_snapshot(c.id, Some(stranger()), id.clone())),
        ),
        (
            "delete",
            Box::new(|sm, c, id| sm.delete_canister_snapshot(c.id, Some(stranger()), id.clone())),
        ),
        (
            "status",
            Box::new(|sm, c, _| sm.canister_status(c.id, Some(stranger())).map(drop)),
        ),
        (
            "install",
            Box::new(|sm, c, _| {
                install_code(
                    sm,
                    stranger(),
                    c.id,
                    CanisterInstallMode::Reinstall,
                    TEST_CANISTER_WASM.to_vec(),
                )
            }),
        ),
        (
            "uninstall",
            Box::new(|sm, c, _| uninstall_code(sm, stranger(), c.id)),
        ),
        (
            "update_settings",
            Box::new(|sm, c, _| {
                update_settings(
                    sm,
                    stranger(),
                    c.id,
                    SettingsArgs {
                        controllers: Some(vec![stranger()]),
                        ..Default::default()
                    },
                )
            }),
        ),
        (
            "delete canister",
            Box::new(|sm, c, _| delete_canister(sm, stranger(), c.id)),
        ),
    ];
    for (name, call) in calls {
        let err = assert_refused_without_effect(fixture, |sm, (c, id)| call(sm, c, id));
        assert_eq!(
            err.error_code,
            ErrorCode::CanisterInvalidController,
            "{name}: {err}"
        );
        assert_reject::<()>(
            Err(err),
            ErrorCode::CanisterInvalidController,
            RejectCode::CanisterError,
            &[
                "Only the controllers of the canister",
                &fixture().1.0.id.to_string(),
                &stranger().to_string(),
            ],
        );
    }
    // list: with snapshot_visibility = controllers (the default), and for a principal outside
    // the allowed viewers.
    for visibility in [
        SnapshotVisibility::Controllers,
        SnapshotVisibility::AllowedViewers(vec![user(5)]),
    ] {
        let setup = || {
            let (mut sm, (c, id)) = fixture();
            update_settings(
                &mut sm,
                controller(),
                c.id,
                SettingsArgs {
                    snapshot_visibility: Some(visibility.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
            (sm, (c, id))
        };
        let err = assert_refused_without_effect(setup, |sm, (c, _)| {
            sm.list_canister_snapshots(c.id, Some(stranger()))
        });
        // The replica's CanisterSnapshotAccessDenied is a reject, not a controller error.
        assert_reject::<()>(
            Err(err),
            ErrorCode::CanisterRejectedMessage,
            RejectCode::CanisterReject,
            &[
                &stranger().to_string(),
                &setup().1.0.id.to_string(),
                "snapshot_visibility",
            ],
        );
    }
}

#[test]
fn error_snapshot_not_found() {
    // An id of the right form that was never handed out.
    let unknown = |c: &TestCanister| snapshot_id_bytes(c.id, 99);
    // An id that existed and was deleted.
    let deleted_setup = || {
        let (mut sm, (c, id)) = fixture();
        sm.delete_canister_snapshot(c.id, Some(controller()), id.clone())
            .unwrap();
        (sm, (c, id))
    };
    type Call = fn(&mut StateMachine, &TestCanister, Vec<u8>) -> Result<(), RejectResponse>;
    let calls: [(&str, Call); 3] = [
        ("load", |sm, c, id| {
            sm.load_canister_snapshot(c.id, Some(controller()), id)
        }),
        ("delete", |sm, c, id| {
            sm.delete_canister_snapshot(c.id, Some(controller()), id)
        }),
        ("take replacing", |sm, c, id| {
            sm.take_canister_snapshot(c.id, Some(controller()), Some(id))
                .map(drop)
        }),
    ];
    for (name, call) in calls {
        let err = assert_refused_without_effect(fixture, |sm, (c, _)| call(sm, c, unknown(c)));
        let c = fixture().1.0;
        assert_eq!(
            err.error_code,
            ErrorCode::CanisterSnapshotNotFound,
            "{name}"
        );
        assert_reject::<()>(
            Err(err),
            ErrorCode::CanisterSnapshotNotFound,
            RejectCode::DestinationInvalid,
            &[&format!(
                "Could not find the snapshot ID {}-99 for canister {}",
                c.id, c.id
            )],
        );

        let err =
            assert_refused_without_effect(deleted_setup, |sm, (c, id)| call(sm, c, id.clone()));
        assert_reject::<()>(
            Err(err),
            ErrorCode::CanisterSnapshotNotFound,
            RejectCode::DestinationInvalid,
            &[&format!("{}-0", c.id)],
        );
    }
    // An id naming another canister with no such snapshot, loaded by a controller of both.
    let setup = || {
        let (mut sm, (a, _)) = fixture();
        let b = install_new(&mut sm, controller());
        (sm, (a, b))
    };
    let err = assert_refused_without_effect(setup, |sm, (a, b)| {
        sm.load_canister_snapshot(a.id, Some(controller()), snapshot_id_bytes(b.id, 0))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterSnapshotNotFound);
}

#[test]
fn error_snapshot_of_another_canister() {
    let setup = || {
        let (mut sm, (a, a_snapshot)) = fixture();
        let b = install_new(&mut sm, controller());
        (sm, (a, a_snapshot, b))
    };
    let b_id = setup().1.2.id;
    // Delete a's snapshot through b.
    let err = assert_refused_without_effect(setup, |sm, (_, a_snapshot, b)| {
        sm.delete_canister_snapshot(b.id, Some(controller()), a_snapshot.clone())
    });
    let a_id = setup().1.0.id;
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &[&format!(
            "The snapshot {a_id}-0 does not belong to canister {b_id}"
        )],
    );
    // Replace a's snapshot by one of b.
    let err = assert_refused_without_effect(setup, |sm, (_, a_snapshot, b)| {
        sm.take_canister_snapshot(b.id, Some(controller()), Some(a_snapshot.clone()))
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &["does not belong to canister", &b_id.to_string()],
    );
}

#[test]
fn error_quota_reached() {
    let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
        sm.take_canister_snapshot(c.id, Some(controller()), None)
    });
    let c = fixture().1.0;
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &[&format!(
            "Canister {} has reached the maximum number of snapshots allowed: 1",
            c.id
        )],
    );
    // A refused take with uninstall_code does not uninstall.
    let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
        let args = TakeCanisterSnapshotArgs {
            uninstall_code: Some(true),
            ..take_args(c.id)
        };
        take(sm, controller(), &args)
    });
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    // The quota follows the configuration.
    let (mut sm, c) = env_with_config(config_with_quota(3));
    for _ in 0..3 {
        sm.take_canister_snapshot(c.id, Some(controller()), None)
            .unwrap();
    }
    assert_reject(
        sm.take_canister_snapshot(c.id, Some(controller()), None),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &["maximum number of snapshots allowed: 3"],
    );
}

#[test]
fn error_snapshot_of_canister_without_code() {
    // Never installed.
    let setup = || {
        let mut sm = StateMachine::new();
        let id = create(&mut sm, controller(), 1_000_000_000_000_000, None);
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        sm.take_canister_snapshot(*id, Some(controller()), None)
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterRejectedMessage,
        RejectCode::CanisterReject,
        &[&setup().1.to_string(), "no code installed"],
    );
    // Uninstalled, with a snapshot to replace: the code check still refuses, and the old
    // snapshot survives.
    let setup = || {
        let (mut sm, (c, id)) = fixture();
        uninstall_code(&mut sm, controller(), c.id).unwrap();
        (sm, (c, id))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| {
        sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone()))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    assert!(err.reject_message.contains("no code installed"), "{err}");
}

#[test]
fn error_payload_does_not_decode() {
    // Every method the management canister implements.
    for &method in METHODS {
        let (_, (c, id)) = fixture();
        // A valid payload for the method, to truncate.
        let valid = match method {
            "take_canister_snapshot" => encode((take_args(c.id),)),
            "load_canister_snapshot" => encode((LoadCanisterSnapshotArgs {
                canister_id: c.id,
                snapshot_id: id.clone(),
                sender_canister_version: None,
            },)),
            "delete_canister_snapshot" => encode((DeleteCanisterSnapshotArgs {
                canister_id: c.id,
                snapshot_id: id.clone(),
            },)),
            _ => encode((CanisterIdRecord { canister_id: c.id },)),
        };
        let payloads: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"garbage bytes".to_vec()),
            ("empty", vec![]),
            ("magic only", b"DIDL".to_vec()),
            ("truncated", valid[..valid.len() - 1].to_vec()),
            ("half", valid[..valid.len() / 2].to_vec()),
            ("wrong type", Encode!(&"a text, not a record").unwrap()),
            ("wrong type", Encode!(&42u64).unwrap()),
            ("trailing bytes", [valid.clone(), vec![0]].concat()),
        ];
        for (what, payload) in payloads {
            let err = assert_refused_without_effect(fixture, |sm, _| {
                sm.update_call(mgmt(), controller(), method, payload.clone())
            });
            assert_eq!(
                err.error_code,
                ErrorCode::InvalidManagementPayload,
                "{method} with {what} payload: {err}"
            );
            assert_reject::<()>(
                Err(err),
                ErrorCode::InvalidManagementPayload,
                RejectCode::CanisterReject,
                &["Error decoding candid"],
            );
        }
    }
    // A record that lacks a required field (snapshot_id).
    for method in ["load_canister_snapshot", "delete_canister_snapshot"] {
        let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
            sm.update_call(
                mgmt(),
                controller(),
                method,
                encode((CanisterIdRecord { canister_id: c.id },)),
            )
        });
        assert_reject::<()>(
            Err(err),
            ErrorCode::InvalidManagementPayload,
            RejectCode::CanisterReject,
            &["Error decoding candid"],
        );
    }
    // A number that does not fit.
    let err = assert_refused_without_effect(fixture, |sm, _| {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: Some(Nat::from(u128::MAX) + Nat::from(1u8)),
            settings: None,
            specified_id: None,
            sender_canister_version: None,
        };
        sm.management::<(CanisterIdRecord,)>(
            Some(controller()),
            "provisional_create_canister_with_cycles",
            (args,),
        )
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::InvalidManagementPayload,
        RejectCode::CanisterReject,
        &["amount"],
    );
}

#[test]
fn error_malformed_snapshot_id() {
    let malformed: [(&str, Vec<u8>); 4] = [
        ("3 bytes", vec![1, 2, 3]),
        ("empty", vec![]),
        ("counter only", vec![0; 8]),
        ("too long", vec![0; 38]),
    ];
    for (what, bad) in malformed {
        let len = bad.len().to_string();
        type Call = fn(&mut StateMachine, &TestCanister, Vec<u8>) -> Result<(), RejectResponse>;
        let calls: [Call; 3] = [
            |sm, c, id| sm.load_canister_snapshot(c.id, Some(controller()), id),
            |sm, c, id| sm.delete_canister_snapshot(c.id, Some(controller()), id),
            |sm, c, id| {
                sm.take_canister_snapshot(c.id, Some(controller()), Some(id))
                    .map(drop)
            },
        ];
        for call in calls {
            let err = assert_refused_without_effect(fixture, |sm, (c, _)| call(sm, c, bad.clone()));
            assert_eq!(
                err.error_code,
                ErrorCode::InvalidManagementPayload,
                "{what}"
            );
            assert_reject::<()>(
                Err(err),
                ErrorCode::InvalidManagementPayload,
                RejectCode::CanisterReject,
                &["snapshot id", &format!("got {len} bytes")],
            );
        }
    }
}

#[test]
fn error_unknown_management_method() {
    for method in [
        "raw_rand",
        "upload_chunk",
        "bitcoin_get_balance",
        "",
        "TAKE_CANISTER_SNAPSHOT",
        "take_canister_snapshot ",
    ] {
        let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
            sm.update_call(
                mgmt(),
                controller(),
                method,
                encode((CanisterIdRecord { canister_id: c.id },)),
            )
        });
        assert_reject::<()>(
            Err(err),
            ErrorCode::UnknownManagementMessage,
            RejectCode::CanisterReject,
            &[&format!("no method '{method}'"), "take_canister_snapshot"],
        );
    }
}

#[test]
fn error_out_of_cycles() {
    // Enough cycles for one take (≈ 0.8 billion), not for the load after it.
    let setup = || {
        let mut sm = StateMachine::new();
        let id = create(
            &mut sm,
            controller(),
            1_000_000_000,
            Some(SettingsArgs {
                freezing_threshold: Some(Nat::from(0u64)),
                ..Default::default()
            }),
        );
        sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller()));
        let c = TestCanister {
            id,
            sender: controller(),
        };
        c.write(&mut sm, false, 0, b"poor");
        let snapshot = sm
            .take_canister_snapshot(id, Some(controller()), None)
            .unwrap();
        (sm, (c, snapshot.id))
    };
    let err = assert_refused_without_effect(setup, |sm, (c, id)| {
        sm.load_canister_snapshot(c.id, Some(controller()), id.clone())
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterOutOfCycles,
        RejectCode::SysTransient,
        &["out of cycles", &setup().1.0.id.to_string()],
    );
    let err = assert_refused_without_effect(setup, |sm, (c, id)| {
        sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone()))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterOutOfCycles);

    // Too few cycles for even one take.
    let setup = || {
        let mut sm = StateMachine::new();
        let id = create(
            &mut sm,
            controller(),
            100_000_000,
            Some(SettingsArgs {
                freezing_threshold: Some(Nat::from(0u64)),
                ..Default::default()
            }),
        );
        sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller()));
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        sm.take_canister_snapshot(*id, Some(controller()), None)
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterOutOfCycles,
        RejectCode::SysTransient,
        &["out of cycles", "top up"],
    );
}

#[test]
fn error_freezing_threshold() {
    let setup = || {
        let (mut sm, (c, id)) = fixture();
        update_settings(
            &mut sm,
            controller(),
            c.id,
            SettingsArgs {
                freezing_threshold: Some(Nat::from(1_000_000_000_000_000u64)),
                ..Default::default()
            },
        )
        .unwrap();
        (sm, (c, id))
    };
    let calls: [(&str, FixtureCall); 2] = [
        ("take replacing", |sm, c, id| {
            sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone()))
                .map(drop)
        }),
        ("load", |sm, c, id| {
            sm.load_canister_snapshot(c.id, Some(controller()), id.clone())
        }),
    ];
    for (name, call) in calls {
        let err = assert_refused_without_effect(setup, |sm, (c, id)| call(sm, c, id));
        assert_eq!(
            err.error_code,
            ErrorCode::InsufficientCyclesInMemoryGrow,
            "{name}: {err}"
        );
        assert_reject::<()>(
            Err(err),
            ErrorCode::InsufficientCyclesInMemoryGrow,
            RejectCode::CanisterError,
            &["freezing threshold", "freezing_threshold"],
        );
    }
}

#[test]
fn error_heap_delta_rate_limited_until_rounds_drain_it() {
    const LIMIT: u64 = 64 << 10;
    let config = Config {
        heap_delta_rate_limit_bytes: LIMIT,
        max_snapshots_per_canister: 2,
        ..Config::default()
    };
    let setup = || {
        let (mut sm, c) = env_with_config(config.clone());
        c.fill(&mut sm, false, 0, 1 << 20, 0x77);
        (sm, c)
    };
    let (sm, c) = setup();
    // The 1 MiB fill was charged; its round drained one allowance.
    assert_eq!(
        sm.state().canisters[&c.id].heap_delta_debit,
        (1 << 20) - LIMIT
    );
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.take_canister_snapshot(c.id, Some(controller()), None)
    });
    assert_reject::<()>(
        Err(err),
        ErrorCode::CanisterHeapDeltaRateLimited,
        RejectCode::SysTransient,
        &["heap delta rate limited", &c.id.to_string()],
    );

    // Each round drains one allowance; once the debit is within the limit, take succeeds.
    let (mut sm, c) = setup();
    let mut rounds = 0;
    while sm.state().canisters[&c.id].heap_delta_debit >= LIMIT {
        assert_eq!(
            sm.take_canister_snapshot(c.id, Some(controller()), None)
                .unwrap_err()
                .error_code,
            ErrorCode::CanisterHeapDeltaRateLimited
        );
        sm.tick();
        rounds += 2;
    }
    // The debit after the fill is 15 allowances; each step drains two (the refused take's
    // round and the tick); the take is refused until the debit is *below* the limit (the
    // replica refuses at `>=`), so 8 steps.
    assert_eq!(
        rounds, 16,
        "15 allowances of debit, drained two per step to below one"
    );
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(controller()), None)
        .unwrap();
    // The take charges its size to the debit, so an immediate load is refused in turn.
    assert!(sm.state().canisters[&c.id].heap_delta_debit >= LIMIT);
    assert_reject(
        sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id.clone()),
        ErrorCode::CanisterHeapDeltaRateLimited,
        RejectCode::SysTransient,
        &["Retry after a few rounds"],
    );
    for _ in 0..40 {
        sm.tick();
    }
    sm.load_canister_snapshot(c.id, Some(controller()), snapshot.id)
        .unwrap();
    assert_eq!(c.read(&mut sm, false, 1000, 2), [0x77, 0x77]);
}

#[test]
fn take_and_load_check_in_the_replicas_order() {
    // Payload before the caller: a stranger's malformed id is a payload error.
    let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
        sm.take_canister_snapshot(c.id, Some(stranger()), Some(vec![1, 2, 3]))
    });
    assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
    // The caller before the snapshot: a stranger naming an unknown snapshot.
    let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
        sm.take_canister_snapshot(c.id, Some(stranger()), Some(snapshot_id_bytes(c.id, 9)))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);
    let err = assert_refused_without_effect(fixture, |sm, (c, _)| {
        sm.load_canister_snapshot(c.id, Some(stranger()), snapshot_id_bytes(c.id, 9))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);

    // Quota before the rate limit, the rate limit before the resources, the resources before
    // the code check.
    let config = Config {
        heap_delta_rate_limit_bytes: 64 << 10,
        max_snapshots_per_canister: 2,
        ..Config::default()
    };
    // Two snapshots of 1 MiB (quota reached), the second one's debit not drained (rate
    // limited), an infinite freezing threshold (frozen), and optionally no code.
    let everything_wrong = |with_code: bool| {
        let (mut sm, c) = env_with_config(config.clone());
        c.fill(&mut sm, false, 0, 1 << 20, 1);
        let mut snapshot = None;
        for _ in 0..2 {
            for _ in 0..20 {
                sm.tick();
            }
            snapshot = Some(
                sm.take_canister_snapshot(c.id, Some(controller()), None)
                    .unwrap(),
            );
        }
        let snapshot = snapshot.unwrap();
        if !with_code {
            uninstall_code(&mut sm, controller(), c.id).unwrap();
        }
        update_settings(
            &mut sm,
            controller(),
            c.id,
            SettingsArgs {
                freezing_threshold: Some(Nat::from(u64::MAX)),
                ..Default::default()
            },
        )
        .unwrap();
        (sm, (c, snapshot.id))
    };
    // Quota reached, rate limited (the take's own debit), frozen.
    let (sm, (c, _)) = everything_wrong(true);
    assert!(sm.state().canisters[&c.id].heap_delta_debit > 64 << 10);
    let err = assert_refused_without_effect(
        || everything_wrong(true),
        |sm, (c, _)| sm.take_canister_snapshot(c.id, Some(controller()), None),
    );
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    // Replacing skips the quota: the rate limit comes next.
    let err = assert_refused_without_effect(
        || everything_wrong(true),
        |sm, (c, id)| sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone())),
    );
    assert_eq!(err.error_code, ErrorCode::CanisterHeapDeltaRateLimited);
    let err = assert_refused_without_effect(
        || everything_wrong(true),
        |sm, (c, id)| sm.load_canister_snapshot(c.id, Some(controller()), id.clone()),
    );
    assert_eq!(err.error_code, ErrorCode::CanisterHeapDeltaRateLimited);
    // Once drained, the freezing threshold, even without code (replacing a 1 MiB snapshot by
    // an empty one keeps 1 MiB of snapshots).
    let drained = || {
        let (mut sm, fixture) = everything_wrong(false);
        for _ in 0..40 {
            sm.tick();
        }
        (sm, fixture)
    };
    let err = assert_refused_without_effect(drained, |sm, (c, id)| {
        sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone()))
    });
    assert_eq!(err.error_code, ErrorCode::InsufficientCyclesInMemoryGrow);
    // With a bearable threshold, the missing code.
    let err = assert_refused_without_effect(
        || {
            let (mut sm, (c, id)) = drained();
            update_settings(
                &mut sm,
                controller(),
                c.id,
                SettingsArgs {
                    freezing_threshold: Some(Nat::from(0u64)),
                    ..Default::default()
                },
            )
            .unwrap();
            (sm, (c, id))
        },
        |sm, (c, id)| sm.take_canister_snapshot(c.id, Some(controller()), Some(id.clone())),
    );
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    assert!(err.reject_message.contains("no code installed"), "{err}");
}

// =============================================================================================
// 4. This project's extension: labels and checksums, wire compatible
// =============================================================================================

#[test]
fn label_and_checksum_are_listed() {
    let (mut sm, c, _) = populated_env(false);
    let snapshot =
        take_labelled(&mut sm, controller(), c.id, None, Some("before-upgrade")).unwrap();
    let infos: Vec<SnapshotInfo> = sm
        .list_canister_snapshots_with_info(c.id, Some(controller()))
        .unwrap();
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.id, snapshot.id);
    assert_eq!(info.taken_at_timestamp, snapshot.taken_at_timestamp);
    assert_eq!(info.total_size, snapshot.total_size);
    assert_eq!(info.label.as_deref(), Some("before-upgrade"));
    assert_eq!(info.checksum.len(), 32);
    let stored = sm.state().snapshots.iter().next().unwrap();
    assert_eq!(info.checksum, checksum_from_bytes(stored).to_vec());
    assert_eq!(stored.label.as_deref(), Some("before-upgrade"));

    // A standard client decodes the same reply as Vec<Snapshot>.
    let reply = sm
        .update_call(
            mgmt(),
            controller(),
            "list_canister_snapshots",
            Encode!(&CanisterIdRecord { canister_id: c.id }).unwrap(),
        )
        .unwrap();
    let plain = Decode!(&reply, Vec<Snapshot>).unwrap();
    assert_eq!(plain, vec![snapshot.clone()]);

    // The checksum covers content, not provenance: a new snapshot of unchanged content with
    // another label has the same checksum; a one-byte change gives another.
    sm.advance_time(Duration::from_secs(1));
    let same = take_labelled(
        &mut sm,
        controller(),
        c.id,
        Some(snapshot.id.clone()),
        Some("again"),
    )
    .unwrap();
    let infos = sm
        .list_canister_snapshots_with_info(c.id, Some(controller()))
        .unwrap();
    assert_eq!(infos[0].id, same.id);
    assert_eq!(infos[0].label.as_deref(), Some("again"));
    assert_eq!(infos[0].checksum, info.checksum);
    c.write(&mut sm, true, 0, &[0x5C]);
    take_labelled(&mut sm, controller(), c.id, Some(same.id), None).unwrap();
    let infos = sm
        .list_canister_snapshots_with_info(c.id, Some(controller()))
        .unwrap();
    assert_eq!(infos[0].label, None);
    assert_ne!(infos[0].checksum, info.checksum);
}

#[test]
fn standard_types_still_work_with_the_extension() {
    let (mut sm, c, _) = populated_env(false);
    // The standard argument (no label field) decodes with `label = None`.
    let snapshot = take(&mut sm, controller(), &take_args(c.id)).unwrap();
    let infos = sm
        .list_canister_snapshots_with_info(c.id, Some(controller()))
        .unwrap();
    assert_eq!(infos[0].label, None);
    assert_eq!(infos[0].id, snapshot.id);
    assert_eq!(
        infos[0].checksum,
        checksum_from_bytes(sm.state().snapshots.iter().next().unwrap()).to_vec()
    );
    // The harness's standard list.
    let list = sm
        .list_canister_snapshots(c.id, Some(controller()))
        .unwrap();
    assert_eq!(list, vec![snapshot.clone()]);
    // The crate's argument encodes to something the standard decoder reads, and vice versa.
    let labelled = LabelledTakeArgs {
        canister_id: c.id,
        replace_snapshot: Some(snapshot.id.clone().into()),
        uninstall_code: Some(false),
        sender_canister_version: Some(3),
        label: Some("x".into()),
    };
    let as_standard = Decode!(&Encode!(&labelled).unwrap(), TakeCanisterSnapshotArgs).unwrap();
    assert_eq!(as_standard.replace_snapshot, Some(snapshot.id.clone()));
    assert_eq!(as_standard.sender_canister_version, Some(3));
    let as_labelled = Decode!(&Encode!(&take_args(c.id)).unwrap(), LabelledTakeArgs).unwrap();
    assert_eq!(as_labelled.label, None);
}

#[test]
fn label_longer_than_64_bytes_is_refused() {
    assert_eq!(MAX_SNAPSHOT_LABEL_BYTES, 64);
    let ok = |label: String| {
        let (mut sm, c) = env();
        take_labelled(&mut sm, controller(), c.id, None, Some(&label)).unwrap();
        let infos = sm
            .list_canister_snapshots_with_info(c.id, Some(controller()))
            .unwrap();
        assert_eq!(infos[0].label.as_deref(), Some(label.as_str()));
    };
    ok("a".repeat(64));
    ok("é".repeat(32)); // 64 bytes of UTF-8
    ok(String::new());

    for label in ["a".repeat(65), "é".repeat(33), "🦀".repeat(17)] {
        assert!(label.chars().count() <= 65 && label.len() > 64);
        let err = assert_refused_without_effect(env, |sm, c| {
            take_labelled(sm, controller(), c.id, None, Some(&label))
        });
        assert_reject::<()>(
            Err(err),
            ErrorCode::InvalidManagementPayload,
            RejectCode::CanisterReject,
            &["label", &format!("{} bytes", label.len()), "at most 64"],
        );
    }
}

mod limits {
    //! Limits a hostile caller could otherwise abuse, and id reuse.
    use super::*;

    #[test]
    fn a_huge_read_is_refused_before_anything_is_allocated() {
        let (mut sm, c) = env();
        // One byte far out grows the heap sparsely to 3 GiB.
        c.write(&mut sm, false, (3 << 30) - 1, &[1]);
        let started = std::time::Instant::now();
        let err = c.try_read(&mut sm, false, 0, 3 << 30).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterContractViolation);
        assert!(err.reject_message.contains("read less per call"), "{err}");
        // Refused up front: no 3 GiB buffer was built (that takes seconds).
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_write_beyond_the_per_message_limit_does_no_work() {
        let setup = || {
            env_with_config(Config {
                max_heap_delta_per_message_bytes: 1 << 20,
                ..Config::default()
            })
        };
        let err = assert_refused_without_effect(setup, |sm, c| {
            c.call(
                sm,
                "fill_stable",
                Encode!(&0u64, &(100u64 << 30), &1u8).unwrap(),
            )
        });
        assert_eq!(err.error_code, ErrorCode::CanisterInstructionLimitExceeded);
        assert!(err.reject_message.contains("split the work"), "{err}");
        let (mut sm, c) = setup();
        c.fill(&mut sm, true, 0, 1 << 20, 1);
    }

    #[test]
    fn every_install_deactivates_the_global_timer() {
        use canister_snapshots::management::types::UploadCanisterSnapshotMetadataArgs as Upload;
        use ic_management_canister_types::{
            CanisterTimer, SnapshotDataOffset, SnapshotMetadataGlobal,
        };
        let (mut sm, c) = env_with_config(Config {
            max_snapshots_per_canister: 3,
            ..Config::default()
        });
        // Give the canister an active timer the only way the test canister allows: load an
        // uploaded snapshot that declares one.
        let args = Upload {
            canister_id: c.id,
            replace_snapshot: None,
            wasm_module_size: TEST_CANISTER_WASM.len() as u64,
            // The test canister's two i64 globals: a load checks them against the module.
            globals: vec![SnapshotMetadataGlobal::I64(0); 2],
            wasm_memory_size: 0,
            stable_memory_size: 0,
            certified_data: vec![],
            global_timer: Some(CanisterTimer::Active(123)),
            on_low_wasm_memory_hook_status: None,
            base_snapshot: None,
        };
        let (uploaded,): (ic_management_canister_types::UploadCanisterSnapshotMetadataResult,) = sm
            .management(Some(c.sender), "upload_canister_snapshot_metadata", (args,))
            .unwrap();
        let data = canister_snapshots::management::types::UploadCanisterSnapshotDataArgs {
            canister_id: c.id,
            snapshot_id: uploaded.snapshot_id.clone(),
            kind: SnapshotDataOffset::WasmModule { offset: 0 },
            chunk: TEST_CANISTER_WASM.to_vec(),
        };
        sm.management::<()>(Some(c.sender), "upload_canister_snapshot_data", (data,))
            .unwrap();
        sm.load_canister_snapshot(c.id, Some(c.sender), uploaded.snapshot_id)
            .unwrap();
        assert_eq!(sm.state().canisters[&c.id].global_timer, Some(123));
        install_code(
            &mut sm,
            c.sender,
            c.id,
            CanisterInstallMode::Upgrade(None),
            TEST_CANISTER_WASM.to_vec(),
        )
        .unwrap();
        assert_eq!(sm.state().canisters[&c.id].global_timer, None);
    }

    #[test]
    fn canister_ids_are_never_reused_nor_reserved_ones_given() {
        let (mut sm, c) = env();
        let specified = |sm: &mut StateMachine, id: Principal| {
            let args = ProvisionalCreateCanisterWithCyclesArgs {
                amount: None,
                settings: None,
                specified_id: Some(id),
                sender_canister_version: None,
            };
            sm.management::<(CanisterIdRecord,)>(
                Some(controller()),
                "provisional_create_canister_with_cycles",
                (args,),
            )
        };
        for reserved in [Principal::management_canister(), Principal::anonymous()] {
            let err = specified(&mut sm, reserved).unwrap_err();
            assert_eq!(err.error_code, ErrorCode::InvalidManagementPayload);
        }
        let snapshot = sm
            .take_canister_snapshot(c.id, Some(c.sender), None)
            .unwrap();
        sm.stop_canister(c.id, Some(c.sender)).unwrap();
        sm.management::<()>(
            Some(c.sender),
            "delete_canister",
            (CanisterIdRecord { canister_id: c.id },),
        )
        .unwrap();
        let err = specified(&mut sm, c.id).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::CanisterIdAlreadyExists);
        // So the deleted canister's snapshot id can never name another snapshot.
        assert!(SnapshotId::from_bytes(&snapshot.id).is_ok());
        assert!(sm.state().snapshots.is_empty());
    }
}

#[test]
fn subnet_accounting_sums_logical_and_unique_bytes_over_canisters() {
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    });
    let a = install_new(&mut sm, controller());
    let b = install_new(&mut sm, controller());
    a.fill(&mut sm, false, 0, 8 * 4096, 1);
    b.fill(&mut sm, true, 0, 4 * 4096, 2);
    let sa = sm
        .take_canister_snapshot(a.id, Some(a.sender), None)
        .unwrap();
    let sb = sm
        .take_canister_snapshot(b.id, Some(b.sender), None)
        .unwrap();
    assert_eq!(sm.state().snapshots_unique_bytes(), 0);
    a.fill(&mut sm, false, 0, 3 * 4096, 9);
    b.fill(&mut sm, true, 4096, 1, 9);
    assert_eq!(sm.state().snapshots_unique_bytes(), 4 * 4096);
    assert_eq!(
        sm.state().snapshots.total_size(),
        sa.total_size + sb.total_size
    );
}

/// `ready_for_migration`: true exactly when the canister is stopped (the spec: stopped, with
/// empty queues and flushed streams, which a stopped canister here always has).
#[test]
fn canister_status_is_ready_for_migration_when_stopped() {
    let (mut sm, c) = env();
    let ready = |sm: &mut StateMachine| {
        sm.canister_status(c.id, Some(c.sender))
            .unwrap()
            .ready_for_migration
    };
    assert!(!ready(&mut sm), "running");
    sm.stop_canister(c.id, Some(c.sender)).unwrap();
    assert!(ready(&mut sm), "stopped");
    sm.start_canister(c.id, Some(c.sender)).unwrap();
    assert!(!ready(&mut sm), "started again");
}

/// `delete_canister_snapshot` runs the memory and cycles checks at zero cost, as the replica's
/// `delete_snapshot` does: a canister frozen even without the snapshot is refused and nothing
/// changes; with its balance above the threshold the delete is free.
#[test]
fn a_frozen_canister_cannot_delete_a_snapshot_and_a_delete_is_free() {
    let frozen = || {
        let (mut sm, c, snapshot) = populated_env(true);
        sm.state_mut().canisters.get_mut(&c.id).unwrap().cycles = 1;
        (sm, (c, snapshot.unwrap()))
    };
    let err = assert_refused_without_effect(frozen, |sm, (c, snapshot)| {
        sm.delete_canister_snapshot(c.id, Some(c.sender), snapshot.clone())
    });
    assert_eq!(
        err.error_code,
        ErrorCode::InsufficientCyclesInMemoryGrow,
        "{err}"
    );

    let (mut sm, c, snapshot) = populated_env(true);
    let cycles = c.cycles(&sm);
    sm.delete_canister_snapshot(c.id, Some(c.sender), snapshot.unwrap())
        .unwrap();
    assert_eq!(c.cycles(&sm), cycles, "a delete costs nothing");
}

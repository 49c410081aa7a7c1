//! The authorization matrix: every management method × every kind of caller × every snapshot
//! visibility, with the expected outcome of each cell written down as data from the specs
//! (`spec/management.md` "Methods" and "list and delete", `spec/transfer.md` "Methods", and
//! the reference's "Rules": only controllers may take, load, delete and upload; list and read
//! follow `snapshot_visibility`; create and `canister_info` are open to anyone).
//!
//! Every refused cell goes through the twin-machine check (the refusal changed nothing), and
//! its message is checked not to reveal the snapshot's checksum, label or size.

mod common;

use candid::{Encode, Principal};
use canister_snapshots::management::METHODS;
use canister_snapshots::management::types::{
    TakeCanisterSnapshotArgs, UploadCanisterSnapshotDataArgs,
};
use canister_snapshots::memory::checksum::hex;
use canister_snapshots::{Config, RejectResponse, StateMachine, TEST_CANISTER_WASM};
use common::*;
use ic_error_types::ErrorCode;
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInstallMode, CanisterSettings as SettingsArgs,
    CreateCanisterArgs, DeleteCanisterSnapshotArgs, InstallCodeArgs, LoadCanisterSnapshotArgs,
    ProvisionalCreateCanisterWithCyclesArgs, ProvisionalTopUpCanisterArgs,
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotMetadataArgs, SnapshotDataKind,
    SnapshotDataOffset, SnapshotVisibility, UninstallCodeArgs, UpdateSettingsArgs,
};

// ---------------------------------------------------------------------------------------------
// The matrix, as data
// ---------------------------------------------------------------------------------------------

/// Kinds of caller, in the column order of [`MATRIX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// Controls canister A, whose snapshots are at stake.
    Controller,
    /// Controls nothing and is no viewer.
    NonController,
    Anonymous,
    /// Controls canister B, not A.
    ControllerOfAnother,
    /// In A's `allowed_viewers` when A's visibility is `allowed_viewers` (else a stranger).
    AllowedViewer,
    /// In B's `allowed_viewers`, not A's.
    ViewerOfAnother,
}

use Caller::*;

const CALLERS: [Caller; 6] = [
    Controller,
    NonController,
    Anonymous,
    ControllerOfAnother,
    AllowedViewer,
    ViewerOfAnother,
];

/// A's `snapshot_visibility`, in the row order of [`MATRIX`].
#[derive(Clone, Copy, Debug)]
enum Visibility {
    Controllers,
    Public,
    AllowedViewers,
}

const VISIBILITIES: [Visibility; 3] = [
    Visibility::Controllers,
    Visibility::Public,
    Visibility::AllowedViewers,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Refused(ErrorCode),
}

/// Accepted.
const Y: Outcome = Outcome::Accepted;
/// Refused: "Only the controllers of the canister … can control it".
const N: Outcome = Outcome::Refused(ErrorCode::CanisterInvalidController);

/// Refused by `snapshot_visibility`: the replica's `CanisterSnapshotAccessDenied`, a reject.
const V: Outcome = Outcome::Refused(ErrorCode::CanisterRejectedMessage);

/// Anyone may call it, whatever the visibility.
const ANYONE: [[Outcome; 6]; 3] = [[Y, Y, Y, Y, Y, Y]; 3];
/// Controllers only, whatever the visibility.
const CONTROLLERS: [[Outcome; 6]; 3] = [[Y, N, N, N, N, N]; 3];
/// Per `snapshot_visibility`: controllers; everyone; controllers and the allowed viewers.
const VIEWERS: [[Outcome; 6]; 3] = [[Y, V, V, V, V, V], [Y, Y, Y, Y, Y, Y], [Y, V, V, V, Y, V]];

/// Method → outcome per visibility (rows: controllers, public, allowed_viewers) and caller
/// (columns: [`CALLERS`]).
const MATRIX: &[(&str, [[Outcome; 6]; 3])] = &[
    // spec/management.md: "anyone".
    ("provisional_create_canister_with_cycles", ANYONE),
    ("create_canister", ANYONE),
    // spec/management.md: "controllers".
    ("install_code", CONTROLLERS),
    ("uninstall_code", CONTROLLERS),
    ("start_canister", CONTROLLERS),
    ("stop_canister", CONTROLLERS),
    ("canister_status", CONTROLLERS),
    // spec/management.md: "anyone".
    ("canister_info", ANYONE),
    ("update_settings", CONTROLLERS),
    ("delete_canister", CONTROLLERS),
    // Reference, "Rules": only controllers may take, load, delete and upload.
    ("take_canister_snapshot", CONTROLLERS),
    ("load_canister_snapshot", CONTROLLERS),
    // spec/management.md: "per snapshot_visibility".
    ("list_canister_snapshots", VIEWERS),
    ("delete_canister_snapshot", CONTROLLERS),
    // spec/transfer.md: reads per snapshot_visibility, uploads controllers only.
    ("read_canister_snapshot_metadata", VIEWERS),
    ("read_canister_snapshot_data", VIEWERS),
    ("upload_canister_snapshot_metadata", CONTROLLERS),
    ("upload_canister_snapshot_data", CONTROLLERS),
    // spec/management.md: "anyone" on a local replica (the IC: its provisional whitelist).
    ("provisional_top_up_canister", ANYONE),
];

// ---------------------------------------------------------------------------------------------
// The world each cell runs in
// ---------------------------------------------------------------------------------------------

const LABEL: &str = "secret-label";

fn principal(caller: Caller) -> Principal {
    match caller {
        Controller => controller(),
        NonController => stranger(),
        Anonymous => Principal::anonymous(),
        ControllerOfAnother => user(2),
        AllowedViewer => user(3),
        ViewerOfAnother => user(4),
    }
}

/// Canister A (controlled by [`controller`], stopped, populated, with the given visibility), a
/// labelled snapshot taken of it and an uploaded one still open for data; canister B
/// (controlled by `user(2)`, viewers `[user(4)]`) with a snapshot of its own.
struct World {
    a: Principal,
    taken: Vec<u8>,
    uploaded: Vec<u8>,
}

fn world(visibility: Visibility) -> (StateMachine, World) {
    let (mut sm, a) = env_with_config(Config {
        max_snapshots_per_canister: 10,
        ..Config::default()
    });
    populate(&mut sm, &a);
    let visibility = match visibility {
        Visibility::Controllers => SnapshotVisibility::Controllers,
        Visibility::Public => SnapshotVisibility::Public,
        Visibility::AllowedViewers => SnapshotVisibility::AllowedViewers(vec![user(3)]),
    };
    update_settings(
        &mut sm,
        controller(),
        a.id,
        SettingsArgs {
            snapshot_visibility: Some(visibility),
            ..Default::default()
        },
    )
    .unwrap();
    let taken = take_labelled(&mut sm, controller(), a.id, None, Some(LABEL))
        .unwrap()
        .id;
    let uploaded = upload_metadata(&mut sm, controller(), upload_metadata_args(a.id)).unwrap();
    sm.stop_canister(a.id, Some(controller())).unwrap();

    let b = install_new(&mut sm, user(2));
    update_settings(
        &mut sm,
        user(2),
        b.id,
        SettingsArgs {
            snapshot_visibility: Some(SnapshotVisibility::AllowedViewers(vec![user(4)])),
            ..Default::default()
        },
    )
    .unwrap();
    take_labelled(&mut sm, user(2), b.id, None, Some(LABEL)).unwrap();
    (
        sm,
        World {
            a: a.id,
            taken,
            uploaded,
        },
    )
}

/// A well-formed payload of `method` aimed at canister A and its snapshots.
fn payload(method: &str, w: &World) -> Vec<u8> {
    let a = w.a;
    let record = CanisterIdRecord { canister_id: a };
    match method {
        "provisional_create_canister_with_cycles" => {
            Encode!(&ProvisionalCreateCanisterWithCyclesArgs {
                amount: None,
                settings: None,
                specified_id: None,
                sender_canister_version: None,
            })
        }
        "provisional_top_up_canister" => Encode!(&ProvisionalTopUpCanisterArgs {
            canister_id: a,
            amount: candid::Nat::from(1_000u32),
        }),
        "create_canister" => Encode!(&CreateCanisterArgs {
            settings: None,
            sender_canister_version: None,
        }),
        "install_code" => Encode!(&InstallCodeArgs {
            mode: CanisterInstallMode::Reinstall,
            canister_id: a,
            wasm_module: TEST_CANISTER_WASM.to_vec(),
            arg: vec![],
            sender_canister_version: None,
        }),
        "uninstall_code" => Encode!(&UninstallCodeArgs {
            canister_id: a,
            sender_canister_version: None,
        }),
        "start_canister"
        | "stop_canister"
        | "canister_status"
        | "delete_canister"
        | "list_canister_snapshots" => Encode!(&record),
        "canister_info" => Encode!(&CanisterInfoArgs {
            canister_id: a,
            num_requested_changes: Some(5),
        }),
        "update_settings" => Encode!(&UpdateSettingsArgs {
            canister_id: a,
            settings: SettingsArgs {
                freezing_threshold: Some(1_000u64.into()),
                ..Default::default()
            },
            sender_canister_version: None,
        }),
        "take_canister_snapshot" => Encode!(&TakeCanisterSnapshotArgs {
            canister_id: a,
            replace_snapshot: None,
            uninstall_code: None,
            sender_canister_version: None,
            label: None,
        }),
        "load_canister_snapshot" => Encode!(&LoadCanisterSnapshotArgs {
            canister_id: a,
            snapshot_id: w.taken.clone(),
            sender_canister_version: None,
        }),
        "delete_canister_snapshot" => Encode!(&DeleteCanisterSnapshotArgs {
            canister_id: a,
            snapshot_id: w.taken.clone(),
        }),
        "read_canister_snapshot_metadata" => Encode!(&ReadCanisterSnapshotMetadataArgs {
            canister_id: a,
            snapshot_id: w.taken.clone(),
        }),
        "read_canister_snapshot_data" => Encode!(&ReadCanisterSnapshotDataArgs {
            canister_id: a,
            snapshot_id: w.taken.clone(),
            kind: SnapshotDataKind::WasmMemory {
                offset: 0,
                size: 4096,
            },
        }),
        "upload_canister_snapshot_metadata" => Encode!(&upload_metadata_args(a)),
        "upload_canister_snapshot_data" => Encode!(&UploadCanisterSnapshotDataArgs {
            canister_id: a,
            snapshot_id: w.uploaded.clone(),
            kind: SnapshotDataOffset::WasmModule { offset: 0 },
            chunk: TEST_CANISTER_WASM.to_vec(),
        }),
        other => panic!("no payload for {other}: add it, and its row in MATRIX"),
    }
    .unwrap()
}

fn call(
    sm: &mut StateMachine,
    w: &World,
    method: &str,
    caller: Caller,
) -> Result<Vec<u8>, RejectResponse> {
    sm.update_call(
        Principal::management_canister(),
        principal(caller),
        method,
        payload(method, w),
    )
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn the_matrix_covers_every_method() {
    let listed: Vec<&str> = MATRIX.iter().map(|(method, _)| *method).collect();
    assert_eq!(
        listed, METHODS,
        "one row per management method, in METHODS order"
    );
}

#[test]
fn every_method_every_caller_every_visibility() {
    let mut failures = Vec::new();
    let secrets = VISIBILITIES.map(|visibility| {
        let (sm, _) = world(visibility);
        let snapshot = sm.state().snapshots.iter().next().unwrap();
        [
            hex(&snapshot.checksum()),
            LABEL.to_string(),
            snapshot.total_size().to_string(),
        ]
    });
    for (method, rows) in MATRIX {
        for ((visibility, row), secrets) in VISIBILITIES.iter().zip(rows).zip(&secrets) {
            for (caller, expected) in CALLERS.iter().zip(row) {
                let cell = format!("{method} by {caller:?} under {visibility:?}");
                let outcome = check_cell(method, *visibility, *caller, *expected, secrets);
                if let Err(failure) = outcome {
                    failures.push(format!("{cell}: {failure}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells disagree with the spec:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs one cell; `Err` describes how it disagrees with `expected`. A refusal must not contain
/// any of `secrets` (A's snapshot's checksum, label and size).
fn check_cell(
    method: &str,
    visibility: Visibility,
    caller: Caller,
    expected: Outcome,
    secrets: &[String; 3],
) -> Result<(), String> {
    match expected {
        Outcome::Accepted => {
            let (mut sm, w) = world(visibility);
            match call(&mut sm, &w, method, caller) {
                Ok(_) => Ok(()),
                Err(err) => Err(format!("expected acceptance, got {err}")),
            }
        }
        Outcome::Refused(code) => {
            let err = std::panic::catch_unwind(|| {
                assert_refused_without_effect(
                    || world(visibility),
                    |sm, w| call(sm, w, method, caller),
                )
            })
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "the twin-machine check failed".to_string())
            })?;
            if err.error_code != code {
                return Err(format!("expected {code:?}, got {err}"));
            }
            for secret in secrets {
                if err.reject_message.contains(secret.as_str()) {
                    return Err(format!("the refusal reveals {secret:?}: {err}"));
                }
            }
            Ok(())
        }
    }
}

/// The one cross-canister cell: the controller of B loads A's snapshot onto B. Controlling the
/// target is not enough: `spec/management.md` (load, step 5) answers the replica's
/// `CanisterSnapshotNotController`, mapped to `CanisterRejectedMessage` (406).
#[test]
fn loading_another_canisters_snapshot_needs_control_of_it() {
    for visibility in VISIBILITIES {
        let err = assert_refused_without_effect(
            || world(visibility),
            |sm, w| {
                let b = sm
                    .state()
                    .canisters
                    .values()
                    .find(|c| c.controllers.contains(&user(2)))
                    .unwrap()
                    .canister_id;
                sm.load_canister_snapshot(b, Some(user(2)), w.taken.clone())
            },
        );
        assert_eq!(
            err.error_code,
            ErrorCode::CanisterRejectedMessage,
            "{visibility:?}: {err}"
        );
        assert!(!err.reject_message.contains(LABEL), "{err}");
    }
}

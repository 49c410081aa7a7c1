//! Running memory totals and counters at their edge (`spec/management.md`, "Accounting").
//! Every debug round also recounts; these tests check the totals after each kind of change and
//! that a counter at its maximum refuses instead of wrapping (which would reuse an id).

mod common;

use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use common::*;
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{CanisterSettings as SettingsArgs, SnapshotDataOffset};

#[track_caller]
fn assert_totals_match_recount(sm: &StateMachine, step: &str) {
    let state = sm.state();
    assert_eq!(state.check_accounting(), Ok(()), "after {step}");
    assert_eq!(
        state.memory_usage(),
        state.recount_memory().total(),
        "after {step}"
    );
}

fn config_with_two_snapshots() -> Config {
    Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    }
}

#[test]
fn running_totals_follow_every_kind_of_change() {
    let (mut sm, c) = env_with_config(config_with_two_snapshots());
    assert_totals_match_recount(&sm, "create and install");
    let usage_before = sm.state().memory_usage();
    c.fill(&mut sm, false, 0, 200_000, 1);
    c.fill(&mut sm, true, 0, 70_000, 2);
    assert!(
        sm.state().memory_usage() > usage_before,
        "growth is counted"
    );
    assert_totals_match_recount(&sm, "canister messages");
    let taken = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    assert_eq!(sm.state().memory_totals.snapshots, taken.total_size);
    assert_totals_match_recount(&sm, "take");
    // An upload: metadata, the module, then a chunk, which counts like every other byte.
    let uploaded = upload_metadata(
        &mut sm,
        c.sender,
        upload_args(&c, TEST_CANISTER_WASM.len() as u64),
    )
    .unwrap();
    assert_totals_match_recount(&sm, "upload metadata");
    upload_module(&mut sm, &c, &uploaded, TEST_CANISTER_WASM);
    let before_chunk = sm.state().memory_totals.snapshots;
    upload_data(
        &mut sm,
        c.sender,
        c.id,
        &uploaded,
        SnapshotDataOffset::WasmChunk,
        vec![9; 100],
    )
    .unwrap();
    assert!(
        sm.state().memory_totals.snapshots > before_chunk,
        "a chunk upload counts toward memory"
    );
    assert_totals_match_recount(&sm, "chunk upload");
    sm.load_canister_snapshot(c.id, Some(c.sender), uploaded.clone())
        .unwrap();
    assert_totals_match_recount(&sm, "load");
    sm.delete_canister_snapshot(c.id, Some(c.sender), taken.id)
        .unwrap();
    assert_totals_match_recount(&sm, "delete snapshot");
    sm.stop_canister(c.id, Some(c.sender)).unwrap();
    sm.management::<()>(
        Some(c.sender),
        "delete_canister",
        (ic_management_canister_types::CanisterIdRecord { canister_id: c.id },),
    )
    .unwrap();
    assert_totals_match_recount(&sm, "delete canister");
    assert_eq!(
        sm.state().memory_usage(),
        0,
        "nothing is left on the subnet"
    );
}

#[test]
fn a_snapshot_counter_at_its_maximum_refuses_instead_of_reusing_ids() {
    let setup = || {
        let (mut sm, c) = env_with_config(config_with_two_snapshots());
        let canister = sm.state_mut().canisters.get_mut(&c.id).unwrap();
        canister.next_snapshot_id = u64::MAX;
        (sm, c)
    };
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.take_canister_snapshot(c.id, Some(c.sender), None)
    });
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage);
    assert!(err.reject_message.contains("every snapshot id"), "{err}");
    let err = assert_refused_without_effect(setup, |sm, c| {
        upload_metadata(
            sm,
            c.sender,
            upload_args(c, TEST_CANISTER_WASM.len() as u64),
        )
    });
    assert!(err.reject_message.contains("every snapshot id"), "{err}");
    // One below the edge, the last id is still given out.
    let (mut sm, c) = env_with_config(config_with_two_snapshots());
    sm.state_mut()
        .canisters
        .get_mut(&c.id)
        .unwrap()
        .next_snapshot_id = u64::MAX - 1;
    sm.take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    assert_eq!(sm.state().canisters[&c.id].next_snapshot_id, u64::MAX);
}

#[test]
fn a_canister_index_at_its_maximum_refuses_instead_of_reusing_ids() {
    let setup = || {
        let mut sm = StateMachine::new();
        sm.state_mut().next_canister_index = u64::MAX;
        (sm, ())
    };
    let err = assert_refused_without_effect(setup, |sm, _| {
        sm.management::<(ic_management_canister_types::CanisterIdRecord,)>(
            Some(controller()),
            "provisional_create_canister_with_cycles",
            (ic_management_canister_types::ProvisionalCreateCanisterWithCyclesArgs::default(),),
        )
    });
    assert_eq!(err.error_code, ErrorCode::MaxNumberOfCanistersReached);
    assert_eq!(err.reject_code, RejectCode::SysFatal);
}

#[test]
fn a_canister_version_at_its_maximum_saturates() {
    let (mut sm, c) = env();
    sm.state_mut()
        .canisters
        .get_mut(&c.id)
        .unwrap()
        .canister_version = u64::MAX;
    update_settings(&mut sm, c.sender, c.id, SettingsArgs::default()).unwrap();
    sm.take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    assert_eq!(c.version(&sm), u64::MAX);
}

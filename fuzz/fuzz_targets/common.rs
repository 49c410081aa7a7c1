//! A small replica with one installed canister holding data and one snapshot, shared by the
//! fuzz targets.

use candid::{Decode, Encode, Principal};
use canister_snapshots::execution::TestCanisterEngine;
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::scheduler::{Batch, ExecutionLoop, Ingress};
use canister_snapshots::{Config, TEST_CANISTER_WASM};

pub const CONTROLLER: [u8; 29] = [7; 29];

pub fn replica() -> (ExecutionLoop, ReplicatedState, Principal) {
    let execution = ExecutionLoop::new(
        Config {
            max_snapshots_per_canister: 2,
            ..Config::default()
        },
        Box::new(TestCanisterEngine),
    );
    let mut state = execution.new_state();
    let controller = Principal::from_slice(&CONTROLLER);
    let mgmt = Principal::management_canister();
    let send = |state: &mut ReplicatedState, receiver, method: &str, payload: Vec<u8>| {
        let ingress = vec![Ingress {
            message_id: 0,
            sender: controller,
            receiver,
            method: method.into(),
            payload,
        }];
        let mut results = execution.execute_round(
            state,
            Batch {
                time: state.time,
                ingress,
            },
        );
        results
            .pop()
            .expect("one result")
            .1
            .expect("setup succeeds")
    };
    let created = send(
        &mut state,
        mgmt,
        "provisional_create_canister_with_cycles",
        Encode!(&ic_management_canister_types::ProvisionalCreateCanisterWithCyclesArgs::default())
            .unwrap(),
    );
    let canister = Decode!(&created, ic_management_canister_types::CanisterIdRecord)
        .unwrap()
        .canister_id;
    let install = ic_management_canister_types::InstallCodeArgs {
        mode: ic_management_canister_types::CanisterInstallMode::Install,
        canister_id: canister,
        wasm_module: TEST_CANISTER_WASM.to_vec(),
        arg: vec![],
        sender_canister_version: None,
    };
    send(&mut state, mgmt, "install_code", Encode!(&install).unwrap());
    send(
        &mut state,
        canister,
        "fill_heap",
        Encode!(&0u64, &70_000u64, &3u8).unwrap(),
    );
    let take = ic_management_canister_types::TakeCanisterSnapshotArgs {
        canister_id: canister,
        replace_snapshot: None,
        uninstall_code: None,
        sender_canister_version: None,
    };
    send(
        &mut state,
        mgmt,
        "take_canister_snapshot",
        Encode!(&take).unwrap(),
    );
    (execution, state, canister)
}

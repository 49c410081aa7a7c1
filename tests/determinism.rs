//! Determinism and robustness, through the harness and the execution loop:
//! - two machines fed the same calls end in the same state hash, and any difference (one byte,
//!   one nanosecond, one round) shows in it;
//! - [`ExecutionLoop`] executes a batch in the documented order (subnet messages first, in
//!   arrival order; then canister by canister in ascending id, each in arrival order), and two
//!   loops fed the same batches agree;
//! - hostile payloads and method names, to the management canister and to the test canister,
//!   never panic, are refused with an expected code, and change nothing.
//!
//! # Replaying a proptest failure
//!
//! Each property prints `PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n>` to stderr (shown when it
//! fails, or with `-- --nocapture`); set both to replay the run. Failing cases are persisted in
//! `tests/determinism.regressions` and replayed first by later runs.

mod common;

use std::time::Duration;

use candid::{Decode, Encode, Principal};
use canister_snapshots::execution::{
    ExecutionContext, MethodKind, Response, TestCanisterEngine, WasmEngine,
};
use canister_snapshots::management::METHODS;
use canister_snapshots::management::types::TakeCanisterSnapshotArgs as LabelledTakeArgs;
use canister_snapshots::replicated_state::{
    GENESIS_TIME_NANOS, ReplicatedState, canister_id_from_index,
};
use canister_snapshots::scheduler::{Batch, ExecutionLoop, Ingress, MessageId};
use canister_snapshots::state::{Global, WasmModule};
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInstallMode, CanisterSettings as SettingsArgs,
    CanisterStatusResult, DeleteCanisterSnapshotArgs, InstallCodeArgs, LoadCanisterSnapshotArgs,
    ProvisionalCreateCanisterWithCyclesArgs, ReadCanisterSnapshotDataArgs,
    ReadCanisterSnapshotMetadataArgs, Snapshot, SnapshotDataKind, SnapshotVisibility,
    TakeCanisterSnapshotArgs, UninstallCodeArgs, UpdateSettingsArgs,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_bytes::ByteBuf;

use common::*;

// =============================================================================================
// Same calls, same state
// =============================================================================================

/// A sequence touching every kind of state: two canisters, memories, globals, certified data,
/// snapshots with and without labels, a load, an uninstall, settings, refused calls, time and
/// empty rounds. `last_write` is written last into canister a's heap.
fn script(sm: &mut StateMachine, last_write: &[u8]) {
    let a = install_new(sm, user(1));
    let b = install_new(sm, user(2));
    a.fill(sm, false, 0, 200_000, 1);
    b.write(sm, true, 5_000, b"stable");
    sm.advance_time(Duration::from_millis(1_500));
    sm.tick();
    let snapshot = sm
        .take_canister_snapshot(a.id, Some(user(1)), None)
        .unwrap();
    a.set_global(sm, 1, 99);
    a.set_certified_data(sm, b"cert");
    sm.advance_time(Duration::from_secs(7));
    sm.load_canister_snapshot(a.id, Some(user(1)), snapshot.id)
        .unwrap();
    update_settings(
        sm,
        user(2),
        b.id,
        SettingsArgs {
            controllers: Some(vec![user(2), user(3)]),
            ..Default::default()
        },
    )
    .unwrap();
    let args = LabelledTakeArgs {
        canister_id: b.id,
        replace_snapshot: None,
        uninstall_code: Some(true),
        sender_canister_version: None,
        label: Some("nightly".into()),
    };
    sm.update_call(
        Principal::management_canister(),
        user(3),
        "take_canister_snapshot",
        Encode!(&args).unwrap(),
    )
    .unwrap();
    sm.tick();
    sm.advance_time(Duration::from_nanos(1));
    sm.tick();
    assert!(
        sm.take_canister_snapshot(a.id, Some(user(9)), None)
            .is_err()
    );
    assert!(
        a.call(sm, "trap", Encode!(&"refused").unwrap()).is_err(),
        "a trap is a round too"
    );
    a.write(sm, false, 123_456, last_write);
}

#[test]
fn same_calls_give_the_same_state_hash() {
    let mut one = StateMachine::new();
    let mut two = StateMachine::new();
    assert_eq!(one.state_hash(), two.state_hash(), "genesis");
    script(&mut one, b"hello");
    script(&mut two, b"hello");
    assert_eq!(contents(one.state()), contents(two.state()));
    assert_eq!(one.state_hash(), two.state_hash());
    assert_eq!(one.state().round, two.state().round);
    assert_eq!(one.state().time, two.state().time);

    // Hashing changes nothing: `one` has been hashed twice more (its memory roots and checksums
    // are memoised), a third replica never was; after the same further steps all three agree.
    let mut three = StateMachine::new();
    script(&mut three, b"hello");
    one.state_hash();
    one.state_hash();
    let a = TestCanister {
        id: canister_id_from_index(0),
        sender: user(1),
    };
    for sm in [&mut one, &mut two, &mut three] {
        sm.tick();
        a.write(sm, false, 100, b"after hashing");
    }
    let third = three.state_hash();
    assert_eq!(
        one.state_hash(),
        third,
        "hashing changed the hashed replica"
    );
    assert_eq!(two.state_hash(), third);
}

#[test]
fn any_difference_changes_the_state_hash() {
    let reference = {
        let mut sm = StateMachine::new();
        script(&mut sm, b"hello");
        sm.state_hash()
    };
    // One extra byte, one different byte.
    for last_write in [&b"hello!"[..], b"hellp", b"hell"] {
        let mut sm = StateMachine::new();
        script(&mut sm, last_write);
        assert_ne!(sm.state_hash(), reference, "{last_write:?}");
    }
    // One more round, one nanosecond later.
    let mut sm = StateMachine::new();
    script(&mut sm, b"hello");
    sm.tick();
    assert_ne!(sm.state_hash(), reference, "an extra round");
    let mut sm = StateMachine::new();
    sm.advance_time(Duration::from_nanos(1));
    script(&mut sm, b"hello");
    assert_ne!(sm.state_hash(), reference, "a nanosecond later");
    // A label is part of the state.
    let mut one = StateMachine::new();
    let mut two = StateMachine::new();
    for (sm, label) in [(&mut one, "a"), (&mut two, "b")] {
        let c = install_new(sm, user(1));
        let args = LabelledTakeArgs {
            canister_id: c.id,
            replace_snapshot: None,
            uninstall_code: None,
            sender_canister_version: None,
            label: Some(label.into()),
        };
        sm.update_call(
            Principal::management_canister(),
            user(1),
            "take_canister_snapshot",
            Encode!(&args).unwrap(),
        )
        .unwrap();
    }
    assert_ne!(one.state_hash(), two.state_hash(), "labels differ");
}

/// The fields `state_hash` encodes by hand (`spec/execution.md`, "State hash"): settings that
/// differ only in a visibility or in who the allowed viewers are, and histories that differ only
/// in one entry's details, must hash apart.
#[test]
fn explicitly_encoded_fields_change_the_state_hash() {
    use ic_management_canister_types::LogVisibility;
    let with_settings = |settings: SettingsArgs| {
        let mut sm = StateMachine::new();
        let c = install_new(&mut sm, user(1));
        update_settings(&mut sm, user(1), c.id, settings).unwrap();
        sm.state_hash()
    };
    let hashes = [
        with_settings(SettingsArgs::default()),
        with_settings(SettingsArgs {
            log_visibility: Some(LogVisibility::Public),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            log_visibility: Some(LogVisibility::AllowedViewers(vec![user(2)])),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            log_visibility: Some(LogVisibility::AllowedViewers(vec![user(3)])),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            snapshot_visibility: Some(SnapshotVisibility::Public),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            snapshot_visibility: Some(SnapshotVisibility::AllowedViewers(vec![user(2)])),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            snapshot_visibility: Some(SnapshotVisibility::AllowedViewers(vec![user(2), user(3)])),
            ..Default::default()
        }),
        // Other controllers, and so another controllers_change entry in the history.
        with_settings(SettingsArgs {
            controllers: Some(vec![user(1), user(2)]),
            ..Default::default()
        }),
        with_settings(SettingsArgs {
            controllers: Some(vec![user(1), user(3)]),
            ..Default::default()
        }),
    ];
    for (i, a) in hashes.iter().enumerate() {
        for (j, b) in hashes.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "settings {i} and {j} hash alike");
        }
    }
}

#[test]
fn time_comes_from_the_batch_only() {
    let mut sm = StateMachine::new();
    assert_eq!(sm.get_time(), GENESIS_TIME_NANOS);
    assert_eq!(sm.state().time, GENESIS_TIME_NANOS);
    sm.advance_time(Duration::from_secs(3));
    // Advancing the harness clock alone changes nothing in the state ...
    assert_eq!(sm.state().time, GENESIS_TIME_NANOS);
    // ... until a round runs at that time.
    sm.tick();
    assert_eq!(sm.state().time, GENESIS_TIME_NANOS + 3_000_000_000);
    let c = install_new(&mut sm, user(1));
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(user(1)), None)
        .unwrap();
    assert_eq!(
        snapshot.taken_at_timestamp,
        GENESIS_TIME_NANOS + 3_000_000_000
    );
}

// =============================================================================================
// The execution loop: message order and replica agreement
// =============================================================================================

fn ingress(
    message_id: MessageId,
    sender: Principal,
    receiver: Principal,
    method: &str,
    payload: Vec<u8>,
) -> Ingress {
    Ingress {
        message_id,
        sender,
        receiver,
        method: method.to_string(),
        payload,
    }
}

fn new_loop() -> (ExecutionLoop, ReplicatedState) {
    let execution = ExecutionLoop::new(Config::default(), Box::new(TestCanisterEngine));
    let state = execution.new_state();
    (execution, state)
}

/// A result in a comparable form.
fn comparable(result: &Result<Vec<u8>, UserError>) -> Result<Vec<u8>, (ErrorCode, String)> {
    result
        .clone()
        .map_err(|err| (err.code(), err.description().to_string()))
}

#[test]
fn execution_loop_orders_messages_and_replicas_agree() {
    let mgmt = Principal::management_canister();
    let u = user(1);
    let a = canister_id_from_index(0);
    let b = canister_id_from_index(1);
    let missing = canister_id_from_index(5);
    assert!(a < b && b < missing, "ids ascend with the allocation index");
    let create = |id| {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: None,
            settings: None,
            specified_id: None,
            sender_canister_version: None,
        };
        ingress(
            id,
            u,
            mgmt,
            "provisional_create_canister_with_cycles",
            encode((args,)),
        )
    };
    let install = |id, canister_id| {
        let args = InstallCodeArgs {
            mode: CanisterInstallMode::Install,
            canister_id,
            wasm_module: TEST_CANISTER_WASM.to_vec(),
            arg: vec![],
            sender_canister_version: None,
        };
        ingress(id, u, mgmt, "install_code", encode((args,)))
    };
    let write = |id, canister_id, data: &[u8]| {
        ingress(
            id,
            u,
            canister_id,
            "write_heap",
            Encode!(&0u64, &ByteBuf::from(data)).unwrap(),
        )
    };
    let read = |id, canister_id| {
        ingress(
            id,
            u,
            canister_id,
            "read_heap",
            Encode!(&0u64, &7u64).unwrap(),
        )
    };
    let b_snapshot = [&0u64.to_be_bytes()[..], b.as_slice()].concat();
    let t0 = GENESIS_TIME_NANOS + 1_000;
    let batches = vec![
        Batch {
            time: t0,
            ingress: vec![create(0), create(1)],
        },
        Batch {
            time: t0 + 1_000,
            ingress: vec![install(2, b), install(3, a)],
        },
        Batch {
            time: t0 + 2_000,
            ingress: vec![
                // Arrives first; runs first: b has no snapshot yet.
                ingress(
                    9,
                    u,
                    mgmt,
                    "load_canister_snapshot",
                    encode((LoadCanisterSnapshotArgs {
                        canister_id: b,
                        snapshot_id: b_snapshot.clone(),
                        sender_canister_version: None,
                    },)),
                ),
                write(10, b, b"b-first"),
                ingress(
                    11,
                    u,
                    mgmt,
                    "canister_status",
                    encode((CanisterIdRecord { canister_id: a },)),
                ),
                write(12, a, b"a-first"),
                // Runs before b's write (10): the snapshot holds an empty heap.
                ingress(
                    13,
                    u,
                    mgmt,
                    "take_canister_snapshot",
                    encode((TakeCanisterSnapshotArgs {
                        canister_id: b,
                        replace_snapshot: None,
                        uninstall_code: None,
                        sender_canister_version: None,
                    },)),
                ),
                read(14, b),
                read(15, missing),
                read(16, a),
                ingress(
                    17,
                    u,
                    mgmt,
                    "list_canister_snapshots",
                    encode((CanisterIdRecord { canister_id: b },)),
                ),
            ],
        },
        // An earlier batch time does not move the state's time backwards.
        Batch {
            time: t0,
            ingress: vec![read(20, a), write(21, b, b"b-second")],
        },
    ];

    let (execution, mut state) = new_loop();
    let mut all_results = Vec::new();
    let mut hashes = Vec::new();
    for batch in batches.clone() {
        let results = execution.execute_round(&mut state, batch);
        all_results.push(results);
        hashes.push(state.state_hash());
    }

    // Batch 0 and 1: management only, arrival order.
    let order = |results: &Vec<(MessageId, Result<Vec<u8>, UserError>)>| {
        results.iter().map(|(id, _)| *id).collect::<Vec<_>>()
    };
    assert_eq!(order(&all_results[0]), vec![0, 1]);
    let created: Vec<Principal> = all_results[0]
        .iter()
        .map(|(_, r)| {
            Decode!(r.as_ref().unwrap(), CanisterIdRecord)
                .unwrap()
                .canister_id
        })
        .collect();
    assert_eq!(created, vec![a, b]);
    assert_eq!(order(&all_results[1]), vec![2, 3]);
    assert!(all_results[1].iter().all(|(_, r)| r.is_ok()));

    // Batch 2: subnet messages in arrival order, then a, b, missing, each in arrival order.
    let results = &all_results[2];
    assert_eq!(order(results), vec![9, 11, 13, 17, 12, 16, 10, 14, 15]);
    let by_id = |id: MessageId| &results.iter().find(|(m, _)| *m == id).unwrap().1;
    assert_eq!(
        by_id(9).as_ref().unwrap_err().code(),
        ErrorCode::CanisterSnapshotNotFound
    );
    let status = Decode!(by_id(11).as_ref().unwrap(), CanisterStatusResult).unwrap();
    assert_eq!(
        status.memory_metrics.wasm_memory_size,
        candid::Nat::from(0u64)
    );
    let snapshot = Decode!(by_id(13).as_ref().unwrap(), Snapshot).unwrap();
    assert_eq!(snapshot.id, b_snapshot);
    assert_eq!(
        snapshot.total_size,
        TEST_CANISTER_WASM.len() as u64 + 2 * canister_snapshots::state::GLOBAL_SIZE_BYTES,
        "taken before b's write: module and globals only"
    );
    assert_eq!(snapshot.taken_at_timestamp, t0 + 2_000);
    let list = Decode!(by_id(17).as_ref().unwrap(), Vec<Snapshot>).unwrap();
    assert_eq!(list, vec![snapshot]);
    let read_back = |id| {
        Decode!(by_id(id).as_ref().unwrap(), ByteBuf)
            .unwrap()
            .into_vec()
    };
    assert_eq!(read_back(16), b"a-first");
    assert_eq!(read_back(14), b"b-first");
    assert_eq!(
        by_id(15).as_ref().unwrap_err().code(),
        ErrorCode::CanisterNotFound
    );

    // Batch 3: time stays.
    assert_eq!(order(&all_results[3]), vec![20, 21]);
    assert_eq!(state.time, t0 + 2_000);
    assert_eq!(state.round, 4);

    // A second replica fed the same batches agrees on every result and every hash.
    let (execution_two, mut state_two) = new_loop();
    for (n, batch) in batches.into_iter().enumerate() {
        let results = execution_two.execute_round(&mut state_two, batch);
        let mine: Vec<_> = results.iter().map(|(id, r)| (*id, comparable(r))).collect();
        let theirs: Vec<_> = all_results[n]
            .iter()
            .map(|(id, r)| (*id, comparable(r)))
            .collect();
        assert_eq!(mine, theirs, "batch {n}");
        assert_eq!(state_two.state_hash(), hashes[n], "batch {n}");
    }
    assert_eq!(contents(&state_two), contents(&state));
}

/// The test canister plus one method that changes every part of the execution state and then
/// traps: no method of the test canister itself traps after a write, so this is what shows
/// that the runner, not the engine, discards a trapped message's changes.
struct WriteThenTrap;

impl WasmEngine for WriteThenTrap {
    fn validate(&self, wasm_module: &WasmModule) -> Result<(), UserError> {
        TestCanisterEngine.validate(wasm_module)
    }

    fn initial_globals(&self, wasm_module: &WasmModule) -> Vec<Global> {
        TestCanisterEngine.initial_globals(wasm_module)
    }

    fn method_kind(&self, wasm_module: &WasmModule, method: &str) -> Option<MethodKind> {
        if method == "write_then_trap" {
            return Some(MethodKind::Update);
        }
        TestCanisterEngine.method_kind(wasm_module, method)
    }

    fn execute(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Response, UserError> {
        if method != "write_then_trap" {
            return TestCanisterEngine.execute(ctx, method, arg);
        }
        ctx.write(false, 100, &[0xFF; 10_000])?;
        ctx.fill(true, 0, 100_000, 0xEE)?;
        ctx.execution_state.exported_globals[0] = Global::I64(123);
        *ctx.certified_data = b"half-done".to_vec();
        Err(UserError::new(
            ErrorCode::CanisterCalledTrap,
            "Canister called `ic0.trap` with message: 'after writing'",
        ))
    }
}

#[test]
fn a_trap_after_writes_discards_them() {
    let mgmt = Principal::management_canister();
    let u = user(1);
    let a = canister_id_from_index(0);
    let setup = vec![
        Batch {
            time: GENESIS_TIME_NANOS,
            ingress: vec![ingress(
                0,
                u,
                mgmt,
                "provisional_create_canister_with_cycles",
                encode((ProvisionalCreateCanisterWithCyclesArgs {
                    amount: None,
                    settings: None,
                    specified_id: None,
                    sender_canister_version: None,
                },)),
            )],
        },
        Batch {
            time: GENESIS_TIME_NANOS,
            ingress: vec![
                ingress(
                    1,
                    u,
                    mgmt,
                    "install_code",
                    encode((InstallCodeArgs {
                        mode: CanisterInstallMode::Install,
                        canister_id: a,
                        wasm_module: TEST_CANISTER_WASM.to_vec(),
                        arg: vec![],
                        sender_canister_version: None,
                    },)),
                ),
                ingress(
                    2,
                    u,
                    a,
                    "write_heap",
                    Encode!(&0u64, &ByteBuf::from(b"before".to_vec())).unwrap(),
                ),
                ingress(3, u, a, "set_global", Encode!(&0u32, &7i64).unwrap()),
            ],
        },
    ];
    let new_loop = || {
        let execution = ExecutionLoop::new(Config::default(), Box::new(WriteThenTrap));
        let mut state = execution.new_state();
        for batch in setup.clone() {
            for (id, result) in execution.execute_round(&mut state, batch) {
                assert!(result.is_ok(), "setup message {id}: {result:?}");
            }
        }
        (execution, state)
    };
    let (execution, mut state) = new_loop();
    let (twin_execution, mut twin) = new_loop();
    let before = contents(&state);
    let time = state.time;
    let results = execution.execute_round(
        &mut state,
        Batch {
            time,
            ingress: vec![ingress(4, u, a, "write_then_trap", Encode!().unwrap())],
        },
    );
    let err = results[0].1.as_ref().unwrap_err();
    assert_eq!(err.code(), ErrorCode::CanisterCalledTrap);
    twin_execution.execute_round(
        &mut twin,
        Batch {
            time,
            ingress: vec![],
        },
    );
    assert_eq!(contents(&state), before);
    assert_eq!(state.state_hash(), twin.state_hash());
    let canister = &state.canisters[&a];
    assert_eq!(canister.heap_delta_debit, 0, "a trap charges no heap delta");
    let heap = &canister.execution_state.as_ref().unwrap().wasm_memory;
    assert_eq!(heap.read_vec(0, 6).unwrap(), b"before");
    assert_eq!(heap.read_vec(100, 1).unwrap(), [0]);
}

#[test]
fn heap_delta_debit_drains_at_the_end_of_each_round() {
    const LIMIT: u64 = 16 << 10;
    let config = Config {
        heap_delta_rate_limit_bytes: LIMIT,
        ..Config::default()
    };
    let (mut sm, c) = env_with_config(config);
    // A write touching three pages (12 KiB) stays within one round's allowance.
    c.write(&mut sm, false, 4_000, &[1; 8_200]);
    let debit = |sm: &StateMachine| sm.state().canisters[&c.id].heap_delta_debit;
    assert_eq!(debit(&sm), 0, "3 pages = 12 KiB, within one allowance");
    c.fill(&mut sm, false, 0, 64 << 10, 2);
    assert_eq!(debit(&sm), (64 << 10) - LIMIT);
    sm.tick();
    assert_eq!(debit(&sm), (64 << 10) - 2 * LIMIT);
    for _ in 0..2 {
        sm.tick();
    }
    assert_eq!(debit(&sm), 0);
    sm.tick();
    assert_eq!(debit(&sm), 0, "never below zero");
}

// =============================================================================================
// Hostile payloads
// =============================================================================================

const DEFAULT_CASES: u32 = 128;

fn config() -> ProptestConfig {
    common::proptest_config("determinism", DEFAULT_CASES)
}

/// Management methods that create canisters: any caller may, so they are kept out of the
/// properties where a payload could decode.
const CREATION_METHODS: &[&str] = &["provisional_create_canister_with_cycles", "create_canister"];

/// Methods that never change the state when they succeed.
const READ_ONLY_MANAGEMENT: &[&str] = &[
    "canister_info",
    "canister_status",
    "list_canister_snapshots",
    "read_canister_snapshot_metadata",
    "read_canister_snapshot_data",
];

const READ_ONLY_CANISTER: &[&str] = &["read_heap", "read_stable", "memory_sizes", "get_global"];

/// Codes a refused management call may carry.
const MANAGEMENT_CODES: &[ErrorCode] = &[
    ErrorCode::InvalidManagementPayload,
    ErrorCode::UnknownManagementMessage,
    ErrorCode::CanisterNotFound,
    ErrorCode::CanisterInvalidController,
    ErrorCode::CanisterSnapshotNotFound,
    ErrorCode::CanisterRejectedMessage,
];

/// Codes a refused test-canister call may carry.
const CANISTER_CODES: &[ErrorCode] = &[
    ErrorCode::CanisterCalledTrap,
    ErrorCode::CanisterMethodNotFound,
    ErrorCode::CanisterTrapped,
    ErrorCode::CanisterOutOfMemory,
    ErrorCode::CanisterContractViolation,
];

fn all_management_methods() -> Vec<&'static str> {
    let mut methods = METHODS.to_vec();
    methods.extend(["raw_rand", "upload_chunk", "bitcoin_get_balance"]);
    methods
}

fn method_name(known: Vec<&'static str>) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(known).prop_map(str::to_string),
        1 => "[a-z_]{0,40}",
        1 => any::<String>(),
    ]
}

#[derive(Debug, Clone)]
enum Payload {
    /// Random bytes.
    Random(Vec<u8>),
    /// The Candid magic followed by random bytes: gets past the first check.
    Didl(Vec<u8>),
    /// A strict prefix of a valid payload of one of the methods.
    Truncated { valid: Index, cut: Index },
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Payload::Random),
        prop::collection::vec(any::<u8>(), 0..100).prop_map(Payload::Didl),
        (any::<Index>(), any::<Index>()).prop_map(|(valid, cut)| Payload::Truncated { valid, cut }),
    ]
}

impl Payload {
    fn bytes(&self, valid: &[Vec<u8>]) -> Vec<u8> {
        match self {
            Payload::Random(bytes) => bytes.clone(),
            Payload::Didl(bytes) => [b"DIDL".as_slice(), bytes].concat(),
            Payload::Truncated { valid: which, cut } => {
                let full = which.get(valid);
                full[..cut.index(full.len())].to_vec()
            }
        }
    }
}

/// Valid management payloads about the fixture's canister and snapshot.
fn valid_management_payloads(c: &TestCanister, snapshot: &[u8]) -> Vec<Vec<u8>> {
    vec![
        encode((CanisterIdRecord { canister_id: c.id },)),
        encode((TakeCanisterSnapshotArgs {
            canister_id: c.id,
            replace_snapshot: Some(snapshot.to_vec()),
            uninstall_code: Some(true),
            sender_canister_version: Some(1),
        },)),
        encode((LabelledTakeArgs {
            canister_id: c.id,
            replace_snapshot: None,
            uninstall_code: None,
            sender_canister_version: None,
            label: Some("label".into()),
        },)),
        encode((LoadCanisterSnapshotArgs {
            canister_id: c.id,
            snapshot_id: snapshot.to_vec(),
            sender_canister_version: None,
        },)),
        encode((DeleteCanisterSnapshotArgs {
            canister_id: c.id,
            snapshot_id: snapshot.to_vec(),
        },)),
        encode((InstallCodeArgs {
            mode: CanisterInstallMode::Reinstall,
            canister_id: c.id,
            wasm_module: TEST_CANISTER_WASM.to_vec(),
            arg: vec![1, 2, 3],
            sender_canister_version: None,
        },)),
        encode((UpdateSettingsArgs {
            canister_id: c.id,
            settings: SettingsArgs {
                controllers: Some(vec![user(1), user(2)]),
                snapshot_visibility: Some(SnapshotVisibility::AllowedViewers(vec![user(3)])),
                ..Default::default()
            },
            sender_canister_version: None,
        },)),
        encode((ProvisionalCreateCanisterWithCyclesArgs {
            amount: Some(1_000u64.into()),
            settings: None,
            specified_id: Some(c.id),
            sender_canister_version: None,
        },)),
        encode((CanisterInfoArgs {
            canister_id: c.id,
            num_requested_changes: Some(3),
        },)),
    ]
}

fn valid_canister_payloads() -> Vec<Vec<u8>> {
    vec![
        Encode!(&0u64, &ByteBuf::from(vec![1u8; 40])).unwrap(),
        Encode!(&4_096u64, &100u64).unwrap(),
        Encode!(&0u64, &100u64, &7u8).unwrap(),
        Encode!(&ByteBuf::from(vec![1u8; 32])).unwrap(),
        Encode!(&1u32, &-5i64).unwrap(),
        Encode!(&1u32).unwrap(),
        Encode!(&"message").unwrap(),
    ]
}

fn sender() -> impl Strategy<Value = Principal> {
    prop_oneof![
        Just(controller()),
        Just(stranger()),
        Just(Principal::anonymous()),
        Just(Principal::management_canister()),
        prop::collection::vec(any::<u8>(), 0..=29).prop_map(|b| Principal::from_slice(&b)),
    ]
}

/// Sends one hostile message and checks the outcome: a reject with an allowed code (or, for a
/// read-only method, a reply), and the state's contents unchanged.
fn check_hostile(
    receiver_is_management: bool,
    sender: Principal,
    method: &str,
    payload: &Payload,
) -> Result<(), TestCaseError> {
    let (mut sm, c, snapshot) = populated_env(true);
    let snapshot = snapshot.unwrap();
    let before = contents(sm.state());
    let (receiver, bytes, codes, read_only) = if receiver_is_management {
        (
            Principal::management_canister(),
            payload.bytes(&valid_management_payloads(&c, &snapshot)),
            MANAGEMENT_CODES,
            READ_ONLY_MANAGEMENT,
        )
    } else {
        (
            c.id,
            payload.bytes(&valid_canister_payloads()),
            CANISTER_CODES,
            READ_ONLY_CANISTER,
        )
    };
    match sm.update_call(receiver, sender, method, bytes) {
        Err(err) => prop_assert!(
            codes.contains(&err.error_code),
            "unexpected code for {method:?}: {err}"
        ),
        Ok(reply) => prop_assert!(
            read_only.contains(&method),
            "{method:?} accepted a hostile payload and replied {reply:?}"
        ),
    }
    prop_assert_eq!(contents(sm.state()), before);
    Ok(())
}

/// A well-formed management call from someone who controls nothing, about the fixture's
/// canister, a missing one or an arbitrary principal, with arbitrary snapshot ids.
#[derive(Debug, Clone)]
struct StrangerCall {
    method: Index,
    canister: Index,
    random_canister: Vec<u8>,
    snapshot: Index,
    random_snapshot: Vec<u8>,
    flag: Option<bool>,
    sender: Principal,
}

fn stranger_call() -> impl Strategy<Value = StrangerCall> {
    (
        any::<Index>(),
        any::<Index>(),
        prop::collection::vec(any::<u8>(), 0..=29),
        any::<Index>(),
        prop::collection::vec(any::<u8>(), 0..=40),
        any::<Option<bool>>(),
        prop_oneof![
            Just(stranger()),
            Just(Principal::anonymous()),
            prop::collection::vec(any::<u8>(), 0..=29).prop_map(|b| Principal::from_slice(&b)),
        ],
    )
        .prop_map(
            |(method, canister, random_canister, snapshot, random_snapshot, flag, sender)| {
                StrangerCall {
                    method,
                    canister,
                    random_canister,
                    snapshot,
                    random_snapshot,
                    flag,
                    sender,
                }
            },
        )
}

impl StrangerCall {
    fn build(&self, c: &TestCanister, snapshot: &[u8]) -> (&'static str, Vec<u8>) {
        let canister_id = *self.canister.get(&[
            c.id,
            canister_id_from_index(77),
            Principal::management_canister(),
            Principal::from_slice(&self.random_canister),
        ]);
        let snapshot_id = self
            .snapshot
            .get(&[
                snapshot.to_vec(),
                self.random_snapshot.clone(),
                [&5u64.to_be_bytes()[..], canister_id.as_slice()].concat(),
            ])
            .clone();
        let methods: Vec<&'static str> = METHODS
            .iter()
            .copied()
            .filter(|m| !CREATION_METHODS.contains(m))
            .collect();
        let method = *self.method.get(&methods);
        let record = encode((CanisterIdRecord { canister_id },));
        let payload = match method {
            "take_canister_snapshot" => encode((TakeCanisterSnapshotArgs {
                canister_id,
                replace_snapshot: self.flag.map(|_| snapshot_id.clone()),
                uninstall_code: self.flag,
                sender_canister_version: None,
            },)),
            "load_canister_snapshot" => encode((LoadCanisterSnapshotArgs {
                canister_id,
                snapshot_id,
                sender_canister_version: None,
            },)),
            "delete_canister_snapshot" => encode((DeleteCanisterSnapshotArgs {
                canister_id,
                snapshot_id,
            },)),
            "install_code" => encode((InstallCodeArgs {
                mode: match self.flag {
                    None => CanisterInstallMode::Install,
                    Some(false) => CanisterInstallMode::Reinstall,
                    Some(true) => CanisterInstallMode::Upgrade(None),
                },
                canister_id,
                wasm_module: snapshot_id,
                arg: vec![],
                sender_canister_version: None,
            },)),
            "uninstall_code" => encode((UninstallCodeArgs {
                canister_id,
                sender_canister_version: None,
            },)),
            "update_settings" => encode((UpdateSettingsArgs {
                canister_id,
                settings: SettingsArgs {
                    controllers: Some(vec![self.sender]),
                    ..Default::default()
                },
                sender_canister_version: None,
            },)),
            "read_canister_snapshot_metadata" => encode((ReadCanisterSnapshotMetadataArgs {
                canister_id,
                snapshot_id,
            },)),
            "read_canister_snapshot_data" => encode((ReadCanisterSnapshotDataArgs {
                canister_id,
                snapshot_id,
                kind: SnapshotDataKind::WasmMemory {
                    offset: 0,
                    size: 4_096,
                },
            },)),
            "canister_info" => encode((CanisterInfoArgs {
                canister_id,
                num_requested_changes: Some(u64::MAX),
            },)),
            _ => record,
        };
        (method, payload)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_management_messages_are_refused_without_effect(
        method in method_name(all_management_methods()),
        payload in payload(),
        sender in sender(),
    ) {
        check_hostile(true, sender, &method, &payload)?;
    }

    #[test]
    fn hostile_canister_messages_are_refused_without_effect(
        method in method_name(canister_snapshots::execution::test_canister::METHODS.to_vec()),
        payload in payload(),
        sender in sender(),
    ) {
        check_hostile(false, sender, &method, &payload)?;
    }

    #[test]
    fn non_controllers_change_nothing(call in stranger_call()) {
        let (mut sm, c, snapshot) = populated_env(true);
        let (method, payload) = call.build(&c, &snapshot.unwrap());
        let before = contents(sm.state());
        match sm.update_call(Principal::management_canister(), call.sender, method, payload) {
            Err(err) => prop_assert!(
                MANAGEMENT_CODES.contains(&err.error_code),
                "unexpected code for {}: {}", method, err
            ),
            Ok(_) => prop_assert_eq!(method, "canister_info", "only canister_info is public"),
        }
        prop_assert_eq!(contents(sm.state()), before);
    }
}

//! Shared fixtures for the harness-level integration tests (`tests/management.rs`,
//! `tests/determinism.rs`): principals, a test-canister wrapper, reject assertions and a
//! "nothing changed" check for refused calls.
//!
//! Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Debug;

use candid::utils::ArgumentEncoder;
use candid::{Decode, Encode, Principal};
use canister_snapshots::management::types::{
    TakeCanisterSnapshotArgs as LabelledTakeArgs, UploadCanisterSnapshotDataArgs,
    UploadCanisterSnapshotMetadataArgs,
};
use canister_snapshots::memory::Hash;
use canister_snapshots::memory::checksum::{memory_root_from_bytes, sha256};
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::snapshots::{CanisterSnapshot, SnapshotDigest, snapshot_checksum};
use canister_snapshots::state::{CanisterChange, CanisterSettings, CanisterStatus, Global};
use canister_snapshots::{Config, RejectResponse, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, CanisterSettings as SettingsArgs, InstallCodeArgs,
    ProvisionalCreateCanisterWithCyclesArgs, Snapshot, SnapshotDataOffset, SnapshotMetadataGlobal,
    UpdateSettingsArgs, UploadCanisterSnapshotMetadataResult,
};
use serde_bytes::ByteBuf;

/// A user principal (self-authenticating), distinct for each `n`.
pub fn user(n: u8) -> Principal {
    Principal::self_authenticating([n])
}

/// The controller of the fixtures' canisters.
pub fn controller() -> Principal {
    user(1)
}

/// A principal that controls nothing.
pub fn stranger() -> Principal {
    user(66)
}

/// The test canister module under a version: a different module hash, the same interface.
pub fn module(version: &str) -> Vec<u8> {
    canister_snapshots::execution::test_canister_module(version.as_bytes())
}

/// A test canister and the principal that calls it.
#[derive(Clone, Copy, Debug)]
pub struct TestCanister {
    pub id: Principal,
    pub sender: Principal,
}

impl TestCanister {
    pub fn call(
        &self,
        sm: &mut StateMachine,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        sm.update_call(self.id, self.sender, method, payload)
    }

    #[track_caller]
    fn ok(&self, sm: &mut StateMachine, method: &str, payload: Vec<u8>) -> Vec<u8> {
        self.call(sm, method, payload)
            .unwrap_or_else(|err| panic!("{method} on {} failed: {err}", self.id))
    }

    #[track_caller]
    pub fn write(&self, sm: &mut StateMachine, stable: bool, offset: u64, data: &[u8]) {
        let method = if stable { "write_stable" } else { "write_heap" };
        let reply = self.ok(sm, method, Encode!(&offset, &ByteBuf::from(data)).unwrap());
        Decode!(&reply).unwrap();
    }

    #[track_caller]
    pub fn fill(&self, sm: &mut StateMachine, stable: bool, offset: u64, len: u64, byte: u8) {
        let method = if stable { "fill_stable" } else { "fill_heap" };
        let reply = self.ok(sm, method, Encode!(&offset, &len, &byte).unwrap());
        Decode!(&reply).unwrap();
    }

    pub fn try_read(
        &self,
        sm: &mut StateMachine,
        stable: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RejectResponse> {
        let method = if stable { "read_stable" } else { "read_heap" };
        self.call(sm, method, Encode!(&offset, &len).unwrap())
            .map(|reply| Decode!(&reply, ByteBuf).unwrap().into_vec())
    }

    #[track_caller]
    pub fn read(&self, sm: &mut StateMachine, stable: bool, offset: u64, len: u64) -> Vec<u8> {
        self.try_read(sm, stable, offset, len)
            .unwrap_or_else(|err| panic!("read on {} failed: {err}", self.id))
    }

    /// (Wasm memory bytes, stable memory bytes).
    #[track_caller]
    pub fn memory_sizes(&self, sm: &mut StateMachine) -> (u64, u64) {
        let reply = self.ok(sm, "memory_sizes", Encode!().unwrap());
        Decode!(&reply, u64, u64).unwrap()
    }

    #[track_caller]
    pub fn set_global(&self, sm: &mut StateMachine, index: u32, value: i64) {
        let reply = self.ok(sm, "set_global", Encode!(&index, &value).unwrap());
        Decode!(&reply).unwrap();
    }

    #[track_caller]
    pub fn get_global(&self, sm: &mut StateMachine, index: u32) -> i64 {
        let reply = self.ok(sm, "get_global", Encode!(&index).unwrap());
        Decode!(&reply, i64).unwrap()
    }

    #[track_caller]
    pub fn set_certified_data(&self, sm: &mut StateMachine, data: &[u8]) {
        let reply = self.ok(
            sm,
            "set_certified_data",
            Encode!(&ByteBuf::from(data)).unwrap(),
        );
        Decode!(&reply).unwrap();
    }

    /// The canister's certified data, read from the state (the test canister cannot return it).
    pub fn certified_data(&self, sm: &StateMachine) -> Vec<u8> {
        sm.state().canisters[&self.id].certified_data.clone()
    }

    pub fn version(&self, sm: &StateMachine) -> u64 {
        sm.state().canisters[&self.id].canister_version
    }

    pub fn cycles(&self, sm: &StateMachine) -> u128 {
        sm.state().canisters[&self.id].cycles
    }
}

/// Creates a canister controlled by `controller` with `cycles` and optional settings.
#[track_caller]
pub fn create(
    sm: &mut StateMachine,
    controller: Principal,
    cycles: u128,
    settings: Option<SettingsArgs>,
) -> Principal {
    let args = ProvisionalCreateCanisterWithCyclesArgs {
        amount: Some(cycles.into()),
        settings,
        specified_id: None,
        sender_canister_version: None,
    };
    let (record,): (CanisterIdRecord,) = sm
        .management(
            Some(controller),
            "provisional_create_canister_with_cycles",
            (args,),
        )
        .unwrap_or_else(|err| panic!("create failed: {err}"));
    record.canister_id
}

/// Creates a canister with the harness's cycles and installs the test canister in it.
#[track_caller]
pub fn install_new(sm: &mut StateMachine, controller: Principal) -> TestCanister {
    let id = sm.create_canister_with_settings(Some(controller), None);
    sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller));
    TestCanister {
        id,
        sender: controller,
    }
}

/// Calls `install_code` in `mode` with `wasm_module`.
pub fn install_code(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
    mode: CanisterInstallMode,
    wasm_module: Vec<u8>,
) -> Result<(), RejectResponse> {
    let args = InstallCodeArgs {
        mode,
        canister_id,
        wasm_module,
        arg: vec![],
        sender_canister_version: None,
    };
    sm.management(Some(sender), "install_code", (args,))
}

pub fn update_settings(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
    settings: SettingsArgs,
) -> Result<(), RejectResponse> {
    let args = UpdateSettingsArgs {
        canister_id,
        settings,
        sender_canister_version: None,
    };
    sm.management(Some(sender), "update_settings", (args,))
}

/// A fresh default machine with one installed test canister (controlled by [`controller`]).
pub fn env() -> (StateMachine, TestCanister) {
    env_with_config(Config::default())
}

pub fn env_with_config(config: Config) -> (StateMachine, TestCanister) {
    let mut sm = StateMachine::with_config(config);
    let canister = install_new(&mut sm, controller());
    (sm, canister)
}

/// Like [`env`], with some heap, stable memory, a global and certified data written, and
/// (when `snapshot`) one snapshot taken: the usual starting point of the error tests.
pub fn populated_env(snapshot: bool) -> (StateMachine, TestCanister, Option<Vec<u8>>) {
    let (mut sm, canister) = env();
    populate(&mut sm, &canister);
    let id = snapshot.then(|| {
        sm.take_canister_snapshot(canister.id, Some(canister.sender), None)
            .unwrap()
            .id
    });
    (sm, canister, id)
}

/// Writes a recognisable pattern into every part of the canister's state.
pub fn populate(sm: &mut StateMachine, canister: &TestCanister) {
    canister.fill(sm, false, 0, 100_000, 0xA1);
    canister.write(sm, false, 70_000, b"heap marker");
    canister.fill(sm, true, 0, 10_000, 0x5B);
    canister.write(sm, true, 9_000, b"stable marker");
    canister.set_global(sm, 0, -42);
    canister.set_global(sm, 1, i64::MAX);
    canister.set_certified_data(sm, b"certified");
}

// ---------------------------------------------------------------------------------------------
// Rejects
// ---------------------------------------------------------------------------------------------

/// Asserts that `result` is a reject with `error_code` and `reject_code` whose message contains
/// every one of `needles`; returns the reject.
#[track_caller]
pub fn assert_reject<T: Debug>(
    result: Result<T, RejectResponse>,
    error_code: ErrorCode,
    reject_code: RejectCode,
    needles: &[&str],
) -> RejectResponse {
    let err = match result {
        Ok(value) => panic!("expected a {error_code:?} reject, got Ok({value:?})"),
        Err(err) => err,
    };
    assert_eq!(err.error_code, error_code, "unexpected error code: {err}");
    assert_eq!(
        err.reject_code, reject_code,
        "unexpected reject code: {err}"
    );
    for needle in needles {
        assert!(
            err.reject_message.contains(needle),
            "the message should mention {needle:?}: {err}"
        );
    }
    err
}

// ---------------------------------------------------------------------------------------------
// State comparison
// ---------------------------------------------------------------------------------------------

/// Everything observable about one canister, minus the heap-delta debit (which rounds drain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanisterContents {
    pub id: Principal,
    pub controllers: BTreeSet<Principal>,
    pub status: CanisterStatus,
    pub module_hash: Option<Hash>,
    pub wasm_memory: Option<(u64, Hash)>,
    pub stable_memory: Option<(u64, Hash)>,
    pub globals: Option<Vec<Global>>,
    pub certified_data: Vec<u8>,
    pub global_timer: Option<u64>,
    pub cycles: u128,
    pub version: u64,
    pub history: Vec<CanisterChange>,
    pub total_num_changes: u64,
    pub next_snapshot_id: u64,
    pub settings: CanisterSettings,
}

/// Everything observable about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotContents {
    pub id: Vec<u8>,
    pub taken_at_timestamp: u64,
    pub canister_version: u64,
    pub label: Option<String>,
    pub total_size: u64,
    pub checksum: Hash,
}

/// The replicated state minus time, round and heap-delta debits: what a refused message must
/// leave exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub next_canister_index: u64,
    pub canisters: Vec<CanisterContents>,
    pub snapshots: Vec<SnapshotContents>,
}

pub fn contents(state: &ReplicatedState) -> Contents {
    let canisters = state
        .canisters
        .values()
        .map(|c| {
            let execution = c.execution_state.as_ref();
            CanisterContents {
                id: c.canister_id,
                controllers: c.controllers.clone(),
                status: c.status,
                module_hash: c.module_hash(),
                wasm_memory: execution
                    .map(|e| (e.wasm_memory.size_bytes(), e.wasm_memory.root_hash())),
                stable_memory: execution
                    .map(|e| (e.stable_memory.size_bytes(), e.stable_memory.root_hash())),
                globals: execution.map(|e| e.exported_globals.clone()),
                certified_data: c.certified_data.clone(),
                global_timer: c.global_timer,
                cycles: c.cycles,
                version: c.canister_version,
                history: c.history.changes().cloned().collect(),
                total_num_changes: c.history.total_num_changes(),
                next_snapshot_id: c.next_snapshot_id,
                settings: c.settings.clone(),
            }
        })
        .collect();
    let snapshots = state
        .snapshots
        .iter()
        .map(|s| SnapshotContents {
            id: s.id().to_bytes(),
            taken_at_timestamp: s.taken_at_timestamp,
            canister_version: s.canister_version,
            label: s.label.clone(),
            total_size: s.total_size(),
            checksum: s.checksum(),
        })
        .collect();
    Contents {
        next_canister_index: state.next_canister_index,
        canisters,
        snapshots,
    }
}

/// Builds two identical machines with `setup`, sends `call` to one and an empty round to the
/// other, and asserts that the call was refused and changed nothing: equal contents before and
/// after, and equal state hashes with the twin (which covers time, round and debits too).
/// Returns the reject for further assertions.
#[track_caller]
pub fn assert_refused_without_effect<F, R: Debug>(
    setup: impl Fn() -> (StateMachine, F),
    call: impl FnOnce(&mut StateMachine, &F) -> Result<R, RejectResponse>,
) -> RejectResponse {
    let (mut machine, fixture) = setup();
    let (mut twin, _) = setup();
    assert_eq!(
        machine.state_hash(),
        twin.state_hash(),
        "the setup must be deterministic"
    );
    let before = contents(machine.state());
    let err = match call(&mut machine, &fixture) {
        Ok(value) => panic!("expected a reject, got Ok({value:?})"),
        Err(err) => err,
    };
    twin.tick();
    assert_eq!(
        contents(machine.state()),
        before,
        "the refused call changed the state: {err}"
    );
    assert_eq!(
        machine.state_hash(),
        twin.state_hash(),
        "the refused call changed the state hash: {err}"
    );
    err
}

// ---------------------------------------------------------------------------------------------
// Uploaded snapshots
// ---------------------------------------------------------------------------------------------

/// The globals the test canister's module exports: two `i64` (a load checks an upload's
/// globals against them).
pub fn module_globals() -> Vec<SnapshotMetadataGlobal> {
    vec![SnapshotMetadataGlobal::I64(0); 2]
}

/// The snapshot checksum of `spec/checksum.md` recomputed from the snapshot's bytes: memory
/// roots from flat copies of the memories, module and chunk hashes rehashed. Uses none of the
/// memoised hashes, so comparing it with [`CanisterSnapshot::checksum`] can fail.
pub fn checksum_from_bytes(snapshot: &CanisterSnapshot) -> Hash {
    let root = |memory: &canister_snapshots::memory::Memory| {
        memory_root_from_bytes(&memory.read_vec(0, memory.size_bytes()).unwrap())
    };
    let content = snapshot.content();
    snapshot_checksum(&SnapshotDigest {
        wasm_module_hash: sha256(content.wasm_module.bytes()),
        wasm_memory_root: root(&content.wasm_memory),
        stable_memory_root: root(&content.stable_memory),
        exported_globals: &content.exported_globals,
        certified_data: &content.certified_data,
        chunk_hashes: content
            .wasm_chunk_store
            .values()
            .map(|chunk| sha256(chunk))
            .collect(),
    })
}

/// `take_canister_snapshot` with this project's argument type (with `label`).
pub fn take_labelled(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
    replace_snapshot: Option<Vec<u8>>,
    label: Option<&str>,
) -> Result<Snapshot, RejectResponse> {
    let args = LabelledTakeArgs {
        canister_id,
        replace_snapshot: replace_snapshot.map(Into::into),
        uninstall_code: None,
        sender_canister_version: None,
        label: label.map(str::to_string),
    };
    sm.management(Some(sender), "take_canister_snapshot", (args,))
        .map(|(snapshot,)| snapshot)
}

/// Metadata of an uploaded snapshot holding the test canister's module and nothing else: the
/// starting point that each upload test changes one field of.
pub fn upload_metadata_args(canister_id: Principal) -> UploadCanisterSnapshotMetadataArgs {
    UploadCanisterSnapshotMetadataArgs {
        canister_id,
        replace_snapshot: None,
        wasm_module_size: TEST_CANISTER_WASM.len() as u64,
        globals: module_globals(),
        wasm_memory_size: 0,
        stable_memory_size: 0,
        certified_data: vec![],
        global_timer: None,
        on_low_wasm_memory_hook_status: None,
        base_snapshot: None,
    }
}

/// `upload_canister_snapshot_metadata`; returns the new snapshot's id.
pub fn upload_metadata(
    sm: &mut StateMachine,
    sender: Principal,
    args: UploadCanisterSnapshotMetadataArgs,
) -> Result<Vec<u8>, RejectResponse> {
    sm.management(Some(sender), "upload_canister_snapshot_metadata", (args,))
        .map(|(result,): (UploadCanisterSnapshotMetadataResult,)| result.snapshot_id)
}

/// `upload_canister_snapshot_data` of `chunk` at `kind` into snapshot `snapshot_id`.
pub fn upload_data(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
    snapshot_id: &[u8],
    kind: SnapshotDataOffset,
    chunk: Vec<u8>,
) -> Result<(), RejectResponse> {
    let args = UploadCanisterSnapshotDataArgs {
        canister_id,
        snapshot_id: snapshot_id.to_vec(),
        kind,
        chunk,
    };
    sm.management(Some(sender), "upload_canister_snapshot_data", (args,))
}

/// [`upload_metadata_args`] for a module of `module_size` bytes and one Wasm page of heap.
pub fn upload_args(c: &TestCanister, module_size: u64) -> UploadCanisterSnapshotMetadataArgs {
    UploadCanisterSnapshotMetadataArgs {
        wasm_module_size: module_size,
        wasm_memory_size: 65_536,
        ..upload_metadata_args(c.id)
    }
}

/// Uploads `module` as the whole Wasm module of snapshot `snapshot_id`.
#[track_caller]
pub fn upload_module(sm: &mut StateMachine, c: &TestCanister, snapshot_id: &[u8], module: &[u8]) {
    upload_data(
        sm,
        c.sender,
        c.id,
        snapshot_id,
        SnapshotDataOffset::WasmModule { offset: 0 },
        module.to_vec(),
    )
    .unwrap_or_else(|err| panic!("upload_canister_snapshot_data: {err}"));
}

/// The smallest valid `metadata.json` content: an 8-byte module and nothing else.
pub fn minimal_metadata() -> ic_management_canister_types::ReadCanisterSnapshotMetadataResult {
    ic_management_canister_types::ReadCanisterSnapshotMetadataResult {
        source: None,
        taken_at_timestamp: 0,
        wasm_module_size: 8,
        globals: vec![],
        wasm_memory_size: 0,
        stable_memory_size: 0,
        wasm_chunk_store: vec![],
        canister_version: 0,
        certified_data: vec![],
        global_timer: None,
        on_low_wasm_memory_hook_status: None,
    }
}

/// Candid-encodes `args` (a tuple), as `StateMachine::management` does.
pub fn encode<T: ArgumentEncoder>(args: T) -> Vec<u8> {
    candid::encode_args(args).unwrap()
}

/// proptest's standard configuration (every `PROPTEST_*` variable applies) with `default_cases`
/// unless `PROPTEST_CASES` says otherwise, failures persisted next to the test file, and a seed
/// that is always fixed and printed, so that any run can be replayed by setting both variables.
pub fn proptest_config(test: &str, default_cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    if config.failure_persistence.is_some() {
        config.failure_persistence =
            Some(Box::new(FileFailurePersistence::WithSource("regressions")));
    }
    if config.rng_seed == RngSeed::Random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        config.rng_seed = RngSeed::Fixed(nanos ^ u64::from(std::process::id()).rotate_left(32));
    }
    eprintln!(
        "{test}: PROPTEST_RNG_SEED={} PROPTEST_CASES={} (set both to replay this run)",
        config.rng_seed, config.cases
    );
    config
}

//! The wire format of the official interface: every snapshot method's arguments are encoded
//! from Candid text against the types of `ic.did` (`spec/ic-snapshots.did`, a verbatim copy of
//! its snapshot part), sent to the replica, and every reply is decoded with `ic.did`'s result
//! types, as a client generated from `ic.did` (a JS agent, a Motoko canister) would decode it.

mod common;

use candid::types::Type;
use candid::{IDLArgs, Principal, TypeEnv};
use candid_parser::{IDLProg, check_prog, parse_idl_args};
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use ic_management_canister_types::{
    ReadCanisterSnapshotMetadataResult, Snapshot, UploadCanisterSnapshotMetadataResult,
};

use common::*;

const IC_DID: &str = include_str!("../spec/ic-snapshots.did");

/// The parsed interface: its type environment and its service type.
struct Interface {
    env: TypeEnv,
    service: Type,
}

impl Interface {
    fn load() -> Self {
        let prog: IDLProg = IC_DID.parse().expect("spec/ic-snapshots.did parses");
        let mut env = TypeEnv::new();
        let service = check_prog(&mut env, &prog)
            .expect("spec/ic-snapshots.did type-checks")
            .expect("it has a service");
        Interface { env, service }
    }

    fn types(&self, method: &str) -> (Vec<Type>, Vec<Type>) {
        let function = self
            .env
            .get_method(&self.service, method)
            .unwrap_or_else(|e| panic!("{method} is in ic.did: {e}"));
        (function.args.clone(), function.rets.clone())
    }

    /// Encodes `args` (Candid text) with `method`'s argument types, calls the replica, and
    /// decodes the reply with `method`'s result types. Returns the raw reply.
    #[track_caller]
    fn call(&self, sm: &mut StateMachine, sender: Principal, method: &str, args: &str) -> Vec<u8> {
        let (arg_types, ret_types) = self.types(method);
        let args = parse_idl_args(args).unwrap_or_else(|e| panic!("{method} args: {e}"));
        let payload = args
            .to_bytes_with_types(&self.env, &arg_types)
            .unwrap_or_else(|e| panic!("{method}: the arguments do not fit ic.did: {e}"));
        let reply = sm
            .update_call(Principal::management_canister(), sender, method, payload)
            .unwrap_or_else(|e| panic!("{method} was rejected: {e}"));
        IDLArgs::from_bytes_with_types(&reply, &self.env, &ret_types)
            .unwrap_or_else(|e| panic!("{method}: the reply does not decode with ic.did: {e}"));
        reply
    }
}

/// `blob "\ab\cd…"` in Candid text.
fn blob(bytes: &[u8]) -> String {
    let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
    format!("blob \"{escaped}\"")
}

#[test]
fn every_snapshot_method_speaks_ic_did() {
    let ic = Interface::load();
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    let c = install_new(&mut sm, controller());
    populate(&mut sm, &c);
    let me = c.sender;
    let canister = format!("principal \"{}\"", c.id);

    let reply = ic.call(
        &mut sm,
        me,
        "take_canister_snapshot",
        &format!("(record {{ canister_id = {canister}; replace_snapshot = null; uninstall_code = null; sender_canister_version = null }})"),
    );
    let taken = candid::decode_one::<Snapshot>(&reply).unwrap().id;

    ic.call(
        &mut sm,
        me,
        "list_canister_snapshots",
        &format!("(record {{ canister_id = {canister} }})"),
    );
    let reply = ic.call(
        &mut sm,
        me,
        "read_canister_snapshot_metadata",
        &format!(
            "(record {{ canister_id = {canister}; snapshot_id = {} }})",
            blob(&taken)
        ),
    );
    let metadata = candid::decode_one::<ReadCanisterSnapshotMetadataResult>(&reply).unwrap();
    assert_eq!(
        metadata.globals.len(),
        2,
        "the crate type still decodes the reply"
    );
    for kind in [
        "variant { wasm_module = record { offset = 0 : nat64; size = 8 : nat64 } }",
        "variant { wasm_memory = record { offset = 0 : nat64; size = 100 : nat64 } }",
        "variant { stable_memory = record { offset = 9000 : nat64; size = 13 : nat64 } }",
    ] {
        ic.call(
            &mut sm,
            me,
            "read_canister_snapshot_data",
            &format!(
                "(record {{ canister_id = {canister}; snapshot_id = {}; kind = {kind} }})",
                blob(&taken)
            ),
        );
    }

    let reply = ic.call(
        &mut sm,
        me,
        "upload_canister_snapshot_metadata",
        &format!(
            "(record {{ canister_id = {canister}; replace_snapshot = null; wasm_module_size = {} : nat64; \
             globals = vec {{ variant {{ i64 = 1 : int64 }}; variant {{ i64 = 2 : int64 }} }}; \
             wasm_memory_size = 65536 : nat64; stable_memory_size = 0 : nat64; certified_data = blob \"\"; \
             global_timer = opt variant {{ active = 7 : nat64 }}; on_low_wasm_memory_hook_status = null }})",
            TEST_CANISTER_WASM.len()
        ),
    );
    let uploaded = candid::decode_one::<UploadCanisterSnapshotMetadataResult>(&reply)
        .unwrap()
        .snapshot_id;
    for (kind, chunk) in [
        (
            "variant { wasm_module = record { offset = 0 : nat64 } }",
            TEST_CANISTER_WASM,
        ),
        (
            "variant { wasm_memory = record { offset = 10 : nat64 } }",
            b"hello".as_slice(),
        ),
        ("variant { wasm_chunk }", b"a chunk".as_slice()),
    ] {
        ic.call(
            &mut sm,
            me,
            "upload_canister_snapshot_data",
            &format!(
                "(record {{ canister_id = {canister}; snapshot_id = {}; kind = {kind}; chunk = {} }})",
                blob(&uploaded),
                blob(chunk)
            ),
        );
    }
    ic.call(
        &mut sm,
        me,
        "read_canister_snapshot_metadata",
        &format!(
            "(record {{ canister_id = {canister}; snapshot_id = {} }})",
            blob(&uploaded)
        ),
    );
    ic.call(
        &mut sm,
        me,
        "read_canister_snapshot_data",
        &format!(
            "(record {{ canister_id = {canister}; snapshot_id = {}; kind = variant {{ wasm_chunk = record {{ hash = {} }} }} }})",
            blob(&uploaded),
            blob(&canister_snapshots::memory::checksum::sha256(b"a chunk"))
        ),
    );
    ic.call(
        &mut sm,
        me,
        "load_canister_snapshot",
        &format!(
            "(record {{ canister_id = {canister}; snapshot_id = {}; sender_canister_version = null }})",
            blob(&uploaded)
        ),
    );
    assert_eq!(
        c.get_global(&mut sm, 1),
        2,
        "the uploaded globals were loaded"
    );
    ic.call(
        &mut sm,
        me,
        "delete_canister_snapshot",
        &format!(
            "(record {{ canister_id = {canister}; snapshot_id = {} }})",
            blob(&taken)
        ),
    );
}

/// The check above can fail: the crate's `ReadCanisterSnapshotMetadataResult`, which types
/// `source` and each global as `opt`, encodes a reply that ic.did's types refuse.
#[test]
fn an_opt_encoded_metadata_reply_does_not_decode_with_ic_did() {
    let ic = Interface::load();
    let (_, rets) = ic.types("read_canister_snapshot_metadata");
    let crate_reply = ReadCanisterSnapshotMetadataResult {
        source: Some(
            ic_management_canister_types::SnapshotSource::TakenFromCanister(candid::Reserved),
        ),
        taken_at_timestamp: 0,
        wasm_module_size: 8,
        globals: vec![Some(
            ic_management_canister_types::SnapshotMetadataGlobal::I64(1),
        )],
        wasm_memory_size: 0,
        stable_memory_size: 0,
        wasm_chunk_store: vec![],
        canister_version: 0,
        certified_data: vec![],
        global_timer: None,
        on_low_wasm_memory_hook_status: None,
    };
    let bytes = candid::encode_one(crate_reply).unwrap();
    assert!(IDLArgs::from_bytes_with_types(&bytes, &ic.env, &rets).is_err());
}

//! The wire format of the official interface: every method this replica answers has its
//! arguments encoded from Candid text against the types of `ic.did`, is sent to the replica,
//! and has its reply decoded with `ic.did`'s result types, as a client generated from `ic.did`
//! (a JS agent, a Motoko canister, `ic-agent`) would decode it. The snapshot methods' types are
//! `spec/ic-snapshots.did`; the lifecycle methods' ([`LIFECYCLE_DID`]) are the same interface's
//! (dfinity/developer-docs `public/references/ic.did`, commit 0ff5354a493a), written out for
//! the methods and fields this replica serves.

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

/// The lifecycle part of `ic.did`: the types of the management methods other than the
/// snapshot ones that this replica answers. `change.details` is not `opt` there.
const LIFECYCLE_DID: &str = r#"
type canister_id = principal;
type visibility = variant { controllers; public; allowed_viewers : vec principal };
type environment_variable = record { name : text; value : text };
type canister_settings = record {
    controllers : opt vec principal;
    compute_allocation : opt nat;
    memory_allocation : opt nat;
    freezing_threshold : opt nat;
    reserved_cycles_limit : opt nat;
    minimum_incoming_canister_call_cycles : opt nat;
    log_visibility : opt visibility;
    log_memory_limit : opt nat;
    snapshot_visibility : opt visibility;
    status_visibility : opt visibility;
    wasm_memory_limit : opt nat;
    wasm_memory_threshold : opt nat;
    environment_variables : opt vec environment_variable;
};
type definite_canister_settings = record {
    controllers : vec principal;
    compute_allocation : nat;
    memory_allocation : nat;
    freezing_threshold : nat;
    reserved_cycles_limit : nat;
    minimum_incoming_canister_call_cycles : nat;
    log_visibility : visibility;
    log_memory_limit : nat;
    snapshot_visibility : visibility;
    status_visibility : visibility;
    wasm_memory_limit : nat;
    wasm_memory_threshold : nat;
    environment_variables : vec environment_variable;
};
type change_origin = variant {
    from_user : record { user_id : principal };
    from_canister : record { canister_id : canister_id; canister_version : opt nat64 };
};
type change_details = variant {
    creation : record { controllers : vec principal; environment_variables_hash : opt blob };
    code_uninstall;
    code_deployment : record { mode : variant { install; reinstall; upgrade }; module_hash : blob };
    load_snapshot : record {
        from_canister_id : opt principal;
        snapshot_id : blob;
        canister_version : nat64;
        taken_at_timestamp : nat64;
        source : variant { taken_from_canister : reserved; metadata_upload : reserved };
    };
    controllers_change : record { controllers : vec principal };
    rename_canister : record {
        canister_id : canister_id;
        total_num_changes : nat64;
        rename_to : record { canister_id : canister_id; version : nat64; total_num_changes : nat64 };
        requested_by : principal;
    };
};
type change = record {
    timestamp_nanos : nat64;
    canister_version : nat64;
    origin : change_origin;
    details : change_details;
};
type canister_install_mode = variant {
    install;
    reinstall;
    upgrade : opt record {
        skip_pre_upgrade : opt bool;
        wasm_memory_persistence : opt variant { keep; replace };
    };
};
type canister_id_record = record { canister_id : canister_id };
service ic : {
    provisional_create_canister_with_cycles : (record {
        amount : opt nat;
        settings : opt canister_settings;
        specified_id : opt canister_id;
        sender_canister_version : opt nat64;
    }) -> (canister_id_record);
    create_canister : (record {
        settings : opt canister_settings;
        sender_canister_version : opt nat64;
    }) -> (canister_id_record);
    install_code : (record {
        mode : canister_install_mode;
        canister_id : canister_id;
        wasm_module : blob;
        arg : blob;
        sender_canister_version : opt nat64;
    }) -> ();
    uninstall_code : (record { canister_id : canister_id; sender_canister_version : opt nat64 }) -> ();
    update_settings : (record {
        canister_id : canister_id;
        settings : canister_settings;
        sender_canister_version : opt nat64;
    }) -> ();
    start_canister : (canister_id_record) -> ();
    stop_canister : (canister_id_record) -> ();
    canister_status : (canister_id_record) -> (record {
        status : variant { running; stopping; stopped };
        ready_for_migration : bool;
        version : nat64;
        settings : definite_canister_settings;
        module_hash : opt blob;
        memory_size : nat;
        memory_metrics : record {
            wasm_memory_size : nat;
            stable_memory_size : nat;
            global_memory_size : nat;
            wasm_binary_size : nat;
            custom_sections_size : nat;
            canister_history_size : nat;
            wasm_chunk_store_size : nat;
            snapshots_size : nat;
            log_memory_store_size : nat;
        };
        cycles : nat;
        reserved_cycles : nat;
        idle_cycles_burned_per_day : nat;
        query_stats : record {
            num_calls_total : nat;
            num_instructions_total : nat;
            request_payload_bytes_total : nat;
            response_payload_bytes_total : nat;
        };
    });
    canister_info : (record { canister_id : canister_id; num_requested_changes : opt nat64 }) -> (record {
        total_num_changes : nat64;
        recent_changes : vec change;
        module_hash : opt blob;
        controllers : vec principal;
    });
    delete_canister : (canister_id_record) -> ();
}
"#;

impl Interface {
    fn load() -> Self {
        Self::parse(IC_DID)
    }

    fn lifecycle() -> Self {
        Self::parse(LIFECYCLE_DID)
    }

    fn parse(did: &str) -> Self {
        let prog: IDLProg = did.parse().expect("spec/ic-snapshots.did parses");
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

/// Every other method this replica answers, through a canister's whole life: create (both
/// ways), settings, install, a history with every kind of change this replica records (and a
/// scheduled take, which must not break it), status in each state, info, uninstall, delete.
#[test]
fn every_lifecycle_method_speaks_ic_did() {
    use canister_snapshots::management::types::{
        SnapshotScheduleArgs, SnapshotScheduleChange, UpdateSettingsArgs,
    };
    let ic = Interface::lifecycle();
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    });
    let me = controller();
    let settings = "opt record { controllers = null; compute_allocation = null; memory_allocation = null; \
        freezing_threshold = opt (100 : nat); reserved_cycles_limit = null; minimum_incoming_canister_call_cycles = null; \
        log_visibility = null; log_memory_limit = null; snapshot_visibility = null; status_visibility = null; \
        wasm_memory_limit = null; wasm_memory_threshold = null; environment_variables = null }";
    let reply = ic.call(
        &mut sm,
        me,
        "provisional_create_canister_with_cycles",
        &format!("(record {{ amount = opt (1_000_000_000_000_000 : nat); settings = {settings}; specified_id = null; sender_canister_version = null }})"),
    );
    let (id,) =
        candid::decode_args::<(ic_management_canister_types::CanisterIdRecord,)>(&reply).unwrap();
    let canister = format!("principal \"{}\"", id.canister_id);
    ic.call(
        &mut sm,
        me,
        "create_canister",
        "(record { settings = null; sender_canister_version = null })",
    );
    ic.call(
        &mut sm,
        me,
        "install_code",
        &format!(
            "(record {{ mode = variant {{ install }}; canister_id = {canister}; wasm_module = {}; arg = blob \"\"; sender_canister_version = null }})",
            blob(TEST_CANISTER_WASM)
        ),
    );
    let settings_change = settings.trim_start_matches("opt ").replace(
        "controllers = null",
        &format!("controllers = opt vec {{ principal \"{me}\" }}"),
    );
    ic.call(
        &mut sm,
        me,
        "update_settings",
        &format!("(record {{ canister_id = {canister}; settings = {settings_change}; sender_canister_version = null }})"),
    );
    // Changes of every kind this replica records: controllers, a load, an upgrade, and a
    // scheduled take (this project's, reported apart).
    let c = TestCanister {
        id: id.canister_id,
        sender: me,
    };
    populate(&mut sm, &c);
    let snapshot = sm.take_canister_snapshot(c.id, Some(me), None).unwrap();
    sm.load_canister_snapshot(c.id, Some(me), snapshot.id)
        .unwrap();
    install_code(
        &mut sm,
        me,
        c.id,
        ic_management_canister_types::CanisterInstallMode::Upgrade(None),
        TEST_CANISTER_WASM.to_vec(),
    )
    .unwrap();
    let schedule = UpdateSettingsArgs {
        canister_id: c.id,
        settings: Default::default(),
        sender_canister_version: None,
        snapshot_schedule: Some(SnapshotScheduleChange::Set(SnapshotScheduleArgs {
            interval_seconds: 10,
            keep: 1,
            only_when_stopped: None,
        })),
    };
    let () = sm
        .management(Some(me), "update_settings", (schedule,))
        .unwrap();
    sm.advance_time(std::time::Duration::from_secs(10));
    sm.tick();
    assert_eq!(
        sm.state().canisters[&c.id]
            .history
            .scheduled_snapshots()
            .len(),
        1
    );

    let info = format!(
        "(record {{ canister_id = {canister}; num_requested_changes = opt (20 : nat64) }})"
    );
    let reply = ic.call(&mut sm, stranger(), "canister_info", &info);
    let decoded = IDLArgs::from_bytes_with_types(&reply, &ic.env, &ic.types("canister_info").1)
        .unwrap()
        .to_string();
    for kind in [
        "creation",
        "controllers_change",
        "code_deployment",
        "load_snapshot",
    ] {
        assert!(decoded.contains(kind), "{kind} in {decoded}");
    }
    let status = format!("(record {{ canister_id = {canister} }})");
    ic.call(&mut sm, me, "canister_status", &status);
    ic.call(&mut sm, me, "stop_canister", &status);
    ic.call(&mut sm, me, "canister_status", &status);
    ic.call(&mut sm, me, "start_canister", &status);
    ic.call(
        &mut sm,
        me,
        "uninstall_code",
        &format!("(record {{ canister_id = {canister}; sender_canister_version = null }})"),
    );
    let reply = ic.call(&mut sm, stranger(), "canister_info", &info);
    let decoded = IDLArgs::from_bytes_with_types(&reply, &ic.env, &ic.types("canister_info").1)
        .unwrap()
        .to_string();
    assert!(decoded.contains("code_uninstall"), "{decoded}");
    ic.call(&mut sm, me, "stop_canister", &status);
    ic.call(&mut sm, me, "delete_canister", &status);
}

/// The check above can fail: `canister_info`'s history encoded with the IC's Rust types
/// (`details` as `opt`, as this replica sent it to carry scheduled takes) does not decode with
/// `ic.did`.
#[test]
fn an_opt_details_history_does_not_decode_with_ic_did() {
    use ic_management_canister_types::{Change, ChangeDetails, ChangeOrigin, FromUserRecord};
    let ic = Interface::lifecycle();
    let (_, rets) = ic.types("canister_info");
    let reply = ic_management_canister_types::CanisterInfoResult {
        total_num_changes: 1,
        recent_changes: vec![Change {
            timestamp_nanos: 1,
            canister_version: 0,
            origin: ChangeOrigin::FromUser(FromUserRecord {
                user_id: controller(),
            }),
            details: Some(ChangeDetails::CodeUninstall),
        }],
        module_hash: None,
        controllers: vec![controller()],
    };
    let bytes = candid::encode_one(reply).unwrap();
    assert!(IDLArgs::from_bytes_with_types(&bytes, &ic.env, &rets).is_err());
}

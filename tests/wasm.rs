//! Real WebAssembly canisters through the harness: the replica's rules for instrumentation
//! (data segments applied once, start function run once, hidden mutable globals persisted and
//! captured by snapshots), atomicity (a trap, a query, an instruction-limit loop change
//! nothing), memory growth, stable memory, the install/upgrade lifecycle, and every
//! validation refusal.

mod common;

use candid::Principal;
use canister_snapshots::{Config, RejectResponse, StateMachine};
use common::{assert_refused_without_effect, controller};
use ic_error_types::ErrorCode;
use ic_management_canister_types::CanisterInstallMode;

/// A counter canister exercising each rule. `counter` is a mutable global that the module
/// does not export (instrumentation exports it); `starts` counts start-function runs; the heap
/// starts with the data segment "hello".
const COUNTER: &str = r#"
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $reply_append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (memory 1)
  (data (i32.const 0) "hello")
  (global $counter (mut i64) (i64.const 0))
  (global $starts (mut i32) (i32.const 0))
  (global (export "version") i32 (i32.const 1))
  (func $start (global.set $starts (i32.add (global.get $starts) (i32.const 1))))
  (start $start)
  (func $reply_i64 (param $v i64)
    (i64.store (i32.const 1024) (local.get $v))
    (call $reply_append (i32.const 1024) (i32.const 8))
    (call $reply))
  (func $reply_empty (call $reply))
  (func (export "canister_init")
    (global.set $counter (i64.extend_i32_u (call $arg_size))))
  (func (export "canister_update inc")
    (global.set $counter (i64.add (global.get $counter) (i64.const 1)))
    (call $reply_i64 (global.get $counter)))
  (func (export "canister_query get") (call $reply_i64 (global.get $counter)))
  (func (export "canister_query starts")
    (call $reply_i64 (i64.extend_i32_u (global.get $starts))))
  (func (export "canister_query read")
    (call $reply_append (i32.const 0) (i32.const 5))
    (call $reply))
  (func (export "canister_update write")
    (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size))
    (call $reply_empty))
  (func (export "canister_query query_write")
    (i32.store8 (i32.const 0) (i32.const 81))
    (global.set $counter (i64.const 999))
    (call $reply_append (i32.const 0) (i32.const 5))
    (call $reply))
  (func (export "canister_update write_then_trap")
    (i32.store8 (i32.const 0) (i32.const 84))
    (global.set $counter (i64.const 777))
    (drop (call $stable_grow (i64.const 1)))
    (call $trap (i32.const 0) (i32.const 5)))
  (func (export "canister_update write_then_reject")
    (i32.store8 (i32.const 0) (i32.const 82))
    (call $reject (i32.const 0) (i32.const 5)))
  (func (export "canister_update grow")
    (call $reply_i64 (i64.extend_i32_s (memory.grow (i32.const 1)))))
  (func (export "canister_update stable_save")
    (if (i64.eqz (call $stable_size)) (then (drop (call $stable_grow (i64.const 1)))))
    (call $stable_write (i64.const 100) (i64.const 0) (i64.const 5))
    (call $reply_empty))
  (func (export "canister_update stable_load")
    (call $stable_read (i64.const 2048) (i64.const 100) (i64.const 5))
    (call $reply_append (i32.const 2048) (i32.const 5))
    (call $reply))
  (func (export "canister_update spin") (loop $l (br $l)))
  (func (export "canister_pre_upgrade")
    (if (i64.eqz (call $stable_size)) (then (drop (call $stable_grow (i64.const 1)))))
    (i64.store (i32.const 1024) (global.get $counter))
    (call $stable_write (i64.const 0) (i64.const 1024) (i64.const 8)))
  (func (export "canister_post_upgrade")
    (call $stable_read (i64.const 1024) (i64.const 0) (i64.const 8))
    (global.set $counter (i64.load (i32.const 1024))))
)
"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

fn counter_module() -> Vec<u8> {
    wasm(COUNTER)
}

fn new_canister(sm: &mut StateMachine) -> Principal {
    sm.create_canister_with_settings(Some(controller()), None)
}

/// A machine with `config` and the counter canister installed (twin setups are identical).
fn counter_env(config: Config) -> (StateMachine, Principal) {
    let mut sm = StateMachine::with_config(config);
    let id = install(&mut sm, counter_module(), vec![]);
    (sm, id)
}

fn install(sm: &mut StateMachine, module: Vec<u8>, arg: Vec<u8>) -> Principal {
    let id = new_canister(sm);
    sm.install_canister(id, module, arg, Some(controller()));
    id
}

fn user() -> Principal {
    Principal::from_slice(&[7; 29])
}

fn as_u64(reply: Result<Vec<u8>, RejectResponse>) -> u64 {
    u64::from_le_bytes(reply.unwrap().try_into().unwrap())
}

fn update(
    sm: &mut StateMachine,
    id: Principal,
    method: &str,
    arg: &[u8],
) -> Result<Vec<u8>, RejectResponse> {
    sm.update_call(id, user(), method, arg.to_vec())
}

fn query(sm: &StateMachine, id: Principal, method: &str) -> Result<Vec<u8>, RejectResponse> {
    sm.query_call(id, user(), method, vec![])
}

#[test]
fn init_gets_its_argument_and_updates_persist_hidden_globals() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![1, 2, 3]);
    assert_eq!(
        as_u64(query(&sm, id, "get")),
        3,
        "canister_init saw a 3-byte argument"
    );
    assert_eq!(as_u64(update(&mut sm, id, "inc", &[])), 4);
    assert_eq!(as_u64(update(&mut sm, id, "inc", &[])), 5);
    assert_eq!(as_u64(query(&sm, id, "get")), 5);
    // The canister's globals: the exported `version`, then the hidden `counter` and `starts`.
    let globals = &sm.state().canisters[&id]
        .execution_state
        .as_ref()
        .unwrap()
        .exported_globals;
    use canister_snapshots::state::Global;
    assert_eq!(globals, &[Global::I32(1), Global::I64(5), Global::I32(1)]);
}

#[test]
fn data_segments_and_start_function_run_once() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    assert_eq!(query(&sm, id, "read").unwrap(), b"hello");
    update(&mut sm, id, "write", b"HE").unwrap();
    update(&mut sm, id, "inc", &[]).unwrap();
    // Neither the segment nor the start function ran again for these messages.
    assert_eq!(query(&sm, id, "read").unwrap(), b"HEllo");
    assert_eq!(as_u64(query(&sm, id, "starts")), 1);
}

#[test]
fn queries_change_nothing_even_when_they_write() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    let before = sm.state_hash();
    assert_eq!(query(&sm, id, "query_write").unwrap(), b"Qello");
    assert_eq!(sm.state_hash(), before);
    // Called as an update, a query runs replicated: it replies, and its writes are discarded.
    assert_eq!(update(&mut sm, id, "query_write", &[]).unwrap(), b"Qello");
    assert_eq!(query(&sm, id, "read").unwrap(), b"hello");
    assert_eq!(as_u64(query(&sm, id, "get")), 0);
    // An update method cannot be called as a query.
    let err = query(&sm, id, "inc").unwrap_err();
    assert_eq!(err.error_code, ErrorCode::CanisterMethodNotFound, "{err}");
}

#[test]
fn a_trap_rolls_back_heap_globals_and_stable_memory() {
    let err = assert_refused_without_effect(
        || counter_env(Config::default()),
        |sm, id| update(sm, *id, "write_then_trap", &[]),
    );
    assert_eq!(err.error_code, ErrorCode::CanisterCalledTrap, "{err}");
    // The trap message is read from the heap the method had written: the write happened, and
    // was rolled back.
    assert!(err.reject_message.contains("Tello"), "{err}");
}

#[test]
fn a_reject_keeps_the_methods_changes() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    let err = update(&mut sm, id, "write_then_reject", &[]).unwrap_err();
    assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage, "{err}");
    assert!(err.reject_message.contains("Rello"), "{err}");
    assert_eq!(query(&sm, id, "read").unwrap(), b"Rello");
}

#[test]
fn memory_grow_grows_the_heap() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    let heap = |sm: &StateMachine| {
        sm.state().canisters[&id]
            .execution_state
            .as_ref()
            .unwrap()
            .wasm_memory
            .size_bytes()
    };
    assert_eq!(heap(&sm), 65536);
    assert_eq!(
        as_u64(update(&mut sm, id, "grow", &[])),
        1,
        "memory.grow returns the old size"
    );
    assert_eq!(heap(&sm), 2 * 65536);
    assert_eq!(as_u64(update(&mut sm, id, "grow", &[])), 2);
    assert_eq!(heap(&sm), 3 * 65536);
}

#[test]
fn memory_grow_beyond_the_wasm_memory_limit_fails() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    let settings = ic_management_canister_types::CanisterSettings {
        wasm_memory_limit: Some(candid::Nat::from(2 * 65536u64)),
        ..Default::default()
    };
    common::update_settings(&mut sm, controller(), id, settings).unwrap();
    assert_eq!(as_u64(update(&mut sm, id, "grow", &[])), 1);
    assert_eq!(
        as_u64(update(&mut sm, id, "grow", &[])),
        u64::MAX,
        "memory.grow returns -1"
    );
}

#[test]
fn stable_memory_round_trips() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    update(&mut sm, id, "stable_save", &[]).unwrap();
    update(&mut sm, id, "write", b"XXXXX").unwrap();
    assert_eq!(update(&mut sm, id, "stable_load", &[]).unwrap(), b"hello");
    let stable = sm.state().canisters[&id]
        .execution_state
        .as_ref()
        .unwrap()
        .stable_memory
        .size_bytes();
    assert_eq!(stable, 65536);
}

#[test]
fn an_infinite_loop_hits_the_instruction_limit_and_changes_nothing() {
    let config = Config {
        max_instructions_per_message: 1_000_000,
        ..Config::default()
    };
    let err = assert_refused_without_effect(
        || counter_env(config.clone()),
        |sm, id| update(sm, *id, "spin", &[]),
    );
    assert_eq!(
        err.error_code,
        ErrorCode::CanisterInstructionLimitExceeded,
        "{err}"
    );
}

#[test]
fn hidden_globals_are_captured_and_restored_by_a_snapshot() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    update(&mut sm, id, "inc", &[]).unwrap();
    update(&mut sm, id, "write", b"snap!").unwrap();
    let snapshot = sm
        .take_canister_snapshot(id, Some(controller()), None)
        .unwrap();
    update(&mut sm, id, "inc", &[]).unwrap();
    update(&mut sm, id, "inc", &[]).unwrap();
    update(&mut sm, id, "write", b"later").unwrap();
    assert_eq!(as_u64(query(&sm, id, "get")), 3);
    sm.load_canister_snapshot(id, Some(controller()), snapshot.id)
        .unwrap();
    assert_eq!(as_u64(query(&sm, id, "get")), 1);
    assert_eq!(query(&sm, id, "read").unwrap(), b"snap!");
    assert_eq!(
        as_u64(update(&mut sm, id, "inc", &[])),
        2,
        "the restored canister runs"
    );
}

#[test]
fn upgrade_runs_the_hooks_and_keeps_stable_memory() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    for _ in 0..4 {
        update(&mut sm, id, "inc", &[]).unwrap();
    }
    update(&mut sm, id, "write", b"HEAP!").unwrap();
    sm.upgrade_canister(id, counter_module(), vec![], Some(controller()))
        .unwrap();
    // pre_upgrade saved the counter to stable memory, post_upgrade restored it; the heap is
    // fresh (the data segment again) and the start function ran once for the new instance.
    assert_eq!(as_u64(query(&sm, id, "get")), 4);
    assert_eq!(query(&sm, id, "read").unwrap(), b"hello");
    assert_eq!(as_u64(query(&sm, id, "starts")), 1);
}

#[test]
fn reinstall_starts_afresh() {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, counter_module(), vec![]);
    update(&mut sm, id, "inc", &[]).unwrap();
    update(&mut sm, id, "stable_save", &[]).unwrap();
    sm.reinstall_canister(id, counter_module(), vec![9], Some(controller()))
        .unwrap();
    assert_eq!(
        as_u64(query(&sm, id, "get")),
        1,
        "init saw a 1-byte argument"
    );
    let stable = sm.state().canisters[&id]
        .execution_state
        .as_ref()
        .unwrap()
        .stable_memory
        .size_bytes();
    assert_eq!(stable, 0);
}

#[test]
fn a_trap_in_post_upgrade_leaves_the_canister_as_it_was() {
    let buggy = COUNTER.replace(
        "(global.set $counter (i64.load (i32.const 1024))))",
        "(global.set $counter (i64.load (i32.const 1024))) unreachable)",
    );
    let setup = || {
        let (mut sm, id) = counter_env(Config::default());
        update(&mut sm, id, "inc", &[]).unwrap();
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        sm.upgrade_canister(*id, wasm(&buggy), vec![], Some(controller()))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterTrapped, "{err}");
}

#[test]
fn a_trap_in_init_installs_nothing() {
    let trapping = wasm(r#"(module (func (export "canister_init") unreachable))"#);
    let setup = || {
        let mut sm = StateMachine::new();
        let id = new_canister(&mut sm);
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        sm.install_code(
            *id,
            CanisterInstallMode::Install,
            trapping,
            vec![],
            Some(controller()),
        )
    });
    assert_eq!(err.error_code, ErrorCode::CanisterTrapped, "{err}");
}

#[test]
fn a_64_bit_memory_canister_runs() {
    let mut sm = StateMachine::new();
    let module = wasm(
        r#"(module
          (import "ic0" "msg_arg_data_size" (func $size (result i64)))
          (import "ic0" "msg_arg_data_copy" (func $copy (param i64 i64 i64)))
          (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
          (import "ic0" "msg_reply" (func $reply))
          (memory i64 1)
          (data (i64.const 16) "wasm64")
          (func (export "canister_update echo")
            (call $copy (i64.const 100) (i64.const 0) (call $size))
            (call $append (i64.const 16) (i64.const 6))
            (call $append (i64.const 100) (call $size))
            (call $reply)))"#,
    );
    let id = install(&mut sm, module, vec![]);
    assert_eq!(update(&mut sm, id, "echo", b"!").unwrap(), b"wasm64!");
}

#[test]
fn gzipped_modules_install() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&counter_module()).unwrap();
    let gzipped = encoder.finish().unwrap();
    let mut sm = StateMachine::new();
    let id = install(&mut sm, gzipped, vec![]);
    assert_eq!(as_u64(update(&mut sm, id, "inc", &[])), 1);
}

#[test]
fn the_test_canister_module_stays_native() {
    let mut sm = StateMachine::new();
    let id = install(
        &mut sm,
        canister_snapshots::TEST_CANISTER_WASM.to_vec(),
        vec![],
    );
    let arg = candid::encode_args((0u64, serde_bytes::ByteBuf::from(vec![1u8]))).unwrap();
    update(&mut sm, id, "write_heap", &arg).unwrap();
}

/// Installing `wat` (or, if it is not WAT, its bytes) is refused with `CanisterInvalidWasm`
/// and a message containing `expected`, and changes nothing.
#[track_caller]
fn refused(wat: &str, expected: &str) {
    let module = if wat.starts_with("(module") {
        wasm(wat)
    } else {
        wat.as_bytes().to_vec()
    };
    refused_module(module, expected);
}

#[track_caller]
fn refused_module(module: Vec<u8>, expected: &str) {
    let setup = || {
        let mut sm = StateMachine::new();
        let id = new_canister(&mut sm);
        (sm, id)
    };
    let err = assert_refused_without_effect(setup, |sm, id| {
        sm.install_code(
            *id,
            CanisterInstallMode::Install,
            module,
            vec![],
            Some(controller()),
        )
    });
    assert_eq!(err.error_code, ErrorCode::CanisterInvalidWasm, "{err}");
    assert!(
        err.reject_message.contains(expected),
        "expected {expected:?} in {err}"
    );
}

#[test]
fn validation_refusals() {
    refused("not wasm at all", "Wasm module is invalid");
    refused(
        r#"(module (import "env" "f" (func)))"#,
        "imports must come from `ic0`",
    );
    refused(
        r#"(module (import "ic0" "no_such_call" (func)))"#,
        "not a System API function",
    );
    refused(
        r#"(module (import "ic0" "msg_reply" (func (param i32))))"#,
        "its signature is",
    );
    // 64-bit memory: pointers are i64, so the 32-bit signature is refused.
    refused(
        r#"(module (import "ic0" "msg_arg_data_size" (func (result i32))) (memory i64 1))"#,
        "for a module with a 64-bit memory",
    );
    refused(
        r#"(module (import "ic0" "g" (global i32)))"#,
        "a canister may import only functions",
    );
    refused(
        r#"(module (func (export "canister_foo")))"#,
        "the prefix `canister_` is reserved",
    );
    refused(
        r#"(module (func (export "canister_start")))"#,
        "a name the replica reserves",
    );
    refused(
        r#"(module (global (export "__persistent_mutable_global_0") (mut i32) (i32.const 0)))"#,
        "a name the replica reserves",
    );
    refused(
        r#"(module (func $f) (export "canister_update m" (func $f)) (export "canister_query m" (func $f)))"#,
        "exported more than once",
    );
    refused(
        r#"(module (func (export "canister_update m") (param i32)))"#,
        "take no parameters",
    );
    refused(
        r#"(module (func (export "canister_init") (result i32) i32.const 0))"#,
        "take no parameters and return no results",
    );
    refused(
        r#"(module (memory 1) (data (i32.add (i32.const 1) (i32.const 2)) "x"))"#,
        "constant expression required",
    );
    refused(
        r#"(module (@custom "icp:secret x" "data"))"#,
        "neither `icp:public <name>` nor `icp:private <name>`",
    );
    refused(
        r#"(module (global (mut v128) (v128.const i64x2 0 0)))"#,
        "globals must be",
    );
}

fn module_with(count: usize, item: &str) -> String {
    format!(
        "(module {})",
        (0..count)
            .map(|i| item.replace("{i}", &i.to_string()))
            .collect::<String>()
    )
}

#[test]
fn validation_limits() {
    refused(
        &module_with(1_001, "(global i32 (i32.const 0))"),
        "above the limit of 1000",
    );
    refused(
        &module_with(50_001, "(func)"),
        "functions, above the limit of 50000",
    );
    refused(
        &module_with(1_001, r#"(func (export "canister_query m{i}"))"#),
        "methods, above the limit of 1000",
    );
    let long = "x".repeat(10_001);
    refused(
        &format!(
            r#"(module (func (export "canister_query a{long}")) (func (export "canister_query b{long}")))"#
        ),
        "names total 20004 bytes",
    );
    refused(
        &module_with(17, r#"(@custom "icp:public s{i}" "")"#),
        "`icp:` custom sections, above the limit of 16",
    );
}

#[test]
fn an_oversized_gzip_is_refused() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..101 {
        encoder.write_all(&zeros).unwrap();
    }
    refused_module(encoder.finish().unwrap(), "decompresses to more than");
    refused_module(vec![0x1f, 0x8b, 1, 2, 3], "does not decompress");
}

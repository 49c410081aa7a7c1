//! A real Motoko canister (`tests/fixtures/motoko/`, built by moc 4.10 with the pinned `motoko`
//! npm package, `build.sh` checks the bytes) through the harness, with PocketIC's names, and
//! through the command line: the story of the users who asked for snapshots. Install, write
//! data, take a snapshot, upgrade to a buggy version that loses the data, load the snapshot, read
//! the data back; download the snapshot, upload it into a second canister running the same
//! module, load it there and read.
//!
//! Each story runs on both builds: enhanced orthogonal persistence (moc's default: a 64-bit heap
//! that an upgrade keeps, `wasm_memory_persistence = opt keep`) and classic persistence (a
//! 32-bit heap, the variables through stable memory in the upgrade hooks).

mod common;

use std::path::Path;
use std::process::Command;

use candid::{Decode, Encode, Nat, Principal};
use canister_snapshots::memory::checksum::{hex, sha256};
use canister_snapshots::{RejectResponse, StateMachine};
use common::controller;
use ic_error_types::ErrorCode;
use ic_management_canister_types::{CanisterInstallMode, UpgradeFlags, WasmMemoryPersistence};

/// Version 1: a key-value store (`kv_store.mo`).
const KV_STORE: &[u8] = include_bytes!("fixtures/motoko/kv_store.wasm");
/// Version 2, whose `postupgrade` drops every entry (`kv_store_buggy.mo`).
const KV_STORE_BUGGY: &[u8] = include_bytes!("fixtures/motoko/kv_store_buggy.wasm");
const KV_STORE_CLASSIC: &[u8] = include_bytes!("fixtures/motoko/kv_store.classic.wasm");
const KV_STORE_BUGGY_CLASSIC: &[u8] = include_bytes!("fixtures/motoko/kv_store_buggy.classic.wasm");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/motoko");

/// One build of the store: its two versions and how an upgrade must treat the heap.
#[derive(Clone, Copy)]
struct Build {
    v1: &'static [u8],
    buggy: &'static [u8],
    /// Enhanced orthogonal persistence: the heap is the stable state and an upgrade keeps it.
    enhanced: bool,
}

const ENHANCED: Build = Build {
    v1: KV_STORE,
    buggy: KV_STORE_BUGGY,
    enhanced: true,
};
const CLASSIC: Build = Build {
    v1: KV_STORE_CLASSIC,
    buggy: KV_STORE_BUGGY_CLASSIC,
    enhanced: false,
};

impl Build {
    /// The upgrade mode the interface spec requires for this build.
    fn upgrade_mode(self) -> CanisterInstallMode {
        let persistence = self.enhanced.then_some(WasmMemoryPersistence::Keep);
        CanisterInstallMode::Upgrade(Some(UpgradeFlags {
            skip_pre_upgrade: None,
            wasm_memory_persistence: persistence,
        }))
    }
}

fn user() -> Principal {
    Principal::from_slice(&[9; 29])
}

fn put(sm: &mut StateMachine, id: Principal, key: &str, value: &str) {
    let reply = sm
        .update_call(id, user(), "put", Encode!(&key, &value).unwrap())
        .unwrap_or_else(|err| panic!("put({key}): {err}"));
    Decode!(&reply).unwrap();
}

fn get(sm: &StateMachine, id: Principal, key: &str) -> Option<String> {
    let reply = sm
        .query_call(id, user(), "get", Encode!(&key).unwrap())
        .unwrap_or_else(|err| panic!("get({key}): {err}"));
    Decode!(&reply, Option<String>).unwrap()
}

fn query_nat(sm: &StateMachine, id: Principal, method: &str) -> Nat {
    let reply = sm
        .query_call(id, user(), method, Encode!().unwrap())
        .unwrap_or_else(|err| panic!("{method}: {err}"));
    Decode!(&reply, Nat).unwrap()
}

/// The users' records (each message copies the Motoko heap, ~7 MiB, in and out: a few dozen
/// keep the tests short).
fn records() -> Vec<(String, String)> {
    (0..40)
        .map(|i| {
            (
                format!("user-{i:03}"),
                format!("balance {} of account {i}", i * 37),
            )
        })
        .collect()
}

fn install_with_records(sm: &mut StateMachine, build: Build) -> Principal {
    let id = sm.create_canister_with_settings(Some(controller()), None);
    sm.install_canister(
        id,
        build.v1.to_vec(),
        Encode!().unwrap(),
        Some(controller()),
    );
    for (key, value) in records() {
        put(sm, id, &key, &value);
    }
    id
}

#[track_caller]
fn assert_records(sm: &StateMachine, id: Principal) {
    assert_eq!(query_nat(sm, id, "version"), 1u32);
    assert_eq!(query_nat(sm, id, "size"), records().len());
    for (key, value) in records() {
        assert_eq!(get(sm, id, &key).as_deref(), Some(value.as_str()), "{key}");
    }
}

fn upgrade(sm: &mut StateMachine, id: Principal, build: Build, module: &[u8]) {
    sm.install_code(
        id,
        build.upgrade_mode(),
        module.to_vec(),
        Encode!().unwrap(),
        Some(controller()),
    )
    .unwrap_or_else(|err| panic!("upgrade: {err}"));
}

/// The committed modules are the ones `build.sh` checks (its `SHA256SUMS`), and each build
/// is what it says: the enhanced one has a 64-bit memory and the
/// `enhanced-orthogonal-persistence` section, the classic one a 32-bit memory and no such
/// section.
#[test]
fn the_fixtures_are_the_built_modules() {
    let sums = std::fs::read_to_string(Path::new(FIXTURES).join("SHA256SUMS")).unwrap();
    let modules = [
        ("kv_store.wasm", KV_STORE),
        ("kv_store_buggy.wasm", KV_STORE_BUGGY),
        ("kv_store.classic.wasm", KV_STORE_CLASSIC),
        ("kv_store_buggy.classic.wasm", KV_STORE_BUGGY_CLASSIC),
    ];
    for (name, bytes) in modules {
        let line = format!("{}  {name}", hex(&sha256(bytes)));
        assert!(
            sums.lines().any(|l| l == line),
            "{name}: {line} not in {sums}"
        );
    }
    assert_eq!(sums.lines().count(), modules.len());
    for (module, memory64) in [(KV_STORE, true), (KV_STORE_CLASSIC, false)] {
        let mut memories = Vec::new();
        let mut eop = false;
        for payload in wasmparser::Parser::new(0).parse_all(module) {
            match payload.unwrap() {
                wasmparser::Payload::MemorySection(reader) => {
                    memories.extend(reader.into_iter().map(|m| m.unwrap().memory64));
                }
                wasmparser::Payload::CustomSection(section) => {
                    eop |= section.name().ends_with("enhanced-orthogonal-persistence");
                }
                _ => {}
            }
        }
        assert_eq!(memories, [memory64]);
        assert_eq!(eop, memory64);
    }
}

/// The users' story on one build: the buggy upgrade loses the data, the snapshot brings it
/// back, module included.
fn snapshot_undoes_a_bad_upgrade(build: Build) {
    let mut sm = StateMachine::new();
    let id = install_with_records(&mut sm, build);
    assert_records(&sm, id);
    let snapshot = sm
        .take_canister_snapshot(id, Some(controller()), None)
        .unwrap();

    upgrade(&mut sm, id, build, build.buggy);
    assert_eq!(query_nat(&sm, id, "version"), 2u32);
    assert_eq!(
        query_nat(&sm, id, "size"),
        0u32,
        "the bug dropped the entries"
    );
    assert_eq!(get(&sm, id, "user-007"), None);

    sm.load_canister_snapshot(id, Some(controller()), snapshot.id)
        .unwrap();
    assert_records(&sm, id);
    // The restored canister runs on: writes go on from the restored heap.
    put(&mut sm, id, "user-200", "new after the restore");
    assert_eq!(query_nat(&sm, id, "size"), records().len() + 1);
    assert_eq!(
        get(&sm, id, "user-200").as_deref(),
        Some("new after the restore")
    );
}

#[test]
fn a_snapshot_undoes_a_bad_upgrade_enhanced_persistence() {
    snapshot_undoes_a_bad_upgrade(ENHANCED);
}

#[test]
fn a_snapshot_undoes_a_bad_upgrade_classic_persistence() {
    snapshot_undoes_a_bad_upgrade(CLASSIC);
}

/// A good upgrade (the same version) keeps the data on both builds: the persistence the
/// upgrade mode promises is real, so the buggy version's loss is its bug, not the replica's.
#[test]
fn an_upgrade_to_the_same_version_keeps_the_data() {
    for build in [ENHANCED, CLASSIC] {
        let mut sm = StateMachine::new();
        let id = install_with_records(&mut sm, build);
        upgrade(&mut sm, id, build, build.v1);
        assert_records(&sm, id);
    }
}

/// Download the snapshot, upload it into a second canister running the same module, load it
/// there: the second canister reads the first one's records, and the first is untouched.
fn snapshot_moves_to_a_second_canister(build: Build) {
    let mut sm = StateMachine::new();
    let first = install_with_records(&mut sm, build);
    let snapshot = sm
        .take_canister_snapshot(first, Some(controller()), None)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let download = dir.path().join("snapshot");
    sm.download_canister_snapshot(first, Some(controller()), snapshot.id, &download)
        .unwrap();

    let second = sm.create_canister_with_settings(Some(controller()), None);
    sm.install_canister(
        second,
        build.v1.to_vec(),
        Encode!().unwrap(),
        Some(controller()),
    );
    put(
        &mut sm,
        second,
        "only-here",
        "the second canister's own entry",
    );
    let uploaded = sm
        .upload_canister_snapshot(second, Some(controller()), &download, None)
        .unwrap();
    sm.load_canister_snapshot(second, Some(controller()), uploaded)
        .unwrap();
    assert_records(&sm, second);
    assert_eq!(get(&sm, second, "only-here"), None);
    put(&mut sm, second, "user-000", "changed in the second");
    assert_eq!(
        get(&sm, second, "user-000").as_deref(),
        Some("changed in the second")
    );
    assert_records(&sm, first);
}

#[test]
fn a_downloaded_snapshot_loads_into_a_second_canister_enhanced_persistence() {
    snapshot_moves_to_a_second_canister(ENHANCED);
}

#[test]
fn a_downloaded_snapshot_loads_into_a_second_canister_classic_persistence() {
    snapshot_moves_to_a_second_canister(CLASSIC);
}

/// Motoko imports inter-canister calls (`call_new`, `call_perform`, ...): they link, so the
/// module installs, and the store's methods never call them. An unknown method is refused
/// with the IC's code, and an update method sent as a query is refused.
#[test]
fn motoko_methods_and_refusals() {
    let mut sm = StateMachine::new();
    let id = install_with_records(&mut sm, ENHANCED);
    let missing: RejectResponse = sm
        .update_call(id, user(), "no_such_method", Encode!().unwrap())
        .unwrap_err();
    assert_eq!(
        missing.error_code,
        ErrorCode::CanisterMethodNotFound,
        "{missing}"
    );
    let not_query = sm
        .query_call(id, user(), "put", Encode!(&"k", &"v").unwrap())
        .unwrap_err();
    assert!(not_query.to_string().contains("put"), "{not_query}");
    assert_eq!(get(&sm, id, "k"), None);
}

fn cli(state_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_canister-snapshots"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The same story at the shell, every step a new process on a state directory: install the
/// `.wasm`, put, snapshot, upgrade to the buggy version (`--wasm-memory-persistence keep`),
/// load, get; then download, upload into a second canister, load and get there.
#[test]
fn the_story_at_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();
    let v1 = format!("{FIXTURES}/kv_store.wasm");
    let buggy = format!("{FIXTURES}/kv_store_buggy.wasm");

    let canister = cli(s, &["canister", "create"]);
    cli(s, &["canister", "install", &canister, "--wasm", &v1]);
    cli(
        s,
        &[
            "canister",
            "call",
            &canister,
            "put",
            "(\"alice\", \"42 ICP\")",
        ],
    );
    let get = [
        "canister",
        "call",
        &canister,
        "get",
        "(\"alice\")",
        "--query",
    ];
    assert_eq!(cli(s, &get), "(opt \"42 ICP\")");
    cli(s, &["canister", "stop", &canister]);
    let snapshot = cli(s, &["canister", "snapshot", "create", &canister]);
    cli(s, &["canister", "start", &canister]);

    // A good upgrade first: with `keep` the heap, and so the entry, survives.
    let upgrade = |wasm: &str| {
        cli(
            s,
            &[
                "canister",
                "install",
                &canister,
                "--mode",
                "upgrade",
                "--wasm",
                wasm,
                "--wasm-memory-persistence",
                "keep",
            ],
        )
    };
    upgrade(&v1);
    assert_eq!(cli(s, &get), "(opt \"42 ICP\")", "kept by the upgrade");
    upgrade(&buggy);
    assert_eq!(cli(s, &get), "(null)", "the buggy upgrade lost the entry");

    cli(s, &["canister", "stop", &canister]);
    cli(s, &["canister", "snapshot", "load", &canister, &snapshot]);
    cli(s, &["canister", "start", &canister]);
    assert_eq!(cli(s, &get), "(opt \"42 ICP\")");

    let dir = work.path().join("download");
    let dir = dir.to_str().unwrap();
    cli(
        s,
        &[
            "canister", "snapshot", "download", &canister, &snapshot, "--dir", dir,
        ],
    );
    let second = cli(s, &["canister", "create"]);
    cli(s, &["canister", "install", &second, "--wasm", &v1]);
    let uploaded = cli(
        s,
        &["canister", "snapshot", "upload", &second, "--dir", dir],
    );
    cli(s, &["canister", "stop", &second]);
    cli(s, &["canister", "snapshot", "load", &second, &uploaded]);
    cli(s, &["canister", "start", &second]);
    let get_second = ["canister", "call", &second, "get", "(\"alice\")", "--query"];
    assert_eq!(cli(s, &get_second), "(opt \"42 ICP\")");
}

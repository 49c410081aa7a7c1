//! The client-side paths that lost data (issue 14, items 1-3) and hostile snapshot directories
//! (issue 9, item 5): each test reproduces the loss as it happened and checks it no longer does.
//!
//! - tools never delete what they did not create (the demo's `--download-dir`, downloads into
//!   occupied directories);
//! - verify before destroy (an upload deletes the snapshot it supersedes only once verified;
//!   a duplicated chunk hash no longer makes a directory impossible to upload);
//! - non-finite float globals leave the replica and come back bit for bit;
//! - every file read from a directory is size-checked first, and no symbolic link is followed.

mod common;

use std::path::Path;
use std::process::Command;

use candid::Principal;
use canister_snapshots::client::{ManagementClient, RejectResponse};
use canister_snapshots::management::types::{
    UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
};
use canister_snapshots::memory::checksum::{hex, sha256};
use canister_snapshots::transfer::{
    self, MAX_CHECKSUM_JSON_BYTES, MAX_CHUNK_FILE_BYTES, MAX_METADATA_JSON_BYTES,
    MAX_PROGRESS_JSON_BYTES, MAX_WASM_MODULE_FILE_BYTES, Replaced, SnapshotDir, TransferError,
    TransferOptions,
};
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use common::{TestCanister, contents, install_new, minimal_metadata};
use ic_management_canister_types::{
    CanisterTimer, ChunkHash, OnLowWasmMemoryHookStatus, ReadCanisterSnapshotMetadataResult,
    SnapshotDataOffset, SnapshotMetadataGlobal, SnapshotSource,
    UploadCanisterSnapshotMetadataResult,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn machine(quota: usize) -> (StateMachine, TestCanister) {
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: quota,
        ..Config::default()
    });
    let canister = install_new(&mut sm, common::controller());
    (sm, canister)
}

/// A machine with a populated canister, one snapshot of it, and that snapshot downloaded into
/// `dir`.
fn downloaded(quota: usize, dir: &Path) -> (StateMachine, TestCanister, Vec<u8>) {
    let (mut sm, canister) = machine(quota);
    common::populate(&mut sm, &canister);
    canister.fill(&mut sm, true, 70_000, 3 * MIB, 0x5A);
    let id = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    sm.download_canister_snapshot(canister.id, Some(canister.sender), id.clone(), dir)
        .unwrap();
    (sm, canister, id)
}

fn snapshot_ids(sm: &mut StateMachine, canister: &TestCanister) -> Vec<Vec<u8>> {
    sm.list_canister_snapshots(canister.id, Some(canister.sender))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn cli(args: &[&str], tmpdir: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_canister-snapshots"));
    command.args(args);
    if let Some(tmpdir) = tmpdir {
        command.env("TMPDIR", tmpdir);
    }
    let out = command.output().expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// 1. Tools never delete what they did not create
// ---------------------------------------------------------------------------------------------

/// `demo --download-dir DIR` used to `remove_dir_all(DIR)` first: whatever DIR held was gone.
#[test]
fn the_demo_keeps_what_its_download_dir_held() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-backups");
    std::fs::create_dir_all(dir.join("snapshot")).unwrap();
    std::fs::write(dir.join("precious.txt"), b"years of work").unwrap();
    std::fs::write(dir.join("snapshot").join("old.bin"), b"an older backup").unwrap();

    let args = [
        "demo",
        "--heap-mib",
        "1",
        "--stable-mib",
        "1",
        "--download-dir",
    ];
    let (ok, out) = cli(&[&args[..], &[dir.to_str().unwrap()]].concat(), None);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(dir.join("precious.txt")).unwrap(),
        b"years of work"
    );
    assert_eq!(
        std::fs::read(dir.join("snapshot").join("old.bin")).unwrap(),
        b"an older backup"
    );
    // One new directory of the demo's own, holding both directories, named in the output.
    let new: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| n != "precious.txt" && n != "snapshot")
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let own = dir.join(&new[0]);
    assert_eq!(names(&own), ["repaired", "snapshot"]);
    assert!(out.contains(own.to_str().unwrap()), "{out}");
    SnapshotDir::new(own.join("snapshot")).validate().unwrap();
}

/// The demo's edit-and-upload step used to delete the copy's `checksum.json` so that the edit
/// would upload. Now it deletes nothing: the repaired copy holds every file of the download,
/// and the upload reports the edited file.
#[test]
fn the_demo_edits_and_uploads_without_deleting_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "demo",
        "--heap-mib",
        "1",
        "--stable-mib",
        "1",
        "--download-dir",
    ];
    let (ok, out) = cli(&[&args[..], &[tmp.path().to_str().unwrap()]].concat(), None);
    assert!(ok, "{out}");
    let own = tmp.path().join(&names(tmp.path())[0]);
    assert_eq!(names(&own.join("repaired")), names(&own.join("snapshot")));
    assert!(own.join("repaired").join("checksum.json").exists());
    assert!(
        out.contains("checksum.json: changed since the download: stable_memory.bin"),
        "{out}"
    );
}

/// Without `--download-dir`, the demo removes its own temporary directory and nothing else.
#[test]
fn the_demo_removes_only_its_own_temporary_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_like = tmp.path().join("canister-snapshots-demo-1");
    std::fs::create_dir(&pid_like).unwrap();
    std::fs::write(pid_like.join("someone-elses.txt"), b"keep").unwrap();
    let before = names(tmp.path());
    let (ok, out) = cli(
        &["demo", "--heap-mib", "1", "--stable-mib", "1"],
        Some(tmp.path()),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(tmp.path().to_str().unwrap()),
        "ran in TMPDIR: {out}"
    );
    assert_eq!(names(tmp.path()), before);
    assert_eq!(
        std::fs::read(pid_like.join("someone-elses.txt")).unwrap(),
        b"keep"
    );
}

/// A download into a directory holding something else used to write its files among them (and
/// the demo then removed it all); now it is refused and the directory is left as it was.
#[test]
fn a_download_into_a_foreign_non_empty_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sm, canister, id) = downloaded(1, &tmp.path().join("first"));
    let dir = tmp.path().join("documents");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    for force in [false, true] {
        let options = TransferOptions {
            force,
            ..TransferOptions::default()
        };
        let err = sm
            .download_canister_snapshot_with(
                canister.id,
                Some(canister.sender),
                id.clone(),
                &dir,
                &options,
            )
            .unwrap_err();
        assert!(
            matches!(&err, TransferError::ForeignDirectory { entry, .. } if entry == "notes.txt"),
            "{err}"
        );
        assert!(err.to_string().contains("new or empty directory"), "{err}");
        assert_eq!(names(&dir), ["notes.txt"], "nothing written");
    }
    // An empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    sm.download_canister_snapshot(canister.id, Some(canister.sender), id, &empty)
        .unwrap();
}

/// A complete snapshot is overwritten only with `force`; then the directory holds the new
/// snapshot exactly, and files of other tools in it stay.
#[test]
fn overwriting_a_complete_snapshot_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup");
    let (mut sm, canister, first) = downloaded(2, &dir);
    std::fs::write(dir.join(".lock"), b"").unwrap();
    canister.fill(&mut sm, false, 0, 5000, 0x77);
    let second = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    let err = sm
        .download_canister_snapshot(canister.id, Some(canister.sender), second.clone(), &dir)
        .unwrap_err();
    assert!(
        matches!(err, TransferError::DirectoryNotEmpty { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    let record = SnapshotDir::new(&dir).read_checksum_record().unwrap();
    assert_eq!(record.unwrap().snapshot_id, hex(&first), "untouched");

    let force = TransferOptions {
        force: true,
        ..TransferOptions::default()
    };
    sm.download_canister_snapshot_with(
        canister.id,
        Some(canister.sender),
        second.clone(),
        &dir,
        &force,
    )
    .unwrap();
    let record = SnapshotDir::new(&dir).read_checksum_record().unwrap();
    assert_eq!(record.unwrap().snapshot_id, hex(&second));
    let listed = sm
        .list_canister_snapshots_with_info(canister.id, Some(canister.sender))
        .unwrap();
    let checksum = SnapshotDir::new(&dir).compute_checksum().unwrap();
    assert_eq!(listed[1].checksum, checksum.to_vec());
    assert!(dir.join(".lock").exists(), "another tool's file stays");
}

// ---------------------------------------------------------------------------------------------
// 2. Verify before destroy
// ---------------------------------------------------------------------------------------------

/// A client that flips one byte of the first Wasm-memory slice it uploads: the replica's
/// checksum of the upload then differs from the directory's.
struct CorruptingClient<'a> {
    sm: &'a mut StateMachine,
    corrupted: bool,
}

impl ManagementClient for CorruptingClient<'_> {
    fn update_call(
        &mut self,
        sender: Principal,
        method: &str,
        mut payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        if method == "upload_canister_snapshot_data" && !self.corrupted {
            let mut args: UploadCanisterSnapshotDataArgs = candid::decode_one(&payload).unwrap();
            if matches!(args.kind, SnapshotDataOffset::WasmMemory { .. }) {
                args.chunk[0] ^= 0xFF;
                self.corrupted = true;
                payload = candid::encode_one(&args).unwrap();
            }
        }
        ManagementClient::update_call(self.sm, sender, method, payload)
    }
}

/// An upload that replaces S and fails verification used to have destroyed S already (the
/// replacement takes effect at metadata time). Now S survives, loadable, and the bad upload is
/// deleted.
#[test]
fn an_upload_that_fails_verification_keeps_the_snapshot_it_was_to_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup");
    let (mut sm, canister, s) = downloaded(2, &dir);
    let mut client = CorruptingClient {
        sm: &mut sm,
        corrupted: false,
    };
    let err = transfer::upload_canister_snapshot(
        &mut client,
        canister.id,
        canister.sender,
        &dir,
        Some(s.clone()),
        None,
        &TransferOptions::default(),
    )
    .unwrap_err();
    assert!(client.corrupted, "the double did corrupt the upload");
    assert!(
        matches!(err, TransferError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("is kept"), "{err}");
    assert_eq!(snapshot_ids(&mut sm, &canister), vec![s.clone()]);
    canister.fill(&mut sm, true, 0, 100, 0xEE);
    sm.load_canister_snapshot(canister.id, Some(canister.sender), s)
        .unwrap();
    assert_eq!(canister.read(&mut sm, true, 9_000, 13), b"stable marker");
    assert!(!dir.join(".upload_progress.json").exists());
}

/// With room in the quota, `replace_snapshot` means "supersedes": a new snapshot, verified,
/// then the old one deleted.
#[test]
fn a_verified_upload_deletes_the_snapshot_it_supersedes_afterwards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup");
    let (mut sm, canister, s) = downloaded(2, &dir);
    let report = sm
        .upload_canister_snapshot_with(
            canister.id,
            Some(canister.sender),
            &dir,
            Some(s.clone()),
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    assert_eq!(report.replaced, Replaced::DeletedAfterVerification(s));
    assert_eq!(snapshot_ids(&mut sm, &canister), vec![report.snapshot_id]);
}

/// A full quota would make an upload destroy a snapshot before verifying: without the caller
/// naming it, the upload refuses, says why, and changes nothing.
#[test]
fn a_full_quota_without_consent_is_refused_naming_the_risk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup");
    let (mut sm, canister, s) = downloaded(1, &dir);
    let before = contents(sm.state());
    let err = sm
        .upload_canister_snapshot(canister.id, Some(canister.sender), &dir, None)
        .unwrap_err();
    assert!(
        matches!(err, TransferError::QuotaForcesReplace { .. }),
        "{err}"
    );
    let message = err.to_string();
    for needle in [&hex(&s)[..], "before the upload is verified", "--replace"] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert_eq!(contents(sm.state()), before);
    assert!(!dir.join(".upload_progress.json").exists());

    // Named explicitly, it is replaced, and the report says when.
    let report = sm
        .upload_canister_snapshot_with(
            canister.id,
            Some(canister.sender),
            &dir,
            Some(s.clone()),
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    assert_eq!(report.replaced, Replaced::ReplacedAtStart(s));
    assert_eq!(snapshot_ids(&mut sm, &canister), vec![report.snapshot_id]);
}

/// Naming a snapshot that does not exist is refused before anything is created.
#[test]
fn replacing_an_unknown_snapshot_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup");
    let (mut sm, canister, s) = downloaded(2, &dir);
    let mut unknown = s.clone();
    unknown[7] ^= 0x40;
    let before = contents(sm.state());
    let err = sm
        .upload_canister_snapshot(canister.id, Some(canister.sender), &dir, Some(unknown))
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Reject { reject, .. }
            if reject.error_code == ic_error_types::ErrorCode::CanisterSnapshotNotFound),
        "{err}"
    );
    assert_eq!(contents(sm.state()), before);
}

/// `snapshot upload --replace ID`: the command line's consent, and what it did with it.
#[test]
fn the_command_line_upload_says_what_it_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    downloaded(1, &a);
    downloaded(1, &b);
    std::fs::remove_file(b.join("checksum.json")).unwrap();
    let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (ok, out) = cli(&["snapshot", "upload", b_str, "--base", a_str], None);
    assert!(ok, "{out}");
    assert!(!out.contains("deleted snapshot"), "{out}");
    let base_id = out
        .split("as snapshot ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let args = ["snapshot", "upload", b_str, "--base", a_str, "--replace"];
    let (ok, out) = cli(&[&args[..], &[base_id.as_str()]].concat(), None);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "deleted snapshot {base_id}, which it supersedes, after the upload was verified"
        )),
        "{out}"
    );
    let (ok, out) = cli(&[&args[..], &["zz"]].concat(), None);
    assert!(!ok && out.contains("not a hex snapshot id"), "{out}");
}

/// A directory written by another tool, with a chunk listed twice in metadata.json.
fn write_dir_with_chunks(dir: &Path, chunks: &[&[u8]], listed: &[usize]) {
    std::fs::create_dir_all(dir.join("wasm_chunk_store")).unwrap();
    for chunk in chunks {
        let name = format!("{}.bin", hex(&sha256(chunk)));
        std::fs::write(dir.join("wasm_chunk_store").join(name), chunk).unwrap();
    }
    let metadata = ReadCanisterSnapshotMetadataResult {
        source: Some(SnapshotSource::TakenFromCanister(candid::Reserved)),
        taken_at_timestamp: 1,
        wasm_module_size: TEST_CANISTER_WASM.len() as u64,
        globals: vec![
            Some(SnapshotMetadataGlobal::I64(1)),
            Some(SnapshotMetadataGlobal::I64(2)),
        ],
        wasm_memory_size: 65536,
        stable_memory_size: 0,
        wasm_chunk_store: listed
            .iter()
            .map(|&i| ChunkHash {
                hash: sha256(chunks[i]).to_vec(),
            })
            .collect(),
        canister_version: 1,
        certified_data: vec![],
        global_timer: Some(CanisterTimer::Inactive),
        on_low_wasm_memory_hook_status: Some(OnLowWasmMemoryHookStatus::ConditionNotSatisfied),
    };
    std::fs::write(
        dir.join("metadata.json"),
        serde_json::to_vec(&metadata).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("wasm_module.bin"), TEST_CANISTER_WASM).unwrap();
    std::fs::write(dir.join("wasm_memory.bin"), vec![3u8; 65536]).unwrap();
    std::fs::write(dir.join("stable_memory.bin"), b"").unwrap();
}

/// The local checksum counted a duplicated chunk hash twice, the replica's chunk store (a set)
/// once: such a directory could never be uploaded.
#[test]
fn a_chunk_listed_twice_is_uploaded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sm, canister) = machine(1);
    let (a, b): (&[u8], &[u8]) = (b"chunk a", b"chunk b");
    write_dir_with_chunks(tmp.path(), &[a, b], &[1, 0, 1]);
    let report = sm
        .upload_canister_snapshot_with(
            canister.id,
            Some(canister.sender),
            tmp.path(),
            None,
            None,
            &TransferOptions::default(),
        )
        .unwrap();
    // 1 module slice, 1 memory slice (stable memory is empty), 2 chunks.
    assert_eq!(report.messages, 4);
    let on_chain = sm
        .read_canister_snapshot_metadata(canister.id, Some(canister.sender), report.snapshot_id)
        .unwrap();
    assert_eq!(on_chain.wasm_chunk_store.len(), 2);
    assert_eq!(on_chain.checksum, report.checksum.to_vec());
}

// ---------------------------------------------------------------------------------------------
// 3. Non-finite globals
// ---------------------------------------------------------------------------------------------

fn f32_global(bits: u32) -> SnapshotMetadataGlobal {
    SnapshotMetadataGlobal::F32(f32::from_bits(bits))
}

fn f64_global(bits: u64) -> SnapshotMetadataGlobal {
    SnapshotMetadataGlobal::F64(f64::from_bits(bits))
}

/// The exact bits of a global (a float's bit pattern, not its value: NaN != NaN).
fn bits(global: &SnapshotMetadataGlobal) -> (u8, u128) {
    match global {
        SnapshotMetadataGlobal::I32(v) => (0, *v as u32 as u128),
        SnapshotMetadataGlobal::I64(v) => (1, *v as u64 as u128),
        SnapshotMetadataGlobal::F32(v) => (2, v.to_bits() as u128),
        SnapshotMetadataGlobal::F64(v) => (3, v.to_bits() as u128),
        SnapshotMetadataGlobal::V128(n) => (4, u128::try_from(n.0.clone()).unwrap()),
    }
}

fn all_bits(globals: &[Option<SnapshotMetadataGlobal>]) -> Vec<(u8, u128)> {
    globals.iter().map(|g| bits(g.as_ref().unwrap())).collect()
}

/// Creates a snapshot with `globals` on the replica through `upload_canister_snapshot_metadata`.
fn snapshot_with_globals(
    sm: &mut StateMachine,
    canister: &TestCanister,
    globals: Vec<SnapshotMetadataGlobal>,
) -> Vec<u8> {
    let args = UploadCanisterSnapshotMetadataArgs {
        canister_id: canister.id,
        replace_snapshot: None,
        wasm_module_size: 8,
        globals,
        wasm_memory_size: 65536,
        stable_memory_size: 0,
        certified_data: vec![],
        global_timer: None,
        on_low_wasm_memory_hook_status: None,
        base_snapshot: None,
    };
    let (result,): (UploadCanisterSnapshotMetadataResult,) = sm
        .management(
            Some(canister.sender),
            "upload_canister_snapshot_metadata",
            (args,),
        )
        .unwrap();
    result.snapshot_id
}

/// serde_json writes NaN and infinities as `null`, so such a snapshot failed at the very end of
/// its download, and NaN payloads would have been lost even if it parsed. Now every global
/// comes back bit for bit: download, upload, read metadata.
#[test]
fn non_finite_globals_round_trip_bit_exactly() {
    let (mut sm, canister) = machine(3);
    let globals = vec![
        f32_global(0x7fc0_0001),           // quiet NaN with a payload
        f32_global(0xffc0_0000),           // negative quiet NaN
        f32_global(0x7f80_0001),           // signalling NaN
        f32_global(0x7f80_0000),           // +inf
        f32_global(0xff80_0000),           // -inf
        f64_global(0x7ff8_0000_0000_0123), // quiet NaN with a payload
        f64_global(0x7ff0_0000_0000_0001), // signalling NaN
        f64_global(0xfff0_0000_0000_0000), // -inf
        f64_global(0x8000_0000_0000_0000), // -0.0
        f64_global(1),                     // the smallest subnormal
        f32_global(1.1f32.to_bits()),
        SnapshotMetadataGlobal::I64(-7),
        SnapshotMetadataGlobal::V128(candid::Nat::from(u128::MAX)),
    ];
    let expected: Vec<(u8, u128)> = globals.iter().map(bits).collect();
    let id = snapshot_with_globals(&mut sm, &canister, globals);
    let tmp = tempfile::tempdir().unwrap();
    sm.download_canister_snapshot(canister.id, Some(canister.sender), id, tmp.path())
        .unwrap();
    let local = SnapshotDir::new(tmp.path()).read_metadata().unwrap();
    assert_eq!(all_bits(&local.globals), expected);

    let uploaded = sm
        .upload_canister_snapshot(canister.id, Some(canister.sender), tmp.path(), None)
        .unwrap();
    let on_chain = sm
        .read_canister_snapshot_metadata(canister.id, Some(canister.sender), uploaded)
        .unwrap();
    // The replica's reply types each global as ic.did does: not opt.
    let on_chain: Vec<(u8, u128)> = on_chain.globals.iter().map(bits).collect();
    assert_eq!(on_chain, expected);

    // dfx's reader (the crate type) ignores the extension field; where the file holds `null`
    // it fails, as it would on the file serde_json alone writes, rather than take a wrong value.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("metadata.json")).unwrap()).unwrap();
    assert_eq!(json["globals"][0], serde_json::json!({"f32": null}));
    assert_eq!(
        json[transfer::EXACT_FLOAT_GLOBALS][0],
        serde_json::json!({"index": 0, "type": "f32", "bits": "7fc00001"})
    );
}

/// `snapshot diff` compared globals by their printed form, in which every NaN is "NaN".
#[test]
fn diff_tells_nan_payloads_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, bits) in [(&a, 0x7ff8_0000_0000_0001), (&b, 0x7ff8_0000_0000_0002)] {
        write_dir_with_chunks(dir, &[], &[]);
        let snapshot_dir = SnapshotDir::new(dir);
        let mut metadata = snapshot_dir.read_metadata().unwrap();
        metadata.globals[0] = Some(f64_global(bits));
        snapshot_dir.write_metadata(&metadata).unwrap();
    }
    assert!(transfer::diff(&a, &b).unwrap().globals_differ);
    assert!(!transfer::diff(&a, &a).unwrap().globals_differ);
}

/// For a snapshot whose globals are all finite, metadata.json is byte for byte what serde_json
/// writes for the crate type (what dfx writes).
#[test]
fn finite_metadata_is_written_exactly_as_dfx_writes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sm, canister, id) = downloaded(1, tmp.path());
    let args = ic_management_canister_types::ReadCanisterSnapshotMetadataArgs {
        canister_id: canister.id,
        snapshot_id: id,
    };
    let (metadata,): (ReadCanisterSnapshotMetadataResult,) = sm
        .management(
            Some(canister.sender),
            "read_canister_snapshot_metadata",
            (args,),
        )
        .unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("metadata.json")).unwrap(),
        serde_json::to_vec_pretty(&metadata).unwrap()
    );
}

/// The extension is checked: it stands only for a `null` global of its type, once, with the
/// bits of a non-finite value.
#[test]
fn a_malformed_exact_float_globals_field_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SnapshotDir::new(tmp.path());
    let mut metadata = minimal_metadata();
    metadata.globals = vec![Some(f64_global(0x7ff8_0000_0000_0001)), Some(f32_global(0))];
    dir.write_metadata(&metadata).unwrap();
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.metadata_path()).unwrap()).unwrap();
    let field = transfer::EXACT_FLOAT_GLOBALS;
    for (edit, needle) in [
        (
            serde_json::json!([{"index": 1, "type": "f32", "bits": "7fc00000"}]),
            "globals[1]",
        ),
        (
            serde_json::json!([{"index": 9, "type": "f64", "bits": "7ff8000000000001"}]),
            "global 9",
        ),
        (
            serde_json::json!([{"index": 0, "type": "f32", "bits": "7fc00000"}]),
            "globals[0]",
        ),
        (
            serde_json::json!([{"index": 0, "type": "f64", "bits": "3ff0000000000000"}]),
            "not the hex",
        ),
        (
            serde_json::json!([{"index": 0, "type": "f64", "bits": "7ff8"}]),
            "not the hex",
        ),
        (
            serde_json::json!([
                {"index": 0, "type": "f64", "bits": "7ff8000000000001"},
                {"index": 0, "type": "f64", "bits": "7ff8000000000001"}
            ]),
            "once",
        ),
    ] {
        let mut edited = good.clone();
        edited[field] = edit;
        std::fs::write(dir.metadata_path(), edited.to_string()).unwrap();
        let err = dir.read_metadata().unwrap_err();
        assert!(
            matches!(err, TransferError::Metadata { .. }) && err.to_string().contains(needle),
            "{needle}: {err}"
        );
    }
}

proptest! {
    #![proptest_config(common::proptest_config("float_globals_round_trip", 512))]

    /// Any f32 and f64 bit pattern, finite or not, survives metadata.json exactly.
    #[test]
    fn any_float_global_survives_metadata_json(f32_bits: u32, f64_bits: u64) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path());
        let mut metadata = minimal_metadata();
        metadata.globals = vec![Some(f32_global(f32_bits)), Some(f64_global(f64_bits))];
        dir.write_metadata(&metadata).unwrap();
        let read = dir.read_metadata().unwrap();
        prop_assert_eq!(
            all_bits(&read.globals),
            vec![(2, f32_bits as u128), (3, f64_bits as u128)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile directories: sizes and symbolic links
// ---------------------------------------------------------------------------------------------

/// Pads a JSON file with trailing spaces (still valid JSON) to exactly `len` bytes.
fn pad_to(path: &Path, len: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() as u64 <= len);
    bytes.resize(len as usize, b' ');
    std::fs::write(path, bytes).unwrap();
}

#[track_caller]
fn assert_too_large(err: TransferError, path: &Path, limit: u64) {
    assert!(
        matches!(&err, TransferError::TooLarge { path: p, limit: l, size, .. }
            if p == path && *l == limit && *size == limit + 1),
        "{err}"
    );
}

#[test]
fn metadata_and_checksum_files_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sm, _canister, _id) = downloaded(1, tmp.path());
    let dir = SnapshotDir::new(tmp.path());
    pad_to(&dir.metadata_path(), MAX_METADATA_JSON_BYTES);
    pad_to(&dir.checksum_path(), MAX_CHECKSUM_JSON_BYTES);
    dir.validate().unwrap();
    let record = dir.read_checksum_record().unwrap().unwrap();
    assert_eq!(record.checksum, hex(&dir.compute_checksum().unwrap()));

    pad_to(&dir.metadata_path(), MAX_METADATA_JSON_BYTES + 1);
    assert_too_large(
        dir.validate().unwrap_err(),
        &dir.metadata_path(),
        MAX_METADATA_JSON_BYTES,
    );
    pad_to(&dir.checksum_path(), MAX_CHECKSUM_JSON_BYTES + 1);
    assert_too_large(
        dir.read_checksum_record().unwrap_err(),
        &dir.checksum_path(),
        MAX_CHECKSUM_JSON_BYTES,
    );
}

/// The bound leaves room: the largest metadata.json a valid snapshot produces (the most chunks,
/// the most globals, each of the longest kind) is under a quarter of it.
#[test]
fn the_largest_valid_metadata_json_is_far_below_its_bound() {
    use canister_snapshots::management::types::{MAX_GLOBALS, MAX_WASM_CHUNKS};
    let tmp = tempfile::tempdir().unwrap();
    let dir = SnapshotDir::new(tmp.path());
    let widest: [fn(usize) -> SnapshotMetadataGlobal; 2] = [
        |i| f64_global(0xfff8_0000_0000_0000 | i as u64),
        |_| SnapshotMetadataGlobal::V128(candid::Nat::from(u128::MAX)),
    ];
    for global in widest {
        let mut metadata = minimal_metadata();
        metadata.wasm_chunk_store = (0..MAX_WASM_CHUNKS)
            .map(|i| ChunkHash {
                hash: sha256(&i.to_le_bytes()).to_vec(),
            })
            .collect();
        metadata.globals = (0..MAX_GLOBALS).map(|i| Some(global(i))).collect();
        metadata.certified_data = vec![255; 32];
        metadata.taken_at_timestamp = u64::MAX;
        dir.write_metadata(&metadata).unwrap();
        let size = std::fs::metadata(dir.metadata_path()).unwrap().len();
        assert!(size < MAX_METADATA_JSON_BYTES / 4, "{size}");
    }
}

#[test]
fn progress_files_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sm, canister, _) = downloaded(2, tmp.path());
    let stop = TransferOptions {
        stop_after_bytes: Some(1),
        ..TransferOptions::default()
    };
    let err = sm
        .upload_canister_snapshot_with(
            canister.id,
            Some(canister.sender),
            tmp.path(),
            None,
            None,
            &stop,
        )
        .unwrap_err();
    assert!(matches!(err, TransferError::Interrupted { .. }), "{err}");
    let progress = tmp.path().join(".upload_progress.json");
    let saved = std::fs::read(&progress).unwrap();

    pad_to(&progress, MAX_PROGRESS_JSON_BYTES + 1);
    let err = sm
        .upload_canister_snapshot(canister.id, Some(canister.sender), tmp.path(), None)
        .unwrap_err();
    assert_too_large(err, &progress, MAX_PROGRESS_JSON_BYTES);

    std::fs::write(&progress, saved).unwrap();
    pad_to(&progress, MAX_PROGRESS_JSON_BYTES);
    sm.upload_canister_snapshot(canister.id, Some(canister.sender), tmp.path(), None)
        .unwrap();
}

#[test]
fn chunk_files_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let at_limit = vec![7u8; MAX_CHUNK_FILE_BYTES as usize];
    let past_limit = vec![7u8; MAX_CHUNK_FILE_BYTES as usize + 1];
    let (at, past) = (tmp.path().join("at"), tmp.path().join("past"));
    write_dir_with_chunks(&at, &[&at_limit], &[0]);
    write_dir_with_chunks(&past, &[&past_limit], &[0]);
    SnapshotDir::new(&at).validate().unwrap();
    let chunk = SnapshotDir::new(&past).chunk_path(&sha256(&past_limit));
    assert_too_large(
        SnapshotDir::new(&past).validate().unwrap_err(),
        &chunk,
        MAX_CHUNK_FILE_BYTES,
    );
}

#[test]
fn the_module_is_bounded_by_the_ic_module_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = SnapshotDir::new(tmp.path());
    for size in [MAX_WASM_MODULE_FILE_BYTES, MAX_WASM_MODULE_FILE_BYTES + 1] {
        let mut metadata = minimal_metadata();
        metadata.wasm_module_size = size;
        std::fs::create_dir_all(dir.chunk_store_dir()).unwrap();
        dir.write_metadata(&metadata).unwrap();
        // Sparse: nothing is read at validation, only the size.
        let module = std::fs::File::create(tmp.path().join("wasm_module.bin")).unwrap();
        module.set_len(size).unwrap();
        std::fs::write(tmp.path().join("wasm_memory.bin"), b"").unwrap();
        std::fs::write(tmp.path().join("stable_memory.bin"), b"").unwrap();
        let result = dir.validate();
        if size == MAX_WASM_MODULE_FILE_BYTES {
            result.unwrap();
        } else {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("module limit"), "{err}");
        }
    }
}

#[cfg(unix)]
#[test]
fn symbolic_links_inside_a_snapshot_directory_are_refused() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let (_sm, _canister, _id) = downloaded(1, &good);
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("wasm_chunk_store")).unwrap();
        for f in [
            "metadata.json",
            "checksum.json",
            "wasm_module.bin",
            "wasm_memory.bin",
            "stable_memory.bin",
        ] {
            std::fs::copy(good.join(f), dir.join(f)).unwrap();
        }
        dir
    };
    for file in [
        "metadata.json",
        "checksum.json",
        "stable_memory.bin",
        "wasm_module.bin",
    ] {
        let dir = copy(&format!("link-{file}"));
        std::fs::remove_file(dir.join(file)).unwrap();
        symlink(good.join(file), dir.join(file)).unwrap();
        let snapshot_dir = SnapshotDir::new(&dir);
        let err = match file {
            "checksum.json" => snapshot_dir.read_checksum_record().unwrap_err(),
            _ => snapshot_dir.compute_checksum().unwrap_err(),
        };
        assert!(
            matches!(&err, TransferError::Symlink { path } if *path == dir.join(file)),
            "{file}: {err}"
        );
        assert!(err.to_string().contains(dir.join(file).to_str().unwrap()));
    }
    // The chunk store directory, and a chunk in it.
    let chunk: &[u8] = b"a chunk";
    let with_chunk = tmp.path().join("with-chunk");
    write_dir_with_chunks(&with_chunk, &[chunk], &[0]);
    SnapshotDir::new(&with_chunk).validate().unwrap();
    let linked_store = tmp.path().join("linked-store");
    write_dir_with_chunks(&linked_store, &[chunk], &[0]);
    std::fs::remove_dir_all(linked_store.join("wasm_chunk_store")).unwrap();
    symlink(
        with_chunk.join("wasm_chunk_store"),
        linked_store.join("wasm_chunk_store"),
    )
    .unwrap();
    let err = SnapshotDir::new(&linked_store).validate().unwrap_err();
    assert!(matches!(err, TransferError::Symlink { .. }), "{err}");
    let linked_chunk = tmp.path().join("linked-chunk");
    write_dir_with_chunks(&linked_chunk, &[chunk], &[0]);
    let name = format!("{}.bin", hex(&sha256(chunk)));
    let chunk_path = linked_chunk.join("wasm_chunk_store").join(&name);
    std::fs::remove_file(&chunk_path).unwrap();
    symlink(with_chunk.join("wasm_chunk_store").join(&name), &chunk_path).unwrap();
    let err = SnapshotDir::new(&linked_chunk).validate().unwrap_err();
    assert!(
        matches!(&err, TransferError::Symlink { path } if *path == chunk_path),
        "{err}"
    );
}

/// A resumed download used to open its `.part` file through a symbolic link, truncating and
/// overwriting whatever it pointed at.
#[cfg(unix)]
#[test]
fn a_resumed_download_does_not_write_through_a_symbolic_link() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sm, canister) = machine(1);
    canister.fill(&mut sm, false, 0, 4 * MIB, 0x11);
    let id = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    let dir = tmp.path().join("download");
    let stop = TransferOptions {
        stop_after_bytes: Some(MIB),
        ..TransferOptions::default()
    };
    let err = sm
        .download_canister_snapshot_with(
            canister.id,
            Some(canister.sender),
            id.clone(),
            &dir,
            &stop,
        )
        .unwrap_err();
    assert!(matches!(err, TransferError::Interrupted { .. }), "{err}");
    let part = dir.join("wasm_memory.bin.part");
    assert!(part.exists());
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"not a snapshot file").unwrap();
    std::fs::remove_file(&part).unwrap();
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    let err = sm
        .download_canister_snapshot(canister.id, Some(canister.sender), id, &dir)
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::Symlink { path } if *path == part),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"not a snapshot file");
}

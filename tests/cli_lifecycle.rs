//! End to end at the shell: the `canister …` command line drives a canister through its whole
//! life cycle on a local replica in a state directory (create, install, call, snapshot, load,
//! download, edit, upload, load), every step a new process, so every step is a restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use canister_snapshots::cli::canister::{
    ABORT_AFTER_SLICES_VAR, SYNC_EVERY_SLICES_VAR, WRITE_BUDGET_VAR,
};
use canister_snapshots::{Config, StateMachine};

fn run(state_dir: &Path, args: &[&str]) -> Output {
    run_with(state_dir, args, &[])
}

fn run_with(state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canister-snapshots"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its standard output, trimmed.
#[track_caller]
fn ok(state_dir: &Path, args: &[&str]) -> String {
    let out = run(state_dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs a command that must succeed on a disk with room for `budget` more bytes (the state
/// manager's test hook); returns (standard output, standard error).
#[track_caller]
fn ok_on_full_disk(state_dir: &Path, args: &[&str], budget: u64) -> (String, String) {
    let out = run_with(state_dir, args, &[(WRITE_BUDGET_VAR, &budget.to_string())]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        stderr,
    )
}

/// Runs a command that must fail; returns its standard error.
#[track_caller]
fn fails(state_dir: &Path, args: &[&str]) -> String {
    let out = run(state_dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn the_command_line_drives_a_canister_through_its_life_cycle_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();

    let canister = ok(s, &["canister", "create"]);
    ok(s, &["canister", "install", &canister]);
    ok(
        s,
        &[
            "canister",
            "call",
            &canister,
            "write_heap",
            "(0 : nat64, blob \"hello\")",
        ],
    );
    let read = [
        "canister",
        "call",
        &canister,
        "read_heap",
        "(0 : nat64, 5 : nat64)",
    ];
    assert_eq!(ok(s, &read), "(blob \"hello\")");

    // Like dfx, snapshots of a running canister need --force.
    let refused = fails(s, &["canister", "snapshot", "create", &canister]);
    assert!(refused.contains("--force"), "{refused}");
    ok(s, &["canister", "stop", &canister]);
    let snapshot = ok(s, &["canister", "snapshot", "create", &canister]);
    assert!(
        snapshot.chars().all(|c| c.is_ascii_hexdigit()),
        "{snapshot}"
    );
    assert!(ok(s, &["canister", "snapshot", "list", &canister]).starts_with(&snapshot));
    ok(s, &["canister", "start", &canister]);
    assert!(ok(s, &["canister", "status", &canister]).contains("Status: Running"));

    // Wreck the heap, and restore it from the snapshot.
    ok(
        s,
        &[
            "canister",
            "call",
            &canister,
            "write_heap",
            "(0 : nat64, blob \"wreck\")",
        ],
    );
    let refused = fails(s, &["canister", "snapshot", "load", &canister, &snapshot]);
    assert!(refused.contains("--force"), "{refused}");
    ok(
        s,
        &[
            "canister", "snapshot", "load", &canister, &snapshot, "--force",
        ],
    );
    assert_eq!(ok(s, &read), "(blob \"hello\")");

    // Take it home, edit it, bring it back and load it.
    let dir = work.path().join("download");
    let dir_arg = dir.to_str().unwrap();
    let download = [
        "canister", "snapshot", "download", &canister, &snapshot, "--dir", dir_arg,
    ];
    // Another process transferring into the directory holds its lock.
    std::fs::create_dir_all(&dir).unwrap();
    let lock = canister_snapshots::transfer::lock_directory(&dir)
        .unwrap()
        .unwrap();
    let busy = fails(s, &download);
    assert!(busy.contains("in use by another transfer"), "{busy}");
    drop(lock);
    // An interrupted transfer is continued only when asked to.
    std::fs::write(dir.join(".download_progress.json"), b"{}").unwrap();
    let interrupted = fails(s, &download);
    assert!(interrupted.contains("--resume"), "{interrupted}");
    std::fs::remove_file(dir.join(".download_progress.json")).unwrap();
    ok(s, &download);
    let heap = dir.join("wasm_memory.bin");
    let mut bytes = std::fs::read(&heap).unwrap();
    bytes[..5].copy_from_slice(b"HELLO");
    std::fs::write(&heap, &bytes).unwrap();
    // An edited directory no longer matches the checksum it was downloaded with.
    std::fs::remove_file(dir.join("checksum.json")).unwrap();
    let uploaded = ok(
        s,
        &[
            "canister",
            "snapshot",
            "upload",
            &canister,
            "--dir",
            dir_arg,
            "--replace",
            &snapshot,
        ],
    );
    assert_ne!(uploaded, snapshot);
    ok(s, &["canister", "stop", &canister]);
    ok(s, &["canister", "snapshot", "load", &canister, &uploaded]);
    ok(s, &["canister", "start", &canister]);
    assert_eq!(ok(s, &read), "(blob \"HELLO\")");

    // Errors print the IC code and exit non-zero.
    let trapped = fails(s, &["canister", "call", &canister, "trap", "(\"boom\")"]);
    assert!(
        trapped.contains("IC0503") && trapped.contains("boom"),
        "{trapped}"
    );
    let bad_args = fails(s, &["canister", "call", &canister, "read_heap", "(oops"]);
    assert!(bad_args.contains("not Candid text"), "{bad_args}");

    // The directory is locked while a replica has it open.
    let holder = StateMachine::open(s, Config::default()).unwrap();
    let locked = fails(s, &["canister", "status", &canister]);
    assert!(locked.contains("in use by another process"), "{locked}");
    drop(holder);

    ok(s, &["canister", "snapshot", "delete", &canister, &uploaded]);
    assert!(ok(s, &["canister", "snapshot", "list", &canister]).contains("No snapshots"));
    ok(s, &["canister", "stop", &canister]);
    ok(s, &["canister", "delete", &canister]);
    let gone = fails(s, &["canister", "status", &canister]);
    assert!(gone.contains("IC0301"), "{gone}");
}

/// Runs a transfer that the test hook kills (abort: no destructor, no checkpoint at exit, like
/// `kill -9`) after `slices` slices, with progress made durable every 2 slices.
#[track_caller]
fn killed_after(state_dir: &Path, args: &[&str], slices: u64) {
    use std::os::unix::process::ExitStatusExt;
    let slices = slices.to_string();
    let out = run_with(
        state_dir,
        args,
        &[
            (ABORT_AFTER_SLICES_VAR, slices.as_str()),
            (SYNC_EVERY_SLICES_VAR, "2"),
        ],
    );
    assert!(
        out.status.signal().is_some(),
        "{args:?} was to be killed, it exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn progress_offset(progress: &Path, region: &str) -> u64 {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(progress).unwrap()).unwrap();
    json[region].as_u64().unwrap()
}

#[test]
fn a_transfer_killed_between_slices_is_resumed_by_a_new_process() {
    const STABLE: u64 = 8 << 20; // 5 slices of stable memory
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();
    let canister = ok(s, &["canister", "create"]);
    ok(s, &["canister", "install", &canister]);
    let fill = format!("(0 : nat64, {STABLE} : nat64, 7 : nat8)");
    ok(s, &["canister", "call", &canister, "fill_stable", &fill]);
    let marker = format!("({} : nat64, blob \"the last slice\")", STABLE - 100);
    ok(s, &["canister", "call", &canister, "write_stable", &marker]);
    ok(
        s,
        &[
            "canister",
            "call",
            &canister,
            "write_heap",
            "(0 : nat64, blob \"heap\")",
        ],
    );
    ok(s, &["canister", "stop", &canister]);
    let snapshot = ok(s, &["canister", "snapshot", "create", &canister]);

    // Download: killed in the stable memory (module, heap, then 3 of its slices), resumed.
    let dir = work.path().join("download");
    let dir_arg = dir.to_str().unwrap();
    let download = [
        "canister", "snapshot", "download", &canister, &snapshot, "--dir", dir_arg,
    ];
    killed_after(s, &download, 5);
    let progress = dir.join(".download_progress.json");
    let claimed = progress_offset(&progress, "stable_memory");
    let on_disk = std::fs::metadata(dir.join("stable_memory.bin.part"))
        .unwrap()
        .len();
    assert!(claimed > 0 && claimed < STABLE, "{claimed}");
    assert!(
        claimed <= on_disk,
        "the progress claims {claimed} bytes, {on_disk} are written"
    );
    assert!(fails(s, &download).contains("--resume"));
    let mut resume = download.to_vec();
    resume.push("--resume");
    ok(s, &resume);
    assert!(!progress.exists());
    let stable_file = dir.join("stable_memory.bin");
    let mut expected = vec![7u8; STABLE as usize];
    expected[STABLE as usize - 100..][..14].copy_from_slice(b"the last slice");
    assert!(std::fs::read(&stable_file).unwrap() == expected);

    // Upload an edited copy: killed after the new snapshot took 3 slices of stable memory.
    let mut edited = expected.clone();
    edited[3 << 20..][..6].copy_from_slice(b"EDITED");
    std::fs::write(&stable_file, &edited).unwrap();
    // The quota (one) is full: the upload replaces the snapshot, with consent, as it starts.
    let upload = [
        "canister",
        "snapshot",
        "upload",
        &canister,
        "--dir",
        dir_arg,
        "--replace",
        &snapshot,
    ];
    killed_after(s, &upload, 5);
    let progress = dir.join(".upload_progress.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    let partial = json["snapshot_id"].as_str().unwrap().to_string();
    let claimed = progress_offset(&progress, "stable_memory");
    assert!(claimed > 0 && claimed < STABLE, "{claimed}");
    // The replica's last checkpoint holds the partial snapshot the progress file names.
    {
        let sm = StateMachine::open(s, Config::default()).unwrap();
        let ids: Vec<String> = sm
            .state()
            .snapshots
            .iter()
            .map(|snap| canister_snapshots::memory::checksum::hex(&snap.id().to_bytes()))
            .collect();
        assert_eq!(ids, vec![partial.clone()]);
    }
    assert!(fails(s, &upload).contains("--resume"));
    let mut resume = upload.to_vec();
    resume.push("--resume");
    // The upload checks the replica's checksum of the result against the directory's.
    let uploaded = ok(s, &resume);
    assert_eq!(uploaded, partial);
    assert!(!progress.exists());

    // And the canister gets the edited bytes back from it.
    ok(s, &["canister", "snapshot", "load", &canister, &uploaded]);
    ok(s, &["canister", "start", &canister]);
    let read = format!("({} : nat64, 6 : nat64)", 3 << 20);
    assert_eq!(
        ok(s, &["canister", "call", &canister, "read_stable", &read]),
        "(blob \"EDITED\")"
    );
    let read = format!("({} : nat64, 14 : nat64)", STABLE - 100);
    assert_eq!(
        ok(s, &["canister", "call", &canister, "read_stable", &read]),
        "(blob \"the last slice\")"
    );
}

/// Every file under `dir` with its length: what a command wrote shows here. (`unverified`,
/// the marker the first open of a checkpoint removes, is left out.)
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() != "unverified" {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// A full disk does not lock the state directory (issue 25.4). With no room at all, the
/// read-only commands answer and write nothing; with room for the records but not for the merge
/// the last checkpoint planned, the commands that free space (`snapshot delete`, `stop`,
/// `delete`) work, each saying that it left the merge out. Before, every command failed with
/// "no space left".
#[test]
fn a_full_disk_leaves_the_commands_that_read_or_free_space_working() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();
    let canister = ok(s, &["canister", "create"]);
    ok(s, &["canister", "install", &canister]);
    ok(s, &["canister", "stop", &canister]);
    let snapshot = ok(s, &["canister", "snapshot", "create", &canister]);
    ok(s, &["canister", "start", &canister]);
    // A base of 256 pages, then overlays of 32 and 64: the last checkpoint plans a merge of the
    // two overlays (the 32 is smaller than the 64 above it), about 400 KiB.
    for pages in [256u64, 32, 64] {
        let args = format!(
            "(0 : nat64, {} : nat64, {} : nat8)",
            pages * 4096,
            pages % 251
        );
        ok(s, &["canister", "call", &canister, "fill_stable", &args]);
    }

    let before = files_under(&state.join("checkpoints"));
    // The files of the merges pending (`merges/`: continued across invocations) stay as they
    // are; a merge attempt on the full disk leaves nothing behind.
    let merges_under = || {
        let merges = state.join("merges");
        if merges.exists() {
            files_under(&merges)
        } else {
            Vec::new()
        }
    };
    let merges_before = merges_under();
    let (status, _) = ok_on_full_disk(s, &["canister", "status", &canister], 0);
    assert!(status.contains("Status: Running"), "{status}");
    let (list, _) = ok_on_full_disk(s, &["canister", "snapshot", "list", &canister], 0);
    assert!(list.starts_with(&snapshot), "{list}");
    assert_eq!(files_under(&state.join("checkpoints")), before);
    assert_eq!(merges_under(), merges_before);

    let room = 64 << 10;
    let (_, warning) = ok_on_full_disk(
        s,
        &["canister", "snapshot", "delete", &canister, &snapshot],
        room,
    );
    assert!(warning.contains("no room to merge"), "{warning}");
    assert!(ok(s, &["canister", "snapshot", "list", &canister]).contains("No snapshots"));
    ok_on_full_disk(s, &["canister", "stop", &canister], room);
    ok_on_full_disk(s, &["canister", "delete", &canister], room);
    let gone = fails(s, &["canister", "status", &canister]);
    assert!(gone.contains("IC0301"), "{gone}");
}

#[test]
fn a_rerun_of_an_upload_killed_before_it_printed_the_id_reports_the_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();
    let canister = ok(s, &["canister", "create"]);
    ok(s, &["canister", "install", &canister]);
    ok(
        s,
        &[
            "canister",
            "call",
            &canister,
            "write_heap",
            "(0 : nat64, blob \"uploaded once\")",
        ],
    );
    let snapshot = ok(s, &["canister", "snapshot", "create", &canister, "--force"]);
    let dir = work.path().join("download");
    let dir_arg = dir.to_str().unwrap();
    ok(
        s,
        &[
            "canister", "snapshot", "download", &canister, &snapshot, "--dir", dir_arg,
        ],
    );
    // The quota is one: the download's snapshot makes room for the upload.
    ok(s, &["canister", "snapshot", "delete", &canister, &snapshot]);
    let before: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    // The upload, as `canister snapshot upload` runs it, killed once the upload is durable but
    // before the command's checkpoint and its output: the process ends without either.
    let uploaded = {
        let mut sm = StateMachine::open(s, Config::default()).unwrap();
        let report = sm
            .upload_canister_snapshot_with(
                canister.parse().unwrap(),
                Some(canister_snapshots::cli::canister::default_sender()),
                &dir,
                None,
                None,
                &canister_snapshots::transfer::TransferOptions::default(),
            )
            .unwrap();
        canister_snapshots::memory::checksum::hex(&report.snapshot_id)
    };
    // Rerun, with and without --resume: the finished snapshot's id, not "quota full".
    let upload = [
        "canister", "snapshot", "upload", &canister, "--dir", dir_arg,
    ];
    assert_eq!(ok(s, &upload), uploaded);
    let mut resume = upload.to_vec();
    resume.push("--resume");
    assert_eq!(ok(s, &resume), uploaded);
    let listed = ok(s, &["canister", "snapshot", "list", &canister]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&uploaded), "{listed}");
    // The transfers' locks left nothing in the directory: the snapshot's files only, as the
    // download wrote them and the uploads read them.
    let after: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(after, before);
    assert!(
        after
            .iter()
            .all(|name| !name.to_string_lossy().starts_with('.')),
        "{after:?}"
    );
    ok(s, &["canister", "stop", &canister]);
    ok(s, &["canister", "snapshot", "load", &canister, &uploaded]);
}

/// A WebAssembly canister from a `.wasm` file: `canister_init` keeps its Candid argument,
/// `set` replaces it, `get` (a query) replies with it, and `set_in_query` (a query that writes)
/// changes nothing.
const ECHO: &str = r#"(module
  (import "ic0" "msg_arg_data_size" (func $size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (data (i32.const 8) "DIDL\00\00")
  (func $keep
    (i32.store (i32.const 0) (call $size))
    (call $copy (i32.const 16) (i32.const 0) (call $size)))
  (func $reply_empty (call $append (i32.const 8) (i32.const 6)) (call $reply))
  (func (export "canister_init") (call $keep))
  (func (export "canister_update set") (call $keep) (call $reply_empty))
  (func (export "canister_query set_in_query") (call $keep) (call $reply_empty))
  (func (export "canister_query get")
    (call $append (i32.const 16) (i32.load (i32.const 0)))
    (call $reply)))"#;

#[test]
fn the_command_line_installs_a_wasm_file_and_sends_queries() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let s = state.as_path();
    let wasm = work.path().join("echo.wasm");
    std::fs::write(&wasm, wat::parse_str(ECHO).unwrap()).unwrap();
    let wasm = wasm.to_str().unwrap();

    let canister = ok(s, &["canister", "create"]);
    ok(
        s,
        &[
            "canister",
            "install",
            &canister,
            "--wasm",
            wasm,
            "--argument",
            "(\"hello\")",
        ],
    );
    let get = ["canister", "call", &canister, "get", "--query"];
    assert_eq!(ok(s, &get), "(\"hello\")");
    ok(s, &["canister", "call", &canister, "set", "(\"world\")"]);
    assert_eq!(ok(s, &get), "(\"world\")");
    let in_query = [
        "canister",
        "call",
        &canister,
        "set_in_query",
        "(\"lost\")",
        "--query",
    ];
    ok(s, &in_query);
    assert_eq!(ok(s, &get), "(\"world\")", "a query's writes are discarded");
    // An update method is not a query.
    let refused = fails(
        s,
        &["canister", "call", &canister, "set", "(\"x\")", "--query"],
    );
    assert!(refused.contains("has no query method 'set'"), "{refused}");
}

//! End to end at the shell: the `canister …` command line drives a canister through its whole
//! life cycle on a local replica in a state directory (create, install, call, snapshot, load,
//! download, edit, upload, load), every step a new process, so every step is a restart.

use std::path::Path;
use std::process::{Command, Output};

use canister_snapshots::{Config, StateMachine};

fn run(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canister-snapshots"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
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
    let lock = std::fs::File::create(dir.join(".transfer.lock")).unwrap();
    fs4::FileExt::try_lock(&lock).unwrap();
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

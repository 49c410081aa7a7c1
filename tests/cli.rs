//! The command line on real directories: inspect, verify, diff, upload (incremental).

use std::path::Path;
use std::process::Command;

use candid::{Encode, Principal};
use canister_snapshots::{StateMachine, TEST_CANISTER_WASM};

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_canister-snapshots"))
        .args(args)
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn download_a_snapshot(dir: &Path) {
    let user = Principal::from_slice(&[5; 29]);
    let mut sm = StateMachine::new();
    let canister = sm.create_canister_with_settings(Some(user), None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user));
    let arg = Encode!(&70_000u64, &(3u64 << 20), &0x5Au8).unwrap();
    sm.update_call(canister, user, "fill_stable", arg).unwrap();
    let arg = Encode!(&0u64, &100u64, &1u8).unwrap();
    sm.update_call(canister, user, "fill_heap", arg).unwrap();
    let snapshot = sm
        .take_canister_snapshot(canister, Some(user), None)
        .unwrap();
    sm.download_canister_snapshot(canister, Some(user), snapshot.id, dir)
        .unwrap();
}

#[test]
fn inspect_verify_diff_and_upload_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    download_a_snapshot(&a);
    let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());

    let (ok, out) = cli(&["snapshot", "inspect", a_str]);
    assert!(ok, "{out}");
    assert!(out.contains("stable_memory"), "{out}");
    assert!(
        out.contains("[0x11000, 0x312000)"),
        "non-zero stable range shown: {out}"
    );
    let (ok, out) = cli(&["snapshot", "verify", a_str]);
    assert!(ok && out.starts_with("ok:"), "{out}");

    // Copy, edit one byte of stable memory: verify catches it, diff locates it.
    std::fs::create_dir_all(b.join("wasm_chunk_store")).unwrap();
    for f in [
        "metadata.json",
        "wasm_module.bin",
        "wasm_memory.bin",
        "stable_memory.bin",
        "checksum.json",
    ] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let mut stable = std::fs::read(b.join("stable_memory.bin")).unwrap();
    stable[2 << 20] ^= 0xFF;
    std::fs::write(b.join("stable_memory.bin"), &stable).unwrap();
    let (ok, out) = cli(&["snapshot", "verify", b_str]);
    assert!(!ok && out.contains("corrupted or edited"), "{out}");
    let (ok, out) = cli(&["snapshot", "diff", a_str, b_str]);
    assert!(ok, "{out}");
    assert!(out.contains("[0x200000, 0x201000)"), "{out}");
    assert!(out.contains("sends 4.00 KiB"), "{out}");

    // A deliberate edit: `--strict` refuses it, naming the file; without it only the change
    // is uploaded, and the output names the edited file. No file is deleted.
    let (ok, out) = cli(&["snapshot", "upload", b_str, "--base", a_str, "--strict"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("changed since its download (stable_memory.bin)"),
        "{out}"
    );
    let (ok, out) = cli(&["snapshot", "upload", b_str, "--base", a_str]);
    assert!(ok, "{out}");
    assert!(out.contains("sent 4.00 KiB in 1 messages"), "{out}");
    assert!(
        out.contains("changed since the download: stable_memory.bin"),
        "{out}"
    );
    assert!(b.join("checksum.json").exists());
    let edited = canister_snapshots::memory::checksum::hex(
        &canister_snapshots::transfer::SnapshotDir::new(&b)
            .compute_checksum()
            .unwrap(),
    );
    assert!(
        out.contains(&format!("replica checksum {edited} equals")),
        "the replica's checksum must be the edited directory's, {edited}: {out}"
    );
}

#[test]
fn bad_directories_fail_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = cli(&["snapshot", "verify", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("metadata.json"), "{out}");
    let (ok, _) = cli(&["snapshot", "bogus"]);
    assert!(!ok);
}

//! The state directory (`spec/durability.md`): restart equality, incremental checkpoints,
//! snapshots sharing page files, every corruption and directory fault ending in an error that
//! names the file, a full disk, bounded files per memory, a crash loop under `kill -9`, and
//! power loss: the order of the recorded `fsync`s, and a crash simulated after every operation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use canister_snapshots::memory::{Hash, checksum::sha256};
use canister_snapshots::scheduler::{Batch, ExecutionLoop};
use canister_snapshots::state_manager::disk::{DiskOp, DiskRecording, Recorded};
use canister_snapshots::state_manager::{MAX_FILES_PER_MEMORY, StateManager, StateManagerError};
use canister_snapshots::testing::power_loss::{self, Durability, Loss};
use canister_snapshots::{Config, StateMachine};
use common::{TestCanister, controller, install_new, populate};

fn open(dir: &Path) -> StateMachine {
    StateMachine::open(dir, Config::default()).unwrap_or_else(|e| panic!("open failed: {e}"))
}

/// The error opening `dir` gives.
fn open_err(dir: &Path) -> StateManagerError {
    match StateMachine::open(dir, Config::default()) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(err) => err,
    }
}

/// The state hash and every snapshot's checksum: what must survive a restart.
fn fingerprint(sm: &StateMachine) -> (Hash, Vec<Hash>) {
    let state = sm.state();
    (
        state.state_hash(),
        state.snapshots.iter().map(|s| s.checksum()).collect(),
    )
}

fn canister_of(sm: &StateMachine) -> TestCanister {
    TestCanister {
        id: *sm.state().canisters.keys().next().expect("one canister"),
        sender: controller(),
    }
}

/// The only checkpoint directory under `dir`.
fn checkpoint_dir(dir: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.pop().expect("a checkpoint")
}

fn page_files(checkpoint: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(checkpoint.join("pages"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A directory with one populated canister, a snapshot and more writes after it, checkpointed.
fn populated_dir() -> (tempfile::TempDir, (Hash, Vec<Hash>)) {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    populate(&mut sm, &canister);
    sm.take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap();
    canister.write(&mut sm, false, 5, b"after the snapshot");
    sm.checkpoint().unwrap();
    let fingerprint = fingerprint(&sm);
    (dir, fingerprint)
}

#[test]
fn a_reopened_state_equals_the_checkpointed_one_and_serves_pages_from_files() {
    let (dir, before) = populated_dir();
    let mut sm = open(dir.path());
    assert_eq!(fingerprint(&sm), before);
    let canister = canister_of(&sm);
    // Nothing is in the heap after reopening: the pages are mapped.
    let execution = sm.state().canisters[&canister.id]
        .execution_state
        .as_ref()
        .unwrap();
    assert_eq!(execution.wasm_memory.resident_bytes(), 0);
    assert_eq!(execution.stable_memory.resident_bytes(), 0);
    assert_eq!(
        canister.read(&mut sm, false, 0, 23),
        b"\xA1\xA1\xA1\xA1\xA1after the snapshot"
    );
    assert_eq!(canister.read(&mut sm, true, 9_000, 13), b"stable marker");
    assert_eq!(canister.get_global(&mut sm, 0), -42);
    // Executing on, checkpointing and reopening again keeps the equality.
    canister.write(&mut sm, true, 1, b"second life");
    let snapshot = sm
        .list_canister_snapshots(canister.id, Some(canister.sender))
        .unwrap()
        .remove(0)
        .id;
    sm.load_canister_snapshot(canister.id, Some(canister.sender), snapshot)
        .unwrap();
    sm.checkpoint().unwrap();
    let second = fingerprint(&sm);
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(fingerprint(&sm), second);
    assert_eq!(canister.read(&mut sm, false, 0, 6), vec![0xA1; 6]);
}

#[test]
fn a_checkpoint_writes_only_the_pages_changed_since_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, 256 * 4096, 7);
    sm.checkpoint().unwrap();
    let first = page_files(&checkpoint_dir(dir.path()));
    assert_eq!(first.len(), 1);
    assert!(first[0].1 >= 256 * 4096);
    // Two pages changed: the next checkpoint adds one file of two pages and links the rest.
    canister.write(&mut sm, true, 4096 * 10, b"x");
    canister.write(&mut sm, true, 4096 * 200 + 5, b"y");
    sm.checkpoint().unwrap();
    let second = page_files(&checkpoint_dir(dir.path()));
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second.contains(&first[0]));
    let overlay = second.iter().find(|f| *f != &first[0]).unwrap();
    assert!(overlay.1 < 3 * 4096, "{overlay:?}");
}

#[test]
fn a_snapshot_shares_page_files_with_its_canister() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, 128 * 4096, 3);
    sm.take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap();
    sm.checkpoint().unwrap();
    // One file for the stable memory (canister and snapshot alike), one for the heap.
    let files = page_files(&checkpoint_dir(dir.path()));
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total < 2 * 128 * 4096, "{files:?}");
    let state = sm.state();
    let snapshot = state.snapshots.iter().next().unwrap();
    let live = state.canisters[&canister.id]
        .execution_state
        .as_ref()
        .unwrap();
    assert!(
        snapshot
            .content()
            .stable_memory
            .page_map()
            .shares_root_with(live.stable_memory.page_map())
    );
    drop(sm);
    let sm = open(dir.path());
    let state = sm.state();
    let snapshot = state.snapshots.iter().next().unwrap();
    let live = state.canisters[&canister.id]
        .execution_state
        .as_ref()
        .unwrap();
    assert!(
        snapshot
            .content()
            .stable_memory
            .page_map()
            .shares_root_with(live.stable_memory.page_map())
    );
}

#[test]
fn files_per_memory_stay_bounded_across_many_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, 64 * 4096, 1);
    for i in 0..120u64 {
        canister.write(&mut sm, true, (i * 37 % 64) * 4096, &i.to_le_bytes());
        sm.checkpoint().unwrap();
        let stable = &sm.state().canisters[&canister.id]
            .execution_state
            .as_ref()
            .unwrap()
            .stable_memory;
        let stack = stable.page_map().base().map_or(0, |b| b.files().len());
        assert!((1..=MAX_FILES_PER_MEMORY).contains(&stack), "{stack} files");
        // Nothing else is left on disk: heap and stable memory, each within the bound.
        let files = page_files(&checkpoint_dir(dir.path()));
        assert!(files.len() <= 2 * MAX_FILES_PER_MEMORY, "{files:?}");
    }
    let before = fingerprint(&sm);
    drop(sm);
    assert_eq!(fingerprint(&open(dir.path())), before);
}

#[test]
fn the_execution_loop_checkpoints_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        checkpoint_interval_rounds: 3,
        ..Config::default()
    };
    let execution = ExecutionLoop::new(
        config,
        Box::new(canister_snapshots::execution::TestCanisterEngine),
    );
    let (mut manager, mut state) = execution.open_state(dir.path()).unwrap();
    for round in 1..=7u64 {
        let batch = Batch {
            time: state.time + round,
            ingress: vec![],
        };
        execution
            .execute_round_durably(&mut state, &mut manager, batch)
            .unwrap();
        assert_eq!(
            manager.checkpoint_height(),
            (round >= 3).then_some(round / 3 * 3)
        );
    }
    drop(manager);
    let (_, reopened) = execution.open_state(dir.path()).unwrap();
    assert_eq!(reopened.round, 6);
}

// ---------------------------------------------------------------------------------------------
// Corruption: each case an error naming the file, nothing loaded
// ---------------------------------------------------------------------------------------------

/// Copies the state directory (hard links become copies, which is what a backup would do).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn make_writable(path: &Path) {
    let mut permissions = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(path, permissions).unwrap();
}

#[track_caller]
fn assert_corrupt(dir: &Path, file: &Path, needle: &str) {
    match StateMachine::open(dir, Config::default()) {
        Err(err @ StateManagerError::Corrupt { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains(&file.display().to_string()) && message.contains(needle),
                "{message}"
            );
        }
        Err(other) => panic!(
            "expected a corruption error naming {}, got {other}",
            file.display()
        ),
        Ok(_) => panic!("a damaged checkpoint ({}) was loaded", file.display()),
    }
}

/// Where a page file's areas start (`spec/durability.md`, page files, version 3), from its
/// footer.
struct PageFileLayout {
    leaf_hashes_at: usize,
    group_table_at: usize,
    block_table_at: usize,
    index_at: usize,
    footer_at: usize,
}

impl PageFileLayout {
    fn of(bytes: &[u8]) -> Self {
        let footer_at = bytes.len() - 32;
        let footer = &bytes[footer_at..];
        assert_eq!(&footer[24..], b"CSPAGES1");
        assert_eq!(u32::from_le_bytes(footer[16..20].try_into().unwrap()), 3);
        let ranges = u64::from_le_bytes(footer[0..8].try_into().unwrap()) as usize;
        let pages = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
        assert!(pages > 0);
        let groups = pages.div_ceil(128);
        let blocks = groups.div_ceil(128);
        let layout = PageFileLayout {
            leaf_hashes_at: pages * 4096,
            group_table_at: pages * (4096 + 32),
            block_table_at: pages * (4096 + 32) + groups * 32,
            index_at: pages * (4096 + 32) + (groups + blocks) * 32,
            footer_at,
        };
        assert_eq!(layout.index_at + ranges * 16, footer_at);
        layout
    }
}

/// Reads every memory of every canister and snapshot in full: the errors, as text.
fn read_every_memory(sm: &StateMachine) -> Vec<String> {
    let state = sm.state();
    let mut memories = Vec::new();
    for canister in state.canisters.values() {
        let execution = canister.execution_state.as_ref().unwrap();
        memories.extend([&execution.wasm_memory, &execution.stable_memory]);
    }
    for snapshot in state.snapshots.iter() {
        memories.extend([
            &snapshot.content().wasm_memory,
            &snapshot.content().stable_memory,
        ]);
    }
    memories
        .iter()
        .filter_map(|m| m.read_vec(0, m.size_bytes()).err())
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn damaged_checkpoints_are_refused_naming_the_file() {
    let (source, checkpointed) = populated_dir();
    let work = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let dir = work.path().join(name);
        copy_dir(source.path(), &dir);
        let checkpoint = checkpoint_dir(&dir);
        let page_file = checkpoint.join("pages").join(&page_files(&checkpoint)[0].0);
        (dir, checkpoint, page_file)
    };

    // Truncated page file.
    let (dir, _, file) = case("truncated");
    make_writable(&file);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    assert_corrupt(&dir, &file, "truncated");

    // One bit flipped in a page file's checked tail (its block table, index and footer):
    // refused at open, naming the file.
    type Offset = fn(&PageFileLayout) -> usize;
    let areas: [(&str, Offset); 3] = [
        ("block-table", |l| l.block_table_at + 3),
        ("index", |l| l.index_at + 8),
        ("footer", |l| l.footer_at + 21), // a byte of its zero padding
    ];
    for (area, at) in areas {
        let (dir, _, file) = case(&format!("flipped-tail-{area}"));
        make_writable(&file);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = at(&PageFileLayout::of(&bytes));
        bytes[at] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        assert_corrupt(&dir, &file, "SHA-256");
    }

    // One bit flipped in a page: opening checks metadata only, so the state opens, and the
    // page is refused, naming the file and the page, when it is first read; never served.
    let (dir, _, file) = case("flipped-page");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[17] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let sm = open(&dir);
    // Hashing reads the stored leaf hashes, not the pages (so it costs no page reads).
    assert_eq!(sm.state().state_hash(), checkpointed.0);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let errors = read_every_memory(&sm);
    assert!(!errors.is_empty(), "a damaged page was served");
    for err in &errors {
        assert!(err.contains(&name) && err.contains("page "), "{err}");
    }

    // One bit flipped in a group table entry: opening reads no group table (the manifest
    // covers the block table that stands for it), so the state opens with the state hash it
    // had (hashing falls back to the page bytes where a block of the table does not match the
    // block table), and the first read of a page whose group's entry is in that block is
    // refused, naming the file, the group and the block.
    let (dir, _, file) = case("flipped-group-table");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let layout = PageFileLayout::of(&bytes);
    bytes[layout.group_table_at + 5] ^= 0x01; // the entry of the file's first group
    std::fs::write(&file, &bytes).unwrap();
    let sm = open(&dir);
    assert_eq!(sm.state().state_hash(), checkpointed.0);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let errors = read_every_memory(&sm);
    assert!(
        !errors.is_empty(),
        "a page under a damaged group table was served"
    );
    for err in &errors {
        assert!(
            err.contains(&name)
                && err.contains("leaf hash group 0")
                && err.contains("group table block 0"),
            "{err}"
        );
    }
    drop(sm);

    // One bit flipped in a leaf hash: opening reads no leaf hash, so the state opens (with the
    // state hash it had: hashing falls back to the page bytes where a group does not match its
    // table entry), and the first read of a page of that group is refused, naming the file
    // and the group.
    let (dir, _, file) = case("flipped-leaf-hash");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let layout = PageFileLayout::of(&bytes);
    bytes[layout.leaf_hashes_at + 7] ^= 0x80; // the leaf hash of the file's first page
    std::fs::write(&file, &bytes).unwrap();
    let sm = open(&dir);
    assert_eq!(sm.state().state_hash(), checkpointed.0);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let errors = read_every_memory(&sm);
    assert!(
        !errors.is_empty(),
        "a page under a damaged leaf hash was served"
    );
    for err in &errors {
        assert!(
            err.contains(&name) && err.contains("leaf hash group 0"),
            "{err}"
        );
    }
    drop(sm);

    // One bit flipped in the state records.
    let (dir, checkpoint, _) = case("state");
    let file = checkpoint.join("state.bin");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    assert_corrupt(&dir, &file, "SHA-256");

    // An extra file.
    let (dir, checkpoint, _) = case("extra");
    let file = checkpoint.join("pages").join("0000000000000099_0000.pages");
    std::fs::write(&file, b"stray").unwrap();
    assert_corrupt(&dir, &file, "extra");

    // A missing file.
    let (dir, _, file) = case("missing");
    std::fs::remove_file(&file).unwrap();
    assert_corrupt(&dir, &file, "missing");

    // A damaged manifest.
    let (dir, checkpoint, _) = case("manifest");
    let file = checkpoint.join("manifest.bin");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5] ^= 4;
    std::fs::write(&file, &bytes).unwrap();
    assert_corrupt(&dir, &file, "checksum");

    // A checkpoint whose manifest is gone altogether.
    let (dir, checkpoint, _) = case("no-manifest");
    let file = checkpoint.join("manifest.bin");
    std::fs::remove_file(&file).unwrap();
    assert_corrupt(&dir, &file, "cannot be read");

    // The untouched copy still opens: the damage, not the copying, was refused.
    let (dir, _, _) = case("intact");
    open(&dir);
}

/// A checkpoint holds regular files only. A page file replaced by a symbolic link to an
/// identical copy outside the state directory (the manifest's checks all pass on it), a link in
/// place of `pages/`, or a checkpoint directory that is a link are refused at open, naming the
/// link: accepted, the state would depend on a path outside `--state-dir`, and the next
/// checkpoint would hard-link the link itself.
#[test]
fn a_symbolic_link_in_a_checkpoint_is_refused_naming_it() {
    use std::os::unix::fs::symlink;
    let (source, _) = populated_dir();
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let dir = work.path().join(name);
        copy_dir(source.path(), &dir);
        let checkpoint = checkpoint_dir(&dir);
        (dir, checkpoint)
    };

    let (dir, checkpoint) = case("page-file");
    let file = checkpoint.join("pages").join(&page_files(&checkpoint)[0].0);
    let copy = outside.path().join("copy.pages");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::remove_file(&file).unwrap();
    symlink(&copy, &file).unwrap();
    assert_corrupt(&dir, &file, "not a regular file");

    let (dir, checkpoint) = case("pages-dir");
    let pages = checkpoint.join("pages");
    let moved = outside.path().join("pages");
    copy_dir(&pages, &moved);
    std::fs::remove_dir_all(&pages).unwrap();
    symlink(&moved, &pages).unwrap();
    assert_corrupt(&dir, &pages, "not a regular file");

    let (dir, checkpoint) = case("checkpoint-dir");
    let moved = outside.path().join("checkpoint");
    copy_dir(&checkpoint, &moved);
    std::fs::remove_dir_all(&checkpoint).unwrap();
    symlink(&moved, &checkpoint).unwrap();
    assert_corrupt(&dir, &checkpoint, "not a directory");

    // The untouched copy still opens: the links, not the copying, were refused.
    let (dir, _) = case("intact");
    open(&dir);
}

#[test]
fn a_newer_format_is_refused_naming_the_file() {
    let (dir, _) = populated_dir();
    let file = checkpoint_dir(dir.path()).join("manifest.bin");
    make_writable(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    // The manifest starts with its version (a postcard varint: 1 is one byte) and ends with the
    // SHA-256 of everything before it.
    assert_eq!(bytes[0], 1);
    bytes[0] = 2;
    let body = bytes.len() - 32;
    let hash = sha256(&bytes[..body]);
    bytes[body..].copy_from_slice(&hash);
    std::fs::write(&file, &bytes).unwrap();
    match StateMachine::open(dir.path(), Config::default()) {
        Err(err @ StateManagerError::NewerFormat { found: 2, .. }) => {
            assert!(
                err.to_string().contains(&file.display().to_string()),
                "{err}"
            );
            assert!(err.to_string().contains("newer build"), "{err}");
        }
        other => panic!("expected a newer-format refusal, got {:?}", other.err()),
    }
}

// ---------------------------------------------------------------------------------------------
// Directory faults
// ---------------------------------------------------------------------------------------------

#[test]
fn a_locked_directory_is_refused_while_its_owner_lives() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    match StateMachine::open(dir.path(), Config::default()) {
        Err(err @ StateManagerError::Locked { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("in use by another process"), "{message}");
        }
        other => panic!("expected the lock to refuse, got {:?}", other.err()),
    }
    drop(first);
    open(dir.path());
}

#[test]
fn a_missing_parent_or_a_file_in_place_of_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-parent").join("state");
    let err = open_err(&missing);
    assert!(matches!(err, StateManagerError::Directory { .. }));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("does its parent exist"), "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = open_err(&file);
    assert!(err.to_string().contains("is not a directory"), "{err}");

    let stray = dir.path().join("stray");
    std::fs::create_dir_all(stray.join("checkpoints").join("not-a-height")).unwrap();
    let err = open_err(&stray);
    assert!(err.to_string().contains("not-a-height"), "{err}");
}

#[test]
fn an_unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(state.join("probe"), b"").is_ok() {
        // Running as root: permissions do not bind, and there is nothing to test here.
        eprintln!("skipped: permissions do not apply to this user");
        return;
    }
    let err = open_err(&state);
    assert!(
        err.to_string().contains(&state.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("writable"), "{err}");
}

/// Checkpoints `len` bytes of stable memory written with `fill` while `fault` (a test hook,
/// switched on and off) is on: the checkpoint must fail with a write error, remove `tip/` and
/// keep the previous checkpoint and the state in memory; with the fault off, the same work
/// checkpoints. Returns the error, for what is particular to the fault.
fn fails_and_keeps_the_previous_one(
    len: u64,
    fill: u8,
    fault: impl Fn(&mut StateManager, bool),
) -> StateManagerError {
    let (dir, checkpointed) = populated_dir();
    let mut sm = open(dir.path());
    let canister = canister_of(&sm);
    canister.fill(&mut sm, true, 0, len, fill);
    let in_memory = fingerprint(&sm);
    fault(sm.state_manager().unwrap(), true);
    let err = sm.checkpoint().unwrap_err();
    assert!(matches!(err, StateManagerError::Write { .. }), "{err}");
    assert!(
        err.to_string().contains("previous checkpoint is kept"),
        "{err}"
    );
    assert!(!dir.path().join("tip").exists());
    // Memory is unchanged, and so is the disk.
    assert_eq!(fingerprint(&sm), in_memory);
    fault(sm.state_manager().unwrap(), false);
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(fingerprint(&sm), checkpointed);
    // Without the fault, the same work checkpoints.
    canister.fill(&mut sm, true, 0, len, fill);
    sm.checkpoint().unwrap();
    assert_eq!(fingerprint(&sm), in_memory);
    err
}

#[test]
fn a_full_disk_fails_the_checkpoint_and_keeps_the_previous_one() {
    fails_and_keeps_the_previous_one(64 * 4096, 9, |manager, on| {
        manager.set_write_budget(on.then_some(10_000));
    });
}

/// A page file is `fdatasync`ed early, every 8 MiB, while it is written. An early flush that
/// fails (an I/O error, which Linux may not report to a second `fsync`) fails the checkpoint,
/// naming the file, and keeps the previous one; memory is unchanged.
#[test]
fn a_failed_early_flush_fails_the_checkpoint_and_keeps_the_previous_one() {
    // 12 MiB of pages: one page file, flushed early once.
    let err = fails_and_keeps_the_previous_one(12 << 20, 7, |manager, on| {
        manager.set_failing_early_flushes(on);
    });
    let StateManagerError::Write { file, .. } = &err else {
        panic!("not a write error: {err}");
    };
    assert_eq!(
        file.extension().and_then(|e| e.to_str()),
        Some("pages"),
        "{err}"
    );
    assert!(err.to_string().contains("input/output error"), "{err}");
}

/// The files in `merges/` (none if it is absent).
fn merge_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("merges"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The stable memory's stack of page files.
fn stable_stack(sm: &StateMachine) -> Vec<String> {
    let canister = sm.state().canisters.values().next().unwrap();
    stack_of(&canister.execution_state.as_ref().unwrap().stable_memory)
}

/// A checkpointed canister whose last checkpoint planned a merge of 64 pages (a base of 256
/// pages, then overlays of 32 and 64: the 32 is smaller than the 64 above it), written while
/// the disk has room for `budget` more bytes (`None`: no limit) from that checkpoint on.
fn a_merge_planned_on(budget: Option<u64>) -> (tempfile::TempDir, StateMachine, TestCanister) {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    for (pages, byte) in [(256, 1), (32, 2)] {
        canister.fill(&mut sm, true, 0, pages * 4096, byte);
        sm.checkpoint().unwrap();
    }
    sm.state_manager().unwrap().set_write_budget(budget);
    canister.fill(&mut sm, true, 0, 64 * 4096, 3);
    sm.checkpoint().unwrap();
    (dir, sm, canister)
}

/// Bytes of a page file of `pages` contiguous pages (`spec/durability.md`, version 3).
fn page_file_bytes(pages: u64) -> u64 {
    let groups = pages.div_ceil(128);
    pages * (4096 + 32) + (groups + groups.div_ceil(128)) * 32 + 16 + 32
}

/// A full disk (an injected write budget, shared by the checkpoints and the merge thread, and
/// given back when a file is removed): the background merge that does not fit removes what it
/// wrote (before, its partial file stayed in `merges/`, holding the room the next checkpoint
/// needed); the next checkpoint, which cannot fit the merge either, commits without it and says
/// so (before, it failed like every later one: the directory was locked); the state is the
/// same, and once there is room a later checkpoint merges.
#[test]
fn a_merge_that_does_not_fit_is_removed_and_left_out_of_the_checkpoint() {
    let merged = page_file_bytes(64);
    // Room for the last overlay (64 pages) and the records, not for the merge after it.
    let (dir, mut sm, canister) = a_merge_planned_on(Some(merged + merged / 2));
    let planned = stable_stack(&sm);
    assert_eq!(planned.len(), 3, "{planned:?}");
    sm.state_manager().unwrap().finish_merges();
    assert_eq!(merge_files(dir.path()), Vec::<String>::new());

    canister.write(&mut sm, true, 4096 * 300, b"one page");
    sm.checkpoint().unwrap();
    let left_out = sm.state_manager().unwrap().merges_left_out().to_vec();
    assert_eq!(left_out.len(), 1, "{left_out:?}");
    assert!(left_out[0].file.contains("_merge_"), "{left_out:?}");
    assert_eq!(left_out[0].page_bytes, (32 + 64) * 4096);
    // The stack is the planned one, unmerged, and the new overlay.
    let stack = stable_stack(&sm);
    assert_eq!(stack[..3], planned[..], "{stack:?}");
    assert_eq!(stack.len(), 4, "{stack:?}");
    assert!(!dir.path().join("tip").exists());
    let checkpointed = fingerprint(&sm);
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(fingerprint(&sm), checkpointed);
    assert_eq!(canister.read(&mut sm, true, 4096 * 300, 8), b"one page");
    assert_eq!(canister.read(&mut sm, true, 0, 1), [3]);

    // With room again, the next checkpoint merges.
    canister.write(&mut sm, true, 4096 * 301, b"more");
    sm.checkpoint().unwrap();
    assert!(sm.state_manager().unwrap().merges_left_out().is_empty());
    assert!(
        stable_stack(&sm).iter().any(|f| f.contains("_merge_")),
        "{:?}",
        stable_stack(&sm)
    );
}

/// A checkpoint that fits with its merges written but not with them is written again without
/// them: merges are an optimisation, and only the files it must write count.
#[test]
fn a_checkpoint_that_fits_only_without_its_merges_commits_without_them() {
    let merged = page_file_bytes(64);
    // The background merge fails (as above); then the disk has room for the merge, or for the
    // next overlay (32 pages) and the records, not both.
    let (dir, mut sm, canister) = a_merge_planned_on(Some(merged + merged / 2));
    sm.state_manager().unwrap().finish_merges();
    assert_eq!(merge_files(dir.path()), Vec::<String>::new());
    sm.state_manager()
        .unwrap()
        .set_write_budget(Some(merged + 4096));
    canister.fill(&mut sm, true, 4096 * 300, 32 * 4096, 4);
    sm.checkpoint().unwrap();
    assert_eq!(sm.state_manager().unwrap().merges_left_out().len(), 1);
    assert_eq!(stable_stack(&sm).len(), 4);
    let checkpointed = fingerprint(&sm);
    drop(sm);
    assert_eq!(fingerprint(&open(dir.path())), checkpointed);
}

// ---------------------------------------------------------------------------------------------
// Crash loop
// ---------------------------------------------------------------------------------------------

const CRASH_DIR_VAR: &str = "CANISTER_SNAPSHOTS_CRASH_CHILD_DIR";

/// One round of a workload that depends only on the round number, so that a replay in memory
/// reaches the same state as any run interrupted by crashes and resumed from checkpoints.
fn crash_workload_step(sm: &mut StateMachine) {
    let round = sm.state().round;
    if sm.state().canisters.is_empty() {
        install_new(sm, controller());
        return;
    }
    let canister = canister_of(sm);
    match round % 5 {
        0 => {
            let replace = sm
                .list_canister_snapshots(canister.id, Some(canister.sender))
                .unwrap()
                .pop()
                .map(|s| s.id);
            sm.take_canister_snapshot(canister.id, Some(canister.sender), replace)
                .unwrap();
        }
        1 => canister.fill(sm, true, (round * 13 % 200) * 4096, 8 * 4096, round as u8),
        _ => canister.write(sm, false, round * 4099 % (1 << 20), &round.to_le_bytes()),
    }
}

/// Not a test on its own: the child process of the crash loop, which executes and checkpoints
/// until it is killed.
#[test]
fn crash_loop_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_VAR) else {
        return;
    };
    let mut sm = open(Path::new(&dir));
    loop {
        crash_workload_step(&mut sm);
        sm.checkpoint().unwrap();
    }
}

#[test]
fn killed_at_random_points_the_state_is_the_last_completed_checkpoint() {
    let iterations: u64 = std::env::var("CRASH_LOOP_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    // The replay checkpoints after every step like the child: the heap delta a snapshot costs
    // depends on which pages are already in a checkpoint.
    let replay_dir = tempfile::tempdir().unwrap();
    let mut replay = open(replay_dir.path());
    let mut last_round = 0;
    // A fixed-seed generator: a failure is replayed by rerunning the test.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for iteration in 0..iterations {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_loop_child", "--test-threads=1"])
            .env(CRASH_DIR_VAR, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + seed % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let sm = open(dir.path());
        let round = sm.state().round;
        assert!(
            round >= last_round,
            "iteration {iteration}: went back from {last_round} to {round}"
        );
        while replay.state().round < round {
            crash_workload_step(&mut replay);
            replay.checkpoint().unwrap();
        }
        assert_eq!(
            fingerprint(&sm),
            fingerprint(&replay),
            "iteration {iteration}: the state at round {round} differs from its replay"
        );
        last_round = round;
    }
    assert!(last_round > 0, "the child never completed a checkpoint");
}

// ---------------------------------------------------------------------------------------------
// Power loss
// ---------------------------------------------------------------------------------------------

/// A checkpoint as its caller saw it return: the number of operations recorded by then, its
/// height and the state's fingerprint.
struct Ack {
    at: usize,
    height: u64,
    fingerprint: (Hash, Vec<Hash>),
}

/// The crash loop's workload for `checkpoints` checkpoints, its durability operations recorded,
/// reopening the directory after every fifth. The background work of each checkpoint (the older
/// checkpoint removed, the merges) is held until the checkpoint has returned and is then
/// finished, so the recording is the same on every run and a crash point replays.
fn recorded_workload(checkpoints: u64) -> (Recorded, Vec<Ack>) {
    let dir = tempfile::tempdir().unwrap();
    let recording = DiskRecording::start(dir.path());
    let mut sm = open(dir.path());
    let mut acks = Vec::new();
    for i in 0..checkpoints {
        sm.state_manager().unwrap().set_holding_merges(true);
        crash_workload_step(&mut sm);
        sm.checkpoint().unwrap();
        acks.push(Ack {
            at: recording.len(),
            height: sm.state().round,
            fingerprint: fingerprint(&sm),
        });
        sm.state_manager().unwrap().finish_merges();
        if i % 5 == 4 {
            drop(sm);
            sm = open(dir.path());
        }
    }
    drop(sm);
    (recording.recorded(), acks)
}

/// The order that `spec/durability.md` ("Writing a checkpoint") relies on, read from the
/// recorded operations: everything under `tip/` (files, merged files linked in, directories) is
/// synced before the rename that commits it; when `checkpoint` returns, the names that lead to
/// the checkpoint (`checkpoints/` in the state directory, the checkpoint in `checkpoints/`)
/// are synced too; and the removal of an older checkpoint or of the `unverified` marker is
/// followed by a sync of its directory before anything else is named in it.
#[test]
fn a_checkpoint_is_synced_before_its_rename_and_its_directory_after() {
    let (recorded, acks) = recorded_workload(12);
    let mut commits = 0;
    for (i, op) in recorded.ops.iter().enumerate() {
        let DiskOp::Rename {
            to_dir,
            to_name,
            node,
            ..
        } = op
        else {
            continue;
        };
        let before = Durability::at(&recorded, i);
        if before.lookup("checkpoints") != Some(*to_dir) {
            continue;
        }
        commits += 1;
        let lost = before.not_durable_under(*node);
        assert!(
            lost.is_empty(),
            "a power loss after the rename to checkpoints/{to_name} (operation {i}) loses: \
             {lost:#?}"
        );
    }
    assert_eq!(commits, acks.len(), "one rename per checkpoint");
    // Merged files written in the background are among those checked.
    assert!(
        recorded
            .ops
            .iter()
            .any(|op| matches!(op, DiskOp::Link { name, .. } if name.contains("_merge_"))),
        "no merged file was linked into a checkpoint"
    );
    for ack in &acks {
        let durable = Durability::at(&recorded, ack.at);
        let path = format!("checkpoints/{:016x}", ack.height);
        if let Err(e) = durable.path_is_durable(&path) {
            panic!("when checkpoint {} returned: {e}", ack.height);
        }
        let node = durable.lookup(&path).unwrap();
        let lost = durable.not_durable_under(node);
        assert!(
            lost.is_empty(),
            "when checkpoint {} returned: {lost:#?}",
            ack.height
        );
    }
    let (older, markers) = removals_are_synced(&recorded);
    assert!(older + 1 >= acks.len(), "{older} older checkpoints removed");
    assert!(markers > 0, "no unverified marker was removed");
    // An open that finds an older checkpoint beside the newest (a crash before the background
    // thread removed it) removes it, durably.
    let last = acks.last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    power_loss::crash(&recorded, last.at, Loss::UnsyncedBytes, dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .count(),
        2,
        "the crash state has no older checkpoint"
    );
    let recording = DiskRecording::start(dir.path());
    let sm = open(dir.path());
    assert_eq!(fingerprint(&sm), last.fingerprint);
    drop(sm);
    let (older, _) = removals_are_synced(&recording.recorded());
    assert_eq!(older, 1, "open did not remove the older checkpoint");
}

/// Checks that each removal of an older checkpoint (from `checkpoints/`) or of an `unverified`
/// marker is followed by a sync of its directory before anything else is named in it; returns
/// how many of each there were.
fn removals_are_synced(recorded: &Recorded) -> (usize, usize) {
    let (mut older, mut markers) = (0, 0);
    for (i, op) in recorded.ops.iter().enumerate() {
        let DiskOp::RemoveTree { dir, name, .. } = op else {
            continue;
        };
        if Durability::at(recorded, i).lookup("checkpoints") == Some(*dir) {
            older += 1;
        } else if name == "unverified" {
            markers += 1;
        } else {
            continue;
        }
        // The next operation on the directory's names, or its sync.
        let next = recorded.ops.iter().skip(i + 1).find(|op| match op {
            DiskOp::SyncDir { node } => node == dir,
            DiskOp::RemoveTree { .. } => false,
            other => other.dirs().contains(dir),
        });
        assert!(
            matches!(next, Some(DiskOp::SyncDir { .. })),
            "{name} removed from {} (operation {i}), then {next:?} before a sync of the \
             directory",
            recorded.path(*dir)
        );
    }
    (older, markers)
}

/// A power loss at any point of the recorded workload (`testing::power_loss`: what was not
/// synced is lost or torn) leaves a directory that opens without an error, at a checkpoint
/// that was written, with exactly that checkpoint's state, and no earlier than the last
/// checkpoint that had returned: the properties of the `kill -9` loop, for the page cache lost
/// as well. Every point is tried with everything unsynced lost and with only unsynced bytes
/// lost, and `POWER_LOSS_CRASHES` (default 100) points with seeded random losses, from
/// `POWER_LOSS_SEED`; a failure names its point and loss, which replay it.
#[test]
fn a_power_loss_at_any_point_keeps_the_last_acknowledged_checkpoint() {
    let (recorded, acks) = recorded_workload(12);
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let crashes = env("POWER_LOSS_CRASHES", 100);
    let mut seed = env("POWER_LOSS_SEED", 0x2026_1207);
    let len = recorded.ops.len();
    let mut points: Vec<(usize, Loss)> = (0..=len)
        .flat_map(|at| [(at, Loss::Unsynced), (at, Loss::UnsyncedBytes)])
        .collect();
    for _ in 0..crashes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        points.push(((seed % (len as u64 + 1)) as usize, Loss::Random(seed)));
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut opened, mut newer) = (0, 0);
    for (at, loss) in points {
        let dir = tempfile::tempdir().unwrap();
        let digest = power_loss::crash(&recorded, at, loss, dir.path()).unwrap();
        let acked = acks.iter().filter(|a| a.at <= at).map(|a| a.height).max();
        // The same directory is checked again only against a later acknowledgement.
        if !seen.insert((digest, acked)) {
            continue;
        }
        let sm = match StateMachine::open(dir.path(), Config::default()) {
            Ok(sm) => sm,
            Err(e) => panic!("power loss after operation {at} ({loss:?}): open failed: {e}"),
        };
        let round = sm.state().round;
        opened += 1;
        if let Some(acked) = acked {
            assert!(
                round >= acked,
                "power loss after operation {at} ({loss:?}): opened at round {round}, but \
                 checkpoint {acked} had returned"
            );
        }
        match acks.iter().find(|a| a.height == round) {
            Some(ack) => {
                newer += usize::from(Some(round) != acked);
                assert!(
                    fingerprint(&sm) == ack.fingerprint,
                    "power loss after operation {at} ({loss:?}): the state at round {round} \
                     differs from the checkpoint's"
                );
            }
            None => assert!(
                acked.is_none() && sm.state().canisters.is_empty(),
                "power loss after operation {at} ({loss:?}): opened at round {round}, which \
                 was never checkpointed"
            ),
        }
    }
    eprintln!(
        "{len} operations, {opened} distinct crash states opened, {newer} at a checkpoint \
         written but not yet returned"
    );
    assert!(
        newer > 0,
        "no crash state was between a commit and its return"
    );
}

#[test]
fn an_older_checkpoint_left_beside_the_newest_is_ignored_and_removed() {
    let (dir, _) = populated_dir();
    let older = checkpoint_dir(dir.path());
    let kept = dir.path().join("older-copy");
    copy_dir(&older, &kept);
    let mut sm = open(dir.path());
    let canister = canister_of(&sm);
    canister.write(&mut sm, true, 0, b"newer");
    sm.checkpoint().unwrap();
    let newest = fingerprint(&sm);
    drop(sm);
    // A crash between the commit of the newest and the removal of the older leaves both.
    std::fs::rename(&kept, &older).unwrap();
    let sm = open(dir.path());
    assert_eq!(fingerprint(&sm), newest);
    assert!(!older.exists());
}

#[test]
fn a_take_charges_the_heap_delta_of_pages_not_yet_in_a_checkpoint() {
    const LIMIT: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        heap_delta_rate_limit_bytes: LIMIT,
        ..Config::default()
    };
    let mut sm = StateMachine::open(dir.path(), config).unwrap();
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, 1 << 20, 1);
    for _ in 0..16 {
        sm.tick();
    }
    sm.checkpoint().unwrap();
    // 32 pages written since the checkpoint; the fill's round leaves exactly LIMIT to drain.
    canister.fill(&mut sm, true, 0, 2 * LIMIT, 2);
    let debit = |sm: &StateMachine| sm.state().canisters[&canister.id].heap_delta_debit;
    assert_eq!(debit(&sm), LIMIT);
    // A debit at the limit is refused (the replica compares with >=): one more round drains it.
    sm.tick();
    assert_eq!(debit(&sm), 0);
    sm.take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap();
    // The take charged the 32 unsaved pages (2 × LIMIT), not the 1 MiB the snapshot logically
    // holds (16 × LIMIT); its round drained one allowance.
    assert_eq!(debit(&sm), LIMIT);
}

/// Every page file of the last checkpoint: name → (inode, size).
fn page_inodes(dir: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(checkpoint_dir(dir).join("pages"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (meta.ino(), meta.len()),
            )
        })
        .collect()
}

/// The names of the page files under `memory`, oldest first.
fn stack_of(memory: &canister_snapshots::memory::Memory) -> Vec<String> {
    memory.page_map().base().map_or(vec![], |b| {
        b.files().iter().map(|f| f.name().to_string()).collect()
    })
}

#[test]
fn a_take_of_a_checkpointed_canister_adds_no_page_bytes_and_its_delete_frees_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, 256 * 4096, 3);
    sm.checkpoint().unwrap();
    let before = page_inodes(dir.path());

    // A take shares every page: the next checkpoint writes the snapshot's metadata only; its
    // page files are the very same inodes (hard links), none is added, none rewritten.
    let snapshot = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    sm.checkpoint().unwrap();
    assert_eq!(page_inodes(dir.path()), before);
    let stable_stacks = |sm: &StateMachine| {
        let state = sm.state();
        let live = &state.canisters[&canister.id]
            .execution_state
            .as_ref()
            .unwrap()
            .stable_memory;
        let snap = &state
            .snapshots
            .iter()
            .next()
            .unwrap()
            .content()
            .stable_memory;
        (stack_of(live), stack_of(snap))
    };
    let (live, snap) = stable_stacks(&sm);
    assert_eq!(live, snap);
    // The same after a restart: one mapping, shared.
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(page_inodes(dir.path()), before);
    assert_eq!(stable_stacks(&sm).0, stable_stacks(&sm).1);

    // The canister moves on: its next checkpoint adds one small overlay for itself only; the
    // snapshot keeps the base it shares, by the same inode.
    canister.write(&mut sm, true, 4096 * 7, b"after the take");
    sm.checkpoint().unwrap();
    let diverged = page_inodes(dir.path());
    for (name, inode) in &before {
        assert_eq!(diverged.get(name), Some(inode), "{name} was rewritten");
    }
    let added: Vec<_> = diverged
        .iter()
        .filter(|(name, _)| !before.contains_key(*name))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(added[0].1.1 < 2 * 4096, "{added:?}");

    // Deleting the snapshot frees nothing the canister still uses.
    sm.delete_canister_snapshot(canister.id, Some(canister.sender), snapshot.clone())
        .unwrap();
    sm.checkpoint().unwrap();
    assert_eq!(page_inodes(dir.path()), diverged);

    // A snapshot with pages of its own (written before the take, overwritten after it): its
    // overlay is freed with it, and only that.
    canister.write(&mut sm, true, 4096 * 9, b"only the snapshot keeps this");
    let snapshot = sm
        .take_canister_snapshot(canister.id, Some(canister.sender), None)
        .unwrap()
        .id;
    canister.write(&mut sm, true, 4096 * 9, b"the canister's own");
    sm.checkpoint().unwrap();
    let with_own = page_inodes(dir.path());
    let (live, snap) = stable_stacks(&sm);
    let own: Vec<&String> = snap.iter().filter(|f| !live.contains(f)).collect();
    assert_eq!(own.len(), 1, "{snap:?} vs {live:?}");
    let before_delete = fingerprint(&sm).0;
    sm.delete_canister_snapshot(canister.id, Some(canister.sender), snapshot)
        .unwrap();
    sm.checkpoint().unwrap();
    let after = page_inodes(dir.path());
    let mut expected = with_own.clone();
    expected.remove(own[0]);
    assert_eq!(after, expected);
    assert_ne!(fingerprint(&sm).0, before_delete);
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(
        canister.read(&mut sm, true, 4096 * 9, 18),
        b"the canister's own"
    );
}

/// Merges rewrite a memory's newest files into one; the files they replace may still be under
/// a snapshot. Across many checkpoints with snapshots taken and deleted, no file a memory
/// uses is ever removed (every snapshot reads back what it was taken with, before and after a
/// restart), every memory keeps at most `MAX_FILES_PER_MEMORY` files, and the directory holds
/// only files some memory uses: its size is bounded by the memories alive, not by history.
/// 200 checkpoints by default (about 15 s, most of it `fsync`); `MERGE_LOOP_CHECKPOINTS=1000`
/// runs the count, as CI does (`.ci/run`).
#[test]
fn merges_keep_the_files_snapshots_use_and_stay_bounded_across_many_checkpoints() {
    const PAGES: u64 = 64;
    const SNAPSHOTS: usize = 3;
    let checkpoints: u64 = std::env::var("MERGE_LOOP_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let config = Config {
        max_snapshots_per_canister: SNAPSHOTS,
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), config.clone()).unwrap();
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, PAGES * 4096, 1);
    sm.checkpoint().unwrap();
    let stable_of = |sm: &StateMachine, id: Option<&[u8]>| -> Vec<u8> {
        let state = sm.state();
        let memory = match id {
            None => {
                &state.canisters[&canister.id]
                    .execution_state
                    .as_ref()
                    .unwrap()
                    .stable_memory
            }
            Some(id) => {
                &state
                    .snapshots
                    .iter()
                    .find(|s| s.id().to_bytes() == id)
                    .unwrap()
                    .content()
                    .stable_memory
            }
        };
        assert!(memory.page_map().base().map_or(0, |b| b.files().len()) <= MAX_FILES_PER_MEMORY);
        memory.read_vec(0, memory.size_bytes()).unwrap()
    };
    // Each live snapshot with the stable memory it was taken with.
    let mut live: std::collections::VecDeque<(Vec<u8>, Vec<u8>)> = Default::default();
    let mut most_files = 0;
    for i in 0..checkpoints {
        // Pages written at a stride, so overlays of many sizes pile up and merge.
        for k in 0..1 + i % 5 {
            let page = (i * 37 + k * 11) % PAGES;
            canister.write(&mut sm, true, page * 4096 + k, &i.to_le_bytes());
        }
        if i % 7 == 3 {
            if live.len() == SNAPSHOTS {
                let (id, _) = live.pop_front().unwrap();
                sm.delete_canister_snapshot(canister.id, Some(canister.sender), id)
                    .unwrap();
            }
            let id = sm
                .take_canister_snapshot(canister.id, Some(canister.sender), None)
                .unwrap()
                .id;
            let bytes = stable_of(&sm, None);
            live.push_back((id, bytes));
        }
        if i % 13 == 5 && !live.is_empty() {
            let (id, _) = live.remove(live.len() / 2).unwrap();
            sm.delete_canister_snapshot(canister.id, Some(canister.sender), id)
                .unwrap();
        }
        sm.checkpoint().unwrap();
        // The files on disk are those of the memories alive: heap and stable memory of the
        // canister and of each snapshot, each within the bound.
        let files = page_files(&checkpoint_dir(dir.path()));
        most_files = most_files.max(files.len());
        assert!(
            files.len() <= 2 * MAX_FILES_PER_MEMORY * (1 + live.len()),
            "{} files with {} snapshots at checkpoint {i}",
            files.len(),
            live.len()
        );
        if i % 50 == 0 {
            for (id, bytes) in &live {
                assert!(
                    stable_of(&sm, Some(id)) == *bytes,
                    "snapshot {id:?} changed"
                );
            }
        }
    }
    let canister_bytes = stable_of(&sm, None);
    let before = fingerprint(&sm);
    drop(sm);
    let sm = StateMachine::open(dir.path(), config).unwrap();
    assert_eq!(fingerprint(&sm), before);
    assert!(stable_of(&sm, None) == canister_bytes);
    for (id, bytes) in &live {
        assert!(
            stable_of(&sm, Some(id)) == *bytes,
            "snapshot {id:?} changed"
        );
    }
    eprintln!("{checkpoints} checkpoints: at most {most_files} page files on disk");
}

/// What a run of [`merge_workload`] does between its checkpoints.
#[derive(Clone, Copy, Debug)]
enum Between {
    /// Nothing, with the background merges held until the next checkpoint: each checkpoint
    /// meets the merges of the one before still running, and waits for them.
    Nothing,
    /// Waits for the background merges, and checks that each one it wrote is linked into the
    /// next checkpoint.
    WaitForMerges,
    /// Reopens the directory after each checkpoint: the merges are planned again from the
    /// loaded checkpoint.
    Reopen,
    /// Deletes what the background thread wrote: the checkpoint must merge by itself.
    LoseMerges,
}

/// The last checkpoint's manifest, its page files, the state's fingerprint and how many merged
/// files the checkpoints took in.
type MergeRun = (Vec<u8>, Vec<(String, u64)>, (Hash, Vec<Hash>), usize);

/// 40 checkpoints of writes at a stride, so that overlays of many sizes pile up and merges
/// are planned at most of them.
fn merge_workload(between: Between) -> MergeRun {
    const PAGES: u64 = 48;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    if matches!(between, Between::Nothing) {
        sm.state_manager().unwrap().set_holding_merges(true);
    }
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, PAGES * 4096, 1);
    let (mut merged, mut snapshot) = (0, None);
    for i in 0..40u64 {
        for k in 0..1 + i % 6 {
            let page = (i * 29 + k * 7) % PAGES;
            canister.write(&mut sm, true, page * 4096 + k, &i.to_le_bytes());
        }
        if i % 9 == 4 {
            let taken = sm
                .take_canister_snapshot(canister.id, Some(canister.sender), snapshot.take())
                .unwrap();
            snapshot = Some(taken.id);
        }
        let mut written: Vec<String> = Vec::new();
        match between {
            Between::Nothing => assert!(
                i == 0 || sm.state_manager().unwrap().merges_pending(),
                "checkpoint {i}: the merges of the one before are not running"
            ),
            Between::WaitForMerges | Between::LoseMerges => {
                sm.state_manager().unwrap().finish_merges();
                assert!(!sm.state_manager().unwrap().merges_pending());
                if let Ok(entries) = std::fs::read_dir(dir.path().join("merges")) {
                    for entry in entries {
                        let path = entry.unwrap().path();
                        let name: String = path.file_name().unwrap().to_string_lossy().into();
                        // Merged files, not their progress records (`merges.rs`).
                        if name.ends_with(".pages") {
                            written.push(name);
                        }
                        if matches!(between, Between::LoseMerges) {
                            std::fs::remove_file(path).unwrap();
                        }
                    }
                }
            }
            Between::Reopen => {}
        }
        sm.checkpoint().unwrap();
        if matches!(between, Between::Reopen) {
            drop(sm);
            sm = open(dir.path());
        }
        let files = page_files(&checkpoint_dir(dir.path()));
        merged += files.iter().filter(|(n, _)| n.contains("_merge_")).count();
        if matches!(between, Between::WaitForMerges) {
            for name in &written {
                assert!(
                    files.iter().any(|(n, _)| n == name),
                    "{name}, merged in the background, is not in the next checkpoint"
                );
            }
        }
    }
    let checkpoint = checkpoint_dir(dir.path());
    let manifest = std::fs::read(checkpoint.join("manifest.bin")).unwrap();
    (manifest, page_files(&checkpoint), fingerprint(&sm), merged)
}

/// Merges are planned at a checkpoint and written in the background for the next one: the
/// files of every checkpoint are the same byte for byte whether the next checkpoint waited for
/// the merges, found them done, replanned them after a restart, or wrote them itself because
/// the background thread's work was lost.
#[test]
fn background_merges_give_the_same_checkpoints_whatever_their_timing_or_fate() {
    let (manifest, files, fingerprint, merged) = merge_workload(Between::Nothing);
    assert!(merged > 0, "the workload merged nothing");
    assert!(
        files.iter().any(|(n, _)| n.contains("_merge_")),
        "{files:?}"
    );
    for between in [Between::WaitForMerges, Between::Reopen, Between::LoseMerges] {
        let (other_manifest, other_files, other_fingerprint, other_merged) =
            merge_workload(between);
        assert_eq!(other_files, files, "{between:?}");
        assert!(
            other_manifest == manifest,
            "{between:?}: the manifests differ"
        );
        assert_eq!(other_fingerprint, fingerprint, "{between:?}");
        assert_eq!(other_merged, merged, "{between:?}");
    }
}

/// A crash while merges are being written leaves `merges/` behind: it is not part of any
/// checkpoint, and the next open removes it and loads the last checkpoint.
#[test]
fn unfinished_merges_left_by_a_crash_are_removed_at_open() {
    let (dir, checkpointed) = populated_dir();
    let merges = dir.path().join("merges");
    std::fs::create_dir_all(&merges).unwrap();
    std::fs::write(merges.join("0000000000000001_merge_0000.pages"), b"torn").unwrap();
    let sm = open(dir.path());
    assert_eq!(fingerprint(&sm), checkpointed);
    assert!(!merges.join("0000000000000001_merge_0000.pages").exists());
}

/// A page file larger than the early-flush interval (8 MiB: the state manager asks a second
/// thread to `fdatasync` it while the rest is written) is written whole: it reopens to the same
/// state and every byte reads back.
#[test]
fn a_page_file_flushed_early_while_written_reads_back_whole() {
    const LEN: u64 = 20 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path());
    let canister = install_new(&mut sm, controller());
    canister.fill(&mut sm, true, 0, LEN, 0x5C);
    canister.write(&mut sm, true, LEN - 9, b"last page");
    let recording = DiskRecording::start(dir.path());
    sm.checkpoint().unwrap();
    // Flushed early: an `fdatasync` of the largest file before its final `fsync`.
    let recorded = recording.recorded();
    let (&node, _) = recorded
        .contents
        .iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .unwrap();
    let early = recorded
        .ops
        .iter()
        .take_while(|op| !matches!(op, DiskOp::SyncFile { node: n, .. } if *n == node))
        .filter(|op| matches!(op, DiskOp::SyncData { node: n, .. } if *n == node))
        .count();
    assert!(early > 0, "{} was not flushed early", recorded.path(node));
    let largest = page_files(&checkpoint_dir(dir.path()))
        .into_iter()
        .map(|(_, size)| size)
        .max()
        .unwrap();
    assert!(largest > 2 * (8 << 20), "{largest} bytes");
    let before = fingerprint(&sm);
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(fingerprint(&sm), before);
    // In replies under the 2 MiB limit.
    let mut bytes = Vec::new();
    for offset in (0..LEN).step_by(1 << 20) {
        bytes.extend(canister.read(&mut sm, true, offset, 1 << 20));
    }
    assert!(bytes[..(LEN - 9) as usize].iter().all(|&b| b == 0x5C));
    assert_eq!(&bytes[(LEN - 9) as usize..], b"last page");
}

/// The inodes of the files under `dir` that this process has mapped (`/proc/self/maps`).
fn mapped_inodes_under(dir: &Path) -> std::collections::BTreeSet<u64> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|line| {
            // address perms offset device inode path
            let mut fields = line.split_whitespace();
            let inode = fields.nth(4)?.parse::<u64>().ok()?;
            fields
                .next()
                .is_some_and(|path| path.starts_with(&prefix))
                .then_some(inode)
        })
        .collect()
}

/// A committed checkpoint lets go of the one before it on the background thread (its
/// directory, the mappings of files nothing uses any more, the inputs of merges it took in),
/// off the checkpoint's time: all of it is gone once that thread is done, and when the
/// manager is dropped, so the directory never holds more than the last checkpoint and this
/// process maps no file that is not in it.
#[test]
fn a_committed_checkpoint_lets_go_of_the_one_before_it_in_the_background() {
    let (dir, _) = populated_dir();
    let mut sm = open(dir.path());
    let canister = canister_of(&sm);
    let checkpoints = |dir: &Path| -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs
    };
    for i in 0..8u64 {
        canister.write(&mut sm, true, (i % 3) * 4096, &i.to_le_bytes());
        sm.checkpoint().unwrap();
        sm.state_manager().unwrap().finish_merges();
        assert_eq!(checkpoints(dir.path()), vec![checkpoint_dir(dir.path())]);
        // The checkpoint's page files, and the merges written for the next one.
        let mut linked: std::collections::BTreeSet<u64> = page_inodes(dir.path())
            .into_values()
            .map(|(inode, _)| inode)
            .collect();
        if let Ok(merges) = std::fs::read_dir(dir.path().join("merges")) {
            use std::os::unix::fs::MetadataExt;
            linked.extend(merges.map(|e| e.unwrap().metadata().unwrap().ino()));
        }
        let mapped = mapped_inodes_under(dir.path());
        assert!(!mapped.is_empty(), "the checkpoint's page files are mapped");
        assert!(
            mapped.is_subset(&linked),
            "after checkpoint {i}, mapped {mapped:?}, in the checkpoint or merges {linked:?}"
        );
    }
    assert!(
        page_inodes(dir.path())
            .keys()
            .any(|n| n.contains("_merge_")),
        "the workload took in no merge, so no merge input was let go of"
    );
    canister.write(&mut sm, true, 0, b"last");
    sm.checkpoint().unwrap();
    let newest = checkpoint_dir(dir.path());
    drop(sm);
    assert_eq!(checkpoints(dir.path()), vec![newest]);
}

// ---------------------------------------------------------------------------------------------
// Merges across checkpoints and processes (issue 24.5)
// ---------------------------------------------------------------------------------------------

/// One command-line invocation on `dir` as `rs/cli` makes it (open, write, checkpoint, drop):
/// pages `first..first + count` of the stable memory get `(page, round)`. Returns the merge
/// pages its checkpoint wrote itself.
fn invocation(dir: &Path, first: u64, count: u64) -> u64 {
    let (mut manager, mut state) = StateManager::open(dir, 1).unwrap();
    let round = state.round + 1;
    let canister = state.canisters.values_mut().next().unwrap();
    let memory = &mut canister.execution_state.as_mut().unwrap().stable_memory;
    for page in first..first + count {
        let mut bytes = [0u8; 4096];
        bytes[..8].copy_from_slice(&page.to_le_bytes());
        bytes[8..16].copy_from_slice(&round.to_le_bytes());
        memory.write(page * 4096, &bytes).unwrap();
    }
    state.round = round;
    manager.checkpoint(&mut state).unwrap();
    manager.merge_pages_written()
}

/// A state larger than what each invocation writes, filled and then overwritten region after
/// region by invocations that are each a new process (a new `StateManager`) whose background
/// merges never run (held until the checkpoint, which stops them): every merge is written by
/// the checkpoints, a bounded amount each. Each checkpoint writes at most its credit of merges
/// (`MERGE_CREDIT_RATE` × its pages + the minimum credit), where before the one that took in a
/// base merge wrote all of it (the state's size); the merges that span invocations continue
/// where the last one stopped (their progress in `merges/`), every page reads back as last
/// written, and the files per memory stay bounded.
#[test]
fn each_invocation_merges_at_most_its_credit_and_merges_continue_across_processes() {
    use canister_snapshots::memory::{MAX_PAGES, Memory};
    use canister_snapshots::replicated_state::ReplicatedState;
    use canister_snapshots::state::{CanisterState, ExecutionState, WasmModule};
    use canister_snapshots::state_manager::MERGE_CREDIT_RATE;

    const WRITE: u64 = 8;
    const SIZE: u64 = 26 * WRITE;
    const MIN: u64 = 4;
    StateManager::set_merges_at_open(true, MIN);
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut manager, _) = StateManager::open(dir.path(), 1).unwrap();
        let mut state = ReplicatedState::new(1);
        let id = candid::Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
        let mut canister = CanisterState::new(id, Default::default(), 0);
        canister.execution_state = Some(ExecutionState {
            wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
            wasm_memory: Memory::new(),
            stable_memory: Memory::zeroed(SIZE * 4096, MAX_PAGES * 4096).unwrap(),
            exported_globals: vec![],
        });
        state.canisters.insert(id, canister);
        state.round = 1;
        manager.checkpoint(&mut state).unwrap();
    }
    let mut last = vec![0u64; SIZE as usize];
    let (mut spanned, mut largest) = (0, 0);
    for invocation_index in 0..3 * SIZE / WRITE {
        let first = invocation_index * WRITE % SIZE;
        let merged = invocation(dir.path(), first, WRITE);
        let round = invocation_index + 2;
        for page in first..first + WRITE {
            last[page as usize] = round;
        }
        largest = largest.max(merged);
        assert!(
            merged <= MERGE_CREDIT_RATE * WRITE + MIN,
            "invocation {invocation_index} merged {merged} pages for {WRITE} written"
        );
        let checkpoint = checkpoint_dir(dir.path());
        spanned += usize::from(checkpoint.join("merges.bin").exists());
        let files = page_files(&checkpoint).len();
        assert!(files <= 2 * MAX_FILES_PER_MEMORY, "{files} page files");
    }
    assert!(largest > 0, "the checkpoints merged");
    assert!(spanned > 0, "some merge spanned invocations");
    StateManager::set_merges_at_open(
        false,
        canister_snapshots::state_manager::MERGE_CREDIT_MIN_PAGES,
    );
    let (_manager, state) = StateManager::open(dir.path(), 1).unwrap();
    let memory = &state
        .canisters
        .values()
        .next()
        .unwrap()
        .execution_state
        .as_ref()
        .unwrap()
        .stable_memory;
    for (page, round) in last.iter().enumerate() {
        let mut bytes = [0u8; 16];
        memory.read(page as u64 * 4096, &mut bytes).unwrap();
        let expected = if *round == 0 {
            [0u64, 0]
        } else {
            [page as u64, *round]
        };
        assert_eq!(
            [
                u64::from_le_bytes(bytes[..8].try_into().unwrap()),
                u64::from_le_bytes(bytes[8..].try_into().unwrap())
            ],
            expected,
            "page {page}"
        );
    }
}

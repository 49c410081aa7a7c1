use super::*;
use crate::memory::{MAX_WASM_MEMORY_BYTES, WASM_PAGE_SIZE};
use std::collections::BTreeSet;

fn canister_with_code(heap_bytes: u64) -> CanisterState {
    let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
    let mut canister = CanisterState::new(id, BTreeSet::new(), 0);
    canister.execution_state = Some(ExecutionState {
        wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
        wasm_memory: Memory::zeroed(heap_bytes, MAX_WASM_MEMORY_BYTES).unwrap(),
        stable_memory: Memory::new(),
        exported_globals: vec![Global::I64(1), Global::I64(2)],
    });
    canister
}

fn heap(canister: &mut CanisterState) -> &mut Memory {
    &mut canister.execution_state.as_mut().unwrap().wasm_memory
}

#[test]
fn a_snapshot_is_unchanged_by_later_writes_and_restores_exactly() {
    let mut canister = canister_with_code(4 * WASM_PAGE_SIZE);
    heap(&mut canister)
        .fill(0, 4 * WASM_PAGE_SIZE, 0xAA)
        .unwrap();
    let mut store = SnapshotStore::new(1);
    let id = store.take(&mut canister, 42, None, None).unwrap();
    heap(&mut canister).fill(100, 10_000, 0x55).unwrap();
    let snapshot = store.get(canister.canister_id, &id).unwrap();
    assert_eq!(
        snapshot.content().wasm_memory.read_vec(100, 1).unwrap(),
        vec![0xAA]
    );
    assert_eq!(snapshot.taken_at_timestamp, 42);
    snapshot.restore_into(&mut canister);
    assert_eq!(heap(&mut canister).read_vec(100, 1).unwrap(), vec![0xAA]);
}

#[test]
fn quota_and_replace_follow_the_reference() {
    let mut canister = canister_with_code(WASM_PAGE_SIZE);
    let mut store = SnapshotStore::new(1);
    let first = store.take(&mut canister, 1, None, None).unwrap();
    let err = store.take(&mut canister, 2, None, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CanisterRejectedMessage);
    assert!(
        err.to_string()
            .contains("maximum number of snapshots allowed: 1")
    );
    let second = store.take(&mut canister, 3, Some(&first), None).unwrap();
    assert_eq!(
        second.local_id(),
        first.local_id() + 1,
        "ids are never reused"
    );
    assert_eq!(store.count(canister.canister_id), 1);
    let gone = store
        .take(&mut canister, 4, Some(&first), None)
        .unwrap_err();
    assert_eq!(gone.code(), ErrorCode::CanisterSnapshotNotFound);
}

#[test]
fn snapshots_of_another_canister_are_refused() {
    let mut a = canister_with_code(WASM_PAGE_SIZE);
    let mut store = SnapshotStore::new(2);
    let id = store.take(&mut a, 1, None, None).unwrap();
    let b = Principal::from_slice(&[9; 10]);
    let err = store.get(b, &id).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CanisterRejectedMessage);
    assert!(err.to_string().contains("does not belong to canister"));
}

#[test]
fn taking_a_snapshot_of_a_canister_without_code_fails() {
    let mut canister = canister_with_code(0);
    canister.execution_state = None;
    let mut store = SnapshotStore::new(1);
    let err = store.take(&mut canister, 1, None, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CanisterRejectedMessage);
    assert_eq!(canister.next_snapshot_id, 0);
}

#[test]
fn accounting_counts_logical_size_and_unique_pages() {
    let mut canister = canister_with_code(16 * WASM_PAGE_SIZE);
    heap(&mut canister).fill(0, 16 * WASM_PAGE_SIZE, 1).unwrap();
    let mut store = SnapshotStore::new(10);
    store.take(&mut canister, 1, None, None).unwrap();
    assert_eq!(store.unique_bytes(&canister), 0, "nothing diverged yet");
    heap(&mut canister).write(0, &[2]).unwrap();
    heap(&mut canister)
        .write(5 * PAGE_SIZE as u64, &[2])
        .unwrap();
    store.take(&mut canister, 2, None, None).unwrap();
    heap(&mut canister).write(0, &[3]).unwrap();
    // Snapshot 1 holds old pages 0 and 5; snapshot 2 holds its own page 0 (page 5 is shared
    // with live again).
    assert_eq!(store.unique_bytes(&canister), 3 * PAGE_SIZE as u64);
    // Module, heap, and two globals at `GLOBAL_SIZE_BYTES` each.
    let logical = 8 + 16 * WASM_PAGE_SIZE + 2 * crate::state::GLOBAL_SIZE_BYTES;
    assert_eq!(store.snapshots_size(canister.canister_id), 2 * logical);
}

#[test]
fn checksum_ignores_provenance_and_follows_content() {
    let mut canister = canister_with_code(WASM_PAGE_SIZE);
    let mut store = SnapshotStore::new(2);
    let a = store
        .take(&mut canister, 1, None, Some("a".into()))
        .unwrap();
    let b = store.take(&mut canister, 99, None, None).unwrap();
    let id = canister.canister_id;
    let checksum_a = store.get(id, &a).unwrap().checksum();
    assert_eq!(checksum_a, store.get(id, &b).unwrap().checksum());
    heap(&mut canister).write(7, &[1]).unwrap();
    let c = store.take(&mut canister, 1, Some(&a), None).unwrap();
    assert_ne!(store.get(id, &c).unwrap().checksum(), checksum_a);
}

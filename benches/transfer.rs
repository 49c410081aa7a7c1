//! Download and upload throughput through the full message path (Candid encoding and decoding,
//! one round per message), beside memcpy of the same bytes in the same run.
//!
//! `cargo bench --bench transfer`; `BENCH_QUICK=1` uses 256 MiB instead of 1 GiB.
//! Results: benches/README.md.

use std::cell::RefCell;
use std::hint::black_box;

use candid::{Encode, Principal};
use canister_snapshots::management::types::UploadCanisterSnapshotDataArgs;
use canister_snapshots::transfer::SLICE_BYTES;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ic_management_canister_types::{
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult, SnapshotDataKind,
    SnapshotDataOffset, UploadCanisterSnapshotMetadataArgs, UploadCanisterSnapshotMetadataResult,
};

fn size() -> u64 {
    if std::env::var_os("BENCH_QUICK").is_some() {
        256 << 20
    } else {
        1 << 30
    }
}

fn user() -> Principal {
    Principal::from_slice(&[0x42; 29])
}

/// A canister whose heap holds `size` bytes of varied data, and a snapshot of it.
fn setup(size: u64) -> (StateMachine, Principal, Vec<u8>) {
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    let canister = sm.create_canister_with_settings(Some(user()), None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user()));
    let mut offset = 0;
    let mut byte = 1u8;
    while offset < size {
        let len = (16u64 << 20).min(size - offset);
        let arg = Encode!(&offset, &len, &byte).unwrap();
        sm.update_call(canister, user(), "fill_heap", arg).unwrap();
        offset += len;
        byte = byte.wrapping_add(1).max(1);
    }
    while sm.state().canisters[&canister].heap_delta_debit
        >= sm.config().heap_delta_rate_limit_bytes
    {
        sm.tick();
    }
    let id = sm
        .take_canister_snapshot(canister, Some(user()), None)
        .unwrap()
        .id;
    (sm, canister, id)
}

/// Reads the whole heap of the snapshot through `read_canister_snapshot_data` into `out`.
fn download(sm: &mut StateMachine, canister: Principal, id: &[u8], out: &mut [u8]) {
    let size = out.len() as u64;
    let mut offset = 0;
    while offset < size {
        let len = SLICE_BYTES.min(size - offset);
        let args = ReadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: id.to_vec(),
            kind: SnapshotDataKind::WasmMemory { offset, size: len },
        };
        let (result,): (ReadCanisterSnapshotDataResult,) = sm
            .management(Some(user()), "read_canister_snapshot_data", (args,))
            .unwrap();
        out[offset as usize..(offset + len) as usize].copy_from_slice(&result.chunk);
        offset += len;
    }
}

/// Uploads `data` as the heap of a new uploaded snapshot (replacing `replace`); returns its id.
fn upload(
    sm: &mut StateMachine,
    canister: Principal,
    replace: Option<Vec<u8>>,
    data: &[u8],
) -> Vec<u8> {
    let args = UploadCanisterSnapshotMetadataArgs {
        canister_id: canister,
        replace_snapshot: replace,
        wasm_module_size: TEST_CANISTER_WASM.len() as u64,
        globals: vec![],
        wasm_memory_size: data.len() as u64,
        stable_memory_size: 0,
        certified_data: vec![],
        global_timer: None,
        on_low_wasm_memory_hook_status: None,
    };
    let (result,): (UploadCanisterSnapshotMetadataResult,) = sm
        .management(Some(user()), "upload_canister_snapshot_metadata", (args,))
        .unwrap();
    for (i, slice) in data.chunks(SLICE_BYTES as usize).enumerate() {
        let args = UploadCanisterSnapshotDataArgs {
            canister_id: canister,
            snapshot_id: result.snapshot_id.clone(),
            kind: SnapshotDataOffset::WasmMemory {
                offset: i as u64 * SLICE_BYTES,
            },
            chunk: slice.to_vec(),
        };
        sm.management::<()>(Some(user()), "upload_canister_snapshot_data", (args,))
            .unwrap();
    }
    result.snapshot_id
}

fn transfer(c: &mut Criterion) {
    let size = size();
    let (mut sm, canister, id) = setup(size);
    let mut group = c.benchmark_group(format!("transfer_{}MiB", size >> 20));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));

    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut buffer = vec![0u8; size as usize];
    group.bench_function("memcpy (baseline)", |b| {
        b.iter(|| {
            buffer.copy_from_slice(black_box(&source));
            black_box(&buffer);
        })
    });
    group.bench_function("download via read_canister_snapshot_data", |b| {
        b.iter(|| download(&mut sm, canister, &id, black_box(&mut buffer)))
    });
    // Deleting the previous upload (freeing its pages) happens in the untimed setup.
    let sm = RefCell::new(sm);
    let previous: RefCell<Option<Vec<u8>>> = RefCell::new(None);
    let delete_previous = || {
        if let Some(old) = previous.borrow_mut().take() {
            sm.borrow_mut()
                .delete_canister_snapshot(canister, Some(user()), old)
                .unwrap();
        }
    };
    group.bench_function("upload via upload_canister_snapshot_data", |b| {
        b.iter_batched(
            delete_previous,
            |()| {
                let id = upload(&mut sm.borrow_mut(), canister, None, black_box(&source));
                *previous.borrow_mut() = Some(id);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Full directory round trip through the harness (files, progress, checksum verification).
fn round_trip(c: &mut Criterion) {
    let size = size();
    let (mut sm, canister, id) = setup(size);
    let mut group = c.benchmark_group(format!("directory_{}MiB", size >> 20));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));
    let tmp = tempfile::tempdir().unwrap();
    group.bench_function("download_canister_snapshot (files + verify)", |b| {
        b.iter_batched(
            || {
                let dir = tmp.path().join("d");
                let _ = std::fs::remove_dir_all(&dir);
                dir
            },
            |dir| {
                sm.download_canister_snapshot(canister, Some(user()), id.clone(), &dir)
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    let dir = tmp.path().join("d");
    let sm = RefCell::new(sm);
    let previous: RefCell<Option<Vec<u8>>> = RefCell::new(None);
    group.bench_function("upload_canister_snapshot (files + verify)", |b| {
        b.iter_batched(
            || {
                if let Some(old) = previous.borrow_mut().take() {
                    sm.borrow_mut()
                        .delete_canister_snapshot(canister, Some(user()), old)
                        .unwrap();
                }
            },
            |()| {
                let id = sm
                    .borrow_mut()
                    .upload_canister_snapshot(canister, Some(user()), &dir, None)
                    .unwrap();
                *previous.borrow_mut() = Some(id);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, transfer, round_trip);
criterion_main!(benches);

// The IC replica allocates with jemalloc; so does this benchmark, like the binary.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

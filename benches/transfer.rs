//! Transfer throughput, each path beside its limit measured in the same run:
//!
//! - the message path (Candid encoding and decoding, 3 slices per round, as the transfer client
//!   does) beside memcpy of the same bytes;
//! - the directory path (files, progress, checksum verification) beside its limits on the same
//!   bytes: for the download, which writes and syncs files, a sequential `std::fs` write with
//!   `fsync`; for the upload, which writes nothing to disk (it reads the files, hashes them and
//!   builds pages in memory), SHA-256 of the 4 KiB pages on all cores (and on one) and memcpy;
//! - the replica's share of an upload's verification, the checksum of the new pages, on all
//!   cores and on one thread.
//!
//! Then, outside criterion, the peak extra resident memory of one directory download and one
//! upload (`VmHWM` after resetting it through `/proc/self/clear_refs`).
//!
//! `cargo bench --bench transfer` uses 256 MiB; `BENCH_TRANSFER_MIB=1024` uses 1 GiB; without
//! `--bench` (`cargo test --benches`) each runs once at 16 MiB. Every figure is in-process.
//! Results: benches/README.md.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::Write;

use candid::{Encode, Principal};
use canister_snapshots::client::{ManagementClient, decode_reply_one};
use canister_snapshots::management::types::{
    ReadCanisterSnapshotDataResultRef, UploadCanisterSnapshotDataArgsRef,
};
use canister_snapshots::memory::Memory;
use canister_snapshots::memory::checksum::sha256;
use canister_snapshots::transfer::{PARALLEL_SLICES, SLICE_BYTES};
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ic_management_canister_types::{
    ReadCanisterSnapshotDataArgs, SnapshotDataKind, SnapshotDataOffset,
    UploadCanisterSnapshotMetadataArgs, UploadCanisterSnapshotMetadataResult,
};
use rayon::prelude::*;

fn size() -> u64 {
    // `cargo test --benches` runs each benchmark once, in a debug build: a smoke test.
    if !std::env::args().any(|a| a == "--bench") {
        return 16 << 20;
    }
    std::env::var("BENCH_TRANSFER_MIB")
        .ok()
        .and_then(|mib| mib.parse::<u64>().ok())
        .unwrap_or(256)
        << 20
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

/// Reads the whole heap of the snapshot through `read_canister_snapshot_data` into `out`, as
/// the transfer client does: 3 slices per round, each reply decoded borrowed.
fn download(sm: &mut StateMachine, canister: Principal, id: &[u8], out: &mut [u8]) {
    let size = out.len() as u64;
    let mut offset = 0;
    while offset < size {
        let slices: Vec<(u64, u64)> = (0..PARALLEL_SLICES as u64)
            .map(|i| offset + i * SLICE_BYTES)
            .filter(|&at| at < size)
            .map(|at| (at, SLICE_BYTES.min(size - at)))
            .collect();
        let calls = slices
            .iter()
            .map(|&(at, len)| {
                let args = ReadCanisterSnapshotDataArgs {
                    canister_id: canister,
                    snapshot_id: id.to_vec(),
                    kind: SnapshotDataKind::WasmMemory {
                        offset: at,
                        size: len,
                    },
                };
                ("read_canister_snapshot_data", Encode!(&args).unwrap())
            })
            .collect();
        for (&(at, len), reply) in slices.iter().zip(sm.update_calls(user(), calls)) {
            let reply = reply.unwrap();
            let data: ReadCanisterSnapshotDataResultRef<'_> = decode_reply_one(&reply).unwrap();
            out[at as usize..(at + len) as usize].copy_from_slice(data.chunk);
            offset = at + len;
        }
    }
}

/// Uploads `data` as the heap of a new uploaded snapshot, as the transfer client does: each
/// slice encoded from `data`, 3 per round. Returns its id.
fn upload(sm: &mut StateMachine, canister: Principal, data: &[u8]) -> Vec<u8> {
    let args = UploadCanisterSnapshotMetadataArgs {
        canister_id: canister,
        replace_snapshot: None,
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
    let slices: Vec<(usize, &[u8])> = data.chunks(SLICE_BYTES as usize).enumerate().collect();
    for group in slices.chunks(PARALLEL_SLICES) {
        let calls = group
            .iter()
            .map(|&(i, slice)| {
                let args = UploadCanisterSnapshotDataArgsRef {
                    canister_id: canister,
                    snapshot_id: serde_bytes::Bytes::new(&result.snapshot_id),
                    kind: SnapshotDataOffset::WasmMemory {
                        offset: i as u64 * SLICE_BYTES,
                    },
                    chunk: serde_bytes::Bytes::new(slice),
                };
                ("upload_canister_snapshot_data", Encode!(&args).unwrap())
            })
            .collect();
        for answer in sm.update_calls(user(), calls) {
            answer.unwrap();
        }
    }
    result.snapshot_id
}

/// The limits of the directory path on this machine, on the same bytes: a sequential write
/// with `fsync` (the download's: it writes and syncs files), and SHA-256 of the 4 KiB pages on
/// one core and on all cores and memcpy (the upload's: it writes nothing to disk, and hashes
/// every byte, on the client and again on the replica).
fn limits(c: &mut Criterion) {
    let size = size();
    let mut group = c.benchmark_group(format!("limits_{}MiB", size >> 20));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));
    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = vec![0u8; size as usize];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            buffer.copy_from_slice(black_box(&source));
            black_box(&buffer);
        })
    });
    drop(buffer);
    group.bench_function("std::fs write + fsync (disk limit)", |b| {
        b.iter_batched(
            || {
                let path = tmp.path().join("f");
                let _ = std::fs::remove_file(&path);
                path
            },
            |path| {
                let mut file = std::fs::File::create(&path).unwrap();
                for block in source.chunks(SLICE_BYTES as usize) {
                    file.write_all(block).unwrap();
                }
                file.sync_all().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("SHA-256 of 4 KiB pages, one core", |b| {
        b.iter(|| {
            for page in black_box(&source).chunks(4096) {
                black_box(sha256(page));
            }
        })
    });
    group.bench_function("SHA-256 of 4 KiB pages, all cores", |b| {
        b.iter(|| {
            black_box(&source)
                .par_chunks(4096)
                .with_min_len(16)
                .for_each(|page| {
                    black_box(sha256(page));
                })
        })
    });
    group.finish();
}

/// The replica's part of a directory upload's verification: the checksum of a memory whose
/// pages are all new (`PageMap`'s cached Merkle hash, as the final metadata read computes it),
/// on rayon's pool of all cores and on a pool of one thread (how it ran before the rehash was
/// parallelised). Beside `limits`' SHA-256 of the same bytes' pages.
fn replica_rehash(c: &mut Criterion) {
    let size = size();
    let source: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group(format!("replica_{}MiB", size >> 20));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));
    // Hashing is timed; writing the pages (and freeing them) is not.
    let uploaded = || {
        let mut memory = Memory::zeroed(size, size).unwrap();
        memory.write(0, &source).unwrap();
        memory
    };
    group.bench_function("checksum of new pages (PageMap), all cores", |b| {
        b.iter_batched(
            uploaded,
            |memory| {
                black_box(memory.root_hash());
                memory
            },
            BatchSize::PerIteration,
        )
    });
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    group.bench_function("checksum of new pages (PageMap), one thread", |b| {
        b.iter_batched(
            uploaded,
            |memory| {
                black_box(one_thread.install(|| memory.root_hash()));
                memory
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
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
                let id = upload(&mut sm.borrow_mut(), canister, black_box(&source));
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

/// Peak resident memory above the level before `f`, in bytes: `VmHWM` after resetting it to the
/// current resident size (`clear_refs` 5). `None` where `/proc` does not offer it.
fn peak_extra(f: impl FnOnce()) -> Option<u64> {
    let status = |field: &str| -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib << 10)
    };
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status("VmRSS:")?;
    f();
    Some(status("VmHWM:")?.saturating_sub(before))
}

/// One directory download and one upload, outside criterion, with their peak extra memory.
/// The upload's new snapshot holds `size / 4096` new pages in the replica: that is the
/// snapshot, not transfer memory. Each is an `Arc<Page>` of 4096 + 16 bytes, which jemalloc
/// serves from its 5 KiB size class; that much is subtracted.
fn memory(_: &mut Criterion) {
    let size = size();
    let (mut sm, canister, id) = setup(size);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let download = peak_extra(|| {
        sm.download_canister_snapshot(canister, Some(user()), id.clone(), &dir)
            .unwrap()
    });
    let upload = peak_extra(|| {
        sm.upload_canister_snapshot(canister, Some(user()), &dir, None)
            .unwrap();
    });
    let new_pages = size / 4096 * 5120;
    let mib = |bytes: Option<u64>| match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        None => "not measurable here".to_string(),
    };
    println!(
        "peak extra resident memory, {} MiB transfer (in-process; limit 64 MiB): directory \
         download {}; directory upload {} ({} in all, less {} for the new snapshot's pages)",
        size >> 20,
        mib(download),
        mib(upload.map(|b| b.saturating_sub(new_pages))),
        mib(upload),
        mib(Some(new_pages)),
    );
}

// `memory` first: later groups leave freed memory resident in the allocator, which would hide
// what a transfer allocates.
criterion_group!(
    benches,
    memory,
    transfer,
    limits,
    replica_rehash,
    round_trip
);
criterion_main!(benches);

// The IC replica allocates with jemalloc; so does this benchmark, like the binary.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

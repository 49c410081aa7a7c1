//! Page-copy benchmarks: what snapshots cost next to the naive way and the physical limit.
//!
//! Every group puts our operation beside baselines computed in the same run, so that the ratios
//! in `benches/README.md` hold on a noisy, shared 2-core machine:
//!
//! - `take_load_messages/<size>`: `take_canister_snapshot` and `load_canister_snapshot` through
//!   the harness (Candid, checks, charge, heap delta, one round each), what a user's call costs,
//!   on a canister whose heap has every page written and none checkpointed, at 16 MiB, 1 GiB
//!   and 4 GiB. The baseline is the 16 MiB row: the promise is that size does not matter.
//! - `take_load/<size>`: the store alone (`SnapshotStore::take`, `CanisterSnapshot::restore_into`)
//!   on the same kind of canister, beside a `Vec<u8>` clone of the same bytes (the naive way)
//!   and a memcpy of them into a pre-allocated, already-touched buffer (the physical limit).
//! - `cow_first_write`: the first one-byte write to a page shared with a snapshot, per page,
//!   beside allocating 4 KiB and copying a page into it.
//! - `range_1MiB`: `Memory::read` / `Memory::write` of 1 MiB, aligned and not, beside memcpy.
//! - `checksum_1pct/<size>`: `Memory::root_hash` after 1% of the pages changed, beside raw SHA-256
//!   over just the changed bytes.
//!
//! Environment:
//! - `BENCH_SKIP=1`: build only; the binary exits at once (for CI's `cargo bench`).
//! - `BENCH_QUICK=1`: take/load at 16 MiB and 256 MiB only (through messages: 16 MiB and
//!   1 GiB), checksum over 256 MiB.
//! - Without `--bench` (`cargo test --benches`, `cargo test --all-targets`) criterion runs each
//!   benchmark once as a smoke test; sizes are then cut to 16 MiB.
//!
//! Memory: the 4 GiB group builds its baselines first (source + clone, or source + warm
//! buffer: 8 GiB at most), frees them, then builds the 4 GiB heap (~4.1 GiB). Peak stays
//! under ~9 GiB.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use candid::Principal;
use canister_snapshots::memory::{MAX_WASM_MEMORY_BYTES, Memory, PAGE_SIZE};
use canister_snapshots::snapshots::SnapshotStore;
use canister_snapshots::state::{CanisterState, ExecutionState, Global, WasmModule};
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use common::Scale;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use sha2::{Digest, Sha256};

mod common;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = PAGE_SIZE as u64;

fn main() {
    let Some(scale) = Scale::from_env("page_copy") else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    range_1mib(&mut c);
    cow_first_write(&mut c);
    checksum_after_dirtying_1pct(&mut c, scale);
    take_and_load_messages(&mut c, scale);
    take_and_load(&mut c, scale);
    c.final_summary();
}

// ------------------------------------------------------------------------------------------
// Shared builders

/// Byte `i` of the reference image, written a 64-bit word at a time: deterministic and not
/// compressible, so no page is all zeros. `offset` and `buf.len()` are multiples of 8.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    debug_assert!(offset.is_multiple_of(8) && buf.len().is_multiple_of(8));
    let first_word = offset / 8;
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let w = (first_word + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
        word.copy_from_slice(&w.to_le_bytes());
    }
}

/// The reference image as a flat vector (the naive representation).
fn patterned_vec(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    fill_pattern(&mut v, 0);
    v
}

/// The same image as a `Memory`: every page written.
fn patterned_memory(size: u64) -> Memory {
    let mut memory = Memory::zeroed(size, MAX_WASM_MEMORY_BYTES).expect("size within the limit");
    let chunk_len = size.min(4 * MIB);
    let mut chunk = vec![0u8; chunk_len as usize];
    let mut offset = 0;
    while offset < size {
        fill_pattern(&mut chunk, offset);
        memory.write(offset, &chunk).expect("in bounds");
        offset += chunk_len;
    }
    memory
}

fn canister_with_heap(heap: Memory) -> CanisterState {
    let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
    let mut canister = CanisterState::new(id, BTreeSet::new(), 0);
    canister.execution_state = Some(ExecutionState {
        wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
        wasm_memory: heap,
        stable_memory: Memory::new(),
        exported_globals: vec![Global::I64(1), Global::I32(2)],
    });
    canister.certified_data = vec![7; 32];
    canister
}

fn label(size: u64) -> String {
    if size >= GIB {
        format!("{}GiB", size / GIB)
    } else {
        format!("{}MiB", size / MIB)
    }
}

/// Settings for a benchmark whose one iteration takes about `per_iter` (a slow baseline):
/// flat sampling, ten samples of one iteration or a few.
fn slow_settings(group: &mut BenchmarkGroup<'_, WallTime>, per_iter: Duration) {
    let measurement = (per_iter * 12).max(Duration::from_secs(3));
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measurement);
}

/// Settings for a fast benchmark (ns to µs per iteration).
fn fast_settings(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sampling_mode(SamplingMode::Auto)
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

// ------------------------------------------------------------------------------------------
// take and load through messages

/// A machine with one test canister whose heap is `size` bytes, every page written and none
/// checkpointed (an in-memory machine never checkpoints): what a take or load would walk if
/// it walked. The heap-delta rate limit is lifted so that back-to-back takes are not refused.
fn machine_with_heap(size: u64) -> (StateMachine, Principal, Principal) {
    let controller = Principal::from_slice(&[0xC0, 1]);
    let mut sm = StateMachine::with_config(Config {
        heap_delta_rate_limit_bytes: u64::MAX,
        ..Config::default()
    });
    let id = sm.create_canister_with_settings(Some(controller), None);
    sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller));
    let state = sm.state_mut();
    let before = state.footprint(id);
    let canister = state.canisters.get_mut(&id).expect("just created");
    canister.cycles = u128::MAX / 2;
    canister
        .execution_state
        .as_mut()
        .expect("installed")
        .wasm_memory = patterned_memory(size);
    let after = state.footprint(id);
    state.account(before, after);
    (sm, id, controller)
}

fn take_and_load_messages(c: &mut Criterion, scale: Scale) {
    let sizes: &[u64] = match scale {
        Scale::Smoke => &[16 * MIB],
        Scale::Quick => &[16 * MIB, GIB],
        Scale::Full => &[16 * MIB, GIB, 4 * GIB],
    };
    for &size in sizes {
        let mut group = c.benchmark_group(format!("take_load_messages/{}", label(size)));
        fast_settings(&mut group);
        let mut machine: Option<(StateMachine, Principal, Principal)> = None;
        // Each take is timed alone: the previous snapshot (from this or an earlier call of the
        // routine: warm-up, then measurement) is deleted, untimed, before it.
        let mut last: Option<Vec<u8>> = None;
        group.bench_function("take", |b| {
            let (sm, id, controller) = machine.get_or_insert_with(|| machine_with_heap(size));
            let (id, controller) = (*id, Some(*controller));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if let Some(snapshot) = last.take() {
                        sm.delete_canister_snapshot(id, controller, snapshot)
                            .expect("delete");
                    }
                    let start = Instant::now();
                    let taken = sm
                        .take_canister_snapshot(id, controller, None)
                        .expect("take");
                    total += start.elapsed();
                    last = Some(taken.id);
                }
                total
            })
        });
        group.bench_function("load", |b| {
            let (sm, id, controller) = machine.get_or_insert_with(|| machine_with_heap(size));
            let (id, controller) = (*id, Some(*controller));
            let snapshot = match sm
                .list_canister_snapshots(id, controller)
                .expect("list")
                .pop()
            {
                Some(snapshot) => snapshot.id,
                None => {
                    sm.take_canister_snapshot(id, controller, None)
                        .expect("take")
                        .id
                }
            };
            // After the first load the canister shares its pages with the snapshot, as after
            // a take with no write since: dropping its old memories is O(1).
            b.iter(|| {
                sm.load_canister_snapshot(id, controller, snapshot.clone())
                    .expect("load")
            })
        });
        drop(machine);
        group.finish();
    }
}

// ------------------------------------------------------------------------------------------
// take and load on the store

fn take_and_load(c: &mut Criterion, scale: Scale) {
    let sizes: &[u64] = match scale {
        Scale::Smoke => &[16 * MIB],
        Scale::Quick => &[16 * MIB, 256 * MIB],
        Scale::Full => &[16 * MIB, 256 * MIB, GIB, 4 * GIB],
    };
    for &size in sizes {
        let mut group = c.benchmark_group(format!("take_load/{}", label(size)));
        group.throughput(Throughput::Bytes(size));

        // Baselines first, and freed before the heap is built, to keep the peak low.
        // A fresh-page clone runs at ~1 GB/s here; a warm memcpy at ~10 GB/s.
        let mut src: Option<Vec<u8>> = None;
        slow_settings(&mut group, Duration::from_secs_f64(size as f64 / 1.0e9));
        group.bench_function("naive_vec_clone", |b| {
            let src = src.get_or_insert_with(|| patterned_vec(size));
            b.iter_batched(|| (), |()| src.clone(), BatchSize::PerIteration)
        });
        let mut dst: Option<Vec<u8>> = None;
        slow_settings(&mut group, Duration::from_secs_f64(size as f64 / 8.0e9));
        group.bench_function("memcpy_warm", |b| {
            let src = src.get_or_insert_with(|| patterned_vec(size));
            // Filled with a non-zero byte so every page is touched before timing.
            let dst = dst.get_or_insert_with(|| vec![1u8; size as usize]);
            b.iter(|| {
                dst.copy_from_slice(src);
                black_box(dst.as_ptr());
            })
        });
        drop(src);
        drop(dst);

        // Ours: O(1) clones of the memories, whatever their size.
        let mut canister: Option<CanisterState> = None;
        fast_settings(&mut group);
        group.bench_function("take", |b| {
            let canister =
                canister.get_or_insert_with(|| canister_with_heap(patterned_memory(size)));
            b.iter_batched(
                || (SnapshotStore::new(1), canister.clone()),
                |(mut store, mut canister)| {
                    let id = store.take(&mut canister, 1, None, None).expect("room");
                    (store, canister, id)
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function("load", |b| {
            let canister =
                canister.get_or_insert_with(|| canister_with_heap(patterned_memory(size)));
            let mut store = SnapshotStore::new(1);
            let mut source = canister.clone();
            let id = store.take(&mut source, 1, None, None).expect("room");
            let snapshot = store.get(source.canister_id, &id).expect("just taken");
            // The canister to load into shares its pages with the snapshot (as after a take
            // with no write since), so dropping its old state inside the timing is O(1).
            b.iter_batched(
                || canister.clone(),
                |mut target| {
                    snapshot.restore_into(&mut target);
                    target
                },
                BatchSize::LargeInput,
            )
        });
        drop(canister);
        group.finish();
    }
}

// ------------------------------------------------------------------------------------------
// copy-on-write fault

/// Pages written per timed run; the time reported is per page.
const COW_PAGES: u64 = 1024;

fn cow_first_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("cow_first_write");
    group.throughput(Throughput::Bytes(PAGE));
    fast_settings(&mut group);

    // 16 Ki pages (64 MiB), every page written. "Scattered" writes one page in 16, i.e. one page
    // per level-1 node: every write also copies its level-1 node (the worst case for path
    // copying). "Contiguous" writes 1024 neighbouring pages: 16 per level-1 node. The base is
    // hashed once, as a memory is after a state hash or a snapshot checksum, so the copied
    // nodes carry full hash caches; the `_never_hashed` variant copies nodes with empty caches.
    // Two separate builds: a clone would share the nodes, and so the caches.
    let never_hashed = patterned_memory(COW_PAGES * 16 * PAGE);
    let hashed = patterned_memory(COW_PAGES * 16 * PAGE);
    black_box(hashed.root_hash());
    let contiguous: Vec<u64> = (0..COW_PAGES).collect();
    let scattered: Vec<u64> = (0..COW_PAGES).map(|i| i * 16).collect();

    for (name, base, pages) in [
        ("ours_contiguous", &hashed, &contiguous),
        ("ours_scattered", &hashed, &scattered),
        ("ours_scattered_never_hashed", &never_hashed, &scattered),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    // A snapshot's worth of sharing: every page of `live` is shared with `base`.
                    let mut live = base.clone();
                    let byte = [i as u8];
                    let start = Instant::now();
                    for &page in pages {
                        live.write(page * PAGE + 1, &byte).expect("in bounds");
                    }
                    total += start.elapsed();
                    drop(black_box(live));
                }
                total / COW_PAGES as u32
            })
        });
    }

    // Baseline: a fresh 4 KiB allocation and a copy of one page into it, the same number of
    // times, keeping every copy alive until the end of the run (as the copied pages are).
    let source = patterned_vec(COW_PAGES * PAGE);
    group.bench_function("raw_alloc_copy_4k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut copies: Vec<Box<[u8]>> = Vec::with_capacity(COW_PAGES as usize);
                let start = Instant::now();
                for page in source.chunks_exact(PAGE_SIZE) {
                    copies.push(Box::from(page));
                }
                total += start.elapsed();
                drop(black_box(copies));
            }
            total / COW_PAGES as u32
        })
    });
    group.finish();
}

// ------------------------------------------------------------------------------------------
// range reads and writes

fn range_1mib(c: &mut Criterion) {
    const LEN: usize = MIB as usize;
    let mut group = c.benchmark_group("range_1MiB");
    group.throughput(Throughput::Bytes(LEN as u64));
    fast_settings(&mut group);

    let mut memory = patterned_memory(64 * MIB);
    let aligned = 8 * MIB;
    let unaligned = 8 * MIB + 123;
    let mut buf = vec![1u8; LEN];

    group.bench_function("read_aligned", |b| {
        b.iter(|| {
            memory.read(aligned, &mut buf).expect("in bounds");
            black_box(buf.as_ptr());
        })
    });
    group.bench_function("read_unaligned", |b| {
        b.iter(|| {
            memory.read(unaligned, &mut buf).expect("in bounds");
            black_box(buf.as_ptr());
        })
    });

    let data = patterned_vec(LEN as u64);
    group.bench_function("write_aligned", |b| {
        b.iter(|| memory.write(aligned, black_box(&data)).expect("in bounds"))
    });
    group.bench_function("write_unaligned", |b| {
        b.iter(|| {
            memory
                .write(unaligned, black_box(&data))
                .expect("in bounds")
        })
    });
    // Writes into a memory whose pages are all shared with a snapshot (copy on write).
    group.bench_function("write_aligned_shared", |b| {
        b.iter_batched(
            || memory.clone(),
            |mut live| {
                live.write(aligned, &data).expect("in bounds");
                live
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("write_unaligned_shared", |b| {
        b.iter_batched(
            || memory.clone(),
            |mut live| {
                live.write(unaligned, &data).expect("in bounds");
                live
            },
            BatchSize::PerIteration,
        )
    });

    // Baseline: memcpy of 1 MiB between two warm buffers.
    let mut dst = vec![1u8; LEN];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(dst.as_ptr());
        })
    });
    group.finish();
}

// ------------------------------------------------------------------------------------------
// checksum after dirtying 1%

fn checksum_after_dirtying_1pct(c: &mut Criterion, scale: Scale) {
    let size = match scale {
        Scale::Smoke => 16 * MIB,
        Scale::Quick => 256 * MIB,
        Scale::Full => GIB,
    };
    let pages = size / PAGE;
    let dirty = pages / 100;
    let mut group = c.benchmark_group(format!("checksum_1pct/{}", label(size)));
    group.throughput(Throughput::Bytes(dirty * PAGE));
    fast_settings(&mut group);

    let memory = RefCell::new(patterned_memory(size));
    // Warm every cached hash: from now on only dirtied paths are rehashed.
    black_box(memory.borrow().root_hash());

    // Scattered: every 100th page, the phase moving by one each iteration.
    // Contiguous: `dirty` neighbouring pages, the start moving each iteration.
    let scattered = |round: u64| (0..dirty).map(move |k| k * 100 + round % 100);
    let contiguous = |round: u64| (0..dirty).map(move |k| (round * dirty) % (pages - dirty) + k);

    // Dirtying happens in the setup, untimed; only `root_hash` is timed.
    let mut round = 0u64;
    group.bench_function("root_hash_scattered", |b| {
        b.iter_batched(
            || {
                round += 1;
                let mut memory = memory.borrow_mut();
                for page in scattered(round) {
                    memory
                        .write(page * PAGE + 64, &round.to_le_bytes())
                        .expect("in bounds");
                }
            },
            |()| memory.borrow().root_hash(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("root_hash_contiguous", |b| {
        b.iter_batched(
            || {
                round += 1;
                let mut memory = memory.borrow_mut();
                for page in contiguous(round) {
                    memory
                        .write(page * PAGE + 64, &round.to_le_bytes())
                        .expect("in bounds");
                }
            },
            |()| memory.borrow().root_hash(),
            BatchSize::PerIteration,
        )
    });

    // Baseline: one SHA-256 over the dirty pages' bytes, concatenated.
    let mut dirty_bytes = vec![0u8; (dirty * PAGE) as usize];
    for (k, page) in scattered(0).enumerate() {
        let out = &mut dirty_bytes[k * PAGE_SIZE..(k + 1) * PAGE_SIZE];
        memory.borrow().read(page * PAGE, out).expect("in bounds");
    }
    drop(memory);
    group.bench_function("sha256_dirty_bytes", |b| {
        b.iter(|| Sha256::digest(black_box(&dirty_bytes)))
    });
    group.finish();
}

//! Checkpoints (`spec/durability.md`), each figure beside its baseline in the same run:
//!
//! - `full/checkpoint` vs `full/fs_write_fsync`: the first checkpoint of a canister whose
//!   stable memory has every page written, against a sequential `std::fs` write of the same
//!   bytes with `fsync` (the disk's limit). Target: ≥ 70% of the baseline's throughput.
//! - `incremental/checkpoint_after_1pct` vs `full/checkpoint` at 4× the size: the checkpoint
//!   after 1% of the pages changed. Target: ≤ 2% of a full one.
//! - `take/checkpoint_after_take` vs `take/checkpoint_without_take`: the replica's table row,
//!   the checkpoint that follows a snapshot. Target: ≤ +1% (the replica: +50%).
//! - `reopen/small` vs `reopen/large`, and the resident memory after reopening (printed).
//!
//! Sizes: 16 MiB (×4 for the incremental case, 8 MiB vs 64 MiB for reopening) by default, so
//! that `cargo test --benches` runs it quickly; `CHECKPOINT_BENCH_FULL=1` gives the issue's
//! sizes (1 GiB, 4 GiB, 256 MiB vs 16 GiB: needs that much free disk). `BENCH_SKIP=1`: build
//! only.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use candid::Principal;
use canister_snapshots::memory::{MAX_PAGES, Memory, PAGE_SIZE};
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::snapshots::SnapshotStore;
use canister_snapshots::state::{CanisterState, ExecutionState, WasmModule};
use canister_snapshots::state_manager::StateManager;
use criterion::{BatchSize, Criterion, Throughput};

const MIB: u64 = 1 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

fn full() -> bool {
    std::env::var_os("CHECKPOINT_BENCH_FULL").is_some_and(|v| v != "0")
}

/// A state with one canister whose stable memory of `size` bytes has every page written.
fn state_with_stable_memory(size: u64) -> ReplicatedState {
    let mut state = ReplicatedState::new(1);
    let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
    let mut canister = CanisterState::new(id, BTreeSet::new(), 0);
    let mut stable = Memory::zeroed(size, MAX_PAGES * PAGE).expect("within the limit");
    let mut page = vec![0u8; PAGE_SIZE];
    for index in 0..size / PAGE {
        page[..8].copy_from_slice(&index.to_le_bytes());
        stable
            .write(index * PAGE, &page)
            .expect("inside the memory");
    }
    canister.execution_state = Some(ExecutionState {
        wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
        wasm_memory: Memory::new(),
        stable_memory: stable,
        exported_globals: vec![],
    });
    state.canisters.insert(id, canister);
    state
}

fn stable(state: &mut ReplicatedState) -> &mut Memory {
    let canister = state.canisters.values_mut().next().expect("one canister");
    &mut canister
        .execution_state
        .as_mut()
        .expect("code installed")
        .stable_memory
}

fn open(dir: &Path) -> (StateManager, ReplicatedState) {
    StateManager::open(dir, 1).expect("the state directory opens")
}

fn checkpoint(manager: &mut StateManager, state: &mut ReplicatedState) {
    state.round += 1;
    manager
        .checkpoint(state)
        .expect("the checkpoint is written");
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    if std::env::var_os("BENCH_SKIP").is_some_and(|v| v != "0") {
        eprintln!("checkpoint: BENCH_SKIP is set, not running");
        return;
    }
    let (size, incremental_size, reopen_small, reopen_large) = if full() {
        (1 << 30, 4 << 30, 256 * MIB, 16 << 30)
    } else {
        (16 * MIB, 64 * MIB, 8 * MIB, 64 * MIB)
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    let mut group = c.benchmark_group("full");
    group.throughput(Throughput::Bytes(size));
    group.bench_function("checkpoint", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let (manager, _) = open(dir.path());
                (dir, manager, state_with_stable_memory(size))
            },
            |(dir, mut manager, mut state)| {
                checkpoint(&mut manager, &mut state);
                (dir, manager, state)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("fs_write_fsync", |b| {
        let bytes = vec![0x5Au8; size as usize];
        b.iter_batched(
            || tempfile::tempdir().expect("a temporary directory"),
            |dir| {
                let mut file = std::fs::File::create(dir.path().join("data")).expect("created");
                file.write_all(&bytes).expect("written");
                file.sync_all().expect("synced");
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("incremental");
    group.bench_function("checkpoint_after_1pct", |b| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut manager, _) = open(dir.path());
        let mut state = state_with_stable_memory(incremental_size);
        checkpoint(&mut manager, &mut state);
        let pages = incremental_size / PAGE;
        let mut salt = 0u64;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                salt += 1;
                for index in (salt % 100..pages).step_by(100) {
                    stable(&mut state)
                        .write(index * PAGE, &salt.to_le_bytes())
                        .expect("inside the memory");
                }
                let start = std::time::Instant::now();
                checkpoint(&mut manager, &mut state);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();

    let mut group = c.benchmark_group("take");
    for take in [false, true] {
        let name = if take {
            "checkpoint_after_take"
        } else {
            "checkpoint_without_take"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("a temporary directory");
                    let (manager, _) = open(dir.path());
                    let mut state = state_with_stable_memory(size);
                    if take {
                        let mut snapshots: SnapshotStore = state.snapshots.clone();
                        let canister = state.canisters.values_mut().next().expect("one");
                        snapshots
                            .take(canister, state.time, None, None)
                            .expect("room for one snapshot");
                        state.snapshots = snapshots;
                    }
                    (dir, manager, state)
                },
                |(dir, mut manager, mut state)| {
                    checkpoint(&mut manager, &mut state);
                    (dir, manager, state)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("reopen");
    for (name, bytes) in [("small", reopen_small), ("large", reopen_large)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        {
            let (mut manager, _) = open(dir.path());
            let mut state = state_with_stable_memory(bytes);
            checkpoint(&mut manager, &mut state);
        }
        let before = resident_bytes();
        let (manager, state) = open(dir.path());
        eprintln!(
            "reopen/{name}: {} MiB of stable memory; resident memory grew by {} MiB on reopening",
            bytes / MIB,
            resident_bytes().saturating_sub(before) / MIB
        );
        drop((manager, state));
        group.bench_function(name, |b| b.iter(|| open(dir.path())));
    }
    group.finish();
    c.final_summary();
}

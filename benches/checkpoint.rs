//! Checkpoints (`spec/durability.md`), each figure beside its baseline in the same run:
//!
//! - `full/checkpoint` vs `full/fs_write_fsync`: the first checkpoint of a canister whose
//!   stable memory has every page written, against a sequential `std::fs` write of the same
//!   bytes with `fsync` (the disk's limit). Target: ≥ 70% of the baseline's throughput.
//!   `full/fs_write_flushed_fsync` is a stronger baseline: the same write with the disk
//!   overlapped with the copy (`fdatasync` every 8 MiB on a second thread), as page files are.
//! - `incremental/checkpoint_after_1pct` vs `incremental/full_checkpoint`: the checkpoint after
//!   1% of the pages changed, against the first (full) checkpoint of the same memory. Target:
//!   ≤ 2% of the full one. Each checkpoint's background work (letting go of the older
//!   checkpoint, then the merges it planned: `state_manager/merges.rs`) runs until the next
//!   one; it is timed apart, right after the checkpoint, and printed with the merges' bytes,
//!   its average cost per checkpoint, and the checkpoints' spread.
//!   `incremental/checkpoint_after_1pct_with_background` times the same loop with each
//!   checkpoint's background work counted in (checkpoint, then wait for its background work):
//!   the whole disk cost of a 1% checkpoint, beside the foreground figure.
//! - `take/checkpoint_after_take` vs `take/checkpoint_without_take`: the replica's table row,
//!   the checkpoint of a fresh canister with and without a snapshot taken of it first. Target:
//!   ≤ +1% (the replica: +50%). `take_checkpointed/…`: the same for a canister already
//!   checkpointed, 1% of it dirtied, then the take. Each pair also prints the page-file bytes
//!   its checkpoint wrote, which noise cannot blur: a take must add none.
//! - `reopen/small` vs `reopen/large`, and the resident memory after reopening (printed).
//!   Target: ≤ 2×, and ≤ 64 MiB resident after reopening the large state.
//!
//! Sizes: 16 MiB (64 MiB for the incremental pair, 8 MiB vs 64 MiB for reopening) by default, so
//! that `cargo bench --no-run` and quick runs stay cheap; `CHECKPOINT_BENCH_FULL=1` gives the
//! issue's sizes: 1 GiB, 1% of 4 GiB vs a full 4 GiB, a take at 1 GiB, reopening 256 MiB vs
//! 16 GiB. The full run keeps one state on disk at a time (each is deleted before the next is
//! built; at most about 17 GB at once, for the 16 GiB state) and at most 8 GiB of pages in
//! memory (the 16 GiB state is built in checkpointed halves). `BENCH_SKIP=1`: build only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use candid::Principal;
use canister_snapshots::memory::{MAX_PAGES, Memory, PAGE_SIZE};
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::snapshots::SnapshotStore;
use canister_snapshots::state::{CanisterState, ExecutionState, WasmModule};
use canister_snapshots::state_manager::{MAX_FILES_PER_MEMORY, StateManager};
use common::{stable, status_bytes};
use criterion::{BatchSize, Criterion, Throughput};

mod common;

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
    status_bytes("VmRSS:")
}

/// A state directory with one canister of `size` bytes of stable memory, every page written,
/// checkpointed: built in halves (size/2, size/4, …, each checkpointed before the next is
/// written) so that at most half of it is in memory at once, and its page files form a pyramid
/// that needs no merge.
fn checkpointed_dir(size: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut manager, _) = open(dir.path());
    let mut state = state_with_stable_memory(0);
    stable(&mut state)
        .resize(size, MAX_PAGES * PAGE)
        .expect("within the limit");
    let (mut start, mut page, mut files) = (0u64, vec![0u8; PAGE_SIZE], 0);
    while start < size / PAGE {
        let left = size / PAGE - start;
        // Halves, then the rest as the 7th file (MAX_FILES_PER_MEMORY): no merge.
        files += 1;
        let chunk = if files < MAX_FILES_PER_MEMORY {
            left.div_ceil(2)
        } else {
            left
        };
        for index in start..start + chunk {
            page[..8].copy_from_slice(&index.to_le_bytes());
            stable(&mut state)
                .write(index * PAGE, &page)
                .expect("inside the memory");
        }
        start += chunk;
        checkpoint(&mut manager, &mut state);
    }
    dir
}

/// Inode → size of every page file of the manager's last checkpoint, and with `merges` of
/// every merge written in the background for the next one (in `merges/`).
fn page_files(manager: &StateManager, merges: bool) -> BTreeMap<u64, u64> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = manager.checkpoint_dir() else {
        return BTreeMap::new();
    };
    let merges = merges.then(|| manager.root().join("merges"));
    [Some(dir.join("pages")), merges]
        .iter()
        .flatten()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .map(|e| {
            let meta = e.expect("an entry").metadata().expect("metadata");
            (meta.ino(), meta.len())
        })
        .collect()
}

/// Bytes of the page files in `after` that are not in `before` (by inode): what a
/// checkpoint wrote.
fn new_page_bytes(before: &BTreeMap<u64, u64>, after: &BTreeMap<u64, u64>) -> u64 {
    after
        .iter()
        .filter(|(ino, _)| !before.contains_key(ino))
        .map(|(_, len)| len)
        .sum()
}

/// Times one checkpoint and counts the page-file bytes it wrote (not the merges it took in
/// from `merges/`, written before it).
fn timed_checkpoint(manager: &mut StateManager, state: &mut ReplicatedState) -> (Duration, u64) {
    let before = page_files(manager, true);
    let start = std::time::Instant::now();
    checkpoint(manager, state);
    let elapsed = start.elapsed();
    (
        elapsed,
        new_page_bytes(&before, &page_files(manager, false)),
    )
}

/// Times the background work the last checkpoint started (the older checkpoint let go of,
/// the merges written), to its end, and counts the bytes the merges wrote.
fn timed_merges(manager: &mut StateManager) -> (Duration, u64) {
    let before = page_files(manager, false);
    let start = std::time::Instant::now();
    manager.finish_merges();
    let elapsed = start.elapsed();
    (elapsed, new_page_bytes(&before, &page_files(manager, true)))
}

/// Benchmarks the first checkpoint of a fresh state built by `state` (untimed, with its own
/// directory, deleted when the iteration ends).
fn bench_fresh_checkpoint(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    state: impl Fn() -> ReplicatedState,
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let (manager, _) = open(dir.path());
                (dir, manager, state())
            },
            |(dir, mut manager, mut state)| {
                checkpoint(&mut manager, &mut state);
                (dir, manager, state)
            },
            BatchSize::PerIteration,
        )
    });
}

fn take(state: &mut ReplicatedState) {
    let mut snapshots: SnapshotStore = state.snapshots.clone();
    let canister = state.canisters.values_mut().next().expect("one");
    let last = snapshots
        .list(canister.canister_id)
        .next()
        .map(|s| s.id().clone());
    if let Some(id) = last {
        snapshots
            .delete(canister.canister_id, &id)
            .expect("the last take");
    }
    snapshots
        .take(canister, state.time, None, None)
        .expect("room for one snapshot");
    state.snapshots = snapshots;
}

/// Writes 8 bytes into 1% of the pages (every 100th, shifted by `salt`).
fn dirty_one_percent(state: &mut ReplicatedState, size: u64, salt: u64) {
    for index in (salt % 100..size / PAGE).step_by(100) {
        stable(state)
            .write(index * PAGE, &salt.to_le_bytes())
            .expect("inside the memory");
    }
}

/// The 1% checkpoints and the background work they started: the checkpoints' median, 90th
/// percentile and maximum time and their median bytes written; the median time and bytes of
/// the background runs that merged; and all background time spread over all checkpoints (what
/// it costs a checkpoint on average, off its critical path).
fn print_merges(checkpoints: &[(Duration, u64)], background: &[(Duration, u64)]) {
    let sorted = |v: &[(Duration, u64)]| -> Vec<(Duration, u64)> {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let at = |v: &[(Duration, u64)], q: usize| v.get(v.len().saturating_sub(1) * q / 100).copied();
    let times = sorted(checkpoints);
    let merging = sorted(
        &background
            .iter()
            .copied()
            .filter(|&(_, b)| b > 0)
            .collect::<Vec<_>>(),
    );
    let total: Duration = background.iter().map(|&(t, _)| t).sum();
    let mut together: Vec<Duration> = checkpoints
        .iter()
        .zip(background)
        .map(|(&(t, _), &(b, _))| t + b)
        .collect();
    together.sort();
    if let (Some((time, bytes)), Some((p90, _)), Some((max, _)), Some((merge_time, merge_bytes))) = (
        at(&times, 50),
        at(&times, 90),
        at(&times, 100),
        at(&merging, 50),
    ) {
        eprintln!(
            "incremental/checkpoint_after_1pct: {} checkpoints, median {time:?} (90th \
             percentile {p90:?}, max {max:?}), {:.1} MiB of page files written; {} of them \
             started a background merge: median {merge_time:?}, {:.1} MiB written; background \
             work per checkpoint on average: {:?}; foreground + background per checkpoint: \
             median {:?}, mean {:?}",
            checkpoints.len(),
            bytes as f64 / MIB as f64,
            merging.len(),
            merge_bytes as f64 / MIB as f64,
            total / checkpoints.len().max(1) as u32,
            together[together.len() / 2],
            together.iter().sum::<Duration>() / together.len().max(1) as u32
        );
    }
}

/// The take pair again, outside criterion: `pairs` checkpoints without and with the take,
/// alternated, so that the two see the same disk and the same neighbours (criterion runs one
/// function after the other, minutes apart on a busy machine). Prints the medians.
fn interleaved_take(size: u64, pairs: usize) {
    let mut times = [Vec::new(), Vec::new()];
    for i in 0..2 * pairs {
        let with_take = i % 2 == 1;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut manager, _) = open(dir.path());
        let mut state = state_with_stable_memory(size);
        if with_take {
            take(&mut state);
        }
        let start = std::time::Instant::now();
        checkpoint(&mut manager, &mut state);
        times[usize::from(with_take)].push(start.elapsed());
    }
    for t in &mut times {
        t.sort();
    }
    let (without, with) = (times[0][pairs / 2], times[1][pairs / 2]);
    eprintln!(
        "take/interleaved ({pairs} pairs): median {without:?} without the take, {with:?} with it \
         ({:+.1}%)",
        (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0
    );
}

/// Writes `bytes` to a new file at `path` in 1 MiB writes, asking a second thread to
/// `fdatasync` it after every 8 MiB, then `fsync`s it: the write baseline with the disk
/// overlapped with the copy, as the state manager writes page files.
fn write_flushed(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::File::create(path).expect("created");
    let flushing = file.try_clone().expect("a second handle");
    let (flush, requests) = std::sync::mpsc::channel::<()>();
    let flusher = std::thread::spawn(move || {
        for () in requests.iter() {
            while requests.try_recv().is_ok() {}
            flushing.sync_data().expect("flushed");
        }
    });
    for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
        file.write_all(chunk).expect("written");
        if (i + 1) % 8 == 0 {
            flush.send(()).expect("the flushing thread runs");
        }
    }
    drop(flush);
    flusher.join().expect("the flushing thread ends");
    file.sync_all().expect("synced");
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

    // Each iteration's directory is dropped (deleted) when the iteration ends.
    let mut group = c.benchmark_group("full");
    group.throughput(Throughput::Bytes(size));
    bench_fresh_checkpoint(&mut group, "checkpoint", || state_with_stable_memory(size));
    let bytes = vec![0x5Au8; size as usize];
    group.bench_function("fs_write_fsync", |b| {
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
    // The same bytes, with the disk overlapped with the copy as page files are written:
    // `fdatasync` every 8 MiB on a second thread while the rest is written, then `fsync`.
    group.bench_function("fs_write_flushed_fsync", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("a temporary directory"),
            |dir| {
                write_flushed(&dir.path().join("data"), &bytes);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("incremental");
    bench_fresh_checkpoint(&mut group, "full_checkpoint", || {
        state_with_stable_memory(incremental_size)
    });
    // Built once, outside the routine (criterion calls it once per sample), deleted after.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut manager, _) = open(dir.path());
    let mut state = state_with_stable_memory(incremental_size);
    checkpoint(&mut manager, &mut state);
    let mut salt = 0u64;
    // Each checkpoint's time and the page-file bytes it wrote, and the same for its background
    // work (timed apart, right after it: the replica has hundreds of rounds between two
    // checkpoints for it; printed below).
    let mut each: Vec<(Duration, u64)> = Vec::new();
    let mut merges: Vec<(Duration, u64)> = Vec::new();
    group.bench_function("checkpoint_after_1pct", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                salt += 1;
                dirty_one_percent(&mut state, incremental_size, salt);
                let (elapsed, written) = timed_checkpoint(&mut manager, &mut state);
                total += elapsed;
                each.push((elapsed, written));
                merges.push(timed_merges(&mut manager));
            }
            total
        })
    });
    print_merges(&each, &merges);
    // The same loop, each checkpoint timed together with the background work it started.
    group.bench_function("checkpoint_after_1pct_with_background", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                salt += 1;
                dirty_one_percent(&mut state, incremental_size, salt);
                checkpoint(&mut manager, &mut state);
                manager.finish_merges();
            }
            start.elapsed()
        })
    });
    drop((manager, state, dir));
    group.finish();

    // The replica's row: a fresh canister, with or without a take, then the checkpoint.
    let mut group = c.benchmark_group("take");
    for with_take in [false, true] {
        let name = if with_take {
            "checkpoint_after_take"
        } else {
            "checkpoint_without_take"
        };
        let fresh = || {
            let mut state = state_with_stable_memory(size);
            if with_take {
                take(&mut state);
            }
            state
        };
        bench_fresh_checkpoint(&mut group, name, fresh);
        // Once more, untimed, to count what the checkpoint wrote.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut manager, _) = open(dir.path());
        let (_, written) = timed_checkpoint(&mut manager, &mut fresh());
        eprintln!("take/{name}: the checkpoint wrote {written} bytes of page files");
    }
    group.finish();
    // `TAKE_PAIRS`: more pairs for a tighter median (each is two fresh checkpoints).
    let pairs = std::env::var("TAKE_PAIRS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(if full() { 5 } else { 15 });
    interleaved_take(size, pairs);

    // A canister already checkpointed: 1% dirtied, then (or not) a take, then the checkpoint.
    let mut group = c.benchmark_group("take_checkpointed");
    for with_take in [false, true] {
        let name = if with_take {
            "checkpoint_after_take"
        } else {
            "checkpoint_without_take"
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut manager, _) = open(dir.path());
        let mut state = state_with_stable_memory(size);
        checkpoint(&mut manager, &mut state);
        let (mut salt, mut written) = (0u64, 0u64);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    salt += 1;
                    dirty_one_percent(&mut state, size, salt);
                    if with_take {
                        take(&mut state);
                    }
                    // The merges planned at the last checkpoint, done between checkpoints.
                    manager.finish_merges();
                    let elapsed;
                    (elapsed, written) = timed_checkpoint(&mut manager, &mut state);
                    total += elapsed;
                }
                total
            })
        });
        eprintln!(
            "take_checkpointed/{name}: the last checkpoint wrote {written} bytes of page files"
        );
    }
    group.finish();

    // One state on disk at a time: the small one is deleted before the large one is built.
    let mut group = c.benchmark_group("reopen");
    for (name, bytes) in [("small", reopen_small), ("large", reopen_large)] {
        let dir = checkpointed_dir(bytes);
        let before = resident_bytes();
        let (manager, state) = open(dir.path());
        eprintln!(
            "reopen/{name}: {} MiB of stable memory; resident memory grew by {} MiB on reopening",
            bytes / MIB,
            resident_bytes().saturating_sub(before) / MIB
        );
        drop((manager, state));
        // Each reopened state is dropped before the next open (the directory is locked), and
        // outside the timing: dropping stops the merges the open planned.
        group.bench_function(name, |b| {
            b.iter_batched(|| (), |()| open(dir.path()), BatchSize::PerIteration)
        });
    }
    group.finish();
    c.final_summary();
}

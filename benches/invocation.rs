//! One command-line invocation on a state larger than the write (issue 24.5): what a
//! `canister call` that writes `W` bytes costs when the state holds `W` bytes, against the same
//! write into a state of `L` bytes. Each iteration is what an invocation of the command line
//! does with the state directory (`rs/cli/canister.rs`): open it (load the last checkpoint, read
//! its pending merges and their progress, and continue them in the background), write `W` bytes
//! of stable memory (one region of the state, the next one at each invocation), checkpoint
//! (stopping the merges and writing each up to its grant, at most `4W + 64 MiB` in all;
//! `spec/durability.md`, "Merges across checkpoints"), and drop. Target: `large` ≤ 2× `small`,
//! medians.
//!
//! Printed after each group: the median and slowest invocation, the most merge bytes one
//! checkpoint wrote itself (`StateManager::merge_pages_written`), the largest anonymous
//! resident memory seen (`RssAnon`, sampled after the
//! write and after the checkpoint) and the largest state directory seen against the live page
//! bytes (sampled every 20 ms while the measured invocations run).
//!
//! Sizes: `INVOCATION_BENCH_WRITE_MIB` (default 8) and `INVOCATION_BENCH_LARGE_MIB` (default
//! 64): the are 1024 and 26624; `benches/README.md` says what was run. The default run
//! is small, so that `cargo bench --no-run` and smoke runs stay cheap. `BENCH_SKIP=1`: build
//! only.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use candid::Principal;
use canister_snapshots::memory::{MAX_PAGES, Memory, PAGE_SIZE};
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::state::{CanisterState, ExecutionState, WasmModule};
use canister_snapshots::state_manager::StateManager;
use common::{stable, status_bytes};
use criterion::{Criterion, Throughput};

mod common;

const MIB: u64 = 1 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

fn mib_var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes of the distinct files (by inode) under `dir`: what the state directory holds on disk.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut total = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if seen.insert(meta.ino()) {
                total += meta.len();
            }
        }
    }
    total
}

/// What one run of invocations saw.
#[derive(Default)]
struct Seen {
    times: Vec<Duration>,
    peak_anon: u64,
    peak_disk: u64,
    live: u64,
    /// The most merge pages one checkpoint wrote itself (`merge_pages_written`).
    peak_merged: u64,
}

/// A state directory with one canister whose stable memory of `size` bytes is written by
/// invocations of `write` bytes each, as the fill does (untimed).
fn filled_dir(size: u64, write: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    {
        let (mut manager, _) = StateManager::open(dir.path(), 1).expect("opens");
        let mut state = ReplicatedState::new(1);
        let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
        let mut canister = CanisterState::new(id, BTreeSet::new(), 0);
        canister.execution_state = Some(ExecutionState {
            wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
            wasm_memory: Memory::new(),
            stable_memory: Memory::zeroed(size, MAX_PAGES * PAGE).expect("within the limit"),
            exported_globals: vec![],
        });
        state.canisters.insert(id, canister);
        state.round += 1;
        manager.checkpoint(&mut state).expect("checkpointed");
    }
    for region in 0..size.div_ceil(write) {
        invocation(dir.path(), region, write, size, &mut Seen::default());
    }
    dir
}

/// One invocation: open, write region `region` (of `write` bytes, within `size`), checkpoint,
/// drop. Records its time and what it held.
fn invocation(dir: &Path, region: u64, write: u64, size: u64, seen: &mut Seen) {
    let start = Instant::now();
    let (mut manager, mut state) = StateManager::open(dir, 1).expect("opens");
    let first = (region * write) % size.max(write);
    let mut page = vec![0u8; PAGE_SIZE];
    let memory = stable(&mut state);
    for index in first / PAGE..(first + write).min(size) / PAGE {
        page[..8].copy_from_slice(&index.to_le_bytes());
        page[8..16].copy_from_slice(&region.to_le_bytes());
        memory
            .write(index * PAGE, &page)
            .expect("inside the memory");
    }
    seen.peak_anon = seen.peak_anon.max(status_bytes("RssAnon:"));
    state.round += 1;
    manager.checkpoint(&mut state).expect("checkpointed");
    seen.peak_merged = seen.peak_merged.max(manager.merge_pages_written());
    seen.peak_anon = seen.peak_anon.max(status_bytes("RssAnon:"));
    drop((manager, state));
    seen.times.push(start.elapsed());
}

fn print(name: &str, size: u64, seen: &Seen) {
    let mut times: Vec<f64> = seen.times.iter().map(|t| t.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let max = times.last().copied().unwrap_or(0.0);
    eprintln!(
        "invocation/{name}: {} invocations, median {median:.3} s, max {max:.3} s; most merged \
         by one checkpoint itself {} MiB; peak RssAnon {} MiB; peak state directory {} MiB for \
         {} MiB of live pages ({:.2}x)",
        times.len(),
        seen.peak_merged * PAGE / MIB,
        seen.peak_anon / MIB,
        seen.peak_disk / MIB,
        size / MIB,
        seen.peak_disk as f64 / seen.live.max(1) as f64,
    );
}

fn main() {
    if std::env::var_os("BENCH_SKIP").is_some_and(|v| v != "0") {
        eprintln!("invocation: BENCH_SKIP is set, not running");
        return;
    }
    let write = mib_var("INVOCATION_BENCH_WRITE_MIB", 8) * MIB;
    let large = mib_var("INVOCATION_BENCH_LARGE_MIB", 64) * MIB;
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("invocation");
    group.throughput(Throughput::Bytes(write));
    // One state on disk at a time: each is deleted before the next is built.
    for (name, size) in [("small", write), ("large", large)] {
        let dir = filled_dir(size, write);
        let mut seen = Seen {
            live: size,
            ..Seen::default()
        };
        let mut region = 0u64;
        // The state directory's size, sampled every 20 ms while the invocations run (during
        // their checkpoints too, when the older checkpoint is still on disk).
        let stop = std::sync::atomic::AtomicBool::new(false);
        let peak_disk = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak_disk
                        .fetch_max(disk_bytes(dir.path()), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let before = seen.times.len();
                    for _ in 0..iters {
                        region += 1;
                        invocation(dir.path(), region, write, size, &mut seen);
                    }
                    seen.times[before..].iter().sum()
                })
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        seen.peak_disk = peak_disk.load(std::sync::atomic::Ordering::Relaxed);
        print(name, size, &seen);
    }
    group.finish();
    c.final_summary();
}

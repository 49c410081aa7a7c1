//! Resident memory of ten snapshots of a 1 GiB heap with 1% of the pages rewritten between
//! each: the RAM a snapshot really costs.
//!
//! Builds a canister whose 1 GiB heap has every page written, then takes ten snapshots (quota
//! 10), rewriting 1% of the pages (every 100th page, a different set each round) between one
//! snapshot and the next, i.e. nine rounds of rewrites. Reads `VmRSS` from `/proc/self/status`
//! before and after, and prints the resident size, the logical snapshot size, the store's
//! `unique_bytes` and the ratio RSS / 1 GiB.
//!
//! Target: resident ≤ 1.15 GiB (the live heap plus 9 × 1% of copied pages is ≈ 1.09 GiB of page
//! bytes). Exits non-zero when the target is missed.
//!
//! Environment and arguments:
//! - `BENCH_SKIP=1`: exit at once (build only).
//! - Without `--bench` (`cargo test --benches`): a 64 MiB smoke run that checks nothing.
//! - `BENCH_QUICK=1` has no effect: the full run takes a few seconds.

use std::collections::BTreeSet;
use std::process::ExitCode;

use candid::Principal;
use canister_snapshots::memory::{MAX_WASM_MEMORY_BYTES, Memory, PAGE_SIZE};
use canister_snapshots::snapshots::SnapshotStore;
use canister_snapshots::state::{CanisterState, ExecutionState, Global, WasmModule};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = PAGE_SIZE as u64;
const SNAPSHOTS: u64 = 10;
const TARGET_RATIO: f64 = 1.15;

/// A line of `/proc/self/status` such as `VmRSS:  1234 kB`, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// Deterministic, incompressible contents: no page is all zeros.
fn fill_pattern(buf: &mut [u8], offset: u64, salt: u64) {
    let first_word = offset / 8;
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let w = (first_word + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
        word.copy_from_slice(&w.to_le_bytes());
    }
}

fn heap(canister: &mut CanisterState) -> &mut Memory {
    &mut canister
        .execution_state
        .as_mut()
        .expect("code installed")
        .wasm_memory
}

fn main() -> ExitCode {
    if std::env::var_os("BENCH_SKIP").is_some_and(|v| v != "0") {
        eprintln!("resident_memory: BENCH_SKIP is set, not running");
        return ExitCode::SUCCESS;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full { GIB } else { 64 * MIB };
    let pages = size / PAGE;

    let rss_before = proc_status_bytes("VmRSS");

    let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
    let mut canister = CanisterState::new(id, BTreeSet::new(), 0);
    canister.execution_state = Some(ExecutionState {
        wasm_module: WasmModule::new(b"\0asm\x01\0\0\0".to_vec()),
        wasm_memory: Memory::zeroed(size, MAX_WASM_MEMORY_BYTES).expect("within the limit"),
        stable_memory: Memory::new(),
        exported_globals: vec![Global::I64(1)],
    });

    // Every page written, 4 MiB at a time.
    let mut chunk = vec![0u8; (4 * MIB).min(size) as usize];
    let mut offset = 0;
    while offset < size {
        fill_pattern(&mut chunk, offset, 0);
        heap(&mut canister)
            .write(offset, &chunk)
            .expect("in bounds");
        offset += chunk.len() as u64;
    }
    drop(chunk);
    let rss_heap = proc_status_bytes("VmRSS");

    // Ten snapshots; between each, every 100th page (phase = round) rewritten whole.
    let mut store = SnapshotStore::new(SNAPSHOTS as usize);
    let mut page_buf = vec![0u8; PAGE_SIZE];
    let mut rewritten_pages = 0u64;
    for round in 0..SNAPSHOTS {
        if round > 0 {
            let mut page = round;
            while page < pages {
                fill_pattern(&mut page_buf, page * PAGE, round);
                heap(&mut canister)
                    .write(page * PAGE, &page_buf)
                    .expect("in bounds");
                rewritten_pages += 1;
                page += 100;
            }
        }
        store
            .take(&mut canister, round, None, None)
            .expect("quota of ten");
    }
    drop(page_buf);
    let rss_after = proc_status_bytes("VmRSS");
    let hwm = proc_status_bytes("VmHWM");

    let logical = store.snapshots_size(canister.canister_id);
    let unique = store.unique_bytes(&canister);
    let live_pages = heap(&mut canister).resident_bytes();
    let ratio = gib(rss_after) / gib(size);
    let delta_ratio = gib(rss_after - rss_before) / gib(size);

    println!("resident_memory: {} heap, {SNAPSHOTS} snapshots", {
        if full { "1 GiB" } else { "64 MiB (smoke run)" }
    });
    println!(
        "  rewritten between snapshots : {rewritten_pages} pages ({:.3} GiB)",
        gib(rewritten_pages * PAGE)
    );
    println!("  VmRSS before                : {:.3} GiB", gib(rss_before));
    println!("  VmRSS after building heap   : {:.3} GiB", gib(rss_heap));
    println!("  VmRSS after snapshots       : {:.3} GiB", gib(rss_after));
    println!("  VmHWM (peak)                : {:.3} GiB", gib(hwm));
    println!("  live heap page bytes        : {:.3} GiB", gib(live_pages));
    println!(
        "  logical snapshot size       : {:.3} GiB ({SNAPSHOTS} × total_size)",
        gib(logical)
    );
    println!("  unique_bytes                : {:.3} GiB", gib(unique));
    println!("  RSS / heap size             : {ratio:.3} (target ≤ {TARGET_RATIO})");
    println!("  (RSS − RSS before) / heap   : {delta_ratio:.3}");

    if !full {
        println!("  smoke run: target not checked");
        return ExitCode::SUCCESS;
    }
    if ratio <= TARGET_RATIO {
        println!("  target met");
        ExitCode::SUCCESS
    } else {
        println!("  TARGET MISSED");
        ExitCode::FAILURE
    }
}

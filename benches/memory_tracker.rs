//! The memory tracker (issue 22, `rs/embedders/host_memory.rs`): what a real Wasm update that
//! writes one page costs on a heap with every page written and checkpointed (mapped from a page
//! file), at 16 MiB and at a large size, with the tracker and with the copying design, against
//! one copy of the large heap (`Memory::read` of it into a buffer, the copying design's first
//! step). Targets (medians): tracked large ≤ 2× tracked 16 MiB, and ≥ 100× less than one copy
//! of the heap.
//!
//! Printed before the groups: the resident memory (`VmRSS`, `RssAnon`) of the process after 1,000
//! one-page updates on the large heap, each writing the next page, against its resident memory
//! before them (target: within 256 MiB plus the pages touched).
//!
//! Sizes: `TRACKER_BENCH_LARGE_MIB` (default 256; the is 4096, which writes a 4 GiB page
//! file under the temporary directory and needs as much free memory for the copy baseline).
//! `BENCH_SKIP=1`: build only. The message is the access canister of
//! `fuzz/drivers/memory_tracker.rs` (one `memory.fill` of 8 bytes, plus the page its argument
//! and reply use).

mod common;
#[path = "../fuzz/drivers/memory_tracker.rs"]
#[allow(dead_code)]
mod driver;

use std::sync::Arc;
use std::time::Duration;

use canister_snapshots::embedders::WasmtimeEngine;
use canister_snapshots::memory::checksum::leaf_hash;
use canister_snapshots::memory::{
    Memory, PAGE_SIZE, PageFile, PageLayers, PageMap, write_page_file,
};
use canister_snapshots::state::ExecutionState;
use common::status_bytes;
use criterion::Criterion;
use driver::{Op, execute, installed};

const MIB: u64 = 1 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

/// A heap of `bytes` with every page written (256 patterns), in one page file of the temporary
/// directory (removed once mapped), its leaf hashes given so writing it hashes nothing.
fn checkpointed_heap(bytes: u64) -> Memory {
    let patterns: Vec<[u8; PAGE_SIZE]> = (0..=255u8).map(|b| [b | 1; PAGE_SIZE]).collect();
    let hashes: Vec<_> = patterns.iter().map(leaf_hash).collect();
    let path = std::env::temp_dir().join(format!("tracker-bench-{}-{bytes}", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    write_page_file(
        &mut file,
        (0..bytes / PAGE).map(|i| {
            (
                i,
                &patterns[i as usize % 256],
                Some(hashes[i as usize % 256]),
            )
        }),
    )
    .expect("write the page file");
    drop(file);
    let file = std::fs::File::open(&path).expect("reopen");
    let mapped = PageFile::map(&file, "heap").expect("map");
    std::fs::remove_file(&path).expect("remove");
    let base = Arc::new(PageLayers::new(vec![Arc::new(mapped)]));
    Memory::from_page_map(PageMap::with_base(base), bytes)
}

fn state_on(engine: &WasmtimeEngine, heap: &Memory) -> ExecutionState {
    let mut state = installed(engine);
    state.wasm_memory = heap.clone();
    state
}

/// One update writing 8 bytes in page `page` (plus page 0: argument and reply).
fn one_page_update(engine: &WasmtimeEngine, state: &mut ExecutionState, page: u64) {
    let arg = driver::encode(
        &[Op::Write {
            at: (page * PAGE + 8) as u32,
            byte: 1,
            len: 8,
        }],
        state.wasm_memory.size_bytes(),
    );
    let outcome = execute(engine, state, "run", &arg);
    assert!(outcome.result.is_ok(), "{outcome:?}");
}

fn main() {
    if std::env::var_os("BENCH_SKIP").is_some() {
        return;
    }
    let large_mib = std::env::var("TRACKER_BENCH_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256u64);
    let (copying, tracking) = driver::engines();
    let small = checkpointed_heap(16 * MIB);
    let large = checkpointed_heap(large_mib * MIB);
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // Resident memory over 1,000 one-page updates on the large heap, each on the state the
    // last left (the pages written accumulate in the page memory, as between checkpoints).
    // Measured first, before the copy baseline maps every page of the large heap into the
    // process, so that the figure is that of a process that opened the checkpoint and ran them.
    let mut state = state_on(tracking, &large);
    let (rss, anon) = (status_bytes("VmRSS:"), status_bytes("RssAnon:"));
    for page in 1..=1000u64 {
        one_page_update(
            tracking,
            &mut state,
            page % (large.size_bytes() / PAGE - 1) + 1,
        );
    }
    let touched = 1001 * PAGE;
    println!(
        "resident after 1,000 one-page updates on {large_mib} MiB: VmRSS {} -> {} MiB, RssAnon \
         {} -> {} MiB; pages touched {} MiB; heap pages in the page memory {}",
        rss / MIB,
        status_bytes("VmRSS:") / MIB,
        anon / MIB,
        status_bytes("RssAnon:") / MIB,
        touched / MIB,
        state.wasm_memory.page_map().heap_pages()
    );
    let mut group = c.benchmark_group("tracker/one_page_update");
    for (name, engine, heap) in [
        ("tracked_16MiB".to_string(), tracking, &small),
        (format!("tracked_{large_mib}MiB"), tracking, &large),
        ("copying_16MiB".to_string(), copying, &small),
    ] {
        let base = state_on(engine, heap);
        let mut n = 0u64;
        group.bench_function(&name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut state| {
                    n = (n + 1) % (heap.size_bytes() / PAGE - 1);
                    one_page_update(engine, &mut state, n + 1);
                    state
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.bench_function(format!("one_copy_of_the_{large_mib}MiB_heap"), |b| {
        let mut buffer = vec![0u8; large.size_bytes() as usize];
        b.iter(|| large.read(0, &mut buffer).expect("in bounds"));
    });
    group.finish();

    c.final_summary();
}

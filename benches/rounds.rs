//! Parallel rounds and O(1) accounting (issue 8).
//!
//! - `rounds`: one round of 100 canisters, each writing 64 pages (256 KiB) into its heap, with
//!   1 and 2 scheduler threads: the speed-up of the parallel canister phase.
//! - `rounds_baseline`: the same memory traffic without the replica (fresh 4 KiB pages copied
//!   from the payloads, the old ones freed), split over 1 and 2 threads the same way: the
//!   speed-up this machine's memory system allows for that work.
//! - `download_beside_canisters`: downloading a 1 GiB snapshot (2 MB slices, one round each)
//!   alone on the subnet, then with 1,000 other canisters on it, each with code, 64 KiB of
//!   heap written and a snapshot: what a recount of the subnet's memory walks (canisters and
//!   snapshots). Per-slice accounting is O(1) in them, so the two are within noise.
//!
//! `cargo bench --bench rounds`; `BENCH_QUICK=1` downloads 256 MiB, `BENCH_DOWNLOAD_MIB=N`
//! N MiB. Results: benches/README.md.

use std::hint::black_box;

use candid::{Encode, Principal};
use canister_snapshots::execution::TestCanisterEngine;
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::scheduler::{Batch, ExecutionLoop, Ingress};
use canister_snapshots::transfer::SLICE_BYTES;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ic_management_canister_types::{
    CanisterIdRecord, InstallCodeArgs, ProvisionalCreateCanisterWithCyclesArgs,
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult, SnapshotDataKind,
};

const CANISTERS: u64 = 100;
const PAGES_PER_ROUND: u64 = 64;

fn user() -> Principal {
    Principal::from_slice(&[0x42; 29])
}

fn ingress(id: u64, receiver: Principal, method: &str, payload: Vec<u8>) -> Ingress {
    Ingress {
        message_id: id,
        sender: user(),
        receiver,
        method: method.to_string(),
        payload,
    }
}

/// A subnet of `CANISTERS` installed test canisters, run by a loop with `threads` threads.
fn subnet(threads: usize) -> (ExecutionLoop, ReplicatedState, Vec<Principal>) {
    let config = Config {
        scheduler_threads: threads,
        ..Config::default()
    };
    let execution = ExecutionLoop::new(config, Box::new(TestCanisterEngine));
    let mut state = execution.new_state();
    let mgmt = Principal::management_canister();
    let mut ids = Vec::new();
    for n in 0..CANISTERS {
        let create = ProvisionalCreateCanisterWithCyclesArgs::default();
        let batch = Batch {
            time: state.time,
            ingress: vec![ingress(
                0,
                mgmt,
                "provisional_create_canister_with_cycles",
                Encode!(&create).unwrap(),
            )],
        };
        let reply = execution.execute_round(&mut state, batch).remove(0).1;
        let (record,) = candid::decode_args::<(CanisterIdRecord,)>(&reply.unwrap()).unwrap();
        let install = InstallCodeArgs {
            mode: ic_management_canister_types::CanisterInstallMode::Install,
            canister_id: record.canister_id,
            wasm_module: TEST_CANISTER_WASM.to_vec(),
            arg: vec![],
            sender_canister_version: None,
        };
        let batch = Batch {
            time: state.time,
            ingress: vec![ingress(n, mgmt, "install_code", Encode!(&install).unwrap())],
        };
        execution
            .execute_round(&mut state, batch)
            .remove(0)
            .1
            .unwrap();
        ids.push(record.canister_id);
    }
    (execution, state, ids)
}

/// One round's batch: every canister writes `PAGES_PER_ROUND` pages at the start of its heap.
fn round_batch(time: u64, ids: &[Principal], round: u8) -> Batch {
    let data = serde_bytes::ByteBuf::from(vec![round; (PAGES_PER_ROUND * 4096) as usize]);
    let payload = Encode!(&0u64, &data).unwrap();
    Batch {
        time,
        ingress: ids
            .iter()
            .enumerate()
            .map(|(i, id)| ingress(i as u64, *id, "write_heap", payload.clone()))
            .collect(),
    }
}

fn rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("rounds");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let (execution, mut state, ids) = subnet(threads);
        let mut round = 0u8;
        let time = state.time;
        group.bench_function(
            format!("{CANISTERS} canisters x {PAGES_PER_ROUND} pages, {threads} thread(s)"),
            |b| {
                b.iter_batched(
                    || {
                        round = round.wrapping_add(1);
                        round_batch(time, &ids, round)
                    },
                    |batch| {
                        let results = execution.execute_round(&mut state, batch);
                        debug_assert!(results.iter().all(|(_, r)| r.is_ok()));
                        black_box(results)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// One canister of the raw baseline: its pages and this round's payload.
type RawCanister<'a> = (&'a mut Vec<Box<[u8]>>, Vec<u8>);

/// The same memory traffic as a round without the replica: each of `CANISTERS` "heaps" of
/// `PAGES_PER_ROUND` separately allocated 4 KiB pages has every page replaced by a fresh copy of
/// a 256 KiB payload (the old page freed), split over `threads` threads exactly as the loop
/// splits canisters (the calling thread takes the first part). Its 1 → 2 thread speed-up is
/// what this machine's memory system allows for this work, measured beside the round.
fn raw_page_replacement(c: &mut Criterion) {
    let mut group = c.benchmark_group("rounds_baseline");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let page = 4096usize;
        let mut heaps: Vec<Vec<Box<[u8]>>> = (0..CANISTERS)
            .map(|_| {
                (0..PAGES_PER_ROUND)
                    .map(|_| vec![0u8; page].into_boxed_slice())
                    .collect()
            })
            .collect();
        let mut round = 0u8;
        group.bench_function(
            format!(
                "raw page replacement, {CANISTERS} x {PAGES_PER_ROUND} pages, {threads} thread(s)"
            ),
            |b| {
                b.iter_batched(
                    || {
                        round = round.wrapping_add(1);
                        (0..CANISTERS)
                            .map(|_| vec![round; (PAGES_PER_ROUND as usize) * page])
                            .collect::<Vec<Vec<u8>>>()
                    },
                    |payloads| {
                        let mut work: Vec<RawCanister> = heaps.iter_mut().zip(payloads).collect();
                        let replace = |part: &mut [RawCanister]| {
                            for (heap, payload) in part {
                                for (slot, src) in heap.iter_mut().zip(payload.chunks(page)) {
                                    *slot = src.to_vec().into_boxed_slice();
                                }
                                drop(std::mem::take(payload));
                            }
                        };
                        let part_len = work.len().div_ceil(threads);
                        crossbeam_utils::thread::scope(|scope| {
                            let mut parts = work.chunks_mut(part_len);
                            let first = parts.next();
                            for part in parts {
                                scope.spawn(move |_| replace(part));
                            }
                            if let Some(first) = first {
                                replace(first);
                            }
                        })
                        .unwrap();
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

fn size() -> u64 {
    if let Some(mib) = std::env::var("BENCH_DOWNLOAD_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        mib << 20
    } else if std::env::var_os("BENCH_QUICK").is_some() {
        256 << 20
    } else {
        1 << 30
    }
}

/// A canister whose heap holds `size` bytes, and a snapshot of it.
fn snapshot_of(sm: &mut StateMachine, size: u64) -> (Principal, Vec<u8>) {
    let canister = sm.create_canister_with_settings(Some(user()), None);
    sm.install_canister(canister, TEST_CANISTER_WASM.to_vec(), vec![], Some(user()));
    let mut offset = 0;
    while offset < size {
        let len = (16u64 << 20).min(size - offset);
        let arg = Encode!(&offset, &len, &((offset >> 24) as u8 | 1)).unwrap();
        sm.update_call(canister, user(), "fill_heap", arg).unwrap();
        offset += len;
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
    (canister, id)
}

fn download(sm: &mut StateMachine, canister: Principal, id: &[u8], size: u64) -> u64 {
    let mut offset = 0;
    let mut sum = 0u64;
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
        sum = sum.wrapping_add(result.chunk[0] as u64);
        offset += len;
    }
    sum
}

fn download_beside_canisters(c: &mut Criterion) {
    let size = size();
    let mut group = c.benchmark_group("download_beside_canisters");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size));
    let mut sm = StateMachine::new();
    let (canister, id) = snapshot_of(&mut sm, size);
    group.bench_function(format!("{} MiB, no other canister", size >> 20), |b| {
        b.iter(|| black_box(download(&mut sm, canister, &id, size)))
    });
    // Canisters that count: code, 64 KiB of heap and a snapshot each, so that a recount of the
    // subnet's memory would walk 1,000 canisters and 1,000 snapshots on every slice.
    let usage_before = sm.state().memory_usage();
    for i in 0..1_000u64 {
        let other = sm.create_canister_with_settings(Some(user()), None);
        sm.install_canister(other, TEST_CANISTER_WASM.to_vec(), vec![], Some(user()));
        let arg = Encode!(&0u64, &(64u64 << 10), &(i as u8 | 1)).unwrap();
        sm.update_call(other, user(), "fill_heap", arg).unwrap();
        sm.take_canister_snapshot(other, Some(user()), None)
            .unwrap();
    }
    eprintln!(
        "download_beside_canisters: 1,000 other canisters with 1,000 snapshots hold {:.1} MiB \
         of the subnet's memory",
        (sm.state().memory_usage() - usage_before) as f64 / (1 << 20) as f64
    );
    group.bench_function(format!("{} MiB, 1,000 other canisters", size >> 20), |b| {
        b.iter(|| black_box(download(&mut sm, canister, &id, size)))
    });
    group.finish();
}

criterion_group!(
    benches,
    rounds,
    raw_page_replacement,
    download_beside_canisters
);
criterion_main!(benches);

// The IC replica allocates with jemalloc; so does this benchmark, like the binary
// (`rs/main.rs`) and `benches/transfer.rs`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

//! The memory tracker (`rs/embedders/host_memory.rs`, issue 22): the differential check against
//! the copying design (`fuzz/drivers/memory_tracker.rs`) on fixed and seeded access patterns and
//! on several threads at once; what a message costs (the pages it writes, on a heap mapped from
//! a page file); a damaged page file page never served; and parallel rounds with the tracker
//! giving the state hash of one thread.

#[path = "../fuzz/drivers/memory_tracker.rs"]
#[allow(dead_code)]
mod driver;

use std::sync::Arc;

use canister_snapshots::memory::{
    Memory, PAGE_SIZE, PageFile, PageLayers, PageMap, WASM_PAGE_SIZE, write_page_file,
};
use canister_snapshots::{Config, StateMachine};
use driver::{Op, Step, Steps, engines, execute, installed};
use ic_error_types::ErrorCode;

const PAGE: u64 = PAGE_SIZE as u64;

#[test]
fn fixed_access_patterns_match_the_copying_design() {
    for (name, steps) in driver::sequences() {
        eprintln!("{name}");
        driver::check(&steps);
    }
}

#[test]
fn seeded_access_patterns_match_the_copying_design() {
    for seed in 1..=8u64 {
        driver::check(&driver::seeded(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            40,
        ));
    }
}

/// Instances on several threads at once, each store with its own handler and heap: every one
/// still matches the copying design.
#[test]
fn concurrent_instances_match_the_copying_design() {
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            scope.spawn(move || {
                for round in 0..4u64 {
                    driver::check(&driver::seeded(thread * 1000 + round + 17, 30));
                }
            });
        }
    });
}

/// A heap of `pages` written pages, every one in a page file (a checkpointed heap).
fn checkpointed_heap(pages: u64) -> Memory {
    let (_, tracking) = engines();
    let mut state = installed(tracking);
    let grow = (pages * PAGE).div_ceil(WASM_PAGE_SIZE) - 1;
    let mut ops = vec![];
    let mut left = grow;
    while left > 0 {
        let pages = left.min(3);
        ops.push(Op::Grow { pages: pages as u8 });
        left -= pages;
    }
    let outcome = execute(
        tracking,
        &mut state,
        "run",
        &driver::encode(&ops, WASM_PAGE_SIZE),
    );
    assert!(outcome.result.is_ok(), "{outcome:?}");
    let size = state.wasm_memory.size_bytes();
    for page in 0..size / PAGE {
        state
            .wasm_memory
            .write(page * PAGE, &[page as u8 | 1; 16])
            .unwrap();
    }
    driver::checkpointed(&state.wasm_memory)
}

/// A one-page update on a heap mapped from a page file hands back the pages it wrote (its
/// write and the access canister's reply page) and nothing else; a read-only message only the
/// reply page; the bytes it read are the checkpoint's.
#[test]
fn a_message_costs_the_pages_it_writes() {
    let (_, tracking) = engines();
    let mut state = installed(tracking);
    state.wasm_memory = checkpointed_heap(2048);
    let size = state.wasm_memory.size_bytes();
    assert_eq!(size, 8 << 20);
    let before = state.wasm_memory.clone();

    let write = driver::encode(
        &[Op::Write {
            at: 1000 * PAGE as u32 + 5,
            byte: 9,
            len: 3,
        }],
        size,
    );
    let outcome = execute(tracking, &mut state, "run", &write);
    assert!(outcome.result.is_ok(), "{outcome:?}");
    assert_eq!(
        outcome.heap_delta,
        2 * PAGE,
        "page 1000 and the reply's page 0"
    );
    assert_eq!(
        state.wasm_memory.read_vec(1000 * PAGE + 4, 5).unwrap(),
        [233, 9, 9, 9, 233]
    );
    assert_eq!(
        state.wasm_memory.page_map().heap_pages(),
        2,
        "two pages left the mapping"
    );

    let read = driver::encode(
        &[Op::Read {
            at: 1500 * PAGE as u32,
            len: 1,
        }],
        size,
    );
    let outcome = execute(tracking, &mut state, "run", &read);
    assert_eq!(outcome.heap_delta, PAGE, "only the reply's page");
    let expected = u64::from((1500u64 as u8) | 1);
    assert_eq!(outcome.result.unwrap(), expected.to_le_bytes());
    assert_eq!(
        before.read_vec(1500 * PAGE, 16).unwrap(),
        state.wasm_memory.read_vec(1500 * PAGE, 16).unwrap()
    );
}

/// A flipped byte in a page file is never served: the message that touches the page ends in an
/// error naming the file and the page (and changes nothing), one that does not touch it runs.
#[test]
fn a_damaged_page_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heap.pages");
    let pages: Vec<(u64, [u8; PAGE_SIZE])> =
        (0..32u64).map(|i| (i, [i as u8 + 1; PAGE_SIZE])).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    write_page_file(&mut file, pages.iter().map(|(i, p)| (*i, p, None))).unwrap();
    drop(file);
    // Flip a byte of page 7 (data pages come first, 4 KiB each).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7 * PAGE_SIZE + 100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mapped = PageFile::map(&std::fs::File::open(&path).unwrap(), "heap.pages").unwrap();
    let base = Arc::new(PageLayers::new(vec![Arc::new(mapped)]));
    let heap = Memory::from_page_map(PageMap::with_base(base), 2 * WASM_PAGE_SIZE);

    let (copying, tracking) = engines();
    let size = heap.size_bytes();
    let read = |page: u64| {
        driver::encode(
            &[Op::Read {
                at: (page * PAGE) as u32,
                len: 2,
            }],
            size,
        )
    };
    let mut state = installed(tracking);
    state.wasm_memory = heap.clone();
    let outcome = execute(tracking, &mut state, "run", &read(3));
    assert!(outcome.result.is_ok(), "{outcome:?}");
    let outcome = execute(tracking, &mut state, "run", &read(7));
    let (code, message) = outcome.result.unwrap_err();
    assert_eq!(code, ErrorCode::CertifiedStateUnavailable);
    assert!(message.contains("heap.pages"), "{message}");
    assert!(message.contains("page 7"), "{message}");
    // Writing the damaged page needs its bytes too.
    let write = driver::encode(
        &[Op::Write {
            at: (7 * PAGE) as u32,
            byte: 1,
            len: 1,
        }],
        size,
    );
    let outcome = execute(tracking, &mut state, "run", &write);
    assert_eq!(
        outcome.result.unwrap_err().0,
        ErrorCode::CertifiedStateUnavailable
    );
    assert_eq!(
        state.wasm_memory.page_map().heap_pages(),
        1,
        "only the first read's page 0"
    );

    // The copying design reads every page in: any message meets the damaged page.
    let mut state = installed(copying);
    state.wasm_memory = heap;
    let (code, message) = execute(copying, &mut state, "run", &read(3))
        .result
        .unwrap_err();
    assert_eq!(code, ErrorCode::CertifiedStateUnavailable);
    assert!(message.contains("page 7"), "{message}");
}

/// Several canisters of the access canister in one round on four threads, with the tracker:
/// the state hash is the one thread's.
#[test]
fn parallel_rounds_with_the_tracker_give_the_state_hash_of_one_thread() {
    let module = wat::parse_str(driver::ACCESS_CANISTER_WAT).unwrap();
    let run = |threads: usize| {
        let mut sm = StateMachine::with_config(Config {
            scheduler_threads: threads,
            memory_tracker: true,
            ..Config::default()
        });
        let controller = candid::Principal::from_slice(&[1; 29]);
        let ids: Vec<_> = (0..6)
            .map(|_| {
                let id = sm.create_canister_with_settings(Some(controller), None);
                sm.install_canister(id, module.clone(), vec![], Some(controller));
                id
            })
            .collect();
        for round in 0..3u32 {
            let messages = ids
                .iter()
                .enumerate()
                .map(|(n, id)| {
                    let ops = [
                        Op::Grow { pages: 1 },
                        Op::Write {
                            at: (n as u32 + round) * 5000,
                            byte: n as u8,
                            len: 6000,
                        },
                        Op::Read {
                            at: 70_000,
                            len: 100,
                        },
                    ];
                    (
                        *id,
                        "run".to_string(),
                        driver::encode(&ops, WASM_PAGE_SIZE * u64::from(round + 1)),
                    )
                })
                .collect::<Vec<_>>();
            let submitted: Vec<_> = messages
                .into_iter()
                .map(|(id, method, arg)| sm.submit_call(id, controller, &method, arg).unwrap())
                .collect();
            sm.tick();
            for message in submitted {
                sm.await_call(message).unwrap();
            }
        }
        sm.state_hash()
    };
    assert_eq!(run(4), run(1));
}

/// The steps type the fuzz target decodes stays within its bounds.
#[test]
fn arbitrary_steps_are_bounded() {
    use arbitrary::{Arbitrary, Unstructured};
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let steps = Steps::arbitrary(&mut Unstructured::new(&noise)).unwrap();
    assert!(steps.0.len() <= driver::MAX_STEPS);
    for step in &steps.0 {
        if let Step::Update(ops) | Step::Query(ops) = step {
            assert!(ops.len() <= driver::MAX_OPS);
        }
    }
    driver::check(&steps);
}

//! The memory tracker (`rs/embedders/host_memory.rs`) against the copying design it replaces,
//! the reference: random access patterns (reads, writes, grows, traps, queries, checkpoints
//! that put the heap into a page file) run on both engines, which must agree on every reply and
//! error, on the instructions executed, and byte for byte on the heap after every message. The
//! tracker's heap delta must be exactly the pages the message wrote (whole 4 KiB pages, as the
//! replica counts them), as a model of the accesses computes it; the copying design's, the pages
//! that changed, can only be smaller.
//!
//! `tests/memory_tracker.rs` runs this on fixed and seeded sequences, on several threads at
//! once; `fuzz_targets/memory_tracker.rs` on what libFuzzer finds.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Result, Unstructured};
use candid::Principal;
use canister_snapshots::embedders::WasmtimeEngine;
use canister_snapshots::execution::{CanisterEnvironment, ExecutionContext, Response, WasmEngine};
use canister_snapshots::memory::{
    Memory, PAGE_SIZE, PageFile, PageLayers, PageMap, WASM_PAGE_SIZE, write_page_file,
};
use canister_snapshots::state::{CanisterStatus, ExecutionState, WasmModule};
use ic_error_types::ErrorCode;

/// The access canister: `canister_update run` and `canister_query peek` interpret their
/// argument as 8-byte operations (`kind u8, byte u8, len u16 LE, at u32 LE`): 0 reads `len`
/// bytes at `at` into a running checksum, 1 fills `len` bytes at `at` with `byte`, 2 grows the
/// heap by `byte` Wasm pages, 3 traps; the reply is the checksum. The argument is copied to
/// address 0 first and the reply stored there, so a message that completes writes page 0.
pub const ACCESS_CANISTER_WAT: &str = r#"
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $reply_append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func $run (local $n i32) (local $i i32) (local $at i32) (local $len i32) (local $kind i32)
             (local $j i32) (local $sum i64)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 0) (i32.const 0) (local.get $n))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 8)) (local.get $n)))
        (local.set $kind (i32.load8_u (local.get $i)))
        (local.set $len (i32.load16_u offset=2 (local.get $i)))
        (local.set $at (i32.load offset=4 (local.get $i)))
        (if (i32.eq (local.get $kind) (i32.const 0))
          (then
            (local.set $j (i32.const 0))
            (block $read_done
              (loop $read
                (br_if $read_done (i32.ge_u (local.get $j) (local.get $len)))
                (local.set $sum
                  (i64.add (i64.mul (local.get $sum) (i64.const 31))
                           (i64.load8_u (i32.add (local.get $at) (local.get $j)))))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $read)))))
        (if (i32.eq (local.get $kind) (i32.const 1))
          (then (memory.fill (local.get $at) (i32.load8_u offset=1 (local.get $i))
                             (local.get $len))))
        (if (i32.eq (local.get $kind) (i32.const 2))
          (then (local.set $sum (i64.add (local.get $sum)
                  (i64.extend_i32_s (memory.grow (i32.load8_u offset=1 (local.get $i))))))))
        (if (i32.eq (local.get $kind) (i32.const 3)) (then unreachable))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $next)))
    (i64.store (i32.const 0) (local.get $sum))
    (call $reply_append (i32.const 0) (i32.const 8))
    (call $reply))
  (func (export "canister_update run") (call $run))
  (func (export "canister_query peek") (call $run))
)
"#;

/// The heap never grows past this in the driver: 256 Wasm pages, 16 MiB.
pub const MAX_HEAP: u64 = 256 * WASM_PAGE_SIZE;

/// One access. `at` is reduced modulo the heap's size plus one Wasm page when encoded, so that
/// most accesses land inside the heap and some past its end (a trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read { at: u32, len: u16 },
    Write { at: u32, byte: u8, len: u16 },
    Grow { pages: u8 },
    Trap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Update(Vec<Op>),
    Query(Vec<Op>),
    /// The heap moves into a page file (a checkpoint): later pages come from the mapping.
    Checkpoint,
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=3u8)? {
            0 => Op::Read {
                at: u.arbitrary()?,
                len: u.arbitrary()?,
            },
            1 => Op::Write {
                at: u.arbitrary()?,
                byte: u.arbitrary()?,
                len: u.arbitrary()?,
            },
            2 => Op::Grow {
                pages: u.arbitrary()?,
            },
            _ => Op::Trap,
        })
    }
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=2u8)? {
            0 => Step::Update(u.arbitrary()?),
            1 => Step::Query(u.arbitrary()?),
            _ => Step::Checkpoint,
        })
    }
}

/// A sequence of steps, at most [`MAX_STEPS`] of at most [`MAX_OPS`] operations each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<Step>);

pub const MAX_STEPS: usize = 24;
pub const MAX_OPS: usize = 32;

impl<'a> Arbitrary<'a> for Steps {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut steps: Vec<Step> = u.arbitrary()?;
        steps.truncate(MAX_STEPS);
        for step in &mut steps {
            if let Step::Update(ops) | Step::Query(ops) = step {
                ops.truncate(MAX_OPS);
            }
        }
        Ok(Steps(steps))
    }
}

/// The two engines, shared by every run in the process (compiling the canister once each).
pub fn engines() -> &'static (WasmtimeEngine, WasmtimeEngine) {
    static ENGINES: OnceLock<(WasmtimeEngine, WasmtimeEngine)> = OnceLock::new();
    ENGINES.get_or_init(|| (WasmtimeEngine::new(), WasmtimeEngine::with_memory_tracker()))
}

pub fn module() -> WasmModule {
    static MODULE: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = MODULE.get_or_init(|| wat::parse_str(ACCESS_CANISTER_WAT).expect("valid WAT"));
    WasmModule::new(bytes.clone())
}

/// What a message ended with, as both engines must agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: std::result::Result<Vec<u8>, (ErrorCode, String)>,
    pub instructions: u64,
    pub heap_delta: u64,
}

/// The context both the install and every message run in: an anonymous caller on an
/// anonymous running canister, the batch time 1, generous limits.
fn context<'a>(
    execution_state: &'a mut ExecutionState,
    certified_data: &'a mut Vec<u8>,
    controllers: &'a BTreeSet<Principal>,
) -> ExecutionContext<'a> {
    ExecutionContext {
        execution_state,
        certified_data,
        caller: Principal::anonymous(),
        time: 1,
        wasm_memory_limit: MAX_HEAP,
        wasm64_memory_limit: MAX_HEAP,
        stable_memory_limit: 0,
        heap_delta: 0,
        max_heap_delta: 1 << 30,
        max_reply_bytes: 2 << 20,
        canister: CanisterEnvironment {
            canister_id: Principal::anonymous(),
            controllers,
            status: CanisterStatus::Running,
            cycles: 0,
            canister_version: 0,
        },
        global_timer: None,
        instruction_limit: 10_000_000_000,
        instructions_executed: 0,
    }
}

/// Runs `method` with `arg` on `state` through `engine`, keeping the changes only on success.
pub fn execute(
    engine: &WasmtimeEngine,
    state: &mut ExecutionState,
    method: &str,
    arg: &[u8],
) -> Outcome {
    let controllers = BTreeSet::new();
    let mut copy = state.clone();
    let mut certified = Vec::new();
    let mut ctx = context(&mut copy, &mut certified, &controllers);
    let result = engine.execute(&mut ctx, method, arg);
    let (instructions, heap_delta) = (ctx.instructions_executed, ctx.heap_delta);
    let result = match result {
        Ok(Response::Reply(bytes)) => Ok(bytes),
        Ok(other) => Err((ErrorCode::CanisterDidNotReply, format!("{other:?}"))),
        Err(err) => Err((err.code(), err.description().to_string())),
    };
    if result.is_ok() {
        *state = copy;
    }
    Outcome {
        result,
        instructions,
        heap_delta,
    }
}

/// The access canister, installed (its heap one Wasm page of zeros).
pub fn installed(engine: &WasmtimeEngine) -> ExecutionState {
    let module = module();
    let mut state = ExecutionState {
        exported_globals: engine.initial_globals(&module),
        wasm_module: module,
        wasm_memory: Memory::new(),
        stable_memory: Memory::new(),
    };
    let controllers = BTreeSet::new();
    let mut certified = Vec::new();
    let mut ctx = context(&mut state, &mut certified, &controllers);
    engine
        .start(&mut ctx)
        .expect("the access canister installs");
    state
}

/// The argument for `ops` on a heap of `size` bytes.
pub fn encode(ops: &[Op], size: u64) -> Vec<u8> {
    let span = size.saturating_add(WASM_PAGE_SIZE);
    let at = |at: u32| (u64::from(at) % span) as u32;
    let mut arg = Vec::with_capacity(ops.len() * 8);
    for op in ops {
        let (kind, byte, len, at) = match *op {
            Op::Read { at: a, len } => (0u8, 0u8, len, at(a)),
            Op::Write { at: a, byte, len } => (1, byte, len, at(a)),
            Op::Grow { pages } => (2, pages % 4, 0, 0),
            Op::Trap => (3, 0, 0, 0),
        };
        arg.extend_from_slice(&[kind, byte]);
        arg.extend_from_slice(&len.to_le_bytes());
        arg.extend_from_slice(&at.to_le_bytes());
    }
    arg
}

/// The pages a completed run of `arg` (as encoded) writes on a heap of `size` bytes, or `None`
/// if it traps: the model the tracker's heap delta is checked against.
pub fn written_pages(arg: &[u8], mut size: u64) -> Option<BTreeSet<u64>> {
    let page = |offset: u64| offset / PAGE_SIZE as u64;
    let mut pages = BTreeSet::new();
    let mut write = |at: u64, len: u64, size: u64| -> Option<()> {
        if at.checked_add(len)? > size {
            return None;
        }
        if len > 0 {
            pages.extend(page(at)..=page(at + len - 1));
        }
        Some(())
    };
    write(0, arg.len() as u64, size)?;
    for op in arg.chunks_exact(8) {
        let len = u64::from(u16::from_le_bytes([op[2], op[3]]));
        let at = u64::from(u32::from_le_bytes([op[4], op[5], op[6], op[7]]));
        match op[0] {
            0 if len > 0 && at + len > size => return None,
            1 => write(at, len, size)?,
            2 if size + u64::from(op[1]) * WASM_PAGE_SIZE <= MAX_HEAP => {
                size += u64::from(op[1]) * WASM_PAGE_SIZE;
            }
            3 => return None,
            _ => {}
        }
    }
    write(0, 8, size)?;
    Some(pages)
}

/// `memory` rebuilt on a page file of its pages (what a checkpoint does), the file removed from
/// the directory once mapped.
pub fn checkpointed(memory: &Memory) -> Memory {
    static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("memory-tracker-{}-{n}.pages", std::process::id()));
    let pages: Vec<(u64, [u8; PAGE_SIZE])> = (0..memory.size_bytes() / PAGE_SIZE as u64)
        .map(|index| {
            let mut page = [0u8; PAGE_SIZE];
            memory
                .read(index * PAGE_SIZE as u64, &mut page)
                .expect("in bounds");
            (index, page)
        })
        .filter(|(_, page)| page.iter().any(|&b| b != 0))
        .collect();
    let mut file = std::fs::File::create(&path).expect("a temporary page file");
    write_page_file(&mut file, pages.iter().map(|(i, page)| (*i, page, None)))
        .expect("the page file is written");
    let file = std::fs::File::open(&path).expect("the page file reopens");
    let mapped = PageFile::map(&file, &path.display().to_string()).expect("the page file maps");
    std::fs::remove_file(&path).expect("the page file is removed");
    let base = Arc::new(PageLayers::new(vec![Arc::new(mapped)]));
    Memory::from_page_map(PageMap::with_base(base), memory.size_bytes())
}

/// Runs `steps` on both engines and panics at the first divergence.
pub fn check(steps: &Steps) {
    let (copying, tracking) = engines();
    let mut reference = installed(copying);
    let mut tracked = installed(tracking);
    for (n, step) in steps.0.iter().enumerate() {
        match step {
            Step::Checkpoint => {
                reference.wasm_memory = checkpointed(&reference.wasm_memory);
                tracked.wasm_memory = checkpointed(&tracked.wasm_memory);
            }
            Step::Update(ops) | Step::Query(ops) => {
                let size = reference.wasm_memory.size_bytes();
                let arg = encode(ops, size);
                let method = if matches!(step, Step::Update(_)) {
                    "run"
                } else {
                    "peek"
                };
                let (mut reference_after, mut tracked_after) = (reference.clone(), tracked.clone());
                let expected = execute(copying, &mut reference_after, method, &arg);
                let got = execute(tracking, &mut tracked_after, method, &arg);
                assert_eq!(
                    got.result, expected.result,
                    "step {n} ({step:?}): the outcome"
                );
                assert_eq!(
                    got.instructions, expected.instructions,
                    "step {n}: the instructions executed"
                );
                let written = written_pages(&arg, size);
                assert_eq!(
                    got.result.is_ok(),
                    written.is_some(),
                    "step {n}: the model and the engines disagree on a trap"
                );
                if let Some(written) = written {
                    assert_eq!(
                        got.heap_delta,
                        written.len() as u64 * PAGE_SIZE as u64,
                        "step {n}: the tracker's heap delta is the pages written"
                    );
                    assert!(
                        expected.heap_delta <= got.heap_delta,
                        "step {n}: heap delta"
                    );
                }
                assert_eq!(
                    tracked_after.wasm_memory.size_bytes(),
                    reference_after.wasm_memory.size_bytes(),
                    "step {n}: the heap's size"
                );
                let bytes = |m: &Memory| m.read_vec(0, m.size_bytes()).expect("in bounds");
                assert!(
                    bytes(&tracked_after.wasm_memory) == bytes(&reference_after.wasm_memory),
                    "step {n} ({step:?}): the heaps differ"
                );
                if matches!(step, Step::Update(_)) {
                    (reference, tracked) = (reference_after, tracked_after);
                }
            }
        }
    }
}

/// A few fixed sequences: the patterns a tracker gets wrong first.
pub fn sequences() -> Vec<(&'static str, Steps)> {
    use Op::*;
    let page = PAGE_SIZE as u32;
    vec![
        (
            "write_read_checkpoint_write",
            Steps(vec![
                Step::Update(vec![Write {
                    at: page,
                    byte: 7,
                    len: 10,
                }]),
                Step::Checkpoint,
                Step::Update(vec![
                    Read { at: page, len: 16 },
                    Write {
                        at: 3 * page - 1,
                        byte: 9,
                        len: 2,
                    },
                ]),
                Step::Update(vec![Read {
                    at: 3 * page - 4,
                    len: 8,
                }]),
            ]),
        ),
        (
            "trap_after_write_keeps_nothing",
            Steps(vec![
                Step::Update(vec![
                    Write {
                        at: 2 * page,
                        byte: 1,
                        len: 100,
                    },
                    Trap,
                ]),
                Step::Update(vec![Read {
                    at: 2 * page,
                    len: 100,
                }]),
            ]),
        ),
        (
            "query_writes_nothing",
            Steps(vec![
                Step::Query(vec![Write {
                    at: 5 * page,
                    byte: 3,
                    len: 8,
                }]),
                Step::Update(vec![Read {
                    at: 5 * page,
                    len: 8,
                }]),
            ]),
        ),
        (
            "grow_then_touch_new_pages",
            Steps(vec![
                Step::Update(vec![
                    Grow { pages: 2 },
                    Write {
                        at: 17 * page,
                        byte: 5,
                        len: 4,
                    },
                ]),
                Step::Checkpoint,
                Step::Update(vec![
                    Grow { pages: 1 },
                    Read {
                        at: 17 * page,
                        len: 4,
                    },
                ]),
                Step::Update(vec![Read {
                    at: 47 * page,
                    len: 64,
                }]),
            ]),
        ),
        (
            "read_past_the_end_traps",
            Steps(vec![Step::Update(vec![Read {
                at: 16 * page - 2,
                len: 4,
            }])]),
        ),
    ]
}

/// `count` steps from `seed` (xorshift): most of them updates of a few operations.
pub fn seeded(seed: u64, count: usize) -> Steps {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let steps = (0..count)
        .map(|_| {
            let ops: Vec<Op> = (0..next() % 6)
                .map(|_| match next() % 10 {
                    0..=3 => Op::Read {
                        at: next() as u32,
                        len: (next() % 9000) as u16,
                    },
                    4..=7 => Op::Write {
                        at: next() as u32,
                        byte: next() as u8,
                        len: (next() % 9000) as u16,
                    },
                    8 => Op::Grow {
                        pages: next() as u8,
                    },
                    _ => Op::Trap,
                })
                .collect();
            match next() % 8 {
                0 => Step::Checkpoint,
                1 => Step::Query(ops),
                _ => Step::Update(ops),
            }
        })
        .collect();
    Steps(steps)
}

//! Real Wasm canisters on wasmtime: what a message costs, what compiling costs, and that take and
//! load stay O(1) with a real canister.
//!
//! Groups (criterion; medians and ratios in `benches/README.md`):
//! - `wasm_message/<heap>`: one small update (`inc`: add one to a word of the heap, reply)
//!   through `update_call` (a round: ingress, execution, accounting) on a WAT canister whose
//!   heap of 1 MiB, 16 MiB, 256 MiB or 1 GiB was grown and written in full by its own messages
//!   first. The engine copies the heap into a fresh instance and compares it out, so this is
//!   O(heap) until the memory tracker (issue 22); the 1 MiB row is the baseline.
//! - `motoko_message`: the Motoko key-value store's `put` (same key each time: a small update)
//!   through `update_call`, beside `bare_wasmtime`: the same export of the same module called
//!   directly on one live wasmtime instance with stub `ic0` imports, no state copied in or out,
//!   no round: the floor the replica's per-message overhead is measured against.
//! - `motoko_compile`: validating, instrumenting and compiling the Motoko module on an engine
//!   that has not seen it (`cold`), beside the same call answered by the module cache (`hit`).
//! - `wasm_take_load/<heap>`: `take_canister_snapshot` and `load_canister_snapshot` through
//!   the harness on the WAT canister at 16 MiB, 256 MiB and 1 GiB, and on the Motoko canister:
//!   the 16 MiB row is the baseline, the promise is that size does not matter.
//!
//! Environment:
//! - `BENCH_SKIP=1`: build only; the binary exits at once.
//! - `BENCH_QUICK=1`: heaps of 1, 16 and 256 MiB for messages, 16 and 256 MiB for take/load.
//! - Without `--bench` (`cargo test --benches`) criterion runs each benchmark once as a smoke
//!   test, at 1 MiB (messages) and 16 MiB (take/load).

use std::hint::black_box;
use std::time::{Duration, Instant};

use candid::{Encode, Principal};
use canister_snapshots::embedders::WasmtimeEngine;
use canister_snapshots::execution::WasmEngine;
use canister_snapshots::state::WasmModule;
use canister_snapshots::{Config, StateMachine};
use common::Scale;
use criterion::{BatchSize, Criterion};

mod common;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const WASM_PAGE: u64 = 64 << 10;

const KV_STORE: &[u8] = include_bytes!("../tests/fixtures/motoko/kv_store.wasm");

/// A canister that grows and fills its own heap (`fill`: argument two little-endian `u32`, the
/// first Wasm page and the number of pages; every 8-byte word of them is written with a value
/// derived from its address, so no page is zero) and a small update (`inc`: one word of the
/// first page incremented, its new value the reply).
const HEAP_CANISTER: &str = r#"
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update fill")
    (local $addr i32) (local $end i32)
    (call $arg_copy (i32.const 64) (i32.const 0) (i32.const 8))
    (local.set $end (i32.add (i32.load (i32.const 64)) (i32.load (i32.const 68))))
    (if (i32.gt_u (local.get $end) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $end) (memory.size))))))
    (local.set $addr (i32.shl (i32.load (i32.const 64)) (i32.const 16)))
    (local.set $end (i32.shl (local.get $end) (i32.const 16)))
    (block $done
      (loop $words
        (br_if $done (i32.ge_u (local.get $addr) (local.get $end)))
        (i64.store (local.get $addr)
          (i64.xor (i64.extend_i32_u (local.get $addr)) (i64.const 0x5555555555555555)))
        (local.set $addr (i32.add (local.get $addr) (i32.const 8)))
        (br $words)))
    (call $reply))
  (func (export "canister_update inc")
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
)
"#;

fn main() {
    let Some(scale) = Scale::from_env("wasm") else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    message_against_heap_size(&mut c, scale);
    motoko_message(&mut c);
    motoko_compile(&mut c);
    take_and_load(&mut c, scale);
    c.final_summary();
}

fn label(size: u64) -> String {
    if size >= GIB {
        format!("{}GiB", size / GIB)
    } else {
        format!("{}MiB", size / MIB)
    }
}

fn controller() -> Principal {
    Principal::from_slice(&[0xC0, 2])
}

fn machine() -> StateMachine {
    StateMachine::with_config(Config {
        // The bench measures messages, not the allowance a real subnet paces writes with.
        heap_delta_rate_limit_bytes: u64::MAX,
        ..Config::default()
    })
}

/// A machine with the heap canister, its heap grown to `size` and written in full by its own
/// `fill` messages (64 MiB each).
fn heap_canister(size: u64) -> (StateMachine, Principal) {
    let mut sm = machine();
    let id = sm.create_canister_with_settings(Some(controller()), None);
    let module = wat::parse_str(HEAP_CANISTER).expect("the heap canister assembles");
    sm.install_canister(id, module, vec![], Some(controller()));
    let pages = u32::try_from(size / WASM_PAGE).expect("at most 4 GiB");
    let per_message = u32::try_from(64 * MIB / WASM_PAGE).expect("small");
    let started = Instant::now();
    let mut first = 0;
    while first < pages {
        let count = per_message.min(pages - first);
        let mut arg = first.to_le_bytes().to_vec();
        arg.extend_from_slice(&count.to_le_bytes());
        sm.update_call(id, controller(), "fill", arg).expect("fill");
        first += count;
    }
    let heap = heap_bytes(&sm, id);
    assert_eq!(heap, size, "the heap is the size asked for");
    eprintln!(
        "wasm: heap canister filled to {} in {:.2} s",
        label(size),
        started.elapsed().as_secs_f64()
    );
    (sm, id)
}

fn message_against_heap_size(c: &mut Criterion, scale: Scale) {
    let sizes: &[u64] = match scale {
        Scale::Smoke => &[MIB],
        Scale::Quick => &[MIB, 16 * MIB, 256 * MIB],
        Scale::Full => &[MIB, 16 * MIB, 256 * MIB, GIB],
    };
    for &size in sizes {
        let (mut sm, id) = heap_canister(size);
        let mut group = c.benchmark_group(format!("wasm_message/{}", label(size)));
        group.sample_size(10);
        group.bench_function("inc", |b| {
            b.iter(|| {
                sm.update_call(id, controller(), "inc", vec![])
                    .expect("inc")
            })
        });
        group.finish();
    }
}

/// The Motoko store installed, with one entry.
fn motoko_canister() -> (StateMachine, Principal) {
    let mut sm = machine();
    let id = sm.create_canister_with_settings(Some(controller()), None);
    sm.install_canister(
        id,
        KV_STORE.to_vec(),
        Encode!().expect("encodes"),
        Some(controller()),
    );
    let arg = Encode!(&"key", &"value").expect("encodes");
    sm.update_call(id, controller(), "put", arg).expect("put");
    (sm, id)
}

/// The size of canister `id`'s heap.
fn heap_bytes(sm: &StateMachine, id: Principal) -> u64 {
    sm.state().canisters[&id]
        .execution_state
        .as_ref()
        .expect("installed")
        .wasm_memory
        .size_bytes()
}

fn motoko_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("motoko_message");
    group.sample_size(20);
    let (mut sm, id) = motoko_canister();
    let heap = heap_bytes(&sm, id);
    eprintln!("wasm: the Motoko store's heap is {}", label(heap.max(MIB)));
    let arg = Encode!(&"key", &"value").expect("encodes");
    group.bench_function("put", |b| {
        b.iter(|| {
            sm.update_call(id, controller(), "put", arg.clone())
                .expect("put")
        })
    });
    drop(sm);
    let mut bare = bare::Instance::new(KV_STORE);
    bare.call("canister_init", &Encode!().expect("encodes"));
    group.bench_function("bare_wasmtime", |b| {
        b.iter(|| bare.call("canister_update put", black_box(&arg)))
    });
    group.finish();
}

fn motoko_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("motoko_compile");
    group.sample_size(10);
    group.bench_function("cold", |b| {
        b.iter_batched(
            WasmtimeEngine::new,
            |engine| {
                engine
                    .validate(&WasmModule::new(KV_STORE.to_vec()))
                    .expect("valid")
            },
            BatchSize::PerIteration,
        )
    });
    let engine = WasmtimeEngine::new();
    engine
        .validate(&WasmModule::new(KV_STORE.to_vec()))
        .expect("valid");
    // A module as an install presents it, new bytes whose hash is not known yet: hashed, then
    // found in the cache. (A snapshot's module at load has its hash and skips the hashing.)
    group.bench_function("hit", |b| {
        b.iter(|| {
            let module = WasmModule::new(black_box(KV_STORE).to_vec());
            engine.validate(&module).expect("valid")
        })
    });
    group.finish();
}

fn take_and_load(c: &mut Criterion, scale: Scale) {
    let sizes: &[u64] = match scale {
        Scale::Smoke => &[16 * MIB],
        Scale::Quick => &[16 * MIB, 256 * MIB],
        Scale::Full => &[16 * MIB, 256 * MIB, GIB],
    };
    let mut machines: Vec<(String, StateMachine, Principal)> = Vec::new();
    for &size in sizes {
        let (sm, id) = heap_canister(size);
        machines.push((label(size), sm, id));
    }
    let (sm, id) = motoko_canister();
    machines.push(("motoko".to_string(), sm, id));
    for (name, mut sm, id) in machines {
        let mut group = c.benchmark_group(format!("wasm_take_load/{name}"));
        group.sample_size(20);
        let mut last: Option<Vec<u8>> = None;
        group.bench_function("take", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Each take is timed alone: the previous snapshot goes first, untimed.
                    if let Some(snapshot) = last.take() {
                        sm.delete_canister_snapshot(id, Some(controller()), snapshot)
                            .expect("delete");
                    }
                    let start = Instant::now();
                    let taken = sm
                        .take_canister_snapshot(id, Some(controller()), None)
                        .expect("take");
                    total += start.elapsed();
                    last = Some(taken.id);
                }
                total
            })
        });
        let snapshot = match last.take() {
            Some(snapshot) => snapshot,
            None => {
                sm.take_canister_snapshot(id, Some(controller()), None)
                    .expect("take")
                    .id
            }
        };
        group.bench_function("load", |b| {
            b.iter(|| {
                sm.load_canister_snapshot(id, Some(controller()), snapshot.clone())
                    .expect("load")
            })
        });
        group.finish();
    }
}

/// The floor: one wasmtime instance of the unmodified module, alive across calls, with stub
/// `ic0` imports (the argument handed over, the reply dropped, every other call a zero). No
/// validation, instrumentation, fuel, state copy, accounting or round.
mod bare {
    use wasmtime::{Caller, Engine, Extern, Linker, Module, Store, Val, ValType};

    pub struct Instance {
        store: Store<Vec<u8>>,
        instance: wasmtime::Instance,
    }

    fn memory(caller: &mut Caller<'_, Vec<u8>>) -> wasmtime::Memory {
        match caller.get_export("mem") {
            Some(Extern::Memory(memory)) => memory,
            _ => panic!("the Motoko module exports its memory as `mem`"),
        }
    }

    fn int(value: &Val) -> usize {
        match value {
            Val::I32(v) => usize::try_from(*v).expect("non-negative"),
            Val::I64(v) => usize::try_from(*v).expect("non-negative"),
            _ => panic!("an integer"),
        }
    }

    impl Instance {
        pub fn new(wasm: &[u8]) -> Self {
            let mut config = wasmtime::Config::new();
            config.wasm_memory64(true);
            let engine = Engine::new(&config).expect("engine");
            let module = Module::new(&engine, wasm).expect("compiles");
            let mut linker: Linker<Vec<u8>> = Linker::new(&engine);
            for import in module.imports() {
                let name = import.name().to_string();
                let ty = import.ty().func().expect("only functions").clone();
                let wide = ty
                    .results()
                    .map(|t| matches!(t, ValType::I64))
                    .collect::<Vec<_>>();
                linker
                    .func_new(
                        "ic0",
                        import.name(),
                        ty,
                        move |mut caller, params, results| {
                            match name.as_str() {
                                "msg_arg_data_size" => {
                                    let len = caller.data().len();
                                    results[0] = if wide[0] {
                                        Val::I64(i64::try_from(len).expect("small"))
                                    } else {
                                        Val::I32(i32::try_from(len).expect("small"))
                                    };
                                }
                                "msg_arg_data_copy" => {
                                    let (dst, off, len) =
                                        (int(&params[0]), int(&params[1]), int(&params[2]));
                                    let arg = caller.data()[off..off + len].to_vec();
                                    memory(&mut caller).write(&mut caller, dst, &arg)?;
                                }
                                _ => {
                                    for (result, wide) in results.iter_mut().zip(&wide) {
                                        *result = if *wide { Val::I64(0) } else { Val::I32(0) };
                                    }
                                }
                            }
                            Ok(())
                        },
                    )
                    .expect("links");
            }
            let mut store = Store::new(&engine, Vec::new());
            let instance = linker
                .instantiate(&mut store, &module)
                .expect("instantiates");
            Instance { store, instance }
        }

        pub fn call(&mut self, export: &str, arg: &[u8]) {
            arg.clone_into(self.store.data_mut());
            let func = self
                .instance
                .get_typed_func::<(), ()>(&mut self.store, export)
                .expect("exported");
            func.call(&mut self.store, ()).expect("runs");
        }
    }
}

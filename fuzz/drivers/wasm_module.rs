//! Random valid canister modules (issue 21) on the replica's engine (`ReplicaEngine`, wasmtime
//! for every module but the native test canister's).
//!
//! The input decides two modules, built with `wasm-encoder` so that they are valid WebAssembly
//! by construction: imports from `ic0` with their exact signatures (pointers as wide as memory
//! 0), no, 32-bit or 64-bit memory, globals of every type (some exported, some mutable and
//! hidden, which instrumentation exports), data segments (in or out of bounds), a start
//! function, the `enhanced-orthogonal-persistence` section, and up to five functions exported
//! as update, query, composite query and system methods, whose bodies call the System API with
//! arbitrary arguments, store to and grow memory, set globals, loop (boundedly or forever, until
//! the instruction limit) and trap. The replica's own validation may still refuse a module
//! (its limits, a data segment out of bounds): that is a refusal like any other.
//!
//! Then, on one canister: install the first module, and up to 16 steps of updates (any method
//! name, any caller, any argument), queries, rounds (heartbeat, global timer, time passing),
//! takes (new or replacing), loads, upgrades to either module with arbitrary `skip_pre_upgrade`
//! and `wasm_memory_persistence`, reinstalls and uninstalls.
//!
//! Checks, on top of "no panic":
//! - a refused message leaves the state as a twin that executed an empty round instead
//!   ([`Replica::deliver`], the invariant the other message targets check); a method that
//!   rejected or returned without replying is no refusal: its changes are kept, as on the IC;
//! - an executed message, replayed on a twin of the state before it, gives the same reply and
//!   the same state hash (the replay hits the module cache the first execution filled, so this
//!   also checks that a cached module behaves as a freshly compiled one);
//! - an update call to a query method that runs changes nothing (a replicated query);
//! - a round gives a twin the same state hash;
//! - a query changes nothing, and asked twice gives the same answer (its writes are discarded).

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use candid::{Encode, Principal};
use canister_snapshots::Config;
use canister_snapshots::embedders::ReplicaEngine;
use canister_snapshots::embedders::system_api::SYSTEM_API;
use canister_snapshots::management::types::TakeCanisterSnapshotArgs;
use canister_snapshots::scheduler::{Batch, ExecutionLoop};
use ic_error_types::UserError;
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, InstallCodeArgs, LoadCanisterSnapshotArgs,
    ProvisionalCreateCanisterWithCyclesArgs, Snapshot, UpgradeFlags, WasmMemoryPersistence,
};
use serde_bytes::ByteBuf;
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, CustomSection, DataSection, EntityType, ExportKind,
    ExportSection, Function, FunctionSection, GlobalSection, GlobalType, Ieee32, Ieee64,
    ImportSection, InstructionSink, MemArg, MemorySection, MemoryType, Module, StartSection,
    TypeSection, ValType,
};

use super::replica::{Replica, caller, completed, controller};

/// Exports a defined function may take (each name at most once per module).
const METHOD_EXPORTS: &[&str] = &[
    "canister_update a",
    "canister_update b",
    "canister_query q",
    "canister_composite_query c",
    "canister_init",
    "canister_pre_upgrade",
    "canister_post_upgrade",
    "canister_heartbeat",
    "canister_global_timer",
];

/// The method names a step calls: those of [`METHOD_EXPORTS`], and one no module exports.
const METHODS: &[&str] = &["a", "b", "q", "c", "x"];

/// Steps after the install.
const MAX_STEPS: usize = 16;

/// A small number, biased to the edges of memory and of the argument's own size.
fn number(u: &mut Unstructured<'_>) -> Result<i64> {
    Ok(match u.int_in_range(0..=5)? {
        0 => 0,
        1 => i64::from(u.int_in_range(0u16..=64)?),
        2 => 65_536 - i64::from(u.int_in_range(0u8..=16)?),
        3 => i64::from(u.arbitrary::<u16>()?),
        4 => -1,
        _ => u.arbitrary()?,
    })
}

/// Pushes `value` as a constant of type `ty` (truncated to 32 bits for `i32` and `f32`).
fn constant(sink: &mut InstructionSink<'_>, ty: ValType, value: i64) {
    match ty {
        ValType::I32 => sink.i32_const(value as i32),
        ValType::F32 => sink.f32_const(Ieee32::new(value as u32)),
        ValType::F64 => sink.f64_const(Ieee64::new(value as u64)),
        _ => sink.i64_const(value),
    };
}

/// The same, as a global's initialiser.
fn constant_expr(ty: ValType, value: i64) -> ConstExpr {
    match ty {
        ValType::I32 => ConstExpr::i32_const(value as i32),
        ValType::F32 => ConstExpr::f32_const(Ieee32::new(value as u32)),
        ValType::F64 => ConstExpr::f64_const(Ieee64::new(value as u64)),
        _ => ConstExpr::i64_const(value),
    }
}

/// Builds a valid module from `u` (see the module doc).
pub fn build(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let memory = match u.int_in_range(0..=3)? {
        0 => None,
        1 | 2 => Some(false),
        _ => Some(true),
    };
    let memory64 = memory == Some(true);
    // Wasm pages memory 0 starts with; data segments mostly fit in them.
    let minimum: u64 = if u.ratio(1, 8)? {
        0
    } else {
        u.int_in_range(1..=2)?
    };
    let address = if memory64 { ValType::I64 } else { ValType::I32 };
    let mut types = TypeSection::new();
    let mut imports = ImportSection::new();
    // Type 0: `() -> ()`, every defined function's; type `1 + k`: the k-th import's.
    types.ty().function([ValType::I32; 0], [ValType::I32; 0]);
    let mut imported: Vec<usize> = Vec::new();
    for index in 0..SYSTEM_API.len() {
        if u.ratio(1, 4)? {
            imported.push(index);
        }
    }
    for (slot, &index) in imported.iter().enumerate() {
        let (name, params, results) = SYSTEM_API[index];
        types.ty().function(
            params
                .iter()
                .map(|t| t.pick(memory64, ValType::I32, ValType::I64)),
            results
                .iter()
                .map(|t| t.pick(memory64, ValType::I32, ValType::I64)),
        );
        imports.import("ic0", name, EntityType::Function(slot as u32 + 1));
    }
    let global_types = [ValType::I32, ValType::I64, ValType::F32, ValType::F64];
    let mut globals = GlobalSection::new();
    // (type, mutable, exported) of each defined global.
    let mut global_list = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let ty = *u.choose(&global_types)?;
        let mutable = u.arbitrary()?;
        globals.global(
            GlobalType {
                val_type: ty,
                mutable,
                shared: false,
            },
            &constant_expr(ty, number(u)?),
        );
        global_list.push((ty, mutable, u.arbitrary::<bool>()?));
    }
    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut exports = ExportSection::new();
    let defined = u.int_in_range(1..=5u32)?;
    let first = imported.len() as u32;
    let mut used: Vec<&str> = Vec::new();
    for n in 0..defined {
        functions.function(0);
        let mut f = Function::new([(1, ValType::I32)]);
        let mut sink = f.instructions();
        for _ in 0..u.int_in_range(0..=6)? {
            match u.int_in_range(0..=7)? {
                0 | 1 if !imported.is_empty() => {
                    let slot = u.choose_index(imported.len())?;
                    let (_, params, results) = SYSTEM_API[imported[slot]];
                    for ty in params {
                        let ty = ty.pick(memory64, ValType::I32, ValType::I64);
                        constant(&mut sink, ty, number(u)?);
                    }
                    sink.call(slot as u32);
                    for _ in results.iter() {
                        sink.drop();
                    }
                }
                2 if !global_list.is_empty() => {
                    let index = u.choose_index(global_list.len())?;
                    let (ty, mutable, _) = global_list[index];
                    if mutable {
                        constant(&mut sink, ty, number(u)?);
                        sink.global_set(index as u32);
                    }
                }
                3 if memory.is_some() => {
                    constant(&mut sink, address, number(u)?);
                    sink.i64_const(number(u)?);
                    sink.i64_store(MemArg {
                        offset: 0,
                        align: 0,
                        memory_index: 0,
                    });
                }
                4 if memory.is_some() => {
                    let pages = i64::from(u.int_in_range(0u8..=3)?);
                    constant(&mut sink, address, pages);
                    sink.memory_grow(0);
                    sink.drop();
                }
                5 => {
                    // A loop of up to 255 iterations on the function's local.
                    sink.i32_const(i32::from(u.arbitrary::<u8>()?));
                    sink.local_set(0);
                    sink.loop_(BlockType::Empty);
                    sink.local_get(0);
                    sink.i32_const(1);
                    sink.i32_sub();
                    sink.local_tee(0);
                    sink.i32_const(0);
                    sink.i32_gt_s();
                    sink.br_if(0);
                    sink.end();
                }
                6 if u.ratio(1, 8)? => {
                    // Forever: the instruction limit ends it.
                    sink.loop_(BlockType::Empty);
                    sink.br(0);
                    sink.end();
                }
                7 if u.ratio(1, 4)? => {
                    sink.unreachable();
                }
                _ => {}
            }
        }
        sink.end();
        code.function(&f);
        // Each defined function may be exported under one name no other function took.
        let choice = u.choose_index(METHOD_EXPORTS.len() + 1)?;
        if let Some(&name) = METHOD_EXPORTS.get(choice)
            && !used.contains(&name)
        {
            used.push(name);
            exports.export(name, ExportKind::Func, first + n);
        }
    }
    for (index, (_, _, exported)) in global_list.iter().enumerate() {
        if *exported {
            exports.export(&format!("g{index}"), ExportKind::Global, index as u32);
        }
    }
    let mut module = Module::new();
    module.section(&types);
    module.section(&imports);
    module.section(&functions);
    if memory.is_some() {
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum,
            maximum: None,
            memory64,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        if u.arbitrary()? {
            // Memory 0 under Motoko's name: the heap whatever it is called.
            exports.export("mem", ExportKind::Memory, 0);
        }
    }
    module.section(&globals);
    module.section(&exports);
    if u.ratio(1, 4)? {
        module.section(&StartSection {
            function_index: first,
        });
    }
    module.section(&code);
    if memory.is_some() {
        let mut data = DataSection::new();
        for _ in 0..u.int_in_range(0..=2)? {
            let len = u.int_in_range(0..=16u8)?;
            let fits = (minimum * 65_536).saturating_sub(u64::from(len));
            let offset = if u.ratio(1, 8)? {
                number(u)?.clamp(0, 140_000)
            } else {
                u.int_in_range(0..=fits)? as i64
            };
            let offset = if memory64 {
                ConstExpr::i64_const(offset)
            } else {
                ConstExpr::i32_const(offset as i32)
            };
            let bytes: Vec<u8> = (0..len).collect();
            data.active(0, &offset, bytes);
        }
        module.section(&data);
    }
    if u.ratio(1, 4)? {
        module.section(&CustomSection {
            name: "icp:private enhanced-orthogonal-persistence".into(),
            data: std::borrow::Cow::Borrowed(&[]),
        });
    }
    Ok(module.finish())
}

/// Small instruction limits, so that an infinite loop ends in milliseconds.
pub fn config() -> Config {
    Config {
        max_instructions_per_message: 2_000_000,
        max_instructions_per_query_message: 2_000_000,
        max_instructions_per_install_code: 4_000_000,
        ..Config::default()
    }
}

/// The execution loop every input runs on. Its module cache is shared across inputs: a cache
/// hit must behave as a compilation, which the replays check.
fn execution() -> &'static ExecutionLoop {
    static EXECUTION: OnceLock<ExecutionLoop> = OnceLock::new();
    EXECUTION.get_or_init(|| {
        let config = config();
        let engine = ReplicaEngine::for_config(&config);
        ExecutionLoop::new(config, Box::new(engine))
    })
}

/// A replica holding one empty canister controlled by [`controller`], and its id; built once,
/// cloned O(1) per input.
fn replica() -> (Replica, Principal) {
    static EMPTY: OnceLock<(Replica, Principal)> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let mut replica = Replica::on(execution(), execution().new_state());
            let args = ProvisionalCreateCanisterWithCyclesArgs::default();
            let reply = replica
                .deliver(
                    controller(),
                    Principal::management_canister(),
                    "provisional_create_canister_with_cycles",
                    Encode!(&args).expect("encodes"),
                )
                .expect("the fixture creates its canister");
            let id = candid::decode_one::<CanisterIdRecord>(&reply)
                .expect("a canister id record")
                .canister_id;
            replica.state.state_hash();
            (replica, id)
        })
        .clone()
}

/// Delivers a message ([`Replica::deliver`] checks a refusal) and, when it was executed (a reply,
/// or a method that rejected or did not reply, whose changes are kept), replays it on a twin of
/// the state before it: same outcome, same state hash.
fn step(
    replica: &mut Replica,
    sender: Principal,
    receiver: Principal,
    method: &str,
    payload: Vec<u8>,
) -> std::result::Result<Vec<u8>, UserError> {
    let mut twin = replica.clone();
    let result = replica.deliver(sender, receiver, method, payload.clone());
    if result
        .as_ref()
        .map_or_else(|err| completed(receiver, err), |_| true)
    {
        let replayed = twin.deliver(sender, receiver, method, payload);
        assert_eq!(
            replayed, result,
            "{method} replayed on the same state differs"
        );
        assert_eq!(
            replica.state.state_hash(),
            twin.state.state_hash(),
            "{method} replayed on the same state leaves another state"
        );
    }
    result
}

/// A management call from the controller.
fn manage(replica: &mut Replica, method: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
    step(
        replica,
        controller(),
        Principal::management_canister(),
        method,
        payload,
    )
    .ok()
}

fn install(
    replica: &mut Replica,
    id: Principal,
    mode: CanisterInstallMode,
    wasm: &[u8],
    arg: Vec<u8>,
) {
    let args = InstallCodeArgs {
        mode,
        canister_id: id,
        wasm_module: wasm.to_vec(),
        arg,
        sender_canister_version: None,
    };
    manage(replica, "install_code", Encode!(&args).expect("encodes"));
}

/// An empty round `seconds` after the last one (heartbeat, a due global timer), on the replica
/// and on a twin, which must end in the same state.
fn round(replica: &mut Replica, seconds: u64) {
    let mut twin = replica.clone();
    for r in [&mut *replica, &mut twin] {
        let batch = Batch {
            time: r.state.time.saturating_add(seconds * 1_000_000_000),
            ingress: Vec::new(),
        };
        r.execution.execute_round(&mut r.state, batch);
    }
    assert_eq!(
        replica.state.state_hash(),
        twin.state.state_hash(),
        "a round of heartbeat and timer on the same state leaves another state"
    );
}

/// An update call to `q`, which a module can only export as `canister_query q`: when it runs,
/// it runs as a replicated query, whose changes are discarded, so the state is that of a twin
/// that executed an empty round instead.
fn replicated_query(replica: &mut Replica, sender: Principal, id: Principal, arg: Vec<u8>) {
    let mut idle = replica.clone();
    let empty = Batch {
        time: idle.state.time,
        ingress: Vec::new(),
    };
    idle.execution.execute_round(&mut idle.state, empty);
    let result = step(replica, sender, id, "q", arg);
    if result.is_ok() || result.as_ref().is_err_and(|err| completed(id, err)) {
        assert_eq!(
            replica.state.state_hash(),
            idle.state.state_hash(),
            "an update call to query q kept its changes: {result:?}"
        );
    }
}

/// A query, twice: it changes nothing and answers the same both times.
fn query(replica: &Replica, id: Principal, sender: Principal, method: &str, arg: &[u8]) {
    let before = replica.state.state_hash();
    let first = replica
        .execution
        .execute_query(&replica.state, id, sender, method, arg);
    let second = replica
        .execution
        .execute_query(&replica.state, id, sender, method, arg);
    assert_eq!(
        first, second,
        "query {method} asked twice answers differently"
    );
    assert_eq!(
        replica.state.state_hash(),
        before,
        "query {method} changed the state"
    );
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(first), Ok(second)) = (build(&mut u), build(&mut u)) else {
        return;
    };
    let modules = [first, second];
    let (mut replica, id) = replica();
    install(
        &mut replica,
        id,
        CanisterInstallMode::Install,
        &modules[0],
        Vec::new(),
    );
    let mut snapshots: Vec<Vec<u8>> = Vec::new();
    for _ in 0..MAX_STEPS {
        let (Ok(action), Ok(choice), Ok(arg)) = (
            u.int_in_range(0..=8u8),
            u.arbitrary::<u8>(),
            u.arbitrary::<Vec<u8>>(),
        ) else {
            break;
        };
        let method = METHODS[usize::from(choice) % METHODS.len()];
        let sender = caller(choice / 8);
        match action {
            0..=2 if method == "q" => replicated_query(&mut replica, sender, id, arg),
            0..=2 => {
                let _ = step(&mut replica, sender, id, method, arg);
            }
            3 => query(&replica, id, sender, method, &arg),
            4 => round(&mut replica, u64::from(choice % 4)),
            5 => {
                let replace = (choice % 2 == 1)
                    .then(|| snapshots.last().cloned())
                    .flatten();
                let args = TakeCanisterSnapshotArgs {
                    canister_id: id,
                    replace_snapshot: replace.clone().map(ByteBuf::from),
                    uninstall_code: None,
                    sender_canister_version: None,
                    label: None,
                };
                if let Some(reply) = manage(
                    &mut replica,
                    "take_canister_snapshot",
                    Encode!(&args).expect("encodes"),
                ) {
                    let taken: Snapshot = candid::decode_one(&reply).expect("a snapshot record");
                    snapshots.retain(|s| Some(s) != replace.as_ref());
                    snapshots.push(taken.id);
                }
            }
            6 if !snapshots.is_empty() => {
                let args = LoadCanisterSnapshotArgs {
                    canister_id: id,
                    snapshot_id: snapshots[usize::from(choice) % snapshots.len()].clone(),
                    sender_canister_version: None,
                };
                manage(
                    &mut replica,
                    "load_canister_snapshot",
                    Encode!(&args).expect("encodes"),
                );
            }
            7 => {
                let wasm = &modules[usize::from(choice % 2)];
                let persistence = match (choice / 2) % 3 {
                    0 => None,
                    1 => Some(WasmMemoryPersistence::Keep),
                    _ => Some(WasmMemoryPersistence::Replace),
                };
                let skip_pre_upgrade = match (choice / 6) % 3 {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                };
                let flags = (choice / 18 % 2 == 1).then_some(UpgradeFlags {
                    skip_pre_upgrade,
                    wasm_memory_persistence: persistence,
                });
                install(
                    &mut replica,
                    id,
                    CanisterInstallMode::Upgrade(flags),
                    wasm,
                    arg,
                );
            }
            _ => {
                if choice % 4 == 0 {
                    let args = CanisterIdRecord { canister_id: id };
                    manage(
                        &mut replica,
                        "uninstall_code",
                        Encode!(&args).expect("encodes"),
                    );
                } else {
                    let wasm = &modules[usize::from(choice % 2)];
                    install(&mut replica, id, CanisterInstallMode::Reinstall, wasm, arg);
                }
            }
        }
    }
}

/// Seeds: fixed pseudo-random byte strings of several lengths (each decodes to other modules
/// and steps; a test in `tests/fuzz_corpus.rs` could not check them as values, since the input
/// is raw `Unstructured` bytes, not an encoded type).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    (0u64..12)
        .map(|k| {
            // xorshift64*, seeded by k: the same bytes on every machine.
            let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (k + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let len = 256 + 128 * k as usize;
            let bytes = (0..len)
                .map(|_| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect();
            (format!("random-{k}"), bytes)
        })
        .collect()
}

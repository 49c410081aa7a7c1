//! Real canisters: WebAssembly executed by wasmtime behind the [`WasmEngine`] seam.
//!
//! The only module that knows wasmtime. [`ReplicaEngine`] is what the replica runs: the native
//! test canister for [`crate::TEST_CANISTER_WASM`] (and
//! [`crate::execution::test_canister_module`]), [`WasmtimeEngine`] for every other module.
//!
//! **How a message runs.** A module is decoded (gzip), validated ([`validation`]),
//! instrumented ([`instrumentation`]) and compiled once, then cached by its SHA-256
//! ([`MODULE_CACHE_CAPACITY`] modules, least recently used out). Each message gets a fresh
//! instance of the instrumented module in a fresh store:
//! 1. memory 0 is grown to the heap's size (`ExecutionState::wasm_memory`) and the pages its
//!    page memory holds are copied in (a page it does not hold is zero in both); the
//!    canister's globals are set into the mutable exported globals;
//! 2. at install only, the module's active data segments are written into the heap, then
//!    `canister_start` runs (instrumentation made the start function that export);
//! 3. the method runs with the instruction limit as wasmtime fuel and the `ic0` System API
//!    ([`system_api`]) over the message's own copy of stable memory and the rest;
//! 4. on success the exported globals are read back, the heap's changed 4 KiB pages (found by
//!    comparing with the page memory) are written into it, and stable memory, certified data
//!    and the timer are handed back. On a trap nothing is handed back.
//!
//! This copy-in, compare-out design costs O(heap) per message. The memory tracker
//! ([`host_memory`], [`WasmtimeEngine::with_memory_tracker`]) makes a message cost what it
//! touches: memory 0 is the engine's own reservation, each page given to the instance on its
//! first access and handed back only if written. Page bytes are read and written only through
//! [`Memory`]'s API (and, for the tracker, [`crate::memory::PageMap::page_source`]): nothing
//! here knows where they live.
//!
//! **Determinism.** NaN canonicalisation, no threads or relaxed SIMD, fuel as the instruction
//! counter (an infinite loop ends in `CanisterInstructionLimitExceeded` and changes nothing), a
//! bounded Wasm stack ([`MAX_WASM_STACK_BYTES`]), no clock but the batch time, and heap growth
//! refused by a limiter, never by the host's memory: above 4 GiB for a 32-bit memory 0, above
//! the subnet's `max_wasm64_memory_bytes` for a 64-bit one, and above the canister's
//! `wasm_memory_limit` for either (the replica's limits). System tasks
//! (`canister_heartbeat`, `canister_global_timer`) run as the management canister's calls.

// The memory tracker's `unsafe` (mappings, page protection, the signal handler) is all in
// `host_memory`, which allows it; nothing else here may.
#![deny(unsafe_code)]

pub mod host_memory;
pub mod instrumentation;
pub mod system_api;
pub mod validation;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ic_error_types::{ErrorCode, UserError};
use wasmtime::{Caller, FuncType, Linker, Store, Trap, Val, ValType};

use crate::execution::{
    ExecutionContext, MethodKind, Response, SystemMethod, TestCanisterEngine, WasmEngine,
    is_test_canister, trap_on_memory_error,
};
use crate::memory::{Hash, Memory, PAGE_SIZE, WASM_PAGE_SIZE};
use crate::state::{Global, WasmModule};
use system_api::{ApiContext, HostTrap, SYSTEM_API, SystemApi};
use validation::{HEAP_EXPORT, ModuleInfo, START_EXPORT};

/// Compiled modules kept (compiling a Motoko module takes hundreds of milliseconds).
pub const MODULE_CACHE_CAPACITY: usize = 64;

/// The Wasm stack a message may use; deeper recursion traps.
pub const MAX_WASM_STACK_BYTES: usize = 1 << 20;

/// Address space each instance's memory reserves (not memory it uses): enough for the
/// replica's 64-bit heap limit, so that a 64-bit heap grows in place. wasmtime's default (4
/// GiB) would move a heap growing past 4 GiB to a new mapping and copy all of it, touching
/// every page of a sparse heap.
pub const MEMORY_RESERVATION_BYTES: u64 = 8 << 30;

/// The engine of the replica: the native test canister for its module, wasmtime otherwise.
pub struct ReplicaEngine {
    wasm: WasmtimeEngine,
}

impl Default for ReplicaEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicaEngine {
    pub fn new() -> Self {
        ReplicaEngine {
            wasm: WasmtimeEngine::new(),
        }
    }

    /// The engine `config` asks for: with the memory tracker if `config.memory_tracker`.
    pub fn for_config(config: &crate::Config) -> Self {
        ReplicaEngine {
            wasm: if config.memory_tracker {
                WasmtimeEngine::with_memory_tracker()
            } else {
                WasmtimeEngine::new()
            },
        }
    }

    fn pick(&self, wasm_module: &[u8]) -> &dyn WasmEngine {
        if is_test_canister(wasm_module) {
            &TestCanisterEngine
        } else {
            &self.wasm
        }
    }

    /// The engine of the module a message runs.
    fn running(&self, ctx: &ExecutionContext<'_>) -> &dyn WasmEngine {
        self.pick(ctx.execution_state.wasm_module.bytes())
    }
}

impl WasmEngine for ReplicaEngine {
    fn validate(&self, wasm_module: &WasmModule) -> Result<(), UserError> {
        self.pick(wasm_module.bytes()).validate(wasm_module)
    }

    fn initial_globals(&self, wasm_module: &WasmModule) -> Vec<Global> {
        self.pick(wasm_module.bytes()).initial_globals(wasm_module)
    }

    fn method_kind(&self, wasm_module: &WasmModule, method: &str) -> Option<MethodKind> {
        self.pick(wasm_module.bytes())
            .method_kind(wasm_module, method)
    }

    fn exports_system_method(&self, wasm_module: &WasmModule, method: SystemMethod) -> bool {
        self.pick(wasm_module.bytes())
            .exports_system_method(wasm_module, method)
    }

    fn expects_enhanced_orthogonal_persistence(&self, wasm_module: &WasmModule) -> bool {
        self.pick(wasm_module.bytes())
            .expects_enhanced_orthogonal_persistence(wasm_module)
    }

    fn execute(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Response, UserError> {
        self.running(ctx).execute(ctx, method, arg)
    }

    fn start(&self, ctx: &mut ExecutionContext<'_>) -> Result<(), UserError> {
        self.running(ctx).start(ctx)
    }

    fn execute_system_method(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: SystemMethod,
        arg: &[u8],
    ) -> Result<(), UserError> {
        self.running(ctx).execute_system_method(ctx, method, arg)
    }
}

/// A module ready to run: validated, instrumented and compiled.
struct PreparedModule {
    module: wasmtime::Module,
    info: ModuleInfo,
    /// The original module's active data segments: offset and bytes.
    data: Vec<(u64, Vec<u8>)>,
    /// Export names of the canister's globals, in export order.
    globals: Vec<String>,
    initial_globals: Vec<Global>,
}

/// Compiled modules by the SHA-256 of the installed bytes, least recently used evicted.
#[derive(Default)]
struct ModuleCache {
    modules: BTreeMap<Hash, (u64, Arc<PreparedModule>)>,
    uses: u64,
}

impl ModuleCache {
    fn get(&mut self, hash: &Hash) -> Option<Arc<PreparedModule>> {
        self.uses = self.uses.saturating_add(1);
        let uses = self.uses;
        self.modules.get_mut(hash).map(|(last, module)| {
            *last = uses;
            Arc::clone(module)
        })
    }

    fn insert(&mut self, hash: Hash, module: Arc<PreparedModule>) {
        while self.modules.len() >= MODULE_CACHE_CAPACITY {
            let oldest = self
                .modules
                .iter()
                .min_by_key(|(_, (last, _))| *last)
                .map(|(hash, _)| *hash);
            match oldest {
                Some(oldest) => self.modules.remove(&oldest),
                None => break,
            };
        }
        self.uses = self.uses.saturating_add(1);
        self.modules.insert(hash, (self.uses, module));
    }
}

/// What a store holds: the message's System API and the heap's growth limit.
struct StoreData {
    api: SystemApi,
    heap: HeapLimiter,
}

/// Refuses `memory.grow` beyond the canister's heap limit (`memory.grow` returns -1), and
/// tables beyond a fixed bound.
struct HeapLimiter {
    max_heap_bytes: u64,
}

/// Elements a table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for HeapLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired as u64 <= self.max_heap_bytes)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// WebAssembly canisters on wasmtime (see the module doc).
pub struct WasmtimeEngine {
    engine: wasmtime::Engine,
    /// The `ic0` imports for modules with a 32-bit and a 64-bit memory 0.
    linker32: Linker<StoreData>,
    linker64: Linker<StoreData>,
    cache: Mutex<ModuleCache>,
    /// Memory 0 is a [`host_memory::TrackedHeap`] (the memory tracker), not copied in.
    tracker: bool,
}

impl Default for WasmtimeEngine {
    fn default() -> Self {
        Self::new()
    }
}

/// The System API linked for one pointer width: every function of [`SYSTEM_API`], each
/// dispatching to [`SystemApi::call`] with the heap's bytes.
fn linker(engine: &wasmtime::Engine, memory64: bool) -> wasmtime::Result<Linker<StoreData>> {
    let mut linker = Linker::new(engine);
    for (name, params, results) in SYSTEM_API {
        let ty = FuncType::new(
            engine,
            params
                .iter()
                .map(|t| t.pick(memory64, ValType::I32, ValType::I64)),
            results
                .iter()
                .map(|t| t.pick(memory64, ValType::I32, ValType::I64)),
        );
        let result = results
            .first()
            .map(|t| t.pick(memory64, ValType::I32, ValType::I64));
        linker.func_new(
            "ic0",
            name,
            ty,
            move |mut caller: Caller<'_, StoreData>, params: &[Val], out: &mut [Val]| {
                let args: Vec<u64> = params
                    .iter()
                    .map(|value| match value {
                        Val::I32(v) => u64::from(v.cast_unsigned()),
                        Val::I64(v) => v.cast_unsigned(),
                        _ => 0,
                    })
                    .collect();
                let remaining = caller.get_fuel().unwrap_or(0);
                let heap = caller
                    .get_export(HEAP_EXPORT)
                    .and_then(wasmtime::Extern::into_memory);
                let mut no_heap: [u8; 0] = [];
                let (bytes, data) = match heap {
                    Some(heap) => heap.data_and_store_mut(&mut caller),
                    None => (&mut no_heap[..], caller.data_mut()),
                };
                let executed = data.api.instruction_limit.saturating_sub(remaining);
                match data.api.call(name, &args, bytes, executed) {
                    Ok(value) => {
                        if let (Some(value), Some(ty), Some(slot)) =
                            (value, &result, out.first_mut())
                        {
                            // Results are declared i32 or i64; an i32 result keeps the low
                            // 32 bits (so -1 from `stable_grow` stays -1).
                            #[allow(clippy::cast_possible_truncation)]
                            {
                                *slot = match ty {
                                    ValType::I32 => Val::I32((value as u32).cast_signed()),
                                    _ => Val::I64(value.cast_signed()),
                                };
                            }
                        }
                        Ok(())
                    }
                    Err(err) => {
                        data.api.error = Some(err);
                        Err(wasmtime::Error::new(HostTrap))
                    }
                }
            },
        )?;
    }
    Ok(linker)
}

fn global_value(value: &Val) -> Option<Global> {
    match value {
        Val::I32(v) => Some(Global::I32(*v)),
        Val::I64(v) => Some(Global::I64(*v)),
        Val::F32(bits) => Some(Global::F32(*bits)),
        Val::F64(bits) => Some(Global::F64(*bits)),
        Val::V128(v) => Some(Global::V128(v.as_u128())),
        _ => None,
    }
}

fn wasm_value(global: &Global) -> Val {
    match global {
        Global::I32(v) => Val::I32(*v),
        Global::I64(v) => Val::I64(*v),
        Global::F32(bits) => Val::F32(*bits),
        Global::F64(bits) => Val::F64(*bits),
        Global::V128(v) => Val::V128((*v).into()),
    }
}

fn trapped(message: impl std::fmt::Display) -> UserError {
    UserError::new(
        ErrorCode::CanisterTrapped,
        format!("Canister trapped: {message}"),
    )
}

/// A message's entry point and what it may do.
struct Run<'r> {
    /// `None`: only the install's data segments (a module without a start function).
    export: Option<&'r str>,
    context: ApiContext,
    arg: &'r [u8],
    /// Install only: write the active data segments before the export runs.
    apply_data: bool,
}

impl WasmtimeEngine {
    // The configuration is constant: if wasmtime refused it, no canister could run, and the
    // unit tests construct it.
    pub fn new() -> Self {
        Self::configured(false)
    }

    /// The engine with the memory tracker ([`host_memory`]): memory 0 of each instance is the
    /// engine's own reservation, given page by page as the message touches it; only the pages
    /// it wrote go back into the heap.
    pub fn with_memory_tracker() -> Self {
        Self::configured(true)
    }

    /// Whether this engine runs the memory tracker.
    pub fn tracks_memory(&self) -> bool {
        self.tracker
    }

    #[allow(clippy::expect_used)]
    fn configured(tracker: bool) -> Self {
        let mut config = wasmtime::Config::new();
        config
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false)
            .wasm_multi_memory(false)
            .wasm_memory64(true)
            .wasm_tail_call(false)
            .memory_init_cow(false)
            .memory_reservation(MEMORY_RESERVATION_BYTES)
            .max_wasm_stack(MAX_WASM_STACK_BYTES);
        if tracker {
            config
                .with_host_memory(Arc::new(host_memory::TrackedMemoryCreator))
                .memory_reservation(host_memory::MEMORY_RESERVATION)
                .memory_guard_size(host_memory::MEMORY_GUARD);
        }
        let engine = wasmtime::Engine::new(&config).expect("the engine's configuration is valid");
        let linker32 = linker(&engine, false).expect("the System API links");
        let linker64 = linker(&engine, true).expect("the System API links");
        WasmtimeEngine {
            engine,
            linker32,
            linker64,
            cache: Mutex::new(ModuleCache::default()),
            tracker,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ModuleCache> {
        // A panic while holding the lock leaves the cache consistent (it only maps hashes to
        // immutable modules), so a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many compiled modules the cache holds.
    pub fn cached_modules(&self) -> usize {
        self.cache().modules.len()
    }

    fn linker(&self, info: &ModuleInfo) -> &Linker<StoreData> {
        if info.memory64 == Some(true) {
            &self.linker64
        } else {
            &self.linker32
        }
    }

    /// The module `wasm_module`, validated, instrumented and compiled, from the cache when it
    /// is there.
    fn prepare(&self, wasm_module: &[u8], hash: Hash) -> Result<Arc<PreparedModule>, UserError> {
        if let Some(prepared) = self.cache().get(&hash) {
            return Ok(prepared);
        }
        let wasm = validation::decode(wasm_module)?;
        let info = validation::validate_module(&wasm)?;
        let instrumented = instrumentation::instrument(&wasm, &info)?;
        let module = wasmtime::Module::new(&self.engine, &instrumented.wasm).map_err(|err| {
            UserError::new(
                ErrorCode::CanisterInvalidWasm,
                format!("Wasm module is invalid: it does not compile: {err}"),
            )
        })?;
        let data = info
            .active_data
            .iter()
            .map(|(_, segment)| {
                let bytes = wasm.get(segment.bytes.clone()).unwrap_or_default();
                (segment.offset, bytes.to_vec())
            })
            .collect();
        let mut prepared = PreparedModule {
            module,
            info,
            data,
            globals: instrumented.exported_globals,
            initial_globals: Vec::new(),
        };
        prepared.initial_globals = self.read_initial_globals(&prepared)?;
        let prepared = Arc::new(prepared);
        self.cache().insert(hash, Arc::clone(&prepared));
        Ok(prepared)
    }

    /// The exported globals of a fresh instance (instantiation runs no code: the instrumented
    /// module has no start function and no active data).
    fn read_initial_globals(&self, prepared: &PreparedModule) -> Result<Vec<Global>, UserError> {
        let mut store = Store::new(&self.engine, self.store_data(empty_api(), u64::MAX));
        store.limiter(|data| &mut data.heap);
        let instance = self
            .linker(&prepared.info)
            .instantiate(&mut store, &prepared.module)
            .map_err(|err| {
                UserError::new(
                    ErrorCode::CanisterInvalidWasm,
                    format!("Wasm module is invalid: it does not instantiate: {err}"),
                )
            })?;
        prepared
            .globals
            .iter()
            .map(|name| {
                instance
                    .get_global(&mut store, name)
                    .and_then(|global| global_value(&global.get(&mut store)))
                    .ok_or_else(|| trapped(format!("global `{name}` is missing")))
            })
            .collect()
    }

    fn store_data(&self, api: SystemApi, max_heap_bytes: u64) -> StoreData {
        StoreData {
            api,
            heap: HeapLimiter { max_heap_bytes },
        }
    }

    fn prepared(&self, ctx: &ExecutionContext<'_>) -> Result<Arc<PreparedModule>, UserError> {
        let module = &ctx.execution_state.wasm_module;
        self.prepare(module.bytes(), *module.hash())
    }

    /// Runs one entry point on a fresh instance (see the module doc); hands the changes back to
    /// `ctx` only on success.
    #[allow(clippy::too_many_lines)]
    fn run(
        &self,
        prepared: &PreparedModule,
        ctx: &mut ExecutionContext<'_>,
        run: Run<'_>,
    ) -> Result<Response, UserError> {
        let heap_size = ctx.execution_state.wasm_memory.size_bytes();
        // The replica's heap limits: 4 GiB for a 32-bit memory, the subnet's
        // `max_wasm64_memory_size` for a 64-bit one, both capped by the canister's
        // `wasm_memory_limit`; `memory.grow` past it returns -1.
        let limit = if prepared.info.memory64 == Some(true) {
            ctx.wasm64_memory_limit
        } else {
            ctx.wasm_memory_limit
        };
        let max_heap_bytes = limit.max(heap_size);
        let api = SystemApi {
            context: run.context,
            arg: run.arg.to_vec(),
            caller: ctx.caller,
            canister_id: ctx.canister.canister_id,
            controllers: ctx.canister.controllers.iter().copied().collect(),
            status: ctx.canister.status,
            cycles: ctx.canister.cycles,
            canister_version: ctx.canister.canister_version,
            time: ctx.time,
            stable_memory: ctx.execution_state.stable_memory.clone(),
            stable_memory_limit: ctx.stable_memory_limit,
            stable_delta: 0,
            certified_data: ctx.certified_data.clone(),
            global_timer: ctx.global_timer,
            max_reply_bytes: ctx.max_reply_bytes,
            reply: Vec::new(),
            response: None,
            instruction_limit: ctx
                .instruction_limit
                .saturating_sub(ctx.instructions_executed),
            error: None,
        };
        let mut store = Store::new(&self.engine, self.store_data(api, max_heap_bytes));
        store.limiter(|data| &mut data.heap);
        // The steps of one install share its limit: each starts with what the last left.
        let fuel = ctx
            .instruction_limit
            .saturating_sub(ctx.instructions_executed);
        store.set_fuel(fuel).map_err(trapped)?;
        let next_heap = self.tracker.then(|| {
            host_memory::serve_next(ctx.execution_state.wasm_memory.clone(), max_heap_bytes)
        });
        let instance = self
            .linker(&prepared.info)
            .instantiate(&mut store, &prepared.module)
            .map_err(|err| trapped(format!("the module does not instantiate: {err}")))?;
        let tracked = next_heap.and_then(host_memory::ServeNext::created);
        if let Some(tracked) = &tracked {
            host_memory::track(&mut store, Arc::clone(tracked));
        }

        // 1. The heap and the globals.
        let heap = instance.get_memory(&mut store, HEAP_EXPORT);
        match heap {
            Some(heap) => {
                let size = heap.data_size(&store) as u64;
                if heap_size > size {
                    heap.grow(&mut store, heap_size.saturating_sub(size) / WASM_PAGE_SIZE)
                        .map_err(|err| {
                            trapped(format!(
                                "the canister's heap of {heap_size} bytes does not fit the \
                                 module's memory: {err}"
                            ))
                        })?;
                }
                // The tracker gives the instance each page on first access instead.
                if tracked.is_none() {
                    copy_in_heap(&ctx.execution_state.wasm_memory, heap.data_mut(&mut store))?;
                }
            }
            None if heap_size > 0 => {
                return Err(trapped(format!(
                    "the canister has a heap of {heap_size} bytes but its module has no memory"
                )));
            }
            None => {}
        }
        let globals = &ctx.execution_state.exported_globals;
        if globals.len() != prepared.globals.len() {
            return Err(trapped(format!(
                "the canister has {} globals but its module exports {}: was a snapshot of \
                 another module loaded?",
                globals.len(),
                prepared.globals.len()
            )));
        }
        for (name, value) in prepared.globals.iter().zip(globals) {
            let global = instance
                .get_global(&mut store, name)
                .ok_or_else(|| trapped(format!("global `{name}` is missing")))?;
            if global.ty(&store).mutability() == wasmtime::Mutability::Var {
                global.set(&mut store, wasm_value(value)).map_err(|err| {
                    trapped(format!("global `{name}` cannot hold {value:?}: {err}"))
                })?;
            }
        }

        // 2. Install: the data segments, once.
        if run.apply_data
            && let Some(heap) = heap
        {
            let size = heap.data_size(&store);
            for (index, (offset, data)) in prepared.data.iter().enumerate() {
                let range = usize::try_from(*offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(data.len())?))
                    .filter(|range| range.end <= size)
                    .ok_or_else(|| {
                        trapped(format!(
                            "active data segment {index} ({} bytes at {offset}) does not fit \
                             in the heap of {} bytes",
                            data.len(),
                            heap_size
                        ))
                    })?;
                match &tracked {
                    Some(tracked) => tracked
                        .write(range.start, data)
                        .map_err(trap_on_memory_error)?,
                    None => {
                        if let Some(target) = heap.data_mut(&mut store).get_mut(range) {
                            target.copy_from_slice(data);
                        }
                    }
                }
            }
        }

        // 3. The entry point.
        if let Some(export) = run.export {
            let func = instance
                .get_typed_func::<(), ()>(&mut store, export)
                .map_err(|err| trapped(format!("export `{export}`: {err}")))?;
            let outcome = func.call(&mut store, ());
            let remaining = store.get_fuel().unwrap_or(0);
            ctx.instructions_executed = ctx
                .instructions_executed
                .saturating_add(fuel.saturating_sub(remaining));
            // A damaged page file page read as zeros: nothing the message did may count.
            if let Some(err) = tracked
                .as_deref()
                .and_then(host_memory::TrackedHeap::damaged)
            {
                return Err(trap_on_memory_error(err));
            }
            if let Err(err) = outcome {
                return Err(self.message_error(err, store.data_mut().api.error.take(), ctx));
            }
        }

        // 4. Hand the changes back (not if a page was damaged: the install's data segments
        // too may have met one).
        if let Some(err) = tracked
            .as_deref()
            .and_then(host_memory::TrackedHeap::damaged)
        {
            return Err(trap_on_memory_error(err));
        }
        let mut exported = Vec::with_capacity(prepared.globals.len());
        for name in &prepared.globals {
            let value = instance
                .get_global(&mut store, name)
                .and_then(|global| global_value(&global.get(&mut store)))
                .ok_or_else(|| trapped(format!("global `{name}` is missing")))?;
            exported.push(value);
        }
        let mut heap_delta = 0u64;
        if let Some(heap) = heap {
            let wasm_memory = &mut ctx.execution_state.wasm_memory;
            heap_delta = match &tracked {
                Some(tracked) => {
                    fit_heap(tracked.size_bytes(), wasm_memory, max_heap_bytes)?;
                    tracked
                        .write_back(wasm_memory)
                        .map_err(trap_on_memory_error)?
                }
                None => write_back_heap(heap.data(&store), wasm_memory, max_heap_bytes)?,
            };
        }
        let data = store.into_data();
        let total_delta = heap_delta.saturating_add(data.api.stable_delta);
        if total_delta > ctx.max_heap_delta {
            return Err(UserError::new(
                ErrorCode::CanisterInstructionLimitExceeded,
                format!(
                    "Canister exceeded the limit of {} bytes written per message (this one \
                     wrote {total_delta}): split the work across messages.",
                    ctx.max_heap_delta
                ),
            ));
        }
        ctx.heap_delta = ctx.heap_delta.saturating_add(total_delta);
        ctx.execution_state.exported_globals = exported;
        ctx.execution_state.stable_memory = data.api.stable_memory;
        *ctx.certified_data = data.api.certified_data;
        ctx.global_timer = data.api.global_timer;
        Ok(match data.api.response {
            Some(system_api::Response::Replied) => Response::Reply(data.api.reply),
            Some(system_api::Response::Rejected(message)) => Response::Reject(message),
            None => Response::NoResponse,
        })
    }

    /// The error a failed call ends the message with.
    fn message_error(
        &self,
        err: wasmtime::Error,
        api_error: Option<UserError>,
        ctx: &ExecutionContext<'_>,
    ) -> UserError {
        if let Some(api_error) = api_error {
            return api_error;
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => UserError::new(
                ErrorCode::CanisterInstructionLimitExceeded,
                format!(
                    "Canister {} exceeded the limit of {} instructions for single message \
                     execution.",
                    ctx.canister.canister_id, ctx.instruction_limit
                ),
            ),
            Some(Trap::StackOverflow) => trapped("stack overflow"),
            Some(trap) => trapped(trap),
            None => trapped(err),
        }
    }
}

/// Copies the heap into `instance` (a fresh memory, zero, at least as large): only the pages
/// the page memory holds, so a sparse heap costs what it holds, not its size.
fn copy_in_heap(heap: &Memory, instance: &mut [u8]) -> Result<(), UserError> {
    let size = heap.size_bytes();
    if instance.len() < usize::try_from(size).unwrap_or(usize::MAX) {
        return Err(trapped("the heap does not fit the module's memory"));
    }
    for index in heap.page_map().present_indices() {
        let offset = index.saturating_mul(PAGE_SIZE as u64);
        if offset >= size {
            break;
        }
        let target = usize::try_from(offset)
            .ok()
            .and_then(|start| instance.get_mut(start..start.checked_add(PAGE_SIZE)?))
            .ok_or_else(|| trapped("the heap does not fit the module's memory"))?;
        heap.read(offset, target).map_err(trap_on_memory_error)?;
    }
    Ok(())
}

/// A page of zeros: what a page the page memory does not hold reads as.
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Writes the pages of `instance` (the heap after a message) that differ from `heap` into it,
/// growing it to the instance's size. Returns the bytes of pages written. A page the page
/// memory does not hold is compared with zeros without a read.
fn write_back_heap(instance: &[u8], heap: &mut Memory, limit: u64) -> Result<u64, UserError> {
    fit_heap(instance.len() as u64, heap, limit)?;
    let held: std::collections::BTreeSet<u64> = heap.page_map().present_indices().collect();
    let mut old = [0u8; PAGE_SIZE];
    let mut written = 0u64;
    for (index, page) in (0u64..).zip(instance.chunks(PAGE_SIZE)) {
        let offset = index.saturating_mul(PAGE_SIZE as u64);
        let changed = if held.contains(&index) {
            let old = old.get_mut(..page.len()).unwrap_or_default();
            heap.read(offset, old).map_err(trap_on_memory_error)?;
            old != page
        } else {
            page != ZERO_PAGE.get(..page.len()).unwrap_or_default()
        };
        if changed {
            heap.write(offset, page).map_err(trap_on_memory_error)?;
            written = written.saturating_add(PAGE_SIZE as u64);
        }
    }
    Ok(written)
}

/// Grows `heap` to the instance's `size` after a message (`memory.grow` never shrinks).
fn fit_heap(size: u64, heap: &mut Memory, limit: u64) -> Result<(), UserError> {
    if size > heap.size_bytes() {
        heap.resize(size, limit.max(size))
            .map_err(trap_on_memory_error)?;
    }
    Ok(())
}

/// A System API for code that must not call it (reading a fresh instance's globals).
fn empty_api() -> SystemApi {
    SystemApi {
        context: ApiContext::Start,
        arg: Vec::new(),
        caller: candid::Principal::anonymous(),
        canister_id: candid::Principal::anonymous(),
        controllers: Vec::new(),
        status: crate::state::CanisterStatus::Running,
        cycles: 0,
        canister_version: 0,
        time: 0,
        stable_memory: Memory::new(),
        stable_memory_limit: 0,
        stable_delta: 0,
        certified_data: Vec::new(),
        global_timer: None,
        max_reply_bytes: 0,
        reply: Vec::new(),
        response: None,
        instruction_limit: 0,
        error: None,
    }
}

impl WasmEngine for WasmtimeEngine {
    fn validate(&self, wasm_module: &WasmModule) -> Result<(), UserError> {
        self.prepare(wasm_module.bytes(), *wasm_module.hash())
            .map(|_| ())
    }

    fn initial_globals(&self, wasm_module: &WasmModule) -> Vec<Global> {
        self.prepare(wasm_module.bytes(), *wasm_module.hash())
            .map(|prepared| prepared.initial_globals.clone())
            .unwrap_or_default()
    }

    fn method_kind(&self, wasm_module: &WasmModule, method: &str) -> Option<MethodKind> {
        let prepared = self
            .prepare(wasm_module.bytes(), *wasm_module.hash())
            .ok()?;
        prepared.info.methods.get(method).copied()
    }

    fn exports_system_method(&self, wasm_module: &WasmModule, method: SystemMethod) -> bool {
        self.prepare(wasm_module.bytes(), *wasm_module.hash())
            .is_ok_and(|prepared| prepared.info.system_methods.contains(method.export_name()))
    }

    fn expects_enhanced_orthogonal_persistence(&self, wasm_module: &WasmModule) -> bool {
        self.prepare(wasm_module.bytes(), *wasm_module.hash())
            .is_ok_and(|prepared| prepared.info.enhanced_orthogonal_persistence)
    }

    fn execute(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Response, UserError> {
        let prepared = self.prepared(ctx)?;
        let Some(kind) = prepared.info.methods.get(method).copied() else {
            return Err(UserError::new(
                ErrorCode::CanisterMethodNotFound,
                format!(
                    "Canister {} has no method '{method}'.",
                    ctx.canister.canister_id
                ),
            ));
        };
        let export = match kind {
            MethodKind::Update => format!("canister_update {method}"),
            MethodKind::Query => format!("canister_query {method}"),
            MethodKind::CompositeQuery => format!("canister_composite_query {method}"),
        };
        self.run(
            &prepared,
            ctx,
            Run {
                export: Some(&export),
                context: ApiContext::of_method(kind, false),
                arg,
                apply_data: false,
            },
        )
    }

    fn start(&self, ctx: &mut ExecutionContext<'_>) -> Result<(), UserError> {
        let prepared = self.prepared(ctx)?;
        // Without a start function, the run only sizes the heap to the module's memory and
        // writes the data segments into it.
        self.run(
            &prepared,
            ctx,
            Run {
                export: prepared.info.start.map(|_| START_EXPORT),
                context: ApiContext::Start,
                arg: &[],
                // A heap kept by an upgrade (`wasm_memory_persistence = keep`) already holds
                // what the segments once wrote.
                apply_data: ctx.execution_state.wasm_memory.size_bytes() == 0,
            },
        )
        .map(|_| ())
    }

    fn execute_system_method(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: SystemMethod,
        arg: &[u8],
    ) -> Result<(), UserError> {
        let prepared = self.prepared(ctx)?;
        let export = method.export_name();
        if !prepared.info.system_methods.contains(export) {
            return Ok(());
        }
        let context = match method {
            SystemMethod::Init | SystemMethod::PostUpgrade => ApiContext::Init,
            SystemMethod::PreUpgrade => ApiContext::PreUpgrade,
            SystemMethod::Heartbeat | SystemMethod::GlobalTimer => ApiContext::SystemTask,
        };
        self.run(
            &prepared,
            ctx,
            Run {
                export: Some(export),
                context,
                arg,
                apply_data: false,
            },
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::checksum::sha256;

    fn module(n: usize) -> Vec<u8> {
        wat::parse_str(format!(r#"(module (func (export "canister_query q{n}")))"#)).unwrap()
    }

    /// A module is compiled once and then served from the cache; the cache keeps at most
    /// `MODULE_CACHE_CAPACITY` modules, dropping the least recently used.
    #[test]
    fn compiled_modules_are_cached_and_bounded() {
        let engine = WasmtimeEngine::new();
        let first = module(0);
        engine.validate(&WasmModule::new(first.clone())).unwrap();
        engine.validate(&WasmModule::new(first.clone())).unwrap();
        assert_eq!(engine.cached_modules(), 1);
        let a = engine.prepare(&first, sha256(&first)).unwrap();
        let b = engine.prepare(&first, sha256(&first)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second prepare is a cache hit");
        for n in 1..=MODULE_CACHE_CAPACITY {
            // Touch the first module so that it stays the most recently used.
            engine.prepare(&first, sha256(&first)).unwrap();
            engine.validate(&WasmModule::new(module(n))).unwrap();
        }
        assert_eq!(engine.cached_modules(), MODULE_CACHE_CAPACITY);
        let c = engine.prepare(&first, sha256(&first)).unwrap();
        assert!(Arc::ptr_eq(&a, &c), "the recently used module was kept");
        let one = module(1);
        assert!(
            engine.cache().get(&sha256(&one)).is_none(),
            "the least recently used module was evicted"
        );
    }

    /// A load validates the snapshot's module again, as the replica does, with the hash the
    /// module has kept since its install: none of its bytes are hashed again (a 246 KiB Motoko
    /// module took ~1.8 ms to hash, most of what a load cost).
    #[test]
    fn a_load_does_not_hash_the_module_again() {
        use crate::memory::checksum::SHA256_BYTES;
        use ic_management_canister_types::CanisterInstallMode;
        // 256 KiB of custom section, so that hashing the module would show.
        let padding = "x".repeat(256 << 10);
        let wasm = wat::parse_str(format!(
            r#"(module (func (export "canister_update f")) (@custom "padding" "{padding}"))"#
        ))
        .unwrap();
        let controller = candid::Principal::self_authenticating([1]);
        let mut sm = crate::StateMachine::new();
        let id = sm.create_canister_with_settings(Some(controller), None);
        let install = CanisterInstallMode::Install;
        sm.install_code(id, install, wasm.clone(), vec![], Some(controller))
            .unwrap();
        let snapshot = sm
            .take_canister_snapshot(id, Some(controller), None)
            .unwrap();
        let hashed = || SHA256_BYTES.with(|n| n.get());
        let before = hashed();
        sm.load_canister_snapshot(id, Some(controller), snapshot.id)
            .unwrap();
        let during = hashed() - before;
        assert!(
            during < wasm.len() as u64,
            "the load hashed {during} bytes, the module is {} bytes",
            wasm.len()
        );
    }
}

//! Canister execution: the [`WasmEngine`] seam and the message runner that keeps a trapped
//! message from changing anything.
//!
//! Depends on [`crate::state`] and [`crate::memory`]; knows nothing of snapshots. A message runs
//! against a copy of the canister's execution state (O(1): the memories are copy-on-write) and
//! the copy replaces the original only if the message succeeds, so a trap leaves the canister
//! exactly as before it, byte for byte.
//!
//! No engine may read the clock or anything else outside its [`ExecutionContext`]: the context
//! carries the batch time.

#![forbid(unsafe_code)]

pub mod test_canister;

use std::collections::BTreeSet;

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};

use crate::config::Config;
use crate::memory::{MAX_WASM_MEMORY_BYTES, Memory, MemoryError, PAGE_SIZE};
use crate::state::{CanisterState, CanisterStatus, Cycles, ExecutionState, Global, WasmModule};

pub use test_canister::{
    TEST_CANISTER_WASM, TestCanisterEngine, is_test_canister, test_canister_module,
};

/// What a canister method sees while it runs.
pub struct ExecutionContext<'a> {
    pub execution_state: &'a mut ExecutionState,
    pub certified_data: &'a mut Vec<u8>,
    pub caller: Principal,
    /// Batch time, ns since the Unix epoch.
    pub time: u64,
    /// How far the heap may grow: the smaller of 4 GiB and the canister's `wasm_memory_limit`.
    pub wasm_memory_limit: u64,
    /// How far a 64-bit heap may grow: the smaller of `Config::max_wasm64_memory_bytes` and
    /// the canister's `wasm_memory_limit`.
    pub wasm64_memory_limit: u64,
    pub stable_memory_limit: u64,
    /// Bytes of pages written so far by this message (rounded up to whole pages).
    pub heap_delta: u64,
    /// The most this message may write (its heap delta), like the IC's per-message limits.
    pub max_heap_delta: u64,
    /// The largest reply this message may produce; a method refuses to build a larger one.
    pub max_reply_bytes: u64,
    /// What the System API tells the canister about itself.
    pub canister: CanisterEnvironment<'a>,
    /// The canister's global timer (`ic0.global_timer_set`); kept only if the message succeeds.
    pub global_timer: Option<u64>,
    /// The most instructions this message may execute (the replica's limit for its kind).
    pub instruction_limit: u64,
    /// Instructions the message executed, set by the engine.
    pub instructions_executed: u64,
}

/// The canister a message runs on, as its System API sees it (read only).
#[derive(Clone, Copy, Debug)]
pub struct CanisterEnvironment<'a> {
    pub canister_id: Principal,
    pub controllers: &'a BTreeSet<Principal>,
    pub status: CanisterStatus,
    pub cycles: Cycles,
    pub canister_version: u64,
}

impl<'a> CanisterEnvironment<'a> {
    pub fn of(canister: &'a CanisterState) -> Self {
        CanisterEnvironment {
            canister_id: canister.canister_id,
            controllers: &canister.controllers,
            status: canister.status,
            cycles: canister.cycles,
            canister_version: canister.canister_version,
        }
    }
}

/// How a method is exported: the kind decides whether its changes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// `canister_update <name>`: changes are kept.
    Update,
    /// `canister_query <name>`: runs on a copy, changes are discarded.
    Query,
    /// `canister_composite_query <name>`: a query that may call other queries; never an update.
    CompositeQuery,
}

/// The entry points the replica calls outside of messages: `canister_init` and the upgrade
/// hooks, run by the management canister's `install_code`, and the system tasks the scheduler
/// runs ([`execute_system_task`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemMethod {
    /// `canister_init(arg)`, after `canister_start` on a fresh heap.
    Init,
    /// `canister_pre_upgrade`, on the old module.
    PreUpgrade,
    /// `canister_post_upgrade(arg)`, on the new module after `canister_start`.
    PostUpgrade,
    /// `canister_heartbeat`, every round for a running canister that exports it.
    Heartbeat,
    /// `canister_global_timer`, once, in the first round whose batch time reaches the timer.
    GlobalTimer,
}

impl SystemMethod {
    /// The export that implements it.
    pub fn export_name(self) -> &'static str {
        match self {
            SystemMethod::Init => "canister_init",
            SystemMethod::PreUpgrade => "canister_pre_upgrade",
            SystemMethod::PostUpgrade => "canister_post_upgrade",
            SystemMethod::Heartbeat => "canister_heartbeat",
            SystemMethod::GlobalTimer => "canister_global_timer",
        }
    }
}

/// How a method ended without trapping. A reject, unlike a trap, keeps the method's changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Reply(Vec<u8>),
    /// `ic0.msg_reject`: the caller gets a reject with this message.
    Reject(String),
    /// The method returned without replying or rejecting.
    NoResponse,
}

impl ExecutionContext<'_> {
    /// Writes into the heap or stable memory, growing it to fit, and counts the heap delta.
    pub fn write(&mut self, stable: bool, offset: u64, data: &[u8]) -> Result<(), UserError> {
        self.charge_heap_delta(offset, data.len() as u64)?;
        self.grow_to_fit(stable, offset, data.len() as u64)?;
        self.memory_mut(stable)
            .write(offset, data)
            .map_err(trap_on_memory_error)
    }

    /// Fills a byte range, growing the memory to fit, and counts the heap delta.
    pub fn fill(&mut self, stable: bool, offset: u64, len: u64, byte: u8) -> Result<(), UserError> {
        self.charge_heap_delta(offset, len)?;
        self.grow_to_fit(stable, offset, len)?;
        self.memory_mut(stable)
            .fill(offset, len, byte)
            .map_err(trap_on_memory_error)
    }

    /// Reads `len` bytes for a reply, refusing before allocating anything if the reply could
    /// not be sent anyway.
    pub fn read_for_reply(
        &self,
        stable: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, UserError> {
        if len > self.max_reply_bytes {
            return Err(UserError::new(
                ErrorCode::CanisterContractViolation,
                format!(
                    "a reply of {len} bytes exceeds the limit of {} bytes: read less per call",
                    self.max_reply_bytes
                ),
            ));
        }
        self.memory(stable)
            .read_vec(offset, len)
            .map_err(trap_on_memory_error)
    }

    /// Counts the pages a write of `len` bytes at `offset` touches, refusing (before any work)
    /// a message that would write more than its limit.
    fn charge_heap_delta(&mut self, offset: u64, len: u64) -> Result<(), UserError> {
        let delta = touched_pages(offset, len).saturating_mul(PAGE_SIZE as u64);
        let total = self.heap_delta.saturating_add(delta);
        if total > self.max_heap_delta {
            return Err(UserError::new(
                ErrorCode::CanisterInstructionLimitExceeded,
                format!(
                    "Canister exceeded the limit of {} bytes written per message (this one \
                     would write {total}): split the work across messages.",
                    self.max_heap_delta
                ),
            ));
        }
        self.heap_delta = total;
        Ok(())
    }

    pub fn memory(&self, stable: bool) -> &Memory {
        if stable {
            &self.execution_state.stable_memory
        } else {
            &self.execution_state.wasm_memory
        }
    }

    fn memory_mut(&mut self, stable: bool) -> &mut Memory {
        if stable {
            &mut self.execution_state.stable_memory
        } else {
            &mut self.execution_state.wasm_memory
        }
    }

    fn grow_to_fit(&mut self, stable: bool, offset: u64, len: u64) -> Result<(), UserError> {
        let limit = if stable {
            self.stable_memory_limit
        } else {
            self.wasm_memory_limit
        };
        let end = offset.checked_add(len).ok_or_else(|| {
            UserError::new(
                ErrorCode::CanisterTrapped,
                format!("offset {offset} + length {len} overflows 64 bits"),
            )
        })?;
        self.memory_mut(stable)
            .grow_to_fit(end, limit)
            .map_err(trap_on_memory_error)
    }
}

/// Bytes of the 4 KiB pages a write of `len` bytes at `offset` touches: the heap delta it costs.
pub fn touched_bytes(offset: u64, len: u64) -> u64 {
    touched_pages(offset, len).saturating_mul(PAGE_SIZE as u64)
}

fn touched_pages(offset: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let page = PAGE_SIZE as u64;
    // `len > 0` (checked above) and `last >= offset`, so neither can underflow; the count is at
    // most 2^52 + 1.
    #[allow(clippy::arithmetic_side_effects)]
    let pages = {
        let last = offset.saturating_add(len - 1);
        last / page - offset / page + 1
    };
    pages
}

/// A canister's own memory fault: the canister traps.
pub fn trap_on_memory_error(err: MemoryError) -> UserError {
    UserError::new(err.code(), format!("Canister trapped: {err}"))
}

/// The seam between the replica and the engine that runs canister code: the native test
/// canister ([`TestCanisterEngine`]) or real WebAssembly (`embedders::WasmtimeEngine`).
///
/// The caller owns atomicity: every method runs on a copy of the execution state, which the
/// caller keeps only when the method succeeds (and, for queries, never).
pub trait WasmEngine: Send + Sync {
    /// Accepts or refuses a module at install time and again when a snapshot holding it is
    /// loaded (refusal: `CanisterInvalidWasm`, naming what is wrong). An engine that keys what
    /// it learned by module hash uses the module's stored one ([`WasmModule::hash`], computed
    /// once per module), so validating a snapshot's module at load does not hash its bytes
    /// again.
    fn validate(&self, wasm_module: &WasmModule) -> Result<(), UserError>;

    /// The exported globals a freshly instantiated module starts with, in export order.
    fn initial_globals(&self, wasm_module: &WasmModule) -> Vec<Global>;

    /// How `method` is exported by `wasm_module`, if it is.
    fn method_kind(&self, wasm_module: &WasmModule, method: &str) -> Option<MethodKind>;

    /// Whether `wasm_module` exports the system method `method` (the scheduler runs
    /// `canister_heartbeat` and `canister_global_timer` only for modules that do).
    fn exports_system_method(&self, _wasm_module: &WasmModule, _method: SystemMethod) -> bool {
        false
    }

    /// Whether `wasm_module` is built for enhanced orthogonal persistence (it carries the
    /// `enhanced-orthogonal-persistence` custom section): its heap must be kept across upgrades.
    fn expects_enhanced_orthogonal_persistence(&self, _wasm_module: &WasmModule) -> bool {
        false
    }

    /// Runs the exported method `method` (of any [`MethodKind`]) with argument `arg`. On `Err`
    /// the caller discards every change the method made.
    fn execute(
        &self,
        ctx: &mut ExecutionContext<'_>,
        method: &str,
        arg: &[u8],
    ) -> Result<Response, UserError>;

    /// Prepares a fresh heap for a newly installed module: its active data segments, then its
    /// start function (`canister_start`). Nothing to do for a module without either.
    fn start(&self, _ctx: &mut ExecutionContext<'_>) -> Result<(), UserError> {
        Ok(())
    }

    /// Runs `method` if the module exports it (a module need not export any).
    fn execute_system_method(
        &self,
        _ctx: &mut ExecutionContext<'_>,
        _method: SystemMethod,
        _arg: &[u8],
    ) -> Result<(), UserError> {
        Ok(())
    }
}

/// What a canister's memory growth is checked against, from the replicated state this layer
/// does not see: the caller computes it before the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryContext {
    /// Bytes the subnet's capacity check starts from: the whole subnet's usage now (in a
    /// parallel round, the capacity minus this canister's share of the free memory).
    pub subnet_memory_usage: u64,
    /// Bytes the subnet holds as far as storage reservation is concerned: its usage at the start
    /// of the round plus this canister's own growth since, so the price never depends on which
    /// other canisters run in the round.
    pub reservation_usage: u64,
    /// Bytes this canister's snapshots hold (`total_size`), which count toward its own usage.
    pub snapshots_size: u64,
}

/// What growing a canister's memory commits it to, once [`check_memory_growth`] has accepted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct MemoryGrowth {
    /// Cycles the freezing threshold keeps untouchable after the growth: an operation's cost
    /// must be paid from above them.
    pub freezing_reserve: Cycles,
    /// Cycles that move from the balance to the reserved balance (storage reservation).
    pub storage_reservation: Cycles,
}

impl MemoryGrowth {
    /// Cycles available for an operation's cost once the growth is paid for.
    pub fn available(&self, canister: &CanisterState) -> Cycles {
        canister
            .cycles
            .saturating_sub(self.freezing_reserve)
            .saturating_sub(self.storage_reservation)
    }

    /// Moves the storage reservation into the canister's reserved balance.
    pub fn apply(&self, canister: &mut CanisterState) {
        canister.cycles = canister.cycles.saturating_sub(self.storage_reservation);
        canister.reserved_cycles = canister
            .reserved_cycles
            .saturating_add(self.storage_reservation);
    }
}

/// The replica's checks on a canister growing from `before` to `after` bytes (its snapshots
/// included), in its order: the subnet's capacity (`SubnetOversubscribed`), the storage
/// reservation against `reserved_cycles_limit` (`ReservedCyclesLimitExceededInMemoryGrow`),
/// then the freezing threshold (`InsufficientCyclesInMemoryGrow`: the canister must keep what
/// the threshold reserves at `after` on top of the reservation). Changes nothing; the caller
/// applies the returned [`MemoryGrowth`]. Shared by canister messages and the management
/// canister.
pub fn check_memory_growth(
    config: &Config,
    subnet_memory_usage: u64,
    reservation_usage: u64,
    canister: &CanisterState,
    before: u64,
    after: u64,
) -> Result<MemoryGrowth, UserError> {
    let id = canister.canister_id;
    let grows_by = after.saturating_sub(before);
    let subnet_after = subnet_memory_usage.saturating_add(grows_by);
    if grows_by > 0 && subnet_after > config.subnet_memory_capacity_bytes {
        return Err(UserError::new(
            ErrorCode::SubnetOversubscribed,
            format!(
                "Canister {id} needs {grows_by} more bytes, but the subnet's memory capacity of \
                 {} bytes would be exceeded. Delete snapshots or canisters.",
                config.subnet_memory_capacity_bytes
            ),
        ));
    }
    let storage_reservation = config.storage_reservation_cycles(grows_by, reservation_usage);
    let limit = canister.settings.reserved_cycles_limit;
    let reserved = canister.reserved_cycles.saturating_add(storage_reservation);
    if storage_reservation > 0 && reserved > limit {
        return Err(UserError::new(
            ErrorCode::ReservedCyclesLimitExceededInMemoryGrow,
            format!(
                "Canister {id} cannot grow memory by {grows_by} bytes due to its reserved cycles \
                 limit: the subnet is above its storage threshold, so the growth reserves \
                 {storage_reservation} cycles, and the limit ({limit}) would be exceeded by {}. \
                 Raise reserved_cycles_limit or grow less.",
                reserved.saturating_sub(limit)
            ),
        ));
    }
    let freezing_reserve = config.storage_cost(after, canister.settings.freezing_threshold);
    let needed = freezing_reserve.saturating_add(storage_reservation);
    if canister.cycles < needed {
        return Err(UserError::new(
            ErrorCode::InsufficientCyclesInMemoryGrow,
            format!(
                "Canister {id} does not have enough cycles to grow its memory to {after} bytes: \
                 its freezing threshold requires {freezing_reserve} cycles and the storage \
                 reservation {storage_reservation}, it has {}. Top up the canister or lower its \
                 freezing_threshold.",
                canister.cycles
            ),
        ));
    }
    Ok(MemoryGrowth {
        freezing_reserve,
        storage_reservation,
    })
}

/// The context of one message on `canister`: `execution_state` and `certified_data` are the
/// caller's copies, kept or dropped by the caller.
pub fn message_context<'a>(
    config: &Config,
    canister: &'a CanisterState,
    execution_state: &'a mut ExecutionState,
    certified_data: &'a mut Vec<u8>,
    caller: Principal,
    time: u64,
    instruction_limit: u64,
) -> ExecutionContext<'a> {
    ExecutionContext {
        execution_state,
        certified_data,
        caller,
        time,
        wasm_memory_limit: canister
            .settings
            .wasm_memory_limit
            .min(MAX_WASM_MEMORY_BYTES),
        wasm64_memory_limit: canister
            .settings
            .wasm_memory_limit
            .min(config.max_wasm64_memory_bytes),
        stable_memory_limit: config.stable_memory_limit_bytes,
        heap_delta: 0,
        max_heap_delta: config.max_heap_delta_per_message_bytes,
        max_reply_bytes: config.max_reply_bytes,
        canister: CanisterEnvironment::of(canister),
        global_timer: canister.global_timer,
        instruction_limit,
        instructions_executed: 0,
    }
}

/// The reject of a message to a method the module does not export as `expected`.
fn method_not_found(id: Principal, expected: &str, method: &str) -> UserError {
    UserError::new(
        ErrorCode::CanisterMethodNotFound,
        format!("Canister {id} has no {expected} method '{method}'."),
    )
}

/// The execution state of a canister that may receive messages: running, with code.
fn callable(canister: &CanisterState) -> Result<&ExecutionState, UserError> {
    let id = canister.canister_id;
    match canister.status {
        CanisterStatus::Running => {}
        CanisterStatus::Stopping => {
            return Err(UserError::new(
                ErrorCode::CanisterStopping,
                format!("Canister {id} is stopping: start it with start_canister to call it."),
            ));
        }
        CanisterStatus::Stopped => {
            return Err(UserError::new(
                ErrorCode::CanisterStopped,
                format!("Canister {id} is stopped: start it with start_canister to call it."),
            ));
        }
    }
    canister.execution_state.as_ref().ok_or_else(|| {
        UserError::new(
            ErrorCode::CanisterWasmModuleNotFound,
            format!(
                "Attempted to execute a message, but the canister {id} contains no Wasm \
                 module. Install code with install_code first."
            ),
        )
    })
}

/// The reply of a method that returned `response`, refusing one larger than the limit.
fn into_reply(config: &Config, id: Principal, response: Response) -> Result<Vec<u8>, UserError> {
    match response {
        Response::Reply(reply) if reply.len() as u64 > config.max_reply_bytes => {
            Err(UserError::new(
                ErrorCode::CanisterContractViolation,
                format!(
                    "Canister {id} tried to reply with {} bytes; the limit is {} bytes. Ask for \
                     less data per call.",
                    reply.len(),
                    config.max_reply_bytes
                ),
            ))
        }
        Response::Reply(reply) => Ok(reply),
        Response::Reject(message) => Err(UserError::new(
            ErrorCode::CanisterRejectedMessage,
            format!("Error from Canister {id}: Canister rejected the message: {message}"),
        )),
        Response::NoResponse => Err(UserError::new(
            ErrorCode::CanisterDidNotReply,
            format!("Canister {id} did not produce a response"),
        )),
    }
}

/// Executes one update call to `canister`, atomically: on error the canister is unchanged.
/// Memory the message grows is checked against the subnet's capacity and the canister's
/// freezing threshold ([`check_memory_growth`]), as the replica checks `memory.grow`; a message
/// that fails them traps. Charges the message's heap delta to the canister's debit on success.
///
/// As on the IC, an update call to a query method runs it as a *replicated query*: it
/// replies, and its changes are discarded; a composite query cannot be called as an update.
/// A method that rejects (`ic0.msg_reject`) or returns without replying keeps its changes.
#[allow(clippy::too_many_arguments)]
pub fn execute_canister_message(
    engine: &dyn WasmEngine,
    config: &Config,
    canister: &mut CanisterState,
    memory: MemoryContext,
    caller: Principal,
    time: u64,
    method: &str,
    arg: &[u8],
) -> Result<Vec<u8>, UserError> {
    let id = canister.canister_id;
    let execution_state = callable(canister)?;
    let kind = engine.method_kind(&execution_state.wasm_module, method);
    match kind {
        Some(MethodKind::Update) => {}
        Some(MethodKind::Query) => {
            let call = MethodCall::new(caller, time, method, arg);
            let limit = config.max_instructions_per_message;
            return execute_query_on(engine, config, canister, call, limit);
        }
        Some(MethodKind::CompositeQuery) => {
            return Err(UserError::new(
                ErrorCode::CompositeQueryCalledInReplicatedMode,
                format!(
                    "Canister {id}: composite query '{method}' cannot be called as an update: \
                     send it as a query."
                ),
            ));
        }
        None => return Err(method_not_found(id, "update", method)),
    }
    let mut scratch = Scratch::of(canister, execution_state);
    let mut ctx = scratch.context(
        config,
        canister,
        caller,
        time,
        config.max_instructions_per_message,
    );
    let response = engine.execute(&mut ctx, method, arg)?;
    let changes = ctx.changes();
    let outcome = into_reply(config, id, response);
    if let Err(err) = &outcome
        && err.code() == ErrorCode::CanisterContractViolation
    {
        // An oversized reply is the canister's error, like a trap: nothing is kept.
        return outcome;
    }
    scratch.commit(config, canister, memory, changes)?;
    outcome
}

/// Runs the system task `task` (`canister_heartbeat` or `canister_global_timer`) on `canister`
/// at batch time `time`, as the replica's scheduler runs it: with the limit of an update
/// message, as the management canister's call (no argument, no reply), atomically like
/// [`execute_canister_message`]. The global timer is one-off: it is deactivated before the
/// method runs and stays so if the method fails (its `ic0.global_timer_set` returns 0, the
/// timer it sets is kept only on success). A task's failure reaches no caller.
pub fn execute_system_task(
    engine: &dyn WasmEngine,
    config: &Config,
    canister: &mut CanisterState,
    memory: MemoryContext,
    time: u64,
    task: SystemMethod,
) -> Result<(), UserError> {
    if task == SystemMethod::GlobalTimer {
        canister.global_timer = None;
    }
    let execution_state = callable(canister)?;
    let mut scratch = Scratch::of(canister, execution_state);
    let mut ctx = scratch.context(
        config,
        canister,
        Principal::management_canister(),
        time,
        config.max_instructions_per_message,
    );
    engine.execute_system_method(&mut ctx, task, &[])?;
    let changes = ctx.changes();
    scratch.commit(config, canister, memory, changes)
}

/// What a message changed besides its copies: kept with them on success.
#[derive(Clone, Copy, Debug)]
struct ContextChanges {
    heap_delta: u64,
    global_timer: Option<u64>,
}

impl ExecutionContext<'_> {
    fn changes(&self) -> ContextChanges {
        ContextChanges {
            heap_delta: self.heap_delta,
            global_timer: self.global_timer,
        }
    }
}

/// The copies a message runs on (O(1) for the memories): the originals survive a trap
/// untouched, and the copies replace them only if the message succeeds.
struct Scratch {
    execution_state: ExecutionState,
    certified_data: Vec<u8>,
}

impl Scratch {
    fn of(canister: &CanisterState, execution_state: &ExecutionState) -> Self {
        Scratch {
            execution_state: execution_state.clone(),
            certified_data: canister.certified_data.clone(),
        }
    }

    /// The context of a message on these copies.
    fn context<'a>(
        &'a mut self,
        config: &Config,
        canister: &'a CanisterState,
        caller: Principal,
        time: u64,
        instruction_limit: u64,
    ) -> ExecutionContext<'a> {
        message_context(
            config,
            canister,
            &mut self.execution_state,
            &mut self.certified_data,
            caller,
            time,
            instruction_limit,
        )
    }

    /// Keeps the copies in `canister` once the memory they grew passes
    /// [`check_memory_growth`] (else the message fails and nothing is kept), with the timer the
    /// message left and its heap delta charged to the canister's debit.
    fn commit(
        self,
        config: &Config,
        canister: &mut CanisterState,
        memory: MemoryContext,
        changes: ContextChanges,
    ) -> Result<(), UserError> {
        let usage = |execution: Option<&ExecutionState>, certified_data: &[u8]| {
            execution
                .map_or(0, ExecutionState::memory_usage)
                .saturating_add(certified_data.len() as u64)
        };
        let grows_by = usage(Some(&self.execution_state), &self.certified_data).saturating_sub(
            usage(canister.execution_state.as_ref(), &canister.certified_data),
        );
        if grows_by > 0 {
            let before = canister
                .memory_usage()
                .saturating_add(memory.snapshots_size);
            check_memory_growth(
                config,
                memory.subnet_memory_usage,
                memory.reservation_usage,
                canister,
                before,
                before.saturating_add(grows_by),
            )?
            .apply(canister);
        }
        canister.execution_state = Some(self.execution_state);
        canister.certified_data = self.certified_data;
        canister.global_timer = changes.global_timer;
        canister.heap_delta_debit = canister.heap_delta_debit.saturating_add(changes.heap_delta);
        Ok(())
    }
}

/// Executes a query call (`canister_query` or `canister_composite_query`) on a copy of
/// `canister`: whatever the method writes is discarded. An update method cannot be called as a
/// query (`CanisterMethodNotFound`, as on the IC).
pub fn execute_query(
    engine: &dyn WasmEngine,
    config: &Config,
    canister: &CanisterState,
    caller: Principal,
    time: u64,
    method: &str,
    arg: &[u8],
) -> Result<Vec<u8>, UserError> {
    let execution_state = callable(canister)?;
    match engine.method_kind(&execution_state.wasm_module, method) {
        Some(MethodKind::Query | MethodKind::CompositeQuery) => {
            let call = MethodCall::new(caller, time, method, arg);
            let limit = config.max_instructions_per_query_message;
            execute_query_on(engine, config, canister, call, limit)
        }
        Some(MethodKind::Update) | None => {
            Err(method_not_found(canister.canister_id, "query", method))
        }
    }
}

/// A call of a canister method: who calls which method with which argument, at which batch
/// time.
#[derive(Clone, Copy)]
struct MethodCall<'a> {
    caller: Principal,
    time: u64,
    method: &'a str,
    arg: &'a [u8],
}

impl<'a> MethodCall<'a> {
    fn new(caller: Principal, time: u64, method: &'a str, arg: &'a [u8]) -> Self {
        MethodCall {
            caller,
            time,
            method,
            arg,
        }
    }
}

/// Runs a query method on copies that are then dropped.
fn execute_query_on(
    engine: &dyn WasmEngine,
    config: &Config,
    canister: &CanisterState,
    call: MethodCall<'_>,
    instruction_limit: u64,
) -> Result<Vec<u8>, UserError> {
    let execution_state = callable(canister)?;
    let mut scratch = Scratch::of(canister, execution_state);
    let mut ctx = scratch.context(config, canister, call.caller, call.time, instruction_limit);
    let response = engine.execute(&mut ctx, call.method, call.arg)?;
    into_reply(config, canister.canister_id, response)
}

//! The deterministic execution loop: batches of ingress messages executed in rounds.
//!
//! Depends on [`crate::management`] and [`crate::execution`]. A round (`spec/execution.md`):
//! 1. the state's time becomes the batch time (never the wall clock; never moves backwards);
//!    if it crossed a storage charge period, every canister pays for the storage it held
//!    since the previous round, and those that cannot pay are uninstalled and lose their
//!    snapshots (`management::storage`); scheduled snapshots that are due are taken, in
//!    (due time, canister id) order;
//! 2. ingress messages larger than `Config::max_ingress_bytes_per_message` are refused without
//!    reaching their receiver; subnet messages (to `aaaaa-aa`) execute in arrival order;
//! 3. canisters execute on `Config::scheduler_threads` workers: the canisters are split in
//!    ascending id order and results merge back in ascending canister id. A running canister
//!    first runs its system tasks, as the replica's scheduler puts them before its messages:
//!    `canister_heartbeat` if it exports one, then `canister_global_timer` if it exports one and
//!    the batch time has reached its timer; then its messages, in arrival order;
//! 4. every canister's heap-delta debit drains by the per-round allowance; the round counter
//!    advances.
//!
//! Nothing here depends on thread timing, hashed iteration order or addresses, so the same
//! batches give the same [`ReplicatedState::state_hash`] on every replica.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};

use crate::config::Config;
use crate::execution::{
    MemoryContext, SystemMethod, WasmEngine, execute_canister_message, execute_query,
    execute_system_task,
};
use crate::management::ManagementCanister;
use crate::replicated_state::{MemoryFootprint, ReplicatedState};
use crate::state::{CanisterState, CanisterStatus};
use crate::state_manager::{StateManager, StateManagerError};

/// Identifies an ingress message within the batches a replica is fed.
pub type MessageId = u64;

/// An ingress message: `sender` calls `method` on `receiver` with a Candid payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub message_id: MessageId,
    pub sender: Principal,
    pub receiver: Principal,
    pub method: String,
    pub payload: Vec<u8>,
}

/// What consensus hands the execution layer each round.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Batch time, ns since the Unix epoch.
    pub time: u64,
    pub ingress: Vec<Ingress>,
}

/// A message's outcome: the reply bytes or the reject.
pub type IngressResult = (MessageId, Result<Vec<u8>, UserError>);

/// What every canister of a round's canister phase sees, fixed before the phase starts.
struct RoundContext {
    time: u64,
    /// The subnet usage a canister's memory checks start from: the capacity minus the
    /// canister's share of the free memory (its own growth this round is added to it).
    subnet_usage_before_growth: u64,
    /// The subnet's real usage at the start of the phase: what storage reservation prices
    /// growth against (plus the canister's own growth), whoever else runs in the round.
    subnet_usage_at_start: u64,
}

/// One canister's part of a round: taken out of the state, executed on a worker, merged back.
struct CanisterWork {
    canister_id: Principal,
    /// `None` if the receiver does not exist: each message is then refused.
    canister: Option<CanisterState>,
    /// Its footprint before the round, to move the running totals by the difference.
    before: MemoryFootprint,
    /// System tasks due this round, run before the messages.
    tasks: Vec<SystemMethod>,
    messages: Vec<Ingress>,
    results: Vec<IngressResult>,
}

/// What one canister executes in a round: its system tasks, then its messages.
#[derive(Default)]
struct CanisterQueue {
    tasks: Vec<SystemMethod>,
    messages: Vec<Ingress>,
}

impl RoundContext {
    /// The memory checks of a canister's next message, from what it grew this round (it held
    /// `before` when the round started).
    fn memory(&self, before: &MemoryFootprint, canister: &CanisterState) -> MemoryContext {
        let grown = canister.memory_usage().saturating_sub(before.canisters);
        MemoryContext {
            subnet_memory_usage: self.subnet_usage_before_growth.saturating_add(grown),
            reservation_usage: self.subnet_usage_at_start.saturating_add(grown),
            snapshots_size: before.snapshots,
        }
    }
}

impl CanisterWork {
    fn execute(&mut self, execution: &ExecutionLoop, context: &RoundContext) {
        for task in std::mem::take(&mut self.tasks) {
            if let Some(canister) = &mut self.canister {
                let memory = context.memory(&self.before, canister);
                // A task's failure has no caller to reach; like a trapped message, it changed
                // nothing (but a global timer stays deactivated).
                let _ = execute_system_task(
                    execution.engine.as_ref(),
                    &execution.config,
                    canister,
                    memory,
                    context.time,
                    task,
                );
            }
        }
        for message in self.messages.drain(..) {
            let result = match &mut self.canister {
                None => Err(UserError::new(
                    ErrorCode::CanisterNotFound,
                    format!("Canister {} not found.", self.canister_id),
                )),
                Some(canister) => {
                    let memory = context.memory(&self.before, canister);
                    execute_canister_message(
                        execution.engine.as_ref(),
                        &execution.config,
                        canister,
                        memory,
                        message.sender,
                        context.time,
                        &message.method,
                        &message.payload,
                    )
                }
            };
            self.results.push((message.message_id, result));
        }
    }
}

/// The execution layer of one replica: configuration plus engine, applied to state the caller
/// owns.
pub struct ExecutionLoop {
    config: Config,
    engine: Box<dyn WasmEngine>,
}

impl ExecutionLoop {
    pub fn new(config: Config, engine: Box<dyn WasmEngine>) -> Self {
        ExecutionLoop { config, engine }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The engine canister messages execute on (queries use it too).
    pub fn engine(&self) -> &dyn WasmEngine {
        self.engine.as_ref()
    }

    /// A fresh state for this configuration.
    pub fn new_state(&self) -> ReplicatedState {
        ReplicatedState::new(self.config.max_snapshots_per_canister)
    }

    /// Executes a query call to `canister_id` against `state`, which it never changes (a query
    /// runs on a copy of the canister, as on the IC).
    pub fn execute_query(
        &self,
        state: &ReplicatedState,
        canister_id: candid::Principal,
        sender: candid::Principal,
        method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, UserError> {
        let canister = state.canisters.get(&canister_id).ok_or_else(|| {
            UserError::new(
                ErrorCode::CanisterNotFound,
                format!("Canister {canister_id} not found."),
            )
        })?;
        execute_query(
            self.engine.as_ref(),
            &self.config,
            canister,
            sender,
            state.time,
            method,
            payload,
        )
    }

    pub fn management_canister(&self) -> ManagementCanister<'_> {
        ManagementCanister {
            config: &self.config,
            engine: self.engine.as_ref(),
        }
    }

    /// Opens (or creates) the state directory `dir` and loads its last checkpoint: what a
    /// durable replica starts with. The manager holds the directory's lock until dropped.
    pub fn open_state(
        &self,
        dir: &std::path::Path,
    ) -> Result<(StateManager, ReplicatedState), StateManagerError> {
        StateManager::open(dir, self.config.max_snapshots_per_canister)
    }

    /// Executes one round, then writes a checkpoint if the round's number is a multiple of
    /// [`Config::checkpoint_interval_rounds`]. A failed checkpoint leaves the round executed
    /// in memory and the previous checkpoint on disk; the caller may retry with
    /// [`StateManager::checkpoint`].
    pub fn execute_round_durably(
        &self,
        state: &mut ReplicatedState,
        manager: &mut StateManager,
        batch: Batch,
    ) -> Result<Vec<IngressResult>, StateManagerError> {
        let results = self.execute_round(state, batch);
        let interval = self.config.checkpoint_interval_rounds.max(1);
        if state.round.is_multiple_of(interval) {
            manager.checkpoint(state)?;
        }
        Ok(results)
    }

    /// Executes one round (see the module docs). Returns each message's outcome in execution
    /// order.
    pub fn execute_round(&self, state: &mut ReplicatedState, batch: Batch) -> Vec<IngressResult> {
        let previous = state.time;
        state.time = state.time.max(batch.time);
        self.management_canister()
            .charge_for_storage(state, previous);
        self.management_canister().take_scheduled_snapshots(state);
        let mut results = Vec::with_capacity(batch.ingress.len());
        let mut per_canister: BTreeMap<Principal, CanisterQueue> = BTreeMap::new();
        for message in batch.ingress {
            if let Err(err) = self.check_ingress_size(&message) {
                results.push((message.message_id, Err(err)));
            } else if message.receiver == Principal::management_canister() {
                let result = self.management_canister().execute(
                    state,
                    message.sender,
                    &message.method,
                    &message.payload,
                );
                results.push((message.message_id, result));
            } else {
                per_canister
                    .entry(message.receiver)
                    .or_default()
                    .messages
                    .push(message);
            }
        }
        self.schedule_system_tasks(state, &mut per_canister);
        results.extend(self.execute_canister_messages(state, per_canister));
        for canister in state.canisters.values_mut() {
            canister.heap_delta_debit = canister
                .heap_delta_debit
                .saturating_sub(self.config.heap_delta_rate_limit_bytes);
        }
        state.round = state.round.saturating_add(1);
        debug_assert_eq!(state.check_accounting(), Ok(()));
        results
    }

    /// The system tasks due this round (see the module doc), for every running canister with
    /// code, in id order.
    fn schedule_system_tasks(
        &self,
        state: &ReplicatedState,
        per_canister: &mut BTreeMap<Principal, CanisterQueue>,
    ) {
        for (id, canister) in &state.canisters {
            let Some(execution_state) = &canister.execution_state else {
                continue;
            };
            if canister.status != CanisterStatus::Running {
                continue;
            }
            let module = &execution_state.wasm_module;
            let exports = |task| self.engine.exports_system_method(module, task);
            let mut tasks = Vec::new();
            if exports(SystemMethod::Heartbeat) {
                tasks.push(SystemMethod::Heartbeat);
            }
            if canister
                .global_timer
                .is_some_and(|deadline| deadline <= state.time)
                && exports(SystemMethod::GlobalTimer)
            {
                tasks.push(SystemMethod::GlobalTimer);
            }
            if !tasks.is_empty() {
                per_canister.entry(*id).or_default().tasks = tasks;
            }
        }
    }

    /// Step 3 of a round: the canisters, on up to `Config::scheduler_threads` workers.
    ///
    /// The canisters with messages leave the state, are split by id order into contiguous
    /// parts, one per worker, and come back in id order with their results. A canister's
    /// messages see only that canister and values fixed before the phase starts (time, and its
    /// share of the subnet's free memory), so neither the partition nor the threads' timing can
    /// change any outcome.
    fn execute_canister_messages(
        &self,
        state: &mut ReplicatedState,
        per_canister: BTreeMap<Principal, CanisterQueue>,
    ) -> Vec<IngressResult> {
        if per_canister.is_empty() {
            return Vec::new();
        }
        // Each canister may grow into an equal share of the free memory, so that no canister's
        // growth depends on what runs beside it and the capacity still holds for their sum.
        let capacity = self.config.subnet_memory_capacity_bytes;
        let usage = state.memory_usage();
        let share = capacity
            .saturating_sub(usage)
            .checked_div(per_canister.len() as u64)
            .unwrap_or(0);
        let context = RoundContext {
            time: state.time,
            subnet_usage_before_growth: capacity.saturating_sub(share),
            subnet_usage_at_start: usage,
        };
        let mut work: Vec<CanisterWork> = per_canister
            .into_iter()
            .map(|(canister_id, queue)| CanisterWork {
                before: state.footprint(canister_id),
                canister: state.canisters.remove(&canister_id),
                canister_id,
                tasks: queue.tasks,
                messages: queue.messages,
                results: Vec::new(),
            })
            .collect();
        let threads = self.config.scheduler_threads.clamp(1, work.len());
        if threads == 1 {
            for canister in &mut work {
                canister.execute(self, &context);
            }
        } else {
            let part_len = work.len().div_ceil(threads);
            let context = &context;
            let outcome = crossbeam_utils::thread::scope(|scope| {
                let mut parts = work.chunks_mut(part_len);
                // The first part runs on this thread, which would otherwise only wait: one
                // thread fewer to start each round.
                let first = parts.next();
                for part in parts {
                    scope.spawn(move |_| {
                        for canister in part {
                            canister.execute(self, context);
                        }
                    });
                }
                for canister in first.into_iter().flatten() {
                    canister.execute(self, context);
                }
            });
            if let Err(panic) = outcome {
                // A worker panicked (a bug, never input): surface it as the sequential loop would.
                std::panic::resume_unwind(panic);
            }
        }
        let mut results = Vec::new();
        for canister in work {
            if let Some(state_of) = canister.canister {
                state.canisters.insert(canister.canister_id, state_of);
            }
            let after = state.footprint(canister.canister_id);
            state.account(canister.before, after);
            results.extend(canister.results);
        }
        results
    }

    /// The IC refuses an ingress message above `max_ingress_bytes_per_message` at its HTTP
    /// endpoint (413), before consensus, so it never executes. Here the round loop is where
    /// messages enter: it refuses it before the receiver sees it, with the code this project
    /// uses for every message-size limit.
    fn check_ingress_size(&self, message: &Ingress) -> Result<(), UserError> {
        let size = (message.method.len() as u64).saturating_add(message.payload.len() as u64);
        let limit = self.config.max_ingress_bytes_per_message;
        if size > limit {
            return Err(UserError::new(
                ErrorCode::CanisterContractViolation,
                format!(
                    "Ingress message to {} ({}) is {size} bytes (method name and argument); the \
                     limit is {limit} bytes. Send the data in several messages.",
                    message.receiver, message.method
                ),
            ));
        }
        Ok(())
    }
}

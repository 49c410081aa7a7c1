//! The deterministic execution loop: batches of ingress messages executed in rounds.
//!
//! Depends on [`crate::management`] and [`crate::execution`]. A round (`spec/execution.md`):
//! 1. the state's time becomes the batch time (never the wall clock; never moves backwards);
//! 2. ingress messages larger than `Config::max_ingress_bytes_per_message` are refused without
//!    reaching their receiver; subnet messages (to `aaaaa-aa`) execute in arrival order;
//! 3. canister messages execute canister by canister in ascending canister id, each canister's
//!    messages in arrival order;
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
use crate::execution::{MemoryContext, WasmEngine, execute_canister_message};
use crate::management::ManagementCanister;
use crate::replicated_state::ReplicatedState;
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

    /// A fresh state for this configuration.
    pub fn new_state(&self) -> ReplicatedState {
        ReplicatedState::new(self.config.max_snapshots_per_canister)
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
        state.time = state.time.max(batch.time);
        let mut results = Vec::with_capacity(batch.ingress.len());
        let mut per_canister: BTreeMap<Principal, Vec<Ingress>> = BTreeMap::new();
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
                    .push(message);
            }
        }
        for (canister_id, messages) in per_canister {
            for message in messages {
                let memory = MemoryContext {
                    subnet_memory_usage: state.memory_usage(),
                    snapshots_size: state.snapshots.snapshots_size(canister_id),
                };
                let result = match state.canisters.get_mut(&canister_id) {
                    None => Err(UserError::new(
                        ErrorCode::CanisterNotFound,
                        format!("Canister {canister_id} not found."),
                    )),
                    Some(canister) => execute_canister_message(
                        self.engine.as_ref(),
                        &self.config,
                        canister,
                        memory,
                        message.sender,
                        state.time,
                        &message.method,
                        &message.payload,
                    ),
                };
                results.push((message.message_id, result));
            }
        }
        for canister in state.canisters.values_mut() {
            canister.heap_delta_debit = canister
                .heap_delta_debit
                .saturating_sub(self.config.heap_delta_rate_limit_bytes);
        }
        state.round = state.round.saturating_add(1);
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

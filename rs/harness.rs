//! `StateMachine`: an in-process replica for tests and tools, with PocketIC's method names.
//!
//! A thin shell over [`ExecutionLoop`] and [`ReplicatedState`]: every call becomes an ingress
//! message executed in a round, and every snapshot and lifecycle helper Candid-encodes the
//! `ic-management-canister-types` argument and goes through [`StateMachine::update_call`] to
//! the management canister, so the Candid path is always the one exercised.

// A test and tool harness with PocketIC's contract: its setup helpers panic on failure, as
// PocketIC's do. The replica it drives stays under the crate's panic hygiene.
#![allow(clippy::panic, clippy::expect_used, clippy::arithmetic_side_effects)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{Nat, Principal};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInfoResult, CanisterInstallMode, CanisterSettings,
    CanisterStatusResult, DeleteCanisterSnapshotArgs, InstallCodeArgs, LoadCanisterSnapshotArgs,
    ProvisionalCreateCanisterWithCyclesArgs, Snapshot, TakeCanisterSnapshotArgs,
};

use crate::client::ManagementClient;
pub use crate::client::RejectResponse;
use crate::config::Config;
use crate::embedders::ReplicaEngine;
use crate::management::types::{SnapshotInfo, SnapshotMetadata};
use crate::replicated_state::ReplicatedState;
use crate::scheduler::{Batch, ExecutionLoop, Ingress, MessageId};
use crate::state_manager::{StateManager, StateManagerError};
use crate::transfer::{self, TransferError, TransferOptions, UploadBase, UploadReport};

/// Cycles a canister created through the harness starts with.
pub const HARNESS_CANISTER_CYCLES: u128 = 100_000_000_000_000;

/// An embedded single-subnet replica.
pub struct StateMachine {
    execution: ExecutionLoop,
    state: ReplicatedState,
    /// The time the next round runs at.
    time: u64,
    next_message_id: MessageId,
    /// The state directory, for a machine made by [`StateMachine::open`].
    durable: Option<StateManager>,
    /// Messages submitted for the next round, in submission order.
    queued: Vec<Ingress>,
    /// Outcomes of executed messages not awaited yet.
    completed: BTreeMap<MessageId, Result<Vec<u8>, RejectResponse>>,
}

/// Most messages that may wait for the next round; one more is refused with
/// `IngressHistoryFull` until a [`StateMachine::tick`] executes them.
pub const MAX_QUEUED_MESSAGES: usize = 100_000;

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> Self {
        let execution =
            ExecutionLoop::new(config.clone(), Box::new(ReplicaEngine::for_config(&config)));
        let state = execution.new_state();
        let time = state.time;
        StateMachine {
            execution,
            state,
            time,
            next_message_id: 0,
            durable: None,
            queued: Vec::new(),
            completed: BTreeMap::new(),
        }
    }

    /// A machine on the state directory `dir` (created if absent): it starts from the
    /// directory's last checkpoint and writes one on [`Self::checkpoint`]. Rounds executed
    /// after the last checkpoint are lost when the machine is dropped (`spec/durability.md`).
    pub fn open(dir: &std::path::Path, config: Config) -> Result<Self, StateManagerError> {
        let execution =
            ExecutionLoop::new(config.clone(), Box::new(ReplicaEngine::for_config(&config)));
        let (manager, state) = execution.open_state(dir)?;
        let time = state.time;
        Ok(StateMachine {
            execution,
            state,
            time,
            next_message_id: 0,
            durable: Some(manager),
            queued: Vec::new(),
            completed: BTreeMap::new(),
        })
    }

    /// Writes a checkpoint of the state into the directory given to [`Self::open`]; does
    /// nothing for an in-memory machine. Durable once this returns `Ok`.
    pub fn checkpoint(&mut self) -> Result<(), StateManagerError> {
        match &mut self.durable {
            Some(manager) => manager.checkpoint(&mut self.state),
            None => Ok(()),
        }
    }

    /// The state directory's manager, for a machine made by [`Self::open`].
    pub fn state_manager(&mut self) -> Option<&mut StateManager> {
        self.durable.as_mut()
    }

    /// The replicated state, for inspection.
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }

    /// The replicated state, for tests that put a counter or a balance at its edge. A change to
    /// memory must keep `memory_totals` equal to a recount (`check_accounting`), which every
    /// debug round asserts.
    pub fn state_mut(&mut self) -> &mut ReplicatedState {
        &mut self.state
    }

    pub fn config(&self) -> &Config {
        self.execution.config()
    }

    pub fn create_canister_with_settings(
        &mut self,
        sender: Option<Principal>,
        settings: Option<CanisterSettings>,
    ) -> Principal {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: Some(Nat::from(HARNESS_CANISTER_CYCLES)),
            settings,
            specified_id: None,
            sender_canister_version: None,
        };
        let (record,): (CanisterIdRecord,) = self
            .management(sender, "provisional_create_canister_with_cycles", (args,))
            .unwrap_or_else(|err| panic!("create_canister_with_settings failed: {err}"));
        record.canister_id
    }

    /// Installs `wasm_module` (mode `install`). Panics on failure, as PocketIC's does.
    pub fn install_canister(
        &mut self,
        canister_id: Principal,
        wasm_module: Vec<u8>,
        arg: Vec<u8>,
        sender: Option<Principal>,
    ) {
        let args = InstallCodeArgs {
            mode: CanisterInstallMode::Install,
            canister_id,
            wasm_module,
            arg,
            sender_canister_version: None,
        };
        self.management::<()>(sender, "install_code", (args,))
            .unwrap_or_else(|err| panic!("install_canister failed: {err}"));
    }

    /// Reinstalls `canister_id` with `wasm_module` (PocketIC's `reinstall_canister`): a fresh
    /// heap and stable memory, then `canister_start` and `canister_init(arg)`.
    pub fn reinstall_canister(
        &mut self,
        canister_id: Principal,
        wasm_module: Vec<u8>,
        arg: Vec<u8>,
        sender: Option<Principal>,
    ) -> Result<(), RejectResponse> {
        self.install_code(
            canister_id,
            CanisterInstallMode::Reinstall,
            wasm_module,
            arg,
            sender,
        )
    }

    /// Upgrades `canister_id` to `wasm_module` (PocketIC's `upgrade_canister`): the old
    /// module's `canister_pre_upgrade`, then the new one's `canister_start` and
    /// `canister_post_upgrade(arg)`, stable memory kept.
    pub fn upgrade_canister(
        &mut self,
        canister_id: Principal,
        wasm_module: Vec<u8>,
        arg: Vec<u8>,
        sender: Option<Principal>,
    ) -> Result<(), RejectResponse> {
        self.install_code(
            canister_id,
            CanisterInstallMode::Upgrade(None),
            wasm_module,
            arg,
            sender,
        )
    }

    /// `install_code` in any mode, its outcome returned rather than panicked on.
    pub fn install_code(
        &mut self,
        canister_id: Principal,
        mode: CanisterInstallMode,
        wasm_module: Vec<u8>,
        arg: Vec<u8>,
        sender: Option<Principal>,
    ) -> Result<(), RejectResponse> {
        let args = InstallCodeArgs {
            mode,
            canister_id,
            wasm_module,
            arg,
            sender_canister_version: None,
        };
        self.management::<()>(sender, "install_code", (args,))
    }

    /// Sends a query call (PocketIC's `query_call`): executed at once on a copy of the
    /// canister, no round, nothing changed.
    pub fn query_call(
        &self,
        canister_id: Principal,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        self.execution
            .execute_query(&self.state, canister_id, sender, method, &payload)
            .map_err(RejectResponse::from)
    }

    /// Sends one ingress message and executes a round for it (with whatever else is queued).
    pub fn update_call(
        &mut self,
        canister_id: Principal,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        let message_id = self.submit_call(canister_id, sender, method, payload)?;
        self.await_call(message_id)
    }

    /// Queues one ingress message for the next round (PocketIC's `submit_call`), so that many
    /// messages can share a round. Refused only when [`MAX_QUEUED_MESSAGES`] are waiting.
    pub fn submit_call(
        &mut self,
        canister_id: Principal,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<MessageId, RejectResponse> {
        if self.queued.len() >= MAX_QUEUED_MESSAGES {
            return Err(RejectResponse::from(UserError::new(
                ErrorCode::IngressHistoryFull,
                format!(
                    "{MAX_QUEUED_MESSAGES} messages are already waiting for the next round: \
                     call tick() or await_call() before submitting more."
                ),
            )));
        }
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.checked_add(1).ok_or_else(|| {
            RejectResponse::from(UserError::new(
                ErrorCode::IngressHistoryFull,
                "every message id has been used: start a new StateMachine".to_string(),
            ))
        })?;
        self.queued.push(Ingress {
            message_id,
            sender,
            receiver: canister_id,
            method: method.to_string(),
            payload,
        });
        Ok(message_id)
    }

    /// The outcome of a submitted message (PocketIC's `await_call`), executing rounds until it
    /// has one. Each outcome is handed out once; an id that was never submitted, or was
    /// awaited already, is refused.
    pub fn await_call(&mut self, message_id: MessageId) -> Result<Vec<u8>, RejectResponse> {
        if !self.completed.contains_key(&message_id)
            && self.queued.iter().any(|m| m.message_id == message_id)
        {
            // A round executes everything queued, so one tick answers it.
            self.tick();
        }
        self.completed.remove(&message_id).unwrap_or_else(|| {
            Err(RejectResponse::from(UserError::new(
                ErrorCode::IngressMessageTimeout,
                format!(
                    "message {message_id} is unknown: it was never submitted or its outcome \
                     was already awaited"
                ),
            )))
        })
    }

    /// Sends several ingress messages in one batch and executes one round for all of them; the
    /// answers are in the order of `calls`. The round executes them as it executes any batch
    /// (subnet messages in arrival order, then canisters in id order), with whatever else was
    /// submitted before it.
    pub fn submit_ingress_batch(
        &mut self,
        calls: Vec<IngressCall>,
    ) -> Vec<Result<Vec<u8>, RejectResponse>> {
        let ids: Vec<Result<MessageId, RejectResponse>> = calls
            .into_iter()
            .map(|call| self.submit_call(call.receiver, call.sender, &call.method, call.payload))
            .collect();
        self.tick();
        ids.into_iter()
            .map(|id| id.and_then(|id| self.await_call(id)))
            .collect()
    }

    /// Calls the management canister and decodes its reply as the tuple `R`.
    pub fn management<R: for<'a> ArgumentDecoder<'a>>(
        &mut self,
        sender: Option<Principal>,
        method: &str,
        args: impl ArgumentEncoder,
    ) -> Result<R, RejectResponse> {
        self.management_call(anonymous(sender), method, args)
    }

    pub fn take_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        replace_snapshot: Option<Vec<u8>>,
    ) -> Result<Snapshot, RejectResponse> {
        let args = TakeCanisterSnapshotArgs {
            canister_id,
            replace_snapshot,
            uninstall_code: None,
            sender_canister_version: None,
        };
        self.management(sender, "take_canister_snapshot", (args,))
            .map(|(snapshot,)| snapshot)
    }

    pub fn load_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
    ) -> Result<(), RejectResponse> {
        let args = LoadCanisterSnapshotArgs {
            canister_id,
            snapshot_id,
            sender_canister_version: None,
        };
        self.management(sender, "load_canister_snapshot", (args,))
    }

    pub fn list_canister_snapshots(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
    ) -> Result<Vec<Snapshot>, RejectResponse> {
        self.management(
            sender,
            "list_canister_snapshots",
            (CanisterIdRecord { canister_id },),
        )
        .map(|(list,)| list)
    }

    /// `list_canister_snapshots` decoded with this project's extension fields (label, checksum).
    pub fn list_canister_snapshots_with_info(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
    ) -> Result<Vec<SnapshotInfo>, RejectResponse> {
        self.management(
            sender,
            "list_canister_snapshots",
            (CanisterIdRecord { canister_id },),
        )
        .map(|(list,)| list)
    }

    pub fn delete_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
    ) -> Result<(), RejectResponse> {
        let args = DeleteCanisterSnapshotArgs {
            canister_id,
            snapshot_id,
        };
        self.management(sender, "delete_canister_snapshot", (args,))
    }

    pub fn stop_canister(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
    ) -> Result<(), RejectResponse> {
        self.management(sender, "stop_canister", (CanisterIdRecord { canister_id },))
    }

    pub fn start_canister(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
    ) -> Result<(), RejectResponse> {
        self.management(
            sender,
            "start_canister",
            (CanisterIdRecord { canister_id },),
        )
    }

    pub fn canister_status(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
    ) -> Result<CanisterStatusResult, RejectResponse> {
        self.management(
            sender,
            "canister_status",
            (CanisterIdRecord { canister_id },),
        )
        .map(|(status,)| status)
    }

    /// `canister_info`, decoded with the IC's types, as a standard client reads it. Decode
    /// [`crate::management::types::CanisterInfoResult`] through [`Self::management`] to read
    /// the scheduled takes too.
    pub fn canister_info(
        &mut self,
        canister_id: Principal,
        num_requested_changes: Option<u64>,
    ) -> Result<CanisterInfoResult, RejectResponse> {
        let args = CanisterInfoArgs {
            canister_id,
            num_requested_changes,
        };
        self.management(None, "canister_info", (args,))
            .map(|(info,)| info)
    }

    /// Executes one round of everything queued by [`Self::submit_call`] (possibly nothing),
    /// keeping the outcomes for [`Self::await_call`].
    pub fn tick(&mut self) {
        let batch = Batch {
            time: self.time,
            ingress: std::mem::take(&mut self.queued),
        };
        for (message_id, result) in self.execution.execute_round(&mut self.state, batch) {
            self.completed
                .insert(message_id, result.map_err(RejectResponse::from));
        }
    }

    /// ns since the Unix epoch; starts at the fixed genesis time.
    pub fn get_time(&self) -> u64 {
        self.time
    }

    pub fn advance_time(&mut self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.time = self.time.saturating_add(nanos);
    }

    pub fn state_hash(&self) -> [u8; 32] {
        self.state.state_hash()
    }
}

/// One message of [`StateMachine::submit_ingress_batch`].
#[derive(Debug, Clone)]
pub struct IngressCall {
    pub receiver: Principal,
    pub sender: Principal,
    pub method: String,
    pub payload: Vec<u8>,
}

/// The harness is a management client: each call runs one round, and a batch of calls shares
/// one round.
impl ManagementClient for StateMachine {
    fn update_call(
        &mut self,
        sender: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, RejectResponse> {
        StateMachine::update_call(
            self,
            Principal::management_canister(),
            sender,
            method,
            payload,
        )
    }

    fn update_calls(
        &mut self,
        sender: Principal,
        calls: Vec<(&str, Vec<u8>)>,
    ) -> Vec<Result<Vec<u8>, RejectResponse>> {
        let calls = calls
            .into_iter()
            .map(|(method, payload)| IngressCall {
                receiver: Principal::management_canister(),
                sender,
                method: method.to_string(),
                payload,
            })
            .collect();
        self.submit_ingress_batch(calls)
    }

    /// A checkpoint, on a state directory; nothing in memory.
    fn make_durable(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.checkpoint().map_err(Into::into)
    }
}

/// Snapshot transfer (`crate::transfer`), with the harness's `Option<Principal>` senders
/// (`None` is the anonymous principal).
impl StateMachine {
    /// `read_canister_snapshot_metadata`, with this project's extension fields.
    pub fn read_canister_snapshot_metadata(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
    ) -> Result<SnapshotMetadata, RejectResponse> {
        transfer::read_canister_snapshot_metadata(self, canister_id, anonymous(sender), snapshot_id)
    }

    /// [`transfer::download_canister_snapshot`]: downloads a snapshot into `dir` in 2 MB
    /// slices, resumably, checksum-verified, in the dfx layout (`spec/transfer.md`).
    pub fn download_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
        dir: &std::path::Path,
    ) -> Result<(), TransferError> {
        self.download_canister_snapshot_with(
            canister_id,
            sender,
            snapshot_id,
            dir,
            &TransferOptions::default(),
        )
    }

    /// [`Self::download_canister_snapshot`] with options.
    pub fn download_canister_snapshot_with(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        snapshot_id: Vec<u8>,
        dir: &std::path::Path,
        options: &TransferOptions,
    ) -> Result<(), TransferError> {
        transfer::download_canister_snapshot(
            self,
            canister_id,
            anonymous(sender),
            snapshot_id,
            dir,
            options,
        )
    }

    /// [`transfer::upload_canister_snapshot`] without a base: uploads `dir` as a new snapshot,
    /// resumably, checksum-verified, deleting `replace_snapshot` (the snapshot it supersedes)
    /// only after verification unless the quota forces otherwise. Returns the new snapshot id.
    pub fn upload_canister_snapshot(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &std::path::Path,
        replace_snapshot: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, TransferError> {
        self.upload_canister_snapshot_with(
            canister_id,
            sender,
            dir,
            replace_snapshot,
            None,
            &TransferOptions::default(),
        )
        .map(|report| report.snapshot_id)
    }

    /// Uploads `dir` sending only the pages that differ from `base` (a snapshot of the same
    /// canister and its download): the new snapshot starts as a copy-on-write copy of the base.
    pub fn upload_canister_snapshot_incremental(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &std::path::Path,
        base: UploadBase<'_>,
        replace_snapshot: Option<Vec<u8>>,
    ) -> Result<UploadReport, TransferError> {
        self.upload_canister_snapshot_with(
            canister_id,
            sender,
            dir,
            replace_snapshot,
            Some(base),
            &TransferOptions::default(),
        )
    }

    /// The upload behind [`Self::upload_canister_snapshot`] and
    /// [`Self::upload_canister_snapshot_incremental`].
    pub fn upload_canister_snapshot_with(
        &mut self,
        canister_id: Principal,
        sender: Option<Principal>,
        dir: &std::path::Path,
        replace_snapshot: Option<Vec<u8>>,
        base: Option<UploadBase<'_>>,
        options: &TransferOptions,
    ) -> Result<UploadReport, TransferError> {
        transfer::upload_canister_snapshot(
            self,
            canister_id,
            anonymous(sender),
            dir,
            replace_snapshot,
            base,
            options,
        )
    }
}

fn anonymous(sender: Option<Principal>) -> Principal {
    sender.unwrap_or_else(Principal::anonymous)
}

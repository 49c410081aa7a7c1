//! Canister lifecycle methods: create, install, uninstall, start, stop, status, info, settings,
//! delete.

use std::collections::BTreeSet;

use candid::{Nat, Principal};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInstallMode, CanisterSettings as SettingsArgs,
    CanisterStatusResult, CanisterStatusType, ChangeDetails, CodeDeploymentMode,
    CodeDeploymentRecord, ControllersChangeRecord, CreateCanisterArgs, CreationRecord,
    DefiniteCanisterSettings, InstallCodeArgs, LogVisibility, MemoryMetrics,
    ProvisionalCreateCanisterWithCyclesArgs, ProvisionalTopUpCanisterArgs, QueryStats,
    SnapshotVisibility, UninstallCodeArgs, UpgradeFlags, WasmMemoryPersistence,
};

use super::types::{
    self, MAX_SNAPSHOT_INTERVAL_SECONDS, MIN_SNAPSHOT_INTERVAL_SECONDS,
    ScheduledSnapshotFailureStatus, SnapshotScheduleChange, SnapshotScheduleStatus,
};
use super::{
    ManagementCanister, canister, canister_mut, controlled, from_user, invalid_payload, nat_u64,
    nat_u128, reply,
};
use crate::execution::{SystemMethod, message_context};
use crate::memory::Memory;
use crate::replicated_state::{ReplicatedState, canister_id_from_index};
use crate::state::{
    CanisterChange, CanisterSettings, CanisterState, CanisterStatus, ExecutionState,
    SnapshotSchedule, WasmModule,
};

/// At most this many controllers, allowed viewers, or allowed log viewers.
pub const MAX_CONTROLLERS: usize = 10;

/// Memory allocation and Wasm memory limit are at most 2^48 bytes, as on the IC.
const MAX_MEMORY_SETTING: u64 = 1 << 48;

/// Settings after validation, ready to apply.
struct ValidSettings {
    controllers: Option<BTreeSet<Principal>>,
    settings: CanisterSettings,
}

fn check_principal_list(field: &str, list: &[Principal]) -> Result<(), UserError> {
    if list.len() > MAX_CONTROLLERS {
        return Err(invalid_payload(format!(
            "{field} has {} entries; at most {MAX_CONTROLLERS} are allowed",
            list.len()
        )));
    }
    Ok(())
}

/// Validates `args` against the current settings; nothing is applied here.
fn validate_settings(
    args: &SettingsArgs,
    current: &CanisterSettings,
) -> Result<ValidSettings, UserError> {
    let mut settings = current.clone();
    let controllers = match &args.controllers {
        Some(list) => {
            check_principal_list("controllers", list)?;
            Some(list.iter().copied().collect())
        }
        None => None,
    };
    if let Some(v) = &args.compute_allocation {
        settings.compute_allocation = nat_u64("compute_allocation", v, 100)?;
    }
    if let Some(v) = &args.memory_allocation {
        settings.memory_allocation = nat_u64("memory_allocation", v, MAX_MEMORY_SETTING)?;
    }
    if let Some(v) = &args.freezing_threshold {
        settings.freezing_threshold = nat_u64("freezing_threshold", v, u64::MAX)?;
    }
    if let Some(v) = &args.reserved_cycles_limit {
        settings.reserved_cycles_limit = nat_u128("reserved_cycles_limit", v)?;
    }
    if let Some(v) = &args.wasm_memory_limit {
        settings.wasm_memory_limit = nat_u64("wasm_memory_limit", v, MAX_MEMORY_SETTING)?;
    }
    if let Some(v) = &args.wasm_memory_threshold {
        settings.wasm_memory_threshold = nat_u64("wasm_memory_threshold", v, MAX_MEMORY_SETTING)?;
    }
    if let Some(v) = &args.log_visibility {
        if let LogVisibility::AllowedViewers(list) = v {
            check_principal_list("log_visibility.allowed_viewers", list)?;
        }
        settings.log_visibility = v.clone();
    }
    if let Some(v) = &args.snapshot_visibility {
        if let SnapshotVisibility::AllowedViewers(list) = v {
            check_principal_list("snapshot_visibility.allowed_viewers", list)?;
        }
        settings.snapshot_visibility = v.clone();
    }
    Ok(ValidSettings {
        controllers,
        settings,
    })
}

impl ManagementCanister<'_> {
    pub(super) fn provisional_create_canister_with_cycles(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: ProvisionalCreateCanisterWithCyclesArgs,
    ) -> Result<Vec<u8>, UserError> {
        let cycles = match &args.amount {
            Some(amount) => nat_u128("amount", amount)?,
            None => self.config.default_canister_cycles,
        };
        self.create(state, sender, args.settings, args.specified_id, cycles)
    }

    /// Adds `amount` cycles to a canister, as a local replica does for anyone (the IC allows
    /// it only for principals on the provisional whitelist). Saturating, as the replica's
    /// `add_cycles`. Replies `()`.
    pub(super) fn provisional_top_up_canister(
        &self,
        state: &mut ReplicatedState,
        args: ProvisionalTopUpCanisterArgs,
    ) -> Result<Vec<u8>, UserError> {
        let amount = nat_u128("amount", &args.amount)?;
        let canister = canister_mut(state, args.canister_id)?;
        canister.cycles = canister.cycles.saturating_add(amount);
        reply(())
    }

    /// On this embedded replica `create_canister` behaves as on a test subnet: the new canister
    /// gets the configured default cycles, since an ingress message cannot attach any.
    pub(super) fn create_canister(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CreateCanisterArgs,
    ) -> Result<Vec<u8>, UserError> {
        let cycles = self.config.default_canister_cycles;
        self.create(state, sender, args.settings, None, cycles)
    }

    fn create(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        settings: Option<SettingsArgs>,
        specified_id: Option<Principal>,
        cycles: u128,
    ) -> Result<Vec<u8>, UserError> {
        let max = self.config.max_number_of_canisters;
        if state.canisters.len() as u64 >= max {
            return Err(UserError::new(
                ErrorCode::MaxNumberOfCanistersReached,
                format!(
                    "Canister creation failed: the subnet hosts the maximum of {max} canisters. \
                     Delete a canister or use another subnet."
                ),
            ));
        }
        let settings = settings.unwrap_or_default();
        let valid = validate_settings(&settings, &CanisterSettings::default())?;
        let controllers = valid
            .controllers
            .unwrap_or_else(|| BTreeSet::from([sender]));
        let canister_id = match specified_id {
            Some(id)
                if id == Principal::management_canister()
                    || id == Principal::anonymous()
                    || self.config.reserved_canister_ids.contains(&id) =>
            {
                return Err(invalid_payload(format!(
                    "specified_id {id} is reserved: choose another principal"
                )));
            }
            Some(id)
                if state.canisters.contains_key(&id) || state.deleted_canisters.contains(&id) =>
            {
                return Err(UserError::new(
                    ErrorCode::CanisterIdAlreadyExists,
                    format!(
                        "Canister {id} exists or existed: canister ids are never reused, so that \
                         snapshot ids are not either. Choose another specified_id."
                    ),
                ));
            }
            Some(id) => id,
            None => {
                // Skip ids taken by earlier `specified_id` creations. Checked: an index that
                // wrapped would give out a deleted canister's id again.
                let mut index = state.next_canister_index;
                loop {
                    let id = canister_id_from_index(index);
                    index = index.checked_add(1).ok_or_else(|| {
                        UserError::new(
                            ErrorCode::MaxNumberOfCanistersReached,
                            "This subnet has allocated every canister id it has: create the \
                             canister on another subnet."
                                .to_string(),
                        )
                    })?;
                    if !state.canisters.contains_key(&id)
                        && !state.deleted_canisters.contains(&id)
                        && !self.config.reserved_canister_ids.contains(&id)
                    {
                        state.next_canister_index = index;
                        break id;
                    }
                }
            }
        };
        let mut canister = CanisterState::new(canister_id, controllers.clone(), cycles);
        canister.settings = valid.settings;
        canister.record_change(
            state.time,
            from_user(sender),
            ChangeDetails::Creation(CreationRecord {
                controllers: controllers.into_iter().collect(),
                environment_variables_hash: None,
            }),
        );
        state.canisters.insert(canister_id, canister);
        reply((CanisterIdRecord { canister_id },))
    }

    pub(super) fn install_code(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: InstallCodeArgs,
    ) -> Result<Vec<u8>, UserError> {
        let canister = controlled(state, args.canister_id, sender)?;
        // Hashed once, here: validation and everything after it use the module's stored hash.
        let wasm_module = WasmModule::new(args.wasm_module);
        self.engine.validate(&wasm_module)?;
        let id = canister.canister_id;
        let mode = match (&args.mode, &canister.execution_state) {
            (CanisterInstallMode::Install, Some(_)) => {
                return Err(UserError::new(
                    ErrorCode::CanisterNonEmpty,
                    format!(
                        "Canister {id} cannot be installed because the canister is not empty. \
                         Try installing with mode='reinstall' or mode='upgrade' instead."
                    ),
                ));
            }
            (CanisterInstallMode::Upgrade(_), None) => {
                return Err(UserError::new(
                    ErrorCode::CanisterWasmModuleNotFound,
                    format!(
                        "Canister {id} has no code to upgrade: install it with mode='install' \
                         first."
                    ),
                ));
            }
            (CanisterInstallMode::Upgrade(_), Some(_)) => CodeDeploymentMode::Upgrade,
            (CanisterInstallMode::Install, None) => CodeDeploymentMode::Install,
            (CanisterInstallMode::Reinstall, _) => CodeDeploymentMode::Reinstall,
        };
        let flags = match &args.mode {
            CanisterInstallMode::Upgrade(Some(flags)) => *flags,
            _ => UpgradeFlags::default(),
        };
        let module_hash = wasm_module.hash().to_vec();
        let time = state.time;
        let (execution_state, certified_data, global_timer) =
            self.run_install(canister, mode, &flags, wasm_module, sender, time, &args.arg)?;
        let canister = canister_mut(state, id)?;
        canister.execution_state = Some(execution_state);
        canister.last_install_timestamp = Some(time);
        canister.certified_data = certified_data;
        canister.global_timer = global_timer;
        canister.bump_version();
        canister.record_change(
            time,
            from_user(sender),
            ChangeDetails::CodeDeployment(CodeDeploymentRecord { mode, module_hash }),
        );
        reply(())
    }

    /// Runs the lifecycle of an `install_code` on copies and returns the new execution state,
    /// certified data and global timer; an error (a trap anywhere in the chain) leaves the
    /// canister exactly as it was.
    ///
    /// Install and reinstall: a fresh heap and stable memory, `canister_start` (with the data
    /// segments), then `canister_init(arg)`. Upgrade: the old module's `canister_pre_upgrade`
    /// (unless `skip_pre_upgrade`), then on the new module with the old stable memory (and,
    /// with `wasm_memory_persistence = keep`, the old heap) `canister_start` and
    /// `canister_post_upgrade(arg)`. Every install deactivates the global timer; only upgrade
    /// keeps certified data. The steps share the install's instruction limit.
    #[allow(clippy::too_many_arguments)]
    fn run_install(
        &self,
        canister: &CanisterState,
        mode: CodeDeploymentMode,
        flags: &UpgradeFlags,
        wasm_module: WasmModule,
        sender: Principal,
        time: u64,
        arg: &[u8],
    ) -> Result<(ExecutionState, Vec<u8>, Option<u64>), UserError> {
        let limit = self.config.max_instructions_per_install_code;
        let exported_globals = self.engine.initial_globals(&wasm_module);
        let mut fresh = ExecutionState {
            wasm_module,
            wasm_memory: Memory::new(),
            stable_memory: Memory::new(),
            exported_globals,
        };
        let mut certified_data = Vec::new();
        let mut used = 0;
        if let (CodeDeploymentMode::Upgrade, Some(old)) = (mode, &canister.execution_state) {
            certified_data = canister.certified_data.clone();
            let mut old = old.clone();
            let mut ctx = message_context(
                self.config,
                canister,
                &mut old,
                &mut certified_data,
                sender,
                time,
                limit,
            );
            if flags.skip_pre_upgrade != Some(true) {
                self.engine
                    .execute_system_method(&mut ctx, SystemMethod::PreUpgrade, &[])?;
            }
            used = ctx.instructions_executed;
            fresh.stable_memory = old.stable_memory;
            if self.keeps_heap(flags, &old.wasm_module, &fresh.wasm_module)? {
                fresh.wasm_memory = old.wasm_memory;
            }
        }
        let mut ctx = message_context(
            self.config,
            canister,
            &mut fresh,
            &mut certified_data,
            sender,
            time,
            limit,
        );
        ctx.instructions_executed = used;
        ctx.global_timer = None;
        self.engine.start(&mut ctx)?;
        let hook = if mode == CodeDeploymentMode::Upgrade {
            SystemMethod::PostUpgrade
        } else {
            SystemMethod::Init
        };
        self.engine.execute_system_method(&mut ctx, hook, arg)?;
        let global_timer = ctx.global_timer;
        Ok((fresh, certified_data, global_timer))
    }

    /// Whether an upgrade keeps the heap, and the replica's two guards on it
    /// (`determine_main_memory_handling` in its `upgrade.rs`), checked after
    /// `canister_pre_upgrade` as there: without `wasm_memory_persistence`, an old module built
    /// for enhanced orthogonal persistence (the `enhanced-orthogonal-persistence` custom
    /// section, `icp:public` or `icp:private`) is refused, since replacing its heap would lose
    /// every variable; `keep` is refused for a new module without the section, which could not
    /// read the old heap. `replace` is never refused: the controller asked to lose the heap.
    fn keeps_heap(
        &self,
        flags: &UpgradeFlags,
        old: &WasmModule,
        new: &WasmModule,
    ) -> Result<bool, UserError> {
        let persistent =
            |module: &WasmModule| self.engine.expects_enhanced_orthogonal_persistence(module);
        match flags.wasm_memory_persistence {
            None if persistent(old) => Err(UserError::new(
                ErrorCode::CanisterContractViolation,
                "Missing upgrade option: Enhanced orthogonal persistence requires the \
                 `wasm_memory_persistence` upgrade option.",
            )),
            Some(WasmMemoryPersistence::Keep) if !persistent(new) => Err(UserError::new(
                ErrorCode::CanisterContractViolation,
                "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option \
                 requires that the new canister module supports enhanced orthogonal persistence.",
            )),
            Some(WasmMemoryPersistence::Keep) => Ok(true),
            None | Some(WasmMemoryPersistence::Replace) => Ok(false),
        }
    }

    pub(super) fn uninstall_code(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: UninstallCodeArgs,
    ) -> Result<Vec<u8>, UserError> {
        controlled(state, args.canister_id, sender)?;
        let time = state.time;
        uninstall(canister_mut(state, args.canister_id)?, time, sender);
        reply(())
    }

    pub(super) fn start_canister(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CanisterIdRecord,
    ) -> Result<Vec<u8>, UserError> {
        controlled(state, args.canister_id, sender)?;
        canister_mut(state, args.canister_id)?.status = CanisterStatus::Running;
        reply(())
    }

    /// With no calls in flight (this replica makes none), stopping completes at once.
    pub(super) fn stop_canister(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CanisterIdRecord,
    ) -> Result<Vec<u8>, UserError> {
        controlled(state, args.canister_id, sender)?;
        canister_mut(state, args.canister_id)?.status = CanisterStatus::Stopped;
        reply(())
    }

    pub(super) fn canister_status(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CanisterIdRecord,
    ) -> Result<Vec<u8>, UserError> {
        let canister = controlled(state, args.canister_id, sender)?;
        let snapshots_size = state.snapshots.snapshots_size(canister.canister_id);
        let memory_size = state.canister_memory_usage(canister);
        let execution = canister.execution_state.as_ref();
        let settings = &canister.settings;
        let history_size: u64 = canister
            .history
            .changes()
            .map(|c| candid::encode_one(c).map_or(0, |b| b.len() as u64))
            .sum();
        let result = CanisterStatusResult {
            status: match canister.status {
                CanisterStatus::Running => CanisterStatusType::Running,
                CanisterStatus::Stopping => CanisterStatusType::Stopping,
                CanisterStatus::Stopped => CanisterStatusType::Stopped,
            },
            // The spec: a stopped canister with empty queues and flushed streams. A stopped
            // canister here has neither (no inter-canister calls; ingress to it is refused).
            ready_for_migration: canister.status == CanisterStatus::Stopped,
            version: canister.canister_version,
            settings: DefiniteCanisterSettings {
                controllers: canister.controllers.iter().copied().collect(),
                compute_allocation: Nat::from(settings.compute_allocation),
                memory_allocation: Nat::from(settings.memory_allocation),
                freezing_threshold: Nat::from(settings.freezing_threshold),
                reserved_cycles_limit: Nat::from(settings.reserved_cycles_limit),
                minimum_incoming_canister_call_cycles: Nat::from(0u64),
                log_visibility: settings.log_visibility.clone(),
                log_memory_limit: Nat::from(4096u64),
                snapshot_visibility: settings.snapshot_visibility.clone(),
                status_visibility: Default::default(),
                wasm_memory_limit: Nat::from(settings.wasm_memory_limit),
                wasm_memory_threshold: Nat::from(settings.wasm_memory_threshold),
                environment_variables: Vec::new(),
            },
            module_hash: canister.module_hash().map(|h| h.to_vec()),
            memory_size: Nat::from(memory_size),
            memory_metrics: MemoryMetrics {
                wasm_memory_size: Nat::from(canister.wasm_memory_size()),
                stable_memory_size: Nat::from(canister.stable_memory_size()),
                global_memory_size: Nat::from(
                    execution.map_or(0, |e| e.exported_globals.iter().map(|g| g.size()).sum()),
                ),
                wasm_binary_size: Nat::from(execution.map_or(0, |e| e.wasm_module.len())),
                custom_sections_size: Nat::from(0u64),
                canister_history_size: Nat::from(history_size),
                wasm_chunk_store_size: Nat::from(canister.chunk_store_size()),
                snapshots_size: Nat::from(snapshots_size),
                log_memory_store_size: Nat::from(0u64),
            },
            cycles: Nat::from(canister.cycles),
            reserved_cycles: Nat::from(canister.reserved_cycles),
            idle_cycles_burned_per_day: Nat::from(
                self.config.idle_cycles_burned_per_day(memory_size),
            ),
            query_stats: QueryStats {
                num_calls_total: Nat::from(0u64),
                num_instructions_total: Nat::from(0u64),
                request_payload_bytes_total: Nat::from(0u64),
                response_payload_bytes_total: Nat::from(0u64),
            },
        };
        let schedule = canister
            .snapshot_schedule
            .as_ref()
            .map(|s| SnapshotScheduleStatus {
                interval_seconds: s.interval_seconds,
                keep: s.keep,
                only_when_stopped: s.only_when_stopped,
                next_due: s.next_due,
                last_failure: s
                    .last_failure
                    .as_ref()
                    .map(|f| ScheduledSnapshotFailureStatus {
                        time: f.time,
                        error_code: f.error_code,
                        message: f.message.clone(),
                    }),
            });
        reply((types::CanisterStatusResult {
            status: result.status,
            ready_for_migration: result.ready_for_migration,
            version: result.version,
            settings: result.settings,
            module_hash: result.module_hash,
            memory_size: result.memory_size,
            memory_metrics: result.memory_metrics,
            cycles: result.cycles,
            reserved_cycles: result.reserved_cycles,
            idle_cycles_burned_per_day: result.idle_cycles_burned_per_day,
            query_stats: result.query_stats,
            snapshot_schedule: schedule,
        },))
    }

    /// Public, as on the IC (where only canisters can call it).
    pub(super) fn canister_info(
        &self,
        state: &mut ReplicatedState,
        args: CanisterInfoArgs,
    ) -> Result<Vec<u8>, UserError> {
        let canister = canister(state, args.canister_id)?;
        let requested = args.num_requested_changes.unwrap_or(0);
        let recent_changes = last_n(canister.history.changes(), requested)
            .filter_map(CanisterChange::to_wire)
            .collect();
        let scheduled_snapshots = last_n(canister.history.scheduled_snapshots(), requested)
            .filter_map(CanisterChange::to_scheduled_snapshot)
            .collect();
        reply((types::CanisterInfoResult {
            total_num_changes: canister.history.total_num_changes(),
            recent_changes,
            module_hash: canister.module_hash().map(|h| h.to_vec()),
            controllers: canister.controllers.iter().copied().collect(),
            scheduled_snapshots,
        },))
    }

    pub(super) fn update_settings(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: types::UpdateSettingsArgs,
    ) -> Result<Vec<u8>, UserError> {
        let canister = controlled(state, args.canister_id, sender)?;
        let valid = validate_settings(&args.settings, &canister.settings)?;
        let time = state.time;
        let schedule = match &args.snapshot_schedule {
            None => None,
            Some(change) => Some(self.validate_schedule(change, sender, time)?),
        };
        let canister = canister_mut(state, args.canister_id)?;
        canister.settings = valid.settings;
        if let Some(mut schedule) = schedule {
            // A new schedule keeps the scheduled snapshots of the one it replaces as its own.
            if let (Some(new), Some(old)) = (&mut schedule, &canister.snapshot_schedule) {
                new.taken = old.taken.clone();
            }
            let old = std::mem::replace(&mut canister.snapshot_schedule, schedule);
            let new_due = canister.snapshot_schedule.as_ref().map(|s| s.next_due);
            let id = args.canister_id;
            if let Some(old) = old {
                state.snapshot_schedule_due.remove(&(old.next_due, id));
            }
            if let Some(due) = new_due {
                state.snapshot_schedule_due.insert((due, id));
            }
        }
        let canister = canister_mut(state, args.canister_id)?;
        canister.bump_version();
        if let Some(controllers) = valid.controllers {
            canister.controllers = controllers;
            let record = ControllersChangeRecord {
                controllers: canister.controllers.iter().copied().collect(),
            };
            canister.record_change(
                time,
                from_user(sender),
                ChangeDetails::ControllersChange(record),
            );
        }
        reply(())
    }

    /// The schedule an `update_settings` asks for (`Some(None)` clears it), or
    /// `InvalidManagementPayload` if it is out of range. Changes nothing.
    fn validate_schedule(
        &self,
        change: &SnapshotScheduleChange,
        sender: Principal,
        time: u64,
    ) -> Result<Option<SnapshotSchedule>, UserError> {
        let args = match change {
            SnapshotScheduleChange::Clear => return Ok(None),
            SnapshotScheduleChange::Set(args) => args,
        };
        let interval = args.interval_seconds;
        if !(MIN_SNAPSHOT_INTERVAL_SECONDS..=MAX_SNAPSHOT_INTERVAL_SECONDS).contains(&interval) {
            return Err(invalid_payload(format!(
                "snapshot_schedule.interval_seconds is {interval}; it must be between \
                 {MIN_SNAPSHOT_INTERVAL_SECONDS} and {MAX_SNAPSHOT_INTERVAL_SECONDS} (366 days)"
            )));
        }
        let quota = self.config.max_snapshots_per_canister as u64;
        if args.keep == 0 || args.keep > quota {
            return Err(invalid_payload(format!(
                "snapshot_schedule.keep is {}; it must be between 1 and the snapshot quota, {quota}",
                args.keep
            )));
        }
        Ok(Some(SnapshotSchedule {
            interval_seconds: interval,
            keep: args.keep,
            only_when_stopped: args.only_when_stopped.unwrap_or(false),
            set_by: sender,
            next_due: time.saturating_add(interval.saturating_mul(1_000_000_000)),
            taken: Default::default(),
            last_failure: None,
        }))
    }

    pub(super) fn delete_canister(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CanisterIdRecord,
    ) -> Result<Vec<u8>, UserError> {
        let canister = controlled(state, args.canister_id, sender)?;
        if canister.status != CanisterStatus::Stopped {
            return Err(UserError::new(
                ErrorCode::CanisterNotStopped,
                format!(
                    "Canister {} must be stopped before it is deleted: call stop_canister first.",
                    args.canister_id
                ),
            ));
        }
        if let Some(schedule) = &canister.snapshot_schedule {
            let due = (schedule.next_due, args.canister_id);
            state.snapshot_schedule_due.remove(&due);
        }
        state.snapshots.delete_all(args.canister_id);
        state.canisters.remove(&args.canister_id);
        state.deleted_canisters.insert(args.canister_id);
        reply(())
    }
}

/// Bytes an uninstall frees: the module, memories and globals, the certified data and the
/// chunk store (everything [`uninstall`] drops that counts toward memory).
pub(super) fn uninstall_frees(canister: &CanisterState) -> u64 {
    canister.memory_usage()
}

/// Drops the code, memories, globals, certified data, timer and Wasm chunk store (as the
/// interface spec says of `uninstall_code`); snapshots and cycles stay. Version + 1 and a `code_uninstall` history entry.
pub(super) fn uninstall(canister: &mut CanisterState, time: u64, sender: Principal) {
    drop_code(canister);
    canister.record_change(time, from_user(sender), ChangeDetails::CodeUninstall);
}

/// What every uninstall does (the replica's `uninstall_canister`): drops the code, memories,
/// globals, certified data, timer and Wasm chunk store, and bumps the version. Recording it in
/// the history is the caller's part.
pub(super) fn drop_code(canister: &mut CanisterState) {
    canister.execution_state = None;
    canister.last_install_timestamp = None;
    canister.certified_data.clear();
    canister.wasm_chunk_store.clear();
    canister.global_timer = None;
    canister.bump_version();
}

/// The last `n` entries of `list`, oldest first.
fn last_n<'a>(
    list: impl DoubleEndedIterator<Item = &'a CanisterChange> + ExactSizeIterator,
    n: u64,
) -> impl Iterator<Item = &'a CanisterChange> {
    let skip = (list.len() as u64).saturating_sub(n);
    list.skip(usize::try_from(skip).unwrap_or(usize::MAX))
}

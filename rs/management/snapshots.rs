//! The snapshot methods: take, load, list, delete. Validation order and error codes follow the
//! replica (`../shared/reference/ic-snapshots.md`, `spec/management.md`).

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, ChangeDetails, DeleteCanisterSnapshotArgs, LoadCanisterSnapshotArgs,
    LoadSnapshotRecord, Snapshot, SnapshotSource as WireSnapshotSource,
};

use super::canisters::{uninstall, uninstall_frees};
use super::types::{
    MAX_SNAPSHOT_LABEL_BYTES, SCHEDULED_SNAPSHOT_LABEL, SnapshotInfo, TakeCanisterSnapshotArgs,
};
use super::{
    ManagementCanister, canister, canister_not_found, check_snapshot_viewer, controlled, from_user,
    invalid_payload, reply,
};
use crate::execution::{MemoryGrowth, check_memory_growth};
use crate::replicated_state::ReplicatedState;
use crate::snapshots::{CanisterSnapshot, SnapshotId, SnapshotSource};
use crate::state::{
    CanisterChangeDetails, CanisterState, Cycles, ExecutionState, Global, ScheduledSnapshotFailure,
    ScheduledSnapshotRecord,
};

impl From<SnapshotSource> for WireSnapshotSource {
    fn from(source: SnapshotSource) -> Self {
        match source {
            SnapshotSource::TakenFromCanister => {
                WireSnapshotSource::TakenFromCanister(candid::Reserved)
            }
            SnapshotSource::MetadataUpload => WireSnapshotSource::MetadataUpload(candid::Reserved),
        }
    }
}

/// What an accepted operation charges: its cost, and what its memory growth reserves.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub(super) struct Charge {
    pub cost: Cycles,
    pub growth: MemoryGrowth,
}

impl Charge {
    /// Takes the cost from the canister's balance and moves the storage reservation to its
    /// reserved balance. The checks that produced the charge guarantee both fit.
    pub(super) fn apply(&self, canister: &mut CanisterState) {
        canister.cycles = canister.cycles.saturating_sub(self.cost);
        self.growth.apply(canister);
    }
}

/// A change in a canister's memory that must pass the resource checks.
pub(super) struct MemoryChange {
    /// Bytes the canister and its snapshots will hold after the change.
    pub after: u64,
    /// Bytes they hold now.
    pub before: u64,
    /// Instructions the operation costs.
    pub instructions: u64,
}

impl MemoryChange {
    /// Adding a snapshot of `size` bytes to `canister`'s snapshots, `replace` (if any) being
    /// removed: what the memory checks see, and the `2 × 10⁹ + size` instructions it costs.
    pub(super) fn new_snapshot(
        config: &crate::config::Config,
        state: &ReplicatedState,
        canister: &CanisterState,
        replace: Option<&SnapshotId>,
        size: u64,
    ) -> Result<Self, UserError> {
        let id = canister.canister_id;
        let freed = match replace {
            Some(replaced) => state.snapshots.get(id, replaced)?.total_size(),
            None => 0,
        };
        let before = state.canister_memory_usage(canister);
        Ok(MemoryChange {
            after: before.saturating_sub(freed).saturating_add(size),
            before,
            instructions: config.snapshot_base_instructions.saturating_add(size),
        })
    }
}

/// The replica's `CanisterSnapshotInconsistent`, reported as `InvalidManagementPayload`.
fn inconsistent(id: &SnapshotId, what: String) -> UserError {
    invalid_payload(format!(
        "Snapshot {id} is inconsistent: {what}. Upload its metadata again with values that fit \
         its module."
    ))
}

/// How an uploaded snapshot's globals differ from those its module exports, if they do.
fn globals_mismatch(module: &[Global], snapshot: &[Global]) -> Option<String> {
    if module.len() != snapshot.len() {
        return Some(format!(
            "the module exports {} globals, the snapshot has {}",
            module.len(),
            snapshot.len()
        ));
    }
    module
        .iter()
        .zip(snapshot)
        .enumerate()
        .find(|(_, (m, s))| m.type_name() != s.type_name())
        .map(|(i, (m, s))| {
            format!(
                "global {i} is {} in the module but {} in the snapshot",
                m.type_name(),
                s.type_name()
            )
        })
}

impl ManagementCanister<'_> {
    /// Heap-delta rate limit, then [`Self::check_memory_and_cycles`], in the replica's order.
    /// Returns what to charge. Changes nothing.
    pub(super) fn check_resources(
        &self,
        state: &ReplicatedState,
        canister: &CanisterState,
        change: &MemoryChange,
    ) -> Result<Charge, UserError> {
        self.check_heap_delta_rate(canister)?;
        self.check_memory_and_cycles(state, canister, change)
    }

    /// The heap-delta rate limit: refused once the canister's debit has reached the limit
    /// (`>=`, as the replica compares), until rounds have drained it.
    pub(super) fn check_heap_delta_rate(&self, canister: &CanisterState) -> Result<(), UserError> {
        let limit = self.config.heap_delta_rate_limit_bytes;
        if canister.heap_delta_debit < limit {
            return Ok(());
        }
        Err(UserError::new(
            ErrorCode::CanisterHeapDeltaRateLimited,
            format!(
                "Canister {} is heap delta rate limited: current delta debit is {}, but limit is \
                 {limit}. Retry after a few rounds.",
                canister.canister_id, canister.heap_delta_debit
            ),
        ))
    }

    /// Whether `canister` can pay `instructions` above what its freezing threshold reserves for
    /// its current memory: the replica's up-front baseline charge, as a check. Changes nothing.
    fn check_affordable(
        &self,
        state: &ReplicatedState,
        canister: &CanisterState,
        instructions: u64,
    ) -> Result<(), UserError> {
        let usage = state.canister_memory_usage(canister);
        self.check_memory_and_cycles(
            state,
            canister,
            &MemoryChange {
                after: usage,
                before: usage,
                instructions,
            },
        )
        .map(|_| ())
    }

    /// Subnet capacity, storage reservation, freezing threshold ([`check_memory_growth`]), then
    /// the cost in cycles. Returns what to charge. Changes nothing.
    pub(super) fn check_memory_and_cycles(
        &self,
        state: &ReplicatedState,
        canister: &CanisterState,
        change: &MemoryChange,
    ) -> Result<Charge, UserError> {
        let id = canister.canister_id;
        let growth = check_memory_growth(
            self.config,
            state.memory_usage(),
            state.memory_usage(),
            canister,
            change.before,
            change.after,
        )?;
        let cost = self.config.instructions_cost(change.instructions);
        let available = growth.available(canister);
        if available < cost {
            return Err(UserError::new(
                ErrorCode::CanisterOutOfCycles,
                format!(
                    "Canister {id} is out of cycles: the operation costs {cost} cycles and \
                     {available} are available above the freezing threshold. Please top up the \
                     canister with at least {} additional cycles.",
                    cost.saturating_sub(available)
                ),
            ));
        }
        Ok(Charge { cost, growth })
    }

    /// Takes the scheduled snapshots that are due at `state.time` (`spec/management.md`,
    /// "Scheduled snapshots"), in `(due time, canister id)` order. Each runs as a
    /// `take_canister_snapshot` from the controller that set the schedule, so the controller
    /// check, the quota, the rate limit and the charge are the manual take's; a refusal leaves
    /// the canister untouched and is recorded in the schedule for `canister_status`; a take
    /// adds a `scheduled_snapshot` entry to the canister's history.
    pub fn take_scheduled_snapshots(&self, state: &mut ReplicatedState) {
        let time = state.time;
        let due: Vec<(u64, Principal)> = state
            .snapshot_schedule_due
            .range(..(time.saturating_add(1), Principal::management_canister()))
            .copied()
            .collect();
        for (due_at, canister_id) in due {
            let Some(canister) = state.canisters.get_mut(&canister_id) else {
                state.snapshot_schedule_due.remove(&(due_at, canister_id));
                continue;
            };
            let stopped = canister.status == crate::state::CanisterStatus::Stopped;
            let Some(schedule) = canister.snapshot_schedule.as_mut() else {
                state.snapshot_schedule_due.remove(&(due_at, canister_id));
                continue;
            };
            if schedule.only_when_stopped && !stopped {
                continue; // stays due until a round finds the canister stopped
            }
            // The next due time after now: periods missed while waiting are skipped.
            let interval = schedule
                .interval_seconds
                .saturating_mul(1_000_000_000)
                .max(1);
            let periods = time
                .saturating_sub(due_at)
                .checked_div(interval)
                .unwrap_or(0)
                .saturating_add(1);
            schedule.next_due = due_at.saturating_add(periods.saturating_mul(interval));
            let next_due = schedule.next_due;
            // Forget scheduled snapshots deleted since; replace the oldest beyond `keep`.
            let snapshots = &state.snapshots;
            schedule.taken.retain(|local| {
                let id = SnapshotId::new(canister_id, *local);
                snapshots.get(canister_id, &id).is_ok()
            });
            let replace = (schedule.taken.len() as u64 >= schedule.keep)
                .then(|| schedule.taken.front().copied())
                .flatten()
                .map(|local| SnapshotId::new(canister_id, local));
            let sender = schedule.set_by;
            state.snapshot_schedule_due.remove(&(due_at, canister_id));
            state.snapshot_schedule_due.insert((next_due, canister_id));
            let args = TakeCanisterSnapshotArgs {
                canister_id,
                replace_snapshot: replace.as_ref().map(|id| id.to_bytes().into()),
                uninstall_code: None,
                sender_canister_version: None,
                label: Some(SCHEDULED_SNAPSHOT_LABEL.to_string()),
            };
            let before = state.footprint(canister_id);
            let result = self.take_snapshot(state, sender, args);
            let after = state.footprint(canister_id);
            state.account(before, after);
            let Some(schedule) = state
                .canisters
                .get_mut(&canister_id)
                .and_then(|c| c.snapshot_schedule.as_mut())
            else {
                continue;
            };
            match result {
                Ok(taken) => {
                    if replace.is_some() {
                        schedule.taken.pop_front();
                    }
                    schedule.taken.push_back(taken.local_id());
                    schedule.last_failure = None;
                    // The one change a take makes to the history (not the version, as a take
                    // changes neither code nor settings): this project's extension.
                    if let Some(canister) = state.canisters.get_mut(&canister_id) {
                        let record = ScheduledSnapshotRecord {
                            snapshot_id: taken.to_bytes(),
                            replaced_snapshot: replace.map(|id| id.to_bytes().into()),
                        };
                        canister.record_change(
                            time,
                            from_user(sender),
                            CanisterChangeDetails::ScheduledSnapshot(record),
                        );
                    }
                }
                Err(err) => {
                    schedule.last_failure = Some(ScheduledSnapshotFailure {
                        time,
                        error_code: err.code() as u64,
                        message: err.description().to_string(),
                    })
                }
            }
        }
    }

    pub(super) fn take_canister_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: TakeCanisterSnapshotArgs,
    ) -> Result<Vec<u8>, UserError> {
        let id = self.take_snapshot(state, sender, args)?;
        let snapshot = state.snapshots.get(id.canister_id(), &id)?;
        reply((Snapshot {
            id: id.to_bytes(),
            taken_at_timestamp: snapshot.taken_at_timestamp,
            total_size: snapshot.total_size(),
        },))
    }

    /// A take, manual or scheduled: every check, then the snapshot, the charge and (with
    /// `uninstall_code`) the uninstall. Returns the new snapshot's id.
    fn take_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: TakeCanisterSnapshotArgs,
    ) -> Result<SnapshotId, UserError> {
        if let Some(label) = args
            .label
            .as_ref()
            .filter(|l| l.len() > MAX_SNAPSHOT_LABEL_BYTES)
        {
            return Err(invalid_payload(format!(
                "label is {} bytes; at most {MAX_SNAPSHOT_LABEL_BYTES} are allowed",
                label.len()
            )));
        }
        let replace = args
            .replace_snapshot
            .as_deref()
            .map(|bytes| SnapshotId::from_bytes(bytes))
            .transpose()?;
        let canister = controlled(state, args.canister_id, sender)?;
        state
            .snapshots
            .check_room(canister.canister_id, replace.as_ref())?;
        let new_size = canister.memory_usage();
        let mut change =
            MemoryChange::new_snapshot(self.config, state, canister, replace.as_ref(), new_size)?;
        if args.uninstall_code == Some(true) {
            // The uninstall that follows frees the canister's own memory: the checks count the
            // memory after both, as the replica does.
            change.after = change.after.saturating_sub(uninstall_frees(canister));
        }
        let charge = self.check_resources(state, canister, &change)?;

        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .ok_or_else(|| canister_not_found(args.canister_id))?;
        let heap_delta = canister
            .execution_state
            .as_ref()
            .map_or(0, ExecutionState::unsaved_page_bytes);
        let snapshot = CanisterSnapshot::capture(canister, time, args.label)?;
        let id = snapshot.id().clone();
        state.snapshots.commit(snapshot, replace.as_ref());
        charge.apply(canister);
        canister.heap_delta_debit = canister.heap_delta_debit.saturating_add(heap_delta);
        if args.uninstall_code == Some(true) {
            uninstall(canister, time, sender);
        }
        Ok(id)
    }

    pub(super) fn load_canister_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: LoadCanisterSnapshotArgs,
    ) -> Result<Vec<u8>, UserError> {
        // The replica's order: target's controller, heap-delta rate, the snapshot, the source
        // canister's controller, the baseline charge, the snapshot's consistency, then memory
        // and cycles. The first failing check decides the error.
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let target = controlled(state, args.canister_id, sender)?;
        self.check_heap_delta_rate(target)?;
        let source_id = snapshot_id.canister_id();
        let snapshot = state.snapshots.get(source_id, &snapshot_id).map_err(|_| {
            crate::snapshots::SnapshotError::NotFound {
                snapshot_id: snapshot_id.clone(),
                canister_id: target.canister_id,
            }
        })?;
        if source_id != target.canister_id && !canister(state, source_id)?.is_controller(&sender) {
            return Err(UserError::new(
                ErrorCode::CanisterRejectedMessage,
                format!(
                    "Only a controller of the canister that snapshot {snapshot_id} belongs to \
                     can load it on canister {}. Sender: {sender}.",
                    target.canister_id
                ),
            ));
        }
        self.check_affordable(state, target, self.config.snapshot_base_instructions)?;
        self.check_loadable(snapshot, target)?;
        let before = state.canister_memory_usage(target);
        let change = MemoryChange {
            after: before
                .saturating_sub(target.memory_usage())
                .saturating_add(snapshot.total_size()),
            before,
            instructions: self
                .config
                .snapshot_base_instructions
                .saturating_add(snapshot.total_size()),
        };
        let charge = self.check_memory_and_cycles(state, target, &change)?;

        let record = LoadSnapshotRecord {
            from_canister_id: (source_id != args.canister_id).then_some(source_id),
            snapshot_id: snapshot_id.to_bytes(),
            canister_version: snapshot.canister_version,
            taken_at_timestamp: snapshot.taken_at_timestamp,
            source: snapshot.source.into(),
        };
        let content = snapshot.content();
        let heap_delta = content
            .wasm_memory
            .resident_bytes()
            .saturating_add(content.stable_memory.resident_bytes());
        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .ok_or_else(|| canister_not_found(args.canister_id))?;
        snapshot.restore_into(canister);
        // A load installs the snapshot's module: the replica stamps the new execution state
        // with the batch time, as an install does.
        canister.last_install_timestamp = Some(time);
        charge.apply(canister);
        canister.heap_delta_debit = canister.heap_delta_debit.saturating_add(heap_delta);
        canister.bump_version();
        canister.record_change(time, from_user(sender), ChangeDetails::LoadSnapshot(record));
        state.snapshots.get_mut(source_id, &snapshot_id)?.seal();
        reply(())
    }

    /// Whether `snapshot` may be loaded into `target`, checked as the replica does before a
    /// load: the module must be complete and one the engine accepts; an uploaded snapshot's
    /// globals must match the module's in number and type, and its hook status (when given)
    /// must be consistent with the target's settings and the snapshot's heap. A taken snapshot
    /// came from a running module, so only the engine's check applies to it.
    fn check_loadable(
        &self,
        snapshot: &CanisterSnapshot,
        target: &CanisterState,
    ) -> Result<(), UserError> {
        let id = snapshot.id();
        if let Some((start, end)) = snapshot.missing_module_range() {
            return Err(UserError::new(
                ErrorCode::CanisterRejectedMessage,
                format!(
                    "Snapshot {id} is incomplete: bytes [{start}, {end}) of its Wasm module were \
                     never uploaded. Upload them with upload_canister_snapshot_data, then load."
                ),
            ));
        }
        self.engine
            .validate(&snapshot.content().wasm_module)
            .map_err(|err| {
                UserError::new(
                    err.code(),
                    format!("Snapshot {id} cannot be loaded: {}", err.description()),
                )
            })?;
        if snapshot.source != SnapshotSource::MetadataUpload {
            return Ok(());
        }
        let expected = self.engine.initial_globals(&snapshot.content().wasm_module);
        if let Some(mismatch) = globals_mismatch(&expected, &snapshot.content().exported_globals) {
            return Err(inconsistent(
                id,
                format!("its globals do not match its Wasm module's: {mismatch}"),
            ));
        }
        if let Some(status) = snapshot.content().on_low_wasm_memory_hook_status {
            let heap = snapshot.content().wasm_memory.size_bytes();
            let condition = target.settings.low_wasm_memory_condition(heap);
            if !status.is_consistent_with(condition) {
                return Err(inconsistent(
                    id,
                    format!(
                        "its low-memory hook status is {status:?}, but with a heap of {heap} \
                         bytes, a wasm_memory_limit of {} and a wasm_memory_threshold of {} the \
                         hook condition is {}satisfied",
                        target.settings.wasm_memory_limit,
                        target.settings.wasm_memory_threshold,
                        if condition { "" } else { "not " }
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn list_canister_snapshots(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: CanisterIdRecord,
    ) -> Result<Vec<u8>, UserError> {
        let canister = canister(state, args.canister_id)?;
        check_snapshot_viewer(canister, sender)?;
        let list: Vec<SnapshotInfo> = state
            .snapshots
            .list(args.canister_id)
            .map(|snapshot| SnapshotInfo {
                id: snapshot.id().to_bytes(),
                taken_at_timestamp: snapshot.taken_at_timestamp,
                total_size: snapshot.total_size(),
                label: snapshot.label.clone(),
                checksum: snapshot.checksum().to_vec(),
            })
            .collect();
        reply((list,))
    }

    pub(super) fn delete_canister_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: DeleteCanisterSnapshotArgs,
    ) -> Result<Vec<u8>, UserError> {
        // The replica's order: controller, the snapshot, then the memory and cycles checks
        // of the memory after the delete, at zero cost (`canister_manager.rs`,
        // `delete_snapshot`): a canister frozen even without the snapshot is refused.
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let canister = controlled(state, args.canister_id, sender)?;
        let size = state
            .snapshots
            .get(args.canister_id, &snapshot_id)?
            .total_size();
        let before = state.canister_memory_usage(canister);
        let change = MemoryChange {
            after: before.saturating_sub(size),
            before,
            instructions: 0,
        };
        let charge = self.check_memory_and_cycles(state, canister, &change)?;
        state.snapshots.delete(args.canister_id, &snapshot_id)?;
        if let Some(canister) = state.canisters.get_mut(&args.canister_id) {
            charge.apply(canister);
        }
        reply(())
    }
}

#[cfg(test)]
mod tests {
    use candid::{Encode, Principal};

    use crate::memory::PAGE_SIZE;
    use crate::memory::visits;
    use crate::{StateMachine, TEST_CANISTER_WASM};

    /// Take and load through messages read no page and walk no tree, whatever the memory holds
    /// (`ARCHITECTURE.md`: "Take, load and delete never copy or hash memory"); their heap delta
    /// (the pages not yet checkpointed) is a count kept by the writes, and still exact.
    #[test]
    fn take_and_load_visit_no_page() {
        const LIMIT: u64 = 1 << 20;
        let controller = Principal::from_slice(&[0xC0, 1]);
        let mut sm = StateMachine::with_config(crate::Config {
            heap_delta_rate_limit_bytes: LIMIT,
            ..crate::Config::default()
        });
        let id = sm.create_canister_with_settings(Some(controller), None);
        sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller));
        let pages = 3_000u64;
        let bytes = pages * PAGE_SIZE as u64;
        let fill = Encode!(&0u64, &bytes, &7u8).unwrap();
        sm.update_call(id, controller, "fill_heap", fill).unwrap();
        let drain = |sm: &mut StateMachine| {
            // Rounds drain `LIMIT` each: wait until the debit is gone, then read it after the
            // next message's round (its heap delta less one round's drain).
            while sm.state().canisters[&id].heap_delta_debit > 0 {
                sm.tick();
            }
        };

        drain(&mut sm);
        let before = visits::so_far();
        let taken = sm
            .take_canister_snapshot(id, Some(controller), None)
            .unwrap();
        assert_eq!(visits::so_far() - before, 0, "page visits during a take");
        let charged = sm.state().canisters[&id].heap_delta_debit;
        assert_eq!(
            charged,
            bytes - LIMIT,
            "the take's heap delta: the unsaved pages"
        );

        drain(&mut sm);
        let before = visits::so_far();
        sm.load_canister_snapshot(id, Some(controller), taken.id)
            .unwrap();
        assert_eq!(visits::so_far() - before, 0, "page visits during a load");
        let charged = sm.state().canisters[&id].heap_delta_debit;
        assert_eq!(
            charged,
            bytes - LIMIT,
            "the load's heap delta: the snapshot's pages"
        );

        // The counter sees walks on this thread: a state hash after a write walks the change.
        sm.update_call(
            id,
            controller,
            "fill_heap",
            Encode!(&0u64, &1u64, &1u8).unwrap(),
        )
        .unwrap();
        let before = visits::so_far();
        sm.state_hash();
        assert!(visits::so_far() > before, "the counter counts");
    }
}

//! The snapshot methods: take, load, list, delete. Validation order and error codes follow the
//! replica (`../shared/reference/ic-snapshots.md`, `spec/management.md`).

use candid::Principal;
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, ChangeDetails, DeleteCanisterSnapshotArgs, LoadCanisterSnapshotArgs,
    LoadSnapshotRecord, Snapshot, SnapshotSource as WireSnapshotSource,
};

use super::canisters::uninstall;
use super::types::{MAX_SNAPSHOT_LABEL_BYTES, SnapshotInfo, TakeCanisterSnapshotArgs};
use super::{
    ManagementCanister, canister, check_controller, check_snapshot_viewer, controlled, from_user,
    invalid_payload, reply,
};
use crate::replicated_state::ReplicatedState;
use crate::snapshots::{CanisterSnapshot, SnapshotId, SnapshotSource};
use crate::state::{CanisterState, Cycles};

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
        let before = canister.memory_usage() + state.snapshots.snapshots_size(id);
        Ok(MemoryChange {
            after: before - freed + size,
            before,
            instructions: config.snapshot_base_instructions + size,
        })
    }
}

impl ManagementCanister<'_> {
    /// Heap-delta rate limit, then [`Self::check_memory_and_cycles`], in the replica's order.
    /// Returns the cycles to charge. Changes nothing.
    pub(super) fn check_resources(
        &self,
        state: &ReplicatedState,
        canister: &CanisterState,
        change: &MemoryChange,
    ) -> Result<Cycles, UserError> {
        let id = canister.canister_id;
        let limit = self.config.heap_delta_rate_limit_bytes;
        if canister.heap_delta_debit > limit {
            return Err(UserError::new(
                ErrorCode::CanisterHeapDeltaRateLimited,
                format!(
                    "Canister {id} is heap delta rate limited: current delta debit: {}, limit: \
                     {limit}. Retry after a few rounds.",
                    canister.heap_delta_debit
                ),
            ));
        }
        self.check_memory_and_cycles(state, canister, change)
    }

    /// Subnet capacity, freezing threshold, then the cost in cycles. Returns the cycles to
    /// charge. Changes nothing.
    pub(super) fn check_memory_and_cycles(
        &self,
        state: &ReplicatedState,
        canister: &CanisterState,
        change: &MemoryChange,
    ) -> Result<Cycles, UserError> {
        let id = canister.canister_id;
        let grows_by = change.after.saturating_sub(change.before);
        let subnet_after = state.memory_usage().saturating_add(grows_by);
        if grows_by > 0 && subnet_after > self.config.subnet_memory_capacity_bytes {
            return Err(UserError::new(
                ErrorCode::SubnetOversubscribed,
                format!(
                    "Canister {id} needs {grows_by} more bytes, but the subnet's memory \
                     capacity of {} bytes would be exceeded. Delete snapshots or canisters.",
                    self.config.subnet_memory_capacity_bytes
                ),
            ));
        }
        let reserve = self
            .config
            .storage_cost(change.after, canister.settings.freezing_threshold);
        if canister.cycles < reserve {
            return Err(UserError::new(
                ErrorCode::InsufficientCyclesInMemoryGrow,
                format!(
                    "Canister {id} does not have enough cycles to grow its memory to {} bytes: \
                     its freezing threshold requires {reserve} cycles, it has {}. Top up the \
                     canister or lower its freezing_threshold.",
                    change.after, canister.cycles
                ),
            ));
        }
        let cost = self.config.instructions_cost(change.instructions);
        if canister.cycles - reserve < cost {
            return Err(UserError::new(
                ErrorCode::CanisterOutOfCycles,
                format!(
                    "Canister {id} is out of cycles: the operation costs {cost} cycles and \
                     {} are available above the freezing threshold. Please top up the \
                     canister with at least {} additional cycles.",
                    canister.cycles - reserve,
                    cost - (canister.cycles - reserve)
                ),
            ));
        }
        Ok(cost)
    }

    pub(super) fn take_canister_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: TakeCanisterSnapshotArgs,
    ) -> Result<Vec<u8>, UserError> {
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
        let change =
            MemoryChange::new_snapshot(self.config, state, canister, replace.as_ref(), new_size)?;
        let cost = self.check_resources(state, canister, &change)?;

        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .expect("checked by `controlled` above");
        let snapshot = CanisterSnapshot::capture(canister, time, args.label)?;
        let result = Snapshot {
            id: snapshot.id().to_bytes(),
            taken_at_timestamp: snapshot.taken_at_timestamp,
            total_size: snapshot.total_size(),
        };
        state.snapshots.commit(snapshot, replace.as_ref());
        canister.cycles -= cost;
        canister.heap_delta_debit = canister.heap_delta_debit.saturating_add(new_size);
        if args.uninstall_code == Some(true) {
            uninstall(canister, time, sender);
        }
        reply((result,))
    }

    pub(super) fn load_canister_snapshot(
        &self,
        state: &mut ReplicatedState,
        sender: Principal,
        args: LoadCanisterSnapshotArgs,
    ) -> Result<Vec<u8>, UserError> {
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        let target = controlled(state, args.canister_id, sender)?;
        let source_id = snapshot_id.canister_id();
        let snapshot = if source_id == target.canister_id {
            state.snapshots.get(target.canister_id, &snapshot_id)?
        } else {
            // Loading another canister's snapshot needs control of both canisters.
            let found = state.snapshots.get(source_id, &snapshot_id).map_err(|_| {
                crate::snapshots::SnapshotError::NotFound {
                    snapshot_id: snapshot_id.clone(),
                    canister_id: target.canister_id,
                }
            })?;
            check_controller(canister(state, source_id)?, sender)?;
            found
        };
        self.check_loadable(snapshot)?;
        let before = target.memory_usage() + state.snapshots.snapshots_size(target.canister_id);
        let change = MemoryChange {
            after: before - target.memory_usage() + snapshot.total_size(),
            before,
            instructions: self.config.snapshot_base_instructions + snapshot.total_size(),
        };
        let cost = self.check_resources(state, target, &change)?;

        let record = LoadSnapshotRecord {
            from_canister_id: (source_id != args.canister_id).then_some(source_id),
            snapshot_id: snapshot_id.to_bytes(),
            canister_version: snapshot.canister_version,
            taken_at_timestamp: snapshot.taken_at_timestamp,
            source: snapshot.source.into(),
        };
        let size = snapshot.total_size();
        let time = state.time;
        let canister = state
            .canisters
            .get_mut(&args.canister_id)
            .expect("checked by `controlled` above");
        snapshot.restore_into(canister);
        canister.cycles -= cost;
        canister.heap_delta_debit = canister.heap_delta_debit.saturating_add(size);
        canister.canister_version += 1;
        canister.record_change(time, from_user(sender), ChangeDetails::LoadSnapshot(record));
        reply(())
    }

    /// Whether a snapshot may be loaded: every taken snapshot may; an uploaded one once its
    /// module is complete.
    fn check_loadable(&self, snapshot: &CanisterSnapshot) -> Result<(), UserError> {
        match snapshot.missing_module_range() {
            None => Ok(()),
            Some((start, end)) => Err(UserError::new(
                ErrorCode::CanisterRejectedMessage,
                format!(
                    "Snapshot {} is incomplete: bytes [{start}, {end}) of its Wasm module were                      never uploaded. Upload them with upload_canister_snapshot_data, then load.",
                    snapshot.id()
                ),
            )),
        }
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
        let snapshot_id = SnapshotId::from_bytes(&args.snapshot_id)?;
        controlled(state, args.canister_id, sender)?;
        state.snapshots.delete(args.canister_id, &snapshot_id)?;
        reply(())
    }
}

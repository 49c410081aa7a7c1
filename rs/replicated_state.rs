//! The replicated state of one subnet: canisters, snapshots, time and counters, and its hash.
//!
//! Depends on [`crate::state`] and [`crate::snapshots`]. Everything here must come out the same
//! on every replica fed the same batches: canisters and snapshots live in `BTreeMap`s, time is
//! the batch time handed in by the execution loop, and [`ReplicatedState::state_hash`] walks
//! everything in a fixed order with a fixed encoding (`spec/execution.md`).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use candid::Principal;
use ic_management_canister_types::{
    ChangeOrigin, CodeDeploymentMode, CodeDeploymentRecord, ControllersChangeRecord,
    CreationRecord, FromCanisterRecord, FromUserRecord, LoadSnapshotRecord, LogVisibility,
    RenameCanisterRecord, SnapshotVisibility,
};
use sha2::{Digest, Sha256};

use crate::memory::Hash;
use crate::snapshots::{SnapshotSource, SnapshotStore};
use crate::state::{
    CanisterChange, CanisterChangeDetails, CanisterState, CanisterStatus, GlobalTimer, HookStatus,
    ScheduledSnapshotRecord,
};

/// The fixed time a fresh subnet starts at (ns since the Unix epoch; PocketIC's genesis).
pub const GENESIS_TIME_NANOS: u64 = 1_620_328_630_000_000_000;

/// The canister ids this subnet allocates: `u64_be(n) ‖ 0x01 0x01`, as the IC's canister ranges.
pub fn canister_id_from_index(index: u64) -> Principal {
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes[8] = 1;
    bytes[9] = 1;
    Principal::from_slice(&bytes)
}

/// A subnet's replicated state.
#[derive(Clone, Debug)]
pub struct ReplicatedState {
    pub canisters: BTreeMap<Principal, CanisterState>,
    pub snapshots: SnapshotStore,
    /// The current batch time, ns since the Unix epoch.
    pub time: u64,
    /// Rounds executed so far.
    pub round: u64,
    /// Index of the next canister id to allocate.
    pub next_canister_index: u64,
    /// Ids of deleted canisters: never given out again, so snapshot ids are never reused.
    pub deleted_canisters: BTreeSet<Principal>,
    /// Running totals of the memory the subnet holds ([`Self::memory_usage`]), kept up to date
    /// by [`Self::account`] after every message instead of recounted: O(1) in the number of
    /// canisters and snapshots. Derived (not hashed): [`Self::recount_memory`] rebuilds them.
    pub memory_totals: MemoryFootprint,
    /// `(next_due, canister)` of every canister with a snapshot schedule, so the round loop
    /// finds the due ones in O(log n + due). Derived from the canisters' schedules (not hashed).
    pub snapshot_schedule_due: BTreeSet<(u64, Principal)>,
}

/// Memory held by canisters (their own [`CanisterState::memory_usage`]) and by their snapshots
/// (the logical `total_size`), for one canister or summed over the subnet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryFootprint {
    pub canisters: u64,
    pub snapshots: u64,
}

impl MemoryFootprint {
    pub fn total(&self) -> u64 {
        self.canisters.saturating_add(self.snapshots)
    }
}

impl ReplicatedState {
    pub fn new(max_snapshots_per_canister: usize) -> Self {
        ReplicatedState {
            canisters: BTreeMap::new(),
            snapshots: SnapshotStore::new(max_snapshots_per_canister),
            time: GENESIS_TIME_NANOS,
            round: 0,
            next_canister_index: 0,
            deleted_canisters: BTreeSet::new(),
            memory_totals: MemoryFootprint::default(),
            snapshot_schedule_due: BTreeSet::new(),
        }
    }

    /// Memory in use on the subnet: every canister's own memory plus the logical size of every
    /// snapshot (`spec/management.md`, accounting). O(1): the running totals.
    pub fn memory_usage(&self) -> u64 {
        self.memory_totals.total()
    }

    /// Bytes `canister` holds with its snapshots: what its freezing threshold and the memory
    /// checks count.
    pub fn canister_memory_usage(&self, canister: &CanisterState) -> u64 {
        canister
            .memory_usage()
            .saturating_add(self.snapshots.snapshots_size(canister.canister_id))
    }

    /// What one canister and its snapshots hold now (zero for a canister that does not exist).
    /// O(log n + snapshots of the canister), which the quota bounds.
    pub fn footprint(&self, canister_id: Principal) -> MemoryFootprint {
        MemoryFootprint {
            canisters: self
                .canisters
                .get(&canister_id)
                .map_or(0, CanisterState::memory_usage),
            snapshots: self.snapshots.snapshots_size(canister_id),
        }
    }

    /// Moves the running totals from a canister's footprint `before` a change to its footprint
    /// `after` it. Every path that changes a canister's memory or its snapshots ends here
    /// (the management canister per message, the round loop per canister).
    pub fn account(&mut self, before: MemoryFootprint, after: MemoryFootprint) {
        let move_total = |total: u64, before: u64, after: u64| {
            let moved = total.checked_sub(before).and_then(|t| t.checked_add(after));
            debug_assert!(
                moved.is_some(),
                "running memory total {total} cannot hold {before} -> {after}"
            );
            moved.unwrap_or_else(|| total.saturating_sub(before).saturating_add(after))
        };
        let totals = &mut self.memory_totals;
        totals.canisters = move_total(totals.canisters, before.canisters, after.canisters);
        totals.snapshots = move_total(totals.snapshots, before.snapshots, after.snapshots);
    }

    /// The running totals recounted from scratch: O(canisters + snapshots). For checks (debug
    /// rounds, the simulator) and for rebuilding the totals of a state read back from disk.
    pub fn recount_memory(&self) -> MemoryFootprint {
        MemoryFootprint {
            canisters: self
                .canisters
                .values()
                .map(CanisterState::memory_usage)
                .fold(0u64, u64::saturating_add),
            snapshots: self.snapshots.total_size(),
        }
    }

    /// Whether the running totals equal a recount; the difference if not.
    pub fn check_accounting(&self) -> Result<(), String> {
        let recount = self.recount_memory();
        if recount == self.memory_totals {
            Ok(())
        } else {
            Err(format!(
                "memory accounting drifted: running totals {:?}, recount {recount:?}",
                self.memory_totals
            ))
        }
    }

    /// Bytes every snapshot on the subnet really holds beyond the live canisters (pages and
    /// modules no canister shares any more, each counted once): the RAM snapshots cost, beside
    /// the logical [`SnapshotStore::total_size`]. O(pages changed since the snapshots were taken).
    pub fn snapshots_unique_bytes(&self) -> u64 {
        self.canisters
            .values()
            .map(|canister| self.snapshots.unique_bytes(canister))
            .sum()
    }

    /// SHA-256 over the whole replicated state, in a fixed order and encoding. Equal for equal
    /// histories; any difference in a canister, a snapshot, a counter or the time changes it.
    /// Costs the hashing of pages changed since the last call (memory roots are cached).
    pub fn state_hash(&self) -> Hash {
        let mut h = StateHasher::default();
        h.bytes(b"ic-canister-snapshots/state/v1");
        h.u64(self.time);
        h.u64(self.round);
        h.u64(self.next_canister_index);
        h.u64(self.deleted_canisters.len() as u64);
        for id in &self.deleted_canisters {
            h.bytes(id.as_slice());
        }
        h.u64(self.canisters.len() as u64);
        for canister in self.canisters.values() {
            hash_canister(&mut h, canister);
        }
        h.u64(self.snapshots.len() as u64);
        for snapshot in self.snapshots.iter() {
            h.bytes(&snapshot.id().to_bytes());
            h.u64(snapshot.taken_at_timestamp);
            h.u64(snapshot.canister_version);
            h.u8(match snapshot.source {
                SnapshotSource::TakenFromCanister => 0,
                SnapshotSource::MetadataUpload => 1,
            });
            h.opt_bytes(snapshot.label.as_deref().map(str::as_bytes));
            h.bytes(&snapshot.checksum());
            // An uploaded snapshot may leave either unset ("not given": 2 and 3).
            match snapshot.content().global_timer {
                Some(GlobalTimer::Inactive) => h.u8(0),
                Some(GlobalTimer::Active(t)) => {
                    h.u8(1);
                    h.u64(t)
                }
                None => h.u8(2),
            }
            match snapshot.content().on_low_wasm_memory_hook_status {
                Some(status) => h.u8(status as u8),
                None => h.u8(3),
            }
            match snapshot.upload() {
                None => h.u8(0),
                Some(upload) => {
                    h.u8(1);
                    for ranges in [
                        &upload.wasm_module,
                        &upload.wasm_memory,
                        &upload.stable_memory,
                    ] {
                        h.u64(ranges.iter().count() as u64);
                        for (start, end) in ranges.iter() {
                            h.u64(start);
                            h.u64(end);
                        }
                    }
                }
            }
        }
        h.finish()
    }
}

fn hash_canister(h: &mut StateHasher, canister: &CanisterState) {
    h.bytes(canister.canister_id.as_slice());
    h.u64(canister.controllers.len() as u64);
    for controller in &canister.controllers {
        h.bytes(controller.as_slice());
    }
    h.u8(match canister.status {
        CanisterStatus::Running => 0,
        CanisterStatus::Stopping => 1,
        CanisterStatus::Stopped => 2,
    });
    match &canister.execution_state {
        None => h.u8(0),
        Some(execution) => {
            h.u8(1);
            h.bytes(execution.wasm_module.hash());
            h.bytes(&execution.wasm_memory.root_hash());
            h.bytes(&execution.stable_memory.root_hash());
            let mut globals = Vec::new();
            for global in &execution.exported_globals {
                global.encode(&mut globals);
            }
            h.bytes(&globals);
        }
    }
    match canister.last_install_timestamp {
        None => h.u8(0),
        Some(time) => {
            h.u8(1);
            h.u64(time);
        }
    }
    h.bytes(&canister.certified_data);
    hash_timer_and_hook(
        h,
        canister.global_timer,
        canister.on_low_wasm_memory_hook_status,
    );
    h.u64(canister.wasm_chunk_store.len() as u64);
    for (hash, chunk) in &canister.wasm_chunk_store {
        h.bytes(hash);
        h.u64(chunk.len() as u64);
    }
    h.bytes(&canister.cycles.to_be_bytes());
    h.bytes(&canister.reserved_cycles.to_be_bytes());
    h.u64(canister.canister_version);
    h.u64(canister.history.total_num_changes());
    h.u64(canister.history.changes().len() as u64);
    for change in canister.history.changes() {
        hash_change(h, change);
    }
    h.u64(canister.history.scheduled_snapshots().len() as u64);
    for change in canister.history.scheduled_snapshots() {
        hash_change(h, change);
    }
    h.u64(canister.next_snapshot_id);
    let settings = &canister.settings;
    h.u64(settings.compute_allocation);
    h.u64(settings.memory_allocation);
    h.u64(settings.freezing_threshold);
    h.bytes(&settings.reserved_cycles_limit.to_be_bytes());
    h.u64(settings.wasm_memory_limit);
    h.u64(settings.wasm_memory_threshold);
    match &settings.log_visibility {
        LogVisibility::Controllers => h.u8(0),
        LogVisibility::Public => h.u8(1),
        LogVisibility::AllowedViewers(viewers) => {
            h.u8(2);
            h.principals(viewers);
        }
    }
    match &settings.snapshot_visibility {
        SnapshotVisibility::Controllers => h.u8(0),
        SnapshotVisibility::Public => h.u8(1),
        SnapshotVisibility::AllowedViewers(viewers) => {
            h.u8(2);
            h.principals(viewers);
        }
    }
    h.u64(canister.heap_delta_debit);
    match &canister.snapshot_schedule {
        None => h.u8(0),
        Some(schedule) => {
            h.u8(1);
            h.u64(schedule.interval_seconds);
            h.u64(schedule.keep);
            h.u8(schedule.only_when_stopped as u8);
            h.bytes(schedule.set_by.as_slice());
            h.u64(schedule.next_due);
            h.u64(schedule.taken.len() as u64);
            for local_id in &schedule.taken {
                h.u64(*local_id);
            }
            match &schedule.last_failure {
                None => h.u8(0),
                Some(failure) => {
                    h.u8(1);
                    h.u64(failure.time);
                    h.u64(failure.error_code);
                    h.bytes(failure.message.as_bytes());
                }
            }
        }
    }
}

/// One history entry, field by field (`spec/execution.md`, "State hash"): never through Candid,
/// whose encoding belongs to another crate's version.
fn hash_change(h: &mut StateHasher, change: &CanisterChange) {
    h.u64(change.timestamp_nanos);
    h.u64(change.canister_version);
    match &change.origin {
        ChangeOrigin::FromUser(FromUserRecord { user_id }) => {
            h.u8(0);
            h.bytes(user_id.as_slice());
        }
        ChangeOrigin::FromCanister(FromCanisterRecord {
            canister_id,
            canister_version,
        }) => {
            h.u8(1);
            h.bytes(canister_id.as_slice());
            h.opt_u64(*canister_version);
        }
    }
    match &change.details {
        None => h.u8(0),
        Some(CanisterChangeDetails::Creation(CreationRecord {
            controllers,
            environment_variables_hash,
        })) => {
            h.u8(1);
            h.principals(controllers);
            h.opt_bytes(environment_variables_hash.as_deref());
        }
        Some(CanisterChangeDetails::CodeUninstall) => h.u8(2),
        Some(CanisterChangeDetails::CodeDeployment(CodeDeploymentRecord { mode, module_hash })) => {
            h.u8(3);
            h.u8(match mode {
                CodeDeploymentMode::Install => 0,
                CodeDeploymentMode::Reinstall => 1,
                CodeDeploymentMode::Upgrade => 2,
            });
            h.bytes(module_hash);
        }
        Some(CanisterChangeDetails::LoadSnapshot(LoadSnapshotRecord {
            from_canister_id,
            snapshot_id,
            canister_version,
            taken_at_timestamp,
            source,
        })) => {
            h.u8(4);
            h.opt_bytes(from_canister_id.as_ref().map(Principal::as_slice));
            h.bytes(snapshot_id);
            h.u64(*canister_version);
            h.u64(*taken_at_timestamp);
            h.u8(match source {
                ic_management_canister_types::SnapshotSource::TakenFromCanister(_) => 0,
                ic_management_canister_types::SnapshotSource::MetadataUpload(_) => 1,
            });
        }
        Some(CanisterChangeDetails::ControllersChange(ControllersChangeRecord { controllers })) => {
            h.u8(5);
            h.principals(controllers);
        }
        Some(CanisterChangeDetails::RenameCanister(RenameCanisterRecord {
            canister_id,
            total_num_changes,
            rename_to,
            requested_by,
        })) => {
            h.u8(6);
            h.bytes(canister_id.as_slice());
            h.u64(*total_num_changes);
            h.bytes(rename_to.canister_id.as_slice());
            h.u64(rename_to.version);
            h.u64(rename_to.total_num_changes);
            h.bytes(requested_by.as_slice());
        }
        Some(CanisterChangeDetails::ScheduledSnapshot(ScheduledSnapshotRecord {
            snapshot_id,
            replaced_snapshot,
        })) => {
            h.u8(7);
            h.bytes(snapshot_id);
            h.opt_bytes(replaced_snapshot.as_ref().map(|id| id.as_slice()));
        }
    }
}

fn hash_timer_and_hook(h: &mut StateHasher, timer: Option<u64>, hook: HookStatus) {
    h.opt_u64(timer);
    h.u8(hook as u8);
}

/// Length-prefixed, big-endian encoding into SHA-256, so that no two states encode alike.
#[derive(Default)]
struct StateHasher(Sha256);

impl StateHasher {
    fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.update(v);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v)
            }
        }
    }
    /// A list of principals in its stored order: count, then each length-prefixed.
    fn principals(&mut self, list: &[Principal]) {
        self.u64(list.len() as u64);
        for principal in list {
            self.bytes(principal.as_slice());
        }
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.bytes(v)
            }
        }
    }
    fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

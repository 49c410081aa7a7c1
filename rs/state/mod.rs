//! Canister state: everything the replica keeps about one canister, in the IC's own terms.
//!
//! Depends only on [`crate::memory`]. Owns no policy: who may change what, and what it costs,
//! is decided in [`crate::management`]. Everything here is plain data that clones cheaply (the
//! memories are copy-on-write), so the execution layer can run a message on a copy and keep the
//! copy only if the message succeeds.
//!
//! Determinism: collections whose order can be observed (controllers, history, chunk store) are
//! ordered (`BTreeSet`, `BTreeMap`, `VecDeque` in insertion order). Time enters only as an
//! argument (the batch time).

#![forbid(unsafe_code)]

mod history;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, OnceLock};

use candid::Principal;
use ic_management_canister_types::{
    CanisterTimer, ChangeOrigin, LogVisibility, OnLowWasmMemoryHookStatus, SnapshotMetadataGlobal,
    SnapshotVisibility,
};

pub use history::{
    CanisterChange, CanisterChangeDetails, CanisterHistory, MAX_CANISTER_HISTORY_CHANGES,
    ScheduledSnapshotRecord,
};

use crate::memory::{Hash, Memory, checksum};

/// Cycles, as the IC counts them.
pub type Cycles = u128;

/// Running, stopping or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanisterStatus {
    Running,
    Stopping,
    Stopped,
}

/// An installed Wasm module: its bytes (shared, never copied by a snapshot) and their SHA-256,
/// computed once on first use.
#[derive(Clone, Debug)]
pub struct WasmModule {
    bytes: Arc<[u8]>,
    hash: OnceLock<Hash>,
}

impl PartialEq for WasmModule {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for WasmModule {}

impl WasmModule {
    pub fn new(bytes: Vec<u8>) -> Self {
        WasmModule {
            bytes: bytes.into(),
            hash: OnceLock::new(),
        }
    }

    /// A module of `len` zero bytes, to be filled by an upload.
    pub fn zeroed(len: usize) -> Self {
        Self::new(vec![0; len])
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn hash(&self) -> &Hash {
        self.hash.get_or_init(|| checksum::sha256(&self.bytes))
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes `data` at `offset` (an upload), copying the bytes first if a canister or another
    /// snapshot still shares them. Returns whether the range was inside the module (the caller
    /// has checked it; a range outside writes nothing).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let range = offset..offset.saturating_add(data.len());
        let Some(target) = Arc::make_mut(&mut self.bytes).get_mut(range) else {
            return false;
        };
        target.copy_from_slice(data);
        self.hash.take();
        true
    }

    /// Whether two modules share one allocation (a snapshot and the canister it came from).
    pub fn shares_bytes_with(&self, other: &WasmModule) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }
}

/// An exported Wasm global. Floats are kept as their bits so that equality and hashing are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// Bytes each global counts for in a canister's memory and a snapshot's `total_size`,
/// whatever its type: the replica counts `size_of::<Global>()` per global
/// (`ExecutionState::global_memory_usage`, and `snapshot_size_bytes` for an upload's metadata),
/// the in-memory size of its enum of the five Wasm value types, 32 bytes (a `u128` payload
/// aligned to 16, plus the tag). A constant here, so that the figure cannot change with the
/// compiler or the platform of a replica; `Global` has the same layout, which a test checks.
pub const GLOBAL_SIZE_BYTES: u64 = 32;

impl Global {
    /// Bytes a global counts for in `total_size` and memory usage: [`GLOBAL_SIZE_BYTES`].
    pub fn size(&self) -> u64 {
        GLOBAL_SIZE_BYTES
    }

    /// The Wasm value type: `i32`, `i64`, `f32`, `f64` or `v128`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Global::I32(_) => "i32",
            Global::I64(_) => "i64",
            Global::F32(_) => "f32",
            Global::F64(_) => "f64",
            Global::V128(_) => "v128",
        }
    }

    /// Canonical encoding, used by checksums and the state hash: a tag byte then the value,
    /// big-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Global::I32(v) => {
                out.push(0);
                out.extend_from_slice(&v.to_be_bytes())
            }
            Global::I64(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes())
            }
            Global::F32(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes())
            }
            Global::F64(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_be_bytes())
            }
            Global::V128(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_be_bytes())
            }
        }
    }
}

impl From<&Global> for SnapshotMetadataGlobal {
    fn from(global: &Global) -> Self {
        match *global {
            Global::I32(v) => SnapshotMetadataGlobal::I32(v),
            Global::I64(v) => SnapshotMetadataGlobal::I64(v),
            Global::F32(bits) => SnapshotMetadataGlobal::F32(f32::from_bits(bits)),
            Global::F64(bits) => SnapshotMetadataGlobal::F64(f64::from_bits(bits)),
            Global::V128(v) => SnapshotMetadataGlobal::V128(candid::Nat::from(v)),
        }
    }
}

impl TryFrom<&SnapshotMetadataGlobal> for Global {
    type Error = String;

    fn try_from(global: &SnapshotMetadataGlobal) -> Result<Self, String> {
        Ok(match global {
            SnapshotMetadataGlobal::I32(v) => Global::I32(*v),
            SnapshotMetadataGlobal::I64(v) => Global::I64(*v),
            SnapshotMetadataGlobal::F32(v) => Global::F32(v.to_bits()),
            SnapshotMetadataGlobal::F64(v) => Global::F64(v.to_bits()),
            SnapshotMetadataGlobal::V128(n) => Global::V128(
                u128::try_from(n.0.clone())
                    .map_err(|_| format!("v128 global {n} does not fit in 128 bits"))?,
            ),
        })
    }
}

/// The on-low-Wasm-memory hook's status, as kept in state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HookStatus {
    #[default]
    ConditionNotSatisfied,
    Ready,
    Executed,
}

/// A canister's global timer as a snapshot records it (the canister itself keeps an
/// `Option<u64>`: the deadline, if active).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalTimer {
    Inactive,
    Active(u64),
}

impl From<Option<u64>> for GlobalTimer {
    fn from(deadline: Option<u64>) -> Self {
        deadline.map_or(GlobalTimer::Inactive, GlobalTimer::Active)
    }
}

impl GlobalTimer {
    /// The deadline, if active: the canister's own form.
    pub fn deadline(self) -> Option<u64> {
        match self {
            GlobalTimer::Inactive => None,
            GlobalTimer::Active(t) => Some(t),
        }
    }
}

impl From<GlobalTimer> for CanisterTimer {
    fn from(timer: GlobalTimer) -> Self {
        match timer {
            GlobalTimer::Inactive => CanisterTimer::Inactive,
            GlobalTimer::Active(t) => CanisterTimer::Active(t),
        }
    }
}

impl From<&CanisterTimer> for GlobalTimer {
    fn from(timer: &CanisterTimer) -> Self {
        match *timer {
            CanisterTimer::Inactive => GlobalTimer::Inactive,
            CanisterTimer::Active(t) => GlobalTimer::Active(t),
        }
    }
}

impl HookStatus {
    /// Whether this status can be the canister's when the hook condition is (or is not)
    /// satisfied, as the replica checks an uploaded snapshot's status on load: "not satisfied"
    /// goes with a condition that does not hold, "ready" and "executed" with one that does.
    pub fn is_consistent_with(self, condition_satisfied: bool) -> bool {
        match self {
            HookStatus::ConditionNotSatisfied => !condition_satisfied,
            HookStatus::Ready | HookStatus::Executed => condition_satisfied,
        }
    }
}

impl From<HookStatus> for OnLowWasmMemoryHookStatus {
    fn from(status: HookStatus) -> Self {
        match status {
            HookStatus::ConditionNotSatisfied => OnLowWasmMemoryHookStatus::ConditionNotSatisfied,
            HookStatus::Ready => OnLowWasmMemoryHookStatus::Ready,
            HookStatus::Executed => OnLowWasmMemoryHookStatus::Executed,
        }
    }
}

impl From<&OnLowWasmMemoryHookStatus> for HookStatus {
    fn from(status: &OnLowWasmMemoryHookStatus) -> Self {
        match status {
            OnLowWasmMemoryHookStatus::ConditionNotSatisfied => HookStatus::ConditionNotSatisfied,
            OnLowWasmMemoryHookStatus::Ready => HookStatus::Ready,
            OnLowWasmMemoryHookStatus::Executed => HookStatus::Executed,
        }
    }
}

/// What one stored Wasm chunk counts toward memory and a snapshot's `total_size`, whatever its
/// length: the replica stores each chunk in a 1 MiB slot.
pub const WASM_CHUNK_ACCOUNTED_BYTES: u64 = 1 << 20;

/// The Wasm chunk store: chunks by SHA-256, in hash order.
pub type ChunkStore = BTreeMap<Hash, Arc<[u8]>>;

/// What exists only while code is installed: the module, both memories and the globals.
/// `uninstall_code` drops all of it, as on the IC.
#[derive(Clone, Debug)]
pub struct ExecutionState {
    pub wasm_module: WasmModule,
    pub wasm_memory: Memory,
    pub stable_memory: Memory,
    pub exported_globals: Vec<Global>,
}

impl ExecutionState {
    /// Bytes of memory pages not yet in a checkpoint (held in the heap, not mapped from a
    /// checkpoint file): the heap delta that taking or loading a snapshot of these memories
    /// costs, as the replica counts it. O(1).
    pub fn unsaved_page_bytes(&self) -> u64 {
        self.wasm_memory
            .resident_bytes()
            .saturating_add(self.stable_memory.resident_bytes())
    }

    /// Bytes of module, memories and globals, as they count toward the canister's memory.
    pub fn memory_usage(&self) -> u64 {
        [
            self.wasm_module.len(),
            self.wasm_memory.size_bytes(),
            self.stable_memory.size_bytes(),
            self.exported_globals.iter().map(Global::size).sum::<u64>(),
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }
}

/// Settings a controller can change with `update_settings`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanisterSettings {
    pub compute_allocation: u64,
    pub memory_allocation: u64,
    pub freezing_threshold: u64,
    pub reserved_cycles_limit: u128,
    pub wasm_memory_limit: u64,
    pub wasm_memory_threshold: u64,
    pub log_visibility: LogVisibility,
    pub snapshot_visibility: SnapshotVisibility,
}

impl CanisterSettings {
    /// The low-memory hook condition for a heap of `wasm_memory_bytes`, as the replica
    /// evaluates it (`is_low_wasm_memory_hook_condition_satisfied`): `wasm_memory_limit <
    /// heap + wasm_memory_threshold`. Not the spec's "less than the threshold remains below the
    /// limit" read as `threshold > 0 && limit - heap < threshold`: a heap above the limit
    /// (a limit lowered after the heap grew, or a loaded snapshot's heap) satisfies the
    /// replica's condition even without a threshold.
    pub fn low_wasm_memory_condition(&self, wasm_memory_bytes: u64) -> bool {
        self.wasm_memory_limit < wasm_memory_bytes.saturating_add(self.wasm_memory_threshold)
    }
}

impl Default for CanisterSettings {
    fn default() -> Self {
        CanisterSettings {
            compute_allocation: 0,
            memory_allocation: 0,
            freezing_threshold: 2_592_000,
            reserved_cycles_limit: 5_000_000_000_000,
            wasm_memory_limit: 3 << 30,
            wasm_memory_threshold: 0,
            log_visibility: LogVisibility::Controllers,
            snapshot_visibility: SnapshotVisibility::Controllers,
        }
    }
}

/// One canister.
#[derive(Clone, Debug)]
pub struct CanisterState {
    pub canister_id: Principal,
    pub controllers: BTreeSet<Principal>,
    pub status: CanisterStatus,
    pub execution_state: Option<ExecutionState>,
    /// When the code was last installed (batch time, ns): set by every `install_code` (each
    /// mode) and by a snapshot load, cleared with the code by every uninstall (`uninstall_code`,
    /// a take with `uninstall_code`, a canister that cannot pay for its storage). The replica
    /// keeps it on its `ExecutionState` (stamped by `Hypervisor::create_execution_state`) and
    /// certifies it at `/canister/<id>/last_install_timestamp` (`spec/management.md`); it is
    /// `Some` exactly while code is installed.
    pub last_install_timestamp: Option<u64>,
    pub certified_data: Vec<u8>,
    /// The global timer's deadline in ns, if set.
    pub global_timer: Option<u64>,
    pub on_low_wasm_memory_hook_status: HookStatus,
    pub wasm_chunk_store: ChunkStore,
    pub cycles: Cycles,
    /// Cycles set aside by storage reservation ([`crate::config::Config::storage_reservation_cycles`]),
    /// at most `settings.reserved_cycles_limit`; they pay for storage, never for anything else.
    pub reserved_cycles: Cycles,
    /// Bumped by every change of code, settings, controllers or loaded snapshot.
    pub canister_version: u64,
    pub history: CanisterHistory,
    /// The local part of the next snapshot id; only grows, so ids are never reused.
    pub next_snapshot_id: u64,
    pub settings: CanisterSettings,
    /// Bytes of heap delta charged and not yet drained by the per-round allowance.
    pub heap_delta_debit: u64,
    /// Scheduled snapshots (`spec/management.md`, "Scheduled snapshots"), if a controller set
    /// a schedule.
    pub snapshot_schedule: Option<SnapshotSchedule>,
}

/// A canister's snapshot schedule: what a controller set through `update_settings` and what
/// the round loop did with it. Times are batch times (ns since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// A snapshot every this many seconds of batch time.
    pub interval_seconds: u64,
    /// The newest this many scheduled snapshots are kept; a scheduled take beyond them
    /// replaces the oldest.
    pub keep: u64,
    /// Take only while the canister is stopped: a snapshot that comes due while it runs is
    /// taken at the first round it is stopped in.
    pub only_when_stopped: bool,
    /// The controller that set the schedule: scheduled takes run as this caller, so they stop
    /// (and record the refusal) once it no longer controls the canister.
    pub set_by: Principal,
    /// When the next snapshot is due.
    pub next_due: u64,
    /// Local ids (the counter part of the snapshot id) of the scheduled snapshots this
    /// schedule took and that may still exist, oldest first.
    pub taken: VecDeque<u64>,
    /// The last scheduled take that was refused, until one succeeds.
    pub last_failure: Option<ScheduledSnapshotFailure>,
}

/// A scheduled take that was refused: when, and the refusal (its IC `ErrorCode` and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSnapshotFailure {
    pub time: u64,
    pub error_code: u64,
    pub message: String,
}

impl CanisterState {
    pub fn new(canister_id: Principal, controllers: BTreeSet<Principal>, cycles: Cycles) -> Self {
        CanisterState {
            canister_id,
            controllers,
            status: CanisterStatus::Running,
            execution_state: None,
            last_install_timestamp: None,
            certified_data: Vec::new(),
            global_timer: None,
            on_low_wasm_memory_hook_status: HookStatus::default(),
            wasm_chunk_store: ChunkStore::new(),
            cycles,
            reserved_cycles: 0,
            canister_version: 0,
            history: CanisterHistory::default(),
            next_snapshot_id: 0,
            settings: CanisterSettings::default(),
            heap_delta_debit: 0,
            snapshot_schedule: None,
        }
    }

    /// Counts one more change of code, settings, controllers or loaded snapshot.
    pub fn bump_version(&mut self) {
        self.canister_version = self.canister_version.saturating_add(1);
    }

    pub fn is_controller(&self, principal: &Principal) -> bool {
        self.controllers.contains(principal)
    }

    /// Appends a history entry stamped with `time` and the current version.
    pub fn record_change(
        &mut self,
        time: u64,
        origin: ChangeOrigin,
        details: impl Into<CanisterChangeDetails>,
    ) {
        self.history.push(CanisterChange {
            timestamp_nanos: time,
            canister_version: self.canister_version,
            origin,
            details: Some(details.into()),
        });
    }

    pub fn module_hash(&self) -> Option<Hash> {
        self.execution_state.as_ref().map(|e| *e.wasm_module.hash())
    }

    pub fn wasm_memory_size(&self) -> u64 {
        self.execution_state
            .as_ref()
            .map_or(0, |e| e.wasm_memory.size_bytes())
    }

    pub fn stable_memory_size(&self) -> u64 {
        self.execution_state
            .as_ref()
            .map_or(0, |e| e.stable_memory.size_bytes())
    }

    /// What the chunk store counts toward memory: [`WASM_CHUNK_ACCOUNTED_BYTES`] a chunk.
    pub fn chunk_store_size(&self) -> u64 {
        (self.wasm_chunk_store.len() as u64).saturating_mul(WASM_CHUNK_ACCOUNTED_BYTES)
    }

    /// The canister's own memory, without snapshots: module, both memories, globals, certified
    /// data and chunk store. This is what `canister_status` reports as `memory_size` before
    /// snapshots are added.
    pub fn memory_usage(&self) -> u64 {
        let execution = self
            .execution_state
            .as_ref()
            .map_or(0, ExecutionState::memory_usage);
        execution
            .saturating_add(self.certified_data.len() as u64)
            .saturating_add(self.chunk_store_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replica counts `size_of::<Global>()` per global; ours has the same layout (the five
    /// Wasm value types, a `u128` the largest), so the constant is what it counts.
    #[test]
    fn a_global_counts_its_in_memory_size() {
        assert_eq!(std::mem::size_of::<Global>() as u64, GLOBAL_SIZE_BYTES);
        for global in [Global::I32(1), Global::F64(2), Global::V128(3)] {
            assert_eq!(global.size(), GLOBAL_SIZE_BYTES);
        }
    }
}

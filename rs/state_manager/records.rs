//! The checkpoint's metadata records: versioned, `postcard`-encoded copies of the state types.
//!
//! These types are the on-disk format (`spec/durability.md`); the state types are free to
//! change, and only the conversions here follow them. Memories and modules are not in the
//! records: a memory is its size plus the names of its page files, a module the name of its
//! file, resolved by the caller ([`Store`]). IC types without a stable binary form of their own
//! (history entries, visibilities) are kept as their Candid encoding: the IC's, and for a
//! history entry the IC's extended by this project's `scheduled_snapshot` (format version 2).

use std::collections::BTreeSet;

use candid::Principal;
use ic_management_canister_types::{LogVisibility, SnapshotVisibility};
use serde::{Deserialize, Serialize};

use crate::memory::{Hash, Memory};
use crate::replicated_state::ReplicatedState;
use crate::snapshots::{
    ByteRanges, CanisterSnapshot, SnapshotContent, SnapshotId, SnapshotSource, UploadState,
};
use crate::state::{
    CanisterChange, CanisterHistory, CanisterSettings, CanisterState, CanisterStatus, ChunkStore,
    ExecutionState, Global, GlobalTimer, HookStatus, ScheduledSnapshotFailure, SnapshotSchedule,
    WasmModule,
};

/// The version of [`StateRecord`] this build writes and the newest it reads.
///
/// - 4: [`Additions`] follow the version-3 record: each canister's `last_install_timestamp`.
///   Versions 1 to 3 read with none (as the replica leaves it unset for code installed before
///   it kept one).
/// - 3: `total_num_changes` counts the IC's changes only, no longer the scheduled takes among
///   the entries (which `canister_info` reports apart, `spec/management.md`); otherwise as 2.
///   A version-2 history is read with its total less the scheduled entries it kept.
/// - 2: history entries are the Candid encoding of [`CanisterChange`], the IC's `change` with
///   the `scheduled_snapshot` variant (`spec/durability.md`). Version 1 still reads: its
///   entries are the IC's `change`, whose details are a subset of ours, and the records are
///   otherwise the same. A version-1 build refuses version 2 rather than read scheduled
///   entries as details-less ones.
/// - 1: history entries are the Candid encoding of the IC's `change`.
pub const STATE_FORMAT_VERSION: u32 = 4;

/// A memory: its size and its page files, oldest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemoryRecord {
    pub size_bytes: u64,
    pub files: Vec<String>,
}

/// Where memories and modules go and come from: the state manager's files.
pub trait Store {
    fn memory_record(&mut self, memory: &Memory) -> Result<MemoryRecord, String>;
    fn module_name(&mut self, module: &WasmModule) -> Result<String, String>;
    fn memory(&mut self, record: &MemoryRecord) -> Result<Memory, String>;
    fn module(&mut self, name: &str) -> Result<WasmModule, String>;
}

#[derive(Serialize, Deserialize)]
pub struct StateRecord {
    pub version: u32,
    pub time: u64,
    pub round: u64,
    pub next_canister_index: u64,
    pub max_snapshots_per_canister: u64,
    pub deleted_canisters: Vec<Vec<u8>>,
    pub canisters: Vec<CanisterRecord>,
    pub snapshots: Vec<SnapshotRecord>,
    /// Encoded after the fields above ([`Self::encoded`], [`Self::decode`]), so that a record
    /// of an older version, which ends before them, decodes as it was written.
    #[serde(skip)]
    pub additions: Additions,
}

/// The fields added since version 3, in a record of their own after it.
#[derive(Serialize, Deserialize, Default)]
pub struct Additions {
    /// One per canister, in the order of [`StateRecord::canisters`] (version 4).
    last_install_timestamps: Vec<Option<u64>>,
}

impl StateRecord {
    /// What `state.bin` holds (before its framing): the record, then its additions.
    pub fn encoded(&self) -> (&StateRecord, &Additions) {
        (self, &self.additions)
    }

    /// Decodes `state.bin`'s body, of format `version`: the additions only from version 4.
    pub fn decode(body: &[u8], version: u32) -> postcard::Result<StateRecord> {
        let (mut record, rest) = postcard::take_from_bytes::<StateRecord>(body)?;
        if version >= 4 {
            record.additions = postcard::from_bytes(rest)?;
        }
        Ok(record)
    }
}

#[derive(Serialize, Deserialize)]
pub struct CanisterRecord {
    id: Vec<u8>,
    controllers: Vec<Vec<u8>>,
    status: u8,
    execution: Option<ExecutionRecord>,
    certified_data: Vec<u8>,
    global_timer: Option<u64>,
    hook_status: u8,
    chunks: Vec<Vec<u8>>,
    cycles: u128,
    reserved_cycles: u128,
    canister_version: u64,
    history: Vec<Vec<u8>>,
    total_num_changes: u64,
    next_snapshot_id: u64,
    settings: SettingsRecord,
    heap_delta_debit: u64,
    schedule: Option<ScheduleRecord>,
}

/// A canister's snapshot schedule (`spec/management.md`, "Scheduled snapshots").
#[derive(Serialize, Deserialize)]
struct ScheduleRecord {
    interval_seconds: u64,
    keep: u64,
    only_when_stopped: bool,
    set_by: Vec<u8>,
    next_due: u64,
    taken: Vec<u64>,
    /// The last refused take: time, error code, message.
    last_failure: Option<(u64, u64, String)>,
}

impl ScheduleRecord {
    fn from_state(s: &SnapshotSchedule) -> Self {
        ScheduleRecord {
            interval_seconds: s.interval_seconds,
            keep: s.keep,
            only_when_stopped: s.only_when_stopped,
            set_by: s.set_by.as_slice().to_vec(),
            next_due: s.next_due,
            taken: s.taken.iter().copied().collect(),
            last_failure: s
                .last_failure
                .as_ref()
                .map(|f| (f.time, f.error_code, f.message.clone())),
        }
    }

    fn into_state(self) -> Result<SnapshotSchedule, String> {
        Ok(SnapshotSchedule {
            interval_seconds: self.interval_seconds,
            keep: self.keep,
            only_when_stopped: self.only_when_stopped,
            set_by: principal(&self.set_by)?,
            next_due: self.next_due,
            taken: self.taken.into_iter().collect(),
            last_failure: self.last_failure.map(|(time, error_code, message)| {
                ScheduledSnapshotFailure {
                    time,
                    error_code,
                    message,
                }
            }),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ExecutionRecord {
    wasm_module: String,
    wasm_memory: MemoryRecord,
    stable_memory: MemoryRecord,
    globals: Vec<GlobalRecord>,
}

#[derive(Serialize, Deserialize)]
enum GlobalRecord {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

#[derive(Serialize, Deserialize)]
struct SettingsRecord {
    compute_allocation: u64,
    memory_allocation: u64,
    freezing_threshold: u64,
    reserved_cycles_limit: u128,
    wasm_memory_limit: u64,
    wasm_memory_threshold: u64,
    log_visibility: Vec<u8>,
    snapshot_visibility: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub struct SnapshotRecord {
    canister: Vec<u8>,
    local_id: u64,
    taken_at_timestamp: u64,
    canister_version: u64,
    uploaded: bool,
    label: Option<String>,
    execution: ExecutionRecord,
    certified_data: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    /// `None`: not given; `Some(None)`: inactive; `Some(Some(t))`: active at `t`.
    global_timer: Option<Option<u64>>,
    hook_status: Option<u8>,
    /// Written ranges of module, heap and stable memory, for an uploaded snapshot.
    upload: Option<[Vec<(u64, u64)>; 3]>,
}

fn principal(bytes: &[u8]) -> Result<Principal, String> {
    Principal::try_from_slice(bytes).map_err(|e| format!("invalid principal: {e}"))
}

fn candid_bytes<T: candid::CandidType>(value: &T) -> Result<Vec<u8>, String> {
    candid::encode_one(value).map_err(|e| e.to_string())
}

fn from_candid<T: candid::CandidType + for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, String> {
    candid::decode_one(bytes).map_err(|e| e.to_string())
}

fn hook_to_u8(status: HookStatus) -> u8 {
    status as u8
}

fn hook_from_u8(v: u8) -> Result<HookStatus, String> {
    Ok(match v {
        0 => HookStatus::ConditionNotSatisfied,
        1 => HookStatus::Ready,
        2 => HookStatus::Executed,
        _ => return Err(format!("unknown hook status {v}")),
    })
}

fn chunks_to_record(chunks: &ChunkStore) -> Vec<Vec<u8>> {
    chunks.values().map(|c| c.to_vec()).collect()
}

fn chunks_from_record(chunks: Vec<Vec<u8>>) -> ChunkStore {
    chunks
        .into_iter()
        .map(|c| (crate::memory::checksum::sha256(&c), c.into()))
        .collect::<std::collections::BTreeMap<Hash, _>>()
}

impl ExecutionRecord {
    fn from_state(execution: &ExecutionState, store: &mut dyn Store) -> Result<Self, String> {
        Ok(ExecutionRecord {
            wasm_module: store.module_name(&execution.wasm_module)?,
            wasm_memory: store.memory_record(&execution.wasm_memory)?,
            stable_memory: store.memory_record(&execution.stable_memory)?,
            globals: execution
                .exported_globals
                .iter()
                .map(|g| match *g {
                    Global::I32(v) => GlobalRecord::I32(v),
                    Global::I64(v) => GlobalRecord::I64(v),
                    Global::F32(v) => GlobalRecord::F32(v),
                    Global::F64(v) => GlobalRecord::F64(v),
                    Global::V128(v) => GlobalRecord::V128(v),
                })
                .collect(),
        })
    }

    fn into_state(self, store: &mut dyn Store) -> Result<ExecutionState, String> {
        Ok(ExecutionState {
            wasm_module: store.module(&self.wasm_module)?,
            wasm_memory: store.memory(&self.wasm_memory)?,
            stable_memory: store.memory(&self.stable_memory)?,
            exported_globals: self
                .globals
                .into_iter()
                .map(|g| match g {
                    GlobalRecord::I32(v) => Global::I32(v),
                    GlobalRecord::I64(v) => Global::I64(v),
                    GlobalRecord::F32(v) => Global::F32(v),
                    GlobalRecord::F64(v) => Global::F64(v),
                    GlobalRecord::V128(v) => Global::V128(v),
                })
                .collect(),
        })
    }
}

impl CanisterRecord {
    fn from_state(c: &CanisterState, store: &mut dyn Store) -> Result<Self, String> {
        let s = &c.settings;
        Ok(CanisterRecord {
            id: c.canister_id.as_slice().to_vec(),
            controllers: c
                .controllers
                .iter()
                .map(|p| p.as_slice().to_vec())
                .collect(),
            status: match c.status {
                CanisterStatus::Running => 0,
                CanisterStatus::Stopping => 1,
                CanisterStatus::Stopped => 2,
            },
            execution: c
                .execution_state
                .as_ref()
                .map(|e| ExecutionRecord::from_state(e, store))
                .transpose()?,
            certified_data: c.certified_data.clone(),
            global_timer: c.global_timer,
            hook_status: hook_to_u8(c.on_low_wasm_memory_hook_status),
            chunks: chunks_to_record(&c.wasm_chunk_store),
            cycles: c.cycles,
            reserved_cycles: c.reserved_cycles,
            canister_version: c.canister_version,
            history: c
                .history
                .entries()
                .map(candid_bytes)
                .collect::<Result<_, _>>()?,
            total_num_changes: c.history.total_num_changes(),
            next_snapshot_id: c.next_snapshot_id,
            settings: SettingsRecord {
                compute_allocation: s.compute_allocation,
                memory_allocation: s.memory_allocation,
                freezing_threshold: s.freezing_threshold,
                reserved_cycles_limit: s.reserved_cycles_limit,
                wasm_memory_limit: s.wasm_memory_limit,
                wasm_memory_threshold: s.wasm_memory_threshold,
                log_visibility: candid_bytes(&s.log_visibility)?,
                snapshot_visibility: candid_bytes(&s.snapshot_visibility)?,
            },
            heap_delta_debit: c.heap_delta_debit,
            schedule: c.snapshot_schedule.as_ref().map(ScheduleRecord::from_state),
        })
    }

    /// `version`: the record's format version ([`STATE_FORMAT_VERSION`] or older).
    fn into_state(self, store: &mut dyn Store, version: u32) -> Result<CanisterState, String> {
        let controllers = self
            .controllers
            .iter()
            .map(|p| principal(p))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut c = CanisterState::new(principal(&self.id)?, controllers, self.cycles);
        c.status = match self.status {
            0 => CanisterStatus::Running,
            1 => CanisterStatus::Stopping,
            2 => CanisterStatus::Stopped,
            v => return Err(format!("unknown canister status {v}")),
        };
        c.execution_state = self.execution.map(|e| e.into_state(store)).transpose()?;
        c.reserved_cycles = self.reserved_cycles;
        c.certified_data = self.certified_data;
        c.global_timer = self.global_timer;
        c.on_low_wasm_memory_hook_status = hook_from_u8(self.hook_status)?;
        c.wasm_chunk_store = chunks_from_record(self.chunks);
        c.canister_version = self.canister_version;
        let changes = self
            .history
            .iter()
            .map(|b| from_candid::<CanisterChange>(b))
            .collect::<Result<Vec<_>, _>>()?;
        let mut total_num_changes = self.total_num_changes;
        if version < 3 {
            let scheduled = changes.iter().filter(|c| c.is_scheduled_snapshot()).count();
            total_num_changes = total_num_changes.saturating_sub(scheduled as u64);
        }
        c.history = CanisterHistory::from_parts(changes, total_num_changes);
        c.next_snapshot_id = self.next_snapshot_id;
        let s = self.settings;
        c.settings = CanisterSettings {
            compute_allocation: s.compute_allocation,
            memory_allocation: s.memory_allocation,
            freezing_threshold: s.freezing_threshold,
            reserved_cycles_limit: s.reserved_cycles_limit,
            wasm_memory_limit: s.wasm_memory_limit,
            wasm_memory_threshold: s.wasm_memory_threshold,
            log_visibility: from_candid::<LogVisibility>(&s.log_visibility)?,
            snapshot_visibility: from_candid::<SnapshotVisibility>(&s.snapshot_visibility)?,
        };
        c.heap_delta_debit = self.heap_delta_debit;
        c.snapshot_schedule = self.schedule.map(ScheduleRecord::into_state).transpose()?;
        Ok(c)
    }
}

fn ranges_to_record(r: &ByteRanges) -> Vec<(u64, u64)> {
    r.iter().collect()
}

fn ranges_from_record(r: &[(u64, u64)]) -> ByteRanges {
    let mut ranges = ByteRanges::default();
    for &(start, end) in r {
        ranges.insert(start, end);
    }
    ranges
}

impl SnapshotRecord {
    fn from_state(s: &CanisterSnapshot, store: &mut dyn Store) -> Result<Self, String> {
        let content = s.content();
        let execution = ExecutionState {
            wasm_module: content.wasm_module.clone(),
            wasm_memory: content.wasm_memory.clone(),
            stable_memory: content.stable_memory.clone(),
            exported_globals: content.exported_globals.clone(),
        };
        Ok(SnapshotRecord {
            canister: s.canister_id().as_slice().to_vec(),
            local_id: s.id().local_id(),
            taken_at_timestamp: s.taken_at_timestamp,
            canister_version: s.canister_version,
            uploaded: s.source == SnapshotSource::MetadataUpload,
            label: s.label.clone(),
            execution: ExecutionRecord::from_state(&execution, store)?,
            certified_data: content.certified_data.clone(),
            chunks: chunks_to_record(&content.wasm_chunk_store),
            global_timer: content.global_timer.map(GlobalTimer::deadline),
            hook_status: content.on_low_wasm_memory_hook_status.map(hook_to_u8),
            upload: s.upload().map(|u| {
                [
                    ranges_to_record(&u.wasm_module),
                    ranges_to_record(&u.wasm_memory),
                    ranges_to_record(&u.stable_memory),
                ]
            }),
        })
    }

    fn into_state(self, store: &mut dyn Store) -> Result<CanisterSnapshot, String> {
        let id = SnapshotId::new(principal(&self.canister)?, self.local_id);
        let execution = self.execution.into_state(store)?;
        let content = SnapshotContent {
            wasm_module: execution.wasm_module,
            wasm_memory: execution.wasm_memory,
            stable_memory: execution.stable_memory,
            exported_globals: execution.exported_globals,
            certified_data: self.certified_data,
            wasm_chunk_store: chunks_from_record(self.chunks),
            global_timer: self.global_timer.map(GlobalTimer::from),
            on_low_wasm_memory_hook_status: self.hook_status.map(hook_from_u8).transpose()?,
        };
        let source = if self.uploaded {
            SnapshotSource::MetadataUpload
        } else {
            SnapshotSource::TakenFromCanister
        };
        Ok(CanisterSnapshot::from_parts(
            id,
            source,
            self.taken_at_timestamp,
            self.canister_version,
            self.label,
            content,
            self.upload.map(|[module, heap, stable]| UploadState {
                wasm_module: ranges_from_record(&module),
                wasm_memory: ranges_from_record(&heap),
                stable_memory: ranges_from_record(&stable),
            }),
        ))
    }
}

impl StateRecord {
    pub fn from_state(state: &ReplicatedState, store: &mut dyn Store) -> Result<Self, String> {
        Ok(StateRecord {
            version: STATE_FORMAT_VERSION,
            time: state.time,
            round: state.round,
            next_canister_index: state.next_canister_index,
            max_snapshots_per_canister: state.snapshots.max_snapshots_per_canister() as u64,
            deleted_canisters: state
                .deleted_canisters
                .iter()
                .map(|p| p.as_slice().to_vec())
                .collect(),
            canisters: state
                .canisters
                .values()
                .map(|c| CanisterRecord::from_state(c, store))
                .collect::<Result<_, _>>()?,
            snapshots: state
                .snapshots
                .iter()
                .map(|s| SnapshotRecord::from_state(s, store))
                .collect::<Result<_, _>>()?,
            additions: Additions {
                last_install_timestamps: state
                    .canisters
                    .values()
                    .map(|c| c.last_install_timestamp)
                    .collect(),
            },
        })
    }

    /// The state, with the snapshot quota of the running configuration.
    pub fn into_state(
        self,
        max_snapshots_per_canister: usize,
        store: &mut dyn Store,
    ) -> Result<ReplicatedState, String> {
        let mut state = ReplicatedState::new(max_snapshots_per_canister);
        state.time = self.time;
        state.round = self.round;
        state.next_canister_index = self.next_canister_index;
        state.deleted_canisters = self
            .deleted_canisters
            .iter()
            .map(|p| principal(p))
            .collect::<Result<_, _>>()?;
        let mut install_times = self.additions.last_install_timestamps.into_iter();
        for record in self.canisters {
            let mut canister = record.into_state(store, self.version)?;
            if self.version >= 4 {
                canister.last_install_timestamp = install_times.next().ok_or_else(|| {
                    "fewer last_install_timestamps than canisters in the record".to_string()
                })?;
            }
            state.canisters.insert(canister.canister_id, canister);
        }
        if install_times.next().is_some() {
            return Err("more last_install_timestamps than canisters in the record".into());
        }
        for record in self.snapshots {
            state.snapshots.restore(record.into_state(store)?);
        }
        // Derived, not stored: rebuilt from what was read.
        state.memory_totals = state.recount_memory();
        state.snapshot_schedule_due = state
            .canisters
            .values()
            .filter_map(|c| Some((c.snapshot_schedule.as_ref()?.next_due, c.canister_id)))
            .collect();
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use candid::Principal;
    use ic_management_canister_types::{
        Change, ChangeDetails, ChangeOrigin, CodeDeploymentMode, CodeDeploymentRecord,
        FromUserRecord,
    };

    use super::*;
    use crate::state::{CanisterChangeDetails, ScheduledSnapshotRecord};

    fn origin() -> ChangeOrigin {
        ChangeOrigin::FromUser(FromUserRecord {
            user_id: Principal::from_slice(&[7]),
        })
    }

    #[test]
    fn a_version_1_history_entry_reads_as_the_same_change() {
        // Version 1 stored the IC's `Change`: our type must read those bytes unchanged.
        let v1 = Change {
            timestamp_nanos: 5,
            canister_version: 3,
            origin: origin(),
            details: Some(ChangeDetails::CodeDeployment(CodeDeploymentRecord {
                mode: CodeDeploymentMode::Upgrade,
                module_hash: vec![9; 32],
            })),
        };
        let read = from_candid::<CanisterChange>(&candid_bytes(&v1).unwrap()).unwrap();
        assert_eq!(read, CanisterChange::from(v1.clone()));
        assert_eq!(read.to_ic(), v1);
    }

    #[test]
    fn a_scheduled_snapshot_entry_round_trips() {
        let change = CanisterChange {
            timestamp_nanos: 5,
            canister_version: 3,
            origin: origin(),
            details: Some(CanisterChangeDetails::ScheduledSnapshot(
                ScheduledSnapshotRecord {
                    snapshot_id: vec![1, 2, 3],
                    replaced_snapshot: Some(vec![4, 5].into()),
                },
            )),
        };
        let bytes = candid_bytes(&change).unwrap();
        assert_eq!(from_candid::<CanisterChange>(&bytes).unwrap(), change);
        // A version-1 reader would have taken it for a change without details.
        assert_eq!(from_candid::<Change>(&bytes).unwrap(), change.to_ic());
        assert_eq!(change.to_ic().details, None);
    }
}

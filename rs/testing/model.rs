//! The reference model: a plain, obviously-correct subnet of test canisters.
//!
//! Each canister is full `Vec<u8>` copies of its heap and stable memory, its two globals and
//! certified data (none of it once uninstalled), its controllers, cycles, freezing threshold,
//! version and heap-delta debit; each snapshot is a full copy of what it holds. [`Model::step`]
//! applies one [`Operation`] and returns the expected [`Outcome`]: the reply, or the IC
//! `ErrorCode` the replica must refuse it with, following the validation order of
//! `spec/management.md`. Batch time moves only by [`Operation::AdvanceTime`]; the model then
//! charges each canister the storage it held for the charge periods crossed and uninstalls
//! those that cannot pay, as "Storage charges" there says.
//!
//! For the accounting of really-held pages the model also keeps the *identity* of every page:
//! each page a write or fill touches gets a fresh version number, a snapshot copies the version
//! map, a load copies it back. The bytes snapshots hold beyond their live canister
//! ([`Model::unique_bytes`]) are then 4 KiB per version some snapshot holds and the live
//! canister does not, plus every module no longer shared with it.
//!
//! No copy-on-write, no hashing tree, no caching: nothing here shares code with what it checks
//! except the checksum's definition (`snapshot_checksum`, computed from flat bytes).

use std::collections::{BTreeMap, BTreeSet};

use candid::Principal;
use ic_error_types::ErrorCode;

use super::workload::{
    CanisterIndex, MemoryKind, Operation, StateView, WORKLOAD_CANISTER_CYCLES, caller, canister,
    controller_set,
};
use crate::config::Config;
use crate::execution::TEST_CANISTER_WASM;
use crate::execution::test_canister::MAX_CERTIFIED_DATA_BYTES;
use crate::memory::checksum::{memory_root_from_bytes, sha256};
use crate::memory::{Hash, PAGE_SIZE, WASM_PAGE_SIZE};
use crate::replicated_state::GENESIS_TIME_NANOS;
use crate::snapshots::{SnapshotDigest, snapshot_checksum};
use crate::state::Global;

const PAGE: u64 = PAGE_SIZE as u64;
/// The IC's default freezing threshold (30 days), which a new canister gets.
const DEFAULT_FREEZING_THRESHOLD: u64 = 2_592_000;

/// What an operation is expected to do (or did): accepted, or refused with an `ErrorCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused(ErrorCode),
    /// An empty round.
    Tick,
}

/// One memory: its bytes (length = size) and the version of every page ever written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryModel {
    pub bytes: Vec<u8>,
    pub versions: BTreeMap<u64, u64>,
}

impl MemoryModel {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Grows to fit `end` in whole Wasm pages, as the test canister does.
    fn grow_to_fit(&mut self, end: u64) {
        if end > self.size() {
            let size = end.div_ceil(WASM_PAGE_SIZE) * WASM_PAGE_SIZE;
            self.bytes.resize(size as usize, 0);
        }
    }

    /// Writes `data` at `offset` (already grown to fit); every page touched gets a version.
    fn write(&mut self, offset: u64, data: &[u8], next_version: &mut u64) {
        if data.is_empty() {
            return;
        }
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        for page in offset / PAGE..=(offset + data.len() as u64 - 1) / PAGE {
            self.versions.insert(page, *next_version);
            *next_version += 1;
        }
    }
}

/// What a live canister holds, or a snapshot of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub heap: MemoryModel,
    pub stable: MemoryModel,
    pub globals: [i64; 2],
    pub certified_data: Vec<u8>,
    /// Identity of the installed module: a fresh number at every install and upgrade.
    pub module_version: u64,
}

impl Image {
    pub fn memory(&self, kind: MemoryKind) -> &MemoryModel {
        match kind {
            MemoryKind::Heap => &self.heap,
            MemoryKind::Stable => &self.stable,
        }
    }

    fn memory_mut(&mut self, kind: MemoryKind) -> &mut MemoryModel {
        match kind {
            MemoryKind::Heap => &mut self.heap,
            MemoryKind::Stable => &mut self.stable,
        }
    }

    pub fn exported_globals(&self) -> Vec<Global> {
        self.globals.iter().map(|&g| Global::I64(g)).collect()
    }

    /// The canister's memory as the IC counts it (`total_size` for a snapshot): module, both
    /// memories, `GLOBAL_SIZE_BYTES` per global, certified data.
    pub fn memory_usage(&self) -> u64 {
        TEST_CANISTER_WASM.len() as u64
            + self.heap.size()
            + self.stable.size()
            + crate::state::GLOBAL_SIZE_BYTES * self.globals.len() as u64
            + self.certified_data.len() as u64
    }

    /// The snapshot checksum of `spec/checksum.md`, from the flat bytes.
    pub fn checksum(&self) -> Hash {
        let globals = self.exported_globals();
        snapshot_checksum(&SnapshotDigest {
            wasm_module_hash: sha256(TEST_CANISTER_WASM),
            wasm_memory_root: memory_root_from_bytes(&self.heap.bytes),
            stable_memory_root: memory_root_from_bytes(&self.stable.bytes),
            exported_globals: &globals,
            certified_data: &self.certified_data,
            chunk_hashes: Vec::new(),
        })
    }

    /// Bytes of the pages ever written in both memories: what a take or load of this image adds
    /// to the heap-delta debit of a replica that has not checkpointed them
    /// (`spec/management.md`, Accounting).
    pub fn unsaved_page_bytes(&self) -> u64 {
        (self.heap.versions.len() + self.stable.versions.len()) as u64 * PAGE
    }

    fn page_versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.heap
            .versions
            .values()
            .chain(self.stable.versions.values())
            .copied()
    }
}

/// One canister of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanisterModel {
    /// What the canister holds while it has code; `None` once it is uninstalled.
    pub live: Option<Image>,
    pub controllers: BTreeSet<Principal>,
    pub cycles: u128,
    pub freezing_threshold: u64,
    pub version: u64,
    pub heap_delta_debit: u64,
    /// By local snapshot id.
    pub snapshots: BTreeMap<u64, Image>,
    pub next_snapshot_id: u64,
}

impl CanisterModel {
    fn snapshots_size(&self) -> u64 {
        self.snapshots.values().map(Image::memory_usage).sum()
    }

    /// The canister's own memory (nothing without code).
    fn own_usage(&self) -> u64 {
        self.live.as_ref().map_or(0, Image::memory_usage)
    }

    /// The canister's memory and its snapshots'.
    fn usage(&self) -> u64 {
        self.own_usage() + self.snapshots_size()
    }

    /// Pays `charge` for storage, or, unable to, is uninstalled: no code, no snapshots, no
    /// cycles, version + 1 (the model keeps no history or allocations).
    fn pay_for_storage(&mut self, charge: u128) {
        if charge <= self.cycles {
            self.cycles -= charge;
        } else {
            self.live = None;
            self.snapshots.clear();
            self.cycles = 0;
            self.version += 1;
        }
    }
}

/// The reference model of a subnet running a workload (`workload::setup_messages`).
#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    pub canisters: BTreeMap<CanisterIndex, CanisterModel>,
    next_version: u64,
    /// Batch time, ns since the Unix epoch (the workload machine's starts at genesis).
    pub time: u64,
}

impl StateView for Model {
    fn snapshot_ids(&self, id: Principal) -> Vec<u64> {
        self.by_id(id)
            .map_or_else(Vec::new, |c| c.snapshots.keys().copied().collect())
    }

    fn next_snapshot_id(&self, id: Principal) -> u64 {
        self.by_id(id).map_or(0, |c| c.next_snapshot_id)
    }

    fn memory_size(&self, id: Principal, memory: MemoryKind) -> u64 {
        self.by_id(id)
            .and_then(|c| c.live.as_ref())
            .map_or(0, |live| live.memory(memory).size())
    }
}

type Step = Result<(), ErrorCode>;

impl Model {
    /// The state right after `setup_messages(canisters)`: each canister with the test canister
    /// installed, empty memories, controlled by caller 0.
    pub fn new(config: Config, canisters: u8) -> Self {
        let mut model = Model {
            config,
            canisters: BTreeMap::new(),
            next_version: 0,
            time: GENESIS_TIME_NANOS,
        };
        for n in 0..canisters {
            let module_version = model.fresh_version();
            model.canisters.insert(
                n,
                CanisterModel {
                    live: Some(Image {
                        heap: MemoryModel::default(),
                        stable: MemoryModel::default(),
                        globals: [0, 0],
                        certified_data: Vec::new(),
                        module_version,
                    }),
                    controllers: BTreeSet::from([caller(0)]),
                    cycles: WORKLOAD_CANISTER_CYCLES,
                    freezing_threshold: DEFAULT_FREEZING_THRESHOLD,
                    // Install: version 1.
                    version: 1,
                    heap_delta_debit: 0,
                    snapshots: BTreeMap::new(),
                    next_snapshot_id: 0,
                },
            );
        }
        model
    }

    fn fresh_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn by_id(&self, id: Principal) -> Option<&CanisterModel> {
        self.canisters
            .iter()
            .find(|(n, _)| canister(**n) == id)
            .map(|(_, c)| c)
    }

    /// Memory on the subnet: every canister and every snapshot.
    fn subnet_usage(&self) -> u64 {
        self.canisters.values().map(CanisterModel::usage).sum()
    }

    /// `check_memory_growth` of `spec/management.md`: the subnet's capacity when the canister
    /// grows, then its freezing threshold at `after`. Returns the reserve.
    fn check_growth(&self, c: &CanisterModel, before: u64, after: u64) -> Result<u128, ErrorCode> {
        let grows_by = after.saturating_sub(before);
        if grows_by > 0
            && self.subnet_usage().saturating_add(grows_by)
                > self.config.subnet_memory_capacity_bytes
        {
            return Err(ErrorCode::SubnetOversubscribed);
        }
        let reserve = self.config.storage_cost(after, c.freezing_threshold);
        if c.cycles < reserve {
            return Err(ErrorCode::InsufficientCyclesInMemoryGrow);
        }
        Ok(reserve)
    }

    /// Growth check, then the cost of `instructions` above the reserve.
    fn check_cycles(
        &self,
        c: &CanisterModel,
        before: u64,
        after: u64,
        instructions: u64,
    ) -> Result<u128, ErrorCode> {
        let reserve = self.check_growth(c, before, after)?;
        let cost = self.config.instructions_cost(instructions);
        if c.cycles - reserve < cost {
            return Err(ErrorCode::CanisterOutOfCycles);
        }
        Ok(cost)
    }

    fn controlled(&self, n: CanisterIndex, sender: Principal) -> Result<&CanisterModel, ErrorCode> {
        let c = self.canisters.get(&n).ok_or(ErrorCode::CanisterNotFound)?;
        if c.controllers.contains(&sender) {
            Ok(c)
        } else {
            Err(ErrorCode::CanisterInvalidController)
        }
    }

    fn rate_limited(&self, c: &CanisterModel) -> Step {
        if c.heap_delta_debit >= self.config.heap_delta_rate_limit_bytes {
            Err(ErrorCode::CanisterHeapDeltaRateLimited)
        } else {
            Ok(())
        }
    }

    /// Applies `op` as one round of the replica and returns what it must answer.
    pub fn step(&mut self, op: &Operation) -> Outcome {
        let outcome = match self.apply(op) {
            _ if matches!(op, Operation::Tick | Operation::AdvanceTime { .. }) => Outcome::Tick,
            Ok(()) => Outcome::Accepted,
            Err(code) => Outcome::Refused(code),
        };
        // End of the round: every debit drains by the allowance.
        let allowance = self.config.heap_delta_rate_limit_bytes;
        for c in self.canisters.values_mut() {
            c.heap_delta_debit = c.heap_delta_debit.saturating_sub(allowance);
        }
        outcome
    }

    fn apply(&mut self, op: &Operation) -> Step {
        match op {
            Operation::Write {
                canister,
                memory,
                offset,
                data,
                ..
            } => self.write(*canister, *memory, *offset, &data.bytes()),
            Operation::Fill {
                canister,
                memory,
                offset,
                len,
                byte,
                ..
            } => {
                let data = vec![*byte; usize::try_from(*len).unwrap_or(usize::MAX)];
                self.write(*canister, *memory, *offset, &data)
            }
            Operation::Grow {
                canister,
                memory,
                wasm_pages,
                ..
            } => {
                let size = self.memory_size(super::workload::canister(*canister), *memory);
                let offset = (size + u64::from(*wasm_pages) * WASM_PAGE_SIZE).saturating_sub(1);
                self.write(*canister, *memory, offset, &[0])
            }
            Operation::SetGlobal {
                canister,
                index,
                value,
                ..
            } => self.message(*canister, |image, _| {
                match image.globals.get_mut(*index as usize) {
                    Some(global) => {
                        *global = *value;
                        Ok(0)
                    }
                    None => Err(ErrorCode::CanisterCalledTrap),
                }
            }),
            Operation::SetCertifiedData { canister, data, .. } => {
                let data = data.bytes();
                self.message(*canister, |image, _| {
                    if data.len() > MAX_CERTIFIED_DATA_BYTES {
                        return Err(ErrorCode::CanisterCalledTrap);
                    }
                    image.certified_data = data;
                    Ok(0)
                })
            }
            Operation::Trap { canister, .. } => {
                self.message(*canister, |_, _| Err(ErrorCode::CanisterCalledTrap))
            }
            Operation::Take {
                canister: n,
                caller: s,
                replace,
            } => {
                let id = canister(*n);
                let replace = replace.map(|pick| pick.resolve(self, id).local_id());
                let c = self.controlled(*n, caller(*s))?;
                let freed = match replace {
                    Some(local) => c
                        .snapshots
                        .get(&local)
                        .ok_or(ErrorCode::CanisterSnapshotNotFound)?
                        .memory_usage(),
                    None if c.snapshots.len() >= self.config.max_snapshots_per_canister => {
                        return Err(ErrorCode::CanisterRejectedMessage);
                    }
                    None => 0,
                };
                self.rate_limited(c)?;
                let size = c.own_usage();
                let before = c.usage();
                let cost = self.check_cycles(
                    c,
                    before,
                    before - freed + size,
                    self.config.snapshot_base_instructions + size,
                )?;
                // Resources first, then code: the replica's order.
                let live = c.live.clone().ok_or(ErrorCode::CanisterRejectedMessage)?;
                let c = self.canisters.get_mut(n).expect("checked above");
                if let Some(local) = replace {
                    c.snapshots.remove(&local);
                }
                let unsaved = live.unsaved_page_bytes();
                c.snapshots.insert(c.next_snapshot_id, live);
                c.next_snapshot_id += 1;
                c.cycles -= cost;
                c.heap_delta_debit = c.heap_delta_debit.saturating_add(unsaved);
                Ok(())
            }
            Operation::Load {
                canister: n,
                caller: s,
                from,
                snapshot,
            } => {
                let sender = caller(*s);
                let local = snapshot.resolve(self, canister(*from)).local_id();
                let target = self.controlled(*n, sender)?;
                self.rate_limited(target)?;
                let source = self
                    .canisters
                    .get(from)
                    .ok_or(ErrorCode::CanisterSnapshotNotFound)?;
                let image = source
                    .snapshots
                    .get(&local)
                    .ok_or(ErrorCode::CanisterSnapshotNotFound)?
                    .clone();
                if from != n && !source.controllers.contains(&sender) {
                    return Err(ErrorCode::CanisterRejectedMessage);
                }
                let usage = target.usage();
                self.check_cycles(target, usage, usage, self.config.snapshot_base_instructions)?;
                let size = image.memory_usage();
                let cost = self.check_cycles(
                    target,
                    usage,
                    usage - target.own_usage() + size,
                    self.config.snapshot_base_instructions + size,
                )?;
                let c = self.canisters.get_mut(n).expect("checked above");
                let unsaved = image.unsaved_page_bytes();
                c.live = Some(image);
                c.cycles -= cost;
                c.heap_delta_debit = c.heap_delta_debit.saturating_add(unsaved);
                c.version += 1;
                Ok(())
            }
            Operation::Delete {
                canister: n,
                caller: s,
                from,
                snapshot,
            } => {
                let local = snapshot.resolve(self, canister(*from)).local_id();
                self.controlled(*n, caller(*s))?;
                let source = self
                    .canisters
                    .get(from)
                    .ok_or(ErrorCode::CanisterSnapshotNotFound)?;
                if !source.snapshots.contains_key(&local) {
                    return Err(ErrorCode::CanisterSnapshotNotFound);
                }
                if from != n {
                    return Err(ErrorCode::CanisterRejectedMessage);
                }
                // The memory and cycles checks at zero cost, on the memory without it.
                let c = self.controlled(*n, caller(*s))?;
                let before = c.usage();
                let freed = c.snapshots.get(&local).map_or(0, Image::memory_usage);
                self.check_cycles(c, before, before - freed, 0)?;
                let c = self.canisters.get_mut(n).expect("checked above");
                c.snapshots.remove(&local);
                Ok(())
            }
            Operation::SetControllers {
                canister: n,
                caller: s,
                controllers,
            } => {
                self.controlled(*n, caller(*s))?;
                let c = self.canisters.get_mut(n).expect("checked above");
                c.controllers = controller_set(*controllers).into_iter().collect();
                c.version += 1;
                Ok(())
            }
            Operation::SetFreezingThreshold {
                canister: n,
                caller: s,
                seconds,
            } => {
                self.controlled(*n, caller(*s))?;
                let c = self.canisters.get_mut(n).expect("checked above");
                c.freezing_threshold = *seconds;
                c.version += 1;
                Ok(())
            }
            Operation::Upgrade {
                canister: n,
                caller: s,
            } => {
                if self.controlled(*n, caller(*s))?.live.is_none() {
                    return Err(ErrorCode::CanisterWasmModuleNotFound);
                }
                let module_version = self.fresh_version();
                let c = self.canisters.get_mut(n).expect("checked above");
                let live = c.live.as_mut().expect("checked above");
                live.heap = MemoryModel::default();
                live.globals = [0, 0];
                live.module_version = module_version;
                c.version += 1;
                Ok(())
            }
            Operation::Tick => Ok(()),
            Operation::AdvanceTime { seconds } => {
                let previous = self.time;
                self.time = self
                    .time
                    .saturating_add(seconds.saturating_mul(1_000_000_000));
                let seconds = self.config.storage_charge_seconds(previous, self.time);
                for c in self.canisters.values_mut() {
                    let charge = self.config.storage_charge(c.usage(), seconds);
                    c.pay_for_storage(charge);
                }
                Ok(())
            }
        }
    }

    /// A canister message: runs `body` on a copy of the live image (it returns the heap delta
    /// in bytes), then checks memory growth, and keeps the copy only if both succeed.
    fn message(
        &mut self,
        n: CanisterIndex,
        body: impl FnOnce(&mut Image, &mut u64) -> Result<u64, ErrorCode>,
    ) -> Step {
        let c = self.canisters.get(&n).ok_or(ErrorCode::CanisterNotFound)?;
        let mut scratch = c
            .live
            .clone()
            .ok_or(ErrorCode::CanisterWasmModuleNotFound)?;
        let mut next_version = self.next_version;
        let heap_delta = body(&mut scratch, &mut next_version)?;
        let grows_by = scratch.memory_usage().saturating_sub(c.own_usage());
        if grows_by > 0 {
            let before = c.usage();
            self.check_growth(c, before, before + grows_by)?;
        }
        self.next_version = next_version;
        let c = self.canisters.get_mut(&n).expect("checked above");
        c.live = Some(scratch);
        c.heap_delta_debit = c.heap_delta_debit.saturating_add(heap_delta);
        Ok(())
    }

    fn write(&mut self, n: CanisterIndex, kind: MemoryKind, offset: u64, data: &[u8]) -> Step {
        let limit = match kind {
            MemoryKind::Heap => 4 << 30,
            MemoryKind::Stable => self.config.stable_memory_limit_bytes,
        };
        self.message(n, |image, next_version| {
            let len = data.len() as u64;
            let end = offset.checked_add(len).ok_or(ErrorCode::CanisterTrapped)?;
            if end.div_ceil(WASM_PAGE_SIZE) * WASM_PAGE_SIZE > limit {
                return Err(ErrorCode::CanisterOutOfMemory);
            }
            let memory = image.memory_mut(kind);
            memory.grow_to_fit(end);
            memory.write(offset, data, next_version);
            let touched = if len == 0 {
                0
            } else {
                (end - 1) / PAGE - offset / PAGE + 1
            };
            Ok(touched * PAGE)
        })
    }

    /// Bytes the snapshots of every canister hold beyond their live canister: pages (4 KiB per
    /// version) and modules, each counted once per canister.
    pub fn unique_bytes(&self) -> u64 {
        self.canisters
            .values()
            .map(|c| {
                let live: BTreeSet<u64> = c.live.iter().flat_map(Image::page_versions).collect();
                let live_module = c.live.as_ref().map(|l| l.module_version);
                let pages: BTreeSet<u64> = c
                    .snapshots
                    .values()
                    .flat_map(Image::page_versions)
                    .filter(|v| !live.contains(v))
                    .collect();
                let modules: BTreeSet<u64> = c
                    .snapshots
                    .values()
                    .map(|s| s.module_version)
                    .filter(|&m| Some(m) != live_module)
                    .collect();
                pages.len() as u64 * PAGE + modules.len() as u64 * TEST_CANISTER_WASM.len() as u64
            })
            .sum()
    }
}

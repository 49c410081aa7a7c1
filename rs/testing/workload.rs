//! Workloads: operations over several canisters and callers, and a plain seeded generator.
//!
//! One vocabulary for everything that drives a replica with random messages: the property
//! tests (through the proptest strategies of [`super::strategies`], built on these types), the
//! reference model ([`super::model`]), and a replica-agreement simulator that feeds the same
//! batches to several replicas. This module needs no `proptest`: it is compiled always, so a
//! simulator or a fuzzer can use it without the feature.
//!
//! An [`Operation`] names canisters and callers by index ([`CanisterIndex`], [`CallerIndex`])
//! and snapshots by a [`SnapshotPick`], so that a sequence means the same thing on any replica
//! and shrinks well. [`Operation::to_message`] resolves it against a [`StateView`] (the
//! replicated state, or the model) into a concrete ingress [`Message`].
//!
//! The generator is SplitMix64 ([`Rng`]): ten lines, no dependency, a fixed output for a fixed
//! seed on every platform (a seed printed by a failing run replays it anywhere). Its sizes and
//! offsets are biased to the edges that matter: 4 KiB page boundaries (copy-on-write), 64 KiB
//! Wasm pages (growth), and the page counts where the page tree gains a level (16, 256 pages).
//!
//! **Never** reads the clock or iterates a hash map: the same seed gives the same operations.

use candid::{Encode, Principal};
use ic_management_canister_types::{
    CanisterInstallMode, CanisterSettings, DeleteCanisterSnapshotArgs, InstallCodeArgs,
    LoadCanisterSnapshotArgs, ProvisionalCreateCanisterWithCyclesArgs, TakeCanisterSnapshotArgs,
    UpdateSettingsArgs,
};
use serde_bytes::ByteBuf;

use crate::execution::{TEST_CANISTER_WASM, TestCanisterEngine, WasmEngine};
use crate::memory::PAGE_SIZE;
use crate::replicated_state::{ReplicatedState, canister_id_from_index};
use crate::scheduler::{Ingress, MessageId};
use crate::snapshots::SnapshotId;

/// Index of a canister of the workload: the `n`-th canister [`setup_messages`] creates, whose
/// id is `canister_id_from_index(n)` on a fresh subnet.
pub type CanisterIndex = u8;

/// Index of a caller of the workload: [`caller`]`(n)`. Caller 0 is the initial controller of
/// every canister.
pub type CallerIndex = u8;

/// The `n`-th caller: a self-authenticating principal (`caller(0)` is the same principal as
/// `Principal::self_authenticating([1])`).
pub fn caller(n: CallerIndex) -> Principal {
    Principal::self_authenticating([n.wrapping_add(1)])
}

/// The callers whose bits are set in `set` (bit `k`: [`caller`]`(k)`), in ascending `k`.
pub fn controller_set(set: u8) -> Vec<Principal> {
    (0..8).filter(|k| set & (1 << k) != 0).map(caller).collect()
}

/// The id of the `n`-th canister of a workload run on a fresh subnet.
pub fn canister(n: CanisterIndex) -> Principal {
    canister_id_from_index(u64::from(n))
}

/// The test canister as a real WebAssembly module: the interface of `spec/test-canister.did`
/// (the native canister's methods, replies and error codes) in `test_canister.wat`, compiled
/// into `test_canister.wasm` beside it. Its interface's heap starts one Wasm page into its
/// memory ([`WASM_TEST_CANISTER_SCRATCH_BYTES`]): the page below is the scratch a real
/// canister needs to build its replies in.
pub const WASM_TEST_CANISTER: &[u8] = include_bytes!("test_canister.wasm");

/// Bytes of the Wasm test canister's memory below the heap its interface reads and writes.
pub const WASM_TEST_CANISTER_SCRATCH_BYTES: u64 = 65_536;

/// Which test canister a workload installs: the native one (fast, for long property runs), or
/// the same interface as real WebAssembly executed by wasmtime. The same operations give the
/// same replies and error codes on both (`tests/wasm_test_canister.rs`); what differs is what
/// a real module is made of: its module bytes, the scratch page below its interface's heap
/// (so its heap is 64 KiB larger, which storage charges see), and a heap delta counted by the
/// 4 KiB pages a message really changed rather than by the pages it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CanisterKind {
    #[default]
    Native,
    Wasm,
}

impl CanisterKind {
    /// The module `install_code` installs (and an upgrade reinstalls).
    pub fn wasm_module(self) -> &'static [u8] {
        match self {
            CanisterKind::Native => TEST_CANISTER_WASM,
            CanisterKind::Wasm => WASM_TEST_CANISTER,
        }
    }

    /// An engine that runs this canister: the native engine, or the replica's (wasmtime for
    /// every module but the native test canister's).
    pub fn engine(self) -> Box<dyn WasmEngine> {
        match self {
            CanisterKind::Native => Box::new(TestCanisterEngine),
            CanisterKind::Wasm => Box::new(crate::embedders::ReplicaEngine::new()),
        }
    }

    /// The heap of the interface within the canister's heap bytes: all of it for the native
    /// canister, what lies above the scratch page for the Wasm one.
    pub fn interface_heap(self, heap: &[u8]) -> &[u8] {
        match self {
            CanisterKind::Native => heap,
            CanisterKind::Wasm => heap
                .get(WASM_TEST_CANISTER_SCRATCH_BYTES as usize..)
                .unwrap_or_default(),
        }
    }
}

/// Wasm memory or stable memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryKind {
    Heap,
    Stable,
}

impl MemoryKind {
    fn suffix(self) -> &'static str {
        match self {
            MemoryKind::Heap => "heap",
            MemoryKind::Stable => "stable",
        }
    }
}

/// Bytes `len` long, `byte[i] = base + i * step + i / 4096`: pages differ from each other, and
/// the operation prints short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub len: u32,
    pub base: u8,
    pub step: u8,
}

impl Pattern {
    pub fn bytes(self) -> Vec<u8> {
        (0..self.len as usize)
            .map(|i| {
                self.base
                    .wrapping_add((i as u8).wrapping_mul(self.step))
                    .wrapping_add((i / PAGE_SIZE) as u8)
            })
            .collect()
    }
}

/// Which snapshot an operation names, resolved when it runs (against a [`StateView`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPick {
    /// The `n % count`-th snapshot the canister holds (oldest first); falls back to a
    /// never-issued id when it holds none.
    Live(u8),
    /// Any id ever issued for the canister (maybe deleted or replaced since).
    Issued(u8),
    /// An id never issued: local id `1_000_000 + n`.
    Unknown(u8),
}

/// What an operation needs to know about the state to become a message: the snapshots it may
/// name and the memory sizes a `Grow` starts from. Implemented by [`ReplicatedState`] and by
/// the reference model.
pub trait StateView {
    /// Local ids of the snapshots `canister` holds, ascending.
    fn snapshot_ids(&self, canister: Principal) -> Vec<u64>;
    /// The local id the canister's next snapshot will get (every id below it was issued).
    fn next_snapshot_id(&self, canister: Principal) -> u64;
    /// The size of a memory of `canister` in bytes (0 when it has no code or does not exist).
    fn memory_size(&self, canister: Principal, memory: MemoryKind) -> u64;
}

impl StateView for ReplicatedState {
    fn snapshot_ids(&self, canister: Principal) -> Vec<u64> {
        self.snapshots
            .list(canister)
            .map(|snapshot| snapshot.id().local_id())
            .collect()
    }

    fn next_snapshot_id(&self, canister: Principal) -> u64 {
        self.canisters
            .get(&canister)
            .map_or(0, |state| state.next_snapshot_id)
    }

    fn memory_size(&self, canister: Principal, memory: MemoryKind) -> u64 {
        self.canisters
            .get(&canister)
            .map_or(0, |state| match memory {
                MemoryKind::Heap => state.wasm_memory_size(),
                MemoryKind::Stable => state.stable_memory_size(),
            })
    }
}

impl SnapshotPick {
    /// The snapshot id this pick names for `canister` in `view`.
    pub fn resolve(self, view: &(impl StateView + ?Sized), canister: Principal) -> SnapshotId {
        let local = match self {
            SnapshotPick::Live(n) => {
                let ids = view.snapshot_ids(canister);
                match ids.len() {
                    0 => 1_000_000 + u64::from(n),
                    len => ids[usize::from(n) % len],
                }
            }
            SnapshotPick::Issued(n) => match view.next_snapshot_id(canister) {
                0 => 1_000_000 + u64::from(n),
                next => u64::from(n) % next,
            },
            SnapshotPick::Unknown(n) => 1_000_000 + u64::from(n),
        };
        SnapshotId::new(canister, local)
    }
}

/// One step of a workload: an ingress message to a test canister or to the management
/// canister, or an empty round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `write_heap` / `write_stable` (grows the memory in 64 KiB pages to fit).
    Write {
        canister: CanisterIndex,
        caller: CallerIndex,
        memory: MemoryKind,
        offset: u64,
        data: Pattern,
    },
    /// `fill_heap` / `fill_stable`.
    Fill {
        canister: CanisterIndex,
        caller: CallerIndex,
        memory: MemoryKind,
        offset: u64,
        len: u64,
        byte: u8,
    },
    /// Grows a memory by `wasm_pages` 64 KiB pages past `offset`: a one-byte write at
    /// `offset + wasm_pages * 64 KiB - 1` (the test canister has no `grow` method).
    Grow {
        canister: CanisterIndex,
        caller: CallerIndex,
        memory: MemoryKind,
        wasm_pages: u8,
    },
    /// `set_global` (indices 0 and 1 exist; others trap).
    SetGlobal {
        canister: CanisterIndex,
        caller: CallerIndex,
        index: u32,
        value: i64,
    },
    /// `set_certified_data` (more than 32 bytes traps).
    SetCertifiedData {
        canister: CanisterIndex,
        caller: CallerIndex,
        data: Pattern,
    },
    /// `trap`: refused, changes nothing.
    Trap {
        canister: CanisterIndex,
        caller: CallerIndex,
    },
    /// `take_canister_snapshot`.
    Take {
        canister: CanisterIndex,
        caller: CallerIndex,
        replace: Option<SnapshotPick>,
    },
    /// `load_canister_snapshot` of a snapshot of canister `from` into `canister`.
    Load {
        canister: CanisterIndex,
        caller: CallerIndex,
        from: CanisterIndex,
        snapshot: SnapshotPick,
    },
    /// `delete_canister_snapshot` of a snapshot of canister `from`, asked of `canister`.
    Delete {
        canister: CanisterIndex,
        caller: CallerIndex,
        from: CanisterIndex,
        snapshot: SnapshotPick,
    },
    /// `update_settings` with controllers `{ caller(k) | bit k of controllers is set }` (none is
    /// allowed: the canister then has no controller). A bit set, not a list, so that a printed
    /// operation pastes back as Rust.
    SetControllers {
        canister: CanisterIndex,
        caller: CallerIndex,
        controllers: u8,
    },
    /// `update_settings` with this freezing threshold: a large one makes the canister run out
    /// of cycles for memory growth, takes and loads.
    SetFreezingThreshold {
        canister: CanisterIndex,
        caller: CallerIndex,
        seconds: u64,
    },
    /// `install_code` in `upgrade` mode with the test canister: keeps stable memory and
    /// certified data, clears the heap and globals.
    Upgrade {
        canister: CanisterIndex,
        caller: CallerIndex,
    },
    /// A round with no message.
    Tick,
    /// A round with no message, `seconds` of batch time after the previous one: the canisters
    /// pay for the storage they held meanwhile, and those that cannot pay are uninstalled
    /// (`spec/management.md`, "Storage charges").
    AdvanceTime { seconds: u64 },
}

/// A concrete ingress message, before it gets a message id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub sender: Principal,
    pub receiver: Principal,
    pub method: String,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn into_ingress(self, message_id: MessageId) -> Ingress {
        Ingress {
            message_id,
            sender: self.sender,
            receiver: self.receiver,
            method: self.method,
            payload: self.payload,
        }
    }
}

fn management(sender: Principal, method: &str, payload: Vec<u8>) -> Message {
    Message {
        sender,
        receiver: Principal::management_canister(),
        method: method.to_string(),
        payload,
    }
}

/// Candid encoding of the crate's own fixed argument types cannot fail.
fn encoded(result: candid::Result<Vec<u8>>) -> Vec<u8> {
    result.expect("encoding a fixed Candid type cannot fail")
}

/// Cycles each workload canister is created with.
pub const WORKLOAD_CANISTER_CYCLES: u128 = 100_000_000_000_000;

/// The messages that create `canisters` canisters controlled by [`caller`]`(0)` and install
/// the test canister in each: run them, one per round, on a fresh subnet before a workload.
pub fn setup_messages(canisters: u8) -> Vec<Message> {
    setup_messages_of(CanisterKind::Native, canisters)
}

/// [`setup_messages`] installing the test canister of `kind`.
pub fn setup_messages_of(kind: CanisterKind, canisters: u8) -> Vec<Message> {
    let controller = caller(0);
    (0..canisters)
        .flat_map(|n| {
            let create = ProvisionalCreateCanisterWithCyclesArgs {
                amount: Some(WORKLOAD_CANISTER_CYCLES.into()),
                settings: None,
                specified_id: None,
                sender_canister_version: None,
            };
            let install = InstallCodeArgs {
                mode: CanisterInstallMode::Install,
                canister_id: canister(n),
                wasm_module: kind.wasm_module().to_vec(),
                arg: vec![],
                sender_canister_version: None,
            };
            [
                management(
                    controller,
                    "provisional_create_canister_with_cycles",
                    encoded(Encode!(&create)),
                ),
                management(controller, "install_code", encoded(Encode!(&install))),
            ]
        })
        .collect()
}

impl Operation {
    /// The canister the operation is about, if any.
    pub fn canister(&self) -> Option<CanisterIndex> {
        match self {
            Operation::Write { canister, .. }
            | Operation::Fill { canister, .. }
            | Operation::Grow { canister, .. }
            | Operation::SetGlobal { canister, .. }
            | Operation::SetCertifiedData { canister, .. }
            | Operation::Trap { canister, .. }
            | Operation::Take { canister, .. }
            | Operation::Load { canister, .. }
            | Operation::Delete { canister, .. }
            | Operation::SetControllers { canister, .. }
            | Operation::SetFreezingThreshold { canister, .. }
            | Operation::Upgrade { canister, .. } => Some(*canister),
            Operation::Tick | Operation::AdvanceTime { .. } => None,
        }
    }

    /// The ingress message this operation sends, with its snapshot picks resolved against
    /// `view` (and a `Grow` from the memory's size there), or `None` for an empty round
    /// ([`Operation::Tick`], [`Operation::AdvanceTime`]).
    pub fn to_message(&self, view: &(impl StateView + ?Sized)) -> Option<Message> {
        self.to_message_of(CanisterKind::Native, view)
    }

    /// [`Operation::to_message`] for a workload of the test canister of `kind` (an upgrade
    /// installs its module).
    pub fn to_message_of(
        &self,
        kind: CanisterKind,
        view: &(impl StateView + ?Sized),
    ) -> Option<Message> {
        let message = match self {
            Operation::Write {
                canister: c,
                caller: s,
                memory,
                offset,
                data,
            } => Message {
                sender: caller(*s),
                receiver: canister(*c),
                method: format!("write_{}", memory.suffix()),
                payload: encoded(Encode!(offset, &ByteBuf::from(data.bytes()))),
            },
            Operation::Fill {
                canister: c,
                caller: s,
                memory,
                offset,
                len,
                byte,
            } => Message {
                sender: caller(*s),
                receiver: canister(*c),
                method: format!("fill_{}", memory.suffix()),
                payload: encoded(Encode!(offset, len, byte)),
            },
            Operation::Grow {
                canister: c,
                caller: s,
                memory,
                wasm_pages,
            } => {
                let size = view.memory_size(canister(*c), *memory);
                let offset = (size + u64::from(*wasm_pages) * 65_536).saturating_sub(1);
                Message {
                    sender: caller(*s),
                    receiver: canister(*c),
                    method: format!("write_{}", memory.suffix()),
                    payload: encoded(Encode!(&offset, &ByteBuf::from(vec![0u8]))),
                }
            }
            Operation::SetGlobal {
                canister: c,
                caller: s,
                index,
                value,
            } => Message {
                sender: caller(*s),
                receiver: canister(*c),
                method: "set_global".into(),
                payload: encoded(Encode!(index, value)),
            },
            Operation::SetCertifiedData {
                canister: c,
                caller: s,
                data,
            } => Message {
                sender: caller(*s),
                receiver: canister(*c),
                method: "set_certified_data".into(),
                payload: encoded(Encode!(&ByteBuf::from(data.bytes()))),
            },
            Operation::Trap {
                canister: c,
                caller: s,
            } => Message {
                sender: caller(*s),
                receiver: canister(*c),
                method: "trap".into(),
                payload: encoded(Encode!(&"workload trap")),
            },
            Operation::Take {
                canister: c,
                caller: s,
                replace,
            } => {
                let args = TakeCanisterSnapshotArgs {
                    canister_id: canister(*c),
                    replace_snapshot: replace
                        .map(|pick| pick.resolve(view, canister(*c)).to_bytes()),
                    uninstall_code: None,
                    sender_canister_version: None,
                };
                management(
                    caller(*s),
                    "take_canister_snapshot",
                    encoded(Encode!(&args)),
                )
            }
            Operation::Load {
                canister: c,
                caller: s,
                from,
                snapshot,
            } => {
                let args = LoadCanisterSnapshotArgs {
                    canister_id: canister(*c),
                    snapshot_id: snapshot.resolve(view, canister(*from)).to_bytes(),
                    sender_canister_version: None,
                };
                management(
                    caller(*s),
                    "load_canister_snapshot",
                    encoded(Encode!(&args)),
                )
            }
            Operation::Delete {
                canister: c,
                caller: s,
                from,
                snapshot,
            } => {
                let args = DeleteCanisterSnapshotArgs {
                    canister_id: canister(*c),
                    snapshot_id: snapshot.resolve(view, canister(*from)).to_bytes(),
                };
                management(
                    caller(*s),
                    "delete_canister_snapshot",
                    encoded(Encode!(&args)),
                )
            }
            Operation::SetControllers {
                canister: c,
                caller: s,
                controllers,
            } => {
                let args = UpdateSettingsArgs {
                    canister_id: canister(*c),
                    settings: CanisterSettings {
                        controllers: Some(controller_set(*controllers)),
                        ..Default::default()
                    },
                    sender_canister_version: None,
                };
                management(caller(*s), "update_settings", encoded(Encode!(&args)))
            }
            Operation::SetFreezingThreshold {
                canister: c,
                caller: s,
                seconds,
            } => {
                let args = UpdateSettingsArgs {
                    canister_id: canister(*c),
                    settings: CanisterSettings {
                        freezing_threshold: Some((*seconds).into()),
                        ..Default::default()
                    },
                    sender_canister_version: None,
                };
                management(caller(*s), "update_settings", encoded(Encode!(&args)))
            }
            Operation::Upgrade {
                canister: c,
                caller: s,
            } => {
                let args = InstallCodeArgs {
                    mode: CanisterInstallMode::Upgrade(None),
                    canister_id: canister(*c),
                    wasm_module: kind.wasm_module().to_vec(),
                    arg: vec![],
                    sender_canister_version: None,
                };
                management(caller(*s), "install_code", encoded(Encode!(&args)))
            }
            Operation::Tick | Operation::AdvanceTime { .. } => return None,
        };
        Some(message)
    }
}

// ---------------------------------------------------------------------------------------------
// The shape of a workload, and the seeded generator
// ---------------------------------------------------------------------------------------------

/// Pages (4 KiB) near which offsets are drawn: the first pages, the edges of the first 64 KiB
/// Wasm page, and either side of where the page tree gains a level (16 and 256 pages).
pub const BOUNDARY_PAGES: [u64; 10] = [0, 1, 15, 16, 17, 31, 255, 256, 257, 511];

/// Lengths around one page and one Wasm page.
pub const BOUNDARY_LENGTHS: [u64; 9] = [0, 1, 4_095, 4_096, 4_097, 8_192, 65_535, 65_536, 65_537];

/// Freezing thresholds: none, the IC's default (30 days), and so large that any growth, take
/// or load fails for lack of cycles.
pub const FREEZING_THRESHOLDS: [u64; 3] = [0, 2_592_000, 1 << 40];

/// Batch time an [`Operation::AdvanceTime`] moves: less than a storage charge period, one
/// period, an hour, 30 days, and 10 years (which a canister with a snapshot and a high storage
/// price cannot pay for).
pub const TIME_STEPS: [u64; 5] = [9, 10, 3_600, 2_592_000, 315_360_000];

/// How many canisters and callers a workload spans, and the weight of each kind of operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadShape {
    pub canisters: u8,
    /// Callers `0..callers`; caller 0 controls every canister at the start.
    pub callers: u8,
    /// Relative weights of memory operations (write, fill, grow), canister state (globals,
    /// certified data, traps), snapshot operations (take, load, delete) and settings
    /// (controllers, freezing threshold, upgrade, empty rounds, batch time passing).
    pub memory_weight: u32,
    pub canister_weight: u32,
    pub snapshot_weight: u32,
    pub settings_weight: u32,
}

impl Default for WorkloadShape {
    fn default() -> Self {
        WorkloadShape {
            canisters: 2,
            callers: 3,
            memory_weight: 8,
            canister_weight: 3,
            snapshot_weight: 8,
            settings_weight: 2,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one add and three xor-shift-multiply
/// steps per output. Not for cryptography; fixed output for a fixed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for the small `n` used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// True with probability `percent / 100`.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// An offset biased to page boundaries: most land a few bytes either side of a page in
/// [`BOUNDARY_PAGES`], some anywhere in the first 2 MiB.
pub fn boundary_offset(rng: &mut Rng) -> u64 {
    if rng.percent(70) {
        let page = rng.pick(&BOUNDARY_PAGES);
        let delta = rng.below(7) as i64 - 3;
        (page * PAGE_SIZE as u64).saturating_add_signed(delta)
    } else {
        rng.below(2 << 20)
    }
}

/// A length biased to page sizes: most from [`BOUNDARY_LENGTHS`], some up to 3 pages.
pub fn boundary_length(rng: &mut Rng) -> u64 {
    if rng.percent(70) {
        rng.pick(&BOUNDARY_LENGTHS)
    } else {
        rng.below(3 * PAGE_SIZE as u64 + 64)
    }
}

fn snapshot_pick(rng: &mut Rng) -> SnapshotPick {
    let n = rng.byte();
    match rng.below(20) {
        0..=15 => SnapshotPick::Live(n),
        16..=18 => SnapshotPick::Issued(n),
        _ => SnapshotPick::Unknown(n),
    }
}

impl WorkloadShape {
    /// One operation drawn from `rng`.
    pub fn operation(&self, rng: &mut Rng) -> Operation {
        let canister = rng.below(u64::from(self.canisters.max(1))) as u8;
        // The initial controller most of the time, so that most calls are accepted.
        let caller = if rng.percent(80) {
            0
        } else {
            rng.below(u64::from(self.callers.max(1))) as u8
        };
        let memory = if rng.percent(50) {
            MemoryKind::Heap
        } else {
            MemoryKind::Stable
        };
        let total =
            self.memory_weight + self.canister_weight + self.snapshot_weight + self.settings_weight;
        let mut roll = rng.below(u64::from(total.max(1))) as u32;
        if roll < self.memory_weight {
            return match rng.below(8) {
                0..=4 => Operation::Write {
                    canister,
                    caller,
                    memory,
                    offset: boundary_offset(rng),
                    data: Pattern {
                        len: boundary_length(rng).min(u64::from(u32::MAX)) as u32,
                        base: rng.byte(),
                        step: rng.byte(),
                    },
                },
                5 | 6 => Operation::Fill {
                    canister,
                    caller,
                    memory,
                    offset: boundary_offset(rng),
                    len: boundary_length(rng),
                    byte: rng.byte(),
                },
                _ => Operation::Grow {
                    canister,
                    caller,
                    memory,
                    wasm_pages: rng.below(3) as u8,
                },
            };
        }
        roll -= self.memory_weight;
        if roll < self.canister_weight {
            return match rng.below(4) {
                0 | 1 => Operation::SetGlobal {
                    canister,
                    caller,
                    index: if rng.percent(90) {
                        rng.below(2) as u32
                    } else {
                        2
                    },
                    value: rng.next_u64() as i64,
                },
                2 => Operation::SetCertifiedData {
                    canister,
                    caller,
                    data: Pattern {
                        len: rng.below(40) as u32,
                        base: rng.byte(),
                        step: rng.byte(),
                    },
                },
                _ => Operation::Trap { canister, caller },
            };
        }
        roll -= self.canister_weight;
        let other = rng.below(u64::from(self.canisters.max(1))) as u8;
        let from = if rng.percent(80) { canister } else { other };
        if roll < self.snapshot_weight {
            return match rng.below(8) {
                0..=2 => Operation::Take {
                    canister,
                    caller,
                    replace: rng.percent(40).then(|| snapshot_pick(rng)),
                },
                3..=5 => Operation::Load {
                    canister,
                    caller,
                    from,
                    snapshot: snapshot_pick(rng),
                },
                _ => Operation::Delete {
                    canister,
                    caller,
                    from,
                    snapshot: snapshot_pick(rng),
                },
            };
        }
        match rng.below(5) {
            0 => Operation::SetControllers {
                canister,
                caller,
                controllers: (0..rng.below(3)).fold(0, |set, _| {
                    set | 1 << rng.below(u64::from(self.callers.clamp(1, 8)))
                }),
            },
            1 => Operation::SetFreezingThreshold {
                canister,
                caller,
                seconds: rng.pick(&FREEZING_THRESHOLDS),
            },
            2 => Operation::Upgrade { canister, caller },
            3 => Operation::AdvanceTime {
                seconds: rng.pick(&TIME_STEPS),
            },
            _ => Operation::Tick,
        }
    }

    /// `len` operations from `seed`: the same on every platform and every run.
    pub fn generate(&self, seed: u64, len: usize) -> Vec<Operation> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| self.operation(&mut rng)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first outputs of SplitMix64 seeded with 0 (the reference implementation's).
    #[test]
    fn splitmix64_known_answers() {
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let shape = WorkloadShape::default();
        assert_eq!(shape.generate(7, 200), shape.generate(7, 200));
        assert_ne!(shape.generate(7, 200), shape.generate(8, 200));
    }

    /// The setup creates the canisters the indices name, controlled by caller 0, and a
    /// generated workload runs on them without a panic.
    #[test]
    fn setup_creates_the_named_canisters() {
        let mut sm = crate::StateMachine::new();
        for message in setup_messages(2) {
            sm.update_call(
                message.receiver,
                message.sender,
                &message.method,
                message.payload,
            )
            .unwrap();
        }
        for n in 0..2 {
            let state = &sm.state().canisters[&canister(n)];
            assert!(state.is_controller(&caller(0)));
            assert!(state.execution_state.is_some());
        }
        for operation in WorkloadShape::default().generate(1, 100) {
            match operation.to_message(sm.state()) {
                Some(m) => {
                    let _ = sm.update_call(m.receiver, m.sender, &m.method, m.payload);
                }
                None => sm.tick(),
            }
        }
    }

    /// `test_canister.wasm` is `test_canister.wat` compiled (`UPDATE_TEST_CANISTER_WASM=1`
    /// rewrites it), and the replica accepts it.
    #[test]
    fn wasm_test_canister_is_its_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rs/testing");
        let compiled = wat::parse_file(dir.join("test_canister.wat")).unwrap();
        if std::env::var_os("UPDATE_TEST_CANISTER_WASM").is_some() {
            std::fs::write(dir.join("test_canister.wasm"), &compiled).unwrap();
        }
        assert!(
            compiled == WASM_TEST_CANISTER,
            "test_canister.wasm is stale: rerun with UPDATE_TEST_CANISTER_WASM=1"
        );
        CanisterKind::Wasm
            .engine()
            .validate(&crate::state::WasmModule::new(WASM_TEST_CANISTER.to_vec()))
            .unwrap();
    }

    #[test]
    fn picks_resolve_against_the_view() {
        let state = ReplicatedState::new(1);
        let id = SnapshotPick::Live(3).resolve(&state, canister(0));
        assert_eq!(id, SnapshotId::new(canister(0), 1_000_003));
    }
}

//! Property tests of the core (page memory, canister state, snapshot store) against a plain
//! reference model, plus two deterministic tests of the copy-on-write accounting (ten snapshots
//! of a 4 MiB heap; page trees of different heights).
//!
//! The model keeps full `Vec<u8>` copies of the live heap and stable memory and of every
//! snapshot's, and, for the accounting, the *identity* of every page: each page touched by a
//! write or fill gets a fresh version number, a snapshot copies the live version map, and a load
//! copies a snapshot's map back. `unique_bytes` must then be 4 KiB per version held by some
//! snapshot and not by the live canister.
//!
//! # Replaying a failure
//!
//! Every run prints (to stderr, shown by `cargo test` when the test fails, or always with
//! `-- --nocapture`) a line `core_model: PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n>`.
//! - Re-run the same generation with
//!   `PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n> cargo test --test core_model`.
//! - A failing case is also persisted (as a `cc <hex>` line) in `tests/core_model.regressions`;
//!   every later run replays the persisted cases first, so keep that file (commit it) to turn a
//!   failure into a regression test. `PROPTEST_DISABLE_FAILURE_PERSISTENCE=1` turns that off.
//! - `PROPTEST_CASES=<n>` changes the number of generated cases (default here: 64).
//!
//! The shrunk failing sequence of operations is printed by proptest as `minimal failing input`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use candid::Principal;
use canister_snapshots::memory::checksum::{memory_root_from_bytes, sha256};
use canister_snapshots::memory::{Hash, Memory, MemoryError, PAGE_SIZE, WASM_PAGE_SIZE};
use canister_snapshots::snapshots::{
    SnapshotDigest, SnapshotError, SnapshotId, SnapshotStore, snapshot_checksum,
};
use canister_snapshots::state::{CanisterState, ExecutionState, Global, WasmModule};
use ic_error_types::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MODULE: &[u8] = b"\0asm\x01\0\0\0";
/// Snapshots per canister.
const QUOTA: usize = 3;
/// Growth limit for both memories: keeps every memory at most 2 MiB.
const LIMIT: u64 = 2 << 20;
const PAGE: u64 = PAGE_SIZE as u64;
const DEFAULT_CASES: u32 = 64;

fn canister_id() -> Principal {
    Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1])
}

fn new_canister(heap_bytes: u64) -> CanisterState {
    let mut canister = CanisterState::new(canister_id(), BTreeSet::new(), 0);
    canister.execution_state = Some(ExecutionState {
        wasm_module: WasmModule::new(MODULE.to_vec()),
        wasm_memory: Memory::zeroed(heap_bytes, LIMIT.max(heap_bytes)).unwrap(),
        stable_memory: Memory::new(),
        exported_globals: vec![Global::I64(1), Global::I64(2)],
    });
    canister
}

fn heap_mut(canister: &mut CanisterState) -> &mut Memory {
    &mut execution_mut(canister).wasm_memory
}

fn execution(canister: &CanisterState) -> &ExecutionState {
    canister.execution_state.as_ref().expect("code installed")
}

fn execution_mut(canister: &mut CanisterState) -> &mut ExecutionState {
    canister.execution_state.as_mut().expect("code installed")
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mem {
    Heap,
    Stable,
}

/// Where an access starts, resolved against the memory's size when the op runs, so that most
/// accesses land inside whatever size the memory has by then and some run past its end.
#[derive(Clone, Copy, Debug)]
enum At {
    /// `fraction / 65536` of (size + 2 pages), rounded down to a page when `aligned`.
    Frac { fraction: u16, aligned: bool },
    /// `within` bytes into one of the `BOUNDARY_PAGES` inside the memory (picked by `index`):
    /// the first pages, and the pages either side of where the page tree gains a level (16 and
    /// 256 pages), so that snapshots and the live canister often have trees of different
    /// heights.
    Boundary { index: u8, within: u16 },
    /// `size - len + slack` (at least 0): the access ends `slack` bytes past the end, or
    /// `-slack` bytes before it, to probe the bounds check off by one either way.
    End { slack: i8 },
    /// `u64::MAX - back`: offset + len overflows.
    Huge { back: u16 },
}

const BOUNDARY_PAGES: [u64; 10] = [0, 1, 7, 15, 16, 17, 255, 256, 257, 511];

impl At {
    fn resolve(self, size: u64, len: u64) -> u64 {
        match self {
            At::Frac { fraction, aligned } => {
                let offset = (size + 2 * PAGE) * u64::from(fraction) / 65_536;
                if aligned {
                    offset / PAGE * PAGE
                } else {
                    offset
                }
            }
            At::Boundary { index, within } => {
                let inside: Vec<u64> = BOUNDARY_PAGES
                    .into_iter()
                    .filter(|&page| page * PAGE < size)
                    .collect();
                let page = inside.get(usize::from(index) % inside.len().max(1));
                page.map_or(0, |page| page * PAGE + u64::from(within) % PAGE)
            }
            At::End { slack } => size
                .saturating_sub(len)
                .saturating_add_signed(i64::from(slack)),
            At::Huge { back } => u64::MAX - u64::from(back),
        }
    }
}

/// `data[i] = base + i * step + (i / 4096)`, so pages differ from each other.
#[derive(Clone, Copy, Debug)]
struct Pattern {
    base: u8,
    step: u8,
}

impl Pattern {
    fn bytes(self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                self.base
                    .wrapping_add((i as u8).wrapping_mul(self.step))
                    .wrapping_add((i / PAGE_SIZE) as u8)
            })
            .collect()
    }
}

/// Which snapshot id an op names: usually a live one, sometimes any id ever issued (maybe
/// deleted), or one never issued.
#[derive(Clone, Copy, Debug)]
struct Pick {
    stale: bool,
    index: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        mem: Mem,
        at: At,
        len: usize,
        pattern: Pattern,
    },
    Fill {
        mem: Mem,
        at: At,
        len: u64,
        byte: u8,
    },
    Grow {
        mem: Mem,
        delta: u64,
    },
    SetCertifiedData(Vec<u8>),
    SetGlobal {
        index: usize,
        value: i64,
    },
    Take {
        replace: Option<Pick>,
    },
    Load(Pick),
    Delete(Pick),
}

fn mem_strategy() -> impl Strategy<Value = Mem> {
    prop_oneof![Just(Mem::Heap), Just(Mem::Stable)]
}

fn at_strategy() -> impl Strategy<Value = At> {
    prop_oneof![
        14 => (any::<u16>(), any::<bool>())
            .prop_map(|(fraction, aligned)| At::Frac { fraction, aligned }),
        5 => (any::<u8>(), prop_oneof![Just(0u16), any::<u16>()])
            .prop_map(|(index, within)| At::Boundary { index, within }),
        2 => (-3i8..=3).prop_map(|slack| At::End { slack }),
        1 => (0u16..16).prop_map(|back| At::Huge { back }),
    ]
}

fn pattern_strategy() -> impl Strategy<Value = Pattern> {
    prop_oneof![
        1 => Just(Pattern { base: 0, step: 0 }),
        9 => (any::<u8>(), any::<u8>()).prop_map(|(base, step)| Pattern { base, step }),
    ]
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    (prop::bool::weighted(0.15), any::<u8>()).prop_map(|(stale, index)| Pick { stale, index })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (mem_strategy(), at_strategy(), 0..=3 * PAGE_SIZE + 64, pattern_strategy())
            .prop_map(|(mem, at, len, pattern)| Op::Write { mem, at, len, pattern }),
        3 => (
            mem_strategy(),
            at_strategy(),
            prop_oneof![20 => 0..=16 * PAGE + 64, 1 => Just(u64::MAX)],
            any::<u8>(),
        )
            .prop_map(|(mem, at, len, byte)| Op::Fill { mem, at, len, byte }),
        4 => (mem_strategy(), 0u64..=12).prop_map(|(mem, delta)| Op::Grow { mem, delta }),
        1 => prop::collection::vec(any::<u8>(), 0..=32).prop_map(Op::SetCertifiedData),
        1 => (0usize..2, any::<i64>()).prop_map(|(index, value)| Op::SetGlobal { index, value }),
        4 => prop::option::weighted(0.3, pick_strategy()).prop_map(|replace| Op::Take { replace }),
        3 => pick_strategy().prop_map(Op::Load),
        2 => pick_strategy().prop_map(Op::Delete),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

/// One memory: its bytes (length = size), the version of every page ever written, and its
/// from-scratch root (recomputed from the bytes whenever they change).
#[derive(Clone)]
struct MemModel {
    bytes: Vec<u8>,
    versions: BTreeMap<u64, u64>,
    root: Option<Hash>,
}

impl MemModel {
    fn new(size: u64) -> Self {
        MemModel {
            bytes: vec![0; size as usize],
            versions: BTreeMap::new(),
            root: None,
        }
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn root(&mut self) -> Hash {
        *self
            .root
            .get_or_insert_with(|| memory_root_from_bytes(&self.bytes))
    }

    /// Gives every page of `[offset, offset + len)` a fresh version (`len > 0`).
    fn touch(&mut self, offset: u64, len: u64, next_version: &mut u64) {
        for page in offset / PAGE..=(offset + len - 1) / PAGE {
            self.versions.insert(page, *next_version);
            *next_version += 1;
        }
        self.root = None;
    }
}

/// What a live canister or a snapshot holds.
#[derive(Clone)]
struct Image {
    heap: MemModel,
    stable: MemModel,
    globals: [i64; 2],
    certified_data: Vec<u8>,
}

impl Image {
    fn mem(&mut self, mem: Mem) -> &mut MemModel {
        match mem {
            Mem::Heap => &mut self.heap,
            Mem::Stable => &mut self.stable,
        }
    }

    fn globals(&self) -> Vec<Global> {
        self.globals.iter().map(|&g| Global::I64(g)).collect()
    }

    /// `total_size` as the IC defines it.
    fn logical_size(&self) -> u64 {
        MODULE.len() as u64
            + self.heap.size()
            + self.stable.size()
            + 8 * self.globals.len() as u64
            + self.certified_data.len() as u64
    }

    fn checksum(&mut self) -> Hash {
        let wasm_memory_root = self.heap.root();
        let stable_memory_root = self.stable.root();
        let globals = self.globals();
        snapshot_checksum(&SnapshotDigest {
            wasm_module_hash: sha256(MODULE),
            wasm_memory_root,
            stable_memory_root,
            exported_globals: &globals,
            certified_data: &self.certified_data,
            chunk_hashes: Vec::new(),
        })
    }

    fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.heap
            .versions
            .values()
            .chain(self.stable.versions.values())
            .copied()
    }
}

struct Model {
    live: Image,
    /// By local snapshot id.
    snapshots: BTreeMap<u64, Image>,
    /// Every local id ever issued, in order.
    issued: Vec<u64>,
    next_id: u64,
    next_version: u64,
}

impl Model {
    fn new(heap_bytes: u64) -> Self {
        Model {
            live: Image {
                heap: MemModel::new(heap_bytes),
                stable: MemModel::new(0),
                globals: [1, 2],
                certified_data: Vec::new(),
            },
            snapshots: BTreeMap::new(),
            issued: Vec::new(),
            next_id: 0,
            next_version: 0,
        }
    }

    fn resolve(&self, pick: Pick) -> SnapshotId {
        let index = usize::from(pick.index);
        let local = if !pick.stale && !self.snapshots.is_empty() {
            *self
                .snapshots
                .keys()
                .nth(index % self.snapshots.len())
                .unwrap()
        } else if pick.stale && !self.issued.is_empty() {
            self.issued[index % self.issued.len()]
        } else {
            1_000_000 + index as u64
        };
        SnapshotId::new(canister_id(), local)
    }

    fn unique_bytes(&self) -> u64 {
        let live: BTreeSet<u64> = self.live.versions().collect();
        let held: BTreeSet<u64> = self
            .snapshots
            .values()
            .flat_map(Image::versions)
            .filter(|v| !live.contains(v))
            .collect();
        held.len() as u64 * PAGE
    }
}

// ---------------------------------------------------------------------------------------------
// Running one op on both
// ---------------------------------------------------------------------------------------------

fn real_mem(canister: &mut CanisterState, mem: Mem) -> &mut Memory {
    let execution = execution_mut(canister);
    match mem {
        Mem::Heap => &mut execution.wasm_memory,
        Mem::Stable => &mut execution.stable_memory,
    }
}

/// The error of a call the model says must fail, or a test failure if it succeeded.
fn refused<T: std::fmt::Debug, E>(result: Result<T, E>, what: &str) -> Result<E, TestCaseError> {
    match result {
        Ok(value) => Err(TestCaseError::fail(format!(
            "{what}: must be refused, returned Ok({value:?})"
        ))),
        Err(err) => Ok(err),
    }
}

/// The value of a call the model says must succeed, or a test failure if it failed.
fn accepted<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> Result<T, TestCaseError> {
    result.map_err(|err| TestCaseError::fail(format!("{what}: must succeed, failed: {err}")))
}

fn expect_out_of_bounds(
    result: Result<(), MemoryError>,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<(), TestCaseError> {
    let err = refused(result, "an access past the end")?;
    prop_assert_eq!(&err, &MemoryError::OutOfBounds { offset, len, size });
    prop_assert_eq!(err.code(), ErrorCode::CanisterTrapped);
    Ok(())
}

fn expect_not_found(err: SnapshotError, id: &SnapshotId) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.code(), ErrorCode::CanisterSnapshotNotFound);
    prop_assert_eq!(
        err,
        SnapshotError::NotFound {
            snapshot_id: id.clone(),
            canister_id: canister_id(),
        }
    );
    Ok(())
}

fn apply(
    op: &Op,
    time: u64,
    canister: &mut CanisterState,
    store: &mut SnapshotStore,
    model: &mut Model,
) -> Result<(), TestCaseError> {
    match op {
        Op::Write {
            mem,
            at,
            len,
            pattern,
        } => {
            let m = model.live.mem(*mem);
            let size = m.size();
            let offset = at.resolve(size, *len as u64);
            let data = pattern.bytes(*len);
            let result = real_mem(canister, *mem).write(offset, &data);
            let len = *len as u64;
            if offset.checked_add(len).is_some_and(|end| end <= size) {
                prop_assert_eq!(result, Ok(()));
                m.bytes[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                if len > 0 {
                    m.touch(offset, len, &mut model.next_version);
                }
            } else {
                expect_out_of_bounds(result, offset, len, size)?;
            }
        }
        Op::Fill { mem, at, len, byte } => {
            let m = model.live.mem(*mem);
            let size = m.size();
            let offset = at.resolve(size, *len);
            let result = real_mem(canister, *mem).fill(offset, *len, *byte);
            if offset.checked_add(*len).is_some_and(|end| end <= size) {
                prop_assert_eq!(result, Ok(()));
                m.bytes[offset as usize..(offset + len) as usize].fill(*byte);
                if *len > 0 {
                    m.touch(offset, *len, &mut model.next_version);
                }
            } else {
                expect_out_of_bounds(result, offset, *len, size)?;
            }
        }
        Op::Grow { mem, delta } => {
            let m = model.live.mem(*mem);
            let size = m.size();
            let result = real_mem(canister, *mem).grow(*delta, LIMIT);
            let requested = size + delta * WASM_PAGE_SIZE;
            if requested <= LIMIT {
                prop_assert_eq!(result, Ok(size / WASM_PAGE_SIZE));
                m.bytes.resize(requested as usize, 0);
                m.root = None;
            } else {
                let err = refused(result, "growth past the limit")?;
                prop_assert_eq!(err.code(), ErrorCode::CanisterOutOfMemory);
                prop_assert_eq!(
                    err,
                    MemoryError::GrowthBeyondLimit {
                        requested,
                        limit: LIMIT
                    }
                );
            }
        }
        Op::SetCertifiedData(data) => {
            canister.certified_data = data.clone();
            model.live.certified_data = data.clone();
        }
        Op::SetGlobal { index, value } => {
            execution_mut(canister).exported_globals[*index] = Global::I64(*value);
            model.live.globals[*index] = *value;
        }
        Op::Take { replace } => {
            let replace = replace.map(|pick| model.resolve(pick));
            let result = store.take(canister, time, replace.as_ref(), None);
            match &replace {
                Some(id) if !model.snapshots.contains_key(&id.local_id()) => {
                    expect_not_found(refused(result, "replacing a missing snapshot")?, id)?;
                }
                None if model.snapshots.len() >= QUOTA => {
                    let err = refused(result, "a take past the quota")?;
                    prop_assert_eq!(err.code(), ErrorCode::CanisterRejectedMessage);
                    prop_assert_eq!(
                        err,
                        SnapshotError::QuotaReached {
                            canister_id: canister_id(),
                            limit: QUOTA,
                        }
                    );
                }
                _ => {
                    let id = accepted(result, "take")?;
                    prop_assert_eq!(id.canister_id(), canister_id());
                    prop_assert_eq!(id.local_id(), model.next_id, "ids are issued in order");
                    if let Some(old) = &replace {
                        model.snapshots.remove(&old.local_id());
                    }
                    model.snapshots.insert(model.next_id, model.live.clone());
                    model.issued.push(model.next_id);
                    model.next_id += 1;
                    let snapshot = accepted(store.get(canister_id(), &id), "get the new snapshot")?;
                    prop_assert_eq!(snapshot.taken_at_timestamp, time);
                    // Taking copies no page: both memories are still the live ones.
                    let live = execution(canister);
                    prop_assert!(
                        snapshot
                            .content()
                            .wasm_memory
                            .page_map()
                            .shares_root_with(live.wasm_memory.page_map())
                    );
                    prop_assert!(
                        snapshot
                            .content()
                            .stable_memory
                            .page_map()
                            .shares_root_with(live.stable_memory.page_map())
                    );
                }
            }
        }
        Op::Load(pick) => {
            let id = model.resolve(*pick);
            match store.get(canister_id(), &id) {
                Ok(snapshot) => {
                    let Some(image) = model.snapshots.get(&id.local_id()) else {
                        return Err(TestCaseError::fail(format!(
                            "got a snapshot the model does not have: {id}"
                        )));
                    };
                    snapshot.restore_into(canister);
                    model.live = image.clone();
                    let live = execution(canister);
                    prop_assert!(
                        snapshot
                            .content()
                            .wasm_memory
                            .page_map()
                            .shares_root_with(live.wasm_memory.page_map())
                    );
                }
                Err(err) => {
                    prop_assert!(!model.snapshots.contains_key(&id.local_id()));
                    expect_not_found(err, &id)?;
                }
            }
        }
        Op::Delete(pick) => {
            let id = model.resolve(*pick);
            match store.delete(canister_id(), &id) {
                Ok(snapshot) => {
                    prop_assert_eq!(snapshot.id(), &id);
                    prop_assert!(model.snapshots.remove(&id.local_id()).is_some());
                }
                Err(err) => {
                    prop_assert!(!model.snapshots.contains_key(&id.local_id()));
                    expect_not_found(err, &id)?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checking the whole state against the model
// ---------------------------------------------------------------------------------------------

fn same_bytes(what: &str, actual: &[u8], expected: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len(), "{}: length", what);
    if actual == expected {
        // The fast path: `==` on slices is a memcmp even in debug builds.
        return Ok(());
    }
    if let Some(i) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        return Err(TestCaseError::fail(format!(
            "{what}: byte {i} (page {}) is {:#04x}, the model has {:#04x}",
            i / PAGE_SIZE,
            actual[i],
            expected[i]
        )));
    }
    Ok(())
}

fn check_memory(what: &str, memory: &Memory, model: &mut MemModel) -> Result<(), TestCaseError> {
    prop_assert_eq!(memory.size_bytes(), model.size(), "{}: size", what);
    let bytes = accepted(memory.read_vec(0, memory.size_bytes()), what)?;
    same_bytes(what, &bytes, &model.bytes)?;
    prop_assert_eq!(memory.root_hash(), model.root(), "{}: root hash", what);
    Ok(())
}

fn check_image(
    what: &str,
    (heap, stable): (&Memory, &Memory),
    globals: &[Global],
    certified_data: &[u8],
    image: &mut Image,
) -> Result<(), TestCaseError> {
    check_memory(&format!("{what} heap"), heap, &mut image.heap)?;
    check_memory(&format!("{what} stable"), stable, &mut image.stable)?;
    prop_assert_eq!(globals, &image.globals()[..], "{}", what);
    prop_assert_eq!(certified_data, &image.certified_data[..], "{}", what);
    Ok(())
}

fn check(
    canister: &CanisterState,
    store: &SnapshotStore,
    model: &mut Model,
) -> Result<(), TestCaseError> {
    let live = execution(canister);
    check_image(
        "live",
        (&live.wasm_memory, &live.stable_memory),
        &live.exported_globals,
        &canister.certified_data,
        &mut model.live,
    )?;
    prop_assert_eq!(
        live.wasm_memory.resident_bytes() + live.stable_memory.resident_bytes(),
        (model.live.heap.versions.len() + model.live.stable.versions.len()) as u64 * PAGE,
        "live resident bytes = pages ever written"
    );
    prop_assert_eq!(canister.memory_usage(), model.live.logical_size());
    prop_assert_eq!(canister.next_snapshot_id, model.next_id);

    let listed: Vec<u64> = store
        .list(canister_id())
        .map(|s| s.id().local_id())
        .collect();
    let expected: Vec<u64> = model.snapshots.keys().copied().collect();
    prop_assert_eq!(listed, expected, "snapshot ids");
    prop_assert_eq!(store.count(canister_id()), model.snapshots.len());

    for (&local, image) in model.snapshots.iter_mut() {
        let what = format!("snapshot {local}");
        let id = SnapshotId::new(canister_id(), local);
        let snapshot = accepted(store.get(canister_id(), &id), &what)?;
        let content = snapshot.content();
        prop_assert!(content.wasm_module.shares_bytes_with(&live.wasm_module));
        check_image(
            &what,
            (&content.wasm_memory, &content.stable_memory),
            &content.exported_globals,
            &content.certified_data,
            image,
        )?;
        prop_assert_eq!(snapshot.total_size(), image.logical_size(), "{}", what);
        prop_assert_eq!(snapshot.checksum(), image.checksum(), "{} checksum", what);
    }

    let logical: u64 = model.snapshots.values().map(Image::logical_size).sum();
    prop_assert_eq!(
        store.snapshots_size(canister_id()),
        logical,
        "snapshots_size"
    );
    prop_assert_eq!(
        store.unique_bytes(canister),
        model.unique_bytes(),
        "unique_bytes"
    );
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut canister = new_canister(WASM_PAGE_SIZE);
    let mut store = SnapshotStore::new(QUOTA);
    let mut model = Model::new(WASM_PAGE_SIZE);
    check(&canister, &store, &mut model)?;
    for (step, op) in ops.iter().enumerate() {
        apply(op, step as u64, &mut canister, &mut store, &mut model)
            .map_err(|e| TestCaseError::fail(format!("op {step} {op:?}: {e}")))?;
        check(&canister, &store, &mut model)
            .map_err(|e| TestCaseError::fail(format!("after op {step} {op:?}: {e}")))?;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    common::proptest_config("core_model", DEFAULT_CASES)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn core_agrees_with_the_reference_model(ops in prop::collection::vec(op_strategy(), 1..=40)) {
        run(&ops)?;
    }
}

/// Ten snapshots of a 4 MiB heap, 1% of the pages rewritten between takes: the snapshots hold
/// exactly the rewritten pages, and neither taking nor loading copies a page.
#[test]
fn ten_snapshots_hold_exactly_the_rewritten_pages() {
    const HEAP: u64 = 4 << 20;
    const PAGES: u64 = HEAP / PAGE;
    const REWRITTEN: u64 = PAGES / 100;
    const SNAPSHOTS: u64 = 10;
    // Disjoint pages each round, or the same pages every round: the count is the same.
    for disjoint in [true, false] {
        let mut canister = new_canister(HEAP);
        heap_mut(&mut canister).fill(0, HEAP, 0x11).unwrap();
        let mut store = SnapshotStore::new(SNAPSHOTS as usize);
        let mut ids = Vec::new();
        for round in 0..SNAPSHOTS {
            let before = store.unique_bytes(&canister);
            let id = store.take(&mut canister, round, None, None).unwrap();
            let snapshot = store.get(canister_id(), &id).unwrap();
            assert!(
                snapshot
                    .content()
                    .wasm_memory
                    .page_map()
                    .shares_root_with(execution(&canister).wasm_memory.page_map()),
                "taking a snapshot copies nothing"
            );
            assert_eq!(
                store.unique_bytes(&canister),
                before,
                "a take with no write since adds no unique byte"
            );
            assert_eq!(before, round * REWRITTEN * PAGE);
            ids.push(id);
            for k in 0..REWRITTEN {
                let page = if disjoint { k * 102 + round } else { k * 102 };
                let offset = page * PAGE;
                if (k + round) % 2 == 0 {
                    // A partial write: copy-on-write of the shared page.
                    heap_mut(&mut canister)
                        .write(offset + 7, &[round as u8 + 1])
                        .unwrap();
                } else {
                    // A whole-page write: replaced without copying.
                    heap_mut(&mut canister)
                        .fill(offset, PAGE, round as u8 + 1)
                        .unwrap();
                }
            }
            assert_eq!(
                store.unique_bytes(&canister),
                (round + 1) * REWRITTEN * PAGE
            );
        }
        assert_eq!(
            store.unique_bytes(&canister),
            SNAPSHOTS * REWRITTEN * PAGE,
            "disjoint: {disjoint}"
        );
        let resident_before = execution(&canister).wasm_memory.resident_bytes();
        assert_eq!(resident_before, HEAP);

        // Loading the newest snapshot shares its pages: only the nine older snapshots' own
        // pages remain unique.
        let newest = store.get(canister_id(), ids.last().unwrap()).unwrap();
        newest.restore_into(&mut canister);
        let newest = store.get(canister_id(), ids.last().unwrap()).unwrap();
        assert!(
            newest
                .content()
                .wasm_memory
                .page_map()
                .shares_root_with(execution(&canister).wasm_memory.page_map()),
            "loading a snapshot copies nothing"
        );
        assert_eq!(
            store.unique_bytes(&canister),
            (SNAPSHOTS - 1) * REWRITTEN * PAGE,
            "disjoint: {disjoint}"
        );
        // Loading the oldest: every later snapshot holds its own rewritten pages.
        let oldest = store.get(canister_id(), &ids[0]).unwrap();
        oldest.restore_into(&mut canister);
        assert_eq!(
            store.unique_bytes(&canister),
            (SNAPSHOTS - 1) * REWRITTEN * PAGE,
            "disjoint: {disjoint}"
        );
        // A fresh store: a snapshot taken with no write since holds nothing of its own.
        let mut fresh = SnapshotStore::new(1);
        fresh.take(&mut canister, 99, None, None).unwrap();
        assert_eq!(fresh.unique_bytes(&canister), 0);
    }
}

/// The page tree's height, read from `PageMap`'s `Debug` form (the test's premise).
fn tree_height(memory: &Memory) -> String {
    let debug = format!("{:?}", memory.page_map());
    let start = debug
        .find("height: ")
        .expect("PageMap's Debug shows its height")
        + 8;
    debug[start..].split(',').next().unwrap().to_string()
}

/// `unique_bytes` compares page trees of different heights: a snapshot taller than the live
/// canister (taken after the heap's tree gained levels, then an older, shorter snapshot loaded)
/// still shares its old pages with it, and a page two snapshots share is counted once.
#[test]
fn unique_bytes_across_page_trees_of_different_heights() {
    let mut canister = new_canister(LIMIT);
    heap_mut(&mut canister).fill(0, 8 * PAGE, 1).unwrap();
    let mut store = SnapshotStore::new(QUOTA);
    let short = store.take(&mut canister, 1, None, None).unwrap();
    assert_eq!(tree_height(&execution(&canister).wasm_memory), "1");
    heap_mut(&mut canister).write(20 * PAGE, &[2]).unwrap();
    heap_mut(&mut canister).write(300 * PAGE, &[3]).unwrap();
    assert_eq!(tree_height(&execution(&canister).wasm_memory), "3");
    let tall = store.take(&mut canister, 2, None, None).unwrap();
    assert_eq!(store.unique_bytes(&canister), 0, "live is taller than both");

    store
        .get(canister_id(), &short)
        .unwrap()
        .restore_into(&mut canister);
    assert_eq!(tree_height(&execution(&canister).wasm_memory), "1");
    assert_eq!(
        store.unique_bytes(&canister),
        2 * PAGE,
        "the tall snapshot holds pages 20 and 300 only"
    );
    heap_mut(&mut canister).write(3 * PAGE + 5, &[4]).unwrap();
    assert_eq!(
        store.unique_bytes(&canister),
        3 * PAGE,
        "the old page 3, shared by both snapshots, counts once"
    );

    store
        .get(canister_id(), &tall)
        .unwrap()
        .restore_into(&mut canister);
    assert_eq!(
        store.unique_bytes(&canister),
        0,
        "the short snapshot's pages are all in the tall one"
    );
}

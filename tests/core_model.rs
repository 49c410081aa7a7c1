//! Property tests of the replica against the reference model of `canister_snapshots::testing`
//! (the public testing kit: one model, shared with the crate's users), the four restore
//! properties, a demonstration that they catch a broken restore, and two deterministic tests of
//! the copy-on-write accounting (ten snapshots of a 4 MiB heap; page trees of different
//! heights).
//!
//! Needs the `proptest` feature: `cargo test --features proptest --test core_model`.
//!
//! # Replaying a failure
//!
//! Every property prints (to stderr, shown by `cargo test` when the test fails, or always with
//! `-- --nocapture`) a line `<name>: PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n>`.
//! - Re-run the same generation with
//!   `PROPTEST_RNG_SEED=<seed> PROPTEST_CASES=<n> cargo test --features proptest --test core_model`.
//! - A failure of a restore property prints the minimal sequence as a `#[test]` that calls
//!   `testing::properties::replay`: paste it here to keep it as a regression test.
//! - A failure of `replica_agrees_with_the_reference_model` names the first divergence (step,
//!   operation, expected, actual); proptest prints the shrunk sequence as `minimal failing
//!   input` and persists the case in `tests/core_model.regressions`, replayed first by later
//!   runs.
#![cfg(feature = "proptest")] // also `required-features`; `.ci/run` finds the feature's tests by this

mod common;

use std::collections::BTreeSet;

use candid::Principal;
use canister_snapshots::Config;
use canister_snapshots::memory::Hash;
use canister_snapshots::memory::{Memory, PAGE_SIZE};
use canister_snapshots::snapshots::SnapshotStore;
use canister_snapshots::state::{CanisterState, ExecutionState, Global, WasmModule};
use canister_snapshots::testing::check::{assert_matches_model, execute, workload_machine};
use canister_snapshots::testing::model::{Model, Outcome};
use canister_snapshots::testing::properties::{
    self, CANISTERS, ImageView, Replica, check_load_restores_the_take,
    check_snapshots_never_change, property_config, run_property,
};
use canister_snapshots::testing::strategies::{
    canister_settings, mutated_management_call, operations,
};
use canister_snapshots::testing::workload::{
    CanisterIndex, Operation, StateView, WorkloadShape, caller, canister,
};
use proptest::prelude::*;

const MODULE: &[u8] = b"\0asm\x01\0\0\0";
/// Snapshots per canister in the deterministic tests.
const QUOTA: usize = 3;
/// Growth limit for both memories: keeps every memory at most 2 MiB.
const LIMIT: u64 = 2 << 20;
const PAGE: u64 = PAGE_SIZE as u64;
/// Cases of each property here (`PROPTEST_CASES` overrides): modest, CI runs them in debug.
const DEFAULT_CASES: u32 = 24;
/// Cases of the model test: a load that skips stable memory is caught in about two runs of
/// three at 24 cases, so this one runs more.
const MODEL_CASES: u32 = 64;
/// Operations per generated sequence.
const OPS: std::ops::RangeInclusive<usize> = 1..=30;

fn config(test: &str) -> ProptestConfig {
    common::proptest_config(test, DEFAULT_CASES)
}

/// The model's configuration here: a quota of three, an allowance small enough that a take
/// or load of a large canister reaches the heap-delta rate limit for a round, but not so small
/// that it blocks most loads, and storage dear enough that canisters run out of cycles.
fn model_config() -> Config {
    Config {
        max_snapshots_per_canister: 3,
        heap_delta_rate_limit_bytes: 1 << 20,
        ..properties::with_dear_storage(Config::default())
    }
}

proptest! {
    #![proptest_config(common::proptest_config("core_model", MODEL_CASES))]

    /// Every outcome (with its error code) and every observable byte of canisters and
    /// snapshots agree with the reference model after every step.
    #[test]
    fn replica_agrees_with_the_reference_model(
        ops in operations(&WorkloadShape::default(), OPS)
    ) {
        if let Err(divergence) = assert_matches_model(&model_config(), CANISTERS, &ops) {
            return Err(TestCaseError::fail(divergence.to_string()));
        }
    }
}

proptest! {
    #![proptest_config(config("core_model_mutated"))]

    /// A valid management call with a mutated payload (cut, a bit flipped, bytes appended, sent
    /// to another method) is either accepted or refused without effect.
    #[test]
    fn mutated_management_calls_are_refused_without_effect(
        setup in operations(&WorkloadShape::default(), 0..=6),
        call in mutated_management_call(&WorkloadShape::default()),
    ) {
        let mut sm = workload_machine(property_config(), CANISTERS);
        for op in &setup {
            execute(&mut sm, op);
        }
        let Some(m) = call.to_message(sm.state()) else { return Ok(()) };
        let before = common::contents(sm.state());
        if sm.update_call(m.receiver, m.sender, &m.method, m.payload).is_err() {
            prop_assert_eq!(common::contents(sm.state()), before);
        }
    }

    /// Every settings value the strategy generates is within the limits `update_settings`
    /// accepts from a controller.
    #[test]
    fn generated_settings_are_accepted(settings in canister_settings()) {
        let mut sm = workload_machine(property_config(), 1);
        let result = common::update_settings(&mut sm, caller(0), canister(0), settings);
        prop_assert!(result.is_ok(), "{:?}", result);
    }
}

/// Runs a shipped restore property with this file's configuration; panics with the printed
/// regression test on failure.
fn shipped(
    name: &str,
    property: impl FnOnce(
        ProptestConfig,
        BoxedStrategy<Vec<Operation>>,
    ) -> Result<(), properties::PropertyFailure>,
) {
    let ops = operations(&WorkloadShape::default(), OPS).boxed();
    if let Err(failure) = property(config(name), ops) {
        panic!("{failure}");
    }
}

#[test]
fn load_restores_the_take() {
    shipped("load_restores_the_take", properties::load_restores_the_take);
}

#[test]
fn snapshots_never_change() {
    shipped("snapshots_never_change", properties::snapshots_never_change);
}

#[test]
fn delete_frees_exactly() {
    shipped("delete_frees_exactly", properties::delete_frees_exactly);
}

#[test]
fn download_upload_load_is_identity() {
    shipped(
        "download_upload_load_is_identity",
        properties::download_upload_load_is_identity,
    );
}

// ---------------------------------------------------------------------------------------------
// The properties catch a broken restore
// ---------------------------------------------------------------------------------------------

/// The model with one deliberate bug: a load restores everything but stable memory, which
/// keeps what the canister had before the load.
struct LoadSkipsStableMemory(Model);

impl Replica for LoadSkipsStableMemory {
    fn execute(&mut self, op: &Operation) -> Outcome {
        let kept = match op {
            Operation::Load { canister, .. } => self
                .0
                .canisters
                .get(canister)
                .and_then(|c| Some((*canister, c.live.as_ref()?.stable.clone()))),
            _ => None,
        };
        let outcome = self.0.step(op);
        if let (Some((n, stable)), Outcome::Accepted) = (kept, outcome)
            && let Some(live) = self.0.canisters.get_mut(&n).and_then(|c| c.live.as_mut())
        {
            live.stable = stable;
        }
        outcome
    }
    fn view(&self) -> &dyn StateView {
        &self.0
    }
    fn live(&self, n: CanisterIndex) -> Option<(ImageView, Hash)> {
        self.0.live(n)
    }
    fn snapshot(&self, n: CanisterIndex, local: u64) -> Option<(ImageView, Hash)> {
        self.0.snapshot(n, local)
    }
    fn snapshot_image(&self, n: CanisterIndex, local: u64) -> Option<ImageView> {
        self.0.snapshot_image(n, local)
    }
    fn unique_bytes(&self) -> u64 {
        self.0.unique_bytes()
    }
    fn canisters(&self) -> Vec<CanisterIndex> {
        Replica::canisters(&self.0)
    }
}

/// The model with another: a take stores the canister's memories by reference, so later writes
/// show through in the snapshot (a copy-on-write that does not copy).
struct TakeAliasesLiveMemory {
    model: Model,
    /// Snapshots that alias their canister's live memories.
    aliased: BTreeSet<(CanisterIndex, u64)>,
}

impl TakeAliasesLiveMemory {
    fn sync(&mut self) {
        for (n, local) in &self.aliased {
            if let Some(c) = self.model.canisters.get_mut(n)
                && let Some(live) = c.live.clone()
                && let Some(snapshot) = c.snapshots.get_mut(local)
            {
                snapshot.heap = live.heap;
                snapshot.stable = live.stable;
            }
        }
    }
}

impl Replica for TakeAliasesLiveMemory {
    fn execute(&mut self, op: &Operation) -> Outcome {
        let new = match op {
            Operation::Take { canister: n, .. } => {
                Some((*n, self.model.next_snapshot_id(canister(*n))))
            }
            _ => None,
        };
        let outcome = self.model.step(op);
        if let (Some(new), Outcome::Accepted) = (new, outcome) {
            self.aliased.insert(new);
        }
        self.sync();
        outcome
    }
    fn view(&self) -> &dyn StateView {
        &self.model
    }
    fn live(&self, n: CanisterIndex) -> Option<(ImageView, Hash)> {
        self.model.live(n)
    }
    fn snapshot(&self, n: CanisterIndex, local: u64) -> Option<(ImageView, Hash)> {
        self.model.snapshot(n, local)
    }
    fn snapshot_image(&self, n: CanisterIndex, local: u64) -> Option<ImageView> {
        self.model.snapshot_image(n, local)
    }
    fn unique_bytes(&self) -> u64 {
        self.model.unique_bytes()
    }
    fn canisters(&self) -> Vec<CanisterIndex> {
        Replica::canisters(&self.model)
    }
}

/// proptest's default number of cases, with a fixed seed so that this test is deterministic.
fn default_cases() -> ProptestConfig {
    ProptestConfig {
        rng_seed: proptest::test_runner::RngSeed::Fixed(12),
        ..ProptestConfig::default()
    }
}

/// A load that skips stable memory is caught by the shipped `load_restores_the_take` within
/// proptest's default number of cases, and the report is a pasteable regression test; the
/// correct model passes the same run, so the check can only fail because of the bug.
#[test]
fn a_load_that_skips_stable_memory_is_caught() {
    let shape = WorkloadShape::default();
    let correct = run_property(
        "load_restores_the_take",
        default_cases(),
        operations(&shape, OPS),
        |ops| check_load_restores_the_take(&mut Model::new(property_config(), CANISTERS), ops),
    );
    assert!(
        correct.is_ok(),
        "the correct model must pass: {}",
        correct.unwrap_err()
    );
    let failure = run_property(
        "load_restores_the_take",
        default_cases(),
        operations(&shape, OPS),
        |ops| {
            let mut broken = LoadSkipsStableMemory(Model::new(property_config(), CANISTERS));
            check_load_restores_the_take(&mut broken, ops)
        },
    )
    .expect_err("a load that skips stable memory must be caught");
    assert!(failure.reason.contains("stable memory"), "{failure}");
    let report = failure.to_string();
    assert!(report.contains("PROPTEST_RNG_SEED=12"), "{report}");
    assert!(
        report.contains("replay(\"load_restores_the_take\", &ops)"),
        "{report}"
    );
    // Minimal: a write to stable memory, a take, a change of stable memory, a load.
    assert!(failure.minimal.len() <= 4, "{report}");
}

/// A take that aliases the live memories is caught by `snapshots_never_change`.
#[test]
fn a_snapshot_that_aliases_live_memory_is_caught() {
    let shape = WorkloadShape::default();
    let correct = run_property(
        "snapshots_never_change",
        default_cases(),
        operations(&shape, OPS),
        |ops| check_snapshots_never_change(&mut Model::new(property_config(), CANISTERS), ops),
    );
    assert!(
        correct.is_ok(),
        "the correct model must pass: {}",
        correct.unwrap_err()
    );
    let failure = run_property(
        "snapshots_never_change",
        default_cases(),
        operations(&shape, OPS),
        |ops| {
            let mut broken = TakeAliasesLiveMemory {
                model: Model::new(property_config(), CANISTERS),
                aliased: BTreeSet::new(),
            };
            check_snapshots_never_change(&mut broken, ops)
        },
    )
    .expect_err("a snapshot that changes with its canister must be caught");
    assert!(failure.minimal.len() <= 3, "{failure}");
}

/// The regression test the broken load's report prints (above, for seed 12), pasted as it is:
/// the printed form compiles, and the real replica passes it for every property.
#[test]
fn regression_load_restores_the_take() {
    use canister_snapshots::testing::properties::*;
    use canister_snapshots::testing::workload::{
        MemoryKind::*, Operation::*, Pattern, SnapshotPick::*,
    };
    let ops = vec![
        Write {
            canister: 0,
            caller: 0,
            memory: Stable,
            offset: 0,
            data: Pattern {
                len: 1,
                base: 0,
                step: 0,
            },
        },
        Take {
            canister: 1,
            caller: 0,
            replace: None,
        },
        Load {
            canister: 0,
            caller: 0,
            from: 1,
            snapshot: Live(0),
        },
    ];
    replay("load_restores_the_take", &ops).unwrap();
    for property in PROPERTIES {
        replay(property, &ops).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Copy-on-write accounting, deterministic
// ---------------------------------------------------------------------------------------------

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

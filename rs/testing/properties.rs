//! The restore properties, ready to call, and the runner that prints a failure as a regression
//! test.
//!
//! Each property comes twice:
//! - `check_*(replica, ops)`: runs one sequence on a [`Replica`] and returns the first
//!   violation; this is what a regression test calls with the sequence a failure printed;
//! - the property itself (`load_restores_the_take`, …): takes a `ProptestConfig` and the
//!   user's own operation strategy (for example [`super::strategies::operations`] with a
//!   [`WorkloadShape`] biased toward their canister), generates sequences, shrinks a failure to
//!   a minimal one and returns a [`PropertyFailure`] whose `Display` is the seed and the
//!   minimal sequence as pasteable Rust.
//!
//! The properties speak to a [`Replica`]: a `StateMachine` (the default), or anything else that
//! executes operations and shows what canisters and snapshots hold — a replica fork, or a
//! deliberately broken model, which is how `tests/core_model.rs` shows that the properties
//! catch a broken restore.

use std::collections::BTreeMap;
use std::fmt;

use proptest::strategy::Strategy;
use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestError, TestRunner,
};

pub use super::check::ImageView;
use super::check::{observe_machine, observe_model, workload_machine_of};
use super::model::{Model, Outcome};
use super::workload::{CanisterIndex, CanisterKind, Operation, StateView, caller, canister};
use crate::config::Config;
use crate::harness::StateMachine;
use crate::memory::Hash;
use crate::memory::checksum::sha256;
use crate::snapshots::{SnapshotDigest, SnapshotId, snapshot_checksum};

/// Something the restore properties can drive: executes operations, and shows the images of
/// live canisters and snapshots with their checksums.
pub trait Replica {
    /// Executes `op` as one round (snapshot picks resolved against [`Replica::view`]).
    fn execute(&mut self, op: &Operation) -> Outcome;
    /// The state operations are resolved against.
    fn view(&self) -> &dyn StateView;
    /// What canister `n` holds now, and the checksum a snapshot of it would have.
    fn live(&self, n: CanisterIndex) -> Option<(ImageView, Hash)>;
    /// What snapshot `local` of canister `n` holds, and its checksum.
    fn snapshot(&self, n: CanisterIndex, local: u64) -> Option<(ImageView, Hash)>;
    /// What snapshot `local` of canister `n` holds, without the checksum (which a replica may
    /// compute more cheaply, or which may be costly: the model hashes flat bytes).
    fn snapshot_image(&self, n: CanisterIndex, local: u64) -> Option<ImageView> {
        self.snapshot(n, local).map(|(image, _)| image)
    }
    /// Bytes the snapshots of every canister hold beyond the live canisters.
    fn unique_bytes(&self) -> u64;
    /// Workload canisters.
    fn canisters(&self) -> Vec<CanisterIndex>;
}

/// A `StateMachine` running a workload (see [`super::check::workload_machine`]) on the test
/// canister of `kind`.
pub struct MachineReplica {
    pub sm: StateMachine,
    pub canisters: u8,
    pub kind: CanisterKind,
}

impl MachineReplica {
    pub fn new(config: Config, canisters: u8) -> Self {
        Self::of_kind(CanisterKind::Native, config, canisters)
    }

    /// A machine whose canisters run the test canister of `kind` (the Wasm one: real
    /// WebAssembly on wasmtime).
    pub fn of_kind(kind: CanisterKind, config: Config, canisters: u8) -> Self {
        MachineReplica {
            sm: workload_machine_of(kind, config, canisters),
            canisters,
            kind,
        }
    }
}

impl Replica for MachineReplica {
    fn execute(&mut self, op: &Operation) -> Outcome {
        super::check::execute_of(self.kind, &mut self.sm, op)
    }

    fn view(&self) -> &dyn StateView {
        self.sm.state()
    }

    fn live(&self, n: CanisterIndex) -> Option<(ImageView, Hash)> {
        let state = self.sm.state();
        let c = state.canisters.get(&canister(n))?;
        let e = c.execution_state.as_ref()?;
        let checksum = snapshot_checksum(&SnapshotDigest {
            wasm_module_hash: *e.wasm_module.hash(),
            wasm_memory_root: e.wasm_memory.root_hash(),
            stable_memory_root: e.stable_memory.root_hash(),
            exported_globals: &e.exported_globals,
            certified_data: &c.certified_data,
            chunk_hashes: c
                .wasm_chunk_store
                .values()
                .map(|chunk| sha256(chunk))
                .collect(),
        });
        Some((observe_machine(state, n)?.live, checksum))
    }

    fn snapshot(&self, n: CanisterIndex, local: u64) -> Option<(ImageView, Hash)> {
        let state = self.sm.state();
        let id = SnapshotId::new(canister(n), local);
        let snapshot = state.snapshots.get(canister(n), &id).ok()?;
        let view = observe_machine(state, n)?
            .snapshots
            .into_iter()
            .find(|(l, _)| *l == local)?
            .1;
        Some((view, snapshot.checksum()))
    }

    fn unique_bytes(&self) -> u64 {
        self.sm.state().snapshots_unique_bytes()
    }

    fn canisters(&self) -> Vec<CanisterIndex> {
        (0..self.canisters).collect()
    }
}

/// The model as a replica: what the properties check it against is its own behaviour, so a
/// deliberately broken copy of it shows what a broken replica looks like to them.
impl Replica for Model {
    fn execute(&mut self, op: &Operation) -> Outcome {
        self.step(op)
    }

    fn view(&self) -> &dyn StateView {
        self
    }

    fn live(&self, n: CanisterIndex) -> Option<(ImageView, Hash)> {
        let live = self.canisters.get(&n)?.live.as_ref()?;
        Some((observe_model(self, n)?.live, live.checksum()))
    }

    fn snapshot(&self, n: CanisterIndex, local: u64) -> Option<(ImageView, Hash)> {
        let image = self.canisters.get(&n)?.snapshots.get(&local)?;
        let view = observe_model(self, n)?
            .snapshots
            .into_iter()
            .find(|(l, _)| *l == local)?
            .1;
        Some((view, image.checksum()))
    }

    fn snapshot_image(&self, n: CanisterIndex, local: u64) -> Option<ImageView> {
        observe_model(self, n)?
            .snapshots
            .into_iter()
            .find(|(l, _)| *l == local)
            .map(|(_, view)| view)
    }

    fn unique_bytes(&self) -> u64 {
        Model::unique_bytes(self)
    }

    fn canisters(&self) -> Vec<CanisterIndex> {
        self.canisters.keys().copied().collect()
    }
}

fn violation(step: usize, op: &Operation, what: String) -> String {
    format!("step {step} {op:?}: {what}")
}

fn same(
    what: &str,
    expected: &(ImageView, Hash),
    actual: &(ImageView, Hash),
) -> Result<(), String> {
    if let Some((e, a)) = expected.0.difference(&actual.0) {
        return Err(format!("{what}: expected {e}, got {a}"));
    }
    if expected.1 != actual.1 {
        return Err(format!("{what}: checksum differs"));
    }
    Ok(())
}

/// The snapshot a take of canister `n` would create next.
fn next_snapshot(replica: &dyn Replica, n: CanisterIndex) -> u64 {
    replica.view().next_snapshot_id(canister(n))
}

/// **Load after take gives back the take**: after every accepted load, the canister's heap,
/// stable memory, globals, certified data and checksum are those of the canister when the
/// snapshot was taken.
pub fn check_load_restores_the_take(
    replica: &mut dyn Replica,
    ops: &[Operation],
) -> Result<(), String> {
    let mut taken: BTreeMap<(CanisterIndex, u64), (ImageView, Hash)> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Operation::Take { canister: n, .. } => {
                let before = replica.live(*n);
                let local = next_snapshot(replica, *n);
                if replica.execute(op) == Outcome::Accepted
                    && let Some(before) = before
                {
                    taken.insert((*n, local), before);
                }
            }
            Operation::Load {
                canister: n,
                from,
                snapshot,
                ..
            } => {
                let local = snapshot.resolve(replica.view(), canister(*from)).local_id();
                if replica.execute(op) == Outcome::Accepted {
                    let expected = taken.get(&(*from, local)).ok_or_else(|| {
                        violation(
                            step,
                            op,
                            format!("loaded snapshot {local} of canister {from}, never taken"),
                        )
                    })?;
                    let actual = replica.live(*n).ok_or_else(|| {
                        violation(step, op, "the canister has no code after a load".into())
                    })?;
                    same("the canister after the load", expected, &actual)
                        .map_err(|e| violation(step, op, e))?;
                }
            }
            _ => {
                replica.execute(op);
            }
        }
    }
    Ok(())
}

/// **A snapshot never changes**: after every operation, every snapshot still holds exactly
/// what it held when it was taken (bytes, globals, certified data; the checksum at the end).
pub fn check_snapshots_never_change(
    replica: &mut dyn Replica,
    ops: &[Operation],
) -> Result<(), String> {
    let mut taken: BTreeMap<(CanisterIndex, u64), (ImageView, Hash)> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        let new = op
            .canister()
            .filter(|_| matches!(op, Operation::Take { .. }))
            .map(|n| (n, next_snapshot(replica, n)));
        let accepted = replica.execute(op) == Outcome::Accepted;
        if let (Some((n, local)), true) = (new, accepted) {
            let snapshot = replica.snapshot(n, local).ok_or_else(|| {
                violation(step, op, format!("snapshot {local} missing after the take"))
            })?;
            taken.insert((n, local), snapshot);
        }
        let last = step + 1 == ops.len();
        for ((n, local), expected) in &taken {
            let what = format!("snapshot {local} of canister {n}");
            if last {
                if let Some(actual) = replica.snapshot(*n, *local) {
                    same(&what, expected, &actual).map_err(|e| violation(step, op, e))?;
                }
            } else if let Some(actual) = replica.snapshot_image(*n, *local)
                && let Some((e, a)) = expected.0.difference(&actual)
            {
                return Err(violation(step, op, format!("{what}: was {e}, is now {a}")));
            }
        }
    }
    Ok(())
}

/// **Delete frees exactly what only that snapshot held**: the bytes the replica's snapshots
/// hold beyond the live canisters equal the reference model's (which counts page versions)
/// before and after every accepted delete. The model runs in lockstep; a difference in an
/// outcome is reported too.
pub fn check_delete_frees_exactly(
    replica: &mut dyn Replica,
    model: &mut Model,
    ops: &[Operation],
) -> Result<(), String> {
    for (step, op) in ops.iter().enumerate() {
        let before = (replica.unique_bytes(), model.unique_bytes());
        let expected = model.step(op);
        let actual = replica.execute(op);
        if expected != actual {
            return Err(violation(
                step,
                op,
                format!("the model expected {expected:?}, got {actual:?}"),
            ));
        }
        if matches!(op, Operation::Delete { .. }) && actual == Outcome::Accepted {
            let after = (replica.unique_bytes(), model.unique_bytes());
            if before.0 != before.1 || after.0 != after.1 {
                return Err(violation(
                    step,
                    op,
                    format!(
                        "really-held bytes before/after the delete: expected {}/{}, got {}/{}",
                        before.1, after.1, before.0, after.0
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// **Download, upload, load is the identity**: after `ops`, every snapshot of every canister
/// (that still has a controller) is downloaded, uploaded in its place and loaded; the canister
/// then holds exactly what the snapshot held, and the uploaded snapshot has its checksum.
pub fn check_download_upload_load(
    replica: &mut MachineReplica,
    ops: &[Operation],
) -> Result<(), String> {
    for op in ops {
        replica.execute(op);
    }
    for n in replica.canisters() {
        let id = canister(n);
        let Some(controller) = replica.sm.state().canisters[&id]
            .controllers
            .iter()
            .next()
            .copied()
        else {
            continue;
        };
        // Enough cycles and no freezing threshold: the round trip's own costs must not refuse.
        replica.execute(&Operation::SetFreezingThreshold {
            canister: n,
            caller: caller_index_of(controller).unwrap_or(0),
            seconds: 0,
        });
        let locals: Vec<u64> = replica.view().snapshot_ids(id);
        for local in locals {
            let Some(original) = replica.snapshot(n, local) else {
                continue;
            };
            let dir = scratch_dir(n, local);
            let what = format!("snapshot {local} of canister {n}");
            let snapshot_id = SnapshotId::new(id, local).to_bytes();
            let result = (|| {
                replica
                    .sm
                    .download_canister_snapshot(id, Some(controller), snapshot_id.clone(), &dir)
                    .map_err(|e| format!("{what}: download: {e}"))?;
                let uploaded = replica
                    .sm
                    .upload_canister_snapshot(id, Some(controller), &dir, Some(snapshot_id.clone()))
                    .map_err(|e| format!("{what}: upload: {e}"))?;
                replica
                    .sm
                    .load_canister_snapshot(id, Some(controller), uploaded.clone())
                    .map_err(|e| format!("{what}: load of the upload: {e}"))?;
                let uploaded = SnapshotId::from_bytes(&uploaded).map_err(|e| e.to_string())?;
                let copy = replica
                    .snapshot(n, uploaded.local_id())
                    .ok_or_else(|| format!("{what}: the upload is gone"))?;
                same(&format!("{what}, uploaded"), &original, &copy)?;
                let live = replica
                    .live(n)
                    .ok_or_else(|| format!("{what}: no code after load"))?;
                same(
                    &format!("{what}, downloaded, uploaded and loaded"),
                    &original,
                    &live,
                )
            })();
            let _ = std::fs::remove_dir_all(&dir);
            result?;
        }
    }
    Ok(())
}

/// The workload caller index of `principal`, if it is one.
fn caller_index_of(principal: candid::Principal) -> Option<u8> {
    (0..=u8::MAX).find(|&k| caller(k) == principal)
}

/// A fresh directory for one download (removed by the caller).
fn scratch_dir(n: CanisterIndex, local: u64) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "canister-snapshots-roundtrip-{}-{k}-{n}-{local}",
        std::process::id()
    ))
}

// ---------------------------------------------------------------------------------------------
// The runner: proptest, with the seed and the minimal sequence printed as a regression test
// ---------------------------------------------------------------------------------------------

/// A property that failed: its name, the seed of the run, why, and the minimal sequence.
#[derive(Clone, Debug)]
pub struct PropertyFailure {
    pub property: &'static str,
    pub seed: Option<u64>,
    pub reason: String,
    pub minimal: Vec<Operation>,
}

impl fmt::Display for PropertyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "property `{}` failed: {}", self.property, self.reason)?;
        if let Some(seed) = self.seed {
            writeln!(f, "replay this run: PROPTEST_RNG_SEED={seed}")?;
        }
        writeln!(f, "minimal failing sequence, as a regression test:\n")?;
        writeln!(f, "#[test]\nfn regression_{}() {{", self.property)?;
        writeln!(f, "    use canister_snapshots::testing::properties::*;")?;
        writeln!(
            f,
            "    use canister_snapshots::testing::workload::{{MemoryKind::*, Operation::*, Pattern, SnapshotPick::*}};"
        )?;
        writeln!(f, "    let ops = vec![")?;
        for op in &self.minimal {
            writeln!(f, "        {op:?},")?;
        }
        writeln!(f, "    ];")?;
        writeln!(f, "    replay(\"{}\", &ops).unwrap();\n}}", self.property)
    }
}

impl std::error::Error for PropertyFailure {}

/// The workload the properties run on: this many canisters, created by caller 0.
pub const CANISTERS: u8 = 2;

/// The configuration the properties run with: the default, with room for three snapshots per
/// canister so that loads have older snapshots to choose from, and storage
/// [`STORAGE_PRICE_FACTOR`] times dearer so that canisters run out of cycles within a workload.
pub fn property_config() -> Config {
    Config {
        max_snapshots_per_canister: 3,
        ..with_dear_storage(Config::default())
    }
}

/// How much dearer storage is in [`with_dear_storage`]: enough that a canister holding about a
/// MiB (with its snapshots) cannot pay for the longest [`super::workload::TIME_STEPS`] (10 years)
/// and is uninstalled, while a 30-day freezing threshold still reserves well under the
/// workload canisters' cycles.
pub const STORAGE_PRICE_FACTOR: u128 = 10_000;

/// `config` with storage [`STORAGE_PRICE_FACTOR`] times dearer: what the model tests and the
/// properties run with, so that storage charges and out-of-cycles uninstalls happen in them.
pub fn with_dear_storage(config: Config) -> Config {
    Config {
        storage_cycles_per_gib_second: config
            .storage_cycles_per_gib_second
            .saturating_mul(STORAGE_PRICE_FACTOR),
        ..config
    }
}

/// Runs property `property` (one of [`PROPERTIES`]) once on `ops` against a fresh
/// `StateMachine`: what a printed regression test calls.
pub fn replay(property: &str, ops: &[Operation]) -> Result<(), String> {
    replay_of(CanisterKind::Native, property, ops)
}

/// [`replay`] on canisters running the test canister of `kind`. `delete_frees_exactly` checks
/// against the reference model of the native canister, so it runs on the native kind only.
pub fn replay_of(kind: CanisterKind, property: &str, ops: &[Operation]) -> Result<(), String> {
    let config = property_config();
    let mut machine = MachineReplica::of_kind(kind, config.clone(), CANISTERS);
    match property {
        "load_restores_the_take" => check_load_restores_the_take(&mut machine, ops),
        "snapshots_never_change" => check_snapshots_never_change(&mut machine, ops),
        "delete_frees_exactly" if kind == CanisterKind::Native => {
            check_delete_frees_exactly(&mut machine, &mut Model::new(config, CANISTERS), ops)
        }
        "delete_frees_exactly" => Err(
            "delete_frees_exactly checks against the native canister's model: run it on \
             CanisterKind::Native"
                .into(),
        ),
        "download_upload_load_is_identity" => check_download_upload_load(&mut machine, ops),
        other => Err(format!("no property {other:?}; known: {PROPERTIES:?}")),
    }
}

/// The names [`replay`] knows.
pub const PROPERTIES: [&str; 4] = [
    "load_restores_the_take",
    "snapshots_never_change",
    "delete_frees_exactly",
    "download_upload_load_is_identity",
];

/// Runs `test` on sequences from `ops` under `config`; on failure, shrinks and returns the
/// seed and the minimal sequence. A `Random` seed is replaced by a fixed one first, so that it
/// can be printed (`PROPTEST_RNG_SEED` replays it).
pub fn run_property<S>(
    property: &'static str,
    mut config: ProptestConfig,
    ops: S,
    test: impl Fn(&[Operation]) -> Result<(), String>,
) -> Result<(), PropertyFailure>
where
    S: Strategy<Value = Vec<Operation>>,
{
    if config.rng_seed == RngSeed::Random {
        // Test-side only: the seed of the generation, never part of a replica's state.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        config.rng_seed = RngSeed::Fixed(nanos ^ u64::from(std::process::id()).rotate_left(32));
    }
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => Some(seed),
        RngSeed::Random => None,
    };
    // Failures are reported through the returned value; proptest's file persistence needs a
    // source file, which a library function does not have.
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    match runner.run(&ops, |ops| test(&ops).map_err(TestCaseError::fail)) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, minimal)) => Err(PropertyFailure {
            property,
            seed,
            reason: reason.to_string(),
            minimal,
        }),
        Err(TestError::Abort(reason)) => Err(PropertyFailure {
            property,
            seed,
            reason: format!("aborted: {reason}"),
            minimal: Vec::new(),
        }),
    }
}

/// Property: load after take gives back the take, on a `StateMachine`.
pub fn load_restores_the_take(
    config: ProptestConfig,
    ops: impl Strategy<Value = Vec<Operation>>,
) -> Result<(), PropertyFailure> {
    run_property("load_restores_the_take", config, ops, |ops| {
        replay("load_restores_the_take", ops)
    })
}

/// Property: a snapshot never changes after it is taken, on a `StateMachine`.
pub fn snapshots_never_change(
    config: ProptestConfig,
    ops: impl Strategy<Value = Vec<Operation>>,
) -> Result<(), PropertyFailure> {
    run_property("snapshots_never_change", config, ops, |ops| {
        replay("snapshots_never_change", ops)
    })
}

/// Property: delete frees exactly the pages only that snapshot held, on a `StateMachine`.
pub fn delete_frees_exactly(
    config: ProptestConfig,
    ops: impl Strategy<Value = Vec<Operation>>,
) -> Result<(), PropertyFailure> {
    run_property("delete_frees_exactly", config, ops, |ops| {
        replay("delete_frees_exactly", ops)
    })
}

/// Property: download → upload → load is the identity, on a `StateMachine`.
pub fn download_upload_load_is_identity(
    config: ProptestConfig,
    ops: impl Strategy<Value = Vec<Operation>>,
) -> Result<(), PropertyFailure> {
    run_property("download_upload_load_is_identity", config, ops, |ops| {
        replay("download_upload_load_is_identity", ops)
    })
}

//! Driving a `StateMachine` and the [`Model`] with the same operations, and comparing them.
//!
//! [`assert_matches_model`] runs a sequence on both and stops at the first divergence: of the
//! outcome (accepted, or refused with which `ErrorCode`), or of the observable state after the
//! step (controllers, cycles, version, heap-delta debit, memories byte for byte, globals,
//! certified data, the snapshots and what each holds). The [`Divergence`] names the step, the
//! operation, what the model expected and what the machine did.

use std::fmt;

use candid::Principal;

use super::model::{Image, Model, Outcome};
use super::workload::{
    CanisterIndex, CanisterKind, Message, Operation, canister, setup_messages_of,
};
use crate::config::Config;
use crate::harness::StateMachine;
use crate::memory::Memory;
use crate::replicated_state::ReplicatedState;
use crate::state::{CanisterState, Global};

/// The first place where the machine and the model disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Index of the operation in the sequence.
    pub step: usize,
    pub operation: Operation,
    pub expected: String,
    pub actual: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} {:?}: the model expected {}, the machine gave {}",
            self.step, self.operation, self.expected, self.actual
        )
    }
}

impl std::error::Error for Divergence {}

/// A machine with the workload's canisters created and installed (`setup_messages`).
pub fn workload_machine(config: Config, canisters: u8) -> StateMachine {
    workload_machine_of(CanisterKind::Native, config, canisters)
}

/// [`workload_machine`] with the test canister of `kind`.
pub fn workload_machine_of(kind: CanisterKind, config: Config, canisters: u8) -> StateMachine {
    let mut sm = StateMachine::with_config(config);
    for message in setup_messages_of(kind, canisters) {
        if let Err(err) = sm.update_call(
            message.receiver,
            message.sender,
            &message.method,
            message.payload,
        ) {
            panic!("the workload setup must succeed on a fresh machine: {err}");
        }
    }
    sm
}

/// Runs `op` on the machine as one round (its snapshot picks resolved against the machine's
/// own state); returns its outcome.
pub fn execute(sm: &mut StateMachine, op: &Operation) -> Outcome {
    execute_of(CanisterKind::Native, sm, op)
}

/// [`execute`] on a machine running the test canister of `kind`.
pub fn execute_of(kind: CanisterKind, sm: &mut StateMachine, op: &Operation) -> Outcome {
    let message = op.to_message_of(kind, sm.state());
    send(sm, op, message)
}

/// Sends `message` (what `op` resolved to) as one round, or runs an empty round for `None`,
/// after moving the batch time if `op` is an [`Operation::AdvanceTime`].
fn send(sm: &mut StateMachine, op: &Operation, message: Option<Message>) -> Outcome {
    if let Operation::AdvanceTime { seconds } = op {
        sm.advance_time(std::time::Duration::from_secs(*seconds));
    }
    match message {
        None => {
            sm.tick();
            Outcome::Tick
        }
        Some(m) => match sm.update_call(m.receiver, m.sender, &m.method, m.payload) {
            Ok(_) => Outcome::Accepted,
            Err(reject) => Outcome::Refused(reject.error_code),
        },
    }
}

/// What a live canister or a snapshot holds, read out flat (all empty for a canister without
/// code).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ImageView {
    pub heap: Vec<u8>,
    pub stable: Vec<u8>,
    pub globals: Vec<Global>,
    pub certified_data: Vec<u8>,
}

impl ImageView {
    fn of_model(image: &Image) -> Self {
        ImageView {
            heap: image.heap.bytes.clone(),
            stable: image.stable.bytes.clone(),
            globals: image.exported_globals(),
            certified_data: image.certified_data.clone(),
        }
    }

    fn of_memories(heap: &Memory, stable: &Memory, globals: &[Global], certified: &[u8]) -> Self {
        let flat = |m: &Memory| m.read_vec(0, m.size_bytes()).unwrap_or_default();
        ImageView {
            heap: flat(heap),
            stable: flat(stable),
            globals: globals.to_vec(),
            certified_data: certified.to_vec(),
        }
    }

    /// The first difference from `other`, described without printing whole memories.
    pub fn difference(&self, other: &ImageView) -> Option<(String, String)> {
        fn bytes(what: &str, a: &[u8], b: &[u8]) -> Option<(String, String)> {
            if a == b {
                // `==` on slices is a memcmp even in debug builds; the search below is not.
                return None;
            }
            if a.len() != b.len() {
                return Some((
                    format!("{what} of {} bytes", a.len()),
                    format!("{what} of {} bytes", b.len()),
                ));
            }
            let i = a.iter().zip(b).position(|(x, y)| x != y)?;
            Some((
                format!("{what} byte {i} = {:#04x}", a[i]),
                format!("{what} byte {i} = {:#04x}", b[i]),
            ))
        }
        bytes("heap", &self.heap, &other.heap)
            .or_else(|| bytes("stable memory", &self.stable, &other.stable))
            .or_else(|| {
                (self.globals != other.globals).then(|| {
                    (
                        format!("globals {:?}", self.globals),
                        format!("globals {:?}", other.globals),
                    )
                })
            })
            .or_else(|| {
                bytes(
                    "certified data",
                    &self.certified_data,
                    &other.certified_data,
                )
            })
    }
}

impl fmt::Debug for ImageView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{ heap: {} bytes, stable: {} bytes, globals: {:?}, certified_data: {:?} }}",
            self.heap.len(),
            self.stable.len(),
            self.globals,
            self.certified_data
        )
    }
}

/// Everything the model predicts about one canister.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanisterView {
    pub controllers: Vec<Principal>,
    pub cycles: u128,
    pub freezing_threshold: u64,
    pub version: u64,
    pub heap_delta_debit: u64,
    pub live: ImageView,
    pub snapshots: Vec<(u64, ImageView)>,
}

/// The machine's view of canister `n`.
pub fn observe_machine(state: &ReplicatedState, n: CanisterIndex) -> Option<CanisterView> {
    let c: &CanisterState = state.canisters.get(&canister(n))?;
    let execution = c.execution_state.as_ref();
    let empty = Memory::new();
    let live = ImageView::of_memories(
        execution.map_or(&empty, |e| &e.wasm_memory),
        execution.map_or(&empty, |e| &e.stable_memory),
        execution.map_or(&[][..], |e| &e.exported_globals),
        &c.certified_data,
    );
    let snapshots = state
        .snapshots
        .list(c.canister_id)
        .map(|s| {
            let content = s.content();
            (
                s.id().local_id(),
                ImageView::of_memories(
                    &content.wasm_memory,
                    &content.stable_memory,
                    &content.exported_globals,
                    &content.certified_data,
                ),
            )
        })
        .collect();
    Some(CanisterView {
        controllers: c.controllers.iter().copied().collect(),
        cycles: c.cycles,
        freezing_threshold: c.settings.freezing_threshold,
        version: c.canister_version,
        heap_delta_debit: c.heap_delta_debit,
        live,
        snapshots,
    })
}

/// The model's view of canister `n`.
pub fn observe_model(model: &Model, n: CanisterIndex) -> Option<CanisterView> {
    let c = model.canisters.get(&n)?;
    Some(CanisterView {
        controllers: c.controllers.iter().copied().collect(),
        cycles: c.cycles,
        freezing_threshold: c.freezing_threshold,
        version: c.version,
        heap_delta_debit: c.heap_delta_debit,
        live: c
            .live
            .as_ref()
            .map_or_else(ImageView::default, ImageView::of_model),
        snapshots: c
            .snapshots
            .iter()
            .map(|(id, image)| (*id, ImageView::of_model(image)))
            .collect(),
    })
}

/// The first difference between two views of canister `n`: (expected, actual).
fn view_difference(
    n: CanisterIndex,
    expected: &CanisterView,
    actual: &CanisterView,
) -> Option<(String, String)> {
    let scalar = |what: &str, e: String, a: String| {
        (e != a).then(|| {
            (
                format!("canister {n} {what} {e}"),
                format!("canister {n} {what} {a}"),
            )
        })
    };
    scalar(
        "controllers",
        format!("{:?}", expected.controllers),
        format!("{:?}", actual.controllers),
    )
    .or_else(|| {
        scalar(
            "cycles",
            expected.cycles.to_string(),
            actual.cycles.to_string(),
        )
    })
    .or_else(|| {
        scalar(
            "freezing threshold",
            expected.freezing_threshold.to_string(),
            actual.freezing_threshold.to_string(),
        )
    })
    .or_else(|| {
        scalar(
            "version",
            expected.version.to_string(),
            actual.version.to_string(),
        )
    })
    .or_else(|| {
        scalar(
            "heap-delta debit",
            expected.heap_delta_debit.to_string(),
            actual.heap_delta_debit.to_string(),
        )
    })
    .or_else(|| {
        let live = expected.live.difference(&actual.live)?;
        Some((
            format!("canister {n} live {}", live.0),
            format!("canister {n} live {}", live.1),
        ))
    })
    .or_else(|| {
        let ids = |v: &CanisterView| v.snapshots.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        scalar(
            "snapshot ids",
            format!("{:?}", ids(expected)),
            format!("{:?}", ids(actual)),
        )
    })
    .or_else(|| {
        expected
            .snapshots
            .iter()
            .zip(&actual.snapshots)
            .find_map(|((id, e), (_, a))| {
                let (e, a) = e.difference(a)?;
                Some((
                    format!("canister {n} snapshot {id} {e}"),
                    format!("canister {n} snapshot {id} {a}"),
                ))
            })
    })
}

/// Drives `sm` and `model` (in the same state: see [`workload_machine`] and [`Model::new`])
/// with `ops`, and returns the first divergence of an outcome or of the state after a step.
pub fn run_against_model(
    sm: &mut StateMachine,
    model: &mut Model,
    ops: &[Operation],
) -> Result<(), Divergence> {
    let canisters: Vec<CanisterIndex> = model.canisters.keys().copied().collect();
    for (step, op) in ops.iter().enumerate() {
        let diverged = |expected: String, actual: String| Divergence {
            step,
            operation: op.clone(),
            expected,
            actual,
        };
        // Resolved against the model, so that both get the same message even if the machine
        // has already gone wrong in a way the views do not show.
        let message = op.to_message(&*model);
        let expected = model.step(op);
        let actual = send(sm, op, message);
        if expected != actual {
            return Err(diverged(format!("{expected:?}"), format!("{actual:?}")));
        }
        for &n in &canisters {
            let e = observe_model(model, n);
            let a = observe_machine(sm.state(), n);
            match (e, a) {
                (Some(e), Some(a)) => {
                    if let Some((e, a)) = view_difference(n, &e, &a) {
                        return Err(diverged(e, a));
                    }
                }
                (e, a) => {
                    return Err(diverged(
                        format!("canister {n} exists: {}", e.is_some()),
                        format!("canister {n} exists: {}", a.is_some()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Runs `ops` on a fresh machine and a fresh model with `config` and `canisters` canisters and
/// returns the first divergence. This project's own model test, and a user's, is this call.
pub fn assert_matches_model(
    config: &Config,
    canisters: u8,
    ops: &[Operation],
) -> Result<(), Divergence> {
    let mut sm = workload_machine(config.clone(), canisters);
    let mut model = Model::new(config.clone(), canisters);
    run_against_model(&mut sm, &mut model, ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::workload::WorkloadShape;

    /// Seeded workloads (the simulator's generator) agree with the model, with a quota of two
    /// and a small heap-delta allowance so that quota and rate limit are both reached, and dear
    /// storage so that canisters run out of cycles.
    #[test]
    fn seeded_workloads_match_the_model() {
        let config = Config {
            max_snapshots_per_canister: 2,
            heap_delta_rate_limit_bytes: 256 << 10,
            ..crate::testing::properties::with_dear_storage(Config::default())
        };
        let shape = WorkloadShape::default();
        let mut uninstalled = 0;
        for seed in 0..8 {
            let ops = shape.generate(seed, 60);
            let mut sm = workload_machine(config.clone(), shape.canisters);
            let mut model = Model::new(config.clone(), shape.canisters);
            if let Err(divergence) = run_against_model(&mut sm, &mut model, &ops) {
                panic!("seed {seed}: {divergence}");
            }
            uninstalled += model
                .canisters
                .values()
                .filter(|c| c.live.is_none())
                .count();
        }
        assert!(
            uninstalled > 0,
            "no canister ran out of cycles: the charges went untested"
        );
    }
}

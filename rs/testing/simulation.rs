//! Replica agreement under simulation (issue 8): one seeded stream of batches fed to replicas
//! that differ only in `Config::scheduler_threads`, with the invariants checked after every
//! round.
//!
//! The stream is the [`super::workload`] vocabulary (writes, traps, takes, loads across
//! canisters, deletes, controllers changing, freezing thresholds that make canisters run out of
//! cycles, upgrades) plus what this module adds: snapshot schedules set through the
//! `update_settings` extension (so scheduled snapshots fire), snapshot uploads (metadata,
//! then module bytes or Wasm chunks), and canister creations. Batch time advances 0 to 3
//! seconds a round (up to 2 days in the [`SubnetShape::DearStorage`] shape).
//!
//! A [`SubnetShape`] picks the subnet's limits, so that each rule that can refuse a message
//! binds in some shape: the subnet's memory capacity, where the canisters of a round compete
//! for their shares of the free memory on each thread (`spec/execution.md`, "Threads"); the
//! heap-delta rate limit; the number of canisters; and storage charges that exhaust cycles.
//! The [`SimulationReport`] counts refusals by error code, so a test can require that the rule
//! it targets did refuse messages during the run, and agreement at 1, 2 and 4 threads then
//! covers it.
//!
//! After each round ([`check_round`]): every replica gave the same outcomes and has the same
//! `state_hash`; running memory totals equal a recount; a snapshot, once taken (or sealed by a
//! load), keeps its checksum; a snapshot id or canister id, once gone, never comes back; and
//! the refused messages left the state unchanged: a twin of the first replica that runs the
//! same round without them ends with the same hash. A failure names the seed and the round.
//!
//! [`SimulationOptions::kind`] picks the test canister: the native one, or the same interface as
//! real WebAssembly on wasmtime (`simulate --wasm`), so that agreement at every thread count
//! holds for Wasm execution too.
//!
//! **Never** reads the clock, a random source or thread timing: a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};

use candid::{Encode, Principal};
use ic_error_types::ErrorCode;
use ic_management_canister_types::{
    CanisterSettings, ProvisionalCreateCanisterWithCyclesArgs, SnapshotDataOffset,
};

use super::workload::{
    CanisterKind, Operation, Rng, WorkloadShape, caller, canister, setup_messages_of,
};
use crate::config::Config;
use crate::management::types::{
    SnapshotScheduleArgs, SnapshotScheduleChange, UpdateSettingsArgs,
    UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
};
use crate::replicated_state::ReplicatedState;
use crate::scheduler::{Batch, ExecutionLoop, IngressResult};
use crate::snapshots::SnapshotId;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulationOptions {
    pub seed: u64,
    pub rounds: u64,
    /// One replica per entry, with that many scheduler threads. At least one.
    pub threads: Vec<usize>,
    /// Canisters of the workload (at most 255).
    pub canisters: u8,
    /// Most messages in one batch.
    pub max_messages_per_round: u64,
    /// Which limits of the subnet bind.
    pub shape: SubnetShape,
    /// The test canister the workload installs: native, or real WebAssembly on wasmtime.
    pub kind: CanisterKind,
}

/// The subnet the replicas simulate: [`Roomy`](SubnetShape::Roomy) has the IC's application
/// subnet limits, where only cycles, quotas and the workload's own errors refuse messages; each
/// other shape tightens one limit until it binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubnetShape {
    #[default]
    Roomy,
    /// 4 MiB of subnet memory for canisters and snapshots: growth is refused
    /// (`SubnetOversubscribed`) by management messages and, in the canister phase, whenever a
    /// canister outgrows its share of the free memory among the canisters of its round.
    Crowded,
    /// A heap-delta allowance of 64 KiB a round: takes, loads and uploads wait
    /// (`CanisterHeapDeltaRateLimited`).
    RateLimited,
    /// Room for two canisters beyond the workload's: creations are refused
    /// (`MaxNumberOfCanistersReached`).
    CanisterLimited,
    /// Storage 100,000 times dearer and rounds up to two days apart: canisters run out of
    /// cycles and are uninstalled with their snapshots (`spec/management.md`, "Storage
    /// charges").
    DearStorage,
}

impl SubnetShape {
    pub const ALL: [SubnetShape; 5] = [
        SubnetShape::Roomy,
        SubnetShape::Crowded,
        SubnetShape::RateLimited,
        SubnetShape::CanisterLimited,
        SubnetShape::DearStorage,
    ];

    /// The name `canister-snapshots simulate --shape` takes.
    pub fn name(self) -> &'static str {
        match self {
            SubnetShape::Roomy => "roomy",
            SubnetShape::Crowded => "crowded",
            SubnetShape::RateLimited => "rate-limited",
            SubnetShape::CanisterLimited => "canister-limited",
            SubnetShape::DearStorage => "dear-storage",
        }
    }

    /// The configuration of a replica of this shape with `threads` scheduler threads, running
    /// a workload of `canisters` canisters.
    pub fn config(self, threads: usize, canisters: u8) -> Config {
        let config = simulation_config(threads);
        match self {
            SubnetShape::Roomy => config,
            SubnetShape::Crowded => Config {
                subnet_memory_capacity_bytes: 4 << 20,
                ..config
            },
            SubnetShape::RateLimited => Config {
                heap_delta_rate_limit_bytes: 64 << 10,
                ..config
            },
            SubnetShape::CanisterLimited => Config {
                max_number_of_canisters: u64::from(canisters) + 2,
                ..config
            },
            SubnetShape::DearStorage => Config {
                storage_cycles_per_gib_second: config
                    .storage_cycles_per_gib_second
                    .saturating_mul(100_000),
                ..config
            },
        }
    }

    /// The most batch time one round advances, in seconds.
    fn max_round_seconds(self) -> u64 {
        match self {
            SubnetShape::DearStorage => 2 * 86_400,
            _ => 3,
        }
    }
}

impl std::fmt::Display for SubnetShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SubnetShape {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        SubnetShape::ALL
            .into_iter()
            .find(|shape| shape.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = SubnetShape::ALL.iter().map(|s| s.name()).collect();
                format!("unknown subnet shape '{name}': one of {}", names.join(", "))
            })
    }
}

impl Default for SimulationOptions {
    fn default() -> Self {
        SimulationOptions {
            seed: 0,
            rounds: 100,
            threads: vec![1, 2, 4],
            canisters: 4,
            max_messages_per_round: 8,
            shape: SubnetShape::Roomy,
            kind: CanisterKind::Native,
        }
    }
}

/// Counts of what a simulation ran, for its report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimulationReport {
    pub rounds: u64,
    pub messages: u64,
    pub refused: u64,
    pub snapshots_seen: u64,
    pub scheduled_snapshots: u64,
    /// Refused subnet messages (to `aaaaa-aa`) by `ErrorCode` number.
    pub subnet_refusals: BTreeMap<u64, u64>,
    /// Refused canister messages by `ErrorCode` number.
    pub canister_refusals: BTreeMap<u64, u64>,
    /// Canisters that lost their code for lack of cycles (the workload never uninstalls).
    pub uninstalled_out_of_cycles: u64,
}

impl SimulationReport {
    /// Subnet and canister messages refused with `code`.
    pub fn refused_with(&self, code: ErrorCode) -> u64 {
        let count = |map: &BTreeMap<u64, u64>| map.get(&(code as u64)).copied().unwrap_or(0);
        count(&self.subnet_refusals) + count(&self.canister_refusals)
    }

    /// Canister messages refused with `code`.
    pub fn canister_refused_with(&self, code: ErrorCode) -> u64 {
        self.canister_refusals
            .get(&(code as u64))
            .copied()
            .unwrap_or(0)
    }
}

/// An invariant that failed, with the seed, shape and round that replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulationFailure {
    pub seed: u64,
    pub shape: SubnetShape,
    pub round: u64,
    pub what: String,
    pub kind: CanisterKind,
}

impl std::fmt::Display for SimulationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulation seed {} ({} subnet) failed at round {}: {}. Replay: \
             canister-snapshots simulate --seed {} --shape {} --rounds {}{}",
            self.seed,
            self.shape,
            self.round,
            self.what,
            self.seed,
            self.shape,
            self.round + 1,
            if self.kind == CanisterKind::Wasm {
                " --wasm"
            } else {
                ""
            }
        )
    }
}

impl std::error::Error for SimulationFailure {}

/// The subnet configuration of every replica, but for its thread count.
pub fn simulation_config(threads: usize) -> Config {
    Config {
        scheduler_threads: threads,
        max_snapshots_per_canister: 3,
        ..Config::default()
    }
}

struct Replica {
    execution: ExecutionLoop,
    state: ReplicatedState,
}

/// What the checks remember across rounds.
#[derive(Default)]
struct History {
    /// The checksum of every immutable snapshot seen (taken, or uploaded and sealed).
    checksums: BTreeMap<SnapshotId, [u8; 32]>,
    /// Every snapshot id seen, and those seen and then gone.
    seen: BTreeSet<SnapshotId>,
    gone: BTreeSet<SnapshotId>,
}

/// Runs the simulation; `Err` names the first invariant that failed.
pub fn simulate(options: &SimulationOptions) -> Result<SimulationReport, SimulationFailure> {
    let fail = |round: u64, what: String| SimulationFailure {
        seed: options.seed,
        shape: options.shape,
        round,
        what,
        kind: options.kind,
    };
    if options.threads.is_empty() {
        return Err(fail(0, "no replica: give at least one thread count".into()));
    }
    let mut replicas: Vec<Replica> = options
        .threads
        .iter()
        .map(|&threads| {
            let config = options.shape.config(threads, options.canisters);
            let execution = ExecutionLoop::new(config, options.kind.engine());
            let state = execution.new_state();
            Replica { execution, state }
        })
        .collect();
    let mut next_message_id = 0u64;
    for message in setup_messages_of(options.kind, options.canisters) {
        for replica in &mut replicas {
            let batch = Batch {
                time: replica.state.time,
                ingress: vec![message.clone().into_ingress(next_message_id)],
            };
            let results = replica.execution.execute_round(&mut replica.state, batch);
            if let Some((_, Err(err))) = results.first() {
                return Err(fail(0, format!("setup message refused: {err}")));
            }
        }
        next_message_id += 1;
    }
    let shape = WorkloadShape {
        canisters: options.canisters,
        ..WorkloadShape::default()
    };
    let mut rng = Rng::new(options.seed);
    let mut history = History::default();
    let mut report = SimulationReport::default();
    for round in 0..options.rounds {
        let view = &replicas[0].state;
        let seconds = rng.below(options.shape.max_round_seconds() + 1);
        let time = view.time.saturating_add(seconds * 1_000_000_000);
        let count = rng.below(options.max_messages_per_round + 1);
        let mut ingress = Vec::new();
        for _ in 0..count {
            let Some(message) = next_message(options, &shape, &mut rng, view) else {
                continue;
            };
            ingress.push(message.into_ingress(next_message_id));
            next_message_id += 1;
        }
        report.messages += ingress.len() as u64;
        let batch = Batch { time, ingress };
        let twin_state = replicas[0].state.clone();
        let mut outcomes: Vec<Vec<IngressResult>> = Vec::new();
        for replica in &mut replicas {
            outcomes.push(
                replica
                    .execution
                    .execute_round(&mut replica.state, batch.clone()),
            );
        }
        let refused: BTreeSet<u64> = outcomes[0]
            .iter()
            .filter(|(_, result)| result.is_err())
            .map(|(id, _)| *id)
            .collect();
        report.refused += refused.len() as u64;
        for (id, result) in &outcomes[0] {
            let (Err(err), Some(message)) =
                (result, batch.ingress.iter().find(|m| m.message_id == *id))
            else {
                continue;
            };
            let refusals = if message.receiver == Principal::management_canister() {
                &mut report.subnet_refusals
            } else {
                &mut report.canister_refusals
            };
            *refusals.entry(err.code() as u64).or_default() += 1;
        }
        report.uninstalled_out_of_cycles += twin_state
            .canisters
            .iter()
            .filter(|(id, before)| {
                before.execution_state.is_some()
                    && replicas[0]
                        .state
                        .canisters
                        .get(id)
                        .is_some_and(|after| after.execution_state.is_none())
            })
            .count() as u64;
        // The twin: the same round without the refused messages must end in the same state.
        let mut twin = twin_state;
        let accepted = Batch {
            time,
            ingress: batch
                .ingress
                .iter()
                .filter(|m| !refused.contains(&m.message_id))
                .cloned()
                .collect(),
        };
        replicas[0].execution.execute_round(&mut twin, accepted);
        check_round(&replicas, &outcomes, &twin, &mut history).map_err(|what| fail(round, what))?;
        report.rounds += 1;
    }
    report.snapshots_seen = history.seen.len() as u64;
    report.scheduled_snapshots = replicas[0]
        .state
        .snapshots
        .iter()
        .filter(|s| s.label.as_deref() == Some("scheduled"))
        .count() as u64;
    Ok(report)
}

/// The invariants of one round (see the module docs).
fn check_round(
    replicas: &[Replica],
    outcomes: &[Vec<IngressResult>],
    twin: &ReplicatedState,
    history: &mut History,
) -> Result<(), String> {
    let first = &replicas[0];
    let hash = first.state.state_hash();
    for (replica, outcome) in replicas.iter().zip(outcomes).skip(1) {
        let threads = replica.execution.config().scheduler_threads;
        if *outcome != outcomes[0] {
            return Err(format!(
                "outcomes with {threads} threads differ from those with {}",
                first.execution.config().scheduler_threads
            ));
        }
        if replica.state.state_hash() != hash {
            return Err(format!("state_hash with {threads} threads differs"));
        }
    }
    for replica in replicas {
        replica.state.check_accounting()?;
    }
    if twin.state_hash() != hash {
        return Err("a refused message changed the state (the twin without it differs)".into());
    }
    let state = &first.state;
    let present: BTreeSet<SnapshotId> = state.snapshots.iter().map(|s| s.id().clone()).collect();
    for snapshot in state.snapshots.iter() {
        let id = snapshot.id();
        if history.gone.contains(id) {
            return Err(format!("snapshot id {id} was reused"));
        }
        history.seen.insert(id.clone());
        if snapshot.accepts_data() {
            continue; // an upload in progress may still change
        }
        let checksum = snapshot.checksum();
        if let Some(old) = history.checksums.insert(id.clone(), checksum)
            && old != checksum
        {
            return Err(format!("snapshot {id} changed after it was taken"));
        }
    }
    for id in history.seen.difference(&present) {
        history.gone.insert(id.clone());
    }
    for id in &state.deleted_canisters {
        if state.canisters.contains_key(id) {
            return Err(format!("canister id {id} was reused"));
        }
    }
    Ok(())
}

/// One message of the stream: mostly the shared workload; sometimes a schedule or an upload.
fn next_message(
    options: &SimulationOptions,
    shape: &WorkloadShape,
    rng: &mut Rng,
    view: &ReplicatedState,
) -> Option<super::workload::Message> {
    let (canisters, module) = (options.canisters, options.kind.wasm_module());
    let target = rng.below(u64::from(canisters.max(1))) as u8;
    let controller = caller(0);
    match rng.below(20) {
        19 => Some(management(
            controller,
            "provisional_create_canister_with_cycles",
            Encode!(&ProvisionalCreateCanisterWithCyclesArgs {
                amount: None,
                settings: None,
                specified_id: None,
                sender_canister_version: None,
            }),
        )),
        0 => {
            let change = if rng.percent(20) {
                SnapshotScheduleChange::Clear
            } else {
                SnapshotScheduleChange::Set(SnapshotScheduleArgs {
                    interval_seconds: 1 + rng.below(8),
                    keep: 1 + rng.below(2),
                    only_when_stopped: Some(rng.percent(20)),
                })
            };
            let args = UpdateSettingsArgs {
                canister_id: canister(target),
                settings: CanisterSettings::default(),
                sender_canister_version: None,
                snapshot_schedule: Some(change),
            };
            Some(management(controller, "update_settings", Encode!(&args)))
        }
        1 => {
            let mut args = UploadCanisterSnapshotMetadataArgs {
                canister_id: canister(target),
                replace_snapshot: None,
                wasm_module_size: module.len() as u64,
                globals: vec![ic_management_canister_types::SnapshotMetadataGlobal::I64(0); 2],
                wasm_memory_size: 65_536 * rng.below(3),
                stable_memory_size: 0,
                certified_data: vec![],
                global_timer: None,
                on_low_wasm_memory_hook_status: None,
                base_snapshot: None,
            };
            if rng.percent(30) {
                args.replace_snapshot = view
                    .snapshots
                    .list(canister(target))
                    .next()
                    .map(|s| s.id().to_bytes().into());
            }
            Some(management(
                controller,
                "upload_canister_snapshot_metadata",
                Encode!(&args),
            ))
        }
        2 | 3 => {
            // Data into an upload in progress: the whole module, or a small Wasm chunk.
            let snapshot = view
                .snapshots
                .list(canister(target))
                .find(|s| s.accepts_data())?;
            let (kind, chunk) = if rng.percent(50) {
                let kind = SnapshotDataOffset::WasmModule { offset: 0 };
                (kind, module.to_vec())
            } else {
                (SnapshotDataOffset::WasmChunk, vec![rng.byte(); 64])
            };
            let args = UploadCanisterSnapshotDataArgs {
                canister_id: canister(target),
                snapshot_id: snapshot.id().to_bytes(),
                kind,
                chunk,
            };
            Some(management(
                controller,
                "upload_canister_snapshot_data",
                Encode!(&args),
            ))
        }
        _ => match shape.operation(rng) {
            Operation::Tick => None,
            operation => operation.to_message_of(options.kind, view),
        },
    }
}

fn management(
    sender: Principal,
    method: &str,
    payload: candid::Result<Vec<u8>>,
) -> super::workload::Message {
    super::workload::Message {
        sender,
        receiver: Principal::management_canister(),
        method: method.to_string(),
        payload: payload.expect("encoding a fixed Candid type cannot fail"),
    }
}

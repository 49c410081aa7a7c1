//! Replica agreement under simulation (`canister_snapshots::testing::simulation`): random
//! streams on replicas with 1, 2 and 4 threads agree after every round and keep every
//! invariant. Bounded for CI; `canister-snapshots simulate` runs it for as long as you like.

use canister_snapshots::testing::simulation::{
    SimulationOptions, SimulationReport, SubnetShape, simulate,
};
use canister_snapshots::testing::workload::CanisterKind;
use ic_error_types::ErrorCode;

#[test]
fn replicas_with_1_2_and_4_threads_agree_on_random_streams() {
    let rounds = std::env::var("SIMULATION_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    for seed in 0..2 {
        let options = SimulationOptions {
            seed,
            rounds,
            ..SimulationOptions::default()
        };
        let report = simulate(&options).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.rounds, rounds);
        // The stream exercised what it is meant to: refusals, snapshots, schedules firing.
        assert!(report.refused > 0, "seed {seed}: {report:?}");
        assert!(report.snapshots_seen > 0, "seed {seed}: {report:?}");
        assert!(report.messages > rounds, "seed {seed}: {report:?}");
    }
}

/// The same agreement with the workload on real WebAssembly (the Wasm test canister on
/// wasmtime): replicas at 1, 2 and 4 threads give the same outcomes and the same `state_hash`
/// after every round.
#[test]
fn wasm_replicas_with_1_2_and_4_threads_agree_on_random_streams() {
    for seed in 0..2 {
        let options = SimulationOptions {
            seed,
            rounds: 40,
            kind: CanisterKind::Wasm,
            ..SimulationOptions::default()
        };
        let report = simulate(&options).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.rounds, 40);
        assert!(report.refused > 0, "seed {seed}: {report:?}");
        assert!(report.snapshots_seen > 0, "seed {seed}: {report:?}");
        // Canister messages ran as Wasm and some trapped (the workload's `trap`).
        assert!(
            report.canister_refused_with(ErrorCode::CanisterCalledTrap) > 0,
            "seed {seed}: {report:?}"
        );
    }
}

#[test]
fn scheduled_snapshots_fire_in_the_simulation() {
    let mut fired = 0;
    for seed in 0..2 {
        let options = SimulationOptions {
            seed,
            rounds: 150,
            threads: vec![1],
            ..SimulationOptions::default()
        };
        fired += simulate(&options).unwrap().scheduled_snapshots;
    }
    assert!(
        fired > 0,
        "no scheduled snapshot was standing at the end of any run"
    );
}

/// Runs `shape` for seeds 0 and 1 at 1, 2 and 4 threads (agreement and every invariant checked
/// after each round) and returns the reports.
fn run_shape(shape: SubnetShape, rounds: u64) -> Vec<SimulationReport> {
    (0..2)
        .map(|seed| {
            let options = SimulationOptions {
                seed,
                rounds,
                shape,
                ..SimulationOptions::default()
            };
            simulate(&options).unwrap_or_else(|failure| panic!("{failure}"))
        })
        .collect()
}

fn total(reports: &[SimulationReport], count: impl Fn(&SimulationReport) -> u64) -> u64 {
    reports.iter().map(count).sum()
}

/// Little subnet memory: the canisters of a round compete for their shares of the free memory
/// on each thread, and growth beyond a share is refused in the canister phase, as management
/// messages are refused beyond the capacity; replicas at 1, 2 and 4 threads still agree.
#[test]
fn a_crowded_subnet_refuses_growth_beyond_each_canisters_share_at_any_thread_count() {
    let reports = run_shape(SubnetShape::Crowded, 100);
    let in_phase = total(&reports, |r| {
        r.canister_refused_with(ErrorCode::SubnetOversubscribed)
    });
    assert!(
        in_phase >= 10,
        "canister messages refused for their share: {reports:?}"
    );
    let by_management = total(&reports, |r| {
        r.subnet_refusals
            .get(&(ErrorCode::SubnetOversubscribed as u64))
            .copied()
            .unwrap_or(0)
    });
    assert!(by_management > 0, "{reports:?}");
}

/// A small heap-delta allowance: takes, loads and uploads are refused until rounds drain the
/// debit, and replicas at 1, 2 and 4 threads agree on when.
#[test]
fn a_rate_limited_subnet_refuses_snapshot_operations_at_any_thread_count() {
    let reports = run_shape(SubnetShape::RateLimited, 100);
    assert!(
        total(&reports, |r| r
            .refused_with(ErrorCode::CanisterHeapDeltaRateLimited))
            >= 10,
        "{reports:?}"
    );
}

/// Room for two more canisters than the workload's: creations beyond it are refused, and
/// replicas at 1, 2 and 4 threads agree.
#[test]
fn a_full_subnet_refuses_new_canisters_at_any_thread_count() {
    let reports = run_shape(SubnetShape::CanisterLimited, 100);
    assert!(
        total(&reports, |r| r
            .refused_with(ErrorCode::MaxNumberOfCanistersReached))
            > 0,
        "{reports:?}"
    );
}

/// Dear storage and rounds days apart: canisters run out of cycles and are uninstalled with
/// their snapshots, the same way at 1, 2 and 4 threads.
#[test]
fn canisters_run_out_of_cycles_alike_at_any_thread_count() {
    let reports = run_shape(SubnetShape::DearStorage, 100);
    assert!(
        total(&reports, |r| r.uninstalled_out_of_cycles) > 0,
        "{reports:?}"
    );
}

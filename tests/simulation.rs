//! Replica agreement under simulation (`canister_snapshots::testing::simulation`): random
//! streams on replicas with 1, 2 and 4 threads agree after every round and keep every
//! invariant. Bounded for CI; `canister-snapshots simulate` runs it for as long as you like.

use canister_snapshots::testing::simulation::{SimulationOptions, simulate};

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

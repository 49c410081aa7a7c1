//! Property-testing state restore from your own crate, as a user of `canister-snapshots` would:
//! depend on it with the `proptest` feature, describe the operations your canister sees, and
//! run the shipped restore properties.
//!
//! ```toml
//! [dev-dependencies]
//! canister-snapshots = { version = "0.1", features = ["proptest"] }
//! proptest = "1"
//! ```
//!
//! Run with `cargo run --example restore_properties --features proptest`. A failure prints the
//! seed and the minimal sequence as a `#[test]` to paste back as a regression test.

use canister_snapshots::testing::properties::{load_restores_the_take, snapshots_never_change};
use canister_snapshots::testing::strategies::operations;
use canister_snapshots::testing::workload::WorkloadShape;
use proptest::test_runner::Config as ProptestConfig;

fn main() {
    // Our canister mostly writes memory and takes snapshots; bias the workload toward that.
    let shape = WorkloadShape {
        memory_weight: 10,
        snapshot_weight: 6,
        canister_weight: 2,
        settings_weight: 1,
        ..WorkloadShape::default()
    };
    let config = ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    };

    // 1. After any sequence of writes, upgrades, snapshots and loads, a load gives back exactly
    //    the state at the take.
    if let Err(failure) = load_restores_the_take(config.clone(), operations(&shape, 1..=25)) {
        eprintln!("{failure}");
        std::process::exit(1);
    }
    println!("load restores the take: {} cases passed", config.cases);

    // 2. A snapshot never changes after it is taken.
    if let Err(failure) = snapshots_never_change(config.clone(), operations(&shape, 1..=25)) {
        eprintln!("{failure}");
        std::process::exit(1);
    }
    println!("snapshots never change: {} cases passed", config.cases);
}

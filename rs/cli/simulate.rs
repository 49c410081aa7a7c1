//! `canister-snapshots simulate`: replica agreement under simulation
//! ([`crate::testing::simulation`]) from the command line, for runs longer than CI's.

use std::time::Instant;

use crate::testing::simulation::{SimulationOptions, SubnetShape, simulate};
use crate::testing::workload::CanisterKind;

/// Runs `rounds` rounds of seed `seed` on one replica per entry of `threads`, on a subnet of
/// `shape`, with the Wasm test canister if `wasm`; prints a report, or returns the failure
/// with what replays it.
pub fn run(
    seed: u64,
    rounds: u64,
    threads: Vec<usize>,
    shape: SubnetShape,
    wasm: bool,
) -> Result<(), String> {
    if threads.is_empty() || threads.contains(&0) {
        return Err("--threads takes a list of thread counts of at least 1, e.g. 1,2,4".into());
    }
    let options = SimulationOptions {
        seed,
        rounds,
        threads: threads.clone(),
        shape,
        kind: if wasm {
            CanisterKind::Wasm
        } else {
            CanisterKind::Native
        },
        ..SimulationOptions::default()
    };
    // The wall clock measures the run for the report only; the simulation never sees it.
    let started = Instant::now();
    let report = simulate(&options).map_err(|failure| failure.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seed {seed} ({shape} subnet): {} rounds on replicas with {threads:?} threads agreed ({} \
         messages, {} refused (by error code: subnet messages {:?}, canister messages {:?}), {} \
         canisters out of cycles, {} snapshot ids, {} scheduled snapshots standing) in \
         {seconds:.1} s ({:.0} rounds/min)",
        report.rounds,
        report.messages,
        report.refused,
        report.subnet_refusals,
        report.canister_refusals,
        report.uninstalled_out_of_cycles,
        report.snapshots_seen,
        report.scheduled_snapshots,
        report.rounds as f64 * 60.0 / seconds.max(1e-9)
    );
    Ok(())
}

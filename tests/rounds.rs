//! Parallel rounds (`spec/execution.md`, "Threads"): the same batches give the same outcomes
//! and `state_hash` after every round whatever `Config::scheduler_threads` is, and
//! `submit_call`/`await_call` let many messages share a round.

mod common;

use candid::{Encode, Principal};
use canister_snapshots::{Config, StateMachine};
use common::*;
use ic_error_types::{ErrorCode, RejectCode};
use serde_bytes::ByteBuf;

/// Runs the same rounds on a machine with `threads` workers; returns every outcome and the
/// state hash after every round.
fn run(threads: usize) -> (Vec<String>, Vec<[u8; 32]>) {
    let config = Config {
        scheduler_threads: threads,
        // Tight enough that the canisters of a round compete for the subnet's free memory.
        subnet_memory_capacity_bytes: 4 << 20,
        ..Config::default()
    };
    let mut sm = StateMachine::with_config(config);
    let canisters: Vec<TestCanister> = (0..7).map(|_| install_new(&mut sm, controller())).collect();
    let mut outcomes = Vec::new();
    let mut hashes = Vec::new();
    for round in 0u64..6 {
        let mut ids = Vec::new();
        for (i, c) in canisters.iter().enumerate() {
            let i = i as u64;
            // Growing writes of different sizes, a trap, a read: every kind of outcome.
            let offset = (round * 7 + i) * 100_000;
            let data = ByteBuf::from(vec![(round + i) as u8; 70_000]);
            let write = Encode!(&offset, &data).unwrap();
            ids.push(sm.submit_call(c.id, c.sender, "write_heap", write).unwrap());
            if i % 3 == round % 3 {
                let trap = Encode!(&"boom").unwrap();
                ids.push(sm.submit_call(c.id, c.sender, "trap", trap).unwrap());
            }
            let read = Encode!(&0u64, &16u64).unwrap();
            ids.push(sm.submit_call(c.id, c.sender, "read_heap", read).unwrap());
        }
        // A message to a canister that does not exist, amid the others.
        let missing = Principal::from_slice(&[0xFF; 10]);
        ids.push(
            sm.submit_call(missing, controller(), "read_heap", vec![])
                .unwrap(),
        );
        sm.tick();
        for id in ids {
            outcomes.push(format!("{id}: {:?}", sm.await_call(id)));
        }
        hashes.push(sm.state_hash());
    }
    (outcomes, hashes)
}

#[test]
fn outcomes_and_state_hash_do_not_depend_on_the_thread_count() {
    let (outcomes_1, hashes_1) = run(1);
    // The workload reaches the subnet's capacity, so the share rule decides outcomes.
    assert!(
        outcomes_1
            .iter()
            .any(|o| o.contains("SubnetOversubscribed")),
        "the workload must reach the subnet's capacity"
    );
    assert!(outcomes_1.iter().any(|o| o.contains("Ok(")));
    for threads in [2, 4] {
        let (outcomes, hashes) = run(threads);
        assert_eq!(outcomes, outcomes_1, "outcomes with {threads} threads");
        assert_eq!(hashes, hashes_1, "state hashes with {threads} threads");
    }
}

#[test]
fn submitted_messages_share_one_round() {
    let (mut sm, c) = env();
    let other = install_new(&mut sm, controller());
    let round = sm.state().round;
    let write = |byte: u8| Encode!(&0u64, &ByteBuf::from(vec![byte; 8])).unwrap();
    let a = sm
        .submit_call(c.id, c.sender, "write_heap", write(1))
        .unwrap();
    let b = sm
        .submit_call(other.id, other.sender, "write_heap", write(2))
        .unwrap();
    let d = sm
        .submit_call(c.id, c.sender, "write_heap", write(3))
        .unwrap();
    assert_eq!(sm.state().round, round, "submitting executes nothing");
    sm.await_call(b).unwrap();
    assert_eq!(sm.state().round, round + 1, "one round executed all three");
    // Already executed: awaiting them executes no round; in arrival order per canister.
    sm.await_call(a).unwrap();
    sm.await_call(d).unwrap();
    assert_eq!(sm.state().round, round + 1);
    assert_eq!(c.read(&mut sm, false, 0, 8), vec![3; 8]);
    assert_eq!(other.read(&mut sm, false, 0, 8), vec![2; 8]);
    // Each outcome is handed out once; an id never submitted is refused, not waited for.
    let rounds = sm.state().round;
    assert_reject(
        sm.await_call(a),
        ErrorCode::IngressMessageTimeout,
        RejectCode::SysTransient,
        &["unknown"],
    );
    assert_reject(
        sm.await_call(9_999),
        ErrorCode::IngressMessageTimeout,
        RejectCode::SysTransient,
        &["unknown"],
    );
    assert_eq!(sm.state().round, rounds);
}

//! Storage charges over batch time (`spec/management.md`, "Storage charges"): a canister pays
//! for its memory and its snapshots' as batch time passes, at the rate `canister_status`
//! reports as `idle_cycles_burned_per_day`, and one that cannot pay is uninstalled and loses
//! its snapshots, as on the replica.
//!
//! Twin-state method: two machines built the same way, differing in one thing (a snapshot, the
//! balance, how batch time is cut into rounds, the thread count), run the same rounds; what
//! they must differ in afterwards is asserted exactly, and everything else must be equal.

mod common;

use std::time::Duration;

use candid::Nat;
use canister_snapshots::{Config, StateMachine};
use common::{TestCanister, contents, env_with_config, populate, populated_env};

const DAY: Duration = Duration::from_secs(86_400);

/// The memory the canister is charged for: its own and its snapshots'.
fn charged_memory(sm: &StateMachine, c: &TestCanister) -> u64 {
    let state = sm.state();
    state.canister_memory_usage(&state.canisters[&c.id])
}

fn snapshot_count(sm: &StateMachine, c: &TestCanister) -> usize {
    sm.state().snapshots.list(c.id).count()
}

/// A populated canister with a snapshot and its twin without one, at the same round and
/// time: after a day, each has paid exactly a day of its own memory, the snapshot's bytes
/// included, and `idle_cycles_burned_per_day` said so beforehand.
#[test]
fn a_snapshot_costs_storage_over_batch_time() {
    let (mut sm, c, _) = populated_env(true);
    let (mut twin, t, _) = populated_env(false);
    twin.tick(); // the round the take took
    assert_eq!(
        (sm.state().round, sm.get_time()),
        (twin.state().round, twin.get_time())
    );
    let status = sm.canister_status(c.id, Some(c.sender)).unwrap();
    twin.canister_status(t.id, Some(t.sender)).unwrap();
    let (memory, twin_memory) = (charged_memory(&sm, &c), charged_memory(&twin, &t));
    let snapshot_size = sm.state().snapshots.snapshots_size(c.id);
    assert_eq!(memory, twin_memory + snapshot_size);
    let (before, twin_before) = (c.cycles(&sm), t.cycles(&twin));

    sm.advance_time(DAY);
    sm.tick();
    twin.advance_time(DAY);
    twin.tick();

    let config = sm.config().clone();
    let charged = before - c.cycles(&sm);
    assert_eq!(charged, config.idle_cycles_burned_per_day(memory));
    assert_eq!(Nat::from(charged), status.idle_cycles_burned_per_day);
    assert_eq!(
        twin_before - t.cycles(&twin),
        config.idle_cycles_burned_per_day(twin_memory)
    );
    assert!(
        charged > twin_before - t.cycles(&twin),
        "the snapshot is paid for"
    );
    // Nothing else differs: the snapshot (and the counter that named it) and the balance.
    let (mut a, mut b) = (contents(sm.state()), contents(twin.state()));
    a.snapshots.clear();
    for canister in a.canisters.iter_mut().chain(b.canisters.iter_mut()) {
        canister.cycles = 0;
        canister.next_snapshot_id = 0;
    }
    assert_eq!(a, b);
}

/// Charges follow the batch time's charge periods (10 s): nothing within one, the whole
/// periods crossed at once. However batch time is cut into rounds, the periods charged add up
/// to those elapsed: 100 rounds of 3.7 s pay what one round of 370 s pays (the twin), but for
/// the rounding down of each charge (under a cycle per charge, as on the replica).
#[test]
fn storage_is_charged_per_whole_period_whatever_the_round_lengths() {
    let (mut sm, c, _) = populated_env(true);
    let (mut twin, t, _) = populated_env(true);
    let config = sm.config().clone();
    let memory = charged_memory(&sm, &c);
    let before = c.cycles(&sm);
    sm.advance_time(Duration::from_secs(9));
    sm.tick();
    assert_eq!(c.cycles(&sm), before, "no period boundary crossed");
    sm.advance_time(Duration::from_secs(1));
    sm.tick();
    assert_eq!(before - c.cycles(&sm), config.storage_charge(memory, 10));
    let mut charges = 1;
    for _ in 0..100 {
        let cycles = c.cycles(&sm);
        sm.advance_time(Duration::from_millis(3_700));
        sm.tick();
        charges += u128::from(c.cycles(&sm) != cycles);
    }
    twin.advance_time(Duration::from_secs(380));
    twin.tick();
    assert_eq!(sm.get_time(), twin.get_time());
    assert_eq!(charges, 38, "one charge per round that crossed a boundary");
    assert_eq!(
        before - t.cycles(&twin),
        config.storage_charge(memory, 380),
        "one round, 38 periods"
    );
    let (short, long) = (before - c.cycles(&sm), before - t.cycles(&twin));
    assert!(
        short <= long && long - short < charges,
        "{short} vs {long}: only each charge's rounding may differ"
    );
}

/// Sets the canister's balance (a top-up), keeping its reserved balance.
fn set_cycles(sm: &mut StateMachine, c: &TestCanister, cycles: u128) {
    sm.state_mut().canisters.get_mut(&c.id).unwrap().cycles = cycles;
}

/// A populated canister with two snapshots and a balance of exactly `cycles`, at a time where
/// the next round at `+ DAY` charges a day.
fn canister_with_snapshots(cycles: u128) -> (StateMachine, TestCanister) {
    let config = Config {
        max_snapshots_per_canister: 2,
        ..Config::default()
    };
    let (mut sm, c) = env_with_config(config);
    populate(&mut sm, &c);
    for _ in 0..2 {
        sm.take_canister_snapshot(c.id, Some(c.sender), None)
            .unwrap();
    }
    set_cycles(&mut sm, &c, cycles);
    (sm, c)
}

/// The edge: a balance that pays the day exactly keeps everything and ends at zero; one cycle
/// less and the canister is uninstalled as the replica uninstalls it: no code, no memory, no
/// snapshots, no cycles, history entries cleared with their count kept, version + 1,
/// allocations reset; its id, controllers, status and other settings stay. The subnet's memory
/// totals drop by all it held.
#[test]
fn a_canister_that_cannot_pay_is_uninstalled_and_loses_its_snapshots() {
    let probe = canister_with_snapshots(0).0;
    let id = *probe.state().canisters.keys().next().unwrap();
    let memory = probe
        .state()
        .canister_memory_usage(&probe.state().canisters[&id]);
    let day = probe.config().idle_cycles_burned_per_day(memory);
    assert!(day > 0);

    let (mut paid, c) = canister_with_snapshots(day);
    paid.advance_time(DAY);
    paid.tick();
    assert_eq!(c.cycles(&paid), 0, "exactly a day, paid to the last cycle");
    assert_eq!(snapshot_count(&paid, &c), 2);
    assert!(paid.state().canisters[&c.id].execution_state.is_some());

    let (mut broke, c) = canister_with_snapshots(day - 1);
    update_allocations(&mut broke, &c);
    let before = broke.state().canisters[&c.id].clone();
    assert!(before.history.changes().count() > 0);
    broke.advance_time(DAY);
    broke.tick();
    let after = &broke.state().canisters[&c.id];
    assert!(after.execution_state.is_none());
    assert!(after.certified_data.is_empty());
    assert_eq!((after.cycles, after.reserved_cycles), (0, 0));
    assert_eq!(snapshot_count(&broke, &c), 0);
    assert_eq!(after.memory_usage(), 0);
    assert_eq!(broke.state().memory_usage(), 0, "the running totals moved");
    assert_eq!(after.canister_version, before.canister_version + 1);
    assert_eq!(after.history.changes().count(), 0, "entries cleared");
    assert_eq!(
        after.history.total_num_changes(),
        before.history.total_num_changes(),
        "the count of changes kept, no entry added"
    );
    assert_eq!(
        (
            after.settings.compute_allocation,
            after.settings.memory_allocation
        ),
        (0, 0)
    );
    assert_eq!(after.controllers, before.controllers);
    assert_eq!(after.status, before.status);
    assert_eq!(
        after.settings.freezing_threshold,
        before.settings.freezing_threshold
    );
    // The uninstalled canister is still there to be reinstalled; it pays nothing for nothing.
    broke.advance_time(DAY);
    broke.tick();
    assert_eq!(broke.state().canisters[&c.id].cycles, 0);
    assert_eq!(
        c.call(&mut broke, "read_heap", common::encode((0u64, 1u64)))
            .unwrap_err()
            .error_code,
        ic_error_types::ErrorCode::CanisterWasmModuleNotFound
    );
}

fn update_allocations(sm: &mut StateMachine, c: &TestCanister) {
    common::update_settings(
        sm,
        c.sender,
        c.id,
        ic_management_canister_types::CanisterSettings {
            compute_allocation: Some(5u64.into()),
            memory_allocation: Some((1u64 << 20).into()),
            ..Default::default()
        },
    )
    .unwrap();
}

/// Storage is paid from the reserved balance first, then from the main balance, as the
/// replica consumes resource charges; a canister whose two balances together pay is not
/// uninstalled.
#[test]
fn storage_is_paid_from_the_reserved_balance_first() {
    let (mut sm, c) = canister_with_snapshots(0);
    let memory = charged_memory(&sm, &c);
    let day = sm.config().idle_cycles_burned_per_day(memory);
    let canister = sm.state_mut().canisters.get_mut(&c.id).unwrap();
    canister.reserved_cycles = day / 3;
    canister.cycles = day - day / 3;
    sm.advance_time(DAY);
    sm.tick();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!((canister.reserved_cycles, canister.cycles), (0, 0));
    assert!(canister.execution_state.is_some());

    let (mut sm, c) = canister_with_snapshots(day);
    sm.state_mut()
        .canisters
        .get_mut(&c.id)
        .unwrap()
        .reserved_cycles = day / 3;
    sm.advance_time(DAY);
    sm.tick();
    let canister = &sm.state().canisters[&c.id];
    assert_eq!(
        (canister.reserved_cycles, canister.cycles),
        (0, day / 3),
        "the reserved cycles went first"
    );
}

/// The charge and the uninstall happen before the round's canister phase, on one thread: the
/// same state at 1 and 4 scheduler threads.
#[test]
fn charges_and_uninstalls_agree_at_any_thread_count() {
    let run = |threads: usize| {
        let config = Config {
            scheduler_threads: threads,
            ..Config::default()
        };
        let mut sm = StateMachine::with_config(config);
        let canisters: Vec<TestCanister> = (0..6)
            .map(|_| common::install_new(&mut sm, common::controller()))
            .collect();
        for (n, c) in canisters.iter().enumerate() {
            c.fill(&mut sm, n % 2 == 0, 0, 200_000 * (n as u64 + 1), 7);
            sm.take_canister_snapshot(c.id, Some(c.sender), None)
                .unwrap();
            set_cycles(&mut sm, c, 3_000_000 * (n as u128 + 1) * (n as u128 + 1));
        }
        let mut uninstalled = Vec::new();
        for _ in 0..20 {
            sm.advance_time(Duration::from_secs(3_600));
            for c in &canisters {
                let payload = common::encode((0u64, serde_bytes::ByteBuf::from(vec![1u8; 10])));
                sm.submit_call(c.id, c.sender, "write_heap", payload)
                    .unwrap();
            }
            sm.tick();
            uninstalled.push(
                canisters
                    .iter()
                    .filter(|c| sm.state().canisters[&c.id].execution_state.is_none())
                    .count(),
            );
        }
        (sm.state_hash(), uninstalled)
    };
    let (hash, uninstalled) = run(1);
    assert!(
        uninstalled.first() < uninstalled.last() && *uninstalled.last().unwrap() < 6,
        "some canisters ran out during the run, not all at once: {uninstalled:?}"
    );
    assert_eq!(run(4), (hash, uninstalled));
}

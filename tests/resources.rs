//! Who pays and who is stopped: memory growth by canister messages is checked against the
//! subnet's capacity and the canister's freezing threshold, as the replica checks
//! `memory.grow`; and a viewer's snapshot reads are paid by the canister, as on the replica,
//! never below its freezing threshold. Every refusal is checked against a twin machine.

mod common;

use candid::Encode;
use canister_snapshots::{Config, StateMachine, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterSettings, ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult,
    SnapshotDataKind, SnapshotVisibility,
};
use serde_bytes::ByteBuf;

use common::*;

const GIB: u64 = 1 << 30;

/// The offset of the last byte of a 500 GiB stable memory (the default stable memory limit).
const LAST_STABLE_BYTE: u64 = 500 * GIB - 1;

/// The default configuration with storage reservation off (threshold at capacity), so that
/// the growth tests below exercise the capacity and freezing checks alone.
fn without_reservation() -> Config {
    let config = Config::default();
    Config {
        subnet_memory_threshold_bytes: config.subnet_memory_capacity_bytes,
        ..config
    }
}

/// A canister with the test canister installed, `cycles` and the given freezing threshold.
fn canister_with(sm: &mut StateMachine, cycles: u128, freezing_threshold: u64) -> TestCanister {
    let settings = CanisterSettings {
        freezing_threshold: Some(freezing_threshold.into()),
        ..CanisterSettings::default()
    };
    let id = create(sm, controller(), cycles, Some(settings));
    sm.install_canister(id, TEST_CANISTER_WASM.to_vec(), vec![], Some(controller()));
    TestCanister {
        id,
        sender: controller(),
    }
}

fn write_last_stable_byte(
    sm: &mut StateMachine,
    c: &TestCanister,
) -> Result<Vec<u8>, canister_snapshots::RejectResponse> {
    c.call(
        sm,
        "write_stable",
        Encode!(&LAST_STABLE_BYTE, &ByteBuf::from(vec![1u8])).unwrap(),
    )
}

/// The reproduction from the issue: five canisters with 1e9 cycles each write one byte at
/// offset 500 GiB − 1 of stable memory. Keeping 500 GiB for the freezing threshold (30 days)
/// costs far more than 1e9 cycles, so every write traps with
/// `InsufficientCyclesInMemoryGrow` and nothing changes; the subnet stays empty.
#[test]
fn growth_beyond_the_freezing_threshold_traps_and_changes_nothing() {
    let setup = || {
        let mut sm = StateMachine::with_config(without_reservation());
        let canisters: Vec<TestCanister> = (0..5)
            .map(|_| canister_with(&mut sm, 1_000_000_000, 2_592_000))
            .collect();
        (sm, canisters)
    };
    let err = assert_refused_without_effect(setup, |sm, canisters| {
        canisters
            .iter()
            .map(|c| write_last_stable_byte(sm, c))
            .find(Result::is_err)
            .unwrap_or(Ok(vec![]))
    });
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::InsufficientCyclesInMemoryGrow,
        RejectCode::CanisterError,
        &["freezing threshold", "Top up"],
    );
    let (mut sm, canisters) = setup();
    let usage = sm.state().memory_usage();
    for c in &canisters {
        let err = write_last_stable_byte(&mut sm, c).unwrap_err();
        assert_eq!(err.error_code, ErrorCode::InsufficientCyclesInMemoryGrow);
        assert_eq!(
            c.memory_sizes(&mut sm),
            (0, 0),
            "the trapped write grew nothing"
        );
    }
    assert_eq!(sm.state().memory_usage(), usage);
}

/// Five canisters with a zero freezing threshold (nothing to reserve) grow to 500 GiB each:
/// the first four fit in the subnet's 2 TiB, the fifth would take it past its capacity and
/// traps with `SubnetOversubscribed`, changing nothing; every other user can still take a
/// snapshot.
#[test]
fn growth_beyond_the_subnet_capacity_traps_and_changes_nothing() {
    let setup = || {
        let mut sm = StateMachine::with_config(Config {
            max_snapshots_per_canister: 2,
            ..without_reservation()
        });
        let canisters: Vec<TestCanister> = (0..5)
            .map(|_| canister_with(&mut sm, 1_000_000_000, 0))
            .collect();
        for c in &canisters[..4] {
            write_last_stable_byte(&mut sm, c).unwrap();
        }
        (sm, canisters)
    };
    let err = assert_refused_without_effect(setup, |sm, canisters| {
        write_last_stable_byte(sm, &canisters[4])
    });
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::SubnetOversubscribed,
        RejectCode::SysFatal,
        &["subnet's memory capacity"],
    );
    let (mut sm, canisters) = setup();
    assert!(write_last_stable_byte(&mut sm, &canisters[4]).is_err());
    let capacity = sm.config().subnet_memory_capacity_bytes;
    assert!(sm.state().memory_usage() <= capacity);
    // The subnet is not starved: a small canister can still be backed up.
    let small = install_new(&mut sm, user(9));
    sm.take_canister_snapshot(small.id, Some(small.sender), None)
        .unwrap();
}

/// Growth within both limits is unaffected, and writing inside memory already allocated
/// needs no headroom at all (only growth is checked).
#[test]
fn growth_within_the_limits_and_writes_without_growth_succeed() {
    let mut sm = StateMachine::new();
    let c = canister_with(&mut sm, 1_000_000_000, 2_592_000);
    c.write(&mut sm, true, 10 * 65_536 - 1, &[1]);
    assert_eq!(c.memory_sizes(&mut sm), (0, 10 * 65_536));
    // Now make the threshold impossible to meet: growth traps, a write in place does not.
    let settings = CanisterSettings {
        freezing_threshold: Some((1u64 << 40).into()),
        ..CanisterSettings::default()
    };
    update_settings(&mut sm, c.sender, c.id, settings).unwrap();
    c.write(&mut sm, true, 0, b"in place");
    let err = c
        .call(
            &mut sm,
            "write_stable",
            Encode!(&(10u64 * 65_536), &ByteBuf::from(vec![1u8])).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.error_code, ErrorCode::InsufficientCyclesInMemoryGrow);
}

/// A canister's snapshots count toward what its freezing threshold must cover: growth that
/// would fit without the snapshot traps with it.
#[test]
fn snapshots_count_toward_the_growth_check() {
    let mut sm = StateMachine::new();
    // Enough cycles to keep 1 GiB for 30 days: 700 MiB fit, 700 MiB plus a 400 MiB snapshot
    // do not.
    let per_gib = sm.config().storage_cost(GIB, 2_592_000);
    let c = canister_with(&mut sm, per_gib, 2_592_000);
    c.write(&mut sm, true, (400 << 20) - 1, &[1]);
    sm.take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    let err = c
        .call(
            &mut sm,
            "write_stable",
            Encode!(&(700u64 << 20), &ByteBuf::from(vec![1u8])).unwrap(),
        )
        .unwrap_err();
    assert_eq!(
        err.error_code,
        ErrorCode::InsufficientCyclesInMemoryGrow,
        "{err}"
    );
    // Without the snapshot the same growth fits.
    let id = sm.list_canister_snapshots(c.id, Some(c.sender)).unwrap()[0]
        .id
        .clone();
    sm.delete_canister_snapshot(c.id, Some(c.sender), id)
        .unwrap();
    c.write(&mut sm, true, 700 << 20, &[1]);
}

// ---------------------------------------------------------------------------------------------
// Storage reservation
// ---------------------------------------------------------------------------------------------

/// A subnet already above its storage threshold: 64 MiB of threshold, 1 GiB of capacity.
fn saturated_config() -> Config {
    Config {
        max_snapshots_per_canister: 2,
        subnet_memory_threshold_bytes: 64 << 20,
        subnet_memory_capacity_bytes: 1 << 30,
        ..Config::default()
    }
}

/// Above the threshold, growth moves cycles into the reserved balance, exactly as
/// `Config::storage_reservation_cycles` prices it, and `canister_status` reports them; a take
/// reserves for the snapshot's memory like any other growth.
#[test]
fn growth_above_the_threshold_reserves_cycles() {
    let mut sm = StateMachine::with_config(saturated_config());
    let c = canister_with(&mut sm, 100_000_000_000_000, 0);
    c.write(&mut sm, true, (100 << 20) - 1, &[1]); // 100 MiB: 36 MiB above the threshold
    let reserved = sm.state().canisters[&c.id].reserved_cycles;
    let usage_before = sm.state().memory_usage() - (100 << 20);
    assert_eq!(
        reserved,
        sm.config()
            .storage_reservation_cycles(100 << 20, usage_before)
    );
    assert!(reserved > 0);
    let status = sm.canister_status(c.id, Some(c.sender)).unwrap();
    assert_eq!(status.reserved_cycles, candid::Nat::from(reserved));

    let before = (c.cycles(&sm), reserved);
    let usage = sm.state().memory_usage();
    let snapshot = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    let reservation = sm
        .config()
        .storage_reservation_cycles(snapshot.total_size, usage);
    let after = sm.state().canisters[&c.id].reserved_cycles;
    assert_eq!(
        after - before.1,
        reservation,
        "the take reserved for the snapshot"
    );
    assert!(reservation > 0);
}

/// A growth whose reservation would pass `reserved_cycles_limit` is refused with the
/// replica's code, and changes nothing.
#[test]
fn a_reservation_past_the_limit_is_refused() {
    let setup = || {
        let mut sm = StateMachine::with_config(saturated_config());
        let c = canister_with(&mut sm, 100_000_000_000_000, 0);
        c.write(&mut sm, true, (100 << 20) - 1, &[1]);
        let settings = CanisterSettings {
            reserved_cycles_limit: Some(sm.state().canisters[&c.id].reserved_cycles.into()),
            ..CanisterSettings::default()
        };
        update_settings(&mut sm, c.sender, c.id, settings).unwrap();
        (sm, c)
    };
    let err = assert_refused_without_effect(setup, |sm, c| {
        c.call(
            sm,
            "write_stable",
            Encode!(&((200u64 << 20) - 1), &ByteBuf::from(vec![1u8])).unwrap(),
        )
    });
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::ReservedCyclesLimitExceededInMemoryGrow,
        RejectCode::CanisterError,
        &["reserved cycles limit", "reserved_cycles_limit"],
    );
    let err = assert_refused_without_effect(setup, |sm, c| {
        sm.take_canister_snapshot(c.id, Some(c.sender), None)
    });
    assert_eq!(
        err.error_code,
        ErrorCode::ReservedCyclesLimitExceededInMemoryGrow
    );
}

// ---------------------------------------------------------------------------------------------
// Viewers' reads
// ---------------------------------------------------------------------------------------------

fn read_slice(
    sm: &mut StateMachine,
    c: &TestCanister,
    reader: candid::Principal,
    snapshot_id: &[u8],
) -> Result<ReadCanisterSnapshotDataResult, canister_snapshots::RejectResponse> {
    let args = ReadCanisterSnapshotDataArgs {
        canister_id: c.id,
        snapshot_id: snapshot_id.to_vec(),
        kind: SnapshotDataKind::StableMemory {
            offset: 0,
            size: 1_000_000,
        },
    };
    sm.management(Some(reader), "read_canister_snapshot_data", (args,))
        .map(|(r,)| r)
}

/// A public canister with 1 MB of stable memory and a snapshot of it, created with `cycles`.
fn public_snapshot(cycles: u128) -> (StateMachine, (TestCanister, Vec<u8>)) {
    let mut sm = StateMachine::new();
    let c = canister_with(&mut sm, cycles, 60);
    c.fill(&mut sm, true, 0, 1_000_000, 7);
    let id = sm
        .take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap()
        .id;
    let settings = CanisterSettings {
        snapshot_visibility: Some(SnapshotVisibility::Public),
        ..CanisterSettings::default()
    };
    update_settings(&mut sm, c.sender, c.id, settings).unwrap();
    (sm, (c, id))
}

/// As on the replica, a viewer's `read_canister_snapshot_data` is paid with the canister's
/// cycles (`spec/management.md`, "Who pays for snapshot reads"): a public snapshot lets anyone
/// spend them. The freezing threshold bounds the loss: once a read would dip into it, reads
/// are refused with `CanisterOutOfCycles` and change nothing.
#[test]
fn a_viewers_reads_are_paid_by_the_canister_down_to_its_freezing_threshold_only() {
    let config = Config::default();
    let read_cost = config.instructions_cost(config.read_data_base_instructions + 1_000_000);
    // A probe run measures what setting up costs and what the freezing threshold reserves.
    let initial = 100_000_000_000_000u128;
    let (sm, (c, _)) = public_snapshot(initial);
    let spent = initial - c.cycles(&sm);
    let usage =
        sm.state().canisters[&c.id].memory_usage() + sm.state().snapshots.snapshots_size(c.id);
    let reserve = config.storage_cost(usage, 60);
    // Enough for the setup, the reserve and exactly three reads.
    let budget = spent + reserve + 3 * read_cost + read_cost / 2;
    let (mut sm, (c, id)) = public_snapshot(budget);
    let reader = stranger();
    for _ in 0..3 {
        let before = c.cycles(&sm);
        let data = read_slice(&mut sm, &c, reader, &id).unwrap();
        assert_eq!(data.chunk, vec![7u8; 1_000_000]);
        assert_eq!(
            before - c.cycles(&sm),
            read_cost,
            "the canister pays for the read"
        );
    }
    assert_eq!(c.cycles(&sm), reserve + read_cost / 2);
    let err = assert_refused_without_effect(
        || {
            let (mut sm, (c, id)) = public_snapshot(budget);
            for _ in 0..3 {
                read_slice(&mut sm, &c, reader, &id).unwrap();
            }
            (sm, (c, id))
        },
        |sm, (c, id)| read_slice(sm, c, reader, id),
    );
    assert_reject(
        Err::<(), _>(err),
        ErrorCode::CanisterOutOfCycles,
        RejectCode::SysTransient,
        &["above the freezing threshold"],
    );
}

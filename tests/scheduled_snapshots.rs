//! Scheduled snapshots (`spec/management.md`, "Scheduled snapshots"): a schedule set through
//! the `update_settings` extension fires at the first round at or after its due time, as a
//! manual take would (same checks, same charge), keeps the newest `keep`, records each take
//! beside the canister history (`canister_info`'s `scheduled_snapshots`, an extension field
//! that `ic.did` and the IC's own types skip, so `recent_changes` stays the IC's), and reports a
//! refused take in `canister_status`.

mod common;

use std::time::Duration;

use candid::Principal;
use canister_snapshots::management::types::{
    CanisterChange, CanisterChangeDetails, CanisterInfoResult, CanisterStatusResult,
    SCHEDULED_SNAPSHOT_LABEL, ScheduledSnapshotChange, SnapshotScheduleArgs,
    SnapshotScheduleChange, SnapshotScheduleStatus, UpdateSettingsArgs,
};
use canister_snapshots::state::CanisterHistory;
use canister_snapshots::{Config, RejectResponse, StateMachine};
use common::*;
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterInfoArgs, CanisterSettings as SettingsArgs, ChangeDetails, ChangeOrigin, FromUserRecord,
};

fn set_schedule(
    sm: &mut StateMachine,
    sender: Principal,
    canister_id: Principal,
    change: SnapshotScheduleChange,
) -> Result<(), RejectResponse> {
    let args = UpdateSettingsArgs {
        canister_id,
        settings: SettingsArgs::default(),
        sender_canister_version: None,
        snapshot_schedule: Some(change),
    };
    sm.management(Some(sender), "update_settings", (args,))
}

fn every(interval_seconds: u64, keep: u64, only_when_stopped: bool) -> SnapshotScheduleChange {
    SnapshotScheduleChange::Set(SnapshotScheduleArgs {
        interval_seconds,
        keep,
        only_when_stopped: Some(only_when_stopped),
    })
}

fn schedule_status(sm: &mut StateMachine, c: &TestCanister) -> Option<SnapshotScheduleStatus> {
    let (status,): (CanisterStatusResult,) = sm
        .management(
            Some(c.sender),
            "canister_status",
            (ic_management_canister_types::CanisterIdRecord { canister_id: c.id },),
        )
        .unwrap();
    status.snapshot_schedule
}

fn snapshot_ids(sm: &mut StateMachine, c: &TestCanister) -> Vec<Vec<u8>> {
    sm.list_canister_snapshots_with_info(c.id, Some(c.sender))
        .unwrap()
        .into_iter()
        .inspect(|s| assert_eq!(s.label.as_deref(), Some(SCHEDULED_SNAPSHOT_LABEL)))
        .map(|s| s.id)
        .collect()
}

/// `canister_info` for the last 20 changes, decoded with the given reply type: the crate's
/// [`CanisterInfoResult`] or the IC's.
fn canister_info<R: for<'a> candid::utils::ArgumentDecoder<'a>>(
    sm: &mut StateMachine,
    c: &TestCanister,
) -> R {
    let args = CanisterInfoArgs {
        canister_id: c.id,
        num_requested_changes: Some(20),
    };
    sm.management(None, "canister_info", (args,)).unwrap()
}

#[test]
fn a_schedule_fires_at_the_first_round_at_or_after_its_due_time_and_keeps_the_newest() {
    let (mut sm, c) = populated_env(false).into_parts();
    set_schedule(&mut sm, c.sender, c.id, every(60, 1, false)).unwrap();
    let due = schedule_status(&mut sm, &c).unwrap().next_due;
    assert_eq!(due, sm.get_time() + 60_000_000_000);
    sm.advance_time(Duration::from_secs(59));
    sm.tick();
    assert!(snapshot_ids(&mut sm, &c).is_empty(), "not due yet");
    // Due: taken at the start of the next round, charged as a manual take at that moment.
    sm.advance_time(Duration::from_secs(1));
    let mut twin = sm_clone_by_replay(&c);
    let cycles_before = c.cycles(&sm);
    sm.tick();
    let first = snapshot_ids(&mut sm, &c);
    assert_eq!(first.len(), 1);
    twin.take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    assert_eq!(
        cycles_before - c.cycles(&sm),
        cycles_before - c.cycles(&twin),
        "charged like a manual take"
    );
    // 130 s later (two periods missed): one snapshot, replacing the first; the next due time
    // is the next period boundary after now.
    sm.advance_time(Duration::from_secs(130));
    sm.tick();
    let second = snapshot_ids(&mut sm, &c);
    assert_eq!(second.len(), 1, "keep = 1");
    assert_ne!(second, first, "the oldest scheduled snapshot was replaced");
    let status = schedule_status(&mut sm, &c).unwrap();
    assert_eq!(status.next_due, due + 180_000_000_000);
    assert_eq!(status.last_failure, None);
    // Cleared: nothing fires any more.
    set_schedule(&mut sm, c.sender, c.id, SnapshotScheduleChange::Clear).unwrap();
    sm.advance_time(Duration::from_secs(600));
    sm.tick();
    assert_eq!(snapshot_ids(&mut sm, &c), second);
    assert_eq!(schedule_status(&mut sm, &c), None);
}

/// The same machine as [`populated_env`] with the same schedule, at the same time: a twin to
/// compare charges with.
fn sm_clone_by_replay(c: &TestCanister) -> StateMachine {
    let (mut sm, twin) = populated_env(false).into_parts();
    assert_eq!(twin.id, c.id);
    set_schedule(&mut sm, c.sender, c.id, every(60, 1, false)).unwrap();
    sm.advance_time(Duration::from_secs(59));
    sm.tick();
    // Clear it so the manual take stands in for the scheduled one.
    set_schedule(&mut sm, c.sender, c.id, SnapshotScheduleChange::Clear).unwrap();
    sm.advance_time(Duration::from_secs(1));
    sm
}

trait IntoParts {
    fn into_parts(self) -> (StateMachine, TestCanister);
}
impl IntoParts for (StateMachine, TestCanister, Option<Vec<u8>>) {
    fn into_parts(self) -> (StateMachine, TestCanister) {
        (self.0, self.1)
    }
}

#[test]
fn schedules_out_of_range_are_refused_without_effect() {
    let config = Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    };
    let cases = [
        (every(0, 1, false), "interval_seconds is 0"),
        (
            every(366 * 86_400 + 1, 1, false),
            "interval_seconds is 31622401",
        ),
        (every(u64::MAX, 1, false), "interval_seconds"),
        (every(60, 0, false), "keep is 0"),
        (every(60, 4, false), "keep is 4"),
    ];
    for (change, needle) in cases {
        let err = assert_refused_without_effect(
            || env_with_config(config.clone()),
            |sm, c| set_schedule(sm, c.sender, c.id, change.clone()),
        );
        assert_reject::<()>(
            Err(err),
            ErrorCode::InvalidManagementPayload,
            RejectCode::CanisterReject,
            &[needle],
        );
    }
    // A stranger cannot set one either.
    let err = assert_refused_without_effect(env, |sm, c| {
        set_schedule(sm, stranger(), c.id, every(60, 1, false))
    });
    assert_eq!(err.error_code, ErrorCode::CanisterInvalidController);
}

#[test]
fn a_refused_scheduled_take_leaves_the_canister_untouched_and_shows_in_status() {
    // The quota (1) is held by a manual snapshot, which a schedule never replaces.
    let (mut sm, c, manual) = populated_env(true);
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    sm.advance_time(Duration::from_secs(10));
    let mut before = contents(sm.state());
    // The round's storage charge for the 10 s is all that changes.
    let held = sm
        .state()
        .canister_memory_usage(&sm.state().canisters[&c.id]);
    before.canisters[0].cycles -= sm.config().storage_charge(held, 10);
    sm.tick();
    assert_eq!(contents(sm.state()), before, "the canister is untouched");
    let failure = schedule_status(&mut sm, &c).unwrap().last_failure.unwrap();
    assert_eq!(
        failure.error_code,
        ErrorCode::CanisterRejectedMessage as u64
    );
    assert!(
        failure.message.contains("maximum number of snapshots"),
        "{failure:?}"
    );
    let ids: Vec<_> = sm
        .list_canister_snapshots(c.id, Some(c.sender))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![manual.unwrap()]);
    // Room again: the next due take succeeds and clears the failure.
    let manual_id = ids[0].clone();
    sm.delete_canister_snapshot(c.id, Some(c.sender), manual_id)
        .unwrap();
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    assert_eq!(snapshot_ids(&mut sm, &c).len(), 1);
    assert_eq!(schedule_status(&mut sm, &c).unwrap().last_failure, None);
}

#[test]
fn a_schedule_runs_as_its_controller_and_stops_when_it_no_longer_controls() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    // The controller hands the canister to someone else: the schedule may not act for it.
    let settings = SettingsArgs {
        controllers: Some(vec![user(2)]),
        ..SettingsArgs::default()
    };
    update_settings(&mut sm, c.sender, c.id, settings).unwrap();
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    assert!(sm.state().snapshots.is_empty());
    let owner = TestCanister {
        id: c.id,
        sender: user(2),
    };
    let failure = schedule_status(&mut sm, &owner)
        .unwrap()
        .last_failure
        .unwrap();
    assert_eq!(
        failure.error_code,
        ErrorCode::CanisterInvalidController as u64
    );
}

#[test]
fn a_when_stopped_schedule_waits_for_the_canister_to_stop() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, true)).unwrap();
    sm.advance_time(Duration::from_secs(30));
    sm.tick();
    sm.tick();
    assert!(sm.state().snapshots.is_empty(), "running: it waits");
    sm.stop_canister(c.id, Some(c.sender)).unwrap();
    // stop_canister's round ran the loop's schedule step before the stop; the next one takes it.
    sm.tick();
    assert_eq!(snapshot_ids(&mut sm, &c).len(), 1);
}

#[test]
fn a_deleted_canister_leaves_no_schedule_behind() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    assert_eq!(sm.state().snapshot_schedule_due.len(), 1);
    sm.stop_canister(c.id, Some(c.sender)).unwrap();
    sm.management::<()>(
        Some(c.sender),
        "delete_canister",
        (ic_management_canister_types::CanisterIdRecord { canister_id: c.id },),
    )
    .unwrap();
    assert!(sm.state().snapshot_schedule_due.is_empty());
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
}

#[test]
fn a_replaced_schedule_keeps_rotating_the_snapshots_of_the_one_before() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    let first = snapshot_ids(&mut sm, &c);
    assert_eq!(first.len(), 1);
    // A new interval: its first take replaces the old schedule's snapshot (quota 1), rather
    // than failing on a quota its own snapshot fills.
    set_schedule(&mut sm, c.sender, c.id, every(20, 1, false)).unwrap();
    sm.advance_time(Duration::from_secs(20));
    sm.tick();
    let second = snapshot_ids(&mut sm, &c);
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    assert_eq!(schedule_status(&mut sm, &c).unwrap().last_failure, None);
}

#[test]
fn a_scheduled_take_is_recorded_with_its_snapshot_id_and_a_manual_one_is_not() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    let (before,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert!(before.scheduled_snapshots.is_empty());
    let version = c.version(&sm);
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    let first = snapshot_ids(&mut sm, &c);
    let (info,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    // The IC's history is the IC's: a take is not one of its changes.
    assert_eq!(info.total_num_changes, before.total_num_changes);
    assert_eq!(info.recent_changes, before.recent_changes);
    assert_eq!(
        info.scheduled_snapshots,
        vec![ScheduledSnapshotChange {
            timestamp_nanos: sm.get_time(),
            // A take changes neither code nor settings: the version stays, as on the IC.
            canister_version: version,
            origin: ChangeOrigin::FromUser(FromUserRecord { user_id: c.sender }),
            snapshot_id: first[0].clone(),
            replaced_snapshot: None,
        }]
    );
    assert_eq!(c.version(&sm), version);
    // The next take replaces the first (keep = 1) and says so.
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    let second = snapshot_ids(&mut sm, &c);
    let (info,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(info.scheduled_snapshots.len(), 2);
    let last = info.scheduled_snapshots.last().unwrap();
    assert_eq!(last.snapshot_id, second[0]);
    assert_eq!(last.replaced_snapshot, Some(first[0].clone().into()));
    // A manual take records nothing, as on the IC (nor does a delete).
    set_schedule(&mut sm, c.sender, c.id, SnapshotScheduleChange::Clear).unwrap();
    let (info,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    sm.delete_canister_snapshot(c.id, Some(c.sender), second[0].clone())
        .unwrap();
    sm.take_canister_snapshot(c.id, Some(c.sender), None)
        .unwrap();
    let (after,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(after, info);
}

#[test]
fn the_ics_types_read_canister_info_in_full_and_skip_the_scheduled_takes() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    for _ in 0..2 {
        sm.advance_time(Duration::from_secs(10));
        sm.tick();
    }
    let (ours,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    let (ic,): (ic_management_canister_types::CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(ours.scheduled_snapshots.len(), 2);
    // Every entry of the IC's history has its details; the scheduled takes are not among them.
    assert_eq!(ic.total_num_changes, ours.total_num_changes);
    assert_eq!(ic.module_hash, ours.module_hash);
    assert_eq!(ic.controllers, ours.controllers);
    assert_eq!(ic.recent_changes.len(), ours.recent_changes.len());
    for (ic, ours) in ic.recent_changes.iter().zip(&ours.recent_changes) {
        assert_eq!(ic.details.as_ref(), Some(&ours.details));
        assert_eq!(
            (ic.timestamp_nanos, ic.canister_version, &ic.origin),
            (ours.timestamp_nanos, ours.canister_version, &ours.origin)
        );
    }
    assert!(matches!(
        ic.recent_changes[0].details,
        Some(ChangeDetails::Creation(_))
    ));
}

#[test]
fn a_refused_scheduled_take_adds_no_history_entry() {
    // The quota (1) is held by a manual snapshot: the scheduled take is refused.
    let (mut sm, c, _) = populated_env(true);
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    let (before,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    assert!(schedule_status(&mut sm, &c).unwrap().last_failure.is_some());
    let (after,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(after, before);
}

#[test]
fn the_state_hash_covers_a_scheduled_entry() {
    let (mut sm, c) = env();
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    sm.advance_time(Duration::from_secs(10));
    sm.tick();
    let state = sm.state();
    let hash = state.state_hash();
    let history = &state.canisters[&c.id].history;
    // The same state with the entry altered, or read as the IC's types read it: other hashes.
    let altered = |change: fn(&mut CanisterChange)| {
        let mut changes: Vec<CanisterChange> = history.entries().cloned().collect();
        change(changes.last_mut().unwrap());
        let mut state = state.clone();
        state.canisters.get_mut(&c.id).unwrap().history =
            CanisterHistory::from_parts(changes, history.total_num_changes());
        state.state_hash()
    };
    assert_eq!(altered(|_| {}), hash);
    let other_id = altered(|change| {
        let Some(CanisterChangeDetails::ScheduledSnapshot(record)) = &mut change.details else {
            panic!("the last entry is the scheduled take: {change:?}")
        };
        record.snapshot_id[0] ^= 1;
    });
    assert_ne!(other_id, hash);
    let replaced = altered(|change| {
        let Some(CanisterChangeDetails::ScheduledSnapshot(record)) = &mut change.details else {
            panic!("the last entry is the scheduled take: {change:?}")
        };
        record.replaced_snapshot = Some(record.snapshot_id.clone().into());
    });
    assert_ne!(replaced, hash);
    let without_details = altered(|change| change.details = None);
    assert_ne!(without_details, hash);
}

#[test]
fn a_checkpoint_keeps_the_scheduled_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), Config::default()).unwrap();
    let c = install_new(&mut sm, controller());
    set_schedule(&mut sm, c.sender, c.id, every(10, 1, false)).unwrap();
    for _ in 0..2 {
        sm.advance_time(Duration::from_secs(10));
        sm.tick();
    }
    sm.checkpoint().unwrap();
    let hash = sm.state_hash();
    let (info,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(info.scheduled_snapshots.len(), 2);
    drop(sm);
    let mut sm = StateMachine::open(dir.path(), Config::default()).unwrap();
    assert_eq!(sm.state_hash(), hash);
    let (reopened,): (CanisterInfoResult,) = canister_info(&mut sm, &c);
    assert_eq!(reopened, info);
}

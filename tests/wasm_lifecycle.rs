//! Real WebAssembly canisters over time and across upgrades, as the replica runs them:
//! `canister_global_timer` (fires once, in the first round whose batch time reaches it,
//! deactivated before it runs), `canister_heartbeat` (every round of a running canister),
//! enhanced orthogonal persistence on upgrade (`wasm_memory_persistence`), and 64-bit heaps
//! beyond 4 GiB up to the subnet's limit.

mod common;

use std::time::Duration;

use candid::{Nat, Principal};
use canister_snapshots::{Config, RejectResponse, StateMachine};
use common::{assert_refused_without_effect, controller};
use ic_error_types::ErrorCode;
use ic_management_canister_types::{
    CanisterInstallMode, CanisterSettings, UpgradeFlags, WasmMemoryPersistence,
};

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

fn install(
    sm: &mut StateMachine,
    module: Vec<u8>,
    settings: Option<CanisterSettings>,
) -> Principal {
    let id = sm.create_canister_with_settings(Some(controller()), settings);
    sm.install_canister(id, module, vec![], Some(controller()));
    id
}

fn user() -> Principal {
    Principal::from_slice(&[7; 29])
}

fn update(sm: &mut StateMachine, id: Principal, method: &str, arg: &[u8]) -> Vec<u8> {
    sm.update_call(id, user(), method, arg.to_vec())
        .unwrap_or_else(|err| panic!("{method}: {err}"))
}

/// The reply's little-endian i64s.
fn numbers(reply: &[u8]) -> Vec<i64> {
    reply
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Counts its timer firings and heartbeats. `set_timer(deadline)` replies with what
/// `ic0.global_timer_set` returned; the timer records the batch time it ran at and what its own
/// `global_timer_set(rearm)` returned (the timer must already be deactivated: 0), and traps
/// after that when `trap_timer` was called.
const TIMERS: &str = r#"
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (import "ic0" "time" (func $time (result i64)))
  (memory 1)
  (global $fired (mut i64) (i64.const 0))
  (global $beats (mut i64) (i64.const 0))
  (global $previous (mut i64) (i64.const -1))
  (global $fired_at (mut i64) (i64.const 0))
  (global $rearm (mut i64) (i64.const 0))
  (global $trap_timer (mut i32) (i32.const 0))
  (func $reply_i64 (param $v i64)
    (i64.store (i32.const 0) (local.get $v))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
  (func $arg_i64 (result i64)
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 8))
    (i64.load (i32.const 0)))
  (func (export "canister_update set_timer")
    (call $reply_i64 (call $timer_set (call $arg_i64))))
  (func (export "canister_update rearm")
    (global.set $rearm (call $arg_i64))
    (call $reply_i64 (i64.const 0)))
  (func (export "canister_update trap_timer")
    (global.set $trap_timer (i32.const 1))
    (call $reply_i64 (i64.const 0)))
  (func (export "canister_query stats")
    (i64.store (i32.const 0) (global.get $fired))
    (i64.store (i32.const 8) (global.get $beats))
    (i64.store (i32.const 16) (global.get $previous))
    (i64.store (i32.const 24) (global.get $fired_at))
    (call $append (i32.const 0) (i32.const 32))
    (call $reply))
  (func (export "canister_global_timer")
    (global.set $fired (i64.add (global.get $fired) (i64.const 1)))
    (global.set $fired_at (call $time))
    (global.set $previous (call $timer_set (global.get $rearm)))
    (if (global.get $trap_timer) (then unreachable)))
  (func (export "canister_heartbeat")
    (global.set $beats (i64.add (global.get $beats) (i64.const 1))))
)
"#;

/// `[fired, beats, previous, fired_at]`.
fn stats(sm: &StateMachine, id: Principal) -> Vec<i64> {
    numbers(&sm.query_call(id, user(), "stats", vec![]).unwrap())
}

fn timer_env() -> (StateMachine, Principal, u64) {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, wasm(TIMERS), None);
    let start = sm.get_time();
    (sm, id, start)
}

const SECOND: u64 = 1_000_000_000;

/// `global_timer_set` returns the previous value; the timer fires once, in the first round whose
/// batch time is at or past it, already deactivated (its own `global_timer_set` returns 0); it
/// never fires again unless set again.
#[test]
fn the_global_timer_fires_once_at_its_deadline() {
    let (mut sm, id, t0) = timer_env();
    let deadline = t0 + 5 * SECOND;
    assert_eq!(
        numbers(&update(
            &mut sm,
            id,
            "set_timer",
            &(t0 + 10 * SECOND).to_le_bytes()
        )),
        [0]
    );
    assert_eq!(
        numbers(&update(&mut sm, id, "set_timer", &deadline.to_le_bytes())),
        [(t0 + 10 * SECOND) as i64],
        "global_timer_set returns the previous deadline"
    );
    sm.advance_time(Duration::from_secs(4));
    sm.tick();
    assert_eq!(
        stats(&sm, id)[0],
        0,
        "not yet: the batch time is before the deadline"
    );
    sm.advance_time(Duration::from_secs(1));
    sm.tick();
    let [fired, _, previous, fired_at] = stats(&sm, id)[..] else {
        unreachable!()
    };
    assert_eq!((fired, previous, fired_at), (1, 0, deadline as i64));
    assert_eq!(sm.state().canisters[&id].global_timer, None);
    for _ in 0..3 {
        sm.advance_time(Duration::from_secs(10));
        sm.tick();
    }
    assert_eq!(stats(&sm, id)[0], 1, "a timer is one-off");
}

/// A timer that sets the timer again is kept (its change succeeded), and fires again then.
#[test]
fn a_timer_that_sets_itself_again_fires_again() {
    let (mut sm, id, t0) = timer_env();
    update(&mut sm, id, "rearm", &(t0 + 20 * SECOND).to_le_bytes());
    update(&mut sm, id, "set_timer", &(t0 + 5 * SECOND).to_le_bytes());
    sm.advance_time(Duration::from_secs(5));
    sm.tick();
    assert_eq!(
        sm.state().canisters[&id].global_timer,
        Some(t0 + 20 * SECOND)
    );
    sm.advance_time(Duration::from_secs(15));
    sm.tick();
    let [fired, _, _, fired_at] = stats(&sm, id)[..] else {
        unreachable!()
    };
    assert_eq!((fired, fired_at), (2, (t0 + 20 * SECOND) as i64));
}

/// A timer that traps keeps none of its changes (not even the timer it set), and the timer
/// stays deactivated: it does not fire again in the next rounds.
#[test]
fn a_trapping_timer_changes_nothing_and_stays_deactivated() {
    let (mut sm, id, t0) = timer_env();
    update(&mut sm, id, "rearm", &(t0 + 6 * SECOND).to_le_bytes());
    update(&mut sm, id, "trap_timer", &[]);
    update(&mut sm, id, "set_timer", &(t0 + 5 * SECOND).to_le_bytes());
    let heap_before = sm.state().canisters[&id].execution_state.clone().unwrap();
    for _ in 0..3 {
        sm.advance_time(Duration::from_secs(5));
        sm.tick();
    }
    assert_eq!(
        stats(&sm, id)[0],
        0,
        "the trapped timer's count was rolled back"
    );
    assert_eq!(sm.state().canisters[&id].global_timer, None);
    let after = sm.state().canisters[&id].execution_state.clone().unwrap();
    assert_eq!(after.exported_globals[0], heap_before.exported_globals[0]);
}

/// A canister without `canister_global_timer` keeps its timer: nothing runs it.
#[test]
fn a_timer_without_the_export_stays_set() {
    let module = wasm(&TIMERS.replace("(export \"canister_global_timer\")", ""));
    let mut sm = StateMachine::new();
    let id = install(&mut sm, module, None);
    let deadline = sm.get_time() + SECOND;
    update(&mut sm, id, "set_timer", &deadline.to_le_bytes());
    sm.advance_time(Duration::from_secs(5));
    sm.tick();
    assert_eq!(sm.state().canisters[&id].global_timer, Some(deadline));
}

/// The heartbeat runs in every round of a running canister (messages or not), and not while it
/// is stopped.
#[test]
fn the_heartbeat_runs_every_round_while_running() {
    let (mut sm, id, _) = timer_env();
    let beats = |sm: &StateMachine| stats(sm, id)[1];
    let before = beats(&sm);
    assert!(before >= 1, "the install's round ran a heartbeat");
    for _ in 0..3 {
        sm.tick();
    }
    assert_eq!(beats(&sm), before + 3);
    update(&mut sm, id, "rearm", &0u64.to_le_bytes());
    assert_eq!(
        beats(&sm),
        before + 4,
        "a round with a message runs the heartbeat too"
    );
    sm.stop_canister(id, Some(controller())).unwrap();
    let stopped = sm.state().canisters[&id]
        .execution_state
        .clone()
        .unwrap()
        .exported_globals;
    for _ in 0..3 {
        sm.tick();
    }
    let still = sm.state().canisters[&id]
        .execution_state
        .clone()
        .unwrap()
        .exported_globals;
    assert_eq!(stopped, still, "no heartbeat while stopped");
    sm.start_canister(id, Some(controller())).unwrap();
    sm.tick();
    assert!(beats(&sm) > before + 4);
}

/// Replicas agree on system tasks: the same batches on machines with 1 and 4 scheduler threads
/// give the same state hash after every round.
#[test]
fn system_tasks_are_deterministic_across_thread_counts() {
    let machines: Vec<StateMachine> = [1, 4]
        .into_iter()
        .map(|threads| {
            StateMachine::with_config(Config {
                scheduler_threads: threads,
                ..Config::default()
            })
        })
        .collect();
    let mut machines = machines;
    let mut ids = Vec::new();
    for sm in &mut machines {
        ids = (0..4).map(|_| install(sm, wasm(TIMERS), None)).collect();
        let t0 = sm.get_time();
        for (k, id) in ids.iter().enumerate() {
            update(
                sm,
                *id,
                "set_timer",
                &(t0 + (k as u64 + 1) * SECOND).to_le_bytes(),
            );
        }
    }
    for _ in 0..6 {
        for sm in &mut machines {
            sm.advance_time(Duration::from_secs(1));
            sm.tick();
        }
        assert_eq!(machines[0].state_hash(), machines[1].state_hash());
    }
    for id in ids {
        assert_eq!(stats(&machines[0], id)[0], 1);
    }
}

// --- Enhanced orthogonal persistence -------------------------------------------------------

/// A counter kept in the heap only (as Motoko's enhanced orthogonal persistence keeps every
/// variable), with the custom section `section` if any.
fn heap_counter(section: Option<&str>) -> Vec<u8> {
    let custom = section.map_or(String::new(), |name| format!(r#"(@custom "{name}" "")"#));
    wasm(&format!(
        r#"(module
          (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
          (import "ic0" "msg_reply" (func $reply))
          (memory 1)
          (func (export "canister_update inc")
            (i64.store (i32.const 8) (i64.add (i64.load (i32.const 8)) (i64.const 1)))
            (call $append (i32.const 8) (i32.const 8))
            (call $reply))
          {custom})"#
    ))
}

const EOP_PRIVATE: &str = "icp:private enhanced-orthogonal-persistence";
const EOP_PUBLIC: &str = "icp:public enhanced-orthogonal-persistence";

fn upgrade(
    sm: &mut StateMachine,
    id: Principal,
    module: Vec<u8>,
    persistence: Option<WasmMemoryPersistence>,
) -> Result<(), RejectResponse> {
    let flags = persistence.map(|p| UpgradeFlags {
        skip_pre_upgrade: None,
        wasm_memory_persistence: Some(p),
    });
    sm.install_code(
        id,
        CanisterInstallMode::Upgrade(flags),
        module,
        vec![],
        Some(controller()),
    )
}

fn inc(sm: &mut StateMachine, id: Principal) -> i64 {
    numbers(&update(sm, id, "inc", &[]))[0]
}

fn eop_env() -> (StateMachine, Principal) {
    let mut sm = StateMachine::new();
    let id = install(&mut sm, heap_counter(Some(EOP_PRIVATE)), None);
    inc(&mut sm, id);
    inc(&mut sm, id);
    (sm, id)
}

/// A module built for enhanced orthogonal persistence keeps its heap with `keep`
/// (`icp:private` or `icp:public`), and loses it only when the controller says `replace`.
#[test]
fn keep_keeps_the_heap_of_an_orthogonally_persistent_canister() {
    let (mut sm, id) = eop_env();
    upgrade(
        &mut sm,
        id,
        heap_counter(Some(EOP_PUBLIC)),
        Some(WasmMemoryPersistence::Keep),
    )
    .unwrap();
    assert_eq!(inc(&mut sm, id), 3, "the heap survived the upgrade");
    upgrade(
        &mut sm,
        id,
        heap_counter(Some(EOP_PRIVATE)),
        Some(WasmMemoryPersistence::Replace),
    )
    .unwrap();
    assert_eq!(inc(&mut sm, id), 1, "replace clears the heap");
}

/// Without `wasm_memory_persistence`, upgrading a module with the section is refused (the
/// replica's "Missing upgrade option"), whatever the new module, and changes nothing.
#[test]
fn an_orthogonally_persistent_canister_needs_the_upgrade_option() {
    for new in [heap_counter(Some(EOP_PRIVATE)), heap_counter(None)] {
        let err =
            assert_refused_without_effect(eop_env, |sm, id| upgrade(sm, *id, new.clone(), None));
        assert_eq!(
            err.error_code,
            ErrorCode::CanisterContractViolation,
            "{err}"
        );
        assert!(
            err.reject_message.contains("Missing upgrade option"),
            "{err}"
        );
    }
}

/// `keep` is refused for a new module without the section (it could not read the old heap),
/// from a classic canister or from an orthogonally persistent one.
#[test]
fn keep_needs_a_new_module_with_the_section() {
    let classic = || {
        let mut sm = StateMachine::new();
        let id = install(&mut sm, heap_counter(None), None);
        inc(&mut sm, id);
        (sm, id)
    };
    for setup in [classic as fn() -> (StateMachine, Principal), eop_env] {
        let err = assert_refused_without_effect(setup, |sm, id| {
            upgrade(
                sm,
                *id,
                heap_counter(None),
                Some(WasmMemoryPersistence::Keep),
            )
        });
        assert_eq!(
            err.error_code,
            ErrorCode::CanisterContractViolation,
            "{err}"
        );
        assert!(
            err.reject_message.contains("Invalid upgrade option"),
            "{err}"
        );
    }
    // A classic canister may move to orthogonal persistence with `keep`.
    let (mut sm, id) = classic();
    upgrade(
        &mut sm,
        id,
        heap_counter(Some(EOP_PRIVATE)),
        Some(WasmMemoryPersistence::Keep),
    )
    .unwrap();
    assert_eq!(inc(&mut sm, id), 2);
}

// --- 64-bit heaps ---------------------------------------------------------------------------

/// `grow(pages)` replies with `memory.grow`'s result; `poke`/`peek` write and read an i64 at
/// 4 GiB + 8, above what a 32-bit heap can address.
const HEAP64: &str = r#"
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i64 i64 i64)))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (import "ic0" "msg_reply" (func $reply))
  (memory i64 1)
  (func $reply_i64 (param $v i64)
    (i64.store (i64.const 0) (local.get $v))
    (call $append (i64.const 0) (i64.const 8))
    (call $reply))
  (func (export "canister_update grow")
    (call $arg_copy (i64.const 0) (i64.const 0) (i64.const 8))
    (call $reply_i64 (memory.grow (i64.load (i64.const 0)))))
  (func (export "canister_update poke")
    (i64.store (i64.const 0x100000008) (i64.const 0x5eed))
    (call $reply_i64 (memory.size)))
  (func (export "canister_update peek")
    (call $reply_i64 (i64.load (i64.const 0x100000008))))
)
"#;

const GIB_PAGES: u64 = 1 << 14;

/// A 64-bit heap grows past 4 GiB up to the canister's `wasm_memory_limit` and the subnet's
/// 64-bit limit (here 5 GiB), keeps what is written above 4 GiB, and `memory.grow` beyond the
/// limit returns -1. Sparse: only a few pages are ever written.
#[test]
fn a_64_bit_heap_grows_beyond_4_gib_up_to_its_limit() {
    let mut sm = StateMachine::with_config(Config {
        max_wasm64_memory_bytes: 5 << 30,
        ..Config::default()
    });
    let settings = CanisterSettings {
        wasm_memory_limit: Some(Nat::from(8u64 << 30)),
        ..CanisterSettings::default()
    };
    let id = install(&mut sm, wasm(HEAP64), Some(settings));
    let grow = |sm: &mut StateMachine, pages: u64| {
        numbers(&update(sm, id, "grow", &pages.to_le_bytes()))[0]
    };
    assert_eq!(
        grow(&mut sm, 5 * GIB_PAGES),
        -1,
        "1 page + 5 GiB is above the 5 GiB limit"
    );
    assert_eq!(grow(&mut sm, 5 * GIB_PAGES - 1), 1, "exactly 5 GiB");
    assert_eq!(
        numbers(&update(&mut sm, id, "poke", &[]))[0],
        (5 * GIB_PAGES) as i64
    );
    assert_eq!(numbers(&update(&mut sm, id, "peek", &[]))[0], 0x5eed);
    assert_eq!(grow(&mut sm, 1), -1, "the heap is at its limit");
    let heap = &sm.state().canisters[&id]
        .execution_state
        .as_ref()
        .unwrap()
        .wasm_memory;
    assert_eq!(heap.size_bytes(), 5 << 30);
    assert!(
        heap.page_map().present_pages() <= 4,
        "the heap stays sparse"
    );
}

/// The canister's `wasm_memory_limit` caps a 64-bit heap below the subnet's limit.
#[test]
fn the_wasm_memory_limit_caps_a_64_bit_heap() {
    let mut sm = StateMachine::new();
    let settings = CanisterSettings {
        wasm_memory_limit: Some(Nat::from(1u64 << 30)),
        ..CanisterSettings::default()
    };
    let id = install(&mut sm, wasm(HEAP64), Some(settings));
    let grow = |sm: &mut StateMachine, pages: u64| {
        numbers(&update(sm, id, "grow", &pages.to_le_bytes()))[0]
    };
    assert_eq!(grow(&mut sm, GIB_PAGES), -1);
    assert_eq!(grow(&mut sm, GIB_PAGES - 1), 1);
}

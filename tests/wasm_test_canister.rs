//! The test canister as a real WebAssembly module (`rs/testing/test_canister.wat`) against the
//! native one: the same workload gives the same replies, the same error codes and the same
//! state on both, and the restore properties of the testing kit hold on real Wasm.
//!
//! What is compared after every step, per canister: controllers, version, certified data, and
//! for the live canister and each snapshot the interface's heap byte for byte (the Wasm
//! canister's memory above its 64 KiB scratch page), stable memory, globals and certified data;
//! after each step the canister the step touched is also read through its own methods
//! (`memory_sizes`, `get_global`, `read_heap`/`read_stable` in and out of bounds). Cycles and
//! the heap-delta debit are not compared: they differ by construction (a larger module and
//! heap pay more storage; the Wasm engine counts the pages a message changed, the native
//! canister the pages it wrote).

use candid::Encode;
use canister_snapshots::StateMachine;
use canister_snapshots::config::Config;
use canister_snapshots::memory::Memory;
use canister_snapshots::state::Global;
use canister_snapshots::testing::workload::{
    CanisterIndex, CanisterKind, Message, Operation, WorkloadShape, caller, canister,
    setup_messages_of,
};

const CANISTERS: u8 = 2;

fn machine(kind: CanisterKind) -> StateMachine {
    let mut sm = StateMachine::with_config(Config {
        max_snapshots_per_canister: 3,
        ..Config::default()
    });
    for m in setup_messages_of(kind, CANISTERS) {
        sm.update_call(m.receiver, m.sender, &m.method, m.payload)
            .unwrap();
    }
    sm
}

/// A reply or the error code of a refusal.
type Outcome = Result<Vec<u8>, ic_error_types::ErrorCode>;

fn call(sm: &mut StateMachine, n: CanisterIndex, method: &str, arg: Vec<u8>) -> Outcome {
    sm.update_call(canister(n), caller(0), method, arg)
        .map_err(|reject| reject.error_code)
}

#[derive(Debug, PartialEq, Eq)]
struct Image {
    heap: Vec<u8>,
    stable: Vec<u8>,
    globals: Vec<Global>,
    certified_data: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    controllers: Vec<candid::Principal>,
    version: u64,
    certified_data: Vec<u8>,
    live: Option<Image>,
    snapshots: Vec<(u64, Image)>,
}

fn image(
    kind: CanisterKind,
    heap: &Memory,
    stable: &Memory,
    globals: &[Global],
    certified: &[u8],
) -> Image {
    let flat = |m: &Memory| m.read_vec(0, m.size_bytes()).unwrap();
    Image {
        heap: kind.interface_heap(&flat(heap)).to_vec(),
        stable: flat(stable),
        globals: globals.to_vec(),
        certified_data: certified.to_vec(),
    }
}

fn observe(sm: &StateMachine, kind: CanisterKind, n: CanisterIndex) -> Option<Observed> {
    let state = sm.state();
    let c = state.canisters.get(&canister(n))?;
    Some(Observed {
        controllers: c.controllers.iter().copied().collect(),
        version: c.canister_version,
        certified_data: c.certified_data.clone(),
        live: c.execution_state.as_ref().map(|e| {
            image(
                kind,
                &e.wasm_memory,
                &e.stable_memory,
                &e.exported_globals,
                &c.certified_data,
            )
        }),
        snapshots: state
            .snapshots
            .list(c.canister_id)
            .map(|s| {
                let content = s.content();
                (
                    s.id().local_id(),
                    image(
                        kind,
                        &content.wasm_memory,
                        &content.stable_memory,
                        &content.exported_globals,
                        &content.certified_data,
                    ),
                )
            })
            .collect(),
    })
}

/// The reads each step makes of the canister it touched: sizes, globals (one missing), and
/// reads of both memories at their start, across a page boundary, at their end and past it.
fn reads(sm: &StateMachine, n: CanisterIndex) -> Vec<(&'static str, Vec<u8>)> {
    let sizes = |memory: fn(&canister_snapshots::state::CanisterState) -> u64| {
        sm.state().canisters.get(&canister(n)).map_or(0, memory)
    };
    let heap = sizes(|c| c.wasm_memory_size());
    let stable = sizes(|c| c.stable_memory_size());
    let mut reads = vec![
        ("memory_sizes", Encode!().unwrap()),
        ("get_global", Encode!(&0u32).unwrap()),
        ("get_global", Encode!(&1u32).unwrap()),
        ("get_global", Encode!(&2u32).unwrap()),
    ];
    for (method, size) in [("read_heap", heap), ("read_stable", stable)] {
        for (offset, len) in [
            (0, 64),
            (4090, 12),
            (size.saturating_sub(7), 7),
            (size, 0),
            (size, 1),
            (size + 1, 0),
        ] {
            reads.push((method, Encode!(&offset, &len).unwrap()));
        }
    }
    reads
}

/// Runs `ops` on a native and a Wasm machine and stops at the first difference.
fn compare(seed: u64, ops: &[Operation]) {
    let mut native = machine(CanisterKind::Native);
    let mut wasm = machine(CanisterKind::Wasm);
    for (step, op) in ops.iter().enumerate() {
        let at = format!("seed {seed} step {step} {op:?}");
        if let Operation::AdvanceTime { seconds } = op {
            native.advance_time(std::time::Duration::from_secs(*seconds));
            wasm.advance_time(std::time::Duration::from_secs(*seconds));
        }
        // Resolved against the native machine, so that a `Grow` starts from the interface's
        // heap size on both.
        let messages = (
            op.to_message_of(CanisterKind::Native, native.state()),
            op.to_message_of(CanisterKind::Wasm, native.state()),
        );
        match messages {
            (Some(a), Some(b)) => {
                // A management reply may carry sizes (a snapshot's `total_size`), which differ
                // with the module; a canister's reply must be the same bytes.
                let to_management = a.receiver == candid::Principal::management_canister();
                let outcome = |sm: &mut StateMachine, m: Message| {
                    sm.update_call(m.receiver, m.sender, &m.method, m.payload)
                        .map(|reply| if to_management { vec![] } else { reply })
                        .map_err(|r| r.error_code)
                };
                let expected = outcome(&mut native, a);
                let actual = outcome(&mut wasm, b);
                assert_eq!(expected, actual, "{at}: outcomes differ");
            }
            _ => {
                native.tick();
                wasm.tick();
            }
        }
        if let Some(n) = op.canister() {
            for (method, arg) in reads(&native, n) {
                let expected = call(&mut native, n, method, arg.clone());
                let actual = call(&mut wasm, n, method, arg.clone());
                assert_eq!(expected, actual, "{at}: {method} {arg:?} differs");
            }
        }
        for n in 0..CANISTERS {
            let expected = observe(&native, CanisterKind::Native, n);
            let actual = observe(&wasm, CanisterKind::Wasm, n);
            assert!(expected == actual, "{at}: canister {n} differs");
        }
    }
}

/// The same random workloads (writes, fills and growth of both memories, globals, certified
/// data, traps, takes, loads across canisters, deletes, controllers, freezing thresholds,
/// upgrades, time passing) on both canisters: the same outcomes and the same state throughout.
#[test]
fn the_wasm_test_canister_behaves_as_the_native_one() {
    let shape = WorkloadShape {
        canisters: CANISTERS,
        ..WorkloadShape::default()
    };
    for seed in 0..2 {
        compare(seed, &shape.generate(seed, 120));
    }
}

/// Argument decoding: what the native canister refuses as undecodable (CanisterCalledTrap),
/// the Wasm one refuses with the same code; an unknown method is CanisterMethodNotFound on
/// both.
#[test]
fn both_canisters_refuse_bad_arguments_alike() {
    let mut native = machine(CanisterKind::Native);
    let mut wasm = machine(CanisterKind::Wasm);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("write_heap", vec![]),
        ("write_heap", b"DIDL".to_vec()),
        ("read_heap", Encode!(&1u64).unwrap()),
        ("set_global", Encode!(&0u64, &1i64).unwrap()),
        (
            "set_certified_data",
            Encode!(&serde_bytes::ByteBuf::from(vec![1; 33])).unwrap(),
        ),
        ("trap", Encode!(&"a message").unwrap()),
        ("no_such_method", Encode!().unwrap()),
    ];
    for (method, arg) in cases {
        let expected = call(&mut native, 0, method, arg.clone());
        let actual = call(&mut wasm, 0, method, arg.clone());
        assert!(expected.is_err(), "{method} {arg:?}: {expected:?}");
        assert_eq!(expected, actual, "{method} {arg:?}");
    }
}

/// The restore properties of the testing kit on real WebAssembly: a load gives back the take,
/// a snapshot never changes, and download, upload and load is the identity.
#[cfg(feature = "proptest")]
#[test]
fn the_restore_properties_hold_on_real_wasm() {
    use canister_snapshots::testing::properties::{replay_of, run_property};
    use canister_snapshots::testing::strategies::operations;
    use proptest::test_runner::Config as ProptestConfig;
    let shape = WorkloadShape {
        canisters: CANISTERS,
        ..WorkloadShape::default()
    };
    for property in [
        "load_restores_the_take",
        "snapshots_never_change",
        "download_upload_load_is_identity",
    ] {
        let config = ProptestConfig {
            cases: 4,
            ..ProptestConfig::default()
        };
        run_property(property, config, operations(&shape, 10..=40), |ops| {
            replay_of(CanisterKind::Wasm, property, ops)
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    }
}

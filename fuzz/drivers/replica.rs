//! The replica every message target starts from, built once per process, and the delivery of
//! one message with the refusal check.
//!
//! Building the fixture takes a few rounds and writes 70 KB of heap; cloning the built state is
//! O(1) (copy-on-write page maps, shared hash caches), which is what makes the message targets
//! run thousands of inputs a second instead of rebuilding the replica for each.

use std::sync::OnceLock;

use candid::{Encode, Principal};
use canister_snapshots::execution::TestCanisterEngine;
use canister_snapshots::replicated_state::ReplicatedState;
use canister_snapshots::scheduler::{Batch, ExecutionLoop, Ingress};
use canister_snapshots::{Config, TEST_CANISTER_WASM};
use ic_error_types::{ErrorCode, UserError};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, InstallCodeArgs, ProvisionalCreateCanisterWithCyclesArgs,
};
use serde_bytes::ByteBuf;

/// Controls canister [`Pristine::canister`] (the fixtures' `controller()` in `tests/common`).
pub fn controller() -> Principal {
    Principal::self_authenticating([1])
}

/// Controls the second canister, [`Pristine::other`], and nothing else.
pub fn other_controller() -> Principal {
    Principal::self_authenticating([2])
}

/// Controls nothing.
pub fn stranger() -> Principal {
    Principal::self_authenticating([66])
}

/// The callers a fuzz input chooses from by index.
pub fn callers() -> [Principal; 4] {
    [
        controller(),
        stranger(),
        Principal::anonymous(),
        other_controller(),
    ]
}

pub fn caller(index: u8) -> Principal {
    let callers = callers();
    callers[usize::from(index) % callers.len()]
}

/// The built fixture: two installed test canisters, the first with heap, stable memory, a
/// global, certified data and one snapshot; at most two snapshots per canister, so the quota
/// is reachable.
pub struct Pristine {
    pub execution: ExecutionLoop,
    pub state: ReplicatedState,
    /// Controlled by [`controller`], holds data and a snapshot.
    pub canister: Principal,
    /// Controlled by [`other_controller`].
    pub other: Principal,
}

pub fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(build)
}

/// Sends one setup message in its own round; the fixture is fixed, so a failure is a bug in
/// the fixture, not a finding.
fn send(
    execution: &ExecutionLoop,
    state: &mut ReplicatedState,
    (sender, receiver): (Principal, Principal),
    method: &str,
    payload: Vec<u8>,
) -> Vec<u8> {
    let ingress = vec![Ingress {
        message_id: 0,
        sender,
        receiver,
        method: method.into(),
        payload,
    }];
    let batch = Batch {
        time: state.time,
        ingress,
    };
    let (_, result) = execution
        .execute_round(state, batch)
        .pop()
        .expect("one message, one result");
    result.unwrap_or_else(|err| panic!("the fixture's {method} failed: {err}"))
}

/// Creates a canister controlled by `owner` and installs the test canister in it.
fn install(execution: &ExecutionLoop, state: &mut ReplicatedState, owner: Principal) -> Principal {
    let mgmt = Principal::management_canister();
    let args = ProvisionalCreateCanisterWithCyclesArgs::default();
    let reply = send(
        execution,
        state,
        (owner, mgmt),
        "provisional_create_canister_with_cycles",
        Encode!(&args).expect("encodes"),
    );
    let id = candid::decode_one::<CanisterIdRecord>(&reply)
        .expect("a canister id record")
        .canister_id;
    let install = InstallCodeArgs {
        mode: CanisterInstallMode::Install,
        canister_id: id,
        wasm_module: TEST_CANISTER_WASM.to_vec(),
        arg: vec![],
        sender_canister_version: None,
    };
    let payload = Encode!(&install).expect("encodes");
    send(execution, state, (owner, mgmt), "install_code", payload);
    id
}

fn build() -> Pristine {
    let execution = ExecutionLoop::new(
        Config {
            max_snapshots_per_canister: 2,
            ..Config::default()
        },
        Box::new(TestCanisterEngine),
    );
    let mut state = execution.new_state();
    let canister = install(&execution, &mut state, controller());
    let other = install(&execution, &mut state, other_controller());
    let mgmt = Principal::management_canister();
    let take = canister_snapshots::management::types::TakeCanisterSnapshotArgs {
        canister_id: canister,
        replace_snapshot: None,
        uninstall_code: None,
        sender_canister_version: None,
        label: Some("fixture".into()),
    };
    let to_canister = (controller(), canister);
    let stable_marker = ByteBuf::from(b"stable marker".to_vec());
    for (route, method, payload) in [
        (to_canister, "fill_heap", Encode!(&0u64, &70_000u64, &3u8)),
        (
            to_canister,
            "write_stable",
            Encode!(&9_000u64, &stable_marker),
        ),
        (to_canister, "set_global", Encode!(&0u32, &-42i64)),
        (
            to_canister,
            "set_certified_data",
            Encode!(&ByteBuf::from(b"certified".to_vec())),
        ),
        (
            (controller(), mgmt),
            "take_canister_snapshot",
            Encode!(&take),
        ),
        (
            (other_controller(), other),
            "fill_heap",
            Encode!(&0u64, &5_000u64, &9u8),
        ),
    ] {
        send(
            &execution,
            &mut state,
            route,
            method,
            payload.expect("encodes"),
        );
    }
    // Fills every hash cache the clones will share.
    state.state_hash();
    Pristine {
        execution,
        state,
        canister,
        other,
    }
}

/// Whether `err`, the outcome of a message to `receiver`, is that of a canister method that
/// ran to completion and rejected (`ic0.msg_reject`) or returned without replying: as on the
/// IC its changes are kept (`spec/execution.md`, "Messages"), so it is not a refusal. (The
/// native test canister always replies; a Wasm canister need not.)
pub fn completed(receiver: Principal, err: &UserError) -> bool {
    receiver != Principal::management_canister()
        && matches!(
            err.code(),
            ErrorCode::CanisterRejectedMessage | ErrorCode::CanisterDidNotReply
        )
}

/// Methods that charge before their last check and keep the charge when it fails, as the
/// replica does (`spec/management.md`, "read and upload"): a refusal may take cycles from a
/// canister, and change nothing else.
pub const CHARGED_WHEN_REFUSED: &[&str] = &[
    "read_canister_snapshot_data",
    "upload_canister_snapshot_data",
];

/// `FUZZ_TRACE=1` prints every message's outcome, to see what an input reaches.
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// A copy of the pristine replica (or of any state) that messages are delivered to. A clone is
/// O(1) and continues independently: a twin.
#[derive(Clone)]
pub struct Replica {
    pub execution: &'static ExecutionLoop,
    pub state: ReplicatedState,
    next_message_id: u64,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    /// O(1): a copy-on-write clone of the pristine state.
    pub fn new() -> Self {
        let pristine = pristine();
        Replica {
            execution: &pristine.execution,
            state: pristine.state.clone(),
            next_message_id: 0,
        }
    }

    /// A replica of `state` executed by `execution`, for targets that need another engine or
    /// configuration than the pristine fixture's.
    pub fn on(execution: &'static ExecutionLoop, state: ReplicatedState) -> Self {
        Replica {
            execution,
            state,
            next_message_id: 0,
        }
    }

    /// Executes a round holding one message. Checks the refusal invariant of
    /// `ARCHITECTURE.md`: when the message is refused, the state hash equals that of a twin
    /// that executed an empty round instead (the round counter and heap-delta drain still
    /// advance, the message leaves no trace), as `assert_refused_without_effect` in
    /// `tests/common` checks for the integration tests; the [`CHARGED_WHEN_REFUSED`] methods
    /// may also have taken cycles.
    pub fn deliver(
        &mut self,
        sender: Principal,
        receiver: Principal,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, UserError> {
        let mut twin = self.state.clone();
        let message_id = self.next_message_id;
        self.next_message_id += 1;
        let batch = Batch {
            time: self.state.time,
            ingress: vec![Ingress {
                message_id,
                sender,
                receiver,
                method: method.to_string(),
                payload,
            }],
        };
        let (_, result) = self
            .execution
            .execute_round(&mut self.state, batch)
            .pop()
            .expect("one message, one result");
        if tracing() {
            match &result {
                Ok(reply) => eprintln!("{method} from {sender}: replied {} bytes", reply.len()),
                Err(err) => eprintln!("{method} from {sender}: {err}"),
            }
        }
        if let Err(err) = &result
            && !completed(receiver, err)
        {
            let empty = Batch {
                time: twin.time,
                ingress: Vec::new(),
            };
            self.execution.execute_round(&mut twin, empty);
            if CHARGED_WHEN_REFUSED.contains(&method) {
                // The one trace these may leave: cycles taken (`spec/management.md`).
                for (id, canister) in &mut twin.canisters {
                    let actual = self.state.canisters.get(id).map_or(0, |c| c.cycles);
                    assert!(
                        actual <= canister.cycles,
                        "the refused {method} gave {id} cycles: {err}"
                    );
                    canister.cycles = actual;
                }
            }
            assert_eq!(
                self.state.state_hash(),
                twin.state_hash(),
                "the refused {method} to {receiver} from {sender} changed the state: {err}"
            );
        }
        result
    }
}

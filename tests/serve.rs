//! `canister-snapshots serve` driven by `ic-agent` 0.49 (the agent icp-cli is built on) over
//! HTTP on 127.0.0.1: every certificate and query signature is verified by the agent against
//! the root key `serve` prints, as a real client pins it.

#[path = "common/raw_http.rs"]
mod raw_http;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use candid::{Encode, Principal};
use canister_snapshots::TEST_CANISTER_WASM;
use canister_snapshots::replicated_state::canister_id_from_index;
use ic_agent::identity::{BasicIdentity, Prime256v1Identity, Secp256k1Identity};
use ic_agent::{Agent, AgentError, Identity};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, DeleteCanisterSnapshotArgs, InstallCodeArgs,
    LoadCanisterSnapshotArgs, ProvisionalCreateCanisterWithCyclesArgs, Snapshot,
    TakeCanisterSnapshotArgs,
};

use raw_http::{post, post_head, raw_request};

/// A `serve` process on a fresh port; killed (SIGKILL) when dropped.
struct Serve {
    child: Child,
    url: String,
    root_key: Vec<u8>,
}

impl Serve {
    fn start(dir: &std::path::Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_canister-snapshots"))
            .args(["serve", "--bind", "127.0.0.1:0", "--state-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = lines.next().unwrap().unwrap();
        let url = listening
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {listening:?}"))
            .to_string();
        let key_line = lines.next().unwrap().unwrap();
        let hex = key_line.strip_prefix("root key: ").unwrap();
        assert_eq!(hex.len(), 266, "the DER root key icp's -k takes");
        let root_key = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Serve {
            child,
            url,
            root_key,
        }
    }

    fn agent(&self, identity: impl Identity + 'static) -> Agent {
        let agent = Agent::builder()
            .with_url(&self.url)
            .with_identity(identity)
            .build()
            .unwrap();
        agent.set_root_key(self.root_key.clone());
        agent
    }

    /// SIGTERM: `serve` checkpoints and exits 0.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn identity(seed: u8) -> BasicIdentity {
    BasicIdentity::from_raw_key(&[seed; 32])
}

async fn management(
    agent: &Agent,
    effective: Principal,
    method: &str,
    arg: Vec<u8>,
) -> Result<Vec<u8>, AgentError> {
    agent
        .update(&Principal::management_canister(), method)
        .with_effective_canister_id(effective)
        .with_arg(arg)
        .call_and_wait()
        .await
}

async fn create_canister(agent: &Agent) -> Principal {
    let args = ProvisionalCreateCanisterWithCyclesArgs {
        amount: None,
        settings: None,
        specified_id: None,
        sender_canister_version: None,
    };
    let reply = management(
        agent,
        canister_id_from_index(0),
        "provisional_create_canister_with_cycles",
        Encode!(&args).unwrap(),
    )
    .await
    .unwrap();
    candid::decode_one::<CanisterIdRecord>(&reply)
        .unwrap()
        .canister_id
}

async fn install(agent: &Agent, canister_id: Principal) {
    install_module(agent, canister_id, TEST_CANISTER_WASM).await;
}

async fn install_module(agent: &Agent, canister_id: Principal, wasm_module: &[u8]) {
    let args = InstallCodeArgs {
        mode: CanisterInstallMode::Install,
        canister_id,
        wasm_module: wasm_module.to_vec(),
        arg: vec![],
        sender_canister_version: None,
    };
    management(agent, canister_id, "install_code", Encode!(&args).unwrap())
        .await
        .unwrap();
}

async fn write_heap(agent: &Agent, canister_id: Principal, data: &[u8]) {
    agent
        .update(&canister_id, "write_heap")
        .with_arg(Encode!(&0u64, &serde_bytes::ByteBuf::from(data.to_vec())).unwrap())
        .call_and_wait()
        .await
        .unwrap();
}

/// The test canister's `read_heap`, an update method (the test canister exports no query):
/// its certified reply.
/// `take_canister_snapshot` of `canister_id`, replacing nothing; panics if refused.
async fn take_snapshot(agent: &Agent, canister_id: Principal) -> Snapshot {
    let take = TakeCanisterSnapshotArgs {
        canister_id,
        replace_snapshot: None,
        uninstall_code: None,
        sender_canister_version: None,
    };
    let reply = management(
        agent,
        canister_id,
        "take_canister_snapshot",
        Encode!(&take).unwrap(),
    )
    .await
    .unwrap();
    candid::decode_one::<Snapshot>(&reply).unwrap()
}

/// `load_canister_snapshot` of `snapshot_id` into `canister_id`; panics if refused.
async fn load_snapshot(agent: &Agent, canister_id: Principal, snapshot_id: Vec<u8>) {
    let load = LoadCanisterSnapshotArgs {
        canister_id,
        snapshot_id,
        sender_canister_version: None,
    };
    management(
        agent,
        canister_id,
        "load_canister_snapshot",
        Encode!(&load).unwrap(),
    )
    .await
    .unwrap();
}

async fn read_heap(agent: &Agent, canister_id: Principal, len: u64) -> Vec<u8> {
    let reply = agent
        .update(&canister_id, "read_heap")
        .with_arg(Encode!(&0u64, &len).unwrap())
        .call_and_wait()
        .await
        .unwrap();
    candid::decode_one::<serde_bytes::ByteBuf>(&reply)
        .unwrap()
        .into_vec()
}

#[test]
fn ic_agent_drives_every_snapshot_method_with_verified_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let agent = serve.agent(identity(1));
        let status = agent.status().await.unwrap();
        assert_eq!(status.root_key.as_deref(), Some(serve.root_key.as_slice()));

        let canister_id = create_canister(&agent).await;
        install(&agent, canister_id).await;
        write_heap(&agent, canister_id, b"before").await;
        assert_eq!(read_heap(&agent, canister_id, 6).await, b"before");

        let controllers = agent
            .read_state_canister_controllers(canister_id)
            .await
            .unwrap();
        assert_eq!(controllers, vec![agent.get_principal().unwrap()]);
        let module_hash = agent
            .read_state_canister_module_hash(canister_id)
            .await
            .unwrap();
        assert_eq!(module_hash.len(), 32);
        // The install's batch time, certified as the replica does (a LEB128 natural number).
        let installed = agent
            .read_state_canister_info(canister_id, "last_install_timestamp")
            .await
            .unwrap();
        let nanos = installed
            .iter()
            .rev()
            .fold(0u64, |n, b| (n << 7) | u64::from(b & 0x7f));
        assert!(nanos > 1_600_000_000_000_000_000, "{installed:?}");

        let snapshot = take_snapshot(&agent, canister_id).await;
        let listed = management(
            &agent,
            canister_id,
            "list_canister_snapshots",
            Encode!(&CanisterIdRecord { canister_id }).unwrap(),
        )
        .await
        .unwrap();
        let listed = candid::decode_one::<Vec<Snapshot>>(&listed).unwrap();
        assert_eq!(
            listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
            [&snapshot.id]
        );

        write_heap(&agent, canister_id, b"after!").await;
        load_snapshot(&agent, canister_id, snapshot.id.clone()).await;
        assert_eq!(read_heap(&agent, canister_id, 6).await, b"before");

        let delete = DeleteCanisterSnapshotArgs {
            canister_id,
            snapshot_id: snapshot.id,
        };
        management(
            &agent,
            canister_id,
            "delete_canister_snapshot",
            Encode!(&delete).unwrap(),
        )
        .await
        .unwrap();
        let listed = management(
            &agent,
            canister_id,
            "list_canister_snapshots",
            Encode!(&CanisterIdRecord { canister_id }).unwrap(),
        )
        .await
        .unwrap();
        assert!(
            candid::decode_one::<Vec<Snapshot>>(&listed)
                .unwrap()
                .is_empty()
        );

        // A reject is certified too, with the IC's code.
        let err = agent
            .update(&canister_id, "trap")
            .with_arg(Encode!(&"no").unwrap())
            .call_and_wait()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("IC0503"), "{err}");

        // Someone else is not a controller: refused by the management canister.
        let stranger = serve.agent(identity(2));
        let err = management(
            &stranger,
            canister_id,
            "list_canister_snapshots",
            Encode!(&CanisterIdRecord { canister_id }).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("controller"), "{err}");
    });
}

#[test]
fn secp256k1_and_p256_senders_are_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let k256 =
            Secp256k1Identity::from_private_key(k256::SecretKey::from_slice(&[3u8; 32]).unwrap());
        let p256 =
            Prime256v1Identity::from_private_key(p256::SecretKey::from_slice(&[4u8; 32]).unwrap());
        for agent in [serve.agent(k256), serve.agent(p256)] {
            let canister_id = create_canister(&agent).await;
            let controllers = agent
                .read_state_canister_controllers(canister_id)
                .await
                .unwrap();
            assert_eq!(controllers, vec![agent.get_principal().unwrap()]);
        }
    });
}

fn create_args() -> Vec<u8> {
    Encode!(&ProvisionalCreateCanisterWithCyclesArgs {
        amount: None,
        settings: None,
        specified_id: None,
        sender_canister_version: None,
    })
    .unwrap()
}

#[test]
fn a_bad_signature_is_refused_and_a_replay_executes_once() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let agent = serve.agent(identity(1));
        let effective = canister_id_from_index(0);
        let sign = || {
            agent
                .update(
                    &Principal::management_canister(),
                    "provisional_create_canister_with_cycles",
                )
                .with_effective_canister_id(effective)
                .with_arg(create_args())
                .sign()
                .unwrap()
        };

        let signed = sign();
        let mut envelope: serde_cbor::Value =
            serde_cbor::from_slice(&signed.signed_update).unwrap();
        if let serde_cbor::Value::Map(map) = &mut envelope {
            let sig = map
                .get_mut(&serde_cbor::Value::Text("sender_sig".into()))
                .unwrap();
            if let serde_cbor::Value::Bytes(bytes) = sig {
                bytes[0] ^= 1;
            }
        }
        let tampered = serde_cbor::to_vec(&envelope).unwrap();
        let err = agent.update_signed(effective, tampered).await.unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );

        // The same signed request twice: one canister.
        let signed = sign();
        for _ in 0..2 {
            agent
                .update_signed(effective, signed.signed_update.clone())
                .await
                .unwrap();
        }
        // The refused and the replayed requests created one canister between them: the next
        // one gets the second id.
        assert_eq!(create_canister(&agent).await, canister_id_from_index(1));

        // Its status is its sender's: another principal may not read it.
        assert!(
            agent
                .request_status_raw(&signed.request_id, effective)
                .await
                .is_ok()
        );
        let stranger = serve.agent(identity(2));
        let err = stranger
            .request_status_raw(&signed.request_id, effective)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another sender"), "{err}");
    });
}

#[test]
fn a_restart_after_kill_keeps_acknowledged_state_and_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let root_key = serve.root_key.clone();
    let (canister_id, replay) = runtime().block_on(async {
        let agent = serve.agent(identity(1));
        let canister_id = create_canister(&agent).await;
        install(&agent, canister_id).await;
        write_heap(&agent, canister_id, b"acknowledged").await;
        let replay = agent
            .update(
                &Principal::management_canister(),
                "provisional_create_canister_with_cycles",
            )
            .with_effective_canister_id(canister_id)
            .with_arg(create_args())
            .sign()
            .unwrap();
        agent
            .update_signed(canister_id, replay.signed_update.clone())
            .await
            .unwrap();
        (canister_id, replay)
    });
    // SIGKILL: no shutdown checkpoint; what the client was told must survive anyway.
    drop(serve);
    let serve = Serve::start(dir.path());
    assert_eq!(serve.root_key, root_key);
    runtime().block_on(async {
        let agent = serve.agent(identity(1));
        assert_eq!(read_heap(&agent, canister_id, 12).await, b"acknowledged");
        write_heap(&agent, canister_id, b"after restart").await;
        // The history came back with the state: the same signed request, sent again after
        // the restart, does not execute again (two canisters so far, so the next is the third).
        agent
            .update_signed(canister_id, replay.signed_update)
            .await
            .unwrap();
        assert_eq!(create_canister(&agent).await, canister_id_from_index(2));
    });
    serve.terminate();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let agent = serve.agent(identity(1));
        assert_eq!(read_heap(&agent, canister_id, 13).await, b"after restart");
    });
}

#[test]
fn bad_input_gets_a_4xx_with_a_message_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let id = canister_id_from_index(0).to_text();
    let call = format!("/api/v2/canister/{id}/call");
    let (code, body) = post(&serve.url, &call, "application/cbor", b"\xff\x00garbage");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("CBOR"), "{body}");
    let (code, body) = post(&serve.url, &call, "application/json", b"{}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("application/cbor"), "{body}");
    let (code, body) = post(&serve.url, "/api/v2/nowhere", "application/cbor", b"");
    assert_eq!(code, 404, "{body}");
    let (code, body) = post(
        &serve.url,
        "/api/v2/canister/not-a-principal/call",
        "application/cbor",
        b"",
    );
    assert_eq!(code, 400, "{body}");
    // A body announced above the limit is refused before it is read.
    let request = post_head(&call, "application/cbor", 5 << 20);
    let (code, body) = raw_request(&serve.url, request.as_bytes());
    assert_eq!(code, 413, "{body}");
    // A well-formed anonymous request with the wrong effective canister id.
    runtime().block_on(async {
        let agent = Agent::builder().with_url(&serve.url).build().unwrap();
        agent.set_root_key(serve.root_key.clone());
        let err = agent
            .update(&canister_id_from_index(7), "write_heap")
            .with_arg(Encode!(&0u64, &serde_bytes::ByteBuf::new()).unwrap())
            .with_effective_canister_id(canister_id_from_index(8))
            .call_and_wait()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("effective canister id"), "{err}");
        // Still serving.
        assert!(agent.status().await.is_ok());
    });
}

/// An identity acting for `from` through one delegation to a fresh key.
fn delegated(
    from: &BasicIdentity,
    expiration: u64,
    targets: Option<Vec<Principal>>,
) -> ic_agent::identity::DelegatedIdentity {
    use ic_agent::identity::{DelegatedIdentity, Delegation, SignedDelegation};
    let to = identity(9);
    let delegation = Delegation {
        pubkey: to.public_key().unwrap(),
        expiration,
        targets,
        permissions: None,
    };
    let signature = from
        .sign_delegation(&delegation)
        .unwrap()
        .signature
        .unwrap();
    DelegatedIdentity::new_unchecked(
        from.public_key().unwrap(),
        Box::new(to),
        vec![SignedDelegation {
            delegation,
            signature,
        }],
    )
}

#[test]
fn delegations_are_checked_for_signature_expiry_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let hour = 3_600_000_000_000;
    runtime().block_on(async {
        let owner = identity(5);
        let owner_principal = owner.sender().unwrap();
        // A valid delegation acts as the delegating principal.
        let agent = serve.agent(delegated(&owner, now + hour, None));
        let canister_id = create_canister(&agent).await;
        let controllers = agent
            .read_state_canister_controllers(canister_id)
            .await
            .unwrap();
        assert_eq!(controllers, vec![owner_principal]);

        let expired = serve.agent(delegated(&identity(5), now - hour, None));
        let err = management(
            &expired,
            canister_id_from_index(0),
            "provisional_create_canister_with_cycles",
            create_args(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let elsewhere = serve.agent(delegated(
            &identity(5),
            now + hour,
            Some(vec![canister_id_from_index(42)]),
        ));
        let err = management(
            &elsewhere,
            canister_id_from_index(0),
            "provisional_create_canister_with_cycles",
            create_args(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("does not allow requests"), "{err}");
    });
}

/// The counter canister of the end-to-end script (tests/e2e/counter.wat): public and private
/// metadata.
fn counter_wasm() -> Vec<u8> {
    wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/counter.wat"
    ))
    .unwrap()
}

#[test]
fn canisters_are_created_as_icp_creates_them_through_the_cmc_and_the_cycles_ledger() {
    use canister_snapshots::replica::system_canisters::{
        CYCLES_LEDGER_ID, CYCLES_MINTING_CANISTER_ID, CreateCanisterArgs, CreateCanisterResult,
        CreationArgs, LOCAL_ACCOUNT_BALANCE, SubnetSelection,
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        // A fresh identity: no cycles were minted for it.
        let agent = serve.agent(identity(21));
        let me = agent.get_principal().unwrap();
        // The CMC's default subnets (a query whose node signature the agent verifies), then
        // that subnet's state, read at the subnet's read_state.
        let reply = agent
            .query(&CYCLES_MINTING_CANISTER_ID, "get_default_subnets")
            .with_arg(Encode!().unwrap())
            .call()
            .await
            .unwrap();
        let subnets = candid::decode_one::<Vec<Principal>>(&reply).unwrap();
        let subnet = Principal::self_authenticating(&serve.root_key);
        assert_eq!(subnets, [subnet]);
        let info = agent.fetch_subnet_by_id(&subnet).await.unwrap();
        assert!(info.contains_canister(&CYCLES_LEDGER_ID));
        // The balance queries icp makes.
        let balance = agent
            .query(&CYCLES_LEDGER_ID, "icrc1_balance_of")
            .with_arg(Encode!(&(me, None::<Vec<u8>>)).unwrap())
            .call()
            .await;
        // `Account` is a record; the tuple above is not one: refused as the ledger traps.
        assert!(balance.is_err());
        #[derive(candid::CandidType)]
        struct Account {
            owner: Principal,
            subaccount: Option<Vec<u8>>,
        }
        let reply = agent
            .query(&CYCLES_LEDGER_ID, "icrc1_balance_of")
            .with_arg(
                Encode!(&Account {
                    owner: me,
                    subaccount: None
                })
                .unwrap(),
            )
            .call()
            .await
            .unwrap();
        assert_eq!(
            candid::decode_one::<candid::Nat>(&reply).unwrap(),
            candid::Nat::from(LOCAL_ACCOUNT_BALANCE)
        );
        // The ledger's create_canister, as icp sends it: a canister with the amount asked
        // for, controlled by the caller.
        let create = |subnet| CreateCanisterArgs {
            from_subaccount: None,
            created_at_time: None,
            amount: candid::Nat::from(2_000_000_000_000u64),
            creation_args: Some(CreationArgs {
                subnet_selection: Some(SubnetSelection::Subnet { subnet }),
                settings: None,
            }),
        };
        let reply = agent
            .update(&CYCLES_LEDGER_ID, "create_canister")
            .with_arg(Encode!(&create(subnet)).unwrap())
            .call_and_wait()
            .await
            .unwrap();
        let CreateCanisterResult::Ok { canister_id, .. } =
            candid::decode_one::<CreateCanisterResult>(&reply).unwrap()
        else {
            panic!("created");
        };
        let status = management(
            &agent,
            canister_id,
            "canister_status",
            Encode!(&CanisterIdRecord { canister_id }).unwrap(),
        )
        .await
        .unwrap();
        let status =
            candid::decode_one::<ic_management_canister_types::CanisterStatusResult>(&status)
                .unwrap();
        assert_eq!(status.settings.controllers, [me]);
        assert!(status.cycles <= 2_000_000_000_000u64);
        assert!(status.cycles > 1_900_000_000_000u64);
        // Another subnet: the ledger's own error, nothing created.
        let reply = agent
            .update(&CYCLES_LEDGER_ID, "create_canister")
            .with_arg(Encode!(&create(Principal::anonymous())).unwrap())
            .call_and_wait()
            .await
            .unwrap();
        assert!(matches!(
            candid::decode_one::<CreateCanisterResult>(&reply).unwrap(),
            CreateCanisterResult::Err(_)
        ));
        // What the emulation does not have is refused as a missing method.
        let err = agent
            .update(&CYCLES_MINTING_CANISTER_ID, "notify_create_canister")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("has no method"), "{err}");
        // The allocator never gives out the CMC's id (the subnet's fifth): more creations
        // skip it.
        let mut created = vec![canister_id];
        for _ in 0..5 {
            created.push(create_canister(&agent).await);
        }
        assert!(
            !created.contains(&CYCLES_MINTING_CANISTER_ID),
            "{created:?}"
        );
        assert_eq!(created.len(), 6);
    });
}

#[test]
fn metadata_sections_are_certified_and_private_ones_readable_by_controllers_only() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let controller = serve.agent(identity(31));
        let canister_id = create_canister(&controller).await;
        install_module(&controller, canister_id, &counter_wasm()).await;
        let candid = controller
            .read_state_canister_metadata(canister_id, "candid:service")
            .await
            .unwrap();
        assert!(
            String::from_utf8(candid)
                .unwrap()
                .contains("inc : () -> (nat)")
        );
        let secret = controller
            .read_state_canister_metadata(canister_id, "e2e:secret")
            .await
            .unwrap();
        assert_eq!(secret, b"only controllers read this");

        let stranger = serve.agent(identity(32));
        // Public: anyone. Private: refused (403) to a non-controller.
        assert!(
            stranger
                .read_state_canister_metadata(canister_id, "candid:service")
                .await
                .is_ok()
        );
        let err = stranger
            .read_state_canister_metadata(canister_id, "e2e:secret")
            .await
            .unwrap_err();
        match err {
            AgentError::HttpError(payload) => {
                assert_eq!(payload.status, 403);
                assert!(
                    String::from_utf8_lossy(&payload.content).contains("controllers"),
                    "{payload:?}"
                );
            }
            other => panic!("expected 403, got {other}"),
        }
        // A section the module lacks is provably absent, for anyone.
        let absent = stranger
            .read_state_canister_metadata(canister_id, "no-such-section")
            .await;
        assert!(
            matches!(absent, Err(AgentError::LookupPathAbsent(_))),
            "{absent:?}"
        );
        // The counter itself works on wasmtime behind serve.
        let reply = stranger
            .update(&canister_id, "inc")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .unwrap();
        assert_eq!(
            candid::decode_one::<candid::Nat>(&reply).unwrap(),
            candid::Nat::from(1u8)
        );
        // A query, its node signature verified by the agent (on by default, as icp leaves it).
        let count = || async {
            let reply = stranger
                .query(&canister_id, "read")
                .with_arg(Encode!().unwrap())
                .call()
                .await
                .unwrap();
            candid::decode_one::<candid::Nat>(&reply).unwrap()
        };
        assert_eq!(count().await, candid::Nat::from(1u8));
        // An update method sent as a query is refused as the IC refuses it; it does not run
        // (its change would be dropped while the client was told it happened).
        let err = stranger
            .query(&canister_id, "inc")
            .with_arg(Encode!().unwrap())
            .call()
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("IC0536") && message.contains("has no query method 'inc'"),
            "{message}"
        );
        assert_eq!(count().await, candid::Nat::from(1u8));
    });
}

#[test]
fn provisional_top_up_adds_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let agent = serve.agent(identity(41));
        let canister_id = create_canister(&agent).await;
        let cycles = |reply: Vec<u8>| {
            candid::decode_one::<ic_management_canister_types::CanisterStatusResult>(&reply)
                .unwrap()
                .cycles
        };
        let status = Encode!(&CanisterIdRecord { canister_id }).unwrap();
        let before = cycles(
            management(&agent, canister_id, "canister_status", status.clone())
                .await
                .unwrap(),
        );
        // Anyone may top up on a local replica.
        let other = serve.agent(identity(42));
        let amount = 1_000_000_000_000_000u128;
        let args = ic_management_canister_types::ProvisionalTopUpCanisterArgs {
            canister_id,
            amount: candid::Nat::from(amount),
        };
        management(
            &other,
            canister_id,
            "provisional_top_up_canister",
            Encode!(&args).unwrap(),
        )
        .await
        .unwrap();
        let after = cycles(
            management(&agent, canister_id, "canister_status", status)
                .await
                .unwrap(),
        );
        // Storage charges between the two reads take a little.
        assert!(after.clone() > before.clone() + candid::Nat::from(amount - 1_000_000_000_000));
        assert!(after <= before + candid::Nat::from(amount));
    });
}

/// A snapshot downloaded and uploaded back through HTTP in full 2 MB slices, every argument
/// encoded and every reply decoded with the IC's Rust types (`ic-management-canister-types`,
/// as icp-cli and ic-agent use them). Each `upload_canister_snapshot_data` argument carries a
/// 2 MB chunk, which the effective canister id check has to read past (icp 1.5.0's upload was
/// refused there: "Decoding cost exceeds the limit").
#[test]
fn a_snapshot_moves_through_http_in_full_slices_with_the_ics_types() {
    use ic_management_canister_types::{
        ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotDataResult,
        ReadCanisterSnapshotMetadataArgs, ReadCanisterSnapshotMetadataResult, SnapshotDataKind,
        SnapshotDataOffset, UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
        UploadCanisterSnapshotMetadataResult,
    };
    const SLICE: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    runtime().block_on(async {
        let agent = serve.agent(identity(51));
        let canister_id = create_canister(&agent).await;
        install(&agent, canister_id).await;
        let heap = |method: &'static str, arg: Vec<u8>| {
            let agent = &agent;
            async move {
                agent
                    .update(&canister_id, method)
                    .with_arg(arg)
                    .call_and_wait()
                    .await
                    .unwrap()
            }
        };
        heap("fill_heap", Encode!(&0u64, &5_000_000u64, &0x5Au8).unwrap()).await;
        let marker = serde_bytes::ByteBuf::from(b"marker".to_vec());
        heap("write_heap", Encode!(&4_100_000u64, &marker).unwrap()).await;
        let snapshot_id = take_snapshot(&agent, canister_id).await.id;

        let read = ReadCanisterSnapshotMetadataArgs {
            canister_id,
            snapshot_id: snapshot_id.clone(),
        };
        let reply = management(
            &agent,
            canister_id,
            "read_canister_snapshot_metadata",
            Encode!(&read).unwrap(),
        )
        .await
        .unwrap();
        let metadata = candid::decode_one::<ReadCanisterSnapshotMetadataResult>(&reply).unwrap();
        let read_region = |size: u64, kind: fn(u64, u64) -> SnapshotDataKind| {
            let agent = &agent;
            let snapshot_id = snapshot_id.clone();
            async move {
                let mut bytes = Vec::new();
                for offset in (0..size).step_by(SLICE as usize) {
                    let args = ReadCanisterSnapshotDataArgs {
                        canister_id,
                        snapshot_id: snapshot_id.clone(),
                        kind: kind(offset, SLICE.min(size - offset)),
                    };
                    let reply = management(
                        agent,
                        canister_id,
                        "read_canister_snapshot_data",
                        Encode!(&args).unwrap(),
                    )
                    .await
                    .unwrap();
                    let chunk = candid::decode_one::<ReadCanisterSnapshotDataResult>(&reply)
                        .unwrap()
                        .chunk;
                    bytes.extend_from_slice(&chunk);
                }
                bytes
            }
        };
        let module = read_region(metadata.wasm_module_size, |offset, size| {
            SnapshotDataKind::WasmModule { offset, size }
        })
        .await;
        assert_eq!(module, TEST_CANISTER_WASM);
        let memory = read_region(metadata.wasm_memory_size, |offset, size| {
            SnapshotDataKind::WasmMemory { offset, size }
        })
        .await;
        assert!(memory.len() >= 5_000_000, "{}", memory.len());
        assert_eq!(&memory[4_100_000..4_100_006], b"marker");

        let upload = UploadCanisterSnapshotMetadataArgs {
            canister_id,
            replace_snapshot: None,
            wasm_module_size: metadata.wasm_module_size,
            globals: metadata.globals.iter().flatten().cloned().collect(),
            wasm_memory_size: metadata.wasm_memory_size,
            stable_memory_size: metadata.stable_memory_size,
            certified_data: metadata.certified_data.clone(),
            global_timer: metadata.global_timer.clone(),
            on_low_wasm_memory_hook_status: metadata.on_low_wasm_memory_hook_status.clone(),
        };
        let reply = management(
            &agent,
            canister_id,
            "upload_canister_snapshot_metadata",
            Encode!(&upload).unwrap(),
        )
        .await
        .unwrap();
        let uploaded = candid::decode_one::<UploadCanisterSnapshotMetadataResult>(&reply)
            .unwrap()
            .snapshot_id;
        type Region<'a> = (&'a [u8], fn(u64) -> SnapshotDataOffset);
        let regions: [Region<'_>; 2] = [
            (&module, |offset| SnapshotDataOffset::WasmModule { offset }),
            (&memory, |offset| SnapshotDataOffset::WasmMemory { offset }),
        ];
        for (bytes, kind) in regions {
            for (i, chunk) in bytes.chunks(SLICE as usize).enumerate() {
                let args = UploadCanisterSnapshotDataArgs {
                    canister_id,
                    snapshot_id: uploaded.clone(),
                    kind: kind(i as u64 * SLICE),
                    chunk: chunk.to_vec(),
                };
                management(
                    &agent,
                    canister_id,
                    "upload_canister_snapshot_data",
                    Encode!(&args).unwrap(),
                )
                .await
                .unwrap_or_else(|e| panic!("slice {i} of {} bytes: {e}", chunk.len()));
            }
        }

        heap(
            "write_heap",
            Encode!(
                &4_100_000u64,
                &serde_bytes::ByteBuf::from(b"later!".to_vec())
            )
            .unwrap(),
        )
        .await;
        load_snapshot(&agent, canister_id, uploaded).await;
        let reply = heap("read_heap", Encode!(&4_099_998u64, &10u64).unwrap()).await;
        assert_eq!(
            candid::decode_one::<serde_bytes::ByteBuf>(&reply)
                .unwrap()
                .as_slice(),
            b"\x5a\x5amarker\x5a\x5a"
        );
    });
}

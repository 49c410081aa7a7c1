//! `canister-snapshots serve` driven by `ic-agent` 0.49 (the agent icp-cli is built on) over
//! HTTP on 127.0.0.1: every certificate and query signature is verified by the agent against
//! the root key `serve` prints, as a real client pins it.

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
    let args = InstallCodeArgs {
        mode: CanisterInstallMode::Install,
        canister_id,
        wasm_module: TEST_CANISTER_WASM.to_vec(),
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

/// A query, its node signature verified by the agent (on by default, as icp leaves it).
async fn read_heap(agent: &Agent, canister_id: Principal, len: u64) -> Vec<u8> {
    let reply = agent
        .query(&canister_id, "read_heap")
        .with_arg(Encode!(&0u64, &len).unwrap())
        .call()
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

        let take = TakeCanisterSnapshotArgs {
            canister_id,
            replace_snapshot: None,
            uninstall_code: None,
            sender_canister_version: None,
        };
        let reply = management(
            &agent,
            canister_id,
            "take_canister_snapshot",
            Encode!(&take).unwrap(),
        )
        .await
        .unwrap();
        let snapshot = candid::decode_one::<Snapshot>(&reply).unwrap();
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
        let load = LoadCanisterSnapshotArgs {
            canister_id,
            snapshot_id: snapshot.id.clone(),
            sender_canister_version: None,
        };
        management(
            &agent,
            canister_id,
            "load_canister_snapshot",
            Encode!(&load).unwrap(),
        )
        .await
        .unwrap();
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

/// One raw HTTP/1.1 exchange: the status code and body.
fn raw_request(url: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn post(url: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_request(url, &request)
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
    let request = format!(
        "POST {call} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/cbor\r\nContent-Length: {}\r\n\r\n",
        5 << 20
    );
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

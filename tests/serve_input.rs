//! Bad input to `serve`'s HTTP interface (issue 23, item 7), on a server in this process with
//! short limits: each malformed, oversized, slow or surplus request gets a status and a
//! message a client can act on, nothing of it reaches the state, and the server keeps serving.

#[path = "common/raw_http.rs"]
mod raw_http;

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use candid::Principal;
use canister_snapshots::config::Config;
use canister_snapshots::http::{Limits, Server};
use canister_snapshots::replica::Replica;
use canister_snapshots::replicated_state::canister_id_from_index;
use ic_transport_types::{Envelope, EnvelopeContent};
use raw_http::{connect, post, post_head, raw_request, read_answer};

const MAX_INGRESS: u64 = 1_000;

fn limits() -> Limits {
    Limits {
        max_request_body_bytes: 64 << 10,
        max_connections: 4,
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        sync_call_timeout: Duration::from_secs(5),
    }
}

fn start(dir: &Path, limits: Limits) -> (Server, String) {
    let config = Config {
        max_ingress_bytes_per_message: MAX_INGRESS,
        ..Config::default()
    };
    let replica = Replica::open(dir, config).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::serve(replica, bind, limits).unwrap();
    let url = format!("http://{}", server.addr);
    (server, url)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An anonymous envelope (no key, no signature) and its request id.
fn anonymous(content: EnvelopeContent) -> (Vec<u8>, [u8; 32]) {
    let request_id = *content.to_request_id();
    let envelope = Envelope {
        content: Cow::Owned(content),
        sender_pubkey: None,
        sender_sig: None,
        sender_delegation: None,
    };
    (envelope.encode_bytes(), request_id)
}

fn call(canister_id: Principal, method: &str, arg: Vec<u8>) -> EnvelopeContent {
    EnvelopeContent::Call {
        nonce: None,
        ingress_expiry: now_nanos() + 120_000_000_000,
        sender: Principal::anonymous(),
        canister_id,
        method_name: method.to_string(),
        arg,
        sender_info: None,
    }
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_never_reach_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start(dir.path(), limits());
    let canister = canister_id_from_index(0);
    let path = format!("/api/v3/canister/{canister}/call");
    let create = candid::encode_one(
        ic_management_canister_types::ProvisionalCreateCanisterWithCyclesArgs {
            amount: None,
            settings: None,
            specified_id: None,
            sender_canister_version: None,
        },
    )
    .unwrap();
    let (valid, _) = anonymous(call(
        Principal::management_canister(),
        "provisional_create_canister_with_cycles",
        create.clone(),
    ));
    let mut refused_ids = Vec::new();
    let expect = |status: u16, answer: (u16, String), says: &str| {
        assert_eq!(answer.0, status, "{}", answer.1);
        assert!(
            answer.1.contains(says),
            "{:?} does not say {says:?}",
            answer.1
        );
    };

    // A valid envelope under the wrong content types.
    for content_type in ["application/json", "text/plain", ""] {
        expect(
            400,
            post(&url, &path, content_type, &valid),
            "application/cbor",
        );
    }
    // Not CBOR; CBOR but not an envelope; an envelope whose content lacks fields.
    expect(
        400,
        post(&url, &path, "application/cbor", b"\xff\xfe"),
        "CBOR",
    );
    expect(
        400,
        post(&url, &path, "application/cbor", b"\xd9\xd9\xf7\xa0"),
        "envelope",
    );
    let lacking = serde_cbor::to_vec(&serde_cbor::Value::Map(
        [(
            serde_cbor::Value::Text("content".into()),
            serde_cbor::Value::Map(
                [(
                    serde_cbor::Value::Text("request_type".into()),
                    serde_cbor::Value::Text("call".into()),
                )]
                .into_iter()
                .collect(),
            ),
        )]
        .into_iter()
        .collect(),
    ))
    .unwrap();
    expect(
        400,
        post(&url, &path, "application/cbor", &lacking),
        "content",
    );
    // CBOR nested deeper than any envelope.
    let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 10_000).chain([0x00]).collect();
    expect(400, post(&url, &path, "application/cbor", &deep), "CBOR");
    // A query envelope at the call endpoint.
    let (query, _) = anonymous(EnvelopeContent::Query {
        ingress_expiry: now_nanos() + 120_000_000_000,
        sender: Principal::anonymous(),
        canister_id: canister,
        method_name: "read".into(),
        arg: Vec::new(),
        nonce: None,
        sender_info: None,
    });
    expect(
        400,
        post(&url, &path, "application/cbor", &query),
        "request_type",
    );
    // A body over the limit: announced (refused unread), or sent chunked without a length.
    let head = post_head(&path, "application/cbor", 1 << 20);
    expect(413, raw_request(&url, head.as_bytes()), "larger than");
    let mut chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/cbor\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[0u8; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    expect(413, raw_request(&url, &chunked), "larger than");
    // A call whose argument is over the ingress limit, in a body under the body limit.
    let (big, big_id) = anonymous(call(canister, "inc", vec![7; MAX_INGRESS as usize + 1]));
    expect(
        413,
        post(&url, &path, "application/cbor", &big),
        "too large",
    );
    refused_ids.push(big_id);
    // An expired call.
    let mut expired = call(
        Principal::management_canister(),
        "provisional_create_canister_with_cycles",
        create,
    );
    if let EnvelopeContent::Call { ingress_expiry, .. } = &mut expired {
        *ingress_expiry = now_nanos() - 60_000_000_000;
    }
    let (expired, expired_id) = anonymous(expired);
    expect(
        400,
        post(&url, &path, "application/cbor", &expired),
        "expired",
    );
    refused_ids.push(expired_id);
    // Unknown paths and methods.
    expect(
        404,
        post(&url, "/api/v2/nowhere", "application/cbor", &valid),
        "no endpoint",
    );
    expect(
        404,
        post(
            &url,
            &format!("/api/v4/canister/{canister}/query"),
            "application/cbor",
            &valid,
        ),
        "no endpoint",
    );
    expect(
        405,
        raw_request(
            &url,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        ),
        "POST",
    );
    // A read_state of a path no client may read.
    let (read, _) = anonymous(EnvelopeContent::ReadState {
        ingress_expiry: now_nanos() + 120_000_000_000,
        sender: Principal::anonymous(),
        paths: vec![vec!["canister".into()]],
    });
    expect(
        404,
        post(
            &url,
            &format!("/api/v3/canister/{canister}/read_state"),
            "application/cbor",
            &read,
        ),
        "Invalid path",
    );
    // Still serving.
    let (status, _) = raw_request(
        &url,
        b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    server.stop().unwrap();

    // Nothing reached the state: no canister, and no refused request in the history.
    let replica = Replica::open(dir.path(), Config::default()).unwrap();
    assert!(replica.state().canisters.is_empty());
    for id in refused_ids {
        assert!(replica.request_status(&id).is_none());
    }
}

#[test]
fn slow_and_half_open_connections_are_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let limits = limits();
    let (server, url) = start(dir.path(), limits);
    let path = format!("/api/v3/canister/{}/call", canister_id_from_index(0));

    // A connection that sends nothing is closed after the header timeout.
    let started = Instant::now();
    let mut idle = connect(&url);
    let (status, _) = read_answer(&mut idle);
    assert!(status == 0 || status == 408, "{status}");
    assert!(
        started.elapsed() < limits.header_timeout * 10,
        "{:?}",
        started.elapsed()
    );

    // Headers that never finish: closed too.
    let started = Instant::now();
    let mut partial = connect(&url);
    partial
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (status, _) = read_answer(&mut partial);
    assert!(status == 0 || status == 408, "{status}");
    assert!(
        started.elapsed() < limits.header_timeout * 10,
        "{:?}",
        started.elapsed()
    );

    // A body that stops half way: 408 with a message.
    let mut slow = connect(&url);
    slow.write_all(post_head(&path, "application/cbor", 100).as_bytes())
        .unwrap();
    slow.write_all(&[0xd9; 10]).unwrap();
    let (status, body) = read_answer(&mut slow);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("did not arrive"), "{body}");

    let (status, _) = raw_request(
        &url,
        b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    server.stop().unwrap();
}

#[test]
fn connections_beyond_the_limit_are_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    // Idle connections stay long enough for the test to see the limit.
    let limits = Limits {
        header_timeout: Duration::from_secs(20),
        ..limits()
    };
    let (server, url) = start(dir.path(), limits);
    let held: Vec<_> = (0..limits.max_connections).map(|_| connect(&url)).collect();
    // The held connections are accepted before the next one (the accept loop is sequential).
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = raw_request(
        &url,
        b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("retry"), "{body}");
    drop(held);
    // Once they close, a new connection is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = raw_request(
            &url,
            b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop().unwrap();
}

/// `tests/e2e/counter.wasm` is `counter.wat` compiled (`UPDATE_FIXTURES=1` rewrites it).
#[test]
fn the_e2e_counter_wasm_is_its_wat_compiled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let compiled = wat::parse_file(dir.join("counter.wat")).unwrap();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(dir.join("counter.wasm"), &compiled).unwrap();
    }
    let committed = std::fs::read(dir.join("counter.wasm")).unwrap_or_default();
    assert!(
        committed == compiled,
        "tests/e2e/counter.wasm is not counter.wat compiled: run \
         `UPDATE_FIXTURES=1 cargo test --test serve_input -- counter` and commit it"
    );
}

//! Requests to `serve`'s HTTP interface as they arrive: a selector byte (the endpoint, or a
//! request line and headers to route), then the body. Everything `serve` does before a request
//! reaches the replica runs here: routing (`http::endpoint`), the content type, and
//! `http::decode_request` (CBOR envelope, request id, signatures and delegations, the
//! effective canister id rule, the message size, the `read_state` path table). Checks: no
//! panic, and what passes is consistent: a call is within the ingress limit, a `read_state`
//! names at most one request id, and every refusal is a 4xx with a message.

use std::borrow::Cow;

use candid::Principal;
use canister_snapshots::http::{self, Decoded, Endpoint};
use ic_transport_types::{Envelope, EnvelopeContent};

/// The replica's time for every input (fixed: an input replays the same way everywhere).
pub const NOW: u64 = 1_700_000_000_000_000_000;
const MAX_INGRESS: u64 = 2 << 20;

fn effective_id() -> Principal {
    Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
}

pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 0x80 != 0 {
        // A request line's method and path, and a content type: "METHOD PATH\nTYPE".
        let text = String::from_utf8_lossy(rest);
        let (line, content_type) = text.split_once('\n').unwrap_or((&text, ""));
        let (method, path) = line.split_once(' ').unwrap_or(("POST", line));
        if let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) {
            check_refusal(http::endpoint(&method, path).map(|_| ()));
        }
        check_refusal(http::check_content_type(Some(content_type)));
        return;
    }
    let endpoint = match selector % 5 {
        0 => Endpoint::Call { synchronous: false },
        1 => Endpoint::Call { synchronous: true },
        2 => Endpoint::Query,
        3 => Endpoint::ReadState { subnet: false },
        _ => Endpoint::ReadState { subnet: true },
    };
    match http::decode_request(endpoint, effective_id(), rest, NOW, MAX_INGRESS) {
        Ok(Decoded::Call(message)) => {
            assert!(message.method.len() as u64 + message.arg.len() as u64 <= MAX_INGRESS);
            assert!(matches!(endpoint, Endpoint::Call { .. }));
        }
        Ok(Decoded::Query(_)) => assert_eq!(endpoint, Endpoint::Query),
        Ok(Decoded::ReadState(read)) => {
            assert!(matches!(endpoint, Endpoint::ReadState { .. }));
            assert!(read.paths.len() <= 1_000);
        }
        Err(err) => check_refusal::<()>(Err(err)),
    }
}

fn check_refusal<T>(result: Result<T, http::HttpError>) {
    if let Err(err) = result {
        assert!(err.status.is_client_error(), "{err:?}");
        assert!(!err.message.is_empty(), "{err:?}");
    }
}

fn envelope(content: EnvelopeContent, signed: bool) -> Vec<u8> {
    Envelope {
        content: Cow::Owned(content),
        // A key and a signature that do not verify: the signature path, refused.
        sender_pubkey: signed.then(|| vec![0x30; 44]),
        sender_sig: signed.then(|| vec![0; 64]),
        sender_delegation: None,
    }
    .encode_bytes()
}

/// Valid anonymous envelopes for each endpoint, a badly signed one, and routing lines.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let expiry = NOW + 120_000_000_000;
    let call = |method: &str, arg: Vec<u8>, canister_id| EnvelopeContent::Call {
        nonce: Some(vec![1, 2, 3]),
        ingress_expiry: expiry,
        sender: Principal::anonymous(),
        canister_id,
        method_name: method.to_string(),
        arg,
        sender_info: None,
    };
    let record = candid::encode_one(ic_management_canister_types::CanisterIdRecord {
        canister_id: effective_id(),
    })
    .unwrap_or_default();
    let read_state = |paths: &[&[&[u8]]]| EnvelopeContent::ReadState {
        ingress_expiry: expiry,
        sender: Principal::anonymous(),
        paths: paths
            .iter()
            .map(|path| path.iter().map(|l| (*l).into()).collect())
            .collect(),
    };
    let mut seeds = vec![
        (
            "call".to_string(),
            [
                vec![0],
                envelope(call("inc", Vec::new(), effective_id()), false),
            ]
            .concat(),
        ),
        (
            "call-management".to_string(),
            [
                vec![1],
                envelope(
                    call("canister_status", record, Principal::management_canister()),
                    false,
                ),
            ]
            .concat(),
        ),
        (
            "call-badly-signed".to_string(),
            [
                vec![1],
                envelope(call("inc", Vec::new(), effective_id()), true),
            ]
            .concat(),
        ),
        (
            "query".to_string(),
            [
                vec![2],
                envelope(
                    EnvelopeContent::Query {
                        ingress_expiry: expiry,
                        sender: Principal::anonymous(),
                        canister_id: effective_id(),
                        method_name: "read".into(),
                        arg: b"DIDL\x00\x00".to_vec(),
                        nonce: None,
                        sender_info: None,
                    },
                    false,
                ),
            ]
            .concat(),
        ),
        (
            "read-state".to_string(),
            [
                vec![3],
                envelope(
                    read_state(&[
                        &[b"time"],
                        &[b"request_status", &[7; 32], b"status"],
                        &[
                            b"canister",
                            effective_id().as_slice(),
                            b"metadata",
                            b"candid:service",
                        ],
                    ]),
                    false,
                ),
            ]
            .concat(),
        ),
        (
            "read-state-subnet".to_string(),
            [
                vec![4],
                envelope(
                    read_state(&[&[b"subnet"], &[b"canister_ranges", &[9; 29]]]),
                    false,
                ),
            ]
            .concat(),
        ),
    ];
    for (name, line) in [
        (
            "route-call",
            "POST /api/v3/canister/aaaaa-aa/call\napplication/cbor",
        ),
        ("route-status", "GET /api/v2/status\n"),
        (
            "route-subnet",
            "POST /api/v3/subnet/aaaaa-aa/read_state\napplication/cbor; x=y",
        ),
    ] {
        seeds.push((
            name.to_string(),
            [vec![0x80], line.as_bytes().to_vec()].concat(),
        ));
    }
    seeds
}

//! Every limit of `spec/management.md` ("Limits"), each tested at its edge (accepted) and one
//! byte or one item past it (refused with its code, the state unchanged: the twin-machine
//! check of `tests/common`).

mod common;

use candid::{Encode, Principal};
use canister_snapshots::management::types::{
    MAX_CERTIFIED_DATA_BYTES, MAX_GLOBALS, MAX_SLICE_BYTES, MAX_SNAPSHOT_LABEL_BYTES,
    MAX_WASM_CHUNK_BYTES, MAX_WASM_CHUNKS,
};
use canister_snapshots::{Config, StateMachine};
use common::*;
use ic_error_types::{ErrorCode, RejectCode};
use ic_management_canister_types::{
    CanisterIdRecord, ProvisionalCreateCanisterWithCyclesArgs, ReadCanisterSnapshotDataArgs,
    ReadCanisterSnapshotDataResult, SnapshotDataKind, SnapshotDataOffset, SnapshotMetadataGlobal,
};
use serde_bytes::ByteBuf;

const MIB: usize = 1 << 20;

/// The IC's numbers, which `Config::default()` and the management types must keep.
#[test]
fn the_limits_are_the_ics() {
    let config = Config::default();
    assert_eq!(config.max_ingress_bytes_per_message, 2 * MIB as u64);
    assert_eq!(config.max_reply_bytes, 2 * MIB as u64);
    assert_eq!(MAX_SLICE_BYTES, 2_000_000);
    assert_eq!(MAX_SNAPSHOT_LABEL_BYTES, 64);
    assert_eq!(MAX_CERTIFIED_DATA_BYTES, 32);
    assert_eq!(MAX_GLOBALS, 1000);
    assert_eq!(MAX_WASM_CHUNKS, 100);
    assert_eq!(MAX_WASM_CHUNK_BYTES, MIB);
}

/// Asserts the outcome of a call whose setup is `setup`: `Ok` at the edge, refused with `code`
/// and without effect one past it. `call(sm, fixture, past)` makes the call at (`past = false`)
/// or one past (`past = true`) the edge.
#[track_caller]
fn at_and_past<F, R: std::fmt::Debug>(
    setup: impl Fn() -> (StateMachine, F),
    call: impl Fn(&mut StateMachine, &F, bool) -> Result<R, canister_snapshots::RejectResponse>,
    code: ErrorCode,
    needle: &str,
) {
    let (mut sm, fixture) = setup();
    if let Err(err) = call(&mut sm, &fixture, false) {
        panic!("refused at the limit: {err}");
    }
    let err = assert_refused_without_effect(&setup, |sm, fixture| call(sm, fixture, true));
    assert_eq!(err.error_code, code, "{err}");
    assert!(
        err.reject_message.contains(needle),
        "the message should name the limit ({needle}): {err}"
    );
}

/// The blob length `n` with `encode(n) == total`: Candid adds a small overhead to a blob that
/// changes only with the length of its LEB128 length prefix.
fn blob_len_for(total: usize, encode: impl Fn(usize) -> usize) -> usize {
    let mut n = total - (encode(total - 64) - (total - 64));
    while encode(n) > total {
        n -= 1;
    }
    while encode(n + 1) <= total {
        n += 1;
    }
    assert_eq!(encode(n), total, "no blob encodes to exactly {total} bytes");
    n
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

#[test]
fn ingress_message_size() {
    let limit = Config::default().max_ingress_bytes_per_message as usize;
    let write = |n: usize| Encode!(&0u64, &ByteBuf::from(vec![7u8; n])).unwrap();
    let at = blob_len_for(limit - "write_heap".len(), |n| write(n).len());
    at_and_past(
        env,
        |sm, c, past| c.call(sm, "write_heap", write(at + past as usize)),
        ErrorCode::CanisterContractViolation,
        "the limit is 2097152 bytes",
    );
    // Subnet messages too, before any decoding (else: InvalidManagementPayload).
    let err = assert_refused_without_effect(env, |sm, _| {
        let payload = vec![0u8; limit + 1 - "install_code".len()];
        sm.update_call(
            Principal::management_canister(),
            controller(),
            "install_code",
            payload,
        )
    });
    assert_eq!(
        err.error_code,
        ErrorCode::CanisterContractViolation,
        "{err}"
    );
}

#[test]
fn reply_size() {
    let limit = Config::default().max_reply_bytes as usize;
    let reply = |n: usize| Encode!(&ByteBuf::from(vec![0u8; n])).unwrap().len();
    let at = blob_len_for(limit, reply) as u64;
    let setup = || {
        let (mut sm, c) = env();
        c.fill(&mut sm, false, 0, limit as u64 + 65_536, 3);
        (sm, c)
    };
    at_and_past(
        setup,
        |sm, c, past| {
            let reply = c.call(
                sm,
                "read_heap",
                Encode!(&0u64, &(at + past as u64)).unwrap(),
            );
            if let Ok(bytes) = &reply {
                assert_eq!(bytes.len(), limit, "the reply is exactly at the limit");
            }
            reply
        },
        ErrorCode::CanisterContractViolation,
        "the limit is 2097152 bytes",
    );
}

// ---------------------------------------------------------------------------------------------
// Canisters and snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn number_of_canisters() {
    const MAX: u64 = 3;
    let with = |n: u64| {
        move || {
            let mut sm = StateMachine::with_config(Config {
                max_number_of_canisters: MAX,
                ..Config::default()
            });
            for _ in 0..n {
                create(&mut sm, controller(), 1 << 40, None);
            }
            (sm, ())
        }
    };
    let create_one = |sm: &mut StateMachine, _: &()| {
        let args = ProvisionalCreateCanisterWithCyclesArgs {
            amount: None,
            settings: None,
            specified_id: None,
            sender_canister_version: None,
        };
        sm.management::<(CanisterIdRecord,)>(
            Some(controller()),
            "provisional_create_canister_with_cycles",
            (args,),
        )
    };
    let (mut sm, ()) = with(MAX - 1)();
    create_one(&mut sm, &()).expect("the last canister fits");
    let err = assert_refused_without_effect(with(MAX), create_one);
    assert_eq!(
        err.error_code,
        ErrorCode::MaxNumberOfCanistersReached,
        "{err}"
    );
    assert_eq!(err.reject_code, RejectCode::SysFatal, "{err}");
    assert!(
        err.reject_message.contains("maximum of 3 canisters"),
        "{err}"
    );
}

#[test]
fn snapshots_per_canister() {
    const QUOTA: usize = 3;
    let setup = || {
        let (mut sm, c) = env_with_config(Config {
            max_snapshots_per_canister: QUOTA,
            ..Config::default()
        });
        for _ in 0..QUOTA - 1 {
            take_labelled(&mut sm, controller(), c.id, None, None).unwrap();
        }
        (sm, c)
    };
    let full = || {
        let (mut sm, c) = setup();
        take_labelled(&mut sm, controller(), c.id, None, None).unwrap();
        (sm, c)
    };
    let (mut sm, c) = setup();
    take_labelled(&mut sm, controller(), c.id, None, None).expect("the last one fits");
    let needle = format!("maximum number of snapshots allowed: {QUOTA}");
    for err in [
        assert_refused_without_effect(full, |sm, c| {
            take_labelled(sm, controller(), c.id, None, None)
        }),
        assert_refused_without_effect(full, |sm, c| {
            upload_metadata(sm, controller(), upload_metadata_args(c.id))
        }),
    ] {
        assert_eq!(err.error_code, ErrorCode::CanisterRejectedMessage, "{err}");
        assert!(err.reject_message.contains(&needle), "{err}");
    }
}

#[test]
fn label_length() {
    at_and_past(
        env,
        |sm, c, past| {
            let label = "l".repeat(MAX_SNAPSHOT_LABEL_BYTES + past as usize);
            take_labelled(sm, controller(), c.id, None, Some(&label))
        },
        ErrorCode::InvalidManagementPayload,
        "at most 64",
    );
    // Bytes, not characters: 32 two-byte characters fit, 33 do not.
    at_and_past(
        env,
        |sm, c, past| {
            let label = "é".repeat(MAX_SNAPSHOT_LABEL_BYTES / 2 + past as usize);
            take_labelled(sm, controller(), c.id, None, Some(&label))
        },
        ErrorCode::InvalidManagementPayload,
        "at most 64",
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshot transfer
// ---------------------------------------------------------------------------------------------

/// A snapshot whose Wasm memory is larger than one slice.
fn env_with_large_snapshot() -> (StateMachine, (TestCanister, Vec<u8>)) {
    let (mut sm, c) = env();
    c.fill(&mut sm, false, 0, MAX_SLICE_BYTES + 1, 9);
    let id = take_labelled(&mut sm, controller(), c.id, None, None)
        .unwrap()
        .id;
    (sm, (c, id))
}

/// A machine with an uploaded snapshot (open for data) whose Wasm memory is larger than one
/// slice.
fn env_with_upload() -> (StateMachine, (TestCanister, Vec<u8>)) {
    let (mut sm, c) = env();
    let args = UploadArgs {
        wasm_memory_size: (MAX_SLICE_BYTES + 1).next_multiple_of(65_536),
        ..upload_metadata_args(c.id)
    };
    let id = upload_metadata(&mut sm, controller(), args).unwrap();
    (sm, (c, id))
}

type UploadArgs = canister_snapshots::management::types::UploadCanisterSnapshotMetadataArgs;

#[test]
fn slice_size() {
    at_and_past(
        env_with_large_snapshot,
        |sm, (c, id), past| {
            let size = MAX_SLICE_BYTES + past as u64;
            let args = ReadCanisterSnapshotDataArgs {
                canister_id: c.id,
                snapshot_id: id.clone(),
                kind: SnapshotDataKind::WasmMemory { offset: 0, size },
            };
            let reply = sm.management::<(ReadCanisterSnapshotDataResult,)>(
                Some(controller()),
                "read_canister_snapshot_data",
                (args,),
            );
            if let Ok((data,)) = &reply {
                assert_eq!(data.chunk.len() as u64, size);
            }
            reply
        },
        ErrorCode::InvalidManagementPayload,
        "at most 2000000 bytes",
    );
    at_and_past(
        env_with_upload,
        |sm, (c, id), past| {
            let chunk = vec![5u8; MAX_SLICE_BYTES as usize + past as usize];
            let kind = SnapshotDataOffset::WasmMemory { offset: 0 };
            upload_data(sm, controller(), c.id, id, kind, chunk)
        },
        ErrorCode::InvalidManagementPayload,
        "at most 2000000 bytes",
    );
}

#[test]
fn certified_data_size() {
    at_and_past(
        env,
        |sm, c, past| {
            let args = UploadArgs {
                certified_data: vec![1; MAX_CERTIFIED_DATA_BYTES + past as usize],
                ..upload_metadata_args(c.id)
            };
            upload_metadata(sm, controller(), args)
        },
        ErrorCode::InvalidManagementPayload,
        "certified_data is at most 32 bytes",
    );
    // Through the canister (spec/test-canister.did: more than 32 bytes traps).
    at_and_past(
        env,
        |sm, c, past| {
            let data = ByteBuf::from(vec![1; MAX_CERTIFIED_DATA_BYTES + past as usize]);
            c.call(sm, "set_certified_data", Encode!(&data).unwrap())
        },
        ErrorCode::CanisterCalledTrap,
        "at most 32 bytes",
    );
}

#[test]
fn number_of_globals() {
    at_and_past(
        env,
        |sm, c, past| {
            let args = UploadArgs {
                globals: vec![SnapshotMetadataGlobal::I64(1); MAX_GLOBALS + past as usize],
                ..upload_metadata_args(c.id)
            };
            upload_metadata(sm, controller(), args)
        },
        ErrorCode::InvalidManagementPayload,
        "at most 1000 globals",
    );
}

/// The code of a refused chunk, too large (`chunk_size`) or one too many (`number_of_chunks`):
/// the replica's `WasmChunkStoreError`, `CanisterContractViolation` (504).
const CHUNK_STORE_REFUSAL: ErrorCode = ErrorCode::CanisterContractViolation;

#[test]
fn chunk_size() {
    at_and_past(
        env_with_upload,
        |sm, (c, id), past| {
            let chunk = vec![1u8; MAX_WASM_CHUNK_BYTES + past as usize];
            upload_data(
                sm,
                controller(),
                c.id,
                id,
                SnapshotDataOffset::WasmChunk,
                chunk,
            )
        },
        CHUNK_STORE_REFUSAL,
        "at most 1048576 bytes",
    );
}

/// `env_with_upload` with `n` distinct one-byte chunks in the uploaded snapshot.
fn env_with_chunks(n: usize) -> (StateMachine, (TestCanister, Vec<u8>)) {
    let (mut sm, (c, id)) = env_with_upload();
    for i in 0..n {
        let chunk = vec![i as u8];
        upload_data(
            &mut sm,
            controller(),
            c.id,
            &id,
            SnapshotDataOffset::WasmChunk,
            chunk,
        )
        .unwrap();
    }
    (sm, (c, id))
}

#[test]
fn number_of_chunks() {
    let (mut sm, (c, id)) = env_with_chunks(MAX_WASM_CHUNKS - 1);
    upload_data(
        &mut sm,
        controller(),
        c.id,
        &id,
        SnapshotDataOffset::WasmChunk,
        vec![0xFF],
    )
    .expect("the 100th chunk fits");
    assert_eq!(
        sm.state()
            .snapshots
            .iter()
            .last()
            .unwrap()
            .content()
            .wasm_chunk_store
            .len(),
        100
    );
    let err = assert_refused_without_effect(
        || env_with_chunks(MAX_WASM_CHUNKS),
        |sm, (c, id)| {
            upload_data(
                sm,
                controller(),
                c.id,
                id,
                SnapshotDataOffset::WasmChunk,
                vec![0xFF],
            )
        },
    );
    assert_eq!(err.error_code, CHUNK_STORE_REFUSAL, "{err}");
    assert!(err.reject_message.contains("(100 chunks)"), "{err}");
}

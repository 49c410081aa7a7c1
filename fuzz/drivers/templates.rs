//! Valid payloads for every method, shaped by a few input bytes against the current state
//! (which canister, which existing snapshot, which offset), and the mutations applied to them.
//! Starting from a valid payload lets short inputs get past Candid decoding and reach the
//! checks behind it; mutating it reaches the decoder's edges too.

use arbitrary::{Arbitrary, Result, Unstructured};
use candid::utils::ArgumentEncoder;
use candid::{Nat, Principal};
use canister_snapshots::TEST_CANISTER_WASM;
use canister_snapshots::execution::test_canister_module;
use canister_snapshots::management::types::{
    TakeCanisterSnapshotArgs, UploadCanisterSnapshotDataArgs, UploadCanisterSnapshotMetadataArgs,
};
use canister_snapshots::replicated_state::{ReplicatedState, canister_id_from_index};
use canister_snapshots::snapshots::SnapshotId;
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInfoArgs, CanisterInstallMode, CanisterSettings, CanisterTimer,
    CreateCanisterArgs, DeleteCanisterSnapshotArgs, InstallCodeArgs, LoadCanisterSnapshotArgs,
    ProvisionalCreateCanisterWithCyclesArgs, ProvisionalTopUpCanisterArgs,
    ReadCanisterSnapshotDataArgs, ReadCanisterSnapshotMetadataArgs, SnapshotDataKind,
    SnapshotDataOffset, SnapshotMetadataGlobal, UninstallCodeArgs, UpdateSettingsArgs,
};
use serde_bytes::ByteBuf;

use super::input::{self, Encode, Writer};
use super::replica;

/// Management methods, then the test canister's, then one that exists nowhere.
pub fn all_methods() -> Vec<&'static str> {
    let management = canister_snapshots::management::METHODS.iter();
    let canister = canister_snapshots::execution::test_canister::METHODS.iter();
    management
        .chain(canister)
        .copied()
        .chain(["no_such_method"])
        .collect()
}

pub fn is_management(method: &str) -> bool {
    canister_snapshots::management::METHODS.contains(&method)
}

/// The bytes a template is shaped by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub picks: [u8; 4],
    pub numbers: [u64; 2],
    pub blob: Vec<u8>,
}

impl<'a> Arbitrary<'a> for Args {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut picks = [0; 4];
        for p in &mut picks {
            *p = input::byte(u)?;
        }
        Ok(Args {
            picks,
            numbers: [input::number(u)?, input::number(u)?],
            blob: input::blob(u)?,
        })
    }
}

impl Encode for Args {
    fn encode(&self, w: &mut Writer) {
        self.picks.iter().for_each(|&p| w.byte(p));
        self.numbers.iter().for_each(|&n| w.number(n));
        w.blob(&self.blob);
    }
}

impl Args {
    pub fn new(picks: [u8; 4], numbers: [u64; 2], blob: &[u8]) -> Self {
        Args {
            picks,
            numbers,
            blob: blob.to_vec(),
        }
    }
}

/// One byte-level change to an encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub op: u8,
    pub at: u64,
    pub byte: u8,
}

impl<'a> Arbitrary<'a> for Edit {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Edit {
            op: input::byte(u)?,
            at: input::number(u)?,
            byte: input::byte(u)?,
        })
    }
}

impl Encode for Edit {
    fn encode(&self, w: &mut Writer) {
        w.byte(self.op);
        w.number(self.at);
        w.byte(self.byte);
    }
}

pub fn apply_edits(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        let len = bytes.len() as u64;
        let at = (edit.at % (len + 1)) as usize;
        match edit.op % 4 {
            0 if at < bytes.len() => bytes[at] = edit.byte,
            1 => bytes.insert(at, edit.byte),
            2 => bytes.truncate(at),
            3 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
}

/// A payload: a template, a mutated template, or raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Template(Args),
    Mutated(Args, Vec<Edit>),
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for Payload {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match input::choice(u, 3)? {
            0 => Payload::Template(Args::arbitrary(u)?),
            1 => Payload::Mutated(Args::arbitrary(u)?, input::list(u, 8, Edit::arbitrary)?),
            _ => Payload::Raw(input::blob(u)?),
        })
    }
}

impl Encode for Payload {
    fn encode(&self, w: &mut Writer) {
        match self {
            Payload::Template(args) => {
                w.choice(0);
                args.encode(w);
            }
            Payload::Mutated(args, edits) => {
                w.choice(1);
                args.encode(w);
                w.list(edits, |w, e| e.encode(w));
            }
            Payload::Raw(bytes) => {
                w.choice(2);
                w.blob(bytes);
            }
        }
    }
}

impl Payload {
    pub fn bytes(&self, state: &ReplicatedState, method: &str) -> Vec<u8> {
        match self {
            Payload::Template(args) => payload(state, method, args),
            Payload::Mutated(args, edits) => {
                let mut bytes = payload(state, method, args);
                apply_edits(&mut bytes, edits);
                bytes
            }
            Payload::Raw(bytes) => bytes.clone(),
        }
    }
}

/// An existing canister, or (one past the end) one that does not exist.
pub fn pick_canister(state: &ReplicatedState, pick: u8) -> Principal {
    let n = state.canisters.len();
    let index = usize::from(pick) % (n + 1);
    state
        .canisters
        .keys()
        .nth(index)
        .copied()
        .unwrap_or_else(|| canister_id_from_index(1_000))
}

/// An existing snapshot's id (of any canister), a well-formed id of no snapshot, or `blob`.
pub fn pick_snapshot(state: &ReplicatedState, pick: u8, blob: &[u8]) -> Vec<u8> {
    let n = state.snapshots.len();
    let index = usize::from(pick) % (n + 2);
    match state.snapshots.iter().nth(index) {
        Some(snapshot) => snapshot.id().to_bytes(),
        None if index == n => SnapshotId::new(pick_canister(state, 0), 77).to_bytes(),
        None => blob.to_vec(),
    }
}

fn encode(args: impl ArgumentEncoder) -> Vec<u8> {
    candid::encode_args(args).expect("encoding a crate type cannot fail")
}

pub fn globals(pick: u8, value: i64) -> Vec<SnapshotMetadataGlobal> {
    use SnapshotMetadataGlobal::*;
    match pick % 6 {
        0 => vec![I64(value), I64(0)],
        1 => vec![],
        2 => vec![I64(value)],
        3 => vec![I32(value as i32), I64(value)],
        4 => vec![F64(value as f64), F32(1.5)],
        _ => vec![I64(value); 3],
    }
}

/// `picks[3]`: which controllers (bits 0-1), a Wasm memory limit (bit 4), how many copies of
/// a canister id as controllers (bits 5-7); `picks[2]`: which caller or canister.
fn settings(state: &ReplicatedState, args: &Args) -> CanisterSettings {
    let [_, _, p2, p3] = args.picks;
    CanisterSettings {
        controllers: match p3 % 4 {
            0 => None,
            1 => Some(vec![replica::caller(p2)]),
            2 => Some(vec![replica::controller(), replica::stranger()]),
            _ => Some(vec![pick_canister(state, p2); usize::from(p3 >> 5) * 2]),
        },
        wasm_memory_limit: (p3 & 0x10 != 0).then(|| Nat::from(args.numbers[1])),
        ..Default::default()
    }
}

/// The module an upload or install sends: the test canister, the test canister under another
/// module hash, or the blob (most often refused by validation).
fn module(pick: u8, blob: &[u8]) -> Vec<u8> {
    match pick % 3 {
        0 => TEST_CANISTER_WASM.to_vec(),
        1 => test_canister_module(blob),
        _ => blob.to_vec(),
    }
}

/// The valid payload of `method` that `args` picks, against `state`.
pub fn payload(state: &ReplicatedState, method: &str, args: &Args) -> Vec<u8> {
    let [p0, p1, p2, p3] = args.picks;
    let [n0, n1] = args.numbers;
    let blob = &args.blob;
    let canister_id = pick_canister(state, p0);
    let snapshot_id = || pick_snapshot(state, p2, blob);
    let record = || encode((CanisterIdRecord { canister_id },));
    match method {
        "provisional_create_canister_with_cycles" => {
            encode((ProvisionalCreateCanisterWithCyclesArgs {
                amount: (p1 & 1 != 0).then(|| Nat::from(n0)),
                settings: (p1 & 2 != 0).then(|| settings(state, args)),
                specified_id: None,
                sender_canister_version: None,
            },))
        }
        "provisional_top_up_canister" => encode((ProvisionalTopUpCanisterArgs {
            canister_id,
            amount: Nat::from(n0),
        },)),
        "create_canister" => encode((CreateCanisterArgs {
            settings: (p1 & 2 != 0).then(|| settings(state, args)),
            sender_canister_version: None,
        },)),
        "install_code" => encode((InstallCodeArgs {
            mode: match p1 % 3 {
                0 => CanisterInstallMode::Install,
                1 => CanisterInstallMode::Reinstall,
                _ => CanisterInstallMode::Upgrade(None),
            },
            canister_id,
            wasm_module: module(p3, blob),
            arg: vec![],
            sender_canister_version: None,
        },)),
        "uninstall_code" => encode((UninstallCodeArgs {
            canister_id,
            sender_canister_version: None,
        },)),
        "start_canister"
        | "stop_canister"
        | "canister_status"
        | "delete_canister"
        | "list_canister_snapshots" => record(),
        "canister_info" => encode((CanisterInfoArgs {
            canister_id,
            num_requested_changes: (p1 & 1 != 0).then_some(n0),
        },)),
        "update_settings" => encode((UpdateSettingsArgs {
            canister_id,
            settings: settings(state, args),
            sender_canister_version: None,
        },)),
        "take_canister_snapshot" => encode((TakeCanisterSnapshotArgs {
            canister_id,
            replace_snapshot: (p1 & 1 != 0).then(|| ByteBuf::from(snapshot_id())),
            uninstall_code: (p1 & 2 != 0).then_some(true),
            sender_canister_version: None,
            label: (p1 & 4 != 0).then(|| String::from_utf8_lossy(blob).into_owned()),
        },)),
        "load_canister_snapshot" => encode((LoadCanisterSnapshotArgs {
            canister_id,
            snapshot_id: snapshot_id(),
            sender_canister_version: None,
        },)),
        "delete_canister_snapshot" => encode((DeleteCanisterSnapshotArgs {
            canister_id,
            snapshot_id: snapshot_id(),
        },)),
        "read_canister_snapshot_metadata" => encode((ReadCanisterSnapshotMetadataArgs {
            canister_id,
            snapshot_id: snapshot_id(),
        },)),
        "read_canister_snapshot_data" => encode((ReadCanisterSnapshotDataArgs {
            canister_id,
            snapshot_id: snapshot_id(),
            kind: match p1 % 4 {
                0 => SnapshotDataKind::WasmModule {
                    offset: n0,
                    size: n1,
                },
                1 => SnapshotDataKind::WasmMemory {
                    offset: n0,
                    size: n1,
                },
                2 => SnapshotDataKind::StableMemory {
                    offset: n0,
                    size: n1,
                },
                _ => SnapshotDataKind::WasmChunk { hash: blob.clone() },
            },
        },)),
        "upload_canister_snapshot_metadata" => encode((upload_metadata(state, args),)),
        "upload_canister_snapshot_data" => {
            let kind = match p1 % 4 {
                0 => SnapshotDataOffset::WasmModule { offset: n0 },
                1 => SnapshotDataOffset::WasmMemory { offset: n0 },
                2 => SnapshotDataOffset::StableMemory { offset: n0 },
                _ => SnapshotDataOffset::WasmChunk,
            };
            // An empty blob for the module sends the test canister's bytes from the offset.
            let chunk = match kind {
                SnapshotDataOffset::WasmModule { offset } if blob.is_empty() => {
                    let from = usize::try_from(offset).unwrap_or(usize::MAX);
                    TEST_CANISTER_WASM.get(from..).unwrap_or_default().to_vec()
                }
                _ => blob.clone(),
            };
            encode((UploadCanisterSnapshotDataArgs {
                canister_id,
                snapshot_id: snapshot_id(),
                kind,
                chunk,
            },))
        }
        "write_heap" | "write_stable" => encode((n0, ByteBuf::from(blob.clone()))),
        "read_heap" | "read_stable" => encode((n0, n1)),
        "fill_heap" | "fill_stable" => encode((n0, n1, p1)),
        "set_certified_data" => encode((ByteBuf::from(blob.clone()),)),
        "set_global" => encode((u32::from(p1 % 3), n0 as i64)),
        "get_global" => encode((u32::from(p1 % 3),)),
        "trap" => encode((String::from_utf8_lossy(blob).into_owned(),)),
        // `memory_sizes` takes nothing; an unknown method gets an empty argument too.
        _ => encode(()),
    }
}

/// Upload metadata for the canister `picks[0]` picks: by default the test canister's module
/// size and its two i64 globals, small memories; the other picks change one thing each.
pub fn upload_metadata(state: &ReplicatedState, args: &Args) -> UploadCanisterSnapshotMetadataArgs {
    let [p0, p1, p2, p3] = args.picks;
    let [n0, n1] = args.numbers;
    let pages = |bits: u8| u64::from(bits & 3) * 65_536;
    UploadCanisterSnapshotMetadataArgs {
        canister_id: pick_canister(state, p0),
        replace_snapshot: (p1 & 1 != 0)
            .then(|| ByteBuf::from(pick_snapshot(state, p2, &args.blob))),
        wasm_module_size: if p1 & 2 != 0 {
            n0
        } else {
            TEST_CANISTER_WASM.len() as u64
        },
        globals: globals(p3, n1 as i64),
        wasm_memory_size: if p1 & 4 != 0 { n1 } else { pages(p3 >> 3) },
        stable_memory_size: pages(p3 >> 5),
        certified_data: if p1 & 8 != 0 {
            args.blob.clone()
        } else {
            vec![]
        },
        global_timer: (p1 & 0x10 != 0).then_some(CanisterTimer::Active(n1)),
        on_low_wasm_memory_hook_status: None,
        base_snapshot: (p1 & 0x20 != 0)
            .then(|| ByteBuf::from(pick_snapshot(state, p2, &args.blob))),
    }
}
